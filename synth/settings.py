"""The settings of the synthesis stages, each defined once.

``python -m synth.labels label|train|score``, ``python -m synth.sft``, ``python -m synth.rephrase`` and
``python -m synth.preference`` generate their command lines from these models, and the Launchpad config of the
synthesis assets is ``dagster_config(<model>)`` (``pipelines.settings``); the defaults are the recipe's values
(the CPU demo's sizes are in ``dagster_project/profiles/demo.toml``). They live here, apart from the stage modules,
because the Dagster code location imports them at load time and the stage modules import pyarrow and the teacher's
backends: this module needs only pydantic.

Paths and the teacher (input and output folders, seed files, backend, model) are run options, not settings: the
stage modules add them to their own ``...Config`` (a subclass of the settings model here) or to their command line.

The ``sft_data`` asset runs five methods: ``SftDataSettings`` is generated from the five method models, one field
``<method>_<field>`` per method setting (``instruction_num_seeds``, ``math_rejection_max_new_tokens``, ...), plus
``methods``; ``SftDataSettings.method_settings(method)`` gives that method's own model back.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, create_model, field_validator, model_validator
from pydantic.fields import FieldInfo

from pipelines.settings import Settings
from synth import SFT_METHODS

# synth.labels.rubric holds the same two values (it imports the teacher's language table, so it is not light);
# tests/test_synth_settings.py checks they agree, as it checks the names below against the stage modules.
STRICT_THRESHOLD = 3.0
RELAXED_THRESHOLD = 2.0
REPHRASE_STYLES = ("wikipedia", "qa", "simple")  # synth.rephrase.STYLES
PRINCIPLE_IDS = ("harmless", "honest", "helpful", "respectful", "privacy")  # synth.sft.constitutional.PRINCIPLES
MATH_LANGUAGES = ("en", "zh", "de", "fr", "es")  # synth.sft.math_rejection.MATH_LANGUAGES


def _some_of(values: list[str], allowed: tuple[str, ...], name: str) -> list[str]:
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ValueError(f"unknown {name} {unknown}; choose from {', '.join(allowed)}")
    return values


# ------------------------------------------------------------------------------------------------ quality labels


class LabelSettings(Settings):
    """``python -m synth.labels label``, asset ``quality_labels``."""

    sample_size: int = Field(
        500,
        ge=1,
        description="Curated documents the teacher rates (0-5 rubric), stratified by language and domain. 500 leave "
        "~100 held-out labels at heldout_share 0.2: enough for a confidence interval of the classifier's agreement "
        "that excludes zero unless the agreement is weak (FineWeb-Edu rated 450k with a 70B model).",
        json_schema_extra={"unit": "documents"},
    )
    seed: int = Field(0, description="Sampling seed: which documents are rated.")
    temperature: float = Field(
        1.0,
        ge=1.0,
        description="Labels per (language, domain) stratum in proportion to its size ** (1 / temperature), every "
        "stratum one first: 1 is proportional (the held-out labels then measure agreement on the documents the "
        "tiers are cut from); larger values move labels to small languages and domains.",
    )
    excerpt_tokens: int = Field(
        256,
        ge=1,
        description="The teacher sees the first this many Qwen2 tokens of each document, so every rating costs the "
        "same whatever the script (the rubric around it adds 220-300 tokens).",
        json_schema_extra={"unit": "tokens"},
    )
    max_doc_chars: int | None = Field(
        None,
        ge=1,
        description="Also cut each document to this many characters before the token cut (none: tokens only).",
    )
    min_choice_mass: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Reject a rating (off_format) when the teacher put less than this probability on the digits 0-5 "
        "(the default teacher puts over 0.93 on them; a tiny random test model almost none). 0 keeps every rating.",
    )
    heldout_share: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description="Share of the labels held out of classifier training, exactly, to measure agreement with the "
        "teacher (the classifier check needs 10 or more).",
    )
    chunk_size: int = Field(
        32,
        ge=1,
        description="Documents per committed chunk (the unit of resumption); each chunk goes to the teacher as one "
        "call, which the transformers backend runs in batches.",
    )


class TierThresholds(Settings):
    """The two tiers: what the classifier's agreement is measured at, and where the tiers are cut."""

    strict_threshold: float = Field(
        STRICT_THRESHOLD, ge=0.0, le=5.0, description="Strict tier: quality score at least this (Qwen2's 7T set)."
    )
    relaxed_threshold: float = Field(
        RELAXED_THRESHOLD, ge=0.0, le=5.0, description="Relaxed tier: quality score at least this (the 12T set)."
    )

    @model_validator(mode="after")
    def _relaxed_below_strict(self):
        if self.relaxed_threshold > self.strict_threshold:
            raise ValueError(
                f"relaxed_threshold ({self.relaxed_threshold}) must not exceed "
                f"strict_threshold ({self.strict_threshold})"
            )
        return self

    def tiers(self) -> dict[str, float]:
        """Tier name -> minimum score."""
        return {"strict": self.strict_threshold, "relaxed": self.relaxed_threshold}


class ClassifierSettings(TierThresholds):
    """``python -m synth.labels train``, asset ``quality_classifier``."""

    max_chars: int = Field(
        2000, ge=1, description="Characters of a document the classifier reads.", json_schema_extra={"unit": "chars"}
    )
    epochs: int = Field(
        25,
        ge=1,
        description="fastText training epochs (thousands of labels need few; a few dozen need ~100 to move off the "
        "uniform prediction).",
    )
    lr: float = Field(0.5, gt=0.0, le=10.0, description="fastText learning rate.")
    dim: int = Field(32, ge=1, description="fastText vector size.")
    word_ngrams: int = Field(2, ge=1, description="fastText word n-grams.")
    min_count: int = Field(1, ge=1, description="fastText: words seen fewer times are dropped.")
    bucket: int = Field(
        100_000,
        ge=1,
        description="Hash buckets for word n-grams: model size ~ (words + bucket) x dim x 4 bytes (~13 MB here).",
    )
    minn: int = Field(0, ge=0, description="fastText: shortest character n-gram (0: none).")
    maxn: int = Field(0, ge=0, description="fastText: longest character n-gram (0: none).")
    seed: int = Field(0, description="fastText seed.")
    threads: int = Field(1, ge=1, description="fastText threads; 1 makes training reproducible bit for bit.")
    target: Literal["score_bins", "label", "rounded_score"] = Field(
        "score_bins",
        description="Training class: score_bins (the teacher's expected score cut into `bins` classes of equal size "
        "on the training labels; a class scores as its rows' mean teacher score), label (the teacher's most probable "
        "digit) or rounded_score (its rounded expected score). A small teacher's digit distribution is flat, so its "
        "most probable digit is noise; on the demo's 300 labels 5-fold Spearman's rho was 0.71-0.76 for score_bins "
        "and 0.20-0.23 for label.",
    )
    bins: int = Field(5, ge=2, le=20, description="Classes of target=score_bins.")
    confidence: float = Field(
        0.95,
        ge=0.5,
        lt=1.0,
        description="Level of the confidence interval of Spearman's rho between the classifier's and the teacher's "
        "scores on the held-out labels; the asset's check passes when that interval lies above zero.",
    )


class TierSettings(TierThresholds):
    """``python -m synth.labels score``, asset ``quality_tiers``."""


# -------------------------------------------------------------------------------------------------- SFT methods


class SamplingSettings(Settings):
    """What every teacher-sampling method reads the same way."""

    seed: int = Field(0, description="Which items are sampled, and the sampling seed.")
    temperature: float = Field(0.7, ge=0.0, description="Teacher sampling temperature.")
    top_p: float = Field(0.9, gt=0.0, le=1.0, description="Teacher nucleus sampling.")
    chunk_size: int = Field(8, ge=1, description="Items per committed chunk (the unit of resumption).")


def _languages(default: tuple[str, ...] = (), what: str = "items") -> Any:
    return Field(
        default_factory=lambda: list(default),
        description=f"Only {what} in these languages (ISO 639-1; empty: all).",
    )


_KEEP_TRUNCATED = "Keep texts cut off at the token limit (only for tiny demo budgets)."


class InstructionSettings(SamplingSettings):
    """Method ``instruction``: seed prompts -> new instructions, answered by the teacher."""

    num_seeds: int = Field(4, ge=1, description="Seed prompts turned into new instructions and answers.")
    languages: list[str] = _languages(what="seed prompts")
    max_new_tokens_instruction: int = Field(96, ge=1, description="Longest new instruction.")
    max_new_tokens_answer: int = Field(256, ge=1, description="Longest answer.")
    min_instruction_chars: int = Field(8, ge=0, description="Shorter instructions are rejected.")
    max_instruction_chars: int = Field(600, ge=1, description="Longer instructions are rejected.")
    min_answer_chars: int = Field(2, ge=0, description="Shorter answers are rejected.")
    max_answer_chars: int = Field(6000, ge=1, description="Longer answers are rejected.")
    keep_truncated: bool = Field(False, description=_KEEP_TRUNCATED)
    chunk_size: int = Field(16, ge=1, description="Items per committed chunk (the unit of resumption).")


class MathSettings(SamplingSettings):
    """Method ``math_rejection``: word problems with computed answers; samples kept when the answer matches."""

    num_problems: int = Field(64, ge=1, description="Math problems made (with reference answers) and sampled.")
    samples_per_problem: int = Field(4, ge=1, description="Samples per problem (rejection sampling).")
    max_kept_per_problem: int = Field(1, ge=1, description="Correct samples kept per problem.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Teacher nucleus sampling.")
    max_new_tokens: int = Field(512, ge=1, description="Longest answer (step-by-step reasoning).")
    languages: list[str] = Field(
        default_factory=lambda: list(MATH_LANGUAGES),
        min_length=1,
        description=f"Languages of the problems (some of {', '.join(MATH_LANGUAGES)}).",
    )
    chunk_size: int = Field(16, ge=1, description="Items per committed chunk (the unit of resumption).")

    @field_validator("languages")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        return _some_of(value, MATH_LANGUAGES, "math languages")


class CodeSettings(SamplingSettings):
    """Method ``code_execution``: programming tasks; solutions kept when the teacher's tests pass in the sandbox."""

    num_tasks: int | None = Field(None, ge=0, description="Built-in tasks used (none: all of them).")
    task_names: list[str] | None = Field(
        None, description="Only these built-in tasks (by function name), before num_tasks applies (none: all)."
    )
    max_doc_tasks: int = Field(
        40, ge=0, description="More tasks from documented functions in the curated source code (0: none)."
    )
    samples_per_task: int = Field(2, ge=1, description="Solutions sampled per task.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Teacher nucleus sampling.")
    max_new_tokens: int = Field(512, ge=1, description="Longest solution.")
    tests_max_new_tokens: int = Field(384, ge=1, description="Longest set of tests the teacher writes.")
    chunk_size: int = Field(16, ge=1, description="Items per committed chunk (the unit of resumption).")
    sandbox_cpu_s: float = Field(5, gt=0, description="Sandbox CPU limit per run.", json_schema_extra={"unit": "s"})
    sandbox_wall_s: float = Field(
        10, gt=0, description="Sandbox wall-clock limit per run.", json_schema_extra={"unit": "s"}
    )
    sandbox_memory_mb: int = Field(512, ge=1, description="Sandbox memory limit.", json_schema_extra={"unit": "MB"})
    sandbox_workers: int = Field(2, ge=1, description="Sandbox runs at a time.")


class RepurposeSettings(SamplingSettings):
    """Method ``repurpose``: long curated documents -> grounded question/answer pairs."""

    num_documents: int = Field(4, ge=1, description="Long curated documents turned into QA pairs.")
    min_chars: int = Field(
        1000, ge=0, description="Only documents at least this long.", json_schema_extra={"unit": "chars"}
    )
    excerpt_chars: int = Field(
        1500,
        ge=1,
        description="Longer documents are read from an excerpt this long.",
        json_schema_extra={"unit": "chars"},
    )
    exclude_domains: list[str] = Field(
        default_factory=lambda: ["code"], description="Documents of these domains are skipped."
    )
    languages: list[str] = _languages(what="documents")
    min_grounding: float = Field(
        0.6, ge=0.0, le=1.0, description="Share of the answer's content words that must occur in the document."
    )
    min_question_chars: int = Field(8, ge=0, description="Shorter questions are rejected.")
    max_new_tokens: int = Field(256, ge=1, description="Longest question and answer.")
    keep_truncated: bool = Field(False, description=_KEEP_TRUNCATED)


class ConstitutionalSettings(SamplingSettings):
    """Method ``constitutional``: responses critiqued and revised against written principles."""

    num_items: int = Field(4, ge=1, description="Responses critiqued and revised.")
    languages: list[str] = _languages(what="prompts")
    principles: list[str] = Field(
        default_factory=list, description=f"Principles to apply, some of {', '.join(PRINCIPLE_IDS)} (empty: all)."
    )
    principles_per_item: int = Field(0, ge=0, description="A seeded subset of the principles per item (0: all).")
    max_new_tokens_response: int = Field(
        256, ge=1, description="Longest first response (when prompts are answered first)."
    )
    max_new_tokens_critique: int = Field(192, ge=1, description="Longest critique.")
    max_new_tokens_revision: int = Field(320, ge=1, description="Longest revision.")
    keep_truncated: bool = Field(False, description=_KEEP_TRUNCATED)
    keep_unchanged: bool = Field(
        True,
        description="Keep a revision identical to the original (counted as unchanged). sft_data revises the "
        "instruction method's answers and then never keeps one: it would be that row again.",
    )

    @field_validator("principles")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        return _some_of(value, PRINCIPLE_IDS, "principles")


SFT_METHOD_SETTINGS: dict[str, type[Settings]] = {
    "instruction": InstructionSettings,
    "math_rejection": MathSettings,
    "code_execution": CodeSettings,
    "repurpose": RepurposeSettings,
    "constitutional": ConstitutionalSettings,
}
assert tuple(SFT_METHOD_SETTINGS) == SFT_METHODS


class _SftData(Settings):
    methods: list[str] = Field(
        default_factory=lambda: list(SFT_METHODS),
        min_length=1,
        description=f"Methods to run, some of {', '.join(SFT_METHODS)} (run in that order: constitutional revises "
        "instruction's answers when both run).",
    )

    @field_validator("methods")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        return _some_of(value, SFT_METHODS, "SFT methods")

    @model_validator(mode="after")
    def _each_method_valid(self):
        for method in SFT_METHODS:
            self.method_settings(method)  # a cross-field rule of a method fails here, naming its fields
        return self

    def method_settings(self, method: str) -> Settings:
        """The settings of one method, from its ``<method>_<field>`` fields."""
        cls = SFT_METHOD_SETTINGS[method]
        return cls(**{name: getattr(self, f"{method}_{name}") for name in cls.model_fields})

    def chosen(self) -> list[str]:
        """The chosen methods in running order."""
        return [m for m in SFT_METHODS if m in self.methods]


def _method_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for method, cls in SFT_METHOD_SETTINGS.items():
        for name, field in cls.model_fields.items():
            fields[f"{method}_{name}"] = (
                field.annotation,
                FieldInfo.merge_field_infos(field, description=f"{method}: {field.description}"),
            )
    return fields


SftDataSettings = create_model(
    "SftDataSettings",
    __base__=_SftData,
    __module__=__name__,
    __doc__="``python -m synth.sft``, asset ``sft_data``: the methods to run and each method's settings, "
    "generated from the method models (``<method>_<field>``).",
    **_method_fields(),
)


# --------------------------------------------------------------------------------- rephrasing and preferences


class RephraseSettings(SamplingSettings):
    """``python -m synth.rephrase``, asset ``synthetic_pretraining_data``."""

    num_documents: int = Field(2, ge=1, description="Curated documents rephrased.")
    styles: list[str] = Field(
        default_factory=lambda: list(REPHRASE_STYLES),
        min_length=1,
        description=f"Rephrasing styles, some of {', '.join(REPHRASE_STYLES)} (one per document, in turn).",
    )
    min_chars: int = Field(
        200, ge=0, description="Only documents at least this long.", json_schema_extra={"unit": "chars"}
    )
    max_input_chars: int = Field(
        1500,
        ge=1,
        description="Longer documents are rephrased from an excerpt this long.",
        json_schema_extra={"unit": "chars"},
    )
    exclude_domains: list[str] = Field(
        default_factory=lambda: ["code", "synthetic"], description="Documents of these domains are skipped."
    )
    languages: list[str] = _languages(what="documents")
    max_new_tokens: int = Field(384, ge=1, description="Longest rephrasing.")
    min_output_chars: int = Field(80, ge=0, description="Shorter rephrasings are rejected.")
    min_length_ratio: float = Field(
        0.2, ge=0.0, description="Rephrasings shorter than this share of the input are rejected."
    )
    max_copy_overlap: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="Rephrasings with more of their n-grams found in the input are rejected (copies).",
    )
    keep_truncated: bool = Field(False, description=_KEEP_TRUNCATED)

    @field_validator("styles")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        return _some_of(value, REPHRASE_STYLES, "styles")


class PreferenceSettings(SamplingSettings):
    """``python -m synth.preference``, asset ``preference_pairs``."""

    num_prompts: int = Field(4, ge=1, description="Prompts answered several times and judged.")
    num_responses: int = Field(4, ge=2, description="Responses sampled per prompt (2 or more make a pair).")
    languages: list[str] = _languages(what="prompts")
    temperature: float = Field(0.8, ge=0.0, description="Teacher sampling temperature.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Teacher nucleus sampling.")
    max_new_tokens: int = Field(256, ge=1, description="Longest response (truncated ones are not judged).")
    tie_margin: float = Field(0.25, ge=0.0, description="Pairs whose judge scores differ less are dropped as ties.")
    min_choice_mass: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="A judgement counts only if the judge put this much probability on the digits 1-5.",
    )
    keep_truncated: bool = Field(False, description=_KEEP_TRUNCATED)
