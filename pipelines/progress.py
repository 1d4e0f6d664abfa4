"""Progress lines for long steps, at least every ``interval_s`` (30 s) in the run log.

``ProgressTicker`` says when a line is due: a loop that already logs every N steps asks ``ready(force)`` instead, so
it also logs when ``interval_s`` passed since its last line, and never more than once per interval otherwise.
``Heartbeat`` is a background thread that logs ``describe()`` every ``interval_s`` while a long call that reports
nothing itself runs (a Beam pipeline, a batch of teacher requests); ``stage_progress`` describes a shard stage from
the shards it has committed so far (``<stage>/_done/*.json``). The clock is injected, so tests need no sleeping.
Light: stdlib only (``pipelines.shards`` is imported when a stage folder is read).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

INTERVAL_S = 30.0


class ProgressTicker:
    """At most one progress line per ``interval_s`` unless forced; ``log`` (optional) gets each line from ``tick``."""

    def __init__(
        self,
        log: Callable[[str], None] | None = None,
        interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.log, self.interval_s, self.clock = log, interval_s, clock
        self.last = clock()

    def due(self) -> bool:
        return self.clock() - self.last >= self.interval_s

    def ready(self, force: bool = False) -> bool:
        """True (and the interval starts again) when forced or due: the caller writes its line."""
        if not (force or self.due()):
            return False
        self.last = self.clock()
        return True

    def tick(self, message: str | Callable[[], str | None], force: bool = False) -> bool:
        """Log ``message`` (or what the callable returns; None: nothing) when ``ready(force)``; True if logged."""
        if not self.ready(force):
            return False
        text = message() if callable(message) else message
        if text is None or self.log is None:
            return False
        self.log(text)
        return True


class Heartbeat:
    """``with Heartbeat(log, describe):`` logs ``describe()`` every ``interval_s`` until the block ends.

    The thread wakes every ``poll_s`` and asks the ticker; ``beat()`` is one such wake-up (tests call it with a fake
    clock). An error in ``describe`` is logged once as a line and the heartbeat goes on."""

    def __init__(
        self,
        log: Callable[[str], None],
        describe: Callable[[], str | None],
        interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        poll_s: float = 1.0,
    ):
        self.ticker = ProgressTicker(log, interval_s, clock)
        self.describe, self.poll_s = describe, min(poll_s, interval_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lines = 0

    def _describe(self) -> str | None:
        try:
            return self.describe()
        except Exception as e:  # progress must never fail the step
            return f"progress unavailable: {type(e).__name__}: {e}"

    def beat(self) -> bool:
        logged = self.ticker.tick(self._describe)
        self.lines += logged
        return logged

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.beat()

    def __enter__(self) -> Heartbeat:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="progress-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def _rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


class StageProgress:
    """Describes a shard stage from its committed shard markers: shards done, documents processed and kept, rate.

    ``stage_dirs``: the stage's folder, or several (one per crawl dump when a run covers several). Markers never
    change once written, so each is read once; the rate counts only documents committed since the first look
    (shards resumed from an earlier run do not inflate it)."""

    def __init__(self, stage_dirs: str | Sequence[str], label: str, clock: Callable[[], float] = time.monotonic):
        folders = [stage_dirs] if isinstance(stage_dirs, str) else stage_dirs
        self.stage_dirs, self.label, self.clock = [d.rstrip("/") for d in folders], label, clock
        self.started = clock()
        self._stats: dict[tuple[str, str], dict] = {}
        self._before = self._committed()  # shards an earlier run left: not counted in the rate

    def _committed(self) -> set[tuple[str, str]]:
        from pipelines.shards import committed_keys

        return {(folder, key) for folder in self.stage_dirs for key in committed_keys(folder)}

    def read(self) -> dict[tuple[str, str], dict]:
        from pipelines.shards import done_marker, read_json

        for folder, key in self._committed():
            if (folder, key) not in self._stats:
                marker = read_json(done_marker(folder, key)) or {}
                self._stats[folder, key] = marker.get("stats") or {}
        return self._stats

    def __call__(self) -> str:
        by_key = self.read()
        stats = list(by_key.values())
        docs_in = sum(int(s.get("docs_in", 0) or 0) for s in stats)
        docs_out = sum(int(s.get("docs_out", 0) or 0) for s in stats)
        new = sum(int(s.get("docs_in", 0) or 0) for k, s in by_key.items() if k not in self._before)
        elapsed = self.clock() - self.started
        return (
            f"{self.label}: {len(stats)} shards committed, {docs_in:,} documents processed, {docs_out:,} kept "
            f"({_rate(new, elapsed):,.1f} documents/s), {elapsed:,.0f} s"
        )


def stage_heartbeat(
    log: Callable[[str], None], stage_dirs: str | Sequence[str], label: str, interval_s: float | None = None
):
    """A ``Heartbeat`` reporting a shard stage's committed shards (in one folder or several) while its pipeline
    runs (every ``INTERVAL_S``)."""
    return Heartbeat(log, StageProgress(stage_dirs, label), INTERVAL_S if interval_s is None else interval_s)
