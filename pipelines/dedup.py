"""Stage 4, deduplication: exact (normalized-text hash) and fuzzy (MinHash-LSH), one Beam pipeline.

    python -m pipelines.dedup --input data/quality --output data/dedup [--bands 14 --rows 8 --ngram 5]

Settings: ``DedupSettings`` (``pipelines/curation_settings.py``), the same as the Dagster asset
``deduplicated_documents``; ``DedupConfig`` below is the algorithm's part of them, with the same defaults.

1. ``Signatures``: each worker streams its shards and emits, per document, one bucket key for its
   normalized-text hash and one per LSH band of its MinHash (datasketch's, in numpy; word 5-gram shingles,
   ``bands x rows`` permutations; 14 x 8 by default, as FineWeb). Only keys and small member
   tuples leave the worker, never text.
2. ``GroupByKey`` on bucket keys: the LSH banding. A bucket with several members yields edges.
3. Union-find over the edges (duplicates only, so far smaller than the corpus) gives clusters;
   the kept document of a cluster is its first member (lowest shard, then position).
4. ``CoGroupByKey`` of the decisions with the shard list: each shard is streamed again and
   written with ``dup_cluster``/``dup_cluster_size`` on kept documents; removed ones go to
   ``excluded/`` as ``exact_duplicate`` or ``near_duplicate``. Memory per worker is bounded by
   one shard's decisions.

Collision probability of a pair with Jaccard similarity s: ``1 - (1 - s**rows) ** bands``
(14 x 8: 0.92 at s=0.8, 0.05 at s=0.5).
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import regex
import xxhash

from pipelines.beam_stage import cli, parse_stage_args, print_summary, run_pipeline, stage_arg_parser
from pipelines.curation_settings import DedupSettings
from pipelines.readers import DEFAULT_MAX_DOC_BYTES, read_documents
from pipelines.schema import excluded_row
from pipelines.shards import (
    ShardStage,
    ShardStats,
    expand_inputs,
    input_fingerprint,
    join,
    read_json,
    shard_key,
    write_json_atomic,
)

STAGE = "dedup"
_WORD = regex.compile(
    r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\p{Tibetan}]|[\p{L}\p{M}\p{N}]+"
)
_PUNCT_SPACE = regex.compile(r"[\p{P}\p{S}\s]+")


_SETTINGS = DedupSettings.model_fields


@dataclass(frozen=True)
class DedupConfig:
    """The MinHash/LSH part of ``DedupSettings`` (defaults and docs there), as a plain dataclass: it is part of
    the stage identity (``asdict``) here and in ``synth.decontam``'s config."""

    bands: int = _SETTINGS["bands"].default
    rows: int = _SETTINGS["rows"].default
    ngram: int = _SETTINGS["ngram"].default
    seed: int = _SETTINGS["seed"].default
    exact: bool = _SETTINGS["exact"].default

    @classmethod
    def from_settings(cls, settings: DedupSettings) -> DedupConfig:
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})

    def __post_init__(self):
        if self.bands < 1 or self.rows < 1 or self.ngram < 1:
            raise ValueError(f"bands, rows and ngram must be >= 1, got {self}")


def normalize(text: str) -> str:
    """NFKC, lower case, punctuation and whitespace runs folded to one space."""
    return _PUNCT_SPACE.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def shingles(text: str, n: int) -> set[bytes]:
    """Word n-grams of the normalized text (CJK/Thai-script characters count as words)."""
    words = _WORD.findall(unicodedata.normalize("NFKC", text).lower())
    if len(words) < n:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)}


class Signer:
    """MinHash signatures and LSH bucket keys; permutations are built once, not per document.

    The signature is datasketch's ``MinHash(num_perm=bands * rows, seed=seed, hashfunc=xxhash.xxh32_intdigest)``
    (datasketch 2.0, scheme "affine32": each shingle's 32-bit hash is mixed by the MurmurHash3 finalizer, then
    permuted as ``a * h + b mod 2**32`` with odd ``a``; ``a`` and ``b`` drawn from ``RandomState(seed)``), computed
    here in numpy with the same draws, so the values are bit for bit datasketch's (tests/test_dedup.py compares
    them). Not imported from datasketch: ``import datasketch`` runs its package ``__init__``, which loads every LSH
    index and with them scipy (~45 MB and ~1 s per Beam worker) for the dozen lines below.
    """

    CHUNK = 4096  # shingles permuted at once: a (4096, 112) uint32 block is 1.8 MB, whatever the document size

    def __init__(self, config: DedupConfig):
        self.config = config
        num_perm = config.bands * config.rows
        gen = np.random.RandomState(config.seed)  # datasketch's draws, in its order: a (odd), then b
        self._a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        self._b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)

    def signature(self, text: str) -> np.ndarray:
        """The MinHash of the document's word n-gram shingles: ``bands * rows`` uint32 values."""
        items = shingles(text, self.config.ngram)
        hashes = np.fromiter((xxhash.xxh32_intdigest(s) for s in items), dtype=np.uint32, count=len(items))
        hashes ^= hashes >> np.uint32(16)  # MurmurHash3 fmix32, wrapping uint32 arithmetic
        hashes *= np.uint32(0x85EBCA6B)
        hashes ^= hashes >> np.uint32(13)
        hashes *= np.uint32(0xC2B2AE35)
        hashes ^= hashes >> np.uint32(16)
        values = np.full(len(self._a), np.iinfo(np.uint32).max, dtype=np.uint32)
        for start in range(0, len(hashes), self.CHUNK):
            block = hashes[start : start + self.CHUNK, None]  # (chunk, 1)
            np.minimum(values, (block * self._a + self._b).min(axis=0), out=values)  # (chunk, perms) -> (perms,)
        return values

    def bucket_keys(self, text: str) -> tuple[int, list[int]]:
        """(exact-text key, one key per band). Keys are 64-bit ints; the band index is mixed in."""
        exact = xxhash.xxh64_intdigest(normalize(text).encode(), seed=0xE)
        values = self.signature(text)
        r = self.config.rows
        bands = [
            xxhash.xxh64_intdigest(values[b * r : (b + 1) * r].tobytes(), seed=b) for b in range(self.config.bands)
        ]
        return exact, bands


class UnionFind:
    def __init__(self):
        self.parent: dict = {}

    def find(self, x):
        parent = self.parent
        parent.setdefault(x, x)
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    def union(self, a, b) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:  # the smaller member becomes the root: it is the document we keep
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            self.parent[hi] = lo


# A member is (shard index, position in shard, document id, exact-text key): small, and enough to
# find the document again in step 4 even when ids repeat across inputs.


def _bucket_edges(item: tuple[int, Iterable[tuple]]) -> Iterator[tuple[tuple, tuple]]:
    _, members = item
    members = sorted(set(members))
    for other in members[1:]:  # a star is enough for union-find
        yield members[0], other


def resolve_clusters(edges: Iterable[tuple[tuple, tuple]]) -> tuple[dict[int, list[tuple]], dict]:
    """Union-find over duplicate edges -> per shard, (position, id, kept id, cluster size, kind) of every
    member of a non-singleton cluster; plus cluster statistics."""
    uf = UnionFind()
    for a, b in edges:
        uf.union(a, b)
    clusters: dict[tuple, list[tuple]] = {}
    for member in list(uf.parent):
        clusters.setdefault(uf.find(member), []).append(member)
    decisions: dict[int, list[tuple]] = {}
    sizes = Counter()
    for root, members in clusters.items():
        sizes[len(members)] += 1
        for m in members:
            kind = "kept" if m == root else ("exact_duplicate" if m[3] == root[3] else "near_duplicate")
            decisions.setdefault(m[0], []).append((m[1], m[2], root[2], len(members), kind))
    stats = {
        "clusters": sum(sizes.values()),
        "documents_in_clusters": sum(k * v for k, v in sizes.items()),
        "largest_cluster": max(sizes, default=0),
        "cluster_size_histogram": {str(k): v for k, v in sorted(sizes.items())},
    }
    return decisions, stats


def _signature_dofn(config: DedupConfig, max_doc_bytes: int):
    from pipelines.beam_dofn import CountingDoFn

    class Signatures(CountingDoFn):
        def setup(self):
            self.signer = Signer(config)

        def process(self, element: tuple[int, str]):
            shard_index, path = element
            position = 0
            for kind, doc in read_documents(path, max_doc_bytes):
                if kind != "doc":
                    continue
                exact, bands = self.signer.bucket_keys(doc["text"])
                member = (shard_index, position, doc["id"], exact)
                if config.exact:
                    yield exact, member
                for key in bands:
                    yield key, member
                position += 1
                self.count("docs_signed")

    return Signatures(STAGE)


def apply_decisions(path: str, decisions: dict, stage: ShardStage, max_doc_bytes: int, count) -> dict:
    """Write one shard with its cluster decisions (position -> decision): kept documents to ``data/`` with
    ``dup_cluster``/``dup_cluster_size``, removed ones to ``excluded/``; returns its counters."""
    stats = ShardStats()
    with stage.writers(shard_key(path)) as writers:
        position = 0
        for kind, doc in read_documents(path, max_doc_bytes):
            if kind != "doc":  # unreadable input records are quarantined here, once (not in Signatures)
                writers["errors"].write(doc)
                stats.error(doc["reason"])
                continue
            stats.docs_in += 1
            _, _, kept_id, size, verdict = decisions.get(position, (position, doc["id"], doc["id"], 1, "kept"))
            doc["dup_cluster"], doc["dup_cluster_size"] = kept_id, size
            if verdict == "kept":
                writers["data"].write(doc)
                stats.keep(doc)
            else:
                writers["excluded"].write(excluded_row(doc, STAGE, verdict))
                stats.drop(verdict)
                count(f"dropped_{verdict}")
            position += 1
    count("docs_out", stats.docs_out)
    return stats.to_dict()


def _apply_dofn(files: list[str], fingerprints: dict[str, str], stage: ShardStage, max_doc_bytes: int):
    from pipelines.beam_dofn import CountingDoFn

    class ApplyDecisions(CountingDoFn):
        def process(self, element):
            shard_index, (_, decision_lists) = element
            path = files[shard_index]

            def work() -> dict:
                decisions = {d[0]: d for group in decision_lists for d in group}
                return apply_decisions(path, decisions, stage, max_doc_bytes, self.count)

            stage.shard(shard_key(path), fingerprints[path], work, input=path, count=self.count)
            return ()

    return ApplyDecisions(STAGE)


def run(
    inputs,
    output_dir: str,
    beam_args=None,
    workers: int | None = None,
    config: DedupConfig | None = None,
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
    settings: DedupSettings | None = None,
) -> dict:
    """``settings``: the stage's settings, in place of ``config`` and ``max_doc_bytes``."""
    import apache_beam as beam

    if settings is not None:
        config, max_doc_bytes = DedupConfig.from_settings(settings), settings.max_doc_bytes
    config = config or DedupConfig()
    files = expand_inputs(inputs)
    # Which document of a cluster is kept depends on every input, so any input change starts afresh.
    fingerprints = {f: input_fingerprint(f) for f in files}
    stage_config = {"stage": STAGE, "inputs": fingerprints, "processor": asdict(config), "max_doc_bytes": max_doc_bytes}
    with ShardStage(output_dir, stage_config, [inputs, *files]) as stage:
        shards = {shard_key(f): fingerprints[f] for f in files}
        stage.keep_only(shards)
        clusters_uri = join(output_dir, "_clusters.json")

        def resolve(edges: list) -> Iterator[tuple[int, list[tuple]]]:
            decisions, stats = resolve_clusters(edges)
            write_json_atomic(clusters_uri, stats)
            yield from decisions.items()

        def build(p):
            indexed = p | "Shards" >> beam.Create(list(enumerate(files)))
            decisions = (
                indexed
                | "Spread" >> beam.Reshuffle()
                | "Signatures" >> beam.ParDo(_signature_dofn(config, max_doc_bytes))
                | "Band" >> beam.GroupByKey()
                | "Edges" >> beam.FlatMap(_bucket_edges)
                | "AllEdges" >> beam.combiners.ToList()
                | "UnionFind" >> beam.FlatMap(resolve)
            )
            (
                {"shard": indexed | "ByShard" >> beam.Map(lambda e: (e[0], None)), "decisions": decisions}
                | "JoinDecisions" >> beam.CoGroupByKey()
                | "Unpack" >> beam.Map(lambda kv: (kv[0], (kv[1]["shard"], kv[1]["decisions"])))
                | "Apply" >> beam.ParDo(_apply_dofn(files, fingerprints, stage, max_doc_bytes))
            )

        # A finished run with the same inputs and config: the clusters cannot have changed, skip the signature pass.
        all_committed = stage.resumed and not stage.pending(shards)
        beam_counters = (
            {f"{STAGE}/shards_resumed": len(files)} if all_committed else run_pipeline(build, beam_args, workers)
        )
        extra = {"clusters": read_json(clusters_uri) or {}, "config": asdict(config)}
        fields = {"stage": STAGE, "output": output_dir, "shards": len(shards), "beam_counters": beam_counters}
        return stage.finish(sorted(shards), **fields, **extra)


def main(argv: list[str] | None = None) -> None:
    args, beam_args = parse_stage_args(stage_arg_parser(__doc__.splitlines()[0], DedupSettings), argv)
    print_summary(run(args.input, args.output, beam_args, args.workers, settings=args.settings))


if __name__ == "__main__":
    cli(main)
