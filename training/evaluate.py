"""Evaluation of the post-training checkpoints side by side (issue 11): one table, one plot, the same data for every
model.

    python -m training.evaluate --output runs/eval \\
        --model base=data/models/long_context/final --model sft=data/models/sft/final \\
        --model dpo=data/models/dpo/final --model online_dpo=data/models/online_dpo/final \\
        --reward-model data/models/reward/final --heldout-index data/mix/index \\
        --train-data sft=data/synthetic/sft/final --train-data pairs=data/synthetic/preference/final \\
        --train-data demonstrations=data/post_training/demonstrations [--settings-profile demo]

Metrics per model (any subset of checkpoints; each one optional):

- ``perplexity_<lang>`` and ``perplexity_all``: on held-out documents of the curated corpus (the mixture index's
  held-out slice, which no pretraining mix contains; ``training.eval_data``), every model reading the document as
  plain text (chat models too: no template), up to ``perplexity_max_tokens`` tokens with the closing
  ``<|endoftext|>``; exp of the mean token NLL, the first token not predicted.
- ``winrate_vs_<baseline>``: the reward model (``--reward-model``, ``training.reward_model.score_conversations``)
  scores each model's answer and the baseline's (the SFT model) to the same held-out prompts: 1 a win, 1/2 a tie
  (the same answer or score), 0 a loss. ``reward_mean``: the mean score of the model's answers.
- ``math_exact_match``: integer word problems generated from the seed (``training.eval_tasks``).
- ``humaneval_pass@1``: HumanEval through the chat template, the answer's code run with the tests in the sandbox.
- ``ifeval_prompt_accuracy`` / ``ifeval_instruction_accuracy``: ``training.ifeval``'s constraints checked by code.
- ``im_end_share``: of all generated answers, the share that ended with ``<|im_end|>`` before ``max_new_tokens``.

Every prompt goes through the project's ChatML template (the base model too: its share of ``<|im_end|>`` and its
scores say how far it is from a chat model). Generation is ``synth.llm``'s (``transformers`` batched on CPU or one
GPU, or ``vllm``), greedy; the answers go through ``synth.llm``'s request cache under ``<output>/request_cache`` and
the perplexities and reward scores are kept in ``<output>/work`` under a key of model, data and settings, so a killed
run resumes where it stopped and a rerun redoes only what changed. Every evaluation item is first decontaminated
against the training sources (``--train-data``; 13-gram overlap, ``training.eval_data``); overlapping items are
counted and dropped.

Writes ``evaluation.json`` (settings, the table, counts, decontamination), ``evaluation.parquet`` (one row per model
x metric), ``evaluation.md`` (the table), ``evaluation.png`` (the plot), ``answers.parquet`` (every item's prompt,
answer and verdict, for audit) and ``decontamination.json`` (each overlapping item and what it overlaps).

Light at import (pydantic only): the Dagster code location imports ``EvaluateSettings``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from pipelines.settings import Settings, parse_settings

TEMPLATE_VERSION = "evaluate-v1"
DEFAULT_HELDOUT_FRACTION = 0.01  # SFT's default, the smallest of the post-training recipes' defaults


class EvaluateSettings(Settings):
    """Sizes of the evaluation sets and how answers are generated. The defaults are ours (the report gives no
    evaluation protocol for these sizes)."""

    max_new_tokens: int = Field(
        512, ge=1, description="Token limit of every answer.", json_schema_extra={"unit": "tokens"}
    )
    math_items: int = Field(60, ge=0, description="Generated math word problems (integer answers).")
    humaneval_items: int | None = Field(None, ge=0, description="HumanEval problems, the first N; none: all 164.")
    ifeval_items: int | None = Field(
        None, ge=0, description="Instruction-following prompts, the first N; none: all 31."
    )
    winrate_prompts: int = Field(100, ge=0, description="Held-out prompts for the reward-model win rate.")
    perplexity_documents: int = Field(50, ge=0, description="Held-out corpus documents per language.")
    perplexity_max_tokens: int = Field(
        1024, ge=2, description="A document is cut to this many tokens.", json_schema_extra={"unit": "tokens"}
    )
    perplexity_languages: list[str] = Field(
        default_factory=list, description="Languages of the perplexity slice; empty: every language in it."
    )
    heldout_fraction: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Training rows under this held-out fraction (chat_data.is_heldout on the row id) were trained "
        "on by no post-training run: win-rate prompts come from them and decontamination skips them. none: the "
        "smallest heldout_fraction in the settings.json of the runs evaluated (else 0.01).",
    )
    decontam_ngram: int = Field(13, ge=1, description="Words per n-gram of the decontamination overlap test.")
    seed: int = Field(0, description="Seed of the math problems and of which documents and prompts are taken.")
    backend: Literal["transformers", "vllm"] = Field(
        "transformers", description="Generation backend (synth.llm): transformers (CPU or one GPU) or vllm (GPU)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: a CUDA GPU if there is one, else CPU.")
    batch_size: int = Field(16, ge=1, description="Prompts per generate call (transformers) and documents per pass.")
    sandbox_cpu_s: float = Field(10.0, gt=0, description="CPU seconds of one HumanEval program in the sandbox.")
    sandbox_wall_s: float = Field(20.0, gt=0, description="Wall-clock seconds of one HumanEval program.")
    sandbox_workers: int | None = Field(None, ge=1, description="Sandboxed programs at once (default: up to 4).")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's).")


# ---- small helpers ----------------------------------------------------------------------------------------------


def _device(settings: EvaluateSettings) -> str:
    if settings.device != "auto":
        return settings.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def heldout_fraction(settings: EvaluateSettings, run_dirs: list[str]) -> float:
    """The setting, else the smallest ``heldout_fraction`` of the runs that wrote ``run_dirs``."""
    from training.eval_data import run_folder_settings

    if settings.heldout_fraction is not None:
        return settings.heldout_fraction
    found = [run_folder_settings(d).get("heldout_fraction") for d in run_dirs]
    found = [f for f in found if isinstance(f, int | float)]
    return min(found) if found else DEFAULT_HELDOUT_FRACTION


# ---- perplexity -------------------------------------------------------------------------------------------------


def perplexity_sums(model_dir: str, texts: list[str], max_tokens: int, batch_size: int, device: str) -> list[list]:
    """``[summed NLL in nats, predicted tokens]`` per text: the text's tokens and ``<|endoftext|>``, cut to
    ``max_tokens``, read as plain text; the first token is not predicted. Right-padded batches of similar length;
    the loss goes through ``training.loss``'s chunked cross-entropy (no [tokens, vocabulary] logits)."""
    import torch
    from transformers import AutoModelForCausalLM

    from pipelines.tokenizer import ENDOFTEXT_ID, load_tokenizer
    from training.data import IGNORE_INDEX
    from training.loss import chunked_causal_lm_loss

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, local_files_only=True).to(device).eval()
    docs = [(enc.ids + [ENDOFTEXT_ID])[:max_tokens] for enc in load_tokenizer().encode_batch(texts)]
    order = sorted(range(len(docs)), key=lambda i: len(docs[i]))
    out: list[list] = [[0.0, 0] for _ in docs]
    weight = model.get_output_embeddings().weight
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = max(len(docs[i]) for i in batch)
        ids = torch.full((len(batch), width), ENDOFTEXT_ID, dtype=torch.long)  # [B, T]
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, : len(docs[i])] = torch.tensor(docs[i])
            labels[row, : len(docs[i])] = ids[row, : len(docs[i])]
            mask[row, : len(docs[i])] = 1
        with torch.inference_mode():
            hidden = model.model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            for row, i in enumerate(batch):
                nll = chunked_causal_lm_loss(hidden[row : row + 1], weight, labels[row : row + 1].to(device), 1024, 1)
                out[i] = [float(nll), len(docs[i]) - 1]
    del model
    return out


# ---- generation -------------------------------------------------------------------------------------------------


def _generate_into_cache(settings: dict, model_dir: str, requests: list, cache_dir: str) -> None:
    """Answer ``requests`` with one model into the request cache (the body of the vLLM child process)."""
    import gc

    from synth.llm.cache import CachedGenerator
    from synth.llm.generate import make_generator

    settings_ = EvaluateSettings(**settings)
    device = _device(settings_)
    opts: dict[str, Any] = {}
    if settings_.backend == "transformers":
        opts = {"device": device, "dtype": "bfloat16" if device == "cuda" else "float32"}
    inner = make_generator(settings_.backend, model_dir, batch_size=settings_.batch_size, **opts)
    # vLLM schedules everything it is given at once: large chunks; transformers: a few batches per fsync
    chunk = 4096 if settings_.backend == "vllm" else settings_.batch_size * 4
    generator = CachedGenerator(inner, cache_dir, chunk_size=chunk)
    try:
        generator.generate(requests)
    finally:
        generator.close()
        del generator, inner
        gc.collect()
        if device == "cuda":
            import torch

            torch.cuda.empty_cache()


def generate_answers(settings: EvaluateSettings, model_dir: str, requests: list, cache_dir: Path) -> tuple[list, int]:
    """Greedy answers of one model through ``synth.llm``, by way of the request cache: the model answers what the
    cache lacks, then every answer is read from the cache; (results, how many were cached before). vLLM runs in a
    child process per model, so its GPU memory is free again for the next model and for the perplexity pass (a vLLM
    engine does not give it back in-process)."""
    from synth.llm.base import GenerationError, Generator, local_model_id
    from synth.llm.cache import CachedGenerator

    class CacheOnly(Generator):
        backend, model_id = settings.backend, local_model_id(model_dir)

        def generate(self, missing):
            raise GenerationError(f"{len(missing)} answers of {model_dir} are not in the request cache")

    probe = CachedGenerator(CacheOnly(), cache_dir)
    try:
        return probe.generate(requests), len(requests)
    except GenerationError:
        already = probe.hits
    if settings.backend == "vllm":
        import multiprocessing

        child = multiprocessing.get_context("spawn").Process(
            target=_generate_into_cache, args=(settings.model_dump(), model_dir, requests, str(cache_dir))
        )
        child.start()
        child.join()
        if child.exitcode != 0:
            raise GenerationError(f"the vLLM generation process for {model_dir} failed (exit code {child.exitcode})")
    else:
        _generate_into_cache(settings.model_dump(), model_dir, requests, str(cache_dir))
    return CachedGenerator(CacheOnly(), cache_dir).generate(requests), already


# ---- the run ----------------------------------------------------------------------------------------------------


def build_items(
    settings: EvaluateSettings,
    train_sources: Mapping[str, str],
    heldout_index: str | None,
    fraction: float,
    say: Callable[[str], None],
    notes: list[str],
) -> tuple[dict[str, list], dict]:
    """Every task's items, decontaminated: (kept items per task, decontamination report); what could not be built
    is added to ``notes``."""
    from itertools import chain

    from training import eval_data as ed
    from training import eval_tasks as et
    from training.ifeval import ifeval_items

    docs = []
    if heldout_index and settings.perplexity_documents:
        per_lang = ed.heldout_documents(
            heldout_index, settings.perplexity_documents, settings.seed, settings.perplexity_languages
        )
        docs = [
            {"id": d["id"], "lang": lang, "text": d["text"], "texts": [d["text"]]}
            for lang, ds in per_lang.items()
            for d in ds
        ]
    prompts = []
    if train_sources and settings.winrate_prompts:
        rows = chain.from_iterable(ed.training_rows(n, p, fraction) for n, p in train_sources.items())
        prompts = ed.heldout_prompts(rows, settings.winrate_prompts, settings.seed)
    chat = [
        et.EvalItem("chat", f"{p['source']}/{p['id']}", p["messages"], [m["content"] for m in p["messages"]])
        for p in prompts
    ]
    ifeval = [
        et.EvalItem("ifeval", i.id, et.user(i.prompt), [i.prompt], extra={"constraints": i.constraints})
        for i in ifeval_items(settings.ifeval_items)
    ]
    humaneval = []
    if settings.humaneval_items != 0:
        from synth.eval_sets import EvalSetUnavailable

        try:
            humaneval = et.humaneval_items(settings.humaneval_items)
        except EvalSetUnavailable as e:
            notes.append(f"humaneval left out: {e}")
    items = {
        "perplexity": docs,
        "chat": chat,
        "math": et.math_items(settings.math_items, settings.seed),
        "humaneval": humaneval,
        "ifeval": ifeval,
    }
    say(
        "[evaluate] items before decontamination: "
        + ", ".join(f"{task} {len(v)}" for task, v in items.items())
        + f"; training sources {sorted(train_sources)} (held-out fraction {fraction:g})"
    )
    return ed.decontaminate(items, train_sources, fraction, settings.decontam_ngram)


def run(
    settings: EvaluateSettings,
    models: Mapping[str, str],
    output_dir: str,
    reward_model: str | None = None,
    train_sources: Mapping[str, str] | None = None,
    heldout_index: str | None = None,
    baseline: str = "sft",
    say: Callable[[str], None] = print,
) -> dict:
    """Evaluate ``models`` (name -> save_pretrained folder) into ``output_dir``; returns the summary."""
    from synth.llm.base import GenerationRequest, local_model_id
    from training import eval_report
    from training.eval_data import cached_json, digest
    from training.eval_scoring import score_models

    started = time.time()
    if not models:
        raise ValueError("no model to evaluate: give at least one --model NAME=DIR")
    for name, path in models.items():
        if not Path(path, "config.json").exists():
            raise ValueError(f"model {name}: {path} holds no config.json (not a save_pretrained folder)")
    if reward_model and not Path(reward_model, "config.json").exists():
        raise ValueError(f"reward model {reward_model} holds no config.json")
    if settings.num_threads:
        import torch

        torch.set_num_threads(settings.num_threads)
    out, train_sources = Path(output_dir), dict(train_sources or {})
    work = out / "work"
    fraction = heldout_fraction(settings, [*models.values(), *([reward_model] if reward_model else [])])
    notes: list[str] = []
    items, decontam = build_items(settings, train_sources, heldout_index, fraction, say, notes)
    dropped = {t: r["overlapping"] for t, r in decontam["tasks"].items() if r["overlapping"]}
    scanned = decontam["training_rows_scanned"]
    say(f"[evaluate] decontamination: {scanned} trained rows scanned; dropped {dropped or 'none'}")

    generated = [i for task in ("chat", "math", "humaneval", "ifeval") for i in items[task]]
    requests = [
        GenerationRequest(i.messages, max_new_tokens=settings.max_new_tokens, template_version=TEMPLATE_VERSION)
        for i in generated
    ]
    docs = items["perplexity"]
    texts = [d["text"] for d in docs]
    docs_key = digest([[d["id"], d["text"]] for d in docs])
    device = _device(settings)
    answers: dict[str, list] = {}
    perplexity: dict[str, list] = {}
    reused: dict[str, list[str]] = {}
    for name, path in models.items():
        t0 = time.time()
        answers[name], cached = (
            generate_answers(settings, path, requests, out / "request_cache") if requests else ([], 0)
        )
        key = {"model": local_model_id(path), "docs": docs_key, "max_tokens": settings.perplexity_max_tokens}
        perplexity[name], hit = cached_json(
            work,
            f"perplexity-{name}",
            key,
            lambda p=path: (
                perplexity_sums(p, texts, settings.perplexity_max_tokens, settings.batch_size, device) if texts else []
            ),
        )
        reused[name] = (["perplexity"] if hit else []) + ([f"{cached} answers"] if cached else [])
        seconds = time.time() - t0
        say(f"[evaluate] {name}: {len(requests)} answers ({cached} cached), {len(docs)} documents, {seconds:.1f}s")

    scored = score_models(settings, items, generated, answers, perplexity, reward_model, baseline, work, say)
    summary = {
        "settings": settings.model_dump(),
        "models": dict(models),
        "reward_model": reward_model,
        "baseline": baseline,
        "heldout_index": heldout_index,
        "heldout_fraction": fraction,
        "items": {task: len(v) for task, v in items.items()},
        "metrics": scored["metrics"],
        "items_per_metric": scored["counts"],
        "notes": notes + scored["notes"],
        "decontamination": {k: v for k, v in decontam.items() if k != "overlaps"},
        "reused": reused,
        "seconds": round(time.time() - started, 1),
    }
    eval_report.write_outputs(out, summary, scored["answers"], decontam)
    say(f"[evaluate] wrote {out / 'evaluation.json'} in {summary['seconds']}s\n" + eval_report.markdown_table(summary))
    return summary


# ---- command line -----------------------------------------------------------------------------------------------


def _named_path(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=PATH")
    return name, path


def build_parser() -> argparse.ArgumentParser:
    from pipelines.settings import ArgumentParser, settings_parser

    parser = ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    run_options = parser.add_argument_group("run options (paths; in Dagster they come from the resources)")
    run_options.add_argument(
        "--model", dest="models", action="append", type=_named_path, default=[], metavar="NAME=DIR",
        help="a save_pretrained folder to evaluate; repeat (base, sft, dpo, online_dpo ...)",
    )  # fmt: skip
    run_options.add_argument("--reward-model", default=None, metavar="DIR", help="reward model folder (win rate)")
    run_options.add_argument(
        "--train-data", dest="train_data", action="append", type=_named_path, default=[], metavar="NAME=PATH",
        help="a training source (SFT messages, preference pairs, demonstrations: Parquet file/folder or JSONL); "
        "NAME as its trainer named it; repeat",
    )  # fmt: skip
    run_options.add_argument(
        "--heldout-index", default=None, metavar="DIR", help="the mixture index (data/mix/index): perplexity slice"
    )
    run_options.add_argument("--baseline", default="sft", help="the model the win rate is against (default: sft)")
    run_options.add_argument("--output", required=True, help="folder for evaluation.json/.parquet/.md/.png")
    from training.evaluate import EvaluateSettings as registered  # the STAGES class, also under python -m

    return settings_parser(registered, parser=parser)


def _pipes_say():
    """Progress lines into a Dagster Pipes session when Dagster launched this process, else stdout."""
    import contextlib

    try:
        from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes
    except ImportError:
        return contextlib.nullcontext()
    return open_dagster_pipes() if PipesEnvVarParamsLoader().is_dagster_pipes_process() else contextlib.nullcontext()


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, settings = parse_settings(parser, argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per model is noise in the run's log
    for option, pairs in (("--model", args.models), ("--train-data", args.train_data)):
        if len(dict(pairs)) != len(pairs):
            parser.error(f"two {option} options have the same NAME")
    if not args.models:
        parser.error("give at least one --model NAME=DIR")
    with _pipes_say() as pipes:
        say = pipes.log.info if pipes is not None else (lambda message: print(message, flush=True))
        try:
            run(
                settings,
                dict(args.models),
                args.output,
                reward_model=args.reward_model,
                train_sources=dict(args.train_data),
                heldout_index=args.heldout_index,
                baseline=args.baseline,
                say=say,
            )
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(1) from None


if __name__ == "__main__":
    main()
