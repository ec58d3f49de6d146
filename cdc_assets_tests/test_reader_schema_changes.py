"""Schema changes logged in the segment itself are applied in log order: each mutation is decoded with the
schema it was written under, and the change batch carries the newest columns."""

from __future__ import annotations

from pathlib import Path

from cdc_assets.cassandra_schema.cql_file import parse_cql
from cdc_assets.cassandra_schema.system_tables import SYSTEM_SCHEMA_TABLES
from cdc_assets.commitlog.generator.encoding import encode_mutation
from cdc_assets.commitlog.generator.segment_writer import SegmentWriter
from cdc_assets.commitlog.reader import CommitLogReader

SCHEMA = "CREATE TABLE shop.items (id int PRIMARY KEY, name text) WITH ID = 11111111-2222-1333-8444-555555555555;"
COLUMNS = next(table for table in SYSTEM_SCHEMA_TABLES if table.name == "columns")
DROPPED = next(table for table in SYSTEM_SCHEMA_TABLES if table.name == "dropped_columns")


def _cell(value: object, writetime: int) -> dict:
    return {"value": value, "writetime": writetime, "ttl": None, "expires_at": None, "deleted": False}


def _write(table, item_id: int, column: str, value: object, writetime: int) -> bytes:
    change = {"kind": "row", "key": {"id": item_id}, "cells": {column: _cell(value, writetime)}}
    return encode_mutation([(table, [change])], 7)


def _add_column(name: str, cql_type: str, writetime: int) -> bytes:
    """What ``ALTER TABLE shop.items ADD <name> <type>`` logs: a system_schema.columns row."""
    cells = {
        "clustering_order": _cell("none", writetime),
        "column_name_bytes": _cell(name.encode(), writetime),
        "kind": _cell("regular", writetime),
        "position": _cell(-1, writetime),
        "type": _cell(cql_type, writetime),
    }
    change = {
        "kind": "row",
        "key": {"keyspace_name": "shop"},
        "clustering": {"table_name": "items", "column_name": name},
        "cells": cells,
    }
    return encode_mutation([(COLUMNS, [change])], 7)


def test_a_column_added_in_the_log_decodes_the_mutations_after_it(tmp_path: Path) -> None:
    registry = parse_cql(SCHEMA)
    items = registry.by_name("shop", "items")
    with_price = parse_cql(SCHEMA.replace("name text)", "name text, price int)")).by_name("shop", "items")
    writer = SegmentWriter(tmp_path, 1_800_000_000_000, 7)
    writer.append(_write(items, 1, "name", "anvil", 1_700_000_000_000_000))
    writer.append(_add_column("price", "int", 1_700_000_000_000_001))
    writer.append(_write(with_price, 2, "price", 42, 1_700_000_000_000_002))
    writer.close()

    result = CommitLogReader(registry).read_segment(writer.path)

    assert result.stats.dead_letters == []
    assert any("price" in message for message in result.stats.schema_changes)
    rows = result.batches["shop.items"].to_pylist()
    assert [
        (row["id"], row["name"] and row["name"]["value"], row["price"] and row["price"]["value"]) for row in rows
    ] == [
        (1, "anvil", None),
        (2, None, 42),
    ]
    assert [c.name for c in result.tables["shop.items"].regulars] == ["name", "price"]


def test_without_the_logged_change_the_new_column_is_set_aside_not_guessed(tmp_path: Path) -> None:
    registry = parse_cql(SCHEMA)
    with_price = parse_cql(SCHEMA.replace("name text)", "name text, price int)")).by_name("shop", "items")
    writer = SegmentWriter(tmp_path, 1_800_000_000_000, 7)
    position = writer.append(_write(with_price, 2, "price", 42, 1_700_000_000_000_002))
    writer.close()

    result = CommitLogReader(registry).read_segment(writer.path)

    assert result.batches == {}
    [letter] = result.stats.dead_letters
    assert letter.position == position and "price" in letter.reason and letter.table == "shop.items"
