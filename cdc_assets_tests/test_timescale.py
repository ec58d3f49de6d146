"""The TimescaleDB destination: plain-PostgreSQL fallback on a real server, and the hypertable SQL.

The timescaledb extension cannot be installed here, so the hypertable path is checked through the SQL
it would run; the fallback runs for real.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cdc_assets.cassandra_schema.tables import Column, DroppedColumn, TableSchema
from cdc_assets.cassandra_schema.types import parse_type
from cdc_assets.change_batch import build_change_batch
from cdc_assets.dead_letters import DeadLetterStore
from cdc_assets.destinations.base import PermanentDestinationError
from cdc_assets.destinations.postgres.layout import PgTableSql
from cdc_assets.destinations.timescale.destination import TimescaleDestination, history_ddl, hypertable_sql
from cdc_assets_tests.test_postgres import EVERY_EXPECTED, EVERY_TYPE, EVERY_VALUE, SIMPLE, cell, elements, row

TABLE = TableSchema(
    "metrics",
    "readings",
    uuid.UUID("7c3e2f80-0000-4000-8000-000000000003"),
    (
        Column("sensor", parse_type("text"), "partition_key", 0),
        Column("at", parse_type("int"), "clustering", 0),
        Column("value", parse_type("double"), "regular"),
    ),
)
DAY_US = 86_400_000_000


def micros(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def reading(sensor: str, at: int, value: float, writetime: int, position: int = 0) -> dict[str, Any]:
    cell = {"value": value, "writetime": writetime, "ttl": None, "expires_at": None, "deleted": False}
    return {
        "segment_id": 3,
        "position": position,
        "kind": "row",
        "key": {"sensor": sensor},
        "clustering": {"at": at},
        "row_writetime": writetime,
        "cells": {"value": cell},
    }


def test_without_the_extension_the_destination_refuses_unless_plain_postgres_is_allowed(pg_dsn: str):
    destination = TimescaleDestination(pg_dsn)
    with pytest.raises(PermanentDestinationError, match="allow_plain_postgres=True"):
        destination.ensure_table(TABLE)
    destination.close()


def test_with_plain_postgres_allowed_it_warns_and_range_partitions_the_history_on_write_time(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
):
    destination = TimescaleDestination(pg_dsn, allow_plain_postgres=True, chunk_interval=timedelta(days=1))
    first_day = micros(datetime(2024, 3, 1, 12, tzinfo=UTC))
    batch = build_change_batch(
        TABLE, [reading("a", 1, 1.5, first_day), reading("a", 2, 2.5, first_day + DAY_US, position=1)]
    )
    with caplog.at_level(logging.WARNING):
        destination.load(TABLE, batch, load_id="1")
    assert any("timescaledb extension not available" in r.getMessage() for r in caplog.records)
    with psycopg.connect(pg_dsn) as connection:
        [(strategy, key)] = connection.execute(
            "SELECT partstrat, pg_get_partkeydef(partrelid) FROM pg_partitioned_table "
            "WHERE partrelid = 'metrics.readings__changes'::regclass"
        ).fetchall()
        bounds = connection.execute(
            "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'metrics.readings__changes'::regclass ORDER BY 1"
        ).fetchall()
    assert (strategy, key) == ("r", "RANGE (_cdc_time)")
    assert [b for (b,) in bounds] == [
        "FOR VALUES FROM ('2024-03-01 00:00:00+00') TO ('2024-03-02 00:00:00+00')",
        "FOR VALUES FROM ('2024-03-02 00:00:00+00') TO ('2024-03-03 00:00:00+00')",
    ]
    destination.close()


def test_the_history_keeps_each_change_once_however_often_it_is_delivered(pg_dsn: str):
    destination = TimescaleDestination(pg_dsn, allow_plain_postgres=True)
    writetime = micros(datetime(2024, 3, 1, tzinfo=UTC))
    batch = build_change_batch(TABLE, [reading("a", 1, 1.0, writetime), reading("a", 1, 2.0, writetime + 1, 1)])
    destination.load(TABLE, batch, load_id="node-1")
    destination.load(TABLE, batch, load_id="node-2")
    with psycopg.connect(pg_dsn) as connection:
        history = connection.execute(
            "SELECT _cdc_position, value, _cdc_time FROM metrics.readings__changes ORDER BY _cdc_position"
        ).fetchall()
    assert history == [
        (0, 1.0, datetime(2024, 3, 1, tzinfo=UTC)),
        (1, 2.0, datetime(2024, 3, 1, 0, 0, 0, 1, tzinfo=UTC)),
    ]
    assert destination.current_state(TABLE) == [{"sensor": "a", "at": 1, "value": 2.0}]
    destination.close()


def test_plain_postgres_retention_drops_old_history_and_with_it_what_only_it_held_in_the_current_state(
    pg_dsn: str,
):
    destination = TimescaleDestination(pg_dsn, allow_plain_postgres=True, retention=timedelta(days=30))
    old = micros(datetime.now(UTC) - timedelta(days=90))
    recent = micros(datetime.now(UTC) - timedelta(hours=1))
    batch = build_change_batch(TABLE, [reading("a", 1, 1.0, old), reading("b", 1, 2.0, recent, position=1)])
    destination.load(TABLE, batch, load_id="1")
    with psycopg.connect(pg_dsn) as connection:
        kept = connection.execute("SELECT sensor FROM metrics.readings__changes").fetchall()
    assert kept == [("b",)]
    # The current state is the history's: a row whose every change is past the retention goes with it.
    assert [r["sensor"] for r in destination.current_state(TABLE)] == ["b"]
    destination.close()


def test_the_hypertable_path_partitions_on_write_time_with_the_configured_policies():
    sql = PgTableSql(TABLE, "metrics", "_cdc")
    statements = hypertable_sql(
        sql, chunk_interval=timedelta(hours=6), compress_after=timedelta(days=2), retention=timedelta(days=90)
    )
    assert statements == [
        "CREATE EXTENSION IF NOT EXISTS timescaledb",
        "SELECT create_hypertable('\"metrics\".\"readings__changes\"', '_cdc_time', "
        "chunk_time_interval => interval '21600 seconds', if_not_exists => true, migrate_data => true)",
        'ALTER TABLE "metrics"."readings__changes" SET (timescaledb.compress, '
        "timescaledb.compress_segmentby = '\"sensor\"', timescaledb.compress_orderby = '_cdc_time DESC')",
        "SELECT add_compression_policy('\"metrics\".\"readings__changes\"', interval '172800 seconds', "
        "if_not_exists => true)",
        "SELECT add_retention_policy('\"metrics\".\"readings__changes\"', interval '7776000 seconds', "
        "if_not_exists => true)",
    ]


def test_the_hypertable_path_declares_no_partitioning_and_indexes_where_changes_were_read_with_brin():
    sql = PgTableSql(TABLE, "metrics", "_cdc")
    create, index = [s for s in history_ddl(sql, TABLE.value_columns, partitioned=False) if "CREATE" in s]
    assert "PARTITION BY" not in create
    assert index.endswith("USING brin (_cdc_segment_id, _cdc_position)")


def test_a_history_an_earlier_version_indexed_uniquely_loses_that_index_and_still_keeps_each_change_once(
    pg_dsn: str,
):
    destination = TimescaleDestination(pg_dsn, allow_plain_postgres=True)
    destination.ensure_table(TABLE)
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        connection.execute(
            "CREATE UNIQUE INDEX readings__changes_key ON metrics.readings__changes "
            "(_cdc_segment_id, _cdc_position, _cdc_key, _cdc_time)"
        )
    destination.close()
    restarted = TimescaleDestination(pg_dsn, allow_plain_postgres=True)
    writetime = micros(datetime(2024, 3, 1, tzinfo=UTC))
    first = reading("a", 1, 1.0, writetime)
    # The same change twice in one batch (delivered twice), then the whole batch again.
    batch = build_change_batch(TABLE, [first, first, reading("a", 2, 2.0, writetime, 1)])
    restarted.load(TABLE, batch, load_id="once")
    restarted.load(TABLE, batch, load_id="again")
    with psycopg.connect(pg_dsn) as connection:
        indexes = connection.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'metrics' AND tablename = 'readings__changes'"
        ).fetchall()
        history = connection.execute(
            "SELECT _cdc_position, at, value FROM metrics.readings__changes ORDER BY _cdc_position"
        ).fetchall()
    assert indexes == [("readings__changes_at",)]
    assert history == [(0, 1, 1.0), (1, 2, 2.0)]
    restarted.close()


# --------------------------------------------------------------------------------------------------
# The current state computed from the history: every type, schema evolution, what cannot be taken


@pytest.fixture
def timescale(pg_dsn: str, tmp_path: Path) -> Iterator[TimescaleDestination]:
    destination = TimescaleDestination(
        pg_dsn, allow_plain_postgres=True, dead_letters=DeadLetterStore(tmp_path / "dead.jsonl")
    )
    yield destination
    destination.close()


def test_every_cql_type_round_trips_through_the_view_over_the_history(timescale: TimescaleDestination):
    timescale.load(EVERY_TYPE, build_change_batch(EVERY_TYPE, [row({"id": 1}, cells=EVERY_VALUE)]), load_id="1")
    assert timescale.current_state(EVERY_TYPE) == [EVERY_EXPECTED]


def test_an_added_column_reaches_the_view_and_older_rows_show_it_empty(timescale: TimescaleDestination):
    timescale.load(SIMPLE, build_change_batch(SIMPLE, [row({"k": 1}, {"c": 1}, row_writetime=1)]), load_id="old")
    wider = SIMPLE.with_columns([*SIMPLE.columns, Column("extra", parse_type("map<text, int>"), "regular")])
    new = row({"k": 2}, {"c": 1}, row_writetime=2, cells={"extra": elements(("x", 1))})
    timescale.load(wider, build_change_batch(wider, [new]), load_id="new")
    blank = {"v": None, "w": None, "tags": None, "extra": None}
    assert timescale.current_state(wider) == [
        {"k": 1, "c": 1, **blank},
        {"k": 2, "c": 1, **blank, "extra": [("x", 1)]},
    ]


def test_a_dropped_and_re_added_column_shows_only_cells_written_after_the_drop(timescale: TimescaleDestination):
    timescale.load(
        SIMPLE, build_change_batch(SIMPLE, [row({"k": 1}, {"c": 1}, cells={"w": cell("old", 5)})]), load_id="1"
    )
    dropped = SIMPLE.with_columns(
        [c for c in SIMPLE.columns if c.name != "w"], [DroppedColumn("w", parse_type("text"), 10)]
    )
    # The row had nothing but that cell (no row marker): with the column gone, so is the row.
    assert timescale.current_state(dropped) == []
    readded = SIMPLE.with_columns(SIMPLE.columns, [DroppedColumn("w", parse_type("text"), 10)])
    assert timescale.current_state(readded) == []
    timescale.load(
        readded, build_change_batch(readded, [row({"k": 1}, {"c": 1}, cells={"w": cell("new", 11)})]), load_id="2"
    )
    assert timescale.current_state(readded) == [{"k": 1, "c": 1, "v": None, "w": "new", "tags": None}]


def test_a_column_whose_type_changed_is_dead_lettered_and_the_rest_reaches_the_history(
    timescale: TimescaleDestination, tmp_path: Path
):
    timescale.load(SIMPLE, build_change_batch(SIMPLE, [row({"k": 1}, {"c": 1}, cells={"v": cell(1)})]), load_id="1")
    retyped = SIMPLE.with_columns(
        [Column("v", parse_type("text"), "regular") if c.name == "v" else c for c in SIMPLE.columns]
    )
    changes = [
        row({"k": 2}, {"c": 1}, position=5, cells={"v": cell("text now")}),
        row({"k": 3}, {"c": 1}, cells={"w": cell("fine")}),
    ]
    assert timescale.load(retyped, build_change_batch(retyped, changes), load_id="2").rows == 1
    [letter] = list(DeadLetterStore(tmp_path / "dead.jsonl"))
    assert (letter.stage, letter.table, letter.position) == ("timescaledb", "ks.simple", 5)
    assert [(r["k"], r["w"]) for r in timescale.current_state(SIMPLE)] == [(1, None), (3, "fine")]
