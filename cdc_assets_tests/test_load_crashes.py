"""Loads that used to crash (issue #11): each destination must converge to the model, or fail as a DestinationError.

The four cases are the issue's minimal ones, each run on every destination (PostgreSQL, TimescaleDB's
plain-PostgreSQL fallback, ClickHouse on chdb) against :class:`CassandraModel`. Expected rows are the
issue's, worked out from Cassandra 5.0's rules; the model is checked to agree before the destination is.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from cdc_assets import change_batch as cb
from cdc_assets.cassandra_model import CassandraModel
from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.cassandra_schema.types import CqlType, parse_type
from cdc_assets.change_batch import build_change_batch
from cdc_assets.dead_letters import DeadLetterStoreError
from cdc_assets.destinations.base import (
    Destination,
    DestinationError,
    PermanentDestinationError,
    TransientDestinationError,
    describe_error,
    load_boundary,
)
from cdc_assets.destinations.clickhouse.destination import ClickHouseDestination
from cdc_assets.destinations.postgres.destination import PostgresDestination
from cdc_assets.destinations.timescale.destination import TimescaleDestination

ADDRESS = CqlType("udt", (parse_type("int"), parse_type("text")), frozen=True, name="address", field_names=("n", "s"))
# Every kind of value Cassandra orders clustering by: each has its own ClickHouse and PostgreSQL storage.
CLUSTERING_TYPES = [
    "timeuuid",
    "uuid",
    "inet",
    "blob",
    "decimal",
    "varint",
    "date",
    "time",
    "timestamp",
    "text",
    "boolean",
    "double",
    "frozen<list<int>>",
    "frozen<set<uuid>>",
    "frozen<map<timeuuid, text>>",
    "tuple<uuid, int>",
    "address",
]
# A client sending USING TIMESTAMP in nanoseconds: 2023-11-14 as µs is past year 55,000.
NANOSECONDS_AS_MICROS = 1_700_000_000_000_000_000
LONG_MIN, LONG_MAX = -(1 << 63), (1 << 63) - 1


def cell(value: Any, writetime: int, *, deleted: bool = False) -> dict[str, Any]:
    return {"value": value, "writetime": writetime, "ttl": None, "expires_at": None, "deleted": deleted}


def table_of(name: str, *columns: tuple[str, str, str]) -> TableSchema:
    positions = {"partition_key": 0, "clustering": 0}
    made = []
    for column_name, text, kind in columns:
        position = positions.get(kind, -1)
        if kind in positions:
            positions[kind] += 1
        cql = ADDRESS if text == "address" else parse_type(text)
        made.append(Column(column_name, cql, kind, position))  # type: ignore[arg-type]
    return TableSchema("audit", name, uuid.uuid5(uuid.NAMESPACE_DNS, name), tuple(made))


@pytest.fixture(params=["postgres", "timescaledb", "clickhouse"])
def destination(
    request: pytest.FixtureRequest, clickhouse_factory: Callable[[Path | None], ClickHouseDestination]
) -> Iterator[Destination]:
    """Each destination, without a dead-letter store: a change it cannot take fails the load."""
    if request.param == "clickhouse":
        made: Destination = clickhouse_factory(None)
    else:
        dsn = request.getfixturevalue("pg_dsn")
        made = (
            PostgresDestination(dsn)
            if request.param == "postgres"
            else TimescaleDestination(dsn, allow_plain_postgres=True)
        )
    yield made
    made.close()


def converged(destination: Destination, table: TableSchema, *loads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Load each list of changes as one batch into ``destination`` and the model; the destination's rows,
    asserted equal to the model's."""
    model = CassandraModel(table)
    destination.ensure_table(table)
    for number, changes in enumerate(loads):
        for position, change in enumerate(changes):
            change.setdefault("segment_id", 7)
            change.setdefault("position", position)
        batch = build_change_batch(table, changes)
        destination.load(table, batch, load_id=f"load-{number}")
        model.apply(batch)
    state = destination.current_state(table)
    assert state == model.current_state()
    return state


@pytest.mark.parametrize("clustering_type", CLUSTERING_TYPES)
def test_a_static_row_alone_shows_with_a_null_clustering_whatever_the_clustering_type(
    destination: Destination, clustering_type: str
) -> None:
    table = table_of(
        "tl",
        ("k", "int", "partition_key"),
        ("c", clustering_type, "clustering"),
        ("s", "text", "static"),
        ("v", "int", "regular"),
    )
    static = {"kind": "static_row", "key": {"k": 1}, "cells": {"s": cell("x", 10)}}

    assert converged(destination, table, [static]) == [{"k": 1, "c": None, "s": "x", "v": None}]


@pytest.mark.parametrize(
    ("column_type", "first", "second", "kept"),
    [
        ("blob", b"\x00\xff", b"\x00\xff", b"\x00\xff"),
        ("blob", b"\x02", b"\x01\xff", b"\x02"),
        ("text", "a", "b", "b"),
        # Serialized: scale 1 then 15, against scale 0 then -2: the greater scale wins.
        ("decimal", "1.5", "-2", Decimal("1.5")),
    ],
)
def test_the_same_cell_twice_in_one_load_keeps_the_greater_value(
    destination: Destination, column_type: str, first: Any, second: Any, kept: Any
) -> None:
    """A mutation logged twice (replica copies in one batch), or two writes at one write time: ties break on
    the greater serialized value within a load as they do across loads."""
    table = table_of("ties", ("k", "int", "partition_key"), ("v", column_type, "regular"))
    write = {"kind": "row", "key": {"k": 1}, "clustering": None, "cells": {"v": cell(first, 5)}}
    copy = {"kind": "row", "key": {"k": 1}, "clustering": None, "cells": {"v": cell(second, 5)}, "segment_id": 8}

    assert converged(destination, table, [write, copy]) == [{"k": 1, "v": kept}]


@pytest.mark.parametrize(
    "writetime",
    [NANOSECONDS_AS_MICROS, LONG_MAX, LONG_MIN + 1, -1, 0, 253402300800000000, -62135596800000001],
    ids=["nanoseconds", "long-max", "long-min", "minus-one", "zero", "year-10000", "before-year-1"],
)
def test_a_write_time_at_the_extremes_cassandra_accepts_loads_and_reads_back(
    destination: Destination, writetime: int
) -> None:
    table = table_of("times", ("k", "int", "partition_key"), ("c", "int", "clustering"), ("v", "text", "regular"))
    write = {"kind": "row", "key": {"k": 1}, "clustering": {"c": 1}, "row_writetime": writetime}
    write["cells"] = {"v": cell("extreme", writetime)}
    other = {"kind": "row", "key": {"k": 1}, "clustering": {"c": 2}, "cells": {"v": cell("other", 1_700_000_000)}}

    assert converged(destination, table, [write, other]) == [
        {"k": 1, "c": 1, "v": "extreme"},
        {"k": 1, "c": 2, "v": "other"},
    ]


def test_a_counter_deletion_loads_and_hides_the_counter(destination: Destination) -> None:
    """A counter tombstone wins whatever its write time: the destinations stage it at the maximum one."""
    table = table_of("hits", ("k", "int", "partition_key"), ("n", "counter", "regular"))
    deletion = {"kind": "row", "key": {"k": 1}, "clustering": None, "cells": {"n": cell(None, 10, deleted=True)}}

    assert converged(destination, table, [deletion], [dict(deletion, segment_id=8)]) == []


def mislabelled(table: TableSchema, changes: list[dict[str, Any]], column: str, cql_type: str) -> pa.RecordBatch:
    """A batch of ``changes`` whose ``column`` claims CQL type ``cql_type`` but holds its table's values."""
    batch = build_change_batch(table, changes)
    index = batch.schema.get_field_index(column)
    field = batch.schema.field(index)
    metadata = {**field.metadata, cb.META_CQL_TYPE: cql_type.encode()}
    return batch.set_column(index, field.with_metadata(metadata), batch.column(index))


def test_a_batch_the_load_cannot_handle_is_a_permanent_error_naming_table_positions_and_reason(
    destination: Destination,
) -> None:
    """Text under a column that claims to hold durations: PostgreSQL refuses the changes, ClickHouse's
    conversion of the values fails (a ValueError); either way the load fails as one error that says where."""
    claimed = table_of("labels", ("k", "int", "partition_key"), ("v", "duration", "regular"))
    held = table_of("labels", ("k", "int", "partition_key"), ("v", "text", "regular"))
    changes = [
        {"segment_id": 7, "position": 40, "kind": "row", "key": {"k": 1}, "cells": {"v": cell("ten", 1)}},
        {"segment_id": 9, "position": 12, "kind": "row", "key": {"k": 2}, "cells": {"v": cell("two", 1)}},
    ]
    destination.ensure_table(claimed)

    with pytest.raises(PermanentDestinationError) as raised:
        destination.load(claimed, mislabelled(held, changes, "v", "duration"), load_id="mislabelled-1")

    message = str(raised.value)
    assert message.startswith(f"{destination.name}: load mislabelled-1 of audit.labels (positions 7:40 to 9:12)")
    assert raised.value.__cause__ is not None
    assert type(raised.value.__cause__).__name__ in message


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ValueError("no such value"), PermanentDestinationError),
        (ConnectionResetError("peer went away"), TransientDestinationError),
        (DeadLetterStoreError("dead-letter store: locked"), TransientDestinationError),
        (TransientDestinationError("PostgreSQL: deadlock detected"), TransientDestinationError),
        (PermanentDestinationError("PostgreSQL: permission denied"), PermanentDestinationError),
    ],
)
def test_the_load_boundary_classifies_every_error_and_keeps_it_as_the_cause(error: Exception, kind: type) -> None:
    table = table_of("boundary", ("k", "int", "partition_key"), ("v", "int", "regular"))
    batch = build_change_batch(table, [{"segment_id": 3, "position": 5, "kind": "row", "key": {"k": 1}}])

    with pytest.raises(DestinationError) as raised, load_boundary("postgres", table, batch, "b-1"):
        raise error

    assert type(raised.value) is kind
    assert raised.value.__cause__ is error
    assert (
        str(raised.value)
        == f"postgres: load b-1 of audit.boundary (positions 3:5 to 3:5) failed: {describe_error(error)}"
    )


def test_the_load_boundary_never_shows_the_dsn_password() -> None:
    table = table_of("secret", ("k", "int", "partition_key"), ("v", "int", "regular"))
    batch = build_change_batch(table, [{"segment_id": 3, "position": 5, "kind": "row", "key": {"k": 1}}])
    dsn = "host=db.internal user=cdc password=s3cr%t-Pa55 dbname=warehouse"

    with (
        pytest.raises(DestinationError) as raised,
        load_boundary("postgres", table, batch, "b-1", secrets=["s3cr%t-Pa55"]),
    ):
        raise RuntimeError(f"could not use {dsn!r} (password s3cr%t-Pa55)")

    assert "s3cr%t-Pa55" not in str(raised.value)
    assert "could not use" in str(raised.value)
