"""Readers turn every input format into documents and quarantine what they cannot read, with a reason."""

import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.readers import detect_format, read_documents


def _split(items):
    items = list(items)
    docs = [row for kind, row in items if kind == "doc"]
    errors = [row for kind, row in items if kind == "error"]
    return docs, errors


def test_warc_html_is_extracted_and_code_is_tagged(crawl_dir):
    docs, errors = _split(read_documents(str(crawl_dir / "site.warc.gz")))
    assert errors == []
    by_url = {d["url"]: d for d in docs}
    page = by_url["https://docs.example/en/page0.html"]
    assert page["text"].startswith("Guide 0\n") and "<p>" not in page["text"]
    assert "Copyright the authors" not in page["text"]  # boilerplate removed by Trafilatura
    assert page["domain"] == "web" and page["date"] and page["id"]
    assert by_url["https://code.example/lib/config.py"]["domain"] == "code"
    assert "def load_config" in by_url["https://code.example/lib/config.py"]["text"]
    assert len({d["id"] for d in docs}) == len(docs)


def test_truncated_warc_keeps_complete_records_and_quarantines_the_cut_one(crawl_dir):
    docs, errors = _split(read_documents(str(crawl_dir / "cut.warc.gz")))
    assert len(docs) == 1
    assert [e["reason"] for e in errors] == ["truncated_warc"]


def test_jsonl_bad_records_are_quarantined_with_reasons(crawl_dir):
    docs, errors = _split(read_documents(str(crawl_dir / "extra.jsonl.gz")))
    assert {d["id"] for d in docs} == {"jl-en", "jl-de0", "jl-de1", "jl-zh0", "jl-zh1"}
    assert sorted(e["reason"] for e in errors) == ["bad_json", "bad_utf8", "missing_text"]
    assert all(e["source_file"] == "extra.jsonl.gz" and e["preview"] is not None for e in errors)


def test_truncated_gzip_keeps_lines_before_the_cut(tmp_path):
    path = tmp_path / "cut.jsonl.gz"
    payload = b"".join(json.dumps({"id": i, "text": f"document number {i} " * 30}).encode() + b"\n" for i in range(200))
    data = gzip.compress(payload)
    path.write_bytes(data[: len(data) // 2])
    docs, errors = _split(read_documents(str(path)))
    assert 0 < len(docs) < 200
    assert [d["id"] for d in docs] == [str(i) for i in range(len(docs))]
    assert [e["reason"] for e in errors] == ["truncated_gzip"]


def test_corrupt_parquet_and_parquet_without_text(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not a parquet file")
    assert [r["reason"] for k, r in read_documents(str(bad))] == ["corrupt_parquet"]
    no_text = tmp_path / "no_text.parquet"
    pq.write_table(pa.table({"id": ["a"], "body": ["x"]}), no_text)
    assert [r["reason"] for k, r in read_documents(str(no_text))] == ["missing_text"]


def test_parquet_extra_columns_go_to_metadata(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": [1, 2], "text": ["first text", "second text"], "score": [0.5, 0.7]}), path)
    docs, errors = _split(read_documents(str(path)))
    assert errors == [] and [d["id"] for d in docs] == ["1", "2"]
    assert json.loads(docs[1]["metadata"]) == {"score": 0.7}


def test_fifty_megabyte_document_is_quarantined_and_the_next_one_is_kept(tmp_path):
    path = tmp_path / "big.jsonl"
    with open(path, "w") as f:
        f.write(json.dumps({"id": "huge", "text": "x" * 50_000_000}) + "\n")
        f.write(json.dumps({"id": "small", "text": "a normal document"}) + "\n")
    docs, errors = _split(read_documents(str(path)))
    assert [d["id"] for d in docs] == ["small"]
    assert [e["reason"] for e in errors] == ["document_too_large"]


def test_unknown_format_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot tell the format"):
        detect_format("notes.txt")


def test_hf_source_offline_gives_a_clear_error():
    pytest.importorskip("datasets")
    with pytest.raises(RuntimeError, match="offline|Hub|cannot load"):
        list(read_documents("hf:some-org/some-dataset:train"))


def test_wet_conversion_records_are_read_as_text(tmp_path):
    from warcio.warcwriter import WARCWriter

    path = tmp_path / "crawl.warc.wet.gz"
    with open(path, "wb") as out:
        writer = WARCWriter(out, gzip=True)
        for i, text in enumerate(["First extracted page text.", "Second one."]):
            record = writer.create_warc_record(
                f"https://site.example/{i}",
                "conversion",
                payload=io.BytesIO(text.encode()),
                warc_content_type="text/plain",
            )
            writer.write_record(record)
    docs, errors = _split(read_documents(str(path)))
    assert errors == [] and [d["text"] for d in docs] == ["First extracted page text.", "Second one."]
    assert docs[0]["url"] == "https://site.example/0"


def test_a_curated_stage_row_reads_back_unchanged(tmp_path):
    """Later stages read earlier stages' shards through the same readers: coercion must leave a valid row alone."""
    from pipelines.schema import DOCUMENT_SCHEMA

    row = {
        "id": "doc-1#dup-1",
        "text": "A curated document.\nSecond line.",
        "url": "https://site.example/a",
        "source": "crawl.warc.gz",
        "domain": "web",
        "lang": "en",
        "lang_score": 0.75,
        "date": "2024-01-02T03:04:05Z",
        "metadata": '{"original_id": "doc-1", "k": [1, 2]}',
        "dup_cluster": "doc-0",
        "dup_cluster_size": 3,
    }
    path = tmp_path / "shard.parquet"
    pq.write_table(pa.Table.from_pylist([row, {**row, "id": "doc-2", "metadata": None}], schema=DOCUMENT_SCHEMA), path)
    docs, errors = _split(read_documents(str(path)))
    assert errors == [] and docs == [row, {**row, "id": "doc-2", "metadata": None}]


def test_json_names_any_case_are_documents():
    assert detect_format("a/B.JSON") == detect_format("c.Jsonl.ZST") == detect_format("d.ndjson.xz") == "jsonl"
    assert detect_format("crawl.WARC.GZ") == "warc" and detect_format("x.warc.wet.gz") == "wet"
