"""Load benchmark: our merge load into each destination next to a bare bulk load of the same Arrow table.

Builds one change batch of the generator's realistic table ``shop.orders`` (~75 % inserts, ~20 % partial
updates, ~5 % row deletions), then, per destination, in the same run:

- *bare*: the batch loaded with no merge logic at all into empty tables: the batch flattened (cell structs
  to one column per field, each complex column's element cells to a child table of their own) and bulk
  loaded, with ``COPY … FROM STDIN`` for PostgreSQL and TimescaleDB and ``insert_arrow`` into plain
  MergeTree tables for ClickHouse. PostgreSQL's is timed twice: CSV written by pyarrow (the plain COPY the
  target is judged on) and binary written by ``postgres.binary`` (what the merge loads themselves now send;
  shown for comparison, it is the stricter baseline). Flattening and serialising are timed: a destination must
  do that work too.
- *merge*: the destination's own ``load`` into its (empty, already created) tables.

Both load into fresh tables each round (the table is renamed ``<round>_<name>``); table creation is not
timed. A 1,000-change warm-up of both paths runs first, untimed (the first load into a cold chdb engine
or a new connection costs far more than the steady state); then the two loads alternate for
``--repeat`` rounds and the best of each is reported.

Run: ``make bench-load`` or ``.venv/bin/python benchmarks/bench_load.py [--changes N]``. PostgreSQL comes
from ``CDC_BENCH_POSTGRES_DSN`` (default ``host=127.0.0.1 port=5432 user=postgres dbname=test``); every
schema the run creates starts with ``cdc_bench_<pid>`` and is dropped at the end. ClickHouse is the
in-process chdb engine in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cdc_assets import change_batch as cb
from cdc_assets.cassandra_schema.tables import TableSchema
from cdc_assets.cassandra_schema.types import CqlType
from cdc_assets.commitlog.generator.workload import realistic_table
from cdc_assets.destinations.postgres.binary import binary_copy_payload

DEFAULT_POSTGRES_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
TARGET_RATIO = 0.70
INSERT_SHARE = 0.75
UPDATE_SHARE = 0.20
ROWS_PER_PARTITION = 4
BASE_WRITETIME = 1_700_000_000_000_000
CHANGES_PER_SEGMENT = 100_000
COPY_CHUNK = 1 << 20
FORMATS = ("csv", "binary")
WARM_UP_CHANGES = 1_000


# --- the table and its change batch -------------------------------------------------------------------


@dataclass(frozen=True)
class ChangeMix:
    inserts: int
    updates: int
    deletes: int


def change_batch(table: TableSchema, changes: int, seed: int) -> tuple[pa.RecordBatch, ChangeMix]:
    """A change batch of ``changes`` changes, built column by column.

    Inserts write every regular column (complex ones as an overwrite: a collection deletion at the write
    time minus 1, then new elements) under a new clustering key, several rows per partition. Partial
    updates and row deletions target a row inserted earlier in the batch, with a later write time; an
    update sets each regular column with probability 0.35 (at least one), adding elements to collections.
    """
    rng = np.random.default_rng(seed)
    kinds = rng.choice(3, size=changes, p=[INSERT_SHARE, UPDATE_SHARE, 1 - INSERT_SHARE - UPDATE_SHARE])
    kinds[0] = 0
    is_insert = kinds == 0
    is_update = kinds == 1
    is_delete = kinds == 2
    inserts = int(is_insert.sum())
    # Each update or delete targets a uniformly chosen row among those inserted before it.
    inserted_before = np.cumsum(is_insert) - 1
    insert_rows = np.flatnonzero(is_insert)
    targets = np.where(is_insert, np.arange(changes), 0)
    later = ~is_insert
    picks = (rng.random(int(later.sum())) * (inserted_before[later] + 1)).astype(np.int64)
    targets[later] = insert_rows[picks]

    writetimes = pa.array(BASE_WRITETIME + np.arange(changes, dtype=np.int64) * 10)
    columns: dict[str, pa.Array] = {
        cb.SEGMENT_ID: pa.array(1 + np.arange(changes, dtype=np.int64) // CHANGES_PER_SEGMENT),
        cb.POSITION: pa.array((np.arange(changes) % CHANGES_PER_SEGMENT * 200 + 100).astype(np.int32)),
        cb.KIND: pa.array(np.full(changes, cb.KIND_ROW, dtype=object), pa.string()),
    }
    partitions = max(1, inserts // ROWS_PER_PARTITION)
    insert_partition = rng.integers(0, partitions, size=changes)
    for column in table.partition_key:
        pool = _values(column.type, partitions, rng, unique=True)
        columns[column.name] = pool.take(pa.array(insert_partition[targets]))
    for column in table.clustering:
        unique = _values(column.type, changes, rng, unique=True)
        columns[column.name] = unique.take(pa.array(targets))
    columns[cb.ROW_WRITETIME] = pa.array(writetimes.to_numpy(), mask=~is_insert)
    columns[cb.DELETION_WRITETIME] = pa.array(writetimes.to_numpy(), mask=~is_delete)
    seconds = (writetimes.to_numpy() // 1_000_000).astype("datetime64[s]")
    columns[cb.DELETION_TIME] = pa.array(seconds, mask=~is_delete).cast(cb.SECONDS_TYPE)

    chosen_once = rng.integers(0, max(1, len(table.regulars)), size=changes)
    for index, column in enumerate(table.regulars):
        touched = is_insert | (is_update & ((rng.random(changes) < 0.35) | (chosen_once == index)))
        columns[column.name] = _cells(column.type, touched, is_insert, writetimes, rng)

    schema = cb.change_batch_schema(table)
    arrays = [columns[field.name] if field.name in columns else pa.nulls(changes, field.type) for field in schema]
    arrays = [array if array.type == field.type else array.cast(field.type) for array, field in zip(arrays, schema)]
    mix = ChangeMix(inserts, int(is_update.sum()), int(is_delete.sum()))
    return pa.RecordBatch.from_arrays(arrays, schema=schema), mix


def _values(cql: CqlType, count: int, rng: np.random.Generator, unique: bool = False) -> pa.Array:
    """``count`` random values of a scalar CQL type (distinct when ``unique``) in change-batch Arrow form."""
    kind = cql.kind
    serial = np.arange(count, dtype=np.int64)
    if kind in ("uuid", "timeuuid"):
        raw = rng.bytes(16 * count)
        return pa.array([str(uuid.UUID(bytes=raw[i : i + 16])) for i in range(0, 16 * count, 16)])
    if kind in ("text", "ascii"):
        words = np.array(["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"], dtype=object)
        base = words[rng.integers(0, len(words), size=count)]
        return pa.array([f"{word}-{n}" for word, n in zip(base, serial if unique else rng.integers(0, 10_000, count))])
    if kind == "boolean":
        return pa.array(rng.random(count) < 0.5)
    if kind == "counter":
        # One leader's shard per change, as the leader logs it: its counter id, a clock, its running count.
        counts = pa.array(serial if unique else rng.integers(0, 2**40, size=count))
        leader = pa.array([b"\x0a" * 16] * count, pa.binary(16))
        shards = pa.StructArray.from_arrays([leader, pa.array(serial), counts], names=["id", "clock", "count"])
        return pa.ListArray.from_arrays(pa.array(np.arange(count + 1, dtype=np.int32)), shards)
    if kind in ("tinyint", "smallint", "int", "bigint", "varint"):
        bits = {"tinyint": 7, "smallint": 15, "int": 31}.get(kind, 40)
        numbers = serial if unique else rng.integers(0, 2**bits, size=count)
        return pa.array(numbers).cast(cb.arrow_type(cql))
    if kind in ("float", "double"):
        return pa.array(rng.random(count) * 1000).cast(cb.arrow_type(cql))
    if kind == "decimal":
        return pa.array([f"{cents / 100:.2f}" for cents in rng.integers(1, 10_000_000, size=count)])
    if kind == "timestamp":
        millis = BASE_WRITETIME // 1000 + (serial * 7 if unique else rng.integers(0, 10**10, size=count))
        return pa.array(millis).cast(pa.timestamp("ms", tz="UTC"))
    if kind == "date":
        return pa.array((18_000 + (serial if unique else rng.integers(0, 3000, count))).astype(np.int32)).cast(
            pa.date32()
        )
    if kind == "inet":
        return pa.array([f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}" for n in rng.integers(0, 2**24, count)])
    raise ValueError(f"the benchmark generates no values of CQL type {cql.cql()!r}")


def _cells(
    cql: CqlType, touched: np.ndarray, is_insert: np.ndarray, writetimes: pa.Array, rng: np.random.Generator
) -> pa.Array:
    """A column of cell structs: set where ``touched``, null elsewhere."""
    count = len(touched)
    absent = pa.array(~touched)
    if not cql.is_complex:
        metadata = [writetimes, pa.nulls(count, cb.TTL_TYPE), pa.nulls(count, cb.SECONDS_TYPE), _falses(count)]
        fields = list(cb.cell_type(cql))
        return pa.StructArray.from_arrays([_values(cql, count, rng), *metadata], fields=fields, mask=absent)
    if cql.kind not in ("set", "map", "list"):
        raise ValueError(f"the benchmark generates no cells of CQL type {cql.cql()!r}")
    sizes = np.where(touched, rng.integers(1, 4, size=count), 0)
    offsets = pa.array(np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32))
    elements = int(sizes.sum())
    element_writetimes = pc.take(writetimes, pa.array(np.repeat(np.arange(count), sizes)))
    element_metadata = [
        element_writetimes,
        pa.nulls(elements, cb.TTL_TYPE),
        pa.nulls(elements, cb.SECONDS_TYPE),
        _falses(elements),
    ]
    if cql.kind == "list":
        paths = _values(CqlType("timeuuid"), elements, rng)
        children = [paths, _values(cql.args[0], elements, rng), *element_metadata]
    elif cql.kind == "set":
        children = [_values(cql.args[0], elements, rng), *element_metadata]
    else:
        children = [_values(cql.args[0], elements, rng), _values(cql.args[1], elements, rng), *element_metadata]
    cells_type = cb.cell_type(cql).field("cells").type
    element_cells = pa.StructArray.from_arrays(children, fields=list(cells_type.value_type))
    cells = pa.ListArray.from_arrays(offsets, element_cells, type=cells_type)
    overwrite = pa.array(writetimes.to_numpy() - 1, mask=~is_insert)
    return pa.StructArray.from_arrays([overwrite, cells], fields=list(cb.cell_type(cql)), mask=absent)


def _falses(count: int) -> pa.Array:
    return pa.array(np.zeros(count, dtype=bool))


# --- the bare bulk load -------------------------------------------------------------------------------


def flat_tables(batch: pa.RecordBatch) -> dict[str, pa.Table]:
    """The batch as plain tables: ``changes`` with every struct field a column, one table per list column."""
    tables: dict[str, pa.Table] = {}
    columns: dict[str, pa.Array] = {}
    for field, array in zip(batch.schema, batch.columns):
        _flatten(field.name, array, columns, tables)
    return {"changes": pa.table(columns), **tables}


def _flatten(name: str, array: pa.Array, columns: dict[str, pa.Array], tables: dict[str, pa.Table]) -> None:
    if pa.types.is_struct(array.type):
        for child_field, child in zip(array.type, array.flatten()):
            _flatten(f"{name}.{child_field.name}", child, columns, tables)
    elif pa.types.is_list(array.type):
        # Taking the valid lists first drops the elements a null list's offsets may still span.
        present = pc.indices_nonzero(pc.is_valid(array))
        lists = array.take(present)
        child_columns: dict[str, pa.Array] = {"change": present.take(pc.list_parent_indices(lists)).cast(pa.int64())}
        _flatten("element", pc.list_flatten(lists), child_columns, tables)
        tables[name] = pa.table(child_columns)
    else:
        columns[name] = array


_PG_TYPES = {
    pa.bool_(): "boolean",
    pa.int8(): "smallint",
    pa.int16(): "smallint",
    pa.int32(): "integer",
    pa.int64(): "bigint",
    pa.float32(): "real",
    pa.float64(): "double precision",
    pa.string(): "text",
    pa.date32(): "date",
}


def _pg_type(arrow: pa.DataType) -> str:
    if pa.types.is_timestamp(arrow):
        return "timestamptz"
    if arrow not in _PG_TYPES:
        raise ValueError(f"the bare COPY baseline has no PostgreSQL type for Arrow {arrow}")
    return _PG_TYPES[arrow]


def _ch_type(arrow: pa.DataType) -> str:
    names = {
        pa.bool_(): "Bool",
        pa.int8(): "Int8",
        pa.int16(): "Int16",
        pa.int32(): "Int32",
        pa.int64(): "Int64",
        pa.float32(): "Float32",
        pa.float64(): "Float64",
        pa.string(): "String",
        pa.date32(): "Date32",
    }
    if pa.types.is_timestamp(arrow):
        return f"DateTime64({ {'s': 0, 'ms': 3, 'us': 6, 'ns': 9}[arrow.unit] }, 'UTC')"
    if arrow not in names:
        raise ValueError(f"the bare insert_arrow baseline has no ClickHouse type for Arrow {arrow}")
    return f"Nullable({names[arrow]})"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _ch_quote(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def bare_copy(dsn: str, schema: str, tag: str, batch: pa.RecordBatch, copy_format: str = "csv") -> float:
    """Seconds to flatten ``batch`` and COPY it (``copy_format`` csv or binary) into empty tables
    ``<schema>.<tag>_*`` (created untimed)."""
    with psycopg.connect(dsn) as connection:
        for name, table in flat_tables(batch).items():
            columns = ", ".join(f"{_quote(f.name)} {_pg_type(f.type)}" for f in table.schema)
            connection.execute(f"CREATE TABLE {_quote(schema)}.{_quote(f'{tag}_{name}')} ({columns})")
        connection.commit()
        start = time.perf_counter()
        for name, table in flat_tables(batch).items():
            if copy_format == "binary":
                payload = binary_copy_payload(table, [_pg_type(f.type) for f in table.schema])
            else:
                data = pa.BufferOutputStream()
                pacsv.write_csv(table, data, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
                payload = memoryview(data.getvalue())
            target = f"{_quote(schema)}.{_quote(f'{tag}_{name}')}"
            statement = f"COPY {target} FROM STDIN (FORMAT {copy_format})"
            with connection.cursor() as cursor, cursor.copy(statement) as copy:
                for offset in range(0, len(payload), COPY_CHUNK):
                    copy.write(payload[offset : offset + COPY_CHUNK])
        connection.commit()
        return time.perf_counter() - start


def bare_insert_arrow(client: Any, database: str, tag: str, batch: pa.RecordBatch) -> float:
    """Seconds to flatten ``batch`` and ``insert_arrow`` it into empty MergeTree tables ``<database>.<tag>_*``."""
    client.command(f"CREATE DATABASE IF NOT EXISTS {_ch_quote(database)}")
    for name, table in flat_tables(batch).items():
        columns = ", ".join(f"{_ch_quote(f.name)} {_ch_type(f.type)}" for f in table.schema)
        target = f"{_ch_quote(database)}.{_ch_quote(f'{tag}_{name}')}"
        client.command(f"CREATE TABLE {target} ({columns}) ENGINE = MergeTree ORDER BY tuple()")
    start = time.perf_counter()
    for name, table in flat_tables(batch).items():
        client.insert_arrow(f"{_ch_quote(database)}.{_ch_quote(f'{tag}_{name}')}", table)
    return time.perf_counter() - start


# --- the runs -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    destination: str
    merge_seconds: float
    # Best seconds of each bare bulk load; the first is the baseline, the target's measure.
    bare_seconds: dict[str, float]


@dataclass(frozen=True)
class Contender:
    """One destination's ways to load a batch, each into fresh tables named after a tag: its merge, and one
    or more bare bulk loads (seconds by method, the target's baseline first)."""

    destination: str
    bare: Callable[[str, pa.RecordBatch], dict[str, float]]
    merge: Callable[[str, pa.RecordBatch], float]


def merge_loader(destination: Any, table: TableSchema) -> Callable[[str, pa.RecordBatch], float]:
    """Seconds for ``destination.load`` of a batch into a fresh copy of ``table`` (created untimed)."""

    def load(tag: str, batch: pa.RecordBatch) -> float:
        fresh = replace(table, name=f"{tag}_{table.name}", id=uuid.uuid4())
        fresh_batch = batch.replace_schema_metadata(cb.change_batch_schema(fresh).metadata)
        destination.ensure_table(fresh)
        start = time.perf_counter()
        destination.load(fresh, fresh_batch, load_id=f"bench-{tag}")
        return time.perf_counter() - start

    return load


def measure(contender: Contender, batch: pa.RecordBatch, repeat: int) -> Measurement:
    """Best of ``repeat`` rounds of each load, alternating, after an untimed warm-up of both."""
    warm_up = batch.slice(0, min(WARM_UP_CHANGES, batch.num_rows))
    contender.bare("warmup", warm_up)
    contender.merge("warmup", warm_up)
    bare: list[dict[str, float]] = []
    merge_seconds: list[float] = []
    for round_number in range(repeat):
        bare.append(contender.bare(f"r{round_number}", batch))
        merge_seconds.append(contender.merge(f"r{round_number}", batch))
    best = {method: min(rounds[method] for rounds in bare) for method in bare[0]}
    return Measurement(contender.destination, min(merge_seconds), best)


@contextmanager
def postgres_contenders(dsn: str, prefix: str, table: TableSchema, names: list[str]) -> Iterator[list[Contender]]:
    """The PostgreSQL and TimescaleDB contenders; every schema starting with ``prefix`` is dropped after."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {_quote(prefix + 'bare')}")
    destinations: dict[str, Any] = {}
    try:
        if "postgres" in names:
            from cdc_assets.destinations.postgres.destination import PostgresDestination

            destinations["postgres"] = PostgresDestination(dsn, schema_prefix=f"{prefix}pg_")
        if "timescale" in names:
            from cdc_assets.destinations.timescale.destination import TimescaleDestination

            destinations["timescale"] = TimescaleDestination(
                dsn, schema_prefix=f"{prefix}ts_", allow_plain_postgres=True
            )
        yield [_copy_contender(name, dsn, prefix, destination, table) for name, destination in destinations.items()]
    finally:
        for destination in destinations.values():
            destination.close()
        with psycopg.connect(dsn, autocommit=True) as connection:
            rows = connection.execute(
                "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)", (prefix,)
            ).fetchall()
            for (name,) in rows:
                connection.execute(f"DROP SCHEMA {_quote(name)} CASCADE")


def _copy_contender(name: str, dsn: str, prefix: str, destination: Any, table: TableSchema) -> Contender:
    def bare(tag: str, batch: pa.RecordBatch) -> dict[str, float]:
        return {f"COPY {f}": bare_copy(dsn, prefix + "bare", f"{name}_{tag}_{f}", batch, f) for f in FORMATS}

    return Contender(name, bare, merge_loader(destination, table))


@contextmanager
def clickhouse_contender(prefix: str, table: TableSchema) -> Iterator[Contender]:
    """The ClickHouse contender on a chdb engine in a temporary directory, removed after."""
    from cdc_assets.destinations.clickhouse.destination import ClickHouseDestination

    data_path = tempfile.mkdtemp(prefix="cdc_bench_chdb_")
    destination = ClickHouseDestination(dsn=f"chdb://{data_path}", database_prefix=f"{prefix}ch_")
    try:

        def bare(tag: str, batch: pa.RecordBatch) -> dict[str, float]:
            return {"insert_arrow": bare_insert_arrow(destination.client, prefix + "bare", tag, batch)}

        yield Contender("clickhouse", bare, merge_loader(destination, table))
    finally:
        destination.close()
        shutil.rmtree(data_path, ignore_errors=True)


def report(measurements: list[Measurement], changes: int) -> None:
    """One line per destination and bare load; the target is judged on each destination's first bare load
    (the issue's plain COPY / insert_arrow), the others are shown for comparison."""
    print(f"{'destination':<12} {'merge load':>16} {'bare bulk load':>34} {'ratio':>6}  target >= {TARGET_RATIO:.0%}")
    for m in measurements:
        merge_rate = changes / m.merge_seconds
        for index, (method, seconds) in enumerate(m.bare_seconds.items()):
            bare_rate = changes / seconds
            ratio = merge_rate / bare_rate
            verdict = ("ok" if ratio >= TARGET_RATIO else "BELOW TARGET") if index == 0 else "(comparison)"
            print(
                f"{m.destination if index == 0 else '':<12} {merge_rate:>10,.0f} chg/s {bare_rate:>10,.0f} chg/s "
                f"({method:<15}) {ratio:>6.0%}  {verdict:<12} [merge {m.merge_seconds:.2f} s, bare {seconds:.2f} s]"
            )


DESTINATIONS = ("postgres", "timescale", "clickhouse")


def add_destinations_argument(parser: argparse.ArgumentParser) -> None:
    """``--destinations``, shared by the benchmarks that load every destination."""
    parser.add_argument(
        "--destinations", default=",".join(DESTINATIONS), help=f"comma-separated subset of {', '.join(DESTINATIONS)}"
    )


def chosen_destinations(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The destinations ``--destinations`` names, in its order; an unknown name is a usage error."""
    names = [name.strip() for name in args.destinations.split(",")]
    unknown = set(names) - set(DESTINATIONS)
    if unknown:
        parser.error(f"unknown destination(s): {', '.join(sorted(unknown))}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=1_000_000, help="changes in the batch (default 1,000,000)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds per load; the best is reported")
    parser.add_argument("--seed", type=int, default=20240601)
    add_destinations_argument(parser)
    args = parser.parse_args(argv)
    names = chosen_destinations(parser, args)
    dsn = os.environ.get("CDC_BENCH_POSTGRES_DSN", DEFAULT_POSTGRES_DSN)
    prefix = f"cdc_bench_{os.getpid()}_"

    table = realistic_table()
    start = time.perf_counter()
    batch, mix = change_batch(table, args.changes, args.seed)
    print(
        f"bench-load: {args.changes:,} changes of {table.qualified_name} "
        f"({mix.inserts:,} inserts, {mix.updates:,} partial updates, {mix.deletes:,} deletes; "
        f"{batch.nbytes / 2**20:,.0f} MiB of Arrow, built in {time.perf_counter() - start:.1f} s), "
        f"best of {args.repeat}, after a {WARM_UP_CHANGES:,}-change warm-up"
    )
    measurements = []
    with ExitStack() as stack:
        contenders = []
        if {"postgres", "timescale"} & set(names):
            contenders += stack.enter_context(postgres_contenders(dsn, prefix, table, names))
        if "clickhouse" in names:
            contenders.append(stack.enter_context(clickhouse_contender(prefix, table)))
        for contender in contenders:
            measurements.append(measure(contender, batch, args.repeat))
            print(f"  {contender.destination}: done", flush=True)
    report(measurements, args.changes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
