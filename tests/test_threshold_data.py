"""Thresholds are data (pipelines/thresholds/*.toml), every value with its source, and a stage's identity covers
them: edit one value in a copy of the tables and rerun the chain, and the stage that reads it is redone (the log
names the key), the stages above it are resumed, the stages below redo the shards whose input changed."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tomllib
from pathlib import Path

import pytest
from conftest import DE, EN, ZH, paragraph_doc

from pipelines import dedup, ingest, langid, quality
from pipelines.lang_config import (
    DEFAULT_SECTION,
    QWEN2_LANGUAGES,
    TABLE_KEYS,
    THRESHOLDS_DIR,
    THRESHOLDS_ENV,
    config_for,
    load_threshold_table,
)
from pipelines.langid import LanguageIdentifier, lid176_path
from pipelines.quality import QualityFilter
from pipelines.quality_profiles import PROFILE_DIR
from pipelines.shards import iter_stage_rows

# --- the data files ----------------------------------------------------------------------------------------------


def test_every_threshold_value_in_the_data_files_has_a_source():
    tables = sorted(THRESHOLDS_DIR.glob("*.toml"))
    assert [p.stem for p in tables] == sorted(TABLE_KEYS)
    for path in tables:
        raw = tomllib.loads(path.read_text())
        assert DEFAULT_SECTION in raw and set(QWEN2_LANGUAGES) <= set(raw), path
        for lang, section in raw.items():
            assert set(section) == set(TABLE_KEYS[path.stem]), (path, lang)
            for key, entry in section.items():
                assert set(entry) == {"value", "source"}, (path, lang, key)
                assert isinstance(entry["source"], str) and len(entry["source"].strip()) > 10, (path, lang, key)
    # the profiles' rules (the non-per-language thresholds) carry theirs too
    for path in sorted(PROFILE_DIR.glob("*.toml")):
        for rule, entry in tomllib.loads(path.read_text()).get("rules", {}).items():
            assert isinstance(entry, dict) and entry.get("source", "").strip(), (path, rule)


def test_the_tables_hold_fineweb2_values():
    assert config_for("de").language_score == pytest.approx(0.821)  # FineWeb-2 deu_Latn
    assert config_for("de").min_avg_word_length == 0.0  # FineWeb-2's own 0: the check is off
    assert config_for("ja").top_n_grams == ((2, 0.239), (3, 0.196), (4, 0.172))
    assert config_for("lo").stopwords[0] == "\u200b"
    assert config_for("en") == config_for("xx")  # English and unlisted languages: FineWeb / datatrove defaults
    assert config_for("en").language_score == 0.65


def _copy_tables(tmp_path: Path) -> Path:
    folder = tmp_path / "thresholds"
    shutil.copytree(THRESHOLDS_DIR, folder)
    return folder


def _edit(folder: Path, table: str, lang: str, key: str, value) -> None:
    """Replace one value in a copied table, keeping its source (a plain text edit, as a person makes it)."""
    path = folder / f"{table}.toml"
    lines = path.read_text().splitlines(keepends=True)
    section, done = None, False
    for i, line in enumerate(lines):
        if line.startswith("["):
            section = line.split("]")[0][1:]
        elif section == lang and line.startswith(f"{key} = "):
            entry = tomllib.loads(line)[key]
            lines[i] = f"{key} = {{ value = {json.dumps(value)}, source = {json.dumps(entry['source'])} }}\n"
            done = True
    assert done, (table, lang, key)
    path.write_text("".join(lines))


@pytest.mark.parametrize(
    ("table", "key", "line", "message"),
    [
        ("langid", "language_score", "language_score = { value = 0.5 }\n", "[de] language_score has no source"),
        ("langid", "language_score", 'language_score = { value = 1.5, source = "x" }\n', "must be a number in [0, 1]"),
        ("web_quality", "top_n_grams", 'top_n_grams = { value = [[2, "x"]], source = "x" }\n', "[n, share] pairs"),
        ("web_quality", "top_n_grams", "", "[de] lacks top_n_grams"),
    ],
)
def test_a_bad_table_is_refused_with_the_place_and_the_fix(tmp_path, table, key, line, message):
    folder = _copy_tables(tmp_path)
    path = folder / f"{table}.toml"
    text, section = [], None
    for old in path.read_text().splitlines(keepends=True):
        if old.startswith("["):
            section = old.split("]")[0][1:]
        text.append(line if section == "de" and old.startswith(f"{key} = ") else old)
    path.write_text("".join(text))
    with pytest.raises(ValueError, match=re.escape(message)):
        load_threshold_table(table, folder)
    assert load_threshold_table(table).section("de")[key]  # the packaged table is untouched


def test_a_stage_config_holds_the_values_not_the_path(tmp_path):
    """Copies of the tables (and of the model file) elsewhere give the same stage identity; an edit does not."""
    folder = _copy_tables(tmp_path)
    model_copy = tmp_path / "model" / "lid.176.ftz"
    model_copy.parent.mkdir()
    shutil.copy(lid176_path(), model_copy)
    packaged = LanguageIdentifier().config()
    assert LanguageIdentifier(thresholds_dir=str(folder), model_path=str(model_copy)).config() == packaged
    assert packaged["model"]["file"] == "lid.176.ftz" and len(packaged["model"]["sha256"]) == 64
    assert QualityFilter(thresholds_dir=str(folder)).config() == QualityFilter().config()

    _edit(folder, "langid", "de", "language_score", 0.5)
    _edit(folder, "web_quality", "de", "dup_line_frac", 0.25)
    edited = LanguageIdentifier(thresholds_dir=str(folder))
    assert edited.threshold("de") == 0.5 and edited.config() != packaged
    assert QualityFilter(thresholds_dir=str(folder)).config()["thresholds"]["de"]["dup_line_frac"] == 0.25
    # an explicit override wins over the table, and is what the config records
    assert LanguageIdentifier(thresholds={"de": 0.7}, thresholds_dir=str(folder)).config()["thresholds"]["de"] == {
        "language_score": 0.7
    }


# --- the chain: ingest -> langid -> quality (-> dedup), rerun after an edit ---------------------------------------


@pytest.fixture
def corpus(tmp_path) -> Path:
    """Two input files (two shards per stage): English, German and Chinese prose."""
    folder = tmp_path / "in"
    folder.mkdir()
    docs = {
        "a.jsonl": [paragraph_doc(EN, s) for s in range(3)] + [paragraph_doc(DE, 0, n=6, per_line=1)],
        "b.jsonl": [paragraph_doc(DE, s, n=6, per_line=1) for s in (1, 2)] + [paragraph_doc(ZH, s) for s in (0, 1)],
    }
    for name, texts in docs.items():
        rows = [json.dumps({"id": f"{name}-{i}", "text": t}, ensure_ascii=False) for i, t in enumerate(texts)]
        (folder / name).write_text("\n".join(rows) + "\n")
    return folder


def _run_chain(src: Path, out: Path, with_dedup: bool = False, **stage_args) -> dict[str, dict]:
    summaries = {"ingest": ingest.run(str(src), str(out / "ingested"), workers=1)}
    summaries["langid"] = langid.run(str(out / "ingested"), str(out / "langid"), workers=1, **stage_args)
    summaries["quality"] = quality.run(str(out / "langid"), str(out / "quality"), workers=1, **stage_args)
    if with_dedup:
        summaries["dedup"] = dedup.run(str(out / "quality"), str(out / "dedup"), workers=1)
    return summaries


def _shard_times(stage_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted((stage_dir / "data").glob("*.parquet"))}


def _processed(summary: dict) -> int:
    return summary["beam_counters"].get(f"{summary['stage']}/shards_processed", 0)


def _langs(stage_dir: Path) -> list[str]:
    return sorted(row["lang"] for row in iter_stage_rows(str(stage_dir), ["lang"]))


def _changed_key_logs(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if "the config changed" in r.getMessage())


def test_editing_a_quality_threshold_redoes_quality_and_what_follows(tmp_path, corpus, caplog, monkeypatch):
    tables = _copy_tables(tmp_path)
    monkeypatch.setenv(THRESHOLDS_ENV, str(tables))  # the override a deployment would set
    out = tmp_path / "out"
    first = _run_chain(corpus, out, with_dedup=True)
    assert _langs(out / "quality") == ["de"] * 3 + ["en"] * 3 + ["zh"] * 2
    times = {stage: _shard_times(out / stage) for stage in ("ingested", "langid", "quality")}

    # Nothing changed: every stage resumes every shard (the identity is stable from run to run).
    again = _run_chain(corpus, out, with_dedup=True)
    assert all(s["resumed"] and _processed(s) == 0 for s in again.values()), again
    assert {stage: _shard_times(out / stage) for stage in times} == times

    # German words may be at most 2 characters long on average: every German page fails Gopher quality now.
    _edit(tables, "web_quality", "de", "max_avg_word_length", 2.0)
    caplog.clear()
    caplog.set_level(logging.WARNING, logger="pipelines.shards")
    edited = _run_chain(corpus, out, with_dedup=True)

    for stage, folder in (("ingest", "ingested"), ("langid", "langid")):
        assert edited[stage]["resumed"] and _processed(edited[stage]) == 0, stage
        assert _shard_times(out / folder) == times[folder], stage
    assert not edited["quality"]["resumed"] and _processed(edited["quality"]) == 2
    assert all(times["quality"][name] != t for name, t in _shard_times(out / "quality").items())
    assert edited["quality"]["dropped"] == {"gopher_quality/gopher_above_avg_threshold": 3}
    assert _langs(out / "quality") == ["en"] * 3 + ["zh"] * 2
    logged = _changed_key_logs(caplog)
    assert "quality: the config changed (processor.thresholds.de.max_avg_word_length)" in logged.replace(
        f"{out / 'quality'}: ", "quality: "
    )
    # dedup's identity includes its inputs' fingerprints: the rewritten quality shards start it afresh
    assert not edited["dedup"]["resumed"] and edited["dedup"]["docs_in"] == 5
    assert first["dedup"]["docs_in"] == 8


def test_editing_a_language_id_threshold_redoes_langid_and_what_follows(tmp_path, corpus, caplog, monkeypatch):
    monkeypatch.delenv(THRESHOLDS_ENV, raising=False)
    tables = _copy_tables(tmp_path)
    out = tmp_path / "out"
    _run_chain(corpus, out, thresholds_dir=str(tables))
    assert _langs(out / "langid").count("de") == 3
    times = {stage: _shard_times(out / stage) for stage in ("ingested", "langid", "quality")}

    # lid.176 scores these German pages 0.991-0.996: a minimum of 0.999 drops them.
    _edit(tables, "langid", "de", "language_score", 0.999)
    caplog.set_level(logging.WARNING, logger="pipelines.shards")
    edited = _run_chain(corpus, out, thresholds_dir=str(tables))

    assert edited["ingest"]["resumed"] and _processed(edited["ingest"]) == 0
    assert _shard_times(out / "ingested") == times["ingested"]
    assert not edited["langid"]["resumed"] and _processed(edited["langid"]) == 2
    assert edited["langid"]["dropped"] == {"lang_below_threshold": 3}
    assert "processor.thresholds.de.language_score" in _changed_key_logs(caplog)
    # quality's own config did not change, so its folder is resumed, but each shard's input was rewritten:
    # both are redone (committed_stats compares the input's size and mtime), and the German pages are gone
    assert edited["quality"]["resumed"] and _processed(edited["quality"]) == 2
    assert all(times["quality"][name] != t for name, t in _shard_times(out / "quality").items())
    assert _langs(out / "quality") == ["en"] * 3 + ["zh"] * 2
    assert not (tables / "langid.toml").samefile(THRESHOLDS_DIR / "langid.toml")
    assert os.environ.get(THRESHOLDS_ENV) is None
