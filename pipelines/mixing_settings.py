"""The settings of the mixing stage (``pipelines.mixing index`` and ``select``) and of the proxy mixture search
(``training.mixture_search``), each defined once.

``python -m pipelines.mixing index --help``, ``python -m pipelines.mixing select --help``,
``python -m training.mixture_search --help`` and the Launchpad config of the mixture assets are generated from
these models (``pipelines.settings``); the defaults are the
recipe's values (the demo's smaller ones are in ``dagster_project/profiles/demo.toml``). They live apart from
the stage modules because the Dagster code location imports them at load time and the stages import Beam,
pyarrow and torch: this module needs only pydantic.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from pipelines.settings import Settings

DEFAULT_DOMAIN_WEIGHTS = {"web": 0.6, "code": 0.2, "math": 0.08, "synthetic": 0.07, "instruction": 0.05}


class MixtureIndexSettings(Settings):
    """The mixture index's settings (``pipelines.mixing index``, asset ``mixture_index``). Its other inputs are run
    options: the curated folders (``--input``; in Dagster the asset's ``inputs`` or ``quality_tier``), and the
    stage-1 and stage-2 contexts that make a document long or cut it (``--long-doc-tokens``/``--max-doc-tokens``;
    in Dagster the training resource's ``stage1_seq_len``/``long_seq_len``, so the index and the training agree)."""

    heldout_fraction: float = Field(
        0.02,
        ge=0,
        lt=1,
        description="Share of documents held out for validation, chosen by a hash of the id (a synthetic "
        "document's by its source document's id).",
    )


class MixtureWeights(Settings):
    """The shares a mixture gives domains and languages: what the proxy search chooses between candidates."""

    domain_weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_DOMAIN_WEIGHTS),
        description="Share of the budget per domain (web, code, math, synthetic, instruction). Domains without "
        "data are reported and their weight is spread over the rest.",
    )
    language_temperature: float = Field(
        3.0,
        gt=0,
        description="Within a domain, language l gets a share proportional to tokens_l ** (1 / T): 1 keeps the "
        "natural mix, larger values flatten it towards uniform (up-sampling low-resource languages).",
    )
    language_boost: dict[str, float] = Field(
        default_factory=dict, description="Extra multiplier on a language's share, e.g. zh=1.5."
    )

    @field_validator("domain_weights")
    @classmethod
    def _weights(cls, weights: dict[str, float]) -> dict[str, float]:
        if not weights or any(not w >= 0 for w in weights.values()):
            raise PydanticCustomError("weights", "must be non-empty and non-negative")
        if sum(weights.values()) <= 0:
            raise PydanticCustomError("weights", "sum to 0")
        return weights

    @field_validator("language_boost")
    @classmethod
    def _boost(cls, boost: dict[str, float]) -> dict[str, float]:
        if any(not w >= 0 for w in boost.values()):
            raise PydanticCustomError("boost", "values must be >= 0")
        return boost


class MixtureSettings(MixtureWeights):
    """A mixture's budget, repeats, shards and check: with the weights, the Launchpad fields of the mixture assets."""

    version: int = Field(
        1, ge=1, description="Bump when the weights change, so runs can be traced to the mixture they trained on."
    )
    token_budget: int = Field(
        2_000_000, gt=0, description="Qwen2 tokens in the mix (documents only, without separators)."
    )
    max_repeats: float = Field(
        4.0,
        ge=1,
        description="A bucket's documents are used at most this many times (1 = no repeats); a capped bucket's "
        "excess goes to the others.",
    )
    seed: int = Field(0, description="Chooses which documents fill fractional repeats, and the shuffle.")
    output_shards: int = Field(
        4, ge=1, description="Output Parquet shards (the tokenizer stage makes one packed shard from each)."
    )
    tolerance: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="Mix check: each bucket's realised tokens must be within this fraction of its target (or one "
        "document).",
    )


class MixtureConfig(MixtureSettings):
    """A pretraining mixture. Versioned: every realised mix records the config (and its hash) that made it. The
    name and the stage are the asset's (or the command line's); the rest are ``MixtureSettings``."""

    name: str = Field("default", description="Shown in reports and the proxy-model search.")
    long_documents_only: bool = Field(
        False, description="Stage-2 mix: only documents of at least the index's long_doc_tokens."
    )

    def to_dict(self) -> dict:
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: dict) -> MixtureConfig:
        unknown = sorted(set(data) - set(cls.model_fields))
        if unknown:
            raise ValueError(f"unknown mixture config keys {unknown}; known: {sorted(cls.model_fields)}")
        return cls(**data)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


TARGETS = ("equal", "natural")


class SearchSettings(Settings):
    """How every proxy model is trained and judged; the same for all candidates so their losses compare."""

    steps: int = Field(12, ge=1, description="Optimizer steps per proxy model.")
    micro_batch_size: int = Field(
        2, ge=1, description="Sequences per step (2 rows x 2 seeds costs what one proxy of 4 rows did)."
    )
    model_size: str = Field("proxy", description="Proxy model shape (see training.model_configs).")
    lr: float = Field(
        5e-2,
        gt=0,
        description="Peak learning rate of the proxy runs (short runs of tiny models learn fastest at a high rate).",
    )
    seed: int = Field(
        0, description="First proxy seed (seed, seed + 1 ...), and the seed of every candidate's mix and packing."
    )
    seeds: int = Field(
        2,
        ge=2,
        description="Proxy runs per candidate, one per seed: their spread is the noise a winner has to beat (at "
        "least 2, or the search cannot tell a winner from noise).",
    )
    target: Literal["equal", "natural"] = Field(
        "equal",
        description="Validation mix the candidates are judged on: equal (every domain the same weight, or "
        "target_domain_weights; inside a domain every language the same) or natural (held-out tokens).",
    )
    target_domain_weights: dict[str, float] = Field(
        default_factory=dict,
        description="With target equal: weight per domain (e.g. web=2,code=1); a domain left out weighs 0. Empty: "
        "every domain with held-out documents weighs the same.",
    )
    eval_tokens_per_bucket: int = Field(
        512,
        ge=0,
        description="Held-out tokens per bucket each proxy is scored on (documents in a fixed hash order); 0: all.",
    )
    tie_sigmas: float = Field(
        2.0,
        ge=0,
        description="A candidate ties the winner when the means differ by less than this many standard errors.",
    )

    @field_validator("target_domain_weights")
    @classmethod
    def _target_weights(cls, weights: dict[str, float]) -> dict[str, float]:
        if any(not w >= 0 for w in weights.values()) or (weights and sum(weights.values()) <= 0):
            raise PydanticCustomError("weights", "non-negative, not all 0")
        return weights


# What a search run takes as run options (in Dagster: from the resources), not as settings.
SEARCH_RUN_FIELDS = ("index", "work_dir", "seq_len", "workers")
# What the mixing stage takes as run options: the asset gives the name and the stage.
MIXTURE_RUN_FIELDS = ("name", "long_documents_only")


class SearchConfig(SearchSettings):
    """A search run: the settings plus the index, the work folder, the context and the workers (in Dagster these
    come from the resources)."""

    index: str = Field(
        "", description="Mixture index (pipelines.mixing index); its held-out documents are the validation set."
    )
    work_dir: str = Field("", description="Where each candidate's mix, shards, proxy runs and search.json go.")
    seq_len: int = Field(256, ge=8, description="Proxy context length (the stage-1 context).")
    workers: int | None = Field(None, ge=1, description="Beam worker processes for the data steps.")

    @field_validator("index", "work_dir")
    @classmethod
    def _given(cls, value: str, info: ValidationInfo) -> str:
        if not value:
            raise PydanticCustomError("missing_folder", "give a folder")
        return value

    @property
    def token_budget(self) -> int:
        # Document tokens to realise: what the proxy consumes, plus room for separators and the packing tail.
        return int(self.steps * self.micro_batch_size * self.seq_len * 1.1)
