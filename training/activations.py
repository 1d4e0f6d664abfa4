"""Activation checkpointing for long rows: whole decoder layers, and the MLP in tiles of tokens inside them.

With ``enable_activation_checkpointing(model)`` the forward pass keeps only each decoder layer's input
(transformers' gradient checkpointing, non-reentrant); the backward pass runs the layer again to get what it
needs. Recomputing a layer at 32,768 tokens would still hold its whole MLP at once: gate, up, SiLU and their
product are four [T, intermediate] tensors (0.5B: 4 x 32,768 x 4,864 x 4 bytes = 2.5 GB). So each dense MLP also
runs over ``tile_tokens`` tokens at a time, each tile checkpointed on its own (the MLP works token by token, so
tiles give the same result): its intermediates exist for one tile at a time, in the forward pass and in the
backward pass. The price is compute: layers run twice in the forward direction, their MLPs three times.

MoE blocks are not tiled: their router logits are recorded per call for the load-balancing loss.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

MLP_TILE_TOKENS = 2048


def tile_mlp(mlp: torch.nn.Module, tile_tokens: int = MLP_TILE_TOKENS) -> None:
    """Make ``mlp(x)`` ([B, T, H]) run ``tile_tokens`` positions at a time, each tile checkpointed, when gradients
    are recorded and T is longer than a tile; same result."""
    original = mlp.forward

    def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() or x.shape[1] <= tile_tokens:
            return original(x)
        tiles = [
            checkpoint(original, x[:, start : start + tile_tokens], use_reentrant=False)
            for start in range(0, x.shape[1], tile_tokens)
        ]
        return torch.cat(tiles, dim=1)

    mlp.forward = types.MethodType(forward, mlp)


def enable_activation_checkpointing(model: torch.nn.Module, tile_tokens: int = MLP_TILE_TOKENS) -> None:
    """Checkpoint every decoder layer of a transformers causal LM and tile its dense MLPs (see the module doc)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # older transformers (e.g. a GPU image's 5.17) know only the old name
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    for layer in model.model.layers:
        if type(layer.mlp).__name__.endswith("MLP"):  # Qwen2MLP; not Qwen2MoeSparseMoeBlock
            tile_mlp(layer.mlp, tile_tokens)
