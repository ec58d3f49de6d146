"""Staged ranges: each change's write time is found, whatever it touched (lag is measured from it)."""

from __future__ import annotations

from pathlib import Path

from cdc_assets.cassandra_schema.cql_file import load_cql_file
from cdc_assets.commitlog.cdc_dir import read_durable
from cdc_assets.commitlog.generator import OperationMix, Workload, generate
from cdc_assets.commitlog.reader import CommitLogReader
from cdc_assets.staging import write_times
from cdc_assets_tests.pipeline_harness import SHOP_CQL


def test_a_change_that_only_adds_collection_elements_has_its_write_time(tmp_path: Path) -> None:
    registry = load_cql_file(SHOP_CQL)
    only_elements = OperationMix(
        insert=1,
        update=0,
        cell_delete=0,
        row_delete=0,
        range_delete=0,
        partition_delete=0,
        static_write=0,
        collection=50,
        batch=0,
    )
    log = generate(list(registry), Workload(seed=9, mutations=400, mix=only_elements), [tmp_path])
    read = read_durable(CommitLogReader(load_cql_file(SHOP_CQL)), tmp_path, None)
    for name, batch in read.result.batches.items():
        times = write_times(batch)
        assert times.null_count == 0, name
        assert len(times) == len(log.changes(name))
