"""``CachedGenerator``: answers requests from a content-addressed cache and asks the wrapped backend only for the rest.

Each request is keyed by content (model id, messages, sampling parameters with seed and n, template versions) and its
result appended to JSONL shards, flushed and fsynced after every chunk, so a killed run resumes without asking the
model again for what it already answered. On an object store (``cache_dir`` an fsspec URI such as ``s3://bucket/...``)
nothing can be appended to: every chunk is its own object, written whole, which loses at most the chunk in flight too.

Own code, not a caching library: the key must not depend on the backend serving the model, and a run killed
mid-write must lose at most one chunk (append-only JSONL, fsynced, torn lines skipped).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import fsspec

from synth.llm.base import GenerationRequest, GenerationResult, Generator

# ---------------------------------------------------------------------------------------------------------- cache


class CachedGenerator(Generator):
    """Answers requests from a content-addressed cache under ``cache_dir``; asks ``inner`` only for the rest.

    Results are appended to a new JSONL shard per run, ``chunk_size`` requests at a time, each chunk flushed and
    fsynced before the next is asked: a run killed at any point loses at most the chunk in flight, and a torn last
    line (killed mid-write) is skipped on load. One process at a time per cache folder.
    """

    def __init__(self, inner: Generator, cache_dir: str | os.PathLike, chunk_size: int = 32) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.inner = inner
        self.backend = inner.backend
        self.model_id = inner.model_id
        remote = "://" in str(cache_dir) and not str(cache_dir).startswith("file://")
        self.cache_dir: Path | str = str(cache_dir).rstrip("/") if remote else Path(cache_dir)
        self._fs = fsspec.core.url_to_fs(self.cache_dir, use_listings_cache=False)[0] if remote else None
        self.chunk_size = chunk_size
        self.hits = 0
        self.misses = 0
        self._entries = dict(self._load())
        self._shard: Path | str | None = None
        self._chunks = 0

    def _shards(self) -> list[str | Path]:
        if self._fs is None:
            return sorted(self.cache_dir.glob("*.jsonl")) if self.cache_dir.is_dir() else []
        return sorted(self._fs.unstrip_protocol(p) for p in self._fs.glob(f"{self.cache_dir}/*.jsonl"))

    def _load(self) -> Iterator[tuple[str, dict]]:
        for shard in self._shards():
            with fsspec.open(shard, "r", encoding="utf-8") if self._fs else open(shard, encoding="utf-8") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                        yield record["key"], record["result"]
                    except (ValueError, KeyError, TypeError):
                        continue  # a line torn by a kill

    def __len__(self) -> int:
        return len(self._entries)

    def _append(self, records: list[tuple[str, GenerationResult]]) -> None:
        run = f"results-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        lines = "".join(
            json.dumps({"key": key, "result": result.to_json()}, ensure_ascii=False) + "\n" for key, result in records
        )
        if self._fs is not None:  # an object store: one object per chunk (objects are written whole, never appended)
            self._shard = self._shard or f"{self.cache_dir}/{run}"
            self._chunks += 1
            with self._fs.open(f"{self._shard}-{self._chunks:06d}.jsonl", "w", encoding="utf-8") as f:
                f.write(lines)
            return
        if self._shard is None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            self._shard = self.cache_dir / f"{run}.jsonl"
        with open(self._shard, "a", encoding="utf-8") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        keys = [r.cache_key(self.model_id) for r in requests]
        todo: dict[str, GenerationRequest] = {}
        for key, request in zip(keys, requests):
            if key not in self._entries and key not in todo:
                todo[key] = request
        self.hits += sum(1 for key in keys if key in self._entries)
        self.misses += len(todo)
        pending = list(todo.items())
        for start in range(0, len(pending), self.chunk_size):
            chunk = pending[start : start + self.chunk_size]
            results = self.inner.generate([request for _, request in chunk])
            self._append(list(zip([key for key, _ in chunk], results)))
            for (key, _), result in zip(chunk, results):
                self._entries[key] = result.to_json()
        out = []
        for key in keys:
            result = GenerationResult.from_json(self._entries[key])
            result.cached = key not in todo
            out.append(result)
        return out

    def close(self) -> None:
        self.inner.close()
