"""Shared helpers of the benchmarks: corpus sampling, input shards, and running one side in its own process.

Each benchmark script runs every side (ours, datatrove) as a child process of itself (``--side NAME``), so the
sides do not share imports, caches or memory; the parent measures the child's process tree (peak of the summed
RSS, sampled every 50 ms) and reads the child's own timing from a JSON file.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPORA = REPO.parent / "shared" / "corpora"
sys.path.insert(0, str(REPO))  # `python benchmarks/x.py` puts benchmarks/, not the repo, on sys.path


def arg_parser(
    doc: str, limit: int, shards: int | None, limit_help: str = "documents to benchmark"
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=limit, help=f"{limit_help} (default {limit})")
    if shards is not None:
        parser.add_argument(
            "--shards", type=int, default=shards, help=f"input shards = datatrove tasks (default {shards})"
        )
    parser.add_argument("--workers", type=int, default=2, help="worker processes on each side (default 2)")
    parser.add_argument("--workdir", default=None, help="where inputs and outputs go (default: a new temp dir)")
    parser.add_argument("--corpora", default=str(DEFAULT_CORPORA), help="folder of the prepared JSONL.gz corpora")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--side", help=argparse.SUPPRESS)  # internal: run one side in this process
    return parser


def make_workdir(path: str | None, name: str) -> str:
    if path:
        os.makedirs(path, exist_ok=True)
        return path
    return tempfile.mkdtemp(prefix=f"{name}-")


def read_corpus(corpora: str, name: str) -> list[dict]:
    with gzip.open(os.path.join(corpora, f"{name}.jsonl.gz"), "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def write_shards(docs: list[dict], folder: str, shards: int, seed: int = 0) -> None:
    """Shuffle ``docs`` and deal them into ``shards`` JSONL.gz files."""
    ids = [d["id"] for d in docs]
    assert len(set(ids)) == len(ids), "document ids must be unique"
    docs = docs[:]
    random.Random(seed).shuffle(docs)
    os.makedirs(folder, exist_ok=True)
    for i in range(shards):
        with gzip.open(os.path.join(folder, f"part-{i:05d}.jsonl.gz"), "wt", encoding="utf-8", compresslevel=1) as f:
            for doc in docs[i::shards]:
                f.write(json.dumps(doc, ensure_ascii=False) + "\n")


def parquet_rows(folder: str, columns: list[str]) -> list[dict]:
    import pyarrow.parquet as pq

    rows = []
    for path in sorted(glob.glob(os.path.join(folder, "*.parquet"))):
        rows += pq.read_table(path, columns=columns).to_pylist()
    return rows


def jsonl_rows(folder: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(os.path.join(folder, "*.jsonl.gz"))):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            rows += [json.loads(line) for line in f]
    return rows


class TreeRSS:
    """Peak of the summed RSS of a process and all its descendants, sampled in a thread every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.root, self.interval, self.peak = psutil.Process(pid), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            total = 0
            try:
                procs = [self.root] + self.root.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            for proc in procs:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:  # exited between listing and reading
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_side(script: str, side: str, argv: list[str], workdir: str) -> dict:
    """Run ``script ARGV --side SIDE`` as a child process (output in ``WORKDIR/SIDE.log``).

    Returns the dict the child saved with ``save_result``, plus ``peak_rss_mb``.
    """
    log_path, result_path = (os.path.join(workdir, f"{side}.{ext}") for ext in ("log", "json"))
    with open(log_path, "w") as log:
        child = subprocess.Popen(
            [sys.executable, script, *argv, "--side", side, "--workdir", workdir], stdout=log, stderr=subprocess.STDOUT
        )
        with TreeRSS(child.pid) as rss:
            child.wait()
    if child.returncode != 0:
        with open(log_path) as log:
            tail = "".join(log.readlines()[-30:])
        sys.exit(f"{side} failed (exit {child.returncode}); end of {log_path}:\n{tail}")
    with open(result_path) as f:
        result = json.load(f)
    result["peak_rss_mb"] = rss.peak / 2**20
    return result


def save_result(workdir: str, side: str, result: dict) -> None:
    with open(os.path.join(workdir, f"{side}.json"), "w") as f:
        json.dump(result, f)


def warn_if_busy() -> None:
    """Timings on a shared 2-core machine mean little while something else computes: say so up front."""
    busy = psutil.cpu_percent(interval=2.0)
    if busy > 20:
        print(f"WARNING: the machine is {busy:.0f}% busy before the benchmark starts; timings will be noisy")


def print_table(header: list[str], rows: list[list]) -> None:
    """Columns of numbers right-aligned (floats with one decimal), text left-aligned."""
    numeric = [all(isinstance(row[i], int | float) for row in rows) for i in range(len(header))]
    cells = [header] + [
        [f"{v:,.1f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v) for v in row]
        for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for n, row in enumerate(cells):
        print("  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
