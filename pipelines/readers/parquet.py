"""Parquet input: rows in batches, each coerced like any other record; a corrupt file ends in one error row."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

import pyarrow as pa

from pipelines.readers.records import DEFAULT_MAX_DOC_BYTES, Item, _row_to_document
from pipelines.schema import error_row
from pipelines.shards import filesystem


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
