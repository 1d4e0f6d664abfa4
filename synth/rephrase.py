"""Synthetic pretraining documents: curated documents rephrased by the teacher in several styles.

Qwen2 used earlier Qwen models to synthesize pretraining data; this is the rephrasing recipe (as in "Rephrasing the
Web", Maini et al. 2024): a seeded sample of curated documents (a ``DOCUMENT_SCHEMA`` stage folder, streamed with
pyarrow) is rewritten in each of ``styles``, in the document's own language. Each output is a ``DOCUMENT_SCHEMA``
row with ``domain="synthetic"``, the source's ``lang``, ``source="synthetic:rephrase:<style>"`` and ``metadata``
JSON {source_id, model, backend, style, template_version, sampling, source_chars, input_chars}. The stage folder is
an ordinary one (``data/`` shards + ``_SUCCESS.json``; rejected outputs in ``excluded/`` as SYNTH_REJECTED rows), so
``pipelines.mixing index`` reads it as input next to the curated data; its bucket is ``synthetic/<lang>``.

Rejected (with reasons): ``empty``, ``truncated`` (hit ``max_new_tokens``), ``control_token``, ``too_short``
(under ``min_output_chars`` or ``min_length_ratio`` of the input), ``copy`` (most of its word 5-grams, character
10-grams for CJK/Thai, are the input's), ``input_control_token``. Counters: ``items`` (documents), ``samples``
(documents x styles) = ``accepted`` + sum(``rejected``).

    python -m synth.rephrase --input data/curated/dedup --output data/synth/rephrased --num-documents 4
    python -m synth.rephrase --input data/curated/dedup --output out/rephrased --styles wikipedia,qa \\
        --backend openai --model Qwen/Qwen2-7B-Instruct --base-url http://127.0.0.1:8000/v1 --num-documents 10000
    python -m pipelines.mixing index --input data/curated/dedup,data/synth/rephrased --output data/mix/index
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

from pipelines.schema import DOCUMENT_SCHEMA, empty_document
from pipelines.settings import ArgumentParser, parse_settings, settings_parser
from synth.llm.base import Generator
from synth.records import record_id, rejected, run_chunked_stage
from synth.seeds import language_name
from synth.settings import RephraseSettings
from synth.sft.common import (
    add_generator_args,
    ask,
    check_output,
    chunk_outcome,
    digest,
    excerpt_of,
    make_cli_generator,
    method_stage_config,
    sample_documents,
    screen_inputs,
    stage_fingerprint,
    strip_wrapping,
    uses_characters,
)

TEMPLATE_VERSION = "rephrase-v1"
STYLES: dict[str, str] = {
    "wikipedia": "Rewrite the text below as a neutral, well-structured encyclopedia article, like a Wikipedia "
    "article, in {language}. Keep every fact of the text and add no facts that are not in it.",
    "qa": "Rewrite the text below as a series of questions and answers in {language}, covering all of its "
    "information. Put each question on its own line, followed by its answer.",
    "simple": "Rewrite the text below in simple words, in {language}, so that a child could understand it. Keep "
    "the meaning and the facts; use short sentences.",
}
PROMPT = """{instruction} Write only the rewritten text, with no introduction or comment.

<text>
{text}
</text>"""


class RephraseConfig(RephraseSettings):
    """The settings of ``synth.settings.RephraseSettings`` plus the stage's input (not a setting)."""

    input_dir: str = "data/curated/dedup"  # a DOCUMENT_SCHEMA stage folder
    template_version: str = TEMPLATE_VERSION


def rephrase_prompt(text: str, style: str, lang: str | None) -> str:
    return PROMPT.format(instruction=STYLES[style].format(language=language_name(lang)), text=text)


def copy_overlap(output: str, source: str, lang: str | None) -> float:
    """Share of the output's word 5-grams (character 10-grams for character scripts) that occur in ``source``."""
    if uses_characters(output, lang):
        n, out_text, src_text = 10, "".join(output.split()), "".join(source.split())
        grams = [out_text[i : i + n] for i in range(len(out_text) - n + 1)]
        source_grams = {src_text[i : i + n] for i in range(len(src_text) - n + 1)}
    else:
        n, out_words, src_words = 5, content_words(output), content_words(source)
        grams = [tuple(out_words[i : i + n]) for i in range(len(out_words) - n + 1)]
        source_grams = {tuple(src_words[i : i + n]) for i in range(len(src_words) - n + 1)}
    if not grams:
        return 0.0
    return sum(g in source_grams for g in grams) / len(grams)


def content_words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def check_rephrase(text: str, finish_reason: str, source: str, lang: str | None, cfg: RephraseConfig):
    """(problem or None, copy overlap)."""
    problem = check_output(text, finish_reason, keep_truncated=cfg.keep_truncated, min_chars=cfg.min_output_chars)
    if problem:
        return problem, 0.0
    if len(text.strip()) < cfg.min_length_ratio * len(source):
        return "too_short", 0.0
    overlap = copy_overlap(text, source, lang)
    if overlap > cfg.max_copy_overlap:
        return "copy", overlap
    return None, overlap


def _chunk(generator: Generator, cfg: RephraseConfig) -> Callable:
    method = "rephrase"

    def process(chunk: list[Mapping]) -> tuple[list[dict], list[dict], dict]:
        docs, screened = screen_inputs(method, chunk, lambda doc: doc["input"])
        rejects = []
        for row in screened:  # one rejection per style, so samples = documents x styles still adds up
            rejects += [{**row, "id": record_id(method, row["source_id"], style, "input")} for style in cfg.styles]
        jobs = [(doc, style) for doc in docs for style in cfg.styles]
        requests = [
            ask(rephrase_prompt(doc["input"], style, doc["lang"]), cfg.max_new_tokens, cfg, cfg.template_version)
            for doc, style in jobs
        ]
        rows = []
        for (doc, style), result in zip(jobs, generator.generate(requests)):
            text = strip_wrapping(result.texts[0])
            problem, overlap = check_rephrase(text, result.finish_reasons[0], doc["input"], doc["lang"], cfg)
            if problem:
                rejects.append(
                    rejected(
                        method, doc["id"], problem, {"style": style, "copy_overlap": overlap}, text,
                        id=record_id(method, doc["id"], style, problem),
                    )
                )  # fmt: skip
                continue
            metadata = {
                "source_id": doc["id"],
                "model": result.model_id,
                "backend": result.backend,
                "style": style,
                "template_version": result.template_version,
                "sampling": result.sampling,
                "source_chars": doc["chars"],
                "input_chars": len(doc["input"]),
                "copy_overlap": round(overlap, 4),
                "finish_reason": result.finish_reasons[0],
            }
            rows.append(
                empty_document(
                    id="synth-" + record_id(method, doc["id"], style, text),
                    text=text,
                    url=doc.get("url"),
                    source=f"synthetic:rephrase:{style}",
                    domain="synthetic",
                    lang=doc["lang"],
                    metadata=json.dumps(metadata, sort_keys=True, ensure_ascii=False),
                )
            )
        by_style = {s: sum(r["source"].endswith(":" + s) for r in rows) for s in cfg.styles}
        return chunk_outcome(len(chunk), len(chunk) * len(cfg.styles), rows, rejects, accepted_by_style=by_style)

    return process


def run_rephrase(
    generator: Generator,
    out_dir: str,
    config: RephraseConfig | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Rephrase a sample of ``config.input_dir`` into the stage folder ``out_dir``; returns the stage summary."""
    cfg = config or RephraseConfig()
    docs, scan = sample_documents(
        cfg.input_dir, cfg.num_documents, cfg.seed,
        min_chars=cfg.min_chars, exclude_domains=cfg.exclude_domains, languages=cfg.languages, salt="rephrase",
    )  # fmt: skip
    items = []
    for doc in docs:
        rng = random.Random(f"rephrase-excerpt/{cfg.seed}/{doc['id']}")
        text = excerpt_of(doc["text"], cfg.max_input_chars, rng)
        items.append(
            {"id": doc["id"], "lang": doc["lang"], "input": text, "chars": len(doc["text"]), "url": doc["url"]}
        )
    stage_config = method_stage_config(
        "rephrase", cfg, generator, input=stage_fingerprint(cfg.input_dir), items=digest([i["id"] for i in items])
    )
    extra: dict[str, Any] = {"method": "rephrase", "model_id": generator.model_id, "input": cfg.input_dir, **scan}
    return run_chunked_stage(
        out_dir, stage_config, items, _chunk(generator, cfg), DOCUMENT_SCHEMA,
        chunk_size=cfg.chunk_size, extra=extra, log=log,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """``python -m synth.rephrase``: the run options, then the settings of ``RephraseSettings``."""
    parser = ArgumentParser(prog="python -m synth.rephrase", description=__doc__)
    parser.add_argument("--input", required=True, help="DOCUMENT_SCHEMA stage folder (curated documents)")
    parser.add_argument("--output", required=True, help="stage folder to write")
    add_generator_args(parser)
    args, settings = parse_settings(settings_parser(RephraseSettings, parser=parser), argv)
    generator = make_cli_generator(args)
    try:
        summary = run_rephrase(
            generator, args.output, RephraseConfig(**settings.model_dump(), input_dir=args.input),
            log=lambda m: print(m, file=sys.stderr),
        )  # fmt: skip
    finally:
        generator.close()
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


__all__ = ["STYLES", "RephraseConfig", "check_rephrase", "copy_overlap", "rephrase_prompt", "run_rephrase"]

if __name__ == "__main__":
    raise SystemExit(main())
