"""A small instruction-following set in the manner of IFEval (Zhou et al. 2023, arXiv 2311.07911): prompts whose
constraints a program checks, no judge model.

Each item is a prompt and one or more constraints: a word limit, the response language (fastText lid.176, the
curation stage's language ID), a format (a JSON object with given keys, a bullet list of N items, N paragraphs, all
lower or upper case, a ``<<title>>``, the whole answer in quotes), keywords that must (or must not) appear, a first
word or last phrase, no commas. The prompts are written here (31 of them, in English, German, French, Spanish and
Chinese), so the set needs no download; the evaluation decontaminates them against the training data like every
other set.

An empty answer fails every constraint (no vacuous pass of "no commas" or "avoid the word X"). Two scores, as
IFEval's strict ones: ``prompt_accuracy`` (every constraint of the prompt holds) and ``instruction_accuracy``
(constraints that hold, over all constraints).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

_WORD = re.compile(r"\w+", re.UNICODE)
_BULLET = re.compile(r"^\s*[-*•]\s+\S", re.MULTILINE)
_FENCE = re.compile(r"^\s*```[A-Za-z]*\s*\n(.*?)\n?```\s*$", re.DOTALL)


def words(text: str) -> list[str]:
    """Words of a space-separated language (letter/digit runs); the word limits are only set on such prompts."""
    return _WORD.findall(text)


def _has_letters(text: str) -> bool:
    return any(c.isalpha() for c in text)


def _contains(text: str, word: str) -> int:
    """How often ``word`` occurs, case-insensitive, as a whole word (a word inside another does not count)."""
    return len(re.findall(rf"(?<!\w){re.escape(word.lower())}(?!\w)", text.lower()))


def _unfenced(text: str) -> str:
    match = _FENCE.match(text)
    return match.group(1) if match else text


def check_json_object(text: str, keys: Sequence[str] = ()) -> bool:
    """The answer (optionally in one ``` fence) is a JSON object holding ``keys``."""
    try:
        value = json.loads(_unfenced(text.strip()))
    except ValueError:
        return False
    return isinstance(value, dict) and all(k in value for k in keys)


def check_bullets(text: str, count: int) -> bool:
    """Exactly ``count`` markdown bullet lines (``- ``, ``* `` or ``• ``), as IFEval's ``detectable_format``."""
    return len(_BULLET.findall(text)) == count


def check_paragraphs(text: str, count: int) -> bool:
    """Exactly ``count`` non-empty paragraphs separated by blank lines."""
    return len([p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]) == count


# name -> check(answer, **args, lid=...) ; every one receives a non-empty answer
CHECKS: dict[str, Callable[..., bool]] = {
    "max_words": lambda text, n, **_: len(words(text)) <= n,
    "min_words": lambda text, n, **_: len(words(text)) >= n,
    "language": lambda text, lang, lid, **_: lid(text) == lang,
    "json_object": lambda text, keys=(), **_: check_json_object(text, keys),
    "bullets": lambda text, n, **_: check_bullets(text, n),
    "paragraphs": lambda text, n, **_: check_paragraphs(text, n),
    "lowercase": lambda text, **_: _has_letters(text) and text == text.lower(),
    "uppercase": lambda text, **_: _has_letters(text) and text == text.upper(),
    "keywords": lambda text, terms, **_: all(_contains(text, t) for t in terms),
    "keyword_count": lambda text, word, n, **_: _contains(text, word) >= n,
    "forbidden_words": lambda text, terms, **_: not any(_contains(text, t) for t in terms),
    "ends_with": lambda text, phrase, **_: text.strip().endswith(phrase),
    "starts_with": lambda text, word, **_: (words(text)[:1] or [""])[0].lower() == word.lower(),
    "no_commas": lambda text, **_: "," not in text and "，" not in text,
    "quoted": lambda text, **_: len(text.strip()) > 2 and text.strip()[0] == text.strip()[-1] == '"',
    "title": lambda text, **_: re.search(r"<<[^<>\n]+>>", text) is not None,
}


@dataclass(frozen=True)
class IfevalItem:
    id: str
    prompt: str
    constraints: tuple[tuple[str, Mapping], ...]  # (check name, its arguments)


def _item(i: int, prompt: str, *constraints: tuple[str, dict]) -> IfevalItem:
    for name, _ in constraints:
        if name not in CHECKS:
            raise ValueError(f"unknown constraint {name!r}")
    return IfevalItem(f"ifeval-{i:02d}", prompt, tuple(constraints))


ITEMS: tuple[IfevalItem, ...] = (
    _item(
        0, "Write a short poem about the sea. Use only lowercase letters: no capital letters at all.", ("lowercase", {})
    ),
    _item(1, "Explain what the processor of a computer does, in at most 40 words.", ("max_words", {"n": 40})),
    _item(2, "Describe the water cycle in at least 60 words.", ("min_words", {"n": 60})),
    _item(
        3,
        "Give exactly 3 tips for learning a new language as a bullet list: one tip per line, each line starting "
        "with '- '. Write nothing else.",
        ("bullets", {"n": 3}),
    ),
    _item(
        4,
        'Describe a made-up person as a JSON object with the keys "name" and "age". Output only the JSON.',
        ("json_object", {"keys": ["name", "age"]}),
    ),
    _item(5, "Antworte auf Deutsch: Warum ist Paris eine bekannte Stadt?", ("language", {"lang": "de"})),
    _item(6, "Réponds en français : quels sont les avantages du vélo en ville ?", ("language", {"lang": "fr"})),
    _item(7, "请用中文回答：为什么天空是蓝色的？", ("language", {"lang": "zh"})),
    _item(8, "Responde en español: ¿qué es la fotosíntesis?", ("language", {"lang": "es"})),
    _item(9, "Answer in German, not in English: what is the capital of Italy?", ("language", {"lang": "de"})),
    _item(
        10,
        "Write one sentence about coffee that uses the words 'morning' and 'aroma'.",
        ("keywords", {"terms": ["morning", "aroma"]}),
    ),
    _item(11, "Describe a city park without using the word 'tree'.", ("forbidden_words", {"terms": ["tree", "trees"]})),
    _item(
        12,
        "Write two sentences about rain, and end your answer with the exact phrase 'That is all.'",
        ("ends_with", {"phrase": "That is all."}),
    ),
    _item(
        13,
        "Begin your answer with the word 'Yes', then explain whether cats can swim.",
        ("starts_with", {"word": "yes"}),
    ),
    _item(14, "WRITE A SHORT WARNING ABOUT SLIPPERY FLOORS, IN CAPITAL LETTERS ONLY.", ("uppercase", {})),
    _item(
        15, "List four fruits as a bullet list, each line starting with '* ', and nothing else.", ("bullets", {"n": 4})
    ),
    _item(16, "Explain what recursion is without using any commas.", ("no_commas", {})),
    _item(
        17,
        "Write exactly two paragraphs about mountains, separated by one blank line.",
        ("paragraphs", {"n": 2}),
    ),
    _item(
        18,
        'Name three colours in a JSON object with one key, "colors", whose value is a list. Output only the JSON.',
        ("json_object", {"keys": ["colors"]}),
    ),
    _item(19, "In fewer than 20 words: what is gravity?", ("max_words", {"n": 19})),
    _item(
        20,
        "Write a haiku about autumn in lowercase letters only, and use the word 'leaves'.",
        ("lowercase", {}),
        ("keywords", {"terms": ["leaves"]}),
    ),
    _item(
        21,
        "Beschreibe einen Hund in höchstens 30 Wörtern.",
        ("language", {"lang": "de"}),
        ("max_words", {"n": 30}),
    ),
    _item(
        22,
        "Écris exactement trois lignes sur les saisons, chacune commençant par « - » (une liste à puces), et rien "
        "d'autre.",
        ("language", {"lang": "fr"}),
        ("bullets", {"n": 3}),
    ),
    _item(23, "Answer in Chinese: how many days does a week have?", ("language", {"lang": "zh"})),
    _item(24, "Put your whole answer inside double quotation marks: what is your favourite colour?", ("quoted", {})),
    _item(
        25,
        "Write a product description for a desk lamp that uses the words 'bright' and 'energy', in under 50 words.",
        ("keywords", {"terms": ["bright", "energy"]}),
        ("max_words", {"n": 49}),
    ),
    _item(
        26,
        'Reply with a JSON object that has one key, "answer", whose value is the capital of Spain.',
        ("json_object", {"keys": ["answer"]}),
    ),
    _item(
        27,
        "Explica cómo se prepara una taza de té. Responde en español y usa como máximo 50 palabras.",
        ("language", {"lang": "es"}),
        ("max_words", {"n": 50}),
    ),
    _item(
        28,
        "Suggest a title for a blog post about gardening, wrapped in double angular brackets, such as <<my title>>.",
        ("title", {}),
    ),
    _item(
        29,
        "Tell me about the moon; use the word 'crater' at least twice.",
        ("keyword_count", {"word": "crater", "n": 2}),
    ),
    _item(
        30,
        "List five programming languages as a bullet list with '- ' at the start of each line, all in lowercase.",
        ("bullets", {"n": 5}),
        ("lowercase", {}),
    ),
)


def ifeval_items(count: int | None = None) -> list[IfevalItem]:
    """The first ``count`` items (None: all)."""
    return list(ITEMS if count is None else ITEMS[:count])


def check_constraints(constraints: Sequence[tuple[str, Mapping]], answer: str, lid: Callable[[str], str]) -> list[bool]:
    """One verdict per constraint; an empty answer fails them all."""
    text = answer.strip()
    if not text:
        return [False] * len(constraints)
    return [bool(CHECKS[name](text, lid=lid, **args)) for name, args in constraints]


def check_item(item: IfevalItem, answer: str, lid: Callable[[str], str]) -> list[bool]:
    return check_constraints(item.constraints, answer, lid)


def fasttext_lid() -> Callable[[str], str]:
    """``text -> language code`` with lid.176, the model the curation stage labels documents with."""
    from pipelines.langid import load_lid_model

    model = load_lid_model()

    def lid(text: str) -> str:
        labels, _ = model.predict(text[:20_000].replace("\n", " "), k=1)
        return labels[0].removeprefix("__label__") if labels else ""

    return lid
