"""The TimescaleDB destination: the change history as a hypertable on write time, plus a current-state view.

Each load appends its changes, unreduced, to ``"<table>__changes"``: one row per change part
(``pg_staging`` describes the columns), with ``_cdc_time`` (the change's latest write time: the time
dimension), ``_cdc_segment_id``/``_cdc_position`` (where it was read) and ``_cdc_key`` (the part's kind
and key). The unique index on those four makes a replay a no-op; it includes ``_cdc_time`` because
TimescaleDB requires unique indexes to include the time column. A load is one transaction: COPY into a
staging table and one ``INSERT … ON CONFLICT DO NOTHING`` per piece, then the load ledger's row.

The current state is computed from the history when it is read: views ``"<table>__rows"``,
``"<table>__static"``, ``"<table>__partdel"`` and ``"<table>__rangedel"`` reduce the history to what
:mod:`postgres` keeps in its storage tables of those names (per cell the one Cassandra keeps, the latest
deletions, collections merged element by element), and the same current-state view ``"<table>"`` is
built on them. Loading is an append, so it costs about what a bare bulk load costs; reading scans the
history (as ClickHouse's view does).

With the ``timescaledb`` extension the history is a hypertable (``chunk_interval``), compressed after
``compress_after`` (segmented by partition key) and dropped after ``retention``. Without it the
destination refuses to start, unless ``allow_plain_postgres=True``: then it warns and keeps the history
in a table range-partitioned on ``_cdc_time`` (one partition per ``chunk_interval``, created as loads
need them; partitions past ``retention`` are dropped after each load; there is no compression).
The current state is the history's: with a ``retention``, rows and deletions whose every change is older
than the retention leave the current state with it (no retention, the default, keeps everything).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import numpy as np
import psycopg
import psycopg.errors
import pyarrow as pa
import pyarrow.compute as pc

from cdc_assets import change_batch as cb
from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.dead_letters import DeadLetterStore
from cdc_assets.destinations import pg_binary, pg_types
from cdc_assets.destinations import pg_staging as st
from cdc_assets.destinations.base import PermanentDestinationError
from cdc_assets.destinations.postgres import (
    PIECE_CHANGES,
    PgTableSql,
    PostgresDestination,
    Step,
    drop_stage_step,
    drop_view,
    ident,
    positions,
    stage_steps,
    wire_type,
)

log = logging.getLogger(__name__)

HISTORY_SUFFIX = "__changes"
HISTORY_STAGE = "_cdc_history_stage"
TIME = "_cdc_time"
SEGMENT = "_cdc_segment_id"
POSITION = "_cdc_position"
KEY = "_cdc_key"
# The history's time column spans years 1-9999: write times past them (a client's nanoseconds, a counter
# tombstone's maximum, a negative one) are clamped to its ends, so the partitions holding the ends are open.
_MIN_US, _MAX_US = -62135596800000000, 253402300799999999


def history_columns(table: TableSchema, columns: Sequence[Column]) -> list[tuple[str, str]]:
    """The history table's columns: where and when each change part happened, then its staging columns."""
    where = [(TIME, "timestamptz"), (SEGMENT, "bigint"), (POSITION, "integer"), (KEY, "bytea")]
    return where + st.staging_columns(table, columns)


def _interval(delta: timedelta) -> str:
    return f"interval '{int(delta.total_seconds())} seconds'"


def history_ddl(sql: PgTableSql, columns: Sequence[Column], *, partitioned: bool) -> list[str]:
    """Statements creating (or widening) the history table and its unique index.

    ``partitioned``: declare it range-partitioned on the time column (plain PostgreSQL), rather than leave
    it to become a hypertable.
    """
    history = sql.name(HISTORY_SUFFIX)
    definition = ", ".join(f"{ident(name)} {pg}" for name, pg in history_columns(sql.table, []))
    statements = [
        f"CREATE TABLE IF NOT EXISTS {history} ({definition})"
        + (f" PARTITION BY RANGE ({TIME})" if partitioned else "")
    ]
    additions = [f"ADD COLUMN IF NOT EXISTS {ident(n)} {pg}" for c in columns for n, pg in st.cell_columns(c)]
    if additions:
        statements.append(f"ALTER TABLE {history} " + ", ".join(additions))
    statements.append(
        f"CREATE UNIQUE INDEX IF NOT EXISTS {ident(sql.table.name + HISTORY_SUFFIX + '_key')} "
        f"ON {history} ({SEGMENT}, {POSITION}, {KEY}, {TIME})"
    )
    return statements


def hypertable_sql(
    sql: PgTableSql,
    *,
    chunk_interval: timedelta,
    compress_after: timedelta | None,
    retention: timedelta | None,
) -> list[str]:
    """Statements turning the (already created) history table into a hypertable with its policies."""
    history = sql.name(HISTORY_SUFFIX)
    literal = "'" + history.replace("'", "''") + "'"
    statements = [
        "CREATE EXTENSION IF NOT EXISTS timescaledb",
        f"SELECT create_hypertable({literal}, '{TIME}', chunk_time_interval => {_interval(chunk_interval)}, "
        "if_not_exists => true, migrate_data => true)",
    ]
    if compress_after is not None:
        segment_by = ", ".join(ident(c.name) for c in sql.table.partition_key).replace("'", "''")
        statements += [
            f"ALTER TABLE {history} SET (timescaledb.compress, timescaledb.compress_segmentby = '{segment_by}', "
            f"timescaledb.compress_orderby = '{TIME} DESC')",
            f"SELECT add_compression_policy({literal}, {_interval(compress_after)}, if_not_exists => true)",
        ]
    if retention is not None:
        statements.append(f"SELECT add_retention_policy({literal}, {_interval(retention)}, if_not_exists => true)")
    return statements


@dataclass(frozen=True)
class HistoryTableSql(PgTableSql):
    """A table whose storage is its change history; the tables :class:`PgTableSql` merges into are views."""

    partitioned: bool = False

    def storage_ddl(self) -> list[str]:
        return [
            f"CREATE SCHEMA IF NOT EXISTS {ident(self.schema)}",
            *history_ddl(self, [], partitioned=self.partitioned),
        ]

    def add_columns_ddl(self, columns: Sequence[Column]) -> list[str]:
        return history_ddl(self, columns, partitioned=self.partitioned)[1:-1]

    def state_views(self) -> list[tuple[str, str]]:
        """(name, SELECT) of the views standing in for PostgreSQL's storage tables."""
        table = self.table
        keys = self._key_list()
        history = self.name(HISTORY_SUFFIX)
        deleted = "max(_cdc_deleted_at) AS _cdc_deleted_at"
        return [
            (self.name("__rows"), self._reduced(st.PART_ROW, table.regulars, clustering=True)),
            (self.name("__static"), self._reduced(st.PART_STATIC, table.statics, clustering=False)),
            (
                self.name("__partdel"),
                f"SELECT {keys}, {deleted} FROM {history} WHERE _cdc_part = '{st.PART_PARTITION}' GROUP BY {keys}",
            ),
            (
                self.name("__rangedel"),
                f"SELECT {keys}, _cdc_low, _cdc_high, {deleted} FROM {history} "
                f"WHERE _cdc_part = '{st.PART_RANGE}' GROUP BY {keys}, _cdc_low, _cdc_high",
            ),
        ]

    # The current-state view computes each reduction once (MATERIALIZED), under these names.
    _SOURCES: ClassVar[dict[str, str]] = {
        "__rows": "_cdc_rows",
        "__static": "_cdc_static",
        "__partdel": "_cdc_partdel",
        "__rangedel": "_cdc_rangedel",
    }

    def _source(self, suffix: str) -> str:
        return self._SOURCES[suffix]

    def _prelude(self) -> list[str]:
        views = dict(self.state_views())
        ctes = [f"{alias} AS MATERIALIZED ({views[self.name(suffix)]})" for suffix, alias in self._SOURCES.items()]
        keys = ", ".join(f"r.{ident(c.name)}" for c in self.table.partition_key)
        # Range deletions joined to rows by partition key once, not looked up row by row in a table without
        # an index.
        ctes.append(
            f"_cdc_ranged AS MATERIALIZED (SELECT {keys}, r._cdc_ck, max(d._cdc_deleted_at) AS _cdc_deleted_at "
            f"FROM _cdc_rows r JOIN _cdc_rangedel d ON {self._key_match('d', 'r')} "
            f"AND d._cdc_low <= r._cdc_ck AND r._cdc_ck < d._cdc_high GROUP BY {keys}, r._cdc_ck)"
        )
        return ctes

    def _range_hidden(self) -> tuple[str, str]:
        join = f"LEFT JOIN _cdc_ranged g ON {self._key_match('g', 's')} AND g._cdc_ck = s._cdc_ck"
        return join, "g._cdc_deleted_at"

    def _reduced(self, part: str, columns: Sequence[Column], *, clustering: bool) -> str:
        """The history's parts of one kind reduced per key: each cell, the liveness and the deletions that
        win, as the storage table of that kind holds them."""
        table = self.table
        history = self.name(HISTORY_SUFFIX)
        group = [ident(c.name) for c in table.partition_key] + (["_cdc_ck"] if clustering else [])
        keys = ", ".join(group)
        where = f"FROM {history} WHERE _cdc_part = '{part}'"
        base = group[: len(table.partition_key)]
        if clustering:
            base += [ident(c.name) for c in table.clustering] + ["_cdc_ck"]

        def winner(name: str, selected: Sequence[str], present: str, order: Sequence[str]) -> str:
            return (
                f"{name} AS (SELECT DISTINCT ON ({keys}) {keys}, {', '.join(selected)} {where} AND {present} "
                f"ORDER BY {keys}, {', '.join(f'{o} DESC' for o in order)})"
            )

        ctes = [
            f"b AS (SELECT DISTINCT ON ({keys}) {', '.join(base)} {where})",
            winner(
                "l",
                ["_cdc_live_ts", "_cdc_live_exp"],
                "_cdc_live_ts IS NOT NULL",
                ["_cdc_live_ts", "_cdc_live_exp IS NOT NULL", "coalesce(_cdc_live_exp, 0)"],
            ),
        ]
        aggregates = ["max(_cdc_deleted_at) AS _cdc_deleted_at"]
        selected = [*(f"b.{name}" for name in base), "l._cdc_live_ts", "l._cdc_live_exp", "a._cdc_deleted_at"]
        joins = ["LEFT JOIN l USING (" + keys + ")", "LEFT JOIN a USING (" + keys + ")"]
        for index, column in enumerate(columns):
            name = ident(column.name)
            if st.merged_by_parts(column):
                deleted_at = ident(st.deleted_at_name(column.name))
                merge = "merge_elements_agg" if column.type.is_complex else "merge_shards_agg"
                aggregates += [f"{ident(self.helper)}.{merge}({name}) AS {name}"]
                aggregates += [f"max({deleted_at}) AS {deleted_at}"]
                selected += [f"a.{name}", f"a.{deleted_at}"]
                continue
            cells = [ident(cell) for cell, _ in st.cell_columns(column)]
            ts, exp, tombstone = cells[1], cells[2], cells[3]
            computed = pg_types.value_bytes_sql(column.type, name)
            value_bytes = cells[4] if computed is None else computed
            rank = [ts, f"CASE WHEN {tombstone} THEN 2 WHEN {exp} IS NOT NULL THEN 1 ELSE 0 END"]
            rank += [f"coalesce({exp}, 0)", f"coalesce({value_bytes}, '\\x'::bytea)"]
            ctes.append(winner(f"c{index}", cells, f"{ts} IS NOT NULL", rank))
            selected += [f"c{index}.{cell}" for cell in cells]
            joins.append(f"LEFT JOIN c{index} USING ({keys})")
        ctes.append(f"a AS (SELECT {keys}, {', '.join(aggregates)} {where} GROUP BY {keys})")
        return f"WITH {', '.join(ctes)} SELECT {', '.join(selected)} FROM b {' '.join(joins)}"


class TimescaleDestination(PostgresDestination):
    """A change-history hypertable and a current-state view computed from it (see the module docstring)."""

    name = "timescaledb"

    def __init__(
        self,
        dsn: str,
        schema_prefix: str = "",
        *,
        chunk_interval: timedelta = timedelta(days=1),
        compress_after: timedelta | None = timedelta(days=7),
        retention: timedelta | None = None,
        allow_plain_postgres: bool = False,
        dead_letters: DeadLetterStore | None = None,
        connect_timeout: int = 10,
        piece_changes: int = PIECE_CHANGES,
    ):
        super().__init__(
            dsn, schema_prefix, dead_letters=dead_letters, connect_timeout=connect_timeout, piece_changes=piece_changes
        )
        self.chunk_interval = chunk_interval
        self.compress_after = compress_after
        self.retention = retention
        self.allow_plain_postgres = allow_plain_postgres
        self._timescale: bool | None = None
        self._append_directly = False
        self._histories: dict[tuple[str, str], TableSchema] = {}

    @property
    def uses_timescale(self) -> bool:
        """Whether the history is a TimescaleDB hypertable (else plain PostgreSQL partitioning)."""
        if self._timescale is None:
            self._timescale = self._detect()
        return self._timescale

    def _detect(self) -> bool:
        with self._transaction() as cursor:
            cursor.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
            available = cursor.fetchone() is not None
        if available:
            return True
        if not self.allow_plain_postgres:
            raise PermanentDestinationError(
                "the timescaledb extension is not available on this PostgreSQL server: install TimescaleDB, "
                "or set allow_plain_postgres=True to keep the change history in plain range-partitioned tables"
            )
        log.warning(
            "timescaledb extension not available: the change history uses plain PostgreSQL range partitioning "
            "on %s (no compression%s)",
            TIME,
            "" if self.retention is None else f"; partitions older than {self.retention} are dropped after loads",
        )
        return False

    def sql(self, table: TableSchema) -> HistoryTableSql:
        return HistoryTableSql(
            table, self.schema_prefix + table.keyspace, self.helper, partitioned=not self.uses_timescale
        )

    def _ensure(self, table: TableSchema) -> dict[str, str]:
        incompatible = super()._ensure(table)
        sql = self.sql(table)
        if not self.uses_timescale or self._histories.get((sql.schema, table.name)) == table:
            return incompatible
        with self._transaction() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"cdc_assets:{self.helper}"])
            for statement in hypertable_sql(
                sql,
                chunk_interval=self.chunk_interval,
                compress_after=self.compress_after,
                retention=self.retention,
            ):
                cursor.execute(statement)
        self._histories[(sql.schema, table.name)] = table
        return incompatible

    def _replace_view(self, cursor: psycopg.Cursor, sql: PgTableSql) -> None:
        """(Re)create the state views and the current-state view, unless they are already these."""
        assert isinstance(sql, HistoryTableSql)
        views = [*sql.state_views(), (sql.view, sql.view_sql())]
        marker = "cdc_assets " + hashlib.sha256("\n".join(select for _, select in views).encode()).hexdigest()
        cursor.execute("SELECT obj_description(to_regclass(%s), 'pg_class')", [sql.view])
        row = cursor.fetchone()
        if row is not None and row[0] == marker:
            return
        drop_view(cursor, sql.view)
        for name, _ in reversed(views[:-1]):
            cursor.execute(f"DROP VIEW IF EXISTS {name}")
        for name, select in views:
            cursor.execute(f"CREATE VIEW {name} AS {select}")
        # The marker is hex digits: nothing to escape.
        cursor.execute(f"COMMENT ON VIEW {sql.view} IS '{marker}'")

    def _prepare(
        self, table: TableSchema, piece: pa.RecordBatch, columns: Sequence[Column], parts: st.Parts, number: int
    ) -> list[Step]:
        return self._history_steps(table, piece, columns, parts, number)

    def _before_pieces(self, cursor: psycopg.Cursor, table: TableSchema, batch: pa.RecordBatch) -> None:
        """Whether this load may COPY straight into the history: no committed load covers any of its positions,
        so none of its changes can be there already. Loads of a table are serialized for the check to hold."""
        cursor.execute(
            "SELECT pg_advisory_xact_lock(hashtext(%s))", [f"cdc_assets:load:{self.helper}:{table.qualified_name}"]
        )
        first, last = positions(batch)
        if first is None or last is None:
            self._append_directly = False
            return
        cursor.execute(
            f"SELECT EXISTS (SELECT 1 FROM {ident(self.helper)}.loads WHERE table_name = %s "
            "AND (last_segment, last_position) >= (%s, %s) AND (first_segment, first_position) <= (%s, %s))",
            [table.qualified_name, *first, *last],
        )
        self._append_directly = not cursor.fetchone()[0]  # type: ignore[index]

    def _after_pieces(self, cursor: psycopg.Cursor, table: TableSchema) -> None:
        if not self.uses_timescale and self.retention is not None:
            self._drop_expired_partitions(cursor, table)

    def _history_steps(
        self, table: TableSchema, piece: pa.RecordBatch, columns: Sequence[Column], parts: st.Parts, number: int
    ) -> list[Step]:
        """Statements appending a piece's change parts to the history; parts already there (a replay) are skipped."""
        sql = self.sql(table)
        history = history_columns(table, columns)
        times = _write_times(parts, columns)
        parts = st.render_parts(parts, columns)
        sources = parts.table.column(st.SOURCE).combine_chunks()
        extra = {
            TIME: pc.cast(times, pa.timestamp("us", tz="UTC")),
            SEGMENT: pc.take(piece.column(cb.SEGMENT_ID), sources),
            POSITION: pc.take(piece.column(cb.POSITION), sources),
            KEY: st.part_keys(parts),
        }
        with_time = st.Parts(parts.table)
        for name, values in extra.items():
            with_time.table = with_time.table.append_column(name, values)
        steps = [] if self.uses_timescale else self._partition_steps(sql, times)
        names = ", ".join(ident(name) for name, _ in history)
        target = sql.name(HISTORY_SUFFIX)
        if self._append_directly and _copies_directly(history, with_time.table):
            rows = with_time.table.select([n for n, _ in history])
            types = [t for _, t in history]
            if self.uses_timescale:
                return [*steps, _copy_step(target, names, rows, types)]
            # Straight into each partition: routing every row through the parent costs a third more.
            starts = self._chunk_starts(times)
            for start in np.unique(starts).tolist():
                mine = rows.take(pa.array(np.nonzero(starts == start)[0]))
                steps.append(_copy_step(sql.name(_partition_suffix(start)), names, mine, types))
            return steps
        stage = f"{HISTORY_STAGE}_{number}"
        return [
            *steps,
            *stage_steps(stage, history, with_time),
            Step(f"INSERT INTO {target} ({names}) SELECT {names} FROM {stage} ON CONFLICT DO NOTHING"),
            drop_stage_step(stage),
        ]

    def _partition_steps(self, sql: PgTableSql, times: pa.Array) -> list[Step]:
        """Statements creating the range partitions (one per chunk interval) the history rows of a piece need."""
        steps = []
        width = int(self.chunk_interval.total_seconds() * 1_000_000)
        for start in np.unique(self._chunk_starts(times)).tolist():
            steps.append(
                Step(
                    f"CREATE TABLE IF NOT EXISTS {sql.name(_partition_suffix(start))} "
                    f"PARTITION OF {sql.name(HISTORY_SUFFIX)} "
                    f"FOR VALUES FROM ({_bound(start)}) TO ({_bound(start + width)})"
                )
            )
        return steps

    def _chunk_starts(self, times: pa.Array) -> np.ndarray:
        """The start (µs since the epoch) of the chunk interval each write time falls in."""
        width = int(self.chunk_interval.total_seconds() * 1_000_000)
        return times.to_numpy(zero_copy_only=False) // width * width

    def _drop_expired_partitions(self, cursor: psycopg.Cursor, table: TableSchema) -> None:
        """Plain-PostgreSQL retention: drop history partitions that end before now minus the retention."""
        assert self.retention is not None
        sql = self.sql(table)
        cursor.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%s)",
            [sql.name(HISTORY_SUFFIX)],
        )
        cutoff = datetime.now(UTC) - self.retention
        for name, _ in cursor.fetchall():
            lower = _partition_start(name, table.name)
            if lower is not None and lower + self.chunk_interval.total_seconds() <= cutoff.timestamp():
                cursor.execute(f"DROP TABLE {ident(sql.schema)}.{ident(name)}")


def _copies_directly(history: Sequence[tuple[str, str]], table: pa.Table) -> bool:
    """Whether a piece's history rows can be COPYed into the history as they are: binary COPY spells every
    column, and no change is there twice (the unique index would fail the COPY; staging skips it)."""
    if any(wire_type(pg, table.column(name)) != pg for name, pg in history):
        return False
    identity = [SEGMENT, POSITION, KEY, TIME]
    return table.select(identity).group_by(identity).aggregate([]).num_rows == table.num_rows


def _copy_step(target: str, names: str, rows: pa.Table, types: Sequence[str]) -> Step:
    payload = pg_binary.binary_copy_payload(rows, types)
    return Step(f"COPY {target} ({names}) FROM STDIN WITH (FORMAT binary)", payload)


def _bound(micros: int) -> str:
    """A partition bound: the moment as a timestamptz literal, or MINVALUE/MAXVALUE past the history's years
    1-9999 (which Python cannot spell), for the chunks holding the clamped write times."""
    if micros < _MIN_US:
        return "MINVALUE"
    if micros > _MAX_US:
        return "MAXVALUE"
    # DDL takes no parameters; ISO timestamps contain no quote.
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
    return f"'{moment.isoformat()}'"


def _partition_suffix(start: int) -> str:
    """The name suffix of the partition starting at ``start`` (µs): its start in whole seconds."""
    return f"__c{start // 1_000_000}"


def _partition_start(name: str, table: str) -> int | None:
    """The start (seconds since the epoch) of the partition of ``table`` named ``name``."""
    prefix = table + "__c"
    if not name.startswith(prefix):
        return None
    return int(name[len(prefix) :])


def _write_times(parts: st.Parts, columns: Sequence[Column]) -> pa.Array:
    """Each part's latest write time (µs): liveness, deletions, cells and collection elements."""
    table = parts.table
    arrays = [table.column(st.LIVE_TS), table.column(st.DELETED_AT)]
    for column in columns:
        if st.merged_by_parts(column):
            arrays.append(table.column(st.deleted_at_name(column.name)))
            arrays.append(pa.chunked_array([st.latest_element_writetimes(parts, column)]))
        else:
            arrays.append(table.column(st.ts_name(column.name)))
    latest = pc.max_element_wise(*arrays, skip_nulls=True)
    clamped = pc.min_element_wise(pc.max_element_wise(pc.fill_null(latest, 0), _MIN_US), _MAX_US)
    return clamped.combine_chunks() if isinstance(clamped, pa.ChunkedArray) else clamped
