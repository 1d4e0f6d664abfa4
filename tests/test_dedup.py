"""Dedup: signatures, banding, union-find and the whole Beam pipeline."""

import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import xxhash

from pipelines import dedup
from pipelines.dedup import DedupConfig, Signer, UnionFind, resolve_clusters, shingles
from pipelines.shards import list_shards
from tests.conftest import EN, ZH, paragraph_doc


def test_shingles_are_word_ngrams_and_cjk_characters():
    assert shingles("One two three four five six", 5) == {b"one two three four five", b"two three four five six"}
    assert shingles("Tiny doc", 5) == {b"tiny doc"}
    assert b"\xe8\xbd\xaf \xe4\xbb\xb6 \xe5\x8c\x85 \xe7\xae\xa1 \xe7\x90\x86" in shingles("软件包管理器", 5)


def test_band_keys_collide_for_near_duplicates_only():
    signer = Signer(DedupConfig())
    a = paragraph_doc(EN, 1)
    near = a.replace(" the ", " a ", 1)
    other = paragraph_doc(EN[12:], 2, n=12)
    exact_a, bands_a = signer.bucket_keys(a)
    exact_near, bands_near = signer.bucket_keys(near)
    _, bands_other = signer.bucket_keys(other)
    assert exact_a == signer.bucket_keys(a.upper() + "  ")[0]  # normalization: case and spacing
    assert exact_a != exact_near
    assert set(bands_a) & set(bands_near)
    assert not set(bands_a) & set(bands_other)
    assert len(set(bands_a)) == 14


# Signatures recorded with datasketch 2.0.0 (MinHash(num_perm=112, seed=1, hashfunc=xxh32_intdigest)) before the
# signer stopped importing it: a changed permutation draw, mix or chunking changes them, and with them every band
# key, so a rerun would no longer find the duplicates an earlier run found.
PINNED_TEXT = " ".join(f"word{i % 97} token{i % 13}" for i in range(400)) + " 软件包管理器会记录每个文件"
PINNED_SHA256 = "f8fefb2b096b4dd4e085e0766608afdff2ab55788597f2fcc491f088c20fc0fb"


def test_signature_is_unchanged_for_the_same_seed():
    values = Signer(DedupConfig()).signature(PINNED_TEXT)
    assert values.dtype == np.uint32 and values.shape == (112,)
    assert values[:3].tolist() == [580359, 2755979, 4448108]
    assert hashlib.sha256(values.tobytes()).hexdigest() == PINNED_SHA256


@pytest.mark.parametrize("config", [DedupConfig(), DedupConfig(bands=3, rows=5, ngram=2, seed=7)])
def test_signature_equals_datasketch_minhash(config):
    from datasketch import MinHash

    signer = Signer(config)
    rng = random.Random(0)
    words = "the package manager 软件 包 файл paquet debian kernel".split()
    for n in (1, 4, 300, 2 * Signer.CHUNK + 17):  # the last spans three chunks of shingles
        text = " ".join(f"{rng.choice(words)}{rng.randint(0, 5000)}" for _ in range(n))
        reference = MinHash(num_perm=config.bands * config.rows, seed=config.seed, hashfunc=xxhash.xxh32_intdigest)
        reference.update_batch(shingles(text, config.ngram))
        assert np.array_equal(signer.signature(text), reference.hashvalues), n


def test_signing_loads_neither_datasketch_nor_scipy():
    # `import datasketch` loads its LSH indexes and scipy: ~45 MB in every Beam worker that signs documents
    code = (
        "import sys; from pipelines.dedup import DedupConfig, Signer; "
        "Signer(DedupConfig()).bucket_keys('one two three four five six seven'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('scipy', 'datasketch')))"
    )
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo).stdout
    assert out.strip() == "[]"


def test_union_find_keeps_smallest_member_and_counts_clusters():
    uf = UnionFind()
    uf.union((1, 0), (0, 5))
    uf.union((2, 2), (1, 0))
    assert uf.find((2, 2)) == (0, 5)
    edges = [((0, 0, "a", 7), (0, 1, "b", 7)), ((0, 1, "b", 7), (1, 0, "c", 8))]
    decisions, stats = resolve_clusters(edges)
    assert stats["clusters"] == 1 and stats["largest_cluster"] == 3
    kinds = {d[1]: d[4] for group in decisions.values() for d in group}
    assert kinds == {"a": "kept", "b": "exact_duplicate", "c": "near_duplicate"}


def test_pipeline_removes_duplicates_and_records_clusters(tmp_path):
    base = [paragraph_doc(EN, s) for s in range(5)] + [paragraph_doc(ZH, 9)]
    rows = [{"id": f"a{i}", "text": t} for i, t in enumerate(base)]
    rows.append({"id": "near0", "text": base[0].replace(" the ", " a ", 1)})
    rows.append({"id": "copy1", "text": base[1].upper()})
    rows.append({"id": "a0", "text": base[2]})  # same id as another document, different shard below
    (tmp_path / "in").mkdir()
    for shard, chunk in enumerate([rows[:4], rows[4:]]):
        with open(tmp_path / "in" / f"s{shard}.jsonl", "w") as f:
            f.write("{broken\n")  # quarantined; the documents after it must still match their decisions
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in chunk)
    out = str(tmp_path / "out")
    summary = dedup.run(str(tmp_path / "in"), out, workers=2)
    kept = [r for uri in list_shards(out) for r in pq.read_table(uri).to_pylist()]
    excluded = [r for uri in list_shards(out, "excluded") for r in pq.read_table(uri).to_pylist()]
    assert len(kept) == 6 and summary["docs_out"] == 6
    assert sorted(r["drop_reason"] for r in excluded) == ["exact_duplicate", "exact_duplicate", "near_duplicate"]
    sizes = {r["id"]: r["dup_cluster_size"] for r in kept}
    assert sizes == {"a0": 2, "a1": 2, "a2": 2, "a3": 1, "a4": 1, "a5": 1}
    assert {r["id"]: r["dup_cluster"] for r in excluded} == {"near0": "a0", "copy1": "a1", "a0": "a2"}
    assert summary["clusters"]["clusters"] == 3 and summary["clusters"]["documents_in_clusters"] == 6
    assert summary["errors_by_reason"] == {"bad_json": 2}

    again = dedup.run(str(tmp_path / "in"), out, workers=2)  # nothing changed: no pass over the corpus
    assert again["beam_counters"] == {"dedup/shards_resumed": 2}
    assert again["docs_out"] == 6 and again["clusters"] == summary["clusters"]
