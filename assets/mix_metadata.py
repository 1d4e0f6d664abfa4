"""Metadata and checks of the mixture assets (pretraining_mixture, long_context_mixture): the realised mix per bucket
as a table and as a chart of realised against target tokens, and the check that the two agree."""

import dagster as dg

from assets import plots
from assets.metadata import counts_table, rows_table

_MIX_COLUMNS = [
    ("bucket", "string", "<domain>/<language>"),
    ("weight", "float", "share of the token budget"),
    ("available tokens", "int"),
    ("target tokens", "int"),
    ("realised tokens", "int"),
    ("deviation", "float", "realised / target - 1; empty without a target"),
    ("epochs", "float", "times the bucket's documents are used"),
    ("capped", "bool", "the repeat cap kept the bucket under its target"),
]


def mix_metadata(summary: dict) -> dict:
    check = summary["mix_check"]
    rows = [
        {
            "bucket": b["bucket"],
            "weight": b["weight"] or 0.0,
            "available tokens": b["available_tokens"] or 0,
            "target tokens": b["target_tokens"],
            "realised tokens": b["realised_tokens"],
            "deviation": b["deviation"],
            "epochs": b["epochs"],
            "capped": b["capped"],
        }
        for b in check["buckets"]
    ]
    plan = summary["plan"]
    return {
        "dagster/row_count": summary.get("docs_out", 0),
        "mixture": dg.MetadataValue.json(plan["mixture"]),
        "mixture_fingerprint": plan["mixture_fingerprint"],
        "target_tokens": check["target_tokens"],
        "realised_tokens": check["realised_tokens"],
        "realised_mix": rows_table(rows, _MIX_COLUMNS),
        "realised_vs_target": plots.md(plots.mix_markdown(check["buckets"])),
        "tokens_per_language": counts_table(summary.get("languages", {}), "language", "tokens"),
        "missing_domains": ", ".join(plan.get("missing_domains", [])) or "none",
        "document_copies": dg.MetadataValue.json(summary.get("copies", {})),
        "path": dg.MetadataValue.path(summary["output"]),
        "seconds": summary.get("seconds", 0.0),
    }


def mix_checks(summary: dict) -> list[dg.AssetCheckResult]:
    from pipelines.checks import schema_problems
    from pipelines.schema import MIXED_SCHEMA

    problems = schema_problems(summary["output"], MIXED_SCHEMA)
    check = summary["mix_check"]
    schema = dg.AssetCheckResult(
        check_name="schema", passed=not problems, metadata={"problems": dg.MetadataValue.json(problems[:20])}
    )
    return [
        schema,
        dg.AssetCheckResult(
            check_name="realised_mix_matches_target",
            passed=check["passed"],
            metadata={
                "failed_buckets": ", ".join(check["failed_buckets"]) or "none",
                "target_tokens": check["target_tokens"],
                "realised_tokens": check["realised_tokens"],
            },
        ),
    ]
