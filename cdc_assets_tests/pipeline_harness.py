"""A pipeline under test: a configuration file of its own, real destinations, a real Dagster instance.

Runs go through Dagster's machinery: the node sensor is evaluated against the instance, and each run it
requests executes the code location's asset job with the request's partition, selection and tags, its
events stored in the same instance. The ground truth is the generator's own record of what it wrote,
merged by the reference model.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from cdc_assets.cassandra_model import CassandraModel
from cdc_assets.cassandra_schema.tables import TableSchema
from cdc_assets.change_batch import build_change_batch
from cdc_assets.commitlog.generator import Workload, generate
from cdc_assets.config import PipelineConfig, load_config
from cdc_assets.definitions import build_definitions
from cdc_assets.defs.cassandra.schema import load_registry
from cdc_assets.defs.keys import destination_key
from cdc_assets_tests.chdb_fixture import fresh_prefix

SHOP_CQL = Path(__file__).resolve().parents[1] / "cdc_assets" / "demo" / "shop.cql"
TABLES = ("shop.orders", "shop.customers")
NOW = dt.datetime(2031, 1, 1, tzinfo=dt.UTC)


def write_config(root: Path, destinations: dict[str, dict[str, Any]], **overrides: Any) -> Path:
    """A pipeline configuration file under ``root``: one node, the shop schema, the given destinations."""
    document: dict[str, Any] = {
        "nodes": [{"name": "node1", "cdc_raw": "cdc_raw", "cdc_total_space_mb": 64}],
        "schema": {"cql_file": str(SHOP_CQL)},
        "tables": list(TABLES),
        "destinations": destinations,
        "micro_batch": {"max_changes": 100_000, "max_bytes": 64 << 20, "min_interval_seconds": 1},
        "retries": {"max_retries": 1, "delay_seconds": 0.1, "max_backoff_seconds": 2},
        "staging": {"path": "staging", "retention_hours": 24},
        "dead_letters": "dead_letters.jsonl",
    }
    document.update(overrides)
    path = root / "cdc_assets.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


@dataclass
class Pipeline:
    config: PipelineConfig
    defs: dg.Definitions
    instance: dg.DagsterInstance
    tables: dict[str, TableSchema]
    written: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    results: list[dg.ExecuteInProcessResult] = field(default_factory=list)

    @property
    def node(self):
        return self.config.nodes[0]

    def write(self, mutations: int, seed: int, **workload: Any) -> None:
        """Generate ``mutations`` writes of both tables into node1's cdc_raw, remembering what they were."""
        log = generate(
            list(self.tables.values()),
            Workload(seed=seed, mutations=mutations, segment_size=256 << 10, partitions=200, **workload),
            [self.node.cdc_raw],
        )
        for name in self.tables:
            self.written.setdefault(name, []).extend(log.changes(name))

    def tick(self) -> dg.RunRequest | None:
        """Evaluate node1's sensor once; its run request, if any."""
        sensor = self.defs.get_sensor_def(f"cdc_raw_{self.node.name}")
        with dg.build_sensor_context(instance=self.instance, definitions=self.defs) as context:
            result = sensor(context)
        requests = result.run_requests or []
        assert len(requests) <= 1
        return requests[0] if requests else None

    def execute(self, request: dg.RunRequest, partition: str | None = None) -> dg.ExecuteInProcessResult:
        """Run what ``request`` asks for (in window ``partition`` instead of the present hour, when given)."""
        job = self.defs.resolve_implicit_global_asset_job_def().get_subset(
            asset_selection=set(request.asset_selection or []),
            asset_check_selection=set(request.asset_check_keys) if request.asset_check_keys is not None else None,
        )
        result = job.execute_in_process(
            instance=self.instance,
            partition_key=partition or request.partition_key,
            tags={**request.tags, "dagster/run_key": request.run_key},
            raise_on_error=False,
        )
        self.results.append(result)
        return result

    def drain(self, max_runs: int = 50, partition: str | None = None) -> int:
        """Tick and run until the sensor has nothing more to request; returns how many runs ran."""
        for runs in range(max_runs):
            request = self.tick()
            if request is None:
                return runs
            self.execute(request, partition)
        raise AssertionError(f"the sensor still requested runs after {max_runs}")

    def expected(self, table: str, now: dt.datetime = NOW) -> list[dict[str, Any]]:
        model = CassandraModel(self.tables[table])
        changes = self.written.get(table, [])
        if changes:
            model.apply(build_change_batch(self.tables[table], changes))
        return model.current_state(now)

    def destination(self, name: str) -> Any:
        return self.defs.resources[name].open()

    def current(self, destination: str, table: str, now: dt.datetime = NOW) -> list[dict[str, Any]]:
        target = self.destination(destination)
        try:
            return target.current_state(self.tables[table], now=now)
        finally:
            target.close()

    def backfill(self, destination: str, first: str, last: str) -> dg.ExecuteInProcessResult:
        """Rebuild windows ``first`` … ``last`` in ``destination``, as a single-run backfill launched from the UI
        or ``launchPartitionBackfill`` runs: the destination's assets over a partition range, no node tag."""
        job = self.defs.resolve_implicit_global_asset_job_def()
        result = job.execute_in_process(
            instance=self.instance,
            asset_selection=[destination_key(destination, t) for t in self.tables],
            tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last},
            raise_on_error=False,
        )
        self.results.append(result)
        return result


def open_pipeline(config_path: Path, instance: dg.DagsterInstance) -> Pipeline:
    config = load_config(config_path)
    registry = load_registry(config.schema)
    tables = {name: registry.by_name(*name.split(".")) for name in config.tables}
    return Pipeline(config, build_definitions(config), instance, tables)  # type: ignore[arg-type]


# Fixtures for every module (the root conftest.py registers this module as a plugin).


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    """A real Dagster instance (SQLite in a temporary directory) of the test's own."""
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def all_destinations(pg_dsn: str, chdb_dsn: str, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The destinations section of a configuration with all three: PostgreSQL, chdb, TimescaleDB's fallback."""
    monkeypatch.setenv("CDC_TEST_PG", pg_dsn)
    monkeypatch.setenv("CDC_TEST_CH", chdb_dsn)
    return {
        "postgres": {"dsn_env": "CDC_TEST_PG", "schema_prefix": "p_"},
        "clickhouse": {"dsn_env": "CDC_TEST_CH", "database_prefix": fresh_prefix()},
        "timescaledb": {"dsn_env": "CDC_TEST_PG", "schema_prefix": "ts_", "allow_plain_postgres": True},
    }
