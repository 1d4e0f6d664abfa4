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


def test_bad_input_is_one_clear_line(tmp_path):
    result = _run("pipelines.quality", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "out"))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == f"error: no input files match '{tmp_path / 'missing'}'"
