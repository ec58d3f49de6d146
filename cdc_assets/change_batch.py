"""The change batch: the one Arrow shape in which changes travel from the reader to every destination.

One ``pyarrow.RecordBatch`` per Cassandra table per read. Each row of the batch is one *change*:
a row write (INSERT/UPDATE, possibly with cell tombstones), a row deletion, a static-row write,
a partition deletion or a range deletion, with the commit log position it was read at.

Columns, in order:

==============================  ==========================  ===============================================
column                          Arrow type                  meaning
==============================  ==========================  ===============================================
``_cdc_segment_id``             int64, not null             id of the commit log segment the change came from
``_cdc_position``               int32, not null             logical end offset of its entry in that segment
``_cdc_kind``                   string, not null            ``row``, ``static_row``, ``partition_deletion``,
                                                            ``range_deletion``
<partition key columns>         CQL → Arrow, not null       the partition key, one column per key column
<clustering columns>            CQL → Arrow                 the row's clustering; null unless kind is ``row``
``_cdc_row_writetime``          int64                       row liveness (the INSERT row marker) write time, µs
``_cdc_row_ttl``                int32                       its TTL in seconds, when the INSERT had one
``_cdc_row_expires_at``         timestamp[s, UTC]           when that liveness expires
``_cdc_deletion_writetime``     int64                       the row, partition or range deletion's timestamp:
                                                            it hides every cell of its scope written at or
                                                            before this time (µs)
``_cdc_deletion_time``          timestamp[s, UTC]           the node's local time of that deletion
``_cdc_range_start``            struct<clustering columns>  range deletions: the start bound; fields past the
                                                            bound's length are null; null = unbounded
``_cdc_range_start_inclusive``  bool
``_cdc_range_end``              struct<clustering columns>  the end bound, as for the start
``_cdc_range_end_inclusive``    bool
<static and regular columns>    cell struct (below)         null when the change does not touch the column
==============================  ==========================  ===============================================

Static columns are only ever set in ``static_row`` changes and regular columns only in ``row`` changes,
as Cassandra logs them (an INSERT that sets both writes a static row and a regular row).

A *simple* column (any frozen or scalar type) is a struct
``{value: T, writetime: int64, ttl: int32, expires_at: timestamp[s, UTC], deleted: bool}``:
``writetime`` in µs as ``WRITETIME()`` returns it, ``ttl``/``expires_at`` set for TTL'd cells, and
``deleted`` true for a cell tombstone (``value`` is then null).

A *complex* column (non-frozen list, set, map or UDT) is a struct ``{deletion: int64, cells: ...}``:
``deletion`` is the timestamp of a whole-collection deletion (an overwrite writes one at the write time
minus 1), and ``cells`` the elements written, each with its own write time:

- ``list<T>``: list of ``{path: string (the element's timeuuid), value: T, writetime, ttl, expires_at, deleted}``
- ``set<T>``: list of ``{path: T, writetime, ttl, expires_at, deleted}``
- ``map<K, V>``: list of ``{path: K, value: V, writetime, ttl, expires_at, deleted}``
- UDT: struct with one simple-column cell struct per field (null where the field was not written)

CQL → Arrow (the value ``T`` above, and key columns):

- ascii, text, varchar → string; blob → binary; boolean → bool
- tinyint/smallint/int/bigint → int8/int16/int32/int64
- counter → ``list<struct<id: fixed_size_binary(16), clock: int64, count: int64>>``: the shards of the
  counter context the cell holds (format notes 11.5), in counter id order. A leader logs its own shard
  only (its counter id, a clock, its running count: neither the delta nor the total); a read repair or a
  hint logs the shards it merged. So one change holds no value of the counter: that is the sum of every
  leader's newest shard over all the cell's changes, wrapped at 64 bits (:func:`counter_total`)
- float → float32; double → float64
- varint, decimal → string holding the exact decimal text (Arrow decimals have a fixed precision and
  scale; Cassandra's do not)
- timestamp → timestamp[ms, UTC]; date → date32; time → time64[ns]; duration → month_day_nano_interval
- uuid, timeuuid → string (canonical 36-character form); inet → string
- frozen list/set → list<T>; frozen map → map<K, V>; tuple → struct<f0, f1, ...>; frozen UDT →
  struct<fields>; vector<T, n> → fixed_size_list<T, n>

An empty value (zero bytes, which Cassandra allows for most non-string types) becomes null.

Every field carries metadata ``cdc_assets.cql_type`` (its CQL type) and ``cdc_assets.column_kind``;
the schema carries ``cdc_assets.table`` (``keyspace.table``) and ``cdc_assets.table_id``.

Python values handed to :class:`ChangeBatchBuilder` are whatever ``pyarrow.array`` accepts for the
Arrow type: ints for timestamp (ms), date (days since 1970-01-01), time (ns); ``(months, days, nanos)``
for duration; lists of ``(key, value)`` pairs for maps; dicts for structs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import total_ordering
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.cassandra_schema.types import CqlType

SEGMENT_ID = "_cdc_segment_id"
POSITION = "_cdc_position"
KIND = "_cdc_kind"
ROW_WRITETIME = "_cdc_row_writetime"
ROW_TTL = "_cdc_row_ttl"
ROW_EXPIRES_AT = "_cdc_row_expires_at"
DELETION_WRITETIME = "_cdc_deletion_writetime"
DELETION_TIME = "_cdc_deletion_time"
RANGE_START = "_cdc_range_start"
RANGE_START_INCLUSIVE = "_cdc_range_start_inclusive"
RANGE_END = "_cdc_range_end"
RANGE_END_INCLUSIVE = "_cdc_range_end_inclusive"

KIND_ROW = "row"
KIND_STATIC_ROW = "static_row"
KIND_PARTITION_DELETION = "partition_deletion"
KIND_RANGE_DELETION = "range_deletion"
KINDS = (KIND_ROW, KIND_STATIC_ROW, KIND_PARTITION_DELETION, KIND_RANGE_DELETION)

META_TABLE = b"cdc_assets.table"
META_TABLE_ID = b"cdc_assets.table_id"
META_CQL_TYPE = b"cdc_assets.cql_type"
META_COLUMN_KIND = b"cdc_assets.column_kind"

WRITETIME_TYPE = pa.int64()
TTL_TYPE = pa.int32()
SECONDS_TYPE = pa.timestamp("s", tz="UTC")
COUNTER_SHARDS_TYPE = pa.list_(
    pa.struct([pa.field("id", pa.binary(16)), pa.field("clock", pa.int64()), pa.field("count", pa.int64())])
)
_INT64_SPAN = 1 << 64

_SCALARS: dict[str, pa.DataType] = {
    "ascii": pa.string(),
    "text": pa.string(),
    "blob": pa.binary(),
    "boolean": pa.bool_(),
    "tinyint": pa.int8(),
    "smallint": pa.int16(),
    "int": pa.int32(),
    "bigint": pa.int64(),
    "counter": COUNTER_SHARDS_TYPE,
    "float": pa.float32(),
    "double": pa.float64(),
    "varint": pa.string(),
    "decimal": pa.string(),
    "timestamp": pa.timestamp("ms", tz="UTC"),
    "date": pa.date32(),
    "time": pa.time64("ns"),
    "duration": pa.month_day_nano_interval(),
    "uuid": pa.string(),
    "timeuuid": pa.string(),
    "inet": pa.string(),
}


def arrow_type(cql: CqlType) -> pa.DataType:
    """The Arrow type of a CQL value (frozen form; see the module docstring for complex columns)."""
    if cql.kind in _SCALARS:
        return _SCALARS[cql.kind]
    if cql.kind in ("list", "set"):
        return pa.list_(arrow_type(cql.args[0]))
    if cql.kind == "map":
        return pa.map_(arrow_type(cql.args[0]), arrow_type(cql.args[1]))
    if cql.kind == "tuple":
        return pa.struct([pa.field(f"f{i}", arrow_type(arg)) for i, arg in enumerate(cql.args)])
    if cql.kind == "udt":
        return pa.struct([pa.field(name, arrow_type(arg)) for name, arg in zip(cql.field_names, cql.args)])
    if cql.kind == "vector":
        return pa.list_(arrow_type(cql.args[0]), cql.size)
    raise ValueError(f"no Arrow type for CQL type {cql.cql()!r}")


def _cell_fields(value: pa.DataType | None) -> list[pa.Field]:
    fields = [] if value is None else [pa.field("value", value)]
    return [
        *fields,
        pa.field("writetime", WRITETIME_TYPE),
        pa.field("ttl", TTL_TYPE),
        pa.field("expires_at", SECONDS_TYPE),
        pa.field("deleted", pa.bool_()),
    ]


def simple_cell_type(cql: CqlType) -> pa.StructType:
    return pa.struct(_cell_fields(arrow_type(cql)))


def cell_type(cql: CqlType) -> pa.StructType:
    """The Arrow type of a static or regular column's entry in a change batch."""
    if not cql.is_complex:
        return simple_cell_type(cql)
    if cql.kind == "list":
        cells: pa.DataType = pa.list_(
            pa.struct([pa.field("path", pa.string()), *_cell_fields(arrow_type(cql.args[0]))])
        )
    elif cql.kind == "set":
        cells = pa.list_(pa.struct([pa.field("path", arrow_type(cql.args[0])), *_cell_fields(None)]))
    elif cql.kind == "map":
        key, value = cql.args
        cells = pa.list_(pa.struct([pa.field("path", arrow_type(key)), *_cell_fields(arrow_type(value))]))
    else:
        cells = pa.struct([pa.field(name, simple_cell_type(arg)) for name, arg in zip(cql.field_names, cql.args)])
    return pa.struct([pa.field("deletion", WRITETIME_TYPE), pa.field("cells", cells)])


def _column_field(column: Column, arrow: pa.DataType, nullable: bool = True) -> pa.Field:
    metadata = {META_CQL_TYPE: column.type.cql().encode(), META_COLUMN_KIND: column.kind.encode()}
    return pa.field(column.name, arrow, nullable=nullable, metadata=metadata)


def clustering_struct_type(table: TableSchema) -> pa.StructType:
    return pa.struct([pa.field(c.name, arrow_type(c.type)) for c in table.clustering])


def change_batch_schema(table: TableSchema) -> pa.Schema:
    """The Arrow schema of ``table``'s change batches."""
    bound = clustering_struct_type(table)
    fields = [
        pa.field(SEGMENT_ID, pa.int64(), nullable=False),
        pa.field(POSITION, pa.int32(), nullable=False),
        pa.field(KIND, pa.string(), nullable=False),
        *(_column_field(c, arrow_type(c.type), nullable=False) for c in table.partition_key),
        *(_column_field(c, arrow_type(c.type)) for c in table.clustering),
        pa.field(ROW_WRITETIME, WRITETIME_TYPE),
        pa.field(ROW_TTL, TTL_TYPE),
        pa.field(ROW_EXPIRES_AT, SECONDS_TYPE),
        pa.field(DELETION_WRITETIME, WRITETIME_TYPE),
        pa.field(DELETION_TIME, SECONDS_TYPE),
        pa.field(RANGE_START, bound),
        pa.field(RANGE_START_INCLUSIVE, pa.bool_()),
        pa.field(RANGE_END, bound),
        pa.field(RANGE_END_INCLUSIVE, pa.bool_()),
        *(_column_field(c, cell_type(c.type)) for c in table.value_columns),
    ]
    metadata = {META_TABLE: table.qualified_name.encode(), META_TABLE_ID: str(table.id).encode()}
    return pa.schema(fields, metadata=metadata)


# Batch column -> change dict key, for the per-change fields between the key columns and the cells.
_ROW_FIELDS = {
    ROW_WRITETIME: "row_writetime",
    ROW_TTL: "row_ttl",
    ROW_EXPIRES_AT: "row_expires_at",
    DELETION_WRITETIME: "deletion_writetime",
    DELETION_TIME: "deletion_time",
    RANGE_START: "range_start",
    RANGE_START_INCLUSIVE: "range_start_inclusive",
    RANGE_END: "range_end",
    RANGE_END_INCLUSIVE: "range_end_inclusive",
}


class ChangeBatchBuilder:
    """Collects changes for one table and turns them into one RecordBatch."""

    def __init__(self, table: TableSchema):
        self.table = table
        self.schema = change_batch_schema(table)
        # The change dicts are converted in one pass by Arrow, as a struct shaped like the dicts; its fields
        # then become the batch's columns without copying.
        self._change_type = pa.struct(
            [
                pa.field("kind", pa.string()),
                pa.field("key", _struct_of(self.schema, table.partition_key)),
                pa.field("clustering", _struct_of(self.schema, table.clustering)),
                *(pa.field(key, self.schema.field(column).type) for column, key in _ROW_FIELDS.items()),
                pa.field("cells", _struct_of(self.schema, table.value_columns)),
            ]
        )
        self._segments: list[int] = []
        self._positions: list[int] = []
        self._changes: list[Mapping[str, Any]] = []

    def __len__(self) -> int:
        return len(self._changes)

    def add(
        self,
        *,
        segment_id: int,
        position: int,
        kind: str,
        key: Mapping[str, Any],
        clustering: Mapping[str, Any] | None = None,
        cells: Mapping[str, Any] | None = None,
        row_writetime: int | None = None,
        row_ttl: int | None = None,
        row_expires_at: int | None = None,
        deletion_writetime: int | None = None,
        deletion_time: int | None = None,
        range_start: Mapping[str, Any] | None = None,
        range_start_inclusive: bool | None = None,
        range_end: Mapping[str, Any] | None = None,
        range_end_inclusive: bool | None = None,
    ) -> None:
        """Append one change. ``cells`` maps column names to cell dicts shaped as the module describes."""
        fields = {name: value for name, value in locals().items() if name not in ("self", "segment_id", "position")}
        self.append(segment_id, position, fields)

    def append(self, segment_id: int, position: int, fields: Mapping[str, Any]) -> None:
        """Append one change given as a dict with :meth:`add`'s keyword names (absent ones are null).

        The dict is kept as it is until :meth:`finish`; it must not change in between.
        """
        self._segments.append(segment_id)
        self._positions.append(position)
        self._changes.append(fields)

    def finish(self) -> pa.RecordBatch:
        """The batch of everything added so far; the builder starts empty again."""
        changes = pa.array(self._changes, type=self._change_type)
        kind, key, clustering, *row_fields, cells = changes.flatten()
        arrays = [
            pa.array(self._segments, pa.int64()),
            pa.array(self._positions, pa.int32()),
            kind,
            *key.flatten(),
            *clustering.flatten(),
            *row_fields,
            *cells.flatten(),
        ]
        batch = pa.RecordBatch.from_arrays(arrays, schema=self.schema)
        self._segments, self._positions, self._changes = [], [], []
        return batch


def _struct_of(schema: pa.Schema, columns: tuple[Column, ...]) -> pa.StructType:
    return pa.struct([pa.field(c.name, schema.field(c.name).type) for c in columns])


def build_change_batch(table: TableSchema, changes: Iterable[Mapping[str, Any]]) -> pa.RecordBatch:
    """One batch from change dicts with :meth:`ChangeBatchBuilder.add`'s keyword names."""
    builder = ChangeBatchBuilder(table)
    for change in changes:
        builder.add(**change)
    return builder.finish()


def counter_total(counts: Iterable[int]) -> int:
    """The sum of shards' counts, wrapping at 64 bits as Cassandra's ``CounterContext.total`` does."""
    return (sum(counts) + (1 << 63)) % _INT64_SPAN - (1 << 63)


@total_ordering
@dataclass(frozen=True)
class Position:
    """A place in the commit log: a segment id and a logical offset in it (an entry's end). The one position
    type: the reader resumes from it, staging names ranges by it, destinations record it in their ledgers."""

    segment_id: int
    offset: int

    def __lt__(self, other: Position) -> bool:
        return (self.segment_id, self.offset) < (other.segment_id, other.offset)

    def __str__(self) -> str:
        return f"{self.segment_id}:{self.offset}"

    @classmethod
    def parse(cls, text: str) -> Position:
        """Parse ``SEGMENT_ID:OFFSET``."""
        segment, sep, offset = text.partition(":")
        try:
            if not sep:
                raise ValueError
            return cls(int(segment), int(offset))
        except ValueError:
            raise ValueError(f"position {text!r} is not SEGMENT_ID:OFFSET (two integers)") from None


def position_range(batch: pa.RecordBatch) -> tuple[Position | None, Position | None]:
    """The first and last source position of a batch's changes (None, None for an empty batch)."""
    if batch.num_rows == 0:
        return None, None
    segments = batch.column(SEGMENT_ID)
    positions = batch.column(POSITION)
    low, high = pc.min_max(segments).values()
    first = pc.min(pc.filter(positions, pc.equal(segments, low))).as_py()
    last = pc.max(pc.filter(positions, pc.equal(segments, high))).as_py()
    return Position(low.as_py(), first), Position(high.as_py(), last)
