"""Reward model (training.reward_model) and offline DPO (training.dpo) on preference pairs
(training.preference_data): the response mask, the DPO loss against a hand computation and against TRL's DPOTrainer,
a reward model that learns a rule, DPO that raises the held-out margin, bad pairs set aside, exact resume after
SIGKILL. Tiny models, fixed seeds, CPU."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from pipelines.tokenizer import ENDOFTEXT_ID, IM_END_ID
from synth.llm.chat import QWEN2_CHAT_TEMPLATE
from training import dpo
from training import preference_data as pdata
from training import reward_model as rm

REPO = Path(__file__).resolve().parents[1]

SYSTEM_PROMPT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]
PAIRS = [
    {"id": "p0", "prompt": SYSTEM_PROMPT, "chosen": "Rome.", "rejected": "Milan, I think, but not sure."},
    {"id": "p1", "prompt": [{"role": "user", "content": "Say hi"}], "chosen": "Hi!", "rejected": "No."},
    {
        "id": "p2",
        "prompt": [{"role": "user", "content": "Count to three"}],
        "chosen": [{"role": "assistant", "content": "1, 2, 3\n\ndone"}],
        "rejected": [{"role": "assistant", "content": " one two ünïcode"}],
    },
]


@pytest.fixture(scope="module")
def tokenizer():
    from training.checkpoint import checkpoint_tokenizer

    return checkpoint_tokenizer("chat")


def tiny_folder(path, seed):
    from transformers import AutoModelForCausalLM

    from training.checkpoint import save_pretrained_folder
    from training.model_configs import qwen2_config

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(qwen2_config("tiny", max_position_embeddings=256))
    return str(save_pretrained_folder(model, None, path / "final", kind="chat"))


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory):
    """A randomly initialised tiny Qwen2 (stands in for the SFT model)."""
    return tiny_folder(tmp_path_factory.mktemp("sft"), 0)


@pytest.fixture(scope="module")
def ref_dir(tmp_path_factory):
    """Another tiny Qwen2, so policy and reference differ in the loss checks."""
    return tiny_folder(tmp_path_factory.mktemp("ref"), 1)


def loaded_pairs(rows, tokenizer, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs, excluded = pdata.load_pairs({"t": str(path)})
    pdata.tokenize_pairs(pairs, tokenizer)
    return pairs, excluded


def reply_messages(value):
    return [{"role": "assistant", "content": value}] if isinstance(value, str) else value


def test_response_mask_is_the_last_reply_and_its_im_end(tokenizer, tmp_path):
    """Independent of training.chat_data: the Jinja template through transformers, the last assistant turn found by a
    regular expression, the tokens marked by the fast tokenizer's offsets."""
    pairs, _ = loaded_pairs(PAIRS, tokenizer, tmp_path)
    for row, pair in zip(PAIRS, pairs):
        for side in ("chosen", "rejected"):
            messages = row["prompt"] + reply_messages(row[side])
            text = tokenizer.apply_chat_template(messages, chat_template=QWEN2_CHAT_TEMPLATE, tokenize=False)
            start, end = list(re.finditer(r"<\|im_start\|>assistant\n(.*?<\|im_end\|>)", text, flags=re.S))[-1].span(1)
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            mask = [start <= a < b <= end for a, b in enc["offset_mapping"]]
            assert getattr(pair, f"{side}_ids") == enc["input_ids"]
            assert getattr(pair, f"{side}_mask") == mask
            ids = [t for t, m in zip(enc["input_ids"], mask) if m]
            assert ids[-1] == IM_END_ID and tokenizer.decode(ids).endswith("<|im_end|>")
    # the earlier assistant turn of a multi-turn prompt ("Paris.") is context, not scored
    assert "Paris" not in tokenizer.decode([t for t, m in zip(pairs[0].chosen_ids, pairs[0].chosen_mask) if m])


def hand_logps(model, tokenizer, prompt, reply):
    """Plain torch on one unpadded conversation: the reply starts after the prompt rendered with the generation
    prompt, and ends at the last <|im_end|> (the newline after it is not the reply's)."""
    full = tokenizer.apply_chat_template(prompt + reply, chat_template=QWEN2_CHAT_TEMPLATE, tokenize=False)
    head = tokenizer.apply_chat_template(
        prompt, chat_template=QWEN2_CHAT_TEMPLATE, tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    start = len(tokenizer(head, add_special_tokens=False)["input_ids"])
    end = max(i for i, t in enumerate(ids) if t == IM_END_ID) + 1
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    total = 0.0
    for t in range(start, end):
        total += float(torch.log_softmax(logits[t - 1], dim=-1)[ids[t]])
    return total, end - start


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_loss_equals_a_hand_computation(loss_type, init_dir, ref_dir, tokenizer, tmp_path):
    import math

    settings = dpo.DpoSettings(beta=0.3, loss_type=loss_type)
    pairs, _ = loaded_pairs(PAIRS, tokenizer, tmp_path)
    policy, ref = dpo.load_policy(init_dir).eval(), dpo.load_policy(ref_dir).eval()
    ref_logps = dpo.reference_logps(ref, {"train": pairs, "heldout": []}, tmp_path, ref_dir, micro_batch_size=2)
    batch = pdata.pair_tensors(pairs, ENDOFTEXT_ID)
    with torch.no_grad():
        ours, stats = dpo.recipe(settings, init_dir).pair_loss(policy, batch, pairs, ref_logps)
    for i, row in enumerate(PAIRS):
        c, r = reply_messages(row["chosen"]), reply_messages(row["rejected"])
        (pc, nc), (pr, nr) = (
            hand_logps(policy, tokenizer, row["prompt"], c),
            hand_logps(policy, tokenizer, row["prompt"], r),
        )
        (rc, _), (rr, _) = hand_logps(ref, tokenizer, row["prompt"], c), hand_logps(ref, tokenizer, row["prompt"], r)
        if loss_type == "ipo":
            pc, pr, rc, rr = pc / nc, pr / nr, rc / nc, rr / nr
        h = (pc - rc) - (pr - rr)
        beta = settings.beta
        expected = -math.log(1 / (1 + math.exp(-beta * h))) if loss_type == "sigmoid" else (h - 1 / (2 * beta)) ** 2
        assert float(ours[i]) == pytest.approx(expected, abs=1e-5)
        assert float(stats["margin"][i]) == pytest.approx(beta * h, abs=1e-5)
        assert float(stats["accuracy"][i]) == float(h > 0)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_loss_equals_trl_dpo_trainer(loss_type, init_dir, ref_dir, tokenizer, tmp_path):
    """The same tokens through TRL's DPOTrainer (its collator and compute_loss, reference model given). TRL's own
    tokenization scores the newline after the closing <|im_end|> as part of the reply, so the batch is built by its
    collator from our prompt/reply token split (the reply: the masked tokens)."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    settings = dpo.DpoSettings(beta=0.2, loss_type=loss_type)
    pairs, _ = loaded_pairs(PAIRS, tokenizer, tmp_path)
    policy, ref = dpo.load_policy(init_dir).eval(), dpo.load_policy(ref_dir).eval()
    ref_logps = dpo.reference_logps(ref, {"train": pairs, "heldout": []}, tmp_path, ref_dir, micro_batch_size=3)
    with torch.no_grad():
        ours, _ = dpo.recipe(settings, init_dir).pair_loss(
            policy, pdata.pair_tensors(pairs, ENDOFTEXT_ID), pairs, ref_logps
        )

    def split(ids, mask):
        start, end = mask.index(True), len(mask) - mask[::-1].index(True)
        return ids[:start], ids[start:end]

    examples = []
    for p in pairs:
        prompt, chosen = split(p.chosen_ids, p.chosen_mask)
        prompt_r, rejected = split(p.rejected_ids, p.rejected_mask)
        assert prompt == prompt_r
        examples.append({"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected})
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"), beta=settings.beta, loss_type=[loss_type], per_device_train_batch_size=3,
        max_length=None, report_to="none", use_cpu=True, save_strategy="no", logging_strategy="no", bf16=False,
    )  # fmt: skip
    dataset = Dataset.from_list(
        [{"prompt": r["prompt"], "chosen": reply_messages(r["chosen"]), "rejected": reply_messages(r["rejected"])}
         for r in PAIRS]
    )  # fmt: skip
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=dataset, processing_class=tokenizer)
    batch = trainer.data_collator(examples)
    trainer.model.eval()
    with torch.no_grad():
        theirs = float(trainer.compute_loss(trainer.model, batch))
    assert float(ours.mean()) == pytest.approx(theirs, abs=1e-4)


TOPICS = """apple river stone cloud tiger lemon candle forest piano window garden silver rocket button mirror castle
dragon pepper meadow violin planet summer winter jungle harbor marble pencil rabbit saddle anchor bridge cactus desert
engine falcon glacier hammer island jacket kettle ladder magnet needle orange parrot quartz ribbon shadow tunnel
umbrella valley wagon yogurt zebra almond bottle carpet donkey eagle feather guitar helmet iguana jelly""".split()


def marker_pairs():
    """Chosen replies end with 'gladly', rejected ones with 'whatever': a rule a tiny model can learn."""
    rows = []
    for w in TOPICS:
        prompt = [{"role": "user", "content": f"Tell me about the {w}."}]
        rows.append(
            {
                "id": f"m-{w}",
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": f"The {w} is here, gladly"}],
                "rejected": [{"role": "assistant", "content": f"The {w} is here, whatever"}],
            }
        )
    return rows


BAD_PAIRS = [
    {"id": "bad-missing", "prompt": [{"role": "user", "content": "x"}], "chosen": "y"},
    {"id": "bad-same", "prompt": [{"role": "user", "content": "x"}], "chosen": "same", "rejected": " same "},
    {
        "id": "bad-two-replies",
        "prompt": [{"role": "user", "content": "x"}],
        "chosen": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}],
        "rejected": "c",
    },
    {"id": "bad-order", "prompt": [{"role": "assistant", "content": "x"}], "chosen": "y", "rejected": "z"},
    {"id": "bad-long", "prompt": [{"role": "user", "content": "word " * 300}], "chosen": "a", "rejected": "b"},
]
BAD_REASONS = {
    "bad-missing": "missing_field",
    "bad-same": "identical_responses",
    "bad-two-replies": "not_one_reply",
    "bad-order": "bad_turn_order",
    "bad-long": "too_long",
}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_reward_model_learns_a_rule_above_90_percent_heldout(init_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    pairs = write_jsonl(tmp_path / "pairs.jsonl", marker_pairs())
    settings = rm.RewardModelSettings(
        batch_size=8, micro_batch_size=8, epochs=6, lr=3e-3, min_lr=3e-4, warmup_steps=2, heldout_fraction=0.25,
        max_len=128, device="cpu", checkpoint_every=1000, log_every=100,
    )  # fmt: skip
    summary = rm.run(settings, {"marker": pairs}, str(tmp_path / "rm"), init_dir)
    assert summary["heldout_pairs"] >= 10
    assert summary["validation"]["val_accuracy"] > 0.9, summary["validation"]
    assert abs(summary["validation"]["val_score"]) < 2.0  # centred
    final = summary["final_dir"]
    model = AutoModelForSequenceClassification.from_pretrained(final, local_files_only=True)
    assert model.config.num_labels == 1 and model.config.pad_token_id == ENDOFTEXT_ID
    assert (
        json.loads((Path(final) / "tokenizer_config.json").read_text()).get("chat_template")
        or (Path(final) / "chat_template.jinja").exists()
    )
    prompt = [{"role": "user", "content": "Tell me about the nothing."}]
    chosen, rejected = rm.score_conversations(
        final,
        [
            prompt + [{"role": "assistant", "content": "The nothing is here, gladly"}],
            prompt + [{"role": "assistant", "content": "The nothing is here, whatever"}],
        ],
    )
    assert chosen > rejected


def test_dpo_raises_the_heldout_margin_and_sets_bad_pairs_aside(init_dir, tmp_path, monkeypatch, capsys):
    from pipelines.progress import ProgressTicker
    from training import runlog

    # the "at least every 30 s" progress line, with 0 s: a line every step although log_every is past the end
    monkeypatch.setattr(runlog, "ProgressTicker", lambda: ProgressTicker(interval_s=0))
    pairs = write_jsonl(tmp_path / "pairs.jsonl", marker_pairs() + BAD_PAIRS)
    settings = dpo.DpoSettings(
        batch_size=8, micro_batch_size=8, epochs=2, lr=1e-3, min_lr=1e-4, heldout_fraction=0.25, max_len=128,
        device="cpu", checkpoint_every=1000, log_every=100,
    )  # fmt: skip
    out = tmp_path / "dpo"
    summary = dpo.run(settings, {"marker": pairs}, str(out), init_dir)
    before, after = summary["initial_validation"], summary["validation"]
    assert before["val_margin"] == pytest.approx(0.0, abs=1e-4)  # the policy starts as the reference
    assert after["val_margin"] > before["val_margin"] + 0.05, (before, after)
    assert after["val_accuracy"] > 0.9
    assert (out / dpo.REFERENCE_FILE).exists()
    excluded = pq.read_table(out / "excluded" / "part-00000.parquet").to_pylist()
    assert {r["id"]: r["reason"] for r in excluded} == BAD_REASONS
    gen = json.loads((Path(summary["final_dir"]) / "generation_config.json").read_text())
    assert IM_END_ID in gen["eos_token_id"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["step"] > 0 and "loss" in r]
    assert all({"loss", "accuracy", "margin"} <= set(r) and r["tokens_per_s"] > 0 for r in steps)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.endswith(" tok/s")]
    assert [line.split()[1] for line in lines] == [f"{r['step']}/{len(steps)}" for r in steps]


def run_cli(module, args, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True)


def test_dpo_resumes_exactly_after_sigkill(init_dir, tmp_path):
    from safetensors.torch import load_file

    from training.signals import KILL_AFTER_STEP_ENV

    pairs = write_jsonl(tmp_path / "pairs.jsonl", marker_pairs()[:24])
    common = ["--pairs", f"m={pairs}", "--init", init_dir, "--batch-size", "4", "--micro-batch-size", "2",
              "--max-steps", "4", "--lr", "1e-3", "--checkpoint-every", "1", "--device", "cpu", "--max-len", "128",
              "--loss-type", "ipo"]  # fmt: skip
    whole = run_cli("training.dpo", [*common, "--output", str(tmp_path / "whole")])
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = run_cli("training.dpo", [*common, "--output", str(tmp_path / "cut")], {KILL_AFTER_STEP_ENV: "2"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = run_cli("training.dpo", [*common, "--output", str(tmp_path / "cut")])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["resumed_from_step"] == 2
    a = load_file(tmp_path / "whole" / "final" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_command_lines_show_the_settings():
    for module, flags in (("training.reward_model", "--center-coefficient"), ("training.dpo", "--loss-type")):
        out = run_cli(module, ["--help"])
        assert out.returncode == 0 and flags in out.stdout and "--pairs" in out.stdout
    bad = run_cli("training.dpo", ["--output", "x", "--init", "y", "--pairs", "a=b", "--beta", "0"])
    assert bad.returncode == 2 and "beta=0: must be > 0" in bad.stderr


def test_reward_and_dpo_assets_train_through_pipes_and_report(init_dir, tmp_path):
    """The post_training assets for real: the SFT model's final/ (here the tiny init) and preference shards under
    the data root, each trainer launched through Pipes, metadata and the reward model's WARN check reported."""
    import shutil

    import dagster as dg
    import pyarrow as pa

    from assets.metadata import table_rows
    from assets.post_training import dpo_model, reward_model
    from dagster_project.resources import CurationResource, TrainingResource
    from pipelines.schema import MESSAGE_TYPE

    root = tmp_path / "data"
    shutil.copytree(init_dir, root / "models" / "sft" / "final")
    shards = root / "synthetic" / "preference" / "final" / "data"
    shards.mkdir(parents=True)
    rows = marker_pairs()[:20] + [{**marker_pairs()[20], "id": "same", "rejected": marker_pairs()[20]["chosen"]}]
    messages = pa.list_(MESSAGE_TYPE)
    schema = pa.schema([("id", pa.string()), ("prompt", messages), ("chosen", messages), ("rejected", messages)])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), shards / "part-0.parquet")
    small = {"batch_size": 4, "micro_batch_size": 4, "max_steps": 3, "heldout_fraction": 0.3, "max_len": 128}
    small |= {"lr": 1e-3, "device": "cpu", "num_threads": 2}
    result = dg.materialize(
        [reward_model, dpo_model],
        resources={
            "curation": CurationResource(data_root=str(root)),
            "training": TrainingResource(),
            "pipes_subprocess_client": dg.PipesSubprocessClient(),
        },
        run_config={"ops": {"reward_model": {"config": small}, "dpo_model": {"config": {**small, "beta": 0.2}}}},
    )
    assert result.success
    for name in ("reward_model", "dpo_model"):
        (event,) = result.asset_materializations_for_node(name)
        meta = {k: v.value for k, v in event.metadata.items()}
        assert meta["steps"] == 3 and meta["heldout_pairs"] > 0 and meta["heldout_accuracy"] is not None
        assert {r["reason"]: r["pairs"] for r in table_rows(event.metadata["excluded_by_reason"])} == {
            "identical_responses": 1
        }
        assert [r["step"] for r in table_rows(event.metadata["loss_values"]) if r["loss"] is not None][-1] == 3
        assert Path(meta["checkpoint"], "config.json").exists()
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "accuracy_above_chance" and check.severity == dg.AssetCheckSeverity.WARN
    assert check.passed == (check.metadata["heldout_accuracy"].value > 0.5)


def test_reward_model_resumes_its_run_and_sets_aside_one_with_other_settings(init_dir, tmp_path):
    pairs = {"m": write_jsonl(tmp_path / "pairs.jsonl", marker_pairs()[:16])}
    out = str(tmp_path / "rm")
    base = dict(batch_size=4, micro_batch_size=4, max_steps=2, lr=1e-3, device="cpu", max_len=128, checkpoint_every=1)
    first = rm.run(rm.RewardModelSettings(**base), pairs, out, init_dir)
    again = rm.run(rm.RewardModelSettings(**base, log_every=1), pairs, out, init_dir)  # log_every: not a new run
    assert first["resumed_from_step"] is None and again["resumed_from_step"] == 2 and again["steps"] == 2
    other = rm.run(rm.RewardModelSettings(**base, center_coefficient=0.5), pairs, out, init_dir)
    assert other["resumed_from_step"] is None
    assert len(list((tmp_path / "rm" / "superseded").iterdir())) == 1


def test_reply_logps_in_chunks_equal_one_pass_with_gradients(init_dir, tokenizer, tmp_path):
    """The output layer in chunks of 3 positions (recomputed in backward) gives the values and gradients of one
    pass (up to float32 summation order: 1e-5 of the largest gradient)."""
    pairs, _ = loaded_pairs(PAIRS, tokenizer, tmp_path)
    batch = pdata.pair_tensors(pairs, ENDOFTEXT_ID)
    results = []
    for chunk in (3, 10_000):
        model = dpo.load_policy(init_dir)
        logps, counts = dpo.reply_logps(model, batch, chunk_tokens=chunk)
        logps.sum().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((logps.detach(), counts, grads))
    (a, na, ga), (b, nb, gb) = results
    assert (
        torch.equal(na, nb)
        and torch.allclose(a, b, atol=1e-5)
        and float((ga - gb).abs().max()) <= 1e-5 * float(ga.abs().max())
    )
    assert na.tolist() == [sum(p.chosen_mask) for p in pairs] + [sum(p.rejected_mask) for p in pairs]
