"""The command line of the SFT methods. ``instruction``, ``repurpose`` and ``constitutional`` take ``--output`` and
``--set KEY=VALUE`` for any config field; ``math`` and ``code`` (answers the pipeline checks) take ``--out`` and their
own flags.

    python -m synth.sft instruction --output data/synth/sft_instruction --num 8
    python -m synth.sft instruction --output out/instr --seeds my_seeds.jsonl --backend openai \\
        --model Qwen/Qwen2-7B-Instruct --base-url http://127.0.0.1:8000/v1 --num 5000 --set chunk_size=256
    python -m synth.sft repurpose --input data/curated/dedup --output data/synth/sft_repurpose --num 8
    python -m synth.sft constitutional --input data/synth/sft_instruction --output data/synth/sft_constitutional
    python -m synth.sft math --out data/synth/math --backend transformers --model DIR --num 64
    python -m synth.sft code --out data/synth/code --backend openai --model Qwen/Qwen2-72B-Instruct \\
        --base-url http://127.0.0.1:8000/v1 --code-docs data/curated/quality --cache-dir data/synth/cache
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from synth.llm.base import GenerationError, TeacherUnavailable
from synth.llm.generate import make_generator
from synth.sft.code_execution import CodeConfig, run_code
from synth.sft.common import add_generator_args, make_cli_generator, parse_settings
from synth.sft.constitutional import ConstitutionalConfig, run_constitutional
from synth.sft.instruction import InstructionConfig, run_instruction
from synth.sft.math_rejection import MathConfig, run_math
from synth.sft.repurpose import RepurposeConfig, run_repurpose

METHODS: dict[str, tuple[type, Callable]] = {
    "instruction": (InstructionConfig, run_instruction),
    "repurpose": (RepurposeConfig, run_repurpose),
    "constitutional": (ConstitutionalConfig, run_constitutional),
}


def main_sft(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m synth.sft", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("method", choices=sorted(METHODS), help="math and code: see python -m synth.sft math --help")
    parser.add_argument("--output", required=True, help="stage folder to write")
    parser.add_argument("--input", default=None, help="repurpose: DOCUMENT stage; constitutional: SFT stage")
    parser.add_argument("--seeds", default=None, help="user JSONL of seed prompts (instruction, constitutional)")
    parser.add_argument("--num", type=int, default=None, help="how many seeds / documents / items to sample")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config field")
    add_generator_args(parser)
    args = parser.parse_args(argv)
    cls, run = METHODS[args.method]
    settings = parse_settings(cls, args.set)
    if args.num is not None:
        settings[{"instruction": "num_seeds", "repurpose": "num_documents"}.get(args.method, "num_items")] = args.num
    if args.input is not None:
        settings["input_dir"] = args.input
    if args.seeds is not None:
        settings["seeds_path"] = args.seeds
    try:
        cfg = cls(**settings)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    generator = make_cli_generator(args)
    try:
        summary = run(generator, args.output, cfg, log=lambda m: print(m, file=sys.stderr))
    finally:
        generator.close()
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


# ------------------------------------------------------------------------------------------------------- CLI


def main_verified(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m synth.sft", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("method", choices=("math", "code"))
    parser.add_argument("--out", required=True, help="stage folder to write")
    parser.add_argument("--backend", default="transformers", choices=("transformers", "openai", "vllm"))
    parser.add_argument("--model", default=None, help="checkpoint folder, cached HF id or server model name")
    parser.add_argument("--base-url", default=None, help="openai backend: server URL ending in /v1")
    parser.add_argument("--cache-dir", default=None, help="generation cache (resume without asking twice)")
    parser.add_argument("--num", type=int, default=None, help="math: problems (default 64); code: built-in tasks")
    parser.add_argument("--samples", type=int, default=None, help="samples per problem / task")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="per sample (code: for the tests too)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--code-docs", default=None, help="code: curated stage folder to derive more tasks from")
    parser.add_argument("--max-doc-tasks", type=int, default=CodeConfig.max_doc_tasks)
    args = parser.parse_args(argv)

    try:
        generator = make_generator(args.backend, args.model, cache_dir=args.cache_dir, base_url=args.base_url)
        common: dict[str, Any] = {"seed": args.seed}
        if args.max_new_tokens:
            common["max_new_tokens"] = args.max_new_tokens
            if args.method == "code":
                common["tests_max_new_tokens"] = args.max_new_tokens
        if args.method == "math":
            if args.num is not None:
                common["num_problems"] = args.num
            if args.samples is not None:
                common["samples_per_problem"] = args.samples
            summary = run_math(generator, args.out, MathConfig(**common), log=print)
        else:
            common.update(num_tasks=args.num, max_doc_tasks=args.max_doc_tasks)
            if args.samples is not None:
                common["samples_per_task"] = args.samples
            summary = run_code(generator, args.out, CodeConfig(**common), args.code_docs, log=print)
    except (GenerationError, TeacherUnavailable, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=1, sort_keys=True, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``math`` and ``code`` go to the checked-answer methods' parser, the other methods to the SFT parser."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] in ("math", "code"):
        return main_verified(args)
    return main_sft(args)


if __name__ == "__main__":
    raise SystemExit(main())
