"""HTML pages: the main text (datatrove's Trafilatura, ``EXTRACTOR``) and what the markup says about the page
(``markup_hints``, kept in ``metadata["markup"]`` before extraction throws the markup away)."""

from __future__ import annotations

import re

EXTRACTOR = "datatrove.Trafilatura(favour_precision=True, deduplicate=False)"


# What a page's markup says about its kind, recorded at ingest (before extraction throws the markup away) as
# ``metadata["markup"]``; the quality stage reads it to choose a document's profile (pipelines/quality_profiles.py).
_GENERATOR = re.compile(
    r"""<meta\s[^>]*?(?:name\s*=\s*["']generator["'][^>]*?content\s*=\s*["']([^"'>]*)"""
    r"""|content\s*=\s*["']([^"'>]*)["'][^>]*?name\s*=\s*["']generator["'])""",
    re.IGNORECASE,
)
_CODE_MARKUP = re.compile(
    r"<(?:pre|code|kbd|tt|samp)[\s>]"
    r"""|\sclass\s*=\s*["'][^"']*\b(?:command|option|filename|screen|programlisting|userinput|computeroutput)\b""",
    re.IGNORECASE,
)
_DOC_MIME_TYPES = ("markdown", "x-rst", "troff", "texinfo", "docbook", "x-tex", "asciidoc")
MARKUP_SCAN_CHARS = 200_000


def markup_hints(content_type: str, html: str | None) -> dict:
    """``generator`` (<meta name="generator">), ``code_tags`` (code/command elements and DocBook classes) of an
    HTML page, and ``mime`` for documentation formats; empty when there is nothing to say."""
    hints: dict = {}
    mime = content_type.split(";")[0].strip().lower()
    if any(kind in mime for kind in _DOC_MIME_TYPES):
        hints["mime"] = mime
    if html:
        head = html[:MARKUP_SCAN_CHARS]
        match = _GENERATOR.search(head)
        if match:
            hints["generator"] = (match.group(1) or match.group(2) or "").strip()[:200]
        code_tags = sum(1 for _ in _CODE_MARKUP.finditer(head))
        if code_tags:
            hints["code_tags"] = code_tags
    return hints


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
