"""Kill -9 in the middle of a stage, rerun: the outputs equal an uninterrupted run's, by content hash.

Covered here: the teacher's quality labels, the fastText classifier, every synthesis method (instruction,
math_rejection, code_execution, repurpose, constitutional, rephrase, preference; code_execution also with a scripted
teacher whose code the sandbox runs), the mixture index, the stage-1 and long-context mixes, packing, and both
training stages. (The curation stages, the synthesis stage runner alone,
the request cache and pretraining's loss curve have their own kill tests: test_shards, test_synth_records,
test_synth_generate, test_training.)

Each test runs the step uninterrupted into A (in this process), then in a subprocess into B that a patched function
SIGKILLs at its N-th call (``kill_at``: deterministic, no timing), reruns into B here, and compares every Parquet
file under ``data/`` and ``excluded/`` row by row (sha256 of the rows in file order), every commit marker, the
summary's counters, and for training the final weights bitwise. Generation, scoring and training run on the CPU
with one torch thread here and in the subprocess, so the same inputs give the same floats.

    .venv/bin/python -m pytest tests/test_kill_resume.py -q
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import make_mix_corpus
from test_synth_quality import fixture_docs, write_stage
from test_synth_sft import SEEDS
from test_training import random_packed, tiny_config

from pipelines.mixing import MixtureConfig, run_index, run_select
from pipelines.schema import DOCUMENT_SCHEMA
from pipelines.tokenize_shards import run_tokenize_stage
from synth.labels.classifier import classifier_fingerprint, train_classifier
from synth.labels.label import label_documents
from synth.llm.backends import TransformersGenerator
from synth.llm.cache import CachedGenerator
from synth.preference import PreferenceConfig, run_preference
from synth.rephrase import RephraseConfig, run_rephrase
from synth.settings import ClassifierSettings, LabelSettings
from synth.sft.constitutional import ConstitutionalConfig, run_constitutional
from synth.sft.instruction import InstructionConfig, run_instruction
from synth.sft.repurpose import RepurposeConfig, run_repurpose

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"

# --------------------------------------------------------------------------------------------- the kill helper

KILL_AT = '''
import importlib, os, signal, sys

def kill_at(target, n, when="before"):
    """SIGKILL this process at the n-th call of ``target`` ("module:attr" or "module:Class.attr"), right before
    the call or right after it returns."""
    module, _, path = target.partition(":")
    owner = importlib.import_module(module)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    original = getattr(owner, name)
    calls = [0]

    def dying(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        if calls[0] == n and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(owner, name, dying)
'''


def run_killed(code: str, args: dict, target: str, n: int, when: str = "before", env: dict | None = None) -> None:
    """Run the Python ``code`` (``ARGS`` holds ``args``) in a subprocess that is SIGKILLed at the ``n``-th call of
    ``target`` (see ``kill_at``); fails unless the kill happened. ``target=""``: no patch (``env`` may kill)."""
    script = KILL_AT + f"\nARGS = {json.dumps(args)!r}\n" + "import json\nARGS = json.loads(ARGS)\n"
    if target:
        script += f"kill_at({target!r}, {n}, {when!r})\n"
    script += textwrap.dedent(code)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=environment, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == -signal.SIGKILL, (
        f"not killed at call {n} of {target or env} (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    )


# ---------------------------------------------------------------------------------------------- comparisons

# Summary fields that say how a run went (timing, what it reused), not what it produced.
RUN_FIELDS = {"seconds", "resumed", "chunks_reused", "output", "beam_counters", "removed_shards", "wall_seconds"}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def stage_content(stage_dir: str | Path) -> dict[str, str]:
    """sha256 of the rows (in file order) of every Parquet file under data/ and excluded/, and of every commit
    marker; plus the summary without its run fields. Fails on leftovers of killed writes."""
    stage = Path(stage_dir)
    assert (stage / "_SUCCESS.json").exists(), f"{stage} did not finish"
    leftovers = [str(p.relative_to(stage)) for p in stage.rglob("*") if ".tmp" in p.name or p.name == "_lock.json"]
    assert not leftovers, f"{stage} holds leftovers of killed runs: {leftovers}"
    out, counts = {}, {}
    for kind in ("data", "excluded"):
        for path in sorted((stage / kind).glob("*.parquet")):
            rows = pq.read_table(path).to_pylist()
            counts[kind] = counts.get(kind, 0) + len(rows)
            out[f"{kind}/{path.name}"] = _sha(
                "\n".join(json.dumps(r, sort_keys=True, ensure_ascii=False, default=repr) for r in rows)
            )
    for path in sorted((stage / "_done").glob("*.json")):
        out[f"_done/{path.name}"] = _sha(path.read_text())
    summary = json.loads((stage / "_SUCCESS.json").read_text())
    out["_SUCCESS.json"] = json.dumps({k: v for k, v in summary.items() if k not in RUN_FIELDS}, sort_keys=True)
    out["rows"] = json.dumps(counts, sort_keys=True)
    return out


def committed(stage_dir: str | Path) -> int:
    """Commit markers of a stage folder (the kill must leave some, not all, and no _SUCCESS.json)."""
    assert not (Path(stage_dir) / "_SUCCESS.json").exists(), "the killed run finished"
    return len(list((Path(stage_dir) / "_done").glob("*.json")))


def same_content(a: str | Path, b: str | Path) -> None:
    ours, theirs = stage_content(a), stage_content(b)
    assert sorted(ours) == sorted(theirs)
    assert any(k.startswith("data/") for k in ours) and sum(json.loads(ours["rows"]).values()) > 0
    differing = sorted(k for k in ours if ours[k] != theirs[k])
    assert not differing, f"resumed output differs from the uninterrupted run in {differing}"


def weights(model_dir: Path) -> dict[str, str]:
    """sha256 of every tensor's bytes (with dtype and shape) of a save_pretrained folder."""
    from safetensors import safe_open

    out = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                tensor = f.get_tensor(name)  # fp32: training keeps its weights in fp32
                blob = f"{tensor.dtype}{list(tensor.shape)}".encode() + tensor.contiguous().numpy().tobytes()
                out[name] = hashlib.sha256(blob).hexdigest()
    assert out, f"no weights in {model_dir}"
    return out


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread here, as in every subprocess: the same floats whichever process computes them."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------- synthesis

LABELS = LabelSettings(sample_size=12, max_doc_chars=300, chunk_size=4, heldout_share=0.3, min_choice_mass=0.0)
TINY = dict(keep_truncated=True, top_p=1.0)  # the tiny model's text never ends; nucleus sampling over it is slow
INSTRUCTION = InstructionConfig(
    num_seeds=4, max_new_tokens_instruction=10, max_new_tokens_answer=10, chunk_size=2, **TINY
)
REPURPOSE = dict(num_documents=4, min_chars=250, excerpt_chars=300, max_new_tokens=10, chunk_size=2, **TINY)
CONSTITUTIONAL = ConstitutionalConfig(
    num_items=4, max_new_tokens_response=8, max_new_tokens_critique=8, max_new_tokens_revision=8, chunk_size=2, **TINY
)
REPHRASE = dict(
    num_documents=3, styles=("wikipedia", "simple"), max_input_chars=300, max_new_tokens=10, min_output_chars=5,
    min_length_ratio=0.0, chunk_size=1, **TINY,
)  # fmt: skip
PREFERENCE = PreferenceConfig(
    num_prompts=4, num_responses=3, max_new_tokens=8, tie_margin=0.0, min_choice_mass=0.0, chunk_size=2, **TINY
)


def run_synth(method: str, generator, out: str, docs_dir: str) -> dict:
    """One synthesis step with the settings of this module (the same call here and in the killed subprocess)."""
    if method == "labels":
        return label_documents(generator, docs_dir, out, LABELS)
    if method == "instruction":
        return run_instruction(generator, out, INSTRUCTION, seeds=SEEDS)
    if method == "math_rejection":
        from synth.sft.math_rejection import MathConfig, run_math

        return run_math(
            generator, out, MathConfig(num_problems=4, samples_per_problem=2, max_new_tokens=10, chunk_size=2)
        )
    if method == "code_execution":
        from synth.sft.code_execution import CodeConfig, run_code

        config = CodeConfig(num_tasks=4, samples_per_task=2, max_new_tokens=10, tests_max_new_tokens=10, chunk_size=2)
        return run_code(generator, out, config)
    if method == "repurpose":
        return run_repurpose(generator, out, RepurposeConfig(input_dir=docs_dir, **REPURPOSE))
    if method == "constitutional":
        return run_constitutional(generator, out, CONSTITUTIONAL, seeds=SEEDS)
    if method == "rephrase":
        return run_rephrase(generator, out, RephraseConfig(input_dir=docs_dir, **REPHRASE))
    if method == "preference":
        return run_preference(generator, out, PREFERENCE, seeds=SEEDS)
    raise ValueError(method)


SYNTH_RUN = """
import torch
torch.set_num_threads(1)
from synth.llm.backends import TransformersGenerator
from synth.llm.cache import CachedGenerator
from test_kill_resume import run_synth
generator = CachedGenerator(TransformersGenerator(ARGS["model"], batch_size=8), ARGS["cache"])
run_synth(ARGS["method"], generator, ARGS["out"], ARGS["docs"])
"""

GENERATE = "synth.llm.backends:TransformersGenerator.generate"  # one call per batch the request cache could not answer
WRITER_COMMIT = "pipelines.shards:ShardWriter.commit"  # data/, excluded/, errors/ of each chunk, in that order
# method: (kill target, n, before/after, chunks committed when killed, the chunk in flight had a round cached)
SYNTH_KILLS = {
    "labels": ("pipelines.shards:commit_shard", 2, "after", 2, False),  # right after the 2nd of 3 chunks committed
    "instruction": (GENERATE, 4, "before", 1, True),  # 2nd chunk, answers round (its instructions are cached)
    "math_rejection": (GENERATE, 2, "before", 1, False),  # 2nd of 2 chunks, while sampling
    "code_execution": (GENERATE, 2, "before", 1, False),  # 2nd of 2 chunks, while sampling solutions and tests
    # 2nd chunk, after its generations were cached and its data/ shard renamed in; excluded/ and marker not yet
    "repurpose": (WRITER_COMMIT, 4, "after", 1, True),
    "constitutional": (GENERATE, 5, "before", 1, True),  # 2nd chunk, critique round (its responses are cached)
    "rephrase": (GENERATE, 2, "before", 1, False),  # 2nd of 3 chunks
    "preference": (GENERATE, 4, "before", 1, True),  # 2nd chunk, judge round (its sampled responses are cached)
}


@pytest.fixture(scope="module")
def tiny(tiny_qwen_dir) -> TransformersGenerator:
    return TransformersGenerator(tiny_qwen_dir, batch_size=8)


@pytest.fixture(scope="module")
def docs_dir(tmp_path_factory) -> str:
    return write_stage(tmp_path_factory.mktemp("curated"), fixture_docs(), DOCUMENT_SCHEMA)


@pytest.fixture(scope="module")
def uninterrupted(tiny, docs_dir, tmp_path_factory):
    """method -> the folder of its uninterrupted run (made on first use, shared with the classifier test)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    done: dict[str, Path] = {}

    def get(method: str) -> Path:
        if method not in done:
            run_synth(method, CachedGenerator(tiny, root / f"{method}-cache"), str(root / method), docs_dir)
            done[method] = root / method
        return done[method]

    return get


@pytest.mark.parametrize("method", list(SYNTH_KILLS))
def test_killed_synthesis_step_resumes_to_identical_output(
    method, uninterrupted, tiny, tiny_qwen_dir, docs_dir, tmp_path
):
    reference = uninterrupted(method)
    target, n, when, chunks_done, cached_round = SYNTH_KILLS[method]
    out, cache = tmp_path / method, tmp_path / "cache"
    args = {"model": tiny_qwen_dir, "cache": str(cache), "method": method, "out": str(out), "docs": docs_dir}
    run_killed(SYNTH_RUN, args, target, n, when)
    assert committed(out) == chunks_done

    generator = CachedGenerator(tiny, cache)
    summary = run_synth(method, generator, str(out), docs_dir)
    assert summary["resumed"] and summary["chunks_reused"] == chunks_done
    assert (generator.hits > 0) == cached_round  # the chunk in flight got its finished rounds from the cache
    same_content(reference, out)


CODE_TASKS = ("is_palindrome", "reverse_words", "factorial", "count_vowels")
SCRIPTED_CODE_RUN = """
from test_kill_resume import run_scripted_code
run_scripted_code(ARGS["out"])
"""


def run_scripted_code(out: str) -> dict:
    """code_execution with test_synth_verified's scripted teacher: its solutions pass, fail, time out, so the
    sandbox runs (the tiny model never writes a code block)."""
    from test_synth_verified import Scripted, code_script

    from synth.sft.code_execution import CodeConfig, run_code

    config = CodeConfig(task_names=CODE_TASKS, chunk_size=2, sandbox_cpu_s=1, sandbox_wall_s=10)
    return run_code(Scripted(code_script), out, config)


def test_killed_code_execution_with_sandbox_runs_resumes_to_identical_output(tmp_path):
    reference = run_scripted_code(str(tmp_path / "reference"))
    assert reference["accepted"] > 0 and reference["tests_run"] > reference["accepted"]
    out = tmp_path / "killed"
    run_killed(
        SCRIPTED_CODE_RUN, {"out": str(out)}, "synth.sft.code_execution:run_many", 2
    )  # 2nd chunk, before its sandbox
    assert committed(out) == 1
    summary = run_scripted_code(str(out))
    assert summary["chunks_reused"] == 1
    same_content(tmp_path / "reference", out)


# --------------------------------------------------------------------------------------------- classifier

CLASSIFIER = ClassifierSettings(bucket=20_000, dim=16, epochs=10)
CLASSIFIER_RUN = """
from synth.labels.classifier import train_classifier
from test_kill_resume import CLASSIFIER
train_classifier(ARGS["labels"], ARGS["out"], CLASSIFIER)
"""


def classifier_content(folder: Path) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics.pop("seconds")
    leftovers = [p.name for p in folder.iterdir() if p.name not in ("model.bin", "metrics.json")]
    assert not leftovers, f"{folder} holds leftovers of killed runs: {leftovers}"
    return {"model.bin": hashlib.sha256((folder / "model.bin").read_bytes()).hexdigest(), "metrics": metrics}


def test_killed_classifier_training_resumes_to_the_identical_model(uninterrupted, tmp_path):
    labels = str(uninterrupted("labels"))
    reference = tmp_path / "reference"
    train_classifier(labels, str(reference), CLASSIFIER)
    out = tmp_path / "killed"
    args = {"labels": labels, "out": str(out)}
    run_killed(CLASSIFIER_RUN, args, "synth.labels.classifier:_train_fasttext", 1)  # training file written, not trained
    run_killed(CLASSIFIER_RUN, args, "synth.labels.classifier:sha256_file", 1)  # model.bin in place, metrics.json not
    assert (out / "model.bin").exists() and not (out / "metrics.json").exists()
    with pytest.raises(ValueError, match="no trained classifier"):
        classifier_fingerprint(str(out))  # a model without its metrics is never taken as committed
    train_classifier(labels, str(out), CLASSIFIER)
    ours, theirs = classifier_content(reference), classifier_content(out)
    assert ours["model.bin"] == theirs["model.bin"]  # fastText, one thread, a seed: bit for bit
    assert ours["metrics"] == theirs["metrics"]


# ----------------------------------------------------------------------------------------- mixing, packing

INDEX = dict(heldout_fraction=0.1, long_doc_tokens=250, max_doc_tokens=350)
MIXES = {
    "stage1": MixtureConfig(token_budget=20_000, max_repeats=3.0, seed=7, output_shards=3),
    "long": MixtureConfig(token_budget=6_000, long_documents_only=True, max_repeats=4.0, output_shards=3),
}
PACK_SEQ_LEN = 64


@pytest.fixture(scope="module")
def mix_inputs(tmp_path_factory) -> str:
    return str(make_mix_corpus(tmp_path_factory.mktemp("mix_inputs")) / "*.jsonl")


@pytest.fixture(scope="module")
def index_dir(mix_inputs, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("index") / "index")
    run_index([mix_inputs], out, workers=1, **INDEX)
    return out


@pytest.fixture(scope="module")
def stage1_mix(index_dir, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("mix") / "stage1")
    run_select(index_dir, out, MIXES["stage1"], workers=1)
    return out


def test_killed_mixture_index_resumes_to_identical_output(mix_inputs, index_dir, tmp_path):
    out = tmp_path / "index"
    code = (
        "from pipelines.mixing import run_index\nrun_index([ARGS['inputs']], ARGS['out'], workers=1, **ARGS['index'])"
    )
    # in the middle of the 2nd of 3 input shards: its writers are open, its marker is not written
    run_killed(
        code, {"inputs": mix_inputs, "out": str(out), "index": INDEX}, "pipelines.mixing:MixIndexer.process_batch", 2
    )
    assert committed(out) == 1
    summary = run_index([mix_inputs], str(out), workers=1, **INDEX)
    assert summary["resumed"] and summary["beam_counters"]["mix_index/shards_resumed"] == 1
    same_content(index_dir, out)


SELECT_RUN = """
from pipelines.mixing import MixtureConfig, run_select
run_select(ARGS["index"], ARGS["out"], MixtureConfig(**ARGS["mix"]), workers=1)
"""


# mix: (kill target, n, before/after); each kill lands on the 2nd of 3 output shards
SELECT_KILLS = {
    "stage1": ("pipelines.shards:commit_shard", 2, "before"),  # renamed into place, its marker not written
    "long": ("pyarrow.parquet:ParquetWriter.close", 2, "after"),  # complete under its temporary name, not renamed
}


@pytest.mark.parametrize("mix", list(MIXES))
def test_killed_mix_select_resumes_to_identical_output(mix, index_dir, stage1_mix, tmp_path):
    config = MIXES[mix]
    reference = stage1_mix if mix == "stage1" else str(tmp_path / "reference")
    if mix != "stage1":
        run_select(index_dir, reference, config, workers=1)
    out = tmp_path / mix
    run_killed(SELECT_RUN, {"index": index_dir, "out": str(out), "mix": config.to_dict()}, *SELECT_KILLS[mix])
    assert committed(out) == 1 and bool(list((out / "data").glob("*.tmp-*"))) == (mix == "long")
    summary = run_select(index_dir, str(out), config, workers=1)
    assert summary["mix_check"]["passed"]
    same_content(reference, out)


PACK_RUN = """
from pipelines.tokenize_shards import run_tokenize_stage
run_tokenize_stage(ARGS["mix"], ARGS["out"], ARGS["seq_len"], seed=0, workers=1)
"""
# each kill lands on the 2nd of 3 packed shards
PACK_KILLS = {
    "renamed": ("pipelines.shards:ShardStage.write_table", 2, "after"),  # in place, its marker not written
    "temporary": ("pyarrow.parquet:write_table", 2, "after"),  # complete under its temporary name, not renamed
}


@pytest.fixture(scope="module")
def packed(stage1_mix, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("packed") / "packed")
    run_tokenize_stage(stage1_mix, out, PACK_SEQ_LEN, seed=0, workers=1)
    return out


@pytest.mark.parametrize("kill", list(PACK_KILLS))
def test_killed_packing_resumes_to_identical_output(kill, stage1_mix, packed, tmp_path):
    out = tmp_path / "packed"
    run_killed(PACK_RUN, {"mix": stage1_mix, "out": str(out), "seq_len": PACK_SEQ_LEN}, *PACK_KILLS[kill])
    assert committed(out) == 1 and bool(list((out / "data").glob("*.tmp-*"))) == (kill == "temporary")
    summary = run_tokenize_stage(stage1_mix, str(out), PACK_SEQ_LEN, seed=0, workers=1)
    assert summary["beam_counters"]["tokenize/shards_resumed"] == 1
    same_content(packed, out)


# ----------------------------------------------------------------------------------------------- training

TRAIN_RUN = """
from test_training import tiny_config
from training.pretrain import run
run(tiny_config(ARGS["data"], ARGS["out"], **ARGS["settings"]))
"""
STAGE1 = dict(max_steps=6, checkpoint_every=2)


def stage2_settings(stage1_final: Path) -> dict:
    return dict(init_from=str(stage1_final), rope_theta=1e6, micro_batch_size=1, max_steps=4, checkpoint_every=2)


@pytest.fixture(scope="module")
def long_data(tmp_path_factory) -> Path:
    return random_packed(tmp_path_factory.mktemp("long"), n_rows=6, seq_len=16 * 8, seed=1)


@pytest.fixture(scope="module")
def short_data(tmp_path_factory) -> Path:
    return random_packed(tmp_path_factory.mktemp("short"), n_rows=24, seq_len=16)


def test_killed_training_stages_resume_to_bitwise_identical_weights(short_data, long_data, tmp_path):
    from training.pretrain import run
    from training.signals import KILL_AFTER_STEP_ENV

    reference = tmp_path / "reference"
    run(tiny_config(short_data, reference / "s1", **STAGE1))
    run(tiny_config(long_data, reference / "s2", **stage2_settings(reference / "s1" / "final")))

    # Stage 1, killed twice: in the middle of writing the step-4 checkpoint (its model and optimizer state are
    # written into .tmp-step_000004, its RNG file is not), then after the last step, before final/ is saved.
    s1 = tmp_path / "resumed" / "s1"
    args = {"data": str(short_data), "out": str(s1), "settings": STAGE1}
    run_killed(TRAIN_RUN, args, "training.checkpoint:rng_state", 2)
    assert [p.name for p in sorted((s1 / "checkpoints").iterdir())] == [".tmp-step_000004", "latest", "step_000002"]
    run_killed(TRAIN_RUN, args, "training.pretrain:save_final", 1)
    assert (s1 / "checkpoints" / "latest").read_text().strip() == "step_000006" and not (s1 / "final").exists()
    summary = run(tiny_config(short_data, s1, **STAGE1))
    assert summary["resumed_from_step"] == 6
    assert weights(s1 / "final") == weights(reference / "s1" / "final")

    # Stage 2 from the resumed stage 1, killed after step 3 (its last checkpoint is step 2): step 3 is redone.
    s2 = tmp_path / "resumed" / "s2"
    settings = stage2_settings(s1 / "final")
    run_killed(
        TRAIN_RUN, {"data": str(long_data), "out": str(s2), "settings": settings}, "", 0, env={KILL_AFTER_STEP_ENV: "3"}
    )
    assert (s2 / "checkpoints" / "latest").read_text().strip() == "step_000002"
    summary = run(tiny_config(long_data, s2, **settings))
    assert summary["resumed_from_step"] == 2 and summary["rope_theta"] == 1e6
    assert weights(s2 / "final") == weights(reference / "s2" / "final")
    assert json.loads((s2 / "final" / "config.json").read_text()) == json.loads(
        (reference / "s2" / "final" / "config.json").read_text()
    )
