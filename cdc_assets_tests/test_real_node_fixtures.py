"""Segments a real Cassandra 5.0 node wrote decode to the rows the node itself answered, without a node.

``fixtures/real_node/<variant>/`` holds the ``cdc_raw`` of a fresh node after :data:`STATEMENTS` (the
workload of ``test_cassandra_node``, then a UDT that gains a field and a renamed clustering column; segments
gzipped, idx files as written) and ``select.json``, the node's
``SELECT * FROM fixture.t`` in canonical form (``scripts/make_real_node_fixtures.py`` wrote them). The
reader starts with no table definitions: the keyspace, the UDT and the table come from the schema
mutations the node logged in the same segments.
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
from cdc_assets.cassandra_schema.tables import SchemaRegistry
from cdc_assets.commitlog.cdc_dir import list_cdc_segments, read_new_changes
from cdc_assets.commitlog.reader import CommitLogReader, scan_segment
from cdc_assets_tests.test_cassandra_node import SCHEMA, WRITES

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "real_node"
KEYSPACE = "fixture"
VARIANTS = {
    "v7": NodeSettings(),
    "v8": NodeSettings(storage_compatibility_mode="NONE"),
    "v7-lz4": NodeSettings(commitlog_compression="LZ4Compressor"),
}

STATEMENTS = [
    *SCHEMA,
    *WRITES,
    "ALTER TYPE {ks}.address ADD country text",
    "ALTER TABLE {ks}.t RENAME c TO cc",
    "INSERT INTO {ks}.t (k, cc, v, home) VALUES (5, 'z', 70, {street: 'New', zip: 1, country: 'NZ'})",
]


def jsonable(value: Any) -> Any:
    """Canonical rows as JSON values: decimals as their text (scale kept), blobs as 0x-hex, tuples as lists."""
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return value


def _cdc_raw(variant: str, into: Path) -> Path:
    """The variant's cdc_raw as the node left it: segments unpacked, idx files beside them."""
    for packed in (FIXTURES / variant).glob("*.log.gz"):
        (into / packed.name.removesuffix(".gz")).write_bytes(gzip.decompress(packed.read_bytes()))
    for index in (FIXTURES / variant).glob("*_cdc.idx"):
        (into / index.name).write_bytes(index.read_bytes())
    return into


@pytest.mark.parametrize("variant", VARIANTS)
def test_segments_decode_to_the_nodes_select(variant: str, tmp_path: Path) -> None:
    expected = json.loads((FIXTURES / variant / "select.json").read_text(encoding="utf-8"))
    reader = CommitLogReader(SchemaRegistry())

    read = read_new_changes(reader, _cdc_raw(variant, tmp_path), None)

    table = read.result.tables[expected["table"]]
    model = CassandraModel(table)
    model.apply(read.result.batches[expected["table"]])
    asked_at = dt.datetime.fromisoformat(expected["asked_at"])
    assert read.result.stats.problems == []
    assert read.result.stats.dead_letters == []
    assert jsonable(model.current_state(asked_at)) == expected["rows"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_segments_have_the_nodes_version_and_compression(variant: str, tmp_path: Path) -> None:
    settings = VARIANTS[variant]
    segments = list_cdc_segments(_cdc_raw(variant, tmp_path))
    assert segments
    for segment in segments:
        descriptor = scan_segment(segment.path).descriptor
        assert (segment.version, descriptor.version) == (settings.segment_version, settings.segment_version)
        assert descriptor.compression_class == settings.commitlog_compression
