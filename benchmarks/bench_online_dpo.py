"""Online DPO on CPU: (a) batched K-sample generation vs one at a time, (b) where an episode's time goes.

    python benchmarks/bench_online_dpo.py [--prompts 16] [--samples 4] [--max-new-tokens 32] [--batch-sizes 16,64] \\
        [--threads 2] [--part a|b|all] [--episodes 3]

(a) Generation. Policy: the ``tiny`` Qwen2 (9.8M parameters, random init with seed 0, fp32) saved with the Qwen2
tokenizer, loaded once by ``synth.llm.backends.TransformersGenerator``; every variant uses that one generator (its
``batch_size`` changed between them). Prompts: the first user turn of --prompts conversations drawn with seed 0
from chatterbot_sft.jsonl.gz (``bench_generate.load_prompts``), each a ``GenerationRequest`` with n = --samples,
temperature 1, top_p 1, seed 7, --max-new-tokens (online DPO's sampling settings). Variants, in this order:

* one sample at a time: ``batch_size=1``, so every sample is its own ``model.generate`` (P x K calls);
* one request at a time: ``generate([request])`` per prompt with ``batch_size=K``: its K samples in one call;
* batched: ``generate(all requests)`` at each of --batch-sizes (rows per ``model.generate``; 16 is online DPO's
  ``generation_batch_size``, P x K puts every sample in one call).

Each sample draws from its own seeded stream, so every variant must return the same texts and token counts; the
script checks it. tokens/s = generated tokens (each sample's own, up to and including its stop token) / wall seconds
(and per CPU-second of the process, steadier on a shared machine); one warm-up request first. Also shown: the share
of each variant's time spent in the backend's token picker (``_make_sampler``'s logits processor: softmax, float64
inverse CDF and the masked [rows, vocab] output), timed by wrapping it.

(b) Episode time. ``training.online_dpo.run`` on the same tiny policy (as a chat ``save_pretrained`` folder) and a
tiny reward model (a ``Qwen2ForSequenceClassification`` of the ``tiny`` shape, random init with seed 1, saved with its
score head), prompts from the chatterbot demonstrations (``training.chat_data.write_chatterbot_source``, 200
conversations), --episodes episodes of 16 prompts x K samples, --max-new-tokens, fp32, --threads. Printed: each
episode's ``gen_s``, ``score_s``, ``update_s`` from the run's metrics.jsonl and their shares of the episode.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _common import print_table, warn_if_busy
from bench_generate import DEFAULT_CORPUS, load_prompts

SEED = 7


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16, help="prompts P (default 16)")
    parser.add_argument("--samples", type=int, default=4, help="samples per prompt K (default 4)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens per sample at most (default 32)")
    parser.add_argument("--batch-sizes", default="16,64", help="rows per model.generate, batched (default 16,64)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--part", choices=("a", "b", "all"), default="all", help="which part to run (default all)")
    parser.add_argument("--episodes", type=int, default=3, help="(b) online DPO episodes (default 3)")
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="chatterbot_sft.jsonl.gz")
    parser.add_argument("--workdir", default=None, help="where models and runs go (default: a new temp dir)")
    return parser.parse_args(argv)


def save_policy(folder: Path) -> str:
    """The tiny random Qwen2 as a chat save_pretrained folder (ChatML template, stops at <|im_end|>)."""
    import torch
    from transformers import AutoModelForCausalLM

    from training.checkpoint import save_pretrained_folder
    from training.model_configs import qwen2_config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(qwen2_config("tiny", max_position_embeddings=4096))
    return str(save_pretrained_folder(model, None, folder, kind="chat"))


def save_reward_model(folder: Path) -> str:
    """A tiny one-score Qwen2ForSequenceClassification with its score head, random init with seed 1."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from pipelines.tokenizer import ENDOFTEXT_ID
    from training.checkpoint import checkpoint_tokenizer
    from training.model_configs import qwen2_config

    torch.manual_seed(1)
    config = qwen2_config("tiny", max_position_embeddings=4096)
    config.num_labels, config.pad_token_id = 1, ENDOFTEXT_ID
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    checkpoint_tokenizer("chat").save_pretrained(folder)
    return str(folder)


class PickerClock:
    """Wraps ``synth.llm.backends._make_sampler`` so the time inside its logits processor is summed."""

    def __init__(self) -> None:
        import synth.llm.backends as backends

        self.seconds = 0.0
        self.backends, self.original = backends, backends._make_sampler
        backends._make_sampler = self._make

    def _make(self, *a, **kw):
        processor, clock = self.original(*a, **kw), self

        def timed(input_ids, scores):
            t = time.perf_counter()
            out = processor(input_ids, scores)
            clock.seconds += time.perf_counter() - t
            return out

        return timed

    def restore(self) -> None:
        self.backends._make_sampler = self.original


def part_a(args: argparse.Namespace, policy: str) -> dict:
    import torch

    from synth.llm.backends import TransformersGenerator
    from synth.llm.base import GenerationRequest

    torch.set_num_threads(args.threads)
    K = args.samples
    prompts = load_prompts(Path(args.corpus), args.prompts)
    requests = [
        GenerationRequest(p, max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=1.0, seed=SEED, n=K)
        for p in prompts
    ]
    picker = PickerClock()
    generator = TransformersGenerator(policy, batch_size=1)
    generator.generate(requests[:1])  # warm-up

    def one_request_at_a_time():
        return [generator.generate([r])[0] for r in requests]

    variants = [("one sample at a time", 1, lambda: generator.generate(requests))]
    variants.append(("one request at a time", K, one_request_at_a_time))
    for size in [int(b) for b in args.batch_sizes.split(",")]:
        variants.append((f"batched, {size} rows per call", size, lambda: generator.generate(requests)))

    rows, reference, outcome = [], None, {}
    for label, batch_size, call in variants:
        generator.batch_size = batch_size
        calls_before, picker.seconds = generator.generate_calls, 0.0
        t, cpu = time.perf_counter(), time.process_time()
        results = call()
        seconds, cpu_seconds = time.perf_counter() - t, time.process_time() - cpu
        answers = [(tuple(r.texts), tuple(r.completion_tokens)) for r in results]
        tokens = sum(sum(r.completion_tokens) for r in results)
        if reference is None:
            reference, base, cpu_base = answers, tokens / seconds, tokens / cpu_seconds
        same = sum(a == b for a, b in zip(answers, reference))
        rows.append(
            [label, generator.generate_calls - calls_before, tokens, seconds, tokens / seconds, tokens / cpu_seconds]
            + [f"{tokens / seconds / base:.2f}x", f"{tokens / cpu_seconds / cpu_base:.2f}x"]
            + [f"{100 * picker.seconds / seconds:.0f}%", f"{same}/{len(requests)}"]
        )
        outcome[label] = {"tokens": tokens, "seconds": seconds, "cpu_seconds": cpu_seconds, "same": same}
    print(
        f"\n(a) {len(requests)} prompts x {K} samples, max_new_tokens {args.max_new_tokens}, temperature 1, "
        f"tiny Qwen2 fp32, {args.threads} threads"
    )
    print_table(
        ["variant", "generate calls", "tokens", "seconds", "tokens/s", "tokens/CPU-s", "vs one sample"]
        + ["per CPU-s", "picker", "answers equal"],
        rows,
    )
    best = max(rows[2:], key=lambda r: r[4])
    ratio, per_request, cpu_ratio = best[4] / rows[0][4], best[4] / rows[1][4], best[5] / rows[0][5]
    equal = all(r[2] == rows[0][2] and o["same"] == len(requests) for r, o in zip(rows, outcome.values()))
    print(
        f"RESULT (a) batched ({best[0]}) {best[4]:.1f} tok/s vs one sample at a time {rows[0][4]:.1f} tok/s: "
        f"{ratio:.2f}x (per CPU-second {cpu_ratio:.2f}x); vs one request (K samples) at a time "
        f"{rows[1][4]:.1f} tok/s: {per_request:.2f}x; "
        f"same tokens and answers in every variant: {equal}"
    )
    picker.restore()
    return outcome


def part_b(args: argparse.Namespace, policy: str, workdir: Path) -> None:
    try:
        from training.online_dpo import OnlineDpoSettings, run
    except ImportError as e:
        print(f"\n(b) skipped: training.online_dpo is not importable here ({e})")
        return
    from training.chat_data import write_chatterbot_source

    reward = save_reward_model(workdir / "reward")
    prompts = workdir / "prompts" / "chatterbot.parquet"
    write_chatterbot_source(prompts, 200, seed=0)
    settings = OnlineDpoSettings(
        episodes=args.episodes,
        prompts_per_episode=16,
        samples_per_prompt=args.samples,
        max_new_tokens=args.max_new_tokens,
        max_len=512,
        batch_size=16,
        micro_batch_size=4,
        heldout_prompts=8,
        winrate_every=0,
        generation_batch_size=16,
        precision="fp32",
        device="cpu",
        num_threads=args.threads,
        seed=0,
    )
    out = workdir / "online_dpo"
    t = time.perf_counter()
    run(settings, {"demonstrations": str(prompts)}, str(out), policy, reward)
    wall = time.perf_counter() - t
    with open(out / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f if '"gen_s"' in line]
    keys = ("gen_s", "score_s", "update_s", "eval_s")
    rows = []
    for r in records:
        parts = [r.get(k, 0.0) for k in keys]  # eval_s: the win rate, in the episodes that compute it
        other = r["episode_s"] - sum(parts)  # the episode's Parquet shard, metrics and the rest of the loop
        rows.append([f"episode {r['step']}", r["episode_s"], *parts, other, r["pairs_kept"], r["reply_tokens"]])
    totals = [sum(row[i] for row in rows) for i in range(1, 7)]
    rows.append(["all episodes", *totals, sum(r["pairs_kept"] for r in records), ""])
    print(
        f"\n(b) training.online_dpo.run: {args.episodes} episodes x 16 prompts x {args.samples} samples, "
        f"max_new_tokens {args.max_new_tokens}, tiny policy and tiny reward model, fp32, {args.threads} threads "
        f"(run {wall:.1f} s in all; the win rate before the first episode is outside the episodes)"
    )
    header = ["", "episode s", "gen s", "score s", "update s", "eval s", "other s", "pairs", "mean reply tokens"]
    print_table(header, rows)
    episode_s, gen, score, update, evaluation, other = totals
    train_s = episode_s - evaluation
    share = {"gen": gen, "score": score, "update": update, "other": other}
    print(
        "RESULT (b) share of episode time without the win-rate evaluation: "
        + ", ".join(f"{k} {100 * v / train_s:.1f}%" for k, v in share.items())
        + f" (over {len(records)} episodes, {train_s:.1f} s; evaluation {evaluation:.1f} s more)"
    )


def main() -> None:
    args = parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-online-dpo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    warn_if_busy()
    policy = save_policy(workdir / "policy")
    if args.part in ("a", "all"):
        part_a(args, policy)
    if args.part in ("b", "all"):
        part_b(args, policy, workdir)


if __name__ == "__main__":
    main()
