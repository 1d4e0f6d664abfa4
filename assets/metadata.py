"""Metadata tables the Dagster UI can sort: count dicts and row lists as ``dg.MetadataValue.table``.

Every asset's tables go through here, so a column has one type everywhere (``int`` counts, ``float`` shares
as fractions, ``string`` names) and the UI sorts numbers as numbers rather than the text of a markdown table.
Light on purpose: imports only dagster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import islice

import dagster as dg

# (name, type) or (name, type, description); type is one of TYPES.
Column = tuple[str, str] | tuple[str, str, str]
TYPES = ("string", "int", "float", "bool")
DEFAULT_LIMIT = 100


def _column(spec: Column) -> dg.TableColumn:
    name, kind, *rest = spec
    if kind not in TYPES:
        raise ValueError(f"column {name!r}: type must be one of {TYPES}, got {kind!r}")
    return dg.TableColumn(name, kind, description=rest[0] if rest else None)


def _cell(value, kind: str):
    """A value the table record accepts, of the column's type (None stays None: an empty cell)."""
    if value is None:
        return None
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "bool":
        return bool(value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def rows_table(rows: Iterable[Mapping], columns: Sequence[Column], limit: int = DEFAULT_LIMIT) -> dg.TableMetadataValue:
    """A table of ``rows`` (dicts keyed by column name; missing keys are empty cells), first ``limit`` rows."""
    specs = [(c[0], c[1]) for c in columns]
    schema = dg.TableSchema(columns=[_column(c) for c in columns])
    records = [
        dg.TableRecord({name: _cell(row.get(name), kind) for name, kind in specs}) for row in islice(rows, limit)
    ]
    return dg.MetadataValue.table(records, schema=schema)


def counts_table(
    counts: Mapping[str, int | float], key: str, value: str, limit: int = DEFAULT_LIMIT
) -> dg.TableMetadataValue:
    """``key | value | share`` rows, largest count first (the share is of the total over every key, kept or
    cut by ``limit``). Integer counts make an ``int`` column, anything else ``float``."""
    total = sum(counts.values())
    kind = "int" if all(isinstance(v, int) for v in counts.values()) else "float"
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
    rows = [{key: str(k), value: v, "share": round(v / total, 4) if total else 0.0} for k, v in ordered]
    return rows_table(rows, [(key, "string"), (value, kind), ("share", "float", "of the total")], limit=limit)


def table_rows(value) -> list[dict]:
    """The rows of a table metadata value as dicts (for tests and for code that reads materializations)."""
    table = getattr(value, "value", value)
    return [dict(record.data) for record in table.records]


def column(value, name: str) -> list:
    """One column of a table metadata value, in row order."""
    return [row.get(name) for row in table_rows(value)]
