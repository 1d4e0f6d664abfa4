"""Seed prompts for synthesis: the multilingual chatterbot-corpus conversations, or the user's own JSONL.

The corpus comes from the PyPI wheel ``chatterbot-corpus`` (BSD-3-Clause), fetched once with ``pip download
--no-deps`` (never installed or imported), its sha256 checked, and its YAML files
``chatterbot_corpus/data/<language>/<topic>.yml`` read straight from the zip (``yaml.safe_load``; each has
``categories`` and ``conversations``, lists of turns). Every conversation becomes a seed record::

    {"id": "cb-...", "lang": "de", "category": "food", "turns": ["Was isst du?", "..."],
     "source": "chatterbot-corpus==1.3.3:german/food.yml#3", "corpus_language": "german"}

cached as ``seeds.jsonl`` (plus ``manifest.json`` with counts and skipped files) under
``~/.cache/qwen2-recipe/seeds/chatterbot-corpus-1.3.3/`` (``$QWEN2_CACHE`` moves the root, as for the tokenizer).
Files that do not parse, folders without an ISO 639-1 code and malformed conversations are skipped with a logged
reason. A user JSONL of ``{"lang", "text"}`` or ``{"messages": [...]}`` rows works in place of the corpus.

    python -m synth.seeds --setup                # fetch and parse once (idempotent); prints counts per language
    python -m synth.seeds --show 3 --lang zh     # print a few seeds
    python -m synth.seeds --path my_seeds.jsonl --show 5
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import tempfile
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pipelines.tokenizer import DEFAULT_CACHE
from pipelines.wheels import pip_download, sha256_file
from synth.records import record_id

log = logging.getLogger(__name__)

WHEEL_NAME = "chatterbot-corpus"
WHEEL_VERSION = "1.3.3"
WHEEL_FILE = "chatterbot_corpus-1.3.3-py2.py3-none-any.whl"
WHEEL_SHA256 = "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154"
DATA_PREFIX = "chatterbot_corpus/data/"
SEEDS_FILE = "seeds.jsonl"
MANIFEST_FILE = "manifest.json"

# The corpus's language folders -> ISO 639-1. Hinglish (Hindi-English code-mixing in Latin script) has no code of
# its own and is skipped; traditional Chinese is ``zh`` (``corpus_language`` keeps the folder name).
CORPUS_LANGUAGES: dict[str, str] = {
    "bengali": "bn", "chinese": "zh", "dutch": "nl", "english": "en", "french": "fr", "german": "de",
    "hebrew": "he", "hindi": "hi", "indonesian": "id", "italian": "it", "japanese": "ja", "korean": "ko",
    "marathi": "mr", "oriya": "or", "persian": "fa", "portuguese": "pt", "russian": "ru", "spanish": "es",
    "swedish": "sv", "tamil": "ta", "telugu": "te", "thai": "th", "traditionalchinese": "zh", "turkish": "tr",
    "ukrainian": "uk", "urdu": "ur", "yoruba": "yo",
}  # fmt: skip

# English names of languages, for prompt templates ("Write it in German").
LANGUAGE_NAMES: dict[str, str] = {
    "ar": "Arabic", "bn": "Bengali", "cs": "Czech", "da": "Danish", "de": "German", "el": "Greek",
    "en": "English", "es": "Spanish", "fa": "Persian", "fi": "Finnish", "fr": "French", "he": "Hebrew",
    "hi": "Hindi", "hu": "Hungarian", "id": "Indonesian", "it": "Italian", "ja": "Japanese", "km": "Khmer",
    "ko": "Korean", "lo": "Lao", "mr": "Marathi", "ms": "Malay", "my": "Burmese", "nl": "Dutch", "or": "Odia",
    "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sv": "Swedish", "ta": "Tamil",
    "te": "Telugu", "th": "Thai", "tl": "Tagalog", "tr": "Turkish", "uk": "Ukrainian", "ur": "Urdu",
    "vi": "Vietnamese", "yo": "Yoruba", "zh": "Chinese",
}  # fmt: skip


class SeedsUnavailable(RuntimeError):
    """The seed corpus cannot be fetched or read; the message says what to do."""


def language_name(lang: str | None) -> str:
    """English name of an ISO 639-1 code (the code itself when unknown; "the user's language" for None)."""
    if not lang:
        return "the user's language"
    return LANGUAGE_NAMES.get(lang, lang)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The seeds cache folder: ``cache_dir``, else ``$QWEN2_CACHE/seeds``, else the tokenizer's root + ``seeds``."""
    if cache_dir:
        return Path(cache_dir)
    return Path(os.environ.get("QWEN2_CACHE") or DEFAULT_CACHE) / "seeds"


def default_seeds_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    return cache_root(cache_dir) / f"{WHEEL_NAME}-{WHEEL_VERSION}"


def download_wheel(dest: str | os.PathLike, expected_sha256: str = WHEEL_SHA256) -> Path:
    """``pip download`` the corpus wheel into ``dest`` and check its sha256; the wheel's path."""
    error = pip_download([f"{WHEEL_NAME}=={WHEEL_VERSION}"], dest)
    wheel = Path(dest) / WHEEL_FILE
    if error is not None or not wheel.exists():
        raise SeedsUnavailable(
            f"could not download {WHEEL_NAME}=={WHEEL_VERSION} from the package index ({error}); "
            "pass your own seeds with load_seeds(path) / --path (JSONL of {lang, text} or {messages})"
        )
    check_wheel(wheel, expected_sha256)
    return wheel


def check_wheel(wheel: str | os.PathLike, expected_sha256: str = WHEEL_SHA256) -> None:
    digest = sha256_file(wheel)
    if digest != expected_sha256:
        raise SeedsUnavailable(f"{Path(wheel).name} has sha256 {digest}, expected {expected_sha256}; refusing it")


def _turn_text(value) -> str | None:
    """A turn as text: strings as they are, numbers as written; None for anything else (YAML booleans, lists)."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def parse_corpus_file(name: str, data: bytes) -> tuple[list[dict], Counter]:
    """Seed records of one ``<language>/<topic>.yml`` file and the counts of conversations skipped, by reason.

    Raises ``ValueError`` for a file that cannot be used at all (bad YAML, wrong layout, unknown language).
    """
    import yaml

    rel = name[len(DATA_PREFIX) :] if name.startswith(DATA_PREFIX) else name
    folder = rel.split("/")[0]
    lang = CORPUS_LANGUAGES.get(folder)
    if lang is None:
        raise ValueError(f"language folder {folder!r} has no ISO 639-1 code")
    try:
        doc = yaml.safe_load(data.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f"not valid YAML: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from exc
    if not isinstance(doc, Mapping) or not isinstance(doc.get("conversations"), list):
        raise ValueError("no 'conversations' list")
    categories = doc.get("categories") or []
    if not isinstance(categories, list):
        categories = [categories]
    category = str(categories[0]) if categories else Path(rel).stem
    skipped: Counter = Counter()
    records = []
    for index, conversation in enumerate(doc["conversations"]):
        if not isinstance(conversation, list) or not conversation:
            skipped["not_a_list_of_turns"] += 1
            continue
        turns = [_turn_text(t) for t in conversation]
        if any(t is None for t in turns):
            skipped["non_text_turn"] += 1
            continue
        if not turns[0]:
            skipped["empty_first_turn"] += 1
            continue
        source = f"{WHEEL_NAME}=={WHEEL_VERSION}:{rel}#{index}"
        records.append(
            {
                "id": "cb-" + record_id("chatterbot-seed", source),
                "lang": lang,
                "category": category,
                "turns": turns,
                "source": source,
                "corpus_language": folder,
            }
        )
    return records, skipped


def parse_wheel(wheel: str | os.PathLike) -> tuple[list[dict], dict]:
    """All seed records of the corpus wheel, in file order, and a manifest (counts, skipped files and why)."""
    records: list[dict] = []
    skipped_files: dict[str, str] = {}
    skipped_conversations: Counter = Counter()
    with zipfile.ZipFile(wheel) as zf:
        names = sorted(n for n in zf.namelist() if n.startswith(DATA_PREFIX) and n.endswith((".yml", ".yaml")))
        for name in names:
            try:
                file_records, skipped = parse_corpus_file(name, zf.read(name))
            except ValueError as exc:
                skipped_files[name[len(DATA_PREFIX) :]] = str(exc)
                log.warning("skipping %s: %s", name, exc)
                continue
            records.extend(file_records)
            skipped_conversations.update(skipped)
    manifest = {
        "package": f"{WHEEL_NAME}=={WHEEL_VERSION}",
        "wheel_sha256": WHEEL_SHA256,
        "files": len(names),
        "seeds": len(records),
        "languages": dict(sorted(Counter(r["lang"] for r in records).items())),
        "skipped_files": skipped_files,
        "skipped_conversations": dict(sorted(skipped_conversations.items())),
    }
    return records, manifest


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def setup_seeds(cache_dir: str | os.PathLike | None = None, wheel: str | os.PathLike | None = None) -> Path:
    """Fetch (or take ``wheel``), parse and cache the corpus seeds; returns the seeds folder. A no-op when done."""
    target = default_seeds_dir(cache_dir)
    if (target / MANIFEST_FILE).exists() and (target / SEEDS_FILE).exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            wheel = download_wheel(tmp)
        else:
            check_wheel(wheel)
        records, manifest = parse_wheel(wheel)
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    _write_atomic(target / SEEDS_FILE, lines)
    _write_atomic(target / MANIFEST_FILE, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")  # commit
    return target


def seeds_manifest(cache_dir: str | os.PathLike | None = None) -> dict | None:
    path = default_seeds_dir(cache_dir) / MANIFEST_FILE
    return json.loads(path.read_text()) if path.exists() else None


def _user_seed(row: Mapping, line_no: int, path: str) -> dict:
    """A seed record from one row of a user JSONL ({lang, text} or {messages}); ValueError when unusable."""
    if "messages" in row:
        from synth.llm.chat import validate_chat

        msgs = row["messages"]
        problems = validate_chat(msgs, final_role="user")
        if problems and not validate_chat(msgs, final_role="assistant"):
            msgs = list(msgs)[:-1]  # a finished conversation: its prompt is everything up to the last user turn
            problems = validate_chat(msgs, final_role="user")
        if problems:
            raise ValueError("; ".join(problems))
        msgs = [{"role": m["role"], "content": m["content"]} for m in msgs]
        turns = [m["content"] for m in msgs if m["role"] != "system"]
        record = {"messages": msgs, "turns": turns}
    elif isinstance(row.get("text"), str) and row["text"].strip():
        record = {"turns": [row["text"].strip()]}
    else:
        raise ValueError("needs a non-empty 'text' or a 'messages' list")
    lang = row.get("lang")
    record.update(
        id=str(row.get("id") or "user-" + record_id("user-seed", path, line_no, record["turns"])),
        lang=lang if isinstance(lang, str) and lang else None,
        category=str(row.get("category") or "user"),
        source=f"{path}#{line_no}",
    )
    return record


def read_user_seeds(path: str | os.PathLike) -> list[dict]:
    """Seed records of a user JSONL; bad lines are skipped with a logged reason."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, Mapping):
                    raise ValueError("not a JSON object")
                records.append(_user_seed(row, line_no, str(path)))
            except ValueError as exc:
                log.warning("%s:%d: skipping seed: %s", path, line_no, exc)
    return records


def load_seeds(path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """Seed records: the user's JSONL at ``path``, else the cached corpus (set up on first use)."""
    if path is not None:
        path = Path(path)
        if path.is_dir():  # a seeds cache folder
            path = path / SEEDS_FILE
        if path.name == SEEDS_FILE and (path.parent / MANIFEST_FILE).exists():
            with open(path, encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        return read_user_seeds(path)
    folder = setup_seeds(cache_dir)
    with open(folder / SEEDS_FILE, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def seed_prompt(seed: Mapping) -> str:
    """The seed's opening user message (what a user said to the assistant)."""
    if seed.get("messages"):
        return next(m["content"] for m in reversed(seed["messages"]) if m["role"] == "user")
    return seed["turns"][0]


def seed_messages(seed: Mapping) -> list[dict]:
    """The seed as a generation prompt: its messages up to the last user turn, or its first turn as a user message."""
    if seed.get("messages"):
        return [dict(m) for m in seed["messages"]]
    return [{"role": "user", "content": seed["turns"][0]}]


def sample_seeds(seeds: Iterable[Mapping], n: int, seed: int = 0, languages: Sequence[str] | None = None) -> list[dict]:
    """A seeded sample of ``n`` seeds, balanced over languages: languages take turns (in a seeded order) and each
    gives its next seed, so every language gets one before any gets two. Seeds with the same (lang, prompt) count
    once; ``languages`` keeps only those (None or empty: all; seeds without a language form their own group)."""
    rng = random.Random(f"sample-seeds/{seed}")
    wanted = set(languages or ())
    groups: dict[str, list[dict]] = defaultdict(list)
    seen: set[tuple] = set()
    for s in seeds:
        lang = s.get("lang") or ""
        if wanted and lang not in wanted:
            continue
        key = (lang, " ".join(seed_prompt(s).lower().split()))
        if key in seen:
            continue
        seen.add(key)
        groups[lang].append(dict(s))
    order = sorted(groups)
    rng.shuffle(order)
    for lang in order:
        random.Random(f"sample-seeds/{seed}/{lang}").shuffle(groups[lang])
    picked: list[dict] = []
    depth = 0
    while len(picked) < n and any(depth < len(groups[lang]) for lang in order):
        for lang in order:
            if depth < len(groups[lang]) and len(picked) < n:
                picked.append(groups[lang][depth])
        depth += 1
    return picked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setup", action="store_true", help="fetch and parse the corpus into the cache")
    parser.add_argument("--cache-dir", default=None, help="seeds cache root (default: $QWEN2_CACHE/seeds)")
    parser.add_argument("--path", default=None, help="a user JSONL of seeds instead of the corpus")
    parser.add_argument("--show", type=int, default=0, help="print this many sampled seeds")
    parser.add_argument("--lang", action="append", default=None, help="only these languages (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if args.setup or args.path is None:
            folder = setup_seeds(args.cache_dir)
            manifest = seeds_manifest(args.cache_dir) or {}
            print(f"{folder}: {manifest.get('seeds', 0)} seeds from {manifest.get('package')}")
            for lang, count in manifest.get("languages", {}).items():
                print(f"  {lang}  {language_name(lang):<12} {count}")
            for name, reason in manifest.get("skipped_files", {}).items():
                print(f"  skipped {name}: {reason}")
        seeds = load_seeds(args.path, args.cache_dir)
    except (SeedsUnavailable, OSError) as exc:
        print(f"error: {exc}")
        return 1
    for s in sample_seeds(seeds, args.show, args.seed, args.lang):
        print(json.dumps(s, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
