"""A real Cassandra 5.0 node is the oracle of a whole-surface workload, value for value, in every destination.

For each kind of segment (version 7, the default node; version 8 with Zstd-compressed sections, a ``NONE``
node) the module runs :mod:`cdc_assets_tests.cassandra_workloads` once, waits until the node has made it
durable in ``cdc_raw`` and takes the node's ``SELECT *`` of every table twice: right away, while many TTLs
are still running, and again once every TTL is over. Each is taken within one second of the node's clock,
and the destinations are read at that second (``now=``), so both sides decide expiry at the same instant.

Then the real Dagster pipeline, with the schema read from the node's ``system_schema``, carries the node's
segments to PostgreSQL, ClickHouse and TimescaleDB; and, apart from the pipeline, the segments decoded by
the reader are delivered to each destination shuffled, replayed and duplicated. Both must equal the node.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pytest

from cdc_assets.cassandra_model import CassandraModel
from cdc_assets.cassandra_node import CassandraNode, NodeSettings
from cdc_assets.cassandra_schema.driver import load_from_cluster
from cdc_assets.cassandra_schema.tables import SchemaRegistry, TableSchema
from cdc_assets.commitlog.cdc_dir import list_cdc_segments, read_new_changes
from cdc_assets.commitlog.reader import CommitLogReader, scan_segment
from cdc_assets.config import load_config
from cdc_assets.definitions import build_definitions
from cdc_assets.defs.cassandra.schema import captured_tables, load_registry
from cdc_assets.destinations.clickhouse.destination import ClickHouseDestination
from cdc_assets.destinations.postgres.destination import PostgresDestination
from cdc_assets.destinations.timescale.destination import TimescaleDestination
from cdc_assets_tests.cassandra_fixture import NodeFactory
from cdc_assets_tests.cassandra_oracle import select_all
from cdc_assets_tests.cassandra_workloads import WorkloadResult, run_workload
from cdc_assets_tests.pipeline_harness import Pipeline, write_config

pytestmark = pytest.mark.cassandra

SETTINGS = {
    "v7": NodeSettings(),
    "v8-zstd": NodeSettings(storage_compatibility_mode="NONE", commitlog_compression="ZstdCompressor"),
}
SEED = 20261206
STATEMENTS = 2500


@dataclass(frozen=True)
class Oracle:
    """The node's ``SELECT *`` of every table, and the second of the node's clock it answered at."""

    now: dt.datetime
    rows: dict[str, list[dict[str, Any]]]


def select_everything(session: Any, tables: dict[str, TableSchema]) -> Oracle:
    """Every table's rows, all read within one wall-clock second (Cassandra decides TTL expiry in seconds)."""
    while True:
        started = time.time()
        rows = {name: select_all(session, table) for name, table in tables.items()}
        if int(time.time()) == int(started):
            return Oracle(dt.datetime.fromtimestamp(int(started), dt.UTC), rows)


def snapshot_cdc_raw(cdc_raw: Path, target: Path) -> Path:
    """A copy of ``cdc_raw`` as it is now: each index before its segment, so no copy claims bytes it lacks."""
    target.mkdir(parents=True)
    for segment in list_cdc_segments(cdc_raw):
        if segment.index is not None:
            shutil.copyfile(segment.index_path, target / segment.index_path.name)
        shutil.copyfile(segment.path, target / segment.path.name)
    return target


def differences(table: TableSchema, current: list[dict[str, Any]], expected: list[dict[str, Any]]) -> str:
    """What a destination's rows lack, add or hold differently, row by row (the first few), for a failure."""
    keys = [column.name for column in table.partition_key + table.clustering]
    ours = {repr([row[k] for k in keys]): row for row in current}
    theirs = {repr([row[k] for k in keys]): row for row in expected}
    lines = []
    for key in sorted(ours.keys() | theirs.keys()):
        got, want = ours.get(key), theirs.get(key)
        if got == want:
            continue
        if got is None or want is None:
            lines.append(f"{key}: {'missing' if got is None else 'extra'} row {got or want}")
        else:
            lines.append(
                f"{key}: " + ", ".join(f"{c}={got[c]!r} (node: {want[c]!r})" for c in want if got[c] != want[c])
            )
    return f"{len(lines)} rows differ:\n" + "\n".join(lines[:8])


#: Destinations whose ``time`` and ``duration`` hold microseconds: ``postgres.types`` documents that nanoseconds
#: are truncated (PostgreSQL's time and interval cannot hold them).
MICROSECOND_DESTINATIONS = frozenset({"postgres", "timescaledb"})


def as_stored_by(destination: str, table: TableSchema, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The node's rows at the documented precision of ``destination``: for PostgreSQL, time and duration
    columns truncated to microseconds (toward zero, as ``postgres.types`` writes them)."""
    if destination not in MICROSECOND_DESTINATIONS:
        return rows
    kinds = {column.name: column.type.kind for column in table.statics + table.regulars}
    truncated = []
    for row in rows:
        row = dict(row)
        for name, kind in kinds.items():
            if row[name] is not None and kind == "time":
                row[name] = row[name] // 1000 * 1000
            elif row[name] is not None and kind == "duration":
                months, days, nanos = row[name]
                row[name] = (months, days, int(nanos / 1000) * 1000)
        truncated.append(row)
    return truncated


@dataclass
class Captured:
    """One workload on one node: its segments (a snapshot of ``cdc_raw``), schema, and the node's answers."""

    node: CassandraNode
    session: Any
    workload: WorkloadResult
    registry: SchemaRegistry
    segments: Path
    before: Oracle
    _after: Oracle | None = field(default=None, repr=False)

    @property
    def tables(self) -> dict[str, TableSchema]:
        return {name: self.registry.by_name(*name.split(".")) for name in self.workload.qualified_tables}

    def after(self) -> Oracle:
        """The node's answers once every TTL the workload wrote is over (waits for that, the first time)."""
        if self._after is None:
            time.sleep(max(0.0, self.workload.expired_by - time.time()))
            self._after = select_everything(self.session, self.tables)
        return self._after

    def copy_segments(self, target: Path) -> Path:
        """The segments in a directory of the caller's own (the pipeline deletes what it has consumed)."""
        shutil.copytree(self.segments, target)
        return target


@pytest.fixture(scope="module", params=list(SETTINGS))
def captured(
    request: pytest.FixtureRequest, cassandra_nodes: NodeFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Captured]:
    label = request.param
    node = cassandra_nodes(SETTINGS[label])
    session = node.session()
    keyspace = f"workload_{label.replace('-', '_')}_{time.time_ns() % 10**9}"
    workload = run_workload(session, keyspace, seed=SEED, statements=STATEMENTS)
    registry = load_from_cluster(session, [keyspace])
    tables = {name: registry.by_name(*name.split(".")) for name in workload.qualified_tables}
    before = select_everything(session, tables)
    node.wait_for_cdc()
    segments = snapshot_cdc_raw(node.cdc_raw, tmp_path_factory.mktemp(label) / "cdc_raw")
    yield Captured(node, session, workload, registry, segments, before)


def test_the_workload_covers_the_whole_surface(captured: Captured) -> None:
    kinds = set(captured.workload.counts)
    assert {
        "insert",
        "update",
        "insert using ttl",
        "update using ttl",
        "timestamp tie",
        "timestamp out of order",
        "cell delete",
        "row delete",
        "range delete",
        "partition delete",
        "static update",
        "set add",
        "set remove",
        "map put",
        "map delete key",
        "list append",
        "list prepend",
        "list set index",
        "udt field update",
        "overwrite",
        "logged batch",
        "unlogged batch",
        "counter batch",
        "counter update",
        "lwt applied",
        "lwt not applied",
        "alter add column",
        "alter drop column",
        "late insert default ttl",
    } <= kinds
    assert 2500 <= sum(captured.workload.counts.values()) <= 4000
    settings = captured.node.settings
    descriptors = [scan_segment(segment.path).descriptor for segment in list_cdc_segments(captured.segments)]
    assert {(d.version, d.compression_class) for d in descriptors} == {
        (settings.segment_version, settings.commitlog_compression)
    }
    before, after = captured.before.rows, captured.after().rows
    assert all(before.values()), "a table has no row to compare"
    assert before != after, "no TTL expired between the two SELECTs: nothing tells expiry apart"


def test_the_pipeline_brings_every_destination_to_the_nodes_select_before_and_after_ttls(
    captured: Captured, tmp_path: Path, all_destinations: dict, instance: dg.DagsterInstance
) -> None:
    cdc_raw = captured.copy_segments(tmp_path / "cdc_raw")
    node = captured.node
    path = write_config(
        tmp_path,
        all_destinations,
        nodes=[{"name": "node1", "cdc_raw": str(cdc_raw), "cdc_total_space_mb": 256}],
        schema={"cluster": {"contact_points": [node.host], "port": node.port}},
        tables=captured.workload.qualified_tables,
    )
    config = load_config(path)
    tables = captured_tables(config, load_registry(config.schema))
    pipeline = Pipeline(config, build_definitions(config), instance, tables)

    assert pipeline.drain() >= 1
    assert all(result.success for result in pipeline.results)
    problems = []
    for oracle in (captured.before, captured.after()):
        for destination in all_destinations:
            for name in tables:
                current = pipeline.current(destination, name, now=oracle.now)
                expected = as_stored_by(destination, tables[name], oracle.rows[name])
                if current != expected:
                    problems.append(
                        f"{destination} {name} at {oracle.now}: {differences(tables[name], current, expected)}"
                    )
    assert not problems, "\n".join(problems)


def deliveries(name: str, batch: pa.RecordBatch, rng: random.Random) -> list[tuple[str, pa.RecordBatch]]:
    """Table ``name``'s changes cut in pieces, shuffled, some replayed under their load id and some duplicated
    under another one (as a second replica would deliver them). Load ids are a destination's, across tables."""
    cuts = sorted(rng.sample(range(1, batch.num_rows), min(7, batch.num_rows - 1)))
    bounds = [0, *cuts, batch.num_rows]
    pieces = [(f"{name}/b{i}", batch.slice(a, b - a)) for i, (a, b) in enumerate(itertools.pairwise(bounds))]
    replays = rng.sample(pieces, min(3, len(pieces)))
    replicas = [(f"{load_id}-replica", piece) for load_id, piece in rng.sample(pieces, min(2, len(pieces)))]
    delivered = [*pieces, *replays, *replicas]
    rng.shuffle(delivered)
    return delivered


class _Model:
    """The reference model behind the destinations' interface, so it is checked against the node alike."""

    name = "model"

    def __init__(self) -> None:
        self.models: dict[str, CassandraModel] = {}

    def ensure_table(self, table: TableSchema) -> None:
        self.models.setdefault(table.qualified_name, CassandraModel(table))

    def load(self, table: TableSchema, batch: pa.RecordBatch, *, load_id: str) -> None:
        self.models[table.qualified_name].apply(batch)

    def current_state(self, table: TableSchema, *, now: dt.datetime) -> list[dict[str, Any]]:
        return self.models[table.qualified_name].current_state(now)

    def close(self) -> None:
        pass


def test_replayed_reordered_and_duplicated_segments_converge_to_the_nodes_select(
    captured: Captured, module_pg_dsn: str, clickhouse_factory: Callable[[Path | None], ClickHouseDestination]
) -> None:
    reader = CommitLogReader(captured.registry.copy())
    read = read_new_changes(reader, captured.segments, None).result
    assert read.stats.problems == [] and read.stats.dead_letters == []
    suffix = captured.node.settings.label.replace("-", "_")
    destinations = [
        _Model(),
        PostgresDestination(module_pg_dsn, f"wp_{suffix}_"),
        TimescaleDestination(module_pg_dsn, f"wt_{suffix}_", allow_plain_postgres=True),
        clickhouse_factory(None),
    ]
    rng = random.Random(SEED)
    problems = []
    for destination in destinations:
        with closing(destination):
            for name in captured.tables:
                destination.ensure_table(read.tables[name])
                for load_id, piece in deliveries(name, read.batches[name], rng):
                    destination.load(read.tables[name], piece, load_id=load_id)
            for oracle in (captured.before, captured.after()):
                for name, table in captured.tables.items():
                    current = destination.current_state(table, now=oracle.now)
                    expected = as_stored_by(destination.name, table, oracle.rows[name])
                    if current != expected:
                        detail = differences(table, current, expected)
                        problems.append(f"{destination.name} {name} at {oracle.now}: {detail}")
    assert not problems, "\n".join(problems)
