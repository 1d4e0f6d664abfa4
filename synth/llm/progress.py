"""Teacher progress in the run log: ``with_progress(generator, log)`` counts the requests the model answers and the
tokens it generates, and logs them with the rate at least every 30 s while generation runs (a ``Heartbeat`` thread,
so a long batch still reports). Behind a request cache only what the model itself answers is counted."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from pipelines.progress import INTERVAL_S, Heartbeat
from synth.llm.base import GenerationRequest, GenerationResult, Generator
from synth.llm.cache import CachedGenerator


class GenerationProgress:
    """Requests answered and tokens generated so far (``add``), described with the rate since the first request."""

    def __init__(self, label: str = "teacher", clock: Callable[[], float] = time.monotonic):
        self.label, self.clock = label, clock
        self.started: float | None = None
        self.requests = self.tokens = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        if self.started is None:
            self.started = self.clock()

    def add(self, results: Sequence[GenerationResult]) -> None:
        tokens = sum(sum(r.completion_tokens or []) for r in results)
        with self._lock:
            self.requests += len(results)
            self.tokens += tokens

    def __call__(self) -> str:
        elapsed = self.clock() - (self.started if self.started is not None else self.clock())
        rate = f"{self.tokens / elapsed:,.1f}" if elapsed > 0 else "0.0"
        return (
            f"{self.label}: {self.requests:,} requests answered, {self.tokens:,} tokens generated "
            f"({rate} tokens/s), {elapsed:,.0f} s"
        )


class ProgressGenerator(Generator):
    """``inner`` with its answers counted; the heartbeat runs from the first ``generate`` until ``close``."""

    def __init__(self, inner: Generator, log: Callable[[str], None], interval_s: float = INTERVAL_S):
        self.inner, self.backend, self.model_id = inner, inner.backend, inner.model_id
        self.progress = GenerationProgress(f"teacher {inner.model_id}")
        self.heartbeat = Heartbeat(log, self.progress, interval_s)
        self._started = False

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        if not self._started:
            self._started = True
            self.progress.start()
            self.heartbeat.__enter__()
        results = self.inner.generate(requests)
        self.progress.add(results)
        return results

    def close(self) -> None:
        if self._started:
            self.heartbeat.__exit__(None, None, None)
            self._started = False
        self.inner.close()

    def __getattr__(self, name: str):  # backend-specific attributes (tokenizer, servers, ...) stay reachable
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def with_progress(generator: Generator, log: Callable[[str], None], interval_s: float = INTERVAL_S) -> Generator:
    """``generator`` reporting its progress to ``log``; behind a ``CachedGenerator`` the model itself is wrapped."""
    if isinstance(generator, CachedGenerator):
        generator.inner = ProgressGenerator(generator.inner, log, interval_s)
        return generator
    return ProgressGenerator(generator, log, interval_s)
