"""The TimescaleDB destination: plain-PostgreSQL fallback on a real server, and the hypertable SQL.

The timescaledb extension cannot be installed here, so the hypertable path is checked through the SQL
it would run; the fallback runs for real.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.cassandra_schema.types import parse_type
from cdc_assets.change_batch import build_change_batch
from cdc_assets.destinations.base import PermanentDestinationError
from cdc_assets.destinations.postgres import PgTableSql
from cdc_assets.destinations.timescale import TimescaleDestination, history_ddl, hypertable_sql

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


def test_plain_postgres_retention_drops_old_history_but_never_the_current_state(pg_dsn: str):
    destination = TimescaleDestination(pg_dsn, allow_plain_postgres=True, retention=timedelta(days=30))
    old = micros(datetime.now(UTC) - timedelta(days=90))
    recent = micros(datetime.now(UTC) - timedelta(hours=1))
    batch = build_change_batch(TABLE, [reading("a", 1, 1.0, old), reading("b", 1, 2.0, recent, position=1)])
    destination.load(TABLE, batch, load_id="1")
    with psycopg.connect(pg_dsn) as connection:
        kept = connection.execute("SELECT sensor FROM metrics.readings__changes").fetchall()
    assert kept == [("b",)]
    assert [r["sensor"] for r in destination.current_state(TABLE)] == ["a", "b"]
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


def test_the_hypertable_unique_index_includes_the_time_column_and_no_partitioning_is_declared():
    sql = PgTableSql(TABLE, "metrics", "_cdc")
    create, index = [s for s in history_ddl(sql, TABLE.value_columns, partitioned=False) if "CREATE" in s]
    assert "PARTITION BY" not in create
    assert index.endswith("(_cdc_segment_id, _cdc_position, _cdc_key, _cdc_time)")
