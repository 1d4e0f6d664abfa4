"""Quality profiles on the independent check set: real documents the development set never saw, real kept per source.

    python benchmarks/bench_independent_check.py [--folder DIR] [--cache DIR] [--man-pages 40] [--jargon-entries 150]

Data: the Debian packages ``pipelines.quality_dev_sources.EXCLUDED_PACKAGES`` keeps out of the development set, so
no threshold or profile value was set on them. Fetched like the development set and the demo (``apt-get download`` +
``dpkg -x`` into --cache, ~36 MB of .deb files on the first run, nothing afterwards), written as one
``<package>.warc.gz`` per package plus ``labels.jsonl`` into --folder, read back through ``pipelines.readers``
(Trafilatura extraction and markup hints, as ingest does) and labelled with lid.176 (``pipelines.langid``), exactly as
``benchmarks/bench_profiles.py`` reads the development set. Every document is real (label ``keep``):

* ``maint-guide{,-de,-es,-fr,-it,-ja,-ru,-zh-cn}``: the Debian New Maintainers' Guide (HTML), every chapter page.
* ``debian-history``: A Brief History of Debian (HTML, 8 languages; ``index`` pages left out as navigation) and the
  release dedications (plain text, many languages; kind ``dedication``).
* ``vim-runtime``: vim's tutor, every ``tutor*.utf-8`` file (one document per language; plain text).
* ``jargon-text``: the Jargon File 4.4.7 (plain text): its 12 front-matter chapters (kind ``chapter``) and a seeded
  sample of --jargon-entries lexicon entries, one document per entry as catb.org serves them (kind ``entry``).
* ``manpages``, ``manpages-{de,es,fr,it,ja,pl,ru,zh}``: a seeded sample of --man-pages manual pages per package
  (``.so`` stubs left out), rendered to plain text with ``groff -Tutf8 -mandoc -t`` (no overstrikes), as
  manpages.debian.org-style URLs.

Document URLs are the pages' real public addresses; the WARC file name (the ``source`` column) is the package name, as
in the development set. Each document goes through the current quality stage's per-document decision
(``QualityFilter(profile="auto").check``, the profile routed as in production) and, as the peer, through the chain
before profiles (the web profile on everything, its clear-junk rules off: datatrove's Gopher, C4 and FineWeb
filters); ``bench_profiles.verdicts`` runs both. Tables: the make-up, then real kept new and old per source, per
declared language, per profile, per profile and lid.176 language, per kind; the new and old chains' drop reasons;
each source with the docs (cjk) profile forced, as if routed to documentation; and
for every group under the target (real kept >= 0.85) its top reasons with 3 example document ids.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

from _common import print_table
from bench_profiles import DEFAULT_CACHE, load, rate, verdicts

from pipelines.demo_corpus import MANUALS_URL, TEXT, Document, deb_version, fetch_package, write_warc
from pipelines.filters import CHARACTER_SCRIPT_LANGUAGES
from pipelines.quality import QualityFilter
from pipelines.quality_dev_set import LABELS_FILE
from pipelines.quality_dev_sources import Labelled, _html, _pages

DEFAULT_FOLDER = os.path.expanduser("~/.cache/qwen2-recipe/independent_check")
TARGET = 0.85


def _maint_guide(package: str, root: Path, args) -> list[Labelled]:
    base = next((root / "usr/share/doc").glob("maint-guide*")) / "html"
    lang = package.removeprefix("maint-guide-") if package != "maint-guide" else "en"
    return _html(_pages(base, None, package), lambda p: f"{MANUALS_URL}/maint-guide/{p.name}", lang)


def _debian_history(package: str, root: Path, args) -> list[Labelled]:
    base = root / "usr/share/doc/debian-history"
    docs = []
    for p in _pages(base / "docs", None, package):
        lang = p.stem.split(".")[-1]
        docs += _html([p], lambda p: f"{MANUALS_URL}/project-history/{p.name}", lang)
    for p in sorted((base / "dedication").glob("*.txt")):
        parts = p.stem.split(".")
        lang = {"cn": "zh-cn", "pt_BR": "pt-br"}.get(parts[-1], parts[-1]) if len(parts) > 2 else "en"
        url = f"https://www.debian.org/doc/manuals/project-history/dedication/{p.name}"
        docs.append(Labelled(Document(url, TEXT, p.read_bytes()), "keep", "dedication", lang))
    return docs


def _vim_tutor(package: str, root: Path, args) -> list[Labelled]:
    base = next((root / "usr/share/vim").glob("vim*/tutor"))
    docs = []
    for p in sorted(base.glob("tutor*.utf-8")):
        parts = p.name.split(".")
        lang = parts[1].replace("_", "-") if len(parts) == 3 else "en"
        url = f"https://github.com/vim/vim/blob/v9.0.1378/runtime/tutor/{p.name}"
        docs.append(Labelled(Document(url, TEXT, p.read_bytes()), "keep", "real", lang))
    return docs


def _jargon(package: str, root: Path, args) -> list[Labelled]:
    text = gzip.decompress((root / "usr/share/doc/jargon-text/jargon.txt.gz").read_bytes()).decode("utf-8")
    front, _, lexicon = text.partition("\nGlossary\n")
    docs = []
    chapters = re.split(r"\n(?=Chapter\s\d+\.\s)", front)[1:]
    for chapter in chapters:
        number = re.match(r"Chapter\s(\d+)", chapter).group(1)
        url = f"http://www.catb.org/jargon/html/chapter-{number}.html"
        docs.append(Labelled(Document(url, TEXT, chapter.strip().encode()), "keep", "chapter", "en"))
    lexicon = re.split(r"\nAppendix\sA\.\s", lexicon)[0]
    entries_text = re.split(r"\n(?=   :[^\n]+:)", lexicon)[1:]
    entries = sorted(
        random.Random(package).sample(range(len(entries_text)), min(args.jargon_entries, len(entries_text)))
    )
    for i in entries:
        entry = entries_text[i].strip()
        name = re.match(r":([^:]+):", entry).group(1)
        letter = name[0].upper() if name[0].isalpha() else "0"
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        url = f"http://www.catb.org/jargon/html/{letter}/{slug}.html"
        docs.append(Labelled(Document(url, TEXT, entry.encode()), "keep", "entry", "en"))
    return docs


def _man_text(raw: bytes) -> str:
    source = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    try:
        source.decode("utf-8")
        encoding = "utf-8"
    except UnicodeDecodeError:
        encoding = "latin-1"
    result = subprocess.run(
        ["groff", f"-K{encoding}", "-t", "-mandoc", "-Tutf8", "-P-cbou"], input=source, capture_output=True
    )
    return result.stdout.decode("utf-8", "replace")


def _manpages(package: str, root: Path, args) -> list[Labelled]:
    base = root / "usr/share/man"
    pages = []
    for p in sorted(base.rglob("*.gz")):
        if p.is_symlink() or not p.is_file() or not p.parent.name.startswith("man"):
            continue
        head = gzip.decompress(p.read_bytes())[:200].lstrip()
        if head.startswith(b".so ") and head.count(b"\n") <= 1:
            continue
        pages.append(p)
    pages = sorted(random.Random(package).sample(pages, min(args.man_pages, len(pages))))
    docs = []
    for p in pages:
        folder = p.relative_to(base).parts[0]
        lang = "en" if folder.startswith("man") else folder.split("_")[0].split(".")[0]
        if folder in ("zh_CN", "zh_TW"):
            lang = folder.lower().replace("_", "-")
        name = p.name.removesuffix(".gz")
        suffix = "" if lang == "en" else f".{lang}"
        url = f"https://manpages.debian.org/bookworm/{package}/{name}{suffix}.html"
        text = _man_text(p.read_bytes())
        if text.strip():
            docs.append(Labelled(Document(url, TEXT, text.encode()), "keep", "real", lang))
    return docs


SOURCES = {
    **{p: _maint_guide for p in ("maint-guide", *(f"maint-guide-{x}" for x in ("de", "es", "fr", "it", "ja", "ru")))},
    "maint-guide-zh-cn": _maint_guide,
    "debian-history": _debian_history,
    "vim-runtime": _vim_tutor,
    "jargon-text": _jargon,
    **{
        p: _manpages for p in ("manpages", *(f"manpages-{x}" for x in ("de", "es", "fr", "it", "ja", "pl", "ru", "zh")))
    },
}


def build(folder: str, cache: str, args) -> None:
    """One WARC per package and ``labels.jsonl`` (the development set's layout), rebuilt from the cached debs."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.warc.gz"):
        old.unlink()
    tmp = out / (LABELS_FILE + ".tmp")
    with tmp.open("w", encoding="utf-8") as labels:
        for package, reader in SOURCES.items():
            deb, root = fetch_package(package, Path(cache))
            items = reader(package, root, args)
            print(f"  {package}: {len(items)} documents", flush=True)
            info = {"software": "qwen2-recipe benchmarks/bench_independent_check.py", "package": package,
                    "version": deb_version(deb)}  # fmt: skip
            write_warc(out / f"{package}.warc.gz", (item.doc for item in items), info)
            for item in items:
                row = {"url": item.doc.url, "label": item.label, "kind": item.kind, "package": package,
                       "declared_lang": item.lang}  # fmt: skip
                labels.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, out / LABELS_FILE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default=DEFAULT_FOLDER, help=f"WARCs and labels (default {DEFAULT_FOLDER})")
    parser.add_argument("--cache", default=DEFAULT_CACHE, help=f".deb cache (default {DEFAULT_CACHE})")
    parser.add_argument("--man-pages", type=int, default=40, help="manual pages sampled per package (default 40)")
    parser.add_argument("--jargon-entries", type=int, default=150, help="Jargon File entries sampled (default 150)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the WARCs even if labels.jsonl exists")
    parser.add_argument("--examples", type=int, default=3, help="example ids per drop reason under the target")
    args = parser.parse_args()

    if args.rebuild or not os.path.exists(os.path.join(args.folder, LABELS_FILE)):
        print(f"building the independent check set in {args.folder} (debs cached in {args.cache})", flush=True)
        build(args.folder, args.cache, args)
    rows = load(args.folder, args.cache)  # read through pipelines.readers, lid.176 labels
    new, new_seconds = verdicts(rows, "auto")
    old, old_seconds = verdicts(rows, "web", chain_only=True)
    n = len(rows)
    print(f"\nindependent check set: {n:,} documents from {args.folder}, every one real (label keep)\n")

    makeup = Counter((r["package"], r["declared_lang"] or "-") for r in rows)
    by_package = defaultdict(list)
    for (package, lang), k in sorted(makeup.items()):
        by_package[package].append(f"{lang} {k}")
    kinds = defaultdict(Counter)
    for r in rows:
        kinds[r["package"]][r["kind"]] += 1
    print_table(
        ["source", "docs", "kinds", "declared language: docs"],
        [
            [p, sum(kinds[p].values()), " ".join(f"{k} {v}" for k, v in sorted(kinds[p].items())), ", ".join(langs)]
            for p, langs in by_package.items()
        ],
    )
    langid = sum(r["langid_drops"] for r in rows)
    print(f"\ndocuments language ID would drop before quality (still scored here): {langid}")
    mismatch = Counter(
        f"{r['declared_lang']}->{r['lang']}"
        for r in rows
        if r["declared_lang"] and r["lang"] != r["declared_lang"].split("-")[0] and r["lang"] != r["declared_lang"]
    )
    print(
        "declared language vs lid.176, where they differ: " + ", ".join(f"{k} {v}" for k, v in mismatch.most_common())
    )

    under = []

    def table(key, title):
        groups = defaultdict(list)
        for i, row in enumerate(rows):
            groups[key(i, row)].append(i)
        groups["all"] = list(range(n))

        def cells(name, members):
            kept = sum(new[i][0] is None for i in members)
            kept_old = sum(old[i][0] is None for i in members)
            lid = sum(rows[i]["langid_drops"] for i in members)
            if members and kept / len(members) < TARGET:
                under.append((title, name, members))
            return [name, len(members), rate(kept, len(members)), rate(kept_old, len(members)), lid]

        body = [cells(k, v) for k, v in sorted(groups.items()) if k != "all"]
        print_table([title, "real", "real kept", "old chain", "langid drops"], body + [cells("all", groups["all"])])

    print("\nper source ('old chain': the web chain on everything, datatrove's filters alone)")
    table(lambda i, r: r["package"], "source")
    print("\nper declared language")
    table(lambda i, r: r["declared_lang"] or "-", "declared lang")
    print("\nper profile (each document on the profile it is routed to)")
    table(lambda i, r: new[i][1]["quality_profile"], "profile")
    print("\nper profile and language (lid.176)")
    table(lambda i, r: f"{new[i][1]['quality_profile']}/{r['lang']}", "profile/lang")
    print("\nper source and kind")
    table(lambda i, r: f"{r['package']}/{r['kind']}", "source/kind")
    evidence = Counter((new[i][1]["quality_profile"], new[i][1]["quality_evidence"]) for i in range(n))
    print("\nwhat chose the profile: " + ", ".join(f"{p}:{e} {k}" for (p, e), k in sorted(evidence.items())))

    reasons = Counter(new[i][0] for i in range(n) if new[i][0])
    print("\nreal documents the new chain drops, by rule: " + ", ".join(f"{k} {v}" for k, v in reasons.most_common()))
    old_reasons = Counter(old[i][0] for i in range(n) if old[i][0])
    print("real documents the old chain drops, by rule: "
          + ", ".join(f"{k} {v}" for k, v in old_reasons.most_common(10)))  # fmt: skip
    flagged = Counter(f for i in range(n) if new[i][0] is None for f in new[i][1].get("quality_flags", []))
    carrying = sum(1 for i in range(n) if new[i][0] is None and new[i][1].get("quality_flags"))
    print(f"kept documents carrying web-chain flags: {carrying}; by rule: "
          + ", ".join(f"{k} {v}" for k, v in flagged.most_common(8)))  # fmt: skip
    lost = [i for i in range(n) if old[i][0] is None and new[i][0] is not None]
    print(f"real documents the old chain kept and the new one drops: {len(lost)}")

    print(
        "\neach source with the docs profile forced onto every non-CJK document and cjk onto the rest (as if routed "
        "to a documentation profile; the web-routed documents are where routing and the rules part)"
    )
    forced_quality = {p: QualityFilter(profile=p) for p in ("docs", "cjk")}
    forced = []
    for row in rows:
        profile = "cjk" if row["lang"] in CHARACTER_SCRIPT_LANGUAGES | {"ko"} else "docs"
        forced.append(forced_quality[profile].check(dict(row)))
    routed_web = Counter(r["package"] for i, r in enumerate(rows) if new[i][1]["quality_profile"] == "web")
    body = []
    for package in [*SOURCES, "all"]:
        members = [i for i, r in enumerate(rows) if package in ("all", r["package"])]
        web = sum(routed_web.values()) if package == "all" else routed_web[package]
        body.append([package, len(members), web,
                     rate(sum(new[i][0] is None for i in members), len(members)),
                     rate(sum(forced[i] is None for i in members), len(members))])  # fmt: skip
    print_table(["source", "real", "routed to web", "real kept (routed)", "real kept (docs/cjk forced)"], body)
    forced_reasons = Counter(forced[i] for i in range(n) if forced[i])
    print("drops with docs/cjk forced, by rule: " + ", ".join(f"{k} {v}" for k, v in forced_reasons.most_common()))

    print(
        f"\ngroups under the target (real kept < {TARGET}): top reasons of the new chain, "
        f"{args.examples} example ids each (groups of fewer than 5 documents: named only)"
    )
    small = []
    for title, name, members in under:
        if name == "all" and title != "source":
            continue
        dropped = Counter(new[i][0] for i in members if new[i][0])
        kept = sum(new[i][0] is None for i in members)
        if len(members) < 5:
            small.append(f"{title} {name} {kept}/{len(members)}")
            continue
        print(f"* {title} {name}: {kept}/{len(members)} kept ({kept / len(members):.3f})")
        for reason, k in dropped.most_common(3):
            ids = [i for i in members if new[i][0] == reason][: args.examples]
            examples = "; ".join(f"{rows[i]['id']} ({rows[i]['url']})" for i in ids)
            print(f"    {reason} {k}: {examples}")
    print("small groups under the target: " + ", ".join(small))

    kept = sum(new[i][0] is None for i in range(n))
    kept_old = sum(old[i][0] is None for i in range(n))
    print(f"quality checks, one process, chains built: new {n / new_seconds:.0f} docs/s, old {n / old_seconds:.0f}")
    per_source = Counter(r["package"] for r in rows)
    kept_source = Counter(r["package"] for i, r in enumerate(rows) if new[i][0] is None)
    per_source = ", ".join(f"{p} {rate(kept_source[p], per_source[p])}" for p in SOURCES)
    print(f"\nRESULT independent check: real kept {kept / n:.3f} (old chain {kept_old / n:.3f}); {per_source}")


if __name__ == "__main__":
    main()
