"""Cost growth of our curation chain (langid -> quality -> dedup): documents/second at 10k and 100k documents.

    python benchmarks/bench_scaling.py [--limit 100000] [--sizes 10000,100000] [--shard-docs 1000] [--workdir DIR]

No peer: the ratio is docs/s at the largest size / docs/s at the smallest (target: within 20% of 1.0).

Data: every corpus with a ``text`` field except python_stdlib (debian_reference, debian_faq, debian_handbook,
fortunes, bofh, instguide_amd64, instguide_i386; chatterbot_sft holds conversations, not text), about 96k documents.
A set of size N takes from each corpus its share of the total (N * len(corpus) / 96k), so the mix of corpora,
and with it the distribution of document lengths, is the same at every size. A corpus is sampled (seeded) without
replacement while it lasts; beyond its size (only above ~96k documents) whole extra copies and a sample are added
with ``#copyK`` appended to the ids, so ids stay unique (those copies are exact duplicates that dedup removes).
Shards have a constant size (--shard-docs, 1000 by default: 10 shards at 10k, 100 at 100k), so the unit of work
is the same and only their number grows.

Each size runs in its own child process: ``pipelines.langid.run`` -> ``pipelines.quality.run`` ->
``pipelines.dedup.run``, --workers Beam worker processes each; seconds are the three stages end to end.
--limit N is shorthand for --sizes N/10,N.
"""

from __future__ import annotations

import os
import random
import shutil
import time

from _common import (
    arg_parser,
    make_workdir,
    print_table,
    read_corpus,
    run_side,
    save_result,
    warn_if_busy,
    write_shards,
)

CORPORA = ["debian_reference", "debian_faq", "debian_handbook", "fortunes", "bofh", "instguide_amd64", "instguide_i386"]
STAGES = ("langid", "quality", "dedup")


def build_sets(args, sizes: list[int]) -> None:
    corpora = {name: read_corpus(args.corpora, name) for name in CORPORA}
    total = sum(map(len, corpora.values()))
    for size in sizes:
        rng, docs = random.Random(args.seed), []
        wants = {name: round(size * len(corpus) / total) for name, corpus in corpora.items()}
        wants["fortunes"] += size - sum(wants.values())  # rounding: make the set exactly `size` documents
        for name, corpus in corpora.items():
            copies, rest = divmod(wants[name], len(corpus))
            for k, part in enumerate([corpus] * copies + [rng.sample(corpus, rest)]):
                docs += [{**doc, "id": f"{doc['id']}#copy{k}"} if k else doc for doc in part]
        write_shards(docs, os.path.join(args.workdir, str(size), "input"), max(1, len(docs) // args.shard_docs))


def run_chain(args, size: int) -> dict:
    from pipelines import dedup, langid, quality

    base = os.path.join(args.workdir, str(size))
    inputs = {
        "langid": os.path.join(base, "input", "*.jsonl.gz"),
        "quality": f"{base}/langid",
        "dedup": f"{base}/quality",
    }
    seconds, summaries = {}, {}
    for stage, module in zip(STAGES, (langid, quality, dedup)):
        started = time.time()
        summaries[stage] = module.run(inputs[stage], f"{base}/{stage}", workers=args.workers)
        seconds[stage] = time.time() - started
    return {
        "docs": summaries["langid"]["docs_in"],
        "kept": summaries["dedup"]["docs_out"],
        "shards": summaries["langid"]["shards"],
        "seconds": seconds,
    }


def main() -> None:
    parser = arg_parser(__doc__.splitlines()[0], limit=100_000, shards=None, limit_help="largest size")
    parser.add_argument("--sizes", default=None, help="comma-separated set sizes (default: LIMIT/10,LIMIT)")
    parser.add_argument("--shard-docs", type=int, default=1000, help="documents per input shard (default 1000)")
    args = parser.parse_args()
    args.workdir = make_workdir(args.workdir, "bench_scaling")
    if args.side:
        save_result(args.workdir, args.side, run_chain(args, int(args.side)))
        return

    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else [args.limit // 10, args.limit]
    for size in sizes:
        shutil.rmtree(os.path.join(args.workdir, str(size)), ignore_errors=True)
    build_sets(args, sizes)
    argv = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("workers", "corpora", "seed", "shard_docs")]
    warn_if_busy()
    results = {size: run_side(__file__, str(size), argv, args.workdir) for size in sizes}

    print(
        f"\nscaling: langid -> quality -> dedup, {args.workers} workers, {args.shard_docs} docs/shard, "
        f"workdir {args.workdir}\n"
    )
    rate = {size: r["docs"] / sum(r["seconds"].values()) for size, r in results.items()}
    print_table(
        ["docs", "shards", "kept", *(f"{s} s" for s in STAGES), "total s", "docs/s", "peak RSS MB"],
        [
            [
                r["docs"],
                r["shards"],
                r["kept"],
                *(r["seconds"][s] for s in STAGES),
                sum(r["seconds"].values()),
                rate[size],
                r["peak_rss_mb"],
            ]
            for size, r in results.items()
        ],
    )
    small, large = sizes[0], sizes[-1]
    ratio = rate[large] / rate[small]
    print(f"ratio docs/s at {large:,} / at {small:,}: {ratio:.2f}x")
    seconds = {size: sum(results[size]["seconds"].values()) for size in (small, large)}
    per_doc = (seconds[large] - seconds[small]) / (large - small)
    print(
        f"linear fit through both: {seconds[small] - per_doc * small:.1f} s fixed (Beam start-ups, models, "
        f"tokenizers) + {per_doc * 1000:.2f} ms/doc, i.e. {1 / per_doc:.1f} docs/s at the margin"
    )
    print(
        f"\nRESULT scaling: {', '.join(f'{s:,} docs {rate[s]:.1f} docs/s' for s in sizes)}, "
        f"ratio {ratio:.2f}x (largest / smallest)"
    )


if __name__ == "__main__":
    main()
