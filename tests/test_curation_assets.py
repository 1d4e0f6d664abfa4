"""Materialize the curation group on the tests' own crawl, as the UI or `dagster asset materialize` would."""

import shutil

import dagster as dg
import pyarrow.parquet as pq
import pytest

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
    result = dg.materialize(curation_assets, resources={"curation": resource})
    return result, resource


def _metadata(result, asset):
    (event,) = result.asset_materializations_for_node(asset)
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
    result = dg.materialize(curation_assets[:2], resources={"curation": resource})
    meta = _metadata(result, "raw_documents")
    assert meta["resumed_from_earlier_run"] is True
    assert meta["beam_counters"].get("ingest/shards_resumed") == 3


def test_sensor_requests_a_run_when_crawl_changes(materialized):
    _, resource = materialized
    context = dg.build_sensor_context(resources={"curation": resource})
    first = new_crawl_files_sensor(context)
    assert isinstance(first, dg.RunRequest)
    context = dg.build_sensor_context(cursor=context.cursor, resources={"curation": resource})
    assert isinstance(new_crawl_files_sensor(context), dg.SkipReason)
