"""Stage 3, heuristic quality filters: datatrove's Gopher, C4 and FineWeb filters, per language.

    python -m pipelines.quality --input data/langid --output data/quality

The chain and its order are FineWeb's (Penedo et al. 2024):

1. ``GopherRepetitionFilter``  - Rae et al. 2021 (Gopher), Table A1: duplicate lines/paragraphs, top and
   duplicated n-grams.
2. ``GopherQualityFilter``     - Gopher: document length, mean word length, symbol ratio, bullets, ellipses,
   alphabetic words, stop words.
3. ``C4QualityFilter``         - Raffel et al. 2020 (C4): javascript/policy lines, lorem ipsum, curly brackets,
   too few sentences; with ``filter_no_terminal_punct=False`` as FineWeb used it. Note that, as in datatrove,
   it removes the lines it rejects from the text it keeps.
4. ``FineWebQualityFilter``    - FineWeb: share of lines ending in punctuation, short lines, duplicated chars,
   newline ratio.

Thresholds are the papers' (datatrove's defaults) for English and FineWeb-2's per-language values elsewhere
(``pipelines.lang_config``). Language awareness: each language gets its own filter chain, with the words of
scripts written without spaces (Chinese, Japanese, Thai, Lao, Khmer, Burmese) split into characters, and the
whitespace-based C4 words-per-line rule switched off and FineWeb's "short line" scaled to 10 characters for
them. Source code (``domain == code``) gets a code filter instead (StarCoder / The Stack rules), since prose
heuristics would drop every file.

Every drop is counted by ``<filter>/<reason>`` and the document is kept in ``excluded/`` for audit.
"""

from __future__ import annotations

from collections.abc import Iterator

import regex
from datatrove.data import Document
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.filters.c4_filters import CITATION_REGEX, ELLIPSIS, END_PUNCTUATION, POLICY_SUBSTRINGS
from datatrove.utils.text import split_into_sentences
from datatrove.utils.word_tokenizers import SpaCyTokenizer, WordTokenizer, load_word_tokenizer

from pipelines.beam_stage import (
    DocumentProcessor,
    cli,
    parse_stage_args,
    print_summary,
    run_shard_stage,
    stage_arg_parser,
)
from pipelines.lang_config import config_for

CHARACTER_SCRIPT_LANGUAGES = {"zh", "ja", "th", "lo", "km", "my", "bo", "yue", "wuu"}
# FineWeb calls a line of <= 30 characters short (about 5 English words); 10 characters say as much in these scripts.
CJK_SHORT_LINE_CHARS = 10

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

    def __init__(
        self,
        max_line_length: int = 1000,
        max_avg_line_length: float = 100,
        min_alphanum_fraction: float = 0.25,
        min_lines: int = 3,
    ):
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


def build_filter_chain(lang: str) -> list[tuple[str, object]]:
    """The four datatrove filters configured for one language, in FineWeb's order."""

    cfg = config_for(lang)
    tokenizer = word_tokenizer_for(lang)
    char_words = lang in CHARACTER_SCRIPT_LANGUAGES
    return [
        (
            "gopher_repetition",
            GopherRepetitionFilter(
                dup_line_frac=cfg.dup_line_frac,
                top_n_grams=cfg.top_n_grams,
                dup_n_grams=cfg.dup_n_grams,
                language=tokenizer,
            ),
        ),
        (
            "gopher_quality",
            GopherQualityFilter(
                min_avg_word_length=min(cfg.min_avg_word_length, 1) if char_words else cfg.min_avg_word_length,
                max_avg_word_length=cfg.max_avg_word_length,
                max_non_alpha_words_ratio=cfg.max_non_alpha_words_ratio,
                stop_words=list(cfg.stopwords),
                language=tokenizer,
            ),
        ),
        (
            "c4",
            FastC4QualityFilter(
                filter_no_terminal_punct=False, min_words_per_line=-1 if char_words else 3, language=tokenizer
            ),
        ),
        (
            "fineweb",
            FineWebQualityFilter(
                line_punct_thr=cfg.line_punct_thr,
                new_line_ratio=cfg.new_line_ratio,
                short_line_length=CJK_SHORT_LINE_CHARS if char_words else 30,
                language=tokenizer,
            ),
        ),
    ]


class QualityFilter(DocumentProcessor):
    stage = "quality"

    def __init__(self, code_filter: bool = True):
        self.code_filter = code_filter
        self._chains: dict[str, list[tuple[str, object]]] = {}
        self._code = CodeQualityFilter()

    def config(self) -> dict:
        return {
            "chain": ["gopher_repetition", "gopher_quality", "c4", "fineweb"],
            "code_filter": self.code_filter,
            "thresholds": "datatrove defaults (en) / FineWeb-2 per language",
        }

    def chain(self, lang: str) -> list[tuple[str, object]]:
        if lang not in self._chains:
            self._chains[lang] = build_filter_chain(lang)
        return self._chains[lang]

    def check(self, doc: dict) -> str | None:
        """None if the document passes, else ``<filter>/<reason>``. May rewrite ``doc["text"]`` (C4)."""
        if doc.get("domain") == "code":
            if not self.code_filter:
                return None
            keep, reason = self._code.filter(doc["text"])
            return None if keep else f"code/{reason}"
        dt_doc = Document(text=doc["text"], id=doc["id"], metadata={"language": doc.get("lang") or "en"})
        for name, step in self.chain(doc.get("lang") or "en"):
            result = step.filter(dt_doc)
            keep, reason = result if isinstance(result, tuple) else (result, None)
            if not keep:
                return f"{name}/{reason or 'dropped'}"
        doc["text"] = dt_doc.text
        return None

    def process_batch(self, docs: list[dict]) -> Iterator[tuple[dict, str | None]]:
        for doc in docs:
            yield doc, self.check(doc)


def run(inputs, output_dir: str, beam_args=None, workers: int | None = None, **kwargs) -> dict:
    code_filter = kwargs.pop("code_filter", True)
    return run_shard_stage(QualityFilter(code_filter=code_filter), inputs, output_dir, beam_args, workers, **kwargs)


def main(argv: list[str] | None = None) -> None:
    parser = stage_arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--no-code-filter", action="store_true", help="keep every source file")
    args, beam_args = parse_stage_args(parser, argv)
    print_summary(
        run(
            args.input,
            args.output,
            beam_args,
            args.workers,
            max_doc_bytes=args.max_doc_bytes,
            code_filter=not args.no_code_filter,
        )
    )


if __name__ == "__main__":
    cli(main)
