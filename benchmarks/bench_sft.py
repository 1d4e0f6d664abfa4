"""SFT throughput: our packed SFT (``training.sft``) vs TRL's ``SFTTrainer`` without packing, and MFU.

    python benchmarks/bench_sft.py [--conversations 400] [--seq-len 512] [--rows-per-step 4] [--steps 0] \\
        [--skip 2] [--threads 2] [--repeats 1] [--peer-micro-batches 1,0] [--data-root DIR]

Data: the demo's SFT data: the chatterbot-corpus demonstrations (``training.chat_data.write_chatterbot_source``, a
language-balanced sample of --conversations, seed 0: the ``sft_model`` asset's default is 400) plus the synthetic
SFT shards under ``DATA_ROOT/synthetic/sft/final`` when there are any (the asset's two sources; --data-root defaults
to $QWEN2_DATA_ROOT, else ./data). Both sides get exactly the conversations our loader keeps (row checks, no
held-out slice, conversations longer than --seq-len excluded), each in its own seeded order, one epoch each (--steps
0).

Model: ``tiny`` Qwen2 (2 layers, hidden 64, tied 151,936 x 64 embeddings: 9.8M parameters), random init with seed 0
saved once as the init folder both sides load; fp32, --threads torch threads, each side in its own child process.

Ours: ``training.sft.run`` in the demo profile's shape (rows of --seq-len tokens, --rows-per-step rows per step, no
accumulation): conversations packed into rows (first fit), positions restart per conversation and attention stays
inside it (``packed_sdpa``), loss on the assistant turns and their <|im_end|> only, chunked output layer +
cross-entropy, fused AdamW 0.9/0.95, wd 0.1, clip 1.0, lr 3e-4 cosine; one epoch (its last step filled up with the
first rows again, as ``training.sft`` does) or --steps optimizer steps.

Peer: ``trl.SFTTrainer`` (TRL 1.16) on the same conversations as a ``messages`` dataset,
``assistant_only_loss=True`` (our chat tokenizer's template has the ``{% generation %}`` markers TRL needs),
``packing=False``, no truncation, transformers' sdpa, TRL's fused LM head (always on in
``SFTTrainer.compute_loss``), the same optimizer settings, threads, one epoch (``num_train_epochs=1``) or --steps,
no logging, saving or eval. Each step takes ``ceil(conversations / our steps per epoch)`` conversations, so both
sides train about the same tokens per step; --peer-micro-batches lists how the peer splits them: K > 0 is
``per_device_train_batch_size=K`` with gradient accumulation (1: no padding at all), 0 is the whole step as one
padded batch. Every listed variant runs; the ratio is against the fastest.

Sides alternate --repeats times, each run in a fresh child process; the table shows medians. Measured: wall and CPU
seconds from the end of step --skip to the end of the last step. Tokens are real conversation tokens only (padding
is counted on neither side): ours, the conversations in the rows of the timed steps (each row's padding segment left
out); TRL, its own count (``attention_mask`` sums). Checked and printed: both sides tokenized the same conversations
(the multiset of token sequences) with the same loss tokens per conversation, and the loss tokens each side trained
on in its steps. MFU = (6 N + 12 L d T) x tokens/s / the fp32 ``torch.mm`` (2048^2) rate measured in the same run
(before and after the runs, the higher counts), N the parameters in matmuls (the tied output projection counts), T
the token-weighted mean conversation length (attention inside a conversation is the useful work).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import time
from statistics import median

from _common import REPO, make_workdir, print_table, run_side, save_result, warn_if_busy

MODEL_SIZE = "tiny"
SEED = 0
LR = 3e-4
MIN_LR = 3e-5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=400, help="chatterbot conversations (default 400)")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per packed row (ours; default 512)")
    parser.add_argument("--rows-per-step", type=int, default=4, help="packed rows per optimizer step (default 4)")
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps on each side (default 0: one epoch)")
    parser.add_argument("--skip", type=int, default=2, help="warm-up steps left out of the timing (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on each side (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side, alternating (default 1)")
    parser.add_argument(
        "--peer-micro-batches",
        default="1,0",
        help="TRL variants: conversations per forward pass (accumulated to a step); 0: the whole step in one padded "
        "batch (default 1,0)",
    )
    parser.add_argument(
        "--data-root",
        default=os.environ.get("QWEN2_DATA_ROOT", str(REPO / "data")),
        help="where synthetic/sft/final is looked for (default $QWEN2_DATA_ROOT or ./data)",
    )
    parser.add_argument("--workdir", default=None, help="where data and outputs go (default: a new temp dir)")
    parser.add_argument("--peer-batch", type=int, default=None, help=argparse.SUPPRESS)  # set by the parent
    parser.add_argument("--side", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps and args.skip >= args.steps:
        parser.error("--skip must be smaller than --steps")
    args.micro_batches = [int(k) for k in args.peer_micro_batches.split(",")]
    if not args.micro_batches or min(args.micro_batches) < 0:
        parser.error("--peer-micro-batches: a comma-separated list of integers >= 0")
    return args


def sft_settings(args: argparse.Namespace, max_steps: int | None = None):
    from training.sft import SftSettings

    return SftSettings(
        epochs=1,
        max_steps=max_steps,
        seq_len=args.seq_len,
        heldout_fraction=0.0,
        micro_batch_size=args.rows_per_step,
        grad_accum_steps=1,
        lr=LR,
        min_lr=MIN_LR,
        warmup_steps=args.skip,
        weight_decay=0.1,
        seed=SEED,
        precision="fp32",
        device="cpu",
        checkpoint_every=10**9,  # only the final checkpoint, after the timed steps
        log_every=1,  # the progress callback (our clock) runs at every logged step
        num_threads=args.threads,
    )


def sources_of(workdir: str) -> dict[str, str]:
    with open(os.path.join(workdir, "sources.json")) as f:
        return json.load(f)


def prepared(args: argparse.Namespace) -> dict:
    """Our data preparation (``training.sft.prepare_data``; deterministic): the conversations and the packed rows."""
    from training.checkpoint import checkpoint_tokenizer
    from training.sft import prepare_data

    return prepare_data(sft_settings(args), sources_of(args.workdir), checkpoint_tokenizer("chat"))


def sequence_digest(ids) -> str:
    return hashlib.sha1(",".join(map(str, ids)).encode()).hexdigest()[:16]


def side_matmul(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < 3.0:
        torch.mm(a, b)
        count += 1
    return {"flops_per_s": 2 * n**3 * count / (time.perf_counter() - start)}


def clock() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process: user + system, all threads)."""
    return time.perf_counter(), time.process_time()


def rates(ends: list[tuple[float, float]], tokens_after: list[int], skip: int) -> dict:
    """Tokens per wall and CPU second from the end of step ``skip`` to the end of the last step; ``tokens_after[k]``
    is the running total of real tokens at the end of step k + 1."""
    tokens = tokens_after[-1] - tokens_after[skip - 1]
    (wall0, cpu0), (wall1, cpu1) = ends[skip - 1], ends[-1]
    return {"tokens_per_s": tokens / (wall1 - wall0), "tokens_per_cpu_s": tokens / (cpu1 - cpu0)}


def side_ours(args: argparse.Namespace) -> dict:
    from training.sft import run

    started = time.perf_counter()
    out = os.path.join(args.workdir, "ours")
    shutil.rmtree(out, ignore_errors=True)
    ends: list[tuple[float, float]] = []
    loss_tokens: list[int] = []

    def progress(record: dict) -> None:  # called at the end of every step (log_every=1)
        ends.append(clock())
        loss_tokens.append(record["loss_tokens"])

    settings = sft_settings(args, max_steps=args.steps or None)
    summary = run(settings, sources_of(args.workdir), out, os.path.join(args.workdir, "init"), progress)
    wall = time.perf_counter() - started
    # The rows step s trained on (training.sft.run: the epoch's rows in order, micro_batch_size per step, the last
    # step filled up with the first rows again); real tokens are the conversations in them, not a row's padding.
    data = prepared(args)
    train, epoch_rows = data["train"], data["rows"]
    trained_rows = (epoch_rows * 2)[: len(ends) * args.rows_per_step]
    running, step_tokens = 0, []
    for s in range(len(ends)):
        running += sum(
            len(train[i]) for row in trained_rows[s * args.rows_per_step :][: args.rows_per_step] for i in row
        )
        step_tokens.append(running)
    filler = trained_rows[len(epoch_rows) :]  # rows trained a second time to fill the last step
    with open(os.path.join(out, "metrics.jsonl")) as f:
        losses = [json.loads(line)["loss"] for line in f if '"loss"' in line]
    return {
        **rates(ends, step_tokens, args.skip),
        "steps": len(ends),
        "trained_tokens": step_tokens[-1],
        "trained_loss_tokens": sum(loss_tokens),
        "filler_tokens": sum(len(train[i]) for row in filler for i in row),
        "filler_loss_tokens": sum(sum(train[i].loss_mask) for row in filler for i in row),
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "parameters": summary["parameters"],
        "run_wall_s": wall,
    }


def side_trl(args: argparse.Namespace, micro_batch: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from training.checkpoint import checkpoint_tokenizer

    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    train = prepared(args)["train"]  # the conversations ours trains on (read and checked by our loader)
    dataset = Dataset.from_list([{"messages": e.messages} for e in train])
    model = AutoModelForCausalLM.from_pretrained(os.path.join(args.workdir, "init"), attn_implementation="sdpa")

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[tuple[float, float]] = []
            self.tokens: list[int] = []
            self.trainer = None

        def on_step_end(self, *a, **kw) -> None:
            self.ends.append(clock())
            # SFTTrainer's own running count of the tokens it trained on: attention_mask sums (padding excluded)
            self.tokens.append(int(self.trainer._total_train_tokens))

    per_device = micro_batch or args.peer_batch
    accumulation = math.ceil(args.peer_batch / per_device)
    config = SFTConfig(
        output_dir=os.path.join(args.workdir, f"trl_mb{micro_batch}"),
        assistant_only_loss=True,
        packing=False,
        max_length=None,  # no truncation: ours excluded what does not fit a row
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=1,
        max_steps=args.steps or -1,
        learning_rate=LR,
        lr_scheduler_type="cosine",
        warmup_steps=args.skip,
        weight_decay=0.1,
        adam_beta1=0.9,
        adam_beta2=0.95,
        max_grad_norm=1.0,
        optim="adamw_torch_fused",  # the kernel ours uses
        use_cpu=True,
        bf16=False,
        seed=SEED,
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    step_clock = StepClock()
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=checkpoint_tokenizer("chat"),
        callbacks=[step_clock],
    )
    step_clock.trainer = trainer
    loss_tokens = [0]
    compute_loss = trainer.compute_loss

    def counting_compute_loss(model, inputs, *a, **kw):  # the loss tokens of every micro-batch it trains on
        loss_tokens[0] += int((inputs["labels"][:, 1:] != -100).sum())
        return compute_loss(model, inputs, *a, **kw)

    trainer.compute_loss = counting_compute_loss
    tokenized = trainer.train_dataset
    sequences, labels = list(tokenized["input_ids"]), list(tokenized["labels"])
    result = trainer.train()
    wall = time.perf_counter() - started
    return {
        **rates(step_clock.ends, step_clock.tokens, args.skip),
        "steps": len(step_clock.ends),
        "trained_tokens": step_clock.tokens[-1],
        "trained_loss_tokens": loss_tokens[0],
        "mean_loss": result.training_loss,
        "per_device": per_device,
        "accumulation": accumulation,
        "run_wall_s": wall,
        # what TRL tokenized: each conversation's token sequence (digest) and its loss tokens (labels[1:] != -100)
        "conversations": sorted(
            [sequence_digest(ids), sum(1 for t in lab[1:] if t != -100)] for ids, lab in zip(sequences, labels)
        ),
    }


def run_in_child(args: argparse.Namespace) -> dict:
    if args.side == "matmul":
        return side_matmul(args)
    if args.side == "ours":
        return side_ours(args)
    return side_trl(args, int(args.side.removeprefix("trl_mb")))


def write_data(args: argparse.Namespace) -> dict:
    """The demonstrations Parquet and the sources file both sides read."""
    from training.chat_data import write_chatterbot_source

    sources = {}
    synthetic = os.path.join(args.data_root, "synthetic", "sft", "final")
    if any(f.endswith(".parquet") for d in (synthetic, os.path.join(synthetic, "data")) for f in _ls(d)):
        sources["synthetic"] = synthetic
    path = os.path.join(args.workdir, "demonstrations", "chatterbot.parquet")
    write_chatterbot_source(path, args.conversations, seed=SEED)
    sources["demonstrations"] = path
    with open(os.path.join(args.workdir, "sources.json"), "w") as f:
        json.dump(sources, f)
    return sources


def _ls(folder: str) -> list[str]:
    return os.listdir(folder) if os.path.isdir(folder) else []


def write_init(workdir: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from training.checkpoint import save_pretrained_folder
    from training.model_configs import qwen2_config

    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(qwen2_config(MODEL_SIZE, max_position_embeddings=4096))
    save_pretrained_folder(model, None, os.path.join(workdir, "init"), kind="base")


def label_of(side: str, result: dict) -> str:
    if side == "ours":
        return "ours (training.sft, packed rows)"
    if side == "trl_mb0":
        return f"trl.SFTTrainer, padded batch {result['per_device']}"
    return f"trl.SFTTrainer, batch {result['per_device']} x {result['accumulation']} accumulated"


def main() -> None:
    args = parse_args()
    args.workdir = make_workdir(args.workdir, "bench-sft")
    if args.side:
        save_result(args.workdir, args.side, run_in_child(args))
        return

    from training.model_configs import MODEL_SHAPES, matmul_parameters

    warn_if_busy()
    sources = write_data(args)
    write_init(args.workdir)
    data = prepared(args)
    train, counts = data["train"], data["counts"]
    epoch_steps = math.ceil(len(data["rows"]) / args.rows_per_step)
    args.peer_batch = math.ceil(len(train) / epoch_steps)
    lengths = [len(e) for e in train]
    weighted_len = sum(n * n for n in lengths) / sum(lengths)
    print(
        f"data: {counts['conversations_by_source']} from {sources}\n"
        f"{len(train)} conversations kept, {counts['excluded']} excluded {counts['excluded_by_reason']}; "
        f"{sum(lengths):,} tokens (mean {sum(lengths) / len(lengths):.1f}, token-weighted mean {weighted_len:.1f}, "
        f"max {max(lengths)}), {counts['loss_tokens']:,} carry loss\n"
        f"ours: an epoch is {len(data['rows'])} rows of {args.seq_len} tokens ({counts['packing_efficiency']:.1%} "
        f"filled) = {epoch_steps} steps of {args.rows_per_step} rows; TRL: {args.peer_batch} conversations per step; "
        + (f"both run {args.steps} steps" if args.steps else "both run one epoch")
        + f" ({args.skip} warm-up steps left out of the timing)"
    )
    argv = [f"--conversations={args.conversations}", f"--seq-len={args.seq_len}"]
    argv += [f"--rows-per-step={args.rows_per_step}", f"--steps={args.steps}", f"--skip={args.skip}"]
    argv += [f"--threads={args.threads}", f"--data-root={args.data_root}", f"--peer-batch={args.peer_batch}"]
    script = os.path.abspath(__file__)
    peaks = [run_side(script, "matmul", argv, args.workdir)["flops_per_s"]]
    runs: dict[str, list[dict]] = {"ours": []} | {f"trl_mb{k}": [] for k in args.micro_batches}
    for _ in range(args.repeats):  # alternate, so a burst of load elsewhere hits every side
        for side in runs:
            runs[side].append(run_side(script, side, argv, args.workdir))
    peaks.append(run_side(script, "matmul", argv, args.workdir)["flops_per_s"])
    peak = max(peaks)
    results = {
        side: {k: v if isinstance(v, list) else median(r[k] for r in found) for k, v in found[0].items()}
        for side, found in runs.items()
    }

    shape = MODEL_SHAPES[MODEL_SIZE]
    n_matmul = matmul_parameters(MODEL_SIZE)
    flops_per_token = 6 * n_matmul + 12 * shape.num_hidden_layers * shape.hidden_size * weighted_len
    print(
        f"\nmachine: fp32 torch.mm 2048^2, {args.threads} threads: {peak / 1e9:.1f} GFLOP/s "
        f"(before the runs {peaks[0] / 1e9:.1f}, after {peaks[1] / 1e9:.1f}; the higher one counts)\n"
        f"model: {MODEL_SIZE}, {int(results['ours']['parameters']):,} parameters, {n_matmul:,} in matmuls; "
        f"FLOPs/token = 6 x {n_matmul:,} + 12 x {shape.num_hidden_layers} x {shape.hidden_size} x "
        f"{weighted_len:.0f} = {flops_per_token / 1e6:.1f} MFLOP\n"
    )
    rows = []
    for side, r in results.items():
        rows.append(
            [
                label_of(side, r),
                r["tokens_per_s"],
                r["tokens_per_cpu_s"],
                100 * flops_per_token * r["tokens_per_s"] / peak,
            ]
            + [int(r["trained_tokens"]), int(r["trained_loss_tokens"]), r["run_wall_s"], r["peak_rss_mb"]]
        )
    header = ["side", "tokens/s", "tokens/CPU-s", "MFU %", "real tokens", "loss tokens", "run s", "peak RSS MB"]
    print_table(header, rows)
    for side, found in runs.items():
        print(f"{side}, each run: tokens/s " + ", ".join(f"{r['tokens_per_s']:.1f}" for r in found))

    # Same conversations, same loss tokens: our token sequences and loss masks against what TRL tokenized
    ours_convs = sorted([sequence_digest(e.input_ids), sum(e.loss_mask)] for e in train)
    theirs = results[f"trl_mb{args.micro_batches[0]}"]["conversations"]
    same_sequences = [d for d, _ in ours_convs] == [d for d, _ in theirs]
    differ = sum(a != b for (_, a), (_, b) in zip(ours_convs, theirs)) if same_sequences else len(ours_convs)
    ours_loss, trl_loss = sum(n for _, n in ours_convs), sum(n for _, n in theirs)
    ours_r = results["ours"]
    filler = int(ours_r["filler_tokens"]), int(ours_r["filler_loss_tokens"])
    print(
        f"\nsame conversations: {'yes' if same_sequences else 'NO'} ({len(ours_convs)} ours, {len(theirs)} TRL, "
        f"compared as token sequences); loss tokens over all of them: ours {ours_loss:,}, TRL {trl_loss:,} "
        f"({differ} conversations differ)\n"
        f"trained (all steps): ours {int(ours_r['trained_tokens']):,} real tokens, "
        f"{int(ours_r['trained_loss_tokens']):,} loss tokens ({filler[0]:,} and {filler[1]:,} of them in rows "
        "repeated to fill the last step); "
        + "; ".join(
            f"{label_of(s, r)}: {int(r['trained_tokens']):,} and {int(r['trained_loss_tokens']):,}"
            for s, r in results.items()
            if s != "ours"
        )
        + "\n"
        f"losses: ours {results['ours']['first_loss']:.3f} -> {results['ours']['last_loss']:.3f}; TRL mean "
        + ", ".join(f"{results[s]['mean_loss']:.3f}" for s in results if s != "ours")
    )
    best = max((s for s in results if s != "ours"), key=lambda s: results[s]["tokens_per_s"])
    trl_r = results[best]
    ratio = ours_r["tokens_per_s"] / trl_r["tokens_per_s"]
    cpu_ratio = ours_r["tokens_per_cpu_s"] / trl_r["tokens_per_cpu_s"]
    print(
        f"RESULT ours {ours_r['tokens_per_s']:.0f} tok/s, TRL SFTTrainer (fastest: {label_of(best, trl_r)}) "
        f"{trl_r['tokens_per_s']:.1f} tok/s, ratio {ratio:.1f}x (per CPU-second {cpu_ratio:.1f}x); MFU ours "
        f"{rows[0][3]:.1f}%, TRL {100 * flops_per_token * trl_r['tokens_per_s'] / peak:.2f}%; same conversations "
        f"{same_sequences}, loss tokens {ours_loss} vs {trl_loss}"
    )


if __name__ == "__main__":
    main()
