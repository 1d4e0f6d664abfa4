"""Build the quality development set: real technical text labelled keep, web-style junk labelled drop.

    python -m pipelines.quality_dev_set --output data/quality_dev --cache ~/.cache/qwen2-recipe/debs

The set measures whether the quality stage's profiles (``pipelines.quality``) keep real documentation and drop junk.
It is built from Debian packages the demo crawl does not use, fetched like the demo (``apt-get download`` +
``dpkg -x`` into the cache, ~37 MB of .deb files on the first run, nothing afterwards), and written like the demo:
one ``<package>.warc.gz`` per package (HTML pages as ``text/html`` responses, so they go through the same
Trafilatura extraction and markup hints as a crawl; source files with their MIME type; junk as ``text/plain``, the
way WET records carry a page's text) plus ``labels.jsonl`` (one line per record: ``url``, ``label``, ``kind``,
``package``, ``declared_lang``) and ``manifest.json``. ``benchmarks/bench_profiles.py`` reads the WARCs through
``pipelines.readers`` and scores the labels.

Kept aside, never used here: the demo's packages (debian-reference, debian-faq, installation-guide, fortunes*,
the CPython standard library) and the independent check set (maint-guide, debian-history, vim's tutor files, the
Jargon File, the manual-page packages).

Real sources (label ``keep``, kind ``real``):

* ``aptitude-doc-{en,cs,es,fi,fr,it,ja,nl,ru}``: the aptitude user manual (DocBook), up to 60 pages per language.
* ``developers-reference{,-de,-fr,-it,-ja,-ru}``: the Debian Developer's Reference (Sphinx), one page per chapter.
* ``harden-doc``: the Securing Debian Manual (Publican) in 8 locales, up to 45 pages per locale.
* ``apt-doc``: the APT user's guide and offline-usage guide (debiandoc) in 9 languages, one page per chapter.
* ``debian-policy``: the Debian Policy Manual and its companion documents (Sphinx / plain HTML), English.
* ``libreoffice-help-{zh-cn,ko}``: LibreOffice help pages (reference pages, dialogs, glossaries), 120 per language.
* ``lilypond-doc-html-zh``: LilyPond's Chinese web pages and learning manual (partly untranslated upstream).
* ``doc-debian``: the Debian social contract, constitution, manifesto and bug-tracker texts (web prose, English).
* ``base-files``: the licence texts of ``/usr/share/common-licenses`` (web prose, English).
* Tutorials and glossaries as plain text: ``emacs-common`` (Emacs's tutorial in its 22 languages), ``git-doc`` (git's
  guides in AsciiDoc: glossary, tutorials, workflows, FAQ, user manual, how-tos) and ``dict-vera`` (the V.E.R.A.
  glossary of computing acronyms, 40 pages of 40 entries).
* Source code: ``bash-completion`` (shell, 120 completion scripts), ``python3-docutils`` (Python),
  ``libjs-jquery-ui`` (JavaScript, the unminified modules).

Junk (label ``drop``): ``libjs-jquery-ui``'s ``*.min.js`` (kind ``minified``: minified code, the StarCoder rules'
target), and text made here the way web junk looks, seeded, in 13 languages (en de fr es it pt nl ru pl cs ja zh
ko), ``kind`` one of:

* ``boilerplate``: site footers, legal notices, share/comment/related-post blocks, login and newsletter prompts.
* ``cookie_banner``: cookie-consent banners with their buttons.
* ``menu``: navigation menus, breadcrumbs and category lists.
* ``keyword_spam``: SEO keyword lists and keyword-stuffed lines.
* ``scrambled``: lines of a real page of the same language with their words (CJK: characters) shuffled.
* ``word_salad``: machine-translated-looking word salad: sentences of words drawn from a real page's vocabulary at
  their frequencies, capitalised and punctuated like sentences.
* ``encoding_garbage``: a real page decoded with the wrong codec (mojibake), or with undecodable bytes.
* ``repeated_lines``: a few lines repeated many times (scraped listings, spam).
* ``short_fragment``: what is left of an empty page ("Loading...", "404", "Read more").

Junk URLs are web URLs, a quarter of them under documentation paths (``/docs/``, ``/help/``): documentation sites
have cookie banners and menus too, so the docs profile must drop junk by what it is, not by where it is.

Labelling rules, written before any filter was tuned: (1) every page of a real documentation package is ``keep``,
whatever its length or markup, except pages that are only the package's own navigation, which are left out of the
set (file names ``index``, ``search``, ``genindex``, ``l10n``, ``*toc*`` and the single-page copies of multi-page
manuals: neither good text nor web junk, their label would be a matter of taste); (2) every real source file is
``keep``, every minified file ``drop``; (3) every generated junk record is ``drop``. Real pages whose extracted
text is empty never reach the quality stage (ingest quarantines them) and are not scored.

This module fetches, writes and reads the set and is its command line; the real sources are read by
``pipelines.quality_dev_sources`` and the junk is made by ``pipelines.quality_dev_junk``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from pipelines.demo_corpus import (
    HTML,
    deb_version,
    fetch_package,
    summarize_warc,
    write_warc,
)
from pipelines.quality_dev_junk import JUNK_LANGS, MATERIAL, junk_documents
from pipelines.quality_dev_sources import EXCLUDED_PACKAGES, REAL_SOURCES, Labelled

logger = logging.getLogger(__name__)

LABELS_FILE = "labels.jsonl"
JUNK_PACKAGE = "junk"


# --- driver -----------------------------------------------------------------------------------------------------


def _extracted_lines(docs: list[Labelled], limit: int = 40) -> list[str]:
    """Text lines of up to ``limit`` real pages, extracted as ingest extracts them (junk material)."""
    from pipelines.readers.markup import _Extractor

    lines: list[str] = []
    for item in docs[:limit]:
        body = item.doc.body.decode("utf-8", "replace")
        text = _Extractor.extract(body) if item.doc.content_type == HTML else body
        lines += [line.strip() for line in text.splitlines() if line.strip()]
    return lines


def _material_lines(docs: list[Labelled], lang: str) -> list[str]:
    """Lines of the pages whose declared language is ``lang`` (its base code: ``zh`` covers ``zh-cn``)."""
    return _extracted_lines([d for d in docs if d.lang and d.lang.split("-")[0] == lang])


def _write(path: Path, items: list[Labelled], info: dict, labels) -> None:
    write_warc(path, (item.doc for item in items), info)
    for item in items:
        labels.write(
            json.dumps(
                {
                    "url": item.doc.url,
                    "label": item.label,
                    "kind": item.kind,
                    "package": info["package"],
                    "declared_lang": item.lang,
                },  # fmt: skip
                ensure_ascii=False,
            )
            + "\n"
        )


def build_dev_set(output_dir: str, cache_dir: str, packages: list[str] | None = None, per_kind: int = 6) -> dict:
    """Fetch the real sources, make the junk, write one WARC per package, ``labels.jsonl`` and ``manifest.json``.

    Rebuilds everything in ``output_dir`` (the WARCs are small; the .deb files stay cached)."""
    out, cache = Path(output_dir), Path(cache_dir)
    packages = list(REAL_SOURCES if packages is None else packages)
    for package in packages:
        if package not in REAL_SOURCES or EXCLUDED_PACKAGES.match(package):
            raise ValueError(f"{package!r} is not a development-set source; known: {', '.join(REAL_SOURCES)}")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.warc.gz"):
        old.unlink()
    real: dict[str, list[Labelled]] = {}
    for package in packages:
        deb, root = fetch_package(package, cache)
        real[package] = REAL_SOURCES[package](package, root)
        if not real[package]:
            raise RuntimeError(f"{package}: no documents found; has the package layout changed?")
        logger.info("%s: %d documents", package, len(real[package]))
        real[package + "\0version"] = deb_version(deb)  # type: ignore[assignment]
    tmp = out / (LABELS_FILE + ".tmp")
    with tmp.open("w", encoding="utf-8") as labels:
        for package in packages:
            info = {"software": "qwen2-recipe pipelines.quality_dev_set", "package": package,
                    "version": real.pop(package + "\0version")}  # fmt: skip
            _write(out / f"{package}.warc.gz", real[package], info, labels)
        if set(MATERIAL.values()) <= set(packages):
            material = {lang: _material_lines(real[MATERIAL[lang]], lang) for lang in JUNK_LANGS}
            junk = junk_documents(material, per_kind)
            _write(out / f"{JUNK_PACKAGE}.warc.gz", junk, {"package": JUNK_PACKAGE, "version": "1"}, labels)
    os.replace(tmp, out / LABELS_FILE)
    entries = [summarize_warc(p) for p in sorted(out.glob("*.warc.gz"))]
    counts = Counter()
    for line in (out / LABELS_FILE).open(encoding="utf-8"):
        row = json.loads(line)
        counts[(row["label"], row["kind"])] += 1
    manifest = {
        "warcs": entries,
        "total_records": sum(e["records"] for e in entries),
        "labels": {f"{label}/{kind}": n for (label, kind), n in sorted(counts.items())},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def read_dev_set(folder: str) -> Iterator[dict]:
    """The development set as ingest reads it: each document row (``pipelines.readers``) with ``label``, ``kind``,
    ``package`` and ``declared_lang`` joined by URL. Records ingest quarantines are skipped (logged)."""
    from pipelines.readers import read_documents

    labels = {}
    with open(os.path.join(folder, LABELS_FILE), encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            labels[row.pop("url")] = row
    for path in sorted(Path(folder).glob("*.warc.gz")):
        for kind, row in read_documents(str(path)):
            if kind == "error":
                logger.info("%s: %s %s", path.name, row["reason"], row["record"])
                continue
            yield {**row, **labels[row["url"]]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="folder for the WARCs, labels.jsonl and manifest.json")
    parser.add_argument("--cache", required=True, help="folder for .deb files (shared with the demo corpus)")
    parser.add_argument("--packages", help="comma-separated subset of the real sources (junk needs all of them)")
    parser.add_argument("--per-kind", type=int, default=6, help="junk records per kind and language (default 6)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    packages = [p.strip() for p in args.packages.split(",") if p.strip()] if args.packages else None
    try:
        manifest = build_dev_set(args.output, os.path.expanduser(args.cache), packages, args.per_kind)
    except (RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for e in manifest["warcs"]:
        print(f"{e['file']:<40} {e['records']:>6} records {e['bytes']:>11,} B")
    for key, n in manifest["labels"].items():
        print(f"{key:<30} {n:>6}")
    print(f"{manifest['total_records']} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
