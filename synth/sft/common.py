"""What the SFT methods, ``synth.preference`` and ``synth.rephrase`` share: text checks (scripts, content units,
grounding, copies, control tokens, wrapping), sampling of seeds, documents and SFT rows, building requests and
checking answers, stage configs, and the command-line helpers (the generator flags)."""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import random
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from pipelines.shards import SUCCESS_FILE, input_fingerprint, iter_stage_rows, join, list_shards, read_json
from synth.llm.base import GenerationRequest, Generator
from synth.llm.chat import CONTROL_TOKENS, validate_chat
from synth.llm.openai_backend import BASE_URL_HELP, CONCURRENCY_HELP
from synth.records import chunk_counters, rejected

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
PREAMBLE = re.compile(
    r"^\s*(?:certainly|sure|of course|okay|ok|absolutely|here(?: is|'s| are))\b[^\n]*[:：]\s*\n", re.IGNORECASE
)


def strip_wrapping(text: str, labels: Sequence[str] = ()) -> str:
    """Trim whitespace, a chat lead-in line ("Sure! Here is ...:"), a leading ``Label:`` (``labels``, markdown
    bold allowed) and wrapping quotes (a pair, or a lone opening quote)."""
    text = PREAMBLE.sub("", text, count=1).strip()
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
    return {"method": method, "settings": cfg.model_dump(), "generator": generator_config(generator), **inputs}


def counts_by_lang(rows: Iterable[Mapping]) -> dict:
    counts: dict[str, int] = {}
    for row in rows:
        lang = row.get("lang") or "und"
        counts[lang] = counts.get(lang, 0) + 1
    return counts


def chunk_outcome(
    items: int, samples: int, rows: list[dict], rejects: list[dict], **extra: Any
) -> tuple[list[dict], list[dict], dict]:
    """What a chunk function returns: its rows, its rejections and the standard counters (``extra`` added, the
    accepted rows counted per language)."""
    counters = chunk_counters(items, samples, len(rows), rejects) | extra
    counters["accepted_by_lang"] = counts_by_lang(rows)
    return rows, rejects, counters


def request_seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index) % (2**31)


def text_key(text: str) -> str:
    return " ".join(text.split())


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


def add_generator_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="transformers", choices=("transformers", "openai", "vllm"))
    parser.add_argument("--model", default=None, help="checkpoint folder / server model name (default: the teacher)")
    parser.add_argument("--base-url", default=None, help=BASE_URL_HELP)
    parser.add_argument("--concurrency", type=int, default=8, help=CONCURRENCY_HELP)
    parser.add_argument("--batch-size", type=int, default=8, help="transformers backend: rows per batch")
    parser.add_argument("--cache-dir", default=None, help="request cache (default: <output>.gencache)")
    parser.add_argument("--no-cache", action="store_true", help="do not cache requests")


def make_cli_generator(args: argparse.Namespace, output: str | None = None) -> Generator:
    """The teacher of ``add_generator_args``'s flags; its request cache is ``<output>.gencache`` unless named."""
    from synth.llm.base import GenerationError, TeacherUnavailable
    from synth.llm.generate import make_generator

    output = output or args.output
    cache = None if args.no_cache else (args.cache_dir or f"{output.rstrip('/')}.gencache")
    try:
        return make_generator(
            args.backend,
            args.model,
            cache_dir=cache,
            base_url=args.base_url,
            batch_size=args.batch_size,
            concurrency=args.concurrency,
        )
    except (GenerationError, TeacherUnavailable) as exc:
        raise SystemExit(f"error: {exc}") from exc
