"""Synthesis assets: a Qwen teacher judges data quality and writes SFT, pretraining and preference data.

Thin like the other groups: the work is in ``synth/`` (each step also runs as ``python -m synth.<module>``).
The teacher comes from the ``synthesis`` resource (the default CPU teacher, any checkpoint folder such as an
earlier run's SFT model, an OpenAI-compatible server or vLLM). Every request is cached by content, so a killed
or repeated materialization asks the teacher only what it has not answered yet. Every synthetic output goes
through the same MinHash dedup as curation and a 13-gram decontamination against the evaluation sets.
"""

import dagster as dg

from assets.curation import deduplicated_documents
from assets.metadata import counts_table, rows_table
from assets.pools import TEACHER_POOL
from dagster_project.resources import CurationResource, SynthesisResource
from pipelines.settings import dagster_config, to_settings
from synth.instruction_docs import InstructionDocsSettings
from synth.settings import (
    ClassifierSettings,
    LabelSettings,
    PreferenceSettings,
    RephraseSettings,
    SftDataSettings,
    TierSettings,
)

GROUP = "synthesis"
KINDS = {"pytorch", "parquet"}
# Assets that load the teacher carry this op tag; the code location's executor runs one of them at a time, so a CPU
# machine is not split between several copies of the model (see dagster_project/definitions.py).
TEACHER_TAG = {"qwen2/teacher": "load"}
TEACHER = {"op_tags": TEACHER_TAG, "pool": TEACHER_POOL}  # and across runs, one teacher-heavy run at a time

# Launchpad config generated from the stages' settings (synth.settings): the same names, defaults (the recipe's),
# bounds and descriptions as each stage's --help. The CPU demo's sizes are in dagster_project/profiles/demo.toml.
QualityLabelsConfig = dagster_config(LabelSettings, "QualityLabelsConfig")
QualityClassifierConfig = dagster_config(ClassifierSettings, "QualityClassifierConfig")
QualityTiersConfig = dagster_config(TierSettings, "QualityTiersConfig")
SFTDataConfig = dagster_config(SftDataSettings, "SFTDataConfig")
SyntheticPretrainingConfig = dagster_config(RephraseSettings, "SyntheticPretrainingConfig")
PreferencePairsConfig = dagster_config(PreferenceSettings, "PreferencePairsConfig")
InstructionDocumentsConfig = dagster_config(InstructionDocsSettings, "InstructionDocumentsConfig")


# ----------------------------------------------------------------------------- helpers


def _method_table(summaries: dict[str, dict]) -> dg.MetadataValue:
    rows = [
        {
            "method": method,
            "items": s.get("items", 0),
            "samples": s.get("samples", 0),
            "accepted": s.get("accepted", 0),
            "acceptance rate": s.get("acceptance_rate", 0.0),
            "rejected (by reason)": dict(sorted(s.get("rejected", {}).items(), key=lambda kv: -kv[1])),
        }
        for method, s in summaries.items()
    ]
    columns = [("method", "string"), ("items", "int"), ("samples", "int"), ("accepted", "int")]
    columns += [("acceptance rate", "float", "accepted / samples"), ("rejected (by reason)", "string")]
    return rows_table(rows, columns)


def _clean_metadata(summary: dict) -> dict:
    contaminated = summary.get("contaminated", {})
    return {
        "dedup_exact_duplicates": summary.get("exact_duplicate", 0),
        "dedup_near_duplicates": summary.get("near_duplicate", 0),
        "decontaminated": sum(contaminated.values()),
        "contaminated_by_eval_set": counts_table(contaminated, "eval set", "records"),
        "eval_sets": dg.MetadataValue.json(summary.get("eval_sets", {})),
    }


def _schema_check(stage_dir: str, schema, name: str = "schema") -> dg.AssetCheckResult:
    from pipelines.checks import schema_problems

    problems = schema_problems(stage_dir, schema)
    return dg.AssetCheckResult(
        check_name=name, passed=not problems, metadata={"problems": dg.MetadataValue.json(problems[:20])}
    )


def _chat_check(stage_dir: str, kind: str) -> dg.AssetCheckResult:
    from synth.checks import chat_problems

    problems, rows = chat_problems(stage_dir, kind)
    return dg.AssetCheckResult(
        check_name="chat_format",
        passed=not problems,
        metadata={"rows_checked": rows, "problems": dg.MetadataValue.json(problems)},
    )


_SCHEMA = "Every shard has the Parquet schema the trainers read."
_CHAT = (
    "Every conversation alternates user and assistant turns (after an optional system turn) and ends with an "
    "assistant turn."
)


# ----------------------------------------------------------------------------- assets


@dg.asset(
    group_name=GROUP,
    **TEACHER,
    kinds={"pytorch"},
    check_specs=[dg.AssetCheckSpec("answers", asset="teacher_model", description="The teacher answers a question.")],
)
def teacher_model(context: dg.AssetExecutionContext, synthesis: SynthesisResource, curation: CurationResource):
    """The teacher model that rates documents and writes synthetic data: set up (the default CPU teacher is
    rebuilt offline from PyPI wheels once), loaded, and asked one question."""
    import time

    from synth.llm.base import GenerationRequest
    from synth.llm.teacher import describe_teacher

    started = time.time()
    info = describe_teacher(synthesis.backend, synthesis.model or None, synthesis.base_url or None)
    context.log.info(f"teacher: {info}")
    generator = synthesis.generator(curation.data_root, use_cache=False)  # a live answer, not a cached one
    question = "Explain in two sentences what a package manager does."
    try:
        request = GenerationRequest([{"role": "user", "content": question}], max_new_tokens=64)
        result = generator.generate([request])[0]
    finally:
        generator.close()
    answer = result.texts[0]
    return dg.MaterializeResult(
        metadata={
            **{k: v for k, v in info.items() if k != "path"},
            "path": dg.MetadataValue.path(info.get("path") or info.get("base_url", "")),
            "sample_answer": dg.MetadataValue.md(f"**user**\n\n> {question}\n\n**assistant**\n\n> {answer}"),
            "seconds": round(time.time() - started, 2),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="answers",
                passed=bool(answer.strip()),
                metadata={"finish_reason": result.finish_reasons[0], "tokens": result.completion_tokens[0]},
            )
        ],
    )


@dg.asset(group_name=GROUP, **TEACHER, kinds=KINDS, deps=[teacher_model, deduplicated_documents])
def quality_labels(
    context: dg.AssetExecutionContext,
    config: QualityLabelsConfig,
    synthesis: SynthesisResource,
    curation: CurationResource,
):
    """The teacher rates a language-balanced sample of the deduplicated documents for educational and
    informational value (0-5, an additive rubric written in each document's own language). The label is the
    most probable digit; the score its expected value under the teacher's next-token distribution."""
    from synth.labels.label import label_documents, read_labels

    generator = synthesis.generator(curation.data_root)
    try:
        summary = label_documents(
            generator,
            curation.stage_dir("dedup"),
            curation.quality_dir("labels"),
            to_settings(LabelSettings, config),
            log=context.log.info,
        )
    finally:
        generator.close()
    rows = read_labels(summary["output"])
    examples = [
        f"**{r['label']}** (score {r['score']:.2f}, {r['lang']}): {(r['text'] or '')[:240].replace(chr(10), ' ')}"
        for r in sorted(rows, key=lambda r: -r["score"])[:: max(1, len(rows) // 5)][:5]
    ]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": summary["accepted"],
            "documents_rated": summary["accepted"],
            "off_format": summary["rejected"].get("off_format", 0),
            "labels": counts_table({str(k): v for k, v in summary.get("labels", {}).items()}, "label", "documents"),
            "languages": counts_table(summary.get("languages", {}), "language", "documents"),
            "domains": counts_table(summary.get("domains", {}), "domain", "documents"),
            "splits": dg.MetadataValue.json(summary.get("splits", {})),
            "labels_per_minute": summary.get("labels_per_minute"),
            "mean_prompt_tokens": summary.get("mean_prompt_tokens"),
            "excerpt_tokens": config.excerpt_tokens,
            "mean_score": round(summary.get("score_sum", 0.0) / summary["accepted"], 3) if summary["accepted"] else 0,
            "teacher": summary.get("model", ""),
            "examples": dg.MetadataValue.md("\n\n".join(examples) or "_none_"),
            "path": dg.MetadataValue.path(summary["output"]),
            "seconds": summary.get("seconds", 0.0),
        }
    )


_AGREEMENT_METRICS = ("n", "exact_accuracy", "within1_accuracy", "mae", "pearson", "spearman")


def _agreement_table(metrics: dict) -> dg.MetadataValue:
    """Classifier vs teacher on the held-out and the training labels: one metric a row, numbers as numbers
    (the interval of Spearman's rho as its low and high ends; an empty cell where it could not be computed)."""
    held, train = metrics.get("heldout") or {}, metrics.get("train") or {}
    rows = [{"metric": k, "held out": held.get(k), "train": train.get(k)} for k in _AGREEMENT_METRICS]
    ci, ci_train = held.get("spearman_ci") or {}, train.get("spearman_ci") or {}
    for end in ("low", "high"):
        rows.append(
            {
                "metric": f"spearman {ci.get('confidence', 0.95):.0%} CI {end}",
                "held out": ci.get(end),
                "train": ci_train.get(end),
            }
        )
    for tier in ("strict", "relaxed"):
        b = (held.get("binary") or {}).get(tier) or {}
        bt = (train.get("binary") or {}).get(tier) or {}
        rows.append(
            {
                "metric": f"{tier} tier agreement (>= {b.get('threshold')})",
                "held out": b.get("accuracy"),
                "train": bt.get("accuracy"),
            }
        )
        rows.append({"metric": f"{tier} tier F1", "held out": b.get("f1"), "train": bt.get("f1")})
    return rows_table(rows, [("metric", "string"), ("held out", "float"), ("train", "float")])


@dg.asset(
    group_name=GROUP,
    kinds={"fasttext"},
    deps=[quality_labels],
    check_specs=[
        dg.AssetCheckSpec(
            "agrees_with_teacher",
            asset="quality_classifier",
            description="On the held-out labels, the confidence interval of Spearman's rho between the classifier's "
            "and the teacher's scores lies above zero (fails with too few held-out labels to tell).",
        )
    ],
)
def quality_classifier(config: QualityClassifierConfig, curation: CurationResource):
    """A fastText classifier trained on the teacher's labels: it scores every document in milliseconds where
    the teacher takes seconds. Agreement with the teacher is measured on the held-out labels."""
    from synth.labels.classifier import train_classifier

    metrics = train_classifier(
        curation.quality_dir("labels"), curation.quality_dir("classifier"), to_settings(ClassifierSettings, config)
    )
    held = metrics.get("heldout") or {}
    ci = held.get("spearman_ci") or {}
    low = ci.get("low")
    problem = f"held-out: {ci['problem']}" if ci.get("problem") else ("no held-out labels" if not held else None)
    if problem is None and low is not None and low <= 0:
        interval = f"the {config.confidence:.0%} interval [{low:.3f}, {ci['high']:.3f}] of Spearman's rho"
        if ci["high"] < 0:
            problem = f"{interval} lies below zero: the classifier ranks documents against the teacher"
        else:
            problem = f"{interval} includes zero: no evidence that the classifier agrees with the teacher"
    return dg.MaterializeResult(
        metadata={
            "agreement_with_teacher": _agreement_table(metrics),
            "labels": dg.MetadataValue.json(metrics["counts"]),
            "model_sha256": metrics["model_sha256"],
            "model_bytes": metrics["model_bytes"],
            "teacher": metrics.get("teacher") or "",
            "path": dg.MetadataValue.path(curation.quality_dir("classifier")),
            "seconds": metrics.get("seconds", 0.0),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="agrees_with_teacher",
                passed=problem is None,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={
                    "spearman": ci.get("rho"),
                    "ci_low": low,
                    "ci_high": ci.get("high"),
                    "confidence": config.confidence,
                    "heldout_labels": held.get("n", 0),
                    "heldout_classes": dg.MetadataValue.json(metrics["counts"]["heldout_classes"]),
                    "within1_accuracy": held.get("within1_accuracy"),
                    "problem": problem or "",
                },
            )
        ],
    )


@dg.asset(
    group_name=GROUP,
    kinds={"beam", "parquet", "fasttext"},
    deps=[quality_classifier, deduplicated_documents],
    check_specs=[
        dg.AssetCheckSpec("schema", asset="quality_tiers", description="The tiers are plain document shards."),
        dg.AssetCheckSpec(
            "strict_within_relaxed", asset="quality_tiers", description="The strict tier is a subset of the relaxed."
        ),
    ],
)
def quality_tiers(config: QualityTiersConfig, curation: CurationResource):
    """Every deduplicated document scored once by the classifier (stored in curated/quality_scored), and two
    tiers cut from those stored scores in one pass: strict (Qwen2 chose its 7T-token set) and relaxed (the 12T
    one). Pretraining mixes a tier when mixture_index's quality_tier names it."""
    from pipelines.schema import DOCUMENT_SCHEMA
    from synth.labels.tiers import score_and_tier, tier_subset_problems

    result = score_and_tier(
        curation.stage_dir("dedup"),
        curation.quality_dir("classifier"),
        curation.stage_dir("quality_scored"),
        curation.tiers_dir(),
        to_settings(TierSettings, config),
        **curation.run_kwargs(),
    )
    scored, tiers = result["scored"], result["tiers"]
    tier_rows = [
        {
            "tier": "all scored",
            "documents": scored.get("docs_out", 0),
            "share": 1.0,
            "bytes": scored.get("bytes_out", 0),
            "share of bytes": 1.0,
        }
    ]
    tier_rows += [
        {
            "tier": name,
            "threshold": s["threshold"],
            "documents": s.get("docs_out", 0),
            "share": s["share_docs"],
            "bytes": s.get("bytes_out", 0),
            "share of bytes": s["share_bytes"],
        }
        for name, s in tiers.items()
    ]
    tier_columns = [("tier", "string"), ("threshold", "float", "lowest quality score kept"), ("documents", "int")]
    tier_columns += [("share", "float"), ("bytes", "int"), ("share of bytes", "float")]
    edges = scored.get("histogram_edges") or []
    histogram = [
        {"score from": edges[k], "score to": edges[k + 1], "documents": n}
        for k, n in enumerate(scored.get("score_histogram", []))
    ]
    strict, relaxed = tiers["strict"], tiers["relaxed"]
    not_in_relaxed = tier_subset_problems(strict["output"], relaxed["output"])
    checks = [_schema_check(s["output"], DOCUMENT_SCHEMA) for s in tiers.values()]
    schema = dg.AssetCheckResult(
        check_name="schema",
        passed=all(c.passed for c in checks),
        metadata={"problems": dg.MetadataValue.json([p for c in checks for p in c.metadata["problems"].value])},
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": scored.get("docs_out", 0),
            "tiers": rows_table(tier_rows, tier_columns),
            "strict_documents": strict.get("docs_out", 0),
            "relaxed_documents": relaxed.get("docs_out", 0),
            "strict_bytes": strict.get("bytes_out", 0),
            "relaxed_bytes": relaxed.get("bytes_out", 0),
            "mean_score": scored.get("mean_score") or 0.0,
            "score_histogram": rows_table(
                histogram, [("score from", "float"), ("score to", "float"), ("documents", "int")]
            ),
            "strict_languages": counts_table(strict.get("languages", {}), "language", "documents"),
            "relaxed_languages": counts_table(relaxed.get("languages", {}), "language", "documents"),
            "classifier_sha256": scored.get("classifier_sha256", ""),
            # kept documents the web chain's heuristics would have dropped, and how many of them a tier keeps
            "flagged_documents": relaxed.get("flagged_docs", 0),
            "strict_flagged_kept": strict.get("flagged_kept", 0),
            "relaxed_flagged_kept": relaxed.get("flagged_kept", 0),
            "relaxed_flagged_kept_by_rule": counts_table(relaxed.get("flagged_kept_by_rule", {}), "rule", "documents"),
            "flagged_sample": dg.MetadataValue.json(relaxed.get("flagged_sample", [])),
            "path": dg.MetadataValue.path(curation.tiers_dir()),
            "seconds": round(scored.get("seconds", 0.0) + sum(s.get("seconds", 0.0) for s in tiers.values()), 2),
        },
        check_results=[
            schema,
            dg.AssetCheckResult(
                check_name="strict_within_relaxed",
                passed=not not_in_relaxed,
                metadata={
                    "strict": strict.get("docs_out", 0),
                    "relaxed": relaxed.get("docs_out", 0),
                    "strict_only_ids": dg.MetadataValue.json(not_in_relaxed),
                },
            ),
        ],
    )


def _clean(synthesis: SynthesisResource, curation: CurationResource, in_dirs: list[str], out: str, kind: str):
    from synth.decontam import CleanConfig, clean_stage

    return clean_stage(
        in_dirs, out, kind, list(synthesis.eval_sets), CleanConfig(ngram=synthesis.decontam_ngram),
        **curation.run_kwargs(),
    )  # fmt: skip


@dg.asset(
    group_name=GROUP,
    **TEACHER,
    kinds=KINDS,
    deps=[teacher_model, deduplicated_documents],
    check_specs=[
        dg.AssetCheckSpec("schema", asset="sft_data", description=_SCHEMA),
        dg.AssetCheckSpec("chat_format", asset="sft_data", description=_CHAT),
    ],
)
def sft_data(
    context: dg.AssetExecutionContext, config: SFTDataConfig, synthesis: SynthesisResource, curation: CurationResource
):
    """Synthetic SFT conversations (ChatML) from five methods: instructions written from seed prompts, math
    answers kept only when they reach the reference answer the pipeline computed (rejection sampling), code kept
    only when the teacher's tests pass in the sandbox (execution feedback), long curated documents turned into
    grounded questions and answers (repurposing), and answers critiqued and revised against written principles
    (constitutional feedback). All of it is deduplicated and decontaminated into synthetic/sft/final."""
    from pipelines.schema import SFT_SCHEMA
    from synth.checks import examples_markdown
    from synth.sft.stage import run_sft

    generator = synthesis.generator(curation.data_root)
    try:
        summaries = run_sft(
            generator,
            curation.synthetic_dir("sft"),
            to_settings(SftDataSettings, config),
            docs_dir=curation.stage_dir("dedup"),
            log=context.log.info,
        )
    finally:
        generator.close()
    final = curation.synthetic_dir("sft/final")
    clean = _clean(synthesis, curation, [s["output"] for s in summaries.values()], final, "sft")
    examples = "\n\n---\n\n".join(
        examples_markdown(s["output"], "sft", n=1) for s in summaries.values() if s.get("accepted")
    )
    math, code = summaries.get("math_rejection", {}), summaries.get("code_execution", {})
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": clean["output"],
            "conversations": clean["output"],
            "by_method": _method_table(summaries),
            "conversations_per_method": counts_table(clean.get("methods_out", {}), "method", "conversations"),
            "math_samples_passed": f"{math.get('accepted', 0)} of {math.get('samples', 0)}",
            "code_samples_passed": f"{code.get('accepted', 0)} of {code.get('samples', 0)}",
            "code_tests_passed": f"{code.get('tests_passed', 0)} of {code.get('tests_run', 0)} sandbox runs",
            **_clean_metadata(clean),
            "examples": dg.MetadataValue.md(examples or "_no conversation was kept_"),
            "teacher": generator.model_id,
            "path": dg.MetadataValue.path(final),
        },
        check_results=[_schema_check(final, SFT_SCHEMA), _chat_check(final, "sft")],
    )


@dg.asset(
    group_name=GROUP,
    **TEACHER,
    kinds=KINDS,
    deps=[teacher_model, deduplicated_documents],
    check_specs=[dg.AssetCheckSpec("schema", asset="synthetic_pretraining_data", description=_SCHEMA)],
)
def synthetic_pretraining_data(
    context: dg.AssetExecutionContext,
    config: SyntheticPretrainingConfig,
    synthesis: SynthesisResource,
    curation: CurationResource,
):
    """Curated documents rephrased by the teacher (as an encyclopedia article, as questions and answers, in
    simple words), in their own language, deduplicated and decontaminated into synthetic/pretraining: a
    document stage with domain "synthetic" that mixture_index mixes in as its own buckets."""
    from pipelines.schema import DOCUMENT_SCHEMA
    from pipelines.shards import iter_stage_rows
    from synth.rephrase import RephraseConfig, run_rephrase

    settings = to_settings(RephraseSettings, config)
    generator = synthesis.generator(curation.data_root)
    try:
        cfg = RephraseConfig(**settings.model_dump(), input_dir=curation.stage_dir("dedup"))
        summary = run_rephrase(generator, curation.synthetic_dir("rephrased"), cfg, log=context.log.info)
    finally:
        generator.close()
    final = curation.synthetic_pretraining_dir()
    clean = _clean(synthesis, curation, [summary["output"]], final, "documents")
    previews = []
    for row in iter_stage_rows(final, ["source", "lang", "text"]):
        previews.append(f"**{row['source']}** ({row['lang']}): {row['text'][:400]}")
        if len(previews) == 3:
            break
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": clean["output"],
            "documents": clean["output"],
            "by_method": _method_table({"rephrase": summary}),
            "documents_per_style": counts_table(clean.get("methods_out", {}), "source", "documents"),
            **_clean_metadata(clean),
            "examples": dg.MetadataValue.md("\n\n".join(previews) or "_no document was kept_"),
            "teacher": generator.model_id,
            "path": dg.MetadataValue.path(final),
        },
        check_results=[_schema_check(final, DOCUMENT_SCHEMA)],
    )


@dg.asset(
    group_name=GROUP,
    **TEACHER,
    kinds=KINDS,
    deps=[teacher_model],
    check_specs=[
        dg.AssetCheckSpec("schema", asset="preference_pairs", description=_SCHEMA),
        dg.AssetCheckSpec("chat_format", asset="preference_pairs", description=_CHAT),
    ],
)
def preference_pairs(
    context: dg.AssetExecutionContext,
    config: PreferencePairsConfig,
    synthesis: SynthesisResource,
    curation: CurationResource,
):
    """Preference pairs for offline DPO: several sampled responses per seed prompt, each rated 1-5 by the teacher
    as judge (expected score under its next-token distribution); the best is chosen, the worst rejected, and
    pairs closer than the tie margin are dropped. Deduplicated and decontaminated into synthetic/preference/final."""
    from pipelines.schema import PREFERENCE_SCHEMA
    from synth.checks import examples_markdown
    from synth.preference import PreferenceConfig, run_preference

    cfg = PreferenceConfig(**to_settings(PreferenceSettings, config).model_dump())
    generator = synthesis.generator(curation.data_root)
    try:
        summary = run_preference(generator, curation.synthetic_dir("preference/raw"), cfg, log=context.log.info)
    finally:
        generator.close()
    final = curation.synthetic_dir("preference/final")
    clean = _clean(synthesis, curation, [summary["output"]], final, "preference")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": clean["output"],
            "pairs": clean["output"],
            "by_method": _method_table({"preference": summary}),
            "ties_dropped": summary.get("rejected", {}).get("tie", 0),
            **_clean_metadata(clean),
            "examples": dg.MetadataValue.md(examples_markdown(final, "preference", n=2)),
            "judge": generator.model_id,
            "path": dg.MetadataValue.path(final),
        },
        check_results=[_schema_check(final, PREFERENCE_SCHEMA), _chat_check(final, "preference")],
    )


@dg.asset(
    group_name=GROUP,
    kinds={"parquet"},
    deps=[sft_data],
    check_specs=[dg.AssetCheckSpec("schema", asset="instruction_documents", description="Plain document shards.")],
)
def instruction_documents(
    context: dg.AssetExecutionContext, config: InstructionDocumentsConfig, curation: CurationResource
):
    """The SFT conversations (synthetic/sft/final) as plain User:/Assistant: documents of domain "instruction",
    which mixture_index mixes in as its own buckets; the conversations SFT holds out (heldout_fraction: keep it
    equal to sft_model's) are left out. Without SFT data: an empty stage."""
    from pipelines.schema import DOCUMENT_SCHEMA
    from pipelines.shards import read_json
    from synth.instruction_docs import run_instruction_docs

    sft = curation.synthetic_dir("sft/final")
    if read_json(f"{sft}/_SUCCESS.json") is None:
        context.log.warning(f"{sft} is not a finished SFT stage: no instruction documents")
        sft = None
    out = curation.synthetic_dir("instruction")
    s = run_instruction_docs(sft, out, to_settings(InstructionDocsSettings, config), log=context.log.info)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": s["accepted"],
            "documents": s["accepted"],
            "sft_heldout_left_out": s["rejected"].get("sft_heldout", 0),
            "left_out_by_reason": counts_table(s["rejected"], "reason", "conversations"),
            "documents_per_method": counts_table(s.get("accepted_by_method", {}), "method", "documents"),
            "languages": counts_table(s.get("accepted_by_lang", {}), "language", "documents"),
            "path": dg.MetadataValue.path(out),
        },
        check_results=[_schema_check(out, DOCUMENT_SCHEMA)],
    )


synthesis_assets = [
    teacher_model,
    quality_labels,
    quality_classifier,
    quality_tiers,
    sft_data,
    instruction_documents,
    synthetic_pretraining_data,
    preference_pairs,
]
