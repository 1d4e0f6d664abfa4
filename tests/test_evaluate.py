"""The post-training evaluation (training.evaluate and its helpers): every checker on hand examples that pass and
fail, HumanEval through the sandbox (canonical solution passes, a wrong one fails), decontamination dropping an item
copied into the training data, the perplexity slice taken from the mixture index's held-out documents only, and an
end-to-end run on two tiny random Qwen2 models through the Dagster asset (Pipes) that produces the table with every
metric, then a rerun that reuses every answer. Tiny models, fixed seeds, CPU."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import EN, make_mix_corpus

from pipelines.schema import MESSAGE_TYPE
from pipelines.tokenizer import ENDOFTEXT_ID, IM_END_ID
from synth.decontam import ngram_tokens
from synth.llm.base import GenerationResult
from training import eval_tasks as et
from training.chat_data import is_heldout
from training.eval_data import decontaminate, heldout_documents, heldout_prompts, training_rows
from training.ifeval import ITEMS, check_item, fasttext_lid

REPO = Path(__file__).resolve().parents[1]


# ---- checkers -----------------------------------------------------------------------------------------------------


def item(name: str, **args):
    from training.ifeval import IfevalItem

    return IfevalItem("t", "prompt", ((name, args),))


@pytest.fixture(scope="module")
def lid():
    return fasttext_lid()


@pytest.mark.parametrize(
    "name, args, passing, failing",
    [
        ("max_words", {"n": 5}, "One two three four five.", "One two three four five six."),
        ("min_words", {"n": 4}, "one two three four", "one two three"),
        ("json_object", {"keys": ["name", "age"]}, '```json\n{"name": "Ann", "age": 3}\n```', '{"name": "Ann"}'),
        ("json_object", {"keys": []}, '{"a": 1}', "[1, 2]"),
        ("bullets", {"n": 3}, "Tips:\n- a\n- b\n* c", "- a\n- b"),
        ("paragraphs", {"n": 2}, "First part.\n\nSecond part.", "One block\nof two lines."),
        ("lowercase", {}, "all small here", "Not all small"),
        ("uppercase", {}, "ALL LOUD!", "ALL LOUd"),
        ("keywords", {"terms": ["morning", "aroma"]}, "The Morning aroma.", "The morning smell."),
        ("keyword_count", {"word": "crater", "n": 2}, "A crater and a crater.", "A crater and craters."),
        ("forbidden_words", {"terms": ["tree"]}, "Grass and streets.", "A tall tree."),
        ("ends_with", {"phrase": "That is all."}, "Rain falls. That is all.", "That is all. Rain falls."),
        ("starts_with", {"word": "yes"}, "Yes, cats can swim.", "Well, yes."),
        ("no_commas", {}, "No commas here.", "One, two."),
        ("quoted", {}, '"Blue."', "Blue."),
        ("title", {}, "<<Green Thumbs>> and more", "<Green Thumbs>"),
    ],
)
def test_each_constraint_checker_passes_and_fails(name, args, passing, failing, lid):
    assert check_item(item(name, **args), passing, lid) == [True]
    assert check_item(item(name, **args), failing, lid) == [False]


def test_language_constraint_uses_lid_and_an_empty_answer_fails_everything(lid):
    german = item("language", lang="de")
    assert check_item(german, "Die Hauptstadt von Italien ist Rom, eine sehr alte Stadt.", lid) == [True]
    assert check_item(german, "The capital of Italy is Rome, a very old city.", lid) == [False]
    chinese = item("language", lang="zh")
    assert check_item(chinese, "天空是蓝色的，因为空气散射了蓝光。", lid) == [True]
    # vacuous truths do not count: an empty answer has no commas and avoids every word, yet fails
    for name, args in (("no_commas", {}), ("forbidden_words", {"terms": ["x"]}), ("max_words", {"n": 3})):
        assert check_item(item(name, **args), "   ", lid) == [False]


def test_the_instruction_set_is_sized_and_every_item_checks():
    assert 20 <= len(ITEMS) <= 40 and len({i.id for i in ITEMS}) == len(ITEMS)
    kinds = {name for i in ITEMS for name, _ in i.constraints}
    assert {"max_words", "language", "json_object", "bullets", "lowercase", "keywords"} <= kinds
    two = next(i for i in ITEMS if len(i.constraints) == 2 and i.constraints[0][0] == "lowercase")
    assert check_item(two, "red leaves fall", lambda t: "en") == [True, True]
    assert check_item(two, "Red leaves fall", lambda t: "en") == [False, True]


def test_math_items_are_deterministic_and_extraction_finds_the_final_answer():
    items = et.math_items(18, seed=3)
    assert [i.messages for i in items] == [i.messages for i in et.math_items(18, seed=3)]
    assert items[0].messages != et.math_items(1, seed=4)[0].messages
    assert {i.extra["lang"] for i in items} == {"en", "de", "zh"} and len({i.extra["family"] for i in items}) == 6
    assert all(isinstance(i.reference, int) and i.reference > 0 for i in items)
    ref = items[0].reference
    assert et.score_math(items[0], f"Step one.\nFinal answer: {ref}")[0]
    assert et.score_math(items[0], f"The total is {ref + 1}. Final answer: {ref:,}")[0]  # the answer line wins
    assert et.score_math(items[0], f"so it is \\boxed{{{ref}}}")[0]
    assert not et.score_math(items[0], f"Final answer: {ref + 1}")[0]
    assert not et.score_math(items[0], "I do not know.")[0]
    assert et.score_math(items[0], "no idea")[1]["found_by"] == "none"


def result(finish: list[str], stops: list[int | None] | None) -> GenerationResult:
    return GenerationResult(
        texts=["x"] * len(finish),
        completion_tokens=[1] * len(finish),
        finish_reasons=finish,
        prompt_tokens=1,
        model_id="m",
        backend="transformers",
        sampling={},
        template_version="v",
        stop_tokens=stops,
    )


def test_im_end_share_counts_only_a_stop_at_im_end():
    stopped = result(["stop"], [IM_END_ID])
    endoftext = result(["stop"], [ENDOFTEXT_ID])
    cut = result(["length"], [None])
    unknown = result(["stop"], None)  # a backend that does not say which token stopped it
    verdicts = [et.ended_with_im_end(r) for r in (stopped, endoftext, cut, unknown)]
    assert verdicts == [True, False, False, None]
    assert et.share(verdicts) == pytest.approx(1 / 3)
    assert et.share([None]) is None


def test_transformers_backend_reports_the_stop_token(tmp_path):
    """The generator records which token ended each answer (what im_end_share reads)."""
    from synth.llm.backends import TransformersGenerator
    from synth.llm.base import GenerationRequest

    model = tiny_folder(tmp_path, 0, "chat")
    (r,) = TransformersGenerator(model).generate([GenerationRequest([{"role": "user", "content": "Hi"}], 4)])
    assert r.stop_tokens is not None and len(r.stop_tokens) == 1
    assert (r.stop_tokens[0] in (IM_END_ID, ENDOFTEXT_ID)) == (r.finish_reasons[0] == "stop")


def test_win_rate_counts_ties_as_half():
    assert et.win_rate(
        [1.0, 0.0, 2.0, 5.0], [0.5, 1.0, 2.0, 1.0], ["a", "b", "c", "same"], ["x", "y", "z", "same"]
    ) == [
        1.0,
        0.0,
        0.5,
        0.5,
    ]


# ---- HumanEval in the sandbox -------------------------------------------------------------------------------------


def test_humaneval_canonical_solution_passes_and_a_wrong_one_fails():
    from synth.bubblewrap import sandbox_available

    available = sandbox_available()
    if available is not True:
        pytest.skip(f"bubblewrap cannot run here: {available}")
    items = et.humaneval_items(2)
    assert [i.id for i in items] == ["HumanEval/0", "HumanEval/1"]
    canonical = [f"Here it is:\n```python\n{i.extra['prompt']}{i.reference}```" for i in items]
    body_only = [f"```python\n{items[0].reference}```"]  # a plain completion of the prompt's body
    wrong = [f"```python\n{i.extra['prompt']}    return []\n```" for i in items]
    verdicts = et.run_humaneval(items + items[:1] + items + items[:1], canonical + body_only + wrong + ["no code"])
    assert [v for v, _ in verdicts] == [True, True, True, False, False, False]
    assert verdicts[3][1]["status"] == "failed" and verdicts[5][1]["status"] == "no_code"


# ---- data: held-out slice, training sources, decontamination ------------------------------------------------------


def write_parquet(path: Path, rows: list[dict], kind: str) -> str:
    messages = pa.list_(MESSAGE_TYPE)
    if kind == "sft":
        schema = pa.schema([("id", pa.string()), ("messages", messages)])
    else:
        schema = pa.schema([("id", pa.string()), ("prompt", messages), ("chosen", messages), ("rejected", messages)])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return str(path)


def conv(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def ids_by_side(fraction: float, count: int, prefix: str) -> tuple[list[str], list[str]]:
    ids = [f"{prefix}-{i}" for i in range(200)]
    held = [i for i in ids if is_heldout(i, fraction)][:count]
    trained = [i for i in ids if not is_heldout(i, fraction)][:count]
    return held, trained


FRACTION = 0.3


def sft_rows(copied_problem: str) -> list[dict]:
    """Held-out rows (their prompts are win-rate prompts: five long ones and a short one) and trained rows: one
    holds a copy of a math problem, one the short held-out prompt as its own user turn."""
    held, trained = ids_by_side(FRACTION, 6, "sft")
    rows = [
        {"id": i, "messages": conv(f"Tell me something about this: {EN[k]}", "Sure.")} for k, i in enumerate(held[:5])
    ]
    rows.append({"id": held[5], "messages": conv("How are you today?", "Fine.")})
    rows.append({"id": trained[0], "messages": conv(f"Please solve: {copied_problem}", "I will.")})
    rows.append({"id": trained[1], "messages": conv("How are you today?", "Good, thanks.")})
    rows += [
        {"id": t, "messages": conv(f"Question {k}: what is {k} plus {k}?", f"{2 * k}")}
        for k, t in enumerate(trained[2:])
    ]
    return rows


def pair_rows() -> list[dict]:
    held, trained = ids_by_side(FRACTION, 3, "pair")
    prompt = [{"role": "user", "content": "Name a colour, please."}]
    good, bad = [{"role": "assistant", "content": "Blue."}], [{"role": "assistant", "content": "No."}]
    return [{"id": i, "prompt": prompt, "chosen": good, "rejected": bad} for i in held + trained]


def test_decontamination_drops_items_copied_into_training_data(tmp_path):
    math = et.math_items(4)
    copied = math[1].texts[0]
    sources = {
        "synthetic": write_parquet(tmp_path / "sft" / "data" / "part-0.parquet", sft_rows(copied), "sft"),
        "pairs": write_parquet(tmp_path / "pairs.parquet", pair_rows(), "pairs"),
    }
    rows = [r for name, path in sources.items() for r in training_rows(name, path, FRACTION)]
    assert sum(r.heldout for r in rows) == 6 + 3
    prompts = heldout_prompts(rows, 10)
    contents = [p["messages"][-1]["content"] for p in prompts]
    assert "How are you today?" in contents and "Name a colour, please." in contents  # pairs share one prompt
    assert len(prompts) == 6 + 1
    chat = [et.EvalItem("chat", p["id"], p["messages"], [m["content"] for m in p["messages"]]) for p in prompts]
    kept, report = decontaminate({"math": math, "chat": chat}, sources, FRACTION)
    assert [i.id for i in kept["math"]] == [math[0].id, math[2].id, math[3].id]
    assert report["tasks"]["math"] == {"items": 4, "overlapping": 1, "kept": 3}
    overlap = report["overlaps"][f"math/{math[1].id}"]
    assert overlap["source"] == "synthetic" and overlap["match"] == "13-gram"
    assert overlap["text"] in " ".join(ngram_tokens(copied))  # the first shared 13-gram, as synth.decontam tokenizes
    # the short held-out prompt is also a trained row's whole user turn; the pair prompt was trained (not held out
    # under this fraction for the trained pair rows): both dropped, the other held-out prompts kept
    dropped_chat = {k.split("/", 1)[1] for k in report["overlaps"] if k.startswith("chat/")}
    assert {c["messages"][-1]["content"] for c in prompts if c["id"] in dropped_chat} == {
        "How are you today?",
        "Name a colour, please.",
    }
    assert (
        report["overlaps"][next(k for k in report["overlaps"] if "How are" in report["overlaps"][k]["text"])]["match"]
        == "whole turn"
    )
    assert len(kept["chat"]) == 5
    # a held-out row is not training data: the same copy in a row every run held out overlaps nothing
    held_id = ids_by_side(FRACTION, 1, "copy")[0][0]
    held_copy = write_parquet(tmp_path / "held.parquet", [{"id": held_id, "messages": conv(copied, "x")}], "sft")
    assert decontaminate({"math": math}, {"held": held_copy}, FRACTION)[1]["tasks"]["math"]["overlapping"] == 0


def test_pretraining_mix_documents_are_training_data(tmp_path):
    from pipelines.schema import MIXED_SCHEMA

    math = et.math_items(3)
    doc = {f.name: None for f in MIXED_SCHEMA}
    rows = [
        {**doc, "id": "d1", "text": f"A page that quotes a problem. {math[0].texts[0]} The end.", "copy": 0},
        {**doc, "id": "d1", "text": f"A page that quotes a problem. {math[0].texts[0]} The end.", "copy": 1},
        {**doc, "id": "v1", "text": f"Validation only: {math[1].texts[0]}", "copy": 0, "heldout": True},
        {**doc, "id": "d2", "text": "Nothing from the evaluation sets here at all, just prose.", "copy": 0},
    ]
    rows = [{**r, "bucket": "web/en", "n_tokens": 10, "heldout": bool(r["heldout"])} for r in rows]
    (tmp_path / "mix" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=MIXED_SCHEMA), tmp_path / "mix" / "data" / "part-0.parquet")
    read = list(training_rows("pretraining_mix", str(tmp_path / "mix"), FRACTION))
    assert [(r.id, r.trained) for r in read] == [("d1", True), ("v1", False), ("d2", True)]  # copies read once
    kept, report = decontaminate({"math": math}, {"pretraining_mix": str(tmp_path / "mix")}, FRACTION)
    assert [i.id for i in kept["math"]] == [math[1].id, math[2].id]  # a validation-mix row is not trained on
    assert (
        report["overlaps"][f"math/{math[0].id}"]["source"] == "pretraining_mix" and report["training_rows_scanned"] == 2
    )


def test_online_dpo_episodes_count_only_the_trained_samples(tmp_path):
    from training.episodes import write_episode

    math = et.math_items(2)
    prompt = conv("Solve this for me please", "")[:1]
    base = {"episode": 1, "prompt_index": 0, "prompt_id": "p0", "prompt": prompt, "completion_tokens": 5}
    base |= {"finish_reason": "stop", "score": 0.0, "policy_logp": 0.0, "reference_logp": 0.0, "reply_tokens": 5}
    base |= {"chosen_index": 0, "rejected_index": 1, "gap": 1.0, "pair_kept": True, "pair_reason": "kept"}
    rows = [
        {**base, "sample_index": 0, "response": f"Sure: {math[0].texts[0]}", "role": "chosen"},
        {**base, "sample_index": 1, "response": "No.", "role": "rejected"},
        {**base, "sample_index": 2, "response": f"Also: {math[1].texts[0]}", "role": ""},  # sampled, not trained
    ]
    folder = tmp_path / "episodes"
    write_episode(folder, rows)
    kept, report = decontaminate({"math": math}, {"online_dpo_episodes": str(folder)}, FRACTION)
    assert [i.id for i in kept["math"]] == [math[1].id] and report["training_rows_scanned"] == 2


def test_perplexity_slice_is_the_mixture_index_heldout_documents(tmp_path):
    from pipelines.mixing import run_index
    from pipelines.shards import iter_stage_rows

    (tmp_path / "corpus").mkdir()
    corpus = make_mix_corpus(tmp_path / "corpus")
    index = str(tmp_path / "index")
    run_index([str(corpus)], index, heldout_fraction=0.2, long_doc_tokens=64, max_doc_tokens=512, workers=1)
    heldout = {r["id"] for r in iter_stage_rows(index, ["id", "heldout"]) if r["heldout"]}
    assert heldout
    docs = heldout_documents(index, per_language=3, seed=0)
    picked = [d["id"] for ds in docs.values() for d in ds]
    assert set(picked) <= heldout and {"en", "de", "zh"} <= set(docs)
    assert all(len(ds) <= 3 for ds in docs.values())
    assert heldout_documents(index, 3, seed=0) == docs  # the same documents every run
    assert set(heldout_documents(index, 3, seed=0, languages=["de"])) == {"de"}


# ---- end to end ---------------------------------------------------------------------------------------------------


def tiny_folder(path: Path, seed: int, kind: str, tied: bool = True) -> str:
    """A random tiny Qwen2. Tied embeddings make a random model repeat its last input token; untied ones answer
    something else, so two models give different answers to score."""
    import torch
    from transformers import AutoModelForCausalLM

    from training.checkpoint import save_pretrained_folder
    from training.model_configs import qwen2_config

    torch.manual_seed(seed)
    config = qwen2_config("tiny", max_position_embeddings=256, tie_word_embeddings=tied)
    model = AutoModelForCausalLM.from_config(config)
    return str(save_pretrained_folder(model, None, path / "final", kind=kind))


def make_data_root(root: Path) -> None:
    """What the pipeline leaves under a data root: the base (long-context) and SFT checkpoints with their
    settings.json, a reward model, a mixture index, SFT data, preference pairs and demonstrations."""
    import torch

    from pipelines.mixing import run_index
    from training.reward_model import load_reward_model

    tiny_folder(root / "models" / "long_context", 0, "base", tied=False)
    sft = tiny_folder(root / "models" / "sft", 1, "chat")
    (root / "models" / "sft" / "settings.json").write_text(json.dumps({"heldout_fraction": FRACTION}))
    torch.manual_seed(2)
    load_reward_model(sft).save_pretrained(root / "models" / "reward" / "final")
    (root / "curated").mkdir(parents=True)
    corpus = make_mix_corpus(root / "curated")
    run_index([str(corpus)], str(root / "mix" / "index"), 0.2, long_doc_tokens=64, max_doc_tokens=512, workers=1)
    copied = et.math_items(3)[2].texts[0]
    write_parquet(root / "synthetic" / "sft" / "final" / "data" / "part-0.parquet", sft_rows(copied), "sft")
    write_parquet(root / "synthetic" / "preference" / "final" / "data" / "part-0.parquet", pair_rows(), "pairs")
    demos = [{"id": "demo-0", "messages": conv("Hello there, friend.", "Hello!")}]
    write_parquet(root / "post_training" / "demonstrations" / "chatterbot.parquet", demos, "sft")


SMALL = {
    "max_new_tokens": 12,
    "math_items": 3,
    "humaneval_items": 2,
    "ifeval_items": 4,
    "winrate_prompts": 8,
    "perplexity_documents": 2,
    "perplexity_max_tokens": 48,
    "batch_size": 8,
    "num_threads": 2,
    "device": "cpu",
}
METRICS = {
    "perplexity_code",
    "perplexity_en",
    "perplexity_de",
    "perplexity_zh",
    "perplexity_all",
    "winrate_vs_sft",
    "reward_mean",
    "math_exact_match",
    "humaneval_pass@1",
    "ifeval_prompt_accuracy",
    "ifeval_instruction_accuracy",
    "im_end_share",
}


def test_asset_evaluates_the_checkpoints_on_disk_into_one_table(tmp_path):
    """post_training_evaluation for real, through Pipes (python -m training.evaluate): the base and SFT checkpoints
    that exist (no DPO or online-DPO model yet), every metric for both, the decontamination counts, the files; then
    the command line killed with SIGKILL and run again gives the same table."""
    import dagster as dg

    from assets.evaluation import post_training_evaluation
    from assets.metadata import table_rows
    from dagster_project.resources import CurationResource

    root = tmp_path / "data"
    make_data_root(root)
    result = dg.materialize(
        [post_training_evaluation],
        resources={
            "curation": CurationResource(data_root=str(root)),
            "pipes_subprocess_client": dg.PipesSubprocessClient(),
        },
        run_config={"ops": {"post_training_evaluation": {"config": SMALL}}},
    )
    assert result.success
    (event,) = result.asset_materializations_for_node("post_training_evaluation")
    meta = event.metadata
    table = table_rows(meta["evaluation"])
    assert {r["metric"] for r in table} == METRICS
    summary = json.loads(Path(meta["summary"].value).read_text())
    assert list(summary["models"]) == ["base", "sft"]
    from synth.bubblewrap import sandbox_available

    sandboxed = sandbox_available() is True  # without bubblewrap HumanEval is left unscored, with a note
    assert sandboxed or any(n.startswith("humaneval not scored") for n in summary["notes"])
    for model in ("base", "sft"):
        values = summary["metrics"][model]
        assert set(values) == METRICS, values
        for name, value in values.items():
            if name == "humaneval_pass@1" and not sandboxed:
                assert value is None
            elif name.startswith("perplexity"):
                assert value > 0
            elif name != "reward_mean":
                assert 0 <= value <= 1, (name, value)
            else:
                assert isinstance(value, float)
    assert summary["metrics"]["sft"]["winrate_vs_sft"] == 0.5  # against itself: every answer the same
    assert summary["items"]["math"] == 2 and summary["decontamination"]["tasks"]["math"]["overlapping"] == 1
    assert summary["decontamination"]["tasks"]["chat"]["overlapping"] >= 1
    assert summary["heldout_fraction"] == FRACTION  # the SFT run's, read from its settings.json
    assert "![" in meta["plot"].value and Path(summary["files"]["plot"]).exists()
    answers = pq.read_table(summary["files"]["answers"]).to_pylist()
    assert {(a["model"], a["task"]) for a in answers} >= {("base", "math"), ("sft", "humaneval"), ("sft", "perplexity")}
    long = pq.read_table(summary["files"]["table"]).to_pylist()
    assert len(long) == 2 * len(METRICS)

    # The command line into a fresh folder, killed with SIGKILL once the first model's answers are in the request
    # cache, then run again: it resumes (those answers are not asked again) and gives the same table.
    args = ["--config", str(root / "evaluation" / "settings.json"), "--output", str(tmp_path / "again")]
    args += [a for n, d in summary["models"].items() for a in ("--model", f"{n}={d}")]
    args += ["--reward-model", summary["reward_model"], "--heldout-index", summary["heldout_index"]]
    args += [a for n, d in summary["decontamination"]["sources"].items() for a in ("--train-data", f"{n}={d}")]
    command = [sys.executable, "-m", "training.evaluate", *args]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cache = tmp_path / "again" / "request_cache"
    while proc.poll() is None and not any(f.stat().st_size for f in cache.glob("*.jsonl")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = proc.returncode == -signal.SIGKILL
    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    again = json.loads((tmp_path / "again" / "evaluation.json").read_text())
    assert again["metrics"] == summary["metrics"]
    if killed:  # else the first run finished before the kill: nothing to resume
        assert "base: 13 answers (13 cached)" in rerun.stdout


def test_command_line_help_and_a_bad_model_folder(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "training.evaluate", "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert out.returncode == 0 and "--model NAME=DIR" in out.stdout and "--winrate-prompts" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "training.evaluate", "--output", str(tmp_path), "--model", f"x={tmp_path}"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert bad.returncode == 1 and "holds no config.json" in bad.stderr
    shutil.rmtree(tmp_path, ignore_errors=True)
