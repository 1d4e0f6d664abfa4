"""Data repurposing (SFT).

Long curated documents (a ``DOCUMENT_SCHEMA`` stage folder, streamed) -> an excerpt -> the teacher
writes a question answerable from it and the answer, strictly as ``Question: ...\\nAnswer: ...``, in the
document's language. Kept when it parses and is grounded: at least ``min_grounding`` of the answer's content
units (words of 3+ letters or with a digit; character bigrams for CJK/Thai/... scripts) occur in the excerpt.
The user turn holds the excerpt and the question ("Read the text and answer the question ...").

The stage counts ``items``, ``samples`` (one candidate per item), ``accepted`` and ``rejected`` {reason: n};
``accepted + sum(rejected) == samples``. Rejected candidates go to ``excluded/`` with their reason.

    python -m synth.sft --methods repurpose --docs data/curated/dedup --output out/sft --repurpose-num-documents 8
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping

from pipelines.schema import SFT_SCHEMA
from synth.llm.base import Generator
from synth.llm.chat import validate_chat
from synth.records import messages, provenance, record_id, rejected, run_chunked_stage
from synth.seeds import language_name
from synth.settings import RepurposeSettings
from synth.sft.common import (
    PREAMBLE,
    ask,
    check_output,
    chunk_outcome,
    digest,
    excerpt_of,
    grounding_score,
    method_stage_config,
    sample_documents,
    screen_inputs,
    stage_fingerprint,
)

# ----------------------------------------------------------------------------------------------------- repurpose

REPURPOSE_TEMPLATE_VERSION = "sft-repurpose-v1"
REPURPOSE_PROMPT = """Read the following text.

<text>
{excerpt}
</text>

Write one question in {language} that can be answered from the text alone, then answer it in {language}, using only \
information from the text. Use exactly this format and nothing else:
Question: <the question>
Answer: <the answer>"""
REPURPOSE_USER_TURN = "Read the text and answer the question.\n\nText:\n{excerpt}\n\nQuestion: {question}"
_QA = re.compile(
    r"^\W*question\W*?[:：]\s*(?P<question>.+?)\s*\n\s*\W*answer\W*?[:：]\s*(?P<answer>.+?)\s*$",
    flags=re.IGNORECASE | re.DOTALL,
)


class RepurposeConfig(RepurposeSettings):
    """The settings of ``synth.settings.RepurposeSettings`` plus the method's input (not a setting)."""

    input_dir: str = "data/curated/dedup"  # a DOCUMENT_SCHEMA stage folder
    template_version: str = REPURPOSE_TEMPLATE_VERSION


def parse_qa(text: str) -> tuple[str, str] | None:
    """(question, answer) from ``Question: ...\\nAnswer: ...`` (markdown bold and a full-width colon allowed)."""
    match = _QA.match(PREAMBLE.sub("", text, count=1).strip())
    if not match:
        return None
    question, answer = match["question"].strip(" *"), match["answer"].strip(" *")
    if not question or not answer or re.search(r"\n\W*question\W*?[:：]", answer, flags=re.IGNORECASE):
        return None  # empty, or more than one pair
    return question, answer


def check_qa(text: str, finish_reason: str, excerpt: str, lang: str | None, cfg: RepurposeConfig):
    """(problem or None, question, answer, grounding)."""
    problem = check_output(text, finish_reason, keep_truncated=cfg.keep_truncated)
    if problem:
        return problem, "", "", 0.0
    parsed = parse_qa(text)
    if parsed is None:
        return "bad_format", "", "", 0.0
    question, answer = parsed
    if len(question) < cfg.min_question_chars:
        return "question_too_short", question, answer, 0.0
    score = grounding_score(answer, excerpt, lang)
    if score < cfg.min_grounding:
        return "ungrounded", question, answer, score
    return None, question, answer, score


def _repurpose_chunk(generator: Generator, cfg: RepurposeConfig) -> Callable:
    method = "repurpose"

    def process(chunk: list[Mapping]) -> tuple[list[dict], list[dict], dict]:
        docs, rejects = screen_inputs(method, chunk, lambda doc: doc["excerpt"])
        prompts = [REPURPOSE_PROMPT.format(excerpt=doc["excerpt"], language=language_name(doc["lang"])) for doc in docs]
        results = generator.generate([ask(p, cfg.max_new_tokens, cfg, cfg.template_version) for p in prompts])
        rows = []
        for doc, result in zip(docs, results):
            text = result.texts[0]
            problem, question, answer, score = check_qa(
                text, result.finish_reasons[0], doc["excerpt"], doc["lang"], cfg
            )
            user = REPURPOSE_USER_TURN.format(excerpt=doc["excerpt"], question=question)
            conversation = messages(("user", user), ("assistant", answer))
            if problem is None and validate_chat(conversation):
                problem = "invalid_chat"
            if problem:
                detail = {"grounding": round(score, 3), "question": question}
                rejects.append(rejected(method, doc["id"], problem, detail, text))
                continue
            meta = {
                "question": question,
                "grounding": round(score, 4),
                "excerpt_chars": len(doc["excerpt"]),
                "document_chars": doc["chars"],
                "document_source": doc.get("source"),
                "document_url": doc.get("url"),
            }
            rows.append(
                {
                    "id": record_id(method, doc["id"], question, answer),
                    "messages": conversation,
                    **provenance(result, method=method, lang=doc["lang"], source_id=doc["id"], meta=meta),
                }
            )
        return chunk_outcome(len(chunk), len(chunk), rows, rejects)

    return process


def run_repurpose(
    generator: Generator,
    out_dir: str,
    config: RepurposeConfig | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Data repurposing of ``config.input_dir`` into the stage folder ``out_dir``; returns the stage summary."""
    cfg = config or RepurposeConfig()
    docs, scan = sample_documents(
        cfg.input_dir, cfg.num_documents, cfg.seed,
        min_chars=cfg.min_chars, exclude_domains=cfg.exclude_domains, languages=cfg.languages, salt="repurpose",
    )  # fmt: skip
    items = []
    for doc in docs:
        rng = random.Random(f"excerpt/{cfg.seed}/{doc['id']}")
        items.append(
            {
                "id": doc["id"],
                "lang": doc["lang"],
                "excerpt": excerpt_of(doc["text"], cfg.excerpt_chars, rng),
                "chars": len(doc["text"]),
                "source": doc.get("source"),
                "url": doc.get("url"),
            }
        )
    stage_config = method_stage_config(
        "repurpose", cfg, generator, input=stage_fingerprint(cfg.input_dir), items=digest([i["id"] for i in items])
    )
    extra = {"method": "repurpose", "model_id": generator.model_id, "input": cfg.input_dir, **scan}
    return run_chunked_stage(
        out_dir, stage_config, items, _repurpose_chunk(generator, cfg), SFT_SCHEMA,
        chunk_size=cfg.chunk_size, extra=extra, log=log,
    )  # fmt: skip
