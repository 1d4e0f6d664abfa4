"""One typed settings model per stage; its command line and its Dagster Launchpad config are generated from it.

A stage declares its settings once, as a pydantic model subclassing ``Settings``::

    class DedupSettings(Settings):
        bands: int = Field(14, ge=1, description="LSH bands (buckets per document).")
        exact: bool = Field(True, description="Also remove exact duplicates of the normalized text.")

- ``settings_parser(DedupSettings, description)``: an argparse parser with ``--bands`` (help: the description,
  unit and default), ``--exact/--no-exact``, ``--config FILE`` (JSON, TOML or YAML holding field values) and
  ``--settings-profile NAME`` (the stage's section of ``dagster_project/profiles/NAME.toml``, or of a file path).
  Precedence: flags > ``--config`` > ``--settings-profile`` > the field's default (the recipe value).
- ``dagster_config(DedupSettings)``: a ``dg.Config`` class with the same field names, types, defaults and
  descriptions, so the Launchpad documents what ``--help`` documents; ``to_settings`` maps an instance back.

The profile option is ``--settings-profile`` and not ``--profile`` because the quality stage has had a
``--profile auto|web`` setting (its domain-profile mode) since before this module; one name for one meaning on
every stage.

A bad value raises a ``ValueError`` naming the field, the value and the rule (``bands=0: must be >= 1``); the
command line reports it as one line, ``error: ...`` with exit status 2, like every other argument mistake.

Run options that are not settings (input and output paths, workers, Beam flags) stay the stage's own arguments:
in Dagster they belong to resources. Light by design: pydantic and the standard library; dagster is imported
inside ``dagster_config``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import tomllib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

PROFILES_DIR = Path(__file__).resolve().parents[1] / "dagster_project" / "profiles"

# The registry: Dagster asset name -> (module run as ``python -m <module>``, "<module>:<Settings class>").
# Strings, so reading it imports nothing; ``stage_settings`` resolves the class. A stage joins by adding a line
# (tests/test_config_parity.py then checks its command line against its Launchpad config).
STAGES: dict[str, tuple[str, str]] = {
    "raw_documents": ("pipelines.ingest", "pipelines.curation_settings:IngestSettings"),
    "language_filtered_documents": ("pipelines.langid", "pipelines.curation_settings:LanguageIdSettings"),
    "quality_filtered_documents": ("pipelines.quality", "pipelines.curation_settings:QualitySettings"),
    "deduplicated_documents": ("pipelines.dedup", "pipelines.curation_settings:DedupSettings"),
    "mixture_index": ("pipelines.mixing index", "pipelines.mixing_settings:MixtureIndexSettings"),  # a command
    "mixture_search": ("training.mixture_search", "pipelines.mixing_settings:SearchSettings"),
    "pretraining_mixture": ("pipelines.mixing", "pipelines.mixing_settings:MixtureSettings"),
    "long_context_mixture": ("pipelines.mixing", "pipelines.mixing_settings:MixtureSettings"),
    "base_model": ("training.pretrain", "training.pretrain_settings:PretrainSettings"),
    "long_context_model": ("training.pretrain", "training.pretrain_settings:PretrainSettings"),
    "sft_model": ("training.sft", "training.sft:SftSettings"),
    "reward_model": ("training.reward_model", "training.reward_model:RewardModelSettings"),
    "dpo_model": ("training.dpo", "training.dpo:DpoSettings"),
    "online_dpo_model": ("training.online_dpo", "training.online_dpo:OnlineDpoSettings"),
    "post_training_evaluation": ("training.evaluate", "training.evaluate:EvaluateSettings"),
    "quality_labels": ("synth.labels.label", "synth.settings:LabelSettings"),
    "quality_classifier": ("synth.labels.classifier", "synth.settings:ClassifierSettings"),
    "quality_tiers": ("synth.labels.tiers", "synth.settings:TierSettings"),
    "sft_data": ("synth.sft.stage", "synth.settings:SftDataSettings"),
    "synthetic_pretraining_data": ("synth.rephrase", "synth.settings:RephraseSettings"),
    "preference_pairs": ("synth.preference", "synth.settings:PreferenceSettings"),
    "instruction_documents": ("synth.instruction_docs", "synth.instruction_docs:InstructionDocsSettings"),
    "demo_preference_pairs": ("synth.cheap_pairs", "synth.cheap_pairs:CheapPairSettings"),
}


def stage_settings(asset: str) -> type[Settings]:
    """The settings class registered for ``asset``."""
    module, _, name = STAGES[asset][1].partition(":")
    return getattr(importlib.import_module(module), name)


def asset_names(cls: type[Settings]) -> list[str]:
    """The assets a settings class is registered for (each one's section in a profile file); several assets may
    share one class (stage 1 and stage 2 of pretraining run the same recipe with other values)."""
    path = f"{cls.__module__}:{cls.__qualname__}"
    return [asset for asset, (_, settings) in STAGES.items() if settings == path]


def profile_section(cls: type[Settings], spec: str) -> tuple[str, str]:
    """``NAME`` or ``NAME:ASSET`` -> (profile, section); ASSET is needed when several assets share ``cls``."""
    name, _, asset = spec.rpartition(":") if spec.rpartition(":")[2] in STAGES else (spec, "", "")
    assets = asset_names(cls)
    if not assets:
        raise ValueError(f"{cls.__name__} is not in pipelines.settings.STAGES, so it has no profile section")
    if asset and asset not in assets:
        choices = ", ".join(assets)
        raise ValueError(f"--settings-profile {spec}: {asset} does not use {cls.__name__} (choose: {choices})")
    if not asset and len(assets) > 1:
        raise ValueError(
            f"--settings-profile {spec}: {cls.__name__} serves several assets; name one: "
            + ", ".join(f"{name}:{a}" for a in assets)
        )
    return name, asset or assets[0]


# ----------------------------------------------------------------------------------------------------- the model


class Settings(BaseModel):
    """Base of every stage's settings: unknown fields refused, NaN/inf refused, immutable once built."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, validate_default=True)

    def __init__(self, **values: Any):
        try:
            super().__init__(**values)
        except ValidationError as e:
            raise ValueError(explain(type(self), e)) from None


def unit(field: FieldInfo) -> str | None:
    extra = field.json_schema_extra
    return extra.get("unit") if isinstance(extra, dict) else None


def field_doc(field: FieldInfo) -> str:
    """The field's one-line description, with its unit: what ``--help`` and the Launchpad both show."""
    text = (field.description or "").strip()
    return f"{text} Unit: {unit(field)}." if unit(field) else text


def default_of(field: FieldInfo) -> Any:
    return field.get_default(call_default_factory=True)


def _num(value: Any) -> Any:
    """A float as a person writes it (7, 0.5, 1e-07), so ``7`` is not echoed back as ``7.0``."""
    return f"{value:g}" if isinstance(value, float) else value


_RULES = {
    "greater_than_equal": lambda c: f"must be >= {_num(c['ge'])}",
    "greater_than": lambda c: f"must be > {_num(c['gt'])}",
    "less_than_equal": lambda c: f"must be <= {_num(c['le'])}",
    "less_than": lambda c: f"must be < {_num(c['lt'])}",
    "literal_error": lambda c: f"must be one of {c['expected']}",
    "int_parsing": lambda c: "must be an integer",
    "int_from_float": lambda c: "must be an integer",
    "int_type": lambda c: "must be an integer",
    "float_parsing": lambda c: "must be a number",
    "float_type": lambda c: "must be a number",
    "finite_number": lambda c: "must be a finite number",
    "bool_parsing": lambda c: "must be true or false",
    "bool_type": lambda c: "must be true or false",
    "list_type": lambda c: "must be a list",
    "too_short": lambda c: f"must hold at least {c['min_length']} item(s)",
    "dict_type": lambda c: "must be a mapping of KEY=VALUE",
    "string_type": lambda c: "must be a string",
}


def explain(cls: type[BaseModel], error: ValidationError) -> str:
    """Pydantic's errors as ``field=value: rule`` parts, one sentence per bad field."""
    parts = []
    for e in error.errors():
        loc = [str(x) for x in e["loc"]]
        # a union (Optional) reports each member's failure: the member's name is noise for a reader
        loc = [x for x in loc if x not in ("float", "int", "str", "bool", "none", "list[str]") or x == loc[0]]
        name = ".".join(loc) or cls.__name__
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown setting {name!r} (the settings are: {', '.join(cls.model_fields)})")
            continue
        rule = _RULES[e["type"]](e.get("ctx") or {}) if e["type"] in _RULES else e["msg"][:1].lower() + e["msg"][1:]
        value = e.get("input")
        shown = repr(value) if isinstance(value, str) else _num(value)
        part = f"{name}={shown}: {rule}"
        if part not in parts and not any(p.startswith(f"{name}=") for p in parts):
            parts.append(part)
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------------ command line


def bounded(kind: type = int, low: float | None = None, high: float | None = None):
    """An argparse ``type`` that parses ``kind`` and refuses NaN and values outside [low, high], naming the range."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if value != value or (low is not None and value < low) or (high is not None and value > high):
            lo = "-inf" if low is None else low
            hi = "inf" if high is None else high
            raise argparse.ArgumentTypeError(f"{text} is outside the valid range [{lo}, {hi}]")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


class ArgumentParser(argparse.ArgumentParser):
    """argparse that takes no abbreviations and reports a mistake in one line (``error: ...``, exit 2)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0], True
    return annotation, False


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _key_values(text: str) -> dict[str, str]:
    """``KEY=VALUE,KEY=VALUE`` or a JSON object; values are checked by the model (so errors name the field)."""
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object: {e.msg}") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object")
        return value
    pairs = {}
    for part in _comma_list(text):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"{part!r} is not KEY=VALUE (write KEY=VALUE,KEY=VALUE or JSON)")
        pairs[key.strip()] = value.strip()
    return pairs


def _lenient(kind: type):
    """``kind(text)``, or the text itself when it is not one: the model then says what it must be."""

    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            return text

    parse.__name__ = kind.__name__
    return parse


def _maybe_none(parse):
    def parsed(text: str):
        return None if text.strip().lower() in ("none", "null") else parse(text)

    parsed.__name__ = getattr(parse, "__name__", "value")
    return parsed


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(map(str, value)) if value else "(empty)"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) if value else "(empty)"
    return "none" if value is None else str(value)


def _argument(name: str, field: FieldInfo) -> tuple[list[str], dict]:
    flag = "--" + name.replace("_", "-")
    annotation, optional = _strip_optional(field.annotation)
    doc = field_doc(field)
    help_text = f"{doc} (default: {_show(default_of(field))})".replace("%", "%%")
    kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
    origin = typing.get_origin(annotation)
    if annotation is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif origin is list:
        kwargs.update(type=_comma_list, metavar="A,B,...")
    elif origin is dict:
        kwargs.update(type=_key_values, metavar="KEY=VALUE,...")
    elif origin is Literal:
        choices = [str(c) for c in typing.get_args(annotation)]
        kwargs.update(choices=choices + (["none"] if optional else []), metavar="{" + ",".join(choices) + "}")
    else:
        kwargs["metavar"] = {int: "INT", float: "NUMBER", str: "TEXT"}.get(annotation, "VALUE")
        # numbers are converted here and checked by the model, so every error names the field the same way
        kwargs["type"] = _lenient(annotation) if annotation in (int, float) else str
    if optional and "type" in kwargs:
        kwargs["type"] = _maybe_none(kwargs["type"])
        kwargs["help"] = kwargs["help"][: -len(")")] + "; 'none' for none)"
    return [flag], kwargs


def settings_parser(
    cls: type[Settings], description: str | None = None, parser: argparse.ArgumentParser | None = None
) -> argparse.ArgumentParser:
    """An argparse parser for ``cls``'s fields plus ``--config`` and ``--settings-profile``; ``parse_settings``
    (or ``settings_from_args``) turns its result into a validated ``cls``. Pass ``parser`` to add the settings
    to a parser that already holds the stage's run options."""
    parser = parser or ArgumentParser(description=description)
    assets = asset_names(cls)
    group = parser.add_argument_group(
        "settings",
        f"{cls.__name__}: flags > --config > --settings-profile > the default shown (the recipe value)."
        + (f" In Dagster: the config of asset {', '.join(assets)}." if assets else ""),
    )
    for name, field in cls.model_fields.items():
        flags, kwargs = _argument(name, field)
        group.add_argument(*flags, **kwargs)
    group.add_argument(
        "--config",
        dest="settings_config",
        metavar="FILE",
        default=None,
        help="JSON, TOML or YAML file of setting values (field names as in --help, with underscores)",
    )
    group.add_argument(
        "--settings-profile",
        dest="settings_profile",
        metavar="NAME[:ASSET]",
        default=None,
        help=f"the [{'|'.join(assets) or 'section'}] table of {PROFILES_DIR.parent.name}/{PROFILES_DIR.name}/"
        "NAME.toml (e.g. demo: the CPU demo's sizes), or of a .toml file path"
        + ("; name the asset when several share these settings (NAME:ASSET)" if len(assets) > 1 else ""),
    )
    parser.set_defaults(settings_class=cls)
    return parser


def load_values(path: str | Path) -> dict:
    """Field values from a JSON, TOML or YAML file (by extension)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            values = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text) or {}
        elif suffix == ".json":
            values = json.loads(text)
        else:
            raise ValueError(f"{path}: a settings file must end in .json, .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: {e}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a table of setting values, got {type(values).__name__}")
    return values


ASSET_OPTIONS = "asset"
"""A profile table's sub-table (``[sft_model.asset]``) of options only the Dagster asset has (its checks, say):
merged into the asset's run config, never seen by the stage's command line."""


def profile_path(name: str) -> Path:
    """``name`` as a file path when it is one, else ``dagster_project/profiles/<name>.toml``."""
    if name.endswith(".toml") or "/" in name:
        return Path(name)
    return PROFILES_DIR / f"{name}.toml"


def profile_values(name: str, section: str) -> dict:
    """The ``[section]`` table of a profile (empty when the profile leaves that stage at the recipe values)."""
    path = profile_path(name)
    if not path.exists():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))
        raise ValueError(f"no settings profile {name!r}: {path} does not exist (known: {', '.join(known) or 'none'})")
    values = load_values(path).get(section, {})
    if not isinstance(values, dict):
        raise ValueError(f"{path}: [{section}] must be a table of setting values")
    return {k: v for k, v in values.items() if k != ASSET_OPTIONS}


def settings_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Settings:
    """The validated settings of a parsed command line; a bad value is reported as one line (exit 2)."""
    cls: type[Settings] = args.settings_class
    values: dict[str, Any] = {}
    try:
        if args.settings_profile:
            values.update(profile_values(*profile_section(cls, args.settings_profile)))
        if args.settings_config:
            values.update(load_values(args.settings_config))
        values.update({name: getattr(args, name) for name in cls.model_fields if hasattr(args, name)})
        return cls(**values)
    except (OSError, ValueError) as e:
        parser.error(str(e))


def parse_settings(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> tuple[argparse.Namespace, Settings]:
    """``parser.parse_args(argv)`` and the settings it gives."""
    args = parser.parse_args(argv)
    return args, settings_from_args(parser, args)


# ----------------------------------------------------------------------------------------------------- Dagster


def dagster_config(cls: type[Settings], name: str | None = None, **asset_only: tuple[Any, FieldInfo]) -> type:
    """A ``dg.Config`` class with ``cls``'s fields (names, types, defaults, bounds, descriptions with unit).

    ``asset_only``: fields that only the asset has (``name=(annotation, Field(...))``), e.g. an asset check's
    limit; they are listed in ``ASSET_ONLY_FIELDS`` of the class so the parity test knows them."""
    import dagster as dg
    from pydantic import create_model

    fields: dict[str, Any] = {}
    for field_name, field in cls.model_fields.items():
        # the default as a value, not a factory: Dagster shows a factory's default as empty in the Launchpad
        launchpad = FieldInfo.merge_field_infos(
            field, default=default_of(field), default_factory=None, description=field_doc(field), json_schema_extra=None
        )
        fields[field_name] = (field.annotation, launchpad)
    clash = set(asset_only) & set(fields)
    if clash:
        raise ValueError(f"asset-only fields {sorted(clash)} are already settings of {cls.__name__}")
    fields.update(asset_only)
    model = create_model(name or cls.__name__.removesuffix("Settings") + "Config", __base__=dg.Config, **fields)
    model.SETTINGS_CLASS = cls
    model.ASSET_ONLY_FIELDS = tuple(asset_only)
    model.__doc__ = f"Launchpad config generated from {cls.__module__}.{cls.__qualname__}."
    return model


def to_settings(cls: type[Settings], config: Any) -> Settings:
    """The stage settings held by a config instance made by ``dagster_config(cls)`` (asset-only fields left out)."""
    return cls(**{name: getattr(config, name) for name in cls.model_fields})
