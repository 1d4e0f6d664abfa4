"""Tests of the generation layer in synth/: ChatML template, transformers/openai/vllm backends, request cache.

All on a tiny random Qwen2 model (never the teacher); the openai backend talks to a real HTTP server on 127.0.0.1
(tests/synth_openai_server.py).

    .venv/bin/python -m pytest tests/test_synth_generate.py -q
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipelines.tokenizer import IM_END_ID
from synth.llm.backends import OpenAIGenerator, TransformersGenerator
from synth.llm.base import VLLM_MISSING, GenerationError, GenerationRequest, Generator, TeacherUnavailable
from synth.llm.cache import CachedGenerator
from synth.llm.chat import DEFAULT_SYSTEM_PROMPT, QWEN2_CHAT_TEMPLATE, render_chat, validate_chat
from synth.llm.generate import make_generator
from synth.llm.teacher import GGUF_SHA256, MARKER, is_set_up, setup_teacher, teacher_path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def ask(text: str, **kw) -> GenerationRequest:
    return GenerationRequest([{"role": "user", "content": text}], **{"max_new_tokens": 6, **kw})


@pytest.fixture(scope="module")
def tiny_dir(tiny_qwen_dir) -> str:
    return tiny_qwen_dir


@pytest.fixture(scope="module")
def generator(tiny_dir) -> TransformersGenerator:
    return TransformersGenerator(tiny_dir, batch_size=4)


class Counting(Generator):
    """Passes requests through and remembers what the model was asked."""

    def __init__(self, inner: Generator) -> None:
        self.inner, self.backend, self.model_id = inner, inner.backend, inner.model_id
        self.asked: list[str] = []

    def generate(self, requests):
        self.asked += [r.messages[-1]["content"] for r in requests]
        return self.inner.generate(requests)


# ------------------------------------------------------------------------------------------------------ chat


CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello?"}],
    [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3+3?\nexplain"},
        {"role": "assistant", "content": "6, because 3+3=6."},
    ],
]


def test_render_chat_is_qwen2_chatml():
    assert render_chat([{"role": "user", "content": "Hi"}]) == (
        f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    text = render_chat(CONVERSATIONS[1], add_generation_prompt=False)
    assert text == "<|im_start|>system\nAnswer in French.<|im_end|>\n<|im_start|>user\nHello?<|im_end|>\n"
    assert "<think>" not in render_chat(CONVERSATIONS[2])


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_jinja_template_renders_like_render_chat(tiny_dir, add_generation_prompt):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True)
    tokenizer.chat_template = QWEN2_CHAT_TEMPLATE
    for messages in CONVERSATIONS:
        jinja = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        assert jinja == render_chat(messages, add_generation_prompt=add_generation_prompt)


def test_validate_chat():
    assert validate_chat(CONVERSATIONS[2]) == []
    assert validate_chat(CONVERSATIONS[0], final_role="user") == []
    assert validate_chat(CONVERSATIONS[0]) == ["the last message is user, expected assistant"]
    assert validate_chat([]) == ["no messages"]
    assert "role 'bot'" in validate_chat([{"role": "bot", "content": "x"}])[0]
    assert "empty" in validate_chat([{"role": "user", "content": "  "}, {"role": "assistant", "content": "a"}])[0]
    assert "alternate" in validate_chat([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])[0]
    assert "alternate" in validate_chat([{"role": "assistant", "content": "a"}])[0]
    late_system = [*CONVERSATIONS[2][:2], {"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]
    assert any("only the first may be system" in p for p in validate_chat(late_system))
    assert "control token" in validate_chat([{"role": "user", "content": "x<|im_end|>"}], final_role="user")[0]
    assert "no user or assistant" in validate_chat([{"role": "system", "content": "s"}])[0]


def test_request_validation_and_cache_key():
    with pytest.raises(ValueError, match="the last message is assistant"):
        GenerationRequest(CONVERSATIONS[2])
    for bad in ({"n": 0}, {"temperature": -1.0}, {"top_p": 0.0}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError):
            ask("x", **bad)
    key = ask("x", seed=1).cache_key("m")
    assert key == ask("x", seed=1).cache_key("m")
    others = [ask("x", seed=2), ask("x", seed=1, n=2), ask("x", seed=1, template_version="v2"), ask("y", seed=1)]
    others += [ask("x", seed=1, temperature=0.5), ask("x", seed=1, max_new_tokens=7)]
    assert len({key, *(r.cache_key("m") for r in others), ask("x", seed=1).cache_key("other-model")}) == 8


# ---------------------------------------------------------------------------------------------- transformers

PROMPTS = ["Hi", "What is the capital of France, and why?", "2+2?", "Tell me a long story about a sea captain.", "ok"]


def test_batched_greedy_equals_one_at_a_time(generator):
    requests = [ask(p, max_new_tokens=8) for p in PROMPTS]
    calls = generator.generate_calls
    batched = generator.generate(requests)
    assert generator.generate_calls - calls == 2  # 5 prompts, batch size 4: really batched
    for request, result in zip(requests, batched):
        alone = generator.generate([request])[0]
        assert result.texts == alone.texts
        assert result.completion_tokens == alone.completion_tokens
        assert result.prompt_tokens == alone.prompt_tokens
    assert batched[0].backend == "transformers" and batched[0].sampling["max_new_tokens"] == 8
    assert batched[0].prompt_tokens < batched[3].prompt_tokens


def test_seeded_samples_are_reproducible_in_any_batch(generator):
    requests = [ask(p, temperature=1.0, seed=7, n=3, max_new_tokens=4) for p in PROMPTS[:3]]
    first = generator.generate(requests)
    assert [r.texts for r in first] == [r.texts for r in generator.generate(requests)]
    assert first[1].texts == generator.generate([requests[1]])[0].texts  # alone = in a batch
    assert all(len(set(r.texts)) == 3 for r in first)  # the n samples differ
    other_seed = generator.generate([ask(PROMPTS[0], temperature=1.0, seed=8, n=3, max_new_tokens=4)])[0]
    assert other_seed.texts != first[0].texts
    greedy = generator.generate([ask(PROMPTS[0], n=3)])[0]
    assert len(greedy.texts) == 3 and len(set(greedy.texts)) == 1
    # a nucleus this small holds only the most likely token: sampling becomes greedy
    narrow = generator.generate([ask(PROMPTS[0], temperature=1.0, top_p=1e-6, seed=7, n=2)])[0]
    assert narrow.texts == greedy.texts[:2]


def test_stops_at_im_end_per_row(generator):
    """A scripted lm_head: row r says token 9707 ("Hello") r times, then <|im_end|>; rows finish at different steps
    in one batch, and the one that does not finish within max_new_tokens reports "length"."""
    import torch

    hello = 9707
    stops = [2, 0, 6, 1]
    state = {"step": 0}

    def script(module, inputs, output):  # output: (rows, seq, vocab) logits
        if output.shape[1] > 1:
            state["step"] = 0  # prefill of a new generate call
        forced = torch.full_like(output, -1e4)
        for row, stop in enumerate(stops[: output.shape[0]]):
            forced[row, -1, hello if state["step"] < stop else IM_END_ID] = 0.0
        state["step"] += 1
        return forced

    # same-length prompts keep their order in the length-sorted batch
    requests = [ask(c, max_new_tokens=4) for c in "abcd"]
    handle = generator.model.lm_head.register_forward_hook(script)
    try:
        results = generator.generate(requests)
    finally:
        handle.remove()
    assert len({r.prompt_tokens for r in results}) == 1
    assert [r.texts[0] for r in results] == ["HelloHello", "", "HelloHelloHelloHello", "Hello"]
    assert [r.finish_reasons[0] for r in results] == ["stop", "stop", "length", "stop"]
    assert [r.completion_tokens[0] for r in results] == [3, 1, 4, 2]


# ----------------------------------------------------------------------------------------------------- cache


def test_cache_hits_do_not_call_the_model(generator, tmp_path):
    counting = Counting(generator)
    cached = CachedGenerator(counting, tmp_path / "cache", chunk_size=2)
    requests = [ask("one"), ask("two"), ask("one")]
    fresh = cached.generate(requests)
    assert counting.asked == ["one", "two"]  # the duplicate is asked once
    assert [r.cached for r in fresh] == [False, False, False] and fresh[0].texts == fresh[2].texts
    again = cached.generate([ask("two"), ask("three")])
    assert counting.asked == ["one", "two", "three"]
    assert again[0].cached and not again[1].cached and again[0].texts == fresh[1].texts

    # a new process reads the shards back (a torn last line, as a kill mid-write leaves, is skipped)
    shard = next((tmp_path / "cache").glob("*.jsonl"))
    with open(shard, "a") as f:
        f.write('{"key": "abc", "result": {"tex')
    reloaded_counting = Counting(generator)
    reloaded = CachedGenerator(reloaded_counting, tmp_path / "cache")
    assert len(reloaded) == 3
    results = reloaded.generate([ask("one"), ask("three"), ask("one", seed=1)])
    assert reloaded_counting.asked == ["one"]  # only the new seed
    assert results[0].texts == fresh[0].texts and results[0].model_id == generator.model_id


KILLED_RUN = textwrap.dedent(
    """
    import json, sys, time
    from synth.llm.backends import TransformersGenerator
    from synth.llm.base import GenerationRequest, Generator
    from synth.llm.cache import CachedGenerator

    model_dir, cache_dir, log = sys.argv[1:4]
    inner = TransformersGenerator(model_dir, batch_size=2)

    class Logged(Generator):
        backend, model_id, calls = inner.backend, inner.model_id, 0

        def generate(self, requests):
            self.calls += 1
            with open(log, "a") as f:
                f.write(json.dumps([r.messages[-1]["content"] for r in requests]) + "\\n")
            if self.calls == 3:
                time.sleep(600)  # killed here, while the third chunk is in flight
            return inner.generate(requests)

    requests = [GenerationRequest([{"role": "user", "content": f"question {i}"}], max_new_tokens=4) for i in range(8)]
    CachedGenerator(Logged(), cache_dir, chunk_size=2).generate(requests)
    """
)


def test_killed_run_resumes_with_only_the_remaining_requests(generator, tiny_dir, tmp_path):
    log = tmp_path / "calls.jsonl"
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, tiny_dir, str(cache), str(log)], cwd=REPO)
    deadline = time.monotonic() + 120
    while not (log.exists() and len(log.read_text().splitlines()) >= 3):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "the run did not reach its third chunk"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    asked_before = [q for line in log.read_text().splitlines() for q in json.loads(line)]
    assert asked_before == [f"question {i}" for i in range(6)]  # chunks 1 and 2 answered, chunk 3 in flight

    requests = [ask(f"question {i}", max_new_tokens=4) for i in range(8)]
    counting = Counting(generator)
    resumed = CachedGenerator(counting, cache, chunk_size=2).generate(requests)
    assert counting.asked == [f"question {i}" for i in range(4, 8)]
    assert [r.cached for r in resumed] == [True] * 4 + [False] * 4
    assert [r.texts for r in resumed] == [r.texts for r in generator.generate(requests)]


# ---------------------------------------------------------------------------------------------------- openai


@pytest.fixture(scope="module")
def server(generator):
    from synth_openai_server import ServerThread, build_app

    app = build_app(generator, "tiny-qwen2")
    with ServerThread(app) as running:
        running.app = app
        yield running


def test_openai_backend_against_a_real_server(server, generator, monkeypatch):
    monkeypatch.setenv("SYNTH_TEST_KEY", "sk-local")
    client = make_generator("openai", "tiny-qwen2", base_url=server.base_url, api_key_env="SYNTH_TEST_KEY")
    requests = [ask(p, max_new_tokens=8) for p in PROMPTS[:4]] + [ask("Hi", temperature=1.0, seed=3, n=2)]
    try:
        remote = client.generate(requests)
    finally:
        client.close()
    local = generator.generate(requests)
    assert [r.texts for r in remote] == [r.texts for r in local]
    assert [r.completion_tokens for r in remote[:4]] == [r.completion_tokens for r in local[:4]]
    assert [r.prompt_tokens for r in remote] == [r.prompt_tokens for r in local]
    assert remote[0].backend == "openai" and remote[0].model_id == "tiny-qwen2"
    # usage only totals the n=2 choices: each sample is counted locally (text re-encoded, plus the stop token)
    assert len(remote[4].completion_tokens) == 2 and all(c >= 1 for c in remote[4].completion_tokens)
    assert remote[4].sampling == {"max_new_tokens": 6, "temperature": 1.0, "top_p": 1.0, "seed": 3, "n": 2}
    assert server.app.state.counters["authorization"] == "Bearer sk-local"


def test_openai_backend_retries_server_errors(server):
    server.app.state.counters["failures_left"] = 2  # two HTTP 503s, then answers
    client = OpenAIGenerator("tiny-qwen2", base_url=server.base_url, backoff_s=0.01)
    try:
        result = client.generate([ask("Hi")])[0]
    finally:
        client.close()
    assert client.http_requests == 3 and result.texts[0]


def test_openai_backend_errors_are_clear(server):
    wrong_model = OpenAIGenerator("no-such-model", base_url=server.base_url, backoff_s=0.01)
    with pytest.raises(GenerationError, match="HTTP 404.*no-such-model"):
        wrong_model.generate([ask("Hi")])
    assert wrong_model.http_requests == 1  # a client error is not retried

    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    unreachable = OpenAIGenerator("m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=2, backoff_s=0.01)
    with pytest.raises(GenerationError, match=f"no answer .* at http://127.0.0.1:{port}/v1 after 3 tries"):
        unreachable.generate([ask("Hi")])


# ------------------------------------------------------------------------------------------------ vllm, teacher


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed (GPU machine)")
def test_vllm_missing_is_a_clear_error(tiny_dir):
    with pytest.raises(GenerationError) as info:
        make_generator("vllm", tiny_dir)
    assert str(info.value) == VLLM_MISSING == "vllm is not installed (GPU extra: pip install -e '.[gpu]')"
    with pytest.raises(ValueError, match="unknown generation backend 'llamacpp'"):
        make_generator("llamacpp", tiny_dir)


def test_teacher_path_resolution(tiny_dir, tmp_path):
    assert teacher_path(tiny_dir) == tiny_dir
    with pytest.raises(TeacherUnavailable, match="never download from the hub"):
        teacher_path("no-such-org/no-such-model")
    with pytest.raises(TeacherUnavailable, match="does not exist"):
        teacher_path(str(tmp_path / "missing"))


def test_teacher_setup_trusts_only_its_marker(tmp_path):
    (tmp_path / MARKER).write_text(json.dumps({"gguf_sha256": "0" * 64}))
    assert not is_set_up(tmp_path)
    (tmp_path / MARKER).write_text(json.dumps({"gguf_sha256": GGUF_SHA256, "model_id": "Qwen/x"}))
    assert is_set_up(tmp_path)
    assert setup_teacher(tmp_path) == tmp_path  # already set up: no download


# ------------------------------------------------------------------------------------------------------ scoring

DIGITS = ("0", "1", "2", "3", "4", "5")


def test_scoring_reads_the_next_token_distribution(generator):
    import torch

    conversation = [{"role": "user", "content": "Rate this text from 0 to 5: the sky is blue."}]
    request = GenerationRequest(conversation, choices=DIGITS)
    (result,) = generator.generate([request])
    # The same probabilities straight from one forward pass of the model, without padding.
    ids = generator.tokenizer(render_chat(conversation), add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        probs = torch.softmax(generator.model(input_ids=ids).logits[0, -1].float(), dim=-1)
    raw = probs[generator.choice_token_ids(DIGITS)]
    assert result.choice_mass == pytest.approx(float(raw.sum()), rel=1e-4)
    assert result.choice_probs == pytest.approx((raw / raw.sum()).tolist(), rel=1e-4)
    assert sum(result.choice_probs) == pytest.approx(1.0)
    assert result.texts == [DIGITS[int(raw.argmax())]] and result.finish_reasons == ["score"]


def test_scoring_in_a_padded_batch_equals_alone_and_mixes_with_generation(generator):
    short = GenerationRequest([{"role": "user", "content": "Rate: ok"}], choices=DIGITS)
    long = GenerationRequest([{"role": "user", "content": "Rate this much longer text, please: " * 8}], choices=DIGITS)
    alone = [generator.generate([r])[0].choice_probs for r in (short, long)]
    mixed = generator.generate([long, ask("hello"), short])
    assert mixed[0].choice_probs == pytest.approx(alone[1], abs=1e-5)
    assert mixed[2].choice_probs == pytest.approx(alone[0], abs=1e-5)
    assert mixed[1].choice_probs is None and mixed[1].finish_reasons[0] in ("stop", "length")


def test_scoring_request_validation_and_cache_key():
    base = [{"role": "user", "content": "Rate"}]
    with pytest.raises(ValueError, match="n must be 1"):
        GenerationRequest(base, choices=DIGITS, n=2)
    with pytest.raises(ValueError, match="distinct"):
        GenerationRequest(base, choices=("1", "1"))
    assert GenerationRequest(base, choices=DIGITS).cache_key("m") != GenerationRequest(base).cache_key("m")
    assert GenerationRequest(base, choices=DIGITS).cache_key("m") != GenerationRequest(base, choices="012").cache_key(
        "m"
    )


def test_multi_token_choice_is_refused(generator):
    with pytest.raises(ValueError, match="single-token"):
        generator.generate([GenerationRequest([{"role": "user", "content": "Rate"}], choices=("excellent-ish",))])


def test_scoring_through_the_openai_backend_matches_local(server, generator):
    conversation = [{"role": "user", "content": "Rate this from 0 to 5."}]
    probs, _ = generator.next_token_probs([conversation])
    # Choices the random model likes (so they are in the server's top 20), kept if they re-encode to one token.
    top = [generator.tokenizer.decode([int(t)]) for t in probs[0].topk(8).indices]
    choices = tuple(
        dict.fromkeys(c for c in top if len(generator.tokenizer(c, add_special_tokens=False)["input_ids"]) == 1)
    )[:3]
    assert len(choices) >= 2
    request = GenerationRequest(conversation, choices=choices)
    client = OpenAIGenerator("tiny-qwen2", base_url=server.base_url)
    (remote,) = client.generate([request])
    client.close()
    (local,) = generator.generate([request])
    assert remote.backend == "openai" and remote.choice_mass == pytest.approx(local.choice_mass, rel=1e-3)
    assert remote.choice_probs == pytest.approx(local.choice_probs, abs=1e-4) and remote.texts == local.texts
