"""Multilingual mixing: buckets, a versioned mixture config, a token budget in Qwen2 tokens.

Qwen2 mixed web text in ~30 languages with more code and math, synthetic data from
earlier Qwen models and multi-task instruction data, and tuned the per-source weights
on scaled-down proxy models (report, section 3.1; the search is
``training.mixture_search``). Here that is two Beam stages:

1. ``index``: every curated document gets its bucket (``<domain>/<lang>``: ``web/de``,
   ``code``, ``math/en``, ``synthetic/zh``, ``instruction/en`` ...; ``domain`` comes from
   the document, so a quality tier or synthetic folder given as another input lands in
   its own bucket) and its Qwen2 token count. Documents longer than the stage-2 context
   are cut into pieces of that size, so no single document outweighs a bucket's target.
   A fixed slice of documents, chosen by a hash of the id, is held out for validation. A synthetic
   document follows its lineage: it is held out exactly when the curated document it was made
   from is (``lineage_id``), so no rephrasing of a validation document is trained on.
   One output shard per input shard, resumable like every stage. Each shard also records,
   per bucket, how many tokens fall in each of ``HIST_BINS`` hash bins: that histogram
   lets the planner hit a token target without reading a single document.

       python -m pipelines.mixing index --input data/curated/dedup --output data/mix/index \\
           --long-doc-tokens 4096 --max-doc-tokens 32768

2. ``select``: plans per-bucket token targets from the index's totals and a
   ``MixtureConfig`` (domain weights, temperature sampling over languages, a cap on
   repeats, the budget), gives every document its number of copies, spreads the copies
   over output shards by a seeded hash (a ``GroupByKey``: the global shuffle) and
   shuffles each shard. The realised mix (tokens and repeats per bucket) is reported
   against the target and checked.

       python -m pipelines.mixing select --index data/mix/index --output data/mix/stage1 --config mix.json
       python -m pipelines.mixing select --index data/mix/index --output data/mix/long --config mix.json \\
           --long-documents-only       # stage-2 mix: documents longer than the stage-1 context
       python -m pipelines.mixing select --index data/mix/index --output data/mix/validation --split validation

Nothing holds the corpus in memory: the planner sees only per-bucket histograms, and the
shuffle holds one output shard per worker.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Iterator, Sequence

from pipelines.beam_stage import (
    ArgumentParser,
    DocumentProcessor,
    bounded,
    cli,
    print_summary,
    run_pipeline,
    run_shard_stage,
)
from pipelines.mixing_settings import MIXTURE_RUN_FIELDS, MixtureConfig, MixtureIndexSettings, MixtureSettings
from pipelines.schema import MIXED_SCHEMA
from pipelines.settings import _argument as settings_argument
from pipelines.settings import parse_settings, settings_parser
from pipelines.shards import (
    SUCCESS_FILE,
    ShardStage,
    ShardWriter,
    committed_keys,
    filesystem,
    join,
    list_shards,
    read_json,
)

HIST_BINS = 512
SPLITS = ("train", "validation")


def _hash64(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest(), "big")


def _unit(*parts: object) -> float:
    return _hash64(*parts) / 2**64


def doc_bin(doc_id: str) -> int:
    """The document's hash bin; selection order inside a bucket follows it (rotated by the mixture seed)."""
    return _hash64("order", doc_id) % HIST_BINS


def is_heldout(doc_id: str, fraction: float) -> bool:
    """Whether the document of lineage id ``doc_id`` (see ``lineage_id``) is in the validation slice."""
    return _unit("heldout", doc_id) < fraction


SYNTHETIC_SOURCE_PREFIX = "synthetic:"
# Bump when the held-out rule changes: it is part of the index's config, so a rerun rebuilds the index.
HELDOUT_RULE = "lineage-v1"


def lineage_id(doc: dict) -> str:
    """The id the held-out decision hashes: the source document's for a synthetic row, else the row's own.

    A synthetic row (``source`` starting with ``synthetic:``, or domain ``synthetic``; what every ``synth`` stage
    writes) names the document it was made from in its ``metadata`` JSON as ``source_id`` (``synth.rephrase``), so
    it lands on the same side of the split as that document: a rephrasing of a validation document is validation
    too. Other rows keep their own id: a curated ``metadata`` may use ``source_id`` for something else.
    """
    source = doc.get("source") or ""
    if not (source.startswith(SYNTHETIC_SOURCE_PREFIX) or doc.get("domain") == "synthetic"):
        return doc["id"]
    try:
        metadata = json.loads(doc.get("metadata") or "{}")
    except (TypeError, ValueError):
        return doc["id"]
    parent = metadata.get("source_id") if isinstance(metadata, dict) else None
    return str(parent) if parent else doc["id"]


def bucket_of(doc: dict) -> str:
    domain = doc.get("domain") or "web"
    lang = doc.get("lang")
    return domain if not lang or lang in (domain, "code") else f"{domain}/{lang}"


def _domain_lang(bucket: str) -> tuple[str, str]:
    domain, _, lang = bucket.partition("/")
    return domain, lang or domain


# --------------------------------------------------------------------------- index


class MixIndexer(DocumentProcessor):
    """Adds ``bucket`` and ``n_tokens`` (Qwen2 tokens) to every document and histograms the buckets."""

    stage = "mix_index"
    data_schema = MIXED_SCHEMA

    def __init__(
        self,
        heldout_fraction: float = 0.01,
        long_doc_tokens: int = 4096,
        max_doc_tokens: int = 32768,
        tokenizer_path: str | None = None,
    ):
        if not 0 <= heldout_fraction < 0.5:
            raise ValueError(f"heldout_fraction must be in [0, 0.5), got {heldout_fraction}")
        if not 1 <= long_doc_tokens <= max_doc_tokens:
            raise ValueError(f"need 1 <= long_doc_tokens <= max_doc_tokens, got {long_doc_tokens}, {max_doc_tokens}")
        self.heldout_fraction = heldout_fraction
        self.long_doc_tokens = long_doc_tokens
        self.max_doc_tokens = max_doc_tokens
        self.tokenizer_path = tokenizer_path
        self._tokenizer = None

    def config(self) -> dict:
        from pipelines.tokenizer import tokenizer_identity

        return {
            "heldout_fraction": self.heldout_fraction,
            "long_doc_tokens": self.long_doc_tokens,
            "max_doc_tokens": self.max_doc_tokens,
            "hist_bins": HIST_BINS,
            "heldout_rule": HELDOUT_RULE,
            "tokenizer": tokenizer_identity(self.tokenizer_path),
        }

    def setup(self) -> None:
        from pipelines.tokenizer import load_tokenizer

        self._tokenizer = load_tokenizer(self.tokenizer_path)

    def _pieces(self, doc: dict, offsets: list[tuple[int, int]]) -> list[dict]:
        """Cut a document longer than max_doc_tokens at token boundaries (whole characters, nothing lost)."""
        text, m = doc["text"], self.max_doc_tokens
        starts = [offsets[k][0] for k in range(0, len(offsets), m)]
        starts[0] = 0
        ends = starts[1:] + [len(text)]
        return [{**doc, "id": f"{doc['id']}#{k}", "text": text[a:b]} for k, (a, b) in enumerate(zip(starts, ends))]

    def process_batch(self, docs: list[dict]) -> Iterator[tuple[dict, str | None]]:
        if self._tokenizer is None:
            self.setup()
        encodings = self._tokenizer.encode_batch([d["text"] for d in docs], add_special_tokens=False)
        out: list[dict] = []
        for doc, enc in zip(docs, encodings, strict=True):
            if not enc.ids:
                yield doc, "no_tokens"
                continue
            heldout = is_heldout(lineage_id(doc), self.heldout_fraction)
            doc.update(bucket=bucket_of(doc), copy=0, heldout=heldout)
            if len(enc.ids) <= self.max_doc_tokens:
                out.append({**doc, "n_tokens": len(enc.ids)})
                continue
            pieces = self._pieces(doc, enc.offsets)
            # Counted again: a cut can change how the BPE merges at the edges by a token.
            counts = self._tokenizer.encode_batch([p["text"] for p in pieces], add_special_tokens=False)
            out += [{**p, "n_tokens": len(c.ids)} for p, c in zip(pieces, counts, strict=True) if c.ids]
        for doc in out:
            yield doc, None

    def new_summary(self) -> dict:
        return {"buckets": {}}

    def summarize(self, doc: dict, summary: dict) -> None:
        n = doc["n_tokens"]
        b = summary["buckets"].setdefault(
            doc["bucket"],
            {
                "docs": 0,
                "tokens": 0,
                "max_doc_tokens": 0,
                "heldout_docs": 0,
                "heldout_tokens": 0,
                "long_docs": 0,
                "long_tokens": 0,
                "hist": [0] * HIST_BINS,
                "long_hist": [0] * HIST_BINS,
            },
        )
        if doc["heldout"]:
            b["heldout_docs"] += 1
            b["heldout_tokens"] += n
            return
        bin_ = doc_bin(doc["id"])
        b["docs"] += 1
        b["tokens"] += n
        b["max_doc_tokens"] = max(b["max_doc_tokens"], n)
        b["hist"][bin_] += n
        if n >= self.long_doc_tokens:
            b["long_docs"] += 1
            b["long_tokens"] += n
            b["long_hist"][bin_] += n


def run_index(
    inputs: str | Sequence[str],
    output_dir: str,
    heldout_fraction: float = 0.01,
    long_doc_tokens: int = 4096,
    max_doc_tokens: int = 32768,
    beam_args: Sequence[str] | None = None,
    workers: int | None = None,
) -> dict:
    indexer = MixIndexer(heldout_fraction, long_doc_tokens, max_doc_tokens)
    return run_shard_stage(indexer, inputs, output_dir, beam_args, workers)


# --------------------------------------------------------------------------- plan


def _rotated(hist: list[int], offset: int) -> list[int]:
    return hist[offset:] + hist[:offset]


def _cut_bin(hist: list[int], target: float) -> int:
    """Smallest number of leading bins whose tokens come closest to ``target``."""
    best, best_err, total = 0, target, 0
    for k, tokens in enumerate(hist, start=1):
        total += tokens
        if abs(total - target) < best_err:
            best, best_err = k, abs(total - target)
        if total >= target:
            break
    return best


def plan_mixture(config: MixtureConfig, index_summary: dict, split: str = "train") -> dict:
    """Per-bucket targets and the copy rule for ``select``; pure, so it is tested and shown before any run."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    buckets = index_summary.get("buckets") or {}
    if not buckets:
        raise ValueError("the mixture index has no documents")
    offset = config.seed % HIST_BINS
    plan: dict = {
        "mixture": config.to_dict(),
        "mixture_fingerprint": config.fingerprint(),
        "split": split,
        "offset": offset,
        "heldout_fraction": index_summary["heldout_fraction"],
        "long_doc_tokens": index_summary["long_doc_tokens"] if config.long_documents_only else 0,
        "buckets": {},
    }
    if split == "validation":  # the held-out slice once, in its natural mix, whatever the weights
        for name, b in sorted(buckets.items()):
            if b["heldout_docs"]:
                plan["buckets"][name] = {"target_tokens": b["heldout_tokens"], "full_copies": 1, "cut_bin": 0}
        plan["planned_tokens"] = sum(b["target_tokens"] for b in plan["buckets"].values())
        return plan

    key = "long_tokens" if config.long_documents_only else "tokens"
    hist_key = "long_hist" if config.long_documents_only else "hist"
    available = {name: b[key] for name, b in buckets.items() if b[key] > 0}
    if not available:
        what = f"documents of >= {index_summary['long_doc_tokens']} tokens" if config.long_documents_only else "data"
        raise ValueError(f"no training {what} in the mixture index")

    by_domain: dict[str, dict[str, int]] = {}
    for name, tokens in available.items():
        domain, lang = _domain_lang(name)
        by_domain.setdefault(domain, {})[name] = tokens
    weighted = {d: w for d, w in config.domain_weights.items() if w > 0 and d in by_domain}
    plan["missing_domains"] = sorted(d for d, w in config.domain_weights.items() if w > 0 and d not in by_domain)
    plan["unweighted_domains"] = sorted(d for d in by_domain if d not in weighted)
    if not weighted:
        raise ValueError(
            f"no domain with data has a weight: data in {sorted(by_domain)}, weights {config.domain_weights}"
        )
    domain_total = sum(weighted.values())

    weights: dict[str, float] = {}
    for domain, w_domain in weighted.items():
        members = by_domain[domain]
        raw = {
            name: tokens ** (1 / config.language_temperature) * config.language_boost.get(_domain_lang(name)[1], 1.0)
            for name, tokens in members.items()
        }
        norm = sum(raw.values()) or 1.0
        for name, r in raw.items():
            weights[name] = w_domain / domain_total * r / norm

    # Targets, then the repeat cap: a capped bucket's excess goes to the uncapped ones by weight.
    targets = {name: config.token_budget * w for name, w in weights.items() if w > 0}
    caps = {name: config.max_repeats * available[name] for name in targets}
    capped: set[str] = set()
    for _ in range(len(targets)):
        over = {n for n in targets if n not in capped and targets[n] > caps[n]}
        if not over:
            break
        excess = sum(targets[n] - caps[n] for n in over)
        for n in over:
            targets[n] = caps[n]
        capped |= over
        free = [n for n in targets if n not in capped]
        free_weight = sum(weights[n] for n in free)
        if not free or free_weight <= 0:
            break
        for n in free:
            targets[n] += excess * weights[n] / free_weight

    # Whole documents make each bucket land up to a document off its target; carrying that error into the
    # next buckets' cuts keeps the total on budget even when targets are only a few documents long. A bucket
    # takes at most its own share of the carry (its tolerance, or one document), so a coarse cut in a big bucket
    # cannot zero the small buckets after it.
    carry = 0.0
    for name in sorted(available):
        avail = available[name]
        target = targets.get(name, 0.0)
        room = max(config.tolerance * target, buckets[name]["max_doc_tokens"])
        aim = min(max(target - min(max(carry, -room), room), 0.0), caps.get(name, 0.0)) if target > 0 else 0.0
        full = int(math.floor(aim / avail + 1e-12))
        hist = _rotated(buckets[name][hist_key], offset)
        cut = _cut_bin(hist, aim - full * avail) if aim > full * avail else 0
        planned = full * avail + sum(hist[:cut])
        carry += planned - target
        plan["buckets"][name] = {
            "weight": round(weights.get(name, 0.0), 6),
            "available_tokens": avail,
            "target_tokens": round(target),
            "planned_tokens": planned,
            "full_copies": full,
            "cut_bin": cut,
            "max_copies": full + (1 if cut else 0),
            "capped": name in capped,
            "max_doc_tokens": buckets[name]["max_doc_tokens"],
        }
    plan["planned_tokens"] = sum(b["planned_tokens"] for b in plan["buckets"].values())
    plan["budget_reachable"] = plan["planned_tokens"] >= config.token_budget * (1 - config.tolerance)
    return plan


def copies_for(plan: dict, doc_id: str, bucket: str, n_tokens: int, heldout: bool) -> int:
    """How many times the document enters the mix (0 = not at all)."""
    if heldout != (plan["split"] == "validation"):
        return 0
    rule = plan["buckets"].get(bucket)
    if rule is None or n_tokens < plan["long_doc_tokens"]:
        return 0
    rotated_bin = (doc_bin(doc_id) - plan["offset"]) % HIST_BINS
    return rule["full_copies"] + (1 if rotated_bin < rule["cut_bin"] else 0)


# --------------------------------------------------------------------------- select


def _emit_copies(path: str, plan: dict) -> Iterator[tuple[int, tuple[int, dict]]]:
    """(output shard, (position key, row)) for every copy of every selected document of one index shard."""
    import pyarrow.parquet as pq

    fs, fpath = filesystem(path)
    seed, shards = plan["mixture"]["seed"], plan["mixture"]["output_shards"]
    with fs.open(fpath, "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                for c in range(copies_for(plan, row["id"], row["bucket"], row["n_tokens"], row["heldout"])):
                    row_copy = {**row, "copy": c}
                    yield _hash64(seed, "shard", row["id"], c) % shards, (_hash64(seed, "pos", row["id"], c), row_copy)


def _write_part(item: tuple[int, list], stage: ShardStage, fingerprint: str) -> dict:
    part, rows = item
    key = f"part-{part:05d}"
    return stage.shard(key, fingerprint, lambda: _part_rows(sorted(rows, key=lambda kv: kv[0]), stage, key), "select")


def _part_rows(rows: list, stage: ShardStage, key: str) -> dict:
    """Write one output part (its rows already in their seeded order) and return its counters."""
    writer = ShardWriter(stage.output, "data", key, schema=MIXED_SCHEMA)
    stats: dict = {"docs_out": 0, "tokens": 0, "buckets": {}, "languages": {}, "copies": {}}
    try:
        for _, row in rows:
            writer.write(row)
            n = row["n_tokens"]
            stats["docs_out"] += 1
            stats["tokens"] += n
            stats["buckets"][row["bucket"]] = stats["buckets"].get(row["bucket"], 0) + n
            lang = _domain_lang(row["bucket"])[1]
            stats["languages"][lang] = stats["languages"].get(lang, 0) + n
            stats["copies"][str(row["copy"])] = stats["copies"].get(str(row["copy"]), 0) + 1
            stats["bytes_out"] = stats.get("bytes_out", 0) + len(row["text"].encode("utf-8"))
    except BaseException:
        writer.abort()
        raise
    writer.commit(always=True)
    return stats


def realised_report(plan: dict, summary: dict, tolerance: float) -> dict:
    """Realised tokens per bucket against the plan and the target, and whether the mix passes.

    A bucket passes when it realised exactly what the plan's histogram cut promised (the machinery is exact)
    and that is within ``tolerance`` of its target or two documents (whole documents, plus the carried error
    of the bucket before it).
    """
    rows, failures = [], []
    realised = summary.get("buckets", {})
    for name, rule in sorted(plan["buckets"].items()):
        target = rule["target_tokens"]
        planned = rule.get("planned_tokens", target)
        got = realised.get(name, 0)
        slack = max(tolerance * target, 2 * rule.get("max_doc_tokens", 0))
        ok = got == planned and abs(got - target) <= slack
        available = rule.get("available_tokens") or target or 1
        rows.append(
            {
                "bucket": name,
                "weight": rule.get("weight"),
                "available_tokens": rule.get("available_tokens"),
                "target_tokens": target,
                "planned_tokens": planned,
                "realised_tokens": got,
                "deviation": round(got / target - 1, 4) if target else None,
                "epochs": round(got / available, 3),
                "max_copies": rule["max_copies"] if "max_copies" in rule else rule["full_copies"],
                "capped": rule.get("capped", False),
                "ok": ok,
            }
        )
        if not ok:
            failures.append(name)
    # The whole mix against the budget (or what the repeat cap allows), with one document of slack.
    total_target = plan["planned_tokens"]
    if plan["split"] == "train" and plan.get("budget_reachable"):
        total_target = plan["mixture"]["token_budget"]
    total = summary.get("tokens", 0)
    granularity = max((rule.get("max_doc_tokens", 0) for rule in plan["buckets"].values()), default=0)
    total_ok = abs(total - total_target) <= max(tolerance * total_target, granularity)
    return {
        "buckets": rows,
        "target_tokens": total_target,
        "realised_tokens": total,
        "passed": not failures and total_ok,
        "failed_buckets": failures + ([] if total_ok else ["(total)"]),
    }


def run_select(
    index_dir: str,
    output_dir: str,
    config: MixtureConfig | None = None,
    split: str = "train",
    beam_args: Sequence[str] | None = None,
    workers: int | None = None,
) -> dict:
    """Realise ``config`` from the index into ``output_dir``; returns the summary with the plan and the mix check."""
    import apache_beam as beam

    config = config or MixtureConfig()
    index_summary = read_json(join(index_dir, SUCCESS_FILE))
    index_config = read_json(join(index_dir, "_config.json"))
    if index_summary is None or index_config is None:
        raise ValueError(f"{index_dir} is not a finished mixture index (run `python -m pipelines.mixing index` first)")
    index_summary = {**index_summary, **index_config["processor"]}
    plan = plan_mixture(config, index_summary, split)
    index_identity = hashlib.sha256(json.dumps(index_summary, sort_keys=True).encode()).hexdigest()[:16]
    fingerprint = hashlib.sha256(json.dumps([plan, index_identity], sort_keys=True).encode()).hexdigest()[:16]
    stage_config = {"stage": "mix_select", "plan_fingerprint": fingerprint, "index": index_dir}
    with ShardStage(output_dir, stage_config, [index_dir]) as stage:
        stage.keep_only(f"part-{k:05d}" for k in range(config.output_shards))  # and parts a killed run left
        files = list_shards(index_dir)
        beam_counters = run_pipeline(
            lambda p: (
                p
                | "IndexShards" >> beam.Create(files)
                | "Spread" >> beam.Reshuffle()
                | "Copies" >> beam.FlatMap(_emit_copies, plan)
                | "Shuffle" >> beam.GroupByKey()
                | "WriteParts" >> beam.Map(_write_part, stage, fingerprint)
            ),
            beam_args,
            workers,
        )
        keys = committed_keys(output_dir)
        summary = stage.summed(keys)
        mix_check = realised_report(plan, summary, config.tolerance)
        fields = {"stage": "mix_select", "output": output_dir, "shards": len(keys), "beam_counters": beam_counters}
        return stage.finish(summary=summary, **fields, plan=plan, mix_check=mix_check)


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    idx = sub.add_parser("index", help="bucket and count the tokens of curated documents")
    idx.add_argument("--input", required=True, help="curated stage folder(s) or globs, comma-separated")
    idx.add_argument("--output", required=True)
    idx.add_argument(
        "--long-doc-tokens", type=bounded(int, 1), default=4096, help="stage-1 context: longer documents are long"
    )
    idx.add_argument(
        "--max-doc-tokens",
        type=bounded(int, 1),
        default=32768,
        help="stage-2 context: longer documents are cut into pieces",
    )
    idx.add_argument("--workers", type=bounded(int, 1), default=None)
    settings_parser(MixtureIndexSettings, parser=idx)  # --heldout-fraction, --config FILE
    sel = sub.add_parser("select", help="realise a mixture from the index")
    sel.add_argument("--index", required=True)
    sel.add_argument("--output", required=True)
    sel.add_argument("--split", choices=SPLITS, default="train")
    sel.add_argument("--workers", type=bounded(int, 1), default=None)
    for name in MIXTURE_RUN_FIELDS:  # --name, --long-documents-only (stage 2)
        flags, kwargs = settings_argument(name, MixtureConfig.model_fields[name])
        sel.add_argument(*flags, **kwargs)
    settings_parser(MixtureSettings, parser=sel)  # --token-budget, --domain-weights ..., --config FILE
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] not in ([], ["index"], ["select"]):  # --help, or a mistake of the command
        parser.parse_args(argv)
    if argv[:1] == ["index"]:
        # each command its own parser, so the settings are parsed where the stages parse theirs
        args, settings = parse_settings(idx, argv[1:])
        inputs = args.input.split(",")
        summary = run_index(
            inputs,
            args.output,
            settings.heldout_fraction,
            args.long_doc_tokens,
            args.max_doc_tokens,
            workers=args.workers,
        )
    else:
        # select (the default command): its own parser, so the settings are parsed where the stages parse theirs
        args, settings = parse_settings(sel, argv[1:])
        try:
            run_values = {name: getattr(args, name) for name in MIXTURE_RUN_FIELDS if hasattr(args, name)}
            config = MixtureConfig(**settings.model_dump(), **run_values)
        except ValueError as e:
            sel.error(str(e))
        summary = run_select(args.index, args.output, config, args.split, workers=args.workers)
        summary.pop("plan", None)
    print_summary(summary)


if __name__ == "__main__":
    cli(main)
