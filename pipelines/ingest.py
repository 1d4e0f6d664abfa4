"""Stage 1, ingest: raw crawl files and datasets -> Parquet shards of DOCUMENT_SCHEMA.

    python -m pipelines.ingest --input 'crawl/*.warc.gz' --output data/ingested [beam flags]

One output shard per input file; unreadable records go to ``errors/`` with a
reason (see ``pipelines.readers``) and the run goes on. A killed run resumes:
files whose shard is committed are skipped.
"""

from __future__ import annotations

from pipelines.beam_stage import (
    DocumentProcessor,
    cli,
    parse_stage_args,
    print_summary,
    run_shard_stage,
    stage_arg_parser,
)
from pipelines.readers import EXTRACTOR, read_hf


class IngestProcessor(DocumentProcessor):
    """Keeps every readable document; the readers did the work (decoding, extraction, quarantine)."""

    stage = "ingest"

    def config(self) -> dict:
        return {"extractor": EXTRACTOR}


def run(inputs, output_dir: str, beam_args=None, workers: int | None = None, **kwargs) -> dict:
    for spec in [inputs] if isinstance(inputs, str) else inputs:
        for part in spec.split(","):
            if part.startswith("hf:"):
                next(read_hf(part), None)  # fail here, with the readable error, before Beam starts
    return run_shard_stage(IngestProcessor(), inputs, output_dir, beam_args, workers, **kwargs)


def main(argv: list[str] | None = None) -> None:
    args, beam_args = parse_stage_args(stage_arg_parser(__doc__.splitlines()[0]), argv)
    print_summary(run(args.input, args.output, beam_args, args.workers, max_doc_bytes=args.max_doc_bytes))


if __name__ == "__main__":
    cli(main)
