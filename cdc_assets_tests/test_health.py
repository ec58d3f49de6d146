"""Health checks without runs: cdc_raw space, a stalled node, a lagging destination. The health sensor is ticked
as the daemon ticks it, against real segments, a real PostgreSQL destination and a real Dagster instance."""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import pytest

from cdc_assets.commitlog.cdc_dir import cdc_raw_usage, list_cdc_segments
from cdc_assets.commitlog.generator import Workload, generate
from cdc_assets.defs.checks.health import CDC_RAW_SPACE, CONSUMPTION, FRESHNESS, health_check_keys
from cdc_assets.defs.keys import destination_key, staged_key, stream_key
from cdc_assets_tests.alert_harness import Monitored, open_monitored
from cdc_assets_tests.pipeline_harness import TABLES, write_config

WARN = dg.AssetCheckSeverity.WARN
ERROR = dg.AssetCheckSeverity.ERROR
NODE = stream_key("node1")
ORDERS = destination_key("postgres", "shop.orders")


@pytest.fixture
def postgres(monkeypatch: pytest.MonkeyPatch, pg_dsn: str) -> dict[str, dict[str, str]]:
    monkeypatch.setenv("CDC_TEST_PG", pg_dsn)
    return {"postgres": {"dsn_env": "CDC_TEST_PG", "schema_prefix": "h_"}}


def verdict(evaluation: dg.AssetCheckEvaluation | None) -> str | None:
    if evaluation is None:
        return None
    return "pass" if evaluation.passed else evaluation.severity.value


def add_segment(pipeline: Monitored, seed: int, **workload: object) -> None:
    """One 64 KiB segment (preallocated, as Cassandra does) of both tables into node1's cdc_raw."""
    generate(
        list(pipeline.tables.values()),
        Workload(seed=seed, mutations=100, segment_size=64 << 10, **workload),  # type: ignore[arg-type]
        [pipeline.node.cdc_raw],
    )


def read_only(pipeline: Monitored) -> dg.ExecuteInProcessResult:
    """A live run of the read step alone: the range is staged and committed, no destination loads it."""
    request = pipeline.tick()
    assert request is not None
    job = pipeline.defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=pipeline.instance,
        partition_key=request.partition_key,
        asset_selection=[NODE, *(staged_key(t) for t in TABLES)],
        tags={**request.tags, "dagster/run_key": request.run_key},
        raise_on_error=False,
    )
    assert result.success
    return result


def test_cdc_raw_space_warns_then_fails_as_cdc_raw_fills_its_total_space(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    config = write_config(
        tmp_path,
        {"postgres": {"dsn_env": "NOT_SET_PG"}},
        nodes=[{"name": "node1", "cdc_raw": "cdc_raw", "cdc_total_space_mb": 1}],
    )
    pipeline = open_monitored(config, instance)
    seen = []
    for seed in range(13):
        add_segment(pipeline, seed)
        pipeline.health()
        evaluation = pipeline.latest_evaluation(NODE, CDC_RAW_SPACE)
        share = cdc_raw_usage(pipeline.node.cdc_raw) / (1 << 20)
        expected = "ERROR" if share >= 0.8 else "WARN" if share >= 0.5 else "pass"
        assert verdict(evaluation) == expected, f"{share:.0%}"
        seen.append(expected)
    assert seen[0] == "pass" and "WARN" in seen and seen[-1] == "ERROR"

    assert evaluation is not None
    segments = list_cdc_segments(pipeline.node.cdc_raw)
    assert evaluation.metadata["bytes used"].value == cdc_raw_usage(pipeline.node.cdc_raw)
    assert evaluation.metadata["segments"].value == len(segments) == 13
    assert evaluation.metadata["oldest unconsumed segment"].value == segments[0].path.name
    assert "81%" in (evaluation.description or "") and "node1" in (evaluation.description or "")
    assert evaluation.partition is None  # the present, not a window

    # One evaluation per change of outcome, not one per tick.
    history = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(NODE, CDC_RAW_SPACE), limit=50
    )
    assert [verdict(r.event.dagster_event.event_specific_data) for r in reversed(history)] == ["pass", "WARN", "ERROR"]
    assert pipeline.health() == []


def test_a_node_whose_log_grows_without_a_commit_for_too_long_has_stalled(
    tmp_path: Path, instance: dg.DagsterInstance, postgres: dict
) -> None:
    config = write_config(tmp_path, postgres, checks={"stalled_after_seconds": 0.5})
    pipeline = open_monitored(config, instance)
    pipeline.write(300, seed=11)
    pipeline.drain()
    pipeline.health()
    assert verdict(pipeline.latest_evaluation(NODE, CONSUMPTION)) == "pass"

    pipeline.write(300, seed=12)  # and no run reads it
    pipeline.health()
    # The wait counts from when the backlog was first seen: a write after a quiet spell is not a stall.
    assert verdict(pipeline.latest_evaluation(NODE, CONSUMPTION)) == "pass"
    time.sleep(0.7)
    reported = pipeline.health()
    stalled = pipeline.latest_evaluation(NODE, CONSUMPTION)
    assert [e.check_name for e in reported] == [CONSUMPTION]
    assert verdict(stalled) == "ERROR"
    assert stalled is not None and "node1 has stalled" in (stalled.description or "")
    assert stalled.metadata["waiting (s)"].value > 0.5
    assert stalled.metadata["durable frontier"].value != stalled.metadata["committed frontier"].value

    pipeline.drain()
    pipeline.health()
    assert verdict(pipeline.latest_evaluation(NODE, CONSUMPTION)) == "pass"


def test_a_destination_lagging_beyond_its_thresholds_warns_then_fails(
    tmp_path: Path, instance: dg.DagsterInstance, postgres: dict
) -> None:
    config = write_config(tmp_path, postgres)  # lag: WARN above 60 s, ERROR above 300 s
    pipeline = open_monitored(config, instance)
    written = int((time.time() - 200) * 1e6)
    pipeline.write(300, seed=21, start_timestamp_us=written)
    read_only(pipeline)  # staged and committed; postgres has loaded none of it
    pipeline.health()
    behind = pipeline.latest_evaluation(ORDERS, FRESHNESS)
    assert verdict(behind) == "WARN"
    assert behind is not None
    assert behind.metadata["measured from"].value == "the oldest change not loaded yet"
    assert behind.metadata["nodes behind"].value == "node1"
    assert 195 <= behind.metadata["lag (s)"].value <= 260

    stricter = write_config(
        tmp_path, postgres, checks={"destination_lag": {"postgres": {"warn_seconds": 30, "error_seconds": 120}}}
    )
    pipeline = open_monitored(stricter, instance)
    pipeline.health()
    failing = pipeline.latest_evaluation(ORDERS, FRESHNESS)
    assert verdict(failing) == "ERROR"
    assert failing is not None and "postgres shop.orders" in (failing.description or "")

    # Loaded now: the lag is that of the load, still ~200 s after the writes.
    pipeline.drain()
    pipeline.health()
    loaded = pipeline.latest_evaluation(ORDERS, FRESHNESS)
    assert loaded is not None and loaded.metadata["measured from"].value == "its last load"
    assert verdict(loaded) == "ERROR"

    # Fresh writes, loaded at once: the destination is fresh again.
    pipeline.write(300, seed=22)
    pipeline.drain()
    pipeline.health()  # the live run evaluated freshness itself: both tables recover, from the run or the sensor
    assert verdict(pipeline.latest_evaluation(ORDERS, FRESHNESS)) == "pass"
    assert pipeline.health() == []


def test_a_live_run_that_lists_the_health_checks_evaluates_them_and_the_sensor_adds_nothing(
    tmp_path: Path, instance: dg.DagsterInstance, postgres: dict
) -> None:
    pipeline = open_monitored(write_config(tmp_path, postgres), instance)
    pipeline.write(300, seed=31)
    request = pipeline.tick()
    assert request is not None
    checks = [*(request.asset_check_keys or []), *health_check_keys(pipeline.config, "node1", TABLES)]
    result = pipeline.execute(request.with_replaced_attrs(asset_check_keys=checks))
    assert result.success
    evaluated = {(e.asset_key, e.check_name): e for e in result.get_asset_check_evaluations()}
    health = [
        (NODE, CDC_RAW_SPACE),
        (NODE, CONSUMPTION),
        *((destination_key("postgres", t), FRESHNESS) for t in TABLES),
    ]
    for key in health:
        assert evaluated[key].passed, key
        # The run is in a window; the health checks describe the present and are not partitioned.
        assert evaluated[key].partition is None
    assert pipeline.health() == []
