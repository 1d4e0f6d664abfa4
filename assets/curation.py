"""Curation assets: ingest -> language ID -> quality filters -> dedup, each a Beam pipeline.

Ingest, language ID and quality filtering are partitioned by crawl dump (``dagster_project.crawl_partitions``):
each dump has its own folders (``curated/<stage>/<dump>``), and a run over several dumps (a backfill) runs each
stage as one Beam job over all of them. Dedup is global: it reads the quality folders of every dump.

The assets only describe, configure and launch: the work is in ``pipelines/`` (imported inside the
functions so the code location loads fast), big data stays in Parquet shards under the data root,
and each asset returns the shard folder with the counts a person wants to see.
"""

import functools
import warnings

import dagster as dg
from pydantic import Field

from assets import plots
from assets.metadata import counts_table
from assets.pools import DEDUP_POOL
from dagster_project.crawl_partitions import CRAWL_DUMPS
from dagster_project.resources import CurationResource
from pipelines.curation_settings import DedupSettings, IngestSettings, LanguageIdSettings, QualitySettings
from pipelines.progress import stage_heartbeat
from pipelines.settings import dagster_config, to_settings

GROUP = "curation"
KINDS = {"beam", "parquet"}

# The stages are resumable (finished shards are kept and skipped), so a retry after a transient failure (an object
# store or network hiccup, a killed worker) continues where the failed attempt stopped: waits of about 30 s, 60 s,
# 120 s. Only the I/O-heavy curation stages retry; training assets do not (a failed run is looked at first).
CURATION_RETRY = dg.RetryPolicy(max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
# Errors that another attempt cannot fix: bad settings or input (ValueError, which includes pydantic's validation
# errors and pipelines.stage_dir.StageOutputError), a missing crawl folder or file.
NOT_RETRIED = (ValueError, TypeError, FileNotFoundError, NotADirectoryError)


def retry_only_transient_errors(fn):
    """The asset function ``fn``, raising an error that a retry cannot fix as a ``dg.Failure`` that skips
    ``CURATION_RETRY`` (the cause is kept). Dagster reads ``fn``'s signature and docstring through the wrapper."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NOT_RETRIED as error:
            raise dg.Failure(description=f"{type(error).__name__}: {error}", allow_retries=False) from error

    return wrapper


# The Launchpad config of each asset is generated from the stage's settings (pipelines/curation_settings.py), the
# same model as the stage's command line: same names, defaults, bounds and docs (tests/test_config_parity.py).
IngestConfig = dagster_config(
    IngestSettings,
    "IngestConfig",
    inputs=(
        list[str],
        Field(
            default=[],
            description="Globs or fsspec URIs of .warc[.gz], .wet[.gz], .jsonl[.gz] or .parquet files, or "
            "hf:<dataset>:<split>, read as the one crawl dump this run materializes. Empty: every file under the "
            "dump's folder, <data_root>/crawl/<dump>.",
        ),
    ),
)
LanguageIdConfig = dagster_config(LanguageIdSettings, "LanguageIdConfig")
QualityConfig = dagster_config(QualitySettings, "QualityConfig")
DedupAssetConfig = dagster_config(
    DedupSettings,
    "DedupAssetConfig",
    max_duplicate_rate=(
        float,
        Field(default=0.001, ge=0, le=1, description="Asset check: most exact duplicates left after dedup (share)."),
    ),
)


def stage_metadata(summary: dict) -> dict:
    docs_in, docs_out = summary.get("docs_in", 0), summary.get("docs_out", 0)
    return {
        "dagster/row_count": docs_out,
        "documents_in": docs_in,
        "documents_out": docs_out,
        "kept_share": round(docs_out / docs_in, 4) if docs_in else 0.0,
        "bytes_out": summary.get("bytes_out", 0),
        "quarantined_records": summary.get("errors", 0),
        "drops_by_reason": counts_table(summary.get("dropped", {}), "reason", "documents"),
        "quarantined_by_reason": counts_table(summary.get("errors_by_reason", {}), "reason", "records"),
        "languages": counts_table(summary.get("languages", {}), "language", "documents"),
        "shards": summary.get("shards", 0),
        "resumed_from_earlier_run": bool(summary.get("resumed")),
        "seconds": summary.get("seconds", 0.0),
        "path": dg.MetadataValue.path(summary["output"]),
        "crawl_dumps": len(summary.get("dumps", [])) or 1,
        "beam_counters": dg.MetadataValue.json(summary.get("beam_counters", {})),
        "skipped_input_files": len(summary.get("skipped_inputs", [])),  # in a folder or glob, but no document format
        "removed_shards": len(summary.get("removed_shards", [])),  # their input is gone
        **(
            {"skipped_inputs": dg.MetadataValue.json(summary["skipped_inputs"][:100])}
            if summary.get("skipped_inputs")
            else {}
        ),
        **{  # ingest: repeated ids renamed within a file, counted across files
            key: summary[key]
            for key in ("duplicate_ids_renamed", "cross_file_duplicate_ids", "cross_file_duplicate_documents")
            if key in summary
        },
    }


def _schema_and_size_checks(stage_dirs: list[str], summary: dict) -> list[dg.AssetCheckResult]:
    from pipelines.checks import schema_problems

    problems = [problem for stage_dir in stage_dirs for problem in schema_problems(stage_dir)]
    return [
        dg.AssetCheckResult(
            check_name="schema", passed=not problems, metadata={"problems": dg.MetadataValue.json(problems[:20])}
        ),
        dg.AssetCheckResult(
            check_name="non_empty",
            passed=summary.get("docs_out", 0) > 0,
            metadata={"documents_out": summary.get("docs_out", 0)},
        ),
    ]


# Partitioned by crawl dump; a backfill of several dumps is one run (and so one Beam job per stage). Dagster marks
# the asset decorator's backfill_policy parameter beta and warns each time the code location loads: said once here.
PER_DUMP = {"partitions_def": CRAWL_DUMPS, "backfill_policy": dg.BackfillPolicy.single_run()}
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)


def run_per_dump(
    context: dg.AssetExecutionContext,
    curation: CurationResource,
    stage: str,
    label: str,
    run_many,
    inputs,
    settings,
) -> tuple[dict, list[str]]:
    """Run one stage for every crawl dump of this run, as one Beam job: ``run_many({output -> inputs(dump)})``.
    Returns the dumps' summaries combined (with a per-dump table in ``by_dump``) and the output folders."""
    from pipelines.report import combine_summaries

    dumps = list(context.partition_keys)
    jobs = {curation.stage_dir(stage, dump): inputs(dump) for dump in dumps}
    with _heartbeat(list(jobs), label):
        by_output = run_many(jobs, settings=settings, **curation.run_kwargs())
    summaries = {dump: by_output[curation.stage_dir(stage, dump)] for dump in dumps}
    summary = combine_summaries(summaries) | {"output": curation.stage_dir(stage)}
    summary["by_dump"] = {
        dump: {k: s.get(k, 0) for k in ("docs_in", "docs_out", "errors")} for dump, s in summaries.items()
    }
    return summary, list(jobs)


def dump_metadata(summary: dict) -> dict:
    """The per-dump table of a partitioned stage's run."""
    rows = [
        dg.TableRecord(
            {
                "dump": dump,
                "documents_in": row["docs_in"],
                "documents_out": row["docs_out"],
                "quarantined": row["errors"],
            }
        )
        for dump, row in sorted(summary.get("by_dump", {}).items())
    ]
    columns = [dg.TableColumn("dump", "string")] + [
        dg.TableColumn(name, "int") for name in ("documents_in", "documents_out", "quarantined")
    ]
    return {"documents_by_dump": dg.MetadataValue.table(rows, dg.TableSchema(columns=columns))}


def _heartbeat(stage_dirs: str | list[str], label: str):
    """While the stage runs, a line in the run log at least every 30 s: shards committed, documents processed/kept."""
    return stage_heartbeat(dg.get_dagster_logger().info, stage_dirs, label)


def _specs(asset: str, **extra: str) -> list[dg.AssetCheckSpec]:
    """The checks every curation stage has, plus ``extra`` (check name -> description)."""
    checks = {
        "schema": "Every data shard has the documented Parquet schema.",
        "non_empty": "The stage kept at least one document.",
        **extra,
    }
    return [dg.AssetCheckSpec(name, asset=asset, description=text) for name, text in checks.items()]


@dg.asset(group_name=GROUP, kinds=KINDS, check_specs=_specs("raw_documents"), retry_policy=CURATION_RETRY, **PER_DUMP)
@retry_only_transient_errors
def raw_documents(
    context: dg.AssetExecutionContext, config: IngestConfig, curation: CurationResource
) -> dg.MaterializeResult:
    """Raw crawl files (WARC/WET/JSONL/Parquet/HF datasets) of each crawl dump as Parquet shards of plain-text
    documents, in ``curated/ingested/<dump>``.

    HTML is turned into text with datatrove's Trafilatura extractor; unreadable records are quarantined to
    ``errors/`` with a reason and the run goes on. One shard per input file; a killed run resumes.
    """
    from pipelines import ingest

    if config.inputs and len(context.partition_keys) > 1:
        raise ValueError("inputs names the files of one crawl dump: materialize one partition with it, not a range")
    settings = to_settings(IngestSettings, config)
    summary, outs = run_per_dump(
        context,
        curation,
        "ingested",
        "ingest",
        ingest.run_many,
        lambda dump: config.inputs or [curation.crawl_dir(dump)],
        settings,
    )
    metadata = stage_metadata(summary) | dump_metadata(summary)
    return dg.MaterializeResult(metadata=metadata, check_results=_schema_and_size_checks(outs, summary))


@dg.asset(
    group_name=GROUP,
    kinds=KINDS | {"fasttext"},
    deps=[raw_documents],
    retry_policy=CURATION_RETRY,
    **PER_DUMP,
    check_specs=_specs(
        "language_filtered_documents",
        below_threshold_share="Warn when over half the documents score under their language threshold.",
    ),
)
@retry_only_transient_errors
def language_filtered_documents(
    context: dg.AssetExecutionContext, config: LanguageIdConfig, curation: CurationResource
) -> dg.MaterializeResult:
    """Documents labelled with fastText lid.176 (``lang``, ``lang_score``), kept when the language is wanted
    and its score passes that language's threshold (FineWeb-2's values by default); per crawl dump."""
    from pipelines import langid

    settings = to_settings(LanguageIdSettings, config)
    summary, outs = run_per_dump(
        context,
        curation,
        "langid",
        "language ID",
        langid.run_many,
        lambda dump: curation.stage_dir("ingested", dump),
        settings,
    )
    below = summary.get("dropped", {}).get("lang_below_threshold", 0)
    share = below / summary["docs_in"] if summary.get("docs_in") else 0.0
    checks = _schema_and_size_checks(outs, summary) + [
        dg.AssetCheckResult(
            check_name="below_threshold_share",
            passed=share <= 0.5,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"share": round(share, 4), "documents": below},
        )
    ]
    metadata = (
        stage_metadata(summary)
        | dump_metadata(summary)
        | {
            "below_threshold_share": round(share, 4),
            "language_distribution": plots.md(plots.language_markdown(summary.get("languages", {}))),
        }
    )
    return dg.MaterializeResult(metadata=metadata, check_results=checks)


@dg.asset(
    group_name=GROUP,
    kinds=KINDS | {"datatrove"},
    deps=[language_filtered_documents],
    retry_policy=CURATION_RETRY,
    **PER_DUMP,
    check_specs=_specs("quality_filtered_documents"),
)
@retry_only_transient_errors
def quality_filtered_documents(
    context: dg.AssetExecutionContext, config: QualityConfig, curation: CurationResource
) -> dg.MaterializeResult:
    """Documents that pass the quality filters of their domain profile (``pipelines/profiles/*.toml``): web prose
    gets datatrove's Gopher repetition, Gopher quality, C4 and FineWeb filters tuned per language; technical
    documentation and CJK text lose only clear junk (the model-based score decides the rest); source code gets
    StarCoder's rules. Kept documents the web chain would have dropped carry its rules in ``metadata``; dropped
    documents are kept in ``excluded/`` for audit. Per crawl dump."""
    from pipelines import quality

    settings = to_settings(QualitySettings, config)
    summary, outs = run_per_dump(
        context,
        curation,
        "quality",
        "quality filters",
        quality.run_many,
        lambda dump: curation.stage_dir("langid", dump),
        settings,
    )
    flagged = summary.get("flagged_docs", {})
    metadata = (
        stage_metadata(summary)
        | dump_metadata(summary)
        | {
            "documents_by_profile": counts_table(summary.get("profiles", {}), "profile", "kept documents"),
            "profile_chosen_by": counts_table(summary.get("profile_evidence", {}), "profile:signal", "kept documents"),
            "kept_but_web_chain_would_drop": sum(flagged.values()),
            "web_chain_rules_failed_by_kept": counts_table(
                summary.get("flags", {}), "web-chain rule", "kept documents"
            ),
        }
    )
    return dg.MaterializeResult(metadata=metadata, check_results=_schema_and_size_checks(outs, summary))


@dg.asset(
    group_name=GROUP,
    kinds=KINDS | {"datasketch"},
    deps=[quality_filtered_documents],
    retry_policy=CURATION_RETRY,
    # not partitioned; single-run so that `dagster asset materialize --partition-range` can include it
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool=DEDUP_POOL,  # every dump's run ends here: one at a time (the folder is global)
    check_specs=_specs(
        "deduplicated_documents",
        duplicate_rate="Exact duplicates (normalized text) left after dedup stay under the limit.",
    ),
)
@retry_only_transient_errors
def deduplicated_documents(
    context: dg.AssetExecutionContext, config: DedupAssetConfig, curation: CurationResource
) -> dg.MaterializeResult:
    """One document per duplicate cluster over every crawl dump (exact hash + MinHash-LSH, banding as a Beam
    GroupByKey, clusters by union-find). Kept documents carry ``dup_cluster`` and ``dup_cluster_size``."""
    from pipelines import dedup
    from pipelines.checks import remaining_duplicate_rate
    from pipelines.report import dump_folders

    out = curation.stage_dir("dedup")
    partitions = context.instance.get_dynamic_partitions(CRAWL_DUMPS.name)
    finished = set(dump_folders(curation.stage_dir("quality")))
    dumps = [dump for dump in partitions if dump in finished]
    if not dumps:
        raise ValueError(f"no crawl dump has finished the quality stage ({curation.stage_dir('quality')}/<dump>)")
    settings = to_settings(DedupSettings, config)
    with _heartbeat(out, "dedup"):
        inputs = [curation.stage_dir("quality", dump) for dump in dumps]
        summary = dedup.run(inputs, out, settings=settings, **curation.run_kwargs())
    rate, remaining = remaining_duplicate_rate(out)
    clusters = summary.get("clusters", {})
    metadata = stage_metadata(summary) | {
        "crawl_dumps": len(dumps),
        "crawl_dumps_not_curated_yet": dg.MetadataValue.json(sorted(set(partitions) - finished)),
        "duplicate_clusters": clusters.get("clusters", 0),
        "documents_in_clusters": clusters.get("documents_in_clusters", 0),
        "largest_cluster": clusters.get("largest_cluster", 0),
        "cluster_sizes": counts_table(clusters.get("cluster_size_histogram", {}), "cluster size", "clusters"),
        "language_distribution": plots.md(plots.language_markdown(summary.get("languages", {}), "kept per language")),
    }
    funnel = plots.read_funnel(curation.stage_dir, dumps)  # every stage's _SUCCESS.json: ingest -> ... -> dedup
    metadata |= plots.funnel_metadata(funnel) | {"funnel": plots.md(plots.funnel_markdown(funnel))}
    metadata["funnel_drops_by_reason"] = counts_table(funnel["drops"], "stage: reason", "documents")
    checks = _schema_and_size_checks([out], summary) + [
        dg.AssetCheckResult(
            check_name="duplicate_rate",
            passed=rate <= config.max_duplicate_rate,
            metadata={"rate": round(rate, 6), "exact_duplicates_left": remaining},
        )
    ]
    return dg.MaterializeResult(metadata=metadata, check_results=checks)


curation_assets = [raw_documents, language_filtered_documents, quality_filtered_documents, deduplicated_documents]
