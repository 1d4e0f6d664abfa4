"""Tests of synth.sft.math_rejection and synth.sft.code_execution: math rejection sampling and code execution feedback.

The accept/reject logic runs with a scripted ``Generator`` whose fixed texts stand in for the teacher's answers
(right, wrong, missing, truncated; passing, failing, broken code); both methods also run end to end with the tiny
random Qwen2 (``tiny_qwen_dir``), whose garbage is all rejected while the stage still completes and resumes.

    .venv/bin/python -m pytest tests/test_synth_verified.py -q
"""

from __future__ import annotations

import json
import re
from fractions import Fraction

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.schema import DOCUMENT_SCHEMA, SFT_SCHEMA, SYNTH_REJECTED_SCHEMA, empty_document
from pipelines.shards import list_shards, read_json
from synth.llm.backends import TransformersGenerator
from synth.llm.base import GenerationResult, Generator
from synth.llm.chat import validate_chat
from synth.sft.code_execution import (
    BUILTIN_TASKS,
    METHOD_CODE,
    CodeConfig,
    clean_tests,
    document_tasks,
    extract_code,
    run_code,
)
from synth.sft.math_rejection import (
    MATH_FAMILIES,
    METHOD_MATH,
    MathConfig,
    answers_match,
    extract_answer,
    make_problems,
    parse_number,
    run_math,
)


class Scripted(Generator):
    """Stands in for the teacher's text: ``respond(prompt, request)`` gives (text, finish_reason) per sample."""

    backend = "scripted"

    def __init__(self, respond, model_id: str = "scripted-teacher") -> None:
        self.respond, self.model_id, self.requests = respond, model_id, 0

    def generate(self, requests):
        out = []
        for request in requests:
            self.requests += 1
            samples = self.respond(request.messages[-1]["content"], request)
            assert len(samples) == request.n
            out.append(
                GenerationResult(
                    texts=[t for t, _ in samples],
                    completion_tokens=[len(t.split()) + 1 for t, _ in samples],
                    finish_reasons=[f for _, f in samples],
                    prompt_tokens=10,
                    model_id=self.model_id,
                    backend=self.backend,
                    sampling=request.sampling(),
                    template_version=request.template_version,
                )
            )
        return out


def read_rows(stage_dir: str, kind: str = "data") -> list[dict]:
    rows = []
    for shard in list_shards(stage_dir, kind):
        table = pq.read_table(shard)
        schema = SFT_SCHEMA if kind == "data" else SYNTH_REJECTED_SCHEMA
        assert table.schema.remove_metadata().equals(schema), table.schema
        rows += table.to_pylist()
    return rows


def check_stage(stage_dir: str, summary: dict) -> tuple[list[dict], list[dict]]:
    """Shards match their schemas, every row is a valid chat, the counters add up with what is on disk."""
    rows, excluded = read_rows(stage_dir), read_rows(stage_dir, "excluded")
    pa.Table.from_pylist(rows, schema=SFT_SCHEMA)  # every row fits the schema
    for row in rows:
        assert validate_chat(row["messages"]) == [], row
        assert json.loads(row["meta"]) and json.loads(row["sampling"])
    assert summary["accepted"] == len(rows)
    assert sum(summary["rejected"].values()) == len(excluded)
    assert summary["samples"] == summary["accepted"] + sum(summary["rejected"].values())
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({r["id"] for r in excluded}) == len(excluded)
    assert read_json(f"{stage_dir}/_SUCCESS.json")["accepted"] == summary["accepted"]
    return rows, excluded


# ------------------------------------------------------------------------------------------------ math


@pytest.mark.parametrize(
    ("text", "value", "where"),
    [
        ("Step 1 ... so 12 + 3 = 15.\nAnswer: 15", Fraction(15), "answer_line"),
        ("**Answer:** 1,234.50 dollars", Fraction("1234.5"), "answer_line"),
        ("Die Antwort ist klar.\nAnswer: 3,5 Euro", Fraction(7, 2), "answer_line"),
        ("answer: -7", Fraction(-7), "answer_line"),
        ("Answer: x = 5", Fraction(5), "answer_line"),
        ("Answer: 3/4", Fraction(3, 4), "answer_line"),
        ("First answer: 3. Then I fixed it.\nAnswer: 4", Fraction(4), "answer_line"),
        ("Answer: \\boxed{12}", Fraction(12), "answer_line"),
        ("所以答案是 \\boxed{\\frac{3}{4}}。", Fraction(3, 4), "boxed"),
        ("We get \\boxed{42} apples.", Fraction(42), "boxed"),
        ("6 times 7 is 42.", Fraction(42), "last_number"),
        ("The average is 82.25 points.", Fraction("82.25"), "last_number"),
        ("Answer: twenty, which is 20", Fraction(20), "answer_line"),
        ("I cannot solve this.", None, "none"),
        ("", None, "none"),
    ],
)
def test_extract_answer(text, value, where):
    assert extract_answer(text) == (value, where)


def test_parse_number_and_matching():
    assert parse_number("1,500") == 1500
    assert parse_number("1,5") == Fraction(3, 2)
    assert parse_number("−2") == -2
    assert parse_number("3/0") is None
    assert answers_match(Fraction(42), "42") and answers_match(Fraction("42.0"), "42")
    assert not answers_match(Fraction("42.0000001"), "42")  # integers: exact
    assert answers_match(Fraction("12.5000000001"), "12.5")  # otherwise: relative 1e-6
    assert not answers_match(Fraction("12.51"), "12.5")
    assert not answers_match(None, "1")


def expected_answer(family: str, v: dict) -> Fraction:
    if family == "change":
        return Fraction(v["bill"] - v["a"] * v["p"] - v["b"] * v["q"])
    if family == "stock":
        return Fraction(v["s"] - v["x"] + v["k"] * v["m"])
    if family == "discount":
        return Fraction(v["p"]) * (100 - v["d"]) / 100
    if family == "percent_of":
        return Fraction(v["n"]) * v["r"] / 100
    if family == "unit_rate":
        return Fraction(v["c"]) / v["n"] * v["m"]
    if family == "equation":
        return Fraction(v["c"] - v["b"], v["a"])
    assert family == "average"
    return Fraction(v["s1"] + v["s2"] + v["s3"] + v["s4"], 4)


def test_problems_are_seeded_multilingual_and_right():
    problems = make_problems(35, seed=3)
    assert problems == make_problems(35, seed=3)
    assert [p.question for p in make_problems(35, seed=4)] != [p.question for p in problems]
    assert make_problems(40, seed=3)[:35] == problems  # problem i depends on (seed, i) only
    assert {(p.family, p.lang) for p in problems} == {
        (f, lang) for f in MATH_FAMILIES for lang in "en zh de fr es".split()
    }
    assert len({p.id for p in problems}) == 35 and problems[7].id == "math-3-7"
    assert any(p.lang == "zh" and re.search(r"[\u4e00-\u9fff]", p.question) for p in problems)
    for p in problems:
        v, ref = p.values, Fraction(p.answer)
        expected = expected_answer(p.family, v)  # recomputed here, independently of synth.sft.math_rejection
        assert ref == expected, p
        for key in ("a", "b", "p", "q", "s", "x", "n", "m", "s1"):
            if key in v and p.family != "equation":
                assert str(v[key]) in p.question.replace(",", "."), (key, p.question)
        assert "Answer:" in p.prompt
    # a few by hand
    change = next(p for p in problems if p.family == "change")
    numbers = [int(n) for n in re.findall(r"\d+", change.question)]
    a, price_a, b, price_b, bill = numbers[:5]
    assert int(change.answer) == bill - a * price_a - b * price_b
    equation = next(p for p in problems if p.family == "equation" and p.lang == "en")
    a, sign, b, c = re.search(r"(\d+)x ([+-]) (\d+) = (-?\d+)", equation.question).groups()
    x = Fraction(int(c) - (int(b) if sign == "+" else -int(b)), int(a))
    assert x == Fraction(equation.answer)


def math_script(problems):
    """Per problem index, what the stand-in teacher answers (4 samples)."""
    by_prompt = {p.prompt: (i, p) for i, p in enumerate(problems)}

    def respond(prompt, request):
        i, p = by_prompt[prompt]
        ref = Fraction(p.answer)
        right = f"Let me work it out step by step.\nAnswer: {p.answer}"
        wrong = f"Quick guess.\nAnswer: {ref + 1}"
        if i == 0:  # right, wrong, none, truncated
            return [(right, "stop"), (wrong, "stop"), ("I am not sure how to solve this.", "stop"), (right, "length")]
        if i == 1:  # right twice (same text), right again (other text): only one kept
            return [(right, "stop"), (right, "stop"), (f"Reasoning differently.\n\\boxed{{{p.answer}}}", "stop"),
                    (wrong, "stop")]  # fmt: skip
        return [(wrong, "stop")] * 4  # never solved

    return respond


def test_math_accepts_right_answers_and_rejects_the_rest(tmp_path):
    config = MathConfig(num_problems=3, samples_per_problem=4, chunk_size=2, seed=5)
    problems = make_problems(3, seed=5)
    generator = Scripted(math_script(problems))
    summary = run_math(generator, str(tmp_path / "math"), config)
    rows, excluded = check_stage(str(tmp_path / "math"), summary)
    assert summary["items"] == summary["problems"] == 3
    assert summary["samples"] == 12 and summary["accepted"] == 2 and summary["problems_solved"] == 2
    assert summary["rejected"] == {
        "wrong_answer": 1 + 1 + 4,
        "no_final_answer": 1,
        "truncated": 1,
        "duplicate": 1,
        "over_limit": 1,
    }
    assert summary["method"] == METHOD_MATH and summary["model"] == "scripted-teacher"
    for row in rows:
        problem = next(p for p in problems if p.id == row["source_id"])
        assert row["messages"][0] == {"role": "user", "content": problem.prompt}
        assert row["messages"][1]["content"].endswith(f"Answer: {problem.answer}")
        assert row["lang"] == problem.lang and row["method"] == METHOD_MATH
        meta = json.loads(row["meta"])
        assert meta["reference"] == problem.answer and meta["family"] == problem.family
        assert json.loads(row["sampling"])["temperature"] == 0.7 and json.loads(row["sampling"])["n"] == 4
    wrong = next(r for r in excluded if r["reason"] == "wrong_answer" and r["source_id"] == problems[0].id)
    assert json.loads(wrong["detail"])["reference"] == problems[0].answer
    # a rerun asks nothing; another teacher starts afresh
    asked = generator.requests
    again = run_math(generator, str(tmp_path / "math"), config)
    assert again["chunks_reused"] == again["shards"] == 2 and generator.requests == asked
    other = run_math(Scripted(math_script(problems), "another-teacher"), str(tmp_path / "math"), config)
    assert other["chunks_reused"] == 0


# ------------------------------------------------------------------------------------------------ code


def test_extract_code_and_clean_tests():
    text = "Here you go:\n```python\ndef f(x):\n    return x\n```\nand ```python\nprint(2)\n```"
    assert extract_code(text) == "def f(x):\n    return x"
    assert extract_code("```\ndef f():\n    pass\n```") == "def f():\n    pass"
    assert extract_code("def f(x):\n    return x + 1", "f") == "def f(x):\n    return x + 1"
    assert extract_code("Just use a loop.", "f") is None
    tests, asserts, _ = clean_tests(
        "from solution import f\nimport math\ndef f(x):\n    return 0\nassert f(1) == 1\nassert math.pi > 3", "f"
    )
    assert asserts == 2 and "def f" not in tests and "solution" not in tests and "import math" in tests
    assert clean_tests("print(f(1))", "f")[0] is None
    assert clean_tests("assert f(1) ==", "f")[0] is None
    assert (
        clean_tests("class T(unittest.TestCase):\n    def test(self):\n        self.assertEqual(f(1), 1)", "f")[1] == 1
    )


def test_builtin_tasks_are_multilingual():
    assert 38 <= len(BUILTIN_TASKS) <= 45
    assert len({t[0] for t in BUILTIN_TASKS}) == len(BUILTIN_TASKS)
    assert {t[3] for t in BUILTIN_TASKS} == {"en", "zh", "de"}
    for name, signature, _, _ in BUILTIN_TASKS:
        assert signature.startswith(f"def {name}(")
        compile(signature + ":\n    pass\n", name, "exec")


GOOD = {
    "is_palindrome": "def is_palindrome(s: str) -> bool:\n    t = [c.lower() for c in s if c.isalnum()]\n"
    "    return t == t[::-1]",
    "reverse_words": "def reverse_words(s: str) -> str:\n    return ' '.join(reversed(s.split()))",
    "factorial": "import math\n\ndef factorial(n: int) -> int:\n    return math.factorial(n)",
    "count_vowels": "def count_vowels(s: str) -> int:\n    return sum(c in 'aeiouAEIOU' for c in s)",
}
TESTS = {
    # its own (always true) definition and an import of the function are removed before the run
    "is_palindrome": "from solution import is_palindrome\ndef is_palindrome(s):\n    return True\n"
    "assert is_palindrome('A man, a plan, a canal: Panama')\nassert not is_palindrome('abc')",
    "fizzbuzz": "assert fizzbuzz(5) == ['1', '2', 'Fizz', '4', 'Buzz']",
    "reverse_words": "assert reverse_words('a b  c') == 'c b a'\nassert reverse_words('') == ''",
    "factorial": "assert factorial(0) == 1\nassert factorial(5) == 120",
    "count_vowels": "print(count_vowels('abc'))",  # asserts nothing
}
SOLUTIONS = {
    "is_palindrome": [GOOD["is_palindrome"], "def is_palindrome(s):\n    return s == s[::-1]"],
    "fizzbuzz": ["You can use a loop with modulo.", "def fizzbuzz(n)\n    return []"],
    "reverse_words": [GOOD["reverse_words"], "def reverse_words(s):\n    while True:\n        pass"],
    "factorial": [GOOD["factorial"], GOOD["factorial"]],
    "count_vowels": [GOOD["count_vowels"], GOOD["count_vowels"]],
}


def code_script(prompt, request):
    name = re.search(r"def (\w+)\(", prompt).group(1)
    if "assert" in prompt and request.temperature == 0:  # the tests request
        return [(f"Tests:\n```python\n{TESTS[name]}\n```", "stop")]
    return [
        (f"```python\n{code}\n```" if code.startswith(("def", "import")) else code, "stop") for code in SOLUTIONS[name]
    ]


def test_code_keeps_passing_solutions_only(tmp_path):
    chosen = ("is_palindrome", "fizzbuzz", "reverse_words", "factorial", "count_vowels")
    tasks = [t for t in BUILTIN_TASKS if t[0] in chosen]
    assert len(tasks) == 5
    config = CodeConfig(task_names=chosen, chunk_size=64, sandbox_cpu_s=1, sandbox_wall_s=10)
    generator = Scripted(code_script)
    summary = run_code(generator, str(tmp_path / "code"), config)
    rows, excluded = check_stage(str(tmp_path / "code"), summary)
    assert summary["tasks"] == summary["items"] == 5 and summary["samples"] == 10
    assert summary["accepted"] == 3 and summary["tasks_solved"] == 3
    assert summary["tests_run"] == 5 and summary["tests_passed"] == 3
    assert summary["rejected"] == {
        "tests_failed": 1,
        "no_code": 1,
        "syntax_error": 1,
        "timeout": 1,
        "duplicate": 1,
        "no_tests": 2,
    }
    assert summary["method"] == METHOD_CODE and summary["sandbox_isolation"] == "bwrap+audit"
    by_task = {r["source_id"].removeprefix("code-builtin-"): r for r in rows}
    assert set(by_task) == {"is_palindrome", "reverse_words", "factorial"}
    for name, row in by_task.items():
        assert row["messages"][1]["content"] == f"```python\n{GOOD[name]}\n```"
        assert row["messages"][0]["content"].startswith("Write a Python function")
        assert "Reply with" not in row["messages"][0]["content"]  # the user turn is the task, not the format rules
        meta = json.loads(row["meta"])
        assert meta["asserts"] >= 1 and "def is_palindrome" not in meta["tests"]
    failed = next(r for r in excluded if r["reason"] == "tests_failed")
    assert "AssertionError" in json.loads(failed["detail"])["failure"]


def write_code_stage(root) -> str:
    source = (
        '"""Helpers."""\nimport json\n\n\ndef load_config(path: str) -> dict:\n'
        '    """Read a JSON configuration file and return it as a dictionary."""\n'
        "    with open(path) as f:\n        return json.load(f)\n\n\n"
        "def no_doc(x):\n    return x\n\n\ndef _private(x):\n"
        '    """A private helper that is not a task."""\n    return x\n\n\n'
        "def clamp(value: float, low: float, high: float) -> float:\n"
        '    """Limit value to the range [low, high]."""\n    return max(low, min(high, value))\n'
    )
    docs = [
        empty_document(id="c1", text=source, domain="code", lang="code"),
        empty_document(id="c2", text="def broken(:\n", domain="code", lang="code"),
        empty_document(id="w1", text='def web(x):\n    """Looks like code but is a web page."""\n', domain="web"),
    ]
    (root / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(docs, schema=DOCUMENT_SCHEMA), root / "data" / "part-0.parquet")
    return str(root)


def test_document_tasks(tmp_path):
    tasks = document_tasks(write_code_stage(tmp_path / "curated"), limit=10)
    assert [t["name"] for t in tasks] == ["load_config", "clamp"]
    assert tasks[1]["signature"] == "def clamp(value: float, low: float, high: float) -> float"
    assert tasks[1]["description"] == "Limit value to the range [low, high]."
    assert document_tasks(str(tmp_path / "curated"), limit=1) == tasks[:1]


# ------------------------------------------------------------------------------------------ tiny model


@pytest.fixture(scope="module")
def tiny_generator(tiny_qwen_dir):
    return TransformersGenerator(tiny_qwen_dir, batch_size=8)


def test_math_end_to_end_with_the_tiny_model(tiny_generator, tmp_path):
    config = MathConfig(num_problems=5, samples_per_problem=2, max_new_tokens=12, chunk_size=2)
    out = str(tmp_path / "math")
    summary = run_math(tiny_generator, out, config)
    rows, excluded = check_stage(out, summary)
    assert summary["items"] == 5 and summary["samples"] == 10 and summary["shards"] == 3
    assert summary["accepted"] == 0 and len(excluded) == 10  # random weights: nothing right
    assert set(summary["rejected"]) <= {"truncated", "no_final_answer", "wrong_answer"}
    again = run_math(tiny_generator, out, config)
    assert again["chunks_reused"] == again["shards"] == 3
    assert {k: again[k] for k in ("samples", "accepted", "rejected")} == {
        k: summary[k] for k in ("samples", "accepted", "rejected")
    }


def test_code_end_to_end_with_the_tiny_model(tiny_generator, tmp_path):
    config = CodeConfig(num_tasks=3, samples_per_task=2, max_new_tokens=16, tests_max_new_tokens=16, chunk_size=2)
    out = str(tmp_path / "code")
    summary = run_code(tiny_generator, out, config, code_docs_dir=write_code_stage(tmp_path / "curated"))
    rows, excluded = check_stage(out, summary)
    assert summary["builtin_tasks"] == 3 and summary["document_tasks"] == 2
    assert summary["items"] == summary["tasks"] == 5 and summary["samples"] == 10 and summary["shards"] == 3
    assert summary["accepted"] == 0 and sum(summary["rejected"].values()) == 10
    assert set(summary["rejected"]) <= {"no_code", "no_tests", "syntax_error", "duplicate", "tests_failed"}
    again = run_code(tiny_generator, out, config, code_docs_dir=str(tmp_path / "curated"))
    assert again["chunks_reused"] == again["shards"] == 3
    assert again["rejected"] == summary["rejected"]


def test_a_block_cut_off_at_max_new_tokens_keeps_its_complete_statements():
    from synth.sft.code_execution import extract_code

    cut = "```python\ndef f(x):\n    return x + 1\n\nassert f(1) == 2\nassert f(2) == 3\nassert f(3"
    assert extract_code(cut) == "def f(x):\n    return x + 1\n\nassert f(1) == 2\nassert f(2) == 3"
    assert extract_code("```python\ndef g(:\n") is None
    assert extract_code("```python\ndef f():\n    return 1\n```\n```python\nx = (") == "def f():\n    return 1"
