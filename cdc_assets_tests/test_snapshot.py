"""The snapshot of rows written before capture started, merged with the CDC stream of what came after.

The pure parts first (the server second, list paths, token ranges, the query); then, against a real Cassandra
5.0 node, a table that held rows before ``cdc = true`` and changed after, both before and after the snapshot
was read: every destination, loaded snapshot-first, stream-first or with the snapshot twice, must equal the
node's own ``SELECT *``; the snapshot's expiries must equal the ones the commit log carries for the same
cells, even when a page is read across a second boundary; and the Dagster job must load it everywhere once.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pytest

from cdc_assets import change_batch as cb
from cdc_assets.cassandra_model import CassandraModel
from cdc_assets.cassandra_node import CassandraNode
from cdc_assets.cassandra_schema.driver import load_from_cluster
from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.cassandra_schema.types import parse_type
from cdc_assets.cli import main
from cdc_assets.commitlog.cdc_dir import durable_frontier, list_cdc_segments, read_new_changes
from cdc_assets.commitlog.reader import CommitLogReader, Position
from cdc_assets.config import ConfigError, parse_config
from cdc_assets.defs.cassandra.snapshot import JOB
from cdc_assets.defs.checks.window import RECONCILIATION
from cdc_assets.defs.keys import CONSUMED, NODE_TAG, destination_key, snapshot_key
from cdc_assets.destinations.cassandra_values import batch_rows, timeuuid_order
from cdc_assets.destinations.clickhouse.destination import ClickHouseDestination
from cdc_assets.destinations.postgres.destination import PostgresDestination
from cdc_assets.destinations.timescale.destination import TimescaleDestination
from cdc_assets.snapshot import (
    MAX_TOKEN,
    MIN_TOKEN,
    SNAPSHOT_NODE,
    SnapshotError,
    SnapshotOptions,
    TableSnapshot,
    check_snapshot_table,
    list_path,
    server_second,
    snapshot_query,
    token_splits,
)
from cdc_assets.staging import list_ranges, position_name
from cdc_assets_tests.cassandra_oracle import select_all
from cdc_assets_tests.chdb_fixture import fresh_prefix
from cdc_assets_tests.pipeline_harness import open_pipeline, write_config

# --- pure parts ------------------------------------------------------------------------------------------------------


def test_the_server_second_is_the_readings_when_the_round_trip_fits_before_it() -> None:
    # nowInSec was taken at most 40 ms before the reading at 10.250 s: in second 10.
    assert server_second(10_250, 0.040) == 10
    # A reading 30 ms into second 11 after a 40 ms round trip: nowInSec may be 10 or 11.
    assert server_second(11_030, 0.040) is None
    assert server_second(11_040, 0.040) is None
    assert server_second(11_041, 0.040) == 11


def test_list_paths_keep_the_order_and_sort_before_elements_appended_later() -> None:
    written = 1_700_000_000_000_000  # µs
    paths = [list_path(written, index) for index in range(3)]
    assert sorted(paths, key=timeuuid_order) == paths
    assert paths == [list_path(written, index) for index in range(3)]
    assert all(uuid.UUID(path).version == 1 for path in paths)
    # An element appended one ms later gets a path Cassandra takes from its clock then: after the snapshot's.
    ticks = (written + 1000) * 10 + 0x01B21DD213814000
    appended = str(uuid.UUID(fields=(ticks & 0xFFFFFFFF, (ticks >> 32) & 0xFFFF, 0x1000 | ticks >> 48, 0x80, 0, 1)))
    assert timeuuid_order(paths[-1]) < timeuuid_order(appended)


def test_token_splits_cover_the_ring_once() -> None:
    splits = token_splits(7)
    assert splits[0][0] == MIN_TOKEN and splits[-1][1] == MAX_TOKEN
    assert all(end == start for (_, end), (start, _) in itertools.pairwise(splits))
    assert all(start < end for start, end in splits)


def _table(*columns: Column, name: str = "Orders") -> TableSchema:
    return TableSchema("Shop", name, uuid.uuid4(), columns)


def test_the_query_quotes_every_identifier() -> None:
    table = _table(
        Column('K"ey', parse_type("int"), "partition_key", 0),
        Column("C", parse_type("text"), "clustering", 0),
        Column("Note", parse_type("text"), "regular"),
    )
    query = snapshot_query(table)
    assert 'FROM "Shop"."Orders"' in query
    assert 'token("K""ey") > ? AND token("K""ey") <= ?' in query
    assert '"Note", WRITETIME("Note"), TTL("Note")' in query
    assert query.startswith('SELECT "K""ey", "C", ')


def test_a_counter_table_is_refused_with_the_reason() -> None:
    table = _table(Column("k", parse_type("int"), "partition_key", 0), Column("hits", parse_type("counter"), "regular"))
    with pytest.raises(SnapshotError, match=r"Shop\.Orders: counter column\(s\) hits cannot be snapshot"):
        check_snapshot_table(table)


def test_a_wrong_snapshot_setting_is_named_when_the_configuration_loads(tmp_path: Path) -> None:
    document = {
        "nodes": [{"name": "node1", "cdc_raw": "cdc_raw"}],
        "schema": {"cluster": {"contact_points": ["127.0.0.1"]}},
        "tables": ["shop.orders"],
        "destinations": {"postgres": {}},
        "snapshot": {"consistency": "SOMETIMES", "batch_rows": 0},
    }
    with pytest.raises(ConfigError) as raised:
        parse_config(document, source="cdc_assets.yaml", base=tmp_path)
    assert "cdc_assets.yaml: snapshot.consistency: Input should be 'ANY'" in str(raised.value)
    assert "cdc_assets.yaml: snapshot.batch_rows: Input should be greater than or equal to 1" in str(raised.value)


def test_snapshots_read_from_the_schema_sources_cluster_unless_given_their_own(tmp_path: Path) -> None:
    document = {
        "nodes": [{"name": "node1", "cdc_raw": "cdc_raw"}],
        "schema": {"cluster": {"contact_points": ["10.0.0.1"]}},
        "tables": ["shop.orders"],
        "destinations": {"postgres": {}},
    }
    assert parse_config(document, base=tmp_path).snapshot_cluster.contact_points == ["10.0.0.1"]
    document["snapshot"] = {"cluster": {"contact_points": ["10.0.0.2"], "port": 9142}}
    assert parse_config(document, base=tmp_path).snapshot_cluster.contact_points == ["10.0.0.2"]
    document = {**document, "schema": {"cql_file": "shop.cql"}}
    del document["snapshot"]
    assert parse_config(document, base=tmp_path).snapshot_cluster is None


# --- against a real node ---------------------------------------------------------------------------------------------

# Timeuuids whose time order (Q before P) is the reverse of Python's UUID order.
P = "00000000-0001-1000-8000-000000000000"
Q = "ffffffff-0000-1000-8000-000000000000"
SCHEMA = [
    "CREATE TYPE {ks}.address (street text, zip int)",
    """CREATE TABLE {ks}."Orders" (
        k int, c text, s text STATIC, v int, "Note" text, ts timestamp, du duration, dec decimal,
        tags set<text>, ids set<timeuuid>, scores map<text, int>, events list<int>, home address,
        fl frozen<list<int>>, PRIMARY KEY (k, c)
    ) WITH CLUSTERING ORDER BY (c DESC)""",
]
# Written while the table has no CDC: only a snapshot can bring them.
BEFORE_CDC = [
    """INSERT INTO {ks}."Orders" (k, c, s, v, "Note", ts, du, dec, tags, scores, events, home, fl)
       VALUES (1, 'a', 'static-1', 10, 'first', '2024-02-29 12:34:56.789+0000', 1mo2d3us, 3.125,
       {'x', 'y'}, {'one': 1, 'two': 2}, [1, 2, 3], {street: 'Main', zip: 123}, [4, 5])""",
    # Set elements in an order Python's sortedset does not keep (by time: Q, then P), written at different times.
    f"""UPDATE {{ks}}."Orders" USING TIMESTAMP 2000 SET ids = ids + {{{P}}} WHERE k = 1 AND c = 'a'""",
    f"""UPDATE {{ks}}."Orders" USING TIMESTAMP 3000 SET ids = ids + {{{Q}}} WHERE k = 1 AND c = 'a'""",
    """INSERT INTO {ks}."Orders" (k, c, v, tags, scores) VALUES (1, 'b', 20, {'p'}, {'q': 7}) USING TTL 86400""",
    """UPDATE {ks}."Orders" USING TTL 50000 SET "Note" = 'expiring', scores['late'] = 9, home.zip = 7
       WHERE k = 1 AND c = 'a'""",
    """INSERT INTO {ks}."Orders" (k, c) VALUES (2, 'bare')""",
    """INSERT INTO {ks}."Orders" (k, c) VALUES (8, 'bare')""",
    """UPDATE {ks}."Orders" SET s = 'static-only' WHERE k = 3""",
    """INSERT INTO {ks}."Orders" (k, c, v, events) VALUES (4, 'd', 40, [7, 8])""",
    """INSERT INTO {ks}."Orders" (k, c, v) VALUES (5, 'e', 50)""",
    """INSERT INTO {ks}."Orders" (k, c, v) VALUES (6, 'f', 60)""",
]
# After CDC is on, before the snapshot is read: the snapshot and the stream both carry these cells.
BEFORE_SNAPSHOT = [
    """UPDATE {ks}."Orders" SET v = 11, tags = tags + {'z'}, scores['three'] = 3 WHERE k = 1 AND c = 'a'""",
    """UPDATE {ks}."Orders" USING TTL 40000 SET "Note" = 'renewed' WHERE k = 1 AND c = 'b'""",
    """UPDATE {ks}."Orders" USING TIMESTAMP 1000 SET v = -1 WHERE k = 5 AND c = 'e'""",
    """DELETE FROM {ks}."Orders" WHERE k = 6 AND c = 'f'""",
    """UPDATE {ks}."Orders" SET scores = scores - {'one'} WHERE k = 1 AND c = 'a'""",
    """INSERT INTO {ks}."Orders" (k, c, v) VALUES (7, 'g', 70) USING TTL 30000""",
]
# After the snapshot was read: only the stream carries these.
AFTER_SNAPSHOT = [
    """UPDATE {ks}."Orders" SET v = 12, "Note" = 'later', events = events + [9] WHERE k = 4 AND c = 'd'""",
    """UPDATE {ks}."Orders" SET events = [5] WHERE k = 1 AND c = 'a'""",
    """DELETE FROM {ks}."Orders" WHERE k = 2 AND c = 'bare'""",
    """DELETE FROM {ks}."Orders" USING TIMESTAMP 1000 WHERE k = 5 AND c = 'e'""",
    """DELETE FROM {ks}."Orders" USING TIMESTAMP 1000 WHERE k = 8 AND c = 'bare'""",
    """UPDATE {ks}."Orders" SET s = 'static-2', home.street = 'Side' WHERE k = 1 AND c = 'a'""",
    """DELETE tags FROM {ks}."Orders" WHERE k = 1 AND c = 'b'""",
    """UPDATE {ks}."Orders" USING TTL 20000 SET v = 13 WHERE k = 7 AND c = 'g'""",
    # Removes P, written at 2000, and not Q, written at 3000: only if each kept its own write time.
    f"""UPDATE {{ks}}."Orders" USING TIMESTAMP 2500 SET ids = ids - {{{P}, {Q}}} WHERE k = 1 AND c = 'a'""",
]


def _keyspace(session: Any) -> str:
    name = f"snap_{uuid.uuid4().hex[:12]}"
    session.execute(f"CREATE KEYSPACE {name} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    return name


def _write(session: Any, keyspace: str, statements: list[str]) -> None:
    for statement in statements:
        session.execute(statement.replace("{ks}", keyspace))


def _enable_cdc(node: CassandraNode, session: Any, keyspace: str) -> Position | None:
    """Turn CDC on; the durable position from which the log holds only what was written after."""
    session.execute(f'ALTER TABLE {keyspace}."Orders" WITH cdc = true')
    # A segment in cdc_raw holds every mutation of its time, the table's earlier ones too: start past them.
    node.wait_for_cdc()
    return durable_frontier(list_cdc_segments(node.cdc_raw))


def _stream(node: CassandraNode, session: Any, keyspace: str, after: Position | None = None) -> pa.RecordBatch:
    """The table's changes in the node's durable CDC log after ``after`` (the test's keyspace only)."""
    node.wait_for_cdc()
    reader = CommitLogReader(load_from_cluster(session, [keyspace]))
    read = read_new_changes(reader, node.cdc_raw, after)
    assert read.result.stats.problems == []
    return read.result.batches[f"{keyspace}.Orders"]


def _snapshot(session: Any, table: TableSchema, **options: Any) -> tuple[list[pa.RecordBatch], TableSnapshot]:
    reader = TableSnapshot(session, table, SnapshotOptions(**options))
    return list(reader.batches()), reader


@pytest.fixture
def destinations(pg_dsn: str, clickhouse_factory: Callable[[Path | None], ClickHouseDestination]) -> Iterator[dict]:
    """A fresh destination of each kind per call: PostgreSQL, ClickHouse (chdb), TimescaleDB's fallback."""
    opened: list[Any] = []

    def open_all() -> dict[str, Any]:
        prefix = fresh_prefix()
        fresh = {
            "postgres": PostgresDestination(pg_dsn, f"p{prefix}_"),
            "clickhouse": clickhouse_factory(None),
            "timescaledb": TimescaleDestination(pg_dsn, f"t{prefix}_", allow_plain_postgres=True),
        }
        opened.extend(fresh.values())
        return fresh

    yield open_all
    for destination in opened:
        destination.close()


def _load(destination: Any, table: TableSchema, batches: list[pa.RecordBatch], prefix: str) -> None:
    """Load each batch under a load id of its own (the same ids again for a repeated snapshot)."""
    for number, batch in enumerate(batches):
        destination.ensure_table(table)
        destination.load(table, batch, load_id=f"{prefix}/{number}/{table.qualified_name}")


@pytest.mark.cassandra
def test_snapshot_and_stream_converge_in_every_destination_whichever_comes_first(
    cassandra_node: CassandraNode, destinations: Callable[[], dict[str, Any]]
) -> None:
    session = cassandra_node.session()
    keyspace = _keyspace(session)
    _write(session, keyspace, SCHEMA + BEFORE_CDC)
    since = _enable_cdc(cassandra_node, session, keyspace)
    _write(session, keyspace, BEFORE_SNAPSHOT)
    table = load_from_cluster(session, [keyspace]).by_name(keyspace, "Orders")
    snapshot, first = _snapshot(session, table, page_size=3, splits=4, batch_rows=4)
    # A second run over the same rows (lists included: their made-up paths must be the same again).
    again, _ = _snapshot(session, table)
    _write(session, keyspace, AFTER_SNAPSHOT)
    stream = _stream(cassandra_node, session, keyspace, since)
    expected = select_all(session, table)
    now = dt.datetime.now(dt.UTC)

    assert (first.stats.rows, first.stats.partitions, len(snapshot)) == (8, 7, 2)
    assert 3 not in {row["k"] for row in batch_rows(stream)}, "the stream holds writes from before CDC was on"
    keys = {row["k"] for row in expected}
    # The static-only partition, the rows older deletions missed, the TTL'd row; not the bare row deleted later.
    assert {3, 5, 7, 8} <= keys and 2 not in keys
    orders = {
        "snapshot, then stream": [("snap-1", snapshot), ("node1", [stream])],
        "stream, then snapshot": [("node1", [stream]), ("snap-1", snapshot)],
        "snapshot twice, and a second run": [
            ("snap-1", snapshot),
            ("node1", [stream]),
            ("snap-1", snapshot),
            ("snap-2", again),
        ],
    }
    for order, loads in orders.items():
        for name, destination in destinations().items():
            for prefix, batches in loads:
                _load(destination, table, batches, prefix)
            assert destination.current_state(table, now=now) == expected, f"{name}: {order}"


@pytest.mark.cassandra
def test_snapshot_expiry_equals_the_streams_for_the_same_cell_even_as_the_second_turns(
    cassandra_node: CassandraNode,
) -> None:
    session = cassandra_node.session()
    keyspace = _keyspace(session)
    _write(session, keyspace, SCHEMA)
    _enable_cdc(cassandra_node, session, keyspace)
    statement = session.prepare(
        f'UPDATE {keyspace}."Orders" USING TTL ? SET v = ?, tags = tags + ?, scores[?] = ?, home.zip = ?, s = ? '
        "WHERE k = ? AND c = ?"
    )
    rows = 3000
    for number in range(rows):
        session.execute(
            statement, (86_400 + number, number, {"t"}, "m", number, number, "st", number % 50, str(number))
        )
    table = load_from_cluster(session, [keyspace]).by_name(keyspace, "Orders")
    stream = _expiries(table, [_stream(cassandra_node, session, keyspace)])
    assert len(stream) == rows * 4 + 50

    # Thousands of small pages: a few of them are read while the server's second turns, after nowInSec was
    # taken and before the first row's clock reading. Taking the reading's second there would move those
    # cells' expiries a second later.
    batches, reader = _snapshot(session, table, page_size=1, splits=200)
    assert _expiries(table, batches) == stream
    assert reader.stats.refetched_pages > 0, "no page's server second was ambiguous: the test did not exercise it"


def _expiries(table: TableSchema, batches: list[pa.RecordBatch]) -> dict[tuple, int]:
    """Every expiring cell's expiry, by (key, clustering, column, element)."""
    expiries = {}
    for batch in batches:
        for change in batch_rows(batch):
            place = (change["k"], change["c"] if change[cb.KIND] == cb.KIND_ROW else None)
            for column in table.value_columns:
                cell = change[column.name]
                if cell is None:
                    continue
                if "cells" not in cell:
                    parts = [(None, cell)]
                elif isinstance(cell["cells"], dict):
                    parts = [(name, field) for name, field in cell["cells"].items() if field is not None]
                else:
                    parts = [(element["path"], element) for element in cell["cells"]]
                for path, part in parts:
                    if part["expires_at"] is not None:
                        expiries[(*place, column.name, path)] = part["expires_at"]
    return expiries


@pytest.mark.cassandra
def test_the_snapshot_job_loads_every_destination_once(
    cassandra_node: CassandraNode, tmp_path: Path, all_destinations: dict, instance: dg.DagsterInstance
) -> None:
    session = cassandra_node.session()
    keyspace = _keyspace(session)
    _write(session, keyspace, SCHEMA + BEFORE_CDC)
    _enable_cdc(cassandra_node, session, keyspace)
    _write(session, keyspace, BEFORE_SNAPSHOT)
    name = f"{keyspace}.Orders"
    config_path = write_config(
        tmp_path,
        all_destinations,
        nodes=[{"name": "node1", "cdc_raw": str(cassandra_node.cdc_raw), "cdc_total_space_mb": 256}],
        schema={"cluster": {"contact_points": [cassandra_node.host], "port": cassandra_node.port}},
        tables=[name],
        snapshot={"page_size": 2, "batch_rows": 3, "splits": 2},
    )
    pipeline = open_pipeline(config_path, instance)
    table = pipeline.tables[name]
    job = pipeline.defs.resolve_job_def(JOB)
    partition = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d-%H:00")

    snapshot_run = job.execute_in_process(instance=instance, partition_key=partition)
    _write(session, keyspace, AFTER_SNAPSHOT)
    cassandra_node.wait_for_cdc()
    pipeline.drain()
    expected = select_all(session, table)
    now = dt.datetime.now(dt.UTC)

    assert snapshot_run.success
    for destination in all_destinations:
        assert pipeline.current(destination, name, now=now) == expected, destination
    snapshot = _metadata(instance, snapshot_key(name))
    assert (snapshot["rows"], snapshot["partitions"]) == (8, 7)
    assert snapshot["cells"] > 0 and snapshot["pages"] >= 4 and snapshot["duration (s)"] > 0
    assert snapshot["staged ranges"] == 3
    loaded = _metadata(instance, destination_key("postgres", name))
    assert set(loaded[CONSUMED]) == {SNAPSHOT_NODE, "node1"}
    (snapshot_load,) = [
        event.materialization.metadata
        for event in snapshot_run.get_asset_materialization_events()
        if event.materialization.asset_key == destination_key("postgres", name)
    ]
    assert snapshot_load["changes"].value == 9 and snapshot_load["ranges loaded"].value == 3
    # The age of a snapshot's cells is not the stream's lag: the freshness check must not see it.
    assert "lag, newest change (s)" not in snapshot_load
    # The window's reconciliation replays the snapshot whole: it needs no stream position before it.
    (reconciled,) = [
        evaluation
        for evaluation in snapshot_run.get_asset_check_evaluations()
        if evaluation.asset_key == destination_key("postgres", name) and evaluation.check_name == RECONCILIATION
    ]
    assert reconciled.passed and reconciled.metadata["replay"].value.startswith("exact")

    # The same loads again (a re-executed run) load nothing: each destination has consumed the snapshot.
    loads = job.get_subset(asset_selection={destination_key(d, name) for d in all_destinations})
    rerun = loads.execute_in_process(instance=instance, partition_key=partition, tags={NODE_TAG: SNAPSHOT_NODE})
    assert rerun.success
    for destination in all_destinations:
        assert _metadata(instance, destination_key(destination, name))["changes"] == 0, destination
        assert pipeline.current(destination, name, now=now) == expected, destination


def _metadata(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, Any]:
    event = instance.get_latest_materialization_event(key)
    assert event is not None and event.asset_materialization is not None
    return {name: value.value for name, value in event.asset_materialization.metadata.items()}


@pytest.mark.cassandra
def test_the_command_writes_each_tables_snapshot_as_an_arrow_file(
    cassandra_node: CassandraNode, tmp_path: Path
) -> None:
    session = cassandra_node.session()
    keyspace = _keyspace(session)
    _write(session, keyspace, SCHEMA + BEFORE_CDC)
    table = load_from_cluster(session, [keyspace]).by_name(keyspace, "Orders")
    arguments = ["--contact-points", cassandra_node.host, "--port", str(cassandra_node.port), "--out", str(tmp_path)]

    assert main(["snapshot", *arguments, "--page-size", "2", f"{keyspace}.Orders"]) == 0

    model = CassandraModel(table)
    with pa.memory_map(str(tmp_path / f"{keyspace}.Orders.arrow")) as source:
        for batch in pa.ipc.open_file(source).read_all().to_batches():
            model.apply(batch)
    assert model.current_state() == select_all(session, table)


@pytest.mark.cassandra
def test_the_command_loads_a_snapshot_into_every_destination_and_the_job_skips_it(
    cassandra_node: CassandraNode, tmp_path: Path, all_destinations: dict, instance: dg.DagsterInstance
) -> None:
    session = cassandra_node.session()
    keyspace = _keyspace(session)
    _write(session, keyspace, SCHEMA + BEFORE_CDC)
    name = f"{keyspace}.Orders"
    config_path = write_config(
        tmp_path,
        all_destinations,
        nodes=[{"name": "node1", "cdc_raw": str(cassandra_node.cdc_raw), "cdc_total_space_mb": 256}],
        schema={"cluster": {"contact_points": [cassandra_node.host], "port": cassandra_node.port}},
        tables=[name],
    )

    assert main(["snapshot", "--config", str(config_path)]) == 0

    pipeline = open_pipeline(config_path, instance)
    config, table = pipeline.config, pipeline.tables[name]
    expected = select_all(session, table)
    now = dt.datetime.now(dt.UTC)
    for destination in all_destinations:
        assert pipeline.current(destination, name, now=now) == expected, destination
    # The job's loads find the command's batches staged under the load ids each destination's ledger holds.
    loads = pipeline.defs.resolve_job_def(JOB).get_subset(
        asset_selection={destination_key(d, name) for d in all_destinations}
    )
    partition = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d-%H:00")
    assert loads.execute_in_process(instance=instance, partition_key=partition).success
    for destination in all_destinations:
        loaded = _metadata(instance, destination_key(destination, name))
        assert loaded["load ids"] == [f"{SNAPSHOT_NODE}/{r}/{name}" for r in _staged_positions(config, name)]
        assert pipeline.current(destination, name, now=now) == expected, destination


def _staged_positions(config: Any, table: str) -> list[str]:
    return [
        position_name(r.after) for r in list_ranges(config.staging.path, nodes=[SNAPSHOT_NODE]) if table in r.tables
    ]
