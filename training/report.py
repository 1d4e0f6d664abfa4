"""Print what the pretraining assets did: the mixture search, the realised mixes, packed tokens, both models.

python -m training.report [--data-root data]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from pipelines.shards import SUCCESS_FILE, join, read_json


def _mix_lines(label: str, summary: dict | None) -> list[str]:
    if summary is None:
        return [f"[{label}] not run yet"]
    check = summary["mix_check"]
    lines = [
        f"[{label}] {summary['plan']['mixture']['name']}: {check['realised_tokens']:,} tokens "
        f"(target {check['target_tokens']:,}), mix check {'passed' if check['passed'] else 'FAILED'}",
        f"  {'bucket':<14}{'target':>10}{'realised':>10}{'epochs':>8}",
    ]
    for b in sorted(check["buckets"], key=lambda b: -b["realised_tokens"])[:12]:
        lines.append(f"  {b['bucket']:<14}{b['target_tokens']:>10,}{b['realised_tokens']:>10,}{b['epochs']:>8.2f}")
    return lines


def report(data_root: str) -> str:
    mix, models = join(data_root, "mix"), join(data_root, "models")
    lines = [f"Pretraining summary for {data_root}", ""]
    search = read_json(join(mix, "search", "search.json"))
    if search:
        lines.append("[mixture search on proxy models]")
        for row in search["candidates"]:
            mark = "  <- winner" if row["name"] == search["winner"] else ""
            lines.append(f"  {row['name']:<14} validation loss {row['val_loss']:.4f}{mark}")
        lines.append("")
    lines += _mix_lines("stage-1 mix", read_json(join(mix, "stage1", SUCCESS_FILE)))
    lines.append("")
    lines += _mix_lines("stage-2 long-document mix", read_json(join(mix, "long", SUCCESS_FILE)))
    lines.append("")
    for label, folder in (("stage-1 shards", "stage1_tokens"), ("stage-2 shards", "long_tokens")):
        packed = read_json(join(mix, folder, SUCCESS_FILE))
        if packed:
            lines.append(
                f"[{label}] {packed.get('sequences', 0):,} sequences x {packed.get('seq_len')} tokens "
                f"= {packed.get('tokens', 0):,} tokens in {packed.get('shards', 0)} shards"
            )
    for label, folder in (("base model (stage 1)", "base"), ("long-context model (stage 2)", "long_context")):
        path = Path(models) / folder / "summary.json"
        if not path.exists():
            lines.append(f"[{label}] not trained yet")
            continue
        s = json.loads(path.read_text())
        val = s.get("val_loss")
        lines.append(
            f"[{label}] {s.get('steps')} steps, {s.get('tokens_seen', 0):,} tokens, context {s.get('seq_len')}, "
            f"RoPE base {s.get('rope_theta'):,.0f}, loss {s.get('final_loss'):.3f}"
            + (f", validation {val:.3f}" if val is not None else "")
            + f", {s.get('tokens_per_s', 0):,.0f} tokens/s -> {Path(models) / folder / 'final'}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("QWEN2_DATA_ROOT", "data"))
    print(report(parser.parse_args(argv).data_root))


if __name__ == "__main__":
    main()
