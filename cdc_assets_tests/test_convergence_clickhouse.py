"""Model-based property: whatever the order, replays and duplicates, ClickHouse converges to Cassandra.

Random changes (inserts with and without TTL, partial updates, cell, row, range and partition deletions,
static updates, collection and user-type element changes and overwrites) over a few keys and close
write times (so ties happen), cut into batches delivered shuffled, replayed under the same load id and
duplicated under another (as a second replica would deliver them). The reference model of Cassandra's
semantics applies every delivery too; ClickHouse's current state must equal the model's.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.cassandra_schema.types import CqlType, parse_type
from cdc_assets.change_batch import build_change_batch
from cdc_assets.destinations.clickhouse import ClickHouseDestination
from cdc_assets.destinations.model import CassandraModel

pytest_plugins = ["cdc_assets_tests.chdb_fixture"]

NOW = datetime(2030, 1, 1, tzinfo=UTC)
NOW_S = int(NOW.timestamp())

ADDRESS = CqlType("udt", (parse_type("int"), parse_type("text")), name="address", field_names=("number", "street"))
TABLE = TableSchema(
    "shop",
    "events",
    uuid.UUID("5a1c0d6e-0000-4000-8000-000000000001"),
    (
        Column("k", parse_type("int"), "partition_key", 0),
        Column("c1", parse_type("int"), "clustering", 0),
        Column("c2", parse_type("text"), "clustering", 1, descending=True),
        Column("s", parse_type("int"), "static"),
        Column("v", parse_type("int"), "regular"),
        Column("w", parse_type("text"), "regular"),
        Column("tags", parse_type("set<int>"), "regular"),
        Column("scores", parse_type("map<text, int>"), "regular"),
        Column("items", parse_type("list<int>"), "regular"),
        Column("home", ADDRESS, "regular"),
    ),
)

KEYS = st.integers(0, 1)
C1 = st.integers(0, 1)
C2 = st.sampled_from(["a", "b"])
TIMES = st.integers(1, 4)
# Expiry before, at and after the moment the state is read.
EXPIRIES = st.sampled_from([NOW_S - 50, NOW_S, NOW_S + 50])


def timeuuid(tick: int) -> str:
    """A version-1 UUID with timestamp ``tick``: a list element's path."""
    return str(uuid.UUID(fields=(tick, 0, 0x1000, 0x80, 0, 0x0A0B0C0D0E0F)))


@st.composite
def cell_parts(draw: st.DrawFn) -> dict[str, Any]:
    """Write time, expiry and tombstone flag of one cell."""
    writetime = draw(TIMES)
    shape = draw(st.sampled_from(["live", "live", "expiring", "tombstone"]))
    expires_at = draw(EXPIRIES) if shape == "expiring" else None
    ttl = 100 if expires_at is not None else None
    return {"writetime": writetime, "ttl": ttl, "expires_at": expires_at, "deleted": shape == "tombstone"}


@st.composite
def simple_cell(draw: st.DrawFn, values: st.SearchStrategy[Any]) -> dict[str, Any]:
    parts = draw(cell_parts())
    return {"value": None if parts["deleted"] else draw(values), **parts}


@st.composite
def elements(draw: st.DrawFn, paths: st.SearchStrategy[Any], values: st.SearchStrategy[Any] | None) -> list:
    cells = []
    for path in draw(st.lists(paths, max_size=3, unique=True)):
        parts = draw(cell_parts())
        element = {"path": path, **parts}
        if values is not None:
            element["value"] = None if parts["deleted"] else draw(values)
        cells.append(element)
    return cells


@st.composite
def complex_cell(draw: st.DrawFn, cells: st.SearchStrategy[Any]) -> dict[str, Any]:
    """Element changes, sometimes after a whole-collection deletion (an overwrite or a DELETE)."""
    deletion = draw(st.one_of(st.none(), TIMES))
    return {"deletion": deletion, "cells": draw(cells)}


@st.composite
def address_cells(draw: st.DrawFn) -> dict[str, Any]:
    number = draw(st.one_of(st.none(), simple_cell(st.integers(1, 3))))
    street = draw(st.one_of(st.none(), simple_cell(st.sampled_from(["elm", "oak"]))))
    return {"number": number, "street": street}


REGULAR_CELLS = {
    "v": simple_cell(st.integers(-2, 2)),
    "w": simple_cell(st.sampled_from(["x", "y", "zz"])),
    "tags": complex_cell(elements(st.integers(0, 3), None)),
    "scores": complex_cell(elements(st.sampled_from(["p", "q"]), st.integers(0, 2))),
    "items": complex_cell(elements(st.integers(0, 3).map(timeuuid), st.integers(0, 2))),
    "home": complex_cell(address_cells()),
}


@st.composite
def row_change(draw: st.DrawFn) -> dict[str, Any]:
    """An INSERT (row liveness, maybe with TTL) or an UPDATE of some columns, maybe with a row deletion."""
    change: dict[str, Any] = {"kind": "row", "key": {"k": draw(KEYS)}, "clustering": {"c1": draw(C1), "c2": draw(C2)}}
    if draw(st.booleans()):
        change["row_writetime"] = draw(TIMES)
        if draw(st.booleans()):
            change["row_ttl"] = 100
            change["row_expires_at"] = draw(EXPIRIES)
    names = draw(st.lists(st.sampled_from(sorted(REGULAR_CELLS)), max_size=4, unique=True))
    change["cells"] = {name: draw(REGULAR_CELLS[name]) for name in names}
    if draw(st.integers(0, 5)) == 0:
        change["deletion_writetime"] = draw(TIMES)
    return change


@st.composite
def row_deletion(draw: st.DrawFn) -> dict[str, Any]:
    key, clustering = {"k": draw(KEYS)}, {"c1": draw(C1), "c2": draw(C2)}
    return {"kind": "row", "key": key, "clustering": clustering, "deletion_writetime": draw(TIMES)}


@st.composite
def static_change(draw: st.DrawFn) -> dict[str, Any]:
    change: dict[str, Any] = {"kind": "static_row", "key": {"k": draw(KEYS)}}
    change["cells"] = {"s": draw(simple_cell(st.integers(0, 2)))}
    return change


@st.composite
def partition_deletion(draw: st.DrawFn) -> dict[str, Any]:
    return {"kind": "partition_deletion", "key": {"k": draw(KEYS)}, "deletion_writetime": draw(TIMES)}


@st.composite
def bound(draw: st.DrawFn) -> dict[str, Any] | None:
    return draw(st.one_of(st.none(), st.builds(lambda c1: {"c1": c1}, C1), st.fixed_dictionaries({"c1": C1, "c2": C2})))


def clustering_position(bound: dict[str, Any]) -> tuple[int, ...]:
    """A bound's place in clustering order (c2 is descending)."""
    return (bound["c1"], -ord(bound["c2"])) if "c2" in bound else (bound["c1"],)


@st.composite
def range_deletion(draw: st.DrawFn) -> dict[str, Any]:
    start, end = draw(bound()), draw(bound())
    if start is not None and end is not None:
        common = min(len(start), len(end))
        if clustering_position(start)[:common] > clustering_position(end)[:common]:
            # Mostly non-empty ranges: an inverted one deletes nothing.
            start, end = end, start
    return {
        "kind": "range_deletion",
        "key": {"k": draw(KEYS)},
        "deletion_writetime": draw(TIMES),
        "range_start": start,
        "range_start_inclusive": None if start is None else draw(st.booleans()),
        "range_end": end,
        "range_end_inclusive": None if end is None else draw(st.booleans()),
    }


# Partition deletions are rare: at close write times each would hide most of a partition.
CHANGES = st.one_of(*[row_change()] * 4, *[range_deletion()] * 2, row_deletion(), static_change(), partition_deletion())


@st.composite
def deliveries(draw: st.DrawFn) -> list[tuple[str, list[dict[str, Any]]]]:
    """(load id, changes) in delivery order: batches shuffled, some replayed, some duplicated."""
    changes = draw(st.lists(CHANGES, min_size=10, max_size=30))
    for position, change in enumerate(changes):
        change.update(segment_id=1, position=position)
    cuts = sorted(draw(st.sets(st.integers(1, len(changes) - 1), max_size=5))) if len(changes) > 1 else []
    bounds = [0, *cuts, len(changes)]
    batches = [(f"batch-{i}", changes[a:b]) for i, (a, b) in enumerate(itertools.pairwise(bounds))]
    order = draw(st.permutations(batches))
    replays = draw(st.lists(st.sampled_from(batches), max_size=3))
    duplicates = [
        (f"{load_id}-replica", batch) for load_id, batch in draw(st.lists(st.sampled_from(batches), max_size=2))
    ]
    return draw(st.permutations([*order, *replays, *duplicates]))


@settings(max_examples=45, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example])
@given(delivered=deliveries())
def test_clickhouse_current_state_equals_the_model_whatever_the_delivery(
    clickhouse_factory: Callable[[Path | None], ClickHouseDestination],
    delivered: list[tuple[str, list[dict[str, Any]]]],
) -> None:
    destination = clickhouse_factory(None)
    model = CassandraModel(TABLE)
    destination.ensure_table(TABLE)
    try:
        for load_id, changes in delivered:
            batch = build_change_batch(TABLE, changes)
            destination.load(TABLE, batch, load_id=load_id)
            model.apply(batch)
        assert destination.current_state(TABLE, now=NOW) == model.current_state(NOW)
    finally:
        destination.close()
