"""Qwen2 pretraining on packed token shards: stage 1 (4,096 context) and stage 2 (long context, RoPE base 1e6).

One process (CPU or one GPU):

    python -m training.pretrain --data runs/tokenized --output runs/pretrain-s1 --model-size tiny --max-steps 200

Several processes (DDP by default; ``--strategy fsdp`` shards parameters, gradients and optimizer state):

    torchrun --nproc_per_node=2 -m training.pretrain --data runs/tokenized --output runs/pretrain-s1 \\
        --model-size 0.5B --micro-batch-size 4 --grad-accum-steps 8

Stage 2 continues stage 1 on long documents packed 8x longer, with the RoPE base raised to 1,000,000:

    python -m training.pretrain --data runs/tokenized-long --output runs/pretrain-s2 \\
        --init-from runs/pretrain-s1/final --rope-theta 1000000 --lr 1e-4 --activation-checkpointing

``--config run.json`` (or .toml/.yaml) reads any of the settings (``PretrainSettings``) from a file,
``--settings-profile demo:base_model`` (or ``demo:long_context_model``) from that table of
``dagster_project/profiles/demo.toml``; flags given on the command line win. The run options (``--data``,
``--output``, ``--val-data``, ``--init-from``, ``--rope-theta``, ``--model-size``, ``--precision``) are flags only.
Both are generated from the models of ``training.pretrain_settings`` (``pipelines.settings``), as is the assets'
Launchpad config.
A run resumes by itself from the newest checkpoint in ``--output``; rerunning a finished run with a larger
``--max-steps`` continues it in a new learning-rate segment (re-warmup, then a new cosine: ``training.resume.lr_at``).
It may resume on another number of processes only with the same global batch (change ``--grad-accum-steps`` to keep
it); otherwise it is refused, as is a ``--max-steps`` change in the middle of a segment (``plan_resume``). A checkpoint
made with other data or another setting that shapes the trajectory (model, learning rates, global batch, seed ...)
is never resumed: the earlier run's outputs are moved to
``superseded/<time>-<run key>/`` and the run starts afresh. Outputs: ``metrics.jsonl`` (one line per step,
plus eval lines), ``tensorboard/``, ``checkpoints/step_XXXXXX/``, ``final/`` (``save_pretrained`` + tokenizer)
and ``summary.json``.

The global batch is ``micro_batch_size * grad_accum_steps * world_size`` rows of ``seq_len`` tokens (the data's
``seq_len``; it is also the model's ``max_position_embeddings``). Loss is the token mean over the whole global
batch: every micro-batch's summed token loss is divided by the global count of predicted tokens.

Rows of 32,768 tokens fit: no attention path builds a T x T mask, each micro-batch runs as one flattened row whose
documents attend only to themselves (``training.attention``), the output layer and loss run in chunks of positions
(``training.loss``), activation checkpointing is one flag (``training.activations``), and a model from scratch is
built on the meta device and materialised after FSDP sharding, each rank allocating only its shard
(``training.materialize``).

The settings are ``training.pretrain_settings``'s; the run's pieces live by job in ``training.signals`` (stopping),
``training.resume`` (run key, resume plan, schedule), ``training.setup`` (process group, model, wrapping,
optimizer) and ``training.runlog`` (metrics, TensorBoard, progress). torch and transformers are imported inside
functions.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any

from pipelines.settings import ArgumentParser, parse_settings, settings_parser
from pipelines.settings import _argument as settings_argument
from training.pretrain_settings import RUN_FIELDS, PretrainConfig, PretrainSettings
from training.resume import lr_at, plan_resume, run_key, supersede_stale_run
from training.runlog import RunLog, last_logged_loss
from training.setup import build_model, make_optimizer, setup_distributed, wrap_model
from training.signals import KILL_AFTER_STEP_ENV, StopOnSignal, TrainingInterrupted


def run(config: PretrainConfig, progress: Callable[[dict], None] | None = None) -> dict:
    """Train (resuming from ``output_dir`` if it holds a checkpoint); returns the summary also in summary.json.

    ``progress`` (rank 0) gets each step's metrics record every ``log_every`` steps, e.g. a Dagster logger.
    Raises ``TrainingInterrupted`` after SIGINT/SIGTERM.
    """
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from training.attention import model_inputs
    from training.checkpoint import latest_checkpoint, load_checkpoint, remove_partial_checkpoints, save_checkpoint
    from training.data import IGNORE_INDEX, PackedShards
    from training.loss import router_aux_loss_coef, split_router_loss
    from training.model_configs import rope_theta_of, size_name_of

    started = time.perf_counter()
    data = PackedShards(config.data)
    val = PackedShards(config.val_data) if config.val_data else None
    if val is not None and val.seq_len != data.seq_len:
        raise ValueError(f"val_data has seq_len {val.seq_len} but data has {data.seq_len}; pack them alike")
    seq_len = data.seq_len
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    output_dir = Path(config.output_dir)
    ckpt_root = output_dir / "checkpoints"
    kill_after = int(os.environ.get(KILL_AFTER_STEP_ENV, "0"))

    with ExitStack() as stack, StopOnSignal() as stop:
        dist_info = setup_distributed(config)
        if dist_info.owns_group:
            stack.callback(dist.destroy_process_group)
        rank, world, device = dist_info.rank, dist_info.world_size, dist_info.device
        key = run_key(config, world)
        resume_plan = plan_resume(output_dir, config, world)  # on every rank: a refusal before any weights load
        schedule = resume_plan.schedule
        superseded = None
        if dist_info.is_main:
            output_dir.mkdir(parents=True, exist_ok=True)
            remove_partial_checkpoints(ckpt_root)
            superseded = supersede_stale_run(output_dir, key)
        if world > 1:
            dist.barrier()

        if config.attn_implementation == "flex_attention" and device.type == "cpu":
            raise ValueError(
                "attn_implementation=flex_attention trains on GPU only: torch 2.13 has no flex attention backward "
                "on CPU; use sdpa (also no T x T mask) or run on a GPU"
            )
        use_bf16 = config.precision == "bf16" or (
            config.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
        )
        autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext
        model = build_model(config, seq_len, device)
        n_params = sum(p.numel() for p in model.parameters())
        aux_coef = router_aux_loss_coef(model)  # MoE: weight of the router's load-balancing loss; dense: 0
        model = wrap_model(model, config, dist_info, use_bf16)
        base_model = model.module if isinstance(model, DistributedDataParallel) else model
        optimizer = make_optimizer(model, config, fused=config.strategy != "fsdp" or world == 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_at(i + 1, config, schedule) / config.lr)
        rows_per_step = config.micro_batch_size * config.grad_accum_steps * world
        tokens_per_step = rows_per_step * seq_len

        # ---- resume ---------------------------------------------------------------------------------------------
        step, samples_seen, elapsed_before = 0, 0, 0.0
        resume_dir = latest_checkpoint(ckpt_root)
        if resume_dir is not None:
            state = load_checkpoint(resume_dir, model, optimizer, rank=rank)
            if state["seq_len"] != seq_len:
                raise ValueError(
                    f"{config.output_dir} holds checkpoints of a run on seq_len {state['seq_len']}, but data has "
                    f"seq_len {seq_len}: use a new output_dir (or init_from that run's final/)"
                )
            scheduler.load_state_dict(state["scheduler"])
            step, samples_seen, elapsed_before = state["step"], state["samples_seen"], state["elapsed_s"]
            if resume_plan.new_segment:  # the optimizer holds the next rate of the finished schedule: replace it
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step + 1, config, schedule)
        log = RunLog(output_dir, step, stack, progress) if dist_info.is_main else None
        if log is not None:
            where = f"resuming from {resume_dir.name}" if resume_dir else "starting"
            if superseded is not None:
                where += f" (checkpoints of other data or settings moved to {superseded})"
            if resume_plan.new_segment:
                seg = schedule[-1]
                where += (
                    f" (max_steps raised: new schedule segment, steps {seg['start'] + 1}-{seg['end']}: re-warmup "
                    f"from {seg['from_lr']:.2e} to {seg['peak_lr']:.2e} over {seg['warmup']} steps, cosine to "
                    f"{seg['min_lr']:.2e})"
                )
            log.info(
                f"{where}: {n_params:,} parameters, {len(data):,} rows x {seq_len} tokens, "
                f"{rows_per_step} rows/step on {world} x {device.type}, {'bf16' if use_bf16 else 'fp32'}"
            )

        def micro_batches_at(position: int) -> list[dict]:
            """This rank's micro-batches of the global batch starting at ``position`` (a disjoint slice)."""
            out = []
            for m in range(config.grad_accum_steps):
                first = position + (m * world + rank) * config.micro_batch_size
                batch = data.batch(data.indices_at(first, config.micro_batch_size, config.seed))
                out.append(model_inputs(batch, config.attn_implementation, device))  # flattened, with boundaries
            return out

        def all_reduce_sum(values: list[float]) -> list[float]:
            t = torch.tensor(values, dtype=torch.float64, device=device)
            if world > 1:
                dist.all_reduce(t)
            return t.tolist()  # a CPU-GPU sync point

        def evaluate() -> tuple[float, int]:
            """Token-mean loss over the first eval_batches * micro_batch_size * world rows of val_data."""
            model.eval()
            loss_sum, count = 0.0, 0
            with torch.no_grad():
                for b in range(config.eval_batches):
                    first = (b * world + rank) * config.micro_batch_size
                    rows = [i % len(val) for i in range(first, first + config.micro_batch_size)]
                    batch = model_inputs(val.batch(rows), config.attn_implementation, device)
                    n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
                    with autocast():
                        out = model(**batch, use_cache=False)
                    loss_sum += float(split_router_loss(out, aux_coef)[0]) * n  # the LM loss (MoE: without aux)
                    count += n
            model.train()
            loss_sum, count = all_reduce_sum([loss_sum, count])
            return loss_sum / max(count, 1), int(count)

        def checkpoint() -> None:
            trainer_state = {
                "samples_seen": samples_seen,
                "tokens_seen": samples_seen * seq_len,
                "elapsed_s": elapsed_before + time.perf_counter() - started,
                "scheduler": scheduler.state_dict(),
                "seq_len": seq_len,
                "rows_per_step": rows_per_step,
                "world_size": world,
                "config": config.model_dump(),
                "run_key": key,
                "schedule": schedule,
            }
            save_checkpoint(ckpt_root, step, model, optimizer, trainer_state, rank=rank, keep=config.keep_checkpoints)

        # ---- train ----------------------------------------------------------------------------------------------
        model.train()
        last_loss, val_loss, session_tokens, session_seconds = None, None, 0, 0.0
        while step < config.max_steps:
            t0 = time.perf_counter()
            micro_batches = micro_batches_at(samples_seen)
            local_targets = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro_batches)
            # One collective per step: the global count of predicted tokens, and whether any rank was signalled,
            # so that every rank stops at the same step.
            global_targets, stop_votes = all_reduce_sum([local_targets, float(stop.signum != 0)])
            if stop_votes:
                raise TrainingInterrupted(stop.signum or signal.SIGTERM)
            num_items = max(int(global_targets), 1)
            loss_sum, aux_sum = accumulate_gradients(
                model, micro_batches, num_items, world, config.strategy, aux_coef, autocast
            )
            max_norm = config.grad_clip if config.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            if hasattr(grad_norm, "full_tensor"):  # FSDP2 returns a DTensor
                grad_norm = grad_norm.full_tensor()
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            samples_seen += rows_per_step
            last_loss, aux_total = all_reduce_sum([float(loss_sum), float(aux_sum) if aux_sum is not None else 0.0])
            seconds = time.perf_counter() - t0
            session_tokens += tokens_per_step
            session_seconds += seconds
            record = {
                "step": step,
                "loss": last_loss,
                "lr": lr,
                **({"aux_loss": aux_total / (config.grad_accum_steps * world)} if aux_sum is not None else {}),
                "grad_norm": float(grad_norm),
                "tokens": samples_seen * seq_len,
                "tokens_per_s": tokens_per_step / seconds,
                "epoch": samples_seen / len(data),
                "elapsed": elapsed_before + time.perf_counter() - started,
            }
            if log is not None:
                log.record(record)
                if log.line_due(step % config.log_every == 0 or step == config.max_steps):
                    log.info(
                        f"step {step}/{config.max_steps} loss {last_loss:.4f} lr {lr:.2e} "
                        f"grad_norm {record['grad_norm']:.3f} {record['tokens_per_s']:,.0f} tok/s",
                        record,
                    )
            if val is not None and ((config.eval_every and step % config.eval_every == 0) or step == config.max_steps):
                val_loss, val_tokens = evaluate()
                if log is not None:
                    log.record({"step": step, "val_loss": val_loss, "val_tokens": val_tokens})
                    log.info(f"step {step} val_loss {val_loss:.4f}")
            if (config.checkpoint_every and step % config.checkpoint_every == 0) or step == config.max_steps:
                checkpoint()
            if kill_after and step == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

        if val is not None and val_loss is None:  # resumed a finished run: report its validation loss again
            val_loss, _ = evaluate()

        # ---- final model ----------------------------------------------------------------------------------------
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # A collective under FSDP: gathers the full weights, on CPU, to save them from rank 0.
        full_state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        summary: dict[str, Any] = {}
        if dist_info.is_main:
            final_dir = save_final(base_model, full_state, output_dir)
            summary = {
                "steps": step,
                "tokens_seen": samples_seen * seq_len,
                "final_loss": last_loss if last_loss is not None else last_logged_loss(output_dir),
                "val_loss": val_loss,
                "tokens_per_s": session_tokens / session_seconds if session_seconds else None,
                "seq_len": seq_len,
                "rope_theta": rope_theta_of(base_model.config),
                "max_position_embeddings": base_model.config.max_position_embeddings,
                "parameters": n_params,
                "model_size": size_name_of(base_model.config),
                "init_from": config.init_from,
                "world_size": world,
                "strategy": config.strategy if world > 1 else "single",
                "precision": "bf16" if use_bf16 else "fp32",
                "rows_per_step": rows_per_step,
                "resumed_from_step": int(resume_dir.name.split("_")[1]) if resume_dir else None,
                "wall_seconds": time.perf_counter() - started,
                "total_seconds": elapsed_before + time.perf_counter() - started,
                "output_dir": str(output_dir),
                "final_dir": str(final_dir),
            }
            tmp = output_dir / "summary.json.tmp"
            tmp.write_text(json.dumps(summary, indent=1))
            os.replace(tmp, output_dir / "summary.json")
            log.info(f"done: {step} steps, loss {summary['final_loss']}, model in {final_dir}")
            log.finish(summary)
        if world > 1:
            dist.barrier()
        return summary


def accumulate_gradients(
    model: Any,
    micro_batches: list[dict],
    num_items: int,
    world: int,
    strategy: str,
    aux_coef: float,
    autocast: Callable[[], Any] = nullcontext,
) -> tuple[Any, Any]:
    """Forward + backward of this rank's micro-batches of one step; gradients synchronised once, after the last.

    Objective: the global batch's token-mean LM loss (each micro-batch's summed token loss / ``num_items``, the
    predicted tokens of the whole global batch) plus, for an MoE model, ``aux_coef`` times the mean of the router's
    load-balancing loss over all ``grad_accum_steps * world`` micro-batches: each micro-batch's aux loss enters
    divided by their number, as its LM loss is divided by the global token count (transformers' forward adds it
    undivided, which would weigh it ``grad_accum_steps * world`` times too much). Returns this rank's summed LM
    loss and summed aux loss (None for a dense model), detached.
    """
    import torch

    from training.loss import split_router_loss

    aux_scale = 1.0 / (len(micro_batches) * world)
    loss_sum, aux_sum = torch.zeros(()), None
    for m, batch in enumerate(micro_batches):
        sync = m == len(micro_batches) - 1  # all-reduce (DDP) / reduce-scatter (FSDP) gradients once
        if world > 1 and strategy == "fsdp":
            model.set_requires_gradient_sync(sync)
        with model.no_sync() if world > 1 and strategy == "ddp" and not sync else nullcontext():
            with autocast():
                # loss = this micro-batch's summed token loss / predicted tokens in the global batch
                loss, aux = split_router_loss(model(**batch, use_cache=False, num_items_in_batch=num_items), aux_coef)
            objective = loss if aux is None else loss + (aux_coef * aux_scale) * aux
            # DDP and FSDP average gradients over ranks; scale back up to the global token mean.
            (objective * world).backward()
        loss_sum = loss_sum.to(loss.device) + loss.detach()
        if aux is not None:
            aux_sum = aux.detach() if aux_sum is None else aux_sum + aux.detach()
    return loss_sum, aux_sum


def save_final(model: Any, state_dict: dict, output_dir: Path, kind: str = "base") -> Path:
    """``output_dir/final``: safetensors weights + config (transformers 5 always writes safetensors), the Qwen2
    tokenizer with the project's ChatML template, and a generation config that stops where a ``base`` model's
    documents end (``<|endoftext|>``; ``kind="chat"``: ``<|im_end|>``). See ``training.checkpoint``."""
    from training.checkpoint import save_pretrained_folder

    return save_pretrained_folder(model, state_dict, output_dir / "final", kind=kind)


# ---- command line -----------------------------------------------------------------------------------------------


def build_parser() -> ArgumentParser:
    """The run options (``RUN_FIELDS``: data, output, starting point; in Dagster they come from the resources) and
    the settings flags generated from ``PretrainSettings`` (``pipelines.settings``), with ``--config FILE`` (JSON,
    TOML or YAML of settings; what the Dagster assets write) and ``--settings-profile NAME``; flags win."""
    parser = ArgumentParser(prog="python -m training.pretrain", description=__doc__.split("\n\n")[0])
    run_group = parser.add_argument_group("run", "What to train on, where to write, where to start.")
    for name in RUN_FIELDS:
        flags, kwargs = settings_argument(name, PretrainConfig.model_fields[name])
        run_group.add_argument(*flags, *(["--output"] if name == "output_dir" else []), **kwargs)
    return settings_parser(PretrainSettings, parser=parser)


def config_from_args(argv: list[str] | None = None) -> PretrainConfig:
    """The validated config of a command line; a bad or missing value exits with a one-line error (status 2)."""
    parser = build_parser()
    args, settings = parse_settings(parser, argv)
    try:
        return PretrainConfig(
            **settings.model_dump(), **{name: getattr(args, name) for name in RUN_FIELDS if hasattr(args, name)}
        )
    except ValueError as e:
        parser.error(str(e))


def main(argv: list[str] | None = None) -> None:
    config = config_from_args(argv)
    try:
        run(config)
    except TrainingInterrupted as e:
        print(f"training {e}; the last checkpoint is intact, rerun the same command to resume", file=sys.stderr)
        sys.exit(128 + e.signum)
    except ValueError as e:  # bad data or checkpoint folders: a message, not a traceback
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
