"""Online Merging Optimizer (Lu et al. 2024, "Online Merging Optimizers for Boosting Rewards and Mitigating Tax in
Alignment", arXiv 2405.17931): the way the Qwen2 report limits the alignment tax of RLHF.

Offline, interpolating the RLHF policy with the SFT model trades reward for the abilities SFT and pretraining gave;
the paper does it at every optimizer step instead. With ``delta`` the step's update (here: what AdamW changed) and
``tau = sft - base`` the SFT model's task vector over the pretrained base (the *reference delta*, sparsified once at
the start), the parameters move by a merge of the two instead of by ``delta``:

    OnDARE (DARE, Yu et al. 2024, as a merge of two deltas):
        tau'   = clamp(DARE(sft - base), -clip, clip)            once, at the start
        update = alpha * tau' + (1 - alpha) * DARE(delta)
        DARE(x): keep each entry with probability ``density``, scale the kept ones by 1 / density (an unbiased
        random sparsification; ``rescale``: scale instead so the L1 norm of x is kept, then clamp to +-clip)
    OnTIES (TIES, Yadav et al. 2023):
        tau'   = TopK(sft - base)                                once, at the start
        d'     = TopK(delta)
        sign   = +1 where tau' + d' >= 0, else -1                 (the elected sign)
        update = alpha * tau' [sign agrees] + (1 - alpha) * d' [sign agrees]
        TopK(x): the ``density`` share of x's entries largest in magnitude, per tensor (``rescale``: then scaled to
        keep the L1 norm); a tensor too small to keep one entry is kept whole

So OnDARE keeps a random sparse part of each update and OnTIES its largest entries that agree in sign with the SFT
direction, and both add a small multiple of the SFT task vector at every step. These rules are the authors' own
implementation's (QwenLM/online_merging_optimizers, ``ODAdamW``/``OTAdamW``; defaults from its DPO script:
density 0.01, alpha 1e-7, no rescale, clip 1), rewritten here as a wrapper around the recipe's AdamW: the update
``delta`` is what ``optimizer.step()`` did to the parameters (AdamW's decoupled weight decay included, where the
authors add the decay after merging; the recipes' default weight decay is 0). Not implemented: the authors'
``online_step`` (merge every k steps; we merge at every step).

Randomness (OnDARE's masks) comes from generators seeded by (seed, step) and (seed, "tau"), so a run resumed from a
checkpoint draws the same masks as one that was never stopped; nothing needs saving beside the optimizer. Memory:
the sparsified ``tau`` and a copy of the parameters before each step (two models' worth).
"""

from __future__ import annotations

import hashlib
from typing import Any

MERGING_MODES = ("none", "ondare", "onties")


def _generator(device: Any, *key: Any) -> Any:
    import torch

    g = torch.Generator(device=device)
    g.manual_seed(int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "big") >> 1)
    return g


def dare(x: Any, density: float, generator: Any, rescale: bool = False, clip: float | None = None) -> Any:
    """DARE on ``x``: each entry kept with probability ``density`` and scaled by 1/density (``rescale``: scaled so
    the L1 norm of ``x`` is kept, then clamped to +-clip, as the authors' OnDARE does)."""
    import torch

    if density >= 1:
        return x.clone()
    keep = torch.rand(x.shape, generator=generator, device=x.device) < density
    out = torch.where(keep, x / density, torch.zeros_like(x))
    if rescale:
        before, after = x.abs().sum(), out.abs().sum()
        if float(before) >= 1e-8:
            out = out * (before / (after + 1e-8))
            if clip is not None:
                out = out.clamp(-clip, clip)
    return out


def top_k(x: Any, density: float, rescale: bool = False) -> Any:
    """The ``density`` share of ``x``'s entries largest in magnitude (the rest 0); ``x`` itself when that is under
    one entry (as the authors' ``magnitude_mask_``); ``rescale``: scaled to keep the L1 norm of ``x``."""
    import torch

    k = int(density * x.numel())
    if density >= 1 or k < 1:
        return x.clone()
    flat = x.reshape(-1)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.topk(flat.abs(), k, sorted=False).indices] = True
    out = torch.where(keep, flat, torch.zeros_like(flat)).reshape(x.shape)
    if rescale:
        before, after = x.abs().sum(), out.abs().sum()
        if float(before) >= 1e-8:
            out = out * (before / after)
    return out


def ondare_update(delta: Any, tau: Any, density: float, alpha: float, generator: Any, rescale: bool, clip: float):
    """OnDARE: alpha * tau + (1 - alpha) * DARE(delta); ``tau`` already sparsified."""
    return alpha * tau + (1 - alpha) * dare(delta, density, generator, rescale, clip)


def onties_update(delta: Any, tau: Any, density: float, alpha: float, rescale: bool):
    """OnTIES: the TopK part of ``delta`` and ``tau`` (already sparsified) whose sign agrees with the sign of their
    sum, weighted alpha (tau) and 1 - alpha (delta)."""
    import torch

    d = top_k(delta, density, rescale)
    elected = torch.where(tau + d >= 0, 1.0, -1.0).to(d.dtype)
    return alpha * tau * (torch.sign(tau) == elected) + (1 - alpha) * d * (torch.sign(d) == elected)


class OnlineMerging:
    """Wraps an optimizer's step: ``before = merging.before_step()``, ``optimizer.step()``,
    ``merging.after_step(before, step)`` replaces what the step did with the merged update.

    ``sft`` and ``base``: {name: tensor} of the SFT model (the policy's start) and the pretrained base it was
    fine-tuned from; every trained parameter of ``model`` must be in both with its shape."""

    def __init__(
        self,
        model: Any,
        sft: dict,
        base: dict,
        mode: str,
        density: float,
        alpha: float,
        rescale: bool = False,
        clip: float = 1.0,
        seed: int = 0,
    ):
        import torch

        if mode not in ("ondare", "onties"):
            raise ValueError(f"merging={mode!r}: choose one of {', '.join(MERGING_MODES)}")
        if not 0 < density <= 1:
            raise ValueError(f"merging density={density}: must be in (0, 1]")
        self.mode, self.density, self.alpha, self.rescale, self.clip, self.seed = (
            mode,
            density,
            alpha,
            rescale,
            clip,
            seed,
        )
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.tau: list[Any] = []
        with torch.no_grad():
            for name, p in self.params:
                if name not in sft or name not in base:
                    raise ValueError(f"merging: parameter {name} is not in the SFT and base models")
                if sft[name].shape != p.shape or base[name].shape != p.shape:
                    raise ValueError(
                        f"merging: {name} is {tuple(p.shape)} in the policy, {tuple(sft[name].shape)} in the SFT "
                        f"model and {tuple(base[name].shape)} in the base: give the base the SFT model was trained from"
                    )
                diff = sft[name].to(p.device, torch.float32) - base[name].to(p.device, torch.float32)
                if mode == "ondare":
                    diff = dare(diff, density, _generator(p.device, seed, "tau", name)).clamp(-clip, clip)
                else:
                    diff = top_k(diff, density, rescale)
                self.tau.append(diff.to(p.dtype))

    def before_step(self) -> list[Any]:
        import torch

        with torch.no_grad():
            return [p.detach().clone() for _, p in self.params]

    def after_step(self, before: list[Any], step: int) -> dict:
        """Move every parameter from ``before`` by the merged update of what the step did; returns the share of
        update entries kept (non-zero) and the L1 norms of the raw and merged updates."""
        import torch

        kept = total = 0
        raw = merged = 0.0
        with torch.no_grad():
            generator = None
            for (_, p), old, tau in zip(self.params, before, self.tau):
                delta = p - old
                if self.mode == "ondare":
                    if generator is None or generator.device != p.device:
                        generator = _generator(p.device, self.seed, "step", step)
                    update = ondare_update(delta, tau, self.density, self.alpha, generator, self.rescale, self.clip)
                else:
                    update = onties_update(delta, tau, self.density, self.alpha, self.rescale)
                p.copy_(old + update)
                kept += int((update != 0).sum())
                total += update.numel()
                raw += float(delta.abs().sum())
                merged += float(update.abs().sum())
        return {"merge_kept": kept / max(total, 1), "update_l1": raw, "merged_update_l1": merged}


def named_weights(path: str) -> dict:
    """{parameter name: tensor} of a save_pretrained causal LM folder (on the CPU, float32)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    return {n: p.detach() for n, p in model.named_parameters()}
