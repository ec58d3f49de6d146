"""Mutation encoding (format notes, sections 10 and 11): change dicts to the bytes a Cassandra node logs.

This is the inverse of the reader. A change dict has the keyword names of ``ChangeBatchBuilder.add``
(``segment_id`` and ``position`` are ignored) and values in the Python form ``cdc_assets.change_batch``
documents. Where the change batch does not carry what the bytes need, the encoder supplies what a node
would: a cell tombstone's and a collection deletion's local deletion time is its write time in seconds.
A counter cell's value is its shards, written as a context of global shards.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.cassandra_schema.types import CqlType
from cdc_assets.change_batch import KIND_PARTITION_DELETION, KIND_RANGE_DELETION, KIND_ROW, KIND_STATIC_ROW
from cdc_assets.commitlog.generator.cql_values import (
    canonical_value,
    counter_context,
    value_serializer,
    with_length,
    write_value,
)
from cdc_assets.commitlog.generator.ordering import (
    CLUSTERING,
    EXCL_END_BOUND,
    EXCL_END_INCL_START_BOUNDARY,
    EXCL_START_BOUND,
    INCL_END_BOUND,
    INCL_END_EXCL_START_BOUNDARY,
    INCL_START_BOUND,
    ClusteringOrder,
    column_sort_key,
    sort_unique,
    struct_field_names,
)
from cdc_assets.commitlog.primitives import (
    DELETION_TIME_EPOCH,
    LIVE_TIMESTAMP,
    MASK32,
    TIMESTAMP_EPOCH,
    s32,
    s64,
)
from cdc_assets.vints import write_uvint

# Commit log version -> messaging version its mutations are serialized with (format notes, section 1).
MESSAGING_VERSIONS = {6: 10, 7: 12, 8: 13}

# Partition flags (10.3), row flags (10.6), cell flags (10.8).
_HAS_PARTITION_DELETION = 0x04
_HAS_STATIC_ROW = 0x08
_HAS_ROW_ESTIMATE = 0x10
_END_OF_PARTITION = b"\x01"
_IS_MARKER = 0x02
_HAS_TIMESTAMP = 0x04
_HAS_TTL = 0x08
_HAS_DELETION = 0x10
_HAS_ALL_COLUMNS = 0x20
_HAS_COMPLEX_DELETION = 0x40
_EXTENSION_FLAG = 0x80
_IS_STATIC = 0x01
_CELL_IS_DELETED = 0x01
_CELL_IS_EXPIRING = 0x02
_CELL_HAS_EMPTY_VALUE = 0x04
_CELL_USE_ROW_TIMESTAMP = 0x08
_CELL_USE_ROW_TTL = 0x10

# DeletionTime.LIVE's local deletion time: Integer.MAX_VALUE up to 4.1, Long.MAX_VALUE in 5.0 (messaging 13).
_LIVE_LDT = {10: 0x7FFFFFFF, 12: 0x7FFFFFFF, 13: (1 << 63) - 1}


def partition_key_bytes(table: TableSchema, key: Mapping[str, Any]) -> bytes:
    """The partition key as Cassandra's partitioner sees it: raw for one column, CompositeType for more (11.3)."""
    return _key_bytes(table, _layout(table).partition_key, key)


def _key_bytes(table: TableSchema, columns: Sequence[Column], key: Mapping[str, Any]) -> bytes:
    try:
        raws = [value_serializer(c.type)(key[c.name]) for c in columns]
    except KeyError as error:
        raise ValueError(f"partition key of {table.qualified_name} misses column {error}") from None
    if len(raws) == 1:
        return raws[0]
    return b"".join(len(raw).to_bytes(2, "big") + raw + b"\x00" for raw in raws)


# ---------------------------------------------------------------------------------------------------
# The partition update model, in the order and form Cassandra serializes it


@dataclass(frozen=True)
class _Layout:
    """What encoding needs of a table, computed once per table definition."""

    partition_key: tuple[Column, ...]
    clustering: tuple[Column, ...]
    order: ClusteringOrder
    # Position of each static or regular column in Cassandra's column order.
    rank: dict[str, int]


@functools.lru_cache(maxsize=1024)
def _layout(table: TableSchema) -> _Layout:
    ordered = sorted(table.value_columns, key=column_sort_key)
    return _Layout(
        table.partition_key,
        table.clustering,
        ClusteringOrder(table.clustering),
        {c.name: i for i, c in enumerate(ordered)},
    )


@dataclass
class _Cell:
    timestamp: int
    ttl: int | None
    ldt: int | None
    value: bytes
    path: bytes | None = None

    @property
    def deleted(self) -> bool:
        return self.ldt is not None and self.ttl is None


@dataclass
class _ColumnData:
    column: Column
    cells: list[_Cell]
    deletion: tuple[int, int] | None = None


@dataclass
class _Row:
    clustering: tuple[Any, ...]
    liveness: tuple[int, int | None, int | None] | None
    deletion: tuple[int, int] | None
    columns: list[_ColumnData]
    is_static: bool = False


@dataclass
class _Range:
    start: tuple[tuple[Any, ...], int]
    end: tuple[tuple[Any, ...], int]
    deletion: tuple[int, int]


@dataclass
class _Stats:
    """``EncodingStats.Collector``: the minimum timestamp, local deletion time and TTL of an update."""

    timestamps: list[int] = field(default_factory=list)
    ldts: list[int] = field(default_factory=list)
    ttls: list[int] = field(default_factory=list)

    def deletion(self, deletion: tuple[int, int] | None) -> None:
        if deletion is not None:
            self.timestamps.append(deletion[0])
            self.ldts.append(deletion[1])

    def cell(self, cell: _Cell) -> None:
        self.timestamps.append(cell.timestamp)
        if cell.ldt is not None:
            self.ldts.append(cell.ldt)
        if cell.ttl is not None:
            self.ttls.append(cell.ttl)

    def row(self, row: _Row) -> None:
        if row.liveness is not None:
            timestamp, ttl, ldt = row.liveness
            self.timestamps.append(timestamp)
            if ttl is not None:
                self.ttls.append(ttl)
                self.ldts.append(ldt)  # type: ignore[arg-type]
        self.deletion(row.deletion)
        for data in row.columns:
            self.deletion(data.deletion)
            for cell in data.cells:
                self.cell(cell)

    def minimums(self) -> tuple[int, int, int]:
        return (
            min(self.timestamps, default=TIMESTAMP_EPOCH),
            min(self.ldts, default=DELETION_TIME_EPOCH),
            min(self.ttls, default=0),
        )


class _Writer:
    """Serializes one partition update's parts against its EncodingStats (10.4)."""

    def __init__(self, layout: _Layout, messaging_version: int, stats: tuple[int, int, int]):
        self.messaging_version = messaging_version
        self.min_timestamp, self.min_ldt, self.min_ttl = stats
        self.clustering_types = [c.type for c in layout.clustering]
        self.out = bytearray()

    def timestamp(self, value: int) -> None:
        self.out += write_uvint(s64(value - self.min_timestamp))

    def ldt(self, value: int) -> None:
        self.out += write_uvint(s32(value - self.min_ldt))

    def ttl(self, value: int) -> None:
        self.out += write_uvint(s32(value - self.min_ttl))

    def deletion(self, deletion: tuple[int, int] | None) -> None:
        if deletion is None:
            self.timestamp(LIVE_TIMESTAMP)
            self.ldt(_LIVE_LDT[self.messaging_version])
        else:
            self.timestamp(deletion[0])
            self.ldt(deletion[1])

    def clustering_values(self, values: Sequence[Any]) -> None:
        """``ClusteringPrefix.serializeValuesWithoutSize`` (10.7): blocks of 32 with a null/empty header."""
        for block in range(0, len(values), 32):
            chunk = values[block : block + 32]
            raws = [value_serializer(t)(v) for t, v in zip(self.clustering_types[block:], chunk)]
            header = 0
            for index, raw in enumerate(raws):
                if not raw:
                    header |= 1 << (2 * index)
            self.out += write_uvint(header)
            for cql, raw in zip(self.clustering_types[block:], raws):
                if raw:
                    self.out += write_value(cql, raw)

    def cell(self, cell: _Cell, column: Column, liveness: tuple[int, int | None, int | None] | None) -> None:
        expiring = cell.ttl is not None
        deleted = cell.deleted
        use_row_timestamp = liveness is not None and cell.timestamp == liveness[0]
        use_row_ttl = expiring and liveness is not None and liveness[1] == cell.ttl and liveness[2] == cell.ldt
        flags = 0 if cell.value else _CELL_HAS_EMPTY_VALUE
        if deleted:
            flags |= _CELL_IS_DELETED
        elif expiring:
            flags |= _CELL_IS_EXPIRING
        if use_row_timestamp:
            flags |= _CELL_USE_ROW_TIMESTAMP
        if use_row_ttl:
            flags |= _CELL_USE_ROW_TTL
        self.out.append(flags)
        if not use_row_timestamp:
            self.timestamp(cell.timestamp)
        if (deleted or expiring) and not use_row_ttl:
            self.ldt(cell.ldt)  # type: ignore[arg-type]
        if expiring and not use_row_ttl:
            self.ttl(cell.ttl)  # type: ignore[arg-type]
        if cell.path is not None:
            self.out += with_length(cell.path)
        if cell.value:
            # header.getType(column) is the column's own type: for a collection or UDT column that is
            # the multi-cell type, which is never fixed-length, so element values carry a vint length.
            self.out += write_value(column.type, cell.value)

    def row(self, row: _Row, header: list[Column]) -> None:
        """``UnfilteredSerializer.serialize`` for a row (10.6), with no sstable size fields."""
        flags = 0
        if row.liveness is not None:
            flags |= _HAS_TIMESTAMP
            if row.liveness[1] is not None:
                flags |= _HAS_TTL
        if row.deletion is not None:
            flags |= _HAS_DELETION
        has_complex_deletion = any(data.deletion is not None for data in row.columns)
        if has_complex_deletion:
            flags |= _HAS_COMPLEX_DELETION
        if len(row.columns) == len(header):
            flags |= _HAS_ALL_COLUMNS
        if row.is_static:
            flags |= _EXTENSION_FLAG
        self.out.append(flags)
        if row.is_static:
            self.out.append(_IS_STATIC)
        else:
            self.clustering_values(row.clustering)
        if row.liveness is not None:
            timestamp, ttl, ldt = row.liveness
            self.timestamp(timestamp)
            if ttl is not None:
                self.ttl(ttl)
                self.ldt(ldt)  # type: ignore[arg-type]
        if row.deletion is not None:
            self.deletion(row.deletion)
        if not flags & _HAS_ALL_COLUMNS:
            self.out += column_subset([data.column for data in row.columns], header)
        for data in row.columns:
            if not data.column.type.is_complex:
                self.cell(data.cells[0], data.column, row.liveness)
                continue
            if has_complex_deletion:
                self.deletion(data.deletion)
            self.out += write_uvint(len(data.cells))
            for cell in data.cells:
                self.cell(cell, data.column, row.liveness)

    def marker(self, kind: int, values: tuple[Any, ...], *deletions: tuple[int, int]) -> None:
        """A range tombstone bound or boundary marker (10.10)."""
        self.out.append(_IS_MARKER)
        self.out.append(kind)
        self.out += len(values).to_bytes(2, "big")
        self.clustering_values(values)
        for deletion in deletions:
            self.deletion(deletion)


def column_subset(columns: Sequence[Column], superset: Sequence[Column]) -> bytes:
    """``Columns.serializeSubset`` (10.5): a bitmap of missing columns, or index lists for 64+ columns."""
    present = {superset.index(c) for c in columns}
    total = len(superset)
    if len(present) == total:
        return write_uvint(0)
    if total < 64:
        return write_uvint(sum(1 << i for i in range(total) if i not in present))
    out = bytearray(write_uvint(total - len(present)))
    if len(present) < total // 2:
        for index in sorted(present):
            out += write_uvint(index)
    else:
        for index in range(total):
            if index not in present:
                out += write_uvint(index)
    return bytes(out)


# ---------------------------------------------------------------------------------------------------
# From change dicts to the model


def _ldt_range(messaging_version: int) -> tuple[int, int]:
    # Up to 4.1 a local deletion time is a signed int32; 5.0's messaging 13 makes it an unsigned one,
    # with 0xFFFFFFFF meaning "none".
    return (0, MASK32 - 1) if messaging_version >= 13 else (-(1 << 31), (1 << 31) - 1)


def _check_ldt(value: int, messaging_version: int, what: str) -> int:
    low, high = _ldt_range(messaging_version)
    if not low <= value <= high:
        raise ValueError(f"{what} {value} does not fit a messaging version {messaging_version} deletion time")
    return value


def _tombstone_ldt(timestamp: int, messaging_version: int) -> int:
    # The node's clock when it took the delete: with server-side timestamps, the write time in seconds.
    # A client-supplied timestamp can be anything, while the node's clock stays in range.
    low, high = _ldt_range(messaging_version)
    return min(max(timestamp // 1_000_000, max(low, 0)), high)


class _UpdateBuilder:
    def __init__(self, table: TableSchema, messaging_version: int):
        self.table = table
        self.messaging_version = messaging_version
        self.layout = _layout(table)
        self.order = self.layout.order

    def ldt(self, value: Any, what: str) -> int:
        if value is None:
            raise ValueError(f"{self.table.qualified_name}: {what} is missing")
        return _check_ldt(int(value), self.messaging_version, what)

    def simple_cell(self, column: Column, cell: Mapping[str, Any]) -> _Cell:
        timestamp = cell["writetime"]
        if cell.get("deleted"):
            if cell.get("ttl") is not None:
                raise ValueError(f"{column.name}: a cell tombstone has no TTL")
            return _Cell(timestamp, None, _tombstone_ldt(timestamp, self.messaging_version), b"")
        value = cell.get("value")
        if value is None:
            raw = b""
        elif column.type.kind == "counter":
            raw = counter_context(value)
        else:
            raw = value_serializer(column.type)(value)
        return self.expiring(column, cell, _Cell(timestamp, None, None, raw))

    def expiring(self, column: Column, cell: Mapping[str, Any], result: _Cell) -> _Cell:
        ttl = cell.get("ttl")
        if ttl is not None:
            result.ttl = int(ttl)
            result.ldt = self.ldt(cell.get("expires_at"), f"{column.name}: expires_at")
        return result

    def complex_data(self, column: Column, data: Mapping[str, Any]) -> _ColumnData:
        cql = column.type
        deletion_timestamp = data.get("deletion")
        deletion = None
        if deletion_timestamp is not None:
            deletion = (deletion_timestamp, _tombstone_ldt(deletion_timestamp, self.messaging_version))
        cells = []
        if cql.kind in ("udt", "tuple"):
            names = struct_field_names(cql)
            for name, cell in (data.get("cells") or {}).items():
                index = names.index(name)
                cells.append(self.element(column, cql.args[index], index.to_bytes(2, "big"), cell))
            cells.sort(key=lambda c: c.path)
        else:
            path_type = _path_type(cql)
            element_type = cql.args[-1] if cql.kind != "set" else None
            serialize_path = value_serializer(path_type)
            elements = list(data.get("cells") or ())
            ordered = sort_unique(path_type, elements, lambda cell: cell["path"])
            if len(ordered) != len(elements):
                raise ValueError(f"{column.name}: two cells with the same path")
            for cell in ordered:
                cells.append(self.element(column, element_type, serialize_path(cell["path"]), cell))
        if deletion is None and not cells:
            raise ValueError(f"{column.name}: a collection change needs a deletion or cells")
        return _ColumnData(column, cells, deletion)

    def element(self, column: Column, value_type: CqlType | None, path: bytes, cell: Mapping[str, Any]) -> _Cell:
        timestamp = cell["writetime"]
        if cell.get("deleted"):
            return _Cell(timestamp, None, _tombstone_ldt(timestamp, self.messaging_version), b"", path)
        value = cell.get("value")
        raw = b"" if value_type is None or value is None else value_serializer(value_type)(value)
        return self.expiring(column, cell, _Cell(timestamp, None, None, raw, path))

    def row(self, change: Mapping[str, Any], is_static: bool) -> _Row:
        table = self.table
        clustering: tuple[Any, ...] = ()
        if not is_static:
            values = change.get("clustering") or {}
            try:
                clustering = tuple(values[c.name] for c in self.layout.clustering)
            except KeyError as error:
                raise ValueError(f"row of {table.qualified_name} misses clustering column {error}") from None
            if any(v is None for v in clustering):
                raise ValueError(f"row of {table.qualified_name} has a null clustering value")
        liveness = None
        if change.get("row_writetime") is not None:
            ttl = change.get("row_ttl")
            expires = None if ttl is None else self.ldt(change.get("row_expires_at"), "row_expires_at")
            liveness = (change["row_writetime"], ttl, expires)
        deletion = None
        if change.get("deletion_writetime") is not None:
            deletion = (change["deletion_writetime"], self.ldt(change.get("deletion_time"), "deletion_time"))
        kind = "static" if is_static else "regular"
        columns = []
        for name, data in (change.get("cells") or {}).items():
            column = table.column(name)
            if column is None or column.kind != kind:
                raise ValueError(f"{table.qualified_name} has no {kind} column {name!r}")
            if column.type.is_complex:
                columns.append(self.complex_data(column, data))
            else:
                columns.append(_ColumnData(column, [self.simple_cell(column, data)]))
        if liveness is None and deletion is None and not columns:
            raise ValueError(f"{table.qualified_name}: a row change with nothing in it")
        rank = self.layout.rank
        columns.sort(key=lambda d: rank[d.column.name])
        return _Row(clustering, liveness, deletion, columns, is_static)

    def bound(self, values: Mapping[str, Any] | None, inclusive: Any, start: bool) -> tuple[tuple[Any, ...], int]:
        prefix: tuple[Any, ...] = ()
        if values is not None:
            ordered = [values.get(c.name) for c in self.layout.clustering]
            size = next((i for i, v in enumerate(ordered) if v is None), len(ordered))
            if any(v is not None for v in ordered[size:]) or size == 0:
                raise ValueError(f"{self.table.qualified_name}: a range bound must be a non-empty clustering prefix")
            prefix = tuple(ordered[:size])
        elif not inclusive:
            raise ValueError(f"{self.table.qualified_name}: an unbounded range end is inclusive")
        if start:
            return prefix, INCL_START_BOUND if inclusive else EXCL_START_BOUND
        return prefix, INCL_END_BOUND if inclusive else EXCL_END_BOUND

    def range(self, change: Mapping[str, Any]) -> _Range:
        start = self.bound(change.get("range_start"), change.get("range_start_inclusive"), True)
        end = self.bound(change.get("range_end"), change.get("range_end_inclusive"), False)
        if self.order.compare(start, end) >= 0:
            raise ValueError(f"{self.table.qualified_name}: empty range deletion {start} .. {end}")
        deletion = (change["deletion_writetime"], self.ldt(change.get("deletion_time"), "deletion_time"))
        return _Range(start, end, deletion)


def _path_type(cql: CqlType) -> CqlType:
    # List cells are addressed by a timeuuid, set cells by the element, map cells by the key.
    return CqlType("timeuuid") if cql.kind == "list" else cql.args[0]


def _unfiltereds(order: ClusteringOrder, rows: list[_Row], ranges: list[_Range]) -> list[tuple[str, Any]]:
    """Rows and range tombstone markers in the order ``RowAndDeletionMergeIterator`` yields them."""
    compare = order.compare
    result: list[tuple[str, Any]] = []
    row_index = range_index = 0
    open_range: _Range | None = None

    def close() -> _Range | None:
        assert open_range is not None
        upcoming = ranges[range_index] if range_index < len(ranges) else None
        if upcoming is not None and compare(open_range.end, upcoming.start) == 0:
            kind = INCL_END_EXCL_START_BOUNDARY if open_range.end[1] == INCL_END_BOUND else EXCL_END_INCL_START_BOUNDARY
            result.append(("boundary", (kind, open_range.end[0], open_range.deletion, upcoming.deletion)))
            return upcoming
        result.append(("bound", (open_range.end[1], open_range.end[0], open_range.deletion)))
        return None

    while True:
        row = rows[row_index] if row_index < len(rows) else None
        if open_range is not None and (row is None or compare(open_range.end, (row.clustering, CLUSTERING)) < 0):
            following = close()
            if following is not None:
                range_index += 1
            open_range = following
            continue
        upcoming = ranges[range_index] if range_index < len(ranges) else None
        if (
            open_range is None
            and upcoming is not None
            and (row is None or compare(upcoming.start, (row.clustering, CLUSTERING)) < 0)
        ):
            open_range = upcoming
            range_index += 1
            result.append(("bound", (upcoming.start[1], upcoming.start[0], upcoming.deletion)))
            continue
        if row is None:
            return result
        result.append(("row", row))
        row_index += 1


@dataclass
class _PartitionUpdate:
    key: bytes
    partition_deletion: tuple[int, int] | None
    static_row: _Row | None
    rows: list[_Row]
    ranges: list[_Range]


def _build_update(builder: _UpdateBuilder, changes: Sequence[Mapping[str, Any]]) -> _PartitionUpdate:
    """One table's changes of one partition, checked to fit one partition update, rows and ranges in order."""
    table = builder.table
    keys = {_key_bytes(table, builder.layout.partition_key, change["key"]) for change in changes}
    if len(keys) != 1:
        raise ValueError(f"{table.qualified_name}: one mutation holds one partition, got {len(keys)} keys")
    update = _PartitionUpdate(keys.pop(), None, None, [], [])
    for change in changes:
        kind = change["kind"]
        if kind == KIND_PARTITION_DELETION:
            if update.partition_deletion is not None:
                raise ValueError(f"{table.qualified_name}: two partition deletions in one mutation")
            deletion_time = builder.ldt(change.get("deletion_time"), "deletion_time")
            update.partition_deletion = (change["deletion_writetime"], deletion_time)
        elif kind == KIND_STATIC_ROW:
            if update.static_row is not None:
                raise ValueError(f"{table.qualified_name}: two static rows in one mutation")
            update.static_row = builder.row(change, is_static=True)
        elif kind == KIND_ROW:
            update.rows.append(builder.row(change, is_static=False))
        elif kind == KIND_RANGE_DELETION:
            update.ranges.append(builder.range(change))
        else:
            raise ValueError(f"unknown change kind {kind!r}")
    order = builder.order
    sort_key = order.sort_key()
    update.rows.sort(key=lambda r: sort_key((r.clustering, CLUSTERING)))
    for previous, current in itertools.pairwise(update.rows):
        if order.compare((previous.clustering, CLUSTERING), (current.clustering, CLUSTERING)) == 0:
            raise ValueError(f"{table.qualified_name}: two changes for the row {current.clustering}")
    update.ranges.sort(key=lambda r: sort_key(r.start))
    for previous, current in itertools.pairwise(update.ranges):
        meeting = order.compare(previous.end, current.start)
        if meeting > 0:
            raise ValueError(f"{table.qualified_name}: overlapping range deletions")
        if meeting == 0 and previous.deletion == current.deletion:
            # Cassandra drops such a no-op boundary (CASSANDRA-14894): the two would read back as one.
            raise ValueError(f"{table.qualified_name}: adjacent range deletions with the same deletion")
    return update


def _encoding_stats(update: _PartitionUpdate) -> tuple[int, int, int]:
    stats = _Stats()
    stats.deletion(update.partition_deletion)
    for item in update.ranges:
        stats.deletion(item.deletion)
    for row in [update.static_row, *update.rows]:
        if row is not None:
            stats.row(row)
    return stats.minimums()


def _serialize_update(builder: _UpdateBuilder, update: _PartitionUpdate) -> bytes:
    """``PartitionUpdate.serializer`` (10.3): table id, key, flags, header, deletion, static row, rows and markers."""
    table = builder.table
    statics = [d.column for d in update.static_row.columns] if update.static_row is not None else []
    rank = builder.layout.rank
    present = {d.column.name: d.column for row in update.rows for d in row.columns}
    regulars = sorted(present.values(), key=lambda c: rank[c.name])
    minimums = _encoding_stats(update)
    writer = _Writer(builder.layout, builder.messaging_version, minimums)
    out = writer.out
    out += table.id.bytes
    out += with_length(update.key)
    flags = _HAS_ROW_ESTIMATE
    if update.partition_deletion is not None:
        flags |= _HAS_PARTITION_DELETION
    if update.static_row is not None:
        flags |= _HAS_STATIC_ROW
    out.append(flags)
    min_timestamp, min_ldt, min_ttl = minimums
    out += write_uvint(s64(min_timestamp - TIMESTAMP_EPOCH))
    out += write_uvint(s32(min_ldt - DELETION_TIME_EPOCH))
    out += write_uvint(s32(min_ttl))
    if update.static_row is not None:
        out += _column_names(statics)
    out += _column_names(regulars)
    if update.partition_deletion is not None:
        writer.deletion(update.partition_deletion)
    if update.static_row is not None:
        writer.row(update.static_row, statics)
    out += write_uvint(len(update.rows))
    for what, item in _unfiltereds(builder.order, update.rows, update.ranges):
        if what == "row":
            writer.row(item, regulars)
        elif what == "bound":
            kind, values, deletion = item
            writer.marker(kind, values, deletion)
        else:
            kind, values, closing, opening = item
            writer.marker(kind, values, closing, opening)
    out += _END_OF_PARTITION
    return bytes(out)


def _column_names(columns: Sequence[Column]) -> bytes:
    return write_uvint(len(columns)) + b"".join(with_length(c.name_bytes) for c in columns)


def encode_mutation(
    updates: Sequence[tuple[TableSchema, Sequence[Mapping[str, Any]]]],
    version: int,
) -> bytes:
    """Serialize one mutation as a node writing commit log ``version`` (6, 7 or 8) logs it.

    ``updates`` holds, per table, the changes of one partition (every table's changes share the
    partition key, as in a batch). Rows and range deletions may come in any order; they are written in
    clustering order, and collection cells in their path order. Changes Cassandra could not hold in one
    mutation (two changes of one row, overlapping ranges, empty rows) raise ValueError.
    """
    messaging_version = MESSAGING_VERSIONS.get(version)
    if messaging_version is None:
        raise ValueError(f"commit log version {version} is not one of {sorted(MESSAGING_VERSIONS)}")
    if not updates:
        raise ValueError("a mutation needs at least one partition update")
    out = bytearray(write_uvint(len(updates)))
    keys = set()
    for table, changes in updates:
        if not changes:
            raise ValueError(f"{table.qualified_name}: no changes")
        builder = _UpdateBuilder(table, messaging_version)
        update = _build_update(builder, changes)
        keys.add(update.key)
        out += _serialize_update(builder, update)
    if len(keys) != 1:
        raise ValueError("the tables of one mutation must share its partition key")
    return bytes(out)


# ---------------------------------------------------------------------------------------------------
# Canonical changes: what a reader gives back for a change


def _canonical_cell(value_type: CqlType | None, cell: Mapping[str, Any]) -> dict[str, Any]:
    deleted = bool(cell.get("deleted"))
    result: dict[str, Any] = {}
    if "path" in cell:
        result["path"] = cell["path"]
    if value_type is not None:
        result["value"] = None if deleted else canonical_value(value_type, cell.get("value"))
    result["writetime"] = cell["writetime"]
    result["ttl"] = cell.get("ttl")
    result["expires_at"] = cell.get("expires_at")
    result["deleted"] = deleted
    return result


def _canonical_column(column: Column, data: Mapping[str, Any]) -> dict[str, Any]:
    cql = column.type
    if not cql.is_complex:
        return _canonical_cell(cql, data)
    if cql.kind in ("udt", "tuple"):
        given = data.get("cells") or {}
        cells: Any = {
            name: _canonical_cell(arg, given[name])
            for name, arg in zip(struct_field_names(cql), cql.args)
            if name in given
        }
    else:
        path_type = _path_type(cql)
        value_type = None if cql.kind == "set" else cql.args[-1]
        cells = [
            {**_canonical_cell(value_type, cell), "path": canonical_value(path_type, cell["path"])}
            for cell in sort_unique(path_type, list(data.get("cells") or ()), lambda c: c["path"])
        ]
    return {"deletion": data.get("deletion"), "cells": cells}


_RANGE_FIELDS = ("range_start", "range_start_inclusive", "range_end", "range_end_inclusive")


def canonical_change(table: TableSchema, change: Mapping[str, Any]) -> dict[str, Any]:
    """The change as a reader decodes it back from :func:`encode_mutation`'s bytes.

    Keys holding None are left out, except a range deletion's bounds; a range bound lists every
    clustering column (None past its length); collections come in Cassandra's order.
    """
    kind = change["kind"]
    result: dict[str, Any] = {"kind": kind, "key": dict(change["key"])}
    clustering = _layout(table).clustering
    if kind == KIND_ROW and clustering:
        result["clustering"] = {c.name: change["clustering"][c.name] for c in clustering}
    for name in ("row_writetime", "row_ttl", "row_expires_at", "deletion_writetime", "deletion_time"):
        if change.get(name) is not None:
            result[name] = change[name]
    if kind == KIND_RANGE_DELETION:
        for name in _RANGE_FIELDS:
            result[name] = change.get(name)
        for name in ("range_start", "range_end"):
            if result[name] is not None:
                result[name] = {c.name: result[name].get(c.name) for c in clustering}
    cells = change.get("cells")
    if cells:
        result["cells"] = {name: _canonical_column(_value_column(table, name), data) for name, data in cells.items()}
    return result


def _value_column(table: TableSchema, name: str) -> Column:
    column = table.column(name)
    if column is None or column.kind not in ("static", "regular"):
        raise ValueError(f"{table.qualified_name} has no static or regular column {name!r}")
    return column
