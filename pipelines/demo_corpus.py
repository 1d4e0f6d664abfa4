"""Build the demo corpus: real Debian documentation packages written as gzipped WARC files.

Each package becomes ``<package>.warc.gz`` (a ``warcinfo`` record, then one HTTP
``response`` record per document), so the demo enters the pipeline through the same
reader a Common Crawl dump does. Packages are fetched with ``apt-get download`` and
unpacked with ``dpkg -x`` into a cache folder; nothing is installed.
"""

from __future__ import annotations

import argparse
import codecs
import functools
import gzip
import io
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tokenize
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from warcio.archiveiterator import ArchiveIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

logger = logging.getLogger(__name__)

STDLIB_PACKAGE = "cpython-stdlib"
DEMO_PACKAGES: tuple[str, ...] = (
    *(
        f"debian-reference-{lang}"
        for lang in ("en", "de", "fr", "es", "it", "ja", "pt", "pt-br", "zh-cn", "zh-tw", "id")
    ),
    "debian-faq",
    *(f"debian-faq-{lang}" for lang in ("de", "fr", "it", "ja", "ko", "nl", "pt", "ru", "zh-cn")),
    "installation-guide-amd64",
    "installation-guide-i386",
    "fortunes-bofh-excuses",
    "fortunes-zh",
    STDLIB_PACKAGE,
)

HTML = "text/html"
TEXT = "text/plain"
PYTHON = "text/x-python"
MANUALS_URL = "https://www.debian.org/doc/manuals"
MAX_STDLIB_FILE_BYTES = 200_000
_SKIPPED_STDLIB_DIRS = frozenset({"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages"})
_CHARSET_RE = re.compile(
    rb"""<\?xml[^>]*?encoding\s*=\s*["']([\w.:-]+)|<meta[^>]*?charset\s*=\s*["']?([\w.:-]+)""",
    re.IGNORECASE,
)
# Browsers (WHATWG) read these labels as windows-1252; so do we.
_BROWSER_CODECS = {"iso8859-1": "cp1252", "ascii": "cp1252"}
_NO_CANDIDATE_RE = re.compile(r"Unable to locate package|no (installation )?candidate")


class Document(NamedTuple):
    """One crawled document: where it was "fetched" from, its MIME type, its UTF-8 body."""

    url: str
    content_type: str
    body: bytes


# --- decoding -------------------------------------------------------------------------


def html_to_utf8(raw: bytes) -> bytes:
    """Decode an HTML page by its declared charset and re-encode it as UTF-8.

    A non-UTF-8 declaration is rewritten to ``utf-8`` so that the page agrees with itself.
    """
    match = _CHARSET_RE.search(raw, 0, 4096)
    if not match:
        return raw.decode("utf-8", errors="replace").encode("utf-8")
    label = match[match.lastindex].decode("ascii")
    try:
        codec = codecs.lookup(label).name
    except LookupError:
        logger.warning("unknown charset %r, decoding as utf-8", label)
        codec = "utf-8"
    codec = _BROWSER_CODECS.get(codec, codec)
    if codec != "utf-8":
        start, end = match.span(match.lastindex)
        raw = raw[:start] + b"utf-8" + raw[end:]
    return raw.decode(codec, errors="replace").encode("utf-8")


def python_to_utf8(raw: bytes) -> bytes:
    """Decode Python source by its PEP 263 declaration and re-encode it as UTF-8."""
    try:
        codec, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
    except SyntaxError:
        codec = "utf-8"
    return raw.decode(codec, errors="replace").encode("utf-8")


# --- extracted package tree -> documents ------------------------------------------------


def _regular_files(base: Path, patterns: Iterable[str]) -> list[Path]:
    """Sorted regular files (no symlinks, which are duplicates in these packages)."""
    found = {p for pattern in patterns for p in base.rglob(pattern)}
    return sorted(p for p in found if p.is_file() and not p.is_symlink())


def html_documents(base: Path, url_for: Callable[[Path], str]) -> list[Document]:
    """Every ``*.html`` / ``*.html.gz`` page under ``base``, as UTF-8.

    ``url_for`` maps the page's path relative to ``base`` (without ``.gz``) to its URL.
    """
    docs = []
    for path in _regular_files(base, ("*.html", "*.html.gz")):
        raw = path.read_bytes()
        rel = path.relative_to(base)
        if path.suffix == ".gz":
            raw, rel = gzip.decompress(raw), rel.with_suffix("")
        docs.append(Document(url_for(rel), HTML, html_to_utf8(raw)))
    return docs


def fortune_documents(package: str, base: Path) -> list[Document]:
    """One text/plain document per ``%``-separated entry of each fortune file in ``base``."""
    docs = []
    for path in _regular_files(base, ("*",)):
        if path.suffix == ".dat":  # strfile index
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        entries = (e.strip("\n") for e in re.split(r"(?m)^%$", text))
        for n, entry in enumerate((e for e in entries if e.strip()), start=1):
            url = f"https://fortunes.example/{package}/{path.name}/{n}"
            docs.append(Document(url, TEXT, f"{entry}\n".encode()))
    return docs


def _debian_reference(package: str, root: Path) -> list[Document]:
    return html_documents(
        root / "usr/share/debian-reference",
        lambda rel: f"{MANUALS_URL}/debian-reference/{rel.name}",  # ch01.de.html
    )


def _debian_faq(package: str, root: Path) -> list[Document]:
    return html_documents(
        root / "usr/share/doc/debian/FAQ",  # English at the top, translations in <lang>/
        lambda rel: f"{MANUALS_URL}/debian-faq/{rel.name}",  # basic-defs.de.html
    )


def _installation_guide(package: str, root: Path) -> list[Document]:
    arch = package.removeprefix("installation-guide-")

    def url_for(rel: Path) -> str:  # <lang>/<page>.html
        lang, *page = rel.parts
        return f"https://d-i.debian.org/manual/{lang}.{arch}/{'/'.join(page)}"

    return html_documents(root / "usr/share/doc" / package, url_for)


def _fortunes(package: str, root: Path) -> list[Document]:
    return fortune_documents(package, root / "usr/share/games/fortunes")


_LAYOUTS: dict[str, Callable[[str, Path], list[Document]]] = {
    "debian-reference-": _debian_reference,
    "debian-faq": _debian_faq,
    "installation-guide-": _installation_guide,
    "fortunes-": _fortunes,
}


def _layout(package: str) -> Callable[[str, Path], list[Document]]:
    for prefix, layout in _LAYOUTS.items():
        if package.startswith(prefix):
            return layout
    raise ValueError(f"no document layout known for package {package!r}; known prefixes: {sorted(_LAYOUTS)}")


def package_documents(package: str, root: Path) -> list[Document]:
    """Documents of the package extracted (``dpkg -x``) at ``root``."""
    return _layout(package)(package, root)


# --- stdlib slice -------------------------------------------------------------------------


def select_stdlib_files(stdlib_dir: Path, limit: int = 300) -> list[Path]:
    """First ``limit`` .py files of a sorted walk of ``stdlib_dir`` (each folder's files before
    its subfolders), skipping test folders, site-packages, and empty files or files over 200 KB."""
    selected: list[Path] = []
    for folder, dirnames, filenames in os.walk(stdlib_dir):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_STDLIB_DIRS)
        for name in sorted(filenames):
            path = Path(folder, name)
            if len(selected) >= limit:
                return selected
            if name.endswith(".py") and not path.is_symlink() and 0 < path.stat().st_size <= MAX_STDLIB_FILE_BYTES:
                selected.append(path)
    return selected


def stdlib_documents(limit: int = 300, stdlib_dir: Path | None = None) -> list[Document]:
    """A deterministic slice of the running interpreter's stdlib as text/x-python."""
    stdlib_dir = stdlib_dir or Path(sysconfig.get_paths()["stdlib"])
    branch = f"{sys.version_info.major}.{sys.version_info.minor}"
    return [
        Document(
            f"https://github.com/python/cpython/blob/{branch}/Lib/{path.relative_to(stdlib_dir).as_posix()}",
            PYTHON,
            python_to_utf8(path.read_bytes()),
        )
        for path in select_stdlib_files(stdlib_dir, limit)
    ]


# --- documents -> WARC ----------------------------------------------------------------------


def write_warc(path: Path, documents: Iterable[Document], info: Mapping[str, str]) -> bool:
    """Write a warcinfo record then one response record per document, atomically.

    Returns False (and writes nothing) when ``path`` already exists.
    """
    if path.exists():
        logger.info("%s exists, skipping", path.name)
        return False
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as out:
        writer = WARCWriter(out, gzip=True)
        writer.write_record(writer.create_warcinfo_record(path.name, dict(info)))
        for doc in documents:
            http_headers = StatusAndHeaders(
                "200 OK",
                [
                    ("Content-Type", f"{doc.content_type}; charset=utf-8"),
                    ("Content-Length", str(len(doc.body))),
                ],
                protocol="HTTP/1.1",
            )
            record = writer.create_warc_record(
                doc.url,
                "response",
                payload=io.BytesIO(doc.body),
                length=len(doc.body),
                http_headers=http_headers,
                # Common Crawl sets this; datatrove's WarcReader trusts it instead of sniffing.
                warc_headers_dict={"WARC-Identified-Payload-Type": doc.content_type},
            )
            writer.write_record(record)
    os.replace(tmp, path)
    return True


def summarize_warc(path: Path) -> dict:
    """Manifest entry of a WARC written by :func:`write_warc`: package, version, records, bytes."""
    info: dict[str, str] = {}
    records = 0
    with path.open("rb") as stream:
        for record in ArchiveIterator(stream):
            if record.rec_type == "warcinfo":
                for line in record.content_stream().read().decode("utf-8").splitlines():
                    key, _, value = line.partition(":")
                    info[key.strip()] = value.strip()
            elif record.rec_type == "response":
                records += 1
    return {
        "file": path.name,
        "package": info.get("package", path.name.removesuffix(".warc.gz")),
        "version": info.get("version"),
        "records": records,
        "bytes": path.stat().st_size,
    }


# --- fetching ------------------------------------------------------------------------------


def _run(*cmd: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


@functools.cache
def _apt_update() -> None:
    """``apt-get update``, at most once per process."""
    logger.info("running apt-get update")
    result = _run("apt-get", "update")
    if result.returncode:
        raise RuntimeError(f"apt-get update failed: {result.stderr.strip()}")


def _cached_deb(package: str, cache_dir: Path) -> Path | None:
    debs = list(cache_dir.glob(f"{package}_*.deb"))  # Debian names never contain "_"
    return max(debs, key=lambda p: p.stat().st_mtime) if debs else None


def fetch_package(package: str, cache_dir: Path) -> tuple[Path, Path]:
    """Return ``(deb, extracted_root)``, downloading and unpacking only what the cache lacks."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    deb = _cached_deb(package, cache_dir)
    if deb is None:
        if shutil.which("apt-get") is None:
            raise RuntimeError(
                f"cannot download {package}: apt-get not found. Build the demo corpus on a "
                f"Debian-based machine, or put {package}_<version>_<arch>.deb into {cache_dir}."
            )
        logger.info("downloading %s", package)
        result = _run("apt-get", "download", package, cwd=cache_dir)
        if result.returncode and _NO_CANDIDATE_RE.search(result.stderr):
            _apt_update()
            result = _run("apt-get", "download", package, cwd=cache_dir)
        deb = _cached_deb(package, cache_dir)
        if result.returncode or deb is None:
            raise RuntimeError(
                f"apt-get download {package} failed: {result.stderr.strip()}\n"
                "Check the package name and network access, run `apt-get update`, and make "
                "sure this is a Debian-based machine with the main archive in its sources."
            )
    root = cache_dir / "extracted" / deb.stem
    if not root.is_dir():
        tmp = root.with_name(root.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        result = _run("dpkg", "-x", str(deb), str(tmp))
        if result.returncode:
            raise RuntimeError(f"dpkg -x {deb} failed: {result.stderr.strip()}")
        os.replace(tmp, root)
    return deb, root


def deb_version(deb: Path) -> str:
    """The package version recorded in a .deb."""
    result = _run("dpkg-deb", "-f", str(deb), "Version")
    if result.returncode:
        raise RuntimeError(f"dpkg-deb -f {deb} Version failed: {result.stderr.strip()}")
    return result.stdout.strip()


# --- driver --------------------------------------------------------------------------------


def _build_package(package: str, warc: Path, cache_dir: Path, stdlib_limit: int) -> None:
    if package == STDLIB_PACKAGE:
        docs = stdlib_documents(stdlib_limit)
        info = {"version": platform.python_version(), "source": sysconfig.get_paths()["stdlib"]}
    else:
        deb, root = fetch_package(package, cache_dir)
        docs = package_documents(package, root)
        info = {"version": deb_version(deb), "source": deb.name}
    if not docs:
        raise RuntimeError(f"{package}: no documents found; has the package layout changed?")
    info = {"software": "qwen2-recipe pipelines.demo_corpus", "package": package, **info}
    write_warc(warc, docs, info)
    logger.info("%s: wrote %d records", warc.name, len(docs))


def build_demo_corpus(
    output_dir: str,
    cache_dir: str,
    stdlib_limit: int = 300,
    packages: list[str] | None = None,
) -> dict:
    """Write one ``<package>.warc.gz`` per package (skipping existing ones) and ``manifest.json``.

    The manifest lists every WARC in ``output_dir`` and is returned. Packages that fail are
    reported together in one RuntimeError after the others are written. An existing WARC is
    never rebuilt: delete it to pick up a new package version or ``stdlib_limit``.
    """
    out, cache = Path(output_dir), Path(cache_dir)
    packages = list(DEMO_PACKAGES if packages is None else packages)
    for package in packages:
        if package != STDLIB_PACKAGE:
            _layout(package)
    out.mkdir(parents=True, exist_ok=True)

    failures = []
    for package in packages:
        warc = out / f"{package}.warc.gz"
        if warc.exists():
            logger.info("%s exists, skipping", warc.name)
            continue
        try:
            _build_package(package, warc, cache, stdlib_limit)
        except RuntimeError as err:
            logger.error("%s failed: %s", package, err)
            failures.append(f"{package}: {err}")

    entries = [summarize_warc(path) for path in sorted(out.glob("*.warc.gz"))]
    manifest = {
        "warcs": entries,
        "total_records": sum(e["records"] for e in entries),
        "total_bytes": sum(e["bytes"] for e in entries),
    }
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, out / "manifest.json")
    if failures:
        raise RuntimeError(f"{len(failures)} demo package(s) failed:\n" + "\n".join(failures))
    return manifest


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m pipelines.demo_corpus --output DIR --cache DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="folder for WARCs + manifest")
    parser.add_argument("--cache", required=True, help="folder for .deb files")
    parser.add_argument("--stdlib-limit", type=int, default=300, help="stdlib .py files")
    parser.add_argument("--packages", help="comma-separated subset of DEMO_PACKAGES")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    packages = [p.strip() for p in args.packages.split(",") if p.strip()] if args.packages else None
    try:
        manifest = build_demo_corpus(args.output, args.cache, args.stdlib_limit, packages)
    except (RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for e in manifest["warcs"]:
        version = e["version"] or "-"
        print(f"{e['file']:<38} {version:<18} {e['records']:>6} records {e['bytes']:>11,} B")
    total = f"{manifest['total_records']} records, {manifest['total_bytes']:,} B"
    print(f"{len(manifest['warcs'])} WARC files, {total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
