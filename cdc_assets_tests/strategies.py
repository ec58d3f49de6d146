"""Hypothesis strategies for CQL types, tables, values and changes, valid as Cassandra would accept them.

Values and changes come out in canonical form (what a reader gives back): set elements and map entries
in comparator order, collection cells in path order, decimals as the reader formats them. A change
strategy's output goes straight into ``encode_mutation``; ``mutations`` draws several changes of one
partition that one mutation can hold together.
"""

from __future__ import annotations

import ipaddress
import uuid
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.cassandra_schema.types import NATIVE_TYPES, CqlType, native
from cdc_assets.change_batch import KIND_PARTITION_DELETION, KIND_RANGE_DELETION, KIND_ROW, KIND_STATIC_ROW
from cdc_assets.commitlog.generator.encoding import canonical_change
from cdc_assets.commitlog.generator.ordering import (
    CLUSTERING,
    UNORDERED_KINDS,
    ClusteringOrder,
    sort_unique,
    struct_field_names,
)

# Every native type but counter, which only counter tables may hold.
SCALAR_KINDS = tuple(sorted(NATIVE_TYPES - {"counter"}))
_NS_PER_DAY = 86_400 * 10**9
_MAX_TTL = 630_720_000  # Cassandra caps TTLs at 20 years.
# Column names that exercise Cassandra's column order: case, digits, a shared prefix, non-ASCII first bytes.
_NAME_CHARS = "abcxyzAZ09_éß日"


def _is_orderable(cql: CqlType) -> bool:
    return cql.kind not in UNORDERED_KINDS and all(_is_orderable(arg) for arg in cql.args)


def scalar_types(*, orderable: bool = False) -> st.SearchStrategy[CqlType]:
    """Every native CQL type but counter (``orderable`` leaves out duration, which has no order)."""
    kinds = [k for k in SCALAR_KINDS if not (orderable and k in UNORDERED_KINDS)]
    return st.sampled_from(kinds).map(native)


def _field_names(count: int) -> st.SearchStrategy[tuple[str, ...]]:
    return st.lists(st.text(_NAME_CHARS, min_size=1, max_size=6), min_size=count, max_size=count, unique=True).map(
        tuple
    )


@st.composite
def _udt(draw: st.DrawFn, fields: st.SearchStrategy[CqlType], frozen: bool) -> CqlType:
    args = tuple(draw(st.lists(fields, min_size=1, max_size=3)))
    names = draw(_field_names(len(args)))
    name = draw(st.sampled_from(("address", "money", "point", "tag")))
    return CqlType("udt", args, frozen, name, names)


def cql_types(*, orderable: bool = False, max_depth: int = 2) -> st.SearchStrategy[CqlType]:
    """Frozen value types: scalars, frozen collections, tuples, frozen UDTs and (unless ``orderable``) vectors.

    ``orderable`` types can be clustering values, set elements and map keys.
    """
    base = scalar_types(orderable=orderable)

    def extend(inner: st.SearchStrategy[CqlType]) -> st.SearchStrategy[CqlType]:
        keys = inner.filter(_is_orderable)
        options = [
            inner.map(lambda t: CqlType("list", (t,), frozen=True)),
            keys.map(lambda t: CqlType("set", (t,), frozen=True)),
            st.tuples(keys, inner).map(lambda kv: CqlType("map", kv, frozen=True)),
            st.lists(inner, min_size=1, max_size=3).map(lambda ts: CqlType("tuple", tuple(ts), frozen=True)),
            _udt(inner, frozen=True),
        ]
        if not orderable:
            vector_elements = st.sampled_from(("float", "int", "bigint", "double", "text", "uuid")).map(native)
            options.append(
                st.tuples(vector_elements, st.integers(1, 4)).map(
                    lambda es: CqlType("vector", (es[0],), frozen=True, size=es[1])
                )
            )
        return st.one_of(*options)

    types = base
    for _ in range(max_depth):
        types = st.one_of(base, extend(types))
    return types


def column_types() -> st.SearchStrategy[CqlType]:
    """Types a regular or static column can have: frozen ones, and non-frozen list, set, map and UDT."""
    element = cql_types(max_depth=1)
    key = cql_types(orderable=True, max_depth=1)
    return st.one_of(
        cql_types(),
        element.map(lambda t: CqlType("list", (t,))),
        key.map(lambda t: CqlType("set", (t,))),
        st.tuples(key, element).map(lambda kv: CqlType("map", kv)),
        _udt(element, frozen=False),
    )


@st.composite
def tables(draw: st.DrawFn, *, counters: bool | None = None) -> TableSchema:
    """A table Cassandra accepts: 1-2 partition key columns, 0-2 clustering, 0-2 static, 1-5 regular.

    Keys hold no complex, counter, duration or vector values; a counter table has only counter columns
    besides its primary key. ``counters`` forces one kind of table.
    """
    is_counter = draw(st.booleans()) if counters is None else counters
    key_count = draw(st.integers(1, 2))
    clustering_count = draw(st.integers(0, 2))
    static_count = draw(st.integers(0, 2)) if clustering_count else 0
    regular_count = draw(st.integers(1, 5))
    total = key_count + clustering_count + static_count + regular_count
    names = draw(st.lists(st.text(_NAME_CHARS, min_size=1, max_size=8), min_size=total, max_size=total, unique=True))
    key_type = cql_types(orderable=True, max_depth=1)
    value_type = st.just(native("counter")) if is_counter else column_types()
    columns = [Column(names.pop(), draw(key_type), "partition_key", i) for i in range(key_count)]
    columns += [
        Column(names.pop(), draw(key_type), "clustering", i, draw(st.booleans())) for i in range(clustering_count)
    ]
    columns += [Column(names.pop(), draw(value_type), "static") for _ in range(static_count)]
    columns += [Column(names.pop(), draw(value_type), "regular") for _ in range(regular_count)]
    table_id = uuid.UUID(int=draw(st.integers(0, (1 << 128) - 1)), version=1)
    return TableSchema("ks", f"t{draw(st.integers(0, 999))}", table_id, tuple(columns))


def _decimals() -> st.SearchStrategy[str]:
    # Formatted as the reader formats unscaled * 10^-scale; 28 digits stay exact in Python's default context.
    unscaled = st.integers(-(10**27), 10**27)
    return st.tuples(unscaled, st.integers(-20, 20)).map(lambda us: str(Decimal(us[0]).scaleb(-us[1])))


def _counter_shards() -> st.SearchStrategy[list[tuple[bytes, int, int]]]:
    """A counter cell's shards: one leader's, as the leader logs it, or several, as a read repair or a hint
    logs the merged context; in counter id order (as the context holds them), any clocks and counts."""
    leader = st.one_of(
        st.sampled_from([bytes([n]) * 16 for n in (0x01, 0x7F, 0x80, 0xFF)]), st.binary(min_size=16, max_size=16)
    )
    shard = st.tuples(leader, st.integers(-(1 << 63), (1 << 63) - 1), st.integers(-(1 << 63), (1 << 63) - 1))
    shards = st.lists(shard, min_size=1, max_size=3, unique_by=lambda s: s[0])
    return shards.map(lambda drawn: sorted(drawn, key=lambda s: s[0]))


@st.composite
def _durations(draw: st.DrawFn) -> tuple[int, int, int]:
    # Cassandra rejects a duration whose parts have different signs.
    sign = draw(st.sampled_from((1, -1)))
    months = draw(st.integers(0, (1 << 31) - 1))
    days = draw(st.integers(0, (1 << 31) - 1))
    nanos = draw(st.integers(0, (1 << 63) - 1))
    return sign * months, sign * days, sign * nanos


def _scalar_values(kind: str, nonempty: bool) -> st.SearchStrategy[Any]:
    size = 1 if nonempty else 0
    strategies: dict[str, st.SearchStrategy[Any]] = {
        "ascii": st.text(st.characters(max_codepoint=127), min_size=size, max_size=12),
        "text": st.text(min_size=size, max_size=12),
        "blob": st.binary(min_size=size, max_size=16),
        "boolean": st.booleans(),
        "tinyint": st.integers(-(1 << 7), (1 << 7) - 1),
        "smallint": st.integers(-(1 << 15), (1 << 15) - 1),
        "int": st.integers(-(1 << 31), (1 << 31) - 1),
        "bigint": st.integers(-(1 << 63), (1 << 63) - 1),
        "counter": _counter_shards(),
        "float": st.floats(width=32, allow_nan=False),
        "double": st.floats(allow_nan=False),
        "varint": st.integers(-(1 << 200), 1 << 200).map(str),
        "decimal": _decimals(),
        # Arrow's timestamp[ms] and date32 ranges, which hold every value Cassandra's types do in practice.
        "timestamp": st.integers(-(1 << 62), 1 << 62),
        "date": st.integers(-(1 << 31), (1 << 31) - 1),
        "time": st.integers(0, _NS_PER_DAY - 1),
        "duration": _durations(),
        "uuid": st.uuids().map(str),
        "timeuuid": st.uuids(version=1).map(str),
        "inet": st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(lambda a: str(ipaddress.ip_address(a))),
    }
    return strategies[kind]


def values(cql: CqlType, *, nonempty: bool = False) -> st.SearchStrategy[Any]:
    """Values of ``cql`` in canonical Python form; ``nonempty`` avoids zero-length values (partition keys)."""
    if cql.kind not in ("list", "set", "map", "tuple", "udt", "vector"):
        return _scalar_values(cql.kind, nonempty)
    if cql.kind == "list":
        return st.lists(values(cql.args[0]), max_size=3)
    if cql.kind == "set":
        return st.lists(values(cql.args[0]), max_size=3).map(lambda items: sort_unique(cql.args[0], items))
    if cql.kind == "map":
        pairs = st.lists(st.tuples(values(cql.args[0]), values(cql.args[1])), max_size=3)
        return pairs.map(lambda items: sort_unique(cql.args[0], items, lambda pair: pair[0]))
    if cql.kind == "vector":
        return st.lists(values(cql.args[0]), min_size=cql.size, max_size=cql.size)
    fields = zip(struct_field_names(cql), cql.args)
    return st.fixed_dictionaries({name: st.none() | values(arg) for name, arg in fields})


class _Times:
    """Write times, TTLs and local deletion times valid for a commit log version's messaging version."""

    def __init__(self, version: int):
        # Messaging 13 (version 8) reads deletion times as unsigned 32-bit; earlier ones as signed.
        self.ldt = st.integers(0, (1 << 32) - 2 if version >= 8 else (1 << 31) - 1)
        # Client-supplied timestamps can be anything a long holds; keep clear of LIVE (Long.MIN_VALUE).
        self.writetime = st.one_of(
            st.integers(1_600_000_000_000_000, 1_800_000_000_000_000), st.integers(-(1 << 62), 1 << 62)
        )
        self.ttl = st.integers(1, _MAX_TTL)


@st.composite
def _cell(draw: st.DrawFn, times: _Times, value: st.SearchStrategy[Any] | None, ttl_allowed: bool) -> dict[str, Any]:
    cell: dict[str, Any] = {"writetime": draw(times.writetime), "ttl": None, "expires_at": None, "deleted": False}
    if draw(st.integers(0, 4)) == 0:
        cell["deleted"] = True
        if value is not None:
            cell["value"] = None
        return cell
    if value is not None:
        cell["value"] = draw(value)
    if ttl_allowed and draw(st.booleans()):
        cell["ttl"], cell["expires_at"] = draw(times.ttl), draw(times.ldt)
    return cell


def _column_data(column: Column, times: _Times) -> st.SearchStrategy[Any]:
    cql = column.type
    counter = cql.kind == "counter"
    if not cql.is_complex:
        return _cell(times, values(cql), not counter)
    if cql.kind == "udt":
        field_cells = {name: _cell(times, values(arg), True) for name, arg in zip(cql.field_names, cql.args)}
        cells: st.SearchStrategy[Any] = st.fixed_dictionaries({}, optional=field_cells)
    else:
        path = values(native("timeuuid")) if cql.kind == "list" else values(cql.args[0])
        item = None if cql.kind == "set" else values(cql.args[-1])
        element = st.tuples(path, _cell(times, item, True)).map(lambda pc: {"path": pc[0], **pc[1]})
        path_type = native("timeuuid") if cql.kind == "list" else cql.args[0]
        cells = st.lists(element, max_size=3).map(lambda cs: sort_unique(path_type, cs, lambda c: c["path"]))
    data = st.fixed_dictionaries({"deletion": st.none() | times.writetime, "cells": cells})
    return data.filter(lambda d: d["deletion"] is not None or d["cells"])


@st.composite
def _row(draw: st.DrawFn, table: TableSchema, key: dict[str, Any], times: _Times, static: bool) -> dict[str, Any]:
    columns = table.statics if static else table.regulars
    change: dict[str, Any] = {"kind": KIND_STATIC_ROW if static else KIND_ROW, "key": key}
    if not static:
        change["clustering"] = {c.name: draw(values(c.type)) for c in table.clustering}
    counter = any(c.type.kind == "counter" for c in columns)
    if not counter and draw(st.booleans()):
        change["row_writetime"] = draw(times.writetime)
        if draw(st.booleans()):
            change["row_ttl"], change["row_expires_at"] = draw(times.ttl), draw(times.ldt)
    if not static and draw(st.integers(0, 3)) == 0:
        change["deletion_writetime"], change["deletion_time"] = draw(times.writetime), draw(times.ldt)
    chosen = draw(st.lists(st.sampled_from(columns), unique_by=lambda c: c.name, max_size=len(columns)))
    cells = {c.name: draw(_column_data(c, times)) for c in chosen}
    if cells:
        change["cells"] = cells
    if len(change) == 2 + (not static):
        # A row must carry something: give it at least one cell.
        column = draw(st.sampled_from(columns))
        change["cells"] = {column.name: draw(_column_data(column, times))}
    return change


@st.composite
def _range(draw: st.DrawFn, table: TableSchema, key: dict[str, Any], times: _Times) -> dict[str, Any]:
    clustering = table.clustering
    order = ClusteringOrder(clustering)

    def prefix() -> tuple[Any, ...]:
        size = draw(st.integers(1, len(clustering)))
        return tuple(draw(values(c.type)) for c in clustering[:size])

    def bound(values_: tuple[Any, ...] | None) -> dict[str, Any] | None:
        if values_ is None:
            return None
        return {c.name: values_[i] if i < len(values_) else None for i, c in enumerate(clustering)}

    start = None if draw(st.integers(0, 4)) == 0 else prefix()
    end = None if draw(st.integers(0, 4)) == 0 else prefix()
    start_inclusive = start is None or draw(st.booleans())
    end_inclusive = end is None or draw(st.booleans())
    if start is not None and end is not None:
        if order.compare((start, CLUSTERING), (end, CLUSTERING)) > 0:
            start, end = end, start
        start_kind = 1 if start_inclusive else 7
        end_kind = 6 if end_inclusive else 0
        if order.compare((start, start_kind), (end, end_kind)) >= 0:
            # An empty slice: Cassandra drops it. Deleting one prefix (c1 = x) is the closest valid range.
            end, start_inclusive, end_inclusive = start, True, True
    return {
        "kind": KIND_RANGE_DELETION,
        "key": key,
        "deletion_writetime": draw(times.writetime),
        "deletion_time": draw(times.ldt),
        "range_start": bound(start),
        "range_start_inclusive": start_inclusive,
        "range_end": bound(end),
        "range_end_inclusive": end_inclusive,
    }


def _key(table: TableSchema) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({c.name: values(c.type, nonempty=True) for c in table.partition_key})


@st.composite
def changes(draw: st.DrawFn, table: TableSchema, *, version: int = 7, key: dict[str, Any] | None = None) -> dict:
    """One valid change of any kind the table allows, in canonical form."""
    key = draw(_key(table)) if key is None else key
    times = _Times(version)
    kinds = [KIND_ROW, KIND_PARTITION_DELETION]
    if table.statics:
        kinds.append(KIND_STATIC_ROW)
    if table.clustering:
        kinds.append(KIND_RANGE_DELETION)
    kind = draw(st.sampled_from(kinds))
    if kind == KIND_PARTITION_DELETION:
        change = {
            "kind": kind,
            "key": key,
            "deletion_writetime": draw(times.writetime),
            "deletion_time": draw(times.ldt),
        }
    elif kind == KIND_RANGE_DELETION:
        change = draw(_range(table, key, times))
    else:
        change = draw(_row(table, key, times, static=kind == KIND_STATIC_ROW))
    return canonical_change(table, change)


@st.composite
def mutations(draw: st.DrawFn, table: TableSchema, *, version: int = 7) -> list[dict]:
    """Changes of one partition that one mutation holds together (rows unique, one static row, one range)."""
    key = draw(_key(table))
    drawn = draw(st.lists(changes(table, version=version, key=key), min_size=1, max_size=5))
    order = ClusteringOrder(table.clustering)
    kept: list[dict] = []
    for change in drawn:
        if change["kind"] != KIND_ROW:
            if all(other["kind"] != change["kind"] for other in kept):
                kept.append(change)
            continue
        position = (tuple(change.get("clustering", {}).values()), CLUSTERING)
        if all(
            other["kind"] != KIND_ROW
            or order.compare((tuple(other.get("clustering", {}).values()), CLUSTERING), position) != 0
            for other in kept
        ):
            kept.append(change)
    return kept
