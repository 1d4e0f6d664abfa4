"""Attention that keeps the documents of a packed micro-batch apart, at any row length, for every kernel we train with.

A packed row holds several documents; ``training.data`` restarts ``position_ids`` at 0 at every document and labels
each document's first token -100. What each ``attn_implementation`` gets from ``model_inputs``:

==================  =================================================================================================
``sdpa``            The micro-batch flattened into one row ``[1, B*T]``; attention runs per document with
                    ``scaled_dot_product_attention(is_causal=True)`` (kernel ``packed_sdpa``, registered below with
                    transformers). No ``T x T`` mask is ever built (transformers' own sdpa path builds a dense boolean
                    mask per row: 1 GiB at 32,768 tokens, and a mask also keeps SDPA off its flash kernel on GPU).
``flash_attention_2`` The flattened row plus ``cu_seq_lens_q/k`` and ``max_length_q/k``: transformers then calls
                    ``flash_attn_varlen_func`` (the ``DataCollatorWithFlattening`` convention). transformers takes its
                    varlen path from ``position_ids`` alone only when a batch holds one row, so an unflattened
                    micro-batch of 4 would attend across documents.
``flex_attention``  The flattened row and a block-sparse document ``BlockMask`` built from the document boundaries
                    (``document_block_mask``): O((B*T/128)^2) block metadata, no dense mask. torch 2.13 has no flex
                    backward on CPU, so it trains on GPU only (CPU: forward, e.g. evaluation).
``eager``           The rows as they are; transformers builds a dense per-document causal mask from
                    ``position_ids``. A reference for tests at short lengths.
==================  =================================================================================================

Flattening is exact: the rows' boundaries are document boundaries (every row starts a document), positions restart
per document either way, and the labels already mask each document's first token, so the last token of one row
never predicts the first token of the next.
"""

from __future__ import annotations

from typing import Any

import torch

# Values of PretrainConfig.attn_implementation, and the transformers kernel each one runs.
ATTENTION_KERNELS = {
    "sdpa": "packed_sdpa",
    "flash_attention_2": "flash_attention_2",
    "flex_attention": "flex_attention",
    "eager": "eager",
}
FLATTENED = frozenset({"sdpa", "flash_attention_2", "flex_attention"})
FLEX_BLOCK = 128  # torch's default BlockMask tile


def document_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """Flat indices where a document starts in ``position_ids`` [B, T] read row by row: where the position is not
    the previous one + 1 (transformers' ``find_packed_sequence_indices`` rule), and at every row start."""
    flat = position_ids.reshape(-1)
    starts = torch.ones_like(flat, dtype=torch.bool)
    starts[1:] = flat[1:] != flat[:-1] + 1
    starts.view(position_ids.shape)[:, 0] = True
    return starts.nonzero().view(-1)


def cumulative_lengths(position_ids: torch.Tensor) -> torch.Tensor:
    """``cu_seqlens`` of the flattened micro-batch: 0, the end of every document, ..., B*T (int32, as flash-attn)."""
    total = torch.tensor([position_ids.numel()], dtype=torch.int32)
    return torch.cat([document_starts(position_ids).to(torch.int32), total])


def model_inputs(batch: dict[str, torch.Tensor], attn_implementation: str, device: Any = "cpu") -> dict[str, Any]:
    """The keyword arguments a micro-batch from ``PackedShards.batch`` (CPU tensors [B, T]) is given to the model with
    under ``attn_implementation``, on ``device``. Boundaries are computed here on the CPU, so no kernel waits on the
    GPU for them."""
    if attn_implementation not in ATTENTION_KERNELS:
        raise ValueError(f"attn_implementation={attn_implementation!r}: use one of {', '.join(ATTENTION_KERNELS)}")
    if attn_implementation not in FLATTENED:
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    cu_seqlens = cumulative_lengths(batch["position_ids"].cpu())
    inputs: dict[str, Any] = {k: v.reshape(1, -1).to(device, non_blocking=True) for k, v in batch.items()}
    if attn_implementation == "sdpa":
        inputs["cu_seq_lens_q"] = cu_seqlens  # stays on the CPU: packed_sdpa only slices with it
    elif attn_implementation == "flash_attention_2":
        max_length = int(cu_seqlens.diff().max())
        inputs["cu_seq_lens_q"] = inputs["cu_seq_lens_k"] = cu_seqlens.to(device)
        inputs["max_length_q"] = inputs["max_length_k"] = max_length  # ints: flash-attn wants them on the host
    else:
        inputs["attention_mask"] = document_block_mask(cu_seqlens, device)
    return inputs


# ---- sdpa, one document at a time ------------------------------------------------------------------------------


def packed_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention interface: causal SDPA within each document of each row.

    query [B, Hq, T, D], key/value [B, Hkv, T, D] -> [B, T, Hq, D]. Documents come from ``cu_seq_lens_q`` (offsets
    into the flattened B*T tokens, from ``model_inputs``) or else from ``position_ids`` (a device sync on GPU).
    ``is_causal`` with no mask lets SDPA use its flash kernel (CPU and GPU); grouped-query heads go in unrepeated.
    """
    batch, _, seq_len, _ = query.shape
    if key.shape[2] != seq_len or attention_mask is not None:
        raise ValueError(
            "packed_sdpa trains on whole packed rows: no KV cache and no padding mask (generate with sdpa instead)"
        )
    if cu_seq_lens_q is None:
        if position_ids is None:
            raise ValueError("packed_sdpa needs cu_seq_lens_q or position_ids to find the documents")
        cu_seq_lens_q = cumulative_lengths(position_ids.expand(batch, -1).cpu())
    bounds = cu_seq_lens_q.tolist()
    if bounds[-1] != batch * seq_len:
        raise ValueError(f"cu_seq_lens_q ends at {bounds[-1]}, but the batch holds {batch} x {seq_len} tokens")
    gqa = key.shape[1] != query.shape[1]
    rows = []
    # split, not slicing: one autograd node per tensor whose backward concatenates the pieces' gradients, where a
    # slice per document would allocate a zero gradient of the whole row for every document.
    for b, (q_row, k_row, v_row) in enumerate(zip(query.split(1), key.split(1), value.split(1))):
        row_start = b * seq_len
        ends = [e - row_start for e in bounds if row_start < e <= row_start + seq_len]
        lengths = [end - start for start, end in zip([0] + ends, ends)]
        pieces = [
            torch.nn.functional.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=gqa
            )
            for q, k, v in zip(q_row.split(lengths, 2), k_row.split(lengths, 2), v_row.split(lengths, 2))
        ]
        rows.append(torch.cat(pieces, dim=2) if len(pieces) > 1 else pieces[0])
    out = torch.cat(rows) if batch > 1 else rows[0]  # [B, Hq, T, D]
    return out.transpose(1, 2).contiguous(), None


def register_packed_sdpa() -> None:
    """Make ``attn_implementation="packed_sdpa"`` known to transformers (idempotent; every process that builds a
    model calls it). No mask function is registered, so transformers builds no mask for it at all."""
    from transformers import AttentionInterface

    AttentionInterface.register("packed_sdpa", packed_sdpa_forward)


# ---- flex attention: a block-sparse document mask ---------------------------------------------------------------


def document_block_mask(cu_seqlens: torch.Tensor, device: Any = "cpu", block: int = FLEX_BLOCK) -> Any:
    """A causal per-document ``BlockMask`` over the flattened ``cu_seqlens[-1]`` tokens, built from the boundaries.

    Tiles of ``block`` x ``block`` tokens: a kv tile is skipped unless it shares a document with the q tile; it is
    "full" (no mask_mod call inside) when both tiles lie in one document and the kv tile is wholly in the past.
    Only the (n/block)^2 tile table is computed, never the n x n mask.
    """
    from torch.nn.attention.flex_attention import BlockMask

    n = int(cu_seqlens[-1])
    n_blocks = -(-n // block)
    lengths = cu_seqlens.diff().long()
    doc = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    padded = torch.cat([doc, torch.full((n_blocks * block - n,), len(lengths))])  # the tail tile's padding: own doc
    first, last = padded[::block], padded[block - 1 :: block]
    q_first, q_last = first[:, None], last[:, None]
    kv_first, kv_last = first[None, :], last[None, :]
    causal = torch.ones(n_blocks, n_blocks, dtype=torch.bool).tril()
    below = torch.ones(n_blocks, n_blocks, dtype=torch.bool).tril(-1)
    # kv tile j <= q tile i holds only documents <= those of tile i: they share one iff kv_last[j] >= q_first[i].
    any_allowed = causal & (kv_last >= q_first)
    full = below & (kv_first == q_last)  # both tiles inside one document
    partial = any_allowed & ~full

    def ordered(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        counts = table.sum(-1, dtype=torch.int32)
        indices = torch.argsort((~table).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return counts[None, None].to(device), indices[None, None].to(device)

    doc_ids = padded.to(device)

    def same_document_causal(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return (q_idx >= kv_idx) & (doc_ids[q_idx] == doc_ids[kv_idx])

    kv_num, kv_idx = ordered(partial)
    full_num, full_idx = ordered(full)
    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block, mask_mod=same_document_causal, seq_lengths=(n, n)
    )
