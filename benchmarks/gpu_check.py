"""The GPU checks of long-row training, in one short run (about 5 minutes on one H100/H200; needs CUDA).

    python benchmarks/gpu_check.py [--seq-len 32768] [--speed-rows 4] [--speed-seq-len 8192] [--steps 6] [--skip-before]

What the CPU cannot show, on one GPU, bf16 autocast:
1. documents apart: a packed micro-batch of 3 rows (7 documents) through every attention path training uses
   (sdpa = packed_sdpa, flex_attention, flash_attention_2 when flash-attn is installed, eager), forward and
   backward: its loss and gradients against the sum over the documents run alone (bf16 tolerance);
2. memory: peak ``torch.cuda.max_memory_allocated`` of one forward + backward of one --seq-len row through the
   full 0.5B model (24 layers): transformers' path (dense per-document mask, full fp32 logits; --skip-before if it
   cannot fit) against ours for each kernel (chunked loss, activation checkpointing);
3. speed: tokens/s of the 0.5B model at 4 x 8,192 tokens per micro-batch (issue 10's target: >= 40% MFU), each
   kernel, chunked loss, AdamW step included, and MFU = 6 N + 12 L d T FLOPs per token over the bf16 ``torch.mm``
   rate measured here.
Prints one table per part; nothing is written. Without CUDA it stops at once with a message (exit status 2).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.activations import enable_activation_checkpointing  # noqa: E402
from training.attention import ATTENTION_KERNELS, model_inputs, register_packed_sdpa  # noqa: E402
from training.data import IGNORE_INDEX, positions_and_labels  # noqa: E402
from training.loss import use_chunked_loss  # noqa: E402
from training.materialize import build_on_meta, materialize  # noqa: E402
from training.model_configs import MODEL_SHAPES, matmul_parameters, qwen2_config  # noqa: E402


def kernels() -> list[str]:
    found = ["sdpa", "flex_attention", "eager"]
    try:
        import flash_attn  # noqa: F401

        found.insert(1, "flash_attention_2")
    except ImportError:
        print("flash-attn not installed: flash_attention_2 skipped")
    return found


def packed_batch(lengths: list[list[int]], vocab: int = 151_643, seed: int = 0) -> tuple[dict, list[list[int]]]:
    seq_len = sum(lengths[0])
    rows = torch.randint(0, vocab, (len(lengths), seq_len), generator=torch.Generator().manual_seed(seed))
    position_ids, labels = positions_and_labels(rows, [np.array(r) for r in lengths])
    docs = []
    for row, row_lengths in zip(rows.tolist(), lengths):
        starts = np.cumsum([0] + row_lengths)
        docs += [row[a:b] for a, b in zip(starts[:-1], starts[1:])]
    return {"input_ids": rows, "position_ids": position_ids, "labels": labels}, docs


def model_of(size: str, seq_len: int, kernel: str, **overrides) -> torch.nn.Module:
    model = build_on_meta(qwen2_config(size, max_position_embeddings=seq_len, **overrides), kernel)
    materialize(model, "cuda", seed=0)
    return model


def check_documents_apart() -> None:
    print("\n1. documents apart (tiny model, 3 rows x 64 tokens, 7 documents, bf16 autocast, forward + backward)")
    lengths = [[20, 28, 16], [64], [12, 12, 40]]
    batch, docs = packed_batch(lengths)
    base = model_of("tiny", 64, "sdpa")
    predicted = sum(len(d) - 1 for d in docs)
    reference = copy.deepcopy(base)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        alone = 0.0
        for doc in docs:
            ids = torch.tensor([doc], device="cuda")
            loss = reference(input_ids=ids, labels=ids, num_items_in_batch=predicted).loss
            loss.backward()
            alone += loss.item()
    for impl in kernels():
        model = copy.deepcopy(base)
        model.config._attn_implementation = ATTENTION_KERNELS[impl]
        use_chunked_loss(model, 32)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**model_inputs(batch, impl, "cuda"), num_items_in_batch=predicted, use_cache=False).loss
        loss.backward()
        worst = max(
            float((p.grad - q.grad).abs().max() / q.grad.abs().max().clamp(min=1e-6))
            for p, q in zip(model.parameters(), reference.parameters())
        )
        verdict = "ok" if abs(loss.item() - alone) < 2e-2 and worst < 5e-2 else "MIXED DOCUMENTS?"
        print(
            f"  {impl:18s} loss {loss.item():.4f} vs alone {alone:.4f}; worst gradient difference "
            f"{100 * worst:.2f}% of its tensor's largest entry: {verdict}"
        )


def check_memory(seq_len: int, skip_before: bool) -> None:
    print(f"\n2. memory: one forward + backward of one {seq_len:,}-token row, full 0.5B, bf16 autocast")
    cuts = list(range(0, seq_len, 3_000))[1:]  # documents of 3,000 tokens
    lengths = [[b - a for a, b in zip([0] + cuts, cuts + [seq_len])]]
    batch, _ = packed_batch(lengths)
    n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    paths = [] if skip_before else [("transformers sdpa, full logits", "sdpa", None)]
    paths += [(f"ours, {impl}", ATTENTION_KERNELS[impl], impl) for impl in kernels() if impl != "eager"]
    for label, kernel, impl in paths:
        torch.cuda.empty_cache()
        model = model_of("0.5B", seq_len, kernel)
        if impl is None:
            inputs = {k: v.to("cuda") for k, v in batch.items()}
        else:
            inputs = model_inputs(batch, impl, "cuda")
            use_chunked_loss(model, 4096)
            enable_activation_checkpointing(model)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(**inputs, use_cache=False, num_items_in_batch=n).loss
            loss.backward()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 2**30
            print(f"  {label:34s} peak {peak:6.1f} GiB  {time.perf_counter() - start:6.2f} s  loss {loss.item():.4f}")
        except torch.OutOfMemoryError:
            print(f"  {label:34s} out of memory")
        del model, inputs
        loss = None


def check_speed(steps: int, rows: int = 4, seq_len: int = 8192) -> None:
    print(f"\n3. speed: 0.5B, {rows} x {seq_len:,} tokens per step, bf16 autocast, fused AdamW, {steps} steps")
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    torch.mm(a, a)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(20):
        torch.mm(a, a)
    torch.cuda.synchronize()
    peak = 20 * 2 * 8192**3 / (time.perf_counter() - start)
    shape = MODEL_SHAPES["0.5B"]
    flops_per_token = 6 * matmul_parameters("0.5B") + 12 * shape.num_hidden_layers * shape.hidden_size * seq_len
    cuts = list(range(0, seq_len, 700))[1:]
    batch, _ = packed_batch([[b - a for a, b in zip([0] + cuts, cuts + [seq_len])]] * rows)
    n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    print(f"  bf16 torch.mm 8192^3: {peak / 1e12:.0f} TFLOP/s; model {flops_per_token / 1e9:.2f} GFLOP per token")
    for impl in [k for k in kernels() if k != "eager"]:
        model = model_of("0.5B", seq_len, ATTENTION_KERNELS[impl])
        use_chunked_loss(model, 4096)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        inputs = model_inputs(batch, impl, "cuda")
        times = []
        for _ in range(steps):
            torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(**inputs, use_cache=False, num_items_in_batch=n).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        rate = rows * seq_len / float(np.median(times[2:]))
        mfu = 100 * rate * flops_per_token / peak
        print(f"  {impl:18s} {rate:10,.0f} tokens/s  MFU {mfu:5.1f}%  loss {loss.item():.3f}")
        del model, optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=32_768, help="row length of the memory check")
    parser.add_argument("--steps", type=int, default=6, help="steps per kernel in the speed check (2 warm-up)")
    parser.add_argument("--speed-rows", type=int, default=4, help="rows per step in the speed check")
    parser.add_argument("--speed-seq-len", type=int, default=8192, help="tokens per row in the speed check")
    parser.add_argument("--skip-before", action="store_true", help="do not run transformers' path in part 2")
    args = parser.parse_args()
    if args.steps < 3:
        parser.error("--steps must be at least 3 (the first 2 are warm-up)")
    if not torch.cuda.is_available():
        print(
            f"gpu_check needs a CUDA GPU: torch {torch.__version__} sees none (torch.cuda.is_available() is False). "
            "Run it on a machine with an NVIDIA GPU and a CUDA build of torch; the CPU figures come from "
            "bench_memory.py and bench_training.py.",
            file=sys.stderr,
        )
        sys.exit(2)
    register_packed_sdpa()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    check_documents_apart()
    check_memory(args.seq_len, args.skip_before)
    check_speed(args.steps, args.speed_rows, args.speed_seq_len)


if __name__ == "__main__":
    main()
