"""The pretraining group materialized for real (Beam stages, proxy search, two training stages through Pipes),
and a base-model run launched from the UI's GraphQL API and cancelled there: the trainer process must stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
from conftest import make_mix_corpus

from assets.curation import curation_assets
from assets.metadata import column, table_rows
from assets.pretraining import pretraining_assets
from dagster_project.resources import CurationResource, TrainingResource

SEQ_LEN = 64
CANDIDATES = [
    {"name": "web-heavy", "domain_weights": {"web": 0.9, "code": 0.1}},
    {"name": "code-heavy", "domain_weights": {"web": 0.4, "code": 0.6}},
]


def _run_config(corpus: Path) -> dict:
    train = {"max_steps": 4, "micro_batch_size": 4, "warmup_steps": 1, "checkpoint_every": 2, "eval_every": 2}
    return {
        "ops": {
            "mixture_index": {"config": {"inputs": [str(corpus / "*.jsonl")], "heldout_fraction": 0.1}},
            "mixture_search": {"config": {"candidates": CANDIDATES, "steps": 2, "micro_batch_size": 2}},
            "pretraining_mixture": {"config": {"token_budget": 12_000, "output_shards": 2}},
            "long_context_mixture": {"config": {"token_budget": 6_000, "output_shards": 2}},
            "base_model": {"config": train},
            "long_context_model": {"config": {**train, "max_steps": 2, "micro_batch_size": 1}},
        }
    }


def _resources(data_root: Path) -> dict:
    return {
        "curation": CurationResource(data_root=str(data_root), workers=2),
        "training": TrainingResource(stage1_seq_len=SEQ_LEN, model_size="tiny"),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    }


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretraining")
    corpus = root / "corpus"
    corpus.mkdir()
    make_mix_corpus(corpus)
    result = dg.materialize(
        [*curation_assets, *pretraining_assets],
        selection=dg.AssetSelection.groups("pretraining"),
        resources=_resources(root / "data"),
        run_config=_run_config(corpus),
        raise_on_error=False,
    )
    return result, root


def _metadata(result, asset: str) -> dict:
    events = result.asset_materializations_for_node(asset)
    assert events, f"{asset} was not materialized"
    return {k: v.value for k, v in events[-1].metadata.items()}


def test_every_pretraining_asset_and_check_succeeds(materialized):
    result, _ = materialized
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert len(checks) == 10  # every check of the group ran
    failed = [(c.asset_key.to_user_string(), c.check_name, c.metadata) for c in checks if not c.passed]
    assert not failed


def test_search_compares_candidates_and_the_mix_follows_the_winner(materialized):
    result, root = materialized
    search = _metadata(result, "mixture_search")
    assert search["winner"] in {"web-heavy", "code-heavy"}
    candidates = {row["candidate"]: row for row in table_rows(search["candidates"])}
    assert set(candidates) == {"web-heavy", "code-heavy"}
    assert candidates[search["winner"]]["verdict"] == "winner"
    assert all(isinstance(row["validation loss"], float) for row in candidates.values())
    summary = json.loads((root / "data/mix/search/search.json").read_text())
    assert len({round(c["val_loss"], 6) for c in summary["candidates"]}) == 2  # really different runs
    mix = _metadata(result, "pretraining_mixture")
    assert json.loads(json.dumps(mix["mixture"]))["domain_weights"] == summary["winner_mixture"]["domain_weights"]
    realised = {row["bucket"]: row for row in table_rows(mix["realised_mix"])}
    assert realised["web/en"]["realised tokens"] > 0
    assert sum(row["realised tokens"] for row in realised.values()) == mix["realised_tokens"]


def test_shards_models_and_rope_base(materialized):
    result, root = materialized
    shards = _metadata(result, "pretraining_shards")
    assert shards["seq_len"] == SEQ_LEN and shards["sequences"] > 0
    assert "zh" in column(shards["tokens_per_language"], "language")
    long_shards = _metadata(result, "long_context_shards")
    assert long_shards["seq_len"] == SEQ_LEN * 8

    base = _metadata(result, "base_model")
    assert base["loss_curve"].startswith("![stage 1")
    assert base["steps"] == 4 and base["rope_theta"] == 10_000
    long = _metadata(result, "long_context_model")
    assert long["rope_theta"] == 1_000_000 and long["seq_len"] == SEQ_LEN * 8
    config = json.loads((root / "data/models/long_context/final/config.json").read_text())
    assert config["max_position_embeddings"] == SEQ_LEN * 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        payload = json.load(response)
    assert "errors" not in payload, payload
    return payload["data"]


def _trainer_pids(config_path: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"training.pretrain" in cmdline and str(config_path).encode() in cmdline:
            pids.append(int(entry.name))
    return pids


LAUNCH = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
  }
}"""
TERMINATE = """
mutation($runId: String!) {
  terminateRun(runId: $runId) { __typename ... on PythonError { message } }
}"""
STATUS = "query($runId: ID!) { runOrError(runId: $runId) { ... on Run { status } } }"


def test_cancelling_a_training_run_in_the_ui_stops_the_trainer(materialized, tmp_path):
    _, root = materialized
    data_root = root / "data"
    port = _free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path),
        "QWEN2_DATA_ROOT": str(data_root),
    }
    dagster = Path(sys.executable).with_name("dagster")
    proc = subprocess.Popen(
        [str(dagster), "dev", "-m", "dagster_project.definitions", "-h", "127.0.0.1", "-p", str(port)],
        env=env,
        start_new_session=True,  # `dagster dev` from a script otherwise ignores SIGTERM/SIGINT
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    config_path = data_root / "models/base/settings.json"
    try:
        deadline = time.time() + 180
        location = None
        while time.time() < deadline and location is None:
            try:
                nodes = _graphql(
                    port, "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"
                )["repositoriesOrError"]["nodes"]
                location = nodes[0]["location"]["name"] if nodes else None
            except OSError:
                time.sleep(1)
        assert location, "dagster dev did not answer"
        params = {
            "selector": {
                "repositoryLocationName": location,
                "repositoryName": "__repository__",
                "jobName": "__ASSET_JOB",
                "assetSelection": [{"path": ["base_model"]}],
            },
            "runConfigData": {
                "ops": {"base_model": {"config": {"max_steps": 100_000, "micro_batch_size": 2}}},
                "resources": {
                    "training": {"config": {"stage1_seq_len": SEQ_LEN}},
                },
            },
        }
        launched = _graphql(port, LAUNCH, {"params": params})["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]

        deadline = time.time() + 240
        while time.time() < deadline and not _trainer_pids(config_path):
            time.sleep(1)
        pids = _trainer_pids(config_path)
        assert pids, "the trainer never started"
        time.sleep(5)  # let it take a few steps

        assert _graphql(port, TERMINATE, {"runId": run_id})["terminateRun"]["__typename"] == "TerminateRunSuccess"
        deadline = time.time() + 120
        status = None
        while time.time() < deadline:
            status = _graphql(port, STATUS, {"runId": run_id})["runOrError"]["status"]
            if status == "CANCELED" and not _trainer_pids(config_path):
                break
            time.sleep(1)
        assert status == "CANCELED"
        assert not _trainer_pids(config_path), "the trainer outlived its cancelled run"
    finally:
        for pid in _trainer_pids(config_path):
            os.kill(pid, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
