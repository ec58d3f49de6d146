"""CQL → PostgreSQL types: how each CQL value is stored, presented in the current-state view and read back.

==========================  ==========================  ======================================================
CQL type                    PostgreSQL type             notes
==========================  ==========================  ======================================================
ascii, text, varchar        text                        a NUL character cannot be stored (dead letter)
blob                        bytea
boolean                     boolean
tinyint                     smallint                    PostgreSQL has no one-byte integer
smallint                    smallint
int                         integer
bigint, counter             bigint                      counter: the total the commit log holds
varint                      numeric                     exact, any size
decimal                     numeric                     exact; keeps the scale it was written with
float                       real
double                      double precision
timestamp                   timestamptz                 milliseconds, UTC
date                        date
time                        time                        **microseconds**: nanoseconds are truncated
duration                    interval                    months, days, **microseconds** (nanoseconds truncated)
uuid, timeuuid              uuid
inet                        inet
list<T>, set<T>             T[]                         T scalar; a set's array is in T's CQL order, a list's
                                                        in element order
vector<T, n>                T[]                         e.g. vector<float, 3> → real[]
map<K, V>                   jsonb                       object; keys as Cassandra's ``SELECT JSON`` writes them
tuple<...>                  jsonb                       array
UDT                         jsonb                       object by field name
nested collections          jsonb                       e.g. list<frozen<set<int>>>
==========================  ==========================  ======================================================

Frozen and non-frozen collections are presented alike. Inside jsonb, values follow Cassandra's
``SELECT JSON`` forms: numbers (decimal and varint exact), strings for text, uuid, inet,
timestamps (``2024-05-01T12:00:00.000Z``), dates (``2024-05-01``), times (``12:00:00.000001``), blobs
(``0x0102``), durations (``1 months 2 days 3 microseconds``, PostgreSQL interval input), and
``"NaN"``/``"Infinity"``/``"-Infinity"`` for non-finite floats. Map keys that are not JSON strings are
written as their JSON text (``{"1": "a"}`` for ``map<int, text>``).

Hidden storage columns keep each cell's write time and the serialized CQL bytes some types need for
Cassandra's tie-break; see ``postgres.merge``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from decimal import Decimal
from typing import Any

from cdc_assets.cassandra_schema.types import CqlType
from cdc_assets.destinations.cassandra_values import NAN, canonical_value, field_names

_SCALAR_TYPES = {
    "ascii": "text",
    "text": "text",
    "blob": "bytea",
    "boolean": "boolean",
    "tinyint": "smallint",
    "smallint": "smallint",
    "int": "integer",
    "bigint": "bigint",
    "counter": "bigint",
    "varint": "numeric",
    "decimal": "numeric",
    "float": "real",
    "double": "double precision",
    "timestamp": "timestamptz",
    "date": "date",
    "time": "time",
    "duration": "interval",
    "uuid": "uuid",
    "timeuuid": "uuid",
    "inet": "inet",
}

# SQL giving a column value's serialized CQL bytes (what Cassandra compares on a write-time tie), for the
# types whose bytes PostgreSQL can compute; the others keep the bytes in a hidden column.
_VALUE_BYTES_SQL = {
    "ascii": "convert_to({}, 'UTF8')",
    "text": "convert_to({}, 'UTF8')",
    "blob": "{}",
    "boolean": "boolsend({})",
    "tinyint": "substring(int2send({}) from 2)",
    "smallint": "int2send({})",
    "int": "int4send({})",
    "bigint": "int8send({})",
    "counter": "int8send({})",
    "float": "float4send({})",
    "double": "float8send({})",
    "timestamp": "int8send((extract(epoch from {}) * 1000)::bigint)",
    "date": "substring(int8send(({} - date '1970-01-01') + 2147483648) from 5)",
    "time": "int8send((extract(epoch from {}) * 1000000000)::bigint)",
    "uuid": "uuid_send({})",
    "timeuuid": "uuid_send({})",
    "inet": "substring(inet_send({}) from 5)",
}

_JSON_STRING_KINDS = frozenset(
    {"ascii", "text", "blob", "timestamp", "date", "time", "duration", "uuid", "timeuuid", "inet"}
)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# The json module's C encoder writes everything but Decimals, which :func:`dumps` then writes itself.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_DURATION = re.compile(r"^(-?\d+) months (-?\d+) days (-?\d+) microseconds$")
_ISO_INTERVAL = re.compile(
    r"^P(?:(-?\d+)Y)?(?:(-?\d+)M)?(?:(-?\d+)D)?(?:T(?:(-?\d+)H)?(?:(-?\d+)M)?(?:(-?[\d.]+)S)?)?$"
)


def is_scalar(cql: CqlType) -> bool:
    return cql.kind in _SCALAR_TYPES


def pg_type(cql: CqlType) -> str:
    """The PostgreSQL type a CQL value is stored and presented as."""
    if is_scalar(cql):
        return _SCALAR_TYPES[cql.kind]
    if cql.kind in ("list", "set", "vector") and is_scalar(cql.args[0]):
        return _SCALAR_TYPES[cql.args[0].kind] + "[]"
    return "jsonb"


def value_bytes_sql(cql: CqlType, expr: str) -> str | None:
    """SQL computing the serialized CQL bytes of ``expr``, or None when PostgreSQL cannot (store them)."""
    template = _VALUE_BYTES_SQL.get(cql.kind)
    return None if template is None else template.format(expr)


def element_sql(cql: CqlType, text_expr: str) -> str:
    """SQL turning the text form of a jsonb scalar (``->>``) into ``cql``'s PostgreSQL type."""
    if cql.kind == "blob":
        return f"decode(substr({text_expr}, 3), 'hex')"
    return f"({text_expr})::{pg_type(cql)}"


# --------------------------------------------------------------------------------------------------
# Python → PostgreSQL text (COPY) and jsonb


def timestamp_text(ms: int) -> str:
    moment = _EPOCH + dt.timedelta(milliseconds=ms)
    # Four digits of year, whatever the C library's %Y does: "1-01-01" would be read by PostgreSQL as 2001.
    return f"{moment.year:04d}-" + moment.strftime("%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def time_text(ns: int) -> str:
    seconds, nanos = divmod(ns, 1_000_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return f"{hour:02d}:{minute:02d}:{second:02d}.{nanos // 1000:06d}"


def duration_text(value: tuple[int, int, int]) -> str:
    months, days, nanos = value
    micros = abs(nanos) // 1000 * (1 if nanos >= 0 else -1)
    return f"{months} months {days} days {micros} microseconds"


def json_value(cql: CqlType, value: Any) -> Any:
    """A canonical value as the JSON the jsonb presentation holds (module docstring)."""
    if value is None:
        return None
    kind = cql.kind
    if kind in ("float", "double"):
        if value == NAN:
            return "NaN"
        return value if math.isfinite(value) else ("Infinity" if value > 0 else "-Infinity")
    if kind in _JSON_STRING_KINDS:
        return _json_string(kind, value)
    if kind in ("list", "set", "vector"):
        return [json_value(cql.args[0], item) for item in value]
    if kind == "map":
        key_type, value_type = cql.args
        return {map_key_text(key_type, k): json_value(value_type, v) for k, v in value}
    if kind == "tuple":
        return [json_value(arg, value[name]) for name, arg in zip(field_names(cql), cql.args, strict=True)]
    if kind == "udt":
        return {name: json_value(arg, value[name]) for name, arg in zip(cql.field_names, cql.args, strict=True)}
    return value


def _json_string(kind: str, value: Any) -> str:
    if kind == "blob":
        return "0x" + value.hex()
    if kind == "timestamp":
        return timestamp_text(value)
    if kind == "date":
        return (dt.date(1970, 1, 1) + dt.timedelta(days=value)).isoformat()
    if kind == "time":
        return time_text(value)
    if kind == "duration":
        return duration_text(value)
    return value


def map_key_text(cql: CqlType, value: Any) -> str:
    """A map key as a jsonb object key: its JSON string, or the JSON text of a non-string key."""
    encoded = json_value(cql, value)
    return encoded if isinstance(encoded, str) and cql.kind in _JSON_STRING_KINDS else dumps(encoded)


def dumps(value: Any) -> str:
    """JSON text, with Decimals written as exact numbers (the json module cannot)."""
    try:
        return _ENCODER.encode(value)
    except TypeError:
        return _exact_dumps(value)


def _exact_dumps(value: Any) -> str:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(_ENCODER.encode(k) + ":" + _exact_dumps(v) for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_exact_dumps(item) for item in value) + "]"
    return _ENCODER.encode(value)


def copy_text(cql: CqlType, value: Any) -> str | None:
    """A canonical value as PostgreSQL's text input for its :func:`pg_type` (COPY), None for NULL."""
    if value is None:
        return None
    pg = pg_type(cql)
    if pg == "jsonb":
        return dumps(json_value(cql, value))
    if pg.endswith("[]"):
        element = cql.args[0]
        return "{" + ",".join(_array_element(copy_text(element, item)) for item in value) + "}"
    kind = cql.kind
    if kind == "blob":
        return "\\x" + value.hex()
    if kind in ("float", "double"):
        encoded = json_value(cql, value)
        return repr(encoded) if isinstance(encoded, float) else encoded
    if kind == "boolean":
        return "true" if value else "false"
    if kind in _JSON_STRING_KINDS:
        return _json_string(kind, value)
    return str(value)


def _array_element(text: str | None) -> str:
    assert text is not None
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --------------------------------------------------------------------------------------------------
# PostgreSQL → canonical


def from_pg(cql: CqlType, value: Any) -> Any:
    """A value read from the current-state view (as psycopg loads it) in the canonical form of ``cassandra_values.py``.

    jsonb must be loaded with Decimals for numbers (``json.loads(parse_float=Decimal)``); intervals
    with :func:`parse_interval`.
    """
    if value is None:
        return None
    if pg_type(cql) == "jsonb":
        return canonical_value(cql, from_json(cql, value))
    if cql.kind in ("list", "set", "vector"):
        return canonical_value(cql, [from_pg(cql.args[0], item) for item in value])
    return canonical_value(cql, value)


def from_json(cql: CqlType, value: Any) -> Any:
    """A jsonb presentation value back as a (not yet canonical) Python value."""
    if value is None:
        return None
    kind = cql.kind
    if kind in ("float", "double"):
        return float(value)
    if kind == "blob":
        return bytes.fromhex(value[2:])
    if kind == "timestamp":
        return dt.datetime.fromisoformat(value)
    if kind == "date":
        return dt.date.fromisoformat(value)
    if kind == "time":
        return dt.time.fromisoformat(value)
    if kind == "duration":
        return _parse_duration(value)
    if kind in ("list", "set", "vector"):
        return [from_json(cql.args[0], item) for item in value]
    if kind == "map":
        key_type, value_type = cql.args
        return [(_map_key(key_type, k), from_json(value_type, v)) for k, v in value.items()]
    if kind == "tuple":
        return [from_json(arg, item) for arg, item in zip(cql.args, value, strict=False)]
    if kind == "udt":
        return {name: from_json(arg, value.get(name)) for name, arg in zip(cql.field_names, cql.args, strict=True)}
    return value


def _map_key(cql: CqlType, key: str) -> Any:
    return from_json(cql, key if cql.kind in _JSON_STRING_KINDS else json.loads(key, parse_float=Decimal))


def _parse_duration(text: str) -> tuple[int, int, int]:
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r}")
    months, days, micros = (int(part) for part in match.groups())
    return months, days, micros * 1000


def parse_interval(text: str) -> tuple[int, int, int]:
    """An interval in ``intervalstyle = iso_8601`` output as ``(months, days, nanoseconds)``."""
    match = _ISO_INTERVAL.match(text)
    if match is None:
        raise ValueError(f"not an ISO 8601 interval: {text!r}")
    years, months, days, hours, minutes, seconds = match.groups()
    total_months = int(years or 0) * 12 + int(months or 0)
    nanos = (int(hours or 0) * 3600 + int(minutes or 0) * 60) * 1_000_000_000
    nanos += int(Decimal(seconds or 0) * 1_000_000_000)
    return total_months, int(days or 0), nanos


def json_loads(data: str | bytes) -> Any:
    """The jsonb loader :func:`from_pg` expects: numbers with a fraction become Decimals."""
    return json.loads(data, parse_float=Decimal)
