"""A change batch as the storage tables' rows: :func:`storage_tables` turns it into the Arrow tables to
insert into ``t__cdc_rows``, ``t__cdc_elements``, ``t__cdc_shards`` and ``t__cdc_deletions``
(``clickhouse.layout`` describes them), columnar throughout; :func:`unloadable_columns` and
:func:`refused_changes` find what the destination cannot take (for the dead-letter store, with
:func:`ipc_bytes`)."""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cdc_assets import change_batch as cb
from cdc_assets.cassandra_schema.tables import Column
from cdc_assets.cassandra_schema.types import CqlType
from cdc_assets.destinations.clickhouse.layout import (
    CLOCK,
    COUNT,
    COUNTER_ID,
    DELETION_KIND,
    DELETION_WRITETIME,
    ELEMENT_COLUMN,
    ELEMENT_DELETED,
    ELEMENT_EXPIRES_AT,
    ELEMENT_WRITETIME,
    LOAD_ID,
    ROW_DELETION,
    STATIC,
    Layout,
    TableState,
    collection_deletion_column,
    deleted_column,
    element_column,
    end_column,
    expires_column,
    path_column,
    same_storage,
    start_column,
    writetime_column,
)
from cdc_assets.destinations.clickhouse.types import field_to_clickhouse_arrow, to_clickhouse_arrow

_NIL_UUID = "00000000-0000-0000-0000-000000000000"

# Date32's range; Cassandra's date reaches millions of years either side.
_DATE32_DAYS = (-719528, 2932896)


def storage_tables(layout: Layout, batch: pa.RecordBatch, load_id: str) -> list[tuple[str, pa.Table]]:
    """The Arrow tables to insert for ``batch``, with their targets; empty ones left out."""
    rows = _of_kind(batch, cb.KIND_ROW, cb.KIND_STATIC_ROW)
    tables = [
        (layout.rows, _rows_table(layout, rows, load_id)),
        (layout.elements, _elements_table(layout, rows, load_id)),
        (layout.shards, _shards_table(layout, rows, load_id)),
        (layout.deletions, _deletions_table(layout, batch, load_id)),
    ]
    return [(target, data) for target, data in tables if data is not None and data.num_rows]


def _constant(value: str, length: int) -> pa.DictionaryArray:
    """``value`` repeated: a dictionary array, which ClickHouse reads straight into LowCardinality."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(length, dtype=np.int32)), pa.array([value]))


def _of_kind(batch: pa.RecordBatch, *kinds: str) -> pa.RecordBatch:
    """The batch's changes of ``kinds`` (the batch itself when all are: filtering copies every column)."""
    chosen = pc.is_in(batch.column(cb.KIND), value_set=pa.array(kinds))
    if pc.all(chosen).as_py():
        return batch
    return batch.take(pc.indices_nonzero(chosen))


def _header(batch: pa.RecordBatch, load_id: str) -> dict[str, pa.Array]:
    return {
        LOAD_ID: _constant(load_id, batch.num_rows),
        cb.SEGMENT_ID: batch.column(cb.SEGMENT_ID),
        cb.POSITION: batch.column(cb.POSITION),
    }


def _keys(columns: Iterable[Column], batch: pa.RecordBatch) -> dict[str, pa.Array]:
    return {c.name: _key_values(c.type, batch.column(c.name)) for c in columns if c.name in batch.schema.names}


def _key_values(cql: CqlType, values: pa.Array) -> pa.Array:
    """A key column's values as ClickHouse reads them into its (not Nullable) storage column.

    A static row has no clustering: its clustering columns store their type's default, read from an Arrow
    null, and the view shows NULL for them. A UUID travels as text, where ClickHouse's default for a null
    is '', which is no UUID: it is spelled as the nil UUID.
    """
    converted = to_clickhouse_arrow(cql, values)
    if cql.kind in ("uuid", "timeuuid") and converted.null_count:
        return pc.fill_null(converted, _NIL_UUID)
    return converted


def _rows_table(layout: Layout, rows: pa.RecordBatch, load_id: str) -> pa.Table | None:
    if rows.num_rows == 0:
        return None
    data = {
        **_header(rows, load_id),
        STATIC: pc.equal(rows.column(cb.KIND), cb.KIND_STATIC_ROW),
        **_keys(layout.table.primary_key, rows),
        cb.ROW_WRITETIME: rows.column(cb.ROW_WRITETIME),
        cb.ROW_EXPIRES_AT: rows.column(cb.ROW_EXPIRES_AT),
        ROW_DELETION: rows.column(cb.DELETION_WRITETIME),
    }
    names = rows.schema.names
    for column in layout.simple:
        if column.name not in names:
            continue
        cells = rows.column(column.name)
        data[column.name] = to_clickhouse_arrow(column.type, pc.struct_field(cells, "value"))
        data[writetime_column(column.name)] = pc.struct_field(cells, "writetime")
        data[expires_column(column.name)] = pc.struct_field(cells, "expires_at")
        data[deleted_column(column.name)] = pc.fill_null(pc.struct_field(cells, "deleted"), False)
    for column in layout.complex:
        if column.name in names:
            data[collection_deletion_column(column.name)] = pc.struct_field(rows.column(column.name), "deletion")
    for column in layout.counters:
        if column.name in names:
            deleted = pc.struct_field(rows.column(column.name), "deleted")
            data[deleted_column(column.name)] = pc.fill_null(deleted, False)
    return pa.table(data)


def _shards_table(layout: Layout, rows: pa.RecordBatch, load_id: str) -> pa.Table | None:
    """One row per shard of the counter cells of ``rows``, with its cell's write time."""
    pieces = []
    for column in layout.counters:
        if column.name not in rows.schema.names:
            continue
        cells = rows.column(column.name)
        values = pc.struct_field(cells, "value")
        present = pc.indices_nonzero(pc.is_valid(values))
        lists = values.take(present)
        owners = present.take(pc.list_parent_indices(lists))
        shards = pc.list_flatten(lists)
        data = {
            **_element_rows(layout, column, rows, owners, load_id),
            COUNTER_ID: pc.struct_field(shards, "id"),
            CLOCK: pc.struct_field(shards, "clock"),
            COUNT: pc.struct_field(shards, "count"),
            ELEMENT_WRITETIME: pc.struct_field(cells, "writetime").take(owners),
        }
        pieces.append(pa.table(data))
    pieces = [piece for piece in pieces if piece.num_rows]
    return pa.concat_tables(pieces, promote_options="default").unify_dictionaries() if pieces else None


def _elements_table(layout: Layout, rows: pa.RecordBatch, load_id: str) -> pa.Table | None:
    pieces = []
    for column in layout.complex:
        if column.name not in rows.schema.names:
            continue
        cells = pc.struct_field(rows.column(column.name), "cells")
        if column.type.kind == "udt":
            pieces += _udt_elements(layout, column, rows, cells, load_id)
        else:
            pieces.append(_collection_elements(layout, column, rows, cells, load_id))
    pieces = [piece for piece in pieces if piece.num_rows]
    return pa.concat_tables(pieces, promote_options="default").unify_dictionaries() if pieces else None


def _element_rows(
    layout: Layout, column: Column, rows: pa.RecordBatch, owners: pa.Array, load_id: str
) -> dict[str, pa.Array]:
    """The columns every element row carries, for elements owned by the rows at ``owners``.

    No source position: the owning change's row in the rows table has it.
    """
    names = [cb.KIND, *(c.name for c in layout.table.primary_key)]
    owner_rows = rows.select([name for name in names if name in rows.schema.names]).take(owners)
    return {
        LOAD_ID: _constant(load_id, len(owners)),
        STATIC: pc.equal(owner_rows.column(cb.KIND), cb.KIND_STATIC_ROW),
        **_keys(layout.table.primary_key, owner_rows),
        ELEMENT_COLUMN: _constant(column.name, len(owners)),
    }


def _cell_parts(cells: pa.StructArray) -> dict[str, pa.Array]:
    return {
        ELEMENT_WRITETIME: cells.field("writetime"),
        ELEMENT_EXPIRES_AT: cells.field("expires_at"),
        ELEMENT_DELETED: pc.fill_null(cells.field("deleted"), False),
    }


def _collection_elements(
    layout: Layout, column: Column, rows: pa.RecordBatch, cells: pa.Array, load_id: str
) -> pa.Table:
    # Taking the present lists first drops elements a null list's offsets may still span.
    present = pc.indices_nonzero(pc.is_valid(cells))
    lists = cells.take(present)
    owners = present.take(pc.list_parent_indices(lists))
    flat = pc.list_flatten(lists)
    data = {**_element_rows(layout, column, rows, owners, load_id), **_cell_parts(flat)}
    kind = column.type.kind
    path_type = column.type.args[0]
    data[path_column(column.name)] = (
        flat.field("path") if kind == "list" else to_clickhouse_arrow(path_type, flat.field("path"))
    )
    if kind != "set":
        data[element_column(column.name)] = to_clickhouse_arrow(column.type.args[-1], flat.field("value"))
    return pa.table(data)


def _udt_elements(
    layout: Layout, column: Column, rows: pa.RecordBatch, cells: pa.Array, load_id: str
) -> list[pa.Table]:
    pieces = []
    udt = column.type
    value_type = to_clickhouse_arrow(udt, pa.nulls(0, cb.arrow_type(udt))).type
    for name in udt.field_names:
        # By position: pyarrow reads a name string as a dotted path (a field `.x` would fetch `x`).
        field_cells = pc.struct_field(cells, [cells.type.get_field_index(name)])
        owners = pc.indices_nonzero(pc.is_valid(field_cells))
        if len(owners) == 0:
            continue
        written = field_cells.take(owners)
        count = len(owners)
        children = []
        for item_field, item_type in zip(value_type, udt.args):
            values = written.field("value") if item_field.name == name else pa.nulls(count, cb.arrow_type(item_type))
            children.append(field_to_clickhouse_arrow(item_type, values))
        data = {**_element_rows(layout, column, rows, owners, load_id), **_cell_parts(written)}
        data[path_column(column.name)] = pa.array([name] * count, pa.string())
        data[element_column(column.name)] = pa.StructArray.from_arrays(children, fields=list(value_type))
        pieces.append(pa.table(data))
    return pieces


def _deletions_table(layout: Layout, batch: pa.RecordBatch, load_id: str) -> pa.Table | None:
    pieces = []
    partitions = _of_kind(batch, cb.KIND_PARTITION_DELETION)
    if partitions.num_rows:
        data = {
            **_header(partitions, load_id),
            DELETION_KIND: _constant("partition", partitions.num_rows),
            **_keys(layout.table.partition_key, partitions),
            DELETION_WRITETIME: partitions.column(cb.DELETION_WRITETIME),
        }
        pieces.append(pa.table(data))
    ranges = _of_kind(batch, cb.KIND_RANGE_DELETION)
    if ranges.num_rows:
        data = {
            **_header(ranges, load_id),
            DELETION_KIND: _constant("range", ranges.num_rows),
            **_keys(layout.table.partition_key, ranges),
            DELETION_WRITETIME: ranges.column(cb.DELETION_WRITETIME),
        }
        for prefix, bound, inclusive, column_name in (
            ("_cdc_start", cb.RANGE_START, cb.RANGE_START_INCLUSIVE, start_column),
            ("_cdc_end", cb.RANGE_END, cb.RANGE_END_INCLUSIVE, end_column),
        ):
            values = ranges.column(bound)
            present = values.is_valid()
            length = pa.array([0] * ranges.num_rows, pa.uint8())
            for column in layout.table.clustering:
                # By index: pyarrow reads a name as a dotted path (a column `.` would be no field at all).
                item = pc.struct_field(values, [values.type.get_field_index(column.name)])
                data[column_name(column.name)] = to_clickhouse_arrow(column.type, item)
                present = pc.and_(present, pc.is_valid(item))
                length = pc.add(length, pc.cast(present, pa.uint8()))
            data[f"{prefix}_length"] = length
            # An unbounded side covers everything; a bound is exclusive unless it says otherwise.
            data[f"{prefix}_inclusive"] = pc.if_else(
                values.is_null(), True, pc.fill_null(ranges.column(inclusive), False)
            )
        pieces.append(pa.table(data))
    return pa.concat_tables(pieces, promote_options="default").unify_dictionaries() if pieces else None


def unloadable_columns(state: TableState, batch: pa.RecordBatch) -> dict[str, str | None]:
    """The batch's value columns ClickHouse cannot hold: the reason to refuse their changes, or None to
    ignore the column (cells of a dropped column's earlier incarnation, which Cassandra discards)."""
    table = state.layout.table
    unloadable: dict[str, str | None] = {}
    for arrow_field in batch.schema:
        metadata = arrow_field.metadata or {}
        if metadata.get(cb.META_COLUMN_KIND) not in (b"static", b"regular"):
            continue
        name = arrow_field.name
        column = table.column(name)
        batch_type = metadata.get(cb.META_CQL_TYPE, b"").decode()
        if column is None and table.dropped_column(name) is None:
            unloadable[name] = f"column {name!r} is not in the schema of {table.qualified_name}; refresh it and replay"
        elif column is not None and name in state.conflicts:
            unloadable[name] = state.conflicts[name]
        elif column is not None and not same_storage(batch_type, column.type):
            dropped = table.dropped_column(name) is not None
            unloadable[name] = (
                None
                if dropped
                else (
                    f"column {name!r} of {table.qualified_name} is {batch_type} in this change "
                    f"but {column.type.cql()} in ClickHouse"
                )
            )
    return unloadable


def refused_changes(
    state: TableState, batch: pa.RecordBatch, unloadable: Mapping[str, str | None]
) -> list[tuple[pa.Array, str]]:
    """(changes, reason) for each reason the destination cannot take some of the batch's changes."""
    table = state.layout.table
    refusals = [(pc.is_valid(batch.column(name)), reason) for name, reason in unloadable.items() if reason]
    for column in table.columns:
        if column.type.kind != "date" or column.name not in batch.schema.names or column.name in unloadable:
            continue
        values = batch.column(column.name)
        if column.kind in ("static", "regular"):
            values = pc.struct_field(values, "value")
        reason = f"column {column.name!r} of {table.qualified_name}: a date outside ClickHouse's Date32 range"
        refusals.append((_outside_date32(values), reason))
    return [(pc.fill_null(changes, False), reason) for changes, reason in refusals if pc.any(changes).as_py()]


def _outside_date32(values: pa.Array) -> pa.Array:
    days = values.cast(pa.int32())
    low, high = _DATE32_DAYS
    return pc.fill_null(pc.or_(pc.less(days, low), pc.greater(days, high)), False)


def ipc_bytes(batch: pa.RecordBatch) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue()
