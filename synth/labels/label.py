"""Teacher labels: a stratified, seeded sample of curated documents, each cut to an excerpt of a fixed number of
Qwen2 tokens, rated 0-5 by the teacher with the rubric of ``synth.labels.rubric`` (a scoring request: the expected
digit under the next-token distribution, no text parsing); a fixed share of the labels held out. A
``synth.records.run_chunked_stage`` stage folder of ``LABELS_SCHEMA`` rows (``python -m synth.labels label``)."""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa

from pipelines.readers import DEFAULT_MAX_DOC_BYTES, read_documents
from pipelines.settings import ArgumentParser, parse_settings, settings_parser
from pipelines.shards import (
    SUCCESS_FILE,
    expand_inputs,
    filesystem,
    iter_parquet_rows,
    join,
    list_shards,
    read_json,
)
from pipelines.tokenizer import tokenizer_identity
from synth.labels.rubric import RUBRIC_VERSION, SCORE_CHOICES, rubric_messages
from synth.llm.base import GenerationError, GenerationRequest, Generator, TeacherUnavailable
from synth.records import chunk_counters, record_id, rejected, run_chunked_stage
from synth.settings import LabelSettings

METHOD = "quality_label"
SPLITS = ("train", "heldout")


# Labels of the teacher (``label`` stage output).
#
# | column           | type          | meaning                                                               |
# |------------------|---------------|-----------------------------------------------------------------------|
# | id               | string        | the curated document's id                                             |
# | lang, domain, source | string    | copied from the document                                              |
# | text             | string        | the excerpt the teacher rated (first ``excerpt_tokens`` Qwen2 tokens)  |
# | text_chars       | int32         | characters of the whole document                                      |
# | score            | float32       | expected rating: sum of k * P(k) over k = 0..5                         |
# | label            | int8          | the most probable rating                                              |
# | probs            | list<float32> | P("0") .. P("5"), renormalised over the six digits                     |
# | choice_mass      | float32       | the teacher's total probability on the six digits before renormalising |
# | split            | string        | ``train`` or ``heldout`` (``heldout_ids``: smallest id hashes)        |
# | model, backend   | string        | the teacher and the backend that served it                            |
# | template_version | string        | ``RUBRIC_VERSION``                                                     |
LABELS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("lang", pa.string()),
        pa.field("domain", pa.string()),
        pa.field("source", pa.string()),
        pa.field("text", pa.string()),
        pa.field("text_chars", pa.int32()),
        pa.field("score", pa.float32()),
        pa.field("label", pa.int8()),
        pa.field("probs", pa.list_(pa.float32())),
        pa.field("choice_mass", pa.float32()),
        pa.field("split", pa.string()),
        pa.field("model", pa.string()),
        pa.field("backend", pa.string()),
        pa.field("template_version", pa.string()),
    ]
)


# -------------------------------------------------------------------------------------------------------- labels


def unit_hash(*parts: object) -> float:
    """A uniform number in [0, 1) from a hash of ``parts``."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_of(doc_id: str, heldout_share: float) -> str:
    """``heldout`` for a fixed ``heldout_share`` of ids (by hash, independent of the sample seed), else ``train``."""
    return "heldout" if unit_hash("quality-split", doc_id) < heldout_share else "train"


def heldout_ids(doc_ids: Sequence[str], heldout_share: float) -> set[str]:
    """The ``round(heldout_share * n)`` ids of ``doc_ids`` with the smallest split hash (the one ``split_of``
    thresholds): exactly the asked share, where a threshold on the hash gives a binomial count (80 labels at 0.3
    held out 14 instead of 24 on the demo crawl, and the agreement interval widened accordingly)."""
    ranked = sorted(set(doc_ids), key=lambda doc_id: (unit_hash("quality-split", doc_id), doc_id))
    return set(ranked[: round(heldout_share * len(ranked))])


SAMPLE_COLUMNS = ["id", "text", "lang", "domain", "source"]


def iter_documents(inputs: str | Sequence[str], columns: Sequence[str] = SAMPLE_COLUMNS) -> Iterator[dict]:
    """Stream documents (only ``columns``) from a stage folder, Parquet shards or any format ``read_documents``
    reads; unreadable records are skipped."""

    for path in expand_inputs(inputs):
        if path.endswith(".parquet"):
            for row in iter_parquet_rows(path, columns):
                if row.get("id") is not None and row.get("text"):
                    yield row
        else:
            for kind, row in read_documents(path, DEFAULT_MAX_DOC_BYTES):
                if kind == "doc" and row.get("text"):
                    yield {c: row.get(c) for c in columns}


def balanced_quotas(available: Mapping[str, int], total: int) -> dict[str, int]:
    """Split ``total`` over languages as evenly as their ``available`` counts allow (water-filling): each gets an
    equal share; what a small language cannot fill goes to the others."""
    quotas = dict.fromkeys(available, 0)
    remaining = min(total, sum(available.values()))
    open_ = sorted((lang for lang, n in available.items() if n > 0), key=lambda k: (-available[k], k))
    while remaining > 0 and open_:
        share = max(1, remaining // len(open_))
        for lang in list(open_):
            take = min(share, available[lang] - quotas[lang], remaining)
            quotas[lang] += take
            remaining -= take
            if quotas[lang] >= available[lang]:
                open_.remove(lang)
            if remaining == 0:
                break
    return {lang: n for lang, n in quotas.items() if n}


def allocate(sizes: Mapping[Any, int], caps: Mapping[Any, int], total: int, temperature: float = 1.0) -> dict[Any, int]:
    """Split ``total`` over keys in proportion to ``sizes[key] ** (1 / temperature)`` (1: proportional; larger:
    flatter; ``math.inf``: equal shares), no key above ``caps[key]``; every key with room gets one first when
    ``total`` allows, the rest goes by shares (largest remainders last), and what a full key cannot take goes to the
    others."""
    open_ = sorted(k for k in sizes if caps.get(k, 0) > 0)
    quotas = dict.fromkeys(open_, 0)
    remaining = min(total, sum(caps[k] for k in open_))
    if remaining >= len(open_):
        quotas = dict.fromkeys(open_, 1)
        remaining -= len(open_)

    def weight(key: Any) -> float:
        return 1.0 if math.isinf(temperature) else max(sizes[key], 1) ** (1.0 / temperature)

    while remaining > 0:
        open_ = [k for k in open_ if quotas[k] < caps[k]]
        total_weight = sum(weight(k) for k in open_)
        shares = {k: remaining * weight(k) / total_weight for k in open_}
        give = {k: min(int(shares[k]), caps[k] - quotas[k]) for k in open_}
        if not any(give.values()):  # every share below one: the largest remainders get one each
            for k in sorted(open_, key=lambda k: (-shares[k], k))[:remaining]:
                give[k] = 1
        for k, n in give.items():
            quotas[k] += n
            remaining -= n
    return {k: n for k, n in quotas.items() if n}


def stratified_quotas(
    sizes: Mapping[tuple[str, str], int],
    caps: Mapping[tuple[str, str], int],
    total: int,
    temperature: float = 1.0,
) -> dict[tuple[str, str], int]:
    """Split ``total`` over (language, domain) strata of ``sizes`` documents, at most ``caps`` each: first over
    languages, then each language's share over its domains, both by ``allocate`` at ``temperature``."""
    by_lang: dict[str, dict[str, tuple[int, int]]] = {}
    for (lang, domain), n in sizes.items():
        by_lang.setdefault(lang, {})[domain] = (n, caps.get((lang, domain), 0))
    lang_quotas = allocate(
        {lang: sum(n for n, _ in d.values()) for lang, d in by_lang.items()},
        {lang: sum(c for _, c in d.values()) for lang, d in by_lang.items()},
        total,
        temperature,
    )
    return {
        (lang, domain): n
        for lang, quota in lang_quotas.items()
        for domain, n in allocate(
            {d: n for d, (n, _) in by_lang[lang].items()},
            {d: c for d, (_, c) in by_lang[lang].items()},
            quota,
            temperature,
        ).items()
    }


EXCERPT_CHARS_PER_TOKEN = 16
"""Documents are cut to ``excerpt_tokens`` x this many characters before tokenizing (no Qwen2 token is longer on
average over a whole excerpt), so a huge document costs no more to cut than a short one."""


def excerpts(texts: Sequence[str], tokens: int, max_chars: int | None = None) -> list[str]:
    """Each text cut to its first ``tokens`` Qwen2 tokens (and ``max_chars`` characters, if given): at the end of
    the character span of the last token kept, so no character is split."""
    from pipelines.tokenizer import load_tokenizer

    limit = tokens * EXCERPT_CHARS_PER_TOKEN if max_chars is None else min(max_chars, tokens * EXCERPT_CHARS_PER_TOKEN)
    cut = [text[:limit] for text in texts]
    encodings = load_tokenizer().encode_batch(cut, add_special_tokens=False) if cut else []
    return [
        text[: enc.offsets[tokens - 1][1]] if len(enc.offsets) > tokens else text for text, enc in zip(cut, encodings)
    ]


def _stratum(doc: Mapping[str, Any]) -> tuple[str, str]:
    return doc.get("lang") or "unknown", doc.get("domain") or "unknown"


def sample_documents(
    inputs: str | Sequence[str],
    sample_size: int,
    seed: int = 0,
    max_doc_chars: int | None = None,
    excerpt_tokens: int | None = None,
    temperature: float = 1.0,
) -> tuple[list[dict], dict]:
    """A deterministic sample stratified by language and domain: per (language, domain) stratum the documents with
    the smallest hash of (seed, id), as many as ``stratified_quotas`` gives the stratum at ``temperature``.
    Two streaming passes: the first keeps only (hash, id, position) per candidate, so memory is bounded by strata x
    ``sample_size`` small tuples whatever the documents' size; the second collects the chosen documents, cut to
    ``excerpt_tokens`` Qwen2 tokens and/or ``max_doc_chars`` characters (neither: whole). Returns (documents in
    hash order, sampling counters)."""
    heaps: dict[tuple[str, str], list] = {}
    seen: Counter = Counter()
    for n, doc in enumerate(iter_documents(inputs, ["id", "text", "lang", "domain"])):
        stratum = _stratum(doc)
        seen[stratum] += 1
        key = unit_hash("quality-sample", seed, doc["id"])
        heap = heaps.setdefault(stratum, [])
        item = (-key, str(doc["id"]), n)
        if len(heap) < sample_size:
            heapq.heappush(heap, item)
        elif -heap[0][0] > key:
            heapq.heapreplace(heap, item)
    quotas = stratified_quotas(seen, {stratum: len(h) for stratum, h in heaps.items()}, sample_size, temperature)
    chosen: dict[int, tuple[float, str]] = {}
    for stratum, quota in quotas.items():
        for neg_key, doc_id, n in sorted(heaps[stratum], key=lambda item: (-item[0], item[1]))[:quota]:
            chosen[n] = (-neg_key, doc_id)
    picked: list[tuple[float, dict]] = []
    for n, doc in enumerate(iter_documents(inputs)):
        if n not in chosen:
            continue
        key, doc_id = chosen[n]
        if str(doc["id"]) != doc_id:
            raise ValueError(f"{inputs} changed while it was sampled (document {n} is now {doc['id']!r}): rerun")
        text = doc["text"]
        slim = {
            "id": doc_id,
            "lang": doc.get("lang"),
            "domain": doc.get("domain"),
            "source": doc.get("source"),
            "text": text if max_doc_chars is None else text[:max_doc_chars],
            "text_chars": len(text),
        }
        picked.append((key, slim))
        if len(picked) == len(chosen):
            break
    if excerpt_tokens is not None:
        for (_, doc), text in zip(picked, excerpts([d["text"] for _, d in picked], excerpt_tokens, max_doc_chars)):
            doc["text"] = text
    picked.sort(key=lambda pair: (pair[0], pair[1]["id"]))
    seen_by_lang: Counter = Counter()
    for (lang, _), n in seen.items():
        seen_by_lang[lang] += n
    by_lang: Counter = Counter()
    by_domain: Counter = Counter()
    for (lang, domain), quota in quotas.items():
        by_lang[lang] += quota
        by_domain[domain] += quota
    stats = {
        "documents_seen": sum(seen.values()),
        "seen_by_lang": dict(sorted(seen_by_lang.items())),
        "sample_by_lang": dict(sorted(by_lang.items())),
        "sample_by_domain": dict(sorted(by_domain.items())),
        "sample_by_stratum": {f"{lang}/{domain}": n for (lang, domain), n in sorted(quotas.items())},
    }
    return [doc for _, doc in picked], stats


def expected_score(probs: Sequence[float], classes: Sequence[int | str] = SCORE_CHOICES) -> float:
    """sum of k * P(k), with P renormalised (0 when there is no mass)."""
    mass = float(sum(probs))
    if mass <= 0:
        return 0.0
    return float(sum(float(p) * int(c) for p, c in zip(probs, classes)) / mass)


def label_documents(
    generator: Generator,
    docs_dir: str,
    out_dir: str,
    config: LabelSettings | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Rate a seeded sample of the documents under ``docs_dir`` with ``generator`` (the teacher) into ``out_dir``
    (``LABELS_SCHEMA`` rows, ``off_format`` rejections in ``excluded/``); returns the stage summary."""
    config = config or LabelSettings()
    items, sampling = sample_documents(
        docs_dir, config.sample_size, config.seed, config.max_doc_chars, config.excerpt_tokens, config.temperature
    )
    if not items:
        raise ValueError(f"no documents with text under {docs_dir}")
    held = heldout_ids([doc["id"] for doc in items], config.heldout_share)
    items = [{**doc, "split": "heldout" if doc["id"] in held else "train"} for doc in items]

    run = {"teacher_requests": 0, "teacher_seconds": 0.0}  # this run only: not in the stage's summary or markers

    def process(chunk: list[Mapping[str, Any]]):
        requests = [
            GenerationRequest(
                rubric_messages(doc["text"], doc.get("lang"), doc.get("domain")),
                choices=SCORE_CHOICES,
                template_version=RUBRIC_VERSION,
            )
            for doc in chunk
        ]
        rows, rejected_rows = [], []
        labels: Counter = Counter()
        splits: Counter = Counter()
        languages: Counter = Counter()
        domains: Counter = Counter()
        started = time.perf_counter()
        results = generator.generate(requests)  # the whole chunk in one call: the backend batches it
        answered = sum(not r.cached for r in results)
        if answered:
            run["teacher_requests"] += answered
            run["teacher_seconds"] += time.perf_counter() - started
        for doc, result in zip(chunk, results):
            mass = float(result.choice_mass or 0.0)
            if result.choice_probs is None or mass < config.min_choice_mass:
                detail = {"choice_mass": mass, "min_choice_mass": config.min_choice_mass, "answer": result.texts[0]}
                rejected_rows.append(
                    rejected(METHOD, doc["id"], "off_format", detail, doc["text"], id=record_id(METHOD, doc["id"]))
                )
                continue
            probs = [float(p) for p in result.choice_probs]
            label = max(range(len(probs)), key=lambda k: probs[k])
            split = doc["split"]
            rows.append(
                {
                    **{k: doc[k] for k in ("id", "lang", "domain", "source", "text", "text_chars")},
                    "score": expected_score(probs),
                    "label": int(SCORE_CHOICES[label]),
                    "probs": probs,
                    "choice_mass": mass,
                    "split": split,
                    "model": result.model_id,
                    "backend": result.backend,
                    "template_version": result.template_version,
                }
            )
            labels[SCORE_CHOICES[label]] += 1
            splits[split] += 1
            languages[doc.get("lang") or "unknown"] += 1
            domains[doc.get("domain") or "unknown"] += 1
        stats = chunk_counters(len(chunk), len(chunk), len(rows), rejected_rows)
        stats.update(labels=dict(labels), splits=dict(splits), languages=dict(languages), domains=dict(domains))
        stats["score_sum"] = round(sum(r["score"] for r in rows), 6)
        stats["prompt_tokens"] = sum(r.prompt_tokens for r in results)
        return rows, rejected_rows, stats

    stage_config = {
        "method": METHOD,
        "rubric_version": RUBRIC_VERSION,
        "model": generator.model_id,
        "config": config.model_dump(),
        "excerpt_tokenizer": tokenizer_identity(),  # another tokenizer cuts other excerpts
    }
    extra = {
        "docs_dir": docs_dir,
        "model": generator.model_id,
        "backend": generator.backend,
        "rubric_version": RUBRIC_VERSION,
        "min_choice_mass": config.min_choice_mass,
        "excerpt_tokens": config.excerpt_tokens,
        **sampling,
    }
    summary = run_chunked_stage(
        out_dir, stage_config, items, process, LABELS_SCHEMA, chunk_size=config.chunk_size, extra=extra, log=log
    )
    # How fast this run's teacher rated (None when the cache answered everything): returned, not written into the
    # stage's summary, which says only what the stage produced, so a resumed run's output equals an uninterrupted one's.
    asked, seconds = run["teacher_requests"], run["teacher_seconds"]
    summary.update(run, labels_per_minute=round(60 * asked / seconds, 2) if asked and seconds else None)
    summary["teacher_seconds"] = round(seconds, 2)
    samples = summary.get("samples", 0)
    summary["mean_prompt_tokens"] = round(summary.get("prompt_tokens", 0) / samples, 1) if samples else None
    return summary


def read_labels(labels_dir: str) -> list[dict]:
    """The rows of a finished label stage (small by construction: ``sample_size`` rows)."""
    import pyarrow.parquet as pq

    if read_json(join(labels_dir, SUCCESS_FILE)) is None:
        raise ValueError(f"{labels_dir} is not a finished label stage (no {SUCCESS_FILE}): run `label` first")
    rows = []
    for path in list_shards(labels_dir):
        fs, fpath = filesystem(path)
        with fs.open(fpath, "rb") as f:
            rows += pq.read_table(f, schema=LABELS_SCHEMA).to_pylist()
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python -m synth.labels label``: the run options, then the settings of ``LabelSettings``."""
    from synth.sft.common import add_generator_args, make_cli_generator

    parser = ArgumentParser(prog="python -m synth.labels label", description=__doc__)
    parser.add_argument("--docs", required=True, help="curated stage folder (DOCUMENT_SCHEMA shards)")
    parser.add_argument("--out", required=True, help="label stage folder")
    add_generator_args(parser)
    args, settings = parse_settings(settings_parser(LabelSettings, parser=parser), argv)
    try:
        generator = make_cli_generator(args, args.out)
        try:
            summary = label_documents(generator, args.docs, args.out, settings)
        finally:
            generator.close()
    except (GenerationError, TeacherUnavailable, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=1, ensure_ascii=False, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
