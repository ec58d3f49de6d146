"""Staged change batches: the replayable record of what each micro-batch read, kept for backfills.

One *staged range* is what one live run read from one node: the change batches of every captured table
(after masking), from just after ``after`` up to ``position``, written as Arrow IPC files (zstd) beside a
``range.json`` that names the range, the table definitions the batches were decoded with, and what they
hold. Arrow IPC and not Parquet: change batches carry durations (month-day-nano intervals), which Parquet
cannot hold.

    <root>/<node>/<partition>/<after>/range.json
    <root>/<node>/<partition>/<after>/<keyspace.table>.arrow

A range appears all at once (it is written under a temporary name and renamed), so a run killed while
staging leaves nothing a reader could take for a range. A range is identified by its node and ``after``:
staging the same ``after`` again (a retry of a failed run) replaces whatever an earlier attempt left.
Nothing here knows about Dagster.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cdc_assets import change_batch as cb
from cdc_assets.cassandra_schema.tables import TableSchema, table_from_dict, table_to_dict
from cdc_assets.commitlog.reader import Position

RANGE_FILE = "range.json"
START = "start"
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")


def position_name(position: Position | None) -> str:
    """A position as a directory name that sorts in log order (``start`` before every position)."""
    return START if position is None else f"{position.segment_id:020d}-{position.offset:010d}"


def parse_position_name(name: str) -> Position | None:
    if name == START:
        return None
    segment, _, offset = name.partition("-")
    return Position(int(segment), int(offset))


def position_text(position: Position | None) -> str | None:
    return None if position is None else str(position)


def parse_position_text(text: str | None) -> Position | None:
    return None if text is None else Position.parse(text)


def position_key(position: Position | None) -> tuple[int, int]:
    """A sort key in which no position (the start of the log) comes first."""
    return (-1, -1) if position is None else (position.segment_id, position.offset)


@dataclass(frozen=True)
class StagedTable:
    """One table's change batch in a staged range, with what a data engineer asks first about it."""

    name: str
    schema: TableSchema
    changes: int
    bytes: int
    kinds: dict[str, int]
    first: Position | None
    last: Position | None
    #: Write times (µs) of the oldest and newest change: the lag of a load is measured from them.
    oldest_write_us: int | None
    newest_write_us: int | None


@dataclass(frozen=True)
class StagedRange:
    """What one run read from one node: a change batch per table, from after ``after`` up to ``position``."""

    node: str
    partition: str
    after: Position | None
    position: Position | None
    frontier: Position | None
    tables: dict[str, StagedTable]
    staged_at: float
    directory: Path

    @property
    def changes(self) -> int:
        return sum(table.changes for table in self.tables.values())

    def load_id(self, table: str) -> str:
        """The id every destination records this range's load of ``table`` under (skipped when replayed)."""
        return f"{self.node}/{position_name(self.after)}/{table}"

    def batch(self, table: str) -> pa.RecordBatch:
        """The staged change batch of ``table`` (``keyspace.table``)."""
        with pa.memory_map(os.fspath(self.directory / f"{table}.arrow")) as source:
            loaded = pa.ipc.open_file(source).read_all()
        # Only ranges with changes of a table hold its file, so there is always at least one row.
        return loaded.combine_chunks().to_batches()[0]


def write_times(batch: pa.RecordBatch) -> pa.Array:
    """Each change's write time in µs: the newest timestamp it carries (row liveness, deletion, or any cell)."""
    candidates = [batch.column(cb.ROW_WRITETIME), batch.column(cb.DELETION_WRITETIME)]
    for field in batch.schema:
        if field.name.startswith("_cdc_") or not pa.types.is_struct(field.type):
            continue
        column = batch.column(field.name)
        if field.type.get_field_index("writetime") >= 0:
            candidates.append(pc.struct_field(column, "writetime"))
        elif field.type.get_field_index("deletion") >= 0:
            candidates.append(pc.struct_field(column, "deletion"))
            candidates.append(_newest_element(pc.struct_field(column, "cells"), batch.num_rows))
    return pc.max_element_wise(*candidates, skip_nulls=True)


def _newest_element(cells: pa.Array, rows: int) -> pa.Array:
    """Per change, the newest write time among a complex column's element cells (a list or a UDT's fields)."""
    if pa.types.is_struct(cells.type):  # a non-frozen UDT: one cell struct per field
        # Fields by position: pyarrow reads a name string as a dotted path (a field `.x` would fetch `x`).
        fields = [pc.struct_field(pc.struct_field(cells, [i]), "writetime") for i in range(cells.type.num_fields)]
        return pc.max_element_wise(*fields, skip_nulls=True) if fields else pa.nulls(rows, pa.int64())
    elements = pc.list_flatten(cells)
    owners = pc.list_parent_indices(cells)
    newest = (
        pa.table({"row": owners, "ts": pc.struct_field(elements, "writetime")})
        .group_by("row")
        .aggregate([("ts", "max")])
    )
    result = np.full(rows, np.iinfo(np.int64).min, dtype=np.int64)
    maxima = newest.column("ts_max").to_numpy(zero_copy_only=False)
    present = ~np.isnan(maxima) if maxima.dtype.kind == "f" else np.ones(len(maxima), dtype=bool)
    result[newest.column("row").to_numpy()[present]] = maxima[present].astype(np.int64)
    return pa.array(result, mask=result == np.iinfo(np.int64).min)


def _describe(name: str, schema: TableSchema, batch: pa.RecordBatch) -> StagedTable:
    segments = batch.column(cb.SEGMENT_ID).to_numpy()
    offsets = batch.column(cb.POSITION).to_numpy()
    first = last = None
    if len(segments):
        order = np.lexsort((offsets, segments))
        first = Position(int(segments[order[0]]), int(offsets[order[0]]))
        last = Position(int(segments[order[-1]]), int(offsets[order[-1]]))
    times = pc.min_max(write_times(batch)) if batch.num_rows else None
    kinds = Counter(batch.column(cb.KIND).to_pylist())
    return StagedTable(
        name=name,
        schema=schema,
        changes=batch.num_rows,
        bytes=batch.nbytes,
        kinds=dict(sorted(kinds.items())),
        first=first,
        last=last,
        oldest_write_us=times["min"].as_py() if times else None,
        newest_write_us=times["max"].as_py() if times else None,
    )


def _table_json(table: StagedTable) -> dict:
    return {
        "schema": table_to_dict(table.schema),
        "changes": table.changes,
        "bytes": table.bytes,
        "kinds": table.kinds,
        "first": position_text(table.first),
        "last": position_text(table.last),
        "oldest_write_us": table.oldest_write_us,
        "newest_write_us": table.newest_write_us,
    }


def _table_from_json(name: str, data: Mapping) -> StagedTable:
    return StagedTable(
        name=name,
        schema=table_from_dict(data["schema"]),
        changes=data["changes"],
        bytes=data["bytes"],
        kinds=data["kinds"],
        first=parse_position_text(data["first"]),
        last=parse_position_text(data["last"]),
        oldest_write_us=data["oldest_write_us"],
        newest_write_us=data["newest_write_us"],
    )


def stage_range(
    root: str | os.PathLike[str],
    node: str,
    partition: str,
    after: Position | None,
    position: Position | None,
    frontier: Position | None,
    batches: Mapping[str, tuple[TableSchema, pa.RecordBatch]],
) -> StagedRange:
    """Write one range's change batches (``keyspace.table`` → (schema, batch)) and return the staged range."""
    node_dir = Path(root) / node
    target = node_dir / partition / position_name(after)
    for earlier in _ranges_after(node_dir, after):
        # An earlier attempt at the same range (its run failed before committing): it is read again now.
        shutil.rmtree(earlier, ignore_errors=True)
    tmp = node_dir / f".staging-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        tables = {}
        for name, (schema, batch) in sorted(batches.items()):
            path = os.fspath(tmp / f"{name}.arrow")
            with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, batch.schema, options=_IPC_OPTIONS) as writer:
                writer.write_batch(batch)
            tables[name] = _describe(name, schema, batch)
        staged_at = time.time()
        document = {
            "node": node,
            "partition": partition,
            "after": position_text(after),
            "position": position_text(position),
            "frontier": position_text(frontier),
            "staged_at": staged_at,
            "tables": {name: _table_json(table) for name, table in tables.items()},
        }
        with (tmp / RANGE_FILE).open("w", encoding="utf-8") as out:
            json.dump(document, out)
            out.flush()
            os.fsync(out.fileno())
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return StagedRange(node, partition, after, position, frontier, tables, staged_at, target)


def _ranges_after(node_dir: Path, after: Position | None) -> list[Path]:
    if not node_dir.is_dir():
        return []
    name = position_name(after)
    return [path for path in node_dir.glob(f"*/{name}") if path.is_dir()]


def read_range(directory: Path) -> StagedRange:
    """The staged range in ``directory``."""
    document = json.loads((directory / RANGE_FILE).read_text(encoding="utf-8"))
    return StagedRange(
        node=document["node"],
        partition=document["partition"],
        after=parse_position_text(document["after"]),
        position=parse_position_text(document["position"]),
        frontier=parse_position_text(document["frontier"]),
        tables={name: _table_from_json(name, data) for name, data in document["tables"].items()},
        staged_at=document["staged_at"],
        directory=directory,
    )


def list_ranges(
    root: str | os.PathLike[str],
    *,
    nodes: Iterable[str] | None = None,
    partitions: Iterable[str] | None = None,
    since: Position | None = None,
) -> list[StagedRange]:
    """Staged ranges, in log order per node (nodes in name order).

    ``partitions`` keeps only ranges staged in those windows; ``since`` only ranges starting at or after it
    (the ranges a destination that has consumed everything before ``since`` still has to load).
    """
    root = Path(root)
    node_dirs = [root / n for n in nodes] if nodes is not None else sorted(p for p in root.glob("*") if p.is_dir())
    wanted = set(partitions) if partitions is not None else None
    found = []
    for node_dir in node_dirs:
        if not node_dir.is_dir():
            continue
        for partition_dir in node_dir.iterdir():
            if partition_dir.name.startswith(".") or (wanted is not None and partition_dir.name not in wanted):
                continue
            for directory in partition_dir.iterdir():
                if since is not None and position_key(parse_position_name(directory.name)) < position_key(since):
                    continue
                if (directory / RANGE_FILE).is_file():
                    found.append(read_range(directory))
    return sorted(found, key=lambda r: (r.node, position_key(r.after)))


def prune_ranges(root: str | os.PathLike[str], node: str, *, before: str, consumed: Position | None) -> int:
    """Delete ``node``'s ranges staged in windows before partition key ``before`` that every destination has
    consumed (they start before ``consumed``); returns how many. Reads directory names only: cheap each tick."""
    node_dir = Path(root) / node
    if consumed is None or not node_dir.is_dir():
        return 0
    removed = 0
    for partition_dir in node_dir.iterdir():
        if partition_dir.name.startswith(".") or partition_dir.name >= before:
            continue
        for directory in partition_dir.iterdir():
            if position_key(parse_position_name(directory.name)) < position_key(consumed):
                shutil.rmtree(directory, ignore_errors=True)
                removed += 1
        if not any(partition_dir.iterdir()):
            partition_dir.rmdir()
    return removed
