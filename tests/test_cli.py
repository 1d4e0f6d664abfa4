"""Each stage runs alone as `python -m pipelines.<stage>`, with Beam flags passed through."""

import json
import subprocess
import sys


def _run(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=600)


def test_ingest_then_langid_from_the_command_line(crawl_dir, tmp_path):
    ingest = _run(
        "pipelines.ingest", "--input", f"{crawl_dir}/*.jsonl.gz", "--output", str(tmp_path / "ing"), "--workers", "2"
    )
    assert ingest.returncode == 0, ingest.stderr[-2000:]
    summary = json.loads(ingest.stdout)
    assert summary["docs_out"] == 5 and summary["errors"] == 3
    langid = _run(
        "pipelines.langid",
        "--input",
        str(tmp_path / "ing"),
        "--output",
        str(tmp_path / "lid"),
        "--languages",
        "en,zh",
        "--direct_num_workers=1",
        "--direct_running_mode=in_memory",
        "--runner=FnApiRunner",
    )
    assert langid.returncode == 0, langid.stderr[-2000:]
    summary = json.loads(langid.stdout)
    assert summary["dropped"] == {"lang_not_selected": 2} and set(summary["languages"]) == {"en", "zh"}
    # settings from a profile table and a config file: the file wins over the profile, a flag over both
    (tmp_path / "profile.toml").write_text('[language_filtered_documents]\nlanguages = ["zh"]\nmax_doc_bytes = 1\n')
    (tmp_path / "run.json").write_text(json.dumps({"languages": ["en"]}))
    langid = _run(
        "pipelines.langid",
        "--input",
        str(tmp_path / "ing"),
        "--output",
        str(tmp_path / "lid_en"),
        "--settings-profile",
        str(tmp_path / "profile.toml"),
        "--config",
        str(tmp_path / "run.json"),
        "--max-doc-bytes",
        "10000000",
        "--workers",
        "1",
    )
    assert langid.returncode == 0, langid.stderr[-2000:]
    summary = json.loads(langid.stdout)
    assert set(summary["languages"]) == {"en"} and summary["dropped"] == {"lang_not_selected": 4}
    assert summary["docs_out"] == 1 and summary["errors"] == 0  # max_doc_bytes=1 of the profile lost to the flag


def test_bad_input_is_one_clear_line(tmp_path):
    result = _run("pipelines.quality", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "out"))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == f"error: no input files match '{tmp_path / 'missing'}'"


def test_a_bad_setting_is_one_line_naming_field_value_and_rule(tmp_path):
    (tmp_path / "dedup.yaml").write_text("bands: 0\n")
    args = ("--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"))
    for extra, line in [
        (("--config", str(tmp_path / "dedup.yaml")), "error: bands=0: must be >= 1"),
        (("--rows", "many"), "error: rows='many': must be an integer"),
        (("--settings-profile", "nosuch"), "error: no settings profile 'nosuch'"),
    ]:
        result = _run("pipelines.dedup", *args, *extra)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines()[-1].startswith(line), result.stderr
    assert not (tmp_path / "out").exists()
