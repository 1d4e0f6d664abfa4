"""Scoring and tiers: a Beam stage (``QualityScorer``) adds the classifier's ``quality_score`` to every document once;
a second, cheap pass cuts every tier from the stored scores (``strict`` >= 3.0, ``relaxed`` >= 2.0), so moving a
threshold re-tiers in seconds and never re-runs the classifier (``python -m synth.labels score``)."""

from __future__ import annotations

import contextlib
import json
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa

from pipelines.beam_stage import DocumentProcessor, parse_stage_args, print_summary, run_pipeline, run_shard_stage
from pipelines.readers import DEFAULT_MAX_DOC_BYTES
from pipelines.schema import DOCUMENT_COLUMNS, DOCUMENT_FIELDS
from pipelines.shards import (
    SUCCESS_FILE,
    ShardStage,
    ShardStats,
    filesystem,
    input_fingerprint,
    join,
    list_shards,
    read_json,
    shard_key,
    write_json_atomic,
)
from synth.labels.classifier import (
    METRICS_FILE,
    _load_fasttext,
    class_values,
    classifier_fingerprint,
    local_model,
    predict_scores,
)
from synth.settings import TierSettings

HIST_BIN_WIDTH = 0.5
HIST_BINS = 10  # [0, 0.5), [0.5, 1), ..., [4.5, 5]
SCORE_STAGE = "quality_score"
TIER_STAGE = "quality_tier"

# Scored documents (``score`` stage output): DOCUMENT_SCHEMA plus the classifier's expected score in [0, 5].
SCORED_SCHEMA = pa.schema(DOCUMENT_FIELDS + [pa.field("quality_score", pa.float32())])


# ---------------------------------------------------------------------------------------------------- score/tier


def histogram_bin(score: float) -> int:
    return min(HIST_BINS - 1, max(0, int(score / HIST_BIN_WIDTH)))


HIST_EDGES = [round(k * HIST_BIN_WIDTH, 2) for k in range(HIST_BINS + 1)]


class QualityScorer(DocumentProcessor):
    """Adds ``quality_score`` (the classifier's expected score, 0-5) to every document; drops nothing."""

    stage = SCORE_STAGE
    data_schema = SCORED_SCHEMA

    def __init__(self, classifier_dir: str):
        self.classifier_dir = classifier_dir
        self.fingerprint = classifier_fingerprint(classifier_dir)
        metrics = read_json(join(classifier_dir, METRICS_FILE)) or {}
        self.max_chars = int(metrics["config"]["max_chars"])
        self.normalize = metrics.get("normalize")
        self.values = class_values(metrics)
        self._model = None

    def config(self) -> dict:
        return {
            "classifier_sha256": self.fingerprint,
            "normalize": self.normalize,
            "max_chars": self.max_chars,
            "class_values": {str(c): v for c, v in self.values.items()},
            "hist_bin_width": HIST_BIN_WIDTH,
        }

    def setup(self) -> None:
        if self._model is None:
            self._model = _load_fasttext(local_model(self.classifier_dir, self.fingerprint))

    def process_batch(self, docs: list[dict]) -> Iterator[tuple[dict, str | None]]:
        self.setup()
        for doc, (score, _) in zip(
            docs, predict_scores(self._model, [d["text"] for d in docs], self.max_chars, self.values)
        ):
            doc["quality_score"] = score
            yield doc, None

    def new_summary(self) -> dict:
        return {"score_histogram": [0] * HIST_BINS, "score_histogram_by_lang": {}, "score_sum": 0.0}

    def summarize(self, doc: dict, summary: dict) -> None:
        k = histogram_bin(doc["quality_score"])
        summary["score_histogram"][k] += 1
        by_lang = summary["score_histogram_by_lang"].setdefault(doc.get("lang") or "unknown", [0] * HIST_BINS)
        by_lang[k] += 1
        summary["score_sum"] += doc["quality_score"]

    def __getstate__(self) -> dict:  # the fastText model does not pickle: each worker loads it in setup()
        return {**self.__dict__, "_model": None}


def quality_flags(doc: Mapping[str, Any]) -> list[str]:
    """The web-chain rules a document fails although its quality profile kept it (``metadata.quality_flags``,
    written by ``pipelines.quality``): empty for a document the web chain keeps too."""
    meta = doc.get("metadata")
    if not meta or "quality_flags" not in meta:
        return []
    try:
        flags = json.loads(meta).get("quality_flags")
    except (ValueError, AttributeError):
        return []
    return [str(flag) for flag in flags] if isinstance(flags, list) else []


def _count_flagged(counts: dict, flags: list[str], kept: bool) -> None:
    counts["flagged_in"] += 1
    if kept:  # saved by the classifier: a heuristic would have dropped it, the score puts it in the tier
        counts["flagged_out"] += 1
        for flag in flags:
            counts["flagged_out_by_rule"][flag] = counts["flagged_out_by_rule"].get(flag, 0) + 1


def flagged_sample(scored_files: Sequence[str], threshold: float, size: int = 10) -> list[dict]:
    """Up to ``size`` flagged documents of the scored shards with both verdicts (the web chain's failed rules, the
    classifier's score and tier decision), those the tier keeps first; reads four columns of a few shards."""
    import pyarrow.parquet as pq

    saved: list[dict] = []
    rejected_: list[dict] = []
    for path in sorted(scored_files):
        fs, fpath = filesystem(path)
        with fs.open(fpath, "rb") as f:
            table = pq.read_table(f, columns=["id", "lang", "metadata", "quality_score"])
        for row in table.to_pylist():
            flags = quality_flags(row)
            if not flags:
                continue
            score = row["quality_score"]
            kept = score is not None and score >= threshold
            entry = {
                "id": row["id"],
                "lang": row["lang"],
                "profile": json.loads(row["metadata"]).get("quality_profile"),
                "web_chain": ", ".join(flags),
                "score": None if score is None else round(float(score), 3),
                "tier": "kept" if kept else "dropped",
            }
            (saved if kept else rejected_).append(entry)
        if len(saved) >= size:
            break
    return (saved + rejected_)[:size]


def tier_shard(path: str, tiers: Mapping[str, tuple[ShardStage, float]], count=None) -> dict[str, dict]:
    """Read one scored shard once and write its documents with score >= threshold into every tier folder
    (``tiers``: name -> (its open ShardStage, threshold)), as DOCUMENT_SCHEMA shards; tiers already committed for
    this very shard are skipped. Returns each tier's counters."""
    import pyarrow.parquet as pq

    count = count or (lambda name, n=1: None)
    key, fingerprint = shard_key(path), input_fingerprint(path)
    done = {name: stage.done(key, fingerprint) for name, (stage, _) in tiers.items()}
    todo = {name: spec for name, spec in tiers.items() if done[name] is None}
    if not todo:
        count("shards_resumed")
        return done
    stats = {name: ShardStats() for name in todo}
    flagged = {name: {"flagged_in": 0, "flagged_out": 0, "flagged_out_by_rule": {}} for name in todo}
    bytes_in = 0
    with contextlib.ExitStack() as stack:
        writers = {name: stack.enter_context(stage.writers(key)) for name, (stage, _) in todo.items()}
        fs, fpath = filesystem(path)
        with fs.open(fpath, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=1024, columns=[*DOCUMENT_COLUMNS, "quality_score"]):
                for row in batch.to_pylist():
                    score = row.pop("quality_score")
                    bytes_in += len(row["text"].encode("utf-8"))
                    flags = quality_flags(row)
                    for name, (_, threshold) in todo.items():
                        stats[name].docs_in += 1
                        kept = score is not None and score >= threshold
                        if kept:
                            writers[name]["data"].write(row)
                            stats[name].keep(row)
                        else:
                            stats[name].drop("below_threshold")
                        if flags:
                            _count_flagged(flagged[name], flags, kept)
    for name, (stage, _) in todo.items():
        done[name] = {**stats[name].to_dict(), "bytes_in": bytes_in, **flagged[name]}
        stage.commit(key, path, fingerprint, done[name])
        count(f"{name}_docs_out", stats[name].docs_out)
    count("shards_processed")
    return done


def _tier_dofn(tiers: Mapping[str, tuple[ShardStage, float]]):
    from pipelines.beam_dofn import CountingDoFn

    class TierShard(CountingDoFn):
        def process(self, path: str):
            yield tier_shard(path, tiers, self.count)

    return TierShard(TIER_STAGE)


def _share(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


def write_tiers(
    scored_dir: str,
    tiers_dir: str,
    config: TierSettings | None = None,
    *,
    workers: int | None = None,
    beam_args: Sequence[str] | None = None,
) -> dict[str, dict]:
    """The tier pass: one Beam pass over the finished scored stage writes every tier folder
    (``tiers_dir/<name>``); returns each tier's summary (also its ``_SUCCESS.json``)."""
    config = config or TierSettings()
    import apache_beam as beam

    scored_summary = read_json(join(scored_dir, SUCCESS_FILE))
    scored_config = read_json(join(scored_dir, "_config.json"))
    if scored_summary is None or scored_config is None:
        raise ValueError(f"{scored_dir} is not a finished scored stage: run `score` first")
    files = list_shards(scored_dir)
    keys = sorted(shard_key(f) for f in files)
    classifier_sha = scored_config.get("processor", {}).get("classifier_sha256")
    with contextlib.ExitStack() as stack:  # every tier folder checked, locked and prepared
        tiers = {}
        for name, threshold in config.tiers().items():
            tier_config = {"stage": TIER_STAGE, "tier": name, "threshold": threshold, "scored": scored_config}
            stage = stack.enter_context(ShardStage(join(tiers_dir, name), tier_config, [scored_dir]))
            stage.keep_only(keys)
            tiers[name] = (stage, threshold)
        beam_counters = run_pipeline(
            lambda p: (
                p
                | "ScoredShards" >> beam.Create(files)
                | "Spread" >> beam.Reshuffle()
                | "Tier" >> beam.ParDo(_tier_dofn(tiers))
            ),
            beam_args,
            workers,
        )
        scored_langs = scored_summary.get("languages", {})
        summaries = {}
        for name, (stage, threshold) in tiers.items():
            merged = stage.summed(keys)
            tier_langs = merged.get("languages", {})
            extra = {
                "tier": name,
                "threshold": threshold,
                "scored_dir": scored_dir,
                "classifier_sha256": classifier_sha,
                "share_docs": _share(merged.get("docs_out", 0), merged.get("docs_in", 0)),
                "share_bytes": _share(merged.get("bytes_out", 0), merged.get("bytes_in", 0)),
                "language_share": {
                    lang: _share(tier_langs.get(lang, 0), n) for lang, n in sorted(scored_langs.items())
                },
                # documents a heuristic would have dropped (their quality profile kept them) that the score keeps
                "flagged_docs": merged.get("flagged_in", 0),
                "flagged_kept": merged.get("flagged_out", 0),
                "flagged_kept_share": _share(merged.get("flagged_out", 0), merged.get("flagged_in", 0)),
                "flagged_kept_by_rule": merged.get("flagged_out_by_rule", {}),
                "flagged_sample": flagged_sample(files, threshold),
            }
            fields = {"stage": TIER_STAGE, "output": stage.output, "shards": len(keys), "beam_counters": beam_counters}
            summaries[name] = stage.finish(summary=merged, **fields, **extra)
        return summaries


def tier_subset_problems(strict_dir: str, relaxed_dir: str, limit: int = 20) -> list[str]:
    """Ids in the strict tier that are missing from the relaxed one (up to ``limit``): both tiers are cut from
    the same scored shards, so shard by shard the strict ids must be a subset of the relaxed ids."""
    import pyarrow.parquet as pq

    def ids(path: str) -> set[str]:
        fs, fpath = filesystem(path)
        with fs.open(fpath, "rb") as f:
            return set(pq.read_table(f, columns=["id"]).column("id").to_pylist())

    # shards of both tiers are named after the same scored shard (shard_key hashes the folder too: not comparable)
    relaxed = {posixpath.basename(p): p for p in list_shards(relaxed_dir)}
    missing: list[str] = []
    for path in list_shards(strict_dir):
        other = relaxed.get(posixpath.basename(path))
        extra = ids(path) - (ids(other) if other else set())
        missing += sorted(extra)[: limit - len(missing)]
        if len(missing) >= limit:
            break
    return missing


def score_and_tier(
    docs_dir: str,
    classifier_dir: str,
    scored_dir: str,
    tiers_dir: str,
    config: TierSettings | None = None,
    *,
    workers: int | None = None,
    beam_args: Sequence[str] | None = None,
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
) -> dict:
    """Score every document under ``docs_dir`` once into ``scored_dir``, then write the tiers from the stored
    scores into ``tiers_dir/<tier>``. Returns ``{"scored": summary, "tiers": {name: summary}}``."""
    config = config or TierSettings()
    scorer = QualityScorer(classifier_dir)
    scored = run_shard_stage(scorer, docs_dir, scored_dir, beam_args, workers, max_doc_bytes)
    scored_docs = scored.get("docs_out", 0)
    by_lang = scored.get("score_histogram_by_lang", {})
    scored.update(
        histogram_edges=HIST_EDGES,
        mean_score=round(scored.get("score_sum", 0.0) / scored_docs, 4) if scored_docs else None,
        classifier_sha256=scorer.fingerprint,
    )
    write_json_atomic(join(scored_dir, SUCCESS_FILE), scored)  # the same summary, with the derived fields
    tiers = write_tiers(scored_dir, tiers_dir, config, workers=workers, beam_args=beam_args)
    overview = {
        name: {
            k: s.get(k)
            for k in (
                "threshold",
                "docs_out",
                "bytes_out",
                "share_docs",
                "share_bytes",
                "languages",
                "resumed",
                "flagged_docs",
                "flagged_kept",
            )
        }
        for name, s in tiers.items()
    }
    return {"scored": scored, "tiers": tiers, "overview": overview, "histogram_by_lang": by_lang}


def main(argv: list[str] | None = None) -> int:
    """``python -m synth.labels score``: the run options, the settings of ``TierSettings``; other flags go to Beam."""
    import sys

    from pipelines.settings import ArgumentParser, bounded, settings_parser

    parser = ArgumentParser(prog="python -m synth.labels score", description=__doc__)
    parser.add_argument("--docs", required=True, help="curated stage folder to score")
    parser.add_argument("--classifier", required=True, help="trained classifier folder")
    parser.add_argument("--scored", required=True, help="scored stage folder")
    parser.add_argument("--tiers", required=True, help="folder of the tier stage folders (strict/, relaxed/)")
    parser.add_argument("--workers", type=bounded(int, 1), default=None, help="local worker processes")
    args, beam_args = parse_stage_args(settings_parser(TierSettings, parser=parser), argv)
    try:
        summary = score_and_tier(
            args.docs, args.classifier, args.scored, args.tiers, args.settings, workers=args.workers,
            beam_args=beam_args,
        )  # fmt: skip
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print_summary({"scored": {k: v for k, v in summary["scored"].items() if k != "beam_counters"}})
    print(json.dumps({"tiers": summary["overview"]}, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
