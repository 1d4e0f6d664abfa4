"""Preference pairs for the reward model and offline DPO: read, check, tokenize, batch, and the command line both
recipes share (their shared training loop is ``training.preference_loop``).

A source is a Parquet file or folder of ``PREFERENCE_SCHEMA`` rows (the synthesis group's ``preference_pairs``:
``id``, ``prompt`` (messages ending with a user turn), ``chosen`` and ``rejected`` (each one assistant message)) or a
JSONL file of such objects; ``chosen``/``rejected`` may also be a plain string (the assistant's reply). A row without
an ``id`` gets a hash of its content. A bad row goes to ``<output>/excluded/`` with one of ``EXCLUDE_REASONS`` (the
conversation checks of ``training.chat_data`` apply to prompt + chosen and prompt + rejected).

Tokens: prompt + reply is rendered with the project's ChatML template (``chat_data.render_with_spans``, the default
system turn when there is none) and tokenized once with offsets; the *response mask* marks the tokens of the last
assistant turn, its content and its closing ``<|im_end|>`` (``chat_data.inside_spans``): the tokens DPO scores.
A pair is held out for validation by a hash of its id (``chat_data.is_heldout``).

Light at import (no torch, pyarrow or transformers at module top): the Dagster code location imports the settings.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from training.loop_settings import LoopSettings

EXCLUDE_REASONS = (
    "missing_field",  # prompt, chosen or rejected absent or empty
    "not_one_reply",  # chosen or rejected is not one assistant message
    "identical_responses",  # chosen and rejected say the same
    # and every reason of training.chat_data.EXCLUDE_REASONS for prompt + chosen or prompt + rejected
)


class PairTrainingSettings(LoopSettings):
    """Settings both pairwise recipes share (the reward model and DPO subclass it with their own defaults)."""

    epochs: int = Field(1, ge=1, description="Passes over the training pairs.")
    max_len: int = Field(
        4096,
        ge=16,
        description="Tokens of prompt + reply; a pair with a longer side is excluded (too_long).",
        json_schema_extra={"unit": "tokens"},
    )
    batch_size: int = Field(
        64, ge=1, description="Pairs per optimizer step, over all processes (a multiple of their number)."
    )
    micro_batch_size: int = Field(
        4, ge=1, description="Pairs per forward/backward pass of each process (both replies of each)."
    )
    heldout_fraction: float = Field(
        0.05, ge=0, lt=1, description="Share of pairs held out for validation, chosen by a hash of the pair id."
    )
    seed: int = Field(0, description="Seed of the epoch orders (and of a new score head).")
    eval_every: int = Field(0, ge=0, description="Validation every this many steps; 0: before and at the end only.")


@dataclass
class Pair:
    id: str
    source: str
    prompt: list[dict]
    chosen: list[dict]
    rejected: list[dict]
    chosen_ids: list[int] = field(default_factory=list)
    chosen_mask: list[bool] = field(default_factory=list)
    rejected_ids: list[int] = field(default_factory=list)
    rejected_mask: list[bool] = field(default_factory=list)


# ---- reading and checking --------------------------------------------------------------------------------------


def _as_reply(value: Any) -> Any:
    return [{"role": "assistant", "content": value}] if isinstance(value, str) else value


def check_pair(prompt: Any, chosen: Any, rejected: Any) -> tuple[str, str] | None:
    """``(reason, detail)`` when the row is not a usable preference pair, else None."""
    from training.chat_data import check_messages

    for name, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        if value is None or (hasattr(value, "__len__") and len(value) == 0):
            return "missing_field", f"{name} is missing or empty"
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], Mapping):
            return "not_one_reply", f"{name} is not one message"
        if value[0].get("role") != "assistant":
            return "not_one_reply", f"{name} is a {value[0].get('role')!r} message, not the assistant's"
    if not isinstance(prompt, list):
        return "not_a_conversation", f"prompt is {type(prompt).__name__}"
    for name, reply in (("chosen", chosen), ("rejected", rejected)):
        problem = check_messages(list(prompt) + list(reply))
        if problem:
            return problem[0], f"prompt + {name}: {problem[1]}"
    if chosen[0]["content"].strip() == rejected[0]["content"].strip():
        return "identical_responses", "chosen and rejected are the same reply"
    return None


def read_pair_rows(path: str) -> Iterable[dict]:
    """Every row of a Parquet file/folder or a JSONL file as a dict (a line that is not a JSON object: {})."""
    if path.endswith((".jsonl", ".json")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        row = {}
                    yield row if isinstance(row, dict) else {}
        return
    import pyarrow.parquet as pq

    from training.chat_data import parquet_files

    files = parquet_files(path)
    if not files:
        raise ValueError(f"pairs {path}: no .parquet files (give a Parquet file, a folder of them, or a .jsonl)")
    for f in files:
        yield from pq.read_table(f).to_pylist()


def load_pairs(sources: Mapping[str, str]) -> tuple[list[Pair], list[Any]]:
    """Every row of every source (name -> path) as a Pair or an ``Excluded`` row (``training.chat_data``)."""
    from training.chat_data import Excluded, row_id

    pairs, excluded = [], []
    for name, path in sources.items():
        for row in read_pair_rows(path):
            prompt, chosen, rejected = row.get("prompt"), _as_reply(row.get("chosen")), _as_reply(row.get("rejected"))
            rid = str(row.get("id") or row_id(name, [prompt, chosen, rejected]))
            problem = check_pair(prompt, chosen, rejected)
            if problem:
                preview = json.dumps(row, ensure_ascii=False, default=str)[:300]
                excluded.append(Excluded(rid, name, problem[0], problem[1], preview))
                continue

            def clean(messages: list) -> list[dict]:
                return [{"role": m["role"], "content": m["content"]} for m in messages]

            pairs.append(Pair(rid, name, clean(prompt), clean(chosen), clean(rejected)))
    return pairs, excluded


def tokenize_pairs(pairs: list[Pair], tokenizer: Any) -> None:
    """Fill each pair's token ids and response masks (the last assistant turn and its ``<|im_end|>``) in place."""
    from training.chat_data import inside_spans, render_with_spans

    for side in ("chosen", "rejected"):
        rendered = [render_with_spans(p.prompt + getattr(p, side)) for p in pairs]
        if not rendered:
            continue
        enc = tokenizer([t for t, _ in rendered], add_special_tokens=False, return_offsets_mapping=True)
        for p, (_, spans), ids, offsets in zip(pairs, rendered, enc["input_ids"], enc["offset_mapping"]):
            setattr(p, f"{side}_ids", list(ids))
            setattr(p, f"{side}_mask", inside_spans(offsets, spans[-1:]))


def split_too_long(pairs: list[Pair], limit: int) -> tuple[list[Pair], list[Any]]:
    from training.chat_data import Excluded

    kept, excluded = [], []
    for p in pairs:
        n = max(len(p.chosen_ids), len(p.rejected_ids))
        if n > limit:
            preview = json.dumps([p.prompt, p.chosen, p.rejected], ensure_ascii=False)[:300]
            excluded.append(Excluded(p.id, p.source, "too_long", f"{n} tokens > {limit} (max_len)", preview))
        else:
            kept.append(p)
    return kept, excluded


def pairs_fingerprint(pairs: list[Pair]) -> str:
    """A hash of the pairs' ids, tokens and response masks, in order."""
    import numpy as np

    h = hashlib.sha256()
    for p in pairs:
        h.update(p.id.encode() + b"\0")
        for ids, mask in ((p.chosen_ids, p.chosen_mask), (p.rejected_ids, p.rejected_mask)):
            h.update(np.asarray(ids, dtype=np.int64).tobytes() + b"|")
            h.update(np.packbits(np.asarray(mask, dtype=bool)).tobytes() + b"|")
    return h.hexdigest()


def prepare_pairs(settings: PairTrainingSettings, sources: Mapping[str, str], tokenizer: Any) -> dict:
    """Read, check, tokenize and split the pairs; returns the pieces and counts for the summary."""
    from training.chat_data import is_heldout

    pairs, excluded = load_pairs(sources)
    tokenize_pairs(pairs, tokenizer)
    pairs, too_long = split_too_long(pairs, settings.max_len)
    excluded += too_long
    train = [p for p in pairs if not is_heldout(p.id, settings.heldout_fraction)]
    heldout = [p for p in pairs if is_heldout(p.id, settings.heldout_fraction)]
    if not train:
        raise ValueError(f"no training pairs in {dict(sources)} ({len(excluded)} excluded, {len(heldout)} held out)")
    return {
        "train": train,
        "heldout": heldout,
        "excluded": excluded,
        "counts": {
            "pairs_by_source": dict(Counter(p.source for p in pairs)),
            "train_pairs": len(train),
            "heldout_pairs": len(heldout),
            "excluded": len(excluded),
            "excluded_by_reason": dict(Counter(x.reason for x in excluded)),
        },
    }


def step_batches(n_train: int, settings: PairTrainingSettings) -> list[list[int]]:
    """Train-pair indices of every optimizer step: each epoch a seeded permutation, the epochs concatenated and cut
    into ``batch_size`` pairs (the last step may hold fewer)."""
    import numpy as np

    order: list[int] = []
    for epoch in range(settings.epochs):
        order += np.random.default_rng([settings.seed, epoch, 11]).permutation(n_train).tolist()
    return [order[i : i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]


# ---- tensors ---------------------------------------------------------------------------------------------------


def pair_tensors(pairs: list[Pair], pad_id: int) -> dict:
    """Both replies of each pair as one right-padded batch: rows [chosen_0..chosen_{B-1}, rejected_0..]; input_ids,
    attention_mask, response_mask (bool), all [2B, T]."""
    import torch

    seqs = [(p.chosen_ids, p.chosen_mask) for p in pairs] + [(p.rejected_ids, p.rejected_mask) for p in pairs]
    width = max(len(ids) for ids, _ in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    response = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (tokens, mask) in enumerate(seqs):
        ids[i, : len(tokens)] = torch.tensor(tokens)
        attention[i, : len(tokens)] = 1
        response[i, : len(tokens)] = torch.tensor(mask, dtype=torch.bool)
    return {"input_ids": ids, "attention_mask": attention, "response_mask": response}


def sequence_logps(logits: Any, input_ids: Any, response_mask: Any) -> tuple[Any, Any]:
    """Per row: the summed log-probability of the response tokens (each predicted from the tokens before it) and
    their count. ``logits`` [N, T, V] of a causal LM on ``input_ids`` [N, T]."""
    import torch

    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    mask = response_mask[:, 1:]
    return (picked * mask).sum(-1), mask.sum(-1)


def recipe_metrics(metrics: Path) -> list[dict]:
    """The records of a run's metrics.jsonl (for the Dagster assets' tables)."""
    if not metrics.exists():
        return []
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]


# ---- command line shared by both recipes ----------------------------------------------------------------------


def build_parser(prog: str, description: str, settings_class: type) -> Any:
    from pipelines.settings import ArgumentParser, settings_parser
    from training.sft import _source

    parser = ArgumentParser(prog=prog, description=description)
    run_options = parser.add_argument_group("run options (paths; in Dagster they come from the resources)")
    run_options.add_argument(
        "--pairs",
        dest="pairs",
        action="append",
        type=_source,
        default=[],
        metavar="NAME=PATH",
        help="preference pairs: Parquet file or folder (PREFERENCE_SCHEMA) or JSONL; repeat for several",
    )
    run_options.add_argument("--output", required=True, help="folder for checkpoints, logs, excluded/, final/")
    run_options.add_argument("--init", required=True, help="a save_pretrained folder to start from (the SFT model)")
    return settings_parser(settings_class, parser=parser)


def run_main(parser: Any, args: Any, settings: Any, run: Callable[..., dict]) -> None:
    import sys

    from training.signals import TrainingInterrupted

    pairs = dict(args.pairs)
    if len(pairs) != len(args.pairs):
        parser.error("two --pairs options have the same NAME")
    if not pairs:
        parser.error("give at least one --pairs NAME=PATH")
    try:
        run(settings, pairs, args.output, args.init)
    except TrainingInterrupted as e:
        print(f"training {e}; the last checkpoint is intact, rerun the same command to resume", file=sys.stderr)
        sys.exit(128 + e.signum)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
