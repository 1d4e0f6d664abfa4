"""Metadata tables (assets/metadata.py): typed, sortable columns instead of markdown."""

import dagster as dg
import pytest
from dagster._serdes import deserialize_value, serialize_value

from assets.metadata import column, counts_table, rows_table, table_rows


def test_counts_table_orders_by_count_with_typed_columns_and_shares():
    table = counts_table({"de": 1, "en": 6, "zh": 3}, "language", "documents")
    assert isinstance(table, dg.TableMetadataValue)
    assert [(c.name, c.type) for c in table.schema.columns] == [
        ("language", "string"),
        ("documents", "int"),
        ("share", "float"),
    ]
    assert table_rows(table) == [
        {"language": "en", "documents": 6, "share": 0.6},
        {"language": "zh", "documents": 3, "share": 0.3},
        {"language": "de", "documents": 1, "share": 0.1},
    ]


def test_counts_table_limit_keeps_shares_of_the_whole_and_float_counts():
    table = counts_table({"a": 2.5, "b": 1.5, "c": 1.0}, "bucket", "tokens", limit=2)
    assert column(table, "bucket") == ["a", "b"]
    assert column(table, "share") == [0.5, 0.3]
    assert table.schema.columns[1].type == "float"
    assert table_rows(counts_table({}, "reason", "documents")) == []


def test_rows_table_coerces_cells_and_leaves_missing_ones_empty():
    rows = [
        {"name": "x", "n": 3.0, "loss": 1, "capped": 0, "weights": {"web": 0.5, "code": 2}},
        {"name": "y", "n": "4", "loss": None},
    ]
    columns = [("name", "string"), ("n", "int"), ("loss", "float", "mean"), ("capped", "bool"), ("weights", "string")]
    table = rows_table(rows, columns)
    assert table.schema.columns[2].description == "mean"
    first, second = table_rows(table)
    assert first == {"name": "x", "n": 3, "loss": 1.0, "capped": False, "weights": "web 0.5, code 2"}
    assert isinstance(first["n"], int) and isinstance(first["loss"], float)
    assert second == {"name": "y", "n": 4, "loss": None, "capped": None, "weights": None}
    assert len(table_rows(rows_table(iter(rows), columns, limit=1))) == 1


def test_rows_table_rejects_an_unknown_column_type():
    with pytest.raises(ValueError, match="type must be one of"):
        rows_table([], [("name", "text")])


def test_tables_survive_dagster_serialization():
    # Materialization metadata is stored serialized: a table must round-trip with its schema and types.
    table = counts_table({"en": 2, "de": 1}, "language", "documents")
    back = deserialize_value(serialize_value(table), dg.TableMetadataValue)
    assert table_rows(back) == table_rows(table) and back.schema == table.schema
