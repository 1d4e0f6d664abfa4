"""Pretraining: Qwen2 shapes, packed-document masking, exact resume after SIGKILL, torchrun (gloo), stage 2."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipelines.schema import PACKED_SCHEMA
from training.data import IGNORE_INDEX, PackedShards, epoch_order
from training.model_configs import (
    MODEL_SIZES,
    STAGE2_ROPE_THETA,
    count_parameters,
    qwen2_config,
    rope_theta_of,
)
from training.pretrain import KILL_AFTER_STEP_ENV, PretrainConfig, TrainingInterrupted, config_from_args, run

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# The released checkpoints' parameter counts (model cards / safetensors index of Qwen/Qwen2-*).
PUBLISHED_PARAMETERS = {"0.5B": 494_032_768, "1.5B": 1_543_714_304, "7B": 7_615_616_512, "72B": 72_706_203_648}


def write_packed(folder: Path, rows: list[list[int]], doc_lengths: list[list[int]], seq_len: int, **kw) -> Path:
    """A finished packed stage folder: two shards, row groups of 4 rows."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "_config.json").write_text(json.dumps({"seq_len": seq_len}))
    half = (len(rows) + 1) // 2
    for shard, start in enumerate((0, half)):
        part = slice(start, start + half)
        table = pa.table(
            {"input_ids": rows[part], "doc_lengths": doc_lengths[part], "seq_index": list(range(len(rows)))[part]},
            schema=PACKED_SCHEMA,
        )
        pq.write_table(table, folder / "data" / f"part-{shard}.parquet", row_group_size=4)
    if kw.get("success", True):
        (folder / "_SUCCESS.json").write_text("{}")
    return folder


def random_packed(folder: Path, n_rows: int, seq_len: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows, lengths = [], []
    for _ in range(n_rows):
        rows.append(rng.integers(0, 151_643, seq_len).tolist())
        cuts = sorted(rng.choice(np.arange(1, seq_len), 2, replace=False).tolist())
        lengths.append([cuts[0], cuts[1] - cuts[0], seq_len - cuts[1]])
    return write_packed(folder, rows, lengths, seq_len)


def tiny_config(data: Path, out: Path, **kw) -> PretrainConfig:
    defaults = dict(micro_batch_size=2, max_steps=4, warmup_steps=1, lr=3e-3, log_every=1, num_threads=1)
    return PretrainConfig(data=str(data), output_dir=str(out), **{**defaults, **kw})


def losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert len(steps) == len(set(steps)), f"duplicate steps in metrics.jsonl: {steps}"
    return {r["step"]: r["loss"] for r in records if "loss" in r}


@pytest.fixture(scope="module")
def data16(tmp_path_factory) -> Path:
    return random_packed(tmp_path_factory.mktemp("packed16"), n_rows=24, seq_len=16)


@pytest.fixture(scope="module")
def reference_run(data16, tmp_path_factory) -> tuple[Path, dict]:
    """An uninterrupted 6-step run: the baseline for exact resume, and the stage-1 checkpoint for stage 2."""
    out = tmp_path_factory.mktemp("reference")
    summary = run(tiny_config(data16, out, max_steps=6, checkpoint_every=2, val_data=str(data16), eval_every=3))
    return out, summary


# ---- model shapes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", sorted(PUBLISHED_PARAMETERS))
def test_recipe_sizes_match_the_released_parameter_counts_on_meta_device(size):
    from transformers import AutoModelForCausalLM

    config = qwen2_config(size)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    real = sum(p.numel() for p in model.parameters())  # shared (tied) tensors are listed once
    assert real == count_parameters(size) == PUBLISHED_PARAMETERS[size]
    assert model.model.layers[0].self_attn.q_proj.bias is not None  # QKV bias
    assert model.model.layers[0].self_attn.o_proj.bias is None
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == config.tie_word_embeddings


def test_every_size_builds_a_config_and_stage_two_overrides_read_back():
    for size in MODEL_SIZES:
        config = qwen2_config(size)
        assert config.max_position_embeddings == 4096 and rope_theta_of(config) == 10_000.0
        assert config.rms_norm_eps == 1e-6 and config.vocab_size >= 151_936
        assert count_parameters(size) > 0
    config = qwen2_config("0.5B", max_position_embeddings=32_768, rope_theta=STAGE2_ROPE_THETA)
    assert (config.max_position_embeddings, rope_theta_of(config)) == (32_768, 1e6)
    with pytest.raises(ValueError, match="unknown model size"):
        qwen2_config("3B")


# ---- data ------------------------------------------------------------------------------------------------------


def test_packed_shards_read_lazily_and_build_positions_and_labels(tmp_path):
    rows = [[100 * r + t for t in range(8)] for r in range(10)]
    lengths = [[3, 5] if r % 2 else [8] for r in range(10)]
    data = PackedShards(str(write_packed(tmp_path, rows, lengths, seq_len=8)), cache_row_groups=2)
    assert (len(data), data.seq_len, data.row_group_sizes) == (10, 8, [4, 1, 4, 1])
    assert not data._cache  # only footers were read

    batch = data.batch([7, 2])
    assert batch["input_ids"].tolist() == [rows[7], rows[2]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 4], list(range(8))]
    assert batch["labels"][0].tolist() == [IGNORE_INDEX, 701, 702, IGNORE_INDEX, 704, 705, 706, 707]
    assert batch["labels"][1].tolist() == [IGNORE_INDEX] + rows[2][1:]
    data.batch([0, 4, 9, 5])
    assert len(data._cache) <= 2


def test_epoch_order_is_a_deterministic_permutation_per_epoch():
    a, b = epoch_order(50, seed=1, epoch=0), epoch_order(50, seed=1, epoch=0)
    assert np.array_equal(a, b) and sorted(a.tolist()) == list(range(50))
    assert not np.array_equal(a, epoch_order(50, seed=1, epoch=1))
    blocked = epoch_order(50, seed=1, epoch=0, blocks=[10] * 5, window=2)
    assert sorted(blocked.tolist()) == list(range(50))
    first_window_groups = {int(i) // 10 for i in blocked[:20]}
    assert len(first_window_groups) == 2  # two row groups per window: each is read once per epoch


def test_folder_without_success_marker_or_with_short_rows_is_refused(tmp_path):
    unfinished = write_packed(tmp_path / "unfinished", [[1] * 8], [[8]], seq_len=8, success=False)
    with pytest.raises(ValueError, match="_SUCCESS.json"):
        PackedShards(str(unfinished))
    with pytest.raises(SystemExit, match="_SUCCESS.json"):
        from training.pretrain import main

        main(["--data", str(unfinished), "--output", str(tmp_path / "out")])
    short = write_packed(tmp_path / "short", [[1] * 8, [2] * 6], [[8], [6]], seq_len=8)
    with pytest.raises(ValueError, match="seq_len 8"):
        PackedShards(str(short)).batch([0, 1])


def test_second_document_of_a_packed_row_sees_only_itself():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(qwen2_config("tiny"), attn_implementation="sdpa").eval()
    assert model.config._attn_implementation == "sdpa"
    doc_a, doc_b, doc_c = (torch.randint(0, 151_643, (n,)).tolist() for n in (5, 7, 4))
    from training.data import positions_and_labels

    row = torch.tensor([doc_a + doc_b + doc_c])
    position_ids, _ = positions_and_labels(row, [np.array([5, 7, 4])])
    with torch.no_grad():
        packed = model(input_ids=row, position_ids=position_ids, use_cache=False).logits[0, 5:12]
        alone = model(input_ids=torch.tensor([doc_b]), use_cache=False).logits[0]
        unmasked = model(input_ids=row, use_cache=False).logits[0, 5:12]
    torch.testing.assert_close(packed, alone, atol=1e-4, rtol=0)
    assert (unmasked - alone).abs().max() > 1e-2  # without position_ids the documents would see each other


# ---- training --------------------------------------------------------------------------------------------------


def test_loss_goes_down_on_a_repeating_corpus(tmp_path):
    pattern = [9707, 11, 1879, 0, 576, 3974, 13876, 38835]  # a fixed sentence, over and over
    rows = [(pattern * 4)[r % 8 : r % 8 + 16] for r in range(16)]
    data = write_packed(tmp_path / "data", rows, [[16]] * 16, seq_len=16)
    summary = run(tiny_config(data, tmp_path / "out", max_steps=12, lr=1e-2, warmup_steps=2, checkpoint_every=0))
    curve = losses(tmp_path / "out")
    assert curve[1] > 11.0  # ~ln(151,936) at random init
    assert summary["final_loss"] == curve[12] < curve[1] - 3.0


def test_checkpoints_of_other_settings_are_set_aside_not_resumed(data16, tmp_path):
    out = tmp_path / "run"
    run(tiny_config(data16, out, max_steps=2, checkpoint_every=1))
    longer = run(tiny_config(data16, out, max_steps=3, checkpoint_every=1))  # only max_steps changed: resume
    assert longer["resumed_from_step"] == 2 and not (out / "superseded").exists()
    fresh = run(tiny_config(data16, out, max_steps=2, checkpoint_every=1, lr=1e-3))  # another trajectory
    assert fresh["resumed_from_step"] is None
    (moved,) = (out / "superseded").iterdir()
    assert sorted(losses(moved)) == [1, 2, 3] and sorted(losses(out)) == [1, 2]


def test_resume_after_sigkill_and_after_sigint_reproduces_the_uninterrupted_losses(data16, reference_run, tmp_path):
    reference_out, _ = reference_run
    out = tmp_path / "resumed"
    cli = ["--data", str(data16), "--output", str(out), "--micro-batch-size", "2", "--max-steps", "6"]
    cli += ["--warmup-steps", "1", "--lr", "3e-3", "--log-every", "1", "--num-threads", "1"]
    cli += ["--checkpoint-every", "2", "--val-data", str(data16), "--eval-every", "3"]
    env = {**os.environ, KILL_AFTER_STEP_ENV: "3"}
    proc = subprocess.run([sys.executable, "-m", "training.pretrain", *cli], env=env, cwd=REPO, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert sorted(losses(out)) == [1, 2, 3]  # step 3 ran, but the last checkpoint is step 2
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_000002"

    def interrupt_at_step_4(record):
        if record["step"] == 4:
            os.kill(os.getpid(), signal.SIGINT)  # like Dagster cancelling the run

    with pytest.raises(TrainingInterrupted):
        run(config_from_args(cli), progress=interrupt_at_step_4)  # resumes at 2, stops before step 5
    assert sorted(losses(out)) == [1, 2, 3, 4]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_000004"

    summary = run(config_from_args(cli))
    assert summary["resumed_from_step"] == 4 and summary["steps"] == 6
    expected, got = losses(reference_out), losses(out)
    assert sorted(got) == list(range(1, 7))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=1e-6), f"step {step}"
    val = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "val_loss" in line]
    assert [v["step"] for v in val] == [3, 6]  # the killed run's step-3 eval line was dropped and redone once
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_000004", "step_000006"]


def test_progress_and_summary_reach_dagster_pipes(data16, tmp_path, monkeypatch):
    from dagster_pipes import PipesContext, encode_param

    messages = tmp_path / "pipes-messages.jsonl"
    context = {"asset_keys": ["pretrained_model"], "run_id": "r1", "retry_number": 0, "extras": {}}
    context |= dict.fromkeys(["code_version_by_asset_key", "provenance_by_asset_key", "partition_key", "job_name"])
    context |= dict.fromkeys(["partition_key_range", "partition_time_window"])
    monkeypatch.setenv("DAGSTER_PIPES_CONTEXT", encode_param({"data": context}))
    monkeypatch.setenv("DAGSTER_PIPES_MESSAGES", encode_param({"path": str(messages)}))
    try:
        summary = run(tiny_config(data16, tmp_path / "out", max_steps=2, checkpoint_every=0))
    finally:
        PipesContext.set(None)
    sent = [json.loads(line) for line in messages.read_text().splitlines()]
    logs = [m["params"]["message"] for m in sent if m["method"] == "log"]
    assert any(line.startswith("step 2/2 loss") for line in logs), logs
    assert [m["params"]["payload"] for m in sent if m["method"] == "report_custom_message"] == [summary]
    assert sent[-1]["method"] == "closed"


def test_final_model_loads_with_auto_model_and_generates(reference_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, summary = reference_run
    final = out / "final"
    assert summary["steps"] == 6 and summary["tokens_seen"] == 6 * 2 * 16 and summary["parameters"] == 9_816_640
    assert summary["val_loss"] is not None and np.isfinite(summary["final_loss"])
    model = AutoModelForCausalLM.from_pretrained(final, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(final, local_files_only=True)
    inputs = tokenizer("Hello, world!", return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert generated.shape == (1, inputs["input_ids"].shape[1] + 5)
    assert (out / "summary.json").exists() and list((out / "tensorboard").iterdir())


def test_stage_two_continues_stage_one_with_longer_context_and_rope_base_1e6(reference_run, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    stage1_final = reference_run[0] / "final"
    long_data = random_packed(tmp_path / "long", n_rows=2, seq_len=16 * 8, seed=1)
    summary = run(
        tiny_config(long_data, tmp_path / "s2", init_from=str(stage1_final), rope_theta=1e6, micro_batch_size=1)
    )
    assert summary["rope_theta"] == 1e6 and summary["max_position_embeddings"] == 128
    saved = AutoConfig.from_pretrained(tmp_path / "s2" / "final", local_files_only=True)
    assert rope_theta_of(saved) == 1e6 and saved.max_position_embeddings == 128
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "s2" / "final", local_files_only=True)
    inv_freq = model.model.rotary_emb.inv_freq
    head_dim = saved.hidden_size // saved.num_attention_heads
    expected = 1.0 / (1e6 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    torch.testing.assert_close(inv_freq, expected)


@pytest.fixture(scope="module")
def single_process_run(data16, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    run(tiny_config(data16, out, micro_batch_size=4, max_steps=3, checkpoint_every=0))
    return out


@pytest.mark.parametrize("strategy, micro_batch, accum", [("ddp", 2, 1), ("fsdp", 1, 2)])
def test_torchrun_two_cpu_ranks_split_each_global_batch(
    data16, single_process_run, tmp_path, strategy, micro_batch, accum
):
    """2 ranks x 2 rows must train like 1 process x 4 rows: each rank takes a disjoint half of every global batch."""
    out = tmp_path / strategy
    cmd = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "training.pretrain"]
    cmd += ["--data", str(data16), "--output", str(out), "--strategy", strategy, "--max-steps", "3"]
    cmd += ["--micro-batch-size", str(micro_batch), "--grad-accum-steps", str(accum)]
    cmd += ["--warmup-steps", "1", "--lr", "3e-3", "--num-threads", "1", "--checkpoint-every", "2"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["world_size"], summary["strategy"], summary["rows_per_step"]) == (2, strategy, 4)
    assert summary["tokens_seen"] == 3 * 4 * 16
    distributed, reference = losses(out), losses(single_process_run)
    assert sorted(distributed) == [1, 2, 3]  # rank 0 alone writes metrics
    for step, loss in reference.items():
        assert np.isfinite(distributed[step]) and distributed[step] == pytest.approx(loss, abs=1e-4), f"step {step}"
    checkpoint = out / "checkpoints" / "step_000003"
    assert {"rng_rank0.pt", "rng_rank1.pt", "trainer_state.json"} <= {p.name for p in checkpoint.iterdir()}
