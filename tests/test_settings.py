"""pipelines.settings: one pydantic model -> validated values, a command line and a Dagster config class."""

import json
from typing import Literal

import dagster as dg
import pytest
from pydantic import Field, ValidationError

from pipelines import settings as st


class Demo(st.Settings):
    bands: int = Field(14, ge=1, description="LSH bands.")
    rate: float = Field(0.5, ge=0, le=1, description="Share kept.", json_schema_extra={"unit": "fraction"})
    mode: Literal["auto", "web"] = Field("auto", description="Profile mode.")
    languages: list[str] = Field(default_factory=lambda: ["en", "zh"], min_length=1, description="Languages to keep.")
    thresholds: dict[str, float] = Field(default_factory=dict, description="Per-language minimum scores.")
    default_threshold: float | None = Field(None, ge=0, le=1, description="One minimum score for all.")
    exact: bool = Field(True, description="Also remove exact duplicates.")


@pytest.fixture
def registered(monkeypatch):
    """Demo registered as the settings of asset 'demo_asset' (its section in a profile file)."""
    monkeypatch.setitem(st.STAGES, "demo_asset", ("tests.test_settings", f"{Demo.__module__}:{Demo.__qualname__}"))


@pytest.mark.parametrize(
    "values, message",
    [
        ({"bands": 0}, "bands=0: must be >= 1"),
        ({"bands": "1.5"}, "bands='1.5': must be an integer"),
        ({"rate": float("nan")}, "rate=nan: must be a finite number"),
        ({"rate": 2}, "rate=2: must be <= 1"),
        ({"mode": "fast"}, "mode='fast': must be one of 'auto' or 'web'"),
        ({"thresholds": {"de": "high"}}, "thresholds.de='high': must be a number"),
        ({"default_threshold": -1}, "default_threshold=-1: must be >= 0"),
        ({"languages": []}, "languages=[]: must hold at least 1 item(s)"),
        ({"band": 3}, "unknown setting 'band' (the settings are: bands, rate,"),
    ],
)
def test_a_bad_value_is_a_value_error_naming_field_value_and_rule(values, message):
    with pytest.raises(ValueError) as e:
        Demo(**values)
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_defaults_are_the_fields_and_settings_are_immutable():
    demo = Demo()
    assert (demo.bands, demo.languages, demo.thresholds, demo.default_threshold) == (14, ["en", "zh"], {}, None)
    with pytest.raises(ValidationError, match="frozen"):
        demo.bands = 3


def test_command_line_types(registered):
    parser = st.settings_parser(Demo, "demo")
    argv = ["--bands", "3", "--no-exact", "--languages", "en, de", "--thresholds", "de=0.3,fr=0.4"]
    args, demo = st.parse_settings(parser, [*argv, "--default-threshold", "0.2", "--mode", "web"])
    expected = Demo(bands=3, exact=False, languages=["en", "de"], thresholds={"de": 0.3, "fr": 0.4})
    assert demo == expected.model_copy(update={"default_threshold": 0.2, "mode": "web"})
    _, demo = st.parse_settings(parser, ["--thresholds", '{"de": 0.25}', "--default-threshold", "none", "--exact"])
    assert demo.thresholds == {"de": 0.25} and demo.default_threshold is None and demo.exact is True


def test_help_shows_doc_unit_and_default(registered, capsys):
    with pytest.raises(SystemExit):
        st.settings_parser(Demo, "demo").parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--rate NUMBER Share kept. Unit: fraction. (default: 0.5)" in text
    assert "--exact, --no-exact Also remove exact duplicates. (default: true)" in text
    assert "--languages A,B,... Languages to keep. (default: en,zh)" in text
    assert "In Dagster: the config of asset demo_asset." in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--bands", "0"], "error: bands=0: must be >= 1 (see demo --help)"),
        (["--mode", "fast"], "error: argument --mode: invalid choice: 'fast'"),
        (["--thresholds", "de"], "error: argument --thresholds: 'de' is not KEY=VALUE"),
    ],
)
def test_command_line_mistake_is_one_line_and_exit_2(registered, capsys, argv, message):
    parser = st.settings_parser(Demo, "demo")
    parser.prog = "demo"
    with pytest.raises(SystemExit) as e:
        st.parse_settings(parser, argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(message) and err.count("\n") == 1


def test_precedence_flags_over_config_over_profile_over_default(registered, tmp_path):
    profile = tmp_path / "small.toml"
    profile.write_text('[demo_asset]\nbands = 4\nrate = 0.1\nmode = "web"\n\n[other_asset]\nbands = 99\n')
    yaml_config = tmp_path / "run.yaml"
    yaml_config.write_text("rate: 0.2\nmode: auto\n")
    json_config = tmp_path / "run.json"
    json_config.write_text(json.dumps({"rate": 0.3}))
    parser = st.settings_parser(Demo, "demo")
    _, demo = st.parse_settings(parser, ["--settings-profile", str(profile)])
    assert (demo.bands, demo.rate, demo.mode) == (4, 0.1, "web")
    _, demo = st.parse_settings(parser, ["--settings-profile", str(profile), "--config", str(yaml_config)])
    assert (demo.bands, demo.rate, demo.mode) == (4, 0.2, "auto")
    argv = ["--settings-profile", str(profile), "--config", str(json_config), "--rate", "0.4"]
    _, demo = st.parse_settings(parser, argv)
    assert (demo.bands, demo.rate, demo.mode) == (4, 0.4, "web")
    _, demo = st.parse_settings(parser, [])
    assert demo == Demo()


def test_bad_config_file_or_profile_is_one_line(registered, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("bands = 0\n")
    parser = st.settings_parser(Demo, "demo")
    for argv, message in [
        (["--config", str(bad)], "bands=0: must be >= 1"),
        (["--config", str(tmp_path / "none.toml")], "No such file"),
        (["--settings-profile", "no-such-profile"], "no settings profile 'no-such-profile'"),
    ]:
        with pytest.raises(SystemExit) as e:
            st.parse_settings(parser, argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and err.count("\n") == 1, err


def test_dagster_config_has_the_same_fields_defaults_and_docs():
    config_class = st.dagster_config(Demo, max_rate=(float, Field(0.001, description="Asset check limit.")))
    assert issubclass(config_class, dg.Config) and config_class.ASSET_ONLY_FIELDS == ("max_rate",)

    @dg.asset
    def demo_asset(config: config_class) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"settings": st.to_settings(Demo, config).model_dump_json()})

    fields = demo_asset.op.config_schema.config_type.fields
    assert set(fields) == set(Demo.model_fields) | {"max_rate"}
    for name, field in Demo.model_fields.items():
        assert fields[name].default_value == st.default_of(field), name
        assert fields[name].description == st.field_doc(field), name
    assert fields["rate"].description == "Share kept. Unit: fraction."

    run_config = {"ops": {"demo_asset": {"config": {"bands": 3, "mode": "web", "thresholds": {"de": 0.3}}}}}
    result = dg.materialize([demo_asset], run_config=run_config)
    metadata = result.asset_materializations_for_node("demo_asset")[0].metadata
    assert Demo.model_validate_json(metadata["settings"].value) == Demo(bands=3, mode="web", thresholds={"de": 0.3})
    # the bounds hold in Dagster too: a run with bands=0 fails, naming the field
    bad = dg.materialize(
        [demo_asset], run_config={"ops": {"demo_asset": {"config": {"bands": 0}}}}, raise_on_error=False
    )
    assert not bad.success
    failure = next(e for e in bad.all_events if e.event_type_value == "STEP_FAILURE")
    assert "bands" in str(failure.event_specific_data.error)


def test_asset_only_field_may_not_shadow_a_setting():
    with pytest.raises(ValueError, match="already settings"):
        st.dagster_config(Demo, bands=(int, Field(3, description="x")))


def test_registry_resolves():
    for asset in st.STAGES:
        cls = st.stage_settings(asset)
        assert issubclass(cls, st.Settings) and asset in st.asset_names(cls)


def test_a_profile_names_the_asset_when_settings_are_shared():
    from training.pretrain_settings import PretrainSettings

    assert st.asset_names(PretrainSettings) == ["base_model", "long_context_model"]
    with pytest.raises(ValueError, match="demo:base_model, demo:long_context_model"):
        st.profile_section(PretrainSettings, "demo")
    assert st.profile_section(PretrainSettings, "demo:long_context_model") == ("demo", "long_context_model")
    parser = st.settings_parser(PretrainSettings)
    _, long = st.parse_settings(parser, ["--settings-profile", "demo:long_context_model"])
    assert (long.max_steps, long.micro_batch_size) == (8, 1)  # the [long_context_model] table of demo.toml
