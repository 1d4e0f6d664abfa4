"""Training throughput: our pretraining loop vs transformers' Trainer on the same packed shards, and MFU.

    python benchmarks/bench_training.py [--seq-len 256] [--batch-size 4] [--steps 12] [--skip 2] [--threads 2] \
        [--loss-chunk-tokens N] [--ablate]

Data: debian_reference (../shared/corpora) tokenized with the Qwen2 tokenizer (``pipelines.tokenizer``), every
document followed by <|endoftext|>, the stream cut into rows of --seq-len tokens (a document cut at a row end
continues as a new segment of the next row), written as one packed stage folder (``PACKED_SCHEMA``).

Model: ``tiny`` (2 layers, hidden 64, 4/2 heads, SwiGLU 176, tied 151,936 x 64 embeddings: 9.8M parameters),
fp32, random init with seed 0 (both sides: ``training.materialize``), --threads torch threads, in its own child
process per side.

Ours: ``training.pretrain.run`` with its defaults: the micro-batch flattened into one row with causal SDPA per
document (``attn_implementation="sdpa"``, ``training.attention``), output layer + cross-entropy in chunks of
--loss-chunk-tokens (``training.loss``), fused AdamW 0.9/0.95, wd 0.1, clip 1.0, lr 3e-4 cosine, --batch-size rows
per step, no accumulation. Peer: ``transformers.Trainer`` with the same model and weights, the same rows (a Dataset
over ``PackedShards.batch``: input_ids, position_ids, labels; transformers' sdpa with its dense per-document mask
and its full-logits loss), the same batch size, steps, optimizer (adamw_torch_fused, betas 0.9/0.95, wd 0.1, clip
1.0, lr 3e-4 cosine), threads, no logging, saving or eval during the steps. --ablate adds ours with
``loss_chunk_tokens=0`` (transformers' loss over the full logits), to show what the chunked loss is worth.
The sides alternate --repeats times, each run in a fresh child process; the table shows each side's median.

Measured: wall seconds and this process's CPU seconds between the end of step --skip and the end of the last
step (warm-up steps excluded; everything inside the loop counts: data, forward, backward, optimizer, logging),
as tokens/s and tokens per CPU-second (less sensitive to other load on a shared machine). Machine peak: fp32
``torch.mm`` of two 2048 x 2048 matrices with the same threads, 2 n^3 FLOPs each, measured before and after the
runs (the higher rate counts). Model FLOPs per token (PaLM,
appendix B): 6 N + 12 L d T, with N the parameters that multiply (all but the embedding lookup and the norms;
the tied output projection counts), L layers, d hidden size, T = --seq-len (full T x T attention per row; causal,
per-document attention does less). MFU = model FLOPs per token x tokens/s / machine peak.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import time
from statistics import median

from _common import DEFAULT_CORPORA, make_workdir, print_table, run_side, save_result, warn_if_busy

MODEL_SIZE = "tiny"
SEED = 0
LR = 3e-4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per packed row (default 256)")
    parser.add_argument("--batch-size", type=int, default=4, help="rows per optimizer step (default 4)")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per side (default 12)")
    parser.add_argument("--skip", type=int, default=2, help="warm-up steps left out of the timing (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on each side (default 2)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side, alternating (default 2)")
    parser.add_argument("--loss-chunk-tokens", type=int, default=None, help="ours (default: training's, 256 on CPU)")
    parser.add_argument("--ablate", action="store_true", help="also run ours with the full-logits loss")
    parser.add_argument("--corpora", default=str(DEFAULT_CORPORA), help="folder of the prepared JSONL.gz corpora")
    parser.add_argument("--workdir", default=None, help="where shards and outputs go (default: a new temp dir)")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.skip >= args.steps:
        parser.error("--skip must be smaller than --steps")
    return args


def pack_corpus(corpora: str, out: str, seq_len: int, rows_needed: int) -> dict:
    """Tokenize debian_reference documents (in file order) until ``rows_needed`` full rows; write a stage folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.schema import PACKED_SCHEMA
    from pipelines.tokenizer import ENDOFTEXT_ID, load_tokenizer

    tokenizer = load_tokenizer()
    stream: list[int] = []
    segments: list[int] = []  # document lengths along the stream (each with its <|endoftext|>)
    docs = 0
    with gzip.open(os.path.join(corpora, "debian_reference.jsonl.gz"), "rt", encoding="utf-8") as f:
        for line in f:
            ids = tokenizer.encode(json.loads(line)["text"], add_special_tokens=False).ids + [ENDOFTEXT_ID]
            stream += ids
            segments.append(len(ids))
            docs += 1
            if len(stream) >= rows_needed * seq_len:
                break
    rows, lengths = [], []
    seg_iter, left = iter(segments), 0
    for start in range(0, len(stream) - seq_len + 1, seq_len):
        rows.append(stream[start : start + seq_len])
        row_lengths, room = [], seq_len
        while room:
            if left == 0:
                left = next(seg_iter)
            take = min(left, room)
            row_lengths.append(take)
            left, room = left - take, room - take
        lengths.append(row_lengths)
    os.makedirs(os.path.join(out, "data"), exist_ok=True)
    table = pa.table({"input_ids": rows, "doc_lengths": lengths, "seq_index": list(range(len(rows)))}, PACKED_SCHEMA)
    pq.write_table(table, os.path.join(out, "data", "part-00000.parquet"), row_group_size=64)
    with open(os.path.join(out, "_config.json"), "w") as f:
        json.dump({"seq_len": seq_len, "source": "debian_reference"}, f)
    with open(os.path.join(out, "_SUCCESS.json"), "w") as f:
        json.dump({"rows": len(rows), "documents": docs}, f)
    return {"rows": len(rows), "documents": docs, "segments_per_row": sum(map(len, lengths)) / len(lengths)}


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


def steady_rates(step_ends: list[tuple[float, float]], tokens_per_step: int, skip: int) -> dict:
    """Tokens per wall second and per CPU second between the end of step ``skip`` and the end of the last step."""
    tokens = (len(step_ends) - skip) * tokens_per_step
    (wall0, cpu0), (wall1, cpu1) = step_ends[skip - 1], step_ends[-1]
    return {"tokens_per_s": tokens / (wall1 - wall0), "tokens_per_cpu_s": tokens / (cpu1 - cpu0)}


def side_ours(args: argparse.Namespace, loss_chunk_tokens: int | None = None) -> dict:
    from training.pretrain import run
    from training.pretrain_settings import PretrainConfig

    out = os.path.join(args.workdir, "ours")
    shutil.rmtree(out, ignore_errors=True)
    chunk = loss_chunk_tokens if loss_chunk_tokens is not None else args.loss_chunk_tokens
    config = PretrainConfig(
        **({} if chunk is None else {"loss_chunk_tokens": chunk}),
        data=os.path.join(args.workdir, "packed"),
        output_dir=out,
        model_size=MODEL_SIZE,
        max_steps=args.steps,
        micro_batch_size=args.batch_size,
        lr=LR,
        warmup_steps=args.skip,
        seed=SEED,
        precision="fp32",
        checkpoint_every=0,
        log_every=1,
        num_threads=args.threads,
    )
    ends: list[tuple[float, float]] = []
    summary = run(config, progress=lambda record: ends.append(clock()))  # called at the end of every step
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if '"loss"' in line]
    return {
        **steady_rates(ends, args.batch_size * args.seq_len, args.skip),
        "first_loss": records[0]["loss"],
        "last_loss": records[-1]["loss"],
        "parameters": summary["parameters"],
    }


def side_hf(args: argparse.Namespace) -> dict:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from training.data import PackedShards
    from training.materialize import build_on_meta, materialize
    from training.model_configs import qwen2_config

    torch.set_num_threads(args.threads)
    data = PackedShards(os.path.join(args.workdir, "packed"))

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(data)

        def __getitem__(self, i: int) -> dict:
            return {k: v[0] for k, v in data.batch([i]).items()}

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[tuple[float, float]] = []

        def on_step_end(self, *a, **kw) -> None:
            self.ends.append(clock())

    model = build_on_meta(qwen2_config(MODEL_SIZE, max_position_embeddings=args.seq_len), "sdpa")
    materialize(model, "cpu", SEED)  # the weights ours starts from
    out = os.path.join(args.workdir, "hf")
    training_args = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        max_steps=args.steps,
        learning_rate=LR,
        lr_scheduler_type="cosine",
        warmup_steps=args.skip,
        weight_decay=0.1,
        adam_beta1=0.9,
        adam_beta2=0.95,
        max_grad_norm=1.0,
        optim="adamw_torch_fused",  # the kernel ours uses; Trainer's default adamw_torch is slower on CPU
        use_cpu=True,
        seed=SEED,
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    step_clock = StepClock()
    trainer = Trainer(model=model, args=training_args, train_dataset=Rows(), callbacks=[step_clock])
    result = trainer.train()
    return {
        **steady_rates(step_clock.ends, args.batch_size * args.seq_len, args.skip),
        "mean_loss": result.training_loss,
    }


SIDES = {
    "matmul": side_matmul,
    "ours": side_ours,
    "hf": side_hf,
    "ours_full_logits": lambda args: side_ours(args, loss_chunk_tokens=0),
}


def main() -> None:
    args = parse_args()
    args.workdir = make_workdir(args.workdir, "bench-training")
    if args.side:
        save_result(args.workdir, args.side, SIDES[args.side](args))
        return

    from training.model_configs import MODEL_SHAPES, matmul_parameters

    warn_if_busy()
    packed = os.path.join(args.workdir, "packed")
    shutil.rmtree(packed, ignore_errors=True)
    corpus = pack_corpus(args.corpora, packed, args.seq_len, rows_needed=args.steps * args.batch_size)
    print(
        f"packed {corpus['documents']} debian_reference documents into {corpus['rows']} rows of {args.seq_len} "
        f"tokens ({corpus['segments_per_row']:.1f} segments per row)"
    )
    argv = [f"--seq-len={args.seq_len}", f"--batch-size={args.batch_size}", f"--steps={args.steps}"]
    argv += [f"--skip={args.skip}", f"--threads={args.threads}", f"--corpora={args.corpora}"]
    if args.loss_chunk_tokens is not None:
        argv.append(f"--loss-chunk-tokens={args.loss_chunk_tokens}")
    script = os.path.abspath(__file__)
    peaks = [run_side(script, "matmul", argv, args.workdir)["flops_per_s"]]
    runs: dict[str, list[dict]] = {"ours": [], "hf": []} | ({"ours_full_logits": []} if args.ablate else {})
    for _ in range(args.repeats):  # alternate, so a burst of load elsewhere hits both sides
        for side in runs:
            runs[side].append(run_side(script, side, argv, args.workdir))
    results = {side: {key: median(r[key] for r in found) for key in found[0]} for side, found in runs.items()}
    peaks.append(run_side(script, "matmul", argv, args.workdir)["flops_per_s"])
    peak = max(peaks)  # the better of before and after: other load lowers it, and a low peak inflates MFU

    shape = MODEL_SHAPES[MODEL_SIZE]
    n_matmul = matmul_parameters(MODEL_SIZE)
    attention = 12 * shape.num_hidden_layers * shape.hidden_size * args.seq_len
    flops_per_token = 6 * n_matmul + attention
    print(
        f"\nmachine: fp32 torch.mm 2048^2, {args.threads} threads: {peak / 1e9:.1f} GFLOP/s "
        f"(before the runs {peaks[0] / 1e9:.1f}, after {peaks[1] / 1e9:.1f}; the higher one counts)\n"
        f"model: {MODEL_SIZE}, {int(results['ours']['parameters']):,} parameters, {n_matmul:,} in matmuls; "
        f"FLOPs/token = 6 x {n_matmul:,} + 12 x {shape.num_hidden_layers} x {shape.hidden_size} x {args.seq_len} "
        f"= {flops_per_token / 1e6:.1f} MFLOP\n"
        f"run: {args.steps} steps ({args.skip} warm-up) x {args.batch_size} rows x {args.seq_len} tokens\n"
    )
    rows = []
    labels = {"ours": "ours (training.pretrain)", "hf": "transformers.Trainer", "ours_full_logits": "ours, full logits"}
    for side, label in labels.items():
        if side not in results:
            continue
        r = results[side]
        mfu = 100 * flops_per_token * r["tokens_per_s"] / peak
        rows.append(
            [label, r["tokens_per_s"], r["tokens_per_cpu_s"], flops_per_token * r["tokens_per_s"] / 1e9, mfu]
            + [r["peak_rss_mb"]]
        )
    print_table(["side", "tokens/s", "tokens/CPU-s", "model GFLOP/s", "MFU %", "peak RSS MB"], rows)
    for side, found in runs.items():
        print(f"{side}, each run: tokens/s " + ", ".join(f"{r['tokens_per_s']:.1f}" for r in found))
    ratio = results["ours"]["tokens_per_s"] / results["hf"]["tokens_per_s"]
    cpu_ratio = results["ours"]["tokens_per_cpu_s"] / results["hf"]["tokens_per_cpu_s"]
    print(
        f"\nlosses: ours {results['ours']['first_loss']:.3f} -> {results['ours']['last_loss']:.3f}; "
        f"Trainer mean {results['hf']['mean_loss']:.3f}"
    )
    if "ours_full_logits" in results:
        full = results["ours_full_logits"]["tokens_per_s"]
        print(f"chunked loss vs full logits, both ours: {results['ours']['tokens_per_s'] / full:.2f}x tokens/s")
    print(
        f"RESULT ours {results['ours']['tokens_per_s']:.0f} tok/s, Trainer {results['hf']['tokens_per_s']:.0f} tok/s, "
        f"ratio {ratio:.2f}x (per CPU-second {cpu_ratio:.2f}x); MFU ours {rows[0][4]:.1f}%, "
        f"Trainer {rows[1][4]:.1f}%"
    )


if __name__ == "__main__":
    main()
