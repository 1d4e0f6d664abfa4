"""The data side of ``training.evaluate``: the held-out corpus slice for perplexity, the training sources, the
held-out prompts for the reward-model win rate, and the decontamination of every evaluation item.

**Held-out corpus slice.** ``pipelines.mixing index`` marks a fixed slice of the curated documents ``heldout`` (a
hash of the document's lineage id; a synthetic rephrasing follows its source document) and ``select`` gives a held-out
document no copy in any training mix (``copies_for``: 0 unless the split is ``validation``), so neither pretraining
stage saw them. The perplexity documents are those rows of the mixture index, per language the first ones in a
seeded hash order of their ids: the same documents for every model and every run.

**Training sources.** Every row a run may have trained on: the pretraining mixes' documents (``text``, ``bucket``;
``pipelines.mixing``: every row is a trained copy), SFT conversations (``messages``), preference pairs
(``prompt``/``chosen``/``rejected``), demonstrations, online-DPO episodes (``training.episodes``: the chosen and
rejected samples of the kept pairs are trained on). SFT rows and pairs are read with the trainers' own
loaders (``training.chat_data.load_sources``, ``training.preference_data.load_pairs``), so a row has the id its
trainer gave it, and rows a trainer excluded are not counted as trained on. A row whose id is held out
(``chat_data.is_heldout``, the rule SFT, the reward model and DPO all use) under ``heldout_fraction`` -- the smallest
fraction of those runs, so the row was held out by every one -- was trained on by none: its prompt may serve as a
win-rate prompt, and it is
left out of the decontamination index.

**Decontamination.** ``synth.decontam``'s 13-gram test (the same tokens: NFKC, lower case, CJK characters alone;
the same 64-bit hashes), turned around: the n-grams of the evaluation items (a few thousand) are indexed and every
training row is streamed past them. An item sharing an n-gram with a trained row overlaps it. A text shorter than n
tokens (a short prompt such as "How are you?") has no n-gram: it overlaps when it equals a whole trained turn.
Overlapping items are counted per task and dropped, with the first shared n-gram and the training row for audit.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SOURCE_KINDS = ("sft", "pairs", "episodes", "documents")


def _order(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"eval/{seed}/{key}".encode(), digest_size=8).digest(), "big")


# ---- the held-out corpus slice ----------------------------------------------------------------------------------


def heldout_documents(
    index_dir: str, per_language: int, seed: int = 0, languages: Sequence[str] = ()
) -> dict[str, list[dict]]:
    """``{lang: [{id, text}]}``: up to ``per_language`` held-out documents of the mixture index per language
    (``languages``: only those; empty: every language of the slice), streamed (a heap per language)."""
    from pipelines.shards import SUCCESS_FILE, iter_stage_rows, join, read_json

    summary = read_json(join(index_dir, SUCCESS_FILE))
    if summary is None:
        raise ValueError(f"{index_dir} is not a finished mixture index (materialize mixture_index first)")
    heaps: dict[str, list[tuple[int, str, str]]] = {}
    for row in iter_stage_rows(index_dir, ["id", "text", "lang", "bucket", "heldout"]):
        if not row["heldout"] or not (row["text"] or "").strip():
            continue
        lang = row["lang"] or row["bucket"] or "unknown"
        if languages and lang not in languages:
            continue
        heap = heaps.setdefault(lang, [])
        entry = (-_order(seed, row["id"]), row["id"], row["text"])
        if len(heap) < per_language:
            heapq.heappush(heap, entry)
        elif entry > heap[0]:
            heapq.heapreplace(heap, entry)
    return {
        lang: [{"id": doc_id, "text": text} for _, doc_id, text in sorted(heap, reverse=True)]
        for lang, heap in sorted(heaps.items())
    }


# ---- training sources -------------------------------------------------------------------------------------------


def source_kind(path: str) -> str:
    """``sft`` (a ``messages`` column), ``pairs`` (``prompt``, ``chosen``, ``rejected``) or ``episodes`` (online
    DPO: ``prompt``, ``response``, ``pair_kept``, ``role``) from the first file."""
    from training.chat_data import parquet_files

    if path.endswith((".jsonl", ".json")):
        with open(path, encoding="utf-8") as f:
            first = next((json.loads(line) for line in f if line.strip()), {})
        names = set(first) if isinstance(first, dict) else set()
    else:
        import pyarrow.parquet as pq

        files = parquet_files(path)
        if not files:
            raise ValueError(f"training source {path}: no .parquet files")
        names = set(pq.read_schema(files[0]).names)
    if "messages" in names:
        return "sft"
    if {"prompt", "chosen", "rejected"} <= names:
        return "pairs"
    if {"prompt", "response", "pair_kept", "role"} <= names:
        return "episodes"
    if {"id", "text", "bucket"} <= names:
        return "documents"
    raise ValueError(
        f"training source {path}: neither messages, prompt/chosen/rejected nor mixture documents ({sorted(names)})"
    )


@dataclass
class TrainingRow:
    source: str
    id: str
    turns: list[str]  # every message's content, as trained (prompt, and both replies of a pair)
    prompt: list[dict]  # the conversation up to its last user turn
    heldout: bool  # held out by every post-training run: its prompt may be a win-rate prompt
    trained: bool  # some run took a gradient on it


def _episode_rows(name: str, path: str) -> Iterator[TrainingRow]:
    """Online-DPO samples: the chosen and rejected replies of kept pairs were trained on, the rest only sampled."""
    import pyarrow.parquet as pq

    from training.chat_data import parquet_files

    for f in parquet_files(path):
        for row in pq.read_table(
            f, columns=["episode", "prompt_id", "prompt", "sample_index", "response", "pair_kept", "role"]
        ).to_pylist():
            prompt = [{"role": m["role"], "content": m["content"]} for m in row["prompt"] or []]
            trained = bool(row["pair_kept"]) and row["role"] in ("chosen", "rejected")
            rid = f"{row['prompt_id']}/episode-{row['episode']}/{row['sample_index']}"
            turns = [m["content"] for m in prompt] + [row["response"] or ""]
            yield TrainingRow(name, rid, turns, prompt, heldout=False, trained=trained)


def _document_rows(name: str, path: str) -> Iterator[TrainingRow]:
    """A pretraining mix: every row is a document copy some pretraining step trained on (a validation mix's rows are
    not trained on); a repeated copy is the same text, read once."""
    import pyarrow.parquet as pq

    from training.chat_data import parquet_files

    for f in parquet_files(path):
        for batch in pq.ParquetFile(f).iter_batches(columns=["id", "text", "heldout", "copy"], batch_size=1024):
            for row in batch.to_pylist():
                if not row["copy"]:
                    trained = not row["heldout"]
                    yield TrainingRow(name, row["id"], [row["text"] or ""], [], heldout=False, trained=trained)


def training_rows(name: str, path: str, heldout_fraction: float) -> Iterator[TrainingRow]:
    """The rows of one source as its trainer reads them (rows it excludes are left out)."""
    from training.chat_data import is_heldout, load_sources
    from training.preference_data import load_pairs

    kind = source_kind(path)
    if kind == "episodes":
        yield from _episode_rows(name, path)
        return
    if kind == "documents":
        yield from _document_rows(name, path)
        return
    if kind == "sft":
        examples, _ = load_sources({name: path})
        for e in examples:
            last_user = max((i for i, m in enumerate(e.messages) if m["role"] == "user"), default=-1)
            turns = [m["content"] for m in e.messages]
            held = is_heldout(e.id, heldout_fraction)
            yield TrainingRow(name, e.id, turns, e.messages[: last_user + 1], held, not held)
        return
    pairs, _ = load_pairs({name: path})
    for p in pairs:
        turns = [m["content"] for m in (*p.prompt, *p.chosen, *p.rejected)]
        held = is_heldout(p.id, heldout_fraction)
        yield TrainingRow(name, p.id, turns, p.prompt, held, not held)


def heldout_prompts(rows: Iterable[TrainingRow], count: int, seed: int = 0) -> list[dict]:
    """Up to ``count`` distinct prompts of held-out rows (``{id, source, messages}``), in a seeded hash order."""
    chosen: dict[str, tuple[int, dict]] = {}
    for row in rows:
        if not row.heldout or not row.prompt or row.prompt[-1]["role"] != "user":
            continue
        key = json.dumps(row.prompt, sort_keys=True, ensure_ascii=False)
        entry = (_order(seed, f"{row.source}/{row.id}"), {"id": row.id, "source": row.source, "messages": row.prompt})
        if key not in chosen or entry[0] < chosen[key][0]:
            chosen[key] = entry
    return [p for _, p in sorted(chosen.values(), key=lambda e: e[0])[:count]]


# ---- decontamination --------------------------------------------------------------------------------------------


class Overlaps:
    """Which evaluation items share an n-gram (or, for a text shorter than n tokens, a whole turn) with trained
    rows. ``items``: ``(key, texts)``; ``scan`` the training rows; ``found`` maps item key -> the first overlap."""

    def __init__(self, items: Iterable[tuple[str, Sequence[str]]], n: int = 13):
        import xxhash

        from synth.decontam import ngram_hashes, ngram_tokens

        self.n = n
        self._tokens, self._hashes, self._xxh = ngram_tokens, ngram_hashes, xxhash.xxh64_intdigest
        self.ngrams: dict[int, list[str]] = {}  # n-gram hash -> item keys
        self.whole: dict[int, list[str]] = {}  # hash of a short text's tokens -> item keys
        self.found: dict[str, dict] = {}
        self.rows_scanned = 0
        for key, texts in items:
            for text in texts:
                tokens = ngram_tokens(text)
                if len(tokens) >= n:
                    for _, h in ngram_hashes(tokens, n):
                        keys = self.ngrams.setdefault(h, [])
                        if key not in keys:
                            keys.append(key)
                elif tokens:
                    self.whole.setdefault(self._xxh(" ".join(tokens)), []).append(key)

    def _mark(self, keys: Iterable[str], row: TrainingRow, how: str, text: str) -> None:
        for key in keys:
            if key not in self.found:
                self.found[key] = {"source": row.source, "row_id": row.id, "match": how, "text": text[:300]}

    def scan(self, rows: Iterable[TrainingRow]) -> None:
        """Mark the items that overlap a row trained on (held-out and only-sampled rows are skipped)."""
        for row in rows:
            if not row.trained:
                continue
            self.rows_scanned += 1
            tokens = self._tokens("\n\n".join(t for t in row.turns if t))
            for i, h in self._hashes(tokens, self.n):
                if h in self.ngrams:
                    self._mark(self.ngrams[h], row, f"{self.n}-gram", " ".join(tokens[i : i + self.n]))
            if self.whole:
                for turn in row.turns:
                    turn_tokens = self._tokens(turn)
                    if 0 < len(turn_tokens) < self.n:
                        self._mark(self.whole.get(self._xxh(" ".join(turn_tokens)), ()), row, "whole turn", turn)


def decontaminate(
    items_by_task: Mapping[str, list], sources: Mapping[str, str], heldout_fraction: float, n: int = 13
) -> tuple[dict[str, list], dict]:
    """Drop every item (``.id`` and ``.texts``, or dicts with ``id`` and ``text``) that overlaps a trained row of
    ``sources``; the kept items per task and a report (per task: items, overlapping; the overlaps)."""

    def texts_of(item) -> Sequence[str]:
        return item["texts"] if isinstance(item, dict) else item.texts

    def id_of(item) -> str:
        return item["id"] if isinstance(item, dict) else item.id

    overlaps = Overlaps(
        ((f"{task}/{id_of(i)}", texts_of(i)) for task, items in items_by_task.items() for i in items), n
    )
    for name, path in sources.items():
        overlaps.scan(training_rows(name, path, heldout_fraction))
    kept = {
        task: [i for i in items if f"{task}/{id_of(i)}" not in overlaps.found] for task, items in items_by_task.items()
    }
    report = {
        "ngram": n,
        "heldout_fraction": heldout_fraction,
        "sources": dict(sources),
        "training_rows_scanned": overlaps.rows_scanned,
        "tasks": {
            task: {"items": len(items), "overlapping": len(items) - len(kept[task]), "kept": len(kept[task])}
            for task, items in items_by_task.items()
        },
        "overlaps": overlaps.found,
    }
    return kept, report


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def cached_json(work: Path, name: str, key: Any, compute: Callable[[], Any]) -> tuple[Any, bool]:
    """``compute()``, kept in ``work/name.json`` under ``key``: (value, reused)."""
    path = work / f"{name}.json"
    wanted = digest(key)
    try:
        stored = json.loads(path.read_text())
        if stored.get("key") == wanted:
            return stored["value"], True
    except (OSError, ValueError):
        pass
    value = compute()
    work.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"key": wanted, "value": value}, ensure_ascii=False))
    os.replace(tmp, path)
    return value, False


def run_folder_settings(model_dir: str) -> dict:
    """The settings.json of the run that wrote ``model_dir`` (its parent folder), or {}."""
    path = Path(model_dir).parent / "settings.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
