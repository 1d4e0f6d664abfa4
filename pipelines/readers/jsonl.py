"""JSON input: JSON lines, a JSON array (streamed element by element) or pretty-printed objects, with BOMs
and UTF-16 transcoded, binary runs and damaged stretches quarantined, and resynchronisation after a bad value."""

from __future__ import annotations

import codecs
import json
import posixpath
import re
from collections.abc import Generator, Iterator

from pipelines.readers.records import DEFAULT_MAX_DOC_BYTES, Item, _damage_row, _row_to_document
from pipelines.readers.streams import UTF8_BOM, UTF16_BOMS, _Stream, open_stream
from pipelines.schema import error_row

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
