"""Change batches as PostgreSQL staging rows: cells flattened into typed columns, then one row per key.

A change becomes one or two *parts*, each a staging row aimed at one storage table:

- ``r``: a clustering row (its regular cells, row liveness and row deletion) → ``<table>__rows``
- ``s``: a partition's static row (static cells, from a static-row change or a row change that set
  statics) → ``<table>__static``
- ``p``: a partition deletion → ``<table>__partdel``
- ``g``: a range deletion, its bounds as the clustering-order bytes of ``model.range_bounds`` →
  ``<table>__rangedel``

A simple column ``c`` is staged as ``c`` (the value, in its PostgreSQL type), ``c__ts`` (write time,
µs), ``c__exp`` (expiry, seconds since the epoch, for TTL'd cells), ``c__del`` (tombstone) and, for the
types whose CQL bytes PostgreSQL cannot compute (``postgres.types.value_bytes_sql``), ``c__vb`` (those bytes,
for Cassandra's tie-break). A complex column is staged as ``c`` (jsonb: element identity → element, as
``postgres.elements`` describes) and ``c__deleted_at`` (the collection deletion); a counter as ``c`` (jsonb:
counter id → shard, as ``postgres.counters`` describes) and ``c__deleted_at`` (its tombstone). Until the parts
are reduced, elements and shards are kept aside as Arrow rows (``Parts.elements``).

:func:`reduce_parts` merges the parts of one key within a batch by the same rules the merge statement
applies against stored rows, so the statement sees each key once. Everything is columnar except the
values that need Python (durations, collections, UDTs, non-integer clustering keys) and ties.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cdc_assets import change_batch as cb
from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.cassandra_schema.types import CqlType
from cdc_assets.destinations.cassandra_values import (
    canonical_value,
    key_component,
    python_values,
    range_bounds,
    value_bytes,
)
from cdc_assets.destinations.postgres import counters as ct
from cdc_assets.destinations.postgres import elements as el
from cdc_assets.destinations.postgres import types as pg_types
from cdc_assets.destinations.postgres.keys import all_uuid_text, key_matrix, uuid_key

PART_ROW, PART_STATIC, PART_PARTITION, PART_RANGE = "r", "s", "p", "g"

PART = "_cdc_part"
SOURCE = "_cdc_source"
PARTITION_KEY = "_cdc_pk"
CLUSTERING_KEY = "_cdc_ck"
RANGE_LOW = "_cdc_low"
RANGE_HIGH = "_cdc_high"
RANGE_KEY = "_cdc_range"
LIVE_TS = "_cdc_live_ts"
LIVE_EXP = "_cdc_live_exp"
DELETED_AT = "_cdc_deleted_at"

# Years 1-9999: what the staging text forms can spell (PostgreSQL itself goes further).
_MIN_MS, _MAX_MS = -62135596800000, 253402300799999
_MIN_DAYS, _MAX_DAYS = -719162, 2932896
_PLAIN_DECIMAL = r"^-?[0-9]+(\.[0-9]+)?$"
# Digits (and a sign) that always fit a signed 64-bit integer.
_MAX_INT64_DIGITS = 18
_INT_KEY_WIDTHS = {"tinyint": 1, "smallint": 2, "int": 4, "bigint": 8, "timestamp": 8, "date": 4, "time": 8}
# Kinds whose Arrow values are staged as they are (the others as their PostgreSQL text form). Every kind whose
# tie-break bytes PostgreSQL computes (``postgres.types.value_bytes_sql``) is one: ``_tie_bytes`` reads them too.
_NATIVE_KINDS = frozenset(
    {"ascii", "text", "blob", "boolean", "tinyint", "smallint", "int", "bigint", "counter", "float", "double"}
    | {"varint", "decimal", "timestamp", "date", "time", "uuid", "timeuuid", "inet"}
)


def ts_name(column: str) -> str:
    return f"{column}__ts"


def exp_name(column: str) -> str:
    return f"{column}__exp"


def del_name(column: str) -> str:
    return f"{column}__del"


def vb_name(column: str) -> str:
    return f"{column}__vb"


def deleted_at_name(column: str) -> str:
    return f"{column}__deleted_at"


def sum_name(column: str) -> str:
    """A counter's presented value, summed from its shards by PostgreSQL (a generated storage column)."""
    return f"{column}__sum"


def shown_name(column: str) -> str:
    """A complex column's presented value, every element it holds included (see :func:`presented_columns`)."""
    return f"{column}__shown"


def shown_until_name(column: str) -> str:
    """Until when a complex column's stored presented value holds: its first element expiry."""
    return f"{column}__shown_until"


def spelt_name(column: str) -> str:
    """Staged only: whether ``shown_name`` holds the presented value spelt in Python (else SQL computes it)."""
    return f"{column}__spelt"


def presented_columns(column: Column) -> list[tuple[str, str]]:
    """The storage columns keeping a complex column's presented value with every element it holds, and until
    when that holds (its first element expiry; null: never), so a read need not assemble it (none for
    other columns)."""
    if not column.type.is_complex:
        return []
    return [(shown_name(column.name), pg_types.pg_type(column.type)), (shown_until_name(column.name), "bigint")]


def merge_staging_columns(table: TableSchema, columns: Sequence[Column]) -> list[tuple[str, str]]:
    """The staging columns of a merge into the current state: :func:`staging_columns`, then each complex
    column's presented value (from ``reduce_parts(…, dropped_at)``)."""
    presented = []
    for column in columns:
        if column.type.is_complex:
            presented += [*presented_columns(column), (spelt_name(column.name), "boolean")]
    return staging_columns(table, columns) + presented


def has_value_bytes(cql: CqlType) -> bool:
    """Whether a simple column keeps its CQL bytes in a hidden column (PostgreSQL cannot compute them)."""
    return pg_types.value_bytes_sql(cql, "x") is None


def merged_by_parts(column: Column) -> bool:
    """Whether a column is stored as a jsonb of parts merged one by one: a complex column's elements, a
    counter's shards."""
    return column.type.is_complex or column.type.kind == "counter"


def cell_columns(column: Column) -> list[tuple[str, str]]:
    """The staging and storage columns ``(name, PostgreSQL type)`` that hold one Cassandra column."""
    name = column.name
    if merged_by_parts(column):
        return [(name, "jsonb"), (deleted_at_name(name), "bigint")]
    columns = [
        (name, pg_types.pg_type(column.type)),
        (ts_name(name), "bigint"),
        (exp_name(name), "bigint"),
        (del_name(name), "boolean"),
    ]
    return [*columns, (vb_name(name), "bytea")] if has_value_bytes(column.type) else columns


def staging_columns(table: TableSchema, columns: Sequence[Column]) -> list[tuple[str, str]]:
    """The staging table's columns, in COPY order, for a batch carrying ``columns`` (static and regular)."""
    keys = [(c.name, pg_types.pg_type(c.type)) for c in table.partition_key + table.clustering]
    row = [
        (CLUSTERING_KEY, "bytea"),
        (RANGE_LOW, "bytea"),
        (RANGE_HIGH, "bytea"),
        (LIVE_TS, "bigint"),
        (LIVE_EXP, "bigint"),
        (DELETED_AT, "bigint"),
    ]
    return [(PART, "text"), *keys, *row, *(pair for c in columns for pair in cell_columns(c))]


@dataclass
class Parts:
    """Staging rows as Arrow columns.

    Until :func:`reduce_parts` renders them as jsonb text, a complex column's or a counter's staged column is
    null and its elements or shards are in ``elements`` (``postgres.elements`` or ``postgres.counters`` rows, ``SOURCE``
    the change they came from).
    """

    table: pa.Table
    rejected: dict[int, str] = field(default_factory=dict)
    elements: dict[str, pa.Table] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return self.table.num_rows


# --------------------------------------------------------------------------------------------------
# Flattening


def flatten(table: TableSchema, batch: pa.RecordBatch, columns: Sequence[Column]) -> Parts:
    """The batch's changes as staging parts; changes PostgreSQL cannot take are left out, with a reason."""
    rejected: dict[int, str] = {}
    n = batch.num_rows
    data: dict[str, pa.Array] = {SOURCE: pa.array(np.arange(n, dtype=np.int32))}
    elements: dict[str, pa.Table] = {}
    for column in table.partition_key + table.clustering:
        data[column.name] = _staged_values(column, batch.column(column.name), rejected)
    data[LIVE_TS] = batch.column(cb.ROW_WRITETIME)
    data[LIVE_EXP] = batch.column(cb.ROW_EXPIRES_AT).cast(pa.int64())
    data[DELETED_AT] = batch.column(cb.DELETION_WRITETIME)
    for column in columns:
        cells = batch.column(column.name)
        if column.type.is_complex:
            elements[column.name] = el.element_rows(column, cells, rejected)
            data[column.name] = pa.nulls(n, pa.string())
            data[deleted_at_name(column.name)] = pc.struct_field(cells, "deletion")
        elif column.type.kind == "counter":
            elements[column.name] = ct.shard_rows(cells)
            data[column.name] = pa.nulls(n, pa.string())
            tombstone = pc.fill_null(pc.struct_field(cells, "deleted"), False)
            data[deleted_at_name(column.name)] = pc.if_else(tombstone, pc.struct_field(cells, "writetime"), None)
        else:
            data.update(_simple_cells(column, cells, rejected))
    kinds = batch.column(cb.KIND)
    is_row = pc.equal(kinds, cb.KIND_ROW)
    data[PARTITION_KEY] = _key_bytes(table.partition_key, [batch.column(c.name) for c in table.partition_key])
    data[CLUSTERING_KEY] = _clustering_bytes(table, batch, is_row)
    data.update(_range_columns(table, batch, pc.equal(kinds, cb.KIND_RANGE_DELETION)))
    full = Parts(pa.table(data))

    is_static_row = pc.equal(kinds, cb.KIND_STATIC_ROW)
    statics = [c for c in columns if c.kind == "static"]
    regulars = [c for c in columns if c.kind == "regular"]
    sets_statics = pc.and_(is_row, _any_valid([batch.column(c.name) for c in statics], n))
    layout = _Layout(table, columns)
    pieces = [
        layout.part(full, is_row, PART_ROW, cells=regulars, clustering=True, row_level=True),
        layout.part(full, is_static_row, PART_STATIC, cells=statics, row_level=True),
        layout.part(full, sets_statics, PART_STATIC, cells=statics),
        layout.part(full, pc.equal(kinds, cb.KIND_PARTITION_DELETION), PART_PARTITION, deletion=True),
        layout.part(full, pc.equal(kinds, cb.KIND_RANGE_DELETION), PART_RANGE, deletion=True),
    ]
    parts = _concat([piece for piece in pieces if piece.num_rows] or pieces[:1])
    if rejected:
        parts = _without_sources(parts, rejected)
    parts.rejected = rejected
    parts.elements = elements
    return parts


def _staged_values(column: Column, values: pa.Array, rejected: dict[int, str]) -> pa.Array:
    """A column's values as staged for its :func:`pg_type`: as they are, or as PostgreSQL's text form."""
    cql = column.type
    kind = cql.kind
    if kind in _NATIVE_KINDS:
        if kind in ("ascii", "text"):
            _reject_where(pc.match_substring(values, "\x00"), f"{column.name}: text with a NUL character", rejected)
        elif kind == "timestamp":
            ms = values.cast(pa.int64())
            outside = pc.or_(pc.less(ms, _MIN_MS), pc.greater(ms, _MAX_MS))
            _reject_where(outside, f"{column.name}: timestamp outside years 1-9999", rejected)
        elif kind == "date":
            days = values.cast(pa.int32())
            outside = pc.or_(pc.less(days, _MIN_DAYS), pc.greater(days, _MAX_DAYS))
            _reject_where(outside, f"{column.name}: date outside years 1-9999", rejected)
        elif kind == "time":
            # PostgreSQL keeps microseconds: truncate, rather than let its input round.
            ns = values.cast(pa.int64())
            return pc.multiply(pc.divide(ns, 1000), 1000).cast(pa.time64("ns"))
        return values
    texts: list[str | None] = []
    for index, raw in enumerate(python_values(values)):
        try:
            text = pg_types.copy_text(cql, canonical_value(cql, raw))
        except (ValueError, OverflowError) as error:
            rejected.setdefault(index, f"{column.name}: {error}")
            text = None
        if text is not None and ("\x00" in text or "\\u0000" in text):
            rejected.setdefault(index, f"{column.name}: text with a NUL character")
        texts.append(text)
    return pa.array(texts, pa.string())


def _reject_where(mask: pa.Array, reason: str, rejected: dict[int, str]) -> None:
    for index in np.nonzero(pc.fill_null(mask, False).to_numpy(zero_copy_only=False))[0]:
        rejected.setdefault(int(index), reason)


def _simple_cells(column: Column, cells: pa.Array, rejected: dict[int, str]) -> dict[str, pa.Array]:
    name = column.name
    n = len(cells)
    present = pc.is_valid(cells)
    deleted = pc.and_(pc.fill_null(pc.struct_field(cells, "deleted"), False), present)
    writetime = pc.struct_field(cells, "writetime")
    expires = pc.struct_field(cells, "expires_at").cast(pa.int64())
    raw_values = pc.struct_field(cells, "value")
    live_values = pc.if_else(deleted, pa.nulls(n, raw_values.type), raw_values)
    staged = {
        name: _staged_values(column, live_values, rejected),
        ts_name(name): writetime,
        exp_name(name): pc.if_else(deleted, pa.nulls(n, pa.int64()), expires),
        del_name(name): pc.if_else(present, deleted, pa.nulls(n, pa.bool_())),
    }
    if has_value_bytes(column.type):
        columnar = _decimal_value_bytes(live_values) if column.type.kind == "decimal" else None
        if columnar is None:
            columnar = pa.array(_value_bytes(column, live_values, rejected), pa.binary())
        staged[vb_name(name)] = columnar
    return staged


def _value_bytes(column: Column, values: pa.Array, rejected: dict[int, str]) -> list[bytes | None]:
    result: list[bytes | None] = []
    for index, raw in enumerate(python_values(values)):
        try:
            result.append(None if raw is None else value_bytes(column.type, canonical_value(column.type, raw)))
        except (ValueError, OverflowError, struct.error) as error:
            rejected.setdefault(index, f"{column.name}: {error}")
            result.append(None)
    return result


def _decimal_value_bytes(values: pa.Array) -> pa.Array | None:
    """Decimal text as its CQL bytes (``model.value_bytes``: scale, then the unscaled value's minimal two's
    complement), columnar; None unless every value is plain digits whose unscaled value fits 64 bits."""
    if not pc.all(pc.match_substring_regex(values, _PLAIN_DECIMAL)).as_py():
        return None
    digits = pc.replace_substring(values, ".", "")
    if (pc.max(pc.utf8_length(digits)).as_py() or 0) > _MAX_INT64_DIGITS:
        return None
    valid = pc.is_valid(values).to_numpy(zero_copy_only=False)
    unscaled = pc.fill_null(digits.cast(pa.int64()), 0).to_numpy()
    point = pc.fill_null(pc.find_substring(values, "."), -1).to_numpy()
    length = pc.fill_null(pc.utf8_length(values), 0).to_numpy()
    scale = np.where(point < 0, 0, length - point - 1).astype(">i4")
    magnitude = np.where(unscaled < 0, ~unscaled, unscaled)
    widths = 1 + sum((magnitude >= 1 << (8 * k - 1)).astype(np.int64) for k in range(1, 8))
    widths[~valid] = -4
    matrix = np.hstack([scale.view(np.uint8).reshape(-1, 4), unscaled.astype(">i8").view(np.uint8).reshape(-1, 8)])
    # Per row: the four scale bytes, then the last ``width`` bytes of the big-endian unscaled value.
    keep = np.arange(12) >= (12 - widths)[:, None]
    keep[:, :4] = valid[:, None]
    offsets = np.r_[0, np.cumsum(keep.sum(axis=1))].astype(np.int32)
    data = pa.py_buffer(matrix[keep].tobytes())
    raw = pa.Array.from_buffers(pa.binary(), len(values), [None, pa.py_buffer(offsets.tobytes()), data])
    return pc.if_else(pa.array(valid), raw, pa.scalar(None, pa.binary()))


def _any_valid(arrays: list[pa.Array], n: int) -> pa.Array:
    result = pa.array(np.zeros(n, dtype=bool))
    for array in arrays:
        result = pc.or_(result, pc.is_valid(array))
    return result


class _Layout:
    """Which staged columns each kind of part keeps; the others are nulled."""

    def __init__(self, table: TableSchema, columns: Sequence[Column]):
        self.clustering = [CLUSTERING_KEY, *(c.name for c in table.clustering)]
        self.cells = {c.name: [name for name, _ in cell_columns(c)] for c in columns}

    def part(
        self,
        full: Parts,
        mask: pa.Array,
        part: str,
        *,
        cells: Sequence[Column] = (),
        clustering: bool = False,
        row_level: bool = False,
        deletion: bool = False,
    ) -> Parts:
        """The changes selected by ``mask`` as parts of kind ``part``."""
        indices = np.nonzero(pc.fill_null(mask, False).to_numpy(zero_copy_only=False))[0]
        n = len(indices)
        everything = n == full.num_rows
        selected = full.table if everything else full.table.take(pa.array(indices, pa.int64()))
        nulled = set() if clustering else set(self.clustering)
        if not row_level:
            nulled |= {LIVE_TS, LIVE_EXP} | (set() if deletion else {DELETED_AT})
        kept = {c.name for c in cells}
        for name, names in self.cells.items():
            if name not in kept:
                nulled.update(names)
        arrays = {
            name: pa.nulls(n, selected.column(name).type) if name in nulled else selected.column(name)
            for name in selected.column_names
        }
        arrays[PART] = pa.array([part] * n, pa.string())
        return Parts(pa.table(arrays))


def _concat(pieces: list[Parts]) -> Parts:
    return Parts(pa.concat_tables([piece.table for piece in pieces]) if len(pieces) > 1 else pieces[0].table)


def _without_sources(parts: Parts, rejected: dict[int, str]) -> Parts:
    sources = parts.table.column(SOURCE).to_numpy()
    keep = ~np.isin(sources, np.fromiter(rejected, dtype=np.int64))
    return Parts(parts.table.take(pa.array(np.nonzero(keep)[0], pa.int64())))


def partition_pieces(
    table: TableSchema, batch: pa.RecordBatch, size: int
) -> Iterator[tuple[np.ndarray, pa.RecordBatch]]:
    """The batch in pieces of about ``size`` changes, with the indices of each piece's changes in the batch.

    A piece holds whole partitions, so all changes to a key are reduced together in Python: split across
    pieces they would converge too, but each later one would cost an update on the server.
    """
    n = batch.num_rows
    if n <= size:
        yield np.arange(n), batch
        return
    if len(table.partition_key) == 1:
        # Values PostgreSQL would identify but Arrow does not (-0.0 and 0.0) only cost a conflict update.
        keys = batch.column(table.partition_key[0].name)
    else:
        keys = _key_bytes(table.partition_key, [batch.column(c.name) for c in table.partition_key])
    partitions = pc.dictionary_encode(keys).indices.to_numpy().astype(np.int64)
    pieces = -(-n // size)
    # Partitions in order of first appearance, cut into ranges of about equal count.
    piece_of = partitions * pieces // (int(partitions.max()) + 1)
    order = np.argsort(piece_of, kind="stable")
    bounds = np.searchsorted(piece_of[order], np.arange(pieces + 1))
    # Each piece taken when it is wanted: the first reaches PostgreSQL without waiting for the others.
    for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        if end > start:
            indices = order[start:end]
            yield indices, batch.take(pa.array(indices))


# --------------------------------------------------------------------------------------------------
# Key bytes


def _key_bytes(columns: Sequence[Column], arrays: Sequence[pa.Array], descending: bool = False) -> pa.Array:
    """Primary key values as their concatenated ``model.key_component`` bytes, columnar where possible.

    ``descending`` marks clustering columns: they honour their DESC order and keep Cassandra's identity
    (``_cdc_ck`` alone tells rows apart, and range bounds are Cassandra's); partition keys are identified
    as PostgreSQL's own key columns identify them (:func:`_pg_key_value`).
    """
    n = len(arrays[0]) if arrays else 0
    if not columns:
        return pa.array([b""] * n, pa.binary())
    components = [
        _key_component(column, array, descending and column.descending, as_postgres=not descending)
        for column, array in zip(columns, arrays, strict=True)
    ]
    if len(components) == 1:
        return components[0]
    return pc.binary_join_element_wise(*components, pa.scalar(b"", pa.binary()))


def _key_component(column: Column, array: pa.Array, descending: bool, *, as_postgres: bool) -> pa.Array:
    kind = column.type.kind
    n = len(array)
    if array.null_count == 0 and kind in _INT_KEY_WIDTHS:
        width = _INT_KEY_WIDTHS[kind]
        values = array.cast(pa.int32() if kind == "date" else pa.int64()).to_numpy().astype(np.int64)
        if kind == "time" and as_postgres:
            values = values - values % 1000
        if width == 8:
            biased = (values.view(np.uint64) ^ np.uint64(1 << 63)).astype(">u8")
        else:
            biased = (values + (1 << (8 * width - 1))).astype(f">u{width}")
        return key_matrix(biased.view(np.uint8).reshape(n, width), descending)
    if array.null_count == 0 and kind in ("uuid", "timeuuid") and all_uuid_text(array):
        return uuid_key(kind, array, descending)
    if array.null_count == 0 and kind in ("ascii", "text", "blob") and not descending:
        escaped = pc.replace_substring(array.cast(pa.binary()), b"\x00", b"\x00\xff")
        header, trailer = pa.scalar(b"\x02", pa.binary()), pa.scalar(b"\x00\x00", pa.binary())
        return pc.binary_join_element_wise(header, escaped, trailer, pa.scalar(b"", pa.binary()))
    identify = _pg_key_value if as_postgres else canonical_value
    return pa.array(
        [key_component(column.type, identify(column.type, v), descending) for v in python_values(array)],
        pa.binary(),
    )


def _pg_key_value(cql: CqlType, raw: Any) -> Any:
    """A key value as PostgreSQL identifies it: time to the microsecond, -0.0 equal to 0.0."""
    value = canonical_value(cql, raw)
    if cql.kind == "time" and value is not None:
        return value - value % 1000
    if cql.kind in ("float", "double") and value == 0:
        return 0.0
    return value


def _clustering_bytes(table: TableSchema, batch: pa.RecordBatch, is_row: pa.Array) -> pa.Array:
    """Row changes' clustering as ``model.clustering_key`` bytes (null for other changes)."""
    rows = np.nonzero(pc.fill_null(is_row, False).to_numpy(zero_copy_only=False))[0]
    taken = [batch.column(c.name).take(pa.array(rows, pa.int64())) for c in table.clustering]
    keys = _key_bytes(table.clustering, taken, descending=True) if taken else pa.array([b""] * len(rows), pa.binary())
    positions = np.full(batch.num_rows, -1, dtype=np.int64)
    positions[rows] = np.arange(len(rows))
    return keys.take(_indices(positions))


def _range_columns(table: TableSchema, batch: pa.RecordBatch, is_range: pa.Array) -> dict[str, pa.Array]:
    """Range deletions' bounds (``model.range_bounds``) and their identity; null for other changes."""
    rows = np.nonzero(pc.fill_null(is_range, False).to_numpy(zero_copy_only=False))[0]
    if len(rows) == 0:
        nulls = pa.nulls(batch.num_rows, pa.binary())
        return {RANGE_LOW: nulls, RANGE_HIGH: nulls, RANGE_KEY: nulls}
    names = (cb.RANGE_START, cb.RANGE_START_INCLUSIVE, cb.RANGE_END, cb.RANGE_END_INCLUSIVE)
    bounds = [python_values(batch.column(name).take(pa.array(rows, pa.int64()))) for name in names]
    low, high = zip(*(range_bounds(table, *values) for values in zip(*bounds, strict=True)), strict=True)
    keys = [struct.pack(">I", len(lo)) + lo + hi for lo, hi in zip(low, high, strict=True)]
    positions = np.full(batch.num_rows, -1, dtype=np.int64)
    positions[rows] = np.arange(len(rows))
    scatter = _indices(positions)
    return {
        name: pa.array(values, pa.binary()).take(scatter)
        for name, values in ((RANGE_LOW, low), (RANGE_HIGH, high), (RANGE_KEY, keys))
    }


# --------------------------------------------------------------------------------------------------
# Reduction


def part_keys(parts: Parts) -> pa.Array:
    """Each part's identity: its kind and key (partition, clustering or range), as bytes."""
    table = parts.table
    empty = pa.scalar(b"", pa.binary())
    return pc.binary_join_element_wise(
        _array(table, PART).cast(pa.binary()),
        _array(table, PARTITION_KEY),
        pc.fill_null(_array(table, CLUSTERING_KEY), empty),
        pc.fill_null(_array(table, RANGE_KEY), empty),
        empty,
    )


def _group_ids(parts: Parts) -> tuple[np.ndarray, int]:
    """A group number per part, one group per kind and key; and the number of groups."""
    encoded = pc.dictionary_encode(part_keys(parts))
    return encoded.indices.to_numpy(), len(encoded.dictionary)


def _winners(groups: np.ndarray, count: int, valid: np.ndarray, keys: list[np.ndarray]) -> tuple[np.ndarray, list]:
    """Per group, the valid row with the greatest ``keys`` (most significant first), and runs of ties.

    Returns ``(winner index or -1 per group, [(group, [tied row indices])])``.
    """
    rows = np.nonzero(valid)[0]
    winners = np.full(count, -1, dtype=np.int64)
    if len(rows) == 0:
        return winners, []
    order = rows[np.lexsort((*(k[rows] for k in reversed(keys)), groups[rows]))]
    sorted_groups = groups[order]
    last = np.r_[sorted_groups[1:] != sorted_groups[:-1], True]
    winners[sorted_groups[last]] = order[last]
    same = sorted_groups[1:] == sorted_groups[:-1]
    for key in keys:
        same &= key[order][1:] == key[order][:-1]
    ties = []
    for position in np.nonzero(last[1:] & same)[0] + 1:
        start = position
        while start > 0 and same[start - 1]:
            start -= 1
        ties.append((int(sorted_groups[position]), [int(i) for i in order[start : position + 1]]))
    return winners, ties


def _array(table: pa.Table, name: str) -> pa.Array:
    return table.column(name).combine_chunks()


def _int_column(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """An integer column as (values with nulls as 0, validity)."""
    column = _array(table, name)
    valid = pc.is_valid(column).to_numpy(zero_copy_only=False)
    return pc.fill_null(column, 0).to_numpy(zero_copy_only=False).astype(np.int64), valid


def reduce_parts(parts: Parts, columns: Sequence[Column], dropped_at: Mapping[str, int] | None = None) -> Parts:
    """One part per key and kind: cells, liveness and deletions of a key merged by Cassandra's rules, and
    each complex column's elements reduced and rendered as its staged jsonb text.

    With ``dropped_at`` (per complex column, the write time at or before which a drop hides its cells), each
    complex column's :func:`presented_columns` are staged too, for the merge into the current state."""
    groups, count = _group_ids(parts)
    table = parts.table
    if count == parts.num_rows:
        result = {name: _array(table, name) for name in table.column_names}
    else:
        result = _reduced_cells(table, groups, count, columns)
    names = list(table.column_names)
    if dropped_at is not None:
        _apply_own_deletions(result, columns)
    for column in columns:
        if merged_by_parts(column):
            owners = element_owners(parts, column)
            owners = np.where(owners >= 0, groups[owners], -1)
            if not column.type.is_complex:
                result[column.name] = ct.reduce_and_render(parts.elements[column.name], owners, count)
                continue
            deletions = result[deleted_at_name(column.name)]
            if dropped_at is not None:
                deletions = _later(deletions, result[DELETED_AT])
            kept, kept_owners = el.reduce(parts.elements[column.name], owners, deletions)
            result[column.name] = el.render(kept, kept_owners, count)
            if dropped_at is None:
                continue
            if el.presentable(column.type):
                presented = el.present(column.type, kept, kept_owners, count, dropped_at[column.name])
                value, until, spelt = presented.value, presented.until, presented.spelt
            else:
                value, until, spelt = (
                    pa.nulls(count, pa.string()),
                    pa.nulls(count, pa.int64()),
                    pa.nulls(count, pa.bool_()),
                )
            shown = (shown_name(column.name), shown_until_name(column.name), spelt_name(column.name))
            result.update(zip(shown, (value, until, spelt), strict=True))
            names += shown
    return Parts(pa.table({name: result[name] for name in names}), parts.rejected)


def _apply_own_deletions(result: dict[str, pa.Array], columns: Sequence[Column]) -> None:
    """Remove from each reduced part what its own deletion (a row's deletion, in ``DELETED_AT``) hides: the
    liveness and simple cells written at or before it. (Elements: by ``reduce_parts``; counter shards stay,
    their presented sum hides them.) What the merge statement would remove, removed before it runs."""
    deleted_at = result[DELETED_AT]
    if deleted_at.null_count == len(deleted_at):
        return

    def hidden(ts: pa.Array) -> pa.Array:
        return pc.fill_null(pc.less_equal(ts, deleted_at), False)

    live_hidden = hidden(result[LIVE_TS])
    for name in (LIVE_TS, LIVE_EXP):
        result[name] = pc.if_else(live_hidden, pa.scalar(None, result[name].type), result[name])
    for column in columns:
        if merged_by_parts(column):
            continue
        cell_hidden = hidden(result[ts_name(column.name)])
        for name, _ in cell_columns(column):
            result[name] = pc.if_else(cell_hidden, pa.scalar(None, result[name].type), result[name])


def _later(first: pa.Array, second: pa.Array) -> pa.Array:
    """Element-wise the later of two nullable write times (null where both are)."""
    return pc.max_element_wise(first, second, skip_nulls=True)


def _reduced_cells(table: pa.Table, groups: np.ndarray, count: int, columns: Sequence[Column]) -> dict[str, pa.Array]:
    """Per group, the liveness, deletions and simple cells that win (complex columns: their deletion only)."""
    first = np.unique(groups, return_index=True)[1]
    result = {name: _array(table, name).take(pa.array(first, pa.int64())) for name in table.column_names}
    live_ts, live_valid = _int_column(table, LIVE_TS)
    live_exp, exp_valid = _int_column(table, LIVE_EXP)
    winners, _ = _winners(groups, count, live_valid, [live_ts, exp_valid.astype(np.int64), live_exp])
    for name in (LIVE_TS, LIVE_EXP):
        result[name] = _array(table, name).take(_indices(winners))
    result[DELETED_AT] = _group_max(table, DELETED_AT, groups, count)
    for column in columns:
        if merged_by_parts(column):
            deletion = deleted_at_name(column.name)
            result[deletion] = _group_max(table, deletion, groups, count)
            continue
        ts, valid = _int_column(table, ts_name(column.name))
        exp, expiring = _int_column(table, exp_name(column.name))
        deleted = pc.fill_null(_array(table, del_name(column.name)), False).to_numpy(zero_copy_only=False)
        rank_class = np.where(deleted, 2, np.where(expiring, 1, 0))
        winners, ties = _winners(groups, count, valid, [ts, rank_class, exp])
        for group, candidates in ties:
            winners[group] = max(candidates, key=lambda i: _tie_bytes(table, column, i))
        for name, _ in cell_columns(column):
            result[name] = _array(table, name).take(_indices(winners))
    return result


def render_parts(parts: Parts, columns: Sequence[Column]) -> Parts:
    """The parts as they are (not reduced), each complex column's elements (each counter's shards) rendered as
    the part's jsonb text."""
    table = parts.table
    for column in columns:
        if merged_by_parts(column):
            owners = element_owners(parts, column)
            render = el.reduce_and_render if column.type.is_complex else ct.reduce_and_render
            rendered = render(parts.elements[column.name], owners, len(table))
            table = table.set_column(table.schema.get_field_index(column.name), column.name, rendered)
    return Parts(table, parts.rejected, parts.elements)


def latest_element_writetimes(parts: Parts, column: Column) -> pa.Array:
    """Per part, the latest write time among its elements of a complex column or shards of a counter (null
    when it has none)."""
    return el.latest_writetimes(parts.elements[column.name], element_owners(parts, column), parts.num_rows)


def element_owners(parts: Parts, column: Column) -> np.ndarray:
    """For each element of a complex column (or shard of a counter), the part (row index) that carries it; -1
    when none does (its change was rejected)."""
    elements = parts.elements[column.name]
    kind = PART_STATIC if column.kind == "static" else PART_ROW
    sources = _array(parts.table, SOURCE).to_numpy(zero_copy_only=False).astype(np.int64)
    element_sources = elements.column(el.SOURCE).to_numpy()
    mine = pc.equal(_array(parts.table, PART), kind).to_numpy(zero_copy_only=False)
    size = 1 + max(int(sources.max(initial=-1)), int(element_sources.max(initial=-1)))
    part_of_source = np.full(size, -1, dtype=np.int64)
    part_of_source[sources[mine]] = np.nonzero(mine)[0]
    return part_of_source[element_sources]


def _indices(winners: np.ndarray) -> pa.Array:
    return pa.array(winners, pa.int64(), mask=winners < 0)


def _group_max(table: pa.Table, name: str, groups: np.ndarray, count: int) -> pa.Array:
    values, valid = _int_column(table, name)
    result = np.full(count, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(result, groups[valid], values[valid])
    seen = np.zeros(count, dtype=bool)
    seen[groups[valid]] = True
    return pa.array(result, pa.int64(), mask=~seen)


def _tie_bytes(table: pa.Table, column: Column, index: int) -> bytes:
    """The serialized value a write-time tie breaks on: the hidden bytes column, or else the staged value,
    which is the batch's own for every kind whose bytes PostgreSQL computes (``_NATIVE_KINDS``)."""
    if has_value_bytes(column.type):
        return table.column(vb_name(column.name))[index].as_py() or b""
    raw = python_values(table.column(column.name).slice(index, 1))[0]
    return value_bytes(column.type, canonical_value(column.type, raw))
