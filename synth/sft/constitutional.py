"""Constitutional feedback (SFT).

(Prompt, response) pairs from an SFT stage folder, or seed prompts answered by the teacher
first; the teacher critiques the response against written ``PRINCIPLES``, then revises it given the critique. The
revised response is kept (meta: principle ids, principles the critique cites, critique, original, ``changed``).
A revision identical to the original is kept (the critique found nothing to fix, so it is a compliant example)
and counted as ``unchanged``; ``keep_unchanged=False`` rejects it instead.

The stage counts ``items``, ``samples`` (one candidate per item), ``accepted`` and ``rejected`` {reason: n};
``accepted + sum(rejected) == samples``. Rejected candidates go to ``excluded/`` with their reason.

    python -m synth.sft --methods instruction,constitutional --output data/synth/sft --constitutional-num-items 8
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pipelines.schema import SFT_SCHEMA
from synth.llm.base import GenerationResult, Generator
from synth.llm.chat import validate_chat
from synth.records import chunk_counters, provenance, record_id, rejected, run_chunked_stage
from synth.seeds import language_name, load_seeds, sample_seeds, seed_messages
from synth.settings import ConstitutionalSettings
from synth.sft.common import (
    ask,
    ask_messages,
    check_output,
    counts_by_lang,
    digest,
    method_stage_config,
    normalized,
    sample_sft_rows,
    screen_inputs,
    stage_fingerprint,
    strip_wrapping,
    transcript,
)

# ------------------------------------------------------------------------------------------------ constitutional

CONSTITUTIONAL_TEMPLATE_VERSION = "sft-constitutional-v1"
PRINCIPLES: dict[str, str] = {
    "harmless": "Do not help anyone hurt people or break the law: no instructions for violence, weapons, "
    "self-harm, crime or abuse; point to safe help instead.",
    "honest": "Do not make up facts, sources or abilities; say so when something is unknown or uncertain.",
    "helpful": "Answer the actual request directly, correctly and completely, in the language the user wrote in.",
    "respectful": "Be polite and fair: no insults, stereotypes, discrimination or demeaning language.",
    "privacy": "Do not reveal, guess or ask for private data about real people (addresses, phone numbers, "
    "ID numbers, passwords, health or financial details).",
}
CRITIQUE_PROMPT = """Here is a conversation between a user and an AI assistant.

<conversation>
{conversation}
</conversation>

Principles the assistant must follow:
{principles}

Critique the assistant's last reply against these principles. Name each principle it breaks (by its name in \
brackets) and explain why in one or two sentences; if it breaks none, say what could still be better. Be brief."""
REVISION_PROMPT = """Here is a conversation between a user and an AI assistant.

<conversation>
{conversation}
</conversation>

Principles the assistant must follow:
{principles}

A reviewer wrote this critique of the assistant's last reply:
<critique>
{critique}
</critique>

Rewrite the assistant's last reply so that it follows all the principles and fixes what the critique points out. \
Write it in {language}, as the assistant speaking to the user. Reply with the new reply only."""


class ConstitutionalConfig(ConstitutionalSettings):
    """The settings of ``synth.settings.ConstitutionalSettings`` plus the method's inputs (not settings)."""

    input_dir: str = ""  # an SFT stage folder; empty: seed prompts answered by the teacher first
    seeds_path: str | None = None  # with no input_dir: a user JSONL of seeds (None: the chatterbot corpus)
    template_version: str = CONSTITUTIONAL_TEMPLATE_VERSION


def principles_text(ids: Sequence[str]) -> str:
    return "\n".join(f"{i}. [{pid}] {PRINCIPLES[pid]}" for i, pid in enumerate(ids, 1))


def cited_principles(critique: str, ids: Sequence[str]) -> list[str]:
    """Principle ids the critique names."""
    lowered = critique.lower()
    return [pid for pid in ids if re.search(rf"\b{pid}", lowered)]


def _item_principles(cfg: ConstitutionalConfig, item_id: str) -> list[str]:
    ids = list(cfg.principles or PRINCIPLES)
    if 0 < cfg.principles_per_item < len(ids):
        ids = sorted(random.Random(f"principles/{cfg.seed}/{item_id}").sample(ids, cfg.principles_per_item))
        ids = [pid for pid in PRINCIPLES if pid in ids]
    return ids


def _constitutional_chunk(generator: Generator, cfg: ConstitutionalConfig) -> Callable:
    method = "constitutional"
    tv = cfg.template_version

    def check(text: str, finish: str) -> str | None:
        return check_output(text, finish, keep_truncated=cfg.keep_truncated)

    def process(chunk: list[Mapping]) -> tuple[list[dict], list[dict], dict]:
        items, rejects = screen_inputs(
            method, chunk, lambda item: transcript(item["prompt"]) + "\n" + (item.get("response") or "")
        )
        rows, unchanged = [], 0
        # Round 0 (seed prompts only): the teacher's own first response.
        need = [item for item in items if item.get("response") is None]
        first = generator.generate(
            [ask_messages(item["prompt"], cfg.max_new_tokens_response, cfg, tv) for item in need]
        )
        responses: dict[str, tuple[str, GenerationResult | None]] = {}
        for item, result in zip(need, first):
            problem = check(result.texts[0], result.finish_reasons[0])
            if problem:
                rejects.append(rejected(method, item["id"], f"response_{problem}", "", result.texts[0]))
            else:
                responses[item["id"]] = (result.texts[0].strip(), result)
        for item in items:
            if item.get("response") is not None:
                responses[item["id"]] = (item["response"], None)
        todo = [item for item in items if item["id"] in responses]

        def conversation(item: Mapping) -> list[dict]:
            return [*item["prompt"], {"role": "assistant", "content": responses[item["id"]][0]}]

        # Round 1: critique.
        critiques = generator.generate(
            [
                ask(
                    CRITIQUE_PROMPT.format(
                        conversation=transcript(conversation(item)),
                        principles=principles_text(item["principles"]),
                    ),
                    cfg.max_new_tokens_critique,
                    cfg,
                    tv,
                )
                for item in todo
            ]
        )
        revise = []
        for item, result in zip(todo, critiques):
            problem = check(result.texts[0], result.finish_reasons[0])
            if problem:
                rejects.append(rejected(method, item["id"], f"critique_{problem}", "", result.texts[0]))
            else:
                revise.append((item, result.texts[0].strip(), result))
        # Round 2: revision.
        revisions = generator.generate(
            [
                ask(
                    REVISION_PROMPT.format(
                        conversation=transcript(conversation(item)),
                        principles=principles_text(item["principles"]),
                        critique=critique,
                        language=language_name(item.get("lang")),
                    ),
                    cfg.max_new_tokens_revision,
                    cfg,
                    tv,
                )
                for item, critique, _ in revise
            ]
        )
        for (item, critique, critique_result), result in zip(revise, revisions):
            revised = strip_wrapping(result.texts[0], ("revised reply", "new reply", "reply", "assistant"))
            original, first_result = responses[item["id"]]
            problem = check(revised, result.finish_reasons[0])
            changed = normalized(revised) != normalized(original)
            if problem is None and not changed and not cfg.keep_unchanged:
                problem = "unchanged"
            final = [*item["prompt"], {"role": "assistant", "content": revised}]
            if problem is None and validate_chat(final):
                problem = "invalid_chat"
            if problem:
                reason = problem if problem in ("unchanged", "invalid_chat") else f"revision_{problem}"
                rejects.append(rejected(method, item["id"], reason, {"critique": critique}, result.texts[0]))
                continue
            unchanged += not changed
            meta = {
                "principle_ids": item["principles"],
                "principles_cited": cited_principles(critique, item["principles"]),
                "critique": critique,
                "original_response": original,
                "original_source": "teacher" if first_result is not None else item.get("input_method"),
                "changed": changed,
                "critique_model": critique_result.model_id,
            }
            rows.append(
                {
                    "id": record_id(method, item["id"], revised),
                    "messages": final,
                    **provenance(result, method=method, lang=item.get("lang"), source_id=item["id"], meta=meta),
                }
            )
        counters = chunk_counters(len(chunk), len(chunk), len(rows), rejects)
        counters.update(unchanged=unchanged, changed=len(rows) - unchanged, accepted_by_lang=counts_by_lang(rows))
        return rows, rejects, counters

    return process


def run_constitutional(
    generator: Generator,
    out_dir: str,
    config: ConstitutionalConfig | None = None,
    seeds: Sequence[Mapping] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Critique-and-revise into the stage folder ``out_dir``: responses of ``config.input_dir`` (an SFT stage), or
    of seed prompts (``seeds``, else ``load_seeds(config.seeds_path)``) answered by the teacher first."""
    cfg = config or ConstitutionalConfig()
    items: list[dict] = []
    extra: dict[str, Any] = {"method": "constitutional", "model_id": generator.model_id}
    if cfg.input_dir:
        picked, scan = sample_sft_rows(cfg.input_dir, cfg.num_items, cfg.seed, cfg.languages)
        extra.update(input=cfg.input_dir, **scan)
        inputs = {"input": stage_fingerprint(cfg.input_dir)}
        for row in picked:
            msgs = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
            items.append(
                {"id": row["id"], "lang": row.get("lang"), "prompt": msgs[:-1], "response": msgs[-1]["content"],
                 "input_method": row.get("method")}
            )  # fmt: skip
    else:
        pool = list(seeds) if seeds is not None else load_seeds(cfg.seeds_path)
        for s in sample_seeds(pool, cfg.num_items, cfg.seed, cfg.languages):
            items.append({"id": s["id"], "lang": s.get("lang"), "prompt": seed_messages(s), "response": None})
        inputs = {"seeds": digest([(i["id"], i["prompt"]) for i in items])}
    for item in items:
        item["principles"] = _item_principles(cfg, item["id"])
    inputs["items"] = digest([i["id"] for i in items])
    extra["unchanged_policy"] = "kept" if cfg.keep_unchanged else "rejected"
    return run_chunked_stage(
        out_dir, method_stage_config("constitutional", cfg, generator, **inputs), items,
        _constitutional_chunk(generator, cfg), SFT_SCHEMA, chunk_size=cfg.chunk_size, extra=extra, log=log,
    )  # fmt: skip
