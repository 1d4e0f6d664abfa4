"""Supervised fine-tuning of a Qwen2 causal LM on conversations (Qwen2 report §4.1): loss on what the assistant
writes, conversations packed into rows with attention kept inside each conversation.

    python -m training.sft --init data/models/long_context/final --output runs/sft \\
        --source synthetic=data/synthetic/sft/final --source human=demos.jsonl --source-weights human=2

    torchrun --nproc_per_node=8 -m training.sft --init ... --output ... --source ... --strategy fsdp

Settings (``SftSettings``, one pydantic model: the command line, the Dagster Launchpad of asset ``sft_model`` and
the saved run config) default to Qwen2's published values (2 epochs, rows of 32,768 tokens, learning rate 7e-6
decaying to 7e-7, weight decay 0.1, gradient clip 1.0, bf16 where the GPU has it); ``--settings-profile demo``
takes the CPU demo's table of ``dagster_project/profiles/demo.toml``. Run options (sources, output, init) are
paths, not settings.

What happens (``training.chat_data`` holds the data side):
- every row of every source is checked; a bad row (not a conversation, unknown role, empty content, last turn not
  the assistant, turns out of order, a ChatML control token inside a turn, more tokens than a row) goes to
  ``<output>/excluded/part-00000.parquet`` with its reason, and the run goes on;
- a slice of the rows, chosen by a hash of the row id (``heldout_fraction``), is held out for the validation loss
  and for the generation checks (``heldout_prompts.jsonl``);
- conversations are tokenized with the project's Qwen2 tokenizer and ChatML template; only the assistant turns'
  content and their closing ``<|im_end|>`` carry loss;
- each epoch mixes the sources by ``source_weights`` in a seeded order and packs them into rows of ``seq_len``
  tokens; every conversation restarts its positions, and ``training.attention`` keeps attention inside it;
- the training loop is pretraining's (``training.pretrain``: model build and FSDP/DDP wrapping, AdamW, warmup +
  cosine schedule, gradient accumulation with a token-mean loss over the global batch, chunked cross-entropy,
  checkpoints, metrics.jsonl, TensorBoard, Pipes progress); a run resumes exactly from its newest checkpoint, and a
  checkpoint made with other data, init or settings (``run_key``) is moved to ``superseded/`` instead;
- ``final/`` is a ``save_pretrained`` folder of kind ``chat`` (the ChatML template on the tokenizer, generation
  stops at ``<|im_end|>``); ``summary.json`` holds the counts and losses.

Light at import (pydantic only): the Dagster code location imports ``SftSettings``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import ExitStack, nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

from pydantic import Field

from pipelines.settings import parse_settings, settings_parser
from training.loop_settings import RESUMABLE_CHANGES, LoopSettings


class SftSettings(LoopSettings):
    """Supervised fine-tuning; the defaults are Qwen2's published SFT values where the report gives them."""

    epochs: int = Field(2, ge=1, description="Passes over the (weighted) training conversations; Qwen2: 2.")
    seq_len: int = Field(
        32_768,
        ge=16,
        description="Tokens per packed row; a longer conversation is excluded (too_long). Qwen2: 32,768.",
        json_schema_extra={"unit": "tokens"},
    )
    source_weights: dict[str, float] = Field(
        default_factory=dict,
        description="Weight of each source by name (1: its conversations once per epoch, 2: twice, 0.5: a seeded "
        "half); a source not named has weight 1.",
    )
    heldout_fraction: float = Field(
        0.01, ge=0, lt=1, description="Share of rows held out for validation, chosen by a hash of the row id."
    )
    micro_batch_size: int = Field(1, ge=1, description="Packed rows per forward/backward pass on each rank.")
    grad_accum_steps: int = Field(
        16, ge=1, description="Micro-batches per optimizer step on each rank (ours: the report gives no batch size)."
    )
    lr: float = Field(7e-6, gt=0, description="Peak learning rate; Qwen2: 7e-6.")
    min_lr: float = Field(7e-7, ge=0, description="Learning rate at the last step (cosine from lr); Qwen2: 7e-7.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps before the decay (Qwen2 states none).")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay on matrices; Qwen2: 0.1.")
    grad_clip: float = Field(1.0, ge=0, description="Clip the global gradient norm to this (0: off); Qwen2: 1.0.")
    seed: int = Field(0, description="Seed of the epoch orders, the source sampling and the packing.")
    strategy: Literal["ddp", "fsdp"] = Field("ddp", description="With several processes: ddp or fsdp (FSDP2).")
    fsdp_reduce_dtype: Literal["fp32", "bf16"] = Field(
        "fp32", description="FSDP with bf16: the dtype gradients are reduce-scattered in."
    )
    attn_implementation: Literal["sdpa", "flash_attention_2", "flex_attention", "eager"] = Field(
        "sdpa", description="How packed conversations are kept apart (training.attention); sdpa: CPU and GPU."
    )
    loss_chunk_tokens: int | None = Field(
        None,
        ge=0,
        description="Positions per chunk of output layer + cross-entropy (default: 256 on CPU, 4,096 on GPU; 0: "
        "full logits).",
    )
    activation_checkpointing: bool = Field(False, description="Recompute each decoder layer in the backward pass.")
    checkpoint_every: int = Field(200, ge=1, description="Save a resumable checkpoint every this many steps.")
    eval_every: int = Field(0, ge=0, description="Validation loss every this many steps; 0: at the end only.")


EXAMPLES_SHOWN = 2


def loop_config(settings: SftSettings, init: str, max_steps: int) -> SimpleNamespace:
    """The fields pretraining's model, optimizer and schedule functions (``training.setup``, ``training.resume``)
    read, from the SFT settings."""
    return SimpleNamespace(
        **settings.model_dump(exclude={"max_steps"}),
        init_from=init,
        model_size=None,
        rope_theta=None,
        max_steps=max_steps,
    )


def _init_fingerprint(init: str) -> dict:
    """The init folder's JSON files by content, its weight files by size and modification time (hashing 145 GB of
    72B weights on every start would take minutes)."""
    out: dict[str, Any] = {}
    for p in sorted(Path(init).iterdir()):
        if p.is_file() and p.suffix == ".json":
            out[p.name] = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
        elif p.is_file() and p.suffix in (".safetensors", ".bin"):
            out[p.name] = [p.stat().st_size, p.stat().st_mtime_ns]
    return out


def data_fingerprint(examples: list, heldout: list, rows: list[list[int]]) -> str:
    """A hash of what is trained on: every conversation's tokens and loss mask, and the packed rows in order."""
    import numpy as np

    h = hashlib.sha256()
    for e in (*examples, *heldout):
        h.update(e.id.encode() + b"\0")
        h.update(np.asarray(e.input_ids, dtype=np.int64).tobytes())
        h.update(np.packbits(np.asarray(e.loss_mask, dtype=bool)).tobytes())
    for row in rows:
        h.update(np.asarray(row, dtype=np.int64).tobytes() + b"|")
    return h.hexdigest()


def run_key(settings: SftSettings, init: str, data: str, global_batch_rows: int) -> str:
    """What a checkpoint must match to be resumed: trajectory settings, the init weights, the packed data."""
    values = settings.model_dump(exclude=RESUMABLE_CHANGES | {"micro_batch_size", "grad_accum_steps"})
    payload = json.dumps([values, global_batch_rows, _init_fingerprint(init), data], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def marked_example(example: Any, tokenizer: Any) -> str:
    """A conversation as the model sees it, with the tokens that carry loss in [[ ]]."""
    out, inside = [], False
    for token, trained in zip(example.input_ids, example.loss_mask):
        if trained != inside:
            out.append("[[" if trained else "]]")
            inside = trained
        out.append(tokenizer.decode([token]))
    return "".join(out) + ("]]" if inside else "")


def prepare_data(settings: SftSettings, sources: Mapping[str, str], tokenizer: Any) -> dict:
    """Read, check, split, tokenize and pack; returns the pieces and the counts for the summary."""
    from training import chat_data as cd

    examples, excluded = cd.load_sources(sources)
    cd.tokenize_examples(examples, tokenizer)
    examples, too_long = cd.split_too_long(examples, settings.seq_len)
    excluded += too_long
    train = [e for e in examples if not cd.is_heldout(e.id, settings.heldout_fraction)]
    heldout = [e for e in examples if cd.is_heldout(e.id, settings.heldout_fraction)]
    if not train:
        raise ValueError(
            f"no training conversations in {dict(sources)} ({len(excluded)} excluded, {len(heldout)} held out)"
        )
    lengths = [len(e) for e in train]
    rows: list[list[int]] = []
    for epoch in range(settings.epochs):
        order = cd.epoch_examples(train, settings.source_weights, settings.seed, epoch)
        rows += cd.pack_rows(lengths, order, settings.seq_len)
    val_rows = cd.pack_rows([len(e) for e in heldout], range(len(heldout)), settings.seq_len)
    tokens = sum(lengths[i] for row in rows for i in row)
    return {
        "train": train,
        "heldout": heldout,
        "excluded": excluded,
        "rows": rows,
        "val_rows": val_rows,
        "counts": {
            "conversations_by_source": dict(Counter(e.source for e in examples)),
            "train_conversations": len(train),
            "heldout_conversations": len(heldout),
            "excluded": len(excluded),
            "excluded_by_reason": dict(Counter(x.reason for x in excluded)),
            "packed_rows": len(rows),
            "conversation_tokens": tokens,
            "loss_tokens": sum(sum(train[i].loss_mask) for row in rows for i in row),
            "packing_efficiency": tokens / (len(rows) * settings.seq_len),
        },
    }


def write_heldout_prompts(path: Path, heldout: list, train: list, count: int = 1000) -> None:
    """Prompts for the generation checks (they answer the first ``check_prompts``): held-out conversations up to
    their last user turn, at most ``count`` (8 training ones when nothing is held out)."""
    picked = heldout[:count] or train[:8]
    lines = []
    for e in picked:
        last_user = max(i for i, m in enumerate(e.messages) if m["role"] == "user")
        lines.append(json.dumps({"id": e.id, "messages": e.messages[: last_user + 1]}, ensure_ascii=False))
    path.write_text("".join(line + "\n" for line in lines))


def run(
    settings: SftSettings,
    sources: Mapping[str, str],
    output_dir: str,
    init: str,
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """Fine-tune ``init`` on ``sources`` into ``output_dir`` (resuming there when it can); returns the summary."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from pipelines.tokenizer import ENDOFTEXT_ID
    from training.attention import model_inputs
    from training.chat_data import IGNORE_INDEX, row_tensors, write_excluded
    from training.checkpoint import (
        checkpoint_tokenizer,
        latest_checkpoint,
        load_checkpoint,
        remove_partial_checkpoints,
        save_checkpoint,
    )
    from training.loss import router_aux_loss_coef, split_router_loss
    from training.pretrain import accumulate_gradients, save_final
    from training.resume import first_segment, lr_at, supersede_stale_run
    from training.runlog import RunLog, last_logged_loss
    from training.setup import build_model, make_optimizer, setup_distributed, wrap_model
    from training.signals import KILL_AFTER_STEP_ENV, StopOnSignal, TrainingInterrupted

    started = time.perf_counter()
    if not (Path(init) / "config.json").exists():
        raise ValueError(f"init={init}: no config.json there; give a save_pretrained folder (e.g. the base model's)")
    if not sources:
        raise ValueError("no sources: give at least one --source NAME=PATH")
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    output_dir_p = Path(output_dir)
    ckpt_root = output_dir_p / "checkpoints"
    kill_after = int(os.environ.get(KILL_AFTER_STEP_ENV, "0"))

    tokenizer = checkpoint_tokenizer("chat")
    data = prepare_data(settings, sources, tokenizer)
    train, rows, val_rows = data["train"], data["rows"], data["val_rows"]

    with ExitStack() as stack, StopOnSignal() as stop:
        probe = SimpleNamespace(device=settings.device)
        dist_info = setup_distributed(probe)
        if dist_info.owns_group:
            stack.callback(dist.destroy_process_group)
        rank, world, device = dist_info.rank, dist_info.world_size, dist_info.device
        rows_per_step = settings.micro_batch_size * settings.grad_accum_steps * world
        # Whole global batches: the rows are continued from the first epoch's to fill the last one.
        total_rows = math.ceil(len(rows) / rows_per_step) * rows_per_step
        while len(rows) < total_rows:
            rows = rows + rows[: total_rows - len(rows)]
        steps = total_rows // rows_per_step
        max_steps = min(steps, settings.max_steps) if settings.max_steps else steps
        cfg = loop_config(settings, init, max_steps)
        key = run_key(settings, init, data_fingerprint(train, data["heldout"], rows), rows_per_step)
        superseded = None
        if dist_info.is_main:
            output_dir_p.mkdir(parents=True, exist_ok=True)
            remove_partial_checkpoints(ckpt_root)
            superseded = supersede_stale_run(output_dir_p, key)
            write_excluded(data["excluded"], output_dir_p / "excluded")
            write_heldout_prompts(output_dir_p / "heldout_prompts.jsonl", data["heldout"], train)
            (output_dir_p / "run_config.json").write_text(
                json.dumps({"settings": settings.model_dump(), "sources": dict(sources), "init": init}, indent=1)
            )
        if world > 1:
            dist.barrier()

        use_bf16 = settings.precision == "bf16" or (
            settings.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
        )
        autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext
        init_positions = json.loads((Path(init) / "config.json").read_text()).get("max_position_embeddings", 0)
        model = build_model(cfg, max(settings.seq_len, init_positions), device)  # never shrink the context
        n_params = sum(p.numel() for p in model.parameters())
        aux_coef = router_aux_loss_coef(model)
        model = wrap_model(model, cfg, dist_info, use_bf16)
        base_model = model.module if isinstance(model, DistributedDataParallel) else model
        optimizer = make_optimizer(model, cfg, fused=settings.strategy != "fsdp" or world == 1)
        schedule = [first_segment(cfg)]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_at(i + 1, cfg, schedule) / cfg.lr)

        step, elapsed_before = 0, 0.0
        resume_dir = latest_checkpoint(ckpt_root)
        if resume_dir is not None:
            state = load_checkpoint(resume_dir, model, optimizer, rank=rank)
            scheduler.load_state_dict(state["scheduler"])
            step, elapsed_before = state["step"], state["elapsed_s"]
        log = RunLog(output_dir_p, step, stack, progress) if dist_info.is_main else None
        if log is not None:
            where = f"resuming from {resume_dir.name}" if resume_dir else "starting"
            if superseded is not None:
                where += f" (checkpoints of other data or settings moved to {superseded})"
            c = data["counts"]
            log.info(
                f"{where}: {n_params:,} parameters, {c['train_conversations']:,} conversations "
                f"({c['heldout_conversations']} held out, {c['excluded']} excluded: {c['excluded_by_reason']}), "
                f"{settings.epochs} epochs in {len(data['rows']):,} rows x {settings.seq_len} tokens "
                f"({c['packing_efficiency']:.0%} filled), {max_steps} steps of {rows_per_step} rows on "
                f"{world} x {device.type}, {'bf16' if use_bf16 else 'fp32'}"
            )

        def batch_of(row_ids: list[list[int]], examples: list) -> dict:
            return model_inputs(
                row_tensors(row_ids, examples, settings.seq_len, ENDOFTEXT_ID), settings.attn_implementation, device
            )

        def micro_batches_at(step_index: int) -> list[dict]:
            first = step_index * rows_per_step
            out = []
            for m in range(settings.grad_accum_steps):
                start = first + (m * world + rank) * settings.micro_batch_size
                out.append(batch_of(rows[start : start + settings.micro_batch_size], train))
            return out

        def all_reduce_sum(values: list[float]) -> list[float]:
            t = torch.tensor(values, dtype=torch.float64, device=device)
            if world > 1:
                dist.all_reduce(t)
            return t.tolist()

        def evaluate() -> tuple[float | None, int]:
            """Token-mean loss over the assistant tokens of every held-out conversation."""
            if not val_rows:
                return None, 0
            model.eval()
            per_pass = settings.micro_batch_size * world
            loss_sum, count = 0.0, 0
            with torch.no_grad():
                for first in range(0, len(val_rows), per_pass):
                    mine = val_rows[first + rank * settings.micro_batch_size :][: settings.micro_batch_size]
                    batch = batch_of(mine or val_rows[:1], data["heldout"])  # every rank runs the same passes
                    n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) if mine else 0
                    with autocast():
                        out = model(**batch, use_cache=False)
                    if n:
                        loss_sum += float(split_router_loss(out, aux_coef)[0]) * n
                        count += n
            model.train()
            loss_sum, count = all_reduce_sum([loss_sum, count])
            return (loss_sum / count if count else None), int(count)

        def checkpoint() -> None:
            trainer_state = {
                "elapsed_s": elapsed_before + time.perf_counter() - started,
                "scheduler": scheduler.state_dict(),
                "rows_per_step": rows_per_step,
                "world_size": world,
                "settings": settings.model_dump(),
                "run_key": key,
            }
            save_checkpoint(ckpt_root, step, model, optimizer, trainer_state, rank=rank, keep=settings.keep_checkpoints)

        model.train()
        last_loss, val_loss, session_tokens, session_seconds = None, None, 0, 0.0
        while step < max_steps:
            t0 = time.perf_counter()
            micro_batches = micro_batches_at(step)
            local_targets = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro_batches)
            global_targets, stop_votes = all_reduce_sum([local_targets, float(stop.signum != 0)])
            if stop_votes:
                raise TrainingInterrupted(stop.signum or signal.SIGTERM)
            loss_sum, _ = accumulate_gradients(
                model, micro_batches, max(int(global_targets), 1), world, settings.strategy, aux_coef, autocast
            )
            grad_norm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), settings.grad_clip if settings.grad_clip > 0 else float("inf")
            )
            if hasattr(grad_norm, "full_tensor"):
                grad_norm = grad_norm.full_tensor()
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            (last_loss,) = all_reduce_sum([float(loss_sum)])
            seconds = time.perf_counter() - t0
            session_tokens += rows_per_step * settings.seq_len
            session_seconds += seconds
            record = {
                "step": step,
                "loss": last_loss,
                "lr": lr,
                "grad_norm": float(grad_norm),
                "loss_tokens": int(global_targets),
                "tokens_per_s": rows_per_step * settings.seq_len / seconds,
                "epoch": step * rows_per_step / max(len(data["rows"]) / settings.epochs, 1),
                "elapsed": elapsed_before + time.perf_counter() - started,
            }
            if log is not None:
                log.record(record)
                if log.line_due(step % settings.log_every == 0 or step == max_steps):
                    log.info(
                        f"step {step}/{max_steps} loss {last_loss:.4f} lr {lr:.2e} "
                        f"grad_norm {record['grad_norm']:.3f} {record['tokens_per_s']:,.0f} tok/s",
                        record,
                    )
            if (settings.eval_every and step % settings.eval_every == 0) or step == max_steps:
                val_loss, val_tokens = evaluate()
                if log is not None and val_loss is not None:
                    log.record({"step": step, "val_loss": val_loss, "val_tokens": val_tokens})
                    log.info(f"step {step} val_loss {val_loss:.4f}")
            if step % settings.checkpoint_every == 0 or step == max_steps:
                checkpoint()
            if kill_after and step == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

        if val_loss is None:  # resumed a finished run: report its validation loss again
            val_loss, _ = evaluate()

        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full_state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        summary: dict[str, Any] = {}
        if dist_info.is_main:
            final_dir = save_final(base_model, full_state, output_dir_p, kind="chat")
            summary = {
                "steps": step,
                "final_loss": last_loss if last_loss is not None else last_logged_loss(output_dir_p),
                "val_loss": val_loss,
                **data["counts"],
                "epochs": settings.epochs,
                "seq_len": settings.seq_len,
                "rows_per_step": rows_per_step,
                "tokens_per_s": session_tokens / session_seconds if session_seconds else None,
                "parameters": n_params,
                "init": init,
                "sources": dict(sources),
                "world_size": world,
                "precision": "bf16" if use_bf16 else "fp32",
                "resumed_from_step": int(resume_dir.name.split("_")[1]) if resume_dir else None,
                "examples": [marked_example(e, tokenizer) for e in train[:EXAMPLES_SHOWN]],
                "wall_seconds": time.perf_counter() - started,
                "output_dir": str(output_dir_p),
                "final_dir": str(final_dir),
                "excluded_dir": str(output_dir_p / "excluded"),
            }
            tmp = output_dir_p / "summary.json.tmp"
            tmp.write_text(json.dumps(summary, indent=1, ensure_ascii=False))
            os.replace(tmp, output_dir_p / "summary.json")
            log.info(f"done: {step} steps, loss {summary['final_loss']}, val_loss {val_loss}, model in {final_dir}")
            log.finish(summary)
        if world > 1:
            dist.barrier()
        return summary


# ---- command line -----------------------------------------------------------------------------------------------


def _source(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep:
        name, path = Path(text.rstrip("/")).stem, text
    if not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=PATH or PATH")
    return name, path


def build_parser() -> argparse.ArgumentParser:
    from pipelines.settings import ArgumentParser

    parser = ArgumentParser(prog="python -m training.sft", description=__doc__.split("\n\n")[0])
    run_options = parser.add_argument_group("run options (paths; in Dagster they come from the resources)")
    run_options.add_argument(
        "--source",
        dest="sources",
        action="append",
        type=_source,
        default=[],
        metavar="NAME=PATH",
        help="a messages source: Parquet file or folder (SFT_SCHEMA) or JSONL; repeat for several. NAME is what "
        "source_weights names (default: the file or folder name)",
    )
    run_options.add_argument("--output", required=True, help="folder for checkpoints, logs, excluded/, final/")
    run_options.add_argument("--init", required=True, help="a save_pretrained folder to start from (the base model)")
    # The class as pipelines.settings.STAGES names it: under ``python -m`` this module is __main__, whose class would
    # not be found there (and --settings-profile would have no section).
    from training.sft import SftSettings as registered

    return settings_parser(registered, parser=parser)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, settings = parse_settings(parser, argv)
    sources = dict(args.sources)
    if len(sources) != len(args.sources):
        parser.error("two --source options have the same NAME")
    if not sources:
        parser.error("give at least one --source NAME=PATH")
    unknown = set(settings.source_weights) - set(sources)
    if unknown:
        parser.error(f"source_weights names {sorted(unknown)}, which no --source has (sources: {sorted(sources)})")
    try:
        run(settings, sources, args.output, args.init)
    except pt_interrupted() as e:
        print(f"training {e}; the last checkpoint is intact, rerun the same command to resume", file=sys.stderr)
        sys.exit(128 + e.signum)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def pt_interrupted() -> type:
    from training.signals import TrainingInterrupted

    return TrainingInterrupted


if __name__ == "__main__":
    main()
