"""The TimescaleDB destination: PostgreSQL's merged current state, plus the change history as a hypertable.

The current state is exactly :mod:`postgres`'s (the same storage tables, merge and view): a read costs what
it costs there, whatever the length of the history. This destination is a :class:`PostgresDestination`
given a :class:`ChangeHistory` hook (:class:`~cdc_assets.destinations.postgres.destination.LoadHook`); it overrides
nothing of PostgreSQL's.

The history is for time-series questions (what changed when), not for reconstructing reads: each load also
appends its changes, unreduced, to ``"<table>__changes"``: one row per change part (``postgres.staging``
describes the columns), with ``_cdc_time`` (the change's latest write time: the time dimension),
``_cdc_segment_id``/``_cdc_position`` (where it was read) and ``_cdc_key`` (the part's kind and key). Those
four identify a part: a replay appends only the parts the history does not hold (a BRIN index on where
they were read finds them). A load is one transaction: per piece, PostgreSQL's merge, then
a COPY of the piece's parts into the history (through a staging table and ``INSERT … WHERE NOT EXISTS``
when the load may be a replay, or holds a part twice); then the load ledger's row. The trade-off: a load writes the
changes twice (merged state and history), so it costs about what a PostgreSQL load costs plus an append.

With the ``timescaledb`` extension the history is a hypertable (``chunk_interval``), compressed after
``compress_after`` (segmented by partition key) and dropped after ``retention``. Without it the
destination refuses to start, unless ``allow_plain_postgres=True``: then it warns and keeps the history
in a table range-partitioned on ``_cdc_time`` (one partition per ``chunk_interval``, created as loads
need them; partitions past ``retention`` are dropped after each load; there is no compression).
With a ``retention``, what the history lets go leaves the current state too, after each load: rows and
deletions nothing written since the retention's cutoff (rounded down to a chunk) touched (no retention, the
default, keeps everything).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import psycopg.errors
import pyarrow as pa
import pyarrow.compute as pc

from cdc_assets import change_batch as cb
from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.dead_letters import DeadLetterStore
from cdc_assets.destinations.base import PermanentDestinationError
from cdc_assets.destinations.postgres import binary as pg_binary
from cdc_assets.destinations.postgres import staging as st
from cdc_assets.destinations.postgres.destination import PIECE_CHANGES, PostgresDestination
from cdc_assets.destinations.postgres.layout import PgTableSql, ident
from cdc_assets.destinations.postgres.load import Step, drop_stage_step, stage_steps, wire_type

log = logging.getLogger(__name__)

HISTORY_SUFFIX = "__changes"
_REBUILD = "_cdc_history_rebuild"
_REBUILD_ROUND = "_cdc_history_round"
HISTORY_STAGE = "_cdc_history_stage"
TIME = "_cdc_time"
SEGMENT = "_cdc_segment_id"
POSITION = "_cdc_position"
KEY = "_cdc_key"
# What identifies a change part in the history: where it was read, its kind and key, its time.
IDENTITY = [SEGMENT, POSITION, KEY, TIME]
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
    """Statements creating (or widening) the history table and its index on where each change was read.

    A BRIN index (a summary per block range: changes are appended in log order) finds a replayed range of
    positions for nearly nothing per appended row; the unique index earlier versions kept on (segment, position,
    key, time) cost about a third of every COPY into the history and is dropped.

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
    statements += [
        f"DROP INDEX IF EXISTS {ident(sql.schema)}.{ident(sql.table.name + HISTORY_SUFFIX + '_key')}",
        f"CREATE INDEX IF NOT EXISTS {ident(sql.table.name + HISTORY_SUFFIX + '_at')} "
        f"ON {history} USING brin ({SEGMENT}, {POSITION})",
    ]
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


class ChangeHistory:
    """The PostgreSQL :class:`~cdc_assets.destinations.postgres.destination.LoadHook` appending every change of a
    load to the table's history (a hypertable, or a range-partitioned table without the extension), in the
    load's transaction."""

    def __init__(
        self,
        helper: str,
        *,
        chunk_interval: timedelta,
        compress_after: timedelta | None,
        retention: timedelta | None,
        allow_plain_postgres: bool,
    ):
        self.helper = helper
        self.chunk_interval = chunk_interval
        self.compress_after = compress_after
        self.retention = retention
        self.allow_plain_postgres = allow_plain_postgres
        self.timescale: bool | None = None
        self._append_directly = False

    def detect(self, cursor: psycopg.Cursor) -> bool:
        """Whether the history is a TimescaleDB hypertable; without the extension, refuse unless plain
        PostgreSQL is allowed."""
        if self.timescale is not None:
            return self.timescale
        cursor.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
        if cursor.fetchone() is not None:
            self.timescale = True
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
        self.timescale = False
        return False

    def ensure(self, cursor: psycopg.Cursor, sql: PgTableSql, columns: Sequence[Column]) -> None:
        timescale = self.detect(cursor)
        for statement in history_ddl(sql, columns, partitioned=not timescale):
            cursor.execute(statement)
        if timescale:
            for statement in hypertable_sql(
                sql, chunk_interval=self.chunk_interval, compress_after=self.compress_after, retention=self.retention
            ):
                cursor.execute(statement)

    def before_pieces(self, cursor: psycopg.Cursor, table: TableSchema, batch: pa.RecordBatch) -> None:
        """Whether this load may COPY straight into the history: no committed load covers any of its positions,
        so none of its changes can be there already. (The destination serializes the loads of a table, so the
        answer holds until this load commits.)"""
        first, last = cb.position_range(batch)
        if first is None or last is None:
            self._append_directly = False
            return
        cursor.execute(
            f"SELECT EXISTS (SELECT 1 FROM {ident(self.helper)}.loads WHERE table_name = %s "
            "AND (last_segment, last_position) >= (%s, %s) AND (first_segment, first_position) <= (%s, %s))",
            [table.qualified_name, first.segment_id, first.offset, last.segment_id, last.offset],
        )
        self._append_directly = not cursor.fetchone()[0]  # type: ignore[index]

    def fill(
        self,
        cursor: psycopg.Cursor,
        sql: PgTableSql,
        columns: Sequence[Column],
        merge: Callable[[psycopg.Cursor, PgTableSql, str, Sequence[Column]], None],
    ) -> None:
        """Fill a current state created beside an existing history (versions before it kept only the
        history, and merged it at every read): the history's parts merged round by round, each round at most
        one part per key (the merge takes each key once), the parts of a key in the order they were written."""
        history = sql.name(HISTORY_SUFFIX)
        cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {history})")
        if not cursor.fetchone()[0]:  # type: ignore[index]
            return
        started = time.perf_counter()
        cursor.execute(
            f"CREATE TEMPORARY TABLE {_REBUILD} ON COMMIT DROP AS SELECT *, row_number() OVER "
            f"(PARTITION BY {KEY} ORDER BY {TIME}, {SEGMENT}, {POSITION}) AS _cdc_round FROM {history}"
        )
        cursor.execute(f"CREATE INDEX ON {_REBUILD} (_cdc_round)")
        cursor.execute(f"ANALYZE {_REBUILD}")
        cursor.execute(f"SELECT count(*), coalesce(max(_cdc_round), 0) FROM {_REBUILD}")
        parts, rounds = cursor.fetchone()  # type: ignore[misc]
        kept = {name for name, _ in history_columns(sql.table, columns)}
        select = ", ".join(
            ident(name) if name in kept else f"NULL::{pg} AS {ident(name)}"
            for name, pg in st.merge_staging_columns(sql.table, columns)
        )
        for number in range(1, rounds + 1):
            cursor.execute(
                f"CREATE OR REPLACE TEMPORARY VIEW {_REBUILD_ROUND} AS "
                f"SELECT {select} FROM {_REBUILD} WHERE _cdc_round = {number}"
            )
            merge(cursor, sql, _REBUILD_ROUND, columns)
            if number % 100 == 0:
                log.info("%s: current state from the history: round %d of %d", sql.table.qualified_name, number, rounds)
        cursor.execute(f"DROP TABLE {_REBUILD} CASCADE")
        log.info(
            "%s: current state filled from %d history parts in %d rounds, %.1f s",
            sql.table.qualified_name,
            parts,
            rounds,
            time.perf_counter() - started,
        )

    def after_pieces(self, cursor: psycopg.Cursor, sql: PgTableSql) -> None:
        """With a retention, what only changes past it held leaves the current state, and (without the
        extension, whose policy does it) the history partitions past it are dropped."""
        if self.retention is None:
            return
        width = int(self.chunk_interval.total_seconds() * 1_000_000)
        cutoff = int((datetime.now(UTC) - self.retention).timestamp() * 1_000_000) // width * width
        for statement in sql.forget_sql(cutoff):
            cursor.execute(statement)
        if not self.timescale:
            self._drop_expired_partitions(cursor, sql, cutoff)

    def piece_steps(
        self, sql: PgTableSql, piece: pa.RecordBatch, columns: Sequence[Column], parts: st.Parts, number: int
    ) -> list[Step]:
        """Statements appending a piece's change parts to the history; parts already there (a replay) are skipped."""
        table = sql.table
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
        steps = [] if self.timescale else self._partition_steps(sql, times)
        names = ", ".join(ident(name) for name, _ in history)
        target = sql.name(HISTORY_SUFFIX)
        if self._append_directly and _copies_directly(history, with_time.table):
            rows = with_time.table.select([n for n, _ in history])
            types = [t for _, t in history]
            if self.timescale:
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
            Step(_append_new_sql(target, names, stage, piece)),
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

    def _drop_expired_partitions(self, cursor: psycopg.Cursor, sql: PgTableSql, cutoff: int) -> None:
        """Plain-PostgreSQL retention: drop the history partitions that end by ``cutoff`` (µs)."""
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(%s)",
            [sql.name(HISTORY_SUFFIX)],
        )
        width = self.chunk_interval.total_seconds()
        for (name,) in cursor.fetchall():
            lower = _partition_start(name, sql.table.name)
            if lower is not None and lower + width <= cutoff / 1_000_000:
                cursor.execute(f"DROP TABLE {ident(sql.schema)}.{ident(name)}")


class TimescaleDestination(PostgresDestination):
    """PostgreSQL's merged current state, plus the change history (see the module docstring): a
    :class:`PostgresDestination` given a :class:`ChangeHistory` hook, nothing of it overridden."""

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
        vacuum_after_load: bool = True,
    ):
        self.history = ChangeHistory(
            f"{schema_prefix}_cdc",
            chunk_interval=chunk_interval,
            compress_after=compress_after,
            retention=retention,
            allow_plain_postgres=allow_plain_postgres,
        )
        super().__init__(
            dsn,
            schema_prefix,
            dead_letters=dead_letters,
            connect_timeout=connect_timeout,
            piece_changes=piece_changes,
            hook=self.history,
            vacuum_after_load=vacuum_after_load,
        )

    @property
    def uses_timescale(self) -> bool:
        """Whether the history is a TimescaleDB hypertable (else plain PostgreSQL partitioning)."""
        if self.history.timescale is None:
            with self._transaction() as cursor:
                self.history.detect(cursor)
        return bool(self.history.timescale)


def _copies_directly(history: Sequence[tuple[str, str]], table: pa.Table) -> bool:
    """Whether a piece's history rows can be COPYed into the history as they are: binary COPY spells every
    column, and no change is there twice (staging keeps one of each)."""
    if any(wire_type(pg, table.column(name)) != pg for name, pg in history):
        return False
    return table.select(IDENTITY).group_by(IDENTITY).aggregate([]).num_rows == table.num_rows


def _append_new_sql(target: str, names: str, stage: str, piece: pa.RecordBatch) -> str:
    """The statement appending the staged change parts the history does not hold yet, each once: a part is
    identified by where it was read and its kind and key (and time). Only the segments the piece was read
    from are searched (the BRIN index narrows them to their block ranges)."""
    segments = pc.min_max(piece.column(cb.SEGMENT_ID))
    low, high = int(segments["min"].as_py()), int(segments["max"].as_py())
    same = " AND ".join(f"h.{name} = s.{name}" for name in IDENTITY)
    return (
        f"INSERT INTO {target} ({names}) SELECT DISTINCT ON ({', '.join(IDENTITY)}) {names} FROM {stage} s "
        f"WHERE NOT EXISTS (SELECT FROM {target} h WHERE h.{SEGMENT} BETWEEN {low} AND {high} AND {same})"
    )


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
