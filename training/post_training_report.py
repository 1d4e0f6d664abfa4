"""Print what the post-training assets did: the SFT model and its held-out replies, the preference pairs by how they
were made, the reward model, offline and online DPO, and the evaluation table.

python -m training.post_training_report [--data-root data]

Reads only what the assets leave on disk (``summary.json`` of each run under ``<data_root>/models``, the SFT asset's
``generation_check.json``, the pair stages' ``_SUCCESS.json``, ``<data_root>/evaluation/evaluation.md``); a step not
run yet is said so. Light: no torch or pyarrow.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from pipelines.shards import SUCCESS_FILE, join, read_json
from training.chat_data import said_something

SHOWN_REPLIES = 8  # the generation check may read more


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _num(value, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def _counts(values: dict | None) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted((values or {}).items(), key=lambda kv: -kv[1])) or "none"


def sft_lines(models: Path) -> list[str]:
    s = _load(models / "sft" / "summary.json")
    if s is None:
        return ["[sft model] not trained yet"]
    lines = [
        f"[sft model] {s.get('steps')} steps, loss {_num(s.get('final_loss'))}, validation {_num(s.get('val_loss'))}; "
        f"{s.get('train_conversations', 0):,} training conversations, {s.get('heldout_conversations', 0)} held out "
        f"(by source: {_counts(s.get('conversations_by_source'))}), {s.get('excluded', 0)} excluded, "
        f"{_num(s.get('wall_seconds'), '.0f')} s -> {s.get('final_dir')}"
    ]
    check = _load(models / "sft" / "generation_check.json") or {}
    if "error" in check:
        lines.append(f"  held-out replies: the model did not load: {check['error'][:300]}")
    replies = check.get("replies", [])
    if replies:
        said = sum(r["stopped_at_im_end"] and said_something(r) for r in replies)
        ended = sum(r["stopped_at_im_end"] for r in replies)
        lines.append(f"  held-out replies: {ended} of {len(replies)} end with <|im_end|>, {said} after some text")
    for r in replies[:SHOWN_REPLIES]:
        end = "ends with <|im_end|>" if r["stopped_at_im_end"] else "no <|im_end|>"
        reply = r["reply"].replace("\n", " ")[:100]
        lines.append(f"  user: {r['prompt'][:60]!r} -> {reply!r} ({r['tokens']} tokens, {end})")
    return lines


def pair_lines(data_root: str) -> list[str]:
    synthetic = read_json(join(data_root, "synthetic", "preference", "final", SUCCESS_FILE))
    raw = read_json(join(data_root, "synthetic", "cheap_preference", "raw", SUCCESS_FILE))
    cheap = read_json(join(data_root, "synthetic", "cheap_preference", "final", SUCCESS_FILE))
    lines = [
        "[preference pairs] teacher-judged (preference_pairs): "
        + (f"{synthetic.get('output', 0):,}" if synthetic else "not made yet")
    ]
    if cheap is None:
        return lines + ["  human vs cheap (demo_preference_pairs): not made yet"]
    lines.append(
        f"  human vs cheap (demo_preference_pairs): {cheap.get('output', 0):,} after dedup and decontamination "
        f"(by method: {_counts(cheap.get('methods_out'))})"
    )
    if raw:
        lines.append(
            f"    made {raw.get('accepted', 0):,} from {raw.get('picked', 0):,} conversations "
            f"(the {raw.get('sft_heldout', 0):,} of the corpus that SFT holds out left out); dropped: "
            f"{_counts(raw.get('rejected'))}"
        )
    return lines


def pairwise_lines(models: Path, folder: str, label: str) -> list[str]:
    s = _load(models / folder / "summary.json")
    if s is None:
        return [f"[{label}] not trained yet"]
    before, after = s.get("initial_validation") or {}, s.get("validation") or {}
    return [
        f"[{label}] {s.get('steps')} steps on {s.get('train_pairs', 0):,} pairs ({_counts(s.get('pairs_by_source'))}), "
        f"held-out accuracy {_num(before.get('val_accuracy'))} -> {_num(after.get('val_accuracy'))} and margin "
        f"{_num(before.get('val_margin'))} -> {_num(after.get('val_margin'))} on {s.get('heldout_pairs', 0)} pairs, "
        f"{_num(s.get('wall_seconds'), '.0f')} s -> {s.get('final_dir')}"
    ]


def online_lines(models: Path) -> list[str]:
    s = _load(models / "online_dpo" / "summary.json")
    if s is None:
        return ["[online DPO] not trained yet"]
    return [
        f"[online DPO] {s.get('episodes')} episodes, {s.get('pairs_kept', 0):,} pairs kept "
        f"({s.get('pairs_dropped', 0):,} dropped), held-out win rate {_num(s.get('initial_win_rate'))} -> "
        f"{_num(s.get('win_rate'))}, {_num(s.get('wall_seconds'), '.0f')} s -> {s.get('final_dir')}"
    ]


def report(data_root: str) -> str:
    models = Path(data_root) / "models"
    lines = [f"Post-training summary for {data_root}", ""]
    lines += sft_lines(models) + [""]
    lines += pair_lines(data_root) + [""]
    lines += pairwise_lines(models, "reward", "reward model") + [""]
    lines += pairwise_lines(models, "dpo", "offline DPO") + [""]
    lines += online_lines(models) + [""]
    table = Path(data_root) / "evaluation" / "evaluation.md"
    lines += ["[evaluation]", table.read_text().rstrip()] if table.exists() else ["[evaluation] not run yet"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("QWEN2_DATA_ROOT", "data"))
    print(report(parser.parse_args(argv).data_root))


if __name__ == "__main__":
    main()
