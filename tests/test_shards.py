"""The commit protocol: atomic shards, resume after a failure or a kill, no duplicates, no lost documents."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow.parquet as pq
import pytest

from pipelines.beam_stage import DocumentProcessor, run_shard_stage
from pipelines.shards import expand_inputs, list_shards, shard_key


def _write_inputs(folder, shards=6, docs=40, prefix=""):
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with open(folder / f"in{s}.jsonl", "w") as f:
            for d in range(docs):
                f.write(json.dumps({"id": f"{prefix}s{s}-d{d}", "text": f"text of document {d} in shard {s}"}) + "\n")
    return shards * docs


def _ids(stage_dir):
    return [i for uri in list_shards(stage_dir) for i in pq.read_table(uri, columns=["id"]).column(0).to_pylist()]


class FlakyProcessor(DocumentProcessor):
    """Dies in the middle of shard 1 while ``flag`` exists (same config either way, so a rerun resumes)."""

    stage = "flaky"

    def __init__(self, flag):
        self.flag = str(flag)

    def process_batch(self, docs):
        for doc in docs:
            if doc["id"] == "s1-d20" and os.path.exists(self.flag):
                raise RuntimeError("worker died")
            yield doc, None


def test_failed_shard_leaves_no_partial_files_and_rerun_completes(tmp_path):
    total = _write_inputs(tmp_path / "in", shards=3)
    out = str(tmp_path / "out")
    flag = tmp_path / "fail"
    flag.touch()
    with pytest.raises(Exception, match="worker died"):
        run_shard_stage(FlakyProcessor(flag), str(tmp_path / "in"), out, workers=1)
    committed = {os.path.basename(p) for p in list_shards(out)}
    assert f"{shard_key(str(tmp_path / 'in' / 'in1.jsonl'))}.parquet" not in committed
    assert not [p for p in os.listdir(os.path.join(out, "data")) if ".tmp-" in p]

    with pytest.raises(ValueError, match="has not finished"):
        expand_inputs(out)  # a later stage refuses a half-done folder

    flag.unlink()
    summary = run_shard_stage(FlakyProcessor(flag), str(tmp_path / "in"), out, workers=1)
    assert summary["beam_counters"].get("flaky/shards_resumed", 0) == len(committed)
    assert summary["docs_out"] == total
    ids = _ids(out)
    assert len(ids) == len(set(ids)) == total


def test_added_removed_and_changed_inputs(tmp_path):
    _write_inputs(tmp_path / "in", shards=3)
    out = str(tmp_path / "out")
    run_shard_stage(DocumentProcessor(), str(tmp_path / "in"), out, workers=1)
    (tmp_path / "in" / "in2.jsonl").unlink()  # removed input: its shard goes
    with open(tmp_path / "in" / "in1.jsonl", "a") as f:  # changed input: redone
        f.write(json.dumps({"id": "s1-new", "text": "an added line"}) + "\n")
    _write_inputs(tmp_path / "more", shards=1, prefix="more-")  # added input: processed
    summary = run_shard_stage(DocumentProcessor(), [str(tmp_path / "in"), str(tmp_path / "more")], out, workers=1)
    assert summary["resumed"] is True and summary["shards"] == 3
    assert summary["beam_counters"]["identity/shards_resumed"] == 1  # only in0 is unchanged
    ids = _ids(out)
    assert len(ids) == len(set(ids)) == 40 + 41 + 40
    assert "s1-new" in ids and not any(i.startswith("s2-") for i in ids)


def test_changed_processor_config_starts_afresh(tmp_path):
    from pipelines.langid import LanguageIdentifier

    _write_inputs(tmp_path / "in", shards=1)
    out = str(tmp_path / "out")
    run_shard_stage(LanguageIdentifier(languages=["en"]), str(tmp_path / "in"), out, workers=1)
    summary = run_shard_stage(LanguageIdentifier(languages=None), str(tmp_path / "in"), out, workers=1)
    assert summary["resumed"] is False and summary["docs_out"] + sum(summary["dropped"].values()) == 40


SLOW_RUN = textwrap.dedent(
    """
    import sys, time
    from pipelines.beam_stage import DocumentProcessor, run_shard_stage

    class Slow(DocumentProcessor):
        stage = "slow"
        def process_batch(self, docs):
            time.sleep(0.4)
            yield from ((d, None) for d in docs)

    run_shard_stage(Slow(), sys.argv[1], sys.argv[2], workers=1)
    """
)


def test_killed_run_resumes_without_duplicates_or_losses(tmp_path):
    total = _write_inputs(tmp_path / "in", shards=8, docs=30)
    out = tmp_path / "out"
    script = tmp_path / "slow.py"
    script.write_text(SLOW_RUN)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "in"), str(out)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "_done").glob("*.json")) if (out / "_done").exists() else []) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list((out / "_done").glob("*.json")))
    assert 2 <= done_before < 8, "the kill must land in the middle of the run"

    code = SLOW_RUN.replace(
        "run_shard_stage(Slow(), sys.argv[1], sys.argv[2], workers=1)",
        "s = run_shard_stage(Slow(), sys.argv[1], sys.argv[2], workers=1)\n"
        "print(s['beam_counters'].get('slow/shards_resumed', 0))",
    )
    script.write_text(code)
    resumed = (
        subprocess.run(
            [sys.executable, str(script), str(tmp_path / "in"), str(out)], capture_output=True, text=True, check=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    assert int(resumed) == done_before
    ids = _ids(str(out))
    assert len(ids) == len(set(ids)) == total
    assert not list(out.rglob("*.tmp-*"))


# --- ShardStage: the lifecycle object every runner uses -------------------------------------------------------


def test_shard_stage_resumes_commits_and_summarises(tmp_path):
    import pickle

    import pyarrow as pa

    from pipelines.schema import DOCUMENT_SCHEMA
    from pipelines.shards import ShardStage, read_json

    out = str(tmp_path / "out")
    config = {"stage": "unit", "n": 1}
    counted = []

    def count(name, n=1):
        counted.append(name)

    def work(stage, key, docs):
        def write():
            rows = [{"id": f"{key}-{i}", "text": "x"} for i in range(docs)]
            stage.write_table(key, pa.Table.from_pylist(rows, schema=DOCUMENT_SCHEMA))
            return {"docs_out": docs, "by": {"a": docs}}

        return write

    with ShardStage(out, config) as stage:
        assert not stage.resumed and stage.pending({"a": "fa", "b": "fb"}) == ["a", "b"]
        assert stage.shard("a", "fa", work(stage, "a", 2), input="in/a", count=count) == {"docs_out": 2, "by": {"a": 2}}
        worker = pickle.loads(pickle.dumps(stage))  # as Beam ships it: no lock travels, the folder is the same
        assert worker._stack is None and worker.done("a", "fa") == {"docs_out": 2, "by": {"a": 2}}
        with pytest.raises(RuntimeError, match="shard b has no commit marker"):
            stage.summed(["a", "b"])
    assert counted == ["shards_processed"]
    assert not (tmp_path / "out" / "_lock.json").exists()

    with ShardStage(out, config) as stage:  # same config: resumed; "a" is skipped, "c" replaces the gone "b"
        assert stage.resumed and stage.pending({"a": "fa", "c": "fc"}) == ["c"]
        (tmp_path / "out" / "data" / "b.parquet").write_bytes(b"left by an earlier input set")
        assert stage.keep_only(["a", "c"]) == ["b"]
        stage.shard("a", "fa", work(stage, "a", 99), count=count)
        stage.shard("a", "changed input", work(stage, "a", 3), count=count)  # another input fingerprint: redone
        stage.shard("c", "fc", work(stage, "c", 1), count=count)
        summary = stage.finish(["a", "c"], stage="unit", shards=2)
    assert counted == ["shards_processed", "shards_resumed", "shards_processed", "shards_processed"]
    assert summary == read_json(str(tmp_path / "out" / "_SUCCESS.json"))
    assert summary["docs_out"] == 4 and summary["by"] == {"a": 4} and summary["removed_shards"] == ["b"]
    assert summary["resumed"] is True and summary["stage"] == "unit" and summary["seconds"] >= 0
    assert sorted(p.name for p in (tmp_path / "out" / "data").iterdir()) == ["a.parquet", "c.parquet"]
    assert pq.read_table(tmp_path / "out" / "data" / "a.parquet").num_rows == 3


def test_counting_dofn_reports_each_counter_under_its_namespace():
    import apache_beam as beam

    from pipelines.beam_dofn import CountingDoFn
    from pipelines.beam_stage import run_pipeline

    class Tally(CountingDoFn):
        def process(self, n):
            self.count("items")
            self.count("weight", n)
            yield n

    counters = run_pipeline(lambda p: p | beam.Create([1, 2, 3, 4]) | beam.ParDo(Tally("unit")), workers=1)
    assert counters == {"unit/items": 4, "unit/weight": 10}
