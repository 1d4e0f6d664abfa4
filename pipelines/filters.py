"""The quality stage's web chain: datatrove's filters in FineWeb's order with their per-language thresholds
(``build_filter_chain``), word tokenizers for every script (``ScriptAwareTokenizer``, ``word_tokenizer_for``), and
faster versions of datatrove's pieces that decide exactly as datatrove does (``FastSpacyTokenizer``,
``FastC4QualityFilter``, ``FastGopherQualityFilter``, ``FastGopherRepetitionFilter``, ``CachedTokenizer``);
StarCoder's rules for code (``CodeQualityFilter``). Used by ``pipelines.quality``.
"""

from __future__ import annotations

from collections import Counter
from itertools import accumulate

import numpy as np
import regex
from datatrove.data import Document
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.filters.c4_filters import CITATION_REGEX, ELLIPSIS, END_PUNCTUATION, POLICY_SUBSTRINGS
from datatrove.pipeline.filters.gopher_repetition_filter import find_duplicates
from datatrove.utils.text import PUNCTUATION_SET, split_into_sentences, split_into_words
from datatrove.utils.word_tokenizers import SpaCyTokenizer, WordTokenizer, load_word_tokenizer

from pipelines.lang_config import WEB_QUALITY_TABLE, ThresholdTable, load_threshold_table
from pipelines.quality_profiles import load_profiles

CHARACTER_SCRIPT_LANGUAGES = {"zh", "ja", "th", "lo", "km", "my", "bo", "yue", "wuu"}

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


class _StrippedStrings(dict):
    """ORTH id -> the string stripped, filled from a spaCy string store on first use."""

    def __init__(self, strings):
        super().__init__()
        self.strings = strings

    def __missing__(self, orth: int) -> str:
        word = self[orth] = self.strings[orth].strip()
        return word


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
        self._words = None

    @property
    def nlp(self):
        if self._nlp is None or len(self._nlp.vocab) > self.max_lexemes:
            self.inner._tokenizer = None  # a fresh pipeline, exactly as datatrove builds it
            self._nlp = self.inner.tokenizer
            self._nlp.vocab.lex_attr_getters = {}
            self._words = _StrippedStrings(self._nlp.vocab.strings)
            from spacy.attrs import ORTH

            self._orth = ORTH
        return self._nlp

    def _doc(self, text: str, sentences: bool = False):
        nlp = self.nlp
        nlp.max_length = len(text) + 10
        if "IS_ALPHA" in text:  # the string that breaks spaCy's tokenizer; datatrove drops it too
            text = text.replace("IS_ALPHA", "")
        doc = nlp.tokenizer(text)
        return nlp.get_pipe("sentencizer")(doc) if sentences else doc

    def word_tokenize(self, text: str) -> list[str]:
        # each token's text by its ORTH id (one array, no Token objects), stripped once per distinct string
        orths = self._doc(text).to_array(self._orth).tolist()
        return list(filter(None, map(self._words.__getitem__, orths)))

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


class FastGopherQualityFilter(GopherQualityFilter):
    """datatrove's GopherQualityFilter with identical decisions: its two per-word tests (a character outside
    punctuation; an alphabetic character) run once per distinct word, remembered across documents (emptied past
    ``MEMO_SIZE`` words), instead of once per character of every word."""

    MEMO_SIZE = 200_000

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._kinds: dict[str, tuple[bool, bool]] = {}

    def _kind(self, word: str) -> tuple[bool, bool]:
        if len(self._kinds) >= self.MEMO_SIZE:
            self._kinds.clear()
        kind = self._kinds[word] = (not PUNCTUATION_SET.issuperset(word), any(c.isalpha() for c in word))
        return kind

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text = doc.text
        words = split_into_words(text, self.language)
        n_words = len(words)
        n_non_symbol = n_alpha = non_symbol_chars = 0
        kinds = self._kinds
        counts = Counter(words)
        for word, count in counts.items():
            non_symbol, alpha = kinds.get(word) or self._kind(word)
            if non_symbol:
                n_non_symbol += count
                non_symbol_chars += count * len(word)
            if alpha:
                n_alpha += count

        if self.min_doc_words and n_non_symbol < self.min_doc_words:
            return False, "gopher_short_doc"
        if self.max_doc_words and n_non_symbol > self.max_doc_words:
            return False, "gopher_long_doc"
        # np.mean of the word lengths: their exact sum divided by their number (nan for none, as np.mean)
        avg_n_words = non_symbol_chars / n_non_symbol if n_non_symbol else float("nan")
        if self.min_avg_word_length and avg_n_words < self.min_avg_word_length:
            return False, "gopher_below_avg_threshold"
        if self.max_avg_word_length and avg_n_words > self.max_avg_word_length:
            return False, "gopher_above_avg_threshold"
        if self.max_symbol_word_ratio and text.count("#") / n_words > self.max_symbol_word_ratio:
            return False, "gopher_too_many_hashes"
        if self.max_symbol_word_ratio and (text.count("...") + text.count("…")) / n_words > self.max_symbol_word_ratio:
            return False, "gopher_too_many_ellipsis"
        lines = text.splitlines()
        if (
            self.max_bullet_lines_ratio
            and sum(s.lstrip().startswith("•") or s.lstrip().startswith("-") for s in lines) / len(lines)
            > self.max_bullet_lines_ratio
        ):
            return False, "gopher_too_many_bullets"
        if (
            self.max_ellipsis_lines_ratio
            and sum(s.rstrip().endswith("...") or s.rstrip().endswith("…") for s in lines) / len(lines)
            > self.max_ellipsis_lines_ratio
        ):
            return False, "gopher_too_many_end_ellipsis"
        if self.max_non_alpha_words_ratio and n_alpha / n_words < self.max_non_alpha_words_ratio:
            return False, "gopher_below_alpha_threshold"
        if self.min_stop_words and len(self.stop_words.intersection(counts)) < self.min_stop_words:
            return False, "gopher_enough_stop_words"
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


class CachedTokenizer(WordTokenizer):
    """A WordTokenizer that remembers the words of the last text it split: three filters of a chain split the same
    text (Gopher repetition, Gopher quality, and FineWeb on C4's output, which is mostly the text unchanged), and
    splitting is a third of the chain's time. Sentences are not remembered."""

    def __init__(self, inner: WordTokenizer):
        super().__init__(inner.language)
        self.inner = inner
        self._last: tuple[str, list[str]] | None = None

    def word_tokenize(self, text: str) -> list[str]:
        last = self._last
        if last is None or not (last[0] is text or last[0] == text):
            last = self._last = (text, self.inner.word_tokenize(text))
        return list(last[1])

    def sent_tokenize(self, text: str) -> list[str]:
        return self.inner.sent_tokenize(text)

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return self.inner.span_tokenize(text)


def _ngrams(words: list[str], sep: str):
    """``n -> [sep.join(words[i : i + n]) for every i]``, the strings as slices of the words joined once."""
    joined = sep.join(words)
    lengths = map(len(sep).__add__, map(len, words))
    starts = [0, *accumulate(lengths)]  # where word i starts in ``joined``
    ends = list(map((-len(sep)).__add__, starts)) if sep else starts  # ends[i + 1]: where word i ends
    return lambda n: list(map(joined.__getitem__, map(slice, starts, ends[n:])))


_HASH_BASE = 0x9E3779B97F4A7C15  # odd, so invertible modulo 2**64
_HASH_POWERS_KEPT = 1 << 20  # powers for texts up to 1M characters are kept (16 MB); longer texts compute their own
_hash_powers = (np.ones(1, np.uint64), np.ones(1, np.uint64))


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``B**j`` and ``B**-j`` modulo 2**64 for ``j < n`` (uint64 arithmetic wraps modulo 2**64)."""
    global _hash_powers
    if len(_hash_powers[0]) < n:
        size = max(n, min(2 * len(_hash_powers[0]), _HASH_POWERS_KEPT))
        powers = []
        for base in (_HASH_BASE, pow(_HASH_BASE, -1, 1 << 64)):
            factors = np.full(size, base, np.uint64)
            factors[0] = 1
            powers.append(np.cumprod(factors, dtype=np.uint64))
        if size > _HASH_POWERS_KEPT:
            return powers[0][:n], powers[1][:n]
        _hash_powers = tuple(powers)
    return _hash_powers[0][:n], _hash_powers[1][:n]


class NGramBounds:
    """Upper bounds of GopherRepetitionFilter's two n-gram measures for one text's words, from 64-bit polynomial
    hashes of the n-gram strings (numpy, no string built). Equal strings have equal hashes, so a hash class holds
    one or more distinct strings: grouping by hash can only merge strings, and each bound below is at least the
    exact value. A bound under the limit proves the exact value is under it; only above it are the strings built."""

    def __init__(self, words: list[str]):
        self.words = words
        self.lengths = np.fromiter(map(len, words), np.int64, len(words))
        self._hashes = {}

    def _prefix(self, sep: str) -> tuple[np.ndarray, np.ndarray]:
        """Prefix hashes of the words joined with ``sep``, and where each word starts in that string."""
        if sep not in self._hashes:
            codes = np.frombuffer(sep.join(self.words).encode("utf-32-le", "surrogatepass"), np.uint32)
            powers, _ = _powers(len(codes))
            prefix = np.zeros(len(codes) + 1, np.uint64)
            np.cumsum(codes.astype(np.uint64) * powers, dtype=np.uint64, out=prefix[1:])
            starts = np.zeros(len(self.words) + 1, np.int64)
            np.cumsum(self.lengths + len(sep), out=starts[1:])
            self._hashes[sep] = prefix, starts
        return self._hashes[sep]

    def _groups(self, n: int, sep: str) -> tuple[np.ndarray, np.ndarray]:
        """The n-grams' lengths sorted by hash, and where each run of equal hashes starts."""
        prefix, starts = self._prefix(sep)
        first, ends = starts[: len(starts) - n], starts[n:] - len(sep)
        _, inverse_powers = _powers(int(first[-1]) + 1)
        hashes = (prefix[ends] - prefix[first]) * inverse_powers[first]
        order = np.argsort(hashes, kind="stable")
        hashes = hashes[order]
        runs = np.flatnonzero(np.r_[True, hashes[1:] != hashes[:-1]])
        return (ends - first)[order], runs

    def top(self, n: int) -> int:
        """At least ``len(g) * count(g)`` for the most common space-joined n-gram ``g`` (n <= len(words))."""
        lengths, runs = self._groups(n, " ")
        counts = np.diff(np.r_[runs, len(lengths)])
        return int((counts * np.maximum.reduceat(lengths, runs)).max())

    def repeated(self, n: int) -> int:
        """At least the characters of every repeat of an n-gram joined without spaces (all occurrences but one)."""
        if len(self.words) < n:
            return 0
        lengths, runs = self._groups(n, "")
        return int(lengths.sum() - lengths[runs].sum())


class FastGopherRepetitionFilter(GopherRepetitionFilter):
    """datatrove's GopherRepetitionFilter with the same decisions, faster: an n-gram rule builds the n-gram strings
    only when ``NGramBounds`` cannot prove the text passes it; then n-grams are slices of the words joined once
    (datatrove joins every n-gram's words anew, with " " for the top n-grams and "" for the duplicated ones; the
    slices are those same strings), and the scan for duplicated n-grams stops once its limit is passed (the count
    only grows)."""

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text = doc.text
        if not text:
            return False, "empty"
        paragraphs = self.paragraph_exp.split(text.strip())
        dup, dup_chars = find_duplicates(paragraphs)
        if self.dup_para_frac and dup / len(paragraphs) > self.dup_para_frac:
            return False, "dup_para_frac"
        if self.dup_para_char_frac and dup_chars / len(text) > self.dup_para_char_frac:
            return False, "dup_para_char_frac"
        lines = self._line_splitter.split(text)
        dup, dup_chars = find_duplicates(lines)
        if self.dup_line_frac and dup / len(lines) > self.dup_line_frac:
            return False, "dup_line_frac"
        if self.dup_line_char_frac and dup_chars / len(text) > self.dup_line_char_frac:
            return False, "dup_line_char_frac"
        words = split_into_words(text, self.language)
        bounds, spaced, unspaced = NGramBounds(words), None, None
        for n, n_frac in self.top_n_grams:
            if len(words) < n or not bounds.top(n) / len(text) > n_frac:
                continue
            spaced = spaced or _ngrams(words, " ")
            (gram, count), *_ = Counter(spaced(n)).most_common(1)
            if len(gram) * count / len(text) > n_frac:
                return False, f"top_{n}_gram"
        for n, n_frac in self.dup_n_grams:
            if not bounds.repeated(n) / len(text) > n_frac:
                continue
            unspaced = unspaced or _ngrams(words, "")
            grams = unspaced(n)
            seen, repeated, idx = set(), 0, 0
            while idx < len(grams):
                gram = grams[idx]
                if gram in seen:
                    repeated += len(gram)
                    if repeated / len(text) > n_frac:
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
    tokenizer = CachedTokenizer(tokenizer or word_tokenizer_for(lang))
    char_words = lang in CHARACTER_SCRIPT_LANGUAGES
    return [
        (
            "gopher_repetition",
            FastGopherRepetitionFilter(
                dup_line_frac=cfg["dup_line_frac"],
                top_n_grams=cfg["top_n_grams"],
                dup_n_grams=cfg["dup_n_grams"],
                language=tokenizer,
            ),
        ),
        (
            "gopher_quality",
            FastGopherQualityFilter(
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
