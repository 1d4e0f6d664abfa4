"""Mixture search on proxy models: Qwen2 tuned its data mix on scaled-down models (report, section 3.1).

    python -m training.mixture_search --index data/mix/index --validation data/mix/validation_tokens \\
        --work-dir data/mix/search --seq-len 256 --steps 12 [--candidates candidates.json]

Every candidate is a ``pipelines.mixing.MixtureConfig`` (the JSON file holds a list of their
fields; without it, ``DEFAULT_CANDIDATES``). For each one, with the same token budget: realise
the mix from the index, tokenize and pack it, train a proxy-size Qwen2 model from scratch for
the same steps, and measure its loss on the held-out validation shards (the same documents for
every candidate, never trained on). The lowest validation loss wins; ``search.json`` lists every
candidate side by side. A finished candidate is not trained again when the search is rerun.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import time
from pathlib import Path

from pipelines.mixing import MixtureConfig, run_select
from pipelines.shards import read_json, write_json_atomic
from pipelines.tokenize_shards import run_tokenize_stage
from training.pretrain import PretrainConfig, run

DEFAULT_CANDIDATES: list[dict] = [
    {"name": "balanced", "domain_weights": {"web": 0.6, "code": 0.2, "math": 0.1, "synthetic": 0.1}},
    {"name": "web-natural", "domain_weights": {"web": 0.85, "code": 0.15}, "language_temperature": 1.0},
    {"name": "code-heavy", "domain_weights": {"web": 0.45, "code": 0.45, "math": 0.1}},
]


@dataclasses.dataclass
class SearchConfig:
    """How every proxy model is trained; the same for all candidates so their losses compare."""

    index: str
    """Mixture index (``pipelines.mixing index``)."""
    validation: str
    """Packed validation shards made from the index's held-out slice."""
    work_dir: str
    """Where each candidate's mix, shards, proxy run and ``search.json`` go."""
    seq_len: int = 256
    """Proxy context length (the stage-1 context)."""
    steps: int = 12
    """Optimizer steps per proxy model."""
    micro_batch_size: int = 4
    """Sequences per step."""
    model_size: str = "proxy"
    """Proxy model shape (see ``training.model_configs``)."""
    lr: float = 5e-2
    """Peak learning rate of the proxy runs (short runs of tiny models learn fastest at a high rate)."""
    seed: int = 0
    """Same seed for every candidate: only the data differs."""
    workers: int | None = None
    """Beam worker processes for the data steps."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.micro_batch_size < 1 or self.seq_len < 8:
            raise ValueError("steps, micro_batch_size must be >= 1 and seq_len >= 8")

    @property
    def token_budget(self) -> int:
        # Document tokens to realise: what the proxy consumes, plus room for separators and the packing tail.
        return int(self.steps * self.micro_batch_size * self.seq_len * 1.1)


def _key(candidate: MixtureConfig, search: SearchConfig) -> str:
    payload = [candidate.fingerprint(), dataclasses.asdict(search) | {"workers": None}]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def evaluate_candidate(candidate: MixtureConfig, search: SearchConfig) -> dict:
    """Mix, pack and train one proxy; returns its row of the comparison (cached by content)."""
    work = Path(search.work_dir) / candidate.name
    key = _key(candidate, search)
    cached = read_json(str(work / "result.json"))
    if cached is not None and cached.get("key") == key:
        return cached
    started = time.time()
    mix = run_select(search.index, str(work / "mix"), candidate, workers=search.workers)
    packed = run_tokenize_stage(
        str(work / "mix"), str(work / "tokens"), seq_len=search.seq_len, seed=search.seed, workers=search.workers
    )
    train = run(
        PretrainConfig(
            data=str(work / "tokens"),
            val_data=search.validation,
            output_dir=str(work / "proxy"),
            model_size=search.model_size,
            max_steps=search.steps,
            micro_batch_size=search.micro_batch_size,
            lr=search.lr,
            min_lr=search.lr / 10,
            warmup_steps=max(1, search.steps // 10),
            seed=search.seed,
            eval_every=search.steps,
            checkpoint_every=search.steps,
        )
    )
    result = {
        "key": key,
        "name": candidate.name,
        "mixture": candidate.to_dict(),
        "mixture_fingerprint": candidate.fingerprint(),
        "realised_tokens": mix["tokens"],
        "mix_check_passed": mix["mix_check"]["passed"],
        "bucket_tokens": mix.get("buckets", {}),
        "train_tokens": packed.get("tokens"),
        "train_loss": train.get("final_loss"),
        "val_loss": train.get("val_loss"),
        "seconds": round(time.time() - started, 1),
    }
    write_json_atomic(str(work / "result.json"), result)
    return result


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
    rows = []
    with _pipes_session() as pipes:
        say = pipes.log.info if pipes is not None else (lambda message: print(message, flush=True))
        for candidate in candidates:
            say(f"[mixture search] {candidate.name}: mixing, packing, training a proxy")
            rows.append(evaluate_candidate(candidate, search))
            say(f"[mixture search] {candidate.name}: validation loss {rows[-1]['val_loss']:.4f}")
    winner = min(rows, key=lambda r: r["val_loss"])
    summary = {
        "search": dataclasses.asdict(search),
        "candidates": rows,
        "winner": winner["name"],
        "winner_mixture": winner["mixture"],
    }
    write_json_atomic(str(Path(search.work_dir) / "search.json"), summary)
    return summary


def candidates_from(data: list[dict], **shared) -> list[MixtureConfig]:
    """MixtureConfigs from dicts of fields; ``shared`` (budget, seed ...) applies to every candidate."""
    return [MixtureConfig.from_dict({**c, **shared}) for c in data]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in dataclasses.fields(SearchConfig):  # one flag per field, defaults from the dataclass
        flag = "--" + f.name.replace("_", "-")
        if f.default is dataclasses.MISSING:
            parser.add_argument(flag, required=True)
        else:
            parser.add_argument(flag, type=type(f.default) if f.default is not None else int, default=f.default)
    parser.add_argument("--candidates", default=None, help="JSON list of MixtureConfig field dicts")
    args = parser.parse_args(argv)
    search = SearchConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SearchConfig)})
    raw = json.loads(Path(args.candidates).read_text()) if args.candidates else DEFAULT_CANDIDATES
    summary = run_search(search, candidates_from(raw, token_budget=search.token_budget, seed=search.seed))
    for row in summary["candidates"]:
        print(
            f"{row['name']:<16} val_loss {row['val_loss']:.4f}  train_loss {row['train_loss']:.4f}  "
            f"tokens {row['realised_tokens']:,}"
        )
    print(f"winner: {summary['winner']}")


if __name__ == "__main__":
    from pipelines.beam_stage import cli

    cli(main)
