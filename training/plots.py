"""Loss curves from a run's ``metrics.jsonl``, as a PNG for the Dagster UI (Markdown with a data URI)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path


def read_metrics(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(training lines, evaluation lines) of a metrics.jsonl written by ``training.pretrain``."""
    train, evals = [], []
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        if row.get("val_loss") is not None:
            evals.append(row)
        if row.get("loss") is not None:
            train.append(row)
    return train, evals


def loss_curve_png(metrics_path: str | Path, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = read_metrics(metrics_path)
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", linewidth=1.2)
    if evals:
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return figure_png(fig)


def png_markdown(png: bytes, title: str) -> str:
    """A PNG as a Markdown image with a data URI: how the Dagster UI shows a chart in an asset's metadata."""
    return f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})"


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def loss_curve_markdown(metrics_path: str | Path, title: str) -> str:
    return png_markdown(loss_curve_png(metrics_path, title), title)
