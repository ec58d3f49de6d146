"""The CDC directory: only durable bytes (up to the idx offset) are read; COMPLETED finishes a segment."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

from cdc_assets.cassandra_schema.cql_file import load_cql_file
from cdc_assets.cassandra_schema.tables import SchemaRegistry
from cdc_assets.commitlog.cdc_dir import (
    CdcIndex,
    IndexNotReadyError,
    list_cdc_segments,
    parse_cdc_index,
    read_cdc_index,
    read_durable,
    read_new_changes,
)
from cdc_assets.commitlog.errors import SegmentVanishedError
from cdc_assets.commitlog.reader import CommitLogReader, Position
from cdc_assets_tests.shared_fixtures import SCHEMA_FIXTURES, segments

SEGMENT = segments("4.0.11")[0]
# Section ends in the real 4.0.11 segment (format notes, appendix A): 467, 1576, 75003, 75011.


def _reader() -> CommitLogReader:
    return CommitLogReader(load_cql_file(SCHEMA_FIXTURES / "standard1-4.0.11.cql"))


@pytest.fixture
def cdc_raw(tmp_path: Path) -> Path:
    directory = tmp_path / "cdc_raw"
    directory.mkdir()
    shutil.copy(SEGMENT, directory / SEGMENT.name)
    return directory


def _write_index(cdc_raw: Path, offset: int, completed: bool = False) -> None:
    text = f"{offset}\nCOMPLETED" if completed else str(offset)
    (cdc_raw / SEGMENT.name.replace(".log", "_cdc.idx")).write_text(text)


def _positions(read) -> list[int]:
    batch = read.result.batches.get("Keyspace1.Standard1")
    return [] if batch is None else batch.column("_cdc_position").to_pylist()


def test_idx_text_is_parsed_as_offset_and_completion() -> None:
    assert parse_cdc_index("75011") == CdcIndex(75011, False)
    assert parse_cdc_index("75011\nCOMPLETED") == CdcIndex(75011, True)
    assert parse_cdc_index("") is None
    assert parse_cdc_index("75011\nCOMPL") is None


def test_a_segment_without_idx_is_not_read(cdc_raw: Path) -> None:
    read = read_new_changes(_reader(), cdc_raw, None)
    assert _positions(read) == []
    assert read.position is None


def test_reading_stops_at_the_durable_offset_and_resumes_without_duplicates(cdc_raw: Path) -> None:
    reader = _reader()
    _write_index(cdc_raw, 1576)
    first = read_new_changes(reader, cdc_raw, None)
    assert first.position is not None and first.position.offset <= 1576
    assert all(position <= 1576 for position in _positions(first))
    _write_index(cdc_raw, 75011, completed=True)
    second = read_new_changes(reader, cdc_raw, first.position)
    everything = read_new_changes(_reader(), cdc_raw, None)
    assert sorted(_positions(first) + _positions(second)) == sorted(_positions(everything))
    assert len(_positions(everything)) == 355
    assert [s.path.name for s in second.finished_segments] == [SEGMENT.name]


def test_newer_segments_wait_until_older_ones_are_completed(cdc_raw: Path) -> None:
    newer = cdc_raw / "CommitLog-7-1699285478685.log"
    newer.write_bytes(b"")
    (cdc_raw / "CommitLog-7-1699285478685_cdc.idx").write_text("20")
    _write_index(cdc_raw, 75011)
    read = read_new_changes(_reader(), cdc_raw, None)
    assert read.finished_segments == []
    assert read.position == Position(1699285478684, max(_positions(read)))


def test_an_empty_idx_caught_mid_rewrite_is_retried_not_read_as_zero(tmp_path: Path) -> None:
    index = tmp_path / "CommitLog-7-1_cdc.idx"
    index.write_text("")
    with pytest.raises(IndexNotReadyError):
        read_cdc_index(index, attempts=3, pause=0)
    segment = tmp_path / "CommitLog-7-1.log"
    segment.write_bytes(b"")
    assert list_cdc_segments(tmp_path)[0].index is None


def test_idx_rewritten_concurrently_is_never_misread(tmp_path: Path) -> None:
    index = tmp_path / "CommitLog-7-1_cdc.idx"
    written = [str(offset) for offset in range(100_000, 100_000 + 400 * 37, 37)]
    index.write_text(written[0])
    stop = threading.Event()

    def rewrite() -> None:
        for text in written:
            with index.open("w") as out:  # truncate, then write: what Cassandra's FileWriter does
                out.flush()
                out.write(text)
            time.sleep(0.0002)
        stop.set()

    writer = threading.Thread(target=rewrite)
    writer.start()
    seen = []
    while not stop.is_set():
        try:
            seen.append(read_cdc_index(index, pause=0.0001).offset)
        except IndexNotReadyError:
            continue
    writer.join()
    valid = {int(text) for text in written}
    assert set(seen) <= valid
    assert seen == sorted(seen)
    assert read_cdc_index(index).offset == int(written[-1])


def test_a_segment_deleted_before_it_is_read_is_reported_as_lost_not_a_crash(cdc_raw: Path) -> None:
    vanished = cdc_raw / "CommitLog-7-1699285478683.log"
    result = _reader().read_segments([vanished, cdc_raw / SEGMENT.name])
    [problem] = result.stats.problems
    assert isinstance(problem, SegmentVanishedError) and str(vanished) in str(problem) and "lost" in str(problem)
    assert result.batches["Keyspace1.Standard1"].num_rows == 355


def test_each_problem_is_logged_once_however_many_segments_one_read_covers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    damaged = bytearray(SEGMENT.read_bytes())
    damaged[19646 + 20] ^= 0xFF  # inside the body of the Standard1 entry at 19646 (format notes, appendix A)
    path = tmp_path / SEGMENT.name
    path.write_bytes(damaged)
    caplog.set_level("WARNING", logger="cdc_assets.commitlog.reader")
    result = CommitLogReader(load_cql_file(SCHEMA_FIXTURES / "standard1-4.0.11.cql")).read_segments([path, path])
    logged = [record.getMessage() for record in caplog.records if "CRC" in record.getMessage()]
    assert len(result.stats.problems) == 2  # the damaged entry, once per read of the segment
    assert logged == [str(problem) for problem in result.stats.problems]


@pytest.mark.parametrize(("max_changes", "max_bytes"), [(150, None), (None, 9_000), (40, 5_000)])
def test_bounded_reads_cover_the_log_once_and_count_only_what_they_kept(
    tmp_path: Path, max_changes: int | None, max_bytes: int | None
) -> None:
    from cdc_assets.commitlog.generator import Workload, generate, realistic_table

    table = realistic_table()
    log = generate([table], Workload(seed=4, mutations=1500, sync_every=50, segment_size=128 << 10), [tmp_path])
    whole = read_durable(CommitLogReader(SchemaRegistry([table])), tmp_path, None)
    after, reads, positions, mutations = None, 0, [], 0
    while True:
        read = read_durable(
            CommitLogReader(SchemaRegistry([table])), tmp_path, after, max_changes=max_changes, max_bytes=max_bytes
        )
        if read.position == after:
            break
        batch = read.result.batches["shop.orders"]
        positions += list(zip(batch.column("_cdc_segment_id").to_pylist(), batch.column("_cdc_position").to_pylist()))
        mutations += read.result.stats.mutations
        assert read.result.stats.changes == batch.num_rows
        after, reads = read.position, reads + 1
    assert reads > 3
    expected = [(c["segment_id"], c["position"]) for c in log.changes("shop.orders")]
    assert positions == expected, "every change read once, in log order"
    assert mutations == whole.result.stats.mutations == log.mutations
