"""Curation with its data on object storage: a real S3 server (moto's server mode, in its own process on 127.0.0.1)
reached through s3fs, so every fsspec path of the stages is the real one.

The four curation stages (ingest -> langid -> quality -> dedup, as `python -m pipelines.<stage>`) run once on a
local folder and once on ``s3://``, and must write the same rows, ids, contents and summaries; a stage killed on S3
resumes; the request cache and the quality classifier keep their files on S3 as well.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import materialize_curation

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

REPO = Path(__file__).resolve().parents[1]
BUCKET = "curation-test"
STAGES = ("ingest", "langid", "quality", "dedup")
KINDS = ("data", "excluded", "errors")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on a free port (own process group, stopped on teardown), the AWS environment pointing
    s3fs at it with fake keys, and an empty bucket. Yields the bucket's ``s3fs.S3FileSystem``."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    saved = dict(os.environ)
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=str(log.parent / "no-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(log.parent / "no-credentials"),
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, log.read_text()[-2000:]
                assert time.time() < deadline, "moto server did not start in 60 s"
                time.sleep(0.2)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem(use_listings_cache=False)
        fs.mkdir(BUCKET)
        yield fs
    finally:
        os.environ.clear()
        os.environ.update(saved)
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()


def _stage(stage: str, inputs: str, output: str, workers: int) -> dict:
    args = ["--input", inputs, "--output", output, "--workers", str(workers)]
    proc = subprocess.run(
        [sys.executable, "-m", f"pipelines.{stage}", *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"{stage} -> {output}:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout)


def _chain(root: str, workers: int) -> dict[str, dict]:
    """ingest -> langid -> quality -> dedup under ``root`` (which holds ``crawl/``); the summaries by stage."""
    summaries, previous = {}, f"{root}/crawl"
    for stage in STAGES:
        summaries[stage] = _stage(stage, previous, f"{root}/curated/{stage}", workers)
        previous = f"{root}/curated/{stage}"
    return summaries


def _local_view(value, remote_root: str, local_root: str):
    """``value`` with the S3 root written as the local one (the input paths that rows and summaries record)."""
    if isinstance(value, str):
        return value.replace(remote_root, local_root)
    if isinstance(value, dict):
        return {k: _local_view(v, remote_root, local_root) for k, v in value.items()}
    if isinstance(value, list):
        return [_local_view(v, remote_root, local_root) for v in value]
    return value


def _stage_files(stage_dir: str, remote_root: str = "", local_root: str = "") -> dict[str, list[dict]]:
    """Rows of every shard file of a stage, by ``<kind>/<input stem>`` (shard keys hash the input path, which differs
    between the two roots), paths written as local ones."""
    from pipelines.shards import filesystem, list_shards

    out = {}
    for kind in KINDS:
        for uri in list_shards(stage_dir, kind):
            fs, path = filesystem(uri)
            with fs.open(path, "rb") as f:
                rows = pq.read_table(f).to_pylist()
            stem = re.sub(r"-[0-9a-f]{10}", "", Path(uri).name.removesuffix(".parquet"))
            out[f"{kind}/{stem}"] = _local_view(rows, remote_root, local_root) if remote_root else rows
    return out


def _digest(rows: list[dict]) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()


def _ids(files: dict[str, list[dict]], kind: str) -> list[str]:
    return sorted(
        r.get("id") or r.get("record") or "" for name, rows in files.items() if name.startswith(kind) for r in rows
    )


def _content(files: dict[str, list[dict]]) -> dict:
    return {name: (len(rows), _digest(rows)) for name, rows in sorted(files.items())}


def _what(summary: dict) -> dict:
    """A summary without the fields that say how the run went rather than what it wrote."""
    return {k: v for k, v in summary.items() if k not in ("seconds", "beam_counters")}


@pytest.fixture(scope="module")
def both_runs(s3, crawl_dir, tmp_path_factory):
    """The chain on a local folder (one worker) and on S3 (two worker processes, so shards and markers are written
    by processes other than the one that lists them)."""
    local_root = str(tmp_path_factory.mktemp("local-root"))
    shutil.copytree(crawl_dir, f"{local_root}/crawl")
    remote_root = f"s3://{BUCKET}/run"
    s3.put(f"{crawl_dir}/", f"{BUCKET}/run/crawl/", recursive=True)
    started = time.time()
    local = _chain(local_root, workers=1)
    local_seconds = time.time() - started
    started = time.time()
    remote = _chain(remote_root, workers=2)
    remote_seconds = time.time() - started
    print(f"\nchain: local {local_seconds:.1f}s, s3 {remote_seconds:.1f}s")
    return local_root, remote_root, local, remote


def test_curation_on_s3_writes_what_it_writes_locally(both_runs, s3):
    local_root, remote_root, local, remote = both_runs
    for stage in STAGES:
        assert remote[stage]["output"] == f"{remote_root}/curated/{stage}"
        assert _what(_local_view(remote[stage], remote_root, local_root)) == _what(local[stage]), stage
        ours = _stage_files(f"{local_root}/curated/{stage}")
        theirs = _stage_files(f"{remote_root}/curated/{stage}", remote_root, local_root)
        assert _content(theirs) == _content(ours), stage
        for kind in KINDS:
            assert _ids(theirs, kind) == _ids(ours, kind), (stage, kind)
        data_sha = _digest([r for name, rows in sorted(ours.items()) if name.startswith("data/") for r in rows])
        print(
            f"{stage}: docs_in {local[stage]['docs_in']} docs_out {local[stage]['docs_out']} files {len(ours)} "
            f"rows {sum(len(r) for r in ours.values())} data ids {len(_ids(ours, 'data'))} "
            f"sha256(data rows) {data_sha[:12]}"
            " (equal on s3)"
        )
    # the stage folders hold what a local one holds: config, summary, markers, no lock and no leftovers
    names = sorted(p.split("/curated/dedup/", 1)[1] for p in s3.find(f"{BUCKET}/run/curated/dedup"))
    assert "_SUCCESS.json" in names and "_config.json" in names and "_lock.json" not in names
    assert not [n for n in names if ".tmp-" in n]
    assert len([n for n in names if n.startswith("_done/")]) == local["dedup"]["shards"]
    assert local["dedup"]["docs_out"] < local["dedup"]["docs_in"]  # the fixture's duplicates were found on both


KILLED_STAGE = textwrap.dedent(
    """
    import os, signal, sys
    import pipelines.shards as shards
    from pipelines import langid

    original, calls = shards.commit_shard, [0]

    def dying(*args, **kwargs):  # SIGKILL at the second shard's commit: one shard committed, one written, not
        calls[0] += 1
        if calls[0] == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    shards.commit_shard = dying
    langid.main(sys.argv[1:])
    """
)


def test_a_stage_killed_on_s3_resumes(both_runs, s3):
    local_root, remote_root, local, _ = both_runs
    out = f"{remote_root}/curated/langid-killed"
    args = ["--input", f"{remote_root}/curated/ingest", "--output", out, "--workers", "1"]
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_STAGE, *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    left = [p.rsplit("/", 1)[1] for p in s3.find(out.removeprefix("s3://"))]
    assert "_lock.json" in left and "_SUCCESS.json" not in left  # the dead run's lock object is left behind
    assert len([n for n in left if n.endswith(".json") and n != "_lock.json" and n != "_config.json"]) == 1

    summary = _stage("langid", f"{remote_root}/curated/ingest", out, workers=2)  # takes over the stale lock
    assert summary["resumed"] is True
    counters = json.loads(s3.cat(f"{out.removeprefix('s3://')}/_SUCCESS.json"))["beam_counters"]
    assert counters["langid/shards_resumed"] == 1 and counters["langid/shards_processed"] == summary["shards"] - 1
    resumed = _local_view(summary, remote_root, local_root)
    resumed["output"] = local["langid"]["output"]
    assert _what(resumed) == _what({**local["langid"], "resumed": True})
    theirs = _stage_files(out, remote_root, local_root)
    assert _content(theirs) == _content(_stage_files(f"{local_root}/curated/langid"))
    assert not s3.exists(f"{out.removeprefix('s3://')}/_lock.json")


class _Echo:
    """A generator that answers every request with its own prompt, and counts what it was asked."""

    backend, model_id = "echo", "echo-1"

    def __init__(self):
        self.asked: list[str] = []

    def generate(self, requests):
        from synth.llm.base import GenerationResult

        self.asked += [r.messages[-1]["content"] for r in requests]
        return [
            GenerationResult([r.messages[-1]["content"]], [1], ["stop"], 1, self.model_id, self.backend, {}, "t1")
            for r in requests
        ]

    def close(self):
        pass


def test_request_cache_on_s3(s3):
    from synth.llm.base import GenerationRequest
    from synth.llm.cache import CachedGenerator

    def ask(text):
        return GenerationRequest([{"role": "user", "content": text}], max_new_tokens=4)

    cache_dir = f"s3://{BUCKET}/run/synthetic/request_cache"
    echo = _Echo()
    cached = CachedGenerator(echo, cache_dir, chunk_size=2)
    first = cached.generate([ask(t) for t in ("a", "b", "c", "a", "d")])
    assert echo.asked == ["a", "b", "c", "d"] and [r.texts[0] for r in first] == ["a", "b", "c", "a", "d"]
    objects = s3.glob(f"{BUCKET}/run/synthetic/request_cache/*.jsonl")
    assert len(objects) == 2  # one object per chunk of 2: objects are written whole, never appended to
    again = _Echo()
    reloaded = CachedGenerator(again, cache_dir)  # a new run reads the cache back from S3
    assert len(reloaded) == 4
    results = reloaded.generate([ask("d"), ask("e"), ask("b")])
    assert again.asked == ["e"] and [r.cached for r in results] == [True, False, True]


def test_quality_classifier_on_s3(s3, tmp_path, monkeypatch):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_synth_quality import SMALL, hand_labels, write_stage

    from synth.labels.classifier import classifier_fingerprint, local_model, train_classifier
    from synth.labels.label import LABELS_SCHEMA
    from synth.labels.tiers import QualityScorer

    labels = write_stage(tmp_path / "labels", hand_labels(), LABELS_SCHEMA, shards=2)
    local = train_classifier(labels, str(tmp_path / "clf"), SMALL)
    out = f"s3://{BUCKET}/run/quality/classifier"
    remote = train_classifier(labels, out, SMALL)
    assert remote["model_sha256"] == local["model_sha256"]  # one thread and a seed: the same model, bit for bit
    assert sorted(p.rsplit("/", 1)[1] for p in s3.ls(out.removeprefix("s3://"))) == ["metrics.json", "model.bin"]
    assert classifier_fingerprint(out) == local["model_sha256"]

    monkeypatch.setenv("QWEN2_CACHE", str(tmp_path / "cache"))
    scorer = QualityScorer(out)
    scorer.setup()  # fastText reads local files: model.bin is downloaded once, under its sha256
    assert Path(local_model(out, scorer.fingerprint)).name == f"{local['model_sha256']}.bin"
    local_scorer = QualityScorer(str(tmp_path / "clf"))
    docs = [{"id": "x", "text": "The package manager keeps track of every installed file."}]
    assert [d["quality_score"] for d, _ in scorer.process_batch([dict(d) for d in docs])] == [
        d["quality_score"] for d, _ in local_scorer.process_batch([dict(d) for d in docs])
    ]
    # a retrained model no longer matches its metrics: refused, as on a local disk
    s3.pipe(f"{out.removeprefix('s3://')}/model.bin", b"not a model")
    with pytest.raises(ValueError, match="does not match"):
        classifier_fingerprint(out)


def test_dagster_curation_with_data_root_on_s3(both_runs, s3, crawl_dir):
    from assets.curation import curation_assets
    from dagster_project.resources import CurationResource

    local_root, _, local, _ = both_runs
    data_root = f"s3://{BUCKET}/dagster"
    s3.put(f"{crawl_dir}/", f"{BUCKET}/dagster/crawl/", recursive=True)
    resource = CurationResource(data_root=data_root, workers=1)
    result = materialize_curation(curation_assets, resource)  # a partition per file of crawl/, one run
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    assert evaluations and all(e.passed for e in evaluations), [e.check_name for e in evaluations if not e.passed]
    dumps = sorted(e.partition for e in result.asset_materializations_for_node("raw_documents"))
    assert dumps == ["cut.warc.gz", "extra.jsonl.gz", "site.warc.gz"]
    for stage in STAGES:  # the assets run the stages' own defaults: what the command lines wrote locally
        folder = {"ingest": "ingested"}.get(stage, stage)
        folders = [resource.stage_dir(folder)] if stage == "dedup" else [resource.stage_dir(folder, d) for d in dumps]
        files = {k: v for f in folders for k, v in _stage_files(f, data_root, local_root).items()}
        assert _content(files) == _content(_stage_files(f"{local_root}/curated/{stage}")), stage
