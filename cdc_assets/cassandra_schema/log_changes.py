"""Schema changes read from the commit log itself, applied in log order.

A DDL statement reaches the log as one mutation of the ``system_schema`` tables for the keyspace it
changes: CREATE TABLE writes a ``tables`` row (after deleting the previous one) and a ``columns`` row per
column; ALTER TABLE rewrites the ``tables`` row and adds, deletes or rewrites ``columns`` and
``dropped_columns`` rows; DROP TABLE deletes them; DROP KEYSPACE deletes whole partitions; CREATE/ALTER
TYPE writes ``types`` rows (``SchemaKeyspace.java``). The reader decodes those mutations into changes
and hands them to :class:`SchemaTracker`, one partition update at a time, before it decodes the next
mutation, so every mutation is decoded with the schema it was written under.

The tracker keeps what the log said about each schema row, merged with Cassandra's rules (newest write
wins, a deletion hides what was written at or before it), so a replayed or reordered change cannot undo
a newer one. A table is rebuilt from those rows on top of what the registry already knew (a CQL file or
a cluster snapshot), since an ALTER only carries the rows it changes. The ``tables`` and ``columns`` rows
of one CREATE may come in either order; until both are there the table is left as it was.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cdc_assets.cassandra_schema.errors import SchemaError
from cdc_assets.cassandra_schema.system_tables import (
    KEY_KINDS,
    SCHEMA_KEYSPACE,
    SYSTEM_KEYSPACES,
    column_from_row,
    dropped_column_from_row,
    resolve_udts,
)
from cdc_assets.cassandra_schema.tables import Column, DroppedColumn, SchemaRegistry, TableSchema
from cdc_assets.cassandra_schema.types import CqlType, substitute_udt
from cdc_assets.change_batch import KIND_PARTITION_DELETION, KIND_RANGE_DELETION, KIND_ROW

TRACKED_TABLES = frozenset({"tables", "columns", "dropped_columns", "types"})
# Cassandra's Long.MIN_VALUE: "never written" and "never deleted".
_NEVER = -(2**63)
_CLUSTERING = {"tables": ("table_name",), "columns": ("table_name", "column_name"), "types": ("type_name",)}
_CLUSTERING["dropped_columns"] = _CLUSTERING["columns"]


@dataclass
class _Cell:
    writetime: int
    deleted: bool
    value: Any

    def beats(self, other: _Cell | None) -> bool:
        """Cassandra's reconciliation: the newer write wins; on a tie a tombstone, then the greater value."""
        if other is None or self.writetime != other.writetime:
            return other is None or self.writetime > other.writetime
        if self.deleted != other.deleted:
            return self.deleted
        return (self.value is not None, self.value) > (other.value is not None, other.value)


@dataclass
class _Row:
    deletion: int = _NEVER
    marker: int = _NEVER
    cells: dict[str, _Cell] = field(default_factory=dict)


@dataclass(frozen=True)
class _RangeDeletion:
    start: tuple[Any, ...]
    start_inclusive: bool
    end: tuple[Any, ...] | None
    end_inclusive: bool
    writetime: int

    def covers(self, clustering: tuple[Any, ...]) -> bool:
        # Bounds are clustering prefixes; an empty start or a missing end is unbounded.
        head = clustering[: len(self.start)]
        if head < self.start or (head == self.start and self.start and not self.start_inclusive):
            return False
        if self.end is None:
            return True
        head = clustering[: len(self.end)]
        return head < self.end or (head == self.end and self.end_inclusive)


@dataclass
class _Partition:
    """What the log said about one keyspace's rows of one ``system_schema`` table."""

    clustering_names: tuple[str, ...]
    deletion: int = _NEVER
    ranges: list[_RangeDeletion] = field(default_factory=list)
    rows: dict[tuple[Any, ...], _Row] = field(default_factory=dict)

    def merge(self, change: Mapping[str, Any]) -> None:
        kind = change["kind"]
        if kind == KIND_PARTITION_DELETION:
            self.deletion = max(self.deletion, change["deletion_writetime"])
        elif kind == KIND_RANGE_DELETION:
            start = self._prefix(change.get("range_start")) or ()
            end = self._prefix(change.get("range_end"))
            self.ranges.append(
                _RangeDeletion(
                    start,
                    bool(change.get("range_start_inclusive")),
                    end,
                    bool(change.get("range_end_inclusive")),
                    change["deletion_writetime"],
                )
            )
        elif kind == KIND_ROW:
            self._merge_row(change)
        else:
            raise SchemaError(f"a {kind} change cannot occur in system_schema tables", "commit log")

    def _prefix(self, bound: Mapping[str, Any] | None) -> tuple[Any, ...] | None:
        if bound is None:
            return None
        values = []
        for name in self.clustering_names:
            if bound.get(name) is None:
                break
            values.append(bound[name])
        return tuple(values)

    def _merge_row(self, change: Mapping[str, Any]) -> None:
        clustering = change.get("clustering") or {}
        row = self.rows.setdefault(tuple(clustering[name] for name in self.clustering_names), _Row())
        if change.get("deletion_writetime") is not None:
            row.deletion = max(row.deletion, change["deletion_writetime"])
        if change.get("row_writetime") is not None:
            row.marker = max(row.marker, change["row_writetime"])
        for name, cell in (change.get("cells") or {}).items():
            if cell is None:
                continue
            incoming = _Cell(cell["writetime"], bool(cell.get("deleted")), cell.get("value"))
            if incoming.beats(row.cells.get(name)):
                row.cells[name] = incoming

    def clusterings(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.rows)

    def seen(self, clustering: tuple[Any, ...]) -> bool:
        """True when the log wrote or deleted this row, so what the registry knew of it no longer counts."""
        return clustering in self.rows or self.deletion != _NEVER or any(r.covers(clustering) for r in self.ranges)

    def live(self, clustering: tuple[Any, ...]) -> dict[str, Any] | None:
        """The row's live cell values (with its clustering), or None when it is deleted."""
        row = self.rows.get(clustering, _Row())
        hidden_until = max(self.deletion, row.deletion, *(r.writetime for r in self.ranges if r.covers(clustering)))
        values = {
            name: cell.value for name, cell in row.cells.items() if cell.writetime > hidden_until and not cell.deleted
        }
        if row.marker <= hidden_until and not values:
            return None
        return {**dict(zip(self.clustering_names, clustering)), **values}


def _micros_text(micros: int) -> str:
    return dt.datetime.fromtimestamp(micros / 1_000_000, dt.UTC).isoformat(timespec="seconds")


def _collect_udts(cql: CqlType, found: dict[str, CqlType]) -> None:
    if cql.kind == "udt":
        found[cql.name] = CqlType("udt", cql.args, name=cql.name, field_names=cql.field_names)
    for arg in cql.args:
        _collect_udts(arg, found)


class SchemaTracker:
    """Applies ``system_schema`` changes read from the log to a registry, in place, in log order."""

    def __init__(self, registry: SchemaRegistry):
        self.registry = registry
        self._partitions: dict[tuple[str, str], _Partition] = {}

    def apply(self, table: TableSchema, changes: Sequence[Mapping[str, Any]]) -> list[str]:
        """Apply one partition update of a ``system_schema`` table; returns what changed, for the log.

        ``changes`` are the decoded changes, shaped as :meth:`ChangeBatchBuilder.add` takes them. Tables
        other than ``tables``, ``columns``, ``dropped_columns`` and ``types`` change nothing the reader
        needs and are ignored, as are the rows of Cassandra's own system keyspaces.
        """
        if table.keyspace != SCHEMA_KEYSPACE or table.name not in TRACKED_TABLES:
            return []
        keyspaces: dict[str, dict[str, CqlType]] = {}
        for change in changes:
            keyspace = change["key"]["keyspace_name"]
            if keyspace in SYSTEM_KEYSPACES:
                continue
            if keyspace not in keyspaces:
                keyspaces[keyspace] = self._udts(keyspace)[0]
            self._partition(table.name, keyspace).merge(change)
        messages = []
        for keyspace, udts_before in keyspaces.items():
            udts, unresolved = self._udts(keyspace)
            messages.extend(_describe_types(keyspace, udts_before, udts, unresolved))
            names = {t.name for t in self.registry if t.keyspace == keyspace}
            for schema_table in ("tables", "columns", "dropped_columns"):
                names.update(clustering[0] for clustering in self._partition(schema_table, keyspace).clusterings())
            for name in sorted(names):
                messages.extend(self._rebuild(keyspace, name, udts))
        return messages

    def _partition(self, schema_table: str, keyspace: str) -> _Partition:
        key = (schema_table, keyspace)
        partition = self._partitions.get(key)
        if partition is None:
            partition = self._partitions[key] = _Partition(_CLUSTERING[schema_table])
        return partition

    def _udts(self, keyspace: str) -> tuple[dict[str, CqlType], dict[str, str]]:
        """The keyspace's user types: those its registered tables use, updated by the log's ``types`` rows."""
        known: dict[str, CqlType] = {}
        for table in self.registry:
            if table.keyspace == keyspace:
                for column in table.columns:
                    _collect_udts(column.type, known)
        partition = self._partition("types", keyspace)
        rows = []
        for name in set(known) | {clustering[0] for clustering in partition.clusterings()}:
            if not partition.seen((name,)):
                continue
            row = partition.live((name,))
            known.pop(name, None)
            if row is not None and "field_names" in row and "field_types" in row:
                rows.append(row)
        return resolve_udts(rows, known)

    def _rebuild(self, keyspace: str, name: str, udts: Mapping[str, CqlType]) -> list[str]:
        current = self.registry.by_name(keyspace, name)
        tables = self._partition("tables", keyspace)
        table_row = tables.live((name,)) if tables.seen((name,)) else None
        if tables.seen((name,)) and table_row is None:
            if current is None:
                return []
            self.registry.remove(current.id)
            return [f"dropped table {current.qualified_name} (id {current.id})"]
        if table_row is not None and table_row.get("id") is not None:
            table_id = uuid.UUID(str(table_row["id"]))
        elif current is not None:
            table_id = current.id
        else:
            return []  # its columns came before its tables row: wait for it
        base = current if current is not None and current.id == table_id else None
        try:
            columns = self._columns(keyspace, name, base, udts)
            dropped = self._dropped(keyspace, name, base)
        except SchemaError as error:
            return [f"{keyspace}.{name} is left as it was: {error.reason}"]
        if not any(column.kind == "partition_key" for column in columns):
            return []  # a CREATE whose columns are still to come, or a DROP whose tables row is
        # Cassandra writes tables.cdc only on nodes with cdc_enabled; a row without it says nothing about
        # the flag (and its node fills no cdc_raw), so the registry's flag stands.
        if table_row is not None and table_row.get("cdc") is not None:
            cdc = bool(table_row["cdc"])
        else:
            cdc = current.cdc if current is not None else False
        rebuilt = TableSchema(keyspace, name, table_id, columns, dropped, cdc)
        if rebuilt == current:
            return []
        if current is not None and current.id != table_id:
            self.registry.remove(current.id)
        self.registry.add(rebuilt)
        return _describe_table(current, rebuilt)

    def _columns(
        self, keyspace: str, name: str, base: TableSchema | None, udts: Mapping[str, CqlType]
    ) -> tuple[Column, ...]:
        columns: dict[str, Column] = {}
        for column in base.columns if base else ():
            column_type = column.type
            for udt in udts.values():
                column_type = substitute_udt(column_type, udt)
            columns[column.name] = replace(column, type=column_type)
        partition = self._partition("columns", keyspace)
        staged = [clustering[1] for clustering in partition.clusterings() if clustering[0] == name]
        key_slots: dict[tuple[str, int], str] = {}
        for column_name in [*columns, *(c for c in staged if c not in columns)]:
            if not partition.seen((name, column_name)):
                continue
            row = partition.live((name, column_name))
            if row is None:
                columns.pop(column_name, None)
            elif "kind" in row and "type" in row:
                column = columns[column_name] = column_from_row({"keyspace_name": keyspace, **row}, udts)
                if column.kind in KEY_KINDS:
                    key_slots[(column.kind, column.position)] = column.name
        # A key column the log defines replaces whatever the registry had at its place in the key: a
        # schema file that named it differently was wrong, and key columns never change otherwise.
        return tuple(
            column
            for column in columns.values()
            if key_slots.get((column.kind, column.position), column.name) == column.name
        )

    def _dropped(self, keyspace: str, name: str, base: TableSchema | None) -> tuple[DroppedColumn, ...]:
        dropped = {column.name: column for column in (base.dropped if base else ())}
        partition = self._partition("dropped_columns", keyspace)
        staged = [clustering[1] for clustering in partition.clusterings() if clustering[0] == name]
        for column_name in [*dropped, *(c for c in staged if c not in dropped)]:
            if not partition.seen((name, column_name)):
                continue
            row = partition.live((name, column_name))
            if row is None:
                dropped.pop(column_name, None)
            elif "type" in row and "dropped_time" in row:
                dropped[column_name] = dropped_column_from_row({"keyspace_name": keyspace, **row})
        return tuple(dropped.values())


def _describe_types(
    keyspace: str, before: Mapping[str, CqlType], after: Mapping[str, CqlType], unresolved: Mapping[str, str]
) -> list[str]:
    messages = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if new is None:
            messages.append(f"dropped type {keyspace}.{name}")
            continue
        fields = ", ".join(f"{f} {t.cql()}" for f, t in zip(new.field_names, new.args))
        messages.append(f"{'created' if old is None else 'altered'} type {keyspace}.{name} ({fields})")
    messages.extend(f"type {keyspace}.{name} is not usable yet: {reason}" for name, reason in unresolved.items())
    return messages


def _describe_table(old: TableSchema | None, new: TableSchema) -> list[str]:
    name = new.qualified_name
    if old is None or old.id != new.id:
        columns = ", ".join(f"{c.name} {c.type.cql()}" for c in new.columns)
        verb = "created" if old is None else f"re-created (was id {old.id})"
        return [f"{verb} table {name} (id {new.id}, cdc {'on' if new.cdc else 'off'}): {columns}"]
    messages = []
    before = {c.name: c for c in old.columns}
    after = {c.name: c for c in new.columns}
    for column in new.columns:
        previous = before.get(column.name)
        if previous is None:
            messages.append(f"{name}: added {column.kind} column {column.name} {column.type.cql()}")
        elif previous != column:
            messages.append(f"{name}: column {column.name} is now {column.kind} {column.type.cql()}")
    messages.extend(f"{name}: removed column {c.name}" for c in old.columns if c.name not in after)
    old_dropped = set(old.dropped)
    messages.extend(
        f"{name}: column {d.name} dropped at {_micros_text(d.dropped_at)}" for d in new.dropped if d not in old_dropped
    )
    if old.cdc != new.cdc:
        messages.append(f"{name}: cdc {'on' if new.cdc else 'off'}")
    return messages
