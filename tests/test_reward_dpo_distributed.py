"""The reward model and offline DPO under ``torchrun --nproc_per_node 2`` (gloo, CPU) train like one process with the
same ``batch_size``: each rank takes half of every step's pairs, the gradients are all-reduced once per step, the
logged losses and statistics and the held-out numbers are sums over both ranks, and DPO's reference
log-probabilities are computed half by each rank and stored once. The last step holds one pair (13 training pairs,
4 per step), so rank 1 runs it with weight 0. DPO is killed after step 2 under torchrun and resumed under torchrun.
Not bitwise: the all-reduce adds the ranks' gradients in another order than one process accumulates them.

    .venv/bin/python -m pytest -q tests/test_reward_dpo_distributed.py
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_reward_dpo import marker_pairs, tiny_folder, write_jsonl

from training import dpo
from training import reward_model as rm

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
LAUNCH_VARS = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT"}
TOLERANCE = 1e-5
STEPS = 4  # 13 training pairs in steps of 4: 4, 4, 4, 1
COMMON = dict(batch_size=4, lr=1e-3, min_lr=1e-4, heldout_fraction=0.25, max_len=128, device="cpu", num_threads=1)


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory):
    return tiny_folder(tmp_path_factory.mktemp("sft"), 0)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", marker_pairs()[:19])


def torchrun(module, args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env |= {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env_extra or {})}
    cmd = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", module, *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def cli_args(settings: dict) -> list[str]:
    return [a for k, v in settings.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def metrics(out: Path) -> tuple[dict, dict]:
    """Training records by step, validation records by step."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records if "loss" in r}, {r["step"]: r for r in records if "val_loss" in r}


def max_differences(one: Path, two: Path, names: tuple[str, ...]) -> tuple[float, float]:
    """Largest difference of any logged number in ``names`` (training and validation records), and of any weight."""
    (train_a, val_a), (train_b, val_b) = metrics(one), metrics(two)
    assert sorted(train_a) == sorted(train_b) == list(range(1, STEPS + 1))
    assert sorted(val_a) == sorted(val_b) == [0, STEPS]
    assert [train_b[s]["pairs"] for s in sorted(train_b)] == [4, 4, 4, 1]
    logged = max(
        abs(records_a[s][k] - records_b[s][k])
        for records_a, records_b, keys in ((train_a, train_b, names), (val_a, val_b, [f"val_{n}" for n in names]))
        for s in records_a
        for k in keys
    )
    a, b = load_file(one / "final" / "model.safetensors"), load_file(two / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    weights = max(float((a[k] - b[k]).abs().max()) for k in a)
    init = load_file(one / "init.safetensors")
    moved = max(float((a[k] - init[k]).abs().max()) for k in a)
    assert moved > 100 * TOLERANCE  # the runs trained: the comparison is not of two copies of the init
    return logged, weights


def keep_init(init_dir: str, out: Path, recipe_model) -> None:
    """The starting weights beside a run, to show that training moved them."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)  # the reward model's new score head: the seed the run uses
    model = recipe_model(init_dir)
    save_file({k: v.detach().clone() for k, v in model.state_dict().items()}, out / "init.safetensors")


def test_reward_model_under_torchrun_trains_like_one_process(init_dir, pairs, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    settings = {**COMMON, "center_coefficient": 0.1, "checkpoint_every": 2}
    keep_init(init_dir, one, rm.load_reward_model)
    single = rm.run(rm.RewardModelSettings(**settings, micro_batch_size=2), {"m": pairs}, str(one), init_dir)
    assert single["steps"] == STEPS and single["world_size"] == 1
    # micro-batches of 1 pair: each rank accumulates 2 passes per step (DDP's no_sync, then one all-reduce)
    proc = torchrun(
        "training.reward_model",
        [
            "--pairs",
            f"m={pairs}",
            "--init",
            init_dir,
            "--output",
            str(two),
            *cli_args(settings | {"micro_batch_size": 1}),
        ],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((two / "summary.json").read_text())
    assert (summary["world_size"], summary["steps"], summary["heldout_pairs"]) == (2, STEPS, 6)
    logged, weights = max_differences(one, two, ("loss", "accuracy", "margin", "score"))
    print(f"reward model, 1 vs 2 processes: logged numbers max diff {logged:.3g}, weights max diff {weights:.3g}")
    assert logged <= TOLERANCE and weights <= TOLERANCE
    checkpoint = two / "checkpoints" / f"step_{STEPS:06d}"
    assert {"rng_rank0.pt", "rng_rank1.pt", "trainer_state.json"} <= {p.name for p in checkpoint.iterdir()}


def test_dpo_under_torchrun_resumes_after_sigkill_and_trains_like_one_process(init_dir, pairs, tmp_path):
    from training.signals import KILL_AFTER_STEP_ENV

    one, two = tmp_path / "one", tmp_path / "two"
    settings = {**COMMON, "micro_batch_size": 2, "checkpoint_every": 1, "beta": 0.5}
    keep_init(init_dir, one, dpo.load_policy)
    single = dpo.run(dpo.DpoSettings(**settings), {"m": pairs}, str(one), init_dir)
    assert single["steps"] == STEPS
    args = ["--pairs", f"m={pairs}", "--init", init_dir, "--output", str(two), *cli_args(settings)]
    killed = torchrun("training.dpo", args, {KILL_AFTER_STEP_ENV: "2"})
    assert killed.returncode != 0 and not (two / "summary.json").exists(), killed.stderr[-3000:]
    assert (two / "checkpoints" / "step_000002").is_dir() and (two / dpo.REFERENCE_FILE).exists()
    resumed = torchrun("training.dpo", args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((two / "summary.json").read_text())
    assert (summary["world_size"], summary["steps"], summary["resumed_from_step"]) == (2, STEPS, 2)
    # the reference log-probabilities: every pair once, as one process computes them
    ref_one = json.loads((one / dpo.REFERENCE_FILE).read_text())
    ref_two = json.loads((two / dpo.REFERENCE_FILE).read_text())
    assert ref_one["key"] == ref_two["key"] and ref_one["logps"].keys() == ref_two["logps"].keys()
    ref_diff = max(abs(a - b) for k in ref_one["logps"] for a, b in zip(ref_one["logps"][k], ref_two["logps"][k]))
    logged, weights = max_differences(one, two, ("loss", "accuracy", "margin", "chosen_reward", "rejected_reward"))
    print(
        f"DPO, 1 vs 2 processes (killed after step 2, resumed): reference logps max diff {ref_diff:.3g}, logged "
        f"numbers max diff {logged:.3g}, weights max diff {weights:.3g}"
    )
    assert ref_diff <= TOLERANCE and logged <= TOLERANCE and weights <= TOLERANCE


def test_batch_size_must_split_evenly_over_the_processes(init_dir, pairs, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="batch_size=4 is not a multiple of the 3 processes"):
        rm.run(rm.RewardModelSettings(**COMMON), {"m": pairs}, str(tmp_path / "x"), init_dir)
    assert not (tmp_path / "x").exists()
