"""The ClickHouse destination: change batches merged cell by cell, as Cassandra merges mutations.

Storage, per Cassandra table ``ks.t``, in the ClickHouse database ``<database_prefix>ks``:

==========================  ====================================================================================
``t``                       a view: the table's current state, what ``SELECT * FROM ks.t`` returns in Cassandra
``t__cdc_state``            ReplacingMergeTree(``_cdc_version``) ordered by (partition key, ``_cdc_static``,
                            clustering): per row, the merge of its partition's whole loaded history, except what
                            depends on the time of reading (see below)
``t__cdc_rows``             MergeTree, append-only: one row per row or static-row change: its key, clustering,
                            row liveness (write time, expiry), row deletion and, per simple column, the value
                            with ``_cdc_writetime:<c>``, ``_cdc_expires_at:<c>`` and ``_cdc_deleted:<c>``; per
                            complex column its collection deletion ``_cdc_deletion:<c>``
``t__cdc_elements``         MergeTree, append-only: one row per element of a non-frozen list, set, map or user
                            type: ``_cdc_column``, ``_cdc_path:<c>``, ``_cdc_element:<c>``, write time, expiry,
                            tombstone flag
``t__cdc_shards``           MergeTree, append-only, for tables with counters: one row per shard of a counter cell:
                            ``_cdc_column``, ``_cdc_counter_id``, ``_cdc_clock``, ``_cdc_count``, write time (a
                            counter's tombstones are ``_cdc_deleted:<c>`` in ``t__cdc_rows``)
``t__cdc_deletions``        MergeTree, append-only: partition and range deletions (bounds per clustering column)
``_cdc_loads``              one row per committed load: table, load id, rows, first and last source position
``_cdc_state_loads``        one row per load whose partitions ``t__cdc_state`` has been recomputed for
==========================  ====================================================================================

Nothing is updated in place in the history tables (``__cdc_rows``, ``__cdc_elements``, ``__cdc_shards``,
``__cdc_deletions``, ordered by partition key so one partition's history is found by the primary index):
every cell, tombstone and deletion is kept, so a late, replayed or duplicated change can never resurrect
deleted data or overwrite newer data. They are the source of truth; the merge of one partition's history
(``_merged_state``) follows Cassandra's rules: per cell, ``argMax`` over (write time, tombstone > expiring > live,
expiry, serialized value); deletions keep their maximum; a cell is visible when it is newer than every
deletion covering it and not expired (``expires_at > now()``); elements merge by path. A counter is the
sum of its leaders' shards, each the ``argMax`` by (clock, count, write time) per counter id and visible when
newer than the deletions covering it; a counter tombstone hides it, whatever the write times.

Merge on write, read like a table: after a load is recorded, the merged state of every partition it
touched is recomputed from that partition's whole loaded history and inserted into ``t__cdc_state`` with
``_cdc_version = now64(9)``; the newest version of a row replaces the older ones, and each load runs one
merge step (``OPTIMIZE``, not ``FINAL``: that would rewrite the whole state on every load) so that the
view's ``FINAL`` has few parts to merge. Because a state is
a function of the whole recorded history of its partition, arrival order, replays and duplicates cannot
change it. A row that died is written too (live until the epoch), so it replaces its live version. What
depends on ``now`` stays in the view: the state keeps each cell's value with its expiry, each complex
column's surviving elements with their expiries (and the collection as presented, when none expires), each
row's ``_cdc_live_until`` (when its last live cell or liveness expires) and ``_cdc_first_expiry`` (when its
first cell does). The view reads the state once: each simple cell's expiry is checked against ``now``; a
collection's live elements are presented again only in rows where one has expired (``_cdc_first_expiry``
passed), the others show the presented value as stored. The trade-off: a
load pays for recomputing its partitions (in proportion to their history, not the table's) and for the
merge of the state table; reads no longer grow with the history.

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
out-of-date schema recomputes partitions without the columns it does not know (they take their defaults
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
import io
import threading
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from clickhouse_connect.driver.exceptions import DatabaseError, Error, OperationalError
from clickhouse_connect.driver.query import arrow_buffer

from cdc_assets import change_batch as cb
from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.cassandra_schema.types import CqlType, CqlTypeError, parse_type, type_from_json, type_to_json
from cdc_assets.dead_letters import DeadLetter, DeadLetterStore
from cdc_assets.destinations.base import (
    LoadResult,
    PermanentDestinationError,
    TransientDestinationError,
    load_boundary,
)
from cdc_assets.destinations.cassandra_values import canonical_rows, key_component, raw_type, row_sort_key
from cdc_assets.destinations.clickhouse.types import (
    can_be_null,
    clickhouse_type,
    field_to_clickhouse_arrow,
    field_type,
    from_clickhouse,
    literal,
    not_null,
    nullable,
    order_key_sql,
    quote,
    reconcile_key_sql,
    to_clickhouse_arrow,
    without_variants,
)

DEFAULT_DSN = "chdb://memory"

LOAD_ID = "_cdc_load_id"
STATIC = "_cdc_static"
ROW_DELETION = "_cdc_row_deletion"
ELEMENT_COLUMN = "_cdc_column"
ELEMENT_WRITETIME = "_cdc_writetime"
ELEMENT_EXPIRES_AT = "_cdc_expires_at"
ELEMENT_DELETED = "_cdc_deleted"
DELETION_KIND = "_cdc_kind"
DELETION_WRITETIME = "_cdc_deletion_writetime"
COUNTER_ID = "_cdc_counter_id"
CLOCK = "_cdc_clock"
COUNT = "_cdc_count"
LOADS_TABLE = "_cdc_loads"
STATE_LOADS_TABLE = "_cdc_state_loads"
STATE_VERSION = "_cdc_version"
MARKER_VISIBLE = "_cdc_marker_visible"
MARKER_EXPIRES_AT = "_cdc_marker_expires_at"
LIVE_UNTIL = "_cdc_live_until"
FIRST_EXPIRY = "_cdc_first_expiry"

_WRITETIME = "Nullable(Int64)"
_SECONDS = "Nullable(DateTime('UTC'))"
_NO_DELETION = "toInt64('-9223372036854775808')"
# A row or cell live until _NEVER is not live; one live until _FOREVER does not expire.
_NEVER = "toDateTime(0, 'UTC')"
_FOREVER = "toDateTime(4294967295, 'UTC')"
_NIL_UUID = "00000000-0000-0000-0000-000000000000"
# Date32's range; Cassandra's date reaches millions of years either side.
_DATE32_DAYS = (-719528, 2932896)
_COLUMNS_QUERY = "SELECT name, comment FROM system.columns WHERE database = {db:String} AND table = {t:String}"
# ClickHouse error codes worth a retry: timeouts, network, memory, too many parts/queries, aborted.
_TRANSIENT_CODES = frozenset({159, 160, 164, 202, 203, 209, 210, 236, 241, 242, 252, 319, 394, 425, 439, 473, 999})
# ClickHouse's Arrow writer cannot put its arrow.uuid extension inside a Variant; 16 plain bytes it can.
# Past this many loads to catch up with, the state table is recomputed whole rather than by partition.
_MAX_SCOPED_LOADS = 1000
_READ_SETTINGS = {"output_format_arrow_uuid_as_fixed_byte_array": 1}


def _writetime_column(name: str) -> str:
    return f"_cdc_writetime:{name}"


def _expires_column(name: str) -> str:
    return f"_cdc_expires_at:{name}"


def _deleted_column(name: str) -> str:
    return f"_cdc_deleted:{name}"


def _collection_deletion_column(name: str) -> str:
    return f"_cdc_deletion:{name}"


def _path_column(name: str) -> str:
    return f"_cdc_path:{name}"


def _element_column(name: str) -> str:
    return f"_cdc_element:{name}"


_CELL_PREFIXES = (
    "_cdc_writetime:",
    "_cdc_expires_at:",
    "_cdc_deleted:",
    "_cdc_deletion:",
    "_cdc_path:",
    "_cdc_element:",
    "_cdc_value:",
    "_cdc_visible:",
    "_cdc_surviving:",
    "_cdc_presented:",
    "_cdc_expiring:",
)


def _owner(storage_column: str) -> str:
    """The Cassandra column a storage column belongs to (itself for a simple column's value)."""
    for prefix in _CELL_PREFIXES:
        if storage_column.startswith(prefix):
            return storage_column[len(prefix) :]
    return storage_column


def _value_column(name: str) -> str:
    return f"_cdc_value:{name}"


def _visible_column(name: str) -> str:
    return f"_cdc_visible:{name}"


def _state_elements_column(name: str) -> str:
    return f"_cdc_surviving:{name}"


def _presented_column(name: str) -> str:
    return f"_cdc_presented:{name}"


def _expiring_column(name: str) -> str:
    return f"_cdc_expiring:{name}"


def _start_column(name: str) -> str:
    return f"_cdc_start:{name}"


def _end_column(name: str) -> str:
    return f"_cdc_end:{name}"


@dataclass(frozen=True)
class _StorageColumn:
    name: str
    type: str
    comment: str = ""

    def ddl(self) -> str:
        comment = f" COMMENT {literal(self.comment)}" if self.comment else ""
        return f"{quote(self.name)} {self.type}{comment}"


def _path_type(cql: CqlType) -> str:
    if cql.kind == "list":
        return "Nullable(UUID)"
    if cql.kind == "udt":
        return "Nullable(String)"
    return nullable(clickhouse_type(cql.args[0]))


def _element_type(cql: CqlType) -> str | None:
    if cql.kind == "set":
        return None
    if cql.kind == "udt":
        return clickhouse_type(cql)
    return nullable(clickhouse_type(cql.args[-1]))


@dataclass(frozen=True)
class _Layout:
    """Where one Cassandra table lives in ClickHouse, and the columns each storage table needs."""

    table: TableSchema
    database: str

    @property
    def view(self) -> str:
        return f"{quote(self.database)}.{quote(self.table.name)}"

    def storage(self, suffix: str) -> str:
        return f"{quote(self.database)}.{quote(self.table.name + suffix)}"

    @property
    def rows(self) -> str:
        return self.storage("__cdc_rows")

    @property
    def elements(self) -> str:
        return self.storage("__cdc_elements")

    @property
    def deletions(self) -> str:
        return self.storage("__cdc_deletions")

    @property
    def loads(self) -> str:
        return f"{quote(self.database)}.{quote(LOADS_TABLE)}"

    @property
    def shards(self) -> str:
        return self.storage("__cdc_shards")

    @property
    def state(self) -> str:
        return self.storage("__cdc_state")

    @property
    def state_loads(self) -> str:
        return f"{quote(self.database)}.{quote(STATE_LOADS_TABLE)}"

    @property
    def simple(self) -> tuple[Column, ...]:
        return tuple(c for c in self.table.value_columns if not c.type.is_complex and c.type.kind != "counter")

    @property
    def counters(self) -> tuple[Column, ...]:
        return tuple(c for c in self.table.value_columns if c.type.kind == "counter")

    @property
    def complex(self) -> tuple[Column, ...]:
        return tuple(c for c in self.table.value_columns if c.type.is_complex)

    def _header(self) -> list[_StorageColumn]:
        return [
            _StorageColumn(LOAD_ID, "LowCardinality(String)"),
            _StorageColumn(cb.SEGMENT_ID, "Int64"),
            _StorageColumn(cb.POSITION, "Int32"),
        ]

    def _keys(self, columns: Iterable[Column]) -> list[_StorageColumn]:
        return [_StorageColumn(c.name, clickhouse_type(c.type), type_to_json(c.type)) for c in columns]

    def rows_columns(self) -> list[_StorageColumn]:
        columns = [
            *self._header(),
            _StorageColumn(STATIC, "Bool"),
            *self._keys(self.table.primary_key),
            _StorageColumn(cb.ROW_WRITETIME, _WRITETIME),
            _StorageColumn(cb.ROW_EXPIRES_AT, _SECONDS),
            _StorageColumn(ROW_DELETION, _WRITETIME),
        ]
        for column in self.simple:
            columns += [
                _StorageColumn(column.name, nullable(clickhouse_type(column.type)), type_to_json(column.type)),
                _StorageColumn(_writetime_column(column.name), _WRITETIME),
                _StorageColumn(_expires_column(column.name), _SECONDS),
                _StorageColumn(_deleted_column(column.name), "Bool"),
            ]
        for column in self.complex:
            deletion = _collection_deletion_column(column.name)
            columns.append(_StorageColumn(deletion, _WRITETIME, type_to_json(column.type)))
        for column in self.counters:
            columns.append(_StorageColumn(_deleted_column(column.name), "Bool", type_to_json(column.type)))
        return columns

    def shards_columns(self) -> list[_StorageColumn]:
        return [
            _StorageColumn(LOAD_ID, "LowCardinality(String)"),
            _StorageColumn(STATIC, "Bool"),
            *self._keys(self.table.primary_key),
            _StorageColumn(ELEMENT_COLUMN, "LowCardinality(String)"),
            _StorageColumn(COUNTER_ID, "FixedString(16)"),
            _StorageColumn(CLOCK, "Int64"),
            _StorageColumn(COUNT, "Int64"),
            _StorageColumn(ELEMENT_WRITETIME, "Int64"),
        ]

    def elements_columns(self) -> list[_StorageColumn]:
        columns = [
            _StorageColumn(LOAD_ID, "LowCardinality(String)"),
            _StorageColumn(STATIC, "Bool"),
            *self._keys(self.table.primary_key),
            _StorageColumn(ELEMENT_COLUMN, "LowCardinality(String)"),
            _StorageColumn(ELEMENT_WRITETIME, "Int64"),
            _StorageColumn(ELEMENT_EXPIRES_AT, _SECONDS),
            _StorageColumn(ELEMENT_DELETED, "Bool"),
        ]
        for column in self.complex:
            columns.append(
                _StorageColumn(_path_column(column.name), _path_type(column.type), type_to_json(column.type))
            )
            element = _element_type(column.type)
            if element is not None:
                columns.append(_StorageColumn(_element_column(column.name), element))
        return columns

    def deletions_columns(self) -> list[_StorageColumn]:
        columns = [
            *self._header(),
            _StorageColumn(DELETION_KIND, "LowCardinality(String)"),
            *self._keys(self.table.partition_key),
            _StorageColumn(DELETION_WRITETIME, "Int64"),
        ]
        for column in self.table.clustering:
            bound = nullable(clickhouse_type(column.type))
            columns += [
                _StorageColumn(_start_column(column.name), bound),
                _StorageColumn(_end_column(column.name), bound),
            ]
        return [
            *columns,
            _StorageColumn("_cdc_start_length", "UInt8"),
            _StorageColumn("_cdc_start_inclusive", "Bool"),
            _StorageColumn("_cdc_end_length", "UInt8"),
            _StorageColumn("_cdc_end_inclusive", "Bool"),
        ]


@dataclass
class _TableState:
    """What ``ensure_table`` established for one table: its layout and the columns it could not evolve."""

    requested: TableSchema
    layout: _Layout
    conflicts: dict[str, str] = field(default_factory=dict)


class ClickHouseDestination:
    """A ClickHouse server (``http(s)://`` or ``clickhouse://`` DSN) or the in-process engine (``chdb://``).

    ``database_prefix`` is put in front of each keyspace's database name. ``dead_letters`` receives the
    changes the destination cannot take; without it such a batch fails with a permanent error.
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
    ):
        self.dsn = dsn
        self.database_prefix = database_prefix
        self.dead_letters = dead_letters
        self._settings = dict(settings or {})
        self._client: Any = None
        self._lock = threading.RLock()
        self._tables: dict[str, _TableState] = {}
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

    def _state(self, table: TableSchema) -> _TableState:
        self.ensure_table(table)
        return self._tables[table.qualified_name]

    def _evolve(self, table: TableSchema) -> _TableState:
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
                or stored.get(_collection_deletion_column(column.name))
                or stored.get(_deleted_column(column.name))
            )
            if old is None or column.kind in ("partition_key", "clustering") or _convertible(old, column.type):
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
        layout = _Layout(table.with_columns(columns, table.dropped), database)
        removed = {d.name for d in table.dropped if table.column(d.name) is None} | retyped
        storage = [
            ("__cdc_rows", layout.rows_columns()),
            ("__cdc_elements", layout.elements_columns()),
            ("__cdc_deletions", layout.deletions_columns()),
        ]
        if layout.counters:
            storage.append(("__cdc_shards", layout.shards_columns()))
        partition_order = _list(_sort_key(c) for c in layout.table.partition_key)
        for suffix, storage_columns in storage:
            self._sync(database, table.name + suffix, storage_columns, removed, order=partition_order)
        self._ensure_state(layout, removed)
        settings = "".join(f" SETTINGS {name} = {value}" for name, value in _view_settings(layout).items())
        self._command(f"CREATE OR REPLACE VIEW {layout.view} AS {current_state_sql(layout, 'now()')}{settings}")
        return _TableState(table, layout, conflicts)

    def _ensure_state(self, layout: _Layout, removed: set[str]) -> None:
        """Create or evolve the merged state table; refill it from the whole history when what it holds was
        computed by another query (an earlier layout, new or dropped columns, storage from before it existed),
        then bring it up to every recorded load."""
        self._command(
            f"CREATE TABLE IF NOT EXISTS {layout.state_loads} (`table` String, load_id String) "
            "ENGINE = MergeTree ORDER BY (`table`, load_id)"
        )
        state_sql = _merged_state(layout)
        columns = [_StorageColumn(STATE_VERSION, "DateTime64(9, 'UTC')")]
        columns += [_StorageColumn(name, storage_type) for name, storage_type in self._describe(layout)]
        table = layout.table
        order = _list([*(_sort_key(c) for c in table.partition_key), STATIC, *(_sort_key(c) for c in table.clustering)])
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
        self._compute_state(layout, "true")
        self._mark_computed(layout, pending)
        self._command(f"ALTER TABLE {layout.state} MODIFY COMMENT {literal(signature)}")

    def _describe(self, layout: _Layout) -> list[tuple[str, str]]:
        """The merged state's columns and their ClickHouse types (asked once per merged-state query)."""
        sql = f"DESCRIBE TABLE ({_merged_state(layout)})"
        if sql not in self._described:
            described = self._call(lambda: self.client.query(sql, settings=_view_settings(layout)))
            self._described[sql] = [(row[0], row[1]) for row in described.result_rows]
        return self._described[sql]

    def _pending(self, layout: _Layout) -> list[str]:
        """Recorded loads whose partitions the state table has not been recomputed for yet."""
        rows = self._query(
            f"SELECT load_id FROM {layout.loads} WHERE `table` = {{t:String}} AND load_id NOT IN "
            f"(SELECT load_id FROM {layout.state_loads} WHERE `table` = {{t:String}})",
            {"t": layout.table.name},
        )
        return [row[0] for row in rows]

    def _catch_up(self, layout: _Layout) -> None:
        """Recompute the state of the partitions every recorded but not yet computed load touched."""
        pending = self._pending(layout)
        if not pending:
            return
        scope = "true" if len(pending) > _MAX_SCOPED_LOADS else _touched(layout, pending)
        self._compute_state(layout, scope)
        self._mark_computed(layout, pending)

    def _compute_state(self, layout: _Layout, scope: str) -> None:
        """Insert the state of the partitions ``scope`` selects, computed from their whole loaded history, as a
        new version that replaces every earlier one."""
        # The columns this layout computes; any others (kept for a newer schema) take their defaults.
        values = [row[0] for row in self._describe(layout)]
        columns = _list(quote(n) for n in [STATE_VERSION, *values])
        sql = (
            f"INSERT INTO {layout.state} ({columns}) SELECT now64(9, 'UTC'), {_list(quote(n) for n in values)} "
            f"FROM ({_merged_state(layout, scope)})"
        )
        settings = _view_settings(layout)
        self._call(lambda: self.client.command(sql, settings=settings))
        # One merge step per load, as the merge selector picks it (not FINAL: that rewrites the whole state,
        # whatever the load's size): parts stay few, so the view's FINAL has little to merge.
        self._command(f"OPTIMIZE TABLE {layout.state}")

    def _mark_computed(self, layout: _Layout, load_ids: list[str]) -> None:
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
        columns: list[_StorageColumn],
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
        drops = [column for column in existing if _owner(column) in removed]
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
                for target, data in _storage_tables(layout, accepted, load_id):
                    self._insert(target, data)
                self._record(layout, load_id, batch.num_rows, first, last)
            self._catch_up(layout)
        return LoadResult(self.name, table.qualified_name, batch.num_rows, first, last, time.perf_counter() - started)

    def _record(
        self, layout: _Layout, load_id: str, rows: int, first: cb.Position | None, last: cb.Position | None
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

    def _set_aside(self, state: _TableState, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The batch without the changes the destination cannot take, which go to the dead-letter store."""
        unloadable = _unloadable(state, batch)
        refusals = _refusals(state, batch, unloadable)
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

    def _dead_letter(self, state: _TableState, change: pa.RecordBatch, reason: str) -> None:
        assert self.dead_letters is not None
        self.dead_letters.append(
            DeadLetter(
                stage=self.name,
                reason=reason,
                segment=str(change.column(cb.SEGMENT_ID)[0].as_py()),
                position=change.column(cb.POSITION)[0].as_py(),
                table=state.requested.qualified_name,
                payload=_ipc_bytes(change),
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
            sql = current_state_sql(layout, f"toDateTime({_epoch_seconds(now)}, 'UTC')")
            if keys is not None:
                sql = f"SELECT * FROM ({sql}){_partition_filter(layout.table, keys)}"
            settings = {**_READ_SETTINGS, **_view_settings(layout)}
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


# Partition key types whose canonical values spell a ClickHouse literal of the stored type without conversion.
_LITERAL_KEY_KINDS = frozenset({"ascii", "text", "boolean", "tinyint", "smallint", "int", "bigint", "uuid", "timeuuid"})
# Room for the key literals in one query: ClickHouse refuses queries longer than max_query_size (256 KiB).
_MAX_FILTER_CHARS = 128 << 10


def _partition_filter(table: TableSchema, keys: Collection[Sequence[Any]]) -> str:
    """A WHERE clause narrowing a current-state SELECT to ``keys``' partitions, on the key columns of plain types.

    Each column is matched against its own set of values, so a key of several columns selects a superset
    of the partitions (``current_state`` keeps the exact ones); columns of other types are left out, and so
    is every column once the literals would make the query too long.
    """
    if not keys:
        return " WHERE false"
    clauses: list[str] = []
    for index, column in enumerate(table.partition_key):
        kind = column.type.kind
        if kind not in _LITERAL_KEY_KINDS:
            continue
        values = sorted({values[index] for values in keys})
        if kind in ("ascii", "text"):
            spelled = [literal(v) for v in values]
        elif kind in ("uuid", "timeuuid"):
            spelled = [f"toUUID({literal(v)})" for v in values]
        elif kind == "boolean":
            spelled = ["true" if v else "false" for v in values]
        else:
            spelled = [str(int(v)) for v in values]
        clauses.append(f"{quote(column.name)} IN ({', '.join(spelled)})")
    if not clauses or sum(map(len, clauses)) > _MAX_FILTER_CHARS:
        return ""
    return f" WHERE {' AND '.join(clauses)}"


def _epoch_seconds(now: Any) -> int:
    if now is None:
        return int(time.time())
    if isinstance(now, datetime):
        return int((now if now.tzinfo else now.replace(tzinfo=UTC)).timestamp())
    return int(now)


def _ipc_bytes(batch: pa.RecordBatch) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue()


def _unloadable(state: _TableState, batch: pa.RecordBatch) -> dict[str, str | None]:
    """The batch's value columns ClickHouse cannot hold: the reason to refuse their changes, or None to
    ignore the column (cells of a dropped column's earlier incarnation, which Cassandra discards)."""
    table = state.layout.table
    unloadable: dict[str, str | None] = {}
    for arrow_field in batch.schema:
        metadata = arrow_field.metadata or {}
        if metadata.get(cb.META_COLUMN_KIND) not in (b"static", b"regular"):
            continue
        name = arrow_field.name
        column = table.column(name)
        batch_type = metadata.get(cb.META_CQL_TYPE, b"").decode()
        if column is None and table.dropped_column(name) is None:
            unloadable[name] = f"column {name!r} is not in the schema of {table.qualified_name}; refresh it and replay"
        elif column is not None and name in state.conflicts:
            unloadable[name] = state.conflicts[name]
        elif column is not None and not _same_storage(batch_type, column.type):
            dropped = table.dropped_column(name) is not None
            unloadable[name] = (
                None
                if dropped
                else (
                    f"column {name!r} of {table.qualified_name} is {batch_type} in this change "
                    f"but {column.type.cql()} in ClickHouse"
                )
            )
    return unloadable


def _refusals(
    state: _TableState, batch: pa.RecordBatch, unloadable: Mapping[str, str | None]
) -> list[tuple[pa.Array, str]]:
    """(changes, reason) for each reason the destination cannot take some of the batch's changes."""
    table = state.layout.table
    refusals = [(pc.is_valid(batch.column(name)), reason) for name, reason in unloadable.items() if reason]
    for column in table.columns:
        if column.type.kind != "date" or column.name not in batch.schema.names or column.name in unloadable:
            continue
        values = batch.column(column.name)
        if column.kind in ("static", "regular"):
            values = pc.struct_field(values, "value")
        reason = f"column {column.name!r} of {table.qualified_name}: a date outside ClickHouse's Date32 range"
        refusals.append((_outside_date32(values), reason))
    return [(pc.fill_null(changes, False), reason) for changes, reason in refusals if pc.any(changes).as_py()]


def _same_storage(cql_text: str, column_type: CqlType) -> bool:
    """Whether values of the CQL type ``cql_text`` (a batch column's) fit the ClickHouse column of ``column_type``."""
    if cql_text == column_type.cql():
        return True
    try:
        batch_type = parse_type(cql_text)
    except CqlTypeError:
        return False
    return _convertible(batch_type, column_type)


def _convertible(old: CqlType, new: CqlType) -> bool:
    """Whether a ClickHouse column made for ``old`` values holds ``new`` ones as they are."""
    return old.is_complex == new.is_complex and clickhouse_type(old) == clickhouse_type(new)


def _outside_date32(values: pa.Array) -> pa.Array:
    days = values.cast(pa.int32())
    low, high = _DATE32_DAYS
    return pc.fill_null(pc.or_(pc.less(days, low), pc.greater(days, high)), False)


# -- change batch → storage tables ------------------------------------------------------------------


def _constant(value: str, length: int) -> pa.DictionaryArray:
    """``value`` repeated: a dictionary array, which ClickHouse reads straight into LowCardinality."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(length, dtype=np.int32)), pa.array([value]))


def _storage_tables(layout: _Layout, batch: pa.RecordBatch, load_id: str) -> list[tuple[str, pa.Table]]:
    """The Arrow tables to insert for ``batch``, with their targets; empty ones left out."""
    rows = _of_kind(batch, cb.KIND_ROW, cb.KIND_STATIC_ROW)
    tables = [
        (layout.rows, _rows_table(layout, rows, load_id)),
        (layout.elements, _elements_table(layout, rows, load_id)),
        (layout.shards, _shards_table(layout, rows, load_id)),
        (layout.deletions, _deletions_table(layout, batch, load_id)),
    ]
    return [(target, data) for target, data in tables if data is not None and data.num_rows]


def _of_kind(batch: pa.RecordBatch, *kinds: str) -> pa.RecordBatch:
    """The batch's changes of ``kinds`` (the batch itself when all are: filtering copies every column)."""
    chosen = pc.is_in(batch.column(cb.KIND), value_set=pa.array(kinds))
    if pc.all(chosen).as_py():
        return batch
    return batch.take(pc.indices_nonzero(chosen))


def _header(batch: pa.RecordBatch, load_id: str) -> dict[str, pa.Array]:
    return {
        LOAD_ID: _constant(load_id, batch.num_rows),
        cb.SEGMENT_ID: batch.column(cb.SEGMENT_ID),
        cb.POSITION: batch.column(cb.POSITION),
    }


def _keys(columns: Iterable[Column], batch: pa.RecordBatch) -> dict[str, pa.Array]:
    return {c.name: _key_values(c.type, batch.column(c.name)) for c in columns if c.name in batch.schema.names}


def _key_values(cql: CqlType, values: pa.Array) -> pa.Array:
    """A key column's values as ClickHouse reads them into its (not Nullable) storage column.

    A static row has no clustering: its clustering columns store their type's default, read from an Arrow
    null, and the view shows NULL for them. A UUID travels as text, where ClickHouse's default for a null
    is '', which is no UUID: it is spelled as the nil UUID.
    """
    converted = to_clickhouse_arrow(cql, values)
    if cql.kind in ("uuid", "timeuuid") and converted.null_count:
        return pc.fill_null(converted, _NIL_UUID)
    return converted


def _rows_table(layout: _Layout, rows: pa.RecordBatch, load_id: str) -> pa.Table | None:
    if rows.num_rows == 0:
        return None
    data = {
        **_header(rows, load_id),
        STATIC: pc.equal(rows.column(cb.KIND), cb.KIND_STATIC_ROW),
        **_keys(layout.table.primary_key, rows),
        cb.ROW_WRITETIME: rows.column(cb.ROW_WRITETIME),
        cb.ROW_EXPIRES_AT: rows.column(cb.ROW_EXPIRES_AT),
        ROW_DELETION: rows.column(cb.DELETION_WRITETIME),
    }
    names = rows.schema.names
    for column in layout.simple:
        if column.name not in names:
            continue
        cells = rows.column(column.name)
        data[column.name] = to_clickhouse_arrow(column.type, pc.struct_field(cells, "value"))
        data[_writetime_column(column.name)] = pc.struct_field(cells, "writetime")
        data[_expires_column(column.name)] = pc.struct_field(cells, "expires_at")
        data[_deleted_column(column.name)] = pc.fill_null(pc.struct_field(cells, "deleted"), False)
    for column in layout.complex:
        if column.name in names:
            data[_collection_deletion_column(column.name)] = pc.struct_field(rows.column(column.name), "deletion")
    for column in layout.counters:
        if column.name in names:
            deleted = pc.struct_field(rows.column(column.name), "deleted")
            data[_deleted_column(column.name)] = pc.fill_null(deleted, False)
    return pa.table(data)


def _shards_table(layout: _Layout, rows: pa.RecordBatch, load_id: str) -> pa.Table | None:
    """One row per shard of the counter cells of ``rows``, with its cell's write time."""
    pieces = []
    for column in layout.counters:
        if column.name not in rows.schema.names:
            continue
        cells = rows.column(column.name)
        values = pc.struct_field(cells, "value")
        present = pc.indices_nonzero(pc.is_valid(values))
        lists = values.take(present)
        owners = present.take(pc.list_parent_indices(lists))
        shards = pc.list_flatten(lists)
        data = {
            **_element_rows(layout, column, rows, owners, load_id),
            COUNTER_ID: pc.struct_field(shards, "id"),
            CLOCK: pc.struct_field(shards, "clock"),
            COUNT: pc.struct_field(shards, "count"),
            ELEMENT_WRITETIME: pc.struct_field(cells, "writetime").take(owners),
        }
        pieces.append(pa.table(data))
    pieces = [piece for piece in pieces if piece.num_rows]
    return pa.concat_tables(pieces, promote_options="default").unify_dictionaries() if pieces else None


def _elements_table(layout: _Layout, rows: pa.RecordBatch, load_id: str) -> pa.Table | None:
    pieces = []
    for column in layout.complex:
        if column.name not in rows.schema.names:
            continue
        cells = pc.struct_field(rows.column(column.name), "cells")
        if column.type.kind == "udt":
            pieces += _udt_elements(layout, column, rows, cells, load_id)
        else:
            pieces.append(_collection_elements(layout, column, rows, cells, load_id))
    pieces = [piece for piece in pieces if piece.num_rows]
    return pa.concat_tables(pieces, promote_options="default").unify_dictionaries() if pieces else None


def _element_rows(
    layout: _Layout, column: Column, rows: pa.RecordBatch, owners: pa.Array, load_id: str
) -> dict[str, pa.Array]:
    """The columns every element row carries, for elements owned by the rows at ``owners``.

    No source position: the owning change's row in the rows table has it.
    """
    names = [cb.KIND, *(c.name for c in layout.table.primary_key)]
    owner_rows = rows.select([name for name in names if name in rows.schema.names]).take(owners)
    return {
        LOAD_ID: _constant(load_id, len(owners)),
        STATIC: pc.equal(owner_rows.column(cb.KIND), cb.KIND_STATIC_ROW),
        **_keys(layout.table.primary_key, owner_rows),
        ELEMENT_COLUMN: _constant(column.name, len(owners)),
    }


def _cell_parts(cells: pa.StructArray) -> dict[str, pa.Array]:
    return {
        ELEMENT_WRITETIME: cells.field("writetime"),
        ELEMENT_EXPIRES_AT: cells.field("expires_at"),
        ELEMENT_DELETED: pc.fill_null(cells.field("deleted"), False),
    }


def _collection_elements(
    layout: _Layout, column: Column, rows: pa.RecordBatch, cells: pa.Array, load_id: str
) -> pa.Table:
    # Taking the present lists first drops elements a null list's offsets may still span.
    present = pc.indices_nonzero(pc.is_valid(cells))
    lists = cells.take(present)
    owners = present.take(pc.list_parent_indices(lists))
    flat = pc.list_flatten(lists)
    data = {**_element_rows(layout, column, rows, owners, load_id), **_cell_parts(flat)}
    kind = column.type.kind
    path_type = column.type.args[0]
    data[_path_column(column.name)] = (
        flat.field("path") if kind == "list" else to_clickhouse_arrow(path_type, flat.field("path"))
    )
    if kind != "set":
        data[_element_column(column.name)] = to_clickhouse_arrow(column.type.args[-1], flat.field("value"))
    return pa.table(data)


def _udt_elements(
    layout: _Layout, column: Column, rows: pa.RecordBatch, cells: pa.Array, load_id: str
) -> list[pa.Table]:
    pieces = []
    udt = column.type
    value_type = to_clickhouse_arrow(udt, pa.nulls(0, cb.arrow_type(udt))).type
    for name in udt.field_names:
        # By position: pyarrow reads a name string as a dotted path (a field `.x` would fetch `x`).
        field_cells = pc.struct_field(cells, [cells.type.get_field_index(name)])
        owners = pc.indices_nonzero(pc.is_valid(field_cells))
        if len(owners) == 0:
            continue
        written = field_cells.take(owners)
        count = len(owners)
        children = []
        for item_field, item_type in zip(value_type, udt.args):
            values = written.field("value") if item_field.name == name else pa.nulls(count, cb.arrow_type(item_type))
            children.append(field_to_clickhouse_arrow(item_type, values))
        data = {**_element_rows(layout, column, rows, owners, load_id), **_cell_parts(written)}
        data[_path_column(column.name)] = pa.array([name] * count, pa.string())
        data[_element_column(column.name)] = pa.StructArray.from_arrays(children, fields=list(value_type))
        pieces.append(pa.table(data))
    return pieces


def _deletions_table(layout: _Layout, batch: pa.RecordBatch, load_id: str) -> pa.Table | None:
    pieces = []
    partitions = _of_kind(batch, cb.KIND_PARTITION_DELETION)
    if partitions.num_rows:
        data = {
            **_header(partitions, load_id),
            DELETION_KIND: _constant("partition", partitions.num_rows),
            **_keys(layout.table.partition_key, partitions),
            DELETION_WRITETIME: partitions.column(cb.DELETION_WRITETIME),
        }
        pieces.append(pa.table(data))
    ranges = _of_kind(batch, cb.KIND_RANGE_DELETION)
    if ranges.num_rows:
        data = {
            **_header(ranges, load_id),
            DELETION_KIND: _constant("range", ranges.num_rows),
            **_keys(layout.table.partition_key, ranges),
            DELETION_WRITETIME: ranges.column(cb.DELETION_WRITETIME),
        }
        for prefix, bound, inclusive, column_name in (
            ("_cdc_start", cb.RANGE_START, cb.RANGE_START_INCLUSIVE, _start_column),
            ("_cdc_end", cb.RANGE_END, cb.RANGE_END_INCLUSIVE, _end_column),
        ):
            values = ranges.column(bound)
            present = values.is_valid()
            length = pa.array([0] * ranges.num_rows, pa.uint8())
            for column in layout.table.clustering:
                # By index: pyarrow reads a name as a dotted path (a column `.` would be no field at all).
                item = pc.struct_field(values, [values.type.get_field_index(column.name)])
                data[column_name(column.name)] = to_clickhouse_arrow(column.type, item)
                present = pc.and_(present, pc.is_valid(item))
                length = pc.add(length, pc.cast(present, pa.uint8()))
            data[f"{prefix}_length"] = length
            # An unbounded side covers everything; a bound is exclusive unless it says otherwise.
            data[f"{prefix}_inclusive"] = pc.if_else(
                values.is_null(), True, pc.fill_null(ranges.column(inclusive), False)
            )
        pieces.append(pa.table(data))
    return pa.concat_tables(pieces, promote_options="default").unify_dictionaries() if pieces else None


# -- the current state ------------------------------------------------------------------------------


def _sort_key(column: Column) -> str:
    """A key column as the storage tables sort by it: itself, or its text where ClickHouse cannot sort the type."""
    name = quote(column.name)
    if any(kind in clickhouse_type(column.type) for kind in ("Map(", "Variant(", "Nullable(")):
        return f"toString({name})"
    return name


def _touched(layout: _Layout, load_ids: Sequence[str]) -> str:
    """A condition selecting the partitions the loads ``load_ids`` wrote changes or deletions for."""
    keys = _list(_sort_key(c) for c in layout.table.partition_key)
    ids = _list(literal(i) for i in load_ids)
    return (
        f"({keys}) IN (SELECT {keys} FROM {layout.rows} WHERE {LOAD_ID} IN ({ids}) "
        f"UNION DISTINCT SELECT {keys} FROM {layout.deletions} WHERE {LOAD_ID} IN ({ids}))"
    )


def _loaded(layout: _Layout) -> str:
    return f"{LOAD_ID} IN (SELECT load_id FROM {layout.loads} WHERE `table` = {literal(layout.table.name)})"


def _list(names: Iterable[str]) -> str:
    return ", ".join(names)


def _rank(deleted: str, expires_at: str) -> str:
    return f"multiIf({deleted}, 2, isNotNull({expires_at}), 1, 0)"


def _value_key(cql: CqlType, expr: str, storage_type: str) -> str:
    """The serialized bytes of a stored value ('' for null), for reconciliation ties."""
    if can_be_null(storage_type):
        return f"if(isNull({expr}), '', {reconcile_key_sql(cql, not_null(storage_type, expr))})"
    return reconcile_key_sql(cql, expr)


def _cell_aggregate(column: Column) -> str:
    name = column.name
    value, writetime = quote(name), quote(_writetime_column(name))
    deleted, expires = quote(_deleted_column(name)), quote(_expires_column(name))
    key = (
        f"tuple(assumeNotNull({writetime}), {_rank(deleted, expires)}, ifNull({expires}, toDateTime(0, 'UTC')), "
        f"{_value_key(column.type, value, nullable(clickhouse_type(column.type)))})"
    )
    cell = f"tuple({value}, {writetime}, {deleted}, {expires})"
    return f"argMaxIf({cell}, {key}, isNotNull({writetime})) AS {quote('_cdc_cell:' + name)}"


def _rows_aggregate(layout: _Layout, group: str, scope: str) -> str:
    marker_key = (
        f"tuple(assumeNotNull({cb.ROW_WRITETIME}), isNotNull({cb.ROW_EXPIRES_AT}), "
        f"ifNull({cb.ROW_EXPIRES_AT}, toDateTime(0, 'UTC')))"
    )
    parts = [
        group,
        f"argMaxIf(tuple({cb.ROW_WRITETIME}, {cb.ROW_EXPIRES_AT}), {marker_key}, isNotNull({cb.ROW_WRITETIME})) "
        "AS _cdc_marker",
        f"max({ROW_DELETION}) AS _cdc_row_hidden",
        *(_cell_aggregate(c) for c in layout.simple),
        *(
            f"max({quote(_collection_deletion_column(c.name))}) AS {quote('_cdc_collection_hidden:' + c.name)}"
            for c in layout.complex
        ),
        *(f"max({quote(_deleted_column(c.name))}) AS {quote('_cdc_tombstone:' + c.name)}" for c in layout.counters),
    ]
    return f"SELECT {_list(parts)} FROM {layout.rows} WHERE {_loaded(layout)} AND {scope} GROUP BY {group}"


def _element_value_key(column: Column) -> str:
    """Serialized bytes of an element's value (a set element has none; a user type field its own)."""
    cql = column.type
    element = quote(_element_column(column.name))
    if cql.kind == "set":
        return "''"
    if cql.kind == "udt":
        path = quote(_path_column(column.name))
        branches = []
        for name, arg in zip(cql.field_names, cql.args):
            item = f"tupleElement({element}, {literal(name)})"
            branches += [f"{path} = {literal(name)}", _value_key(arg, item, field_type(arg))]
        return f"multiIf({_list(branches)}, '')"
    return _value_key(cql.args[-1], element, nullable(clickhouse_type(cql.args[-1])))


def _elements_aggregate(layout: _Layout, group: str, scope: str) -> str:
    complex_columns = layout.complex
    paths = [quote(_path_column(c.name)) for c in complex_columns]
    values = [quote(_element_column(c.name)) for c in complex_columns if c.type.kind != "set"]
    positions = {}
    for column in complex_columns:
        if column.type.kind != "set":
            positions[column.name] = len(positions) + 1
    n = len(values)
    keys = [_element_value_key(c) for c in complex_columns]
    winner_key = (
        f"tuple({ELEMENT_WRITETIME}, {_rank(ELEMENT_DELETED, ELEMENT_EXPIRES_AT)}, "
        f"ifNull({ELEMENT_EXPIRES_AT}, toDateTime(0, 'UTC')), {_list(keys)})"
    )
    winner = f"tuple({_list([*values, ELEMENT_WRITETIME, ELEMENT_DELETED, ELEMENT_EXPIRES_AT])})"
    inner = (
        f"SELECT {group}, {ELEMENT_COLUMN}, {_list(paths)}, argMax({winner}, {winner_key}) AS _cdc_winner "
        f"FROM {layout.elements} WHERE {_loaded(layout)} AND {scope} GROUP BY {group}, {ELEMENT_COLUMN}, {_list(paths)}"
    )
    arrays = []
    for column in complex_columns:
        value = f"tupleElement(_cdc_winner, {positions[column.name]})" if column.name in positions else "0"
        element = (
            f"tuple({quote(_path_column(column.name))}, {value}, tupleElement(_cdc_winner, {n + 1}), "
            f"tupleElement(_cdc_winner, {n + 2}), tupleElement(_cdc_winner, {n + 3}))"
        )
        alias = quote("_cdc_elements:" + column.name)
        arrays.append(f"groupArrayIf({element}, {ELEMENT_COLUMN} = {literal(column.name)}) AS {alias}")
    return f"SELECT {group}, {_list(arrays)} FROM ({inner}) GROUP BY {group}"


def _shards_aggregate(layout: _Layout, group: str, scope: str) -> str:
    """Per row, each counter's winning shards as (count, write time) tuples: per counter id, the shard with
    the highest clock, then count, then write time (``CounterContext.merge``)."""
    winner = f"argMax(tuple({COUNT}, {ELEMENT_WRITETIME}), tuple({CLOCK}, {COUNT}, {ELEMENT_WRITETIME})) AS _cdc_shard"
    inner = (
        f"SELECT {group}, {ELEMENT_COLUMN}, {winner} FROM {layout.shards} WHERE {_loaded(layout)} AND {scope} "
        f"GROUP BY {group}, {ELEMENT_COLUMN}, {COUNTER_ID}"
    )
    arrays = [
        f"groupArrayIf(_cdc_shard, {ELEMENT_COLUMN} = {literal(c.name)}) AS {quote('_cdc_shards:' + c.name)}"
        for c in layout.counters
    ]
    return f"SELECT {group}, {_list(arrays)} FROM ({inner}) GROUP BY {group}"


def _partition_deletions(layout: _Layout, scope: str) -> str:
    keys = _list(quote(c.name) for c in layout.table.partition_key)
    return (
        f"SELECT {keys}, toNullable(max({DELETION_WRITETIME})) AS _cdc_partition_hidden FROM {layout.deletions} "
        f"WHERE {_loaded(layout)} AND {scope} AND {DELETION_KIND} = 'partition' GROUP BY {keys}"
    )


def _bound_condition(layout: _Layout, side: str) -> str:
    """Whether a row's clustering is past a range's start (``side`` = start) or before its end."""
    clustering = layout.table.clustering
    prefix = f"_cdc_{side}"
    cases = [f"{prefix}_length = 0", f"{prefix}_inclusive"]
    for length in range(1, len(clustering) + 1):
        condition = f"{prefix}_inclusive"
        for column in reversed(clustering[:length]):
            bound_column = _start_column(column.name) if side == "start" else _end_column(column.name)
            bound = quote(bound_column)
            if can_be_null(nullable(clickhouse_type(column.type))):
                bound = f"assumeNotNull({bound})"
            row_key = order_key_sql(column.type, quote(column.name))
            bound_key = order_key_sql(column.type, bound)
            beyond = ">" if (side == "start") != column.descending else "<"
            condition = f"({row_key} {beyond} {bound_key} OR ({row_key} = {bound_key} AND {condition}))"
        cases += [f"{prefix}_length = {length}", condition]
    return f"multiIf({_list(cases)}, false)"


def _range_deletions(layout: _Layout, scope: str) -> str:
    keys = _list(quote(c.name) for c in layout.table.partition_key)
    clustering = _list(quote(c.name) for c in layout.table.clustering)
    rows = (
        f"SELECT DISTINCT {keys}, {clustering} FROM {layout.rows} WHERE {_loaded(layout)} AND {scope} AND NOT {STATIC}"
    )
    ranges = f"SELECT * FROM {layout.deletions} WHERE {_loaded(layout)} AND {scope} AND {DELETION_KIND} = 'range'"
    return (
        f"SELECT {keys}, false AS {STATIC}, {clustering}, toNullable(max({DELETION_WRITETIME})) AS _cdc_range_hidden "
        f"FROM ({rows}) AS _cdc_r INNER JOIN ({ranges}) AS _cdc_d USING ({keys}) "
        f"WHERE {_bound_condition(layout, 'start')} AND {_bound_condition(layout, 'end')} "
        f"GROUP BY {keys}, {clustering}"
    )


def _live(expires_at: str, now: str) -> str:
    return f"(isNull({expires_at}) OR {expires_at} > {now})"


def _complex_value(column: Column, live: str) -> str:
    """The visible value of a complex column from its live elements (path, value, ...) tuples."""
    cql = column.type
    path = "tupleElement(_e, 1)"
    if can_be_null(_path_type(cql)):
        path = f"assumeNotNull({path})"
    value = "tupleElement(_e, 2)"
    if cql.kind != "udt" and cql.kind != "set" and can_be_null(nullable(clickhouse_type(cql.args[-1]))):
        value = f"assumeNotNull({value})"
    if cql.kind == "list":
        ordered = f"arraySort(_e -> {order_key_sql(CqlType('timeuuid'), path)}, {live})"
        return f"arrayMap(_e -> {value}, {ordered})"
    if cql.kind == "set":
        return f"arraySort(_x -> {order_key_sql(cql.args[0], '_x')}, arrayMap(_e -> {path}, {live}))"
    if cql.kind == "map":
        ordered = f"arraySort(_e -> {order_key_sql(cql.args[0], path)}, {live})"
        return f"mapFromArrays(arrayMap(_e -> {path}, {ordered}), arrayMap(_e -> {value}, {ordered}))"
    items = []
    for name in cql.field_names:
        written = f"arrayFirst(_e -> tupleElement(_e, 1) = {literal(name)}, {live})"
        items.append(f"tupleElement(tupleElement({written}, 2), {literal(name)})")
    return f"if(empty({live}), NULL, CAST(tuple({_list(items)}), {literal(clickhouse_type(cql))}))"


def _merged_state(layout: _Layout, scope: str = "true") -> str:
    """Per row (and per partition's static row) of the partitions ``scope`` selects, what does not depend on
    the time of reading: each cell's value with whether it survives every deletion and its expiry, the row
    marker's, each complex column's surviving elements (with their expiries), each counter's sum."""
    table = layout.table
    keys = [quote(c.name) for c in table.partition_key]
    clustering = [quote(c.name) for c in table.clustering]
    group = _list([*keys, STATIC, *clustering])
    source = f"({_rows_aggregate(layout, group, scope)}) AS _cdc_g"
    source += f" LEFT JOIN ({_partition_deletions(layout, scope)}) AS _cdc_p USING ({_list(keys)})"
    hidden = ["ifNull(_cdc_row_hidden, {0})", "ifNull(_cdc_partition_hidden, {0})"]
    if clustering:
        source += f" LEFT JOIN ({_range_deletions(layout, scope)}) AS _cdc_rd USING ({group})"
        hidden.append("ifNull(_cdc_range_hidden, {0})")
    if layout.complex:
        source += f" LEFT JOIN ({_elements_aggregate(layout, group, scope)}) AS _cdc_e USING ({group})"
    if layout.counters:
        source += f" LEFT JOIN ({_shards_aggregate(layout, group, scope)}) AS _cdc_s USING ({group})"
    hidden_sql = f"greatest({_list(h.format(_NO_DELETION) for h in hidden)})"
    parts = [
        group,
        f"ifNull(tupleElement(_cdc_marker, 1) > {hidden_sql}, false) AS {MARKER_VISIBLE}",
        f"tupleElement(_cdc_marker, 2) AS {MARKER_EXPIRES_AT}",
    ]
    until: dict[str, str] = {}
    # When the row's first visible cell expires (the row's own liveness is ``until``).
    first: dict[str, str] = {}
    for column in table.value_columns:
        dropped = table.dropped_column(column.name)
        floor = hidden_sql if dropped is None else f"greatest({hidden_sql}, toInt64({dropped.dropped_at}))"
        visible = quote(_visible_column(column.name))
        if column.type.is_complex:
            collection = f"ifNull({quote('_cdc_collection_hidden:' + column.name)}, {_NO_DELETION})"
            condition = f"tupleElement(_e, 3) > greatest({floor}, {collection}) AND NOT tupleElement(_e, 4)"
            elements = quote("_cdc_elements:" + column.name)
            surviving = quote(_state_elements_column(column.name))
            parts.append(f"arrayFilter(_e -> {condition}, {elements}) AS {surviving}")
            # Presented once here; the view recomputes it only for a collection with expiring elements.
            parts.append(f"{_complex_value(column, surviving)} AS {quote(_presented_column(column.name))}")
            expiring = quote(_expiring_column(column.name))
            parts.append(f"arrayExists(_e -> isNotNull(tupleElement(_e, 5)), {surviving}) AS {expiring}")
            ends = f"arrayMap(_e -> ifNull(tupleElement(_e, 5), {_FOREVER}), {surviving})"
            until[column.name] = f"if(empty({surviving}), {_NEVER}, arrayMax({ends}))"
            first[column.name] = f"if(empty({surviving}), {_FOREVER}, arrayMin({ends}))"
        elif column.type.kind == "counter":
            # Shards newer than every deletion covering them count, unless a counter tombstone came.
            shards = quote("_cdc_shards:" + column.name)
            surviving = f"arrayFilter(_s -> tupleElement(_s, 2) > {floor}, {shards})"
            tombstone = quote("_cdc_tombstone:" + column.name)
            total = f"arraySum(arrayMap(_s -> tupleElement(_s, 1), {surviving}))"
            parts.append(f"ifNull(NOT {tombstone} AND notEmpty({surviving}), false) AS {visible}")
            parts.append(f"if({visible}, {total}, NULL) AS {quote(_value_column(column.name))}")
            until[column.name] = f"if({visible}, {_FOREVER}, {_NEVER})"
        else:
            cell = quote("_cdc_cell:" + column.name)
            condition = f"tupleElement({cell}, 2) > {floor} AND NOT tupleElement({cell}, 3)"
            parts.append(f"ifNull({condition}, false) AS {visible}")
            value = f"tupleElement({cell}, 1)"
            empty = (
                "NULL"
                if can_be_null(nullable(clickhouse_type(column.type)))
                else f"defaultValueOfArgumentType({value})"
            )
            parts.append(f"if({visible}, {value}, {empty}) AS {quote(_value_column(column.name))}")
            expires = quote(_expires_column(column.name))
            parts.append(f"if({visible}, tupleElement({cell}, 4), NULL) AS {expires}")
            until[column.name] = f"if({visible}, ifNull({expires}, {_FOREVER}), {_NEVER})"
            first[column.name] = f"ifNull({expires}, {_FOREVER})"
    # Until when the row is live: its marker or a cell of its kind (static or regular) outlives ``now``.
    marker = f"if({MARKER_VISIBLE}, ifNull({MARKER_EXPIRES_AT}, {_FOREVER}), {_NEVER})"
    static_until = _list([marker, *(until[c.name] for c in table.statics)])
    row_until = _list([marker, *(until[c.name] for c in table.regulars)])
    parts.append(f"if({STATIC}, greatest({static_until}), greatest({row_until})) AS {LIVE_UNTIL}")
    parts.append(f"least({_list([_FOREVER, *first.values()])}) AS {FIRST_EXPIRY}")
    return f"SELECT {_list(parts)} FROM {source}"


def _merged(layout: _Layout, now: str) -> str:
    """Per row (and per partition's static row) in the merged state table: visible values at ``now``, and
    whether the row is live.

    One read of the state: a simple cell shows its stored value while its expiry is after ``now``; a
    collection shows its presented value, unless it holds expiring elements and the row's first expiry has
    passed: only then (rarely, and evaluated for those rows alone: ``if`` is short-circuit) are its live
    elements presented again.
    """
    table = layout.table
    group = _list(quote(c.name) for c in [*table.partition_key, *table.clustering])
    columns = [group, STATIC]
    for column in table.value_columns:
        name = quote(column.name)
        if column.type.is_complex:
            elements = quote(_state_elements_column(column.name))
            live = f"arrayFilter(_e -> {_live('tupleElement(_e, 5)', now)}, {elements})"
            expiring = quote(_expiring_column(column.name))
            presented = quote(_presented_column(column.name))
            recompute = f"{expiring} AND {FIRST_EXPIRY} <= {now}"
            columns.append(f"if({recompute}, {_complex_value(column, live)}, {presented}) AS {name}")
        elif column.type.kind == "counter":
            columns.append(f"{quote(_value_column(column.name))} AS {name}")
        else:
            expires = quote(_expires_column(column.name))
            value = quote(_value_column(column.name))
            empty = (
                "NULL"
                if can_be_null(nullable(clickhouse_type(column.type)))
                else f"defaultValueOfArgumentType({value})"
            )
            columns.append(f"if({_live(expires, now)}, {value}, {empty}) AS {name}")
    live = f"{LIVE_UNTIL} > {now} AS _cdc_live"
    return f"SELECT {_list([*columns, live])} FROM {layout.state} FINAL"


def _view_settings(layout: _Layout) -> dict[str, int]:
    """What the view's query needs beyond ClickHouse's defaults.

    ClickHouse refuses to group by a Variant unless told (a Variant of several types may group values
    that look alike apart); a key whose tuple has a collection field holds one, of one type, which groups
    as plainly as that type.
    """
    if any("Variant(" in clickhouse_type(c.type) for c in layout.table.primary_key):
        return {"allow_suspicious_types_in_group_by": 1}
    return {}


def current_state_sql(layout: _Layout, now: str) -> str:
    """The SELECT giving ``layout``'s table as Cassandra returns it, ``now`` being an SQL DateTime expression."""
    table = layout.table
    merged = f"({_merged(layout, now)})"
    if not table.statics:
        columns = _list(quote(c.name) for c in table.partition_key + table.clustering + table.regulars)
        return f"SELECT {columns} FROM {merged} WHERE _cdc_live AND NOT {STATIC}"
    # Each live row shows its partition's static values; a partition with live static values but no
    # live row shows as one row of its own, without clustering.
    keys = _list(quote(c.name) for c in table.partition_key)
    window = f"OVER (PARTITION BY {keys})"
    clustering = []
    for column in table.clustering:
        name = quote(column.name)
        storage = clickhouse_type(column.type)
        if can_be_null(nullable(storage)):
            clustering.append(f"if({STATIC}, NULL, {name}) AS {name}")
        else:
            clustering.append(f"if({STATIC}, defaultValueOfTypeName({literal(storage)}), {name}) AS {name}")
    statics = []
    for column in table.statics:
        name = quote(column.name)
        statics.append(f"anyIf({name}, {STATIC} AND _cdc_live) {window} AS {name}")
    per_partition = _list(
        [
            keys,
            *clustering,
            *statics,
            *(quote(c.name) for c in table.regulars),
            STATIC,
            "_cdc_live",
            f"countIf(_cdc_live AND NOT {STATIC}) {window} AS _cdc_live_rows",
        ]
    )
    columns = _list(quote(c.name) for c in table.partition_key + table.clustering + table.statics + table.regulars)
    return (
        f"SELECT {columns} FROM (SELECT {per_partition} FROM {merged}) "
        f"WHERE _cdc_live AND (NOT {STATIC} OR _cdc_live_rows = 0)"
    )
