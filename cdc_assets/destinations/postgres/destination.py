"""The PostgreSQL destination: Cassandra tables as current-state views that converge to ``SELECT *``.

Per Cassandra table ``ks.t``, in the schema ``<prefix>ks``:

- ``"t"``: the **current-state view** a data engineer queries: a plain projection of ``t__rows`` (joined
  to ``t__static`` when the table has static columns) whose only work is expiry, decided at read time to
  the second (``now()``, or the ``cdc_assets.now`` setting when set): a row shows while its
  ``_cdc_alive_until`` is ahead of now, a cell while its expiry is. It presents every CQL type as
  ``postgres.types`` documents.
- ``"t__rows"``: the merged current state, one row per clustering row, keyed by partition key and ``_cdc_ck``
  (the clustering in Cassandra's order, as bytes; the primary key's index serves a lookup by partition key).
  Beside each column's value it keeps the cell's write time, expiry and tombstone flag (and the CQL bytes for
  the types whose bytes SQL cannot compute), the row liveness (``_cdc_live_ts``/``_cdc_live_exp``), the
  latest deletion covering the row (``_cdc_deleted_at``: its own, its partition's or a range's) and
  ``_cdc_alive_until``, a generated column: the latest expiry among what keeps the row visible (null: never
  expires; ``DEAD``: nothing does). Complex columns are jsonb maps of elements, each with its own write time
  (``postgres.staging``); counters jsonb maps of their leaders' shards (``postgres.counters``) beside their
  generated sum ``<c>__sum``.
- ``"t__static"``: the same for each partition's static row.
- ``"t__partdel"`` and ``"t__rangedel"``: partition and range deletions (highest timestamp kept).

Deletions are applied when they are merged, not when the view is read: a partition or range deletion nulls
the cells and liveness it covers in the stored rows and raises their ``_cdc_deleted_at``; a staged row is
merged with every stored deletion covering it already applied, so a late older write is dropped at merge and
never resurrects anything; a row nothing keeps alive stays (its deletion must outlive it) with
``_cdc_alive_until`` = ``DEAD``. Expiry cannot move to the merge (``now`` is the reader's, and may be in the
past): the view keeps one predicate per cell and one per row. The price is paid by loads carrying
deletions (one more statement per piece, an update of the rows they cover) and by every merged row (the
generated columns, a look-up of the deletions covering it); what a read costs no longer depends on the
history. A complex column keeps its element map (merges need each element's write time and expiry) and
its presented value with every element it holds (``<c>__shown``), good until its first element expires
(``<c>__shown_until``); the load spells both in Arrow (``postgres.elements.present``) when the merged map is the
staged one, and PostgreSQL computes them otherwise. Only past ``<c>__shown_until`` does the view present the
column from the map, element by element. The view evaluates ``now`` once per query (a sub-select), calls
only ``PARALLEL SAFE`` helper functions, and costs them low so that PostgreSQL neither JIT-compiles it nor
gives up parallel scans. A wider stored row is the other price: ``count(*)`` reads more pages than a plain
table of the same rows (about twice the bytes per row for ``shop.orders``).

Storage written by an earlier version (which merged at read time) carries no layout marker (the comment on
``t__rows``, :data:`LAYOUT_MARKER`): the first ``ensure_table`` migrates it once, in one transaction,
applying the stored deletions to the stored rows and adding the presented columns.

Shared bookkeeping lives in ``<prefix>_cdc``: ``loads`` (one row per committed load: its id, table,
first and last source position and change count) and ``columns`` (each column's CQL type, to detect a
change the storage cannot take).

A load is one transaction, sent in pieces of whole partitions (while PostgreSQL merges one, Python prepares
the next): per piece, a binary COPY (``postgres.binary``) into a temporary staging table, then (when the piece
holds deletions) one statement recording them and applying them to the rows they cover, then one statement
of two ``INSERT … ON CONFLICT DO UPDATE`` (rows, static rows) that keeps, cell by cell, whichever of the
stored and the staged cell Cassandra would keep (``cassandra_model.py`` states the rules); then the ``loads`` row. A
:class:`LoadHook` may add work to each load's transaction (TimescaleDB's history). Replays, reorderings
and replica duplicates therefore converge; a replay of a recorded load id is skipped outright.

Schema evolution: a new column is added to storage and view while the flow runs. A dropped column stops
being shown; its data stays (a re-added column shows only cells written after the drop). A column whose
CQL type changed cannot be taken: its changes go to the dead-letter store with the reason (or, without a
store, the load fails with :class:`PermanentDestinationError`), the rest of the batch loads.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

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
from cdc_assets.cassandra_schema.types import parse_type
from cdc_assets.dead_letters import DeadLetter, DeadLetterStore
from cdc_assets.destinations.base import (
    DestinationError,
    LoadResult,
    PermanentDestinationError,
    TransientDestinationError,
    load_boundary,
)
from cdc_assets.destinations.cassandra_values import canonical_rows, key_component, row_sort_key
from cdc_assets.destinations.postgres import binary as pg_binary
from cdc_assets.destinations.postgres import counters as ct
from cdc_assets.destinations.postgres import elements as el
from cdc_assets.destinations.postgres import staging as st
from cdc_assets.destinations.postgres import types as pg_types

log = logging.getLogger(__name__)

MIN_WRITETIME = -(1 << 63)
# A row's ``_cdc_alive_until`` when nothing keeps it visible; FOREVER stands for "no expiry" while computing it.
DEAD = MIN_WRITETIME
FOREVER = (1 << 63) - 1
ALIVE_UNTIL = "_cdc_alive_until"
# The rows table's comment once it holds the merged state; storage without it applied deletions at read.
LAYOUT_MARKER = "cdc_assets merged state 1"
MIGRATION_STAGE = "_cdc_migration_deletions"
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

    def layout_marker_ddl(self) -> str:
        """The statement marking the rows table as holding the merged state (deletions applied at merge)."""
        return f"COMMENT ON TABLE {self.name('__rows')} IS '{LAYOUT_MARKER}'"

    def migration_sql(self) -> list[str]:
        """Statements turning storage written by versions that applied deletions at read (the same tables,
        without the stored presented values and ``_cdc_alive_until``) into the merged state: each row's own
        deletion, then the recorded partition and range deletions, applied to the rows they cover; then each
        complex column's presented value computed from its elements."""
        keys = self._key_list()
        deletions = (
            f"SELECT 'p'::text AS _cdc_part, {keys}, NULL::bytea AS _cdc_low, NULL::bytea AS _cdc_high, "
            f"_cdc_deleted_at FROM {self.name('__partdel')} UNION ALL SELECT 'g'::text, {keys}, _cdc_low, "
            f"_cdc_high, _cdc_deleted_at FROM {self.name('__rangedel')}"
        )
        statements = [f"CREATE TEMPORARY VIEW {MIGRATION_STAGE} AS {deletions}"]
        for suffix, columns in (("__rows", self.table.regulars), ("__static", self.table.statics)):
            hide = ", ".join(self._hide_sql(columns, "o._cdc_deleted_at"))
            statements.append(f"UPDATE {self.name(suffix)} o SET {hide} WHERE o._cdc_deleted_at IS NOT NULL")
        statements.append(self._deletions_sql(MIGRATION_STAGE, "pg"))
        statements.append(f"DROP VIEW {MIGRATION_STAGE}")
        for suffix, columns in (("__rows", self.table.regulars), ("__static", self.table.statics)):
            complex_columns = [c for c in columns if c.type.is_complex]
            if complex_columns:
                sets = ", ".join(self._presented_assignment(c, f"o.{ident(c.name)}") for c in complex_columns)
                statements.append(f"UPDATE {self.name(suffix)} o SET {sets}")
        return statements

    def add_columns_ddl(self, columns: Sequence[Column]) -> list[str]:
        """Statements adding the storage columns of new Cassandra columns."""
        statements = []
        for kind, suffix in (("regular", "__rows"), ("static", "__static")):
            additions = [
                f"ADD COLUMN IF NOT EXISTS {ident(name)} {pg}"
                for column in columns
                if column.kind == kind
                for name, pg in st.cell_columns(column) + st.presented_columns(column)
            ]
            if additions:
                statements.append(f"ALTER TABLE {self.name(suffix)} " + ", ".join(additions))
        return statements

    def derived_columns(self, suffix: str) -> list[tuple[str, str, str]]:
        """The generated columns of storage table ``suffix`` (``__rows``, ``__static``), as (name, type,
        expression): PostgreSQL computes them whenever a merge writes the row, so a read finds them ready:
        ``_cdc_alive_until`` and each counter's sum. (A complex column's presented value is no generated
        column: a load spells it for the rows it brings, ``postgres.elements.present``, and the merge computes it
        only for the rows it merges with stored ones, :meth:`_presented_assignment`.)"""
        columns = self.table.regulars if suffix == "__rows" else self.table.statics
        derived = [(ALIVE_UNTIL, "bigint", self.alive_until_sql(columns))]
        for column in columns:
            if column.type.kind == "counter":
                derived.append((st.sum_name(column.name), "bigint", self._counter_value(column)))
        return derived

    def _presented_assignment(self, column: Column, elements: str) -> str:
        """A SET clause giving a complex column ``elements`` (SQL over the row being written) and the
        presented value and first expiry computed from them, the elements computed once."""
        name = ident(column.name)
        targets = f"{name}, {ident(st.shown_name(column.name))}, {ident(st.shown_until_name(column.name))}"
        computed = f"m, {self.shown_sql(column, 'm')}, {self.shown_until_sql('m')}"
        return f"({targets}) = (SELECT {computed} FROM (SELECT {elements} AS m OFFSET 0) x)"

    def shown_sql(self, column: Column, elements: str) -> str:
        """SQL of a complex column's presented value, every element held included, from its element map."""
        return f"{ident(self.helper)}.{ident(self._present_function(column)[0])}({elements}, NULL)"

    def shown_until_sql(self, elements: str) -> str:
        """SQL of a complex column's first element expiry (null: none expires), from its element map."""
        first_expiry = f"{ident(self.helper)}.elements_first_expiry({elements})"
        return f"CASE WHEN jsonb_path_exists({elements}, '{_EXPIRING_PATH}') THEN {first_expiry} END"

    def functions_ddl(self) -> list[str]:
        """Statements creating the functions presenting each complex column's elements (at a moment, or
        every element held), one function per body (named by its digest, so columns of one type share it).

        Declared cheap (``COST 1``): the view calls one only for a row whose stored presented value has
        expired, rare, but PostgreSQL would otherwise cost it for every row, and a scan's estimate would
        pass ``jit_above_cost``: compiling the plan took 300 ms of a 500 ms scan of 640,000 rows."""
        statements = []
        for column in self.table.value_columns:
            if column.type.is_complex:
                name, body = self._present_function(column)
                statements.append(
                    f"CREATE OR REPLACE FUNCTION {ident(self.helper)}.{ident(name)}(elements jsonb, now bigint) "
                    f"RETURNS {pg_types.pg_type(column.type)} LANGUAGE sql IMMUTABLE PARALLEL SAFE COST 1 "
                    f"AS $$ {body} $$"
                )
        return statements

    def _present_function(self, column: Column) -> tuple[str, str]:
        """(name, body) of the function presenting a complex column's elements that live at ``now`` (seconds;
        null: every element held, expiring ones included)."""
        e = el.sql_fields(column.type)
        body = (
            f"SELECT {self._aggregate(column)} FROM jsonb_each(elements) e "
            f"WHERE {e[el.TS]} > {self.dropped_at(column)} AND {e[el.CLASS]} <> {el.TOMBSTONE} "
            f"AND (now IS NULL OR {e[el.EXP]} IS NULL OR {e[el.EXP]} > now)"
        )
        digest = hashlib.sha256(f"{pg_types.pg_type(column.type)} {body}".encode()).hexdigest()[:20]
        return f"present_{digest}", body

    def alive_until_sql(self, columns: Sequence[Column]) -> str:
        """SQL (over one storage row) of the row's ``_cdc_alive_until``: until when (seconds since the epoch)
        something keeps it visible, the latest expiry of its liveness and live cells; null when one never
        expires, ``DEAD`` when nothing is left. Deletions are already applied to the row, so only expiry is
        left for the read to decide."""
        forever = ["_cdc_live_ts IS NOT NULL AND _cdc_live_exp IS NULL"]
        items = [f"CASE WHEN _cdc_live_ts IS NOT NULL THEN _cdc_live_exp ELSE {DEAD} END"]
        for column in columns:
            name, dropped = ident(column.name), self.dropped_at(column)
            if column.type.kind == "counter":
                forever.append(f"{self._counter_value(column)} IS NOT NULL")
            elif column.type.is_complex:
                # Most rows have an element that never expires: found by a path query, without the function.
                live = "@.size() < 2 || !(@[1] == " + f"{el.EXPIRING} || @[1] == {el.TOMBSTONE})"
                path = f"strict $.* ? ({live}) ? (@[0] > {dropped})"
                forever.append(f"jsonb_path_exists({name}, '{path}')")
                items.append(f"{ident(self.helper)}.elements_alive_until({name}, {dropped})")
            else:
                present = (
                    f"{ident(st.ts_name(column.name))} > {dropped} AND {ident(st.del_name(column.name))} IS NOT TRUE"
                )
                expires = ident(st.exp_name(column.name))
                forever.append(f"{present} AND {expires} IS NULL")
                items.append(f"CASE WHEN {present} THEN {expires} ELSE {DEAD} END")
        return f"CASE WHEN {' OR '.join(f'({f})' for f in forever)} THEN NULL ELSE greatest({', '.join(items)}) END"

    def _counter_value(self, column: Column) -> str:
        """SQL (over one storage row) of a counter's presented value: its shards no deletion hides, summed."""
        floor = f"greatest(_cdc_deleted_at, {self.dropped_at(column)})"
        deleted_at = ident(st.deleted_at_name(column.name))
        return f"{ident(self.helper)}.counter_value({ident(column.name)}, {deleted_at}, {floor})"

    def dropped_at(self, column: Column) -> int:
        """Cells written before the column was last dropped stay hidden once it is re-added."""
        dropped = self.table.dropped_column(column.name)
        return MIN_WRITETIME if dropped is None else dropped.dropped_at

    def forget_sql(self, cutoff: int) -> list[str]:
        """Statements removing the rows, static rows and deletions that nothing written since ``cutoff`` (µs)
        touched: what a retention lets go."""
        statements = []
        for suffix, columns in (("__rows", self.table.regulars), ("__static", self.table.statics)):
            times = ["_cdc_live_ts", "_cdc_deleted_at"]
            for column in columns:
                if st.merged_by_parts(column):
                    field = 0 if column.type.is_complex else 2
                    times += [
                        ident(st.deleted_at_name(column.name)),
                        f"{ident(self.helper)}.latest_write({ident(column.name)}, {field})",
                    ]
                else:
                    times.append(ident(st.ts_name(column.name)))
            latest = f"coalesce(greatest({', '.join(times)}), {MIN_WRITETIME})"
            statements.append(f"DELETE FROM {self.name(suffix)} WHERE {latest} < {cutoff}")
        statements += [
            f"DELETE FROM {self.name(s)} WHERE _cdc_deleted_at < {cutoff}" for s in ("__partdel", "__rangedel")
        ]
        return statements

    # ---- the current-state view

    def view_sql(self) -> str:
        """The current-state view's SELECT: what ``SELECT * FROM ks.t`` returns in Cassandra.

        Deletions are applied by the merge, so the view only decides expiry: a row shows while its
        ``_cdc_alive_until`` is ahead of now, a cell while its expiry is. Now is taken in whole seconds (an
        expiry is whole seconds: later than now is later than its floor) by a sub-select, which PostgreSQL
        evaluates once per query (an InitPlan, handed to parallel workers) rather than once per row and cell.
        """
        table = self.table
        now = f"(SELECT floor({ident(self.helper)}.now_seconds())::bigint)"
        keys = [ident(c.name) for c in table.partition_key]
        clustering = [ident(c.name) for c in table.clustering]
        regulars = [f"{self._presented('s', c, now)} AS {ident(c.name)}" for c in table.regulars]
        statics = [f"{self._presented('sv', c, now)} AS {ident(c.name)}" for c in table.statics]
        rows = f"{self.name('__rows')} s"
        if not table.statics:
            select = [*(f"s.{k}" for k in keys), *(f"s.{c}" for c in clustering), *regulars]
            return f"SELECT {', '.join(select)} FROM {rows} WHERE {_alive('s', now)}"
        row_select = [*(f"s.{k}" for k in keys), *(f"s.{c}" for c in clustering), *statics, *regulars]
        static_select = [
            *(f"sv.{k}" for k in keys),
            *(f"NULL::{pg_types.pg_type(c.type)} AS {ident(c.name)}" for c in table.clustering),
            *statics,
            *(f"NULL::{pg_types.pg_type(c.type)} AS {ident(c.name)}" for c in table.regulars),
        ]
        static_rows = f"{self.name('__static')} sv"
        return (
            f"SELECT {', '.join(row_select)} FROM {rows} LEFT JOIN {static_rows} ON {self._key_match('sv', 's')} "
            f"WHERE {_alive('s', now)}\n"
            f"UNION ALL\n"
            f"SELECT {', '.join(static_select)} FROM {static_rows} WHERE {_alive('sv', now)} AND NOT EXISTS "
            f"(SELECT 1 FROM {rows} WHERE {self._key_match('s', 'sv')} AND {_alive('s', now)})"
        )

    def _presented(self, alias: str, column: Column, now: str) -> str:
        """A column's presented value in storage row ``alias``: the cell unless it has expired."""
        name = ident(column.name)
        if column.type.kind == "counter":
            return f"{alias}.{ident(st.sum_name(column.name))}"
        if column.type.is_complex:
            until = f"{alias}.{ident(st.shown_until_name(column.name))}"
            shown = f"{alias}.{ident(st.shown_name(column.name))}"
            function = f"{ident(self.helper)}.{ident(self._present_function(column)[0])}"
            elements = f"{function}({alias}.{ident(column.name)}, {now})"
            return f"CASE WHEN {until} IS NULL OR {until} > {now} THEN {shown} ELSE {elements} END"
        exp = f"{alias}.{ident(st.exp_name(column.name))}"
        visible = f"({exp} IS NULL OR {exp} > {now})"
        dropped = self.table.dropped_column(column.name)
        if dropped is not None:
            visible = f"{alias}.{ident(st.ts_name(column.name))} > {dropped.dropped_at} AND {visible}"
        return f"CASE WHEN {visible} THEN {alias}.{name} END"

    def _aggregate(self, column: Column) -> str:
        """The aggregate presenting a complex column's elements (rows ``e`` of ``jsonb_each``), in order."""
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
        return aggregate

    # ---- the merge

    def merge_sql(self, stage: str, columns: Sequence[Column], parts: Sequence[str] = "rspg") -> list[str]:
        """The statements merging the staging table's ``parts`` (kinds present) into the storage tables:
        first the deletions (recorded, and applied to the rows they cover), then the rows, each hidden by
        every deletion that covers it (so a late older write never comes back)."""
        statements = []
        if st.PART_PARTITION in parts or st.PART_RANGE in parts:
            statements.append(self._deletions_sql(stage, parts))
        upserts = []
        if st.PART_ROW in parts:
            upserts.append(self._upsert("__rows", stage, st.PART_ROW, [c for c in columns if c.kind == "regular"]))
        if st.PART_STATIC in parts:
            upserts.append(self._upsert("__static", stage, st.PART_STATIC, [c for c in columns if c.kind == "static"]))
        if upserts:
            statements.append(_one_statement(upserts))
        return statements

    def _deletions_sql(self, stage: str, parts: Sequence[str]) -> str:
        """One statement recording a piece's partition and range deletions and applying them to the stored
        rows (and static rows) they cover."""
        key_list = self._key_list()
        deletion = "_cdc_deleted_at = greatest(o._cdc_deleted_at, EXCLUDED._cdc_deleted_at)"
        ranges = f"{key_list}, _cdc_low, _cdc_high, _cdc_deleted_at"
        statements = []
        if st.PART_PARTITION in parts:
            statements.append(
                f"INSERT INTO {self.name('__partdel')} AS o ({key_list}, _cdc_deleted_at) "
                f"SELECT {key_list}, _cdc_deleted_at FROM {stage} WHERE _cdc_part = 'p' ON CONFLICT ({key_list}) "
                f"DO UPDATE SET {deletion} WHERE EXCLUDED._cdc_deleted_at > o._cdc_deleted_at"
            )
        if st.PART_RANGE in parts:
            statements.append(
                f"INSERT INTO {self.name('__rangedel')} AS o ({ranges}) SELECT {ranges} FROM {stage} "
                f"WHERE _cdc_part = 'g' ON CONFLICT ({key_list}, _cdc_low, _cdc_high) DO UPDATE SET {deletion} "
                "WHERE EXCLUDED._cdc_deleted_at > o._cdc_deleted_at"
            )
        keys = ", ".join(f"r.{ident(c.name)}" for c in self.table.partition_key)
        covered = (
            f"SELECT {keys}, r._cdc_ck, max(g._cdc_deleted_at) AS _cdc_f FROM {self.name('__rows')} r "
            f"JOIN {stage} g ON {self._key_match('g', 'r')} WHERE g._cdc_part = 'p' OR (g._cdc_part = 'g' "
            f"AND g._cdc_low <= r._cdc_ck AND r._cdc_ck < g._cdc_high) GROUP BY {keys}, r._cdc_ck"
        )
        statements.append(
            f"UPDATE {self.name('__rows')} o SET {', '.join(self._hide_sql(self.table.regulars, 'x._cdc_f'))} "
            f"FROM ({covered}) x WHERE {self._key_match('o', 'x')} AND o._cdc_ck = x._cdc_ck "
            f"AND x._cdc_f > coalesce(o._cdc_deleted_at, {MIN_WRITETIME})"
        )
        if st.PART_PARTITION in parts and self.table.statics:
            hidden = self._hide_sql(self.table.statics, "g._cdc_deleted_at")
            statements.append(
                f"UPDATE {self.name('__static')} o SET {', '.join(hidden)} "
                f"FROM {stage} g WHERE g._cdc_part = 'p' AND {self._key_match('o', 'g')} "
                f"AND g._cdc_deleted_at > coalesce(o._cdc_deleted_at, {MIN_WRITETIME})"
            )
        return _one_statement(statements)

    def _hide_sql(self, columns: Sequence[Column], floor: str) -> list[str]:
        """SET clauses applying a deletion at ``floor`` to a stored row ``o``: what it covers is removed, the
        deletion kept in ``_cdc_deleted_at`` (a counter keeps its shards: its presented sum hides them)."""
        sets = [
            f"_cdc_deleted_at = greatest(o._cdc_deleted_at, {floor})",
            f"_cdc_live_ts = CASE WHEN o._cdc_live_ts > {floor} THEN o._cdc_live_ts END",
            f"_cdc_live_exp = CASE WHEN o._cdc_live_ts > {floor} THEN o._cdc_live_exp END",
        ]
        for column in columns:
            name = ident(column.name)
            if column.type.is_complex:
                sets.append(
                    self._presented_assignment(column, f"{ident(self.helper)}.merge_elements(o.{name}, NULL, {floor})")
                )
            elif column.type.kind != "counter":
                ts = ident(st.ts_name(column.name))
                sets += [
                    f"{ident(cell)} = CASE WHEN o.{ts} > {floor} THEN o.{ident(cell)} END"
                    for cell, _ in st.cell_columns(column)
                ]
        return sets

    def _staged_sql(self, stage: str, part: str, names: Sequence[str], columns: Sequence[Column]) -> str:
        """The staged rows of one kind, each with what the stored deletions (and its own) hide removed, and
        every deletion that covers it in ``_cdc_deleted_at``.

        The load already removed what a row's own deletion hides and spelt its complex columns' presented
        values (``postgres.staging.reduce_parts``); only a row a stored deletion covers has its elements merged and
        presented here (in sub-selects: a function call costs each row even where it does not apply)."""
        stored = ["p._cdc_deleted_at"]
        if part == st.PART_ROW:
            stored.append(
                f"(SELECT max(d._cdc_deleted_at) FROM {self.name('__rangedel')} d WHERE {self._key_match('d', 's')} "
                "AND d._cdc_low <= s._cdc_ck AND s._cdc_ck < d._cdc_high)"
            )
        replaced = {
            "_cdc_deleted_at": f"nullif(h._cdc_f, {MIN_WRITETIME})",
            "_cdc_live_ts": "CASE WHEN s._cdc_live_ts > h._cdc_f THEN s._cdc_live_ts END",
            "_cdc_live_exp": "CASE WHEN s._cdc_live_ts > h._cdc_f THEN s._cdc_live_exp END",
        }
        covered = f"h._cdc_stored > {MIN_WRITETIME}"
        for column in columns:
            name = ident(column.name)
            if column.type.is_complex:
                merged = f"{ident(self.helper)}.merge_elements(NULL, s.{name}, h._cdc_f)"
                replaced[name] = f"CASE WHEN {covered} THEN (SELECT {merged}) ELSE s.{name} END"
                shown, until = ident(st.shown_name(column.name)), ident(st.shown_until_name(column.name))
                computed = f"{covered} OR s.{ident(st.spelt_name(column.name))} IS NOT TRUE"
                elements = f"CASE WHEN {covered} THEN {merged} ELSE s.{name} END"
                replaced[shown] = (
                    f"CASE WHEN {computed} THEN (SELECT {self.shown_sql(column, elements)}) ELSE s.{shown} END"
                )
                until_sql = self.shown_until_sql(elements)
                replaced[until] = f"CASE WHEN {computed} THEN (SELECT {until_sql}) ELSE s.{until} END"
            elif column.type.kind != "counter":
                ts = ident(st.ts_name(column.name))
                for cell, _ in st.cell_columns(column):
                    replaced[ident(cell)] = f"CASE WHEN s.{ts} > h._cdc_f THEN s.{ident(cell)} END"
        select = ", ".join(replaced.get(n, f"s.{n}") for n in names)
        stored_floor = f"coalesce(greatest({', '.join(stored)}), {MIN_WRITETIME})"
        floor = "greatest(s._cdc_deleted_at, x._cdc_stored)"
        return (
            f"SELECT {select} FROM {stage} s LEFT JOIN {self.name('__partdel')} p ON {self._key_match('p', 's')} "
            # OFFSET 0 keeps the floors one computation per row, not one per cell that refers to them.
            f"CROSS JOIN LATERAL (SELECT {floor} AS _cdc_f, x._cdc_stored FROM (SELECT {stored_floor} AS _cdc_stored "
            f"OFFSET 0) x OFFSET 0) h WHERE s._cdc_part = '{part}'"
        )

    def _upsert(self, suffix: str, stage: str, part: str, columns: Sequence[Column]) -> str:
        """An upsert keeping, per cell, what Cassandra keeps; a row nothing new wins in is not rewritten.

        Both sides come with their deletions applied (``_staged_sql``, ``_deletions_sql``), so a cell is kept
        only when it wins and the other side's deletions do not cover it either.
        """
        keys = [ident(c.name) for c in self.table.partition_key]
        conflict = ", ".join([*keys, "_cdc_ck"] if part == st.PART_ROW else keys)
        if part == st.PART_ROW:
            keys += [ident(c.name) for c in self.table.clustering] + ["_cdc_ck"]
        names = [*keys, "_cdc_live_ts", "_cdc_live_exp", "_cdc_deleted_at"]
        names += [ident(name) for c in columns for name, _ in st.cell_columns(c) + st.presented_columns(c)]
        live_wins = (
            "(EXCLUDED._cdc_live_ts IS NOT NULL AND (o._cdc_live_ts IS NULL OR "
            "ROW(EXCLUDED._cdc_live_ts, EXCLUDED._cdc_live_exp IS NOT NULL, coalesce(EXCLUDED._cdc_live_exp, 0)) > "
            "ROW(o._cdc_live_ts, o._cdc_live_exp IS NOT NULL, coalesce(o._cdc_live_exp, 0))))"
        )
        deletion_wins = f"EXCLUDED._cdc_deleted_at > coalesce(o._cdc_deleted_at, {MIN_WRITETIME})"
        updates = [
            *_kept("_cdc_live_ts", ["_cdc_live_ts", "_cdc_live_exp"], live_wins),
            "_cdc_deleted_at = greatest(o._cdc_deleted_at, EXCLUDED._cdc_deleted_at)",
        ]
        changed = [live_wins, deletion_wins]
        for column in columns:
            wins = self._cell_wins(column)
            changed.append(wins)
            updates.extend(self._cell_updates(column, wins))
        listed = ", ".join(names)
        return (
            f"INSERT INTO {self.name(suffix)} AS o ({listed}) {self._staged_sql(stage, part, names, columns)} "
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
                floor = f"greatest({latest}, o._cdc_deleted_at, EXCLUDED._cdc_deleted_at)"
                merged = f"{ident(self.helper)}.merge_elements(o.{ident(name)}, EXCLUDED.{ident(name)}, {floor})"
                return [self._presented_assignment(column, merged), f"{deleted_at} = {latest}"]
            merged = f"{ident(self.helper)}.merge_shards(o.{ident(name)}, EXCLUDED.{ident(name)})"
            return [f"{ident(name)} = {merged}", f"{deleted_at} = {latest}"]
        return _kept(ident(st.ts_name(name)), [ident(cell) for cell, _ in st.cell_columns(column)], wins)


# Whether a complex column holds an element that expires (jsonb path over its element map).
_EXPIRING_PATH = f"strict $.* ? (@.size() > 1 && @[1] == {el.EXPIRING})"


def _kept(ts: str, cells: Sequence[str], wins: str) -> list[str]:
    """SET clauses keeping the staged cell (``EXCLUDED``, stamped ``ts``) when it wins, else the stored one
    (``o``), either only when the other side's deletions do not cover it."""
    new = f"{wins} AND EXCLUDED.{ts} > coalesce(o._cdc_deleted_at, {MIN_WRITETIME})"
    old = f"{wins} IS NOT TRUE AND o.{ts} > coalesce(EXCLUDED._cdc_deleted_at, {MIN_WRITETIME})"
    return [f"{cell} = CASE WHEN {new} THEN EXCLUDED.{cell} WHEN {old} THEN o.{cell} END" for cell in cells]


def _alive(alias: str, now: str) -> str:
    """Whether a storage row is visible now: something in it has not expired."""
    return f"({alias}._cdc_alive_until IS NULL OR {alias}._cdc_alive_until > {now})"


def _one_statement(statements: Sequence[str]) -> str:
    """Statements on different rows as one (data-modifying CTEs, then the last)."""
    ctes = ",\n".join(f"m{i} AS ({statement})" for i, statement in enumerate(statements[:-1]))
    return (f"WITH {ctes}\n" if ctes else "") + statements[-1]


def helper_ddl(helper: str) -> list[str]:
    """The shared bookkeeping schema: the load ledger, the column registry and SQL functions."""
    schema = ident(helper)
    fields = el.sql_fields(parse_type("list<int>"))
    return [
        f"CREATE SCHEMA IF NOT EXISTS {schema}",
        f"CREATE TABLE IF NOT EXISTS {schema}.loads (load_id text PRIMARY KEY, table_name text NOT NULL, "
        "first_segment bigint, first_position integer, last_segment bigint, last_position integer, "
        "changes integer NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now())",
        f"CREATE TABLE IF NOT EXISTS {schema}.columns (schema_name text, table_name text, column_name text, "
        "cql_type text NOT NULL, kind text NOT NULL, PRIMARY KEY (schema_name, table_name, column_name))",
        f"CREATE OR REPLACE FUNCTION {schema}.now_seconds() RETURNS numeric LANGUAGE sql STABLE PARALLEL SAFE AS $$ "
        f"SELECT extract(epoch FROM coalesce(nullif(current_setting('{NOW_SETTING}', true), '')::timestamptz, "
        "now())) $$",
        # Element-wise merge of two complex columns (jsonb: element key -> element), dropping what the
        # collection deletion covers.
        f"CREATE OR REPLACE FUNCTION {schema}.merge_elements(old jsonb, new jsonb, deleted_at bigint) "
        "RETURNS jsonb LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ "
        "SELECT jsonb_object_agg(k, v) FROM (SELECT coalesce(o.key, n.key) AS k, "
        "CASE WHEN n.value IS NULL THEN o.value WHEN o.value IS NULL THEN n.value "
        f"WHEN {el.rank_sql('n.value')} > {el.rank_sql('o.value')} THEN n.value ELSE o.value END AS v "
        "FROM jsonb_each(old) o FULL JOIN jsonb_each(new) n ON o.key = n.key) m "
        "WHERE deleted_at IS NULL OR (v->>0)::bigint > deleted_at $$",
        # Until when a complex column keeps its row visible (FOREVER: an element without expiry; DEAD: none).
        f"CREATE OR REPLACE FUNCTION {schema}.elements_alive_until(elements jsonb, floor bigint) "
        f"RETURNS bigint LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT "
        f"coalesce(max(coalesce({fields[el.EXP]}, {FOREVER})), {DEAD}) FROM jsonb_each(elements) e "
        f"WHERE {fields[el.TS]} > floor AND {fields[el.CLASS]} <> {el.TOMBSTONE} $$",
        f"CREATE OR REPLACE FUNCTION {schema}.elements_first_expiry(elements jsonb) RETURNS bigint LANGUAGE sql "
        f"IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT min({fields[el.EXP]}) FROM jsonb_each(elements) e "
        f"WHERE {fields[el.CLASS]} = {el.EXPIRING} $$",
        # The latest write time among a complex column's elements (field 0) or a counter's shards (field 2).
        f"CREATE OR REPLACE FUNCTION {schema}.latest_write(parts jsonb, field int) RETURNS bigint LANGUAGE sql "
        "IMMUTABLE PARALLEL SAFE AS $$ SELECT max((value->>field)::bigint) FROM jsonb_each(parts) $$",
        *ct.merge_sql(schema),
        f"CREATE OR REPLACE FUNCTION {schema}.counter_value(shards jsonb, tombstone bigint, floor bigint) "
        f"RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT "
        f"{ct.value_sql('shards', 'tombstone', f'coalesce(floor, {MIN_WRITETIME})')} $$",
    ]


# --------------------------------------------------------------------------------------------------
# The destination


class LoadHook(Protocol):
    """More work in each load's transaction, beside the merge into the current state (TimescaleDB appends
    every change to its history). The destination calls it; it never reaches into the destination."""

    def ensure(self, cursor: psycopg.Cursor, sql: PgTableSql, columns: Sequence[Column]) -> None:
        """Create or widen what the hook keeps for the table (``columns``: its value columns)."""

    def before_pieces(self, cursor: psycopg.Cursor, table: TableSchema, batch: pa.RecordBatch) -> None:
        """Work before the load's first piece."""

    def piece_steps(
        self, sql: PgTableSql, piece: pa.RecordBatch, columns: Sequence[Column], parts: st.Parts, number: int
    ) -> list[Step]:
        """Statements for one piece (``parts``: its change parts, not reduced), run after its merge."""

    def after_pieces(self, cursor: psycopg.Cursor, sql: PgTableSql) -> None:
        """Work after the last piece, before the load is recorded."""

    def fill(
        self,
        cursor: psycopg.Cursor,
        sql: PgTableSql,
        columns: Sequence[Column],
        merge: Callable[[psycopg.Cursor, PgTableSql, str, Sequence[Column]], None],
    ) -> None:
        """Fill a current state just created beside what the hook kept (``merge`` a staging relation into
        it); nothing when the hook kept nothing."""


class _IntervalLoader(psycopg.adapt.Loader):
    def load(self, data: Any) -> tuple[int, int, int]:
        return pg_types.parse_interval(bytes(data).decode())


class PostgresDestination:
    """Loads change batches into PostgreSQL so each table's current-state view converges to Cassandra's.

    ``schema_prefix`` is put before each keyspace's schema name (and the ``_cdc`` bookkeeping schema), so
    several pipelines or tests can share a database. ``dead_letters`` receives changes the destination
    cannot take; without it such a batch fails with :class:`PermanentDestinationError`. ``piece_changes``:
    how many changes go to PostgreSQL at a time within a load's transaction. ``hook``: more work done in
    each load's transaction (:class:`LoadHook`).
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
        hook: LoadHook | None = None,
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
        self.hook = hook

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
            layout = _stored_layout(cursor, sql)
            for statement in sql.storage_ddl():
                cursor.execute(statement)
            registered = self._registered(cursor, sql)
            incompatible = {
                c.name: _incompatible_reason(table, c, registered[c.name][0])
                for c in table.columns
                if c.name in registered and registered[c.name] != (c.type.cql(), c.kind)
            }
            new = [c for c in table.value_columns if c.name not in registered]
            # New rows tables, and those an earlier version wrote (without presented values), take every column.
            for statement in sql.add_columns_ddl(table.value_columns if layout != LAYOUT_MARKER else new):
                cursor.execute(statement)
            if self.hook is not None:
                self.hook.ensure(cursor, sql, table.value_columns)
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
            if layout != LAYOUT_MARKER:
                self._adopt(cursor, sql, layout is not None)
        self._helper_ready = True
        self._ensured[(sql.schema, table.name)] = (table, incompatible)
        return incompatible

    def _adopt(self, cursor: psycopg.Cursor, sql: PgTableSql, existed: bool) -> None:
        """Mark new storage as the merged state; storage an earlier version wrote (deletions applied at read)
        is migrated first, and a current state created beside a hook's data (TimescaleDB's history) is filled
        from it."""
        if existed:
            started = time.perf_counter()
            for statement in sql.migration_sql():
                cursor.execute(statement)
            log.info(
                "%s: stored rows migrated to the merged state (deletions applied, presented values stored) in %.1f s",
                sql.table.qualified_name,
                time.perf_counter() - started,
            )
        elif self.hook is not None:
            self.hook.fill(cursor, sql, sql.table.value_columns, self._fill_step)
        cursor.execute(sql.layout_marker_ddl())

    def _fill_step(self, cursor: psycopg.Cursor, sql: PgTableSql, stage: str, columns: Sequence[Column]) -> None:
        """Merge ``stage`` (staging columns, at most one part per key; presented values not spelt) into the
        current state: what a hook filling a new current state from its own data runs, round by round."""
        cursor.execute(f"SELECT DISTINCT {st.PART} FROM {stage}")
        parts = "".join(sorted(part for (part,) in cursor.fetchall()))
        for statement in sql.merge_sql(stage, columns, parts):
            cursor.execute(statement)

    def _registered(self, cursor: psycopg.Cursor, sql: PgTableSql) -> dict[str, tuple[str, str]]:
        cursor.execute(
            f"SELECT column_name, cql_type, kind FROM {ident(self.helper)}.columns "
            "WHERE schema_name = %s AND table_name = %s",
            [sql.schema, sql.table.name],
        )
        return {name: (cql, kind) for name, cql, kind in cursor.fetchall()}

    def _replace_view(self, cursor: psycopg.Cursor, sql: PgTableSql) -> None:
        """(Re)create the view, and first the storage tables' generated columns whose expression changed
        (added anew, the table rewritten: what a new or dropped column costs)."""
        for statement in sql.functions_ddl():
            cursor.execute(statement)
        stale = {suffix: _stale_columns(cursor, sql, suffix) for suffix in ("__rows", "__static")}
        if any(stale.values()):
            drop_view(cursor, sql.view)
        for suffix, columns in stale.items():
            if not columns:
                continue
            changes = [
                f"DROP COLUMN IF EXISTS {ident(name)}, ADD COLUMN {ident(name)} {pg} GENERATED ALWAYS AS "
                f"({expression}) STORED"
                for name, pg, expression, _ in columns
            ]
            cursor.execute(f"ALTER TABLE {sql.name(suffix)} {', '.join(changes)}")
            for name, _, _, marker in columns:
                # The marker is hex digits: nothing to escape.
                cursor.execute(f"COMMENT ON COLUMN {sql.name(suffix)}.{ident(name)} IS '{marker}'")
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
        first, last = cb.position_range(batch)
        incompatible = self._ensure(table)
        if self._loaded(load_id):
            log.info("load %s of %s was already committed; skipped", load_id, table.qualified_name)
            return LoadResult(self.name, table.qualified_name, 0, first, last, time.perf_counter() - started)
        columns, rejected = _batch_columns(table, batch, incompatible)
        self._check_rejected(table, rejected)
        with self._transaction() as cursor:
            if self.hook is not None:
                self.hook.before_pieces(cursor, table, batch)
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
            if self.hook is not None:
                self.hook.after_pieces(cursor, self.sql(table))
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
        staging = st.merge_staging_columns(table, columns)
        dropped_at = {c.name: sql.dropped_at(c) for c in columns if c.type.is_complex}
        reduced = st.reduce_parts(parts, columns, dropped_at)
        stage = f"{STAGE}_{number}"
        steps = stage_steps(stage, staging, reduced)
        present = set(reduced.table.column(st.PART).unique().to_pylist())
        steps += [Step(statement) for statement in sql.merge_sql(stage, columns, "".join(sorted(present)))]
        steps.append(drop_stage_step(stage))
        if self.hook is not None:
            steps += self.hook.piece_steps(sql, piece, columns, parts, number)
        return steps

    def _pieces(self, table: TableSchema, batch: pa.RecordBatch) -> Iterator[tuple[np.ndarray, pa.RecordBatch]]:
        """The batch in pieces (with their changes' indices in the batch), each holding whole partitions: all
        changes to a key are reduced together, and a change delivered twice in a batch stays in one piece."""
        return st.partition_pieces(table, batch, self.piece_changes)

    def _record(
        self,
        cursor: psycopg.Cursor,
        table: TableSchema,
        load_id: str,
        first: cb.Position | None,
        last: cb.Position | None,
        changes: int,
    ) -> None:
        cursor.execute(
            f"INSERT INTO {ident(self.helper)}.loads (load_id, table_name, first_segment, first_position, "
            "last_segment, last_position, changes) VALUES (%s, %s, %s, %s, %s, %s, %s) "
            # A concurrent load of the same id committed first: both merges converge, keep its record.
            "ON CONFLICT (load_id) DO NOTHING",
            [load_id, table.qualified_name, *_ledger_columns(first), *_ledger_columns(last), changes],
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
        """The rows of the table's current-state view (at ``now``), in the canonical form of ``cassandra_values.py``.

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

    def ledger_position(self, tables: Sequence[TableSchema], load_id_prefix: str) -> cb.Position | None:
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
        return cb.Position(row[0], row[1]) if row else None

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
    its text form (``postgres.staging``; numeric only from plain decimal text), then text."""
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


def _stale_columns(cursor: psycopg.Cursor, sql: PgTableSql, suffix: str) -> list[tuple[str, str, str, str]]:
    """The generated columns of a storage table that are missing or were made from another expression, with
    the marker (a digest of type and expression) their comment is to carry."""
    cursor.execute(
        "SELECT attname::text, col_description(attrelid, attnum) FROM pg_attribute "
        "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
        [sql.name(suffix)],
    )
    comments = dict(cursor.fetchall())
    stale = []
    for name, pg, expression in sql.derived_columns(suffix):
        marker = "cdc_assets " + hashlib.sha256(f"{pg} {expression}".encode()).hexdigest()
        if comments.get(name) != marker:
            stale.append((name, pg, expression, marker))
    return stale


def _stored_layout(cursor: psycopg.Cursor, sql: PgTableSql) -> str | None:
    """The rows table's layout marker (its comment): None when it does not exist yet, '' when it has none."""
    cursor.execute("SELECT to_regclass(%s)", [sql.name("__rows")])
    relation = cursor.fetchone()[0]  # type: ignore[index]
    if relation is None:
        return None
    cursor.execute("SELECT obj_description(to_regclass(%s), 'pg_class')", [sql.name("__rows")])
    return cursor.fetchone()[0] or ""  # type: ignore[index]


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
        derived = []
        if st.merged_by_parts(column):
            if column.type.kind == "counter":
                derived.append(st.sum_name(column.name))
            else:
                derived += [st.shown_name(column.name), st.shown_until_name(column.name)]
        for hidden in [name for name, _ in st.cell_columns(column)[1:]] + derived:
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


def _ledger_columns(position: cb.Position | None) -> tuple[int | None, int | None]:
    """A position as the ledger's (segment, position) columns."""
    return (None, None) if position is None else (position.segment_id, position.offset)
