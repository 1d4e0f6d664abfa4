"""Online DPO (Qwen2 report §4.3): the policy samples K replies per prompt, the reward model scores them, the best
and the worst become a preference pair, and a DPO step trains on the pairs, episode after episode.

    python -m training.online_dpo --policy data/models/sft/final --reward-model data/models/reward/final \\
        --prompts sft=data/synthetic/sft/final --output runs/online_dpo [--base data/models/long_context/final] \\
        [--samples-per-prompt 4 --margin 0.1 --merging ondare] [--settings-profile demo]

An episode (``training.episodes`` has its parts):

1. ``prompts_per_episode`` training prompts (seeded passes over them) and ``samples_per_prompt`` (K) replies each
   from the current policy through ``synth.llm`` (``generation_backend``): ``transformers`` samples from the policy
   in memory, batched (``LiveModelGenerator``: the weights the last update left, nothing reloaded); ``vllm`` writes
   the policy to ``<output>/rollout_policy/`` and starts vLLM on it for the episode (the weights reloaded between
   episodes; a GPU and the ``gpu`` extra; not exercised by the tests, which run on CPU); ``openai`` samples through
   OpenAI-compatible servers (``generation_base_url``: one or a fleet, comma-separated) that reload the policy from
   ``<output>/rollout_policy/`` before each episode (``weight_sync``: SGLang's ``/update_weights_from_disk``;
   ``training.rollout_servers``). Each sample has its own seed (run seed, episode, prompt, sample index), so an
   episode's samples depend only on the weights (on a server: where it honours seeds).
2. The reward model (``training.reward_model``) scores all K (a sample cut off at ``max_new_tokens`` before it
   ended its turn loses ``missing_eos_penalty``, as TRL's option of that name); the highest and lowest scoring become
   chosen and rejected (the first of equal scores); a pair whose gap is not above ``margin``, or whose two replies
   are the same text, is dropped (``training.episodes.PAIR_REASONS``).
3. DPO on the kept pairs in steps of ``batch_size`` (``training.dpo``'s ``reply_logps`` and ``dpo_loss`` through its
   ``pair_loss``: sigmoid or ipo, ``beta``), against the frozen SFT model (the policy's starting weights) as the
   reference, whose log-probabilities are computed for every sample before the update. With ``merging`` set, each
   step's update is merged with the SFT model's task vector (``training.merging``: OnDARE/OnTIES, Lu et al. 2024).

Written per episode: ``episodes/episode-00000.parquet`` (all K samples of every prompt with their scores, log-
probabilities and the pair formed: chosen/rejected index, kept or why dropped), a ``metrics.jsonl`` line and
TensorBoard scalars (``step`` = the episode): ``mean_reward``, ``reward_gap`` (mean best - worst score per prompt),
``pairs_kept``, ``loss``/``accuracy``/``margin`` (DPO, over the kept pairs), ``kl`` (an estimate of KL(policy ||
reference): the mean over the episode's samples of the summed log pi - log pi_ref of their reply tokens, before the
update; the samples come from the policy at ``temperature``/``top_p``, so it is exact only at 1/1), ``win_rate``
(greedy replies of the policy and of the SFT model to the held-out prompts, compared by the reward model; a tie
counts half) and seconds: ``gen_s`` (sampling), ``score_s`` (reward model), ``update_s`` (reference and policy log-
probabilities, DPO steps, merging), ``eval_s`` (win rate). Then, atomically, a checkpoint: policy weights, AdamW
state, RNG states (``training.checkpoint``): a run killed at any moment resumes after the last finished episode,
and its final weights equal an uninterrupted run's bitwise on CPU. A checkpoint of other prompts, models or settings
is moved to ``superseded/`` with its episodes. ``final/`` is a chat ``save_pretrained`` folder (ChatML template,
generation stops at ``<|im_end|>``), written as ``training.dpo`` writes it.

Prompts: messages sources (Parquet ``SFT_SCHEMA`` or JSONL of ``{"messages": [...]}``), each conversation cut before
its last assistant turn; duplicates are one prompt. The ``heldout_prompts`` first by a hash of their id are held out
for the win rate and never trained on.

One process (one GPU or the CPU) or data-parallel under torchrun (``torchrun --nproc_per_node N -m
training.online_dpo ...``; gloo on CPU, nccl on GPUs): each rank samples, scores and computes the log-probabilities
of a contiguous share of the episode's prompts (and of the held-out prompts); a sample's seed depends on the
episode, its index and its prompt only, so the samples are a one-process run's (up to the rounding another batch
composition can bring into logits and scores; equal in the test, where each rank's share fills whole batches). The
samples are gathered on every rank (``all_gather_object``): rank 0 writes the episode shard, every rank forms the
same pairs, and the DPO steps run as ``training.preference_loop``'s (DDP around the pair loss, each rank a
contiguous share of a step's pairs, no_sync until the last pass, a weight-0 pair for a rank left nothing; the logged
sums all-reduced). Merging runs after the all-reduced gradient with the same seeded masks on every rank. Rank 0
alone writes metrics, ``final/`` and ``summary.json``; every rank its checkpoint part and RNG state. One process is
bitwise the code before torchrun.

Light at import (pydantic only): the Dagster code location imports ``OnlineDpoSettings``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import ExitStack, nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

from pydantic import Field

from pipelines.settings import Settings, parse_settings

# Test hook: SIGKILL the run in the middle of this episode (1-based): after its DPO update and its Parquet shard,
# before its metrics line and its checkpoint, like a machine failure.
KILL_IN_EPISODE_ENV = "ONLINE_DPO_SIGKILL_IN_EPISODE"
# Settings that may change between a run and its resume: they do not change the trajectory.
RESUMABLE_CHANGES = frozenset(
    {"keep_checkpoints", "log_every", "num_threads", "winrate_every", "micro_batch_size", "generation_batch_size",
     "vllm_gpu_memory_utilization", "generation_base_url", "weight_sync"}
)  # fmt: skip


class OnlineDpoSettings(Settings):
    """Online DPO. The report gives no hyperparameters for it: beta 0.1 and lr 5e-7 are the usual DPO values (as
    offline DPO here); K = 4 samples per prompt; the merging values are the Online Merging Optimizer authors' DPO
    script's (density 0.01, alpha 1e-7)."""

    episodes: int = Field(100, ge=1, description="Episodes to run (sample, score, pair, update).")
    prompts_per_episode: int = Field(64, ge=1, description="Training prompts sampled per episode.")
    samples_per_prompt: int = Field(4, ge=2, description="K: replies sampled per prompt; best and worst form a pair.")
    margin: float = Field(
        0.0, ge=0, description="Keep a pair only when chosen score > rejected score + margin (reward-model units)."
    )
    missing_eos_penalty: float = Field(
        0.0,
        ge=0,
        description="Subtract this from the score of a sample that hit max_new_tokens before ending its turn "
        "(TRL's missing_eos_penalty); 0: off.",
    )
    beta: float = Field(0.1, gt=0, description="DPO beta: how far the policy may move from the reference.")
    loss_type: Literal["sigmoid", "ipo"] = Field(
        "sigmoid", description="sigmoid: DPO's -log sigmoid(beta h); ipo: (h - 1/(2 beta))^2 on per-token means."
    )
    lr: float = Field(5e-7, gt=0, description="Peak learning rate.")
    min_lr: float = Field(5e-8, ge=0, description="Learning rate of the last episode (cosine from lr over episodes).")
    warmup_steps: int = Field(0, ge=0, description="Episodes of linear warmup before the decay.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on matrices.")
    grad_clip: float = Field(1.0, ge=0, description="Clip the global gradient norm to this (0: off).")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2.")
    batch_size: int = Field(64, ge=1, description="Kept pairs per optimizer step (an episode's pairs in steps).")
    micro_batch_size: int = Field(4, ge=1, description="Pairs per forward/backward pass (both replies of each).")
    max_len: int = Field(
        4096,
        ge=16,
        description="Tokens of prompt + reply; a prompt longer than max_len - max_new_tokens is excluded (too_long).",
        json_schema_extra={"unit": "tokens"},
    )
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the episode samples.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass of the episode samples.")
    max_new_tokens: int = Field(1024, ge=1, description="Longest sampled reply.", json_schema_extra={"unit": "tokens"})
    heldout_prompts: int = Field(
        64, ge=0, description="Prompts held out (by a hash of their id) for the win rate against the SFT model."
    )
    winrate_every: int = Field(
        1, ge=0, description="Win rate on the held-out prompts every this many episodes (0: before and at the end)."
    )
    generation_backend: Literal["transformers", "vllm", "openai"] = Field(
        "transformers",
        description="transformers: the policy in memory, batched; vllm: the policy saved and loaded into vLLM "
        "every episode (GPU); openai: OpenAI-compatible servers (generation_base_url) reload the saved policy.",
    )
    generation_base_url: str = Field(
        "", description="openai backend: server URL ending in /v1, or several separated by commas (a fleet); "
        "empty: $OPENAI_BASE_URL, else http://127.0.0.1:8000/v1.",
    )  # fmt: skip
    weight_sync: Literal["reload_from_disk"] = Field(
        "reload_from_disk", description="openai backend: how the servers get the policy's weights between "
        "episodes: <output>/rollout_policy, then POST /update_weights_from_disk to each (SGLang; not vllm serve).",
    )  # fmt: skip
    generation_batch_size: int = Field(
        16, ge=1, description="Sequences per generate call (transformers); requests in flight per server (openai)."
    )
    vllm_gpu_memory_utilization: float = Field(
        0.3, gt=0, lt=1, description="vllm backend: share of GPU memory vLLM may take beside the training models."
    )
    merging: Literal["none", "ondare", "onties"] = Field(
        "none",
        description="Online Merging Optimizer (Lu et al. 2024): merge every update with the SFT - base task "
        "vector, OnDARE (random sparsification) or OnTIES (top-k + sign consensus); needs --base.",
    )
    merging_density: float = Field(
        0.01, gt=0, le=1, description="Merging: share of update (and task-vector) entries kept (1 - drop rate)."
    )
    merging_alpha: float = Field(
        1e-7, ge=0, le=1, description="Merging: weight of the SFT task vector in every update (1 - alpha: the update)."
    )
    merging_rescale: bool = Field(
        False, description="Merging: rescale the sparsified update to its original L1 norm (instead of 1/density)."
    )
    merging_clip: float = Field(
        1.0, gt=0, description="OnDARE: clamp the task vector (and a rescaled update) to +-this."
    )
    seed: int = Field(0, description="Seed of the prompt order and of every sample.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast on a GPU that supports it, else fp32; bf16; fp32."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: a CUDA GPU if any, else CPU.")
    keep_checkpoints: int = Field(2, ge=1, description="How many of the newest checkpoints to keep.")
    log_every: int = Field(1, ge=1, description="Progress line every this many episodes.")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's).")


def run_key(settings: OnlineDpoSettings, models: Mapping[str, str | None], prompts: str) -> str:
    from training.sft import _init_fingerprint

    values = settings.model_dump(exclude=RESUMABLE_CHANGES)
    folders = {k: _init_fingerprint(v) if v else None for k, v in models.items()}
    payload = json.dumps(["online_dpo", values, folders, prompts], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _episode_seed(seed: int, episode: int) -> int:
    return int.from_bytes(hashlib.sha256(f"online-dpo/{seed}/{episode}".encode()).digest()[:8], "big") >> 2


def run(
    settings: OnlineDpoSettings,
    prompts: Mapping[str, str],
    output_dir: str,
    policy: str,
    reward_model: str,
    base: str | None = None,
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """Online DPO of ``policy`` (the SFT model, also the reference) with ``reward_model`` on the prompts of
    ``prompts`` (name -> messages source) into ``output_dir`` (resuming there); ``base``: the pretrained model the
    SFT model was trained from (for merging). Returns the summary also written to summary.json."""
    import numpy as np
    import torch
    import torch.distributed as dist

    from pipelines.tokenizer import ENDOFTEXT_ID
    from training import episodes as ep
    from training.chat_data import write_excluded
    from training.checkpoint import (
        checkpoint_tokenizer,
        latest_checkpoint,
        load_checkpoint,
        remove_partial_checkpoints,
        save_checkpoint,
        save_pretrained_folder,
    )
    from training.dpo import load_policy, recipe
    from training.merging import OnlineMerging, named_weights
    from training.preference_data import pair_tensors, recipe_metrics
    from training.preference_loop import loss_module, rank_share
    from training.resume import lr_at, supersede_stale_run
    from training.reward_model import load_reward_model
    from training.runlog import RunLog
    from training.setup import make_optimizer, setup_distributed
    from training.signals import StopOnSignal, TrainingInterrupted

    started = time.perf_counter()
    folders = {"policy": policy, "reward_model": reward_model, "base": base}
    for name, folder in folders.items():
        if folder and not (Path(folder) / "config.json").exists():
            raise ValueError(f"{name}={folder}: no config.json there; give a save_pretrained folder")
    if settings.merging != "none" and not base:
        raise ValueError(f"merging={settings.merging} needs the base model the SFT model was trained from (--base)")
    if not prompts:
        raise ValueError("no prompts: give at least one --prompts NAME=PATH")
    if settings.max_new_tokens >= settings.max_len:
        raise ValueError(f"max_new_tokens={settings.max_new_tokens} leaves no room for a prompt in max_len")
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    out = Path(output_dir)
    ckpt_root, shards = out / "checkpoints", out / "episodes"
    kill_in = int(os.environ.get(KILL_IN_EPISODE_ENV, "0"))

    tokenizer = checkpoint_tokenizer("chat")
    found, excluded = ep.load_prompts(prompts, tokenizer, settings.max_len - settings.max_new_tokens)
    train, heldout = ep.split_prompts(found, settings.heldout_prompts)
    if not train:
        raise ValueError(
            f"no training prompts in {dict(prompts)}: {len(found)} usable, heldout_prompts={settings.heldout_prompts} "
            f"held out, {len(excluded)} excluded"
        )
    key = run_key(settings, folders if settings.merging != "none" else {**folders, "base": None},
                  ep.prompts_fingerprint(train + heldout))  # fmt: skip

    with ExitStack() as stack, StopOnSignal() as stop:
        dist_info = setup_distributed(SimpleNamespace(device=settings.device))
        if dist_info.owns_group:
            stack.callback(dist.destroy_process_group)
        rank, world, device, main = dist_info.rank, dist_info.world_size, dist_info.device, dist_info.is_main
        superseded = None
        if main:  # rank 0 alone writes the output folder (each rank its checkpoint part)
            out.mkdir(parents=True, exist_ok=True)
            remove_partial_checkpoints(ckpt_root)
            superseded = supersede_stale_run(out, key)
            if superseded is not None and shards.exists():
                os.replace(shards, superseded / "episodes")
            write_excluded(excluded, out / "excluded")
            with open(out / "heldout_prompts.jsonl", "w", encoding="utf-8") as f:  # for generation checks
                f.writelines(
                    json.dumps({"messages": p.messages}, ensure_ascii=False) + "\n" for p in heldout or train[:8]
                )
            run_config = {"settings": settings.model_dump(), "prompts": dict(prompts), **folders}
            (out / "run_config.json").write_text(json.dumps(run_config, indent=1))
        if world > 1:
            dist.barrier()
        use_bf16 = settings.precision == "bf16" or (
            settings.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
        )
        autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext

        torch.manual_seed(settings.seed)
        model = load_policy(policy, device)
        reference = load_policy(policy, device).eval().requires_grad_(False)
        scorer = load_reward_model(reward_model, device).eval().requires_grad_(False)
        merging = None
        if settings.merging != "none":
            merging = OnlineMerging(
                model, named_weights(policy), named_weights(base), settings.merging, settings.merging_density,
                settings.merging_alpha, settings.merging_rescale, settings.merging_clip, settings.seed,
            )  # fmt: skip
        cfg = SimpleNamespace(**settings.model_dump(), max_steps=settings.episodes)
        optimizer = make_optimizer(model, cfg, fused=device.type in ("cpu", "cuda"))
        pair_loss = recipe(settings, policy).pair_loss  # training.dpo's loss on training.dpo's log-probabilities

        episode, elapsed_before, initial = 0, 0.0, None
        resume_dir = latest_checkpoint(ckpt_root)
        if resume_dir is not None:
            state = load_checkpoint(resume_dir, model, optimizer, rank=rank)
            episode, elapsed_before, initial = state["step"], state["elapsed_s"], state.get("initial")
        if main:
            ep.remove_episodes_after(shards, episode)
        log = RunLog(out, episode, stack, progress) if main else ep.QuietLog()
        ddp = None
        if world > 1:  # the DPO update: data-parallel over the episode's pairs, the gradients all-reduced
            from torch.nn.parallel import DistributedDataParallel

            current: dict = {}  # the episode's reference values, read by the loss module
            ddp = DistributedDataParallel(
                loss_module(model, lambda m, b, p, _: pair_loss(m, b, p, current["ref"]), None),
                device_ids=[dist_info.local_rank] if device.type == "cuda" else None,
                forward_sync_buffers=False,  # RoPE frequencies only: the same on every rank
            )

        def gather(values: list) -> list:
            """Every rank's list, concatenated in rank order, on every rank (its shares were contiguous)."""
            if world == 1:
                return values
            parts: list = [None] * world
            dist.all_gather_object(parts, values)
            return [v for part in parts for v in part]

        def any_rank(flag: bool) -> bool:
            if world == 1:
                return flag
            t = torch.tensor([float(flag)], dtype=torch.float64, device=device)
            dist.all_reduce(t)
            return bool(t.item())

        where = f"resuming after episode {episode}" if resume_dir else "starting"
        if superseded is not None:
            where += f" (checkpoints of other prompts, models or settings moved to {superseded})"
        log.info(
            f"{where}: online DPO ({settings.loss_type}, beta {settings.beta:g}, merging {settings.merging}), "
            f"{len(train):,} training prompts ({len(heldout)} held out, {len(excluded)} excluded), "
            f"{settings.episodes} episodes of {settings.prompts_per_episode} prompts x {settings.samples_per_prompt} "
            f"samples on {world} x {device.type} ({settings.generation_backend}), {'bf16' if use_bf16 else 'fp32'}"
        )
        generators = ep.Generators(settings, model, reference, policy, out, device, rank)
        rows_per_pass = 2 * settings.micro_batch_size

        def score(prompt_list: list, replies: list) -> tuple[list, list[float]]:
            rows = ep.reply_rows(prompt_list, replies, tokenizer)
            return rows, ep.reward_scores(scorer, rows, rows_per_pass, device, autocast)

        def greedy_scores(which: str) -> list[float]:
            """Reward-model scores of ``which``'s greedy replies to the held-out prompts (each rank a share)."""
            mine = rank_share(heldout, rank, world)
            generators.sync(which)  # the openai servers load its weights (every rank)
            replies = generators.call(which, ep.sample, mine, settings, 0, 1, greedy=True) if mine else []
            return gather(score(mine, [[s[0][0]] for s in replies])[1] if mine else [])

        sft_scores: list[float] = []
        if heldout:  # the SFT model's greedy replies: computed once, deterministic
            sft_scores = greedy_scores("sft")

        def evaluate() -> dict:
            if not heldout:
                return {}
            t = time.perf_counter()
            scores = greedy_scores("policy")
            return {"win_rate": ep.win_rate(scores, sft_scores), "heldout_reward": float(np.mean(scores)),
                    "sft_heldout_reward": float(np.mean(sft_scores)), "eval_s": time.perf_counter() - t}  # fmt: skip

        if initial is None:
            initial = evaluate()
            if initial:
                log.record({"step": 0, **initial})
                log.info(f"before training: win rate {initial['win_rate']:.3f} on {len(heldout)} held-out prompts")

        model.train()
        record: dict = {}
        while episode < settings.episodes:
            if any_rank(bool(stop.signum)):
                raise TrainingInterrupted(stop.signum or signal.SIGTERM)
            t_episode = time.perf_counter()
            number = episode + 1
            lr = lr_at(number, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = [train[i] for i in ep.episode_prompts(len(train), settings.prompts_per_episode, settings.seed,
                                                            episode)]  # fmt: skip
            seed = _episode_seed(settings.seed, number)
            K = settings.samples_per_prompt

            # each rank samples, scores and computes log-probabilities for a contiguous share of the prompts; every
            # sample's seed comes from (episode seed, sample index, prompt), so the samples do not depend on the share
            mine = rank_share(batch, rank, world)
            t = time.perf_counter()
            generators.sync("policy")
            samples = generators.call("policy", ep.sample, mine, settings, seed, K) if mine else []
            gen_s = time.perf_counter() - t

            t = time.perf_counter()
            rows, rm_scores = score(mine, [[s[0] for s in ss] for ss in samples])
            score_s = time.perf_counter() - t

            t = time.perf_counter()
            policy_lp, n_tokens = ep.logps(model, rows, rows_per_pass, device, autocast)
            ref_lp, _ = ep.logps(reference, rows, rows_per_pass, device, autocast)
            if world > 1:  # all of the episode's samples on every rank, in prompt order: the same pairs everywhere
                samples, rm_scores, policy_lp, ref_lp, n_tokens = (
                    gather(v) for v in (samples, rm_scores, policy_lp, ref_lp, n_tokens)
                )
                rows = ep.reply_rows(batch, [[s[0] for s in ss] for ss in samples], tokenizer)
            cut = [finish == "length" for ss in samples for _, _, finish in ss]
            scores = [r - settings.missing_eos_penalty * c for r, c in zip(rm_scores, cut)]
            values = {"score": scores, "rm_score": rm_scores, "policy_lp": policy_lp, "ref_lp": ref_lp,
                      "n_tokens": n_tokens}  # fmt: skip
            pairs, ref, shard, gaps = ep.episode_pairs(number, batch, samples, rows, values, K, settings.margin)

            order = np.random.default_rng([settings.seed, episode, 17]).permutation(len(pairs)).tolist()
            steps = [order[s : s + settings.batch_size] for s in range(0, len(order), settings.batch_size)]
            sums = {"loss": 0.0, "accuracy": 0.0, "margin": 0.0, "chosen_reward": 0.0, "rejected_reward": 0.0}
            grad_norm, merge_stats = None, {}
            if ddp is not None:
                current["ref"] = ref
            for s, step_indices in enumerate(steps):
                step_pairs = [pairs[i] for i in step_indices]
                for chunk, weight, sync in ep.rank_passes(step_pairs, settings.micro_batch_size, rank, world):
                    tensors = {k: v.to(device) for k, v in pair_tensors(chunk, ENDOFTEXT_ID).items()}
                    with nullcontext() if sync or ddp is None else ddp.no_sync():
                        with autocast():
                            losses, stats = ddp(tensors, chunk) if ddp else pair_loss(model, tensors, chunk, ref)
                        if ddp is None:
                            (losses.sum() / len(step_pairs)).backward()  # the step's loss: the mean over its pairs
                        else:  # DDP averages the ranks' gradients: scaled back up to the mean over all pairs
                            (losses.sum() * (weight * world / len(step_pairs))).backward()
                    sums["loss"] += float(losses.detach().sum()) * weight
                    for name, v in stats.items():
                        sums[name] += float(v.detach().float().sum()) * weight
                grad_norm = float(torch.nn.utils.clip_grad_norm_(
                    model.parameters(), settings.grad_clip if settings.grad_clip > 0 else float("inf")
                ))  # fmt: skip
                before = merging.before_step() if merging else None
                optimizer.step()
                if merging:  # the same masks on every rank (seeded by the step), after the all-reduced gradient
                    merge_stats = merging.after_step(before, (number, s))
                optimizer.zero_grad(set_to_none=True)
            generators.updated()
            if world > 1:  # the logged DPO numbers: sums over all ranks' pairs
                t_sums = torch.tensor(list(sums.values()), dtype=torch.float64, device=device)
                dist.all_reduce(t_sums)
                sums = dict(zip(sums, t_sums.tolist()))
            update_s = time.perf_counter() - t
            path = ep.write_episode(shards, shard) if main else ep.episode_path(shards, number)
            if kill_in and number == kill_in:
                os.kill(os.getpid(), signal.SIGKILL)

            evaluation = {}
            if number == settings.episodes or (settings.winrate_every and number % settings.winrate_every == 0):
                evaluation = evaluate()
            n_pairs = len(pairs)
            dpo = {k: v / n_pairs for k, v in sums.items()} if n_pairs else {k: None for k in sums}
            record = {
                "step": number,
                "mean_reward": float(np.mean(scores)),
                "reward_std": float(np.std(scores)),
                "reward_gap": float(np.mean(gaps)),
                "pairs_kept": n_pairs,
                "pairs_dropped": len(batch) - n_pairs,
                **dpo,
                "kl": float(np.mean(np.subtract(policy_lp, ref_lp))),
                "reply_tokens": float(np.mean(n_tokens)),
                "lr": lr,
                "grad_norm": grad_norm,
                "optimizer_steps": len(steps),
                **merge_stats,
                **evaluation,
                "gen_s": gen_s,
                "score_s": score_s,
                "update_s": update_s,
                "episode_s": time.perf_counter() - t_episode,
                "elapsed": elapsed_before + time.perf_counter() - started,
            }
            log.record(record)
            episode = number
            if log.line_due(episode % settings.log_every == 0 or episode == settings.episodes):
                shown = f"reward {record['mean_reward']:.3f} gap {record['reward_gap']:.3f} pairs {n_pairs}"
                if n_pairs:
                    shown += f" loss {record['loss']:.4f} acc {record['accuracy']:.2f}"
                shown += f" kl {record['kl']:.4f}"
                if "win_rate" in record:
                    shown += f" win {record['win_rate']:.3f}"
                timing = f"gen {gen_s:.1f}s score {score_s:.1f}s update {update_s:.1f}s"
                log.info(f"episode {episode}/{settings.episodes} {shown} lr {lr:.2e} ({timing}) -> {path.name}", record)
            trainer_state = {"elapsed_s": elapsed_before + time.perf_counter() - started, "run_key": key,
                             "settings": settings.model_dump(), "initial": initial}  # fmt: skip
            save_checkpoint(
                ckpt_root, episode, model, optimizer, trainer_state, rank=rank, keep=settings.keep_checkpoints
            )

        records = [r for r in recipe_metrics(out / "metrics.jsonl") if r.get("step", 0) > 0] if main else []
        if world > 1:  # rank 0's records on every rank: the final evaluation below is collective
            shared = [records]
            dist.broadcast_object_list(shared, src=0)
            records = shared[0]
        final_eval = next((r for r in reversed(records) if "win_rate" in r), None)
        if final_eval is None and heldout:
            final_eval = evaluate()
        final_dir = save_pretrained_folder(model, None, out / "final", kind="chat") if main else out / "final"
        totals = {f"total_{k}": sum(r.get(k, 0.0) for r in records) for k in ("gen_s", "score_s", "update_s", "eval_s")}
        summary: dict[str, Any] = {
            "recipe": "online_dpo",
            "episodes": episode,
            "first": records[0] if records else None,
            "final": records[-1] if records else None,
            "initial_win_rate": (initial or {}).get("win_rate"),
            "win_rate": (final_eval or {}).get("win_rate"),
            "pairs_kept": sum(r.get("pairs_kept", 0) for r in records),
            "pairs_dropped": sum(r.get("pairs_dropped", 0) for r in records),
            **totals,
            "train_prompts": len(train),
            "heldout_prompts": len(heldout),
            "excluded": len(excluded),
            "excluded_by_reason": dict(Counter(x.reason for x in excluded)),
            "parameters": sum(p.numel() for p in model.parameters()),
            "policy": policy,
            "reward_model": reward_model,
            "base": base,
            "prompts": dict(prompts),
            "precision": "bf16" if use_bf16 else "fp32",
            "resumed_from_episode": int(resume_dir.name.split("_")[1]) if resume_dir else None,
            "wall_seconds": time.perf_counter() - started,
            "output_dir": str(out),
            "final_dir": str(final_dir),
            "episodes_dir": str(shards),
            "checkpoints_dir": str(ckpt_root),
            "excluded_dir": str(out / "excluded"),
        }
        if main:
            tmp = out / "summary.json.tmp"
            tmp.write_text(json.dumps(summary, indent=1, ensure_ascii=False))
            os.replace(tmp, out / "summary.json")
        log.info(f"done: {episode} episodes, win rate {summary['win_rate']}, model in {final_dir}")
        log.finish(summary)
        if world > 1:
            dist.barrier()
        return summary


def build_parser() -> Any:
    from pipelines.settings import ArgumentParser, settings_parser
    from training.online_dpo import OnlineDpoSettings as registered  # the class STAGES names (not __main__'s)
    from training.sft import _source

    parser = ArgumentParser(prog="python -m training.online_dpo", description=__doc__.split("\n\n")[0])
    run_options = parser.add_argument_group("run options (paths; in Dagster they come from the resources)")
    run_options.add_argument(
        "--prompts",
        dest="prompts",
        action="append",
        type=_source,
        default=[],
        metavar="NAME=PATH",
        help="prompts: a messages source (Parquet file or folder, SFT_SCHEMA, or JSONL), each conversation cut "
        "before its last assistant turn; repeat for several",
    )
    run_options.add_argument("--output", required=True, help="folder for checkpoints, episodes/, logs, final/")
    run_options.add_argument(
        "--policy", required=True, help="the SFT model's save_pretrained folder (also the reference)"
    )
    run_options.add_argument("--reward-model", required=True, help="the reward model's save_pretrained folder")
    run_options.add_argument("--base", default=None, help="merging: the pretrained model the SFT model started from")
    return settings_parser(registered, parser=parser)


def main(argv: list[str] | None = None) -> None:
    import sys

    from synth.llm.base import GenerationError
    from training.signals import TrainingInterrupted

    parser = build_parser()
    args, settings = parse_settings(parser, argv)
    prompts = dict(args.prompts)
    if len(prompts) != len(args.prompts):
        parser.error("two --prompts options have the same NAME")
    if not prompts:
        parser.error("give at least one --prompts NAME=PATH")
    try:
        run(settings, prompts, args.output, args.policy, args.reward_model, args.base)
    except TrainingInterrupted as e:
        print(f"training {e}; the last checkpoint is intact, rerun the same command to resume", file=sys.stderr)
        sys.exit(128 + e.signum)
    except (ValueError, GenerationError) as e:  # bad input, or generation servers that failed (named)
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
