"""CQL → ClickHouse: column types, the Arrow shapes loaded into them, and the keys Cassandra orders by.

The mapping (every CQL type; ``T'`` is the element's mapping):

=====================================  ===============================================  ==========================
CQL                                    ClickHouse                                       note
=====================================  ===============================================  ==========================
ascii, text, varchar                   String
blob                                   String                                           raw bytes
boolean                                Bool
tinyint, smallint, int, bigint         Int8, Int16, Int32, Int64
counter                                Int64                                            the shard total
float, double                          Float32, Float64
varint, decimal                        String                                           exact decimal text; cast
                                                                                        with toInt256/toDecimal256
timestamp                              DateTime64(3, 'UTC')
date                                   Date32                                           0000-01-01 .. 9999-12-31
time                                   Time64(9)                                        nanoseconds since midnight
duration                               Tuple(months Int32, days Int32, nanoseconds Int64)
uuid, timeuuid                         UUID
inet                                   String                                           the address text
list<T>, set<T>, vector<T, n>          Array(T')                                        frozen or not
map<K, V>                              Map(K', V')                                      frozen or not
tuple<T1, ...>                         Tuple(f0 F(T1'), ...)                            F: the field type below
user type                              Tuple(field F(T'), ...)                          frozen or not
=====================================  ===============================================  ==========================

Values are ``Nullable`` where ClickHouse allows it. Array and Map cannot be: a collection column keeps
them bare, since Cassandra returns a null and an empty collection column alike. A user type's or tuple's
field does not: Cassandra keeps a null field (no bytes) apart from an empty collection, so such a field
is a ``Variant`` of its one type (:func:`field_type`), shown as the collection or NULL.

Two orders matter besides the types. Clustering order (:func:`order_key_sql`) is the column type's
comparator, used to decide which rows a range deletion covers. Reconciliation order
(:func:`reconcile_key_sql`) is what breaks a tie between two live cells with the same write time:
Cassandra keeps the greater serialized value, compared as unsigned bytes.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pyarrow as pa

from cdc_assets.cassandra_schema.types import CqlType

_SCALARS = {
    "ascii": "String",
    "text": "String",
    "blob": "String",
    "boolean": "Bool",
    "tinyint": "Int8",
    "smallint": "Int16",
    "int": "Int32",
    "bigint": "Int64",
    "counter": "Int64",
    "float": "Float32",
    "double": "Float64",
    "varint": "String",
    "decimal": "String",
    "timestamp": "DateTime64(3, 'UTC')",
    "date": "Date32",
    "time": "Time64(9)",
    "duration": "Tuple(months Int32, days Int32, nanoseconds Int64)",
    "uuid": "UUID",
    "timeuuid": "UUID",
    "inet": "String",
}

DURATION_TYPE = pa.struct(
    [pa.field("months", pa.int32()), pa.field("days", pa.int32()), pa.field("nanoseconds", pa.int64())]
)
# The same, read by ClickHouse as its Tuple(months Int32, ...) itself, as a Variant needs (see _exact).
_EXACT_DURATION_TYPE = pa.struct([field.with_nullable(False) for field in DURATION_TYPE])


def quote(identifier: str) -> str:
    """A ClickHouse identifier in backquotes, whatever characters it holds."""
    return "`" + identifier.replace("\\", "\\\\").replace("`", "\\`") + "`"


def literal(text: str) -> str:
    """A ClickHouse string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def clickhouse_type(cql: CqlType) -> str:
    """The ClickHouse type holding a (non-null) value of ``cql``."""
    if cql.kind in _SCALARS:
        return _SCALARS[cql.kind]
    if cql.kind in ("list", "set", "vector"):
        return f"Array({clickhouse_type(cql.args[0])})"
    if cql.kind == "map":
        return f"Map({clickhouse_type(cql.args[0])}, {clickhouse_type(cql.args[1])})"
    if cql.kind == "tuple":
        fields = (f"f{i} {field_type(arg)}" for i, arg in enumerate(cql.args))
        return f"Tuple({', '.join(fields)})"
    if cql.kind == "udt":
        fields = (f"{quote(name)} {field_type(arg)}" for name, arg in zip(cql.field_names, cql.args))
        return f"Tuple({', '.join(fields)})"
    raise ValueError(f"no ClickHouse type for CQL type {cql.cql()!r}")


def field_type(cql: CqlType) -> str:
    """The type of a user type's or tuple's field of ``cql``: NULL apart from every value, empty ones too.

    ClickHouse has no ``Nullable(Array)`` or ``Nullable(Map)``; ``Variant`` of the one type holds NULL.
    """
    ch_type = clickhouse_type(cql)
    if _is_collection(cql):
        return f"Variant({ch_type})"
    return nullable(ch_type)


def _is_collection(cql: CqlType) -> bool:
    return cql.kind in ("list", "set", "vector", "map")


def nullable(ch_type: str) -> str:
    """``Nullable(ch_type)``, or ``ch_type`` itself for the Array and Map types ClickHouse keeps non-null
    (and for a Variant, which holds NULL as it is)."""
    if ch_type.startswith(("Array(", "Map(", "Nullable(", "Variant(")):
        return ch_type
    return f"Nullable({ch_type})"


def can_be_null(ch_type: str) -> bool:
    """Whether a column of ``ch_type`` can hold NULL once made :func:`nullable`."""
    return nullable(ch_type).startswith(("Nullable(", "Variant("))


def not_null(ch_type: str, expr: str) -> str:
    """``expr`` (of type ``ch_type``, made :func:`nullable`) as its non-null type, for where it is not NULL."""
    stored = nullable(ch_type)
    if stored.startswith("Variant("):
        return f"variantElement({expr}, {literal(stored[len('Variant(') : -1])})"
    if stored.startswith("Nullable("):
        return f"assumeNotNull({expr})"
    return expr


# Loading: the change batch's Arrow values → what ClickHouse's Arrow reader takes for the types above.


def _converted(cql: CqlType) -> bool:
    """Whether ``cql``'s values change on their way in: durations, and collections in a field (Variants)."""
    if cql.kind == "duration":
        return True
    if cql.kind in ("tuple", "udt") and any(_is_collection(arg) for arg in cql.args):
        return True
    return any(_converted(arg) for arg in cql.args)


def to_clickhouse_arrow(cql: CqlType, array: pa.Array) -> pa.Array:
    """``array`` (values of ``cql`` as the change batch holds them) in a form ClickHouse reads.

    Arrow's month-day-nano interval becomes the (months, days, nanoseconds) struct, and a collection in a
    user type's or tuple's field becomes its Variant (:func:`field_to_clickhouse_arrow`).
    """
    if not _converted(cql):
        return array
    if isinstance(array, pa.ChunkedArray):
        return pa.chunked_array([to_clickhouse_arrow(cql, chunk) for chunk in array.chunks])
    if cql.kind == "duration":
        return _duration_struct(array)
    if cql.kind in ("list", "set", "vector"):
        values = to_clickhouse_arrow(cql.args[0], array.values)
        if isinstance(array, pa.FixedSizeListArray):
            return pa.FixedSizeListArray.from_arrays(values, cql.size, mask=array.is_null())
        return pa.ListArray.from_arrays(array.offsets, values, mask=array.is_null())
    if cql.kind == "map":
        keys = to_clickhouse_arrow(cql.args[0], array.keys)
        items = to_clickhouse_arrow(cql.args[1], array.items)
        return pa.MapArray.from_arrays(array.offsets, keys, items, mask=array.is_null())
    fields = [array.type.field(i) for i in range(array.type.num_fields)]
    children = [field_to_clickhouse_arrow(arg, array.field(i)) for i, arg in enumerate(cql.args)]
    return pa.StructArray.from_arrays(children, names=[f.name for f in fields], mask=array.is_null())


def field_to_clickhouse_arrow(cql: CqlType, array: pa.Array) -> pa.Array:
    """A user type's or tuple's field values of ``cql`` in a form ClickHouse reads into :func:`field_type`.

    A collection becomes a dense union of its values and NULL, which ClickHouse reads as a Variant. The
    values must already have the Variant's type exactly (ClickHouse converts nothing inside a Variant):
    :func:`_exact`.
    """
    if not _is_collection(cql):
        return to_clickhouse_arrow(cql, array)
    valid = array.is_valid().to_numpy(zero_copy_only=False)
    nulls = ~valid
    type_ids = np.where(valid, 0, 1).astype(np.int8)
    offsets = np.where(valid, np.cumsum(valid) - 1, np.cumsum(nulls) - 1).astype(np.int32)
    values = _exact(cql, array.filter(pa.array(valid)))
    children = [values, pa.nulls(int(nulls.sum()))]
    return pa.UnionArray.from_dense(pa.array(type_ids), pa.array(offsets), children, [clickhouse_type(cql), "NULL"])


def _exact(cql: CqlType, array: pa.Array) -> pa.Array:
    """Values of ``cql`` in the Arrow type ClickHouse reads as :func:`clickhouse_type` itself, not merely
    as something it converts to it: items not nullable, UUIDs as ``arrow.uuid``, vectors as lists."""
    kind = cql.kind
    if kind == "duration":
        return _duration_struct(array, _EXACT_DURATION_TYPE)
    if kind in ("uuid", "timeuuid"):
        raw = [None if text is None else uuid.UUID(text).bytes for text in array.to_pylist()]
        return pa.ExtensionArray.from_storage(pa.uuid(), pa.array(raw, pa.binary(16)))
    if kind in ("list", "set", "vector"):
        if kind == "vector":
            offsets = pa.array(np.arange(len(array) + 1, dtype=np.int32) * cql.size)
            items = _exact(cql.args[0], array.flatten())
        else:
            offsets, items = array.offsets, _exact(cql.args[0], array.values)
        return pa.ListArray.from_arrays(offsets, items, pa.list_(pa.field("item", items.type, nullable=False)))
    if kind == "map":
        keys, items = _exact(cql.args[0], array.keys), _exact(cql.args[1], array.items)
        map_type = pa.map_(keys.type, pa.field("value", items.type, nullable=False))
        return pa.MapArray.from_arrays(array.offsets, keys, items, type=map_type)
    if kind in ("tuple", "udt"):
        names = [array.type.field(i).name for i in range(array.type.num_fields)]
        children = [
            field_to_clickhouse_arrow(arg, array.field(i)) if _is_collection(arg) else _exact(arg, array.field(i))
            for i, arg in enumerate(cql.args)
        ]
        return pa.StructArray.from_arrays(children, names=names, mask=array.is_null())
    return to_clickhouse_arrow(cql, array)


def _duration_struct(array: pa.Array, struct_type: pa.StructType = DURATION_TYPE) -> pa.StructArray:
    layout = np.dtype([("months", "<i4"), ("days", "<i4"), ("nanoseconds", "<i8")])
    values = np.frombuffer(array.buffers()[1], dtype=layout, count=len(array) + array.offset)[array.offset :]
    return pa.StructArray.from_arrays(
        [pa.array(values["months"]), pa.array(values["days"]), pa.array(values["nanoseconds"])],
        fields=list(struct_type),
        mask=array.is_null(),
    )


# Reading: ClickHouse's Arrow output → the Python values the canonical form (cassandra_values.py) accepts.


def without_variants(array: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """ClickHouse's Arrow output with each Variant (a dense union of one type and NULL) as that type."""
    if isinstance(array, pa.ChunkedArray):
        return pa.chunked_array([without_variants(chunk) for chunk in array.chunks], _plain_type(array.type))
    if not _has_union(array.type):
        return array
    plain = _plain_type(array.type)
    if isinstance(array, pa.UnionArray):
        value = next(i for i in range(array.type.num_fields) if not pa.types.is_null(array.type.field(i).type))
        codes = array.type_codes.to_numpy(zero_copy_only=False)
        positions = pa.array(array.offsets.to_numpy(zero_copy_only=False), mask=codes != array.type.type_codes[value])
        return without_variants(array.field(value)).take(positions)
    mask = array.is_null() if array.null_count else None
    if pa.types.is_struct(plain):
        children = [without_variants(array.field(i)) for i in range(plain.num_fields)]
        return pa.StructArray.from_arrays(children, fields=list(plain), mask=mask)
    if pa.types.is_map(plain):
        keys, items = without_variants(array.keys), without_variants(array.items)
        return pa.MapArray.from_arrays(array.offsets, keys, items, type=plain, mask=mask)
    return pa.ListArray.from_arrays(array.offsets, without_variants(array.values), plain, mask=mask)


def _plain_type(arrow: pa.DataType) -> pa.DataType:
    """``arrow`` with each Variant's union replaced by its one type, nullable."""
    if pa.types.is_union(arrow):
        return next(_plain_type(field.type) for field in arrow if not pa.types.is_null(field.type))
    if not _has_union(arrow):
        return arrow
    fields = [_plain_field(arrow.field(i)) for i in range(arrow.num_fields)]
    if pa.types.is_struct(arrow):
        return pa.struct(fields)
    if pa.types.is_map(arrow):
        return pa.map_(_plain_field(arrow.key_field), _plain_field(arrow.item_field))
    return pa.list_(fields[0])


def _plain_field(field: pa.Field) -> pa.Field:
    plain = field.with_type(_plain_type(field.type))
    return plain.with_nullable(True) if pa.types.is_union(field.type) else plain


def _has_union(arrow: pa.DataType) -> bool:
    if pa.types.is_union(arrow):
        return True
    return any(_has_union(arrow.field(i).type) for i in range(arrow.num_fields))


def from_clickhouse(cql: CqlType, value: Any) -> Any:
    """A value of ``cql`` read from ClickHouse (raw Arrow types, strings as bytes) as cassandra_values.py accepts it."""
    if value is None:
        return None
    kind = cql.kind
    if kind in ("ascii", "text", "varint", "decimal", "inet"):
        return value.decode()
    if kind == "duration":
        return (value["months"], value["days"], value["nanoseconds"])
    if kind == "vector" and not value:
        return None
    if kind in ("list", "set", "vector"):
        return [from_clickhouse(cql.args[0], item) for item in value]
    if kind == "map":
        key, item = cql.args
        return [(from_clickhouse(key, k), from_clickhouse(item, v)) for k, v in value]
    if kind in ("tuple", "udt"):
        names = field_names(cql)
        return {name: from_clickhouse(arg, value[name]) for name, arg in zip(names, cql.args)}
    return value


def field_names(cql: CqlType) -> tuple[str, ...]:
    """A tuple's (``f0``, ``f1``, ...) or a user type's field names: its ClickHouse Tuple element names."""
    return cql.field_names if cql.kind == "udt" else tuple(f"f{i}" for i in range(len(cql.args)))


# Orders, as SQL expressions over a value ``expr`` of the mapped type. ``depth`` names lambda variables.

_INT_WIDTHS = {"tinyint": 1, "smallint": 2, "int": 4, "bigint": 8, "counter": 8}


def _big_endian(expr: str, width: int) -> str:
    """An integer expression's ``width``-byte two's complement, big-endian, as a String."""
    return f"unhex(leftPad(hex({expr}), {2 * width}, '0'))"


def _framed(bytes_expr: str) -> str:
    return f"concat({_big_endian(f'toUInt32(length({bytes_expr}))', 4)}, {bytes_expr})"


def _uuid_parts(expr: str) -> tuple[str, str, str]:
    """Version digit, time-UUID timestamp (Cassandra's reordered most significant bytes), and the
    least significant 8 bytes, all in hex."""
    text = f"toString({expr})"
    version = f"substring({text}, 15, 1)"
    timestamp = f"concat(substring({text}, 15, 4), substring({text}, 10, 4), substring({text}, 1, 8))"
    lsb = f"concat(substring({text}, 20, 4), substring({text}, 25, 12))"
    return version, timestamp, lsb


def _inet_bytes(expr: str) -> str:
    return (
        f"if(isIPv4String({expr}), unhex(hex(toIPv4OrDefault({expr}))), unhex(hex(IPv6StringToNumOrDefault({expr}))))"
    )


def _varint_bytes(number: str) -> str:
    """Cassandra's varint serialization (minimal two's complement, big-endian) of an Int256 expression."""
    digits = f"hex({number})"
    positive = f"if(substring({digits}, 1, 1) IN ('8','9','A','B','C','D','E','F'), concat('00', {digits}), {digits})"
    negative = f"replaceRegexpOne({digits}, '^(?:FF)+([89A-F])', '\\\\1')"
    return f"unhex(if({number} < 0, {negative}, {positive}))"


def _decimal_bytes(expr: str) -> str:
    """Cassandra's decimal serialization: the scale (int32) then the unscaled value (varint)."""
    exponent_at = f"position({expr}, 'E')"
    mantissa = f"if({exponent_at} > 0, substring({expr}, 1, {exponent_at} - 1), {expr})"
    exponent = f"if({exponent_at} > 0, toInt32OrZero(substring({expr}, {exponent_at} + 1)), 0)"
    point_at = f"position({mantissa}, '.')"
    fraction = f"if({point_at} > 0, length({mantissa}) - {point_at}, 0)"
    scale = f"toInt32({fraction} - {exponent})"
    unscaled = f"toInt256OrZero(replaceOne({mantissa}, '.', ''))"
    return f"concat({_big_endian(scale, 4)}, {_varint_bytes(unscaled)})"


def _vint(expr: str) -> str:
    """Cassandra's unsigned vint of a UInt64 expression: leading one bits count the extra bytes."""
    extra = "multiIf(" + ", ".join(f"{expr} < {1 << (7 * (n + 1))}, {n}" for n in range(8)) + ", 8)"
    body = f"unhex(leftPad(hex({expr}), 2 * ({extra} + 1), '0'))"
    marker = f"bitAnd(bitShiftLeft(toUInt16(255), 8 - {extra}), 255)"
    first = f"bitOr(reinterpretAsUInt8(substring({body}, 1, 1)), {marker})"
    full = f"concat(char(255), {_big_endian(expr, 8)})"
    return f"if({extra} = 8, {full}, concat(char({first}), substring({body}, 2)))"


def _zigzag(expr: str) -> str:
    number = f"toInt64({expr})"
    return f"bitXor(bitShiftLeft(reinterpretAsUInt64({number}), 1), reinterpretAsUInt64(bitShiftRight({number}, 63)))"


def reconcile_key_sql(cql: CqlType, expr: str, depth: int = 0) -> str:
    """``expr``'s value serialized as Cassandra stores it (a String): what reconciliation compares on ties.

    Exact for every type; varint and decimal for unscaled values within Int256.
    """
    kind = cql.kind
    if kind in ("ascii", "text", "blob"):
        return expr
    if kind == "boolean":
        return f"char(toUInt8({expr}))"
    if kind in _INT_WIDTHS:
        return _big_endian(expr, _INT_WIDTHS[kind])
    if kind in ("float", "double"):
        width = 4 if kind == "float" else 8
        return _big_endian(f"reinterpretAsUInt{8 * width}({expr})", width)
    if kind == "timestamp":
        return _big_endian(f"toUnixTimestamp64Milli({expr})", 8)
    if kind == "date":
        return _big_endian(f"toUInt32(toInt64(toInt32({expr})) + 2147483648)", 4)
    if kind == "time":
        return _big_endian(f"reinterpretAsInt64(toDecimal64({expr}, 9))", 8)
    if kind == "duration":
        parts = (_vint(_zigzag(f"tupleElement({expr}, {i})")) for i in (1, 2, 3))
        return f"concat({', '.join(parts)})"
    if kind in ("uuid", "timeuuid"):
        return f"unhex(replaceAll(toString({expr}), '-', ''))"
    if kind == "inet":
        return _inet_bytes(expr)
    if kind == "varint":
        return _varint_bytes(f"toInt256OrZero({expr})")
    if kind == "decimal":
        return _decimal_bytes(expr)
    return _composite_bytes(cql, expr, depth)


def _composite_bytes(cql: CqlType, expr: str, depth: int) -> str:
    kind = cql.kind
    item = f"_x{depth}"
    if kind in ("list", "set"):
        element = _framed(reconcile_key_sql(cql.args[0], item, depth + 1))
        count = _big_endian(f"toUInt32(length({expr}))", 4)
        return f"concat({count}, arrayStringConcat(arrayMap({item} -> {element}, {expr})))"
    if kind == "vector":
        element = cql.args[0]
        data = reconcile_key_sql(element, item, depth + 1)
        framed = data if element.fixed_length is not None else f"concat({_vint(f'toUInt64(length({data}))')}, {data})"
        return f"arrayStringConcat(arrayMap({item} -> {framed}, {expr}))"
    if kind == "map":
        key, value = cql.args
        other = f"_y{depth}"
        framed_key = _framed(reconcile_key_sql(key, item, depth + 1))
        framed_value = _framed(reconcile_key_sql(value, other, depth + 1))
        count = _big_endian(f"toUInt32(length({expr}))", 4)
        pairs = (
            f"arrayMap(({item}, {other}) -> concat({framed_key}, {framed_value}), mapKeys({expr}), mapValues({expr}))"
        )
        return f"concat({count}, arrayStringConcat({pairs}))"
    if kind in ("tuple", "udt"):
        parts = []
        for name, arg in zip(field_names(cql), cql.args):
            element = f"tupleElement({expr}, {literal(name)})"
            data = _framed(reconcile_key_sql(arg, not_null(field_type(arg), element), depth + 1))
            parts.append(f"if(isNull({element}), unhex('FFFFFFFF'), {data})")
        return f"concat({', '.join(parts)})" if len(parts) > 1 else parts[0]
    raise ValueError(f"no serialization for CQL type {cql.cql()!r}")


def order_key_sql(cql: CqlType, expr: str, depth: int = 0) -> str:
    """An expression whose ClickHouse order is ``cql``'s comparator order (clustering order).

    Exact for every type but varint (exact within Int256) and decimal (Float64 precision).
    """
    kind = cql.kind
    if kind in ("float", "double"):
        bits = f"reinterpretAsUInt{32 if kind == 'float' else 64}({expr})"
        sign = 1 << (31 if kind == "float" else 63)
        return f"if({bits} >= {sign}, bitNot({bits}), bitOr({bits}, {sign}))"
    if kind == "uuid":
        version, timestamp, lsb = _uuid_parts(expr)
        text = f"toString({expr})"
        msb = f"concat(substring({text}, 1, 8), substring({text}, 10, 4), substring({text}, 15, 4))"
        return f"tuple({version}, if({version} = '1', {timestamp}, {msb}), {lsb})"
    if kind == "timeuuid":
        _, timestamp, lsb = _uuid_parts(expr)
        signed = f"bitXor(reinterpretAsUInt64(reverse(unhex({lsb}))), 9259542123273814144)"
        return f"tuple({timestamp}, {signed})"
    if kind == "varint":
        return f"toInt256OrZero({expr})"
    if kind == "decimal":
        return f"toFloat64OrZero({expr})"
    if kind == "inet":
        return _inet_bytes(expr)
    item = f"_x{depth}"
    if kind in ("list", "set", "vector"):
        return f"arrayMap({item} -> {order_key_sql(cql.args[0], item, depth + 1)}, {expr})"
    if kind == "map":
        key, value = cql.args
        other = f"_y{depth}"
        pair = f"tuple({order_key_sql(key, item, depth + 1)}, {order_key_sql(value, other, depth + 1)})"
        return f"arrayMap(({item}, {other}) -> {pair}, mapKeys({expr}), mapValues({expr}))"
    if kind in ("tuple", "udt"):
        parts = []
        for name, arg in zip(field_names(cql), cql.args):
            element = f"tupleElement({expr}, {literal(name)})"
            parts.append(f"isNotNull({element}), {order_key_sql(arg, not_null(field_type(arg), element), depth + 1)}")
        return f"tuple({', '.join(parts)})"
    return expr
