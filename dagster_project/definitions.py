"""The code location: `dagster dev -m dagster_project.definitions` (or `dagster dev` in the project root)."""

import hashlib
import json

import dagster as dg

from assets.curation import curation_assets, deduplicated_documents
from assets.evaluation import evaluation_assets
from assets.online_dpo import online_dpo_assets
from assets.post_training import post_training_assets
from assets.pretraining import pretraining_assets
from assets.synthesis import TEACHER_TAG, synthesis_assets
from dagster_project.crawl_partitions import CRAWL_DUMPS, crawl_dumps, partition_range, sync_partitions
from dagster_project.resources import (
    DATA_ROOT_ENV,
    DEFAULT_DATA_ROOT,
    CurationResource,
    SynthesisResource,
    TrainingResource,
    env_or_default,
)

# Run monitoring (dagster_home/dagster.yaml: run_monitoring) fails a run that is still going after its job's
# `dagster/max_runtime` (seconds): a hung Beam worker or a stuck teacher server does not hold the queue forever.
# The limits are generous for the demo; change them per run in the Launchpad's tags.
MAX_RUNTIME_TAG = "dagster/max_runtime"
MAX_RUNTIME_SECONDS = {
    "curation_job": 12 * 3600,
    "synthesis_job": 48 * 3600,
    "pretraining_job": 14 * 24 * 3600,
}
# The crawl a run covered: the top-level folders (or files) of <data_root>/crawl that were new or changed.
CRAWL_TAG = "qwen2/crawl"
CRAWL_REMOVED_TAG = "qwen2/crawl_removed"
# Model-training assets: in the "training" pool (assets.pools), never retried, never started by the schedule or the
# sensor.
TRAINING_MODELS = ("base_model", "long_context_model", "sft_model", "reward_model", "dpo_model", "online_dpo_model")


def _max_runtime(job_name: str) -> dict[str, str]:
    return {MAX_RUNTIME_TAG: str(MAX_RUNTIME_SECONDS[job_name])}


curation_job = dg.define_asset_job(
    "curation_job",
    selection=dg.AssetSelection.groups("curation"),
    description="Ingest -> language ID -> quality filters per crawl dump (partitions), then dedup over every dump.",
    tags=_max_runtime("curation_job"),
)


def _tag_value(names: list[str], limit: int = 200) -> str:
    """``names`` joined by commas, cut to ``limit`` characters with how many were left out."""
    text = ",".join(names)
    if len(text) <= limit:
        return text
    shown = []
    for name in names:
        if len(",".join([*shown, name])) > limit - 16:
            break
        shown.append(name)
    return ",".join(shown) + f",... (+{len(names) - len(shown)} more)"


@dg.schedule(
    name="data_refresh_schedule",
    job=curation_job,
    # A schedule's cron and default status are part of the definition (no run config), so these two are read
    # when the code location loads, through dg.EnvVar like the resources' variables.
    cron_schedule=dg.EnvVar("QWEN2_REFRESH_CRON").get_value(default="0 3 * * *"),
    execution_timezone="UTC",
    description="Re-runs curation daily over every crawl dump as one run (tag qwen2/crawl): partitions are added "
    "for dumps the sensor has not seen and removed for dumps whose folder is gone; unchanged shards are resumed, "
    "not redone. Turn it on in the UI (Automation) or set QWEN2_REFRESH_SCHEDULE=on.",
    default_status=(
        dg.DefaultScheduleStatus.RUNNING
        if dg.EnvVar("QWEN2_REFRESH_SCHEDULE").get_value() == "on"
        else dg.DefaultScheduleStatus.STOPPED
    ),
)
def data_refresh_schedule(context: dg.ScheduleEvaluationContext, curation: CurationResource):
    dumps = crawl_dumps(curation)
    if not dumps:
        return dg.SkipReason(f"{curation.crawl_dir()} does not exist yet or is empty")
    sync_partitions(context.instance, dumps)
    first, last = partition_range(context.instance).split("...")
    return dg.RunRequest(
        tags={
            CRAWL_TAG: _tag_value(sorted(dumps)),
            "dagster/asset_partition_range_start": first,
            "dagster/asset_partition_range_end": last,
        }
    )


@dg.sensor(job=curation_job, minimum_interval_seconds=300, default_status=dg.DefaultSensorStatus.STOPPED)
def new_crawl_files_sensor(context: dg.SensorEvaluationContext, curation: CurationResource):
    """Curates each crawl dump (a top-level folder or file of <data_root>/crawl) that is new or changed since the
    sensor last looked: a ``crawl_dump`` partition is added for a new dump, and one run per dump curates that
    partition (then dedup over every dump); tag qwen2/crawl names it. When dumps are removed, their partitions are
    deleted and dedup runs again over the rest (tag qwen2/crawl_removed)."""
    dumps = crawl_dumps(curation)
    if dumps is None:
        return dg.SkipReason(f"{curation.crawl_dir()} does not exist yet")
    try:  # the cursor: dump -> fingerprint (an older cursor, one hash of everything, counts as nothing seen)
        seen = json.loads(context.cursor or "{}")
        seen = seen if isinstance(seen, dict) else {}
    except ValueError:
        seen = {}
    changed = sorted(d for d, fingerprint in dumps.items() if seen.get(d) != fingerprint)
    known = set(context.instance.get_dynamic_partitions(CRAWL_DUMPS.name))
    removed = sorted(known - set(dumps))
    if not changed and not removed:
        return dg.SkipReason("no new crawl files")
    context.update_cursor(json.dumps(dumps, sort_keys=True))
    requests = [
        dg.RunRequest(run_key=f"{dump}:{dumps[dump]}", partition_key=dump, tags={CRAWL_TAG: dump}) for dump in changed
    ]
    partition_changes = []
    if new := sorted(set(changed) - known):
        partition_changes.append(CRAWL_DUMPS.build_add_request(new))
    if removed:
        partition_changes.append(CRAWL_DUMPS.build_delete_request(removed))
        if not changed:  # the remaining dumps' dedup no longer holds the removed ones' documents
            key = json.dumps(sorted(dumps))
            requests.append(
                dg.RunRequest(
                    run_key=f"removed:{hashlib.sha1(key.encode()).hexdigest()}",
                    asset_selection=[deduplicated_documents.key],
                    tags={CRAWL_TAG: "(files removed only)", CRAWL_REMOVED_TAG: _tag_value(removed)},
                )
            )
    return dg.SensorResult(run_requests=requests, dynamic_partitions_requests=partition_changes)


pretraining_job = dg.define_asset_job(
    "pretraining_job",
    selection=dg.AssetSelection.groups("pretraining"),
    description="Mixture index -> proxy mixture search -> mixes -> packed shards -> stage-1 and stage-2 models.",
    tags=_max_runtime("pretraining_job"),
)

synthesis_job = dg.define_asset_job(
    "synthesis_job",
    selection=dg.AssetSelection.groups("synthesis"),
    description="Teacher -> quality labels -> fastText classifier -> quality tiers; synthetic SFT, pretraining and "
    "preference data, each deduplicated and decontaminated against the evaluation sets.",
    tags=_max_runtime("synthesis_job"),
)


defs = dg.Definitions(
    assets=[
        *curation_assets,
        *pretraining_assets,
        *synthesis_assets,
        *post_training_assets,
        *evaluation_assets,
        *online_dpo_assets,
    ],
    jobs=[curation_job, pretraining_job, synthesis_job],
    schedules=[data_refresh_schedule],
    sensors=[new_crawl_files_sensor],
    # One teacher-loading step at a time (a CPU teacher uses every core); other steps run in parallel as usual.
    executor=dg.multiprocess_executor.configured(
        {"tag_concurrency_limits": [{"key": k, "value": v, "limit": 1} for k, v in TEACHER_TAG.items()]}
    ),
    resources={
        # Environment variables reach the resources as dg.EnvVar (resolved when a run starts, shown as such in
        # the UI); an unset one leaves the field's default (./data; no base URL).
        "curation": CurationResource(data_root=env_or_default(DATA_ROOT_ENV, DEFAULT_DATA_ROOT)),
        "training": TrainingResource(),
        "synthesis": SynthesisResource(base_url=env_or_default("OPENAI_BASE_URL", "")),
        # SIGINT to the trainer when a run is cancelled; it stops within one step and keeps its last checkpoint.
        "pipes_subprocess_client": dg.PipesSubprocessClient(forward_termination=True, termination_timeout_seconds=60),
    },
)
