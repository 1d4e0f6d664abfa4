"""Rank 0's outputs while training (``RunLog``): metrics.jsonl (cut back to the resumed step), TensorBoard, progress
lines to stdout or Dagster Pipes; and the last logged loss of a run (``last_logged_loss``)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from pipelines.progress import ProgressTicker


class RunLog:
    """Rank 0's outputs while training: metrics.jsonl, TensorBoard, progress lines (stdout or Dagster Pipes)."""

    def __init__(
        self,
        output_dir: Path,
        resumed_step: int,
        stack: ExitStack,
        progress: Callable[[dict], None] | None,
    ):
        from torch.utils.tensorboard import SummaryWriter

        self.metrics_path = output_dir / "metrics.jsonl"
        self._drop_lines_after(resumed_step)
        self.metrics = stack.enter_context(open(self.metrics_path, "a"))
        # purge_step hides events a killed run wrote after its last checkpoint.
        self.tb = SummaryWriter(str(output_dir / "tensorboard"), purge_step=resumed_step + 1)
        stack.callback(self.tb.close)
        self.progress = progress
        self.ticker = ProgressTicker()  # a progress line at least every 30 s, whatever log_every says
        self.pipes = None
        try:
            from dagster_pipes import PipesContext, PipesEnvVarParamsLoader, open_dagster_pipes
        except ImportError:
            if "DAGSTER_PIPES_CONTEXT" in os.environ:
                raise RuntimeError("launched through Dagster Pipes, but dagster-pipes is not installed") from None
            return
        if PipesContext.is_initialized() and not PipesContext.get().is_closed:
            self.pipes = PipesContext.get()  # the caller's open session: use it, leave closing it to the caller
        elif PipesEnvVarParamsLoader().is_dagster_pipes_process():
            if PipesContext.is_initialized():  # closed by an earlier run() in this process: open a fresh one
                PipesContext.set(None)  # type: ignore[arg-type]
            self.pipes = stack.enter_context(open_dagster_pipes())

    def _drop_lines_after(self, step: int) -> None:
        if not self.metrics_path.exists():
            return
        kept = [
            line
            for line in self.metrics_path.read_text().splitlines()
            if line.strip() and _complete_json(line) and json.loads(line)["step"] <= step
        ]
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.metrics_path)

    def record(self, record: dict) -> None:
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float):
                self.tb.add_scalar(("val/" if key.startswith("val_") else "train/") + key, value, record["step"])

    def line_due(self, scheduled: bool) -> bool:
        """Whether to write a progress line now: ``scheduled`` (every ``log_every`` steps, the last step) or 30 s
        since the last one; at most one line per 30 s besides the scheduled ones."""
        return self.ticker.ready(scheduled)

    def info(self, message: str, record: dict | None = None) -> None:
        if self.pipes is not None:
            self.pipes.log.info(message)
        else:
            print(message, flush=True)
        if self.progress is not None and record is not None:
            self.progress(record)

    def finish(self, summary: dict) -> None:
        if self.pipes is not None:
            self.pipes.report_custom_message(summary)


def _complete_json(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:  # the half-written last line of a killed run
        return False


def last_logged_loss(output_dir: Path) -> float | None:
    """The loss of the last step in ``output_dir/metrics.jsonl`` (None before any step)."""
    path = output_dir / "metrics.jsonl"
    losses = [r["loss"] for r in map(json.loads, path.read_text().splitlines()) if "loss" in r] if path.exists() else []
    return losses[-1] if losses else None
