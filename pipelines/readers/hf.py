"""Hugging Face datasets (``hf:<dataset>[:<config>]:<split>``), streamed; needs ``datasets`` and the Hub."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from pipelines.readers.records import DEFAULT_MAX_DOC_BYTES, Item, _row_to_document


def parse_hf_spec(spec: str) -> tuple[str, str | None, str]:
    parts = spec.removeprefix("hf:").split(":")
    if len(parts) == 2:
        return parts[0], None, parts[1]
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    raise ValueError(f"bad Hugging Face source {spec!r}: use hf:<dataset>:<split> or hf:<dataset>:<config>:<split>")


def read_hf(spec: str, max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES) -> Iterator[Item]:
    """Stream a Hugging Face dataset. Needs ``pip install datasets`` and access to the Hub."""
    name, config, split = parse_hf_spec(spec)
    try:
        import datasets
    except ImportError as e:
        raise RuntimeError("reading hf: sources needs the 'datasets' package: pip install datasets") from e
    try:
        dataset = datasets.load_dataset(name, config, split=split, streaming=True)
        iterator = iter(dataset)
        first = next(iterator, None)
    except Exception as e:  # the Hub client raises many types when offline
        raise RuntimeError(
            f"cannot load Hugging Face dataset {name!r} (config={config}, split={split}): {type(e).__name__}: {e}. "
            "If this machine is offline, download the dataset where the Hub is reachable "
            "(e.g. `datasets.load_dataset(...).to_parquet(...)`) and pass the Parquet/JSONL files instead."
        ) from e
    if first is None:
        return
    source = f"hf:{name}"
    for i, row in enumerate(itertools.chain([first], iterator)):
        yield _row_to_document(dict(row), source, i, max_doc_bytes)
