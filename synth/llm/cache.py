"""``CachedGenerator``: answers requests from a content-addressed cache and asks the wrapped backend only for the rest.

Each request is keyed by content (model id, messages, sampling parameters with seed and n, template versions) and its
result appended to JSONL shards, flushed and fsynced after every chunk, so a killed run resumes without asking the
model again for what it already answered.

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
        self.cache_dir = Path(cache_dir)
        self.chunk_size = chunk_size
        self.hits = 0
        self.misses = 0
        self._entries = dict(self._load())
        self._shard: Path | None = None

    def _load(self) -> Iterator[tuple[str, dict]]:
        if not self.cache_dir.is_dir():
            return
        for shard in sorted(self.cache_dir.glob("*.jsonl")):
            with open(shard, encoding="utf-8") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                        yield record["key"], record["result"]
                    except (ValueError, KeyError, TypeError):
                        continue  # a line torn by a kill

    def __len__(self) -> int:
        return len(self._entries)

    def _append(self, records: list[tuple[str, GenerationResult]]) -> None:
        if self._shard is None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            self._shard = self.cache_dir / f"results-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.jsonl"
        lines = "".join(
            json.dumps({"key": key, "result": result.to_json()}, ensure_ascii=False) + "\n" for key, result in records
        )
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
