"""``cdc-assets run`` (``make run``): a private PostgreSQL that keeps its data, a Dagster instance that queues runs
per node, segments a stopped generator left open that no longer hold the reader back, and the whole stack
started, answering and stopped with nothing left behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._utils.tags import TagConcurrencyLimitsCounter

from cdc_assets.cassandra_schema.tables import SchemaRegistry
from cdc_assets.commitlog.cdc_dir import list_cdc_segments, read_durable
from cdc_assets.commitlog.generator import SegmentWriter, Workload, generate, realistic_table
from cdc_assets.commitlog.reader import CommitLogReader
from cdc_assets.config import CONFIG_ENV, load_config
from cdc_assets.defs.keys import CHDB_TAG, NODE_TAG
from cdc_assets.defs.workers import proc_stat
from cdc_assets.devstack import (
    PostgresServer,
    answers,
    fail_interrupted_runs,
    free_port,
    seal_abandoned_segments,
    server_binary,
    write_dagster_yaml,
)

REPOSITORY = Path(__file__).resolve().parent.parent

needs_postgres_binaries = pytest.mark.skipif(
    server_binary("initdb") is None, reason="no PostgreSQL server binaries (scripts/ensure-postgres.sh installs them)"
)


@pytest.fixture
def home() -> Iterator[Path]:
    """A directory the ``postgres`` account can enter (pytest's tmp_path sits under a 0700 directory)."""
    root = Path(tempfile.mkdtemp(prefix="cdc-devstack-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {seconds:.0f} s")
        time.sleep(0.25)


# -- the private PostgreSQL server ------------------------------------------------------------------------


@needs_postgres_binaries
def test_the_private_server_keeps_its_databases_and_rows_across_restarts(home: Path) -> None:
    first = PostgresServer(home / "postgres", home / "postgres-run")
    try:
        first.start()
        first.create_databases("cdc", "cdc_timescale")
        with psycopg.connect(first.dsn("cdc"), autocommit=True) as connection:
            connection.execute("CREATE TABLE kept (n int)")
            connection.execute("INSERT INTO kept VALUES (42)")
    finally:
        first.stop()
    assert not first.running()

    second = PostgresServer(home / "postgres", home / "postgres-run")
    try:
        second.start()
        second.create_databases("cdc", "cdc_timescale")
        with psycopg.connect(second.dsn("cdc")) as connection:
            assert connection.execute("SELECT n FROM kept").fetchall() == [(42,)]
        with psycopg.connect(second.dsn()) as connection:
            names = {row[0] for row in connection.execute("SELECT datname FROM pg_database")}
        assert {"cdc", "cdc_timescale"} <= names
        assert second.port == first.port, "a free previous port is reused, so DSNs stay the same"
    finally:
        second.stop()
    assert not second.running()


# -- the Dagster instance ------------------------------------------------------------------------------------


def _run(**tags: str) -> dg.DagsterRun:
    return dg.DagsterRun(job_name="cdc", tags=tags)


def test_the_instance_allows_one_run_per_node_one_chdb_run_and_one_write_per_destination(tmp_path: Path) -> None:
    write_dagster_yaml(tmp_path)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        assert instance.run_monitoring_enabled
        concurrency = instance.get_concurrency_config()
        assert concurrency.run_queue_config is not None
        limits = concurrency.run_queue_config.tag_concurrency_limits
        assert concurrency.pool_config.default_pool_limit == 1, "one write at a time per destination pool"

    # The queued-run daemon's own counter, fed with the limits the instance loaded.
    in_progress = TagConcurrencyLimitsCounter(limits, [_run(**{NODE_TAG: "node1", CHDB_TAG: "1"})])
    assert in_progress.is_blocked(_run(**{NODE_TAG: "node1"}))
    assert not in_progress.is_blocked(_run(**{NODE_TAG: "node2"}))
    assert in_progress.is_blocked(_run(**{NODE_TAG: "node2", CHDB_TAG: "1"}))
    assert not in_progress.is_blocked(_run())


def test_runs_an_earlier_stack_left_in_progress_are_marked_failed_and_no_others(tmp_path: Path) -> None:
    write_dagster_yaml(tmp_path)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        started = instance.add_run(dg.DagsterRun(job_name="cdc", status=dg.DagsterRunStatus.STARTED))
        finished = instance.add_run(dg.DagsterRun(job_name="cdc", status=dg.DagsterRunStatus.SUCCESS))

    assert fail_interrupted_runs(tmp_path) == [started.run_id]

    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.get_run_by_id(started.run_id).status == dg.DagsterRunStatus.FAILURE  # type: ignore[union-attr]
        assert instance.get_run_by_id(finished.run_id).status == dg.DagsterRunStatus.SUCCESS  # type: ignore[union-attr]


# -- the generator's segments ----------------------------------------------------------------------------------


def test_segments_a_stopped_generator_left_open_no_longer_hold_back_the_next_runs(tmp_path: Path) -> None:
    cdc_raw = tmp_path / "cdc_raw"
    table = realistic_table()
    # A generator stopped mid-segment: synced up to its idx, never COMPLETED.
    first = generate([table], Workload(seed=1, mutations=200, close_last_segment=False), [cdc_raw])
    # One it had just opened when stopped: no idx, so nothing in it was ever durable.
    SegmentWriter(cdc_raw, first.segments[-1].segment_id + 1).abandon()
    second = generate([table], Workload(seed=2, mutations=300), [cdc_raw])
    reader = CommitLogReader(SchemaRegistry([table]))
    assert read_durable(reader, cdc_raw, None).result.stats.mutations == first.mutations

    sealed = seal_abandoned_segments(cdc_raw)

    assert len(sealed) == 2
    assert all(segment.completed for segment in list_cdc_segments(cdc_raw))
    assert read_durable(reader, cdc_raw, None).result.stats.mutations == first.mutations + second.mutations


# -- the whole stack --------------------------------------------------------------------------------------------


def _environment(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(pair.decode().split("=", 1) for pair in pairs if b"=" in pair)


def _command_line(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def _child(pid: int, marker: bytes) -> int:
    """The direct child of ``pid`` whose command line holds ``marker``."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return next(int(child) for child in children if marker in _command_line(int(child)))


def _running(pid: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def _processes_mentioning(text: str) -> list[str]:
    """Live processes (not zombies) whose command line or environment names ``text``."""
    found = []
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid() or not _running(int(entry.name)):
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in cmdline or needle in environ:
            found.append(entry.name + ": " + cmdline.replace(b"\0", b" ").decode(errors="replace")[:200])
    return found


@dataclass
class RunningStack:
    process: subprocess.Popen[bytes]
    state: Path
    log: Path

    def postmaster(self) -> int:
        return int((self.state / "postgres" / "postmaster.pid").read_text().split()[0])

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture
def stack(home: Path) -> Iterator[RunningStack]:
    """``cdc-assets run`` started from the repository root on a free port, with its state in a temporary home."""
    port = free_port()
    state = home / "state"
    log = home / "run.log"
    env = {name: value for name, value in os.environ.items() if name != CONFIG_ENV}
    run = ["run", "--port", str(port), "--home", str(state), "--rate", "500"]
    command = [sys.executable, "-m", "cdc_assets.cli", *run]
    started = time.monotonic()
    with open(log, "wb") as output:
        process = subprocess.Popen(command, cwd=REPOSITORY, env=env, stdout=output, stderr=output)
    running = RunningStack(process, state, log)
    try:
        _wait_for(
            lambda: process.poll() is not None or answers(f"http://127.0.0.1:{port}/server_info"),
            90,
            "the Dagster webserver did not answer",
        )
        assert process.poll() is None, running.output()
        print(f"/server_info answered {time.monotonic() - started:.1f} s after start")
        banner = f"cdc_assets: open http://127.0.0.1:{port} (PostgreSQL on 127.0.0.1:"
        _wait_for(lambda: banner in running.output(), 10, "no line saying where to open the UI")
        yield running
    finally:
        # A test that failed half way still stops the stack, so that it stops its children.
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@needs_postgres_binaries
def test_cdc_assets_run_serves_dagster_fills_cdc_raw_and_stops_everything_on_ctrl_c(stack: RunningStack) -> None:
    _wait_for(lambda: any(s.index for s in list_cdc_segments(stack.state / "cdc_raw")), 30, "no durable segment")
    postmaster = stack.postmaster()
    seen = _environment(_child(stack.process.pid, b"dagster"))
    config = load_config(seen[CONFIG_ENV])
    assert config.nodes[0].cdc_raw == stack.state / "cdc_raw"
    assert config.staging.path == stack.state / "staging"
    assert seen["DAGSTER_HOME"] == str(stack.state / "dagster")
    assert seen["CDC_CLICKHOUSE_DSN"] == f"chdb://{stack.state / 'chdb'}"
    for name, database in (("CDC_POSTGRES_DSN", "cdc"), ("CDC_TIMESCALE_DSN", "cdc_timescale")):
        with psycopg.connect(seen[name]) as connection:
            assert connection.execute("SELECT current_database()").fetchone() == (database,)

    stack.process.send_signal(signal.SIGINT)

    assert stack.process.wait(timeout=60) == 0, stack.output()
    assert not _running(postmaster)
    assert _processes_mentioning(str(stack.state)) == []


@needs_postgres_binaries
def test_cdc_assets_run_stops_everything_and_fails_naming_the_child_that_died(stack: RunningStack) -> None:
    postmaster = stack.postmaster()

    os.kill(_child(stack.process.pid, b"generate"), signal.SIGKILL)

    assert stack.process.wait(timeout=60) == 1
    assert "workload generator exited unexpectedly (exit code -9)" in stack.output()
    assert not _running(postmaster)
    assert _processes_mentioning(str(stack.state)) == []
