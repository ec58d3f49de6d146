"""What goes wrong in production, and how the pipeline comes back without losing or doubling a change.

A run SIGKILLed mid-load, a destination down for a while, windows dropped from a destination and rebuilt by
a backfill, Dagster's history wiped, the code location restarted: after each, every destination equals
the generator's ground truth, and every load id is recorded once.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from dagster._serdes import serialize_value

from cdc_assets.defs.cassandra.sensors import poll_node
from cdc_assets.defs.keys import NODE_TAG, stream_key
from cdc_assets.defs.ledger import committed_stream, consumed
from cdc_assets.defs.partitions import current_partition
from cdc_assets.staging import list_ranges
from cdc_assets_tests.chdb_fixture import fresh_prefix
from cdc_assets_tests.pipeline_harness import TABLES, Pipeline, open_pipeline, write_config

POSTGRES_ONLY = ("postgres", "timescaledb")
UNREACHABLE = "host=127.0.0.1 port=1 user=postgres dbname=postgres connect_timeout=2"


def postgres_destinations(pg_dsn: str, monkeypatch: pytest.MonkeyPatch, **postgres: object) -> dict:
    monkeypatch.setenv("CDC_TEST_PG", pg_dsn)
    monkeypatch.setenv("CDC_TEST_PG_DOWN", pg_dsn)
    return {
        "postgres": {"dsn_env": "CDC_TEST_PG_DOWN", "schema_prefix": "p_", **postgres},
        "timescaledb": {"dsn_env": "CDC_TEST_PG", "schema_prefix": "ts_", "allow_plain_postgres": True},
    }


def assert_converged(pipeline: Pipeline, destinations: tuple[str, ...]) -> None:
    for table in TABLES:
        expected = pipeline.expected(table)
        assert expected
        for destination in destinations:
            assert pipeline.current(destination, table) == expected, f"{destination} {table}"


def ledger(pg_dsn: str, helper: str) -> list[tuple[str, int]]:
    with psycopg.connect(pg_dsn) as connection:
        return connection.execute(f'SELECT load_id, changes FROM "{helper}".loads ORDER BY load_id').fetchall()


def wait_out_backoff(pipeline: Pipeline) -> dg.RunRequest:
    """Tick until the sensor asks again (it backs off after a failure), at most 10 s."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        request = pipeline.tick()
        if request is not None:
            return request
        time.sleep(0.2)
    raise AssertionError("the sensor never requested the failed range again")


_WORKER = """
import sys
import dagster as dg
from dagster._serdes import deserialize_value
from pathlib import Path
from cdc_assets_tests.pipeline_harness import open_pipeline
instance = dg.DagsterInstance.from_ref(deserialize_value(sys.argv[2]))
pipeline = open_pipeline(Path(sys.argv[1]), instance)
pipeline.execute(pipeline.tick())
"""


def test_a_run_killed_mid_load_is_read_again_without_loss_or_duplicate(
    tmp_path: Path, pg_dsn: str, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small pieces make the PostgreSQL load take long enough to be killed in the middle of it.
    config = write_config(tmp_path, postgres_destinations(pg_dsn, monkeypatch, piece_changes=200))
    pipeline = open_pipeline(config, instance)
    pipeline.write(8000, seed=11)
    worker = subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(config), serialize_value(instance.get_ref())],
        env=os.environ.copy(),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while committed_stream(instance, "node1") is None:
            assert worker.poll() is None, "the run finished before it could be killed"
            assert time.monotonic() < deadline, "the run never staged its range"
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    [killed] = instance.get_run_records(dg.RunsFilter(tags={NODE_TAG: "node1"}))
    assert killed.dagster_run.status == dg.DagsterRunStatus.STARTED

    # The next tick sees the worker is gone and fails the run. Its range was staged and committed before the
    # kill, so the next run starts after it, and the destinations load what the killed run left unloaded.
    request = pipeline.tick()
    assert instance.get_run_by_id(killed.dagster_run.run_id).status == dg.DagsterRunStatus.FAILURE
    assert request is not None and request.tags["cdc/from"] == str(committed_stream(instance, "node1").position)
    pipeline.execute(request)
    pipeline.drain()
    assert_converged(pipeline, POSTGRES_ONLY)
    ids = [load_id for load_id, _ in ledger(pg_dsn, "p__cdc")]
    assert len(ids) == len(set(ids)) == len(TABLES)


def test_a_destination_down_for_a_while_is_retried_then_catches_up(
    tmp_path: Path, pg_dsn: str, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = open_pipeline(write_config(tmp_path, postgres_destinations(pg_dsn, monkeypatch)), instance)
    monkeypatch.setenv("CDC_TEST_PG_DOWN", UNREACHABLE)
    pipeline.write(800, seed=21)
    down = pipeline.execute(pipeline.tick())
    assert not down.success
    failed = [e for e in down.all_events if e.is_step_failure]
    assert [e.step_key for e in failed] == ["load_postgres"]
    # The others went on: TimescaleDB holds the range while PostgreSQL is down.
    assert_converged(pipeline, ("timescaledb",))

    pipeline.write(800, seed=22)
    pipeline.execute(pipeline.tick())  # new data: read at once, PostgreSQL still down
    assert_converged(pipeline, ("timescaledb",))
    assert consumed(instance, "postgres", "shop.orders") is None

    monkeypatch.setenv("CDC_TEST_PG_DOWN", pg_dsn)
    caught_up = pipeline.execute(wait_out_backoff(pipeline))
    assert caught_up.success
    assert_converged(pipeline, POSTGRES_ONLY)
    assert pipeline.tick() is None
    ranges = list_ranges(pipeline.config.staging.path)
    assert len(ledger(pg_dsn, "p__cdc")) == sum(len(r.tables) for r in ranges)


def test_a_backfill_of_two_windows_rebuilds_them_in_one_destination(
    tmp_path: Path, pg_dsn: str, chdb_dsn: str, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    destinations = postgres_destinations(pg_dsn, monkeypatch)
    monkeypatch.setenv("CDC_TEST_CH", chdb_dsn)
    prefix = fresh_prefix()
    destinations["clickhouse"] = {"dsn_env": "CDC_TEST_CH", "database_prefix": prefix}
    pipeline = open_pipeline(write_config(tmp_path, destinations), instance)
    now = dt.datetime.now(dt.UTC)
    first, second = (current_partition(now - dt.timedelta(hours=h)) for h in (2, 1))
    pipeline.write(700, seed=31)
    pipeline.drain(partition=first)
    pipeline.write(700, seed=32)
    pipeline.drain(partition=second)
    everything = ("postgres", "clickhouse", "timescaledb")
    assert_converged(pipeline, everything)
    positions = {d: consumed(instance, d, "shop.orders") for d in everything}

    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        connection.execute('DROP SCHEMA "p_shop" CASCADE')
        connection.execute('DROP SCHEMA "p__cdc" CASCADE')
    clickhouse = pipeline.destination("clickhouse")
    clickhouse.client.command(f"DROP DATABASE `{prefix}shop`")
    clickhouse.close()
    assert pipeline.current("postgres", "shop.orders") == []

    for destination in ("postgres", "clickhouse"):
        rebuilt = pipeline.backfill(destination, first, second)
        assert rebuilt.success
        materialized = rebuilt.get_asset_materialization_events()
        assert {e.partition for e in materialized} == {first, second}
    assert_converged(pipeline, everything)
    # A backfill never moves what the live flow has consumed.
    assert {d: consumed(instance, d, "shop.orders") for d in everything} == positions


def test_with_dagster_history_wiped_positions_come_back_from_the_load_ledgers(
    tmp_path: Path, pg_dsn: str, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, postgres_destinations(pg_dsn, monkeypatch))
    pipeline = open_pipeline(config, instance)
    pipeline.write(900, seed=41)
    pipeline.drain()
    read_to = committed_stream(instance, "node1")
    assert read_to is not None and read_to.position is not None
    recoverable = []
    for name in POSTGRES_ONLY:
        destination = pipeline.destination(name)
        recoverable.append(destination.ledger_position(list(pipeline.tables.values()), "node1/"))
        destination.close()
    expected = min(recoverable)
    wiped_at = time.time()
    with dg.instance_for_test() as wiped:
        again = open_pipeline(config, wiped)
        again.written = pipeline.written
        again.write(900, seed=42)
        assert again.drain() >= 1
        after_wipe = [r for r in list_ranges(again.config.staging.path) if r.staged_at >= wiped_at]
        assert after_wipe and after_wipe[0].after == expected, "the first run after the wipe did not resume there"
        assert_converged(again, POSTGRES_ONLY)


def test_a_restarted_code_location_resumes_from_the_committed_position(
    tmp_path: Path, pg_dsn: str, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, postgres_destinations(pg_dsn, monkeypatch))
    first = open_pipeline(config, instance)
    first.write(600, seed=51)
    first.drain()
    before = committed_stream(instance, "node1")
    restarted = open_pipeline(config, instance)
    restarted.written = first.written
    assert restarted.tick() is None
    restarted.write(600, seed=52)
    request = restarted.tick()
    assert request is not None and request.tags["cdc/from"] == str(before.position)
    restarted.execute(request)
    assert_converged(restarted, POSTGRES_ONLY)
    assert instance.get_latest_materialization_event(stream_key("node1")) is not None


def test_a_run_in_progress_holds_back_the_next(
    tmp_path: Path, pg_dsn: str, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = open_pipeline(write_config(tmp_path, postgres_destinations(pg_dsn, monkeypatch)), instance)
    pipeline.write(300, seed=61)
    request = pipeline.tick()
    assert request is not None
    run = instance.create_run_for_job(
        pipeline.defs.resolve_implicit_global_asset_job_def(), tags=request.tags, asset_selection=frozenset()
    )
    instance.handle_run_event(
        run.run_id,
        dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, job_name=run.job_name, message="started"),
    )
    decision = poll_node(instance, pipeline.config, pipeline.node, list(TABLES))
    assert isinstance(decision, dg.SkipReason) and "in progress" in (decision.skip_message or "")


def test_a_run_not_started_yet_holds_back_the_next(
    tmp_path: Path, pg_dsn: str, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = open_pipeline(write_config(tmp_path, postgres_destinations(pg_dsn, monkeypatch)), instance)
    pipeline.write(300, seed=62)
    request = pipeline.tick()
    assert request is not None
    run = instance.create_run_for_job(
        pipeline.defs.resolve_implicit_global_asset_job_def(), tags=request.tags, asset_selection=frozenset()
    )
    # Created, not yet launched (a queued run needs a code location's origin, which an in-process job lacks;
    # the sensor treats QUEUED and NOT_STARTED alike).
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.NOT_STARTED
    decision = poll_node(instance, pipeline.config, pipeline.node, list(TABLES))
    assert isinstance(decision, dg.SkipReason), "a second run was requested while the first waits to start"
    assert run.run_id in (decision.skip_message or "")
