"""Model-based property: whatever the order, replays and duplicates, PostgreSQL converges to Cassandra.

Random changes over a few keys with close write times (so ties happen): inserts with and without TTL,
partial updates, cell tombstones, row, range and partition deletions, static writes, and element
changes and overwrites of a set, a map, a list and a user type. They are cut into batches, delivered
shuffled, replayed under the same load id and duplicated under another one (a second replica), to the
reference model of Cassandra and to a real PostgreSQL (and TimescaleDB-on-PostgreSQL) destination; the
destination's current state must equal the model's, read both before and after the TTLs expire.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.cassandra_schema.types import CqlType, parse_type
from cdc_assets.change_batch import build_change_batch
from cdc_assets.destinations.model import CassandraModel
from cdc_assets.destinations.postgres import PostgresDestination
from cdc_assets.destinations.timescale import TimescaleDestination

NOW = datetime(2030, 1, 1, tzinfo=UTC)
NOW_S = int(NOW.timestamp())
LATER = NOW + timedelta(seconds=60)

ADDRESS = CqlType("udt", (parse_type("int"), parse_type("text")), name="address", field_names=("number", "street"))
TABLE = TableSchema(
    "shop",
    "Orders",
    uuid.UUID("6b2d1e7f-0000-4000-8000-000000000002"),
    (
        Column("k", parse_type("int"), "partition_key", 0),
        Column("c1", parse_type("int"), "clustering", 0),
        Column("c2", parse_type("text"), "clustering", 1, descending=True),
        Column("s", parse_type("text"), "static"),
        Column("v", parse_type("int"), "regular"),
        Column("Note", parse_type("text"), "regular"),
        Column("amount", parse_type("decimal"), "regular"),
        Column("dims", parse_type("frozen<list<int>>"), "regular"),
        Column("tags", parse_type("set<int>"), "regular"),
        Column("scores", parse_type("map<text, int>"), "regular"),
        Column("items", parse_type("list<int>"), "regular"),
        Column("home", ADDRESS, "regular"),
    ),
)

KEYS = st.integers(0, 2)
C1 = st.integers(0, 3)
C2 = st.sampled_from(["a", "b"])
TIMES = st.integers(1, 5)
EXPIRIES = st.sampled_from([NOW_S - 30, NOW_S, NOW_S + 30])

_prefixes = itertools.count()


def timeuuid(tick: int) -> str:
    """A version-1 UUID with timestamp ``tick``: a list element's path."""
    return str(uuid.UUID(fields=(tick, 0, 0x1000, 0x80, 0, 0x0A0B0C0D0E0F)))


@st.composite
def cell_meta(draw: st.DrawFn) -> dict[str, Any]:
    shape = draw(st.sampled_from(["live", "live", "expiring", "tombstone"]))
    expires_at = draw(EXPIRIES) if shape == "expiring" else None
    return {
        "writetime": draw(TIMES),
        "ttl": None if expires_at is None else 60,
        "expires_at": expires_at,
        "deleted": shape == "tombstone",
    }


@st.composite
def simple_cell(draw: st.DrawFn, values: st.SearchStrategy[Any]) -> dict[str, Any]:
    meta = draw(cell_meta())
    return {"value": None if meta["deleted"] else draw(values), **meta}


@st.composite
def collection_cell(draw: st.DrawFn, paths: st.SearchStrategy[Any], values: st.SearchStrategy[Any] | None) -> dict:
    cells = []
    for path in draw(st.lists(paths, max_size=3, unique=True)):
        meta = draw(cell_meta())
        cell = {"path": path, **meta}
        if values is not None:
            cell["value"] = None if meta["deleted"] else draw(values)
        cells.append(cell)
    return {"deletion": draw(st.one_of(st.none(), TIMES)), "cells": cells}


@st.composite
def address_cell(draw: st.DrawFn) -> dict[str, Any]:
    number = draw(st.one_of(st.none(), simple_cell(st.integers(1, 3))))
    street = draw(st.one_of(st.none(), simple_cell(st.sampled_from(["elm", "oak"]))))
    return {"deletion": draw(st.one_of(st.none(), TIMES)), "cells": {"number": number, "street": street}}


REGULARS = {
    "v": simple_cell(st.integers(-2, 2)),
    "Note": simple_cell(st.sampled_from(["x", "y", "é"])),
    "amount": simple_cell(st.sampled_from(["1.5", "-0.25", "10"])),
    "dims": simple_cell(st.lists(st.integers(0, 2), max_size=2)),
    "tags": collection_cell(st.integers(0, 3), None),
    "scores": collection_cell(st.sampled_from(["p", "q"]), st.integers(0, 2)),
    "items": collection_cell(st.integers(0, 3).map(timeuuid), st.integers(0, 2)),
    "home": address_cell(),
}


@st.composite
def row_change(draw: st.DrawFn) -> dict[str, Any]:
    """An INSERT (row liveness, maybe with TTL) or UPDATE of some columns, maybe with a row deletion."""
    change: dict[str, Any] = {"kind": "row", "key": {"k": draw(KEYS)}, "clustering": {"c1": draw(C1), "c2": draw(C2)}}
    if draw(st.booleans()):
        change["row_writetime"] = draw(TIMES)
        if draw(st.booleans()):
            change["row_ttl"] = 60
            change["row_expires_at"] = draw(EXPIRIES)
    names = draw(st.lists(st.sampled_from(sorted(REGULARS)), max_size=4, unique=True))
    change["cells"] = {name: draw(REGULARS[name]) for name in names}
    if draw(st.integers(0, 4)) == 0:
        change["cells"]["s"] = draw(simple_cell(st.sampled_from(["s1", "s2"])))
    if draw(st.integers(0, 5)) == 0:
        change["deletion_writetime"] = draw(TIMES)
    return change


@st.composite
def static_change(draw: st.DrawFn) -> dict[str, Any]:
    return {"kind": "static_row", "key": {"k": draw(KEYS)}, "cells": {"s": draw(simple_cell(st.just("s0")))}}


@st.composite
def partition_deletion(draw: st.DrawFn) -> dict[str, Any]:
    return {"kind": "partition_deletion", "key": {"k": draw(KEYS)}, "deletion_writetime": draw(TIMES)}


BOUNDS = st.one_of(st.none(), st.fixed_dictionaries({"c1": C1}), st.fixed_dictionaries({"c1": C1, "c2": C2}))


@st.composite
def range_deletion(draw: st.DrawFn) -> dict[str, Any]:
    start, end = draw(BOUNDS), draw(BOUNDS)
    return {
        "kind": "range_deletion",
        "key": {"k": draw(KEYS)},
        "deletion_writetime": draw(TIMES),
        "range_start": start,
        "range_start_inclusive": None if start is None else draw(st.booleans()),
        "range_end": end,
        "range_end_inclusive": None if end is None else draw(st.booleans()),
    }


CHANGES = st.one_of(row_change(), row_change(), row_change(), static_change(), partition_deletion(), range_deletion())


@st.composite
def deliveries(draw: st.DrawFn) -> list[tuple[str, list[dict[str, Any]]]]:
    """(load id, changes) in delivery order: batches shuffled, some replayed, some duplicated."""
    changes = draw(st.lists(CHANGES, min_size=1, max_size=20))
    for position, change in enumerate(changes):
        change.update(segment_id=7, position=position)
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(changes) - 1)), max_size=4)))
    bounds = sorted({0, *cuts, len(changes)})
    batches = [(f"b{i}", changes[a:b]) for i, (a, b) in enumerate(itertools.pairwise(bounds))]
    replays = draw(st.lists(st.sampled_from(batches), max_size=2))
    replicas = [(f"{load_id}-replica", part) for load_id, part in draw(st.lists(st.sampled_from(batches), max_size=2))]
    return draw(st.permutations([*batches, *replays, *replicas]))


@pytest.fixture(scope="module")
def shared_dsn(postgres_server: str) -> Iterator[str]:
    """One database for the module; every example gets its own schemas through a fresh prefix."""
    name = f"cdc_convergence_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield make_conninfo(**{**conninfo_to_dict(postgres_server), "dbname": name})
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _converges(destination: PostgresDestination, delivered: list[tuple[str, list[dict[str, Any]]]]) -> None:
    model = CassandraModel(TABLE)
    try:
        for load_id, changes in delivered:
            batch = build_change_batch(TABLE, changes)
            destination.load(TABLE, batch, load_id=load_id)
            model.apply(batch)
        assert destination.current_state(TABLE, now=NOW) == model.current_state(NOW)
        assert destination.current_state(TABLE, now=LATER) == model.current_state(LATER)
    finally:
        destination.close()


SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(delivered=deliveries())
def test_postgres_current_state_equals_the_model_whatever_the_delivery(
    shared_dsn: str, delivered: list[tuple[str, list[dict[str, Any]]]]
) -> None:
    _converges(PostgresDestination(shared_dsn, f"p{next(_prefixes)}_"), delivered)


@settings(SETTINGS, max_examples=20)
@given(delivered=deliveries())
def test_timescale_fallback_current_state_equals_the_model_whatever_the_delivery(
    shared_dsn: str, delivered: list[tuple[str, list[dict[str, Any]]]]
) -> None:
    destination = TimescaleDestination(shared_dsn, f"t{next(_prefixes)}_", allow_plain_postgres=True)
    _converges(destination, delivered)
