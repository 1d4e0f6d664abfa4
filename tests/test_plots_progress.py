"""Charts on the asset pages (funnel, languages, realised-vs-target mix) and progress lines in the run log.

The charts: the data each one draws (``funnel_data``, ``top_counts``, ``mix_rows``), a valid PNG in the Markdown, and
numeric metadata with the same keys whatever the run. Progress: a ticker with an injected clock says at most one line
per interval; the heartbeat and the stage and teacher describers report what is done so far. The curation group is
materialized twice on the tests' crawl: the second run resumes, and every metadata key of the first is there again.

    .venv/bin/python -m pytest -q tests/test_plots_progress.py
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import struct

import dagster as dg
import pytest
from conftest import materialize_curation

from assets import plots
from assets.metadata import table_rows
from assets.mix_metadata import mix_metadata
from pipelines.progress import Heartbeat, ProgressTicker, StageProgress
from synth.llm.base import GenerationResult, Generator
from synth.llm.cache import CachedGenerator
from synth.llm.progress import GenerationProgress, ProgressGenerator, with_progress

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_of(markdown: str) -> bytes:
    """The PNG a chart's Markdown embeds (and its width and height are sane)."""
    match = re.fullmatch(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert match, markdown[:80]
    data = base64.b64decode(match.group(1))
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert 200 <= width <= 2000 and 100 <= height <= 2000
    return data


SUMMARIES = {
    "ingested": {"docs_in": 16, "docs_out": 16, "errors": 4, "errors_by_reason": {"bad_utf8": 1, "truncated_warc": 3}},
    "langid": {"docs_in": 16, "docs_out": 14, "dropped": {"lang_unwanted": 1, "lang_below_threshold": 1}},
    "quality": {"docs_in": 14, "docs_out": 12, "dropped": {"gopher_repetition/top_2gram": 2}},
    "dedup": {"docs_in": 12, "docs_out": 9, "dropped": {"exact_duplicate": 2, "near_duplicate": 1}},
}


# ------------------------------------------------------------------------------------------------------ charts


def test_funnel_data_counts_every_step_and_every_drop():
    funnel = plots.funnel_data(SUMMARIES)
    assert funnel["stages"] == [
        ("records read", 20),
        ("ingested", 16),
        ("language kept", 14),
        ("quality kept", 12),
        ("dedup kept", 9),
    ]
    assert funnel["drops"] == {
        "ingested: quarantined bad_utf8": 1,
        "ingested: quarantined truncated_warc": 3,
        "langid: lang_unwanted": 1,
        "langid: lang_below_threshold": 1,
        "quality: gopher_repetition/top_2gram": 2,
        "dedup: exact_duplicate": 2,
        "dedup: near_duplicate": 1,
    }
    # every record read is either kept at the end or dropped with a reason
    assert sum(funnel["drops"].values()) + funnel["stages"][-1][1] == funnel["stages"][0][1]
    png_of(plots.funnel_markdown(funnel))


def test_funnel_metadata_keys_are_the_same_for_any_run():
    full = plots.funnel_metadata(plots.funnel_data(SUMMARIES))
    assert full == {
        "funnel_records_read": 20,
        "funnel_ingested": 16,
        "funnel_language_kept": 14,
        "funnel_quality_kept": 12,
        "funnel_dedup_kept": 9,
        "funnel_kept_share_of_read": 0.45,
    }
    partial = plots.funnel_metadata(plots.funnel_data({"ingested": SUMMARIES["ingested"], "quality": None}))
    assert partial.keys() == full.keys() and partial["funnel_dedup_kept"] == 0
    assert all(isinstance(v, int | float) for v in partial.values())
    png_of(plots.funnel_markdown(plots.funnel_data({})))  # nothing ran yet: still a chart ("nothing dropped")


def test_top_counts_keeps_the_largest_and_sums_the_rest():
    counts = {f"l{i:02d}": i for i in range(1, 31)}
    top = plots.top_counts(counts, limit=5)
    assert top[:4] == [("l30", 30), ("l29", 29), ("l28", 28), ("l27", 27)]
    assert top[4] == ("other", sum(range(1, 27)))
    assert plots.top_counts({"b": 1, "a": 1, "z": 0}) == [("a", 1), ("b", 1)]


def test_language_chart_is_a_png():
    png_of(plots.language_markdown({"en": 10, "de": 4, "zh": 3, "code": 2}))
    png_of(plots.language_markdown({}))


MIX_SUMMARY = {
    "docs_out": 10,
    "output": "/tmp/mix",
    "seconds": 1.0,
    "languages": {"en": 300, "de": 100},
    "plan": {"mixture": {"name": "stage1"}, "mixture_fingerprint": "abc", "missing_domains": []},
    "mix_check": {
        "passed": True,
        "failed_buckets": [],
        "target_tokens": 400,
        "realised_tokens": 396,
        "buckets": [
            {"bucket": "web/de", "weight": 0.25, "available_tokens": 120, "target_tokens": 100,
             "realised_tokens": 98, "deviation": -0.02, "epochs": 0.8, "capped": False},
            {"bucket": "web/en", "weight": 0.75, "available_tokens": 900, "target_tokens": 300,
             "realised_tokens": 298, "deviation": -0.007, "epochs": 0.33, "capped": False},
        ],
    },
}  # fmt: skip


def test_mix_chart_draws_target_and_realised_per_bucket():
    assert plots.mix_rows(MIX_SUMMARY["mix_check"]["buckets"]) == [("web/en", 300, 298), ("web/de", 100, 98)]
    png_of(plots.mix_markdown(MIX_SUMMARY["mix_check"]["buckets"]))
    png_of(plots.mix_markdown([]))
    metadata = mix_metadata(MIX_SUMMARY)
    png_of(metadata["realised_vs_target"].value)
    other = json.loads(json.dumps(MIX_SUMMARY))
    other["mix_check"]["buckets"] = other["mix_check"]["buckets"][:1]
    other["mix_check"]["target_tokens"] = 100
    assert mix_metadata(other).keys() == metadata.keys()
    numeric = {k for k, v in metadata.items() if isinstance(v, int | float)}
    assert {"target_tokens", "realised_tokens", "seconds", "dagster/row_count"} <= numeric


# ---------------------------------------------------------------------------------------------------- progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ticker_logs_at_most_once_per_interval_and_when_forced():
    clock, lines = FakeClock(), []
    ticker = ProgressTicker(lines.append, interval_s=30, clock=clock)
    emitted = []
    for second in range(0, 125):  # a call every second for two minutes
        clock.now = 1000.0 + second
        if ticker.tick(f"t={second}"):
            emitted.append(second)
    assert emitted == [30, 60, 90, 120]
    assert lines == ["t=30", "t=60", "t=90", "t=120"]
    clock.now += 1
    assert ticker.tick("forced", force=True) and lines[-1] == "forced"
    assert not ticker.due()  # a forced line starts the interval again
    clock.now += 29.5
    assert not ticker.ready()
    clock.now += 0.5
    assert ticker.ready() and not ticker.ready()
    assert not ticker.tick(lambda: None, force=True) and lines[-1] == "forced"  # None: nothing to say


def test_training_loop_lines_every_log_every_steps_or_every_30_s():
    """What ``RunLog.line_due`` does in the training loops: log_every=100, a step every 7 s."""
    clock = FakeClock()
    ticker = ProgressTicker(clock=clock, interval_s=30)
    logged = []
    for step in range(1, 201):
        clock.now += 7.0
        if ticker.ready(step % 100 == 0 or step == 200):
            logged.append(step)
    assert logged[:3] == [5, 10, 15]  # 35 s, 70 s, 105 s: never more than 30 s (plus a step) without a line
    assert 100 in logged and logged[-1] == 200
    gaps = [(b - a) * 7 for a, b in zip(logged, logged[1:], strict=False)]
    assert max(gaps) <= 35 and min(gaps) >= 7


def test_runlog_writes_a_line_on_schedule_or_after_30_s(tmp_path):
    from contextlib import ExitStack

    from training.runlog import RunLog

    clock = FakeClock()
    with ExitStack() as stack:
        log = RunLog(tmp_path, 0, stack, None)
        assert log.ticker.interval_s == 30
        log.ticker = ProgressTicker(clock=clock, interval_s=30)
        assert log.line_due(True) and not log.line_due(False)
        clock.now += 29
        assert not log.line_due(False)
        clock.now += 1
        assert log.line_due(False) and not log.line_due(False)


def test_heartbeat_beats_per_interval_and_survives_a_failing_describe():
    clock, lines = FakeClock(), []
    calls = iter([ValueError("shard folder gone"), "two", "three"])

    def describe():
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    beat = Heartbeat(lines.append, describe, interval_s=30, clock=clock)
    assert not beat.beat()
    clock.now += 30
    assert beat.beat() and not beat.beat()
    clock.now += 30
    assert beat.beat()
    assert lines == ["progress unavailable: ValueError: shard folder gone", "two"]
    with Heartbeat(lines.append, lambda: "x", interval_s=3600):  # the thread starts and stops cleanly
        pass


def test_stage_progress_sums_committed_shards(tmp_path):
    clock = FakeClock()
    stage = tmp_path / "langid"
    (stage / "_done").mkdir(parents=True)
    progress = StageProgress(str(stage), "language ID", clock=clock)
    assert progress() == "language ID: 0 shards committed, 0 documents processed, 0 kept (0.0 documents/s), 0 s"
    for key, (docs_in, docs_out) in {"a": (100, 90), "b": (50, 40)}.items():
        (stage / "_done" / f"{key}.json").write_text(json.dumps({"stats": {"docs_in": docs_in, "docs_out": docs_out}}))
    (stage / "_done" / "c.json.tmp-1").write_text("{")  # a marker being written: not committed yet
    clock.now += 30
    assert progress() == "language ID: 2 shards committed, 150 documents processed, 130 kept (5.0 documents/s), 30 s"
    # first looked at after 30 s (as the heartbeat does), with a shard left by an earlier run: that one is counted
    # as processed, not in the rate
    later = StageProgress(str(stage), "language ID", clock=clock)
    (stage / "_done" / "d.json").write_text(json.dumps({"stats": {"docs_in": 60, "docs_out": 60}}))
    clock.now += 30
    assert later() == "language ID: 3 shards committed, 210 documents processed, 190 kept (2.0 documents/s), 30 s"


class Echo(Generator):
    backend, model_id = "echo", "echo-model"

    def __init__(self) -> None:
        self.closed = False

    def generate(self, requests):
        return [
            GenerationResult(
                texts=["ab"] * 2,
                completion_tokens=[3, 4],
                finish_reasons=["stop"] * 2,
                prompt_tokens=5,
                model_id=self.model_id,
                backend=self.backend,
                sampling={},
                template_version="v",
            )
            for _ in requests
        ]

    def close(self) -> None:
        self.closed = True


def test_teacher_progress_counts_requests_and_generated_tokens(tmp_path):
    clock = FakeClock()
    progress = GenerationProgress("teacher", clock=clock)
    progress.start()
    progress.add(Echo().generate([None, None, None]))
    clock.now += 10
    assert progress() == "teacher: 3 requests answered, 21 tokens generated (2.1 tokens/s), 10 s"

    lines: list[str] = []
    inner = Echo()
    wrapped = ProgressGenerator(inner, lines.append, interval_s=3600)
    assert len(wrapped.generate([None, None])) == 2
    assert wrapped.progress.requests == 2 and wrapped.progress.tokens == 14
    wrapped.close()
    assert inner.closed and not wrapped.heartbeat._thread.is_alive()

    cached = with_progress(CachedGenerator(Echo(), tmp_path / "cache"), lines.append)
    assert isinstance(cached, CachedGenerator) and isinstance(cached.inner, ProgressGenerator)  # counts the model only
    cached.close()


# ------------------------------------------------------------------------------------------- curation, twice


@pytest.fixture(scope="module")
def two_runs(crawl_dir, tmp_path_factory):
    """Two runs of the curation group; the first with a 0.05 s heartbeat, and the run log of each."""
    from assets.curation import curation_assets
    from dagster_project.resources import CurationResource
    from pipelines import progress

    root = tmp_path_factory.mktemp("data_root")
    shutil.copytree(crawl_dir, root / "crawl")
    resource = CurationResource(data_root=str(root), workers=1)
    runs = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(progress, "INTERVAL_S", 0.05)
        for _ in range(2):
            instance = dg.DagsterInstance.ephemeral()
            result = materialize_curation(curation_assets, resource, instance=instance)
            runs.append((result, [record.user_message for record in instance.all_logs(result.run_id)]))
            patch.setattr(progress, "INTERVAL_S", 30.0)
    return runs


def _metadata(result, asset):
    event = result.asset_materializations_for_node(asset)[0]  # one per crawl dump, the same metadata
    return dict(event.metadata)


def test_curation_charts_and_stable_keys_across_runs(two_runs):
    (first, _), (second, _) = two_runs
    assert first.success and second.success
    for asset in ("raw_documents", "language_filtered_documents", "quality_filtered_documents"):
        assert _metadata(first, asset).keys() == _metadata(second, asset).keys(), asset
    final, again = _metadata(first, "deduplicated_documents"), _metadata(second, "deduplicated_documents")
    assert final.keys() == again.keys()
    for key in ("funnel", "language_distribution"):
        png_of(final[key].value)
    png_of(_metadata(first, "language_filtered_documents")["language_distribution"].value)
    # the funnel's numbers are the stages' own counts
    stage_out = {
        asset: _metadata(first, asset)["documents_out"].value
        for asset in ("raw_documents", "language_filtered_documents", "quality_filtered_documents")
    }
    assert final["funnel_ingested"].value == stage_out["raw_documents"]
    assert final["funnel_language_kept"].value == stage_out["language_filtered_documents"]
    assert final["funnel_quality_kept"].value == stage_out["quality_filtered_documents"]
    assert final["funnel_dedup_kept"].value == final["documents_out"].value
    drops = {row["stage: reason"]: row["documents"] for row in table_rows(final["funnel_drops_by_reason"])}
    assert {"dedup: exact_duplicate", "dedup: near_duplicate"} <= drops.keys()
    assert any(reason.startswith("ingested: quarantined ") for reason in drops)
    assert sum(drops.values()) + final["funnel_dedup_kept"].value == final["funnel_records_read"].value
    for key in ("funnel_records_read", "funnel_dedup_kept", "funnel_kept_share_of_read"):
        assert final[key].value == again[key].value  # a resumed run reports the same funnel


def test_beam_stages_report_progress_in_the_run_log(two_runs):
    (_, log), _ = two_runs
    lines = [m for m in log if re.match(r"(ingest|language ID|quality filters|dedup): \d+ shards committed, ", m)]
    assert lines, "no progress line in the run log"
    assert all("documents processed" in m and "documents/s" in m for m in lines)
