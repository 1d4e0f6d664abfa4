"""Qwen2 pretraining on packed token shards: stage 1 (4,096 context) and stage 2 (long context, RoPE base 1e6).

One process (CPU or one GPU):

    python -m training.pretrain --data runs/tokenized --output runs/pretrain-s1 --model-size tiny --max-steps 200

Several processes (DDP by default; ``--strategy fsdp`` shards parameters, gradients and optimizer state):

    torchrun --nproc_per_node=2 -m training.pretrain --data runs/tokenized --output runs/pretrain-s1 \\
        --model-size 0.5B --micro-batch-size 4 --grad-accum-steps 8

Stage 2 continues stage 1 on long documents packed 8x longer, with the RoPE base raised to 1,000,000:

    python -m training.pretrain --data runs/tokenized-long --output runs/pretrain-s2 \\
        --init-from runs/pretrain-s1/final --rope-theta 1000000 --lr 1e-4 --activation-checkpointing

``--config run.json`` (or .toml/.yaml) reads any of the settings (``PretrainSettings``) from a file,
``--settings-profile demo:base_model`` (or ``demo:long_context_model``) from that table of ``dagster_project/profiles/demo.toml``; flags given on
the command line win. The run options (``--data``, ``--output``, ``--val-data``, ``--init-from``, ``--rope-theta``,
``--model-size``, ``--precision``) are flags only. Both are generated from the models below (``pipelines.settings``),
as is the assets' Launchpad config.
A run resumes by itself from the newest checkpoint in ``--output``; rerunning a finished run with a larger
``--max-steps`` continues it in a new learning-rate segment (re-warmup, then a new cosine: ``lr_at``). It may
resume on another number of processes only with the same global batch (change ``--grad-accum-steps`` to keep it);
otherwise it is refused, as is a ``--max-steps`` change in the middle of a segment (``plan_resume``). A checkpoint
made with other data or another setting that shapes the trajectory (model, learning rates, global batch, seed ...)
is never resumed: the earlier run's outputs are moved to
``superseded/<time>-<run key>/`` and the run starts afresh. Outputs: ``metrics.jsonl`` (one line per step,
plus eval lines), ``tensorboard/``, ``checkpoints/step_XXXXXX/``, ``final/`` (``save_pretrained`` + tokenizer)
and ``summary.json``.

The global batch is ``micro_batch_size * grad_accum_steps * world_size`` rows of ``seq_len`` tokens (the data's
``seq_len``; it is also the model's ``max_position_embeddings``). Loss is the token mean over the whole global
batch: every micro-batch's summed token loss is divided by the global count of predicted tokens.

Rows of 32,768 tokens fit: no attention path builds a T x T mask, each micro-batch runs as one flattened row whose
documents attend only to themselves (``training.attention``), the output layer and loss run in chunks of positions
(``training.loss``), activation checkpointing is one flag (``training.activations``), and a model from scratch is
built on the meta device and materialised after FSDP sharding, each rank allocating only its shard
(``training.materialize``).

torch and transformers are imported inside functions, so importing ``PretrainConfig`` (Dagster UI) stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from pipelines.settings import ArgumentParser, Settings, parse_settings, settings_parser
from pipelines.settings import _argument as settings_argument
from training.model_configs import MODEL_SIZES

Precision = Literal["auto", "bf16", "fp32"]
Strategy = Literal["ddp", "fsdp"]
Device = Literal["auto", "cpu", "cuda"]
AttentionImplementation = Literal["sdpa", "flash_attention_2", "flex_attention", "eager"]  # training.attention
ReduceDtype = Literal["fp32", "bf16"]
ModelSize = Literal[MODEL_SIZES]  # type: ignore[valid-type]
PRECISIONS, STRATEGIES, DEVICES = get_args(Precision), get_args(Strategy), get_args(Device)
ATTENTION_IMPLEMENTATIONS, REDUCE_DTYPES = get_args(AttentionImplementation), get_args(ReduceDtype)
# Test hook: SIGKILL this process right after the given step (and its checkpoint), like a machine failure.
KILL_AFTER_STEP_ENV = "PRETRAIN_SIGKILL_AFTER_STEP"


class PretrainSettings(Settings):
    """How a model is trained: the hyperparameters and the machinery. The Launchpad config of ``base_model`` and
    ``long_context_model`` (``dagster_config``) and the settings flags of ``python -m training.pretrain``."""

    max_steps: int = Field(
        100, ge=1, description="Optimizer steps in the whole run (counting steps done before a resume)."
    )
    micro_batch_size: int = Field(4, ge=1, description="Rows per forward/backward pass on each rank.")
    grad_accum_steps: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step on each rank.")
    lr: float = Field(3e-4, gt=0, description="Peak learning rate, reached after the warmup.")
    min_lr: float = Field(3e-5, ge=0, description="Learning rate at the last step: the cosine decays from lr to this.")
    warmup_steps: int = Field(
        10,
        ge=0,
        description="Steps of linear warmup from lr/warmup_steps to lr (more than max_steps: the peak is never "
        "reached).",
    )
    weight_decay: float = Field(
        0.1, ge=0, description="AdamW weight decay on matrices and embeddings (never on biases and norms)."
    )
    grad_clip: float = Field(
        1.0, ge=0, description="Clip the global gradient norm to this; 0 disables clipping (the norm is still logged)."
    )
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2.")
    seed: int = Field(
        0, description="Seed of the weight init and of the data order (every epoch has its own order from it)."
    )
    device: Device = Field(
        "auto", description="auto: one CUDA GPU per rank when there is one, else CPU; or cpu / cuda."
    )
    attn_implementation: AttentionImplementation = Field(
        "sdpa",
        description="How attention keeps the documents of a packed micro-batch apart (training.attention). sdpa: "
        "the micro-batch flattened into one row, causal SDPA per document (CPU and GPU; no T x T mask); "
        "flash_attention_2: the flattened row and its document boundaries to flash-attn's varlen kernel (GPU, needs "
        "flash-attn); flex_attention: a block-sparse document BlockMask (GPU: torch 2.13 has no flex backward on "
        "CPU); eager: transformers' dense per-document mask (a reference for short rows).",
    )
    loss_chunk_tokens: int | None = Field(
        None,
        ge=0,
        description="Positions per chunk of output layer + cross-entropy (training.loss): one [chunk, vocab] fp32 "
        "buffer instead of the micro-batch's whole logits (a 32,768-token row: 20 GB). Default: 256 on CPU (0.16 GB "
        "at 151,936 rows), 4,096 on GPU (fewer, larger kernels). 0: transformers' loss over the full logits.",
    )
    activation_checkpointing: bool = Field(
        False,
        description="Keep only each decoder layer's input in the forward pass and recompute the layer in the "
        "backward pass, its MLP in tiles of 2,048 tokens (training.activations): more compute, activations of one "
        "layer (one MLP tile) at a time instead of all (long rows, large models).",
    )
    fsdp_reduce_dtype: ReduceDtype = Field(
        "fp32",
        description="With strategy fsdp and bf16 precision FSDP gathers the parameters in bf16 for forward and "
        "backward, and reduce-scatters gradients in this dtype: fp32 (exact sums over ranks) or bf16 (half the "
        "traffic). The sharded weights and the optimizer state stay fp32.",
    )
    strategy: Strategy = Field(
        "ddp",
        description="With several processes: ddp (replicated model) or fsdp (FSDP2 fully_shard per decoder layer).",
    )
    checkpoint_every: int = Field(
        100, ge=0, description="Save a resumable checkpoint every this many steps (and always at the last step)."
    )
    keep_checkpoints: int = Field(
        2, ge=1, description="How many of the newest checkpoints to keep (at least 1, or the run cannot resume)."
    )
    eval_every: int = Field(
        0, ge=0, description="Validation loss every this many steps; 0: only at the end. Needs val_data."
    )
    eval_batches: int = Field(
        4, ge=1, description="Micro-batches per rank in one validation pass (always the same first rows of val_data)."
    )
    log_every: int = Field(
        10,
        ge=1,
        description="Progress line (stdout or Dagster Pipes) every this many steps; metrics.jsonl gets every step.",
    )
    num_threads: int | None = Field(
        None,
        ge=1,
        description="torch intra-op CPU threads of each process (default: torch's choice; torchrun sets 1 per "
        "process).",
    )

    @field_validator("min_lr")
    @classmethod
    def _min_lr_below_lr(cls, min_lr: float, info: ValidationInfo) -> float:
        lr = info.data.get("lr")
        if lr is not None and min_lr > lr:
            raise PydanticCustomError("min_lr", "must be between 0 and lr={lr}", {"lr": lr})
        return min_lr


# What the Dagster assets supply from the curation and training resources, not from the Launchpad.
RUN_FIELDS = ("data", "output_dir", "val_data", "model_size", "init_from", "rope_theta", "precision")


class PretrainConfig(PretrainSettings):
    """Everything a pretraining run needs: the settings plus the run's data, output and starting point (in
    Dagster these come from the resources). ``main`` builds it from flags and ``--config``."""

    data: str = Field(
        "",
        description="Packed tokenize-stage folder to train on (_config.json with seq_len, data/*.parquet, "
        "_SUCCESS.json); local path or fsspec URI.",
    )
    output_dir: str = Field(
        "",
        description="Folder for checkpoints, metrics, TensorBoard logs, final/ and summary.json; a rerun resumes "
        "here (--output is the same flag).",
    )
    val_data: str | None = Field(
        None, description="Optional packed stage folder for the validation loss (same seq_len as data)."
    )
    model_size: ModelSize | None = Field(
        None,
        description="Qwen2 size to train from scratch: tiny, proxy, 0.5B, 1.5B, 7B or 72B (default tiny). With "
        "init_from the checkpoint's shape is used and this, if given, must match it.",
    )
    init_from: str | None = Field(
        None,
        description="A save_pretrained folder to start from instead of random weights (stage 2 continues stage "
        "1's final); its optimizer state is not loaded.",
    )
    rope_theta: float | None = Field(
        None,
        gt=0,
        description="RoPE base; default 10,000 from scratch, the checkpoint's with init_from. Stage 2 sets 1,000,000.",
    )
    precision: Precision = Field(
        "auto",
        description="auto: bf16 autocast on a GPU that supports it, else fp32; bf16: bf16 autocast on any device "
        "(CPU too); fp32: no autocast. Weights and optimizer state are always fp32.",
    )

    @field_validator("data", "output_dir")
    @classmethod
    def _given(cls, value: str, info: ValidationInfo) -> str:
        if not value:
            what = "the packed stage folder to train on" if info.field_name == "data" else "a folder for checkpoints"
            raise PydanticCustomError("missing_folder", f"give {what}")
        return value


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run between two steps; the last checkpoint is intact."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class StopOnSignal:
    """Turns the first SIGINT/SIGTERM into a flag the loop checks at every step; a second one interrupts at once."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # signal handlers only exist there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:
            raise TrainingInterrupted(signum)
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


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


@dataclass
class Distributed:
    rank: int
    world_size: int
    local_rank: int
    device: Any  # torch.device
    owns_group: bool  # we initialised the process group, so we tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(config: PretrainConfig) -> Distributed:
    """Join the torchrun process group when there is one (nccl on CUDA, gloo on CPU) and pick this rank's device."""
    import torch
    import torch.distributed as dist

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch sees no CUDA GPU; use --device cpu")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    owns_group = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
        owns_group = True
    return Distributed(rank, world_size, local_rank, device, owns_group)


def build_model(config: PretrainConfig, seq_len: int, device: Any = "cpu") -> Any:
    """A Qwen2 of ``model_size`` (or of ``init_from``'s shape) on the meta device: ``wrap_model`` gives it its
    weights where they will live, initialised or read from ``init_from``. Positions = ``seq_len``, RoPE base set;
    the attention kernel, activation checkpointing and the chunked loss of ``config`` (for ``device``) in place. A
    checkpoint whose tensors are not stored under the model's parameter names is loaded whole on the CPU instead."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from training.activations import enable_activation_checkpointing
    from training.attention import ATTENTION_KERNELS, register_packed_sdpa
    from training.loss import use_chunked_loss
    from training.materialize import build_on_meta, checkpoint_files, parameter_names
    from training.model_configs import qwen2_config, rope_theta_of, set_rope_theta, shape_of, size_name_of

    register_packed_sdpa()
    kernel = ATTENTION_KERNELS[config.attn_implementation]
    if config.init_from is None:
        model_config = qwen2_config(
            config.model_size or "tiny", max_position_embeddings=seq_len, rope_theta=config.rope_theta
        )
        model = build_on_meta(model_config, kernel)  # no memory yet: 72B would be 290 GB per rank
    else:
        init_dir = Path(config.init_from)
        if not (init_dir / "config.json").exists():
            raise ValueError(f"init_from={config.init_from}: no config.json there; give a save_pretrained folder")
        model_config = AutoConfig.from_pretrained(init_dir, local_files_only=True)
        if config.model_size is not None and size_name_of(model_config) != config.model_size:
            raise ValueError(
                f"model_size={config.model_size} but init_from holds a {size_name_of(model_config) or 'custom'} "
                f"model ({shape_of(model_config)}); drop model_size or pick the matching checkpoint"
            )
        # RoPE frequencies are computed when the model is built, so the new base must be in the config first.
        set_rope_theta(model_config, config.rope_theta or rope_theta_of(model_config))
        model_config.max_position_embeddings = seq_len
        model = build_on_meta(model_config, kernel)
        if not set(parameter_names(model)) <= set(checkpoint_files(init_dir)):
            # Stored under other names (e.g. per-expert MoE weights that transformers converts while loading): read
            # the whole checkpoint on every rank, as transformers does.
            model = AutoModelForCausalLM.from_pretrained(
                init_dir, config=model_config, dtype=torch.float32, attn_implementation=kernel, local_files_only=True
            )
    if config.activation_checkpointing:
        enable_activation_checkpointing(model)
    chunk = loss_chunk_tokens(config, device)
    if chunk:
        use_chunked_loss(model, chunk)
    return model


def loss_chunk_tokens(config: PretrainConfig, device: Any = "cpu") -> int:
    """``config.loss_chunk_tokens``, or its default on ``device``: 256 on CPU, 4,096 on GPU."""
    if config.loss_chunk_tokens is not None:
        return config.loss_chunk_tokens
    return 4096 if str(device).startswith("cuda") else 256


def fsdp_mixed_precision(config: PretrainConfig, use_bf16: bool) -> Any:
    """FSDP2's policy: bf16 gathered parameters and ``fsdp_reduce_dtype`` gradient reduction under bf16 precision;
    fp32 throughout otherwise."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if not use_bf16:
        return MixedPrecisionPolicy()
    reduce_dtype = torch.bfloat16 if config.fsdp_reduce_dtype == "bf16" else torch.float32
    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=reduce_dtype)


def wrap_model(model: Any, config: PretrainConfig, dist_info: Distributed, use_bf16: bool = False) -> Any:
    """The model's weights on this rank's device, and DDP or FSDP2 around it when there are several processes.

    A model built on the meta device gets its weights here (``training.materialize``): under FSDP after sharding,
    so each rank allocates, and initialises or reads from ``init_from``, only its own shard of every matrix. The
    initial weights do not depend on the world size or strategy.
    """
    from training.materialize import materialize

    on_meta = any(p.is_meta for p in model.parameters())
    device = dist_info.device
    weights = config.init_from  # read from the checkpoint rather than initialised
    if dist_info.world_size == 1 or config.strategy == "ddp":
        materialize(model, device, config.seed, weights) if on_meta else model.to(device)
        if dist_info.world_size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [dist_info.local_rank] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    from torch.distributed.fsdp import fully_shard

    # FSDP2 works on CPU with gloo (torch 2.13). One unit per decoder layer, the root holds embeddings, final norm
    # and output layer (tied or not).
    if not on_meta:
        model.to(device)  # a checkpoint transformers had to convert: loaded whole on every rank, then sharded
    policy = fsdp_mixed_precision(config, use_bf16)
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    if on_meta:
        materialize(model, device, config.seed, weights)
    return model


def make_optimizer(model: Any, config: PretrainConfig, fused: bool = True) -> Any:
    """AdamW with weight decay on matrices and embeddings only (nanoGPT's split).

    The fused kernel exists for CPU too and is ~9x faster there than torch's CPU default (a per-tensor loop);
    FSDP's sharded DTensor parameters take the multi-tensor (foreach) path instead.
    """
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kernel = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=1e-8, **kernel)


class RunLog:
    """Rank 0's outputs while training: metrics.jsonl, TensorBoard, progress lines (stdout or Dagster Pipes)."""

    def __init__(
        self,
        output_dir: Path,
        resumed_step: int,
        stack: ExitStack,
        progress: Callable[[dict], None] | None,
    ):
        from torch.utils.tensorboard import SummaryWriter

        self.metrics_path = output_dir / "metrics.jsonl"
        self._drop_lines_after(resumed_step)
        self.metrics = stack.enter_context(open(self.metrics_path, "a"))
        # purge_step hides events a killed run wrote after its last checkpoint.
        self.tb = SummaryWriter(str(output_dir / "tensorboard"), purge_step=resumed_step + 1)
        stack.callback(self.tb.close)
        self.progress = progress
        self.pipes = None
        try:
            from dagster_pipes import PipesContext, PipesEnvVarParamsLoader, open_dagster_pipes
        except ImportError:
            if "DAGSTER_PIPES_CONTEXT" in os.environ:
                raise RuntimeError("launched through Dagster Pipes, but dagster-pipes is not installed") from None
            return
        if PipesContext.is_initialized() and not PipesContext.get().is_closed:
            self.pipes = PipesContext.get()  # the caller's open session: use it, leave closing it to the caller
        elif PipesEnvVarParamsLoader().is_dagster_pipes_process():
            if PipesContext.is_initialized():  # closed by an earlier run() in this process: open a fresh one
                PipesContext.set(None)  # type: ignore[arg-type]
            self.pipes = stack.enter_context(open_dagster_pipes())

    def _drop_lines_after(self, step: int) -> None:
        if not self.metrics_path.exists():
            return
        kept = [
            line
            for line in self.metrics_path.read_text().splitlines()
            if line.strip() and _complete_json(line) and json.loads(line)["step"] <= step
        ]
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.metrics_path)

    def record(self, record: dict) -> None:
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float):
                self.tb.add_scalar(("val/" if key.startswith("val_") else "train/") + key, value, record["step"])

    def info(self, message: str, record: dict | None = None) -> None:
        if self.pipes is not None:
            self.pipes.log.info(message)
        else:
            print(message, flush=True)
        if self.progress is not None and record is not None:
            self.progress(record)

    def finish(self, summary: dict) -> None:
        if self.pipes is not None:
            self.pipes.report_custom_message(summary)


def _complete_json(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:  # the half-written last line of a killed run
        return False


def run(config: PretrainConfig, progress: Callable[[dict], None] | None = None) -> dict:
    """Train (resuming from ``output_dir`` if it holds a checkpoint); returns the summary also in summary.json.

    ``progress`` (rank 0) gets each step's metrics record every ``log_every`` steps, e.g. a Dagster logger.
    Raises ``TrainingInterrupted`` after SIGINT/SIGTERM.
    """
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from training.attention import model_inputs
    from training.checkpoint import latest_checkpoint, load_checkpoint, remove_partial_checkpoints, save_checkpoint
    from training.data import IGNORE_INDEX, PackedShards
    from training.loss import router_aux_loss_coef, split_router_loss
    from training.model_configs import rope_theta_of, size_name_of

    started = time.perf_counter()
    data = PackedShards(config.data)
    val = PackedShards(config.val_data) if config.val_data else None
    if val is not None and val.seq_len != data.seq_len:
        raise ValueError(f"val_data has seq_len {val.seq_len} but data has {data.seq_len}; pack them alike")
    seq_len = data.seq_len
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    output_dir = Path(config.output_dir)
    ckpt_root = output_dir / "checkpoints"
    kill_after = int(os.environ.get(KILL_AFTER_STEP_ENV, "0"))

    with ExitStack() as stack, StopOnSignal() as stop:
        dist_info = setup_distributed(config)
        if dist_info.owns_group:
            stack.callback(dist.destroy_process_group)
        rank, world, device = dist_info.rank, dist_info.world_size, dist_info.device
        key = run_key(config, world)
        resume_plan = plan_resume(output_dir, config, world)  # on every rank: a refusal before any weights load
        schedule = resume_plan.schedule
        superseded = None
        if dist_info.is_main:
            output_dir.mkdir(parents=True, exist_ok=True)
            remove_partial_checkpoints(ckpt_root)
            superseded = supersede_stale_run(output_dir, key)
        if world > 1:
            dist.barrier()

        if config.attn_implementation == "flex_attention" and device.type == "cpu":
            raise ValueError(
                "attn_implementation=flex_attention trains on GPU only: torch 2.13 has no flex attention backward "
                "on CPU; use sdpa (also no T x T mask) or run on a GPU"
            )
        use_bf16 = config.precision == "bf16" or (
            config.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
        )
        autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext
        model = build_model(config, seq_len, device)
        n_params = sum(p.numel() for p in model.parameters())
        aux_coef = router_aux_loss_coef(model)  # MoE: weight of the router's load-balancing loss; dense: 0
        model = wrap_model(model, config, dist_info, use_bf16)
        base_model = model.module if isinstance(model, DistributedDataParallel) else model
        optimizer = make_optimizer(model, config, fused=config.strategy != "fsdp" or world == 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_at(i + 1, config, schedule) / config.lr)
        rows_per_step = config.micro_batch_size * config.grad_accum_steps * world
        tokens_per_step = rows_per_step * seq_len

        # ---- resume ---------------------------------------------------------------------------------------------
        step, samples_seen, elapsed_before = 0, 0, 0.0
        resume_dir = latest_checkpoint(ckpt_root)
        if resume_dir is not None:
            state = load_checkpoint(resume_dir, model, optimizer, rank=rank)
            if state["seq_len"] != seq_len:
                raise ValueError(
                    f"{config.output_dir} holds checkpoints of a run on seq_len {state['seq_len']}, but data has "
                    f"seq_len {seq_len}: use a new output_dir (or init_from that run's final/)"
                )
            scheduler.load_state_dict(state["scheduler"])
            step, samples_seen, elapsed_before = state["step"], state["samples_seen"], state["elapsed_s"]
            if resume_plan.new_segment:  # the optimizer holds the next rate of the finished schedule: replace it
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step + 1, config, schedule)
        log = RunLog(output_dir, step, stack, progress) if dist_info.is_main else None
        if log is not None:
            where = f"resuming from {resume_dir.name}" if resume_dir else "starting"
            if superseded is not None:
                where += f" (checkpoints of other data or settings moved to {superseded})"
            if resume_plan.new_segment:
                seg = schedule[-1]
                where += (
                    f" (max_steps raised: new schedule segment, steps {seg['start'] + 1}-{seg['end']}: re-warmup "
                    f"from {seg['from_lr']:.2e} to {seg['peak_lr']:.2e} over {seg['warmup']} steps, cosine to "
                    f"{seg['min_lr']:.2e})"
                )
            log.info(
                f"{where}: {n_params:,} parameters, {len(data):,} rows x {seq_len} tokens, "
                f"{rows_per_step} rows/step on {world} x {device.type}, {'bf16' if use_bf16 else 'fp32'}"
            )

        def micro_batches_at(position: int) -> list[dict]:
            """This rank's micro-batches of the global batch starting at ``position`` (a disjoint slice)."""
            out = []
            for m in range(config.grad_accum_steps):
                first = position + (m * world + rank) * config.micro_batch_size
                batch = data.batch(data.indices_at(first, config.micro_batch_size, config.seed))
                out.append(model_inputs(batch, config.attn_implementation, device))  # flattened, with boundaries
            return out

        def all_reduce_sum(values: list[float]) -> list[float]:
            t = torch.tensor(values, dtype=torch.float64, device=device)
            if world > 1:
                dist.all_reduce(t)
            return t.tolist()  # a CPU-GPU sync point

        def evaluate() -> tuple[float, int]:
            """Token-mean loss over the first eval_batches * micro_batch_size * world rows of val_data."""
            model.eval()
            loss_sum, count = 0.0, 0
            with torch.no_grad():
                for b in range(config.eval_batches):
                    first = (b * world + rank) * config.micro_batch_size
                    rows = [i % len(val) for i in range(first, first + config.micro_batch_size)]
                    batch = model_inputs(val.batch(rows), config.attn_implementation, device)
                    n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
                    with autocast():
                        out = model(**batch, use_cache=False)
                    loss_sum += float(split_router_loss(out, aux_coef)[0]) * n  # the LM loss (MoE: without aux)
                    count += n
            model.train()
            loss_sum, count = all_reduce_sum([loss_sum, count])
            return loss_sum / max(count, 1), int(count)

        def checkpoint() -> None:
            trainer_state = {
                "samples_seen": samples_seen,
                "tokens_seen": samples_seen * seq_len,
                "elapsed_s": elapsed_before + time.perf_counter() - started,
                "scheduler": scheduler.state_dict(),
                "seq_len": seq_len,
                "rows_per_step": rows_per_step,
                "world_size": world,
                "config": config.model_dump(),
                "run_key": key,
                "schedule": schedule,
            }
            save_checkpoint(ckpt_root, step, model, optimizer, trainer_state, rank=rank, keep=config.keep_checkpoints)

        # ---- train ----------------------------------------------------------------------------------------------
        model.train()
        last_loss, val_loss, session_tokens, session_seconds = None, None, 0, 0.0
        while step < config.max_steps:
            t0 = time.perf_counter()
            micro_batches = micro_batches_at(samples_seen)
            local_targets = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro_batches)
            # One collective per step: the global count of predicted tokens, and whether any rank was signalled,
            # so that every rank stops at the same step.
            global_targets, stop_votes = all_reduce_sum([local_targets, float(stop.signum != 0)])
            if stop_votes:
                raise TrainingInterrupted(stop.signum or signal.SIGTERM)
            num_items = max(int(global_targets), 1)
            loss_sum, aux_sum = accumulate_gradients(
                model, micro_batches, num_items, world, config.strategy, aux_coef, autocast
            )
            max_norm = config.grad_clip if config.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            if hasattr(grad_norm, "full_tensor"):  # FSDP2 returns a DTensor
                grad_norm = grad_norm.full_tensor()
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            samples_seen += rows_per_step
            last_loss, aux_total = all_reduce_sum([float(loss_sum), float(aux_sum) if aux_sum is not None else 0.0])
            seconds = time.perf_counter() - t0
            session_tokens += tokens_per_step
            session_seconds += seconds
            record = {
                "step": step,
                "loss": last_loss,
                "lr": lr,
                **({"aux_loss": aux_total / (config.grad_accum_steps * world)} if aux_sum is not None else {}),
                "grad_norm": float(grad_norm),
                "tokens": samples_seen * seq_len,
                "tokens_per_s": tokens_per_step / seconds,
                "epoch": samples_seen / len(data),
                "elapsed": elapsed_before + time.perf_counter() - started,
            }
            if log is not None:
                log.record(record)
                if step % config.log_every == 0 or step == config.max_steps:
                    log.info(
                        f"step {step}/{config.max_steps} loss {last_loss:.4f} lr {lr:.2e} "
                        f"grad_norm {record['grad_norm']:.3f} {record['tokens_per_s']:,.0f} tok/s",
                        record,
                    )
            if val is not None and ((config.eval_every and step % config.eval_every == 0) or step == config.max_steps):
                val_loss, val_tokens = evaluate()
                if log is not None:
                    log.record({"step": step, "val_loss": val_loss, "val_tokens": val_tokens})
                    log.info(f"step {step} val_loss {val_loss:.4f}")
            if (config.checkpoint_every and step % config.checkpoint_every == 0) or step == config.max_steps:
                checkpoint()
            if kill_after and step == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

        if val is not None and val_loss is None:  # resumed a finished run: report its validation loss again
            val_loss, _ = evaluate()

        # ---- final model ----------------------------------------------------------------------------------------
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # A collective under FSDP: gathers the full weights, on CPU, to save them from rank 0.
        full_state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        summary: dict[str, Any] = {}
        if dist_info.is_main:
            final_dir = save_final(base_model, full_state, output_dir)
            summary = {
                "steps": step,
                "tokens_seen": samples_seen * seq_len,
                "final_loss": last_loss if last_loss is not None else _last_logged_loss(output_dir),
                "val_loss": val_loss,
                "tokens_per_s": session_tokens / session_seconds if session_seconds else None,
                "seq_len": seq_len,
                "rope_theta": rope_theta_of(base_model.config),
                "max_position_embeddings": base_model.config.max_position_embeddings,
                "parameters": n_params,
                "model_size": size_name_of(base_model.config),
                "init_from": config.init_from,
                "world_size": world,
                "strategy": config.strategy if world > 1 else "single",
                "precision": "bf16" if use_bf16 else "fp32",
                "rows_per_step": rows_per_step,
                "resumed_from_step": int(resume_dir.name.split("_")[1]) if resume_dir else None,
                "wall_seconds": time.perf_counter() - started,
                "total_seconds": elapsed_before + time.perf_counter() - started,
                "output_dir": str(output_dir),
                "final_dir": str(final_dir),
            }
            tmp = output_dir / "summary.json.tmp"
            tmp.write_text(json.dumps(summary, indent=1))
            os.replace(tmp, output_dir / "summary.json")
            log.info(f"done: {step} steps, loss {summary['final_loss']}, model in {final_dir}")
            log.finish(summary)
        if world > 1:
            dist.barrier()
        return summary


def accumulate_gradients(
    model: Any,
    micro_batches: list[dict],
    num_items: int,
    world: int,
    strategy: str,
    aux_coef: float,
    autocast: Callable[[], Any] = nullcontext,
) -> tuple[Any, Any]:
    """Forward + backward of this rank's micro-batches of one step; gradients synchronised once, after the last.

    Objective: the global batch's token-mean LM loss (each micro-batch's summed token loss / ``num_items``, the
    predicted tokens of the whole global batch) plus, for an MoE model, ``aux_coef`` times the mean of the router's
    load-balancing loss over all ``grad_accum_steps * world`` micro-batches: each micro-batch's aux loss enters
    divided by their number, as its LM loss is divided by the global token count (transformers' forward adds it
    undivided, which would weigh it ``grad_accum_steps * world`` times too much). Returns this rank's summed LM
    loss and summed aux loss (None for a dense model), detached.
    """
    import torch

    from training.loss import split_router_loss

    aux_scale = 1.0 / (len(micro_batches) * world)
    loss_sum, aux_sum = torch.zeros(()), None
    for m, batch in enumerate(micro_batches):
        sync = m == len(micro_batches) - 1  # all-reduce (DDP) / reduce-scatter (FSDP) gradients once
        if world > 1 and strategy == "fsdp":
            model.set_requires_gradient_sync(sync)
        with model.no_sync() if world > 1 and strategy == "ddp" and not sync else nullcontext():
            with autocast():
                # loss = this micro-batch's summed token loss / predicted tokens in the global batch
                loss, aux = split_router_loss(model(**batch, use_cache=False, num_items_in_batch=num_items), aux_coef)
            objective = loss if aux is None else loss + (aux_coef * aux_scale) * aux
            # DDP and FSDP average gradients over ranks; scale back up to the global token mean.
            (objective * world).backward()
        loss_sum = loss_sum.to(loss.device) + loss.detach()
        if aux is not None:
            aux_sum = aux.detach() if aux_sum is None else aux_sum + aux.detach()
    return loss_sum, aux_sum


def save_final(model: Any, state_dict: dict, output_dir: Path, kind: str = "base") -> Path:
    """``output_dir/final``: safetensors weights + config (transformers 5 always writes safetensors), the Qwen2
    tokenizer with the project's ChatML template, and a generation config that stops where a ``base`` model's
    documents end (``<|endoftext|>``; ``kind="chat"``: ``<|im_end|>``). See ``training.checkpoint``."""
    from training.checkpoint import save_pretrained_folder

    return save_pretrained_folder(model, state_dict, output_dir / "final", kind=kind)


def _last_logged_loss(output_dir: Path) -> float | None:
    path = output_dir / "metrics.jsonl"
    losses = [r["loss"] for r in map(json.loads, path.read_text().splitlines()) if "loss" in r] if path.exists() else []
    return losses[-1] if losses else None


# ---- command line -----------------------------------------------------------------------------------------------


def build_parser() -> ArgumentParser:
    """The run options (``RUN_FIELDS``: data, output, starting point; in Dagster they come from the resources) and
    the settings flags generated from ``PretrainSettings`` (``pipelines.settings``), with ``--config FILE`` (JSON,
    TOML or YAML of settings; what the Dagster assets write) and ``--settings-profile NAME``; flags win."""
    parser = ArgumentParser(prog="python -m training.pretrain", description=__doc__.split("\n\n")[0])
    run_group = parser.add_argument_group("run", "What to train on, where to write, where to start.")
    for name in RUN_FIELDS:
        flags, kwargs = settings_argument(name, PretrainConfig.model_fields[name])
        run_group.add_argument(*flags, *(["--output"] if name == "output_dir" else []), **kwargs)
    return settings_parser(PretrainSettings, parser=parser)


def config_from_args(argv: list[str] | None = None) -> PretrainConfig:
    """The validated config of a command line; a bad or missing value exits with a one-line error (status 2)."""
    parser = build_parser()
    args, settings = parse_settings(parser, argv)
    try:
        return PretrainConfig(
            **settings.model_dump(), **{name: getattr(args, name) for name in RUN_FIELDS if hasattr(args, name)}
        )
    except ValueError as e:
        parser.error(str(e))


def main(argv: list[str] | None = None) -> None:
    config = config_from_args(argv)
    try:
        run(config)
    except TrainingInterrupted as e:
        print(f"training {e}; the last checkpoint is intact, rerun the same command to resume", file=sys.stderr)
        sys.exit(128 + e.signum)
    except ValueError as e:  # bad data or checkpoint folders: a message, not a traceback
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
