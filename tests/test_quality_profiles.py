"""Quality profiles: each document gets the profile its source, markup, URL, language and content say; the docs and
CJK profiles keep real documentation the web chain drops and still drop clear junk; the web profile is the chain
as it was; kept documents carry the web chain's verdict as flags.

``data/quality_dev_sample.jsonl.gz`` is a committed slice of the labelled development set
(``pipelines/quality_dev_set.py``; written by ``benchmarks/bench_profiles.py --write-sample``): real pages of
Debian manuals and help in 15 languages and source files (keep), web-style junk and minified code (drop), with
their ingest metadata and lid.176 language.
"""

import gzip
import io
import json
import random
from collections import Counter
from pathlib import Path

import pytest
from datatrove.data import Document
from datatrove.pipeline.filters import GopherRepetitionFilter

from pipelines import filters
from pipelines.filters import (
    CachedTokenizer,
    FastGopherRepetitionFilter,
    NGramBounds,
    ScriptAwareTokenizer,
    _ngrams,
    word_tokenizer_for,
)
from pipelines.junk import char_order_gain
from pipelines.quality import QualityFilter
from pipelines.quality_profiles import PROFILE_DIR, PROFILE_NAMES, load_profiles
from pipelines.word_order import model_fingerprint, model_for
from tests.conftest import DE, EN, ZH, paragraph_doc

SAMPLE = Path(__file__).parent / "data" / "quality_dev_sample.jsonl.gz"
# The development set's targets, per profile and overall (benchmarks/bench_profiles.py on the whole set).
MIN_REAL_KEPT, MIN_JUNK_DROPPED = 0.85, 0.95


@pytest.fixture(scope="module")
def sample() -> list[dict]:
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def quality() -> QualityFilter:
    return QualityFilter()


def _meta(doc: dict) -> dict:
    return json.loads(doc["metadata"])


def test_profiles_keep_real_documentation_and_drop_junk(sample, quality):
    """On the committed sample, per profile and overall: real documents kept >= 0.85 and junk of every kind
    (scrambled text and word salad included) dropped >= 0.95; the web chain alone (datatrove's filters, without the
    clear-junk rules) keeps under half of the same real documentation and misses most word salad."""
    counts: dict[str, dict[str, list[bool]]] = {}
    chain_only = QualityFilter(profile="web")
    chain_only.profiles["web"].rules["clear_junk"] = ""
    web_chain_kept, chain_salad_dropped = [], []
    for row in sample:
        profile, _ = quality.profile_of(row)
        kept = quality.check(dict(row)) is None
        group = "real" if row["label"] == "keep" else "junk"
        for key in (profile, "all"):
            counts.setdefault(key, {}).setdefault(group, []).append(kept)
        if group == "real" and profile in ("docs", "cjk") and row["lang"] in ("en", "de", "fr", "it"):
            web_chain_kept.append(chain_only.check(dict(row)) is None)
        if row["kind"] == "word_salad" and profile == "web":
            chain_salad_dropped.append(chain_only.check(dict(row)) is not None)
    assert set(counts) == {"docs", "cjk", "code", "web", "all"}
    for profile, groups in counts.items():
        real, junk = groups["real"], groups["junk"]
        if profile != "web":  # the sample's web profile has one real page (base-files licences are web prose)
            assert len(real) >= 9 and sum(real) / len(real) >= MIN_REAL_KEPT, (profile, sum(real), len(real))
        dropped = sum(not k for k in junk)
        assert dropped / len(junk) >= MIN_JUNK_DROPPED, (profile, dropped, len(junk))
    assert len(counts["web"]["junk"]) >= 50 and len(counts["all"]["junk"]) >= 100
    assert len(web_chain_kept) >= 20 and sum(web_chain_kept) / len(web_chain_kept) < 0.5
    assert len(chain_salad_dropped) >= 5 and sum(chain_salad_dropped) / len(chain_salad_dropped) < 0.5


@pytest.mark.parametrize("profile", ["docs", "cjk"])
def test_clear_junk_rules_drop_junk_wherever_it_is_routed(sample, profile):
    """Each clear-junk profile forced onto every document of its script: a cookie banner on a /docs/ URL, a menu
    detected as documentation or word salad on a manual's URL is still dropped."""
    forced = QualityFilter(profile=profile)
    cjk = forced.detector.cjk_languages
    real, junk = [], []
    for row in sample:
        if row["domain"] == "code" or (row["lang"] in cjk) != (profile == "cjk"):
            continue
        (real if row["label"] == "keep" else junk).append(forced.check(dict(row)) is None)
    assert len(real) >= 20 and sum(real) / len(real) >= MIN_REAL_KEPT
    assert len(junk) >= 20 and sum(not k for k in junk) / len(junk) >= MIN_JUNK_DROPPED


def _doc(text, **fields):
    return {"id": "t", "text": text, "url": None, "source": "x.warc.gz", "domain": "web", "lang": "en",
            "metadata": None, **fields}  # fmt: skip


COMMANDS = """To see which packages are installed, run the following command in a terminal:
$ dpkg -l | grep linux-image
The --purge option also removes the configuration files under /etc/apt/ and the cache.
# apt-get install --no-install-recommends aptitude
Press Ctrl-C to stop the download at any time, or q to leave the package list.
To find the package that owns a file, search the database of installed files:
$ dpkg -S /usr/bin/aptitude
Held packages are not upgraded; list them before a release upgrade with the following command.
$ apt-mark showhold
A full upgrade may remove packages when that is the only way to resolve new dependencies.
# apt full-upgrade --dry-run
"""


# Plain-text tutorials and glossaries: no command lines, but key names, cross-references or definition lists.
KEYS_TUTORIAL = """Lesson 2: leaving the editor without saving
Press <Esc> to be sure you are in normal mode, then type the two keys and press <Enter>.
If the screen fills with odd characters, press CTRL-L and the text is drawn again from the top.
When you are lost, <Esc> always brings you back; CTRL-G tells you where you are in the file.
Now move to the next lesson with the cursor keys and read it slowly before you try anything."""
XREF_GLOSSARY = """checkpoint: a copy of the model's weights and the optimiser's state, written every few hundred steps
so that a {killed run} can go on where it stopped. See also {resume}, {optimiser state} and {warm start}. Old hands
say a run without one is a {one-shot}; compare {snapshot} and the {rollback} drill the operators practise."""
DEFINITION_LIST = """shard
        One Parquet file of a stage's output, written whole or not at all.
manifest
        The list of a stage's finished shards and their row counts.
lineage
        Which input documents a shard was made from.
cursor
        How far a reader has got through its shard."""


@pytest.mark.parametrize("text", [KEYS_TUTORIAL, XREF_GLOSSARY, DEFINITION_LIST], ids=["keys", "xrefs", "definitions"])
def test_tutorials_and_glossaries_are_documentation_by_content(quality, text):
    doc = _doc(text)
    assert quality.profile_of(doc) == ("docs", "content")
    assert quality.detector.content_says_docs(text)
    prose = _doc(paragraph_doc(EN, 3))["text"]  # prose with no such markers stays on the web profile
    assert not quality.detector.content_says_docs(prose)
    quotation = "A short saying that fits on one line.\n\t\t-- Its Author\nAnd a second line of it.\n  and a third."
    assert not quality.detector.content_says_docs(quotation)  # one headword-like line is not a definition list


OPTIONS = """| --max-depth | ( 10 ) | how far the resolver searches before it gives up on a solution |
| --min-score | ( -300 ) | solutions scoring below this are never shown to the user |
| --step-limit | ( 5000 ) | the number of search steps taken before the first answer is printed |
| --wait | ( 2 ) | seconds between two attempts to take the lock of the package database |
| --retry | ( 3 ) | how often a failed download is started again from another mirror |
| --cache | ( /var/cache/apt ) | where downloaded archives are kept until the next clean |
| --keep-all | ( off ) | cancel every scheduled installation, removal and upgrade at once |
| --show-why | ( on ) | explain which manually installed package depends on the one shown |"""
# JavaScript that leaked into a page's text: what C4's curly-bracket rule was written for.
SCRIPT = """var cfg = { track: true, consent: false };
function init(el) {
  window.dataLayer = window.dataLayer || [];
  document.querySelectorAll(".menu").forEach((m) => {
    m.addEventListener("click", toggle);
  });
}
var banner = document.getElementById("cookie-banner");
window.addEventListener("load", () => {
  init(banner);
});"""


@pytest.mark.parametrize(
    "fields, profile, evidence",
    [
        ({"domain": "code"}, "code", "domain"),
        ({"lang": "zh"}, "cjk", "lang"),
        ({"lang": "ko"}, "cjk", "lang"),
        (
            {"metadata": json.dumps({"markup": {"generator": "DocBook XSL Stylesheets V1.79.2"}})},
            "docs",
            "markup:generator",
        ),
        ({"metadata": json.dumps({"markup": {"code_tags": 12}})}, "docs", "markup:code_tags"),
        ({"metadata": json.dumps({"markup": {"code_tags": 1}})}, "web", "default"),
        ({"url": "https://www.debian.org/doc/manuals/aptitude/ch02.en.html"}, "docs", "url"),
        ({"url": "https://docs.python.org/3/library/os.html"}, "docs", "url"),
        ({"url": "https://blog.example.com/2024/05/holiday"}, "web", "default"),
        ({"source": "installation-guide-amd64.warc.gz"}, "docs", "source"),
        ({"text": COMMANDS}, "docs", "content"),
    ],
)
def test_profile_comes_from_ingest_and_a_cheap_content_test(quality, fields, profile, evidence):
    doc = {**_doc(paragraph_doc(EN, 1)), **fields}
    assert quality.profile_of(doc) == (profile, evidence)
    quality.check(doc)
    assert (_meta(doc)["quality_profile"], _meta(doc)["quality_evidence"]) == (profile, evidence)
    assert doc["domain"] == fields.get("domain", "web")  # the mixture buckets never see the profile


def test_web_profile_is_the_chain_before_profiles(quality):
    """A web-routed document gets the chain's verdict and text (C4 removes the lines it rejects), the clear-junk
    rules having nothing against it; and --profile web puts documentation back on that chain."""
    text = "\n".join(EN[:8]) + "\nPlease read our privacy policy.\nTwo words"
    auto, web = _doc(text), _doc(text)
    assert quality.check(auto) == QualityFilter(profile="web").check(web) is None
    assert auto["text"] == web["text"] and "privacy policy" not in auto["text"]
    docs = _doc(OPTIONS, url="https://example.org/manual/options.html")
    assert quality.check(dict(docs)) is None
    assert QualityFilter(profile="web").check(dict(docs)) == "gopher_quality/gopher_below_alpha_threshold"


def _salad(sentences: list[str], seed: int, n: int = 14) -> str:
    """Word salad the way machine-made spam reads: words drawn at their frequencies, capitalised and punctuated."""
    rng = random.Random(seed)
    vocab = " ".join(sentences).replace(".", "").replace(",", "").split()
    out = []
    for _ in range(n):
        words = rng.choices(vocab, k=rng.randint(8, 16))
        out.append(words[0].capitalize() + " " + " ".join(words[1:]) + ".")
    return "\n".join(" ".join(out[i : i + 2]) for i in range(0, n, 2))


def _shuffled(text: str, seed: int, chars: bool = False) -> str:
    rng = random.Random(seed)
    lines = []
    for line in text.splitlines():
        parts = list(line) if chars else line.split()
        rng.shuffle(parts)
        lines.append(("" if chars else " ").join(parts))
    return "\n".join(lines)


@pytest.mark.parametrize("url", ["https://example.org/doc/upgrade.html", "https://blog.example.org/upgrade"])
def test_word_salad_and_scrambled_text_are_dropped(quality, url):
    """Text whose words are in no order (word salad, lines with their words shuffled) fails the word-order rule,
    text whose letters are shuffled the character-order rule; the real text they are made of passes, on the docs
    profile and on the web profile (where datatrove's chain keeps the salad)."""
    real = paragraph_doc(EN, 1, n=len(EN), per_line=3)
    profile = "docs" if "/doc/" in url else "web"
    assert quality.profile_of(_doc(real, url=url))[0] == profile
    assert quality.check(_doc(real, url=url)) is None
    for seed in range(3):
        salad = _salad(EN, seed)
        assert quality.check(_doc(salad, url=url)) == f"{profile}/word_order", salad
        # lines with their words shuffled: the word order, or the lowercase words after periods (the older rule);
        # on the web profile the chain may get there first (short lines without end punctuation)
        words, chars = (quality.check(_doc(_shuffled(real, seed, c), url=url)) for c in (False, True))
        assert words in {f"{profile}/word_order", f"{profile}/scrambled"} or profile == "web" and words
        assert chars == f"{profile}/scrambled" or profile == "web" and chars
    chain_only = QualityFilter(profile="web")
    chain_only.profiles["web"].rules["clear_junk"] = ""
    assert chain_only.check(_doc(_salad(EN, 0), url=url)) is None  # what the clear-junk rules add to the chain
    # a language without a word-order table: the rule is off, the rest still applies
    assert model_for("xx") is None and quality.check(_doc(_salad(EN, 0), url=url, lang="xx")) is None


def test_order_measures():
    real = paragraph_doc(EN, 2, n=len(EN), per_line=3)
    model = model_for("en")
    score, pairs = model.score(real)
    salad_score, salad_pairs = model.score(_salad(EN, 1))
    assert pairs >= 100 and salad_pairs >= 100 and score > 0.2 > 0 > salad_score
    assert model_for("de").score(paragraph_doc(DE, 1, n=len(DE)))[0] > 0 > model_for("de").score(_salad(DE, 1))[0]
    zh = paragraph_doc(ZH, 1, n=len(ZH))
    assert model_for("zh").score(zh)[0] > 0.1 > model_for("zh").score(_shuffled(zh, 1, chars=True))[0]
    assert char_order_gain(real) > 0.1 > 0.03 > char_order_gain(_shuffled(real, 1, chars=True))
    assert model_fingerprint()["languages"] and {"en", "de", "ja", "zh", "ko", "ru"} <= set(
        model_fingerprint()["languages"]
    )


def test_word_order_tables_and_rules_need_a_source(tmp_path):
    import gzip as gz

    from pipelines.word_order import MODEL_FILE

    with gz.open(MODEL_FILE, "rt", encoding="utf-8") as f:
        data = json.load(f)
    assert "demo corpora" in data["source"] and "development set" in data["source"]
    data["source"] = " "
    broken = tmp_path / "tables.json.gz"
    with gz.open(broken, "wt", encoding="utf-8") as f:
        json.dump(data, f)
    with pytest.raises(ValueError, match="source"):
        model_for("en", broken)
    for name in PROFILE_NAMES:
        (tmp_path / f"{name}.toml").write_text((PROFILE_DIR / f"{name}.toml").read_text())
    docs = (tmp_path / "docs.toml").read_text()
    start = docs.index("[rules.min_word_order_score]")
    cut = docs.index("source =", start)
    (tmp_path / "docs.toml").write_text(docs[:cut] + docs[docs.index("\n", cut) + 1 :])
    with pytest.raises(ValueError, match="min_word_order_score.*no source"):
        load_profiles(tmp_path)


def test_kept_documentation_carries_the_web_rules_it_fails(quality):
    glossary = "\n".join(
        f"{{{term}}}: {definition}"
        for term, definition in [
            ("apt", "the command-line package manager that resolves dependencies and downloads packages."),
            ("dpkg", "the low-level tool that installs, removes and inspects single .deb package files."),
            ("aptitude", "a text-mode front end to the package system, with a menu-driven interface."),
            ("suite", "a named set of packages in the archive, such as stable, testing or unstable."),
            ("mirror", "a server that carries a copy of the archive, close to its users in the network."),
            ("pin", "a preference that keeps a package at a version or release when others are upgraded."),
        ]
    )
    doc = _doc(glossary, url="https://wiki.example.org/doc/glossary")
    assert quality.check(doc) is None
    meta = _meta(doc)
    assert meta["quality_profile"] == "docs" and "c4/curly_bracket" in meta["quality_flags"]
    plain = _doc(paragraph_doc(EN, 2), url="https://example.org/doc/intro.html")
    assert quality.check(plain) is None and "quality_flags" not in _meta(plain)


def test_fixed_measures(quality):
    # alphabetic words counted over words, not over "|", "--", "(" tokens

    doc = _doc(OPTIONS, url="https://example.org/manual/options.html")
    assert quality.check(doc) is None
    assert "gopher_quality/gopher_below_alpha_threshold" in _meta(doc)["quality_flags"]
    # braces count only next to code: a page that is leaked JavaScript is dropped, markup braces are not
    assert quality.check(_doc(SCRIPT, url="https://example.org/docs/x.html")) == "docs/javascript"
    # CJK length in characters: a one-sentence help page stays, a loading notice goes
    page = "选择此命令可以将当前文档保存为模板，以后新建文档时就可以直接使用其中的样式和格式设置。"
    assert quality.check(_doc(page, lang="zh")) is None
    assert quality.check(_doc("加载中...\n返回顶部", lang="zh")) == "cjk/too_short"


def test_profile_files_give_a_source_for_every_value():
    profiles = load_profiles()
    assert set(profiles) == set(PROFILE_NAMES)
    for profile in profiles.values():
        for rule in profile.rules:
            assert profile.sources.get(rule), f"{profile.name}: rule {rule} has no source"
    assert profiles["cjk"].rules["boilerplate_phrases"] == profiles["docs"].rules["boilerplate_phrases"]


def test_a_broken_profile_file_is_refused(tmp_path):
    for name in PROFILE_NAMES:
        (tmp_path / f"{name}.toml").write_text((Path(load_profiles.__code__.co_filename).parent / "profiles" /
                                                f"{name}.toml").read_text())  # fmt: skip
    docs = (tmp_path / "docs.toml").read_text().replace("[rules.min_letters]", "[rules.min_letterz]")
    (tmp_path / "docs.toml").write_text(docs)
    with pytest.raises(ValueError, match="min_letters"):
        load_profiles(tmp_path)


def test_fast_repetition_filter_decides_like_datatrove():
    # one stretch of letters cut into 5 words at different places: different 5-grams that join (without spaces) to the
    # same string, which datatrove counts as duplicated (comparing the words as tuples would keep this text)
    base = "packagesarefetchedfromthemirrorlisted"
    cuts = [(3, 9, 15, 22), (4, 10, 17, 25), (5, 12, 18, 27), (6, 13, 20, 28), (7, 14, 21, 30), (8, 16, 23, 31)]
    joined_alike = "\n".join(
        " ".join(base[a:b] for a, b in zip((0, *cut), (*cut, len(base)))) + f" then step{i} follows here"
        for i, cut in enumerate(cuts)
    )
    texts = [paragraph_doc(EN, 3), "buy now buy now cheap\n" * 20, ("the quick brown fox jumps " * 30 + "\n") * 2,
             "\n".join(EN) + "\n" + "\n".join(EN[:3]), "one two three four five six seven " * 12, joined_alike,
             " ".join(EN) * 2, "word " * 3, ""]  # fmt: skip
    for tokenizer in (ScriptAwareTokenizer("en"), word_tokenizer_for("en")):
        fast = FastGopherRepetitionFilter(language=CachedTokenizer(tokenizer))
        reference = GopherRepetitionFilter(language=tokenizer)
        verdicts = [reference.filter(Document(text=text, id="b")) for text in texts]
        assert [fast.filter(Document(text=text, id="a")) for text in texts] == verdicts
        assert verdicts[texts.index(joined_alike)] == (False, "duplicated_5_n_grams")
        assert len(set(map(str, verdicts))) >= 3  # passes and more than one kind of drop


def test_ngram_bounds_are_never_below_the_exact_measures_and_the_fast_filter_agrees_on_random_texts():
    # texts from a few short pieces (so n-grams repeat, and pieces like "a"+"ab" and "ab"+"a"... join alike without
    # spaces), a lone surrogate and non-BMP characters; limits drawn at random (the top-n-gram ones off for half the
    # texts, so the duplicated-n-gram rules are reached) so the n-gram rules both pass and drop texts
    powers, inverses = filters._powers(5000)
    assert (powers * inverses == 1).all() and powers[1] == filters._HASH_BASE  # B**j * B**-j = 1 modulo 2**64
    rng = random.Random(7)
    pieces = ["a", "b", "ab", "ba", "abc", "the", "cat", "é", "日本", "x-y", ".", "\ud800", "😀", "aa"]
    tokenizer = ScriptAwareTokenizer("en")
    verdicts = set()
    for _ in range(400):
        vocab = rng.sample(pieces, rng.randint(2, len(pieces)))
        words = [rng.choice(vocab) for _ in range(rng.randint(1, rng.choice([6, 30, 150])))]
        text = "".join(w + rng.choice([" "] * 8 + ["\n", "\n\n"]) for w in words)
        words = tokenizer.word_tokenize(text)
        bounds = NGramBounds(words)
        for n in range(2, 11):
            if len(words) < n:
                continue
            (gram, count), *_ = Counter(_ngrams(words, " ")(n)).most_common(1)
            assert bounds.top(n) >= len(gram) * count
            grams = _ngrams(words, "")(n)
            assert bounds.repeated(n) >= sum(map(len, grams)) - sum(map(len, set(grams)))
        limits = {
            "top_n_grams": tuple((n, rng.choice([rng.random() * 0.3, 1.0])) for n in (2, 3, 4)),
            "dup_n_grams": tuple((n, rng.random() * 0.3) for n in range(5, 11)),
        }
        fast = FastGopherRepetitionFilter(language=CachedTokenizer(tokenizer), **limits)
        expected = GopherRepetitionFilter(language=tokenizer, **limits).filter(Document(text=text, id="b"))
        assert fast.filter(Document(text=text, id="a")) == expected
        verdicts.add(str(expected))
    assert {"True", "(False, 'top_2_gram')", "(False, 'duplicated_5_n_grams')"} <= verdicts


def test_cached_tokenizer_splits_each_text_once_and_returns_copies():
    calls = []

    class Counting(ScriptAwareTokenizer):
        def word_tokenize(self, text):
            calls.append(text)
            return super().word_tokenize(text)

    tokenizer = CachedTokenizer(Counting("en"))
    text = "One two three. Four five."
    words = tokenizer.word_tokenize(text)
    words.append("changed")
    assert tokenizer.word_tokenize("".join(text)) == ["One", "two", "three", ".", "Four", "five", "."]
    assert tokenizer.word_tokenize("Other text") == ["Other", "text"]
    assert calls == [text, "Other text"]
    assert tokenizer.span_tokenize(text) == Counting("en").span_tokenize(text)


def test_ingest_records_markup_hints(tmp_path):
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    from pipelines.readers import read_documents

    pages = {
        "https://example.org/manual/ch01.html": '<html><head><meta name="generator" content="DocBook XSL 1.79">'
        "</head><body><p>" + " ".join(EN[:6]) + "</p><pre>apt-get update</pre></body></html>",
        "https://example.org/news.html": "<html><body><p>" + " ".join(EN[6:12]) + "</p></body></html>",
    }
    path = tmp_path / "site.warc.gz"
    with open(path, "wb") as out:
        writer = WARCWriter(out, gzip=True)
        for url, html in pages.items():
            body = html.encode()
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body),
                                                          length=len(body), http_headers=headers))  # fmt: skip
    docs = {row["url"]: row for kind, row in read_documents(str(path)) if kind == "doc"}
    manual = json.loads(docs["https://example.org/manual/ch01.html"]["metadata"])["markup"]
    assert manual == {"generator": "DocBook XSL 1.79", "code_tags": 1}
    assert docs["https://example.org/news.html"]["metadata"] is None


def test_tier_pass_counts_flagged_documents_the_classifier_keeps(tmp_path):
    """The tier pass counts, per tier, the documents a heuristic would have dropped (metadata.quality_flags) that
    the score puts in the tier, by rule, and keeps a sample with both verdicts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.shards import write_json_atomic
    from synth.labels.tiers import SCORED_SCHEMA, write_tiers
    from synth.settings import TierSettings

    def meta(*flags):
        return json.dumps({"quality_profile": "docs", **({"quality_flags": list(flags)} if flags else {})})

    alpha, brace = "gopher_quality/gopher_below_alpha_threshold", "c4/curly_bracket"
    rows = [
        {"id": "a", "text": "a manual page", "lang": "en", "metadata": meta(alpha), "quality_score": 3.5},
        {"id": "b", "text": "a glossary", "lang": "de", "metadata": meta(brace, alpha), "quality_score": 2.5},
        {"id": "c", "text": "a stub", "lang": "en", "metadata": meta(alpha), "quality_score": 1.0},
        {"id": "d", "text": "a good page", "lang": "en", "metadata": meta(), "quality_score": 4.0},
        {"id": "e", "text": "web text", "lang": "en", "metadata": None, "quality_score": 1.0},
    ]
    scored = tmp_path / "scored"
    (scored / "data").mkdir(parents=True)
    full = [{name: row.get(name) for name in SCORED_SCHEMA.names} for row in rows]
    pq.write_table(pa.Table.from_pylist(full, schema=SCORED_SCHEMA), scored / "data" / "part-00000.parquet")
    write_json_atomic(str(scored / "_config.json"), {"stage": "quality_score", "processor": {}})
    write_json_atomic(str(scored / "_SUCCESS.json"), {"docs_out": len(rows), "languages": {"en": 4, "de": 1}})
    tiers = write_tiers(str(scored), str(tmp_path / "tiers"), TierSettings(), workers=1)
    strict, relaxed = tiers["strict"], tiers["relaxed"]
    assert strict["flagged_docs"] == relaxed["flagged_docs"] == 3
    assert (strict["flagged_kept"], relaxed["flagged_kept"]) == (1, 2)
    assert strict["flagged_kept_by_rule"] == {alpha: 1}
    assert relaxed["flagged_kept_by_rule"] == {alpha: 2, brace: 1}
    assert relaxed["flagged_kept_share"] == pytest.approx(2 / 3, abs=1e-5)
    sample = {s["id"]: s for s in relaxed["flagged_sample"]}
    assert set(sample) == {"a", "b", "c"}
    assert sample["b"] == {"id": "b", "lang": "de", "profile": "docs", "web_chain": f"{brace}, {alpha}",
                           "score": 2.5, "tier": "kept"}  # fmt: skip
    assert sample["c"]["tier"] == "dropped" and [s["tier"] for s in relaxed["flagged_sample"]][-1] == "dropped"
