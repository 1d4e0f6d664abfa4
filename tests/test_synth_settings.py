"""The synthesis stages' settings (synth/settings.py): one definition per setting, the light module agrees with the
stage modules' constants, sft_data's flat fields are generated from the method models, and the command lines
show and take them."""

import pytest

from pipelines.settings import default_of, field_doc
from synth import SFT_METHODS
from synth import settings as ss


def test_light_constants_agree_with_the_stage_modules():
    from synth.labels.rubric import RELAXED_THRESHOLD, STRICT_THRESHOLD
    from synth.rephrase import STYLES
    from synth.sft.constitutional import PRINCIPLES
    from synth.sft.math_rejection import MATH_LANGUAGES

    assert (ss.STRICT_THRESHOLD, ss.RELAXED_THRESHOLD) == (STRICT_THRESHOLD, RELAXED_THRESHOLD)
    assert ss.REPHRASE_STYLES == tuple(STYLES)
    assert ss.PRINCIPLE_IDS == tuple(PRINCIPLES)
    assert ss.MATH_LANGUAGES == MATH_LANGUAGES


def test_stage_configs_are_the_settings_plus_run_inputs():
    from synth.preference import PreferenceConfig
    from synth.rephrase import RephraseConfig
    from synth.sft.code_execution import CodeConfig
    from synth.sft.constitutional import ConstitutionalConfig
    from synth.sft.instruction import InstructionConfig
    from synth.sft.math_rejection import MathConfig
    from synth.sft.repurpose import RepurposeConfig

    inputs = {"input_dir", "seeds_path", "template_version", "judge_template_version"}
    for config, settings in [
        (InstructionConfig, ss.InstructionSettings),
        (MathConfig, ss.MathSettings),
        (CodeConfig, ss.CodeSettings),
        (RepurposeConfig, ss.RepurposeSettings),
        (ConstitutionalConfig, ss.ConstitutionalSettings),
        (RephraseConfig, ss.RephraseSettings),
        (PreferenceConfig, ss.PreferenceSettings),
    ]:
        assert issubclass(config, settings)
        extra = set(config.model_fields) - set(settings.model_fields)
        assert extra <= inputs, (config, extra)
        assert config().model_dump(include=set(settings.model_fields)) == settings().model_dump()


def test_sft_data_fields_are_generated_from_the_method_models():
    fields = ss.SftDataSettings.model_fields
    expected = {"methods"} | {
        f"{method}_{name}" for method, cls in ss.SFT_METHOD_SETTINGS.items() for name in cls.model_fields
    }
    assert set(fields) == expected
    for method, cls in ss.SFT_METHOD_SETTINGS.items():
        for name, field in cls.model_fields.items():
            flat = fields[f"{method}_{name}"]
            assert default_of(flat) == default_of(field)
            assert field_doc(flat) == f"{method}: {field_doc(field)}"
    settings = ss.SftDataSettings(math_rejection_num_problems=3, code_execution_task_names=["fizzbuzz"])
    assert settings.method_settings("math_rejection") == ss.MathSettings(num_problems=3)
    assert settings.method_settings("code_execution").task_names == ["fizzbuzz"]
    assert settings.chosen() == list(SFT_METHODS)
    assert ss.SftDataSettings(methods=["constitutional", "instruction"]).chosen() == ["instruction", "constitutional"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"methods": ["instruction", "poetry"]}, "unknown SFT methods ['poetry']"),
        ({"methods": []}, "methods=: must hold at least 1 item"),
        ({"constitutional_principles": ["kind"]}, "unknown principles ['kind']"),
        ({"math_rejection_samples_per_problem": 0}, "math_rejection_samples_per_problem=0: must be >= 1"),
    ],
)
def test_bad_sft_settings_are_refused_naming_the_field(values, message):
    with pytest.raises(ValueError) as caught:
        ss.SftDataSettings(**values)
    assert message.replace("methods=: ", "methods=[]: ") in str(caught.value) or message in str(caught.value)


def test_other_rules():
    with pytest.raises(ValueError, match="must not exceed"):
        ss.TierSettings(strict_threshold=2.0, relaxed_threshold=3.0)
    with pytest.raises(ValueError, match="num_responses=1: must be >= 2"):
        ss.PreferenceSettings(num_responses=1)
    with pytest.raises(ValueError, match="unknown styles"):
        ss.RephraseSettings(styles=["haiku"])
    with pytest.raises(ValueError, match="heldout_share=1: must be < 1"):
        ss.LabelSettings(heldout_share=1.0)


def test_command_lines_show_and_take_the_settings(capsys):
    from synth.labels.__main__ import main as labels_main
    from synth.preference import main as preference_main
    from synth.sft.stage import main as sft_main

    with pytest.raises(SystemExit) as caught:
        sft_main(["--help"])
    assert caught.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--math-rejection-num-problems INT math_rejection: Math problems made" in text
    assert "--methods A,B,..." in text and "--settings-profile NAME" in text
    with pytest.raises(SystemExit):
        labels_main(["label", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--excerpt-tokens INT The teacher sees the first this many Qwen2 tokens" in text and "(default: 256)" in text
    with pytest.raises(SystemExit) as caught:
        preference_main(["--output", "x", "--num-responses", "1"])
    assert caught.value.code == 2
    assert "num_responses=1: must be >= 2" in capsys.readouterr().err


def test_run_sft_needs_documents_for_repurpose(tmp_path):
    from synth.sft.stage import run_sft

    with pytest.raises(ValueError, match="repurpose method needs curated documents"):
        run_sft(None, str(tmp_path), ss.SftDataSettings(methods=["repurpose"]))
