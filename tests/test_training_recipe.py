"""The training recipe at the report's scale: what a checkpoint carries (ChatML template, stop tokens), held-out
lineage of synthetic documents, resume across max_steps and world-size changes, the mixture search's target mix and
seeds, and the Qwen2-57B-A14B Mixture-of-Experts shape."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import make_mix_corpus

from pipelines.mixing import MixtureConfig, is_heldout, lineage_id, run_index, run_select
from pipelines.schema import PACKED_SCHEMA
from pipelines.shards import list_shards, read_json
from pipelines.tokenizer import ENDOFTEXT_ID, IM_END_ID
from synth.llm.chat import render_chat
from training.checkpoint import STATE_FILE, latest_checkpoint, list_checkpoints, save_pretrained_folder
from training.model_configs import active_parameters, count_parameters, qwen2_config
from training.pretrain import run, save_final
from training.pretrain_settings import PretrainConfig
from training.resume import first_segment, lr_at, run_key

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"}],
    [
        {"role": "system", "content": "Answer in German."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "Vier."},
        {"role": "user", "content": "Und 3 + 3?"},
        {"role": "assistant", "content": "Sechs, also 6."},
    ],
]


def write_packed(folder: Path, rows: list[list[int]], seq_len: int) -> Path:
    """A finished packed stage folder, one document per row."""
    (folder / "data").mkdir(parents=True)
    (folder / "_config.json").write_text(json.dumps({"seq_len": seq_len}))
    table = pa.table(
        {"input_ids": rows, "doc_lengths": [[seq_len]] * len(rows), "seq_index": list(range(len(rows)))},
        schema=PACKED_SCHEMA,
    )
    pq.write_table(table, folder / "data" / "part-0.parquet", row_group_size=4)
    (folder / "_SUCCESS.json").write_text("{}")
    return folder


@pytest.fixture(scope="module")
def data16(tmp_path_factory) -> Path:
    pattern = [9707, 11, 1879, 0, 576, 3974, 13876, 38835]  # a fixed sentence, over and over
    rows = [(pattern * 4)[r % 8 : r % 8 + 16] for r in range(16)]
    return write_packed(tmp_path_factory.mktemp("packed") / "data", rows, seq_len=16)


def tiny(data: Path, out: Path, **kw) -> PretrainConfig:
    defaults = dict(micro_batch_size=2, max_steps=4, warmup_steps=2, lr=3e-3, min_lr=3e-4, log_every=1, num_threads=1)
    return PretrainConfig(data=str(data), output_dir=str(out), **{**defaults, **kw})


def metrics(out: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r}


# ---- 3. checkpoints carry the Qwen2 ChatML template and the right stop tokens ---------------------------------


@pytest.mark.parametrize("kind", ["base", "chat"])
def test_saved_checkpoint_has_the_qwen2_chatml_template_and_stop_tokens_of_its_kind(kind, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    model = AutoModelForCausalLM.from_config(qwen2_config("proxy"))
    if kind == "base":
        final = save_final(model, None, tmp_path)  # what every pretraining run writes
    else:
        final = save_pretrained_folder(model, None, tmp_path / "final", kind="chat")  # for the SFT recipe
    tokenizer = AutoTokenizer.from_pretrained(final, local_files_only=True)
    generation = GenerationConfig.from_pretrained(final, local_files_only=True)
    config = AutoConfig.from_pretrained(final, local_files_only=True)

    eos = ENDOFTEXT_ID if kind == "base" else IM_END_ID
    assert tokenizer.eos_token_id == config.eos_token_id == eos
    assert generation.eos_token_id == (ENDOFTEXT_ID if kind == "base" else [IM_END_ID, ENDOFTEXT_ID])
    assert tokenizer.pad_token_id == generation.pad_token_id == ENDOFTEXT_ID
    assert "<think>" not in tokenizer.chat_template and "{% generation %}" in tokenizer.chat_template
    for messages in CONVERSATIONS:
        for prompt in (False, True):
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
            assert text == render_chat(messages, add_generation_prompt=prompt)
        rendered = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids, mask = rendered["input_ids"], rendered["assistant_masks"]
        runs, current = [], []  # the masked tokens, run by run
        for token, masked in zip(ids, mask):
            if masked:
                current.append(token)
            elif current:
                runs.append(current)
                current = []
        runs += [current] if current else []
        expected = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
        assert [tokenizer.decode(r) for r in runs] == expected
        assert all(r[-1] == IM_END_ID for r in runs)
        assert sum(mask) == sum(len(tokenizer(e, add_special_tokens=False)["input_ids"]) for e in expected)


# ---- 4. a synthetic document is held out with the document it was made from ------------------------------------


def test_lineage_id_follows_the_source_of_synthetic_rows_only():
    synthetic = {"id": "synth-1", "source": "synthetic:rephrase:qa", "domain": "synthetic"}
    assert lineage_id({**synthetic, "metadata": json.dumps({"source_id": "doc-7"})}) == "doc-7"
    assert lineage_id({**synthetic, "metadata": None}) == "synth-1"
    assert lineage_id({**synthetic, "metadata": "not json"}) == "synth-1"
    curated = {"id": "doc-1", "source": "warc", "domain": "web", "metadata": json.dumps({"source_id": "x"})}
    assert lineage_id(curated) == "doc-1"  # a curated row's metadata may use the name for something else


@pytest.fixture(scope="module")
def lineage_index(tmp_path_factory) -> tuple[str, dict]:
    """The mixing fixture corpus plus rephrasings of one held-out and one training document, indexed."""
    corpus = make_mix_corpus(tmp_path_factory.mktemp("lineage_corpus"))
    docs = [json.loads(line) for path in sorted(corpus.glob("*.jsonl")) for line in path.read_text().splitlines()]
    web_en = [d for d in docs if d["id"].startswith("en-")]
    held = next(d for d in web_en if is_heldout(d["id"], 0.1))
    trained = next(d for d in web_en if not is_heldout(d["id"], 0.1))
    rephrased = {}
    for name, source in (("of_heldout", held), ("of_trained", trained)):
        # an id of its own that hashes to the other side of the split than its source
        synth_id = next(
            f"synth-{name}-{i}" for i in range(10_000) if is_heldout(f"synth-{name}-{i}", 0.1) != (name == "of_heldout")
        )
        rephrased[name] = synth_id
        row = {
            "id": synth_id,
            "text": "In other words: " + source["text"][:400],
            "domain": "synthetic",
            "lang": "en",
            "source": "synthetic:rephrase:simple",
            "metadata": json.dumps({"source_id": source["id"], "style": "simple"}),
        }
        with open(corpus / "part0.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
    out = str(tmp_path_factory.mktemp("lineage") / "index")
    run_index([str(corpus / "*.jsonl")], out, heldout_fraction=0.1, long_doc_tokens=250, max_doc_tokens=350, workers=1)
    return out, {"held": held["id"], "trained": trained["id"], **rephrased}


def test_rephrasing_of_a_heldout_document_lands_in_validation_with_it(lineage_index, tmp_path):
    index, ids = lineage_index
    validation = run_select(index, str(tmp_path / "val"), MixtureConfig(), split="validation", workers=1)
    assert validation["mix_check"]["passed"]
    val_ids = {
        r["id"].split("#")[0] for path in list_shards(str(tmp_path / "val")) for r in pq.read_table(path).to_pylist()
    }
    assert ids["held"] in val_ids and ids["of_heldout"] in val_ids
    assert ids["trained"] not in val_ids and ids["of_trained"] not in val_ids
    assert read_json(f"{index}/_config.json")["processor"]["heldout_rule"] == "lineage-v1"


# ---- 5. resume: a larger max_steps adds a schedule segment; another world size is refused ----------------------


def test_first_segment_is_the_warmup_cosine_schedule_bit_for_bit():
    config = tiny(Path("d"), Path("o"), max_steps=20, warmup_steps=5, lr=1e-3, min_lr=1e-4)
    for step in range(1, 26):
        if step <= 5:
            old = 1e-3 * step / 5
        else:
            progress = min((step - 5) / 15, 1.0)
            old = 1e-4 + 0.5 * (1 + math.cos(math.pi * progress)) * (1e-3 - 1e-4)
        assert lr_at(step, config) == lr_at(step, config, [first_segment(config)]) == old


def test_raising_max_steps_on_a_finished_run_rewarms_from_the_current_lr(data16, tmp_path):
    out = tmp_path / "run"
    run(tiny(data16, out, max_steps=4, checkpoint_every=1, keep_checkpoints=10))
    first = metrics(out)
    assert first[4]["lr"] == pytest.approx(lr_at(4, tiny(data16, out)))  # the cosine reached min_lr at step 4
    summary = run(tiny(data16, out, max_steps=8, checkpoint_every=1, keep_checkpoints=10))
    assert summary["resumed_from_step"] == 4 and not (out / "superseded").exists()
    lrs = {step: r["lr"] for step, r in metrics(out).items()}
    peak, floor = 3e-3, 3e-4
    assert [lrs[s] for s in range(1, 5)] == [first[s]["lr"] for s in range(1, 5)]  # the old segment is untouched
    # re-warmup from min_lr over 2 steps, back at the peak at step 6, a new cosine down to min_lr at step 8
    assert lrs[5] == pytest.approx(floor + (peak - floor) / 2) and lrs[6] == pytest.approx(peak)
    assert lrs[6] > lrs[7] > lrs[8] == pytest.approx(floor)
    state = json.loads((latest_checkpoint(out / "checkpoints") / STATE_FILE).read_text())
    assert [(s["start"], s["end"]) for s in state["schedule"]] == [(0, 4), (4, 8)]

    # Killed inside the new segment (its last two checkpoints lost): the rerun resumes on the same curve.
    for lost in list_checkpoints(out / "checkpoints")[-2:]:
        import shutil

        shutil.rmtree(lost)
    again = run(tiny(data16, out, max_steps=8, checkpoint_every=1, keep_checkpoints=10))
    assert again["resumed_from_step"] == 6
    resumed = metrics(out)
    assert [resumed[s]["lr"] for s in (7, 8)] == [lrs[7], lrs[8]]

    # Moving max_steps inside a segment, or below the steps taken, is refused with what to do instead.
    for lost in list_checkpoints(out / "checkpoints")[-2:]:
        shutil.rmtree(lost)
    with pytest.raises(ValueError, match=r"step 6 of a learning-rate schedule that ends at step 8.*max_steps=8"):
        run(tiny(data16, out, max_steps=12, checkpoint_every=1))
    with pytest.raises(ValueError, match=r"already took 6 steps.*max_steps >= 6"):
        run(tiny(data16, out, max_steps=3, checkpoint_every=1))


def test_resume_on_another_world_size_keeps_the_global_batch_or_is_refused(data16, tmp_path):
    out = tmp_path / "run"
    run(tiny(data16, out, max_steps=2, checkpoint_every=1, micro_batch_size=2))
    # Pretend it ran on 2 processes: 2 rows x 2 processes = 4 rows per step.
    state_file = latest_checkpoint(out / "checkpoints") / STATE_FILE
    state = json.loads(state_file.read_text())
    two_ranks = tiny(data16, out, max_steps=2, checkpoint_every=1, micro_batch_size=2)
    state.update(world_size=2, rows_per_step=4, run_key=run_key(two_ranks, world_size=2))
    state_file.write_text(json.dumps(state))

    with pytest.raises(ValueError, match=r"on 2 processes with 4 rows.*this run has 1 processes.*grad_accum_steps=2"):
        run(tiny(data16, out, max_steps=2, checkpoint_every=1, micro_batch_size=2))
    assert not (out / "superseded").exists()  # refused, not set aside
    # The same global batch on one process (2 rows x 2 accumulation steps) resumes it.
    same_batch = run(tiny(data16, out, max_steps=2, checkpoint_every=1, micro_batch_size=2, grad_accum_steps=2))
    assert same_batch["resumed_from_step"] == 2 and not (out / "superseded").exists()


# ---- 6. mixture search: a target mix, several seeds, ties shown -------------------------------------------------


def test_target_weights_give_every_domain_and_language_the_same_weight():
    from training.mixture_search import SearchConfig, target_weights

    buckets = {"web/en": 9000, "web/de": 100, "web/zh": 400, "code": 500, "math/en": 0}
    search = SearchConfig(index="i", work_dir="w")
    weights = target_weights(buckets, search)
    assert weights == pytest.approx({"web/en": 1 / 6, "web/de": 1 / 6, "web/zh": 1 / 6, "code": 1 / 2, "math/en": 0})
    natural = target_weights(buckets, SearchConfig(index="i", work_dir="w", target="natural"))
    assert natural["web/en"] == pytest.approx(0.9)
    custom = target_weights(buckets, SearchConfig(index="i", work_dir="w", target_domain_weights={"code": 1}))
    assert custom["code"] == 1 and custom["web/en"] == 0
    with pytest.raises(ValueError, match="seeds=1"):
        SearchConfig(index="i", work_dir="w", seeds=1)


def test_a_winner_inside_the_noise_is_a_tie():
    from training.mixture_search import decide

    def row(name, losses):
        return {"name": name, "val_loss": statistics.fmean(losses), "val_loss_std": statistics.stdev(losses),
                "val_loss_by_seed": losses}  # fmt: skip

    noisy = [row("a", [3.00, 3.20]), row("b", [3.05, 3.25]), row("c", [4.0, 4.02])]
    decision = decide(noisy, tie_sigmas=2.0)
    assert decision["winner"]["name"] == "a" and decision["tied_with_winner"] == ["b"]
    assert decision["decision"] == "tie"
    clear = decide([row("a", [3.00, 3.01]), row("b", [3.50, 3.52])], tie_sigmas=2.0)
    assert clear["decision"] == "clear" and clear["tied_with_winner"] == []


def test_the_search_asset_and_the_cli_share_their_settings():
    from assets.pretraining import MixtureSearchConfig
    from pipelines.mixing_settings import SEARCH_RUN_FIELDS, SearchConfig, SearchSettings
    from pipelines.settings import to_settings

    # One definition: the Launchpad config is generated from SearchSettings, the CLI's SearchConfig extends it.
    assert MixtureSearchConfig.SETTINGS_CLASS is SearchSettings
    assert set(SearchConfig.model_fields) == set(SearchSettings.model_fields) | set(SEARCH_RUN_FIELDS)
    assert to_settings(SearchSettings, MixtureSearchConfig(steps=3, seeds=4)) == SearchSettings(steps=3, seeds=4)


def test_bucket_loss_of_a_document_equals_the_models_own_loss(tmp_path):
    from transformers import AutoModelForCausalLM

    from training.mixture_search import bucket_losses, pack_rows

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(qwen2_config("proxy")).eval()
    model.save_pretrained(tmp_path)
    doc_a, doc_b = [9707, 11, 1879, 0, 576, ENDOFTEXT_ID], [3974, 13876, 38835, 11, ENDOFTEXT_ID]
    # Two documents packed into rows of 4: segments of 4 | 2, 2 | 3; every segment's first token is not predicted.
    assert [lens for _, lens in pack_rows([doc_a, doc_b], 4)] == [[4], [2, 2], [3]]
    (loss_sum, count) = bucket_losses(str(tmp_path), {"web/en": [doc_a, doc_b]}, seq_len=4)["web/en"]
    expected, n = 0.0, 0
    with torch.no_grad():
        for segment in ([9707, 11, 1879, 0], [576, ENDOFTEXT_ID], [3974, 13876], [38835, 11, ENDOFTEXT_ID]):
            ids = torch.tensor([segment])
            expected += float(model(input_ids=ids, labels=ids).loss) * (len(segment) - 1)
            n += len(segment) - 1
    assert count == n == 7 and loss_sum == pytest.approx(expected, rel=1e-5)


def test_search_scores_a_candidate_on_the_target_mix_with_two_seeds(lineage_index, tmp_path):
    from training.mixture_search import SearchConfig, candidates_from, run_search

    index, _ = lineage_index
    search = SearchConfig(index=index, work_dir=str(tmp_path), seq_len=32, steps=2, micro_batch_size=2, workers=1)
    raw = [{"name": "web-heavy", "domain_weights": {"web": 0.9, "code": 0.1}}]  # decide() is tested above
    summary = run_search(search, candidates_from(raw, token_budget=search.token_budget, seed=0))
    weights = summary["target"]["weights"]
    domains = {b.partition("/")[0] for b, w in weights.items() if w > 0}
    for domain in domains:  # every domain with held-out documents carries the same weight
        assert sum(w for b, w in weights.items() if b.partition("/")[0] == domain) == pytest.approx(1 / len(domains))
    for row in summary["candidates"]:
        assert row["seeds"] == [0, 1] and len(set(row["val_loss_by_seed"])) == 2  # really two runs
        assert row["val_loss"] == pytest.approx(statistics.fmean(row["val_loss_by_seed"]))
        assert row["val_loss_std"] > 0 and row["val_loss"] != pytest.approx(row["natural_val_loss"])
        assert set(row["bucket_val_loss"]) == set(weights)
    assert summary["decision"] == "clear" and summary["winner"] == "web-heavy"
    assert (tmp_path / "web-heavy" / "proxy-seed1" / "final" / "config.json").exists()


# ---- 7. Qwen2-57B-A14B -------------------------------------------------------------------------------------------


def test_qwen2_57b_a14b_matches_the_published_total_and_active_parameter_counts():
    from transformers import AutoModelForCausalLM

    config = qwen2_config("57B-A14B")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert type(model).__name__ == "Qwen2MoeForCausalLM"
    # The released config.json of Qwen/Qwen2-57B-A14B.
    published = dict(
        num_hidden_layers=28, hidden_size=3584, num_attention_heads=28, num_key_value_heads=4, num_experts=64,
        num_experts_per_tok=8, moe_intermediate_size=2560, shared_expert_intermediate_size=20480,
        intermediate_size=18944, vocab_size=151936, tie_word_embeddings=False, norm_topk_prob=False,
        router_aux_loss_coef=0.001, decoder_sparse_step=1,
    )  # fmt: skip
    assert {k: getattr(config, k) for k in published} == published
    total = sum(p.numel() for p in model.parameters())
    experts = model.model.layers[0].mlp.experts
    per_expert = sum(p.numel() for p in experts.parameters()) // config.num_experts
    active = total - config.num_hidden_layers * (config.num_experts - config.num_experts_per_tok) * per_expert
    assert abs(total / 57.4e9 - 1) < 0.01 and abs(active / 14.2e9 - 1) < 0.01
    assert (total, active) == (count_parameters("57B-A14B"), active_parameters("57B-A14B"))
    assert model.lm_head.weight is not model.model.embed_tokens.weight


def test_tiny_moe_forward_adds_the_router_load_balancing_loss():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(qwen2_config("tiny-moe")).eval()
    ids = torch.randint(0, 151_643, (2, 16))
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
        lm_loss = torch.nn.functional.cross_entropy(
            out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), ids[:, 1:].reshape(-1)
        )
    assert out.aux_loss is not None and float(out.aux_loss) > 0
    assert float(out.loss) == pytest.approx(float(lm_loss) + 0.001 * float(out.aux_loss), rel=1e-5)


@pytest.fixture(scope="module")
def moe_run(data16, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("moe") / "run"
    return out, run(tiny(data16, out, model_size="tiny-moe", max_steps=6, lr=1e-2, warmup_steps=1, checkpoint_every=3))


def test_tiny_moe_trains_through_the_pretraining_loop(moe_run):
    from transformers import AutoModelForCausalLM

    out, summary = moe_run
    assert summary["model_size"] == "tiny-moe" and summary["steps"] == 6
    curve = metrics(out)
    assert curve[6]["loss"] < curve[1]["loss"] - 1.0
    model = AutoModelForCausalLM.from_pretrained(summary["final_dir"], local_files_only=True)
    assert type(model).__name__ == "Qwen2MoeForCausalLM" and model.config.output_router_logits


def test_tiny_moe_logs_the_router_aux_loss_in_metrics(moe_run):
    out, _ = moe_run
    curve = metrics(out)
    assert sorted(curve) == [1, 2, 3, 4, 5, 6]
    # E * sum_e f_e * P_e with f summing to top_k: num_experts_per_tok (2) when balanced, at most top_k * E / k
    assert all(1.0 <= curve[s]["aux_loss"] <= 4.0 for s in curve)
    assert all("aux_loss" not in r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
               if "val_loss" in r)  # fmt: skip


def own_load_balancing_loss(router_logits: list[torch.Tensor], num_experts: int, top_k: int) -> torch.Tensor:
    """Switch Transformer's load-balancing loss, written out here as a reference: over the routed tokens of all
    layers together, num_experts * sum_e (top-k picks of expert e per token) * (mean router probability of e)."""
    logits = torch.cat(router_logits)  # [layers * tokens, E]
    probs = logits.float().softmax(-1)
    picks = torch.nn.functional.one_hot(probs.topk(top_k, dim=-1).indices, num_experts).sum(1).float()  # [N, E]
    return num_experts * (picks.mean(0) * probs.mean(0)).sum()


def moe_model_with_router_hooks(coef: float, chunk: int | None) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    from transformers import AutoModelForCausalLM

    from training.loss import use_chunked_loss

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(qwen2_config("tiny-moe", vocab_size=512, router_aux_loss_coef=coef))
    captured: list[torch.Tensor] = []
    for layer in model.model.layers:
        layer.mlp.gate.register_forward_hook(lambda module, args, output: captured.append(output[0]))
    if chunk:
        use_chunked_loss(model, chunk)
    return model, captured


def router_grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([layer.mlp.gate.weight.grad.flatten() for layer in model.model.layers])


def test_chunked_moe_loss_returns_the_aux_loss_and_its_router_gradient():
    """Our chunked loss replaces Qwen2MoeForCausalLM's loss path, so the router's load-balancing term must be
    added by it: its value checked against an independent computation from the router logits, and the router
    weights' gradient of the returned loss must hold coef x the gradient of that independent aux loss."""
    from transformers.models.qwen2_moe.modeling_qwen2_moe import load_balancing_loss_func

    from training.loss import router_aux_loss_coef, split_router_loss

    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(1))
    model, captured = moe_model_with_router_hooks(coef=0.5, chunk=8)
    assert router_aux_loss_coef(model) == 0.5
    out = model(input_ids=ids, labels=ids)
    own = own_load_balancing_loss(captured, 4, 2)
    assert float(out.aux_loss.detach()) == pytest.approx(float(own.detach()), rel=1e-5)
    transformers_aux = load_balancing_loss_func(tuple(captured), 4, 2).detach()
    assert float(out.aux_loss.detach()) == pytest.approx(float(transformers_aux), rel=1e-5)
    lm, aux = split_router_loss(out, 0.5)
    out.loss.backward()
    with_aux = router_grads(model)

    reference, ref_captured = moe_model_with_router_hooks(coef=0.5, chunk=None)  # same weights, transformers' path
    ref = reference(input_ids=ids, labels=ids, output_router_logits=False)  # LM loss over the full logits only
    assert lm.item() == pytest.approx(ref.loss.item(), rel=1e-5)
    ref.loss.backward(retain_graph=True)
    lm_only = router_grads(reference).clone()
    reference.zero_grad()
    own_load_balancing_loss(ref_captured, 4, 2).backward()
    aux_grad = router_grads(reference)
    assert aux_grad.abs().max() > 1e-4  # the aux term does reach the router weights
    torch.testing.assert_close(with_aux - lm_only, 0.5 * aux_grad, rtol=1e-4, atol=1e-6)


def test_accumulated_step_weighs_the_aux_loss_like_the_lm_loss():
    """Two micro-batches of one step: the router gradient is that of the global token-mean LM loss plus coef x the
    mean aux loss of the micro-batches (transformers' forward adds coef x aux to every micro-batch's loss, which
    summed over accumulation would count it twice here)."""
    from training.pretrain import accumulate_gradients

    gen = torch.Generator().manual_seed(2)
    micro = [{"input_ids": torch.randint(0, 512, (1, 20), generator=gen)} for _ in range(2)]
    for m in micro:
        m["labels"] = m["input_ids"].clone()
        m["labels"][:, :3] = -100
    num_items = sum(int((m["labels"][:, 1:] != -100).sum()) for m in micro)
    model, _ = moe_model_with_router_hooks(coef=0.5, chunk=8)
    loss_sum, aux_sum = accumulate_gradients(model, micro, num_items, world=1, strategy="ddp", aux_coef=0.5)
    got = router_grads(model)

    reference, captured = moe_model_with_router_hooks(coef=0.5, chunk=None)
    lm_total, aux_terms = 0.0, []
    for m in micro:
        captured.clear()
        logits = reference(input_ids=m["input_ids"], output_router_logits=False).logits[0, :-1]
        lm_total = lm_total + torch.nn.functional.cross_entropy(logits, m["labels"][0, 1:], reduction="sum")
        aux_terms.append(own_load_balancing_loss(captured, 4, 2))
    (lm_total / num_items + 0.5 * torch.stack(aux_terms).mean()).backward()
    torch.testing.assert_close(got, router_grads(reference), rtol=1e-4, atol=1e-6)
    assert float(loss_sum) == pytest.approx(float(lm_total / num_items), rel=1e-5)
    assert float(aux_sum) == pytest.approx(float(sum(aux_terms)), rel=1e-5)


def test_chunked_loss_is_exact_for_tokens_far_below_fp32_range():
    """The chunked loss computes log p(target) from the in-place softmax; a target whose probability underflows fp32
    (a token loss above ~87 nats) must still get its exact loss: loss and gradients equal the full-logits path."""
    from training.loss import chunked_causal_lm_loss

    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(300, 16, generator=gen)
    hidden = (torch.randn(2, 9, 16, generator=gen) * 12).requires_grad_()  # large logits: some p(target) ~ 0
    labels = torch.randint(0, 300, (2, 9), generator=gen)
    labels[0, 4] = -100
    weight.requires_grad_()
    logits = hidden[:, :-1] @ weight.t()
    per_token = torch.nn.functional.cross_entropy(
        logits.reshape(-1, 300), labels[:, 1:].reshape(-1), reduction="none", ignore_index=-100
    )
    assert float(per_token.max()) > 120  # the case this is about
    per_token.sum().div(20).backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    loss = chunked_causal_lm_loss(hidden, weight, labels, chunk_tokens=4, num_items_in_batch=20)
    loss.backward()
    assert float(loss) == pytest.approx(float(per_token.sum() / 20), rel=1e-6)
    torch.testing.assert_close(hidden.grad, grads[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weight.grad, grads[1], rtol=1e-5, atol=1e-6)
