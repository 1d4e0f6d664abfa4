"""Optimizer, schedule and bookkeeping settings that every post-training recipe shares (SFT, the reward model and
DPO): each recipe's settings subclass ``LoopSettings`` and re-declare only the fields whose default or note is the
recipe's own (SFT: Qwen2's published values). Light: pydantic only (the Dagster code location imports it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipelines.settings import Settings


class LoopSettings(Settings):
    """The training loop's settings common to the post-training recipes."""

    max_steps: int | None = Field(
        None,
        ge=1,
        description="Train this many optimizer steps instead of all steps of all epochs (the learning rate decays "
        "over them).",
    )
    lr: float = Field(1e-6, gt=0, description="Peak learning rate.")
    min_lr: float = Field(1e-7, ge=0, description="Learning rate at the last step (cosine from lr).")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps before the decay.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on matrices.")
    grad_clip: float = Field(1.0, ge=0, description="Clip the global gradient norm to this (0: off).")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2.")
    seed: int = Field(0, description="Seed of the epoch orders.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast on a GPU that supports it, else fp32; bf16; fp32."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: a CUDA GPU per rank if any, else CPU.")
    checkpoint_every: int = Field(100, ge=1, description="Save a resumable checkpoint every this many steps.")
    keep_checkpoints: int = Field(2, ge=1, description="How many of the newest checkpoints to keep.")
    eval_every: int = Field(0, ge=0, description="Validation every this many steps; 0: at the end only.")
    log_every: int = Field(10, ge=1, description="Progress line every this many steps.")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads per process (default: torch's).")


# Settings that may change between a run and its resume: they do not change the trajectory.
RESUMABLE_CHANGES = frozenset({"checkpoint_every", "keep_checkpoints", "eval_every", "log_every", "num_threads"})
