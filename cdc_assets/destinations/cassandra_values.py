"""Cassandra's value rules, shared by every destination and the replay model: the canonical form of a table's
current state, values' serialized bytes and comparator order, and the ranks by which cells reconcile. It
imports no destination and nothing of the reader (vints come from the neutral :mod:`cdc_assets.vints`).

Every destination's ``current_state`` and :class:`~cdc_assets.cassandra_model.CassandraModel` return rows in
one *canonical form*, so a test can compare them with ``==``:

- a list of dicts, one per row ``SELECT * FROM ks.t`` returns, each with every column of the table
  (partition key, clustering, static, regular; dropped columns excluded), ``None`` where absent;
- rows sorted by primary key in Cassandra's order *within* a partition (clustering comparators, DESC
  honoured) and partitions sorted by their key values' comparator order (not by token);
- a partition with static values but no live row gives one row whose clustering and regular columns
  are ``None``.

Canonical values, per CQL type (``canonical_value`` accepts every form listed in brackets):

==============================  ============================================================================
CQL type                        canonical Python value
==============================  ============================================================================
ascii, text, varchar            ``str``
blob                            ``bytes`` [bytearray, memoryview]
boolean                         ``bool``
tinyint .. bigint, counter      ``int`` (a counter: the sum of its shards, wrapping at 64 bits)
varint                          ``int`` [str, Decimal]
decimal                         ``decimal.Decimal`` [str, int, float]
float                           ``float`` rounded to float32; NaN is the string ``"NaN"`` so that ``==`` holds
double                          ``float``; NaN is ``"NaN"``
timestamp                       ``int`` milliseconds since the Unix epoch, UTC [datetime; naive means UTC]
date                            ``int`` days since 1970-01-01 [datetime.date]
time                            ``int`` nanoseconds since midnight [datetime.time, timedelta]
duration                        ``(months, days, nanoseconds)`` tuple of ints [any 3-sequence]
uuid, timeuuid                  ``str``, canonical lower-case 36-character form [uuid.UUID, 16 bytes]
inet                            ``str``, ``ipaddress`` compressed form [IPv4Address/IPv6Address, packed bytes]
list<T>, vector<T, n>           ``list`` in element order (a non-frozen list: its elements' timeuuid order)
set<T>                          ``list`` sorted in T's comparator order
map<K, V>                       ``list`` of ``(key, value)`` tuples sorted in K's comparator order [dict]
tuple<...>                      ``dict`` ``{"f0": ..., "f1": ...}`` [list, tuple]
UDT                             ``dict`` with every field name, ``None`` for a null field [list, tuple]
==============================  ============================================================================

Temporal values keep the change batch's integer form: it is lossless (``time`` has nanoseconds, a
timestamp may lie outside ``datetime``'s years) and needs no time zone. An empty collection is ``None``
at the top level of a column (Cassandra does not tell an empty collection from null); nested empty
collections stay empty lists.

Clustering order and bounds use ``order_bytes``: a byte string per value whose unsigned order is the
CQL type's comparator order, so every destination can compare clustering keys and range bounds as
plain bytes (:func:`clustering_key`, :func:`range_bounds`).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import struct
import uuid
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import pyarrow as pa

from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.cassandra_schema.types import CqlType
from cdc_assets.vints import write_uvint, zigzag_encode

NAN = "NaN"

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_DATE = dt.date(1970, 1, 1)
_INT_FORMATS = {"tinyint": ">b", "smallint": ">h", "int": ">i", "bigint": ">q", "counter": ">q", "timestamp": ">q"}
_INT_WIDTHS = {"tinyint": 1, "smallint": 2, "int": 4, "bigint": 8, "counter": 8, "timestamp": 8, "time": 8}
_TEXT_KINDS = frozenset({"ascii", "text"})


# --------------------------------------------------------------------------------------------------
# Canonical values


def canonical_value(cql_type: CqlType, value: Any) -> Any:
    """The canonical form (module docstring) of one column value; empty collections become None."""
    result = _canonical(cql_type, value)
    if isinstance(result, list) and not result and cql_type.kind in ("list", "set", "map"):
        return None
    return result


def canonical_element(cql_type: CqlType, value: Any) -> Any:
    """The canonical form of a value held inside a collection or user type: an empty collection stays empty."""
    return _canonical(cql_type, value)


def _canonical(cql: CqlType, value: Any) -> Any:
    if value is None:
        return None
    kind = cql.kind
    if kind in _TEXT_KINDS:
        return str(value)
    if kind == "blob":
        return bytes(value)
    if kind == "boolean":
        return bool(value)
    if kind in ("tinyint", "smallint", "int", "bigint", "counter"):
        return int(value)
    if kind == "varint":
        return int(Decimal(value)) if isinstance(value, str | Decimal) else int(value)
    if kind == "decimal":
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if kind in ("float", "double"):
        number = float(value)
        if math.isnan(number):
            return NAN
        return struct.unpack(">f", struct.pack(">f", number))[0] if kind == "float" else number
    if kind == "timestamp":
        return _timestamp_ms(value)
    if kind == "date":
        return value.toordinal() - _EPOCH_DATE.toordinal() if isinstance(value, dt.date) else int(value)
    if kind == "time":
        return _time_ns(value)
    if kind == "duration":
        months, days, nanos = value
        return (int(months), int(days), int(nanos))
    if kind in ("uuid", "timeuuid"):
        return str(_as_uuid(value))
    if kind == "inet":
        return ipaddress.ip_address(value).compressed
    return _canonical_composite(cql, value)


def _canonical_composite(cql: CqlType, value: Any) -> Any:
    kind = cql.kind
    if kind in ("list", "vector"):
        return [_canonical(cql.args[0], element) for element in value]
    if kind == "set":
        elements = [_canonical(cql.args[0], element) for element in value]
        return sorted(elements, key=lambda element: order_bytes(cql.args[0], element))
    if kind == "map":
        key_type, value_type = cql.args
        pairs = value.items() if isinstance(value, Mapping) else value
        entries = [(_canonical(key_type, k), _canonical(value_type, v)) for k, v in pairs]
        return sorted(entries, key=lambda entry: order_bytes(key_type, entry[0]))
    if kind in ("tuple", "udt"):
        names = field_names(cql)
        if isinstance(value, Mapping):
            items = [value.get(name) for name in names]
        else:
            items = list(value) + [None] * (len(names) - len(value))
        return {name: _canonical(arg, item) for name, arg, item in zip(names, cql.args, items, strict=True)}
    raise ValueError(f"no canonical form for CQL type {cql.cql()!r}")


def field_names(cql: CqlType) -> tuple[str, ...]:
    """A UDT's field names, or a tuple's (``f0``, ``f1``, ...) as the change batch names them."""
    return cql.field_names if cql.kind == "udt" else tuple(f"f{i}" for i in range(len(cql.args)))


def _timestamp_ms(value: Any) -> int:
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return (aware - _EPOCH) // dt.timedelta(milliseconds=1)
    return int(value)


def _time_ns(value: Any) -> int:
    if isinstance(value, dt.time):
        seconds = value.hour * 3600 + value.minute * 60 + value.second
        return seconds * 1_000_000_000 + value.microsecond * 1000
    if isinstance(value, dt.timedelta):
        return (value // dt.timedelta(microseconds=1)) * 1000
    return int(value)


def _as_uuid(value: Any) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, bytes | bytearray):
        return uuid.UUID(bytes=bytes(value))
    return uuid.UUID(str(value))


def canonical_row(table: TableSchema, row: Mapping[str, Any]) -> dict[str, Any]:
    """One row in canonical form: every column of ``table``, in table order, None where absent."""
    return {column.name: canonical_value(column.type, row.get(column.name)) for column in _columns(table)}


def canonical_rows(table: TableSchema, rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows in canonical form, sorted by primary key (partition key order, then clustering order)."""
    canonical = [canonical_row(table, row) for row in rows]
    return sorted(canonical, key=lambda row: row_sort_key(table, row))


def row_sort_key(table: TableSchema, row: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """The sort key of a canonical row: its partition key's comparator order, then its clustering's."""
    partition = b"".join(key_component(c.type, row[c.name], False) for c in table.partition_key)
    if table.clustering and all(row[c.name] is None for c in table.clustering):
        return partition, b""
    return partition, clustering_key(table, [row[c.name] for c in table.clustering])


def _columns(table: TableSchema) -> tuple[Column, ...]:
    return table.partition_key + table.clustering + table.statics + table.regulars


# --------------------------------------------------------------------------------------------------
# Serialized CQL bytes (cell reconciliation) and comparator-ordered bytes (clustering)


def value_bytes(cql_type: CqlType, value: Any) -> bytes:
    """The value serialized as Cassandra stores it in a cell: what ``Cells.reconcile`` compares on ties.

    ``value`` is canonical. None serializes to no bytes (Cassandra's empty value), except for a list, set
    or map, where it is the canonical form of an empty collection: a count of zero.
    """
    if value is None:
        return struct.pack(">i", 0) if cql_type.kind in ("list", "set", "map") else b""
    kind = cql_type.kind
    if kind in _TEXT_KINDS:
        return value.encode()
    if kind == "blob":
        return value
    if kind == "boolean":
        return b"\x01" if value else b"\x00"
    if kind in _INT_FORMATS:
        return struct.pack(_INT_FORMATS[kind], value)
    if kind == "varint":
        return _varint_bytes(value)
    if kind == "decimal":
        sign, digits, exponent = value.as_tuple()
        unscaled = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
        return struct.pack(">i", -int(exponent)) + _varint_bytes(unscaled)
    if kind in ("float", "double"):
        return struct.pack(">f" if kind == "float" else ">d", math.nan if value == NAN else value)
    if kind == "date":
        return struct.pack(">I", value + (1 << 31))
    if kind == "time":
        return struct.pack(">q", value)
    if kind == "duration":
        return b"".join(write_uvint(zigzag_encode(part)) for part in value)
    if kind in ("uuid", "timeuuid"):
        return uuid.UUID(value).bytes
    if kind == "inet":
        return ipaddress.ip_address(value).packed
    return _composite_bytes(cql_type, value)


def _composite_bytes(cql: CqlType, value: Any) -> bytes:
    def framed(arg: CqlType, item: Any) -> bytes:
        if item is None:
            return struct.pack(">i", -1)
        data = value_bytes(arg, item)
        return struct.pack(">i", len(data)) + data

    kind = cql.kind
    if kind in ("list", "set"):
        return struct.pack(">i", len(value)) + b"".join(framed(cql.args[0], item) for item in value)
    if kind == "map":
        key_type, value_type = cql.args
        body = b"".join(framed(key_type, k) + framed(value_type, v) for k, v in value)
        return struct.pack(">i", len(value)) + body
    if kind in ("tuple", "udt"):
        names = field_names(cql)
        return b"".join(framed(arg, value[name]) for name, arg in zip(names, cql.args, strict=True))
    if kind == "vector":
        element = cql.args[0]
        if element.fixed_length is not None:
            return b"".join(value_bytes(element, item) for item in value)
        return b"".join(write_uvint(len(data)) + data for data in (value_bytes(element, i) for i in value))
    raise ValueError(f"cannot serialize CQL type {cql.cql()!r}")


def _varint_bytes(value: int) -> bytes:
    magnitude = value if value >= 0 else ~value
    return value.to_bytes(magnitude.bit_length() // 8 + 1, "big", signed=True)


def order_bytes(cql_type: CqlType, value: Any) -> bytes:
    """Bytes whose unsigned order is ``cql_type``'s comparator order; self-delimiting, so they concatenate.

    ``value`` is canonical; None stands for an empty collection (its canonical form) and is not allowed
    for other types. Equal-comparing values (``1.0`` and ``1.00`` as decimals) give equal bytes, as they
    name the same clustering in Cassandra.
    """
    kind = cql_type.kind
    if value is None and kind in ("list", "set", "map", "vector"):
        value = []
    if kind == "boolean":
        return b"\x01" if value else b"\x00"
    if kind in _INT_WIDTHS:
        width = _INT_WIDTHS[kind]
        return (value + (1 << (8 * width - 1))).to_bytes(width, "big")
    if kind == "date":
        return struct.pack(">I", value + (1 << 31))
    if kind == "varint":
        return _varint_order(value)
    if kind == "decimal":
        return _decimal_order(value)
    if kind in ("float", "double"):
        return _float_order(kind, value)
    if kind in _TEXT_KINDS or kind in ("blob", "inet", "duration"):
        return _escaped(value_bytes(cql_type, value))
    if kind == "uuid":
        raw = uuid.UUID(value).bytes
        version = raw[6] >> 4
        return bytes((version,)) + (_timeuuid_msb(raw) if version == 1 else b"") + raw
    if kind == "timeuuid":
        raw = uuid.UUID(value).bytes
        return _timeuuid_msb(raw) + bytes(b ^ 0x80 for b in raw[8:])
    return _composite_order(cql_type, value)


def _composite_order(cql: CqlType, value: Any) -> bytes:
    kind = cql.kind
    if kind in ("list", "set", "vector"):
        return b"".join(b"\x01" + order_bytes(cql.args[0], item) for item in value) + b"\x00"
    if kind == "map":
        key_type, value_type = cql.args
        return b"".join(b"\x01" + order_bytes(key_type, k) + order_bytes(value_type, v) for k, v in value) + b"\x00"
    if kind in ("tuple", "udt"):
        parts = []
        for name, arg in zip(field_names(cql), cql.args, strict=True):
            item = value[name]
            parts.append(b"\x00" if item is None else b"\x01" + order_bytes(arg, item))
        return b"".join(parts)
    raise ValueError(f"no order for CQL type {cql.cql()!r}")


def _escaped(data: bytes) -> bytes:
    return data.replace(b"\x00", b"\x00\xff") + b"\x00\x00"


def _varint_order(value: int) -> bytes:
    if value == 0:
        return b"\x80"
    magnitude = abs(value).to_bytes((abs(value).bit_length() + 7) // 8, "big")
    body = struct.pack(">I", len(magnitude)) + magnitude
    return b"\x81" + body if value > 0 else b"\x7f" + _inverted(body)


def _decimal_order(value: Decimal) -> bytes:
    if value == 0:
        return b"\x80"
    sign, digits, exponent = value.normalize().as_tuple()
    adjusted = int(exponent) + len(digits) - 1
    body = struct.pack(">I", adjusted + (1 << 31)) + bytes(ord("0") + d for d in digits) + b"\x00"
    return b"\x7f" + _inverted(body) if sign else b"\x81" + body


def _float_order(kind: str, value: Any) -> bytes:
    number = math.nan if value == NAN else value
    width = 4 if kind == "float" else 8
    bits = int.from_bytes(struct.pack(">f" if width == 4 else ">d", number), "big")
    sign = 1 << (8 * width - 1)
    bits = (~bits & ((1 << (8 * width)) - 1)) if bits & sign else bits | sign
    return bits.to_bytes(width, "big")


def _timeuuid_msb(raw: bytes) -> bytes:
    """A version-1 UUID's timestamp, most significant part first (Cassandra's ``reorderTimestampBytes``)."""
    return raw[6:8] + raw[4:6] + raw[0:4]


def _inverted(data: bytes) -> bytes:
    return bytes(b ^ 0xFF for b in data)


def timeuuid_order(path: str) -> bytes:
    """The order of a non-frozen list's elements: their timeuuid paths in ``TimeUUIDType`` order."""
    return order_bytes(CqlType("timeuuid"), path)


def key_component(cql_type: CqlType, value: Any, descending: bool) -> bytes:
    """One primary key value as the bytes :func:`clustering_key` concatenates (partition keys: ascending)."""
    # 0x01 marks an empty (null) value, 0x02 a present one: neither can become 0xFF when inverted, so
    # a prefix followed by 0xFF sorts after every key that extends it (see range_bounds).
    encoded = b"\x01" if value is None else b"\x02" + order_bytes(cql_type, value)
    return _inverted(encoded) if descending else encoded


def clustering_key(table: TableSchema, values: Sequence[Any]) -> bytes:
    """A clustering (canonical values, clustering order) as bytes in Cassandra's clustering order.

    Two rows of a partition are the same row exactly when their keys are equal.
    """
    return b"".join(key_component(c.type, v, c.descending) for c, v in zip(table.clustering, values, strict=True))


def _bound_prefix(table: TableSchema, bound: Mapping[str, Any]) -> bytes:
    parts = []
    for column in table.clustering:
        value = bound.get(column.name)
        if value is None:
            break
        parts.append(key_component(column.type, canonical_value(column.type, value), column.descending))
    return b"".join(parts)


def range_bounds(
    table: TableSchema,
    start: Mapping[str, Any] | None,
    start_inclusive: bool | None,
    end: Mapping[str, Any] | None,
    end_inclusive: bool | None,
) -> tuple[bytes, bytes]:
    """A range deletion's bounds as ``(low, high)``: it covers a row exactly when ``low <= key < high``.

    ``start``/``end`` are the change batch's bound structs (None: unbounded).
    """
    low = b""
    if start is not None:
        low = _bound_prefix(table, start)
        if not start_inclusive:
            low += b"\xff"
    high = b"\xff"
    if end is not None:
        high = _bound_prefix(table, end)
        if end_inclusive:
            high += b"\xff"
    return low, high


# --------------------------------------------------------------------------------------------------
# Reconciliation


def cell_rank(
    cql_type: CqlType, writetime: int, value: Any, expires_at: int | None, deleted: bool
) -> tuple[int, int, int, bytes]:
    """The key by which cells reconcile: of two cells for one place, the one with the greater rank wins."""
    if deleted:
        return (writetime, 2, 0, b"")
    if expires_at is not None:
        return (writetime, 1, expires_at, value_bytes(cql_type, value))
    return (writetime, 0, 0, value_bytes(cql_type, value))


def liveness_rank(writetime: int, expires_at: int | None) -> tuple[int, int, int]:
    """The key by which row liveness reconciles (``LivenessInfo.supersedes``)."""
    return (writetime, 0, 0) if expires_at is None else (writetime, 1, expires_at)


def raw_type(arrow: pa.DataType) -> pa.DataType:
    """``arrow`` with temporal types replaced by their integers, so ``to_pylist`` loses nothing."""
    if pa.types.is_timestamp(arrow) or pa.types.is_time64(arrow):
        return pa.int64()
    if pa.types.is_date32(arrow):
        return pa.int32()
    if pa.types.is_struct(arrow):
        return pa.struct([f.with_type(raw_type(f.type)) for f in arrow])
    if pa.types.is_map(arrow):
        return pa.map_(raw_type(arrow.key_type), raw_type(arrow.item_type))
    if pa.types.is_fixed_size_list(arrow):
        return pa.list_(arrow.value_field.with_type(raw_type(arrow.value_type)), arrow.list_size)
    if pa.types.is_list(arrow):
        return pa.list_(arrow.value_field.with_type(raw_type(arrow.value_type)))
    return arrow


def python_values(array: pa.Array | pa.ChunkedArray) -> list[Any]:
    """An Arrow array's values as Python, temporal values as integers (see the module docstring)."""
    return array.cast(raw_type(array.type)).to_pylist()


def batch_rows(batch: pa.RecordBatch) -> list[dict[str, Any]]:
    """The changes of a batch as dicts, temporal values as integers (see the module docstring)."""
    columns = [column.cast(raw_type(column.type)) for column in batch.columns]
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names).to_pylist()
