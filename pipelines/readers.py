"""Readers: one input file (or dataset) -> a stream of documents and quarantined errors.

Each reader yields ``("doc", row)`` with a DOCUMENT_SCHEMA row, or ``("error", row)`` with an ERROR_SCHEMA row
(``source_file, record, reason, detail, preview``) for a record that cannot become a document. A reader never
raises for bad data: the rest of the file, and every other file, goes on; nothing is dropped without an error row.

**Formats.** The content decides, not the name: the first bytes are sniffed for gzip, zstd, bzip2 and xz
(decompressed, whatever the file is called: a gzip file named ``.jsonl`` is read as gzip), then for Parquet
(``PAR1``), WARC (``WARC/1.x``; WET files are WARC files of ``conversion`` records), ARC and JSON (``{`` or ``[``,
after a UTF-8 byte-order mark; UTF-16 with a BOM is transcoded). Only content that says nothing falls back on
the name (``.warc .wet .arc .jsonl .ndjson .json .parquet``, any case, optionally ``.gz .zst .bz2 .xz``).
``hf:<dataset>[:<config>]:<split>`` streams a Hugging Face dataset (needs ``datasets`` and the Hub).

- JSON: one object per line, or a JSON array (one line or pretty-printed, streamed element by element), or a
  pretty-printed object. A blank line is skipped; CRLF endings are fine; raw tabs inside strings are accepted.
- WARC: records are framed by ``Content-Length`` and checked (the block must end in ``\\r\\n\\r\\n`` before the
  next ``WARC/1.x`` line). A record whose framing is wrong is quarantined (``damaged_warc_record``) and reading
  resynchronises at the next ``WARC/1.x`` header line, so a bad ``Content-Length`` costs one record.
- Compressed files are read member by member (a ``.warc.gz`` holds one gzip member per record): a damaged member
  is quarantined (``corrupt_gzip``; ``corrupt_zstd`` ...) with the WARC-Record-ID it held when it can be read,
  and reading resumes at the next intact member; records before and after it are kept. The output of a member
  is only passed on once its checksum is verified (up to 16 MB held per member). A file that ends inside a
  member keeps what came before the cut (``truncated_gzip``, ``truncated_warc`` for a WARC record).

**Validation and coercion, per record.** Known fields are coerced to the schema's types: a number becomes a
string for ``id``/``url``/``date``/... (``"date": 20240101`` -> ``"20240101"``, a timestamp -> ISO 8601), a
numeric string becomes a float for ``lang_score`` or an int32 for ``dup_cluster_size``. A value that cannot be
coerced (``"lang_score": "high"``, an object as ``url``, ``true`` as ``id``, a number as ``text``) quarantines the
record with reason ``bad_field`` and the field name and value in ``detail``. Unknown fields are kept: they are
merged, with a ``metadata`` object (Dolma-style) or a JSON-object string, into ``metadata`` as one JSON object
(a top-level field whose name the metadata object already uses is stored as ``<name>@top``). NUL characters are
removed from texts; a text that is then empty is ``missing_text``.

**Duplicate ids (choice (a): renamed, never dropped).** Within one file the first document keeps its id; the
n-th repeat becomes ``<id>#dup-<n>`` (by order in the file, so a rerun gives the same ids) and keeps the original
in ``metadata["original_id"]``. Ids repeated across files are counted by ingest after its shards are written
(``cross_file_duplicate_ids`` in the stage summary) but not renamed: that needs a global pass.

**Markup hints.** An HTML page's ``<meta name="generator">`` and its number of code/command elements, and a
documentation MIME type, are kept in ``metadata["markup"]`` (``markup_hints``): extraction throws the markup away,
and the quality stage chooses a document's profile with them.

Quarantine reasons: ``bad_json``, ``not_an_object``, ``bad_utf8``, ``bad_unicode``, ``bad_field``,
``missing_text``, ``document_too_large``, ``no_text_extracted``, ``extraction_failed``, ``damaged_warc_record``,
``truncated_warc``, ``corrupt_<codec>``, ``truncated_<codec>``, ``corrupt_parquet``, ``empty_file``,
``binary_data`` (a run of binary lines in a JSON-lines file, one row), ``unknown_format``, ``unreadable_file``.
"""

from __future__ import annotations

import bz2
import codecs
import datetime as dt
import decimal
import hashlib
import io
import itertools
import json
import lzma
import math
import posixpath
import re
import zlib
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow as pa

from pipelines.schema import DOCUMENT_FIELDS, empty_document, error_row
from pipelines.shards import filesystem

READER_VERSION = 2  # part of ingest's config: a reader that reads differently redoes the ingest folder
DEFAULT_MAX_DOC_BYTES = 10_000_000
CODE_EXTENSIONS = {
    ".py",
    ".c",
    ".h",
    ".cc",
    ".cpp",
    ".hpp",
    ".java",
    ".js",
    ".ts",
    ".go",
    ".rs",
    ".rb",
    ".php",
    ".cs",
    ".swift",
    ".kt",
    ".scala",
    ".sh",
    ".sql",
    ".lua",
    ".r",
    ".jl",
    ".m",
    ".pl",
}
CODE_MIME_HINTS = ("x-python", "x-c", "x-java", "javascript", "x-sh", "x-rust", "x-go", "x-script")
COMPRESSION_SUFFIXES = (".gz", ".zst", ".zstd", ".bz2", ".xz")
UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")

Item = tuple[str, dict]


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


def unique_ids(items: Iterator[Item]) -> Iterator[Item]:
    """Renames the n-th repeat of an id to ``<id>#dup-<n>`` (original kept in ``metadata["original_id"]``)."""
    seen: set[str] = set()
    repeats: dict[str, int] = {}
    for kind, row in items:
        if kind == "doc":
            doc_id = row["id"]
            if doc_id in seen:
                n = repeats.get(doc_id, 0)
                while True:
                    n += 1
                    new_id = f"{doc_id}#dup-{n}"
                    if new_id not in seen:
                        break
                repeats[doc_id] = n
                metadata = json.loads(row["metadata"]) if row.get("metadata") else {}
                metadata["original_id"] = doc_id
                row["metadata"] = json.dumps(metadata, ensure_ascii=False)
                row["id"] = doc_id = new_id
            seen.add(doc_id)
        yield kind, row


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


# --- Opening: compression by magic bytes, member by member ------------------------------------------------------


@dataclass
class Damage:
    """A gap in a decompressed stream: ``at`` is the offset where the good data before it ends."""

    at: int
    reason: str
    detail: str
    preview: bytes = b""


def _zstd_decompressor():
    import zstandard

    return zstandard.ZstdDecompressor(max_window_size=1 << 31).decompressobj()


def _zstd_errors() -> tuple[type[Exception], ...]:
    import zstandard

    return (zstandard.ZstdError,)


# name: (magic at the start of a member, new decompressor, exceptions of damaged data)
_CODECS: dict[str, tuple[bytes, Callable, Callable[[], tuple[type[Exception], ...]]]] = {
    "gzip": (b"\x1f\x8b\x08", lambda: zlib.decompressobj(16 + zlib.MAX_WBITS), lambda: (zlib.error,)),
    "zstd": (b"\x28\xb5\x2f\xfd", _zstd_decompressor, _zstd_errors),
    "bz2": (b"BZh", bz2.BZ2Decompressor, lambda: (OSError, ValueError, EOFError)),
    "xz": (b"\xfd7zXZ\x00", lzma.LZMADecompressor, lambda: (lzma.LZMAError, EOFError)),
}


def _compression(head: bytes) -> str | None:
    for name, (magic, _, _) in _CODECS.items():
        if head.startswith(magic[:4]):
            return name
    return None


class _PlainSource:
    def __init__(self, f, head: bytes):
        self.f = f
        self.head = head
        self.damages: list[Damage] = []

    def read_chunk(self) -> bytes:
        if self.head:
            chunk, self.head = self.head, b""
            return chunk
        return self.f.read(1 << 20)


class _MemberSource:
    """Concatenated compressed members (gzip members, zstd frames, bz2/xz streams), each checked on its own.

    A member's output is passed on once the member ends with a valid checksum (more than ``hold`` bytes of one
    member are passed on as they come: a whole-file member of a large file). A member that fails to decompress
    becomes a ``Damage`` and the compressed bytes after its start are scanned for the next member's magic; a
    stream that ends inside a member passes on what it holds and records the cut.
    """

    def __init__(self, f, head: bytes, codec: str, hold: int = 16 << 20):
        self.f = f
        self.codec = codec
        self.magic, self.new_decoder, errors = _CODECS[codec]
        self.errors = errors()
        self.hold = hold
        self.damages: list[Damage] = []
        self.comp = bytearray(head)  # compressed bytes from the current member's start (or the scan point)
        self.comp_start = 0  # file offset of comp[0]
        self.fed = 0  # bytes of comp given to the decoder
        self.trimmed = False  # the current member's start is no longer in comp
        self.decoder = None
        self.state = "between"  # between members / in a member / scanning after damage
        self.out = bytearray()  # the current member's output, not yet passed on
        self.ready: list[bytes] = []
        self.emitted = 0
        self.done = False

    def read_chunk(self) -> bytes:
        while not self.ready and not self.done:
            chunk = self.f.read(1 << 20)
            if chunk:
                self.comp += chunk
                self._feed()
            else:
                self._finish()
        data = b"".join(self.ready)
        self.ready.clear()
        return data

    def _release(self) -> None:
        if self.out:
            self.ready.append(bytes(self.out))
            self.emitted += len(self.out)
            self.out.clear()

    def _feed(self) -> None:
        while True:
            if self.state == "between":
                zeros = len(self.comp) - len(self.comp.lstrip(b"\x00"))  # NUL padding after the last member
                del self.comp[:zeros]
                self.comp_start += zeros
                if len(self.comp) < len(self.magic):
                    return
                if not self.comp.startswith(self.magic):
                    self._damaged("bytes that are not a member where the next member should start")
                    continue
                self._start_member()
            if self.state == "scanning":
                i = self.comp.find(self.magic, 1)
                if i < 0:
                    drop = max(0, len(self.comp) - len(self.magic) + 1)
                    del self.comp[:drop]
                    self.comp_start += drop
                    return
                del self.comp[:i]
                self.comp_start += i
                self._start_member()
            data = bytes(self.comp[self.fed :])
            if not data:
                return
            try:
                self.out += self.decoder.decompress(data)
            except self.errors as e:
                self._damaged(f"{type(e).__name__}: {e}")
                continue
            self.fed = len(self.comp)
            if self.decoder.eof:
                consumed = len(self.comp) - len(self.decoder.unused_data)
                self._release()
                del self.comp[:consumed]
                self.comp_start += consumed
                self.state = "between"
                continue
            if len(self.out) > self.hold:
                self._release()
            if len(self.comp) > self.hold:  # a huge member: stop keeping its start for a rescan
                drop = self.fed - 4096
                del self.comp[:drop]
                self.comp_start += drop
                self.fed -= drop
                self.trimmed = True
            return

    def _start_member(self) -> None:
        self.decoder = self.new_decoder()
        self.fed = 0
        self.trimmed = False
        self.state = "member"

    def _damaged(self, why: str) -> None:
        dropped = bytes(self.out) or self._salvage()
        self.damages.append(
            Damage(
                self.emitted,
                f"corrupt_{self.codec}",
                f"{self.codec} data at byte {self.comp_start} is damaged ({why})"
                + (f"; {len(self.out)} bytes of its output dropped" if self.out else "")
                + "; reading resumes at the next intact member",
                dropped[:4096],
            )
        )
        self.out.clear()
        self.state = "scanning"
        self.decoder = None

    def _salvage(self, limit: int = 4096) -> bytes:
        """What a damaged member decompresses to before the damage (fed in small steps): for the error's preview,
        where a WARC record's header names the lost record."""
        if self.state != "member" or self.trimmed:
            return b""
        decoder, out = self.new_decoder(), b""
        for i in range(0, min(len(self.comp), 1 << 16), 64):
            try:
                out += decoder.decompress(bytes(self.comp[i : i + 64]))
            except self.errors:
                break
            if len(out) >= limit:
                break
        return out[:limit]

    def _finish(self) -> None:
        if self.state == "member" and (self.fed or self.out):
            self._release()  # what came before the cut is passed on: nothing after it can be checked anyway
            self.damages.append(
                Damage(self.emitted, f"truncated_{self.codec}", f"the {self.codec} stream ends inside a member")
            )
        elif self.state == "between" and self.comp:
            self._damaged(f"{len(self.comp)} bytes after the last member")
        self.done = True


@contextmanager
def open_stream(path: str) -> Iterator[tuple[_Stream, str | None]]:
    """The decompressed bytes of ``path`` as a ``_Stream``, and the compression found by magic (or None)."""
    fs, fpath = filesystem(path)
    with fs.open(fpath, "rb") as f:
        head = f.read(8)
        codec = _compression(head)
        source = _MemberSource(f, head, codec) if codec else _PlainSource(f, head)
        yield _Stream(source), codec


class _Stream:
    """Buffered bytes over a source: peek, readline, scan and rewind within what is kept, damage bookkeeping.

    Offsets are absolute (bytes since the start of the decompressed stream). Bytes before ``keep_from`` (or,
    when it is None, before the read position) may be dropped from memory.
    """

    def __init__(self, source):
        self.source = source
        self.buf = bytearray()
        self.pos = 0
        self.base = 0
        self.eof = False
        self.keep_from: int | None = None
        self.reported = 0  # damages already turned into error rows

    def _more(self) -> bool:
        if self.eof:
            return False
        chunk = self.source.read_chunk()
        if not chunk:
            self.eof = True
            return False
        cut = self.pos if self.keep_from is None else max(0, min(self.pos, self.keep_from - self.base))
        if cut > (1 << 20) and cut * 2 > len(self.buf):
            del self.buf[:cut]
            self.pos -= cut
            self.base += cut
        self.buf += chunk
        return True

    def tell(self) -> int:
        return self.base + self.pos

    def seek(self, offset: int) -> None:
        if not self.base <= offset <= self.base + len(self.buf):
            raise ValueError(f"offset {offset} is no longer buffered")
        self.pos = offset - self.base

    def available(self) -> int:
        return len(self.buf) - self.pos

    def peek(self, n: int) -> bytes:
        while self.available() < n and self._more():
            pass
        return bytes(self.buf[self.pos : self.pos + n])

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            while self._more():
                pass
            n = self.available()
        data = self.peek(n)
        self.pos += len(data)
        return data

    def read_chunk(self) -> bytes:
        """What is buffered, or the next chunk of the source (for readers that parse as they go)."""
        if not self.available():
            self._more()
        return self.read(self.available())

    def readline(self, limit: int) -> bytes:
        """Up to and including the next ``\\n``, at most ``limit`` bytes."""
        searched = 0
        while True:
            i = self.buf.find(b"\n", self.pos + searched, self.pos + limit)
            if i >= 0:
                return self.read(i + 1 - self.pos)
            searched = self.available()
            if searched >= limit or not self._more():
                return self.read(min(limit, self.available()))

    def skip_line(self) -> None:
        while True:
            i = self.buf.find(b"\n", self.pos)
            if i >= 0:
                self.pos = i + 1
                return
            self.pos = len(self.buf)
            if not self._more():
                return

    def search(self, pattern: re.Pattern, limit: int) -> re.Match | None:
        """The first match starting within ``limit`` bytes of the position (position unchanged)."""
        while True:
            m = pattern.search(self.buf, self.pos, self.pos + limit)
            if m or self.available() >= limit or not self._more():
                return m

    def scan_to(self, needle: bytes, max_bytes: int | None = None) -> int | None:
        """Move to the next ``needle`` that starts within ``max_bytes`` from here and return its offset; else move
        ``max_bytes`` on (or to the end) and return None. Scanned bytes may be dropped from memory."""
        end = None if max_bytes is None else self.tell() + max_bytes
        while True:
            stop = len(self.buf) if end is None else min(len(self.buf), end - self.base)  # a match starts before
            i = self.buf.find(needle, self.pos, stop + len(needle) - 1)
            if 0 <= i < stop:
                self.pos = i
                return self.tell()
            if end is not None and self.base + len(self.buf) >= end + len(needle) - 1:
                self.pos = end - self.base
                return None
            self.pos = max(self.pos, min(stop, len(self.buf) - len(needle) + 1))
            if not self._more():
                self.pos = stop
                return None

    def damages_until(self, offset: int) -> list[Damage]:
        """Unreported damages at or before ``offset`` (marked reported)."""
        out = []
        damages = self.source.damages
        while self.reported < len(damages) and damages[self.reported].at <= offset:
            out.append(damages[self.reported])
            self.reported += 1
        return out

    def damage_within(self, start: int, end: int, open_end: bool) -> Damage | None:
        """The first unreported damage strictly inside ``[start, end)`` (or at ``end`` when the span is cut)."""
        for d in self.source.damages[self.reported :]:
            if start < d.at < end or (open_end and d.at == end):
                return d
        return None

    def mark_reported(self, damage: Damage) -> None:
        damages = self.source.damages
        self.reported = max(self.reported, damages.index(damage) + 1)


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


# --- Records -> documents: validation and coercion ------------------------------------------------------------


def _doc_id(source: str, record: object) -> str:
    return hashlib.sha1(f"{source}\x00{record}".encode()).hexdigest()[:20]


def _domain(url: str | None, content_type: str = "") -> str:
    if any(hint in content_type for hint in CODE_MIME_HINTS):
        return "code"
    ext = posixpath.splitext((url or "").split("?")[0])[1].lower()
    return "code" if ext in CODE_EXTENSIONS else "web"


class _Uncoercible(ValueError):
    pass


def _show(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 200 else shown[:200] + "..."


def _as_string(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise _Uncoercible("a boolean is not a string")
    if isinstance(value, int | decimal.Decimal):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Uncoercible("not a finite number")
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _Uncoercible(f"bytes that are not UTF-8 ({e})") from None
    raise _Uncoercible(f"a {type(value).__name__} is not a string")


def _as_float(value: object, limit: float = 3.4e38) -> float:
    if isinstance(value, bool):
        raise _Uncoercible("a boolean is not a number")
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise _Uncoercible("not a number") from None
    elif isinstance(value, int | float | decimal.Decimal):
        number = float(value)
    else:
        raise _Uncoercible(f"a {type(value).__name__} is not a number")
    if not math.isfinite(number) or abs(number) > limit:
        raise _Uncoercible("not a finite float32")
    return number


def _as_int(value: object, bits: int) -> int:
    if isinstance(value, bool):
        raise _Uncoercible("a boolean is not an integer")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        number = int(value)
    else:
        raise _Uncoercible("not an integer")
    if not -(2 ** (bits - 1)) <= number < 2 ** (bits - 1):
        raise _Uncoercible(f"out of the int{bits} range")
    return number


def _coercer(field: pa.Field) -> Callable[[object], object]:
    if pa.types.is_string(field.type):
        return _as_string
    if pa.types.is_floating(field.type):
        return _as_float
    if pa.types.is_integer(field.type):
        return lambda value: _as_int(value, field.type.bit_width)
    raise TypeError(f"no coercion for {field}")


# Every schema column except ``text`` and ``metadata``, which have their own rules.
_COERCE = {f.name: _coercer(f) for f in DOCUMENT_FIELDS if f.name not in ("text", "metadata")}


def _json_object(value: object) -> dict:
    """A ``metadata`` value as a dict: an object, a JSON-object string, or anything else kept under ``metadata``."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, dict):
            return parsed
    return {"metadata": value}


def _checked_text(
    text: object, source: str, record: object, max_doc_bytes: int, preview: bytes | str = b""
) -> tuple[str | None, dict | None]:
    """Returns (text, None) for a usable text, or (None, error row)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, error_row(source, record, "bad_utf8", f"field 'text': {e}", preview or text)
    if text is None:
        return None, error_row(source, record, "missing_text", "no 'text' field (or it is null)", preview)
    if not isinstance(text, str):
        detail = f"field 'text': {_show(text)} is a {type(text).__name__}, not a string"
        return None, error_row(source, record, "bad_field", detail, preview)
    text = text.replace("\x00", "")
    if not text.strip():
        return None, error_row(source, record, "missing_text", "text is empty (or only whitespace / NUL)", preview)
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as e:  # lone surrogates from a JSON \ud800 escape
        return None, error_row(
            source, record, "bad_unicode", f"field 'text': {e}", text[:200].encode("utf-8", "replace")
        )
    if size > max_doc_bytes:
        return None, error_row(
            source, record, "document_too_large", f"{size} bytes > limit {max_doc_bytes}", text[:200]
        )
    return text, None


def _row_to_document(
    row: dict, source: str, record: object, max_doc_bytes: int, preview: bytes | str | None = None
) -> Item:
    """One input record as a document, every field coerced to the schema, or an error row saying which field."""

    def error(err: dict) -> Item:
        if preview is None and not err["preview"]:  # built only for a quarantined record: rows can be large
            err["preview"] = _preview(row)
        return "error", err

    text, err = _checked_text(row.get("text"), source, record, max_doc_bytes, preview or b"")
    if err:
        return error(err)
    doc = empty_document()
    extra = {}
    for key, value in row.items():
        if value is None or key in ("text", "metadata"):
            continue
        coerce = _COERCE.get(key)
        if coerce is None:
            extra[str(key)] = value
            continue
        try:
            doc[key] = coerce(value)
        except _Uncoercible as e:
            return error(error_row(source, record, "bad_field", f"field {key!r}: {_show(value)}: {e}", preview or b""))
    metadata = row.get("metadata")
    if not extra and isinstance(metadata, str) and _is_json_object(metadata):
        doc["metadata"] = metadata  # a curated stage's own column: kept as it is
    elif extra or metadata is not None:
        merged = dict(_json_object(metadata)) if metadata is not None else {}
        for key, value in extra.items():
            merged[f"{key}@top" if key in merged and merged[key] != value else key] = value
        try:
            doc["metadata"] = json.dumps(merged, ensure_ascii=False, default=str)
        except (ValueError, RecursionError) as e:
            detail = f"field 'metadata': {type(e).__name__}: {e}"
            return error(error_row(source, record, "bad_field", detail, preview or b""))
    doc["text"] = text
    if not (doc["id"] or "").strip():
        doc["id"] = _doc_id(source, record)
    doc["source"] = doc["source"] or source
    doc["domain"] = doc["domain"] or _domain(doc["url"])
    for key, value in doc.items():  # a \ud800 escape anywhere would fail the Parquet writer, far from here
        if isinstance(value, str) and key != "text":
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                return error(error_row(source, record, "bad_unicode", f"field {key!r}: {e}", preview or b""))
    return "doc", doc


def _is_json_object(value: str) -> bool:
    if not value.lstrip().startswith("{"):
        return False
    try:
        return isinstance(json.loads(value), dict)
    except (ValueError, RecursionError):
        return False


def _preview(row: dict) -> str:
    try:
        return json.dumps(row, ensure_ascii=False, default=str)[:200]
    except (ValueError, RecursionError):
        return repr(row)[:200]


def _damage_row(source: str, damage: Damage, record: object = None) -> dict:
    if record is None:
        m = re.search(rb"WARC-Record-ID:\s*(<[^>\r\n]*>)", damage.preview)
        record = m.group(1).decode("ascii", "replace") if m else f"at byte {damage.at} of the decompressed data"
    return error_row(source, record, damage.reason, damage.detail, damage.preview)


# --- JSON ------------------------------------------------------------------------------------------------------

_DECODER = json.JSONDecoder(strict=False)  # raw control characters (tabs) in strings are common in dumps
_NON_WS = re.compile(r"[^ \t\r\n]")
_NEXT_ELEMENT = re.compile(r",\s*\{")
_NEXT_TOP_VALUE = re.compile(r"\n\s*[\[{]")


def read_jsonl(path: str, max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES) -> Iterator[Item]:
    """JSON lines, a JSON array or a pretty-printed object (the content decides)."""
    with open_stream(path) as (stream, _):
        yield from _read_json_stream(stream, posixpath.basename(path), max_doc_bytes)


def _read_json_stream(stream: _Stream, source: str, max_doc_bytes: int) -> Iterator[Item]:
    head = stream.peek(3)
    if head.startswith(UTF8_BOM):
        stream.read(3)
    elif head.startswith(UTF16_BOMS):
        stream = _Stream(_Transcoder(stream, "utf-16"))
    first = stream.peek(1 << 16).lstrip()
    if first.startswith(b"[") or first.split(b"\n", 1)[0].strip() == b"{":
        yield from _read_json_values(stream, source, max_doc_bytes)
    else:
        yield from _read_json_lines(stream, source, max_doc_bytes)


class _Transcoder:
    """Bytes of another encoding (UTF-16 with its BOM) as UTF-8."""

    def __init__(self, stream: _Stream, encoding: str):
        self.stream = stream
        self.decoder = codecs.getincrementaldecoder(encoding)("replace")
        self.damages = stream.source.damages

    def read_chunk(self) -> bytes:
        chunk = self.stream.read_chunk()
        return self.decoder.decode(chunk, final=not chunk).encode("utf-8")


def _json_record(data: bytes, source: str, record: object, max_doc_bytes: int) -> Iterator[Item]:
    data = data.removeprefix(UTF8_BOM)  # files concatenated with their BOMs
    if not data.strip():
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        yield "error", error_row(source, record, "bad_utf8", str(e), data)
        return
    try:
        row = _DECODER.decode(text)
    except json.JSONDecodeError as e:
        yield "error", error_row(source, record, "bad_json", str(e), data)
        return
    except RecursionError:
        yield "error", error_row(source, record, "bad_json", "nested too deeply to parse", data)
        return
    if not isinstance(row, dict):
        detail = f"a JSON {type(row).__name__}, not an object"
        yield "error", error_row(source, record, "not_an_object", detail, data)
        return
    yield _row_to_document(row, source, record, max_doc_bytes, data)


def _read_json_lines(stream: _Stream, source: str, max_doc_bytes: int) -> Iterator[Item]:
    limit = 2 * max_doc_bytes + 4096  # JSON escaping can double a text
    line_no = 0
    binary: list = []  # a run of binary lines, quarantined as one row: [first line, last line, preview]

    def end_binary_run() -> Iterator[Item]:
        if binary:
            first, last, preview = binary
            record = f"line {first}" if first == last else f"lines {first}-{last}"
            detail = f"binary data, not JSON lines ({last - first + 1} lines)"
            yield "error", error_row(source, record, "binary_data", detail, preview)
            binary.clear()

    while True:
        start = stream.tell()
        line = stream.readline(limit)
        if not line:
            break
        line_no += 1
        end = stream.tell()
        for damage in stream.damages_until(start):
            yield "error", _damage_row(source, damage, f"before line {line_no}")
        cut = not line.endswith(b"\n")
        damage = stream.damage_within(start, end, open_end=cut)
        if damage is not None:
            stream.mark_reported(damage)
            yield "error", error_row(source, line_no, damage.reason, damage.detail, line)
            continue
        if len(line) >= limit and cut:
            stream.skip_line()
        if _is_binary(line):
            if binary:
                binary[1] = line_no
            else:
                binary[:] = [line_no, line_no, line]
            continue
        yield from end_binary_run()
        if len(line) >= limit and cut:
            detail = f"line longer than {limit} bytes (limit {max_doc_bytes} bytes of text)"
            yield "error", error_row(source, line_no, "document_too_large", detail, line)
            continue
        yield from _json_record(line, source, line_no, max_doc_bytes)
    yield from end_binary_run()
    for damage in stream.damages_until(float("inf")):
        yield "error", _damage_row(source, damage, f"after line {line_no}")


def _is_binary(line: bytes) -> bool:
    """Not a (damaged) JSON record but binary data: no ``{``/``[`` start, and NUL bytes or not UTF-8."""
    if line.removeprefix(UTF8_BOM).lstrip()[:1] in (b"{", b"[", b""):
        return False
    if b"\x00" in line:
        return True
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


class _BadValue(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class _TextBuffer:
    """Decoded text over a ``_Stream``, grown on demand, for parsing one JSON value at a time."""

    def __init__(self, stream: _Stream, limit: int):
        self.stream = stream
        self.decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.limit = limit

    def more(self) -> bool:
        """Read on until the unparsed text about doubles (so retrying a long value costs linear time)."""
        if self.eof:
            return False
        want = max(1 << 16, len(self.buf) - self.pos)
        parts, got = [], 0
        while got < want:
            chunk = self.stream.read_chunk()
            if not chunk:
                parts.append(self.decoder.decode(b"", final=True))
                self.eof = True
                break
            parts.append(self.decoder.decode(chunk))
            got += len(chunk)
        if self.pos > (1 << 20):
            self.buf = self.buf[self.pos :]
            self.pos = 0
        self.buf += "".join(parts)
        return True

    def next_char(self) -> str | None:
        while True:
            m = _NON_WS.search(self.buf, self.pos)
            if m:
                self.pos = m.start()
                return self.buf[self.pos]
            self.pos = len(self.buf)
            if not self.more():
                return None

    def value(self) -> tuple[object, str]:
        while True:
            try:
                obj, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                incomplete = e.msg.startswith("Unterminated string") or e.pos >= len(self.buf) - 1
                if incomplete and not self.eof:
                    if len(self.buf) - self.pos > self.limit:
                        raise _BadValue("document_too_large", f"a JSON value longer than {self.limit} bytes") from None
                    self.more()
                    continue
                raise _BadValue("bad_json", str(e)) from None
            except RecursionError:
                raise _BadValue("bad_json", "nested too deeply to parse") from None
            if end == len(self.buf) and not self.eof and isinstance(obj, int | float):
                self.more()  # a number may go on in the next chunk
                continue
            raw = self.buf[self.pos : end]
            self.pos = end
            return obj, raw

    def resync(self, pattern: re.Pattern) -> str:
        """Skip to the start of ``pattern``'s next match after here (or to the end); returns the start of what
        was skipped, for the error's preview."""
        skipped = self.buf[self.pos : self.pos + 400]
        self.pos += 1
        while True:
            m = pattern.search(self.buf, self.pos)
            if m:
                self.pos = m.start()
                return skipped
            self.pos = max(self.pos, len(self.buf) - 4096)  # a match may straddle the chunk edge
            if not self.more():
                self.pos = len(self.buf)
                return skipped

    def at_end(self) -> bool:
        return self.eof and self.pos >= len(self.buf)


def _read_json_values(stream: _Stream, source: str, max_doc_bytes: int) -> Iterator[Item]:
    """Top-level JSON values one after another; an array's elements are records (streamed), an object is one."""
    text = _TextBuffer(stream, 2 * max_doc_bytes + 4096)
    n = 0  # records seen: labels (``element <n>``) and derived ids

    def record(parse_again: re.Pattern) -> Generator[Item, None, bool]:
        """Parse one value as a record; after a bad one, skip to where ``parse_again`` says the next may start.
        Returns True when that skip reached the end of the file."""
        nonlocal n
        label = f"element {n}"
        n += 1
        try:
            obj, raw = text.value()
        except _BadValue as e:
            preview = text.resync(parse_again).encode("utf-8", "replace")
            yield "error", error_row(source, label, e.reason, str(e), preview)
            return text.at_end()
        preview = raw[:400].encode("utf-8", "replace")
        if isinstance(obj, dict):
            yield _row_to_document(obj, source, label, max_doc_bytes, preview)
        else:
            detail = f"a JSON {type(obj).__name__}, not an object"
            yield "error", error_row(source, label, "not_an_object", detail, preview)
        return False

    while (char := text.next_char()) is not None:
        for damage in stream.damages_until(stream.tell()):
            yield "error", _damage_row(source, damage, f"before element {n}")
        if char != "[":
            yield from record(_NEXT_TOP_VALUE)
            continue
        text.pos += 1  # inside a top-level array: elements, separated by commas
        expect_value = True
        while True:
            char = text.next_char()
            if char is None:
                yield "error", error_row(source, f"element {n}", "bad_json", "the file ends inside a JSON array")
                break
            if char == "]":
                text.pos += 1
                break
            if expect_value:
                skipped_to_end = yield from record(_NEXT_ELEMENT)
                expect_value = False
            elif char == ",":
                text.pos += 1
                expect_value = True
                continue
            else:
                preview = text.resync(_NEXT_ELEMENT).encode("utf-8", "replace")
                detail = f"expected ',' or ']' after element {n - 1}, found {char!r}"
                yield "error", error_row(source, f"after element {n - 1}", "bad_json", detail, preview)
                skipped_to_end = text.at_end()
            if skipped_to_end:  # the error row above already covers the rest of the file
                break
    for damage in stream.damages_until(float("inf")):
        yield "error", _damage_row(source, damage, f"after element {n}")


# --- Parquet ---------------------------------------------------------------------------------------------------


def read_parquet(path: str, max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES) -> Iterator[Item]:
    yield from _read_parquet_file(path, posixpath.basename(path), max_doc_bytes)


def _read_parquet_file(path: str, source: str, max_doc_bytes: int) -> Iterator[Item]:
    import pyarrow.parquet as pq

    fs, fpath = filesystem(path)
    row_no = 0
    try:
        with fs.open(fpath, "rb") as f:
            pf = pq.ParquetFile(f)
            if "text" not in pf.schema_arrow.names:
                yield (
                    "error",
                    error_row(source, "schema", "missing_text", f"no 'text' column in {pf.schema_arrow.names}"),
                )
                return
            for batch in pf.iter_batches(batch_size=256):
                for row in batch.to_pylist():
                    yield _row_to_document(row, source, row_no, max_doc_bytes)
                    row_no += 1
    except (pa.ArrowException, OSError) as e:
        yield "error", error_row(source, f"after row {row_no}", "corrupt_parquet", f"{type(e).__name__}: {e}")


# --- WARC / WET ------------------------------------------------------------------------------------------------

_CHARSET = re.compile(rb"""<meta[^>]+charset=["']?([A-Za-z0-9_\-]+)""", re.I)
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_HEADER_LINE = re.compile(rb"WARC/1\.[01]\r?\n")
_HEADER_LIMIT = 1 << 16
DOCUMENT_RECORD_TYPES = ("response", "conversion", "resource")


def _decode_payload(payload: bytes, content_type: str) -> str | None:
    """Decode with the declared charset (HTTP header, then <meta>), then UTF-8; None if nothing fits."""
    candidates = []
    m = re.search(r"charset=([A-Za-z0-9_\-]+)", content_type, re.I)
    if m:
        candidates.append(m.group(1))
    m = _CHARSET.search(payload[:4096])
    if m:
        candidates.append(m.group(1).decode("ascii"))
    candidates.append("utf-8")
    for charset in candidates:
        try:
            return payload.decode(charset)
        except (UnicodeDecodeError, LookupError):
            continue
    return None


EXTRACTOR = "datatrove.Trafilatura(favour_precision=True, deduplicate=False)"


# What a page's markup says about its kind, recorded at ingest (before extraction throws the markup away) as
# ``metadata["markup"]``; the quality stage reads it to choose a document's profile (pipelines/quality.py).
_GENERATOR = re.compile(
    r"""<meta\s[^>]*?(?:name\s*=\s*["']generator["'][^>]*?content\s*=\s*["']([^"'>]*)"""
    r"""|content\s*=\s*["']([^"'>]*)["'][^>]*?name\s*=\s*["']generator["'])""",
    re.IGNORECASE,
)
_CODE_MARKUP = re.compile(
    r"<(?:pre|code|kbd|tt|samp)[\s>]"
    r"""|\sclass\s*=\s*["'][^"']*\b(?:command|option|filename|screen|programlisting|userinput|computeroutput)\b""",
    re.IGNORECASE,
)
_DOC_MIME_TYPES = ("markdown", "x-rst", "troff", "texinfo", "docbook", "x-tex", "asciidoc")
MARKUP_SCAN_CHARS = 200_000


def markup_hints(content_type: str, html: str | None) -> dict:
    """``generator`` (<meta name="generator">), ``code_tags`` (code/command elements and DocBook classes) of an
    HTML page, and ``mime`` for documentation formats; empty when there is nothing to say."""
    hints: dict = {}
    mime = content_type.split(";")[0].strip().lower()
    if any(kind in mime for kind in _DOC_MIME_TYPES):
        hints["mime"] = mime
    if html:
        head = html[:MARKUP_SCAN_CHARS]
        match = _GENERATOR.search(head)
        if match:
            hints["generator"] = (match.group(1) or match.group(2) or "").strip()[:200]
        code_tags = sum(1 for _ in _CODE_MARKUP.finditer(head))
        if code_tags:
            hints["code_tags"] = code_tags
    return hints


class _Extractor:
    """datatrove's Trafilatura extractor (``EXTRACTOR``), built once per process: it is the slow part of ingest."""

    _instance = None

    @classmethod
    def extract(cls, html: str) -> str:
        if cls._instance is None:
            from datatrove.pipeline.extractors import Trafilatura

            # deduplicate=False: Trafilatura's dedup is a per-process cache of seen paragraphs, so it would make a
            # page's text depend on what the same worker extracted before (and hide near-duplicates from dedup).
            cls._instance = Trafilatura(favour_precision=True, deduplicate=False, timeout=1.0)
        return cls._instance.extract(html) or ""


def read_warc(path: str, max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES) -> Iterator[Item]:
    with open_stream(path) as (stream, _):
        yield from _read_warc_stream(stream, posixpath.basename(path), max_doc_bytes)


@dataclass
class _Framed:
    """One WARC record as framed by the reader: its header fields and raw bytes, or why it is damaged."""

    headers: dict[str, str]
    raw: bytes | None = None  # header + block, when the block was kept (not too large)
    problem: tuple[str, str] | None = None  # (reason, detail)
    preview: bytes = b""


def _record_label(headers: dict[str, str], start: int) -> str:
    return headers.get("warc-record-id") or f"record at byte {start}"


def _parse_warc_headers(block: bytes) -> dict[str, str]:
    headers = {}
    for line in block.decode("utf-8", "replace").splitlines()[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


def _frame_warc(stream: _Stream, source: str, block_limit: int) -> Iterator[tuple[int, _Framed] | dict]:
    """Frame the records of a WARC stream, resynchronising after damage. Yields ``(start, _Framed)`` or error rows."""
    while True:
        # Blank lines between records are tolerated; anything else before a header line is skipped and reported.
        while stream.peek(1) in (b"\r", b"\n"):
            stream.read(1)
        start = stream.tell()
        for damage in stream.damages_until(start):
            yield _damage_row(source, damage)
        if not stream.peek(1):
            return
        stream.keep_from = start
        if not _is_header_line(stream):
            yield from _resync(stream, source, start, "no WARC header line where a record should start")
            continue
        head = stream.search(_HEADER_END, _HEADER_LIMIT)
        if head is None and stream.available() < _HEADER_LIMIT:  # the file ends inside the header
            partial = stream.read()
            damage = stream.damage_within(start, stream.tell(), open_end=True)
            if damage is not None:
                stream.mark_reported(damage)
            detail = damage.detail if damage else "the file ends inside the record's header"
            yield start, _Framed(_parse_warc_headers(partial), problem=("truncated_warc", detail), preview=partial)
            continue
        if head is None:
            yield from _resync(stream, source, start, f"a WARC header longer than {_HEADER_LIMIT} bytes")
            continue
        header_bytes = stream.read(head.end() - stream.pos)
        headers = _parse_warc_headers(header_bytes)
        length = headers.get("content-length", "")
        if not length.isdigit():
            yield from _resync(stream, source, start, f"bad Content-Length {length!r}", headers)
            continue
        length = int(length)
        block_start = stream.tell()
        if length > block_limit:
            # Too large to keep: skip it, unless a record header turns up inside (then the length is wrong).
            stream.keep_from = None
            inner = stream.scan_to(b"\r\n\r\nWARC/1.", length)
            if inner is not None:
                stream.read(4)
                detail = f"Content-Length {length} runs into the next record {inner + 4 - block_start} bytes on"
                yield start, _Framed(headers, problem=("damaged_warc_record", detail), preview=header_bytes)
                continue
            cut = stream.tell() < block_start + length
            if not cut and _trailer(stream):
                yield start, _Framed(headers, problem=("document_too_large", f"{length} byte record"))
                continue
            damage = stream.damage_within(start, stream.tell(), open_end=True)
            if damage is not None:
                stream.mark_reported(damage)
            detail = damage.detail if damage else "the file ends inside the record"
            yield start, _Framed(headers, problem=("truncated_warc", detail), preview=header_bytes)
            continue
        block = stream.read(length)
        end = stream.tell()
        ok = len(block) == length and _trailer(stream)
        damage = stream.damage_within(start, stream.tell(), open_end=len(block) < length)
        if damage is not None:  # a lost stretch of compressed data inside this record
            stream.mark_reported(damage)
            reason = "truncated_warc" if damage.reason.startswith("truncated_") else damage.reason
            yield start, _Framed(headers, problem=(reason, damage.detail), preview=header_bytes)
            stream.seek(max(damage.at, stream.base))
            continue
        if len(block) < length:
            stream.seek(block_start)
            if stream.scan_to(b"\r\n\r\nWARC/1.", len(block)) is not None:  # records inside: a wrong length
                stream.read(4)
                detail = f"Content-Length {length} runs past the end of the file, over the next records"
                yield start, _Framed(headers, problem=("damaged_warc_record", detail), preview=header_bytes)
                continue
            detail = f"the file ends inside the record: {length - len(block)} bytes missing"
            yield start, _Framed(headers, problem=("truncated_warc", detail), preview=header_bytes)
            continue
        if not ok:
            stream.seek(block_start)
            yield from _resync(
                stream,
                source,
                start,
                f"Content-Length {length} does not end the record (no record boundary at byte {end})",
                headers,
                header_bytes,
            )
            continue
        yield start, _Framed(headers, raw=header_bytes + block)


def _trailer(stream: _Stream) -> bool:
    """Consume the ``\\r\\n\\r\\n`` that ends a record; False when the block is followed by something else.

    (Whatever follows a proper ending is the next record's business: junk there is reported on its own.)
    """
    tail = stream.peek(4)
    if tail == b"\r\n\r\n":
        stream.read(4)
        return True
    if tail[:2] == b"\n\n":
        stream.read(2)
        return True
    if tail in (b"", b"\r\n", b"\n"):  # the file ends after the block: a missing ending costs nothing
        stream.read(len(tail))
        return True
    return stream.peek(16).lstrip(b"\r\n").startswith(b"WARC/1.")  # a short ending, then the next record


def _resync(
    stream: _Stream, source: str, start: int, why: str, headers: dict | None = None, preview: bytes = b""
) -> Iterator[tuple[int, _Framed]]:
    """Quarantine what lies between ``start`` and the next ``WARC/1.x`` header line (scanning from here), and
    move there."""
    stream.keep_from = None
    preview = preview or stream.peek(200)
    while stream.scan_to(b"\nWARC/1.") is not None:
        stream.pos += 1
        if _is_header_line(stream):
            break
    skipped = stream.tell() - start
    rest = f"{skipped} bytes skipped to the next record" if stream.peek(1) else "the rest of the file skipped"
    yield start, _Framed(headers or {}, problem=("damaged_warc_record", f"{why}; {rest}"), preview=preview)


def _is_header_line(stream: _Stream) -> bool:
    return _HEADER_LINE.match(stream.peek(10)) is not None


def _read_warc_stream(stream: _Stream, source: str, max_doc_bytes: int) -> Iterator[Item]:
    from warcio.recordloader import ArcWarcRecordLoader

    loader = ArcWarcRecordLoader()
    for framed in _frame_warc(stream, source, max_doc_bytes + (1 << 20)):
        if isinstance(framed, dict):
            yield "error", framed
            continue
        start, rec = framed
        rec_type = rec.headers.get("warc-type", "")
        label = _record_label(rec.headers, start)
        if rec.problem is not None:
            reason, detail = rec.problem
            if reason == "document_too_large" and rec_type not in DOCUMENT_RECORD_TYPES:
                continue  # a large request/metadata record is not a document
            yield "error", error_row(source, label, reason, detail, rec.preview)
            continue
        if rec_type not in DOCUMENT_RECORD_TYPES:
            continue
        if rec_type == "response" and not rec.headers.get("warc-target-uri"):
            yield "error", error_row(source, label, "damaged_warc_record", "response without WARC-Target-URI", rec.raw)
            continue
        try:
            record = loader.parse_record_stream(io.BytesIO(rec.raw), known_format="warc")
            if record.http_headers is not None:
                content_type = record.http_headers.get_header("Content-Type") or ""
            else:
                content_type = record.rec_headers.get_header("Content-Type") or ""
            payload = record.content_stream().read(max_doc_bytes + 1)
        except Exception as e:  # warcio raises many types for a malformed record: it is quarantined, not fatal
            yield "error", error_row(source, label, "damaged_warc_record", f"{type(e).__name__}: {e}", rec.raw)
            continue
        yield from _warc_document(record, rec_type, content_type, payload, source, label, max_doc_bytes)


def _warc_document(
    record, rec_type: str, content_type: str, payload: bytes, source: str, label: str, max_doc_bytes: int
) -> Iterator[Item]:
    if len(payload) > max_doc_bytes:
        yield "error", error_row(source, label, "document_too_large", f"> {max_doc_bytes} bytes", payload)
        return
    text = _decode_payload(payload, content_type)
    if text is None:
        yield "error", error_row(source, label, "bad_utf8", f"undecodable as {content_type!r}", payload)
        return
    is_html = rec_type == "response" and ("html" in content_type or not content_type)
    hints = markup_hints(content_type, text if is_html else None)
    if is_html:
        try:
            text = _Extractor.extract(text)
        except Exception as e:  # the extractor's own failure on one page must not end the file
            yield "error", error_row(source, label, "extraction_failed", f"{type(e).__name__}: {e}", payload)
            return
    url = record.rec_headers.get_header("WARC-Target-URI")
    text, err = _checked_text(text, source, label, max_doc_bytes, payload)
    if err:
        if is_html and err["reason"] == "missing_text":
            err["reason"], err["detail"] = "no_text_extracted", "the HTML page has no main text"
        yield "error", err
        return
    yield (
        "doc",
        empty_document(
            id=label.strip("<>").removeprefix("urn:uuid:"),
            text=text,
            url=url,
            source=source,
            domain=_domain(url, content_type),
            date=record.rec_headers.get_header("WARC-Date"),
            metadata=json.dumps({"markup": hints}, ensure_ascii=False) if hints else None,
        ),
    )


def _read_arc_stream(stream: _Stream, source: str, max_doc_bytes: int) -> Iterator[Item]:
    """Legacy ARC files, through warcio (no resynchronisation: a damaged ARC record ends the file, reported)."""
    from warcio.archiveiterator import ArchiveIterator

    record_no = 0
    try:
        for record in ArchiveIterator(stream, arc2warc=True):
            record_no += 1
            if record.rec_type not in DOCUMENT_RECORD_TYPES:
                continue
            label = record.rec_headers.get_header("WARC-Record-ID") or _doc_id(source, record_no)
            if record.http_headers is not None:
                content_type = record.http_headers.get_header("Content-Type") or ""
            else:
                content_type = record.rec_headers.get_header("Content-Type") or ""
            payload = record.content_stream().read(max_doc_bytes + 1)
            yield from _warc_document(record, record.rec_type, content_type, payload, source, label, max_doc_bytes)
    except Exception as e:  # warcio raises many types for a damaged file
        yield "error", error_row(source, f"after record {record_no}", "damaged_warc_record", f"{type(e).__name__}: {e}")


# --- Hugging Face datasets -------------------------------------------------------------------------------------


def parse_hf_spec(spec: str) -> tuple[str, str | None, str]:
    parts = spec.removeprefix("hf:").split(":")
    if len(parts) == 2:
        return parts[0], None, parts[1]
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    raise ValueError(f"bad Hugging Face source {spec!r}: use hf:<dataset>:<split> or hf:<dataset>:<config>:<split>")


def read_hf(spec: str, max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES) -> Iterator[Item]:
    """Stream a Hugging Face dataset. Needs ``pip install datasets`` and access to the Hub."""
    name, config, split = parse_hf_spec(spec)
    try:
        import datasets
    except ImportError as e:
        raise RuntimeError("reading hf: sources needs the 'datasets' package: pip install datasets") from e
    try:
        dataset = datasets.load_dataset(name, config, split=split, streaming=True)
        iterator = iter(dataset)
        first = next(iterator, None)
    except Exception as e:  # the Hub client raises many types when offline
        raise RuntimeError(
            f"cannot load Hugging Face dataset {name!r} (config={config}, split={split}): {type(e).__name__}: {e}. "
            "If this machine is offline, download the dataset where the Hub is reachable "
            "(e.g. `datasets.load_dataset(...).to_parquet(...)`) and pass the Parquet/JSONL files instead."
        ) from e
    if first is None:
        return
    source = f"hf:{name}"
    for i, row in enumerate(itertools.chain([first], iterator)):
        yield _row_to_document(dict(row), source, i, max_doc_bytes)
