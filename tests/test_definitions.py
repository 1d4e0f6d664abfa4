"""The code location loads fast (no heavy imports) and wires the curation, pretraining and synthesis graphs."""

import subprocess
import sys

import dagster as dg

from dagster_project.definitions import defs

CURATION = ["raw_documents", "language_filtered_documents", "quality_filtered_documents", "deduplicated_documents"]


def test_asset_graph_is_a_chain_in_one_group():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert set(CURATION) <= keys
    for upstream, downstream in zip(CURATION, CURATION[1:]):
        parents = {p.to_user_string() for p in graph.get(dg.AssetKey(downstream)).parent_keys}
        assert parents == {upstream}
    for name in CURATION:
        node = graph.get(dg.AssetKey(name))
        assert node.group_name == "curation"
        assert "beam" in node.kinds and "parquet" in node.kinds
        assert node.description


PRETRAINING_PARENTS = {
    "mixture_index": {"deduplicated_documents", "synthetic_pretraining_data", "instruction_documents"},
    "validation_shards": {"mixture_index"},
    "mixture_search": {"mixture_index", "validation_shards"},
    "pretraining_mixture": {"mixture_index", "mixture_search"},
    "long_context_mixture": {"mixture_index", "mixture_search"},
    "pretraining_shards": {"pretraining_mixture"},
    "long_context_shards": {"long_context_mixture"},
    "base_model": {"pretraining_shards", "validation_shards"},
    "long_context_model": {"long_context_shards", "base_model"},
}


def test_pretraining_graph_runs_from_dedup_to_the_long_context_model():
    graph = defs.resolve_asset_graph()
    for name, parents in PRETRAINING_PARENTS.items():
        node = graph.get(dg.AssetKey(name))
        assert {p.to_user_string() for p in node.parent_keys} == parents, name
        assert node.group_name == "pretraining" and node.description
    checks = {(c.asset_key.to_user_string(), c.name) for c in graph.asset_check_keys}
    assert ("long_context_model", "rope_base_raised") in checks
    assert ("base_model", "loads_and_generates") in checks and ("long_context_model", "loads_and_generates") in checks
    assert ("pretraining_mixture", "realised_mix_matches_target") in checks
    assert ("pretraining_shards", "packed_sequences") in checks and (
        "long_context_shards",
        "packed_sequences",
    ) in checks
    assert defs.resolve_job_def("pretraining_job")


SYNTHESIS_PARENTS = {
    "teacher_model": set(),
    "quality_labels": {"teacher_model", "deduplicated_documents"},
    "quality_classifier": {"quality_labels"},
    "quality_tiers": {"quality_classifier", "deduplicated_documents"},
    "sft_data": {"teacher_model", "deduplicated_documents"},
    "synthetic_pretraining_data": {"teacher_model", "deduplicated_documents"},
    "preference_pairs": {"teacher_model"},
    "instruction_documents": {"sft_data"},
}


def test_synthesis_graph_checks_and_one_teacher_at_a_time():
    graph = defs.resolve_asset_graph()
    for name, parents in SYNTHESIS_PARENTS.items():
        node = graph.get(dg.AssetKey(name))
        assert {p.to_user_string() for p in node.parent_keys} == parents, name
        assert node.group_name == "synthesis" and node.description
    checks = {(c.asset_key.to_user_string(), c.name) for c in graph.asset_check_keys}
    for name in ("sft_data", "preference_pairs"):
        assert (name, "schema") in checks and (name, "chat_format") in checks
    assert ("quality_tiers", "strict_within_relaxed") in checks
    assert defs.resolve_job_def("synthesis_job")
    # The teacher-loading steps share an op tag the code location's executor limits to one at a time.
    tagged = {
        k.to_user_string() for k in graph.get_all_asset_keys() if defs.get_assets_def(k).op.tags.get("qwen2/teacher")
    }
    assert tagged >= {"teacher_model", "quality_labels", "sft_data", "synthetic_pretraining_data", "preference_pairs"}


def test_checks_job_schedule_and_sensor_exist():
    graph = defs.resolve_asset_graph()
    checks = {(c.asset_key.to_user_string(), c.name) for c in graph.asset_check_keys}
    for name in CURATION:
        assert (name, "schema") in checks and (name, "non_empty") in checks
    assert ("deduplicated_documents", "duplicate_rate") in checks
    assert ("language_filtered_documents", "below_threshold_share") in checks
    assert defs.resolve_job_def("curation_job")
    assert defs.resolve_schedule_def("data_refresh_schedule").cron_schedule == "0 3 * * *"
    assert defs.resolve_sensor_def("new_crawl_files_sensor")


def test_code_location_imports_no_heavy_modules():
    code = (
        "import sys, dagster_project.definitions; "
        "print(sorted(m for m in ('apache_beam', 'torch', 'vllm', 'pyarrow', 'datatrove', 'fasttext', 'spacy', "
        "'transformers', 'tokenizers', 'matplotlib') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _resources_in_a_fresh_process(env: dict) -> dict:
    """Load the code location with ``env`` (QWEN2_DATA_ROOT / OPENAI_BASE_URL set or unset) and describe its
    resources' fields: an EnvVar as {"env": name}, else the value."""
    import json
    import os

    code = (
        "import json, dagster as dg\n"
        "from dagster_project.definitions import defs\n"
        "def show(v):\n"
        "    return {'env': v.env_var_name} if isinstance(v, dg.EnvVar) else v\n"
        "print(json.dumps({'data_root': show(defs.resources['curation'].data_root),\n"
        "                  'base_url': show(defs.resources['synthesis'].base_url)}))\n"
    )
    base = {k: v for k, v in os.environ.items() if k not in ("QWEN2_DATA_ROOT", "OPENAI_BASE_URL")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**base, **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_environment_reaches_resources_through_envvar(tmp_path):
    from dagster_project.resources import DEFAULT_DATA_ROOT

    unset = _resources_in_a_fresh_process({})
    assert unset == {"data_root": DEFAULT_DATA_ROOT, "base_url": ""}
    root = str(tmp_path / "root")
    set_ = _resources_in_a_fresh_process({"QWEN2_DATA_ROOT": root, "OPENAI_BASE_URL": "http://h:1/v1"})
    assert set_ == {"data_root": {"env": "QWEN2_DATA_ROOT"}, "base_url": {"env": "OPENAI_BASE_URL"}}


def test_an_envvar_data_root_is_resolved_when_the_run_starts(tmp_path, monkeypatch):
    from dagster_project.resources import CurationResource, env_or_default

    seen = []

    @dg.asset
    def where(curation: CurationResource):
        seen.append(curation.mix_dir("index"))

    resource = CurationResource(data_root=env_or_default("QWEN2_TEST_ROOT_H2B", "unused"))
    assert resource.data_root == "unused"  # unset: the default, not an EnvVar that would fail the run
    monkeypatch.setenv("QWEN2_TEST_ROOT_H2B", str(tmp_path))
    resource = CurationResource(data_root=env_or_default("QWEN2_TEST_ROOT_H2B", "unused"))
    monkeypatch.setenv("QWEN2_TEST_ROOT_H2B", str(tmp_path / "later"))  # the value at launch counts
    assert dg.materialize([where], resources={"curation": resource}).success
    assert seen == [f"{tmp_path}/later/mix/index"]
