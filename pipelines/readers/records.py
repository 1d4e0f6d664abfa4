"""Records -> documents: validation and coercion into ``DOCUMENT_SCHEMA`` rows, error rows, ids unique per file.

(The rules are in ``pipelines.readers``' docstring: coercion per field, unknown fields into ``metadata``, NUL
characters, duplicate ids renamed.)
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import math
import posixpath
import re
from collections.abc import Callable, Iterator

import pyarrow as pa

from pipelines.readers.streams import Damage
from pipelines.schema import DOCUMENT_FIELDS, empty_document, error_row

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

Item = tuple[str, dict]


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
