"""Staged ranges: each change's write time is found, whatever it touched (lag is measured from it)."""

from __future__ import annotations

import uuid
from pathlib import Path

from cdc_assets.cassandra_schema.cql_file import load_cql_file
from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.cassandra_schema.types import CqlType, native
from cdc_assets.change_batch import build_change_batch
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


def test_a_user_type_field_named_like_a_path_gives_its_own_write_time() -> None:
    # Field ".z" is not field "z": a name string handed to pyarrow as a dotted path would read "z"'s cell.
    udt = CqlType("udt", (native("int"), native("int")), name="pair", field_names=("z", ".z"))
    table = TableSchema(
        "ks", "t", uuid.uuid4(), (Column("k", native("int"), "partition_key", 0), Column("u", udt, "regular"))
    )
    cells = {"z": _cell(1, 100), ".z": _cell(2, 500)}
    change = {"kind": "row", "key": {"k": 1}, "cells": {"u": {"deletion": None, "cells": cells}}}
    batch = build_change_batch(table, [{**change, "segment_id": 1, "position": 0}])
    assert write_times(batch).to_pylist() == [500]


def _cell(value: int, writetime: int) -> dict:
    return {"value": value, "writetime": writetime, "ttl": None, "expires_at": None, "deleted": False}
