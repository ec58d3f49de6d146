"""The snapshot: the rows a table already holds when capture starts, read through cassandra-driver as change batches.

Rows written before CDC was on never reach the commit log. A snapshot reads them with ``SELECT`` (driver
paging, one token range after another) and turns each CQL row into changes of the change-batch contract
(``cdc_assets.change_batch``), every cell with its own write time and expiry as Cassandra stores them. The
destinations merge cell by cell on write time, so the snapshot and the CDC stream converge whichever is loaded
first, and loading either twice changes nothing (DESIGN.md section 2).

What a CQL row becomes:

- A ``row`` change with the partition key, the clustering and a cell per regular column that has one:
  ``WRITETIME(col)`` in µs, and for an expiring cell ``TTL(col)`` and its expiry (below). A cell is there when
  its write time is: an empty value (zero bytes) is a live cell whose value is null, as in the reader.
- Static columns once per partition, as a ``static_row`` change. A partition with static cells and no rows
  (``SELECT`` returns it with null clustering columns) gives that change alone.
- Non-frozen collections and UDTs: Cassandra 5.0 returns ``WRITETIME``/``TTL`` of such a column as a list, one
  entry per element (CASSANDRA-8877; per field for a UDT, null for a field never written), in the order of the
  elements. Sets and maps: each element a cell whose path is its key, exactly the cell the CDC stream carries.
  UDTs: each written field a cell. No collection deletion is emitted: a snapshot sees only live cells.
- **Lists**: an element's path is a timeuuid Cassandra made up at write time and CQL never returns it. The
  snapshot gives each element a path of its own: a version-1 UUID whose time is the list's oldest element write
  time (in 100 ns units) plus the element's index, clock sequence and node fixed (:data:`LIST_PATH_NODE`, so a
  made-up path is recognisable). They keep the list's order, sort before elements appended later (an append's
  path is taken at its write time), and are the same on a re-run over the same list, so a second snapshot does
  not duplicate elements. They can never match the stream's real paths: an element the CDC stream also carries
  appears twice, and a removal by value or a ``SET l[i] = ...`` in the stream misses the snapshot's copy. An
  overwrite of the whole list (``SET l = [...]``, which deletes the collection) replaces them correctly.
- **Row liveness**: an ``INSERT`` also writes the row's own liveness, which has no ``WRITETIME`` and cannot be
  read. A row with at least one live regular cell is emitted without liveness: it is visible through its cells,
  as an ``UPDATE``-made row is, and disappears when they are deleted or expire together (an ``INSERT ... USING
  TTL``). Only if every one of its cells is later deleted one by one does Cassandra keep the bare row and a
  destination not. A row with no live regular cell is visible only through its liveness, so it gets one, at
  the read's server time (µs) and without TTL: a deletion executed later, with an ordinary timestamp, hides it,
  and an older deletion arriving from the stream (``USING TIMESTAMP`` in the past) does not. If that row was
  inserted with a TTL, a destination keeps it after Cassandra has let it expire.
- Counter columns cannot be snapshot (no ``WRITETIME`` on counters, and CQL returns a counter's total, not its
  shards): a counter table is refused with :class:`SnapshotError`.

The expiry of a cell is its *local deletion time* as Cassandra stores it: ``nowInSec + ttl`` of the write that
made it. ``TTL(col)`` returns ``localDeletionTime - nowInSec`` of the *read*, so the expiry is the read's
``nowInSec`` plus the TTL read, exact to the second only if that ``nowInSec`` is known exactly. Cassandra takes
it once per request, from ``currentTimeMillis() / 1000``, before reading; each row also selects
``toUnixTimestamp(current_timestamp())``, the same clock read later, while the page is built. The first row's
reading ``c`` (ms) lies at most the page's round trip (measured here) after ``nowInSec`` was taken, so when
``c % 1000`` is at least that round trip the two fell in the same second and ``nowInSec = c // 1000``. When
they may straddle a second boundary the page is fetched again (same paging state), up to
``SnapshotOptions.attempts`` times; pages without any expiring cell need no ``nowInSec`` and are never
fetched again. The original TTL cannot be read: a cell's ``ttl`` is the TTL left at the read.

Positions: snapshot changes come from no commit log. A snapshot has an id, its start in ms since the epoch
(:func:`new_snapshot_id`), and its changes carry it as ``_cdc_segment_id``; ``_cdc_position`` is the number
``n`` of their batch (from 1, counted over every table of the snapshot). Staged (``stage_snapshot``), batch ``n``
is a range of the pseudo-node :data:`SNAPSHOT_NODE` from ``(id, n - 1)`` to ``(id, n)``, so its load id is fixed
once staged: a load that is repeated is skipped by the destination's ledger, and a second snapshot is a new id
whose batches merge like any replay. A staged snapshot is never read again, so a batch id never names two
contents.

The driver's compiled result decoder rejects the null entries of a ``TTL()`` list (an element without TTL
beside one with); the snapshot's queries are decoded by the driver's pure-Python protocol handler, set on the
session for the duration of the read.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.cassandra_schema.types import CqlType
from cdc_assets.change_batch import KIND_ROW, KIND_STATIC_ROW, ChangeBatchBuilder
from cdc_assets.commitlog.generator.ordering import value_sort_key
from cdc_assets.commitlog.reader import Position
from cdc_assets.staging import StagedRange, position_name, stage_range

log = logging.getLogger(__name__)

#: The node name snapshot batches are staged under: not a valid node name, so never a real node's.
SNAPSHOT_NODE = "_snapshot"
#: The node field of the made-up list paths (the bytes of "snapsh", multicast bit set as RFC 4122 asks).
LIST_PATH_NODE = 0x736E61707368 | (1 << 40)
MURMUR3 = "org.apache.cassandra.dht.Murmur3Partitioner"
MIN_TOKEN = -(1 << 63)
MAX_TOKEN = (1 << 63) - 1
# 100 ns intervals between the Gregorian epoch (a version-1 UUID's) and the Unix epoch.
_UUID_EPOCH_OFFSET = 0x01B21DD213814000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_NOW = "now_ms"


class SnapshotError(Exception):
    """A snapshot that cannot be read; the message names the table and why."""


@dataclass(frozen=True)
class SnapshotOptions:
    """How a snapshot reads: rows per page, consistency, token ranges, rows per batch, page attempts."""

    #: Rows per page. Small pages keep the round trip short, and with it the share of pages whose server second
    #: is ambiguous and fetched again (1.4% at 1,000 rows, 26% at 5,000, measured on one local node).
    page_size: int = 1000
    #: A cassandra-driver ``ConsistencyLevel`` name.
    consistency: str = "LOCAL_QUORUM"
    #: The token ring is read in this many consecutive ranges, each logged as it completes.
    splits: int = 16
    #: Rows per change batch: what bounds memory, and the size of one staged range.
    batch_rows: int = 20_000
    #: Fetches of a page whose server second is ambiguous before the snapshot gives up.
    attempts: int = 8

    def __post_init__(self) -> None:
        for name in ("page_size", "splits", "batch_rows", "attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"snapshot option {name} must be at least 1 (got {getattr(self, name)})")
        _consistency(self.consistency)


@dataclass
class SnapshotStats:
    """What a snapshot read: what a data engineer asks first about it."""

    table: str
    rows: int = 0
    changes: int = 0
    #: Simple cells plus collection elements and UDT fields.
    cells: int = 0
    partitions: int = 0
    pages: int = 0
    #: Pages fetched again because the read's server second was ambiguous.
    refetched_pages: int = 0
    batches: int = 0
    seconds: float = 0.0

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def new_snapshot_id() -> int:
    """A snapshot's id: its start in ms since the epoch, so later snapshots sort after earlier ones."""
    return time.time_ns() // 1_000_000


def quote(name: str) -> str:
    """A Cassandra identifier, quoted as CQL requires."""
    return '"' + name.replace('"', '""') + '"'


def check_snapshot_table(table: TableSchema) -> None:
    """Refuse what a snapshot cannot read faithfully: counter tables."""
    counters = [c.name for c in table.value_columns if c.type.kind == "counter"]
    if counters:
        raise SnapshotError(
            f"{table.qualified_name}: counter column(s) {', '.join(counters)} cannot be snapshot: CQL has no "
            "WRITETIME for counters and returns their total, not the per-node shards a counter merges"
        )


def snapshot_query(table: TableSchema) -> str:
    """The paged query of one token range: keys, then each value column with its write time and TTL, then the
    server's clock (``?`` are the range's exclusive start and inclusive end tokens)."""
    selected = [quote(c.name) for c in table.primary_key]
    for column in table.value_columns:
        name = quote(column.name)
        selected += [name, f"WRITETIME({name})", f"TTL({name})"]
    selected.append(f"toUnixTimestamp(current_timestamp()) AS {_NOW}")
    token = f"token({', '.join(quote(c.name) for c in table.partition_key)})"
    return (
        f"SELECT {', '.join(selected)} FROM {quote(table.keyspace)}.{quote(table.name)} "
        f"WHERE {token} > ? AND {token} <= ?"
    )


def token_splits(count: int) -> list[tuple[int, int]]:
    """``count`` consecutive Murmur3 token ranges ``(start, end]`` covering the ring.

    Murmur3 never gives a key the minimum token (it maps it to the maximum), so ``(MIN, MAX]`` is every key.
    """
    width = (MAX_TOKEN - MIN_TOKEN) // count
    bounds = [MIN_TOKEN + i * width for i in range(count)] + [MAX_TOKEN]
    return list(itertools.pairwise(bounds))


def server_second(first_now_ms: int, round_trip_seconds: float) -> int | None:
    """The read's ``nowInSec``, from the first row's server clock reading and the page's round trip.

    ``nowInSec`` was taken at most the round trip before the reading: if the reading is at least that far into
    its second, both are in that second. Otherwise the second is ambiguous and None is returned.
    """
    # +1: the reading is truncated to the ms, and the round trip is rounded up.
    margin = math.ceil(round_trip_seconds * 1000) + 1
    return first_now_ms // 1000 if first_now_ms % 1000 >= margin else None


def list_path(oldest_writetime: int, index: int) -> str:
    """The made-up path of a list's ``index``-th element (see the module docstring)."""
    ticks = (oldest_writetime * 10 + _UUID_EPOCH_OFFSET + index) & ((1 << 60) - 1)
    fields = (ticks & 0xFFFFFFFF, (ticks >> 32) & 0xFFFF, ((ticks >> 48) & 0x0FFF) | 0x1000, 0x80, 0, LIST_PATH_NODE)
    return str(uuid.UUID(fields=fields))


# --------------------------------------------------------------------------------------------------
# Driver values → change-batch values


def batch_value(cql: CqlType, value: Any) -> Any:
    """A value as cassandra-driver returns it, in the form a change batch takes (``change_batch`` docstring)."""
    if value is None:
        return None
    kind = cql.kind
    if kind in ("varint", "decimal", "uuid", "timeuuid", "inet"):
        return str(value)
    if kind == "timestamp":
        return timestamp_ms(value)
    if kind == "date":
        return value.days_from_epoch  # cassandra.util.Date
    if kind == "time":
        return value.nanosecond_time  # cassandra.util.Time
    if kind == "duration":
        return (value.months, value.days, value.nanoseconds)
    if kind in ("list", "set", "vector"):
        return [batch_value(cql.args[0], item) for item in value]
    if kind == "map":
        key_type, value_type = cql.args
        return [(batch_value(key_type, k), batch_value(value_type, v)) for k, v in value.items()]
    if kind == "tuple":
        return {f"f{i}": batch_value(arg, item) for i, (arg, item) in enumerate(zip(cql.args, value, strict=False))}
    if kind == "udt":
        # The driver gives a named tuple whose field names may be renamed; positions are the schema's.
        items = list(value) + [None] * (len(cql.args) - len(value))
        return {name: batch_value(arg, item) for name, arg, item in zip(cql.field_names, cql.args, items, strict=True)}
    return value


def timestamp_ms(value: dt.datetime) -> int:
    """A driver timestamp as the exact milliseconds the node holds.

    The driver builds the datetime from ``ms / 1000.0``, a float: far from 1970 that lands a few microseconds
    below the true instant (9999-12-31T23:59:59.999 comes back as ...59.998993), and truncating it loses a
    millisecond. The float's error is far below half a millisecond anywhere in ``datetime``'s range, so
    rounding to the nearest millisecond gives the stored value back. A naive datetime is UTC, as the driver's.
    """
    aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    micros = (aware - _EPOCH) // dt.timedelta(microseconds=1)
    return (micros + 500) // 1000


# --------------------------------------------------------------------------------------------------
# CQL rows → changes


@dataclass(frozen=True)
class _Layout:
    """Where each column of :func:`snapshot_query`'s rows is."""

    keys: tuple[Column, ...]
    clustering: tuple[Column, ...]
    values: tuple[tuple[Column, int], ...]
    now: int

    @classmethod
    def of(cls, table: TableSchema) -> _Layout:
        keys, clustering = table.partition_key, table.clustering
        first = len(keys) + len(clustering)
        values = tuple((column, first + 3 * i) for i, column in enumerate(table.value_columns))
        return cls(keys, clustering, values, first + 3 * len(values))


def _expiry(ttl: int | None, now_s: int | None) -> int | None:
    if ttl is None:
        return None
    assert now_s is not None, "an expiring cell needs the read's server second"
    return now_s + ttl


# A set element's cell has no value field, only its path.
_NO_VALUE = object()


def _cell(value: Any, writetime: int, ttl: int | None, now_s: int | None, **path: Any) -> dict[str, Any]:
    cell = {**path, "writetime": writetime, "ttl": ttl, "expires_at": _expiry(ttl, now_s), "deleted": False}
    if value is not _NO_VALUE:
        cell["value"] = value
    return cell


def column_cells(column: Column, value: Any, writetime: Any, ttl: Any, now_s: int | None) -> tuple[Any, int]:
    """A value column's entry in a change (None when it has no cell), and how many cells it holds.

    ``value``, ``writetime`` and ``ttl`` are what the driver returned for the column, ``WRITETIME()`` and
    ``TTL()``: scalars, or for a non-frozen collection or UDT lists with one entry per element or field.
    """
    cql = column.type
    if writetime is None:
        return None, 0
    if not cql.is_complex:
        return _cell(batch_value(cql, value), writetime, ttl, now_s), 1
    ttls = list(ttl) if ttl is not None else [None] * len(writetime)
    if cql.kind == "udt":
        items = list(value) + [None] * (len(cql.args) - len(value))
        fields = {}
        for name, arg, item, wt, left in zip(cql.field_names, cql.args, items, writetime, ttls, strict=False):
            if wt is not None:
                fields[name] = _cell(batch_value(arg, item), wt, left, now_s)
        return ({"deletion": None, "cells": fields} if fields else None), len(fields)
    if cql.kind == "set":
        # The driver's sortedset is in Python's order; the write times are in the comparator's.
        members = sorted((batch_value(cql.args[0], item) for item in value), key=value_sort_key(cql.args[0]))
        elements = [
            _cell(_NO_VALUE, wt, left, now_s, path=member)
            for member, wt, left in zip(members, writetime, ttls, strict=True)
        ]
    elif cql.kind == "map":
        key_type, value_type = cql.args
        elements = [
            _cell(batch_value(value_type, v), wt, left, now_s, path=batch_value(key_type, k))
            for (k, v), wt, left in zip(value.items(), writetime, ttls, strict=True)
        ]
    else:
        oldest = min(writetime)
        elements = [
            _cell(batch_value(cql.args[0], item), wt, left, now_s, path=list_path(oldest, i))
            for i, (item, wt, left) in enumerate(zip(value, writetime, ttls, strict=True))
        ]
    return {"deletion": None, "cells": elements}, len(elements)


def _has_expiring_cell(layout: _Layout, row: Sequence[Any]) -> bool:
    """Whether a row needs the read's server second: some cell of it has a TTL."""
    for _, at in layout.values:
        ttl = row[at + 2]
        if ttl is not None and (not isinstance(ttl, list) or any(t is not None for t in ttl)):
            return True
    return False


# --------------------------------------------------------------------------------------------------
# Reading


@dataclass
class TableSnapshot:
    """One table's snapshot: :meth:`batches` reads it, :attr:`stats` counts what was read.

    ``session`` is a connected cassandra-driver ``Session``; ``table`` the table's definition (e.g. from
    ``cassandra_schema.driver.load_from_cluster``). Batches carry ``snapshot_id`` as their segment id and their
    number, counted from ``first_batch``, as their position.
    """

    session: Any
    table: TableSchema
    options: SnapshotOptions = field(default_factory=SnapshotOptions)
    snapshot_id: int = field(default_factory=new_snapshot_id)
    progress: Callable[[str], None] | None = None
    first_batch: int = 1
    stats: SnapshotStats = field(init=False)

    def __post_init__(self) -> None:
        check_snapshot_table(self.table)
        self.stats = SnapshotStats(self.table.qualified_name)
        self._layout = _Layout.of(self.table)
        self._builder = ChangeBatchBuilder(self.table)
        self._static_of: tuple[Any, ...] | None = None

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The table's changes, ``options.batch_rows`` CQL rows at most per batch."""
        started = time.perf_counter()
        partitioner = getattr(self.session.cluster.metadata, "partitioner", MURMUR3)
        if partitioner != MURMUR3:
            raise SnapshotError(
                f"{self.table.qualified_name}: token ranges are read as Murmur3's; the cluster uses {partitioner}"
            )
        with _pure_python_decoding(self.session):
            statement = self.session.prepare(snapshot_query(self.table))
            profile = self._profile()
            splits = token_splits(self.options.splits)
            rows_in_batch = 0
            for number, (start, end) in enumerate(splits, 1):
                for page in self._pages(statement, profile, start, end):
                    for row in page.rows:
                        self._add_row(row, page.now_s)
                        rows_in_batch += 1
                        if rows_in_batch >= self.options.batch_rows:
                            yield self._finish()
                            rows_in_batch = 0
                    self.stats.seconds = time.perf_counter() - started
                self._report(number, len(splits))
            if len(self._builder):
                yield self._finish()
        self.stats.seconds = time.perf_counter() - started

    def _profile(self) -> Any:
        from cassandra.cluster import EXEC_PROFILE_DEFAULT
        from cassandra.query import tuple_factory

        return self.session.execution_profile_clone_update(
            EXEC_PROFILE_DEFAULT, row_factory=tuple_factory, consistency_level=_consistency(self.options.consistency)
        )

    def _pages(self, statement: Any, profile: Any, start: int, end: int) -> Iterator[_Page]:
        bound = statement.bind((start, end))
        bound.fetch_size = self.options.page_size
        paging_state = None
        while True:
            page = self._fetch(bound, profile, paging_state)
            yield page
            paging_state = page.paging_state
            if paging_state is None:
                return

    def _fetch(self, bound: Any, profile: Any, paging_state: bytes | None) -> _Page:
        for _ in range(self.options.attempts):
            sent = time.monotonic()
            result = self.session.execute(bound, paging_state=paging_state, execution_profile=profile)
            round_trip = time.monotonic() - sent
            rows = result.current_rows
            self.stats.pages += 1
            if not rows:
                return _Page(rows, None, result.paging_state)
            now_s = server_second(rows[0][self._layout.now], round_trip)
            if now_s is not None or not any(_has_expiring_cell(self._layout, row) for row in rows):
                return _Page(rows, now_s, result.paging_state)
            self.stats.refetched_pages += 1
        raise SnapshotError(
            f"{self.table.qualified_name}: the server second of a page's TTLs stayed ambiguous in "
            f"{self.options.attempts} fetches (round trips near a second): use a smaller page_size"
        )

    def _add_row(self, row: Sequence[Any], now_s: int | None) -> None:
        layout = self._layout
        self.stats.rows += 1
        key_values = tuple(row[: len(layout.keys)])
        key = {c.name: batch_value(c.type, v) for c, v in zip(layout.keys, key_values, strict=True)}
        if key_values != self._static_of:
            self._static_of = key_values
            self.stats.partitions += 1
            self._add_change(KIND_STATIC_ROW, key, None, self._cells(row, now_s, static=True), None)
        clustering_values = row[len(layout.keys) : len(layout.keys) + len(layout.clustering)]
        if layout.clustering and all(v is None for v in clustering_values):
            return  # a partition with static cells and no row
        clustering = {c.name: batch_value(c.type, v) for c, v in zip(layout.clustering, clustering_values, strict=True)}
        cells = self._cells(row, now_s, static=False)
        # No live regular cell: the row is live through its liveness, which CQL does not return (docstring).
        liveness = None if cells else row[layout.now] * 1000
        self._add_change(KIND_ROW, key, clustering, cells, liveness)

    def _cells(self, row: Sequence[Any], now_s: int | None, *, static: bool) -> dict[str, Any]:
        cells = {}
        for column, at in self._layout.values:
            if (column.kind == "static") != static:
                continue
            entry, count = column_cells(column, row[at], row[at + 1], row[at + 2], now_s)
            if entry is not None:
                cells[column.name] = entry
                self.stats.cells += count
        return cells

    def _add_change(
        self, kind: str, key: dict, clustering: dict | None, cells: dict[str, Any], liveness: int | None
    ) -> None:
        if not cells and liveness is None:
            return
        change = {"kind": kind, "key": key, "clustering": clustering, "cells": cells or None, "row_writetime": liveness}
        self._builder.append(self.snapshot_id, self.first_batch + self.stats.batches, change)
        self.stats.changes += 1

    def _finish(self) -> pa.RecordBatch:
        self.stats.batches += 1
        return self._builder.finish()

    def _report(self, number: int, splits: int) -> None:
        stats = self.stats
        message = (
            f"snapshot {stats.table}: token range {number}/{splits} done; {stats.rows:,} rows, {stats.pages:,} "
            f"pages ({stats.refetched_pages} fetched again), {stats.rows_per_second:,.0f} rows/s"
        )
        log.info(message)
        if self.progress is not None:
            self.progress(message)


@dataclass(frozen=True)
class _Page:
    rows: list[Sequence[Any]]
    now_s: int | None
    paging_state: bytes | None


@contextmanager
def _pure_python_decoding(session: Any) -> Iterator[None]:
    """The session decodes results with the driver's pure-Python handler while the snapshot reads."""
    from cassandra.protocol import _ProtocolHandler

    previous = session.client_protocol_handler
    session.client_protocol_handler = _ProtocolHandler
    try:
        yield
    finally:
        session.client_protocol_handler = previous


def _consistency(name: str) -> int:
    from cassandra import ConsistencyLevel

    level = ConsistencyLevel.name_to_value.get(name.upper())
    if level is None:
        known = ", ".join(sorted(ConsistencyLevel.name_to_value))
        raise ValueError(f"snapshot option consistency: unknown consistency level {name!r} (one of {known})")
    return level


# --------------------------------------------------------------------------------------------------
# Staging


@dataclass
class StagedSnapshot:
    """A snapshot staged as ranges of :data:`SNAPSHOT_NODE`, with what was read of each table."""

    snapshot_id: int
    ranges: list[StagedRange]
    stats: dict[str, SnapshotStats]


def stage_snapshot(
    root: str | os.PathLike[str],
    partition: str,
    session: Any,
    tables: Sequence[TableSchema],
    options: SnapshotOptions = SnapshotOptions(),
    *,
    mask: Callable[[TableSchema, pa.RecordBatch], tuple[TableSchema, pa.RecordBatch]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> StagedSnapshot:
    """Read ``tables`` and stage every batch as a range of :data:`SNAPSHOT_NODE` in window ``partition``.

    Batch ``n`` (from 1, counted over all tables) is the range from ``(snapshot id, n - 1)`` to
    ``(snapshot id, n)``; ``mask`` (e.g. the pipeline's masking) is applied before staging. If the read fails,
    the ranges it staged are removed: a snapshot is staged whole or not at all.
    """
    for table in tables:
        check_snapshot_table(table)
    snapshot_id = _unused_id(Path(root))
    staged: list[StagedRange] = []
    stats: dict[str, SnapshotStats] = {}
    try:
        for table in tables:
            reader = TableSnapshot(session, table, options, snapshot_id, progress, first_batch=len(staged) + 1)
            stats[table.qualified_name] = reader.stats
            for batch in reader.batches():
                schema, masked = mask(table, batch) if mask is not None else (table, batch)
                number = len(staged) + 1
                staged.append(
                    stage_range(
                        root,
                        SNAPSHOT_NODE,
                        partition,
                        Position(snapshot_id, number - 1),
                        Position(snapshot_id, number),
                        Position(snapshot_id, number),
                        {table.qualified_name: (schema, masked)},
                    )
                )
    except BaseException:
        for done in staged:
            shutil.rmtree(done.directory, ignore_errors=True)
        raise
    return StagedSnapshot(snapshot_id, staged, stats)


def _unused_id(root: Path) -> int:
    """A new snapshot id no staged snapshot has (two snapshots started in the same ms get different ones)."""
    snapshot_id = new_snapshot_id()
    while any((root / SNAPSHOT_NODE).glob(f"*/{position_name(Position(snapshot_id, 0))}")):
        snapshot_id += 1
    return snapshot_id
