"""The ``openai`` generation backend: any OpenAI-compatible ``/v1/chat/completions`` server, or a fleet of them.

``base_url`` names one server or several (a list, or one string with commas; also ``$OPENAI_BASE_URL``), and
``concurrency`` is the most requests in flight on each server. A thread pool of ``concurrency x servers`` workers
sends the requests; each takes a slot on the least-loaded server with a free slot (``_Fleet``), so no server ever
has more than ``concurrency`` requests in flight. A request that fails on a server (connection error, timeout,
HTTP 408/429/5xx) is retried with exponential backoff on another server where there is one: the servers it has
failed on are avoided, and a failing server is set aside for a while (doubling per failure in a row, reset by an
answer) while a healthy one exists. Results come back in request order; errors name the server.

One URL behaves as one server always did: ``concurrency`` requests in flight, retries on the same server.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from synth.llm.base import GenerationError, GenerationRequest, GenerationResult, Generator, _result, _scored

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
MAX_SET_ASIDE_S = 60.0  # the longest a failing server is passed over while another one is healthy
# The command lines' --base-url and --concurrency (SynthesisResource's base_url and concurrency say the same).
BASE_URL_HELP = (
    "openai backend: server URL ending in /v1, or several separated by commas (a fleet: each request goes to the "
    "least-loaded server, a failing server's requests are retried on another)"
)
CONCURRENCY_HELP = "openai backend: requests in flight per server"


def split_base_urls(base_url: str | Sequence[str] | None = None) -> list[str]:
    """The server URLs of ``base_url`` (a URL, several separated by commas, or a list of either), else of
    ``$OPENAI_BASE_URL``, else the local default; trailing slashes dropped, duplicates once, order kept."""
    if not base_url:
        base_url = os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    parts = [base_url] if isinstance(base_url, str) else list(base_url)
    urls = [u.strip().rstrip("/") for part in parts for u in str(part).split(",")]
    urls = list(dict.fromkeys(u for u in urls if u))
    if not urls:
        raise ValueError(f"no server URL in base_url {base_url!r}")
    return urls


def auth_headers(api_key_env: str = "OPENAI_API_KEY") -> dict[str, str]:
    """``Authorization: Bearer <key>`` when ``$api_key_env`` is set (servers started with an API key want it)."""
    key = os.environ.get(api_key_env)
    return {"Authorization": f"Bearer {key}"} if key else {}


def served_models(url: str, api_key_env: str = "OPENAI_API_KEY") -> list[str]:
    """The model ids the server at ``url`` (ending in ``/v1``) lists at ``GET /models``; GenerationError when it
    does not answer with a list."""
    import httpx

    try:
        response = httpx.get(f"{url}/models", headers=auth_headers(api_key_env), timeout=30.0)
        models = [str(m["id"]) for m in response.json()["data"]]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise GenerationError(f"{url}/models did not list the served models ({type(exc).__name__}: {exc})") from exc
    if not models:
        raise GenerationError(f"{url}/models lists no model")
    return models


@dataclass(eq=False)
class _Server:
    url: str
    client: Any  # httpx.Client with base_url=url
    limit: int
    in_flight: int = 0
    sent: int = 0  # POSTs sent here, retries included
    failures: int = 0  # failed answers in a row
    set_aside_until: float = 0.0  # time.monotonic() before which a healthy server is preferred


class _Fleet:
    """Slots on the servers: ``acquire`` blocks until a server has a free slot and takes it, ``release`` gives it
    back with the outcome."""

    def __init__(self, servers: list[_Server], backoff_s: float) -> None:
        self.servers = servers
        self.backoff_s = backoff_s
        self._cond = threading.Condition()

    def acquire(self, avoid: set[str]) -> _Server:
        """A slot on the least-loaded server, among those not in ``avoid`` (the ones this request failed on) unless
        it failed on all; a set-aside server only when every allowed one is set aside. Waits for a slot."""
        with self._cond:
            while True:
                now = time.monotonic()
                allowed = [s for s in self.servers if s.url not in avoid] or self.servers
                healthy = [s for s in allowed if s.set_aside_until <= now]
                free = [s for s in (healthy or allowed) if s.in_flight < s.limit]
                if free:
                    server = min(free, key=lambda s: (s.in_flight / s.limit, s.sent))
                    server.in_flight += 1
                    server.sent += 1
                    return server
                waits = [s.set_aside_until - now for s in allowed if s.set_aside_until > now]
                self._cond.wait(timeout=min(waits) if waits else None)  # a release, or a set-aside ends

    def release(self, server: _Server, answered: bool) -> None:
        with self._cond:
            server.in_flight -= 1
            if answered:
                server.failures, server.set_aside_until = 0, 0.0
            else:
                server.failures += 1
                pause = min(self.backoff_s * 2 ** (server.failures - 1), MAX_SET_ASIDE_S)
                server.set_aside_until = time.monotonic() + pause
            self._cond.notify_all()


class OpenAIGenerator(Generator):
    """Any OpenAI-compatible ``/v1/chat/completions`` server (vLLM, transformers serve, llama.cpp, a gateway), or
    several: ``base_url`` is a URL, a comma-separated string or a list; ``concurrency`` is per server."""

    backend = "openai"
    RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})

    def __init__(
        self,
        model: str,
        *,
        base_url: str | Sequence[str] | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        model_id: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 600.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
    ) -> None:
        import httpx

        self.model = model
        self.model_id = model_id or model
        self.base_urls = tuple(split_base_urls(base_url))
        self.base_url = ",".join(self.base_urls)
        self.concurrency = max(1, concurrency)
        self.max_retries = max(0, max_retries)
        self.backoff_s = backoff_s
        headers = auth_headers(api_key_env)
        servers = [
            _Server(
                url,
                httpx.Client(
                    base_url=url,
                    headers=headers,
                    timeout=httpx.Timeout(timeout_s, connect=10.0),
                    limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
                ),
                self.concurrency,
            )
            for url in self.base_urls
        ]
        self._fleet = _Fleet(servers, backoff_s)
        self.http_requests = 0  # POSTs sent, retries included
        self._lock = threading.Lock()

    @property
    def requests_per_server(self) -> dict[str, int]:
        """POSTs sent to each server, retries included."""
        return {s.url: s.sent for s in self._fleet.servers}

    def close(self) -> None:
        for server in self._fleet.servers:
            server.client.close()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        if len(requests) <= 1:
            return [self._one(r) for r in requests]
        from concurrent.futures import ThreadPoolExecutor

        workers = min(self.concurrency * len(self.base_urls), len(requests))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(self._one, requests))

    def _post(self, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """The JSON answer to ``body`` and the URL of the server that gave it."""
        import httpx

        errors: dict[str, str] = {}  # server -> its last retryable error
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            server = self._fleet.acquire(set(errors))
            with self._lock:
                self.http_requests += 1
            answered, error = False, ""
            try:
                response = server.client.post("/chat/completions", json=body)
                if response.status_code in self.RETRY_STATUS:
                    error = f"HTTP {response.status_code}: {response.text[:200]}"
                else:
                    answered = True
            except httpx.TransportError as exc:  # refused, reset, timed out: the server may come back
                error = f"{type(exc).__name__}: {exc}"
            finally:
                self._fleet.release(server, answered)
            if not answered:
                errors.pop(server.url, None)  # the latest error of each server last
                errors[server.url] = error
                continue
            if response.status_code != 200:
                raise GenerationError(
                    f"{server.url}/chat/completions answered HTTP {response.status_code} for model "
                    f"{self.model!r}: {response.text[:500]}"
                )
            try:
                return response.json(), server.url
            except ValueError as exc:
                raise GenerationError(
                    f"{server.url}/chat/completions returned non-JSON: {response.text[:200]}"
                ) from exc
        tries = self.max_retries + 1
        if len(errors) == 1:
            ((url, error),) = errors.items()
            where, why = f"server at {url}", error
        else:
            where, why = f"servers at {', '.join(errors)}", "; ".join(f"{u}: {e}" for u, e in errors.items())
        raise GenerationError(
            f"no answer from the OpenAI-compatible {where} after {tries} tries ({why}); start one "
            f"(e.g. `vllm serve MODEL`) or point --base-url / OPENAI_BASE_URL at it"
        )

    TOP_LOGPROBS = 20  # the most OpenAI's API allows; vLLM allows more

    def _score_one(self, request: GenerationRequest) -> GenerationResult:
        """One generated token with its top log-probabilities; the choices' probabilities are read from those
        (a choice outside the top ``TOP_LOGPROBS`` counts as 0)."""
        body = {
            "model": self.model,
            "messages": request.messages,
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": True,
            "top_logprobs": self.TOP_LOGPROBS,
        }
        data, url = self._post(body)
        try:
            top = data["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            seen: dict[str, float] = {}
            for entry in top:  # two token ids may decode to the same string: their probabilities add up
                seen[entry["token"]] = seen.get(entry["token"], 0.0) + math.exp(float(entry["logprob"]))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise GenerationError(
                f"{url} returned no top_logprobs for a scoring request: {json.dumps(data)[:300]}"
            ) from exc
        usage = data.get("usage") or {}
        return _scored(request, self, [seen.get(c, 0.0) for c in request.choices], int(usage.get("prompt_tokens", 0)))

    def _one(self, request: GenerationRequest) -> GenerationResult:
        if request.choices:
            return self._score_one(request)
        body = {
            "model": self.model,
            "messages": request.messages,
            "max_tokens": request.max_new_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed,
            "n": request.n,
        }
        data, url = self._post(body)
        try:
            choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
            texts = [c["message"]["content"] or "" for c in choices]
            finish = [c.get("finish_reason") or "stop" for c in choices]
        except (KeyError, TypeError) as exc:
            raise GenerationError(f"unexpected response from {url}: {json.dumps(data)[:300]}") from exc
        if len(texts) != request.n:
            raise GenerationError(f"{url} returned {len(texts)} choices for n={request.n}")
        usage = data.get("usage") or {}
        if request.n == 1 and "completion_tokens" in usage:
            counts = [int(usage["completion_tokens"])]
        else:  # usage only has the total over the n choices: count each with the Qwen2 tokenizer
            from pipelines.tokenizer import count_tokens

            counts = [c + (f == "stop") for c, f in zip(count_tokens(texts), finish)]
        return _result(
            request,
            self,
            texts=texts,
            completion_tokens=counts,
            finish_reasons=finish,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
        )
