"""Reward model (Qwen2 report §4.3): a ``Qwen2ForSequenceClassification`` with one score, initialised from the SFT
model, trained on preference pairs with the Bradley-Terry loss and a score-centering term.

    python -m training.reward_model --init data/models/sft/final --output runs/reward \\
        --pairs synthetic=data/synthetic/preference/final [--settings-profile demo]

Per pair, with r_c and r_r the scores of prompt + chosen and prompt + rejected (the score is read at the last
token, the reply's closing ``<|im_end|>``):

    loss = -log sigmoid(r_c - r_r) + center_coefficient * (r_c + r_r)^2

The second term (as TRL's ``center_rewards_coefficient``) keeps the scores centred on zero, so a score means the
same across the online-DPO episodes that read it. Logged per step and on the held-out pairs (a hash of the pair id):
loss, pairwise ``accuracy`` (r_c > r_r), ``margin`` (r_c - r_r) and the mean ``score``. The data side is
``training.preference_data``'s, the loop, checkpoints and resume ``training.preference_loop``'s (pretraining's
optimizer, schedule and checkpoints); ``final/`` is a ``save_pretrained`` folder with the project's tokenizer and
ChatML template, loadable with ``AutoModelForSequenceClassification``. One process (one GPU or the CPU) or
data-parallel under ``torchrun --nproc_per_node N -m training.reward_model ...`` (``batch_size`` is the pairs of a
step over all processes).

Light at import (pydantic only): the Dagster code location imports ``RewardModelSettings``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import Field

from pipelines.settings import parse_settings
from training.preference_data import PairTrainingSettings, run_main
from training.preference_data import build_parser as _pair_parser
from training.preference_loop import Recipe


class RewardModelSettings(PairTrainingSettings):
    """Reward-model training. The report gives no reward-model hyperparameters: the defaults are ours (one epoch at
    lr 1e-5, as InstructGPT's reward models; TRL's suggested centering coefficient 0.01)."""

    lr: float = Field(1e-5, gt=0, description="Peak learning rate.")
    min_lr: float = Field(1e-6, ge=0, description="Learning rate at the last step (cosine from lr).")
    center_coefficient: float = Field(
        0.01, ge=0, description="Weight of the score-centering term mean((r_chosen + r_rejected)^2); 0: off."
    )


def load_reward_model(path: str, device: Any = "cpu") -> Any:
    """A one-score ``Qwen2ForSequenceClassification`` from a save_pretrained folder (a causal LM folder gets a new
    score head); padding is ``<|endoftext|>``, so the score is read at each row's last real token."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from pipelines.tokenizer import ENDOFTEXT_ID

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "score.weight newly initialized" is the intent when starting from SFT
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=torch.float32, attn_implementation="sdpa", local_files_only=True
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.pad_token_id = ENDOFTEXT_ID
    return model.to(device)


def scores(model: Any, batch: dict) -> Any:
    """One score per row of ``batch`` (input_ids, attention_mask)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0].float()


def bradley_terry(chosen: Any, rejected: Any, center_coefficient: float) -> Any:
    """Per-pair loss: -log sigmoid(r_c - r_r) + coefficient * (r_c + r_r)^2."""
    import torch.nn.functional as F

    return -F.logsigmoid(chosen - rejected) + center_coefficient * (chosen + rejected) ** 2


def recipe(settings: RewardModelSettings, init: str) -> Recipe:
    def pair_loss(model: Any, batch: dict, pairs: list, extra: Any) -> tuple[Any, dict]:
        r = scores(model, batch)
        chosen, rejected = r[: len(pairs)], r[len(pairs) :]
        losses = bradley_terry(chosen, rejected, settings.center_coefficient)
        stats = {
            "accuracy": (chosen > rejected).float(),
            "margin": chosen - rejected,
            "score": (chosen + rejected) / 2,
        }
        return losses, {k: v.detach() for k, v in stats.items()}

    return Recipe(
        name="reward_model",
        build_model=lambda device: load_reward_model(init, device),
        prepare=lambda model, data, out, rank, world: None,
        pair_loss=pair_loss,
    )


def run(
    settings: RewardModelSettings,
    pairs: Mapping[str, str],
    output_dir: str,
    init: str,
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """Train a reward model from ``init`` on ``pairs`` into ``output_dir`` (resuming there); returns the summary."""
    from training.preference_loop import train_pairs

    return train_pairs(recipe(settings, init), settings, pairs, output_dir, init, progress)


def score_conversations(final_dir: str, conversations: list[list[dict]], batch_size: int = 8) -> list[float]:
    """Scores of a saved reward model for finished conversations (rendered with the project's template)."""
    import torch

    from pipelines.tokenizer import ENDOFTEXT_ID
    from training.checkpoint import checkpoint_tokenizer
    from training.preference_data import Pair, pair_tensors, tokenize_pairs

    model = load_reward_model(final_dir).eval()
    tokenizer = checkpoint_tokenizer("chat")
    out: list[float] = []
    for i in range(0, len(conversations), batch_size):
        chunk = conversations[i : i + batch_size]
        pairs = [Pair(str(j), "", c[:-1], c[-1:], c[-1:]) for j, c in enumerate(chunk)]
        tokenize_pairs(pairs, tokenizer)
        batch = pair_tensors(pairs, ENDOFTEXT_ID)
        with torch.no_grad():
            out += scores(model, batch)[: len(chunk)].tolist()
    return out


def build_parser() -> Any:
    # The class as pipelines.settings.STAGES names it (under ``python -m`` this module is __main__).
    from training.reward_model import RewardModelSettings as registered

    return _pair_parser("python -m training.reward_model", __doc__.split("\n\n")[0], registered)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, settings = parse_settings(parser, argv)
    run_main(parser, args, settings, run)


if __name__ == "__main__":
    main()
