"""Quality profiles on the labelled development set: real text kept and junk dropped, per profile and language.

    python benchmarks/bench_profiles.py [--devset DIR] [--cache DIR] [--examples 10] [--classifier DIR]

Data: the development set of ``pipelines/quality_dev_set.py`` (real Debian documentation, manuals, help pages and
source files the demo does not use, labelled keep; web-style junk and minified code, labelled drop), built into
--devset on the first run (~37 MB of .deb files into --cache, shared with the demo corpus). The WARCs are read
through ``pipelines.readers`` (Trafilatura extraction and markup hints, as ingest does) and labelled with lid.176
(``pipelines.langid``; source files are ``code``).

Peer: the chain before profiles (``QualityFilter(profile="web")`` with the web profile's ``clear_junk`` off:
datatrove's Gopher, C4 and FineWeb filters alone on every non-code document), on the same documents in the same run.

Tables: the set's make-up; per profile (the profile each document is routed to) real kept and junk dropped, new
and old; the same per profile and language, per source and per junk kind; what chose each profile, and the content
test alone per source (how much would reach docs with no URL, markup or source-name hint); each clear-junk profile
forced onto every document of its script (a misrouted page still meets the junk rules); documents the old chain
dropped and the new one keeps.
With --classifier (a ``python -m synth.labels train`` folder), kept documents scoring under the relaxed tier (2.0) also
count as dropped in an extra column: the model-based score decides the middle. Targets: junk dropped >= 0.95 and
real kept >= 0.85, per profile and overall.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter, defaultdict

from _common import print_table

from pipelines.filters import CHARACTER_SCRIPT_LANGUAGES
from pipelines.lang_config import QWEN2_LANGUAGES, config_for
from pipelines.quality import QualityFilter
from pipelines.quality_dev_set import build_dev_set, read_dev_set

DEFAULT_DEVSET = os.path.expanduser("~/.cache/qwen2-recipe/quality_dev")
DEFAULT_CACHE = os.path.expanduser("~/.cache/qwen2-recipe/debs")


def load(devset: str, cache: str) -> list[dict]:
    if not os.path.exists(os.path.join(devset, "labels.jsonl")):
        print(f"building the development set in {devset} (debs cached in {cache})", flush=True)
        build_dev_set(devset, cache)
    rows = list(read_dev_set(devset))
    from pipelines.langid import LanguageIdentifier

    lid = LanguageIdentifier()
    lid.setup()
    text_rows = [r for r in rows if r["domain"] != "code"]
    for row, (lang, score) in zip(text_rows, lid.predict([r["text"] for r in text_rows])):
        row["lang"], row["lang_score"] = lang, score
        row["langid_drops"] = lang not in QWEN2_LANGUAGES or score < config_for(lang).language_score
    for row in rows:
        if row["domain"] == "code":
            row["lang"], row["lang_score"], row["langid_drops"] = "code", 1.0, False
    return rows


SAMPLE_FIELDS = ("id", "url", "source", "domain", "lang", "metadata", "text", "label", "kind", "package")


def write_sample(rows: list[dict], path: str, max_chars: int = 2000) -> None:
    """The committed sample of tests/test_quality_profiles.py: per (package, language, kind) up to 3 real documents
    and 1 junk document of at most ``max_chars`` (texts whole, so verdicts are the full documents')."""
    import gzip
    import random

    groups = defaultdict(list)
    for row in rows:
        if len(row["text"]) <= max_chars:
            groups[(row["package"], row["lang"], row["kind"])].append(row)
    chosen = []
    for key, members in sorted(groups.items()):
        chosen += random.Random(str(key)).sample(members, min(3 if key[2] == "real" else 1, len(members)))
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for row in chosen:
            f.write(json.dumps({k: row[k] for k in SAMPLE_FIELDS}, ensure_ascii=False) + "\n")
    print(f"{len(chosen)} documents written to {path}")


def verdicts(rows: list[dict], profile: str, chain_only: bool = False) -> tuple[list[tuple[str | None, dict]], float]:
    """(reason or None, metadata) per row, and the seconds the quality checks took. ``chain_only``: the web profile
    without the clear-junk rules on what its chain keeps (the chain before profiles)."""
    quality = QualityFilter(profile=profile)
    if chain_only:
        quality.profiles["web"].rules["clear_junk"] = ""
    for row in rows:  # build every language's chain first: spaCy start-up is not per-document cost
        name, _ = quality.profile_of(row)
        if quality.profiles[name].heuristics == "web_chain":
            quality.chain(row["lang"] or "en")
        elif quality.profiles[name].flags:
            quality.flag_chain(row["lang"] or "en")
    out, started = [], time.time()
    for row in rows:
        doc = dict(row)
        reason = quality.check(doc)
        out.append((reason, json.loads(doc["metadata"])))
    return out, time.time() - started


def score_kept(rows: list[dict], new: list, classifier: str) -> dict[int, float]:
    from synth.labels.classifier import METRICS_FILE, MODEL_FILE, _load_fasttext, class_values, predict_scores

    with open(os.path.join(classifier, METRICS_FILE)) as f:
        metrics = json.load(f)
    model = _load_fasttext(os.path.join(classifier, MODEL_FILE))
    kept = [i for i, (reason, _) in enumerate(new) if reason is None]
    scores = predict_scores(
        model, [rows[i]["text"] for i in kept], int(metrics["config"]["max_chars"]), class_values(metrics)
    )
    return {i: score for i, (score, _) in zip(kept, scores)}


def source_of(row: dict) -> str:
    """A real document's package, or ``junk/<kind>``."""
    return row["package"] if row["label"] == "keep" else f"junk/{row['kind']}"


def rate(part: int, whole: int) -> str:
    return f"{part / whole:.3f}" if whole else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devset", default=DEFAULT_DEVSET, help=f"development set folder (default {DEFAULT_DEVSET})")
    parser.add_argument("--cache", default=DEFAULT_CACHE, help=f".deb cache (default {DEFAULT_CACHE})")
    parser.add_argument("--examples", type=int, default=10, help="real documents the old chain dropped, shown")
    parser.add_argument("--classifier", help="a synth.labels classifier folder: add the relaxed-tier verdict")
    parser.add_argument("--relaxed", type=float, default=2.0, help="relaxed-tier threshold with --classifier")
    parser.add_argument("--write-sample", help="write a small stratified sample (JSONL.gz) for tests, then stop")
    args = parser.parse_args()

    rows = load(args.devset, args.cache)
    if args.write_sample:
        write_sample(rows, args.write_sample)
        return
    new, new_seconds = verdicts(rows, "auto")
    old, old_seconds = verdicts(rows, "web", chain_only=True)
    scores = score_kept(rows, new, args.classifier) if args.classifier else {}
    n = len(rows)
    print(f"\ndevelopment set: {n:,} documents from {args.devset}\n")

    packages = Counter((r["package"], r["label"]) for r in rows)
    langs = defaultdict(set)
    for r in rows:
        langs[r["package"]].add(r["declared_lang"] or "-")
    print_table(
        ["source", "label", "docs", "declared languages"],
        [[p, label, k, " ".join(sorted(langs[p]))] for (p, label), k in sorted(packages.items())],
    )
    kinds = Counter(r["kind"] for r in rows if r["label"] == "drop")
    print("\njunk kinds: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    print(
        f"documents language ID would drop before quality (still scored here): {sum(r['langid_drops'] for r in rows)}"
    )

    def table(key, title):
        groups = defaultdict(lambda: Counter())
        for i, row in enumerate(rows):
            g = groups[key(i, row)]
            label = row["label"]
            g[label] += 1
            if label == "keep":
                g["real_new"] += new[i][0] is None
                g["real_old"] += old[i][0] is None
                g["real_tier"] += new[i][0] is None and scores.get(i, 5.0) >= args.relaxed
            else:
                g["junk_new"] += new[i][0] is not None
                g["junk_old"] += old[i][0] is not None
                g["junk_tier"] += new[i][0] is not None or scores.get(i, 5.0) < args.relaxed
        header = [title, "real", "real kept", "old chain", "junk", "junk dropped", "old chain"]
        header += ["real kept +tier", "junk dropped +tier"] if scores else []

        def cells(name: str, g: Counter) -> list:
            line = [name, g["keep"], rate(g["real_new"], g["keep"]), rate(g["real_old"], g["keep"])]
            line += [g["drop"], rate(g["junk_new"], g["drop"]), rate(g["junk_old"], g["drop"])]
            return line + ([rate(g["real_tier"], g["keep"]), rate(g["junk_tier"], g["drop"])] if scores else [])

        body = [cells(name, g) for name, g in sorted(groups.items())]
        line = cells("all", sum(groups.values(), Counter()))
        print_table(header, body + [line])
        return groups

    print("\nper profile (each document on the profile it is routed to; 'old chain': the web chain on everything)")
    profile_groups = table(lambda i, r: new[i][1]["quality_profile"], "profile")
    print("\nper profile and language (lid.176)")
    table(lambda i, r: f"{new[i][1]['quality_profile']}/{r['lang']}", "profile/lang")
    print("\nper source (junk: per kind)")
    table(lambda i, r: source_of(r), "source")
    print("\nper kind of text")
    table(lambda i, r: f"{r['kind']}", "kind")
    evidence = Counter(
        (new[i][1]["quality_profile"], new[i][1]["quality_evidence"], r["label"]) for i, r in enumerate(rows)
    )
    print(
        "\nwhat chose the profile: " + ", ".join(f"{p}:{e} ({lab}) {k}" for (p, e, lab), k in sorted(evidence.items()))
    )

    print(
        "\nthe content test alone (URL, markup, source name ignored): share of the non-code, non-CJK documents it "
        "routes to docs, per source"
    )
    detector = QualityFilter(profile="auto").detector
    content = defaultdict(Counter)
    for i, row in enumerate(rows):
        if new[i][1]["quality_profile"] in ("docs", "web"):
            group = content[source_of(row)]
            group["docs"] += 1
            group["content"] += detector.content_says_docs(row["text"])
    print_table(
        ["source", "docs", "content test: docs"],
        [[name, c["docs"], rate(c["content"], c["docs"])] for name, c in sorted(content.items())],
    )

    print("\neach clear-junk profile forced onto every non-code document of its script (as if misrouted)")
    forced = {}
    for profile in ("docs", "cjk"):
        quality = QualityFilter(profile=profile)
        counts = Counter()
        for row in rows:
            if row["domain"] == "code" or (row["lang"] in CHARACTER_SCRIPT_LANGUAGES | {"ko"}) != (profile == "cjk"):
                continue
            reason = quality.check(dict(row))
            counts[row["label"]] += 1
            counts["ok"] += (reason is None) == (row["label"] == "keep")
            counts[f"{row['label']}_ok"] += (reason is None) == (row["label"] == "keep")
        forced[profile] = counts
    print_table(
        ["profile", "real", "real kept", "junk", "junk dropped"],
        [
            [p, c["keep"], rate(c["keep_ok"], c["keep"]), c["drop"], rate(c["drop_ok"], c["drop"])]
            for p, c in forced.items()
        ],
    )

    reasons = Counter(new[i][0] for i, r in enumerate(rows) if r["label"] == "keep" and new[i][0])
    print("\nreal documents the new chain drops, by rule: " + ", ".join(f"{k} {v}" for k, v in reasons.most_common()))
    missed = Counter(r["kind"] for i, r in enumerate(rows) if r["label"] == "drop" and new[i][0] is None)
    print("junk the new chain keeps, by kind: " + ", ".join(f"{k} {v}" for k, v in missed.most_common()))
    flagged = Counter(f for i, r in enumerate(rows) if new[i][0] is None for f in new[i][1].get("quality_flags", []))
    print("kept documents carrying web-chain flags: "
          f"{sum(1 for i, r in enumerate(rows) if new[i][0] is None and new[i][1].get('quality_flags'))}; "
          "by rule: " + ", ".join(f"{k} {v}" for k, v in flagged.most_common(8)))  # fmt: skip

    saved = [i for i, r in enumerate(rows) if r["label"] == "keep" and old[i][0] is not None and new[i][0] is None]
    print(f"\n{len(saved)} real documents the old chain dropped and the new one keeps; {args.examples} of them:")
    step = max(1, len(saved) // max(1, args.examples))
    print_table(
        ["url", "lang", "profile", "old chain's rule"],
        [
            [rows[i]["url"], rows[i]["lang"], new[i][1]["quality_profile"], old[i][0]]
            for i in saved[::step][: args.examples]
        ],
    )

    real = sum(1 for r in rows if r["label"] == "keep")
    junk = n - real
    real_kept = sum(1 for i, r in enumerate(rows) if r["label"] == "keep" and new[i][0] is None)
    junk_dropped = sum(1 for i, r in enumerate(rows) if r["label"] == "drop" and new[i][0] is not None)
    old_real = sum(1 for i, r in enumerate(rows) if r["label"] == "keep" and old[i][0] is None)
    old_junk = sum(1 for i, r in enumerate(rows) if r["label"] == "drop" and old[i][0] is not None)
    clear = [i for i, r in enumerate(rows) if r["label"] == "drop" and r["kind"] not in ("scrambled", "word_salad")]
    clear_dropped = sum(1 for i in clear if new[i][0] is not None)
    clear_by = Counter((new[i][1]["quality_profile"], new[i][0] is not None) for i in clear)
    profiles = sorted({p for p, _ in clear_by})
    print(
        f"\nclear junk (every junk kind but scrambled text and word salad, which the word-order and character-order "
        f"rules drop): {clear_dropped}/{len(clear)} dropped ({clear_dropped / len(clear):.3f}); per profile: "
        + ", ".join(f"{p} {rate(clear_by[p, True], clear_by[p, True] + clear_by[p, False])}" for p in profiles)
    )
    print(f"quality checks, one process, chains built: new {n / new_seconds:.0f} docs/s, old {n / old_seconds:.0f}")
    per_profile = ", ".join(
        f"{p} real {rate(g['real_new'], g['keep'])} junk {rate(g['junk_new'], g['drop'])}"
        for p, g in sorted(profile_groups.items())
    )
    print(
        f"\nRESULT profiles: real kept {real_kept / real:.3f} (old chain {old_real / real:.3f}), junk dropped "
        f"{junk_dropped / junk:.3f} (old chain {old_junk / junk:.3f}), clear junk dropped "
        f"{clear_dropped / len(clear):.3f}; {per_profile}"
    )


if __name__ == "__main__":
    main()
