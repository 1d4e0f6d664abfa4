"""Packed pretraining rows read lazily from a tokenize stage folder, and a deterministic, resumable order.

A packed stage folder (``pipelines.schema.PACKED_SCHEMA``) holds rows of exactly ``seq_len`` token ids, each row
a concatenation of document segments whose lengths are in ``doc_lengths``:

    <stage>/_config.json          {"seq_len": 4096, ...}
    <stage>/data/*.parquet        input_ids list<int32>[seq_len], doc_lengths list<int32>, seq_index int64
    <stage>/_SUCCESS.json         present once the stage has finished

``PackedShards.batch`` turns rows into model inputs so that no token attends to or is predicted from another
document: ``position_ids`` restart at 0 at every segment (transformers' Qwen2 then builds a block-diagonal causal
mask when ``attention_mask`` is None and no cache is used: ``masking_utils.find_packed_sequence_indices``), and the
first token of every segment is labelled -100 (the causal LM loss shifts labels, so the last token of one document
never predicts the first token of the next).

Only row-group sizes are read up front (Parquet footers); row groups are read on demand and a few are cached, so
memory does not grow with the corpus. A sample is addressed by a global counter (``position``): epoch
``position // len(data)``, row ``epoch_order(...)[position % len(data)]``; resuming needs only that counter.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from pipelines.shards import CONFIG_FILE, SUCCESS_FILE, filesystem, join, list_shards, read_json

IGNORE_INDEX = -100


def epoch_order(n: int, seed: int, epoch: int, blocks: Sequence[int] | None = None, window: int = 8) -> np.ndarray:
    """The order of rows ``0..n-1`` in one epoch; the same ``(seed, epoch)`` always gives the same order.

    Without ``blocks`` it is a uniform permutation. With ``blocks`` (row counts of consecutive row groups, summing
    to ``n``) the row groups are shuffled, taken ``window`` at a time, and the rows of each window are shuffled
    together: a reader that caches ``window`` row groups then reads each row group once per epoch, instead of once
    per row as a uniform permutation of a large corpus would make it.
    """
    if n <= 0:
        raise ValueError(f"cannot order {n} rows")
    rng = np.random.default_rng([seed, epoch])
    if blocks is None:
        return rng.permutation(n)
    sizes = np.asarray(blocks, dtype=np.int64)
    if sizes.sum() != n:
        raise ValueError(f"block sizes sum to {sizes.sum()}, not {n}")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    block_order = rng.permutation(len(sizes))
    parts = []
    for w in range(0, len(block_order), window):
        rows = np.concatenate([np.arange(starts[b], starts[b] + sizes[b]) for b in block_order[w : w + window]])
        parts.append(rng.permutation(rows))
    return np.concatenate(parts)


def positions_and_labels(input_ids: torch.Tensor, doc_lengths: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """``position_ids`` restarting at every segment and ``labels`` with -100 at each segment's first token.

    input_ids: [B, T]; doc_lengths: B arrays of segment lengths summing to T.
    """
    batch, seq_len = input_ids.shape
    position_ids = torch.empty((batch, seq_len), dtype=torch.long)
    labels = input_ids.clone()
    for b, lengths in enumerate(doc_lengths):
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        position_ids[b] = torch.from_numpy(np.arange(seq_len) - np.repeat(starts, lengths))
        labels[b, torch.from_numpy(starts)] = IGNORE_INDEX
    return position_ids, labels


class PackedShards:
    """Random access to the packed rows of a finished tokenize stage (``len()`` rows of ``seq_len`` tokens)."""

    def __init__(self, stage_dir: str, cache_row_groups: int = 8):
        """Index ``stage_dir``; up to ``cache_row_groups`` decoded row groups stay in memory (ids as int32)."""
        self.stage_dir = stage_dir
        if read_json(join(stage_dir, SUCCESS_FILE)) is None:
            raise ValueError(
                f"{stage_dir} has no {SUCCESS_FILE}: it is not a finished packed stage folder "
                "(run the tokenize stage to completion first, or point --data at its output folder)"
            )
        config = read_json(join(stage_dir, CONFIG_FILE)) or {}
        if not isinstance(config.get("seq_len"), int) or config["seq_len"] < 2:
            raise ValueError(
                f"{stage_dir}/{CONFIG_FILE} must hold an integer 'seq_len' >= 2, got {config.get('seq_len')!r}"
            )
        self.seq_len: int = config["seq_len"]
        self.config: dict = config
        self.shards = list_shards(stage_dir)
        if not self.shards:
            raise ValueError(f"{stage_dir}/data holds no .parquet shards")
        self._fs, _ = filesystem(self.shards[0])
        # One entry per non-empty row group: (shard index, row group index); _starts[i] = first global row.
        self._groups: list[tuple[int, int]] = []
        sizes: list[int] = []
        for shard_index, shard in enumerate(self.shards):
            with self._fs.open(filesystem(shard)[1], "rb") as f:
                parquet = pq.ParquetFile(f)
                meta, names = parquet.metadata, set(parquet.schema_arrow.names)
            if not {"input_ids", "doc_lengths"} <= names:
                raise ValueError(
                    f"{shard} lacks input_ids/doc_lengths columns (has {sorted(names)}): not a packed shard"
                )
            for rg in range(meta.num_row_groups):
                rows = meta.row_group(rg).num_rows
                if rows:
                    self._groups.append((shard_index, rg))
                    sizes.append(rows)
        self.row_group_sizes: list[int] = sizes
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.num_rows = int(self._starts[-1])
        if self.num_rows == 0:
            raise ValueError(f"{stage_dir} has no rows")
        self._cache: OrderedDict[int, tuple[np.ndarray, list[np.ndarray]]] = OrderedDict()
        self._cache_size = max(1, cache_row_groups)
        self._orders: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return self.num_rows

    @property
    def num_tokens(self) -> int:
        return self.num_rows * self.seq_len

    def _row_group(self, group: int) -> tuple[np.ndarray, list[np.ndarray]]:
        if group in self._cache:
            self._cache.move_to_end(group)
            return self._cache[group]
        shard_index, rg = self._groups[group]
        shard = self.shards[shard_index]
        with self._fs.open(filesystem(shard)[1], "rb") as f:
            table = pq.ParquetFile(f).read_row_group(rg, columns=["input_ids", "doc_lengths"])
        ids_col = table.column("input_ids").combine_chunks()
        lens_col = table.column("doc_lengths").combine_chunks()
        row_lengths = pc.list_value_length(ids_col).to_numpy(zero_copy_only=False)
        if (row_lengths != self.seq_len).any():
            bad = int(np.flatnonzero(row_lengths != self.seq_len)[0])
            raise ValueError(
                f"{shard} row group {rg} row {bad} has {row_lengths[bad]} tokens, but {self.stage_dir} "
                f"declares seq_len {self.seq_len}: rows must be packed to exactly seq_len"
            )
        ids = ids_col.flatten().to_numpy().astype(np.int32, copy=False).reshape(-1, self.seq_len)
        offsets = lens_col.offsets.to_numpy()
        values = lens_col.flatten().to_numpy().astype(np.int64)
        lengths = [values[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
        for i, seg in enumerate(lengths):
            if seg.sum() != self.seq_len or (seg <= 0).any():
                raise ValueError(
                    f"{shard} row group {rg} row {i}: doc_lengths {seg.tolist()[:8]}... must be positive and sum to "
                    f"seq_len {self.seq_len}"
                )
        self._cache[group] = (ids, lengths)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return ids, lengths

    def rows(self, indices: Sequence[int]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Token ids [B, T] (int64) and the segment lengths of rows ``indices`` (global row numbers)."""
        ids = np.empty((len(indices), self.seq_len), dtype=np.int64)
        lengths: list[np.ndarray] = []
        for b, index in enumerate(indices):
            if not 0 <= index < self.num_rows:
                raise IndexError(f"row {index} out of range for {self.num_rows} rows")
            group = bisect.bisect_right(self._starts, index) - 1
            group_ids, group_lengths = self._row_group(group)
            local = int(index - self._starts[group])
            ids[b] = group_ids[local]
            lengths.append(group_lengths[local])
        return ids, lengths

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Model inputs for rows ``indices``: input_ids, position_ids and labels, each a LongTensor [B, T]."""
        ids, lengths = self.rows(indices)
        input_ids = torch.from_numpy(ids)
        position_ids, labels = positions_and_labels(input_ids, lengths)
        return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}

    def order(self, seed: int, epoch: int) -> np.ndarray:
        """This corpus's row order for ``epoch`` (row-group-local windows, see ``epoch_order``); cached."""
        key = (seed, epoch)
        if key not in self._orders:
            self._orders[key] = epoch_order(self.num_rows, seed, epoch, self.row_group_sizes, window=self._cache_size)
            if len(self._orders) > 2:
                self._orders.popitem(last=False)
        return self._orders[key]

    def indices_at(self, position: int, count: int, seed: int) -> list[int]:
        """Rows of the ``count`` samples starting at global sample counter ``position`` (wrapping into new epochs)."""
        out = []
        for p in range(position, position + count):
            epoch, offset = divmod(p, self.num_rows)
            out.append(int(self.order(seed, epoch)[offset]))
        return out
