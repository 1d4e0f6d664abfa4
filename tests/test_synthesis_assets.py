"""The synthesis group materialized for real with a tiny random Qwen2 as the teacher: quality labels, the fastText
classifier and its tiers, SFT data from all five methods, synthetic pretraining documents and preference pairs,
each through dedup and decontamination, with every asset check run; then a pretraining mix of a quality tier."""

from __future__ import annotations

import json
import random
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import CODE, DE, EN, ZH, paragraph_doc

from assets.curation import curation_assets
from assets.metadata import column, table_rows
from assets.pretraining import pretraining_assets
from assets.synthesis import quality_classifier, synthesis_assets
from dagster_project.resources import CurationResource, SynthesisResource, TrainingResource
from synth import SFT_METHODS

FUNCTIONS = '''
def word_lengths(words):
    """Return the length of every word in ``words``, in order."""
    return [len(w) for w in words]


def clamp(value, low, high):
    """Limit ``value`` to the range from ``low`` to ``high``."""
    return max(low, min(high, value))
'''


def _curated_stage(root: Path) -> None:
    """A finished deduplicated stage, as curation leaves it: web documents in three languages (some long), junk,
    and Python source with documented functions."""
    from pipelines.schema import DOCUMENT_SCHEMA, empty_document
    from pipelines.shards import write_json_atomic

    rows = []
    for lang, pool in (("en", EN), ("de", DE), ("zh", ZH)):
        for i in range(14):
            n = 30 if i % 4 == 0 else 5
            rows.append(
                empty_document(id=f"{lang}-{i}", text=paragraph_doc(pool, seed=i, n=n), domain="web", lang=lang)
            )
    for i in range(6):
        rows.append(empty_document(id=f"junk-{i}", text=f"click here buy now {i} " * 6, domain="web", lang="en"))
    for i in range(4):
        rows.append(empty_document(id=f"code-{i}", text=FUNCTIONS + CODE + f"# {i}\n", domain="code", lang="code"))
    stage = root / "curated" / "dedup"
    (stage / "data").mkdir(parents=True)
    for part in range(2):
        pq.write_table(
            pa.Table.from_pylist(rows[part::2], schema=DOCUMENT_SCHEMA),
            stage / "data" / f"part{part}.parquet",
        )
    write_json_atomic(str(stage / "_SUCCESS.json"), {"stage": "dedup", "docs_out": len(rows)})


RUN_CONFIG = {
    "ops": {
        "quality_labels": {
            "config": {"sample_size": 36, "min_choice_mass": 0.0, "excerpt_tokens": 64, "heldout_share": 0.3}
        },
        "quality_classifier": {"config": {"epochs": 5}},
        "sft_data": {
            "config": {
                "instruction_num_seeds": 3,
                "instruction_max_new_tokens_answer": 12,
                "math_rejection_num_problems": 2,
                "math_rejection_samples_per_problem": 2,
                "math_rejection_max_new_tokens": 320,
                "code_execution_num_tasks": 2,
                "code_execution_samples_per_task": 1,
                "code_execution_max_doc_tasks": 1,
                "code_execution_max_new_tokens": 320,
                "code_execution_tests_max_new_tokens": 320,
                "repurpose_num_documents": 2,
                "repurpose_max_new_tokens": 12,
                "constitutional_num_items": 2,
                "constitutional_max_new_tokens_response": 12,
            }
        },
        "synthetic_pretraining_data": {"config": {"num_documents": 3, "max_new_tokens": 24}},
        "preference_pairs": {
            "config": {
                "num_prompts": 3,
                "num_responses": 3,
                "tie_margin": 0.0,
                "min_choice_mass": 0.0,
                "max_new_tokens": 12,
            }
        },
    }
}


@pytest.fixture(scope="module")
def materialized(tmp_path_factory, tiny_qwen_dir):
    root = tmp_path_factory.mktemp("synthesis") / "data"
    _curated_stage(root)
    resources = {
        "curation": CurationResource(data_root=str(root), workers=1),
        "synthesis": SynthesisResource(model=tiny_qwen_dir, batch_size=8),
        "training": TrainingResource(stage1_seq_len=64, model_size="tiny"),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    }
    result = dg.materialize(
        [*curation_assets, *pretraining_assets, *synthesis_assets],
        selection=dg.AssetSelection.groups("synthesis"),
        resources=resources,
        run_config=RUN_CONFIG,
        raise_on_error=False,
    )
    return result, root, resources


def _metadata(result, asset: str) -> dict:
    events = result.asset_materializations_for_node(asset)
    assert events, f"{asset} was not materialized"
    return {k: v.value for k, v in events[-1].metadata.items()}


def test_every_synthesis_asset_and_check_succeeds(materialized):
    result, _, _ = materialized
    assert result.success
    checks = result.get_asset_check_evaluations()
    ran = {(c.asset_key.to_user_string(), c.check_name) for c in checks}
    assert ran == {
        ("teacher_model", "answers"),
        ("quality_classifier", "agrees_with_teacher"),
        ("quality_tiers", "schema"),
        ("quality_tiers", "strict_within_relaxed"),
        ("sft_data", "schema"),
        ("sft_data", "chat_format"),
        ("synthetic_pretraining_data", "schema"),
        ("preference_pairs", "schema"),
        ("preference_pairs", "chat_format"),
        ("instruction_documents", "schema"),
    }
    # Random labels need not agree with the classifier (an error, but the run goes on); every other check passes.
    failed = [(c.asset_key.to_user_string(), c.check_name) for c in checks if not c.passed]
    assert set(failed) <= {("quality_classifier", "agrees_with_teacher")}, failed
    [agrees] = [c for c in checks if c.check_name == "agrees_with_teacher"]
    meta = {k: v.value for k, v in agrees.metadata.items()}
    assert agrees.severity == dg.AssetCheckSeverity.ERROR
    assert agrees.passed == (meta["problem"] == "") == (meta["ci_low"] is not None and meta["ci_low"] > 0)


def test_quality_assets_show_labels_agreement_and_tier_sizes(materialized):
    result, root, _ = materialized
    labels = _metadata(result, "quality_labels")
    assert labels["documents_rated"] == 36 and labels["off_format"] == 0
    assert labels["excerpt_tokens"] == 64 and labels["labels_per_minute"] > 0 and labels["mean_prompt_tokens"] > 64
    classifier = _metadata(result, "quality_classifier")
    agreement = {row["metric"]: row for row in table_rows(classifier["agreement_with_teacher"])}
    assert "within1_accuracy" in agreement and "spearman 95% CI low" in agreement
    metrics = json.loads((root / "quality" / "classifier" / "metrics.json").read_text())
    assert agreement["n"]["held out"] == metrics["heldout"]["n"]
    assert metrics["counts"]["labels"] == 36 and metrics["heldout"]["n"] == metrics["counts"]["heldout"] > 0
    tiers = _metadata(result, "quality_tiers")
    assert tiers["dagster/row_count"] == 52  # every document scored once
    assert 0 <= tiers["strict_documents"] <= tiers["relaxed_documents"] <= 52
    tier_rows = {row["tier"]: row for row in table_rows(tiers["tiers"])}
    assert tier_rows["strict"]["documents"] == tiers["strict_documents"]
    assert tier_rows["relaxed"]["documents"] == tiers["relaxed_documents"]
    assert 0 <= tiers["strict_flagged_kept"] <= tiers["relaxed_flagged_kept"] <= tiers["flagged_documents"] <= 52
    assert len(tiers["flagged_sample"]) <= min(10, tiers["flagged_documents"])
    scored = pq.read_table(root / "curated" / "quality_scored" / "data").column("quality_score").to_pylist()
    assert len(scored) == 52 and all(0.0 <= s <= 5.0 for s in scored)
    strict = pq.read_table(root / "curated" / "tiers" / "strict" / "data") if tiers["strict_documents"] else None
    if strict is not None:
        assert "quality_score" not in strict.column_names  # tiers are plain document shards


def test_sft_data_reports_every_method(materialized):
    result, root, _ = materialized
    meta = _metadata(result, "sft_data")
    for method in SFT_METHODS:
        assert method in column(meta["by_method"], "method")
        assert (root / "synthetic" / "sft" / method / "_SUCCESS.json").exists()
    assert " of " in meta["math_samples_passed"] and " of " in meta["code_samples_passed"]
    summary = json.loads((root / "synthetic" / "sft" / "final" / "_SUCCESS.json").read_text())
    assert summary["output"] == meta["conversations"]
    assert summary["input"] == summary["exact_duplicate"] + summary["near_duplicate"] + summary["output"] + sum(
        summary["contaminated"].values()
    )
    assert "humaneval" in summary["contaminated"]
    math = json.loads((root / "synthetic" / "sft" / "math_rejection" / "_SUCCESS.json").read_text())
    assert math["samples"] == 4 and math["accepted"] + sum(math["rejected"].values()) == math["samples"]


def test_synthetic_pretraining_and_preference_outputs(materialized):
    result, root, _ = materialized
    pretraining = _metadata(result, "synthetic_pretraining_data")
    final = root / "synthetic" / "pretraining"
    assert (final / "_SUCCESS.json").exists()
    if pretraining["documents"]:
        domains = set(pq.read_table(final / "data", columns=["domain"]).column("domain").to_pylist())
        assert domains == {"synthetic"}
    preference = _metadata(result, "preference_pairs")
    assert preference["pairs"] + preference["ties_dropped"] <= 3
    raw = json.loads((root / "synthetic" / "preference" / "raw" / "_SUCCESS.json").read_text())
    assert raw["items"] == 3


def test_a_quality_tier_feeds_the_pretraining_mix(materialized):
    result, root, resources = materialized
    mix = dg.materialize(
        [*curation_assets, *pretraining_assets, *synthesis_assets],
        selection=dg.AssetSelection.assets("mixture_index"),
        resources=resources,
        run_config={"ops": {"mixture_index": {"config": {"quality_tier": "relaxed", "heldout_fraction": 0.1}}}},
        raise_on_error=False,
    )
    meta = _metadata(mix, "mixture_index")
    inputs = meta["inputs"]
    assert inputs[0].endswith("curated/tiers/relaxed") and inputs[1].endswith("synthetic/pretraining")
    assert inputs[2].endswith("synthetic/instruction")  # the SFT conversations as instruction documents
    instruction = _metadata(result, "instruction_documents")
    assert (
        instruction["documents"] + instruction["sft_heldout_left_out"] == _metadata(result, "sft_data")["conversations"]
    )
    tiers = _metadata(result, "quality_tiers")
    expected = tiers["relaxed_documents"] + _metadata(result, "synthetic_pretraining_data")["documents"]
    if expected:
        assert mix.success and meta["dagster/row_count"] >= expected


# ------------------------------------------------------------------ the classifier's check, on labels of known quality


def _classifier_check(tmp_path, labels: list[dict]) -> tuple[bool, dict]:
    """Materialize quality_classifier alone on ``labels`` (a finished label stage); its check's verdict and metadata."""
    from test_synth_quality import write_stage

    from synth.labels.label import LABELS_SCHEMA

    root = tmp_path / "data"
    write_stage(root / "quality" / "labels", labels, LABELS_SCHEMA, shards=2)
    result = dg.materialize(
        [quality_classifier],
        resources={"curation": CurationResource(data_root=str(root), workers=1)},
        run_config={"ops": {"quality_classifier": {"config": {"epochs": 30}}}},
        raise_on_error=False,
    )
    assert result.success  # a failed check is an error on the asset, not a failed run
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == "agrees_with_teacher" and check.severity == dg.AssetCheckSeverity.ERROR
    return check.passed, {k: v.value for k, v in check.metadata.items()}


def test_classifier_check_passes_only_when_the_interval_excludes_zero(tmp_path):
    from test_synth_quality import hand_labels

    labels = hand_labels()  # learnable: informative pages 4-5, junk 0-1
    passed, meta = _classifier_check(tmp_path / "good", labels)
    assert passed and meta["problem"] == "" and 0 < meta["ci_low"] < meta["spearman"] < meta["ci_high"]
    assert meta["heldout_labels"] == sum(r["split"] == "heldout" for r in labels) >= 10

    # the same documents with their labels shuffled: what the classifier learns is noise, and the check says so
    rng = random.Random(0)
    shuffled = [r["label"] for r in labels]
    rng.shuffle(shuffled)
    one_hot = [[float(j == k) for j in range(6)] for k in shuffled]
    noise = [{**r, "label": k, "score": float(k), "probs": p} for r, k, p in zip(labels, shuffled, one_hot)]
    passed, meta = _classifier_check(tmp_path / "noise", noise)
    assert not passed and meta["ci_low"] <= 0 <= meta["ci_high"] and "includes zero" in meta["problem"]

    # too few held-out labels for an interval: a failure that says why
    few = [r for r in labels if r["split"] == "train"] + [r for r in labels if r["split"] == "heldout"][:6]
    passed, meta = _classifier_check(tmp_path / "few", few)
    assert not passed and meta["ci_low"] is None and meta["heldout_labels"] == 6
    assert meta["problem"] == "held-out: 6 labels: at least 10 are needed for a confidence interval"
