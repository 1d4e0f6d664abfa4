"""How a training run stops: SIGINT/SIGTERM between two steps (``StopOnSignal``, ``TrainingInterrupted``), and the
test hook that SIGKILLs a run after a given step like a machine failure (``KILL_AFTER_STEP_ENV``). Shared by the
pretraining, SFT and preference loops."""

from __future__ import annotations

import signal
import threading
from typing import Any

# Test hook: SIGKILL this process right after the given step (and its checkpoint), like a machine failure.
KILL_AFTER_STEP_ENV = "PRETRAIN_SIGKILL_AFTER_STEP"


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run between two steps; the last checkpoint is intact."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class StopOnSignal:
    """Turns the first SIGINT/SIGTERM into a flag the loop checks at every step; a second one interrupts at once."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # signal handlers only exist there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:
            raise TrainingInterrupted(signum)
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
