"""Preference pairs for the reward model and offline DPO: read, check, tokenize, batch, and the training loop both
recipes share (pretraining's optimizer, schedule, checkpoints, resume and RunLog, imported from ``training.resume``,
``training.setup``, ``training.runlog`` and ``training.checkpoint``).

A source is a Parquet file or folder of ``PREFERENCE_SCHEMA`` rows (the synthesis group's ``preference_pairs``:
``id``, ``prompt`` (messages ending with a user turn), ``chosen`` and ``rejected`` (each one assistant message)) or a
JSONL file of such objects; ``chosen``/``rejected`` may also be a plain string (the assistant's reply). A row without
an ``id`` gets a hash of its content. A bad row goes to ``<output>/excluded/`` with one of ``EXCLUDE_REASONS`` (the
conversation checks of ``training.chat_data`` apply to prompt + chosen and prompt + rejected).

Tokens: prompt + reply is rendered with the project's ChatML template (``chat_data.render_with_spans``, the default
system turn when there is none) and tokenized once with offsets; the *response mask* marks the tokens of the last
assistant turn, its content and its closing ``<|im_end|>`` (``chat_data.inside_spans``): the tokens DPO scores.
A pair is held out for validation by a hash of its id (``chat_data.is_heldout``).

Light at import (no torch, pyarrow or transformers at module top): the Dagster code location imports the settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pydantic import Field

from training.loop_settings import RESUMABLE_CHANGES, LoopSettings

EXCLUDE_REASONS = (
    "missing_field",  # prompt, chosen or rejected absent or empty
    "not_one_reply",  # chosen or rejected is not one assistant message
    "identical_responses",  # chosen and rejected say the same
    # and every reason of training.chat_data.EXCLUDE_REASONS for prompt + chosen or prompt + rejected
)


class PairTrainingSettings(LoopSettings):
    """Settings both pairwise recipes share (the reward model and DPO subclass it with their own defaults)."""

    epochs: int = Field(1, ge=1, description="Passes over the training pairs.")
    max_len: int = Field(
        4096,
        ge=16,
        description="Tokens of prompt + reply; a pair with a longer side is excluded (too_long).",
        json_schema_extra={"unit": "tokens"},
    )
    batch_size: int = Field(64, ge=1, description="Pairs per optimizer step.")
    micro_batch_size: int = Field(4, ge=1, description="Pairs per forward/backward pass (both replies of each).")
    heldout_fraction: float = Field(
        0.05, ge=0, lt=1, description="Share of pairs held out for validation, chosen by a hash of the pair id."
    )
    seed: int = Field(0, description="Seed of the epoch orders (and of a new score head).")
    eval_every: int = Field(0, ge=0, description="Validation every this many steps; 0: before and at the end only.")


@dataclass
class Pair:
    id: str
    source: str
    prompt: list[dict]
    chosen: list[dict]
    rejected: list[dict]
    chosen_ids: list[int] = field(default_factory=list)
    chosen_mask: list[bool] = field(default_factory=list)
    rejected_ids: list[int] = field(default_factory=list)
    rejected_mask: list[bool] = field(default_factory=list)


# ---- reading and checking --------------------------------------------------------------------------------------


def _as_reply(value: Any) -> Any:
    return [{"role": "assistant", "content": value}] if isinstance(value, str) else value


def check_pair(prompt: Any, chosen: Any, rejected: Any) -> tuple[str, str] | None:
    """``(reason, detail)`` when the row is not a usable preference pair, else None."""
    from training.chat_data import check_messages

    for name, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        if value is None or (hasattr(value, "__len__") and len(value) == 0):
            return "missing_field", f"{name} is missing or empty"
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], Mapping):
            return "not_one_reply", f"{name} is not one message"
        if value[0].get("role") != "assistant":
            return "not_one_reply", f"{name} is a {value[0].get('role')!r} message, not the assistant's"
    if not isinstance(prompt, list):
        return "not_a_conversation", f"prompt is {type(prompt).__name__}"
    for name, reply in (("chosen", chosen), ("rejected", rejected)):
        problem = check_messages(list(prompt) + list(reply))
        if problem:
            return problem[0], f"prompt + {name}: {problem[1]}"
    if chosen[0]["content"].strip() == rejected[0]["content"].strip():
        return "identical_responses", "chosen and rejected are the same reply"
    return None


def read_pair_rows(path: str) -> Iterable[dict]:
    """Every row of a Parquet file/folder or a JSONL file as a dict (a line that is not a JSON object: {})."""
    if path.endswith((".jsonl", ".json")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        row = {}
                    yield row if isinstance(row, dict) else {}
        return
    import pyarrow.parquet as pq

    from training.chat_data import parquet_files

    files = parquet_files(path)
    if not files:
        raise ValueError(f"pairs {path}: no .parquet files (give a Parquet file, a folder of them, or a .jsonl)")
    for f in files:
        yield from pq.read_table(f).to_pylist()


def load_pairs(sources: Mapping[str, str]) -> tuple[list[Pair], list[Any]]:
    """Every row of every source (name -> path) as a Pair or an ``Excluded`` row (``training.chat_data``)."""
    from training.chat_data import Excluded, row_id

    pairs, excluded = [], []
    for name, path in sources.items():
        for row in read_pair_rows(path):
            prompt, chosen, rejected = row.get("prompt"), _as_reply(row.get("chosen")), _as_reply(row.get("rejected"))
            rid = str(row.get("id") or row_id(name, [prompt, chosen, rejected]))
            problem = check_pair(prompt, chosen, rejected)
            if problem:
                preview = json.dumps(row, ensure_ascii=False, default=str)[:300]
                excluded.append(Excluded(rid, name, problem[0], problem[1], preview))
                continue

            def clean(messages: list) -> list[dict]:
                return [{"role": m["role"], "content": m["content"]} for m in messages]

            pairs.append(Pair(rid, name, clean(prompt), clean(chosen), clean(rejected)))
    return pairs, excluded


def tokenize_pairs(pairs: list[Pair], tokenizer: Any) -> None:
    """Fill each pair's token ids and response masks (the last assistant turn and its ``<|im_end|>``) in place."""
    from training.chat_data import inside_spans, render_with_spans

    for side in ("chosen", "rejected"):
        rendered = [render_with_spans(p.prompt + getattr(p, side)) for p in pairs]
        if not rendered:
            continue
        enc = tokenizer([t for t, _ in rendered], add_special_tokens=False, return_offsets_mapping=True)
        for p, (_, spans), ids, offsets in zip(pairs, rendered, enc["input_ids"], enc["offset_mapping"]):
            setattr(p, f"{side}_ids", list(ids))
            setattr(p, f"{side}_mask", inside_spans(offsets, spans[-1:]))


def split_too_long(pairs: list[Pair], limit: int) -> tuple[list[Pair], list[Any]]:
    from training.chat_data import Excluded

    kept, excluded = [], []
    for p in pairs:
        n = max(len(p.chosen_ids), len(p.rejected_ids))
        if n > limit:
            preview = json.dumps([p.prompt, p.chosen, p.rejected], ensure_ascii=False)[:300]
            excluded.append(Excluded(p.id, p.source, "too_long", f"{n} tokens > {limit} (max_len)", preview))
        else:
            kept.append(p)
    return kept, excluded


def pairs_fingerprint(pairs: list[Pair]) -> str:
    """A hash of the pairs' ids, tokens and response masks, in order."""
    import numpy as np

    h = hashlib.sha256()
    for p in pairs:
        h.update(p.id.encode() + b"\0")
        for ids, mask in ((p.chosen_ids, p.chosen_mask), (p.rejected_ids, p.rejected_mask)):
            h.update(np.asarray(ids, dtype=np.int64).tobytes() + b"|")
            h.update(np.packbits(np.asarray(mask, dtype=bool)).tobytes() + b"|")
    return h.hexdigest()


def prepare_pairs(settings: PairTrainingSettings, sources: Mapping[str, str], tokenizer: Any) -> dict:
    """Read, check, tokenize and split the pairs; returns the pieces and counts for the summary."""
    from training.chat_data import is_heldout

    pairs, excluded = load_pairs(sources)
    tokenize_pairs(pairs, tokenizer)
    pairs, too_long = split_too_long(pairs, settings.max_len)
    excluded += too_long
    train = [p for p in pairs if not is_heldout(p.id, settings.heldout_fraction)]
    heldout = [p for p in pairs if is_heldout(p.id, settings.heldout_fraction)]
    if not train:
        raise ValueError(f"no training pairs in {dict(sources)} ({len(excluded)} excluded, {len(heldout)} held out)")
    return {
        "train": train,
        "heldout": heldout,
        "excluded": excluded,
        "counts": {
            "pairs_by_source": dict(Counter(p.source for p in pairs)),
            "train_pairs": len(train),
            "heldout_pairs": len(heldout),
            "excluded": len(excluded),
            "excluded_by_reason": dict(Counter(x.reason for x in excluded)),
        },
    }


def step_batches(n_train: int, settings: PairTrainingSettings) -> list[list[int]]:
    """Train-pair indices of every optimizer step: each epoch a seeded permutation, the epochs concatenated and cut
    into ``batch_size`` pairs (the last step may hold fewer)."""
    import numpy as np

    order: list[int] = []
    for epoch in range(settings.epochs):
        order += np.random.default_rng([settings.seed, epoch, 11]).permutation(n_train).tolist()
    return [order[i : i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]


# ---- tensors ---------------------------------------------------------------------------------------------------


def pair_tensors(pairs: list[Pair], pad_id: int) -> dict:
    """Both replies of each pair as one right-padded batch: rows [chosen_0..chosen_{B-1}, rejected_0..]; input_ids,
    attention_mask, response_mask (bool), all [2B, T]."""
    import torch

    seqs = [(p.chosen_ids, p.chosen_mask) for p in pairs] + [(p.rejected_ids, p.rejected_mask) for p in pairs]
    width = max(len(ids) for ids, _ in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    response = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (tokens, mask) in enumerate(seqs):
        ids[i, : len(tokens)] = torch.tensor(tokens)
        attention[i, : len(tokens)] = 1
        response[i, : len(tokens)] = torch.tensor(mask, dtype=torch.bool)
    return {"input_ids": ids, "attention_mask": attention, "response_mask": response}


def sequence_logps(logits: Any, input_ids: Any, response_mask: Any) -> tuple[Any, Any]:
    """Per row: the summed log-probability of the response tokens (each predicted from the tokens before it) and
    their count. ``logits`` [N, T, V] of a causal LM on ``input_ids`` [N, T]."""
    import torch

    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    mask = response_mask[:, 1:]
    return (picked * mask).sum(-1), mask.sum(-1)


# ---- the shared training loop ----------------------------------------------------------------------------------


@dataclass
class Recipe:
    """What a pairwise recipe plugs into ``train_pairs``.

    ``build_model(device)``: the model to train (weights from the init folder). ``prepare(model, data, out)``: run
    once before a checkpoint is loaded (DPO computes its reference log-probabilities here); returns what
    ``pair_loss`` gets as ``extra``. ``pair_loss(model, batch, pairs, extra)``: per-pair losses [B] and per-pair
    statistics {name: [B]} (accuracy, margin, ...). ``kind``: the final folder's checkpoint kind.
    """

    name: str
    build_model: Callable[[Any], Any]
    prepare: Callable[[Any, dict, Path], Any]
    pair_loss: Callable[[Any, dict, list[Pair], Any], tuple[Any, dict]]
    kind: str = "chat"


def run_key(settings: PairTrainingSettings, init: str, fingerprint: str, recipe: str) -> str:
    from training.sft import _init_fingerprint

    values = settings.model_dump(exclude=RESUMABLE_CHANGES | {"micro_batch_size"})
    payload = json.dumps([recipe, values, _init_fingerprint(init), fingerprint], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def train_pairs(
    recipe: Recipe,
    settings: PairTrainingSettings,
    sources: Mapping[str, str],
    output_dir: str,
    init: str,
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """Train ``recipe`` on the pairs of ``sources`` from ``init`` into ``output_dir`` (resuming there when a
    checkpoint of the same run key is there); returns the summary also written to summary.json."""
    import torch

    from pipelines.tokenizer import ENDOFTEXT_ID
    from training.chat_data import write_excluded
    from training.checkpoint import (
        checkpoint_tokenizer,
        latest_checkpoint,
        load_checkpoint,
        remove_partial_checkpoints,
        save_checkpoint,
        save_pretrained_folder,
    )
    from training.resume import first_segment, lr_at, supersede_stale_run
    from training.runlog import RunLog
    from training.setup import make_optimizer, setup_distributed
    from training.signals import KILL_AFTER_STEP_ENV, StopOnSignal, TrainingInterrupted

    started = time.perf_counter()
    if not (Path(init) / "config.json").exists():
        raise ValueError(f"init={init}: no config.json there; give a save_pretrained folder (e.g. the SFT model's)")
    if not sources:
        raise ValueError("no pairs: give at least one --pairs NAME=PATH")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(f"training.{recipe.name} runs in one process (one GPU or the CPU); launch it without torchrun")
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    out = Path(output_dir)
    ckpt_root = out / "checkpoints"
    kill_after = int(os.environ.get(KILL_AFTER_STEP_ENV, "0"))

    data = prepare_pairs(settings, sources, checkpoint_tokenizer("chat"))
    train, heldout = data["train"], data["heldout"]
    steps_plan = step_batches(len(train), settings)
    max_steps = min(len(steps_plan), settings.max_steps) if settings.max_steps else len(steps_plan)
    key = run_key(settings, init, pairs_fingerprint(train + heldout), recipe.name)

    with ExitStack() as stack, StopOnSignal() as stop:
        device = setup_distributed(SimpleNamespace(device=settings.device)).device
        out.mkdir(parents=True, exist_ok=True)
        remove_partial_checkpoints(ckpt_root)
        superseded = supersede_stale_run(out, key)
        write_excluded(data["excluded"], out / "excluded")
        (out / "run_config.json").write_text(
            json.dumps({"settings": settings.model_dump(), "pairs": dict(sources), "init": init}, indent=1)
        )
        use_bf16 = settings.precision == "bf16" or (
            settings.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
        )
        autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext

        torch.manual_seed(settings.seed)
        model = recipe.build_model(device)
        n_params = sum(p.numel() for p in model.parameters())
        with autocast():  # DPO's reference pass runs as the policy's first step would
            extra = recipe.prepare(model, data, out)
        cfg = SimpleNamespace(**settings.model_dump(exclude={"max_steps"}), max_steps=max_steps)
        optimizer = make_optimizer(model, cfg, fused=device.type in ("cpu", "cuda"))
        schedule = [first_segment(cfg)]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_at(i + 1, cfg, schedule) / cfg.lr)

        step, elapsed_before, initial_val = 0, 0.0, None
        resume_dir = latest_checkpoint(ckpt_root)
        if resume_dir is not None:
            state = load_checkpoint(resume_dir, model, optimizer)
            scheduler.load_state_dict(state["scheduler"])
            step, elapsed_before, initial_val = state["step"], state["elapsed_s"], state.get("initial_val")
        log = RunLog(out, step, stack, progress)
        c = data["counts"]
        where = f"resuming from {resume_dir.name}" if resume_dir else "starting"
        if superseded is not None:
            where += f" (checkpoints of other data or settings moved to {superseded})"
        log.info(
            f"{where}: {recipe.name}, {n_params:,} parameters, {c['train_pairs']:,} pairs ({c['heldout_pairs']} held "
            f"out, {c['excluded']} excluded: {c['excluded_by_reason']}), {max_steps} steps of up to "
            f"{settings.batch_size} pairs on {device.type}, {'bf16' if use_bf16 else 'fp32'}"
        )

        def micro_batches(pair_list: list[Pair]) -> Iterable[tuple[list[Pair], dict]]:
            for i in range(0, len(pair_list), settings.micro_batch_size):
                chunk = pair_list[i : i + settings.micro_batch_size]
                yield chunk, {k: v.to(device) for k, v in pair_tensors(chunk, ENDOFTEXT_ID).items()}

        def evaluate() -> dict | None:
            """Mean loss and statistics over the held-out pairs."""
            if not heldout:
                return None
            model.eval()
            sums: Counter = Counter()
            with torch.no_grad():
                for chunk, batch in micro_batches(heldout):
                    with autocast():
                        losses, stats = recipe.pair_loss(model, batch, chunk, extra)
                    sums["loss"] += float(losses.sum())
                    for name, values in stats.items():
                        sums[name] += float(values.float().sum())
            model.train()
            return {f"val_{name}": value / len(heldout) for name, value in sums.items()}

        if initial_val is None:
            initial_val = evaluate()
            if initial_val is not None and step == 0:
                log.record({"step": 0, **initial_val})

        def checkpoint() -> None:
            trainer_state = {
                "elapsed_s": elapsed_before + time.perf_counter() - started,
                "scheduler": scheduler.state_dict(),
                "settings": settings.model_dump(),
                "run_key": key,
                "initial_val": initial_val,
            }
            save_checkpoint(ckpt_root, step, model, optimizer, trainer_state, keep=settings.keep_checkpoints)

        model.train()
        last, val = None, None
        while step < max_steps:
            if stop.signum:
                raise TrainingInterrupted(stop.signum or signal.SIGTERM)
            t0 = time.perf_counter()
            batch_pairs = [train[i] for i in steps_plan[step]]
            sums: Counter = Counter()
            for chunk, batch in micro_batches(batch_pairs):
                with autocast():
                    losses, stats = recipe.pair_loss(model, batch, chunk, extra)
                (losses.sum() / len(batch_pairs)).backward()  # the step's loss: the mean over its pairs
                sums["loss"] += float(losses.detach().sum())
                for name, values in stats.items():
                    sums[name] += float(values.detach().float().sum())
            grad_norm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), settings.grad_clip if settings.grad_clip > 0 else float("inf")
            )
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            last = {name: value / len(batch_pairs) for name, value in sums.items()}
            record = {
                "step": step,
                **last,
                "lr": lr,
                "grad_norm": float(grad_norm),
                "pairs": len(batch_pairs),
                "seconds": time.perf_counter() - t0,
                "elapsed": elapsed_before + time.perf_counter() - started,
            }
            log.record(record)
            if step % settings.log_every == 0 or step == max_steps:
                shown = " ".join(f"{k} {v:.4f}" for k, v in last.items())
                log.info(f"step {step}/{max_steps} {shown} lr {lr:.2e} grad_norm {record['grad_norm']:.3f}", record)
            if (settings.eval_every and step % settings.eval_every == 0) or step == max_steps:
                val = evaluate()
                if val is not None:
                    log.record({"step": step, **val})
                    log.info(f"step {step} " + " ".join(f"{k} {v:.4f}" for k, v in val.items()))
            if step % settings.checkpoint_every == 0 or step == max_steps:
                checkpoint()
            if kill_after and step == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

        if val is None:  # resumed a finished run: report its validation again
            val = evaluate()
        final_dir = save_pretrained_folder(model, None, out / "final", kind=recipe.kind)
        summary: dict[str, Any] = {
            "recipe": recipe.name,
            "steps": step,
            "final": last if last is not None else _last_logged(out),
            "initial_validation": initial_val,
            "validation": val,
            **c,
            "parameters": n_params,
            "init": init,
            "pairs": dict(sources),
            "precision": "bf16" if use_bf16 else "fp32",
            "resumed_from_step": int(resume_dir.name.split("_")[1]) if resume_dir else None,
            "wall_seconds": time.perf_counter() - started,
            "output_dir": str(out),
            "final_dir": str(final_dir),
            "excluded_dir": str(out / "excluded"),
        }
        tmp = out / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=1, ensure_ascii=False))
        os.replace(tmp, out / "summary.json")
        log.info(f"done: {step} steps, validation {val}, model in {final_dir}")
        log.finish(summary)
        return summary


def _last_logged(out: Path) -> dict | None:
    path = out / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    train = [r for r in records if "loss" in r and r.get("step", 0) > 0]
    return {k: v for k, v in train[-1].items() if k not in ("step",)} if train else None


def recipe_metrics(metrics: Path) -> list[dict]:
    """The records of a run's metrics.jsonl (for the Dagster assets' tables)."""
    if not metrics.exists():
        return []
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]


# ---- command line shared by both recipes ----------------------------------------------------------------------


def build_parser(prog: str, description: str, settings_class: type) -> Any:
    from pipelines.settings import ArgumentParser, settings_parser
    from training.sft import _source

    parser = ArgumentParser(prog=prog, description=description)
    run_options = parser.add_argument_group("run options (paths; in Dagster they come from the resources)")
    run_options.add_argument(
        "--pairs",
        dest="pairs",
        action="append",
        type=_source,
        default=[],
        metavar="NAME=PATH",
        help="preference pairs: Parquet file or folder (PREFERENCE_SCHEMA) or JSONL; repeat for several",
    )
    run_options.add_argument("--output", required=True, help="folder for checkpoints, logs, excluded/, final/")
    run_options.add_argument("--init", required=True, help="a save_pretrained folder to start from (the SFT model)")
    return settings_parser(settings_class, parser=parser)


def run_main(parser: Any, args: Any, settings: Any, run: Callable[..., dict]) -> None:
    import sys

    from training.signals import TrainingInterrupted

    pairs = dict(args.pairs)
    if len(pairs) != len(args.pairs):
        parser.error("two --pairs options have the same NAME")
    if not pairs:
        parser.error("give at least one --pairs NAME=PATH")
    try:
        run(settings, pairs, args.output, args.init)
    except TrainingInterrupted as e:
        print(f"training {e}; the last checkpoint is intact, rerun the same command to resume", file=sys.stderr)
        sys.exit(128 + e.signum)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
