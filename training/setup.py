"""Setting a training run up on its ranks: the process group and device (``setup_distributed``), the Qwen2 model on
the meta device (``build_model``), its weights and DDP/FSDP2 wrapping (``wrap_model``), and AdamW
(``make_optimizer``). Shared by the pretraining, SFT and preference loops; torch is imported inside functions."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.pretrain_settings import PretrainConfig


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
