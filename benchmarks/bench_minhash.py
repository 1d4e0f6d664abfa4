"""MinHash dedup end to end: ours vs datatrove's four MinHash stages; then the quality of the clusters.

    python benchmarks/bench_minhash.py [--limit 1465] [--shards 8] [--workers 2] [--no-faq] [--workdir DIR]

Input: instguide_amd64 + instguide_i386 (the same manual for two architectures: identical and near-duplicate
pages) and debian_faq (non-duplicates; --no-faq leaves it out), the first --limit documents of each corpus,
shuffled into --shards JSONL.gz shards.

Ours: ``pipelines.dedup.run(workers=--workers, config=DedupConfig(bands=14, rows=8, ngram=5))``: exact and MinHash-LSH
dedup in one Beam pipeline.

Peer: datatrove MinhashDedupSignature -> MinhashDedupBuckets -> MinhashDedupCluster -> MinhashDedupFilter with
``MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8)``, one LocalPipelineExecutor per stage run one after
the other as in datatrove's examples/minhash_deduplication.py: tasks = --shards for signatures and filter, 14 (one
per bucket) for buckets, 1 for clustering; workers = --workers. Cluster ids are saved and loaded
(``save_cluster_id`` / ``load_cluster_ids``) so its clusters can be scored too.

Measured: seconds (inside the side's process, imports excluded) and peak memory: the sum of RSS over the side's
process tree, sampled every 50 ms; each side runs in its own child process (target: ours no slower, no larger).

Quality: the true Jaccard similarity of the 5-gram word shingle sets (``pipelines.dedup.shingles``) of every pair of
documents with the same declared ``lang``. Recall = share of the pairs with Jaccard >= 0.8 that end in one cluster;
false merges = pairs in one cluster (any language) with Jaccard < 0.5 (target: recall >= 95%, no false merges).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import time
from collections import defaultdict

from _common import (
    arg_parser,
    jsonl_rows,
    make_workdir,
    parquet_rows,
    print_table,
    read_corpus,
    run_side,
    save_result,
    warn_if_busy,
    write_shards,
)

NGRAM, BANDS, ROWS = 5, 14, 8
BINS = [(0.8, 1.01, ">= 0.8"), (0.5, 0.8, "0.5 - 0.8"), (0.0, 0.5, "< 0.5")]


def corpora(args) -> list[str]:
    return ["instguide_amd64", "instguide_i386"] + (["debian_faq"] if args.faq else [])


def input_docs(args) -> list[dict]:
    return [doc for name in corpora(args) for doc in read_corpus(args.corpora, name)[: args.limit]]


def run_ours(args) -> tuple[float, dict[str, str]]:
    from pipelines.dedup import DedupConfig, run

    out = os.path.join(args.workdir, "ours")
    started = time.time()
    run(
        os.path.join(args.workdir, "input", "*.jsonl.gz"),
        out,
        workers=args.workers,
        config=DedupConfig(bands=BANDS, rows=ROWS, ngram=NGRAM),
    )
    seconds = time.time() - started
    rows = parquet_rows(f"{out}/data", ["id", "dup_cluster"]) + parquet_rows(f"{out}/excluded", ["id", "dup_cluster"])
    return seconds, {r["id"]: r["dup_cluster"] for r in rows}


def run_datatrove(args) -> tuple[float, dict[str, str]]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    out, inputs = os.path.join(args.workdir, "datatrove"), os.path.join(args.workdir, "input")
    config = MinhashConfig(n_grams=NGRAM, num_buckets=BANDS, hashes_per_bucket=ROWS)
    stages = [
        ([JsonlReader(inputs), MinhashDedupSignature(f"{out}/signatures", config=config)], args.shards),
        ([MinhashDedupBuckets(f"{out}/signatures", f"{out}/buckets", config=config)], config.num_buckets),
        ([MinhashDedupCluster(f"{out}/buckets", f"{out}/remove_ids", config=config, save_cluster_id=True)], 1),
        (
            [
                JsonlReader(inputs),
                MinhashDedupFilter(
                    f"{out}/remove_ids", exclusion_writer=JsonlWriter(f"{out}/removed"), load_cluster_ids=True
                ),
                JsonlWriter(f"{out}/deduped"),
            ],
            args.shards,
        ),
    ]
    started = time.time()
    for i, (pipeline, tasks) in enumerate(stages):
        LocalPipelineExecutor(
            pipeline, tasks=tasks, workers=min(tasks, args.workers), logging_dir=f"{out}/logs/stage{i + 1}"
        ).run()
    seconds = time.time() - started
    rows = jsonl_rows(f"{out}/deduped") + jsonl_rows(f"{out}/removed")
    clusters = {r["id"]: r["metadata"]["minhash_cluster_id"] for r in rows}  # -1: in no cluster
    return seconds, {i: i if c == -1 else f"cluster-{c}" for i, c in clusters.items()}


def jaccard(a: set, b: set) -> float:
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def score_clusters(docs: list[dict], clusterings: dict[str, dict[str, str]]) -> tuple[list[list], dict[str, float]]:
    """Pair counts per Jaccard bin (same-language pairs; merged pairs of each side, any language) and recall."""
    from pipelines.dedup import shingles

    sets = {d["id"]: shingles(d["text"], NGRAM) for d in docs}
    by_lang = defaultdict(list)
    for d in docs:
        by_lang[d["lang"]].append(d["id"])
    same_lang = {}
    for ids in by_lang.values():
        for a, b in itertools.combinations(sorted(ids), 2):
            same_lang[a, b] = jaccard(sets[a], sets[b])

    def merged(clusters: dict[str, str]) -> dict[tuple, float]:
        members = defaultdict(list)
        for doc_id, cluster in clusters.items():
            members[cluster].append(doc_id)
        pairs = [p for group in members.values() for p in itertools.combinations(sorted(group), 2)]
        return {p: same_lang[p] if p in same_lang else jaccard(sets[p[0]], sets[p[1]]) for p in pairs}

    merged_pairs = {side: merged(c) for side, c in clusterings.items()}
    rows = [
        [
            label,
            sum(lo <= j < hi for j in same_lang.values()),
            *(sum(lo <= j < hi for j in m.values()) for m in merged_pairs.values()),
        ]
        for lo, hi, label in BINS
    ]
    recall = {}
    similar = [p for p, j in same_lang.items() if j >= 0.8]
    for side, clusters in clusterings.items():
        recall[side] = sum(clusters[a] == clusters[b] for a, b in similar) / max(1, len(similar))
    return rows, recall


def main() -> None:
    parser = arg_parser(__doc__.splitlines()[0], limit=1465, shards=8, limit_help="documents from each corpus")
    parser.add_argument(
        "--faq", action=argparse.BooleanOptionalAction, default=True, help="add debian_faq as non-duplicates"
    )
    args = parser.parse_args()
    args.workdir = make_workdir(args.workdir, "bench_minhash")
    if args.side:
        seconds, clusters = {"ours": run_ours, "datatrove": run_datatrove}[args.side](args)
        save_result(args.workdir, args.side, {"seconds": seconds, "clusters": clusters})
        return

    for sub in ("input", "ours", "datatrove"):
        shutil.rmtree(os.path.join(args.workdir, sub), ignore_errors=True)
    docs = input_docs(args)
    write_shards(docs, os.path.join(args.workdir, "input"), args.shards, args.seed)
    argv = [f"--{k}={getattr(args, k)}" for k in ("limit", "shards", "workers", "corpora", "seed")]
    argv.append("--faq" if args.faq else "--no-faq")
    warn_if_busy()
    results = {side: run_side(__file__, side, argv, args.workdir) for side in ("ours", "datatrove")}
    clusterings = {side: r["clusters"] for side, r in results.items()}
    assert all(set(c) == {d["id"] for d in docs} for c in clusterings.values()), "a side lost documents"

    print(
        f"\nminhash: {len(docs):,} docs ({' + '.join(corpora(args))}) in {args.shards} shards, "
        f"{args.workers} workers, {NGRAM}-grams, {BANDS} bands x {ROWS} rows, workdir {args.workdir}\n"
    )
    print_table(
        ["side", "docs", "kept", "seconds", "docs/s", "peak RSS MB"],
        [
            [
                side,
                len(docs),
                len(set(r["clusters"].values())),
                r["seconds"],
                len(docs) / r["seconds"],
                r["peak_rss_mb"],
            ]
            for side, r in results.items()
        ],
    )
    ours, peer = results["ours"], results["datatrove"]
    time_ratio, mem_ratio = ours["seconds"] / peer["seconds"], ours["peak_rss_mb"] / peer["peak_rss_mb"]
    print(f"ratio ours / datatrove: time {time_ratio:.2f}x, peak memory {mem_ratio:.2f}x\n")

    rows, recall = score_clusters(docs, clusterings)
    print_table(["Jaccard", "same-lang pairs", "merged: ours", "merged: datatrove"], rows)
    print("(merged = pairs in one cluster, any language)")
    for side in results:
        print(f"recall {side}: {recall[side]:.2%} of same-language pairs with Jaccard >= 0.8 in one cluster")
    false_merges = {side: rows[-1][2 + i] for i, side in enumerate(results)}
    print(
        f"\nRESULT minhash: ours {ours['seconds']:.1f} s / {ours['peak_rss_mb']:.0f} MB, datatrove "
        f"{peer['seconds']:.1f} s / {peer['peak_rss_mb']:.0f} MB, ratio time {time_ratio:.2f}x memory "
        f"{mem_ratio:.2f}x; recall ours {recall['ours']:.2%} (datatrove {recall['datatrove']:.2%}), "
        f"false merges (J < 0.5) ours {false_merges['ours']} (datatrove {false_merges['datatrove']})"
    )


if __name__ == "__main__":
    main()
