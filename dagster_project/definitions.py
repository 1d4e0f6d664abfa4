"""The code location: `dagster dev -m dagster_project.definitions` (or `dagster dev` in the project root)."""

import hashlib
import json

import dagster as dg

from assets.curation import curation_assets
from assets.evaluation import evaluation_assets
from assets.online_dpo import online_dpo_assets
from assets.post_training import post_training_assets
from assets.pretraining import pretraining_assets
from assets.synthesis import TEACHER_TAG, synthesis_assets
from dagster_project.resources import (
    DATA_ROOT_ENV,
    DEFAULT_DATA_ROOT,
    CurationResource,
    SynthesisResource,
    TrainingResource,
    env_or_default,
)

curation_job = dg.define_asset_job(
    "curation_job",
    selection=dg.AssetSelection.groups("curation"),
    description="Ingest -> language ID -> quality filters -> dedup over everything under <data_root>/crawl.",
)

data_refresh_schedule = dg.ScheduleDefinition(
    name="data_refresh_schedule",
    job=curation_job,
    # A schedule's cron and default status are part of the definition (no run config), so these two are read
    # when the code location loads, through dg.EnvVar like the resources' variables.
    cron_schedule=dg.EnvVar("QWEN2_REFRESH_CRON").get_value(default="0 3 * * *"),
    execution_timezone="UTC",
    description="Re-runs curation daily. Unchanged shards are resumed, not redone. Turn it on in the UI "
    "(Automation) or set QWEN2_REFRESH_SCHEDULE=on.",
    default_status=(
        dg.DefaultScheduleStatus.RUNNING
        if dg.EnvVar("QWEN2_REFRESH_SCHEDULE").get_value() == "on"
        else dg.DefaultScheduleStatus.STOPPED
    ),
)


@dg.sensor(job=curation_job, minimum_interval_seconds=300, default_status=dg.DefaultSensorStatus.STOPPED)
def new_crawl_files_sensor(context: dg.SensorEvaluationContext, curation: CurationResource):
    """Starts curation when files are added to, or change in, <data_root>/crawl."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(curation.crawl_dir())
    if not fs.exists(path):
        return dg.SkipReason(f"{curation.crawl_dir()} does not exist yet")
    listing = sorted(
        (p, str(info.get("size")), str(info.get("mtime") or info.get("LastModified")))
        for p, info in fs.find(path, detail=True).items()
    )
    fingerprint = hashlib.sha1(json.dumps(listing).encode()).hexdigest()
    if fingerprint == context.cursor:
        return dg.SkipReason("no new crawl files")
    context.update_cursor(fingerprint)
    return dg.RunRequest(run_key=fingerprint)


pretraining_job = dg.define_asset_job(
    "pretraining_job",
    selection=dg.AssetSelection.groups("pretraining"),
    description="Mixture index -> proxy mixture search -> mixes -> packed shards -> stage-1 and stage-2 models.",
)

synthesis_job = dg.define_asset_job(
    "synthesis_job",
    selection=dg.AssetSelection.groups("synthesis"),
    description="Teacher -> quality labels -> fastText classifier -> quality tiers; synthetic SFT, pretraining and "
    "preference data, each deduplicated and decontaminated against the evaluation sets.",
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
