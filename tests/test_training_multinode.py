"""Pretraining across machines: two ``torchrun`` launches, one per node, train like one process with the same batch.

Both "nodes" run on this machine, but each is launched as a real second machine would launch it: its own
``torchrun`` process with ``--nnodes 2``, rendezvous through the c10d store at one endpoint, its own working
directory and temporary directory, and gloo on the CPU. What the two share is what real nodes share through a network
file system (NFS, Lustre ...): the output folder, and here the packed data too (a node-local copy would do, at the
same path: the path is part of the run key every rank checks a checkpoint against). The output folder must be
shared: rank 1 writes its own files of every checkpoint there (its ``torch.distributed.checkpoint`` shard,
``rng_rank1.pt``) and rank 0 renames the folder into place when all have finished; global rank 0 alone writes
metrics, TensorBoard, ``final/`` and summary.json. Which node holds global rank 0 is the rendezvous's choice (c10d
ignores ``--node_rank``), another reason that every node must see the same output folder.

    .venv/bin/python -m pytest -q tests/test_training_multinode.py
"""

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import torch
from safetensors.torch import load_file
from test_training import losses, random_packed, tiny_config

from training.pretrain import run

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# torchrun/launcher variables a test runner may carry from its own launch; a node's agent sets its workers' own.
LAUNCH_VARS = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT"}
STEPS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_command(node: int, port: int, run_id: str, data: Path, out: Path) -> list[str]:
    """What an operator types on each node: the same command on both. No ``--node_rank``: the c10d rendezvous
    ignores it (torchrun warns so) and numbers the nodes itself."""
    cmd = [str(VENV_BIN / "torchrun"), "--nnodes", "2", "--nproc_per_node", "1"]
    cmd += ["--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", run_id]
    # On real machines the endpoint names node 0, so node 0's agent hosts the c10d store and node 1's connects to it.
    # Here both are 127.0.0.1, which would let either host it (whichever binds first); say which, as node 0 would.
    cmd += ["--rdzv_conf", f"is_host={'true' if node == 0 else 'false'}", "--max_restarts", "0"]
    cmd += ["-m", "training.pretrain", "--data", str(data), "--output", str(out), "--strategy", "ddp"]
    cmd += ["--max-steps", str(STEPS), "--micro-batch-size", "2", "--grad-accum-steps", "1", "--warmup-steps", "1"]
    cmd += ["--lr", "3e-3", "--num-threads", "1", "--checkpoint-every", "2"]
    return cmd


def test_two_torchrun_nodes_train_like_one_process_with_the_same_global_batch(tmp_path):
    """2 nodes x 1 process x 2 rows per step against 1 process x 2 micro-batches of 2 rows (grad accumulation): the
    same 4 rows per step (rank r takes micro-batch r of every global batch), so the same losses and final weights."""
    data = random_packed(tmp_path / "shared" / "packed16", n_rows=24, seq_len=16)  # on the shared file system
    out = tmp_path / "shared" / "run"  # the shared output folder

    single = tmp_path / "single"
    run(tiny_config(data, single, micro_batch_size=2, grad_accum_steps=2, max_steps=STEPS, checkpoint_every=2))

    port, run_id = free_port(), f"multinode-{uuid.uuid4().hex[:8]}"
    nodes = []
    for node in (0, 1):
        home = tmp_path / f"node{node}"  # this machine's own working directory and temporary files
        (home / "tmp").mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
        env.update(TMPDIR=str(home / "tmp"), PYTHONUNBUFFERED="1")
        log = open(home / "torchrun.log", "w")
        proc = subprocess.Popen(
            node_command(node, port, run_id, data, out), cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        nodes.append((proc, log, home))
    try:  # started together; each waits in the rendezvous for the other. A node that fails ends the other's wait.
        deadline = time.monotonic() + 600
        while any(proc.poll() is None for proc, _, _ in nodes) and time.monotonic() < deadline:
            if any(proc.poll() for proc, _, _ in nodes):  # a non-zero exit: give the other node 30 s to notice
                deadline = min(deadline, time.monotonic() + 30)
            time.sleep(0.5)
    finally:
        for proc, log, _ in nodes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    logs = [home.joinpath("torchrun.log").read_text() for _, _, home in nodes]
    for node, ((proc, _, _), text) in enumerate(zip(nodes, logs)):
        assert proc.returncode == 0, f"node {node}:\n{text[-4000:]}"

    summary = json.loads((out / "summary.json").read_text())
    assert (summary["world_size"], summary["strategy"], summary["rows_per_step"]) == (2, "ddp", 4)
    assert summary["tokens_seen"] == STEPS * 4 * 16
    # Global rank 0 alone logged (one node printed progress, metrics.jsonl has one line per step, not one per node);
    # rank 1 wrote its checkpoint files to the shared folder; neither node left files in its working directory.
    assert sorted(text.count("starting: ") for text in logs) == [0, 1]
    distributed, reference = losses(out), losses(single)
    assert sorted(distributed) == sorted(reference) == list(range(1, STEPS + 1))
    checkpoint = out / "checkpoints" / f"step_{STEPS:06d}"
    assert {"__0_0.distcp", "__1_0.distcp", "rng_rank0.pt", "rng_rank1.pt"} <= {p.name for p in checkpoint.iterdir()}
    for _, _, home in nodes:
        assert sorted(p.name for p in home.iterdir()) == ["tmp", "torchrun.log"]

    # Tolerances: 1e-5 on losses and weights. The rows, micro-batch shapes, thread count (1) and initial weights are
    # the same; what differs is where the two halves of a step meet. One process adds micro-batch 2's gradients to
    # micro-batch 1's in .grad; DDP adds the two ranks' gradients in a gloo all-reduce (each scaled by 2 before and
    # halved after: exact). With two ranks that is one float32 addition per element either way, and addition is
    # commutative, so the weights come out equal here (0 measured). More ranks, or a reduction that chunks and
    # reorders, would sum in another order and differ by float32 rounding (~1e-7 relative), which AdamW can amplify
    # where a gradient is near zero. The logged loss sums the two halves in float32 in one process, in float64
    # across ranks: half a float32 ulp at loss 12 (4.8e-7 measured). A real fault (wrong rows per rank, a missing
    # gradient sync) changes what a step computes, not how it rounds: a weight moves by up to lr = 3e-3 per step.
    loss_diff = max(abs(distributed[s] - reference[s]) for s in reference)
    assert loss_diff <= 1e-5, (distributed, reference)
    got, want = load_file(out / "final" / "model.safetensors"), load_file(single / "final" / "model.safetensors")
    assert sorted(got) == sorted(want)
    weight_diff = max(float((got[k] - want[k]).abs().max()) for k in want)
    print(f"max |loss diff| {loss_diff:.3g}, max |weight diff| {weight_diff:.3g}")
    assert weight_diff <= 1e-5
    assert torch.isfinite(torch.tensor(list(distributed.values()))).all()
