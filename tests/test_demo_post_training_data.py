"""Data the demo's post-training and pretraining get from the SFT side: cheap preference pairs (a human answer over
the base model's sample and over another prompt's answer) and the SFT conversations as instruction documents in the
pretraining mix. Both keep out what SFT holds out for validation and evaluation (``training.chat_data.is_heldout``)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
from conftest import make_mix_corpus

from pipelines.checks import schema_problems
from pipelines.schema import DOCUMENT_SCHEMA, PREFERENCE_SCHEMA, SFT_SCHEMA
from pipelines.shards import iter_stage_rows, read_json
from synth.cheap_pairs import CheapPairSettings, run_cheap_pairs
from synth.instruction_docs import InstructionDocsSettings, run_instruction_docs
from training.chat_data import chatterbot_conversations, is_heldout

HELDOUT = 0.25  # large, so that a few dozen conversations hold some out


def rows_of(stage_dir, kind: str = "data") -> list[dict]:
    return list(iter_stage_rows(str(stage_dir), kind=kind))


@pytest.fixture(scope="module")
def corpus():
    """The chatterbot corpus the demo's demonstrations come from (the synthesis seeds' wheel, cached offline)."""
    return chatterbot_conversations()


# ---- Task A: cheap preference pairs --------------------------------------------------------------------------


def test_human_vs_other_pairs_are_a_seeded_derangement_without_sft_heldout(corpus, tmp_path):
    settings = CheapPairSettings(methods=["human_vs_other"], num_prompts=60, seed=3)
    summary = run_cheap_pairs(None, str(tmp_path / "a"), settings, HELDOUT, conversations=corpus)
    rows = rows_of(tmp_path / "a")
    by_id = {c["id"]: c for c in corpus}
    assert summary["sft_heldout"] > 0 and summary["accepted"] == len(rows) > 40
    assert schema_problems(str(tmp_path / "a"), PREFERENCE_SCHEMA) == []
    for row in rows:
        meta = json.loads(row["meta"])
        me, other = by_id[row["source_id"]], by_id[meta["rejected_source_id"]]
        assert row["method"] == "human_vs_other" and row["chosen_score"] is None
        assert not is_heldout(me["id"], HELDOUT) and not is_heldout(other["id"], HELDOUT)
        assert other["id"] != me["id"] and other["lang"] == me["lang"] == row["lang"]
        assert row["prompt"] == me["messages"][:-1]
        assert row["chosen"] == [me["messages"][-1]]
        assert row["rejected"] == [{"role": "assistant", "content": other["messages"][-1]["content"]}]
    # a derangement: every conversation of a language gives its answer to exactly one other
    partners = [json.loads(r["meta"])["rejected_source_id"] for r in rows]
    assert len(set(partners)) == len(partners)
    # seeded: the same settings give the same pairs; another seed other ones
    run_cheap_pairs(None, str(tmp_path / "b"), settings, HELDOUT, conversations=corpus)
    assert rows_of(tmp_path / "b") == rows
    run_cheap_pairs(None, str(tmp_path / "c"), settings.model_copy(update={"seed": 4}), HELDOUT, conversations=corpus)
    assert {r["id"] for r in rows_of(tmp_path / "c")} != {r["id"] for r in rows}


def test_pairs_load_in_the_pairwise_recipes_without_exclusions(corpus, tmp_path):
    from training.preference_data import load_pairs

    settings = CheapPairSettings(methods=["human_vs_other"], num_prompts=30)
    run_cheap_pairs(None, str(tmp_path / "p"), settings, HELDOUT, conversations=corpus)
    pairs, excluded = load_pairs({"cheap": str(tmp_path / "p")})
    assert len(pairs) == len(rows_of(tmp_path / "p")) > 0 and excluded == []


def _post_training_root(tmp_path: Path, tiny_qwen_dir: str, heldout: float) -> Path:
    """A data root holding what demo_preference_pairs reads: the base model and the SFT run's settings."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_qwen_dir, root / "models/long_context/final")
    (root / "models/sft").mkdir(parents=True)
    (root / "models/sft/settings.json").write_text(json.dumps({"heldout_fraction": heldout}))
    return root


def test_demo_preference_pairs_asset_samples_the_base_model_and_decontaminates(corpus, tiny_qwen_dir, tmp_path):
    from assets.post_training import demo_preference_pairs
    from dagster_project.resources import CurationResource, SynthesisResource
    from synth.cheap_pairs import conversation_items

    settings = {"num_prompts": 80, "max_new_tokens": 4, "batch_size": 16, "chunk_size": 40}
    items, _ = conversation_items(corpus, CheapPairSettings(**settings), HELDOUT)
    # an evaluation set that shares 13 words with one conversation's answer: its pairs must not survive
    target = next(i for i in items if len(i["answer"].split()) >= 14 and i["other_id"])
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text(json.dumps({"text": "Question. " + target["answer"]}) + "\n")
    root = _post_training_root(tmp_path, tiny_qwen_dir, HELDOUT)
    result = dg.materialize(
        [demo_preference_pairs],
        resources={
            "curation": CurationResource(data_root=str(root), workers=1),
            "synthesis": SynthesisResource(eval_sets=[f"mine={eval_file}::text"]),
        },
        run_config={"ops": {"demo_preference_pairs": {"config": settings}}},
    )
    assert result.success
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"schema": True, "chat_format": True}
    final = root / "synthetic/cheap_preference/final"
    rows = rows_of(final)
    methods = {m: sum(r["method"] == m for r in rows) for m in ("human_vs_base", "human_vs_other")}
    assert methods["human_vs_base"] > 0 and methods["human_vs_other"] > 0
    for row in rows:
        assert not is_heldout(row["source_id"], HELDOUT)
        if row["method"] == "human_vs_base":  # the tiny model's own sample, with how it was sampled
            assert row["backend"] == "transformers" and json.loads(row["sampling"])["max_new_tokens"] == 4
            assert json.loads(row["meta"])["rejected"] == "base model sample"
    # the contaminated conversation: its pairs (and the pair that borrowed its answer) went to excluded/
    assert target["id"] not in {r["source_id"] for r in rows}
    reasons = {r["reason"] for r in rows_of(final, "excluded")}
    assert "contaminated:mine" in reasons
    metadata = result.asset_materializations_for_node("demo_preference_pairs")[-1].metadata
    assert metadata["pairs"].value == len(rows) and metadata["decontaminated"].value >= 2
    # make demo's post-training report reads the counts by method from the stages
    from training.post_training_report import report

    text = report(str(root))
    assert f"human_vs_base {methods['human_vs_base']}" in text and f"human_vs_other {methods['human_vs_other']}" in text
    assert "[sft model] not trained yet" in text and "[reward model] not trained yet" in text


# ---- Task B: instruction documents in the pretraining mix --------------------------------------------------------


def _sft_stage(folder: Path, n: int = 80) -> list[dict]:
    """A finished SFT stage folder (SFT_SCHEMA) of ``n`` English conversations, written by the synthesis writer."""
    from synth.records import chunk_counters, run_chunked_stage

    rows = []
    for i in range(n):
        question = f"What is {i} plus {i + 7}? Please show the sum of the two numbers in words."
        answer = f"The sum of {i} and {i + 7} is {2 * i + 7}. Adding the two numbers gives {2 * i + 7} in all."
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        rows.append({"id": f"sft-{i:03d}", "messages": messages, "method": "instruction", "lang": "en"})
        rows[-1]["source_id"] = f"seed-{i}"

    def process(chunk):
        return [dict(r) for r in chunk], [], chunk_counters(len(chunk), len(chunk), len(chunk), [])

    run_chunked_stage(str(folder), {"stage": "sft_test"}, rows, process, SFT_SCHEMA, chunk_size=32)
    return rows


def test_instruction_documents_leave_out_the_sft_heldout_conversations(tmp_path):
    sft = _sft_stage(tmp_path / "sft")
    summary = run_instruction_docs(
        str(tmp_path / "sft"), str(tmp_path / "docs"), InstructionDocsSettings(heldout_fraction=HELDOUT)
    )
    docs = rows_of(tmp_path / "docs")
    held = {r["id"] for r in sft if is_heldout(r["id"], HELDOUT)}
    assert 0 < len(held) < len(sft) and summary["rejected"] == {"sft_heldout": len(held)}
    assert schema_problems(str(tmp_path / "docs"), DOCUMENT_SCHEMA) == []
    assert {json.loads(d["metadata"])["sft_id"] for d in docs} == {r["id"] for r in sft} - held
    first = next(d for d in docs if d["id"] == "instruction-sft-001") if "sft-001" not in held else docs[0]
    sft_id = json.loads(first["metadata"])["sft_id"]
    source = next(r for r in sft if r["id"] == sft_id)
    expected = f"User: {source['messages'][0]['content']}\n\nAssistant: {source['messages'][1]['content']}"
    assert first["text"] == expected and "<|im_" not in first["text"]
    assert first["domain"] == "instruction" and first["source"] == "synthetic:sft:instruction"
    assert json.loads(first["metadata"])["source_id"] == source["source_id"]


def test_a_mix_with_sft_conversations_has_the_configured_instruction_share(tmp_path):
    from pipelines.mixing import run_index, run_select
    from pipelines.mixing_settings import MixtureConfig

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    make_mix_corpus(corpus)
    sft = _sft_stage(tmp_path / "sft")
    run_instruction_docs(
        str(tmp_path / "sft"), str(tmp_path / "docs"), InstructionDocsSettings(heldout_fraction=HELDOUT)
    )
    index = run_index(
        [str(corpus / "*.jsonl"), str(tmp_path / "docs")], str(tmp_path / "index"), 0.05, 64, 512, workers=1
    )
    assert index["buckets"]["instruction/en"]["docs"] > 0
    weights = {"web": 0.6, "code": 0.2, "math": 0.15, "instruction": 0.05}
    config = MixtureConfig(domain_weights=weights, token_budget=20_000, output_shards=2, max_repeats=8)
    summary = run_select(str(tmp_path / "index"), str(tmp_path / "mix"), config, workers=1)
    mixed = rows_of(tmp_path / "mix")
    instruction = [r for r in mixed if r["domain"] == "instruction"]
    tokens = sum(r["n_tokens"] for r in mixed)
    share = sum(r["n_tokens"] for r in instruction) / tokens
    # whole documents: the share lands within a document or two of the configured 5%
    doc = max(r["n_tokens"] for r in instruction)
    assert abs(share - 0.05) <= 2 * doc / tokens, share
    assert summary["mix_check"]["passed"]
    held = {r["id"] for r in sft if is_heldout(r["id"], HELDOUT)}
    assert held and not held & {json.loads(r["metadata"])["sft_id"] for r in instruction}


def test_instruction_documents_pairs_and_sft_agree_on_the_heldout_split():
    from synth.cheap_pairs import SFT_HELDOUT_FRACTION
    from training.sft import SftSettings

    recipe = SftSettings.model_fields["heldout_fraction"].default
    assert InstructionDocsSettings.model_fields["heldout_fraction"].default == recipe == SFT_HELDOUT_FRACTION
    demo = tomllib.loads((Path(__file__).parents[1] / "dagster_project/profiles/demo.toml").read_text())
    sft_demo = demo["sft_model"].get("heldout_fraction", recipe)
    assert demo["instruction_documents"].get("heldout_fraction", recipe) == sft_demo


def test_sft_model_check_finds_heldout_conversations_in_pretraining(tmp_path):
    from assets.post_training import _pretraining_leak_check
    from dagster_project.resources import CurationResource

    curation = CurationResource(data_root=str(tmp_path))
    _sft_stage(Path(curation.synthetic_dir("sft/final")))
    docs = curation.synthetic_dir("instruction")
    run_instruction_docs(curation.synthetic_dir("sft/final"), docs, InstructionDocsSettings(heldout_fraction=0.05))
    assert _pretraining_leak_check(curation, 0.05).passed
    leak = _pretraining_leak_check(curation, 0.4)  # SFT holds out more than the instruction documents left out
    assert not leak.passed and leak.metadata["in_pretraining"].value > 0
    assert read_json(f"{docs}/_SUCCESS.json")["heldout_fraction"] == 0.05
    assert pq.read_schema(next(Path(docs, "data").glob("*.parquet"))).names == DOCUMENT_SCHEMA.names
