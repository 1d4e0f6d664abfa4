"""``training.evaluate``'s outputs: the table (JSON, Parquet, Markdown), the plot and the audit files.

The table has one row per metric and one column per model (the models side by side); ``evaluation.parquet`` holds
the same numbers long, one row per model x metric, with how many items each metric rests on.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

RATE_METRICS = (
    "winrate_vs_",
    "math_exact_match",
    "humaneval_pass@1",
    "ifeval_prompt_accuracy",
    "ifeval_instruction_accuracy",
    "im_end_share",
)


def metric_names(summary: dict) -> list[str]:
    """Every metric of any model, in a fixed order: rates, the reward, then perplexities (all last)."""
    names = {m for values in summary["metrics"].values() for m in values}

    def rank(name: str) -> tuple:
        for k, prefix in enumerate(RATE_METRICS):
            if name.startswith(prefix):
                return (0, k, name)
        if name == "reward_mean":
            return (1, 0, name)
        return (2, name == "perplexity_all", name)

    return sorted(names, key=rank)


def table_rows(summary: dict) -> list[dict]:
    """``{metric, items, <model>: value ...}`` per metric."""
    rows = []
    for metric in metric_names(summary):
        row = {"metric": metric, "items": summary["items_per_metric"].get(metric)}
        row.update({model: values.get(metric) for model, values in summary["metrics"].items()})
        rows.append(row)
    return rows


def long_rows(summary: dict) -> list[dict]:
    """One row per model x metric (Parquet)."""
    return [
        {"model": model, "metric": metric, "value": value, "items": summary["items_per_metric"].get(metric)}
        for model, values in summary["metrics"].items()
        for metric, value in values.items()
    ]


def _cell(value) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:,.1f}"


def markdown_table(summary: dict) -> str:
    models = list(summary["metrics"])
    lines = ["| metric | items | " + " | ".join(models) + " |", "|---|---:|" + "---:|" * len(models)]
    for row in table_rows(summary):
        cells = [_cell(row[m]) for m in models]
        lines.append(
            f"| {row['metric']} | {row['items'] if row['items'] is not None else ''} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def plot_png(summary: dict) -> bytes | None:
    """Grouped bars: the rates (0 to 1) on the left, perplexity per language (log scale) on the right; None when
    matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(summary["metrics"])
    names = metric_names(summary)
    rates = [m for m in names if m.startswith(RATE_METRICS)]
    ppl = [m for m in names if m.startswith("perplexity_")]
    panels = [(rates, "share (higher is better)", False), (ppl, "perplexity (lower is better)", True)]
    panels = [p for p in panels if p[0]]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.0), dpi=100, squeeze=False)
    width = 0.8 / max(len(models), 1)
    for ax, (metrics, ylabel, log) in zip(axes[0], panels):
        for k, model in enumerate(models):
            values = [summary["metrics"][model].get(m) for m in metrics]
            xs = [i + (k - (len(models) - 1) / 2) * width for i in range(len(metrics))]
            ax.bar(xs, [v if v is not None else 0 for v in values], width, label=model)
        ax.set_xticks(range(len(metrics)))
        ax.set_xticklabels([m.replace("perplexity_", "") for m in metrics], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        else:
            ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Post-training evaluation")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _parquet(path: Path, rows: list[dict], columns: list[tuple[str, str]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"string": pa.string(), "float": pa.float64(), "int": pa.int64(), "bool": pa.bool_()}
    schema = pa.schema([(name, types[kind]) for name, kind in columns])
    table = pa.Table.from_pylist([{name: r.get(name) for name, _ in columns} for r in rows], schema=schema)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


AUDIT_COLUMNS = [
    ("model", "string"),
    ("task", "string"),
    ("item_id", "string"),
    ("prompt", "string"),
    ("answer", "string"),
    ("finish_reason", "string"),
    ("completion_tokens", "int"),
    ("ended_with_im_end", "bool"),
    ("score", "float"),
    ("detail", "string"),
]


def write_outputs(out: Path, summary: dict, audit: list[dict], decontam: dict) -> None:
    """evaluation.json/.parquet/.md/.png, answers.parquet, decontamination.json (each written atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    png = plot_png(summary)
    summary["files"] = {
        "table": str(out / "evaluation.parquet"),
        "markdown": str(out / "evaluation.md"),
        "plot": str(out / "evaluation.png") if png else None,
        "answers": str(out / "answers.parquet"),
        "decontamination": str(out / "decontamination.json"),
    }
    if png:
        _atomic_bytes(out / "evaluation.png", png)
    _parquet(
        out / "evaluation.parquet",
        long_rows(summary),
        [("model", "string"), ("metric", "string"), ("value", "float"), ("items", "int")],
    )
    _parquet(out / "answers.parquet", audit, AUDIT_COLUMNS)
    _atomic_bytes(out / "decontamination.json", json.dumps(decontam, indent=1, ensure_ascii=False).encode())
    _atomic_bytes(out / "evaluation.md", (markdown_table(summary) + "\n").encode())
    _atomic_bytes(out / "evaluation.json", json.dumps(summary, indent=1, ensure_ascii=False).encode())
