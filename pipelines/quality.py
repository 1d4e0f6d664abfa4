"""Stage 3, quality filters by domain profile: web prose, technical documentation, code, CJK text.

    python -m pipelines.quality --input data/langid --output data/quality [--profile auto|web|docs|cjk]

Every document gets a profile (``detect_profile``), recorded in its ``metadata`` as ``quality_profile`` with the
signal that chose it (``quality_evidence``); ``domain`` stays ``web``/``code`` for the mixture buckets. Each
profile names its rules and thresholds, with the source of every value, in ``pipelines/profiles/<name>.toml``:

* ``code`` (ingest said ``domain == code``): StarCoder / The Stack rules (``CodeQualityFilter``).
* ``cjk`` (language written in ideographs, kana, Hangul, or without spaces): the clear-junk rules below, lengths
  and lines measured in characters.
* ``docs`` (manuals, tutorials, reference pages, glossaries): ingest's markup hints (a documentation generator,
  code/command markup: ``metadata.markup``), the URL (``/doc/``, ``/manual/``, ``docs.`` hosts ...), the source
  name, or a cheap content test (share of command-like lines, ``--option``/path/key syntax). The clear-junk rules.
* ``web``, everything else: today's chain, unchanged. datatrove's filters in FineWeb's order (Penedo et al. 2024):

  1. ``GopherRepetitionFilter`` - Rae et al. 2021 (Gopher), Table A1: duplicate lines/paragraphs, top and
     duplicated n-grams.
  2. ``GopherQualityFilter``    - Gopher: document length, mean word length, symbol ratio, bullets, ellipses,
     alphabetic words, stop words.
  3. ``C4QualityFilter``        - Raffel et al. 2020 (C4): javascript/policy lines, lorem ipsum, curly brackets,
     too few sentences; with ``filter_no_terminal_punct=False`` as FineWeb used it. As in datatrove, it removes
     the lines it rejects from the text it keeps.
  4. ``FineWebQualityFilter``   - FineWeb: share of lines ending in punctuation, short lines, duplicated chars,
     newline ratio.

  Thresholds are the papers' (datatrove's defaults) for English and FineWeb-2's per-language values elsewhere,
  as data in ``pipelines/thresholds/web_quality.toml`` (each value with its source; ``pipelines.lang_config``
  loads it); scripts without spaces are split into characters (``ScriptAwareTokenizer``).

The clear-junk rules (``JunkFilter``, profiles ``docs`` and ``cjk``) drop boilerplate, cookie banners, menus,
keyword lists, repeated lines, encoding garbage, scrambled text and very short fragments, with three measures of
the web chain fixed: the alphabetic-word share counts word tokens only (not ``|``, ``--`` or ``(``), the
curly-bracket rule counts only braces next to code, and the top-2-gram share counts word bigrams seen 4 or more
times. They do not judge the middle: the model-based quality score does (``synth.labels`` tiers). A document
those profiles keep but the web chain would have dropped carries the failed rules in ``metadata.quality_flags``;
the tier pass counts how many of them the classifier rates highly. The flags come from the web chain's filters and
thresholds with the dependency-free word tokenizer, so only documents that take the web profile pay for spaCy
(each language's pipeline is built on its first document, per worker).

``--profile web`` puts every non-code document on the web profile: exactly the chain before profiles existed.
The stage's config holds every value that changes its output (the threshold table's and the profiles' values, the
filter libraries' versions, ``QUALITY_CODE_VERSION``), so editing a threshold starts the stage afresh.
Every drop is counted by ``<filter>/<reason>`` (web) or ``<profile>/<rule>`` and the document is kept in
``excluded/`` for audit.
"""

from __future__ import annotations

import json
import random
import re
import tomllib
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import regex
from datatrove.data import Document
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.filters.c4_filters import CITATION_REGEX, ELLIPSIS, END_PUNCTUATION, POLICY_SUBSTRINGS
from datatrove.utils.text import split_into_sentences, split_into_words
from datatrove.utils.word_tokenizers import SpaCyTokenizer, WordTokenizer, load_word_tokenizer

from pipelines.beam_stage import (
    DocumentProcessor,
    cli,
    parse_stage_args,
    print_summary,
    run_shard_stage,
    stage_arg_parser,
)
from pipelines.curation_settings import QualitySettings
from pipelines.lang_config import WEB_QUALITY_TABLE, ThresholdTable, load_threshold_table

CHARACTER_SCRIPT_LANGUAGES = {"zh", "ja", "th", "lo", "km", "my", "bo", "yue", "wuu"}
# Part of the stage's config: raise it when a change to this file changes which documents are kept or their text.
QUALITY_CODE_VERSION = 1
# Libraries whose code decides verdicts (the web chain's filters and tokenizers, the mojibake measure): their
# versions are part of the stage's config.
FILTER_LIBRARIES = ("datatrove", "spacy", "ftfy")

# One token per ideograph/kana/Thai-script character; runs of letters, marks and digits elsewhere;
# every other non-space character (punctuation, symbols) on its own.
_TOKEN = regex.compile(
    r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\p{Tibetan}]"
    r"|[\p{L}\p{M}\p{N}_]+(?:['’\-][\p{L}\p{M}\p{N}_]+)*"
    r"|[^\s\p{L}\p{M}\p{N}]"
)
_SENTENCE_END = regex.compile(r"[.!?。！？…]+[\"'”’)\]]*\s*|\n+")


class ScriptAwareTokenizer(WordTokenizer):
    """A dependency-free datatrove WordTokenizer that splits CJK/Thai-script text into characters."""

    def word_tokenize(self, text: str) -> list[str]:
        return _TOKEN.findall(text)

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        spans, start = [], 0
        for m in _SENTENCE_END.finditer(text):
            if m.end() > start and text[start : m.end()].strip():
                spans.append((start, m.end()))
            start = m.end()
        if text[start:].strip():
            spans.append((start, len(text)))
        return spans or [(0, len(text))]

    def sent_tokenize(self, text: str) -> list[str]:
        return [s for s in (text[a:b].strip() for a, b in self.span_tokenize(text)) if s]


class FastSpacyTokenizer(WordTokenizer):
    """datatrove's ``SpaCyTokenizer`` with the same tokens and sentences, several times faster.

    datatrove runs the whole spaCy pipeline (sentencizer included) for every word split and opens a
    memory zone per call, so every call rebuilds the lexemes of its words. Here words come from the
    tokenizer alone, sentences from tokenizer + sentencizer, lexical attributes (unused by the filters)
    are not computed, and spaCy's string cache is kept between documents, rebuilt past ``max_lexemes``
    so memory stays bounded.
    """

    def __init__(self, inner, max_lexemes: int = 300_000):
        super().__init__(inner.language)
        self.inner = inner
        self.max_lexemes = max_lexemes
        self._nlp = None

    @property
    def nlp(self):
        if self._nlp is None or len(self._nlp.vocab) > self.max_lexemes:
            self.inner._tokenizer = None  # a fresh pipeline, exactly as datatrove builds it
            self._nlp = self.inner.tokenizer
            self._nlp.vocab.lex_attr_getters = {}
        return self._nlp

    def _doc(self, text: str, sentences: bool = False):
        nlp = self.nlp
        nlp.max_length = len(text) + 10
        if "IS_ALPHA" in text:  # the string that breaks spaCy's tokenizer; datatrove drops it too
            text = text.replace("IS_ALPHA", "")
        doc = nlp.tokenizer(text)
        return nlp.get_pipe("sentencizer")(doc) if sentences else doc

    def word_tokenize(self, text: str) -> list[str]:
        return [t for t in (token.text.strip() for token in self._doc(text)) if t]

    def sent_tokenize(self, text: str) -> list[str]:
        return [s for s in (sent.text.strip() for sent in self._doc(text, sentences=True).sents) if s]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [(sent.start_char, sent.end_char) for sent in self._doc(text, sentences=True).sents]


def word_tokenizer_for(lang: str):
    """datatrove's tokenizer for the language when it loads here (spaCy for most, made faster by
    FastSpacyTokenizer), else ScriptAwareTokenizer. Scripts without spaces always get ScriptAwareTokenizer."""
    if lang in CHARACTER_SCRIPT_LANGUAGES:
        return ScriptAwareTokenizer(lang)
    try:
        tokenizer = load_word_tokenizer(lang)
        if isinstance(tokenizer, SpaCyTokenizer):
            tokenizer = FastSpacyTokenizer(tokenizer)
        tokenizer.word_tokenize("Probe text. Second sentence.")  # imports the backend now, not per document
        tokenizer.span_tokenize("Probe text. Second sentence.")
        return tokenizer
    except Exception:  # no tokenizer assigned, or its backend (spaCy model deps, kiwi, pyvi ...) is missing
        return ScriptAwareTokenizer(lang)


class FastC4QualityFilter(C4QualityFilter):
    """datatrove's C4QualityFilter with identical decisions and output text; it stops splitting lines
    into sentences once ``min_num_sentences`` is reached (the count is only compared to it), which was
    a third of the filter chain's time."""

    def filter(self, doc) -> bool | tuple[bool, str]:
        lines = doc.text.splitlines() if self.split_paragraph else split_into_sentences(doc.text, self.language)
        num_sentences = 0
        kept_lines = []
        for line in lines:
            line = line.strip()
            words = line.split()
            if self.max_word_length != -1 and any(len(word) > self.max_word_length for word in words):
                continue
            if self.remove_citations:
                line = CITATION_REGEX.sub("", line)
            if self.filter_no_terminal_punct and (not line.endswith(END_PUNCTUATION) or line.endswith(ELLIPSIS)):
                continue
            if len(words) < self.min_words_per_line:
                continue
            line_l = line.lower()
            if self.filter_lorem_ipsum and "lorem ipsum" in line_l:
                return False, "lorem_ipsum"
            if self.filter_javascript and "javascript" in line_l:
                continue
            if self.filter_curly_bracket and "{" in line:
                return False, "curly_bracket"
            if self.filter_policy and any(p in line_l for p in POLICY_SUBSTRINGS):
                continue
            if self.min_num_sentences != -1 and num_sentences < self.min_num_sentences:
                num_sentences += len(split_into_sentences(line, self.language)) if self.split_paragraph else 1
            kept_lines.append(line)
        if num_sentences < self.min_num_sentences:
            return False, "too_few_sentences"
        doc.text = ("\n" if self.split_paragraph else " ").join(kept_lines).strip()
        return True


class CodeQualityFilter:
    """Rules for source files from StarCoder (Li et al. 2023) / The Stack: drop minified, generated
    or data-like files. Returns ``(keep, reason)``."""

    def __init__(self, max_line_length: int, max_avg_line_length: float, min_alphanum_fraction: float, min_lines: int):
        # The values are the code profile's (pipelines/profiles/code.toml), each with its source.
        self.max_line_length = max_line_length
        self.max_avg_line_length = max_avg_line_length
        self.min_alphanum_fraction = min_alphanum_fraction
        self.min_lines = min_lines

    def filter(self, text: str) -> tuple[bool, str | None]:
        lines = text.splitlines()
        if len(lines) < self.min_lines:
            return False, "too_few_lines"
        if max(len(line) for line in lines) > self.max_line_length:
            return False, "long_line"
        if sum(len(line) for line in lines) / len(lines) > self.max_avg_line_length:
            return False, "avg_line_length"
        if sum(c.isalnum() for c in text) / len(text) < self.min_alphanum_fraction:
            return False, "alphanum_fraction"
        head = text[:2000].lower()
        if "auto-generated" in head or "autogenerated" in head or "do not edit" in head:
            return False, "autogenerated"
        return True, None


class CachedScriptAwareTokenizer(ScriptAwareTokenizer):
    """ScriptAwareTokenizer that remembers the last text's words: the four filters of a chain split the same text."""

    def __init__(self, language: str):
        super().__init__(language)
        self._last: tuple[str, list[str]] | None = None

    def word_tokenize(self, text: str) -> list[str]:
        if self._last is None or self._last[0] is not text:
            self._last = (text, super().word_tokenize(text))
        return list(self._last[1])


class FastGopherRepetitionFilter(GopherRepetitionFilter):
    """GopherRepetitionFilter, faster: n-grams as tuples (no string joins) and a stop as soon as a share is over
    its limit. Words never contain spaces, so the top n-grams are the same; the duplicated n-grams are compared as
    tuples where datatrove compares them joined without a separator, so they can differ when two different n-grams
    join to the same string. Used for flags only; the web profile runs datatrove's own filter."""

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text = doc.text
        if not text:
            return False, "empty"
        paragraphs = self.paragraph_exp.split(text.strip())
        seen, dup, dup_chars = set(), 0, 0
        for p in paragraphs:
            if p in seen:
                dup += 1
                dup_chars += len(p)
            else:
                seen.add(p)
        if self.dup_para_frac and dup / len(paragraphs) > self.dup_para_frac:
            return False, "dup_para_frac"
        if self.dup_para_char_frac and dup_chars / len(text) > self.dup_para_char_frac:
            return False, "dup_para_char_frac"
        lines = self._line_splitter.split(text)
        seen, dup, dup_chars = set(), 0, 0
        for line in lines:
            if line in seen:
                dup += 1
                dup_chars += len(line)
            else:
                seen.add(line)
        if self.dup_line_frac and dup / len(lines) > self.dup_line_frac:
            return False, "dup_line_frac"
        if self.dup_line_char_frac and dup_chars / len(text) > self.dup_line_char_frac:
            return False, "dup_line_char_frac"
        words = split_into_words(text, self.language)
        prefix = [0]
        for w in words:
            prefix.append(prefix[-1] + len(w))
        for n, n_frac in self.top_n_grams:
            if len(words) < n:
                continue
            (gram, count), *_ = Counter(zip(*(words[i:] for i in range(n)))).most_common(1)
            if (sum(map(len, gram)) + n - 1) * count / len(text) > n_frac:
                return False, f"top_{n}_gram"
        for n, n_frac in self.dup_n_grams:
            grams = list(zip(*(words[i:] for i in range(n))))
            limit = n_frac * len(text)
            # every repeat counted at most once: if even that stays under the limit, the greedy scan does too
            repeats = [(gram, count) for gram, count in Counter(grams).items() if count > 1]
            if sum((count - 1) * sum(map(len, gram)) for gram, count in repeats) <= limit:
                continue
            seen, repeated, idx = set(), 0, 0
            while idx < len(grams):
                gram = grams[idx]
                if gram in seen:
                    repeated += prefix[idx + n] - prefix[idx]
                    if repeated > limit:
                        return False, f"duplicated_{n}_n_grams"
                    idx += n
                else:
                    seen.add(gram)
                    idx += 1
        return True


def build_filter_chain(
    lang: str,
    tokenizer: WordTokenizer | None = None,
    thresholds: ThresholdTable | None = None,
    rules: dict | None = None,
) -> list[tuple[str, object]]:
    """The four datatrove filters configured for one language, in FineWeb's order (the web profile).

    ``tokenizer`` replaces the language's own (spaCy for most) where exact web verdicts are not needed.
    ``thresholds`` is the per-language table (default: ``web_quality.toml`` as ``load_threshold_table`` finds it),
    ``rules`` the web profile's rules (default: ``pipelines/profiles/web.toml``)."""

    cfg = (thresholds or load_threshold_table(WEB_QUALITY_TABLE)).section(lang)
    rules = rules if rules is not None else load_profiles()["web"].rules
    tokenizer = tokenizer or word_tokenizer_for(lang)
    char_words = lang in CHARACTER_SCRIPT_LANGUAGES
    return [
        (
            "gopher_repetition",
            GopherRepetitionFilter(
                dup_line_frac=cfg["dup_line_frac"],
                top_n_grams=cfg["top_n_grams"],
                dup_n_grams=cfg["dup_n_grams"],
                language=tokenizer,
            ),
        ),
        (
            "gopher_quality",
            GopherQualityFilter(
                # words of one character each: a mean above 1 cannot be asked of them
                min_avg_word_length=min(cfg["min_avg_word_length"], 1) if char_words else cfg["min_avg_word_length"],
                max_avg_word_length=cfg["max_avg_word_length"],
                max_non_alpha_words_ratio=cfg["max_non_alpha_words_ratio"],
                stop_words=list(cfg["stopwords"]),
                language=tokenizer,
            ),
        ),
        (
            "c4",
            FastC4QualityFilter(
                filter_no_terminal_punct=rules["c4_filter_no_terminal_punct"],
                min_words_per_line=-1 if char_words else rules["c4_min_words_per_line"],  # -1: off
                language=tokenizer,
            ),
        ),
        (
            "fineweb",
            FineWebQualityFilter(
                line_punct_thr=cfg["line_punct_thr"],
                new_line_ratio=cfg["new_line_ratio"],
                short_line_length=rules["fineweb_short_line_chars_cjk" if char_words else "fineweb_short_line_chars"],
                language=tokenizer,
            ),
        ),
    ]


# ------------------------------------------------------------------------------------------------------ profiles

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


def _values(table: dict) -> tuple[dict, dict]:
    values, sources = {}, {}
    for key, entry in table.items():
        if isinstance(entry, dict) and "value" in entry:
            values[key], sources[key] = entry["value"], entry.get("source", "")
        else:
            values[key] = entry
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
        own_rules, own_sources = _values(data.get("rules", {}))
        rules.update(own_rules)
        sources.update(own_sources)
        detect, _ = _values(data.get("detect", {}))
        heuristics = data.get("heuristics")
        if heuristics not in ("web_chain", "junk", "code"):
            raise ValueError(f"{folder / name}.toml: heuristics must be web_chain, junk or code, got {heuristics!r}")
        profiles[name] = Profile(name, data.get("description", ""), heuristics, bool(data.get("flags")), rules,
                                 sources, detect)  # fmt: skip
    for name, profile in profiles.items():
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
)
_WORDLIKE = regex.compile(r"\S+")


def content_signals(text: str) -> tuple[float, float]:
    """(share of command-like lines, technical tokens per 100 words): the docs profile's content test."""
    sample = text[:20_000]
    lines = sum(1 for line in sample.splitlines() if line.strip())
    words = len(_WORDLIKE.findall(sample))
    if not lines or not words:
        return 0.0, 0.0
    return len(_COMMAND_LINE.findall(sample)) / lines, 100 * len(_TECHNICAL_TOKEN.findall(sample)) / words


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
        command_lines, technical = content_signals(doc.get("text") or "")
        if command_lines >= self.min_command_lines or technical >= self.min_technical:
            return "docs", "content"
        return "web", "default"


# ---------------------------------------------------------------------------------------------- clear-junk rules

JUNK_RULES = (
    "min_letters",
    "max_dup_line_frac",
    "max_dup_line_char_frac",
    "max_replacement_char_frac",
    "max_control_char_frac",
    "max_mojibake_per_1000_chars",
    "min_alpha_word_frac",
    "boilerplate_phrases",
    "min_furniture_items",
    "max_furniture_item_frac",
    "max_furniture_word_frac",
    "min_nav_items",
    "max_nav_word_frac",
    "min_type_token_ratio",
    "max_type_token_ratio",
    "min_type_token_ratio_ideographic",
    "max_type_token_ratio_ideographic",
    "max_top_bigram_char_frac",
    "max_code_brace_line_frac",
    "lorem_ipsum",
    "max_lower_after_period",
    "min_word_order_gain",
    "min_word_order_gain_ideographic",
)
_CJK_CHARS = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\p{Tibetan}"
_CJK = regex.compile(f"[{_CJK_CHARS}]")
# Word tokens: one per ideograph/kana/Thai-script character, else runs of letters/digits (``3.14``, ``don't``,
# ``apt-get`` are one word); punctuation and symbols are not words.
_WORD = regex.compile(
    r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\p{Tibetan}]"
    r"|[\p{L}\p{M}\p{N}_]+(?:['’\-.][\p{L}\p{M}\p{N}_]+)*"
)
_LETTER = regex.compile(r"\p{L}")
_ASCII_LETTER = regex.compile(r"[A-Za-z]")
# Whitespace-separated tokens holding a letter or digit are words; "|", "--", "(", "->" are not.
_ALNUM_TOKEN = regex.compile(r"[^\s\p{L}\p{N}]*[\p{L}\p{N}]\S*")
_LETTER_TOKEN = regex.compile(r"[^\s\p{L}]*\p{L}\S*")
_LETTER_WORD = regex.compile(r"[\p{L}\p{M}\p{N}_]*\p{L}[\p{L}\p{M}\p{N}_]*")
MAX_JUNK_CHARS = 50_000  # the clear-junk rules look at a document's first 50,000 characters
_TTR_RUN = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}]+|[\p{L}\p{N}_]+(?:['’\-.][\p{L}\p{N}_]+)*")
_IDEOGRAPHIC = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}]")


def _ttr_tokens(text: str, limit: int = 400) -> tuple[list[str], bool]:
    """Vocabulary tokens for type/token ratios: lowercased words with a letter, and in runs of ideographs/kana,
    overlapping character bigrams (words are not delimited; repeated bigrams are repeated words). When bigrams are
    the majority the text is "ideographic": only the bigrams are returned (Latin words in CJK pages are mostly
    command names repeated down a table) and its rules are the ``*_ideographic`` ones."""
    words: list[str] = []
    bigrams: list[str] = []
    for match in _TTR_RUN.finditer(text):
        run = match.group()
        if _IDEOGRAPHIC.match(run):
            bigrams += [run[i : i + 2] for i in range(max(1, len(run) - 1))]
        elif _LETTER.search(run):
            words.append(run.lower())
        if len(words) + len(bigrams) >= limit:
            break
    ideographic = len(bigrams) >= len(words) and bigrams
    return (bigrams if ideographic else words + bigrams), bool(ideographic)


_ITEM_SPLIT = regex.compile(r"\s+[|·•»>\-–]\s+|[\n,;、，；]")
_SENTENCE_END_CHARS = (".", "!", "?", ":", "。", "！", "？", "：")
# A line where a brace sits next to code: JavaScript that leaked into a page's text (C4's target). A line that
# opens a block ("... {"), only closes one ("}", "});"), or holds function(, var x =, => {, document., window.;
# not a brace of markup or an example ("{term}", "${HOME}", "{1,2}").
_CODE_BRACE = regex.compile(
    r"^.*(?:\{[ \t]*$|^[ \t]*\}[ \t\);,]*$|\bfunction\s*\w*\s*\(|\bvar\s+\w+\s*=|=>\s*\{|\}\s*\)\s*;"
    r"|\b(?:document|window)\.\w+).*$",
    regex.MULTILINE,
)
_MOJIBAKE_SAMPLE = 5_000
# C0 and C1 control characters other than tab, line breaks and form feed: terminal colour codes, binary data.
_CONTROL_CHAR = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")


_ORDER_TOKEN = regex.compile(rf"[{_CJK_CHARS}]|[^\s{_CJK_CHARS}]+")


def word_order_gain(text: str, max_chars: int = 6_000) -> float:
    """How much of the text's compressibility comes from its order: zlib size with the tokens (words; ideographs
    one by one) shuffled by a fixed seed, over the size as written, minus 1. Real text repeats phrases and loses
    them when shuffled (> 0); word salad and scrambled text have no order to lose (~0)."""
    tokens = _ORDER_TOKEN.findall(text[:max_chars])
    if len(tokens) < 2:
        return 0.0
    as_written = " ".join(tokens).encode()
    shuffled = tokens[:]
    random.Random(len(tokens)).shuffle(shuffled)
    return len(zlib.compress(" ".join(shuffled).encode(), 6)) / len(zlib.compress(as_written, 6)) - 1


_AFTER_PERIOD = regex.compile(r"(?<!\S)\S{3,}\.[ \t]+(\p{L})")


def lower_after_period(text: str) -> tuple[int, int]:
    """(words of 4+ characters ending in '.' followed on the same line by a word, how many start lowercase)."""
    initials = _AFTER_PERIOD.findall(text)
    return len(initials), sum(1 for c in initials if c.islower())


@dataclass
class JunkFilter:
    """The clear-junk rules of the ``docs`` and ``cjk`` profiles, thresholds from the profile's data file."""

    rules: dict
    cjk: bool = False

    def __post_init__(self):
        self._phrases = sorted({p.lower() for p in self.rules["boilerplate_phrases"]}, key=len, reverse=True)
        # a phrase that starts with a letter or digit must start a word: "cookie" is not in "syncookies"
        patterns = [(r"(?<!\w)" if p[:1].isalnum() else "") + re.escape(p) for p in self._phrases]
        self._boilerplate = re.compile("|".join(patterns)) if patterns else None

    def letters(self, text: str) -> int:
        """Letters, an ideograph/kana/Hangul syllable counting 2 (it carries about what a short word does)."""
        return len(_LETTER.findall(text)) + len(_CJK.findall(text))

    def filter(self, text: str) -> str | None:
        """None if the document is not clear junk, else the rule it fails. Looks at the first ``MAX_JUNK_CHARS``."""
        r = self.rules
        if self.letters(text[: 4 * r["min_letters"] + 1000]) < r["min_letters"]:
            return "too_short"
        text = text[:MAX_JUNK_CHARS]
        if text.count("\ufffd") > r["max_replacement_char_frac"] * len(text):
            return "encoding_garbage"
        if len(_CONTROL_CHAR.findall(text)) > r["max_control_char_frac"] * len(text):
            return "control_characters"
        if r["max_mojibake_per_1000_chars"] is not None:
            from ftfy.badness import badness

            sample = text[:_MOJIBAKE_SAMPLE]
            if badness(sample) > r["max_mojibake_per_1000_chars"] * len(sample) / 1000:
                return "encoding_garbage"
        lowered = text.lower()
        if r["lorem_ipsum"] and "lorem ipsum" in lowered:
            return "lorem_ipsum"
        lines = [line.strip() for line in text.splitlines()]
        # lines with a letter (a non-ASCII line is taken to have one: the check stays cheap)
        lettered = [line for line in lines if line and (not line.isascii() or _ASCII_LETTER.search(line))]
        if lettered:
            counts = Counter(lettered)
            if len(lettered) - len(counts) > r["max_dup_line_frac"] * len(lettered):
                return "repeated_lines"
            repeated_chars = sum((n - 1) * len(line) for line, n in counts.items() if n > 1)
            if repeated_chars > r["max_dup_line_char_frac"] * len(text):
                return "repeated_lines"
        word_tokens = len(_ALNUM_TOKEN.findall(text))
        if word_tokens and len(_LETTER_TOKEN.findall(text)) < r["min_alpha_word_frac"] * word_tokens:
            return "not_alphabetic"
        items = [item for item in (i.strip() for i in _ITEM_SPLIT.split(text)) if item]
        has_cjk = _CJK.search(text) is not None
        units = [self._units(item) for item in items] if has_cjk else [len(item.split()) for item in items]
        total_units = sum(units)
        short_units = sum(u for u in units if u <= 3)
        furniture = 0
        if self._phrases and sum(map(lowered.count, self._phrases)) >= r["min_furniture_items"]:
            furniture_units = 0
            for item, n in zip(items, units):
                if self._boilerplate.search(item.lower()):
                    furniture += 1
                    furniture_units += n
                    short_units -= n if n <= 3 else 0
            if furniture >= r["min_furniture_items"]:
                if furniture > r["max_furniture_item_frac"] * len(items):
                    return "boilerplate"
                if furniture_units + short_units > r["max_furniture_word_frac"] * total_units:
                    return "boilerplate"
        if len(items) - furniture >= r["min_nav_items"] and short_units > r["max_nav_word_frac"] * total_units:
            return "navigation"
        vocabulary, ideographic = _ttr_tokens(text)
        suffix = "_ideographic" if ideographic else ""
        for n, low in r["min_type_token_ratio" + suffix]:
            if len(vocabulary) >= n and len(set(vocabulary[:n])) < low * n:
                return "keyword_list"
        for n, high in r["max_type_token_ratio" + suffix]:
            if len(vocabulary) >= n and len(set(vocabulary[:n])) > high * n:
                return "word_salad"
        words = _LETTER_WORD.findall(lowered)
        if len(words) >= 8:
            (a, b), n = Counter(zip(words, words[1:])).most_common(1)[0]
            if n >= 4 and n * (len(a) + len(b) + 1) > r["max_top_bigram_char_frac"] * len(text):
                return "keyword_repetition"
        if "{" in text:
            code_lines = len(_CODE_BRACE.findall(text))
            if code_lines > r["max_code_brace_line_frac"] * sum(1 for line in lines if line):
                return "javascript"
        total, lower = lower_after_period(text)
        if not ideographic and total >= 5 and lower > r["max_lower_after_period"] * total:
            return "scrambled"
        bands = [(chars, gain) for chars, gain in r["min_word_order_gain" + suffix] if len(text) >= chars]
        if bands and word_order_gain(text) < bands[-1][1]:
            return "word_salad"
        return None

    def _units(self, item: str) -> float:
        """Words of a line, two ideographs/kana counting one."""
        cjk = len(_CJK.findall(item))
        if not cjk:
            return len(item.split())
        return cjk / 2 + len(_WORD.findall(_CJK.sub(" ", item)))


# ----------------------------------------------------------------------------------------------------- the stage


def _installed_version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:  # spaCy is optional: without it the tokenizers fall back (word_tokenizer_for)
        return None


def _metadata(doc: dict) -> dict:
    raw = doc.get("metadata")
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {"original_metadata": raw}
    return value if isinstance(value, dict) else {"original_metadata": value}


class QualityFilter(DocumentProcessor):
    stage = "quality"

    def __init__(
        self,
        code_filter: bool = True,
        profile: str = "auto",
        profiles_dir: str | None = None,
        thresholds_dir: str | None = None,
    ):
        """``profiles_dir``/``thresholds_dir``: folders in place of the packaged ``pipelines/profiles`` and
        ``pipelines/thresholds`` (the latter also from ``$QWEN2_THRESHOLDS_DIR``)."""
        if profile not in PROFILE_MODES:
            raise ValueError(f"profile must be one of {', '.join(PROFILE_MODES)}, got {profile!r}")
        self.code_filter = code_filter
        self.profile = profile
        self.profiles = load_profiles(profiles_dir)
        self.thresholds = load_threshold_table(WEB_QUALITY_TABLE, thresholds_dir)
        self.detector = ProfileDetector(self.profiles)
        code = self.profiles["code"].rules
        self._code = CodeQualityFilter(
            code["max_line_length"], code["max_avg_line_length"], code["min_alphanum_fraction"], code["min_lines"]
        )
        self._junk = {
            name: JunkFilter(p.rules, cjk=name == "cjk") for name, p in self.profiles.items() if p.heuristics == "junk"
        }
        self._chains: dict[str, list[tuple[str, object]]] = {}
        self._flag_chains: dict[str, list[tuple[str, object]]] = {}

    def config(self) -> dict:
        """Every value that changes the output; a change to any starts the stage afresh and the log names it
        (``processor.thresholds.de.dup_line_frac``, ``processor.profiles.docs.rules.min_letters``)."""
        return {
            "code_version": QUALITY_CODE_VERSION,
            "libraries": {name: _installed_version(name) for name in FILTER_LIBRARIES},
            "chain": ["gopher_repetition", "gopher_quality", "c4", "fineweb"],
            "character_script_languages": sorted(CHARACTER_SCRIPT_LANGUAGES),
            "code_filter": self.code_filter,
            "thresholds": self.thresholds.fingerprint(),
            "profile": self.profile,
            "profiles": {
                name: {"heuristics": p.heuristics, "flags": p.flags, "rules": p.rules, "detect": p.detect}
                for name, p in self.profiles.items()
            },
        }

    def chain(self, lang: str) -> list[tuple[str, object]]:
        """The web chain of a language, built on its first document (spaCy pipelines take seconds each)."""
        if lang not in self._chains:
            self._chains[lang] = build_filter_chain(lang, None, self.thresholds, self.profiles["web"].rules)
        return self._chains[lang]

    def flag_chain(self, lang: str) -> list[tuple[str, object]]:
        """The web chain with the dependency-free tokenizer and the faster repetition filter: for flags."""
        if lang not in self._flag_chains:
            tokenizer = CachedScriptAwareTokenizer(lang)
            chain = build_filter_chain(lang, tokenizer, self.thresholds, self.profiles["web"].rules)
            repetition = chain[0][1]
            fast = FastGopherRepetitionFilter(
                dup_line_frac=repetition.dup_line_frac,
                top_n_grams=repetition.top_n_grams,
                dup_n_grams=repetition.dup_n_grams,
                language=repetition.language,
            )
            self._flag_chains[lang] = [("gopher_repetition", fast), *chain[1:]]
        return self._flag_chains[lang]

    def profile_of(self, doc: dict) -> tuple[str, str]:
        if doc.get("domain") == "code":
            return "code", "domain"
        if self.profile != "auto":
            return self.profile, "forced"
        return self.detector.detect(doc)

    def web_verdict(self, doc: dict) -> str | None:
        """Today's chain: None if the document passes, else ``<filter>/<reason>``. May rewrite ``doc["text"]``."""
        dt_doc = Document(text=doc["text"], id=doc["id"], metadata={"language": doc.get("lang") or "en"})
        for name, step in self.chain(doc.get("lang") or "en"):
            result = step.filter(dt_doc)
            keep, reason = result if isinstance(result, tuple) else (result, None)
            if not keep:
                return f"{name}/{reason or 'dropped'}"
        doc["text"] = dt_doc.text
        return None

    def web_flags(self, doc: dict) -> list[str]:
        """Every web-chain filter the text fails, each on the text as it is (nothing is rewritten)."""
        flags = []
        lang = doc.get("lang") or "en"
        for name, step in self.flag_chain(lang):
            result = step.filter(Document(text=doc["text"], id=doc["id"], metadata={"language": lang}))
            keep, reason = result if isinstance(result, tuple) else (result, None)
            if not keep:
                flags.append(f"{name}/{reason or 'dropped'}")
        return flags

    def check(self, doc: dict) -> str | None:
        """None if the document passes, else the drop reason. Records the profile (and flags) in ``metadata``;
        the web profile may rewrite ``doc["text"]`` (C4 removes the lines it rejects)."""
        profile, evidence = self.profile_of(doc)
        meta = _metadata(doc)
        meta.update(quality_profile=profile, quality_evidence=evidence)
        meta.pop("quality_flags", None)
        heuristics = self.profiles[profile].heuristics
        if heuristics == "code":
            reason = None
            if self.code_filter:
                keep, why = self._code.filter(doc["text"])
                reason = None if keep else f"code/{why}"
        elif heuristics == "web_chain":
            reason = self.web_verdict(doc)
        else:
            rule = self._junk[profile].filter(doc["text"])
            reason = None if rule is None else f"{profile}/{rule}"
            if reason is None and self.profiles[profile].flags:
                flags = self.web_flags(doc)
                if flags:
                    meta["quality_flags"] = flags
        doc["metadata"] = json.dumps(meta, ensure_ascii=False)
        return reason

    def process_batch(self, docs: list[dict]) -> Iterator[tuple[dict, str | None]]:
        for doc in docs:
            yield doc, self.check(doc)

    def new_summary(self) -> dict:
        return {"profiles": {}, "profile_evidence": {}, "flagged_docs": {}, "flags": {}}

    def summarize(self, doc: dict, summary: dict) -> None:
        meta = _metadata(doc)
        profile = meta.get("quality_profile", "web")
        summary["profiles"][profile] = summary["profiles"].get(profile, 0) + 1
        evidence = f"{profile}:{meta.get('quality_evidence')}"
        summary["profile_evidence"][evidence] = summary["profile_evidence"].get(evidence, 0) + 1
        if meta.get("quality_flags"):
            summary["flagged_docs"][profile] = summary["flagged_docs"].get(profile, 0) + 1
            for flag in meta["quality_flags"]:
                summary["flags"][flag] = summary["flags"].get(flag, 0) + 1


def run(
    inputs,
    output_dir: str,
    beam_args=None,
    workers: int | None = None,
    settings: QualitySettings | None = None,
    **kwargs,
) -> dict:
    """``settings``: the stage's settings; keywords of the same names (and ``thresholds_dir``) override them."""
    if settings is not None:
        kwargs = {
            "code_filter": settings.code_filter,
            "profile": settings.profile,
            "max_doc_bytes": settings.max_doc_bytes,
            **kwargs,
        }
    processor = QualityFilter(
        code_filter=kwargs.pop("code_filter", True),
        profile=kwargs.pop("profile", "auto"),
        thresholds_dir=kwargs.pop("thresholds_dir", None),
    )
    return run_shard_stage(processor, inputs, output_dir, beam_args, workers, **kwargs)


def main(argv: list[str] | None = None) -> None:
    args, beam_args = parse_stage_args(stage_arg_parser(__doc__.splitlines()[0], QualitySettings), argv)
    print_summary(run(args.input, args.output, beam_args, args.workers, settings=args.settings))


if __name__ == "__main__":
    cli(main)
