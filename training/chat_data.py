"""Conversations for post-training: read message-format sources, set bad rows aside with a reason, tokenize with the
Qwen2 ChatML template and a loss mask on what the assistant writes, and pack conversations into rows.

A source is a Parquet file or folder (the synthesis group's ``SFT_SCHEMA`` shards: ``id``, ``messages`` list of
``{role, content}``; a stage folder's ``data/*.parquet``) or a JSONL file of ``{"messages": [...]}`` objects (an
``id`` is optional: without one the row's id is a hash of its messages). Every row becomes an ``Example``, or an
``Excluded`` row with one reason of ``EXCLUDE_REASONS``.

Loss mask: the conversation is rendered as ``synth.llm.chat.render_chat`` renders it (the default system turn when
there is none), piece by piece, so the character span of each assistant turn's content and its closing
``<|im_end|>`` is known; the whole text is tokenized once (fast tokenizer, offsets) and a token carries loss when its
characters lie inside one of those spans. The role headers (``<|im_start|>assistant\\n``), the newline after
``<|im_end|>``, system and user turns carry none: what ``{% generation %}`` marks in ``QWEN2_CHAT_TEMPLATE``.

Packing (``pack_rows``): conversations are laid into rows of exactly ``seq_len`` tokens (first fit over a window of
open rows); the rest of a row is one padding segment of ``<|endoftext|>`` with no loss. Every segment restarts its
``position_ids`` at 0, so ``training.attention`` keeps every conversation's attention to itself, as pretraining does
for documents. The rows of an epoch depend only on (examples, seed, epoch).

    python -m training.chat_data chatterbot OUT.parquet [--max-conversations 400]   # the demo demonstrations
    python -m training.chat_data generate FINAL_DIR PROMPTS.jsonl [--count 3]       # the stops_at_im_end check

Light at import (no torch, pyarrow or transformers at module top).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")
EXCLUDE_REASONS = (
    "not_a_conversation",  # messages missing, not a list, empty, or a turn that is not {role, content: str}
    "unknown_role",
    "empty_content",
    "control_token",  # a turn's text holds <|im_start|>, <|im_end|> or <|endoftext|>
    "last_turn_not_assistant",
    "bad_turn_order",  # system not first, or user and assistant not alternating from a user turn
    "too_long",  # more tokens than a packed row holds
)


@dataclass
class Example:
    id: str
    source: str
    messages: list[dict]
    input_ids: list[int] = field(default_factory=list)
    loss_mask: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class Excluded:
    id: str
    source: str
    reason: str
    detail: str
    preview: str


def row_id(source: str, messages: Any) -> str:
    """A stable id for a row without one: its source name and its messages' content."""
    payload = json.dumps([source, messages], sort_keys=True, ensure_ascii=False, default=str)
    return "m-" + hashlib.sha256(payload.encode()).hexdigest()[:20]


def is_heldout(example_id: str, fraction: float) -> bool:
    """Whether a row is in the held-out validation slice: a hash of its id, the same on every run and machine."""
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.sha256(f"sft-heldout/{example_id}".encode()).digest()[:8], "big")
    return h / 2**64 < fraction


# ---- reading and checking --------------------------------------------------------------------------------------


def check_messages(messages: Any) -> tuple[str, str] | None:
    """``(reason, detail)`` when ``messages`` is not a finished SFT conversation, else None."""
    from synth.llm.chat import CONTROL_TOKENS

    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        return "not_a_conversation", f"messages is {type(messages).__name__}{' (empty)' if not messages else ''}"
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("content"), str) or "role" not in m:
            return "not_a_conversation", f"message {i} is not a {{role, content: text}} mapping"
        if m["role"] not in ROLES:
            return "unknown_role", f"message {i} has role {m['role']!r}"
        if not m["content"].strip():
            return "empty_content", f"message {i} ({m['role']}) is empty"
        if any(token in m["content"] for token in CONTROL_TOKENS):
            return "control_token", f"message {i} ({m['role']}) holds a ChatML control token"
    if messages[-1]["role"] != "assistant":
        return "last_turn_not_assistant", f"the last message is {messages[-1]['role']}"
    roles = [m["role"] for m in messages]
    turns = roles[1:] if roles[0] == "system" else roles
    for i, role in enumerate(turns):
        if role != ("user" if i % 2 == 0 else "assistant"):
            return "bad_turn_order", f"turn {i} is {role}; after an optional system turn, user and assistant alternate"
    return None


def _preview(messages: Any, limit: int = 300) -> str:
    return json.dumps(messages, ensure_ascii=False, default=str)[:limit]


def parquet_files(path: str) -> list[Path]:
    p = Path(path)
    if p.is_file():
        return [p]
    if (p / "data").is_dir():
        p = p / "data"
    return sorted(f for f in p.glob("*.parquet") if not f.name.startswith("."))


def read_rows(path: str) -> Iterable[tuple[Any, Any]]:
    """``(id or None, messages)`` of every row of a Parquet file/folder or a JSONL file, in file order."""
    if path.endswith((".jsonl", ".json")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    yield None, line.strip()[:300]  # not JSON: excluded as not a conversation
                    continue
                if isinstance(row, Mapping):
                    yield row.get("id"), row.get("messages")
                else:
                    yield None, row
        return
    import pyarrow.parquet as pq

    files = parquet_files(path)
    if not files:
        raise ValueError(f"source {path}: no .parquet files (give a Parquet file, a folder of them, or a .jsonl)")
    for f in files:
        table = pq.read_table(f)
        if "messages" not in table.column_names:
            raise ValueError(f"source {f}: no 'messages' column (has {table.column_names})")
        ids = table.column("id").to_pylist() if "id" in table.column_names else [None] * table.num_rows
        yield from zip(ids, table.column("messages").to_pylist())


def load_sources(sources: Mapping[str, str]) -> tuple[list[Example], list[Excluded]]:
    """Every row of every source (name -> path) as an Example (messages checked) or an Excluded row."""
    examples, excluded = [], []
    for name, path in sources.items():
        for rid, messages in read_rows(path):
            rid = str(rid) if rid else row_id(name, messages)
            problem = check_messages(messages)
            if problem:
                excluded.append(Excluded(rid, name, problem[0], problem[1], _preview(messages)))
                continue
            msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
            examples.append(Example(rid, name, msgs))
    return examples, excluded


# ---- tokenizing with the loss mask -----------------------------------------------------------------------------


def render_with_spans(messages: Sequence[Mapping[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The ChatML text of a finished conversation (as ``render_chat(..., add_generation_prompt=False)``) and the
    character spans ``[start, end)`` the model must write: each assistant turn's content and its ``<|im_end|>``."""
    from synth.llm.chat import DEFAULT_SYSTEM_PROMPT, IM_END, IM_START

    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    length = 0

    def add(text: str, trained: bool = False) -> None:
        nonlocal length
        if trained:
            spans.append((length, length + len(text)))
        parts.append(text)
        length += len(text)

    if messages and messages[0]["role"] != "system":
        add(f"{IM_START}system\n{DEFAULT_SYSTEM_PROMPT}{IM_END}\n")
    for m in messages:
        add(f"{IM_START}{m['role']}\n")
        add(m["content"] + IM_END, trained=m["role"] == "assistant")
        add("\n")
    return "".join(parts), spans


def tokenize_examples(examples: list[Example], tokenizer: Any, batch: int = 1024) -> None:
    """Fill ``input_ids`` and ``loss_mask`` of ``examples`` in place (one batched fast-tokenizer call per ``batch``)."""
    for start in range(0, len(examples), batch):
        chunk = examples[start : start + batch]
        rendered = [render_with_spans(e.messages) for e in chunk]
        enc = tokenizer([text for text, _ in rendered], add_special_tokens=False, return_offsets_mapping=True)
        for e, (_, spans), ids, offsets in zip(chunk, rendered, enc["input_ids"], enc["offset_mapping"]):
            e.input_ids = list(ids)
            e.loss_mask = inside_spans(offsets, spans)


def inside_spans(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[bool]:
    """For each token's character range ``[a, b)``: whether it lies wholly inside one of the sorted, disjoint
    ``spans``. A token that straddles a span's edge is left out: the header's newline merged with a reply that starts
    with a newline (one ``"\\n\\n"`` token) is half template. Vectorised: one binary search per token."""
    import numpy as np

    if not spans or not len(offsets):
        return [False] * len(offsets)
    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    starts, ends = np.asarray(spans, dtype=np.int64).T
    k = np.searchsorted(starts, off[:, 0], side="right") - 1  # the last span starting at or before the token
    kc = np.clip(k, 0, None)
    return ((k >= 0) & (off[:, 0] >= starts[kc]) & (off[:, 1] <= ends[kc])).tolist()


def split_too_long(examples: list[Example], limit: int) -> tuple[list[Example], list[Excluded]]:
    kept, excluded = [], []
    for e in examples:
        if len(e) > limit:
            detail = f"{len(e)} tokens > {limit} (seq_len)"
            excluded.append(Excluded(e.id, e.source, "too_long", detail, _preview(e.messages)))
        else:
            kept.append(e)
    return kept, excluded


def write_excluded(excluded: list[Excluded], folder: Path) -> Path:
    """``folder/part-00000.parquet``: id, source, reason, detail, preview (written atomically, even when empty)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([(name, pa.string()) for name in ("id", "source", "reason", "detail", "preview")])
    table = pa.table({n: [getattr(x, n) for x in excluded] for n in schema.names}, schema=schema)
    tmp = folder / ".part-00000.parquet.tmp"
    pq.write_table(table, tmp)
    tmp.replace(folder / "part-00000.parquet")
    return folder / "part-00000.parquet"


# ---- mixing and packing ----------------------------------------------------------------------------------------


def epoch_examples(examples: Sequence[Example], weights: Mapping[str, float], seed: int, epoch: int) -> list[int]:
    """The example indices of one epoch in a seeded order: each source's examples ``weight`` times (1.5: all of them
    once and a seeded half again; 0.2: a seeded fifth; a source not named has weight 1)."""
    import numpy as np

    rng = np.random.default_rng([seed, epoch, 7])
    by_source: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        by_source.setdefault(e.source, []).append(i)
    chosen: list[int] = []
    for name in sorted(by_source):
        idx = np.asarray(by_source[name])
        w = float(weights.get(name, 1.0))
        whole, frac = int(w), w - int(w)
        chosen.extend(np.tile(idx, whole).tolist())
        take = int(round(frac * len(idx)))
        if take:
            chosen.extend(rng.choice(idx, take, replace=False).tolist())
    order = rng.permutation(len(chosen))
    return [chosen[i] for i in order]


def pack_rows(lengths: Sequence[int], order: Sequence[int], seq_len: int, open_rows: int = 64) -> list[list[int]]:
    """Rows of example indices, in ``order``, each holding at most ``seq_len`` tokens: first fit over the last
    ``open_rows`` rows still open (a full-enough row is closed). Deterministic."""
    rows: list[list[int]] = []
    space: list[int] = []  # free tokens of the open rows (indices into rows via open_ids)
    open_ids: list[int] = []
    for i in order:
        n = lengths[i]
        if n > seq_len:
            raise ValueError(f"example {i} has {n} tokens > seq_len {seq_len}")
        for k, free in enumerate(space):
            if n <= free:
                rows[open_ids[k]].append(i)
                space[k] -= n
                break
        else:
            rows.append([i])
            open_ids.append(len(rows) - 1)
            space.append(seq_len - n)
            if len(open_ids) > open_rows:
                k = min(range(len(space)), key=lambda j: space[j])  # close the fullest
                del open_ids[k], space[k]
    return rows


def row_tensors(rows: Sequence[Sequence[int]], examples: Sequence[Example], seq_len: int, pad_id: int) -> dict:
    """Model inputs [B, seq_len] of packed rows: input_ids, position_ids restarting per conversation (and for the
    padding segment), labels = the token where it carries loss, else -100."""
    import numpy as np
    import torch

    ids = np.full((len(rows), seq_len), pad_id, dtype=np.int64)
    pos = np.zeros((len(rows), seq_len), dtype=np.int64)
    labels = np.full((len(rows), seq_len), IGNORE_INDEX, dtype=np.int64)
    for b, row in enumerate(rows):
        at = 0
        for i in row:
            e = examples[i]
            n = len(e)
            ids[b, at : at + n] = e.input_ids
            pos[b, at : at + n] = np.arange(n)
            labels[b, at : at + n] = np.where(e.loss_mask, e.input_ids, IGNORE_INDEX)
            labels[b, at] = IGNORE_INDEX  # a conversation's first token is predicted from nothing
            at += n
        pos[b, at:] = np.arange(seq_len - at)  # the padding: a segment of its own, no loss
    return {
        "input_ids": torch.from_numpy(ids),
        "position_ids": torch.from_numpy(pos),
        "labels": torch.from_numpy(labels),
    }


# ---- the demo's demonstrations ---------------------------------------------------------------------------------


def chatterbot_conversations(max_conversations: int | None = None, seed: int = 0) -> list[dict]:
    """Human-written conversations of the chatterbot corpus (the synthesis seeds' wheel, sha256-checked, offline once
    cached) as ``{id, messages, lang, source}`` rows: turns alternate user/assistant from the first; a trailing user
    turn is dropped; one-turn conversations are skipped. ``max_conversations``: a language-balanced seeded sample.
    Only this corpus: the evaluation sets (``synth.eval_sets``) are never read here."""
    from synth.seeds import load_seeds, sample_seeds

    seeds = [s for s in load_seeds() if len(s.get("turns") or []) >= 2]
    if max_conversations is not None:
        seeds = sample_seeds(seeds, max_conversations, seed=seed)
    rows = []
    for s in seeds:
        turns = list(s["turns"])
        if len(turns) % 2:
            turns = turns[:-1]
        messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
        rows.append({"id": s["id"], "messages": messages, "lang": s.get("lang") or "", "source": s["source"]})
    return rows


def write_chatterbot_source(path: str | Path, max_conversations: int | None = None, seed: int = 0) -> dict:
    """Write the chatterbot demonstrations as a messages Parquet source at ``path``; returns counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.schema import MESSAGE_TYPE

    rows = chatterbot_conversations(max_conversations, seed)
    schema = pa.schema(
        [("id", pa.string()), ("messages", pa.list_(MESSAGE_TYPE)), ("lang", pa.string()), ("source", pa.string())]
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    tmp.replace(path)
    return {"conversations": len(rows), "languages": dict(Counter(r["lang"] for r in rows).most_common())}


# ---- generating from a saved chat model ------------------------------------------------------------------------


def said_something(reply: dict) -> bool:
    """Whether a ``generate_replies`` reply has text before its closing ``<|im_end|>`` (a bare one says nothing)."""
    return bool(reply["reply"].removesuffix("<|im_end|>").strip())


def generate_replies(final_dir: str, prompts: Sequence[Sequence[Mapping]], max_new_tokens: int = 64) -> list[dict]:
    """Greedy replies of a ``save_pretrained`` chat folder to ``prompts`` (message lists ending with a user turn),
    through transformers and the folder's own chat template and generation config: whether each stopped at
    ``<|im_end|>`` before ``max_new_tokens``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipelines.tokenizer import IM_END_ID

    tokenizer = AutoTokenizer.from_pretrained(final_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(final_dir, local_files_only=True, attn_implementation="sdpa").eval()
    out = []
    for messages in prompts:
        text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = generated[0, inputs["input_ids"].shape[1] :].tolist()
        out.append(
            {
                "prompt": messages[-1]["content"],
                "reply": tokenizer.decode(new, skip_special_tokens=False),
                "tokens": len(new),
                "stopped_at_im_end": bool(new) and new[-1] == IM_END_ID and len(new) <= max_new_tokens,
            }
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.chat_data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cb = sub.add_parser("chatterbot", help="write the chatterbot-corpus demonstrations as a messages Parquet source")
    cb.add_argument("output", help="the .parquet file to write")
    cb.add_argument("--max-conversations", type=int, default=None, help="a language-balanced sample of this many")
    cb.add_argument("--seed", type=int, default=0)
    gen = sub.add_parser("generate", help="greedy replies of a saved chat model to prompts; prints one JSON line")
    gen.add_argument("final_dir")
    gen.add_argument("prompts", help="JSONL of {messages: [...]} ending with a user turn")
    gen.add_argument("--count", type=int, default=3)
    gen.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    if args.command == "chatterbot":
        print(json.dumps(write_chatterbot_source(args.output, args.max_conversations, args.seed), ensure_ascii=False))
        return
    with open(args.prompts, encoding="utf-8") as f:
        prompts = [json.loads(line)["messages"] for line in f if line.strip()][: args.count]
    try:
        replies = generate_replies(args.final_dir, prompts, args.max_new_tokens)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {args.final_dir} does not load: {e}")
    print(json.dumps({"replies": replies}, ensure_ascii=False))


if __name__ == "__main__":
    main()
