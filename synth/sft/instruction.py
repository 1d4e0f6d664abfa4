"""Instruction synthesis (SFT).

For a seeded, language-balanced sample of seed prompts (``synth.seeds``), the teacher writes ONE
new self-contained instruction on the seed's topic in the seed's language, then (a second batched round) answers
it. Kept when both pass the filters (non-empty, length bounds, not a copy of the seed, no ChatML control token,
not cut off at ``max_new_tokens``).

The stage counts ``items``, ``samples`` (one candidate per item), ``accepted`` and ``rejected`` {reason: n};
``accepted + sum(rejected) == samples``. Rejected candidates go to ``excluded/`` with their reason.

    python -m synth.sft --methods instruction --output data/synth/sft --instruction-num-seeds 8
    python -m synth.sft --methods instruction --output out/sft --seeds my_seeds.jsonl --backend openai \\
        --model Qwen/Qwen2-7B-Instruct --base-url http://127.0.0.1:8000/v1 --instruction-num-seeds 5000 \\
        --instruction-chunk-size 256
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from pipelines.schema import SFT_SCHEMA
from synth.llm.base import Generator
from synth.llm.chat import validate_chat
from synth.records import messages, provenance, record_id, rejected, run_chunked_stage
from synth.seeds import language_name, load_seeds, sample_seeds, seed_messages, seed_prompt
from synth.settings import InstructionSettings
from synth.sft.common import (
    ask,
    check_output,
    chunk_outcome,
    counts_by_lang,
    digest,
    is_copy,
    method_stage_config,
    screen_inputs,
    strip_wrapping,
)

# --------------------------------------------------------------------------------------------------- instruction

INSTRUCTION_TEMPLATE_VERSION = "sft-instruction-v1"
INSTRUCTION_PROMPT = """Here is a message that a user once sent to a chat assistant \
(language: {language}; topic: {category}):

\"\"\"
{seed}
\"\"\"

Write ONE new request that a user could send to an AI assistant about the same topic. It must be different from \
the message above, self-contained (understandable without it) and written in {language}. Reply with the new request \
only: no answer, no title, no quotation marks."""
INSTRUCTION_LABELS = ("new request", "request", "instruction", "question", "prompt")


class InstructionConfig(InstructionSettings):
    """The settings of ``synth.settings.InstructionSettings`` plus the method's inputs (not settings)."""

    seeds_path: str | None = None  # user JSONL of seeds (None: the chatterbot corpus)
    template_version: str = INSTRUCTION_TEMPLATE_VERSION


def instruction_prompt(seed: Mapping) -> str:
    language = language_name(seed["lang"]) if seed.get("lang") else "the same language as this message"
    return INSTRUCTION_PROMPT.format(
        language=language, category=seed.get("category") or "general", seed=seed_prompt(seed)
    )


def check_instruction(text: str, finish_reason: str, seed_text: str, cfg: InstructionConfig) -> str | None:
    problem = check_output(
        text,
        finish_reason,
        keep_truncated=cfg.keep_truncated,
        min_chars=cfg.min_instruction_chars,
        max_chars=cfg.max_instruction_chars,
    )
    if problem is None and is_copy(text, seed_text):
        problem = "copies_seed"
    return None if problem is None else f"instruction_{problem}"


def _instruction_chunk(generator: Generator, cfg: InstructionConfig) -> Callable:
    method = "instruction"

    def process(chunk: list[Mapping]) -> tuple[list[dict], list[dict], dict]:
        seeds, rejects = screen_inputs(method, chunk, instruction_prompt)
        results = generator.generate(
            [ask(instruction_prompt(s), cfg.max_new_tokens_instruction, cfg, cfg.template_version) for s in seeds]
        )
        rows, pending = [], []
        for seed, result in zip(seeds, results):
            text = strip_wrapping(result.texts[0], INSTRUCTION_LABELS)
            problem = check_instruction(text, result.finish_reasons[0], seed_prompt(seed), cfg)
            if problem:
                rejects.append(rejected(method, seed["id"], problem, {"seed": seed_prompt(seed)}, result.texts[0]))
            else:
                pending.append((seed, text, result))
        answers = generator.generate(
            [ask(text, cfg.max_new_tokens_answer, cfg, cfg.template_version) for _, text, _ in pending]
        )
        for (seed, instruction, first), answer in zip(pending, answers):
            reply = answer.texts[0].strip()
            problem = check_output(
                reply,
                answer.finish_reasons[0],
                keep_truncated=cfg.keep_truncated,
                min_chars=cfg.min_answer_chars,
                max_chars=cfg.max_answer_chars,
            )
            if problem is None and is_copy(reply, instruction):
                # An echo teaches nothing; a small teacher does it in languages it barely knows.
                problem = "copies_instruction"
            conversation = messages(("user", instruction), ("assistant", reply))
            if problem is None and validate_chat(conversation):
                problem = "invalid_chat"
            if problem:
                reason = problem if problem == "invalid_chat" else f"answer_{problem}"
                rejects.append(rejected(method, seed["id"], reason, {"instruction": instruction}, answer.texts[0]))
                continue
            meta = {
                "seed": seed_prompt(seed),
                "seed_source": seed.get("source"),
                "category": seed.get("category"),
                "instruction_model": first.model_id,
                "instruction_sampling": first.sampling,
                "finish_reasons": [first.finish_reasons[0], answer.finish_reasons[0]],
            }
            rows.append(
                {
                    "id": record_id(method, seed["id"], instruction, reply),
                    "messages": conversation,
                    **provenance(answer, method=method, lang=seed.get("lang"), source_id=seed["id"], meta=meta),
                }
            )
        return chunk_outcome(len(chunk), len(chunk), rows, rejects)

    return process


def run_instruction(
    generator: Generator,
    out_dir: str,
    config: InstructionConfig | None = None,
    seeds: Sequence[Mapping] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Instruction synthesis into the stage folder ``out_dir``; returns the stage summary.
    ``seeds``: seed records (default: ``load_seeds(config.seeds_path)``)."""
    cfg = config or InstructionConfig()
    pool = list(seeds) if seeds is not None else load_seeds(cfg.seeds_path)
    items = sample_seeds(pool, cfg.num_seeds, cfg.seed, cfg.languages)
    stage_config = method_stage_config("instruction", cfg, generator, seeds=digest([seed_messages(s) for s in items]))
    extra = {"method": "instruction", "model_id": generator.model_id, "seed_languages": counts_by_lang(items)}
    return run_chunked_stage(
        out_dir, stage_config, items, _instruction_chunk(generator, cfg), SFT_SCHEMA,
        chunk_size=cfg.chunk_size, extra=extra, log=log,
    )  # fmt: skip
