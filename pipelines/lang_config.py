"""Per-language heuristic-filter settings for the languages the Qwen2 report covers.

Source: FineWeb-2 (Penedo et al. 2025), https://github.com/huggingface/fineweb-2 , directory ``configs/``
(one ``{iso639-3}_{Script}.yml`` per language), Apache-2.0. Values are copied verbatim from those files as read
on 2026-11-27 from a stored copy of the repository: revisions 05e6729 / d331bee (the latest revision of each file
available; the files at those two commits are the same revision: ``language_score`` present, ``top_n_grams``
falling with n) except Turkish, for which only an older revision (baedee4) was available -- see its comment.

Caveats:

* FineWeb-2 tuned ``language_score`` for GlotLID confidence scores. This project labels documents with fastText
  lid.176, whose scores are distributed differently, so the thresholds here are starting points, not calibrated
  values (note ``da`` and ``km`` at 0.3, far below the rest).
* FineWeb-2 has no English config: English is the original FineWeb. ``DEFAULT_CONFIG`` holds the FineWeb /
  datatrove defaults (fastText English score 0.65, datatrove ``STOP_WORDS``, the filters' default thresholds)
  and is used for ``en`` and for any language not in the table.
* Every language in ``QWEN2_LANGUAGES`` has a FineWeb-2 config; the file names differ from the obvious guesses
  for Persian (``fas_Arab``, not ``pes_Arab``) and Tagalog (``fil_Latn``, not ``tgl_Latn``).

How FineWeb-2 used each value (``fineweb-2-pipeline.py``): ``language_score`` is a minimum LID score;
``dup_line_frac``, ``top_n_grams`` and ``dup_n_grams`` go to ``GopherRepetitionFilter``; ``line_punct_thr`` and
``new_line_ratio`` to ``FineWebQualityFilter``; ``min_avg_word_length``, ``max_avg_word_length``,
``max_non_alpha_words_ratio`` and ``stopwords`` (with ``min_stop_words=2``) to ``GopherQualityFilter``.
A 0 (``line_punct_thr`` for de, th, my, km, lo; ``min_avg_word_length`` for de) is FineWeb-2's own value and, in
datatrove, turns that check off.
"""

from __future__ import annotations

from dataclasses import dataclass

# Data tuples below are packed by hand; the formatter would put one item per line.
# fmt: off
# The ~30 languages of the Qwen2 report, as the ISO 639-1 codes fastText lid.176 emits.
QWEN2_LANGUAGES: tuple[str, ...] = (
    "en", "zh", "es", "fr", "de", "ar", "ru", "ko", "ja", "th", "vi", "id", "ms", "it", "pt", "nl", "pl",
    "tr", "uk", "cs", "ro", "hu", "sv", "da", "fi", "el", "he", "hi", "bn", "fa", "tl", "my", "km", "lo",
)
# fmt: on


@dataclass(frozen=True)
class LanguageFilterConfig:
    """Thresholds and stop words for one language's language-ID and heuristic quality filters."""

    # Minimum language-ID confidence to keep a document (FineWeb-2: GlotLID score; here: lid.176 score).
    language_score: float
    # Stop words; GopherQualityFilter (min_stop_words=2) wants at least 2 distinct ones in a document.
    stopwords: tuple[str, ...]
    # GopherQualityFilter: minimum mean word length, in characters.
    min_avg_word_length: float
    # GopherQualityFilter: maximum mean word length, in characters.
    max_avg_word_length: float
    # GopherQualityFilter: despite the name, drop if under this fraction of words have an alphabetic char.
    max_non_alpha_words_ratio: float
    # GopherRepetitionFilter: maximum fraction of lines that are duplicates of other lines.
    dup_line_frac: float
    # GopherRepetitionFilter: (n, max share of characters in the most frequent n-gram).
    top_n_grams: tuple[tuple[int, float], ...]
    # GopherRepetitionFilter: (n, max share of characters in duplicated n-grams).
    dup_n_grams: tuple[tuple[int, float], ...]
    # FineWebQualityFilter: minimum fraction of lines ending in punctuation (0 turns the check off).
    line_punct_thr: float
    # FineWebQualityFilter: maximum number of newlines per word.
    new_line_ratio: float


# Original FineWeb (English) / datatrove defaults: LanguageFilter threshold 0.65, datatrove's STOP_WORDS,
# GopherQualityFilter/GopherRepetitionFilter/FineWebQualityFilter default arguments (datatrove 0.10.1).
DEFAULT_CONFIG = LanguageFilterConfig(
    language_score=0.65,
    stopwords=("the", "be", "to", "of", "and", "that", "have", "with"),
    min_avg_word_length=3.0,
    max_avg_word_length=10.0,
    max_non_alpha_words_ratio=0.8,
    dup_line_frac=0.3,
    top_n_grams=((2, 0.2), (3, 0.18), (4, 0.16)),
    dup_n_grams=((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.1)),
    line_punct_thr=0.12,
    new_line_ratio=0.3,
)

# fmt: off
# lid.176 code -> FineWeb-2 settings. The comment above each entry names the yml it was copied from.
LANGUAGE_CONFIGS: dict[str, LanguageFilterConfig] = {
    # English: no FineWeb-2 config (English is the original FineWeb), so the defaults above.
    "en": DEFAULT_CONFIG,
    # configs/cmn_Hani.yml @ 05e6729
    "zh": LanguageFilterConfig(
        language_score=0.692,
        stopwords=(
            "的", "年", "在", "月", "是", "和", "日", "了", "於", "·", "為", "有", "被", "人", "中", "为", "他", "與",
            "後", "也", "而", "由",
        ),
        min_avg_word_length=1.0,
        max_avg_word_length=5.0,
        max_non_alpha_words_ratio=0.735,
        dup_line_frac=0.287,
        top_n_grams=((2, 0.256), (3, 0.201), (4, 0.171)),
        dup_n_grams=((5, 0.198), (6, 0.182), (7, 0.167), (8, 0.154), (9, 0.14), (10, 0.127)),
        line_punct_thr=0.106,
        new_line_ratio=0.178,
    ),
    # configs/spa_Latn.yml @ d331bee
    "es": LanguageFilterConfig(
        language_score=0.84,
        stopwords=("de", "la", "en", "el", "y", "a", "que", "del", "los", "se", "por", "un", "con", "una", "las", "su"),
        min_avg_word_length=3.0,
        max_avg_word_length=14.0,
        max_non_alpha_words_ratio=0.825,
        dup_line_frac=0.252,
        top_n_grams=((2, 0.156), (3, 0.14), (4, 0.125)),
        dup_n_grams=((5, 0.145), (6, 0.136), (7, 0.127), (8, 0.117), (9, 0.108), (10, 0.099)),
        line_punct_thr=0.182,
        new_line_ratio=0.138,
    ),
    # configs/fra_Latn.yml @ 05e6729
    "fr": LanguageFilterConfig(
        language_score=0.824,
        stopwords=(
            "de", "la", "le", "et", "à", "en", "l'", "des", "du", "les", "est", "d'", "un", "une", "il", "dans", "par",
            "au",
        ),
        min_avg_word_length=2.0,
        max_avg_word_length=11.0,
        max_non_alpha_words_ratio=0.812,
        dup_line_frac=0.264,
        top_n_grams=((2, 0.161), (3, 0.149), (4, 0.134)),
        dup_n_grams=((5, 0.15), (6, 0.141), (7, 0.131), (8, 0.121), (9, 0.111), (10, 0.1)),
        line_punct_thr=0.1,
        new_line_ratio=0.185,
    ),
    # configs/deu_Latn.yml @ 05e6729
    "de": LanguageFilterConfig(
        language_score=0.821,
        stopwords=(
            "der", "und", "die", "in", "von", "im", "den", "des", "mit", "das", "er", "dem", "als", "wurde", "für",
        ),
        min_avg_word_length=0.0,
        max_avg_word_length=15.0,
        max_non_alpha_words_ratio=0.774,
        dup_line_frac=0.263,
        top_n_grams=((2, 0.169), (3, 0.153), (4, 0.137)),
        dup_n_grams=((5, 0.141), (6, 0.134), (7, 0.126), (8, 0.117), (9, 0.108), (10, 0.098)),
        line_punct_thr=0.0,
        new_line_ratio=0.152,
    ),
    # configs/arb_Arab.yml @ 05e6729
    "ar": LanguageFilterConfig(
        language_score=0.711,
        stopwords=(
            "،", "في", "من", "على", "إلى", "عام", "أن", "مع", "أو", "هو", "عن", "التي", "كان", "بين", "ما", "كانت",
            "هي", "المتحدة", "بعد",
        ),
        min_avg_word_length=2.0,
        max_avg_word_length=9.0,
        max_non_alpha_words_ratio=0.787,
        dup_line_frac=0.304,
        top_n_grams=((2, 0.197), (3, 0.172), (4, 0.146)),
        dup_n_grams=((5, 0.165), (6, 0.153), (7, 0.142), (8, 0.131), (9, 0.12), (10, 0.109)),
        line_punct_thr=0.143,
        new_line_ratio=0.189,
    ),
    # configs/rus_Cyrl.yml @ 05e6729
    "ru": LanguageFilterConfig(
        language_score=0.9,
        stopwords=(
            "в", "и", "на", "с", "года", "по", "году", "из", "был", "к", "не", "от", "что", "за", "для", "его", "как",
            "а", "он", "также", "до", "после",
        ),
        min_avg_word_length=3.0,
        max_avg_word_length=11.0,
        max_non_alpha_words_ratio=0.713,
        dup_line_frac=0.322,
        top_n_grams=((2, 0.184), (3, 0.164), (4, 0.146)),
        dup_n_grams=((5, 0.168), (6, 0.156), (7, 0.145), (8, 0.133), (9, 0.121), (10, 0.109)),
        line_punct_thr=0.231,
        new_line_ratio=0.139,
    ),
    # configs/kor_Hang.yml @ 05e6729
    "ko": LanguageFilterConfig(
        language_score=0.842,
        stopwords=(
            "의", "다", "이", "는", "에", "을", "한", "년", "하", "은", "를", "했", "고", "에서", "가", "있", "으로",
            "인", "월", "로", "되",
        ),
        min_avg_word_length=1.0,
        max_avg_word_length=6.0,
        max_non_alpha_words_ratio=0.791,
        dup_line_frac=0.374,
        top_n_grams=((2, 0.282), (3, 0.228), (4, 0.185)),
        dup_n_grams=((5, 0.201), (6, 0.184), (7, 0.168), (8, 0.154), (9, 0.14), (10, 0.127)),
        line_punct_thr=0.062,
        new_line_ratio=0.196,
    ),
    # configs/jpn_Jpan.yml @ d331bee
    "ja": LanguageFilterConfig(
        language_score=0.886,
        stopwords=("の", "に", "を", "は", "た", "て", "が", "と", "で", "年", "し", "・", "月", "れ", "さ"),
        min_avg_word_length=1.0,
        max_avg_word_length=6.0,
        max_non_alpha_words_ratio=0.759,
        dup_line_frac=0.328,
        top_n_grams=((2, 0.239), (3, 0.196), (4, 0.172)),
        dup_n_grams=((5, 0.243), (6, 0.225), (7, 0.207), (8, 0.19), (9, 0.175), (10, 0.159)),
        line_punct_thr=0.096,
        new_line_ratio=0.13,
    ),
    # configs/tha_Thai.yml @ 05e6729
    "th": LanguageFilterConfig(
        language_score=0.9,
        stopwords=("ใน", "ที่", "และ", "ของ", "เป็น", "มี", "การ", "ได้"),
        min_avg_word_length=2.0,
        max_avg_word_length=10.0,
        max_non_alpha_words_ratio=0.9,
        dup_line_frac=0.349,
        top_n_grams=((2, 0.221), (3, 0.197), (4, 0.162)),
        dup_n_grams=((5, 0.185), (6, 0.168), (7, 0.152), (8, 0.137), (9, 0.124), (10, 0.111)),
        line_punct_thr=0.0,
        new_line_ratio=0.153,
    ),
    # configs/vie_Latn.yml @ 05e6729
    "vi": LanguageFilterConfig(
        language_score=0.802,
        stopwords=("là", "và", "của", "một", "được", "trong", "năm", "các", "có", "loài", "này", "đã", "người"),
        min_avg_word_length=3.0,
        max_avg_word_length=11.0,
        max_non_alpha_words_ratio=0.803,
        dup_line_frac=0.293,
        top_n_grams=((2, 0.223), (3, 0.197), (4, 0.171)),
        dup_n_grams=((5, 0.178), (6, 0.163), (7, 0.15), (8, 0.136), (9, 0.124), (10, 0.111)),
        line_punct_thr=0.333,
        new_line_ratio=0.103,
    ),
    # configs/ind_Latn.yml @ d331bee
    "id": LanguageFilterConfig(
        language_score=0.685,
        stopwords=("dan", "yang", "di", "pada", "dari", "ini", "dengan", "adalah", "untuk", "dalam"),
        min_avg_word_length=3.0,
        max_avg_word_length=12.0,
        max_non_alpha_words_ratio=0.805,
        dup_line_frac=0.241,
        top_n_grams=((2, 0.194), (3, 0.166), (4, 0.145)),
        dup_n_grams=((5, 0.166), (6, 0.155), (7, 0.144), (8, 0.133), (9, 0.122), (10, 0.111)),
        line_punct_thr=0.111,
        new_line_ratio=0.157,
    ),
    # configs/zsm_Latn.yml @ d331bee
    # Standard Malay (zsm_Latn), what lid.176 calls ms.
    "ms": LanguageFilterConfig(
        language_score=0.618,
        stopwords=("dan", "di", "yang", "pada", "dalam", "dengan", "untuk", "ini"),
        min_avg_word_length=3.0,
        max_avg_word_length=11.0,
        max_non_alpha_words_ratio=0.808,
        dup_line_frac=0.331,
        top_n_grams=((2, 0.264), (3, 0.252), (4, 0.225)),
        dup_n_grams=((5, 0.185), (6, 0.176), (7, 0.166), (8, 0.156), (9, 0.145), (10, 0.134)),
        line_punct_thr=0.125,
        new_line_ratio=0.214,
    ),
    # configs/ita_Latn.yml @ 05e6729
    "it": LanguageFilterConfig(
        language_score=0.817,
        stopwords=(
            "di", "e", "il", "la", "in", "a", "del", "che", "è", "della", "un", "per", "nel", "l'", "con", "da", "i",
            "una",
        ),
        min_avg_word_length=3.0,
        max_avg_word_length=21.0,
        max_non_alpha_words_ratio=0.807,
        dup_line_frac=0.246,
        top_n_grams=((2, 0.198), (3, 0.156), (4, 0.133)),
        dup_n_grams=((5, 0.144), (6, 0.136), (7, 0.127), (8, 0.118), (9, 0.109), (10, 0.1)),
        line_punct_thr=0.025,
        new_line_ratio=0.2,
    ),
    # configs/por_Latn.yml @ d331bee
    "pt": LanguageFilterConfig(
        language_score=0.799,
        stopwords=("de", "a", "e", "o", "em", "do", "da", "que", "um", "no", "uma", "com", "para", "na", "é", "foi"),
        min_avg_word_length=3.0,
        max_avg_word_length=13.0,
        max_non_alpha_words_ratio=0.814,
        dup_line_frac=0.287,
        top_n_grams=((2, 0.371), (3, 0.191), (4, 0.163)),
        dup_n_grams=((5, 0.163), (6, 0.153), (7, 0.141), (8, 0.13), (9, 0.119), (10, 0.108)),
        line_punct_thr=0.077,
        new_line_ratio=0.186,
    ),
    # configs/nld_Latn.yml @ d331bee
    "nl": LanguageFilterConfig(
        language_score=0.689,
        stopwords=(
            "de", "van", "in", "het", "een", "en", "is", "op", "voor", "met", "door", "zijn", "werd", "hij", "uit",
        ),
        min_avg_word_length=3.0,
        max_avg_word_length=17.0,
        max_non_alpha_words_ratio=0.828,
        dup_line_frac=0.296,
        top_n_grams=((2, 0.213), (3, 0.182), (4, 0.158)),
        dup_n_grams=((5, 0.156), (6, 0.146), (7, 0.136), (8, 0.126), (9, 0.115), (10, 0.104)),
        line_punct_thr=0.102,
        new_line_ratio=0.154,
    ),
    # configs/pol_Latn.yml @ d331bee
    "pl": LanguageFilterConfig(
        language_score=0.689,
        stopwords=(
            "w", "i", "na", "z", "do", "się", "roku", "od", "a", "jest", "przez", "po", "jako", "oraz", "o", "został",
            "był", "nie",
        ),
        min_avg_word_length=3.0,
        max_avg_word_length=12.0,
        max_non_alpha_words_ratio=0.726,
        dup_line_frac=0.32,
        top_n_grams=((2, 0.222), (3, 0.198), (4, 0.176)),
        dup_n_grams=((5, 0.172), (6, 0.16), (7, 0.148), (8, 0.136), (9, 0.123), (10, 0.111)),
        line_punct_thr=0.087,
        new_line_ratio=0.158,
    ),
    # configs/tur_Latn.yml @ baedee4
    # NOTE: older revision (baedee4). The later revision of tur_Latn.yml that the other languages come from
    # could not be read; these top_n_grams still rise with n, as all the older files' did.
    "tr": LanguageFilterConfig(
        language_score=0.875,
        stopwords=(
            "ve", "bir", "olarak", "bu", "ile", "için", "olan", "da", "de", "tarafından", "yılında", "sonra", "en",
            "daha", "ilk", "the",
        ),
        min_avg_word_length=3.0,
        max_avg_word_length=21.0,
        max_non_alpha_words_ratio=0.773,
        dup_line_frac=0.303,
        top_n_grams=((2, 0.094), (3, 0.114), (4, 0.136)),
        dup_n_grams=((5, 0.168), (6, 0.151), (7, 0.135), (8, 0.123), (9, 0.116), (10, 0.107)),
        line_punct_thr=0.2,
        new_line_ratio=0.273,
    ),
    # configs/ukr_Cyrl.yml @ d331bee
    "uk": LanguageFilterConfig(
        language_score=0.9,
        stopwords=("у", "в", "на", "і", "з", "та", "до", "року", "за", "що"),
        min_avg_word_length=3.0,
        max_avg_word_length=11.0,
        max_non_alpha_words_ratio=0.694,
        dup_line_frac=0.3,
        top_n_grams=((2, 0.189), (3, 0.172), (4, 0.153)),
        dup_n_grams=((5, 0.16), (6, 0.148), (7, 0.136), (8, 0.124), (9, 0.113), (10, 0.102)),
        line_punct_thr=0.167,
        new_line_ratio=0.175,
    ),
    # configs/ces_Latn.yml @ d331bee
    "cs": LanguageFilterConfig(
        language_score=0.88,
        stopwords=("v", "a", "se", "na", "je", "z", "s", "do"),
        min_avg_word_length=3.0,
        max_avg_word_length=11.0,
        max_non_alpha_words_ratio=0.781,
        dup_line_frac=0.311,
        top_n_grams=((2, 0.206), (3, 0.183), (4, 0.165)),
        dup_n_grams=((5, 0.168), (6, 0.157), (7, 0.145), (8, 0.133), (9, 0.121), (10, 0.109)),
        line_punct_thr=0.06,
        new_line_ratio=0.182,
    ),
    # configs/ron_Latn.yml @ 05e6729
    "ro": LanguageFilterConfig(
        language_score=0.822,
        stopwords=("de", "în", "a", "și", "din", "la", "o", "cu", "este", "un", "pe", "fost", "care", "al"),
        min_avg_word_length=1.0,
        max_avg_word_length=14.0,
        max_non_alpha_words_ratio=0.779,
        dup_line_frac=0.289,
        top_n_grams=((2, 0.161), (3, 0.146), (4, 0.131)),
        dup_n_grams=((5, 0.16), (6, 0.149), (7, 0.138), (8, 0.127), (9, 0.117), (10, 0.106)),
        line_punct_thr=0.081,
        new_line_ratio=0.207,
    ),
    # configs/hun_Latn.yml @ 05e6729
    "hu": LanguageFilterConfig(
        language_score=0.744,
        stopwords=("a", "az", "és", "is", "egy", "volt", "hogy", "nem", "meg", "de", "magyar", "első", "el", "között"),
        min_avg_word_length=3.0,
        max_avg_word_length=15.0,
        max_non_alpha_words_ratio=0.766,
        dup_line_frac=0.322,
        top_n_grams=((2, 0.226), (3, 0.198), (4, 0.172)),
        dup_n_grams=((5, 0.169), (6, 0.159), (7, 0.148), (8, 0.136), (9, 0.124), (10, 0.112)),
        line_punct_thr=0.067,
        new_line_ratio=0.231,
    ),
    # configs/swe_Latn.yml @ 05e6729
    "sv": LanguageFilterConfig(
        language_score=0.629,
        stopwords=("i", "och", "är", "av", "en", "som", "den", "med", "på", "till", "att", "för"),
        min_avg_word_length=3.0,
        max_avg_word_length=12.0,
        max_non_alpha_words_ratio=0.841,
        dup_line_frac=0.292,
        top_n_grams=((2, 0.242), (3, 0.195), (4, 0.174)),
        dup_n_grams=((5, 0.156), (6, 0.147), (7, 0.136), (8, 0.125), (9, 0.116), (10, 0.105)),
        line_punct_thr=0.2,
        new_line_ratio=0.135,
    ),
    # configs/dan_Latn.yml @ 05e6729
    "da": LanguageFilterConfig(
        language_score=0.3,
        stopwords=(
            "i", "og", "af", "en", "til", "er", "den", "at", "som", "på", "for", "med", "det", "blev", "var", "der",
            "fra", "de", "han", "et",
        ),
        min_avg_word_length=3.0,
        max_avg_word_length=11.0,
        max_non_alpha_words_ratio=0.798,
        dup_line_frac=0.305,
        top_n_grams=((2, 0.367), (3, 0.297), (4, 0.232)),
        dup_n_grams=((5, 0.169), (6, 0.158), (7, 0.147), (8, 0.134), (9, 0.123), (10, 0.112)),
        line_punct_thr=0.1,
        new_line_ratio=0.182,
    ),
    # configs/fin_Latn.yml @ d331bee
    "fi": LanguageFilterConfig(
        language_score=0.764,
        stopwords=(
            "ja", "on", "oli", "hän", "vuonna", "myös", "joka", "se", "ei", "sen", "ovat", "sekä", "mutta", "että",
            "tai", "vuoden", "kanssa", "hänen", "s.", "jälkeen", "the",
        ),
        min_avg_word_length=3.0,
        max_avg_word_length=14.0,
        max_non_alpha_words_ratio=0.755,
        dup_line_frac=0.293,
        top_n_grams=((2, 0.253), (3, 0.202), (4, 0.179)),
        dup_n_grams=((5, 0.153), (6, 0.143), (7, 0.133), (8, 0.122), (9, 0.112), (10, 0.101)),
        line_punct_thr=0.114,
        new_line_ratio=0.161,
    ),
    # configs/ell_Grek.yml @ 05e6729
    "el": LanguageFilterConfig(
        language_score=0.826,
        stopwords=(
            "του", "και", "το", "της", "η", "την", "από", "ο", "με", "τον", "να", "που", "των", "στην", "για", "στο",
            "σε", "είναι", "τη", "τα", "οι",
        ),
        min_avg_word_length=3.0,
        max_avg_word_length=11.0,
        max_non_alpha_words_ratio=0.809,
        dup_line_frac=0.31,
        top_n_grams=((2, 0.194), (3, 0.175), (4, 0.156)),
        dup_n_grams=((5, 0.174), (6, 0.163), (7, 0.153), (8, 0.142), (9, 0.13), (10, 0.119)),
        line_punct_thr=0.167,
        new_line_ratio=0.116,
    ),
    # configs/heb_Hebr.yml @ d331bee
    "he": LanguageFilterConfig(
        language_score=0.9,
        stopwords=("של", "את", "על", "הוא", "עם", "בשנת", "גם", "היה", "היא", "לאחר", "לא", "ידי", "בין", "או", "כי"),
        min_avg_word_length=2.0,
        max_avg_word_length=9.0,
        max_non_alpha_words_ratio=0.799,
        dup_line_frac=0.34,
        top_n_grams=((2, 0.239), (3, 0.202), (4, 0.173)),
        dup_n_grams=((5, 0.16), (6, 0.151), (7, 0.14), (8, 0.129), (9, 0.118), (10, 0.108)),
        line_punct_thr=0.2,
        new_line_ratio=0.126,
    ),
    # configs/hin_Deva.yml @ 05e6729
    "hi": LanguageFilterConfig(
        language_score=0.692,
        stopwords=("के", "में", "है", "की", "और", "से", "का", "को", "एक", "हैं", "पर"),
        min_avg_word_length=2.0,
        max_avg_word_length=21.0,
        max_non_alpha_words_ratio=0.837,
        dup_line_frac=0.206,
        top_n_grams=((2, 0.208), (3, 0.198), (4, 0.161)),
        dup_n_grams=((5, 0.135), (6, 0.125), (7, 0.116), (8, 0.108), (9, 0.099), (10, 0.09)),
        line_punct_thr=0.091,
        new_line_ratio=0.316,
    ),
    # configs/ben_Beng.yml @ d331bee
    "bn": LanguageFilterConfig(
        language_score=0.872,
        stopwords=("এবং", "ও", "হয়", "করে", "একটি", "তিনি", "করা", "থেকে"),
        min_avg_word_length=3.0,
        max_avg_word_length=24.0,
        max_non_alpha_words_ratio=0.8,
        dup_line_frac=0.203,
        top_n_grams=((2, 0.177), (3, 0.158), (4, 0.147)),
        dup_n_grams=((5, 0.118), (6, 0.108), (7, 0.099), (8, 0.09), (9, 0.082), (10, 0.073)),
        line_punct_thr=0.125,
        new_line_ratio=0.171,
    ),
    # configs/fas_Arab.yml @ 05e6729
    # Persian is fas_Arab in FineWeb-2 (there is no pes_Arab file).
    "fa": LanguageFilterConfig(
        language_score=0.85,
        stopwords=("در", "و", "،", "به", "از", "که", "است", "این", "را", "با", "یک"),
        min_avg_word_length=2.0,
        max_avg_word_length=9.0,
        max_non_alpha_words_ratio=0.812,
        dup_line_frac=0.246,
        top_n_grams=((2, 0.189), (3, 0.164), (4, 0.143)),
        dup_n_grams=((5, 0.157), (6, 0.147), (7, 0.137), (8, 0.127), (9, 0.117), (10, 0.107)),
        line_punct_thr=0.2,
        new_line_ratio=0.15,
    ),
    # configs/fil_Latn.yml @ 05e6729
    # Tagalog is fil_Latn in FineWeb-2 (GlotLID's label; there is no tgl_Latn file).
    "tl": LanguageFilterConfig(
        language_score=0.68,
        stopwords=("ng", "sa", "ang", "na", "mga", "ay", "at", "isang", "noong"),
        min_avg_word_length=3.0,
        max_avg_word_length=12.0,
        max_non_alpha_words_ratio=0.821,
        dup_line_frac=0.263,
        top_n_grams=((2, 0.286), (3, 0.228), (4, 0.179)),
        dup_n_grams=((5, 0.15), (6, 0.141), (7, 0.129), (8, 0.119), (9, 0.11), (10, 0.1)),
        line_punct_thr=0.091,
        new_line_ratio=0.159,
    ),
    # configs/mya_Mymr.yml @ d331bee
    "my": LanguageFilterConfig(
        language_score=0.839,
        stopwords=(
            "သည်", "များ", "ကို", "တွင်", "ဖြစ်", "၏", "သော", "ခဲ့", "နှင့်", "ရှိ", "တို့", "မှာ", "ဦး", "၌", "က", "မ",
            "မှ",
        ),
        min_avg_word_length=2.0,
        max_avg_word_length=21.0,
        max_non_alpha_words_ratio=0.75,
        dup_line_frac=0.278,
        top_n_grams=((2, 0.161), (3, 0.152), (4, 0.133)),
        dup_n_grams=((5, 0.167), (6, 0.155), (7, 0.145), (8, 0.134), (9, 0.124), (10, 0.113)),
        line_punct_thr=0.0,
        new_line_ratio=0.07,
    ),
    # configs/khm_Khmr.yml @ d331bee
    "km": LanguageFilterConfig(
        language_score=0.3,
        stopwords=("មាន", "បាន", "ដែល", "ជា", "និង", "នៅ", "របស់", "ក្នុង", "ថា", "នេះ", "នៃ", "ហើយ", "ទៅ", "ដោយ"),
        min_avg_word_length=2.0,
        max_avg_word_length=13.0,
        max_non_alpha_words_ratio=0.905,
        dup_line_frac=0.917,
        top_n_grams=((2, 0.594), (3, 0.523), (4, 0.438)),
        dup_n_grams=((5, 0.175), (6, 0.16), (7, 0.148), (8, 0.135), (9, 0.121), (10, 0.109)),
        line_punct_thr=0.0,
        new_line_ratio=0.361,
    ),
    # configs/lao_Laoo.yml @ 05e6729
    # The first stop word is U+200B ZERO WIDTH SPACE, as in the yml.
    "lo": LanguageFilterConfig(
        language_score=0.691,
        stopwords=("\u200b", "ແລະ", "ໃນ", "ຂອງ", "ເປັນ", "ທີ່", "ໄດ້", "ມີ"),
        min_avg_word_length=2.0,
        max_avg_word_length=9.0,
        max_non_alpha_words_ratio=0.85,
        dup_line_frac=0.327,
        top_n_grams=((2, 0.198), (3, 0.175), (4, 0.143)),
        dup_n_grams=((5, 0.187), (6, 0.175), (7, 0.163), (8, 0.149), (9, 0.135), (10, 0.123)),
        line_punct_thr=0.0,
        new_line_ratio=0.2,
    ),
}
# fmt: on


def config_for(lang: str) -> LanguageFilterConfig:
    """Settings for a lid.176 language code; ``DEFAULT_CONFIG`` for a language not in the table."""
    return LANGUAGE_CONFIGS.get(lang, DEFAULT_CONFIG)
