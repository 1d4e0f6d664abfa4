"""The alignment tax of online DPO with and without the Online Merging Optimizer (Lu et al. 2024): held-out
pretraining-text perplexity after the same episodes, next to the reward each run reached.

    python benchmarks/bench_online_merging.py [--pretrain-steps 120] [--episodes 8] [--threads 2] \\
        [--variants none,ondare,onties] [--density 0.1] [--alpha 1e-7] [--device cpu]

Models (``tiny`` Qwen2, 9.8M parameters, seed 0, fp32), built here:

* base: pretrained with next-token loss on English Debian FAQ text (``debian_faq.jsonl.gz`` of --corpora; every
  fifth document by a hash held out), rows of 128 tokens, 4 rows per step, AdamW lr 3e-3 -> 3e-4, --pretrain-steps;
* SFT: the base taught to answer "Tell me about the <word>." with "Sure" or "Never" (24 words, both replies each:
  about half and half), 40 steps at lr 3e-3 of the replies' likelihood plus the next-token loss on 4 pretraining
  rows (so SFT keeps most of what pretraining gave, as a real SFT mix does);
* reward model: a ``Qwen2ForSequenceClassification`` from the base, ``training.reward_model`` on "Sure" > "Never"
  pairs (6 epochs; held-out accuracy and margin printed).

Each variant is one ``training.online_dpo.run`` from the SFT model with the same settings (--episodes of 8 prompts
x 4 samples, 4 new tokens, beta 0.5, lr 1e-2 -> 1e-3, margin 0.1, 8 held-out prompts) but ``merging``: none, OnDARE or
OnTIES (--density, --alpha; base = the pretrained base). Printed per model: perplexity on the held-out FAQ rows
(the alignment tax is its rise over the SFT model's), and per run: mean reward of the last two episodes, share of
samples that start with "Sure", KL estimate and win rate of the last episode, pairs trained on, wall seconds.

One run (2026-11-30, 2 shared cores under load, ``--pretrain-steps 80 --episodes 10 --variants
none,ondare,onties,ondare:0.1:1e-3,onties:0.1:1e-3``; one seed, so read it as an illustration): perplexity base
1,293.6, SFT 1,314.9; every run reached about the same reward (mean of the last two episodes 2.84 to 2.93) and win
rate 1.0, with held-out perplexity +34.5% over SFT without merging, +38.4% with OnDARE (density 0.1, alpha 1e-7 or
1e-3), +14.3% with OnTIES (density 0.1, alpha 1e-7) and +6.8% with OnTIES at alpha 1e-3 (KL 3.37 -> 2.83 / 0.90).
OnTIES' sign consensus keeps the updates that move along the SFT direction, and the tax falls; OnDARE's random
1/density-scaled entries do not help at this scale.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import tempfile
import time
from pathlib import Path

from _common import DEFAULT_CORPORA, print_table, read_corpus, warn_if_busy

WORDS = """apple river stone cloud tiger lemon candle forest piano window garden silver rocket button mirror castle
dragon pepper meadow violin planet summer winter jungle harbor marble pencil rabbit saddle anchor bridge cactus desert
engine falcon glacier hammer island jacket kettle ladder magnet needle orange parrot quartz ribbon shadow""".split()
GOOD, BAD = "Sure", "Never"
ROW = 128


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrain-steps", type=int, default=120, help="base model steps (default 120)")
    parser.add_argument("--episodes", type=int, default=8, help="online DPO episodes per variant (default 8)")
    parser.add_argument(
        "--variants",
        default="none,ondare,onties",
        help="runs, each MODE[:DENSITY[:ALPHA]] (default none,ondare,onties at --density and --alpha)",
    )
    parser.add_argument("--density", type=float, default=0.1, help="merging density (default 0.1)")
    parser.add_argument("--alpha", type=float, default=1e-7, help="merging alpha (default 1e-7, the authors')")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--corpora", default=str(DEFAULT_CORPORA), help="folder of the prepared JSONL.gz corpora")
    parser.add_argument("--workdir", default=None, help="where models and runs go (default: a new temp dir)")
    return parser.parse_args(argv)


def text_rows(corpora: str, tokenizer) -> tuple[list[list[int]], list[list[int]]]:
    """(train, held-out) rows of ROW tokens of the English FAQ documents, each document ended by <|endoftext|>."""
    from pipelines.tokenizer import ENDOFTEXT_ID

    split: dict[bool, list[int]] = {False: [], True: []}
    for doc in read_corpus(corpora, "debian_faq"):
        if doc.get("lang") != "en":
            continue
        held = int(hashlib.sha256(doc["id"].encode()).hexdigest(), 16) % 5 == 0
        split[held] += tokenizer(doc["text"], add_special_tokens=False)["input_ids"] + [ENDOFTEXT_ID]
    rows = {k: [v[i : i + ROW] for i in range(0, len(v) - ROW + 1, ROW)] for k, v in split.items()}
    return rows[False], rows[True][:48]


def lm_batch(rows: list[list[int]], device):
    import torch

    ids = torch.tensor(rows, device=device)
    ones = torch.ones_like(ids)
    return {"input_ids": ids, "attention_mask": ones, "response_mask": ones.bool()}


def perplexity(folder: str, rows: list[list[int]], device) -> float:
    import torch

    from training.dpo import load_policy, reply_logps

    model = load_policy(folder, device).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), 8):
            lp, n = reply_logps(model, lm_batch(rows[i : i + 8], device))
            total, count = total - float(lp.sum()), count + int(n.sum())
    return math.exp(total / count)


def pretrain(folder: Path, rows: list[list[int]], steps: int, device) -> str:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from training.checkpoint import save_pretrained_folder
    from training.dpo import reply_logps
    from training.model_configs import qwen2_config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(qwen2_config("tiny", max_position_embeddings=256)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    rng = np.random.default_rng(0)
    for step in range(steps):
        for g in optimizer.param_groups:
            g["lr"] = 3e-4 + 0.5 * (1 + math.cos(math.pi * step / steps)) * (3e-3 - 3e-4)
        picked = [rows[i] for i in rng.choice(len(rows), 4, replace=False)]
        lp, n = reply_logps(model, lm_batch(picked, device))
        (-lp.sum() / n.sum()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    return str(save_pretrained_folder(model, None, folder, kind="chat"))


def sft(folder: Path, base: str, rows: list[list[int]], device) -> str:
    import numpy as np
    import torch

    from pipelines.tokenizer import ENDOFTEXT_ID
    from training import preference_data as pdata
    from training.checkpoint import checkpoint_tokenizer, save_pretrained_folder
    from training.dpo import load_policy, reply_logps

    def reply(text):
        return [{"role": "assistant", "content": text}]

    pairs = [pdata.Pair(w, "sft", prompt(w), reply(GOOD), reply(BAD)) for w in WORDS[:24]]
    pdata.tokenize_pairs(pairs, checkpoint_tokenizer("chat"))
    batch = {k: v.to(device) for k, v in pdata.pair_tensors(pairs, ENDOFTEXT_ID).items()}
    model = load_policy(base, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    rng = np.random.default_rng(1)
    for _ in range(40):
        lp, _ = reply_logps(model, batch)
        text, n = reply_logps(model, lm_batch([rows[i] for i in rng.choice(len(rows), 4, replace=False)], device))
        (-lp.mean() - text.sum() / n.sum()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        lp, _ = reply_logps(model, batch)
    n = len(pairs)
    print(f"SFT: P({GOOD}) {float(lp[:n].exp().mean()):.2f}, P({BAD}) {float(lp[n:].exp().mean()):.2f} (whole replies)")
    return str(save_pretrained_folder(model, None, folder, kind="chat"))


def prompt(word: str) -> list[dict]:
    return [{"role": "user", "content": f"Tell me about the {word}."}]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def main() -> None:
    args = parse_args()
    import pyarrow.parquet as pq
    import torch

    from training import reward_model as rm
    from training.checkpoint import checkpoint_tokenizer
    from training.online_dpo import OnlineDpoSettings, run

    torch.set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-online-merging-"))
    work.mkdir(parents=True, exist_ok=True)
    warn_if_busy()
    t = time.perf_counter()
    train_rows, heldout_rows = text_rows(args.corpora, checkpoint_tokenizer("chat"))
    base = pretrain(work / "base", train_rows, args.pretrain_steps, args.device)
    policy = sft(work / "sft", base, train_rows, args.device)
    pairs = [{"id": w, "prompt": prompt(w), "chosen": GOOD, "rejected": BAD} for w in WORDS]
    reward_settings = rm.RewardModelSettings(
        batch_size=8, micro_batch_size=8, epochs=6, lr=3e-3, min_lr=3e-4, warmup_steps=2, heldout_fraction=0.2,
        max_len=128, device=args.device, checkpoint_every=1000, log_every=100, num_threads=args.threads,
    )  # fmt: skip
    reward = rm.run(reward_settings, {"rm": write_jsonl(work / "pairs.jsonl", pairs)}, str(work / "rm"), base)
    conversations = [{"id": w, "messages": prompt(w) + [{"role": "assistant", "content": GOOD}]} for w in WORDS]
    prompts = write_jsonl(work / "prompts.jsonl", conversations)
    ppl = {"base": perplexity(base, heldout_rows, args.device), "sft": perplexity(policy, heldout_rows, args.device)}
    print(
        f"models built in {time.perf_counter() - t:.0f} s: {len(train_rows)} train / {len(heldout_rows)} held-out "
        f"rows of {ROW} tokens; reward model held-out accuracy {reward['validation']['val_accuracy']:.2f}, margin "
        f"{reward['validation']['val_margin']:.2f}; "
        f"perplexity base {ppl['base']:.1f}, SFT {ppl['sft']:.1f}"
    )

    rows = []
    for variant in args.variants.split(","):
        mode, density, alpha = (
            variant.split(":") + [str(args.density), str(args.alpha)][len(variant.split(":")) - 1 :]
        )[:3]
        settings = OnlineDpoSettings(
            episodes=args.episodes, prompts_per_episode=8, samples_per_prompt=4, max_new_tokens=4, heldout_prompts=8,
            margin=0.1, beta=0.5, lr=1e-2, min_lr=1e-3, batch_size=8, micro_batch_size=8, max_len=128,
            winrate_every=args.episodes, device=args.device, num_threads=args.threads, merging=mode,
            merging_density=float(density), merging_alpha=float(alpha),
        )  # fmt: skip
        t = time.perf_counter()
        out = work / f"online_{variant.replace(':', '_')}"
        summary = run(settings, {"sft": prompts}, str(out), policy, reward["final_dir"], base)
        wall = time.perf_counter() - t
        records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
        episodes = [r for r in records if r["step"] > 0]
        last = [pq.read_table(p).to_pylist() for p in sorted((out / "episodes").glob("*.parquet"))[-2:]]
        good = sum(r["response"].startswith(GOOD) for rows_ in last for r in rows_) / sum(len(x) for x in last)
        after = perplexity(summary["final_dir"], heldout_rows, args.device)
        name = mode if mode == "none" else f"{mode}:{density}:{alpha}"
        reward_last = sum(r["mean_reward"] for r in episodes[-2:]) / 2
        rows.append([
            name, f"{reward_last:.3f}", f"{good:.2f}",
            f"{episodes[-1]['kl']:.3f}", f"{summary['win_rate']:.2f}", summary["pairs_kept"], f"{after:.1f}",
            f"{100 * (after / ppl['sft'] - 1):+.1f}%", f"{wall:.0f}",
        ])  # fmt: skip
    print(
        f"\nonline DPO from the SFT model, {args.episodes} episodes x 8 prompts x 4 samples (merging: MODE:DENSITY:"
        f"ALPHA), {args.device}, {args.threads} threads"
    )
    header = ["merging", "reward (last 2)", "Sure share", "KL", "win rate", "pairs", "held-out ppl", "vs SFT", "s"]
    print_table(header, rows)
    print("RESULT " + "; ".join(f"{r[0]}: reward {r[1]}, ppl {r[6]} ({r[7]} vs SFT {ppl['sft']:.1f})" for r in rows))


if __name__ == "__main__":
    main()
