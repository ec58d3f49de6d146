"""Hostile names: whatever Cassandra lets a keyspace, table, column or user-type field be called reaches every
destination intact, and never runs as SQL.

Keyspace and table names are what Cassandra accepts for them (``SchemaConstants.isValidName``: 1-48 word
characters ``[A-Za-z0-9_]``, case kept when quoted, SQL keywords included). Column and field names are any
text a quoted CQL identifier holds: quotes, backticks, backslashes, ``;``, ``--``, ``/*``, spaces, newlines,
combining characters, emoji, SQL keywords, storage suffixes (``__ts``, ``__rows``), names equal but for case
within one table, and long ones. PostgreSQL keeps identifiers of at most 63 bytes and truncates longer ones
silently: a schema (prefix and keyspace), table or column whose name, or whose storage name, would pass that
is refused by ``ensure_table`` with an error naming it, as are column names the storage reserves (``_cdc_…``,
a name equal to another column's hidden ``<name>__ts``); a table of short, unreserved names must be taken.
ClickHouse refuses ``_cdc_…`` column names too (its storage and view name their own columns so), before it
creates anything.

For each destination: a canary table and the catalog are looked at before and after; the table (and its twin
whose name differs only in case) is created and loaded; then its current state equals :class:`CassandraModel`'s,
the catalog shows the view with exactly the Cassandra names, nothing outside the destination's own schemas
appeared, and the canary is still there.
"""

from __future__ import annotations

import itertools
import uuid
from contextlib import closing
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.cassandra_schema.types import CqlType, native, parse_type
from cdc_assets.destinations.base import PermanentDestinationError
from cdc_assets.destinations.clickhouse.destination import ClickHouseDestination
from cdc_assets.destinations.clickhouse.types import quote
from cdc_assets.destinations.postgres.destination import PostgresDestination
from cdc_assets.destinations.timescale.destination import TimescaleDestination
from cdc_assets_tests.convergence import Delivery, assert_converges, deliveries

# Cassandra's longest keyspace or table name (SchemaConstants.NAME_LENGTH) and PostgreSQL's longest
# identifier in bytes (NAMEDATALEN - 1).
CASSANDRA_NAME_LENGTH = 48
POSTGRES_IDENTIFIER_BYTES = 63

_prefixes = itertools.count()

# Pieces an attacker or an unlucky schema would put in a name.
_FRAGMENTS = (
    '"',
    "'",
    "`",
    "\\",
    ";",
    "--",
    "/*",
    "*/",
    " ",
    "\n",
    ".",
    "$1",
    "%s",
    "{k}",
    "é",
    "e\u0301",
    "🙂",
    "日本",
    "select",
    "ORDER",
    "from",
    "user",
    "drop table canary; --",
    "__ts",
    "__rows",
    "_cdc_ck",
    "_cdc_live_until",
)
_KEYWORDS = ("select", "order", "from", "user", "table", "Select", "ORDER", "group", "limit")


# Any character a UTF-8 name holds (no lone surrogates), but NUL, which no PostgreSQL identifier can hold.
_NAME_CHARACTERS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")


def column_names() -> st.SearchStrategy[str]:
    """Column and field names: hostile fragments and arbitrary text joined."""
    piece = st.one_of(st.sampled_from(_FRAGMENTS), st.text(_NAME_CHARACTERS, max_size=3))
    return st.lists(piece, min_size=1, max_size=4).map("".join).filter(bool)


def long_names() -> st.SearchStrategy[str]:
    """Names around PostgreSQL's 63 bytes: of one-, two- or four-byte characters."""
    return st.tuples(st.sampled_from(("x", "é", "🙂", '"')), st.integers(20, 70)).map(lambda pair: pair[0] * pair[1])


def schema_names() -> st.SearchStrategy[str]:
    """Keyspace and table names Cassandra accepts, keywords and its longest among them."""
    word = st.from_regex(rf"[A-Za-z0-9_]{{1,{CASSANDRA_NAME_LENGTH}}}", fullmatch=True)
    longest = st.from_regex(rf"[A-Za-z0-9_]{{{CASSANDRA_NAME_LENGTH}}}", fullmatch=True)
    return st.one_of(st.sampled_from(_KEYWORDS), word, longest)


def _with_case_twin(names: list[str]) -> list[str]:
    """``names`` and, when it differs, the first one with its case swapped: names equal but for case."""
    twin = names[0].swapcase()
    return names if twin in names else [*names, twin]


@st.composite
def hostile_tables(draw: st.DrawFn) -> TableSchema:
    """A table whose every name is hostile: an int partition key, a text clustering column, and regular int,
    text, set, map and non-frozen user-type columns (the user type's field names hostile too)."""
    count = draw(st.integers(3, 7))
    drawn = draw(st.lists(column_names(), min_size=count, max_size=count, unique=True))
    if draw(st.integers(0, 3)) == 0:
        drawn[-1] = draw(long_names().filter(lambda name: name not in drawn))
    names = _with_case_twin(drawn)
    field_names = _with_case_twin(draw(st.lists(column_names(), min_size=1, max_size=2, unique=True)))
    udt = CqlType(
        "udt", tuple(native("int") for _ in field_names), name=draw(column_names()), field_names=tuple(field_names)
    )
    regular_types = [native("int"), native("text"), parse_type("set<int>"), parse_type("map<text, int>"), udt]
    columns = [
        Column(names[0], native("int"), "partition_key", 0),
        Column(names[1], native("text"), "clustering", 0),
        *(Column(name, draw(st.sampled_from(regular_types)), "regular") for name in names[2:]),
    ]
    return TableSchema(draw(schema_names()), draw(schema_names()), uuid.uuid4(), tuple(columns))


def cases() -> st.SearchStrategy[tuple[TableSchema, Delivery]]:
    return hostile_tables().flatmap(lambda table: deliveries(table).map(lambda delivered: (table, delivered)))


def _describe(table: TableSchema) -> None:
    """The names of a falsifying example's table, which its repr leaves out."""
    columns = [(c.name, c.kind, c.type.cql(), c.type.field_names) for c in table.columns]
    note(f"keyspace {table.keyspace!r}, table {table.name!r}, columns {columns!r}")


SETTINGS = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)


def _twin(table: TableSchema) -> TableSchema | None:
    """The table of the same keyspace whose name differs only in case, when its name has letters."""
    name = table.name.swapcase()
    return None if name == table.name else TableSchema(table.keyspace, name, uuid.uuid4(), table.columns)


def _shown_names(destination: PostgresDestination, table: TableSchema) -> list[str]:
    """The names PostgreSQL's catalog must show for ``table``: its schema, its view, the view's columns."""
    return [destination.sql(table).schema, table.name, *(column.name for column in table.columns)]


def _postgres_cannot_hold(destination: PostgresDestination, table: TableSchema) -> bool:
    """Whether a name the view must show is longer than PostgreSQL keeps (it would be truncated)."""
    return any(len(name.encode()) > POSTGRES_IDENTIFIER_BYTES for name in _shown_names(destination, table))


def _postgres_must_hold(destination: PostgresDestination, table: TableSchema) -> bool:
    """Whether every name is short enough to hold with any suffix the storage adds, and unlike its own names
    (``_cdc_…``, ``…__…``): the destination must take such a table, whatever characters its names hold."""
    names = _shown_names(destination, table)
    columns = [column.name for column in table.columns]
    return all(len(name.encode()) <= 40 for name in names) and not any(
        "__" in name or name.startswith("_cdc_") for name in columns
    )


# --- PostgreSQL and TimescaleDB -------------------------------------------------------------------------


def _pg_objects(dsn: str) -> set[tuple[str, str, str]]:
    """Every schema-qualified relation, type and function of the database: (schema, name, kind)."""
    with psycopg.connect(dsn) as connection:
        rows = connection.execute(
            "SELECT n.nspname, c.relname, c.relkind::text FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "UNION ALL SELECT n.nspname, t.typname, 'type' FROM pg_type t "
            "JOIN pg_namespace n ON n.oid = t.typnamespace "
            "UNION ALL SELECT n.nspname, p.proname, 'function' FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace"
        ).fetchall()
    return set(rows)


def _pg_view_columns(dsn: str, schema: str, name: str) -> list[str]:
    with psycopg.connect(dsn) as connection:
        rows = connection.execute(
            "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND c.relkind = 'v' AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum",
            (schema, name),
        ).fetchall()
    return [name for (name,) in rows]


@pytest.fixture(scope="module")
def canary_dsn(module_pg_dsn: str) -> str:
    """The module's database with a canary table in it that no load may touch."""
    with psycopg.connect(module_pg_dsn, autocommit=True) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS canary (n int)")
        connection.execute("INSERT INTO canary VALUES (1)")
    return module_pg_dsn


def _assert_postgres_keeps_the_names(destination: PostgresDestination, dsn: str, case: tuple) -> None:
    """Taken: converges, and the catalog shows the exact names. Refused: with an error naming the culprit, and
    only when a name cannot be held as it is. Either way nothing outside the destination's schemas changes."""
    table, delivered = case
    _describe(table)
    before = _pg_objects(dsn)
    twin = _twin(table)
    try:
        for each in (twin, table):
            if each is not None:
                destination.ensure_table(each)
    except PermanentDestinationError as error:
        event("refused")
        assert not _postgres_must_hold(destination, table), f"refused a table PostgreSQL can hold: {error}"
        names = _shown_names(destination, table)
        assert any(repr(name) in str(error) or name in str(error) for name in names), f"culprit unnamed: {error}"
    else:
        event("taken")
        assert not _postgres_cannot_hold(destination, table), "took a name PostgreSQL truncates"
        assert_converges(destination, table, delivered)
        sql = destination.sql(table)
        assert _pg_view_columns(dsn, sql.schema, table.name) == [c.name for c in table.columns]
        if twin is not None:
            assert destination.current_state(twin) == []
    after = _pg_objects(dsn)
    # TOAST tables belong to the tables that need them.
    outside = {o for o in after - before if not o[0].startswith((destination.schema_prefix, "pg_toast"))}
    assert outside == set(), "objects created outside the destination's schemas"
    assert before - after == set(), "objects dropped"
    with psycopg.connect(dsn) as connection:
        assert connection.execute("SELECT n FROM canary").fetchall() == [(1,)]


# Schema prefixes, a long one too: with a 48-character keyspace, the schema name passes 63 bytes.
PREFIX_PADDING = st.sampled_from(["", "mirror_of_cassandra_"])


@SETTINGS
@given(case=cases(), padding=PREFIX_PADDING)
def test_postgres_keeps_every_hostile_name_and_runs_none(canary_dsn: str, case: tuple, padding: str) -> None:
    with closing(PostgresDestination(canary_dsn, f"h{next(_prefixes)}_{padding}")) as destination:
        _assert_postgres_keeps_the_names(destination, canary_dsn, case)


@settings(SETTINGS, max_examples=8)
@given(case=cases(), padding=PREFIX_PADDING)
def test_timescale_keeps_every_hostile_name_and_runs_none(canary_dsn: str, case: tuple, padding: str) -> None:
    destination = TimescaleDestination(canary_dsn, f"h{next(_prefixes)}_{padding}", allow_plain_postgres=True)
    with closing(destination):
        _assert_postgres_keeps_the_names(destination, canary_dsn, case)


# --- ClickHouse -----------------------------------------------------------------------------------------


def _ch_databases(destination: ClickHouseDestination) -> set[str]:
    return {name for (name,) in destination.client.query("SELECT name FROM system.databases").result_rows}


@SETTINGS
@given(case=cases())
def test_clickhouse_keeps_every_hostile_name_and_runs_none(clickhouse_factory: Any, case: tuple) -> None:
    table, delivered = case
    _describe(table)
    destination = clickhouse_factory(None)
    with closing(destination):
        client = destination.client
        canary = f"{destination.database_prefix}canary"
        client.command(f"CREATE DATABASE {quote(canary)}")
        client.command(f"CREATE TABLE {quote(canary)}.canary (n Int32) ENGINE = MergeTree ORDER BY n")
        client.command(f"INSERT INTO {quote(canary)}.canary VALUES (1)")
        before = _ch_databases(destination)
        twin = _twin(table)
        reserved = [c.name for c in table.columns if c.name.startswith("_cdc_")]
        if reserved:
            event("refused")
            with pytest.raises(PermanentDestinationError, match="reserved") as refused:
                destination.ensure_table(table)
            assert repr(reserved[0]) in str(refused.value)
            assert _ch_databases(destination) == before
            return
        if twin is not None:
            destination.ensure_table(twin)
        assert_converges(destination, table, delivered)
        columns = client.query(
            "SELECT name FROM system.columns WHERE database = {d:String} AND table = {t:String} ORDER BY position",
            parameters={"d": destination.database(table), "t": table.name},
        ).result_rows
        assert [name for (name,) in columns] == [c.name for c in table.columns]
        if twin is not None:
            assert destination.current_state(twin) == []
        created = _ch_databases(destination) - before
        assert {name for name in created if not name.startswith(destination.database_prefix)} == set()
        assert before - _ch_databases(destination) == set(), "databases dropped"
        assert client.query(f"SELECT n FROM {quote(canary)}.canary").result_rows == [(1,)]
