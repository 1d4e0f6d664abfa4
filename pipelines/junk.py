"""The clear-junk rules of the quality stage's ``docs`` and ``cjk`` profiles (``JunkFilter``): boilerplate, cookie
banners, menus, keyword lists, repeated lines, encoding garbage, scrambled text, word salad and short fragments,
thresholds from the profile's data file. Used by ``pipelines.quality``.
"""

from __future__ import annotations

import random
import re
import zlib
from collections import Counter
from dataclasses import dataclass

import numpy as np
import regex

from pipelines.word_order import model_for

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
    "min_word_order_score",
    "min_char_order_gain",
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
_WORD_BEFORE = "(?<![^\\W\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff])"
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


def char_order_gain(text: str, max_chars: int = 6_000) -> float:
    """How much of the text's compressibility comes from the order of its characters: zlib size with every character
    but line breaks shuffled (fixed seed) over the size as written, minus 1. Words of any script recur and are lost
    when their letters are shuffled (real text > 0.1 past 600 characters); scrambled characters have nothing to lose
    (~0). No language table is needed."""
    sample = text[:max_chars]
    codes = np.frombuffer(sample.encode("utf-32-le"), dtype=np.uint32).copy()
    movable = codes != 10
    codes[movable] = np.random.default_rng(len(sample)).permutation(codes[movable])
    shuffled = codes.tobytes().decode("utf-32-le")
    return len(zlib.compress(shuffled.encode(), 6)) / len(zlib.compress(sample.encode(), 6)) - 1


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
        # a phrase that starts with a letter or digit must start a word: "cookie" is not in "syncookies"; after an
        # ideograph, kana or Hangul syllable it does ("这些Cookie用于": those scripts do not space their words)
        patterns = [(_WORD_BEFORE if p[:1].isalnum() else "") + re.escape(p) for p in self._phrases]
        self._boilerplate = re.compile("|".join(patterns)) if patterns else None

    def letters(self, text: str) -> int:
        """Letters, an ideograph/kana/Hangul syllable counting 2 (it carries about what a short word does)."""
        return len(_LETTER.findall(text)) + len(_CJK.findall(text))

    def filter(self, text: str, lang: str | None = None) -> str | None:
        """None if the document is not clear junk, else the rule it fails. Looks at the first ``MAX_JUNK_CHARS``.
        ``lang`` (language ID's label) chooses the word-order table; without one that rule is off."""
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
        bands = [gain for chars, gain in r["min_char_order_gain"] if len(text) >= chars]
        if bands and char_order_gain(text) < bands[-1]:
            return "scrambled"
        if r["min_word_order_score"] and lang and (model := model_for(lang)) is not None:
            score, pairs = model.score(text)
            bands = [low for min_pairs, low in r["min_word_order_score"] if pairs >= min_pairs]
            if bands and score < bands[-1]:
                return "word_order"
        return None

    def _units(self, item: str) -> float:
        """Words of a line, two ideographs/kana counting one."""
        cjk = len(_CJK.findall(item))
        if not cjk:
            return len(item.split())
        return cjk / 2 + len(_WORD.findall(_CJK.sub(" ", item)))
