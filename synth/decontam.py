"""Clean synthetic data: the curation stage's MinHash dedup, then n-gram decontamination against eval sets.

    python -m synth.decontam --kind sft --in data/synth/sft data/synth/verified --out data/synth/sft_clean \\
        --eval humaneval --eval gsm8k=gsm8k_test.jsonl::question,answer [--ngram 13] [--workers 2]
    python -m synth.decontam --kind preference --in data/synth/preference --out data/synth/preference_clean
    python -m synth.decontam --kind documents --in data/synth/rephrase --out data/synth/rephrase_clean \\
        --runner=DataflowRunner ...          # any Beam flag goes to both Beam pipelines

Every synthetic stage (SFT, preference pairs, synthetic documents) goes through here before training:

1. Project: every input record becomes a DOCUMENT_SCHEMA row in ``<out>/_work/documents/`` whose text is what a
   trainer sees: SFT = the message contents, preference = prompt + chosen + rejected contents, documents = text.
2. Dedup: ``pipelines.dedup.run`` on that folder, the very Beam MinHash-LSH + exact-hash stage of curation. The
   kept record of a duplicate cluster is the first in input order (``in_dirs`` order, then shard, then row).
3. Decontaminate and write (a Beam ParDo per input shard, streamed in batches): records dedup removed go to
   ``excluded/`` as ``exact_duplicate`` / ``near_duplicate``; a record sharing any word n-gram (default 13, as in
   the Qwen2 and GPT-3 reports) with a text of an eval set goes as ``contaminated:<eval set>`` with the first
   shared n-gram in ``detail``; the rest are written unchanged with the input schema.

N-grams: NFKC + lower case; tokens are runs of letters/digits, and each Han, Kana or Hangul character (and Thai,
Lao, Khmer, Myanmar, Tibetan) is a token of its own, so CJK text without spaces works. The eval index maps the
64-bit xxhash of every eval n-gram to a bit mask of the sets having it. An eval text shorter than n tokens adds
nothing (counted as ``short_texts``).

Stage folder ``<out>``: ``_config.json``; ``data/<key>.parquet`` (input schema; the kind's columns);
``excluded/<key>.parquet`` (SYNTH_REJECTED_SCHEMA: reason, detail JSON, preview); ``_done/<key>.json``;
``_SUCCESS.json`` (summary); ``_work/`` while running (removed at the end). Keys are ``<input no>-<shard key>``.
Any change of inputs, eval sets or config starts afresh (dedup decisions depend on every input); a killed run
resumes (projected shards, dedup shards and cleaned shards are each committed); a finished stage with the same
config and input fingerprints is returned as it is, with ``reused: true``.
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import pyarrow.parquet as pq
import regex
import xxhash

from pipelines import dedup as dedup_stage
from pipelines.beam_stage import (
    ArgumentParser,
    bounded,
    cli,
    parse_stage_args,
    print_summary,
    run_pipeline,
)
from pipelines.dedup import DedupConfig
from pipelines.readers import DEFAULT_MAX_DOC_BYTES
from pipelines.schema import DOCUMENT_SCHEMA, PREFERENCE_SCHEMA, SFT_SCHEMA, SYNTH_REJECTED_SCHEMA, empty_document
from pipelines.shards import (
    CONFIG_FILE,
    SUCCESS_FILE,
    ShardStage,
    ShardWriter,
    expand_inputs,
    filesystem,
    input_fingerprint,
    iter_parquet_rows,
    join,
    list_shards,
    read_json,
    shard_key,
)
from synth.eval_sets import EvalSet, describe, load_eval_sets
from synth.records import rejected

log = logging.getLogger(__name__)

STAGE = "decontam"
KIND_SCHEMAS = {"sft": SFT_SCHEMA, "preference": PREFERENCE_SCHEMA, "documents": DOCUMENT_SCHEMA}
WORK_DIR = "_work"
_CJK = r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\p{Tibetan}]"
# A CJK character is a token alone, also right after Latin letters ("Python是" -> "python", "是").
_TOKEN = regex.compile(rf"{_CJK}|(?:(?!{_CJK})[\p{{L}}\p{{M}}\p{{N}}])+")


@dataclass(frozen=True)
class CleanConfig:
    ngram: int = 13  # words per n-gram shared with an eval text that makes a record contaminated
    dedup: DedupConfig = field(default_factory=DedupConfig)  # the curation dedup's settings
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES  # larger records are not deduplicated (see dedup_errors)

    def __post_init__(self):
        if self.ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {self.ngram}")


# --- n-grams ---------------------------------------------------------------------------------------


def ngram_tokens(text: str) -> list[str]:
    """Normalised word tokens: NFKC, lower case, letter/digit runs; each CJK (Han, Kana, Hangul) character alone."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


def ngram_hashes(tokens: Sequence[str], n: int) -> Iterator[tuple[int, int]]:
    """(start, 64-bit hash) of every n-token window."""
    for i in range(len(tokens) - n + 1):
        yield i, xxhash.xxh64_intdigest(" ".join(tokens[i : i + n]))


class NgramIndex:
    """The n-gram hashes of eval sets: ``{hash: bit mask of the sets that have it}``."""

    def __init__(self, eval_sets: Sequence[EvalSet], n: int):
        self.n = n
        self.names = [s.name for s in eval_sets]
        self.table: dict[int, int] = {}
        self.stats: list[dict] = []
        for bit, eval_set in enumerate(eval_sets):
            flag, distinct, short = 1 << bit, 0, 0
            for text in eval_set.texts:
                tokens = ngram_tokens(text)
                if len(tokens) < n:
                    short += 1
                    continue
                for _, h in ngram_hashes(tokens, n):
                    old = self.table.get(h, 0)
                    if not old & flag:
                        distinct += 1
                        self.table[h] = old | flag
            self.stats.append({**describe(eval_set), "ngrams": distinct, "short_texts": short})

    def matches(self, text: str) -> dict[str, dict]:
        """Per eval set sharing an n-gram with ``text``: the first shared n-gram, its token position, and how many."""
        tokens = ngram_tokens(text)
        found: dict[str, dict] = {}
        for i, h in ngram_hashes(tokens, self.n):
            mask = self.table.get(h)
            if not mask:
                continue
            for bit, name in enumerate(self.names):
                if mask >> bit & 1:
                    if name in found:
                        found[name]["matched_ngrams"] += 1
                    else:
                        found[name] = {"ngram": " ".join(tokens[i : i + self.n]), "position": i, "matched_ngrams": 1}
        return {name: found[name] for name in self.names if name in found}  # in eval-set order


# --- records ---------------------------------------------------------------------------------------


def _contents(turns) -> list[str]:
    return [t.get("content") or "" for t in turns or []]


def record_text(row: Mapping, kind: str) -> str:
    """The text of a record as training sees it: SFT messages, prompt + chosen + rejected, or a document's text."""
    if kind == "documents":
        return row.get("text") or ""
    if kind == "sft":
        parts = _contents(row.get("messages"))
    else:
        parts = _contents(row.get("prompt")) + _contents(row.get("chosen")) + _contents(row.get("rejected"))
    return "\n\n".join(p for p in parts if p)


def record_method(row: Mapping, kind: str) -> str:
    """The ``method`` column (documents: ``source``) a record is counted under."""
    return str(row.get("source" if kind == "documents" else "method") or "unknown")


def work_id(record: str, shard_no: int, row_no: int) -> str:
    """The id of a record in the dedup work folder: unique even when record ids repeat across inputs."""
    return f"{record}@{shard_no}:{row_no}"


def record_of(work: str) -> str:
    return work.rsplit("@", 1)[0]


def stage_inputs(in_dirs: Sequence[str], kind: str) -> list[str]:
    """The ``data/*.parquet`` shards of finished stage folders, checked against the kind's schema."""
    if kind not in KIND_SCHEMAS:
        raise ValueError(f"kind must be one of {sorted(KIND_SCHEMAS)}, got {kind!r}")
    if not in_dirs:
        raise ValueError("no input stage folders")
    required = set(KIND_SCHEMAS[kind].names)
    files: list[str] = []
    for in_dir in in_dirs:
        fs, path = filesystem(in_dir)
        if not fs.isdir(path):
            raise FileNotFoundError(f"input stage folder {in_dir!r} does not exist")
        if fs.exists(join(path, CONFIG_FILE)) and not fs.exists(join(path, SUCCESS_FILE)):
            raise ValueError(f"{in_dir} is a stage folder whose run has not finished: run that stage first")
        shards = list_shards(in_dir)
        if not shards:
            raise FileNotFoundError(f"{in_dir} has no data/*.parquet shards")
        for shard in shards:
            sfs, spath = filesystem(shard)
            with sfs.open(spath, "rb") as f:
                missing = required - set(pq.read_schema(f).names)
            if missing:
                raise ValueError(f"{shard} is not a {kind} shard: missing columns {sorted(missing)}")
        files.extend(shards)
    if len(set(files)) != len(files):
        raise ValueError(f"an input folder is given twice: {list(in_dirs)}")
    return files


# --- the stage -------------------------------------------------------------------------------------


def _project(files: list[str], keys: list[str], work_root: str, kind: str) -> None:
    """Write each input shard's records as DOCUMENT_SCHEMA rows (id, text, source, lang) for the dedup stage."""
    fs, docs = filesystem(join(work_root, "documents"))
    if fs.exists(docs):
        for p in fs.ls(docs, detail=False):
            if ".tmp-" in p:  # a killed run's half file
                fs.rm(p)
    for shard_no, (path, key) in enumerate(zip(files, keys, strict=True)):
        if fs.exists(join(docs, f"{key}.parquet")):
            continue
        writer = ShardWriter(work_root, "documents", key, schema=DOCUMENT_SCHEMA)
        try:
            for row_no, row in enumerate(iter_parquet_rows(path)):
                doc = empty_document(
                    id=work_id(row["id"], shard_no, row_no),
                    text=record_text(row, kind),
                    source=record_method(row, kind),
                    lang=row.get("lang"),
                )
                writer.write(doc)
        except BaseException:
            writer.abort()
            raise
        writer.commit(always=True)


def _removed(uri: str | None) -> dict[str, tuple[str, str, int]]:
    """work id -> (reason, kept record id, cluster size) of one dedup shard's removed records."""
    if uri is None:
        return {}
    fs, path = filesystem(uri)
    if not fs.exists(path):
        return {}
    out = {}
    for row in iter_parquet_rows(uri, ["id", "drop_reason", "dup_cluster", "dup_cluster_size"]):
        out[row["id"]] = (row["drop_reason"], record_of(row["dup_cluster"] or ""), row["dup_cluster_size"] or 0)
    return out


def _bump(counts: dict, key: str, n: int = 1) -> None:
    counts[key] = counts.get(key, 0) + n


def clean_shard(
    plan: Mapping, kind: str, index: NgramIndex, stage: ShardStage, count: Callable[..., None] | None = None
) -> dict:
    """Stream one input shard into ``data/`` and ``excluded/`` unless it is committed; its counters.

    ``plan``: ``path``, ``shard_no``, ``key``, ``fingerprint``, ``dedup_excluded`` (the dedup shard's excluded file).
    """
    count = count or (lambda name, n=1: None)

    def work() -> dict:
        return _clean_rows(plan, kind, index, stage, count)

    return stage.shard(plan["key"], plan["fingerprint"], work, input=plan["path"], count=count)


def _clean_rows(plan: Mapping, kind: str, index: NgramIndex, stage: ShardStage, count: Callable[..., None]) -> dict:
    removed = _removed(plan["dedup_excluded"])
    stats: dict = {
        "input": 0,
        "exact_duplicate": 0,
        "near_duplicate": 0,
        "contaminated": {},
        "output": 0,
        "rejected": {},
        "methods_in": {},
        "methods_out": {},
    }
    with stage.writers(plan["key"], data_schema=KIND_SCHEMAS[kind], excluded_schema=SYNTH_REJECTED_SCHEMA) as writers:
        for row_no, row in enumerate(iter_parquet_rows(plan["path"])):
            stats["input"] += 1
            method = record_method(row, kind)
            _bump(stats["methods_in"], method)
            text = record_text(row, kind)
            duplicate = removed.get(work_id(row["id"], plan["shard_no"], row_no))
            if duplicate is not None:
                reason, kept, size = duplicate
                stats[reason] += 1
                detail: dict = {"duplicate_of": kept, "cluster_size": size}
            else:
                found = index.matches(text)
                if not found:
                    writers["data"].write(row)
                    stats["output"] += 1
                    _bump(stats["methods_out"], method)
                    continue
                name = next(iter(found))
                reason = f"contaminated:{name}"
                _bump(stats["contaminated"], name)
                detail = {"eval_set": name, "n": index.n, **found[name], "eval_sets": list(found)}
            _bump(stats["rejected"], reason)
            count(f"dropped_{reason}")
            source_id = row.get("id") if kind == "documents" else row.get("source_id")
            writers["excluded"].write(rejected(method, source_id or "", reason, detail, text, id=row["id"]))
    count("records_in", stats["input"])
    count("records_out", stats["output"])
    return stats


def _clean_dofn(plans: list[dict], kind: str, eval_sets: list[EvalSet], n: int, stage: ShardStage):
    from pipelines.beam_dofn import CountingDoFn

    class CleanShard(CountingDoFn):
        def setup(self):
            self.index = NgramIndex(eval_sets, n)  # once per worker; eval sets are small

        def process(self, shard_no: int):
            clean_shard(plans[shard_no], kind, self.index, stage, self.count)
            yield shard_no

    return CleanShard(STAGE)


def clean_stage(
    in_dirs: Sequence[str],
    out_dir: str,
    kind: str,
    eval_sets: Sequence[EvalSet | str],
    config: CleanConfig | None = None,
    *,
    workers: int | None = None,
    beam_args: Sequence[str] | None = None,
    keep_work: bool = False,
) -> dict:
    """Dedup + decontaminate the ``kind`` records of the stage folders ``in_dirs`` into ``out_dir``; the summary.

    ``eval_sets``: EvalSet objects, built-in names or ``[NAME=]PATH[::FIELD,...]`` specs. ``keep_work`` keeps the
    projected documents and the dedup stage under ``<out>/_work`` (for looking at clusters).
    """
    import apache_beam as beam

    started = time.time()
    config = config or CleanConfig()
    files = stage_inputs(in_dirs, kind)
    sets = [s if isinstance(s, EvalSet) else load_eval_sets([s])[0] for s in eval_sets]
    if len({s.name for s in sets}) != len(sets):
        raise ValueError(f"eval set names repeat: {[s.name for s in sets]}")
    fingerprints = [input_fingerprint(f) for f in files]
    stage_config = {
        "stage": STAGE,
        "kind": kind,
        "inputs": [[f, fp] for f, fp in zip(files, fingerprints, strict=True)],  # order decides which copy is kept
        "eval_sets": [{"name": s.name, "texts": len(s.texts), "sha256": s.digest()} for s in sets],
        "config": asdict(config),
    }
    previous = read_json(join(out_dir, SUCCESS_FILE))
    if previous is not None and read_json(join(out_dir, CONFIG_FILE)) == json.loads(
        json.dumps(stage_config, sort_keys=True, default=str)
    ):
        return {**previous, "reused": True}

    with ShardStage(out_dir, stage_config, [*in_dirs, *files]) as stage:
        keys = [f"{i:05d}-{shard_key(f)}" for i, f in enumerate(files)]
        stage.keep_only(keys)

        work_root = join(out_dir, WORK_DIR)
        _project(files, keys, work_root, kind)
        projected = time.time()
        log.info("%s: %d input shards projected to %s in %.1fs", STAGE, len(files), work_root, projected - started)
        dedup_dir = join(work_root, "dedup")
        dedup_summary = dedup_stage.run(
            join(work_root, "documents"), dedup_dir, beam_args, workers, config.dedup, config.max_doc_bytes
        )
        deduplicated = time.time()
        log.info("%s: dedup kept %s of %s records", STAGE, dedup_summary.get("docs_out"), dedup_summary.get("docs_in"))
        # dedup names its shards by the work file's path as expand_inputs gives it: the same call finds them.
        dedup_keys = {}
        for work_file in expand_inputs(join(work_root, "documents")):
            dedup_keys[posixpath.basename(work_file).removesuffix(".parquet")] = shard_key(work_file)
        plans = [
            {
                "path": f,
                "shard_no": i,
                "key": key,
                "fingerprint": fp,
                "dedup_excluded": (
                    join(dedup_dir, "excluded", f"{dedup_keys[key]}.parquet") if key in dedup_keys else None
                ),
            }
            for i, (f, key, fp) in enumerate(zip(files, keys, fingerprints, strict=True))
        ]
        index = NgramIndex(sets, config.ngram)  # in the driver too, for the sizes in the summary
        beam_counters = run_pipeline(
            lambda p: (
                p
                | "Shards" >> beam.Create(list(range(len(plans))))
                | "Spread" >> beam.Reshuffle()
                | "Clean" >> beam.ParDo(_clean_dofn(plans, kind, sets, config.ngram, stage))
            ),
            beam_args,
            workers,
        )
        summary = stage.summed(keys)
        summary["contaminated"] = {name: summary.get("contaminated", {}).get(name, 0) for name in index.names}
        finished = time.time()
        stage.finish(
            summary=summary,
            stage=STAGE,
            kind=kind,
            inputs=list(in_dirs),
            output_dir=out_dir,
            shards=len(keys),
            ngram=config.ngram,
            eval_sets=index.stats,
            dedup={
                k: dedup_summary.get(k)
                for k in ("docs_in", "docs_out", "dropped", "clusters", "errors_by_reason", "config", "seconds")
            },
            dedup_errors=dedup_summary.get("errors", 0),
            reused=False,
            seconds={
                "project": round(projected - started, 2),
                "dedup": round(deduplicated - projected, 2),
                "decontam": round(finished - deduplicated, 2),
                "total": round(finished - started, 2),
            },
            beam_counters=beam_counters,
        )
        if not keep_work:
            fs, path = filesystem(work_root)
            if fs.exists(path):
                fs.rm(path, recursive=True)
        return summary


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    defaults, dd = CleanConfig(), DedupConfig()
    parser.add_argument("--kind", required=True, choices=sorted(KIND_SCHEMAS))
    parser.add_argument("--in", dest="in_dirs", nargs="+", required=True, help="finished stage folders")
    parser.add_argument("--out", required=True, help="output stage folder (or fsspec URI)")
    parser.add_argument(
        "--eval",
        action="append",
        default=None,
        help="built-in eval set (humaneval) or [NAME=]PATH[::FIELD,...] of JSONL/Parquet; repeat (default: humaneval)",
    )
    parser.add_argument("--eval-field", action="append", default=None, help="text field(s) of eval files")
    parser.add_argument(
        "--ngram", type=bounded(int, 1), default=defaults.ngram, help="n-gram length for decontamination"
    )
    parser.add_argument("--bands", type=bounded(int, 1), default=dd.bands, help="dedup LSH bands")
    parser.add_argument("--rows", type=bounded(int, 1), default=dd.rows, help="dedup MinHash values per band")
    parser.add_argument("--dedup-ngram", type=bounded(int, 1), default=dd.ngram, help="dedup shingle length (words)")
    parser.add_argument("--no-exact", action="store_true", help="fuzzy (MinHash) dedup only")
    parser.add_argument("--max-doc-bytes", type=bounded(int, 1), default=defaults.max_doc_bytes)
    parser.add_argument(
        "--workers", type=bounded(int, 1), default=None, help="local Beam worker processes (default: all cores)"
    )
    parser.add_argument("--keep-work", action="store_true", help="keep <out>/_work (projected docs, dedup stage)")
    args, beam_args = parse_stage_args(parser, argv)
    config = CleanConfig(
        ngram=args.ngram,
        dedup=DedupConfig(bands=args.bands, rows=args.rows, ngram=args.dedup_ngram, exact=not args.no_exact),
        max_doc_bytes=args.max_doc_bytes,
    )
    eval_sets = load_eval_sets(args.eval or ["humaneval"], fields=args.eval_field)
    summary = clean_stage(
        args.in_dirs,
        args.out,
        args.kind,
        eval_sets,
        config,
        workers=args.workers,
        beam_args=beam_args,
        keep_work=args.keep_work,
    )
    print_summary(summary)


if __name__ == "__main__":
    cli(main)
