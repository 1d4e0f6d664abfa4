"""Teacher-driven SFT data (Qwen2 report, post-training): instruction synthesis, data repurposing, constitutional
feedback. Each method writes a stage folder of ``SFT_SCHEMA`` rows through ``synth.records.run_chunked_stage``:

- ``instruction``: for a seeded, language-balanced sample of seed prompts (``synth.seeds``), the teacher writes ONE
  new self-contained instruction on the seed's topic in the seed's language, then (a second batched round) answers
  it. Kept when both pass the filters (non-empty, length bounds, not a copy of the seed, no ChatML control token,
  not cut off at ``max_new_tokens``).
- ``repurpose``: long curated documents (a ``DOCUMENT_SCHEMA`` stage folder, streamed) -> an excerpt -> the teacher
  writes a question answerable from it and the answer, strictly as ``Question: ...\\nAnswer: ...``, in the
  document's language. Kept when it parses and is grounded: at least ``min_grounding`` of the answer's content
  units (words of 3+ letters or with a digit; character bigrams for CJK/Thai/... scripts) occur in the excerpt.
  The user turn holds the excerpt and the question ("Read the text and answer the question ...").
- ``constitutional``: (prompt, response) pairs from an SFT stage folder, or seed prompts answered by the teacher
  first; the teacher critiques the response against written ``PRINCIPLES``, then revises it given the critique. The
  revised response is kept (meta: principle ids, principles the critique cites, critique, original, ``changed``).
  A revision identical to the original is kept (the critique found nothing to fix, so it is a compliant example)
  and counted as ``unchanged``; ``keep_unchanged=False`` rejects it instead.

Every stage counts ``items``, ``samples`` (one candidate per item), ``accepted`` and ``rejected`` {reason: n};
``accepted + sum(rejected) == samples``. Rejected candidates go to ``excluded/`` with their reason.

    python -m synth.sft instruction --output data/synth/sft_instruction --num 8
    python -m synth.sft instruction --output out/instr --seeds my_seeds.jsonl --backend openai \\
        --model Qwen/Qwen2-7B-Instruct --base-url http://127.0.0.1:8000/v1 --num 5000 --set chunk_size=256
    python -m synth.sft repurpose --input data/curated/dedup --output data/synth/sft_repurpose --num 8
    python -m synth.sft constitutional --input data/synth/sft_instruction --output data/synth/sft_constitutional
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import json
import random
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipelines.schema import SFT_SCHEMA
from pipelines.shards import SUCCESS_FILE, input_fingerprint, iter_stage_rows, join, list_shards, read_json
from synth.chat import CONTROL_TOKENS, validate_chat
from synth.generate import GenerationRequest, GenerationResult, Generator
from synth.records import chunk_counters, messages, provenance, record_id, rejected, run_chunked_stage
from synth.seeds import language_name, load_seeds, sample_seeds, seed_messages, seed_prompt

# ------------------------------------------------------------------------------------------------ shared helpers

# Scripts written without spaces between words: grounding and overlap checks use characters there.
_CHAR_SCRIPT_RANGES = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3400, 0x9FFF),  # CJK ideographs
    (0xAC00, 0xD7AF),  # Hangul
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
)
CHAR_LANGS = frozenset({"zh", "ja", "ko", "th", "lo", "km", "my"})
_WORD = re.compile(r"\w+", re.UNICODE)


def _is_char_script(ch: str) -> bool:
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in _CHAR_SCRIPT_RANGES)


def uses_characters(text: str, lang: str | None) -> bool:
    """Whether ``text`` is compared by characters (CJK, Thai, ...): by its language, else by its script."""
    if lang in CHAR_LANGS:
        return True
    letters = [c for c in text[:2000] if c.isalpha()]
    return bool(letters) and sum(map(_is_char_script, letters)) / len(letters) > 0.3


def content_units(text: str, lang: str | None, chars: bool | None = None) -> list[str]:
    """What grounding counts: lower-cased words of 3+ characters or with a digit; for character scripts
    (``chars``, default: ``uses_characters``) the bigrams of consecutive letters (a one-letter run as itself)."""
    text = text.lower()
    if chars if chars is not None else uses_characters(text, lang):
        units = []
        for run in re.findall(r"[^\W_]+", text):
            units.extend([run] if len(run) == 1 else [run[i : i + 2] for i in range(len(run) - 1)])
        return units
    return [w for w in _WORD.findall(text) if len(w) >= 3 or any(c.isdigit() for c in w)]


def grounding_score(answer: str, context: str, lang: str | None) -> float:
    """Share of the answer's content units that occur in ``context`` (0 when the answer has none); both sides are
    cut into units the same way, chosen by the answer's language or script."""
    chars = uses_characters(answer, lang)
    units = content_units(answer, lang, chars)
    if not units:
        return 0.0
    context_units = set(content_units(context, lang, chars))
    return sum(u in context_units for u in units) / len(units)


def normalized(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def is_copy(candidate: str, original: str, threshold: float = 0.9) -> bool:
    """``candidate`` repeats ``original`` (same words up to case/punctuation, or a near-identical string)."""
    a, b = normalized(candidate), normalized(original)
    if not a or a == b:
        return True
    return difflib.SequenceMatcher(None, a[:2000], b[:2000], autojunk=False).ratio() >= threshold


def has_control_token(text: str) -> bool:
    return any(marker in text for marker in CONTROL_TOKENS)


_QUOTES = [('"', '"'), ("'", "'"), ("“", "”"), ("«", "»"), ("「", "」"), ("『", "』"), ("„", "“")]
# A chat model's lead-in before the asked-for text: "Certainly! Here's a new request about the same topic:".
_PREAMBLE = re.compile(
    r"^\s*(?:certainly|sure|of course|okay|ok|absolutely|here(?: is|'s| are))\b[^\n]*[:：]\s*\n", re.IGNORECASE
)


def strip_wrapping(text: str, labels: Sequence[str] = ()) -> str:
    """Trim whitespace, a chat lead-in line ("Sure! Here is ...:"), a leading ``Label:`` (``labels``, markdown
    bold allowed) and wrapping quotes (a pair, or a lone opening quote)."""
    text = _PREAMBLE.sub("", text, count=1).strip()
    for label in labels:
        match = re.match(rf"^\**\s*{label}\s*\**\s*[:：]\s*\**\s*", text, flags=re.IGNORECASE)
        if match:
            text = text[match.end() :].strip()
            break
    for left, right in _QUOTES:
        if len(text) >= 2 and text.startswith(left) and text.endswith(right) and text.count(left) <= 2:
            text = text[len(left) : -len(right)].strip()
            break
        if left == right and text.startswith(left) and text.count(left) == 1:
            text = text[len(left) :].strip()
            break
    return text


def digest(value: Any) -> str:
    blob = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def generator_config(generator: Generator) -> dict:
    """What of the generator shapes the output (the model, whatever backend serves it)."""
    return {"model_id": generator.model_id}


def stage_fingerprint(stage_dir: str) -> str:
    """A finished input stage's identity: its data shards' names, sizes and modification times (a shard that a
    rerun of that stage rewrote changes it; shards it resumed do not)."""
    if read_json(join(stage_dir, SUCCESS_FILE)) is None:
        raise FileNotFoundError(f"{stage_dir} is not a finished stage folder (no {SUCCESS_FILE}): run that stage")
    return digest([(uri.rsplit("/", 1)[-1], input_fingerprint(uri)) for uri in list_shards(stage_dir)])


def reservoir_sample(rows: Iterable[dict], k: int, rng: random.Random) -> list[dict]:
    """A uniform sample of ``k`` rows in one pass (memory: ``k`` rows), in stream order."""
    reservoir: list[tuple[int, dict]] = []
    for index, row in enumerate(rows):
        if len(reservoir) < k:
            reservoir.append((index, row))
        else:
            slot = rng.randint(0, index)
            if slot < k:
                reservoir[slot] = (index, row)
    return [row for _, row in sorted(reservoir, key=lambda pair: pair[0])]


def sample_documents(
    stage_dir: str,
    n: int,
    seed: int,
    *,
    min_chars: int = 0,
    exclude_domains: Sequence[str] = (),
    languages: Sequence[str] = (),
    salt: str = "documents",
) -> tuple[list[dict], dict]:
    """A seeded sample of ``n`` documents of a ``DOCUMENT_SCHEMA`` stage folder with at least ``min_chars``
    characters, a language, and a domain not in ``exclude_domains``; plus counts of what was scanned."""
    stats = {"documents_scanned": 0, "documents_eligible": 0}

    def eligible() -> Iterator[dict]:
        for doc in iter_stage_rows(stage_dir, ["id", "text", "lang", "domain", "source", "url"]):
            stats["documents_scanned"] += 1
            text = doc.get("text") or ""
            if len(text) < min_chars or not doc.get("lang") or doc.get("domain") in exclude_domains:
                continue
            if languages and doc["lang"] not in languages:
                continue
            stats["documents_eligible"] += 1
            yield doc

    docs = reservoir_sample(eligible(), n, random.Random(f"{salt}/{seed}"))
    return docs, stats


def sample_sft_rows(stage_dir: str, n: int, seed: int, languages: Sequence[str] = ()) -> tuple[list[dict], dict]:
    """A seeded sample of ``n`` valid conversations (ending with an assistant turn) from an SFT stage folder."""
    stats = {"rows_scanned": 0, "rows_eligible": 0}

    def eligible() -> Iterator[dict]:
        for row in iter_stage_rows(stage_dir, ["id", "messages", "lang", "method"]):
            stats["rows_scanned"] += 1
            if validate_chat(row["messages"]) or (languages and row.get("lang") not in languages):
                continue
            stats["rows_eligible"] += 1
            yield row

    return reservoir_sample(eligible(), n, random.Random(f"sft-rows/{seed}")), stats


def excerpt_of(text: str, max_chars: int, rng: random.Random) -> str:
    """A window of at most ``max_chars`` characters starting at a random line start, cut at a line or sentence
    end when there is one in its second half."""
    text = text.strip()
    if len(text) <= max_chars:
        return text
    starts = [0] + [m.end() for m in re.finditer(r"\n+", text) if m.end() < len(text) - max_chars // 2]
    start = rng.choice(starts)
    window = text[start : start + max_chars]
    cut = max(window.rfind("\n"), *(window.rfind(p) + 1 for p in (". ", "。", "！", "？", "! ", "? ")))
    return (window[:cut] if cut > max_chars // 2 else window).strip()


def transcript(msgs: Sequence[Mapping[str, str]]) -> str:
    """A conversation as plain text for a prompt ("User: ...", "Assistant: ...")."""
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in msgs)


def ask(content: str, max_new_tokens: int, cfg: Any, template_version: str, seed: int | None = None):
    """A one-turn request with the sampling settings of ``cfg``."""
    return GenerationRequest(
        [{"role": "user", "content": content}],
        max_new_tokens=max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        seed=cfg.seed if seed is None else seed,
        template_version=template_version,
    )


def check_output(
    text: str, finish_reason: str, *, keep_truncated: bool, min_chars: int = 1, max_chars: int | None = None
) -> str | None:
    """The first problem of a generated text (a reason name without prefix), or None."""
    if not text.strip():
        return "empty"
    if finish_reason == "length" and not keep_truncated:
        return "truncated"
    if has_control_token(text):
        return "control_token"
    if len(text.strip()) < min_chars:
        return "too_short"
    if max_chars is not None and len(text.strip()) > max_chars:
        return "too_long"
    return None


def screen_inputs(method: str, chunk: Sequence[Mapping], text_of: Callable[[Mapping], str]) -> tuple[list, list]:
    """Split off the items whose prompt text holds a ChatML control token (a web page quoting ``<|im_end|>``):
    no request can carry one, so they are rejected as ``input_control_token``."""
    ok, rejects = [], []
    for item in chunk:
        text = text_of(item)
        if has_control_token(text):
            rejects.append(rejected(method, str(item["id"]), "input_control_token", "", text))
        else:
            ok.append(item)
    return ok, rejects


def method_stage_config(method: str, cfg: Any, generator: Generator, **inputs: Any) -> dict:
    return {"method": method, "settings": dataclasses.asdict(cfg), "generator": generator_config(generator), **inputs}


def counts_by_lang(rows: Iterable[Mapping]) -> dict:
    counts: dict[str, int] = {}
    for row in rows:
        lang = row.get("lang") or "und"
        counts[lang] = counts.get(lang, 0) + 1
    return counts


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


@dataclass
class InstructionConfig:
    """Instruction synthesis from seed prompts (CPU demo defaults; raise ``num_seeds`` for real runs)."""

    num_seeds: int = 4
    seed: int = 0
    languages: tuple[str, ...] = ()  # only these seed languages (empty: all)
    seeds_path: str | None = None  # user JSONL of seeds (None: the chatterbot corpus)
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens_instruction: int = 96
    max_new_tokens_answer: int = 256
    min_instruction_chars: int = 8
    max_instruction_chars: int = 600
    min_answer_chars: int = 2
    max_answer_chars: int = 6000
    keep_truncated: bool = False  # keep texts cut off at max_new_tokens (only for tiny demo budgets)
    chunk_size: int = 16
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
        counters = chunk_counters(len(chunk), len(chunk), len(rows), rejects)
        counters["accepted_by_lang"] = counts_by_lang(rows)
        return rows, rejects, counters

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


# ----------------------------------------------------------------------------------------------------- repurpose

REPURPOSE_TEMPLATE_VERSION = "sft-repurpose-v1"
REPURPOSE_PROMPT = """Read the following text.

<text>
{excerpt}
</text>

Write one question in {language} that can be answered from the text alone, then answer it in {language}, using only \
information from the text. Use exactly this format and nothing else:
Question: <the question>
Answer: <the answer>"""
REPURPOSE_USER_TURN = "Read the text and answer the question.\n\nText:\n{excerpt}\n\nQuestion: {question}"
_QA = re.compile(
    r"^\W*question\W*?[:：]\s*(?P<question>.+?)\s*\n\s*\W*answer\W*?[:：]\s*(?P<answer>.+?)\s*$",
    flags=re.IGNORECASE | re.DOTALL,
)


@dataclass
class RepurposeConfig:
    """Data repurposing: curated documents -> grounded question/answer pairs (CPU demo defaults)."""

    input_dir: str = "data/curated/dedup"  # a DOCUMENT_SCHEMA stage folder
    num_documents: int = 4
    seed: int = 0
    min_chars: int = 1000  # only documents at least this long
    excerpt_chars: int = 1500
    exclude_domains: tuple[str, ...] = ("code",)
    languages: tuple[str, ...] = ()
    min_grounding: float = 0.6
    min_question_chars: int = 8
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256
    keep_truncated: bool = False
    chunk_size: int = 8
    template_version: str = REPURPOSE_TEMPLATE_VERSION


def parse_qa(text: str) -> tuple[str, str] | None:
    """(question, answer) from ``Question: ...\\nAnswer: ...`` (markdown bold and a full-width colon allowed)."""
    match = _QA.match(_PREAMBLE.sub("", text, count=1).strip())
    if not match:
        return None
    question, answer = match["question"].strip(" *"), match["answer"].strip(" *")
    if not question or not answer or re.search(r"\n\W*question\W*?[:：]", answer, flags=re.IGNORECASE):
        return None  # empty, or more than one pair
    return question, answer


def check_qa(text: str, finish_reason: str, excerpt: str, lang: str | None, cfg: RepurposeConfig):
    """(problem or None, question, answer, grounding)."""
    problem = check_output(text, finish_reason, keep_truncated=cfg.keep_truncated)
    if problem:
        return problem, "", "", 0.0
    parsed = parse_qa(text)
    if parsed is None:
        return "bad_format", "", "", 0.0
    question, answer = parsed
    if len(question) < cfg.min_question_chars:
        return "question_too_short", question, answer, 0.0
    score = grounding_score(answer, excerpt, lang)
    if score < cfg.min_grounding:
        return "ungrounded", question, answer, score
    return None, question, answer, score


def _repurpose_chunk(generator: Generator, cfg: RepurposeConfig) -> Callable:
    method = "repurpose"

    def process(chunk: list[Mapping]) -> tuple[list[dict], list[dict], dict]:
        docs, rejects = screen_inputs(method, chunk, lambda doc: doc["excerpt"])
        prompts = [REPURPOSE_PROMPT.format(excerpt=doc["excerpt"], language=language_name(doc["lang"])) for doc in docs]
        results = generator.generate([ask(p, cfg.max_new_tokens, cfg, cfg.template_version) for p in prompts])
        rows = []
        for doc, result in zip(docs, results):
            text = result.texts[0]
            problem, question, answer, score = check_qa(
                text, result.finish_reasons[0], doc["excerpt"], doc["lang"], cfg
            )
            user = REPURPOSE_USER_TURN.format(excerpt=doc["excerpt"], question=question)
            conversation = messages(("user", user), ("assistant", answer))
            if problem is None and validate_chat(conversation):
                problem = "invalid_chat"
            if problem:
                detail = {"grounding": round(score, 3), "question": question}
                rejects.append(rejected(method, doc["id"], problem, detail, text))
                continue
            meta = {
                "question": question,
                "grounding": round(score, 4),
                "excerpt_chars": len(doc["excerpt"]),
                "document_chars": doc["chars"],
                "document_source": doc.get("source"),
                "document_url": doc.get("url"),
            }
            rows.append(
                {
                    "id": record_id(method, doc["id"], question, answer),
                    "messages": conversation,
                    **provenance(result, method=method, lang=doc["lang"], source_id=doc["id"], meta=meta),
                }
            )
        counters = chunk_counters(len(chunk), len(chunk), len(rows), rejects)
        counters["accepted_by_lang"] = counts_by_lang(rows)
        return rows, rejects, counters

    return process


def run_repurpose(
    generator: Generator,
    out_dir: str,
    config: RepurposeConfig | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Data repurposing of ``config.input_dir`` into the stage folder ``out_dir``; returns the stage summary."""
    cfg = config or RepurposeConfig()
    docs, scan = sample_documents(
        cfg.input_dir, cfg.num_documents, cfg.seed,
        min_chars=cfg.min_chars, exclude_domains=cfg.exclude_domains, languages=cfg.languages, salt="repurpose",
    )  # fmt: skip
    items = []
    for doc in docs:
        rng = random.Random(f"excerpt/{cfg.seed}/{doc['id']}")
        items.append(
            {
                "id": doc["id"],
                "lang": doc["lang"],
                "excerpt": excerpt_of(doc["text"], cfg.excerpt_chars, rng),
                "chars": len(doc["text"]),
                "source": doc.get("source"),
                "url": doc.get("url"),
            }
        )
    stage_config = method_stage_config(
        "repurpose", cfg, generator, input=stage_fingerprint(cfg.input_dir), items=digest([i["id"] for i in items])
    )
    extra = {"method": "repurpose", "model_id": generator.model_id, "input": cfg.input_dir, **scan}
    return run_chunked_stage(
        out_dir, stage_config, items, _repurpose_chunk(generator, cfg), SFT_SCHEMA,
        chunk_size=cfg.chunk_size, extra=extra, log=log,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ constitutional

CONSTITUTIONAL_TEMPLATE_VERSION = "sft-constitutional-v1"
PRINCIPLES: dict[str, str] = {
    "harmless": "Do not help anyone hurt people or break the law: no instructions for violence, weapons, "
    "self-harm, crime or abuse; point to safe help instead.",
    "honest": "Do not make up facts, sources or abilities; say so when something is unknown or uncertain.",
    "helpful": "Answer the actual request directly, correctly and completely, in the language the user wrote in.",
    "respectful": "Be polite and fair: no insults, stereotypes, discrimination or demeaning language.",
    "privacy": "Do not reveal, guess or ask for private data about real people (addresses, phone numbers, "
    "ID numbers, passwords, health or financial details).",
}
CRITIQUE_PROMPT = """Here is a conversation between a user and an AI assistant.

<conversation>
{conversation}
</conversation>

Principles the assistant must follow:
{principles}

Critique the assistant's last reply against these principles. Name each principle it breaks (by its name in \
brackets) and explain why in one or two sentences; if it breaks none, say what could still be better. Be brief."""
REVISION_PROMPT = """Here is a conversation between a user and an AI assistant.

<conversation>
{conversation}
</conversation>

Principles the assistant must follow:
{principles}

A reviewer wrote this critique of the assistant's last reply:
<critique>
{critique}
</critique>

Rewrite the assistant's last reply so that it follows all the principles and fixes what the critique points out. \
Write it in {language}, as the assistant speaking to the user. Reply with the new reply only."""


@dataclass
class ConstitutionalConfig:
    """Critique and revise responses against ``PRINCIPLES`` (CPU demo defaults)."""

    input_dir: str = ""  # an SFT stage folder; empty: seed prompts answered by the teacher first
    seeds_path: str | None = None  # with no input_dir: a user JSONL of seeds (None: the chatterbot corpus)
    num_items: int = 4
    seed: int = 0
    languages: tuple[str, ...] = ()
    principles: tuple[str, ...] = ()  # ids from PRINCIPLES (empty: all)
    principles_per_item: int = 0  # a seeded subset per item (0: all of ``principles``)
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens_response: int = 256
    max_new_tokens_critique: int = 192
    max_new_tokens_revision: int = 320
    keep_truncated: bool = False
    keep_unchanged: bool = True  # keep a revision identical to the original (counted as ``unchanged``)
    chunk_size: int = 8
    template_version: str = CONSTITUTIONAL_TEMPLATE_VERSION

    def __post_init__(self) -> None:
        unknown = [p for p in self.principles if p not in PRINCIPLES]
        if unknown:
            raise ValueError(f"unknown principles {unknown}; choose from {', '.join(PRINCIPLES)}")


def principles_text(ids: Sequence[str]) -> str:
    return "\n".join(f"{i}. [{pid}] {PRINCIPLES[pid]}" for i, pid in enumerate(ids, 1))


def cited_principles(critique: str, ids: Sequence[str]) -> list[str]:
    """Principle ids the critique names."""
    lowered = critique.lower()
    return [pid for pid in ids if re.search(rf"\b{pid}", lowered)]


def _item_principles(cfg: ConstitutionalConfig, item_id: str) -> list[str]:
    ids = list(cfg.principles or PRINCIPLES)
    if 0 < cfg.principles_per_item < len(ids):
        ids = sorted(random.Random(f"principles/{cfg.seed}/{item_id}").sample(ids, cfg.principles_per_item))
        ids = [pid for pid in PRINCIPLES if pid in ids]
    return ids


def _constitutional_chunk(generator: Generator, cfg: ConstitutionalConfig) -> Callable:
    method = "constitutional"
    tv = cfg.template_version

    def check(text: str, finish: str) -> str | None:
        return check_output(text, finish, keep_truncated=cfg.keep_truncated)

    def process(chunk: list[Mapping]) -> tuple[list[dict], list[dict], dict]:
        items, rejects = screen_inputs(
            method, chunk, lambda item: transcript(item["prompt"]) + "\n" + (item.get("response") or "")
        )
        rows, unchanged = [], 0
        # Round 0 (seed prompts only): the teacher's own first response.
        need = [item for item in items if item.get("response") is None]
        first = generator.generate(
            [ask_messages(item["prompt"], cfg.max_new_tokens_response, cfg, tv) for item in need]
        )
        responses: dict[str, tuple[str, GenerationResult | None]] = {}
        for item, result in zip(need, first):
            problem = check(result.texts[0], result.finish_reasons[0])
            if problem:
                rejects.append(rejected(method, item["id"], f"response_{problem}", "", result.texts[0]))
            else:
                responses[item["id"]] = (result.texts[0].strip(), result)
        for item in items:
            if item.get("response") is not None:
                responses[item["id"]] = (item["response"], None)
        todo = [item for item in items if item["id"] in responses]

        def conversation(item: Mapping) -> list[dict]:
            return [*item["prompt"], {"role": "assistant", "content": responses[item["id"]][0]}]

        # Round 1: critique.
        critiques = generator.generate(
            [
                ask(
                    CRITIQUE_PROMPT.format(
                        conversation=transcript(conversation(item)),
                        principles=principles_text(item["principles"]),
                    ),
                    cfg.max_new_tokens_critique,
                    cfg,
                    tv,
                )
                for item in todo
            ]
        )
        revise = []
        for item, result in zip(todo, critiques):
            problem = check(result.texts[0], result.finish_reasons[0])
            if problem:
                rejects.append(rejected(method, item["id"], f"critique_{problem}", "", result.texts[0]))
            else:
                revise.append((item, result.texts[0].strip(), result))
        # Round 2: revision.
        revisions = generator.generate(
            [
                ask(
                    REVISION_PROMPT.format(
                        conversation=transcript(conversation(item)),
                        principles=principles_text(item["principles"]),
                        critique=critique,
                        language=language_name(item.get("lang")),
                    ),
                    cfg.max_new_tokens_revision,
                    cfg,
                    tv,
                )
                for item, critique, _ in revise
            ]
        )
        for (item, critique, critique_result), result in zip(revise, revisions):
            revised = strip_wrapping(result.texts[0], ("revised reply", "new reply", "reply", "assistant"))
            original, first_result = responses[item["id"]]
            problem = check(revised, result.finish_reasons[0])
            changed = normalized(revised) != normalized(original)
            if problem is None and not changed and not cfg.keep_unchanged:
                problem = "unchanged"
            final = [*item["prompt"], {"role": "assistant", "content": revised}]
            if problem is None and validate_chat(final):
                problem = "invalid_chat"
            if problem:
                reason = problem if problem in ("unchanged", "invalid_chat") else f"revision_{problem}"
                rejects.append(rejected(method, item["id"], reason, {"critique": critique}, result.texts[0]))
                continue
            unchanged += not changed
            meta = {
                "principle_ids": item["principles"],
                "principles_cited": cited_principles(critique, item["principles"]),
                "critique": critique,
                "original_response": original,
                "original_source": "teacher" if first_result is not None else item.get("input_method"),
                "changed": changed,
                "critique_model": critique_result.model_id,
            }
            rows.append(
                {
                    "id": record_id(method, item["id"], revised),
                    "messages": final,
                    **provenance(result, method=method, lang=item.get("lang"), source_id=item["id"], meta=meta),
                }
            )
        counters = chunk_counters(len(chunk), len(chunk), len(rows), rejects)
        counters.update(unchanged=unchanged, changed=len(rows) - unchanged, accepted_by_lang=counts_by_lang(rows))
        return rows, rejects, counters

    return process


def ask_messages(
    msgs: Sequence[Mapping[str, str]], max_new_tokens: int, cfg: Any, template_version: str, n: int = 1
) -> GenerationRequest:
    """A request continuing the conversation ``msgs`` (ending with a user turn), ``n`` samples."""
    return GenerationRequest(
        list(msgs),
        max_new_tokens=max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        seed=cfg.seed,
        n=n,
        template_version=template_version,
    )


def run_constitutional(
    generator: Generator,
    out_dir: str,
    config: ConstitutionalConfig | None = None,
    seeds: Sequence[Mapping] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Critique-and-revise into the stage folder ``out_dir``: responses of ``config.input_dir`` (an SFT stage), or
    of seed prompts (``seeds``, else ``load_seeds(config.seeds_path)``) answered by the teacher first."""
    cfg = config or ConstitutionalConfig()
    items: list[dict] = []
    extra: dict[str, Any] = {"method": "constitutional", "model_id": generator.model_id}
    if cfg.input_dir:
        picked, scan = sample_sft_rows(cfg.input_dir, cfg.num_items, cfg.seed, cfg.languages)
        extra.update(input=cfg.input_dir, **scan)
        inputs = {"input": stage_fingerprint(cfg.input_dir)}
        for row in picked:
            msgs = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
            items.append(
                {"id": row["id"], "lang": row.get("lang"), "prompt": msgs[:-1], "response": msgs[-1]["content"],
                 "input_method": row.get("method")}
            )  # fmt: skip
    else:
        pool = list(seeds) if seeds is not None else load_seeds(cfg.seeds_path)
        for s in sample_seeds(pool, cfg.num_items, cfg.seed, cfg.languages):
            items.append({"id": s["id"], "lang": s.get("lang"), "prompt": seed_messages(s), "response": None})
        inputs = {"seeds": digest([(i["id"], i["prompt"]) for i in items])}
    for item in items:
        item["principles"] = _item_principles(cfg, item["id"])
    inputs["items"] = digest([i["id"] for i in items])
    extra["unchanged_policy"] = "kept" if cfg.keep_unchanged else "rejected"
    return run_chunked_stage(
        out_dir, method_stage_config("constitutional", cfg, generator, **inputs), items,
        _constitutional_chunk(generator, cfg), SFT_SCHEMA, chunk_size=cfg.chunk_size, extra=extra, log=log,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------- CLI

METHODS: dict[str, tuple[type, Callable]] = {
    "instruction": (InstructionConfig, run_instruction),
    "repurpose": (RepurposeConfig, run_repurpose),
    "constitutional": (ConstitutionalConfig, run_constitutional),
}


def parse_settings(cls: type, pairs: Sequence[str]) -> dict:
    """``key=value`` overrides of a config dataclass, typed like the field's default (tuples: comma lists)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE with KEY one of {', '.join(fields)}")
        default = fields[key].default
        if isinstance(default, bool):
            out[key] = value.lower() in ("1", "true", "yes", "on")
        elif isinstance(default, tuple):
            out[key] = tuple(v for v in value.split(",") if v)
        elif isinstance(default, int):
            out[key] = int(value)
        elif isinstance(default, float):
            out[key] = float(value)
        else:
            out[key] = value or None
    return out


def add_generator_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="transformers", choices=("transformers", "openai", "vllm"))
    parser.add_argument("--model", default=None, help="checkpoint folder / server model name (default: the teacher)")
    parser.add_argument("--base-url", default=None, help="openai backend: server URL ending in /v1")
    parser.add_argument("--batch-size", type=int, default=8, help="transformers backend: rows per batch")
    parser.add_argument("--cache-dir", default=None, help="request cache (default: <output>.gencache)")
    parser.add_argument("--no-cache", action="store_true", help="do not cache requests")


def make_cli_generator(args: argparse.Namespace) -> Generator:
    from synth.generate import GenerationError, make_generator
    from synth.teacher import TeacherUnavailable

    cache = None if args.no_cache else (args.cache_dir or f"{args.output.rstrip('/')}.gencache")
    try:
        return make_generator(
            args.backend, args.model, cache_dir=cache, base_url=args.base_url, batch_size=args.batch_size
        )
    except (GenerationError, TeacherUnavailable) as exc:
        raise SystemExit(f"error: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", choices=sorted(METHODS))
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


if __name__ == "__main__":
    raise SystemExit(main())
