"""A whole-surface workload a real Cassandra 5.0 node logged decodes to what the node answered, without a node.

``fixtures/real_node/workload-<variant>/`` holds the ``cdc_raw`` of a fresh node after a run of
``cassandra_workloads`` (segments gzipped, idx files as written) and ``select.json``: the node's
``SELECT *`` of every table right after the workload and again once every TTL was over, each with the second
it answered at (``scripts/make_workload_fixtures.py`` wrote them). The reader starts with no table
definitions: keyspace, user type, tables, the column added, dropped and re-added, and the table created
half-way all come from the schema mutations the node logged in the same segments.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from cdc_assets.cassandra_model import CassandraModel
from cdc_assets.cassandra_node import NodeSettings
from cdc_assets.cassandra_schema.tables import SchemaRegistry, TableSchema
from cdc_assets.cassandra_schema.types import CqlType
from cdc_assets.commitlog.cdc_dir import read_new_changes
from cdc_assets.commitlog.reader import CommitLogReader
from cdc_assets.destinations.cassandra_values import canonical_rows
from cdc_assets_tests.test_real_node_fixtures import FIXTURES

KEYSPACE = "workload"
SEED = 7
STATEMENTS = 1200
VARIANTS = {"v7": NodeSettings()}


def unpack(fixture: Path, into: Path) -> Path:
    """The fixture's cdc_raw as the node left it: segments unpacked, idx files beside them."""
    for packed in fixture.glob("*.log.gz"):
        (into / packed.name.removesuffix(".gz")).write_bytes(gzip.decompress(packed.read_bytes()))
    for index in fixture.glob("*_cdc.idx"):
        (into / index.name).write_bytes(index.read_bytes())
    return into


def from_json(cql: CqlType, value: Any) -> Any:
    """A value as ``test_real_node_fixtures.jsonable`` wrote it, back in a form ``canonical_value`` takes."""
    if value is None:
        return None
    kind = cql.kind
    if kind == "blob":
        return bytes.fromhex(value[2:])
    if kind == "decimal":
        return Decimal(value)
    if kind == "duration":
        return tuple(value)
    if kind in ("list", "set", "vector"):
        return [from_json(cql.args[0], item) for item in value]
    if kind == "map":
        return [(from_json(cql.args[0], k), from_json(cql.args[1], v)) for k, v in value]
    if kind in ("tuple", "udt"):
        names = cql.field_names if kind == "udt" else [f"f{i}" for i in range(len(cql.args))]
        return [from_json(arg, value[name]) for name, arg in zip(names, cql.args, strict=True)]
    return value


def node_rows(table: TableSchema, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    columns = table.partition_key + table.clustering + table.statics + table.regulars
    return canonical_rows(table, [{c.name: from_json(c.type, row[c.name]) for c in columns} for row in rows])


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_whole_surface_workload_decodes_to_the_nodes_select_before_and_after_ttls(
    variant: str, tmp_path: Path
) -> None:
    fixture = FIXTURES / f"workload-{variant}"
    document = json.loads((fixture / "select.json").read_text(encoding="utf-8"))
    reader = CommitLogReader(SchemaRegistry())

    read = read_new_changes(reader, unpack(fixture, tmp_path), None).result

    assert read.stats.problems == [] and read.stats.dead_letters == []
    for answer in document["answers"]:
        asked_at = dt.datetime.fromisoformat(answer["asked_at"])
        assert set(answer["rows"]) <= set(read.tables)
        for name, rows in answer["rows"].items():
            table = read.tables[name]
            model = CassandraModel(table)
            model.apply(read.batches[name])
            assert model.current_state(asked_at) == node_rows(table, rows), f"{name} at {asked_at}"
