"""Tests of model-based quality scoring (synth/labels/): rubric prompts, teacher labels with the tiny random
Qwen2, the fastText classifier, and the Beam scoring + tier stages.

    .venv/bin/python -m pytest tests/test_synth_quality.py -q
"""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.schema import DOCUMENT_SCHEMA
from pipelines.shards import expand_inputs, list_shards, write_json_atomic
from pipelines.wheels import sha256_file
from synth.labels.__main__ import main
from synth.labels.classifier import (
    MIN_CI_PAIRS,
    classifier_fingerprint,
    normalize_text,
    spearman_interval,
    train_classifier,
)
from synth.labels.label import (
    LABELS_SCHEMA,
    balanced_quotas,
    excerpts,
    heldout_ids,
    label_documents,
    read_labels,
    sample_documents,
    split_of,
    stratified_quotas,
)
from synth.labels.rubric import CODE_NOTE, RUBRIC_VERSION, RUBRICS, rubric_messages
from synth.labels.tiers import SCORED_SCHEMA, score_and_tier
from synth.llm.backends import TransformersGenerator
from synth.settings import ClassifierSettings, LabelSettings, TierSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import CODE, DE, EN, PYTHON_CODE, ZH, paragraph_doc  # noqa: E402

FR = [
    "Le gestionnaire de paquets garde la trace de chaque fichier qui appartient à un programme installé.",
    "Lors d'une mise à jour, il compare les versions et ne télécharge que ce qui a changé.",
    "La plupart des utilisateurs n'ont jamais besoin de modifier les fichiers de configuration à la main.",
    "Si une mise à jour échoue, le journal du système explique généralement pourquoi.",
    "Il faut sauvegarder le répertoire personnel avant toute modification importante de la machine.",
    "Les mises à jour de sécurité sont publiées dès qu'une correction est disponible.",
    "La documentation existe en plusieurs langues et elle est maintenue par des bénévoles.",
    "Le noyau détecte la plupart du matériel et charge les bons pilotes au démarrage.",
]
JUNK_WORDS = {
    "en": "buy now cheap click here free win prize login home subscribe best deals $$$ !!! >>> | sale offer".split(),
    "de": "jetzt kaufen billig hier klicken gratis gewinnen anmelden startseite angebote | !!! >>> rabatt".split(),
    "zh": "点击 免费 下载 赢取 大奖 登录 首页 优惠 立即 购买 | !!! >>>".split(),
}
INFORMATIVE = {"en": EN, "de": DE, "zh": ZH, "fr": FR}


def junk_doc(lang: str, seed: int) -> str:
    rng = random.Random(seed)
    words = JUNK_WORDS[lang]
    return "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(4, 9))) for _ in range(rng.randint(3, 6)))


def fixture_docs(offset: int = 0) -> list[dict]:
    """60 curated documents: informative paragraphs in en/de/zh/fr, junk in en/de/zh, a few source files."""
    docs = []
    counts = {"en": 12, "de": 8, "zh": 8, "fr": 6}
    for lang, n in counts.items():
        for i in range(n):
            text = paragraph_doc(INFORMATIVE[lang], seed=offset + i, n=8)
            docs.append({"id": f"{lang}-info-{offset + i}", "text": text, "lang": lang, "domain": "web"})
    for lang, n in {"en": 12, "de": 5, "zh": 5}.items():
        for i in range(n):
            docs.append({"id": f"{lang}-junk-{offset + i}", "text": junk_doc(lang, offset + i), "lang": lang})
    for i in range(4):
        text = (PYTHON_CODE if i % 2 else CODE) + f"# file {offset + i}\n"
        docs.append({"id": f"code-{offset + i}", "text": text, "lang": "code", "domain": "code"})
    for doc in docs:
        doc.setdefault("domain", "web")
        doc["source"] = "fixture"
        doc["url"] = f"https://example.org/{doc['id']}"
    return docs


def write_stage(root: Path, rows: list[dict], schema: pa.Schema, shards: int = 3) -> str:
    """A finished stage folder (``_config.json``, ``data/*.parquet``, ``_SUCCESS.json``) holding ``rows``."""
    (root / "data").mkdir(parents=True)
    for k in range(shards):
        part = [{name: row.get(name) for name in schema.names} for row in rows[k::shards]]
        pq.write_table(pa.Table.from_pylist(part, schema=schema), root / "data" / f"part-{k:05d}.parquet")
    write_json_atomic(str(root / "_config.json"), {"stage": "fixture"})
    write_json_atomic(str(root / "_SUCCESS.json"), {"docs_out": len(rows)})
    return str(root)


def read_rows(stage: str, kind: str = "data") -> list[dict]:
    return [row for path in list_shards(stage, kind) for row in pq.read_table(path).to_pylist()]


@pytest.fixture(scope="module")
def docs_dir(tmp_path_factory) -> str:
    return write_stage(tmp_path_factory.mktemp("curated"), fixture_docs(), DOCUMENT_SCHEMA)


HAND_LABELS = {("web", "en"): 5, ("web", "fr"): 5, ("web", "de"): 4, ("web", "zh"): 4, ("code", "code"): 4}
JUNK_LABELS = {"en": 0, "de": 1, "zh": 1}


def hand_labels(heldout_share: float = 0.25) -> list[dict]:
    """Labels a person could give (they stand in for the teacher): informative paragraphs 4-5 and source code 4,
    junk 0-1, by language so that they are learnable."""
    rows = []
    for doc in fixture_docs(offset=100) + fixture_docs(offset=200):
        if "-junk-" in doc["id"]:
            label = JUNK_LABELS[doc["lang"]]
        else:
            label = HAND_LABELS[(doc["domain"], doc["lang"])]
        probs = [0.0] * 6
        probs[label] = 1.0
        rows.append(
            {
                **doc,
                "text_chars": len(doc["text"]),
                "score": float(label),
                "label": label,
                "probs": probs,
                "choice_mass": 1.0,
                "split": split_of(doc["id"], heldout_share),
                "model": "hand",
                "backend": "none",
                "template_version": RUBRIC_VERSION,
            }
        )
    return rows


@pytest.fixture(scope="module")
def hand_labels_dir(tmp_path_factory) -> str:
    return write_stage(tmp_path_factory.mktemp("hand-labels"), hand_labels(), LABELS_SCHEMA, shards=2)


SMALL = ClassifierSettings(bucket=20_000, dim=16, epochs=30)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, hand_labels_dir) -> tuple[str, dict]:
    out = str(tmp_path_factory.mktemp("classifier"))
    return out, train_classifier(hand_labels_dir, out, SMALL)


# ------------------------------------------------------------------------------------------------------ rubrics


@pytest.mark.parametrize("lang", ["en", "zh", "de", "fr", "es", "ja", "ru", "pt", "it"])
def test_rubric_is_written_in_the_documents_language(lang):
    assert set(RUBRICS[lang]) == {"task", "document", "answer"}
    [message] = rubric_messages("TEXT-OF-THE-DOC", lang, "web")
    content = message["content"]
    assert message["role"] == "user" and "TEXT-OF-THE-DOC" in content
    assert "0" in content and "5" in content and "The document is in" not in content
    if lang != "en":
        assert RUBRICS[lang]["task"] != RUBRICS["en"]["task"] and RUBRICS["en"]["answer"] not in content
    assert (
        content.index(RUBRICS[lang]["task"]) < content.index("TEXT-OF-THE-DOC") < content.index(RUBRICS[lang]["answer"])
    )


def test_other_languages_and_code_get_the_english_rubric_with_a_note():
    korean = rubric_messages("문서", "ko")[0]["content"]
    assert RUBRICS["en"]["task"] in korean and "The document is in Korean." in korean
    code = rubric_messages("def f(): pass", "code", "code")[0]["content"]
    assert RUBRICS["en"]["task"] in code and CODE_NOTE in code
    assert "The document is in" not in rubric_messages("x", None)[0]["content"]
    assert rubric_messages("x", "de-DE")[0]["content"].startswith(RUBRICS["de"]["task"])
    assert rubric_messages("x", "zh_CN")[0]["content"].startswith(RUBRICS["zh"]["task"])


def test_normalisation_is_shared_and_splits_scripts_without_spaces():
    assert normalize_text("Hello,\nWorld!  __label__5 x", 100) == "hello , world ! 5 x"
    assert normalize_text("软件包管理器。", 100) == "软 件 包 管 理 器 。"
    assert normalize_text("ABCDEF", 3) == "abc"


# ------------------------------------------------------------------------------------------------------- labels


def test_balanced_quotas_fill_small_languages_first():
    assert balanced_quotas({"en": 100, "de": 2, "zh": 10}, 12) == {"en": 5, "de": 2, "zh": 5}
    assert balanced_quotas({"en": 3, "de": 2}, 10) == {"en": 3, "de": 2}
    assert sum(balanced_quotas({"en": 50, "de": 40, "fr": 1}, 31).values()) == 31


def test_sample_is_seeded_deterministic_and_proportional(docs_dir):
    sample, stats = sample_documents(docs_dir, 20, seed=0)
    again, _ = sample_documents(docs_dir, 20, seed=0)
    other, _ = sample_documents(docs_dir, 20, seed=1)
    assert [d["id"] for d in sample] == [d["id"] for d in again]
    assert {d["id"] for d in sample} != {d["id"] for d in other}
    assert stats["documents_seen"] == 60
    # 20 of 60 documents: a third of each language (code 4, de 13, en 24, fr 6, zh 13), rounded
    assert stats["sample_by_lang"] == {"code": 2, "de": 4, "en": 8, "fr": 2, "zh": 4}
    assert sorted({d["lang"] for d in sample}) == ["code", "de", "en", "fr", "zh"]
    cut, _ = sample_documents(docs_dir, 5, seed=0, max_doc_chars=30)
    assert all(len(d["text"]) <= 30 < d["text_chars"] for d in cut if d["lang"] != "code")


def test_stratified_quotas_are_proportional_with_a_floor_and_caps():
    sizes = {("en", "web"): 1000, ("en", "forum"): 10, ("de", "web"): 500, ("code", "code"): 2}
    caps = {stratum: min(n, 30) for stratum, n in sizes.items()}  # the sampler keeps at most 30 per stratum
    # proportional to size (en 1010 : de 500 : code 2), every stratum one first
    assert stratified_quotas(sizes, caps, 30) == {
        ("en", "web"): 19,
        ("en", "forum"): 1,
        ("de", "web"): 9,
        ("code", "code"): 1,
    }
    # infinite temperature: equal shares per language, then per domain, as far as the strata hold documents
    flat = stratified_quotas(sizes, caps, 30, math.inf)
    assert flat == {("en", "web"): 7, ("en", "forum"): 7, ("de", "web"): 14, ("code", "code"): 2}
    assert stratified_quotas(sizes, caps, 1000) == caps  # everything there is, never more than a stratum holds


def test_sample_is_stratified_by_language_and_domain(tmp_path):
    # 80 English web pages and 2 English forum posts, 80 German web pages
    rows = [{"id": f"web-{i}", "text": paragraph_doc(EN, i), "lang": "en", "domain": "web"} for i in range(80)]
    rows += [{"id": f"forum-{i}", "text": paragraph_doc(EN, 90 + i), "lang": "en", "domain": "forum"} for i in range(2)]
    rows += [{"id": f"de-{i}", "text": paragraph_doc(DE, i), "lang": "de", "domain": "web"} for i in range(80)]
    stage = write_stage(tmp_path / "docs", [{**r, "source": "t"} for r in rows], DOCUMENT_SCHEMA)
    sample, stats = sample_documents(stage, 16, seed=0)
    # proportional, but the forum stratum (16 x 2 / 162 = 0.2 of a label) still gets one
    assert stats["sample_by_stratum"] == {"de/web": 7, "en/forum": 1, "en/web": 8}
    assert stats["sample_by_lang"] == {"de": 7, "en": 9} and stats["sample_by_domain"] == {"forum": 1, "web": 15}
    assert sum(d["domain"] == "forum" for d in sample) == 1 and len({d["id"] for d in sample}) == 16
    assert all(d["text"] == next(r["text"] for r in rows if r["id"] == d["id"]) for d in sample)  # whole: no cut
    _, flat = sample_documents(stage, 16, seed=0, temperature=math.inf)
    assert flat["sample_by_stratum"] == {"de/web": 8, "en/forum": 2, "en/web": 6}


def test_excerpts_cost_the_same_number_of_tokens_in_every_script():
    from pipelines.tokenizer import count_tokens

    docs = [paragraph_doc(EN, 1, n=12), paragraph_doc(ZH, 1, n=12), paragraph_doc(DE, 1, n=12), PYTHON_CODE * 3]
    # cut to 400 characters, as labelling did before, the same documents cost very different numbers of tokens
    by_chars = count_tokens([d[:400] for d in docs])
    assert max(by_chars) > 1.5 * min(by_chars)
    cut = excerpts(docs, 48)
    assert count_tokens(cut) == [48, 48, 48, 48]
    assert all(doc.startswith(part) and len(part) < len(doc) for doc, part in zip(docs, cut))
    assert excerpts(["short text"], 48) == ["short text"]
    assert excerpts([paragraph_doc(EN, 1)], 48, max_chars=30) == [paragraph_doc(EN, 1)[:30]]


@pytest.fixture(scope="module")
def tiny_teacher(tiny_qwen_dir) -> TransformersGenerator:
    return TransformersGenerator(tiny_qwen_dir, batch_size=8)


TINY_LABELS = LabelSettings(sample_size=30, excerpt_tokens=64, chunk_size=8, heldout_share=0.3, min_choice_mass=0.0)


@pytest.fixture(scope="module")
def tiny_labels(tmp_path_factory, tiny_teacher, docs_dir) -> tuple[str, dict]:
    out = str(tmp_path_factory.mktemp("labels") / "labels")
    return out, label_documents(tiny_teacher, docs_dir, out, TINY_LABELS)


def test_label_stage_runs_end_to_end_with_the_tiny_model(tiny_labels, tiny_teacher):
    from pipelines.tokenizer import count_tokens

    out, summary = tiny_labels
    assert summary["items"] == summary["samples"] == summary["accepted"] == 30
    assert summary["teacher_requests"] == 30 and summary["labels_per_minute"] > 0
    assert summary["excerpt_tokens"] == 64 and summary["domains"] == {"code": 2, "web": 28}
    assert summary["rejected"] == {} and summary["shards"] == 4
    assert summary["sample_by_lang"] == {"code": 2, "de": 7, "en": 12, "fr": 3, "zh": 6}
    assert sum(summary["labels"].values()) == 30 and sum(summary["splits"].values()) == 30
    assert pq.read_schema(list_shards(out)[0]).equals(LABELS_SCHEMA)
    rows = read_labels(out)
    assert len(rows) == len({r["id"] for r in rows}) == 30
    for row in rows:
        assert len(row["probs"]) == 6 and sum(row["probs"]) == pytest.approx(1.0, abs=1e-4)
        assert row["score"] == pytest.approx(sum(k * p for k, p in enumerate(row["probs"])), abs=1e-4)
        assert row["label"] == max(range(6), key=lambda k: row["probs"][k])
        assert 0.0 <= row["score"] <= 5.0 and 0.0 < row["choice_mass"] < 1.0
        assert row["model"] == tiny_teacher.model_id and row["backend"] == "transformers"
        assert row["template_version"] == RUBRIC_VERSION
    tokens = count_tokens([r["text"] for r in rows])
    assert max(tokens) == 64 and all(n == 64 for r, n in zip(rows, tokens) if r["text_chars"] > 8 * 64)
    held = {r["id"] for r in rows if r["split"] == "heldout"}
    assert held == heldout_ids([r["id"] for r in rows], 0.3) and len(held) == 9  # exactly 30% of 30
    assert summary["splits"] == {s: sum(r["split"] == s for r in rows) for s in ("train", "heldout")}


def test_label_stage_resumes_and_is_deterministic(tiny_labels, tiny_teacher, docs_dir, tmp_path):
    out, first = tiny_labels
    config = TINY_LABELS
    before = sorted(read_labels(out), key=lambda r: r["id"])
    again = label_documents(tiny_teacher, docs_dir, out, config)
    assert again["resumed"] and again["chunks_reused"] == again["shards"] == 4
    assert again["teacher_requests"] == 0 and again["labels_per_minute"] is None  # nothing asked
    # the stage's summary says what it produced, never how fast this run went: a resumed run writes the same
    on_disk = json.loads(Path(out, "_SUCCESS.json").read_text())
    assert "labels_per_minute" not in on_disk and "teacher_seconds" not in on_disk
    assert on_disk["prompt_tokens"] == first["prompt_tokens"] > 30 * 64
    assert sorted(read_labels(out), key=lambda r: r["id"]) == before
    # a fresh run elsewhere rates the same sample the same way, with the same splits
    fresh = label_documents(tiny_teacher, docs_dir, str(tmp_path / "fresh"), config)
    assert not fresh["resumed"] and fresh["chunks_reused"] == 0
    rows = sorted(read_labels(str(tmp_path / "fresh")), key=lambda r: r["id"])
    assert [(r["id"], r["split"], r["label"]) for r in rows] == [(r["id"], r["split"], r["label"]) for r in before]
    assert [r["score"] for r in rows] == pytest.approx([r["score"] for r in before], abs=1e-5)


def test_labelling_sends_the_teacher_batches(tiny_teacher, docs_dir, tmp_path, monkeypatch):
    # a chunk of 16 documents is one generate() call, scored as two forward passes of 8 (the backend's batch)
    rows_per_pass = []
    forward = tiny_teacher.model.forward

    def counting_forward(*args, **kwargs):
        rows_per_pass.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    monkeypatch.setattr(tiny_teacher.model, "forward", counting_forward)
    config = LabelSettings(sample_size=16, excerpt_tokens=32, chunk_size=16, min_choice_mass=0.0)
    summary = label_documents(tiny_teacher, docs_dir, str(tmp_path / "labels"), config)
    assert summary["accepted"] == 16 and rows_per_pass == [8, 8]


def test_heldout_share_is_exact_and_ranked_by_the_id_hash():
    ids = [f"x-{i}" for i in range(80)]
    by_threshold = {i for i in ids if split_of(i, 0.3) == "heldout"}
    assert len(by_threshold) == 16  # a threshold on the hash holds out a binomial number: 16 of these 80, not 24
    held = heldout_ids(ids, 0.3)
    assert len(held) == 24 and by_threshold < held  # the 24 smallest hashes
    assert heldout_ids(ids[:40] + ids, 0.3) == held and heldout_ids(ids, 0.0) == set()


def test_ratings_off_the_digits_are_rejected(tmp_path, tiny_teacher, docs_dir):
    # the random tiny model puts ~1e-5 of its probability on the six digits: far under a real teacher's 0.5
    out = str(tmp_path / "labels")
    summary = label_documents(tiny_teacher, docs_dir, out, LabelSettings(sample_size=6, min_choice_mass=0.5))
    assert summary["accepted"] == 0 and summary["rejected"] == {"off_format": 6}
    excluded = read_rows(out, "excluded")
    assert len(excluded) == 6 and {r["reason"] for r in excluded} == {"off_format"}
    assert all(json.loads(r["detail"])["choice_mass"] < 0.5 for r in excluded)


def test_classifier_trains_on_the_teacher_labels(tiny_labels, tmp_path):
    out, _ = tiny_labels
    metrics = train_classifier(out, str(tmp_path / "clf"), SMALL)
    heldout = sum(r["split"] == "heldout" for r in read_labels(out))
    assert metrics["counts"]["heldout"] == metrics["heldout"]["n"] == heldout
    assert metrics["counts"]["train"] == 30 - heldout and metrics["teacher"] is not None
    assert metrics["model_sha256"] == sha256_file(str(tmp_path / "clf" / "model.bin"))


# --------------------------------------------------------------------------------------------------- classifier


def test_classifier_learns_hand_labels(classifier, hand_labels_dir, tmp_path):
    out, metrics = classifier
    labels = read_labels(hand_labels_dir)
    heldout = [r for r in labels if r["split"] == "heldout"]
    assert metrics["counts"]["labels"] == len(labels) == 120
    assert metrics["counts"]["train"] + metrics["counts"]["heldout"] == 120 and metrics["heldout"]["n"] == len(heldout)
    agree = metrics["heldout"]
    assert agree["exact_accuracy"] >= 0.8 and agree["within1_accuracy"] >= 0.9
    assert agree["spearman"] >= 0.7 and agree["pearson"] >= 0.8
    for name, threshold in (("strict", 3.0), ("relaxed", 2.0)):
        binary = agree["binary"][name]
        assert binary["threshold"] == threshold and binary["accuracy"] >= 0.9
        assert binary["tp"] + binary["fp"] + binary["fn"] + binary["tn"] == len(heldout)
        assert binary["teacher_keeps"] == sum(r["score"] >= threshold for r in heldout)
    ci = agree["spearman_ci"]
    assert ci["n"] == len(heldout) and ci["rho"] == agree["spearman"] and ci["confidence"] == 0.95
    assert 0 < ci["low"] < ci["rho"] < ci["high"] <= 1 and ci["problem"] is None
    # score_bins (the default): classes are quantile bins of the teacher's score (tied hand scores leave some bins
    # empty), each standing for its training rows' mean score, so predicted scores stay on the teacher's scale
    train = [r for r in labels if r["split"] == "train"]
    edges = metrics["score_bin_edges"]
    assert len(edges) == SMALL.bins - 1 and edges == sorted(edges)
    by_bin: dict[int, list[float]] = {}
    for r in train:
        by_bin.setdefault(sum(r["score"] >= e for e in edges), []).append(r["score"])
    assert metrics["classes"] == sorted(by_bin)
    assert metrics["class_values"] == {str(k): pytest.approx(sum(v) / len(v), abs=1e-5) for k, v in by_bin.items()}
    assert classifier_fingerprint(out) == metrics["model_sha256"]
    # single-threaded training with a seed is reproducible bit for bit
    again = train_classifier(hand_labels_dir, str(tmp_path / "again"), SMALL)
    assert again["model_sha256"] == metrics["model_sha256"]
    # target=label: one class per digit the teacher gave, scores are the digits
    digits = train_classifier(hand_labels_dir, str(tmp_path / "digits"), SMALL.model_copy(update={"target": "label"}))
    assert digits["classes"] == [0, 1, 4, 5] and digits["class_values"] == {} and digits["score_bin_edges"] == []
    assert digits["heldout"]["exact_accuracy"] >= 0.8 and digits["heldout"]["spearman"] >= 0.7


def test_spearman_interval_is_scipys_rho_with_a_calibrated_interval():
    from scipy import stats

    rng = random.Random(0)
    teacher = [rng.choice([3.0, 4.0, 4.0, 4.0, 2.5]) for _ in range(40)]  # ties, as teacher labels have
    predicted = [t + rng.gauss(0, 1) for t in teacher]
    ci = spearman_interval(teacher, predicted)
    assert ci["rho"] == pytest.approx(stats.spearmanr(teacher, predicted).statistic, abs=1e-6)
    assert ci["low"] < ci["rho"] < ci["high"] and ci["problem"] is None
    assert spearman_interval(teacher, predicted, 0.99)["low"] < ci["low"]  # more confidence, wider
    # independent scores: the 95% interval must hold zero in ~95% of samples (a miscomputed width fails this)
    held = 0
    for _ in range(400):
        x, y = [rng.random() for _ in range(30)], [rng.random() for _ in range(30)]
        interval = spearman_interval(x, y)
        held += interval["low"] <= 0 <= interval["high"]
    assert 0.92 <= held / 400 <= 0.98
    # too few pairs, or a constant side: no interval, and the reason
    few = spearman_interval(teacher[: MIN_CI_PAIRS - 1], predicted[: MIN_CI_PAIRS - 1])
    assert few["low"] is None and f"at least {MIN_CI_PAIRS}" in few["problem"]
    flat = spearman_interval([4.0] * 20, predicted[:20])
    assert flat["low"] is None and "teacher's scores are all equal" in flat["problem"]


def test_a_classifier_cut_short_is_refused(classifier, tmp_path):
    out, _ = classifier
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.bin").write_bytes(Path(out, "model.bin").read_bytes()[:-10])
    (broken / "metrics.json").write_text(Path(out, "metrics.json").read_text())
    with pytest.raises(ValueError, match="does not match"):
        classifier_fingerprint(str(broken))
    with pytest.raises(ValueError, match="no trained classifier"):
        classifier_fingerprint(str(tmp_path))


# ------------------------------------------------------------------------------------------------ score + tiers


def test_score_and_tier(classifier, docs_dir, hand_labels_dir, tmp_path):
    clf_dir, metrics = classifier
    scored_dir, tiers_dir = str(tmp_path / "scored"), str(tmp_path / "tiers")
    summary = score_and_tier(docs_dir, clf_dir, scored_dir, tiers_dir, TierSettings(), workers=1)
    scored = summary["scored"]
    assert scored["docs_in"] == scored["docs_out"] == 60 and not scored["resumed"]
    assert scored["classifier_sha256"] == metrics["model_sha256"]
    assert sum(scored["score_histogram"]) == 60
    assert {k: sum(v) for k, v in scored["score_histogram_by_lang"].items()} == scored["languages"]
    rows = read_rows(scored_dir)
    assert pq.read_schema(list_shards(scored_dir)[0]).equals(SCORED_SCHEMA)
    assert len(rows) == 60 and all(0.0 <= r["quality_score"] <= 5.0 for r in rows)
    score = {r["id"]: r["quality_score"] for r in rows}

    tiers = {name: {r["id"] for r in read_rows(f"{tiers_dir}/{name}")} for name in ("strict", "relaxed")}
    assert tiers["strict"] <= tiers["relaxed"]
    assert tiers["strict"] == {i for i, s in score.items() if s >= 3.0}
    assert tiers["relaxed"] == {i for i, s in score.items() if s >= 2.0}
    info = {i for i in score if "-info-" in i}
    junk = {i for i in score if "-junk-" in i}
    assert len(info & tiers["strict"]) >= 0.8 * len(info) and not junk & tiers["relaxed"]
    for name, threshold in (("strict", 3.0), ("relaxed", 2.0)):
        tier = summary["tiers"][name]
        kept = [r for r in rows if r["id"] in tiers[name]]
        assert tier["threshold"] == threshold and tier["docs_in"] == 60
        assert tier["docs_out"] == len(tiers[name]) and tier["docs_out"] + tier["dropped"]["below_threshold"] == 60
        assert tier["bytes_out"] == sum(len(r["text"].encode()) for r in kept)
        assert tier["share_docs"] == pytest.approx(len(kept) / 60, abs=1e-5)
        assert tier["share_bytes"] == pytest.approx(tier["bytes_out"] / scored["bytes_out"], abs=1e-5)
        assert sum(tier["languages"].values()) == tier["docs_out"]
        on_disk = json.loads(Path(tiers_dir, name, "_SUCCESS.json").read_text())
        assert on_disk["docs_out"] == tier["docs_out"] and on_disk["share_bytes"] == tier["share_bytes"]
        # a tier is a plain curated stage folder: what pipelines.mixing's index reads
        shards = expand_inputs(f"{tiers_dir}/{name}")
        assert shards and all(pq.read_schema(p).equals(DOCUMENT_SCHEMA) for p in shards)

    rerun = score_and_tier(docs_dir, clf_dir, scored_dir, tiers_dir, TierSettings(), workers=1)
    assert rerun["scored"]["resumed"] and rerun["scored"]["beam_counters"]["quality_score/shards_resumed"] == 3
    assert all(t["resumed"] for t in rerun["tiers"].values())
    assert rerun["tiers"]["strict"]["beam_counters"]["quality_tier/shards_resumed"] == 3
    assert {r["id"]: r["quality_score"] for r in read_rows(scored_dir)} == score

    # a new classifier (another seed: another model.bin) re-scores everything and re-tiers
    new_dir = str(tmp_path / "clf2")
    new = train_classifier(hand_labels_dir, new_dir, ClassifierSettings(bucket=20_000, dim=16, epochs=30, seed=7))
    assert new["model_sha256"] != metrics["model_sha256"]
    fresh = score_and_tier(
        docs_dir, new_dir, scored_dir, tiers_dir, TierSettings(strict_threshold=3.5, relaxed_threshold=2.5), workers=1
    )
    assert not fresh["scored"]["resumed"] and fresh["scored"]["classifier_sha256"] == new["model_sha256"]
    assert "quality_score/shards_resumed" not in fresh["scored"]["beam_counters"]
    assert not any(t["resumed"] for t in fresh["tiers"].values())
    assert fresh["tiers"]["strict"]["threshold"] == 3.5
    new_scores = {r["id"]: r["quality_score"] for r in read_rows(scored_dir)}
    assert new_scores.keys() == score.keys() and new_scores != score


def test_bad_tier_thresholds_are_refused():
    with pytest.raises(ValueError, match="must not exceed"):
        TierSettings(strict_threshold=2.0, relaxed_threshold=3.0)
    with pytest.raises(ValueError, match=r"strict_threshold=6: must be <= 5"):
        TierSettings(strict_threshold=6.0)


def test_cli(hand_labels_dir, tmp_path, capsys):
    out = tmp_path / "clf"
    assert main(["train", "--labels", hand_labels_dir, "--out", str(out), "--dim", "8", "--epochs", "5"]) == 0
    assert json.loads(capsys.readouterr().out)["model_sha256"] == sha256_file(str(out / "model.bin"))
    missing = ["score", "--docs", hand_labels_dir, "--classifier", str(tmp_path / "none")]
    assert main([*missing, "--scored", str(tmp_path / "s"), "--tiers", str(tmp_path / "t")]) == 1
    assert "no trained classifier" in capsys.readouterr().err
    assert main(["train", "--labels", str(tmp_path / "none"), "--out", str(out)]) == 1
