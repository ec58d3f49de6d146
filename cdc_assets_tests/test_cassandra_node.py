"""A real Cassandra 5.0 node is the oracle: what the reader decodes from its ``cdc_raw`` is what it answers.

Each test writes through cassandra-driver into a keyspace of its own, waits until the writes are durable in
``cdc_raw``, reads the schema from the node's ``system_schema`` and the segments with the project's reader,
and compares the reference model's state with the node's own ``SELECT *``. The last test runs the real
Dagster pipeline against the node and compares every destination with it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from cdc_assets.cassandra_model import CassandraModel
from cdc_assets.cassandra_node import CassandraNode, NodeSettings, keystore_password
from cdc_assets.cassandra_schema.driver import load_from_cluster
from cdc_assets.commitlog.cdc_dir import list_cdc_segments, read_new_changes
from cdc_assets.commitlog.encryption import EncryptionKeys
from cdc_assets.commitlog.reader import CommitLogReader, scan_segment
from cdc_assets_tests.cassandra_fixture import NodeFactory
from cdc_assets_tests.cassandra_oracle import select_all
from cdc_assets_tests.pipeline_harness import open_pipeline, write_config

pytestmark = pytest.mark.cassandra

SETTINGS = {
    "v7": NodeSettings(),
    "v8": NodeSettings(storage_compatibility_mode="NONE"),
    "v7-lz4": NodeSettings(commitlog_compression="LZ4Compressor"),
    "v8-zstd": NodeSettings(storage_compatibility_mode="NONE", commitlog_compression="ZstdCompressor"),
    "v7-encrypted": NodeSettings(encryption=True),
}

# Every kind of column the reader decodes: static, frozen and non-frozen collections, a UDT, a tuple, a
# vector, the temporal types, and a descending clustering column.
SCHEMA = [
    "CREATE TYPE {ks}.address (street text, zip int)",
    """CREATE TABLE {ks}.t (
        k int, c text, s text STATIC,
        v bigint, b boolean, f float, d double, dec decimal, vi varint, sm smallint, ti tinyint,
        ts timestamp, dt date, tm time, du duration, u uuid, tu timeuuid, ip inet, bl blob, a ascii,
        tags set<text>, scores map<text, int>, events list<int>, fl frozen<list<int>>,
        home address, fhome frozen<address>, pair tuple<int, text>, vec vector<float, 3>,
        PRIMARY KEY (k, c)
    ) WITH CLUSTERING ORDER BY (c DESC) AND cdc = true""",
]
WRITES = [
    """INSERT INTO {ks}.t (k, c, s, v, b, f, d, dec, vi, sm, ti, ts, dt, tm, du, u, tu, ip, bl, a,
        tags, scores, events, fl, home, fhome, pair, vec)
       VALUES (1, 'a', 'static-1', 10, true, 1.5, 2.25, 3.125, 12345678901234567890, 7, -3,
        '2024-02-29 12:34:56.789+0000', '2024-02-29', '12:34:56.123456789', 1mo2d3h4m5s6ms7us8ns,
        6ba7b810-9dad-11d1-80b4-00c04fd430c8, 50554d6e-29bb-11e5-b345-feff819cdc9f, '2001:db8::1', 0xcafe, 'abc',
        {'x', 'y'}, {'one': 1, 'two': 2}, [1, 2, 3], [4, 5], {street: 'Main', zip: 123},
        {street: 'Side', zip: 456}, (7, 'seven'), [0.5, 1.5, -2.0])""",
    "INSERT INTO {ks}.t (k, c, v, ip) VALUES (1, 'b', 20, '10.0.0.1') USING TTL 86400",
    "INSERT INTO {ks}.t (k, c, v) VALUES (1, 'c', 30)",
    "UPDATE {ks}.t SET v = 11, tags = tags + {'z'}, scores['three'] = 3, events = events + [4] WHERE k = 1 AND c = 'a'",
    "UPDATE {ks}.t SET tags = tags - {'x'}, scores = scores - {'one'}, home.zip = 124 WHERE k = 1 AND c = 'a'",
    "DELETE bl, fl FROM {ks}.t WHERE k = 1 AND c = 'a'",
    "DELETE FROM {ks}.t WHERE k = 1 AND c = 'c'",
    "INSERT INTO {ks}.t (k, c, v) VALUES (2, 'x', 40)",
    "INSERT INTO {ks}.t (k, c, v) VALUES (2, 'y', 50)",
    "DELETE FROM {ks}.t WHERE k = 2 AND c > 'x'",
    "INSERT INTO {ks}.t (k, c, v) VALUES (3, 'q', 60)",
    "DELETE FROM {ks}.t WHERE k = 3",
    "UPDATE {ks}.t SET s = 'static-only' WHERE k = 4",
]

# PostgreSQL and TimescaleDB keep time and duration to the microsecond (pg_types.py): the pipeline's
# writes stay within what every destination holds exactly.
PIPELINE_WRITES = [write.replace("56.123456789", "56.123456").replace("7us8ns", "7us") for write in WRITES]


def _keyspace(session: Any) -> str:
    name = f"ks_{uuid.uuid4().hex[:12]}"
    session.execute(f"CREATE KEYSPACE {name} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    return name


def _write(session: Any, keyspace: str, statements: list[str]) -> None:
    for statement in statements:
        session.execute(statement.replace("{ks}", keyspace))


def _reader(node: CassandraNode, keyspace: str) -> CommitLogReader:
    keys = EncryptionKeys.from_keystore(node.keystore, keystore_password(node.keystore)) if node.keystore else None
    return CommitLogReader(load_from_cluster(node.session(), [keyspace]), keys=keys)


def _decoded_and_answered(node: CassandraNode, statements: list[str]) -> tuple[list[dict], list[dict]]:
    """Run ``statements`` in a new keyspace; the state decoded from ``cdc_raw`` and the node's SELECT * of ``t``."""
    session = node.session()
    keyspace = _keyspace(session)
    _write(session, keyspace, statements)
    node.wait_for_cdc()

    reader = _reader(node, keyspace)
    read = read_new_changes(reader, node.cdc_raw, None)
    table = reader.registry.by_name(keyspace, "t")
    model = CassandraModel(table)
    model.apply(read.result.batches[f"{keyspace}.t"])
    assert read.result.stats.problems == []
    assert read.result.stats.dead_letters == []
    return model.current_state(), select_all(session, table)


@pytest.mark.parametrize("label", SETTINGS)
def test_reader_decodes_what_the_node_answers(cassandra_nodes: NodeFactory, label: str) -> None:
    decoded, answered = _decoded_and_answered(cassandra_nodes(SETTINGS[label]), SCHEMA + WRITES)

    assert decoded == answered


def test_a_renamed_key_column_keeps_the_values_written_before_the_rename(cassandra_node: CassandraNode) -> None:
    decoded, answered = _decoded_and_answered(
        cassandra_node,
        [
            "CREATE TABLE {ks}.t (k int, c int, v text, PRIMARY KEY (k, c)) WITH cdc = true",
            "INSERT INTO {ks}.t (k, c, v) VALUES (1, 1, 'before')",
            "INSERT INTO {ks}.t (k, c, v) VALUES (1, 7, 'deleted by the range')",
            "DELETE FROM {ks}.t WHERE k = 1 AND c > 5",
            "ALTER TABLE {ks}.t RENAME c TO renamed",
            "INSERT INTO {ks}.t (k, renamed, v) VALUES (1, 2, 'after')",
        ],
    )

    assert decoded == answered


def test_a_udt_that_gained_a_field_keeps_the_values_written_before(cassandra_node: CassandraNode) -> None:
    decoded, answered = _decoded_and_answered(
        cassandra_node,
        [
            "CREATE TYPE {ks}.address (street text)",
            "CREATE TABLE {ks}.t (k int PRIMARY KEY, home address, fhome frozen<address>, "
            "past list<frozen<address>>) WITH cdc = true",
            "INSERT INTO {ks}.t (k, home, fhome, past) VALUES (1, {street: 'a'}, {street: 'b'}, [{street: 'c'}])",
            "ALTER TYPE {ks}.address ADD zip int",
            "INSERT INTO {ks}.t (k, fhome) VALUES (2, {street: 'd', zip: 5})",
        ],
    )

    assert decoded == answered


@pytest.mark.parametrize("label", SETTINGS)
def test_segments_have_the_version_compression_and_encryption_asked_for(
    cassandra_nodes: NodeFactory, label: str
) -> None:
    settings = SETTINGS[label]
    node = cassandra_nodes(settings)
    session = node.session()
    _write(session, _keyspace(session), [*SCHEMA, WRITES[0]])
    node.wait_for_cdc()

    keys = EncryptionKeys.from_keystore(node.keystore, keystore_password(node.keystore)) if node.keystore else None
    segments = [segment for segment in list_cdc_segments(node.cdc_raw) if segment.index is not None]
    assert segments
    for segment in segments:
        descriptor = scan_segment(segment.path, keys=keys).descriptor
        assert (segment.version, descriptor.version) == (settings.segment_version, settings.segment_version)
        assert descriptor.compression_class == settings.commitlog_compression
        assert descriptor.is_encrypted == settings.encryption


def test_the_pipeline_brings_every_destination_to_the_nodes_select(
    cassandra_node: CassandraNode, tmp_path: Path, all_destinations: dict, instance: dg.DagsterInstance
) -> None:
    session = cassandra_node.session()
    keyspace = _keyspace(session)
    _write(session, keyspace, SCHEMA + PIPELINE_WRITES)
    cassandra_node.wait_for_cdc()
    config = write_config(
        tmp_path,
        all_destinations,
        nodes=[{"name": "node1", "cdc_raw": str(cassandra_node.cdc_raw), "cdc_total_space_mb": 256}],
        schema={"cluster": {"contact_points": [cassandra_node.host], "port": cassandra_node.port}},
        tables=[f"{keyspace}.t"],
    )
    pipeline = open_pipeline(config, instance)

    pipeline.drain()

    table = pipeline.tables[f"{keyspace}.t"]
    expected = select_all(session, table)
    assert expected
    now = dt.datetime.now(dt.UTC)
    for destination in all_destinations:
        assert pipeline.current(destination, f"{keyspace}.t", now=now) == expected, destination
