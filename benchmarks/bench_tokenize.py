"""Tokenize-and-pack throughput: our per-shard packer vs the tokenizer library's raw ``encode_batch``.

    python benchmarks/bench_tokenize.py [--mb 8] [--seq-len 4096] [--repeats 3] [--workdir DIR]

Peer: ``tokenizers.Tokenizer.encode_batch`` called once on all texts, already in memory (the Rust BPE with its
own threads; nothing else). Target: ours >= 0.8x its tokens/s. Ours calls ``encode_batch_fast`` (the same ids
without character offsets), so that is timed too: it is the real ceiling, packing can only add work to it.

Ours: ``ShardPacker.pack_shard`` + ``ShardStage.write_table`` on one Parquet mixture shard holding the same texts,
i.e. read the shard in record batches, tokenize, append separators, cut into rows of --seq-len, shuffle, write zstd
Parquet.
Both run in this one process on the same tokenizer object (same threads), alternating, --repeats times each; the
best time of each side is compared (the machine is shared, the minimum is the least disturbed run). tokens/s
counts the documents' tokens on both sides (ours also writes one separator per document on top).

Then, separately, the whole Beam stage (``run_tokenize_stage``, start-up included) on the same texts dealt into
--shards shards, with 1 and 2 worker processes.

Data (about --mb MB of text, seeded sample): debian_reference and debian_faq (11 languages incl. ja/zh),
python_stdlib source files and fortunes (ru, de, en, es, it, pl, zh), from ../shared/corpora.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from contextlib import contextmanager

import pyarrow as pa
import pyarrow.parquet as pq
from _common import DEFAULT_CORPORA, make_workdir, print_table, read_corpus, warn_if_busy

from pipelines.schema import MIXED_SCHEMA, empty_document
from pipelines.shards import ShardStage, shard_key
from pipelines.tokenize_shards import ShardPacker, row_group_rows, run_tokenize_stage

SHARES = {"debian_reference": 0.45, "debian_faq": 0.15, "python_stdlib": 0.25, "fortunes": 0.15}


def sample_texts(corpora: str, megabytes: float, seed: int) -> list[dict]:
    """About ``megabytes`` MB of UTF-8 text, each corpus contributing its share, in a seeded random order."""
    rng = random.Random(seed)
    docs = []
    for name, share in SHARES.items():
        budget = megabytes * 1e6 * share
        pool = read_corpus(corpora, name)
        rng.shuffle(pool)
        for doc in pool:
            if budget <= 0:
                break
            budget -= len(doc["text"].encode())
            docs.append(doc)
    rng.shuffle(docs)
    return docs


def write_mixture(docs: list[dict], folder: str, shards: int) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths = []
    for s in range(shards):
        rows = []
        for doc in docs[s::shards]:
            lang = "code" if doc["lang"].startswith("code") else doc["lang"]
            domain = "code" if lang == "code" else "web"
            row = empty_document(id=doc["id"], text=doc["text"], lang=lang, source=doc["source"], domain=domain)
            row.update(bucket=f"{domain}/{lang}", copy=0)
            rows.append(row)
        paths.append(os.path.join(folder, f"part-{s:05d}.parquet"))
        pq.write_table(pa.Table.from_pylist(rows, schema=MIXED_SCHEMA), paths[-1])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=8.0, help="megabytes of text (default 8)")
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each side (default 3)")
    parser.add_argument("--shards", type=int, default=4, help="shards for the Beam stage runs (default 4)")
    parser.add_argument("--no-beam", action="store_true", help="skip the whole-stage Beam runs")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--corpora", default=str(DEFAULT_CORPORA))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    workdir = make_workdir(args.workdir, "bench-tokenize")
    docs = sample_texts(args.corpora, args.mb, args.seed)
    texts = [d["text"] for d in docs]
    [shard] = write_mixture(docs, os.path.join(workdir, "one"), 1)
    print(f"{len(texts):,} documents, {sum(len(t.encode()) for t in texts) / 1e6:.1f} MB of text; workdir {workdir}")

    packer = ShardPacker(args.seq_len, seed=args.seed)
    tokenizer = packer.tokenizer
    out_dir = os.path.join(workdir, "packed")
    tokenizer.encode_batch(texts[:64], add_special_tokens=False)  # start the thread pool outside the timings
    warn_if_busy()

    runs: dict[str, list[tuple[float, float]]] = {"raw": [], "raw_fast": [], "ours": []}  # (wall s, CPU s)
    doc_tokens = 0
    stats: dict = {}
    for _ in range(args.repeats):
        started, cpu = time.perf_counter(), time.process_time()
        encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
        runs["raw"].append((time.perf_counter() - started, time.process_time() - cpu))
        doc_tokens = sum(len(e.ids) for e in encodings)
        del encodings

        started, cpu = time.perf_counter(), time.process_time()
        encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        runs["raw_fast"].append((time.perf_counter() - started, time.process_time() - cpu))
        assert sum(len(e.ids) for e in encodings) == doc_tokens
        del encodings

        started, cpu = time.perf_counter(), time.process_time()
        table, stats = packer.pack_shard(shard, shard_key(shard))
        ShardStage(out_dir, {}).write_table(shard_key(shard), table, row_group_size=row_group_rows(args.seq_len))
        runs["ours"].append((time.perf_counter() - started, time.process_time() - cpu))
        del table

    assert stats["tokens"] + stats["tokens_dropped_tail"] == doc_tokens + stats["docs_out"], "sides disagree"
    best = {side: min(wall for wall, _ in r) for side, r in runs.items()}
    cpu = {side: min(c for _, c in r) for side, r in runs.items()}
    rate = {side: doc_tokens / best[side] for side in best}
    names = {"raw": "raw encode_batch", "raw_fast": "raw encode_batch_fast", "ours": "ours pack_shard+write"}
    print_table(
        ["side", "doc tokens", "best wall s", "tokens/s", "best CPU s", "tokens/CPU s", "all runs wall s"],
        [
            [
                names[side],
                doc_tokens,
                round(best[side], 2),
                round(rate[side]),
                round(cpu[side], 2),
                round(doc_tokens / cpu[side]),
                " ".join(f"{wall:.2f}" for wall, _ in runs[side]),
            ]
            for side in runs
        ],
    )
    ratio = rate["ours"] / rate["raw"]
    cpu_ratio = cpu["raw"] / cpu["ours"]
    print(
        f"ours / raw encode_batch: {ratio:.2f}x by wall time, {cpu_ratio:.2f}x by CPU time (target >= 0.8); "
        f"ours / raw encode_batch_fast (what ours calls): {rate['ours'] / rate['raw_fast']:.2f}x by wall time, "
        f"{cpu['raw_fast'] / cpu['ours']:.2f}x by CPU time; "
        f"{stats['sequences']:,} rows of {args.seq_len}, {stats['docs_out']:,} separators"
    )

    beam_rows = []
    if not args.no_beam:
        mixture = os.path.join(workdir, "mixture")
        write_mixture(docs, mixture, args.shards)
        for workers in (1, 2):
            started = time.perf_counter()
            with stderr_to(os.path.join(workdir, "beam.log")):  # the SDK workers' start-up chatter
                run_tokenize_stage(mixture, os.path.join(workdir, f"stage-w{workers}"), args.seq_len, workers=workers)
            seconds = time.perf_counter() - started
            beam_rows.append([f"Beam stage, {workers} worker(s)", args.shards, seconds, round(doc_tokens / seconds)])
        print()
        print_table(["run", "shards", "wall s", "doc tokens/s"], beam_rows)

    beam = "; ".join(f"{row[0]} {row[2]:.1f} s" for row in beam_rows)
    print(
        f"\nRESULT tokenize: ours {rate['ours']:,.0f} tokens/s, raw encode_batch {rate['raw']:,.0f} tokens/s, "
        f"ratio {ratio:.2f}x (CPU time {cpu_ratio:.2f}x)" + (f"; {beam}" if beam else "")
    )


@contextmanager
def stderr_to(path: str):
    """Point file descriptor 2 (inherited by Beam's worker processes) at ``path`` for a while."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "a") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


if __name__ == "__main__":
    main()
