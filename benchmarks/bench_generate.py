"""CPU generation throughput: our batched transformers backend vs one prompt at a time with ``model.generate``.

    python benchmarks/bench_generate.py [--prompts 16] [--max-new-tokens 32] [--batch-sizes 8,16] [--threads 2]

Model: the default CPU teacher (Qwen2.5-Coder-0.5B-Instruct, ``python -m synth.llm.teacher``) when it is in the cache,
else the ``tiny`` random Qwen2 (said so in the output), fp32, loaded once; both sides use the same model object.
Prompts: the first user turn of --prompts conversations drawn with seed 0 from chatterbot_sft.jsonl.gz
(../shared/corpora), rendered with the Qwen2 ChatML template (``synth.llm.chat``).

Ours: ``synth.llm.backends.TransformersGenerator.generate`` over all prompts at each --batch-sizes (sorted by length,
left-padded, one ``model.generate`` per batch, our per-row seeded token picker). Peer: a loop over the prompts, each
its own ``model.generate(do_sample=False)``, batch 1, no padding. Both greedy, the same max_new_tokens, both stop at
<|im_end|>. tokens/s = generated tokens (each sample's own, up to and including its stop token; padding after a
row finished is not counted) / wall seconds. One warm-up generate first. Also reported: how many of the batched
answers equal the one-at-a-time answers (fp32 with padding can flip a near-tie).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_CORPUS = REPO.parent / "shared" / "corpora" / "chatterbot_sft.jsonl.gz"


def load_prompts(path: Path, count: int, seed: int = 0) -> list[list[dict]]:
    from synth.llm.chat import validate_chat

    with gzip.open(path, "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    random.Random(seed).shuffle(records)
    prompts = []
    for record in records:
        first = record.get("messages", [])[:1]
        if first and not validate_chat(first, final_role="user"):
            prompts.append([{"role": "user", "content": first[0]["content"]}])
        if len(prompts) == count:
            break
    return prompts


def model_folder(tmp: Path) -> tuple[str, str]:
    """The teacher if it is set up, else a freshly saved tiny random Qwen2: (folder, description)."""
    from synth.llm.teacher import default_teacher_dir, is_set_up

    if is_set_up():
        return str(default_teacher_dir()), "teacher Qwen2.5-Coder-0.5B-Instruct (fp32)"
    import torch
    from transformers import AutoModelForCausalLM

    from pipelines.tokenizer import load_hf_tokenizer
    from training.model_configs import qwen2_config

    print("the teacher is not set up (python -m synth.llm.teacher): using the tiny random Qwen2 instead")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(qwen2_config("tiny")).save_pretrained(tmp)
    load_hf_tokenizer().save_pretrained(tmp)
    return str(tmp), "tiny random Qwen2 (fp32)"


def one_at_a_time(generator, prompts: list[list[dict]], max_new_tokens: int) -> tuple[list[str], int, float]:
    import torch

    from synth.llm.base import STOP_TOKEN_IDS
    from synth.llm.chat import render_chat

    texts, tokens = [], 0
    started = time.perf_counter()
    for messages in prompts:
        ids = generator.tokenizer(render_chat(messages), add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            out = generator.model.generate(
                **ids,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=list(STOP_TOKEN_IDS),
                pad_token_id=STOP_TOKEN_IDS[1],
            )
        new = out[0, ids["input_ids"].shape[1] :].tolist()
        stop = next((k for k, t in enumerate(new) if t in STOP_TOKEN_IDS), None)
        tokens += len(new) if stop is None else stop + 1
        texts.append(generator.tokenizer.decode(new if stop is None else new[:stop], skip_special_tokens=True))
    return texts, tokens, time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-sizes", default="8,16", help="comma-separated batch sizes for our side")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    args = parser.parse_args(argv)

    import torch

    from synth.llm.backends import TransformersGenerator
    from synth.llm.base import GenerationRequest

    torch.set_num_threads(args.threads)
    prompts = load_prompts(Path(args.corpus), args.prompts)
    with tempfile.TemporaryDirectory() as tmp:
        folder, described = model_folder(Path(tmp))
        generator = TransformersGenerator(folder, batch_size=1)
    requests = [GenerationRequest(m, max_new_tokens=args.max_new_tokens) for m in prompts]
    print(f"model: {described}; {len(prompts)} prompts, greedy, max_new_tokens {args.max_new_tokens}, ", end="")
    print(f"{args.threads} threads")
    generator.generate(requests[:1])  # warm-up

    rows = []
    peer_texts, peer_tokens, peer_s = one_at_a_time(generator, prompts, args.max_new_tokens)
    rows.append(("one at a time (model.generate, batch 1)", peer_tokens, peer_s, None))
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        generator.batch_size = batch_size
        started = time.perf_counter()
        results = generator.generate(requests)
        seconds = time.perf_counter() - started
        tokens = sum(r.completion_tokens[0] for r in results)
        same = sum(r.texts[0] == t for r, t in zip(results, peer_texts))
        rows.append((f"ours, batch {batch_size}", tokens, seconds, same))

    peer_rate = peer_tokens / peer_s
    print("| side | generated tokens | seconds | tokens/s | vs one at a time | answers equal |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, tokens, seconds, same in rows:
        rate = tokens / seconds
        equal = "-" if same is None else f"{same}/{len(prompts)}"
        print(f"| {name} | {tokens} | {seconds:.1f} | {rate:.1f} | {rate / peer_rate:.2f}x | {equal} |")


if __name__ == "__main__":
    main()
