"""Every stage in pipelines.settings.STAGES: its command line and its asset's Launchpad config are the same settings
(names, defaults, descriptions), and the demo profile is valid run config. A stage joins by adding one line to
STAGES (its main must build its parser with the settings and parse it with parse_stage_args or parse_settings)."""

import argparse
import dataclasses
import importlib
import subprocess
import sys
import typing

import dagster as dg
import pytest

from dagster_project.definitions import defs
from dagster_project.profiles import run_config
from pipelines import settings as st

ASSETS = sorted(st.STAGES)


class _Captured(Exception):
    def __init__(self, parser):
        self.parser = parser


def stage_parser(asset: str, monkeypatch):
    """The parser the stage's own ``main`` builds (caught as it is handed to parse_stage_args or parse_settings,
    before any parsing, so the stage's required run options do not matter), and the settings it gives when no
    settings flag is on the command line. A stage that is a command of its module is registered as
    ``"<module> <command>"`` (``pipelines.mixing index``)."""
    module_name, *command = st.STAGES[asset][0].split()
    module = importlib.import_module(module_name)
    names = [name for name in ("parse_stage_args", "parse_settings") if hasattr(module, name)]
    assert names, f"{module.__name__}.main parses with neither parse_stage_args nor parse_settings"

    def capture(parser, argv=None):
        raise _Captured(parser)

    for name in names:
        monkeypatch.setattr(module, name, capture)
    with pytest.raises(_Captured) as caught:
        module.main(command)
    parser = caught.value.parser
    defaults = {a.dest: a.default for a in parser._actions if a.default is not argparse.SUPPRESS}
    namespace = argparse.Namespace(**{**defaults, **parser._defaults})
    return parser, st.settings_from_args(parser, namespace)


@pytest.mark.parametrize("asset", ASSETS)
def test_command_line_exposes_the_settings(asset, monkeypatch):
    cls = st.stage_settings(asset)
    parser, settings = stage_parser(asset, monkeypatch)
    assert settings == cls()  # no flags: the recipe values
    group = next(g for g in parser._action_groups if g.title == "settings")
    dests = {action.dest: action for action in group._group_actions}
    assert set(dests) == set(cls.model_fields) | {"settings_config", "settings_profile"}
    for name, field in cls.model_fields.items():
        action = dests[name]
        assert action.option_strings[0] == "--" + name.replace("_", "-")
        shown = st._show(st.default_of(field))
        assert action.help.startswith(f"{st.field_doc(field)} (default: {shown}".replace("%", "%%")), name


@pytest.mark.parametrize("asset", ASSETS)
def test_launchpad_config_is_the_same_settings(asset):
    cls = st.stage_settings(asset)
    assets_def = defs.resolve_assets_def(asset)
    fields = assets_def.op.config_schema.config_type.fields
    config_class = typing.get_type_hints(assets_def.op.compute_fn.decorated_fn)["config"]
    assert config_class.SETTINGS_CLASS is cls
    assert set(fields) == set(cls.model_fields) | set(config_class.ASSET_ONLY_FIELDS)
    for name, field in cls.model_fields.items():
        assert fields[name].default_value == st.default_of(field), name
        assert fields[name].description == st.field_doc(field), name
    assert st.to_settings(cls, config_class()) == cls()


def test_help_of_a_stage_shows_a_fields_doc():
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.dedup", "--help"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "--rows INT MinHash values per band (bands x rows permutations in all). (default: 8)" in text
    assert "--exact, --no-exact" in text and "--settings-profile NAME" in text


def test_stage_constants_agree_with_the_settings():
    from pipelines.curation_settings import CurationStageSettings, DedupSettings, QualitySettings
    from pipelines.dedup import DedupConfig
    from pipelines.quality_profiles import PROFILE_MODES
    from pipelines.readers import DEFAULT_MAX_DOC_BYTES

    assert CurationStageSettings().max_doc_bytes == DEFAULT_MAX_DOC_BYTES
    assert typing.get_args(QualitySettings.model_fields["profile"].annotation) == PROFILE_MODES
    assert dataclasses.asdict(DedupConfig()) == DedupSettings().model_dump(exclude={"max_doc_bytes"})


@pytest.mark.parametrize("group", ["curation", "synthesis", "pretraining", "post_training"])
def test_demo_profile_is_valid_run_config(group):
    config = run_config("demo", f"group:{group}")
    assert config["ops"], group
    job = defs.resolve_implicit_global_asset_job_def()
    dg.validate_run_config(job, config)


def test_asset_options_reach_the_asset_but_not_the_command_line(tmp_path):
    from pipelines.settings import profile_values

    profile = tmp_path / "p.toml"
    profile.write_text("[sft_model]\nepochs = 3\n[sft_model.asset]\ncheck_min_stop_share = 0.5\n")
    assert run_config(str(profile))["ops"]["sft_model"]["config"] == {"epochs": 3, "check_min_stop_share": 0.5}
    assert profile_values(str(profile), "sft_model") == {"epochs": 3}
    dg.validate_run_config(defs.resolve_implicit_global_asset_job_def(), run_config(str(profile)))
    profile.write_text("[sft_model.asset]\nno_such_option = 1\n")  # Dagster checks the asset's options
    with pytest.raises(dg.DagsterInvalidConfigError, match="no_such_option"):
        dg.validate_run_config(defs.resolve_implicit_global_asset_job_def(), run_config(str(profile)))


def test_a_stage_reads_its_profile_table(tmp_path, monkeypatch):
    profile = tmp_path / "small.toml"
    profile.write_text("[deduplicated_documents]\nbands = 3\nrows = 2\n[raw_documents]\nmax_doc_bytes = 7\n")
    parser, _ = stage_parser("deduplicated_documents", monkeypatch)
    args, _ = importlib.import_module("pipelines.beam_stage").parse_stage_args(
        parser, ["--input", "i", "--output", "o", "--settings-profile", str(profile), "--rows", "4"]
    )
    assert (args.settings.bands, args.settings.rows, args.settings.max_doc_bytes) == (3, 4, 10_000_000)


def test_profiles_command_prints_the_run_config(tmp_path):
    import yaml

    proc = subprocess.run(
        [sys.executable, "-m", "dagster_project.profiles", "demo", "--select", "group:pretraining"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout) == run_config("demo", "group:pretraining")
    bad = tmp_path / "bad.toml"
    bad.write_text("[deduplicated_documents]\nbands = 0\n")
    proc = subprocess.run(
        [sys.executable, "-m", "dagster_project.profiles", str(bad)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2 and "[deduplicated_documents]: bands=0: must be >= 1" in proc.stderr
