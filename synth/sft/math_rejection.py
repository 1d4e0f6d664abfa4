"""Math by rejection sampling.

The pipeline writes word problems itself and computes their reference answers (seven families:
shopping change, stock with several steps, discounts, percentages, unit rates, linear equations, averages; numbers
from a seeded RNG, templates in English, Chinese, German, French and Spanish). The teacher answers each one
``samples_per_problem`` times at temperature 0.7, asked to reason step by step and end with ``Answer: <number>``.
The final answer is read from the last ``Answer:`` line, else the last ``\\boxed{}``, else the last number
(thousands commas, decimal commas, fractions ``3/4`` and ``\\frac{3}{4}`` understood); a sample is kept when it
equals the reference (exactly for integers, relative tolerance 1e-6 otherwise), at most ``max_kept_per_problem``
distinct ones per problem. Rejected: ``truncated`` (hit max_new_tokens), ``no_final_answer``, ``wrong_answer``,
``duplicate`` (same text as a kept one), ``over_limit`` (right, but the problem has its kept samples).

Writes SFT_SCHEMA shards through ``synth.records.run_chunked_stage`` (rejected samples to ``excluded/``).

    python -m synth.sft --methods math_rejection --output data/synth/sft --model DIR --math-rejection-num-problems 64
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any

from pipelines.schema import SFT_SCHEMA
from synth.llm.base import GenerationRequest, GenerationResult, Generator
from synth.llm.chat import validate_chat
from synth.records import chunk_counters, messages, provenance, record_id, rejected, run_chunked_stage
from synth.settings import MathSettings
from synth.sft.common import request_seed, text_key

METHOD_MATH = "math_rejection"
MATH_TEMPLATE_VERSION = "math-rejection-v1"
MATH_LANGUAGES = ("en", "zh", "de", "fr", "es")
REL_TOLERANCE = 1e-6


# ---------------------------------------------------------------------------------------------- math: problems

ANSWER_INSTRUCTION = {
    "en": 'Solve the problem step by step. End with a final line of the form "Answer: <number>".',
    "zh": "请一步一步地解答这道题，最后单独写一行，格式为 “Answer: <数字>”。",
    "de": "Löse die Aufgabe Schritt für Schritt. Schreibe am Ende eine letzte Zeile der Form „Answer: <Zahl>“.",
    "fr": "Résous le problème étape par étape. Termine par une dernière ligne de la forme « Answer: <nombre> ».",
    "es": 'Resuelve el problema paso a paso. Termina con una última línea de la forma "Answer: <número>".',
}

MATH_TEMPLATES: dict[str, dict[str, str]] = {
    "change": {
        "en": "Mia buys {a} notebooks at {p} dollars each and {b} pens at {q} dollars each. She pays with a "
        "{bill}-dollar bill. How much change does she get, in dollars?",
        "zh": "小明买了{a}本笔记本，每本{p}元，又买了{b}支笔，每支{q}元。他付了{bill}元，应该找回多少元？",
        "de": "Mia kauft {a} Hefte zu je {p} Euro und {b} Stifte zu je {q} Euro. Sie bezahlt mit einem "
        "{bill}-Euro-Schein. Wie viel Euro Wechselgeld bekommt sie?",
        "fr": "Léa achète {a} cahiers à {p} euros chacun et {b} stylos à {q} euros chacun. Elle paie avec un billet "
        "de {bill} euros. Combien d'euros lui rend-on ?",
        "es": "Lucía compra {a} cuadernos a {p} euros cada uno y {b} bolígrafos a {q} euros cada uno. Paga con un "
        "billete de {bill} euros. ¿Cuántos euros recibe de cambio?",
    },
    "stock": {
        "en": "A bakery has {s} rolls in the morning. It sells {x} of them before noon, then receives {k} trays "
        "with {m} rolls each. How many rolls does it have now?",
        "zh": "一家面包店早上有{s}个面包。中午前卖出了{x}个，随后又送来{k}盘，每盘{m}个。现在面包店有多少个面包？",
        "de": "Eine Bäckerei hat morgens {s} Brötchen. Bis Mittag verkauft sie {x} davon, dann werden {k} Bleche "
        "mit je {m} Brötchen geliefert. Wie viele Brötchen hat sie jetzt?",
        "fr": "Une boulangerie a {s} petits pains le matin. Elle en vend {x} avant midi, puis reçoit {k} plateaux "
        "de {m} petits pains chacun. Combien de petits pains a-t-elle maintenant ?",
        "es": "Una panadería tiene {s} panecillos por la mañana. Vende {x} antes del mediodía y luego recibe {k} "
        "bandejas con {m} panecillos cada una. ¿Cuántos panecillos tiene ahora?",
    },
    "discount": {
        "en": "A jacket costs {p} dollars. The shop gives a discount of {d}%. What is the price after the "
        "discount, in dollars?",
        "zh": "一件外套原价{p}元，商店给予{d}%的折扣（即减价{d}%）。打折后的价格是多少元？",
        "de": "Eine Jacke kostet {p} Euro. Der Laden gewährt {d} % Rabatt. Wie viel Euro kostet die Jacke nach "
        "dem Rabatt?",
        "fr": "Une veste coûte {p} euros. Le magasin accorde une remise de {d} %. Quel est le prix après la "
        "remise, en euros ?",
        "es": "Una chaqueta cuesta {p} euros. La tienda hace un descuento del {d} %. ¿Cuál es el precio después "
        "del descuento, en euros?",
    },
    "percent_of": {
        "en": "A school has {n} students. {r}% of them walk to school. How many students walk to school?",
        "zh": "一所学校有{n}名学生，其中{r}%的学生步行上学。步行上学的学生有多少名？",
        "de": "Eine Schule hat {n} Schülerinnen und Schüler. {r} % von ihnen gehen zu Fuß zur Schule. Wie viele "
        "gehen zu Fuß zur Schule?",
        "fr": "Une école compte {n} élèves. {r} % d'entre eux vont à l'école à pied. Combien d'élèves vont à "
        "l'école à pied ?",
        "es": "Una escuela tiene {n} alumnos. El {r} % de ellos va a la escuela a pie. ¿Cuántos alumnos van a pie?",
    },
    "unit_rate": {
        "en": "{n} kilograms of apples cost {c} dollars. At the same price per kilogram, how much do {m} "
        "kilograms cost, in dollars?",
        "zh": "{n}千克苹果售价{c}元。按同样的单价，{m}千克苹果要多少元？",
        "de": "{n} Kilogramm Äpfel kosten {c} Euro. Wie viel Euro kosten {m} Kilogramm zum gleichen Kilopreis?",
        "fr": "{n} kilogrammes de pommes coûtent {c} euros. Au même prix au kilogramme, combien coûtent {m} "
        "kilogrammes, en euros ?",
        "es": "{n} kilogramos de manzanas cuestan {c} euros. Al mismo precio por kilogramo, ¿cuántos euros "
        "cuestan {m} kilogramos?",
    },
    "equation": {
        "en": "Solve for x: {eq}. What is x?",
        "zh": "解方程：{eq}。x 等于多少？",
        "de": "Löse die Gleichung {eq} nach x auf. Welchen Wert hat x?",
        "fr": "Résous l'équation {eq}. Quelle est la valeur de x ?",
        "es": "Resuelve la ecuación {eq}. ¿Cuál es el valor de x?",
    },
    "average": {
        "en": "Sam scored {s1}, {s2}, {s3} and {s4} points in four tests. What is his average score?",
        "zh": "小华四次测验的得分分别是{s1}分、{s2}分、{s3}分和{s4}分。他的平均分是多少？",
        "de": "Sam hat in vier Tests {s1}, {s2}, {s3} und {s4} Punkte erreicht. Wie hoch ist sein Punktedurchschnitt?",
        "fr": "Sam a obtenu {s1}, {s2}, {s3} et {s4} points à quatre contrôles. Quelle est sa moyenne ?",
        "es": "Sam obtuvo {s1}, {s2}, {s3} y {s4} puntos en cuatro exámenes. ¿Cuál es su puntuación media?",
    },
}
MATH_FAMILIES = tuple(MATH_TEMPLATES)  # 7 families, 5 languages: coprime, so 35 problems cover every pair


def _values(family: str, rng: random.Random) -> tuple[dict[str, Any], Fraction]:
    """Random numbers of one problem of ``family`` and its answer (exact)."""
    if family == "change":
        a, p, b, q = rng.randint(2, 6), rng.randint(2, 9), rng.randint(2, 5), rng.randint(1, 4)
        total = a * p + b * q
        bill = next(note for note in (20, 50, 100) if note > total)
        return {"a": a, "p": p, "b": b, "q": q, "bill": bill}, Fraction(bill - total)
    if family == "stock":
        s = rng.randint(40, 200)
        x, k, m = rng.randint(5, s - 5), rng.randint(2, 8), rng.randint(6, 24)
        return {"s": s, "x": x, "k": k, "m": m}, Fraction(s - x + k * m)
    if family == "discount":
        p, d = rng.randint(20, 400), rng.choice((10, 15, 20, 25, 30, 40, 50))
        return {"p": p, "d": d}, Fraction(p * (100 - d), 100)
    if family == "percent_of":
        n, r = 20 * rng.randint(5, 60), 5 * rng.randint(1, 19)
        return {"n": n, "r": r}, Fraction(n * r, 100)
    if family == "unit_rate":
        n, u, m = rng.randint(2, 9), Fraction(rng.randint(4, 30), 2), rng.randint(2, 15)
        return {"n": n, "c": n * u, "m": m}, m * u
    if family == "equation":
        x = rng.choice([v for v in range(-12, 26) if v])
        a, b = rng.randint(2, 9), rng.choice([v for v in range(-40, 41) if v])
        c = a * x + b
        return {"a": a, "b": b, "c": c, "eq": f"{a}x {'+' if b > 0 else '-'} {abs(b)} = {c}"}, Fraction(x)
    if family == "average":
        scores = [rng.randint(50, 100) for _ in range(4)]
        return {f"s{i + 1}": s for i, s in enumerate(scores)}, Fraction(sum(scores), 4)
    raise ValueError(f"unknown problem family {family!r}")


def format_number(value: Fraction | int, lang: str = "en") -> str:
    """``value`` as a plain decimal (comma decimal separator for de/fr/es); ``a/b`` if it does not terminate."""
    value = Fraction(value)
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    while den % 2 == 0:
        den //= 2
    while den % 5 == 0:
        den //= 5
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    with localcontext() as ctx:
        ctx.prec = 50
        text = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    return text.replace(".", ",") if lang in ("de", "fr", "es") else text


@dataclass(frozen=True)
class MathProblem:
    id: str
    family: str
    lang: str
    question: str
    answer: str
    """The reference answer, exact (``12.5``, ``-3``)."""
    values: dict[str, Any]

    @property
    def prompt(self) -> str:
        return f"{self.question}\n\n{ANSWER_INSTRUCTION[self.lang]}"


def make_problems(num: int, seed: int = 0, languages: Sequence[str] = MATH_LANGUAGES) -> list[MathProblem]:
    """``num`` problems; problem ``i`` depends only on (seed, i): its family cycles through the families and its
    language through ``languages``; its numbers come from ``random.Random(f"math/{seed}/{i}")``."""
    unknown = [lang for lang in languages if lang not in ANSWER_INSTRUCTION]
    if unknown or not languages:
        raise ValueError(f"languages must be a non-empty subset of {MATH_LANGUAGES}, got {list(languages)}")
    problems = []
    for index in range(num):
        family = MATH_FAMILIES[index % len(MATH_FAMILIES)]
        lang = languages[index % len(languages)]
        values, answer = _values(family, random.Random(f"math/{seed}/{index}"))
        shown = {k: format_number(v, lang) if isinstance(v, (int, Fraction)) else v for k, v in values.items()}
        problems.append(
            MathProblem(
                id=f"math-{seed}-{index}",
                family=family,
                lang=lang,
                question=MATH_TEMPLATES[family][lang].format(**shown),
                answer=format_number(answer),
                values={k: format_number(v) if isinstance(v, Fraction) else v for k, v in values.items()},
            )
        )
    return problems


# -------------------------------------------------------------------------------------- math: answer extraction

_NUMBER = re.compile(
    r"(?<![\w.])[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:[.,]\d+)?(?:\s*/\s*[-−]?\d+(?:\.\d+)?)?(?![\d])"
    r"|(?<![\w.])[-−]?\.\d+(?![\d])"
)
_ANSWER_LINE = re.compile(r"answer\s*\**\s*[:：]\s*(.*)", re.IGNORECASE)
_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}")


def parse_number(token: str) -> Fraction | None:
    """A number as written: ``1,234.5``, ``3,5`` (decimal comma), ``3/4``, ``-2``, ``.5`` -> Fraction (else None)."""
    token = token.strip().replace("−", "-").replace(" ", "")
    try:
        if "/" in token:
            num, den = token.split("/", 1)
            den_value = parse_number(den)
            num_value = parse_number(num)
            if num_value is None or not den_value:
                return None
            return num_value / den_value
        if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", token):
            token = token.replace(",", "")
        elif re.fullmatch(r"-?\d+,\d+", token):
            token = token.replace(",", ".")
        return Fraction(token)
    except (ValueError, ZeroDivisionError):
        return None


def _numbers(text: str) -> list[Fraction]:
    text = _FRAC.sub(r"\1/\2", text)
    values = [parse_number(m.group(0)) for m in _NUMBER.finditer(text)]
    return [v for v in values if v is not None]


def _boxed(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` (nested braces allowed)."""
    out = []
    for match in re.finditer(r"\\boxed\s*\{", text):
        depth, start = 1, match.end()
        for pos in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[pos], 0)
            if depth == 0:
                out.append(text[start:pos])
                break
    return out


def extract_answer(text: str) -> tuple[Fraction | None, str]:
    """The final answer of a solution and where it was found: ``answer_line``, ``boxed``, ``last_number`` or
    ``none``."""
    lines = [m.group(1) for m in _ANSWER_LINE.finditer(text or "")]
    for line in reversed(lines):
        for candidate in [*_boxed(line), line]:
            found = _numbers(candidate)
            if found:
                return found[0], "answer_line"
    for boxed in reversed(_boxed(text or "")):
        found = _numbers(boxed)
        if found:
            return found[-1], "boxed"
    found = _numbers(text or "")
    if found:
        return found[-1], "last_number"
    return None, "none"


def answers_match(value: Fraction | None, reference: Fraction | str) -> bool:
    """Exact for an integer reference, relative tolerance 1e-6 otherwise."""
    if value is None:
        return False
    ref = reference if isinstance(reference, Fraction) else parse_number(str(reference))
    if ref is None:
        return False
    if ref.denominator == 1:
        return value == ref
    return abs(value - ref) <= Fraction(REL_TOLERANCE) * abs(ref)


# ------------------------------------------------------------------------------------------------ math: stage


class MathConfig(MathSettings):
    """The settings of ``synth.settings.MathSettings`` plus the prompt template's version."""

    template_version: str = MATH_TEMPLATE_VERSION


def run_math(generator: Generator, out_dir: str, config: MathConfig | None = None, log=None) -> dict:
    """Rejection-sample the teacher on generated word problems into ``out_dir``; returns the stage summary."""
    config = config or MathConfig()
    if config.samples_per_problem < 1 or config.max_kept_per_problem < 1:
        raise ValueError("samples_per_problem and max_kept_per_problem must be >= 1")
    problems = make_problems(config.num_problems, config.seed, config.languages)
    items = [{**dataclasses.asdict(p), "index": i} for i, p in enumerate(problems)]

    def process(chunk: list[Mapping[str, Any]]):
        probs = [MathProblem(**{k: item[k] for k in ("id", "family", "lang", "question", "answer", "values")})
                 for item in chunk]  # fmt: skip
        requests = [
            GenerationRequest(
                messages(("user", p.prompt)),
                max_new_tokens=config.max_new_tokens,
                temperature=config.temperature,
                top_p=config.top_p,
                seed=request_seed(config.seed, item["index"]),
                n=config.samples_per_problem,
                template_version=config.template_version,
            )
            for p, item in zip(probs, chunk)
        ]
        rows, rejects, solved, samples = [], [], 0, 0
        for problem, result in zip(probs, generator.generate(requests)):
            kept = _judge_math(problem, result, config.max_kept_per_problem, rows, rejects)
            samples += len(result.texts)
            solved += kept > 0
        counters = chunk_counters(len(chunk), samples, len(rows), rejects)
        counters.update(problems=len(chunk), problems_solved=solved)
        return rows, rejects, counters

    stage_config = {"method": METHOD_MATH, "model_id": generator.model_id, **config.model_dump()}
    extra = {"method": METHOD_MATH, "model": generator.model_id, "template_version": config.template_version}
    return run_chunked_stage(
        out_dir, stage_config, items, process, SFT_SCHEMA, chunk_size=config.chunk_size, extra=extra, log=log
    )


def _judge_math(problem: MathProblem, result: GenerationResult, max_kept: int, rows: list, rejects: list) -> int:
    """Append the kept rows and rejected rows of one problem's samples; return how many were kept."""
    seen: set[str] = set()
    kept = 0
    for j, (text, finish) in enumerate(zip(result.texts, result.finish_reasons)):
        value, how = extract_answer(text)
        detail = {"reference": problem.answer, "extracted": None if value is None else format_number(value)}
        detail.update(found=how, sample=j)
        reason = None
        if finish == "length":
            reason = "truncated"
        elif value is None:
            reason = "no_final_answer"
        elif not answers_match(value, problem.answer):
            reason = "wrong_answer"
        elif text_key(text) in seen:
            reason = "duplicate"
        elif kept >= max_kept:
            reason = "over_limit"
        conversation = messages(("user", problem.prompt), ("assistant", text.strip()))
        if reason is None and validate_chat(conversation):
            reason, detail["problems"] = "bad_chat", validate_chat(conversation)
        if reason:
            rid = record_id(METHOD_MATH, problem.id, j, reason, text)
            rejects.append(rejected(METHOD_MATH, problem.id, reason, detail, text, id=rid))
            continue
        seen.add(text_key(text))
        kept += 1
        meta = {"family": problem.family, "reference": problem.answer, "extracted": detail["extracted"]}
        meta.update(found=how, sample=j, question=problem.question, values=problem.values)
        rows.append(
            {
                "id": record_id(METHOD_MATH, problem.id, text),
                "messages": conversation,
                **provenance(result, method=METHOD_MATH, lang=problem.lang, source_id=problem.id, meta=meta),
            }
        )
    return kept
