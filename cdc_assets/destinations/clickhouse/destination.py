"""The ClickHouse destination: change batches merged cell by cell, as Cassandra merges mutations.

:class:`ClickHouseDestination` composes the package's rooms: ``layout`` (where a table lives: its storage
tables and their columns, described there; which type changes a stored column can take), ``load`` (a change
batch as the Arrow tables inserted into the append-only history tables, and the changes the destination
refuses), ``state`` (the merge run after each load: the merged-state query recomputing, from their whole
history, the rows a load touched) and ``read`` (the current-state view's SQL, deciding what depends on
the time of reading); ``types`` maps CQL types and values to ClickHouse's. It holds the connection,
``ensure_table`` (creating and evolving the storage, the state table and the view), the load (inserts, the
load's record, the state's recomputation), the dead letters, the load ledger and ``current_state``.

ClickHouse has no multi-statement transactions. Every stored change carries its load's id, and the state
is computed only from changes whose load id is recorded in ``_cdc_loads``; a load records itself there
after its changes, then recomputes the state and records that in ``_cdc_state_loads``. A load killed
before it was recorded leaves rows nobody reads; running it again inserts them again (a duplicate cannot
change a maximum) and then records the load. A load whose id is already recorded is skipped. Loads
recorded but not yet in ``_cdc_state_loads`` (killed after recording) are caught up by the next load of the
table or the first use of the table in a process. The state table's comment holds a hash of the query
that computed it: storage from an earlier version (no state table) or a layout that changed (columns
added, dropped, re-added) has the state refilled from the whole history on first use. Storage tables
created unsorted by an earlier version stay unsorted (ClickHouse cannot re-sort a table in place); their
state is still correct, each load's recomputation scans their whole history. A process with an
out-of-date schema recomputes rows without the columns it does not know (they take their defaults
until a process with the newer schema refills the state).

Loads go through clickhouse-connect's ``insert_arrow``, over HTTP to a server or, with a ``chdb://`` DSN,
into the in-process engine (which reads the Arrow stream from a temporary file).

Schema evolution: added columns are added; columns Cassandra lists as dropped lose their storage, and
cells written at or before the drop stay hidden if the column comes back (with any type). Storage of
a column a schema merely lacks is kept, so an out-of-date schema never drops data. Each storage
column's comment holds its CQL type. A column whose type changed to one its ClickHouse column cannot
hold keeps its old type; the changes that touch it go to the dead-letter store with the reason, as do
changes carrying a column the schema does not have and dates outside ClickHouse's Date32 range.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
import pyarrow as pa
import pyarrow.compute as pc
from clickhouse_connect.driver.exceptions import DatabaseError, Error, OperationalError
from clickhouse_connect.driver.query import arrow_buffer

from cdc_assets import change_batch as cb
from cdc_assets.cassandra_schema.tables import TableSchema
from cdc_assets.cassandra_schema.types import CqlType, type_from_json
from cdc_assets.dead_letters import DeadLetter, DeadLetterStore
from cdc_assets.destinations.base import (
    LoadResult,
    PermanentDestinationError,
    TransientDestinationError,
    load_boundary,
)
from cdc_assets.destinations.cassandra_values import canonical_rows, key_component, raw_type, row_sort_key
from cdc_assets.destinations.clickhouse.layout import (
    LOADS_TABLE,
    STATE_VERSION,
    STATIC,
    Layout,
    StorageColumn,
    TableState,
    collection_deletion_column,
    convertible,
    deleted_column,
    owner,
    sort_key,
    sql_list,
)
from cdc_assets.destinations.clickhouse.load import ipc_bytes, refused_changes, storage_tables, unloadable_columns
from cdc_assets.destinations.clickhouse.read import current_state_sql, epoch_seconds, partition_filter
from cdc_assets.destinations.clickhouse.state import EVERYTHING, Scope, merged_state, touched, view_settings
from cdc_assets.destinations.clickhouse.types import from_clickhouse, literal, quote, without_variants

DEFAULT_DSN = "chdb://memory"

_COLUMNS_QUERY = "SELECT name, comment FROM system.columns WHERE database = {db:String} AND table = {t:String}"

# ClickHouse error codes worth a retry: timeouts, network, memory, too many parts/queries, aborted.
_TRANSIENT_CODES = frozenset({159, 160, 164, 202, 203, 209, 210, 236, 241, 242, 252, 319, 394, 425, 439, 473, 999})

# Past this many loads to catch up with, the state table is recomputed whole rather than row by row.
_MAX_SCOPED_LOADS = 1000
# A state table of at most this many rows is merged into one part after each load (``_compute_state``);
# a larger one only when it has more than _STATE_PARTS active parts.
MERGE_ROWS = 5_000_000
_STATE_PARTS = 16

# ClickHouse's Arrow writer cannot put its arrow.uuid extension inside a Variant; 16 plain bytes it can.
_READ_SETTINGS = {"output_format_arrow_uuid_as_fixed_byte_array": 1}


class ClickHouseDestination:
    """A ClickHouse server (``http(s)://`` or ``clickhouse://`` DSN) or the in-process engine (``chdb://``).

    ``database_prefix`` is put in front of each keyspace's database name. ``dead_letters`` receives the
    changes the destination cannot take; without it such a batch fails with a permanent error.
    ``merge_rows``: up to this size a table's merged state is merged into one part after every load (reads
    need no merging); past it, merges are left to ClickHouse (``_compute_state`` says why).
    Writes are serialized per destination (chdb hosts one engine per process).
    """

    name = "clickhouse"

    def __init__(
        self,
        dsn: str = DEFAULT_DSN,
        database_prefix: str = "",
        *,
        dead_letters: DeadLetterStore | None = None,
        settings: Mapping[str, Any] | None = None,
        merge_rows: int = MERGE_ROWS,
    ):
        self.dsn = dsn
        self.merge_rows = merge_rows
        self.database_prefix = database_prefix
        self.dead_letters = dead_letters
        self._settings = dict(settings or {})
        self._client: Any = None
        self._lock = threading.RLock()
        self._tables: dict[str, TableState] = {}
        # DESCRIBE of each merged-state query: planned once per layout, not on every load.
        self._described: dict[str, list[tuple[str, str]]] = {}

    # -- connection ---------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The clickhouse-connect client, connected on first use."""
        with self._lock:
            if self._client is None:
                self._client = self._call(lambda: clickhouse_connect.get_client(dsn=self.dsn, settings=self._settings))
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _call(self, action: Any) -> Any:
        """Run ``action``, turning driver errors into the destination's transient or permanent errors."""
        try:
            return action()
        except OperationalError as error:
            raise TransientDestinationError(f"ClickHouse unavailable: {_scrubbed(error, self.dsn)}") from error
        except DatabaseError as error:
            kind = TransientDestinationError if error.code in _TRANSIENT_CODES else PermanentDestinationError
            raise kind(f"ClickHouse refused: {_scrubbed(error, self.dsn)}") from error
        except Error as error:
            raise PermanentDestinationError(f"ClickHouse client error: {_scrubbed(error, self.dsn)}") from error

    def _command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> Any:
        return self._call(lambda: self.client.command(sql, parameters=parameters))

    def _query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return self._call(lambda: self.client.query(sql, parameters=parameters).result_rows)

    def _insert(self, target: str, data: pa.Table) -> None:
        """``insert_arrow``, but with the column list quoted here: clickhouse-connect takes a name that looks
        quoted already (a Cassandra column named ``"a"`` or `` `a` ``) for an identifier, not for a name."""
        compression = self.client.write_compression if self.client.write_compression in ("zstd", "lz4") else None
        _, block = arrow_buffer(data, compression)
        columns = [quote(name) for name in data.column_names]
        self._call(lambda: self.client.raw_insert(target, columns, block, fmt="Arrow"))

    # -- tables -------------------------------------------------------------------------------------

    def database(self, table: TableSchema) -> str:
        """The ClickHouse database holding ``table``'s keyspace."""
        return f"{self.database_prefix}{table.keyspace}"

    def ensure_table(self, table: TableSchema) -> None:
        """Create ``table``'s storage and view, or evolve them to its columns; cheap when nothing changed."""
        with self._lock:
            state = self._tables.get(table.qualified_name)
            if state is None or state.requested != table:
                self._tables[table.qualified_name] = self._evolve(table)

    def _state(self, table: TableSchema) -> TableState:
        self.ensure_table(table)
        return self._tables[table.qualified_name]

    def _evolve(self, table: TableSchema) -> TableState:
        # The storage and the view name their own columns _cdc_…: a Cassandra column so named could collide
        # with one, or shadow it in the view's SELECT (an alias wins over a column there). As in PostgreSQL.
        for column in table.columns:
            if column.name.startswith("_cdc_"):
                raise PermanentDestinationError(
                    f"column {column.name!r} of {table.qualified_name}: names starting with _cdc_ are reserved"
                )
        database = self.database(table)
        self._command(f"CREATE DATABASE IF NOT EXISTS {quote(database)}")
        loads = f"{quote(database)}.{quote(LOADS_TABLE)}"
        self._command(
            f"CREATE TABLE IF NOT EXISTS {loads} (`table` String, load_id String, rows UInt64, "
            "first_segment_id Nullable(Int64), first_position Nullable(Int32), "
            "last_segment_id Nullable(Int64), last_position Nullable(Int32), loaded_at DateTime64(6, 'UTC')) "
            "ENGINE = MergeTree ORDER BY (`table`, load_id)"
        )
        stored = self._stored_types(database, table.name + "__cdc_rows")
        conflicts: dict[str, str] = {}
        retyped: set[str] = set()
        columns = []
        for column in table.columns:
            old = (
                stored.get(column.name)
                or stored.get(collection_deletion_column(column.name))
                or stored.get(deleted_column(column.name))
            )
            if old is None or column.kind in ("partition_key", "clustering") or convertible(old, column.type):
                columns.append(column)
            elif table.dropped_column(column.name) is not None:
                # Dropped and re-added with another type: what was stored is hidden anyway (written before the drop).
                retyped.add(column.name)
                columns.append(column)
            else:
                conflicts[column.name] = (
                    f"column {column.name!r} of {table.qualified_name} is {column.type.cql()} in Cassandra but "
                    f"{old.cql()} in ClickHouse, which cannot convert it"
                )
                columns.append(replace(column, type=old))
        layout = Layout(table.with_columns(columns, table.dropped), database)
        removed = {d.name for d in table.dropped if table.column(d.name) is None} | retyped
        storage = [
            ("__cdc_rows", layout.rows_columns()),
            ("__cdc_elements", layout.elements_columns()),
            ("__cdc_deletions", layout.deletions_columns()),
        ]
        if layout.counters:
            storage.append(("__cdc_shards", layout.shards_columns()))
        partition_order = sql_list(sort_key(c) for c in layout.table.partition_key)
        for suffix, storage_columns in storage:
            self._sync(database, table.name + suffix, storage_columns, removed, order=partition_order)
        self._ensure_state(layout, removed)
        settings = "".join(f" SETTINGS {name} = {value}" for name, value in view_settings(layout).items())
        self._command(f"CREATE OR REPLACE VIEW {layout.view} AS {current_state_sql(layout, 'now()')}{settings}")
        return TableState(table, layout, conflicts)

    def _ensure_state(self, layout: Layout, removed: set[str]) -> None:
        """Create or evolve the merged state table; refill it from the whole history when what it holds was
        computed by another query (an earlier layout, new or dropped columns, storage from before it existed),
        then bring it up to every recorded load."""
        self._command(
            f"CREATE TABLE IF NOT EXISTS {layout.state_loads} (`table` String, load_id String) "
            "ENGINE = MergeTree ORDER BY (`table`, load_id)"
        )
        state_sql = merged_state(layout)
        columns = [StorageColumn(STATE_VERSION, "DateTime64(9, 'UTC')")]
        columns += [StorageColumn(name, storage_type) for name, storage_type in self._describe(layout)]
        table = layout.table
        order = sql_list(
            [*(sort_key(c) for c in table.partition_key), STATIC, *(sort_key(c) for c in table.clustering)]
        )
        name = table.name + "__cdc_state"
        self._sync(layout.database, name, columns, removed, engine=f"ReplacingMergeTree({STATE_VERSION})", order=order)
        signature = hashlib.sha256("\n".join([state_sql, *(c.ddl() for c in columns)]).encode()).hexdigest()
        stored = self._query(
            "SELECT comment FROM system.tables WHERE database = {db:String} AND name = {t:String}",
            {"db": layout.database, "t": name},
        )
        if stored and stored[0][0] == signature:
            self._catch_up(layout)
            return
        pending = self._pending(layout)
        self._compute_state(layout, EVERYTHING)
        self._mark_computed(layout, pending)
        self._command(f"ALTER TABLE {layout.state} MODIFY COMMENT {literal(signature)}")

    def _describe(self, layout: Layout) -> list[tuple[str, str]]:
        """The merged state's columns and their ClickHouse types (asked once per merged-state query)."""
        sql = f"DESCRIBE TABLE ({merged_state(layout)})"
        if sql not in self._described:
            described = self._call(lambda: self.client.query(sql, settings=view_settings(layout)))
            self._described[sql] = [(row[0], row[1]) for row in described.result_rows]
        return self._described[sql]

    def _pending(self, layout: Layout) -> list[str]:
        """Recorded loads whose rows the state table has not been recomputed for yet."""
        rows = self._query(
            f"SELECT load_id FROM {layout.loads} WHERE `table` = {{t:String}} AND load_id NOT IN "
            f"(SELECT load_id FROM {layout.state_loads} WHERE `table` = {{t:String}})",
            {"t": layout.table.name},
        )
        return [row[0] for row in rows]

    def _catch_up(self, layout: Layout) -> None:
        """Recompute the state of the rows every recorded but not yet computed load touched."""
        pending = self._pending(layout)
        if not pending:
            return
        scope = EVERYTHING if len(pending) > _MAX_SCOPED_LOADS else touched(layout, pending)
        self._compute_state(layout, scope)
        self._mark_computed(layout, pending)

    def _compute_state(self, layout: Layout, scope: Scope) -> None:
        """Insert the state of the rows ``scope`` selects, computed from their whole loaded history, as a new
        version that replaces every earlier one."""
        # The columns this layout computes; any others (kept for a newer schema) take their defaults.
        values = [row[0] for row in self._describe(layout)]
        columns = sql_list(quote(n) for n in [STATE_VERSION, *values])
        sql = (
            f"INSERT INTO {layout.state} ({columns}) SELECT now64(9, 'UTC'), {sql_list(quote(n) for n in values)} "
            f"FROM ({merged_state(layout, scope)})"
        )
        settings = view_settings(layout)
        self._call(lambda: self.client.command(sql, settings=settings))
        # Each load adds a part, which the view's FINAL merges on every read until it is merged away. While the
        # state is small, one merge step after the load folds it in (the selector merges all of a few parts:
        # the whole state is rewritten), so reads find one part. Past ``merge_rows`` that rewrite would make
        # every load cost in proportion to the table: ClickHouse's background merges take over, and a merge
        # step is asked for only when parts pile up (a chdb process may not live long enough to merge).
        parts, rows = self._query(
            "SELECT count(), sum(rows) FROM system.parts WHERE database = {db:String} AND table = {t:String} "
            "AND active",
            {"db": layout.database, "t": layout.table.name + "__cdc_state"},
        )[0]
        if parts > 1 and (rows <= self.merge_rows or parts > _STATE_PARTS):
            self._command(f"OPTIMIZE TABLE {layout.state}")

    def _mark_computed(self, layout: Layout, load_ids: list[str]) -> None:
        if load_ids:
            self._insert(
                layout.state_loads, pa.table({"table": [layout.table.name] * len(load_ids), "load_id": load_ids})
            )

    def _stored_types(self, database: str, table: str) -> dict[str, CqlType]:
        rows = self._query(_COLUMNS_QUERY, {"db": database, "t": table})
        return {name: type_from_json(comment) for name, comment in rows if comment.startswith("{")}

    def _sync(
        self,
        database: str,
        name: str,
        columns: list[StorageColumn],
        removed: set[str],
        *,
        engine: str = "MergeTree",
        order: str = "tuple()",
    ) -> None:
        """Create a storage table, or drop the storage of ``removed`` Cassandra columns and add what it lacks.

        Storage of columns the schema does not mention is kept: an older schema is no drop.
        """
        target = f"{quote(database)}.{quote(name)}"
        ddl = ", ".join(c.ddl() for c in columns)
        create = f"CREATE TABLE IF NOT EXISTS {target} ({ddl}) ENGINE = {engine} ORDER BY ({order})"
        self._call(lambda: self.client.command(create, settings={"allow_suspicious_types_in_order_by": 1}))
        existing = dict(self._query(_COLUMNS_QUERY, {"db": database, "t": name}))
        drops = [column for column in existing if owner(column) in removed]
        if drops:
            self._command(f"ALTER TABLE {target} {', '.join(f'DROP COLUMN {quote(c)}' for c in drops)}")
            existing = {column: comment for column, comment in existing.items() if column not in drops}
        changes = [f"ADD COLUMN {c.ddl()}" for c in columns if c.name not in existing]
        changes += [
            f"COMMENT COLUMN {quote(c.name)} {literal(c.comment)}"
            for c in columns
            if c.name in existing and existing[c.name] != c.comment
        ]
        if changes:
            self._command(f"ALTER TABLE {target} {', '.join(changes)}")

    # -- loading ------------------------------------------------------------------------------------

    def load(self, table: TableSchema, batch: pa.RecordBatch, *, load_id: str) -> LoadResult:
        """Merge one change batch: all of it becomes visible at once (when the load is recorded) or none.

        Any failure comes out as a :class:`DestinationError` (``base.load_boundary``).
        """
        secrets = [self.dsn, urlsplit(self.dsn).password or ""]
        with load_boundary(self.name, table, batch, load_id, secrets=secrets):
            return self._load(table, batch, load_id)

    def _load(self, table: TableSchema, batch: pa.RecordBatch, load_id: str) -> LoadResult:
        started = time.perf_counter()
        first, last = cb.position_range(batch)
        with self._lock:
            state = self._state(table)
            layout = state.layout
            recorded = self._query(
                f"SELECT count() FROM {layout.loads} WHERE `table` = {{t:String}} AND load_id = {{id:String}}",
                {"t": table.name, "id": load_id},
            )
            if recorded[0][0] == 0:
                accepted = self._set_aside(state, batch)
                for target, data in storage_tables(layout, accepted, load_id):
                    self._insert(target, data)
                self._record(layout, load_id, batch.num_rows, first, last)
            self._catch_up(layout)
        return LoadResult(self.name, table.qualified_name, batch.num_rows, first, last, time.perf_counter() - started)

    def _record(
        self, layout: Layout, load_id: str, rows: int, first: cb.Position | None, last: cb.Position | None
    ) -> None:
        record = pa.table(
            {
                "table": [layout.table.name],
                "load_id": [load_id],
                "rows": pa.array([rows], pa.uint64()),
                "first_segment_id": pa.array([first and first.segment_id], pa.int64()),
                "first_position": pa.array([first and first.offset], pa.int32()),
                "last_segment_id": pa.array([last and last.segment_id], pa.int64()),
                "last_position": pa.array([last and last.offset], pa.int32()),
                "loaded_at": pa.array([datetime.now(UTC)], pa.timestamp("us", tz="UTC")),
            }
        )
        self._insert(layout.loads, record)

    def _set_aside(self, state: TableState, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The batch without the changes the destination cannot take, which go to the dead-letter store."""
        unloadable = unloadable_columns(state, batch)
        refusals = refused_changes(state, batch, unloadable)
        if refusals and self.dead_letters is None:
            raise PermanentDestinationError(f"no dead-letter store for refused changes: {refusals[0][1]}")
        if refusals:
            refused = refusals[0][0]
            for changes, _ in refusals[1:]:
                refused = pc.or_(refused, changes)
            for index in pc.indices_nonzero(refused).to_pylist():
                reason = next(reason for changes, reason in refusals if changes[index].as_py())
                self._dead_letter(state, batch.slice(index, 1), reason)
            batch = batch.filter(pc.invert(refused))
        return batch.drop_columns(list(unloadable))

    def _dead_letter(self, state: TableState, change: pa.RecordBatch, reason: str) -> None:
        assert self.dead_letters is not None
        self.dead_letters.append(
            DeadLetter(
                stage=self.name,
                reason=reason,
                segment=str(change.column(cb.SEGMENT_ID)[0].as_py()),
                position=change.column(cb.POSITION)[0].as_py(),
                table=state.requested.qualified_name,
                payload=ipc_bytes(change),
            )
        )

    # -- reading ------------------------------------------------------------------------------------

    def ledger_position(self, tables: Sequence[TableSchema], load_id_prefix: str) -> cb.Position | None:
        """The furthest source position among committed loads of ``tables`` whose id starts with the prefix."""
        found: list[tuple[int, int]] = []
        with self._lock:
            for database in sorted({self.database(table) for table in tables}):
                exists = self._query(
                    "SELECT count() FROM system.tables WHERE database = {db:String} AND name = {t:String}",
                    {"db": database, "t": LOADS_TABLE},
                )
                if not exists[0][0]:
                    continue
                found += self._query(
                    f"SELECT last_segment_id, last_position FROM {quote(database)}.{quote(LOADS_TABLE)} "
                    "WHERE startsWith(load_id, {p:String}) AND last_segment_id IS NOT NULL "
                    "ORDER BY last_segment_id DESC, last_position DESC LIMIT 1",
                    {"p": load_id_prefix},
                )
        return max(cb.Position(int(segment), int(position)) for segment, position in found) if found else None

    def current_state(
        self, table: TableSchema, *, now: Any = None, keys: Collection[Sequence[Any]] | None = None
    ) -> list[dict[str, Any]]:
        """The rows ``SELECT * FROM ks.table`` returns at ``now`` (datetime or epoch seconds; default: now).

        ``keys`` (partition key values in canonical form, in partition key order) keeps only those partitions,
        narrowed in the query on the key columns of plain types, for the reconciliation of a window.
        """
        with self._lock:
            layout = self._state(table).layout
            sql = current_state_sql(layout, f"toDateTime({epoch_seconds(now)}, 'UTC')")
            if keys is not None:
                sql = f"SELECT * FROM ({sql}){partition_filter(layout.table, keys)}"
            settings = {**_READ_SETTINGS, **view_settings(layout)}
            result = self._call(lambda: self.client.query_arrow(sql, use_strings=False, settings=settings))
        effective = layout.table
        columns = effective.partition_key + effective.clustering + effective.statics + effective.regulars
        plain = [without_variants(c) for c in result.columns]
        raw = pa.table([c.cast(raw_type(c.type)) for c in plain], names=result.column_names)
        rows = [{c.name: from_clickhouse(c.type, row[c.name]) for c in columns} for row in raw.to_pylist()]
        state = canonical_rows(effective, rows)
        if keys is None:
            return state
        wanted = {
            b"".join(key_component(c.type, v, False) for c, v in zip(effective.partition_key, values, strict=True))
            for values in keys
        }
        return [row for row in state if row_sort_key(effective, row)[0] in wanted]


def _scrubbed(error: Exception, dsn: str) -> str:
    """The error's message without the DSN or its password."""
    text = str(error).replace(dsn, "<dsn>")
    password = urlsplit(dsn).password
    return text.replace(password, "***") if password else text
