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
import logging
import os
import posixpath
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.schema import DOCUMENT_SCHEMA, ERROR_SCHEMA, EXCLUDED_SCHEMA

SUCCESS_FILE = "_SUCCESS.json"
CONFIG_FILE = "_config.json"
KINDS = {"data": DOCUMENT_SCHEMA, "excluded": EXCLUDED_SCHEMA, "errors": ERROR_SCHEMA}
log = logging.getLogger(__name__)


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


def _canonical(config: dict) -> dict:
    return json.loads(json.dumps(config, sort_keys=True, default=str))


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


# --- Output safety: a stage never deletes what it did not write ------------------------------------------------

OWNED_FOLDERS = (*KINDS, "_done")
"""Sub-folders a stage writes; a restart removes only Parquet/JSON files and leftovers of killed writes there."""
LOCK_FILE = "_lock.json"


class StageOutputError(ValueError):
    """An output location that a stage refuses to write to (the message says why and what to do)."""


def _local_real(uri: str) -> str:
    fs, path = filesystem(uri)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return os.path.realpath(path)
    return f"{protocol}://{path.rstrip('/')}"


def _split_patterns(inputs: str | Iterable) -> list[str]:
    """Comma-separated patterns, or (nested) lists of them, as one flat list."""
    if isinstance(inputs, str):
        return [p for p in inputs.split(",") if p]
    return [p for item in inputs for p in _split_patterns(item)]


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def check_output(stage_dir: str, stage: str | None, inputs: str | Iterable = ()) -> None:
    """Refuse an output that would destroy something the stage did not write. Raises ``StageOutputError``.

    Refused: an existing file; a folder that overlaps an input (the same folder, an input inside it, or it
    inside an input folder); a non-empty folder that holds no stage output; a folder of another stage.
    """
    fs, path = filesystem(stage_dir)
    out = _local_real(stage_dir)
    for item in _split_patterns(inputs):
        if item.startswith("hf:"):
            continue
        real = _local_real(item)
        if real == out:
            raise StageOutputError(f"--output {stage_dir} is also an input: choose another folder")
        if _inside(real, out):
            raise StageOutputError(f"--output {stage_dir} contains the input {item}: choose a folder outside it")
        if _inside(out, real):
            raise StageOutputError(f"--output {stage_dir} is inside the input {item}: choose a folder outside it")
    if not fs.exists(path):
        return
    if not fs.isdir(path):
        raise StageOutputError(f"--output {stage_dir} is an existing file, not a folder: choose a new folder")
    previous = read_json(join(stage_dir, CONFIG_FILE))
    if previous is None:
        entries = [posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)]
        foreign = sorted(e for e in entries if e != LOCK_FILE)
        if foreign:
            raise StageOutputError(
                f"--output {stage_dir} is a non-empty folder that no stage wrote ({len(foreign)} entries, e.g. "
                f"{', '.join(foreign[:3])}): choose a new or empty folder"
            )
    elif previous.get("stage") != stage:
        raise StageOutputError(
            f"--output {stage_dir} holds the output of stage {previous.get('stage')!r}, not {stage!r}: "
            "choose another folder"
        )


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            keys.append(f"{prefix}{k}")
    return keys


def _remove_owned(
    stage_dir: str, keep: Callable[[str, str], bool] = lambda kind, name: False, work_files: bool = True
) -> list[str]:
    """Delete the files this stage writes (shards, markers, leftovers of killed writes) unless ``keep(kind, name)``,
    and with ``work_files`` its ``_``-prefixed files at the top (summary, work folders).

    Anything else found in the folder is left where it is. Returns the removed paths, relative to the folder.
    """
    fs, path = filesystem(stage_dir)
    removed = []
    for kind in OWNED_FOLDERS:
        folder = posixpath.join(path, kind)
        if not fs.exists(folder):
            continue
        for p in fs.ls(folder, detail=False):
            name = posixpath.basename(p)
            ours = ".tmp-" in name or name.endswith((".parquet", ".json"))
            if ours and not keep(kind, name):
                fs.rm(p, recursive=True)
                removed.append(f"{kind}/{name}")
    for entry in fs.ls(path, detail=False) if work_files else ():  # _SUCCESS.json, _clusters.json, _work/ ...
        name = posixpath.basename(entry.rstrip("/"))
        if name.startswith("_") and name not in (*OWNED_FOLDERS, LOCK_FILE, CONFIG_FILE):
            fs.rm(entry, recursive=True)
            removed.append(name)
    return removed


def prepare_stage_dir(stage_dir: str, config: dict) -> bool:
    """Make ``stage_dir`` ready for a run of ``config``; returns True when resuming earlier work.

    With the same config its committed shards are kept (each is reused only if its input is unchanged, see
    ``committed_stats``). After a config change the files the earlier run wrote are removed, and the log names
    the settings that changed and what was removed; files the stage did not write are never touched.
    Call it through ``open_stage``, which checks the output and holds the folder's lock.
    """
    fs, path = filesystem(stage_dir)
    previous = read_json(join(stage_dir, CONFIG_FILE))
    config = _canonical(config)
    if previous == config:
        if fs.exists(posixpath.join(path, SUCCESS_FILE)):
            fs.rm(posixpath.join(path, SUCCESS_FILE))
        return True
    if previous is not None:
        removed = _remove_owned(stage_dir)
        changed = _changed_keys(previous, config)
        log.warning(
            "%s: the config changed (%s): starting afresh, %d files of the earlier run removed (%s)",
            stage_dir,
            ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else ""),
            len(removed),
            ", ".join(removed[:5]) + (" ..." if len(removed) > 5 else ""),
        )
    fs.makedirs(path, exist_ok=True)
    write_json_atomic(join(stage_dir, CONFIG_FILE), config)
    return False


def remove_stale_shards(stage_dir: str, keep_keys: set[str]) -> list[str]:
    """Delete shards (and leftovers of killed writes) that do not belong to the current inputs; returns their
    keys and logs them (an input set that shrank or changed names what it removes)."""

    def keep(kind: str, name: str) -> bool:
        return ".tmp-" not in name and name.split(".parquet")[0].split(".json")[0] in keep_keys

    removed = _remove_owned(stage_dir, keep, work_files=False)
    stale = sorted({r.split("/", 1)[1].split(".parquet")[0].split(".json")[0] for r in removed if ".tmp-" not in r})
    if stale:
        log.warning("%s: %d shards whose input is gone are removed: %s", stage_dir, len(stale), ", ".join(stale[:10]))
    return stale


class StageLockedError(RuntimeError):
    """Another run holds the stage folder."""


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None when no such process runs."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def _holder() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "pid_start": _process_start(os.getpid()),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _describe(holder: dict) -> str:
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"


@contextmanager
def stage_lock(stage_dir: str) -> Iterator[None]:
    """Hold ``<stage_dir>/_lock.json`` for one run; a second run into the same folder is refused.

    Local folders use ``flock``, which the kernel releases when the holder dies, so the lock of a killed run
    is detected as stale and taken over. On object stores the lock is an object naming its holder: it is
    stale when that holder ran on this host and is gone; otherwise delete it by hand once no run is active.
    """
    fs, path = filesystem(stage_dir)
    fs.makedirs(path, exist_ok=True)
    lock_path = posixpath.join(path, LOCK_FILE)
    holder = _holder()
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        import fcntl

        while True:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                other = _read_holder(fd)
                os.close(fd)
                raise StageLockedError(
                    f"{stage_dir} is being written by another run ({_describe(other)}): wait for it to finish"
                ) from None
            try:  # the holder we waited on may have removed the file after we opened it: lock the one in place
                if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        try:
            previous = _read_holder(fd)
            if previous.get("pid"):
                log.warning("%s: taking over the stale lock of a run that ended (%s)", stage_dir, _describe(previous))
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
                os.unlink(lock_path)
        finally:
            os.close(fd)
        return
    other = read_json(join(stage_dir, LOCK_FILE))
    if other:
        ours = other.get("host") == holder["host"]
        alive = _process_start(int(other.get("pid") or 0)) == other.get("pid_start")
        if not ours or alive:
            raise StageLockedError(
                f"{stage_dir} is being written by another run ({_describe(other)}): wait for it to finish, or "
                f"delete {join(stage_dir, LOCK_FILE)} if no run is active"
            )
        log.warning("%s: taking over the stale lock of a run that ended (%s)", stage_dir, _describe(other))
    write_json_atomic(join(stage_dir, LOCK_FILE), holder)
    try:
        yield
    finally:
        fs.rm(lock_path)


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}


@contextmanager
def open_stage(stage_dir: str, config: dict, inputs: str | Iterable = ()) -> Iterator[bool]:
    """Check the output (``check_output``), lock the folder (``stage_lock``) and prepare it for ``config``
    (``prepare_stage_dir``); yields True when resuming earlier work. Every stage runner writes through this."""
    check_output(stage_dir, config.get("stage"), inputs)
    with stage_lock(stage_dir):
        yield prepare_stage_dir(stage_dir, config)


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
