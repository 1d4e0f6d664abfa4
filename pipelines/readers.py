"""Readers: one input file (or dataset) -> a stream of documents and quarantined errors.

Each reader yields ``("doc", row)`` with a DOCUMENT_SCHEMA row, or
``("error", row)`` with an ERROR_SCHEMA row for a record that cannot become a
document (bad UTF-8, no text, a truncated gzip member, a corrupt Parquet file, a
document over the size limit). A reader never raises for bad data: the rest of
the file, and every other file, goes on.

Formats, chosen by name: ``.warc[.gz]`` (HTML -> text with datatrove's
Trafilatura extractor), ``.wet[.gz]`` / ``.warc.wet.gz``, ``.jsonl`` / ``.json``
(optionally ``.gz``), ``.parquet``, and ``hf:<dataset>[:<config>]:<split>`` for a
Hugging Face dataset (streamed with ``datasets``; needs the Hub).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
import posixpath
import re
import zlib
from collections.abc import Iterator

from pipelines.schema import DOCUMENT_COLUMNS, empty_document, error_row
from pipelines.shards import filesystem

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


def detect_format(path: str) -> str:
    name = path.lower()
    if name.startswith("hf:"):
        return "hf"
    for suffix in (".gz", ".zst"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    if name.endswith(".wet"):
        return "wet"
    if name.endswith((".warc", ".arc")):
        return "warc"
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    raise ValueError(
        f"cannot tell the format of {path!r}: expected .warc[.gz], .wet[.gz], .jsonl[.gz], .parquet "
        "or hf:<dataset>:<split>"
    )


def read_documents(path: str, max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES) -> Iterator[Item]:
    fmt = detect_format(path)
    reader = {"warc": read_warc, "wet": read_warc, "jsonl": read_jsonl, "parquet": read_parquet, "hf": read_hf}[fmt]
    yield from reader(path, max_doc_bytes)


def _doc_id(source: str, record: object) -> str:
    return hashlib.sha1(f"{source}\x00{record}".encode()).hexdigest()[:20]


def _domain(url: str | None, content_type: str = "") -> str:
    if any(hint in content_type for hint in CODE_MIME_HINTS):
        return "code"
    ext = posixpath.splitext((url or "").split("?")[0])[1].lower()
    return "code" if ext in CODE_EXTENSIONS else "web"


def _checked_text(text: object, source: str, record: object, max_doc_bytes: int) -> tuple[str | None, dict | None]:
    """Returns (text, None) for a usable text, or (None, error row)."""
    if not isinstance(text, str) or not text.strip():
        return None, error_row(source, record, "missing_text", f"text is {type(text).__name__} / empty")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as e:  # lone surrogates from a JSON \ud800 escape
        return None, error_row(source, record, "bad_unicode", str(e), text[:200].encode("utf-8", "replace"))
    if size > max_doc_bytes:
        return None, error_row(
            source, record, "document_too_large", f"{size} bytes > limit {max_doc_bytes}", text[:200]
        )
    return text.replace("\x00", ""), None


def _row_to_document(row: dict, source: str, record: object, max_doc_bytes: int) -> Item:
    text, err = _checked_text(row.get("text"), source, record, max_doc_bytes)
    if err:
        return "error", err
    doc = empty_document()
    extra = {}
    for k, v in row.items():
        if k in DOCUMENT_COLUMNS:
            doc[k] = v
        elif v is not None:
            extra[k] = v
    doc["text"] = text
    doc["id"] = str(row["id"]) if row.get("id") is not None else _doc_id(source, record)
    doc["source"] = doc.get("source") or source
    doc["domain"] = doc.get("domain") or _domain(doc.get("url"))
    if extra:
        previous = json.loads(doc["metadata"]) if isinstance(doc.get("metadata"), str) else {}
        doc["metadata"] = json.dumps({**previous, **extra}, default=str, ensure_ascii=False)
    if doc.get("lang_score") is not None:
        doc["lang_score"] = float(doc["lang_score"])
    if doc.get("dup_cluster_size") is not None:
        doc["dup_cluster_size"] = int(doc["dup_cluster_size"])
    return "doc", doc


# --- JSONL -----------------------------------------------------------------------------------


def read_jsonl(path: str, max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES) -> Iterator[Item]:
    source = posixpath.basename(path)
    fs, fpath = filesystem(path)
    line_no = 0
    try:
        with fs.open(fpath, "rb") as raw:
            stream = gzip.open(raw) if fpath.endswith(".gz") else raw
            for line_no, line in enumerate(stream, start=1):
                if not line.strip():
                    continue
                if len(line) > max_doc_bytes * 2:
                    yield "error", error_row(source, line_no, "document_too_large", f"{len(line)} byte line", line)
                    continue
                try:
                    row = json.loads(line.decode("utf-8"))
                except UnicodeDecodeError as e:
                    yield "error", error_row(source, line_no, "bad_utf8", str(e), line)
                    continue
                except json.JSONDecodeError as e:
                    yield "error", error_row(source, line_no, "bad_json", str(e), line)
                    continue
                if not isinstance(row, dict):
                    yield "error", error_row(source, line_no, "bad_json", "line is not a JSON object", line)
                    continue
                yield _row_to_document(row, source, line_no, max_doc_bytes)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        yield "error", error_row(source, f"after line {line_no}", "truncated_gzip", f"{type(e).__name__}: {e}")


# --- Parquet ---------------------------------------------------------------------------------


def read_parquet(path: str, max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES) -> Iterator[Item]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = posixpath.basename(path)
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
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
        yield "error", error_row(source, f"after row {row_no}", "corrupt_parquet", f"{type(e).__name__}: {e}")


# --- WARC / WET ------------------------------------------------------------------------------

_CHARSET = re.compile(rb"""<meta[^>]+charset=["']?([A-Za-z0-9_\-]+)""", re.I)


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
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    source = posixpath.basename(path)
    fs, fpath = filesystem(path)
    record_no = 0
    cut_reported = False
    try:
        with fs.open(fpath, "rb") as f:
            gz = _TruncationAwareGzip(f) if fpath.endswith(".gz") else None
            for record in ArchiveIterator(io.BufferedReader(gz, 1 << 20) if gz else f):
                if record.rec_type not in ("response", "conversion", "resource"):
                    continue
                record_no += 1
                rec_id = record.rec_headers.get_header("WARC-Record-ID") or _doc_id(source, record_no)
                url = record.rec_headers.get_header("WARC-Target-URI")
                if record.http_headers is not None:
                    content_type = record.http_headers.get_header("Content-Type") or ""
                else:
                    content_type = record.rec_headers.get_header("Content-Type") or ""
                payload = record.content_stream().read(max_doc_bytes + 1)
                if len(payload) > max_doc_bytes:
                    yield "error", error_row(source, rec_id, "document_too_large", f"> {max_doc_bytes} bytes", payload)
                    continue
                if getattr(record.raw_stream, "limit", 0) > 0:  # the file ended inside this record
                    cut_reported = True
                    yield (
                        "error",
                        error_row(
                            source,
                            rec_id,
                            "truncated_warc",
                            f"record cut short: {record.raw_stream.limit} bytes missing",
                            payload,
                        ),
                    )
                    continue
                text = _decode_payload(payload, content_type)
                if text is None:
                    yield "error", error_row(source, rec_id, "bad_utf8", f"undecodable as {content_type!r}", payload)
                    continue
                is_html = record.rec_type == "response" and ("html" in content_type or not content_type)
                if is_html:
                    text = _Extractor.extract(text)
                text, err = _checked_text(text, source, rec_id, max_doc_bytes)
                if err:
                    err["reason"] = (
                        "no_text_extracted" if is_html and err["reason"] == "missing_text" else err["reason"]
                    )
                    yield "error", err
                    continue
                yield (
                    "doc",
                    empty_document(
                        id=rec_id.strip("<>").removeprefix("urn:uuid:"),
                        text=text,
                        url=url,
                        source=source,
                        domain=_domain(url, content_type),
                        date=record.rec_headers.get_header("WARC-Date"),
                    ),
                )
            if gz is not None and gz.truncated and not cut_reported:
                yield (
                    "error",
                    error_row(
                        source, f"after record {record_no}", "truncated_warc", "the gzip stream ends inside a member"
                    ),
                )
    except (ArchiveLoadFailed, EOFError, zlib.error, gzip.BadGzipFile) as e:
        yield "error", error_row(source, f"after record {record_no}", "truncated_warc", f"{type(e).__name__}: {e}")


class _TruncationAwareGzip(io.RawIOBase):
    """Multi-member gzip decompression that notes a truncated last member instead of hiding it.

    warcio's own decompressor stops quietly at a cut, and Python's gzip raises on the first read, before
    the complete records; this one returns everything that is there and sets ``truncated``.
    """

    def __init__(self, raw):
        self.raw = raw
        self.decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self.pending = b""
        self.consumed = False
        self.finished = False
        self.truncated = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.pending and not self.finished:
            chunk = self.raw.read(1 << 16)
            if not chunk:
                self.finished = True
                self.truncated = self.consumed and not self.decompressor.eof
                break
            self.consumed = True
            data = self.decompressor.decompress(chunk)
            while self.decompressor.eof and self.decompressor.unused_data:  # the next gzip member
                rest = self.decompressor.unused_data
                self.decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
                data += self.decompressor.decompress(rest)
            self.pending = data
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n


# --- Hugging Face datasets ---------------------------------------------------------------------


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
