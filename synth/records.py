"""Synthetic-data stages: work in committed chunks, rows with provenance, rejected samples kept with a reason.

Every synthesis method (``synth.sft``, ``synth.preference``, ``synth.rephrase``) is a list of
work items (seed prompts, documents, tasks) turned into rows by ``process_chunk``. ``run_chunked_stage`` writes the
rows of each chunk of items as one Parquet shard under ``<stage_dir>/data/`` (what was not kept goes to
``excluded/`` as ``SYNTH_REJECTED_SCHEMA`` rows with a reason) and commits the chunk with a marker that names its
items. A killed run resumes at the first uncommitted chunk; requests of the chunk in flight are answered from the
generator's request cache (``synth.llm.cache.CachedGenerator``), so nothing is asked twice. A changed config starts
the stage afresh. The stage ends with ``_SUCCESS.json``: counters summed over chunks plus what the caller adds.

Counters a method returns per chunk (merged by ``pipelines.shards.merge_stats``):
``items`` (work items seen), ``samples`` (generations judged), ``accepted`` (rows written) and
``rejected`` ({reason: count}); anything else it wants shown.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from pipelines.schema import SYNTH_REJECTED_SCHEMA
from pipelines.shards import ShardStage
from synth.llm.base import GenerationResult

ChunkResult = tuple[list[dict], list[dict], dict]
"""(rows of the stage's schema, rejected rows of SYNTH_REJECTED_SCHEMA, counters)"""


def record_id(method: str, *parts: Any) -> str:
    """A stable 16-hex id from the method and what the row was made from."""
    blob = json.dumps([method, *parts], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def messages(*turns: tuple[str, str]) -> list[dict]:
    """``messages(("user", q), ("assistant", a))`` -> ChatML message dicts."""
    return [{"role": role, "content": content} for role, content in turns]


def provenance(
    result: GenerationResult,
    *,
    method: str,
    lang: str | None,
    source_id: str,
    meta: Mapping[str, Any] | None = None,
) -> dict:
    """The provenance columns of a synthetic row made by ``result`` (its model, backend, sampling, template)."""
    return {
        "method": method,
        "lang": lang,
        "source_id": source_id,
        "model": result.model_id,
        "backend": result.backend,
        "sampling": json.dumps(result.sampling, sort_keys=True),
        "template_version": result.template_version,
        "meta": json.dumps(dict(meta or {}), sort_keys=True, ensure_ascii=False, default=str),
    }


def rejected(method: str, source_id: str, reason: str, detail: Any = "", preview: str = "", id: str = "") -> dict:
    """A row of SYNTH_REJECTED_SCHEMA."""
    if not isinstance(detail, str):
        detail = json.dumps(detail, ensure_ascii=False, default=str)
    return {
        "id": id or record_id(method, source_id, reason, preview[:200]),
        "method": method,
        "source_id": source_id,
        "reason": reason,
        "detail": detail[:2000],
        "preview": (preview or "")[:300],
    }


def chunk_counters(items: int, samples: int, accepted: int, rejected_rows: Iterable[Mapping]) -> dict:
    """The standard per-chunk counters (see the module docstring)."""
    reasons: dict[str, int] = {}
    for row in rejected_rows:
        reasons[row["reason"]] = reasons.get(row["reason"], 0) + 1
    return {"items": items, "samples": samples, "accepted": accepted, "rejected": reasons}


def acceptance_rate(summary: Mapping[str, Any]) -> float:
    """accepted / samples (0 when nothing was sampled)."""
    samples = summary.get("samples") or 0
    return round((summary.get("accepted") or 0) / samples, 4) if samples else 0.0


def run_chunked_stage(
    stage_dir: str,
    config: Mapping[str, Any],
    items: Sequence[Mapping[str, Any]],
    process_chunk: Callable[[list[Mapping[str, Any]]], ChunkResult],
    schema: pa.Schema,
    *,
    chunk_size: int = 64,
    extra: Mapping[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Run ``process_chunk`` over ``items`` (each with an ``id``) in committed chunks; return the stage summary.

    ``config`` must hold everything that shapes the output (method settings, model, prompt version): a different
    config empties ``stage_dir`` first. A chunk is reused only when it holds the very same items (ids and content,
    so a document whose text changed is done again). No items: one empty shard, so readers see a finished stage.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    with ShardStage(stage_dir, config) as stage:
        n_chunks = max(1, (len(items) + chunk_size - 1) // chunk_size)
        keys = [f"part-{index:05d}" for index in range(n_chunks)]
        stage.keep_only(keys)
        reused = 0
        for index, key in enumerate(keys):
            chunk = list(items[index * chunk_size : (index + 1) * chunk_size])
            blob = json.dumps(chunk, sort_keys=True, ensure_ascii=False, default=str)
            fingerprint = hashlib.sha256(blob.encode()).hexdigest()
            if stage.done(key, fingerprint) is not None:
                reused += 1
                continue
            rows, rejected_rows, stats = process_chunk(chunk) if chunk else ([], [], chunk_counters(0, 0, 0, []))
            with stage.writers(key, data_schema=schema, excluded_schema=SYNTH_REJECTED_SCHEMA) as writers:
                for row in rows:
                    writers["data"].write(row)
                for row in rejected_rows:
                    writers["excluded"].write(row)
            stage.commit(key, f"items:{index}", fingerprint, stats)
            if log:
                log(f"{stage_dir}: chunk {index + 1}/{n_chunks} committed ({stats.get('accepted', 0)} rows)")
        summary = {"items": 0, "samples": 0, "accepted": 0, "rejected": {}, **stage.summed(keys)}
        fields = {"output": stage_dir, "shards": len(keys), "chunks_reused": reused, **dict(extra or {})}
        return stage.finish(summary=summary, acceptance_rate=acceptance_rate(summary), **fields)
