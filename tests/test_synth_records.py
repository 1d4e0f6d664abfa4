"""The synthesis stage runner: a run killed by SIGKILL in the middle of a chunk resumes at that chunk, keeps the
committed ones, and ends with every row exactly once; a changed config starts afresh."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq

from pipelines.schema import SFT_SCHEMA
from synth.records import chunk_counters, messages, record_id, rejected, run_chunked_stage

REPO = Path(__file__).resolve().parents[1]
ITEMS = [{"id": f"item-{i}"} for i in range(7)]


def process(chunk):
    rows = [
        {
            "id": record_id("t", item["id"]),
            "messages": messages(("user", item["id"]), ("assistant", "ok")),
            "method": "t",
        }
        for item in chunk
        if item["id"] != "item-3"
    ]
    rejects = [rejected("t", item["id"], "unlucky") for item in chunk if item["id"] == "item-3"]
    return rows, rejects, chunk_counters(len(chunk), len(chunk), len(rows), rejects)


KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, sys.argv[2])
    from test_synth_records import ITEMS, process
    from pipelines.schema import SFT_SCHEMA
    from synth.records import run_chunked_stage

    def dying(chunk):
        if chunk[0]["id"] == "item-4":  # the third chunk: killed while it is being made
            os.kill(os.getpid(), signal.SIGKILL)
        return process(chunk)

    run_chunked_stage(sys.argv[1], {"v": 1}, ITEMS, dying, SFT_SCHEMA, chunk_size=2)
    """
)


def test_killed_stage_resumes_without_losing_or_repeating_rows(tmp_path):
    stage = tmp_path / "stage"
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, str(stage), str(REPO / "tests")], cwd=REPO, capture_output=True
    )
    assert proc.returncode == -9
    assert sorted(p.name for p in (stage / "_done").iterdir()) == ["part-00000.json", "part-00001.json"]
    assert not (stage / "_SUCCESS.json").exists()

    summary = run_chunked_stage(str(stage), {"v": 1}, ITEMS, process, SFT_SCHEMA, chunk_size=2)
    assert summary["chunks_reused"] == 2 and summary["shards"] == 4
    assert summary["items"] == 7 and summary["accepted"] == 6 and summary["rejected"] == {"unlucky": 1}
    ids = pq.read_table(stage / "data").column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 6
    assert not [p for p in stage.rglob("*") if ".tmp-" in p.name]

    again = run_chunked_stage(str(stage), {"v": 1}, ITEMS, process, SFT_SCHEMA, chunk_size=2)
    assert again["chunks_reused"] == 4
    fresh = run_chunked_stage(str(stage), {"v": 2}, ITEMS[:3], process, SFT_SCHEMA, chunk_size=2)
    assert fresh["chunks_reused"] == 0 and fresh["items"] == 3
    assert len(pq.read_table(stage / "data").column("id").to_pylist()) == 3


def test_a_stage_with_nothing_to_do_is_finished_and_readable(tmp_path):
    summary = run_chunked_stage(str(tmp_path / "empty"), {"v": 1}, [], process, SFT_SCHEMA)
    assert (summary["items"], summary["accepted"], summary["shards"]) == (0, 0, 1)
    table = pq.read_table(tmp_path / "empty" / "data")
    assert table.num_rows == 0 and table.schema.equals(SFT_SCHEMA)
    assert (tmp_path / "empty" / "_SUCCESS.json").exists()


def test_a_changed_item_is_done_again(tmp_path):
    items = [{"id": "a", "text": "one"}, {"id": "b", "text": "two"}]
    run_chunked_stage(str(tmp_path / "s"), {"v": 1}, items, process, SFT_SCHEMA, chunk_size=1)
    changed = [items[0], {"id": "b", "text": "two, edited"}]
    summary = run_chunked_stage(str(tmp_path / "s"), {"v": 1}, changed, process, SFT_SCHEMA, chunk_size=1)
    assert summary["chunks_reused"] == 1
