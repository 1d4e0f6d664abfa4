"""Resources shared by the assets. Kept light: nothing here imports Beam, torch or pyarrow."""

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def default_data_root() -> str:
    return os.environ.get("QWEN2_DATA_ROOT", str(PROJECT_ROOT / "data"))


class CurationResource(dg.ConfigurableResource):
    """Where the curated shards live and how the Beam pipelines run."""

    data_root: str = Field(
        default_factory=default_data_root,
        description="Folder or fsspec URI (s3://bucket/prefix, gs://...) under which every stage writes. "
        "Defaults to $QWEN2_DATA_ROOT, else ./data in the project.",
    )
    beam_args: list[str] = Field(
        default_factory=list,
        description="Extra Beam pipeline flags, e.g. ['--runner=DataflowRunner', '--project=P', '--region=R', "
        "'--temp_location=gs://B/tmp', '--setup_file=./setup.py']. Empty: local multi-process FnApiRunner.",
    )
    workers: int = Field(default=0, description="Local Beam worker processes; 0 uses every core.")

    def stage_dir(self, stage: str) -> str:
        base = self.data_root.rstrip("/")
        return f"{base}/curated/{stage}"

    def crawl_dir(self) -> str:
        return f"{self.data_root.rstrip('/')}/crawl"

    def run_kwargs(self) -> dict:
        return {"beam_args": list(self.beam_args), "workers": self.workers or None}
