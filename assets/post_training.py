"""Post-training assets (Qwen2 report §4): supervised fine-tuning of the long-context base model.

Thin, like the pretraining assets: the work is in ``training.sft`` (and ``training.chat_data``), launched in its own
process through Dagster Pipes (``python -m training.sft``, or torchrun for several processes), so its progress lines
stream into the run's logs and cancelling the run stops the trainer at its next step. The Launchpad config is
generated from ``training.sft.SftSettings`` (the command line's settings, the same defaults: Qwen2's values); the
demo's sizes are the ``[sft_model]`` table of ``dagster_project/profiles/demo.toml``.

``reward_model`` (``training.reward_model``) and ``dpo_model`` (``training.dpo``) start from the SFT model and train on
two sources of preference pairs, each through Pipes (torchrun for several processes, as SFT), configs generated
from their settings (``[reward_model]`` and ``[dpo_model]`` demo tables): the synthesis group's teacher-judged pairs and
``demo_preference_pairs`` (``synth.cheap_pairs``: a human answer preferred over the base model's sample and over
another prompt's answer, a few hundred cheap pairs for the demo). ``make demo`` runs the whole group after
pretraining and prints ``python -m training.post_training_report``.

Launched by hand (or by a job the user defines): no schedule or sensor starts a training asset.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
from pydantic import Field

from assets.metadata import counts_table, rows_table
from assets.pools import TRAINING_POOL
from assets.pretraining import long_context_model
from assets.synthesis import preference_pairs, sft_data
from dagster_project.resources import CurationResource, SynthesisResource, TrainingResource
from pipelines.settings import dagster_config, to_settings
from synth.cheap_pairs import CheapPairSettings
from training.chat_data import said_something
from training.dpo import DpoSettings
from training.reward_model import RewardModelSettings
from training.sft import SftSettings

GROUP = "post_training"

CHECK_FIELDS = {
    "check_prompts": (
        int,
        Field(8, ge=1, description="Held-out prompts the generation checks answer (greedy, in a fresh process)."),
    ),
    "check_max_new_tokens": (
        int,
        Field(
            64, ge=1, description="Token limit of the generation checks: a reply must end with <|im_end|> within it."
        ),
    ),
    "check_min_stop_share": (
        float,
        Field(
            1.0,
            ge=0.0,
            le=1.0,
            description="stops_at_im_end passes when at least this share of the check's replies say something and "
            "end with <|im_end|> within the token limit (1: every reply).",
        ),
    ),
}
"""The generation checks' settings, the same on every chat-model asset."""
LOADS_DESCRIPTION = (
    "final/ loads with transformers in a fresh process and answers check_prompts held-out prompts through its own "
    "chat template."
)
STOPS_DESCRIPTION = (
    "At least check_min_stop_share of the greedy replies to the held-out prompts say something and end with "
    "<|im_end|> before check_max_new_tokens"
)

SftModelConfig = dagster_config(
    SftSettings,
    "SftModelConfig",
    demonstrations=(
        int,
        Field(
            400,
            ge=0,
            description="Human-written chatterbot-corpus conversations (a language-balanced sample) added as the "
            "'demonstrations' source beside the synthetic SFT data; 0: none.",
        ),
    ),
    **CHECK_FIELDS,
)


def _has_parquet(folder: str) -> bool:
    path = Path(folder)
    return any(path.glob("*.parquet")) or any((path / "data").glob("*.parquet"))


def _generation_report(final_dir: str, prompts: Path, config) -> dict:
    """Greedy replies of the saved folder to held-out prompts, in a fresh process (as another user would load it)."""
    command = [sys.executable, "-m", "training.chat_data", "generate", final_dir, str(prompts)]
    command += ["--count", str(config.check_prompts), "--max-new-tokens", str(config.check_max_new_tokens)]
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip()[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _loss_values(metrics: Path, points: int = 50) -> dg.TableMetadataValue:
    """Training loss (every k-th step, the last always) and every validation loss, step by step."""
    records = (
        [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.exists() else []
    )
    train = [r for r in records if "loss" in r]
    every = max(1, -(-len(train) // points))
    kept = {r["step"]: {"step": r["step"], "loss": r["loss"], "lr": r["lr"]} for r in train[::every] + train[-1:]}
    for r in records:
        if "val_loss" in r:
            kept.setdefault(r["step"], {"step": r["step"]})["val_loss"] = r["val_loss"]
    rows = [kept[step] for step in sorted(kept)]
    return rows_table(rows, [("step", "int"), ("loss", "float"), ("val_loss", "float"), ("lr", "float")], limit=100)


def _replies_markdown(replies: list[dict]) -> str:
    lines = ["| prompt | reply | tokens | stopped at <\\|im_end\\|> |", "|---|---|---|---|"]
    for r in replies:
        cells = [r["prompt"], r["reply"]]
        cells = [c.replace("|", "\\|").replace("\n", " ")[:200] for c in cells]
        lines.append(f"| {cells[0]} | {cells[1]} | {r['tokens']} | {r['stopped_at_im_end']} |")
    return "\n".join(lines)


def _pretraining_leak_check(curation: CurationResource, heldout_fraction: float) -> dg.AssetCheckResult:
    """The synthetic SFT conversations this run holds out against those rendered into pretraining documents."""
    from synth.instruction_docs import rendered_sft_ids
    from training.chat_data import is_heldout

    sft, docs = curation.synthetic_dir("sft/final"), curation.synthetic_dir("instruction")
    held = {r["id"] for r in _stage_rows(sft, ["id"]) if is_heldout(r["id"], heldout_fraction)}
    leaked = sorted(held & rendered_sft_ids(docs))
    return dg.AssetCheckResult(
        check_name="heldout_not_in_pretraining",
        passed=not leaked,
        metadata={
            "heldout_synthetic": len(held),
            "in_pretraining": len(leaked),
            "ids": dg.MetadataValue.json(leaked[:20]),
        },
    )


def _stage_rows(stage_dir: str, columns: list[str]):
    from pipelines.shards import iter_stage_rows, read_json

    return iter_stage_rows(stage_dir, columns) if read_json(f"{stage_dir}/_SUCCESS.json") is not None else []


def _checks(report: dict, config) -> list[dg.AssetCheckResult]:
    """``loads_and_generates`` and ``stops_at_im_end`` from a ``_generation_report`` (``config``: ``CHECK_FIELDS``)."""
    replies = report.get("replies", [])
    shown = {"replies": dg.MetadataValue.md(_replies_markdown(replies))} if replies else {}
    error = {"error": dg.MetadataValue.text(report["error"])} if "error" in report else {}
    loads = dg.AssetCheckResult(
        check_name="loads_and_generates",
        passed="error" not in report and bool(replies) and all(r["tokens"] > 0 for r in replies),
        metadata={**error, **shown},
    )
    # a reply that is only <|im_end|> stops, but says nothing: it is not counted as a learned end of turn
    stopped = sum(r["stopped_at_im_end"] and said_something(r) for r in replies)
    share = stopped / len(replies) if replies else 0.0
    stops = dg.AssetCheckResult(
        check_name="stops_at_im_end",
        passed="error" not in report and bool(replies) and share >= config.check_min_stop_share,
        metadata={
            **shown,
            "stopped": f"{stopped} of {len(replies)} (with text before <|im_end|>)",
            "stop_share": round(share, 4),
            "min_stop_share": config.check_min_stop_share,
            "empty_replies": sum(not said_something(r) for r in replies),
            "max_new_tokens": config.check_max_new_tokens,
        },
    )
    return [loads, stops]


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "transformers"},
    pool=TRAINING_POOL,
    deps=[long_context_model, sft_data],
    check_specs=[
        dg.AssetCheckSpec(
            "loads_and_generates",
            asset="sft_model",
            description=LOADS_DESCRIPTION,
        ),
        dg.AssetCheckSpec(
            "stops_at_im_end",
            asset="sft_model",
            description=STOPS_DESCRIPTION + " (the model learned where a turn ends).",
        ),
        dg.AssetCheckSpec(
            "heldout_not_in_pretraining",
            asset="sft_model",
            description="No synthetic conversation this run holds out is among the instruction documents pretraining "
            "mixed in (instruction_documents' heldout_fraction must be at least this run's).",
        ),
    ],
)
def sft_model(
    context: dg.AssetExecutionContext,
    config: SftModelConfig,
    curation: CurationResource,
    training: TrainingResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
):
    """Supervised fine-tuning of the long-context model on the synthetic SFT conversations and human-written
    demonstrations: loss only on what the assistant writes (with each turn's closing <|im_end|>), conversations
    packed into rows with attention kept inside each one, bad rows set aside with a reason, a held-out slice for the
    validation loss. Writes a chat save_pretrained folder (ChatML template, stops at <|im_end|>)."""
    from training.chat_data import write_chatterbot_source
    from training.plots import loss_curve_markdown

    settings = to_settings(SftSettings, config)
    out = Path(curation.model_dir("sft"))
    out.mkdir(parents=True, exist_ok=True)
    sources = {}
    synthetic = curation.synthetic_dir("sft/final")
    if _has_parquet(synthetic):
        sources["synthetic"] = synthetic
    else:
        context.log.warning(f"{synthetic} holds no SFT shards yet; training on the demonstrations only")
    if config.demonstrations:
        path = f"{curation.data_root.rstrip('/')}/post_training/demonstrations/chatterbot.parquet"
        counts = write_chatterbot_source(path, config.demonstrations)
        context.log.info(f"demonstrations: {counts['conversations']} chatterbot-corpus conversations -> {path}")
        sources["demonstrations"] = path
    if not sources:
        raise dg.Failure("no SFT data: materialize sft_data, or set demonstrations > 0")
    config_path = out / "settings.json"
    config_path.write_text(json.dumps(settings.model_dump(), indent=1))
    args = ["--config", str(config_path), "--output", str(out), "--init", f"{curation.model_dir('long_context')}/final"]
    args += [a for name, path in sources.items() for a in ("--source", f"{name}={path}")]
    command = training.launch_command("training.sft", *args)
    context.log.info("launching: " + " ".join(command))
    pipes_subprocess_client.run(command=command, context=context, env={"PYTHONUNBUFFERED": "1"})
    summary = json.loads((out / "summary.json").read_text())

    report = _generation_report(summary["final_dir"], out / "heldout_prompts.jsonl", config)
    (out / "generation_check.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))  # for the report
    examples = "\n\n---\n\n".join(f"```\n{text}\n```" for text in summary.get("examples", []))
    metadata = {
        "loss_curve": dg.MetadataValue.md(loss_curve_markdown(out / "metrics.jsonl", "SFT")),
        "loss_values": _loss_values(out / "metrics.jsonl"),
        "final_train_loss": summary.get("final_loss"),
        "validation_loss": summary.get("val_loss"),
        "steps": summary.get("steps"),
        "train_conversations": summary.get("train_conversations"),
        "heldout_conversations": summary.get("heldout_conversations"),
        "conversations_by_source": counts_table(summary.get("conversations_by_source", {}), "source", "conversations"),
        "excluded": summary.get("excluded"),
        "excluded_by_reason": counts_table(summary.get("excluded_by_reason", {}), "reason", "rows"),
        "packing_efficiency": summary.get("packing_efficiency"),
        "loss_tokens": summary.get("loss_tokens"),
        "tokens_per_second": summary.get("tokens_per_s"),
        "examples": dg.MetadataValue.md("Tokens that carry loss are in [[ ]].\n\n" + (examples or "_no example_")),
        "wall_seconds": summary.get("wall_seconds"),
        "checkpoint": dg.MetadataValue.path(summary["final_dir"]),
        "excluded_rows": dg.MetadataValue.path(summary["excluded_dir"]),
        "tensorboard": dg.MetadataValue.path(str(out / "tensorboard")),
    }
    checks = _checks(report, config) + [_pretraining_leak_check(curation, settings.heldout_fraction)]
    return dg.MaterializeResult(metadata=metadata, check_results=checks)


# ---- reward model and offline DPO (training.reward_model, training.dpo) ------------------------------------------

RewardModelConfig = dagster_config(RewardModelSettings, "RewardModelConfig")
DpoModelConfig = dagster_config(DpoSettings, "DpoModelConfig")
PAIR_COLUMNS = [("step", "int"), ("loss", "float"), ("accuracy", "float"), ("margin", "float")]
PAIR_COLUMNS += [("val_loss", "float"), ("val_accuracy", "float"), ("val_margin", "float"), ("lr", "float")]


def _pair_values(metrics: Path, points: int = 50) -> dg.TableMetadataValue:
    """Training loss, accuracy and margin (every k-th step, the last always) and every validation, step by step."""
    records = (
        [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.exists() else []
    )
    train = [r for r in records if "loss" in r]
    every = max(1, -(-len(train) // points))
    kept = {r["step"]: dict(r) for r in train[::every] + train[-1:]}
    for r in records:
        if "val_loss" in r:
            kept.setdefault(r["step"], {"step": r["step"]}).update(r)
    return rows_table([kept[s] for s in sorted(kept)], PAIR_COLUMNS, limit=100)


CheapPairsConfig = dagster_config(CheapPairSettings, "CheapPairsConfig")


def _pair_sources(curation: CurationResource) -> dict[str, str]:
    """Where the pairwise recipes read pairs: source name -> folder."""
    return {
        "synthetic": curation.synthetic_dir("preference/final"),
        "cheap": curation.synthetic_dir("cheap_preference/final"),
    }


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "parquet"},
    deps=[long_context_model, sft_model],
    check_specs=[
        dg.AssetCheckSpec("schema", asset="demo_preference_pairs", description="PREFERENCE_SCHEMA shards."),
        dg.AssetCheckSpec(
            "chat_format",
            asset="demo_preference_pairs",
            description="Every prompt ends with a user turn; chosen and rejected are one assistant turn each.",
        ),
    ],
)
def demo_preference_pairs(
    context: dg.AssetExecutionContext,
    config: CheapPairsConfig,
    synthesis: SynthesisResource,
    curation: CurationResource,
):
    """Preference pairs without a judge, so the demo has a few hundred: a human chatterbot-corpus answer is chosen
    over the long-context base model's own sample for the prompt (human_vs_base) and over the human answer to
    another prompt (human_vs_other). Conversations the SFT run held out (its settings' heldout_fraction) are left
    out; deduplicated and decontaminated like the synthesis outputs into synthetic/cheap_preference/final, which
    reward_model and dpo_model read beside the teacher-judged pairs."""
    from pipelines.checks import schema_problems
    from pipelines.schema import PREFERENCE_SCHEMA
    from synth.cheap_pairs import run_cheap_pairs
    from synth.checks import chat_problems, examples_markdown
    from synth.decontam import CleanConfig, clean_stage
    from synth.llm.backends import TransformersGenerator

    settings = to_settings(CheapPairSettings, config)
    sft_settings = Path(curation.model_dir("sft"), "settings.json")
    if not sft_settings.exists():
        raise dg.Failure(f"{sft_settings} is missing: materialize sft_model first (its held-out split is kept out)")
    heldout = json.loads(sft_settings.read_text())["heldout_fraction"]
    base = f"{curation.model_dir('long_context')}/final"
    generator = None
    if "human_vs_base" in settings.methods:
        generator = TransformersGenerator(base, batch_size=settings.batch_size)
    raw = curation.synthetic_dir("cheap_preference/raw")
    summary = run_cheap_pairs(generator, raw, settings, heldout, log=context.log.info)
    final = _pair_sources(curation)["cheap"]
    clean = clean_stage(
        [raw], final, "preference", list(synthesis.eval_sets), CleanConfig(ngram=synthesis.decontam_ngram),
        **curation.run_kwargs(),
    )  # fmt: skip
    problems = schema_problems(final, PREFERENCE_SCHEMA)
    chat, checked = chat_problems(final, "preference")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": clean["output"],
            "pairs": clean["output"],
            "pairs_by_method": counts_table(clean.get("methods_out", {}), "method", "pairs"),
            "made_by_method": counts_table(summary.get("accepted_by_method", {}), "method", "pairs"),
            "dropped_by_reason": counts_table(summary.get("rejected", {}), "reason", "pairs"),
            "sft_heldout_left_out": summary.get("sft_heldout", 0),
            "sft_heldout_fraction": heldout,
            "dedup_removed": clean.get("exact_duplicate", 0) + clean.get("near_duplicate", 0),
            "decontaminated": sum(clean.get("contaminated", {}).values()),
            "base_model": summary.get("model_id") or "",
            "examples": dg.MetadataValue.md(examples_markdown(final, "preference", n=2)),
            "path": dg.MetadataValue.path(final),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="schema", passed=not problems, metadata={"problems": dg.MetadataValue.json(problems[:20])}
            ),
            dg.AssetCheckResult(
                check_name="chat_format",
                passed=not chat,
                metadata={"rows_checked": checked, "problems": dg.MetadataValue.json(chat)},
            ),
        ],
    )


def _train_on_pairs(
    context: dg.AssetExecutionContext,
    module: str,
    settings: RewardModelSettings | DpoSettings,
    name: str,
    curation: CurationResource,
    training: TrainingResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> tuple[Path, dict]:
    """Run ``python -m module`` (torchrun for several processes) from the SFT model on the preference pairs, through
    Pipes: two sources, the synthesis group's teacher-judged pairs (``synthetic``) and the human-vs-cheap pairs
    (``cheap``), each where it holds shards."""
    found = {name: path for name, path in _pair_sources(curation).items() if _has_parquet(path)}
    if not found:
        raise dg.Failure(
            f"no preference pairs in {list(_pair_sources(curation).values())}: materialize preference_pairs or "
            "demo_preference_pairs first"
        )
    context.log.info(f"preference pair sources: {found}")
    init = f"{curation.model_dir('sft')}/final"
    if not Path(init, "config.json").exists():
        raise dg.Failure(f"{init} holds no model: materialize sft_model first")
    out = Path(curation.model_dir(name))
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "settings.json"
    config_path.write_text(json.dumps(settings.model_dump(), indent=1))
    args = ["--config", str(config_path), "--output", str(out), "--init", init]
    args += [a for name, path in found.items() for a in ("--pairs", f"{name}={path}")]
    command = training.launch_command(module, *args)
    context.log.info("launching: " + " ".join(command))
    pipes_subprocess_client.run(command=command, context=context, env={"PYTHONUNBUFFERED": "1"})
    return out, json.loads((out / "summary.json").read_text())


def _pair_metadata(out: Path, summary: dict, title: str) -> dict:
    from training.plots import loss_curve_markdown

    val, before = summary.get("validation") or {}, summary.get("initial_validation") or {}
    final = summary.get("final") or {}
    return {
        "loss_curve": dg.MetadataValue.md(loss_curve_markdown(out / "metrics.jsonl", title)),
        "loss_values": _pair_values(out / "metrics.jsonl"),
        "final_train_loss": final.get("loss"),
        "heldout_accuracy": val.get("val_accuracy"),
        "heldout_accuracy_before": before.get("val_accuracy"),
        "heldout_margin": val.get("val_margin"),
        "heldout_margin_before": before.get("val_margin"),
        "heldout_loss": val.get("val_loss"),
        "steps": summary.get("steps"),
        "train_pairs": summary.get("train_pairs"),
        "heldout_pairs": summary.get("heldout_pairs"),
        "excluded": summary.get("excluded"),
        "excluded_by_reason": counts_table(summary.get("excluded_by_reason", {}), "reason", "pairs"),
        "wall_seconds": summary.get("wall_seconds"),
        "checkpoint": dg.MetadataValue.path(summary["final_dir"]),
        "excluded_rows": dg.MetadataValue.path(summary["excluded_dir"]),
        "tensorboard": dg.MetadataValue.path(str(out / "tensorboard")),
    }


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "transformers"},
    pool=TRAINING_POOL,
    deps=[sft_model, preference_pairs, demo_preference_pairs],
    check_specs=[
        dg.AssetCheckSpec(
            "accuracy_above_chance",
            asset="reward_model",
            description="On the held-out preference pairs the reward model scores the chosen reply above the rejected "
            "one more often than chance (0.5). A warning: a few demo pairs make a noisy estimate.",
        )
    ],
)
def reward_model(
    context: dg.AssetExecutionContext,
    config: RewardModelConfig,
    curation: CurationResource,
    training: TrainingResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
):
    """A reward model (Qwen2ForSequenceClassification, one score) initialised from the SFT model and trained on the
    preference pairs with the Bradley-Terry loss and a score-centering term; pairwise accuracy on held-out pairs.
    Writes a save_pretrained folder with the project's tokenizer and ChatML template."""
    settings = to_settings(RewardModelSettings, config)
    out, summary = _train_on_pairs(
        context, "training.reward_model", settings, "reward", curation, training, pipes_subprocess_client
    )
    metadata = _pair_metadata(out, summary, "Reward model (Bradley-Terry)")
    metadata["heldout_mean_score"] = (summary.get("validation") or {}).get("val_score")
    accuracy = (summary.get("validation") or {}).get("val_accuracy")
    check = dg.AssetCheckResult(
        check_name="accuracy_above_chance",
        passed=accuracy is not None and accuracy > 0.5,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "heldout_accuracy": accuracy if accuracy is not None else "no held-out pairs",
            "heldout_pairs": summary.get("heldout_pairs"),
        },
    )
    return dg.MaterializeResult(metadata=metadata, check_results=[check])


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "transformers"},
    pool=TRAINING_POOL,
    deps=[sft_model, preference_pairs, demo_preference_pairs],
)
def dpo_model(
    context: dg.AssetExecutionContext,
    config: DpoModelConfig,
    curation: CurationResource,
    training: TrainingResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
):
    """Offline DPO of the SFT model on the preference pairs against the frozen SFT weights (their log-probabilities
    computed once and stored beside the run); sigmoid or IPO loss; reward accuracy and margin on held-out pairs.
    Writes a chat save_pretrained folder (ChatML template, stops at <|im_end|>)."""
    settings = to_settings(DpoSettings, config)
    out, summary = _train_on_pairs(
        context, "training.dpo", settings, "dpo", curation, training, pipes_subprocess_client
    )
    metadata = _pair_metadata(out, summary, f"DPO ({settings.loss_type}, beta {settings.beta:g})")
    val = summary.get("validation") or {}
    metadata["heldout_chosen_reward"] = val.get("val_chosen_reward")
    metadata["heldout_rejected_reward"] = val.get("val_rejected_reward")
    return dg.MaterializeResult(metadata=metadata)


post_training_assets = [sft_model, demo_preference_pairs, reward_model, dpo_model]
