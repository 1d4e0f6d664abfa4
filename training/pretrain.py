"""Qwen2 pretraining on packed token shards: stage 1 (4,096 context) and stage 2 (long context, RoPE base 1e6).

One process (CPU or one GPU):

    python -m training.pretrain --data runs/tokenized --output runs/pretrain-s1 --model-size tiny --max-steps 200

Several processes (DDP by default; ``--strategy fsdp`` shards parameters, gradients and optimizer state):

    torchrun --nproc_per_node=2 -m training.pretrain --data runs/tokenized --output runs/pretrain-s1 \\
        --model-size 0.5B --micro-batch-size 4 --grad-accum-steps 8

Stage 2 continues stage 1 on long documents packed 8x longer, with the RoPE base raised to 1,000,000:

    python -m training.pretrain --data runs/tokenized-long --output runs/pretrain-s2 \\
        --init-from runs/pretrain-s1/final --rope-theta 1000000 --lr 1e-4

``--config run.json`` reads any of the flags from a JSON object (flags given on the command line win).
A run resumes by itself from the newest checkpoint in ``--output``; rerunning a finished run with a larger
``--max-steps`` continues it. A checkpoint made with other data or another setting that shapes the trajectory
(model, learning rates, batch, seed ...) is never resumed: the earlier run's outputs are moved to
``superseded/<time>-<run key>/`` and the run starts afresh. Outputs: ``metrics.jsonl`` (one line per step,
plus eval lines), ``tensorboard/``, ``checkpoints/step_XXXXXX/``, ``final/`` (``save_pretrained`` + tokenizer)
and ``summary.json``.

The global batch is ``micro_batch_size * grad_accum_steps * world_size`` rows of ``seq_len`` tokens (the data's
``seq_len``; it is also the model's ``max_position_embeddings``). Loss is the token mean over the whole global
batch: every micro-batch's summed token loss is divided by the global count of predicted tokens.

torch and transformers are imported inside functions, so importing ``PretrainConfig`` (Dagster UI) stays cheap.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import inspect
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any, get_type_hints

from training.model_configs import MODEL_SIZES

PRECISIONS = ("auto", "bf16", "fp32")
STRATEGIES = ("ddp", "fsdp")
DEVICES = ("auto", "cpu", "cuda")
# Test hook: SIGKILL this process right after the given step (and its checkpoint), like a machine failure.
KILL_AFTER_STEP_ENV = "PRETRAIN_SIGKILL_AFTER_STEP"


@dataclass
class PretrainConfig:
    """Everything a pretraining run needs; ``main`` builds it from flags, Dagster from its launch config."""

    data: str
    """Packed tokenize-stage folder to train on (``_config.json`` with ``seq_len``, ``data/*.parquet``,
    ``_SUCCESS.json``); local path or fsspec URI."""
    output_dir: str
    """Folder for checkpoints, metrics, TensorBoard logs, ``final/`` and ``summary.json``; a rerun resumes here."""
    val_data: str | None = None
    """Optional packed stage folder for the validation loss (same ``seq_len`` as ``data``)."""
    model_size: str | None = None
    """Qwen2 size to train from scratch: tiny, proxy, 0.5B, 1.5B, 7B or 72B (default tiny). With ``init_from``
    the checkpoint's shape is used and this, if given, must match it."""
    init_from: str | None = None
    """A ``save_pretrained`` folder to start from instead of random weights (stage 2 continues stage 1's
    ``final``); its optimizer state is not loaded."""
    rope_theta: float | None = None
    """RoPE base; default 10,000 from scratch, the checkpoint's with ``init_from``. Stage 2 sets 1,000,000."""
    max_steps: int = 100
    """Optimizer steps in the whole run (counting steps done before a resume)."""
    micro_batch_size: int = 4
    """Rows per forward/backward pass on each rank."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step on each rank."""
    lr: float = 3e-4
    """Peak learning rate, reached after the warmup."""
    min_lr: float = 3e-5
    """Learning rate at the last step: the cosine decays from ``lr`` to this."""
    warmup_steps: int = 10
    """Steps of linear warmup from lr/warmup_steps to ``lr`` (more than max_steps: the peak is never reached)."""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices and embeddings (never on biases and norms)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping (the norm is still logged)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    seed: int = 0
    """Seed of the weight init and of the data order (every epoch has its own order from it)."""
    precision: str = "auto"
    """auto: bf16 autocast on a GPU that supports it, else fp32; bf16: bf16 autocast on any device (CPU too);
    fp32: no autocast. Weights and optimizer state are always fp32."""
    device: str = "auto"
    """auto: one CUDA GPU per rank when there is one, else CPU; or cpu / cuda."""
    attn_implementation: str = "sdpa"
    """transformers attention kernel: sdpa, eager, or flash_attention_2 (GPU, needs flash-attn). All three keep
    documents of a packed row apart from ``position_ids``."""
    strategy: str = "ddp"
    """With several processes: ddp (replicated model) or fsdp (FSDP2 ``fully_shard`` per decoder layer)."""
    checkpoint_every: int = 100
    """Save a resumable checkpoint every this many steps (and always at the last step)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep."""
    eval_every: int = 0
    """Validation loss every this many steps; 0: only at the end. Needs ``val_data``."""
    eval_batches: int = 4
    """Micro-batches per rank in one validation pass (always the same first rows of ``val_data``)."""
    log_every: int = 10
    """Progress line (stdout or Dagster Pipes) every this many steps; metrics.jsonl gets every step."""
    num_threads: int | None = None
    """torch intra-op CPU threads of each process (default: torch's choice; torchrun sets 1 per process)."""

    def __post_init__(self) -> None:
        problems = []
        if not self.data:
            problems.append("data: give the packed stage folder to train on")
        if not self.output_dir:
            problems.append("output_dir: give a folder for checkpoints and the final model")
        if self.model_size is not None and self.model_size not in MODEL_SIZES:
            problems.append(f"model_size={self.model_size!r}: choose one of {', '.join(MODEL_SIZES)}")
        if self.rope_theta is not None and not self.rope_theta > 0:
            problems.append(f"rope_theta={self.rope_theta}: must be positive (stage 2 uses 1000000)")
        for name in ("max_steps", "micro_batch_size", "grad_accum_steps", "eval_batches", "log_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)}: must be at least 1")
        for name in ("warmup_steps", "checkpoint_every", "eval_every", "keep_checkpoints"):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)}: must be 0 or more")
        if self.keep_checkpoints < 1:
            problems.append("keep_checkpoints: keep at least 1, or the run cannot resume")
        if not self.lr > 0:
            problems.append(f"lr={self.lr}: must be positive")
        if not 0 <= self.min_lr <= self.lr:
            problems.append(f"min_lr={self.min_lr}: must be between 0 and lr={self.lr}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            problems.append("weight_decay and grad_clip must be 0 or more")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            problems.append(f"beta1={self.beta1}, beta2={self.beta2}: AdamW betas lie in [0, 1)")
        if self.precision not in PRECISIONS:
            problems.append(f"precision={self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.device not in DEVICES:
            problems.append(f"device={self.device!r}: choose one of {', '.join(DEVICES)}")
        if self.strategy not in STRATEGIES:
            problems.append(f"strategy={self.strategy!r}: choose one of {', '.join(STRATEGIES)}")
        if self.attn_implementation not in ("sdpa", "eager", "flash_attention_2"):
            problems.append(f"attn_implementation={self.attn_implementation!r}: use sdpa, eager or flash_attention_2")
        if self.num_threads is not None and self.num_threads < 1:
            problems.append(f"num_threads={self.num_threads}: must be at least 1")
        if problems:
            raise ValueError("invalid PretrainConfig:\n  " + "\n  ".join(problems))


def field_docs(cls: type = PretrainConfig) -> dict[str, str]:
    """The docstring under each dataclass field (for ``--help`` and for UIs), read from the source."""
    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):  # no source shipped (e.g. a frozen build): flags simply have no help text
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = " ".join(after.value.value.split())  # type: ignore[union-attr]
    return docs


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run between two steps; the last checkpoint is intact."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class StopOnSignal:
    """Turns the first SIGINT/SIGTERM into a flag the loop checks at every step; a second one interrupts at once."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # signal handlers only exist there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:
            raise TrainingInterrupted(signum)
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# Fields that may change between a run and its resume: they do not change the trajectory already taken.
RESUMABLE_CHANGES = frozenset(
    {
        "max_steps",
        "output_dir",
        "val_data",
        "checkpoint_every",
        "keep_checkpoints",
        "eval_every",
        "eval_batches",
        "log_every",
        "num_threads",
    }
)


def run_key(config: PretrainConfig) -> str:
    """What a checkpoint must match to be resumed: the trajectory settings and the data's committed summary."""
    from pipelines.shards import read_json

    settings = {k: v for k, v in asdict(config).items() if k not in RESUMABLE_CHANGES}
    data = [read_json(f"{config.data.rstrip('/')}/{name}") for name in ("_config.json", "_SUCCESS.json")]
    payload = json.dumps([settings, data], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def supersede_stale_run(output_dir: Path, key: str) -> Path | None:
    """Move an earlier run's outputs aside when its checkpoints were made under another run key."""
    from training.checkpoint import STATE_FILE, latest_checkpoint

    latest = latest_checkpoint(output_dir / "checkpoints")
    if latest is None:
        return None
    old_key = json.loads((latest / STATE_FILE).read_text()).get("run_key")
    if old_key == key:
        return None
    target = output_dir / "superseded" / f"{time.strftime('%Y%m%d-%H%M%S')}-{old_key or 'unknown'}"
    target.mkdir(parents=True)
    for name in ("checkpoints", "metrics.jsonl", "tensorboard", "final", "summary.json"):
        if (output_dir / name).exists():
            os.replace(output_dir / name, target / name)
    return target


def lr_at(step: int, config: PretrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (1-based): linear warmup, then cosine down to ``min_lr``."""
    if step <= config.warmup_steps:
        return config.lr * step / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    return config.min_lr + 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) * (config.lr - config.min_lr)


@dataclass
class Distributed:
    rank: int
    world_size: int
    local_rank: int
    device: Any  # torch.device
    owns_group: bool  # we initialised the process group, so we tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(config: PretrainConfig) -> Distributed:
    """Join the torchrun process group when there is one (nccl on CUDA, gloo on CPU) and pick this rank's device."""
    import torch
    import torch.distributed as dist

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch sees no CUDA GPU; use --device cpu")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    owns_group = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
        owns_group = True
    return Distributed(rank, world_size, local_rank, device, owns_group)


def build_model(config: PretrainConfig, seq_len: int) -> Any:
    """A fresh Qwen2 of ``model_size``, or ``init_from``'s weights; positions = ``seq_len``, RoPE base set."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from training.model_configs import qwen2_config, rope_theta_of, set_rope_theta, shape_of, size_name_of

    if config.init_from is None:
        torch.manual_seed(config.seed)  # the same initial weights on every rank and on every restart
        model_config = qwen2_config(
            config.model_size or "tiny", max_position_embeddings=seq_len, rope_theta=config.rope_theta
        )
        return AutoModelForCausalLM.from_config(
            model_config, attn_implementation=config.attn_implementation, dtype=torch.float32
        )
    init_dir = Path(config.init_from)
    if not (init_dir / "config.json").exists():
        raise ValueError(f"init_from={config.init_from}: no config.json there; give a save_pretrained folder")
    model_config = AutoConfig.from_pretrained(init_dir, local_files_only=True)
    if config.model_size is not None and size_name_of(model_config) != config.model_size:
        raise ValueError(
            f"model_size={config.model_size} but init_from holds a {size_name_of(model_config) or 'custom'} model "
            f"({shape_of(model_config)}); drop model_size or pick the matching checkpoint"
        )
    # RoPE frequencies are computed when the model is built, so the new base must be in the config first.
    set_rope_theta(model_config, config.rope_theta or rope_theta_of(model_config))
    model_config.max_position_embeddings = seq_len
    return AutoModelForCausalLM.from_pretrained(
        init_dir,
        config=model_config,
        dtype=torch.float32,
        attn_implementation=config.attn_implementation,
        local_files_only=True,
    )


def wrap_model(model: Any, config: PretrainConfig, dist_info: Distributed) -> Any:
    """DDP or FSDP2 around the model when there are several processes; the model itself otherwise."""
    if dist_info.world_size == 1:
        return model
    if config.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [dist_info.local_rank] if dist_info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    from torch.distributed.fsdp import fully_shard

    # FSDP2 works on CPU with gloo (torch 2.13). Every rank builds the full model before sharding it: fine up to a
    # few billion parameters; for 72B build under torch.device("meta") and load shards instead.
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def make_optimizer(model: Any, config: PretrainConfig, fused: bool = True) -> Any:
    """AdamW with weight decay on matrices and embeddings only (nanoGPT's split).

    The fused kernel exists for CPU too and is ~9x faster there than torch's CPU default (a per-tensor loop);
    FSDP's sharded DTensor parameters take the multi-tensor (foreach) path instead.
    """
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kernel = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=1e-8, **kernel)


class RunLog:
    """Rank 0's outputs while training: metrics.jsonl, TensorBoard, progress lines (stdout or Dagster Pipes)."""

    def __init__(
        self,
        output_dir: Path,
        resumed_step: int,
        stack: ExitStack,
        progress: Callable[[dict], None] | None,
    ):
        from torch.utils.tensorboard import SummaryWriter

        self.metrics_path = output_dir / "metrics.jsonl"
        self._drop_lines_after(resumed_step)
        self.metrics = stack.enter_context(open(self.metrics_path, "a"))
        # purge_step hides events a killed run wrote after its last checkpoint.
        self.tb = SummaryWriter(str(output_dir / "tensorboard"), purge_step=resumed_step + 1)
        stack.callback(self.tb.close)
        self.progress = progress
        self.pipes = None
        try:
            from dagster_pipes import PipesContext, PipesEnvVarParamsLoader, open_dagster_pipes
        except ImportError:
            if "DAGSTER_PIPES_CONTEXT" in os.environ:
                raise RuntimeError("launched through Dagster Pipes, but dagster-pipes is not installed") from None
            return
        if PipesContext.is_initialized() and not PipesContext.get().is_closed:
            self.pipes = PipesContext.get()  # the caller's open session: use it, leave closing it to the caller
        elif PipesEnvVarParamsLoader().is_dagster_pipes_process():
            if PipesContext.is_initialized():  # closed by an earlier run() in this process: open a fresh one
                PipesContext.set(None)  # type: ignore[arg-type]
            self.pipes = stack.enter_context(open_dagster_pipes())

    def _drop_lines_after(self, step: int) -> None:
        if not self.metrics_path.exists():
            return
        kept = [
            line
            for line in self.metrics_path.read_text().splitlines()
            if line.strip() and _complete_json(line) and json.loads(line)["step"] <= step
        ]
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.metrics_path)

    def record(self, record: dict) -> None:
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float):
                self.tb.add_scalar(("val/" if key.startswith("val_") else "train/") + key, value, record["step"])

    def info(self, message: str, record: dict | None = None) -> None:
        if self.pipes is not None:
            self.pipes.log.info(message)
        else:
            print(message, flush=True)
        if self.progress is not None and record is not None:
            self.progress(record)

    def finish(self, summary: dict) -> None:
        if self.pipes is not None:
            self.pipes.report_custom_message(summary)


def _complete_json(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:  # the half-written last line of a killed run
        return False


def run(config: PretrainConfig, progress: Callable[[dict], None] | None = None) -> dict:
    """Train (resuming from ``output_dir`` if it holds a checkpoint); returns the summary also in summary.json.

    ``progress`` (rank 0) gets each step's metrics record every ``log_every`` steps, e.g. a Dagster logger.
    Raises ``TrainingInterrupted`` after SIGINT/SIGTERM.
    """
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from training.checkpoint import latest_checkpoint, load_checkpoint, remove_partial_checkpoints, save_checkpoint
    from training.data import IGNORE_INDEX, PackedShards
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
        key = run_key(config)
        superseded = None
        if dist_info.is_main:
            output_dir.mkdir(parents=True, exist_ok=True)
            remove_partial_checkpoints(ckpt_root)
            superseded = supersede_stale_run(output_dir, key)
        if world > 1:
            dist.barrier()

        model = build_model(config, seq_len).to(device)
        n_params = sum(p.numel() for p in model.parameters())
        model = wrap_model(model, config, dist_info)
        base_model = model.module if isinstance(model, DistributedDataParallel) else model
        optimizer = make_optimizer(model, config, fused=config.strategy != "fsdp" or world == 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_at(i + 1, config) / config.lr)

        use_bf16 = config.precision == "bf16" or (
            config.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
        )
        autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext
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
        log = RunLog(output_dir, step, stack, progress) if dist_info.is_main else None
        if log is not None:
            where = f"resuming from {resume_dir.name}" if resume_dir else "starting"
            if superseded is not None:
                where += f" (checkpoints of other data or settings moved to {superseded})"
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
                out.append({k: v.to(device, non_blocking=True) for k, v in batch.items()})
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
                    batch = {k: v.to(device) for k, v in val.batch(rows).items()}
                    n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
                    with autocast():
                        out = model(**batch, use_cache=False)
                    loss_sum += float(out.loss) * n
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
                "config": asdict(config),
                "run_key": key,
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
            loss_sum = torch.zeros((), device=device)
            for m, batch in enumerate(micro_batches):
                sync = m == len(micro_batches) - 1  # all-reduce (DDP) / reduce-scatter (FSDP) gradients once
                if world > 1 and config.strategy == "fsdp":
                    model.set_requires_gradient_sync(sync)
                with model.no_sync() if world > 1 and config.strategy == "ddp" and not sync else nullcontext():
                    with autocast():
                        # loss = this micro-batch's summed token loss / predicted tokens in the global batch
                        loss = model(**batch, use_cache=False, num_items_in_batch=num_items).loss
                    # DDP and FSDP average gradients over ranks; scale back up to the global token mean.
                    (loss * world).backward()
                loss_sum += loss.detach()
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
            (last_loss,) = all_reduce_sum([float(loss_sum)])
            seconds = time.perf_counter() - t0
            session_tokens += tokens_per_step
            session_seconds += seconds
            record = {
                "step": step,
                "loss": last_loss,
                "lr": lr,
                "grad_norm": float(grad_norm),
                "tokens": samples_seen * seq_len,
                "tokens_per_s": tokens_per_step / seconds,
                "epoch": samples_seen / len(data),
                "elapsed": elapsed_before + time.perf_counter() - started,
            }
            if log is not None:
                log.record(record)
                if step % config.log_every == 0 or step == config.max_steps:
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
                "final_loss": last_loss if last_loss is not None else _last_logged_loss(output_dir),
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


def save_final(model: Any, state_dict: dict, output_dir: Path) -> Path:
    """``output_dir/final``: safetensors weights + config (transformers 5 always writes safetensors) + tokenizer."""
    import shutil

    from transformers.utils import logging as hf_logging

    from pipelines.tokenizer import load_hf_tokenizer

    hf_logging.disable_progress_bar()

    final_dir = output_dir / "final"
    tmp = output_dir / ".tmp-final"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=state_dict)
    load_hf_tokenizer().save_pretrained(tmp)
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp, final_dir)
    return final_dir


def _last_logged_loss(output_dir: Path) -> float | None:
    path = output_dir / "metrics.jsonl"
    losses = [r["loss"] for r in map(json.loads, path.read_text().splitlines()) if "loss" in r] if path.exists() else []
    return losses[-1] if losses else None


# ---- command line -----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.pretrain",
        description=__doc__.split("\n\n")[0],
        argument_default=argparse.SUPPRESS,  # unset flags fall back to --config, then to the dataclass default
    )
    parser.add_argument("--config", help="JSON file with any of the fields below (flags override it)")
    docs, hints = field_docs(), get_type_hints(PretrainConfig)
    for f in fields(PretrainConfig):
        kind = hints[f.name]
        base = next((t for t in getattr(kind, "__args__", (kind,)) if t is not type(None)), kind)
        flag = "--" + f.name.replace("_", "-")
        names = [flag, "--output"] if f.name == "output_dir" else [flag]
        choices = {"model_size": MODEL_SIZES, "precision": PRECISIONS, "strategy": STRATEGIES, "device": DEVICES}
        default = "" if f.default is MISSING else f" (default: {f.default})"
        parser.add_argument(
            *names, dest=f.name, type=base, choices=choices.get(f.name), help=docs.get(f.name, "") + default
        )
    return parser


def config_from_args(argv: list[str] | None = None) -> PretrainConfig:
    args = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = {}
    if "config" in args:
        with open(args.pop("config")) as f:
            values = json.load(f)
        unknown = set(values) - {f.name for f in fields(PretrainConfig)}
        if unknown:
            raise SystemExit(f"--config has unknown fields: {', '.join(sorted(unknown))}")
    values.update(args)
    missing = [name for name in ("data", "output_dir") if not values.get(name)]
    if missing:
        raise SystemExit("missing " + " and ".join("--" + m.replace("_", "-") for m in missing))
    try:
        return PretrainConfig(**values)
    except ValueError as e:
        raise SystemExit(str(e)) from None


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
