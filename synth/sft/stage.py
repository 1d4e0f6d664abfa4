"""The SFT data stage (asset ``sft_data``): the chosen methods, each into its own stage folder ``<output>/<method>``,
with the settings of ``synth.settings.SftDataSettings`` (one ``<method>_<field>`` setting per method setting).

    python -m synth.sft --output data/synthetic/sft --docs data/curated/dedup
    python -m synth.sft --output out/sft --methods math_rejection --math-rejection-num-problems 16
    python -m synth.sft --output out/sft --methods instruction,constitutional --seeds my_seeds.jsonl \\
        --backend openai --model Qwen/Qwen2-7B-Instruct --base-url http://127.0.0.1:8000/v1 \\
        --instruction-num-seeds 5000 --instruction-chunk-size 256

Decontamination and dedup of the result are ``python -m synth.decontam`` (the asset runs both).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

from pipelines.settings import ArgumentParser, parse_settings, settings_parser
from synth.llm.base import GenerationError, Generator, TeacherUnavailable
from synth.settings import SftDataSettings
from synth.sft.code_execution import CodeConfig, run_code
from synth.sft.common import add_generator_args, make_cli_generator
from synth.sft.constitutional import ConstitutionalConfig, run_constitutional
from synth.sft.instruction import InstructionConfig, run_instruction
from synth.sft.math_rejection import MathConfig, run_math
from synth.sft.repurpose import RepurposeConfig, run_repurpose


def run_sft(
    generator: Generator,
    out_root: str,
    settings: SftDataSettings,
    docs_dir: str | None = None,
    seeds_path: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, dict]:
    """Run ``settings.methods`` in order, each into ``out_root/<method>``; returns each method's stage summary.

    ``docs_dir`` (curated documents) feeds ``repurpose`` and the document tasks of ``code_execution``;
    ``seeds_path`` (a user JSONL of seed prompts, default the chatterbot corpus) feeds ``instruction`` and, when
    instruction does not run or keeps nothing, ``constitutional``, which otherwise revises instruction's answers."""
    log = log or (lambda message: None)
    if "repurpose" in settings.methods and not docs_dir:
        raise ValueError("the repurpose method needs curated documents (docs_dir / --docs)")
    summaries: dict[str, dict] = {}
    for method in settings.chosen():
        out = f"{out_root.rstrip('/')}/{method}"
        values = settings.method_settings(method).model_dump()
        log(f"SFT method {method} -> {out}")
        if method == "instruction":
            summaries[method] = run_instruction(
                generator, out, InstructionConfig(**values, seeds_path=seeds_path), log=log
            )
        elif method == "math_rejection":
            summaries[method] = run_math(generator, out, MathConfig(**values), log=log)
        elif method == "code_execution":
            code_docs = docs_dir if values["max_doc_tasks"] else None
            summaries[method] = run_code(generator, out, CodeConfig(**values), code_docs_dir=code_docs, log=log)
        elif method == "repurpose":
            summaries[method] = run_repurpose(generator, out, RepurposeConfig(**values, input_dir=docs_dir), log=log)
        elif method == "constitutional":
            answered = summaries.get("instruction", {}).get("accepted", 0) > 0
            if answered:  # an unchanged revision of an instruction row is that row again
                values["keep_unchanged"] = False
            cfg = ConstitutionalConfig(
                **values, input_dir=summaries["instruction"]["output"] if answered else "", seeds_path=seeds_path
            )
            summaries[method] = run_constitutional(generator, out, cfg, log=log)
    return summaries


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m synth.sft", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="folder of the method stage folders (<output>/<method>)")
    parser.add_argument(
        "--docs", default=None, help="curated stage folder (repurpose, code_execution's document tasks)"
    )
    parser.add_argument("--seeds", default=None, help="user JSONL of seed prompts (default: the chatterbot corpus)")
    add_generator_args(parser)
    args, settings = parse_settings(settings_parser(SftDataSettings, parser=parser), argv)
    try:
        generator = make_cli_generator(args)
        try:
            summaries = run_sft(
                generator, args.output, settings, args.docs, args.seeds, log=lambda m: print(m, file=sys.stderr)
            )
        finally:
            generator.close()
    except (GenerationError, TeacherUnavailable, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summaries, indent=1, ensure_ascii=False, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
