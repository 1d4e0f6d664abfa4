"""Scoring of ``training.evaluate``'s answers: every model's metrics and the per-item audit rows.

The metrics and what each means are listed in ``training.evaluate``'s docstring; the tasks' scorers are in
``training.eval_tasks`` and ``training.ifeval``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any


def _last_user(messages: Sequence[Mapping]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def perplexities(docs: Sequence[dict], sums: Sequence[Sequence[float]]) -> dict[str, float]:
    """``perplexity_<lang>`` per language and ``perplexity_all``: exp(summed NLL / predicted tokens)."""
    by_lang: dict[str, list[float]] = {}
    for doc, (nll, tokens) in zip(docs, sums, strict=True):
        total = by_lang.setdefault(doc["lang"], [0.0, 0])
        total[0] += nll
        total[1] += tokens
    out = {f"perplexity_{lang}": math.exp(n / t) for lang, (n, t) in sorted(by_lang.items()) if t}
    tokens = sum(t for _, t in by_lang.values())
    if tokens:
        out["perplexity_all"] = math.exp(sum(n for n, _ in by_lang.values()) / tokens)
    return out


def _reward_scores(
    reward_model: str, chat: Sequence, answers: Mapping[str, list[str]], work: Path, say: Callable[[str], None]
) -> dict[str, list[float]]:
    """The reward model's score of every model's answer to every chat prompt (kept in ``work``)."""
    from synth.llm.base import local_model_id
    from training.eval_data import cached_json
    from training.eval_tasks import conversation
    from training.reward_model import score_conversations

    out = {}
    for name, texts in answers.items():
        conversations = [conversation(item.messages, text) for item, text in zip(chat, texts, strict=True)]
        key = {"reward_model": local_model_id(reward_model), "conversations": conversations}
        out[name], _ = cached_json(
            work, f"reward-{name}", key, lambda c=conversations: score_conversations(reward_model, c)
        )
    say(f"[evaluate] reward model scored {sum(len(v) for v in out.values())} answers")
    return out


def _humaneval(settings: Any, items: Sequence, answers: Mapping[str, list[str]], notes: list[str]):
    """(passed, detail) per model and item; None where the sandbox cannot run here."""
    from synth.bubblewrap import SandboxUnavailable
    from synth.sandbox import SandboxLimits
    from training.eval_tasks import run_humaneval

    if not items:
        return {}
    limits = SandboxLimits(cpu_s=settings.sandbox_cpu_s, wall_s=settings.sandbox_wall_s, memory_mb=1024)
    try:
        return {name: run_humaneval(items, texts, limits, settings.sandbox_workers) for name, texts in answers.items()}
    except SandboxUnavailable as e:
        notes.append(f"humaneval not scored: {e}")
        return None


def score_models(
    settings: Any,
    items: Mapping[str, list],
    generated: Sequence,
    answers: Mapping[str, list],
    perplexity: Mapping[str, list],
    reward_model: str | None,
    baseline: str,
    work: Path,
    say: Callable[[str], None],
) -> dict:
    """{metrics: {model: {metric: value}}, counts: {metric: items}, notes: [...], answers: [audit rows]}."""
    from training import eval_tasks as et
    from training.ifeval import check_constraints, fasttext_lid

    notes: list[str] = []
    texts = {name: [r.texts[0] for r in results] for name, results in answers.items()}
    by_task: dict[str, dict[str, list[str]]] = {}
    position = 0
    for task in ("chat", "math", "humaneval", "ifeval"):
        n = len(items[task])
        by_task[task] = {name: t[position : position + n] for name, t in texts.items()}
        position += n

    verdicts: dict[str, dict[str, list]] = {name: {} for name in answers}  # model -> task -> (score, detail)
    for name in answers:
        verdicts[name]["math"] = [et.score_math(i, a) for i, a in zip(items["math"], by_task["math"][name])]
    lid = fasttext_lid() if items["ifeval"] else None
    for name in answers:
        rows = []
        for item, answer in zip(items["ifeval"], by_task["ifeval"][name]):
            checks = check_constraints(item.extra["constraints"], answer, lid)
            names = [c for c, _ in item.extra["constraints"]]
            rows.append((all(checks), {"constraints": dict(zip(names, checks)), "followed": sum(checks)}))
        verdicts[name]["ifeval"] = rows
    humaneval = _humaneval(settings, items["humaneval"], by_task["humaneval"], notes)
    for name in answers:
        verdicts[name]["humaneval"] = (
            humaneval[name] if humaneval is not None else [(None, {})] * len(items["humaneval"])
        )

    chat = items["chat"]
    rewards: dict[str, list[float]] = {}
    if chat and reward_model and baseline in answers:
        rewards = _reward_scores(reward_model, chat, by_task["chat"], work, say)
    elif chat:
        notes.append(
            "win rate not computed: "
            + ("no --reward-model" if not reward_model else f"the baseline {baseline!r} is not among the models")
        )
    for name in answers:
        if rewards:
            wins = et.win_rate(rewards[name], rewards[baseline], by_task["chat"][name], by_task["chat"][baseline])
            verdicts[name]["chat"] = [
                (w, {"reward": s, "baseline_reward": b}) for w, s, b in zip(wins, rewards[name], rewards[baseline])
            ]
        else:
            verdicts[name]["chat"] = [(None, {}) for _ in chat]

    metrics: dict[str, dict[str, float | None]] = {}
    counts: dict[str, int] = {}
    audit: list[dict] = []
    for name, results in answers.items():
        m: dict[str, float | None] = dict(perplexities(items["perplexity"], perplexity[name]))
        if chat:
            m[f"winrate_vs_{baseline}"] = et.share([v for v, _ in verdicts[name]["chat"]])
            m["reward_mean"] = sum(rewards[name]) / len(rewards[name]) if rewards else None
        if items["math"]:
            m["math_exact_match"] = et.share([v for v, _ in verdicts[name]["math"]])
        if items["humaneval"]:
            m["humaneval_pass@1"] = et.share([v for v, _ in verdicts[name]["humaneval"]])
        if items["ifeval"]:
            m["ifeval_prompt_accuracy"] = et.share([v for v, _ in verdicts[name]["ifeval"]])
            followed = sum(d["followed"] for _, d in verdicts[name]["ifeval"])
            m["ifeval_instruction_accuracy"] = followed / sum(len(i.extra["constraints"]) for i in items["ifeval"])
        ended = [et.ended_with_im_end(r) for r in results]
        if results:
            m["im_end_share"] = et.share(ended)
        metrics[name] = m
        flat = [v for task in ("chat", "math", "humaneval", "ifeval") for v in verdicts[name][task]]
        for item, result, stop, (score, detail) in zip(generated, results, ended, flat, strict=True):
            audit.append(
                {
                    "model": name,
                    "task": item.task,
                    "item_id": item.id,
                    "prompt": _last_user(item.messages),
                    "answer": result.texts[0],
                    "finish_reason": result.finish_reasons[0],
                    "completion_tokens": result.completion_tokens[0],
                    "ended_with_im_end": stop,
                    "score": None if score is None else float(score),
                    "detail": json.dumps(_plain(detail), ensure_ascii=False),
                }
            )
        for doc, (nll, tokens) in zip(items["perplexity"], perplexity[name]):
            audit.append(
                {
                    "model": name,
                    "task": "perplexity",
                    "item_id": doc["id"],
                    "prompt": doc["text"][:300],
                    "score": math.exp(nll / tokens) if tokens else None,
                    "detail": json.dumps({"lang": doc["lang"], "nll": nll, "tokens": tokens}),
                }
            )
    for task, metric_names in (
        ("chat", [f"winrate_vs_{baseline}", "reward_mean"]),
        ("math", ["math_exact_match"]),
        ("humaneval", ["humaneval_pass@1"]),
        ("ifeval", ["ifeval_prompt_accuracy", "ifeval_instruction_accuracy"]),
    ):
        counts.update({metric: len(items[task]) for metric in metric_names})
    counts["im_end_share"] = len(generated)
    for doc in items["perplexity"]:
        counts[f"perplexity_{doc['lang']}"] = counts.get(f"perplexity_{doc['lang']}", 0) + 1
    counts["perplexity_all"] = len(items["perplexity"])
    if any(s is None for r in answers.values() for s in (et.ended_with_im_end(x) for x in r)):
        notes.append("im_end_share counts only answers whose stop token the backend reported")
    return {"metrics": metrics, "counts": counts, "notes": notes, "answers": audit}


def _plain(value: Any) -> Any:
    """JSON-friendly copy (tuples of constraint arguments become lists)."""
    return json.loads(json.dumps(value, default=str))
