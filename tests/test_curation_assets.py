"""Materialize the curation group on the tests' own crawl, as the UI or `dagster asset materialize` would."""

import shutil

import dagster as dg
import pyarrow.parquet as pq
import pytest
from conftest import materialize_curation

from assets.curation import curation_assets
from assets.metadata import column, table_rows
from dagster_project.definitions import new_crawl_files_sensor
from dagster_project.resources import CurationResource
from pipelines.shards import list_shards


@pytest.fixture(scope="module")
def materialized(crawl_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("data_root")
    shutil.copytree(crawl_dir, root / "crawl")
    resource = CurationResource(data_root=str(root), workers=2)
    result = materialize_curation(curation_assets, resource)
    return result, resource


def _metadata(result, asset):
    event = result.asset_materializations_for_node(asset)[0]  # one per crawl dump, the same metadata
    return {k: getattr(v, "value", v) for k, v in event.metadata.items()}


def test_every_asset_and_check_succeeds(materialized):
    result, _ = materialized
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == 10
    assert all(e.passed for e in evaluations), [(e.asset_key, e.check_name) for e in evaluations if not e.passed]


def test_metadata_shows_counts_drops_languages_and_clusters(materialized):
    result, resource = materialized
    raw = _metadata(result, "raw_documents")
    assert raw["documents_out"] == 16 and raw["quarantined_records"] == 4
    quarantined = dict(zip(*[column(raw["quarantined_by_reason"], c) for c in ("reason", "records")], strict=True))
    assert quarantined.get("truncated_warc", 0) > 0 and quarantined.get("bad_utf8", 0) > 0
    assert sum(quarantined.values()) == raw["quarantined_records"]
    langs = table_rows(_metadata(result, "language_filtered_documents")["languages"])
    assert {"en", "de", "zh", "code"} <= {row["language"] for row in langs}
    assert all(isinstance(row["documents"], int) for row in langs)
    assert abs(sum(row["share"] for row in langs) - 1.0) < 1e-3
    quality = _metadata(result, "quality_filtered_documents")
    assert any(reason.startswith("gopher_repetition/") for reason in column(quality["drops_by_reason"], "reason"))
    final = _metadata(result, "deduplicated_documents")
    assert final["duplicate_clusters"] >= 2
    assert {"exact_duplicate", "near_duplicate"} <= set(column(final["drops_by_reason"], "reason"))
    assert quality["documents_out"] == raw["documents_out"] - 1  # only the junk page
    assert final["dagster/row_count"] == final["documents_out"] == quality["documents_out"] - 3
    kept = [r for uri in list_shards(resource.stage_dir("dedup")) for r in pq.read_table(uri).to_pylist()]
    assert "https://junk.example/x.html" not in {r["url"] for r in kept}
    assert "https://mirror.example/en/page0.html" not in {r["url"] for r in kept}


def test_rematerializing_resumes_every_shard(materialized):
    _, resource = materialized
    result = materialize_curation(curation_assets[:2], resource)
    meta = _metadata(result, "raw_documents")
    assert meta["resumed_from_earlier_run"] is True
    assert meta["beam_counters"].get("ingest/shards_resumed") == 3


def test_sensor_requests_a_run_when_crawl_changes(materialized):
    _, resource = materialized
    instance = dg.DagsterInstance.ephemeral()
    context = dg.build_sensor_context(instance=instance, resources={"curation": resource})
    first = new_crawl_files_sensor(context)
    dumps = ["cut.warc.gz", "extra.jsonl.gz", "site.warc.gz"]  # each file put directly in crawl/ is a dump
    assert isinstance(first, dg.SensorResult)
    assert sorted(r.partition_key for r in first.run_requests) == dumps
    (added,) = first.dynamic_partitions_requests
    assert isinstance(added, dg.AddDynamicPartitionsRequest) and sorted(added.partition_keys) == dumps
    context = dg.build_sensor_context(instance=instance, cursor=context.cursor, resources={"curation": resource})
    assert isinstance(new_crawl_files_sensor(context), dg.SkipReason)


def test_one_run_curates_each_dump_in_its_folder_and_dedups_across_them(materialized):
    result, resource = materialized
    dumps = ["cut.warc.gz", "extra.jsonl.gz", "site.warc.gz"]
    raw = result.asset_materializations_for_node("raw_documents")
    assert sorted(event.partition for event in raw) == dumps  # one run, one Beam job, three partitions
    for stage in ("ingested", "langid", "quality"):
        assert all(list_shards(resource.stage_dir(stage, dump)) for dump in ["extra.jsonl.gz", "site.warc.gz"])
    table = _metadata(result, "raw_documents")["documents_by_dump"]
    by_dump = {row.data["dump"]: row.data["documents_out"] for row in table.records}
    assert set(by_dump) == set(dumps) and sum(by_dump.values()) == _metadata(result, "raw_documents")["documents_out"]
    final = _metadata(result, "deduplicated_documents")
    assert final["crawl_dumps"] == 3 and final["crawl_dumps_not_curated_yet"] == []


def test_the_report_sums_each_stage_over_the_dumps(materialized):
    from pipelines.report import report, stage_summary

    result, resource = materialized
    raw = _metadata(result, "raw_documents")
    summary = stage_summary(resource.stage_dir("ingested"))
    assert summary["dumps"] == ["cut.warc.gz", "extra.jsonl.gz", "site.warc.gz"]
    assert summary["docs_out"] == raw["documents_out"] and summary["errors"] == raw["quarantined_records"]
    assert sum(summary["dropped"].values(), 0) == summary["docs_in"] - summary["docs_out"]
    text = report(resource.data_root)
    assert "not run yet" not in text and f"{raw['documents_out']:>9,}" in text
