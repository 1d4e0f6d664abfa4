"""Tokenize-and-pack: rows hold exactly the documents' token stream, cut and shuffled deterministically, resumable."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.schema import MIXED_FIELDS, MIXED_SCHEMA, empty_document
from pipelines.shards import list_shards, shard_key, write_json_atomic
from pipelines.tokenize_shards import ShardPacker, pack_stream, run_tokenize_stage
from pipelines.tokenizer import ENDOFTEXT_ID, count_tokens, load_tokenizer
from tests.conftest import DE, EN, PYTHON_CODE, ZH, paragraph_doc

SEQ_LEN = 64
LANGS = [("en", EN), ("de", DE), ("zh", ZH), ("code", None)]


def mixture_rows(shard: int, docs: int = 24) -> list[dict]:
    """Unique documents in four languages, from one sentence to ~700 tokens (several rows of SEQ_LEN)."""
    rng = random.Random(shard)
    rows = []
    for i in range(docs):
        lang, sentences = LANGS[i % len(LANGS)]
        if sentences is None:
            text = f"# module {shard}-{i}\n{PYTHON_CODE}"
        else:
            n = rng.choice([1, 3, 12])
            text = "\n\n".join(
                paragraph_doc(sentences, seed=shard * 1000 + i * 10 + k, n=n) for k in range(rng.choice([1, 1, 3]))
            )
            text = f"{shard}.{i} {text}"
        if shard == 0 and i == 5:
            text += " Models end a text with <|endoftext|> and chat turns with <|im_end|>."
        domain = "code" if lang == "code" else "web"
        row = empty_document(id=f"s{shard}-d{i}", text=text, lang=lang, domain=domain)
        row.update(bucket=f"{domain}/{lang}", copy=0)
        rows.append(row)
    for row, n in zip(rows, count_tokens([r["text"] for r in rows])):
        row["n_tokens"] = n
    return rows


def write_mixture(folder, shards: int = 3) -> dict[str, list[dict]]:
    """A finished mixture stage folder (``data/`` + ``_config.json`` + ``_SUCCESS.json``); returns rows per file."""
    written = {}
    os.makedirs(folder / "data", exist_ok=True)
    for s in range(shards):
        path = str(folder / "data" / f"part-{s:05d}.parquet")
        written[path] = mixture_rows(s)
        pq.write_table(pa.Table.from_pylist(written[path], schema=MIXED_SCHEMA), path)
    write_json_atomic(str(folder / "_config.json"), {"stage": "mixture"})
    write_json_atomic(str(folder / "_SUCCESS.json"), {"stage": "mixture"})
    return written


def reference_rows(docs: list[list[int]], seq_len: int) -> tuple[list[list[int]], list[list[int]], int]:
    """The packing spec written plainly: rows of seq_len, their segment lengths, and the tokens left over."""
    rows, segments, row, row_segments = [], [], [], []
    for ids in docs:
        ids = ids + [ENDOFTEXT_ID]
        pos = 0
        while pos < len(ids):
            take = min(seq_len - len(row), len(ids) - pos)
            row += ids[pos : pos + take]
            row_segments.append(take)
            pos += take
            if len(row) == seq_len:
                rows.append(row)
                segments.append(row_segments)
                row, row_segments = [], []
    return rows, segments, len(row)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixture")
    return folder, write_mixture(folder)


def read_rows(path: str) -> dict:
    return pq.read_table(path).to_pydict()


def test_pack_stream_cuts_after_separators_and_at_row_ends():
    # docs of 3, 5 (ends exactly on the first row end), 9 (spans rows 2 and 3), 2 (in the dropped tail)
    lengths = np.array([3, 5, 9, 2])
    packed = pack_stream(np.arange(19, dtype=np.int32), lengths, 8)
    assert packed.input_ids.tolist() == [list(range(8)), list(range(8, 16))]
    segments = [
        packed.segment_lengths[a:b].tolist() for a, b in zip(packed.segment_offsets, packed.segment_offsets[1:])
    ]
    assert segments == [[3, 5], [8]]
    assert packed.tokens_dropped_tail == 3

    short = pack_stream(np.arange(5, dtype=np.int32), np.array([5]), 8)
    assert short.rows == 0 and short.tokens_dropped_tail == 5 and short.segment_offsets.tolist() == [0]

    rng = np.random.default_rng(0)
    for seq_len in (1, 2, 7, 64):
        doc_lengths = rng.integers(1, 150, size=40)
        docs = [list(range(n - 1)) for n in doc_lengths]  # separators come from reference_rows
        stream = np.array([t for d in docs for t in d + [ENDOFTEXT_ID]], dtype=np.int32)
        packed = pack_stream(stream, doc_lengths, seq_len)
        rows, segments, tail = reference_rows(docs, seq_len)
        assert packed.input_ids.tolist() == rows
        offsets = packed.segment_offsets
        assert [packed.segment_lengths[a:b].tolist() for a, b in zip(offsets, offsets[1:])] == segments
        assert packed.tokens_dropped_tail == tail

    with pytest.raises(ValueError, match="doc_lengths sum"):
        pack_stream(np.arange(5, dtype=np.int32), np.array([4]), 2)


def test_shard_rows_are_the_documents_token_stream(mixture, tokenizer):
    folder, written = mixture
    path, docs = next(iter(written.items()))
    table, stats = ShardPacker(SEQ_LEN, seed=0).pack_shard(path, shard_key(path))
    out = table.to_pydict()

    ids = [tokenizer.encode(d["text"], add_special_tokens=False).ids for d in docs]
    expected_rows, expected_segments, tail = reference_rows(ids, SEQ_LEN)
    assert len(set(map(tuple, expected_rows))) == len(expected_rows) > 10  # rows are identifiable by content
    assert out["seq_index"] == list(range(len(expected_rows)))
    assert all(len(row) == SEQ_LEN for row in out["input_ids"])

    # Un-shuffle by content: every expected row appears once, with the expected segments.
    position = {tuple(row): i for i, row in enumerate(out["input_ids"])}
    order = [position[tuple(row)] for row in expected_rows]
    assert sorted(order) == list(range(len(expected_rows)))
    assert order != sorted(order)  # shuffled
    assert [out["doc_lengths"][i] for i in order] == expected_segments

    for row, segments in zip(out["input_ids"], out["doc_lengths"]):
        assert sum(segments) == SEQ_LEN
        ends = np.cumsum(segments)
        assert all(row[e - 1] == ENDOFTEXT_ID for e in ends[:-1])  # every inner boundary right after a separator
        assert row.count(ENDOFTEXT_ID) == len(segments) - (row[-1] != ENDOFTEXT_ID)  # and nowhere else

    # The document quoting "<|endoftext|>" is not split: the literal is text, not the separator.
    assert "<|endoftext|>" in docs[5]["text"] and ENDOFTEXT_ID not in ids[5]
    assert stats["n_tokens_mismatch"] == 0  # the mixing stage counts with the same document tokenizer

    by_lang: dict[str, int] = {}
    stream_langs = [d["lang"] for d, i in zip(docs, ids) for _ in range(len(i) + 1)]
    for lang in stream_langs[: len(expected_rows) * SEQ_LEN]:
        by_lang[lang] = by_lang.get(lang, 0) + 1
    assert stats["tokens_by_lang"] == by_lang
    assert stats["tokens_by_bucket"] == {("code/code" if k == "code" else f"web/{k}"): v for k, v in by_lang.items()}
    assert stats["tokens"] == sum(by_lang.values()) == len(expected_rows) * SEQ_LEN
    assert stats["sequences"] == len(expected_rows) and stats["tokens_dropped_tail"] == tail
    assert stats["docs_in"] == stats["docs_out"] == len(docs) and stats["dropped"] == {}
    assert stats["languages"] == {"code": 6, "de": 6, "en": 6, "zh": 6}


def test_bad_rows_are_dropped_with_a_reason(tmp_path, tokenizer):
    good = ["Ein gültiges Dokument über Pakete.", "第二个有效的文档。"]
    raw = [b"caf\xe9 au lait", None, b"", b"  \n ", good[0].encode(), good[1].encode()]
    schema = pa.schema([f.with_nullable(True) for f in MIXED_FIELDS])  # a writer that broke the contract
    columns = {f.name: pa.nulls(len(raw), f.type) for f in schema}
    columns["text"] = pa.array(raw, pa.binary()).view(pa.string())
    columns["id"] = pa.array([str(i) for i in range(len(raw))])
    columns["lang"] = pa.array(["fr", "en", "en", "en", "de", None])
    path = str(tmp_path / "bad.parquet")
    pq.write_table(pa.table(columns, schema=schema), path)

    table, stats = ShardPacker(4, seed=0).pack_shard(path, "bad")
    assert stats["dropped"] == {"empty_text": 2, "invalid_utf8": 1, "null_text": 1}
    assert stats["docs_in"] == 6 and stats["docs_out"] == 2
    stream = [t for text in good for t in tokenizer.encode(text, add_special_tokens=False).ids + [ENDOFTEXT_ID]]
    assert stats["tokens"] + stats["tokens_dropped_tail"] == len(stream)
    assert sorted(map(tuple, table.column("input_ids").to_pylist())) == sorted(
        tuple(stream[i : i + 4]) for i in range(0, len(stream) - 3, 4)
    )
    labels = ["de"] * (len(tokenizer.encode(good[0]).ids) + 1) + ["unknown"] * (len(tokenizer.encode(good[1]).ids) + 1)
    packed_labels = labels[: stats["tokens"]]
    assert stats["tokens_by_lang"] == {k: packed_labels.count(k) for k in set(packed_labels)}

    packer = ShardPacker(4, seed=0)
    encode = packer._encode

    def refuse_chinese(texts, **kwargs):
        if any("第二" in text for text in texts):
            raise ValueError("refused")
        return encode(texts, **kwargs)

    packer._encode = refuse_chinese  # the tokenizer failing on one document of a batch
    _, stats = packer.pack_shard(path, "bad")
    assert stats["dropped"]["tokenizer_error"] == 1 and stats["docs_out"] == 1
    assert stats["tokens_by_lang"].keys() == {"de"}

    with pytest.raises(ValueError, match="no 'body' column"):
        ShardPacker(4, text_column="body").pack_shard(path, "bad")
    with pytest.raises(ValueError, match="not text"):
        ShardPacker(4, text_column="lang_score").pack_shard(path, "bad")
    with pytest.raises(ValueError, match="seq_len must be a positive integer"):
        ShardPacker(0)


def test_stage_is_deterministic_and_resumes_per_shard(mixture, tmp_path):
    folder, written = mixture
    first = str(tmp_path / "first")
    summary = run_tokenize_stage(str(folder), first, SEQ_LEN, seed=0, workers=1)
    assert summary["shards"] == 3 and summary["resumed"] is False and summary["seq_len"] == SEQ_LEN
    assert summary["beam_counters"]["tokenize/shards_processed"] == 3
    assert summary["tokens"] == summary["sequences"] * SEQ_LEN
    assert sum(summary["tokens_by_lang"].values()) == sum(summary["tokens_by_bucket"].values()) == summary["tokens"]
    assert summary["docs_out"] == sum(len(rows) for rows in written.values())
    with open(os.path.join(first, "_config.json")) as f:
        config = json.load(f)
    assert config["seq_len"] == SEQ_LEN and config["seed"] == 0 and config["separator_id"] == ENDOFTEXT_ID
    assert len(config["tokenizer"]["tokenizer_json_sha256"]) == 64
    shards = list_shards(first)
    assert [os.path.basename(p) for p in shards] == sorted(f"{shard_key(p)}.parquet" for p in written)

    same = str(tmp_path / "same")
    run_tokenize_stage(str(folder), same, SEQ_LEN, seed=0, workers=1)
    other_seed = str(tmp_path / "other_seed")
    run_tokenize_stage(str(folder), other_seed, SEQ_LEN, seed=1, workers=1)
    for path in shards:
        name = os.path.basename(path)
        with open(path, "rb") as a, open(os.path.join(same, "data", name), "rb") as b:
            assert a.read() == b.read()
        ours, theirs = read_rows(path)["input_ids"], read_rows(os.path.join(other_seed, "data", name))["input_ids"]
        assert ours != theirs and sorted(ours) == sorted(theirs)

    # A rerun skips committed shards; a changed input redoes only its own shard.
    again = run_tokenize_stage(str(folder), first, SEQ_LEN, seed=0, workers=1)
    assert again["resumed"] is True and again["beam_counters"]["tokenize/shards_resumed"] == 3
    assert {k: again[k] for k in ("sequences", "tokens", "tokens_by_lang")} == {
        k: summary[k] for k in ("sequences", "tokens", "tokens_by_lang")
    }
    changed = sorted(written)[1]
    rows = written[changed] + [dict(written[changed][0], id="extra", text="An added document. " * 40, n_tokens=None)]
    pq.write_table(pa.Table.from_pylist(rows, schema=MIXED_SCHEMA), changed)
    before = {p: os.stat(p).st_mtime_ns for p in shards}
    redone = run_tokenize_stage(str(folder), first, SEQ_LEN, seed=0, workers=1)
    assert redone["beam_counters"]["tokenize/shards_resumed"] == 2
    assert redone["beam_counters"]["tokenize/shards_processed"] == 1
    assert redone["docs_out"] == summary["docs_out"] + 1 and redone["tokens"] > summary["tokens"]
    after = {p: os.stat(p).st_mtime_ns for p in shards}
    assert [p for p in shards if before[p] != after[p]] == [
        os.path.join(first, "data", f"{shard_key(changed)}.parquet")
    ]

    # Another seq_len is another config: the folder starts afresh.
    shorter = run_tokenize_stage(str(folder), first, SEQ_LEN // 2, seed=0, workers=1)
    assert shorter["resumed"] is False and shorter["beam_counters"]["tokenize/shards_processed"] == 3
    assert all(len(row) == SEQ_LEN // 2 for p in list_shards(first) for row in read_rows(p)["input_ids"])


def test_cli_runs_with_two_workers_and_reports_mistakes_in_one_line(mixture, tmp_path):
    folder, _ = mixture
    cmd = [sys.executable, "-m", "pipelines.tokenize_shards", "--input", str(folder), "--output", str(tmp_path / "out")]
    done = subprocess.run([*cmd, "--seq-len", "128", "--workers", "2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["shards"] == 3 and summary["tokens"] == summary["sequences"] * 128 > 0

    bad = subprocess.run([*cmd, "--seq-len", "0"], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.strip() == (
        "error: argument --seq-len: 0 is outside the valid range [2, inf] (see tokenize_shards.py --help)"
    )
