"""The Dagster pipeline end to end: generated segments → sensor ticks → runs → every destination equals the truth.

Real parts throughout: a PostgreSQL server (PostgreSQL and TimescaleDB destinations), the in-process
ClickHouse engine, a real Dagster instance whose event log holds the committed positions.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from cdc_assets.defs.keys import CONSUMED, FRONTIER, POSITION, destination_key, stream_key
from cdc_assets.staging import list_ranges
from cdc_assets_tests.chdb_fixture import fresh_prefix
from cdc_assets_tests.pipeline_harness import TABLES, Pipeline, open_pipeline, write_config

DESTINATIONS = ("postgres", "clickhouse", "timescaledb")


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def all_destinations(pg_dsn: str, chdb_dsn: str, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv("CDC_TEST_PG", pg_dsn)
    monkeypatch.setenv("CDC_TEST_CH", chdb_dsn)
    return {
        "postgres": {"dsn_env": "CDC_TEST_PG", "schema_prefix": "p_"},
        "clickhouse": {"dsn_env": "CDC_TEST_CH", "database_prefix": fresh_prefix()},
        "timescaledb": {"dsn_env": "CDC_TEST_PG", "schema_prefix": "ts_", "allow_plain_postgres": True},
    }


@pytest.fixture
def pipeline(tmp_path: Path, all_destinations: dict, instance: dg.DagsterInstance) -> Pipeline:
    return open_pipeline(write_config(tmp_path, all_destinations), instance)


def assert_converged(pipeline: Pipeline, destinations=DESTINATIONS) -> None:
    for table in TABLES:
        expected = pipeline.expected(table)
        assert expected, f"the workload wrote no live rows of {table}"
        for destination in destinations:
            assert pipeline.current(destination, table) == expected, f"{destination} {table}"


def latest_metadata(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict:
    event = instance.get_latest_materialization_event(key)
    assert event is not None and event.asset_materialization is not None
    return {name: value.value for name, value in event.asset_materialization.metadata.items()}


def test_sensor_runs_bring_every_destination_to_the_written_state(pipeline: Pipeline) -> None:
    pipeline.write(1500, seed=1)
    assert pipeline.drain() >= 1
    assert all(result.success for result in pipeline.results)
    assert_converged(pipeline)

    pipeline.write(1500, seed=2)
    assert pipeline.drain() >= 1
    assert_converged(pipeline)
    stream = latest_metadata(pipeline.instance, stream_key("node1"))
    assert stream[POSITION] and stream[FRONTIER]
    loaded = latest_metadata(pipeline.instance, destination_key("postgres", "shop.orders"))
    assert loaded[CONSUMED]["node1"]["position"] == stream[POSITION]
    assert loaded["changes"] > 0 and "| `shop.orders` |" in loaded["changes by kind"]


def test_nothing_new_requests_no_run(pipeline: Pipeline) -> None:
    assert pipeline.tick() is None
    pipeline.write(200, seed=3)
    assert pipeline.drain() >= 1
    assert pipeline.tick() is None


def test_consumed_segments_leave_cdc_raw_and_staged_ranges_stay(pipeline: Pipeline) -> None:
    pipeline.write(3000, seed=4)
    before = sorted(p.name for p in pipeline.node.cdc_raw.glob("*.log"))
    assert len(before) > 1
    pipeline.drain()
    # The tick after the last load removes what every destination has consumed.
    pipeline.tick()
    assert sorted(p.name for p in pipeline.node.cdc_raw.glob("*.log")) == []
    assert list_ranges(pipeline.config.staging.path)
    assert_converged(pipeline)
