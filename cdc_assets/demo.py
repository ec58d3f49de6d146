"""``make run`` until the Dagster pipeline exists: generate a workload into a local cdc_raw, then decode it."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from cdc_assets.cassandra_schema.tables import SchemaRegistry
from cdc_assets.commitlog.cdc_dir import cdc_raw_usage, list_cdc_segments, read_new_changes
from cdc_assets.commitlog.generator.workload import Workload, generate, realistic_table
from cdc_assets.commitlog.reader import CommitLogReader

SAMPLE_CHANGES = 3


def run_demo(cdc_raw: str, mutations: int) -> int:
    """Write ``mutations`` generated writes of ``shop.orders`` into ``cdc_raw`` and print what the reader finds."""
    directory = Path(cdc_raw)
    directory.mkdir(parents=True, exist_ok=True)
    table = realistic_table()
    started = time.perf_counter()
    log = generate([table], Workload(seed=int(time.time()), mutations=mutations, segment_size=4 << 20), [directory])
    print(f"generated {log.mutations} mutations of {table.qualified_name} in {time.perf_counter() - started:.1f} s:")
    for operation, count in sorted(log.operations.items()):
        print(f"  {operation:<17} {count}")
    segments = list_cdc_segments(directory)
    print(f"cdc_raw {directory}: {len(segments)} segments, {cdc_raw_usage(directory) / 1e6:.1f} MB")

    started = time.perf_counter()
    read = read_new_changes(CommitLogReader(SchemaRegistry([table])), directory, None)
    seconds = time.perf_counter() - started
    stats = read.result.stats
    print(
        f"read {stats.mutations} mutations -> {stats.changes} changes in {seconds:.2f} s "
        f"({stats.mutations / seconds:,.0f} mutations/s); resume position {read.position}"
    )
    for name, batch in read.result.batches.items():
        kinds = Counter(batch.column("_cdc_kind").to_pylist())
        print(
            f"  {name}: {batch.num_rows} changes, {batch.nbytes / 1e6:.1f} MB as Arrow; "
            + ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items()))
        )
        for row in batch.slice(0, SAMPLE_CHANGES).to_pylist():
            print("   ", json.dumps({column: value for column, value in row.items() if value is not None}, default=str))
    for problem in stats.problems:
        print(f"problem: {problem}")
    for letter in stats.dead_letters:
        print(f"set aside: {letter.segment}:{letter.position}: {letter.reason}")
    return 1 if stats.problems or stats.dead_letters else 0
