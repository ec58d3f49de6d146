"""Table definitions from a CQL file: the schema source when no cluster is at hand.

The file holds what ``cqlsh DESCRIBE … WITH INTERNALS`` prints, or the same written by hand:
``CREATE KEYSPACE`` (options ignored), ``USE``, ``CREATE TYPE``, ``CREATE TABLE … WITH ID = <uuid>``,
``ALTER TABLE … ADD`` / ``DROP [USING TIMESTAMP t]`` / ``WITH``, applied in file order.
``CREATE INDEX``, ``MATERIALIZED VIEW``, ``FUNCTION``, ``AGGREGATE`` and ``TRIGGER`` statements are
skipped: none of them changes how a table's mutations are decoded. Anything else is an error.

The id is required: mutations name their table by id only, so a table without ``WITH ID`` could never
be matched to the commit log. A table is taken as CDC-enabled unless its options say ``cdc = false``.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from cdc_assets.cassandra_schema.errors import SchemaError
from cdc_assets.cassandra_schema.tables import Column, ColumnKind, DroppedColumn, SchemaRegistry, TableSchema
from cdc_assets.cassandra_schema.types import CqlType, CqlTypeError, parse_type, substitute_udt

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
    | (?P<comment>--[^\n]*|//[^\n]*|/\*.*?\*/)
    | (?P<uuid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![\w-]))
    | (?P<quoted>"(?:[^"]|"")*")
    | (?P<string>'(?:[^']|'')*')
    | (?P<dollar>\$\$.*?\$\$)
    | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<unterminated>/\*|"|'|\$\$)
    | (?P<symbol>[(){}\[\],;<>=.:+\-*/?])
    """,
    re.VERBOSE | re.DOTALL,
)
_UNTERMINATED = {"/*": "comment", '"': "quoted name", "'": "string", "$$": "$$ string"}
# CREATE statements that define nothing the commit log reader needs.
_SKIPPED_CREATES = frozenset({"index", "custom", "materialized", "function", "aggregate", "trigger", "or"})


@dataclass(frozen=True)
class _Token:
    kind: str  # word, quoted, string, dollar, number, uuid, symbol or end
    text: str
    line: int

    def describe(self) -> str:
        return "the end of the file" if self.kind == "end" else repr(self.text)


def _tokenize(text: str, source: str) -> list[_Token]:
    tokens = []
    line = 1
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise SchemaError(f"unexpected character {text[pos]!r}", source, line)
        kind = match.lastgroup or ""
        if kind == "unterminated":
            raise SchemaError(f"unterminated {_UNTERMINATED[match.group()]}", source, line)
        if kind not in ("space", "comment"):
            tokens.append(_Token(kind, match.group(), line))
        line += match.group().count("\n")
        pos = match.end()
    tokens.append(_Token("end", "", line))
    return tokens


def load_cql_file(path: str | Path) -> SchemaRegistry:
    """The tables a CQL file defines, by id. Errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SchemaError(f"cannot read the CQL file: {error.strerror}", str(path)) from error
    return parse_cql(text, source=str(path))


def parse_cql(text: str, *, source: str = "<cql>") -> SchemaRegistry:
    """The tables the CQL statements in ``text`` define, by id; ``source`` names the text in errors."""
    parser = _Parser(_tokenize(text, source), source)
    parser.parse()
    return SchemaRegistry(parser.tables.values())


def _now_micros() -> int:
    return time.time_ns() // 1000


class _Parser:
    """A recursive-descent parser over the tokens, applying each statement as it is read."""

    def __init__(self, tokens: list[_Token], source: str):
        self.tokens = tokens
        self.pos = 0
        self.source = source
        self.keyspace: str | None = None
        self.types: dict[str, dict[str, CqlType]] = {}
        self.tables: dict[tuple[str, str], TableSchema] = {}

    # -- tokens --------------------------------------------------------------------------------------

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.pos + ahead, len(self.tokens) - 1)]

    def advance(self) -> _Token:
        token = self.peek()
        self.pos = min(self.pos + 1, len(self.tokens) - 1)
        return token

    def fail(self, message: str, token: _Token | None = None) -> SchemaError:
        return SchemaError(message, self.source, (token or self.peek()).line)

    def expected(self, what: str) -> SchemaError:
        return self.fail(f"expected {what}, found {self.peek().describe()}")

    def at_word(self, *words: str, ahead: int = 0) -> bool:
        token = self.peek(ahead)
        return token.kind == "word" and token.text.lower() in words

    def accept_word(self, word: str) -> bool:
        if self.at_word(word):
            self.advance()
            return True
        return False

    def expect_word(self, word: str) -> None:
        if not self.accept_word(word):
            raise self.expected(word.upper())

    def at_symbol(self, symbol: str) -> bool:
        token = self.peek()
        return token.kind == "symbol" and token.text == symbol

    def accept_symbol(self, symbol: str) -> bool:
        if self.at_symbol(symbol):
            self.advance()
            return True
        return False

    def expect_symbol(self, symbol: str) -> None:
        if not self.accept_symbol(symbol):
            raise self.expected(repr(symbol))

    def accept_if(self, *words: str) -> bool:
        """Consume ``IF [NOT] EXISTS``; true when it was there."""
        if not self.at_word("if"):
            return False
        self.advance()
        for word in words:
            self.expect_word(word)
        return True

    def name(self, what: str) -> str:
        """An identifier: quoted ones keep their case (``""`` is a quote), unquoted ones are lower-cased."""
        token = self.peek()
        if token.kind == "quoted":
            self.advance()
            return token.text[1:-1].replace('""', '"')
        if token.kind == "word":
            self.advance()
            return token.text.lower()
        raise self.expected(what)

    def located_name(self, what: str) -> tuple[str, _Token]:
        token = self.peek()
        return self.name(what), token

    def qualified_name(self, what: str) -> tuple[str, str]:
        token = self.peek()
        first = self.name(what)
        if self.accept_symbol("."):
            return first, self.name(what)
        if self.keyspace is None:
            raise self.fail(f"{first!r} has no keyspace: qualify the name or USE a keyspace first", token)
        return self.keyspace, first

    def end_statement(self) -> None:
        if not self.accept_symbol(";") and self.peek().kind != "end":
            raise self.expected("';'")

    def skip_statement(self) -> None:
        while self.peek().kind != "end" and not self.at_symbol(";"):
            self.advance()
        self.end_statement()

    # -- statements ------------------------------------------------------------------------------------

    def parse(self) -> None:
        while self.peek().kind != "end":
            if self.accept_symbol(";"):
                continue
            if self.accept_word("use"):
                self.keyspace = self.name("a keyspace name")
                self.end_statement()
            elif self.accept_word("create"):
                self.create()
            elif self.accept_word("alter"):
                self.alter()
            else:
                raise self.expected("CREATE, ALTER or USE")

    def create(self) -> None:
        if self.accept_word("keyspace"):
            self.accept_if("not", "exists")
            self.name("a keyspace name")
            self.skip_statement()
        elif self.accept_word("type"):
            self.create_type()
        elif self.at_word("table", "columnfamily"):
            self.advance()
            self.create_table()
        elif self.at_word(*_SKIPPED_CREATES):
            self.skip_statement()
        else:
            raise self.expected("KEYSPACE, TYPE or TABLE after CREATE")

    def alter(self) -> None:
        if self.at_word("table", "columnfamily"):
            self.advance()
            self.alter_table()
        elif self.accept_word("type"):
            self.alter_type()
        else:
            raise self.expected("TABLE or TYPE after ALTER")

    # -- types -----------------------------------------------------------------------------------------

    def type_text(self, keyspace: str) -> tuple[str, _Token]:
        """The tokens of a CQL type, as text ``parse_type`` reads, with keyspace qualifiers checked and removed."""
        first = self.peek()
        parts: list[str] = []
        depth = 0
        while True:
            token = self.peek()
            if token.kind == "end" or token.text == ";":
                break
            if depth == 0 and (token.text in (",", ")") or self.at_word("static", "primary")):
                break
            if token.kind in ("word", "quoted") and self.peek(1).text == ".":
                qualifier = self.name("a keyspace name")
                if qualifier != keyspace:
                    raise self.fail(f"type of keyspace {qualifier!r} used in keyspace {keyspace!r}", token)
                self.advance()
                continue
            depth += {"<": 1, ">": -1}.get(token.text, 0) if token.kind == "symbol" else 0
            parts.append(token.text)
            self.advance()
        if not parts:
            raise self.expected("a type")
        return " ".join(parts), first

    def parse_type(self, keyspace: str) -> CqlType:
        text, token = self.type_text(keyspace)
        try:
            return parse_type(text, self.types.get(keyspace, {}))
        except CqlTypeError as error:
            raise self.fail(str(error), token) from error

    def create_type(self) -> None:
        exists = self.accept_if("not", "exists")
        token = self.peek()
        keyspace, name = self.qualified_name("a type name")
        fields = self.type_fields(keyspace)
        self.end_statement()
        known = self.types.setdefault(keyspace, {})
        if name in known:
            if exists:
                return
            raise self.fail(f"type {keyspace}.{name} is already defined", token)
        names = tuple(field_name for field_name, _ in fields)
        known[name] = CqlType("udt", tuple(t.freeze() for _, t in fields), name=name, field_names=names)

    def type_fields(self, keyspace: str) -> list[tuple[str, CqlType]]:
        self.expect_symbol("(")
        fields = [(self.name("a field name"), self.parse_type(keyspace))]
        while self.accept_symbol(","):
            fields.append((self.name("a field name"), self.parse_type(keyspace)))
        self.expect_symbol(")")
        return fields

    def alter_type(self) -> None:
        token = self.peek()
        keyspace, name = self.qualified_name("a type name")
        udt = self.types.get(keyspace, {}).get(name)
        if udt is None:
            raise self.fail(f"ALTER TYPE of unknown type {keyspace}.{name}", token)
        self.expect_word("add")
        field_token = self.peek()
        field = self.name("a field name")
        if field in udt.field_names:
            raise self.fail(f"type {keyspace}.{name} already has a field {field!r}", field_token)
        field_type = self.parse_type(keyspace).freeze()
        self.end_statement()
        altered = replace(udt, args=(*udt.args, field_type), field_names=(*udt.field_names, field))
        self.types[keyspace][name] = altered
        for key, table in self.tables.items():
            if key[0] == keyspace:
                columns = (replace(c, type=substitute_udt(c.type, altered)) for c in table.columns)
                self.tables[key] = replace(table, columns=tuple(columns))

    # -- tables ----------------------------------------------------------------------------------------

    def create_table(self) -> None:
        exists = self.accept_if("not", "exists")
        token = self.peek()
        keyspace, name = self.qualified_name("a table name")
        definition = _TableDefinition(keyspace, name, token)
        self.expect_symbol("(")
        self.table_element(definition)
        while self.accept_symbol(","):
            if self.at_symbol(")"):
                break
            self.table_element(definition)
        self.expect_symbol(")")
        if self.accept_word("with"):
            self.table_option(definition)
            while self.accept_word("and"):
                self.table_option(definition)
        self.end_statement()
        if (keyspace, name) in self.tables:
            if exists:
                return
            raise self.fail(f"table {keyspace}.{name} is already defined", token)
        table = definition.build(self)
        for other in self.tables.values():
            if other.id == table.id:
                raise self.fail(f"table {keyspace}.{name} has the id of {other.qualified_name}: {table.id}", token)
        self.tables[(keyspace, name)] = table

    def table_element(self, definition: _TableDefinition) -> None:
        if self.at_word("primary") and self.at_word("key", ahead=1):
            token = self.advance()
            self.advance()
            definition.set_primary_key(self.primary_key(), token, self)
            return
        token = self.peek()
        column = self.name("a column name")
        column_type = self.parse_type(definition.keyspace)
        static = primary = False
        while self.at_word("static", "primary"):
            if self.accept_word("static"):
                static = True
            else:
                self.advance()
                self.expect_word("key")
                primary = True
        definition.add_column(column, column_type, static, token, self)
        if primary:
            definition.set_primary_key(([column], []), token, self)

    def primary_key(self) -> tuple[list[str], list[str]]:
        self.expect_symbol("(")
        if self.accept_symbol("("):
            partition = [self.name("a column name")]
            while self.accept_symbol(","):
                partition.append(self.name("a column name"))
            self.expect_symbol(")")
        else:
            partition = [self.name("a column name")]
        clustering = []
        while self.accept_symbol(","):
            clustering.append(self.name("a column name"))
        self.expect_symbol(")")
        return partition, clustering

    def table_option(self, definition: _TableDefinition) -> None:
        token = self.peek()
        if self.accept_word("clustering"):
            self.expect_word("order")
            self.expect_word("by")
            self.expect_symbol("(")
            while True:
                column = self.name("a clustering column name")
                descending = self.accept_word("desc")
                if not descending:
                    self.accept_word("asc")
                definition.set_order(column, descending)
                if not self.accept_symbol(","):
                    break
            self.expect_symbol(")")
            return
        if self.at_word("compact"):
            raise self.fail("COMPACT STORAGE tables are not supported (Cassandra 4.0 removed them)", token)
        option = self.name("a table option")
        self.expect_symbol("=")
        value = self.option_value()
        if option == "id":
            try:
                definition.id = uuid.UUID(value.text.strip("'"))
            except ValueError as error:
                raise self.fail(f"table id {value.text} is not a UUID", value) from error
        elif option == "cdc":
            definition.cdc = self.boolean(value)

    def option_value(self) -> _Token:
        """One option value; maps and lists are skipped whole (their contents do not matter here)."""
        token = self.advance()
        if token.kind == "symbol" and token.text in "{[":
            depth = 1
            while depth:
                inner = self.advance()
                if inner.kind == "end":
                    raise self.fail(f"unclosed {token.text!r} opened on line {token.line}", inner)
                if inner.kind == "symbol":
                    depth += {"{": 1, "[": 1, "}": -1, "]": -1}.get(inner.text, 0)
        elif token.kind not in ("word", "quoted", "string", "number", "uuid"):
            raise self.fail(f"expected an option value, found {token.describe()}", token)
        return token

    def boolean(self, token: _Token) -> bool:
        text = token.text.strip("'").lower()
        if text not in ("true", "false"):
            raise self.fail(f"expected true or false, found {token.describe()}", token)
        return text == "true"

    def alter_table(self) -> None:
        token = self.peek()
        keyspace, name = self.qualified_name("a table name")
        table = self.tables.get((keyspace, name))
        if table is None:
            raise self.fail(f"ALTER TABLE of unknown table {keyspace}.{name}", token)
        if self.accept_word("add"):
            table = self.add_columns(table)
        elif self.accept_word("drop"):
            table = self.drop_columns(table)
        elif self.accept_word("with"):
            definition = _TableDefinition(keyspace, name, token, cdc=table.cdc)
            self.table_option(definition)
            while self.accept_word("and"):
                self.table_option(definition)
            if definition.id is not None:
                raise self.fail("a table's id cannot be altered", token)
            table = replace(table, cdc=definition.cdc)
        else:
            raise self.expected("ADD, DROP or WITH after ALTER TABLE")
        self.end_statement()
        self.tables[(keyspace, name)] = table

    def add_columns(self, table: TableSchema) -> TableSchema:
        exists = self.accept_if("not", "exists")
        parenthesised = self.accept_symbol("(")
        columns = list(table.columns)
        while True:
            token = self.peek()
            name = self.name("a column name")
            column_type = self.parse_type(table.keyspace)
            static = self.accept_word("static")
            if static and not table.clustering:
                raise self.fail(f"static column {name!r} in {table.qualified_name}, which has no clustering", token)
            if table.column(name) is not None:
                if not exists:
                    raise self.fail(f"{table.qualified_name} already has a column {name!r}", token)
            else:
                columns.append(Column(name, column_type, "static" if static else "regular"))
            if not self.accept_symbol(","):
                break
        if parenthesised:
            self.expect_symbol(")")
        return replace(table, columns=tuple(columns))

    def drop_columns(self, table: TableSchema) -> TableSchema:
        exists = self.accept_if("exists")
        if self.accept_symbol("("):
            names = [self.located_name("a column name")]
            while self.accept_symbol(","):
                names.append(self.located_name("a column name"))
            self.expect_symbol(")")
        else:
            names = [self.located_name("a column name")]
        dropped_at = _now_micros()
        if self.accept_word("using"):
            self.expect_word("timestamp")
            token = self.advance()
            if token.kind != "number" or not token.text.lstrip("-").isdigit():
                raise self.fail(f"expected a timestamp in microseconds, found {token.describe()}", token)
            dropped_at = int(token.text)
        columns = {c.name: c for c in table.columns}
        dropped = {d.name: d for d in table.dropped}
        for name, token in names:
            column = columns.get(name)
            if column is None:
                if exists:
                    continue
                raise self.fail(f"{table.qualified_name} has no column {name!r} to drop", token)
            if column.kind in ("partition_key", "clustering"):
                raise self.fail(f"{name!r} is part of the primary key of {table.qualified_name}", token)
            del columns[name]
            dropped[name] = DroppedColumn(name, column.type, dropped_at, column.kind)
        return table.with_columns(columns.values(), dropped.values())


class _TableDefinition:
    """A CREATE TABLE being read: its columns, primary key and options, checked as Cassandra checks them."""

    def __init__(self, keyspace: str, name: str, token: _Token, *, cdc: bool = True):
        self.keyspace = keyspace
        self.name = name
        self.token = token
        self.columns: dict[str, tuple[CqlType, bool]] = {}
        self.partition: list[str] = []
        self.clustering: list[str] = []
        self.descending: set[str] = set()
        self.ordered: list[str] = []
        self.id: uuid.UUID | None = None
        # Unlike Cassandra (default false), a table here captures changes unless it says cdc = false: a
        # hand-written file lists the tables to capture, and DESCRIBE output states the flag either way.
        self.cdc = cdc

    @property
    def qualified_name(self) -> str:
        return f"{self.keyspace}.{self.name}"

    def add_column(self, name: str, column_type: CqlType, static: bool, token: _Token, parser: _Parser) -> None:
        if name in self.columns:
            raise parser.fail(f"column {name!r} is defined twice in {self.qualified_name}", token)
        self.columns[name] = (column_type, static)

    def set_primary_key(self, key: tuple[list[str], list[str]], token: _Token, parser: _Parser) -> None:
        if self.partition:
            raise parser.fail(f"{self.qualified_name} has more than one PRIMARY KEY", token)
        self.partition, self.clustering = key

    def set_order(self, column: str, descending: bool) -> None:
        self.ordered.append(column)
        if descending:
            self.descending.add(column)

    def build(self, parser: _Parser) -> TableSchema:
        fail = parser.fail
        if self.id is None:
            raise fail(
                f"table {self.qualified_name} has no WITH ID = <uuid>: the id is needed to match its "
                "mutations in the commit log (take it from system_schema.tables or DESCRIBE … WITH INTERNALS)",
                self.token,
            )
        if not self.partition:
            raise fail(f"table {self.qualified_name} has no PRIMARY KEY", self.token)
        key_names = self.partition + self.clustering
        for name in key_names:
            if name not in self.columns:
                raise fail(f"primary key column {name!r} of {self.qualified_name} is not defined", self.token)
            if key_names.count(name) > 1:
                raise fail(f"column {name!r} appears twice in the primary key of {self.qualified_name}", self.token)
        if self.ordered != self.clustering[: len(self.ordered)]:
            raise fail(
                f"CLUSTERING ORDER BY of {self.qualified_name} must list clustering columns in key order "
                f"({', '.join(self.clustering)})",
                self.token,
            )
        return TableSchema(self.keyspace, self.name, self.id, tuple(self.build_columns(parser)), cdc=self.cdc)

    def build_columns(self, parser: _Parser) -> Iterator[Column]:
        kinds: dict[str, tuple[ColumnKind, int]] = {name: ("partition_key", i) for i, name in enumerate(self.partition)}
        kinds.update({name: ("clustering", i) for i, name in enumerate(self.clustering)})
        for name in self.partition + self.clustering:
            column_type, static = self.columns[name]
            if static or column_type.is_complex:
                what = "static" if static else f"a non-frozen {column_type.kind}"
                raise parser.fail(f"primary key column {name!r} of {self.qualified_name} cannot be {what}", self.token)
            kind, position = kinds[name]
            yield Column(name, column_type, kind, position, name in self.descending)
        for name, (column_type, static) in self.columns.items():
            if name in kinds:
                continue
            if static and not self.clustering:
                raise parser.fail(
                    f"static column {name!r} in {self.qualified_name}, which has no clustering", self.token
                )
            yield Column(name, column_type, "static" if static else "regular")
