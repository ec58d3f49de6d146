"""The Dagster pipeline end to end: generated segments → sensor ticks → runs → every destination equals the truth.

Real parts throughout: a PostgreSQL server (PostgreSQL and TimescaleDB destinations), the in-process
ClickHouse engine, a real Dagster instance whose event log holds the committed positions.
"""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import pytest

from cdc_assets.commitlog.reader import scan_segment
from cdc_assets.defs.keys import CONSUMED, FRONTIER, POSITION, destination_key, staged_key, stream_key
from cdc_assets.staging import list_ranges
from cdc_assets_tests.pipeline_harness import TABLES, Pipeline, open_pipeline, write_config

DESTINATIONS = ("postgres", "clickhouse", "timescaledb")


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


def test_a_damaged_segment_stops_the_stream_where_it_is_until_repaired(pipeline: Pipeline) -> None:
    pipeline.write(1200, seed=5)
    segment = sorted(pipeline.node.cdc_raw.glob("*.log"))[0]
    entries = scan_segment(segment).entries
    position, _ = entries[len(entries) // 2]
    original = segment.read_bytes()
    damaged = bytearray(original)
    damaged[position - 6] ^= 0xFF  # inside the entry's body: its CRC no longer matches
    segment.write_bytes(bytes(damaged))

    result = pipeline.execute(pipeline.tick())
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.user_failure_data.description
    assert segment.name in message and "damaged" in message
    assert pipeline.instance.get_latest_materialization_event(stream_key("node1")) is None
    assert list_ranges(pipeline.config.staging.path) == []

    segment.write_bytes(original)
    deadline = time.monotonic() + 10
    while (request := pipeline.tick()) is None:
        assert time.monotonic() < deadline, "the damaged range was never requested again"
        time.sleep(0.2)
    assert pipeline.execute(request).success
    pipeline.drain()
    assert_converged(pipeline)


def test_masked_columns_reach_every_destination_masked(
    tmp_path: Path, all_destinations: dict, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CDC_TEST_TOKEN_KEY", "k" * 32)
    masking = {"columns": {"shop.customers.email": {"method": "tokenize", "key_env": "CDC_TEST_TOKEN_KEY"}}}
    pipeline = open_pipeline(write_config(tmp_path, all_destinations, masking=masking), instance)
    pipeline.write(600, seed=6)
    pipeline.drain()
    written = {row["email"] for row in pipeline.expected("shop.customers") if row.get("email")}
    assert written
    for destination in DESTINATIONS:
        emails = {row.get("email") for row in pipeline.current(destination, "shop.customers")} - {None}
        assert emails and all(email.startswith("tok_") for email in emails), destination
        assert not emails & written


def test_staged_ranges_older_than_the_retention_leave_once_consumed(pipeline: Pipeline) -> None:
    pipeline.write(300, seed=7)
    pipeline.drain(partition="2026-11-01-10:00")  # long before the 24 h retention
    pipeline.write(300, seed=8)
    pipeline.drain()
    pipeline.tick()
    windows = {r.partition for r in list_ranges(pipeline.config.staging.path)}
    assert "2026-11-01-10:00" not in windows and windows


def test_materializing_a_staged_asset_alone_explains_what_to_do_instead(pipeline: Pipeline) -> None:
    job = pipeline.defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=pipeline.instance,
        partition_key="2026-12-01-10:00",
        asset_selection=[staged_key("shop.orders")],
        raise_on_error=False,
    )
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "backfill that warehouse's assets instead" in failure.step_failure_data.user_failure_data.description
