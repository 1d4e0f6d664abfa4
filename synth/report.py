"""Print what the synthesis assets did: quality labels, classifier agreement, tiers, and the synthetic data.

python -m synth.report [--data-root data]
"""

from __future__ import annotations

import argparse
import os

from pipelines.shards import SUCCESS_FILE, join, read_json
from synth import SFT_METHODS
from synth.records import acceptance_rate


def _reasons(summary: dict) -> str:
    rejected = summary.get("rejected", {})
    return ", ".join(f"{k} {v}" for k, v in sorted(rejected.items(), key=lambda kv: -kv[1])) or "-"


def _method_line(name: str, summary: dict | None) -> str:
    if summary is None:
        return f"  {name:<16} not run"
    return (
        f"  {name:<16} {summary.get('items', 0):>4} items {summary.get('samples', 0):>4} samples "
        f"{summary.get('accepted', 0):>4} kept ({acceptance_rate(summary):.0%})  rejected: {_reasons(summary)}"
    )


def _clean_line(label: str, summary: dict | None) -> str:
    if summary is None:
        return f"[{label}] not run yet"
    contaminated = sum(summary.get("contaminated", {}).values())
    return (
        f"[{label}] {summary.get('output', 0)} kept of {summary.get('input', 0)}: "
        f"{summary.get('exact_duplicate', 0)} exact and {summary.get('near_duplicate', 0)} near duplicates, "
        f"{contaminated} contaminated ({summary.get('ngram')}-gram overlap with "
        f"{', '.join(e['name'] for e in summary.get('eval_sets', [])) or 'no eval set'})"
    )


def report(data_root: str) -> str:
    quality, synthetic = join(data_root, "quality"), join(data_root, "synthetic")
    lines = [f"Synthesis summary for {data_root}", ""]
    labels = read_json(join(quality, "labels", SUCCESS_FILE))
    if labels:
        hist = ", ".join(f"{k}: {v}" for k, v in sorted(labels.get("labels", {}).items()))
        lines.append(
            f"[quality labels] {labels.get('accepted', 0)} documents rated by {labels.get('model')} "
            f"({labels.get('rejected', {}).get('off_format', 0)} off format); labels {hist}"
        )
    metrics = read_json(join(quality, "classifier", "metrics.json"))
    if metrics and metrics.get("heldout"):
        h = metrics["heldout"]

        def fmt(v):
            return "-" if v is None else f"{v:.2f}"

        lines.append(
            f"[quality classifier] fastText vs teacher on {h['n']} held-out labels: exact {fmt(h['exact_accuracy'])}, "
            f"within 1 {fmt(h['within1_accuracy'])}, Spearman {fmt(h['spearman'])}, "
            f"strict keep/drop agreement {fmt(h['binary']['strict']['accuracy'])}"
        )
    for tier in ("strict", "relaxed"):
        s = read_json(join(data_root, "curated", "tiers", tier, SUCCESS_FILE))
        if s:
            lines.append(
                f"[{tier} tier] score >= {s['threshold']}: {s.get('docs_out', 0):,} documents "
                f"({s['share_docs']:.0%}), {s.get('bytes_out', 0):,} bytes ({s['share_bytes']:.0%})"
            )
    lines += ["", "[SFT methods]"]
    lines += [_method_line(m, read_json(join(synthetic, "sft", m, SUCCESS_FILE))) for m in SFT_METHODS]
    lines.append(_clean_line("SFT data", read_json(join(synthetic, "sft", "final", SUCCESS_FILE))))
    lines.append("")
    lines.append(_method_line("rephrase", read_json(join(synthetic, "rephrased", SUCCESS_FILE))).strip())
    lines.append(_clean_line("synthetic pretraining", read_json(join(synthetic, "pretraining", SUCCESS_FILE))))
    lines.append("")
    lines.append(_method_line("preference", read_json(join(synthetic, "preference", "raw", SUCCESS_FILE))).strip())
    lines.append(_clean_line("preference pairs", read_json(join(synthetic, "preference", "final", SUCCESS_FILE))))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.environ.get("QWEN2_DATA_ROOT", "data"))
    args = parser.parse_args(argv)
    print(report(args.data_root))


if __name__ == "__main__":
    main()
