"""The pipeline under the real Dagster daemon: its sensor ticks, its run launcher starts run workers, and
a restarted daemon resumes from the positions in Dagster's storage. Nothing here calls the pipeline's code
directly except to write segments and to read the destinations afterwards.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from cdc_assets.devstack import write_dagster_yaml
from cdc_assets_tests.daemon_process import start_daemon, stop_daemon
from cdc_assets_tests.pipeline_harness import NOW, TABLES, Pipeline, open_pipeline, write_config

# The in-process ClickHouse engine allows one process per data directory: the run workers own this one, and
# the test reads it in a process of its own once the daemon has stopped.
_READ_CLICKHOUSE = """
import pickle, sys
from pathlib import Path
import dagster as dg
from cdc_assets_tests.daemon_process import start_daemon, stop_daemon
from cdc_assets_tests.pipeline_harness import NOW, TABLES, open_pipeline
with dg.instance_for_test() as instance:
    pipeline = open_pipeline(Path(sys.argv[1]), instance)
    rows = {table: pipeline.current("clickhouse", table, NOW) for table in TABLES}
Path(sys.argv[2]).write_bytes(pickle.dumps(rows))
"""


@pytest.fixture
def home(tmp_path: Path) -> Path:
    write_dagster_yaml(tmp_path / "dagster")
    return tmp_path


@pytest.fixture
def pipeline(home: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    monkeypatch.setenv("CDC_TEST_PG", pg_dsn)
    monkeypatch.setenv("CDC_TEST_CH", f"chdb://{home / 'chdb'}")
    config = write_config(
        home,
        {
            "postgres": {"dsn_env": "CDC_TEST_PG", "schema_prefix": "p_"},
            "clickhouse": {"dsn_env": "CDC_TEST_CH"},
            "timescaledb": {"dsn_env": "CDC_TEST_PG", "schema_prefix": "ts_", "allow_plain_postgres": True},
        },
    )
    monkeypatch.setenv("CDC_ASSETS_CONFIG", str(config))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    with dg.DagsterInstance.get() as instance:
        yield open_pipeline(config, instance)


def wait_until_loaded(pipeline: Pipeline, home: Path, timeout: float = 150) -> None:
    """Until PostgreSQL and TimescaleDB hold what was written and no run is left in progress."""
    deadline = time.monotonic() + timeout
    while True:
        done = all(
            pipeline.current(destination, table) == pipeline.expected(table)
            for destination in ("postgres", "timescaledb")
            for table in TABLES
        )
        busy = pipeline.instance.get_runs()
        in_progress = [r for r in busy if not r.is_finished]
        if done and not in_progress:
            return
        if time.monotonic() > deadline:
            log = (home / "daemon.log").read_text(errors="replace")[-4000:]
            raise AssertionError(f"not loaded within {timeout} s; runs: {[r.status for r in busy]}\n{log}")
        time.sleep(1)


def run_daemon_until_loaded(pipeline: Pipeline, home: Path) -> None:
    daemon = start_daemon(home, "-m", "cdc_assets.definitions")
    try:
        wait_until_loaded(pipeline, home)
    finally:
        stop_daemon(daemon)


def test_the_daemon_loads_every_destination_and_resumes_after_a_restart(pipeline: Pipeline, home: Path) -> None:
    pipeline.write(1200, seed=71)
    run_daemon_until_loaded(pipeline, home)
    first_runs = pipeline.instance.get_runs()
    assert first_runs and all(run.status == dg.DagsterRunStatus.SUCCESS for run in first_runs)

    # Written while no daemon ran; the restarted one resumes from the committed position.
    pipeline.write(1200, seed=72)
    run_daemon_until_loaded(pipeline, home)
    runs = pipeline.instance.get_runs()
    assert len(runs) > len(first_runs)
    assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
    assert {run.tags["cdc/from"] for run in runs if run not in first_runs} != {"start"}

    out = home / "clickhouse.pickle"
    subprocess.run(
        [sys.executable, "-c", _READ_CLICKHOUSE, os.environ["CDC_ASSETS_CONFIG"], str(out)], check=True, timeout=120
    )
    clickhouse = pickle.loads(out.read_bytes())
    for table in TABLES:
        assert clickhouse[table] == pipeline.expected(table, NOW), f"clickhouse {table}"
