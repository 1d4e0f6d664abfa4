"""Stage 3, quality filters by domain profile: web prose, technical documentation, code, CJK text.

    python -m pipelines.quality --input data/langid --output data/quality [--profile auto|web|docs|cjk]

Every document gets a profile (``detect_profile``), recorded in its ``metadata`` as ``quality_profile`` with the
signal that chose it (``quality_evidence``); ``domain`` stays ``web``/``code`` for the mixture buckets. Each
profile names its rules and thresholds, with the source of every value, in ``pipelines/profiles/<name>.toml``:

* ``code`` (ingest said ``domain == code``): StarCoder / The Stack rules (``CodeQualityFilter``).
* ``cjk`` (language written in ideographs, kana, Hangul, or without spaces): the clear-junk rules below, lengths
  and lines measured in characters.
* ``docs`` (manuals, tutorials, reference pages, glossaries): ingest's markup hints (a documentation generator,
  code/command markup: ``metadata.markup``), the URL (``/doc/``, ``/manual/``, ``docs.`` hosts ...), the source
  name, or a cheap content test (share of command-like lines, ``--option``/path/key syntax). The clear-junk rules.
* ``web``, everything else: datatrove's filters in FineWeb's order (Penedo et al. 2024), then, on what they keep,
  the clear-junk rules below (the profile named by ``web.toml``'s ``clear_junk``):

  1. ``GopherRepetitionFilter`` - Rae et al. 2021 (Gopher), Table A1: duplicate lines/paragraphs, top and
     duplicated n-grams.
  2. ``GopherQualityFilter``    - Gopher: document length, mean word length, symbol ratio, bullets, ellipses,
     alphabetic words, stop words.
  3. ``C4QualityFilter``        - Raffel et al. 2020 (C4): javascript/policy lines, lorem ipsum, curly brackets,
     too few sentences; with ``filter_no_terminal_punct=False`` as FineWeb used it. As in datatrove, it removes
     the lines it rejects from the text it keeps.
  4. ``FineWebQualityFilter``   - FineWeb: share of lines ending in punctuation, short lines, duplicated chars,
     newline ratio.

  Thresholds are the papers' (datatrove's defaults) for English and FineWeb-2's per-language values elsewhere,
  as data in ``pipelines/thresholds/web_quality.toml`` (each value with its source; ``pipelines.lang_config``
  loads it); scripts without spaces are split into characters (``ScriptAwareTokenizer``).

The clear-junk rules (``JunkFilter``: profiles ``docs`` and ``cjk``, and ``web`` on what its chain keeps) drop
boilerplate, cookie banners, menus, keyword lists, repeated lines, encoding garbage, scrambled text (characters in
no order, ``char_order_gain``), word salad and shuffled lines (word order that gains nothing under the language's
class-bigram table, ``pipelines.word_order``) and very short fragments, with three measures of
the web chain fixed: the alphabetic-word share counts word tokens only (not ``|``, ``--`` or ``(``), the
curly-bracket rule counts only braces next to code, and the top-2-gram share counts word bigrams seen 4 or more
times. They do not judge the middle: the model-based quality score does (``synth.labels`` tiers). A document
those profiles keep but the web chain would have dropped carries the failed rules in ``metadata.quality_flags``;
the tier pass counts how many of them the classifier rates highly. The flags come from the web chain's filters and
thresholds with the dependency-free word tokenizer, so only documents that take the web profile pay for spaCy
(each language's pipeline is built on its first document, per worker).

``--profile web`` puts every non-code document on the web profile: the chain before profiles existed, plus the
clear-junk rules on what it keeps (``benchmarks/bench_filters.py`` measures its agreement with datatrove's chain).
The stage's config holds every value that changes its output (the threshold table's and the profiles' values, the
filter libraries' versions, ``QUALITY_CODE_VERSION``), so editing a threshold starts the stage afresh.
Every drop is counted by ``<filter>/<reason>`` (web) or ``<profile>/<rule>`` and the document is kept in
``excluded/`` for audit.

This module is the stage (``QualityFilter``, ``run``, ``main``); its parts are ``pipelines.filters`` (the web
chain, the tokenizers, the code rules), ``pipelines.quality_profiles`` (the profiles and their detection) and
``pipelines.junk`` (the clear-junk rules).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version

from datatrove.data import Document

from pipelines.beam_stage import (
    DocumentProcessor,
    cli,
    parse_stage_args,
    print_summary,
    run_shard_stages,
    stage_arg_parser,
)
from pipelines.curation_settings import QualitySettings
from pipelines.filters import (
    CHARACTER_SCRIPT_LANGUAGES,
    CodeQualityFilter,
    ScriptAwareTokenizer,
    build_filter_chain,
)
from pipelines.junk import JunkFilter
from pipelines.lang_config import WEB_QUALITY_TABLE, load_threshold_table
from pipelines.quality_profiles import PROFILE_MODES, ProfileDetector, load_profiles
from pipelines.word_order import model_fingerprint

# Part of the stage's config: raise it when a change to this module, pipelines/filters.py, pipelines/junk.py or
# pipelines/quality_profiles.py changes which documents are kept or their text.
QUALITY_CODE_VERSION = 4  # 4: the flags' repetition filter decides exactly as datatrove's
# Libraries whose code decides verdicts (the web chain's filters and tokenizers, the mojibake measure): their
# versions are part of the stage's config.
FILTER_LIBRARIES = ("datatrove", "spacy", "ftfy")


def _installed_version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:  # spaCy is optional: without it the tokenizers fall back (word_tokenizer_for)
        return None


def _metadata(doc: dict) -> dict:
    raw = doc.get("metadata")
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {"original_metadata": raw}
    return value if isinstance(value, dict) else {"original_metadata": value}


class QualityFilter(DocumentProcessor):
    stage = "quality"

    def __init__(
        self,
        code_filter: bool = True,
        profile: str = "auto",
        profiles_dir: str | None = None,
        thresholds_dir: str | None = None,
    ):
        """``profiles_dir``/``thresholds_dir``: folders in place of the packaged ``pipelines/profiles`` and
        ``pipelines/thresholds`` (the latter also from ``$QWEN2_THRESHOLDS_DIR``)."""
        if profile not in PROFILE_MODES:
            raise ValueError(f"profile must be one of {', '.join(PROFILE_MODES)}, got {profile!r}")
        self.code_filter = code_filter
        self.profile = profile
        self.profiles = load_profiles(profiles_dir)
        self.thresholds = load_threshold_table(WEB_QUALITY_TABLE, thresholds_dir)
        self.detector = ProfileDetector(self.profiles)
        code = self.profiles["code"].rules
        self._code = CodeQualityFilter(
            code["max_line_length"], code["max_avg_line_length"], code["min_alphanum_fraction"], code["min_lines"]
        )
        self._junk = {
            name: JunkFilter(p.rules, cjk=name == "cjk") for name, p in self.profiles.items() if p.heuristics == "junk"
        }
        self._chains: dict[str, list[tuple[str, object]]] = {}
        self._flag_chains: dict[str, list[tuple[str, object]]] = {}

    def config(self) -> dict:
        """Every value that changes the output; a change to any starts the stage afresh and the log names it
        (``processor.thresholds.de.dup_line_frac``, ``processor.profiles.docs.rules.min_letters``)."""
        return {
            "code_version": QUALITY_CODE_VERSION,
            "libraries": {name: _installed_version(name) for name in FILTER_LIBRARIES},
            "chain": ["gopher_repetition", "gopher_quality", "c4", "fineweb"],
            "character_script_languages": sorted(CHARACTER_SCRIPT_LANGUAGES),
            "code_filter": self.code_filter,
            "thresholds": self.thresholds.fingerprint(),
            "word_order_tables": model_fingerprint(),
            "profile": self.profile,
            "profiles": {
                name: {"heuristics": p.heuristics, "flags": p.flags, "rules": p.rules, "detect": p.detect}
                for name, p in self.profiles.items()
            },
        }

    def chain(self, lang: str) -> list[tuple[str, object]]:
        """The web chain of a language, built on its first document (spaCy pipelines take seconds each)."""
        if lang not in self._chains:
            self._chains[lang] = build_filter_chain(lang, None, self.thresholds, self.profiles["web"].rules)
        return self._chains[lang]

    def flag_chain(self, lang: str) -> list[tuple[str, object]]:
        """The web chain with the dependency-free tokenizer: for flags."""
        if lang not in self._flag_chains:
            tokenizer = ScriptAwareTokenizer(lang)
            self._flag_chains[lang] = build_filter_chain(lang, tokenizer, self.thresholds, self.profiles["web"].rules)
        return self._flag_chains[lang]

    def profile_of(self, doc: dict) -> tuple[str, str]:
        if doc.get("domain") == "code":
            return "code", "domain"
        if self.profile != "auto":
            return self.profile, "forced"
        return self.detector.detect(doc)

    def web_verdict(self, doc: dict) -> str | None:
        """Today's chain: None if the document passes, else ``<filter>/<reason>``. May rewrite ``doc["text"]``."""
        dt_doc = Document(text=doc["text"], id=doc["id"], metadata={"language": doc.get("lang") or "en"})
        for name, step in self.chain(doc.get("lang") or "en"):
            result = step.filter(dt_doc)
            keep, reason = result if isinstance(result, tuple) else (result, None)
            if not keep:
                return f"{name}/{reason or 'dropped'}"
        doc["text"] = dt_doc.text
        return None

    def web_flags(self, doc: dict) -> list[str]:
        """Every web-chain filter the text fails, each on the text as it is (nothing is rewritten)."""
        flags = []
        lang = doc.get("lang") or "en"
        for name, step in self.flag_chain(lang):
            result = step.filter(Document(text=doc["text"], id=doc["id"], metadata={"language": lang}))
            keep, reason = result if isinstance(result, tuple) else (result, None)
            if not keep:
                flags.append(f"{name}/{reason or 'dropped'}")
        return flags

    def check(self, doc: dict) -> str | None:
        """None if the document passes, else the drop reason. Records the profile (and flags) in ``metadata``;
        the web profile may rewrite ``doc["text"]`` (C4 removes the lines it rejects)."""
        profile, evidence = self.profile_of(doc)
        meta = _metadata(doc)
        meta.update(quality_profile=profile, quality_evidence=evidence)
        meta.pop("quality_flags", None)
        heuristics = self.profiles[profile].heuristics
        if heuristics == "code":
            reason = None
            if self.code_filter:
                keep, why = self._code.filter(doc["text"])
                reason = None if keep else f"code/{why}"
        elif heuristics == "web_chain":
            text = doc["text"]
            reason = self.web_verdict(doc)
            clear_junk = self.profiles[profile].rules.get("clear_junk")
            if reason is None and clear_junk:  # on the text as it came: C4 may have removed policy lines
                rule = self._junk[clear_junk].filter(text, doc.get("lang"))
                reason = None if rule is None else f"{profile}/{rule}"
        else:
            rule = self._junk[profile].filter(doc["text"], doc.get("lang"))
            reason = None if rule is None else f"{profile}/{rule}"
            if reason is None and self.profiles[profile].flags:
                flags = self.web_flags(doc)
                if flags:
                    meta["quality_flags"] = flags
        doc["metadata"] = json.dumps(meta, ensure_ascii=False)
        return reason

    def process_batch(self, docs: list[dict]) -> Iterator[tuple[dict, str | None]]:
        for doc in docs:
            yield doc, self.check(doc)

    def new_summary(self) -> dict:
        return {"profiles": {}, "profile_evidence": {}, "flagged_docs": {}, "flags": {}}

    def summarize(self, doc: dict, summary: dict) -> None:
        meta = _metadata(doc)
        profile = meta.get("quality_profile", "web")
        summary["profiles"][profile] = summary["profiles"].get(profile, 0) + 1
        evidence = f"{profile}:{meta.get('quality_evidence')}"
        summary["profile_evidence"][evidence] = summary["profile_evidence"].get(evidence, 0) + 1
        if meta.get("quality_flags"):
            summary["flagged_docs"][profile] = summary["flagged_docs"].get(profile, 0) + 1
            for flag in meta["quality_flags"]:
                summary["flags"][flag] = summary["flags"].get(flag, 0) + 1


def run(inputs, output_dir: str, beam_args=None, workers: int | None = None, settings=None, **kwargs) -> dict:
    """Filter ``inputs`` into ``output_dir``; ``run_many`` with one folder."""
    return run_many({output_dir: inputs}, beam_args, workers, settings, **kwargs)[output_dir]


def run_many(
    jobs: dict,
    beam_args=None,
    workers: int | None = None,
    settings: QualitySettings | None = None,
    **kwargs,
) -> dict[str, dict]:
    """Each ``output folder -> inputs`` of ``jobs`` in one Beam job (one folder per crawl dump); the summaries by
    output folder. ``settings``: the stage's settings; keywords of the same names (and ``thresholds_dir``) override
    them."""
    if settings is not None:
        kwargs = {
            "code_filter": settings.code_filter,
            "profile": settings.profile,
            "max_doc_bytes": settings.max_doc_bytes,
            **kwargs,
        }
    processor = QualityFilter(
        code_filter=kwargs.pop("code_filter", True),
        profile=kwargs.pop("profile", "auto"),
        thresholds_dir=kwargs.pop("thresholds_dir", None),
    )
    return run_shard_stages(processor, jobs, beam_args, workers, **kwargs)


def main(argv: list[str] | None = None) -> None:
    args, beam_args = parse_stage_args(stage_arg_parser(__doc__.splitlines()[0], QualitySettings), argv)
    print_summary(run(args.input, args.output, beam_args, args.workers, settings=args.settings))


if __name__ == "__main__":
    cli(main)
