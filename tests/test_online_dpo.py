"""Online DPO (training.online_dpo, training.episodes) and the Online Merging Optimizer (training.merging): the policy
learns what a reward model rewards, every episode's samples and pairs are in its Parquet shard, a run killed in the
middle of an episode resumes to the uninterrupted weights bitwise, the merging rules on hand examples, the command
line, and the Dagster asset through Pipes. Tiny models, fixed seeds, CPU.

The models, built once for the module: a random tiny Qwen2 (the "base"), an SFT model taught in a few steps to answer
"Tell me about the <word>." with "Sure" or "Never" (about half each), and a reward model trained to prefer "Sure".
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from pipelines.tokenizer import ENDOFTEXT_ID, IM_END_ID
from training import merging as om
from training import online_dpo as od
from training.episodes import EPISODE_COLUMNS, PAIR_REASONS

REPO = Path(__file__).resolve().parents[1]
WORDS = """apple river stone cloud tiger lemon candle forest piano window garden silver rocket button mirror castle
dragon pepper meadow violin planet summer winter jungle harbor marble pencil rabbit saddle anchor bridge cactus desert
engine falcon glacier hammer island jacket kettle ladder magnet needle orange parrot quartz ribbon shadow""".split()
GOOD, BAD = "Sure", "Never"  # one token each


def prompt(word):
    return [{"role": "user", "content": f"Tell me about the {word}."}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{"base", "sft", "reward", "prompts"}: folders and the prompts source (the SFT data's conversations)."""
    from transformers import AutoModelForCausalLM

    from training import dpo
    from training import preference_data as pdata
    from training import reward_model as rm
    from training.checkpoint import checkpoint_tokenizer, save_pretrained_folder
    from training.model_configs import qwen2_config

    root = tmp_path_factory.mktemp("online_dpo_models")
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(qwen2_config("tiny", max_position_embeddings=256))
    base_dir = str(save_pretrained_folder(base, None, root / "base", kind="chat"))

    # SFT: each of 16 prompts answered once with GOOD and once with BAD; maximum likelihood of the replies.
    pairs = [
        pdata.Pair(
            w, "sft", prompt(w), [{"role": "assistant", "content": GOOD}], [{"role": "assistant", "content": BAD}]
        )
        for w in WORDS[:16]
    ]
    pdata.tokenize_pairs(pairs, checkpoint_tokenizer("chat"))
    batch = pdata.pair_tensors(pairs, ENDOFTEXT_ID)
    model = dpo.load_policy(base_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(30):
        logps, _ = dpo.reply_logps(model, batch)
        (-logps.mean()).backward()
        optimizer.step()
        optimizer.zero_grad()
    sft_dir = str(save_pretrained_folder(model, None, root / "sft", kind="chat"))

    rows = [{"id": w, "prompt": prompt(w), "chosen": GOOD, "rejected": BAD} for w in WORDS]
    settings = rm.RewardModelSettings(
        batch_size=8, micro_batch_size=8, epochs=2, lr=3e-3, min_lr=3e-4, warmup_steps=2, heldout_fraction=0.2,
        max_len=128, device="cpu", checkpoint_every=1000, log_every=100, num_threads=2,
    )  # fmt: skip
    summary = rm.run(settings, {"rm": write_jsonl(root / "rm_pairs.jsonl", rows)}, str(root / "rm"), base_dir)
    assert summary["validation"]["val_accuracy"] == 1.0

    conversations = [{"id": f"c-{w}", "messages": prompt(w) + [{"role": "assistant", "content": GOOD}]} for w in WORDS]
    conversations.append({"id": "bad", "messages": [{"role": "assistant", "content": "no user turn"}]})
    return {
        "base": base_dir,
        "sft": sft_dir,
        "reward": summary["final_dir"],
        "prompts": write_jsonl(root / "prompts.jsonl", conversations),
    }


SMALL = dict(
    episodes=6, prompts_per_episode=8, samples_per_prompt=4, max_new_tokens=4, heldout_prompts=8, margin=0.1,
    lr=1e-2, min_lr=1e-3, beta=0.5, batch_size=8, micro_batch_size=8, max_len=128, device="cpu", num_threads=2,
    winrate_every=3,
)  # fmt: skip


@pytest.fixture(scope="module")
def reward_run(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("online_dpo_run") / "run"
    summary = od.run(
        od.OnlineDpoSettings(**SMALL), {"sft": models["prompts"]}, str(out), models["sft"], models["reward"]
    )
    return out, summary


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_online_dpo_raises_the_policys_reward(reward_run):
    out, summary = reward_run
    episodes = [r for r in records(out) if r["step"] > 0]
    assert [r["step"] for r in episodes] == [1, 2, 3, 4, 5, 6]
    rewards = [r["mean_reward"] for r in episodes]
    early, late = sum(rewards[:2]) / 2, sum(rewards[-2:]) / 2
    assert late > early + 0.8, rewards  # the reward model's GOOD/BAD scores are about +-1.7
    shards = [pq.read_table(p).to_pylist() for p in sorted((out / "episodes").glob("*.parquet"))]
    share = [sum(r["response"].startswith(GOOD) for r in rows) / len(rows) for rows in shards]
    assert share[-1] > share[0] + 0.2, share  # what it learned: to answer GOOD (with max_new_tokens 4, repeatedly)
    assert episodes[0]["kl"] == pytest.approx(0.0, abs=1e-9)  # the first samples come from the reference itself
    for r in episodes:
        assert {"mean_reward", "reward_gap", "pairs_kept", "loss", "kl", "gen_s", "score_s", "update_s"} <= set(r)
    assert [r["step"] for r in records(out) if "win_rate" in r] == [0, 3, 6]
    assert summary["initial_win_rate"] == 0.5  # the policy starts as the SFT model: every reply ties
    assert summary["train_prompts"] == len(WORDS) - 8 and summary["excluded_by_reason"] == {"not_a_prompt": 1}
    final = Path(summary["final_dir"])
    assert IM_END_ID in json.loads((final / "generation_config.json").read_text())["eos_token_id"]
    assert (final / "chat_template.jinja").exists() or "chat_template" in (final / "tokenizer_config.json").read_text()


def test_every_sample_and_pair_is_in_the_episode_parquet(reward_run, models):
    out, _ = reward_run
    margin, k = SMALL["margin"], SMALL["samples_per_prompt"]
    heldout = {json.dumps(json.loads(line)["messages"]) for line in (out / "heldout_prompts.jsonl").open()}
    metrics = {r["step"]: r for r in records(out)}
    for n, path in enumerate(sorted((out / "episodes").glob("*.parquet")), start=1):
        assert path.name == f"episode-{n - 1:05d}.parquet"
        table = pq.read_table(path)
        assert table.column_names == EPISODE_COLUMNS
        rows = table.to_pylist()
        assert len(rows) == SMALL["prompts_per_episode"] * k and {r["episode"] for r in rows} == {n}
        kept = 0
        for i in range(SMALL["prompts_per_episode"]):
            group = sorted((r for r in rows if r["prompt_index"] == i), key=lambda r: r["sample_index"])
            assert [r["sample_index"] for r in group] == list(range(k))  # all K samples are there
            assert json.dumps(group[0]["prompt"]) not in heldout  # never a held-out prompt
            scores = [r["score"] for r in group]
            c, rj = group[0]["chosen_index"], group[0]["rejected_index"]
            assert scores[c] == max(scores) and scores[rj] == min(scores)
            assert group[c]["role"] == "chosen" and (c == rj or group[rj]["role"] == "rejected")
            reason = group[0]["pair_reason"]
            assert reason in PAIR_REASONS and group[0]["pair_kept"] == (reason == "kept")
            if reason == "kept":
                kept += 1
                assert scores[c] > scores[rj] + margin and group[c]["response"] != group[rj]["response"]
            elif reason == "gap_below_margin":
                assert scores[c] - scores[rj] <= margin
            else:
                assert group[c]["response"].strip() == group[rj]["response"].strip()
        assert kept == metrics[n]["pairs_kept"]


def run_cli(args, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "training.online_dpo", *args], cwd=REPO, env=env, capture_output=True, text=True
    )


def test_kill_9_in_an_episode_and_rerun_gives_the_uninterrupted_weights_bitwise(models, tmp_path):
    """With OnDARE merging on (its random masks must be drawn again the same way) and two optimizer steps per
    episode; killed in episode 2 after its update and its shard, before its checkpoint."""
    from safetensors.torch import load_file

    common = ["--policy", models["sft"], "--reward-model", models["reward"], "--base", models["base"],
              "--prompts", f"sft={models['prompts']}", "--episodes", "3", "--prompts-per-episode", "4",
              "--samples-per-prompt", "3", "--max-new-tokens", "3", "--heldout-prompts", "4", "--lr", "1e-2",
              "--beta", "0.5", "--batch-size", "2", "--micro-batch-size", "1", "--max-len", "128", "--device", "cpu",
              "--num-threads", "2", "--merging", "ondare", "--merging-density", "0.5",
              "--merging-alpha", "0.01"]  # fmt: skip
    whole = run_cli([*common, "--output", str(tmp_path / "whole")])
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = run_cli([*common, "--output", str(tmp_path / "cut")], {od.KILL_IN_EPISODE_ENV: "2"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert (tmp_path / "cut" / "episodes" / "episode-00001.parquet").exists()  # written before the kill
    resumed = run_cli([*common, "--output", str(tmp_path / "cut")])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["resumed_from_episode"] == 1
    a = load_file(tmp_path / "whole" / "final" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sft = load_file(Path(models["sft"]) / "model.safetensors")
    assert not all(torch.equal(a[k], sft[k]) for k in a)  # it trained
    for n in range(3):
        name = f"episode-{n:05d}.parquet"
        assert pq.read_table(tmp_path / "whole" / "episodes" / name).equals(
            pq.read_table(tmp_path / "cut" / "episodes" / name)
        )
    steps = [r["step"] for r in records(tmp_path / "cut")]
    assert steps == [0, 1, 2, 3]  # the killed episode's line is not left behind


def test_a_run_with_other_settings_is_set_aside(models, reward_run, tmp_path):
    out, _ = reward_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    settings = od.OnlineDpoSettings(**{**SMALL, "episodes": 1, "log_every": 5})
    summary = od.run(settings, {"sft": models["prompts"]}, str(copy), models["sft"], models["reward"])
    assert summary["resumed_from_episode"] is None and summary["episodes"] == 1
    (moved,) = (copy / "superseded").iterdir()
    assert len(list((moved / "episodes").glob("*.parquet"))) == SMALL["episodes"]
    assert len(list((copy / "episodes").glob("*.parquet"))) == 1


# ---- the Online Merging Optimizer's rules -----------------------------------------------------------------------


def test_onties_keeps_the_top_k_update_entries_that_agree_with_the_elected_sign():
    delta = torch.tensor([0.5, -0.6, 0.1, -0.7])
    tau = torch.tensor([1.0, 0.3, 0.0, 2.0])  # already sparsified
    # top 3 of |delta|: 0.5, -0.6, -0.7; elected signs of tau + delta': +, -, +, +
    # delta' kept where its sign agrees: 0.5, -0.6 (-0.7 disagrees with the SFT direction's +2.0); tau: 1.0, 2.0
    update = om.onties_update(delta, tau, density=0.75, alpha=0.1, rescale=False)
    assert torch.allclose(update, torch.tensor([0.1 * 1.0 + 0.9 * 0.5, 0.9 * -0.6, 0.0, 0.1 * 2.0]))
    assert torch.equal(om.top_k(torch.tensor([3.0, -1.0, 2.0, 0.5]), 0.5), torch.tensor([3.0, 0.0, 2.0, 0.0]))
    assert torch.equal(om.top_k(torch.tensor([3.0, -1.0]), 0.1), torch.tensor([3.0, -1.0]))  # k < 1: kept whole
    rescaled = om.top_k(torch.tensor([3.0, -1.0, 2.0, 0.5]), 0.5, rescale=True)
    assert float(rescaled.abs().sum()) == pytest.approx(6.5) and rescaled[1] == 0


def test_ondare_keeps_a_seeded_random_share_of_the_update_scaled_by_one_over_density():
    delta, tau = torch.randn(20_000, generator=torch.Generator().manual_seed(1)), torch.full((20_000,), 0.5)
    g = om._generator("cpu", 0, "step", 1)
    update = om.ondare_update(delta, tau, density=0.1, alpha=0.01, generator=g, rescale=False, clip=1.0)
    kept = update != 0.01 * tau
    assert 0.09 < float(kept.float().mean()) < 0.11
    assert torch.allclose(update[kept], 0.01 * tau[kept] + 0.99 * delta[kept] / 0.1)
    again = om.ondare_update(delta, tau, 0.1, 0.01, om._generator("cpu", 0, "step", 1), False, 1.0)
    assert torch.equal(update, again)  # the same masks for the same (seed, step): a resumed run draws them again


def test_the_merging_wrapper_replaces_adamws_update_by_the_merged_one():
    """A real AdamW step on a small model: the parameters end at before + OnTIES(AdamW's update, sft - base)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    sft = {n: p.detach() + 0.05 * torch.randn_like(p) for n, p in model.named_parameters()}
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    reference = torch.nn.Linear(8, 4)
    reference.load_state_dict(model.state_dict())
    x = torch.randn(16, 8)
    for m in (model, reference):
        m(x).pow(2).mean().backward()
    merging = om.OnlineMerging(model, sft, base, "onties", density=0.5, alpha=0.2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    before = merging.before_step()
    optimizer.step()
    stats = merging.after_step(before, step=1)
    torch.optim.AdamW(reference.parameters(), lr=0.1).step()  # the plain update
    for (name, p), old, (_, plain) in zip(model.named_parameters(), before, reference.named_parameters()):
        tau = om.top_k(sft[name] - base[name], 0.5)
        expected = old + om.onties_update(plain.detach() - old, tau, 0.5, 0.2, False)
        assert torch.allclose(p.detach(), expected, atol=1e-7), name
    assert 0 < stats["merge_kept"] < 1
    with pytest.raises(ValueError, match="base"):
        om.OnlineMerging(model, sft, {"weight": torch.zeros(2, 2), "bias": torch.zeros(4)}, "onties", 0.5, 0.2)


# ---- command line and asset ------------------------------------------------------------------------------------


def test_help_shows_every_setting():
    proc = run_cli(["--help"])
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    for name in od.OnlineDpoSettings.model_fields:
        assert "--" + name.replace("_", "-") in text, name
    for flag in ("--prompts NAME=PATH", "--policy", "--reward-model", "--base", "--output", "(default: 5e-07)"):
        assert flag in text, flag
    assert "--samples-per-prompt INT K: replies sampled per prompt; best and worst form a pair. (default: 4)" in text
    args = ["--output", "x", "--policy", "y", "--reward-model", "z", "--prompts", "a=b", "--samples-per-prompt", "1"]
    bad = run_cli(args)
    assert bad.returncode == 2 and "samples_per_prompt=1: must be >= 2" in bad.stderr


def test_online_dpo_asset_trains_through_pipes_and_reports(models, tmp_path):
    """The asset for real: SFT, reward and long-context models and the demonstrations under the data root, the
    trainer launched through Pipes with OnTIES merging and a missing-EOS penalty, the per-episode table and both
    generation checks."""
    import dagster as dg
    import pyarrow as pa

    from assets.metadata import table_rows
    from assets.online_dpo import online_dpo_model
    from dagster_project.resources import CurationResource, TrainingResource
    from pipelines.schema import MESSAGE_TYPE

    root = tmp_path / "data"
    for name, folder in (("sft", "sft"), ("reward", "reward"), ("long_context", "base")):
        shutil.copytree(models[folder], root / "models" / name / "final")
    demonstrations = root / "post_training" / "demonstrations" / "chatterbot.parquet"
    demonstrations.parent.mkdir(parents=True)
    rows = [{"id": w, "messages": prompt(w) + [{"role": "assistant", "content": GOOD}]} for w in WORDS]
    schema = pa.schema([("id", pa.string()), ("messages", pa.list_(MESSAGE_TYPE))])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), demonstrations)
    config = dict(
        episodes=2, prompts_per_episode=4, samples_per_prompt=3, max_new_tokens=3, heldout_prompts=4, lr=1e-2,
        max_len=128, device="cpu", num_threads=2, merging="onties", merging_density=0.5, merging_alpha=0.01,
        missing_eos_penalty=1.5, check_max_new_tokens=8,
    )  # fmt: skip
    result = dg.materialize(
        [online_dpo_model],
        resources={
            "curation": CurationResource(data_root=str(root)),
            "training": TrainingResource(),
            "pipes_subprocess_client": dg.PipesSubprocessClient(),
        },
        run_config={"ops": {"online_dpo_model": {"config": config}}},
    )
    assert result.success
    (event,) = result.asset_materializations_for_node("online_dpo_model")
    meta = {k: v.value for k, v in event.metadata.items()}
    table = table_rows(event.metadata["episodes"])
    assert [r["episode"] for r in table] == [1, 2] and all(r["gen_s"] is not None for r in table)
    assert meta["merging"] == "onties" and meta["episodes_run"] == 2 and meta["win_rate"] is not None
    samples = [r for p in sorted(Path(meta["episodes_dir"]).glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert len(samples) == 2 * 4 * 3 and {r["finish_reason"] for r in samples} == {"stop", "length"}
    for r in samples:  # a sample cut off before its end of turn loses missing_eos_penalty
        assert r["score"] == r["reward_model_score"] - 1.5 * (r["finish_reason"] == "length")
    assert Path(meta["checkpoint"], "config.json").exists() and "data:image/png;base64" in meta["reward_curve"]
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert set(checks) == {"loads_and_generates", "stops_at_im_end"} and checks["loads_and_generates"].passed
