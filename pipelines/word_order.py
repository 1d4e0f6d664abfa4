"""Word order: how much more likely a text's word sequence is than the same words in random order, under a small
per-language model (``model_for(lang).score(text)``). Word salad (words drawn at their frequencies) and scrambled
text (a line's words or characters shuffled) have no order to gain from; real text does.

Every token gets a class: one of the language's most frequent words (function words: "the", "of", "der", "の",
"的"), else its last one or two letters (inflection: "-ing", "-en", Korean particles), else its shape (number,
other word, punctuation), with a capital-letter mark. The model holds, per language, how much more often class
``b`` follows class ``a`` than ``b`` occurs at all: ``log(lam * P(b|a) / P(b) + 1 - lam)`` (an interpolated
bigram over the unigram). A text's score is the mean of that over its token pairs within lines (a line starts
with ``<s>``). For text whose order carries nothing (tokens independent, drawn from the language's own unigram
distribution) the expected score is at most 0 (Jensen's inequality: ``E[log X] <= log E[X] = 0``); real text
scores well above it.

The tables are learnt from the demo corpora (``../shared/corpora``: Debian Administrator's Handbook, installation
manual, Debian Reference, Debian FAQ; lid.176 keeps each paragraph in the language it is written in) and shipped as
``pipelines/profiles/word_order.json.gz`` with their source; never from the quality development set or the
independent check set. Rebuild with ``python -m pipelines.word_order --corpora ../shared/corpora``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
from collections import Counter
from functools import lru_cache
from pathlib import Path

import regex

MODEL_FILE = Path(__file__).with_name("profiles") / "word_order.json.gz"
CORPORA = ("debian_handbook", "instguide_amd64", "debian_reference", "debian_faq")
TOP_WORDS = 160  # per language: words (or characters of scripts without spaces) with a class of their own
TOP_SUFFIXES = 80  # word endings with a class of their own
MIN_PAIR_COUNT = 3  # pairs seen fewer times take the unseen score
LAMBDA = 0.5
MAX_TOKENS = 800  # a document's first 800 tokens are scored
MIN_TRAIN_CHARS = 150_000
MEMO_SIZE = 200_000  # tokens whose class a model remembers

_TOKEN = regex.compile(
    r"[\p{Han}\p{Hiragana}\p{Katakana}]|[\p{L}\p{M}]+(?:['’][\p{L}\p{M}]+)*|\p{N}+(?:[.,]\p{N}+)*|[^\s\p{L}\p{M}\p{N}]"
)
_PUNCTUATION = frozenset(".,:;!?()。、，：；！？（）「」")
_SYLLABIC = regex.compile(r"[\p{Hangul}]")
_HAN, _HIRAGANA, _KATAKANA = (regex.compile(rf"\p{{{s}}}") for s in ("Han", "Hiragana", "Katakana"))


def _shape(tok: str) -> str:
    if len(tok) > 1:
        return "<w>"
    if _HAN.match(tok):
        return "<han>"
    if _HIRAGANA.match(tok):
        return "<hira>"
    return "<kata>" if _KATAKANA.match(tok) else "<c>"


def token_class(tok: str, words: dict, suffixes: dict) -> str:
    """A token's class: the word itself if it is one of the language's top words, else its ending or its shape;
    ``^`` marks a capital first letter."""
    low = tok.lower()
    first = tok[0]
    if low in words:
        c = low
    elif first.isalpha():
        suffix = low[-1:] if _SYLLABIC.match(first) or len(low) < 4 else low[-2:]
        c = "-" + suffix if "-" + suffix in suffixes else _shape(tok)
    elif first.isdigit():
        c = "<n>"
    else:
        c = tok if tok in _PUNCTUATION else "<p>"
    return c + "^" if first.isupper() else c


def classes(
    text: str, words: dict, suffixes: dict, max_tokens: int = MAX_TOKENS, memo: dict | None = None
) -> list[str]:
    """The class sequence of a text's first ``max_tokens`` tokens, ``<s>`` at each line start. ``memo``: token ->
    class of earlier calls with the same tables (filled here)."""
    memo = {} if memo is None else memo
    out: list[str] = []
    n = 0
    for line in text.splitlines():
        tokens = _TOKEN.findall(line)
        if not tokens:
            continue
        out.append("<s>")
        for tok in tokens:
            c = memo.get(tok)
            if c is None:
                c = memo[tok] = token_class(tok, words, suffixes)
            out.append(c)
        n += len(tokens)
        if n >= max_tokens:
            break
    return out


class WordOrderModel:
    """One language's table: the classes and the score of every pair seen ``MIN_PAIR_COUNT`` times."""

    def __init__(self, entry: dict):
        self.words = dict.fromkeys(entry["words"])
        self.suffixes = dict.fromkeys("-" + s for s in entry["suffixes"])
        self.pairs = {tuple(k.split(" ")): v for k, v in entry["pairs"].items()}
        self.unseen = entry["unseen"]
        self._memo: dict[str, str] = {}  # token -> class, emptied when it grows past MEMO_SIZE

    def score(self, text: str) -> tuple[float, int]:
        """(mean pair score, pairs scored)."""
        if len(self._memo) > MEMO_SIZE:
            self._memo.clear()
        seq = classes(text, self.words, self.suffixes, memo=self._memo)
        pairs = self.pairs
        unseen = self.unseen
        total, n = 0.0, 0
        for a, b in zip(seq, seq[1:]):
            if b == "<s>":
                continue
            total += pairs.get((a, b), unseen)
            n += 1
        return (total / n if n else 0.0), n


@lru_cache(maxsize=1)
def _load(path: str) -> tuple[dict, dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        data = json.load(f)
    if not str(data.get("source", "")).strip():
        raise ValueError(f"{path}: the word-order tables have no 'source'")
    return data, {}


def model_for(lang: str, path: str | Path = MODEL_FILE) -> WordOrderModel | None:
    """The language's table, or None where none was learnt (the rule is then off)."""
    data, built = _load(str(path))
    if lang not in built:
        entry = data["languages"].get(lang)
        built[lang] = WordOrderModel(entry) if entry else None
    return built[lang]


def model_fingerprint(path: str | Path = MODEL_FILE) -> dict:
    """What the stage's config records of the tables: a rebuilt file starts the quality stage afresh."""
    data, _ = _load(str(path))
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return {"version": data["version"], "sha256": digest, "languages": sorted(data["languages"])}


# --- building the tables -------------------------------------------------------------------------------------------


def _paragraphs(corpora: Path) -> dict[str, list[str]]:
    """Paragraphs of the demo corpora by the language lid.176 gives them (score >= 0.8, 100+ characters)."""
    from pipelines.langid import LanguageIdentifier

    texts: list[str] = []
    for name in CORPORA:
        with gzip.open(corpora / f"{name}.jsonl.gz", "rt", encoding="utf-8") as f:
            for line in f:
                for para in regex.split(r"\n\s*\n", json.loads(line)["text"]):
                    if len(para.strip()) >= 100:
                        texts.append(para.strip())
    lid = LanguageIdentifier()
    lid.setup()
    by_lang: dict[str, list[str]] = {}
    for text, (lang, score) in zip(texts, lid.predict(texts)):
        if score >= 0.8:
            by_lang.setdefault(lang, []).append(text)
    return by_lang


def learn(texts: list[str]) -> dict:
    """One language's table from its paragraphs."""
    word_counts: Counter = Counter()
    for text in texts:
        for tok in _TOKEN.findall(text):
            if tok[0].isalpha():
                word_counts[tok.lower()] += 1
    words = [w for w, _ in word_counts.most_common(TOP_WORDS)]
    top = set(words)
    suffix_counts: Counter = Counter()
    for w, n in word_counts.items():
        if w not in top and (len(w) >= 4 or _SYLLABIC.match(w)):
            suffix_counts[w[-1:] if _SYLLABIC.match(w) else w[-2:]] += n
    suffixes = [s for s, _ in suffix_counts.most_common(TOP_SUFFIXES)]
    wd, sd = dict.fromkeys(words), dict.fromkeys("-" + s for s in suffixes)
    unigram: Counter = Counter()
    bigram: Counter = Counter()
    for text in texts:
        seq = classes(text, wd, sd, max_tokens=10**9)
        unigram.update(c for c in seq if c != "<s>")
        bigram.update((a, b) for a, b in zip(seq, seq[1:]) if b != "<s>")
    left: Counter = Counter()
    for (a, _), n in bigram.items():
        left[a] += n
    total = sum(unigram.values())
    pairs = {}
    for (a, b), n in bigram.items():
        if n >= MIN_PAIR_COUNT:
            ratio = (n / left[a]) / (unigram[b] / total)
            pairs[f"{a} {b}"] = round(math.log(LAMBDA * ratio + 1 - LAMBDA), 2)
    return {"words": words, "suffixes": suffixes, "pairs": pairs, "unseen": round(math.log(1 - LAMBDA), 4),
            "chars": sum(map(len, texts))}  # fmt: skip


def build(corpora: Path, out: Path = MODEL_FILE) -> dict:
    by_lang = _paragraphs(corpora)
    languages = {}
    for lang, texts in sorted(by_lang.items()):
        if sum(map(len, texts)) >= MIN_TRAIN_CHARS:
            languages[lang] = learn(texts)
    data = {
        "version": 1,
        "source": "learnt by pipelines/word_order.py from the demo corpora (../shared/corpora: "
        + ", ".join(CORPORA)
        + "; Debian documentation, free licences), paragraphs kept in the language lid.176 gives them (score >= "
        f"0.8), languages with {MIN_TRAIN_CHARS:,}+ characters; top {TOP_WORDS} words, {TOP_SUFFIXES} endings, "
        f"pairs seen {MIN_PAIR_COUNT}+ times, lambda {LAMBDA}. Not the quality development set, not the "
        "independent check set.",
        "languages": languages,
    }
    with gzip.open(out, "wt", encoding="utf-8", compresslevel=9) as f:
        json.dump(data, f, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    _load.cache_clear()
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", required=True, help="folder of the demo corpora's JSONL.gz files")
    parser.add_argument("--output", default=str(MODEL_FILE))
    args = parser.parse_args(argv)
    data = build(Path(args.corpora), Path(args.output))
    for lang, entry in data["languages"].items():
        print(f"{lang}: {entry['chars']:,} characters, {len(entry['pairs']):,} pairs")
    print(f"{args.output}: {Path(args.output).stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
