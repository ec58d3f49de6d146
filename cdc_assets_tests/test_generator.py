"""The segment generator: checked byte for byte against segments real Cassandra nodes wrote, then by reading back."""

from __future__ import annotations

import collections
import struct
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc_assets.cassandra_schema.tables import Column, SchemaRegistry, TableSchema
from cdc_assets.cassandra_schema.types import CqlType, parse_type
from cdc_assets.cli import main
from cdc_assets.commitlog.generator import (
    SegmentFullError,
    SegmentWriter,
    Workload,
    encode_mutation,
    generate,
    realistic_table,
)
from cdc_assets.commitlog.generator.encoding import (
    column_subset,
    counter_context,
    partition_key_bytes,
    value_serializer,
)
from cdc_assets.commitlog.generator.segment_writer import (
    descriptor_parameters,
    encode_descriptor,
    frame_entry,
    sync_marker,
)
from cdc_assets.commitlog.primitives import DELETION_TIME_EPOCH, TIMESTAMP_EPOCH
from cdc_assets.commitlog.reader import CommitLogReader, scan_segment
from cdc_assets.vints import write_uvint
from cdc_assets_tests.shared_fixtures import COMMITLOG_FIXTURES
from cdc_assets_tests.strategies import mutations, tables

REAL_4_0_11 = COMMITLOG_FIXTURES / "4.0.11" / "CommitLog-7-1699285478684.log"
REAL_3_0_29 = COMMITLOG_FIXTURES / "3.0.29" / "CommitLog-6-1699279786262.log"
STANDARD1_ID = uuid.UUID("657e5210-7cbb-11ee-9858-c9aa1eb53e69")
TABLE_ID = uuid.UUID("0f1e2d3c-4b5a-1697-8877-665544332211")
LIST_PATH = "e8b1a4c0-7cbb-11ee-9858-c9aa1eb53e69"
START_US = 1_700_000_000_000_000

# Appendix A of the format notes: the smallest Keyspace1.Standard1 entry of the 4.0.11 segment, as annotated.
APPENDIX_A_BODY = bytes.fromhex(
    "01"
    "657e52107cbb11ee9858c9aa1eb53e69"
    "10" + b"old-style mapred".hex() + "10"
    "fce9330d8ecbd0"
    "0000"
    "0103" + b"val".hex() + "01"
    "24"
    "0005" + b"name0".hex() + "00"
    "08023637"
    "01"
)
APPENDIX_A_OFFSET = 19646


def _table(name: str, *columns: tuple[str, str | CqlType, str], table_id: uuid.UUID = TABLE_ID) -> TableSchema:
    positions: collections.Counter[str] = collections.Counter()
    built = []
    for column_name, cql, kind in columns:
        position = positions[kind] if kind in ("partition_key", "clustering") else -1
        positions[kind] += 1
        built.append(Column(column_name, parse_type(cql) if isinstance(cql, str) else cql, kind, position))  # type: ignore[arg-type]
    return TableSchema("ks", name, table_id, tuple(built))


def _standard1() -> TableSchema:
    return _table(
        "Standard1",
        ("key", "ascii", "partition_key"),
        ("col", "ascii", "clustering"),
        ("val", "blob", "regular"),
        ("val0", "blob", "regular"),
        table_id=STANDARD1_ID,
    )


def _cell(value: Any, writetime: int, ttl: int | None = None, expires_at: int | None = None) -> dict[str, Any]:
    return {"value": value, "writetime": writetime, "ttl": ttl, "expires_at": expires_at, "deleted": False}


def _int(value: int) -> bytes:
    return struct.pack(">i", value)


def _normal(value: Any) -> Any:
    """A form in which equal change dicts compare equal whatever their key order."""
    if isinstance(value, dict):
        return tuple(sorted((k, _normal(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_normal(v) for v in value)
    return repr(value)


def _read_back(tables_: list[TableSchema], paths: list[Path]) -> dict[tuple[str, int, int], list[Any]]:
    reader = CommitLogReader(SchemaRegistry(tables_), track_schema=False)
    found: dict[tuple[str, int, int], list[Any]] = collections.defaultdict(list)
    for path in paths:
        for change in reader.iter_changes(path):
            found[(change.table.qualified_name, change.segment_id, change.position)].append(_normal(change.fields))
    return {key: sorted(changes) for key, changes in found.items()}


def _expected(log: Any, tables_: list[TableSchema], node: int = 0) -> dict[tuple[str, int, int], list[Any]]:
    expected: dict[tuple[str, int, int], list[Any]] = collections.defaultdict(list)
    for table in tables_:
        for change in log.changes(table.qualified_name, node):
            fields = {k: v for k, v in change.items() if k not in ("segment_id", "position")}
            expected[(table.qualified_name, change["segment_id"], change["position"])].append(_normal(fields))
    return {key: sorted(changes) for key, changes in expected.items()}


def _node_paths(log: Any, node: int = 0) -> list[Path]:
    return [s.path for s in log.segments if s.node == node]


def _marker_chain(data: bytes, header_length: int) -> list[tuple[int, int]]:
    """(marker file offset, next offset) along a segment's sync marker chain, up to the zero marker or the end."""
    chain = []
    position = header_length
    while position + 8 <= len(data):
        next_marker, crc = struct.unpack_from(">iI", data, position)
        if next_marker == 0 and crc == 0:
            break
        chain.append((position, next_marker))
        position = next_marker
    return chain


# ---------------------------------------------------------------------------------------------------
# Against real segments


def test_descriptor_equals_the_real_4_0_11_header() -> None:
    header = encode_descriptor(7, 1699285478684, descriptor_parameters(None))
    assert header == REAL_4_0_11.read_bytes()[:20]


@pytest.mark.parametrize(("offset", "next_offset"), [(20, 467), (467, 1576), (1576, 75003), (75003, 75011)])
def test_sync_marker_equals_the_real_marker(offset: int, next_offset: int) -> None:
    real = REAL_4_0_11.read_bytes()
    assert sync_marker(1699285478684, offset, next_offset) == real[offset : offset + 8]


def test_appendix_a_mutation_encodes_to_the_real_bytes() -> None:
    timestamp = 1699285480066000
    change = {
        "kind": "row",
        "key": {"key": "old-style mapred"},
        "clustering": {"col": "name0"},
        "row_writetime": timestamp,
        "cells": {"val": _cell(b"67", timestamp)},
    }
    body = encode_mutation([(_standard1(), [change])], 7)
    assert body == APPENDIX_A_BODY
    real = REAL_4_0_11.read_bytes()
    assert frame_entry(body) == real[APPENDIX_A_OFFSET : APPENDIX_A_OFFSET + 8 + 64 + 4]


def test_every_standard1_mutation_of_the_real_segment_encodes_back_to_its_bytes() -> None:
    table = _standard1()
    reader = CommitLogReader(SchemaRegistry([table]), track_schema=False)
    by_position = collections.defaultdict(list)
    for change in reader.iter_changes(REAL_4_0_11):
        by_position[change.position].append(change.fields)
    bodies = dict(scan_segment(REAL_4_0_11).entries)
    assert len(by_position) == 355
    for position, changes in by_position.items():
        assert encode_mutation([(table, changes)], 7) == bodies[position], position


@pytest.mark.parametrize(("path", "version", "completed"), [(REAL_4_0_11, 7, True), (REAL_3_0_29, 6, False)])
def test_writer_reproduces_a_real_segment_from_its_entries_and_syncs(
    tmp_path: Path, path: Path, version: int, completed: bool
) -> None:
    # The real node synced where each section ends; the 4.0.11 segment was then closed, the 3.0.29 one was
    # still being written when it was copied.
    real = path.read_bytes()
    section_ends = {end for _, end in _marker_chain(real, 20)}
    segment_id = int(path.stem.rsplit("-", 1)[1])
    writer = SegmentWriter(tmp_path, segment_id, version, segment_size=len(real))
    for _, body in scan_segment(path).entries:
        if writer.append(body) in section_ends:
            writer.sync()
    if completed:
        writer.close()
    else:
        writer.abandon()
    assert writer.path.read_bytes() == real


@pytest.mark.parametrize(
    ("path", "compression"),
    [
        ("2.2-lz4/CommitLog-5-1438186885381.log", "LZ4Compressor"),
        ("2.2-snappy/CommitLog-5-1438186915515.log", "SnappyCompressor"),
    ],
)
def test_closing_an_empty_compressed_segment_writes_what_cassandra_wrote(
    tmp_path: Path, path: str, compression: str
) -> None:
    real = COMMITLOG_FIXTURES / path
    segment_id = int(real.stem.rsplit("-", 1)[1])
    with SegmentWriter(tmp_path, segment_id, version=5, compression=compression) as writer:
        pass
    assert writer.path.read_bytes() == real.read_bytes()


# ---------------------------------------------------------------------------------------------------
# Mutation bytes, derived by hand from the format notes (sections 10 and 11)


def test_range_tombstone_markers_surround_the_rows_they_cover() -> None:
    table = _table("events", ("k", "int", "partition_key"), ("c", "int", "clustering"), ("v", "int", "regular"))
    row = {"kind": "row", "key": {"k": 5}, "clustering": {"c": 2}, "cells": {"v": _cell(7, TIMESTAMP_EPOCH + 100)}}
    deletion = {
        "kind": "range_deletion",
        "key": {"k": 5},
        "deletion_writetime": TIMESTAMP_EPOCH + 50,
        "deletion_time": DELETION_TIME_EPOCH + 10,
        "range_start": {"c": 1},
        "range_start_inclusive": True,
        "range_end": {"c": 3},
        "range_end_inclusive": False,
    }
    expected = (
        b"\x01" + TABLE_ID.bytes + b"\x04" + _int(5)
        + b"\x10" + b"\x32\x0a\x00"  # HAS_ROW_ESTIMATE; min timestamp +50, min LDT +10, min TTL 0
        + b"\x01\x01v" + b"\x01"  # one regular column "v"; one row
        + b"\x02\x01\x00\x01" + b"\x00" + _int(1) + b"\x00\x00"  # INCL_START_BOUND [1], its deletion
        + b"\x20" + b"\x00" + _int(2) + b"\x00\x32" + _int(7)  # row [2]: cell v, timestamp +50 from the minimum
        + b"\x02\x00\x00\x01" + b"\x00" + _int(3) + b"\x00\x00"  # EXCL_END_BOUND [3]
        + b"\x01"
    )  # fmt: skip
    assert encode_mutation([(table, [deletion, row])], 7) == expected


def test_adjacent_range_deletions_meet_in_a_boundary_marker() -> None:
    table = _table("events", ("k", "int", "partition_key"), ("c", "int", "clustering"), ("v", "int", "regular"))

    def deletion(start: int, end: int, end_inclusive: bool, timestamp: int) -> dict[str, Any]:
        return {
            "kind": "range_deletion",
            "key": {"k": 9},
            "deletion_writetime": timestamp,
            "deletion_time": DELETION_TIME_EPOCH,
            "range_start": {"c": start},
            "range_start_inclusive": True,
            "range_end": {"c": end},
            "range_end_inclusive": end_inclusive,
        }

    changes = [deletion(3, 5, True, TIMESTAMP_EPOCH + 2), deletion(1, 3, False, TIMESTAMP_EPOCH + 1)]
    expected = (
        b"\x01" + TABLE_ID.bytes + b"\x04" + _int(9) + b"\x10" + b"\x01\x00\x00" + b"\x00" + b"\x00"
        + b"\x02\x01\x00\x01\x00" + _int(1) + b"\x00\x00"  # INCL_START_BOUND [1]
        + b"\x02\x02\x00\x01\x00" + _int(3) + b"\x00\x00" + b"\x01\x00"  # EXCL_END_INCL_START_BOUNDARY [3]
        + b"\x02\x06\x00\x01\x00" + _int(5) + b"\x01\x00"  # INCL_END_BOUND [5]
        + b"\x01"
    )  # fmt: skip
    assert encode_mutation([(table, changes)], 7) == expected


def test_insert_with_ttl_writes_expiring_cells_that_reuse_the_row_liveness() -> None:
    table = _table("events", ("k", "int", "partition_key"), ("c", "int", "clustering"), ("v", "int", "regular"))
    expires = DELETION_TIME_EPOCH + 200
    change = {
        "kind": "row",
        "key": {"k": 1},
        "clustering": {"c": 2},
        "row_writetime": TIMESTAMP_EPOCH,
        "row_ttl": 100,
        "row_expires_at": expires,
        "cells": {"v": _cell(1, TIMESTAMP_EPOCH, 100, expires)},
    }
    expected = (
        b"\x01" + TABLE_ID.bytes + b"\x04" + _int(1)
        + b"\x10" + b"\x00" + b"\x80\xc8" + b"\x64"  # min LDT +200 takes a two-byte vint; min TTL 100
        + b"\x01\x01v" + b"\x01"
        + b"\x2c" + b"\x00" + _int(2)  # HAS_TIMESTAMP | HAS_TTL | HAS_ALL_COLUMNS, clustering [2]
        + b"\x00\x00\x00"  # row timestamp, then TTL, then LDT
        + b"\x1a" + _int(1)  # IS_EXPIRING | USE_ROW_TIMESTAMP | USE_ROW_TTL
        + b"\x01"
    )  # fmt: skip
    assert encode_mutation([(table, [change])], 7) == expected


def test_complex_columns_carry_a_live_deletion_beside_a_real_one_and_vint_length_values() -> None:
    table = _table(
        "lists",
        ("k", "int", "partition_key"),
        ("c", "int", "clustering"),
        ("m", "map<int, int>", "regular"),
        ("l", "list<int>", "regular"),
    )
    change = {
        "kind": "row",
        "key": {"k": 1},
        "clustering": {"c": 2},
        "cells": {
            "m": {"deletion": TIMESTAMP_EPOCH, "cells": []},
            "l": {"deletion": None, "cells": [{"path": LIST_PATH, **_cell(5, TIMESTAMP_EPOCH)}]},
        },
    }
    live_timestamp = b"\xff" + ((-(1 << 63) - TIMESTAMP_EPOCH) % (1 << 64)).to_bytes(8, "big")
    live_ldt = write_uvint(0x7FFFFFFF - DELETION_TIME_EPOCH)
    expected = (
        b"\x01" + TABLE_ID.bytes + b"\x04" + _int(1) + b"\x10" + b"\x00\x00\x00"
        + b"\x02\x01l\x01m" + b"\x01"  # complex columns by name
        + b"\x60" + b"\x00" + _int(2)  # HAS_COMPLEX_DELETION | HAS_ALL_COLUMNS
        + live_timestamp + live_ldt  # l: no deletion of its own, so LIVE
        + b"\x01" + b"\x00\x00" + b"\x10" + uuid.UUID(LIST_PATH).bytes + b"\x04" + _int(5)  # a list<int> cell
        + b"\x00\x00" + b"\x00"  # m: deleted at the minimum timestamp, in the minimum second; no cells
        + b"\x01"
    )  # fmt: skip
    assert encode_mutation([(table, [change])], 7) == expected


def test_header_lists_simple_columns_before_complex_in_cassandras_name_order() -> None:
    table = _table(
        "order",
        ("k", "int", "partition_key"),
        ("c", "int", "clustering"),
        ("b", "int", "regular"),
        ("aa", "set<int>", "regular"),
        ("a", "int", "regular"),
        ("ä", "int", "regular"),
        ("Z", "int", "regular"),
    )
    cells = {name: _cell(1, TIMESTAMP_EPOCH) for name in ("b", "a", "ä", "Z")}
    cells["aa"] = {"deletion": None, "cells": [{"path": 3, "writetime": TIMESTAMP_EPOCH}]}
    change = {"kind": "row", "key": {"k": 1}, "clustering": {"c": 1}, "cells": cells}
    # ColumnIdentifier.prefixComparison flips the top bit of the name's first byte: a name starting with
    # a byte >= 0x80 ("ä" is c3 a4) sorts before ASCII names.
    header = b"\x05" + b"\x02\xc3\xa4" + b"\x01Z" + b"\x01a" + b"\x01b" + b"\x02aa"
    prefix = b"\x01" + TABLE_ID.bytes + b"\x04" + _int(1) + b"\x10" + b"\x00\x00\x00"
    assert encode_mutation([(table, [change])], 7).startswith(prefix + header)


def test_rows_missing_header_columns_carry_a_bitmap_of_the_missing_ones() -> None:
    table = _table(
        "subset",
        ("k", "int", "partition_key"),
        ("c", "int", "clustering"),
        ("a", "int", "regular"),
        ("b", "int", "regular"),
    )
    full = {"kind": "row", "key": {"k": 1}, "clustering": {"c": 1}, "cells": {"a": _cell(1, TIMESTAMP_EPOCH)}}
    full["cells"]["b"] = _cell(2, TIMESTAMP_EPOCH)
    partial = {"kind": "row", "key": {"k": 1}, "clustering": {"c": 2}, "cells": {"b": _cell(3, TIMESTAMP_EPOCH)}}
    body = encode_mutation([(table, [partial, full])], 7)
    rows = (
        b"\x20\x00" + _int(1) + b"\x00\x00" + _int(1) + b"\x00\x00" + _int(2)
        + b"\x00\x00" + _int(2) + b"\x01" + b"\x00\x00" + _int(3)  # no HAS_ALL_COLUMNS; bitmap 0b01: "a" missing
    )  # fmt: skip
    assert body.endswith(b"\x02\x01a\x01b" + b"\x02" + rows + b"\x01")


def _columns(count: int) -> list[Column]:
    return [Column(f"c{i:02}", parse_type("int"), "regular") for i in range(count)]


def test_column_subset_of_fewer_than_64_columns_is_a_bitmap_of_missing_ones() -> None:
    superset = _columns(5)
    assert column_subset([superset[1], superset[3]], superset) == b"\x15"


def test_column_subset_of_64_or_more_columns_lists_the_present_ones_when_few() -> None:
    superset = _columns(70)
    assert column_subset([superset[5], superset[60]], superset) == b"\x44\x05\x3c"


def test_column_subset_of_64_or_more_columns_lists_the_missing_ones_when_most_are_present() -> None:
    superset = _columns(70)
    present = [c for i, c in enumerate(superset) if i not in (1, 69)]
    assert column_subset(present, superset) == b"\x02\x01\x45"


@pytest.mark.parametrize(
    ("cql", "value", "expected"),
    [
        ("varint", "0", "00"),
        ("varint", "127", "7f"),
        ("varint", "128", "0080"),
        ("varint", "-1", "ff"),
        ("varint", "-128", "80"),
        ("varint", "-129", "ff7f"),
        ("decimal", "1.50", "000000020096"),
        ("decimal", "-0.5", "00000001fb"),
        ("decimal", "1E+3", "fffffffd01"),
        ("date", 0, "80000000"),
        ("date", -1, "7fffffff"),
        ("time", 1, "0000000000000001"),
        ("duration", (1, 2, 3), "020406"),
        ("duration", (-1, -2, -3), "010305"),
        ("inet", "127.0.0.1", "7f000001"),
        ("inet", "::1", "00" * 15 + "01"),
        ("smallint", -2, "fffe"),
        ("tinyint", -2, "fe"),
        ("boolean", True, "01"),
        ("frozen<list<int>>", [1, 2], "0000000200000004000000010000000400000002"),
        ("frozen<set<int>>", [3, 1], "0000000200000004000000010000000400000003"),
        (
            "frozen<map<text, int>>",
            [("b", 2), ("a", 1)],
            "000000020000000161000000040000000100000001620000000400000002",
        ),
        ("tuple<int, text>", {"f0": 1, "f1": None}, "0000000400000001ffffffff"),
        ("vector<float, 2>", [1.0, 2.0], "3f80000040000000"),
        ("vector<text, 2>", ["a", "bc"], "0161026263"),
    ],
)
def test_value_serializes_as_cassandra_stores_it(cql: str, value: Any, expected: str) -> None:
    assert value_serializer(parse_type(cql))(value) == bytes.fromhex(expected)


def test_counter_value_is_a_context_with_one_global_shard() -> None:
    counter_id = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
    expected = "00018000" + counter_id.hex + "0000000000000005000000000000000a"
    assert counter_context([(counter_id.bytes, 5, 10)]) == bytes.fromhex(expected)


def test_several_leaders_shards_are_global_shards_in_counter_id_order() -> None:
    # CounterContext's layout: 2 header elements, each a global shard's index + Short.MIN_VALUE (0x8000,
    # 0x8001), then the shards sorted by counter id, compared unsigned.
    low, high = b"\x7f" * 16, b"\x80" * 16
    expected = "000280008001" + low.hex() + f"{3:016x}{1:016x}" + high.hex() + f"{4:016x}{2:016x}"
    assert counter_context([(high, 4, 2), (low, 3, 1)]) == bytes.fromhex(expected)


def test_composite_partition_key_frames_each_component() -> None:
    table = _table("pk", ("a", "text", "partition_key"), ("b", "int", "partition_key"), ("v", "int", "regular"))
    assert partition_key_bytes(table, {"a": "a", "b": 5}) == b"\x00\x01a\x00" + b"\x00\x04" + _int(5) + b"\x00"


def test_local_deletion_times_past_2038_need_version_8() -> None:
    table = _table("events", ("k", "int", "partition_key"), ("v", "int", "regular"))
    change = {"kind": "partition_deletion", "key": {"k": 1}, "deletion_writetime": 1, "deletion_time": 3_000_000_000}
    assert encode_mutation([(table, [change])], 8)
    with pytest.raises(ValueError, match="3000000000"):
        encode_mutation([(table, [change])], 7)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ([{"kind": "row", "key": {"k": 1}, "clustering": {"c": 1}, "row_writetime": 1}] * 2, "two changes for the row"),
        (
            [
                {"kind": "row", "key": {"k": 1}, "clustering": {"c": 1}, "row_writetime": 1},
                {"kind": "row", "key": {"k": 2}, "clustering": {"c": 2}, "row_writetime": 1},
            ],
            "one partition",
        ),
        ([{"kind": "row", "key": {"k": 1}, "clustering": {"c": 1}}], "nothing in it"),
        ([{"kind": "row", "key": {"k": 1}, "clustering": {"c": 1}, "cells": {"nope": _cell(1, 1)}}], "nope"),
        (
            [
                {
                    "kind": "range_deletion",
                    "key": {"k": 1},
                    "deletion_writetime": 1,
                    "deletion_time": 1,
                    "range_start": {"c": start},
                    "range_start_inclusive": True,
                    "range_end": {"c": start + 5},
                    "range_end_inclusive": True,
                }
                for start in (1, 3)
            ],
            "overlapping",
        ),
    ],
)
def test_changes_one_mutation_cannot_hold_are_refused(changes: list[dict[str, Any]], message: str) -> None:
    table = _table("events", ("k", "int", "partition_key"), ("c", "int", "clustering"), ("v", "int", "regular"))
    with pytest.raises(ValueError, match=message):
        encode_mutation([(table, changes)], 7)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(st.data())
def test_encoding_does_not_depend_on_the_order_changes_and_cells_come_in(data: st.DataObject) -> None:
    table = data.draw(tables())
    changes = data.draw(mutations(table))
    shuffled = [dict(c) for c in reversed(changes)]
    for change in shuffled:
        for column, value in (change.get("cells") or {}).items():
            if isinstance(value, dict) and isinstance(value.get("cells"), list):
                change["cells"] = {**change["cells"], column: {**value, "cells": value["cells"][::-1]}}
    assert encode_mutation([(table, shuffled)], 7) == encode_mutation([(table, changes)], 7)


# ---------------------------------------------------------------------------------------------------
# Segments and the CDC index


def _body(key: int, value: int = 1) -> bytes:
    table = _table("events", ("k", "int", "partition_key"), ("v", "int", "regular"))
    change = {"kind": "row", "key": {"k": key}, "row_writetime": START_US, "cells": {"v": _cell(value, START_US)}}
    return encode_mutation([(table, [change])], 7)


def test_idx_offset_advances_to_each_synced_section_end(tmp_path: Path) -> None:
    writer = SegmentWriter(tmp_path, 42, segment_size=1 << 16)
    offsets = []
    for key in range(3):
        end = writer.append(_body(key))
        writer.sync()
        offsets.append(writer.index_path.read_text())
        assert offsets[-1] == str(end)
    chain = _marker_chain(writer.path.read_bytes(), writer.header_length)
    assert [str(end) for _, end in chain] == offsets
    writer.close()


def test_idx_never_points_past_synced_data(tmp_path: Path) -> None:
    writer = SegmentWriter(tmp_path, 42, segment_size=1 << 16)
    writer.append(_body(1))
    writer.sync()
    synced = writer.index_path.read_text()
    unsynced_end = writer.append(_body(2))
    assert writer.index_path.read_text() == synced
    # What follows the durable offset is a zeroed marker: a reader stops there.
    data = writer.path.read_bytes()
    assert data[int(synced) : int(synced) + 8] == bytes(8)
    assert int(synced) < unsynced_end
    writer.close()


def test_sync_without_new_entries_changes_nothing(tmp_path: Path) -> None:
    writer = SegmentWriter(tmp_path, 42, segment_size=1 << 16)
    writer.append(_body(1))
    writer.sync()
    before = writer.path.read_bytes()
    writer.index_path.unlink()
    writer.sync()
    assert writer.path.read_bytes() == before
    assert not writer.index_path.exists()
    writer.close()


def test_close_marks_the_idx_completed_after_a_last_empty_section(tmp_path: Path) -> None:
    writer = SegmentWriter(tmp_path, 42, segment_size=1 << 16)
    end = writer.append(_body(1))
    writer.sync()
    writer.close()
    assert writer.index_path.read_text() == f"{end + 8}\nCOMPLETED"
    assert _marker_chain(writer.path.read_bytes(), writer.header_length)[-1] == (end, end + 8)


def test_segment_without_cdc_mutations_gets_no_idx(tmp_path: Path) -> None:
    writer = SegmentWriter(tmp_path, 42, segment_size=1 << 16)
    writer.append(_body(1), cdc=False)
    writer.sync()
    writer.close()
    assert writer.path.exists()
    assert not writer.index_path.exists()


@pytest.mark.parametrize("compression", ["LZ4Compressor", "org.apache.cassandra.io.compress.ZstdCompressor"])
def test_compressed_segment_idx_counts_logical_uncompressed_offsets(tmp_path: Path, compression: str) -> None:
    writer = SegmentWriter(tmp_path, 42, compression=compression, segment_size=1 << 20)
    ends = []
    for batch in range(3):
        for key in range(50):
            end = writer.append(_body(key, batch))
        writer.sync()
        ends.append(end)
        assert writer.index_path.read_text() == str(end)
    writer.close()
    data = writer.path.read_bytes()
    assert f'"compressionClass":"{compression}"'.encode() in data[: writer.header_length]
    # Logical offsets from the section headers alone: header, then 8 + U per section (format notes, 6).
    logical = writer.header_length
    section_ends = []
    for offset, _ in _marker_chain(data, writer.header_length):
        (uncompressed,) = struct.unpack_from(">i", data, offset + 8)
        logical += 8 + uncompressed
        section_ends.append(logical)
    assert section_ends[:3] == ends
    assert len(data) < ends[-1]  # the file holds compressed blocks
    assert writer.index_path.read_text() == f"{section_ends[-1]}\nCOMPLETED"


def test_full_segment_refuses_the_entry_that_does_not_fit(tmp_path: Path) -> None:
    body = _body(1)
    writer = SegmentWriter(tmp_path, 42, segment_size=20 + 8 + 3 * (len(body) + 12) + 1)
    for key in range(3):
        writer.append(_body(key))
    assert not writer.has_room(len(body))
    with pytest.raises(SegmentFullError):
        writer.append(body)
    assert writer.is_full
    writer.close()
    assert writer.index_path.read_text().endswith("\nCOMPLETED")


def test_sync_with_no_room_for_the_next_marker_closes_the_segment(tmp_path: Path) -> None:
    body = _body(1)
    writer = SegmentWriter(tmp_path, 42, segment_size=20 + 8 + 2 * (len(body) + 12) + 4)
    writer.append(body)
    end = writer.append(body)
    writer.sync()
    assert writer.closed
    assert writer.index_path.read_text() == f"{end}\nCOMPLETED"


def test_plain_segment_is_preallocated_to_the_segment_size(tmp_path: Path) -> None:
    writer = SegmentWriter(tmp_path, 42, segment_size=1 << 16)
    writer.append(_body(1))
    writer.sync()
    assert writer.path.stat().st_size == 1 << 16
    writer.close()


def test_direct_io_segment_grows_in_4k_blocks(tmp_path: Path) -> None:
    writer = SegmentWriter(tmp_path, 42, segment_size=1 << 16, preallocate=False)
    assert writer.path.stat().st_size == 4096
    for key in range(200):
        writer.append(_body(key))
    writer.sync()
    end = int(writer.index_path.read_text())
    assert writer.path.stat().st_size == -(-(end + 1) // 4096) * 4096
    writer.close()


def test_abandoned_segment_keeps_only_what_was_synced(tmp_path: Path) -> None:
    writer = SegmentWriter(tmp_path, 42, segment_size=1 << 16)
    synced = writer.append(_body(1))
    writer.sync()
    writer.append(_body(2))
    writer.abandon()
    assert writer.index_path.read_text() == str(synced)
    assert [end for end, _ in scan_segment(writer.path).entries] == [synced]


# ---------------------------------------------------------------------------------------------------
# Workloads, read back with the reader


def _every_type_table() -> TableSchema:
    fields = (parse_type("text"), parse_type("int"), parse_type("frozen<list<text>>"))
    address = CqlType("udt", fields, name="address", field_names=("street", "zip", "lines"))
    scalars = ["ascii", "bigint", "blob", "boolean", "date", "decimal", "double", "duration", "float", "inet"]
    scalars += ["int", "smallint", "text", "time", "timestamp", "timeuuid", "tinyint", "uuid", "varint"]
    return _table(
        "wide",
        ("a", "text", "partition_key"),
        ("b", "int", "partition_key"),
        ("c1", "timeuuid", "clustering"),
        ("c2", "frozen<tuple<int, text>>", "clustering"),
        ("s1", "text", "static"),
        ("s2", "map<int, text>", "static"),
        *((f"v_{cql}", cql, "regular") for cql in scalars),
        ("l", "list<int>", "regular"),
        ("st", "set<frozen<tuple<int, text>>>", "regular"),
        ("m", "map<text, double>", "regular"),
        ("u", address, "regular"),
        ("fu", address.freeze(), "regular"),
        ("fm", "frozen<map<date, frozen<list<inet>>>>", "regular"),
        ("vec", "vector<float, 3>", "regular"),
        ("vtext", "vector<text, 2>", "regular"),
        table_id=uuid.UUID("11111111-1111-1111-8111-111111111111"),
    )


def _counter_table() -> TableSchema:
    return _table(
        "counts",
        ("k", "bigint", "partition_key"),
        ("c", "smallint", "clustering"),
        ("n1", "counter", "regular"),
        ("n2", "counter", "regular"),
        table_id=uuid.UUID("22222222-2222-1222-8222-222222222222"),
    )


def _workload(**overrides: Any) -> Workload:
    defaults: dict[str, Any] = {"seed": 7, "mutations": 600, "start_timestamp_us": START_US, "first_segment_id": 100}
    defaults.update(segment_size=48 * 1024, sync_every=50)
    return Workload(**{**defaults, **overrides})


@pytest.mark.parametrize(
    ("version", "compression", "preallocate"),
    [(6, None, True), (7, None, False), (7, "LZ4Compressor", True), (8, "ZstdCompressor", True), (8, None, True)],
)
def test_generated_segments_read_back_as_the_logged_changes(
    tmp_path: Path, version: int, compression: str | None, preallocate: bool
) -> None:
    table = realistic_table()
    log = generate([table], _workload(version=version, compression=compression, preallocate=preallocate), [tmp_path])
    assert len(log.segments) > 1
    assert _read_back([table], _node_paths(log)) == _expected(log, [table])


def test_every_cql_type_and_operation_reads_back_as_logged(tmp_path: Path) -> None:
    tables_ = [_every_type_table(), _counter_table()]
    log = generate(tables_, _workload(mutations=800, ttl_fraction=0.3, partitions=40), [tmp_path])
    assert set(log.operations) == {
        "insert", "update", "cell_delete", "row_delete", "range_delete", "partition_delete", "static_write",
        "collection", "batch",
    }  # fmt: skip
    assert _read_back(tables_, _node_paths(log)) == _expected(log, tables_)


def test_table_without_clustering_columns_reads_back_as_logged(tmp_path: Path) -> None:
    table = _table("flat", ("k", "blob", "partition_key"), ("v", "decimal", "regular"), ("s", "set<text>", "regular"))
    log = generate([table], _workload(mutations=300), [tmp_path])
    assert _read_back([table], _node_paths(log)) == _expected(log, [table])


def test_each_mutation_goes_to_replicas_many_nodes(tmp_path: Path) -> None:
    table = realistic_table()
    directories = [tmp_path / name for name in ("a", "b", "c")]
    log = generate([table], _workload(replicas=2), directories)
    assert log.entries == 2 * log.mutations
    copies = collections.Counter()
    for node in range(3):
        assert _read_back([table], _node_paths(log, node)) == _expected(log, [table], node)
        for path in _node_paths(log, node):
            copies.update(body for _, body in scan_segment(path).entries)
    assert set(copies.values()) == {2}


def test_replicas_in_one_directory_interleave_every_mutations_copies(tmp_path: Path) -> None:
    table = realistic_table()
    log = generate([table], _workload(replicas=3), [tmp_path])
    bodies = [body for path in _node_paths(log) for _, body in scan_segment(path).entries]
    assert log.entries == len(bodies) == 3 * log.mutations
    places = collections.defaultdict(list)
    for index, body in enumerate(bodies):
        places[body].append(index)
    assert {len(p) for p in places.values()} == {3}
    # Copies come a few mutations later, with other mutations in between.
    assert any(p[-1] - p[0] > 2 for p in places.values())
    assert _read_back([table], _node_paths(log)) == _expected(log, [table])


def test_full_segments_roll_to_the_next_id_and_complete(tmp_path: Path) -> None:
    log = generate([realistic_table()], _workload(mutations=1500, segment_size=64 * 1024), [tmp_path])
    ids = [s.segment_id for s in log.segments]
    assert ids == list(range(100, 100 + len(ids)))
    assert len(ids) > 2
    for summary in log.segments:
        index = summary.path.with_name(summary.path.name.replace(".log", "_cdc.idx"))
        assert index.read_text() == f"{summary.durable_position}\nCOMPLETED"
    assert sum(s.entries for s in log.segments) == 1500


def test_last_segment_can_be_left_open_with_its_synced_offset(tmp_path: Path) -> None:
    log = generate([realistic_table()], _workload(close_last_segment=False), [tmp_path])
    last = log.segments[-1]
    index = last.path.with_name(last.path.name.replace(".log", "_cdc.idx"))
    assert not last.completed
    assert index.read_text() == str(last.durable_position)
    assert scan_segment(last.path).entries[-1][0] == last.durable_position


def test_same_seed_writes_the_same_segments(tmp_path: Path) -> None:
    first = generate([realistic_table()], _workload(), [tmp_path / "first"])
    second = generate([realistic_table()], _workload(), [tmp_path / "second"])
    assert [s.path.read_bytes() for s in first.segments] == [s.path.read_bytes() for s in second.segments]


def test_new_segment_ids_start_past_the_ones_already_there(tmp_path: Path) -> None:
    existing = int(time.time() * 1000) + 10**9
    (tmp_path / f"CommitLog-7-{existing}.log").touch()
    log = generate([realistic_table()], _workload(first_segment_id=None, mutations=10), [tmp_path])
    assert log.segments[0].segment_id == existing + 2


def test_rate_paces_writes_on_the_wall_clock(tmp_path: Path) -> None:
    started = time.time()
    log = generate([realistic_table()], _workload(rate=200, mutations=40, start_timestamp_us=None), [tmp_path])
    elapsed = time.time() - started
    assert elapsed >= 39 / 200
    writetimes = [c.get("row_writetime") or c.get("deletion_writetime") for c in log.changes("shop.orders")]
    writetimes = [w for w in writetimes if w is not None]
    assert all(started * 1e6 <= w <= (started + elapsed) * 1e6 for w in writetimes)


def _newest_timestamp(value: Any) -> int | None:
    """The newest write time anywhere in a logged change: row liveness, deletions, cells, collection elements."""
    if isinstance(value, list):
        found = [_newest_timestamp(item) for item in value]
    elif isinstance(value, dict):
        found = [v for k, v in value.items() if k in _TIMESTAMP_KEYS and isinstance(v, int)]
        found += [_newest_timestamp(v) for v in value.values() if isinstance(v, dict | list)]
    else:
        return None
    return max((f for f in found if f is not None), default=None)


_TIMESTAMP_KEYS = ("row_writetime", "deletion_writetime", "writetime", "deletion")


def test_simulated_rate_lays_write_times_on_an_exact_clock_without_sleeping(tmp_path: Path) -> None:
    started = time.monotonic()
    log = generate([realistic_table()], _workload(simulated_rate=20, mutations=60), [tmp_path])
    # Paced on the wall clock, 60 mutations at 20 per second would take 3 s.
    assert time.monotonic() - started < 2
    newest: dict[tuple[int, int], int] = {}
    for change in log.changes("shop.orders"):
        place = (change["segment_id"], change["position"])
        newest[place] = max(newest.get(place, 0), _newest_timestamp(change) or 0)
    assert [newest[place] for place in sorted(newest)] == [START_US + n * 50_000 for n in range(60)]


def test_seconds_count_simulated_time_under_a_simulated_rate(tmp_path: Path) -> None:
    log = generate([realistic_table()], _workload(simulated_rate=100, mutations=None, seconds=0.5), [tmp_path])
    assert log.mutations == 50


def test_simulated_rate_and_wall_clock_rate_exclude_each_other() -> None:
    with pytest.raises(ValueError, match="simulated_rate"):
        Workload(rate=10, simulated_rate=10)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.data(), st.sampled_from([6, 7, 8]))
def test_any_mutation_of_any_table_reads_back_as_encoded(
    tmp_path_factory: Any, data: st.DataObject, version: int
) -> None:
    table = data.draw(tables())
    changes = data.draw(mutations(table, version=version))
    directory = tmp_path_factory.mktemp("segment")
    with SegmentWriter(directory, 1, version, segment_size=1 << 22) as writer:
        position = writer.append(encode_mutation([(table, changes)], version))
    expected = {(table.qualified_name, 1, position): sorted(_normal(c) for c in changes)}
    assert _read_back([table], [writer.path]) == expected


def test_generate_command_writes_segments_and_reports_each(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    directory = tmp_path / "cdc_raw"
    code = main(["generate", "--cdc-raw", str(directory), "--mutations", "300", "--compression", "snappy"])
    assert code == 0
    segments = sorted(directory.glob("CommitLog-7-*.log"))
    assert segments
    lines = capsys.readouterr().err.splitlines()
    assert any(str(segments[0]) in line and "COMPLETED" in line for line in lines)
    assert sum(len(scan_segment(path).entries) for path in segments) == 300
