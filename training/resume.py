"""Run identity and resume planning of a pretraining run (also used by SFT and the preference recipes): the run key a
checkpoint must match (``run_key``), what a rerun may change (``plan_resume``), moving an earlier run's outputs
aside (``supersede_stale_run``), and the learning-rate schedule in segments (``first_segment``, ``lr_at``).

Own code rather than a transformers scheduler: the segments (re-warmup from the last rate when a finished run is
continued) are saved in every checkpoint and must be resumed exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from training.pretrain_settings import PretrainConfig

# Fields that may change between a run and its resume: they do not change the trajectory already taken.
RESUMABLE_CHANGES = frozenset(
    {
        "max_steps",
        "output_dir",
        "val_data",
        "checkpoint_every",
        "keep_checkpoints",
        "eval_every",
        "eval_batches",
        "log_every",
        "num_threads",
    }
)


def run_key(config: PretrainConfig, world_size: int = 1) -> str:
    """What a checkpoint must match to be resumed: the trajectory settings and the data's committed summary.

    The batch enters as the global batch (``micro_batch_size * grad_accum_steps * world_size`` rows), not as its
    factors: every factoring of the same global batch takes the same rows and the same token-mean loss per step,
    so a run may resume on another number of processes when grad_accum_steps (or micro_batch_size) keeps it.
    """
    rows = config.micro_batch_size * config.grad_accum_steps * world_size
    return _run_key(config, rows)


def _run_key(config: PretrainConfig, global_batch_rows: int) -> str:
    from pipelines.shards import read_json

    factors = {"micro_batch_size", "grad_accum_steps"}
    settings = {k: v for k, v in config.model_dump().items() if k not in RESUMABLE_CHANGES | factors}
    settings["global_batch_rows"] = global_batch_rows
    data = [read_json(f"{config.data.rstrip('/')}/{name}") for name in ("_config.json", "_SUCCESS.json")]
    payload = json.dumps([settings, data], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class ResumePlan:
    """What ``plan_resume`` found in ``output_dir``."""

    schedule: list[dict]
    """The learning-rate schedule segments to train with (see ``lr_at``)."""
    new_segment: bool = False
    """A finished run continues with a larger max_steps: the last segment starts now."""


def plan_resume(output_dir: Path, config: PretrainConfig, world_size: int) -> ResumePlan:
    """Check that ``output_dir``'s newest checkpoint can be resumed as ``config`` asks, on every rank, before any
    weights are read; returns the schedule to train with (one segment for a run that starts afresh).

    Refused, with a message that says how to go on:
    - another world size that changes the global batch (the checkpoint's rows per step are kept only when
      ``micro_batch_size * grad_accum_steps * world_size`` is the same; resuming on another number of processes
      with the same product is fine);
    - another ``max_steps`` in the middle of a schedule segment, which would move the cosine's end under a
      running learning rate, or fewer steps than the run already took.
    A checkpoint of other data or settings is not refused here: ``supersede_stale_run`` moves it aside.
    """
    from training.checkpoint import STATE_FILE, latest_checkpoint

    fresh = ResumePlan([first_segment(config)])
    latest = latest_checkpoint(output_dir / "checkpoints")
    if latest is None:
        return fresh
    state = json.loads((latest / STATE_FILE).read_text())
    rows = config.micro_batch_size * config.grad_accum_steps * world_size
    old_world, old_rows = state.get("world_size", 1), state.get("rows_per_step")
    if state.get("run_key") != _run_key(config, rows):
        if old_world != world_size and old_rows and state.get("run_key") == _run_key(config, old_rows):
            per_rank = config.micro_batch_size * world_size
            keep = (
                f"set grad_accum_steps={old_rows // per_rank} to keep {old_rows} rows per step, "
                if old_rows % per_rank == 0
                else ""
            )
            raise ValueError(
                f"{output_dir} holds checkpoints of a run on {old_world} processes with {old_rows} rows per "
                f"optimizer step; this run has {world_size} processes, so micro_batch_size "
                f"{config.micro_batch_size} x grad_accum_steps {config.grad_accum_steps} x world_size {world_size} "
                f"= {rows} rows per step, another batch and another run. Resume on {old_world} processes, or "
                f"{keep}or choose micro_batch_size and grad_accum_steps whose product times {world_size} is "
                f"{old_rows}; to train with {rows} rows per step instead, use a new output_dir."
            )
        return fresh  # another run: set aside by supersede_stale_run
    saved_config = state.get("config", {})
    # Checkpoints from before schedules were saved: one segment; only max_steps may differ from this config.
    schedule = state.get("schedule") or [{**first_segment(config), "end": saved_config.get("max_steps", state["step"])}]
    step, end = state["step"], schedule[-1]["end"]
    if config.max_steps == end:
        return ResumePlan(schedule)
    if config.max_steps < step:
        raise ValueError(
            f"{output_dir} holds a run that already took {step} steps; max_steps={config.max_steps} cannot undo "
            f"them: give max_steps >= {step} (more continues it), or use a new output_dir."
        )
    if step < end:
        then = (
            f", then rerun with max_steps={config.max_steps} to continue in a new segment (a re-warmup, then a new "
            f"cosine)"
            if config.max_steps > end
            else ""
        )
        raise ValueError(
            f"{output_dir} is at step {step} of a learning-rate schedule that ends at step {end}; max_steps="
            f"{config.max_steps} would move the end of its cosine under the running learning rate. Finish this "
            f"segment with max_steps={end}{then}; or use a new output_dir."
        )
    segment = {
        "start": step,
        "end": config.max_steps,
        "warmup": min(config.warmup_steps, (config.max_steps - step) // 2),
        "from_lr": lr_at(step, config, schedule),
        "peak_lr": config.lr,
        "min_lr": config.min_lr,
    }
    return ResumePlan([*schedule, segment], new_segment=True)


def supersede_stale_run(output_dir: Path, key: str) -> Path | None:
    """Move an earlier run's outputs aside when its checkpoints were made under another run key."""
    from training.checkpoint import STATE_FILE, latest_checkpoint

    latest = latest_checkpoint(output_dir / "checkpoints")
    if latest is None:
        return None
    old_key = json.loads((latest / STATE_FILE).read_text()).get("run_key")
    if old_key == key:
        return None
    target = output_dir / "superseded" / f"{time.strftime('%Y%m%d-%H%M%S')}-{old_key or 'unknown'}"
    target.mkdir(parents=True)
    for name in ("checkpoints", "metrics.jsonl", "tensorboard", "final", "summary.json"):
        if (output_dir / name).exists():
            os.replace(output_dir / name, target / name)
    return target


def first_segment(config: PretrainConfig) -> dict:
    """The schedule of a run that starts: warmup from 0 to ``lr``, cosine to ``min_lr`` at ``max_steps``."""
    return {
        "start": 0,
        "end": config.max_steps,
        "warmup": config.warmup_steps,
        "from_lr": 0.0,
        "peak_lr": config.lr,
        "min_lr": config.min_lr,
    }


def lr_at(step: int, config: PretrainConfig, schedule: list[dict] | None = None) -> float:
    """Learning rate of optimizer step ``step`` (1-based) under ``schedule`` (default: ``first_segment(config)``).

    A schedule is a list of segments, each ``start < step <= end``: a linear warmup over ``warmup`` steps from
    ``from_lr`` to ``peak_lr``, then a cosine down to ``min_lr`` at ``end`` (held after it). A run has one segment,
    warmup from 0 to ``lr`` then cosine to ``min_lr`` at ``max_steps``. Rerunning a finished run with a larger
    ``max_steps`` adds a segment, so the learning rate never jumps: from the learning rate of its last step
    (``min_lr``) it re-warms linearly to ``lr`` over ``warmup_steps`` steps (at most half the new steps), then
    decays by a new cosine to ``min_lr`` at the new ``max_steps`` (rewarming and re-decaying, as in continual
    pretraining, Ibrahim et al. 2024, arXiv 2403.08763). The segments are saved in every checkpoint, so a run
    killed inside a later segment resumes on the same curve. Changing ``max_steps`` inside a segment is refused
    (``plan_resume``).
    """
    segments = schedule or [first_segment(config)]
    seg = next((s for s in segments if step <= s["end"]), segments[-1])
    k, warmup = step - seg["start"], seg["warmup"]
    if warmup and k <= warmup:
        return seg["from_lr"] + (seg["peak_lr"] - seg["from_lr"]) * k / warmup
    progress = (k - warmup) / max(1, seg["end"] - seg["start"] - warmup)
    return seg["min_lr"] + 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) * (seg["peak_lr"] - seg["min_lr"])
