"""Demo corpus builder: extracted package trees -> documents -> WARC, without network or apt."""

import gzip
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from warcio.archiveiterator import ArchiveIterator

from pipelines import demo_corpus
from pipelines.demo_corpus import (
    Document,
    build_demo_corpus,
    html_to_utf8,
    package_documents,
    select_stdlib_files,
    stdlib_documents,
    summarize_warc,
    write_warc,
)

MANUALS = "https://www.debian.org/doc/manuals"
LATIN1_PAGE = (
    '<html><head><meta http-equiv="Content-Type" content="text/html; charset=ISO-8859-1">'
    "<title>Café</title></head><body><p>Déjà vu, naïve façade.</p></body></html>"
).encode("latin-1")


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def _page(title: str) -> str:
    return f'<html><head><meta charset="utf-8"><title>{title}</title></head><body><p>{title}</p></body></html>'


def _read_warc(path: Path) -> list:
    with path.open("rb") as stream:
        return [
            (
                record.rec_type,
                record.rec_headers.get_header("WARC-Target-URI"),
                record.http_headers.get_header("Content-Type") if record.http_headers else None,
                record.content_stream().read(),
            )
            for record in ArchiveIterator(stream)
        ]


def test_debian_reference_tree_to_warc(tmp_path):
    root = tmp_path / "debian-reference-xx"
    base = root / "usr/share/debian-reference"
    _write(base / "index.xx.html", _page("Index"))
    _write(base / "ch01.xx.html", LATIN1_PAGE)
    _write(base / "ch02.xx.html.gz", gzip.compress(_page("Zipped").encode()))
    _write(base / "debian-reference.xx.txt.gz", gzip.compress(b"not html"))
    (base / "index.html").symlink_to("index.xx.html")  # duplicate: skipped

    docs = package_documents("debian-reference-xx", root)
    assert [d.url for d in docs] == [
        f"{MANUALS}/debian-reference/ch01.xx.html",
        f"{MANUALS}/debian-reference/ch02.xx.html",
        f"{MANUALS}/debian-reference/index.xx.html",
    ]
    assert {d.content_type for d in docs} == {"text/html"}

    warc = tmp_path / "out" / "debian-reference-xx.warc.gz"
    warc.parent.mkdir()
    assert write_warc(warc, docs, {"package": "debian-reference-xx", "version": "1.0"})
    records = _read_warc(warc)
    assert [r[0] for r in records] == ["warcinfo", "response", "response", "response"]
    assert [r[1] for r in records[1:]] == [d.url for d in docs]
    assert {r[2] for r in records[1:]} == {"text/html; charset=utf-8"}

    latin1 = records[1][3].decode("utf-8")  # re-encoded: valid UTF-8, declaration updated
    assert "Déjà vu, naïve façade." in latin1 and "<title>Café</title>" in latin1
    assert "charset=utf-8" in latin1 and "ISO-8859-1" not in latin1
    assert b"Zipped" in records[2][3]
    assert not list(warc.parent.glob("*.tmp"))

    assert summarize_warc(warc) == {
        "file": warc.name,
        "package": "debian-reference-xx",
        "version": "1.0",
        "records": 3,
        "bytes": warc.stat().st_size,
    }
    before = warc.read_bytes()
    assert not write_warc(warc, [Document("https://x.example/", "text/html", b"new")], {})
    assert warc.read_bytes() == before


def test_faq_and_installation_guide_urls(tmp_path):
    faq = tmp_path / "faq"
    _write(faq / "usr/share/doc/debian/FAQ/index.en.html", _page("FAQ"))
    _write(faq / "usr/share/doc/debian/FAQ/de/index.de.html", _page("FAQ de"))
    assert [d.url for d in package_documents("debian-faq", faq)] == [
        f"{MANUALS}/debian-faq/index.de.html",
        f"{MANUALS}/debian-faq/index.en.html",
    ]

    guide = tmp_path / "guide"
    _write(guide / "usr/share/doc/installation-guide-i386/zh_CN/ch01.html", _page("安装"))
    _write(guide / "usr/share/doc/installation-guide-i386/en/index.html", _page("Install"))
    docs = package_documents("installation-guide-i386", guide)
    assert [d.url for d in docs] == [
        "https://d-i.debian.org/manual/en.i386/index.html",
        "https://d-i.debian.org/manual/zh_CN.i386/ch01.html",
    ]
    assert "安装" in docs[1].body.decode("utf-8")


def test_fortunes_one_document_per_entry(tmp_path):
    base = tmp_path / "usr/share/games/fortunes"
    _write(base / "excuses", "BOFH excuse #1:\n\nclock speed\n%\nBOFH excuse #2:\n\nsolar flares\n%\n")
    _write(base / "excuses.dat", b"\x00\x00\x00\x02binary index")
    _write(base / "poems", "\x1b[32m《静夜思》\x1b[m\n床前明月光\n%\n\n%\n第二首\n")
    (base / "poems.u8").symlink_to("poems")

    docs = package_documents("fortunes-test", tmp_path)
    assert [(d.url, d.body) for d in docs] == [
        ("https://fortunes.example/fortunes-test/excuses/1", b"BOFH excuse #1:\n\nclock speed\n"),
        ("https://fortunes.example/fortunes-test/excuses/2", b"BOFH excuse #2:\n\nsolar flares\n"),
        ("https://fortunes.example/fortunes-test/poems/1", "\x1b[32m《静夜思》\x1b[m\n床前明月光\n".encode()),
        ("https://fortunes.example/fortunes-test/poems/2", "第二首\n".encode()),
    ]
    warc = tmp_path / "fortunes-test.warc.gz"
    write_warc(warc, docs, {"package": "fortunes-test"})
    records = _read_warc(warc)
    assert len(records) == 5
    assert {r[2] for r in records[1:]} == {"text/plain; charset=utf-8"}
    assert b"\x1b[32m" in records[3][3]  # colour codes kept: they are the low-quality signal


def test_html_to_utf8_charsets():
    assert html_to_utf8(LATIN1_PAGE).decode("utf-8").count("é") == 2
    sjis = '<?xml version="1.0" encoding="Shift_JIS"?><p>日本語</p>'.encode("shift_jis")
    assert html_to_utf8(sjis).decode("utf-8") == '<?xml version="1.0" encoding="utf-8"?><p>日本語</p>'
    assert html_to_utf8(b"<p>caf\xe9</p>") == "<p>caf\ufffd</p>".encode()  # no declaration: utf-8, replaced
    assert html_to_utf8(b'<meta charset="bogus"><p>ok</p>') == b'<meta charset="bogus"><p>ok</p>'


def test_stdlib_slice(tmp_path):
    lib = tmp_path / "lib"
    kept = ("b.py", "a.py", "pkg/__init__.py", "pkg/mod.py")
    skipped = ("README.txt", "pkg/tests/test_mod.py", "test/test_a.py", "idle_test/x.py", "site-packages/third.py")
    for rel in kept + skipped:
        _write(lib / rel, "x = 1\n")
    _write(lib / "big.py", "#" * 200_001)
    _write(lib / "empty.py", "")
    _write(lib / "latin.py", "# -*- coding: latin-1 -*-\ns = 'é'\n".encode("latin-1"))

    rels = [p.relative_to(lib).as_posix() for p in select_stdlib_files(lib, limit=10)]
    assert rels == ["a.py", "b.py", "latin.py", "pkg/__init__.py", "pkg/mod.py"]
    assert select_stdlib_files(lib, limit=2) == select_stdlib_files(lib, limit=10)[:2]
    assert select_stdlib_files(lib, limit=0) == []

    docs = stdlib_documents(limit=3, stdlib_dir=lib)
    assert [d.url.rsplit("/Lib/", 1)[1] for d in docs] == ["a.py", "b.py", "latin.py"]
    assert docs[0].url.startswith("https://github.com/python/cpython/blob/3.")
    assert {d.content_type for d in docs} == {"text/x-python"}
    assert "s = 'é'" in docs[2].body.decode("utf-8")


def test_real_stdlib_slice_is_deterministic():
    first = stdlib_documents(limit=50)
    assert len(first) == 50
    assert [d.url for d in first] == [d.url for d in stdlib_documents(limit=50)]
    assert not any("/test/" in d.url or "/tests/" in d.url for d in first)


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb to build a local .deb")
def test_build_uses_cache_and_collects_failures(tmp_path, monkeypatch):
    src, cache, out = tmp_path / "src", tmp_path / "cache", tmp_path / "out"
    control = ["Package: fortunes-test", "Version: 1.2-3", "Architecture: all", "Maintainer: t <t@example.org>"]
    _write(src / "DEBIAN/control", "\n".join([*control, "Description: t\n"]))
    _write(src / "usr/share/games/fortunes/excuses", "one\n%\ntwo\n%\n")
    cache.mkdir()
    deb = cache / "fortunes-test_1.2-3_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(src), str(deb)], check=True, capture_output=True)

    calls = []
    real_run = demo_corpus._run

    def fake_run(*cmd, cwd=None):
        calls.append(cmd[0])
        if cmd[0] == "apt-get":  # never touch the network: every download "fails"
            return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package fortunes-missing")
        return real_run(*cmd, cwd=cwd)

    monkeypatch.setattr(demo_corpus, "_run", fake_run)
    monkeypatch.setattr(demo_corpus.shutil, "which", lambda name: f"/usr/bin/{name}")
    packages = ["fortunes-test", "fortunes-missing", "cpython-stdlib"]
    with pytest.raises(RuntimeError, match="fortunes-missing: apt-get update failed"):
        build_demo_corpus(str(out), str(cache), stdlib_limit=3, packages=packages)
    assert calls.count("apt-get") == 2  # download, then the one apt-get update

    manifest = json.loads((out / "manifest.json").read_text())
    assert [(e["file"], e["package"], e["version"], e["records"]) for e in manifest["warcs"]] == [
        ("cpython-stdlib.warc.gz", "cpython-stdlib", demo_corpus.platform.python_version(), 3),
        ("fortunes-test.warc.gz", "fortunes-test", "1.2-3", 2),
    ]
    assert manifest["total_records"] == 5

    calls.clear()
    (out / "fortunes-test.warc.gz").unlink()
    rebuilt = build_demo_corpus(str(out), str(cache), packages=["fortunes-test", "cpython-stdlib"])
    assert [{**e, "bytes": 0} for e in rebuilt["warcs"]] == [{**e, "bytes": 0} for e in manifest["warcs"]]
    assert calls == ["dpkg-deb"]  # deb and extraction cached: only the version lookup

    with pytest.raises(ValueError, match="no document layout"):
        build_demo_corpus(str(out), str(cache), packages=["vim"])
