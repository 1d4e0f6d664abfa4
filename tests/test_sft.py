"""Supervised fine-tuning (training.sft, training.chat_data): the loss mask, per-conversation attention in packed
rows, the loss against a plain transformers computation, learning a pattern, excluded rows, exact resume after
SIGKILL, the command line. Tiny models, fixed seeds, CPU."""

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipelines.schema import MESSAGE_TYPE
from pipelines.tokenizer import IM_END_ID
from synth.llm.chat import QWEN2_CHAT_TEMPLATE
from training import chat_data as cd

REPO = Path(__file__).resolve().parents[1]
SEQ_LEN = 128

MULTI_TURN = [
    {"role": "system", "content": "You answer briefly.\nAlways in English."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4.\n\nIt is four."},
    {"role": "user", "content": "  And 3+3?\n"},
    {"role": "assistant", "content": "\n6, naturally: 3 + 3 = 6 ünïcode ✓"},
    {"role": "user", "content": "Thanks"},
    {"role": "assistant", "content": "You're welcome!"},
]
NO_SYSTEM = [
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue"},
    {"role": "user", "content": "Another?"},
    {"role": "assistant", "content": " Red "},
]


@pytest.fixture(scope="module")
def tokenizer():
    from training.checkpoint import checkpoint_tokenizer

    return checkpoint_tokenizer("chat")


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory):
    """A randomly initialised tiny Qwen2 saved as a save_pretrained folder (the --init of these tests)."""
    from transformers import AutoModelForCausalLM

    from training.checkpoint import save_pretrained_folder
    from training.model_configs import qwen2_config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(qwen2_config("tiny", max_position_embeddings=SEQ_LEN))
    return save_pretrained_folder(model, None, tmp_path_factory.mktemp("init") / "final", kind="base")


def offset_mask(messages, tokenizer):
    """Independent of training.chat_data: the text rendered by the Jinja template through transformers, the trained
    spans found with a regular expression (each assistant turn's content and its <|im_end|>), the tokens marked from
    the fast tokenizer's character offsets."""
    text = tokenizer.apply_chat_template(messages, chat_template=QWEN2_CHAT_TEMPLATE, tokenize=False)
    spans = [m.span(1) for m in re.finditer(r"<\|im_start\|>assistant\n(.*?<\|im_end\|>)", text, flags=re.S)]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [any(s <= a < b <= e for s, e in spans) for a, b in enc["offset_mapping"]]
    return enc["input_ids"], mask


def example(messages, tokenizer, id_="x", source="s"):
    e = cd.Example(id_, source, messages)
    cd.tokenize_examples([e], tokenizer)
    return e


@pytest.mark.parametrize("messages", [MULTI_TURN, NO_SYSTEM], ids=["system", "default-system"])
def test_loss_mask_equals_the_one_from_character_offsets(messages, tokenizer):
    e = example(messages, tokenizer)
    ids, mask = offset_mask(messages, tokenizer)
    assert e.input_ids == ids
    assert e.loss_mask == mask
    # transformers' own {% generation %} mask agrees, except on a token that straddles a span's edge (the header's
    # newline merged with a reply that starts with a newline: "\n\n"), which transformers marks by its first
    # character and we leave out (it is half template)
    rendered = tokenizer.apply_chat_template(
        messages, chat_template=QWEN2_CHAT_TEMPLATE, return_dict=True, return_assistant_tokens_mask=True
    )
    assert rendered["input_ids"] == ids
    theirs = [bool(x) for x in rendered["assistant_masks"]]
    differ = [i for i, (a, b) in enumerate(zip(theirs, mask)) if a != b]
    assert [tokenizer.decode([ids[i]]) for i in differ] == (["\n\n"] if messages is MULTI_TURN else [])
    # every <|im_end|> closing an assistant turn carries loss; the others, and every header token, do not
    ends = [i for i, t in enumerate(ids) if t == IM_END_ID]
    roles = (["system"] if messages[0]["role"] != "system" else []) + [m["role"] for m in messages]
    assert len(ends) == len(roles)
    assert [e.loss_mask[i] for i in ends] == [r == "assistant" for r in roles]
    header = tokenizer("<|im_start|>assistant", add_special_tokens=False)["input_ids"]
    starts = [i for i in range(len(ids)) if ids[i : i + len(header)] == header]
    assert len(starts) == sum(r == "assistant" for r in roles)
    assert not any(e.loss_mask[i + k] for i in starts for k in range(len(header) + 1))  # + its newline
    trained = tokenizer.decode([t for t, m in zip(ids, e.loss_mask) if m])
    replies = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
    assert trained == "".join(r.removeprefix("\n") for r in replies)  # the straddling "\n\n" left out


def test_no_attention_crosses_conversations_in_a_packed_row(init_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    from pipelines.tokenizer import ENDOFTEXT_ID
    from training.attention import model_inputs, register_packed_sdpa

    convs = [MULTI_TURN, NO_SYSTEM, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]]
    examples = [example(m, tokenizer, str(i)) for i, m in enumerate(convs)]
    rows = [[0, 2], [1]]  # two rows: a conversation, another, then padding
    batch = cd.row_tensors(rows, examples, SEQ_LEN, ENDOFTEXT_ID)
    assert (batch["labels"] != cd.IGNORE_INDEX).sum() == sum(sum(e.loss_mask) for e in examples)
    register_packed_sdpa()
    packed_model = AutoModelForCausalLM.from_pretrained(init_dir, attn_implementation="packed_sdpa").eval()
    alone_model = AutoModelForCausalLM.from_pretrained(init_dir, attn_implementation="sdpa").eval()
    inputs = model_inputs(batch, "sdpa")
    inputs.pop("labels")
    with torch.no_grad():
        packed = packed_model(**inputs).logits.view(len(rows), SEQ_LEN, -1)
        for b, row in enumerate(rows):
            at = 0
            for i in row:
                n = len(examples[i])
                alone = alone_model(input_ids=torch.tensor([examples[i].input_ids])).logits[0]
                torch.testing.assert_close(packed[b, at : at + n], alone, rtol=0, atol=2e-5)
                at += n
    # the same row with the conversations in the other order gives each the same logits
    swapped = model_inputs(cd.row_tensors([[2, 0]], examples, SEQ_LEN, ENDOFTEXT_ID), "sdpa")
    swapped.pop("labels")
    with torch.no_grad():
        again = packed_model(**swapped).logits[0]
    n2, n0 = len(examples[2]), len(examples[0])
    torch.testing.assert_close(again[n2 : n2 + n0], packed[0, :n0], rtol=0, atol=2e-5)


def project_loss(init_dir, examples) -> tuple[float, int]:
    """The training loop's loss on one batch: the conversations packed into rows, per-conversation attention, the
    chunked output layer + cross-entropy, the token mean over the batch (as training.sft computes it)."""
    from pipelines.tokenizer import ENDOFTEXT_ID
    from training.attention import model_inputs
    from training.setup import Distributed, build_model, wrap_model
    from training.sft import SftSettings, loop_config

    rows = cd.pack_rows([len(e) for e in examples], range(len(examples)), SEQ_LEN)
    assert len(rows) < len(examples)  # really packed
    cfg = loop_config(SftSettings(seq_len=SEQ_LEN, loss_chunk_tokens=48), str(init_dir), max_steps=1)
    model = build_model(cfg, SEQ_LEN)
    model = wrap_model(model, cfg, Distributed(0, 1, 0, torch.device("cpu"), False))
    batch = model_inputs(cd.row_tensors(rows, examples, SEQ_LEN, ENDOFTEXT_ID), "sdpa")
    n = int((batch["labels"][:, 1:] != cd.IGNORE_INDEX).sum())
    with torch.no_grad():
        return float(model(**batch, use_cache=False, num_items_in_batch=n).loss), n


def test_sft_loss_equals_a_plain_full_logits_cross_entropy(init_dir, tokenizer):
    """The project's loss against transformers' forward over each conversation alone, full logits, plain
    cross-entropy on the tokens the independent offset mask marks."""
    from transformers import AutoModelForCausalLM

    convs = [MULTI_TURN, NO_SYSTEM, MULTI_TURN[:3], NO_SYSTEM[:2]]
    ours, n = project_loss(init_dir, [example(m, tokenizer, str(i)) for i, m in enumerate(convs)])
    reference = AutoModelForCausalLM.from_pretrained(init_dir, attn_implementation="eager").eval()
    total, count = 0.0, 0
    for messages in convs:
        ids, mask = offset_mask(messages, tokenizer)
        with torch.no_grad():
            logits = reference(input_ids=torch.tensor([ids])).logits[0].double()
        targets = torch.tensor(ids)
        keep = torch.tensor(mask)[1:]  # position t predicts token t + 1
        losses = torch.nn.functional.cross_entropy(logits[:-1], targets[1:], reduction="none")
        total += float(losses[keep].sum())
        count += int(keep.sum())
    assert count == n
    assert ours == pytest.approx(total / count, abs=1e-4)


def test_sft_loss_equals_trl_sft_trainer_assistant_only_loss(init_dir, tokenizer, tmp_path):
    """The same batch through TRL's SFTTrainer (assistant_only_loss, no packing, padded batch): the loss of its
    compute_loss. The replies do not start with a newline, where the two masks differ by design (see above)."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    convs = [MULTI_TURN[:3], NO_SYSTEM, MULTI_TURN[:3] + [MULTI_TURN[5], MULTI_TURN[6]], NO_SYSTEM[:2]]
    ours, n = project_loss(init_dir, [example(m, tokenizer, str(i)) for i, m in enumerate(convs)])
    model = AutoModelForCausalLM.from_pretrained(init_dir, attn_implementation="eager")
    args = SFTConfig(
        output_dir=str(tmp_path / "trl"), assistant_only_loss=True, packing=False, per_device_train_batch_size=4,
        max_length=None, report_to="none", use_cpu=True, save_strategy="no", logging_strategy="no", bf16=False,
    )  # fmt: skip
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list([{"messages": c} for c in convs]),
        processing_class=tokenizer,
    )  # fmt: skip
    batch = next(iter(trainer.get_train_dataloader()))
    assert int((batch["labels"][:, 1:] != -100).sum()) == n  # the same tokens carry loss
    model.eval()
    with torch.no_grad():
        theirs = float(trainer.compute_loss(model, batch))
    assert ours == pytest.approx(theirs, abs=1e-4)


def write_messages_parquet(path: Path, rows: list[dict]) -> Path:
    schema = pa.schema([("id", pa.string()), ("messages", pa.list_(MESSAGE_TYPE))])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


WORDS = "apple river stone cloud tiger lemon candle forest piano window garden silver rocket button mirror".split()
WORDS += "castle dragon pepper meadow violin planet summer winter jungle harbor marble pencil rabbit saddle".split()


def ok_rows(words):
    return [
        {
            "id": f"ok-{w}",
            "messages": [{"role": "user", "content": f"Say {w}"}, {"role": "assistant", "content": f"OK: {w}"}],
        }
        for w in words
    ]


BAD_LINES = [
    {"id": "bad-str", "messages": "just text"},
    {"id": "bad-missing"},
    {"id": "bad-last-user", "messages": [{"role": "user", "content": "hi"}]},
    {"id": "bad-empty", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]},
    {"id": "bad-role", "messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]},
    {
        "id": "bad-long",
        "messages": [{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "ok"}],
    },
    {
        "id": "bad-token",
        "messages": [{"role": "user", "content": "a<|im_end|>"}, {"role": "assistant", "content": "b"}],
    },
    {"id": "bad-order", "messages": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]},
]
EXPECTED_REASONS = {
    "bad-str": "not_a_conversation",
    "bad-missing": "not_a_conversation",
    "bad-last-user": "last_turn_not_assistant",
    "bad-empty": "empty_content",
    "bad-role": "unknown_role",
    "bad-long": "too_long",
    "bad-token": "control_token",
    "bad-order": "bad_turn_order",
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sources")
    good = write_messages_parquet(folder / "good.parquet", ok_rows(WORDS[:24]))
    human = folder / "human.jsonl"
    lines = [json.dumps(row) for row in BAD_LINES] + ["{not json"]
    lines += [json.dumps({"messages": NO_SYSTEM}), json.dumps({"messages": MULTI_TURN})]
    human.write_text("\n".join(lines) + "\n")
    return {"good": str(good), "human": str(human)}


def cli(sources, out, init_dir, *extra):
    args = [sys.executable, "-m", "training.sft", "--output", str(out), "--init", str(init_dir)]
    args += [a for name, path in sources.items() for a in ("--source", f"{name}={path}")]
    args += ["--seq-len", str(SEQ_LEN), "--micro-batch-size", "2", "--grad-accum-steps", "2", "--epochs", "3"]
    args += ["--lr", "3e-3", "--min-lr", "3e-4", "--warmup-steps", "1", "--num-threads", "1", "--log-every", "1"]
    args += ["--checkpoint-every", "2", "--heldout-fraction", "0.1", "--source-weights", "human=2"]
    return args + list(extra)


def run_cli(args, **env):
    import os

    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, env={**os.environ, **env}, timeout=600)


@pytest.fixture(scope="module")
def reference_run(sources, init_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "reference"
    proc = run_cli(cli(sources, out, init_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "summary.json").read_text())


def test_bad_rows_go_to_excluded_with_their_reason(reference_run):
    out, summary = reference_run
    table = pq.read_table(out / "excluded" / "part-00000.parquet").to_pylist()
    reasons = {row["id"]: row["reason"] for row in table}
    assert {k: reasons[k] for k in EXPECTED_REASONS} == EXPECTED_REASONS
    not_json = [row for row in table if row["id"] not in EXPECTED_REASONS]
    assert len(not_json) == 1 and not_json[0]["reason"] == "not_a_conversation"
    assert all(row["source"] == "human" and row["detail"] for row in table)
    assert summary["excluded"] == len(BAD_LINES) + 1
    assert summary["excluded_by_reason"]["not_a_conversation"] == 3
    assert summary["conversations_by_source"] == {"good": 24, "human": 2}
    assert summary["train_conversations"] + summary["heldout_conversations"] == 26
    assert summary["heldout_conversations"] > 0 and summary["val_loss"] is not None
    assert (out / "final" / "model.safetensors").exists()
    generation = json.loads((out / "final" / "generation_config.json").read_text())
    assert IM_END_ID in generation["eos_token_id"]


def test_source_weights_and_heldout_split_are_deterministic(tokenizer):
    examples = [cd.Example(f"{s}-{i}", s, []) for s in ("a", "b") for i in range(10)]
    one = cd.epoch_examples(examples, {"a": 2, "b": 0.5}, seed=0, epoch=0)
    assert one == cd.epoch_examples(examples, {"a": 2, "b": 0.5}, seed=0, epoch=0)
    assert one != cd.epoch_examples(examples, {"a": 2, "b": 0.5}, seed=0, epoch=1)
    sources = [examples[i].source for i in one]
    assert sources.count("a") == 20 and sources.count("b") == 5
    held = [e.id for e in examples if cd.is_heldout(e.id, 0.3)]
    assert held == [e.id for e in examples if cd.is_heldout(e.id, 0.3)] and 0 < len(held) < 20


def load_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_kill_9_and_rerun_gives_the_uninterrupted_weights_bitwise(sources, init_dir, reference_run, tmp_path):
    from training.signals import KILL_AFTER_STEP_ENV

    reference_out, reference = reference_run
    assert reference["steps"] >= 5
    out = tmp_path / "resumed"
    killed = run_cli(cli(sources, out, init_dir), **{KILL_AFTER_STEP_ENV: "3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_000002"
    resumed = run_cli(cli(sources, out, init_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] == 2 and summary["steps"] == reference["steps"]
    got, expected = load_weights(out / "final"), load_weights(reference_out / "final")
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert steps == list(range(1, reference["steps"] + 1))  # the killed run's step 3 was dropped and redone
    # other settings: the checkpoints are set aside, not resumed
    other = run_cli(cli(sources, out, init_dir, "--lr", "1e-3", "--max-steps", "1"))
    assert other.returncode == 0, other.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["resumed_from_step"] is None
    assert len(list((out / "superseded").iterdir())) == 1
    # other data under the same settings: set aside too
    more = tmp_path / "more.jsonl"
    more.write_text(Path(sources["human"]).read_text() + json.dumps({"messages": NO_SYSTEM[:2]}) + "\n")
    changed = run_cli(cli({**sources, "human": str(more)}, out, init_dir, "--lr", "1e-3", "--max-steps", "1"))
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["resumed_from_step"] is None
    assert len(list((out / "superseded").iterdir())) == 2


def greedy_replies(final_dir, words):
    prompts = [[{"role": "user", "content": f"Say {w}"}] for w in words]
    return cd.generate_replies(str(final_dir), prompts, max_new_tokens=12)


def test_sft_teaches_a_tiny_model_to_answer_in_a_fixed_format(init_dir, tmp_path):
    """A random tiny model learns to answer every "Say <word>" with exactly "OK: noted." and to stop there, and does
    so for words it never saw in training (measured by greedy generation through transformers)."""
    from training.sft import SftSettings, run

    train_words, new_words = WORDS[:24], WORDS[24:]
    rows = [
        {"id": f"t-{w}", "messages": [{"role": "user", "content": f"Say {w}"}, {"role": "assistant", "content": REPLY}]}
        for w in train_words
    ]
    source = write_messages_parquet(tmp_path / "ok.parquet", rows)
    expected = REPLY + "<|im_end|>"
    assert not any(r["reply"] == expected for r in greedy_replies(init_dir, new_words))
    settings = SftSettings(
        seq_len=SEQ_LEN, epochs=24, micro_batch_size=4, grad_accum_steps=1, lr=1e-2, min_lr=1e-3, warmup_steps=2,
        heldout_fraction=0, checkpoint_every=1000, log_every=50, num_threads=2,
    )  # fmt: skip
    summary = run(settings, {"ok": str(source)}, str(tmp_path / "sft"), str(init_dir))
    after = greedy_replies(tmp_path / "sft" / "final", new_words)  # words it never saw
    assert all(r["reply"] == expected and r["stopped_at_im_end"] for r in after), (summary["final_loss"], after)


REPLY = "OK: noted."


def test_help_shows_every_setting():
    from training.sft import SftSettings

    proc = subprocess.run([sys.executable, "-m", "training.sft", "--help"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    for name in SftSettings.model_fields:
        assert "--" + name.replace("_", "-") in text, name
    for flag in (
        "--source NAME=PATH",
        "--output",
        "--init",
        "--settings-profile",
        "(default: 7e-06)",
        "(default: 32768)",
    ):
        assert flag in text, flag


def test_bad_setting_is_one_line_error(sources, init_dir, tmp_path):
    proc = run_cli(cli(sources, tmp_path / "x", init_dir, "--lr", "0"))
    assert proc.returncode == 2 and "lr=0: must be > 0" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli(cli(sources, tmp_path / "x", init_dir, "--source-weights", "nosuch=1"))
    assert proc.returncode == 2 and "nosuch" in proc.stderr


def test_sft_model_asset_trains_through_pipes_and_reports(init_dir, tmp_path):
    """The post_training asset for real: the long-context model's final/ (here the tiny init) and the synthetic SFT
    shards under the data root, chatterbot demonstrations added, the trainer launched through Pipes, metadata and
    both checks reported."""
    import shutil

    import dagster as dg

    from assets.metadata import table_rows
    from assets.post_training import sft_model
    from dagster_project.resources import CurationResource, TrainingResource

    root = tmp_path / "data"
    shutil.copytree(init_dir, root / "models" / "long_context" / "final")
    (root / "synthetic" / "sft" / "final" / "data").mkdir(parents=True)
    rows = ok_rows(WORDS[:8]) + [{"id": "bad", "messages": [{"role": "user", "content": "no reply"}]}]
    write_messages_parquet(root / "synthetic" / "sft" / "final" / "data" / "part-0.parquet", rows)
    config = {
        "seq_len": SEQ_LEN, "micro_batch_size": 4, "grad_accum_steps": 1, "lr": 1e-2, "min_lr": 1e-3,
        "warmup_steps": 1, "heldout_fraction": 0.2, "num_threads": 2, "demonstrations": 30,
        "check_max_new_tokens": 16, "check_prompts": 3, "check_min_stop_share": 0.5,
    }  # fmt: skip
    result = dg.materialize(
        [sft_model],
        resources={
            "curation": CurationResource(data_root=str(root)),
            "training": TrainingResource(),
            "pipes_subprocess_client": dg.PipesSubprocessClient(),
        },
        run_config={"ops": {"sft_model": {"config": config}}},
    )
    assert result.success
    (event,) = result.asset_materializations_for_node("sft_model")
    meta = {k: v.value for k, v in event.metadata.items()}
    by_source = {r["source"]: r["conversations"] for r in table_rows(event.metadata["conversations_by_source"])}
    assert by_source["synthetic"] == 8 and 20 <= by_source["demonstrations"] <= 30
    excluded = {r["reason"]: r["rows"] for r in table_rows(event.metadata["excluded_by_reason"])}
    assert excluded["last_turn_not_assistant"] == 1 and set(excluded) <= {"last_turn_not_assistant", "too_long"}
    assert meta["steps"] > 0 and meta["validation_loss"] is not None
    losses = table_rows(event.metadata["loss_values"])
    assert [r["step"] for r in losses][-1] == meta["steps"] and all(r["loss"] > 0 for r in losses if r["loss"])
    assert "[[" in meta["examples"]
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert set(checks) == {"loads_and_generates", "stops_at_im_end", "heldout_not_in_pretraining"}
    assert checks["loads_and_generates"].passed
    assert checks["heldout_not_in_pretraining"].passed  # no instruction documents were rendered here
    # the check says what the replies show: at least check_min_stop_share of them end with <|im_end|>, with text
    # before it, within the limit
    stops = checks["stops_at_im_end"]
    table = stops.metadata["replies"].value.splitlines()[2:]
    assert len(table) == 3
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in table]
    learned = [c[1].endswith("<\\|im_end\\|>") and c[1] != "<\\|im_end\\|>" and c[3] == "True" for c in cells]
    assert stops.metadata["stop_share"].value == round(sum(learned) / 3, 4)
    assert stops.metadata["min_stop_share"].value == 0.5 and stops.passed == (sum(learned) / 3 >= 0.5)


def test_packing_keeps_every_conversation_whole_and_rows_within_seq_len():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    order = list(range(len(lengths)))
    rng.shuffle(order)
    rows = cd.pack_rows(lengths, order, 128, open_rows=8)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 128 for row in rows)
    assert sum(lengths) / (len(rows) * 128) > 0.9  # first fit fills the rows
    with pytest.raises(ValueError, match="seq_len"):
        cd.pack_rows([129], [0], 128)


def test_post_training_report_counts_every_checked_reply_and_shows_eight(tmp_path):
    """make demo's report: how many of the check's replies end with <|im_end|> and how many of those say something,
    over all of them; the first eight are printed."""
    from training.post_training_report import SHOWN_REPLIES, sft_lines

    sft = tmp_path / "sft"
    sft.mkdir()
    (sft / "summary.json").write_text(json.dumps({"steps": 3, "final_dir": str(sft / "final")}))
    replies = [{"prompt": f"q{i}", "reply": "<|im_end|>", "tokens": 1, "stopped_at_im_end": True} for i in range(5)]
    replies += [{"prompt": f"r{i}", "reply": "yes<|im_end|>", "tokens": 2, "stopped_at_im_end": True} for i in range(6)]
    replies += [{"prompt": "s", "reply": "no end", "tokens": 64, "stopped_at_im_end": False}]
    (sft / "generation_check.json").write_text(json.dumps({"replies": replies}))
    lines = sft_lines(tmp_path)
    assert lines[1] == "  held-out replies: 11 of 12 end with <|im_end|>, 6 after some text"
    assert len([line for line in lines if line.startswith("  user:")]) == SHOWN_REPLIES == 8
