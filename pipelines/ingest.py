"""Stage 1, ingest: raw crawl files and datasets -> Parquet shards of DOCUMENT_SCHEMA.

    python -m pipelines.ingest --input 'crawl/*.warc.gz' --output data/ingested [--max-doc-bytes N] [beam flags]

Settings: ``IngestSettings`` (``pipelines/curation_settings.py``), the same as the Dagster asset ``raw_documents``.

One output shard per input file; unreadable records go to ``errors/`` with a reason (see ``pipelines.readers``:
every record is validated and coerced on its own, damaged WARC/gzip data costs only the damaged record) and the
run goes on. A killed run resumes: files whose shard is committed are skipped.

Duplicate ids: within a file the readers rename repeats to ``<id>#dup-<n>`` (counted per shard as
``duplicate_ids_renamed``). After the shards are written, one more pass (in this process, or on Beam for a large
stage) counts ids that occur in more than one file: ``cross_file_duplicate_ids`` (distinct ids) and
``cross_file_duplicate_documents`` (documents beyond the first of each) in the summary. Those are reported, not
renamed: renaming them would need a global pass before the shards are written.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow.parquet as pq

from pipelines.beam_stage import (
    DocumentProcessor,
    cli,
    parse_stage_args,
    print_summary,
    run_pipeline,
    run_shard_stages,
    stage_arg_parser,
)
from pipelines.curation_settings import IngestSettings
from pipelines.readers import EXTRACTOR, READER_VERSION, read_hf
from pipelines.shards import filesystem, iter_parquet_rows, list_shards


class IngestProcessor(DocumentProcessor):
    """Keeps every readable document; the readers did the work (decoding, extraction, coercion, quarantine)."""

    stage = "ingest"

    def config(self) -> dict:
        return {"extractor": EXTRACTOR, "reader": READER_VERSION}

    def new_summary(self) -> dict:
        return {"duplicate_ids_renamed": 0}

    def summarize(self, doc: dict, summary: dict) -> None:
        if "#dup-" in doc["id"] and '"original_id"' in (doc.get("metadata") or ""):
            summary["duplicate_ids_renamed"] += 1


LOCAL_ID_CHECK_LIMIT = 5_000_000
"""Up to this many documents the cross-file id check runs in this process (8 bytes per id); beyond, on Beam."""


def count_cross_file_duplicate_ids(
    stage_dir: str,
    beam_args=None,
    workers: int | None = None,
    local_limit: int = LOCAL_ID_CHECK_LIMIT,
) -> dict[str, int]:
    """Ids that occur in more than one data shard of ``stage_dir`` (ids are unique within a shard, so an id seen
    more than once is in several files): ``cross_file_duplicate_ids`` (distinct ids) and
    ``cross_file_duplicate_documents`` (documents beyond the first of each).

    A small stage is checked here on 64-bit hashes of the ids (sorted, counted); a larger one by a Beam
    ``CombinePerKey`` over the ids themselves, so no process holds every id.
    """
    shards = list_shards(stage_dir)
    if len(shards) < 2:
        return {"cross_file_duplicate_ids": 0, "cross_file_duplicate_documents": 0}
    if sum(_num_rows(uri) for uri in shards) <= local_limit:
        return _count_repeats_locally(shards)
    return _count_repeats_on_beam(shards, beam_args, workers)


def _num_rows(uri: str) -> int:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return pq.ParquetFile(f).metadata.num_rows


def _count_repeats_locally(shards: list[str]) -> dict[str, int]:
    def id_hash(doc_id: str) -> int:
        return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "little")

    parts = [np.fromiter((id_hash(row["id"]) for row in iter_parquet_rows(uri, ["id"])), np.uint64) for uri in shards]
    _, counts = np.unique(np.concatenate(parts), return_counts=True)
    repeated = counts[counts > 1]
    return {
        "cross_file_duplicate_ids": int(repeated.size),
        "cross_file_duplicate_documents": int((repeated - 1).sum()),
    }


def _count_repeats_on_beam(shards: list[str], beam_args, workers: int | None) -> dict[str, int]:
    import apache_beam as beam
    from apache_beam.metrics import Metrics

    def shard_ids(uri: str):
        for row in iter_parquet_rows(uri, ["id"]):
            yield row["id"], 1

    class CountRepeats(beam.DoFn):
        def setup(self):
            self.ids = Metrics.counter("ingest", "cross_file_duplicate_ids")
            self.documents = Metrics.counter("ingest", "cross_file_duplicate_documents")

        def process(self, id_and_count):
            if id_and_count[1] > 1:
                self.ids.inc()
                self.documents.inc(id_and_count[1] - 1)

    counters = run_pipeline(
        lambda p: (
            p
            | "Shards" >> beam.Create(shards)
            | "Spread" >> beam.Reshuffle()
            | "Ids" >> beam.FlatMap(shard_ids)
            | "PerId" >> beam.CombinePerKey(sum)
            | "Repeats" >> beam.ParDo(CountRepeats())
        ),
        beam_args,
        workers,
    )
    names = ("cross_file_duplicate_ids", "cross_file_duplicate_documents")
    return {name: counters.get(f"ingest/{name}", 0) for name in names}


def run(inputs, output_dir: str, beam_args=None, workers: int | None = None, settings=None, **kwargs) -> dict:
    """Ingest ``inputs`` into ``output_dir``; ``run_many`` with one folder."""
    return run_many({output_dir: inputs}, beam_args, workers, settings, **kwargs)[output_dir]


def run_many(
    jobs: dict,
    beam_args=None,
    workers: int | None = None,
    settings: IngestSettings | None = None,
    **kwargs,
) -> dict[str, dict]:
    """Ingest each ``output folder -> inputs`` of ``jobs`` in one Beam job (one folder per crawl dump); the
    summaries by output folder. ``settings``: the stage's settings (``max_doc_bytes``); a keyword of the same
    name overrides it."""
    if settings is not None:
        kwargs = {"max_doc_bytes": settings.max_doc_bytes, **kwargs}
    for inputs in jobs.values():
        for spec in [inputs] if isinstance(inputs, str) else inputs:
            for part in spec.split(","):
                if part.strip().startswith("hf:"):
                    next(read_hf(part.strip()), None)  # fail here, with the readable error, before Beam starts
    return run_shard_stages(
        IngestProcessor(),
        jobs,
        beam_args,
        workers,
        after_shards=lambda output_dir: count_cross_file_duplicate_ids(output_dir, beam_args, workers),
        **kwargs,
    )


def main(argv: list[str] | None = None) -> None:
    args, beam_args = parse_stage_args(stage_arg_parser(__doc__.splitlines()[0], IngestSettings), argv)
    print_summary(run(args.input, args.output, beam_args, args.workers, settings=args.settings))


if __name__ == "__main__":
    cli(main)
