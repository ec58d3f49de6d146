"""Model-based convergence, shared by every destination's property test (``test_convergence_*.py``).

``deliveries(table)`` draws random changes of a table over a few keys and close write times (so ties
happen): inserts with and without TTL, partial updates, cell tombstones, static writes, row, range and
partition deletions, element changes and overwrites of collections and user types. They are cut into
batches, delivered shuffled, replayed under the same load id and duplicated under another one (as a
second replica delivers them). ``assert_converges`` feeds a delivery to a destination and to
:class:`CassandraModel`, then compares their current states before and after every TTL has expired.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.cassandra_schema.types import CqlType, parse_type
from cdc_assets.change_batch import build_change_batch
from cdc_assets.destinations.base import Destination
from cdc_assets.destinations.model import CassandraModel, range_bounds

Delivery = list[tuple[str, list[dict[str, Any]]]]

NOW = datetime(2030, 1, 1, tzinfo=UTC)
NOW_S = int(NOW.timestamp())
TTL = 60
# Expiry before, at and after NOW; all of them before LATER.
EXPIRIES = st.sampled_from([NOW_S - 30, NOW_S, NOW_S + 30])
LATER = NOW + timedelta(seconds=TTL)
TIMES = st.integers(1, 5)

ADDRESS = CqlType("udt", (parse_type("int"), parse_type("text")), name="address", field_names=("number", "street"))
# Mixed-case names ("Orders", "Note") check that every identifier is quoted.
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

# Few values per type, so that writes collide; negative numbers and a non-ASCII text because ties
# break on the values' serialized bytes compared unsigned.
_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "int": st.integers(-2, 2),
    "text": st.sampled_from(["x", "y", "é"]),
    "decimal": st.sampled_from(["1.5", "-0.25", "10"]),
}
_KEY_VALUES: dict[str, st.SearchStrategy[Any]] = {"int": st.integers(0, 2), "text": st.sampled_from(["a", "b"])}


def timeuuid(tick: int) -> str:
    """A version-1 UUID with timestamp ``tick``: a list element's path."""
    return str(uuid.UUID(fields=(tick, 0, 0x1000, 0x80, 0, 0x0A0B0C0D0E0F)))


def values(cql: CqlType) -> st.SearchStrategy[Any]:
    """A few values of a scalar or frozen list type."""
    if cql.kind == "list" and cql.frozen:
        return st.lists(values(cql.args[0]), max_size=2)
    if cql.kind not in _VALUES:
        raise ValueError(f"no values drawn for {cql.cql()}: add them to convergence._VALUES")
    return _VALUES[cql.kind]


@st.composite
def cell_meta(draw: st.DrawFn) -> dict[str, Any]:
    """Write time, expiry and tombstone flag of one cell."""
    shape = draw(st.sampled_from(["live", "live", "expiring", "tombstone"]))
    expires_at = draw(EXPIRIES) if shape == "expiring" else None
    return {
        "writetime": draw(TIMES),
        "ttl": None if expires_at is None else TTL,
        "expires_at": expires_at,
        "deleted": shape == "tombstone",
    }


@st.composite
def simple_cell(draw: st.DrawFn, value: st.SearchStrategy[Any]) -> dict[str, Any]:
    meta = draw(cell_meta())
    return {"value": None if meta["deleted"] else draw(value), **meta}


@st.composite
def elements(draw: st.DrawFn, paths: st.SearchStrategy[Any], value: st.SearchStrategy[Any] | None) -> list:
    cells = []
    for path in draw(st.lists(paths, max_size=3, unique=True)):
        meta = draw(cell_meta())
        cell = {"path": path, **meta}
        if value is not None:
            cell["value"] = None if meta["deleted"] else draw(value)
        cells.append(cell)
    return cells


def fields(cql: CqlType) -> st.SearchStrategy[dict[str, Any]]:
    """Cells of some fields of a non-frozen user type."""
    named = zip(cql.field_names, cql.args, strict=True)
    return st.fixed_dictionaries({name: st.one_of(st.none(), simple_cell(values(kind))) for name, kind in named})


def column_cell(cql: CqlType) -> st.SearchStrategy[dict[str, Any]]:
    """One column's cell; for a complex column, element changes, sometimes after an overwrite or DELETE."""
    if not cql.is_complex:
        return simple_cell(values(cql))
    if cql.kind == "set":
        cells = elements(values(cql.args[0]), None)
    elif cql.kind == "map":
        cells = elements(values(cql.args[0]), values(cql.args[1]))
    elif cql.kind == "list":
        cells = elements(st.integers(0, 3).map(timeuuid), values(cql.args[0]))
    else:
        cells = fields(cql)
    return st.fixed_dictionaries({"deletion": st.one_of(st.none(), TIMES), "cells": cells})


def primary_key(columns: tuple[Column, ...]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({column.name: _KEY_VALUES[column.type.kind] for column in columns})


@st.composite
def row_change(draw: st.DrawFn, table: TableSchema) -> dict[str, Any]:
    """An INSERT (row liveness, maybe with TTL) or UPDATE of some columns, maybe with a row deletion."""
    change: dict[str, Any] = {
        "kind": "row",
        "key": draw(primary_key(table.partition_key)),
        "clustering": draw(primary_key(table.clustering)),
    }
    if draw(st.booleans()):
        change["row_writetime"] = draw(TIMES)
        if draw(st.booleans()):
            change["row_ttl"] = TTL
            change["row_expires_at"] = draw(EXPIRIES)
    regulars = {column.name: column.type for column in table.regulars}
    names = draw(st.lists(st.sampled_from(sorted(regulars)), max_size=4, unique=True))
    change["cells"] = {name: draw(column_cell(regulars[name])) for name in names}
    if draw(st.integers(0, 5)) == 0:
        change["deletion_writetime"] = draw(TIMES)
    return change


@st.composite
def row_deletion(draw: st.DrawFn, table: TableSchema) -> dict[str, Any]:
    return {
        "kind": "row",
        "key": draw(primary_key(table.partition_key)),
        "clustering": draw(primary_key(table.clustering)),
        "deletion_writetime": draw(TIMES),
    }


@st.composite
def static_change(draw: st.DrawFn, table: TableSchema) -> dict[str, Any]:
    return {
        "kind": "static_row",
        "key": draw(primary_key(table.partition_key)),
        "cells": {column.name: draw(column_cell(column.type)) for column in table.statics},
    }


@st.composite
def partition_deletion(draw: st.DrawFn, table: TableSchema) -> dict[str, Any]:
    return {
        "kind": "partition_deletion",
        "key": draw(primary_key(table.partition_key)),
        "deletion_writetime": draw(TIMES),
    }


@st.composite
def range_deletion(draw: st.DrawFn, table: TableSchema) -> dict[str, Any]:
    """A deletion between two clustering prefixes (or open ends); most are not inverted."""
    prefixes = (primary_key(table.clustering[:length]) for length in range(1, len(table.clustering) + 1))
    bound = st.one_of(st.none(), *prefixes)
    start, end = draw(bound), draw(bound)
    start_inclusive = None if start is None else draw(st.booleans())
    end_inclusive = None if end is None else draw(st.booleans())
    low, high = range_bounds(table, start, start_inclusive, end, end_inclusive)
    # An inverted range deletes nothing: keep only a few, so that most range deletions hide rows.
    if low >= high and draw(st.integers(0, 3)) > 0:
        start, end = end, start
        start_inclusive, end_inclusive = end_inclusive, start_inclusive
    return {
        "kind": "range_deletion",
        "key": draw(primary_key(table.partition_key)),
        "deletion_writetime": draw(TIMES),
        "range_start": start,
        "range_start_inclusive": start_inclusive,
        "range_end": end,
        "range_end_inclusive": end_inclusive,
    }


def changes(table: TableSchema) -> st.SearchStrategy[dict[str, Any]]:
    """One change of ``table``; partition deletions are rare, since at close write times each would hide
    most of a partition."""
    return st.one_of(
        *[row_change(table)] * 4,
        *[range_deletion(table)] * 2,
        row_deletion(table),
        static_change(table),
        partition_deletion(table),
    )


@st.composite
def deliveries(draw: st.DrawFn, table: TableSchema) -> Delivery:
    """(load id, changes) in delivery order: batches shuffled, some replayed, some duplicated."""
    # A uniform length: lists alone would mostly be short, and long ones are where changes interact.
    length = draw(st.integers(1, 30))
    drawn = draw(st.lists(changes(table), min_size=length, max_size=length))
    for position, change in enumerate(drawn):
        change.update(segment_id=7, position=position)
    cuts = draw(st.sets(st.integers(1, max(1, len(drawn) - 1)), max_size=5))
    bounds = sorted({0, *cuts, len(drawn)})
    batches = [(f"b{i}", drawn[a:b]) for i, (a, b) in enumerate(itertools.pairwise(bounds))]
    replays = draw(st.lists(st.sampled_from(batches), max_size=3))
    replicas = [(f"{load_id}-replica", part) for load_id, part in draw(st.lists(st.sampled_from(batches), max_size=2))]
    return draw(st.permutations([*batches, *replays, *replicas]))


def assert_converges(destination: Destination, table: TableSchema, delivered: Delivery) -> None:
    """Load ``delivered`` into ``destination`` and the model; their current states must be equal at NOW
    and at LATER, when every TTL has expired."""
    model = CassandraModel(table)
    destination.ensure_table(table)
    for load_id, part in delivered:
        batch = build_change_batch(table, part)
        destination.load(table, batch, load_id=load_id)
        model.apply(batch)
    for now in (NOW, LATER):
        assert destination.current_state(table, now=now) == model.current_state(now), f"current state at {now}"
