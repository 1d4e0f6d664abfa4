"""The training loop the reward model and offline DPO share (``train_pairs``): pretraining's optimizer, schedule,
checkpoints, resume and RunLog (``training.setup``, ``training.resume``, ``training.checkpoint``,
``training.runlog``) around a recipe's per-pair loss (``Recipe``), on the pairs of ``training.preference_data``.

One process (one GPU or the CPU) or data-parallel under torchrun (``torchrun --nproc_per_node N -m
training.reward_model ...``; gloo on CPU, nccl on GPUs), as SFT and pretraining run:

- ``batch_size`` is the pairs of one optimizer step over all processes (a multiple of their number); each process
  takes its own contiguous share of every step's pairs and runs it in passes of ``micro_batch_size`` pairs, the
  gradients all-reduced once per step by ``DistributedDataParallel``. A step's objective is the mean loss over all
  its pairs, so N processes train like one process with the same ``batch_size`` (up to float summation order);
- logged losses and statistics are summed over the processes before they are divided by the step's pairs, and the
  held-out pairs are split among the processes and their sums all-reduced: the numbers a one-process run logs;
- a recipe's ``prepare`` (DPO's reference log-probabilities) gets the rank and the number of processes and
  computes its share, gathered so that every process holds all of it (rank 0 stores it);
- rank 0 alone writes the output folder, metrics, TensorBoard, ``final/`` and ``summary.json``; every rank writes
  its part of a checkpoint and its RNG state (``training.checkpoint``). The step plan does not depend on the number
  of processes, so a run resumes with another number of processes as long as ``batch_size`` is the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from training.loop_settings import RESUMABLE_CHANGES
from training.preference_data import (
    Pair,
    PairTrainingSettings,
    pair_tensors,
    pairs_fingerprint,
    prepare_pairs,
    step_batches,
)


@dataclass
class Recipe:
    """What a pairwise recipe plugs into ``train_pairs``.

    ``build_model(device)``: the model to train (weights from the init folder). ``prepare(model, data, out, rank,
    world)``: run once before a checkpoint is loaded, on every process (DPO computes its reference
    log-probabilities here, each process a share); returns what ``pair_loss`` gets as ``extra``.
    ``pair_loss(model, batch, pairs, extra)``: per-pair losses [B] and per-pair statistics {name: [B]} (accuracy,
    margin, ...). ``kind``: the final folder's checkpoint kind.
    """

    name: str
    build_model: Callable[[Any], Any]
    prepare: Callable[[Any, dict, Path, int, int], Any]
    pair_loss: Callable[[Any, dict, list[Pair], Any], tuple[Any, dict]]
    kind: str = "chat"


def run_key(settings: PairTrainingSettings, init: str, fingerprint: str, recipe: str) -> str:
    from training.sft import _init_fingerprint

    values = settings.model_dump(exclude=RESUMABLE_CHANGES | {"micro_batch_size"})
    payload = json.dumps([recipe, values, _init_fingerprint(init), fingerprint], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def rank_share(items: list, rank: int, world: int) -> list:
    """This process's contiguous share of ``items``: ``ceil(len / world)`` of them (the last ranks may get fewer)."""
    share = -(-len(items) // world)
    return items[rank * share : (rank + 1) * share]


def loss_module(model: Any, pair_loss: Callable, extra: Any) -> Any:
    """``model`` inside a module whose forward is the recipe's ``pair_loss``, so that DDP sees the whole computation
    (DPO reads the model's hidden states and output layer, not its forward)."""
    import torch

    class PairLoss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, batch: dict, pairs: list[Pair]) -> tuple[Any, dict]:
            return pair_loss(self.model, batch, pairs, extra)

    return PairLoss()


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
    import torch.distributed as dist

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
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if settings.batch_size % world:
        raise ValueError(
            f"batch_size={settings.batch_size} is not a multiple of the {world} processes (batch_size is the pairs "
            "of one step over all of them, each process an equal share)"
        )
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
        dist_info = setup_distributed(SimpleNamespace(device=settings.device))
        if dist_info.owns_group:
            stack.callback(dist.destroy_process_group)
        rank, world, device = dist_info.rank, dist_info.world_size, dist_info.device

        def barrier() -> None:
            if world > 1:
                dist.barrier()

        def all_reduce_sum(values: list[float]) -> list[float]:
            if world == 1:
                return values
            t = torch.tensor(values, dtype=torch.float64, device=device)
            dist.all_reduce(t)
            return t.tolist()

        superseded = None
        if dist_info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            remove_partial_checkpoints(ckpt_root)
            superseded = supersede_stale_run(out, key)
            write_excluded(data["excluded"], out / "excluded")
            (out / "run_config.json").write_text(
                json.dumps({"settings": settings.model_dump(), "pairs": dict(sources), "init": init}, indent=1)
            )
        barrier()
        use_bf16 = settings.precision == "bf16" or (
            settings.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
        )
        autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext

        torch.manual_seed(settings.seed)
        model = recipe.build_model(device)
        n_params = sum(p.numel() for p in model.parameters())
        with autocast():  # DPO's reference pass runs as the policy's first step would
            extra = recipe.prepare(model, data, out, rank, world)
        cfg = SimpleNamespace(**settings.model_dump(exclude={"max_steps"}), max_steps=max_steps)
        optimizer = make_optimizer(model, cfg, fused=device.type in ("cpu", "cuda"))
        schedule = [first_segment(cfg)]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_at(i + 1, cfg, schedule) / cfg.lr)

        step, elapsed_before, initial_val = 0, 0.0, None
        resume_dir = latest_checkpoint(ckpt_root)
        if resume_dir is not None:
            state = load_checkpoint(resume_dir, model, optimizer, rank=rank)
            scheduler.load_state_dict(state["scheduler"])
            step, elapsed_before, initial_val = state["step"], state["elapsed_s"], state.get("initial_val")

        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ddp = DistributedDataParallel(
                loss_module(model, recipe.pair_loss, extra),
                device_ids=[dist_info.local_rank] if device.type == "cuda" else None,
                forward_sync_buffers=False,  # RoPE frequencies only: the same on every rank
            )

            def pair_loss(batch: dict, chunk: list[Pair]) -> tuple[Any, dict]:
                return ddp(batch, chunk)
        else:
            ddp = None

            def pair_loss(batch: dict, chunk: list[Pair]) -> tuple[Any, dict]:
                return recipe.pair_loss(model, batch, chunk, extra)

        log = RunLog(out, step, stack, progress) if dist_info.is_main else None

        def info(message: str, record: dict | None = None) -> None:
            if log is not None:
                log.info(message, record)

        def record(values: dict) -> None:
            if log is not None:
                log.record(values)

        c = data["counts"]
        where = f"resuming from {resume_dir.name}" if resume_dir else "starting"
        if superseded is not None:
            where += f" (checkpoints of other data or settings moved to {superseded})"
        info(
            f"{where}: {recipe.name}, {n_params:,} parameters, {c['train_pairs']:,} pairs ({c['heldout_pairs']} held "
            f"out, {c['excluded']} excluded: {c['excluded_by_reason']}), {max_steps} steps of up to "
            f"{settings.batch_size} pairs on {world} x {device.type}, {'bf16' if use_bf16 else 'fp32'}"
        )

        def tensors(chunk: list[Pair]) -> dict:
            return {k: v.to(device) for k, v in pair_tensors(chunk, ENDOFTEXT_ID).items()}

        def micro_batches(pair_list: list[Pair]) -> Iterable[tuple[list[Pair], dict]]:
            for i in range(0, len(pair_list), settings.micro_batch_size):
                chunk = pair_list[i : i + settings.micro_batch_size]
                yield chunk, tensors(chunk)

        def add(sums: dict, losses: Any, stats: dict, weight: float = 1.0) -> None:
            sums["loss"] = sums.get("loss", 0.0) + float(losses.detach().sum()) * weight
            for name, values in stats.items():
                sums[name] = sums.get(name, 0.0) + float(values.detach().float().sum()) * weight

        def evaluate() -> dict | None:
            """Mean loss and statistics over the held-out pairs (each process a share, the sums all-reduced)."""
            if not heldout:
                return None
            model.eval()
            sums: dict = {}
            with torch.no_grad():
                for chunk, batch in micro_batches(rank_share(heldout, rank, world)):
                    with autocast():
                        losses, stats = recipe.pair_loss(model, batch, chunk, extra)
                    add(sums, losses, stats)
            model.train()
            if world > 1:  # a rank with no held-out pairs has no names yet: take them from the others
                names = [None] * world
                dist.all_gather_object(names, list(sums))
                sums = {n: sums.get(n, 0.0) for n in max(names, key=len)}
            totals = all_reduce_sum(list(sums.values()))
            return {f"val_{name}": value / len(heldout) for name, value in zip(sums, totals)}

        if initial_val is None:
            initial_val = evaluate()
            if initial_val is not None and step == 0:
                record({"step": 0, **initial_val})

        def checkpoint() -> None:
            trainer_state = {
                "elapsed_s": elapsed_before + time.perf_counter() - started,
                "scheduler": scheduler.state_dict(),
                "settings": settings.model_dump(),
                "run_key": key,
                "initial_val": initial_val,
                "world_size": world,
            }
            save_checkpoint(ckpt_root, step, model, optimizer, trainer_state, rank=rank, keep=settings.keep_checkpoints)

        model.train()
        last, val = None, None
        while step < max_steps:
            if all_reduce_sum([float(stop.signum != 0)])[0] if world > 1 else stop.signum:
                raise TrainingInterrupted(stop.signum or signal.SIGTERM)
            t0 = time.perf_counter()
            batch_pairs = [train[i] for i in steps_plan[step]]
            mine = rank_share(batch_pairs, rank, world)
            share = -(-len(batch_pairs) // world)  # every rank runs as many passes (DDP syncs in the last)
            passes = -(-share // settings.micro_batch_size)
            sums: dict = {}
            for m in range(passes):
                chunk = mine[m * settings.micro_batch_size : (m + 1) * settings.micro_batch_size]
                # a short last step can leave a rank nothing: it runs a pair of the step with weight 0
                weight = 1.0 if chunk else 0.0
                sync = ddp is None or m == passes - 1
                with nullcontext() if sync else ddp.no_sync():
                    with autocast():
                        losses, stats = pair_loss(tensors(chunk or batch_pairs[:1]), chunk or batch_pairs[:1])
                    if world == 1:
                        (losses.sum() / len(batch_pairs)).backward()  # the step's loss: the mean over its pairs
                    else:  # DDP averages the gradients over the ranks: scale back up to the mean over all pairs
                        (losses.sum() * (weight * world / len(batch_pairs))).backward()
                add(sums, losses, stats, weight)
            grad_norm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), settings.grad_clip if settings.grad_clip > 0 else float("inf")
            )
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            totals = all_reduce_sum(list(sums.values()))
            last = {name: value / len(batch_pairs) for name, value in zip(sums, totals)}
            seconds = time.perf_counter() - t0
            tokens = sum(len(p.chosen_ids) + len(p.rejected_ids) for p in batch_pairs)  # both replies, every rank
            values = {
                "step": step,
                **last,
                "lr": lr,
                "grad_norm": float(grad_norm),
                "pairs": len(batch_pairs),
                "tokens": tokens,
                "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
                "seconds": seconds,
                "elapsed": elapsed_before + time.perf_counter() - started,
            }
            record(values)
            # every log_every steps and the last, and at least every 30 s between them
            if log is not None and log.line_due(step % settings.log_every == 0 or step == max_steps):
                shown = " ".join(f"{k} {v:.4f}" for k, v in last.items())
                info(
                    f"step {step}/{max_steps} {shown} lr {lr:.2e} grad_norm {values['grad_norm']:.3f} "
                    f"{values['tokens_per_s']:,.0f} tok/s",
                    values,
                )
            if (settings.eval_every and step % settings.eval_every == 0) or step == max_steps:
                val = evaluate()
                if val is not None:
                    record({"step": step, **val})
                    info(f"step {step} " + " ".join(f"{k} {v:.4f}" for k, v in val.items()))
            if step % settings.checkpoint_every == 0 or step == max_steps:
                checkpoint()
            if kill_after and step == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

        if val is None:  # resumed a finished run: report its validation again
            val = evaluate()
        final_dir = out / "final"
        if dist_info.is_main:
            save_pretrained_folder(model, None, final_dir, kind=recipe.kind)
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
            "world_size": world,
            "precision": "bf16" if use_bf16 else "fp32",
            "resumed_from_step": int(resume_dir.name.split("_")[1]) if resume_dir else None,
            "wall_seconds": time.perf_counter() - started,
            "output_dir": str(out),
            "final_dir": str(final_dir),
            "excluded_dir": str(out / "excluded"),
        }
        if log is not None:
            tmp = out / "summary.json.tmp"
            tmp.write_text(json.dumps(summary, indent=1, ensure_ascii=False))
            os.replace(tmp, out / "summary.json")
            log.info(f"done: {step} steps, validation {val}, model in {final_dir}")
            log.finish(summary)
        barrier()
        return summary


def _last_logged(out: Path) -> dict | None:
    path = out / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    train = [r for r in records if "loss" in r and r.get("step", 0) > 0]
    return {k: v for k, v in train[-1].items() if k not in ("step",)} if train else None
