"""Stage folders, atomic shard writes and the commit protocol.

A stage writes one output shard per input shard, so a shard is the unit of work,
of parallelism and of resumption (as a datatrove task is):

    <stage>/_config.json            what produced this folder (a different config starts afresh)
    <stage>/data/<key>.parquet      kept documents        (DOCUMENT_SCHEMA)
    <stage>/excluded/<key>.parquet  dropped documents     (EXCLUDED_SCHEMA, with the reason)
    <stage>/errors/<key>.parquet    unreadable records    (ERROR_SCHEMA)
    <stage>/_done/<key>.json        the shard's counters; written last, it commits the shard
    <stage>/_SUCCESS.json           the stage's summary; written last, it commits the stage

Every file is written to a temporary name and renamed into place, so a killed run
never leaves a half shard under a final name. A rerun skips shards that have a
``_done`` marker and rewrites the others under the same names: nothing is lost
and nothing is written twice. Paths are fsspec URIs (local folders, ``s3://``,
``gs://`` ...); on object stores the marker, not the rename, is the commit point.

``ShardStage`` is that lifecycle as one object, which every stage runner uses; the folder's checks, lock and
preparation for a config live in ``pipelines.stage_dir``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.schema import DOCUMENT_SCHEMA, ERROR_SCHEMA, EXCLUDED_SCHEMA
from pipelines.stage_dir import (
    CONFIG_FILE,
    SUCCESS_FILE,
    _canonical,
    _with_protocol,
    filesystem,
    join,
    open_stage,
    read_json,
    remove_stale_shards,
    write_json_atomic,
)

KINDS = {"data": DOCUMENT_SCHEMA, "excluded": EXCLUDED_SCHEMA, "errors": ERROR_SCHEMA}
log = logging.getLogger(__name__)


def shard_key(path: str) -> str:
    """A stable, file-name-safe key for an input shard: readable stem + hash of the full path."""
    base = posixpath.basename(path.rstrip("/")) or "input"
    for ext in (".gz", ".zst", ".warc", ".wet", ".jsonl", ".json", ".parquet"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in base)[:60]
    return f"{stem}-{hashlib.sha1(path.encode()).hexdigest()[:10]}"


DOCUMENT_SUFFIXES = (".warc", ".wet", ".arc", ".jsonl", ".ndjson", ".json", ".parquet")


def _is_document_file(path: str, named: bool = False) -> bool:
    """A file name a document reader takes: a known format, any case, optionally compressed (.gz .zst .bz2 .xz).

    In a folder or a glob, hidden and ``_``-prefixed files (``_SUCCESS``, ``.crc``) and leftovers of killed writes
    are not documents either; a file ``named`` on its own is judged by its format alone.
    """
    name = posixpath.basename(path).lower()
    for suffix in (".gz", ".zst", ".zstd", ".bz2", ".xz"):
        name = name.removesuffix(suffix)
    if not named and (name.startswith((".", "_")) or ".tmp-" in name):
        return False
    return name.endswith(DOCUMENT_SUFFIXES)


def expand_inputs(patterns: str | Iterable[str]) -> list[str]:
    """Resolve globs, folders and stage folders to a sorted list of input files (as URIs).

    A folder that is a committed stage output resolves to its ``data/`` shards. A folder (or a glob) is searched
    for document files by name (``_is_document_file``); the other files it holds are skipped, never read, and
    ``skipped_inputs`` names them. Errors, each one line: ``ValueError`` for no input at all (``--input ''``) or a
    file named on its own that is no document format; ``FileNotFoundError`` for a pattern with no document file.
    """
    return resolve_inputs(patterns)[0]


def skipped_inputs(patterns: str | Iterable[str]) -> list[str]:
    """The files that the folders and globs of ``patterns`` hold but ``expand_inputs`` skips (no document format by
    name, hidden, markers), sorted URIs: for the stage summary, so that nothing is left out unseen."""
    return resolve_inputs(patterns)[1]


def resolve_inputs(patterns: str | Iterable[str]) -> tuple[list[str], list[str]]:
    """(document files, skipped files) of ``patterns``, both sorted and without repeats (one listing for both)."""
    if isinstance(patterns, str):
        patterns = patterns.split(",")
    patterns = [p.strip() for p in patterns if p and p.strip()]
    if not patterns:
        raise ValueError("no input given (--input is empty): pass globs, folders or a stage folder, comma-separated")
    files: set[str] = set()
    skipped: set[str] = set()
    for pattern in patterns:
        if pattern.startswith("hf:"):
            files.add(pattern)
            continue
        fs, path = filesystem(pattern)
        named = False
        if any(c in path for c in "*?["):
            found = []
            for match in fs.glob(path):
                found += _folder_files(fs, match, pattern) if fs.isdir(match) else [match]
        elif fs.isdir(path):
            found = _folder_files(fs, path, pattern)
        elif fs.exists(path):
            if not _is_document_file(path, named=True):
                raise ValueError(
                    f"{pattern} is not a document file: expected .warc, .wet, .arc, .jsonl, .ndjson, .json or "
                    ".parquet (any case, optionally .gz/.zst/.bz2/.xz), a folder, or hf:<dataset>:<split>"
                )
            found, named = [path], True
        else:
            found = []
        documents = [m for m in found if _is_document_file(m, named)]
        others = [m for m in found if not _is_document_file(m, named)]
        if not documents:
            if not others:
                raise FileNotFoundError(f"no input files match {pattern!r}")
            names = ", ".join(posixpath.basename(m) for m in sorted(others)[:3]) + (", ..." if len(others) > 3 else "")
            raise FileNotFoundError(
                f"no input files match {pattern!r}: none of the {len(others)} files there ({names}) is a document "
                "format (.warc, .wet, .arc, .jsonl, .ndjson, .json, .parquet, optionally compressed)"
            )
        files.update(_with_protocol(fs, m) for m in documents)
        skipped.update(_with_protocol(fs, m) for m in others)
    return sorted(files), sorted(skipped)


def _folder_files(fs: fsspec.AbstractFileSystem, path: str, pattern: str) -> list[str]:
    """Every file under a folder; a stage folder gives its ``data/`` (only once that stage has finished)."""
    if fs.exists(posixpath.join(path, CONFIG_FILE)):
        if not fs.exists(posixpath.join(path, SUCCESS_FILE)):
            raise ValueError(f"{pattern} is a stage folder whose run has not finished: run that stage first")
        path = posixpath.join(path, "data")
    return list(fs.find(path))


@dataclass
class ShardStats:
    """Counters of one shard; summed over shards for the stage summary and Dagster metadata."""

    docs_in: int = 0
    docs_out: int = 0
    bytes_out: int = 0
    errors: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    errors_by_reason: dict[str, int] = field(default_factory=dict)
    languages: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def error(self, reason: str) -> None:
        self.errors += 1
        self.errors_by_reason[reason] = self.errors_by_reason.get(reason, 0) + 1

    def keep(self, doc: dict) -> None:
        self.docs_out += 1
        self.bytes_out += len(doc["text"].encode("utf-8"))
        lang = doc.get("lang") or "unknown"
        self.languages[lang] = self.languages.get(lang, 0) + 1

    def to_dict(self) -> dict:
        return {
            "docs_in": self.docs_in,
            "docs_out": self.docs_out,
            "bytes_out": self.bytes_out,
            "errors": self.errors,
            "dropped": dict(sorted(self.dropped.items())),
            "errors_by_reason": dict(sorted(self.errors_by_reason.items())),
            "languages": dict(sorted(self.languages.items())),
        }


def merge_stats(stats: Iterable[dict]) -> dict:
    """Sum per-shard counters: numbers add, nested dicts merge key by key, lists add element-wise,
    and keys starting with ``max_`` keep the largest value."""
    total: dict = {}
    for s in stats:
        _merge_into(total, s)
    return total


def _merge_into(total: dict, part: dict) -> None:
    for k, v in part.items():
        if isinstance(v, dict):
            _merge_into(total.setdefault(k, {}), v)
        elif isinstance(v, list):
            have = total.setdefault(k, [0] * len(v))
            total[k] = [a + b for a, b in zip(have, v, strict=True)]
        elif k.startswith("max_"):
            total[k] = max(total.get(k, v), v)
        else:
            total[k] = total.get(k, 0) + v
    for k in sorted(total):  # sorted keys, so summaries read the same whatever the shard order
        total[k] = total.pop(k)


class ShardWriter:
    """Streams rows of one kind (data/excluded/errors) to a temporary Parquet file; commit() renames it."""

    def __init__(
        self,
        stage_dir: str,
        kind: str,
        key: str,
        batch_rows: int = 1000,
        batch_bytes: int = 4_000_000,
        schema: pa.Schema | None = None,
    ):
        self.schema = schema or KINDS[kind]
        self.final_uri = join(stage_dir, kind, f"{key}.parquet")
        self.fs, self.final_path = filesystem(self.final_uri)
        self.tmp_path = f"{self.final_path}.tmp-{uuid.uuid4().hex}"
        self.batch_rows = batch_rows
        self.batch_bytes = batch_bytes  # a row group is flushed at whichever limit comes first
        self.rows: list[dict] = []
        self.buffered_bytes = 0
        self.count = 0
        self._writer: pq.ParquetWriter | None = None
        self._file = None

    def write(self, row: dict) -> None:
        self.rows.append(row)
        self.buffered_bytes += len(row.get("text") or "")
        if len(self.rows) >= self.batch_rows or self.buffered_bytes >= self.batch_bytes:
            self._flush()

    def _flush(self) -> None:
        if self._writer is None:
            self.fs.makedirs(posixpath.dirname(self.final_path), exist_ok=True)
            self._file = self.fs.open(self.tmp_path, "wb")
            self._writer = pq.ParquetWriter(self._file, self.schema, compression="zstd")
        if self.rows:
            self._writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.count += len(self.rows)
            self.rows = []
            self.buffered_bytes = 0

    def commit(self, always: bool = False) -> str | None:
        """Rename the finished file into place. Empty shards are not written unless ``always``."""
        if self._writer is None and not self.rows and not always:
            self._remove_stale()
            return None
        self._flush()
        self._writer.close()
        self._file.close()
        self.fs.mv(self.tmp_path, self.final_path)
        return self.final_uri

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._file.close()
            self.fs.rm(self.tmp_path)

    def _remove_stale(self) -> None:
        # A shard redone after a kill may now be empty for this kind: drop what the killed run left.
        if self.fs.exists(self.final_path):
            self.fs.rm(self.final_path)


@contextmanager
def shard_writers(
    stage_dir: str, key: str, data_schema: pa.Schema | None = None, excluded_schema: pa.Schema | None = None
):
    """data/excluded/errors writers for one shard, committed together on success, removed on failure.

    ``data_schema`` (``excluded_schema``) replaces DOCUMENT_SCHEMA (EXCLUDED_SCHEMA) for stages whose output
    (dropped) rows are not plain documents.
    """
    schemas = {"data": data_schema, "excluded": excluded_schema}
    writers = {kind: ShardWriter(stage_dir, kind, key, schema=schemas.get(kind)) for kind in KINDS}
    try:
        yield writers
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    writers["data"].commit(always=True)
    writers["excluded"].commit()
    writers["errors"].commit()


def done_marker(stage_dir: str, key: str) -> str:
    return join(stage_dir, "_done", f"{key}.json")


def committed_keys(stage_dir: str) -> list[str]:
    """Keys of the shards with a commit marker (for stages whose outputs are not one per input)."""
    fs, path = filesystem(join(stage_dir, "_done"))
    if not fs.exists(path):
        return []
    names = (posixpath.basename(p) for p in fs.ls(path, detail=False))
    return sorted(n[: -len(".json")] for n in names if n.endswith(".json") and ".tmp" not in n)


def input_fingerprint(path: str) -> str:
    """Size and modification time (or ETag) of an input: a committed shard is reused only for the same input."""
    if path.startswith("hf:"):
        return path
    fs, fpath = filesystem(path)
    info = fs.info(fpath)
    return f"{info.get('size')}:{info.get('mtime') or info.get('LastModified') or info.get('ETag') or ''}"


def config_fingerprint(config: dict | None) -> str:
    """A short hash of a stage config (what ``_config.json`` holds)."""
    return hashlib.sha256(json.dumps(_canonical(config or {}), sort_keys=True).encode()).hexdigest()[:16]


def stage_config_fingerprint(stage_dir: str) -> str:
    """The fingerprint of the config the stage folder is being written under (its ``_config.json``)."""
    return config_fingerprint(read_json(join(stage_dir, CONFIG_FILE)))


def committed_stats(stage_dir: str, key: str, fingerprint: str) -> dict | None:
    """The counters of a shard committed from this very input under this stage config, else None (never done,
    the input changed, or the shard was made under another config)."""
    marker = read_json(done_marker(stage_dir, key))
    if marker is None or marker.get("fingerprint") != fingerprint:
        return None
    if marker.get("config") != stage_config_fingerprint(stage_dir):
        return None
    return marker["stats"]


def commit_shard(stage_dir: str, key: str, path: str, fingerprint: str, stats: dict) -> None:
    """Commit a shard: its marker records the input, the input's fingerprint and the stage config's fingerprint."""
    marker = {"input": path, "fingerprint": fingerprint, "config": stage_config_fingerprint(stage_dir), "stats": stats}
    write_json_atomic(done_marker(stage_dir, key), marker)


def _no_count(name: str, n: int = 1) -> None:
    """The ``count`` of a shard run outside Beam: counters are not reported anywhere."""


class ShardStage:
    """One run of a stage into its folder: the shard lifecycle that every stage runner goes through.

        with ShardStage(output, config, inputs) as stage:      # check_output, lock, prepare (``open_stage``)
            stage.keep_only(keys)                             # resumed: drop shards of inputs that are gone
            stats = stage.shard(key, fingerprint, work, input=path, count=count)   # skipped when committed
            summary = stage.finish(keys, stage="x", ...)      # markers summed + run fields -> _SUCCESS.json

    ``shard`` runs anywhere: the object travels to Beam workers without its lock (which stays with the driver).
    ``config`` is the stage's identity (``_config.json``); its ``stage`` entry names the stage for ``check_output``.
    """

    def __init__(self, output: str, config: Mapping, inputs: str | Iterable = ()):
        # Workers write the shards: a relative folder would name one in each worker's directory (a worker pool's).
        output = str(output) if "://" in str(output) else os.path.abspath(output)
        self.output, self.config, self.inputs = output, dict(config), inputs
        self.resumed = False
        self.removed: list[str] = []
        self.started = time.time()
        self._stack: ExitStack | None = None

    def __enter__(self) -> ShardStage:
        stack = ExitStack()
        self.resumed = stack.enter_context(open_stage(self.output, self.config, self.inputs))
        self._stack, self.started = stack, time.time()
        return self

    def __exit__(self, *exc) -> bool | None:
        stack, self._stack = self._stack, None
        return stack.__exit__(*exc)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_stack": None}

    def keep_only(self, keys: Iterable[str]) -> list[str]:
        """On a resumed folder, remove the shards whose key is not in ``keys`` (and leftovers of killed writes);
        the summary names them as ``removed_shards``."""
        if self.resumed:
            self.removed = remove_stale_shards(self.output, set(keys))
        return self.removed

    def done(self, key: str, fingerprint: str) -> dict | None:
        """The counters of shard ``key`` if it is committed from this very input under this config, else None."""
        return committed_stats(self.output, key, fingerprint)

    def pending(self, shards: Mapping[str, str]) -> list[str]:
        """The keys of ``shards`` (key -> input fingerprint) that are not committed yet."""
        return [key for key, fingerprint in shards.items() if self.done(key, fingerprint) is None]

    def writers(self, key: str, data_schema: pa.Schema | None = None, excluded_schema: pa.Schema | None = None):
        """data/excluded/errors writers of shard ``key`` (``shard_writers``)."""
        return shard_writers(self.output, key, data_schema, excluded_schema)

    def write_table(self, key: str, table: pa.Table, kind: str = "data", **parquet_options) -> str:
        """Write ``<kind>/<key>.parquet`` in one go under a temporary name and rename it into place."""
        final_uri = join(self.output, kind, f"{key}.parquet")
        fs, final_path = filesystem(final_uri)
        tmp = f"{final_path}.tmp-{uuid.uuid4().hex}"
        fs.makedirs(posixpath.dirname(final_path), exist_ok=True)
        try:
            with fs.open(tmp, "wb") as f:
                pq.write_table(table, f, compression="zstd", **parquet_options)
            fs.mv(tmp, final_path)
        except BaseException:
            if fs.exists(tmp):
                fs.rm(tmp)
            raise
        return final_uri

    def commit(self, key: str, input: str, fingerprint: str, stats: dict) -> None:
        """Write shard ``key``'s marker: from here on the shard is done (``commit_shard``)."""
        commit_shard(self.output, key, input, fingerprint, stats)

    def shard(self, key: str, fingerprint: str, work, input: str = "", count=None) -> dict:
        """Shard ``key``'s counters: committed ones as they are (``shards_resumed``), else ``work()``'s, which
        writes the shard's files, committed once it returns (``shards_processed``). ``count(name, n)``: metrics."""
        count = count or _no_count
        done = self.done(key, fingerprint)
        if done is not None:
            count("shards_resumed")
            return done
        stats = work()
        self.commit(key, input, fingerprint, stats)
        count("shards_processed")
        return stats

    def file_shard(self, path: str, work, count=None) -> dict:
        """``shard`` for the input file ``path``: its key is ``shard_key(path)``, passed to ``work(key)``."""
        key = shard_key(path)
        return self.shard(key, input_fingerprint(path), lambda: work(key), input=path, count=count)

    def summed(self, keys: Iterable[str]) -> dict:
        """The committed counters of ``keys``, summed (``merge_stats``); every one must be committed by now."""
        stats = []
        for key in keys:
            marker = read_json(done_marker(self.output, key))
            if marker is None:
                raise RuntimeError(f"{self.config.get('stage')}: shard {key} has no commit marker after its run")
            stats.append(marker["stats"])
        return merge_stats(stats)

    def finish(self, keys: Iterable[str] = (), summary: dict | None = None, **fields) -> dict:
        """Commit the stage: ``summary`` (by default ``summed(keys)``) with ``resumed``, ``seconds`` (since the
        folder was opened), ``removed_shards`` (when some were) and ``fields``, written as ``_SUCCESS.json``."""
        summary = self.summed(keys) if summary is None else summary
        summary.update(resumed=self.resumed, seconds=round(time.time() - self.started, 2))
        if self.removed:
            summary["removed_shards"] = self.removed
        summary.update(fields)
        write_json_atomic(join(self.output, SUCCESS_FILE), summary)
        return summary


def list_shards(stage_dir: str, kind: str = "data") -> list[str]:
    fs, path = filesystem(stage_dir)
    folder = posixpath.join(path, kind)
    if not fs.exists(folder):
        return []
    return sorted(
        _with_protocol(fs, p) for p in fs.ls(folder, detail=False) if p.endswith(".parquet") and ".tmp-" not in p
    )


def iter_parquet_rows(uri: str, columns: Sequence[str] | None = None, batch_size: int = 512) -> Iterator[dict]:
    """Rows of one Parquet file as dicts, a batch at a time; ``columns`` the file lacks are left out."""
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        parquet = pq.ParquetFile(f)
        names = [c for c in columns if c in parquet.schema_arrow.names] if columns is not None else None
        for batch in parquet.iter_batches(batch_size=batch_size, columns=names):
            yield from batch.to_pylist()


def iter_stage_rows(
    stage_dir: str, columns: Sequence[str] | None = None, kind: str = "data", batch_size: int = 512
) -> Iterator[dict]:
    """Rows of a stage folder's ``data/`` (or ``excluded/``...) shards, streamed: never the whole stage at once."""
    for uri in list_shards(stage_dir, kind):
        yield from iter_parquet_rows(uri, columns, batch_size)
