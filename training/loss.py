"""Causal-LM cross-entropy computed in chunks of tokens, so a row's logits over the vocabulary never exist at once.

transformers' ``Qwen2ForCausalLM.forward`` computes ``lm_head`` over every position and then an fp32
cross-entropy: at 32,768 tokens x 151,936 vocabulary rows that is 20 GB of fp32 logits per row, plus as much again
for log-softmax and its gradient. Here the base model gives the hidden states (``model.model(...)``, [B, T, H]),
which go through ``lm_head`` ``chunk_tokens`` positions at a time, and each chunk's gradient is finished on the
spot (a position that predicts nothing, label -100 one step ahead, adds 0 and gets no gradient):

    logits = h_c @ W.T                      [c, V]   fp32 (bf16 matmul under autocast, then upcast)
    loss  += logsumexp(logits) - logits[target]
    g      = softmax(logits) - onehot       in place in the logits buffer (the gradient of the summed loss)
    dh_c   = g @ W                          [c, H]
    dW    += g.T @ h_c                      [V, H]   fp32 accumulator

so the backward pass only scales the stored ``dh``/``dW`` by the incoming gradient (Liger-Kernel's fused linear
cross-entropy, in plain torch). That is three vocabulary-sized matmuls per token, like the unchunked path, and one
``[c, V]`` buffer instead of four ``[B*T, V]`` tensors. Under ``torch.no_grad()`` (evaluation) only the loss is
computed.

``use_chunked_loss(model, chunk_tokens)`` makes ``model(input_ids=..., labels=..., num_items_in_batch=...)`` of a
Qwen2 causal LM return this loss (``logits`` None); going through ``model(...)`` keeps DDP's and FSDP's hooks
(FSDP gathers ``lm_head``/embedding weights in the root module's forward).
"""

from __future__ import annotations

import types
from typing import Any

import torch

from training.data import IGNORE_INDEX


def _compute_dtype(device_type: str, default: torch.dtype) -> torch.dtype:
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else default


_BUFFERS: dict[tuple, torch.Tensor] = {}


def _logits_buffer(rows: int, vocab: int, device: torch.device) -> torch.Tensor:
    """One fp32 [rows, vocab] buffer per device, kept between calls: a fresh 0.6 GB tensor per chunk would be
    new pages from the OS every time on the CPU (page faults and zeroing, ~10% of a step of the demo model)."""
    key = (device, vocab)
    buffer = _BUFFERS.get(key)
    if buffer is None or buffer.shape[0] < rows:
        _BUFFERS.pop(key, None)  # free the smaller one first
        buffer = _BUFFERS[key] = torch.empty(rows, vocab, dtype=torch.float32, device=device)
    return buffer


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T`` against ``targets`` (rows listed in ``ignored`` left out);
    the gradients are computed in the forward pass, chunk by chunk."""

    @staticmethod
    def forward(
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignored: torch.Tensor, chunk: int
    ) -> Any:
        dtype = _compute_dtype(hidden.device.type, weight.dtype)
        h_all, w = hidden.to(dtype), weight.to(dtype)
        grad_hidden = torch.empty_like(hidden)
        # fp32 accumulator, written by the first chunk (no 39 MB zero fill for the demo model's [151,936, 64])
        new = torch.empty if hidden.shape[0] else torch.zeros
        grad_weight = new(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        buffer = _logits_buffer(min(chunk, hidden.shape[0]), weight.shape[0], hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h, t = h_all[start : start + chunk], targets[start : start + chunk]
            skip = ignored[(ignored >= start) & (ignored < start + len(t))] - start  # rows predicting nothing
            rows = torch.arange(len(t), device=t.device)
            logits = buffer[: len(t)]  # [c, V] fp32
            if dtype == torch.float32:
                torch.mm(h, w.t(), out=logits)
            else:
                logits.copy_(torch.mm(h, w.t()))
            # Softmax in place; log_softmax + exp_ took 46 ms per 256 x 151,936 chunk on the CPU, this 30 ms with
            # the two row maxima. log p(target) = x_t - logsumexp(x) = (x_t - max x) + log p(argmax), where
            # p(argmax) = 1 / sum exp(x - max x) >= 1 / V cannot underflow (p(target) itself may), and no device sync.
            target_logits, row_max = logits[rows, t], logits.amax(dim=-1)  # before the buffer becomes probabilities
            g = torch.ops.aten._softmax.out(logits, -1, False, out=logits)
            picked = target_logits - row_max + g.amax(dim=-1).log()  # log p(target)
            picked[skip] = 0.0
            total -= picked.sum()
            g[rows, t] -= 1.0  # d(summed loss)/d(logits) = softmax - onehot
            g[skip] = 0.0
            g = g.to(dtype)
            if grad_hidden.dtype == dtype:
                torch.mm(g, w, out=grad_hidden[start : start + chunk])
            else:
                grad_hidden[start : start + chunk] = torch.mm(g, w)
            if start == 0 and dtype == torch.float32:
                torch.mm(g.t(), h, out=grad_weight)
            elif start == 0:
                grad_weight.copy_(torch.mm(g.t(), h))
            elif dtype == torch.float32:
                grad_weight.addmm_(g.t(), h)
            else:
                grad_weight += torch.mm(g.t(), h)
        # Kept on ctx, not save_for_backward: backward scales them in place and hands them on, so autograd can
        # take them as the .grad tensors instead of copying [V, H] once more.
        ctx.grads = [grad_hidden, grad_weight.to(weight.dtype)]
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> Any:
        grad_hidden, grad_weight = ctx.grads
        del ctx.grads
        return grad_hidden.mul_(grad_total), grad_weight.mul_(grad_total), None, None, None


def _summed_loss_no_grad(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignored: torch.Tensor, chunk: int
) -> torch.Tensor:
    dtype = _compute_dtype(hidden.device.type, weight.dtype)
    w = weight.to(dtype)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk):
        h, t = hidden[start : start + chunk].to(dtype), targets[start : start + chunk]
        logits = torch.mm(h, w.t()).float()
        per_token = torch.logsumexp(logits, dim=-1) - logits.gather(1, t[:, None]).squeeze(1)
        per_token[ignored[(ignored >= start) & (ignored < start + len(t))] - start] = 0.0
        total += per_token.sum()
        del logits
    return total


def chunked_causal_lm_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    chunk_tokens: int,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """transformers' ``ForCausalLMLoss`` of ``hidden @ weight.T`` without the full logits.

    hidden [B, T, H] (final-norm output), weight [V, H] (``lm_head.weight``), labels [B, T] (-100: not predicted).
    Position t predicts ``labels[:, t + 1]``. Returns the summed token loss / ``num_items_in_batch``, or the mean
    over predicted tokens when it is None (as transformers).
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens={chunk_tokens}: must be at least 1")
    # Shift the labels, not the hidden states: [B*T, H] stays a view, no copy of a long row's activations.
    targets = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX).reshape(-1)
    ignored = (targets == IGNORE_INDEX).nonzero().view(-1)  # a few per document (one sync per micro-batch on GPU)
    safe_targets = targets.clamp(min=0)
    h = hidden.reshape(-1, hidden.shape[-1])
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        total = _LinearCrossEntropy.apply(h, weight, safe_targets, ignored, chunk_tokens)
    else:
        total = _summed_loss_no_grad(h, weight, safe_targets, ignored, chunk_tokens)
    if num_items_in_batch is None:
        return total / max(targets.numel() - ignored.numel(), 1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def use_chunked_loss(model: torch.nn.Module, chunk_tokens: int) -> None:
    """Make ``model(...)`` with ``labels`` compute ``chunked_causal_lm_loss`` from the base model's hidden states.

    Replaces ``forward`` on this instance only (other models in the process keep transformers' forward); calls
    without labels still go to the original forward. The output has ``loss`` and no ``logits``; for Qwen2-MoE (with
    ``output_router_logits``) ``loss`` includes ``router_aux_loss_coef * aux_loss`` and ``aux_loss`` is returned too,
    as transformers' forward does (``split_router_loss`` takes them apart for the training loop).
    """
    import sys

    from transformers.modeling_outputs import CausalLMOutputWithPast, MoeCausalLMOutputWithPast

    original = model.forward
    # Qwen2-MoE adds the router's load-balancing loss to the LM loss; its function lives in the model's module.
    moe_aux_loss = getattr(sys.modules[type(model).__module__], "load_balancing_loss_func", None)
    with_router = bool(getattr(model.config, "output_router_logits", False)) and moe_aux_loss is not None

    def forward(
        self: Any,
        input_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        if labels is None:
            return original(input_ids=input_ids, num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs.pop("logits_to_keep", None)
        asked = kwargs.pop("output_router_logits", None)  # None: the config's choice, as transformers
        router = with_router if asked is None else bool(asked) and moe_aux_loss is not None
        if router:
            kwargs["output_router_logits"] = True
        outputs = self.model(input_ids=input_ids, **kwargs)
        loss = chunked_causal_lm_loss(
            outputs.last_hidden_state, self.lm_head.weight, labels, chunk_tokens, num_items_in_batch
        )
        if not router:
            return CausalLMOutputWithPast(loss=loss, logits=None)
        # As Qwen2MoeForCausalLM.forward: loss = LM loss + coef * aux_loss, and aux_loss returned beside it. Only a
        # [B, T] padding mask goes to the aux loss (flex attention's document BlockMask is not one; packed rows
        # have no padding).
        mask = kwargs.get("attention_mask")
        mask = mask if torch.is_tensor(mask) and mask.dim() == 2 else None
        aux = moe_aux_loss(outputs.router_logits, self.num_experts, self.num_experts_per_tok, mask).to(loss.device)
        return MoeCausalLMOutputWithPast(loss=loss + self.router_aux_loss_coef * aux, aux_loss=aux, logits=None)

    model.forward = types.MethodType(forward, model)


def router_aux_loss_coef(model: torch.nn.Module) -> float:
    """Weight of the router's load-balancing loss in ``model``'s training objective: the config's
    ``router_aux_loss_coef`` for an MoE model whose forward returns it (``output_router_logits``), else 0."""
    config = model.config
    if not getattr(config, "output_router_logits", False):
        return 0.0
    return float(getattr(config, "router_aux_loss_coef", 0.0))


def split_router_loss(output: Any, coef: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(language-model loss, router aux loss) of a causal-LM output. Qwen2-MoE's forward (transformers' or the
    chunked one above) returns ``loss = LM loss + coef * aux_loss``; the training loop needs the two apart to scale
    the aux loss like the LM loss under gradient accumulation and to log them. A dense model: (loss, None)."""
    aux = getattr(output, "aux_loss", None)
    if not torch.is_tensor(aux):
        return output.loss, None
    return output.loss - coef * aux, aux
