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
types whose CQL bytes PostgreSQL cannot compute (``pg_types.value_bytes_sql``), ``c__vb`` (those bytes,
for Cassandra's tie-break). A complex column is staged as ``c`` (jsonb: element key → element) and
``c__deleted_at`` (the collection deletion). An element is ``{"ts", "c" (0 live, 1 expiring,
2 tombstone), "exp", "vb" (hex of the value's CQL bytes), "v" (the value, as pg_types' JSON), "o" (hex of
the element's order bytes), "k" (a map key's JSON text)}``.

:func:`reduce_parts` merges the parts of one key within a batch by the same rules the merge statement
applies against stored rows, so the statement sees each key once. Everything is columnar except the
values that need Python (blobs, durations, collections, UDTs, non-integer clustering keys) and ties.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cdc_assets import change_batch as cb
from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.cassandra_schema.types import CqlType
from cdc_assets.destinations import pg_types
from cdc_assets.destinations.model import (
    MAX_WRITETIME,
    canonical_value,
    key_component,
    order_bytes,
    python_values,
    range_bounds,
    timeuuid_order,
    value_bytes,
)

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
_UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_HEX_VALUES = np.zeros(256, dtype=np.uint8)
_HEX_VALUES[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint8)
_HEX_VALUES[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16, dtype=np.uint8)
_PLAIN_DECIMAL = r"^-?[0-9]+(\.[0-9]+)?$"
# Digits (and a sign) that always fit a signed 64-bit integer.
_MAX_INT64_DIGITS = 18
_COLUMNAR_ELEMENT_KINDS = frozenset({"ascii", "text", "tinyint", "smallint", "int", "bigint"})
_INT_KEY_WIDTHS = {"tinyint": 1, "smallint": 2, "int": 4, "bigint": 8, "timestamp": 8, "date": 4, "time": 8}
# Kinds whose Arrow values Arrow's CSV writer already spells the way PostgreSQL reads them.
_CSV_NATIVE_KINDS = frozenset(
    {"ascii", "text", "boolean", "tinyint", "smallint", "int", "bigint", "counter", "float", "double"}
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


def has_value_bytes(cql: CqlType) -> bool:
    """Whether a simple column keeps its CQL bytes in a hidden column (PostgreSQL cannot compute them)."""
    return pg_types.value_bytes_sql(cql, "x") is None


def cell_columns(column: Column) -> list[tuple[str, str]]:
    """The staging and storage columns ``(name, PostgreSQL type)`` that hold one Cassandra column."""
    name = column.name
    if column.type.is_complex:
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
    """Staging rows as Arrow columns (a complex column's elements as the JSON text of its jsonb)."""

    table: pa.Table
    rejected: dict[int, str] = field(default_factory=dict)

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
    for column in table.partition_key + table.clustering:
        data[column.name] = _staged_values(column, batch.column(column.name), rejected)
    data[LIVE_TS] = batch.column(cb.ROW_WRITETIME)
    data[LIVE_EXP] = batch.column(cb.ROW_EXPIRES_AT).cast(pa.int64())
    data[DELETED_AT] = batch.column(cb.DELETION_WRITETIME)
    for column in columns:
        cells = batch.column(column.name)
        if column.type.is_complex:
            data[column.name] = _elements(column, cells, rejected)
            data[deleted_at_name(column.name)] = pc.struct_field(cells, "deletion")
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
    return parts


def _staged_values(column: Column, values: pa.Array, rejected: dict[int, str]) -> pa.Array:
    """A column's values in the Arrow form whose CSV text PostgreSQL reads as its :func:`pg_type`."""
    cql = column.type
    kind = cql.kind
    if kind in _CSV_NATIVE_KINDS:
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


# A JSON-escaped NUL: \u0000 after an even number (zero included) of escaped backslashes.
_JSON_NUL = r"(?:^|[^\\])(?:\\\\)*\\u0000"


def _reject_where(mask: pa.Array, reason: str, rejected: dict[int, str]) -> None:
    for index in np.nonzero(pc.fill_null(mask, False).to_numpy(zero_copy_only=False))[0]:
        rejected.setdefault(int(index), reason)


def _simple_cells(column: Column, cells: pa.Array, rejected: dict[int, str]) -> dict[str, pa.Array]:
    name = column.name
    n = len(cells)
    present = pc.is_valid(cells)
    deleted = pc.and_(pc.fill_null(pc.struct_field(cells, "deleted"), False), present)
    writetime = pc.struct_field(cells, "writetime")
    if column.type.kind == "counter":
        # A counter tombstone beats every live counter cell, whatever its write time.
        writetime = pc.if_else(deleted, pa.scalar(MAX_WRITETIME, pa.int64()), writetime)
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


def _elements(column: Column, cells: pa.Array, rejected: dict[int, str]) -> pa.Array:
    """Each change's elements of a complex column as JSON text: element identity → element (module docstring)."""
    cql = column.type
    lists = pc.struct_field(cells, "cells")
    texts = _columnar_elements(cql, lists)
    if texts is None:
        result: list[str | None] = []
        for index, raw in enumerate(python_values(lists)):
            if raw is None:
                result.append(None)
                continue
            try:
                result.append(pg_types.dumps(_column_elements(cql, raw)))
            except (ValueError, OverflowError) as error:
                rejected.setdefault(index, f"{column.name}: {error}")
                result.append(None)
        texts = pa.array(result, pa.string())
    # jsonb cannot hold a NUL character: set such a change aside instead of failing the whole load.
    _reject_where(
        pc.match_substring_regex(texts, _JSON_NUL), f"{column.name}: an element with a NUL character", rejected
    )
    return texts


def _columnar_elements(cql: CqlType, lists: pa.Array) -> pa.Array | None:
    """What :func:`_elements` writes, built column by column: for sets, lists and maps of text and integers
    (None for other collections, or for text JSON must escape)."""
    if cql.kind not in ("set", "list", "map"):
        return None
    value_type = None if cql.kind == "set" else cql.args[-1]
    path_type = CqlType("timeuuid") if cql.kind == "list" else cql.args[0]
    if cql.kind != "list" and path_type.kind not in _COLUMNAR_ELEMENT_KINDS:
        return None
    if value_type is not None and value_type.kind not in _COLUMNAR_ELEMENT_KINDS:
        return None
    present = pc.indices_nonzero(pc.is_valid(lists))
    changes = lists.take(present)
    cells = pc.list_flatten(changes)
    paths = pc.struct_field(cells, "path")
    if cql.kind == "list":
        if not _all_uuid_text(paths):
            return None
        keys = pc.utf8_lower(paths)
        # A key component is 0x02 then the order bytes: drop the marker's two hex digits.
        order = pc.utf8_slice_codeunits(_hex(_uuid_key("timeuuid", paths, False)), 2)
    else:
        path_text = _element_text(path_type, paths)
        if path_text is None:
            return None
        keys, order, path_json = path_text
    parents = pc.list_parent_indices(changes)
    identities = pc.dictionary_encode(pc.binary_join_element_wise(parents.cast(pa.string()), keys, ":")).indices
    repeated = np.bincount(identities.to_numpy(), minlength=1)[identities.to_numpy()] > 1
    deleted = pc.struct_field(cells, "deleted")
    expires = pc.struct_field(cells, "expires_at").cast(pa.int64())
    live = pc.invert(deleted)
    rank_class = pc.if_else(deleted, "2", pc.if_else(pc.is_valid(expires), "1", "0"))
    fragments = [
        '"',
        keys,
        '":{"ts":',
        pc.struct_field(cells, "writetime").cast(pa.string()),
        ',"c":',
        rank_class,
        _when(live, pc.binary_join_element_wise(',"exp":', expires.cast(pa.string()), "")),
    ]
    if cql.kind == "set":
        fragments += [_when(live, ',"vb":""'), ',"v":', path_json]
    else:
        value_text = _element_text(value_type, pc.struct_field(cells, "value"))
        if value_text is None:
            return None
        value_bytes_hex, _, value_json = value_text
        fragments += [_when(live, ',"vb":"'), _when(live, value_bytes_hex), _when(live, '"')]
        fragments += [_when(live, ',"v":'), _when(live, value_json)]
    fragments += [',"o":"', order, '"']
    if cql.kind == "map":
        fragments += [',"k":', path_json if path_type.kind in ("ascii", "text") else _quoted(path_json)]
    fragments.append("}")
    texts = pc.binary_join_element_wise(*fragments, "", null_handling="skip")
    offsets = np.r_[0, np.cumsum(pc.list_value_length(changes).to_numpy())].astype(np.int32)
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), texts), ",")
    objects = pc.binary_join_element_wise("{", joined, "}", "")
    if repeated.any():
        # An element named twice in one change: the rare case _column_elements resolves, one change at a time.
        rows = np.unique(parents.to_numpy()[repeated])
        texts = objects.to_pylist()
        for row, raw in zip(rows.tolist(), python_values(changes.take(pa.array(rows))), strict=True):
            texts[row] = pg_types.dumps(_column_elements(cql, raw))
        objects = pa.array(texts, pa.string())
    positions = np.full(len(lists), -1, dtype=np.int64)
    positions[present.to_numpy()] = np.arange(len(present))
    return objects.take(_indices(positions))


def _element_text(cql: CqlType, values: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array] | None:
    """Text and integer values as (hex of their CQL bytes, hex of their order bytes, their JSON);
    None when some text needs escaping in JSON (which then also rules out a NUL in the order bytes)."""
    if cql.kind in ("ascii", "text"):
        if pc.any(pc.match_substring_regex(values, r'[\x00-\x1f"\\]')).as_py():
            return None
        value_hex = _hex(values.cast(pa.binary()))
        return value_hex, pc.binary_join_element_wise(value_hex, "0000", ""), _quoted(values)
    width = _INT_KEY_WIDTHS[cql.kind]
    numbers = pc.fill_null(values.cast(pa.int64()), 0).to_numpy()
    signed = numbers.astype(f">i{width}").view(np.uint8).reshape(-1, width)
    biased = signed.copy()
    biased[:, 0] ^= 0x80
    json_text = pc.if_else(pc.is_valid(values), values.cast(pa.string()), pa.scalar(None, pa.string()))
    return _hex(_fixed_binary(signed)), _hex(_fixed_binary(biased)), json_text


def _when(mask: pa.Array, text: str | pa.Array) -> pa.Array:
    """``text`` where ``mask``, null elsewhere (a fragment the JSON of that element leaves out)."""
    return pc.if_else(mask, text, pa.scalar(None, pa.string()))


def _quoted(values: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise('"', values, '"', "")


def _hex(values: pa.Array) -> pa.Array:
    return pc.utf8_slice_codeunits(bytea_text(values), 2)


def _fixed_binary(matrix: np.ndarray) -> pa.Array:
    n, width = matrix.shape
    buffer = pa.py_buffer(np.ascontiguousarray(matrix).tobytes())
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, buffer]).cast(pa.binary())


def _column_elements(cql: CqlType, raw: Any) -> dict[str, Any]:
    elements: dict[str, Any] = {}
    if cql.kind == "udt":
        for name, field_type in zip(cql.field_names, cql.args, strict=True):
            cell = raw.get(name)
            if cell is not None:
                _merge_element(elements, name, _element(field_type, cell))
        return elements
    if cql.kind == "list":
        path_type, value_type = CqlType("timeuuid"), cql.args[0]
    elif cql.kind == "set":
        path_type, value_type = cql.args[0], None
    else:
        path_type, value_type = cql.args
    for cell in raw:
        path = canonical_value(path_type, cell["path"])
        element = _element(value_type, cell)
        if cql.kind == "list":
            key = path
            element["o"] = timeuuid_order(path).hex()
        else:
            key = value_bytes(path_type, path).hex()
            element["o"] = order_bytes(path_type, path).hex()
            if cql.kind == "set":
                element["v"] = pg_types.json_value(path_type, path)
            else:
                element["k"] = pg_types.map_key_text(path_type, path)
        _merge_element(elements, key, element)
    return elements


def _element(value_type: CqlType | None, cell: dict[str, Any]) -> dict[str, Any]:
    if cell["deleted"]:
        return {"ts": cell["writetime"], "c": 2}
    element: dict[str, Any] = {"ts": cell["writetime"], "c": 0}
    if cell["expires_at"] is not None:
        element["c"] = 1
        element["exp"] = cell["expires_at"]
    if value_type is not None:
        value = canonical_value(value_type, cell["value"])
        element["vb"] = value_bytes(value_type, value).hex()
        element["v"] = pg_types.json_value(value_type, value)
    else:
        element["vb"] = ""
    return element


def element_rank(element: dict[str, Any]) -> tuple[int, int, int, str]:
    """Cassandra's reconciliation order of an element (hex of equal-length-prefix bytes orders as bytes)."""
    return (element["ts"], element["c"], element.get("exp", 0), element.get("vb", ""))


def _merge_element(elements: dict[str, Any], key: str, element: dict[str, Any]) -> None:
    current = elements.get(key)
    if current is None or element_rank(element) > element_rank(current):
        elements[key] = element


def latest_element_writetime(elements: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The latest write time among each part's elements of a complex column (null when it has none)."""
    latest = []
    for text in elements.to_pylist():
        stamps = [] if text is None else [element["ts"] for element in json.loads(text).values()]
        latest.append(max(stamps) if stamps else None)
    return pa.array(latest, pa.int64())


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


# --------------------------------------------------------------------------------------------------
# Key bytes


def _key_bytes(columns: Sequence[Column], arrays: Sequence[pa.Array], descending: bool = False) -> pa.Array:
    """Primary key values as their concatenated ``model.key_component`` bytes, columnar where possible."""
    n = len(arrays[0]) if arrays else 0
    if not columns:
        return pa.array([b""] * n, pa.binary())
    components = [
        _key_component(column, array, descending and column.descending)
        for column, array in zip(columns, arrays, strict=True)
    ]
    if len(components) == 1:
        return components[0]
    return pc.binary_join_element_wise(*components, pa.scalar(b"", pa.binary()))


def _key_component(column: Column, array: pa.Array, descending: bool) -> pa.Array:
    kind = column.type.kind
    n = len(array)
    if array.null_count == 0 and kind in _INT_KEY_WIDTHS:
        width = _INT_KEY_WIDTHS[kind]
        values = array.cast(pa.int32() if kind == "date" else pa.int64()).to_numpy().astype(np.int64)
        if kind == "time":
            values = values - values % 1000
        if width == 8:
            biased = (values.view(np.uint64) ^ np.uint64(1 << 63)).astype(">u8")
        else:
            biased = (values + (1 << (8 * width - 1))).astype(f">u{width}")
        return _key_matrix(biased.view(np.uint8).reshape(n, width), descending)
    if array.null_count == 0 and kind in ("uuid", "timeuuid") and _all_uuid_text(array):
        return _uuid_key(kind, array, descending)
    if array.null_count == 0 and kind in ("ascii", "text", "blob") and not descending:
        escaped = pc.replace_substring(array.cast(pa.binary()), b"\x00", b"\x00\xff")
        header, trailer = pa.scalar(b"\x02", pa.binary()), pa.scalar(b"\x00\x00", pa.binary())
        return pc.binary_join_element_wise(header, escaped, trailer, pa.scalar(b"", pa.binary()))
    return pa.array(
        [key_component(column.type, _pg_key_value(column.type, v), descending) for v in python_values(array)],
        pa.binary(),
    )


def _key_matrix(order: np.ndarray, descending: bool) -> pa.Array:
    """Key components (``model.key_component``) of values whose order bytes are the rows of ``order``."""
    n, width = order.shape
    matrix = np.empty((n, width + 1), dtype=np.uint8)
    matrix[:, 0] = 2
    matrix[:, 1:] = order
    if descending:
        matrix = 255 - matrix
    fixed = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width + 1), n, [None, pa.py_buffer(matrix.tobytes())])
    return fixed.cast(pa.binary())


def _all_uuid_text(array: pa.Array) -> bool:
    return bool(pc.all(pc.match_substring_regex(array, _UUID_PATTERN)).as_py())


def _uuid_key(kind: str, array: pa.Array, descending: bool) -> pa.Array:
    """Key components of uuid text (hyphenated hex), columnar: ``model.order_bytes`` spelled with numpy."""
    n = len(array)
    digits = pc.replace_substring(array, "-", "").cast(pa.binary())
    text = np.frombuffer(digits.buffers()[2], dtype=np.uint8)[: 32 * n].reshape(n, 32)
    nibbles = _HEX_VALUES[text]
    raw = (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]
    # A version-1 UUID's timestamp, most significant part first (model._timeuuid_msb).
    timestamp = raw[:, [6, 7, 4, 5, 0, 1, 2, 3]]
    if kind == "timeuuid":
        return _key_matrix(np.hstack([timestamp, raw[:, 8:] ^ 0x80]), descending)
    version = raw[:, 6:7] >> 4
    time_based = version[:, 0] == 1
    plain = _key_matrix(np.hstack([version, raw]), descending)
    if not time_based.any():
        return plain
    timed = _key_matrix(np.hstack([version, timestamp, raw]), descending)
    return pc.if_else(pa.array(time_based), timed, plain)


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


def reduce_parts(parts: Parts, columns: Sequence[Column]) -> Parts:
    """One part per key and kind: cells, liveness and deletions of a key merged by Cassandra's rules."""
    groups, count = _group_ids(parts)
    if count == parts.num_rows:
        return parts
    table = parts.table
    first = np.unique(groups, return_index=True)[1]
    result = {name: _array(table, name).take(pa.array(first, pa.int64())) for name in table.column_names}

    live_ts, live_valid = _int_column(table, LIVE_TS)
    live_exp, exp_valid = _int_column(table, LIVE_EXP)
    winners, _ = _winners(groups, count, live_valid, [live_ts, exp_valid.astype(np.int64), live_exp])
    for name in (LIVE_TS, LIVE_EXP):
        result[name] = _array(table, name).take(_indices(winners))
    result[DELETED_AT] = _group_max(table, DELETED_AT, groups, count)

    for column in columns:
        if column.type.is_complex:
            deletion = deleted_at_name(column.name)
            result[deletion] = _group_max(table, deletion, groups, count)
            result[column.name] = _reduce_elements(_array(table, column.name), groups, count, result[deletion])
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
    return Parts(pa.table({name: result[name] for name in table.column_names}), parts.rejected)


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
    if has_value_bytes(column.type):
        return table.column(vb_name(column.name))[index].as_py() or b""
    raw = python_values(table.column(column.name).slice(index, 1))[0]
    return value_bytes(column.type, canonical_value(column.type, raw))


def _reduce_elements(values: pa.Array, groups: np.ndarray, count: int, deletions: pa.Array) -> pa.Array:
    """Per group, the union of its parts' elements, the winner per element identity (JSON text).

    A group with one part keeps its text as is: what its collection deletion covers is dropped by the
    merge statement and hidden by the view anyway.
    """
    valid = pc.is_valid(values).to_numpy(zero_copy_only=False)
    parts_per_group = np.bincount(groups[valid], minlength=count)
    last = np.full(count, -1, dtype=np.int64)
    last[groups[valid]] = np.nonzero(valid)[0]
    reduced = values.take(_indices(last))
    shared = parts_per_group > 1
    if not shared.any():
        return reduced
    merged: dict[int, dict[str, Any]] = {}
    indices = np.nonzero(valid & shared[groups])[0]
    for group, text in zip(groups[indices].tolist(), values.take(indices).to_pylist(), strict=True):
        elements = merged.setdefault(group, {})
        for key, element in json.loads(text).items():
            _merge_element(elements, key, element)
    texts = reduced.to_pylist()
    deletion_at = deletions.to_pylist()
    for group, elements in merged.items():
        deletion = deletion_at[group]
        kept = elements if deletion is None else {k: e for k, e in elements.items() if e["ts"] > deletion}
        texts[group] = pg_types.dumps(kept)
    return pa.array(texts, pa.string())


# --------------------------------------------------------------------------------------------------
# COPY text


def copy_table(parts: Parts, names: Sequence[str]) -> pa.Table:
    """The parts as an Arrow table whose CSV is the COPY input of a staging table with columns ``names``."""
    arrays = {}
    for name in names:
        column = parts.table.column(name).combine_chunks()
        arrays[name] = bytea_text(column) if pa.types.is_binary(column.type) else column
    return pa.table(arrays)


def bytea_text(array: pa.Array) -> pa.Array:
    """Binary values as PostgreSQL's ``\\x`` hex text, columnar."""
    array = pa.concat_arrays([array]) if array.offset else array
    n = len(array)
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[: n + 1]
    data = np.frombuffer(array.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]] if n else np.empty(0, np.uint8)
    lengths = np.diff(offsets)
    out_offsets = np.r_[0, np.cumsum(2 + 2 * lengths)].astype(np.int32)
    out = np.empty(int(out_offsets[-1]), dtype=np.uint8)
    out[out_offsets[:-1]] = ord("\\")
    out[out_offsets[:-1] + 1] = ord("x")
    if len(data):
        rows = np.repeat(np.arange(n), lengths)
        positions = out_offsets[rows] + 2 + 2 * (np.arange(len(data)) - (offsets[rows] - offsets[0]))
        digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
        out[positions] = digits[data >> 4]
        out[positions + 1] = digits[data & 15]
    return pa.StringArray.from_buffers(
        n, pa.py_buffer(out_offsets.tobytes()), pa.py_buffer(out.tobytes()), array.buffers()[0], array.null_count
    )
