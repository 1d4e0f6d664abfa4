"""Print what the curation stages did: documents per stage, drops by reason, languages, where outputs are.

python -m pipelines.report [--data-root data]
"""

from __future__ import annotations

import argparse
import os

from pipelines.shards import SUCCESS_FILE, join, read_json

STAGES = [("ingest", "ingested"), ("language ID", "langid"), ("quality filters", "quality"), ("dedup", "dedup")]


def _top(counts: dict, n: int = 12) -> str:
    items = sorted(counts.items(), key=lambda kv: -kv[1])
    shown = ", ".join(f"{k} {v:,}" for k, v in items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def report(data_root: str) -> str:
    lines = [f"Curation summary for {data_root}", ""]
    lines.append(f"{'stage':<16}{'in':>9}{'out':>9}{'kept':>8}{'quarantined':>13}{'seconds':>9}")
    summaries = []
    for label, folder in STAGES:
        summary = read_json(join(data_root, "curated", folder, SUCCESS_FILE))
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
        lines.append(f"[{label}] output: {summary['output']}")
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
