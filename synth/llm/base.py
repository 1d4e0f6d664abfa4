"""What every generation backend shares: ``GenerationRequest``, ``GenerationResult``, the ``Generator`` interface,
the errors, and the ids recorded with every answer.

Every synthesis stage builds ``GenerationRequest``s (ChatML messages, sampling parameters, a seed, ``n`` samples and
the caller's prompt-template version) and hands them to a ``Generator`` from ``synth.llm.generate.make_generator``.
A request with ``choices`` (e.g. the digits of a rating scale) is scored instead of generated: the backend reads the
model's next-token distribution where the assistant turn starts and returns the choices' probabilities
(``GenerationResult.choice_probs``). Judges and quality raters use it: an expected score, no parsing of free text,
one pass per prompt.

The default teacher's id and ``TeacherUnavailable`` live here, not in ``synth.llm.teacher``, so the backends and the
teacher setup import this module and not each other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.tokenizer import ENDOFTEXT_ID, IM_END_ID
from synth.llm.chat import validate_chat

# Identifies how messages become a prompt (synth.llm.chat); part of every cache key, next to the caller's version.
CHAT_TEMPLATE_ID = "qwen2-chatml-v1"
# Default prompt-template version of a request: callers set their own (e.g. "sft-rewrite-v2").
PROMPT_TEMPLATE_VERSION = "none"
BACKENDS = ("transformers", "openai", "vllm")
STOP_TOKEN_IDS = (IM_END_ID, ENDOFTEXT_ID)
VLLM_MISSING = "vllm is not installed (GPU extra: pip install -e '.[gpu]')"
TEACHER_MODEL_ID = "Qwen/Qwen2.5-Coder-0.5B-Instruct"  # backend-independent id recorded with every generation


class GenerationError(RuntimeError):
    """A backend could not produce results (unreachable server, bad response, missing package)."""


class TeacherUnavailable(RuntimeError):
    """The teacher model cannot be found or set up; the message says what to do."""


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt and how to sample from it."""

    messages: Sequence[Mapping[str, str]]
    """ChatML conversation ending with a user turn (an optional system turn first)."""
    max_new_tokens: int = 256
    """Upper bound on generated tokens per sample."""
    temperature: float = 0.0
    """0 means greedy decoding (then every one of the n samples is the same text)."""
    top_p: float = 1.0
    """Nucleus sampling mass, in (0, 1]."""
    seed: int = 0
    """Sampling seed; the transformers backend draws sample j from a stream seeded by (seed, j, messages)."""
    n: int = 1
    """Number of samples."""
    template_version: str = PROMPT_TEMPLATE_VERSION
    """The caller's prompt-template version: changing a template must not reuse cached answers."""
    choices: Sequence[str] = ()
    """Scoring instead of generating: the model's next-token probabilities, right where the assistant turn starts,
    of these strings (each one token, e.g. the digits of a rating scale). See ``GenerationResult.choice_probs``."""

    def __post_init__(self) -> None:
        messages = [
            {"role": m.get("role"), "content": m.get("content")} for m in self.messages if isinstance(m, Mapping)
        ]
        problems = validate_chat(self.messages, final_role="user")
        if problems:
            raise ValueError(f"bad messages for a generation request: {'; '.join(problems)}")
        object.__setattr__(self, "messages", messages)
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        object.__setattr__(self, "choices", tuple(self.choices))
        if self.choices:
            if self.n != 1:
                raise ValueError("a scoring request (choices) has one answer: n must be 1")
            if len(set(self.choices)) != len(self.choices) or not all(isinstance(c, str) and c for c in self.choices):
                raise ValueError(f"choices must be distinct non-empty strings, got {self.choices!r}")

    def sampling(self) -> dict[str, Any]:
        if self.choices:
            return {"choices": list(self.choices)}
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "n": self.n,
        }

    def cache_key(self, model_id: str) -> str:
        """sha256 of everything that determines the answer, independent of the backend serving ``model_id``."""
        payload = {
            "model": model_id,
            "messages": self.messages,
            "sampling": self.sampling(),
            "template_version": self.template_version,
            "chat_template": CHAT_TEMPLATE_ID,
        }
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class GenerationResult:
    """The n samples of one request and where they came from."""

    texts: list[str]
    completion_tokens: list[int]
    """Generated tokens per sample, the stop token included."""
    finish_reasons: list[str]
    """Per sample: "stop" (ended its turn) or "length" (hit max_new_tokens)."""
    prompt_tokens: int
    model_id: str
    backend: str
    sampling: dict[str, Any]
    template_version: str
    chat_template: str = CHAT_TEMPLATE_ID
    cached: bool = False
    choice_probs: list[float] | None = None
    """Scoring requests: the probability of each choice, renormalised over the choices (sums to 1); None when the
    model put no probability on any of them (then ``texts == [""]``)."""
    choice_mass: float | None = None
    """Scoring requests: the model's total probability on the choices before renormalising; a low mass means the
    model did not answer in the asked format, and callers may reject the score."""
    stop_tokens: list[int | None] | None = None
    """Per sample: the token id that ended it (``<|im_end|>`` or ``<|endoftext|>``), None for a sample that hit
    max_new_tokens. None as a whole where the backend cannot tell (openai; results cached before this field)."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GenerationResult:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _scored(request: GenerationRequest, generator: Generator, probs: Sequence[float], prompt_tokens: int):
    """The result of a scoring request from the raw next-token probabilities of its choices."""
    mass = float(sum(probs))
    normalised = [float(p) / mass for p in probs] if mass > 0 else None
    best = request.choices[max(range(len(probs)), key=lambda k: probs[k])] if mass > 0 else ""
    return _result(
        request,
        generator,
        texts=[best],
        completion_tokens=[0],
        finish_reasons=["score"],
        prompt_tokens=prompt_tokens,
        choice_probs=normalised,
        choice_mass=mass,
    )


def _result(request: GenerationRequest, generator: Generator, **fields: Any) -> GenerationResult:
    return GenerationResult(
        model_id=generator.model_id,
        backend=generator.backend,
        sampling=request.sampling(),
        template_version=request.template_version,
        **fields,
    )


class Generator(ABC):
    """Turns requests into results, one result per request, in order."""

    backend: str
    model_id: str

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]: ...

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release resources (threads, connections)."""


def local_model_id(path: str) -> str:
    """The id recorded with (and keying the cache of) every answer of a local model: the default teacher's hub id,
    else ``<folder>@<weights fingerprint>``, so a checkpoint retrained in place (an earlier SFT run's folder serving
    as the next refresh's teacher) does not reuse the old model's answers."""
    marker = Path(path) / "teacher.json"
    if marker.exists():
        try:
            return json.loads(marker.read_text())["model_id"]
        except (ValueError, KeyError):
            pass
    folder = Path(path).resolve()
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") or p.name == "config.json")
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return f"{folder}@{hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:12]}"
