"""The PostgreSQL destination: Cassandra tables as current-state views that converge to ``SELECT *``.

Per Cassandra table ``ks.t``, in the schema ``<prefix>ks``:

- ``"t"``: the **current-state view** a data engineer queries. It applies row, range and partition
  deletions and TTL expiry at query time (``now()``, or the ``cdc_assets.now`` setting when set), and
  presents every CQL type as ``pg_types`` documents.
- ``"t__rows"``: one row per clustering row, keyed by partition key and ``_cdc_ck`` (the clustering in
  Cassandra's order, as bytes). Beside each column's value it keeps the cell's write time, expiry and
  tombstone flag (and the CQL bytes for the types whose bytes SQL cannot compute), the row liveness
  (``_cdc_live_ts``/``_cdc_live_exp``) and the row deletion (``_cdc_deleted_at``). Complex columns are
  jsonb maps of elements, each with its own write time (``pg_staging``); counters jsonb maps of their
  leaders' shards (``pg_counters``), summed by the view.
- ``"t__static"``: the same for each partition's static row.
- ``"t__partdel"`` and ``"t__rangedel"``: partition and range deletions (highest timestamp kept), so a
  late older write can never resurrect what they deleted.

Shared bookkeeping lives in ``<prefix>_cdc``: ``loads`` (one row per committed load: its id, table,
first and last source position and change count) and ``columns`` (each column's CQL type, to detect a
change the storage cannot take).

A load is one transaction, sent in pieces of whole partitions (while PostgreSQL merges one, Python prepares
the next): per piece, a binary COPY (``pg_binary``) into a temporary staging table, then one statement of
four data-modifying CTEs, each an ``INSERT … ON CONFLICT DO UPDATE`` that keeps, cell by cell, whichever of
the stored and the staged cell Cassandra would keep (``model.py`` states the rules); then the ``loads``
row. Replays, reorderings and replica duplicates therefore converge; a replay of a
recorded load id is skipped outright.

Schema evolution: a new column is added to storage and view while the flow runs. A dropped column stops
being shown; its data stays (a re-added column shows only cells written after the drop). A column whose
CQL type changed cannot be taken: its changes go to the dead-letter store with the reason (or, without a
store, the load fails with :class:`PermanentDestinationError`), the rest of the batch loads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
import psycopg.adapt
import psycopg.conninfo
import psycopg.errors
import psycopg.types.json
import pyarrow as pa
import pyarrow.compute as pc

from cdc_assets import change_batch as cb
from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.dead_letters import DeadLetter, DeadLetterStore
from cdc_assets.destinations import pg_binary, pg_types
from cdc_assets.destinations import pg_counters as ct
from cdc_assets.destinations import pg_elements as el
from cdc_assets.destinations import pg_staging as st
from cdc_assets.destinations.base import (
    DestinationError,
    LoadResult,
    PermanentDestinationError,
    TransientDestinationError,
    load_boundary,
)
from cdc_assets.destinations.model import canonical_rows, key_component, row_sort_key

log = logging.getLogger(__name__)

MIN_WRITETIME = -(1 << 63)
NOW_SETTING = "cdc_assets.now"
MAX_IDENTIFIER_BYTES = 63
STAGE = "_cdc_stage"
# Changes per piece of a load.
PIECE_CHANGES = 32_768
COPY_CHUNK = 1 << 20
_SUFFIXES = ("__rows", "__static", "__partdel", "__rangedel")

# SQLSTATE classes worth retrying: connection exceptions, transaction rollbacks (serialization failure,
# deadlock), insufficient resources, operator intervention (shutdown, cancel), system errors.
_TRANSIENT_CLASSES = ("08", "40", "53", "57", "58")
_TRANSIENT_STATES = frozenset({"55P03", "55006"})
# Connection failures carry no SQLSTATE; these server messages mean retrying cannot help.
_PERMANENT_CONNECT_MESSAGES = (
    "does not exist",
    "authentication failed",
    "no pg_hba.conf entry",
    "permission denied",
)


def ident(name: str) -> str:
    """A quoted SQL identifier (Cassandra names are used verbatim, whatever their case or characters)."""
    return '"' + name.replace('"', '""') + '"'


def _secrets(dsn: str) -> list[str]:
    """What of a DSN must never reach an error message: its password (URL or key/value form)."""
    try:
        password = psycopg.conninfo.conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:
        return [dsn]
    return [str(password)] if password else []


def translate(error: psycopg.Error) -> DestinationError:
    """A psycopg error as a retryable or permanent destination error."""
    state = error.sqlstate
    if state is None:
        transient = isinstance(error, psycopg.OperationalError | psycopg.InterfaceError) and not any(
            message in str(error) for message in _PERMANENT_CONNECT_MESSAGES
        )
    else:
        transient = state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_STATES
    kind = TransientDestinationError if transient else PermanentDestinationError
    return kind(f"PostgreSQL: {error}".strip())


# --------------------------------------------------------------------------------------------------
# SQL


@dataclass(frozen=True)
class PgTableSql:
    """The SQL of one Cassandra table's storage, current-state view and merge; shared with TimescaleDB."""

    table: TableSchema
    schema: str
    helper: str

    def name(self, suffix: str = "") -> str:
        return f"{ident(self.schema)}.{ident(self.table.name + suffix)}"

    @property
    def view(self) -> str:
        return self.name()

    def _key_list(self, alias: str = "") -> str:
        prefix = f"{alias}." if alias else ""
        return ", ".join(prefix + ident(c.name) for c in self.table.partition_key)

    def _key_match(self, left: str, right: str) -> str:
        return " AND ".join(f"{left}.{ident(c.name)} = {right}.{ident(c.name)}" for c in self.table.partition_key)

    def storage_ddl(self) -> list[str]:
        """Statements creating the storage tables (without value columns) if they do not exist."""
        keys = ", ".join(f"{ident(c.name)} {pg_types.pg_type(c.type)} NOT NULL" for c in self.table.partition_key)
        clustering = "".join(f", {ident(c.name)} {pg_types.pg_type(c.type)}" for c in self.table.clustering)
        key_list = self._key_list()
        liveness = "_cdc_live_ts bigint, _cdc_live_exp bigint, _cdc_deleted_at bigint"
        return [
            f"CREATE SCHEMA IF NOT EXISTS {ident(self.schema)}",
            f"CREATE TABLE IF NOT EXISTS {self.name('__rows')} ({keys}{clustering}, _cdc_ck bytea NOT NULL, "
            # Room on each page lets a merge rewrite a row in place (a HOT update, no index entry).
            f"{liveness}, PRIMARY KEY ({key_list}, _cdc_ck)) WITH (fillfactor = 80)",
            f"CREATE TABLE IF NOT EXISTS {self.name('__static')} ({keys}, {liveness}, PRIMARY KEY ({key_list})) "
            "WITH (fillfactor = 80)",
            f"CREATE TABLE IF NOT EXISTS {self.name('__partdel')} ({keys}, _cdc_deleted_at bigint NOT NULL, "
            f"PRIMARY KEY ({key_list}))",
            f"CREATE TABLE IF NOT EXISTS {self.name('__rangedel')} ({keys}, _cdc_low bytea NOT NULL, "
            "_cdc_high bytea NOT NULL, _cdc_deleted_at bigint NOT NULL, "
            f"PRIMARY KEY ({key_list}, _cdc_low, _cdc_high))",
        ]

    def add_columns_ddl(self, columns: Sequence[Column]) -> list[str]:
        """Statements adding the storage columns of new Cassandra columns."""
        statements = []
        for kind, suffix in (("regular", "__rows"), ("static", "__static")):
            additions = [
                f"ADD COLUMN IF NOT EXISTS {ident(name)} {pg}"
                for column in columns
                if column.kind == kind
                for name, pg in st.cell_columns(column)
            ]
            if additions:
                statements.append(f"ALTER TABLE {self.name(suffix)} " + ", ".join(additions))
        return statements

    # ---- the current-state view

    def view_sql(self) -> str:
        """The current-state view's SELECT: what ``SELECT * FROM ks.t`` returns in Cassandra."""
        table = self.table
        now = f"{ident(self.helper)}.now_seconds()"
        statics = self._visible_sql("__static", table.statics, now, ranges=False)
        rows = self._visible_sql("__rows", table.regulars, now, ranges=True)
        keys = [ident(c.name) for c in table.partition_key]
        clustering = [ident(c.name) for c in table.clustering]
        static_names = [ident(c.name) for c in table.statics]
        regular_names = [ident(c.name) for c in table.regulars]
        row_select = [
            *(f"lr.{k}" for k in keys),
            *(f"lr.{c}" for c in clustering),
            *(f"sv.{s}" for s in static_names),
            *(f"lr.{r}" for r in regular_names),
        ]
        nulls = [f"NULL::{pg_types.pg_type(c.type)} AS {ident(c.name)}" for c in table.clustering]
        static_select = [
            *(f"sv.{k}" for k in keys),
            *nulls,
            *(f"sv.{s}" for s in static_names),
            *(f"NULL::{pg_types.pg_type(c.type)} AS {ident(c.name)}" for c in table.regulars),
        ]
        prelude = "".join(f"{cte},\n" for cte in self._prelude())
        return (
            f"WITH {prelude}sv AS NOT MATERIALIZED ({statics}),\n"
            f"lr AS NOT MATERIALIZED ({rows})\n"
            f"SELECT {', '.join(row_select)} FROM lr LEFT JOIN sv ON {self._key_match('sv', 'lr')}\n"
            f"UNION ALL\n"
            f"SELECT {', '.join(static_select)} FROM sv WHERE sv._cdc_live AND NOT EXISTS "
            f"(SELECT 1 FROM lr WHERE {self._key_match('lr', 'sv')})"
        )

    def _visible_sql(self, suffix: str, columns: Sequence[Column], now: str, *, ranges: bool) -> str:
        """Rows of a storage table with each column's visible value and the row's ``_cdc_live`` flag."""
        table = self.table
        hidden = ["s._cdc_deleted_at", "p._cdc_deleted_at"]
        range_join = ""
        if ranges:
            range_join, range_hidden = self._range_hidden()
            hidden.append(range_hidden)
        checks = []
        values = []
        live = [f"(s._cdc_live_ts > h._cdc_h AND (s._cdc_live_exp IS NULL OR s._cdc_live_exp > {now}))"]
        for index, column in enumerate(columns):
            floor = self._floor(column)
            flag = f"_cdc_l{index}"
            if st.merged_by_parts(column):
                if column.type.is_complex:
                    merged = self._elements_sql(column, floor, now)
                else:
                    merged = ct.value_sql(
                        f"s.{ident(column.name)}", f"s.{ident(st.deleted_at_name(column.name))}", floor
                    )
                checks.append(f"{merged} AS {flag}")
                values.append(f"l.{flag} AS {ident(column.name)}")
                live.append(f"l.{flag} IS NOT NULL")
            else:
                name = ident(column.name)
                checks.append(
                    f"(s.{ident(st.ts_name(column.name))} > {floor} AND s.{ident(st.del_name(column.name))} "
                    f"IS NOT TRUE AND (s.{ident(st.exp_name(column.name))} IS NULL OR "
                    f"s.{ident(st.exp_name(column.name))} > {now})) AS {flag}"
                )
                values.append(f"CASE WHEN l.{flag} THEN s.{name} END AS {name}")
                live.append(f"coalesce(l.{flag}, false)")
        keys = [f"s.{ident(c.name)}" for c in table.partition_key]
        if ranges:
            keys += [f"s.{ident(c.name)}" for c in table.clustering]
        lateral = f" CROSS JOIN LATERAL (SELECT {', '.join(checks)}) l" if checks else ""
        live_sql = " OR ".join(live)
        select = ", ".join([*keys, *values, f"({live_sql}) AS _cdc_live"])
        where = f" WHERE {live_sql}" if ranges else ""
        return (
            f"SELECT {select} FROM {self._source(suffix)} s "
            f"LEFT JOIN {self._source('__partdel')} p ON {self._key_match('p', 's')} {range_join} "
            f"CROSS JOIN LATERAL (SELECT coalesce(greatest({', '.join(hidden)}), {MIN_WRITETIME}) AS _cdc_h) h"
            f"{lateral}{where}"
        )

    def _source(self, suffix: str) -> str:
        """What the view reads a storage table's rows from (the table itself)."""
        return self.name(suffix)

    def _prelude(self) -> list[str]:
        """Common table expressions the view's SELECT starts with (none)."""
        return []

    def _range_hidden(self) -> tuple[str, str]:
        """(a join, an expression): the latest range deletion covering a clustering row ``s``; per row, by
        the range table's primary key."""
        return "", (
            f"(SELECT max(d._cdc_deleted_at) FROM {self._source('__rangedel')} d WHERE {self._key_match('d', 's')} "
            "AND d._cdc_low <= s._cdc_ck AND s._cdc_ck < d._cdc_high)"
        )

    def _floor(self, column: Column) -> str:
        """What hides a column's cells: the row's deletions, and a drop before the column was re-added."""
        dropped = self.table.dropped_column(column.name)
        return "h._cdc_h" if dropped is None else f"greatest(h._cdc_h, {dropped.dropped_at})"

    def _elements_sql(self, column: Column, floor: str, now: str) -> str:
        """The presented value of a complex column: its live elements, in order (None when none live)."""
        cql = column.type
        e = el.sql_fields(cql)
        order = f"ORDER BY {e[el.ORDER]}"
        if cql.kind == "udt":
            aggregate = f"jsonb_object_agg(e.key, {e['json']})"
        elif cql.kind == "map":
            aggregate = f"jsonb_object_agg({e[el.MAP_KEY]}, {e['json']} {order})"
        elif pg_types.pg_type(cql) == "jsonb":
            aggregate = f"jsonb_agg({e['json']} {order})"
        else:
            aggregate = f"array_agg({pg_types.element_sql(cql.args[0], e['text'])} {order})"
        deleted_at = f"s.{ident(st.deleted_at_name(column.name))}"
        return (
            f"(SELECT {aggregate} FROM jsonb_each(s.{ident(column.name)}) e "
            f"WHERE {e[el.TS]} > greatest({floor}, {deleted_at}) AND {e[el.CLASS]} <> {el.TOMBSTONE} "
            f"AND ({e[el.EXP]} IS NULL OR {e[el.EXP]} > {now}))"
        )

    # ---- the merge

    def merge_sql(self, stage: str, columns: Sequence[Column], parts: Sequence[str] = "rspg") -> str:
        """One statement merging the staging table's ``parts`` (kinds present) into the storage tables."""
        key_list = self._key_list()
        clustering = "".join(f", {ident(c.name)}" for c in self.table.clustering)
        row_columns = f"{key_list}{clustering}, _cdc_ck, _cdc_live_ts, _cdc_live_exp, _cdc_deleted_at"
        static_columns = f"{key_list}, _cdc_live_ts, _cdc_live_exp, _cdc_deleted_at"
        deletion = "_cdc_deleted_at = greatest(o._cdc_deleted_at, EXCLUDED._cdc_deleted_at)"
        ranges = f"{key_list}, _cdc_low, _cdc_high, _cdc_deleted_at"
        statements = {
            st.PART_ROW: self._upsert(
                "__rows",
                stage,
                st.PART_ROW,
                row_columns,
                f"{key_list}, _cdc_ck",
                [c for c in columns if c.kind == "regular"],
            ),
            st.PART_STATIC: self._upsert(
                "__static", stage, st.PART_STATIC, static_columns, key_list, [c for c in columns if c.kind == "static"]
            ),
            st.PART_PARTITION: f"INSERT INTO {self.name('__partdel')} AS o ({key_list}, _cdc_deleted_at) "
            f"SELECT {key_list}, _cdc_deleted_at FROM {stage} WHERE _cdc_part = 'p' "
            f"ON CONFLICT ({key_list}) DO UPDATE SET {deletion} WHERE EXCLUDED._cdc_deleted_at > o._cdc_deleted_at",
            st.PART_RANGE: f"INSERT INTO {self.name('__rangedel')} AS o ({ranges}) "
            f"SELECT {ranges} FROM {stage} WHERE _cdc_part = 'g' "
            f"ON CONFLICT ({key_list}, _cdc_low, _cdc_high) DO UPDATE SET {deletion} "
            "WHERE EXCLUDED._cdc_deleted_at > o._cdc_deleted_at",
        }
        chosen = [statements[part] for part in statements if part in parts]
        ctes = ",\n".join(f"m{i} AS ({statement})" for i, statement in enumerate(chosen[:-1]))
        return (f"WITH {ctes}\n" if ctes else "") + chosen[-1]

    def _upsert(
        self, suffix: str, stage: str, part: str, row_columns: str, conflict: str, columns: Sequence[Column]
    ) -> str:
        """An upsert keeping, per cell, what Cassandra keeps; a row nothing new wins in is not rewritten."""
        cells = [name for c in columns for name, _ in st.cell_columns(c)]
        names = row_columns + "".join(f", {ident(name)}" for name in cells)
        live_wins = (
            "(EXCLUDED._cdc_live_ts IS NOT NULL AND (o._cdc_live_ts IS NULL OR "
            "ROW(EXCLUDED._cdc_live_ts, EXCLUDED._cdc_live_exp IS NOT NULL, coalesce(EXCLUDED._cdc_live_exp, 0)) > "
            "ROW(o._cdc_live_ts, o._cdc_live_exp IS NOT NULL, coalesce(o._cdc_live_exp, 0))))"
        )
        deletion_wins = f"EXCLUDED._cdc_deleted_at > coalesce(o._cdc_deleted_at, {MIN_WRITETIME})"
        updates = [
            f"_cdc_live_ts = CASE WHEN {live_wins} THEN EXCLUDED._cdc_live_ts ELSE o._cdc_live_ts END",
            f"_cdc_live_exp = CASE WHEN {live_wins} THEN EXCLUDED._cdc_live_exp ELSE o._cdc_live_exp END",
            "_cdc_deleted_at = greatest(o._cdc_deleted_at, EXCLUDED._cdc_deleted_at)",
        ]
        changed = [live_wins, deletion_wins]
        for column in columns:
            wins = self._cell_wins(column)
            changed.append(wins)
            updates.extend(self._cell_updates(column, wins))
        return (
            f"INSERT INTO {self.name(suffix)} AS o ({names}) SELECT {names} FROM {stage} WHERE _cdc_part = '{part}' "
            f"ON CONFLICT ({conflict}) DO UPDATE SET {', '.join(updates)} WHERE {' OR '.join(changed)}"
        )

    def _cell_wins(self, column: Column) -> str:
        """SQL: whether the staged cell (``EXCLUDED``) beats the stored one (``o``) by Cassandra's rules.

        For a complex column (a counter): whether the staged one brings elements (shards) or a newer collection
        deletion (counter tombstone).
        """
        name = column.name
        if st.merged_by_parts(column):
            deleted_at = ident(st.deleted_at_name(name))
            return (
                f"(EXCLUDED.{ident(name)} IS NOT NULL OR "
                f"EXCLUDED.{deleted_at} > coalesce(o.{deleted_at}, {MIN_WRITETIME}))"
            )
        ts, exp, deleted = ident(st.ts_name(name)), ident(st.exp_name(name)), ident(st.del_name(name))

        def rank(alias: str) -> str:
            rank_class = f"CASE WHEN {alias}.{deleted} THEN 2 WHEN {alias}.{exp} IS NOT NULL THEN 1 ELSE 0 END"
            if st.has_value_bytes(column.type):
                value_bytes = f"{alias}.{ident(st.vb_name(name))}"
            else:
                value_bytes = pg_types.value_bytes_sql(column.type, f"{alias}.{ident(name)}")
            return f"ROW({rank_class}, coalesce({alias}.{exp}, 0), coalesce({value_bytes}, '\\x'::bytea))"

        return (
            f"(EXCLUDED.{ts} IS NOT NULL AND (o.{ts} IS NULL OR EXCLUDED.{ts} > o.{ts} OR "
            f"(EXCLUDED.{ts} = o.{ts} AND {rank('EXCLUDED')} > {rank('o')})))"
        )

    def _cell_updates(self, column: Column, wins: str) -> list[str]:
        """SET clauses keeping, of the stored and the staged cell, the one Cassandra keeps."""
        name = column.name
        if st.merged_by_parts(column):
            deleted_at = ident(st.deleted_at_name(name))
            latest = f"greatest(o.{deleted_at}, EXCLUDED.{deleted_at})"
            if column.type.is_complex:
                merged = f"{ident(self.helper)}.merge_elements(o.{ident(name)}, EXCLUDED.{ident(name)}, {latest})"
            else:
                merged = f"{ident(self.helper)}.merge_shards(o.{ident(name)}, EXCLUDED.{ident(name)})"
            return [f"{ident(name)} = {merged}", f"{deleted_at} = {latest}"]
        return [
            f"{ident(cell)} = CASE WHEN {wins} THEN EXCLUDED.{ident(cell)} ELSE o.{ident(cell)} END"
            for cell, _ in st.cell_columns(column)
        ]


def helper_ddl(helper: str) -> list[str]:
    """The shared bookkeeping schema: the load ledger, the column registry, SQL functions and an aggregate."""
    schema = ident(helper)
    return [
        f"CREATE SCHEMA IF NOT EXISTS {schema}",
        f"CREATE TABLE IF NOT EXISTS {schema}.loads (load_id text PRIMARY KEY, table_name text NOT NULL, "
        "first_segment bigint, first_position integer, last_segment bigint, last_position integer, "
        "changes integer NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now())",
        f"CREATE TABLE IF NOT EXISTS {schema}.columns (schema_name text, table_name text, column_name text, "
        "cql_type text NOT NULL, kind text NOT NULL, PRIMARY KEY (schema_name, table_name, column_name))",
        f"CREATE OR REPLACE FUNCTION {schema}.now_seconds() RETURNS numeric LANGUAGE sql STABLE AS $$ "
        f"SELECT extract(epoch FROM coalesce(nullif(current_setting('{NOW_SETTING}', true), '')::timestamptz, "
        "now())) $$",
        # Element-wise merge of two complex columns (jsonb: element key -> element), dropping what the
        # collection deletion covers.
        f"CREATE OR REPLACE FUNCTION {schema}.merge_elements(old jsonb, new jsonb, deleted_at bigint) "
        "RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$ "
        "SELECT jsonb_object_agg(k, v) FROM (SELECT coalesce(o.key, n.key) AS k, "
        "CASE WHEN n.value IS NULL THEN o.value WHEN o.value IS NULL THEN n.value "
        f"WHEN {el.rank_sql('n.value')} > {el.rank_sql('o.value')} THEN n.value ELSE o.value END AS v "
        "FROM jsonb_each(old) o FULL JOIN jsonb_each(new) n ON o.key = n.key) m "
        "WHERE deleted_at IS NULL OR (v->>0)::bigint > deleted_at $$",
        # The same, as an aggregate over any number of element maps (TimescaleDB's state views).
        f"CREATE OR REPLACE FUNCTION {schema}.merge_elements_step(state jsonb, new jsonb) "
        "RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$ SELECT CASE WHEN state IS NULL THEN new "
        f"WHEN new IS NULL THEN state ELSE {schema}.merge_elements(state, new, NULL) END $$",
        f"CREATE OR REPLACE AGGREGATE {schema}.merge_elements_agg(jsonb) "
        f"(SFUNC = {schema}.merge_elements_step, STYPE = jsonb)",
        *ct.merge_sql(schema),
    ]


# --------------------------------------------------------------------------------------------------
# The destination


class _IntervalLoader(psycopg.adapt.Loader):
    def load(self, data: Any) -> tuple[int, int, int]:
        return pg_types.parse_interval(bytes(data).decode())


class PostgresDestination:
    """Loads change batches into PostgreSQL so each table's current-state view converges to Cassandra's.

    ``schema_prefix`` is put before each keyspace's schema name (and the ``_cdc`` bookkeeping schema), so
    several pipelines or tests can share a database. ``dead_letters`` receives changes the destination
    cannot take; without it such a batch fails with :class:`PermanentDestinationError`. ``piece_changes``:
    how many changes go to PostgreSQL at a time within a load's transaction.
    """

    name = "postgres"

    def __init__(
        self,
        dsn: str,
        schema_prefix: str = "",
        *,
        dead_letters: DeadLetterStore | None = None,
        connect_timeout: int = 10,
        piece_changes: int = PIECE_CHANGES,
    ):
        if piece_changes < 1:
            raise ValueError(f"piece_changes must be at least 1, not {piece_changes}")
        self.piece_changes = piece_changes
        self._dsn = dsn
        self.schema_prefix = schema_prefix
        self.helper = f"{schema_prefix}_cdc"
        self.dead_letters = dead_letters
        self._connect_timeout = connect_timeout
        self._connection: psycopg.Connection | None = None
        self._ensured: dict[tuple[str, str], tuple[TableSchema, dict[str, str]]] = {}
        self._helper_ready = False

    def sql(self, table: TableSchema) -> PgTableSql:
        return PgTableSql(table, self.schema_prefix + table.keyspace, self.helper)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Cursor]:
        """A cursor in a transaction; psycopg errors come out as destination errors."""
        try:
            if self._connection is None or self._connection.closed:
                self._connection = psycopg.connect(self._dsn, connect_timeout=self._connect_timeout)
            with self._connection.transaction(), self._connection.cursor() as cursor:
                yield cursor
        except psycopg.Error as error:
            if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
                self.close()
            raise translate(error) from error

    # ---- schema

    def ensure_table(self, table: TableSchema) -> None:
        """Create or evolve the table's storage and view; a column whose type changed is a permanent error."""
        incompatible = self._ensure(table)
        if incompatible:
            raise PermanentDestinationError("; ".join(incompatible[name] for name in sorted(incompatible)))

    def _ensure(self, table: TableSchema) -> dict[str, str]:
        """Create or evolve storage; returns the columns that cannot be taken, with the reason."""
        sql = self.sql(table)
        cached = self._ensured.get((sql.schema, table.name))
        if cached is not None and cached[0] == table:
            return cached[1]
        _check_names(table, sql.schema)
        with self._transaction() as cursor:
            # Serialize this pipeline's DDL: concurrent CREATE ... IF NOT EXISTS can still collide.
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"cdc_assets:{self.helper}"])
            if not self._helper_ready:
                for statement in helper_ddl(self.helper):
                    cursor.execute(statement)
            for statement in sql.storage_ddl():
                cursor.execute(statement)
            registered = self._registered(cursor, sql)
            incompatible = {
                c.name: _incompatible_reason(table, c, registered[c.name][0])
                for c in table.columns
                if c.name in registered and registered[c.name] != (c.type.cql(), c.kind)
            }
            new = [c for c in table.value_columns if c.name not in registered]
            for statement in sql.add_columns_ddl(new):
                cursor.execute(statement)
            for column in table.columns:
                if column.name not in registered:
                    cursor.execute(
                        f"INSERT INTO {ident(self.helper)}.columns VALUES (%s, %s, %s, %s, %s)",
                        [sql.schema, table.name, column.name, column.type.cql(), column.kind],
                    )
            if incompatible:
                log.warning(
                    "%s: columns %s changed type; their changes go to the dead-letter store and the view is kept",
                    table.qualified_name,
                    sorted(incompatible),
                )
            else:
                self._replace_view(cursor, sql)
        self._helper_ready = True
        self._ensured[(sql.schema, table.name)] = (table, incompatible)
        return incompatible

    def _registered(self, cursor: psycopg.Cursor, sql: PgTableSql) -> dict[str, tuple[str, str]]:
        cursor.execute(
            f"SELECT column_name, cql_type, kind FROM {ident(self.helper)}.columns "
            "WHERE schema_name = %s AND table_name = %s",
            [sql.schema, sql.table.name],
        )
        return {name: (cql, kind) for name, cql, kind in cursor.fetchall()}

    def _replace_view(self, cursor: psycopg.Cursor, sql: PgTableSql) -> None:
        cursor.execute(
            "SELECT array_agg(attname::text ORDER BY attnum) FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
            [sql.view],
        )
        current = cursor.fetchone()[0]  # type: ignore[index]
        wanted = [c.name for c in _presented_columns(sql.table)]
        if current is not None and current != wanted:
            drop_view(cursor, sql.view)
        cursor.execute(f"CREATE OR REPLACE VIEW {sql.view} AS {sql.view_sql()}")

    # ---- loading

    def load(self, table: TableSchema, batch: pa.RecordBatch, *, load_id: str) -> LoadResult:
        """Merge one change batch in one transaction, recording ``load_id`` and the positions it covers.

        The batch goes to PostgreSQL in pieces of whole partitions, each reduced and merged on its own:
        while PostgreSQL merges one piece, this process prepares the next, two cores at work instead of one
        waiting for the other. Any failure comes out as a :class:`DestinationError` (``base.load_boundary``).
        """
        with load_boundary(self.name, table, batch, load_id, secrets=_secrets(self._dsn)):
            return self._load(table, batch, load_id)

    def _load(self, table: TableSchema, batch: pa.RecordBatch, load_id: str) -> LoadResult:
        started = time.perf_counter()
        first, last = positions(batch)
        incompatible = self._ensure(table)
        if self._loaded(load_id):
            log.info("load %s of %s was already committed; skipped", load_id, table.qualified_name)
            return LoadResult(self.name, table.qualified_name, 0, first, last, time.perf_counter() - started)
        columns, rejected = _batch_columns(table, batch, incompatible)
        self._check_rejected(table, rejected)
        with self._transaction() as cursor:
            self._before_pieces(cursor, table, batch)
            with ThreadPoolExecutor(1, thread_name_prefix="cdc-postgres-load") as worker:
                pending: Future[None] | None = None
                for number, (sources, piece) in enumerate(self._pieces(table, batch)):
                    parts = st.flatten(table, piece, columns)
                    for index, reason in parts.rejected.items():
                        rejected.setdefault(int(sources[index]), reason)
                    self._check_rejected(table, rejected)
                    steps = self._prepare(table, piece, columns, parts, number)
                    if pending is not None:
                        pending.result()
                    pending = worker.submit(run_steps, cursor, steps)
                    log.debug(
                        "%s: piece %d (%d changes) handed to PostgreSQL", table.qualified_name, number, len(piece)
                    )
                if pending is not None:
                    pending.result()
            self._after_pieces(cursor, table)
            loaded = batch.num_rows - len(rejected)
            self._record(cursor, table, load_id, first, last, loaded)
            # Before the commit: a failed commit may dead-letter twice on retry, but never loses a change.
            if rejected:
                self._dead_letter(table, batch, rejected)
        return LoadResult(self.name, table.qualified_name, loaded, first, last, time.perf_counter() - started)

    def _check_rejected(self, table: TableSchema, rejected: Mapping[int, str]) -> None:
        """Without a dead-letter store, a change the destination cannot take fails the load."""
        if rejected and self.dead_letters is None:
            index, reason = min(rejected.items())
            raise PermanentDestinationError(f"{table.qualified_name}: change {index} cannot be loaded: {reason}")

    def _loaded(self, load_id: str) -> bool:
        with self._transaction() as cursor:
            cursor.execute(f"SELECT 1 FROM {ident(self.helper)}.loads WHERE load_id = %s", [load_id])
            return cursor.fetchone() is not None

    def _prepare(
        self, table: TableSchema, piece: pa.RecordBatch, columns: Sequence[Column], parts: st.Parts, number: int
    ) -> list[Step]:
        """The statements loading one piece: COPY its reduced parts into a staging table, one merge statement."""
        sql = self.sql(table)
        staging = st.staging_columns(table, columns)
        reduced = st.reduce_parts(parts, columns)
        stage = f"{STAGE}_{number}"
        steps = stage_steps(stage, staging, reduced)
        present = set(reduced.table.column(st.PART).unique().to_pylist())
        if present:
            steps.append(Step(sql.merge_sql(stage, columns, "".join(sorted(present)))))
        return [*steps, drop_stage_step(stage)]

    def _pieces(self, table: TableSchema, batch: pa.RecordBatch) -> Iterator[tuple[np.ndarray, pa.RecordBatch]]:
        """The batch in pieces (with their changes' indices in the batch), each holding whole partitions: all
        changes to a key are reduced together, and a change delivered twice in a batch stays in one piece."""
        return st.partition_pieces(table, batch, self.piece_changes)

    def _before_pieces(self, cursor: psycopg.Cursor, table: TableSchema, batch: pa.RecordBatch) -> None:
        """Work before the first piece, in the load's transaction (nothing for plain PostgreSQL)."""

    def _after_pieces(self, cursor: psycopg.Cursor, table: TableSchema) -> None:
        """Work after every piece is merged, in the load's transaction (nothing for plain PostgreSQL)."""

    def _record(
        self,
        cursor: psycopg.Cursor,
        table: TableSchema,
        load_id: str,
        first: tuple[int, int] | None,
        last: tuple[int, int] | None,
        changes: int,
    ) -> None:
        cursor.execute(
            f"INSERT INTO {ident(self.helper)}.loads (load_id, table_name, first_segment, first_position, "
            "last_segment, last_position, changes) VALUES (%s, %s, %s, %s, %s, %s, %s) "
            # A concurrent load of the same id committed first: both merges converge, keep its record.
            "ON CONFLICT (load_id) DO NOTHING",
            [load_id, table.qualified_name, *(first or (None, None)), *(last or (None, None)), changes],
        )

    def _dead_letter(self, table: TableSchema, batch: pa.RecordBatch, rejected: Mapping[int, str]) -> None:
        assert self.dead_letters is not None
        segments = batch.column(cb.SEGMENT_ID).to_pylist()
        positions = batch.column(cb.POSITION).to_pylist()
        for index, reason in sorted(rejected.items()):
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, batch.schema) as writer:
                writer.write_batch(batch.slice(index, 1))
            self.dead_letters.append(
                DeadLetter(
                    stage=self.name,
                    reason=reason,
                    segment=str(segments[index]),
                    position=positions[index],
                    table=table.qualified_name,
                    payload=sink.getvalue().to_pybytes(),
                )
            )

    # ---- reading

    def current_state(
        self, table: TableSchema, *, now: datetime | None = None, keys: Collection[Sequence[Any]] | None = None
    ) -> list[dict[str, Any]]:
        """The rows of the table's current-state view (at ``now``), in the canonical form of ``model.py``.

        ``keys`` (partition key values in canonical form, in partition key order) keeps only those partitions,
        narrowed in the query itself (an index lookup through the view rather than a scan of the table), for
        the reconciliation of a window.
        """
        self._ensure(table)
        sql = self.sql(table)
        columns = _presented_columns(table)
        where, parameters = ("", []) if keys is None else _partition_filter(table, keys)
        with self._transaction() as cursor:
            cursor.adapters.register_loader("interval", _IntervalLoader)
            psycopg.types.json.set_json_loads(pg_types.json_loads, cursor)
            cursor.execute("SET LOCAL intervalstyle = 'iso_8601'")
            if now is not None:
                cursor.execute("SELECT set_config(%s, %s, true)", [NOW_SETTING, now.isoformat()])
            query = f"SELECT {', '.join(ident(c.name) for c in columns)} FROM {sql.view}"
            if parameters:
                # Quoted names may hold a '%', which psycopg would take for a placeholder.
                query = query.replace("%", "%%")
            cursor.execute(query + where, parameters or None)
            fetched = cursor.fetchall()
        rows = [
            {c.name: pg_types.from_pg(c.type, value) for c, value in zip(columns, row, strict=True)} for row in fetched
        ]
        state = canonical_rows(table, rows)
        if keys is None:
            return state
        wanted = {_partition_bytes(table, values) for values in keys}
        return [row for row in state if row_sort_key(table, row)[0] in wanted]

    def ledger_position(self, tables: Sequence[TableSchema], load_id_prefix: str) -> tuple[int, int] | None:
        """The furthest source position among committed loads whose id starts with ``load_id_prefix``.

        What a pipeline whose own record of positions is gone resumes from (``tables`` is not needed here:
        one ledger holds every table's loads).
        """
        loads = f"{ident(self.helper)}.loads"
        with self._transaction() as cursor:
            cursor.execute("SELECT to_regclass(%s)", [loads])
            if cursor.fetchone()[0] is None:  # type: ignore[index]
                return None
            cursor.execute(
                f"SELECT last_segment, last_position FROM {loads} WHERE starts_with(load_id, %s) "
                "AND last_segment IS NOT NULL ORDER BY last_segment DESC, last_position DESC LIMIT 1",
                [load_id_prefix],
            )
            row = cursor.fetchone()
        return (row[0], row[1]) if row else None

    def loads(self, table: TableSchema) -> list[dict[str, Any]]:
        """The committed loads of a table, oldest first."""
        with self._transaction() as cursor:
            cursor.execute(
                f"SELECT load_id, first_segment, first_position, last_segment, last_position, changes "
                f"FROM {ident(self.helper)}.loads WHERE table_name = %s ORDER BY loaded_at, load_id",
                [table.qualified_name],
            )
            names = [d.name for d in cursor.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


@dataclass(frozen=True)
class Step:
    """One statement of a load; ``payload`` is the data of a ``COPY … FROM STDIN``."""

    sql: str
    payload: memoryview | None = None


def run_steps(cursor: psycopg.Cursor, steps: Sequence[Step]) -> None:
    for step in steps:
        if step.payload is None:
            cursor.execute(step.sql)
            continue
        with cursor.copy(step.sql) as copy:
            for start in range(0, len(step.payload), COPY_CHUNK):
                copy.write(step.payload[start : start + COPY_CHUNK])


def stage_steps(stage: str, staging: Sequence[tuple[str, str]], parts: st.Parts) -> list[Step]:
    """Statements making ``stage`` hold ``parts``: a binary COPY into a temporary table, behind a temporary
    view casting the columns binary COPY does not spell (numeric, inet, interval, arrays: sent as text).

    :func:`drop_stage_step` removes both."""
    names = [name for name, _ in staging]
    table = pa.table({name: parts.table.column(name) for name in names})
    sent = [wire_type(pg, table.column(name)) for name, pg in staging]
    raw = stage + "_raw"
    definition = ", ".join(f"{ident(name)} {pg}" for name, pg in zip(names, sent, strict=True))
    columns = ", ".join(ident(n) for n in names)
    casts = ", ".join(
        ident(name) if pg == wire else f"{ident(name)}::{pg} AS {ident(name)}"
        for (name, pg), wire in zip(staging, sent, strict=True)
    )
    return [
        Step(f"CREATE TEMPORARY TABLE {raw} ({definition}) ON COMMIT DROP"),
        Step(f"COPY {raw} ({columns}) FROM STDIN WITH (FORMAT binary)", pg_binary.binary_copy_payload(table, sent)),
        Step(f"CREATE TEMPORARY VIEW {stage} AS SELECT {casts} FROM {raw}"),
    ]


def wire_type(pg_type: str, values: pa.Array | pa.ChunkedArray) -> str:
    """The type a staged column is sent as: its own, unless binary COPY cannot spell it or it was staged as
    its text form (``pg_staging``; numeric only from plain decimal text), then text."""
    if pg_type not in pg_binary.SUPPORTED_TYPES:
        return "text"
    if pa.types.is_string(values.type) and pg_type not in ("text", "jsonb", "uuid"):
        return "numeric" if pg_type == "numeric" and pg_binary.plain_decimals(values) else "text"
    return pg_type


def drop_view(cursor: psycopg.Cursor, view: str) -> None:
    """Drop a view this destination made, refusing (permanently) when the user built objects on it."""
    try:
        cursor.execute(f"DROP VIEW IF EXISTS {view}")
    except psycopg.errors.DependentObjectsStillExist as error:
        raise PermanentDestinationError(f"cannot change view {view}: other objects depend on it ({error})") from error


def drop_stage_step(stage: str) -> Step:
    return Step(f"DROP TABLE {stage}_raw CASCADE")


def _presented_columns(table: TableSchema) -> tuple[Column, ...]:
    return table.partition_key + table.clustering + table.statics + table.regulars


def _partition_bytes(table: TableSchema, values: Sequence[Any]) -> bytes:
    return b"".join(key_component(c.type, v, False) for c, v in zip(table.partition_key, values, strict=True))


def _partition_filter(table: TableSchema, keys: Collection[Sequence[Any]]) -> tuple[str, list[Any]]:
    """A WHERE clause narrowing the view to ``keys``' partitions, on each scalar partition key column.

    Each column is matched against its own set of values, so a key of several columns selects a superset
    of the partitions (``current_state`` keeps the exact ones); collection and tuple columns are left out.
    """
    if not keys:
        return " WHERE false", []
    clauses, parameters = [], []
    for index, column in enumerate(table.partition_key):
        if not pg_types.is_scalar(column.type):
            continue
        texts = sorted({pg_types.copy_text(column.type, values[index]) for values in keys})
        name = ident(column.name).replace("%", "%%")
        clauses.append(f"{name} = ANY(%s::{pg_types.pg_type(column.type)}[])")
        parameters.append(texts)
    return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), parameters


def _check_names(table: TableSchema, schema: str) -> None:
    """Every generated identifier must fit PostgreSQL's 63 bytes and not collide with a hidden column.

    PostgreSQL truncates a longer name silently: two keyspaces would share a schema, two columns a column.
    """
    if len(schema.encode()) > MAX_IDENTIFIER_BYTES:
        raise PermanentDestinationError(
            f"keyspace {table.keyspace!r}: its schema {schema!r} (the schema prefix and the keyspace) is longer "
            f"than PostgreSQL's {MAX_IDENTIFIER_BYTES} bytes"
        )
    names = {c.name for c in table.columns}
    for suffix in _SUFFIXES:
        if len((table.name + suffix).encode()) > MAX_IDENTIFIER_BYTES:
            raise PermanentDestinationError(
                f"table name {table.qualified_name!r} is too long for PostgreSQL once suffixed with {suffix!r}"
            )
    for column in table.columns:
        if column.name.startswith("_cdc_"):
            raise PermanentDestinationError(f"column {column.name!r}: names starting with _cdc_ are reserved")
        for hidden, _ in st.cell_columns(column)[1:]:
            if hidden in names:
                raise PermanentDestinationError(f"column {hidden!r} collides with a hidden column of {column.name!r}")
            if len(hidden.encode()) > MAX_IDENTIFIER_BYTES:
                raise PermanentDestinationError(f"column name {column.name!r} is too long for PostgreSQL")


def _incompatible_reason(table: TableSchema, column: Column, stored: str) -> str:
    return (
        f"column {table.qualified_name}.{column.name} is now {column.kind} {column.type.cql()} but PostgreSQL "
        f"stores it as {stored}: the destination cannot take the change (drop the destination table, or add "
        "the column under a new name)"
    )


def _batch_columns(
    table: TableSchema, batch: pa.RecordBatch, incompatible: Mapping[str, str]
) -> tuple[list[Column], dict[int, str]]:
    """The batch's value columns the destination takes, and the changes to reject (with the reason)."""
    columns = []
    rejected: dict[int, str] = {}
    for field in batch.schema:
        metadata = field.metadata or {}
        if metadata.get(cb.META_COLUMN_KIND) not in (b"static", b"regular"):
            continue
        column = table.column(field.name)
        reason = None
        if column is None:
            if table.dropped_column(field.name) is not None:
                continue
            reason = f"column {field.name} is not in the schema of {table.qualified_name}"
        elif metadata.get(cb.META_CQL_TYPE, b"").decode() != column.type.cql():
            reason = (
                f"column {field.name} is {metadata.get(cb.META_CQL_TYPE, b'?').decode()} in the batch "
                f"but {column.type.cql()} in the schema of {table.qualified_name}"
            )
        elif column.name in incompatible:
            reason = incompatible[column.name]
        if reason is None and column is not None:
            columns.append(column)
            continue
        touched = pc.is_valid(batch.column(field.name)).to_numpy(zero_copy_only=False)
        for index in touched.nonzero()[0]:
            rejected.setdefault(int(index), reason or "")
    return columns, rejected


def positions(batch: pa.RecordBatch) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """The first and last source position (segment id, position) of a batch's changes."""
    if batch.num_rows == 0:
        return None, None
    segments = batch.column(cb.SEGMENT_ID).to_numpy()
    positions = batch.column(cb.POSITION).to_numpy()
    order = np.lexsort((positions, segments))
    first, last = int(order[0]), int(order[-1])
    return (int(segments[first]), int(positions[first])), (int(segments[last]), int(positions[last]))
