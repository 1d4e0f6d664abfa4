"""Running a shard-in/shard-out stage as an Apache Beam pipeline.

The pipeline is ``Create(input files) | Reshuffle | ParDo(ProcessShard)``: Beam
spreads shards over workers (two local processes here, Dataflow/Flink/Spark
workers elsewhere), each worker streams its shard through the stage's
``DocumentProcessor`` and writes the output shard itself (see ``shards.py`` for
why: per-shard commits make every stage resumable). Beam ``Metrics`` counters
count what each stage keeps and drops, and why.

Runners: by default the portable ``FnApiRunner`` in multi-process mode, which
never downloads anything (Beam's default DirectRunner first tries to fetch the
Prism binary). Any other runner is chosen with ordinary Beam flags, e.g.
``--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp
--setup_file=./setup.py`` or ``--runner=FlinkRunner --flink_master=host:8081``
or ``--runner=SparkRunner``; the pipeline code does not change.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

from pipelines.readers import DEFAULT_MAX_DOC_BYTES, read_documents
from pipelines.schema import excluded_row
from pipelines.settings import ArgumentParser, Settings, bounded, settings_from_args, settings_parser
from pipelines.shards import ShardStage, ShardStats, resolve_inputs, shard_key

log = logging.getLogger(__name__)
BATCH_SIZE = 256


class DocumentProcessor:
    """The per-document logic of a stage; Beam-free so it can be tested and benchmarked alone."""

    stage = "identity"
    data_schema = None  # None: DOCUMENT_SCHEMA; a stage that adds columns names its own schema

    def setup(self) -> None:
        """Load models and build filters (called once per worker process)."""

    def config(self) -> dict:
        """Everything that changes the output; a folder made with another config is not resumed."""
        return {}

    def process_batch(self, docs: list[dict]) -> Iterator[tuple[dict, str | None]]:
        """Yields ``(doc, None)`` to keep a (possibly annotated) document, ``(doc, reason)`` to drop it."""
        for doc in docs:
            yield doc, None

    def new_summary(self) -> dict | None:
        """A per-shard accumulator for stage-specific counters (merged over shards by ``merge_stats``)."""
        return None

    def summarize(self, doc: dict, summary: dict) -> None:
        """Adds a kept document to the shard's accumulator."""


def pipeline_options(beam_args: Sequence[str] | None = None, workers: int | None = None):
    """Beam options: the caller's flags, or a local multi-process FnApiRunner that never downloads."""
    from apache_beam.options.pipeline_options import PipelineOptions

    args = list(beam_args or [])
    if not any(a.startswith("--runner") for a in args):
        workers = workers or os.cpu_count() or 1
        mode = "multi_processing" if workers > 1 else "in_memory"
        args += ["--runner=FnApiRunner", f"--direct_running_mode={mode}", f"--direct_num_workers={workers}"]
    if not any(a.startswith("--default_sdk_harness_log_level") for a in args):
        args.append("--default_sdk_harness_log_level=WARNING")
    return PipelineOptions(args)


def counters(result) -> dict[str, int]:
    """Beam counters of a finished pipeline as ``{"namespace/name": value}``."""
    out: dict[str, int] = {}
    for c in result.metrics().query()["counters"]:
        key = f"{c.key.metric.namespace}/{c.key.metric.name}"
        value = c.committed if c.committed is not None else c.attempted
        out[key] = out.get(key, 0) + int(value or 0)
    return dict(sorted(out.items()))


def run_pipeline(build, beam_args: Sequence[str] | None = None, workers: int | None = None) -> dict[str, int]:
    """Build a pipeline with ``build(pipeline)``, run it to the end and return its counters."""
    import apache_beam as beam

    pipeline = beam.Pipeline(options=pipeline_options(beam_args, workers))
    build(pipeline)
    result = pipeline.run()
    result.wait_until_finish()
    return counters(result)


def process_shard(path: str, processor: DocumentProcessor, stage: ShardStage, max_doc_bytes: int, count=None) -> dict:
    """Stream one input shard through ``processor`` into its output shards (unless it is committed from this very
    input); returns its counters. ``count(name, n)`` reports to Beam metrics when run inside a pipeline.
    """
    count = count or (lambda name, n=1: None)

    def work(key: str) -> dict:
        stats = ShardStats()
        summary = processor.new_summary()
        with stage.writers(key, processor.data_schema) as writers:

            def flush(batch: list[dict]) -> None:
                for doc, reason in processor.process_batch(batch):
                    if reason is None:
                        writers["data"].write(doc)
                        stats.keep(doc)
                        if summary is not None:
                            processor.summarize(doc, summary)
                    else:
                        writers["excluded"].write(excluded_row(doc, processor.stage, reason))
                        stats.drop(reason)
                        count(f"dropped_{reason}")

            batch: list[dict] = []
            for kind, row in read_documents(path, max_doc_bytes):
                if kind == "error":
                    writers["errors"].write(row)
                    stats.error(row["reason"])
                    count(f"error_{row['reason']}")
                    continue
                stats.docs_in += 1
                batch.append(row)
                if len(batch) >= BATCH_SIZE:
                    flush(batch)
                    batch = []
            flush(batch)
        count("docs_in", stats.docs_in)
        count("docs_out", stats.docs_out)
        return {**stats.to_dict(), **(summary or {})}

    return stage.file_shard(path, work, count)


def _shard_dofn(processor: DocumentProcessor, max_doc_bytes: int):
    def make(stage: ShardStage):
        from pipelines.beam_dofn import CountingDoFn

        class ProcessShard(CountingDoFn):
            def setup(self):
                processor.setup()

            def process(self, path: str):
                started = time.time()
                stats = process_shard(path, processor, stage, max_doc_bytes, self.count)
                log.info(
                    "%s: %s -> %d/%d docs in %.1fs",
                    processor.stage,
                    path,
                    stats["docs_out"],
                    stats["docs_in"],
                    time.time() - started,
                )
                yield stats

        return ProcessShard(processor.stage)

    return make


def run_shard_stage(
    processor: DocumentProcessor,
    inputs: str | Sequence[str],
    output_dir: str,
    beam_args: Sequence[str] | None = None,
    workers: int | None = None,
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
    after_shards: Callable[[str], dict] | None = None,
) -> dict:
    """Run one stage over ``inputs`` into ``output_dir`` (resuming committed shards); returns the summary.

    Files a folder or glob holds but no reader takes are named in the summary (``skipped_inputs``).
    ``after_shards(output_dir)``, called once every shard is committed and before the stage is, adds stage-wide
    counters.
    """
    jobs = {output_dir: inputs}
    return run_shard_stages(processor, jobs, beam_args, workers, max_doc_bytes, after_shards)[output_dir]


def run_shard_stages(
    processor: DocumentProcessor,
    jobs: Mapping[str, str | Sequence[str]],
    beam_args: Sequence[str] | None = None,
    workers: int | None = None,
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
    after_shards: Callable[[str], dict] | None = None,
) -> dict[str, dict]:
    """``run_shard_stage`` for several (output folder -> inputs) at once, as one Beam job (e.g. one folder per crawl
    dump in a backfill): each folder is a stage of its own (config, lock, resume, summary). Returns the summaries by
    output folder."""
    config = {"stage": processor.stage, "processor": processor.config(), "max_doc_bytes": max_doc_bytes}
    parts = []
    for output_dir, inputs in jobs.items():
        files, skipped = resolve_inputs(inputs)
        if skipped:
            log.warning("%s: %d input files are no document format and are skipped: %s", processor.stage,
                        len(skipped), ", ".join(skipped[:10]))  # fmt: skip
        parts.append(StagePart(files, output_dir, inputs, {"skipped_inputs": skipped} if skipped else {}))
    # Inputs are not part of the identity: shards of unchanged inputs are reused when inputs are added.
    make_dofn = _shard_dofn(processor, max_doc_bytes)
    summaries = run_file_stages(parts, processor.stage, config, make_dofn, beam_args, workers, after_shards)
    return dict(zip(jobs, summaries))


def run_file_stage(
    files: list[str],
    output_dir: str,
    stage: str,
    config: dict,
    make_dofn: Callable[[ShardStage], object],
    beam_args: Sequence[str] | None = None,
    workers: int | None = None,
    extra: dict | None = None,
    patterns: str | Sequence[str] = (),
) -> dict:
    """``Create(files) | Reshuffle | ParDo(make_dofn(stage))``: one output shard per input file, committed shards
    resumed, in a ``ShardStage`` of ``output_dir``.

    The DoFn writes and commits each file's shard (``ShardStage.file_shard``); ``config`` is the stage's identity;
    ``patterns`` (the globs/folders the files came from) are checked, with the files, against the output.
    """
    part = StagePart(files, output_dir, patterns, dict(extra or {}))
    return run_file_stages([part], stage, config, make_dofn, beam_args, workers)[0]


@dataclass
class StagePart:
    """One output folder of a (possibly multi-folder) file stage: its input files, the globs/folders they came
    from (checked against the output) and extra summary fields."""

    files: list[str]
    output_dir: str
    patterns: str | Sequence[str] = ()
    extra: dict = field(default_factory=dict)


def run_file_stages(
    parts: Sequence[StagePart],
    stage: str,
    config: dict,
    make_dofn: Callable[[ShardStage], object],
    beam_args: Sequence[str] | None = None,
    workers: int | None = None,
    after_shards: Callable[[str], dict] | None = None,
) -> list[dict]:
    """``run_file_stage`` for several output folders in one Beam job: ``Create((part, file)) | Reshuffle |
    Partition`` and one ``ParDo(make_dofn(stage of that part))`` per part. Every folder is locked, resumed and
    finished on its own; ``after_shards(output_dir)`` adds to a folder's summary once its shards are committed.
    Returns the summaries in the order of ``parts``."""
    import apache_beam as beam

    with ExitStack() as stack:
        stages, keys = [], []
        for part in parts:
            shard_stage = stack.enter_context(ShardStage(part.output_dir, config, [part.patterns, *part.files]))
            keys.append(sorted({shard_key(f) for f in part.files}))
            shard_stage.keep_only(keys[-1])
            stages.append(shard_stage)
        elements = [(i, f) for i, part in enumerate(parts) for f in part.files]

        def build(p):
            spread = p | "Shards" >> beam.Create(elements) | "Spread" >> beam.Reshuffle()
            branches = spread | "ByFolder" >> beam.Partition(lambda element, n: element[0], len(parts))
            for i, (branch, shard_stage) in enumerate(zip(branches, stages)):
                label = "Process" if len(parts) == 1 else f"Process{i}"
                (
                    branch
                    | f"{label}Files" >> beam.Map(lambda element: element[1])
                    | label >> beam.ParDo(make_dofn(shard_stage))
                )

        beam_counters = run_pipeline(build, beam_args, workers)
        summaries = []
        for part, shard_stage, part_keys in zip(parts, stages, keys):
            extra = dict(part.extra)
            if after_shards is not None:
                extra.update(after_shards(part.output_dir))
            fields = {"stage": stage, "output": part.output_dir, "shards": len(part_keys), **extra}
            summaries.append(shard_stage.finish(part_keys, beam_counters=beam_counters, **fields))
        return summaries


def stage_arg_parser(description: str, settings: type[Settings] | None = None) -> argparse.ArgumentParser:
    """The run options every shard stage takes (input, output, workers), then ``settings``'s fields, generated
    by ``pipelines.settings.settings_parser``; ``parse_stage_args`` validates them into ``args.settings``."""
    parser = ArgumentParser(description=description)
    parser.add_argument(
        "--input",
        required=True,
        help="glob(s), comma-separated, of .parquet/.jsonl[.gz]/.warc[.gz] files, or a stage output folder",
    )
    parser.add_argument("--output", required=True, help="output folder or fsspec URI (s3://..., gs://...)")
    parser.add_argument(
        "--workers", type=bounded(int, 1), default=None, help="local worker processes (default: all cores)"
    )
    if settings is not None:
        settings_parser(settings, parser=parser)
    return parser


def parse_stage_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> tuple[argparse.Namespace, list]:
    """The stage's own options, and the rest as Beam pipeline options; a flag that is neither is an error. With
    settings (``stage_arg_parser(..., settings=cls)``), ``args.settings`` is the validated ``cls``."""
    args, rest = parser.parse_known_args(argv)
    if rest:
        from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

        beam_parser = _BeamArgumentParser(allow_abbrev=False)
        classes = {str(cls): cls for cls in PipelineOptions.__subclasses__()}  # as Beam's get_all_options does
        for cls in classes.values():
            cls._add_argparse_args(beam_parser)
        _, unknown = beam_parser.parse_known_args(rest)
        if unknown:
            parser.error(
                f"unrecognized arguments: {' '.join(unknown)} (neither an option of this command, see --help, "
                "nor a Beam pipeline option)"
            )
    if getattr(args, "settings_class", None) is not None:
        args.settings = settings_from_args(parser, args)
    return args, rest


def cli(main) -> None:
    """Run a stage's ``main`` and turn a user mistake (bad path, format, config, offline source) into one line.

    Under ``python -m pipelines.<stage>`` the stage module is ``__main__``, and what its DoFns pickle by reference
    (an ``lru_cache`` function, a class) would name ``__main__``, which a worker process (``--workers N``, a
    worker pool, Flink/Spark) cannot import: ``main`` is taken from the module imported by its real name.
    """
    if getattr(main, "__module__", None) == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        if spec is not None and spec.name != "__main__":
            main = getattr(importlib.import_module(spec.name), main.__name__)
    try:
        main(sys.argv[1:])
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        sys.exit(f"error: {e}")


def print_summary(summary: dict) -> None:
    shown = {k: v for k, v in summary.items() if k != "beam_counters"}
    print(json.dumps(shown, indent=1, ensure_ascii=False))
