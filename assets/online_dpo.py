"""Online DPO asset (Qwen2 report §4.3): the SFT model samples replies to prompts, the reward model picks the best
and the worst of each prompt's samples, DPO trains on those pairs, episode after episode (``training.online_dpo``).

Thin, like the other post-training assets: the trainer runs in its own process through Dagster Pipes (one process:
the recipe does not run under torchrun), so its per-episode lines stream into the run's logs and cancelling the run
stops it after the episode in progress (the last finished episode is checkpointed). The Launchpad config is generated
from ``training.online_dpo.OnlineDpoSettings``; the demo's sizes are the ``[online_dpo_model]`` table of
``dagster_project/profiles/demo.toml``.

Prompts: the prompts of the conversations the SFT model was trained on, each cut before its last assistant turn:
the synthesis group's SFT shards (``<data_root>/synthetic/sft/final``) and the chatterbot demonstrations the
``sft_model`` asset writes (``<data_root>/post_training/demonstrations/chatterbot.parquet``), whichever exist. The
policy has seen their answers, not its own samples: online DPO asks which of its own replies the reward model
prefers. A slice of them (``heldout_prompts``, by a hash) is never trained on and measures the win rate against the
SFT model. With ``merging`` set, the base for the SFT task vector is the long-context model (what SFT started from).

Launched by hand (or by a job the user defines): no schedule or sensor starts it.
"""

import json
from pathlib import Path

import dagster as dg

from assets.metadata import counts_table, rows_table
from assets.pools import TRAINING_POOL
from assets.post_training import (
    CHECK_FIELDS,
    GROUP,
    LOADS_DESCRIPTION,
    STOPS_DESCRIPTION,
    _checks,
    _generation_report,
    _has_parquet,
    reward_model,
    sft_model,
)
from dagster_project.resources import CurationResource, TrainingResource
from pipelines.settings import dagster_config, to_settings
from training.online_dpo import OnlineDpoSettings

OnlineDpoModelConfig = dagster_config(OnlineDpoSettings, "OnlineDpoModelConfig", **CHECK_FIELDS)
EPISODE_COLUMNS = [
    ("episode", "int"), ("mean_reward", "float"), ("reward_gap", "float", "mean best - worst score per prompt"),
    ("pairs_kept", "int"), ("pairs_dropped", "int"), ("loss", "float", "DPO loss over the kept pairs"),
    ("accuracy", "float", "implicit reward of chosen > rejected"), ("kl", "float", "estimated KL(policy || SFT)"),
    ("win_rate", "float", "greedy replies vs the SFT model's on held-out prompts, judged by the reward model"),
    ("gen_s", "float"), ("score_s", "float"), ("update_s", "float"), ("eval_s", "float"),
]  # fmt: skip


def _prompt_sources(curation: CurationResource) -> dict[str, str]:
    sources = {}
    synthetic = curation.synthetic_dir("sft/final")
    if _has_parquet(synthetic):
        sources["synthetic"] = synthetic
    demonstrations = Path(curation.data_root, "post_training", "demonstrations", "chatterbot.parquet")
    if demonstrations.exists():
        sources["demonstrations"] = str(demonstrations)
    return sources


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "transformers"},
    pool=TRAINING_POOL,
    deps=[sft_model, reward_model],
    check_specs=[
        dg.AssetCheckSpec(
            "loads_and_generates",
            asset="online_dpo_model",
            description=LOADS_DESCRIPTION,
        ),
        dg.AssetCheckSpec(
            "stops_at_im_end",
            asset="online_dpo_model",
            description=STOPS_DESCRIPTION + " (online DPO kept the end of turn the SFT model learned).",
        ),
    ],
)
def online_dpo_model(
    context: dg.AssetExecutionContext,
    config: OnlineDpoModelConfig,
    curation: CurationResource,
    training: TrainingResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
):
    """Online DPO of the SFT model: per episode the policy samples K replies per prompt, the reward model scores
    them, best and worst become chosen and rejected (pairs under the margin dropped), and DPO against the frozen SFT
    model trains on the rest; optionally through the Online Merging Optimizer. Per episode: mean reward, gap, pairs,
    loss, KL estimate, win rate against the SFT model on held-out prompts, seconds; every sample in a Parquet shard.
    Writes a chat save_pretrained folder (ChatML template, stops at <|im_end|>)."""
    from training.episodes import reward_curve_markdown

    settings = to_settings(OnlineDpoSettings, config)
    policy = f"{curation.model_dir('sft')}/final"
    scorer = f"{curation.model_dir('reward')}/final"
    for name, folder in (("sft_model", policy), ("reward_model", scorer)):
        if not Path(folder, "config.json").exists():
            raise dg.Failure(f"{folder} holds no model: materialize {name} first")
    sources = _prompt_sources(curation)
    if not sources:
        raise dg.Failure("no prompts: materialize sft_data, or sft_model with demonstrations > 0")
    out = Path(curation.model_dir("online_dpo"))
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "settings.json"
    config_path.write_text(json.dumps(settings.model_dump(), indent=1))
    args = ["--config", str(config_path), "--output", str(out), "--policy", policy, "--reward-model", scorer]
    args += [a for name, path in sources.items() for a in ("--prompts", f"{name}={path}")]
    if settings.merging != "none":
        base = f"{curation.model_dir('long_context')}/final"
        if not Path(base, "config.json").exists():
            raise dg.Failure(f"merging={settings.merging} needs the SFT model's base, {base}: materialize it first")
        args += ["--base", base]
    command = training.launch_command("training.online_dpo", *args)
    context.log.info("launching: " + " ".join(command))
    pipes_subprocess_client.run(command=command, context=context, env={"PYTHONUNBUFFERED": "1"})
    summary = json.loads((out / "summary.json").read_text())

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    per_episode = [{**r, "episode": r["step"]} for r in records if r.get("step", 0) > 0]
    first, final = summary.get("first") or {}, summary.get("final") or {}
    report = _generation_report(summary["final_dir"], out / "heldout_prompts.jsonl", config)
    metadata = {
        "episodes": rows_table(per_episode, EPISODE_COLUMNS, limit=200),
        "reward_curve": dg.MetadataValue.md(
            reward_curve_markdown(
                out / "metrics.jsonl", f"Online DPO ({settings.loss_type}, merging {settings.merging})"
            )
        ),
        "mean_reward_first_episode": first.get("mean_reward"),
        "mean_reward_last_episode": final.get("mean_reward"),
        "win_rate_before": summary.get("initial_win_rate"),
        "win_rate": summary.get("win_rate"),
        "kl_last_episode": final.get("kl"),
        "episodes_run": summary.get("episodes"),
        "pairs_kept": summary.get("pairs_kept"),
        "pairs_dropped": summary.get("pairs_dropped"),
        "train_prompts": summary.get("train_prompts"),
        "heldout_prompts": summary.get("heldout_prompts"),
        "prompts_by_source": dg.MetadataValue.json(summary.get("prompts", {})),
        "excluded": summary.get("excluded"),
        "excluded_by_reason": counts_table(summary.get("excluded_by_reason", {}), "reason", "rows"),
        "merging": settings.merging,
        "generation_seconds": summary.get("total_gen_s"),
        "scoring_seconds": summary.get("total_score_s"),
        "update_seconds": summary.get("total_update_s"),
        "wall_seconds": summary.get("wall_seconds"),
        "episodes_dir": dg.MetadataValue.path(summary["episodes_dir"]),
        "checkpoint": dg.MetadataValue.path(summary["final_dir"]),
        "checkpoints_dir": dg.MetadataValue.path(summary["checkpoints_dir"]),
        "excluded_rows": dg.MetadataValue.path(summary["excluded_dir"]),
        "tensorboard": dg.MetadataValue.path(str(out / "tensorboard")),
    }
    return dg.MaterializeResult(metadata=metadata, check_results=_checks(report, config))


online_dpo_assets = [online_dpo_model]
