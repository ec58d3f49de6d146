"""Random values of every CQL type, in the change batch's Python form and already in canonical order.

Everything is drawn from one ``random.Random``, so a seed reproduces a workload exactly. Values are the
ones a reader gives back: frozen sets sorted and deduplicated by Cassandra's comparator, maps by key,
decimals as ``str(Decimal(unscaled).scaleb(-scale))``, floats representable in 32 bits.
"""

from __future__ import annotations

import ipaddress
import random
import string
import struct
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from cdc_assets.cassandra_schema.types import CqlType
from cdc_assets.commitlog.generator.ordering import sort_unique, struct_field_names

# 100-ns intervals between the Gregorian epoch of time UUIDs (1582-10-15) and the Unix epoch.
_UUID_EPOCH_OFFSET = 0x01B21DD213814000
_MS_PER_DAY = 86_400_000
_NS_PER_DAY = 86_400 * 10**9
_WORDS = (
    *("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett", "kilo"),
    *("lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform"),
    *("grüße", "café", "naïve", "東京", "日本", "😀"),
)


def time_uuid(timestamp_us: int, rng: random.Random, sequence: int = 0) -> str:
    """A version-1 UUID for a write at ``timestamp_us``; ``sequence`` orders several taken in one microsecond."""
    ticks = timestamp_us * 10 + sequence + _UUID_EPOCH_OFFSET
    clock_seq = rng.getrandbits(14)
    node = rng.getrandbits(48)
    value = uuid.UUID(
        fields=(
            ticks & 0xFFFFFFFF,
            (ticks >> 32) & 0xFFFF,
            ((ticks >> 48) & 0x0FFF) | 0x1000,
            0x80 | (clock_seq >> 8),
            clock_seq & 0xFF,
            node,
        )
    )
    return str(value)


class RandomValues:
    """Draws CQL values; ``now_ms`` centres timestamps, so generated data looks current."""

    def __init__(self, rng: random.Random, now_ms: int = 1_700_000_000_000):
        self.rng = rng
        self.now_ms = now_ms
        self._scalars: dict[str, Callable[[], Any]] = {
            "ascii": self.ascii,
            "text": self.text,
            "blob": self.blob,
            "boolean": lambda: rng.random() < 0.5,
            "tinyint": lambda: rng.randint(-128, 127),
            "smallint": lambda: rng.randint(-(1 << 15), (1 << 15) - 1),
            "int": lambda: rng.randint(-(1 << 31), (1 << 31) - 1),
            "bigint": lambda: rng.randint(-(1 << 63), (1 << 63) - 1),
            "float": self.float32,
            "double": lambda: rng.uniform(-1e6, 1e6),
            "varint": lambda: str(rng.randint(-(1 << 100), 1 << 100)),
            "decimal": self.decimal,
            "timestamp": lambda: self.now_ms + rng.randint(-5 * 365, 365) * _MS_PER_DAY + rng.randrange(_MS_PER_DAY),
            "date": lambda: self.now_ms // _MS_PER_DAY + rng.randint(-40_000, 20_000),
            "time": lambda: rng.randrange(_NS_PER_DAY),
            "duration": self.duration,
            "uuid": lambda: str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "timeuuid": lambda: time_uuid(self.now_ms * 1000 + rng.randrange(10**9), rng),
            "inet": self.inet,
        }

    def value(self, cql: CqlType) -> Any:
        """One value of ``cql``. Tuple and UDT fields are sometimes null; nothing else is."""
        scalar = self._scalars.get(cql.kind)
        if scalar is not None:
            return scalar()
        rng = self.rng
        if cql.kind == "list":
            return [self.value(cql.args[0]) for _ in range(rng.randint(0, 4))]
        if cql.kind == "set":
            return sort_unique(cql.args[0], [self.value(cql.args[0]) for _ in range(rng.randint(0, 4))])
        if cql.kind == "map":
            key_type, item_type = cql.args
            pairs = [(self.value(key_type), self.value(item_type)) for _ in range(rng.randint(0, 4))]
            return sort_unique(key_type, pairs, lambda pair: pair[0])
        if cql.kind in ("tuple", "udt"):
            fields = zip(struct_field_names(cql), cql.args)
            return {name: None if rng.random() < 0.2 else self.value(arg) for name, arg in fields}
        if cql.kind == "vector":
            return [self.value(cql.args[0]) for _ in range(cql.size)]
        raise ValueError(f"no random values for CQL type {cql.cql()!r}")

    def ascii(self) -> str:
        return "".join(self.rng.choices(string.ascii_letters + string.digits + " -_", k=self.rng.randint(1, 16)))

    def text(self) -> str:
        return " ".join(self.rng.choices(_WORDS, k=self.rng.randint(1, 4)))

    def blob(self) -> bytes:
        return self.rng.randbytes(self.rng.randint(1, 32))

    def float32(self) -> float:
        # Only values a 32-bit float holds exactly read back equal.
        return struct.unpack(">f", struct.pack(">f", self.rng.uniform(-1e6, 1e6)))[0]

    def decimal(self) -> str:
        unscaled = self.rng.randint(-(10**18), 10**18)
        return str(Decimal(unscaled).scaleb(-self.rng.randint(-3, 10)))

    def duration(self) -> tuple[int, int, int]:
        # Cassandra rejects durations whose parts have different signs.
        sign = self.rng.choice((1, -1))
        rng = self.rng
        return sign * rng.randint(0, 1200), sign * rng.randint(0, 400), sign * rng.randint(0, _NS_PER_DAY)

    def inet(self) -> str:
        if self.rng.random() < 0.7:
            return str(ipaddress.IPv4Address(self.rng.getrandbits(32)))
        return str(ipaddress.IPv6Address(self.rng.getrandbits(128)))
