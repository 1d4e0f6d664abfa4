"""Seed prompts (synth.seeds): the real chatterbot-corpus wheel from PyPI, parsed from the zip into the cache.

The module fixture runs the real setup (``pip download --no-deps chatterbot-corpus==1.3.3`` into a temporary
cache), as ``python -m synth.seeds --setup`` does.

    .venv/bin/python -m pytest tests/test_synth_seeds.py -q
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections import Counter
from pathlib import Path

import pytest

import synth.seeds as seeds_mod
from synth.seeds import (
    MANIFEST_FILE,
    SEEDS_FILE,
    SeedsUnavailable,
    cache_root,
    check_wheel,
    download_wheel,
    load_seeds,
    main,
    parse_wheel,
    sample_seeds,
    seed_messages,
    seed_prompt,
    setup_seeds,
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seeds-cache")
    setup_seeds(root)
    return root


@pytest.fixture(scope="module")
def corpus(cache) -> list[dict]:
    return load_seeds(cache_dir=cache)


def test_setup_parses_every_language_folder_into_iso_codes(cache, corpus):
    manifest = json.loads((cache / "chatterbot-corpus-1.3.3" / MANIFEST_FILE).read_text())
    assert manifest["package"] == "chatterbot-corpus==1.3.3"
    langs = Counter(s["lang"] for s in corpus)
    assert manifest["languages"] == dict(sorted(langs.items()))
    assert manifest["seeds"] == len(corpus) > 5000
    # The Qwen2 languages the corpus has, plus some it adds; codes are ISO 639-1.
    for lang in ("en", "zh", "de", "fr", "es", "pt", "it", "ja", "ko", "ru", "id", "tr", "uk", "nl", "fa", "bn"):
        assert langs[lang] > 0, lang
    assert all(len(lang) == 2 for lang in langs)
    # Both Chinese folders map to zh; the folder name is kept.
    assert {s["corpus_language"] for s in corpus if s["lang"] == "zh"} == {"chinese", "traditionalchinese"}
    # Hinglish has no ISO 639-1 code: skipped with its reason, not mislabelled.
    assert "no ISO 639-1 code" in manifest["skipped_files"]["hinglish/greetings.yml"]
    # Conversations broken by YAML indentation (plain strings) are counted, not kept.
    assert manifest["skipped_conversations"]["not_a_list_of_turns"] > 0
    assert len({s["id"] for s in corpus}) == len(corpus)
    assert all(s["turns"] and all(isinstance(t, str) for t in s["turns"]) and s["turns"][0] for s in corpus)


def test_known_conversations_parse(corpus):
    by_source = {s["source"]: s for s in corpus}
    hello = by_source["chatterbot-corpus==1.3.3:english/greetings.yml#0"]
    assert (hello["lang"], hello["category"], hello["turns"]) == ("en", "greetings", ["Hello", "Hi"])
    drink = by_source["chatterbot-corpus==1.3.3:chinese/food.yml#0"]
    assert (drink["lang"], drink["category"], drink["turns"][0]) == ("zh", "food", "你喝酒吗")
    assert seed_prompt(drink) == "你喝酒吗"
    assert seed_messages(drink) == [{"role": "user", "content": "你喝酒吗"}]
    assert any(s["lang"] == "de" and s["category"] == "food" for s in corpus)


def test_setup_is_idempotent_and_honours_qwen2_cache(cache, monkeypatch, tmp_path):
    def no_download(*args, **kwargs):
        raise AssertionError("setup must not download again")

    monkeypatch.setattr(seeds_mod, "pip_download", no_download)
    before = (cache / "chatterbot-corpus-1.3.3" / SEEDS_FILE).stat().st_mtime_ns
    assert setup_seeds(cache) == cache / "chatterbot-corpus-1.3.3"
    assert (cache / "chatterbot-corpus-1.3.3" / SEEDS_FILE).stat().st_mtime_ns == before
    monkeypatch.setenv("QWEN2_CACHE", str(tmp_path / "root"))
    assert cache_root() == tmp_path / "root" / "seeds"


def test_a_wheel_with_the_wrong_sha256_is_refused(tmp_path):
    with pytest.raises(SeedsUnavailable, match="refusing"):
        download_wheel(tmp_path, expected_sha256="0" * 64)  # the real wheel, checked against another digest
    wheel = tmp_path / "chatterbot_corpus-1.3.3-py2.py3-none-any.whl"
    check_wheel(wheel)  # it is the genuine wheel
    tampered = tmp_path / "tampered.whl"
    tampered.write_bytes(wheel.read_bytes() + b"x")
    with pytest.raises(SeedsUnavailable, match="refusing"):
        setup_seeds(tmp_path / "cache", wheel=tampered)
    assert not (tmp_path / "cache" / "chatterbot-corpus-1.3.3" / MANIFEST_FILE).exists()


def test_bad_yaml_files_are_skipped_with_a_logged_reason(tmp_path, caplog):
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("chatterbot_corpus/data/english/good.yml", "categories:\n- food\nconversations:\n- - Hi\n  - Yo\n")
        zf.writestr("chatterbot_corpus/data/english/broken.yml", "categories: [food\nconversations: : :\n")
        zf.writestr("chatterbot_corpus/data/german/layout.yml", "- just\n- a list\n")
        zf.writestr("chatterbot_corpus/data/klingon/x.yml", "categories: [x]\nconversations:\n- - a\n")
        zf.writestr(
            "chatterbot_corpus/data/french/mixed.yml",
            "categories: [misc]\nconversations:\n- - Bonjour\n  - Salut\n- pas une liste\n- - yes\n  - no\n- - 42\n",
        )
    with caplog.at_level(logging.WARNING, logger="synth.seeds"):
        records, manifest = parse_wheel(wheel)
    assert sorted(manifest["skipped_files"]) == ["english/broken.yml", "german/layout.yml", "klingon/x.yml"]
    assert "not valid YAML" in manifest["skipped_files"]["english/broken.yml"]
    assert "conversations" in manifest["skipped_files"]["german/layout.yml"]
    assert "broken.yml" in caplog.text and "klingon" in caplog.text
    assert [(r["lang"], r["turns"]) for r in records] == [
        ("en", ["Hi", "Yo"]),
        ("fr", ["Bonjour", "Salut"]),
        ("fr", ["42"]),  # a number is a turn as written; YAML booleans (yes/no) are not text
    ]
    assert manifest["skipped_conversations"] == {"non_text_turn": 1, "not_a_list_of_turns": 1}


def test_user_jsonl_seeds(tmp_path, caplog):
    path = tmp_path / "seeds.jsonl"
    rows = [
        {"lang": "de", "text": "Wie funktioniert ein Kühlschrank?"},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime."}]},
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], "lang": "en"},
        {"lang": "en"},
        {"messages": [{"role": "assistant", "content": "no user turn"}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    with caplog.at_level(logging.WARNING, logger="synth.seeds"):
        seeds = load_seeds(path)
    assert len(seeds) == 3 and caplog.text.count("skipping seed") == 3
    assert (seeds[0]["lang"], seed_messages(seeds[0])) == ("de", [{"role": "user", "content": seeds[0]["turns"][0]}])
    assert seeds[1]["lang"] is None and seed_messages(seeds[1])[0] == {"role": "system", "content": "Be brief."}
    assert seed_prompt(seeds[1]) == "Name a prime."
    assert seed_messages(seeds[2]) == [{"role": "user", "content": "2+2?"}]  # the finished turn is dropped
    assert len({s["id"] for s in seeds}) == 3


def test_sample_is_seeded_and_balanced_over_languages(corpus):
    langs = sorted({s["lang"] for s in corpus})
    sample = sample_seeds(corpus, 2 * len(langs), seed=3)
    assert Counter(s["lang"] for s in sample) == dict.fromkeys(langs, 2)
    assert sample == sample_seeds(corpus, 2 * len(langs), seed=3)
    assert sample != sample_seeds(corpus, 2 * len(langs), seed=4)
    few = sample_seeds(corpus, 5, seed=0, languages=["en", "zh"])
    assert Counter(s["lang"] for s in few) in ({"en": 3, "zh": 2}, {"en": 2, "zh": 3})
    prompts = [(s["lang"], seed_prompt(s).lower()) for s in sample_seeds(corpus, 300, seed=0, languages=["en"])]
    assert len(prompts) == len(set(prompts))  # repeated prompts ("Hi, How is it going?" x6) count once


def test_cli_setup_prints_counts_per_language(cache, capsys):
    assert main(["--setup", "--cache-dir", str(cache), "--show", "2", "--lang", "ja"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "seeds from chatterbot-corpus==1.3.3" in out[0]
    assert any(line.split()[:2] == ["en", "English"] for line in out)
    shown = [json.loads(line) for line in out if line.startswith("{")]
    assert len(shown) == 2 and {s["lang"] for s in shown} == {"ja"}
