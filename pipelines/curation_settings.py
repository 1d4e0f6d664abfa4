"""The settings of the curation stages (ingest, langid, quality, dedup), each defined once.

``python -m pipelines.<stage> --help`` and the Dagster Launchpad of the stage's asset are generated from these
models (``pipelines.settings``); the defaults are the recipe's values. They live here, apart from the stage
modules, because the Dagster code location imports them at load time and the stage modules import Beam,
pyarrow and the filter libraries: this module needs only pydantic and the threshold tables' language list.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipelines.lang_config import QWEN2_LANGUAGES
from pipelines.settings import Settings


class CurationStageSettings(Settings):
    """What every curation stage reads the same way."""

    max_doc_bytes: int = Field(
        10_000_000,
        ge=1,
        description="Documents larger than this are quarantined to errors/ instead of processed.",
        json_schema_extra={"unit": "bytes"},
    )


class IngestSettings(CurationStageSettings):
    """Ingest keeps every readable document: its only setting is the size limit."""


class LanguageIdSettings(CurationStageSettings):
    languages: list[str] = Field(
        default_factory=lambda: list(QWEN2_LANGUAGES),
        min_length=1,  # an empty list used to mean "the default" in the Launchpad: refused, not read as "all"
        description="ISO 639-1 codes to keep (default: the ~30 languages of Qwen2).",
    )
    keep_all_languages: bool = Field(
        False, description="Keep every language that passes its threshold (languages is then ignored)."
    )
    default_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="One minimum lid.176 score for every language (default: FineWeb-2's value per language).",
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="Per-language minimum lid.176 scores, over the table and default_threshold, e.g. de=0.6.",
    )

    def kept_languages(self) -> list[str] | None:
        """The languages to keep; None keeps every language that passes its threshold."""
        return None if self.keep_all_languages else list(self.languages)


class QualitySettings(CurationStageSettings):
    code_filter: bool = Field(True, description="Apply the StarCoder rules to source files (off: keep every one).")
    profile: Literal["auto", "web", "docs", "cjk"] = Field(
        "auto",
        description="auto: each document on its own domain profile; web/docs/cjk: every non-code document on that "
        "profile (web: the web chain as before profiles existed).",
    )


class DedupSettings(CurationStageSettings):
    bands: int = Field(14, ge=1, description="LSH bands (buckets per document); 14 x 8 as FineWeb.")
    rows: int = Field(8, ge=1, description="MinHash values per band (bands x rows permutations in all).")
    ngram: int = Field(5, ge=1, description="Words per shingle.", json_schema_extra={"unit": "words"})
    seed: int = Field(1, description="MinHash permutation seed.")
    exact: bool = Field(True, description="Also remove exact duplicates of the normalized text (off: MinHash only).")
