"""Read benchmark: each destination's current-state view next to a plain table of the same rows.

Draws ``--changes`` changes of ``shop.orders`` (the generator's ``realistic_table()``, the table of
``cdc_assets/demo/shop.cql``) with the workload generator's default mix (inserts, partial updates,
cell/row/range/partition deletions, collection element changes, small batches, 10 % with TTL), writes them
into commit-log segments and reads them back with the reader, as the pipeline does. Then, per destination:

- *load*: the changes in ``--loads`` consecutive loads (log order) through the destination's own
  ``ensure_table`` and ``load``; the load throughput is printed (changes/s, all loads together);
- *plain*: a table holding the view's rows, made in the same run: ``CREATE TABLE … AS SELECT * FROM view``
  with an index on the partition key (PostgreSQL, TimescaleDB; then ``ANALYZE``), a MergeTree ordered by the
  partition key (ClickHouse);
- *queries*, on the view and on the plain table, median of ``--repeat`` runs: ``count(*)``; one partition
  by its key (``SELECT *`` fetched whole, a different random key each run); a full scan as one aggregate
  that computes every column of every row, so transfer to Python does not dominate (PostgreSQL/TimescaleDB:
  ``count(column)`` of every column; ClickHouse: ``sum(cityHash64(every column))``, which it cannot answer
  from null maps or part metadata).
- *vacuumed* (PostgreSQL, TimescaleDB): the three queries again after ``VACUUM ANALYZE`` of the database,
  the storage and the plain table alike: what autovacuum does by itself within a minute or so of a load.
  Right after a load, PostgreSQL's pages are not yet marked all-visible, so no index-only scan can answer.

Only the destinations' public API is used (``ensure_table``, ``load``, ``sql(table).view``, ``database``),
so the benchmark measures whatever storage they have.

Run: ``make bench-read`` or ``.venv/bin/python benchmarks/bench_read.py [--changes N] [--loads N]
[--repeat N] [--destinations postgres,timescale,clickhouse]``. PostgreSQL comes from
``CDC_BENCH_POSTGRES_DSN``, else 127.0.0.1:5432 when it answers, else a private server started in a
temporary directory (``cdc_assets.devstack.PostgresServer``); every schema the run creates starts with
``cdc_bench_<pid>`` and is dropped at the end. ClickHouse is the in-process chdb engine in a temporary
directory.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_load import add_destinations_argument, chosen_destinations

from cdc_assets import devstack
from cdc_assets.cassandra_schema.tables import SchemaRegistry, TableSchema
from cdc_assets.commitlog.generator.workload import Workload, generate, realistic_table
from cdc_assets.commitlog.reader import CommitLogReader
from cdc_assets.destinations.clickhouse.types import quote
from cdc_assets.destinations.postgres.layout import ident

DEFAULT_POSTGRES_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
SEGMENT_SIZE = 32 << 20
# Partitions the workload spreads over, per change: a current state of several hundred thousand rows at 1M.
PARTITIONS_PER_CHANGE = 0.25
QUERIES = ("count(*)", "one partition by key", "full scan")


# --- the changes --------------------------------------------------------------------------------------


def workload_batch(table: TableSchema, changes: int, seed: int) -> tuple[pa.RecordBatch, dict[str, int]]:
    """``changes`` changes of ``table`` in log order, generated, logged and read back; and the operations drawn.

    Every mutation carries at least one change, so ``changes`` mutations are drawn and the batch is cut to
    ``changes`` rows.
    """
    workload = Workload(
        seed=seed,
        mutations=changes,
        partitions=max(1, int(changes * PARTITIONS_PER_CHANGE)),
        segment_size=SEGMENT_SIZE,
        keep_changes=False,
    )
    with tempfile.TemporaryDirectory(prefix="bench-read-") as directory:
        log = generate([table], workload, [directory])
        reader = CommitLogReader(SchemaRegistry([table]), track_schema=False)
        result = reader.read_segments(sorted(Path(directory).glob("*.log")))
    batch = result.batches[table.qualified_name]
    if batch.num_rows < changes:
        raise ValueError(f"{changes:,} mutations gave only {batch.num_rows:,} changes")
    return batch.slice(0, changes), log.operations


# --- the destinations ---------------------------------------------------------------------------------


@dataclass
class Target:
    """One destination under test: how to load it, where its view is, and how to query and make tables."""

    name: str
    destination: Any
    view: Callable[[TableSchema], str]
    plain: Callable[[str, TableSchema], str]
    fetch: Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]
    keys: Callable[[str, TableSchema, int], list[tuple[Any, ...]]]
    scan_sql: Callable[[str, TableSchema], str]
    lookup_sql: Callable[[str, TableSchema], str]
    # What the engine does by itself soon after a load (PostgreSQL: autovacuum), done now; None: nothing.
    settle: Callable[[], None] | None = None


def postgres_target(name: str, destination: Any, dsn: str, plain_schema: str) -> Target:
    """A PostgreSQL or TimescaleDB destination; the plain table lives in ``plain_schema``."""
    connection = psycopg.connect(dsn, autocommit=True)

    def plain(view: str, table: TableSchema) -> str:
        target = f"{ident(plain_schema)}.{ident(name)}"
        keys = ", ".join(ident(c.name) for c in table.partition_key)
        connection.execute(f"CREATE TABLE {target} AS SELECT * FROM {view}")
        connection.execute(f"CREATE INDEX ON {target} ({keys})")
        # Every table of the database, the destination's storage too: both sides read with fresh statistics.
        connection.execute("ANALYZE")
        return target

    def fetch(sql: str, parameters: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return connection.execute(sql, parameters).fetchall()

    def keys(relation: str, table: TableSchema, count: int) -> list[tuple[Any, ...]]:
        columns = ", ".join(ident(c.name) for c in table.partition_key)
        sql = f"SELECT DISTINCT {columns} FROM {relation}"
        return random.Random(count).sample(connection.execute(sql).fetchall(), count)

    def scan_sql(relation: str, table: TableSchema) -> str:
        counts = ", ".join(f"count({ident(c.name)})" for c in table.columns)
        return f"SELECT count(*), {counts} FROM {relation}"

    def lookup_sql(relation: str, table: TableSchema) -> str:
        where = " AND ".join(f"{ident(c.name)} = %s" for c in table.partition_key)
        return f"SELECT * FROM {relation} WHERE {where}"

    connection.execute(f"CREATE SCHEMA IF NOT EXISTS {ident(plain_schema)}")
    return Target(
        name,
        destination,
        lambda table: destination.sql(table).view,
        plain,
        fetch,
        keys,
        scan_sql,
        lookup_sql,
        lambda: connection.execute("VACUUM ANALYZE"),
    )


def clickhouse_target(destination: Any, plain_database: str) -> Target:
    client = destination.client

    def view(table: TableSchema) -> str:
        return f"{quote(destination.database(table))}.{quote(table.name)}"

    def plain(view: str, table: TableSchema) -> str:
        target = f"{quote(plain_database)}.{quote('clickhouse')}"
        keys = ", ".join(quote(c.name) for c in table.partition_key)
        client.command(f"CREATE DATABASE IF NOT EXISTS {quote(plain_database)}")
        client.command(
            f"CREATE TABLE {target} ENGINE = MergeTree ORDER BY ({keys}) "
            f"SETTINGS allow_nullable_key = 1 AS SELECT * FROM {view}"
        )
        return target

    def fetch(sql: str, parameters: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return client.query(sql, parameters={f"k{i}": value for i, value in enumerate(parameters)}).result_rows

    def keys(relation: str, table: TableSchema, count: int) -> list[tuple[Any, ...]]:
        columns = ", ".join(quote(c.name) for c in table.partition_key)
        rows = client.query(f"SELECT DISTINCT {columns} FROM {relation} ORDER BY {columns}").result_rows
        return random.Random(count).sample(rows, count)

    def scan_sql(relation: str, table: TableSchema) -> str:
        columns = ", ".join(quote(c.name) for c in table.columns)
        return f"SELECT count(), sum(cityHash64({columns})) FROM {relation}"

    def lookup_sql(relation: str, table: TableSchema) -> str:
        where = " AND ".join(
            f"{quote(c.name)} = {{k{i}:{_ch_type_name(client, relation, c.name)}}}"
            for i, c in enumerate(table.partition_key)
        )
        return f"SELECT * FROM {relation} WHERE {where}"

    return Target("clickhouse", destination, view, plain, fetch, keys, scan_sql, lookup_sql)


def _ch_type_name(client: Any, relation: str, column: str) -> str:
    """The ClickHouse type of ``relation``'s ``column``, for a typed query parameter."""
    for name, type_name, *_ in client.query(f"DESCRIBE TABLE {relation}").result_rows:
        if name == column:
            return type_name
    raise ValueError(f"{relation} has no column {column!r}")


@contextmanager
def postgres_dsn() -> Iterator[str]:
    """``CDC_BENCH_POSTGRES_DSN``, else 127.0.0.1:5432 when it answers, else a private server for this run."""
    configured = os.environ.get("CDC_BENCH_POSTGRES_DSN")
    if configured:
        yield configured
        return
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=2).close()
        yield DEFAULT_POSTGRES_DSN
        return
    except OSError:
        pass
    home = Path(tempfile.mkdtemp(prefix="cdc_bench_pg_"))
    home.chmod(0o755)  # the server runs as its own user, which must reach its data directory
    server = devstack.PostgresServer(home / "data", home / "run")
    try:
        server.start()
        yield server.dsn()
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


# --- the run ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    destination: str
    load_seconds: float
    rows: int
    # Median seconds by query: (view, plain).
    times: dict[str, tuple[float, float]]
    # The same after ``Target.settle`` (empty when the destination has nothing to settle).
    settled: dict[str, tuple[float, float]]


def load(target: Target, table: TableSchema, batch: pa.RecordBatch, loads: int) -> float:
    """Seconds for ``loads`` consecutive loads of ``batch`` (table creation untimed)."""
    target.destination.ensure_table(table)
    size = -(-batch.num_rows // loads)
    start = time.perf_counter()
    for number, offset in enumerate(range(0, batch.num_rows, size)):
        target.destination.load(table, batch.slice(offset, size), load_id=f"bench-read-{number}")
    return time.perf_counter() - start


def median_seconds(target: Target, sql: str, parameters: list[tuple[Any, ...]]) -> float:
    """The median wall time of ``sql`` run once per parameter tuple, every row fetched."""
    seconds = []
    for values in parameters:
        start = time.perf_counter()
        target.fetch(sql, values)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def measure(target: Target, table: TableSchema, batch: pa.RecordBatch, loads: int, repeat: int) -> Result:
    """Load ``batch``, make the plain table from the view, then time each query on both."""
    load_seconds = load(target, table, batch, loads)
    print(f"  {target.name}: {loads} loads in {load_seconds:.1f} s", flush=True)
    view = target.view(table)
    plain = target.plain(view, table)
    keys = target.keys(plain, table, repeat)
    statements = {
        "count(*)": (lambda relation: f"SELECT count(*) FROM {relation}", [()] * repeat),
        "one partition by key": (lambda relation: target.lookup_sql(relation, table), keys),
        "full scan": (lambda relation: target.scan_sql(relation, table), [()] * repeat),
    }

    def timings(when: str) -> dict[str, tuple[float, float]]:
        times: dict[str, tuple[float, float]] = {}
        for query, (statement, parameters) in statements.items():
            on_view, on_plain = (median_seconds(target, statement(r), parameters) for r in (view, plain))
            times[query] = (on_view, on_plain)
            print(
                f"  {target.name} ({when}): {query}: view {on_view * 1000:,.1f} ms, plain {on_plain * 1000:,.1f} ms",
                flush=True,
            )
        return times

    times = timings("after the loads")
    settled: dict[str, tuple[float, float]] = {}
    if target.settle is not None:
        target.settle()
        settled = timings("vacuumed")
    rows = int(target.fetch(f"SELECT count(*) FROM {plain}", ())[0][0])
    return Result(target.name, load_seconds, rows, times, settled)


@contextmanager
def targets(names: list[str], prefix: str, stack: ExitStack) -> Iterator[list[Target]]:
    """The destinations asked for; every schema or database starting with ``prefix`` is dropped after."""
    chosen: list[Target] = []
    dsn = ""
    if {"postgres", "timescale"} & set(names):
        dsn = stack.enter_context(postgres_dsn())
    if "postgres" in names:
        from cdc_assets.destinations.postgres.destination import PostgresDestination

        destination = PostgresDestination(dsn, schema_prefix=f"{prefix}pg_")
        stack.callback(destination.close)
        chosen.append(postgres_target("postgres", destination, dsn, f"{prefix}plain"))
    if "timescale" in names:
        from cdc_assets.destinations.timescale.destination import TimescaleDestination

        destination = TimescaleDestination(dsn, schema_prefix=f"{prefix}ts_", allow_plain_postgres=True)
        stack.callback(destination.close)
        chosen.append(postgres_target("timescale", destination, dsn, f"{prefix}plain"))
    if "clickhouse" in names:
        from cdc_assets.destinations.clickhouse.destination import ClickHouseDestination

        data_path = tempfile.mkdtemp(prefix="cdc_bench_chdb_")
        stack.callback(shutil.rmtree, data_path, ignore_errors=True)
        destination = ClickHouseDestination(dsn=f"chdb://{data_path}", database_prefix=f"{prefix}ch_")
        stack.callback(destination.close)
        chosen.append(clickhouse_target(destination, f"{prefix}plain"))
    try:
        yield chosen
    finally:
        if dsn:
            _drop_schemas(dsn, prefix)


def _drop_schemas(dsn: str, prefix: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as connection:
        rows = connection.execute("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)", (prefix,))
        for (name,) in rows.fetchall():
            connection.execute(f"DROP SCHEMA {ident(name)} CASCADE")


def report(results: list[Result], changes: int) -> None:
    """Load throughput, then one line per destination and query: view, plain table, ratio."""
    for r in results:
        print(
            f"{r.destination:<11} load {changes / r.load_seconds:>10,.0f} changes/s ({r.load_seconds:.1f} s); "
            f"{r.rows:,} current rows"
        )
    print(f"{'destination':<11} {'query':<32} {'view ms':>11} {'plain ms':>10} {'ratio':>9}")
    for r in results:
        for times, when in ((r.times, ""), (r.settled, ", vacuumed")):
            for query in QUERIES if times else ():
                on_view, on_plain = times[query]
                print(
                    f"{r.destination:<11} {query + when:<32} {on_view * 1000:>11,.1f} {on_plain * 1000:>10,.1f} "
                    f"{on_view / on_plain:>8,.1f}x"
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=1_000_000, help="changes loaded (default 1,000,000)")
    parser.add_argument("--loads", type=int, default=10, help="consecutive loads they arrive in (default 10)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each query; the median is reported")
    parser.add_argument("--seed", type=int, default=20261206)
    add_destinations_argument(parser)
    args = parser.parse_args(argv)
    names = chosen_destinations(parser, args)
    if args.changes < 1 or args.loads < 1 or args.repeat < 1:
        parser.error("--changes, --loads and --repeat must be at least 1")
    table = realistic_table()
    started = time.perf_counter()
    print(f"bench-read: load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    batch, operations = workload_batch(table, args.changes, args.seed)
    drawn = ", ".join(f"{count:,} {operation}" for operation, count in sorted(operations.items(), key=lambda o: -o[1]))
    print(
        f"bench-read: {batch.num_rows:,} changes of {table.qualified_name} in {args.loads} loads "
        f"(operations drawn: {drawn}; generated and read in {time.perf_counter() - started:.0f} s), "
        f"median of {args.repeat}",
        flush=True,
    )
    results = []
    with ExitStack() as stack:
        for target in stack.enter_context(targets(names, f"cdc_bench_{os.getpid()}_", stack)):
            results.append(measure(target, table, batch, args.loads, args.repeat))
    report(results, batch.num_rows)
    print(
        f"bench-read: whole run {time.perf_counter() - started:.0f} s; load average at end "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
