"""Peak memory of one forward + backward of a long packed row: transformers' path vs ours, each in a fresh process.

    python benchmarks/bench_memory.py [--after-lengths 8192,32768] [--before-lengths 1024,2048,4096] [--threads 2]

Model: the 0.5B shape (hidden 896, 14/2 heads, SwiGLU 4,864, tied 151,936 x 896 embeddings) cut to 2 decoder layers
(166M parameters), fp32, CPU, weights from ``training.materialize`` with seed 0. Data: one row per length, packed
from debian_reference with the Qwen2 tokenizer as in ``bench_training.py`` (documents joined with <|endoftext|>,
``position_ids`` restarting per document, each document's first token labelled -100).

before  transformers' own path, what ``training.pretrain`` did until now: ``attn_implementation="sdpa"`` (a dense
        [T, T] per-document mask built from ``position_ids``), ``model(input_ids, position_ids, labels)`` (fp32
        logits over the full vocabulary, then cross-entropy), no activation checkpointing.
after   ours, as ``training.pretrain`` builds it: ``packed_sdpa`` (causal SDPA per document, no mask),
        ``training.loss`` (output layer + cross-entropy in chunks of --chunk positions, default training's on
        CPU, 256), activation checkpointing (``training.activations``: decoder layers recomputed,
        MLPs in tiles of 2,048 tokens).
after-noac  ours without activation checkpointing (shows what checkpointing adds).

Each (path, length) runs in its own child process: peak RSS is that process's ``ru_maxrss``, so no two paths share
a high-water mark. Reported: RSS once the model and the row are in memory, peak RSS, and the seconds of the
forward + backward. transformers' path needs the full logits (T x 151,936 x 4 bytes: 19.9 GB at 32,768) and more
for log-softmax and its gradient, so it is measured at the --before-lengths only and its peak at the longest
--after-length is extrapolated by linear and quadratic fits through them (printed as such, with the size of the
fp32 logits alone as a floor). This machine's free memory is
checked before each child: a length whose predicted peak would not fit is skipped, not run.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import time

import numpy as np
import psutil
from _common import DEFAULT_CORPORA, make_workdir, print_table, run_side, save_result, warn_if_busy
from bench_training import pack_corpus

SEED = 0
LAYERS = 2
VOCAB = 151_936


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--after-lengths", default="8192,32768", help="row lengths for our path")
    parser.add_argument("--before-lengths", default="1024,2048,4096", help="row lengths for transformers' path")
    parser.add_argument("--both-at", type=int, default=4096, help="a length measured on every path, for the ratio")
    parser.add_argument("--chunk", type=int, default=None, help="loss_chunk_tokens (default: training's, on CPU)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--corpora", default=str(DEFAULT_CORPORA), help="folder of the prepared JSONL.gz corpora")
    parser.add_argument("--workdir", default=None, help="where the packed rows go (default: a new temp dir)")
    parser.add_argument("--side", help=argparse.SUPPRESS)  # internal: "<path>:<length>"
    return parser.parse_args(argv)


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def side(args: argparse.Namespace) -> dict:
    import torch

    from training.activations import enable_activation_checkpointing
    from training.attention import model_inputs, register_packed_sdpa
    from training.data import IGNORE_INDEX, PackedShards
    from training.loss import use_chunked_loss
    from training.materialize import build_on_meta, materialize
    from training.model_configs import qwen2_config
    from training.pretrain_settings import PretrainConfig
    from training.setup import loss_chunk_tokens

    chunk = args.chunk or loss_chunk_tokens(PretrainConfig(data="-", output_dir="-"), "cpu")
    path, length = args.side.split(":")
    seq_len = int(length)
    torch.set_num_threads(args.threads)
    batch = PackedShards(os.path.join(args.workdir, f"packed-{seq_len}")).batch([0])
    config = qwen2_config("0.5B", num_hidden_layers=LAYERS, max_position_embeddings=seq_len)
    register_packed_sdpa()
    model = build_on_meta(config, "sdpa" if path == "before" else "packed_sdpa")
    materialize(model, "cpu", SEED)
    if path == "before":
        inputs = dict(batch)
    else:
        inputs = model_inputs(batch, "sdpa")
        use_chunked_loss(model, chunk)
        if path == "after":
            enable_activation_checkpointing(model)
    model.train()
    n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    ready = rss_mb()
    start = time.perf_counter()
    loss = model(**inputs, use_cache=False, num_items_in_batch=n).loss
    loss.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    grad_norm = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters())))
    return {"ready_mb": ready, "peak_mb": peak, "seconds": seconds, "loss": float(loss), "grad_norm": grad_norm}


def quadratic_fit(lengths: list[int], peaks: list[float]) -> np.poly1d:
    return np.poly1d(np.polyfit(lengths, peaks, deg=min(2, len(lengths) - 1)))


def main() -> None:
    args = parse_args()
    args.workdir = make_workdir(args.workdir, "bench-memory")
    if args.side:
        save_result(args.workdir, args.side, side(args))
        return
    after = [int(x) for x in args.after_lengths.split(",")]
    before = [int(x) for x in args.before_lengths.split(",")]
    warn_if_busy()
    for seq_len in sorted({*after, *before, args.both_at}):
        folder = os.path.join(args.workdir, f"packed-{seq_len}")
        shutil.rmtree(folder, ignore_errors=True)
        corpus = pack_corpus(args.corpora, folder, seq_len, rows_needed=1)
        print(f"row of {seq_len:,} tokens: {corpus['segments_per_row']:.0f} documents in the first row")
    script = os.path.abspath(__file__)
    argv = [f"--threads={args.threads}", f"--corpora={args.corpora}"] + (
        [f"--chunk={args.chunk}"] if args.chunk else []
    )
    plan = [("before", t) for t in sorted({*before, args.both_at})]
    plan += [("after-noac", args.both_at)] + [("after", t) for t in sorted({*after, args.both_at})]
    results: dict[tuple[str, int], dict] = {}
    for path, seq_len in plan:
        measured = [t for p, t in results if p == path]
        if path == "before" and len(measured) >= 2:
            predicted = quadratic_fit(measured, [results[(path, t)]["peak_mb"] for t in measured])(seq_len)
            available = psutil.virtual_memory().available / 2**20
            if predicted > available - 2048:
                print(f"skipping {path} at {seq_len}: predicted peak {predicted:,.0f} MB, {available:,.0f} MB free")
                continue
        results[(path, seq_len)] = run_side(script, f"{path}:{seq_len}", argv, args.workdir)

    rows = [
        [path, seq_len, r["ready_mb"], r["peak_mb"], r["peak_mb"] - r["ready_mb"], r["seconds"], r["loss"]]
        for (path, seq_len), r in results.items()
    ]
    print(f"\n0.5B shape, {LAYERS} layers, fp32, {args.threads} threads, one forward + backward of one packed row")
    print_table(["path", "tokens", "RSS ready MB", "peak RSS MB", "step MB", "seconds", "loss"], rows)

    both = args.both_at
    if ("before", both) in results and ("after", both) in results:
        b, a = results[("before", both)], results[("after", both)]
        print(
            f"\nat {both:,} tokens: peak {b['peak_mb']:,.0f} MB -> {a['peak_mb']:,.0f} MB "
            f"({b['peak_mb'] / a['peak_mb']:.1f}x less), {b['seconds']:.1f} s -> {a['seconds']:.1f} s; "
            f"loss {b['loss']:.5f} vs {a['loss']:.5f}, grad norm {b['grad_norm']:.5f} vs {a['grad_norm']:.5f}"
        )
    longest = max(after)
    if ("after", longest) in results:
        measured = sorted(t for p, t in results if p == "before")
        ours = results[("after", longest)]
        line = f"at {longest:,} tokens: ours {ours['peak_mb']:,.0f} MB peak in {ours['seconds']:.1f} s"
        if len(measured) >= 2:
            peaks = [results[("before", t)]["peak_mb"] for t in measured]
            linear = np.poly1d(np.polyfit(measured, peaks, deg=1))(longest)
            fits = f"linear fit {linear:,.0f} MB ({linear / ours['peak_mb']:.1f}x ours)"
            if len(measured) >= 3:
                quadratic = quadratic_fit(measured, peaks)(longest)
                fits += f", quadratic fit {quadratic:,.0f} MB ({quadratic / ours['peak_mb']:.1f}x)"
            logits_mb = longest * VOCAB * 4 / 2**20
            line += (
                f"; transformers' path EXTRAPOLATED from {', '.join(map(str, measured))} tokens: {fits}; its fp32 "
                f"logits alone are {logits_mb:,.0f} MB ({logits_mb / ours['peak_mb']:.1f}x ours)"
            )
        print("RESULT " + line)


if __name__ == "__main__":
    main()
