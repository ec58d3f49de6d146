"""The per-window checks: a window's staged changes against their expectation suites, and the destinations
reconciled with each other and with a replay of the staged batches, run by their own job through Dagster.

Real parts throughout: a PostgreSQL server (PostgreSQL and TimescaleDB destinations), the in-process ClickHouse
engine, a real Dagster instance, Great Expectations itself.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from cdc_assets.cassandra_schema.cql_file import load_cql_file
from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.cassandra_schema.types import parse_type
from cdc_assets.change_batch import build_change_batch
from cdc_assets.commitlog.reader import Position
from cdc_assets.config import ConfigError, Expectation, PipelineConfig, load_config
from cdc_assets.definitions import build_definitions
from cdc_assets.defs.checks.window import (
    EXPECTATIONS,
    JOB,
    RECONCILIATION,
    SCHEDULE,
    closed_window,
    window_check_definitions,
    window_run_request,
)
from cdc_assets.defs.keys import destination_key, staged_key
from cdc_assets.defs.partitions import current_partition
from cdc_assets.expectations import (
    ExpectationConfigError,
    default_expectations,
    frame_columns,
    validate_window,
    window_frame,
)
from cdc_assets.reconciliation import history_is_whole, partition_bytes, reconcile
from cdc_assets.staging import stage_range
from cdc_assets_tests.pipeline_harness import SHOP_CQL, TABLES, Pipeline, open_pipeline, write_config

DESTINATIONS = ("postgres", "clickhouse", "timescaledb")
QUANTITY_AT_MOST_ONE = {
    "expectation": "expect_column_values_to_be_between",
    "kwargs": {"column": "quantity", "min_value": 0, "max_value": 1},
}


def past_window() -> str:
    """An hour that has closed, inside the staging retention."""
    return current_partition(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))


def loaded_pipeline(
    root: Path, destinations: dict, instance: dg.DagsterInstance, mutations: int = 1500, **overrides: Any
) -> tuple[Pipeline, str]:
    """A pipeline whose node has written ``mutations`` changes, drained into every destination in a past window."""
    pipeline = open_pipeline(write_config(root, destinations, **overrides), instance)
    window = past_window()
    pipeline.write(mutations, seed=11)
    assert pipeline.drain(partition=window) >= 1
    assert all(result.success for result in pipeline.results)
    return pipeline, window


def check_window(pipeline: Pipeline, window: str) -> dict[tuple[dg.AssetKey, str], Any]:
    """Run the window job for ``window`` through Dagster; the check evaluations by (asset key, check name)."""
    defs = pipeline.defs
    request = window_run_request(window)
    result = defs.resolve_job_def(JOB).execute_in_process(
        instance=pipeline.instance, tags=request.tags, raise_on_error=False
    )
    assert result.success, [event.message for event in result.all_events if event.is_failure]
    return {(e.asset_key, e.check_name): e for e in result.get_asset_check_evaluations()}


def test_a_faithful_window_passes_every_check(tmp_path: Path, all_destinations: dict, instance) -> None:
    pipeline, window = loaded_pipeline(tmp_path, all_destinations, instance)
    evaluations = check_window(pipeline, window)

    expected = {(staged_key(t), EXPECTATIONS) for t in TABLES}
    expected |= {(destination_key(d, t), RECONCILIATION) for d in DESTINATIONS for t in TABLES}
    assert set(evaluations) == expected
    failed = {key: e.description for key, e in evaluations.items() if not e.passed}
    assert not failed
    orders = evaluations[(staged_key("shop.orders"), EXPECTATIONS)]
    assert orders.metadata["changes"].value > 0
    assert "expect_column_values_to_be_in_set | _cdc_kind |" in orders.metadata["results"].value
    reconciled = evaluations[(destination_key("postgres", "shop.orders"), RECONCILIATION)]
    assert reconciled.metadata["keys compared"].value > 0
    assert reconciled.metadata["keys in flight"].value == 0
    digests = {
        evaluations[(destination_key(d, "shop.orders"), RECONCILIATION)].metadata["digest"].value for d in DESTINATIONS
    }
    assert digests == {reconciled.metadata["replay digest"].value}


def test_a_configured_expectation_the_window_violates_fails_with_what_and_where(
    tmp_path: Path, all_destinations: dict, instance
) -> None:
    checks = {"expectations": {"shop.orders": [QUANTITY_AT_MOST_ONE]}}
    pipeline, window = loaded_pipeline(tmp_path, all_destinations, instance, checks=checks)
    evaluations = check_window(pipeline, window)

    orders = evaluations[(staged_key("shop.orders"), EXPECTATIONS)]
    assert not orders.passed
    assert orders.severity == dg.AssetCheckSeverity.ERROR  # Great Expectations' default severity: critical
    assert "expect_column_values_to_be_between(quantity)" in orders.description
    failing = [line for line in orders.metadata["results"].value.splitlines() if "| quantity |" in line]
    assert len(failing) == 1 and "**FAIL** (critical)" in failing[0] and "configured" in failing[0]
    assert "unexpected" in failing[0] and "node1 " in failing[0]  # how many, some values, and their positions
    # The default suite still holds, and the other table has no configured expectation to break.
    assert evaluations[(staged_key("shop.customers"), EXPECTATIONS)].passed
    assert all(e.passed for (key, name), e in evaluations.items() if name == RECONCILIATION)


def test_a_destination_that_silently_diverged_is_named_with_its_keys(
    tmp_path: Path, all_destinations: dict, instance, pg_dsn: str
) -> None:
    pipeline, window = loaded_pipeline(tmp_path, all_destinations, instance)
    rows = pipeline.current("postgres", "shop.orders", now=dt.datetime.now(dt.UTC))
    changed = next(row["order_id"] for row in rows if row["quantity"] is not None)
    dropped = next(row["order_id"] for row in rows if row["order_id"] != changed)
    # Behind the pipeline's back: one value changed, one partition's rows gone.
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        connection.execute("UPDATE p_shop.orders__rows SET quantity = quantity + 1000 WHERE order_id = %s", [changed])
        connection.execute("DELETE FROM p_shop.orders__rows WHERE order_id = %s", [dropped])

    evaluations = check_window(pipeline, window)
    postgres = evaluations[(destination_key("postgres", "shop.orders"), RECONCILIATION)]
    assert not postgres.passed and postgres.severity == dg.AssetCheckSeverity.ERROR
    assert postgres.description.startswith("postgres disagrees on 2 of ")
    listed = postgres.metadata["disagreements"].value
    assert f"order_id={changed}" in listed and "values differ from the replay in quantity" in listed
    assert f"order_id={dropped}" in listed and "missing: the replay has" in listed
    assert "differs from clickhouse, timescaledb" in listed
    for other in ("clickhouse", "timescaledb"):
        assert evaluations[(destination_key(other, "shop.orders"), RECONCILIATION)].passed
    for destination in DESTINATIONS:
        assert evaluations[(destination_key(destination, "shop.customers"), RECONCILIATION)].passed


def test_great_expectations_stays_out_of_the_code_location_and_the_micro_batches(tmp_path: Path, pg_dsn: str) -> None:
    destinations = {"postgres": {"dsn_env": "CDC_TEST_PG", "schema_prefix": "p_"}}
    config = write_config(tmp_path, destinations, checks={"expectations": {"shop.orders": [QUANTITY_AT_MOST_ONE]}})
    script = """
import sys
import json
import dagster as dg
import cdc_assets.definitions as location
from cdc_assets.defs.cassandra.schema import captured_tables, load_registry
from cdc_assets.defs.checks.window import JOB
from cdc_assets_tests.pipeline_harness import Pipeline

config = location.load_config()
tables = captured_tables(config, load_registry(config.schema))
defs = location.defs
defs.resolve_job_def(JOB)
loaded = "great_expectations" in sys.modules
with dg.instance_for_test() as instance:
    pipeline = Pipeline(config, defs, instance, tables)
    pipeline.write(300, seed=5)
    runs = pipeline.drain()
    succeeded = all(result.success for result in pipeline.results)
    evaluations = [e.check_name for r in pipeline.results for e in r.get_asset_check_evaluations()]
window_results = [name for name in evaluations if name.startswith("window_")]
after = "great_expectations" in sys.modules
print(json.dumps({"loaded": loaded, "runs": runs, "succeeded": succeeded, "window": window_results, "after": after}))
"""
    environment = {**os.environ, "CDC_ASSETS_CONFIG": str(config), "CDC_TEST_PG": pg_dsn}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[1],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["runs"] >= 1 and outcome["succeeded"]
    # Neither loading the code location nor a micro-batch imports Great Expectations, and the window checks,
    # which Dagster adds to every run of their assets, stand aside in the micro-batches.
    assert (outcome["loaded"], outcome["window"], outcome["after"]) == (False, [], False)


def shop(root: Path, **overrides: Any) -> tuple[PipelineConfig, dict[str, TableSchema]]:
    """The shop pipeline's configuration (one PostgreSQL destination) and its captured tables."""
    config = load_config(write_config(root, {"postgres": {"dsn_env": "CDC_TEST_PG"}}, **overrides))
    registry = load_cql_file(SHOP_CQL)
    return config, {name: registry.by_name(*name.split(".")) for name in config.tables}  # type: ignore[misc]


def test_the_schedule_checks_the_hour_that_just_closed_once(tmp_path: Path) -> None:
    config, _ = shop(tmp_path)
    defs = build_definitions(config)
    dg.Definitions.validate_loadable(defs)
    schedule = defs.get_schedule_def(SCHEDULE)
    assert schedule.cron_schedule == "10 * * * *" and schedule.execution_timezone == "UTC"
    moment = dt.datetime(2026, 3, 1, 14, 10, tzinfo=dt.UTC)
    with dg.build_schedule_context(scheduled_execution_time=moment) as context:
        request = schedule.evaluate_tick(context).run_requests[0]
    assert request.tags["dagster/partition"] == "2026-03-01-13:00" == request.run_key
    assert closed_window(dt.datetime(2026, 3, 2, 0, 10, tzinfo=dt.UTC)) == "2026-03-01-23:00"


@pytest.mark.parametrize(
    ("expectation", "complaint"),
    [
        (
            {"expectation": "expect_column_values_to_be_betwen", "kwargs": {"column": "quantity"}},
            "checks.expectations.shop.orders[0] expect_column_values_to_be_betwen: Great Expectations has no "
            "expectation named expect_column_values_to_be_betwen; did you mean expect_column_values_to_be_between",
        ),
        (
            {"expectation": "expect_column_values_to_not_be_null", "kwargs": {"column": "tags"}},
            "checks.expectations.shop.orders[0] expect_column_values_to_not_be_null: column 'tags' is not in "
            "shop.orders's window frame",
        ),
    ],
)
def test_an_expectation_that_cannot_run_fails_the_load_naming_table_and_expectation(
    tmp_path: Path, expectation: dict, complaint: str
) -> None:
    config, tables = shop(tmp_path, checks={"expectations": {"shop.orders": [expectation]}})
    with pytest.raises(ConfigError) as raised:
        window_check_definitions(config, tables)
    assert complaint in str(raised.value)


def test_expectations_for_a_table_that_is_not_captured_fail_the_load(tmp_path: Path) -> None:
    config, tables = shop(tmp_path, checks={"expectations": {"shop.order": [QUANTITY_AT_MOST_ONE]}})
    with pytest.raises(ConfigError, match=r"checks.expectations.shop.order: shop.order is not a captured table"):
        window_check_definitions(config, tables)


def orders_frame(quantities: list[int | None]) -> Any:
    """A window frame of ``shop.orders`` row changes with these quantities, at positions 100, 200, …"""
    orders = load_cql_file(SHOP_CQL).by_name("shop", "orders")
    changes = [
        {
            "segment_id": 7,
            "position": 100 * (index + 1),
            "kind": "row",
            "key": {"order_id": f"5a1e5a1e-0000-4000-8000-{index:012d}"},
            "clustering": {"created_at": 1_700_000_000_000 + index},
            "row_writetime": 1_700_000_000_000_000 + index,
            "cells": {"quantity": {"value": quantity, "writetime": 1_700_000_000_000_000 + index, "deleted": False}}
            if quantity is not None
            else None,
        }
        for index, quantity in enumerate(quantities)
    ]
    return orders, window_frame([("node1", build_change_batch(orders, changes))])


def test_a_counter_is_not_in_the_frame_since_a_change_holds_a_leaders_shard_not_its_value() -> None:
    visits = TableSchema(
        "shop",
        "visits",
        uuid.UUID(int=3),
        (Column("page", parse_type("text"), "partition_key", 0), Column("hits", parse_type("counter"), "regular")),
    )
    shard = {"value": [(b"\x0a" * 16, 4, 9)], "writetime": 1_700_000_000_000_000, "deleted": False}
    change = {"segment_id": 7, "position": 100, "kind": "row", "key": {"page": "/"}, "cells": {"hits": shard}}
    frame = window_frame([("node1", build_change_batch(visits, [change]))])
    assert "hits" not in frame.columns and "hits" not in frame_columns(visits)
    assert list(frame["page"]) == ["/"]


def test_each_expectation_keeps_its_severity_and_says_where_it_failed() -> None:
    orders, frame = orders_frame([0, 1, 5, None, 9])
    soft = Expectation(
        expectation="expect_column_values_to_be_between",
        kwargs={"column": "quantity", "min_value": 0, "max_value": 1, "severity": "warning"},
    )
    result = validate_window("shop.orders", frame, default_expectations(orders), [soft])
    assert [o.expectation for o in result.failed] == ["expect_column_values_to_be_between"]
    failed = result.failed[0]
    assert failed.configured and failed.severity == "warning" and not result.critical
    assert failed.observed == "2 of 5 unexpected, 1 null: 5, 9"
    assert failed.where == ["node1 7:300", "node1 7:500"]
    assert all(o.passed for o in result.outcomes if not o.configured)


def test_arguments_great_expectations_refuses_name_the_table_and_the_expectation() -> None:
    _, frame = orders_frame([1])
    wrong = Expectation(expectation="expect_column_values_to_be_between", kwargs={"column": "quantity", "low": 0})
    with pytest.raises(ExpectationConfigError) as raised:
        validate_window("shop.orders", frame, [], [wrong])
    assert str(raised.value).startswith("checks.expectations.shop.orders[0] expect_column_values_to_be_between: ")
    assert "low" in str(raised.value)


def test_a_keyed_read_returns_exactly_the_partitions_asked_for(
    tmp_path: Path, all_destinations: dict, instance
) -> None:
    pipeline, _ = loaded_pipeline(tmp_path, all_destinations, instance, mutations=600)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    for table in TABLES:
        schema = pipeline.tables[table]
        partition_key = [c.name for c in schema.partition_key]
        for name in DESTINATIONS:
            target = pipeline.destination(name)
            try:
                everything = target.current_state(schema, now=now)
                wanted = {tuple(row[c] for c in partition_key) for row in everything[::7]}
                keyed = target.current_state(schema, now=now, keys=sorted(wanted, key=str))
                assert keyed == [row for row in everything if tuple(row[c] for c in partition_key) in wanted], name
                assert target.current_state(schema, now=now, keys=[]) == []
            finally:
                target.close()


def order(order_id: str, created_at: int, **values: Any) -> dict[str, Any]:
    """A canonical row of ``shop.orders``."""
    columns = ("customer", "quantity", "total_cents", "price", "paid", "weight_kg", "tags")
    return {"order_id": order_id, "created_at": created_at, **{c: values.get(c) for c in columns}}


A, B = "5a1e5a1e-0000-4000-8000-00000000000a", "5a1e5a1e-0000-4000-8000-00000000000b"


def orders_keys() -> tuple[TableSchema, dict[bytes, tuple[Any, ...]]]:
    orders = load_cql_file(SHOP_CQL).by_name("shop", "orders")
    assert orders is not None
    return orders, {partition_bytes(orders, (key,)): (key,) for key in (A, B)}


def test_values_the_canonical_form_counts_equal_digest_alike() -> None:
    orders, keys = orders_keys()
    replay = [order(A, 1, price=Decimal("1E+2"), weight_kg=0.0), order(B, 2, quantity=3)]
    # PostgreSQL's numeric has no negative scale: 1E+2 reads back as 100.
    held = [order(A, 1, price=Decimal("100"), weight_kg=-0.0), order(B, 2, quantity=3)]
    outcome = reconcile(orders, keys, replay, {"postgres": held, "clickhouse": replay})
    assert all(verdict.passed for verdict in outcome.verdicts.values())
    assert outcome.verdicts["postgres"].digest == outcome.verdicts["clickhouse"].digest == outcome.replay_digest


def test_keys_still_being_loaded_are_left_out_and_counted() -> None:
    orders, keys = orders_keys()
    replay = [order(A, 1, quantity=1), order(B, 2, quantity=2)]
    behind = [order(A, 1, quantity=1), order(B, 2, quantity=1)]
    outcome = reconcile(orders, keys, replay, {"postgres": behind}, in_flight={partition_bytes(orders, (B,))})
    assert outcome.verdicts["postgres"].passed
    assert (outcome.touched, outcome.in_flight, outcome.compared) == (2, 1, 1)


def test_with_a_pruned_history_a_destination_must_contain_the_replay() -> None:
    orders, keys = orders_keys()
    # The replay knows only what the retention kept: a quantity written lately, no older rows.
    replay = [order(A, 1, quantity=5)]
    older = [order(A, 0, customer="c0"), order(A, 1, customer="c1", quantity=5)]
    diverged = [order(A, 0, customer="c0"), order(A, 1, customer="c1", quantity=6)]
    outcome = reconcile(
        orders, keys, replay, {"postgres": diverged, "clickhouse": older, "timescaledb": older}, exact=False
    )
    assert outcome.verdicts["clickhouse"].passed and outcome.verdicts["timescaledb"].passed
    (wrong,) = outcome.verdicts["postgres"].disagreements
    assert wrong.key == f"order_id={A}"
    assert wrong.reason == "values differ from the replay in quantity; differs from clickhouse, timescaledb"
    assert not reconcile(orders, keys, replay, {"postgres": older}, exact=True).verdicts["postgres"].passed


def test_a_gap_in_a_nodes_staged_ranges_makes_the_history_partial(tmp_path: Path) -> None:
    orders, _ = orders_keys()
    batch = build_change_batch(orders, [])
    tables = {"shop.orders": (orders, batch)}
    first = stage_range(tmp_path, "node1", "2026-03-01-10:00", None, Position(7, 100), Position(7, 100), tables)
    second = stage_range(tmp_path, "node1", "2026-03-01-10:00", Position(7, 100), Position(7, 200), None, tables)
    later = stage_range(tmp_path, "node1", "2026-03-01-11:00", Position(7, 300), Position(7, 400), None, tables)
    assert history_is_whole([first, second])
    assert not history_is_whole([second, later])  # pruned: the stream's start is gone
    assert not history_is_whole([first, second, later])  # 200 → 300 was never staged
