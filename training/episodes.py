"""The parts of an online-DPO episode (``training.online_dpo``) that are not the loop: reading and splitting the
prompts, sampling through ``synth.llm`` from the live policy, reward-model scores, best/worst pair formation, the
episode's Parquet shard, the win rate against the SFT model and the reward curve.

Episode shard ``episodes/episode-00000.parquet`` (episode 1 is ``episode-00000``): one row per sample, all K of
every prompt, written atomically (columns ``EPISODE_COLUMNS``; ``score`` is the reward model's
``reward_model_score`` less ``missing_eos_penalty`` for a sample cut off before its end of turn). Each row carries
its prompt's pair: the indices of the chosen (highest score) and rejected (lowest score) samples, the score gap,
whether the pair was kept and why not (``PAIR_REASONS``), and this sample's ``role`` in it. Readable with pyarrow,
pandas or DuckDB (``SELECT * FROM 'episodes/*.parquet'``).

Light at import (no torch, pyarrow or transformers at module top).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.llm.backends import TransformersGenerator

PAIR_REASONS = (
    "kept",  # chosen score > rejected score + margin
    "gap_below_margin",  # the best and worst samples' scores differ by margin or less
    "identical_responses",  # the best and worst samples are the same text
)
EPISODE_COLUMNS = (
    "episode prompt_index prompt_id prompt sample_index response completion_tokens finish_reason score "
    "reward_model_score policy_logp reference_logp reply_tokens chosen_index rejected_index gap pair_kept "
    "pair_reason role"
).split()


@dataclass
class Prompt:
    id: str
    source: str
    messages: list[dict]


# ---- prompts ---------------------------------------------------------------------------------------------------


def prompt_of(messages: Any) -> list[dict] | None:
    """A conversation cut before its last assistant turn (a prompt ending with a user turn is kept as it is), or
    None when what is left is not a valid prompt."""
    from synth.llm.chat import validate_chat

    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        return None
    msgs = [dict(m) for m in messages if isinstance(m, Mapping)]
    if len(msgs) != len(messages):
        return None
    if msgs[-1].get("role") == "assistant":
        msgs = msgs[:-1]
    msgs = [{"role": m.get("role"), "content": m.get("content")} for m in msgs]
    return msgs if msgs and not validate_chat(msgs, final_role="user") else None


def load_prompts(sources: Mapping[str, str], tokenizer: Any, max_prompt_tokens: int) -> tuple[list[Prompt], list]:
    """Every row of every messages source as a Prompt (id: a hash of the prompt's messages, so a prompt shared by
    several conversations is one prompt) or an ``Excluded`` row (``training.chat_data``)."""
    from synth.llm.chat import render_chat
    from training.chat_data import Excluded, read_rows, row_id

    prompts: dict[str, Prompt] = {}
    excluded = []
    for name, path in sources.items():
        for rid, messages in read_rows(path):
            prompt = prompt_of(messages)
            preview = json.dumps(messages, ensure_ascii=False, default=str)[:300]
            if prompt is None:
                why = "not a conversation ending with a user turn (after cutting its last assistant turn)"
                excluded.append(Excluded(str(rid or row_id(name, messages)), name, "not_a_prompt", why, preview))
                continue
            pid = row_id("prompt", prompt)
            if pid in prompts:
                continue
            n = len(tokenizer(render_chat(prompt), add_special_tokens=False)["input_ids"])
            if n > max_prompt_tokens:
                detail = f"{n} prompt tokens > {max_prompt_tokens} (max_len - max_new_tokens)"
                excluded.append(Excluded(pid, name, "too_long", detail, preview))
                continue
            prompts[pid] = Prompt(pid, name, prompt)
    return list(prompts.values()), excluded


def split_prompts(prompts: list[Prompt], heldout: int) -> tuple[list[Prompt], list[Prompt]]:
    """(train, held out): the ``heldout`` prompts first by a hash of their id are held out for the win rate and
    never trained on; the same split whatever the order of the sources."""

    def rank(p: Prompt) -> str:
        return hashlib.sha256(f"online-dpo-heldout/{p.id}".encode()).hexdigest()

    ordered = sorted(prompts, key=rank)
    held = {p.id for p in ordered[:heldout]}
    return [p for p in prompts if p.id not in held], [p for p in ordered[:heldout]]


def episode_prompts(n_train: int, per_episode: int, seed: int, episode: int) -> list[int]:
    """Train-prompt indices of ``episode`` (0-based): passes over the prompts in seeded orders, cut into episodes of
    ``per_episode`` (a pass's tail runs on into the next pass's order)."""
    import numpy as np

    start, end = episode * per_episode, (episode + 1) * per_episode
    out: list[int] = []
    for p in range(start // n_train, (end - 1) // n_train + 1):
        order = np.random.default_rng([seed, p, 13]).permutation(n_train).tolist()
        lo, hi = max(start - p * n_train, 0), min(end - p * n_train, n_train)
        out += order[lo:hi]
    return out


def prompts_fingerprint(prompts: Sequence[Prompt]) -> str:
    return hashlib.sha256(json.dumps([[p.id, p.messages] for p in prompts], sort_keys=True).encode()).hexdigest()


# ---- sampling and scoring --------------------------------------------------------------------------------------


class LiveModelGenerator(TransformersGenerator):
    """``synth.llm``'s transformers backend over a model already in memory: the policy as it is now, so an episode
    samples from the weights the last update left, with no save and reload in between. Same batching, stop tokens
    and per-sample seeds as ``TransformersGenerator`` (a sample does not depend on its batch)."""

    def __init__(self, model: Any, tokenizer: Any, model_id: str, batch_size: int, device: Any) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_path = ""
        self.model_id = model_id
        self.batch_size = batch_size
        self.device = device
        self.tokenizer = tokenizer
        self.model = model
        self.generate_calls = 0


def sample(generator: Any, prompts: Sequence[Prompt], settings: Any, seed: int, n: int, greedy: bool = False):
    """``n`` replies per prompt (greedy: one, temperature 0) as lists of (text, completion tokens, finish reason)."""
    from synth.llm.base import GenerationRequest

    requests = [
        GenerationRequest(
            p.messages,
            max_new_tokens=settings.max_new_tokens,
            temperature=0.0 if greedy else settings.temperature,
            top_p=1.0 if greedy else settings.top_p,
            seed=seed,
            n=n,
            template_version="online-dpo-v1",
        )
        for p in prompts
    ]
    model = getattr(generator, "model", None)
    was_training = getattr(model, "training", False)
    if model is not None:
        model.eval()
    try:
        results = generator.generate(requests)
    finally:
        if was_training:
            model.train()
    return [list(zip(r.texts, r.completion_tokens, r.finish_reasons)) for r in results]


def reply_rows(prompts: Sequence[Prompt], replies: Sequence[Sequence[str]], tokenizer: Any) -> list:
    """Each (prompt, reply) as a tokenized ``preference_data.Pair`` whose both sides are the reply: rows for the
    reward model and for ``dpo.reply_logps`` (the reply mask: its content and closing ``<|im_end|>``)."""
    from training.preference_data import Pair, tokenize_pairs

    rows = []
    for p, texts in zip(prompts, replies):
        for j, text in enumerate(texts):
            reply = [{"role": "assistant", "content": text}]
            rows.append(Pair(f"{p.id}/{j}", p.source, p.messages, reply, reply))
    tokenize_pairs(rows, tokenizer)
    return rows


def row_batches(rows: Sequence, size: int, device: Any):
    """Right-padded batches of ``rows`` (the chosen side of each), ``size`` rows at a time."""
    from pipelines.tokenizer import ENDOFTEXT_ID
    from training.preference_data import pair_tensors

    for i in range(0, len(rows), size):
        chunk = rows[i : i + size]
        yield chunk, {k: v[: len(chunk)].to(device) for k, v in pair_tensors(chunk, ENDOFTEXT_ID).items()}


def reward_scores(reward_model: Any, rows: Sequence, size: int, device: Any, autocast: Any) -> list[float]:
    import torch

    from training.reward_model import scores

    out: list[float] = []
    with torch.no_grad():
        for _, batch in row_batches(rows, size, device):
            with autocast():
                out += scores(reward_model, batch).double().tolist()
    return out


def logps(model: Any, rows: Sequence, size: int, device: Any, autocast: Any) -> tuple[list[float], list[int]]:
    """Summed reply log-probabilities and reply token counts of ``rows`` under ``model`` (no gradient)."""
    import torch

    from training.dpo import reply_logps

    values: list[float] = []
    counts: list[int] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for _, batch in row_batches(rows, size, device):
            with autocast():
                lp, n = reply_logps(model, batch)
            values += lp.tolist()
            counts += n.tolist()
    model.train(was_training)
    return values, counts


def form_pair(scores: Sequence[float], texts: Sequence[str], margin: float) -> dict:
    """The best and worst of a prompt's K samples (the first of equal scores) and whether the pair is kept."""
    best = max(range(len(scores)), key=lambda j: (scores[j], -j))
    worst = min(range(len(scores)), key=lambda j: (scores[j], j))
    gap = scores[best] - scores[worst]
    if texts[best].strip() == texts[worst].strip():
        reason = "identical_responses"
    elif not gap > margin:
        reason = "gap_below_margin"
    else:
        reason = "kept"
    return {"chosen_index": best, "rejected_index": worst, "gap": gap, "pair_kept": reason == "kept",
            "pair_reason": reason}  # fmt: skip


def episode_pairs(
    number: int, batch: Sequence[Prompt], samples: Sequence, rows: Sequence, values: Mapping, K: int, margin: float
) -> tuple[list, dict, list[dict], list[float]]:
    """An episode's DPO pairs, their reference values {pair id: [ref chosen, ref rejected, chosen tokens, rejected
    tokens]}, its shard rows and per-prompt score gaps, from the samples of ``batch`` (K per prompt), their reply
    ``rows`` and ``values`` (lists over all samples in order: ``score``, ``rm_score``, ``policy_lp``, ``ref_lp``,
    ``n_tokens``)."""
    from training.preference_data import Pair

    scores, ref_lp, n_tokens = values["score"], values["ref_lp"], values["n_tokens"]
    pairs, ref, shard, gaps = [], {}, [], []
    for i, (prompt, ss) in enumerate(zip(batch, samples)):
        formed = form_pair(scores[i * K : (i + 1) * K], [s[0] for s in ss], margin)
        c, r = i * K + formed["chosen_index"], i * K + formed["rejected_index"]
        gaps.append(formed["gap"])
        if formed["pair_kept"]:
            chosen, rejected = rows[c], rows[r]  # reply rows: their "chosen" side is the reply
            pair = Pair(f"{number}/{i}", prompt.source, prompt.messages, chosen.chosen, rejected.chosen)
            pair.chosen_ids, pair.chosen_mask = chosen.chosen_ids, chosen.chosen_mask
            pair.rejected_ids, pair.rejected_mask = rejected.chosen_ids, rejected.chosen_mask
            pairs.append(pair)
            ref[pair.id] = [ref_lp[c], ref_lp[r], n_tokens[c], n_tokens[r]]
        for j, (text, tokens, finish) in enumerate(ss):
            role = {formed["rejected_index"]: "rejected", formed["chosen_index"]: "chosen"}.get(j, "")
            x = i * K + j
            shard.append({
                "episode": number, "prompt_index": i, "prompt_id": prompt.id, "prompt": prompt.messages,
                "sample_index": j, "response": text, "completion_tokens": tokens, "finish_reason": finish,
                "score": scores[x], "reward_model_score": values["rm_score"][x], "policy_logp": values["policy_lp"][x],
                "reference_logp": ref_lp[x], "reply_tokens": n_tokens[x], **formed, "role": role,
            })  # fmt: skip
    return pairs, ref, shard, gaps


class Generators:
    """The generation backend of ``training.online_dpo``: the policy (and, once, the SFT model) as a ``synth.llm``
    Generator; under torchrun the vllm backend writes each rank's policy to its own folder; the openai backend's
    servers load the weights ``sync`` names (``training.rollout_servers``; a no-op for the other backends)."""

    def __init__(self, settings: Any, model: Any, reference: Any, sft_dir: str, out: Path, device, rank: int = 0):
        from training.checkpoint import checkpoint_tokenizer

        self.settings, self.model, self.out = settings, model, out
        self.sft_dir, self.rank = sft_dir, rank
        tokenizer = checkpoint_tokenizer("chat")
        size = settings.generation_batch_size
        self.live = LiveModelGenerator(model, tokenizer, "policy", size, device)
        self.frozen = LiveModelGenerator(reference, tokenizer, "sft", size, device)
        self.servers = None
        if settings.generation_backend == "openai":
            from training.rollout_servers import ServerRollouts

            self.servers = ServerRollouts(settings, model, sft_dir, out, rank)

    def sync(self, which: str) -> None:
        """Before sampling from ``which`` ("policy" or "sft"), on every rank: the openai servers load its weights
        when they do not hold them."""
        if self.servers is not None:
            self.servers.sync(which)

    def updated(self) -> None:
        """The policy's weights changed (a DPO update): the openai servers reload them at the next ``sync``."""
        if self.servers is not None:
            self.servers.updated()

    def call(self, which: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(generator, *args, **kwargs)`` with the generator of ``which`` ("policy" or "sft")."""
        if self.settings.generation_backend == "transformers":
            return fn(self.live if which == "policy" else self.frozen, *args, **kwargs)
        if self.servers is not None:
            return self.servers.call(which, fn, *args, **kwargs)
        import gc

        import torch

        from synth.llm.generate import make_generator
        from training.checkpoint import save_pretrained_folder

        folder = self.sft_dir
        if which == "policy":  # vLLM reads weights from a folder: the policy as it is now
            name = f"rollout_policy-rank{self.rank}" if self.rank else "rollout_policy"  # each rank its own
            folder = str(save_pretrained_folder(self.model, None, self.out / name, kind="chat"))
        generator = make_generator(
            "vllm", folder, gpu_memory_utilization=self.settings.vllm_gpu_memory_utilization, seed=0
        )
        try:
            return fn(generator, *args, **kwargs)
        finally:
            generator.close()
            del generator
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


class QuietLog:
    """The run log of a rank other than 0: rank 0 alone writes metrics and progress lines."""

    def record(self, record: dict) -> None: ...
    def info(self, message: str, record: dict | None = None) -> None: ...
    def finish(self, summary: dict) -> None: ...
    def line_due(self, scheduled: bool) -> bool:
        return False


def rank_passes(step_pairs: list, micro: int, rank: int, world: int):
    """(pairs, weight, sync) of this rank's micro-batch passes over its contiguous share of a step's pairs: every rank
    runs as many (DDP all-reduces in the last, ``sync``); a rank the share leaves nothing runs one pair with weight 0.
    One process: the step's pairs in passes of ``micro``, weight 1."""
    from training.preference_loop import rank_share

    mine = rank_share(step_pairs, rank, world)
    share = -(-len(step_pairs) // world)
    passes = -(-share // micro)
    for m in range(passes):
        chunk = mine[m * micro : (m + 1) * micro]
        yield chunk or step_pairs[:1], 1.0 if chunk else 0.0, m == passes - 1


# ---- outputs ---------------------------------------------------------------------------------------------------


def episode_path(folder: Path, episode: int) -> Path:
    """The shard of 1-based ``episode``."""
    return folder / f"episode-{episode - 1:05d}.parquet"


def write_episode(folder: Path, rows: list[dict]) -> Path:
    """Write one episode's sample rows atomically; returns the shard's path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.schema import MESSAGE_TYPE

    schema = pa.schema(
        [
            ("episode", pa.int32()), ("prompt_index", pa.int32()), ("prompt_id", pa.string()),
            ("prompt", pa.list_(MESSAGE_TYPE)), ("sample_index", pa.int32()), ("response", pa.string()),
            ("completion_tokens", pa.int32()), ("finish_reason", pa.string()), ("score", pa.float64()),
            ("reward_model_score", pa.float64()),
            ("policy_logp", pa.float64()), ("reference_logp", pa.float64()), ("reply_tokens", pa.int32()),
            ("chosen_index", pa.int32()), ("rejected_index", pa.int32()), ("gap", pa.float64()),
            ("pair_kept", pa.bool_()), ("pair_reason", pa.string()), ("role", pa.string()),
        ]
    )  # fmt: skip
    assert schema.names == EPISODE_COLUMNS
    folder.mkdir(parents=True, exist_ok=True)
    path = episode_path(folder, rows[0]["episode"])
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    tmp.replace(path)
    return path


def remove_episodes_after(folder: Path, finished: int) -> None:
    """Delete the shards (and half-written temporaries) of the episodes after the first ``finished``: a killed
    run's."""
    if not folder.is_dir():
        return
    for f in folder.iterdir():
        if f.name.startswith(".") and f.name.endswith(".tmp"):
            f.unlink()
        elif f.name.startswith("episode-") and f.suffix == ".parquet" and int(f.stem.split("-")[1]) >= finished:
            f.unlink()


def win_rate(policy_scores: Sequence[float], sft_scores: Sequence[float]) -> float:
    """Share of held-out prompts where the policy's reply scores above the SFT model's (a tie counts half)."""
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(policy_scores, sft_scores))
    return wins / max(len(sft_scores), 1)


def reward_curve_markdown(metrics_path: str | Path, title: str) -> str:
    """Mean reward and the win rate against the SFT model per episode, as a PNG in Markdown (for the Dagster UI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.plots import figure_png, png_markdown

    records = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("mean_reward") is not None]
    evals = [r for r in records if r.get("win_rate") is not None]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    ax.plot([r["step"] for r in train], [r["mean_reward"] for r in train], "o-", label="mean reward of samples")
    ax.set_xlabel("episode")
    ax.set_ylabel("reward-model score")
    if evals:
        right = ax.twinx()
        right.plot([r["step"] for r in evals], [r["win_rate"] for r in evals], "s--", color="C1",
                   label="win rate vs SFT (held out)")  # fmt: skip
        right.set_ylabel("win rate")
        right.set_ylim(0, 1)
        right.legend(loc="lower right")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    return png_markdown(figure_png(fig), title)
