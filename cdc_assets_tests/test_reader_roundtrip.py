"""Property tests: whatever the generator writes (every CQL type and operation, every segment format),
the reader gives back exactly; and a segment cut at any byte never yields a wrong change."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc_assets.cassandra_schema.tables import SchemaRegistry, TableSchema
from cdc_assets.commitlog.errors import DescriptorError
from cdc_assets.commitlog.generator.encoding import canonical_change, encode_mutation
from cdc_assets.commitlog.generator.segment_writer import SegmentWriter
from cdc_assets.commitlog.reader import CommitLogReader, ReadStats
from cdc_assets_tests.strategies import mutations, tables

COMPRESSIONS = [None, "LZ4Compressor", "SnappyCompressor", "DeflateCompressor", "ZstdCompressor"]
SEGMENT_ID = 1_700_000_000_000
PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def _key(change: dict[str, Any]) -> str:
    return json.dumps(change, sort_keys=True, default=repr)


def _write_segment(
    directory: Path, table: TableSchema, batch: list[list[dict]], version: int, compression: str | None
) -> tuple[Path, list[int]]:
    writer = SegmentWriter(directory, SEGMENT_ID, version, compression, segment_size=4 << 20)
    positions = []
    for index, changes in enumerate(batch):
        positions.append(writer.append(encode_mutation([(table, changes)], version)))
        if index % 2:
            writer.sync()
    writer.close()
    return writer.path, positions


def _read(table: TableSchema, path: Path) -> tuple[list[tuple[int, dict]], Any]:
    reader = CommitLogReader(SchemaRegistry([table]), track_schema=False)
    stats = ReadStats()
    changes = [(change.position, change.fields) for change in reader.iter_changes(path, stats=stats)]
    return changes, stats


@st.composite
def logs(draw: st.DrawFn) -> tuple[TableSchema, int, str | None, list[list[dict]]]:
    table = draw(tables())
    version = draw(st.sampled_from([6, 7, 8]))
    compression = draw(st.sampled_from(COMPRESSIONS))
    return table, version, compression, draw(st.lists(mutations(table, version=version), min_size=1, max_size=6))


@PROPERTY_SETTINGS
@given(logs())
def test_everything_written_is_read_back_exactly(log: tuple[TableSchema, int, str | None, list[list[dict]]]) -> None:
    table, version, compression, batch = log
    with tempfile.TemporaryDirectory() as directory:
        path, positions = _write_segment(Path(directory), table, batch, version, compression)
        read, stats = _read(table, path)
    assert stats.problems == [] and stats.dead_letters == []
    for position, changes in zip(positions, batch):
        expected = sorted(_key(canonical_change(table, change)) for change in changes)
        assert sorted(_key(fields) for at, fields in read if at == position) == expected
    assert {at for at, _ in read} <= set(positions)


@PROPERTY_SETTINGS
@given(logs(), st.floats(min_value=0, max_value=1))
def test_a_segment_cut_at_any_byte_never_yields_a_wrong_change(
    log: tuple[TableSchema, int, str | None, list[list[dict]]], cut_fraction: float
) -> None:
    table, version, compression, batch = log
    with tempfile.TemporaryDirectory() as directory:
        path, positions = _write_segment(Path(directory), table, batch, version, compression)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * cut_fraction)])
        try:
            read, _ = _read(table, path)
        except DescriptorError:  # a cut inside the header: the segment is refused, nothing is read
            return
    expected = {
        position: sorted(_key(canonical_change(table, change)) for change in changes)
        for position, changes in zip(positions, batch)
    }
    read_positions = sorted({at for at, _ in read})
    # What is read is a prefix of what was written, each mutation whole and exact.
    assert read_positions == positions[: len(read_positions)]
    for position in read_positions:
        assert sorted(_key(fields) for at, fields in read if at == position) == expected[position]
