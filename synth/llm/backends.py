"""The generation backends behind ``synth.llm.base.Generator``: transformers on CPU, any OpenAI-compatible server,
vLLM in process.

- ``transformers`` (CPU default): real batches (one ``model.generate`` per batch), prompts sorted by length and
  left-padded with ``<|endoftext|>``, stops at ``<|im_end|>``. Sampling draws each sample from its own
  ``torch.Generator`` seeded by (request seed, sample index), so a sample does not depend on what else is in its
  batch: the same request gives the same text alone, in a batch, or after a resume.
- ``openai`` (``synth.llm.openai_backend``, re-exported here): ``POST {base_url}/chat/completions`` on any
  OpenAI-compatible server or a fleet of them (several URLs, ``concurrency`` requests in flight per server, each
  request on the least-loaded one), retries with exponential backoff on 5xx/429 and connection errors, on another
  server where there is one.
- ``vllm``: ``vllm.LLM`` in this process (GPU only); prompts rendered with our ChatML template.

Scoring requests (``choices``): transformers reads one batched forward pass; openai the ``logprobs``/``top_logprobs``
of one token; vllm ``SamplingParams(logprobs=20)``.

Own code where a library would do: the transformers backend picks each token itself (``_make_sampler``) because
torch's sampling in ``generate`` draws for the whole batch from one stream, so a sample would depend on its batch.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipelines.tokenizer import ENDOFTEXT_ID
from synth.llm.base import (
    STOP_TOKEN_IDS,
    VLLM_MISSING,
    GenerationError,
    GenerationRequest,
    GenerationResult,
    Generator,
    _result,
    _scored,
    local_model_id,
)
from synth.llm.chat import render_chat
from synth.llm.openai_backend import OpenAIGenerator

__all__ = ["OpenAIGenerator", "TransformersGenerator", "VLLMGenerator"]

# --------------------------------------------------------------------------------------------------- transformers


def _sample_seed(request: GenerationRequest, sample: int) -> int:
    """Seed of sample ``sample`` of ``request``: from the request seed, the sample index and the messages, so two
    prompts asked with the same seed do not share one stream of random draws (correlated samples)."""
    messages = json.dumps(request.messages, sort_keys=True, ensure_ascii=False)
    return random.Random(f"{request.seed}/{sample}/{messages}").getrandbits(63)


def _nucleus(torch, probs, top_p: float):
    """The smallest set of most likely tokens whose mass reaches ``top_p`` (at least one), most likely first, as
    (probs, token ids); ``(probs, None)`` (the whole vocabulary in id order) when ``top_p`` is 1. ``topk`` with a
    growing k instead of sorting the whole vocabulary (~40 ms on CPU)."""
    if top_p >= 1.0:
        return probs, None
    k = 64
    while True:
        k = min(k, probs.numel())
        values, tokens = torch.topk(probs, k)
        cumulative = torch.cumsum(values, dim=0)
        if cumulative[-1] >= top_p or k == probs.numel():
            break
        k *= 8
    keep = (cumulative - values) < top_p
    return values[keep], tokens[keep]


# Sampled rows per pass of the token picker. Its [rows, vocab] float32/float64 temporaries are fresh pages on every
# step at full width (78 MB per float64 tensor at 64 rows): in passes of 8 rows they stay small, and the picker takes
# 47 ms instead of 284 per token at 64 rows (CPU, 1 thread), with the same picks (each row's arithmetic is unchanged).
PICK_ROWS_PER_PASS = 8


def _make_sampler(temperatures: list[float], top_ps: list[float], seeds: list[int]):
    """A logits processor that picks each row's next token itself (greedy or seeded nucleus sampling) and masks
    everything else to -inf, so ``generate(do_sample=False)`` takes exactly that token. Per-row generators make a
    row's samples independent of the batch it is in (torch's own sampling draws for the whole batch at once)."""
    import torch
    from transformers import LogitsProcessor

    generators = []
    for t, s in zip(temperatures, seeds):
        g = None
        if t > 0:
            g = torch.Generator(device="cpu")
            g.manual_seed(s)
        generators.append(g)

    sampled = [row for row, g in enumerate(generators) if g is not None]
    any_greedy = len(sampled) < len(generators)
    passes = []  # (first position in `sampled`, its rows, their temperatures [p, 1], positions of top_p = 1 rows)
    for first in range(0, len(sampled), PICK_ROWS_PER_PASS):
        part = sampled[first : first + PICK_ROWS_PER_PASS]
        temperature_t = torch.tensor([temperatures[row] for row in part], dtype=torch.float32)[:, None]
        whole = [k for k, row in enumerate(part) if top_ps[row] >= 1.0]
        passes.append((first, torch.tensor(part, dtype=torch.long), temperature_t, whole))

    class SeededSampler(LogitsProcessor):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            logits = scores.float()  # (rows, vocab) logits of the next token
            # greedy rows keep the argmax; every sampled row is overwritten below
            chosen = (
                torch.argmax(logits, dim=-1)
                if any_greedy
                else torch.zeros(len(logits), dtype=torch.long, device=logits.device)
            )
            if sampled:
                # exactly one uniform draw per sampled row and step, whatever the path: the streams stay aligned
                u = torch.cat([torch.rand(1, generator=generators[row], dtype=torch.float64) for row in sampled])
                u = u.to(logits.device)  # the generators are CPU ones (the same draws on any device)
                for first, part, temperature_t, whole in passes:
                    probs = torch.softmax(
                        logits[part] / temperature_t.to(logits.device), dim=-1
                    )  # (pass rows, vocab) float32
                    # inverse-CDF draws in float64: torch.multinomial over 151,936 entries costs ~20 ms a call on CPU
                    if whole:
                        cdf = torch.cumsum(probs if len(whole) == len(part) else probs[whole], -1, dtype=torch.float64)
                        draws = u[[first + k for k in whole]]
                        pick = torch.searchsorted(cdf, (draws * cdf[:, -1])[:, None], right=True)[:, 0]
                        chosen[part[whole]] = pick.clamp(max=cdf.shape[1] - 1)
                    for k, row in enumerate(part.tolist()):
                        if top_ps[row] >= 1.0:
                            continue
                        values, tokens = _nucleus(torch, probs[k].double(), top_ps[row])
                        cdf = torch.cumsum(values, dim=0)
                        at = first + k
                        pick = min(int(torch.searchsorted(cdf, u[at : at + 1] * cdf[-1], right=True)), len(values) - 1)
                        chosen[row] = tokens[pick]
            out = torch.full_like(scores, float("-inf"))
            out[torch.arange(scores.shape[0]), chosen.to(scores.device)] = 0.0
            return out

    return SeededSampler()


class TransformersGenerator(Generator):
    """Batched CPU (or single-GPU) generation with a transformers causal LM from a local folder."""

    backend = "transformers"

    def __init__(
        self,
        model: str,
        *,
        model_id: str | None = None,
        batch_size: int = 8,
        dtype: str = "float32",
        device: str = "cpu",
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not Path(model).is_dir():
            raise GenerationError(f"transformers backend: {model} is not a model folder (see synth.llm.teacher)")
        self.model_path = str(model)
        self.model_id = model_id or local_model_id(model)
        self.batch_size = batch_size
        self.device = device
        # fp32 on CPU: bf16 matmuls are slower than fp32 on most CPUs without AMX.
        torch_dtype = getattr(torch, dtype) if dtype != "auto" else "auto"
        self.tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(model, local_files_only=True, dtype=torch_dtype).to(device)
        self.model.eval()
        self.generate_calls = 0  # model.generate invocations (one per batch)

    def _encode(self, request: GenerationRequest) -> list[int]:
        return self.tokenizer(render_chat(request.messages), add_special_tokens=False)["input_ids"]

    def choice_token_ids(self, choices: Sequence[str]) -> list[int]:
        """The token id of each choice; a choice that is not exactly one token is an error."""
        ids = []
        for choice in choices:
            tokens = self.tokenizer(choice, add_special_tokens=False)["input_ids"]
            if len(tokens) != 1:
                raise ValueError(f"choice {choice!r} is {len(tokens)} tokens; scoring needs single-token choices")
            ids.append(tokens[0])
        return ids

    def next_token_probs(self, conversations: Sequence[Sequence[Mapping[str, str]]]):
        """Probabilities of the token after ``<|im_start|>assistant\n`` for each conversation: (rows, vocab)."""
        import torch

        prompts = [self.tokenizer(render_chat(m), add_special_tokens=False)["input_ids"] for m in conversations]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out = [None] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            input_ids, attention_mask = self._left_padded([prompts[i] for i in batch], torch)
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = self.model(
                    input_ids=input_ids.to(self.device),
                    attention_mask=attention_mask.to(self.device),
                    position_ids=position_ids.to(self.device),
                    logits_to_keep=1,
                ).logits[:, -1, :]
            probs = torch.softmax(logits.float(), dim=-1).cpu()
            for row, i in enumerate(batch):
                out[i] = probs[row]
        return torch.stack(out) if out else torch.empty(0), [len(p) for p in prompts]

    def _score(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        probs, lengths = self.next_token_probs([r.messages for r in requests])
        results = []
        for row, request in enumerate(requests):
            ids = self.choice_token_ids(request.choices)
            results.append(_scored(request, self, probs[row, ids].tolist(), lengths[row]))
        return results

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        scoring = [i for i, r in enumerate(requests) if r.choices]
        if scoring:  # scoring requests are one forward pass each; the rest are generated as usual
            scored = dict(zip(scoring, self._score([requests[i] for i in scoring])))
            rest = [i for i in range(len(requests)) if i not in scored]
            generated = dict(zip(rest, self._generate([requests[i] for i in rest]))) if rest else {}
            return [scored[i] if i in scored else generated[i] for i in range(len(requests))]
        return self._generate(requests)

    @staticmethod
    def _left_padded(prompts: Sequence[Sequence[int]], torch):
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), ENDOFTEXT_ID, dtype=torch.long)  # (rows, width)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):  # left padding: every row's next token is at the same column
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
            attention_mask[row, width - len(prompt) :] = 1
        return input_ids, attention_mask

    def _generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        import torch

        prompts = [self._encode(r) for r in requests]
        # One row per distinct sample; greedy samples are all identical, so a greedy request needs one row.
        rows = [(i, j) for i, r in enumerate(requests) for j in range(r.n if r.temperature > 0 else 1)]
        rows.sort(key=lambda row: len(prompts[row[0]]))  # similar lengths together: less padding per batch
        outputs: dict[tuple[int, int], tuple[str, int, str, int | None]] = {}
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            outputs.update(zip(batch, self._generate_batch([prompts[i] for i, _ in batch], batch, requests, torch)))
        results = []
        for i, r in enumerate(requests):
            samples = [outputs[(i, j if r.temperature > 0 else 0)] for j in range(r.n)]
            results.append(
                _result(
                    r,
                    self,
                    texts=[s[0] for s in samples],
                    completion_tokens=[s[1] for s in samples],
                    finish_reasons=[s[2] for s in samples],
                    prompt_tokens=len(prompts[i]),
                    stop_tokens=[s[3] for s in samples],
                )
            )
        return results

    def _generate_batch(self, prompts, batch, requests, torch) -> list[tuple[str, int, str, int | None]]:
        from transformers import GenerationConfig

        width = max(len(p) for p in prompts)
        input_ids, attention_mask = self._left_padded(prompts, torch)
        rs = [requests[i] for i, _ in batch]
        sampler = _make_sampler(
            [r.temperature for r in rs],
            [r.top_p for r in rs],
            [_sample_seed(r, j) for r, (_, j) in zip(rs, batch)],
        )
        # An explicit config, so a checkpoint's own defaults (Qwen's repetition_penalty, top_k) do not apply.
        config = GenerationConfig(
            max_new_tokens=max(r.max_new_tokens for r in rs),
            do_sample=False,
            eos_token_id=list(STOP_TOKEN_IDS),
            pad_token_id=ENDOFTEXT_ID,
        )
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                generation_config=config,
                logits_processor=[sampler],
            )
        self.generate_calls += 1
        new = out[:, width:].tolist()  # (rows, generated): finished rows are padded with <|endoftext|>
        decoded = []
        for tokens, r in zip(new, rs):
            tokens = tokens[: r.max_new_tokens]  # the batch ran to the longest max_new_tokens
            stop = next((k for k, t in enumerate(tokens) if t in STOP_TOKEN_IDS), None)
            if stop is None:
                decoded.append((self.tokenizer.decode(tokens, skip_special_tokens=True), len(tokens), "length", None))
            else:
                text = self.tokenizer.decode(tokens[:stop], skip_special_tokens=True)
                decoded.append((text, stop + 1, "stop", tokens[stop]))
        return decoded


# ----------------------------------------------------------------------------------------------------------- vllm


class VLLMGenerator(Generator):
    """vLLM in this process (GPU). Prompts are rendered with ``synth.llm.chat`` so every backend sees the same text."""

    backend = "vllm"

    def __init__(
        self,
        model: str,
        *,
        model_id: str | None = None,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        dtype: str = "auto",
        max_model_len: int | None = None,
        **llm_kwargs: Any,
    ) -> None:
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            raise GenerationError(VLLM_MISSING) from exc
        self._sampling_params = SamplingParams
        self.model_id = model_id or local_model_id(model)
        self.llm = LLM(
            model=model,
            tokenizer=model,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            dtype=dtype,
            max_model_len=max_model_len,
            **llm_kwargs,
        )

    def _score(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        tokenizer = self.llm.get_tokenizer()
        params = self._sampling_params(max_tokens=1, temperature=0.0, logprobs=20)
        outputs = self.llm.generate([render_chat(r.messages) for r in requests], params, use_tqdm=False)
        results = []
        for r, out in zip(requests, outputs):
            top = out.outputs[0].logprobs[0]  # {token_id: Logprob}
            ids = [tokenizer.encode(c, add_special_tokens=False) for c in r.choices]
            for choice, tokens in zip(r.choices, ids):
                if len(tokens) != 1:
                    raise ValueError(f"choice {choice!r} is {len(tokens)} tokens; scoring needs single-token choices")
            probs = [math.exp(top[t[0]].logprob) if t[0] in top else 0.0 for t in ids]
            results.append(_scored(r, self, probs, len(out.prompt_token_ids)))
        return results

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        scoring = [i for i, r in enumerate(requests) if r.choices]
        if scoring:
            scored = dict(zip(scoring, self._score([requests[i] for i in scoring])))
            rest = [requests[i] for i in range(len(requests)) if i not in scored]
            generated = iter(self.generate(rest)) if rest else iter(())
            return [scored[i] if i in scored else next(generated) for i in range(len(requests))]
        prompts = [render_chat(r.messages) for r in requests]
        params = [
            self._sampling_params(
                n=r.n,
                temperature=r.temperature,
                top_p=r.top_p,
                seed=r.seed,
                max_tokens=r.max_new_tokens,
                stop_token_ids=list(STOP_TOKEN_IDS),
            )
            for r in requests
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)  # vLLM schedules all of them continuously
        results = []
        for r, out in zip(requests, outputs):
            samples = sorted(out.outputs, key=lambda c: c.index)
            results.append(
                _result(
                    r,
                    self,
                    texts=[c.text for c in samples],
                    completion_tokens=[len(c.token_ids) for c in samples],
                    finish_reasons=[c.finish_reason or "stop" for c in samples],
                    prompt_tokens=len(out.prompt_token_ids),
                    # the token that stopped a sample is the last of its token_ids (EOS or one of stop_token_ids)
                    stop_tokens=[
                        c.token_ids[-1] if (c.finish_reason or "stop") == "stop" and c.token_ids else None
                        for c in samples
                    ],
                )
            )
        return results
