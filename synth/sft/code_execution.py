"""Code by execution feedback.

About forty built-in function-writing tasks (a few in Chinese and German), plus, when a curated
code stage is given, tasks made from its top-level Python functions that have a docstring (signature + docstring;
the original body is not used). Per task the teacher writes ``samples_per_task`` solutions (one ```python block)
and, in a separate greedy request, assert-based tests. Each solution runs with the tests in ``synth.sandbox``;
passing ones are kept (user: the task; assistant: the solution as a code block). Tests are cleaned first (their
own definition or import of the function is removed, so they test the teacher's solution, not themselves) and
must hold at least one assert. Rejected: ``no_code``, ``no_tests``, ``syntax_error``, ``duplicate`` (same code as an
earlier sample), ``tests_failed``, ``timeout``, ``memory``, ``sandbox_error``.

Writes SFT_SCHEMA shards through ``synth.records.run_chunked_stage`` (rejected samples to ``excluded/``).

    python -m synth.sft --methods code_execution --output data/synth/sft --backend openai \\
        --model Qwen/Qwen2-72B-Instruct --base-url http://127.0.0.1:8000/v1 --docs data/curated/dedup
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from typing import Any

from pipelines.schema import SFT_SCHEMA
from pipelines.shards import iter_stage_rows
from synth.llm.base import GenerationRequest, Generator
from synth.records import chunk_counters, messages, provenance, record_id, rejected, run_chunked_stage
from synth.sandbox import ISOLATION, SandboxLimits, SandboxResult, require_sandbox, run_many
from synth.settings import CodeSettings
from synth.sft.common import (
    request_seed,
    text_key,
)

METHOD_CODE = "code_execution"
CODE_TEMPLATE_VERSION = "code-execution-v1"


# ---------------------------------------------------------------------------------------------- code: tasks

# (name, signature, description, language)
BUILTIN_TASKS: tuple[tuple[str, str, str, str], ...] = (
    ("is_palindrome", "def is_palindrome(s: str) -> bool",
     "Return True if s reads the same forwards and backwards, ignoring case and any character that is not a "
     "letter or digit.", "en"),
    ("fizzbuzz", "def fizzbuzz(n: int) -> list[str]",
     'Return the FizzBuzz sequence for 1..n: "Fizz" for multiples of 3, "Buzz" for multiples of 5, "FizzBuzz" '
     "for multiples of both, otherwise the number as a string.", "en"),
    ("reverse_words", "def reverse_words(s: str) -> str",
     "Return the words of s (separated by whitespace) in reverse order, joined by single spaces.", "en"),
    ("count_vowels", "def count_vowels(s: str) -> int",
     "Return how many characters of s are vowels (a, e, i, o, u, upper or lower case).", "en"),
    ("factorial", "def factorial(n: int) -> int",
     "Return n! for a non-negative integer n (0! is 1).", "en"),
    ("fibonacci", "def fibonacci(n: int) -> int",
     "Return the n-th Fibonacci number, with fibonacci(0) == 0 and fibonacci(1) == 1.", "en"),
    ("is_prime", "def is_prime(n: int) -> bool",
     "Return True if the integer n is a prime number (numbers below 2 are not prime).", "en"),
    ("gcd", "def gcd(a: int, b: int) -> int",
     "Return the greatest common divisor of two non-negative integers (gcd(0, 0) is 0).", "en"),
    ("lcm", "def lcm(a: int, b: int) -> int",
     "Return the least common multiple of two positive integers.", "en"),
    ("flatten", "def flatten(nested: list) -> list",
     "Flatten an arbitrarily nested list of lists into a flat list, keeping the order of the elements.", "en"),
    ("chunk_list", "def chunk_list(items: list, size: int) -> list[list]",
     "Split items into consecutive chunks of length size (the last chunk may be shorter).", "en"),
    ("remove_duplicates", "def remove_duplicates(items: list) -> list",
     "Return items without duplicates, keeping the first occurrence of each element in the original order.", "en"),
    ("word_frequencies", "def word_frequencies(text: str) -> dict[str, int]",
     "Count how often each word occurs in text. Words are lower-cased and separated by whitespace; punctuation "
     "at the start or end of a word (.,!?;:) is removed.", "en"),
    ("is_anagram", "def is_anagram(a: str, b: str) -> bool",
     "Return True if a and b contain the same letters with the same counts, ignoring case and spaces.", "en"),
    ("binary_search", "def binary_search(items: list[int], target: int) -> int",
     "items is sorted in ascending order. Return an index of target in items, or -1 if it is absent.", "en"),
    ("merge_sorted", "def merge_sorted(a: list[int], b: list[int]) -> list[int]",
     "Merge two ascending lists into one ascending list containing all elements of both.", "en"),
    ("second_largest", "def second_largest(nums: list[int]) -> int | None",
     "Return the second largest distinct value in nums, or None if there are fewer than two distinct values.",
     "en"),
    ("rotate_right", "def rotate_right(items: list, k: int) -> list",
     "Return items rotated to the right by k positions (k may be larger than the length; an empty list stays "
     "empty).", "en"),
    ("transpose", "def transpose(matrix: list[list[int]]) -> list[list[int]]",
     "Return the transpose of a rectangular matrix given as a list of rows.", "en"),
    ("sum_of_digits", "def sum_of_digits(n: int) -> int",
     "Return the sum of the decimal digits of n (the sign of a negative n is ignored).", "en"),
    ("to_binary", "def to_binary(n: int) -> str",
     'Return the binary representation of a non-negative integer n without the "0b" prefix (0 gives "0").', "en"),
    ("roman_to_int", "def roman_to_int(s: str) -> int",
     "Convert a Roman numeral (I, V, X, L, C, D, M, with subtractive forms such as IV and CM) to an integer.",
     "en"),
    ("int_to_roman", "def int_to_roman(n: int) -> str",
     "Convert an integer from 1 to 3999 to a Roman numeral using subtractive forms (4 is IV, 900 is CM).", "en"),
    ("run_length_encode", "def run_length_encode(s: str) -> str",
     'Run-length encode s: each run of a character becomes the character followed by the run length, e.g. '
     '"aaab" -> "a3b1". The empty string gives "".', "en"),
    ("balanced_brackets", "def balanced_brackets(s: str) -> bool",
     "Return True if the brackets (), [] and {} in s are balanced and properly nested; other characters are "
     "ignored.", "en"),
    ("max_subarray_sum", "def max_subarray_sum(nums: list[int]) -> int",
     "Return the largest sum of a non-empty contiguous sub-list of nums (nums is not empty).", "en"),
    ("two_sum", "def two_sum(nums: list[int], target: int) -> tuple[int, int] | None",
     "Return the indices (i, j) with i < j of two elements that add up to target, choosing the smallest i and "
     "then the smallest j; return None if there is no such pair.", "en"),
    ("celsius_to_fahrenheit", "def celsius_to_fahrenheit(c: float) -> float",
     "Convert a temperature from degrees Celsius to degrees Fahrenheit.", "en"),
    ("longest_common_prefix", "def longest_common_prefix(words: list[str]) -> str",
     'Return the longest string that is a prefix of every word in words ("" for an empty list).', "en"),
    ("camel_to_snake", "def camel_to_snake(name: str) -> str",
     'Convert a camelCase or PascalCase identifier to snake_case, e.g. "parseHttpResponse" -> '
     '"parse_http_response" and "MyClass" -> "my_class".', "en"),
    ("median", "def median(nums: list[float]) -> float",
     "Return the median of a non-empty list of numbers (the mean of the two middle values for an even count).",
     "en"),
    ("is_leap_year", "def is_leap_year(year: int) -> bool",
     "Return True if year is a leap year in the Gregorian calendar.", "en"),
    ("caesar_cipher", "def caesar_cipher(text: str, shift: int) -> str",
     "Shift every ASCII letter of text by shift places in the alphabet (wrapping around, keeping case); other "
     "characters stay unchanged. A negative shift moves backwards.", "en"),
    ("count_islands", "def count_islands(grid: list[list[int]]) -> int",
     "grid holds 0 (water) and 1 (land). Return the number of islands: groups of land cells connected "
     "horizontally or vertically.", "en"),
    ("average", "def average(nums: list[float]) -> float",
     "返回列表中所有数的平均值；列表为空时返回 0.0。", "zh"),
    ("char_count", "def char_count(s: str) -> dict[str, int]",
     "返回一个字典，记录字符串 s 中每个字符出现的次数。", "zh"),
    ("is_sorted", "def is_sorted(nums: list[int]) -> bool",
     "判断列表 nums 是否按非递减顺序排列；空列表和只有一个元素的列表都算已排序。", "zh"),
    ("zaehle_grossbuchstaben", "def zaehle_grossbuchstaben(text: str) -> int",
     "Gib zurück, wie viele Großbuchstaben der Text enthält (auch Umlaute wie Ä zählen).", "de"),
    ("schaltjahre_zwischen", "def schaltjahre_zwischen(start: int, ende: int) -> int",
     "Zähle die Schaltjahre des gregorianischen Kalenders von start bis ende, beide Jahre eingeschlossen.", "de"),
    ("gerade_zahlen", "def gerade_zahlen(zahlen: list[int]) -> list[int]",
     "Gib die geraden Zahlen der Liste in ihrer ursprünglichen Reihenfolge zurück.", "de"),
)  # fmt: skip

TASK_STATEMENT = {
    "en": "Write a Python function with this signature:\n\n```python\n{signature}\n```\n\n{description}",
    "zh": "请编写一个具有如下签名的 Python 函数：\n\n```python\n{signature}\n```\n\n{description}",
    "de": "Schreibe eine Python-Funktion mit dieser Signatur:\n\n```python\n{signature}\n```\n\n{description}",
}
SOLUTION_INSTRUCTION = {
    "en": "Use only the Python standard library. Reply with one ```python code block that contains the complete "
    "function and the imports it needs; the code must not read input or print.",
    "zh": "只使用 Python 标准库。请只用一个 ```python 代码块回复，其中包含完整的函数及其所需的 import；"
    "代码不要读取输入，也不要打印。",
    "de": "Verwende nur die Python-Standardbibliothek. Antworte mit genau einem ```python-Codeblock, der die "
    "vollständige Funktion und die nötigen Importe enthält; der Code darf keine Eingaben lesen und nichts ausgeben.",
}
TESTS_INSTRUCTION = {
    "en": "Write tests for this function. Reply with one ```python code block of 3 to 6 plain `assert` statements "
    "that call `{name}` and check its results, including an edge case. Do not define or import `{name}`: it is "
    "already defined.",
    "zh": "请为这个函数编写测试。只用一个 ```python 代码块回复，其中包含 3 到 6 条调用 `{name}` 并检查结果的 `assert` "
    "语句，至少包括一个边界情况。不要定义或导入 `{name}`，它已经定义好了。",
    "de": "Schreibe Tests für diese Funktion. Antworte mit genau einem ```python-Codeblock aus 3 bis 6 einfachen "
    "`assert`-Anweisungen, die `{name}` aufrufen und das Ergebnis prüfen, darunter ein Randfall. Definiere oder "
    "importiere `{name}` nicht: die Funktion ist bereits definiert.",
}


def builtin_tasks() -> list[dict]:
    """The built-in programming tasks as work items."""
    return [
        {"id": f"code-builtin-{name}", "name": name, "signature": sig, "description": desc, "lang": lang,
         "source": "builtin"}
        for name, sig, desc, lang in BUILTIN_TASKS
    ]  # fmt: skip


def function_tasks(source: str, doc_id: str = "", max_chars: int = 200_000) -> list[dict]:
    """Tasks from the top-level, public, undecorated functions of Python ``source`` that have a docstring."""
    if len(source) > max_chars:
        return []
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    tasks = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or node.name.startswith("_") or node.decorator_list:
            continue
        doc = ast.get_docstring(node)
        if not doc or len(doc.strip()) < 10:
            continue
        signature = f"def {node.name}({ast.unparse(node.args)})"
        if node.returns is not None:
            signature += f" -> {ast.unparse(node.returns)}"
        description = doc.strip()[:1500]
        tasks.append(
            {
                "id": "code-doc-" + record_id("code-task", doc_id, signature, description),
                "name": node.name,
                "signature": signature,
                "description": description,
                "lang": "en",
                "source": f"doc:{doc_id}",
            }
        )
    return tasks


def document_tasks(stage_dir: str, limit: int) -> list[dict]:
    """Up to ``limit`` tasks from the ``domain == "code"`` documents of a curated stage folder (streamed)."""
    tasks, seen = [], set()
    if limit <= 0:
        return tasks
    for doc in iter_stage_rows(stage_dir, ["id", "text", "domain"]):
        if doc.get("domain") != "code" or not doc.get("text"):
            continue
        for task in function_tasks(doc["text"], str(doc.get("id"))):
            key = (task["signature"], task["description"])
            if key in seen:
                continue
            seen.add(key)
            tasks.append(task)
            if len(tasks) >= limit:
                return tasks
    return tasks


# ------------------------------------------------------------------------------------------ code: parsing


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_OPEN_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n", re.IGNORECASE)


def extract_code(text: str, name: str | None = None) -> str | None:
    """The first ```python (else the first fenced) block of ``text``; without fences the whole text when it
    parses as Python and defines ``name``; None when there is no code."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text or "")]
    for lang, body in blocks:
        if lang in ("python", "py", "python3") and body.strip():
            return body.strip("\n")
    for lang, body in blocks:
        if lang in ("", "pycon") and body.strip():
            return body.strip("\n")
    if not blocks:  # an answer cut off at max_new_tokens inside its block: keep the complete statements
        opened = _OPEN_FENCE.search(text or "")
        if opened:
            return _parseable_prefix(text[opened.end() :])
    stripped = (text or "").strip()
    if name and f"def {name}" in stripped and "```" not in stripped:
        try:
            ast.parse(stripped)
            return stripped
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return None
    return None


def _parseable_prefix(code: str) -> str | None:
    """The longest run of whole lines from the start of ``code`` that parses as Python (None if there is none)."""
    lines = code.rstrip("\n").split("\n")
    for end in range(len(lines), 0, -1):
        candidate = "\n".join(lines[:end]).strip("\n")
        if not candidate.strip():
            return None
        try:
            ast.parse(candidate)
            return candidate
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
    return None


def count_asserts(tree: ast.AST) -> int:
    """``assert`` statements plus unittest-style ``self.assert...(...)`` calls."""
    count = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert):
            count += 1
        elif (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr.startswith("assert")
        ):
            count += 1
    return count


def clean_tests(tests: str, name: str) -> tuple[str | None, int, str]:
    """Tests without their own definition or import of ``name`` -> (code or None, asserts, why None)."""
    try:
        tree = ast.parse(tests)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        return None, 0, f"tests do not parse: {exc}"
    body = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            continue
        if isinstance(node, ast.ImportFrom):
            node.names = [a for a in node.names if (a.asname or a.name) != name and a.name != "*"]
            if not node.names:
                continue
        body.append(node)
    tree.body = body
    asserts = count_asserts(tree)
    if not asserts:
        return None, 0, "tests assert nothing"
    return ast.unparse(tree), asserts, ""


# ------------------------------------------------------------------------------------------------ code: stage


class CodeConfig(CodeSettings):
    """The settings of ``synth.settings.CodeSettings`` plus the prompt template's version."""

    template_version: str = CODE_TEMPLATE_VERSION

    def limits(self) -> SandboxLimits:
        return SandboxLimits(cpu_s=self.sandbox_cpu_s, wall_s=self.sandbox_wall_s, memory_mb=self.sandbox_memory_mb)


def task_statement(task: Mapping[str, Any]) -> str:
    lang = task["lang"] if task["lang"] in TASK_STATEMENT else "en"
    return TASK_STATEMENT[lang].format(signature=task["signature"], description=task["description"])


def solution_prompt(task: Mapping[str, Any]) -> str:
    lang = task["lang"] if task["lang"] in SOLUTION_INSTRUCTION else "en"
    return f"{task_statement(task)}\n\n{SOLUTION_INSTRUCTION[lang]}"


def tests_prompt(task: Mapping[str, Any]) -> str:
    lang = task["lang"] if task["lang"] in TESTS_INSTRUCTION else "en"
    return f"{task_statement(task)}\n\n{TESTS_INSTRUCTION[lang].format(name=task['name'])}"


_STATUS_REASON = {
    "failed": "tests_failed",
    "output_limit": "tests_failed",
    "syntax_error": "syntax_error",
    "timeout": "timeout",
    "memory": "memory",
    "killed": "sandbox_error",
    "error": "sandbox_error",
}


def run_code(
    generator: Generator,
    out_dir: str,
    config: CodeConfig | None = None,
    code_docs_dir: str | None = None,
    log=None,
) -> dict:
    """Execution-feedback SFT rows for the built-in tasks (and those of ``code_docs_dir``) into ``out_dir``."""
    config = config or CodeConfig()
    if config.samples_per_task < 1:
        raise ValueError("samples_per_task must be >= 1")
    tasks = builtin_tasks()
    if config.task_names is not None:
        unknown = set(config.task_names) - {t["name"] for t in tasks}
        if unknown:
            raise ValueError(f"unknown built-in tasks: {sorted(unknown)}")
        tasks = [t for t in tasks if t["name"] in set(config.task_names)]
    tasks = tasks[: config.num_tasks]
    if code_docs_dir:
        tasks += document_tasks(code_docs_dir, config.max_doc_tasks)
    items = [{**task, "index": i} for i, task in enumerate(tasks)]
    limits = config.limits()

    def process(chunk: list[Mapping[str, Any]]):
        require_sandbox()  # no bubblewrap: stop before the teacher writes code that could not be run safely
        requests = [
            GenerationRequest(
                messages(("user", solution_prompt(task))),
                max_new_tokens=config.max_new_tokens,
                temperature=config.temperature,
                top_p=config.top_p,
                seed=request_seed(config.seed, task["index"]),
                n=config.samples_per_task,
                template_version=config.template_version,
            )
            for task in chunk
        ] + [
            GenerationRequest(
                messages(("user", tests_prompt(task))),
                max_new_tokens=config.tests_max_new_tokens,
                temperature=0.0,
                seed=config.seed,
                template_version=config.template_version,
            )
            for task in chunk
        ]
        results = generator.generate(requests)
        solutions, test_results = results[: len(chunk)], results[len(chunk) :]
        rows, rejects, jobs, pending = [], [], [], []
        samples = 0
        for task, result, test_result in zip(chunk, solutions, test_results):
            tests_code = extract_code(test_result.texts[0])
            tests, asserts, why = clean_tests(tests_code, task["name"]) if tests_code else (None, 0, "no code block")
            seen: set[str] = set()
            for j, text in enumerate(result.texts):
                samples += 1
                code = extract_code(text, task["name"])
                detail: dict[str, Any] = {"sample": j, "finish_reason": result.finish_reasons[j]}
                reason = None
                if code is None:
                    reason = "no_code"
                elif tests is None:
                    reason, detail["tests"] = "no_tests", why
                else:
                    try:
                        ast.parse(code)
                    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
                        reason, detail["error"] = "syntax_error", str(exc)[:300]
                if reason is None and text_key(code) in seen:
                    reason = "duplicate"
                if reason:
                    rid = record_id(METHOD_CODE, task["id"], j, reason, text)
                    rejects.append(rejected(METHOD_CODE, task["id"], reason, detail, text, id=rid))
                    continue
                seen.add(text_key(code))
                jobs.append((code, tests))
                pending.append((task, result, j, code, tests, asserts))
        outcomes: list[SandboxResult] = run_many(jobs, limits, workers=config.sandbox_workers) if jobs else []
        solved: set[str] = set()
        for (task, result, j, code, tests, asserts), outcome in zip(pending, outcomes):
            if outcome.passed:
                conversation = messages(("user", task_statement(task)), ("assistant", f"```python\n{code}\n```"))
                meta = {"task": task["name"], "source": task["source"], "tests": tests[:3000], "asserts": asserts}
                # no wall-clock time in a row: a rerun or a resumed run must write the very same rows
                meta.update(sample=j, sandbox={"isolation": outcome.isolation})
                rows.append(
                    {
                        "id": record_id(METHOD_CODE, task["id"], code),
                        "messages": conversation,
                        **provenance(result, method=METHOD_CODE, lang=task["lang"], source_id=task["id"], meta=meta),
                    }
                )
                solved.add(task["id"])
                continue
            reason = _STATUS_REASON.get(outcome.status, "sandbox_error")
            if outcome.status == "syntax_error" and (outcome.error or {}).get("file") == "tests.py":
                reason = "no_tests"
            detail = {"sample": j, "status": outcome.status, "failure": outcome.failure[:500], "tests": tests[:1000]}
            rid = record_id(METHOD_CODE, task["id"], j, reason, code)
            rejects.append(rejected(METHOD_CODE, task["id"], reason, detail, code, id=rid))
        counters = chunk_counters(len(chunk), samples, len(rows), rejects)
        counters.update(
            tasks=len(chunk),
            tasks_solved=len(solved),
            tests_run=len(outcomes),
            tests_passed=sum(1 for o in outcomes if o.passed),
        )
        return rows, rejects, counters

    stage_config = {
        "method": METHOD_CODE,
        "model_id": generator.model_id,
        # sandbox parallelism does not change what is kept: changing it must not redo the stage
        **config.model_dump(exclude={"sandbox_workers"}),
        "code_docs": bool(code_docs_dir),
    }
    extra = {
        "method": METHOD_CODE,
        "model": generator.model_id,
        "template_version": config.template_version,
        "builtin_tasks": sum(1 for t in tasks if t["source"] == "builtin"),
        "document_tasks": sum(1 for t in tasks if t["source"] != "builtin"),
        "sandbox_isolation": ISOLATION,
    }
    return run_chunked_stage(
        out_dir, stage_config, items, process, SFT_SCHEMA, chunk_size=config.chunk_size, extra=extra, log=log
    )
