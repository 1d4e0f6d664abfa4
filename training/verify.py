"""Check that a saved checkpoint is usable: it loads with transformers and generates.

    python -m training.verify data/models/base/final [--prompt "The package manager"]

Prints one JSON object: the architecture, parameter count, RoPE base, context length, the
prompt and the generated continuation. Run as its own process (the Dagster asset checks do),
so it also proves the folder loads in a fresh interpreter, the way vLLM or another user
would load it.
"""

from __future__ import annotations

import argparse
import json
import sys


def verify_checkpoint(path: str, prompt: str = "The package manager", max_new_tokens: int = 12) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.model_configs import rope_theta_of

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    model.eval()
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    new_tokens = out[0, inputs["input_ids"].shape[1] :]
    return {
        "path": path,
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "rope_theta": rope_theta_of(model.config),
        "max_position_embeddings": model.config.max_position_embeddings,
        "vocab_size": model.config.vocab_size,
        "prompt": prompt,
        "generated_tokens": int(new_tokens.numel()),
        "generated_text": tokenizer.decode(new_tokens, skip_special_tokens=False),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a save_pretrained folder (model + tokenizer)")
    parser.add_argument("--prompt", default="The package manager")
    parser.add_argument("--max-new-tokens", type=int, default=12)
    args = parser.parse_args(argv)
    try:
        report = verify_checkpoint(args.path, args.prompt, args.max_new_tokens)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {args.path} does not load: {e}")
    print(json.dumps(report, ensure_ascii=False))


if __name__ == "__main__":
    main()
