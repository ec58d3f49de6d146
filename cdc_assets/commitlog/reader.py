"""The commit log reader: segment files in, change batches (one Arrow RecordBatch per table) out.

A pipeline of small stages, as Cassandra's own reader is: descriptor -> sync sections -> entries ->
mutations -> changes. Nothing here knows about Dagster or the destinations.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa

from cdc_assets.cassandra_schema.log_changes import SchemaTracker
from cdc_assets.cassandra_schema.system_tables import SCHEMA_KEYSPACE, SYSTEM_SCHEMA_TABLES, SYSTEM_TABLE_NAMES
from cdc_assets.cassandra_schema.tables import SchemaRegistry, TableSchema
from cdc_assets.change_batch import META_COLUMN_KIND, ChangeBatchBuilder, Position
from cdc_assets.commitlog.descriptor import DECODABLE_VERSIONS, SegmentDescriptor, read_descriptor
from cdc_assets.commitlog.encryption import EncryptionKeys
from cdc_assets.commitlog.entries import section_entries
from cdc_assets.commitlog.errors import CommitLogError, MutationDecodeError, SegmentVanishedError, UnknownTableError
from cdc_assets.commitlog.mutation import MutationDecoder
from cdc_assets.dead_letters import DeadLetter

log = logging.getLogger(__name__)


@dataclass
class ReadStats:
    """What one read did, for logs and asset metadata."""

    entries: int = 0
    mutations: int = 0
    changes: int = 0
    bytes_read: int = 0
    skipped_system: int = 0
    skipped_not_cdc: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    problems: list[CommitLogError] = field(default_factory=list)
    schema_changes: list[str] = field(default_factory=list)
    last_position: Position | None = None
    #: The read stopped at ``max_changes``, before the end of what it was allowed to read.
    bounded: bool = False


@dataclass
class ReadResult:
    """One read's output: a change batch per table (by ``keyspace.table``) and what happened on the way."""

    batches: dict[str, pa.RecordBatch]
    tables: dict[str, TableSchema]
    stats: ReadStats


class Change(NamedTuple):
    """One decoded change with its table and source position (the streaming form ``dump`` prints)."""

    table: TableSchema
    segment_id: int
    position: int
    fields: dict[str, Any]


@dataclass
class SegmentScan:
    """The framing of a segment without decoding mutations: what ``scan_segment`` finds."""

    descriptor: SegmentDescriptor
    entries: list[tuple[int, bytes]]
    problems: list[CommitLogError]


def scan_segment(path: str | os.PathLike[str], *, keys: EncryptionKeys | None = None) -> SegmentScan:
    """Walk a segment's sections and entries, checking every CRC, without decoding mutations.

    Works for every segment version with the 3.0+ framing, including the 2.2 (version 5) segments
    whose mutation bodies use the pre-3.0 format.
    """
    path = os.fspath(path)
    data = Path(path).read_bytes()
    descriptor = read_descriptor(data, path)
    problems: list[CommitLogError] = []
    entries: list[tuple[int, bytes]] = []
    for _, found in section_entries(data, descriptor, path, problems, keys=keys):
        entries += [(position, bytes(body)) for position, body in found]
    return SegmentScan(descriptor, entries, problems)


_VANISHED = (
    "the segment disappeared before it was read: Cassandra 4.1+ with cdc_block_writes: false deletes the "
    "oldest CDC segments when cdc_raw is full, and their changes are lost"
)


class CommitLogReader:
    """Reads segments with a schema registry, tracking schema changes found in the log itself.

    ``keys`` decrypts encrypted segments. With ``track_schema``, mutations of ``system_schema`` tables
    update the registry in log order, so every mutation is decoded with the schema it was written under.
    """

    def __init__(
        self, registry: SchemaRegistry, *, keys: EncryptionKeys | None = None, track_schema: bool = True
    ) -> None:
        self.registry = registry
        self.keys = keys
        self._tracker = None
        if track_schema:
            for table in SYSTEM_SCHEMA_TABLES:
                registry.add(table)
            self._tracker = SchemaTracker(registry)
        self._decoders: dict[int, MutationDecoder] = {}

    def _decoder(self, messaging_version: int) -> MutationDecoder:
        decoder = self._decoders.get(messaging_version)
        if decoder is None:
            decoder = self._decoders[messaging_version] = MutationDecoder(self.registry, messaging_version)
        return decoder

    def iter_changes(
        self,
        path: str | os.PathLike[str],
        *,
        after: Position | None = None,
        limit: int | None = None,
        stats: ReadStats | None = None,
    ) -> Iterator[Change]:
        """Stream the changes of one segment, in log order.

        ``after`` resumes strictly after a saved position (entries of that segment ending at or before it
        are not decoded; a position in an older segment reads everything, one in a newer segment nothing).
        ``limit`` is a logical offset not to read past, such as the ``_cdc.idx`` durable offset.
        """
        stats = stats if stats is not None else ReadStats()
        known_problems = len(stats.problems)
        path = os.fspath(path)
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            stats.problems.append(SegmentVanishedError(path, 0, _VANISHED))
            log.error("%s", stats.problems[-1])
            return
        descriptor = read_descriptor(data, path)
        if descriptor.version not in DECODABLE_VERSIONS:
            raise CommitLogError(
                path, 0, f"commit log version {descriptor.version} holds pre-3.0 mutations, which are not decoded"
            )
        skip_to = 0
        if after is not None:
            if after.segment_id > descriptor.segment_id:
                return
            if after.segment_id == descriptor.segment_id:
                skip_to = after.offset
        decoder = self._decoder(descriptor.messaging_version)
        name = Path(path).name
        segment_id = descriptor.segment_id
        for section, entries in section_entries(
            data, descriptor, path, stats.problems, limit=limit, after=skip_to, keys=self.keys
        ):
            decoded = 0
            for position, body in entries:
                try:
                    updates = decoder.decode(body)
                except MutationDecodeError as error:
                    self._set_aside(decoder, error, name, position, body, stats)
                    continue
                decoded += 1
                for table, changes in updates:
                    if table.keyspace == SCHEMA_KEYSPACE and self._tracker is not None:
                        self._apply_schema_change(table, changes, stats)
                    elif not table.cdc:
                        stats.skipped_not_cdc += 1
                    else:
                        stats.changes += len(changes)
                        for change in changes:
                            yield Change(table, segment_id, position, change)
            # Counted only once the whole section has been handed out, as the position is: a reader stopped
            # part-way resumes before the section and reads it again.
            stats.bytes_read += section.logical_end - section.logical_start
            stats.mutations += decoded
            if entries:
                stats.entries += len(entries)
                stats.last_position = Position(segment_id, entries[-1][0])
        # Only this segment's: stats may carry the problems of segments read before it.
        for problem in stats.problems[known_problems:]:
            log.warning("%s", problem)

    def _set_aside(
        self,
        decoder: MutationDecoder,
        error: MutationDecodeError,
        name: str,
        position: int,
        body: memoryview,
        stats: ReadStats,
    ) -> None:
        """Skip a mutation of Cassandra's own tables; dead-letter any other that cannot be decoded."""
        if isinstance(error, UnknownTableError):
            if error.table_id in SYSTEM_TABLE_NAMES:
                stats.skipped_system += 1
            else:
                self._dead_letter(stats, name, position, body, f"unknown table id {error.table_id}", None)
            return
        table = self.registry.get(decoder.table_id(body))
        self._dead_letter(stats, name, position, body, str(error), table.qualified_name if table else None)

    def _apply_schema_change(self, table: TableSchema, changes: list[dict[str, Any]], stats: ReadStats) -> None:
        """Apply a logged system_schema change before the next mutation is decoded."""
        stats.schema_changes.extend(self._tracker.apply(table, changes))
        for cached in self._decoders.values():
            cached.refresh()

    def _dead_letter(
        self, stats: ReadStats, name: str, position: int, body: memoryview, reason: str, table: str | None
    ) -> None:
        letter = DeadLetter("reader", reason, name, position, table, bytes(body))
        log.warning("set aside mutation at %s:%d: %s", name, position, reason)
        stats.dead_letters.append(letter)

    def read_segment(
        self, path: str | os.PathLike[str], *, after: Position | None = None, limit: int | None = None
    ) -> ReadResult:
        """Read one segment into one change batch per table."""
        return self.read_segments([path], after=after, limits={os.fspath(path): limit})

    def read_segments(
        self,
        paths: list[str | os.PathLike[str]],
        *,
        after: Position | None = None,
        limits: dict[str, int | None] | None = None,
        max_changes: int | None = None,
    ) -> ReadResult:
        """Read segments (in the order given; sort by id first) into one change batch per table.

        With ``max_changes``, reading stops at the end of the sync section in which that many changes were
        reached: ``stats.last_position`` is then where the next read resumes, and nothing past it is kept.
        """
        stats = ReadStats()
        builders: dict[str, ChangeBatchBuilder] = {}
        finished: dict[str, list[pa.RecordBatch]] = {}
        # The builders keep every decoded change alive until the batch is built; those dicts hold no reference
        # cycles, so the cyclic collector would only walk an ever-growing heap (most of the read's time).
        collecting = gc.isenabled()
        gc.disable()
        try:
            self._read_into(paths, after, limits or {}, stats, builders, finished, max_changes)
        finally:
            if collecting:
                gc.enable()
        batches = {name: _merge_batches(parts, builders[name].schema) for name, parts in finished.items()}
        tables = {name: builders[name].table for name in batches}
        return ReadResult(batches, tables, stats)

    def _read_into(
        self,
        paths: list[str | os.PathLike[str]],
        after: Position | None,
        limits: dict[str, int | None],
        stats: ReadStats,
        builders: dict[str, ChangeBatchBuilder],
        finished: dict[str, list[pa.RecordBatch]],
        max_changes: int | None = None,
    ) -> None:
        kept = 0
        # The section boundary in force when the bound was reached: the first change past the next one stops.
        bound_at: Position | bool | None = False
        for path in paths:
            limit = limits.get(os.fspath(path))
            changes = self.iter_changes(path, after=after, limit=limit, stats=stats)
            for change in changes:
                if bound_at is not False and stats.last_position != bound_at:
                    changes.close()
                    break
                kept += 1
                if max_changes is not None and bound_at is False and kept >= max_changes:
                    bound_at = stats.last_position
                table = change.table
                builder = builders.get(table.qualified_name)
                if builder is None or builder.table is not table:
                    # The table's schema changed in the log: close its batch so far, start one with the new schema.
                    if builder is not None and len(builder):
                        finished.setdefault(table.qualified_name, []).append(builder.finish())
                    builder = builders[table.qualified_name] = ChangeBatchBuilder(table)
                builder.append(change.segment_id, change.position, change.fields)
            if bound_at is not False and stats.last_position != bound_at:
                # Stopped at a section boundary: what was decoded past it is read again by the next read.
                stats.changes = kept
                name = Path(path).name
                end = stats.last_position
                stats.dead_letters[:] = [
                    d for d in stats.dead_letters if not (d.segment == name and end and d.position > end.offset)
                ]
                stats.bounded = True
                break
        for name, builder in builders.items():
            if len(builder):
                finished.setdefault(name, []).append(builder.finish())


def _merge_batches(parts: list[pa.RecordBatch], schema: pa.Schema) -> pa.RecordBatch:
    """One batch in the newest schema: columns added later are null in older rows, dropped ones disappear.

    Two schema changes keep a column's older values under a new shape: a renamed primary key column (the
    only columns ``ALTER TABLE ... RENAME`` may rename) keeps its values under its new name, in the range
    bounds too; and a UDT that gained fields (``ALTER TYPE ... ADD``) reads as before with the new fields null.
    """
    if len(parts) == 1:
        return parts[0]
    conformed = []
    for part in parts:
        renamed = _renamed_keys(part.schema, schema)
        columns = []
        for target in schema:
            index = part.schema.get_field_index(renamed.get(target.name, target.name))
            column = _conformed(part.column(index), target.type, renamed) if index >= 0 else None
            columns.append(pa.nulls(part.num_rows, target.type) if column is None else column)
        conformed.append(pa.RecordBatch.from_arrays(columns, schema=schema))
    return pa.Table.from_batches(conformed, schema=schema).combine_chunks().to_batches()[0]


def _renamed_keys(older: pa.Schema, newest: pa.Schema) -> dict[str, str]:
    """New name → old name of each primary key column renamed between two schemas of one table.

    Cassandra keys values by their place in the key, never by name: the column at the same place in the
    partition key or the clustering is the same column.
    """
    renamed = {}
    for kind in (b"partition_key", b"clustering"):
        old, new = ([f.name for f in s if (f.metadata or {}).get(META_COLUMN_KIND) == kind] for s in (older, newest))
        renamed.update({new_name: old_name for old_name, new_name in zip(old, new) if old_name != new_name})
    return renamed


def _conformed(column: pa.Array, target: pa.DataType, renamed: dict[str, str]) -> pa.Array | None:
    """``column`` in the ``target`` type when only struct fields were added or key fields renamed; else None."""
    if column.type == target:
        return column
    if pa.types.is_struct(column.type) and renamed:
        # The range bounds: a struct of the clustering columns, by name.
        names = {old: new for new, old in renamed.items()}
        fields = [field.with_name(names.get(field.name, field.name)) for field in column.type]
        column = pa.StructArray.from_arrays(column.flatten(), fields=fields, mask=column.is_null())
    if not _grown(column.type, target):
        return None
    return column.cast(target)


def _grown(older: pa.DataType, newer: pa.DataType) -> bool:
    """Whether ``newer`` is ``older`` with struct fields added (a UDT's new fields, at any depth), nothing else."""
    if older == newer:
        return True
    if pa.types.is_struct(older) and pa.types.is_struct(newer):
        fields = {field.name: field.type for field in newer}
        return all(field.name in fields and _grown(field.type, fields[field.name]) for field in older)
    if pa.types.is_map(older) and pa.types.is_map(newer):
        return _grown(older.key_type, newer.key_type) and _grown(older.item_type, newer.item_type)
    for is_list in (pa.types.is_list, pa.types.is_large_list):
        if is_list(older) and is_list(newer):
            return _grown(older.value_type, newer.value_type)
    if pa.types.is_fixed_size_list(older) and pa.types.is_fixed_size_list(newer):
        return older.list_size == newer.list_size and _grown(older.value_type, newer.value_type)
    return False
