"""Settings of a pretraining run: ``PretrainSettings`` (the hyperparameters and machinery; the Launchpad config of
``base_model`` and ``long_context_model`` and the settings flags of ``python -m training.pretrain``) and
``PretrainConfig`` (the settings plus the run's data, output and starting point).

Light at import (pydantic only, no torch): the Dagster code location imports ``PretrainSettings``.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from pipelines.settings import Settings
from training.model_configs import MODEL_SIZES

Precision = Literal["auto", "bf16", "fp32"]
Strategy = Literal["ddp", "fsdp"]
Device = Literal["auto", "cpu", "cuda"]
AttentionImplementation = Literal["sdpa", "flash_attention_2", "flex_attention", "eager"]  # training.attention
ReduceDtype = Literal["fp32", "bf16"]
ModelSize = Literal[MODEL_SIZES]  # type: ignore[valid-type]
PRECISIONS, STRATEGIES, DEVICES = get_args(Precision), get_args(Strategy), get_args(Device)
ATTENTION_IMPLEMENTATIONS, REDUCE_DTYPES = get_args(AttentionImplementation), get_args(ReduceDtype)


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
