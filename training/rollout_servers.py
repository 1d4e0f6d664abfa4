"""Online DPO's ``openai`` generation backend (``training.online_dpo``, ``generation_backend="openai"``): episodes
sampled by OpenAI-compatible servers, one or a fleet (``synth.llm``'s openai backend, ``generation_base_url``), that
load the policy's current weights between episodes.

``weight_sync="reload_from_disk"``: before sampling from weights the servers do not hold yet (before the first
episode, and after each DPO update), rank 0 writes the policy as a ``save_pretrained`` folder,
``<output>/rollout_policy`` (atomically: a temporary folder renamed), and POSTs ``{"model_path": <folder>}`` to
``{server root}/update_weights_from_disk`` of every server at once (the root: the URL without its ``/v1``), waiting
for ``{"success": true}``; any other answer, or none, stops the run with an error naming the server. That is
SGLang's native endpoint (``python -m sglang.launch_server --model-path SFT_FOLDER --port 30000``, then
``generation_base_url=http://HOST:30000/v1``); the servers must read the folder at the same path (shared storage).
vLLM's OpenAI server (``vllm serve``) has no endpoint that reloads all weights from a folder: for vLLM use the
in-process ``vllm`` backend. The SFT model's greedy replies (the win rate's baseline) are asked after reloading the
servers with the SFT folder.

Requests carry the served model name (``GET /v1/models`` of the first server, after each reload), ``n`` = K samples
per prompt, ``temperature``/``top_p``/``max_tokens``, and a seed per request drawn from the episode seed and the
prompt's messages, so the samples are reproducible where the server honours seeds. ``generation_batch_size`` is the
requests in flight per server. Under torchrun every rank waits for rank 0's reload (a failure stops every rank).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from synth.llm.base import GenerationError
from synth.llm.openai_backend import auth_headers, served_models, split_base_urls

RELOAD_TIMEOUT_S = 1800.0  # loading a large model from disk can take minutes
ROLLOUT_FOLDER = "rollout_policy"


def server_root(url: str) -> str:
    """The root of an OpenAI-compatible server's URL (``http://host:30000/v1`` -> ``http://host:30000``)."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _reload_one(url: str, folder: str, timeout_s: float) -> str | None:
    """None when the server at ``url`` loaded ``folder``, else why not."""
    import httpx

    endpoint = f"{server_root(url)}/update_weights_from_disk"
    try:
        response = httpx.post(
            endpoint,
            json={"model_path": folder},
            headers=auth_headers(),
            timeout=httpx.Timeout(timeout_s, connect=10.0),
        )
    except httpx.HTTPError as exc:
        return f"{endpoint}: no answer ({type(exc).__name__}: {exc})"
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.status_code != 200 or not isinstance(answer, dict) or answer.get("success") is not True:
        return f"{endpoint} answered HTTP {response.status_code}: {response.text[:300]}"
    return None


def reload_from_disk(urls: Sequence[str], folder: str, timeout_s: float = RELOAD_TIMEOUT_S) -> None:
    """Every server of ``urls`` loads the weights of ``folder`` (all at once); GenerationError naming each server
    that did not."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(urls)) as pool:
        errors = [e for e in pool.map(lambda u: _reload_one(u, folder, timeout_s), urls) if e]
    if errors:
        raise GenerationError(
            f"weight sync: {len(errors)} of {len(urls)} generation servers did not load {folder} "
            f"({'; '.join(errors)}). generation_backend=openai needs servers with SGLang's "
            "POST /update_weights_from_disk (vllm serve has no such endpoint: use generation_backend=vllm)"
        )


def request_seed(seed: int, messages: Any) -> int:
    """A request's seed from the episode seed and its prompt: two prompts never share one stream of draws."""
    payload = json.dumps([seed, messages], sort_keys=True, ensure_ascii=False, default=str)
    return int.from_bytes(hashlib.sha256(payload.encode()).digest()[:4], "big") >> 1  # 31 bits: any server takes it


class PerPromptSeeds:
    """A generator whose requests each get ``request_seed`` (no ``model`` attribute: nothing to put in eval mode)."""

    def __init__(self, generator: Any) -> None:
        self.generator = generator

    def generate(self, requests: Sequence[Any]) -> list:
        return self.generator.generate(
            [dataclasses.replace(r, seed=request_seed(r.seed, r.messages)) for r in requests]
        )


class ServerRollouts:
    """The servers of ``settings.generation_base_url`` and the weights they hold: ``sync`` (collective under
    torchrun) makes them hold the SFT model or the policy as it is now, ``updated`` says the policy changed, ``call``
    runs ``fn`` with a generator over them."""

    def __init__(self, settings: Any, model: Any, sft_dir: str, out: Path, rank: int = 0) -> None:
        if settings.weight_sync != "reload_from_disk":
            raise ValueError(f"weight_sync={settings.weight_sync!r}: the openai backend supports reload_from_disk")
        self.settings, self.model, self.sft_dir, self.out, self.rank = settings, model, sft_dir, out, rank
        self.urls = split_base_urls(settings.generation_base_url or None)
        self.version = 0  # DPO updates so far
        self.serving: tuple[str, int] | None = None  # what the servers hold: ("sft", 0) or ("policy", version)
        self.name = ""
        self.reloads: list[str] = []  # the folders loaded, in order (rank 0)

    def updated(self) -> None:
        self.version += 1

    def sync(self, which: str) -> None:
        """Make the servers hold ``which`` ("sft", or "policy": its weights now) unless they do; every rank."""
        import torch.distributed as dist

        want = ("sft", 0) if which == "sft" else ("policy", self.version)
        if self.serving == want:
            return
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        failure: BaseException | None = None
        if self.rank == 0:
            try:
                folder = self.sft_dir
                if which == "policy":
                    from training.checkpoint import save_pretrained_folder

                    folder = str(save_pretrained_folder(self.model, None, self.out / ROLLOUT_FOLDER, kind="chat"))
                reload_from_disk(self.urls, folder)
                self.reloads.append(folder)
                self.name = served_models(self.urls[0])[0]
            except Exception as exc:  # noqa: BLE001 - every rank must learn of it before it is raised
                if world == 1:
                    raise
                failure = exc
        if world > 1:
            shared = [f"{type(failure).__name__}: {failure}" if failure else None, self.name]
            dist.broadcast_object_list(shared, src=0)
            if failure is not None:
                raise failure
            if shared[0]:
                raise GenerationError(f"rank 0's weight sync failed: {shared[0]}")
            self.name = shared[1]
        self.serving = want

    def call(self, which: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from synth.llm.openai_backend import OpenAIGenerator

        if self.serving is None or self.serving[0] != which or (which == "policy" and self.serving[1] != self.version):
            raise RuntimeError(f"the generation servers do not hold the {which} weights: sync({which!r}) first")
        generator = OpenAIGenerator(
            self.name,
            base_url=self.urls,
            model_id=f"openai:{self.name}",
            concurrency=self.settings.generation_batch_size,
        )
        try:
            return fn(PerPromptSeeds(generator), *args, **kwargs)
        finally:
            generator.close()
