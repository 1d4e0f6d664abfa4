"""Preference pairs for offline DPO (``PREFERENCE_SCHEMA``): sample several responses, let the teacher judge them.

For each prompt (a seeded sample of seed prompts, or of the conversations of an SFT stage folder up to their last
user turn) the teacher samples ``num_responses`` responses (temperature 0.8). The teacher then judges each distinct
response with a rubric prompt answered by a single digit 1-5, scored with ``GenerationRequest(choices=("1", ...,
"5"))``: the expected score ``sum(p_i * i)`` over the renormalised digit probabilities, no free-text parsing. The
highest-scoring response is ``chosen``, the lowest ``rejected``.

Dropped prompts (``excluded/``, with the reason): ``identical_responses`` (every usable response is the same text),
``tie`` (score gap under ``tie_margin``), ``too_few_responses`` (fewer than two usable responses: empty, cut off at
``max_new_tokens`` or holding a control token), ``judge_off_format`` (fewer than two responses the judge scored
with at least ``min_choice_mass`` of its probability on the digits), ``input_control_token``. Counters: ``items``
and ``samples`` are prompts (``samples == accepted + sum(rejected)``); ``responses``, ``judged`` and
``responses_dropped`` {reason: n} count single responses. Row ``meta``: every response's score (None: not judged),
the judge's digit probabilities and mass, the chosen/rejected indexes and the judge's model and template.

    python -m synth.preference --output data/synth/preference --num-prompts 8
    python -m synth.preference --input data/synth/sft/instruction --output data/synth/preference --tie-margin 0.5
    python -m synth.preference --output out/pref --backend openai --model Qwen/Qwen2-7B-Instruct \\
        --base-url http://127.0.0.1:8000/v1 --num-prompts 20000 --chunk-size 256
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pipelines.schema import PREFERENCE_SCHEMA
from pipelines.settings import ArgumentParser, parse_settings, settings_parser
from synth.llm.base import GenerationRequest, Generator
from synth.records import chunk_counters, provenance, record_id, rejected, run_chunked_stage
from synth.seeds import language_name, load_seeds, sample_seeds, seed_messages
from synth.settings import PreferenceSettings
from synth.sft.common import (
    add_generator_args,
    ask_messages,
    check_output,
    counts_by_lang,
    digest,
    make_cli_generator,
    method_stage_config,
    sample_sft_rows,
    screen_inputs,
    stage_fingerprint,
    transcript,
)

TEMPLATE_VERSION = "preference-v1"
JUDGE_TEMPLATE_VERSION = "judge-rubric-v1"
CHOICES = ("1", "2", "3", "4", "5")
RUBRIC_PROMPT = """You are grading the reply of an AI assistant to a user.

<conversation>
{conversation}
</conversation>

<reply>
{reply}
</reply>

Rate the reply on this scale:
1 = wrong, harmful, off-topic, nonsense, or not in {language}
2 = mostly unhelpful or with serious mistakes
3 = partly helpful, with mistakes or gaps
4 = helpful and correct, with minor issues
5 = excellent: correct, complete, clear and in {language}

Answer with a single digit from 1 to 5 and nothing else."""


class PreferenceConfig(PreferenceSettings):
    """The settings of ``synth.settings.PreferenceSettings`` plus the stage's inputs (not settings)."""

    input_dir: str = ""  # an SFT stage folder; empty: seed prompts
    seeds_path: str | None = None  # with no input_dir: a user JSONL of seeds (None: the chatterbot corpus)
    template_version: str = TEMPLATE_VERSION
    judge_template_version: str = JUDGE_TEMPLATE_VERSION


def judge_request(prompt: Sequence[Mapping[str, str]], reply: str, lang: str | None, cfg: PreferenceConfig):
    """The scoring request that rates ``reply`` to the conversation ``prompt`` from 1 to 5."""
    content = RUBRIC_PROMPT.format(conversation=transcript(prompt), reply=reply, language=language_name(lang))
    return GenerationRequest(
        [{"role": "user", "content": content}],
        max_new_tokens=1,
        template_version=cfg.judge_template_version,
        choices=CHOICES,
    )


def expected_score(probs: Sequence[float]) -> float:
    """sum(p_i * i) over the rating digits 1..len(probs)."""
    return float(sum(p * (i + 1) for i, p in enumerate(probs)))


def pick_pair(scores: Sequence[float | None], texts: Sequence[str], tie_margin: float):
    """(reason or None, chosen index, rejected index) from the responses' scores (None: not judged)."""
    judged = [i for i, s in enumerate(scores) if s is not None]
    distinct = {texts[i] for i in judged}
    if len(judged) < 2:
        return "judge_off_format", None, None
    if len(distinct) < 2:
        return "identical_responses", None, None
    chosen = max(judged, key=lambda i: (scores[i], -i))
    rejected_ = min((i for i in judged if texts[i] != texts[chosen]), key=lambda i: (scores[i], i))
    if scores[chosen] - scores[rejected_] < tie_margin:
        return "tie", chosen, rejected_
    return None, chosen, rejected_


def _chunk(generator: Generator, cfg: PreferenceConfig) -> Callable:
    method = "preference"

    def process(chunk: list[Mapping]) -> tuple[list[dict], list[dict], dict]:
        items, rejects = screen_inputs(method, chunk, lambda item: transcript(item["prompt"]))
        requests = [
            ask_messages(item["prompt"], cfg.max_new_tokens, cfg, cfg.template_version, n=cfg.num_responses)
            for item in items
        ]
        sampled = generator.generate(requests)
        dropped: dict[str, int] = {}
        usable: list[list[int]] = []
        for result in sampled:
            keep = []
            for j, (text, finish) in enumerate(zip(result.texts, result.finish_reasons)):
                problem = check_output(text, finish, keep_truncated=cfg.keep_truncated)
                if problem:
                    dropped[problem] = dropped.get(problem, 0) + 1
                else:
                    keep.append(j)
            usable.append(keep)
        # One judge request per distinct usable text of a prompt.
        keys: dict[tuple[int, str], int] = {}
        judge_requests = []
        for k, (item, result, keep) in enumerate(zip(items, sampled, usable)):
            if len(keep) < 2 or len({result.texts[j].strip() for j in keep}) < 2:
                continue  # decided without the judge
            for j in keep:
                text = result.texts[j].strip()
                if (k, text) not in keys:
                    keys[(k, text)] = len(judge_requests)
                    judge_requests.append(judge_request(item["prompt"], text, item.get("lang"), cfg))
        verdicts = generator.generate(judge_requests)
        rows = []
        for k, (item, result, keep) in enumerate(zip(items, sampled, usable)):
            texts = [t.strip() for t in result.texts]
            if len(keep) < 2:
                rejects.append(rejected(method, item["id"], "too_few_responses", {"usable": len(keep)}, texts[0]))
                continue
            if len({texts[j] for j in keep}) < 2:
                rejects.append(rejected(method, item["id"], "identical_responses", {"usable": len(keep)}, texts[0]))
                continue
            scores: list[float | None] = [None] * len(texts)
            probs: list[list[float] | None] = [None] * len(texts)
            masses: list[float | None] = [None] * len(texts)
            for j in keep:
                verdict = verdicts[keys[(k, texts[j])]]
                masses[j] = verdict.choice_mass
                if verdict.choice_probs is None or (verdict.choice_mass or 0.0) < cfg.min_choice_mass:
                    dropped["judge_off_format"] = dropped.get("judge_off_format", 0) + 1
                    continue
                probs[j] = [round(p, 6) for p in verdict.choice_probs]
                scores[j] = expected_score(verdict.choice_probs)
            reason, chosen, worst = pick_pair(scores, texts, cfg.tie_margin)
            detail = {"scores": scores}
            if reason:
                rejects.append(rejected(method, item["id"], reason, detail, texts[chosen or 0]))
                continue
            meta = {
                "scores": [None if s is None else round(s, 4) for s in scores],
                "judge_probs": probs,
                "judge_mass": [None if m is None else round(m, 6) for m in masses],
                "finish_reasons": result.finish_reasons,
                "chosen_index": chosen,
                "rejected_index": worst,
                "judge_model": verdicts[0].model_id if verdicts else None,
                "judge_template_version": cfg.judge_template_version,
                "prompt_source": item.get("source"),
            }
            rows.append(
                {
                    "id": record_id(method, item["id"], texts[chosen], texts[worst]),
                    "prompt": [dict(m) for m in item["prompt"]],
                    "chosen": [{"role": "assistant", "content": texts[chosen]}],
                    "rejected": [{"role": "assistant", "content": texts[worst]}],
                    "chosen_score": scores[chosen],
                    "rejected_score": scores[worst],
                    **provenance(result, method=method, lang=item.get("lang"), source_id=item["id"], meta=meta),
                }
            )
        counters = chunk_counters(len(chunk), len(chunk), len(rows), rejects)
        counters.update(
            responses=sum(len(r.texts) for r in sampled),
            judged=len(judge_requests),
            responses_dropped=dropped,
            accepted_by_lang=counts_by_lang(rows),
        )
        return rows, rejects, counters

    return process


def run_preference(
    generator: Generator,
    out_dir: str,
    config: PreferenceConfig | None = None,
    seeds: Sequence[Mapping] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Preference pairs into the stage folder ``out_dir`` from ``config.input_dir`` (an SFT stage) or from seed
    prompts (``seeds``, else ``load_seeds(config.seeds_path)``); returns the stage summary."""
    cfg = config or PreferenceConfig()
    items: list[dict] = []
    extra: dict[str, Any] = {"method": "preference", "model_id": generator.model_id}
    if cfg.input_dir:
        picked, scan = sample_sft_rows(cfg.input_dir, cfg.num_prompts, cfg.seed, cfg.languages)
        extra.update(input=cfg.input_dir, **scan)
        inputs = {"input": stage_fingerprint(cfg.input_dir)}
        for row in picked:
            msgs = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
            items.append({"id": row["id"], "lang": row.get("lang"), "prompt": msgs[:-1], "source": row.get("method")})
    else:
        pool = list(seeds) if seeds is not None else load_seeds(cfg.seeds_path)
        for s in sample_seeds(pool, cfg.num_prompts, cfg.seed, cfg.languages):
            items.append({"id": s["id"], "lang": s.get("lang"), "prompt": seed_messages(s), "source": s.get("source")})
        inputs = {"seeds": digest([(i["id"], i["prompt"]) for i in items])}
    inputs["items"] = digest([i["id"] for i in items])
    return run_chunked_stage(
        out_dir, method_stage_config("preference", cfg, generator, **inputs), items, _chunk(generator, cfg),
        PREFERENCE_SCHEMA, chunk_size=cfg.chunk_size, extra=extra, log=log,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """``python -m synth.preference``: the run options, then the settings of ``PreferenceSettings``."""
    parser = ArgumentParser(prog="python -m synth.preference", description=__doc__)
    parser.add_argument("--output", required=True, help="stage folder to write")
    parser.add_argument("--input", default="", help="SFT stage folder to take prompts from (default: seed prompts)")
    parser.add_argument("--seeds", default=None, help="user JSONL of seed prompts (default: the chatterbot corpus)")
    add_generator_args(parser)
    args, settings = parse_settings(settings_parser(PreferenceSettings, parser=parser), argv)
    cfg = PreferenceConfig(**settings.model_dump(), input_dir=args.input, seeds_path=args.seeds)
    generator = make_cli_generator(args)
    try:
        summary = run_preference(generator, args.output, cfg, log=lambda m: print(m, file=sys.stderr))
    finally:
        generator.close()
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
