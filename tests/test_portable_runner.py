"""Beam's portable path: a real stage (language ID) submitted with ``--runner=PortableRunner`` to a job service and
an external SDK worker pool, each started here as its own process (and process group) on 127.0.0.1, gives the same
output, summary and Beam counters as the local ``FnApiRunner``. Flink and Spark (their job-server jars cannot be
downloaded here) take a local jar: the options parse, the stage's pipeline graph builds and the job server's
``java -jar`` command names that jar; the test stops there, before anything is started or submitted.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines import ingest, langid
from pipelines.beam_stage import pipeline_options
from pipelines.shards import list_shards

REPO = Path(__file__).resolve().parents[1]
LANGID_ARGS = ["--languages", "en,zh"]  # de is dropped: drops show up in the summary and in Beam's counters
KINDS = ("data", "excluded", "errors")


def _env() -> dict:
    """The services' environment: the worker pool starts each SDK worker as plain ``python`` (found on PATH), so
    the venv's bin comes first; PYTHONPATH makes ``pipelines`` importable from any directory."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(log: Path, n: int = 3000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else ""


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the service's process group (the worker pool's SDK workers are in it), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _start(stack: ExitStack, module: str, args: list[str], port: int, folder: Path) -> Path:
    """``python -m module args`` in a new session, logging to ``folder/<name>.log``; returns once ``port`` takes
    connections. ``stack`` stops it (and its group) whatever happens later."""
    log = folder / f"{module.rsplit('.', 1)[-1]}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=folder,
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    stack.callback(_stop, proc)
    deadline = time.time() + 90
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{module} exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return log
        except OSError:
            if time.time() > deadline:
                raise RuntimeError(f"{module} does not listen on {port} after 90 s:\n{_tail(log)}") from None
            time.sleep(0.2)


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """A job service and an SDK worker pool, separate processes, each in its own directory (not the repo)."""
    folder = tmp_path_factory.mktemp("services")
    job_port, pool_port = _free_port(), _free_port()
    with ExitStack() as stack:
        job_log = _start(
            stack,
            "apache_beam.runners.portability.local_job_service_main",
            ["--port", str(job_port)],
            job_port,
            folder,
        )
        pool_log = _start(
            stack,
            "apache_beam.runners.worker.worker_pool_main",
            ["--service_port", str(pool_port)],
            pool_port,
            folder,
        )
        yield {"job_port": job_port, "pool_port": pool_port, "job_log": job_log, "pool_log": pool_log}


@pytest.fixture(scope="module")
def ingested(crawl_dir, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("portable_input") / "ingested")
    ingest.run(str(crawl_dir), out, workers=1)
    return out


def _read(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _rows(stage_dir: str) -> dict[str, dict[str, list[dict]]]:
    """``{kind: {shard file name: rows}}`` of a stage folder."""
    return {
        kind: {os.path.basename(p): pq.read_table(p).to_pylist() for p in list_shards(stage_dir, kind)}
        for kind in KINDS
    }


def _content(rows: dict) -> list[tuple[str, str]]:
    """(id, sha256 of the text) of every kept document, in shard and row order."""
    return [(r["id"], hashlib.sha256(r["text"].encode()).hexdigest()) for shard in rows.values() for r in shard]


def test_portable_runner_with_job_service_and_worker_pool_matches_fn_api_runner(services, ingested, tmp_path, capsys):
    local = str(tmp_path / "local")
    langid.main(["--input", ingested, "--output", local, *LANGID_ARGS, "--workers", "1"])  # FnApiRunner
    capsys.readouterr()

    client = tmp_path / "client"  # a relative --output from a third directory: the workers must write it here
    client.mkdir()
    started = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.langid", "--input", ingested, "--output", "portable", *LANGID_ARGS,
         "--runner=PortableRunner", f"--job_endpoint=localhost:{services['job_port']}",
         "--environment_type=EXTERNAL", f"--environment_config=localhost:{services['pool_port']}"],
        cwd=client, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    seconds = time.time() - started
    assert result.returncode == 0, result.stderr[-3000:] + _tail(services["job_log"]) + _tail(services["pool_log"])
    portable = str(client / "portable")

    # It ran on the job service, in an SDK worker the pool started.
    assert "Starting worker with command" in _tail(services["pool_log"], 100_000)
    assert "with state DONE" in _tail(services["job_log"], 100_000)

    ours, theirs = _read(f"{portable}/_SUCCESS.json"), _read(f"{local}/_SUCCESS.json")
    assert json.loads(result.stdout)["docs_out"] == ours["docs_out"]
    for volatile in ("output", "seconds"):
        ours.pop(volatile), theirs.pop(volatile)
    assert ours == theirs  # docs, drops, languages, bytes, shards and Beam's counters
    assert ours["dropped"] == {"lang_not_selected": 2} and ours["docs_in"] == 16 and ours["docs_out"] == 14
    counters = ours["beam_counters"]  # the portable path reports the DoFns' metrics back through the job service
    assert counters["langid/docs_in"] == ours["docs_in"] and counters["langid/docs_out"] == ours["docs_out"]
    assert counters["langid/dropped_lang_not_selected"] == 2 and counters["langid/shards_processed"] == ours["shards"]
    assert _read(f"{portable}/_config.json") == _read(f"{local}/_config.json")

    rows, expected = _rows(portable), _rows(local)
    assert {k: sorted(v) for k, v in rows.items()} == {k: sorted(v) for k, v in expected.items()}
    assert _content(rows["data"]) == _content(expected["data"]) and len(_content(rows["data"])) == 14
    assert rows == expected  # every column of every row, excluded documents too
    print(f"portable run: {seconds:.1f}s, {ours['docs_out']}/{ours['docs_in']} docs, counters {counters}")


class _Submission(Exception):
    """Raised where the job server's process would start: nothing is launched or submitted."""


@pytest.mark.parametrize(
    "runner, flags, java_args",
    [
        (
            "FlinkRunner",
            ["--flink_job_server_jar={jar}", "--flink_master=localhost:8081"],
            ["--flink-master", "http://localhost:8081"],
        ),
        (
            "SparkRunner",
            ["--spark_job_server_jar={jar}", "--spark_master_url=spark://localhost:7077"],
            ["--spark-master-url", "spark://localhost:7077"],
        ),
    ],
)
def test_flink_and_spark_take_a_local_job_server_jar(runner, flags, java_args, ingested, tmp_path, monkeypatch):
    from apache_beam.options.pipeline_options import (
        FlinkRunnerOptions,
        PortableOptions,
        SparkRunnerOptions,
        StandardOptions,
    )
    from apache_beam.portability.api import beam_runner_api_pb2
    from apache_beam.runners.portability.portable_runner import PortableRunner
    from apache_beam.utils import subprocess_server

    jar = tmp_path / f"beam-runners-{runner.lower()}-job-server.jar"
    jar.write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip: never run
    beam_args = [f"--runner={runner}", *(f.format(jar=jar) for f in flags), "--environment_type=EXTERNAL",
                 "--environment_config=localhost:50000", f"--artifacts_dir={tmp_path / 'artifacts'}"]  # fmt: skip

    options = pipeline_options(beam_args)
    assert options.view_as(StandardOptions).runner == runner
    assert options.view_as(PortableOptions).environment_type == "EXTERNAL"
    if runner == "FlinkRunner":
        assert options.view_as(FlinkRunnerOptions).flink_job_server_jar == str(jar)
    else:
        assert options.view_as(SparkRunnerOptions).spark_job_server_jar == str(jar)

    def no_download(*args, **kwargs):
        raise AssertionError(f"a job-server jar download was attempted: {args}")

    def stop_before_start(server):
        raise _Submission(server._cmd)

    pipelines_seen = []
    run_portable = PortableRunner.run_portable_pipeline

    def spy(self, pipeline, options):
        pipelines_seen.append(pipeline)
        return run_portable(self, pipeline, options)

    monkeypatch.setattr(subprocess_server.JavaJarServer, "_download_jar_to_cache", no_download)
    monkeypatch.setattr(subprocess_server.SubprocessServer, "start", stop_before_start)
    monkeypatch.setattr(PortableRunner, "run_portable_pipeline", spy)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the job server's scratch folder

    out = str(tmp_path / "out")
    with pytest.raises(_Submission) as stopped:  # the stage's command line, as a user would run it
        langid.main(["--input", ingested, "--output", out, *LANGID_ARGS, *beam_args])

    cmd = stopped.value.args[0]
    assert cmd[0] == "java" and cmd[cmd.index("-jar") + 1] == str(jar)
    assert cmd[cmd.index(java_args[0]) : cmd.index(java_args[0]) + 2] == java_args

    (graph,) = pipelines_seen  # the stage's graph as the runner would submit it
    names = {t.unique_name for t in graph.components.transforms.values()}
    assert {"Shards", "Spread", "Process"} <= names
    environments = [e for e in graph.components.environments.values() if e.urn == "beam:env:external:v1"]
    assert environments
    endpoints = {beam_runner_api_pb2.ExternalPayload.FromString(e.payload).endpoint.url for e in environments}
    assert endpoints == {"localhost:50000"}
    assert list_shards(out) == [] and not os.path.exists(f"{out}/_SUCCESS.json")  # nothing ran
