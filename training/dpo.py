"""Offline DPO (Qwen2 report §4.3; Rafailov et al. 2023): the SFT model trained on preference pairs against a
frozen reference, the same SFT weights.

    python -m training.dpo --init data/models/sft/final --output runs/dpo \\
        --pairs synthetic=data/synthetic/preference/final [--beta 0.1 --loss-type sigmoid] [--settings-profile demo]

The log-probability of a reply is the sum over its tokens (the last assistant turn's content and its closing
``<|im_end|>``, each predicted from everything before it; the prompt, the template's role headers and the newline
after ``<|im_end|>`` are not scored), with the conversation rendered by the project's ChatML template
(``training.preference_data``). With pi and ref the policy's and the reference's log-probabilities:

    h = (pi(chosen) - ref(chosen)) - (pi(rejected) - ref(rejected))
    sigmoid: loss = -log sigmoid(beta * h)
    ipo:     loss = (h - 1 / (2 * beta))^2, with log-probabilities averaged over the reply's tokens (Azar et al.
             2023; as TRL does)

Logged per step and on the held-out pairs: loss, the implicit rewards ``chosen_reward = beta * (pi(c) - ref(c))``
and ``rejected_reward``, reward ``accuracy`` (chosen_reward > rejected_reward) and ``margin`` (their difference).

The reference is not held in memory while training: before the first step the reference log-probabilities of every
pair are computed in one pass with the initial weights and stored beside the run, ``reference_logps.json`` (keyed
by the init folder and the pairs; a resumed run reads them back). ``final/`` is a chat ``save_pretrained`` folder
(ChatML template, generation stops at ``<|im_end|>``). Loop, checkpoints and exact resume: the shared loop of
``training.preference_loop`` (pretraining's optimizer, schedule and checkpoints). One process (one GPU or the CPU)
or data-parallel under ``torchrun --nproc_per_node N -m training.dpo ...`` (each process computes a share of the
reference log-probabilities; ``batch_size`` is the pairs of a step over all processes).

Light at import (pydantic only): the Dagster code location imports ``DpoSettings``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from pipelines.settings import parse_settings
from training.preference_data import PairTrainingSettings, run_main
from training.preference_data import build_parser as _pair_parser
from training.preference_loop import Recipe

REFERENCE_FILE = "reference_logps.json"
LOGP_CHUNK_TOKENS = 1024


class DpoSettings(PairTrainingSettings):
    """Offline DPO. The report gives no DPO hyperparameters: the defaults are ours (beta 0.1 and lr 5e-7, the DPO
    paper's and Zephyr's values; one epoch)."""

    beta: float = Field(0.1, gt=0, description="DPO beta: how far the policy may move from the reference.")
    loss_type: Literal["sigmoid", "ipo"] = Field(
        "sigmoid", description="sigmoid: DPO's -log sigmoid(beta h); ipo: (h - 1/(2 beta))^2 on per-token means."
    )
    lr: float = Field(5e-7, gt=0, description="Peak learning rate.")
    min_lr: float = Field(5e-8, ge=0, description="Learning rate at the last step (cosine from lr).")


def load_policy(path: str, device: Any = "cpu") -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="sdpa", local_files_only=True
    )
    return model.to(device)


def reply_logps(model: Any, batch: dict, chunk_tokens: int = LOGP_CHUNK_TOKENS) -> tuple[Any, Any]:
    """Summed log-probability of each row's reply tokens and their count.

    The output layer runs only at the positions that predict a reply token (the prompt's positions get no logits),
    ``chunk_tokens`` of them at a time, each chunk recomputed in the backward pass: the [tokens, vocabulary] logits
    never exist whole (for 8 rows of 4,096 tokens and Qwen2's 151,646-token vocabulary they would take 20 GB)."""
    import torch
    from torch.utils.checkpoint import checkpoint

    hidden = model.model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state
    predicts = batch["response_mask"][:, 1:]  # position t predicts token t + 1
    rows = predicts.nonzero()[:, 0]
    states = hidden[:, :-1][predicts]
    targets = batch["input_ids"][:, 1:][predicts]
    head = model.get_output_embeddings()

    def piece(h: Any, y: Any) -> Any:
        return torch.log_softmax(head(h).float(), dim=-1).gather(-1, y[:, None]).squeeze(-1)

    pieces = []
    for i in range(0, len(targets), chunk_tokens):
        h, y = states[i : i + chunk_tokens], targets[i : i + chunk_tokens]
        pieces.append(checkpoint(piece, h, y, use_reentrant=False) if torch.is_grad_enabled() else piece(h, y))
    token_logps = torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)
    # summed in float64: a reply's log-probability is a sum of hundreds of terms, and IPO squares differences of them
    sums = torch.zeros(len(predicts), dtype=torch.float64, device=hidden.device)
    sums = sums.index_add(0, rows, token_logps.double())
    return sums, predicts.sum(-1)


def dpo_loss(
    policy_chosen: Any,
    policy_rejected: Any,
    ref_chosen: Any,
    ref_rejected: Any,
    beta: float,
    loss_type: str,
) -> tuple[Any, Any, Any]:
    """Per-pair loss and implicit rewards (chosen, rejected) from reply log-probabilities (already averaged per
    token for ipo)."""
    import torch.nn.functional as F

    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"loss_type={loss_type!r}: choose sigmoid or ipo")
    chosen_reward = beta * (policy_chosen - ref_chosen).detach()
    rejected_reward = beta * (policy_rejected - ref_rejected).detach()
    return losses, chosen_reward, rejected_reward


def reference_key(init: str, fingerprint: str) -> str:
    from training.sft import _init_fingerprint

    payload = json.dumps([_init_fingerprint(init), fingerprint], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def reference_logps(
    model: Any, data: dict, out: Path, init: str, micro_batch_size: int, rank: int = 0, world: int = 1
) -> dict[str, list[float]]:
    """pair id -> [chosen logp, rejected logp, chosen tokens, rejected tokens] of the initial weights, read from
    ``out/reference_logps.json`` when it was computed for the same init and pairs, else computed in one pass. Under
    torchrun each of the ``world`` processes computes a share of the pairs, the shares are gathered on every
    process, and rank 0 stores them."""
    import torch

    from pipelines.tokenizer import ENDOFTEXT_ID
    from training.preference_data import pair_tensors, pairs_fingerprint
    from training.preference_loop import rank_share

    pairs = data["train"] + data["heldout"]
    key = reference_key(init, pairs_fingerprint(pairs))
    path = out / REFERENCE_FILE
    stored = json.loads(path.read_text()) if path.exists() else {}
    if world > 1:  # every process must agree on whether to compute (it is a collective)
        import torch.distributed as dist

        found = [None] * world
        dist.all_gather_object(found, stored.get("key") == key)
        if all(found):
            return stored["logps"]
    elif stored.get("key") == key:
        return stored["logps"]
    device = next(model.parameters()).device
    logps: dict[str, list[float]] = {}
    was_training = model.training
    model.eval()
    mine = rank_share(pairs, rank, world)
    with torch.no_grad():
        for i in range(0, len(mine), micro_batch_size):
            chunk = mine[i : i + micro_batch_size]
            batch = {k: v.to(device) for k, v in pair_tensors(chunk, ENDOFTEXT_ID).items()}
            lp, n = reply_logps(model, batch)
            b = len(chunk)
            for j, p in enumerate(chunk):
                logps[p.id] = [float(lp[j]), float(lp[b + j]), int(n[j]), int(n[b + j])]
    model.train(was_training)
    if world > 1:
        shares: list = [None] * world
        dist.all_gather_object(shares, logps)
        logps = {pid: values for share in shares for pid, values in share.items()}
    if rank == 0:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"key": key, "init": init, "pairs": len(pairs), "logps": logps}))
        os.replace(tmp, path)
    return logps


def recipe(settings: DpoSettings, init: str) -> Recipe:
    def pair_loss(model: Any, batch: dict, pairs: list, ref: dict) -> tuple[Any, dict]:
        import torch

        lp, n = reply_logps(model, batch)
        b = len(pairs)
        r = torch.tensor([ref[p.id] for p in pairs], dtype=torch.float64, device=lp.device).to(lp.dtype)
        pc, pr, rc, rr = lp[:b], lp[b:], r[:, 0], r[:, 1]
        if settings.loss_type == "ipo":
            pc, pr, rc, rr = pc / n[:b], pr / n[b:], rc / r[:, 2], rr / r[:, 3]
        losses, chosen_reward, rejected_reward = dpo_loss(pc, pr, rc, rr, settings.beta, settings.loss_type)
        stats = {
            "accuracy": (chosen_reward > rejected_reward).float(),
            "margin": chosen_reward - rejected_reward,
            "chosen_reward": chosen_reward,
            "rejected_reward": rejected_reward,
        }
        return losses, stats

    return Recipe(
        name="dpo",
        build_model=lambda device: load_policy(init, device),
        prepare=lambda model, data, out, rank, world: reference_logps(
            model, data, out, init, settings.micro_batch_size, rank, world
        ),
        pair_loss=pair_loss,
    )


def run(
    settings: DpoSettings,
    pairs: Mapping[str, str],
    output_dir: str,
    init: str,
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """DPO from ``init`` on ``pairs`` into ``output_dir`` (resuming there); returns the summary."""
    from training.preference_loop import train_pairs

    return train_pairs(recipe(settings, init), settings, pairs, output_dir, init, progress)


def build_parser() -> Any:
    # The class as pipelines.settings.STAGES names it (under ``python -m`` this module is __main__).
    from training.dpo import DpoSettings as registered

    return _pair_parser("python -m training.dpo", __doc__.split("\n\n")[0], registered)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, settings = parse_settings(parser, argv)
    run_main(parser, args, settings, run)


if __name__ == "__main__":
    main()
