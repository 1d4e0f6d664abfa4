"""A small, real OpenAI-compatible server for the tests of ``synth.llm.backends``' openai backend.

``transformers serve`` (transformers 5.24) needs FastAPI (the ``transformers[serving]`` extra), which this project
does not install; this server speaks the same wire protocol (``POST /v1/chat/completions``, ``GET /v1/models``,
``GET /health``) with starlette + uvicorn over real TCP on 127.0.0.1, answering through our transformers backend.
``fail_first`` makes it answer HTTP 503 to the first N completions (to exercise client retries). ``app.state.counters``
counts the completions asked (``completions``, 503s included) and records the most requests in flight at once
(``max_in_flight``: received and not yet answered, counted in the event loop, so exact).

``POST /update_weights_from_disk`` with ``{"model_path": FOLDER}`` (SGLang's native endpoint, at the server root,
not under /v1) reloads the generator from FOLDER (a save_pretrained folder) and answers ``{"success": true}``
(``{"success": false}`` with HTTP 400 when it cannot load it, as SGLang). ``counters["reloads"]`` counts them,
``counters["reloaded"]`` lists the folders and ``counters["reloaded_weights"]`` the sum of every loaded weight (to
tell which weights a reload brought). ``reload_failure``: "http500" answers HTTP 500, "success_false" HTTP 200 with
``{"success": false}``, without loading anything.

    python tests/synth_openai_server.py MODEL_DIR --port 8000     # serve a local model folder by hand
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def weights_sum(model) -> float:
    """The sum of every weight of ``model`` in float64: which weights a model holds, in one number."""
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def build_app(generator, served_name: str, fail_first: int = 0, reload_failure: str | None = None):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from synth.llm.base import GenerationRequest

    lock = threading.Lock()  # one generate at a time on the shared model
    state = {"completions": 0, "failures_left": fail_first, "authorization": None, "in_flight": 0, "max_in_flight": 0,
             "reloads": 0, "reloaded": [], "reloaded_weights": []}  # fmt: skip

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": served_name, "object": "model"}]})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    def top_logprobs(body: dict) -> JSONResponse:
        """One greedy token with its ``top_logprobs`` alternatives, as vLLM answers ``logprobs: true``."""
        import math

        probs, lengths = generator.next_token_probs([body["messages"]])
        k = int(body.get("top_logprobs") or 1)
        values, ids = probs[0].topk(k)
        top = [
            {"token": generator.tokenizer.decode([int(t)]), "logprob": math.log(max(float(v), 1e-45))}
            for v, t in zip(values, ids)
        ]
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": top[0]["token"]},
            "logprobs": {"content": [{**top[0], "top_logprobs": top}]},
            "finish_reason": "length",
        }
        usage = {"prompt_tokens": lengths[0], "completion_tokens": 1, "total_tokens": lengths[0] + 1}
        return JSONResponse({"object": "chat.completion", "model": served_name, "choices": [choice], "usage": usage})

    def complete(body: dict, authorization: str | None) -> JSONResponse:
        with lock:
            state["completions"] += 1
            state["authorization"] = authorization
            if state["failures_left"] > 0:
                state["failures_left"] -= 1
                return JSONResponse({"error": {"message": "warming up"}}, status_code=503)
            if body.get("model") != served_name:
                return JSONResponse({"error": {"message": f"model {body.get('model')!r} not found"}}, status_code=404)
            if body.get("logprobs"):
                return top_logprobs(body)
            try:
                req = GenerationRequest(
                    messages=body["messages"],
                    max_new_tokens=int(body.get("max_tokens") or 16),
                    temperature=float(body.get("temperature", 1.0)),
                    top_p=float(body.get("top_p", 1.0)),
                    seed=int(body.get("seed") or 0),
                    n=int(body.get("n") or 1),
                )
            except (KeyError, ValueError, TypeError) as exc:
                return JSONResponse({"error": {"message": str(exc)}}, status_code=400)
            result = generator.generate([req])[0]
        choices = [
            {"index": k, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            for k, (text, finish) in enumerate(zip(result.texts, result.finish_reasons))
        ]
        usage = {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": sum(result.completion_tokens),
            "total_tokens": result.prompt_tokens + sum(result.completion_tokens),
        }
        return JSONResponse(
            {
                "id": f"chatcmpl-{state['completions']}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": served_name,
                "choices": choices,
                "usage": usage,
            }
        )

    def reload(body: dict) -> JSONResponse:
        nonlocal generator
        from synth.llm.backends import TransformersGenerator

        with lock:  # no completion runs while the weights change
            if reload_failure == "http500":
                return JSONResponse({"success": False, "message": "out of memory (test)"}, status_code=500)
            if reload_failure == "success_false":
                return JSONResponse({"success": False, "message": "cannot load (test)"})
            folder = str(body.get("model_path") or "")
            try:
                loaded = TransformersGenerator(folder, model_id=generator.model_id, batch_size=generator.batch_size)
            except Exception as exc:  # noqa: BLE001 - the answer says why, as SGLang's does
                return JSONResponse({"success": False, "message": f"{type(exc).__name__}: {exc}"}, status_code=400)
            generator = loaded
            state["reloads"] += 1
            state["reloaded"].append(folder)
            state["reloaded_weights"].append(weights_sum(generator.model))
        return JSONResponse({"success": True, "message": f"loaded {folder}", "num_paused_requests": 0})

    async def update_weights_from_disk(request: Request) -> JSONResponse:
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(reload, await request.json())

    async def chat_completions(request: Request) -> JSONResponse:
        from starlette.concurrency import run_in_threadpool

        state["in_flight"] += 1  # the event loop runs one handler step at a time: no lock needed
        state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
        try:
            return await run_in_threadpool(complete, await request.json(), request.headers.get("authorization"))
        finally:
            state["in_flight"] -= 1

    routes = [
        Route("/v1/models", models),
        Route("/health", health),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/update_weights_from_disk", update_weights_from_disk, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.counters = state
    return app


class ServerThread:
    """Runs uvicorn on a free 127.0.0.1 port in a daemon thread; ``base_url`` ends in ``/v1``."""

    def __init__(self, app) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test OpenAI server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def main() -> None:
    import uvicorn

    from synth.llm.backends import TransformersGenerator

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--name", default="local")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    app = build_app(TransformersGenerator(args.model_dir), args.name)
    uvicorn.run(app, host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
