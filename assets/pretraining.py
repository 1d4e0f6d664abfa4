"""Pretraining assets: mixture -> tokenized shards -> base model (stage 1) -> long-context model (stage 2).

Thin, like the curation assets: the work is in ``pipelines.mixing``, ``pipelines.tokenize_shards``,
``training.mixture_search`` and ``training.pretrain``. Training runs in its own process through
Dagster Pipes (``python -m training.pretrain``, or torchrun for several processes), so its progress
lines stream into the run's logs and cancelling the run sends SIGINT to the trainer, which stops.
"""

import json
import os
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field

from assets.curation import deduplicated_documents
from assets.metadata import counts_table, rows_table
from assets.mix_metadata import mix_checks as _mix_checks
from assets.mix_metadata import mix_metadata as _mix_metadata
from assets.pools import TRAINING_POOL
from assets.synthesis import instruction_documents, synthetic_pretraining_data
from dagster_project.resources import CurationResource, TrainingResource
from pipelines.mixing_settings import (
    MixtureConfig,
    MixtureIndexSettings,
    MixtureSettings,
    MixtureWeights,
    SearchConfig,
    SearchSettings,
)
from pipelines.progress import stage_heartbeat
from pipelines.settings import dagster_config, to_settings
from training.pretrain_settings import PretrainConfig, PretrainSettings

GROUP = "pretraining"
_MIX_CHECK = "Realised tokens per bucket are within the tolerance of the target (or one document)."


# Generated from the stage settings (pipelines.settings): the Launchpad shows the fields, defaults (the recipe values)
# and descriptions that ``--help`` shows; the demo's smaller sizes are in dagster_project/profiles/demo.toml.
_INPUTS = "Curated stage folders to mix. Empty: the deduplicated documents (or the quality tier below), plus the \
synthetic pretraining documents and the instruction documents when those stages have finished."
_TIER = "Mix a tier of the model-based quality scores instead of every deduplicated document: 'strict' (Qwen2's 7T \
choice) or 'relaxed' (the 12T one); materialize quality_tiers first. Empty: all."
MixtureIndexConfig = dagster_config(
    MixtureIndexSettings,
    "MixtureIndexConfig",
    inputs=(list[str], Field(default_factory=list, description=_INPUTS)),
    quality_tier=(Literal["", "strict", "relaxed"], Field(default="", description=_TIER)),
)
MixtureSearchConfig = dagster_config(
    SearchSettings,
    "MixtureSearchConfig",
    enabled=(bool, Field(default=True, description="Off: the mixture assets use their own weights.")),
    candidates=(
        list[dict],
        Field(
            default_factory=list,
            description="Candidate mixtures (MixtureConfig fields: name, domain_weights, language_temperature, "
            "...). Empty: balanced, web-natural and code-heavy.",
        ),
    ),
)
MixtureAssetConfig = dagster_config(
    MixtureSettings,
    "MixtureAssetConfig",
    use_search_winner=(
        bool,
        Field(
            default=True,
            description="Take the domain weights and temperature the proxy search chose; off: the fields below.",
        ),
    ),
)
PretrainAssetConfig = dagster_config(PretrainSettings, "PretrainAssetConfig")


# ----------------------------------------------------------------------------- helpers


def _mixture_from(config, name: str, long_only: bool, search_result: dict | None) -> MixtureConfig:
    """The asset's mixture settings, with the search winner's weights when it has one and the config asks."""
    values = to_settings(MixtureSettings, config).model_dump()
    if config.use_search_winner and search_result:
        values |= {k: search_result["winner_mixture"][k] for k in MixtureWeights.model_fields}
        name = f"{name}:{search_result['winner']}"
    return MixtureConfig(**values, name=name, long_documents_only=long_only)


def _mix_specs(asset: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec("schema", asset=asset, description="Every shard has the mixture Parquet schema."),
        dg.AssetCheckSpec("realised_mix_matches_target", asset=asset, description=_MIX_CHECK),
    ]


def _shards_metadata(summary: dict) -> dict:
    return {
        "dagster/row_count": summary.get("sequences", 0),
        "sequences": summary.get("sequences", 0),
        "seq_len": summary.get("seq_len", 0),
        "tokens": summary.get("tokens", 0),
        "tokens_dropped_tail": summary.get("tokens_dropped_tail", 0),
        "tokens_per_language": counts_table(summary.get("tokens_by_lang", {}), "language", "tokens"),
        "tokens_per_bucket": counts_table(summary.get("tokens_by_bucket", {}), "bucket", "tokens"),
        "path": dg.MetadataValue.path(summary["output"]),
        "seconds": summary.get("seconds", 0.0),
    }


def _heartbeat(stage_dir: str, label: str):
    """While a Beam stage runs, a line in the run log at least every 30 s: shards committed, documents processed."""
    return stage_heartbeat(dg.get_dagster_logger().info, stage_dir, label)


def _packed(curation: CurationResource, mix: str, out: str, seq_len: int) -> dg.MaterializeResult:
    """Tokenize and pack the mix ``mix`` into ``out`` at ``seq_len``; metadata and the packed_sequences check."""
    from pipelines.checks import packed_problems
    from pipelines.tokenize_shards import run_tokenize_stage

    out_dir = curation.mix_dir(out)
    with _heartbeat(out_dir, f"tokenize {mix}"):
        summary = run_tokenize_stage(curation.mix_dir(mix), out_dir, seq_len=seq_len, seed=0, **curation.run_kwargs())
    problems = packed_problems(out_dir, seq_len)
    check = dg.AssetCheckResult(
        check_name="packed_sequences",
        passed=not problems and summary.get("sequences", 0) > 0,
        metadata={"problems": dg.MetadataValue.json(problems[:20]), "sequences": summary.get("sequences", 0)},
    )
    return dg.MaterializeResult(metadata=_shards_metadata(summary), check_results=[check])


def _train(
    context: dg.AssetExecutionContext,
    pipes: dg.PipesSubprocessClient,
    training: TrainingResource,
    output_dir: str,
    config,
    **run_fields,
) -> dict:
    """Launches ``python -m training.pretrain --config settings.json`` through Pipes, the run options (``run_fields``,
    the output folder and the training resource's size and precision) as its run flags, and returns its
    summary.json. The whole config is validated here first, so a bad value fails the step before any process starts."""
    settings = to_settings(PretrainSettings, config)
    run = {"output_dir": output_dir, "model_size": training.model_size, "precision": training.precision, **run_fields}
    try:
        PretrainConfig(**settings.model_dump(), **run)
    except ValueError as e:
        raise dg.Failure(f"invalid training config: {e}") from None
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings_path = out / "settings.json"
    settings_path.write_text(settings.model_dump_json(indent=1))
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in run.items() if value is not None]
    command = training.launch_command("training.pretrain", "--config", str(settings_path), *flags)
    context.log.info("launching: " + " ".join(command))
    pipes.run(command=command, context=context, env={"PYTHONUNBUFFERED": "1"})
    return json.loads((out / "summary.json").read_text())


def _model_metadata(summary: dict, output_dir: str, title: str) -> dict:
    from training.plots import loss_curve_markdown

    metrics = Path(output_dir) / "metrics.jsonl"
    return {
        "loss_curve": dg.MetadataValue.md(loss_curve_markdown(metrics, title)),
        "final_train_loss": summary.get("final_loss"),
        "validation_loss": summary.get("val_loss"),
        "steps": summary.get("steps"),
        "tokens_seen": summary.get("tokens_seen"),
        "tokens_per_second": summary.get("tokens_per_s"),
        "parameters": summary.get("parameters"),
        "seq_len": summary.get("seq_len"),
        "rope_theta": summary.get("rope_theta"),
        "wall_seconds": summary.get("wall_seconds"),
        "checkpoint": dg.MetadataValue.path(str(Path(output_dir) / "final")),
        "tensorboard": dg.MetadataValue.path(str(Path(output_dir) / "tensorboard")),
    }


def _verify(final_dir: str) -> dict:
    """Loads the checkpoint in a fresh process and generates (transformers; what vLLM would load)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "training.verify", final_dir],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip()[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _saved_rope_theta(final_dir: str) -> float:
    from types import SimpleNamespace

    from training.model_configs import rope_theta_of

    return rope_theta_of(SimpleNamespace(**json.loads((Path(final_dir) / "config.json").read_text())))


def _loads_spec(asset: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        "loads_and_generates", asset=asset, description="The saved checkpoint loads with transformers and generates."
    )


def _loads_check(report: dict) -> dg.AssetCheckResult:
    ok = "error" not in report and report.get("generated_tokens", 0) > 0
    return dg.AssetCheckResult(
        check_name="loads_and_generates",
        passed=ok,
        metadata={k: dg.MetadataValue.text(str(v)) for k, v in report.items()},
    )


# ----------------------------------------------------------------------------- assets

KINDS = {"beam", "parquet"}


@dg.asset(
    group_name=GROUP, kinds=KINDS, deps=[deduplicated_documents, synthetic_pretraining_data, instruction_documents]
)
def mixture_index(config: MixtureIndexConfig, curation: CurationResource, training: TrainingResource):
    """Every curated document with its bucket (``<domain>/<lang>``) and Qwen2 token count, a held-out slice
    for validation, and per-bucket token histograms the mixture planner works from. Documents of at least the
    stage-1 context are counted as long (the stage-2 set); documents beyond the stage-2 context are cut into
    pieces of that size."""
    from pipelines.mixing import run_index
    from pipelines.shards import read_json

    settings = to_settings(MixtureIndexSettings, config)
    base = curation.tier_dir(config.quality_tier) if config.quality_tier else curation.stage_dir("dedup")
    if config.quality_tier and read_json(f"{base}/_SUCCESS.json") is None:
        raise dg.Failure(f"quality tier {config.quality_tier!r} is not there yet ({base}): materialize quality_tiers")
    inputs = list(config.inputs) or [base]
    for synthetic in (curation.synthetic_pretraining_dir(), curation.synthetic_dir("instruction")):
        if not config.inputs and read_json(f"{synthetic}/_SUCCESS.json") is not None:
            inputs.append(synthetic)  # domains "synthetic" and "instruction": buckets of their own
    with _heartbeat(curation.mix_dir("index"), "mixture index"):
        summary = run_index(
            inputs,
            curation.mix_dir("index"),
            settings.heldout_fraction,
            long_doc_tokens=training.stage1_seq_len,
            max_doc_tokens=training.long_seq_len,
            **curation.run_kwargs(),
        )
    buckets = summary["buckets"]
    rows = [
        {
            "bucket": name,
            "documents": b["docs"],
            "tokens": b["tokens"],
            "long documents": b["long_docs"],
            "long tokens": b["long_tokens"],
            "held out documents": b["heldout_docs"],
        }
        for name, b in sorted(buckets.items(), key=lambda kv: -kv[1]["tokens"])
    ]
    columns = [("bucket", "string"), ("documents", "int"), ("tokens", "int"), ("long documents", "int")]
    columns += [("long tokens", "int"), ("held out documents", "int")]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": summary.get("docs_out", 0),
            "inputs": dg.MetadataValue.json(inputs),
            "training_tokens": sum(b["tokens"] for b in buckets.values()),
            "long_document_tokens": sum(b["long_tokens"] for b in buckets.values()),
            "heldout_tokens": sum(b["heldout_tokens"] for b in buckets.values()),
            "buckets": rows_table(rows, columns),
            "path": dg.MetadataValue.path(summary["output"]),
            "seconds": summary.get("seconds", 0.0),
        }
    )


@dg.asset(
    group_name=GROUP,
    kinds=KINDS,
    deps=[mixture_index],
    check_specs=[
        dg.AssetCheckSpec(
            "packed_sequences",
            asset="validation_shards",
            description="Every row has seq_len tokens and its document segments add up.",
        )
    ],
)
def validation_shards(curation: CurationResource, training: TrainingResource):
    """The held-out slice in its natural mix, packed at the stage-1 context: the validation loss of every
    model and proxy model is measured on it."""
    from pipelines.mixing import MixtureConfig, run_select

    mix = curation.mix_dir("validation")
    with _heartbeat(mix, "validation mix"):
        natural = MixtureConfig(name="validation")
        run_select(curation.mix_dir("index"), mix, natural, split="validation", **curation.run_kwargs())
    return _packed(curation, "validation", "validation_tokens", training.stage1_seq_len)


@dg.asset(group_name=GROUP, kinds={"pytorch", "parquet"}, deps=[mixture_index, validation_shards])
def mixture_search(
    context: dg.AssetExecutionContext,
    config: MixtureSearchConfig,
    curation: CurationResource,
    training: TrainingResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
):
    """Candidate mixtures compared on proxy models (Qwen2 tuned its mix this way): each is realised with the
    same budget, packed, and trains small Qwen2 models from scratch, one per seed; each is scored on the held-out
    documents weighted to a target mix (default: every domain, and every language inside it, the same). The
    lowest mean validation loss wins; candidates within the seeds' noise of it are shown as a tie."""
    from training.mixture_search import DEFAULT_CANDIDATES

    work = curation.mix_dir("search")
    if not config.enabled:
        return dg.MaterializeResult(metadata={"enabled": False})
    Path(work).mkdir(parents=True, exist_ok=True)
    candidates = Path(work) / "candidates.json"
    candidates.write_text(json.dumps(list(config.candidates) or DEFAULT_CANDIDATES, indent=1))
    search = to_settings(SearchSettings, config)
    run = {"index": curation.mix_dir("index"), "work_dir": work, "seq_len": training.stage1_seq_len}
    run["workers"] = curation.workers or None
    try:
        SearchConfig(**search.model_dump(), **run)
    except ValueError as e:
        raise dg.Failure(f"invalid search config: {e}") from None
    settings = Path(work) / "settings.json"
    settings.write_text(search.model_dump_json(indent=1))
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in run.items() if value is not None]
    # Proxies are tiny: one process each, whatever nproc_per_node says.
    command = TrainingResource(nproc_per_node=1).launch_command(
        "training.mixture_search", "--config", str(settings), "--candidates", str(candidates), *flags
    )
    pipes_subprocess_client.run(command=command, context=context, env={"PYTHONUNBUFFERED": "1"})
    result = json.loads((Path(work) / "search.json").read_text())
    tied = set(result["tied_with_winner"])
    rows = [
        {
            "candidate": row["name"],
            "verdict": "winner" if row["name"] == result["winner"] else ("tie" if row["name"] in tied else ""),
            "domain weights": row["mixture"]["domain_weights"],
            "temperature": row["mixture"]["language_temperature"],
            "tokens": row["realised_tokens"],
            "train loss": row["train_loss"],
            "validation loss": row["val_loss"],
            "validation loss sd": row["val_loss_std"],
            "gap to winner": row.get("gap_standard_errors"),
            "natural-mix loss": row["natural_val_loss"],
        }
        for row in result["candidates"]
    ]
    columns = [
        ("candidate", "string"),
        ("verdict", "string", "winner, or tie: within the seeds' noise of the winner"),
        ("domain weights", "string"),
        ("temperature", "float", "language temperature"),
        ("tokens", "int", "realised tokens"),
        ("train loss", "float"),
        ("validation loss", "float", f"mean over seeds, {result['target']['kind']} target mix"),
        ("validation loss sd", "float", "standard deviation over seeds"),
        ("gap to winner", "float", "in standard errors"),
        ("natural-mix loss", "float", "validation loss on the held-out slice as it is"),
    ]
    return dg.MaterializeResult(
        metadata={
            "winner": result["winner"],
            "decision": result["decision"],
            "tied_with_winner": ", ".join(result["tied_with_winner"]) or "none",
            "validation_target": dg.MetadataValue.json(result["target"]["weights"]),
            "candidates": rows_table(rows, columns),
            "winner_mixture": dg.MetadataValue.json(result["winner_mixture"]),
            "path": dg.MetadataValue.path(str(Path(work) / "search.json")),
        }
    )


def _search_result(curation: CurationResource) -> dict | None:
    from pipelines.shards import read_json

    return read_json(f"{curation.mix_dir('search')}/search.json")


@dg.asset(
    group_name=GROUP,
    kinds=KINDS,
    deps=[mixture_index, mixture_search],
    check_specs=_mix_specs("pretraining_mixture"),
)
def pretraining_mixture(config: MixtureAssetConfig, curation: CurationResource):
    """The stage-1 mix: a token budget split over domains and languages (temperature sampling), with a cap on
    repeats, globally shuffled into shards. The realised tokens per bucket are shown against the target."""
    from pipelines.mixing import run_select

    mixture = _mixture_from(config, "stage1", False, _search_result(curation))
    with _heartbeat(curation.mix_dir("stage1"), "stage-1 mix"):
        summary = run_select(curation.mix_dir("index"), curation.mix_dir("stage1"), mixture, **curation.run_kwargs())
    return dg.MaterializeResult(metadata=_mix_metadata(summary), check_results=_mix_checks(summary))


@dg.asset(
    group_name=GROUP,
    kinds=KINDS,
    deps=[mixture_index, mixture_search],
    check_specs=_mix_specs("long_context_mixture"),
)
def long_context_mixture(config: MixtureAssetConfig, curation: CurationResource):
    """The stage-2 mix: only documents longer than the stage-1 context, mixed with the same weights."""
    from pipelines.mixing import run_select

    mixture = _mixture_from(config, "long", True, _search_result(curation))
    with _heartbeat(curation.mix_dir("long"), "long-context mix"):
        summary = run_select(curation.mix_dir("index"), curation.mix_dir("long"), mixture, **curation.run_kwargs())
    return dg.MaterializeResult(metadata=_mix_metadata(summary), check_results=_mix_checks(summary))


_PACKED_CHECK = "Every row has exactly seq_len tokens and its document segments add up to it."


@dg.asset(
    group_name=GROUP,
    kinds=KINDS,
    deps=[pretraining_mixture],
    check_specs=[dg.AssetCheckSpec("packed_sequences", asset="pretraining_shards", description=_PACKED_CHECK)],
)
def pretraining_shards(curation: CurationResource, training: TrainingResource):
    """The stage-1 mix tokenized with the Qwen2 tokenizer, ``<|endoftext|>`` between documents, packed into
    rows of the stage-1 context with document boundaries kept, shuffled with a seed."""
    return _packed(curation, "stage1", "stage1_tokens", training.stage1_seq_len)


@dg.asset(
    group_name=GROUP,
    kinds=KINDS,
    deps=[long_context_mixture],
    check_specs=[dg.AssetCheckSpec("packed_sequences", asset="long_context_shards", description=_PACKED_CHECK)],
)
def long_context_shards(curation: CurationResource, training: TrainingResource):
    """The stage-2 mix packed at the long context (stage-1 context x long_context_factor)."""
    return _packed(curation, "long", "long_tokens", training.long_seq_len)


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "transformers"},
    pool=TRAINING_POOL,
    deps=[pretraining_shards, validation_shards],
    check_specs=[_loads_spec("base_model")],
)
def base_model(
    context: dg.AssetExecutionContext,
    config: PretrainAssetConfig,
    curation: CurationResource,
    training: TrainingResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
):
    """Stage 1: a Qwen2ForCausalLM trained from scratch at the short context (RoPE base 10,000), AdamW with
    warmup and cosine decay, gradient clipping; resumable checkpoints and a save_pretrained folder."""
    out = curation.model_dir("base")
    summary = _train(
        context,
        pipes_subprocess_client,
        training,
        out,
        config,
        data=curation.mix_dir("stage1_tokens"),
        val_data=curation.mix_dir("validation_tokens"),
    )
    report = _verify(f"{out}/final")
    return dg.MaterializeResult(
        metadata=_model_metadata(summary, out, "stage 1 (base model)"), check_results=[_loads_check(report)]
    )


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "transformers"},
    pool=TRAINING_POOL,
    deps=[long_context_shards, base_model],
    check_specs=[
        _loads_spec("long_context_model"),
        dg.AssetCheckSpec(
            "rope_base_raised",
            asset="long_context_model",
            description="Stage 2 config: RoPE base raised (to 1,000,000) and the context 8x stage 1.",
        ),
    ],
)
def long_context_model(
    context: dg.AssetExecutionContext,
    config: PretrainAssetConfig,
    curation: CurationResource,
    training: TrainingResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
):
    """Stage 2: continues the base model at the long context on long documents, with the RoPE base raised
    from 10,000 to 1,000,000 (Qwen2: 4,096 -> 32,768 tokens)."""
    out = curation.model_dir("long_context")
    summary = _train(
        context,
        pipes_subprocess_client,
        training,
        out,
        config,
        data=curation.mix_dir("long_tokens"),
        init_from=f"{curation.model_dir('base')}/final",
        rope_theta=training.long_context_rope_theta,
    )
    report = _verify(f"{out}/final")
    base_theta = _saved_rope_theta(f"{curation.model_dir('base')}/final")
    raised = (
        report.get("rope_theta") == training.long_context_rope_theta
        and base_theta < training.long_context_rope_theta
        and report.get("max_position_embeddings") == training.long_seq_len
    )
    rope_check = dg.AssetCheckResult(
        check_name="rope_base_raised",
        passed=bool(raised),
        metadata={
            "stage1_rope_theta": base_theta,
            "stage2_rope_theta": report.get("rope_theta"),
            "stage2_max_position_embeddings": report.get("max_position_embeddings"),
            "expected_context": training.long_seq_len,
        },
    )
    return dg.MaterializeResult(
        metadata=_model_metadata(summary, out, "stage 2 (long context)"),
        check_results=[_loads_check(report), rope_check],
    )


pretraining_assets = [
    mixture_index,
    validation_shards,
    mixture_search,
    pretraining_mixture,
    long_context_mixture,
    pretraining_shards,
    long_context_shards,
    base_model,
    long_context_model,
]
