"""Workloads: a stream of realistic CQL writes, logged into ``cdc_raw`` segments as Cassandra nodes log them.

:func:`generate` draws mutations (inserts, partial updates, cell/row/range/partition deletions, static
writes, collection operations, small batches, TTLs) for the given tables, writes each one to the nodes
that replicate its partition, rolls segments when they fill up, syncs them (advancing the idx) every N
mutations or every X ms of write time, and keeps the change dicts a reader must give back, with their
(segment id, position), so tests can compare.
"""

from __future__ import annotations

import dataclasses
import heapq
import os
import random
import re
import time
import uuid
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.cassandra_schema.types import parse_type
from cdc_assets.change_batch import KIND_PARTITION_DELETION, KIND_RANGE_DELETION, KIND_ROW, KIND_STATIC_ROW
from cdc_assets.commitlog.compression import short_name
from cdc_assets.commitlog.generator.cql_values import DEFAULT_COUNTER_ID
from cdc_assets.commitlog.generator.encoding import MESSAGING_VERSIONS, canonical_change, encode_mutation
from cdc_assets.commitlog.generator.ordering import (
    CLUSTERING,
    EXCL_END_BOUND,
    INCL_END_BOUND,
    ClusteringOrder,
    sort_unique,
)
from cdc_assets.commitlog.generator.random_values import RandomValues, time_uuid
from cdc_assets.commitlog.generator.segment_writer import DEFAULT_SEGMENT_SIZE, SegmentWriter

Change = dict[str, Any]
Update = tuple[TableSchema, list[Change]]

_SEGMENT_NAME = re.compile(r"^CommitLog-\d+-(-?\d+)\.log$")
_KIND_RANK = {KIND_PARTITION_DELETION: 0, KIND_STATIC_ROW: 1, KIND_ROW: 2, KIND_RANGE_DELETION: 2}
_TTL_RANGE = (60, 7 * 86_400)
_ROWS_KEPT_PER_PARTITION = 16


@dataclass(frozen=True)
class OperationMix:
    """Relative weights of the operations a workload draws (a weight of 0 turns one off)."""

    insert: float = 40
    update: float = 25
    cell_delete: float = 4
    row_delete: float = 5
    range_delete: float = 2
    partition_delete: float = 1
    static_write: float = 5
    collection: float = 10
    batch: float = 8

    def weights(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Workload:
    """What to generate and how to log it.

    ``mutations`` counts logical writes (before RF copies); with ``seconds`` set, generation stops at
    whichever comes first. ``rate`` is in mutations per second of wall time (0 = as fast as possible,
    on a simulated clock starting at ``start_timestamp_us``). ``replicas`` copies of every mutation are
    written: to that many of the ``cdc_raw`` directories (one per node, chosen by the partition key),
    or, with a single directory, interleaved into it. A segment is synced every ``sync_every``
    mutations or ``sync_period_ms`` of write time, whichever comes first.

    ``simulated_rate`` lays the write times on a simulated clock of exactly that many mutations per second
    from ``start_timestamp_us`` (mutation ``n`` at ``start + n * 1e6 / simulated_rate`` µs), without
    sleeping: a workload generated ahead of time, to be replayed at that pace. ``seconds`` then counts
    simulated time.
    """

    seed: int = 0
    mutations: int | None = 1000
    seconds: float | None = None
    rate: float = 0.0
    simulated_rate: float = 0.0
    mix: OperationMix = field(default_factory=OperationMix)
    ttl_fraction: float = 0.1
    partitions: int = 1000
    replicas: int = 1
    segment_size: int = DEFAULT_SEGMENT_SIZE
    version: int = 7
    compression: str | None = None
    preallocate: bool = True
    sync_every: int = 1000
    sync_period_ms: float = 1000.0
    start_timestamp_us: int | None = None
    first_segment_id: int | None = None
    close_last_segment: bool = True
    keep_changes: bool = True

    def __post_init__(self) -> None:
        if self.mutations is None and self.seconds is None:
            raise ValueError("a workload needs mutations or seconds")
        if self.version not in MESSAGING_VERSIONS:
            raise ValueError(f"version must be one of {sorted(MESSAGING_VERSIONS)}, got {self.version}")
        if self.replicas < 1 or self.partitions < 1 or self.sync_every < 1:
            raise ValueError("replicas, partitions and sync_every must be at least 1")
        if self.rate < 0 or not 0 <= self.ttl_fraction <= 1:
            raise ValueError("rate must be >= 0 and ttl_fraction within [0, 1]")
        if self.simulated_rate < 0 or (self.simulated_rate > 0 and self.rate > 0):
            raise ValueError("simulated_rate must be >= 0, and not set together with rate")
        if self.compression is not None:
            short_name(self.compression)


@dataclass
class SegmentSummary:
    """One segment a workload wrote."""

    node: int
    path: Path
    segment_id: int
    entries: int
    sections: int
    bytes_written: int
    durable_position: int
    completed: bool

    def describe(self) -> str:
        state = "COMPLETED" if self.completed else "open"
        return (
            f"{self.path} node={self.node} entries={self.entries} sections={self.sections} "
            f"bytes={self.bytes_written} idx={self.durable_position} {state}"
        )


@dataclass
class GeneratedLog:
    """What :func:`generate` wrote, and the changes a reader of each node's segments must find."""

    segments: list[SegmentSummary] = field(default_factory=list)
    mutations: int = 0
    entries: int = 0
    operations: dict[str, int] = field(default_factory=dict)
    _changes: dict[tuple[int, str], list[Change]] = field(default_factory=dict, repr=False)

    def changes(self, table: str, node: int = 0) -> list[Change]:
        """Change dicts of ``keyspace.table`` in node ``node``'s log, in log order, with segment id and position."""
        return self._changes.get((node, table), [])


def realistic_table() -> TableSchema:
    """``shop.orders``: the mixed-type table the benchmarks and the embedded default run on."""
    columns = [
        ("order_id", "uuid", "partition_key", 0),
        ("created_at", "timestamp", "clustering", 0),
        ("customer", "text", "regular", -1),
        ("quantity", "int", "regular", -1),
        ("total_cents", "bigint", "regular", -1),
        ("price", "decimal", "regular", -1),
        ("paid", "boolean", "regular", -1),
        ("weight_kg", "double", "regular", -1),
        ("tags", "set<text>", "regular", -1),
    ]
    return TableSchema(
        keyspace="shop",
        name="orders",
        id=uuid.UUID("5a1e5a1e-0000-4000-8000-000000000001"),
        columns=tuple(Column(name, parse_type(cql), kind, position) for name, cql, kind, position in columns),  # type: ignore[arg-type]
    )


REALISTIC_TABLE_CQL = """CREATE KEYSPACE IF NOT EXISTS shop
    WITH replication = {'class': 'NetworkTopologyStrategy', 'datacenter1': 3};
CREATE TABLE IF NOT EXISTS shop.orders (
    order_id uuid,
    created_at timestamp,
    customer text,
    quantity int,
    total_cents bigint,
    price decimal,
    paid boolean,
    weight_kg double,
    tags set<text>,
    PRIMARY KEY (order_id, created_at)
) WITH cdc = true AND ID = 5a1e5a1e-0000-4000-8000-000000000001;
"""


# ---------------------------------------------------------------------------------------------------
# Drawing operations


class _TableState:
    """The partitions and rows written so far, so that updates and deletes hit existing data."""

    def __init__(self, table: TableSchema):
        self.table = table
        self.order = ClusteringOrder(table.clustering)
        self.partitions: list[dict[str, Any]] = []
        self.rows: dict[int, list[dict[str, Any]]] = {}
        self.counters: dict[tuple[int, str, str], int] = {}
        self.statics = list(table.statics)
        self.regulars = list(table.regulars)
        self.complex = [c for c in table.regulars if c.type.is_complex]
        self.is_counter = any(c.type.kind == "counter" for c in table.value_columns)


class _Operations:
    """Builds one mutation's changes per operation kind, at write time ``ts`` (µs)."""

    def __init__(self, workload: Workload, values: RandomValues):
        self.workload = workload
        self.values = values
        self.rng = values.rng

    # -- keys ---------------------------------------------------------------------------------------

    def partition(self, state: _TableState) -> tuple[int, dict[str, Any]]:
        rng = self.rng
        if len(state.partitions) < self.workload.partitions and (not state.partitions or rng.random() < 0.5):
            state.partitions.append({c.name: self.values.value(c.type) for c in state.table.partition_key})
        index = rng.randrange(len(state.partitions))
        return index, state.partitions[index]

    def new_clustering(self, state: _TableState, partition: int) -> dict[str, Any]:
        clustering = {c.name: self.values.value(c.type) for c in state.table.clustering}
        rows = state.rows.setdefault(partition, [])
        if len(rows) >= _ROWS_KEPT_PER_PARTITION:
            rows.pop(self.rng.randrange(len(rows)))
        rows.append(clustering)
        return clustering

    def some_clustering(self, state: _TableState, partition: int) -> dict[str, Any]:
        rows = state.rows.get(partition)
        if rows and self.rng.random() < 0.8:
            return self.rng.choice(rows)
        return self.new_clustering(state, partition)

    # -- cells --------------------------------------------------------------------------------------

    def ttl(self, ts: int) -> tuple[int | None, int | None]:
        if self.rng.random() >= self.workload.ttl_fraction:
            return None, None
        ttl = self.rng.randint(*_TTL_RANGE)
        return ttl, ts // 1_000_000 + ttl

    def cell(self, value: Any, ts: int, ttl: int | None, expires_at: int | None) -> dict[str, Any]:
        return {"value": value, "writetime": ts, "ttl": ttl, "expires_at": expires_at, "deleted": False}

    @staticmethod
    def tombstone(ts: int) -> dict[str, Any]:
        return {"value": None, "writetime": ts, "ttl": None, "expires_at": None, "deleted": True}

    def elements(self, column: Column, ts: int, ttl: int | None, expires_at: int | None) -> Any:
        """New elements of a complex column, each a cell written at ``ts``."""
        cql = column.type
        rng = self.rng
        count = rng.randint(1, 3)
        if cql.kind == "udt":
            names = rng.sample(cql.field_names, rng.randint(1, len(cql.field_names)))
            return {
                name: self.cell(self.values.value(arg), ts, ttl, expires_at)
                for name, arg in zip(cql.field_names, cql.args)
                if name in names
            }
        if cql.kind == "list":
            return [
                {"path": time_uuid(ts, rng, i), **self.cell(self.values.value(cql.args[0]), ts, ttl, expires_at)}
                for i in range(count)
            ]
        keys = sort_unique(cql.args[0], [self.values.value(cql.args[0]) for _ in range(count)])
        if cql.kind == "set":
            return [{"path": key, **_without_value(self.cell(None, ts, ttl, expires_at))} for key in keys]
        return [{"path": key, **self.cell(self.values.value(cql.args[1]), ts, ttl, expires_at)} for key in keys]

    def removals(self, column: Column, ts: int) -> Any:
        """Tombstones for elements of a complex column (``DELETE c[k]``, ``c = c - {...}``)."""
        cql = column.type
        if cql.kind == "udt":
            return {self.rng.choice(cql.field_names): self.tombstone(ts)}
        if cql.kind == "list":
            # The coordinator deletes an element by its existing path: one written some time before.
            return [{"path": time_uuid(ts - self.rng.randint(1, 10**9), self.rng), **self.tombstone(ts)}]
        key = self.values.value(cql.args[0])
        cell = self.tombstone(ts)
        return [{"path": key, **(_without_value(cell) if cql.kind == "set" else cell)}]

    def column_value(self, column: Column, ts: int, ttl: int | None, expires: int | None) -> Any:
        if column.type.is_complex:
            # Setting a whole collection overwrites it: a deletion just before the write, then the elements.
            return {"deletion": ts - 1, "cells": self.elements(column, ts, ttl, expires)}
        return self.cell(self.values.value(column.type), ts, ttl, expires)

    def counter_cell(
        self, state: _TableState, partition: int, clustering: Mapping[str, Any], name: str, ts: int
    ) -> dict[str, Any]:
        key = (partition, repr(tuple(clustering.values())), name)
        total = state.counters.get(key, 0) + self.rng.randint(-100, 1000)
        state.counters[key] = total
        # The leader logs its own shard: its running count, with its clock (here the write time).
        shards = [(DEFAULT_COUNTER_ID.bytes, ts, total)]
        return {"value": shards, "writetime": ts, "ttl": None, "expires_at": None, "deleted": False}

    # -- operations ---------------------------------------------------------------------------------

    def build(self, operation: str, state: _TableState, ts: int) -> list[Change] | None:
        """The changes of one operation, or None when the table cannot take it."""
        partition, key = self.partition(state)
        return getattr(self, f"_{operation}")(state, partition, key, ts)

    def _insert(self, state: _TableState, partition: int, key: dict, ts: int) -> list[Change] | None:
        if state.is_counter:
            return self._update(state, partition, key, ts)
        ttl, expires = self.ttl(ts)
        change: Change = {"kind": KIND_ROW, "key": key, "clustering": self.new_clustering(state, partition)}
        change["row_writetime"] = ts
        if ttl is not None:
            change["row_ttl"], change["row_expires_at"] = ttl, expires
        cells = {}
        for column in state.regulars:
            roll = self.rng.random()
            if roll < 0.05 and not column.type.is_complex:
                cells[column.name] = self.tombstone(ts)
            elif roll < 0.9:
                cells[column.name] = self.column_value(column, ts, ttl, expires)
        if cells:
            change["cells"] = cells
        changes = [change]
        if state.statics and self.rng.random() < 0.3:
            statics = {c.name: self.column_value(c, ts, ttl, expires) for c in state.statics}
            changes.append({"kind": KIND_STATIC_ROW, "key": key, "cells": statics})
        return changes

    def _update(self, state: _TableState, partition: int, key: dict, ts: int) -> list[Change] | None:
        if not state.regulars:
            return None
        clustering = self.some_clustering(state, partition)
        columns = self.rng.sample(state.regulars, self.rng.randint(1, len(state.regulars)))
        if state.is_counter:
            cells = {c.name: self.counter_cell(state, partition, clustering, c.name, ts) for c in columns}
        else:
            ttl, expires = self.ttl(ts)
            cells = {c.name: self.column_value(c, ts, ttl, expires) for c in columns}
        return [{"kind": KIND_ROW, "key": key, "clustering": clustering, "cells": cells}]

    def _cell_delete(self, state: _TableState, partition: int, key: dict, ts: int) -> list[Change] | None:
        if not state.regulars:
            return None
        columns = self.rng.sample(state.regulars, self.rng.randint(1, min(2, len(state.regulars))))
        cells = {c.name: {"deletion": ts, "cells": []} if c.type.is_complex else self.tombstone(ts) for c in columns}
        return [{"kind": KIND_ROW, "key": key, "clustering": self.some_clustering(state, partition), "cells": cells}]

    def _row_delete(self, state: _TableState, partition: int, key: dict, ts: int) -> list[Change] | None:
        clustering = self.some_clustering(state, partition)
        return [
            {
                "kind": KIND_ROW,
                "key": key,
                "clustering": clustering,
                "deletion_writetime": ts,
                "deletion_time": ts // 1_000_000,
            }
        ]

    def _range_delete(self, state: _TableState, partition: int, key: dict, ts: int) -> list[Change] | None:
        clustering = state.table.clustering
        if not clustering:
            return None
        rng = self.rng
        first, second = self.some_clustering(state, partition), self.some_clustering(state, partition)
        size = rng.randint(1, len(clustering))
        low = tuple(first[c.name] for c in clustering[:size])
        high = tuple(second[c.name] for c in clustering[:size])
        order = state.order.compare((low, CLUSTERING), (high, CLUSTERING))
        if order > 0:
            low, high = high, low
        shape = rng.random()
        start, end = _bound(clustering, low), _bound(clustering, high)
        start_inclusive, end_inclusive = rng.random() < 0.5, rng.random() < 0.5
        if order == 0 or (shape < 0.3 and size < len(clustering)):
            # WHERE c1 = x (a clustering prefix): both bounds on the same prefix, both inclusive.
            end, start_inclusive, end_inclusive = start, True, True
        elif shape < 0.45:
            start, start_inclusive = None, True
        elif shape < 0.6:
            end, end_inclusive = None, True
        return [
            {
                "kind": KIND_RANGE_DELETION,
                "key": key,
                "deletion_writetime": ts,
                "deletion_time": ts // 1_000_000,
                "range_start": start,
                "range_start_inclusive": start_inclusive,
                "range_end": end,
                "range_end_inclusive": end_inclusive,
            }
        ]

    def _partition_delete(self, state: _TableState, partition: int, key: dict, ts: int) -> list[Change] | None:
        state.rows.pop(partition, None)
        return [
            {"kind": KIND_PARTITION_DELETION, "key": key, "deletion_writetime": ts, "deletion_time": ts // 1_000_000}
        ]

    def _static_write(self, state: _TableState, partition: int, key: dict, ts: int) -> list[Change] | None:
        if not state.statics:
            return None
        columns = self.rng.sample(state.statics, self.rng.randint(1, len(state.statics)))
        ttl, expires = self.ttl(ts)
        return [
            {
                "kind": KIND_STATIC_ROW,
                "key": key,
                "cells": {c.name: self.column_value(c, ts, ttl, expires) for c in columns},
            }
        ]

    def _collection(self, state: _TableState, partition: int, key: dict, ts: int) -> list[Change] | None:
        if not state.complex:
            return None
        column = self.rng.choice(state.complex)
        action = self.rng.random()
        if action < 0.5:
            ttl, expires = self.ttl(ts)
            data = {"deletion": None, "cells": self.elements(column, ts, ttl, expires)}
        elif action < 0.8:
            data = {"deletion": None, "cells": self.removals(column, ts)}
        else:
            data = self.column_value(column, ts, None, None)
        clustering = self.some_clustering(state, partition)
        return [{"kind": KIND_ROW, "key": key, "clustering": clustering, "cells": {column.name: data}}]

    def _batch(self, state: _TableState, partition: int, key: dict, ts: int) -> list[Change] | None:
        if not state.table.clustering:
            return None
        changes: list[Change] = []
        for _ in range(self.rng.randint(2, 4)):
            part = (self._insert if self.rng.random() < 0.6 else self._update)(state, partition, key, ts)
            for change in part or ():
                # One row (or static row) appears once in a partition update: a later statement on it is dropped.
                if not any(_same_row(state, change, other) for other in changes):
                    changes.append(change)
        return changes


def _same_row(state: _TableState, change: Change, other: Change) -> bool:
    if change["kind"] != other["kind"]:
        return False
    if change["kind"] == KIND_STATIC_ROW:
        return True
    names = [c.name for c in state.table.clustering]
    left = (tuple(change["clustering"][n] for n in names), CLUSTERING)
    right = (tuple(other["clustering"][n] for n in names), CLUSTERING)
    return state.order.compare(left, right) == 0


def _bound(clustering: Sequence[Column], prefix: tuple[Any, ...]) -> dict[str, Any]:
    return {c.name: prefix[i] if i < len(prefix) else None for i, c in enumerate(clustering)}


def _without_value(cell: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in cell.items() if name != "value"}


# ---------------------------------------------------------------------------------------------------
# Writing to nodes


class _Node:
    """One node's commit log: the segment being written, rolled when full."""

    def __init__(
        self,
        index: int,
        directory: Path,
        workload: Workload,
        log: GeneratedLog,
        on_segment: Callable[[SegmentSummary], None] | None,
    ):
        self.index = index
        self.directory = directory
        self.workload = workload
        self.log = log
        self.on_segment = on_segment
        self.next_id = workload.first_segment_id if workload.first_segment_id is not None else _id_base(directory)
        self.writer: SegmentWriter | None = None
        self.since_sync = 0
        self.last_sync_us: int | None = None

    def append(self, mutation: bytes, ts: int) -> tuple[int, int]:
        """Write one entry (rolling to a new segment if needed); returns (segment id, position)."""
        writer = self.writer
        if writer is not None and not writer.has_room(len(mutation)):
            self.finish_segment()
            writer = None
        if writer is None:
            writer = self.writer = self.open_segment()
        position = writer.append(mutation)
        self.since_sync += 1
        if self.last_sync_us is None:
            self.last_sync_us = ts
        self.log.entries += 1
        if self.since_sync >= self.workload.sync_every or ts - self.last_sync_us >= self.workload.sync_period_ms * 1000:
            self.sync(ts)
        return writer.segment_id, position

    def sync(self, ts: int | None = None) -> None:
        if self.writer is None:
            return
        self.writer.sync()
        self.since_sync = 0
        self.last_sync_us = ts
        if self.writer.closed:
            # The sync found no room for the next sync marker, which closes the segment.
            self.finish_segment()

    def open_segment(self) -> SegmentWriter:
        workload = self.workload
        writer = SegmentWriter(
            self.directory,
            self.next_id,
            workload.version,
            workload.compression,
            workload.segment_size,
            workload.preallocate,
        )
        self.next_id += 1
        return writer

    def finish_segment(self, close: bool = True) -> None:
        writer = self.writer
        if writer is None:
            return
        if close:
            writer.close()
        else:
            writer.sync()
        self.writer = None
        summary = SegmentSummary(
            self.index,
            writer.path,
            writer.segment_id,
            writer.entries,
            writer.sections,
            writer.bytes_written,
            writer.durable_position,
            writer.closed,
        )
        self.log.segments.append(summary)
        if self.on_segment is not None:
            self.on_segment(summary)


def _id_base(directory: Path) -> int:
    """``AbstractCommitLogSegmentManager``: ids start past both the clock and every id already there."""
    existing = [int(m.group(1)) for name in os.listdir(directory) if (m := _SEGMENT_NAME.match(name))]
    return max(int(time.time() * 1000), max(existing, default=0) + 1) + 1


def _log_order(state: _TableState, changes: list[Change]) -> list[Change]:
    """Changes in the order a reader finds them: partition deletion, static row, then clustering order."""
    sort_key = state.order.sort_key()
    table = state.table

    def position(change: Change) -> tuple[int, Any]:
        kind = change["kind"]
        if kind == KIND_ROW:
            values = tuple(change.get("clustering", {})[c.name] for c in table.clustering)
            return _KIND_RANK[kind], sort_key((values, CLUSTERING))
        if kind == KIND_RANGE_DELETION:
            end = change["range_end"]
            values = () if end is None else tuple(end[c.name] for c in table.clustering if end[c.name] is not None)
            bound = INCL_END_BOUND if end is None or change["range_end_inclusive"] else EXCL_END_BOUND
            return _KIND_RANK[kind], sort_key((values, bound))
        return _KIND_RANK[kind], sort_key(((), CLUSTERING))

    return sorted(changes, key=position)


def _replica_nodes(key: Mapping[str, Any], nodes: int, replicas: int) -> list[int]:
    """The nodes holding a partition: ``replicas`` consecutive ones from a place derived from the key."""
    start = zlib.crc32(repr(sorted(key.items())).encode()) % nodes
    return [(start + i) % nodes for i in range(replicas)]


def generate(
    schema_tables: Sequence[TableSchema],
    workload: Workload,
    cdc_raw_dirs: Sequence[str | os.PathLike[str]],
    *,
    on_segment: Callable[[SegmentSummary], None] | None = None,
) -> GeneratedLog:
    """Write ``workload`` for ``schema_tables`` into the ``cdc_raw`` directories, one per node.

    With one directory and ``replicas`` > 1, each mutation's copies are interleaved into that one log a
    few mutations apart (as hints or repair deliver them again). ``on_segment`` is called with each
    segment once it is finished.
    """
    if not schema_tables:
        raise ValueError("generate needs at least one table")
    directories = [Path(d) for d in cdc_raw_dirs]
    if not directories:
        raise ValueError("generate needs at least one cdc_raw directory")
    interleave = len(directories) == 1 and workload.replicas > 1
    if not interleave and workload.replicas > len(directories):
        raise ValueError(f"{workload.replicas} replicas need as many cdc_raw directories, got {len(directories)}")
    for directory in directories:
        directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(workload.seed)
    start_us = workload.start_timestamp_us if workload.start_timestamp_us is not None else time.time_ns() // 1000
    operations = _Operations(workload, RandomValues(rng, start_us // 1000))
    states = [_TableState(table) for table in schema_tables]
    kinds, weights = zip(*((k, w) for k, w in workload.mix.weights().items() if w > 0))
    log = GeneratedLog()
    nodes = [_Node(i, d, workload, log, on_segment) for i, d in enumerate(directories)]
    # Interleaved copies, due after a later mutation: (due count, sequence, mutation, expected changes).
    delayed: list[tuple[int, int, bytes, list[tuple[_TableState, list[Change]]]]] = []
    started = time.monotonic()
    ts = start_us
    count = 0

    def write(node: _Node, mutation: bytes, updates: list[tuple[_TableState, list[Change]]], ts: int) -> None:
        segment_id, position = node.append(mutation, ts)
        for state, changes in updates:
            expected = log._changes.setdefault((node.index, state.table.qualified_name), [])
            expected.extend({**change, "segment_id": segment_id, "position": position} for change in changes)

    while workload.mutations is None or count < workload.mutations:
        elapsed = count / workload.simulated_rate if workload.simulated_rate else time.monotonic() - started
        if workload.seconds is not None and elapsed >= workload.seconds:
            break
        if workload.simulated_rate > 0:
            ts = start_us + int(count * 1_000_000 / workload.simulated_rate)
        elif workload.rate > 0:
            delay = started + count / workload.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            ts = max(ts + 1, time.time_ns() // 1000)
        else:
            ts += rng.randint(1, 1000)
        state = rng.choice(states)
        operation = rng.choices(kinds, weights)[0]
        changes = operations.build(operation, state, ts)
        for fallback in ("insert", "static_write"):
            if not changes:
                operation = fallback
                changes = operations.build(operation, state, ts)
        if not changes:
            raise ValueError(f"{state.table.qualified_name} takes none of the workload's operations")
        log.operations[operation] = log.operations.get(operation, 0) + 1
        mutation = encode_mutation([(state.table, changes)], workload.version)
        expected = []
        if workload.keep_changes:
            expected = [(state, _log_order(state, [canonical_change(state.table, c) for c in changes]))]
        count += 1
        log.mutations = count
        if interleave:
            write(nodes[0], mutation, expected, ts)
            for _ in range(workload.replicas - 1):
                heapq.heappush(delayed, (count + rng.randint(1, 8), len(log.operations) + count, mutation, expected))
            while delayed and delayed[0][0] <= count:
                _, _, copy, copy_expected = heapq.heappop(delayed)
                write(nodes[0], copy, copy_expected, ts)
        else:
            for index in _replica_nodes(changes[0]["key"], len(nodes), workload.replicas):
                write(nodes[index], mutation, expected, ts)
    while delayed:
        _, _, copy, copy_expected = heapq.heappop(delayed)
        write(nodes[0], copy, copy_expected, ts)
    for node in nodes:
        node.finish_segment(close=workload.close_last_segment)
    return log
