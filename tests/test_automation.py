"""Automation as an operator expects it: retries on the I/O-heavy curation stages (never on training), one training
run and one teacher-heavy run at a time (concurrency pools, dagster_home/dagster.yaml), a maximum runtime on every
job, runs tagged with the crawl they covered, and no training started by the schedule or the sensor."""

import shutil
from pathlib import Path

import dagster as dg
import pytest
from conftest import materialize_curation
from dagster import DagsterInstance

from assets.curation import CURATION_RETRY, curation_assets, raw_documents
from assets.pools import DEDUP_POOL, TEACHER_POOL, TRAINING_POOL
from dagster_project.definitions import (
    CRAWL_REMOVED_TAG,
    CRAWL_TAG,
    MAX_RUNTIME_TAG,
    TRAINING_MODELS,
    data_refresh_schedule,
    defs,
    new_crawl_files_sensor,
)
from dagster_project.resources import PROJECT_ROOT, CurationResource

CURATION = {a.key.to_user_string() for a in curation_assets}
TEACHER = {"teacher_model", "quality_labels", "sft_data", "synthetic_pretraining_data", "preference_pairs"}


def _ops() -> dict[str, dg.OpDefinition]:
    graph = defs.resolve_asset_graph()
    return {k.to_user_string(): defs.get_assets_def(k).op for k in graph.get_all_asset_keys()}


def test_curation_stages_retry_with_exponential_backoff_and_training_never_does():
    ops = _ops()
    for name, op in ops.items():
        if name in CURATION:
            policy = op.retry_policy
            assert policy == CURATION_RETRY, name
            assert policy.max_retries >= 2 and policy.delay > 0 and policy.backoff == dg.Backoff.EXPONENTIAL
        else:
            assert op.retry_policy is None, name
    assert set(TRAINING_MODELS) <= set(ops)
    for job in ("curation_job", "pretraining_job", "synthesis_job"):  # nor through a job-wide retry policy
        assert defs.resolve_job_def(job).op_retry_policy is None, job


def test_training_models_and_teacher_assets_are_in_their_pools():
    ops = _ops()
    assert {name for name, op in ops.items() if op.pool == TRAINING_POOL} == set(TRAINING_MODELS)
    assert {name for name, op in ops.items() if op.pool == TEACHER_POOL} == TEACHER
    assert {name for name, op in ops.items() if op.pool == DEDUP_POOL} == {"deduplicated_documents"}
    assert all(op.pool in (None, TRAINING_POOL, TEACHER_POOL, DEDUP_POOL) for op in ops.values())
    # the pool reaches the steps of a run, which is what the run queue counts
    from dagster._core.execution.api import create_execution_plan

    pools = {step.key: step.pool for step in create_execution_plan(defs.resolve_job_def("pretraining_job")).steps}
    assert pools["base_model"] == pools["long_context_model"] == TRAINING_POOL
    assert pools["pretraining_shards"] is None
    pools = {step.key: step.pool for step in create_execution_plan(defs.resolve_job_def("synthesis_job")).steps}
    assert {key for key, pool in pools.items() if pool == TEACHER_POOL} == TEACHER


def test_the_project_instance_limits_pools_and_monitors_runs(tmp_path, monkeypatch):
    shutil.copy(PROJECT_ROOT / "dagster_home" / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with DagsterInstance.get() as instance:
        config = instance.get_concurrency_config()
        assert config.pool_config.default_pool_limit == 1
        assert config.pool_config.pool_granularity.value == "run"
        assert config.run_queue_config.max_concurrent_runs == 1
        assert instance.run_monitoring_enabled
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"


def test_every_job_has_a_maximum_runtime():
    for job in ("curation_job", "pretraining_job", "synthesis_job"):
        seconds = int(defs.resolve_job_def(job).tags[MAX_RUNTIME_TAG])
        assert 3600 <= seconds <= 31 * 24 * 3600, job


def test_automation_never_starts_training():
    graph = defs.resolve_asset_graph()
    automated = {defs.resolve_schedule_def("data_refresh_schedule").job_name}
    automated |= {t.job_name for t in defs.resolve_sensor_def("new_crawl_files_sensor").targets}
    assert automated == {"curation_job"}
    for job_name in automated:
        job = defs.resolve_job_def(job_name)
        selected = {k.to_user_string() for k in job.asset_layer.selected_asset_keys}
        assert selected == CURATION
        assert not selected & set(TRAINING_MODELS)
        assert {graph.get(dg.AssetKey(name)).group_name for name in selected} == {"curation"}
    # and no asset starts itself (declarative automation)
    assert all(graph.get(k).automation_condition is None for k in graph.get_all_asset_keys())


def _write(path: Path, text: str = "{}\n") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _evaluate(resource: CurationResource, instance: DagsterInstance, cursor: str | None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"curation": resource})
    return new_crawl_files_sensor(context), context.cursor


def _requests(result) -> dict[str, dg.RunRequest]:
    """The sensor's run requests by partition (the dedup-only request after a removal under None)."""
    return {r.partition_key: r for r in result.run_requests}


def _partition_changes(result) -> list[tuple[str, list[str]]]:
    return [(type(r).__name__, sorted(r.partition_keys)) for r in result.dynamic_partitions_requests]


def _apply(instance: DagsterInstance, result) -> None:
    """What the sensor daemon does with the partition requests."""
    for request in result.dynamic_partitions_requests:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)


def test_the_sensor_adds_a_partition_and_a_run_per_new_or_changed_crawl_dump(tmp_path):
    crawl = tmp_path / "crawl"
    resource = CurationResource(data_root=str(tmp_path))
    instance = DagsterInstance.ephemeral()
    skip, cursor = _evaluate(resource, instance, None)
    assert isinstance(skip, dg.SkipReason) and "does not exist" in skip.skip_message

    _write(crawl / "CC-MAIN-2024-10" / "a.jsonl")
    _write(crawl / "CC-MAIN-2024-10" / "sub" / "b.jsonl")
    _write(crawl / "CC-MAIN-2024-18" / "a.jsonl")
    _write(crawl / ".DS_Store")  # hidden entries are no dump
    first, cursor = _evaluate(resource, instance, cursor)
    assert _partition_changes(first) == [("AddDynamicPartitionsRequest", ["CC-MAIN-2024-10", "CC-MAIN-2024-18"])]
    runs = _requests(first)
    assert sorted(runs) == ["CC-MAIN-2024-10", "CC-MAIN-2024-18"]  # each dump curated alone
    assert runs["CC-MAIN-2024-10"].tags == {CRAWL_TAG: "CC-MAIN-2024-10"} and runs["CC-MAIN-2024-10"].run_key
    _apply(instance, first)

    again, cursor = _evaluate(resource, instance, cursor)
    assert isinstance(again, dg.SkipReason)

    _write(crawl / "CC-MAIN-2024-22" / "a.jsonl")  # a new dump: a new partition, a run for it alone
    new, cursor = _evaluate(resource, instance, cursor)
    assert _partition_changes(new) == [("AddDynamicPartitionsRequest", ["CC-MAIN-2024-22"])]
    assert sorted(_requests(new)) == ["CC-MAIN-2024-22"]
    assert _requests(new)["CC-MAIN-2024-22"].run_key != runs["CC-MAIN-2024-10"].run_key
    _apply(instance, new)

    _write(crawl / "CC-MAIN-2024-10" / "sub" / "b.jsonl", "{}\n{}\n")  # a changed file in an older dump
    changed, cursor = _evaluate(resource, instance, cursor)
    assert _partition_changes(changed) == [] and sorted(_requests(changed)) == ["CC-MAIN-2024-10"]
    assert _requests(changed)["CC-MAIN-2024-10"].run_key != runs["CC-MAIN-2024-10"].run_key

    shutil.rmtree(crawl / "CC-MAIN-2024-18")  # a removed dump: its partition goes, dedup runs over the rest
    removed, cursor = _evaluate(resource, instance, cursor)
    assert _partition_changes(removed) == [("DeleteDynamicPartitionsRequest", ["CC-MAIN-2024-18"])]
    (dedup,) = removed.run_requests
    assert dedup.partition_key is None and dedup.asset_selection == [dg.AssetKey("deduplicated_documents")]
    assert dedup.tags[CRAWL_REMOVED_TAG] == "CC-MAIN-2024-18"
    _apply(instance, removed)
    assert instance.get_dynamic_partitions("crawl_dump") == ["CC-MAIN-2024-10", "CC-MAIN-2024-22"]

    # a cursor written before the per-dump cursor (one hash of everything) counts as nothing seen
    legacy, _ = _evaluate(resource, instance, "0" * 40)
    assert sorted(_requests(legacy)) == ["CC-MAIN-2024-10", "CC-MAIN-2024-22"] and _partition_changes(legacy) == []


def test_the_schedule_adds_missing_partitions_and_curates_every_dump_in_one_run(tmp_path):
    resource = CurationResource(data_root=str(tmp_path))
    with dg.instance_for_test() as instance:  # a schedule needs an instance it can reach by reference
        instance.add_dynamic_partitions("crawl_dump", ["gone"])  # its folder was removed while the sensor was off
        with dg.build_schedule_context(instance=instance, resources={"curation": resource}) as context:
            assert isinstance(data_refresh_schedule(context), dg.SkipReason)
            _write(tmp_path / "crawl" / "dump-b" / "x.warc.gz")
            _write(tmp_path / "crawl" / "loose.jsonl")
            request = data_refresh_schedule(context)
        assert instance.get_dynamic_partitions("crawl_dump") == ["dump-b", "loose.jsonl"]
    assert isinstance(request, dg.RunRequest)
    assert request.tags == {
        CRAWL_TAG: "dump-b,loose.jsonl",
        "dagster/asset_partition_range_start": "dump-b",
        "dagster/asset_partition_range_end": "loose.jsonl",
    }
    schedule = defs.resolve_schedule_def("data_refresh_schedule")
    assert schedule.cron_schedule == "0 3 * * *" and schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED


def test_the_schedule_cuts_a_long_tag(tmp_path):
    for i in range(60):
        _write(tmp_path / "crawl" / f"CC-MAIN-2024-{i:02d}" / "a.jsonl")
    resource = CurationResource(data_root=str(tmp_path))
    with dg.instance_for_test() as instance, dg.build_schedule_context(instance, resources={"curation": resource}) as c:
        value = data_refresh_schedule(c).tags[CRAWL_TAG]
    assert len(value) <= 200 and value.startswith("CC-MAIN-2024-00,") and value.endswith("more)")


def _events(result, kind: str) -> list:
    return [e for e in result.all_events if e.event_type_value == kind]


def test_raw_documents_is_retried_and_the_retry_resumes(crawl_dir, tmp_path, monkeypatch):
    """A transient failure after the stage wrote its shards: the retry finds them and resumes them."""
    from pipelines import ingest

    shutil.copytree(crawl_dir, tmp_path / "crawl")
    real_run, calls = ingest.run_many, []

    def flaky_run(*args, **kwargs):
        summaries = real_run(*args, **kwargs)
        calls.append(summaries)
        if len(calls) == 1:
            raise ConnectionError("object store connection reset (injected)")
        return summaries

    monkeypatch.setattr(ingest, "run_many", flaky_run)
    # the real policy with no wait, so the test is quick
    monkeypatch.setattr(raw_documents.op, "_retry_policy", CURATION_RETRY._replace(delay=0))
    resource = CurationResource(data_root=str(tmp_path), workers=1)
    result = materialize_curation([raw_documents], resource)
    assert result.success and len(calls) == 2
    assert len(_events(result, "STEP_UP_FOR_RETRY")) == 1 and len(_events(result, "STEP_RESTARTED")) == 1
    event = result.asset_materializations_for_node("raw_documents")[0]
    assert event.metadata["resumed_from_earlier_run"].value is True
    assert event.metadata["documents_out"].value == sum(s["docs_out"] for s in calls[0].values()) > 0


def test_an_input_error_fails_at_once_without_retries(tmp_path):
    resource = CurationResource(data_root=str(tmp_path), workers=1)
    run_config = {"ops": {"raw_documents": {"config": {"inputs": [str(tmp_path / "missing.jsonl")]}}}}
    result = materialize_curation(
        [raw_documents], resource, dumps=["manual"], run_config=run_config, raise_on_error=False
    )
    assert not result.success
    assert not _events(result, "STEP_UP_FOR_RETRY")
    (failure,) = _events(result, "STEP_FAILURE")
    assert "missing.jsonl" in str(failure.event_specific_data.error)


@pytest.mark.parametrize("name", sorted(CURATION))
def test_curation_stage_functions_keep_their_signature_and_docs(name):
    assets_def = next(a for a in curation_assets if a.key.to_user_string() == name)
    assert assets_def.required_resource_keys >= {"curation"}
    assert assets_def.op.config_schema is not None and assets_def.descriptions_by_key[assets_def.key]
