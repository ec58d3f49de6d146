"""The code location holds what the UI must show: assets, groups, kinds, partitions, sensors; Dagster agrees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from cdc_assets.config import load_config
from cdc_assets.definitions import build_definitions
from cdc_assets.defs.keys import destination_key, staged_key, stream_key
from cdc_assets.devstack import free_port
from cdc_assets_tests.pipeline_harness import write_config

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DESTINATIONS = {
    "postgres": {"dsn_env": "NOT_SET_PG"},
    "clickhouse": {"dsn_env": "NOT_SET_CH"},
    "timescaledb": {"dsn_env": "NOT_SET_TS"},
}


@pytest.fixture
def two_nodes(tmp_path: Path) -> Path:
    return write_config(
        tmp_path,
        DESTINATIONS,
        nodes=[{"name": "node1", "cdc_raw": "a"}, {"name": "node2", "cdc_raw": "b"}],
    )


def test_the_code_location_holds_every_asset_group_kind_partition_and_sensor(two_nodes: Path) -> None:
    defs = build_definitions(load_config(two_nodes))
    graph = defs.resolve_asset_graph()
    tables = ["shop.orders", "shop.customers"]
    expected = {stream_key("node1"), stream_key("node2"), *(staged_key(t) for t in tables)}
    expected |= {destination_key(d, t) for d in DESTINATIONS for t in tables}
    assert set(graph.get_all_asset_keys()) == expected | {dg.AssetKey("dead_letters")}
    for key in expected:
        node = graph.get(key)
        assert node.partitions_def == dg.HourlyPartitionsDefinition(
            start_date="2026-01-01-00:00", timezone="UTC", end_offset=1
        )
        system = key.path[0]
        assert node.group_name == system
        assert system in node.kinds
    for destination in DESTINATIONS:
        for table in tables:
            assert graph.get(destination_key(destination, table)).parent_keys == {staged_key(table)}
    assert graph.get(staged_key("shop.orders")).parent_keys == {stream_key("node1"), stream_key("node2")}
    checks = {(key.asset_key, key.name) for key in graph.asset_check_keys}
    for table in tables:
        for name in ("schema_matches", "keys_not_null", "positions_continue", "no_dead_letters", "window_expectations"):
            assert (staged_key(table), name) in checks
        for destination in DESTINATIONS:
            assert (destination_key(destination, table), "window_reconciliation") in checks
    assert (stream_key("node2"), "positions_continue") in checks
    assert {schedule.name for schedule in defs.schedules} >= {"window_checks_hourly"}
    sensors = {sensor.name: sensor for sensor in defs.sensors}
    assert {"cdc_raw_node1", "cdc_raw_node2", "dead_letters_report"} <= set(sensors)
    assert sensors["cdc_raw_node1"].default_status == dg.DefaultSensorStatus.RUNNING
    assert set(defs.resources) == set(DESTINATIONS)


def test_the_repository_code_location_passes_dagster_validation(tmp_path: Path) -> None:
    environment = {**os.environ, "DAGSTER_HOME": str(tmp_path), "CDC_ASSETS_CONFIG": str(ROOT / "cdc_assets.yaml")}
    result = subprocess.run(
        [str(BIN / "dagster"), "definitions", "validate", "-m", "cdc_assets.definitions"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Validation successful" in result.stderr + result.stdout


def _post(url: str, query: str) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def test_the_webserver_serves_the_asset_graph_over_graphql(tmp_path: Path, two_nodes: Path) -> None:
    port = free_port()
    environment = {**os.environ, "DAGSTER_HOME": str(tmp_path), "CDC_ASSETS_CONFIG": str(two_nodes)}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    server = subprocess.Popen(
        [str(BIN / "dagster-webserver"), "-m", "cdc_assets.definitions", "-h", "127.0.0.1", "-p", str(port)],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, "the webserver exited"
                assert time.monotonic() < deadline, "the webserver did not answer within 90 s"
                time.sleep(0.5)
        query = "{ assetNodes { assetKey { path } groupName kinds isPartitioned } }"
        nodes = _post(f"http://127.0.0.1:{port}/graphql", query)["data"]["assetNodes"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    by_key = {"/".join(node["assetKey"]["path"]): node for node in nodes}
    assert by_key["cassandra/cdc_raw/node2"]["kinds"] == ["cassandra"]
    assert by_key["clickhouse/shop/orders"]["groupName"] == "clickhouse"
    assert by_key["timescaledb/shop/customers"]["kinds"] == ["timescaledb"]
    assert all(node["isPartitioned"] for key, node in by_key.items() if key != "dead_letters")
    assert len(by_key) == 2 + 2 + 6 + 1  # streams, staged tables, destination tables, dead letters
