"""Checks on synthetic stage folders: every row a well-formed chat, and a few rows rendered for people to read.

python -m synth.checks sft DIR           # print chat-format problems (exit 1 if any) and two examples
python -m synth.checks preference DIR
"""

from __future__ import annotations

import argparse
import json
import sys

from pipelines.shards import iter_stage_rows
from synth.llm.chat import validate_chat

KINDS = ("sft", "preference")


def row_problems(kind: str, row: dict) -> list[str]:
    """What is wrong with one SFT or preference row's chat format (empty: nothing)."""
    if kind == "sft":
        return validate_chat(row["messages"], final_role="assistant")
    problems = validate_chat(row["prompt"], final_role="user")
    for side in ("chosen", "rejected"):
        turns = row[side]
        if len(turns) != 1 or turns[0]["role"] != "assistant":
            problems.append(f"{side} must be one assistant turn, got {[t['role'] for t in turns]}")
        else:
            problems += [f"{side}: {p}" for p in validate_chat([*row["prompt"], *turns], final_role="assistant")]
    if row["chosen"] == row["rejected"]:
        problems.append("chosen and rejected are the same response")
    return problems


def chat_problems(stage_dir: str, kind: str, limit: int = 20) -> tuple[list[str], int]:
    """(up to ``limit`` problems as "<id>: <problem>", rows checked) over every row of the stage."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    columns = ["id", "messages"] if kind == "sft" else ["id", "prompt", "chosen", "rejected"]
    problems, rows = [], 0
    for row in iter_stage_rows(stage_dir, columns):
        rows += 1
        for problem in row_problems(kind, row):
            if len(problems) < limit:
                problems.append(f"{row['id']}: {problem}")
    return problems, rows


def _turns_md(turns: list[dict], max_chars: int) -> list[str]:
    lines = []
    for turn in turns:
        text = turn["content"] if len(turn["content"]) <= max_chars else turn["content"][:max_chars] + " …"
        quoted = "\n".join(f"> {line}" for line in text.splitlines() or [""])
        lines += [f"**{turn['role']}**", "", quoted, ""]
    return lines


def _score(value: float | None) -> str:
    return "no score: not judged" if value is None else f"score {value:.2f}"


def examples_markdown(stage_dir: str, kind: str, n: int = 3, max_chars: int = 600) -> str:
    """The first ``n`` rows of a stage as Markdown (each conversation's turns quoted, with method and language)."""
    columns = ["id", "method", "lang", "meta"] + (["messages"] if kind == "sft" else ["prompt", "chosen", "rejected"])
    if kind == "preference":
        columns += ["chosen_score", "rejected_score"]
    blocks = []
    for row in iter_stage_rows(stage_dir, columns):
        if len(blocks) == n:
            break
        lines = [f"#### {row['method']} · {row['lang']} · `{row['id']}`", ""]
        if kind == "sft":
            lines += _turns_md(row["messages"], max_chars)
        else:
            lines += _turns_md(row["prompt"], max_chars)
            lines += [f"*chosen ({_score(row['chosen_score'])})*", ""] + _turns_md(row["chosen"], max_chars)
            lines += [f"*rejected ({_score(row['rejected_score'])})*", ""] + _turns_md(row["rejected"], max_chars)
        blocks.append("\n".join(lines))
    return "\n\n---\n\n".join(blocks) if blocks else "_no rows_"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("stage_dir")
    args = parser.parse_args(argv)
    problems, rows = chat_problems(args.stage_dir, args.kind)
    print(json.dumps({"rows": rows, "problems": problems}, indent=2, ensure_ascii=False))
    print(examples_markdown(args.stage_dir, args.kind, n=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
