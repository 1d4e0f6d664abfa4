"""Crawl dumps as Dagster partitions: each top-level folder of <data_root>/crawl (or a file put there directly) is
a dynamic partition of the ``crawl_dump`` partitions definition.

Ingest, language ID and quality filtering run per dump (into ``curated/<stage>/<dump>``), so a new dump is
curated alone and a backfill of several dumps runs as one Beam job per stage (single-run backfill policy); dedup
and everything after it read every dump. The new-crawl-files sensor adds a partition per new dump, the daily
schedule adds any it missed. From the command line (what ``make demo`` does before materializing):

    python -m dagster_project.crawl_partitions [--data-root DIR]

adds a partition for every dump under <data_root>/crawl to the instance at $DAGSTER_HOME and prints the range
``first...last`` of every partition, for ``dagster asset materialize --partition-range``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import dagster as dg

from dagster_project.resources import DATA_ROOT_ENV, DEFAULT_DATA_ROOT, CurationResource

CRAWL_DUMPS = dg.DynamicPartitionsDefinition(name="crawl_dump")
# Dagster refuses these in a partition key; a dump named with one is skipped with a warning.
_INVALID_IN_KEY = ("...", "\a", "\b", "\f", "\n", "\r", "\t", "\v", "\0")


def crawl_dumps(curation: CurationResource) -> dict[str, str] | None:
    """Each top-level entry of <data_root>/crawl (a crawl dump's folder, or a file put there directly) with a
    fingerprint of the names, sizes and modification times of its files; None when the folder does not exist.
    Hidden entries (``.name``) and names Dagster cannot use as a partition key are left out."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(curation.crawl_dir())
    if not fs.exists(path):
        return None
    root = path.rstrip("/") + "/"
    files: dict[str, list] = {}
    for p, info in fs.find(path, detail=True).items():
        relative = p[len(root) :] if p.startswith(root) else p
        entry = (relative, str(info.get("size")), str(info.get("mtime") or info.get("LastModified")))
        files.setdefault(relative.split("/", 1)[0], []).append(entry)
    dumps = {}
    for dump, entries in files.items():
        if dump.startswith(".") or any(bad in dump for bad in _INVALID_IN_KEY):
            if not dump.startswith("."):
                dg.get_dagster_logger().warning(f"crawl/{dump!r} is not usable as a partition name; rename it")
            continue
        dumps[dump] = hashlib.sha1(json.dumps(sorted(entries)).encode()).hexdigest()
    return dumps


def sync_partitions(instance: dg.DagsterInstance, dumps: dict[str, str] | list[str]) -> tuple[list[str], list[str]]:
    """Make the instance's ``crawl_dump`` partitions the dumps on disk: add the new ones, delete the ones whose
    folder is gone (their curated folders stay on disk; dedup no longer reads them). Returns (added, removed)."""
    known = set(instance.get_dynamic_partitions(CRAWL_DUMPS.name))
    added = sorted(set(dumps) - known)
    removed = sorted(known - set(dumps))
    if added:
        instance.add_dynamic_partitions(CRAWL_DUMPS.name, added)
    for dump in removed:
        instance.delete_dynamic_partition(CRAWL_DUMPS.name, dump)
    return added, removed


def partition_range(instance: dg.DagsterInstance) -> str | None:
    """``first...last`` over every ``crawl_dump`` partition (in the order they were added); None when there is none."""
    keys = instance.get_dynamic_partitions(CRAWL_DUMPS.name)
    return f"{keys[0]}...{keys[-1]}" if keys else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get(DATA_ROOT_ENV, DEFAULT_DATA_ROOT))
    args = parser.parse_args(argv)
    dumps = crawl_dumps(CurationResource(data_root=args.data_root))
    if not dumps:
        print(f"error: no crawl dumps under {args.data_root}/crawl", file=sys.stderr)
        return 1
    with dg.DagsterInstance.get() as instance:
        added, removed = sync_partitions(instance, dumps)
        for dump in added:
            print(f"added partition {dump}", file=sys.stderr)
        for dump in removed:
            print(f"removed partition {dump} (its crawl folder is gone)", file=sys.stderr)
        print(partition_range(instance))
    return 0


if __name__ == "__main__":
    sys.exit(main())
