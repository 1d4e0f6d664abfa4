"""Charts for the asset pages: the curation funnel, the language distribution and the realised-versus-target mix.

Each chart is a PNG embedded in Markdown (``data:image/png;base64``), the way ``training.plots`` shows loss curves, so
the Dagster UI draws it on the materialization. The data each chart draws is built by a plain function
(``funnel_data``, ``top_counts``, ``mix_rows``) that tests read directly. Light on purpose: matplotlib (Agg backend)
is imported inside the drawing functions, never when the code location loads.

Numeric metadata next to a chart (``funnel_metadata``) always has the same keys, so the UI's plots of a key over
materializations work from run to run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import dagster as dg

# (stage folder, funnel label): what each curation stage keeps, in order.
FUNNEL_STAGES = (
    ("ingested", "ingested"),
    ("langid", "language kept"),
    ("quality", "quality kept"),
    ("dedup", "dedup kept"),
)
MAX_BARS = 20  # a chart with more bars shows the largest and one "other" bar


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _markdown(fig, title: str) -> str:
    from training.plots import figure_png, png_markdown

    fig.tight_layout()
    return png_markdown(figure_png(fig), title)


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def top_counts(counts: Mapping[str, float], limit: int = MAX_BARS) -> list[tuple[str, float]]:
    """``counts`` largest first (ties by name), the ones past ``limit - 1`` summed into one ``other`` entry."""
    ordered = sorted(((str(k), v) for k, v in counts.items() if v), key=lambda kv: (-kv[1], kv[0]))
    if len(ordered) <= limit:
        return ordered
    rest = sum(v for _, v in ordered[limit - 1 :])
    return ordered[: limit - 1] + [("other", rest)]


# ----------------------------------------------------------------------------------------------- curation funnel


def funnel_data(summaries: Mapping[str, dict | None]) -> dict:
    """The funnel from each stage's summary (``_SUCCESS.json``, keyed by stage folder; None: not there).

    ``stages``: (label, documents) for the documents read by ingest, then what each stage kept; ``drops``:
    ``"<stage>: <reason>"`` -> documents, over every stage, ingest's quarantined records included.
    """
    first = summaries.get(FUNNEL_STAGES[0][0]) or {}
    read = first.get("docs_in", 0) + first.get("errors", 0)
    stages = [("records read", read)]
    drops: dict[str, int] = {}
    for folder, label in FUNNEL_STAGES:
        summary = summaries.get(folder) or {}
        stages.append((label, int(summary.get("docs_out", 0))))
        for reason, n in (summary.get("errors_by_reason") or {}).items():
            drops[f"{folder}: quarantined {reason}"] = drops.get(f"{folder}: quarantined {reason}", 0) + int(n)
        for reason, n in (summary.get("dropped") or {}).items():
            drops[f"{folder}: {reason}"] = drops.get(f"{folder}: {reason}", 0) + int(n)
    return {"stages": stages, "drops": drops}


def read_funnel(stage_dir, dumps: Sequence[str] | None = None) -> dict:
    """``funnel_data`` of the curation stages under ``stage_dir(folder)``; the stages run per crawl dump count the
    ``dumps`` given (default: every finished one). A stage not run yet counts 0."""
    from pipelines.report import stage_summary

    return funnel_data({folder: stage_summary(stage_dir(folder), dumps) for folder, _ in FUNNEL_STAGES})


def funnel_metadata(funnel: dict) -> dict:
    """Numeric keys, the same every run: documents at each funnel step and the share of records read kept."""
    stages = dict(funnel["stages"])
    read, kept = stages["records read"], stages[FUNNEL_STAGES[-1][1]]
    out = {f"funnel_{label.replace(' ', '_')}": int(n) for label, n in funnel["stages"]}
    return out | {"funnel_kept_share_of_read": round(kept / read, 4) if read else 0.0}


def funnel_markdown(funnel: dict, title: str = "curation funnel") -> str:
    """Two panels: documents at each step of the funnel, and documents dropped per stage and reason."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    order = {folder: i for i, (folder, _) in enumerate(FUNNEL_STAGES)}
    # the largest drops, grouped by stage in funnel order ("other" last), largest first within a stage
    drops = sorted(top_counts(funnel["drops"]), key=lambda kv: (order.get(kv[0].split(":")[0], len(order)), -kv[1]))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, max(3.6, 0.28 * len(drops) + 1.2)), dpi=100)
    labels = [label for label, _ in funnel["stages"]]
    values = [n for _, n in funnel["stages"]]
    bars = left.bar(range(len(values)), values, color="#4c72b0")
    left.bar_label(bars, labels=[f"{n:,}" for n in values], fontsize=8)
    left.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    left.set_ylabel("documents")
    left.yaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_title(title)
    if drops:
        names = [name for name, _ in drops][::-1]
        counts = [n for _, n in drops][::-1]
        hbars = right.barh(names, counts, color="#dd8452")
        right.bar_label(hbars, labels=[f"{n:,}" for n in counts], fontsize=8)
        right.tick_params(axis="y", labelsize=8)
        right.set_xlabel("documents dropped")
        right.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        _empty(right, "nothing dropped")
    right.set_title("drops by stage and reason")
    return _markdown(fig, title)


# ----------------------------------------------------------------------------------------------------- languages


def language_markdown(languages: Mapping[str, int], title: str = "documents per language") -> str:
    """One bar per language (the largest ``MAX_BARS``), with its share of every document."""
    plt = _pyplot()
    rows = top_counts(languages)
    total = sum(languages.values())
    fig, ax = plt.subplots(figsize=(6.4, max(2.4, 0.3 * len(rows) + 1.0)), dpi=100)
    if rows:
        names = [name for name, _ in rows][::-1]
        counts = [n for _, n in rows][::-1]
        bars = ax.barh(names, counts, color="#55a868")
        ax.bar_label(bars, labels=[f"{n:,} ({n / total:.0%})" for n in counts], fontsize=8)
        ax.set_xlabel("documents")
    else:
        _empty(ax, "no documents")
    ax.set_title(title)
    return _markdown(fig, title)


# --------------------------------------------------------------------------------------------------------- mix


def mix_rows(buckets: Sequence[Mapping]) -> list[tuple[str, int, int]]:
    """(bucket, target tokens, realised tokens) of a summary's ``mix_check.buckets``, largest target first."""
    rows = [(str(b["bucket"]), int(b.get("target_tokens") or 0), int(b.get("realised_tokens") or 0)) for b in buckets]
    return sorted(rows, key=lambda r: (-r[1], -r[2], r[0]))


def mix_markdown(buckets: Sequence[Mapping], title: str = "realised vs target tokens") -> str:
    """Target and realised tokens side by side for each bucket (``<domain>/<language>``)."""
    plt = _pyplot()
    rows = mix_rows(buckets)[:MAX_BARS]
    fig, ax = plt.subplots(figsize=(7.2, max(2.4, 0.45 * len(rows) + 1.0)), dpi=100)
    if rows:
        y = list(range(len(rows)))[::-1]
        height = 0.4
        ax.barh([v + height / 2 for v in y], [r[1] for r in rows], height, label="target", color="#8c8c8c")
        ax.barh([v - height / 2 for v in y], [r[2] for r in rows], height, label="realised", color="#4c72b0")
        ax.set_yticks(y, [r[0] for r in rows], fontsize=8)
        ax.set_xlabel("tokens")
        ax.legend(loc="lower right")
    else:
        _empty(ax, "no buckets")
    ax.set_title(title)
    return _markdown(fig, title)


def md(markdown: str) -> dg.MarkdownMetadataValue:
    return dg.MetadataValue.md(markdown)
