"""Schema changes read from the commit log: system_schema changes applied to the registry in log order.

The changes below are what the reader decodes from the mutations Cassandra writes for each DDL statement
(``SchemaKeyspace.java``: ``addTableToSchemaMutation`` rewrites the tables row after deleting it at
``timestamp - 1``; a DROP deletes rows; DROP KEYSPACE deletes partitions). Each is checked against the
change batch shape before it is applied.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from cdc_assets.cassandra_schema.cql_file import parse_cql
from cdc_assets.cassandra_schema.log_changes import SchemaTracker
from cdc_assets.cassandra_schema.system_tables import SYSTEM_SCHEMA_TABLES
from cdc_assets.cassandra_schema.tables import SchemaRegistry
from cdc_assets.change_batch import build_change_batch
from cdc_assets.commitlog.reader import CommitLogReader

SCHEMA = {t.name: t for t in SYSTEM_SCHEMA_TABLES}
SEGMENT_4_0_11 = Path("/work/shared/fixtures/commitlog/4.0.11/CommitLog-7-1699285478684.log")
SEGMENT_3_0_29 = Path("/work/shared/fixtures/commitlog/3.0.29/CommitLog-6-1699279786262.log")
FIXTURES = Path(__file__).parent / "fixtures"
ORDERS_ID = uuid.UUID("8e0c3b50-7cbb-11ee-9858-c9aa1eb53e69")
T0 = 1_699_285_000_000_000


def cell(value, writetime):
    return {"value": value, "writetime": writetime, "ttl": None, "expires_at": None, "deleted": False}


def row(keyspace, clustering, writetime, cells, *, delete_previous=False):
    change = {
        "kind": "row",
        "key": {"keyspace_name": keyspace},
        "clustering": clustering,
        "row_writetime": writetime,
        "cells": {name: cell(value, writetime) for name, value in cells.items()},
    }
    if delete_previous:
        change["deletion_writetime"] = writetime - 1
    return change


def row_deletion(keyspace, clustering, writetime):
    return {
        "kind": "row",
        "key": {"keyspace_name": keyspace},
        "clustering": clustering,
        "deletion_writetime": writetime,
    }


def tables_row(keyspace, name, table_id, writetime, cdc=True):
    cells = {"id": str(table_id), "flags": ["compound"], "cdc": cdc, "comment": "", "gc_grace_seconds": 864000}
    return row(keyspace, {"table_name": name}, writetime, cells, delete_previous=True)


def column(keyspace, table, name, kind, position, type_, writetime, order="none"):
    cells = {
        "column_name_bytes": name.encode(),
        "kind": kind,
        "position": position,
        "clustering_order": order,
        "type": type_,
    }
    return row(keyspace, {"table_name": table, "column_name": name}, writetime, cells)


def dropped(keyspace, table, name, type_, dropped_ms, writetime):
    cells = {"dropped_time": dropped_ms, "kind": "regular", "type": type_}
    return row(keyspace, {"table_name": table, "column_name": name}, writetime, cells)


def type_row(keyspace, name, fields, writetime):
    cells = {"field_names": [f for f, _ in fields], "field_types": [t for _, t in fields]}
    return row(keyspace, {"type_name": name}, writetime, cells)


def apply(tracker, schema_table, *changes):
    build_change_batch(SCHEMA[schema_table], [{"segment_id": 1, "position": 0, **c} for c in changes])
    return tracker.apply(SCHEMA[schema_table], list(changes))


def create_orders(tracker, writetime=T0, table_id=ORDERS_ID, *, columns_first=False):
    steps = [
        ("tables", [tables_row("shop", "orders", table_id, writetime)]),
        (
            "columns",
            [
                column("shop", "orders", "at", "clustering", 0, "timestamp", writetime, "desc"),
                column("shop", "orders", "customer", "partition_key", 0, "uuid", writetime),
                column("shop", "orders", "total", "regular", -1, "decimal", writetime),
            ],
        ),
    ]
    messages = []
    for schema_table, changes in reversed(steps) if columns_first else steps:
        messages += apply(tracker, schema_table, *changes)
    return messages


def test_create_table_registers_the_table_under_its_id():
    tracker = SchemaTracker(SchemaRegistry())
    messages = create_orders(tracker)
    table = tracker.registry.get(ORDERS_ID)
    assert table.qualified_name == "shop.orders"
    assert [c.name for c in table.partition_key] == ["customer"]
    assert [(c.name, c.descending) for c in table.clustering] == [("at", True)]
    assert [(c.name, c.type.cql()) for c in table.regulars] == [("total", "decimal")]
    assert table.cdc
    assert messages == [
        f"created table shop.orders (id {ORDERS_ID}, cdc on): at timestamp, customer uuid, total decimal"
    ]


def test_create_table_works_whichever_of_its_tables_and_columns_rows_comes_first():
    in_order, reversed_order = SchemaTracker(SchemaRegistry()), SchemaTracker(SchemaRegistry())
    create_orders(in_order)
    create_orders(reversed_order, columns_first=True)
    assert reversed_order.registry.get(ORDERS_ID) == in_order.registry.get(ORDERS_ID)


def test_add_column_keeps_the_columns_the_registry_already_knew():
    registry = parse_cql(
        f"CREATE TABLE shop.orders (customer uuid, at timestamp, total decimal, PRIMARY KEY (customer, at)) "
        f"WITH ID = {ORDERS_ID};"
    )
    tracker = SchemaTracker(registry)
    messages = apply(tracker, "tables", tables_row("shop", "orders", ORDERS_ID, T0 + 10))
    messages += apply(tracker, "columns", column("shop", "orders", "note", "regular", -1, "text", T0 + 10))
    table = registry.get(ORDERS_ID)
    assert [c.name for c in table.columns] == ["customer", "at", "total", "note"]
    assert messages == ["shop.orders: added regular column note text"]


def test_a_key_column_from_the_log_replaces_the_one_a_schema_file_named_differently():
    registry = parse_cql(
        f"CREATE TABLE shop.orders (customer uuid, placed timestamp, total decimal, PRIMARY KEY (customer, placed)) "
        f"WITH ID = {ORDERS_ID};"
    )
    tracker = SchemaTracker(registry)
    create_orders(tracker)
    table = registry.get(ORDERS_ID)
    assert [c.name for c in table.primary_key] == ["customer", "at"]
    assert [c.name for c in table.regulars] == ["total"]


def test_drop_column_removes_it_and_records_when_it_was_dropped():
    tracker = SchemaTracker(SchemaRegistry())
    create_orders(tracker)
    apply(tracker, "tables", tables_row("shop", "orders", ORDERS_ID, T0 + 20))
    apply(tracker, "columns", row_deletion("shop", {"table_name": "orders", "column_name": "total"}, T0 + 20))
    messages = apply(tracker, "dropped_columns", dropped("shop", "orders", "total", "decimal", 1699285000123, T0 + 20))
    table = tracker.registry.get(ORDERS_ID)
    assert table.column("total") is None
    total = table.dropped_column("total")
    assert (total.type.cql(), total.dropped_at, total.kind) == ("decimal", 1699285000123000, "regular")
    assert messages == ["shop.orders: column total dropped at 2023-11-06T15:36:40+00:00"]


def test_an_older_mutation_read_again_does_not_undo_a_newer_change():
    tracker = SchemaTracker(SchemaRegistry())
    create_orders(tracker)
    apply(tracker, "columns", column("shop", "orders", "note", "regular", -1, "text", T0 + 10))
    apply(tracker, "columns", row_deletion("shop", {"table_name": "orders", "column_name": "total"}, T0 + 20))
    assert create_orders(tracker) == []
    assert [c.name for c in tracker.registry.get(ORDERS_ID).regulars] == ["note"]


def test_drop_table_removes_it_from_the_registry():
    tracker = SchemaTracker(SchemaRegistry())
    create_orders(tracker)
    messages = apply(tracker, "tables", row_deletion("shop", {"table_name": "orders"}, T0 + 30))
    messages += apply(
        tracker,
        "columns",
        *(
            row_deletion("shop", {"table_name": "orders", "column_name": n}, T0 + 30)
            for n in ("at", "customer", "total")
        ),
    )
    assert tracker.registry.get(ORDERS_ID) is None
    assert messages == [f"dropped table shop.orders (id {ORDERS_ID})"]


def test_a_table_created_again_gets_its_new_id_and_the_old_one_is_forgotten():
    tracker = SchemaTracker(SchemaRegistry())
    create_orders(tracker)
    apply(tracker, "tables", row_deletion("shop", {"table_name": "orders"}, T0 + 30))
    new_id = uuid.UUID("9f0c3b50-7cbb-11ee-9858-c9aa1eb53e69")
    create_orders(tracker, T0 + 40, new_id)
    assert tracker.registry.get(ORDERS_ID) is None
    assert tracker.registry.by_name("shop", "orders").id == new_id


def test_drop_keyspace_removes_every_table_known_in_it():
    registry = parse_cql(
        "CREATE TABLE shop.carts (k int PRIMARY KEY) WITH ID = 11111111-0000-1000-8000-000000000001;"
        "CREATE TABLE other.t (k int PRIMARY KEY) WITH ID = 11111111-0000-1000-8000-000000000002;"
    )
    tracker = SchemaTracker(registry)
    create_orders(tracker)
    partition_deletion = {"kind": "partition_deletion", "key": {"keyspace_name": "shop"}, "deletion_writetime": T0 + 50}
    for schema_table in ("columns", "dropped_columns", "types", "tables"):
        apply(tracker, schema_table, partition_deletion)
    assert [t.qualified_name for t in registry] == ["other.t"]


def test_a_user_type_created_with_its_table_resolves_in_either_order():
    tracker = SchemaTracker(SchemaRegistry())
    apply(tracker, "tables", tables_row("shop", "people", ORDERS_ID, T0))
    apply(
        tracker,
        "columns",
        column("shop", "people", "id", "partition_key", 0, "int", T0),
        column("shop", "people", "home", "regular", -1, "frozen<address>", T0),
        column("shop", "people", "work", "regular", -1, "address", T0),
    )
    assert tracker.registry.get(ORDERS_ID) is None
    messages = apply(tracker, "types", type_row("shop", "address", [("street", "text"), ("zip", "int")], T0))
    table = tracker.registry.get(ORDERS_ID)
    assert table.column("home").type.frozen
    assert table.column("work").type.is_complex
    assert table.column("work").type.field_names == ("street", "zip")
    assert messages[0] == "created type shop.address (street text, zip int)"


def test_alter_type_add_field_reaches_the_tables_using_it():
    registry = parse_cql(
        "CREATE TYPE shop.address (street text);"
        f"CREATE TABLE shop.people (id int PRIMARY KEY, home frozen<address>, past list<frozen<address>>) "
        f"WITH ID = {ORDERS_ID};"
    )
    tracker = SchemaTracker(registry)
    messages = apply(tracker, "types", type_row("shop", "address", [("street", "text"), ("zip", "int")], T0))
    table = registry.get(ORDERS_ID)
    assert table.column("home").type.field_names == ("street", "zip")
    assert table.column("past").type.args[0].field_names == ("street", "zip")
    assert messages[0] == "altered type shop.address (street text, zip int)"


def test_schema_rows_of_cassandras_own_keyspaces_are_ignored():
    registry = SchemaRegistry(SYSTEM_SCHEMA_TABLES)
    tracker = SchemaTracker(registry)
    # Every node start deletes and rewrites the system_schema rows of the system keyspaces.
    deletion = {"kind": "partition_deletion", "key": {"keyspace_name": "system_schema"}, "deletion_writetime": T0}
    assert apply(tracker, "tables", deletion) == []
    assert apply(tracker, "columns", deletion) == []
    assert set(registry) == set(SYSTEM_SCHEMA_TABLES)


def test_system_schema_tables_that_do_not_describe_tables_are_ignored():
    tracker = SchemaTracker(SchemaRegistry())
    keyspace_row = row("shop", {}, T0, {"durable_writes": True, "replication": [("class", "SimpleStrategy")]})
    assert apply(tracker, "keyspaces", keyspace_row) == []
    assert len(tracker.registry) == 0


def test_the_4_0_11_segment_teaches_an_empty_registry_its_table_from_the_log():
    registry = SchemaRegistry()
    result = CommitLogReader(registry).read_segment(SEGMENT_4_0_11)
    table = registry.get(uuid.UUID("657e5210-7cbb-11ee-9858-c9aa1eb53e69"))
    assert table.qualified_name == "Keyspace1.Standard1"
    assert [(c.name, c.type.cql()) for c in table.primary_key] == [("key", "ascii"), ("col", "ascii")]
    assert any("created table Keyspace1.Standard1" in message for message in result.stats.schema_changes)
    assert result.stats.dead_letters == []


def test_the_3_0_29_segment_redefines_standard1_as_its_node_had_created_it():
    # That node's SchemaLoader made Standard1 (key ascii, name ascii, val ascii, val0 ascii); the oracle's
    # schema (clustering "col", blob values) is only what Cassandra's upgrade test registers for its replay.
    registry = parse_cql((FIXTURES / "standard1-3.0.29.cql").read_text())
    CommitLogReader(registry).read_segment(SEGMENT_3_0_29)
    table = registry.get(uuid.UUID("241bcee0-7cae-11ee-8a02-094014504250"))
    assert [(c.name, c.type.cql()) for c in table.primary_key] == [("key", "ascii"), ("name", "ascii")]
    assert [(c.name, c.type.cql()) for c in table.regulars] == [("val", "ascii"), ("val0", "ascii")]
