"""The post-training evaluation asset: every checkpoint that exists, side by side, in one table and one plot.

Thin, like the training assets: the work is ``training.evaluate`` (with ``training.eval_data``, ``eval_tasks``,
``eval_scoring``, ``eval_report`` and ``ifeval``), launched in its own process through Dagster Pipes
(``python -m training.evaluate``), so its progress lines stream into the run's logs. The Launchpad config is
generated from ``training.evaluate.EvaluateSettings`` (the command line's settings, the same defaults); the demo's
sizes are the ``[post_training_evaluation]`` table of ``dagster_project/profiles/demo.toml``.

Launched by hand (or by a job the user defines): no schedule or sensor starts it.
"""

import json
import sys
from pathlib import Path

import dagster as dg

from assets.metadata import counts_table, rows_table
from assets.post_training import GROUP, dpo_model, reward_model, sft_model
from assets.pretraining import long_context_model
from dagster_project.resources import CurationResource
from pipelines.settings import dagster_config, to_settings
from training.evaluate import EvaluateSettings

EvaluationConfig = dagster_config(EvaluateSettings, "EvaluationConfig")

# name in the table -> the model folder (under <data_root>/models) whose final/ is evaluated when it exists
CHECKPOINTS = {"base": "long_context", "sft": "sft", "dpo": "dpo", "online_dpo": "online_dpo"}


def _final(curation: CurationResource, name: str) -> str:
    return f"{curation.model_dir(name)}/final"


def _parquet_folders(root: Path) -> dict[str, str]:
    """Each folder under ``root`` that holds Parquet files (or a data/ folder of them), by folder name."""
    if not root.is_dir():
        return {}
    found = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if any(folder.glob("*.parquet")) or any((folder / "data").glob("*.parquet")):
            found[folder.name] = str(folder)
    return found


def _image_markdown(path: str) -> str:
    from training.plots import png_markdown

    return png_markdown(Path(path).read_bytes(), "Post-training evaluation")


def training_sources(curation: CurationResource) -> dict[str, str]:
    """Every training data source on disk: the two pretraining mixes, the synthesis group's SFT rows and preference
    pairs, each folder of ``<data_root>/post_training`` (the demonstrations) and the online-DPO run's episodes."""
    sources = {}
    for name, mix in (("pretraining_mix", "stage1"), ("long_context_mix", "long")):
        if any(Path(curation.mix_dir(mix), "data").glob("*.parquet")):
            sources[name] = curation.mix_dir(mix)
    for name, folder in (("sft_data", "sft/final"), ("preference_pairs", "preference/final")):
        path = Path(curation.synthetic_dir(folder))
        if any(path.glob("*.parquet")) or any((path / "data").glob("*.parquet")):
            sources[name] = str(path)
    sources.update(_parquet_folders(Path(curation.data_root.rstrip("/"), "post_training")))
    episodes = Path(curation.model_dir("online_dpo"), "episodes")
    if any(episodes.glob("*.parquet")):
        sources["online_dpo_episodes"] = str(episodes)
    return sources


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "transformers"},
    deps=[long_context_model, sft_model, dpo_model, reward_model, dg.AssetKey("online_dpo_model")],
)
def post_training_evaluation(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    curation: CurationResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
):
    """The base (long-context), SFT, DPO and online-DPO checkpoints that exist, on the same data: perplexity per
    language on the corpus slice no pretraining mix holds, reward-model win rate against the SFT model on held-out
    prompts, exact match on generated math problems, HumanEval pass@1 in the sandbox, instruction following checked by
    code, and the share of answers that end with <|im_end|>. Every evaluation item is decontaminated against the
    training data first (13-gram overlap; overlapping items are counted and dropped)."""
    models = {
        name: _final(curation, folder)
        for name, folder in CHECKPOINTS.items()
        if Path(_final(curation, folder), "config.json").exists()
    }
    if not models:
        raise dg.Failure("no checkpoint to evaluate: materialize long_context_model or sft_model first")
    context.log.info(f"evaluating {', '.join(f'{n} ({p})' for n, p in models.items())}")
    out = Path(curation.data_root.rstrip("/"), "evaluation")
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "settings.json"
    config_path.write_text(json.dumps(to_settings(EvaluateSettings, config).model_dump(), indent=1))
    command = [sys.executable, "-m", "training.evaluate", "--config", str(config_path), "--output", str(out)]
    command += [a for name, path in models.items() for a in ("--model", f"{name}={path}")]
    if Path(_final(curation, "reward"), "config.json").exists():
        command += ["--reward-model", _final(curation, "reward")]
    else:
        context.log.warning("no reward model yet: the win rate is left out")
    command += [a for name, path in training_sources(curation).items() for a in ("--train-data", f"{name}={path}")]
    index = curation.mix_dir("index")
    if Path(index, "_SUCCESS.json").exists():
        command += ["--heldout-index", index]
    else:
        context.log.warning(f"{index} is not there: no perplexity (materialize mixture_index)")
    context.log.info("launching: " + " ".join(command))
    pipes_subprocess_client.run(command=command, context=context, env={"PYTHONUNBUFFERED": "1"})

    summary = json.loads((out / "evaluation.json").read_text())
    from training.eval_report import markdown_table, table_rows

    columns = [("metric", "string"), ("items", "int")] + [(m, "float") for m in summary["metrics"]]
    decontam = summary["decontamination"]["tasks"]
    plot = summary["files"].get("plot")
    metadata = {
        "evaluation": rows_table(table_rows(summary), columns),
        "evaluation_markdown": dg.MetadataValue.md(markdown_table(summary)),
        "plot": dg.MetadataValue.md(_image_markdown(plot) if plot else "_no plot (matplotlib missing)_"),
        "models": dg.MetadataValue.json(summary["models"]),
        "items": counts_table(summary["items"], "task", "items"),
        "decontamination_overlapping": counts_table(
            {task: r["overlapping"] for task, r in decontam.items()}, "task", "dropped items"
        ),
        "heldout_fraction": summary["heldout_fraction"],
        "notes": dg.MetadataValue.md("\n".join(f"- {n}" for n in summary["notes"]) or "_none_"),
        "wall_seconds": summary["seconds"],
        "summary": dg.MetadataValue.path(str(out / "evaluation.json")),
        "table": dg.MetadataValue.path(summary["files"]["table"]),
        "answers": dg.MetadataValue.path(summary["files"]["answers"]),
        "decontamination": dg.MetadataValue.path(summary["files"]["decontamination"]),
    }
    return dg.MaterializeResult(metadata=metadata)


evaluation_assets = [post_training_evaluation]
