"""Bad input is quarantined with a reason, or refused with one clear line; never fatal, never silently lost.

Every case mixes the bad input with good documents and checks both: the outcome for the bad part (error reason,
the field and value in the detail) and that each good document comes through (count and ids). Most cases go
through ``read_documents``; a few run the real ingest stage (Beam in-process, ``workers=1``).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import random
import sys
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from conftest import EN, html_page, paragraph_doc

from pipelines import ingest
from pipelines.beam_stage import cli
from pipelines.readers import read_documents
from pipelines.shards import expand_inputs, list_shards, skipped_inputs


def _split(items):
    items = list(items)
    docs = [row for kind, row in items if kind == "doc"]
    errors = [row for kind, row in items if kind == "error"]
    return docs, errors


def _read(path, **kwargs):
    return _split(read_documents(str(path), **kwargs))


def _good(i: int) -> dict:
    return {"id": f"good-{i}", "text": f"Good document number {i}. " + EN[i % len(EN)]}


def _jsonl(rows) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def _ids(docs):
    return [d["id"] for d in docs]


GOOD_IDS = [f"good-{i}" for i in range(3)]


# --- per-record validation and coercion ------------------------------------------------------------------------


def test_dolma_metadata_object_and_wrong_types_are_coerced_per_record(tmp_path):
    dolma = {
        "id": "dolma-1",
        "text": "A Dolma-style record with a metadata object.",
        "date": 20240101,
        "metadata": {"url": "https://x.example", "length": 42},
        "added": "2024-01-02",  # one more extra field: must not discard the metadata object
    }
    typed = {"id": 7, "text": "numbers as strings", "lang_score": "0.9", "dup_cluster_size": "3", "date": 2.5e9}
    path = tmp_path / "dolma.jsonl"
    path.write_bytes(_jsonl([_good(0), dolma, typed, {"id": "high", "text": "t", "lang_score": "high"}, _good(1)]))
    docs, errors = _read(path)
    assert _ids(docs) == ["good-0", "dolma-1", "7", "good-1"]
    by_id = {d["id"]: d for d in docs}
    assert by_id["dolma-1"]["date"] == "20240101"
    assert json.loads(by_id["dolma-1"]["metadata"]) == {"url": "https://x.example", "length": 42, "added": "2024-01-02"}
    assert (
        by_id["7"]["lang_score"] == 0.9 and by_id["7"]["dup_cluster_size"] == 3 and by_id["7"]["date"] == "2500000000"
    )
    (error,) = errors
    assert error["reason"] == "bad_field" and error["record"] == "4"
    assert "'lang_score'" in error["detail"] and "'high'" in error["detail"]


@pytest.mark.parametrize(
    ("field", "value", "shown"),
    [
        ("url", {"host": "x"}, "{'host': 'x'}"),
        ("id", True, "True"),
        ("dup_cluster_size", 2**40, str(2**40)),
        ("lang_score", float("inf"), "inf"),
        ("domain", [1, 2], "[1, 2]"),
    ],
)
def test_a_value_that_cannot_be_coerced_is_quarantined_with_field_and_value(tmp_path, field, value, shown):
    path = tmp_path / "typed.jsonl"
    bad = {"id": "bad", "text": "some text", field: value}
    path.write_bytes(_jsonl([_good(0), bad, _good(1)]).replace(b"Infinity", b"1e999"))
    docs, errors = _read(path)
    assert _ids(docs) == ["good-0", "good-1"]
    (error,) = errors
    assert error["reason"] == "bad_field" and f"'{field}'" in error["detail"] and shown in error["detail"]


def test_json_records_that_are_not_objects_or_have_no_usable_text(tmp_path):
    path = tmp_path / "shapes.jsonl"
    rows = [
        _good(0),
        b"[1, 2, 3]",
        b'"just a string"',
        b"42",
        {"id": "no-text"},
        {"id": "number-text", "text": 12345},
        {"id": "empty-text", "text": "   "},
        {"id": "nul-only", "text": "\u0000\u0000"},
        {"id": "nul-inside", "text": "keep\u0000 me"},
        _good(1),
    ]
    path.write_bytes(_jsonl(rows))
    docs, errors = _read(path)
    assert _ids(docs) == ["good-0", "nul-inside", "good-1"]
    assert docs[1]["text"] == "keep me"
    assert [(e["record"], e["reason"]) for e in errors] == [
        ("2", "not_an_object"),
        ("3", "not_an_object"),
        ("4", "not_an_object"),
        ("5", "missing_text"),
        ("6", "bad_field"),
        ("7", "missing_text"),
        ("8", "missing_text"),
    ]
    assert "a JSON list" in errors[0]["detail"] and "'text'" in errors[4]["detail"]


def test_encoding_damage_bom_crlf_blank_lines_tabs_and_surrogates(tmp_path):
    path = tmp_path / "enc.jsonl"
    lines = [
        b"\xef\xbb\xbf" + json.dumps(_good(0)).encode(),  # a BOM before the first record
        b"",  # a blank line
        b'{"id": "bad-utf8", "text": "caf\xe9 au lait"}',  # invalid UTF-8 in the middle of a line
        b'{"id": "tab", "text": "a raw\ttab inside"}',  # raw control character: accepted
        b'{"id": "surrogate-url", "text": "t", "url": "\\ud800"}',  # would fail the Parquet writer
        json.dumps(_good(1)).encode(),
    ]
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")  # CRLF line endings
    docs, errors = _read(path)
    assert _ids(docs) == ["good-0", "tab", "good-1"]
    assert docs[1]["text"] == "a raw\ttab inside"
    assert [(e["record"], e["reason"]) for e in errors] == [("3", "bad_utf8"), ("5", "bad_unicode")]
    assert "'url'" in errors[1]["detail"]


def test_utf16_json_lines_with_a_bom_are_transcoded(tmp_path):
    path = tmp_path / "utf16.jsonl"
    rows = [_good(0), {"id": "zh", "text": "软件包管理器会记录每一个文件。"}, _good(1)]
    path.write_bytes("\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode("utf-16"))
    docs, errors = _read(path)
    assert errors == [] and _ids(docs) == ["good-0", "zh", "good-1"]
    assert docs[1]["text"] == "软件包管理器会记录每一个文件。"


def test_deeply_nested_metadata(tmp_path):
    path = tmp_path / "nested.jsonl"
    nested: dict = {"leaf": 1}
    for _ in range(50):
        nested = {"child": nested}
    too_deep = b'{"id": "deep", "text": "t", "m": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    path.write_bytes(_jsonl([_good(0), {"id": "nested", "text": "t", "tree": nested}, too_deep, _good(1)]))
    docs, errors = _read(path)
    assert _ids(docs) == ["good-0", "nested", "good-1"]
    assert json.loads(docs[1]["metadata"])["tree"] == nested
    assert [(e["record"], e["reason"]) for e in errors] == [("3", "bad_json")]
    assert "nested too deeply" in errors[0]["detail"]


def test_huge_documents_and_lines_are_quarantined_and_the_next_is_kept(tmp_path):
    path = tmp_path / "big.jsonl"
    rows = [_good(0), {"id": "over", "text": "x" * 5_000}, b'{"id": "endless", "text": "' + b"y" * 20_000, _good(1)]
    path.write_bytes(_jsonl(rows))
    docs, errors = _read(path, max_doc_bytes=2_000)
    assert _ids(docs) == ["good-0", "good-1"]
    assert [(e["record"], e["reason"]) for e in errors] == [("2", "document_too_large"), ("3", "document_too_large")]


def test_binary_garbage_in_a_jsonl_is_one_row_per_run(tmp_path):
    garbage = random.Random(0).randbytes(20_000)
    path = tmp_path / "garbage.jsonl"
    path.write_bytes(_jsonl([_good(0)]) + garbage + b"\n" + _jsonl([_good(1), _good(2)]))
    docs, errors = _read(path)
    assert _ids(docs) == GOOD_IDS
    (error,) = errors
    assert error["reason"] == "binary_data" and error["record"].startswith("lines 2-")


def test_duplicate_ids_within_a_file_get_a_stable_suffix(tmp_path):
    path = tmp_path / "dups.jsonl"
    rows = [
        {"id": "a", "text": "first a"},
        {"id": "a", "text": "second a"},
        {"id": "b", "text": "only b"},
        {"id": "a", "text": "third a", "metadata": {"k": 1}},
    ]
    path.write_bytes(_jsonl(rows))
    first = _read(path)
    docs, errors = first
    assert errors == [] and _ids(docs) == ["a", "a#dup-1", "b", "a#dup-2"]
    assert json.loads(docs[1]["metadata"]) == {"original_id": "a"}
    assert json.loads(docs[3]["metadata"]) == {"k": 1, "original_id": "a"}
    assert _read(path) == first  # stable: a rerun gives the same ids


# --- JSON arrays, names, compression and sniffing --------------------------------------------------------------


def test_json_array_files_any_case_with_a_bad_element_in_the_middle(tmp_path):
    path = tmp_path / "DOCS.JSON"
    body = json.dumps([_good(0), _good(1)], indent=2)[:-1]  # pretty-printed, without the closing bracket
    body += ',\n  {"id": "broken", "text": oops},\n  ' + json.dumps(_good(2)) + ",\n  7\n]\n"
    path.write_text(body)
    docs, errors = _read(path)
    assert _ids(docs) == GOOD_IDS
    assert [(e["record"], e["reason"]) for e in errors] == [("element 2", "bad_json"), ("element 4", "not_an_object")]
    one_line = tmp_path / "one_line.json"
    one_line.write_text(json.dumps([_good(0), _good(1)]))
    assert _ids(_read(one_line)[0]) == ["good-0", "good-1"]
    pretty_object = tmp_path / "object.json"
    pretty_object.write_text(json.dumps(_good(0), indent=2))
    assert _ids(_read(pretty_object)[0]) == ["good-0"]


def test_a_long_json_array_streams_past_a_bad_element(tmp_path):
    path = tmp_path / "long.json"
    elements = [json.dumps({"id": f"e{i}", "text": f"element {i} " + "z" * 1000}) for i in range(3000)]
    elements[2000] = '{"id": "e2000", "text": "unterminated}'
    path.write_text("[\n" + ",\n".join(elements) + "\n]\n")  # 3 MB: read in chunks, buffer compacted
    docs, errors = _read(path)
    assert _ids(docs) == [f"e{i}" for i in range(3000) if i != 2000]
    assert [(e["record"], e["reason"]) for e in errors] == [("element 2000", "bad_json")]


def test_a_json_array_that_ends_early_keeps_its_complete_elements(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text(json.dumps([_good(0), _good(1), _good(2)])[:-30])
    docs, errors = _read(path)
    assert _ids(docs) == ["good-0", "good-1"]
    assert [e["reason"] for e in errors] == ["bad_json"]


@pytest.mark.parametrize(
    ("name", "compress"),
    [
        ("docs.jsonl.zst", zstandard.ZstdCompressor().compress),
        ("docs.JSONL.GZ", gzip.compress),
        ("docs.jsonl", gzip.compress),  # gzip named .jsonl: read as gzip (was bad_utf8 rows)
        ("docs.jsonl.bz2", bz2.compress),
        ("docs.ndjson.xz", lzma.compress),
        ("docs.jsonl.gz", lambda b: zstandard.ZstdCompressor().compress(b)),  # the content wins over the name
    ],
)
def test_compression_is_found_by_magic_bytes(tmp_path, name, compress):
    path = tmp_path / name
    path.write_bytes(compress(_jsonl([_good(i) for i in range(3)])))
    docs, errors = _read(path)
    assert errors == [] and _ids(docs) == GOOD_IDS


def test_truncated_zstd_keeps_lines_before_the_cut(tmp_path):
    path = tmp_path / "cut.jsonl.zst"
    payload = _jsonl([_good(i) | {"id": f"d{i}"} for i in range(4000)])  # ~400 KB: zstd blocks are 128 KB
    data = zstandard.ZstdCompressor(level=1).compress(payload)
    path.write_bytes(data[: len(data) * 2 // 3])
    docs, errors = _read(path)
    assert 0 < len(docs) < 4000 and _ids(docs) == [f"d{i}" for i in range(len(docs))]
    assert [e["reason"] for e in errors] == ["truncated_zstd"]


def test_damaged_gzip_member_in_a_jsonl_costs_only_its_lines(tmp_path):
    members = [gzip.compress(_jsonl([_good(i) | {"id": f"m{m}-{i}"} for i in range(20)])) for m in range(3)]
    damaged = bytearray(members[1])
    damaged[len(damaged) // 2 : len(damaged) // 2 + 8] = b"\xff" * 8
    path = tmp_path / "members.jsonl.gz"
    path.write_bytes(members[0] + bytes(damaged) + members[2])
    docs, errors = _read(path)
    assert _ids(docs) == [f"m{m}-{i}" for m in (0, 2) for i in range(20)]
    assert [e["reason"] for e in errors] == ["corrupt_gzip"]


def test_empty_files_and_unknown_content(tmp_path):
    for name in ("empty.jsonl", "empty.warc", "empty.parquet"):
        (tmp_path / name).write_bytes(b"")
        docs, errors = _read(tmp_path / name)
        assert docs == [] and [e["reason"] for e in errors] == ["empty_file"]
    (tmp_path / "empty.jsonl.gz").write_bytes(gzip.compress(b""))
    assert [e["reason"] for e in _read(tmp_path / "empty.jsonl.gz")[1]] == ["empty_file"]
    (tmp_path / "header_only.jsonl.gz").write_bytes(gzip.compress(_jsonl([_good(0)]))[:12])  # cut in the header
    assert [e["reason"] for e in _read(tmp_path / "header_only.jsonl.gz")[1]] == ["truncated_gzip"]
    (tmp_path / "notes.txt").write_text("just some notes\n")
    docs, errors = _read(tmp_path / "notes.txt")  # reached only by calling the reader directly
    assert docs == [] and [e["reason"] for e in errors] == ["unknown_format"]


def test_parquet_with_a_wrong_schema_or_a_wrong_name(tmp_path):
    wrong = tmp_path / "wrong.parquet"
    table = pa.table(
        {"id": ["a", "b", "c"], "text": ["fine text", "also fine", "third"], "lang_score": ["0.5", "high", None]}
    )
    pq.write_table(table, wrong)
    docs, errors = _read(wrong)
    assert _ids(docs) == ["a", "c"] and docs[0]["lang_score"] == 0.5
    assert [(e["record"], e["reason"]) for e in errors] == [("1", "bad_field")] and "'high'" in errors[0]["detail"]
    numeric_text = tmp_path / "numeric_text.parquet"
    pq.write_table(pa.table({"id": ["x", "y"], "text": [1, 2]}), numeric_text)
    docs, errors = _read(numeric_text)
    assert docs == [] and [e["reason"] for e in errors] == ["bad_field", "bad_field"]
    struct_meta = tmp_path / "named.jsonl"  # Parquet content under a JSON-lines name, a struct metadata column
    pq.write_table(pa.table({"text": ["t1", "t2"], "metadata": [{"k": 1}, {"k": 2}]}), struct_meta)
    docs, errors = _read(struct_meta)
    assert errors == [] and [json.loads(d["metadata"]) for d in docs] == [{"k": 1}, {"k": 2}]


# --- WARC ------------------------------------------------------------------------------------------------------


def _warc_records(texts, gzip_members: bool, html: bool = False) -> list[bytes]:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    records = []
    for i, text in enumerate(texts):
        out = io.BytesIO()
        writer = WARCWriter(out, gzip=gzip_members)
        url = f"https://site.example/{i}"
        # Fixed record ids and dates: the same bytes on every run, so a test that damages byte N of a record damages
        # the same field every time (a random uuid moved the compressed layout and made such tests flaky).
        body = text if isinstance(text, bytes) else text.encode()
        fixed = {
            "WARC-Record-ID": f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, url + hashlib.sha1(body).hexdigest())}>",
            "WARC-Date": "2026-01-01T00:00:00Z",
        }
        if html:
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            record = writer.create_warc_record(
                url, "response", payload=io.BytesIO(text), http_headers=headers, warc_headers_dict=fixed
            )
        else:
            record = writer.create_warc_record(
                url, "resource", payload=io.BytesIO(body), warc_content_type="text/plain", warc_headers_dict=fixed
            )
        writer.write_record(record)
        records.append(out.getvalue())
    return records


def _with_length(record: bytes, change) -> bytes:
    """The record with its Content-Length header replaced by ``change(length)``."""
    head, sep, rest = record.partition(b"Content-Length: ")
    length, eol, tail = rest.partition(b"\r\n")
    return head + sep + change(int(length)).encode() + eol + tail


def _urls(docs):
    return [d["url"] for d in docs]


def _site(*numbers):
    return [f"https://site.example/{i}" for i in numbers]


def test_damaged_gzip_member_in_a_warc_costs_one_record(tmp_path):
    records = _warc_records([f"Record {i}: " + EN[i % len(EN)] for i in range(300)], gzip_members=True)
    damaged = bytearray(records[150])
    cut = len(damaged) * 3 // 4  # past the compressed headers, so the error's preview still shows the URL
    damaged[cut : cut + 6] = b"\x00" * 6
    records[150] = bytes(damaged)
    path = tmp_path / "crawl.warc.gz"
    path.write_bytes(b"".join(records))
    docs, errors = _read(path)
    assert _urls(docs) == _site(*[i for i in range(300) if i != 150])
    (error,) = errors
    assert error["reason"] == "corrupt_gzip" and error["record"].startswith("<urn:uuid:")
    assert "https://site.example/150" in error["preview"]


def test_garbage_between_gzip_members_and_a_truncated_last_member(tmp_path):
    records = _warc_records([f"Record {i}." for i in range(4)], gzip_members=True)
    path = tmp_path / "crawl.warc.gz"
    path.write_bytes(records[0] + b"garbage bytes\n" * 3 + records[1] + records[2] + records[3][:-20])
    docs, errors = _read(path)
    assert _urls(docs) == _site(0, 1, 2)
    assert [e["reason"] for e in errors] == ["corrupt_gzip", "truncated_warc"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda n: str(n * 1000), "damaged_warc_record"),  # runs over the rest of the file
        (lambda n: str(n + 40), "damaged_warc_record"),  # runs into the next record
        (lambda n: str(n // 2), "damaged_warc_record"),  # ends in the middle of its own block
        (lambda n: "twelve", "damaged_warc_record"),
    ],
    ids=["past_the_end", "into_the_next_record", "too_short", "not_a_number"],
)
def test_bad_content_length_in_a_plain_warc_costs_one_record(tmp_path, change, reason):
    records = _warc_records([f"Record {i}: " + EN[i] for i in range(5)], gzip_members=False)
    records[2] = _with_length(records[2], change)
    path = tmp_path / "crawl.warc"
    path.write_bytes(b"".join(records))
    docs, errors = _read(path)
    assert _urls(docs) == _site(0, 1, 3, 4)
    assert [e["reason"] for e in errors] == [reason]
    assert errors[0]["record"].startswith("<urn:uuid:")


def test_bad_content_length_late_in_a_large_warc(tmp_path):
    records = _warc_records([f"Record {i}: " + "w " * 30_000 for i in range(40)], gzip_members=False)  # 2.4 MB
    records[25] = _with_length(records[25], lambda n: str(n // 2))
    records[30] = _with_length(records[30], lambda n: str(n * 3))
    path = tmp_path / "large.warc"
    path.write_bytes(b"".join(records))
    docs, errors = _read(path)
    assert _urls(docs) == _site(*[i for i in range(40) if i not in (25, 30)])
    assert [e["reason"] for e in errors] == ["damaged_warc_record"] * 2


def test_records_over_the_size_limit_are_skipped_without_holding_them(tmp_path):
    texts = ["small one", "x" * 3_000_000, "small two", "y" * 3_000_000]
    records = _warc_records(texts, gzip_members=True)
    path = tmp_path / "big.warc.gz"
    path.write_bytes(b"".join(records[:3]) + records[3][: len(records[3]) // 2])
    docs, errors = _read(path, max_doc_bytes=100_000)  # block limit ~1.1 MB: both big records are skipped
    assert _urls(docs) == _site(0, 2)
    assert [e["reason"] for e in errors] == ["document_too_large", "truncated_warc"]


def test_warc_garbage_before_between_records_and_a_missing_target_uri(tmp_path):
    records = _warc_records([f"Record {i}." for i in range(3)], gzip_members=False)
    no_uri = records[1].replace(b"WARC-Target-URI: https://site.example/1\r\n", b"")
    no_uri = no_uri.replace(b"WARC-Type: resource", b"WARC-Type: response")  # warcio needs a URI for HTTP parsing
    path = tmp_path / "crawl.warc"
    path.write_bytes(b"junk before the first record\r\n" + records[0] + b"more junk\n" + no_uri + records[2])
    docs, errors = _read(path)
    assert _urls(docs) == _site(0, 2)
    assert [e["reason"] for e in errors] == ["damaged_warc_record"] * 3


def test_html_without_text_in_a_warc(tmp_path):
    pages = [
        html_page("Guide", paragraph_doc(EN, 1)),
        b"<html><head><title></title></head><body><div></div></body></html>",
        html_page("Guide 2", paragraph_doc(EN, 2)),
    ]
    path = tmp_path / "html.warc.gz"
    path.write_bytes(b"".join(_warc_records(pages, gzip_members=True, html=True)))
    docs, errors = _read(path)
    assert _urls(docs) == _site(0, 2)
    assert [e["reason"] for e in errors] == ["no_text_extracted"]


# --- inputs: folders, globs, explicit files --------------------------------------------------------------------


def _folder(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps([_good(0)]))
    (folder / "B.JSONL").write_bytes(_jsonl([_good(1)]))
    (folder / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(_jsonl([_good(2)])))
    (folder / "README.md").write_text("# not data\n")
    (folder / ".DS_Store").write_bytes(b"\x00\x01")
    (folder / "_SUCCESS").write_text("")
    return folder


def test_folder_inputs_read_json_and_any_case_and_name_what_they_skip(tmp_path):
    folder = _folder(tmp_path)
    assert [os.path.basename(f) for f in expand_inputs(str(folder))] == ["B.JSONL", "a.json", "c.jsonl.zst"]
    assert [os.path.basename(f) for f in skipped_inputs(str(folder))] == [".DS_Store", "README.md", "_SUCCESS"]
    assert [os.path.basename(f) for f in expand_inputs(f"{folder}/*")] == ["B.JSONL", "a.json", "c.jsonl.zst"]
    assert [os.path.basename(f) for f in skipped_inputs(f"{folder}/*")] == [".DS_Store", "README.md", "_SUCCESS"]
    with pytest.raises(FileNotFoundError, match=r"none of the 1 files there \(README\.md\) is a document format"):
        expand_inputs(f"{folder}/*.md")
    with pytest.raises(ValueError, match="README.md is not a document file"):
        expand_inputs(str(folder / "README.md"))
    (folder / "_part.jsonl").write_bytes(_jsonl([_good(3)]))  # skipped in the folder, read when named on its own
    assert "_part.jsonl" in [os.path.basename(f) for f in skipped_inputs(str(folder))]
    assert expand_inputs(f"{folder / '_part.jsonl'}, {folder / 'a.json'}") == [
        str(folder / "_part.jsonl"),
        str(folder / "a.json"),
    ]


@pytest.mark.parametrize("given", ["", ",", " , ", []])
def test_an_empty_input_is_a_clear_error(given):
    with pytest.raises(ValueError, match=r"no input given \(--input is empty\)"):
        expand_inputs(given)


def test_empty_input_on_the_command_line_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["ingest", "--input", "", "--output", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        cli(ingest.main)
    assert str(exit_info.value.code).startswith("error: no input given (--input is empty)")
    assert not (tmp_path / "out").exists()


# --- end to end: the ingest stage ------------------------------------------------------------------------------


def _stage_ids(stage_dir):
    return sorted(i for uri in list_shards(stage_dir) for i in pq.read_table(uri, columns=["id"]).column(0).to_pylist())


def test_ingest_stage_quarantines_bad_records_and_keeps_every_good_one(tmp_path):
    folder = _folder(tmp_path)
    (folder / "mixed.jsonl").write_bytes(
        b"\xef\xbb\xbf"
        + _jsonl(
            [
                {"id": "m1", "text": "Dolma record", "date": 20240101, "metadata": {"src": "cc"}, "extra": 1},
                {"id": "m2", "text": "bad score", "lang_score": "high"},
                {"id": "m3", "text": "\u0000"},
                {"id": "m1", "text": "the same id again"},
                {"id": "m4", "text": "bad url", "url": "\ud800"},
            ]
        )
    )
    (folder / "gzipped.jsonl").write_bytes(gzip.compress(_jsonl([{"id": "g1", "text": "gzip named .jsonl"}])))
    # A glob that also matches README.md, .DS_Store and _SUCCESS: they are skipped (and named), not read.
    summary = ingest.run(f"{folder}/*", str(tmp_path / "out"), workers=1)
    assert summary["shards"] == 5
    assert _stage_ids(tmp_path / "out") == sorted(GOOD_IDS + ["g1", "m1", "m1#dup-1"])
    assert summary["docs_out"] == 6 and summary["duplicate_ids_renamed"] == 1
    assert summary["errors_by_reason"] == {"bad_field": 1, "bad_unicode": 1, "missing_text": 1}
    assert summary["cross_file_duplicate_ids"] == 0
    rows = [r for uri in list_shards(tmp_path / "out") for r in pq.read_table(uri).to_pylist()]
    m1 = next(r for r in rows if r["id"] == "m1")
    assert m1["date"] == "20240101" and json.loads(m1["metadata"]) == {"src": "cc", "extra": 1}


def test_ingest_stage_on_a_damaged_warc_keeps_all_other_records(tmp_path):
    records = _warc_records([f"Record {i}: " + EN[i % len(EN)] for i in range(300)], gzip_members=True)
    damaged = bytearray(records[100])
    cut = len(damaged) * 3 // 4  # past the compressed headers, so the error's preview still shows the URL
    damaged[cut : cut + 6] = b"\x00" * 6
    records[100] = bytes(damaged)
    (tmp_path / "crawl").mkdir()
    (tmp_path / "crawl" / "crawl.warc.gz").write_bytes(b"".join(records))
    summary = ingest.run(f"{tmp_path}/crawl/*.warc.gz", str(tmp_path / "out"), workers=1)
    assert summary["docs_out"] == 299 and summary["errors_by_reason"] == {"corrupt_gzip": 1}


def test_ingest_stage_counts_ids_repeated_across_files(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "one.jsonl").write_bytes(_jsonl([{"id": "shared", "text": "first"}, {"id": "x", "text": "x"}]))
    (folder / "two.jsonl").write_bytes(_jsonl([{"id": "shared", "text": "second"}, {"id": "y", "text": "y"}]))
    (folder / "three.jsonl").write_bytes(_jsonl([{"id": "shared", "text": "third"}]))
    summary = ingest.run(str(folder), str(tmp_path / "out"), workers=1)
    assert _stage_ids(tmp_path / "out") == ["shared", "shared", "shared", "x", "y"]  # kept: detected, not renamed
    assert summary["cross_file_duplicate_ids"] == 1 and summary["cross_file_duplicate_documents"] == 2
    with open(tmp_path / "out" / "_SUCCESS.json") as f:
        assert json.load(f)["cross_file_duplicate_ids"] == 1
    # A stage too large to check in process is counted on Beam: the same answer.
    on_beam = ingest.count_cross_file_duplicate_ids(str(tmp_path / "out"), workers=1, local_limit=0)
    assert on_beam == {"cross_file_duplicate_ids": 1, "cross_file_duplicate_documents": 2}
