"""CQL value decoding (format notes, section 11): serialized bytes to the change batch's Python values.

Each ``value_decoder(type)`` returns a function from the value's bytes (no framing) to its Python form,
as ``cdc_assets.change_batch`` documents it. An empty value of a non-string type decodes to None.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from cdc_assets.cassandra_schema.types import CqlType
from cdc_assets.vints import read_uvint, zigzag_decode

Decoder = Callable[[bytes], Any]

_INT32 = struct.Struct(">i")
_COUNTER_SHARD = struct.Struct(">16sqq")
_GLOBAL_SHARD = struct.Struct(">h")
_DATE_EPOCH = 1 << 31


def format_uuid(raw: bytes) -> str:
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _signed(raw: bytes) -> int | None:
    return int.from_bytes(raw, "big", signed=True) if raw else None


def _float(fmt: str) -> Decoder:
    unpack = struct.Struct(fmt).unpack

    def decode(raw: bytes) -> float | None:
        return unpack(raw)[0] if raw else None

    return decode


def _decimal(raw: bytes) -> str | None:
    if not raw:
        return None
    (scale,) = _INT32.unpack_from(raw, 0)
    unscaled = int.from_bytes(raw[4:], "big", signed=True)
    # Built from its digits, not by arithmetic, so no context precision rounds it.
    return str(Decimal((int(unscaled < 0), tuple(map(int, str(abs(unscaled)))), -scale)))


def _duration(raw: bytes) -> tuple[int, int, int] | None:
    if not raw:
        return None
    months, pos = read_uvint(raw, 0)
    days, pos = read_uvint(raw, pos)
    nanos, pos = read_uvint(raw, pos)
    return zigzag_decode(months), zigzag_decode(days), zigzag_decode(nanos)


def _counter(raw: bytes) -> list[tuple[bytes, int, int]] | None:
    """A counter context's shards as ``(counter id, clock, count)``, in the context's (counter id) order.

    Since Cassandra 2.1 a node logs only global shards (``CounterMutation`` writes the leader's, a read repair
    or hint the merged context's); a pre-2.1 local or remote shard merges by other rules, so it is refused.
    """
    if not raw:
        return None
    count = int.from_bytes(raw[:2], "big")
    start = 2 + 2 * count
    if len(raw) != start + count * _COUNTER_SHARD.size:
        raise ValueError(
            f"a counter context of {len(raw)} bytes is not the {count} shards its header lists "
            "(a pre-2.1 remote shard, or bytes missing)"
        )
    if raw[2:start] != _global_header(count):
        raise ValueError("a counter context holds a local (pre-2.1) shard: only global shards are read")
    return list(_COUNTER_SHARD.iter_unpack(raw[start:]))


@functools.lru_cache(maxsize=64)
def _global_header(count: int) -> bytes:
    """The header elements of a context of ``count`` global shards: each index plus Short.MIN_VALUE, in order."""
    return b"".join(_GLOBAL_SHARD.pack(index - (1 << 15)) for index in range(count))


def _date(raw: bytes) -> int | None:
    return int.from_bytes(raw, "big") - _DATE_EPOCH if raw else None


def _text(raw: bytes) -> str:
    return raw.decode()


def _blob(raw: bytes) -> bytes:
    return bytes(raw)


def _uuid(raw: bytes) -> str | None:
    return format_uuid(raw) if raw else None


def _inet(raw: bytes) -> str | None:
    return str(ipaddress.ip_address(bytes(raw))) if raw else None


def _varint(raw: bytes) -> str | None:
    return str(int.from_bytes(raw, "big", signed=True)) if raw else None


def _boolean(raw: bytes) -> bool | None:
    return raw[0] != 0 if raw else None


_SCALARS: dict[str, Decoder] = {
    "ascii": _text,
    "text": _text,
    "blob": _blob,
    "boolean": _boolean,
    "tinyint": _signed,
    "smallint": _signed,
    "int": _signed,
    "bigint": _signed,
    "timestamp": _signed,
    "time": _signed,
    "counter": _counter,
    "float": _float(">f"),
    "double": _float(">d"),
    "varint": _varint,
    "decimal": _decimal,
    "date": _date,
    "duration": _duration,
    "uuid": _uuid,
    "timeuuid": _uuid,
    "inet": _inet,
}


def _framed_elements(raw: bytes, pos: int, count: int) -> tuple[list[bytes | None], int]:
    """``count`` int32-length-prefixed values (-1 = null), as frozen collections, tuples and UDTs hold them."""
    values: list[bytes | None] = []
    unpack = _INT32.unpack_from
    for _ in range(count):
        (length,) = unpack(raw, pos)
        pos += 4
        if length < 0:
            values.append(None)
        else:
            values.append(raw[pos : pos + length])
            pos += length
    return values, pos


def value_decoder(cql: CqlType) -> Decoder:
    """A function decoding one value of ``cql`` from its bytes."""
    scalar = _SCALARS.get(cql.kind)
    if scalar is not None:
        return scalar
    if cql.kind in ("list", "set"):
        element = value_decoder(cql.args[0])

        def decode_list(raw: bytes) -> list[Any] | None:
            if not raw:
                return None
            (count,) = _INT32.unpack_from(raw, 0)
            items, _ = _framed_elements(raw, 4, count)
            return [None if item is None else element(item) for item in items]

        return decode_list
    if cql.kind == "map":
        key_decoder, item_decoder = value_decoder(cql.args[0]), value_decoder(cql.args[1])

        def decode_map(raw: bytes) -> list[tuple[Any, Any]] | None:
            if not raw:
                return None
            (count,) = _INT32.unpack_from(raw, 0)
            items, _ = _framed_elements(raw, 4, 2 * count)
            if any(items[i] is None for i in range(0, 2 * count, 2)):
                raise ValueError("a frozen map holds a null key")
            return [
                (key_decoder(items[i]), None if items[i + 1] is None else item_decoder(items[i + 1]))
                for i in range(0, 2 * count, 2)
            ]

        return decode_map
    if cql.kind in ("tuple", "udt"):
        names = cql.field_names if cql.kind == "udt" else tuple(f"f{i}" for i in range(len(cql.args)))
        decoders = [value_decoder(arg) for arg in cql.args]

        def decode_struct(raw: bytes) -> dict[str, Any] | None:
            if not raw:
                return None
            result: dict[str, Any] = {}
            pos = 0
            # A frozen UDT written before fields were added holds fewer values: the rest are null.
            for name, decoder in zip(names, decoders):
                if pos >= len(raw):
                    result[name] = None
                    continue
                (length,) = _INT32.unpack_from(raw, pos)
                pos += 4
                if length < 0:
                    result[name] = None
                else:
                    result[name] = decoder(raw[pos : pos + length])
                    pos += length
            return result

        return decode_struct
    if cql.kind == "vector":
        element_type = cql.args[0]
        element = value_decoder(element_type)
        width = element_type.fixed_length
        size = cql.size

        def decode_vector(raw: bytes) -> list[Any] | None:
            if not raw:
                return None
            if width is not None:
                return [element(raw[i * width : (i + 1) * width]) for i in range(size)]
            items = []
            pos = 0
            for _ in range(size):
                length, pos = read_uvint(raw, pos)
                items.append(element(raw[pos : pos + length]))
                pos += length
            return items

        return decode_vector
    raise ValueError(f"cannot decode CQL type {cql.cql()!r}")


def partition_key_decoder(columns: tuple[CqlType, ...], names: tuple[str, ...]) -> Callable[[bytes], dict]:
    """Decode a partition key: the raw value for one column, CompositeType framing for several (11.3)."""
    decoders = [value_decoder(t) for t in columns]
    if len(decoders) == 1:
        decode, name = decoders[0], names[0]
        return lambda raw: {name: decode(raw)}

    def decode_composite(raw: bytes) -> dict:
        key = {}
        pos = 0
        for name, decoder in zip(names, decoders):
            length = int.from_bytes(raw[pos : pos + 2], "big")
            key[name] = decoder(raw[pos + 2 : pos + 2 + length])
            pos += 3 + length
        return key

    return decode_composite
