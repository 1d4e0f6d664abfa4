"""``make_generator``: a ``Generator`` for a backend name (transformers, openai, vllm), optionally behind the request
cache; and a command line that asks the model questions.

    python -m synth.llm.generate --backend transformers --model DIR "What is 2+2?"      # ask one question
    python -m synth.llm.generate --backend openai --model NAME --base-url http://127.0.0.1:8000/v1 "Hi"
    python -m synth.llm.generate --backend openai --model NAME --base-url http://h1:8000/v1,http://h2:8000/v1 "Hi"
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from synth.llm.backends import OpenAIGenerator, TransformersGenerator, VLLMGenerator
from synth.llm.base import (
    BACKENDS,
    TEACHER_MODEL_ID,
    VLLM_MISSING,
    GenerationError,
    GenerationRequest,
    Generator,
    TeacherUnavailable,
)
from synth.llm.cache import CachedGenerator
from synth.llm.openai_backend import BASE_URL_HELP, CONCURRENCY_HELP
from synth.llm.teacher import teacher_path

# -------------------------------------------------------------------------------------------------------- factory

_FACTORIES: dict[str, Callable[..., Generator]] = {
    "transformers": TransformersGenerator,
    "openai": OpenAIGenerator,
    "vllm": VLLMGenerator,
}


def make_generator(
    backend: str,
    model: str | None = None,
    *,
    cache_dir: str | None = None,
    base_url: str | Sequence[str] | None = None,
    batch_size: int | None = None,
    concurrency: int | None = None,
    **opts: Any,
) -> Generator:
    """A generator for ``backend`` ("transformers", "openai" or "vllm").

    ``model``: for transformers and vllm a checkpoint folder or a locally cached HF id (``None``: the default CPU
    teacher, set up on first use); for openai the model name the server knows (``None``: the teacher's id).
    ``cache_dir`` wraps the generator in a ``CachedGenerator``. ``base_url`` (one server URL, several separated by
    commas, or a list: a fleet) and ``concurrency`` (requests in flight per server) apply to openai and
    ``batch_size`` to transformers (each ignored by the other backends, so callers pass their settings
    unconditionally). Other options go to the backend's constructor.
    """
    if backend == "openai" and base_url:
        opts["base_url"] = base_url
    if backend == "openai" and concurrency:
        opts["concurrency"] = concurrency
    if backend == "transformers" and batch_size:
        opts["batch_size"] = batch_size
    if backend not in _FACTORIES:
        raise ValueError(f"unknown generation backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            raise GenerationError(VLLM_MISSING) from exc
    if backend == "openai":
        generator = _FACTORIES[backend](model or TEACHER_MODEL_ID, **opts)
    else:
        generator = _FACTORIES[backend](teacher_path(model), **opts)
    return CachedGenerator(generator, cache_dir) if cache_dir else generator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("question", nargs="+", help="one user message per argument")
    parser.add_argument("--backend", default="transformers", choices=BACKENDS)
    parser.add_argument("--model", default=None, help="checkpoint folder, cached HF id or server model name")
    parser.add_argument("--base-url", default=None, help=BASE_URL_HELP)
    parser.add_argument("--concurrency", type=int, default=8, help=CONCURRENCY_HELP)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-n", type=int, default=1)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    try:
        generator = make_generator(
            args.backend, args.model, cache_dir=args.cache_dir, base_url=args.base_url, concurrency=args.concurrency
        )
        requests = [
            GenerationRequest(
                [{"role": "user", "content": q}], args.max_new_tokens, args.temperature, args.top_p, args.seed, args.n
            )
            for q in args.question
        ]
        for request, result in zip(requests, generator.generate(requests)):
            for text in result.texts:
                print(json.dumps({"question": request.messages[-1]["content"], "answer": text}, ensure_ascii=False))
    except (GenerationError, TeacherUnavailable, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
