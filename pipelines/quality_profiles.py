"""The quality stage's domain profiles: their data files (``pipelines/profiles/<name>.toml``, ``load_profiles``) and
the detector that chooses a document's profile from ingest's markup hints, URL, source, language and a cheap content
test (``ProfileDetector``, ``content_signals``). Used by ``pipelines.quality``.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import regex

from pipelines.junk import JUNK_RULES

PROFILE_DIR = Path(__file__).with_name("profiles")
PROFILE_NAMES = ("web", "docs", "code", "cjk")
PROFILE_MODES = ("auto", "web", "docs", "cjk")


@dataclass(frozen=True)
class Profile:
    """One profile as its data file states it: rule name -> value (each with a ``source`` in the file)."""

    name: str
    description: str
    heuristics: str  # "web_chain", "junk" or "code"
    flags: bool  # record the web chain's failed rules on kept documents
    rules: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)
    detect: dict = field(default_factory=dict)

    def value(self, rule: str):
        return self.rules[rule]


def _values(table: dict, where: str = "", need_source: bool = False) -> tuple[dict, dict]:
    """``need_source``: every entry must be ``{value, source}`` with a source (the rules of a profile)."""
    values, sources = {}, {}
    for key, entry in table.items():
        if isinstance(entry, dict) and "value" in entry:
            values[key], sources[key] = entry["value"], entry.get("source", "")
        else:
            values[key] = entry
        if need_source and not str(sources.get(key, "")).strip():
            raise ValueError(f"{where}: rule {key!r} has no source (write it as {{ value = ..., source = ... }})")
    return values, sources


def load_profiles(folder: str | Path | None = None) -> dict[str, Profile]:
    """The profiles in ``folder`` (default ``pipelines/profiles``); ``extends`` copies another profile's rules."""
    folder = Path(folder or PROFILE_DIR)
    raw = {}
    for name in PROFILE_NAMES:
        path = folder / f"{name}.toml"
        if not path.is_file():
            raise FileNotFoundError(f"quality profile {path} is missing (the package's pipelines/profiles/*.toml)")
        with path.open("rb") as f:
            raw[name] = tomllib.load(f)
    profiles = {}
    for name, data in raw.items():
        rules, sources = _values(raw.get(data.get("extends"), {}).get("rules", {})) if data.get("extends") else ({}, {})
        own_rules, own_sources = _values(data.get("rules", {}), f"{folder / name}.toml", need_source=True)
        rules.update(own_rules)
        sources.update(own_sources)
        detect, _ = _values(data.get("detect", {}))
        heuristics = data.get("heuristics")
        if heuristics not in ("web_chain", "junk", "code"):
            raise ValueError(f"{folder / name}.toml: heuristics must be web_chain, junk or code, got {heuristics!r}")
        profiles[name] = Profile(name, data.get("description", ""), heuristics, bool(data.get("flags")), rules,
                                 sources, detect)  # fmt: skip
    for name, profile in profiles.items():
        clear_junk = profile.rules.get("clear_junk")
        if clear_junk and getattr(profiles.get(clear_junk), "heuristics", None) != "junk":
            raise ValueError(f"{folder / name}.toml: clear_junk names {clear_junk!r}, not a clear-junk profile")
        if profile.heuristics == "junk" and (missing := [r for r in JUNK_RULES if r not in profile.rules]):
            raise ValueError(f"{folder / name}.toml lacks the clear-junk rules {missing}")
    return profiles


_COMMAND_LINE = regex.compile(
    r"^\s*(?:[$#%>]\s+\S|(?:sudo|apt|apt-get|apt-cache|aptitude|dpkg|ls|cd|cp|mv|rm|mkdir|chmod|chown|cat|grep|"
    r"find|git|make|pip3?|python3?|systemctl|service|mount|umount|echo|export|ssh|scp|tar|wget|curl|vim?|nano|"
    r"man|ln|kill|ps|su|passwd|adduser|useradd|modprobe|ip|ifconfig|iptables|debconf|update-\w+|dh_\w+|"
    r"dch|debuild|lintian|gpg|rsync|df|du|chroot|journalctl)\s+[-\w./~$\"'])",
    regex.MULTILINE,
)
_TECHNICAL_TOKEN = regex.compile(
    r"(?<!\S)--?[a-zA-Z][\w-]*|(?<![\w/])(?:/(?:etc|usr|var|home|dev|proc|sys|tmp|opt|boot|lib|bin|sbin|srv)"
    r"(?:/[\w.+-]+)*|~/[\w.+-]+)|\b(?:Ctrl|Alt|Shift|Meta|Esc|Super)[-+]\w+|\b[A-Z]-[a-z]\b|\b\w+\(\)"
    # key names as tutorials write them (<Esc>, <Enter>, CTRL-G, control-x)
    r"|(?i:<(?:esc|escape|enter|return|cr|tab|space|spc|backspace|bs|del|delete|ins|insert|home|end|pageup|pagedown"
    r"|pgup|pgdn|up|down|left|right|f\d{1,2})>|\b(?:ctrl|control)[-+][\w\[\]\\^])"
    # cross-reference markup of reference texts read as plain text ({term}, AsciiDoc <<anchor,label>>, [[term]])
    r"|\{[^{}\n]{1,40}\}|<<[\w.-]+(?:,[^<>\n]{0,60})?>>|\[\[[^\[\]\n]{1,60}\]\]"
)
# Lines that open a definition-list entry. Marked: "term::" (AsciiDoc) or ":term:" (reST field lists, lexicons).
# Laid out: a short unindented headword line over an indented body that starts with a letter or digit (glossaries
# and dictionaries in plain text); layout alone is weaker evidence (a quotation over its indented author line).
_MARKED_DEFINITION = regex.compile(r"^(?:[^\s:][^\n]{0,60}?::[ \t]*$|:[^:\n]{1,60}:(?=\s))", regex.MULTILINE)
_LAID_OUT_DEFINITION = regex.compile(r"^\S[^\n]{0,40}\n[ \t]{2,}[\p{L}\p{N}]", regex.MULTILINE)
_WORDLIKE = regex.compile(r"\S+")


class ContentSignals(NamedTuple):
    command_lines: float  # share of non-empty lines that are a shell prompt or start with a command name
    technical: float  # options, system paths, key names, calls and cross-references per 100 words
    marked_definitions: int  # lines that open a definition-list entry by markup (term::, :term:)
    laid_out_definitions: int  # ... by layout (a headword over an indented body)
    lines: int  # non-empty lines

    @property
    def definition_lines(self) -> float:
        """Share of non-empty lines that open a definition-list entry."""
        return (self.marked_definitions + self.laid_out_definitions) / self.lines if self.lines else 0.0


def content_signals(text: str) -> ContentSignals:
    """The docs profile's cheap content test, measured on the first 20,000 characters."""
    sample = text[:20_000]
    lines = sum(1 for line in sample.splitlines() if line.strip())
    words = len(_WORDLIKE.findall(sample))
    if not lines or not words:
        return ContentSignals(0.0, 0.0, 0, 0, lines)
    return ContentSignals(
        len(_COMMAND_LINE.findall(sample)) / lines,
        100 * len(_TECHNICAL_TOKEN.findall(sample)) / words,
        len(_MARKED_DEFINITION.findall(sample)),
        len(_LAID_OUT_DEFINITION.findall(sample)),
        lines,
    )


def _markup(metadata: str | None) -> dict:
    if not metadata or '"markup"' not in metadata:
        return {}
    try:
        value = json.loads(metadata).get("markup")
    except (ValueError, AttributeError):
        return {}
    return value if isinstance(value, dict) else {}


class ProfileDetector:
    """Chooses a document's profile from what ingest recorded and a cheap look at the text."""

    def __init__(self, profiles: dict[str, Profile]):
        docs, cjk, code = profiles["docs"].detect, profiles["cjk"].detect, profiles["code"].detect
        self.code_domains = set(code.get("domains", ["code"]))
        self.cjk_languages = set(cjk.get("languages", []))
        self.generators = regex.compile(docs["generators"], regex.IGNORECASE)
        self.min_code_tags = docs["min_code_tags"]
        self.mime = regex.compile(docs["mime"])
        self.url = regex.compile(docs["url"])
        self.source = regex.compile(docs["source"])
        self.min_command_lines = docs["min_command_line_share"]
        self.min_technical = docs["min_technical_tokens_per_100_words"]
        self.min_definition_lines = docs["min_definition_line_share"]
        self.min_laid_out = docs["min_laid_out_definitions"]

    def detect(self, doc: dict) -> tuple[str, str]:
        """``(profile, evidence)``; evidence names the signal (``url``, ``markup:generator`` ...)."""
        if doc.get("domain") in self.code_domains:
            return "code", "domain"
        if (doc.get("lang") or "") in self.cjk_languages:
            return "cjk", "lang"
        markup = _markup(doc.get("metadata"))
        if markup.get("generator") and self.generators.search(markup["generator"]):
            return "docs", "markup:generator"
        if markup.get("code_tags", 0) >= self.min_code_tags:
            return "docs", "markup:code_tags"
        if markup.get("mime") and self.mime.search(markup["mime"]):
            return "docs", "markup:mime"
        if doc.get("url") and self.url.search(doc["url"]):
            return "docs", "url"
        if doc.get("source") and self.source.search(doc["source"]):
            return "docs", "source"
        if self.content_says_docs(doc.get("text") or ""):
            return "docs", "content"
        return "web", "default"

    def content_says_docs(self, text: str) -> bool:
        """The cheap content test alone: command lines, technical tokens or a definition list (one marked entry, or
        ``min_laid_out_definitions`` laid out)."""
        signals = content_signals(text)
        is_list = signals.marked_definitions > 0 or signals.laid_out_definitions >= self.min_laid_out
        return (
            signals.command_lines >= self.min_command_lines
            or signals.technical >= self.min_technical
            or (is_list and signals.definition_lines >= self.min_definition_lines)
        )
