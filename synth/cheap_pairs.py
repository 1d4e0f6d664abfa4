"""Preference pairs without a judge (``PREFERENCE_SCHEMA``): a human answer is preferred over a cheaper one.

The chosen reply is always the last assistant turn of a human-written chatterbot-corpus conversation (the prompt is
the conversation up to its last user turn); the rejected reply, by ``method``:

- ``human_vs_base``: the base model's own sample for the same prompt (the long-context pretrained model, through
  ``synth.llm``'s batched ``TransformersGenerator``, seeded per prompt; a sample cut off at ``max_new_tokens`` is
  kept: the base model rarely ends a turn). Like SPIN's first round: what the model says before any alignment is
  worse than what a person wrote.
- ``human_vs_other``: the human answer to another prompt of the same language (a deterministic derangement: the
  language's conversations in a seeded hash order, each paired with the next, the last with the first): a fluent
  reply that does not answer.

Every row says how it was made: ``method``, ``source_id`` (the conversation), ``model``/``backend``/``sampling`` of the
base sample (empty for ``human_vs_other``), and ``meta`` (where chosen and rejected came from, the sample's finish
reason, the other conversation's id). No scores (``chosen_score``/``rejected_score`` are null): no judge was asked.

Held out: the conversations ``training.sft`` holds out for validation and its generation checks are those that
``training.chat_data.is_heldout(id, fraction)`` picks; with the SFT run's ``heldout_fraction``
(``--sft-heldout-fraction``; the asset reads the SFT run's settings) none of them, as prompt or as another prompt's
rejected answer, becomes a pair. Dropped (``excluded/``, with the reason): ``empty_sample``, ``control_token``,
``same_as_human`` (a base sample equal to the human answer), ``same_answer`` (two conversations with the same
answer), ``no_partner`` (the only eligible conversation of its language). The evaluation sets are not read here:
dedup and the 13-gram decontamination come after (``synth.decontam --kind preference``; the asset does both).

    python -m synth.cheap_pairs --model data/models/long_context/final --output data/synthetic/cheap_preference/raw \\
        [--sft-heldout-fraction 0.05] [--num-prompts 400] [--max-new-tokens 32]
    python -m synth.decontam --kind preference --in data/synthetic/cheap_preference/raw \\
        --out data/synthetic/cheap_preference/final

Light at import (pydantic only): the Dagster code location imports the settings.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import Field, field_validator

from pipelines.settings import ArgumentParser, Settings, parse_settings, settings_parser

METHODS = ("human_vs_base", "human_vs_other")
TEMPLATE_VERSION = "cheap-pairs-v1"
HUMAN = "human (chatterbot-corpus)"
SFT_HELDOUT_FRACTION = 0.01  # training.sft's default heldout_fraction (the tests check that they agree)


class CheapPairSettings(Settings):
    """``python -m synth.cheap_pairs``, asset ``demo_preference_pairs``."""

    methods: list[str] = Field(
        default_factory=lambda: list(METHODS),
        description="How the rejected reply is made: human_vs_base (the base model's sample for the prompt), "
        "human_vs_other (the human answer to another prompt of the same language).",
    )
    num_prompts: int = Field(
        400,
        ge=1,
        description="Chatterbot-corpus conversations to make pairs from: a language-balanced seeded sample of those "
        "SFT does not hold out. Each gives at most one pair per method.",
    )
    max_new_tokens: int = Field(
        32,
        ge=1,
        description="Token limit of a base-model sample (kept when cut off there).",
        json_schema_extra={"unit": "tokens"},
    )
    temperature: float = Field(0.8, ge=0, description="Sampling temperature of the base model (0: greedy).")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass of the base model.")
    batch_size: int = Field(32, ge=1, description="Prompts per generate call of the base model.")
    seed: int = Field(0, description="Seed of the sample of conversations, the derangement and the base samples.")
    chunk_size: int = Field(512, ge=1, description="Conversations per committed chunk (the unit of resumption).")

    @field_validator("methods")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(METHODS))
        if unknown or not value:
            raise ValueError(f"methods must be some of {', '.join(METHODS)}; got {value}")
        return value


def _order_key(seed: int, conversation_id: str) -> str:
    return hashlib.sha256(f"cheap-pairs/{seed}/{conversation_id}".encode()).hexdigest()


def conversation_items(
    conversations: Sequence[Mapping], settings: CheapPairSettings, sft_heldout_fraction: float
) -> tuple[list[dict], dict]:
    """Work items (prompt, human answer, the partner's answer for ``human_vs_other``) of the conversations SFT does
    not hold out, a language-balanced sample of ``num_prompts``; and counts of what was left out."""
    from synth.seeds import sample_seeds
    from training.chat_data import is_heldout

    usable = [c for c in conversations if len(c["messages"]) >= 2 and c["messages"][-1]["role"] == "assistant"]
    eligible = [c for c in usable if not is_heldout(c["id"], sft_heldout_fraction)]
    picked = sample_seeds(eligible, settings.num_prompts, seed=settings.seed)
    by_lang: dict[str, list[dict]] = {}
    for c in picked:
        by_lang.setdefault(c.get("lang") or "", []).append(c)
    items = []
    for lang in sorted(by_lang):
        group = sorted(by_lang[lang], key=lambda c: _order_key(settings.seed, c["id"]))
        for k, c in enumerate(group):
            other = group[(k + 1) % len(group)] if len(group) > 1 else None
            items.append(
                {
                    "id": c["id"],
                    "lang": lang or None,
                    "source": c.get("source"),
                    "prompt": [dict(m) for m in c["messages"][:-1]],
                    "answer": c["messages"][-1]["content"],
                    "other_id": other["id"] if other else None,
                    "other_answer": other["messages"][-1]["content"] if other else None,
                }
            )
    items.sort(key=lambda item: _order_key(settings.seed, item["id"]))
    counts = {"conversations": len(conversations), "sft_heldout": len(usable) - len(eligible), "picked": len(items)}
    return items, counts


def _row(method: str, item: Mapping, rejected_text: str, provenance_cols: Mapping[str, Any], meta: dict) -> dict:
    from synth.records import record_id

    return {
        "id": record_id(method, item["id"], item["answer"], rejected_text),
        "prompt": [dict(m) for m in item["prompt"]],
        "chosen": [{"role": "assistant", "content": item["answer"]}],
        "rejected": [{"role": "assistant", "content": rejected_text}],
        "chosen_score": None,
        "rejected_score": None,
        **provenance_cols,
        "meta": json.dumps({"chosen": HUMAN, **meta}, sort_keys=True, ensure_ascii=False, default=str),
    }


def _chunk(generator: Any, settings: CheapPairSettings) -> Callable:
    from synth.llm.base import GenerationRequest
    from synth.records import chunk_counters, provenance, rejected
    from synth.sft.common import has_control_token

    def process(chunk: list[Mapping]) -> tuple[list[dict], list[dict], dict]:
        rows, rejects = [], []
        if "human_vs_base" in settings.methods:
            method = "human_vs_base"
            requests = [
                GenerationRequest(
                    item["prompt"],
                    max_new_tokens=settings.max_new_tokens,
                    temperature=settings.temperature,
                    top_p=settings.top_p,
                    seed=settings.seed,  # the backend seeds each sample by (seed, messages): per prompt
                    template_version=TEMPLATE_VERSION,
                )
                for item in chunk
            ]
            for item, result in zip(chunk, generator.generate(requests) if requests else []):
                text, finish = result.texts[0].strip(), result.finish_reasons[0]
                problem = (
                    "empty_sample"
                    if not text
                    else "control_token"
                    if has_control_token(text)
                    else "same_as_human"
                    if text == item["answer"].strip()
                    else None
                )
                if problem:
                    rejects.append(rejected(method, item["id"], problem, {"finish_reason": finish}, text))
                    continue
                meta = {"rejected": "base model sample", "finish_reason": finish, "corpus_file": item["source"]}
                cols = provenance(result, method=method, lang=item["lang"], source_id=item["id"])
                rows.append(_row(method, item, text, cols, meta))
        if "human_vs_other" in settings.methods:
            method = "human_vs_other"
            for item in chunk:
                if item["other_id"] is None:
                    rejects.append(rejected(method, item["id"], "no_partner", {"lang": item["lang"]}, item["answer"]))
                    continue
                if item["other_answer"].strip() == item["answer"].strip():
                    detail = {"other_id": item["other_id"]}
                    rejects.append(rejected(method, item["id"], "same_answer", detail, item["answer"]))
                    continue
                meta = {"rejected": "human answer to another prompt", "rejected_source_id": item["other_id"]}
                meta["corpus_file"] = item["source"]
                cols = {
                    "method": method,
                    "lang": item["lang"],
                    "source_id": item["id"],
                    "model": None,
                    "backend": None,
                    "sampling": None,
                    "template_version": TEMPLATE_VERSION,
                }
                rows.append(_row(method, item, item["other_answer"], cols, meta))
        samples = len(chunk) * len(settings.methods)
        counters = chunk_counters(len(chunk), samples, len(rows), rejects)
        by_method: dict[str, int] = {}
        for r in rows:
            by_method[r["method"]] = by_method.get(r["method"], 0) + 1
        counters["accepted_by_method"] = by_method
        return rows, rejects, counters

    return process


def run_cheap_pairs(
    generator: Any,
    out_dir: str,
    settings: CheapPairSettings | None = None,
    sft_heldout_fraction: float = SFT_HELDOUT_FRACTION,
    conversations: Sequence[Mapping] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Pairs into the stage folder ``out_dir`` from ``conversations`` (default: the whole chatterbot corpus,
    ``training.chat_data.chatterbot_conversations``); ``generator`` samples the base model (None: only
    ``human_vs_other``). Returns the stage summary."""
    from pipelines.schema import PREFERENCE_SCHEMA
    from synth.records import run_chunked_stage
    from synth.sft.common import digest
    from training.chat_data import chatterbot_conversations

    settings = settings or CheapPairSettings()
    if "human_vs_base" in settings.methods and generator is None:
        raise ValueError("method human_vs_base needs a generator (the base model)")
    pool = list(conversations) if conversations is not None else chatterbot_conversations()
    items, counts = conversation_items(pool, settings, sft_heldout_fraction)
    model_id = generator.model_id if generator is not None and "human_vs_base" in settings.methods else None
    config = {
        "stage": "cheap_pairs",
        "settings": settings.model_dump(),
        "sft_heldout_fraction": sft_heldout_fraction,
        "model_id": model_id,
        "template_version": TEMPLATE_VERSION,
        "items": digest([(i["id"], i["prompt"], i["answer"], i["other_id"]) for i in items]),
    }
    extra = {"methods": list(settings.methods), "model_id": model_id, "sft_heldout_fraction": sft_heldout_fraction}
    return run_chunked_stage(
        out_dir, config, items, _chunk(generator, settings), PREFERENCE_SCHEMA,
        chunk_size=settings.chunk_size, extra={**extra, **counts}, log=log,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m synth.cheap_pairs", description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="stage folder to write (PREFERENCE_SCHEMA shards)")
    parser.add_argument("--model", default="", help="the base model's save_pretrained folder (human_vs_base)")
    parser.add_argument(
        "--sft-heldout-fraction",
        type=float,
        default=SFT_HELDOUT_FRACTION,
        help="the SFT run's heldout_fraction: its held-out conversations never become pairs (default: "
        f"{SFT_HELDOUT_FRACTION}, training.sft's default)",
    )
    # the class as pipelines.settings.STAGES names it: under ``python -m`` this module is __main__ (no profile section)
    from synth.cheap_pairs import CheapPairSettings as registered

    args, settings = parse_settings(settings_parser(registered, parser=parser), argv)
    generator = None
    if "human_vs_base" in settings.methods:
        if not args.model:
            parser.error("--model is needed for method human_vs_base")
        from synth.llm.backends import TransformersGenerator

        generator = TransformersGenerator(args.model, batch_size=settings.batch_size)
    summary = run_cheap_pairs(
        generator, args.output, settings, args.sft_heldout_fraction, log=lambda m: print(m, file=sys.stderr)
    )
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
