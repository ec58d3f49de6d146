"""The PostgreSQL destination: Cassandra tables as current-state views that converge to ``SELECT *``.

:class:`PostgresDestination` composes the package's rooms: ``layout`` (where a table lives: its storage
tables, their generated columns, the bookkeeping schema; the storage is described there), ``merge`` (the load's
SQL, merging a staged piece into the stored state), ``load`` (a load's statements as steps: the binary COPY
staging, run in order) and ``read`` (the current-state view's SQL and the query reading it). It holds the
connection, ``ensure_table`` (creating and evolving storage and view), the load loop, the load ledger and
``current_state``.

A load is one transaction, sent in pieces of whole partitions (while PostgreSQL merges one, Python prepares
the next): per piece, a look-up on a second connection of which staged rows are new to the storage
(``postgres.probe``), a binary COPY (``postgres.binary``) into a temporary staging table, then (when the piece
holds deletions) one statement recording them and applying them to the rows they cover, then one statement
inserting the new rows as they are and merging the others with ``INSERT … ON CONFLICT DO UPDATE`` (rows,
static rows), keeping, cell by cell, whichever of the stored and the staged cell Cassandra would keep
(``cassandra_model.py`` states the rules); then the ``loads`` row. Loads of a table are serialized (an
advisory lock held by the load's transaction). A :class:`LoadHook` may add work to each load's transaction
(TimescaleDB's history). Replays, reorderings and replica duplicates therefore converge; a replay of a
recorded load id is skipped outright. Once committed, the load vacuums the state it wrote.

Schema evolution: a new column is added to storage and view while the flow runs. A dropped column stops
being shown; its data stays (a re-added column shows only cells written after the drop). A column whose
CQL type changed cannot be taken: its changes go to the dead-letter store with the reason (or, without a
store, the load fails with :class:`PermanentDestinationError`), the rest of the batch loads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Protocol

import numpy as np
import psycopg
import psycopg.conninfo
import psycopg.errors
import psycopg.types.json
import pyarrow as pa
import pyarrow.compute as pc

from cdc_assets import change_batch as cb
from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.dead_letters import DeadLetter, DeadLetterStore
from cdc_assets.destinations.base import (
    DestinationError,
    LoadResult,
    PermanentDestinationError,
    TransientDestinationError,
    load_boundary,
)
from cdc_assets.destinations.cassandra_values import canonical_rows, row_sort_key
from cdc_assets.destinations.postgres import probe
from cdc_assets.destinations.postgres import staging as st
from cdc_assets.destinations.postgres import types as pg_types
from cdc_assets.destinations.postgres.layout import (
    AUTOVACUUM,
    LAYOUT_MARKER,
    NOW_SETTING,
    PgTableSql,
    check_names,
    helper_ddl,
    ident,
    stale_columns,
    stored_layout,
)
from cdc_assets.destinations.postgres.load import Step, drop_stage_step, run_steps, stage_steps
from cdc_assets.destinations.postgres.merge import merge_sql, migration_sql
from cdc_assets.destinations.postgres.read import (
    IntervalLoader,
    partition_bytes,
    partition_filter,
    presented_columns,
    view_sql,
)

log = logging.getLogger(__name__)

STAGE = "_cdc_stage"
# Changes per piece of a load.
PIECE_CHANGES = 32_768

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


class PostgresDestination:
    """Loads change batches into PostgreSQL so each table's current-state view converges to Cassandra's.

    ``schema_prefix`` is put before each keyspace's schema name (and the ``_cdc`` bookkeeping schema), so
    several pipelines or tests can share a database. ``dead_letters`` receives changes the destination
    cannot take; without it such a batch fails with :class:`PermanentDestinationError`. ``piece_changes``:
    how many changes go to PostgreSQL at a time within a load's transaction. ``hook``: more work done in
    each load's transaction (:class:`LoadHook`). ``vacuum_after_load``: vacuum the current state after each
    load (:meth:`_vacuum`), so that counting it reads an index at once rather than once autovacuum has been.
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
        vacuum_after_load: bool = True,
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
        # Reads what is committed while a load merges on ``_connection`` (``postgres.probe``); vacuums after.
        self._probe_connection: psycopg.Connection | None = None
        self.vacuum_after_load = vacuum_after_load
        self._ensured: dict[tuple[str, str], tuple[TableSchema, dict[str, str]]] = {}
        self._helper_ready = False
        self.hook = hook

    def sql(self, table: TableSchema) -> PgTableSql:
        return PgTableSql(table, self.schema_prefix + table.keyspace, self.helper)

    def close(self) -> None:
        for connection in (self._connection, self._probe_connection):
            if connection is not None:
                connection.close()
        self._connection = self._probe_connection = None

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
        check_names(table, sql.schema)
        with self._transaction() as cursor:
            # Serialize this pipeline's DDL: concurrent CREATE ... IF NOT EXISTS can still collide.
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"cdc_assets:{self.helper}"])
            if not self._helper_ready:
                for statement in helper_ddl(self.helper):
                    cursor.execute(statement)
            layout = stored_layout(cursor, sql)
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
            for statement in migration_sql(sql):
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
        for statement in merge_sql(sql, stage, columns, parts):
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
        stale = {suffix: stale_columns(cursor, sql, suffix) for suffix in ("__rows", "__static")}
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
        for statement in sql.alive_index_ddl():
            cursor.execute(statement)
        for suffix in ("__rows", "__static"):
            cursor.execute("SELECT reloptions FROM pg_class WHERE oid = to_regclass(%s)", [sql.name(suffix)])
            # Only when missing: ALTER TABLE waits for a running autovacuum of the table.
            if not set(AUTOVACUUM) <= set(cursor.fetchone()[0] or ()):  # type: ignore[index]
                cursor.execute(sql.autovacuum_ddl(suffix))
        cursor.execute(
            "SELECT array_agg(attname::text ORDER BY attnum) FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
            [sql.view],
        )
        current = cursor.fetchone()[0]  # type: ignore[index]
        wanted = [c.name for c in presented_columns(sql.table)]
        if current is not None and current != wanted:
            drop_view(cursor, sql.view)
        cursor.execute(f"CREATE OR REPLACE VIEW {sql.view} AS {view_sql(sql)}")

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
            # Loads of a table one at a time: a row found new by the probe stays new until this commits.
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [self._load_lock(table)])
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
        if self.vacuum_after_load:
            self._vacuum(self.sql(table))
        return LoadResult(self.name, table.qualified_name, loaded, first, last, time.perf_counter() - started)

    def _vacuum(self, sql: PgTableSql) -> None:
        """Vacuum the current state a load just wrote: the pages it wrote become all-visible, so the view's
        ``count(*)`` is an index-only scan of ``_cdc_alive_until`` from now on, not once autovacuum comes by.
        Only the pages not all-visible are read; a table locked by another vacuum is skipped, and the table is
        never truncated (that would lock out readers). The load is committed: a failure here is only logged."""
        started = time.perf_counter()
        try:
            self._probe().execute(f"VACUUM (SKIP_LOCKED, TRUNCATE false) {sql.name('__rows')}, {sql.name('__static')}")
        except psycopg.Error as error:
            log.warning("vacuum of %s after its load failed (autovacuum will come by): %s", sql.view, translate(error))
            return
        log.debug("%s: vacuumed in %.3f s", sql.view, time.perf_counter() - started)

    def _probe(self) -> psycopg.Connection:
        """The second connection (autocommit): probes (``postgres.probe``) and the vacuum after a load."""
        if self._probe_connection is None or self._probe_connection.closed:
            self._probe_connection = psycopg.connect(self._dsn, connect_timeout=self._connect_timeout, autocommit=True)
        return self._probe_connection

    def _load_lock(self, table: TableSchema) -> str:
        return f"cdc_assets:load:{self.helper}:{table.qualified_name}"

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
        """The statements loading one piece: COPY its reduced parts, each flagged new to the storage or not
        (``postgres.probe``), into a staging table; one merge statement."""
        sql = self.sql(table)
        staging = [*st.merge_staging_columns(table, columns), (probe.NEW, "boolean")]
        dropped_at = {c.name: sql.dropped_at(c) for c in columns if c.type.is_complex}
        reduced = st.reduce_parts(parts, columns, dropped_at)
        reduced = probe.marked(reduced, self._new_parts(sql, reduced, columns))
        stage = f"{STAGE}_{number}"
        steps = stage_steps(stage, staging, reduced)
        present = "".join(sorted(set(reduced.table.column(st.PART).unique().to_pylist())))
        steps += [Step(statement) for statement in merge_sql(sql, stage, columns, present, marked=True)]
        steps.append(drop_stage_step(stage))
        if self.hook is not None:
            steps += self.hook.piece_steps(sql, piece, columns, parts, number)
        return steps

    def _new_parts(self, sql: PgTableSql, reduced: st.Parts, columns: Sequence[Column]) -> np.ndarray:
        """Per reduced part: whether it is new to the storage (``postgres.probe``), looked up on the probe
        connection while the load's own connection merges."""
        try:
            connection = self._probe()
            with connection.transaction(), connection.cursor() as cursor:
                return probe.new_parts(cursor, sql, reduced, columns)
        except psycopg.Error as error:
            if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError) and self._probe_connection:
                self._probe_connection.close()
                self._probe_connection = None
            raise translate(error) from error

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
        columns = presented_columns(table)
        where, parameters = ("", []) if keys is None else partition_filter(table, keys)
        with self._transaction() as cursor:
            cursor.adapters.register_loader("interval", IntervalLoader)
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
        wanted = {partition_bytes(table, values) for values in keys}
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


def drop_view(cursor: psycopg.Cursor, view: str) -> None:
    """Drop a view this destination made, refusing (permanently) when the user built objects on it."""
    try:
        cursor.execute(f"DROP VIEW IF EXISTS {view}")
    except psycopg.errors.DependentObjectsStillExist as error:
        raise PermanentDestinationError(f"cannot change view {view}: other objects depend on it ({error})") from error


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
