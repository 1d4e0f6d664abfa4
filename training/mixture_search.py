"""Mixture search on proxy models: Qwen2 tuned its data mix on scaled-down models (report, section 3.1).

    python -m training.mixture_search --index data/mix/index --work-dir data/mix/search --seq-len 256 \\
        --steps 12 --seeds 2 [--candidates candidates.json] [--target natural] \\
        [--target-domain-weights '{"web": 2, "code": 1}']

Every candidate is a ``pipelines.mixing.MixtureConfig`` (the JSON file holds a list of their fields; without it,
``DEFAULT_CANDIDATES``). For each one, with the same token budget: realise the mix from the index, tokenize and
pack it, and train a proxy-size Qwen2 from scratch for the same steps, once per seed (``seeds`` runs: the seeds
change the proxy's initial weights and data order; the realised mix is the candidate's own, the same for all).

Every proxy is scored on the index's held-out documents (never trained on), bucket by bucket: each bucket's
held-out documents, in a fixed hash order up to ``eval_tokens_per_bucket`` tokens, are packed at the proxy's
context with per-document masking as in training, and the bucket's loss is the token mean. The validation loss
is the **target mix** of those bucket losses, not the held-out slice's natural mix (which would favour the
candidate closest to the natural mix): by default every domain weighs the same and, inside a domain, every
language weighs the same (``target="equal"``; ``target_domain_weights`` re-weights domains, ``target="natural"``
weighs buckets by their held-out tokens). The natural-mix loss and every bucket's loss are reported beside it.

A candidate's validation loss is the mean over its seeds, shown with the seeds' standard deviation. The lowest
mean is the winner, and every candidate whose mean is within ``tie_sigmas`` standard errors of the winner's,
``sqrt(s_a^2/n_a + s_b^2/n_b)``, is reported as tied with it: the search cannot tell them apart, and
``decision`` says ``tie`` (with 2 seeds this is a rough screen; more seeds sharpen it). ``search.json`` lists
every candidate side by side. A finished candidate is not trained again when the search is rerun with the same
index and settings.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from pipelines.mixing import MixtureConfig, run_select
from pipelines.mixing_settings import SEARCH_RUN_FIELDS, SearchConfig, SearchSettings
from pipelines.settings import ArgumentParser, parse_settings, settings_parser
from pipelines.settings import _argument as settings_argument
from pipelines.shards import SUCCESS_FILE, join, read_json, write_json_atomic
from pipelines.tokenize_shards import run_tokenize_stage
from training.pretrain import run
from training.pretrain_settings import PretrainConfig

# Each candidate keeps the recipe's instruction share (DEFAULT_DOMAIN_WEIGHTS: 0.05, taken from web), so the winner's
# weights, which the mixture assets use, still mix in the instruction documents; the candidates differ elsewhere.
DEFAULT_CANDIDATES: list[dict] = [
    {
        "name": "balanced",
        "domain_weights": {"web": 0.55, "code": 0.2, "math": 0.1, "synthetic": 0.1, "instruction": 0.05},
    },
    {
        "name": "web-natural",
        "domain_weights": {"web": 0.8, "code": 0.15, "instruction": 0.05},
        "language_temperature": 1.0,
    },
    {"name": "code-heavy", "domain_weights": {"web": 0.4, "code": 0.45, "math": 0.1, "instruction": 0.05}},
]


# ---- the validation set: held-out documents per bucket ----------------------------------------------------------


def heldout_eval_set(index_dir: str, tokens_per_bucket: int) -> dict[str, list[list[int]]]:
    """Token ids of held-out documents per bucket, each ending with ``<|endoftext|>`` as packed documents do.

    The documents of a bucket are taken in a fixed hash order until ``tokens_per_bucket`` (0: all); only that
    many are held in memory per bucket, however large the index.
    """
    from pipelines.mixing import _hash64
    from pipelines.shards import iter_stage_rows
    from pipelines.tokenizer import ENDOFTEXT_ID, load_tokenizer

    kept: dict[str, list[tuple[int, int, str]]] = {}  # bucket -> max-heap of (-hash, n_tokens, text)
    totals: dict[str, int] = {}
    for row in iter_stage_rows(index_dir, ["id", "text", "bucket", "heldout", "n_tokens"]):
        if not row["heldout"]:
            continue
        bucket, n = row["bucket"], row["n_tokens"]
        heap = kept.setdefault(bucket, [])
        heapq.heappush(heap, (-_hash64("eval", row["id"]), n, row["text"]))
        totals[bucket] = totals.get(bucket, 0) + n
        # Drop the last documents in hash order while the rest still hold the budget.
        while tokens_per_bucket and len(heap) > 1 and totals[bucket] - heap[0][1] >= tokens_per_bucket:
            totals[bucket] -= heapq.heappop(heap)[1]
    tokenizer = load_tokenizer()
    out = {}
    for bucket, heap in sorted(kept.items()):
        texts = [text for _, _, text in sorted(heap, reverse=True)]  # ascending hash
        docs = [enc.ids + [ENDOFTEXT_ID] for enc in tokenizer.encode_batch(texts, add_special_tokens=False)]
        budget, taken = tokens_per_bucket or math.inf, []
        for doc in docs:
            if budget <= 0:
                break
            taken.append(doc[: int(min(len(doc), budget))])
            budget -= len(taken[-1])
        out[bucket] = taken
    return out


def pack_rows(docs: list[list[int]], seq_len: int) -> list[tuple[list[int], list[int]]]:
    """``docs`` packed into rows of ``seq_len`` tokens (the last one shorter) with their segment lengths, as the
    tokenize stage packs them: a document runs on into the next row, a segment ends at every row boundary."""
    rows, ids, lengths = [], [], []
    for doc in docs:
        i = 0
        while i < len(doc):
            take = min(seq_len - len(ids), len(doc) - i)
            ids += doc[i : i + take]
            lengths.append(take)
            i += take
            if len(ids) == seq_len:
                rows.append((ids, lengths))
                ids, lengths = [], []
    if ids:
        rows.append((ids, lengths))
    return rows


def bucket_losses(model_dir: str, eval_set: dict[str, list[list[int]]], seq_len: int) -> dict[str, list[float]]:
    """{bucket: [summed token loss, predicted tokens]} of the saved model ``model_dir`` on ``eval_set``.

    Rows are masked per document as in training (``training.data.positions_and_labels``: positions restart at
    every segment, a segment's first token is not predicted); logits are made 512 positions at a time, so the
    151,936-column output layer never holds a whole batch.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from training.data import IGNORE_INDEX, positions_and_labels

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True).eval()
    out: dict[str, list[float]] = {}
    with torch.no_grad():
        for bucket, docs in eval_set.items():
            loss_sum, count = 0.0, 0
            rows = pack_rows(docs, seq_len)
            for start in range(0, len(rows), 8):
                batch = rows[start : start + 8]
                for width in sorted({len(ids) for ids, _ in batch}):  # the short last row goes alone
                    same = [r for r in batch if len(r[0]) == width]
                    input_ids = torch.tensor([ids for ids, _ in same], dtype=torch.long)
                    positions, labels = positions_and_labels(input_ids, [np.asarray(lens) for _, lens in same])
                    hidden = model.model(input_ids=input_ids, position_ids=positions, use_cache=False)
                    hidden = hidden.last_hidden_state[:, :-1].reshape(-1, model.config.hidden_size)
                    targets = labels[:, 1:].reshape(-1)
                    keep = targets != IGNORE_INDEX
                    hidden, targets = hidden[keep], targets[keep]
                    for i in range(0, targets.numel(), 512):
                        logits = model.lm_head(hidden[i : i + 512]).float()
                        loss_sum += float(F.cross_entropy(logits, targets[i : i + 512], reduction="sum"))
                    count += int(targets.numel())
            out[bucket] = [loss_sum, count]
    return out


def _domain(bucket: str) -> str:
    return bucket.partition("/")[0]


def target_weights(buckets: dict[str, int], search: SearchConfig) -> dict[str, float]:
    """Weight of each bucket (name -> held-out tokens) in the validation target; they sum to 1."""
    if search.target == "natural":
        total = sum(buckets.values()) or 1
        return {b: n / total for b, n in sorted(buckets.items())}
    by_domain: dict[str, list[str]] = {}
    for bucket, tokens in sorted(buckets.items()):
        if tokens > 0:
            by_domain.setdefault(_domain(bucket), []).append(bucket)
    domain_weight = {d: search.target_domain_weights.get(d, 0.0) for d in by_domain}
    if not search.target_domain_weights:
        domain_weight = dict.fromkeys(by_domain, 1.0)
    total = sum(domain_weight.values())
    if total <= 0:
        raise ValueError(
            f"target_domain_weights {search.target_domain_weights} give no weight to a domain with held-out "
            f"documents ({', '.join(sorted(by_domain))})"
        )
    weights = dict.fromkeys(buckets, 0.0)
    for domain, members in by_domain.items():
        for bucket in members:
            weights[bucket] = domain_weight[domain] / total / len(members)
    return weights


def score(losses: dict[str, list[float]], weights: dict[str, float]) -> dict[str, Any]:
    """The target-mix loss, the natural-mix loss and the per-bucket losses of one proxy."""
    per_bucket = {b: s / n for b, (s, n) in losses.items() if n}
    target = sum(weights[b] * per_bucket[b] for b in per_bucket if weights.get(b))
    norm = sum(weights[b] for b in per_bucket if weights.get(b))
    natural = sum(s for s, _ in losses.values()) / max(1, sum(n for _, n in losses.values()))
    return {"val_loss": target / norm if norm else float("nan"), "natural_val_loss": natural, "buckets": per_bucket}


# ---- candidates --------------------------------------------------------------------------------------------------


def _key(candidate: MixtureConfig, search: SearchConfig, index_identity: str) -> str:
    payload = [candidate.fingerprint(), search.model_dump() | {"workers": None}, index_identity]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def evaluate_candidate(
    candidate: MixtureConfig,
    search: SearchConfig,
    eval_set: dict[str, list[list[int]]],
    weights: dict[str, float],
    index_identity: str = "",
) -> dict:
    """Mix, pack and train ``search.seeds`` proxies of one candidate; returns its row of the comparison (cached by
    content: candidate, search settings and index)."""
    work = Path(search.work_dir) / candidate.name
    key = _key(candidate, search, index_identity)
    cached = read_json(str(work / "result.json"))
    if cached is not None and cached.get("key") == key:
        return cached
    started = time.time()
    mix = run_select(search.index, str(work / "mix"), candidate, workers=search.workers)
    packed = run_tokenize_stage(
        str(work / "mix"), str(work / "tokens"), seq_len=search.seq_len, seed=search.seed, workers=search.workers
    )
    runs = []
    for seed in range(search.seed, search.seed + search.seeds):
        train = run(
            PretrainConfig(
                data=str(work / "tokens"),
                output_dir=str(work / f"proxy-seed{seed}"),
                model_size=search.model_size,
                max_steps=search.steps,
                micro_batch_size=search.micro_batch_size,
                lr=search.lr,
                min_lr=search.lr / 10,
                warmup_steps=max(1, search.steps // 10),
                seed=seed,
                checkpoint_every=search.steps,
            )
        )
        scored = score(bucket_losses(train["final_dir"], eval_set, search.seq_len), weights)
        runs.append({"seed": seed, "train_loss": train.get("final_loss"), **scored})
    losses = [r["val_loss"] for r in runs]
    result = {
        "key": key,
        "name": candidate.name,
        "mixture": candidate.to_dict(),
        "mixture_fingerprint": candidate.fingerprint(),
        "realised_tokens": mix["tokens"],
        "mix_check_passed": mix["mix_check"]["passed"],
        "bucket_tokens": mix.get("buckets", {}),
        "train_tokens": packed.get("tokens"),
        "train_loss": statistics.fmean(r["train_loss"] for r in runs),
        "val_loss": statistics.fmean(losses),
        "val_loss_std": statistics.stdev(losses),
        "val_loss_by_seed": losses,
        "natural_val_loss": statistics.fmean(r["natural_val_loss"] for r in runs),
        "bucket_val_loss": {b: statistics.fmean(r["buckets"][b] for r in runs) for b in runs[0]["buckets"]},
        "seeds": [r["seed"] for r in runs],
        "seconds": round(time.time() - started, 1),
    }
    write_json_atomic(str(work / "result.json"), result)
    return result


def decide(rows: list[dict], tie_sigmas: float) -> dict:
    """The winner (lowest mean validation loss) and the candidates within ``tie_sigmas`` standard errors of it."""
    winner = min(rows, key=lambda r: r["val_loss"])
    tied = []
    for row in rows:
        gap = row["val_loss"] - winner["val_loss"]
        se = math.sqrt(
            row["val_loss_std"] ** 2 / len(row["val_loss_by_seed"])
            + winner["val_loss_std"] ** 2 / len(winner["val_loss_by_seed"])
        )
        row["gap_to_winner"] = gap
        row["gap_standard_errors"] = round(gap / se, 3) if se > 0 else None  # None: no spread to measure it by
        if row is not winner and gap <= tie_sigmas * se:
            tied.append(row["name"])
    return {"winner": winner, "tied_with_winner": tied, "decision": "tie" if tied else "clear"}


def _pipes_session():
    """One Dagster Pipes session for the whole search when Dagster launched it (the proxy runs log into it)."""
    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    if PipesEnvVarParamsLoader().is_dagster_pipes_process():
        return open_dagster_pipes()
    return contextlib.nullcontext()


def run_search(search: SearchConfig, candidates: list[MixtureConfig]) -> dict:
    names = [c.name for c in candidates]
    if not candidates or len(set(names)) != len(names):
        raise ValueError(f"candidates need distinct names, got {names}")
    index_summary = read_json(join(search.index, SUCCESS_FILE))
    if index_summary is None:
        raise ValueError(f"{search.index} is not a finished mixture index (run `python -m pipelines.mixing index`)")
    index_identity = hashlib.sha256(json.dumps(index_summary, sort_keys=True).encode()).hexdigest()[:16]
    eval_set = heldout_eval_set(search.index, search.eval_tokens_per_bucket)
    if not eval_set:
        raise ValueError(f"{search.index} holds no held-out documents: index with a heldout_fraction above 0")
    eval_tokens = {b: sum(len(d) for d in docs) for b, docs in eval_set.items()}
    weights = target_weights(eval_tokens, search)
    rows = []
    with _pipes_session() as pipes:
        say = pipes.log.info if pipes is not None else (lambda message: print(message, flush=True))
        say(f"[mixture search] validation: {sum(eval_tokens.values()):,} held-out tokens in {len(eval_set)} buckets")
        for candidate in candidates:
            say(f"[mixture search] {candidate.name}: mixing, packing, training {search.seeds} proxies")
            rows.append(evaluate_candidate(candidate, search, eval_set, weights, index_identity))
            row = rows[-1]
            say(f"[mixture search] {candidate.name}: validation loss {row['val_loss']:.4f} ± {row['val_loss_std']:.4f}")
    decision = decide(rows, search.tie_sigmas)
    winner = decision["winner"]
    summary = {
        "search": search.model_dump(),
        "target": {"kind": search.target, "weights": weights, "heldout_tokens": eval_tokens},
        "candidates": rows,
        "winner": winner["name"],
        "winner_mixture": winner["mixture"],
        "decision": decision["decision"],
        "tied_with_winner": decision["tied_with_winner"],
    }
    write_json_atomic(str(Path(search.work_dir) / "search.json"), summary)
    return summary


def candidates_from(data: list[dict], **shared) -> list[MixtureConfig]:
    """MixtureConfigs from dicts of fields; ``shared`` (budget, seed ...) applies to every candidate."""
    return [MixtureConfig.from_dict({**c, **shared}) for c in data]


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m training.mixture_search", description=__doc__.splitlines()[0])
    run_group = parser.add_argument_group("run", "The index, the work folder, the context and the workers.")
    for name in SEARCH_RUN_FIELDS:
        flags, kwargs = settings_argument(name, SearchConfig.model_fields[name])
        run_group.add_argument(*flags, **kwargs)
    run_group.add_argument("--candidates", default=None, help="JSON list of MixtureConfig field dicts")
    args, settings = parse_settings(settings_parser(SearchSettings, parser=parser), argv)
    try:
        run_values = {name: getattr(args, name) for name in SEARCH_RUN_FIELDS if hasattr(args, name)}
        search = SearchConfig(**settings.model_dump(), **run_values)
    except ValueError as e:
        parser.error(str(e))
    raw = json.loads(Path(args.candidates).read_text()) if args.candidates else DEFAULT_CANDIDATES
    summary = run_search(search, candidates_from(raw, token_budget=search.token_budget, seed=search.seed))
    for row in summary["candidates"]:
        print(
            f"{row['name']:<16} val_loss {row['val_loss']:.4f} ± {row['val_loss_std']:.4f}  "
            f"natural {row['natural_val_loss']:.4f}  train_loss {row['train_loss']:.4f}  "
            f"tokens {row['realised_tokens']:,}"
        )
    tied = summary["tied_with_winner"]
    print(f"winner: {summary['winner']}" + (f" (a tie, within the noise: {', '.join(tied)})" if tied else ""))


if __name__ == "__main__":
    from pipelines.beam_stage import cli

    cli(main)
