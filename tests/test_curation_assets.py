"""Materialize the curation group on the tests' own crawl, as the UI or `dagster asset materialize` would."""

import shutil

import dagster as dg
import pyarrow.parquet as pq
import pytest

from assets.curation import curation_assets
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
    assert "truncated_warc" in raw["quarantined_by_reason"] and "bad_utf8" in raw["quarantined_by_reason"]
    langs = _metadata(result, "language_filtered_documents")["languages"]
    assert all(f"| {lang} |" in langs for lang in ("en", "de", "zh", "code"))
    quality = _metadata(result, "quality_filtered_documents")
    assert "gopher_repetition/" in quality["drops_by_reason"]
    final = _metadata(result, "deduplicated_documents")
    assert final["duplicate_clusters"] >= 2
    assert "exact_duplicate" in final["drops_by_reason"] and "near_duplicate" in final["drops_by_reason"]
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
