"""Online DPO (training.online_dpo) with ``generation_backend="openai"`` (training.rollout_servers): the episodes are
sampled by an OpenAI-compatible server over real TCP (tests/synth_openai_server.py, in a thread, on a free port,
stopped on teardown), which is told to reload the policy from ``<output>/rollout_policy`` through
``POST /update_weights_from_disk`` (SGLang's endpoint) whenever the policy changed; a failed reload stops the run with
an error naming the server. The tiny models of tests/test_online_dpo.py; CPU.

    .venv/bin/python -m pytest -q tests/test_online_dpo_openai.py
"""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from test_online_dpo import models  # noqa: F401  (the module's tiny base, SFT and reward models)

from synth.llm.base import GenerationError
from training import online_dpo as od
from training.rollout_servers import ROLLOUT_FOLDER, request_seed, server_root

K, PROMPTS, HELDOUT, EPISODES = 4, 8, 4, 2
SETTINGS = dict(
    episodes=EPISODES, prompts_per_episode=PROMPTS, samples_per_prompt=K, max_new_tokens=4, heldout_prompts=HELDOUT,
    margin=0.1, lr=1e-2, min_lr=1e-3, beta=0.5, batch_size=8, micro_batch_size=8, max_len=128, device="cpu",
    num_threads=2, winrate_every=0, generation_backend="openai", generation_batch_size=4,
)  # fmt: skip
SERVED = "sft-on-a-server"


def serve(folder: str, **kwargs):
    from synth_openai_server import ServerThread, build_app

    from synth.llm.backends import TransformersGenerator

    app = build_app(TransformersGenerator(folder, batch_size=8), SERVED, **kwargs)
    server = ServerThread(app)
    server.app = app
    return server


def weights_of(folder: str | Path) -> float:
    from synth_openai_server import weights_sum
    from transformers import AutoModelForCausalLM

    return weights_sum(AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32))


def test_the_server_reloads_the_policy_before_each_episode_and_samples_it(models, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    with serve(models["sft"]) as server:
        settings = od.OnlineDpoSettings(**SETTINGS, generation_base_url=f"{server.base_url}/")  # a trailing slash
        summary = od.run(settings, {"sft": models["prompts"]}, str(out), models["sft"], models["reward"])
        counters = server.app.state.counters
    rollout = str(out / ROLLOUT_FOLDER)
    # the SFT model once (the win rate's baseline), then the policy: before the first win rate (and episode 1),
    # after episode 1's update (before episode 2), after episode 2's (the final win rate)
    assert counters["reloaded"] == [models["sft"], rollout, rollout, rollout]
    assert counters["reloads"] == EPISODES + 2
    sft, before_1, before_2, after_2 = counters["reloaded_weights"]
    assert sft == weights_of(models["sft"]) and before_1 == sft  # the policy starts as the SFT model
    assert before_2 != before_1 and after_2 != before_2  # each DPO update reached the server
    assert after_2 == weights_of(summary["final_dir"]) != sft  # the policy trained; the server held its last weights
    # every sample came from the server: one request per prompt (n = K), held-out prompts greedy (n = 1)
    assert counters["completions"] == HELDOUT + HELDOUT + EPISODES * PROMPTS + HELDOUT
    assert counters["max_in_flight"] <= SETTINGS["generation_batch_size"]

    shards = sorted((out / "episodes").glob("*.parquet"))
    assert [p.name for p in shards] == ["episode-00000.parquet", "episode-00001.parquet"]
    kept = 0
    for n, path in enumerate(shards, start=1):
        rows = pq.read_table(path).to_pylist()
        assert len(rows) == PROMPTS * K and {r["episode"] for r in rows} == {n}
        for i in range(PROMPTS):
            group = sorted((r for r in rows if r["prompt_index"] == i), key=lambda r: r["sample_index"])
            assert [r["sample_index"] for r in group] == list(range(K))
            assert all(isinstance(r["score"], float) and r["response"] is not None for r in group)
            scores = [r["score"] for r in group]
            assert scores[group[0]["chosen_index"]] == max(scores) and scores[group[0]["rejected_index"]] == min(scores)
        kept += sum(r["pair_kept"] for r in rows if r["sample_index"] == 0)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert kept == summary["pairs_kept"] == sum(r.get("pairs_kept", 0) for r in metrics) > 0
    assert summary["initial_win_rate"] == 0.5  # the same server, the same weights: every greedy reply ties
    assert summary["win_rate"] is not None


@pytest.mark.parametrize("failure", ["http500", "success_false"])
def test_a_failed_reload_stops_the_run_naming_the_server(models, tmp_path, failure):  # noqa: F811
    out = tmp_path / "run"
    with serve(models["sft"], reload_failure=failure) as server:
        settings = od.OnlineDpoSettings(**{**SETTINGS, "episodes": 1, "heldout_prompts": 0},
                                        generation_base_url=server.base_url)  # fmt: skip
        with pytest.raises(GenerationError) as caught:
            od.run(settings, {"sft": models["prompts"]}, str(out), models["sft"], models["reward"])
        counters = server.app.state.counters
    message = str(caught.value)
    assert f"{server_root(server.base_url)}/update_weights_from_disk answered HTTP" in message
    assert str(out / ROLLOUT_FOLDER) in message and "SGLang" in message
    assert counters["reloads"] == 0 and counters["completions"] == 0  # nothing sampled from stale weights
    assert not list((out / "episodes").glob("*.parquet"))


def test_request_seeds_depend_on_the_episode_seed_and_the_prompt():
    a, b = [{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]
    assert request_seed(1, a) == request_seed(1, a)
    assert len({request_seed(1, a), request_seed(1, b), request_seed(2, a)}) == 3
    assert all(0 <= request_seed(s, a) < 2**31 for s in range(50))
    assert server_root("http://h:30000/v1/") == "http://h:30000" and server_root("http://h:1") == "http://h:1"
