"""A real, single Cassandra node on this machine, started from Maven Central's jars: the pipeline's oracle.

Tests and people (``cdc-assets cassandra``, ``make cassandra``) start one with :func:`start_node`. The jars of
``org.apache.cassandra:cassandra-all`` and its runtime dependencies are fetched once per machine with Maven
(:func:`fetch_cassandra`) into ``$CDC_CASSANDRA_CACHE`` (default ``~/.cache/cdc_assets``); the node then runs
as ``java ... org.apache.cassandra.service.CassandraDaemon`` with a cassandra.yaml written here, every
directory under one root, loopback ports chosen free at start, and CDC on.

The daemon runs in a process group of its own; :meth:`CassandraNode.stop` ends it, and an ``atexit`` hook
does so too, so a crashed test never leaves a JVM behind.
"""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cdc_assets.commitlog.cdc_dir import list_cdc_segments

CASSANDRA_VERSION = "5.0.6"
CACHE_ENV = "CDC_CASSANDRA_CACHE"
DEFAULT_CACHE = Path("~/.cache/cdc_assets")
_ARTIFACT = "org.apache.cassandra:cassandra-all"
_FETCHED_MARKER = "fetched"
_HOST = "127.0.0.1"
# The JPMS options of apache/cassandra's conf/jvm17-server.options (cassandra-5.0), which Java 17 needs.
_JAVA17_OPTIONS = (
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports=java.sql/java.sql=ALL-UNNAMED",
    "--add-exports=java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports=jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
)
# What makes a single node start in seconds rather than half a minute: no gossip settling, no ring delay,
# one token given up front, no superuser set-up delay, a memtable overhead estimate of a few steps (2.5 s
# at its default), no pause announcing shutdown, and the client compiler only (a short-lived JVM).
_FAST_START_OPTIONS = (
    "-Dcassandra.skip_wait_for_gossip_to_settle=0",
    "-Dcassandra.ring_delay_ms=100",
    "-Dcassandra.initial_token=0",
    "-Dcassandra.load_ring_state=false",
    "-Dcassandra.superuser_setup_delay_ms=0",
    "-Dcassandra.memtable_row_overhead_computation_step=100",
    "-Dcassandra.shutdown_announce_in_ms=0",
    "-XX:+ExitOnOutOfMemoryError",
    "-XX:TieredStopAtLevel=1",
    "-XX:+UseSerialGC",
    "-Xss512k",
    "-Djava.net.preferIPv4Stack=true",
)
# The key of transparent data encryption, in a keystore made with keytool; its random password is kept
# beside it (mode 0600), since Cassandra's yaml names it too.
KEY_ALIAS = "cdc_test:1"
_PROBE_KEYSPACE = "cdc_assets_probe"
_PROBE_TABLE = "durability_probe"
_STOP_SECONDS = 20.0
_PR_SET_PDEATHSIG = 1
# What the log says when a port chosen free was taken before the JVM bound it (native/storage, then JMX).
_PORT_TAKEN = ("Address already in use", "Failed to bind port", "Port already in use")
_POLL_SECONDS = 0.02


class CassandraNodeError(RuntimeError):
    """A node that cannot be fetched, started or reached; the message says why (with the log's tail)."""


def _cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>cdc_assets</groupId>
  <artifactId>cassandra-node</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>{version}</version>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>3.6.1</version>
      </plugin>
    </plugins>
  </build>
</project>
"""


def fetch_cassandra(version: str = CASSANDRA_VERSION, *, progress: Callable[[str], None] | None = None) -> Path:
    """The directory of Cassandra ``version``'s jars (cassandra-all and its runtime dependencies), fetched once.

    Maven resolves them from Maven Central into ``$CDC_CASSANDRA_CACHE/cassandra-<version>/lib``. A marker
    written last says the fetch finished, so a killed fetch is done again; a lock lets concurrent test
    sessions share one fetch.
    """
    home = _cache_root() / f"cassandra-{version}"
    lib = home / "lib"
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (home / _FETCHED_MARKER).is_file():
            return lib
        if shutil.which("mvn") is None:
            raise CassandraNodeError(f"fetching {_ARTIFACT}:{version} needs Maven (mvn) on PATH: apt-get install maven")
        if progress is not None:
            progress(f"fetching {_ARTIFACT}:{version} and its dependencies from Maven Central into {lib} (once)")
        started = time.monotonic()
        shutil.rmtree(lib, ignore_errors=True)
        (home / "pom.xml").write_text(_POM.format(version=version), encoding="utf-8")
        command = [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(home / "pom.xml"),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={lib}",
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        jars = list(lib.glob("cassandra-all-*.jar")) if lib.is_dir() else []
        if done.returncode != 0 or not jars:
            output = (done.stdout + done.stderr).strip()[-4000:]
            raise CassandraNodeError(
                f"Maven could not fetch {_ARTIFACT}:{version} (exit status {done.returncode}):\n{output}"
            )
        (home / _FETCHED_MARKER).write_text(f"{time.monotonic() - started:.1f}s\n", encoding="ascii")
        if progress is not None:
            progress(f"fetched {len(list(lib.glob('*.jar')))} jars in {time.monotonic() - started:.0f}s")
    return lib


@dataclass(frozen=True)
class NodeSettings:
    """How a node writes its commit log. Everything else is fixed small and fast, for tests and demos."""

    #: ``CASSANDRA_4`` writes segments of version 7 (4.0's format), ``NONE`` version 8 (5.0's).
    storage_compatibility_mode: Literal["CASSANDRA_4", "NONE"] = "CASSANDRA_4"
    commitlog_compression: Literal["LZ4Compressor", "ZstdCompressor"] | None = None
    #: Transparent data encryption of the commit log, with a JCEKS keystore made by ``keytool``.
    encryption: bool = False
    heap: str = "512M"
    commitlog_sync_period_ms: int = 50
    commitlog_segment_size_mib: int = 2
    cdc_total_space_mib: int = 256

    @property
    def segment_version(self) -> int:
        """The version of the segments the node writes (the format notes' descriptor version)."""
        return 7 if self.storage_compatibility_mode == "CASSANDRA_4" else 8

    @property
    def label(self) -> str:
        """A short name of these settings, for directory names and test ids."""
        parts = [self.storage_compatibility_mode.lower()]
        if self.commitlog_compression:
            parts.append(self.commitlog_compression.removesuffix("Compressor").lower())
        if self.encryption:
            parts.append("encrypted")
        return "-".join(parts)


DEFAULT_SETTINGS = NodeSettings()


def _free_ports(count: int) -> list[int]:
    """Ports free on the loopback now: held open together so they differ, released just before the JVM binds."""
    probes = []
    try:
        for _ in range(count):
            probe = socket.socket()
            probe.bind((_HOST, 0))
            probes.append(probe)
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


@dataclass(frozen=True)
class _Ports:
    native: int
    storage: int
    jmx: int


def _yaml(root: Path, settings: NodeSettings, ports: _Ports, password: str | None) -> str:
    lines = [
        "cluster_name: cdc_assets_test",
        "num_tokens: 1",
        "allocate_tokens_for_local_replication_factor: 1",
        "partitioner: org.apache.cassandra.dht.Murmur3Partitioner",
        "auto_bootstrap: false",
        f"storage_compatibility_mode: {settings.storage_compatibility_mode}",
        "authenticator: AllowAllAuthenticator",
        "authorizer: AllowAllAuthorizer",
        "endpoint_snitch: SimpleSnitch",
        "seed_provider:",
        "  - class_name: org.apache.cassandra.locator.SimpleSeedProvider",
        "    parameters:",
        f'      - seeds: "{_HOST}:{ports.storage}"',
        f"listen_address: {_HOST}",
        f"rpc_address: {_HOST}",
        f"storage_port: {ports.storage}",
        "start_native_transport: true",
        f"native_transport_port: {ports.native}",
        "data_file_directories:",
        f"  - {root / 'data'}",
        f"commitlog_directory: {root / 'commitlog'}",
        f"cdc_raw_directory: {root / 'cdc_raw'}",
        f"hints_directory: {root / 'hints'}",
        f"saved_caches_directory: {root / 'saved_caches'}",
        "cdc_enabled: true",
        f"cdc_total_space: {settings.cdc_total_space_mib}MiB",
        "cdc_free_space_check_interval: 250ms",
        "commitlog_sync: periodic",
        f"commitlog_sync_period: {settings.commitlog_sync_period_ms}ms",
        f"commitlog_segment_size: {settings.commitlog_segment_size_mib}MiB",
        "concurrent_reads: 4",
        "concurrent_writes: 4",
        "concurrent_counter_writes: 4",
        "concurrent_materialized_view_writes: 2",
        "concurrent_compactors: 1",
        "memtable_flush_writers: 1",
        "memtable_heap_space: 64MiB",
        "memtable_offheap_space: 64MiB",
        "key_cache_size: 0MiB",
        "counter_cache_size: 0MiB",
        "native_transport_max_threads: 16",
        "hinted_handoff_enabled: false",
        "dynamic_snitch: false",
        "materialized_views_enabled: true",
        "sasi_indexes_enabled: true",
        "user_defined_functions_enabled: false",
    ]
    if settings.commitlog_compression:
        lines += ["commitlog_compression:", f"  - class_name: {settings.commitlog_compression}"]
    if settings.encryption:
        lines += [
            "transparent_data_encryption_options:",
            "  enabled: true",
            "  chunk_length_kb: 64",
            "  cipher: AES/CBC/PKCS5Padding",
            f'  key_alias: "{KEY_ALIAS}"',
            "  key_provider:",
            "    - class_name: org.apache.cassandra.security.JKSKeyProvider",
            "      parameters:",
            f"        - keystore: {root / 'conf' / 'keystore.jceks'}",
            f'          keystore_password: "{password}"',
            "          store_type: JCEKS",
            f'          key_password: "{password}"',
        ]
    return "\n".join(lines) + "\n"


_LOGBACK = """<configuration scan="false">
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>{log}</file>
    <encoder><pattern>%-5level [%thread] %date{{ISO8601}} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
"""


def _password_path(keystore: Path) -> Path:
    return keystore.with_name(keystore.name + ".password")


def keystore_password(keystore: Path) -> str:
    """The password of a keystore made by :func:`create_keystore` (store and key alike)."""
    return _password_path(keystore).read_text(encoding="ascii").strip()


def create_keystore(path: Path) -> str:
    """A JCEKS keystore holding one AES-128 key under :data:`KEY_ALIAS`, made with the JDK's keytool.

    Its password is random, written beside it readable by its owner alone, and returned.
    """
    if path.exists():
        return keystore_password(path)
    password = secrets.token_urlsafe(18)
    _password_path(path).touch(mode=0o600)
    _password_path(path).write_text(password + "\n", encoding="ascii")
    command = [
        _java_tool("keytool"),
        "-genseckey",
        "-keystore",
        str(path),
        "-storetype",
        "JCEKS",
        "-storepass:env",
        "CDC_KEYSTORE_PASSWORD",
        "-keypass:env",
        "CDC_KEYSTORE_PASSWORD",
        "-alias",
        KEY_ALIAS,
        "-keyalg",
        "AES",
        "-keysize",
        "128",
    ]
    environment = {**os.environ, "CDC_KEYSTORE_PASSWORD": password}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=environment)
    if done.returncode != 0:
        raise CassandraNodeError(f"keytool could not create {path}: {(done.stdout + done.stderr).strip()}")
    return password


def _java_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise CassandraNodeError(f"a Cassandra node needs Java 17 ({name} on PATH): apt-get install openjdk-17-jdk")
    return found


def java_version() -> int:
    """The major version of the ``java`` on PATH (Cassandra 5.0 runs on 11 and 17)."""
    done = subprocess.run([_java_tool("java"), "-version"], capture_output=True, text=True, check=False)
    found = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr)
    if found is None:
        raise CassandraNodeError(f"cannot tell the Java version from: {done.stderr.strip()}")
    # Java 8 and older call themselves 1.8 and so on.
    return int(found.group(2)) if found.group(1) == "1" and found.group(2) else int(found.group(1))


def check_prerequisites() -> None:
    """Fail with the reason when this machine cannot run a node: Java 17 and (for the first fetch) Maven."""
    version = java_version()
    if version != 17:
        raise CassandraNodeError(f"a Cassandra 5.0 node runs here on Java 17; java on PATH is version {version}")
    if (
        shutil.which("mvn") is None
        and not (_cache_root() / f"cassandra-{CASSANDRA_VERSION}" / _FETCHED_MARKER).is_file()
    ):
        raise CassandraNodeError("fetching Cassandra's jars needs Maven (mvn) on PATH: apt-get install maven")


@dataclass
class CassandraNode:
    """A running node: where clients connect, where its commit log and ``cdc_raw`` are, and how to stop it."""

    root: Path
    settings: NodeSettings
    host: str
    port: int
    storage_port: int
    jmx_port: int
    process: subprocess.Popen[bytes]
    _cluster: Any = field(default=None, repr=False)
    _probe_session: Any = field(default=None, repr=False)

    @property
    def cdc_raw(self) -> Path:
        return self.root / "cdc_raw"

    @property
    def commitlog(self) -> Path:
        return self.root / "commitlog"

    @property
    def log_path(self) -> Path:
        return self.root / "logs" / "system.log"

    @property
    def keystore(self) -> Path | None:
        """The JCEKS keystore of the commit log's encryption (its password: :func:`keystore_password`), if on."""
        return self.root / "conf" / "keystore.jceks" if self.settings.encryption else None

    @property
    def contact_point(self) -> str:
        return f"{self.host}:{self.port}"

    def session(self, keyspace: str | None = None) -> Any:
        """A cassandra-driver Session on this node; sessions share one cluster, shut down by :meth:`stop`."""
        if self._cluster is None:
            self._cluster = _cluster(self.host, self.port)
        return self._cluster.connect(keyspace)

    def _close_sessions(self) -> None:
        if self._cluster is not None:
            with suppress(Exception):
                self._cluster.shutdown()
        self._cluster = None
        self._probe_session = None

    def wait_for_cdc(self, timeout: float = 30.0) -> None:
        """Return once everything written to the node before this call is durable in ``cdc_raw``.

        A periodic sync makes a segment's data durable up to the offset its ``_cdc.idx`` names. A sync that
        *starts* after this call covers every earlier write; one is known to have started once the durable
        frontier moved after an earlier move was seen. Three moves are awaited, not two, as one sync that
        finishes a segment may move two idx files. Each move is provoked by a row written to a CDC table of
        the node's own keyspace (``cdc_assets_probe``), so that there is something to sync.
        """
        deadline = time.monotonic() + timeout
        for _ in range(3):
            before = self._frontier()
            self._write_probe()
            while self._frontier() == before:
                if time.monotonic() > deadline:
                    raise CassandraNodeError(
                        f"cdc_raw ({self.cdc_raw}) did not advance past {before} within {timeout}s{self._log_tail()}"
                    )
                time.sleep(_POLL_SECONDS)

    def _frontier(self) -> tuple[int, int] | None:
        segments = [segment for segment in list_cdc_segments(self.cdc_raw) if segment.index is not None]
        return max(((s.segment_id, s.durable_offset) for s in segments), default=None)

    def _write_probe(self) -> None:
        if self._probe_session is None:
            session = self.session()
            session.execute(
                f'CREATE KEYSPACE IF NOT EXISTS "{_PROBE_KEYSPACE}" '
                "WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}"
            )
            session.execute(
                f'CREATE TABLE IF NOT EXISTS "{_PROBE_KEYSPACE}"."{_PROBE_TABLE}" '
                "(id int PRIMARY KEY, probe uuid) WITH cdc = true"
            )
            self._probe_session = session
        self._probe_session.execute(
            f'INSERT INTO "{_PROBE_KEYSPACE}"."{_PROBE_TABLE}" (id, probe) VALUES (0, %s)', (uuid.uuid4(),)
        )

    def _log_tail(self, lines: int = 40) -> str:
        """The end of the node's log, and of the JVM's own output (where a JVM that never started says why)."""
        shown = []
        for path in (self.log_path, self.root / "logs" / "stdout.log"):
            with suppress(OSError):
                tail = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
                if tail:
                    shown.append(f"\nlast lines of {path}:\n" + "\n".join(tail))
        return "".join(shown) or f"\n(nothing in {self.root / 'logs'})"

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Shut the driver's cluster down and end the JVM's process group (TERM, then KILL); idempotent."""
        self._close_sessions()
        _end_group(self.process)
        with suppress(ValueError):
            atexit.unregister(self.stop)


def stop_nodes(nodes: Iterable[CassandraNode]) -> None:
    """Stop several nodes at once: every JVM is asked to shut down before any is waited for."""
    nodes = list(nodes)
    for node in nodes:
        if node.running:
            with suppress(ProcessLookupError):
                os.killpg(node.process.pid, signal.SIGTERM)
    for node in nodes:
        node.stop()


def _end_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    else:
        # The JVM is gone; anything it left in its group goes too.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


def _cluster(host: str, port: int) -> Any:
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import WhiteListRoundRobinPolicy

    profile = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy([host]), request_timeout=30)
    return Cluster(
        contact_points=[host],
        port=port,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        protocol_version=5,
        connect_timeout=5,
    )


def _java_command(lib: Path, root: Path, settings: NodeSettings, ports: _Ports) -> list[str]:
    return [
        _java_tool("java"),
        f"-Xms{settings.heap}",
        f"-Xmx{settings.heap}",
        *_JAVA17_OPTIONS,
        *_FAST_START_OPTIONS,
        f"-Dcassandra.config=file://{root / 'conf' / 'cassandra.yaml'}",
        f"-Dlogback.configurationFile=file://{root / 'conf' / 'logback.xml'}",
        f"-Dcassandra.logdir={root / 'logs'}",
        f"-Dcassandra.storagedir={root}",
        f"-Dcassandra.jmx.local.port={ports.jmx}",
        "-Dcassandra-foreground=yes",
        "-cp",
        f"{lib}/*",
        "org.apache.cassandra.service.CassandraDaemon",
    ]


def _prepare(root: Path, settings: NodeSettings, ports: _Ports) -> None:
    for name in ("conf", "logs", "data", "commitlog", "cdc_raw", "hints", "saved_caches"):
        (root / name).mkdir(parents=True, exist_ok=True)
    password = create_keystore(root / "conf" / "keystore.jceks") if settings.encryption else None
    yaml_path = root / "conf" / "cassandra.yaml"
    yaml_path.touch(mode=0o600)
    yaml_path.write_text(_yaml(root, settings, ports, password), encoding="utf-8")
    (root / "conf" / "logback.xml").write_text(_LOGBACK.format(log=root / "logs" / "system.log"), encoding="utf-8")


def _wait_until_serving(node: CassandraNode, timeout: float) -> None:
    """Poll the native port with the driver until a query answers, or fail with the log's tail."""
    from cassandra.cluster import NoHostAvailable

    deadline = time.monotonic() + timeout
    while True:
        if not node.running:
            raise CassandraNodeError(
                f"the Cassandra node under {node.root} exited with status {node.process.returncode} "
                f"before serving CQL{node._log_tail()}"
            )
        if _port_open(node.host, node.port):
            try:
                node.session().execute("SELECT release_version FROM system.local")
                return
            except NoHostAvailable:
                # A cluster that never connected is not reused: the next attempt starts afresh.
                node._close_sessions()
        if time.monotonic() > deadline:
            raise CassandraNodeError(
                f"the Cassandra node under {node.root} did not answer CQL on {node.contact_point} "
                f"within {timeout:.0f}s{node._log_tail()}"
            )
        time.sleep(0.25)


def _die_with_parent() -> None:
    """In the child before exec: TERM it when its parent dies, even killed, which atexit cannot cover."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def start_node(
    root: Path,
    settings: NodeSettings = DEFAULT_SETTINGS,
    *,
    version: str = CASSANDRA_VERSION,
    timeout: float = 180.0,
    progress: Callable[[str], None] | None = None,
) -> CassandraNode:
    """Start a node whose state lives under ``root`` (kept between starts) and wait until it serves CQL.

    Ports are chosen free at each start; when one was taken in between (another node starting at the same
    time), the start is tried again on new ports.
    """
    lib = fetch_cassandra(version, progress=progress)
    root = Path(root).resolve()
    for attempt in range(3):
        ports = _Ports(*_free_ports(3))
        _prepare(root, settings, ports)
        with open(root / "logs" / "stdout.log", "ab") as output:
            process = subprocess.Popen(
                _java_command(lib, root, settings, ports),
                cwd=root,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        node = CassandraNode(root, settings, _HOST, ports.native, ports.storage, ports.jmx, process)
        atexit.register(node.stop)
        try:
            _wait_until_serving(node, timeout)
            return node
        except CassandraNodeError as error:
            node.stop()
            if attempt == 2 or not any(sign in str(error) for sign in _PORT_TAKEN):
                raise
    raise AssertionError("unreachable")


@contextmanager
def running_node(
    root: Path | None = None,
    settings: NodeSettings = DEFAULT_SETTINGS,
    *,
    version: str = CASSANDRA_VERSION,
) -> Iterator[CassandraNode]:
    """A node for the duration of a ``with`` block, under ``root`` or a temporary directory removed after."""
    with tempfile.TemporaryDirectory(prefix="cdc-cassandra-") as scratch:
        node = start_node(Path(root or scratch), settings, version=version)
        try:
            yield node
        finally:
            node.stop()


def serve(home: str | os.PathLike[str], settings: NodeSettings = DEFAULT_SETTINGS) -> int:
    """Run a node for a person until Ctrl-C or SIGTERM (``cdc-assets cassandra``), its state under ``home``.

    Each settings label gets a directory of its own under ``home``: a node's data cannot go back from
    ``NONE`` to ``CASSANDRA_4``, and segments of one compression must not mix with another's.
    """

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    root = Path(home) / settings.label
    say(f"starting a Cassandra {CASSANDRA_VERSION} node under {root} ...")
    started = time.monotonic()
    node = start_node(root, settings, progress=say)
    try:
        say(f"started in {time.monotonic() - started:.1f}s; log: {node.log_path}")
        print(f"contact point: {node.contact_point}", flush=True)
        print(f"cdc_raw: {node.cdc_raw}", flush=True)
        if node.keystore is not None:
            print(f"keystore: {node.keystore} (alias {KEY_ALIAS}; password in {_password_path(node.keystore)})")
        say("Ctrl-C stops it")
        status = node.process.wait()
        say(f"the node exited with status {status}; see {node.log_path}")
        return 1
    except KeyboardInterrupt:
        say("stopping the node ...")
        return 0
    finally:
        node.stop()
