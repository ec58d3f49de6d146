"""``cdc-assets run`` (``make run``): the whole pipeline on one machine, started and stopped with one command.

Everything lives under one home directory (``var`` by default), so a second run resumes where the first
stopped:

- ``postgres/``: a private PostgreSQL server's data (databases ``cdc`` and ``cdc_timescale``), served on a
  loopback port chosen at start; ``postgres-run/`` holds its socket, log and last port;
- ``chdb/``: the in-process ClickHouse engine's data; ``dagster/``: the Dagster instance (SQLite);
- ``cdc_raw/``: the segments the workload generator writes, as a Cassandra node with CDC on does;
- ``staging/`` and ``dead_letters.jsonl``, where the pipeline configuration puts them.

Children run in process groups of their own, so a Ctrl-C reaches this supervisor alone and it stops them
in order: the generator, then ``dagster dev``, then PostgreSQL.
"""

from __future__ import annotations

import fcntl
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import dagster as dg
import psycopg
import yaml
from psycopg import sql

from cdc_assets.commitlog.cdc_dir import COMPLETED, list_cdc_segments
from cdc_assets.config import CONFIG_ENV, DEFAULT_FILE
from cdc_assets.defs.keys import CHDB_TAG, NODE_TAG
from cdc_assets.defs.workers import proc_stat

# Where the repository's cdc_assets.yaml keeps its state (its paths are relative to the repository root).
REPOSITORY_HOME = "var"
POSTGRES_DATABASE = "cdc"
TIMESCALE_DATABASE = "cdc_timescale"
# A year: the generator runs until it is stopped.
GENERATOR_SECONDS = 31_536_000
SERVER_USER = "postgres"

_REPOSITORY = Path(__file__).resolve().parent.parent
_ENSURE_POSTGRES = _REPOSITORY / "scripts" / "ensure-postgres.sh"
# The code location as workspace.yaml names it (`cdc_assets`), so the UI agrees with pyproject.toml and dg.
WORKSPACE = _REPOSITORY / "workspace.yaml"
_SHOP_SCHEMA = Path(__file__).resolve().parent / "demo" / "shop.cql"
_POLL_SECONDS = 0.5


class DevStackError(RuntimeError):
    """A part of the dev stack could not be started; the message says which and why."""


class ChildDied(DevStackError):
    """A child process the dev stack started exited while it should have kept running."""


class _Stop(BaseException):
    """SIGINT or SIGTERM arrived: unwind and stop everything (a BaseException so no ``except`` swallows it)."""


@dataclass(frozen=True)
class DevHome:
    """Where one dev stack keeps everything: the paths below ``root``."""

    root: Path

    @classmethod
    def at(cls, path: str | os.PathLike[str]) -> DevHome:
        return cls(Path(path).resolve())

    @property
    def postgres_data(self) -> Path:
        return self.root / "postgres"

    @property
    def postgres_run(self) -> Path:
        return self.root / "postgres-run"

    @property
    def chdb(self) -> Path:
        return self.root / "chdb"

    @property
    def dagster(self) -> Path:
        return self.root / "dagster"

    @property
    def cdc_raw(self) -> Path:
        return self.root / "cdc_raw"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def dead_letters(self) -> Path:
        return self.root / "dead_letters.jsonl"

    @property
    def config(self) -> Path:
        return self.root / DEFAULT_FILE

    @property
    def generator_log(self) -> Path:
        return self.root / "generator.log"

    @property
    def lock(self) -> Path:
        return self.root / "run.lock"


# -- PostgreSQL ---------------------------------------------------------------------------------------


def server_binary(name: str) -> str | None:
    """A PostgreSQL server program, found as the tests find it: on PATH, else the newest Debian install."""
    return shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)


def _require_server_binary(name: str) -> str:
    found = server_binary(name)
    if found is None and _ENSURE_POSTGRES.is_file():
        # Installs Debian's postgresql package when run as root on a machine that has none.
        subprocess.run([str(_ENSURE_POSTGRES)], check=False)
        found = server_binary(name)
    if found is None:
        raise DevStackError(f"no PostgreSQL {name} on PATH or under /usr/lib/postgresql/*/bin: install PostgreSQL")
    return found


def _as_server_user(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the ``postgres`` account then."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", SERVER_USER, "--", *command]


def _give_to_server_user(directory: Path) -> None:
    if os.geteuid() == 0:
        os.chown(directory, pwd.getpwnam(SERVER_USER).pw_uid, -1)


def free_port(preferred: int | None = None) -> int:
    """``preferred`` when nothing listens on it on 127.0.0.1, else a port the kernel picks."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as probe:
            # As the servers bind: a port a stopped server left in TIME_WAIT is free to them.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise DevStackError("no free port on 127.0.0.1")


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie does not (a container's init may never reap it)."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"


class PostgresServer:
    """A private PostgreSQL server on 127.0.0.1: ``initdb`` on first use, ``pg_ctl`` start and stop on the same data.

    ``data`` keeps the cluster between runs; ``run_dir`` holds the unix socket, the server log and the port
    of the last start (reused when it is free, so DSNs stay the same from run to run).
    """

    def __init__(self, data: Path, run_dir: Path) -> None:
        self.data = data
        self.run_dir = run_dir
        self.port: int | None = None

    @property
    def log_file(self) -> Path:
        return self.run_dir / "postgres.log"

    @property
    def _port_file(self) -> Path:
        return self.run_dir / "port"

    def dsn(self, dbname: str = "postgres") -> str:
        if self.port is None:
            raise DevStackError("PostgreSQL is not started")
        return f"host=127.0.0.1 port={self.port} user={SERVER_USER} dbname={dbname}"

    def start(self) -> None:
        """Initialize the data directory if it is new, then start the server and wait until it accepts connections."""
        for directory in (self.data, self.run_dir):
            if not directory.exists():
                directory.mkdir(parents=True, mode=0o700)
                _give_to_server_user(directory)
        if not (self.data / "PG_VERSION").exists():
            initdb = _require_server_binary("initdb")
            self._pg([initdb, "-D", str(self.data), "-U", SERVER_USER, "-A", "trust", "-E", "UTF8"], "initdb")
        if self.running():
            # An earlier run that was killed left its server behind: restart it on a port chosen now.
            self.stop()
        self.port = free_port(self._previous_port())
        self._port_file.write_text(f"{self.port}\n")
        options = f"-p {self.port} -k {self.run_dir} -c listen_addresses=127.0.0.1"
        pg_ctl = _require_server_binary("pg_ctl")
        self._pg(
            [pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.log_file), "-w", "-t", "120", "start"],
            "pg_ctl start",
        )

    def stop(self) -> None:
        """Stop the server (fast: open sessions are rolled back) and wait until it is down; no-op when it is not up."""
        if self.running():
            pg_ctl = _require_server_binary("pg_ctl")
            self._pg([pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"], "pg_ctl stop")

    def pid(self) -> int | None:
        """The postmaster's process id while the server runs (its ``postmaster.pid``)."""
        try:
            first_line = (self.data / "postmaster.pid").read_text().split("\n", 1)[0]
        except OSError:
            return None
        return int(first_line) if first_line.isdigit() else None

    def running(self) -> bool:
        pid = self.pid()
        return pid is not None and _alive(pid)

    def create_databases(self, *names: str) -> None:
        """Create each database in ``names`` that does not exist yet."""
        with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=10) as admin:
            existing = {row[0] for row in admin.execute("SELECT datname FROM pg_database")}
            for name in names:
                if name not in existing:
                    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def _previous_port(self) -> int | None:
        try:
            text = self._port_file.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def _pg(self, command: list[str], what: str) -> None:
        done = subprocess.run(_as_server_user(command), capture_output=True, text=True, start_new_session=True)
        if done.returncode != 0:
            log = _tail(self.log_file)
            raise DevStackError(
                f"{what} failed for {self.data} (exit code {done.returncode}):\n{done.stderr.strip()}"
                + (f"\nlast lines of {self.log_file}:\n{log}" if log else "")
            )


# -- configuration files --------------------------------------------------------------------------------


def dagster_instance_settings() -> dict[str, Any]:
    """The Dagster instance of the dev stack: SQLite storage (the default under ``DAGSTER_HOME``), queued runs.

    As the compose stack's (``docker/dagster.yaml``): one run per node at a time (a node's ranges load in
    order), one chdb run at a time (chdb hosts one engine per process), and one write at a time per
    destination (the pools ``cdc_postgres``, ``cdc_clickhouse``, ``cdc_timescaledb``).
    """
    return {
        "telemetry": {"enabled": False},
        "concurrency": {
            "runs": {
                "max_concurrent_runs": 4,
                "tag_concurrency_limits": [
                    {"key": NODE_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1},
                    {"key": CHDB_TAG, "limit": 1},
                ],
            },
            "pools": {"default_limit": 1},
        },
        # The default run launcher cannot check a worker's health, but monitoring still fails runs stuck
        # starting or cancelling (a worker killed with the stack), which would otherwise hold their tag's slot.
        "run_monitoring": {"enabled": True, "poll_interval_seconds": 5},
    }


def write_dagster_yaml(dagster_home: Path) -> Path:
    """Write ``dagster.yaml`` (:func:`dagster_instance_settings`) into ``dagster_home``; returns its path."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    path = dagster_home / "dagster.yaml"
    path.write_text(
        "# Written by `cdc-assets run` at every start (cdc_assets/devstack.py): edit that, not this.\n"
        + yaml.safe_dump(dagster_instance_settings(), sort_keys=False),
        encoding="utf-8",
    )
    return path


def fail_interrupted_runs(dagster_home: Path) -> list[str]:
    """Mark the runs an earlier stack left in progress as failed; returns their ids.

    Nothing else uses this instance, so such a run's worker died with its stack. The default run launcher
    cannot check a worker's health, so the run would stay STARTED and hold its node's single run slot.
    """
    if not (dagster_home / "dagster.yaml").is_file():
        return []
    statuses = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs(filters=dg.RunsFilter(statuses=statuses))
        for interrupted in runs:
            instance.report_run_failed(interrupted, "cdc-assets run stopped while this run was in progress")
        return [interrupted.run_id for interrupted in runs]


def home_config(document: Mapping[str, Any], source_dir: Path, home: DevHome) -> dict[str, Any]:
    """A pipeline configuration document with its local state moved under ``home``.

    The first node reads ``home``'s cdc_raw (where the generator writes); further nodes get a cdc_raw each
    beside it. The CQL file stays where it is, as an absolute path, since the copy lives elsewhere.
    """
    moved = dict(document)
    nodes = [dict(node) for node in document.get("nodes") or []]
    for index, node in enumerate(nodes):
        node["cdc_raw"] = str(home.cdc_raw if index == 0 else home.root / f"cdc_raw_{node.get('name', index)}")
    moved["nodes"] = nodes
    schema = dict(document.get("schema") or {})
    if schema.get("cql_file"):
        schema["cql_file"] = str((source_dir / schema["cql_file"]).resolve())
        moved["schema"] = schema
    moved["staging"] = {**(document.get("staging") or {}), "path": str(home.staging)}
    moved["dead_letters"] = str(home.dead_letters)
    return moved


def pipeline_config(home: DevHome, environ: Mapping[str, str], repository_config: Path) -> Path:
    """The configuration file the pipeline will read: the user's ``CDC_ASSETS_CONFIG``, else the repository's.

    The repository's file keeps its state in ``var``; for any other home a copy pointing into that home is
    written there (and rewritten at every start, so edits belong in the repository's file).
    """
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV]).resolve()
    if not repository_config.is_file():
        raise DevStackError(f"no {repository_config}: run from the repository root or set {CONFIG_ENV}")
    source = repository_config.resolve()
    if home.root == source.parent / REPOSITORY_HOME:
        return source
    document = yaml.safe_load(source.read_text(encoding="utf-8"))
    home.root.mkdir(parents=True, exist_ok=True)
    home.config.write_text(
        f"# Written by `cdc-assets run --home {home.root}` from {source} at every start: edit that one.\n"
        + yaml.safe_dump(home_config(document, source.parent, home), sort_keys=False),
        encoding="utf-8",
    )
    return home.config


def child_environment(
    base: Mapping[str, str], home: DevHome, *, postgres_dsn: str, timescale_dsn: str, config: Path
) -> dict[str, str]:
    """``base`` plus what the pipeline's processes need to find the dev stack's databases and files."""
    return {
        **base,
        "CDC_POSTGRES_DSN": postgres_dsn,
        "CDC_TIMESCALE_DSN": timescale_dsn,
        "CDC_CLICKHOUSE_DSN": f"chdb://{home.chdb}",
        CONFIG_ENV: str(config),
        "DAGSTER_HOME": str(home.dagster),
    }


# -- the generated workload ---------------------------------------------------------------------------


def generator_command(home: DevHome, rate: float, seed: int) -> list[str]:
    """The workload generator writing ``shop.orders`` and ``shop.customers`` into ``home``'s cdc_raw until stopped."""
    return [
        sys.executable,
        "-m",
        "cdc_assets.cli",
        "generate",
        "--cdc-raw",
        str(home.cdc_raw),
        "--schema",
        str(_SHOP_SCHEMA),
        "--seconds",
        str(GENERATOR_SECONDS),
        "--rate",
        str(rate),
        "--seed",
        str(seed),
        "--segment-size",
        "8",
        "--sync-period-ms",
        "1000",
    ]


def seal_abandoned_segments(cdc_raw: Path) -> list[Path]:
    """Finish the segments a stopped generator left open, as a drained node would; returns the segments touched.

    The reader enters a newer segment only once every older one is COMPLETED, and never passes one without an
    idx, so a segment the generator was writing when it was stopped would block every later run's segments.
    One with an idx is marked COMPLETED at its durable offset (entries after it were never synced); one
    without an idx never held durable data and is deleted, as Cassandra deletes it when it replays the log.
    """
    if not cdc_raw.is_dir():
        return []
    touched = []
    for segment in list_cdc_segments(cdc_raw):
        if segment.index is None:
            segment.path.unlink(missing_ok=True)
        elif not segment.index.completed:
            staged = segment.index_path.with_name(segment.index_path.name + ".tmp")
            staged.write_text(f"{segment.index.offset}\n{COMPLETED}", encoding="ascii")
            os.replace(staged, segment.index_path)
        else:
            continue
        touched.append(segment.path)
    return touched


# -- child processes ------------------------------------------------------------------------------------


def _group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (zombies left out)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # After the command name, in parentheses: state, ppid, pgrp.
        state, _, pgrp = stat[stat.rindex(")") + 2 :].split(" ", 3)[:3]
        if int(pgrp) == pgid and state != "Z":
            members.append(int(entry.name))
    return members


@dataclass
class Child:
    """A child process leading a process group of its own, so that it and everything it starts stop together."""

    name: str
    process: subprocess.Popen[bytes]

    @classmethod
    def start(cls, name: str, command: list[str], env: Mapping[str, str], output: IO[bytes] | None = None) -> Child:
        process = subprocess.Popen(command, env=dict(env), stdout=output, stderr=output, start_new_session=True)
        return cls(name, process)

    def exit_code(self) -> int | None:
        return self.process.poll()

    def stop(self, first_signal: signal.Signals, grace_seconds: float) -> None:
        """Send ``first_signal`` to the group, then SIGTERM and SIGKILL to whatever is left after each wait."""
        steps = [(first_signal, grace_seconds), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)]
        for sent, wait in steps[1:] if first_signal == signal.SIGTERM else steps:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, sent)
            if self._wait_gone(wait):
                return
        print(f"cdc_assets: {self.name} left processes {_group_members(self.process.pid)} running", file=sys.stderr)

    def _wait_gone(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            if self.process.poll() is not None and not _group_members(self.process.pid):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def answers(url: str) -> bool:
    """Whether ``url`` answers 200 within two seconds."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _lock_home(home: DevHome, stack: ExitStack) -> None:
    """Hold ``home``'s lock while this stack runs: a second stack on the same home would stop this one's server.

    The kernel drops the lock when this process dies however it dies; children do not inherit it.
    """
    lock = stack.enter_context(home.lock.open("a+"))
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        raise DevStackError(f"another cdc-assets run (pid {lock.read().strip() or '?'}) uses {home.root}") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()


def _raise_stop(signum: int, _frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it (as ``make run`` users type it)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# -- the command --------------------------------------------------------------------------------------------


def run(home_path: str, port: int, rate: float) -> int:
    """Start the dev stack, supervise it until SIGINT/SIGTERM (exit 0) or until a part dies (exit 1)."""
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ExitStack() as stack:
            try:
                _start_and_supervise(DevHome.at(home_path), port, rate, stack)
            finally:
                # Stopping is bounded by the children's timeouts: a second Ctrl-C must not cut it short.
                for sig in previous:
                    signal.signal(sig, signal.SIG_IGN)
    except _Stop:
        return 0
    except DevStackError as error:
        print(f"cdc_assets: {error}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _start_and_supervise(home: DevHome, port: int, rate: float, stack: ExitStack) -> None:
    if free_port(port) != port:
        raise DevStackError(f"port {port} on 127.0.0.1 is taken: choose another with --port (make run PORT=...)")
    dagster = Path(sys.executable).parent / "dagster"
    if not dagster.is_file():
        raise DevStackError(f"no {dagster}: install the project (make install)")
    home.root.mkdir(parents=True, exist_ok=True)
    _lock_home(home, stack)
    config = pipeline_config(home, os.environ, Path.cwd() / DEFAULT_FILE)

    postgres = PostgresServer(home.postgres_data, home.postgres_run)
    stack.callback(postgres.stop)
    print(f"cdc_assets: starting PostgreSQL ({home.postgres_data})", flush=True)
    postgres.start()
    postgres.create_databases(POSTGRES_DATABASE, TIMESCALE_DATABASE)

    home.chdb.mkdir(parents=True, exist_ok=True)
    write_dagster_yaml(home.dagster)
    for run_id in fail_interrupted_runs(home.dagster):
        print(f"cdc_assets: marked run {run_id} failed: it was in progress when an earlier stack stopped", flush=True)
    env = child_environment(
        os.environ,
        home,
        postgres_dsn=postgres.dsn(POSTGRES_DATABASE),
        timescale_dsn=postgres.dsn(TIMESCALE_DATABASE),
        config=config,
    )

    print(f"cdc_assets: starting dagster dev on 127.0.0.1:{port} (DAGSTER_HOME {home.dagster})", flush=True)
    webserver = Child.start(
        "dagster dev", [str(dagster), "dev", "-w", str(WORKSPACE), "-h", "127.0.0.1", "-p", str(port)], env
    )
    stack.callback(webserver.stop, signal.SIGINT, 30.0)

    # Segments an earlier run's generator was writing when it died would hold back this run's.
    seal_abandoned_segments(home.cdc_raw)
    home.cdc_raw.mkdir(parents=True, exist_ok=True)
    with open(home.generator_log, "ab") as generator_log:
        command = generator_command(home, rate, int(time.time()))
        generator = Child.start("workload generator", command, env, generator_log)
    stack.callback(seal_abandoned_segments, home.cdc_raw)
    stack.callback(generator.stop, signal.SIGTERM, 10.0)

    stack.callback(print, "cdc_assets: stopping the generator, dagster dev and PostgreSQL", flush=True)
    _supervise(
        [generator, webserver],
        postgres,
        ready=lambda: answers(f"http://127.0.0.1:{port}/server_info"),
        banner=(
            f"cdc_assets: open http://127.0.0.1:{port} (PostgreSQL on 127.0.0.1:{postgres.port}; "
            f"cdc_raw {_shown(home.cdc_raw)}; Ctrl-C stops everything)"
        ),
        logs={generator.name: home.generator_log},
    )


def _supervise(
    children: list[Child], postgres: PostgresServer, ready: Callable[[], bool], banner: str, logs: Mapping[str, Path]
) -> None:
    """Watch the children and the server until a signal arrives; print ``banner`` once ``ready`` holds."""
    announced = False
    while True:
        for child in children:
            code = child.exit_code()
            if code is not None:
                log = _tail(logs[child.name]) if child.name in logs else ""
                raise ChildDied(
                    f"{child.name} exited unexpectedly (exit code {code}); stopped everything else"
                    + (f"\nlast lines of {logs[child.name]}:\n{log}" if log else "")
                )
        if not postgres.running():
            raise ChildDied(
                f"PostgreSQL stopped unexpectedly; stopped everything else\nlast lines of {postgres.log_file}:\n"
                + _tail(postgres.log_file)
            )
        if not announced and ready():
            print(banner, flush=True)
            announced = True
        time.sleep(_POLL_SECONDS)
