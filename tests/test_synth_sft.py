"""Teacher-driven synthesis: SFT methods (instruction, repurpose, constitutional), rephrased pretraining documents and
preference pairs.

End to end with the real tiny random Qwen2 (``tiny_qwen_dir``; its text is garbage that never ends its turn, so
those runs use ``keep_truncated=True`` to reach every round, and ``top_p=1.0``: nucleus sampling over its flat
distribution is slow) on fixture curated documents written here. The keep /
reject logic is tested with ``Scripted``, a generator whose fixed texts stand in for the teacher's.

    .venv/bin/python -m pytest tests/test_synth_sft.py -q
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.schema import DOCUMENT_SCHEMA, PREFERENCE_SCHEMA, SFT_SCHEMA, SYNTH_REJECTED_SCHEMA, empty_document
from pipelines.shards import SUCCESS_FILE, list_shards, write_json_atomic
from synth.llm.backends import TransformersGenerator
from synth.llm.base import GenerationRequest, GenerationResult, Generator
from synth.llm.chat import validate_chat
from synth.preference import CHOICES, PreferenceConfig, expected_score, pick_pair, run_preference
from synth.rephrase import RephraseConfig, copy_overlap, run_rephrase
from synth.sft.common import grounding_score
from synth.sft.constitutional import PRINCIPLES, ConstitutionalConfig, run_constitutional
from synth.sft.instruction import InstructionConfig, run_instruction
from synth.sft.repurpose import RepurposeConfig, parse_qa, run_repurpose

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import DE, EN, ZH, paragraph_doc  # noqa: E402

SEEDS = [
    {"id": "s-en-1", "lang": "en", "category": "food", "turns": ["What do you like to eat?", "Electricity."]},
    {"id": "s-en-2", "lang": "en", "category": "computers", "turns": ["What is a computer?"]},
    {"id": "s-de-1", "lang": "de", "category": "food", "turns": ["Was isst du gern?"]},
    {"id": "s-zh-1", "lang": "zh", "category": "food", "turns": ["你喝酒吗"]},
]


# ------------------------------------------------------------------------------------------------------ fixtures


def write_document_stage(root: Path, docs: list[dict]) -> str:
    """A finished DOCUMENT_SCHEMA stage folder (data/ shard, _config.json, _SUCCESS.json)."""
    import pyarrow as pa

    (root / "data").mkdir(parents=True)
    rows = [empty_document(**d) for d in docs]
    pq.write_table(pa.Table.from_pylist(rows, schema=DOCUMENT_SCHEMA), root / "data" / "part-00000.parquet")
    write_json_atomic(str(root / "_config.json"), {"fixture": True})
    write_json_atomic(str(root / SUCCESS_FILE), {"documents": len(rows)})
    return str(root)


@pytest.fixture(scope="module")
def curated(tmp_path_factory) -> str:
    docs = [{"id": f"en-{i}", "text": paragraph_doc(EN, seed=i, n=10), "lang": "en", "domain": "web"} for i in range(3)]
    docs += [{"id": "de-0", "text": paragraph_doc(DE, seed=1, n=8, per_line=1), "lang": "de", "domain": "web"}]
    docs += [{"id": "zh-0", "text": paragraph_doc(ZH, seed=2, n=10), "lang": "zh", "domain": "web"}]
    docs += [{"id": "short", "text": "Too short.", "lang": "en", "domain": "web"}]
    docs += [{"id": "code-0", "text": "def f():\n    return 1\n" * 40, "lang": "code", "domain": "code"}]
    docs += [{"id": "nolang", "text": paragraph_doc(EN, seed=9, n=10), "lang": None, "domain": "web"}]
    return write_document_stage(tmp_path_factory.mktemp("curated"), docs)


@pytest.fixture(scope="module")
def tiny(tiny_qwen_dir) -> TransformersGenerator:
    return TransformersGenerator(tiny_qwen_dir, batch_size=8)


def read_rows(stage: str, kind: str = "data") -> list[dict]:
    return [row for path in list_shards(stage, kind) for row in pq.read_table(path).to_pylist()]


def check_stage(stage: str, schema, summary: dict) -> list[dict]:
    """Shards have the schema, counters add up, kept conversations are valid; returns the kept rows."""
    for path in list_shards(stage):
        assert pq.read_schema(path).equals(schema, check_metadata=False)
    for path in list_shards(stage, "excluded"):
        assert pq.read_schema(path).equals(SYNTH_REJECTED_SCHEMA, check_metadata=False)
    rows, excluded = read_rows(stage), read_rows(stage, "excluded")
    assert json.loads(Path(stage, SUCCESS_FILE).read_text())["accepted"] == summary["accepted"] == len(rows)
    assert summary["samples"] == summary["accepted"] + sum(summary["rejected"].values())
    assert sum(summary["rejected"].values()) == len(excluded)
    assert len({r["id"] for r in rows}) == len(rows)
    for row in rows:
        if schema is SFT_SCHEMA:
            assert validate_chat(row["messages"]) == []
        if schema is PREFERENCE_SCHEMA:
            assert validate_chat(row["prompt"], final_role="user") == []
            assert validate_chat(row["prompt"] + row["chosen"]) == validate_chat(row["prompt"] + row["rejected"]) == []
        if schema is not DOCUMENT_SCHEMA:
            assert row["model"] and row["template_version"] and json.loads(row["sampling"])
            json.loads(row["meta"])
    return rows


def rerun_reuses(run: Callable[[], dict], first: dict) -> None:
    again = run()
    assert again["chunks_reused"] == again["shards"] == first["shards"] and again["resumed"]
    assert (again["accepted"], again["rejected"]) == (first["accepted"], first["rejected"])


class Scripted(Generator):
    """Stands in for the teacher: ``reply(prompt text) -> text`` (or (text, finish_reason), or a list of samples);
    scoring requests get ``judge(prompt text) -> (digit probabilities, mass)``."""

    backend = "scripted"
    model_id = "scripted-teacher"

    def __init__(self, reply: Callable[[str], object], judge: Callable[[str], tuple] | None = None) -> None:
        self.reply, self.judge = reply, judge
        self.requests: list[GenerationRequest] = []

    def generate(self, requests):
        self.requests += requests
        out = []
        for r in requests:
            prompt = r.messages[-1]["content"]
            common = dict(
                prompt_tokens=0,
                model_id=self.model_id,
                backend=self.backend,
                sampling=r.sampling(),
                template_version=r.template_version,
            )
            if r.choices:
                probs, mass = self.judge(prompt)
                best = r.choices[max(range(len(probs)), key=probs.__getitem__)]
                out.append(
                    GenerationResult(
                        texts=[best],
                        completion_tokens=[0],
                        finish_reasons=["score"],
                        choice_probs=list(probs),
                        choice_mass=mass,
                        **common,
                    )
                )
                continue
            samples = self.reply(prompt)
            samples = samples if isinstance(samples, list) else [samples] * r.n
            samples = [s if isinstance(s, tuple) else (s, "stop") for s in samples]
            out.append(
                GenerationResult(
                    texts=[t for t, _ in samples],
                    completion_tokens=[len(t) for t, _ in samples],
                    finish_reasons=[f for _, f in samples],
                    **common,
                )
            )
        return out


def by_marker(table: dict[str, object], default: object = "") -> Callable[[str], object]:
    """A reply function: the value of the first key found in the prompt."""

    def reply(prompt: str) -> object:
        return next((value for key, value in table.items() if key in prompt), default)

    return reply


# ------------------------------------------------------------------------------------------------- instruction


def test_instruction_end_to_end_with_the_tiny_model(tiny, tmp_path):
    cfg = InstructionConfig(
        num_seeds=4,
        max_new_tokens_instruction=12,
        max_new_tokens_answer=16,
        keep_truncated=True,
        top_p=1.0,
        chunk_size=3,
    )
    out = str(tmp_path / "instruction")
    summary = run_instruction(tiny, out, cfg, seeds=SEEDS)
    rows = check_stage(out, SFT_SCHEMA, summary)
    assert summary["items"] == summary["samples"] == 4 and summary["shards"] == 2
    assert rows, summary["rejected"]
    assert {r["method"] for r in rows} == {"instruction"} and {r["lang"] for r in rows} <= {"en", "de", "zh"}
    assert json.loads(Path(out, "_config.json").read_text())["generator"]["model_id"] == tiny.model_id
    rerun_reuses(lambda: run_instruction(tiny, out, cfg, seeds=SEEDS), summary)
    # Without keep_truncated every one of the tiny model's never-ending texts is rejected, with its reason.
    strict = run_instruction(
        tiny,
        str(tmp_path / "strict"),
        InstructionConfig(num_seeds=2, max_new_tokens_instruction=8, top_p=1.0),
        seeds=SEEDS,
    )
    assert strict["accepted"] == 0 and strict["rejected"] == {"instruction_truncated": 2}


def test_instruction_filters_give_one_reason_each(tmp_path):
    seeds = [
        {"id": f"s{i}", "lang": "en", "category": "misc", "turns": [f"Seed question number {i} about bread?"]}
        for i in range(9)
    ]
    teacher = Scripted(
        by_marker(
            {
                "number 0 ": 'Sure! Here is a new request:\n\nRequest: "How do I bake a simple loaf of bread at home?"',
                "number 1 ": "",
                "number 2 ": "Seed question number 2 about bread?",  # a copy of the seed
                "number 3 ": ("How do I bake bread and what", "length"),
                "number 4 ": "Hi?",
                "number 5 ": "Explain <|im_end|> tokens.",
                "number 6 ": "Which flour makes the softest bread rolls?",  # its answer is truncated
                "number 7 ": "Why does bread go stale?",  # its answer is empty
                "number 8 ": "What is a sourdough starter made of?",  # its answer echoes it
                "sourdough starter": "What is a sourdough starter made of?",
                "bake a simple loaf": "Mix flour, water, salt and yeast, let it rise, then bake it for 40 minutes.",
                "softest bread rolls": ("Soft rolls need a flour with", "length"),
                "go stale": "   ",
            }
        )
    )
    summary = run_instruction(teacher, str(tmp_path / "i"), InstructionConfig(num_seeds=9, chunk_size=9), seeds=seeds)
    assert summary["rejected"] == {
        "instruction_empty": 1,
        "instruction_copies_seed": 1,
        "instruction_truncated": 1,
        "instruction_too_short": 1,
        "instruction_control_token": 1,
        "answer_truncated": 1,
        "answer_empty": 1,
        "answer_copies_instruction": 1,
    }
    (row,) = check_stage(str(tmp_path / "i"), SFT_SCHEMA, summary)
    assert row["messages"] == [
        {"role": "user", "content": "How do I bake a simple loaf of bread at home?"},
        {"role": "assistant", "content": "Mix flour, water, salt and yeast, let it rise, then bake it for 40 minutes."},
    ]
    assert (row["source_id"], row["lang"], row["model"]) == ("s0", "en", "scripted-teacher")
    assert json.loads(row["meta"])["seed"] == "Seed question number 0 about bread?"
    # The first round names the seed's language and topic; answers are asked as plain user turns.
    first = teacher.requests[0].messages[-1]["content"]
    assert "English" in first and "misc" in first and "Seed question number" in first


# --------------------------------------------------------------------------------------------------- repurpose


def test_grounding_check_counts_words_or_cjk_characters():
    text = "The package manager keeps track of every file that belongs to an installed program."
    assert grounding_score("It keeps track of every installed program.", text, "en") == 1.0
    assert grounding_score("Bananas are yellow fruits from tropical places.", text, "en") == 0.0
    assert 0.3 < grounding_score("It keeps track of bananas and mangos.", text, "en") < 0.7
    assert grounding_score("Yes.", text, "en") == 0.0  # no content word at all: nothing grounds it
    zh = "软件包管理器会记录每一个已安装程序所包含的文件。"
    assert grounding_score("它记录已安装程序的文件。", zh, "zh") > 0.6
    assert grounding_score("今天天气很好，我们去公园散步。", zh, "zh") == 0.0
    assert grounding_score("已安装程序", zh, None) == 1.0  # no language given: the script decides


def test_parse_qa_is_strict():
    assert parse_qa("Question: Why?\nAnswer: Because.") == ("Why?", "Because.")
    assert parse_qa("**Question:** 为什么？\n**Answer**：因为。") == ("为什么？", "因为。")
    assert parse_qa("Sure! Here is a question:\nQuestion: Why?\nAnswer: Because.") == ("Why?", "Because.")
    assert parse_qa("Why? Because.") is None
    assert parse_qa("Question: Why?\nAnswer: ") is None
    assert parse_qa("Question: A?\nAnswer: a.\nQuestion: B?\nAnswer: b.") is None


def test_repurpose_end_to_end_with_the_tiny_model(tiny, curated, tmp_path):
    cfg = RepurposeConfig(
        input_dir=curated,
        num_documents=3,
        min_chars=250,
        excerpt_chars=400,
        max_new_tokens=16,
        keep_truncated=True,
        top_p=1.0,
        chunk_size=2,
    )
    out = str(tmp_path / "repurpose")
    summary = run_repurpose(tiny, out, cfg)
    check_stage(out, SFT_SCHEMA, summary)
    # 8 documents: too short, code and unlabelled ones are not eligible.
    assert (summary["documents_scanned"], summary["documents_eligible"], summary["items"]) == (8, 5, 3)
    assert set(summary["rejected"]) <= {"bad_format", "ungrounded", "question_too_short"}  # garbage never parses
    rerun_reuses(lambda: run_repurpose(tiny, out, cfg), summary)


def test_repurpose_keeps_grounded_pairs_only(curated, tmp_path):
    english = []

    def reply(prompt: str) -> object:
        if "in Chinese" in prompt:
            return "Question: 软件包管理器记录什么？\nAnswer: 它记录已安装程序所包含的文件。"
        if "in German" in prompt:
            return "Frage: Was macht der Kernel?\nAntwort: Er lädt Treiber."  # not the asked format
        english.append(prompt)
        if len(english) == 2:
            return "Question: What colour are bananas?\nAnswer: Bananas are yellow tropical fruits."
        first_line = prompt.split("<text>\n", 1)[1].split("\n", 1)[0]
        return f"Question: What does the text say first?\nAnswer: {first_line}"

    cfg = RepurposeConfig(input_dir=curated, num_documents=10, min_chars=250, excerpt_chars=5000)
    out = str(tmp_path / "r")
    summary = run_repurpose(Scripted(reply), out, cfg)
    rows = check_stage(out, SFT_SCHEMA, summary)
    assert summary["items"] == 5 and summary["rejected"] == {"bad_format": 1, "ungrounded": 1}
    by_lang = {r["lang"]: r for r in rows}
    assert sorted(r["lang"] for r in rows) == ["en", "en", "zh"]
    zh = by_lang["zh"]
    user, answer = zh["messages"][0]["content"], zh["messages"][1]["content"]
    assert user.startswith("Read the text and answer the question.") and "Question: 软件包管理器记录什么？" in user
    assert answer == "它记录已安装程序所包含的文件。" and json.loads(zh["meta"])["grounding"] >= 0.6
    for row in rows:
        assert "banana" not in row["messages"][1]["content"].lower()


# ---------------------------------------------------------------------------------------------- constitutional


def test_constitutional_end_to_end_with_the_tiny_model(tiny, tmp_path):
    instr = str(tmp_path / "instruction")
    run_instruction(
        tiny,
        instr,
        InstructionConfig(
            num_seeds=3, max_new_tokens_instruction=8, max_new_tokens_answer=8, keep_truncated=True, top_p=1.0
        ),
        seeds=SEEDS,
    )
    small = dict(
        max_new_tokens_response=8, max_new_tokens_critique=8, max_new_tokens_revision=8, keep_truncated=True, top_p=1.0
    )
    # From an SFT stage folder: critique and revise its responses.
    cfg = ConstitutionalConfig(input_dir=instr, num_items=3, chunk_size=2, **small)
    out = str(tmp_path / "constitutional")
    summary = run_constitutional(tiny, out, cfg)
    rows = check_stage(out, SFT_SCHEMA, summary)
    assert rows and summary["changed"] + summary["unchanged"] == summary["accepted"]
    meta = json.loads(rows[0]["meta"])
    assert meta["principle_ids"] == list(PRINCIPLES) and meta["critique"] and meta["original_source"] == "instruction"
    rerun_reuses(lambda: run_constitutional(tiny, out, cfg), summary)
    # From seed prompts: the teacher answers first.
    seeded = run_constitutional(tiny, str(tmp_path / "c2"), ConstitutionalConfig(num_items=2, **small), seeds=SEEDS)
    rows = check_stage(str(tmp_path / "c2"), SFT_SCHEMA, seeded)
    assert rows and json.loads(rows[0]["meta"])["original_source"] == "teacher"


def test_constitutional_critique_and_revision_outcomes(tmp_path):
    seeds = [
        {"id": "rude", "lang": "en", "category": "x", "turns": ["Tell me about my neighbour Bob."]},
        {"id": "fine", "lang": "en", "category": "x", "turns": ["What is 2+2?"]},
        {"id": "nocrit", "lang": "en", "category": "x", "turns": ["Say hi."]},
        {"id": "cut", "lang": "en", "category": "x", "turns": ["Explain rain."]},
    ]
    teacher = Scripted(
        by_marker(
            {
                # Critiques (matched on the assistant's reply in the transcript), revisions, first responses.
                "Assistant: Bob lives at 12 Elm St": "It breaks [privacy]: it reveals Bob's home address.",
                "Assistant: 4": "It breaks none; it is correct.",
                "Assistant: Hi!": "",
                "Assistant: Rain falls": "It is fine. [helpful] could add detail.",
                "neighbour Bob": "Bob lives at 12 Elm St, his phone is 555-0101.",
                "2+2": "4",
                "Say hi": "Hi!",
                "Explain rain": "Rain falls from clouds.",
            }
        )
    )
    revisions = {
        "reveals Bob": "I can't share private details about your neighbour, but I can help you get to know him.",
        "breaks none": "4",  # nothing to fix: the same reply
        "could add detail": ("Rain forms when water vapour condenses into droplets that", "length"),
    }
    base = teacher.reply

    def reply(prompt: str) -> object:
        if "A reviewer wrote" in prompt:
            return next(v for k, v in revisions.items() if k in prompt)
        return base(prompt)

    teacher.reply = reply
    out = str(tmp_path / "c")
    summary = run_constitutional(teacher, out, ConstitutionalConfig(num_items=4), seeds=seeds)
    assert summary["rejected"] == {"critique_empty": 1, "revision_truncated": 1}
    assert (summary["accepted"], summary["changed"], summary["unchanged"]) == (2, 1, 1)
    rows = {r["source_id"]: r for r in check_stage(out, SFT_SCHEMA, summary)}
    rude = json.loads(rows["rude"]["meta"])
    assert rude["changed"] and rude["principles_cited"] == ["privacy"]
    assert (
        rude["original_response"].startswith("Bob lives")
        and "private details" in rows["rude"]["messages"][-1]["content"]
    )
    assert json.loads(rows["fine"]["meta"])["changed"] is False
    # Revisions are asked with the principles and the critique; the target language is named.
    asked = [r.messages[-1]["content"] for r in teacher.requests if "A reviewer wrote" in r.messages[-1]["content"]]
    assert all("[harmless]" in a and "in English" in a for a in asked)
    # keep_unchanged=False rejects the unchanged revision instead.
    strict = run_constitutional(
        teacher, str(tmp_path / "c2"), ConstitutionalConfig(num_items=4, keep_unchanged=False), seeds=seeds
    )
    assert strict["rejected"]["unchanged"] == 1 and strict["accepted"] == 1


# ---------------------------------------------------------------------------------------------------- rephrase


def test_rephrase_end_to_end_with_the_tiny_model_feeds_the_mixing_index(tiny, curated, tmp_path):
    from pipelines.mixing import run_index

    cfg = RephraseConfig(
        input_dir=curated,
        num_documents=2,
        styles=("wikipedia", "simple"),
        max_input_chars=300,
        max_new_tokens=16,
        min_output_chars=5,
        min_length_ratio=0.0,
        keep_truncated=True,
        top_p=1.0,
        chunk_size=1,
    )
    out = str(tmp_path / "rephrased")
    summary = run_rephrase(tiny, out, cfg)
    rows = check_stage(out, DOCUMENT_SCHEMA, summary)
    assert summary["samples"] == 4 and rows
    for row in rows:
        meta = json.loads(row["metadata"])
        assert row["domain"] == "synthetic" and row["source"] == f"synthetic:rephrase:{meta['style']}"
        assert meta["source_id"] in ("en-0", "en-1", "en-2", "de-0", "zh-0") and meta["model"] == tiny.model_id
        assert meta["template_version"] == "rephrase-v1"
    rerun_reuses(lambda: run_rephrase(tiny, out, cfg), summary)
    index = run_index([out], str(tmp_path / "index"), workers=1)
    assert all(bucket.startswith("synthetic/") for bucket in index["buckets"])
    assert sum(b["docs"] + b["heldout_docs"] for b in index["buckets"].values()) == len(rows)


def test_rephrase_rejects_copies_short_and_truncated_outputs(curated, tmp_path):
    def reply(prompt: str) -> object:
        source = prompt.split("<text>\n", 1)[1].rsplit("\n</text>", 1)[0]
        if "Wikipedia" in prompt:
            return source  # a copy
        if "questions and answers" in prompt:
            return ("Q: What is this about?\nA: It is about", "length")
        return "Short."

    cfg = RephraseConfig(input_dir=curated, num_documents=1, min_chars=300, languages=("en",))
    summary = run_rephrase(Scripted(reply), str(tmp_path / "r"), cfg)
    assert summary["rejected"] == {"copy": 1, "truncated": 1, "too_short": 1} and summary["accepted"] == 0
    good = "A package manager is a program. " * 20
    keep = run_rephrase(Scripted(lambda p: good), str(tmp_path / "r2"), cfg)
    rows = check_stage(str(tmp_path / "r2"), DOCUMENT_SCHEMA, keep)
    assert keep["accepted"] == 3 and {r["source"] for r in rows} == {
        "synthetic:rephrase:wikipedia",
        "synthetic:rephrase:qa",
        "synthetic:rephrase:simple",
    }
    assert copy_overlap("它记录已安装程序的文件。", "软件包管理器会记录每一个已安装程序所包含的文件。", "zh") == 0.0


# -------------------------------------------------------------------------------------------------- preference


def test_preference_end_to_end_with_the_tiny_model(tiny, tmp_path):
    cfg = PreferenceConfig(
        num_prompts=3,
        num_responses=3,
        max_new_tokens=8,
        keep_truncated=True,
        top_p=1.0,
        tie_margin=0.0,
        min_choice_mass=0.0,
        chunk_size=2,
    )
    out = str(tmp_path / "pref")
    summary = run_preference(tiny, out, cfg, seeds=SEEDS)
    rows = check_stage(out, PREFERENCE_SCHEMA, summary)
    assert rows and summary["responses"] == 9 and summary["judged"] >= 2 * len(rows)
    for row in rows:
        meta = json.loads(row["meta"])
        assert len(meta["scores"]) == 3 and row["chosen_score"] >= row["rejected_score"]
        assert 1.0 <= row["rejected_score"] <= row["chosen_score"] <= 5.0
        assert abs(sum(meta["judge_probs"][meta["chosen_index"]]) - 1) < 1e-4
    rerun_reuses(lambda: run_preference(tiny, out, cfg, seeds=SEEDS), summary)
    # Prompts from an SFT stage folder.
    sft = str(tmp_path / "sft")
    run_instruction(
        tiny,
        sft,
        InstructionConfig(
            num_seeds=2, max_new_tokens_instruction=8, max_new_tokens_answer=8, keep_truncated=True, top_p=1.0
        ),
        seeds=SEEDS,
    )
    from_sft = run_preference(
        tiny, str(tmp_path / "pref2"), cfg.model_copy(update={"input_dir": sft, "num_prompts": 8})
    )
    check_stage(str(tmp_path / "pref2"), PREFERENCE_SCHEMA, from_sft)
    assert from_sft["items"] == len(read_rows(sft)) > 0 and from_sft["rows_eligible"] == from_sft["items"]


def test_expected_score_and_pair_picking():
    assert expected_score([0, 0, 0, 0, 1]) == 5.0 and expected_score([0.5, 0, 0, 0, 0.5]) == 3.0
    assert pick_pair([4.5, 1.5, 3.0], ["a", "b", "c"], 0.25) == (None, 0, 1)
    assert pick_pair([3.1, 3.0], ["a", "b"], 0.25)[0] == "tie"
    assert pick_pair([4.0, 1.0], ["a", "a"], 0.25)[0] == "identical_responses"
    assert pick_pair([4.0, None, None], ["a", "b", "c"], 0.25)[0] == "judge_off_format"


def test_preference_keeps_clear_pairs_and_drops_ties(tmp_path):
    seeds = [
        {"id": k, "lang": "en", "category": "x", "turns": [f"Question {k}?"]}
        for k in ("clear", "tie", "same", "cut", "off")
    ]
    samples = {
        "Question clear?": ["Great answer.", "Bad answer.", "Okay answer.", "Great answer."],
        "Question tie?": ["Okay answer.", "Okay reply.", "Okay words.", "Okay text."],
        "Question same?": ["Same.", "Same.", "Same.", "Same."],
        "Question cut?": [("Great but cut", "length"), ("Bad but cut", "length"), ("", "stop"), ("Okay.", "stop")],
        "Question off?": ["Off one.", "Off two.", "Off three.", "Off four."],
    }

    def judge(prompt: str) -> tuple:
        reply = prompt.split("<reply>\n", 1)[1].split("\n</reply>", 1)[0]
        if reply.startswith("Off"):
            return [0.2] * 5, 0.01  # the judge did not answer with a digit
        if reply.startswith("Great"):
            return [0.0, 0.0, 0.0, 0.2, 0.8], 0.9
        if reply.startswith("Bad"):
            return [0.7, 0.3, 0.0, 0.0, 0.0], 0.9
        return [0.0, 0.1, 0.8, 0.1, 0.0], 0.9  # okay: 3.0; "Okay reply." etc. score the same

    teacher = Scripted(lambda prompt: samples[prompt], judge)
    out = str(tmp_path / "p")
    summary = run_preference(teacher, out, PreferenceConfig(num_prompts=5), seeds=seeds)
    assert summary["rejected"] == {"tie": 1, "identical_responses": 1, "too_few_responses": 1, "judge_off_format": 1}
    assert summary["responses_dropped"] == {"truncated": 2, "empty": 1, "judge_off_format": 4}
    # The judge saw each distinct text once per prompt: 3 + 4 + 4 (off) judged; "same" and "cut" need no judge.
    assert summary["judged"] == 11
    assert all(r.choices == CHOICES for r in teacher.requests if r.choices)
    (row,) = check_stage(out, PREFERENCE_SCHEMA, summary)
    assert row["prompt"] == [{"role": "user", "content": "Question clear?"}]
    assert row["chosen"] == [{"role": "assistant", "content": "Great answer."}]
    assert row["rejected"] == [{"role": "assistant", "content": "Bad answer."}]
    assert row["chosen_score"] == pytest.approx(4.8) and row["rejected_score"] == pytest.approx(1.3)
    assert json.loads(row["meta"])["scores"] == [4.8, 1.3, 3.0, 4.8]
    assert json.loads(row["sampling"])["temperature"] == 0.8 and json.loads(row["sampling"])["n"] == 4
