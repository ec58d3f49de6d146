"""The PostgreSQL destination on a real server: types, view, ties, replays, crashes, evolution, errors."""

from __future__ import annotations

import datetime as dt
import math
import socket
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cdc_assets.cassandra_model import CassandraModel
from cdc_assets.cassandra_schema.tables import Column, DroppedColumn, TableSchema
from cdc_assets.cassandra_schema.types import CqlType, parse_type
from cdc_assets.change_batch import Position, build_change_batch
from cdc_assets.dead_letters import DeadLetterStore
from cdc_assets.destinations.base import PermanentDestinationError, TransientDestinationError
from cdc_assets.destinations.postgres.destination import PostgresDestination

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
NOW_S = int(NOW.timestamp())
ADDRESS = CqlType("udt", (parse_type("int"), parse_type("text")), name="address", field_names=("number", "street"))


def cell(value: Any, writetime: int = 1, *, expires_at: int | None = None, deleted: bool = False) -> dict[str, Any]:
    ttl = None if expires_at is None else 60
    return {"value": value, "writetime": writetime, "ttl": ttl, "expires_at": expires_at, "deleted": deleted}


def elements(*cells: tuple[Any, Any], deletion: int | None = None, writetime: int = 1) -> dict[str, Any]:
    """A complex column's change: (path, value) elements; value None for a set element."""
    made = []
    for path, value in cells:
        element = {"path": path, "writetime": writetime, "ttl": None, "expires_at": None, "deleted": False}
        if value is not None:
            element["value"] = value
        made.append(element)
    return {"deletion": deletion, "cells": made}


def table_of(name: str, *columns: tuple[str, str, str], keyspace: str = "ks", **types: CqlType) -> TableSchema:
    """A table from (name, CQL type, kind) triples; ``types`` names CqlTypes the parser cannot build."""
    made, positions = [], {"partition_key": 0, "clustering": 0}
    for column_name, cql, kind in columns:
        position = positions.get(kind, -1)
        if kind in positions:
            positions[kind] += 1
        cql_type = types[cql] if cql in types else parse_type(cql)
        made.append(Column(column_name, cql_type, kind, position))  # type: ignore[arg-type]
    return TableSchema(keyspace, name, uuid.uuid5(uuid.NAMESPACE_DNS, name), tuple(made))


def row(key: dict[str, Any], clustering: dict[str, Any] | None = None, position: int = 0, **fields: Any) -> dict:
    return {"segment_id": 1, "position": position, "kind": "row", "key": key, "clustering": clustering, **fields}


@pytest.fixture
def postgres(pg_dsn: str, tmp_path: Path) -> Any:
    destination = PostgresDestination(pg_dsn, dead_letters=DeadLetterStore(tmp_path / "dead.jsonl"))
    yield destination
    destination.close()


def query(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as connection:
        return connection.execute(sql, params or None).fetchall()


# --------------------------------------------------------------------------------------------------
# Types

EVERY_TYPE = table_of(
    "every_type",
    ("id", "int", "partition_key"),
    ("a_ascii", "ascii", "regular"),
    ("a_text", "text", "regular"),
    ("a_blob", "blob", "regular"),
    ("a_boolean", "boolean", "regular"),
    ("a_tinyint", "tinyint", "regular"),
    ("a_smallint", "smallint", "regular"),
    ("a_int", "int", "regular"),
    ("a_bigint", "bigint", "regular"),
    ("a_varint", "varint", "regular"),
    ("a_decimal", "decimal", "regular"),
    ("a_float", "float", "regular"),
    ("a_double", "double", "regular"),
    ("a_timestamp", "timestamp", "regular"),
    ("a_date", "date", "regular"),
    ("a_time", "time", "regular"),
    ("a_duration", "duration", "regular"),
    ("a_uuid", "uuid", "regular"),
    ("a_timeuuid", "timeuuid", "regular"),
    ("a_inet", "inet", "regular"),
    ("a_list", "list<int>", "regular"),
    ("a_set", "set<text>", "regular"),
    ("a_map", "map<int, text>", "regular"),
    ("a_udt", "address", "regular"),
    ("f_list", "frozen<list<frozen<set<int>>>>", "regular"),
    ("f_map", "frozen<map<timestamp, blob>>", "regular"),
    ("f_udt", "frozen_address", "regular"),
    ("a_tuple", "tuple<int, text, date>", "regular"),
    ("a_vector", "vector<float, 3>", "regular"),
    ("a_times", "list<timestamp>", "regular"),
    ("a_blobs", "set<blob>", "regular"),
    ("a_durations", "list<duration>", "regular"),
    address=ADDRESS,
    frozen_address=ADDRESS.freeze(),
)
TIMEUUID = "d2177dd0-eaa2-11de-a572-001b779c76e3"
LIST_PATH = "00000000-0000-1000-8000-000000000001"
LIST_PATH_2 = "00000001-0000-1000-8000-000000000001"
EVERY_VALUE = {
    "a_ascii": cell("plain"),
    "a_text": cell('Grüße, "quoted", comma\nnewline'),
    "a_blob": cell(b"\x00\x01\xfe\xff"),
    "a_boolean": cell(True),
    "a_tinyint": cell(-128),
    "a_smallint": cell(32767),
    "a_int": cell(-2147483648),
    "a_bigint": cell(9223372036854775807),
    "a_varint": cell("123456789012345678901234567890"),
    "a_decimal": cell("-12345678901234567890.000000000001"),
    "a_float": cell(1.1),
    "a_double": cell(-2.5e-300),
    "a_timestamp": cell(1_700_000_000_123),
    "a_date": cell(-719162),
    "a_time": cell(86_399_999_999_000),
    "a_duration": cell((14, -3, 5_000)),
    "a_uuid": cell("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    "a_timeuuid": cell(TIMEUUID),
    "a_inet": cell("2001:db8::1"),
    "a_list": elements((LIST_PATH, 42)),
    "a_set": elements(("b", None), ("a", None)),
    "a_map": elements((2, "two"), (1, "one")),
    "a_udt": {"deletion": None, "cells": {"number": cell(7), "street": None}},
    "f_list": cell([[3, 1], [], [2]]),
    "f_map": cell([(1_000, b"\x01"), (0, b"")]),
    "f_udt": cell({"number": None, "street": "elm"}),
    "a_tuple": cell({"f0": 1, "f1": "x", "f2": 19_000}),
    "a_vector": cell([0.5, -1.0, 2.25]),
    "a_times": elements((LIST_PATH, 0)),
    "a_blobs": elements((b"\xff", None), (b"\x00", None)),
    "a_durations": elements((LIST_PATH, (0, 1, 2_000))),
}
EVERY_EXPECTED = {
    "id": 1,
    "a_ascii": "plain",
    "a_text": 'Grüße, "quoted", comma\nnewline',
    "a_blob": b"\x00\x01\xfe\xff",
    "a_boolean": True,
    "a_tinyint": -128,
    "a_smallint": 32767,
    "a_int": -2147483648,
    "a_bigint": 9223372036854775807,
    "a_varint": 123456789012345678901234567890,
    "a_decimal": Decimal("-12345678901234567890.000000000001"),
    "a_float": 1.100000023841858,
    "a_double": -2.5e-300,
    "a_timestamp": 1_700_000_000_123,
    "a_date": -719162,
    "a_time": 86_399_999_999_000,
    "a_duration": (14, -3, 5_000),
    "a_uuid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "a_timeuuid": TIMEUUID,
    "a_inet": "2001:db8::1",
    "a_list": [42],
    "a_set": ["a", "b"],
    "a_map": [(1, "one"), (2, "two")],
    "a_udt": {"number": 7, "street": None},
    "f_list": [[1, 3], [], [2]],
    "f_map": [(0, b""), (1_000, b"\x01")],
    "f_udt": {"number": None, "street": "elm"},
    "a_tuple": {"f0": 1, "f1": "x", "f2": 19_000},
    "a_vector": [0.5, -1.0, 2.25],
    "a_times": [0],
    "a_blobs": [b"\x00", b"\xff"],
    "a_durations": [(0, 1, 2_000)],
}


def test_every_cql_type_round_trips_through_the_view(postgres: PostgresDestination):
    postgres.load(EVERY_TYPE, build_change_batch(EVERY_TYPE, [row({"id": 1}, cells=EVERY_VALUE)]), load_id="1")
    assert postgres.current_state(EVERY_TYPE) == [EVERY_EXPECTED]


def test_non_finite_floats_and_times_before_1970_round_trip(postgres: PostgresDestination):
    table = table_of(
        "edges",
        ("id", "int", "partition_key"),
        ("f", "float", "regular"),
        ("d", "double", "regular"),
        ("t", "timestamp", "regular"),
        ("fs", "list<double>", "regular"),
    )
    cells = {
        "f": cell(float("nan")),
        "d": cell(float("-inf")),
        "t": cell(-1),
        "fs": elements((LIST_PATH, float("inf"))),
    }
    postgres.load(table, build_change_batch(table, [row({"id": 1}, cells=cells)]), load_id="1")
    assert postgres.current_state(table) == [{"id": 1, "f": "NaN", "d": float("-inf"), "t": -1, "fs": [float("inf")]}]


def test_the_view_presents_each_cql_type_as_the_documented_postgres_type(postgres: PostgresDestination, pg_dsn: str):
    postgres.ensure_table(EVERY_TYPE)
    types = dict(
        query(
            pg_dsn,
            "SELECT column_name, format_type(atttypid, atttypmod) FROM information_schema.columns c "
            "JOIN pg_attribute a ON a.attrelid = to_regclass('ks.every_type') AND a.attname = c.column_name "
            "WHERE table_schema = 'ks' AND table_name = 'every_type'",
        )
    )
    assert types == {
        "id": "integer",
        "a_ascii": "text",
        "a_text": "text",
        "a_blob": "bytea",
        "a_boolean": "boolean",
        "a_tinyint": "smallint",
        "a_smallint": "smallint",
        "a_int": "integer",
        "a_bigint": "bigint",
        "a_varint": "numeric",
        "a_decimal": "numeric",
        "a_float": "real",
        "a_double": "double precision",
        "a_timestamp": "timestamp with time zone",
        "a_date": "date",
        "a_time": "time without time zone",
        "a_duration": "interval",
        "a_uuid": "uuid",
        "a_timeuuid": "uuid",
        "a_inet": "inet",
        "a_list": "integer[]",
        "a_set": "text[]",
        "a_map": "jsonb",
        "a_udt": "jsonb",
        "f_list": "jsonb",
        "f_map": "jsonb",
        "f_udt": "jsonb",
        "a_tuple": "jsonb",
        "a_vector": "real[]",
        "a_times": "timestamp with time zone[]",
        "a_blobs": "bytea[]",
        "a_durations": "interval[]",
    }


def test_a_data_engineer_reads_collections_and_user_types_as_arrays_and_json(
    postgres: PostgresDestination, pg_dsn: str
):
    postgres.load(EVERY_TYPE, build_change_batch(EVERY_TYPE, [row({"id": 1}, cells=EVERY_VALUE)]), load_id="1")
    [(a_set, a_map, a_udt, f_map, a_tuple, a_timestamp)] = query(
        pg_dsn, "SELECT a_set, a_map, a_udt, f_map, a_tuple, a_timestamp FROM ks.every_type WHERE id = 1"
    )
    assert a_set == ["a", "b"]
    assert a_map == {"1": "one", "2": "two"}
    assert a_udt == {"number": 7}
    assert f_map == {"1970-01-01T00:00:00.000Z": "0x", "1970-01-01T00:00:01.000Z": "0x01"}
    assert a_tuple == [1, "x", "2022-01-08"]
    assert a_timestamp == dt.datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=dt.UTC)


def test_time_and_duration_keep_microseconds_and_drop_nanoseconds(postgres: PostgresDestination):
    table = table_of("clock", ("id", "int", "partition_key"), ("t", "time", "regular"), ("d", "duration", "regular"))
    cells = {"t": cell(1_000_001_999), "d": cell((1, 2, -3_999))}
    postgres.load(table, build_change_batch(table, [row({"id": 1}, cells=cells)]), load_id="1")
    assert postgres.current_state(table) == [{"id": 1, "t": 1_000_001_000, "d": (1, 2, -3_000)}]


def test_timestamps_before_the_year_1000_keep_their_year_inside_collections_and_tuples(postgres: PostgresDestination):
    table = table_of(
        "old_times",
        ("id", "int", "partition_key"),
        ("stamps", "list<timestamp>", "regular"),
        ("pair", "frozen<tuple<timestamp, int>>", "regular"),
    )
    year_1 = (dt.datetime(1, 1, 1, tzinfo=dt.UTC) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(
        milliseconds=1
    )
    year_999 = (
        dt.datetime(999, 12, 31, 23, 59, 59, 999000, tzinfo=dt.UTC) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    ) // (dt.timedelta(milliseconds=1))
    cells = {"stamps": elements((LIST_PATH, year_1), (LIST_PATH_2, year_999)), "pair": cell((year_1, 7))}
    postgres.load(table, build_change_batch(table, [row({"id": 1}, cells=cells)]), load_id="1")
    assert postgres.current_state(table) == [{"id": 1, "stamps": [year_1, year_999], "pair": {"f0": year_1, "f1": 7}}]


def test_an_empty_frozen_collection_held_in_a_map_stays_empty(postgres: PostgresDestination):
    # Cassandra's SELECT shows {1: []}: only a column's own empty collection reads as null.
    table = table_of(
        "nested_empty", ("id", "int", "partition_key"), ("nested", "map<int, frozen<list<text>>>", "regular")
    )
    cells = {"nested": elements((1, []), (2, ["a"]))}
    postgres.load(table, build_change_batch(table, [row({"id": 1}, cells=cells)]), load_id="1")
    assert postgres.current_state(table) == [{"id": 1, "nested": [(1, []), (2, ["a"])]}]


def test_negative_and_positive_zero_are_two_clustering_rows_as_in_cassandra(postgres: PostgresDestination):
    # DoubleType orders -0.0 before 0.0 (Double.compare): they are different rows, and a range ending at
    # -0.0 inclusive deletes the first one only.
    table = table_of("zeros", ("k", "int", "partition_key"), ("c", "double", "clustering"), ("v", "int", "regular"))
    changes = [
        row({"k": 1}, {"c": -0.0}, position=1, cells={"v": cell(1)}),
        row({"k": 1}, {"c": 0.0}, position=2, cells={"v": cell(2)}),
        row({"k": 2}, {"c": -0.0}, position=3, cells={"v": cell(3)}),
        row({"k": 2}, {"c": 0.0}, position=4, cells={"v": cell(4)}),
        {
            **row({"k": 2}, position=5, deletion_writetime=5),
            "kind": "range_deletion",
            "range_start": None,
            "range_start_inclusive": None,
            "range_end": {"c": -0.0},
            "range_end_inclusive": True,
        },
    ]
    postgres.load(table, build_change_batch(table, changes), load_id="1")
    state = postgres.current_state(table)
    assert [(r["k"], math.copysign(1, r["c"]), r["v"]) for r in state] == [(1, -1, 1), (1, 1, 2), (2, 1, 4)]


KEYS = table_of(
    "Key Types",
    ("p_text", "text", "partition_key"),
    ("p_uuid", "uuid", "partition_key"),
    ("c_timeuuid", "timeuuid", "clustering"),
    ("c_inet", "inet", "clustering"),
    ("c_frozen", "frozen<list<int>>", "clustering"),
    ("c_blob", "blob", "clustering"),
    ("Value", "text", "regular"),
)


def test_keys_of_many_types_round_trip_and_sort_in_cassandra_order(postgres: PostgresDestination):
    earlier, later = "00000001-0000-1000-8000-000000000000", "00000000-0001-1000-8000-000000000000"
    key = {"p_text": "k", "p_uuid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}
    changes = [
        row(key, {"c_timeuuid": c, "c_inet": i, "c_frozen": f, "c_blob": b}, row_writetime=1, cells={"Value": cell(v)})
        for c, i, f, b, v in [
            (later, "10.0.0.1", [1], b"\x01", "4th"),
            (earlier, "10.0.0.1", [2], b"", "3rd"),
            (earlier, "10.0.0.1", [1, 2], b"\x00", "2nd"),
            (earlier, "::1", [5], b"\xff", "1st"),
        ]
    ]
    postgres.load(KEYS, build_change_batch(KEYS, changes), load_id="1")
    assert [r["Value"] for r in postgres.current_state(KEYS)] == ["1st", "2nd", "3rd", "4th"]


def test_identifiers_are_quoted_so_any_cassandra_name_works(postgres: PostgresDestination, pg_dsn: str):
    table = table_of(
        'Odd "Names"', ("Key", "int", "partition_key"), ("select", "text", "regular"), keyspace="Mixed Case"
    )
    postgres.load(table, build_change_batch(table, [row({"Key": 1}, cells={"select": cell("ok")})]), load_id="1")
    assert query(pg_dsn, 'SELECT "select" FROM "Mixed Case"."Odd ""Names""" WHERE "Key" = 1') == [("ok",)]


# --------------------------------------------------------------------------------------------------
# Merge semantics against stored state

SIMPLE = table_of(
    "simple",
    ("k", "int", "partition_key"),
    ("c", "int", "clustering"),
    ("v", "int", "regular"),
    ("w", "text", "regular"),
    ("tags", "set<int>", "regular"),
)


def test_ties_break_as_cassandra_does_within_a_batch_and_against_stored_cells(postgres: PostgresDestination):
    # Equal write times: -1 (ff ff ff ff) beats 2; "b" beats "a"; a tombstone beats both.
    within = [row({"k": 1}, {"c": 1}, position=i, cells={"v": cell(v, 5)}) for i, v in enumerate([2, -1, 1])]
    postgres.load(SIMPLE, build_change_batch(SIMPLE, within), load_id="within")
    postgres.load(SIMPLE, build_change_batch(SIMPLE, [row({"k": 1}, {"c": 1}, cells={"w": cell("b", 5)})]), load_id="b")
    postgres.load(SIMPLE, build_change_batch(SIMPLE, [row({"k": 1}, {"c": 1}, cells={"w": cell("a", 5)})]), load_id="a")
    assert postgres.current_state(SIMPLE) == [{"k": 1, "c": 1, "v": -1, "w": "b", "tags": None}]
    dead = row({"k": 1}, {"c": 1}, cells={"v": cell(None, 5, deleted=True)})
    postgres.load(SIMPLE, build_change_batch(SIMPLE, [dead]), load_id="dead")
    assert postgres.current_state(SIMPLE) == [{"k": 1, "c": 1, "v": None, "w": "b", "tags": None}]


def test_a_late_older_write_cannot_resurrect_a_deleted_partition(postgres: PostgresDestination):
    deletion = {"segment_id": 1, "position": 1, "kind": "partition_deletion", "key": {"k": 1}, "deletion_writetime": 10}
    postgres.load(SIMPLE, build_change_batch(SIMPLE, [deletion]), load_id="delete")
    late = row({"k": 1}, {"c": 1}, row_writetime=9, cells={"v": cell(1, 9)})
    postgres.load(SIMPLE, build_change_batch(SIMPLE, [late]), load_id="late")
    assert postgres.current_state(SIMPLE) == []


def test_the_view_expires_ttl_cells_at_query_time(postgres: PostgresDestination, pg_dsn: str):
    change = row({"k": 1}, {"c": 1}, row_writetime=1, cells={"v": cell(5, 1, expires_at=NOW_S)})
    postgres.load(SIMPLE, build_change_batch(SIMPLE, [change]), load_id="1")
    before = NOW - dt.timedelta(seconds=1)
    assert postgres.current_state(SIMPLE, now=before)[0]["v"] == 5
    assert postgres.current_state(SIMPLE, now=NOW)[0]["v"] is None
    with psycopg.connect(pg_dsn) as connection:
        assert connection.execute("SELECT v FROM ks.simple").fetchall() == [(5,)]
        connection.execute("SELECT set_config('cdc_assets.now', %s, true)", [NOW.isoformat()])
        assert connection.execute("SELECT v FROM ks.simple").fetchall() == [(None,)]


# --------------------------------------------------------------------------------------------------
# Loads: ledger, replays, crashes


def test_a_load_records_its_positions_and_a_replay_of_its_id_is_skipped(postgres: PostgresDestination):
    changes = [row({"k": 1}, {"c": i}, position=p, row_writetime=1) for i, p in enumerate([40, 10, 30])]
    batch = build_change_batch(SIMPLE, changes)
    first = postgres.load(SIMPLE, batch, load_id="load-1")
    again = postgres.load(SIMPLE, batch, load_id="load-1")
    assert (first.rows, first.first_position, first.last_position) == (3, Position(1, 10), Position(1, 40))
    assert again.rows == 0
    ledger = postgres.loads(SIMPLE)
    assert [(r["load_id"], r["first_position"], r["last_position"], r["changes"]) for r in ledger] == [
        ("load-1", 10, 40, 3)
    ]


def test_a_replay_under_another_load_id_changes_nothing(postgres: PostgresDestination):
    batch = build_change_batch(
        SIMPLE,
        [
            row(
                {"k": 1},
                {"c": 1},
                row_writetime=3,
                cells={"v": cell(1, 3), "tags": elements((1, None), writetime=3)},
            ),
            row({"k": 1}, {"c": 1}, cells={"tags": elements((3, None), deletion=1, writetime=2)}),
        ],
    )
    postgres.load(SIMPLE, batch, load_id="node-a")
    state = postgres.current_state(SIMPLE)
    postgres.load(SIMPLE, batch, load_id="node-b")
    assert postgres.current_state(SIMPLE) == state == [{"k": 1, "c": 1, "v": 1, "w": None, "tags": [1, 3]}]


def test_a_load_killed_half_way_leaves_nothing_and_running_it_again_converges(
    postgres: PostgresDestination, pg_dsn: str
):
    first = build_change_batch(SIMPLE, [row({"k": 1}, {"c": 1}, row_writetime=1, cells={"v": cell(1, 1)})])
    postgres.load(SIMPLE, first, load_id="first")
    second = build_change_batch(
        SIMPLE,
        [row({"k": k}, {"c": 1}, position=k, row_writetime=2, cells={"v": cell(k * 10, 2)}) for k in range(1, 200)],
    )
    model = CassandraModel(SIMPLE)
    model.apply(first)
    model.apply(second)
    failure: list[BaseException] = []

    def load_second() -> None:
        try:
            postgres.load(SIMPLE, second, load_id="second")
        except BaseException as error:  # the thread reports what the load raised
            failure.append(error)

    with psycopg.connect(pg_dsn) as blocker, psycopg.connect(pg_dsn, autocommit=True) as watcher:
        # Hold the rows table so the load stops inside its merge, after its COPY, then kill its backend.
        blocker.execute("LOCK TABLE ks.simple__rows IN EXCLUSIVE MODE")
        loader = threading.Thread(target=load_second)
        loader.start()
        victim = None
        for _ in range(200):
            found = watcher.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchall()
            if found:
                victim = found[0][0]
                break
            time.sleep(0.05)
        assert victim is not None
        watcher.execute("SELECT pg_terminate_backend(%s)", [victim])
        loader.join(10)
    assert len(failure) == 1 and isinstance(failure[0], TransientDestinationError)
    assert postgres.current_state(SIMPLE) == [{"k": 1, "c": 1, "v": 1, "w": None, "tags": None}]
    assert [r["load_id"] for r in postgres.loads(SIMPLE)] == ["first"]
    postgres.load(SIMPLE, second, load_id="second")
    assert postgres.current_state(SIMPLE) == model.current_state()


# --------------------------------------------------------------------------------------------------
# Schema evolution and what cannot be taken


def test_an_added_column_is_carried_without_stopping_the_flow(postgres: PostgresDestination):
    postgres.load(SIMPLE, build_change_batch(SIMPLE, [row({"k": 1}, {"c": 1}, row_writetime=1)]), load_id="old")
    wider = SIMPLE.with_columns([*SIMPLE.columns, Column("extra", parse_type("map<text, int>"), "regular")])
    new = row({"k": 2}, {"c": 1}, row_writetime=2, cells={"extra": elements(("x", 1))})
    postgres.load(wider, build_change_batch(wider, [new]), load_id="new")
    postgres.load(SIMPLE, build_change_batch(SIMPLE, [row({"k": 3}, {"c": 1}, row_writetime=3)]), load_id="late-old")
    blank = {"v": None, "w": None, "tags": None, "extra": None}
    assert postgres.current_state(wider) == [
        {"k": 1, "c": 1, **blank},
        {"k": 2, "c": 1, **blank, "extra": [("x", 1)]},
        {"k": 3, "c": 1, **blank},
    ]


def test_a_dropped_column_leaves_the_view_and_a_re_added_one_shows_only_later_cells(
    postgres: PostgresDestination, pg_dsn: str
):
    postgres.load(
        SIMPLE, build_change_batch(SIMPLE, [row({"k": 1}, {"c": 1}, cells={"w": cell("old", 5)})]), load_id="1"
    )
    dropped = SIMPLE.with_columns(
        [c for c in SIMPLE.columns if c.name != "w"], [DroppedColumn("w", parse_type("text"), 10)]
    )
    postgres.ensure_table(dropped)
    shown = query(pg_dsn, "SELECT attname FROM pg_attribute WHERE attrelid = 'ks.simple'::regclass AND attnum > 0")
    assert ("w",) not in shown
    assert query(pg_dsn, "SELECT w FROM ks.simple__rows") == [("old",)]
    readded = SIMPLE.with_columns(SIMPLE.columns, [DroppedColumn("w", parse_type("text"), 10)])
    postgres.ensure_table(readded)
    assert postgres.current_state(readded) == []
    postgres.load(
        readded, build_change_batch(readded, [row({"k": 1}, {"c": 1}, cells={"w": cell("new", 11)})]), load_id="2"
    )
    assert postgres.current_state(readded) == [{"k": 1, "c": 1, "v": None, "w": "new", "tags": None}]


def test_a_column_whose_type_changed_goes_to_the_dead_letter_store_and_the_rest_loads(
    postgres: PostgresDestination, tmp_path: Path
):
    postgres.load(SIMPLE, build_change_batch(SIMPLE, [row({"k": 1}, {"c": 1}, cells={"v": cell(1)})]), load_id="1")
    retyped = SIMPLE.with_columns(
        [Column("v", parse_type("text"), "regular") if c.name == "v" else c for c in SIMPLE.columns]
    )
    changes = [
        row({"k": 2}, {"c": 1}, position=5, cells={"v": cell("text now")}),
        row({"k": 3}, {"c": 1}, cells={"w": cell("fine")}),
    ]
    result = postgres.load(retyped, build_change_batch(retyped, changes), load_id="2")
    assert result.rows == 1
    [letter] = list(DeadLetterStore(tmp_path / "dead.jsonl"))
    assert (letter.stage, letter.table, letter.position) == ("postgres", "ks.simple", 5)
    assert "ks.simple.v" in letter.reason and "int" in letter.reason and "text" in letter.reason
    assert [(r["k"], r["w"]) for r in postgres.current_state(SIMPLE)] == [(1, None), (3, "fine")]


def test_a_value_postgres_cannot_store_is_dead_lettered_with_a_replayable_payload(
    postgres: PostgresDestination, tmp_path: Path
):
    changes = [
        row({"k": 1}, {"c": 1}, position=1, cells={"w": cell("nul\x00byte")}),
        row({"k": 2}, {"c": 1}, position=2, row_writetime=1),
    ]
    batch = build_change_batch(SIMPLE, changes)
    postgres.load(SIMPLE, batch, load_id="1")
    [letter] = list(DeadLetterStore(tmp_path / "dead.jsonl"))
    assert "NUL" in letter.reason and letter.position == 1
    replayed = pa.ipc.open_stream(letter.payload).read_all()
    assert replayed.to_pylist() == batch.slice(0, 1).to_pylist()
    assert [r["k"] for r in postgres.current_state(SIMPLE)] == [2]


def test_a_collection_element_with_a_nul_character_is_dead_lettered_and_the_rest_loads(
    postgres: PostgresDestination, tmp_path: Path
):
    table = table_of("nul", ("k", "int", "partition_key"), ("tags", "set<text>", "regular"), ("w", "text", "regular"))
    literal_escape = "back\\u0000slash"  # the six characters \u0000 as text: no NUL in it
    changes = [
        row({"k": 1}, position=1, cells={"tags": elements(("a\x00b", None))}),
        row({"k": 2}, position=2, cells={"tags": elements((literal_escape, None)), "w": cell("fine")}),
    ]
    result = postgres.load(table, build_change_batch(table, changes), load_id="1")
    assert result.rows == 1
    [letter] = list(DeadLetterStore(tmp_path / "dead.jsonl"))
    assert "NUL" in letter.reason and "tags" in letter.reason and letter.position == 1
    assert [(r["k"], r["tags"], r["w"]) for r in postgres.current_state(table)] == [(2, [literal_escape], "fine")]


def test_without_a_dead_letter_store_a_change_that_cannot_be_taken_fails_the_load_permanently(pg_dsn: str):
    destination = PostgresDestination(pg_dsn)
    batch = build_change_batch(SIMPLE, [row({"k": 1}, {"c": 1}, cells={"w": cell("nul\x00byte")})])
    with pytest.raises(PermanentDestinationError, match="NUL"):
        destination.load(SIMPLE, batch, load_id="1")
    assert destination.current_state(SIMPLE) == []
    destination.close()


def test_an_unreachable_server_is_a_transient_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    destination = PostgresDestination(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", connect_timeout=2)
    with pytest.raises(TransientDestinationError):
        destination.ensure_table(SIMPLE)


def test_a_missing_database_is_a_permanent_error(postgres_server: str):
    dsn = make_conninfo(**{**conninfo_to_dict(postgres_server), "dbname": f"missing_{uuid.uuid4().hex[:8]}"})
    with pytest.raises(PermanentDestinationError, match="does not exist"):
        PostgresDestination(dsn).ensure_table(SIMPLE)


def test_a_lock_wait_that_times_out_is_a_transient_error(postgres: PostgresDestination, pg_dsn: str):
    postgres.ensure_table(SIMPLE)
    impatient = PostgresDestination(pg_dsn + " options='-c lock_timeout=200'")
    with psycopg.connect(pg_dsn) as blocker:
        blocker.execute("LOCK TABLE ks.simple__rows IN EXCLUSIVE MODE")
        batch = build_change_batch(SIMPLE, [row({"k": 1}, {"c": 1}, row_writetime=1)])
        with pytest.raises(TransientDestinationError, match="lock timeout"):
            impatient.load(SIMPLE, batch, load_id="1")
    impatient.close()
