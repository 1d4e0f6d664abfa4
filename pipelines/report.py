"""Print what the curation stages did: documents per stage, drops by reason, languages, where outputs are.

python -m pipelines.report [--data-root data]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Mapping

from pipelines.shards import SUCCESS_FILE, filesystem, join, read_json

STAGES = [("ingest", "ingested"), ("language ID", "langid"), ("quality filters", "quality"), ("dedup", "dedup")]
# Summary fields that describe the whole Beam job (the same in every dump's summary of one run), not one folder.
JOB_WIDE = ("beam_counters", "seconds")


def combine_summaries(summaries: Mapping[str, dict]) -> dict:
    """One summary for a stage run per crawl dump (``dump -> _SUCCESS.json``): counts add up (nested tables key by
    key), lists are joined, ``resumed`` holds when every dump resumed, job-wide fields come from one dump; texts
    (each dump's output folder) are listed under ``outputs``, and ``dumps`` names the dumps."""
    total: dict = {"dumps": sorted(summaries), "outputs": []}
    for dump in sorted(summaries):
        summary = summaries[dump]
        total["outputs"].append(summary.get("output", ""))
        for key, value in summary.items():
            if key in JOB_WIDE:
                total.setdefault(key, value)
            elif isinstance(value, bool):
                total[key] = total.get(key, True) and value
            elif isinstance(value, (int, float)):
                total[key] = total.get(key, 0) + value
            elif isinstance(value, dict):
                total[key] = _add_tables(total.get(key, {}), value)
            elif isinstance(value, list):
                total[key] = total.get(key, []) + value
    return total


def _add_tables(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, dict):
            out[key] = _add_tables(out.get(key, {}), value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = out.get(key, 0) + value
    return out


def dump_folders(stage_dir: str) -> list[str]:
    """The crawl dumps a per-dump stage folder holds a finished run of (sub-folders with ``_SUCCESS.json``)."""
    fs, path = filesystem(stage_dir)
    if not fs.isdir(path):
        return []
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False) if fs.isdir(p)]
    return sorted(n for n in names if fs.exists(f"{path.rstrip('/')}/{n}/{SUCCESS_FILE}"))


def stage_summary(stage_dir: str, dumps: Iterable[str] | None = None) -> dict | None:
    """A curation stage's summary: its ``_SUCCESS.json``, or for a stage run per crawl dump the summaries of
    ``dumps`` (default: every finished dump folder) combined; None when none has finished."""
    whole = read_json(join(stage_dir, SUCCESS_FILE))
    if whole is not None:
        return whole
    names = dump_folders(stage_dir) if dumps is None else list(dumps)
    found = {dump: read_json(join(stage_dir, dump, SUCCESS_FILE)) for dump in names}
    found = {dump: summary for dump, summary in found.items() if summary is not None}
    return combine_summaries(found) if found else None


def _top(counts: dict, n: int = 12) -> str:
    items = sorted(counts.items(), key=lambda kv: -kv[1])
    shown = ", ".join(f"{k} {v:,}" for k, v in items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def report(data_root: str) -> str:
    lines = [f"Curation summary for {data_root}", ""]
    lines.append(f"{'stage':<16}{'in':>9}{'out':>9}{'kept':>8}{'quarantined':>13}{'seconds':>9}")
    summaries = []
    for label, folder in STAGES:
        summary = stage_summary(join(data_root, "curated", folder))
        if summary is None:
            lines.append(f"{label:<16}{'not run yet':>9}")
            continue
        summaries.append((label, summary))
        kept = summary["docs_out"] / summary["docs_in"] if summary["docs_in"] else 0
        lines.append(
            f"{label:<16}{summary['docs_in']:>9,}{summary['docs_out']:>9,}{kept:>8.1%}"
            f"{summary.get('errors', 0):>13,}{summary.get('seconds', 0):>9.1f}"
        )
    for label, summary in summaries:
        lines.append("")
        outputs = summary["outputs"] if "outputs" in summary else [summary["output"]]
        lines.append(f"[{label}] output: {', '.join(outputs)}")
        if summary.get("errors_by_reason"):
            lines.append(f"  quarantined: {_top(summary['errors_by_reason'])}")
        if summary.get("dropped"):
            lines.append(f"  dropped:     {_top(summary['dropped'])}")
        if summary.get("clusters"):
            c = summary["clusters"]
            lines.append(
                f"  clusters:    {c['clusters']:,} duplicate clusters, {c['documents_in_clusters']:,} documents"
                f" in them, largest {c['largest_cluster']}"
            )
    if summaries:
        lines += ["", f"languages kept: {_top(summaries[-1][1].get('languages', {}), 40)}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("QWEN2_DATA_ROOT", "data"))
    print(report(parser.parse_args().data_root))


if __name__ == "__main__":
    main()
