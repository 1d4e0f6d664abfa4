"""WARC / WET / ARC input: records framed by ``Content-Length`` and checked, resynchronisation at the next
``WARC/1.x`` header line after damage, payloads decoded and HTML extracted (``pipelines.readers.markup``)."""

from __future__ import annotations

import io
import json
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass

from pipelines.readers.markup import _Extractor, markup_hints
from pipelines.readers.records import DEFAULT_MAX_DOC_BYTES, Item, _checked_text, _damage_row, _doc_id, _domain
from pipelines.readers.streams import _Stream, open_stream
from pipelines.schema import empty_document, error_row

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
