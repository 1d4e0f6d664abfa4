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

Modules: ``formats`` (which reader: sniffing, names, ``read_documents``), ``streams`` (opening, compression,
damage), ``records`` (coercion and validation into document rows, error rows, unique ids), ``jsonl``, ``parquet``,
``warc`` (WARC/WET/ARC), ``markup`` (HTML extraction and markup hints), ``hf`` (Hugging Face datasets).
"""

from pipelines.readers.formats import READER_VERSION, detect_format, read_documents
from pipelines.readers.hf import read_hf
from pipelines.readers.jsonl import read_jsonl
from pipelines.readers.markup import EXTRACTOR, markup_hints
from pipelines.readers.parquet import read_parquet
from pipelines.readers.records import DEFAULT_MAX_DOC_BYTES, unique_ids
from pipelines.readers.warc import read_warc

__all__ = [
    "DEFAULT_MAX_DOC_BYTES",
    "EXTRACTOR",
    "READER_VERSION",
    "detect_format",
    "markup_hints",
    "read_documents",
    "read_hf",
    "read_jsonl",
    "read_parquet",
    "read_warc",
    "unique_ids",
]
