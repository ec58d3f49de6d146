"""CQL values as Cassandra serializes them (format notes, section 11), from the change batch's Python form.

``value_serializer(type)`` gives the bytes of a value with no framing: what a frozen collection, a
tuple, a partition key component or (with :func:`write_value`'s framing) a cell or clustering value holds.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
import uuid
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from cdc_assets.cassandra_schema.types import CqlType
from cdc_assets.commitlog.generator.ordering import sort_unique, struct_field_names
from cdc_assets.vints import write_uvint, zigzag_encode

# The node leading every counter update of a generated workload (a single-node cluster's).
DEFAULT_COUNTER_ID = uuid.UUID("00000000-0000-4000-8000-00000000c0de")

_DATE_EPOCH = 1 << 31
_INT32 = struct.Struct(">i")
_NULL = _INT32.pack(-1)

Serializer = Callable[[Any], bytes]


def _varint(value: int) -> bytes:
    """Java ``BigInteger.toByteArray``: minimal two's complement, big-endian."""
    return value.to_bytes((value if value >= 0 else ~value).bit_length() // 8 + 1, "big", signed=True)


def _decimal(text: Any) -> bytes:
    sign, digits, exponent = Decimal(text).as_tuple()
    if not isinstance(exponent, int):
        raise ValueError(f"decimal {text!r} is not a finite number")
    unscaled = int("".join(map(str, digits)) or "0")
    return _INT32.pack(-exponent) + _varint(-unscaled if sign else unscaled)


def _duration(value: Sequence[int]) -> bytes:
    months, days, nanos = value
    return write_uvint(zigzag_encode(months)) + write_uvint(zigzag_encode(days)) + write_uvint(zigzag_encode(nanos))


def _packer(fmt: str) -> Serializer:
    return struct.Struct(fmt).pack


def _ascii(value: str) -> bytes:
    return value.encode("ascii")


def _text(value: str) -> bytes:
    return value.encode()


def _uuid(value: str) -> bytes:
    return uuid.UUID(value).bytes


def _inet(value: str) -> bytes:
    return ipaddress.ip_address(value).packed


def _date(days: int) -> bytes:
    return (days + _DATE_EPOCH).to_bytes(4, "big")


def _boolean(value: bool) -> bytes:
    return b"\x01" if value else b"\x00"


def counter_context(shards: Sequence[tuple[bytes, int, int]]) -> bytes:
    """A counter context of global shards ``(counter id, clock, count)`` (11.5), in counter id order.

    A leader logs one shard, its own; a read repair or a hint logs the merged context, one shard per leader.
    """
    ordered = sorted(shards, key=lambda shard: shard[0])
    if len({counter_id for counter_id, _, _ in ordered}) != len(ordered):
        raise ValueError("a counter context holds one shard per counter id")
    header = struct.pack(f">h{len(ordered)}h", len(ordered), *(i - (1 << 15) for i in range(len(ordered))))
    return header + b"".join(struct.pack(">16sqq", *shard) for shard in ordered)


_SCALARS: dict[str, Serializer] = {
    "ascii": _ascii,
    "text": _text,
    "blob": bytes,
    "boolean": _boolean,
    "tinyint": _packer(">b"),
    "smallint": _packer(">h"),
    "int": _packer(">i"),
    "bigint": _packer(">q"),
    "timestamp": _packer(">q"),
    "time": _packer(">q"),
    "float": _packer(">f"),
    "double": _packer(">d"),
    "varint": lambda value: _varint(int(value)),
    "decimal": _decimal,
    "date": _date,
    "duration": _duration,
    "uuid": _uuid,
    "timeuuid": _uuid,
    "inet": _inet,
}


def _framed(raw: bytes) -> bytes:
    return _INT32.pack(len(raw)) + raw


@functools.cache
def value_serializer(cql: CqlType) -> Serializer:
    """A function from a Python value of ``cql`` to its serialized bytes (no cell framing)."""
    scalar = _SCALARS.get(cql.kind)
    if scalar is not None:
        return scalar
    if cql.kind == "counter":
        raise ValueError("counter values are shards: use counter_context")
    if cql.kind in ("list", "set"):
        element_type = cql.args[0]
        element = value_serializer(element_type)
        is_set = cql.kind == "set"

        def serialize_list(values: Sequence[Any]) -> bytes:
            if is_set:
                values = sort_unique(element_type, values)
            return _INT32.pack(len(values)) + b"".join(_framed(element(v)) for v in values)

        return serialize_list
    if cql.kind == "map":
        key_type = cql.args[0]
        key, item = value_serializer(key_type), value_serializer(cql.args[1])

        def serialize_map(pairs: Sequence[tuple[Any, Any]]) -> bytes:
            pairs = sort_unique(key_type, pairs, lambda pair: pair[0])
            return _INT32.pack(len(pairs)) + b"".join(_framed(key(k)) + _framed(item(v)) for k, v in pairs)

        return serialize_map
    if cql.kind in ("tuple", "udt"):
        names = struct_field_names(cql)
        fields = [value_serializer(arg) for arg in cql.args]

        def serialize_struct(struct_value: Mapping[str, Any]) -> bytes:
            parts = []
            for name, serialize in zip(names, fields):
                value = struct_value.get(name)
                parts.append(_NULL if value is None else _framed(serialize(value)))
            return b"".join(parts)

        return serialize_struct
    if cql.kind == "vector":
        element_type = cql.args[0]
        element = value_serializer(element_type)
        fixed = element_type.fixed_length is not None

        def serialize_vector(values: Sequence[Any]) -> bytes:
            if len(values) != cql.size:
                raise ValueError(f"{cql.cql()} needs {cql.size} elements, got {len(values)}")
            if fixed:
                return b"".join(element(v) for v in values)
            return b"".join(with_length(element(v)) for v in values)

        return serialize_vector
    raise ValueError(f"cannot serialize CQL type {cql.cql()!r}")


def with_length(raw: bytes) -> bytes:
    return write_uvint(len(raw)) + raw


def write_value(cql: CqlType, raw: bytes) -> bytes:
    """``AbstractType.writeValue``: fixed-length types raw, the others with a vint length."""
    fixed = cql.fixed_length
    if fixed is None:
        return with_length(raw)
    if len(raw) != fixed:
        raise ValueError(f"{cql.cql()} value must be {fixed} bytes, got {len(raw)}")
    return raw


def canonical_value(cql: CqlType, value: Any) -> Any:
    """``value`` as it reads back: set elements and map entries in comparator order, duplicates dropped."""
    if value is None:
        return None
    if cql.kind in ("list", "vector"):
        return [canonical_value(cql.args[0], v) for v in value]
    if cql.kind == "set":
        return [canonical_value(cql.args[0], v) for v in sort_unique(cql.args[0], value)]
    if cql.kind == "map":
        key_type, item_type = cql.args
        return [
            (canonical_value(key_type, k), canonical_value(item_type, v))
            for k, v in sort_unique(key_type, value, lambda pair: pair[0])
        ]
    if cql.kind in ("tuple", "udt"):
        return {name: canonical_value(arg, value.get(name)) for name, arg in zip(struct_field_names(cql), cql.args)}
    if cql.kind == "counter":
        shards = (tuple(s[k] for k in ("id", "clock", "count")) if isinstance(s, Mapping) else tuple(s) for s in value)
        return sorted(shards, key=lambda shard: shard[0])
    return value
