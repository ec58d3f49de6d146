"""Where a Cassandra table lives in ClickHouse: the storage tables' names and columns (:class:`Layout`), the
naming of the storage columns, the storage tables' sort key, and which CQL type changes a stored column
can take (:func:`convertible`).

Storage, per Cassandra table ``ks.t``, in the ClickHouse database ``<database_prefix>ks``:

==========================  ====================================================================================
``t``                       a view: the table's current state, what ``SELECT * FROM ks.t`` returns in Cassandra
``t__cdc_state``            ReplacingMergeTree(``_cdc_version``) ordered by (partition key, ``_cdc_static``,
                            clustering): per row, the merge of its whole loaded history and its partition's, except what
                            depends on the time of reading (``clickhouse.state``)
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
``_cdc_state_loads``        one row per load whose rows ``t__cdc_state`` has been recomputed for
==========================  ====================================================================================

Nothing is updated in place in the history tables (``__cdc_rows``, ``__cdc_elements``, ``__cdc_shards``,
``__cdc_deletions``, ordered by partition key so one partition's history is found by the primary index):
every cell, tombstone and deletion is kept, so a late, replayed or duplicated change can never resurrect
deleted data or overwrite newer data. They are the source of truth; ``clickhouse.load`` fills them,
``clickhouse.state`` merges them into ``t__cdc_state``, ``clickhouse.read`` is the view reading that.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from cdc_assets import change_batch as cb
from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.cassandra_schema.types import CqlType, CqlTypeError, parse_type, type_to_json
from cdc_assets.destinations.clickhouse.types import clickhouse_type, literal, nullable, quote

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


def writetime_column(name: str) -> str:
    return f"_cdc_writetime:{name}"


def expires_column(name: str) -> str:
    return f"_cdc_expires_at:{name}"


def deleted_column(name: str) -> str:
    return f"_cdc_deleted:{name}"


def collection_deletion_column(name: str) -> str:
    return f"_cdc_deletion:{name}"


def path_column(name: str) -> str:
    return f"_cdc_path:{name}"


def element_column(name: str) -> str:
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


def owner(storage_column: str) -> str:
    """The Cassandra column a storage column belongs to (itself for a simple column's value)."""
    for prefix in _CELL_PREFIXES:
        if storage_column.startswith(prefix):
            return storage_column[len(prefix) :]
    return storage_column


def value_column(name: str) -> str:
    return f"_cdc_value:{name}"


def visible_column(name: str) -> str:
    return f"_cdc_visible:{name}"


def state_elements_column(name: str) -> str:
    return f"_cdc_surviving:{name}"


def presented_column(name: str) -> str:
    return f"_cdc_presented:{name}"


def expiring_column(name: str) -> str:
    return f"_cdc_expiring:{name}"


def start_column(name: str) -> str:
    return f"_cdc_start:{name}"


def end_column(name: str) -> str:
    return f"_cdc_end:{name}"


@dataclass(frozen=True)
class StorageColumn:
    name: str
    type: str
    comment: str = ""

    def ddl(self) -> str:
        comment = f" COMMENT {literal(self.comment)}" if self.comment else ""
        return f"{quote(self.name)} {self.type}{comment}"


def path_type(cql: CqlType) -> str:
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
class Layout:
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

    def _header(self) -> list[StorageColumn]:
        return [
            StorageColumn(LOAD_ID, "LowCardinality(String)"),
            StorageColumn(cb.SEGMENT_ID, "Int64"),
            StorageColumn(cb.POSITION, "Int32"),
        ]

    def _keys(self, columns: Iterable[Column]) -> list[StorageColumn]:
        return [StorageColumn(c.name, clickhouse_type(c.type), type_to_json(c.type)) for c in columns]

    def rows_columns(self) -> list[StorageColumn]:
        columns = [
            *self._header(),
            StorageColumn(STATIC, "Bool"),
            *self._keys(self.table.primary_key),
            StorageColumn(cb.ROW_WRITETIME, _WRITETIME),
            StorageColumn(cb.ROW_EXPIRES_AT, _SECONDS),
            StorageColumn(ROW_DELETION, _WRITETIME),
        ]
        for column in self.simple:
            columns += [
                StorageColumn(column.name, nullable(clickhouse_type(column.type)), type_to_json(column.type)),
                StorageColumn(writetime_column(column.name), _WRITETIME),
                StorageColumn(expires_column(column.name), _SECONDS),
                StorageColumn(deleted_column(column.name), "Bool"),
            ]
        for column in self.complex:
            deletion = collection_deletion_column(column.name)
            columns.append(StorageColumn(deletion, _WRITETIME, type_to_json(column.type)))
        for column in self.counters:
            columns.append(StorageColumn(deleted_column(column.name), "Bool", type_to_json(column.type)))
        return columns

    def shards_columns(self) -> list[StorageColumn]:
        return [
            StorageColumn(LOAD_ID, "LowCardinality(String)"),
            StorageColumn(STATIC, "Bool"),
            *self._keys(self.table.primary_key),
            StorageColumn(ELEMENT_COLUMN, "LowCardinality(String)"),
            StorageColumn(COUNTER_ID, "FixedString(16)"),
            StorageColumn(CLOCK, "Int64"),
            StorageColumn(COUNT, "Int64"),
            StorageColumn(ELEMENT_WRITETIME, "Int64"),
        ]

    def elements_columns(self) -> list[StorageColumn]:
        columns = [
            StorageColumn(LOAD_ID, "LowCardinality(String)"),
            StorageColumn(STATIC, "Bool"),
            *self._keys(self.table.primary_key),
            StorageColumn(ELEMENT_COLUMN, "LowCardinality(String)"),
            StorageColumn(ELEMENT_WRITETIME, "Int64"),
            StorageColumn(ELEMENT_EXPIRES_AT, _SECONDS),
            StorageColumn(ELEMENT_DELETED, "Bool"),
        ]
        for column in self.complex:
            columns.append(StorageColumn(path_column(column.name), path_type(column.type), type_to_json(column.type)))
            element = _element_type(column.type)
            if element is not None:
                columns.append(StorageColumn(element_column(column.name), element))
        return columns

    def deletions_columns(self) -> list[StorageColumn]:
        columns = [
            *self._header(),
            StorageColumn(DELETION_KIND, "LowCardinality(String)"),
            *self._keys(self.table.partition_key),
            StorageColumn(DELETION_WRITETIME, "Int64"),
        ]
        for column in self.table.clustering:
            bound = nullable(clickhouse_type(column.type))
            columns += [
                StorageColumn(start_column(column.name), bound),
                StorageColumn(end_column(column.name), bound),
            ]
        return [
            *columns,
            StorageColumn("_cdc_start_length", "UInt8"),
            StorageColumn("_cdc_start_inclusive", "Bool"),
            StorageColumn("_cdc_end_length", "UInt8"),
            StorageColumn("_cdc_end_inclusive", "Bool"),
        ]


@dataclass
class TableState:
    """What ``ensure_table`` established for one table: its layout and the columns it could not evolve."""

    requested: TableSchema
    layout: Layout
    conflicts: dict[str, str] = field(default_factory=dict)


def sort_key(column: Column) -> str:
    """A key column as the storage tables sort by it: itself, or its text where ClickHouse cannot sort the type."""
    name = quote(column.name)
    if any(kind in clickhouse_type(column.type) for kind in ("Map(", "Variant(", "Nullable(")):
        return f"toString({name})"
    return name


def same_storage(cql_text: str, column_type: CqlType) -> bool:
    """Whether values of the CQL type ``cql_text`` (a batch column's) fit the ClickHouse column of ``column_type``."""
    if cql_text == column_type.cql():
        return True
    try:
        batch_type = parse_type(cql_text)
    except CqlTypeError:
        return False
    return convertible(batch_type, column_type)


def convertible(old: CqlType, new: CqlType) -> bool:
    """Whether a ClickHouse column made for ``old`` values holds ``new`` ones as they are."""
    return old.is_complex == new.is_complex and clickhouse_type(old) == clickhouse_type(new)


def sql_list(names: Iterable[str]) -> str:
    return ", ".join(names)
