"""system_schema: the hard-coded tables and their ids, and rows of a cluster's system_schema turned into tables."""

from __future__ import annotations

import datetime as dt
import uuid
from collections import namedtuple
from pathlib import Path

import pytest

from cdc_assets.cassandra_schema.driver import load_from_cluster, registry_from_system_rows
from cdc_assets.cassandra_schema.errors import SchemaError
from cdc_assets.cassandra_schema.system_tables import SYSTEM_SCHEMA_TABLES, system_table_id

SEGMENT_4_0_11 = Path("/work/shared/fixtures/commitlog/4.0.11/CommitLog-7-1699285478684.log")
ORDERS_ID = uuid.UUID("5a1b6e10-7cbb-11ee-9858-c9aa1eb53e69")


def test_system_table_ids_are_md5_name_uuids_as_cassandra_computes_them():
    assert system_table_id("system", "local") == uuid.UUID("7ad54392-bcdd-35a6-8417-4e047860b377")


def test_every_system_schema_table_carries_its_name_based_id():
    for table in SYSTEM_SCHEMA_TABLES:
        assert table.keyspace == "system_schema"
        assert table.id == system_table_id("system_schema", table.name)


@pytest.mark.parametrize("name", ["keyspaces", "tables", "columns"])
def test_the_ids_of_the_tables_a_create_table_writes_occur_in_a_real_4_0_11_segment(name):
    # The fixture's segment holds the CREATE TABLE of Keyspace1.Standard1: a mutation of these three tables.
    table = next(t for t in SYSTEM_SCHEMA_TABLES if t.name == name)
    assert table.id.bytes in SEGMENT_4_0_11.read_bytes()


def test_the_system_schema_tables_have_cassandras_primary_keys_and_column_types():
    tables = {t.name: t for t in SYSTEM_SCHEMA_TABLES}
    assert {"keyspaces", "tables", "columns", "dropped_columns", "types"} <= set(tables)

    def key(name):
        table = tables[name]
        return [c.name for c in table.partition_key], [c.name for c in table.clustering]

    assert key("keyspaces") == (["keyspace_name"], [])
    assert key("tables") == (["keyspace_name"], ["table_name"])
    assert key("columns") == (["keyspace_name"], ["table_name", "column_name"])
    assert key("dropped_columns") == (["keyspace_name"], ["table_name", "column_name"])
    assert key("types") == (["keyspace_name"], ["type_name"])
    types = {(t.name, c.name): c.type.cql() for t in SYSTEM_SCHEMA_TABLES for c in t.columns}
    assert types[("tables", "id")] == "uuid"
    assert types[("tables", "cdc")] == "boolean"
    assert types[("tables", "flags")] == "frozen<set<text>>"
    assert types[("columns", "column_name_bytes")] == "blob"
    assert types[("columns", "position")] == "int"
    assert types[("dropped_columns", "dropped_time")] == "timestamp"
    assert types[("types", "field_types")] == "frozen<list<text>>"
    assert not any(t.cdc for t in SYSTEM_SCHEMA_TABLES)


def column_row(table, name, kind, position, type_, order="none"):
    """A system_schema.columns row as cassandra-driver's dict_factory returns it."""
    return {
        "keyspace_name": "shop",
        "table_name": table,
        "column_name": name,
        "clustering_order": order,
        "column_name_bytes": name.encode(),
        "kind": kind,
        "position": position,
        "type": type_,
    }


def shop_rows():
    tables = [{"keyspace_name": "shop", "table_name": "orders", "id": ORDERS_ID, "cdc": True, "flags": {"compound"}}]
    columns = [
        column_row("orders", "at", "clustering", 0, "timestamp", "desc"),
        column_row("orders", "customer", "partition_key", 0, "uuid"),
        column_row("orders", "deliver_to", "regular", -1, "frozen<address>"),
        column_row("orders", "note", "static", -1, "text"),
        column_row("orders", "region", "partition_key", 1, "text"),
        column_row("orders", "Total", "regular", -1, "decimal"),
        column_row("orders", "buyer", "regular", -1, "person"),
    ]
    # person uses address, and comes first: rows may arrive in any order.
    types = [
        {
            "keyspace_name": "shop",
            "type_name": "person",
            "field_names": ["name", "home"],
            "field_types": ["text", "frozen<address>"],
        },
        {
            "keyspace_name": "shop",
            "type_name": "address",
            "field_names": ["street", "zip"],
            "field_types": ["text", "int"],
        },
    ]
    dropped = [
        {
            "keyspace_name": "shop",
            "table_name": "orders",
            "column_name": "coupon",
            "kind": "regular",
            "type": "text",
            "dropped_time": dt.datetime(2023, 11, 6, 15, 44, 40, 123000),
        },
        {
            "keyspace_name": "shop",
            "table_name": "orders",
            "column_name": "gift",
            "kind": "regular",
            "type": "tuple<text, int>",
            "dropped_time": dt.datetime(2023, 11, 6, 15, 44, 41),
        },
    ]
    return tables, columns, types, dropped


def test_system_rows_become_a_table_with_its_key_order_and_clustering_order():
    table = registry_from_system_rows(*shop_rows()).get(ORDERS_ID)
    assert table.qualified_name == "shop.orders"
    assert [c.name for c in table.partition_key] == ["customer", "region"]
    assert [(c.name, c.descending) for c in table.clustering] == [("at", True)]
    assert [c.name for c in table.statics] == ["note"]
    assert [c.name for c in table.regulars] == ["deliver_to", "Total", "buyer"]
    assert table.cdc


def test_system_rows_resolve_user_types_whatever_the_row_order():
    table = registry_from_system_rows(*shop_rows()).get(ORDERS_ID)
    deliver_to = table.column("deliver_to").type
    assert (deliver_to.kind, deliver_to.frozen, deliver_to.field_names) == ("udt", True, ("street", "zip"))
    buyer = table.column("buyer").type
    assert buyer.is_complex
    assert buyer.args[1].field_names == ("street", "zip")


def test_dropped_column_rows_give_the_drop_time_in_microseconds():
    table = registry_from_system_rows(*shop_rows()).get(ORDERS_ID)
    coupon = table.dropped_column("coupon")
    assert coupon.dropped_at == 1699285480123000
    assert coupon.type.cql() == "text"


def test_a_dropped_non_frozen_user_type_stored_as_a_bare_tuple_is_complex():
    gift = registry_from_system_rows(*shop_rows()).get(ORDERS_ID).dropped_column("gift").type
    assert gift.kind == "tuple"
    assert gift.is_complex
    assert gift.field_names == ("f0", "f1")


def test_column_names_come_from_the_name_bytes_mutations_use():
    tables, columns, types, dropped = shop_rows()
    columns[0] = {**columns[0], "column_name": "ignored", "column_name_bytes": "Ät".encode()}
    table = registry_from_system_rows(tables, columns, types, dropped).get(ORDERS_ID)
    assert [c.name for c in table.clustering] == ["Ät"]


def test_named_tuple_rows_as_the_drivers_default_row_factory_makes_them_are_accepted():
    tables, columns, types, dropped = shop_rows()

    def as_named_tuples(rows):
        return [namedtuple("Row", list(row))(**row) for row in rows]

    registry = registry_from_system_rows(*(as_named_tuples(rows) for rows in (tables, columns, types, dropped)))
    assert registry.get(ORDERS_ID).column("Total").type.kind == "decimal"


def test_a_missing_cdc_flag_means_cdc_off():
    tables, columns, types, dropped = shop_rows()
    tables = [{key: value for key, value in tables[0].items() if key != "cdc"}]
    assert not registry_from_system_rows(tables, columns, types, dropped).get(ORDERS_ID).cdc


def test_a_table_row_without_columns_is_an_error_naming_the_table():
    tables, _, types, dropped = shop_rows()
    with pytest.raises(SchemaError, match=r"shop\.orders has no partition key"):
        registry_from_system_rows(tables, [], types, dropped)


def test_a_type_using_a_missing_type_is_an_error_naming_both():
    tables, columns, types, dropped = shop_rows()
    with pytest.raises(SchemaError, match=r"shop\.person: .*'address'"):
        registry_from_system_rows(tables, columns, [t for t in types if t["type_name"] == "person"], dropped)


@pytest.mark.cassandra
def test_loading_every_keyspace_of_a_real_5_0_node_skips_cassandras_own(cassandra_node):
    # system.local's dropped thrift_version has a dropped_time no datetime can hold: its row must not be read.
    session = cassandra_node.session()
    keyspace = f"schema_{uuid.uuid4().hex[:12]}"
    session.execute(
        f"CREATE KEYSPACE {keyspace} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
    )
    session.execute(f"CREATE TABLE {keyspace}.t (k int PRIMARY KEY, v int, gone text) WITH cdc = true")
    session.execute(f"ALTER TABLE {keyspace}.t DROP gone")

    registry = load_from_cluster(session)

    table = registry.by_name(keyspace, "t")
    assert [column.name for column in table.regulars] == ["v"]
    assert [dropped.name for dropped in table.dropped] == ["gone"]
    assert not [t for t in registry if t.keyspace.startswith("system")]
