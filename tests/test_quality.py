"""Quality filters: datatrove's filters per language; our faster pieces must decide exactly as datatrove does."""

import random

import pytest
from datatrove.data import Document
from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter
from datatrove.utils.word_tokenizers import SpaCyTokenizer

from pipelines.filters import (
    FastC4QualityFilter,
    FastGopherQualityFilter,
    FastSpacyTokenizer,
    ScriptAwareTokenizer,
    word_tokenizer_for,
)
from pipelines.quality import QualityFilter
from tests.conftest import DE, EN, PYTHON_CODE, ZH, paragraph_doc

SAMPLES = [
    paragraph_doc(EN, 1),
    paragraph_doc(EN, 2, per_line=1),
    "Short line.\nAnother one!\nE-mail me at someone@example.com, or visit https://example.com/a?b=c.\n" * 3,
    'Don\'t split U.S.A. or 3.14; but do split (parentheses) and "quotes"... okay?',
    "JavaScript must be enabled.\nThis line is fine and has enough words in it.\n{curly} braces here.",
    "lorem ipsum dolor sit amet " * 5,
    "\n".join(EN[:6]) + "\nPrivacy policy and cookie policy apply.\nOne two",
]


@pytest.mark.parametrize("lang", ["en", "de"])
def test_fast_spacy_tokenizer_matches_datatrove(lang):
    fast = word_tokenizer_for(lang)
    assert isinstance(fast, FastSpacyTokenizer)
    reference = SpaCyTokenizer(lang)
    for text in SAMPLES + [paragraph_doc(DE, 3)]:
        assert fast.word_tokenize(text) == reference.word_tokenize(text)
        assert fast.span_tokenize(text) == reference.span_tokenize(text)
        assert fast.sent_tokenize(text) == reference.sent_tokenize(text)


def test_fast_spacy_tokenizer_rebuilds_its_cache():
    fast = word_tokenizer_for("en")
    fast.max_lexemes = 10
    first = fast.nlp
    fast.word_tokenize(paragraph_doc(EN, 4))
    assert fast.nlp is not first  # past the limit a fresh pipeline replaces the old one
    assert fast.word_tokenize("Hello, world!") == ["Hello", ",", "world", "!"]


def test_fast_c4_filter_decides_and_rewrites_like_datatrove():
    tokenizer = word_tokenizer_for("en")
    fast, reference = (
        FastC4QualityFilter(filter_no_terminal_punct=False, language=tokenizer),
        C4QualityFilter(filter_no_terminal_punct=False, language=tokenizer),
    )
    for text in SAMPLES:
        a, b = Document(text=text, id="a"), Document(text=text, id="b")
        assert fast.filter(a) == reference.filter(b)
        assert a.text == b.text


def test_fast_gopher_quality_filter_decides_like_datatrove():
    # real sentences and random texts of words, punctuation-only tokens, digits, "#", "..." and bullets, under limits
    # drawn at random, so that every rule both passes and drops texts; one filter per tokenizer, so its memo of words
    # is kept across texts (and emptied past its size)
    rng = random.Random(3)
    pieces = [*" ".join(EN + DE).split(), "--", "|", "...", "…", "#", "•", "-", "42", "3.14", "the", "and", "of", "é"]
    texts = [*SAMPLES, paragraph_doc(DE, 3)]
    for _ in range(300):
        words = rng.choices(pieces, k=rng.randint(1, 120))
        texts.append("".join(w + rng.choice(" " * 6 + "\n") for w in words))
    verdicts = set()
    for tokenizer in (word_tokenizer_for("en"), ScriptAwareTokenizer("en")):
        fast = FastGopherQualityFilter(language=tokenizer)
        fast.MEMO_SIZE = 50
        for i, text in enumerate(texts):
            r = random.Random(i)
            limits = {
                "min_doc_words": r.choice([None, 5, 50]),
                "min_avg_word_length": r.choice([None, 2, 3, 4]),
                "max_avg_word_length": r.choice([None, 5, 10]),
                "max_symbol_word_ratio": r.choice([None, 0.02, 0.1]),
                "max_bullet_lines_ratio": r.choice([None, 0.3, 0.9]),
                "max_ellipsis_lines_ratio": r.choice([None, 0.1, 0.3]),
                "max_non_alpha_words_ratio": r.choice([None, 0.6, 0.8, 0.95]),
                "min_stop_words": r.choice([None, 1, 2, 4]),
            }
            vars(fast).update(limits)
            expected = GopherQualityFilter(language=tokenizer, **limits).filter(Document(text=text, id="b"))
            assert fast.filter(Document(text=text, id="a")) == expected
            verdicts.add(str(expected))
    assert len(verdicts) >= 8  # kept, and drops by most of the rules


def test_cjk_words_are_characters():
    tok = word_tokenizer_for("zh")
    assert isinstance(tok, ScriptAwareTokenizer)
    assert tok.word_tokenize("软件包 manager 2.0 版") == ["软", "件", "包", "manager", "2", ".", "0", "版"]
    assert len(tok.sent_tokenize("第一句。第二句！第三句？")) == 3


def _verdict(text, lang, domain="web"):
    doc = {"id": "x", "text": text, "lang": lang, "domain": domain}
    return QualityFilter().check(doc)


def test_good_documents_pass_in_three_languages():
    assert _verdict(paragraph_doc(EN, 5), "en") is None
    assert _verdict(paragraph_doc(DE[:6], 1, n=6, per_line=1), "de") is None
    assert _verdict(paragraph_doc(ZH[:6], 1, n=6), "zh") is None  # would fail English word-length rules


def test_low_quality_is_dropped_with_a_reason():
    assert _verdict("buy now buy now\n" * 30, "en").startswith("gopher_repetition/")
    assert _verdict(EN[0] + " " + EN[1], "en") == "gopher_quality/gopher_short_doc"
    assert _verdict("lorem ipsum dolor sit amet, " + paragraph_doc(EN, 6), "en") == "c4/lorem_ipsum"


def test_code_gets_code_rules():
    assert _verdict(PYTHON_CODE, "code", domain="code") is None
    assert _verdict("x=1;" * 400, "code", domain="code") == "code/too_few_lines"
    minified = "\n".join(["var a=" + "b+" * 600 + "c;"] * 5)
    assert _verdict(minified, "code", domain="code") == "code/long_line"
