"""The reference model of Cassandra's read semantics: change batches merged in memory exactly as Cassandra
merges mutations. The reconciliation check replays staged history with it, and the tests hold every
destination to it; the value rules it uses live in :mod:`cdc_assets.destinations.cassandra_values`.

Merge rules (Cassandra's ``Cells.reconcile``, ``LivenessInfo.supersedes``, ``DeletionTime``):

- Cells: the higher write time wins. On equal write times, a tombstone beats an expiring cell, which
  beats a plain live cell; two expiring cells: the later expiry wins; then the greater value wins,
  comparing the values' serialized CQL bytes unsigned (``value_bytes``), exactly as Cassandra does.
- Counters (``CounterContext.merge``, ``Cells.resolveCounter``): a counter cell holds shards, one per
  leading node (counter id, clock, count). Per counter id the shard with the highest clock wins (equal
  clocks: the greater count, then the later write time, so replica copies of one shard are one shard);
  each winning shard keeps its cell's write time, by which deletions hide it as they hide any cell. The
  value is the sum of the visible shards' counts, wrapping at 64 bits; none visible, no value. A counter
  tombstone beats every shard, whatever the write times.
- Row liveness (the INSERT row marker): higher write time; on a tie an expiring liveness beats a
  non-expiring one, then the later expiry.
- Deletions keep the highest timestamp. A partition, range or row deletion at T hides the cells and
  liveness of its scope written at or before T; a collection deletion at T hides its elements written
  at or before T. Cells of a dropped column written at or before the drop are discarded.
- A cell or liveness with an expiry is gone once ``now >= expires_at``; an expired cell still shadows
  older cells, exactly as the tombstone it becomes.
- A row is visible when its liveness is live or it has at least one live regular cell. Complex columns
  merge element by element (by path); their elements reconcile as cells.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from cdc_assets import change_batch as cb
from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.cassandra_schema.types import CqlType
from cdc_assets.destinations.cassandra_values import (
    batch_rows,
    canonical_element,
    canonical_rows,
    cell_rank,
    clustering_key,
    key_component,
    liveness_rank,
    range_bounds,
    timeuuid_order,
    value_bytes,
)


@dataclass(frozen=True, slots=True)
class _Cell:
    writetime: int
    value: Any
    expires_at: int | None
    deleted: bool
    rank: tuple[int, int, int, bytes]

    def live(self, now: int, hidden_at: int) -> bool:
        return not self.deleted and self.writetime > hidden_at and (self.expires_at is None or now < self.expires_at)


@dataclass(slots=True)
class _Complex:
    deletion: int | None = None
    cells: dict[Any, tuple[Any, _Cell]] = field(default_factory=dict)


@dataclass(slots=True)
class _Counter:
    """A counter column's merged cells: whether a tombstone came, and per counter id the winning shard's
    ``(clock, count, write time)``."""

    tombstone: bool = False
    shards: dict[bytes, tuple[int, int, int]] = field(default_factory=dict)

    def value(self, hidden_at: int) -> int | None:
        visible = [count for _, count, writetime in self.shards.values() if writetime > hidden_at]
        return None if self.tombstone or not visible else cb.counter_total(visible)


@dataclass(slots=True)
class _Row:
    clustering: tuple[Any, ...] = ()
    liveness: tuple[int, int, int] | None = None
    deletion: int | None = None
    cells: dict[str, _Cell] = field(default_factory=dict)
    complex: dict[str, _Complex] = field(default_factory=dict)
    counters: dict[str, _Counter] = field(default_factory=dict)


@dataclass(slots=True)
class _Partition:
    key: tuple[Any, ...]
    deletion: int | None = None
    static: _Row = field(default_factory=_Row)
    rows: dict[bytes, _Row] = field(default_factory=dict)
    ranges: dict[tuple[bytes, bytes], int] = field(default_factory=dict)


def _max(current: int | None, new: int | None) -> int | None:
    if current is None:
        return new
    return current if new is None else max(current, new)


def _seconds(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return int(value.timestamp())
    return int(value)


class CassandraModel:
    """An in-memory table that merges change batches exactly as Cassandra merges mutations.

    ``apply`` batches in any order, any number of times; ``current_state`` is what ``SELECT *`` returns.
    """

    def __init__(self, table: TableSchema):
        self.table = table
        self._partitions: dict[bytes, _Partition] = {}

    def alter(self, table: TableSchema) -> None:
        """Switch to an evolved schema (added or dropped columns); cells already merged are kept."""
        self.table = table

    def apply(self, batch: pa.RecordBatch) -> None:
        """Merge one change batch; its columns may be an older or newer version of the table's.

        Cells of columns the model's schema neither has nor lists as dropped are ignored: ``alter``
        to the newer schema first.
        """
        columns = [_value_column(self.table, f) for f in batch.schema]
        value_columns = [c for c in columns if c is not None]
        for change in batch_rows(batch):
            self._apply_change(change, value_columns)

    def _apply_change(self, change: dict[str, Any], value_columns: list[tuple[str, CqlType, bool]]) -> None:
        table = self.table
        key_values = tuple(canonical_element(c.type, change[c.name]) for c in table.partition_key)
        key = b"".join(key_component(c.type, v, False) for c, v in zip(table.partition_key, key_values, strict=True))
        partition = self._partitions.setdefault(key, _Partition(key_values))
        kind = change[cb.KIND]
        if kind == cb.KIND_PARTITION_DELETION:
            partition.deletion = _max(partition.deletion, change[cb.DELETION_WRITETIME])
            return
        if kind == cb.KIND_RANGE_DELETION:
            bounds = range_bounds(
                table,
                change[cb.RANGE_START],
                change[cb.RANGE_START_INCLUSIVE],
                change[cb.RANGE_END],
                change[cb.RANGE_END_INCLUSIVE],
            )
            partition.ranges[bounds] = _max(partition.ranges.get(bounds), change[cb.DELETION_WRITETIME])
            return
        if kind == cb.KIND_STATIC_ROW:
            row = partition.static
        else:
            clustering = tuple(canonical_element(c.type, change[c.name]) for c in table.clustering)
            row = partition.rows.setdefault(clustering_key(table, clustering), _Row(clustering))
        _apply_row(row, change)
        for name, cql_type, static in value_columns:
            cell = change[name]
            if cell is None:
                continue
            target = partition.static if static else row
            if cql_type.is_complex:
                _apply_complex(target.complex.setdefault(name, _Complex()), cql_type, cell)
            elif cql_type.kind == "counter":
                _apply_counter(target.counters.setdefault(name, _Counter()), cell)
            else:
                _merge_cell(target.cells, name, _make_cell(cql_type, cell))

    def current_state(self, now: dt.datetime | None = None) -> list[dict[str, Any]]:
        """The rows ``SELECT * FROM ks.t`` returns at ``now`` (default: the current time), canonical form."""
        now_s = int((now or dt.datetime.now(dt.UTC)).timestamp())
        rows: list[dict[str, Any]] = []
        for partition in self._partitions.values():
            rows.extend(self._partition_rows(partition, now_s))
        return canonical_rows(self.table, rows)

    def _partition_rows(self, partition: _Partition, now: int) -> list[dict[str, Any]]:
        table = self.table
        key = {c.name: v for c, v in zip(table.partition_key, partition.key, strict=True)}
        floor = partition.deletion if partition.deletion is not None else -(1 << 63)
        static_floor = _max(floor, partition.static.deletion)
        statics, static_live = self._visible(partition.static, table.statics, static_floor, now)
        result = []
        for ck, row in partition.rows.items():
            hidden_at = _max(floor, row.deletion)
            for (low, high), at in partition.ranges.items():
                if low <= ck < high:
                    hidden_at = _max(hidden_at, at)
            values, live = self._visible(row, table.regulars, hidden_at, now)
            if live:
                clustering = dict(zip((c.name for c in table.clustering), row.clustering, strict=True))
                result.append({**key, **clustering, **statics, **values})
        if not result and static_live:
            result.append({**key, **statics})
        return result

    def _visible(self, row: _Row, columns: Sequence[Column], hidden_at: int, now: int) -> tuple[dict[str, Any], bool]:
        """The row's visible values of ``columns``, and whether the row has live data."""
        live = row.liveness is not None and row.liveness[0] > hidden_at
        if live and row.liveness is not None and row.liveness[1]:
            live = now < row.liveness[2]
        values: dict[str, Any] = {}
        for column in columns:
            dropped = self.table.dropped_column(column.name)
            floor = hidden_at if dropped is None else max(hidden_at, dropped.dropped_at)
            if column.type.is_complex:
                value = _complex_value(column.type, row.complex.get(column.name), floor, now)
            elif column.type.kind == "counter":
                counter = row.counters.get(column.name)
                value = None if counter is None else counter.value(floor)
            else:
                cell = row.cells.get(column.name)
                value = cell.value if cell is not None and cell.live(now, floor) else None
                live = live or (cell is not None and cell.live(now, floor))
            if value is not None:
                values[column.name] = value
                live = True
        return values, live


def _value_column(table: TableSchema, arrow_field: pa.Field) -> tuple[str, CqlType, bool] | None:
    """A batch column's (name, CQL type, is static) when it carries cells the model knows the type of."""
    kind = (arrow_field.metadata or {}).get(cb.META_COLUMN_KIND)
    if kind not in (b"static", b"regular"):
        return None
    column = table.column(arrow_field.name) or table.dropped_column(arrow_field.name)
    return None if column is None else (arrow_field.name, column.type, kind == b"static")


def _apply_row(row: _Row, change: Mapping[str, Any]) -> None:
    writetime = change[cb.ROW_WRITETIME]
    if writetime is not None:
        rank = liveness_rank(writetime, _seconds(change[cb.ROW_EXPIRES_AT]))
        if row.liveness is None or rank > row.liveness:
            row.liveness = rank
    row.deletion = _max(row.deletion, change[cb.DELETION_WRITETIME])


def _make_cell(cql_type: CqlType, cell: Mapping[str, Any]) -> _Cell:
    deleted = bool(cell["deleted"])
    value = None if deleted else canonical_element(cql_type, cell.get("value"))
    expires_at = None if deleted else _seconds(cell["expires_at"])
    rank = cell_rank(cql_type, cell["writetime"], value, expires_at, deleted)
    return _Cell(cell["writetime"], value, expires_at, deleted, rank)


def _apply_counter(state: _Counter, cell: Mapping[str, Any]) -> None:
    if cell["deleted"]:
        state.tombstone = True
        return
    for shard in cell["value"] or ():
        candidate = (shard["clock"], shard["count"], cell["writetime"])
        current = state.shards.get(shard["id"])
        if current is None or candidate > current:
            state.shards[shard["id"]] = candidate


def _merge_cell(cells: dict[Any, _Cell], key: Any, cell: _Cell) -> None:
    current = cells.get(key)
    if current is None or cell.rank > current.rank:
        cells[key] = cell


def _apply_complex(state: _Complex, cql_type: CqlType, column: Mapping[str, Any]) -> None:
    state.deletion = _max(state.deletion, column["deletion"])
    cells = column["cells"]
    if cells is None:
        return
    if cql_type.kind == "udt":
        for name, field_type in zip(cql_type.field_names, cql_type.args, strict=True):
            cell = cells.get(name)
            if cell is not None:
                _merge_element(state, name, name, _make_cell(field_type, cell))
        return
    if cql_type.kind == "list":
        path_type, element_type = CqlType("timeuuid"), cql_type.args[0]
    elif cql_type.kind == "set":
        path_type = element_type = cql_type.args[0]
    else:
        path_type, element_type = cql_type.args
    for cell in cells:
        path = canonical_element(path_type, cell["path"])
        _merge_element(state, value_bytes(path_type, path), path, _make_cell(element_type, cell))


def _merge_element(state: _Complex, key: Any, path: Any, cell: _Cell) -> None:
    current = state.cells.get(key)
    if current is None or cell.rank > current[1].rank:
        state.cells[key] = (path, cell)


def _complex_value(cql_type: CqlType, state: _Complex | None, hidden_at: int, now: int) -> Any:
    if state is None:
        return None
    floor = _max(hidden_at, state.deletion)
    assert floor is not None
    live = [(path, cell) for path, cell in state.cells.values() if cell.live(now, floor)]
    if not live:
        return None
    kind = cql_type.kind
    if kind == "udt":
        by_name = {path: cell.value for path, cell in live}
        return {name: by_name.get(name) for name in cql_type.field_names}
    if kind == "list":
        return [cell.value for _, cell in sorted(live, key=lambda item: timeuuid_order(item[0]))]
    if kind == "set":
        return [path for path, _ in live]
    return [(path, cell.value) for path, cell in live]
