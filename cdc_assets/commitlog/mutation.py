"""Mutation decoding (format notes, section 10): one entry's bytes to change dicts, per table.

A change dict has the keyword names of ``ChangeBatchBuilder.add`` (without segment and position).
"""

from __future__ import annotations

import functools
import struct
import uuid
from dataclasses import dataclass
from typing import Any

from cdc_assets.cassandra_schema.tables import SchemaRegistry, TableSchema
from cdc_assets.cassandra_schema.types import CqlType
from cdc_assets.change_batch import (
    KIND_PARTITION_DELETION,
    KIND_RANGE_DELETION,
    KIND_ROW,
    KIND_STATIC_ROW,
)
from cdc_assets.commitlog.accelerator import COMPILED, accelerator
from cdc_assets.commitlog.errors import MutationDecodeError, UnknownTableError
from cdc_assets.commitlog.primitives import (
    DELETION_TIME_EPOCH,
    LIVE_TIMESTAMP,
    MASK32,
    TIMESTAMP_EPOCH,
    s32,
    s64,
)
from cdc_assets.commitlog.values import Decoder, format_uuid, partition_key_decoder, value_decoder
from cdc_assets.vints import read_uvint

# Partition flags (10.3)
IS_EMPTY = 0x01
HAS_PARTITION_DELETION = 0x04
HAS_STATIC_ROW = 0x08
HAS_ROW_ESTIMATE = 0x10
# Row flags (10.6)
END_OF_PARTITION = 0x01
IS_MARKER = 0x02
HAS_TIMESTAMP = 0x04
HAS_TTL = 0x08
HAS_DELETION = 0x10
HAS_ALL_COLUMNS = 0x20
HAS_COMPLEX_DELETION = 0x40
EXTENSION_FLAG = 0x80
IS_STATIC = 0x01
# Cell flags (10.8)
CELL_IS_DELETED = 0x01
CELL_IS_EXPIRING = 0x02
CELL_HAS_EMPTY_VALUE = 0x04
CELL_USE_ROW_TIMESTAMP = 0x08
CELL_USE_ROW_TTL = 0x10
# Range tombstone bound kinds (10.10): kind -> (closes a range, end inclusive, opens a range, start inclusive)
_BOUND_KINDS = {
    0: (True, False, False, None),
    1: (False, None, True, True),
    2: (True, False, True, True),
    5: (True, True, True, False),
    6: (True, True, False, None),
    7: (False, None, True, False),
}
NO_DELETION_TIME_V13 = MASK32
# What decoding bad bytes raises besides IndexError: ValueError (a bad inet, a short table id),
# UnicodeDecodeError, and struct.error (a float, decimal or frozen collection cut short).
_MALFORMED = (IndexError, ValueError, UnicodeDecodeError, struct.error)


@dataclass(frozen=True)
class ColumnDecoder:
    """How to read one column's data in a row, and under which name it lands in the change."""

    name: str
    type: CqlType
    value: Decoder | None
    fixed_length: int | None
    path: Decoder | None = None
    field_names: tuple[str, ...] = ()
    field_decoders: tuple[Decoder, ...] = ()
    dropped_at: int | None = None

    @property
    def is_complex(self) -> bool:
        return self.path is not None


def _column_decoder(name: str, cql: CqlType, dropped_at: int | None = None) -> ColumnDecoder:
    # Cells of a multi-cell column are always length-prefixed, even when the element type has a fixed
    # size: the column's own type (a non-frozen collection or UDT) is never fixed-length.
    if not cql.is_complex:
        return ColumnDecoder(name, cql, value_decoder(cql), cql.fixed_length, dropped_at=dropped_at)
    if cql.kind == "list":
        return ColumnDecoder(name, cql, value_decoder(cql.args[0]), None, format_uuid, dropped_at=dropped_at)
    if cql.kind == "set":
        return ColumnDecoder(name, cql, None, 0, value_decoder(cql.args[0]), dropped_at=dropped_at)
    if cql.kind == "map":
        key, item = cql.args
        return ColumnDecoder(name, cql, value_decoder(item), None, value_decoder(key), dropped_at=dropped_at)
    return ColumnDecoder(
        name,
        cql,
        None,
        None,
        lambda raw: int.from_bytes(raw, "big", signed=True),
        cql.field_names,
        tuple(value_decoder(arg) for arg in cql.args),
        dropped_at,
    )


class TableDecoder:
    """What decoding one table's partition updates needs, computed once per schema version."""

    def __init__(self, table: TableSchema):
        self.table = table
        key_columns = table.partition_key
        self.key = partition_key_decoder(tuple(c.type for c in key_columns), tuple(c.name for c in key_columns))
        self.clustering = [(c.name, c.type.fixed_length, value_decoder(c.type)) for c in table.clustering]
        self.columns: dict[bytes, ColumnDecoder] = {
            c.name_bytes: _column_decoder(c.name, c.type) for c in table.value_columns
        }
        for dropped in table.dropped:
            if dropped.name.encode() not in self.columns:
                self.columns[dropped.name.encode()] = _column_decoder(
                    dropped.name, dropped.type, dropped_at=dropped.dropped_at
                )

    def spec(self) -> tuple:
        """This table in the plain form the C accelerator compiles (see ``_mutation_accel.c``).

        ``(table, key decoder, key columns, clustering columns, value columns)``. Each value carries the
        kind of its CQL type, so that the C code decodes the common scalars itself, beside its pure decoder,
        which it calls for every other value.
        """
        table = self.table
        key = tuple((c.name, None, c.type.kind, value_decoder(c.type)) for c in table.partition_key)
        clustering = tuple(
            (name, fixed, column.type.kind, decode)
            for (name, fixed, decode), column in zip(self.clustering, table.clustering)
        )
        columns = tuple(_column_spec(raw_name, column) for raw_name, column in self.columns.items())
        return table, self.key, key, clustering, columns

    @functools.cached_property
    def compiled(self) -> object:
        """The C accelerator's form of ``spec()``, built when the accelerator first decodes this table."""
        return COMPILED.compile_table(self.spec())

    def column(self, name: bytes) -> ColumnDecoder:
        decoder = self.columns.get(name)
        if decoder is None:
            raise MutationDecodeError(
                f"unknown column {name.decode(errors='replace')!r} in {self.table.qualified_name}: "
                "the schema is older than the mutation"
            )
        return decoder


def _column_spec(raw_name: bytes, column: ColumnDecoder) -> tuple:
    """``(name bytes, name, CQL type, fixed length, value decoder, value kind, path decoder, path kind,
    UDT fields as (name, fixed length, kind, decoder), dropped_at)``: a column for ``TableDecoder.spec``."""
    cql = column.type
    value_kind = path_kind = ""
    fields: tuple = ()
    if not column.is_complex:
        value_kind = cql.kind
    elif column.field_names:
        fields = tuple(
            (name, column.fixed_length, arg.kind, decode)
            for name, arg, decode in zip(column.field_names, cql.args, column.field_decoders)
        )
    else:
        # list: timeuuid paths and element values; set: element paths, no value; map: key paths, item values.
        path_kind = "timeuuid" if cql.kind == "list" else cql.args[0].kind
        value_kind = cql.args[-1].kind
    return (
        raw_name,
        column.name,
        cql.cql(),
        column.fixed_length,
        column.value,
        value_kind,
        column.path,
        path_kind,
        fields,
        column.dropped_at,
    )


class _PartitionState:
    """Per-partition-update decoding context: the EncodingStats minimums and the messaging version."""

    __slots__ = ("min_ldt", "min_timestamp", "min_ttl", "unsigned_ldt")

    def __init__(self, min_timestamp: int, min_ldt: int, min_ttl: int, unsigned_ldt: bool):
        self.min_timestamp = min_timestamp
        self.min_ldt = min_ldt
        self.min_ttl = min_ttl
        self.unsigned_ldt = unsigned_ldt

    def timestamp(self, data: bytes, pos: int) -> tuple[int, int]:
        delta, pos = read_uvint(data, pos)
        return s64(self.min_timestamp + delta), pos

    def ldt(self, data: bytes, pos: int) -> tuple[int | None, int]:
        delta, pos = read_uvint(data, pos)
        value = (self.min_ldt + delta) & MASK32
        if self.unsigned_ldt:
            return (None if value == NO_DELETION_TIME_V13 else value), pos
        return s32(value), pos

    def ttl(self, data: bytes, pos: int) -> tuple[int, int]:
        delta, pos = read_uvint(data, pos)
        return s32(self.min_ttl + delta), pos

    def deletion(self, data: bytes, pos: int) -> tuple[int, int | None, int]:
        timestamp, pos = self.timestamp(data, pos)
        ldt, pos = self.ldt(data, pos)
        return timestamp, ldt, pos


ChangeList = list[dict[str, Any]]


class MutationDecoder:
    """Decodes mutations with the tables of a schema registry; rebuild it (or call ``refresh``) on schema change."""

    def __init__(self, registry: SchemaRegistry, messaging_version: int = 12):
        self.registry = registry
        self.unsigned_ldt = messaging_version >= 13
        self._tables: dict[bytes, TableDecoder] = {}
        self._accelerator = accelerator()

    @property
    def accelerated(self) -> bool:
        """True when the C accelerator decodes: it was built and CDC_ASSETS_PURE_PYTHON=1 was not set."""
        return self._accelerator is not None

    def refresh(self) -> None:
        self._tables.clear()

    def table_id(self, body: bytes) -> uuid.UUID:
        """The id of the first table a mutation touches (for reports on mutations that failed to decode)."""
        _, pos = read_uvint(body, 0)
        return uuid.UUID(bytes=bytes(body[pos : pos + 16]))

    def _table(self, raw_id: bytes) -> TableDecoder:
        decoder = self._tables.get(raw_id)
        if decoder is None:
            table = self.registry.get(uuid.UUID(bytes=raw_id))
            if table is None:
                raise UnknownTableError(uuid.UUID(bytes=raw_id))
            decoder = self._tables[raw_id] = TableDecoder(table)
        return decoder

    def decode(self, body: bytes) -> list[tuple[TableSchema, ChangeList]]:
        """Every partition update in the mutation, as (table, its changes)."""
        data = bytes(body)
        try:
            if self._accelerator is not None:
                return self._accelerator.decode(self, data, self.unsigned_ldt)
            count, pos = read_uvint(data, 0)
            updates = []
            for _ in range(count):
                table, changes, pos = self._partition_update(data, pos)
                updates.append((table, changes))
        except _MALFORMED as error:
            raise MutationDecodeError(f"malformed mutation: {error}") from error
        if pos != len(data):
            raise MutationDecodeError(f"{len(data) - pos} bytes left after the last partition update")
        return updates

    def _partition_update(self, data: bytes, pos: int) -> tuple[TableSchema, ChangeList, int]:
        decoder = self._table(data[pos : pos + 16])
        pos += 16
        key_length, pos = read_uvint(data, pos)
        key = decoder.key(data[pos : pos + key_length])
        pos += key_length
        flags = data[pos]
        pos += 1
        changes: ChangeList = []
        if flags & IS_EMPTY:
            return decoder.table, changes, pos
        delta, pos = read_uvint(data, pos)
        min_timestamp = s64(TIMESTAMP_EPOCH + delta)
        delta, pos = read_uvint(data, pos)
        min_ldt = (DELETION_TIME_EPOCH + delta) & MASK32
        delta, pos = read_uvint(data, pos)
        state = _PartitionState(min_timestamp, min_ldt, s32(delta), self.unsigned_ldt)
        statics: list[ColumnDecoder] = []
        if flags & HAS_STATIC_ROW:
            statics, pos = self._column_list(decoder, data, pos)
        regulars, pos = self._column_list(decoder, data, pos)
        if flags & HAS_PARTITION_DELETION:
            timestamp, ldt, pos = state.deletion(data, pos)
            changes.append(
                {"kind": KIND_PARTITION_DELETION, "key": key, "deletion_writetime": timestamp, "deletion_time": ldt}
            )
        if flags & HAS_STATIC_ROW:
            pos = self._row(decoder, state, data, pos, key, statics, changes, None)
        if flags & HAS_ROW_ESTIMATE:
            _, pos = read_uvint(data, pos)
        open_range: list[Any] = []
        while True:
            row_flags = data[pos]
            if row_flags == END_OF_PARTITION:
                return decoder.table, changes, pos + 1
            if row_flags & IS_MARKER:
                pos = self._marker(decoder, state, data, pos + 1, key, changes, open_range)
            else:
                pos = self._row(decoder, state, data, pos, key, regulars, changes, decoder.clustering)

    def _column_list(self, decoder: TableDecoder, data: bytes, pos: int) -> tuple[list[ColumnDecoder], int]:
        count, pos = read_uvint(data, pos)
        columns = []
        for _ in range(count):
            length, pos = read_uvint(data, pos)
            columns.append(decoder.column(data[pos : pos + length]))
            pos += length
        return columns, pos

    def _clustering(
        self, clustering: list[tuple[str, int | None, Decoder]], data: bytes, pos: int, size: int
    ) -> tuple[list[Any], int]:
        values: list[Any] = []
        header = 0
        for index in range(size):
            if index % 32 == 0:
                header, pos = read_uvint(data, pos)
            shift = (index % 32) * 2
            _, fixed, decode = clustering[index]
            if header & (2 << shift):
                values.append(None)
            elif header & (1 << shift):
                values.append(decode(b""))
            else:
                if fixed is None:
                    length, pos = read_uvint(data, pos)
                else:
                    length = fixed
                values.append(decode(data[pos : pos + length]))
                pos += length
        return values, pos

    def _marker(
        self,
        decoder: TableDecoder,
        state: _PartitionState,
        data: bytes,
        pos: int,
        key: dict,
        changes: ChangeList,
        open_range: list[Any],
    ) -> int:
        kind = data[pos]
        size = int.from_bytes(data[pos + 1 : pos + 3], "big")
        pos += 3
        if kind not in _BOUND_KINDS or size > len(decoder.clustering):
            raise MutationDecodeError(f"invalid range tombstone bound (kind {kind}, {size} values)")
        values, pos = self._clustering(decoder.clustering, data, pos, size)
        bound = None
        if size:
            bound = {name: None for name, _, _ in decoder.clustering}
            bound.update(zip((name for name, _, _ in decoder.clustering), values))
        closes, end_inclusive, opens, start_inclusive = _BOUND_KINDS[kind]
        if closes:
            timestamp, ldt, pos = state.deletion(data, pos)
            if open_range:
                start, start_incl = open_range.pop()
                changes.append(
                    {
                        "kind": KIND_RANGE_DELETION,
                        "key": key,
                        "deletion_writetime": timestamp,
                        "deletion_time": ldt,
                        "range_start": start,
                        "range_start_inclusive": start_incl,
                        "range_end": bound,
                        "range_end_inclusive": end_inclusive,
                    }
                )
            else:
                raise MutationDecodeError("range tombstone end bound without a start")
        if opens:
            # A boundary carries the deletion of the range it opens after the one it closes; the range
            # deletion takes its time from the closing bound, which always repeats it.
            _, _, pos = state.deletion(data, pos)
            open_range.append((bound, start_inclusive))
        return pos

    def _row(
        self,
        decoder: TableDecoder,
        state: _PartitionState,
        data: bytes,
        pos: int,
        key: dict,
        header_columns: list[ColumnDecoder],
        changes: ChangeList,
        clustering: list[tuple[str, int | None, Decoder]] | None,
    ) -> int:
        flags = data[pos]
        pos += 1
        extended = 0
        if flags & EXTENSION_FLAG:
            extended = data[pos]
            pos += 1
        is_static = bool(extended & IS_STATIC)
        if is_static != (clustering is None):
            raise MutationDecodeError("static row flag where a regular row was expected, or the reverse")
        change: dict[str, Any] = {"kind": KIND_STATIC_ROW if is_static else KIND_ROW, "key": key}
        if clustering:
            values, pos = self._clustering(clustering, data, pos, len(clustering))
            change["clustering"] = {name: value for (name, _, _), value in zip(clustering, values)}
        row_timestamp = LIVE_TIMESTAMP
        row_ttl = 0
        row_ldt = None
        if flags & HAS_TIMESTAMP:
            row_timestamp, pos = state.timestamp(data, pos)
            change["row_writetime"] = row_timestamp
            if flags & HAS_TTL:
                row_ttl, pos = state.ttl(data, pos)
                row_ldt, pos = state.ldt(data, pos)
                change["row_ttl"] = row_ttl
                change["row_expires_at"] = row_ldt
        if flags & HAS_DELETION:
            timestamp, ldt, pos = state.deletion(data, pos)
            change["deletion_writetime"] = timestamp
            change["deletion_time"] = ldt
        if flags & HAS_ALL_COLUMNS:
            present = header_columns
        else:
            present, pos = _column_subset(header_columns, data, pos)
        cells: dict[str, Any] = {}
        has_complex_deletion = flags & HAS_COMPLEX_DELETION
        for column in present:
            if column.path is None:
                cell, pos = self._cell(column, state, data, pos, row_timestamp, row_ttl, row_ldt)
                if column.dropped_at is None or cell["writetime"] > column.dropped_at:
                    cells[column.name] = cell
                continue
            deletion = None
            if has_complex_deletion:
                deletion, _, pos = state.deletion(data, pos)
                if deletion == LIVE_TIMESTAMP:
                    deletion = None
            count, pos = read_uvint(data, pos)
            elements: Any = {} if column.field_names else []
            for _ in range(count):
                cell, pos = self._cell(column, state, data, pos, row_timestamp, row_ttl, row_ldt)
                if column.field_names:
                    elements[column.field_names[cell.pop("path")]] = cell
                else:
                    elements.append(cell)
            if column.dropped_at is None:
                cells[column.name] = {"deletion": deletion, "cells": elements}
        if cells:
            change["cells"] = cells
        if len(change) > 2 + bool(clustering):
            changes.append(change)
        return pos

    def _cell(
        self,
        column: ColumnDecoder,
        state: _PartitionState,
        data: bytes,
        pos: int,
        row_timestamp: int,
        row_ttl: int,
        row_ldt: int | None,
    ) -> tuple[dict[str, Any], int]:
        flags = data[pos]
        pos += 1
        if flags & CELL_USE_ROW_TIMESTAMP:
            timestamp = row_timestamp
        else:
            timestamp, pos = state.timestamp(data, pos)
        deleted = bool(flags & CELL_IS_DELETED)
        expiring = flags & CELL_IS_EXPIRING
        ttl = expires_at = None
        if flags & CELL_USE_ROW_TTL:
            ttl, expires_at = row_ttl, row_ldt
        else:
            if deleted or expiring:
                ldt, pos = state.ldt(data, pos)
                if expiring:
                    expires_at = ldt
            if expiring:
                ttl, pos = state.ttl(data, pos)
        cell: dict[str, Any] = {}
        value_decoder_, fixed_length = column.value, column.fixed_length
        if column.path is not None:
            length, pos = read_uvint(data, pos)
            path = cell["path"] = column.path(data[pos : pos + length])
            pos += length
            if column.field_names:
                # A non-frozen UDT's cell path is the field's position; its value has that field's type.
                if not 0 <= path < len(column.field_names):
                    raise MutationDecodeError(
                        f"field {path} of {column.name!r} is not in the schema's {column.type.cql()}"
                    )
                value_decoder_ = column.field_decoders[path]
        if flags & CELL_HAS_EMPTY_VALUE:
            raw = b""
        elif fixed_length is not None:
            raw = data[pos : pos + fixed_length]
            pos += fixed_length
        else:
            length, pos = read_uvint(data, pos)
            raw = data[pos : pos + length]
            pos += length
        if value_decoder_ is not None:
            cell["value"] = None if deleted else value_decoder_(raw)
        cell["writetime"] = timestamp
        cell["ttl"] = ttl
        cell["expires_at"] = expires_at
        cell["deleted"] = deleted
        return cell, pos


def _column_subset(columns: list[ColumnDecoder], data: bytes, pos: int) -> tuple[list[ColumnDecoder], int]:
    """Columns.deserializeSubset: a bitmap of missing columns, or index lists for 64+ columns (10.5)."""
    encoded, pos = read_uvint(data, pos)
    total = len(columns)
    if encoded == 0:
        return columns, pos
    if total < 64:
        return [column for i, column in enumerate(columns) if not (encoded >> i) & 1], pos
    missing = encoded
    present_count = total - missing
    if present_count < total // 2:
        present = []
        for _ in range(present_count):
            index, pos = read_uvint(data, pos)
            present.append(columns[index])
        return present, pos
    missing_indexes = set()
    for _ in range(missing):
        index, pos = read_uvint(data, pos)
        missing_indexes.add(index)
    return [column for i, column in enumerate(columns) if i not in missing_indexes], pos
