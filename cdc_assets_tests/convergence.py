"""Model-based convergence, shared by every destination's property test (``test_convergence_*.py``).

``deliveries(table)`` draws random changes of a table over a few keys and close write times (so ties
happen), sometimes at the extremes Cassandra accepts: inserts with and without TTL, partial updates, cell
tombstones, static writes, row, range and partition deletions, element changes and overwrites of collections
and user types; for a counter table (:data:`COUNTERS`), updates holding one leader's shard or several (a
read repair's merged context), with each leader's clock increasing and, rarely, counter tombstones. Some
changes are logged twice (the copy right after the original, mostly in one load). They are cut into batches,
delivered shuffled, replayed under the same load id and duplicated under another one (as a second replica
delivers them). ``cases()`` draws the table too (``tables``): clustering of every orderable type, with or
without a static column. ``assert_converges`` feeds a delivery to a destination and to
:class:`CassandraModel`, then compares their current states before and after every TTL has expired.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from cdc_assets.cassandra_model import CassandraModel
from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.cassandra_schema.types import CqlType, native, parse_type
from cdc_assets.change_batch import build_change_batch
from cdc_assets.commitlog.generator.ordering import UNORDERED_KINDS, sort_unique, struct_field_names
from cdc_assets.destinations.base import Destination
from cdc_assets.destinations.cassandra_values import range_bounds
from cdc_assets_tests.strategies import SCALAR_KINDS, cql_types

Delivery = list[tuple[str, list[dict[str, Any]]]]
Case = tuple[TableSchema, Delivery]

NOW = datetime(2030, 1, 1, tzinfo=UTC)
NOW_S = int(NOW.timestamp())
TTL = 60
# Expiry before, at and after NOW; all of them before LATER.
EXPIRIES = st.sampled_from([NOW_S - 30, NOW_S, NOW_S + 30])
LATER = NOW + timedelta(seconds=TTL)
# Write times mostly close together, so that ties happen; sometimes at the extremes Cassandra accepts (zero,
# negative, past year 9999 in µs as from a client sending nanoseconds, Long.MIN_VALUE + 1, Long.MAX_VALUE).
EXTREME_TIMES = st.sampled_from(
    [0, -1, -(1 << 63) + 1, (1 << 63) - 1, 1_700_000_000_000_000_000, 253_402_300_800_000_000, -62_135_596_800_000_001]
)
TIMES = st.one_of(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5), EXTREME_TIMES)

# A collection field: in a user type (unlike a column) a null collection and an empty one are apart.
ADDRESS = CqlType(
    "udt",
    (parse_type("int"), parse_type("text"), parse_type("frozen<set<text>>")),
    name="address",
    field_names=("number", "street", "flags"),
)
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

# A counter table (only counters beside the key, a static one too), its leaders and their running counts:
# a shard (leader, clock) has one count, so that replica copies of a shard are equal; a clock further
# along holds the count after more increments, which may go down.
COUNTERS = TableSchema(
    "shop",
    "Visits",
    uuid.UUID("6b2d1e7f-0000-4000-8000-000000000003"),
    (
        Column("k", parse_type("int"), "partition_key", 0),
        Column("c1", parse_type("int"), "clustering", 0),
        Column("s", parse_type("counter"), "static"),
        Column("Hits", parse_type("counter"), "regular"),
        Column("total", parse_type("counter"), "regular"),
    ),
)
LEADERS = {b"\x0a" * 16: (1, 3, 2, 7), b"\x0b" * 16: (2, 4, 9, 8), b"\xfc" * 16: (-5, -4, 0, 1)}

# Few values per type, so that writes collide; negative numbers and a non-ASCII text because ties
# break on the values' serialized bytes compared unsigned.
# Every other kind: values each destination keeps exactly (dates and timestamps within years 1-9999, times
# and durations in whole microseconds), with what orders them unlike their text: an IPv4 address after an
# IPv6 one, UUID versions, a time-UUID clock sequence whose sign bit flips the order, an empty blob. No -0.0:
# PostgreSQL identifies it with 0.0 in keys and jsonb (a known limit, not what these properties are about).
_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "int": st.integers(-2, 2),
    "text": st.sampled_from(["x", "y", "é"]),
    "decimal": st.sampled_from(["1.5", "-0.25", "10"]),
    "ascii": st.sampled_from(["A", "b"]),
    "blob": st.sampled_from([b"", b"\x00", b"\x00\x00", b"\xff\x01"]),
    "boolean": st.booleans(),
    "tinyint": st.integers(-1, 1),
    "smallint": st.integers(-1, 1),
    "bigint": st.sampled_from([-(1 << 63), -1, 0, (1 << 63) - 1]),
    "varint": st.sampled_from(["-1", "0", "18446744073709551616"]),
    "float": st.sampled_from([-1.5, 0.0, 2.25]),
    "double": st.sampled_from([-1.5, 0.0, 1e300]),
    "timestamp": st.sampled_from([-1, 0, 1_700_000_000_000]),
    "date": st.sampled_from([-1, 0, 19_000]),
    "time": st.sampled_from([0, 1_000, 86_399_999_999_000]),
    "duration": st.sampled_from([(0, 1, 0), (1, 0, 1_000), (-1, 0, 0)]),
    "uuid": st.sampled_from(
        [
            "00000000-0000-4000-8000-000000000000",
            "ffffffff-ffff-4fff-bfff-ffffffffffff",
            "d2177dd0-eaa2-11de-a572-001b779c76e3",
        ]
    ),
    "timeuuid": st.sampled_from(
        [
            str(uuid.UUID(fields=(tick, 0, 0x1000, clock, 0, 0x0A0B0C0D0E0F)))
            for tick, clock in ((1, 0x7F), (1, 0x80), (2, 0))
        ]
    ),
    "inet": st.sampled_from(["10.0.0.1", "::1", "255.255.255.255"]),
}
_KEY_VALUES: dict[str, st.SearchStrategy[Any]] = {"int": st.integers(0, 2), "text": st.sampled_from(["a", "b"])}


def timeuuid(tick: int) -> str:
    """A version-1 UUID with timestamp ``tick``: a list element's path."""
    return str(uuid.UUID(fields=(tick, 0, 0x1000, 0x80, 0, 0x0A0B0C0D0E0F)))


def values(cql: CqlType) -> st.SearchStrategy[Any]:
    """A few values of a scalar or frozen type, in canonical form (sets and maps in comparator order)."""
    kind = cql.kind
    if kind in ("list", "vector"):
        size = (cql.size, cql.size) if kind == "vector" else (0, 2)
        return st.lists(values(cql.args[0]), min_size=size[0], max_size=size[1])
    if kind == "set":
        return st.lists(values(cql.args[0]), max_size=2).map(lambda items: sort_unique(cql.args[0], items))
    if kind == "map":
        pairs = st.lists(st.tuples(values(cql.args[0]), values(cql.args[1])), max_size=2)
        return pairs.map(lambda items: sort_unique(cql.args[0], items, lambda pair: pair[0]))
    if kind in ("tuple", "udt"):
        named = zip(struct_field_names(cql), cql.args, strict=True)
        return st.fixed_dictionaries({name: st.none() | values(arg) for name, arg in named})
    if kind not in _VALUES:
        raise ValueError(f"no values drawn for {cql.cql()}: add them to convergence._VALUES")
    return _VALUES[kind]


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
def shard(draw: st.DrawFn) -> tuple[bytes, int, int]:
    """A leader's shard (counter id, clock, count); rarely one whose count disagrees with the leader's log,
    as after a lost sstable, so that equal clocks tie."""
    leader = draw(st.sampled_from(sorted(LEADERS)))
    clock = draw(st.integers(1, len(LEADERS[leader])))
    # The leader's count shrinks first: Hypothesis simplifies towards the first branch.
    count = LEADERS[leader][clock - 1] if draw(st.integers(0, 9)) < 9 else draw(st.integers(-3, 3))
    return leader, clock, count


@st.composite
def counter_cell(draw: st.DrawFn) -> dict[str, Any]:
    """A counter cell: one leader's shard (its update), several leaders' (a read repair, a hint), or rarely
    a tombstone."""
    meta = {"writetime": draw(TIMES), "ttl": None, "expires_at": None, "deleted": False}
    if draw(st.integers(0, 7)) == 7:
        return {"value": None, **meta, "deleted": True}
    shards = draw(st.lists(shard(), min_size=1, max_size=3, unique_by=lambda s: s[0]))
    return {"value": sorted(shards), **meta}


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
    if cql.kind == "counter":
        return counter_cell()
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
    return st.fixed_dictionaries(
        {
            column.name: _KEY_VALUES[column.type.kind] if column.type.kind in _KEY_VALUES else _key_values(column.type)
            for column in columns
        }
    )


def _key_values(cql: CqlType) -> st.SearchStrategy[Any]:
    """A clustering value: never empty (an empty clustering value is a static row's)."""
    return values(cql).filter(lambda value: value not in (b"", None, [], {}))


# Every orderable scalar, and frozen types of them: each kind is stored (and its absence in a static row
# spelled) its own way in each destination.
KEY_TYPES = [native(kind) for kind in SCALAR_KINDS if kind not in UNORDERED_KINDS] + [
    parse_type(text, {"address": ADDRESS.freeze()})
    for text in (
        "frozen<list<blob>>",
        "frozen<set<uuid>>",
        "frozen<map<timeuuid, text>>",
        "tuple<inet, decimal>",
        "address",
        "tuple<int, frozen<set<int>>>",
    )
]
# Collections in fields, where (unlike in a column) a null and an empty one are apart.
NESTED_TYPES = [parse_type("tuple<int, frozen<map<int, uuid>>>"), parse_type("tuple<frozen<list<text>>>")]
_VALUE_TYPES = st.one_of(
    st.sampled_from(SCALAR_KINDS).map(native), cql_types(max_depth=1), st.sampled_from(NESTED_TYPES)
)


@st.composite
def tables(draw: st.DrawFn) -> TableSchema:
    """:data:`TABLE`'s partition key and regular columns, with 0-2 clustering columns of any orderable type
    (uuid, timeuuid, inet, blob, decimal, varint, frozen collections, tuples, user types…), each ascending
    or descending; its static column or none; a blob column and a regular column of any frozen type (or a
    tuple with collection fields: :data:`NESTED_TYPES`)."""
    # The first clustering column of each listed type; a second of any orderable frozen type.
    types = [st.sampled_from(KEY_TYPES), cql_types(orderable=True, max_depth=1)]
    clustering = [
        Column(f"c{i + 1}", draw(types[i]), "clustering", i, draw(st.booleans()))
        for i in range(draw(st.sampled_from([1, 2, 2, 0])))
    ]
    statics = list(TABLE.statics) if clustering and draw(st.integers(0, 3)) else []
    # A blob: ties between its cells compare raw bytes, which no other column stages as they are.
    drawn = [Column("raw", native("blob"), "regular"), Column("x", draw(_VALUE_TYPES), "regular")]
    columns = (*TABLE.partition_key, *clustering, *statics, *TABLE.regulars, *drawn)
    return TableSchema(TABLE.keyspace, TABLE.name, TABLE.id, columns)


def cases() -> st.SearchStrategy[Case]:
    """A table of :func:`tables` and a delivery of its changes."""
    return tables().flatmap(lambda table: deliveries(table).map(lambda delivered: (table, delivered)))


@st.composite
def row_change(draw: st.DrawFn, table: TableSchema) -> dict[str, Any]:
    """An INSERT (row liveness, maybe with TTL) or UPDATE of some columns, maybe with a row deletion."""
    change: dict[str, Any] = {
        "kind": "row",
        "key": draw(primary_key(table.partition_key)),
        "clustering": draw(primary_key(table.clustering)),
    }
    # A counter table takes no INSERT: no row liveness.
    if draw(st.booleans()) and not _is_counter_table(table):
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


def _is_counter_table(table: TableSchema) -> bool:
    return any(column.type.kind == "counter" for column in table.value_columns)


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
        *([range_deletion(table)] * 2 if table.clustering else []),
        row_deletion(table),
        *([static_change(table)] if table.statics else []),
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
    # A mutation logged twice (a replica's copy, a hint): the copy right after the original, mostly in one load.
    for index in sorted(draw(st.sets(st.integers(0, len(drawn) - 1), max_size=3)), reverse=True):
        drawn.insert(index + 1, {**drawn[index], "segment_id": 8})
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
