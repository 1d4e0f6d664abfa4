"""Which reader reads an input: the content decides (magic bytes, ``_sniff``), then the name (``detect_format``);
``read_documents`` is the one entry point stages use."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

from pipelines.readers.hf import read_hf
from pipelines.readers.jsonl import _read_json_stream
from pipelines.readers.parquet import _read_parquet_file
from pipelines.readers.records import DEFAULT_MAX_DOC_BYTES, Item, _damage_row, unique_ids
from pipelines.readers.streams import UTF8_BOM, UTF16_BOMS, _Stream, open_stream
from pipelines.readers.warc import _read_arc_stream, _read_warc_stream
from pipelines.schema import error_row

READER_VERSION = 2  # part of ingest's config: a reader that reads differently redoes the ingest folder
COMPRESSION_SUFFIXES = (".gz", ".zst", ".zstd", ".bz2", ".xz")


def detect_format(path: str) -> str:
    """The format a file's name announces (``ValueError`` if none); ``read_documents`` trusts the content first."""
    fmt = _format_by_name(path)
    if fmt is None:
        raise ValueError(
            f"cannot tell the format of {path!r}: expected .warc[.gz], .wet[.gz], .jsonl[.gz], .json, .parquet "
            "or hf:<dataset>:<split>"
        )
    return fmt


def _format_by_name(path: str) -> str | None:
    name = path.lower()
    if name.startswith("hf:"):
        return "hf"
    for suffix in COMPRESSION_SUFFIXES:
        name = name.removesuffix(suffix)
    if name.endswith(".wet"):
        return "wet"
    if name.endswith((".warc", ".arc")):
        return "warc"
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return None


def read_documents(path: str, max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES) -> Iterator[Item]:
    """Documents and quarantined records of one input, with ids unique within it (see the module docstring)."""
    if path.startswith("hf:"):
        items = read_hf(path, max_doc_bytes)
    else:
        items = _read_file(path, max_doc_bytes)
    yield from unique_ids(items)


def _read_file(path: str, max_doc_bytes: int) -> Iterator[Item]:
    source = posixpath.basename(path)
    stream_readers = {"warc": _read_warc_stream, "wet": _read_warc_stream, "arc": _read_arc_stream}
    stream_readers["jsonl"] = _read_json_stream
    try:
        with open_stream(path) as (stream, codec):
            fmt = _sniff(stream) or _format_by_name(path)
            if fmt == "empty":
                damages = stream.damages_until(0)  # a compressed file cut before its first byte of data
                for damage in damages:
                    yield "error", _damage_row(source, damage, "file")
                if not damages:
                    detail = "the file is empty" if codec is None else f"the {codec} stream holds no data"
                    yield "error", error_row(source, "file", "empty_file", detail)
                return
            if fmt in stream_readers:
                yield from stream_readers[fmt](stream, source, max_doc_bytes)
                return
            if fmt != "parquet" or codec is not None:
                detail = (
                    f"Parquet inside {codec}: decompress it first"
                    if fmt == "parquet"
                    else "neither the content nor the name is a document format (WARC, JSON lines, JSON, Parquet)"
                )
                yield "error", error_row(source, "file", "unknown_format", detail, stream.peek(200))
                return
    except OSError as e:  # gone or unreadable since the inputs were listed
        yield "error", error_row(source, "file", "unreadable_file", f"{type(e).__name__}: {e}")
        return
    yield from _read_parquet_file(path, source, max_doc_bytes)


def _sniff(stream: _Stream) -> str | None:
    head = stream.peek(64)
    if not head:
        return "empty"
    if head.startswith(b"PAR1"):
        return "parquet"
    text = head.removeprefix(UTF8_BOM)
    if text.startswith(UTF16_BOMS):
        return "jsonl"
    text = text.lstrip()
    if text.startswith(b"WARC/"):
        return "warc"
    if text.startswith(b"filedesc://"):
        return "arc"
    if text.startswith((b"{", b"[")):
        return "jsonl"
    return None
