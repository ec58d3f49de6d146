"""End-to-end benchmark: a steady CDC workload through the real Dagster daemon into all three destinations.

A temporary home holds everything (``cdc_assets.devstack``'s layout): a private PostgreSQL (databases for the
postgres and timescaledb destinations, ``track_commit_timestamp`` on so a load's commit time can be read
back), the in-process ClickHouse engine's data path, a pipeline configuration (``shop.orders`` and
``shop.customers`` from ``cdc_assets/demo/shop.cql``, micro-batches of up to 500,000 changes, the sensor's
``min_interval_seconds`` 1, though Dagster's sensor loop ticks every 5 s at best) and a Dagster instance with
``make run``'s ``dagster.yaml``. ``dagster-daemon run`` runs the node sensor, which requests one run at a time;
each run is a worker process that reads the node's new durable range, stages it and loads it into PostgreSQL,
TimescaleDB (plain-PostgreSQL fallback) and ClickHouse.

The workload, ``--rate`` mutations per second for ``--seconds``:

- ``--mode replay`` (default): generated untimed before the clock starts, into a scratch directory, with
  write times on a simulated clock of exactly ``--rate`` mutations/s from the planned start (the generator's
  ``simulated_rate``; one chunk of the timeline per core, each chunk as a generator restarted at that point
  would write it). Then a replayer copies the segments into ``cdc_raw`` section by section, as the node
  would have synced them: a section (sync marker and entries) is written and the ``_cdc.idx`` rewritten
  with its end once the wall clock passes the write time of its last mutation; a segment's last section
  says ``COMPLETED``, and the next segment's file appears then. Syncs every 250 ms of simulated time.
- ``--mode live``: ``cdc-assets generate --rate R --seconds S`` writes into ``cdc_raw`` while the pipeline
  runs, on the same two cores; it cannot keep up with high rates (it reports what it managed).

After the window, the pipeline gets up to ``--drain`` seconds to load everything; then the daemon is stopped
and what happened is read back:

- **lag** per destination: for each staged range and table, the time its load id became visible in the
  destination (PostgreSQL and TimescaleDB: the commit time of its ledger row, ``pg_xact_commit_timestamp``;
  ClickHouse: the ledger's ``loaded_at``, written last, when the load becomes visible) minus each change's
  write time (``cdc_assets.staging.write_times``);
- **sustained rate**: the changes written in the window divided by the time from the window's start until
  the last of them was visible in the slowest destination (and per destination the same with its own end);
  if the drain ends before every destination has caught up, the backlog is printed and the rate is what the
  slowest destination loaded per second until then;
- **runs**: from Dagster's run records and event logs: time queued, worker start-up, each step;
- **CPU**: from ``/proc`` every 0.5 s over the window and drain (what a gone process did after its last sample
  counted through its parent's reaped-children time): run workers, PostgreSQL, the daemon and its code
  server, the replayer, and whatever else kept the machine busy;
- **baseline**, measured in the same run once the daemon is stopped (so one process holds the chdb data
  path at a time): the same workload decoded with ``read_durable`` in the same micro-batches and loaded into
  fresh prefixes of the three destinations, in this process, without Dagster or staging.

Run: ``make bench-e2e`` or ``.venv/bin/python benchmarks/bench_e2e.py [--rate R] [--seconds S] [--mode
replay|live] [--drain S] [--keep]``. The last line reads::

    bench-e2e: R changes/s sustained, lag p50 A s, p99 B s (worst destination: NAME)
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

import dagster as dg
import numpy as np
import psycopg
import pyarrow as pa
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cdc_assets import devstack
from cdc_assets.cassandra_schema.cql_file import load_cql_file
from cdc_assets.cassandra_schema.tables import SchemaRegistry, TableSchema
from cdc_assets.commitlog.cdc_dir import COMPLETED, list_cdc_segments, read_durable
from cdc_assets.commitlog.descriptor import parse_segment_name, read_descriptor
from cdc_assets.commitlog.entries import section_entries
from cdc_assets.commitlog.generator import Workload, generate
from cdc_assets.commitlog.reader import CommitLogReader, Position
from cdc_assets.config import parse_config
from cdc_assets.dead_letters import DeadLetterStore
from cdc_assets.defs.keys import FROM_TAG, NODE_TAG
from cdc_assets.defs.ledger import consumed
from cdc_assets.destinations.clickhouse.destination import ClickHouseDestination
from cdc_assets.destinations.postgres.destination import PostgresDestination
from cdc_assets.destinations.timescale.destination import TimescaleDestination
from cdc_assets.staging import StagedRange, list_ranges, position_key, position_name, write_times

REPOSITORY = Path(__file__).resolve().parent.parent
SHOP_SCHEMA = REPOSITORY / "cdc_assets" / "demo" / "shop.cql"
NODE = "node1"
TABLES = ("shop.orders", "shop.customers")
DESTINATIONS = ("postgres", "timescaledb", "clickhouse")
SEGMENT_MIB = 8
SYNC_PERIOD_MS = 250
# Sections end on the sync period alone, as Cassandra's periodic sync does.
SYNC_EVERY = 1_000_000
MAX_CHANGES = 500_000
MAX_BYTES = 256 << 20
MIN_INTERVAL_SECONDS = 1
TARGET_RATE = 20_000
TARGET_P99_SECONDS = 15.0
PROGRESS_SECONDS = 15
CPU_SAMPLE_SECONDS = 0.5
BASELINE_PREFIX = "base"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- the workload ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """One generator process's share of the timeline: ``mutations`` from mutation number ``first`` on."""

    directory: Path
    seed: int
    first: int
    mutations: int
    start_us: int
    rate: float
    first_segment_id: int


def shop_tables() -> list[TableSchema]:
    registry = load_cql_file(SHOP_SCHEMA)
    return [table for table in registry if table.qualified_name in TABLES]


def _generate_chunk(chunk: Chunk) -> int:
    workload = Workload(
        seed=chunk.seed,
        mutations=chunk.mutations,
        simulated_rate=chunk.rate,
        start_timestamp_us=chunk.start_us + int(chunk.first * 1_000_000 / chunk.rate),
        segment_size=SEGMENT_MIB << 20,
        sync_every=SYNC_EVERY,
        sync_period_ms=SYNC_PERIOD_MS,
        first_segment_id=chunk.first_segment_id,
        keep_changes=False,
    )
    return generate(shop_tables(), workload, [chunk.directory]).mutations


def pre_generate(directory: Path, mutations: int, rate: float, start_us: int, seed: int, workers: int) -> int:
    """Write ``mutations`` on the simulated clock into ``directory``, one chunk of the timeline per worker."""
    directory.mkdir(parents=True, exist_ok=True)
    base_id = int(time.time() * 1000)
    share = math.ceil(mutations / workers)
    chunks = [
        Chunk(directory, seed + index, first, min(share, mutations - first), start_us, rate, base_id + index * 10**6)
        for index, first in enumerate(range(0, mutations, share))
    ]
    if len(chunks) == 1:
        return _generate_chunk(chunks[0])
    with ProcessPoolExecutor(len(chunks)) as pool:
        return sum(pool.map(_generate_chunk, chunks))


def generator_speed(directory: Path, rate: float) -> float:
    """Mutations per second one process generates on the simulated clock (a short, untimed calibration)."""
    sample = 4_000
    started = time.perf_counter()
    _generate_chunk(Chunk(directory, 0, 0, sample, time.time_ns() // 1000, rate, 1))
    seconds = time.perf_counter() - started
    shutil.rmtree(directory)
    return sample / seconds


@dataclass(frozen=True)
class ReplaySection:
    """One sync section of a pre-generated segment, as the replayer makes it durable in ``cdc_raw``."""

    source: Path
    #: File offset of the section's sync marker; the segment header lies before the first one.
    start: int
    #: Logical end of the section: the ``_cdc.idx`` offset once it is synced.
    end: int
    #: Number (from 0, across the whole workload) of the section's last mutation: it is due at that one's write time.
    last_mutation: int
    first_in_segment: bool
    completed: bool


def replay_plan(directory: Path) -> list[ReplaySection]:
    """The sections of every segment in ``directory``, in log order, found by walking their sync markers."""
    plan: list[ReplaySection] = []
    mutations = 0
    for segment in list_cdc_segments(directory):
        if segment.index is None or not segment.completed:
            raise RuntimeError(f"{segment.path} is not a completed segment: the workload was not generated whole")
        data = segment.path.read_bytes()
        problems: list = []
        sections = []
        descriptor = read_descriptor(data, str(segment.path))
        for section, entries in section_entries(data, descriptor, str(segment.path), problems):
            mutations += len(entries)
            sections.append(
                ReplaySection(segment.path, section.file_offset, section.logical_end, mutations - 1, False, False)
            )
        if problems or not sections or sections[-1].end != segment.index.offset:
            raise RuntimeError(f"{segment.path}: its sections do not end at its idx offset {segment.index.offset}")
        sections[0] = replace(sections[0], first_in_segment=True)
        sections[-1] = replace(sections[-1], completed=True)
        plan += sections
    return plan


def plan_mutations(plan: Sequence[ReplaySection]) -> int:
    return plan[-1].last_mutation + 1 if plan else 0


class Replayer(threading.Thread):
    """Makes the planned sections durable in ``cdc_raw`` as a node syncs them, each once its last mutation is written.

    ``due(section)`` is the wall-clock time (``time.time()``) a section is due. A segment's file (its header,
    the file preallocated to the segment size, no idx yet) appears when the previous segment is completed, as
    the generator rolls segments, and the first one at its first section.
    """

    def __init__(self, plan: Sequence[ReplaySection], cdc_raw: Path, due: Callable[[ReplaySection], float]):
        super().__init__(name="replayer", daemon=True)
        self.plan = plan
        self.cdc_raw = cdc_raw
        self.due = due
        self.sections_written = 0
        self.mutations_written = 0
        self.max_late = 0.0
        self.error: BaseException | None = None
        self._stop_event = threading.Event()
        self._target: int | None = None
        self._source: int | None = None

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        try:
            for number, section in enumerate(self.plan):
                wait = self.due(section) - time.time()
                if wait > 0 and self._stop_event.wait(wait):
                    return
                self.write(section, self.plan[number + 1] if number + 1 < len(self.plan) else None)
                self.max_late = max(self.max_late, time.time() - self.due(section))
                self.sections_written += 1
                self.mutations_written = section.last_mutation + 1
        except BaseException as error:  # reported by the main thread
            self.error = error
        finally:
            self._close()

    def write(self, section: ReplaySection, following: ReplaySection | None) -> None:
        if section.first_in_segment and self._target is None:
            self._open(section)
        assert self._target is not None and self._source is not None
        data = os.pread(self._source, section.end - section.start, section.start)
        os.pwrite(self._target, data, section.start)
        # As Cassandra's FileWriter (and the generator) do: truncate the idx and write it again.
        index = self.cdc_raw / section.source.name.replace(".log", "_cdc.idx")
        index.write_text(f"{section.end}\n{COMPLETED}" if section.completed else str(section.end), encoding="ascii")
        if section.completed:
            self._close()
            if following is not None:
                self._open(following)

    def _open(self, first: ReplaySection) -> None:
        self._source = os.open(first.source, os.O_RDONLY)
        target = self.cdc_raw / first.source.name
        self._target = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.ftruncate(self._target, os.fstat(self._source).st_size)
        os.pwrite(self._target, os.pread(self._source, first.start, 0), 0)

    def _close(self) -> None:
        for fd in (self._target, self._source):
            if fd is not None:
                os.close(fd)
        self._target = self._source = None


# --- the stack ------------------------------------------------------------------------------------------


def pipeline_document(home: devstack.DevHome) -> dict[str, Any]:
    return {
        "nodes": [{"name": NODE, "cdc_raw": str(home.cdc_raw)}],
        "schema": {"cql_file": str(SHOP_SCHEMA)},
        "tables": list(TABLES),
        "destinations": {
            "postgres": {"dsn_env": "CDC_POSTGRES_DSN"},
            "clickhouse": {"dsn_env": "CDC_CLICKHOUSE_DSN"},
            "timescaledb": {"dsn_env": "CDC_TIMESCALE_DSN", "allow_plain_postgres": True},
        },
        "micro_batch": {
            "max_changes": MAX_CHANGES,
            "max_bytes": MAX_BYTES,
            "min_interval_seconds": MIN_INTERVAL_SECONDS,
        },
        "staging": {"path": str(home.staging)},
        "dead_letters": str(home.dead_letters),
    }


def write_pipeline_config(home: devstack.DevHome) -> Path:
    document = pipeline_document(home)
    parse_config(document, source="bench-e2e configuration")
    home.config.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return home.config


def start_postgres(home: devstack.DevHome, stack: ExitStack) -> devstack.PostgresServer:
    """The private server, with commit timestamps on: a load's commit time is when its changes become visible."""
    postgres = devstack.PostgresServer(home.postgres_data, home.postgres_run)
    stack.callback(postgres.stop)
    postgres.start()
    with psycopg.connect(postgres.dsn(), autocommit=True) as admin:
        admin.execute("ALTER SYSTEM SET track_commit_timestamp = on")
    postgres.stop()
    postgres.start()
    postgres.create_databases(devstack.POSTGRES_DATABASE, devstack.TIMESCALE_DATABASE)
    return postgres


def wait_for_daemon(instance: dg.DagsterInstance, daemon: devstack.Child, log: Path, seconds: float = 180) -> None:
    """Until the sensor and run-queue daemons have reported a heartbeat."""
    deadline = time.monotonic() + seconds
    while True:
        beats = instance.get_daemon_heartbeats()
        if {"SENSOR", "QUEUED_RUN_COORDINATOR"} <= set(beats):
            return
        if daemon.exit_code() is not None or time.monotonic() > deadline:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"dagster-daemon did not come up (exit code {daemon.exit_code()}):\n{tail}")
        time.sleep(1)


# --- watching -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    ppid: int
    pgid: int
    #: CPU ticks (user + system) of the process itself, and of its children it has reaped.
    own: int
    children: int
    started: int


def _proc_stat(pid: int) -> ProcStat | None:
    """What ``/proc/PID/stat`` says of a process, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # After the command name, in parentheses: state, ppid, pgrp, ... utime, stime, cutime, cstime, ... starttime.
    fields = stat[stat.rindex(")") + 2 :].split()
    own = int(fields[11]) + int(fields[12])
    return ProcStat(int(fields[1]), int(fields[2]), own, int(fields[13]) + int(fields[14]), int(fields[19]))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values[:8]) - idle, sum(values[:8])


@dataclass
class _Tracked:
    kind: str
    children_kind: str
    cmdline: str
    first: ProcStat | None
    last: ProcStat


class CpuSampler(threading.Thread):
    """CPU seconds per kind of process over a window, from ``/proc`` every 0.5 s.

    Run workers and PostgreSQL backends live for a run or less, so sampling alone would lose the end of each:
    what a gone process did after its last sample is found in its parent's reaped-children time (the code
    server reaps run workers, the postmaster its backends), which grows by all of a child's CPU when it is
    reaped. ``classify(pid, stat, cmdline)`` names a process's kind and that of the children it reaps, or
    None for processes that are not ours.
    """

    def __init__(self, classify: Callable[[int, ProcStat, str], tuple[str, str] | None]):
        super().__init__(name="cpu-sampler", daemon=True)
        self.classify = classify
        self.tracked: dict[tuple[int, int], _Tracked] = {}
        self.ignored: set[tuple[int, int]] = set()
        self.alive: set[tuple[int, int]] = set()
        self._done = threading.Event()
        self._machine_start = _machine_ticks()
        self._machine_end = self._machine_start
        self.started_at = time.time()
        self.seconds = 0.0

    def run(self) -> None:
        self._sample(initial=True)
        while not self._done.wait(CPU_SAMPLE_SECONDS):
            self._sample()

    def finish(self) -> None:
        self._done.set()
        self.join()
        self._sample()
        self._machine_end = _machine_ticks()
        self.seconds = time.time() - self.started_at

    def _sample(self, initial: bool = False) -> None:
        alive = set()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            stat = _proc_stat(pid)
            if stat is None:
                continue
            key = (pid, stat.started)
            if key in self.ignored:
                continue
            tracked = self.tracked.get(key)
            if tracked is None:
                cmdline = _cmdline(pid)
                kinds = self.classify(pid, stat, cmdline)
                if kinds is None:
                    self.ignored.add(key)
                    continue
                # Processes already running when the window opens count from then on; new ones from zero.
                tracked = self.tracked[key] = _Tracked(*kinds, cmdline, stat if initial else None, stat)
            tracked.last = stat
            alive.add(key)
        self.alive = alive

    def totals(self) -> dict[str, tuple[float, int]]:
        """Per kind: CPU seconds in the window and how many processes of that kind were seen."""
        seconds: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        by_pid = {key[0]: key for key in self.tracked}
        # What a parent's reaped-children time already holds of each child that is gone: its totals as last seen.
        seen_of_gone: dict[tuple[int, int], int] = defaultdict(int)
        for key, tracked in self.tracked.items():
            counts[tracked.kind] += 1
            seconds[tracked.kind] += (tracked.last.own - (tracked.first.own if tracked.first else 0)) / _CLOCK_TICKS
            parent = by_pid.get(tracked.last.ppid)
            if key not in self.alive and parent is not None:
                seen_of_gone[parent] += tracked.last.own + tracked.last.children
        for key, tracked in self.tracked.items():
            reaped = tracked.last.children - (tracked.first.children if tracked.first else 0)
            # The rest is what its children did after their last sample (or children never sampled).
            seconds[tracked.children_kind] += max(reaped - seen_of_gone[key], 0) / _CLOCK_TICKS
        return {kind: (seconds[kind], counts.get(kind, 0)) for kind in seconds}

    def machine(self) -> tuple[float, float]:
        """Busy CPU seconds of the whole machine in the window, and the cores' total."""
        busy = (self._machine_end[0] - self._machine_start[0]) / _CLOCK_TICKS
        total = (self._machine_end[1] - self._machine_start[1]) / _CLOCK_TICKS
        return busy, total

    def listing(self) -> str:
        """Every process counted, with its kind and command line (written into the home for ``--keep``)."""
        rows = []
        for (pid, _), tracked in sorted(self.tracked.items()):
            own = (tracked.last.own - (tracked.first.own if tracked.first else 0)) / _CLOCK_TICKS
            rows.append(f"{pid}\t{tracked.kind}\t{own:.2f} s\t{tracked.cmdline[:200]}")
        return "\n".join(rows) + "\n"


BENCHMARK = "benchmark process (replayer, sampler, progress)"
RUN_WORKERS = "run workers"
DAGSTER = "Dagster daemon + code server"
POSTGRES = "PostgreSQL server"
GENERATOR = "live generator"


def classifier(
    daemon_pgid: int, postmaster: int, generator_pgid: int | None
) -> Callable[[int, ProcStat, str], tuple[str, str] | None]:
    me = os.getpid()

    def classify(pid: int, stat: ProcStat, cmdline: str) -> tuple[str, str] | None:
        if pid == me:
            # Its only child in the window is the live generator.
            return BENCHMARK, GENERATOR
        if pid == postmaster or stat.ppid == postmaster:
            return POSTGRES, POSTGRES
        if generator_pgid is not None and stat.pgid == generator_pgid:
            return GENERATOR, GENERATOR
        if stat.pgid == daemon_pgid:
            # The code server (``dagster api grpc``) starts each run worker with multiprocessing's spawn.
            if "multiprocessing.spawn" in cmdline and "spawn_main" in cmdline:
                return RUN_WORKERS, RUN_WORKERS
            return DAGSTER, RUN_WORKERS if "api grpc" in cmdline else DAGSTER
        return None

    return classify


def consumed_frontiers(instance: dg.DagsterInstance) -> dict[str, Position | None]:
    """Per destination, the least frontier its tables have consumed of the node (None: nothing yet)."""
    least: dict[str, Position | None] = {}
    for destination in DESTINATIONS:
        frontiers = []
        for table in TABLES:
            record = (consumed(instance, destination, table) or {}).get(NODE)
            frontiers.append(record.frontier if record is not None else None)
        least[destination] = min(frontiers, key=position_key)
    return least


def segment_id(section: ReplaySection) -> int:
    named = parse_segment_name(section.source.name)
    assert named is not None
    return named[1]


def mutations_before(plan: Sequence[ReplaySection], position: Position | None) -> int:
    """How many planned mutations lie at or before ``position`` (counted by whole sections)."""
    if position is None:
        return 0
    done = 0
    for section in plan:
        if (segment_id(section), section.end) <= (position.segment_id, position.offset):
            done = section.last_mutation + 1
        else:
            break
    return done


# --- measuring ------------------------------------------------------------------------------------------


def change_write_times(batch: pa.RecordBatch) -> np.ndarray:
    """Each change's write time in µs (``staging.write_times``) as floats, NaN where a change has none."""
    return write_times(batch).to_numpy(zero_copy_only=False).astype(np.float64)


class Visibility(NamedTuple):
    """When a load's changes became visible in a destination, and what its ledger's ``loaded_at`` says."""

    visible: float
    loaded_at: float


def postgres_visibility(dsn: str) -> dict[str, Visibility]:
    """Per load id in the ``_cdc`` ledger: the commit time of its ledger row, and ``loaded_at`` (epoch seconds)."""
    with psycopg.connect(dsn) as connection:
        rows = connection.execute(
            "SELECT load_id, extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8, "
            'extract(epoch FROM loaded_at)::float8 FROM "_cdc".loads'
        ).fetchall()
    unknown = [load_id for load_id, committed, _ in rows if committed is None]
    if unknown:
        raise RuntimeError(f"{len(unknown)} loads have no commit timestamp (is track_commit_timestamp on?)")
    return {load_id: Visibility(committed, loaded_at) for load_id, committed, loaded_at in rows}


def clickhouse_visibility(destination: ClickHouseDestination) -> dict[str, Visibility]:
    """Per load id: ``loaded_at`` of the ledger row, which a load writes last (its changes are visible from then)."""
    visible: dict[str, Visibility] = {}
    keyspaces = sorted({table.split(".", 1)[0] for table in TABLES})
    for keyspace in keyspaces:
        ledger = destination.client.query(
            "SELECT count() FROM system.tables WHERE database = {db:String} AND name = '_cdc_loads'",
            parameters={"db": keyspace},
        ).result_rows
        if not ledger[0][0]:
            continue
        rows = destination.client.query(
            f"SELECT load_id, toUnixTimestamp64Micro(loaded_at) FROM `{keyspace}`._cdc_loads"
        ).result_rows
        visible.update({load_id: Visibility(micros / 1e6, micros / 1e6) for load_id, micros in rows})
    return visible


@dataclass
class DestinationLags:
    """What one destination holds of the workload, and when each change became visible there."""

    name: str
    lags: list[np.ndarray] = field(default_factory=list)
    at_loaded_at: list[np.ndarray] = field(default_factory=list)
    changes: int = 0
    last_visible: float = 0.0

    def array(self) -> np.ndarray:
        return np.concatenate(self.lags) if self.lags else np.array([])


@dataclass
class Measured:
    ranges: int
    staged_changes: int
    no_write_time: int
    window_start: float
    destinations: dict[str, DestinationLags]


def measure_lags(
    ranges: Sequence[StagedRange], visible: Mapping[str, Mapping[str, Visibility]], offset: float
) -> Measured:
    """Lags from each change's write time to its load's visibility; ``offset`` moves write times to the wall clock."""
    results = {name: DestinationLags(name) for name in DESTINATIONS}
    staged = 0
    missing = 0
    window_start = math.inf
    for staged_range in ranges:
        for table in staged_range.tables:
            batch = staged_range.batch(table)
            written = change_write_times(batch) / 1e6 + offset
            known = ~np.isnan(written)
            missing += int((~known).sum())
            written = written[known]
            staged += batch.num_rows
            if len(written):
                window_start = min(window_start, float(written.min()))
            load_id = staged_range.load_id(table)
            for name in DESTINATIONS:
                if load_id not in visible[name]:
                    continue
                seen = visible[name][load_id]
                result = results[name]
                result.lags.append(seen.visible - written)
                result.at_loaded_at.append(seen.loaded_at - written)
                result.changes += batch.num_rows
                result.last_visible = max(result.last_visible, seen.visible)
    return Measured(len(ranges), staged, missing, window_start, results)


@dataclass
class RunTiming:
    run_id: str
    status: str
    created: float
    starting: float | None
    started: float | None
    ended: float | None
    steps: dict[str, float]
    changes: int
    origin: str | None
    failures: list[str]

    @property
    def duration(self) -> float | None:
        return None if self.started is None or self.ended is None else self.ended - self.started


_RUN_EVENTS = {
    dg.DagsterEventType.RUN_STARTING,
    dg.DagsterEventType.STEP_START,
    dg.DagsterEventType.STEP_SUCCESS,
    dg.DagsterEventType.STEP_FAILURE,
    dg.DagsterEventType.ASSET_MATERIALIZATION,
    dg.DagsterEventType.RUN_FAILURE,
}


def run_timings(instance: dg.DagsterInstance) -> list[RunTiming]:
    """The node's runs, oldest first, with the time each spent queued, starting up and in each step."""
    timings = []
    records = instance.get_run_records(dg.RunsFilter(tags={NODE_TAG: NODE}), ascending=True, order_by="id")
    for record in records:
        run = record.dagster_run
        starting: float | None = None
        step_starts: dict[str, float] = {}
        steps: dict[str, float] = {}
        changes = 0
        failures: list[str] = []
        for entry in instance.all_logs(run.run_id, of_type=_RUN_EVENTS):
            event = entry.dagster_event
            if event is None:
                continue
            kind = event.event_type
            if kind == dg.DagsterEventType.RUN_STARTING:
                starting = entry.timestamp if starting is None else starting
            elif kind == dg.DagsterEventType.STEP_START:
                step_starts[entry.step_key or "?"] = entry.timestamp
            elif kind in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
                key = entry.step_key or "?"
                steps[key] = steps.get(key, 0.0) + entry.timestamp - step_starts.get(key, entry.timestamp)
                if kind == dg.DagsterEventType.STEP_FAILURE:
                    failures.append(f"{key}: {event.message or entry.user_message}")
            elif kind == dg.DagsterEventType.RUN_FAILURE:
                failures.append(event.message or entry.user_message)
            elif entry.asset_materialization is not None and entry.asset_materialization.asset_key.path[1] == "cdc_raw":
                value = entry.asset_materialization.metadata.get("changes")
                changes += int(value.value) if value is not None else 0
        timings.append(
            RunTiming(
                run.run_id,
                run.status.value,
                record.create_timestamp.timestamp(),
                starting,
                record.start_time,
                record.end_time,
                steps,
                changes,
                run.tags.get(FROM_TAG),
                failures,
            )
        )
    return timings


# --- the baseline ---------------------------------------------------------------------------------------


@dataclass
class Baseline:
    changes: int = 0
    mutations: int = 0
    batches: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))


def baseline(
    directory: Path, registry: SchemaRegistry, postgres_dsn: str, timescale_dsn: str, chdb_dsn: str, dead_letters: Path
) -> Baseline:
    """Decode the workload in the pipeline's micro-batches and load each batch into fresh prefixes, in this process."""
    store = DeadLetterStore(dead_letters)
    destinations = {
        "postgres": PostgresDestination(postgres_dsn, BASELINE_PREFIX, dead_letters=store),
        "timescaledb": TimescaleDestination(
            timescale_dsn,
            BASELINE_PREFIX,
            chunk_interval=timedelta(hours=24),
            allow_plain_postgres=True,
            dead_letters=store,
        ),
        "clickhouse": ClickHouseDestination(chdb_dsn, f"{BASELINE_PREFIX}_", dead_letters=store),
    }
    result = Baseline()
    after: Position | None = None
    try:
        while True:
            started = time.perf_counter()
            read = read_durable(
                CommitLogReader(registry.copy()), directory, after, max_changes=MAX_CHANGES, max_bytes=MAX_BYTES
            )
            batches = {name: batch for name, batch in read.result.batches.items() if name in TABLES}
            result.seconds["decode"] += time.perf_counter() - started
            if read.frontier == after:
                break
            result.mutations += read.result.stats.mutations
            result.batches += 1
            for name, destination in destinations.items():
                started = time.perf_counter()
                for table, batch in batches.items():
                    schema = read.result.tables[table]
                    destination.ensure_table(schema)
                    destination.load(schema, batch, load_id=f"baseline/{position_name(after)}/{table}")
                result.seconds[name] += time.perf_counter() - started
            result.changes += sum(batch.num_rows for batch in batches.values())
            after = read.frontier
    finally:
        for destination in destinations.values():
            destination.close()
    return result


# --- reporting ------------------------------------------------------------------------------------------


def _rate(changes: float, seconds: float) -> str:
    return f"{changes / seconds:,.0f}" if seconds > 0 else "-"


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def destination_table(measured: Measured, runs: Sequence[RunTiming]) -> str:
    lines = [
        "| destination | changes | changes/s | lag p50 | p90 | p99 | max | runs | mean run (s) | mean step (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in DESTINATIONS:
        result = measured.destinations[name]
        lags = result.array()
        step = f"load_{name}"
        with_step = [r for r in runs if step in r.steps and r.duration is not None]
        if len(lags):
            p50, p90, p99 = np.percentile(lags, [50, 90, 99])
            lag_cells = f"{p50:.1f} s | {p90:.1f} s | {p99:.1f} s | {lags.max():.1f} s"
        else:
            lag_cells = "- | - | - | -"
        lines.append(
            f"| {name} | {result.changes:,} | {_rate(result.changes, result.last_visible - measured.window_start)} | "
            f"{lag_cells} | {len(with_step)} | {_mean([r.duration for r in with_step]):.1f} | "  # type: ignore[misc]
            f"{_mean([r.steps[step] for r in with_step]):.1f} |"
        )
    return "\n".join(lines)


def runs_table(runs: Sequence[RunTiming], stopped_at: float) -> str:
    """Where a run's time goes, phase by phase (mean and max over the runs that finished); ``stopped_at`` is when
    the daemon was stopped, interrupting any run still going."""
    finished = [r for r in runs if r.duration is not None and r.starting is not None]
    phases: dict[str, list[float]] = defaultdict(list)
    # Every step any run took, in the order they first appear (asset checks are steps too).
    step_keys = list(dict.fromkeys(key for run in finished for key in run.steps))
    for previous, run in zip([None, *finished[:-1]], finished):
        if previous is not None and previous.ended is not None:
            # The node's runs are serialized: nothing reads its log between the two.
            phases["node idle: previous run's end to this run's launch"].append(run.starting - previous.ended)  # type: ignore[operator]
        phases["queued (request to launch)"].append(run.starting - run.created)  # type: ignore[operator]
        phases["worker start-up (launch to run start)"].append(run.started - run.starting)  # type: ignore[operator]
        for step in step_keys:
            phases[f"step {step}"].append(run.steps.get(step, 0.0))
        phases["rest of the run (between and after steps)"].append(run.duration - sum(run.steps.values()))  # type: ignore[operator]
        phases["whole run (start to end)"].append(run.duration)  # type: ignore[arg-type]
        phases["request to end"].append(run.ended - run.created)  # type: ignore[operator]
    lines = ["| phase | mean (s) | max (s) |", "|---|---:|---:|"]
    for phase, values in phases.items():
        lines.append(f"| {phase} | {_mean(values):.2f} | {max(values):.2f} |")
    changes = [r.changes for r in finished]
    statuses = defaultdict(int)
    for run in runs:
        statuses[run.status] += 1
    summary = ", ".join(f"{count} {status.lower()}" for status, count in sorted(statuses.items()))
    interrupted = sum(1 for run in runs if run.status != "SUCCESS" and (run.ended or 0) >= stopped_at)
    if interrupted:
        summary += f"; {interrupted} stopped with the daemon after the drain"
    failed = [f"- run {run.run_id[:8]}: {message[:300]}" for run in runs for message in run.failures]
    origins = [r.origin for r in runs]
    repeated = sum(1 for index, origin in enumerate(origins) if origin in origins[:index])
    lines.append("")
    lines.append(
        f"{len(runs)} runs ({summary}); changes per run: mean {_mean(changes):,.0f}, max {max(changes, default=0):,}; "
        f"{repeated} requested from a position an earlier run had already been requested from"
    )
    if failed:
        lines += ["", "Failures:", *failed]
    return "\n".join(lines)


def cpu_table(sampler: CpuSampler) -> str:
    lines = ["| processes | count | CPU seconds | cores (mean) |", "|---|---:|---:|---:|"]
    for kind, (seconds, count) in sorted(sampler.totals().items(), key=lambda item: -item[1][0]):
        if not count and not seconds:
            continue
        lines.append(f"| {kind} | {count} | {seconds:,.1f} | {seconds / sampler.seconds:.2f} |")
    busy, total = sampler.machine()
    ours = sum(seconds for seconds, _ in sampler.totals().values())
    rest = busy - ours
    lines.append(
        f"| anything else (other work on the machine, kernel) | | {rest:,.1f} | {rest / sampler.seconds:.2f} |"
    )
    cores = total / sampler.seconds
    lines.append(f"| whole machine, busy | | {busy:,.1f} | {busy / sampler.seconds:.2f} of {cores:.0f} |")
    return "\n".join(lines)


def baseline_table(result: Baseline) -> str:
    lines = ["| in this process, no Dagster, no staging | seconds | changes/s |", "|---|---:|---:|"]
    labels = {
        "decode": f"decode (read_durable, {result.batches} micro-batches of <= {MAX_CHANGES:,} changes)",
        "postgres": "load postgres",
        "timescaledb": "load timescaledb",
        "clickhouse": "load clickhouse",
    }
    for key, label in labels.items():
        seconds = result.seconds[key]
        lines.append(f"| {label} | {seconds:.1f} | {_rate(result.changes, seconds)} |")
    total = sum(result.seconds.values())
    lines.append(
        f"| all of it, one after the other (what one run worker does) | {total:.1f} | {_rate(result.changes, total)} |"
    )
    return "\n".join(lines)


# --- the run --------------------------------------------------------------------------------------------


@dataclass
class Window:
    """When the workload was written, and what it holds."""

    mutations: int
    final: Position | None
    offset: float
    replayer: Replayer | None = None
    generator_seconds: float | None = None
    #: When the drain ended (everything loaded, or the time was up) and the daemon was stopped.
    ended: float = 0.0


def parse_generator_log(log: Path) -> tuple[int, Position | None]:
    """Mutations the live generator wrote and the idx end of its last segment, from its report on stderr."""
    text = log.read_text(errors="replace")
    counted = re.search(r"^(\d+) mutations, \d+ entries", text, re.MULTILINE)
    segments = re.findall(r"CommitLog-\d+-(\d+)\.log node=\d+ .* idx=(\d+) COMPLETED", text)
    final = Position(int(segments[-1][0]), int(segments[-1][1])) if segments else None
    return (int(counted.group(1)) if counted else 0), final


def progress(
    instance: dg.DagsterInstance, started: float, plan: Sequence[ReplaySection], replayer: Replayer | None
) -> str:
    frontiers = consumed_frontiers(instance)
    runs = instance.get_run_records(dg.RunsFilter(tags={NODE_TAG: NODE}))
    running = sum(1 for r in runs if not r.dagster_run.is_finished)
    if plan:
        loaded = ", ".join(f"{name} {mutations_before(plan, frontiers[name]):,}" for name in DESTINATIONS)
        written = f"replayed {replayer.mutations_written:,} mutations" if replayer else ""
    else:
        loaded = ", ".join(f"{name} up to {frontiers[name] or 'nothing yet'}" for name in DESTINATIONS)
        written = "live generator writing"
    return f"  +{time.time() - started:5.0f} s: {written}; loaded: {loaded}; runs {len(runs)} ({running} not finished)"


def drained(instance: dg.DagsterInstance, final: Position | None) -> bool:
    if final is None:
        return False
    return all(f is not None and position_key(f) >= position_key(final) for f in consumed_frontiers(instance).values())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=TARGET_RATE, help="mutations per second (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=180, help="length of the timed window (default %(default)s)")
    parser.add_argument("--mode", choices=("replay", "live"), default="replay", help="how the workload is written")
    parser.add_argument("--drain", type=float, default=120, help="seconds allowed after the window to catch up")
    parser.add_argument("--seed", type=int, default=20261205)
    parser.add_argument("--keep", action="store_true", help="keep the temporary home (printed at the end)")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="cdc-bench-e2e-"))
    # The postgres account runs the server under it when this runs as root.
    root.chmod(0o755)
    home = devstack.DevHome.at(root)
    scratch = root / "workload"
    with ExitStack() as stack:
        if not args.keep:
            stack.callback(shutil.rmtree, root, ignore_errors=True)
        else:
            stack.callback(print, f"bench-e2e: kept {root}")
        return run(args, home, scratch, stack)


def run(args: argparse.Namespace, home: devstack.DevHome, scratch: Path, stack: ExitStack) -> int:
    mutations = int(args.rate * args.seconds)
    print(
        f"bench-e2e: {args.mode} mode, {args.rate:,.0f} mutations/s for {args.seconds:.0f} s ({mutations:,} mutations "
        f"of {', '.join(TABLES)}), sync every {SYNC_PERIOD_MS} ms, {SEGMENT_MIB} MiB segments, micro-batches of "
        f"<= {MAX_CHANGES:,} changes; home {home.root}; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    postgres = start_postgres(home, stack)
    home.chdb.mkdir(parents=True, exist_ok=True)
    home.cdc_raw.mkdir(parents=True, exist_ok=True)
    dagster_yaml = devstack.write_dagster_yaml(home.dagster)
    config = write_pipeline_config(home)
    postgres_dsn = postgres.dsn(devstack.POSTGRES_DATABASE)
    timescale_dsn = postgres.dsn(devstack.TIMESCALE_DATABASE)
    env = devstack.child_environment(
        os.environ, home, postgres_dsn=postgres_dsn, timescale_dsn=timescale_dsn, config=config
    )
    instance = stack.enter_context(dg.DagsterInstance.from_config(str(home.dagster)))
    # Create the SQLite storages before the daemon opens them: two processes creating them at once can leave
    # the run storage with two alembic heads, which every later open refuses.
    instance.get_runs(limit=1)
    instance.get_daemon_heartbeats()
    instance.all_instigator_state()
    daemon_log = home.root / "daemon.log"
    with open(daemon_log, "ab") as output:
        command = [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-m", "cdc_assets.definitions"]
        daemon = devstack.Child.start("dagster-daemon", command, env, output)
    stack.callback(daemon.stop, signal.SIGINT, 60.0)
    print(f"  PostgreSQL on port {postgres.port}; {dagster_yaml}; waiting for dagster-daemon", flush=True)
    wait_for_daemon(instance, daemon, daemon_log)

    plan: list[ReplaySection] = []
    generator: devstack.Child | None = None
    if args.mode == "replay":
        speed = generator_speed(scratch, args.rate)
        workers = min(2, os.cpu_count() or 1)
        # Two generators on two cores beside the daemon reach ~70-80 % of twice the calibrated speed; planning
        # for 60 % keeps the write times on the wall clock (an overrun shifts them, and says so).
        estimate = mutations / (speed * workers * 0.6) + 10
        planned = time.time() + estimate
        started = time.perf_counter()
        generated = pre_generate(scratch, mutations, args.rate, int(planned * 1e6), args.seed, workers)
        plan = replay_plan(scratch)
        assert plan_mutations(plan) == generated == mutations, (plan_mutations(plan), generated, mutations)
        size = sum(p.stat().st_size for p in scratch.glob("*.log"))
        print(
            f"  pre-generated {generated:,} mutations in {time.perf_counter() - started:.0f} s ({workers} processes, "
            f"{speed:,.0f} mutations/s each alone): {len(plan):,} sections in "
            f"{len({s.source for s in plan})} segments ({size / 2**20:,.0f} MiB preallocated)",
            flush=True,
        )
        offset = max(0.0, time.time() - planned)
        if offset > 0:
            print(
                f"  pre-generation overran its plan by {offset:.1f} s: "
                f"replaying {offset:.1f} s later than the write times say"
            )

        def due(section: ReplaySection) -> float:
            return planned + offset + int(section.last_mutation * 1_000_000 / args.rate) / 1e6

        window = Window(mutations, Position(segment_id(plan[-1]), plan[-1].end), offset)
        time.sleep(max(0.0, planned + offset - time.time()))
        sampler = CpuSampler(classifier(daemon.process.pid, postgres.pid() or -1, None))
        window.replayer = Replayer(plan, home.cdc_raw, due)
        sampler.start()
        window_started = time.time()
        window.replayer.start()
        stack.callback(window.replayer.stop)
    else:
        generator_log = home.root / "generator.log"
        command = [
            sys.executable, "-m", "cdc_assets.cli", "generate", "--cdc-raw", str(home.cdc_raw),
            "--schema", str(SHOP_SCHEMA), "--seconds", str(args.seconds), "--rate", str(args.rate),
            "--seed", str(args.seed), "--segment-size", str(SEGMENT_MIB), "--sync-period-ms", str(SYNC_PERIOD_MS),
            "--sync-every", str(SYNC_EVERY),
        ]  # fmt: skip
        window = Window(0, None, 0.0)
        window_started = time.time()
        with open(generator_log, "ab") as output:
            generator = devstack.Child.start("live generator", command, os.environ, output)
        stack.callback(generator.stop, signal.SIGTERM, 10.0)
        sampler = CpuSampler(classifier(daemon.process.pid, postgres.pid() or -1, generator.process.pid))
        sampler.start()

    # The window, then the drain: until every destination has consumed the whole log, or the drain runs out.
    deadline = window_started + args.seconds + args.drain
    next_report = window_started + PROGRESS_SECONDS
    written_at: float | None = None
    while True:
        time.sleep(1)
        if window.replayer is not None and window.replayer.error is not None:
            raise RuntimeError(f"the replayer failed: {window.replayer.error!r}") from window.replayer.error
        if daemon.exit_code() is not None:
            raise RuntimeError(f"dagster-daemon exited (code {daemon.exit_code()}); see {daemon_log}")
        if written_at is None:
            if window.replayer is not None and not window.replayer.is_alive():
                written_at = time.time()
            elif generator is not None and generator.exit_code() is not None:
                written_at = time.time()
                window.generator_seconds = written_at - window_started
                window.mutations, window.final = parse_generator_log(home.root / "generator.log")
            if written_at is not None:
                print(
                    f"  +{written_at - window_started:5.0f} s: all {window.mutations:,} mutations written", flush=True
                )
        if time.time() >= next_report:
            print(progress(instance, window_started, plan, window.replayer), flush=True)
            next_report += PROGRESS_SECONDS
        if written_at is not None and drained(instance, window.final):
            print(f"  +{time.time() - window_started:5.0f} s: every destination has loaded the whole log", flush=True)
            break
        if time.time() >= deadline:
            print(
                f"  +{time.time() - window_started:5.0f} s: drain time is up: the destinations did not catch up",
                flush=True,
            )
            break
    sampler.finish()
    window.ended = time.time()
    (home.root / "cpu_processes.txt").write_text(sampler.listing(), encoding="utf-8")
    print("  stopping dagster-daemon (and any run in progress)", flush=True)
    daemon.stop(signal.SIGINT, 60.0)
    return report(args, home, scratch, instance, window, sampler, postgres_dsn, timescale_dsn)


def report(
    args: argparse.Namespace,
    home: devstack.DevHome,
    scratch: Path,
    instance: dg.DagsterInstance,
    window: Window,
    sampler: CpuSampler,
    postgres_dsn: str,
    timescale_dsn: str,
) -> int:
    runs = run_timings(instance)
    ranges = list_ranges(home.staging, nodes=[NODE])
    chdb_dsn = f"chdb://{home.chdb}"
    clickhouse = ClickHouseDestination(chdb_dsn)
    try:
        visible = {
            "postgres": postgres_visibility(postgres_dsn),
            "timescaledb": postgres_visibility(timescale_dsn),
            "clickhouse": clickhouse_visibility(clickhouse),
        }
    finally:
        clickhouse.close()
    measured = measure_lags(ranges, visible, window.offset)

    registry = load_cql_file(SHOP_SCHEMA)
    if args.mode == "live":
        # The same workload (same seed, same count) on the simulated clock: only its write times differ.
        pre_generate(scratch, window.mutations, args.rate, time.time_ns() // 1000, args.seed, 1)
    print("  baseline: decoding and loading the same workload in this process", flush=True)
    base = baseline(scratch, registry, postgres_dsn, timescale_dsn, chdb_dsn, home.root / "baseline_dead_letters.jsonl")

    written = base.changes
    start = measured.window_start
    print()
    if window.generator_seconds is not None:
        print(
            f"Live generator: {window.mutations:,} mutations in {window.generator_seconds:.1f} s = "
            f"{window.mutations / window.generator_seconds:,.0f} mutations/s (asked for {args.rate:,.0f})"
        )
    elif window.replayer is not None:
        print(
            f"Replay: {window.replayer.sections_written:,} sections, {window.replayer.mutations_written:,} mutations; "
            f"a section was written at most {window.replayer.max_late * 1000:.0f} ms after it was due"
        )
    print(
        f"Written: {window.mutations:,} mutations = {written:,} changes ({written / args.seconds:,.0f} changes/s over "
        f"{args.seconds:.0f} s); staged by the pipeline: {measured.staged_changes:,} changes in "
        f"{measured.ranges} ranges; "
        f"{measured.no_write_time:,} changes without a write time left out of the lags"
    )
    print()
    print(destination_table(measured, runs))
    print()
    pg_lags = [
        np.concatenate(measured.destinations[n].at_loaded_at or [np.array([])]) for n in ("postgres", "timescaledb")
    ]
    if all(len(lags) for lags in pg_lags):
        shown = ", ".join(
            f"{name} p50 {np.percentile(lags, 50):.1f} s, p99 {np.percentile(lags, 99):.1f} s"
            for name, lags in zip(("postgres", "timescaledb"), pg_lags)
        )
        print(
            "PostgreSQL and TimescaleDB lags are to the commit of the load "
            "(pg_xact_commit_timestamp of its ledger row); "
            f"to the ledger's loaded_at (now() at the load transaction's start) they would read: {shown}"
        )
        print()
    print("Runs (Dagster run records and event logs):")
    print()
    print(runs_table(runs, window.ended))
    print()
    print(f"CPU over the window and drain ({sampler.seconds:.0f} s), sampled from /proc:")
    print()
    print(cpu_table(sampler))
    print()
    print(f"Baseline, same run, same {base.changes:,} changes ({base.mutations:,} mutations):")
    print()
    print(baseline_table(base))
    print()

    behind = {
        n: written - measured.destinations[n].changes
        for n in DESTINATIONS
        if measured.destinations[n].changes < written
    }
    last_visible = max(measured.destinations[n].last_visible for n in DESTINATIONS)
    if behind:
        held = min(measured.destinations[n].changes for n in DESTINATIONS)
        sustained = held / (window.ended - start)
        print(
            "NOT CAUGHT UP: backlog at the end of the drain: "
            + ", ".join(f"{name} {count:,} changes" for name, count in behind.items())
            + "; the rate below is what the slowest destination loaded per second of the window and drain, "
            "and the lags are those of the changes loaded (the backlog's are longer)"
        )
    else:
        sustained = written / (last_visible - start)
    worst = max(
        DESTINATIONS,
        key=lambda n: (
            np.percentile(measured.destinations[n].array(), 99) if measured.destinations[n].changes else math.inf
        ),
    )
    lags = measured.destinations[worst].array()
    p50, p99 = np.percentile(lags, [50, 99]) if len(lags) else (math.nan, math.nan)
    verdict = "met" if sustained >= TARGET_RATE and p99 <= TARGET_P99_SECONDS else "not met"
    print(f"Target (>= {TARGET_RATE:,} changes/s sustained with p99 <= {TARGET_P99_SECONDS:.0f} s): {verdict}")
    lag = f"lag p50 {p50:.1f} s, p99 {p99:.1f} s"
    print(f"bench-e2e: {sustained:,.0f} changes/s sustained, {lag} (worst destination: {worst})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
