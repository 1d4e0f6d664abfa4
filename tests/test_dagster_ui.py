"""`dagster dev` serves the code location on 127.0.0.1 and the UI's GraphQL API lists the curation assets."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dagster_dev_serves_the_asset_graph(tmp_path):
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "QWEN2_DATA_ROOT": str(tmp_path / "data")}
    dagster = Path(sys.executable).with_name("dagster")
    # Its own process group: `dagster dev` started from a script otherwise ignores SIGTERM/SIGINT.
    proc = subprocess.Popen(
        [str(dagster), "dev", "-m", "dagster_project.definitions", "-h", "127.0.0.1", "-p", str(port)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    query = json.dumps({"query": "{ assetNodes { assetKey { path } groupName } }"}).encode()
    nodes = None
    try:
        deadline = time.time() + 180
        while time.time() < deadline and nodes is None:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/graphql", data=query, headers={"Content-Type": "application/json"}
                )
                with urllib.request.urlopen(request, timeout=5) as response:
                    nodes = json.load(response)["data"]["assetNodes"] or None
            except OSError:
                time.sleep(1)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    assert nodes, "dagster dev did not answer"
    groups = {n["assetKey"]["path"][-1]: n["groupName"] for n in nodes}
    assert groups["deduplicated_documents"] == "curation" and groups["raw_documents"] == "curation"
