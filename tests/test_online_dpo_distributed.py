"""Online DPO (training.online_dpo) under ``torchrun --nproc_per_node 2`` (gloo, CPU) runs like one process: each rank
samples, scores and computes the log-probabilities of half of every episode's prompts (every sample seeded by the
episode, its index and its prompt, so the samples do not depend on which rank draws them), all ranks gather them,
rank 0 writes the one episode shard, every rank forms the same pairs, and the DPO update is data-parallel over them
(OnDARE merging on: its masks are seeded by the step, the same on both ranks). The torchrun run is killed in episode 2
and resumed under torchrun. Compared with an uninterrupted one-process run: the same sample texts, pairs and
reward-model scores in the shards (measured: equal), the per-episode metrics within ``TOLERANCE`` relative.

Not bitwise: the all-reduce adds the ranks' gradients in another order than one process accumulates them. AdamW turns
that rounding noise into updates of about lr where a gradient is zero up to rounding (the key biases of attention,
part of layer 0's query/key weights: measured with this lr of 1e-2, a few hundredths of a percent of the weights
differ by up to ~3e-3, all others by under 1e-5; one process with ``micro_batch_size`` 2 instead of 1 differs from
itself the same way, up to ~7e-4). So the weights are compared by the share of them within ``TOLERANCE`` and by the
L2 distance relative to how far they moved, and the L1 norms of the update (``update_l1``) more loosely.

    .venv/bin/python -m pytest -q tests/test_online_dpo_distributed.py
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file
from test_online_dpo import models  # noqa: F401  (the module's tiny base, SFT and reward models)

from training import online_dpo as od

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
LAUNCH_VARS = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT"}
TOLERANCE = 1e-5
EPISODES = 2
# 8 prompts x 4 samples per episode, 4 held out (2 per rank); pairs in steps of 4, one pair per pass (the first pass
# of a rank's share without gradient sync), so a step of an odd number of pairs leaves rank 1 a weight-0 pass.
SETTINGS = dict(
    episodes=EPISODES, prompts_per_episode=8, samples_per_prompt=4, max_new_tokens=4, heldout_prompts=4, margin=0.1,
    lr=1e-2, min_lr=1e-3, beta=0.5, batch_size=4, micro_batch_size=1, max_len=128, device="cpu", num_threads=1,
    merging="ondare", merging_density=0.5, merging_alpha=0.01,
)  # fmt: skip
METRICS = ("mean_reward", "reward_std", "reward_gap", "loss", "accuracy", "margin", "chosen_reward", "rejected_reward",
           "kl", "reply_tokens", "grad_norm", "merge_kept", "win_rate", "heldout_reward",
           "sft_heldout_reward")  # fmt: skip


def cli_args(models_: dict, out: Path) -> list[str]:
    args = ["--policy", models_["sft"], "--reward-model", models_["reward"], "--base", models_["base"],
            "--prompts", f"sft={models_['prompts']}", "--output", str(out)]  # fmt: skip
    return args + [a for k, v in SETTINGS.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def launch(args: list[str], nproc: int, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env |= {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env_extra or {})}
    if nproc == 1:
        cmd = [sys.executable, "-m", "training.online_dpo", *args]
    else:
        cmd = [str(VENV_BIN / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", "-m", "training.online_dpo"]
        cmd += args
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def episode_records(out: Path) -> dict:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines) if r["step"] > 0}


def test_torchrun_2_processes_sample_pair_and_train_like_one(models, tmp_path):  # noqa: F811
    one, two = tmp_path / "one", tmp_path / "two"
    whole = launch(cli_args(models, one), 1)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = launch(cli_args(models, two), 2, {od.KILL_IN_EPISODE_ENV: "2"})
    assert killed.returncode != 0, killed.stderr[-3000:]
    resumed = launch(cli_args(models, two), 2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "samples on 2 x cpu" in resumed.stdout + resumed.stderr
    assert json.loads((two / "summary.json").read_text())["resumed_from_episode"] == 1

    # the episode shards: the same samples (texts, finish reasons), scores and pairs
    diffs = {k: 0.0 for k in ("score", "reward_model_score", "policy_logp", "reference_logp", "gap")}
    for n in range(EPISODES):
        name = f"episode-{n:05d}.parquet"
        a, b = pq.read_table(one / "episodes" / name).to_pylist(), pq.read_table(two / "episodes" / name).to_pylist()
        assert len(a) == len(b) == 8 * 4
        for x, y in zip(a, b):
            for k in ("prompt_id", "sample_index", "response", "finish_reason", "completion_tokens", "reply_tokens",
                      "chosen_index", "rejected_index", "pair_kept", "pair_reason", "role"):  # fmt: skip
                assert x[k] == y[k], (n, k, x, y)
            for k in diffs:  # the policy's log-probabilities of episode 2: after an update (relative)
                diffs[k] = max(diffs[k], abs(x[k] - y[k]) / max(1.0, abs(x[k])))
    assert max(diffs.values()) <= 10 * TOLERANCE, diffs  # measured 6e-6: room for another BLAS's rounding

    # the per-episode metrics (relative differences)
    ra, rb = episode_records(one), episode_records(two)
    assert sorted(ra) == sorted(rb) == list(range(1, EPISODES + 1))
    assert all(ra[s]["pairs_kept"] == rb[s]["pairs_kept"] > 0 for s in ra)
    assert any(ra[s]["pairs_kept"] % 4 % 2 for s in ra), "no step left rank 1 a weight-0 pass"

    def rel(k: str) -> float:
        return max(abs(ra[s][k] - rb[s][k]) / max(1.0, abs(ra[s][k])) for s in ra)

    metric_diff = max(rel(k) for k in METRICS)
    l1_diff = max(rel(k) for k in ("update_l1", "merged_update_l1"))
    assert metric_diff <= TOLERANCE and l1_diff <= 1e-3, (metric_diff, l1_diff)

    # the final weights
    a, b = load_file(one / "final" / "model.safetensors"), load_file(two / "final" / "model.safetensors")
    sft = load_file(Path(models["sft"]) / "model.safetensors")
    assert a.keys() == b.keys()
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    weight_diff, off = float(diff.max()), float((diff > TOLERANCE).float().mean())
    distance = float(torch.cat([(a[k] - b[k]).flatten() for k in a]).double().norm())
    moved = float(torch.cat([(a[k] - sft[k]).flatten() for k in a]).double().norm())
    assert moved > 1.0  # the runs trained
    assert off <= 1e-3 and distance <= 1e-3 * moved, (off, distance, moved)
    print(
        f"max relative diff: shard values {max(diffs.values()):.2e}, metrics {metric_diff:.2e}, update L1 "
        f"{l1_diff:.2e}; weights: max diff {weight_diff:.2e}, share over {TOLERANCE:g} {off:.2e}, L2 distance "
        f"{distance:.2e} of {moved:.2e} moved"
    )
