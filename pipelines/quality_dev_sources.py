"""The real sources of the quality development set (``pipelines.quality_dev_set``): one reader per Debian package
(``REAL_SOURCES``) that turns the unpacked package into labelled documents, every page ``keep`` (kind ``real``) but the
package's own navigation pages (``NAVIGATION_PAGES``), every minified file ``drop`` (kind ``minified``).
"""

from __future__ import annotations

import gzip
import random
import re
from collections.abc import Callable
from pathlib import Path

from pipelines.demo_corpus import (
    HTML,
    MANUALS_URL,
    PYTHON,
    TEXT,
    Document,
    html_to_utf8,
)

SHELL = "text/x-sh"
JAVASCRIPT = "application/javascript"
NAVIGATION_PAGES = re.compile(r"^(index|search|genindex|l10n|.*toc.*|.*big-page.*|developers-reference)(\.[\w-]+)?$")


# --- real sources ----------------------------------------------------------------------------------------------


class Labelled:
    """A document with its label: ``keep``/``drop``, the kind of text, and the language its source declares."""

    def __init__(self, doc: Document, label: str, kind: str, lang: str | None):
        self.doc, self.label, self.kind, self.lang = doc, label, kind, lang


def _pages(base: Path, limit: int | None, seed: str, pattern: str = "*.html") -> list[Path]:
    """The content pages under ``base`` (no navigation pages), a seeded sample of ``limit`` of them."""
    pages = sorted(
        p for p in base.rglob(pattern) if p.is_file() and not p.is_symlink() and not NAVIGATION_PAGES.match(p.stem)
    )
    if limit is not None and len(pages) > limit:
        pages = sorted(random.Random(seed).sample(pages, limit))
    return pages


def _html(paths: list[Path], url_for: Callable[[Path], str], lang: str) -> list[Labelled]:
    return [Labelled(Document(url_for(p), HTML, html_to_utf8(p.read_bytes())), "keep", "real", lang) for p in paths]


def _lang_of(package: str, default: str = "en") -> str:
    parts = package.split("-")
    tail = parts[-1]
    if len(tail) == 2 or tail in ("cn", "tw", "br"):
        return "-".join(parts[-2:]) if tail in ("cn", "tw", "br") else tail
    return default


def _aptitude(package: str, root: Path) -> list[Labelled]:
    lang = _lang_of(package)
    base = root / "usr/share/doc/aptitude/html" / lang
    return _html(_pages(base, 60, package), lambda p: f"{MANUALS_URL}/aptitude/{p.stem}.{lang}.html", lang)


def _developers_reference(package: str, root: Path) -> list[Labelled]:
    lang = _lang_of(package)
    base = root / "usr/share/developers-reference" / ("" if lang == "en" else lang)
    pages = [p for p in _pages(base, None, package) if p.parent == base]
    return _html(pages, lambda p: f"{MANUALS_URL}/developers-reference/{p.stem}.{lang}.html", lang)


def _harden_doc(package: str, root: Path) -> list[Labelled]:
    docs = []
    for folder in sorted((root / "usr/share/doc/harden-doc/html").iterdir()):
        if not re.fullmatch(r"[a-z]{2}-[A-Z]{2}", folder.name):
            continue
        lang = folder.name.split("-")[0] if folder.name not in ("zh-CN", "pt-BR") else folder.name.lower()
        pages = [p for p in _pages(folder, None, package) if p.parent == folder]
        pages = sorted(random.Random(folder.name).sample(pages, min(45, len(pages))))
        docs += _html(pages, lambda p, lang=lang: f"{MANUALS_URL}/securing-debian-manual/{p.stem}.{lang}.html", lang)
    return docs


def _apt_doc(package: str, root: Path) -> list[Labelled]:
    docs = []
    for folder in sorted((root / "usr/share/doc/apt-doc").glob("*.html")):
        if not folder.is_dir():
            continue
        guide, *rest = folder.name.removesuffix(".html").split(".")
        lang = rest[0] if rest else "en"
        name = {"guide": "apt-guide", "offline": "apt-offline"}[guide]
        pages = _pages(folder, None, package)
        docs += _html(pages, lambda p, n=name, code=lang: f"{MANUALS_URL}/{n}/{p.stem}.{code}.html", lang)
    return docs


SKIPPED_POLICY_PAGES = ("README", "menu-policy-1", "perl-policy-1")  # README: package notes; *-1: duplicates


def _debian_policy(package: str, root: Path) -> list[Labelled]:
    base = root / "usr/share/doc/debian-policy"
    pages = _pages(base / "policy.html", None, package) + [
        p
        for p in _pages(base, None, package)
        if p.parent == base and p.stem not in ("README", "menu-policy-1", "perl-policy-1")
    ]
    pages = [p for p in pages if "_static" not in p.parts and "_sources" not in p.parts]
    return _html(pages, lambda p: f"https://www.debian.org/doc/debian-policy/{p.stem}.html", "en")


def _libreoffice_help(package: str, root: Path) -> list[Labelled]:
    lang = _lang_of(package)
    folder = {"zh-cn": "zh-CN"}.get(lang, lang)
    base = root / "usr/share/libreoffice/help" / folder / "text"
    pages = _pages(base, 120, package)
    return _html(
        pages, lambda p: f"https://help.libreoffice.org/7.4/{folder}/text/{p.relative_to(base).as_posix()}", lang
    )


def _lilypond_zh(package: str, root: Path) -> list[Labelled]:
    base = root / "usr/share/doc/lilypond/html/Documentation"
    pages = _pages(base, 100, package)
    return _html(
        pages, lambda p: f"https://lilypond.org/doc/v2.24/Documentation/{p.relative_to(base).as_posix()}", "zh-cn"
    )


# The doc-debian texts are pages of www.debian.org (web prose, not manuals): their real addresses.
DOC_DEBIAN_PAGES = {
    "social-contract.txt.gz": "https://www.debian.org/social_contract",
    "constitution.txt.gz": "https://www.debian.org/devel/constitution",
    "debian-manifesto.gz": "https://www.debian.org/intro/manifesto",
    "mailing-lists.txt.gz": "https://www.debian.org/MailingLists/",
    "bug-reporting.txt.gz": "https://www.debian.org/Bugs/Reporting",
    "bug-log-access.txt": "https://www.debian.org/Bugs/Access",
    "bug-log-mailserver.txt.gz": "https://www.debian.org/Bugs/server-request",
    "bug-maint-info.txt.gz": "https://www.debian.org/Bugs/Developer",
    "bug-maint-mailcontrol.txt.gz": "https://www.debian.org/Bugs/server-control",
    "bug-mailserver-refcard.txt": "https://www.debian.org/Bugs/server-refcard",
    "source-unpack.txt": "https://www.debian.org/doc/source-unpack",
}


def _read_text(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.suffix == ".gz" else raw


def _doc_debian(package: str, root: Path) -> list[Labelled]:
    base = root / "usr/share/doc/debian"
    return [
        Labelled(Document(url, TEXT, _read_text(base / name).decode("utf-8", "replace").encode()), "keep", "real", "en")
        for name, url in DOC_DEBIAN_PAGES.items()
        if (base / name).is_file()
    ]


def _licenses(package: str, root: Path) -> list[Labelled]:
    base = root / "usr/share/common-licenses"
    return [
        Labelled(Document(f"https://spdx.org/licenses/{p.name}.txt", TEXT, p.read_bytes()), "keep", "real", "en")
        for p in sorted(base.iterdir())
        if p.is_file() and not p.is_symlink()
    ]


# Emacs's tutorials: the suffix of TUTORIAL.<suffix> -> language (no suffix: English).
EMACS_TUTORIAL_LANGS = {"cn": "zh-cn", "zh": "zh-tw", "pt_BR": "pt-br"}


def _emacs_tutorials(package: str, root: Path) -> list[Labelled]:
    """Emacs's built-in tutorial in every language it ships (plain text, key notation like C-x and M-v)."""
    docs = []
    for p in sorted(next((root / "usr/share/emacs").glob("*/etc/tutorials")).glob("TUTORIAL*")):
        suffix = p.name.partition(".")[2]
        if suffix == "translators":  # notes for translators, not the tutorial
            continue
        raw = p.read_bytes()
        coding = re.search(rb"coding: *([-\w]+)", raw)  # TUTORIAL.ja is iso-2022-jp: its Local Variables say so
        text = raw.decode(coding.group(1).decode() if coding else "utf-8")
        url = f"https://git.savannah.gnu.org/cgit/emacs.git/tree/etc/tutorials/{p.name}?h=emacs-28.2"
        lang = EMACS_TUTORIAL_LANGS.get(suffix, suffix or "en")
        docs.append(Labelled(Document(url, TEXT, text.encode()), "keep", "real", lang))
    return docs


def _git_doc(package: str, root: Path) -> list[Labelled]:
    """git's guides as their AsciiDoc text: the glossary, the tutorials, workflows, FAQ, user manual, how-tos (the
    command pages, git-*.txt, and the fragments they include are left out)."""
    base = root / "usr/share/doc/git/html"
    pages = sorted(base.glob("git[a-z]*.txt")) + sorted(base.glob("[A-Z]*.txt")) + sorted(base.glob("howto/*.txt"))
    pages = [base / "glossary-content.txt" if p.name == "gitglossary.txt" else p for p in pages]  # a stub including it
    url = "https://github.com/git/git/blob/v2.39.5/Documentation/"
    return [
        Labelled(Document(url + p.relative_to(base).as_posix(), TEXT, p.read_bytes()), "keep", "real", "en")
        for p in pages
    ]


def _vera(package: str, root: Path) -> list[Labelled]:
    """The V.E.R.A. glossary of computing acronyms (a dictd database): pages of 40 consecutive entries, a seeded
    sample of 40 pages, each at the dict:// address of its first entry."""
    body = gzip.decompress((root / "usr/share/dictd/vera.dict.dz").read_bytes()).decode("utf-8")
    entries = [e.strip("\n") for e in body.split("\n       \n")[1:] if e.strip()]
    pages = [entries[i : i + 40] for i in range(0, len(entries), 40)]
    picked = sorted(random.Random(package).sample(range(len(pages)), 40))
    return [
        Labelled(
            Document(f"dict://dict.org/d:{pages[i][0].split()[0]}:vera", TEXT, "\n\n".join(pages[i]).encode()),
            "keep",
            "real",
            "en",
        )
        for i in picked
    ]


def _source_files(
    base: Path, pattern: str, limit: int | None, seed: str, mime: str, url_for: Callable[[Path], str]
) -> list[Path]:
    paths = sorted(p for p in base.rglob(pattern) if p.is_file() and not p.is_symlink() and p.stat().st_size > 0)
    if limit is not None and len(paths) > limit:
        paths = sorted(random.Random(seed).sample(paths, limit))
    return paths


def _bash_completion(package: str, root: Path) -> list[Labelled]:
    base = root / "usr/share/bash-completion/completions"
    paths = _source_files(base, "*", 120, package, SHELL, str)
    return [
        Labelled(
            Document(f"https://github.com/scop/bash-completion/blob/2.11/completions/{p.name}", SHELL, p.read_bytes()),
            "keep",
            "real",
            "code",
        )
        for p in paths
    ]


def _docutils(package: str, root: Path) -> list[Labelled]:
    base = next((root / "usr/lib/python3/dist-packages").glob("docutils"))
    paths = _source_files(base, "*.py", 120, package, PYTHON, str)
    url = "https://sourceforge.net/p/docutils/code/HEAD/tree/trunk/docutils/docutils/"
    return [
        Labelled(Document(url + p.relative_to(base).as_posix(), PYTHON, p.read_bytes()), "keep", "real", "code")
        for p in paths
    ]


def _jquery_ui(package: str, root: Path) -> list[Labelled]:
    base = root / "usr/share/javascript/jquery-ui"
    docs = []
    for p in _source_files(base, "*.js", None, package, JAVASCRIPT, str):
        minified = p.name.endswith(".min.js")
        url = f"https://code.jquery.com/ui/1.13.2/{p.relative_to(base).as_posix()}"
        docs.append(
            Labelled(
                Document(url, JAVASCRIPT, p.read_bytes()),
                "drop" if minified else "keep",
                "minified" if minified else "real",
                "code",
            )  # fmt: skip
        )
    return docs


REAL_SOURCES: dict[str, Callable[[str, Path], list[Labelled]]] = {
    **{f"aptitude-doc-{lang}": _aptitude for lang in ("en", "cs", "es", "fi", "fr", "it", "ja", "nl", "ru")},
    "developers-reference": _developers_reference,
    **{f"developers-reference-{lang}": _developers_reference for lang in ("de", "fr", "it", "ja", "ru")},
    "harden-doc": _harden_doc,
    "apt-doc": _apt_doc,
    "debian-policy": _debian_policy,
    "libreoffice-help-zh-cn": _libreoffice_help,
    "libreoffice-help-ko": _libreoffice_help,
    "lilypond-doc-html-zh": _lilypond_zh,
    "doc-debian": _doc_debian,
    "base-files": _licenses,
    "emacs-common": _emacs_tutorials,
    "git-doc": _git_doc,
    "dict-vera": _vera,
    "bash-completion": _bash_completion,
    "python3-docutils": _docutils,
    "libjs-jquery-ui": _jquery_ui,
}
# Packages that must never feed this set: the demo's, and the independent check set's.
EXCLUDED_PACKAGES = re.compile(
    r"^(debian-reference|debian-faq|installation-guide|fortunes|maint-guide|debian-history|vim|jargon|manpages)"
)
