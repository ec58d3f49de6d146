"""``cdc-assets commitlog dump``: one JSON object per change, values as cqlsh would show them."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import sys
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

from cdc_assets.cassandra_schema.tables import TableSchema
from cdc_assets.cassandra_schema.types import CqlType
from cdc_assets.commitlog.cdc_dir import index_path, list_cdc_segments, read_cdc_index
from cdc_assets.commitlog.reader import Change, CommitLogReader, Position, ReadStats

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_DATE = dt.date(1970, 1, 1)
_NANOS = (
    (3_600_000_000_000, "h"),
    (60_000_000_000, "m"),
    (1_000_000_000, "s"),
    (1_000_000, "ms"),
    (1_000, "us"),
    (1, "ns"),
)

JsonConverter = Callable[[Any], Any]


def _timestamp_ms(value: int) -> str:
    return (_EPOCH + dt.timedelta(milliseconds=value)).isoformat().replace("+00:00", "Z")


def _seconds(value: int | None) -> str | None:
    return None if value is None else (_EPOCH + dt.timedelta(seconds=value)).isoformat().replace("+00:00", "Z")


def _date(value: int) -> str:
    return (_EPOCH_DATE + dt.timedelta(days=value)).isoformat()


def _time(value: int) -> str:
    seconds, nanos = divmod(value, 1_000_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return f"{hour:02d}:{minute:02d}:{second:02d}.{nanos:09d}"


def _duration(value: tuple[int, int, int]) -> str:
    """Cassandra's own duration text, e.g. ``1y2mo3d4h5m6s``."""
    months, days, nanos = value
    negative = months < 0 or days < 0 or nanos < 0
    months, days, nanos = abs(months), abs(days), abs(nanos)
    parts = []
    if months:
        years, months = divmod(months, 12)
        parts += [f"{years}y"] if years else []
        parts += [f"{months}mo"] if months else []
    if days:
        parts.append(f"{days}d")
    for unit, suffix in _NANOS:
        count, nanos = divmod(nanos, unit)
        if count:
            parts.append(f"{count}{suffix}")
    text = "".join(parts) or "0s"
    return "-" + text if negative else text


def _blob(value: bytes) -> str:
    return "0x" + value.hex()


def _shards(shards: list[tuple[bytes, int, int]]) -> list[dict[str, Any]]:
    """A counter cell's shards, each leader's counter id (a UUID) with its clock and count: no one change
    holds the counter's value."""
    return [{"counter_id": str(uuid.UUID(bytes=bytes(i))), "clock": clock, "count": n} for i, clock, n in shards]


def json_converter(cql: CqlType) -> JsonConverter:
    """A function turning a change-batch value of ``cql`` into its JSON form."""
    simple: dict[str, JsonConverter] = {
        "blob": _blob,
        "timestamp": _timestamp_ms,
        "date": _date,
        "time": _time,
        "duration": _duration,
        "varint": int,
        "counter": _shards,
    }
    convert = simple.get(cql.kind)
    if convert is None and cql.kind in ("list", "set", "vector"):
        element = json_converter(cql.args[0])

        def convert(items: list) -> list:
            return [None if item is None else element(item) for item in items]

    elif convert is None and cql.kind == "map":
        key, item = json_converter(cql.args[0]), json_converter(cql.args[1])

        def convert(pairs: list) -> list:
            return [[key(k), None if v is None else item(v)] for k, v in pairs]

    elif convert is None and cql.kind in ("tuple", "udt"):
        names = cql.field_names or tuple(f"f{i}" for i in range(len(cql.args)))
        fields = {name: json_converter(arg) for name, arg in zip(names, cql.args)}

        def convert(struct: dict) -> dict:
            return {name: None if v is None else fields[name](v) for name, v in struct.items()}

    elif convert is None:
        return lambda value: value

    def nullable(value: Any) -> Any:
        return None if value is None else convert(value)

    return nullable


class ChangeFormatter:
    """Formats changes of one table as dump JSON objects; converters are built once per table."""

    def __init__(self, table: TableSchema):
        self.table = table
        self.keys = {c.name: json_converter(c.type) for c in table.primary_key}
        self.columns = {c.name: (c.type, json_converter(c.type)) for c in table.value_columns}
        self.paths: dict[str, JsonConverter] = {}
        self.values: dict[str, JsonConverter] = {}
        for column in table.value_columns:
            kind = column.type.kind
            if column.type.is_complex and kind in ("set", "map"):
                self.paths[column.name] = json_converter(column.type.args[0])
            if column.type.is_complex and kind in ("list", "map"):
                self.values[column.name] = json_converter(column.type.args[-1])
            if column.type.is_complex and kind == "udt":
                self.values.update(
                    {
                        f"{column.name}.{name}": json_converter(arg)
                        for name, arg in zip(column.type.field_names, column.type.args)
                    }
                )

    def _cell(self, cell: dict, convert: JsonConverter) -> dict:
        result = {
            "value": convert(cell.get("value")),
            "writetime": cell["writetime"],
            "ttl": cell["ttl"],
            "deleted": cell["deleted"],
        }
        if cell["expires_at"] is not None:
            result["expires_at"] = _seconds(cell["expires_at"])
        return result

    def _column(self, name: str, data: dict) -> dict:
        cql, convert = self.columns[name]
        if not cql.is_complex:
            return self._cell(data, convert)
        if cql.kind == "udt":
            cells = {field: self._cell(cell, self.values[f"{name}.{field}"]) for field, cell in data["cells"].items()}
        else:
            path = self.paths.get(name, str)
            value = self.values.get(name, lambda v: v)
            cells = [{"path": path(cell["path"]), **self._cell(cell, value)} for cell in data["cells"]]
        return {"deletion": data["deletion"], "cells": cells}

    def format(self, change: Change) -> dict[str, Any]:
        fields = change.fields
        clustering = fields.get("clustering")
        result: dict[str, Any] = {
            "table": self.table.qualified_name,
            "kind": fields["kind"],
            "key": {name: self.keys[name](value) for name, value in fields["key"].items()},
            "clustering": None
            if clustering is None
            else {name: self.keys[name](value) for name, value in clustering.items()},
            "cells": {name: self._column(name, data) for name, data in (fields.get("cells") or {}).items()},
            "liveness": None,
            "deletion": None,
            "segment": change.segment_id,
            "position": change.position,
        }
        if fields.get("row_writetime") is not None:
            result["liveness"] = {
                "writetime": fields["row_writetime"],
                "ttl": fields.get("row_ttl"),
                "expires_at": _seconds(fields.get("row_expires_at")),
            }
        if fields.get("deletion_writetime") is not None:
            result["deletion"] = {
                "writetime": fields["deletion_writetime"],
                "local_deletion_time": _seconds(fields.get("deletion_time")),
            }
        if fields["kind"] == "range_deletion":
            result["range"] = {
                "start": self._bound(fields.get("range_start")),
                "start_inclusive": fields.get("range_start_inclusive"),
                "end": self._bound(fields.get("range_end")),
                "end_inclusive": fields.get("range_end_inclusive"),
            }
        return result

    def _bound(self, bound: dict | None) -> dict | None:
        if bound is None:
            return None
        return {name: self.keys[name](value) for name, value in bound.items() if value is not None}


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def segment_paths(targets: Iterable[str | os.PathLike[str]]) -> list[tuple[Path, int | None]]:
    """Segments to read, oldest first, each with the offset not to read past (from its idx, in a directory)."""
    found: list[tuple[Path, int | None]] = []
    for target in map(Path, targets):
        if target.is_dir():
            found += [(s.path, s.durable_offset if s.index else None) for s in list_cdc_segments(target)]
        elif target.exists():
            idx = index_path(target)
            found.append((target, read_cdc_index(idx).offset if idx.exists() else None))
        else:
            raise FileNotFoundError(f"no such segment or directory: {target}")
    return found


def dump(
    reader: CommitLogReader,
    targets: Iterable[str | os.PathLike[str]],
    *,
    after: Position | None = None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Print every change as a JSON line; report problems on ``err``. Returns the exit status."""
    stats = ReadStats()
    formatters: dict[int, ChangeFormatter] = {}
    status = 0
    for path, limit in segment_paths(targets):
        for change in reader.iter_changes(path, after=after, limit=limit, stats=stats):
            formatter = formatters.get(id(change.table))
            if formatter is None:
                formatter = formatters[id(change.table)] = ChangeFormatter(change.table)
            out.write(json.dumps(formatter.format(change), default=_json_default) + "\n")
        for problem in stats.problems:
            print(f"error: {problem}", file=err)
            status = 1
        stats.problems.clear()
    for letter in stats.dead_letters:
        payload = base64.b64encode(letter.payload).decode()
        print(f"set aside: {letter.segment}:{letter.position}: {letter.reason} (mutation {payload})", file=err)
        status = 1
    return status
