"""CQL types: parsing the type strings Cassandra stores in ``system_schema`` and CQL files."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NATIVE_TYPES = frozenset(
    {
        "ascii",
        "bigint",
        "blob",
        "boolean",
        "counter",
        "date",
        "decimal",
        "double",
        "duration",
        "float",
        "inet",
        "int",
        "smallint",
        "text",
        "time",
        "timestamp",
        "timeuuid",
        "tinyint",
        "uuid",
        "varint",
    }
)
_ALIASES = {"varchar": "text"}

# Bytes a fixed-length type occupies in a cell or clustering value (no length prefix is written).
# smallint, tinyint, date and time are length-prefixed although their size is fixed: Cassandra's
# `valueLengthIfFixed` says so (format notes, section 11.1).
FIXED_LENGTHS = {
    "boolean": 1,
    "int": 4,
    "bigint": 8,
    "float": 4,
    "double": 8,
    "timestamp": 8,
    "uuid": 16,
    "timeuuid": 16,
}


class CqlTypeError(ValueError):
    """A CQL type string that cannot be parsed or names an unknown type."""


@dataclass(frozen=True)
class CqlType:
    """One CQL type.

    ``kind`` is a native type name (``int``, ``text``, ...) or one of ``list``, ``set``, ``map``,
    ``tuple``, ``udt``, ``vector``. ``args`` holds element types (for a UDT, the field types, in
    field order); ``field_names`` the UDT's field names; ``size`` a vector's dimension.
    """

    kind: str
    args: tuple[CqlType, ...] = ()
    frozen: bool = False
    name: str = ""
    field_names: tuple[str, ...] = ()
    size: int = 0

    @property
    def is_complex(self) -> bool:
        """True for non-frozen collections and UDTs: each element is a cell of its own.

        A non-frozen tuple only comes from :func:`parse_dropped_type`: a dropped non-frozen UDT.
        """
        return not self.frozen and self.kind in ("list", "set", "map", "udt", "tuple")

    @property
    def fixed_length(self) -> int | None:
        """Length of a value written without a length prefix, or None when one is written."""
        if self.kind == "vector":
            element = self.args[0].fixed_length
            return None if element is None else element * self.size
        return FIXED_LENGTHS.get(self.kind)

    def freeze(self) -> CqlType:
        if self.frozen or self.kind not in ("list", "set", "map", "udt", "tuple"):
            return self
        return CqlType(self.kind, self.args, True, self.name, self.field_names, self.size)

    def cql(self) -> str:
        """The type as CQL writes it."""
        if self.kind in NATIVE_TYPES:
            return self.kind
        if self.kind == "udt":
            text = self.name
        elif self.kind == "vector":
            text = f"vector<{self.args[0].cql()}, {self.size}>"
        else:
            text = f"{self.kind}<{', '.join(arg.cql() for arg in self.args)}>"
        return f"frozen<{text}>" if self.frozen and self.kind != "tuple" else text


def native(kind: str) -> CqlType:
    kind = _ALIASES.get(kind, kind)
    if kind not in NATIVE_TYPES:
        raise CqlTypeError(f"unknown CQL type {kind!r}")
    return CqlType(kind)


def parse_type(text: str, udts: Mapping[str, CqlType] | None = None) -> CqlType:
    """Parse a CQL type string such as ``frozen<map<text, list<int>>>``.

    ``udts`` maps user type names (unquoted, as stored) to their ``udt`` CqlType.
    Elements of a collection, tuple or UDT are always frozen, as Cassandra stores them.
    """
    parser = _TypeParser(text, udts or {})
    result = parser.parse()
    parser.expect_end()
    return result


def parse_dropped_type(text: str) -> CqlType:
    """Parse the type ``system_schema.dropped_columns`` stores for a dropped column.

    Cassandra stores it with user types expanded to tuples, and reads a top-level ``tuple<...>`` not
    wrapped in ``frozen<>`` as a *non-frozen* tuple: what a dropped non-frozen UDT became. Its cells
    are laid out like the UDT's (the cell path is the field position), so it gets field names
    ``f0, f1, ...``, the names a tuple's fields have in Arrow.
    """
    parsed = parse_type(text)
    if parsed.kind != "tuple" or text.strip().lower().startswith("frozen"):
        return parsed
    return CqlType("tuple", parsed.args, field_names=tuple(f"f{i}" for i in range(len(parsed.args))))


def substitute_udt(cql: CqlType, udt: CqlType) -> CqlType:
    """``cql`` with every use of the user type named ``udt.name`` replaced by ``udt`` (after ALTER TYPE)."""
    if cql.kind == "udt" and cql.name == udt.name:
        return udt.freeze() if cql.frozen else udt
    if not cql.args:
        return cql
    args = tuple(substitute_udt(arg, udt) for arg in cql.args)
    if args == cql.args:
        return cql
    return CqlType(cql.kind, args, cql.frozen, cql.name, cql.field_names, cql.size)


class _TypeParser:
    def __init__(self, text: str, udts: Mapping[str, CqlType]):
        self.text = text
        self.pos = 0
        self.udts = udts

    def fail(self, message: str) -> CqlTypeError:
        return CqlTypeError(f"{message} at character {self.pos} of CQL type {self.text!r}")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_space()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self, char: str) -> None:
        if self.peek() != char:
            raise self.fail(f"expected {char!r}")
        self.pos += 1

    def expect_end(self) -> None:
        if self.peek():
            raise self.fail("unexpected text")

    def word(self) -> str:
        self.skip_space()
        if self.peek() == '"':
            end = self.text.find('"', self.pos + 1)
            while end != -1 and self.text[end + 1 : end + 2] == '"':
                end = self.text.find('"', end + 2)
            if end == -1:
                raise self.fail("unterminated quoted name")
            name = self.text[self.pos + 1 : end].replace('""', '"')
            self.pos = end + 1
            return name
        if self.peek() == "'":
            end = self.text.find("'", self.pos + 1)
            if end == -1:
                raise self.fail("unterminated custom type")
            name = self.text[self.pos + 1 : end]
            self.pos = end + 1
            return "'" + name
        start = self.pos
        while self.pos < len(self.text) and (self.text[self.pos].isalnum() or self.text[self.pos] in "_."):
            self.pos += 1
        if start == self.pos:
            raise self.fail("expected a type name")
        return self.text[start : self.pos].lower()

    def number(self) -> int:
        self.skip_space()
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos].isdigit():
            self.pos += 1
        if start == self.pos:
            raise self.fail("expected a number")
        return int(self.text[start : self.pos])

    def parse(self) -> CqlType:
        name = self.word()
        if name.startswith("'"):
            raise self.fail(f"custom types are not supported ({name[1:]})")
        if name == "frozen":
            self.take("<")
            inner = self.parse()
            self.take(">")
            return inner.freeze()
        if name in ("list", "set"):
            self.take("<")
            element = self.parse().freeze()
            self.take(">")
            return CqlType(name, (element,))
        if name == "map":
            self.take("<")
            key = self.parse().freeze()
            self.take(",")
            value = self.parse().freeze()
            self.take(">")
            return CqlType("map", (key, value))
        if name == "tuple":
            self.take("<")
            elements = [self.parse().freeze()]
            while self.peek() == ",":
                self.take(",")
                elements.append(self.parse().freeze())
            self.take(">")
            return CqlType("tuple", tuple(elements), frozen=True)
        if name == "vector":
            self.take("<")
            element = self.parse().freeze()
            self.take(",")
            size = self.number()
            self.take(">")
            return CqlType("vector", (element,), frozen=True, size=size)
        if name in NATIVE_TYPES or name in _ALIASES:
            return native(name)
        udt = self.udts.get(name)
        if udt is None:
            raise self.fail(f"unknown type {name!r}")
        return udt


def type_to_dict(cql: CqlType) -> dict[str, Any]:
    """A CQL type as plain data (JSON-ready), UDT field names and vector sizes included."""
    return {
        "kind": cql.kind,
        "args": [type_to_dict(arg) for arg in cql.args],
        "frozen": cql.frozen,
        "name": cql.name,
        "field_names": list(cql.field_names),
        "size": cql.size,
    }


def type_from_dict(data: Mapping[str, Any]) -> CqlType:
    """The inverse of :func:`type_to_dict`."""
    args = tuple(type_from_dict(arg) for arg in data["args"])
    return CqlType(data["kind"], args, data["frozen"], data["name"], tuple(data["field_names"]), data["size"])


def type_to_json(cql: CqlType) -> str:
    """A CQL type as compact JSON (kept where a stored type must be read back, such as a column comment)."""
    return json.dumps(type_to_dict(cql), separators=(",", ":"))


def type_from_json(text: str) -> CqlType:
    """The inverse of :func:`type_to_json`."""
    return type_from_dict(json.loads(text))
