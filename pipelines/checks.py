"""Checks over a committed stage folder, shared by the Dagster asset checks and the tests."""

from __future__ import annotations

import pyarrow.parquet as pq
import xxhash

from pipelines.schema import DOCUMENT_SCHEMA, PACKED_SCHEMA
from pipelines.shards import filesystem, list_shards


def schema_problems(stage_dir: str, schema=DOCUMENT_SCHEMA) -> list[str]:
    """Shards of ``data/`` whose Parquet schema is not ``schema`` (reads footers only)."""
    problems = []
    expected = {f.name: f.type for f in schema}
    for uri in list_shards(stage_dir):
        fs, path = filesystem(uri)
        with fs.open(path, "rb") as f:
            schema = pq.read_schema(f)
        found = {f.name: f.type for f in schema}
        if found != expected:
            missing = sorted(set(expected) - set(found))
            extra = sorted(set(found) - set(expected))
            wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
            problems.append(f"{uri}: missing={missing} extra={extra} wrong_type={wrong}")
    return problems


def remaining_duplicate_rate(stage_dir: str) -> tuple[float, int]:
    """Share of kept documents whose normalized text equals an earlier kept document's, and the count.

    Streams the text column shard by shard and keeps only 8-byte hashes.
    """
    from pipelines.dedup import normalize

    seen: set[int] = set()
    docs = duplicates = 0
    for uri in list_shards(stage_dir):
        fs, path = filesystem(uri)
        with fs.open(path, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(columns=["text"], batch_size=2000):
                for text in batch.column(0).to_pylist():
                    h = xxhash.xxh64_intdigest(normalize(text).encode())
                    docs += 1
                    if h in seen:
                        duplicates += 1
                    seen.add(h)
    return (duplicates / docs if docs else 0.0), duplicates


def packed_problems(stage_dir: str, seq_len: int) -> list[str]:
    """Packed shards with the wrong schema, a row that is not ``seq_len`` tokens long, or document segments
    that do not add up to the row (streams one row group at a time)."""
    import numpy as np
    import pyarrow.compute as pc

    problems = schema_problems(stage_dir, PACKED_SCHEMA)
    if problems:
        return problems
    for uri in list_shards(stage_dir):
        fs, path = filesystem(uri)
        with fs.open(path, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(columns=["input_ids", "doc_lengths"], batch_size=1024):
                ids, segments = batch.column(0), batch.column(1)
                lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False)
                if (lengths != seq_len).any():
                    problems.append(f"{uri}: {int((lengths != seq_len).sum())} rows are not {seq_len} tokens")
                parents = pc.list_parent_indices(segments).to_numpy()
                flat = pc.list_flatten(segments).to_numpy(zero_copy_only=False)
                sums = np.bincount(parents, weights=flat, minlength=len(batch))
                if (flat <= 0).any() or (sums != lengths).any():
                    problems.append(f"{uri}: doc_lengths do not split {int((sums != lengths).sum())} rows exactly")
    return problems
