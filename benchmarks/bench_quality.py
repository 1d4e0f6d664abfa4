"""Quality scoring throughput: the fastText classifier vs the teacher rating each document (``synth.labels``).

    python benchmarks/bench_quality.py [--teacher-docs 16] [--docs 3000] [--threads 2] [--no-stage]
        [--excerpt-tokens 256] [--baseline-chars 800]

Documents: a seeded sample of ``--docs`` from the prepared corpora in ../shared/corpora (every corpus with a
``text`` field, an equal share from each, python_stdlib as ``code``), else the demo's curated stage
(``$QWEN2_DATA_ROOT/curated/dedup``). The teacher rates the first ``--teacher-docs`` of them.

Teacher: the default CPU teacher (Qwen2.5-Coder-0.5B-Instruct, fp32, ``synth.llm.teacher.teacher_path()``; the tiny
random Qwen2 when it is not set up, said so) rating each document exactly as ``synth.labels.label.label_documents``
does: the rubric prompt in the document's language, documents cut to their first ``--excerpt-tokens`` Qwen2 tokens
(``synth.labels.label.excerpts``), one scoring request (``choices`` "0".."5": one forward pass, no generation) per
document, all of them in one ``generate`` call that ``TransformersGenerator`` runs in batches of ``--batch-size``
sorted by length. With ``--baseline-chars N`` the same documents are rated again cut to their first N characters
(how labelling cut them before excerpts were counted in tokens; 0 skips it): labels/minute side by side. One
warm-up request first; model loading is reported, not timed; wall and CPU time (of this process) are both shown,
CPU time being the steadier on a shared machine.

fastText: trained on the teacher's labels of those documents (``train_classifier``, default config), then
``predict_scores`` (normalisation + one batched ``predict(k=-1)`` + expected value) over all ``--docs`` documents
in batches of 256, as the Beam stage's ``QualityScorer`` calls it; single process, no I/O. Also timed on the
teacher's documents alone (repeated to last at least a second). Unless ``--no-stage``: the whole
``score_and_tier`` (documents written as a DOCUMENT_SCHEMA stage folder; Beam scoring stage + tier pass,
``--workers`` processes, start-up included), as an end-to-end figure.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_CORPORA = REPO.parent / "shared" / "corpora"
SKIP_CORPORA = {"chatterbot_sft"}  # conversations, not documents


def load_documents(corpora: Path, count: int, seed: int) -> tuple[list[dict], str]:
    """``count`` documents, an equal share from each corpus (seeded), shuffled: (documents, where from)."""
    files = sorted(p for p in corpora.glob("*.jsonl.gz") if p.name.split(".")[0] not in SKIP_CORPORA)
    if files:
        rng = random.Random(seed)
        pools = []
        for path in files:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                rows = [json.loads(line) for line in f]
            rows = [r for r in rows if isinstance(r.get("text"), str) and r["text"].strip()]
            rng.shuffle(rows)
            code = path.name.startswith("python_stdlib")
            for r in rows:
                r["id"] = f"{path.name.split('.')[0]}:{r['id']}"
                r["domain"] = "code" if code else "web"
                r["lang"] = "code" if code else r.get("lang")
            pools.append(rows)
        docs, share = [], -(-count // len(pools))
        for rows in pools:
            docs += rows[:share]
        leftovers = [r for rows in pools for r in rows[share:]]
        docs += leftovers[: max(0, count - len(docs))]
        rng.shuffle(docs)
        return docs[:count], f"{len(files)} corpora in {corpora}"
    from synth.labels.label import iter_documents

    stage = Path(os.environ.get("QWEN2_DATA_ROOT", REPO / "data")) / "curated" / "dedup"
    docs = list(iter_documents(str(stage)))
    random.Random(seed).shuffle(docs)
    return docs[:count], f"demo curated stage {stage}"


def teacher_folder(tmp: Path) -> tuple[str, str]:
    from synth.llm.teacher import is_set_up, teacher_path

    if is_set_up():
        return teacher_path(), "teacher Qwen2.5-Coder-0.5B-Instruct (fp32)"
    import torch
    from transformers import AutoModelForCausalLM

    from pipelines.tokenizer import load_hf_tokenizer
    from training.model_configs import qwen2_config

    print("the teacher is not set up (python -m synth.llm.teacher): using the tiny random Qwen2 instead")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(qwen2_config("tiny")).save_pretrained(tmp)
    load_hf_tokenizer().save_pretrained(tmp)
    return str(tmp), "tiny random Qwen2 (fp32)"


def write_stage(folder: Path, rows: list[dict], schema, shards: int = 4) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.shards import write_json_atomic

    (folder / "data").mkdir(parents=True)
    for k in range(shards):
        part = [{name: row.get(name) for name in schema.names} for row in rows[k::shards]]
        pq.write_table(pa.Table.from_pylist(part, schema=schema), folder / "data" / f"part-{k:05d}.parquet")
    write_json_atomic(str(folder / "_config.json"), {"stage": "bench"})
    write_json_atomic(str(folder / "_SUCCESS.json"), {"docs_out": len(rows)})
    return str(folder)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher-docs", type=int, default=16, help="documents the teacher rates (default 16)")
    parser.add_argument("--docs", type=int, default=3000, help="documents fastText scores (default 3000)")
    parser.add_argument("--excerpt-tokens", type=int, default=256, help="tokens of each document rated (256)")
    parser.add_argument(
        "--baseline-chars", type=int, default=800, help="also rate documents cut to N characters (800; 0: skip)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="teacher batch size (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="Beam workers of the end-to-end stage (default 2)")
    parser.add_argument("--no-stage", action="store_true", help="skip the end-to-end score_and_tier run")
    parser.add_argument("--corpora", default=str(DEFAULT_CORPORA))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch
    from _common import warn_if_busy
    from transformers.utils import logging as hf_logging

    from pipelines.schema import DOCUMENT_SCHEMA
    from synth.labels.classifier import _load_fasttext, class_values, predict_scores, train_classifier
    from synth.labels.label import LABELS_SCHEMA, excerpts, expected_score, split_of
    from synth.labels.rubric import RUBRIC_VERSION, SCORE_CHOICES, rubric_messages
    from synth.labels.tiers import score_and_tier
    from synth.llm.backends import TransformersGenerator
    from synth.llm.base import GenerationRequest

    hf_logging.disable_progress_bar()
    warn_if_busy()
    torch.set_num_threads(args.threads)
    docs, origin = load_documents(Path(args.corpora), max(args.docs, args.teacher_docs), args.seed)
    rated = docs[: args.teacher_docs]
    print(f"documents: {len(docs)} from {origin}; languages {sorted({d.get('lang') or '?' for d in docs})}")

    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        tmp = Path(tmp)
        folder, described = teacher_folder(tmp / "tiny")
        started = time.perf_counter()
        teacher = TransformersGenerator(folder, batch_size=args.batch_size)
        load_s = time.perf_counter() - started

        def rate(texts: list[str]) -> tuple[float, float, list]:
            """(wall s, CPU s, results) of the teacher rating ``texts`` as label_documents does: one call."""
            requests = [
                GenerationRequest(
                    rubric_messages(text, d.get("lang"), d.get("domain")),
                    choices=SCORE_CHOICES,
                    template_version=RUBRIC_VERSION,
                )
                for text, d in zip(texts, rated)
            ]
            wall, cpu = time.perf_counter(), time.process_time()
            results = teacher.generate(requests)
            return time.perf_counter() - wall, time.process_time() - cpu, results

        rate(["warm up"])
        texts = excerpts([d["text"] for d in rated], args.excerpt_tokens)
        teacher_s, teacher_cpu_s, results = rate(texts)
        teacher_rate = len(rated) / teacher_s
        masses = [r.choice_mass or 0.0 for r in results]
        print(
            f"teacher: {described}, loaded in {load_s:.1f} s, {args.threads} threads, batch {args.batch_size}; "
            f"digit mass mean {statistics.mean(masses):.3f}, min {min(masses):.3f}"
        )
        label_rows = [
            (
                f"{args.excerpt_tokens}-token excerpts (label_documents)",
                results,
                teacher_s,
                teacher_cpu_s,
            )
        ]
        if args.baseline_chars:
            base_s, base_cpu_s, base = rate([d["text"][: args.baseline_chars] for d in rated])
            label_rows.append((f"first {args.baseline_chars} characters (before)", base, base_s, base_cpu_s))
        print("| teacher input | labels | prompt tokens mean [min, max] | wall s | labels/min | labels/CPU-min |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name, res, wall, cpu in label_rows:
            tokens = [r.prompt_tokens for r in res]
            print(
                f"| {name} | {len(res)} | {statistics.mean(tokens):.0f} [{min(tokens)}, {max(tokens)}] | {wall:.1f} | "
                f"{60 * len(res) / wall:.2f} | {60 * len(res) / cpu:.2f} |"
            )

        # fastText trained on those labels (all in the train split: this measures speed, not agreement)
        labels = []
        for doc, text, result in zip(rated, texts, results):
            probs = result.choice_probs or [1 / 6] * 6
            labels.append(
                {
                    **{k: doc.get(k) for k in ("id", "lang", "domain", "source")},
                    "text": text,
                    "text_chars": len(doc["text"]),
                    "score": expected_score(probs),
                    "label": max(range(6), key=lambda k: probs[k]),
                    "probs": probs,
                    "choice_mass": result.choice_mass or 0.0,
                    "split": split_of(doc["id"], 0.0),
                    "model": result.model_id,
                    "backend": result.backend,
                    "template_version": RUBRIC_VERSION,
                }
            )
        print(
            f"teacher labels: {dict(sorted({str(k): [r['label'] for r in labels].count(k) for k in range(6)}.items()))}"
        )
        labels_dir = write_stage(tmp / "labels", labels, LABELS_SCHEMA, shards=1)
        metrics = train_classifier(labels_dir, str(tmp / "classifier"))
        model = _load_fasttext(str(tmp / "classifier" / "model.bin"))
        max_chars, values = metrics["config"]["max_chars"], class_values(metrics)
        predict_scores(model, [d["text"] for d in docs[:256]], max_chars, values)  # warm-up

        started = time.perf_counter()
        for start in range(0, len(docs), 256):
            predict_scores(model, [d["text"] for d in docs[start : start + 256]], max_chars, values)
        fasttext_s = time.perf_counter() - started
        fasttext_rate = len(docs) / fasttext_s

        rounds, started = 0, time.perf_counter()
        while time.perf_counter() - started < 1.0:
            predict_scores(model, [d["text"] for d in rated], max_chars, values)
            rounds += 1
        same_s = time.perf_counter() - started
        same_rate = rounds * len(rated) / same_s

        rows = [
            (f"teacher ({described}), scoring request per doc", len(rated), teacher_s, teacher_rate),
            ("fastText predict_scores, the teacher's documents", rounds * len(rated), same_s, same_rate),
            ("fastText predict_scores, all documents", len(docs), fasttext_s, fasttext_rate),
        ]
        if not args.no_stage:
            for d in docs:
                d.setdefault("source", "bench")
            docs_dir = write_stage(tmp / "docs", docs, DOCUMENT_SCHEMA)
            started = time.perf_counter()
            score_and_tier(
                docs_dir, str(tmp / "classifier"), str(tmp / "scored"), str(tmp / "tiers"), workers=args.workers
            )
            stage_s = time.perf_counter() - started
            name = f"score_and_tier end to end (Beam, {args.workers} workers, start-up included)"
            rows.append((name, len(docs), stage_s, len(docs) / stage_s))

    print("| side | documents | seconds | docs/s | vs teacher |")
    print("| --- | --- | --- | --- | --- |")
    for name, n, seconds, rate in rows:
        print(f"| {name} | {n} | {seconds:.2f} | {rate:,.1f} | {rate / teacher_rate:,.0f}x |")
    print(
        f"RESULT teacher_docs_per_s={teacher_rate:.3f} fasttext_docs_per_s={fasttext_rate:.1f} "
        f"ratio={fasttext_rate / teacher_rate:.0f} "
        + " ".join(f"labels_per_min[{name}]={60 * len(res) / wall:.2f}" for name, res, wall, _ in label_rows)
    )


if __name__ == "__main__":
    main()
