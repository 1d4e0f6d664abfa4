"""Per-language thresholds of language ID and of the web quality chain, loaded from data files.

The values are data, not code: ``pipelines/thresholds/<table>.toml`` (package data), one table per stage with a
``[default]`` section and one section per lid.176 language code, every value written as
``key = { value = ..., source = "..." }``:

* ``langid.toml``       -- ``language_score``, the minimum lid.176 score (``pipelines.langid``).
* ``web_quality.toml``  -- stop words and the thresholds of datatrove's Gopher repetition, Gopher quality and
  FineWeb filters (``pipelines.filters.build_filter_chain``, the ``web`` profile).

The values come from FineWeb-2 (Penedo et al. 2025) per language and from FineWeb / datatrove for English and any
language without a section; each file's header and each value's ``source`` say which file and revision, and the
caveats (FineWeb-2 tuned ``language_score`` for GlotLID, not lid.176).

A stage puts the loaded values (not the path) into its config, so editing a value restarts that stage
(``pipelines.stage_dir.prepare_stage_dir``). ``QWEN2_THRESHOLDS_DIR``, or a stage's ``thresholds_dir``, points the
loader at another folder holding the same files (the tests edit a copy, never the packaged file).
"""

from __future__ import annotations

import functools
import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

# Data tuples below are packed by hand; the formatter would put one item per line.
# fmt: off
# The ~30 languages of the Qwen2 report, as the ISO 639-1 codes fastText lid.176 emits.
QWEN2_LANGUAGES: tuple[str, ...] = (
    "en", "zh", "es", "fr", "de", "ar", "ru", "ko", "ja", "th", "vi", "id", "ms", "it", "pt", "nl", "pl",
    "tr", "uk", "cs", "ro", "hu", "sv", "da", "fi", "el", "he", "hi", "bn", "fa", "tl", "my", "km", "lo",
)
# fmt: on

THRESHOLDS_DIR = Path(__file__).with_name("thresholds")
THRESHOLDS_ENV = "QWEN2_THRESHOLDS_DIR"
DEFAULT_SECTION = "default"
LANGID_TABLE = "langid"
WEB_QUALITY_TABLE = "web_quality"

# Every key a section of each table must set, and what kind of value it holds:
# "share" a number in [0, 1], "number" a number >= 0, "words" a list of strings, "ngrams" [[n, share], ...].
TABLE_KEYS: dict[str, dict[str, str]] = {
    LANGID_TABLE: {"language_score": "share"},
    WEB_QUALITY_TABLE: {
        "stopwords": "words",
        "min_avg_word_length": "number",
        "max_avg_word_length": "number",
        "max_non_alpha_words_ratio": "share",
        "dup_line_frac": "share",
        "top_n_grams": "ngrams",
        "dup_n_grams": "ngrams",
        "line_punct_thr": "share",
        "new_line_ratio": "number",
    },
}


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


@dataclass(frozen=True)
class ThresholdTable:
    """One stage's table as its data file states it: section (``default`` or a language) -> key -> value."""

    name: str
    path: str
    values: dict[str, dict]
    sources: dict[str, dict[str, str]]

    def section(self, lang: str) -> dict:
        """The values for a language: its own section, else ``[default]``."""
        return self.values.get(lang, self.values[DEFAULT_SECTION])

    def fingerprint(self) -> dict:
        """What goes into a stage's config: every section's values (the sources and the path do not change output)."""
        return {lang: dict(values) for lang, values in self.values.items()}


def thresholds_folder(folder: str | os.PathLike | None = None) -> Path:
    """``folder``, else ``$QWEN2_THRESHOLDS_DIR``, else the packaged ``pipelines/thresholds``."""
    return Path(folder or os.environ.get(THRESHOLDS_ENV) or THRESHOLDS_DIR)


def load_threshold_table(name: str, folder: str | os.PathLike | None = None) -> ThresholdTable:
    """The table ``<folder>/<name>.toml`` (see ``thresholds_folder``), checked: every value has a source, every
    section sets every key of ``TABLE_KEYS[name]`` and nothing else, and every value has the right kind."""
    if name not in TABLE_KEYS:
        raise ValueError(f"unknown threshold table {name!r}: expected one of {', '.join(TABLE_KEYS)}")
    path = thresholds_folder(folder) / f"{name}.toml"
    if not path.is_file():
        raise FileNotFoundError(
            f"threshold table {path} is missing (the package's pipelines/thresholds/{name}.toml; "
            f"{THRESHOLDS_ENV} or thresholds_dir must name a folder holding every table)"
        )
    stat = path.stat()
    return _load_table(name, str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _load_table(name: str, path: str, mtime_ns: int, size: int) -> ThresholdTable:
    # (mtime_ns, size) are part of the cache key only: an edited file is read again.
    with open(path, "rb") as f:
        try:
            raw = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: {e}") from None
    if DEFAULT_SECTION not in raw:
        raise ValueError(f"{path}: no [{DEFAULT_SECTION}] section (the values for languages without a section)")
    kinds = TABLE_KEYS[name]
    values: dict[str, dict] = {}
    sources: dict[str, dict[str, str]] = {}
    for lang, section in raw.items():
        if not isinstance(section, dict):
            raise ValueError(f"{path}: {lang} = ... must be a [{lang}] section of values")
        missing = [key for key in kinds if key not in section]
        unknown = [key for key in section if key not in kinds]
        problems = [f"lacks {', '.join(missing)}"] if missing else []
        if unknown:
            problems.append(f"has unknown key(s) {', '.join(unknown)} (expected {', '.join(kinds)})")
        if problems:
            raise ValueError(f"{path}: [{lang}] {'; '.join(problems)}")
        values[lang], sources[lang] = {}, {}
        for key, entry in section.items():
            where = f"{path}: [{lang}] {key}"
            if not isinstance(entry, dict) or "value" not in entry:
                raise ValueError(f'{where} must be {{ value = ..., source = "..." }}')
            source = entry.get("source")
            if not isinstance(source, str) or not source.strip():
                raise ValueError(f"{where} has no source: say where the value comes from")
            if set(entry) - {"value", "source"}:
                raise ValueError(f"{where}: only value and source are allowed, got {', '.join(sorted(entry))}")
            values[lang][key] = _checked(entry["value"], kinds[key], where)
            sources[lang][key] = source
    return ThresholdTable(name, path, values, sources)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _checked(value, kind: str, where: str):
    """The value as the filters take it (floats; tuples for lists), or ValueError saying what was expected."""
    if kind in ("share", "number"):
        if not _is_number(value) or value < 0 or (kind == "share" and value > 1):
            allowed = "[0, 1]" if kind == "share" else "[0, inf)"
            raise ValueError(f"{where} must be a number in {allowed}, got {value!r}")
        return float(value)
    if kind == "words":
        if not isinstance(value, list) or not all(isinstance(w, str) and w for w in value):
            raise ValueError(f"{where} must be a list of non-empty strings, got {value!r}")
        return tuple(value)
    pairs_ok = isinstance(value, list) and all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[0], int) and not isinstance(p[0], bool) and p[0] > 0
        and _is_number(p[1]) and 0 <= p[1] <= 1
        for p in value
    )  # fmt: skip
    if not pairs_ok:
        raise ValueError(f"{where} must be a list of [n, share] pairs (n > 0, share in [0, 1]), got {value!r}")
    return tuple((n, float(share)) for n, share in value)


def config_for(lang: str, folder: str | os.PathLike | None = None) -> LanguageFilterConfig:
    """Both tables' settings for a lid.176 language code (``[default]``'s for a language without a section)."""
    langid = load_threshold_table(LANGID_TABLE, folder).section(lang)
    quality = load_threshold_table(WEB_QUALITY_TABLE, folder).section(lang)
    return LanguageFilterConfig(**langid, **quality)
