"""Automation as an operator expects it: retries on the I/O-heavy curation stages (never on training), one training
run and one teacher-heavy run at a time (concurrency pools, dagster_home/dagster.yaml), a maximum runtime on every
job, runs tagged with the crawl they covered, and no training started by the schedule or the sensor."""

import shutil
from pathlib import Path

import dagster as dg
import pytest
from dagster import DagsterInstance

from assets.curation import CURATION_RETRY, curation_assets, raw_documents
from assets.pools import TEACHER_POOL, TRAINING_POOL
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
    assert all(op.pool in (None, TRAINING_POOL, TEACHER_POOL) for op in ops.values())
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


def test_the_sensor_tags_each_run_with_the_crawl_dumps_it_covers(tmp_path):
    crawl = tmp_path / "crawl"
    resource = CurationResource(data_root=str(tmp_path))
    instance = DagsterInstance.ephemeral()
    skip, cursor = _evaluate(resource, instance, None)
    assert isinstance(skip, dg.SkipReason) and "does not exist" in skip.skip_message

    _write(crawl / "CC-MAIN-2024-10" / "a.jsonl")
    _write(crawl / "CC-MAIN-2024-10" / "sub" / "b.jsonl")
    _write(crawl / "CC-MAIN-2024-18" / "a.jsonl")
    first, cursor = _evaluate(resource, instance, cursor)
    assert isinstance(first, dg.RunRequest) and first.run_key
    assert first.tags == {CRAWL_TAG: "CC-MAIN-2024-10,CC-MAIN-2024-18"}

    again, cursor = _evaluate(resource, instance, cursor)
    assert isinstance(again, dg.SkipReason)

    _write(crawl / "CC-MAIN-2024-22" / "a.jsonl")  # a new dump: the run names it alone
    new, cursor = _evaluate(resource, instance, cursor)
    assert new.tags == {CRAWL_TAG: "CC-MAIN-2024-22"} and new.run_key != first.run_key

    _write(crawl / "CC-MAIN-2024-10" / "sub" / "b.jsonl", "{}\n{}\n")  # a changed file in an older dump
    changed, cursor = _evaluate(resource, instance, cursor)
    assert changed.tags == {CRAWL_TAG: "CC-MAIN-2024-10"}

    shutil.rmtree(crawl / "CC-MAIN-2024-18")
    removed, cursor = _evaluate(resource, instance, cursor)
    assert removed.tags[CRAWL_REMOVED_TAG] == "CC-MAIN-2024-18"

    # a cursor written before the per-dump cursor (one hash of everything) counts as nothing seen
    legacy, _ = _evaluate(resource, instance, "0" * 40)
    assert legacy.tags == {CRAWL_TAG: "CC-MAIN-2024-10,CC-MAIN-2024-22"}


def test_the_sensor_cuts_a_long_tag(tmp_path):
    for i in range(60):
        _write(tmp_path / "crawl" / f"CC-MAIN-2024-{i:02d}" / "a.jsonl")
    request, _ = _evaluate(CurationResource(data_root=str(tmp_path)), DagsterInstance.ephemeral(), None)
    value = request.tags[CRAWL_TAG]
    assert len(value) <= 200 and value.startswith("CC-MAIN-2024-00,") and value.endswith("more)")


def test_the_schedule_tags_its_run_with_every_crawl_dump(tmp_path):
    resource = CurationResource(data_root=str(tmp_path))
    with dg.build_schedule_context(instance=DagsterInstance.ephemeral(), resources={"curation": resource}) as context:
        assert isinstance(data_refresh_schedule(context), dg.SkipReason)
        _write(tmp_path / "crawl" / "dump-b" / "x.warc.gz")
        _write(tmp_path / "crawl" / "loose.jsonl")
        request = data_refresh_schedule(context)
    assert isinstance(request, dg.RunRequest)
    assert request.tags == {CRAWL_TAG: "dump-b,loose.jsonl"}
    schedule = defs.resolve_schedule_def("data_refresh_schedule")
    assert schedule.cron_schedule == "0 3 * * *" and schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED


def _events(result, kind: str) -> list:
    return [e for e in result.all_events if e.event_type_value == kind]


def test_raw_documents_is_retried_and_the_retry_resumes(crawl_dir, tmp_path, monkeypatch):
    """A transient failure after the stage wrote its shards: the retry finds them and resumes them."""
    from pipelines import ingest

    shutil.copytree(crawl_dir, tmp_path / "crawl")
    real_run, calls = ingest.run, []

    def flaky_run(*args, **kwargs):
        summary = real_run(*args, **kwargs)
        calls.append(summary)
        if len(calls) == 1:
            raise ConnectionError("object store connection reset (injected)")
        return summary

    monkeypatch.setattr(ingest, "run", flaky_run)
    # the real policy with no wait, so the test is quick
    monkeypatch.setattr(raw_documents.op, "_retry_policy", CURATION_RETRY._replace(delay=0))
    resource = CurationResource(data_root=str(tmp_path), workers=1)
    result = dg.materialize([raw_documents], resources={"curation": resource})
    assert result.success and len(calls) == 2
    assert len(_events(result, "STEP_UP_FOR_RETRY")) == 1 and len(_events(result, "STEP_RESTARTED")) == 1
    (event,) = result.asset_materializations_for_node("raw_documents")
    assert event.metadata["resumed_from_earlier_run"].value is True
    assert event.metadata["documents_out"].value == calls[0]["docs_out"] > 0


def test_an_input_error_fails_at_once_without_retries(tmp_path):
    resource = CurationResource(data_root=str(tmp_path), workers=1)
    run_config = {"ops": {"raw_documents": {"config": {"inputs": [str(tmp_path / "missing.jsonl")]}}}}
    result = dg.materialize(
        [raw_documents], resources={"curation": resource}, run_config=run_config, raise_on_error=False
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
