"""Build a Qwen2 on the meta device and give it its initial weights only where they will live.

    model = build_on_meta(qwen2_config("72B"), "packed_sdpa")   # shapes only: no parameter memory anywhere
    fully_shard(...)                                            # FSDP: each rank now owns a slice of every matrix
    materialize(model, device, seed=0)                          # allocate this rank's slices and initialise them
    materialize(model, device, seed=0, weights="runs/s1/final")  # or read them from a checkpoint, rows as needed

A 72B model is 290 GB of fp32 weights: building it whole on every rank before sharding (what ``from_config`` does)
cannot work. Here nothing is allocated until ``materialize``, which runs after sharding, so a rank allocates and
fills only its own shard: from the initialisation below, or (stage 2, ``init_from``) with the rows of its shard read
from the checkpoint's safetensors files.

The initial weights do not depend on how the model is sharded. Every matrix (Linear and Embedding weights, and an
MoE model's router and stacked expert weights: normal with std ``initializer_range``, as transformers'
``_init_weights``) is cut along its first dimension into blocks of whole rows, about ``INIT_BLOCK_ELEMENTS``
values each (the cut depends on the shape only), and each block is drawn from its own generator, seeded by (seed,
parameter name, block). A rank that owns rows [a, b) draws only the blocks that overlap them and gets exactly the
rows one process would have: one process, DDP and FSDP on any number of ranks start from the same weights, and
their losses can be compared. Biases start at 0, RMSNorm weights at 1, and the RoPE frequencies (non-persistent
buffers, which ``to_empty`` leaves uninitialised) are computed again from the config.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

INIT_BLOCK_ELEMENTS = 1 << 22  # 16 MB of fp32 per generator block


def build_on_meta(model_config: Any, attn_implementation: str) -> Any:
    """A ``Qwen2ForCausalLM`` of ``model_config`` whose parameters and buffers are on the meta device (fp32)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(
            model_config, attn_implementation=attn_implementation, dtype=torch.float32
        )


def block_seed(seed: int, name: str, block: int) -> int:
    """The generator seed of block ``block`` (see ``rows_per_block``) of parameter ``name``."""
    digest = hashlib.sha256(f"{seed}/{name}/{block}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def rows_per_block(shape: tuple[int, ...]) -> int:
    """Rows of one generator block of a matrix of ``shape``: about INIT_BLOCK_ELEMENTS values, at least one row."""
    return max(1, INIT_BLOCK_ELEMENTS // int(torch.Size(shape[1:]).numel()))


def normal_rows(name: str, shape: tuple[int, ...], start: int, stop: int, std: float, seed: int) -> torch.Tensor:
    """Rows [start, stop) (along the first dimension) of the initial value of the matrix ``name`` of ``shape``."""
    row_size = int(torch.Size(shape[1:]).numel())
    block_rows = rows_per_block(shape)
    out = torch.empty((stop - start, *shape[1:]), dtype=torch.float32)
    first, last = start // block_rows, (stop - 1) // block_rows
    for block in range(first, last + 1) if stop > start else ():
        block_start = block * block_rows
        rows = min(block_rows, shape[0] - block_start)
        generator = torch.Generator().manual_seed(block_seed(seed, name, block))
        values = torch.empty(rows * row_size).normal_(0.0, std, generator=generator).view(rows, *shape[1:])
        lo, hi = max(start, block_start), min(stop, block_start + rows)
        out[lo - start : hi - start] = values[lo - block_start : hi - block_start]
    return out


def _local_rows(param: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The tensor this process holds of ``param`` and the global row where it starts (0 unless a DTensor shard)."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    if not isinstance(param, DTensor):
        return param, 0
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if any(not (p == Shard(0) or p == Replicate()) for p in param.placements):
        raise ValueError(f"cannot initialise a parameter sharded as {param.placements}: expected Shard(0)")
    _, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    return param.to_local(), offset[0] if offset else 0


def _is_matrix(module: torch.nn.Module, param_name: str) -> bool:
    """Weights drawn from N(0, initializer_range): Linear and Embedding weights; the MoE router's weight and the
    experts' stacked [experts, out, in] projections (transformers' ``Qwen2MoePreTrainedModel._init_weights``)."""
    kind = type(module).__name__
    if isinstance(module, torch.nn.Linear | torch.nn.Embedding) or kind.endswith("TopKRouter"):
        return param_name == "weight"
    return kind.endswith("Experts")


def initialise_parameters(model: torch.nn.Module, seed: int) -> None:
    """Fill every parameter (whole, or this rank's shard) with its initial value; see the module docstring."""
    std = model.config.initializer_range
    seen: set[int] = set()
    with torch.no_grad():
        for module_name, module in model.named_modules():
            for param_name, param in module.named_parameters(recurse=False):
                if id(param) in seen:  # a tied weight: initialised under its first name
                    continue
                seen.add(id(param))
                name = f"{module_name}.{param_name}" if module_name else param_name
                local, start = _local_rows(param)
                if local.numel() == 0:
                    continue
                if _is_matrix(module, param_name):
                    values = normal_rows(name, tuple(param.shape), start, start + local.shape[0], std, seed)
                    local.copy_(values)
                elif param_name == "bias":
                    local.zero_()
                elif "RMSNorm" in type(module).__name__ and param_name == "weight":
                    local.fill_(1.0)
                else:
                    raise ValueError(f"no initial value defined for parameter {name} of {type(module).__name__}")


def recompute_buffers(model: torch.nn.Module) -> None:
    """The RoPE inverse frequencies again (non-persistent buffers: ``to_empty`` leaves them uninitialised)."""
    with torch.no_grad():
        for module_name, module in model.named_modules():
            buffers = dict(module.named_buffers(recurse=False))
            if not buffers:
                continue
            if "RotaryEmbedding" not in type(module).__name__:
                raise ValueError(f"no initial value defined for the buffers {sorted(buffers)} of {module_name}")
            fresh = type(module)(config=module.config)  # a few hundred floats, computed on the CPU
            for name, buffer in buffers.items():
                buffer.copy_(getattr(fresh, name))


def checkpoint_files(folder: str | Path) -> dict[str, Path]:
    """Tensor name -> safetensors file of a ``save_pretrained`` folder (one file, or an index over several)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        return {name: folder / file for name, file in json.loads(index.read_text())["weight_map"].items()}
    single = folder / "model.safetensors"
    if not single.exists():
        raise ValueError(f"{folder} holds no model.safetensors (or its index): not a save_pretrained folder")
    from safetensors import safe_open

    with safe_open(str(single), "pt") as f:
        return dict.fromkeys(f.keys(), single)


def parameter_names(model: torch.nn.Module) -> list[str]:
    """Every parameter once (a tied weight under its first name), as in ``model.state_dict()``."""
    return [name for name, _ in model.named_parameters()]


def load_local_rows(model: torch.nn.Module, folder: str | Path) -> None:
    """Fill every parameter (whole, or this rank's shard) from the checkpoint in ``folder``, reading only the rows
    this process holds (safetensors slices are read from the file as needed, not loaded whole)."""
    from safetensors import safe_open

    files = checkpoint_files(folder)
    handles: dict[Path, Any] = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name not in files:
                raise ValueError(f"{folder} has no tensor {name!r}: cannot load it shard by shard")
            handle = handles.get(files[name]) or handles.setdefault(files[name], safe_open(str(files[name]), "pt"))
            local, start = _local_rows(param)
            if local.numel():
                stored = handle.get_slice(name)
                if tuple(stored.get_shape()) != tuple(param.shape):
                    raise ValueError(f"{folder}: {name} is {stored.get_shape()}, the model's is {tuple(param.shape)}")
                local.copy_(stored[start : start + local.shape[0]])


def materialize(model: torch.nn.Module, device: Any, seed: int, weights: str | Path | None = None) -> None:
    """Allocate a meta-device model's parameters (or this rank's FSDP shards) on ``device``; initialise them, or
    load them from the ``save_pretrained`` folder ``weights`` (only the rows this process holds)."""
    from torch.distributed.tensor import DTensor

    sharded = any(isinstance(p, DTensor) for p in model.parameters())
    model.to_empty(device=device)
    if not sharded and getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()  # to_empty gives each module its own tensor; the output layer shares the embedding again
    if weights is None:
        initialise_parameters(model, seed)
    else:
        load_local_rows(model, weights)
    recompute_buffers(model)
