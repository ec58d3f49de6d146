"""Decode throughput: generated segments of a realistic table, next to a plain read of the same files.

    make bench-decode                      # >= 200 MB of plain v7 segments
    .venv/bin/python benchmarks/bench_decode.py --megabytes 50 --compression LZ4Compressor

Generating realistic mutations is slower than decoding them, so a pool of distinct mutations is drawn
once and written round-robin until the segments reach the size asked for. Everything runs in one process
on one core; times are that process's CPU time (user + system), so other work on the machine does not
count against it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from cdc_assets.cassandra_schema.tables import SchemaRegistry
from cdc_assets.commitlog.generator.segment_writer import SegmentFullError, SegmentWriter
from cdc_assets.commitlog.generator.workload import Workload, generate, realistic_table
from cdc_assets.commitlog.mutation import MutationDecoder
from cdc_assets.commitlog.reader import CommitLogReader, ReadStats, scan_segment

SEGMENT_SIZE = 32 << 20
FIRST_SEGMENT_ID = 1_800_000_000_000


def mutation_pool(directory: Path, count: int) -> list[bytes]:
    """Distinct mutations of the realistic table, drawn by the workload generator (default operation mix)."""
    generate([realistic_table()], Workload(seed=7, mutations=count, segment_size=SEGMENT_SIZE), [directory])
    return [body for path in sorted(directory.glob("*.log")) for _, body in scan_segment(path).entries]


def write_segments(directory: Path, pool: list[bytes], megabytes: int, compression: str | None) -> list[Path]:
    paths: list[Path] = []
    written = 0
    segment_id = FIRST_SEGMENT_ID
    index = 0
    while written < megabytes * 1_000_000:
        writer = SegmentWriter(directory, segment_id, 7, compression, SEGMENT_SIZE)
        try:
            while True:
                writer.append(pool[index % len(pool)])
                index += 1
                if index % 1000 == 0:
                    writer.sync()
        except SegmentFullError:
            writer.close()
        paths.append(writer.path)
        written += writer.path.stat().st_size
        segment_id += 1
    return paths


def plain_read(paths: list[Path]) -> float:
    started = time.process_time()
    for path in paths:
        with path.open("rb") as source:
            while source.read(1 << 20):
                pass
    return time.process_time() - started


def cells_in(batch: pa.RecordBatch) -> int:
    """Cells the batch carries: one per simple column touched, one per collection element."""
    total = 0
    for field in batch.schema:
        if not pa.types.is_struct(field.type) or field.name.startswith("_cdc_"):
            continue
        column = batch.column(field.name)
        if field.type.get_field_index("cells") >= 0:
            cells = column.field("cells")
            if pa.types.is_list(cells.type):
                total += pc.sum(pc.list_value_length(cells)).as_py() or 0
            else:  # a non-frozen UDT: one cell per field written
                total += sum(len(child) - child.null_count for child in cells.flatten())
        else:
            total += len(column) - column.null_count
    return total


def decode(paths: list[Path], build_arrow: bool) -> tuple[float, ReadStats, int]:
    reader = CommitLogReader(SchemaRegistry([realistic_table()]), track_schema=False)
    started = time.process_time()
    cells = 0
    stats = ReadStats()
    for path in paths:
        if build_arrow:
            result = reader.read_segment(path)
            cells += sum(cells_in(batch) for batch in result.batches.values())
            for name in ("entries", "mutations", "changes", "bytes_read"):
                setattr(stats, name, getattr(stats, name) + getattr(result.stats, name))
        else:
            for _ in reader.iter_changes(path, stats=stats):
                pass
    return time.process_time() - started, stats, cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--pool", type=int, default=20_000, help="distinct mutations to draw")
    parser.add_argument("--compression", default=None)
    args = parser.parse_args()
    accelerated = MutationDecoder(SchemaRegistry()).accelerated
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        pool_dir, segments_dir = Path(tmp, "pool"), Path(tmp, "segments")
        pool_dir.mkdir()
        segments_dir.mkdir()
        pool = mutation_pool(pool_dir, args.pool)
        paths = write_segments(segments_dir, pool, args.megabytes, args.compression)
        size = sum(path.stat().st_size for path in paths)
        plain_read(paths)  # warm the page cache, so both runs below read from memory
        read_seconds = plain_read(paths)
        decode_seconds, decode_stats, _ = decode(paths, build_arrow=False)
        arrow_seconds, arrow_stats, cells = decode(paths, build_arrow=True)
    mean_mutation = sum(map(len, pool)) / len(pool)
    print(
        f"{len(paths)} segments, {size / 1e6:.0f} MB on disk ({args.compression or 'plain'}), "
        f"{arrow_stats.mutations:,} mutations (pool of {len(pool):,}, mean {mean_mutation:.0f} bytes), "
        f"{arrow_stats.changes:,} changes, {cells:,} cells; table shop.orders (9 columns); "
        f"decoder: {'C accelerated' if accelerated else 'pure Python'}; one process, one core"
    )
    rows = [
        ("plain sequential read (baseline)", read_seconds, None, None),
        ("decode to change dicts", decode_seconds, decode_stats.mutations, None),
        ("decode to Arrow change batches", arrow_seconds, arrow_stats.mutations, cells),
    ]
    print(f"{'step':<34} {'seconds':>8} {'MB/s':>9} {'mutations/s':>12} {'cells/s':>11}")
    for name, seconds, mutations, cell_count in rows:
        rate = f"{mutations / seconds:>12,.0f}" if mutations else f"{'':>12}"
        cell_rate = f"{cell_count / seconds:>11,.0f}" if cell_count else f"{'':>11}"
        print(f"{name:<34} {seconds:>8.2f} {size / 1e6 / seconds:>9.1f} {rate} {cell_rate}")


if __name__ == "__main__":
    main()
