"""A stage's output folder: checked before a run, locked during it, prepared for its config.

``check_output`` refuses a folder the stage did not write (or one that overlaps its inputs), ``stage_lock`` holds
``_lock.json`` for one run, ``prepare_stage_dir`` keeps the committed work of an unchanged config and removes the
files of an earlier config (never anything the stage did not write); ``open_stage`` does the three in order. The
folder's layout and the commit protocol are described in ``pipelines.shards``, which runs stages through here.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import fsspec

SUCCESS_FILE = "_SUCCESS.json"
CONFIG_FILE = "_config.json"
log = logging.getLogger(__name__)


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path of ``uri``. An object store's filesystem keeps no listings cache: a stage's folder is
    written by other processes (Beam workers, an earlier or a concurrent run), so a listing kept from before they
    wrote would hide their markers and shards (a resumed run would find "no commit marker" for a shard a worker
    has just committed)."""
    if fsspec.utils.get_protocol(str(uri)) in ("file", "local"):
        return fsspec.core.url_to_fs(uri)
    return fsspec.core.url_to_fs(uri, use_listings_cache=False)


def _with_protocol(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path from ``fs`` back as a URI (plain path for local files)."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def join(uri: str, *parts: str) -> str:
    if "://" in uri:
        return posixpath.join(uri, *parts)
    return os.path.join(uri, *parts)


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


def _canonical(config: dict) -> dict:
    return json.loads(json.dumps(config, sort_keys=True, default=str))


# --- Output safety: a stage never deletes what it did not write ------------------------------------------------

OWNED_FOLDERS = ("data", "excluded", "errors", "_done")
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
