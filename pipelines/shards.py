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
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.schema import DOCUMENT_SCHEMA, ERROR_SCHEMA, EXCLUDED_SCHEMA

SUCCESS_FILE = "_SUCCESS.json"
CONFIG_FILE = "_config.json"
KINDS = {"data": DOCUMENT_SCHEMA, "excluded": EXCLUDED_SCHEMA, "errors": ERROR_SCHEMA}


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def _with_protocol(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path from ``fs`` back as a URI (plain path for local files)."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def join(uri: str, *parts: str) -> str:
    if "://" in uri:
        return posixpath.join(uri, *parts)
    return os.path.join(uri, *parts)


def shard_key(path: str) -> str:
    """A stable, file-name-safe key for an input shard: readable stem + hash of the full path."""
    base = posixpath.basename(path.rstrip("/")) or "input"
    for ext in (".gz", ".zst", ".warc", ".wet", ".jsonl", ".json", ".parquet"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in base)[:60]
    return f"{stem}-{hashlib.sha1(path.encode()).hexdigest()[:10]}"


def write_json_atomic(uri: str, payload: dict) -> None:
    fs, path = filesystem(uri)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with fs.open(tmp, "w") as f:
        json.dump(payload, f, indent=1, sort_keys=True, default=str)
    fs.mv(tmp, path)


def read_json(uri: str) -> dict | None:
    fs, path = filesystem(uri)
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as f:
        return json.load(f)


DOCUMENT_SUFFIXES = (".warc", ".wet", ".arc", ".jsonl", ".ndjson", ".parquet")


def _is_document_file(path: str) -> bool:
    """Files a folder input contributes: known document formats, not hidden/marker files."""
    name = posixpath.basename(path)
    for suffix in (".gz", ".zst"):
        name = name.removesuffix(suffix)
    return not name.startswith((".", "_")) and ".tmp-" not in name and name.endswith(DOCUMENT_SUFFIXES)


def expand_inputs(patterns: str | Iterable[str]) -> list[str]:
    """Resolve globs, folders and stage folders to a sorted list of input files (as URIs).

    A folder that is a committed stage output resolves to its ``data/`` shards.
    """
    if isinstance(patterns, str):
        patterns = [p for p in patterns.split(",") if p]
    files: list[str] = []
    for pattern in patterns:
        if pattern.startswith("hf:"):
            files.append(pattern)
            continue
        fs, path = filesystem(pattern)
        if fs.isdir(path):
            if fs.exists(posixpath.join(path, CONFIG_FILE)):  # a stage folder: only a finished one is an input
                if not fs.exists(posixpath.join(path, SUCCESS_FILE)):
                    raise ValueError(f"{pattern} is a stage folder whose run has not finished: run that stage first")
                path = posixpath.join(path, "data")
            matches = [p for p in fs.find(path) if _is_document_file(p)]
        else:
            matches = fs.glob(path) if any(c in path for c in "*?[") else ([path] if fs.exists(path) else [])
        if not matches:
            raise FileNotFoundError(f"no input files match {pattern!r}")
        files.extend(_with_protocol(fs, m) for m in matches if ".tmp-" not in m)
    return sorted(set(files))


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


def committed_stats(stage_dir: str, key: str, fingerprint: str) -> dict | None:
    """The counters of a shard committed from this very input, else None (never done, or the input changed)."""
    marker = read_json(done_marker(stage_dir, key))
    if marker is None or marker.get("fingerprint") != fingerprint:
        return None
    return marker["stats"]


def commit_shard(stage_dir: str, key: str, path: str, fingerprint: str, stats: dict) -> None:
    write_json_atomic(done_marker(stage_dir, key), {"input": path, "fingerprint": fingerprint, "stats": stats})


def prepare_stage_dir(stage_dir: str, config: dict) -> bool:
    """Make ``stage_dir`` ready for a run of ``config``; returns True when resuming earlier work.

    A folder produced by another config is emptied; with the same config its committed shards are kept
    (each is reused only if its input is unchanged, see ``committed_stats``).
    """
    fs, path = filesystem(stage_dir)
    previous = read_json(join(stage_dir, CONFIG_FILE))
    if previous is not None and previous == json.loads(json.dumps(config, sort_keys=True, default=str)):
        if fs.exists(posixpath.join(path, SUCCESS_FILE)):
            fs.rm(posixpath.join(path, SUCCESS_FILE))
        return True
    if fs.exists(path):
        fs.rm(path, recursive=True)
    fs.makedirs(path, exist_ok=True)
    write_json_atomic(join(stage_dir, CONFIG_FILE), config)
    return False


def remove_stale_shards(stage_dir: str, keep_keys: set[str]) -> None:
    """Delete shards (and leftovers of killed writes) that do not belong to the current inputs."""
    fs, path = filesystem(stage_dir)
    for kind in (*KINDS, "_done"):
        folder = posixpath.join(path, kind)
        if not fs.exists(folder):
            continue
        for p in fs.ls(folder, detail=False):
            name = posixpath.basename(p)
            key = name.split(".parquet")[0].split(".json")[0]
            if ".tmp-" in name or key not in keep_keys:
                fs.rm(p)


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
