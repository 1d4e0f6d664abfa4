"""An output path never destroys what the stage did not write; one run per stage folder; options are validated.

Every refusal is checked twice: the one-line message, and that the files which were there are still there.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.beam_stage import DocumentProcessor, run_shard_stage
from pipelines.shards import commit_shard, committed_stats, list_shards
from pipelines.stage_dir import CONFIG_FILE, LOCK_FILE, StageLockedError, StageOutputError, open_stage, stage_lock

ROOT = Path(__file__).resolve().parents[1]


def _write_inputs(folder: Path, shards: int = 2, docs: int = 5) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        lines = [json.dumps({"id": f"s{s}-d{d}", "text": f"document {d} of shard {s} in English"}) for d in range(docs)]
        (folder / f"in{s}.jsonl").write_text("\n".join(lines) + "\n")


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def _error_line(proc: subprocess.CompletedProcess) -> str:
    """The CLI's message: its last stderr line (Beam's import warnings may come before it)."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.strip().splitlines()[-1]


# --- 1. outputs that would destroy input or unrelated files are refused ----------------------------------------


def test_output_that_contains_the_input_is_refused_and_nothing_is_deleted(tmp_path):
    _write_inputs(tmp_path / "data" / "crawl")
    (tmp_path / "data" / "notes.txt").write_text("my notes")
    before = _snapshot(tmp_path)
    line = _error_line(
        _cli("pipelines.ingest", "--input", f"{tmp_path}/data/crawl/*.jsonl", "--output", f"{tmp_path}/data")
    )
    assert line.startswith("error: ") and "contains the input" in line
    assert _snapshot(tmp_path) == before


def test_output_that_is_an_existing_file_is_refused(tmp_path):
    _write_inputs(tmp_path / "in")
    (tmp_path / "notes.txt").write_text("keep me")
    line = _error_line(
        _cli("pipelines.ingest", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "notes.txt"))
    )
    assert line.startswith("error: ") and "existing file" in line
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_a_stage_writing_onto_its_own_input_folder_is_refused(tmp_path):
    _write_inputs(tmp_path / "in")
    run_shard_stage(DocumentProcessor(), str(tmp_path / "in"), str(tmp_path / "ingested"), workers=1)
    before = _snapshot(tmp_path)
    line = _error_line(
        _cli("pipelines.langid", "--input", str(tmp_path / "ingested"), "--output", str(tmp_path / "ingested"))
    )
    assert line.startswith("error: ") and "is also an input" in line
    assert _snapshot(tmp_path) == before
    # an output inside an input folder would be read back as input by the next run
    with pytest.raises(StageOutputError, match="is inside the input"):
        run_shard_stage(DocumentProcessor(), str(tmp_path / "in"), str(tmp_path / "in" / "out"), workers=1)
    assert _snapshot(tmp_path) == before


def test_non_empty_folder_no_stage_wrote_and_another_stages_folder_are_refused(tmp_path):
    _write_inputs(tmp_path / "in")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    with pytest.raises(StageOutputError, match="non-empty folder that no stage wrote"):
        run_shard_stage(DocumentProcessor(), str(tmp_path / "in"), str(tmp_path / "mine"), workers=1)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "years of work"
    assert os.listdir(tmp_path / "mine") == ["thesis.tex"]

    run_shard_stage(DocumentProcessor(), str(tmp_path / "in"), str(tmp_path / "ingested"), workers=1)
    before = _snapshot(tmp_path / "ingested")

    class Other(DocumentProcessor):
        stage = "other"

    with pytest.raises(StageOutputError, match="holds the output of stage 'identity'"):
        run_shard_stage(Other(), str(tmp_path / "in"), str(tmp_path / "ingested"), workers=1)
    assert _snapshot(tmp_path / "ingested") == before


class Tagger(DocumentProcessor):
    stage = "tagger"

    def __init__(self, tag: str):
        self.tag = tag

    def config(self) -> dict:
        return {"tag": self.tag}

    def process_batch(self, docs):
        for doc in docs:
            doc["source"] = self.tag
            yield doc, None


def test_config_change_removes_only_the_stages_own_files_and_says_what_changed(tmp_path, caplog):
    _write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    run_shard_stage(Tagger("a"), str(tmp_path / "in"), str(out), workers=1)
    (out / "README.txt").write_text("a note a person left in the folder")
    (out / "data" / "keep.csv").write_text("not a shard")
    with caplog.at_level(logging.WARNING, logger="pipelines.stage_dir"):
        summary = run_shard_stage(Tagger("b"), str(tmp_path / "in"), str(out), workers=1)
    assert summary["resumed"] is False
    message = next(r.getMessage() for r in caplog.records if "config changed" in r.getMessage())
    assert "processor.tag" in message and "files of the earlier run removed" in message
    assert (out / "README.txt").exists() and (out / "data" / "keep.csv").exists()
    sources = {s for uri in list_shards(str(out)) for s in pq.read_table(uri, columns=["source"]).column(0).to_pylist()}
    assert sources == {"b"}  # nothing made under the old config is left among the shards


def test_a_changed_input_set_names_the_shards_it_removes(tmp_path, caplog):
    _write_inputs(tmp_path / "in", shards=3)
    out = str(tmp_path / "out")
    run_shard_stage(DocumentProcessor(), str(tmp_path / "in"), out, workers=1)
    (tmp_path / "in" / "in2.jsonl").unlink()
    with caplog.at_level(logging.WARNING, logger="pipelines.stage_dir"):
        summary = run_shard_stage(DocumentProcessor(), str(tmp_path / "in"), out, workers=1)
    assert [k.split("-")[0] for k in summary["removed_shards"]] == ["in2"]
    assert any("whose input is gone are removed" in r.getMessage() and "in2-" in r.getMessage() for r in caplog.records)
    assert summary["docs_out"] == 10


# --- 2. one run per stage folder; commit markers carry the config ------------------------------------------------

HOLD = textwrap.dedent(
    """
    import sys, time
    from pipelines.stage_dir import stage_lock
    with stage_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(120)
    """
)


def _hold_lock(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_is_refused_while_the_first_holds_the_folder_and_a_killed_holder_is_detected(tmp_path, caplog):
    _write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    holder = _hold_lock(out)
    try:
        with pytest.raises(StageLockedError, match=rf"pid {holder.pid} on .*, started 20\d\d-"):
            run_shard_stage(DocumentProcessor(), str(tmp_path / "in"), str(out), workers=1)
        line = _error_line(_cli("pipelines.ingest", "--input", str(tmp_path / "in"), "--output", str(out)))
        assert line.startswith("error: ") and f"pid {holder.pid}" in line
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == holder.pid  # the killed run's lock is left behind
    with caplog.at_level(logging.WARNING, logger="pipelines.stage_dir"):
        summary = run_shard_stage(DocumentProcessor(), str(tmp_path / "in"), str(out), workers=1)
    assert summary["docs_out"] == 10
    assert any("stale lock" in r.getMessage() and str(holder.pid) in r.getMessage() for r in caplog.records)
    assert not (out / LOCK_FILE).exists()  # a finished run releases its lock


def test_the_lock_is_released_when_the_run_fails(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"), open_stage(str(out), {"stage": "s"}):
        raise RuntimeError("boom")
    with stage_lock(str(out)):
        pass


def test_a_shard_committed_under_another_config_is_never_reused(tmp_path):
    out = str(tmp_path / "out")
    with open_stage(out, {"stage": "s", "threshold": 0.5}):
        commit_shard(out, "k", "in.jsonl", "fp", {"docs_out": 3})
        assert committed_stats(out, "k", "fp") == {"docs_out": 3}
    # another run rewrote the config beside the shard (what two interleaved runs left before there was a lock)
    (tmp_path / "out" / CONFIG_FILE).write_text(json.dumps({"stage": "s", "threshold": 0.9}))
    assert committed_stats(out, "k", "fp") is None


def test_two_concurrent_runs_leave_one_consistent_output(tmp_path):
    _write_inputs(tmp_path / "in", shards=4, docs=50)
    out = tmp_path / "out"
    slow = textwrap.dedent(
        """
        import sys, time
        from pipelines.beam_stage import DocumentProcessor, run_shard_stage

        class Slow(DocumentProcessor):
            stage = "slow"
            def process_batch(self, docs):
                time.sleep(0.5)
                yield from ((d, None) for d in docs)

        run_shard_stage(Slow(), sys.argv[1], sys.argv[2], workers=1)
        """
    )
    first = subprocess.Popen(
        [sys.executable, "-c", slow, str(tmp_path / "in"), str(out)], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 60
    while not (out / LOCK_FILE).exists() and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run(
        [sys.executable, "-c", slow, str(tmp_path / "in"), str(out)], cwd=ROOT, capture_output=True, text=True
    )
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert second.returncode != 0 and "is being written by another run" in second.stderr
    ids = [i for uri in list_shards(str(out)) for i in pq.read_table(uri, columns=["id"]).column(0).to_pylist()]
    assert len(ids) == len(set(ids)) == 200


# --- 4. options are validated ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--treshold", "0.99"], "unrecognized arguments: --treshold 0.99"),
        (["--default-threshold", "7"], "default_threshold=7: must be <= 1"),
        (["--default-threshold", "-3"], "default_threshold=-3: must be >= 0"),
        (["--default-threshold", "nan"], "default_threshold=nan: must be a finite number"),
        (["--default-threshold", "high"], "default_threshold='high': must be a number"),
        (["--workers", "0"], "0 is outside the valid range [1, inf]"),
        (["--languages", "en,xx"], "unknown language code(s) xx: the language-ID model emits af, als,"),
    ],
)
def test_bad_options_are_errors_that_name_the_valid_values(tmp_path, args, expected):
    _write_inputs(tmp_path / "in")
    proc = _cli("pipelines.langid", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), *args)
    assert expected in _error_line(proc)
    assert not (tmp_path / "out").exists()


def test_beam_pipeline_options_still_pass_through(tmp_path):
    _write_inputs(tmp_path / "in")
    proc = _cli(
        "pipelines.ingest", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
        "--runner=FnApiRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["docs_out"] == 10


def test_dedup_and_tokenize_reject_out_of_range_values(tmp_path):
    for module, args, expected in [
        ("pipelines.dedup", ["--bands", "0"], "bands=0: must be >= 1"),
        ("pipelines.tokenize_shards", ["--seq-len", "1"], "1 is outside the valid range [2, inf]"),
    ]:
        proc = _cli(module, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), *args)
        assert expected in _error_line(proc)


def test_files_a_folder_input_skips_are_named_in_the_summary(tmp_path):
    _write_inputs(tmp_path / "in")
    (tmp_path / "in" / "README.md").write_text("not a document file")
    summary = run_shard_stage(DocumentProcessor(), str(tmp_path / "in"), str(tmp_path / "out"), workers=1)
    assert [os.path.basename(p) for p in summary["skipped_inputs"]] == ["README.md"]
    assert summary["docs_out"] == 10
