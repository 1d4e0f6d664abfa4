"""Instruction data for pretraining: the synthesis group's SFT conversations rendered as plain documents of domain
``instruction``, which the mixture index buckets as ``instruction/<lang>`` (Qwen2 report §3.1: the pretraining mix
holds multi-task instruction data).

    python -m synth.instruction_docs --input data/synthetic/sft/final --output data/synthetic/instruction \\
        [--heldout-fraction 0.01]

Rendering: plain ``User:`` / ``Assistant:`` turns (``System:`` for a system turn), one blank line between turns. Not
ChatML: the pretraining tokenizer stage encodes a literal ``<|im_start|>`` or ``<|im_end|>`` inside a document as
the plain text it is (``pipelines.tokenize_shards``), so ChatML text in pretraining would teach the model a
look-alike string of six ordinary tokens, not the control tokens SFT trains on; plain role labels teach the
question-answer shape without that confusion.

Held out: the conversations ``training.sft`` holds out for its validation loss and generation checks are the rows
whose id ``training.chat_data.is_heldout(id, fraction)`` picks; with the same ``heldout_fraction`` as the SFT run
(asset ``sft_model``) they are never written here, so pretraining never sees an SFT evaluation conversation
(``excluded/`` names them, reason ``sft_heldout``). The inputs are already deduplicated and decontaminated against the
evaluation sets (asset ``sft_data``).

Each document keeps its lineage: ``source`` is ``synthetic:sft:<method>`` and ``metadata`` holds ``source_id`` (the
seed, document or task the conversation was made from) and ``sft_id``, so the mixture index's own validation split
follows the source document (``pipelines.mixing.lineage_id``). Chunked and resumable (``synth.records``).

Light at import (pydantic only): the Dagster code location imports the settings.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import Field

from pipelines.settings import ArgumentParser, Settings, parse_settings, settings_parser

DOMAIN = "instruction"
RENDERING = "user-assistant-plain-v1"
ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}
STAGE = "instruction_documents"


class InstructionDocsSettings(Settings):
    """``python -m synth.instruction_docs``, asset ``instruction_documents``."""

    heldout_fraction: float = Field(
        0.01,
        ge=0,
        lt=1,
        description="training.sft's heldout_fraction (asset sft_model: keep both the same): the SFT conversations it "
        "holds out for validation and its generation checks, chosen by a hash of the row id, are never rendered "
        "into pretraining.",
    )
    chunk_size: int = Field(4096, ge=1, description="Conversations per output shard (the unit of resumption).")


def render_conversation(messages: Sequence[Mapping[str, str]]) -> str:
    """``User: ...`` / ``Assistant: ...`` turns separated by a blank line (see the module docstring for why)."""
    return "\n\n".join(f"{ROLE_LABELS[m['role']]}: {m['content'].strip()}" for m in messages)


def document_of(row: Mapping[str, Any]) -> dict:
    """The DOCUMENT_SCHEMA row of one SFT conversation (``SFT_SCHEMA`` row)."""
    from pipelines.schema import empty_document

    method = row.get("method") or "sft"
    metadata = {
        "source_id": row.get("source_id") or row["id"],
        "sft_id": row["id"],
        "method": method,
        "model": row.get("model"),
        "rendering": RENDERING,
    }
    return empty_document(
        id=f"instruction-{row['id']}",
        text=render_conversation(row["messages"]),
        source=f"synthetic:sft:{method}",
        domain=DOMAIN,
        lang=row.get("lang") or None,
        metadata=json.dumps(metadata, sort_keys=True, ensure_ascii=False),
    )


def rendered_sft_ids(docs_dir: str) -> set[str]:
    """The SFT row ids rendered into the finished instruction stage ``docs_dir`` (empty when it is not finished)."""
    from pipelines.shards import SUCCESS_FILE, iter_stage_rows, join, read_json

    if read_json(join(docs_dir, SUCCESS_FILE)) is None:
        return set()
    return {json.loads(r["metadata"])["sft_id"] for r in iter_stage_rows(docs_dir, ["metadata"])}


def _chunk(settings: InstructionDocsSettings) -> Callable:
    from synth.records import chunk_counters, rejected
    from training.chat_data import check_messages, is_heldout

    def process(chunk: list[Mapping]) -> tuple[list[dict], list[dict], dict]:
        rows, rejects = [], []
        for item in chunk:
            preview = json.dumps(item["messages"], ensure_ascii=False, default=str)[:300]
            method = item.get("method") or "sft"
            if is_heldout(item["id"], settings.heldout_fraction):
                detail = {"heldout_fraction": settings.heldout_fraction}
                rejects.append(rejected(method, item["id"], "sft_heldout", detail, preview, id=item["id"]))
                continue
            problem = check_messages(item["messages"])
            if problem:
                rejects.append(rejected(method, item["id"], problem[0], problem[1], preview, id=item["id"]))
                continue
            rows.append(document_of(item))
        counters = chunk_counters(len(chunk), len(chunk), len(rows), rejects)
        counters["accepted_by_method"] = _count(json.loads(r["metadata"])["method"] for r in rows)
        counters["accepted_by_lang"] = _count(r["lang"] or "" for r in rows)
        return rows, rejects, counters

    return process


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def run_instruction_docs(
    sft_dir: str | None,
    out_dir: str,
    settings: InstructionDocsSettings | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Render the finished SFT stage folder ``sft_dir`` into the document stage folder ``out_dir``; the summary.
    ``sft_dir`` None (no SFT data yet): an empty finished stage, so a reader sees no instruction documents."""
    from pipelines.schema import DOCUMENT_SCHEMA
    from pipelines.shards import iter_stage_rows
    from synth.records import run_chunked_stage
    from synth.sft.common import stage_fingerprint

    settings = settings or InstructionDocsSettings()
    columns = ["id", "messages", "method", "lang", "source_id", "model"]
    items = list(iter_stage_rows(sft_dir, columns)) if sft_dir else []
    items.sort(key=lambda r: r["id"])  # the same chunks whatever order the shards list in
    config = {
        "stage": STAGE,
        "settings": settings.model_dump(),
        "rendering": RENDERING,
        "input": stage_fingerprint(sft_dir) if sft_dir else None,
    }
    extra = {"input": sft_dir, "domain": DOMAIN, "rendering": RENDERING, "heldout_fraction": settings.heldout_fraction}
    return run_chunked_stage(
        out_dir, config, items, _chunk(settings), DOCUMENT_SCHEMA, chunk_size=settings.chunk_size, extra=extra, log=log
    )


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m synth.instruction_docs", description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="finished SFT stage folder (SFT_SCHEMA shards)")
    parser.add_argument("--output", required=True, help="document stage folder to write (domain instruction)")
    # the class as pipelines.settings.STAGES names it: under ``python -m`` this module is __main__ (no profile section)
    from synth.instruction_docs import InstructionDocsSettings as registered

    args, settings = parse_settings(settings_parser(registered, parser=parser), argv)
    summary = run_instruction_docs(args.input, args.output, settings, log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
