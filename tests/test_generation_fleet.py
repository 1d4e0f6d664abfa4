"""The openai backend over a fleet of servers (issue 13): two real OpenAI-compatible servers on 127.0.0.1
(tests/synth_openai_server.py, each with its own tiny random Qwen2), requests spread over both with a per-server
limit on requests in flight, a failing or absent server's requests served by the other, errors that name the server.
No timing assertions: each server counts its completions and records the most requests it had in flight at once.

    .venv/bin/python -m pytest tests/test_generation_fleet.py -q
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from synth.llm.backends import OpenAIGenerator, TransformersGenerator
from synth.llm.base import GenerationError, GenerationRequest
from synth.llm.generate import make_generator
from synth.llm.openai_backend import split_base_urls
from synth.llm.teacher import describe_teacher

sys.path.insert(0, str(Path(__file__).resolve().parent))

LIMIT = 2  # requests in flight per server


def ask(text: str, **kw) -> GenerationRequest:
    return GenerationRequest([{"role": "user", "content": text}], **{"max_new_tokens": 5, **kw})


REQUESTS = [ask(f"Question {i}: what is {i} + {i}?") for i in range(10)] + [
    ask("Say hi", temperature=1.0, seed=7),
    ask("Name a colour", temperature=0.8, top_p=0.9, seed=3, n=2),
]


@pytest.fixture(scope="module")
def servers(tiny_qwen_dir):
    """Two servers, each with its own copy of the model (a shared tokenizer is not safe across threads)."""
    from synth_openai_server import ServerThread, build_app

    apps = [build_app(TransformersGenerator(tiny_qwen_dir, batch_size=4), "tiny-qwen2") for _ in range(2)]
    with ServerThread(apps[0]) as a, ServerThread(apps[1]) as b:
        a.app, b.app = apps
        yield a, b


@pytest.fixture(scope="module")
def single(servers):
    """What one healthy server (the second) answers to ``REQUESTS``, with at most ``LIMIT`` in flight."""
    server = servers[1]
    server.app.state.counters.update(completions=0, failures_left=0, max_in_flight=0)
    client, results = run(server.base_url)
    assert client.requests_per_server == {server.base_url: len(REQUESTS)}
    assert counters(server)["completions"] == len(REQUESTS) and counters(server)["max_in_flight"] <= LIMIT
    return results


@pytest.fixture
def fresh(servers, single):
    """The servers with their counters at zero and no failures queued."""
    for server in servers:
        server.app.state.counters.update(completions=0, failures_left=0, max_in_flight=0)
    return servers


def counters(server) -> dict:
    return server.app.state.counters


def dead_url() -> str:
    """The URL of a port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def run(base_url, requests=REQUESTS, **kw):
    client = OpenAIGenerator("tiny-qwen2", base_url=base_url, concurrency=LIMIT, backoff_s=0.01, **kw)
    try:
        return client, client.generate(requests)
    finally:
        client.close()


def same(a, b) -> None:
    assert [r.texts for r in a] == [r.texts for r in b]
    assert [r.completion_tokens for r in a] == [r.completion_tokens for r in b]
    assert [r.prompt_tokens for r in a] == [r.prompt_tokens for r in b]
    assert [r.finish_reasons for r in a] == [r.finish_reasons for r in b]


def test_base_urls_are_one_a_list_or_comma_separated(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert split_base_urls(None) == ["http://127.0.0.1:8000/v1"]
    assert split_base_urls("http://a:1/v1/") == ["http://a:1/v1"]
    assert split_base_urls(" http://a:1/v1, http://b:2/v1/ ,,http://a:1/v1") == ["http://a:1/v1", "http://b:2/v1"]
    assert split_base_urls(["http://a:1/v1", "http://b:2/v1,http://c:3/v1"]) == [
        "http://a:1/v1",
        "http://b:2/v1",
        "http://c:3/v1",
    ]
    monkeypatch.setenv("OPENAI_BASE_URL", "http://a:1/v1,http://b:2/v1")
    assert split_base_urls("") == ["http://a:1/v1", "http://b:2/v1"]
    client = make_generator("openai", "m", concurrency=3)
    assert client.base_urls == ("http://a:1/v1", "http://b:2/v1") and client.concurrency == 3
    assert client.base_url == "http://a:1/v1,http://b:2/v1"
    client.close()
    with pytest.raises(ValueError, match="no server URL"):
        split_base_urls(" , ")


def test_a_fleet_answers_like_one_server_and_uses_both(fresh, single):
    a, b = fresh
    fleet, spread = run(f"{a.base_url},{b.base_url}")
    same(spread, single)  # the same answers, in request order
    assert all(r.backend == "openai" and r.model_id == "tiny-qwen2" for r in spread)
    done = [counters(s)["completions"] for s in (a, b)]
    assert sum(done) == len(REQUESTS) and min(done) >= 1  # every request once, and both servers got some
    assert fleet.requests_per_server == {a.base_url: done[0], b.base_url: done[1]}
    assert fleet.http_requests == len(REQUESTS)  # no retries
    assert counters(a)["max_in_flight"] <= LIMIT and counters(b)["max_in_flight"] <= LIMIT


def test_the_limit_holds_per_server_with_many_workers(fresh):
    """Thirty requests through a fleet of limit 1: each server has one request in flight at most, never two."""
    a, b = fresh
    requests = [ask(f"item {i}", max_new_tokens=2) for i in range(30)]
    client = OpenAIGenerator("tiny-qwen2", base_url=[a.base_url, b.base_url], concurrency=1)
    try:
        results = client.generate(requests)
    finally:
        client.close()
    assert len(results) == 30 and all(r.texts[0] is not None for r in results)
    assert counters(a)["max_in_flight"] == 1 and counters(b)["max_in_flight"] == 1
    assert counters(a)["completions"] + counters(b)["completions"] == 30


def test_a_server_answering_503_has_its_requests_served_by_the_other(fresh, single):
    a, b = fresh
    counters(a)["failures_left"] = 10**6  # a answers 503 to everything
    fleet, results = run([a.base_url, b.base_url], max_retries=1)
    same(results, single)
    assert counters(a)["completions"] >= 1  # it was asked (the first request goes to the first server) ...
    assert fleet.requests_per_server[a.base_url] == counters(a)["completions"]
    assert counters(b)["completions"] == len(REQUESTS)  # ... and the other answered everything
    assert counters(b)["max_in_flight"] <= LIMIT


def test_a_server_that_is_down_has_its_requests_served_by_the_other(fresh, single):
    _, b = fresh
    down = dead_url()
    fleet, results = run(f"{down},{b.base_url}", max_retries=1)
    same(results, single)
    assert fleet.requests_per_server[down] >= 1
    assert counters(b)["completions"] == len(REQUESTS) and counters(b)["max_in_flight"] <= LIMIT


def test_errors_name_the_server(fresh):
    a, b = fresh
    down_1, down_2 = dead_url(), dead_url()
    with pytest.raises(GenerationError, match="no answer .* servers at .* after 3 tries") as info:
        run([down_1, down_2], requests=[ask("Hi")], max_retries=2)
    assert f"{down_1}: ConnectError" in str(info.value) and f"{down_2}: ConnectError" in str(info.value)

    client = OpenAIGenerator("no-such-model", base_url=[a.base_url, b.base_url], backoff_s=0.01)
    with pytest.raises(GenerationError, match=r"http://127\.0\.0\.1:\d+/v1/chat/completions answered HTTP 404"):
        client.generate([ask("Hi")])
    client.close()
    assert client.http_requests == 1  # a client error is not retried


def test_describe_teacher_checks_every_server(fresh):
    a, b = fresh
    info = describe_teacher("openai", "tiny-qwen2", f"{a.base_url},{b.base_url}")
    assert info["base_url"] == f"{a.base_url},{b.base_url}" and info["served_models"] == "tiny-qwen2"
    from synth.llm.base import TeacherUnavailable

    down = dead_url()
    with pytest.raises(TeacherUnavailable, match=f"server at {down}"):
        describe_teacher("openai", "tiny-qwen2", f"{a.base_url},{down}")
