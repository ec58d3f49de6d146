"""Binary COPY benchmark: ``postgres.binary.binary_copy_payload`` next to the CSV COPY it replaces.

For each of two tables of ``--rows`` rows (default 1,000,000), built column by column:

- *mixed*: 12 columns, one of each kind a change batch carries (bigint, integer, smallint, boolean, double,
  text of ~10 characters, bytea of ~10 bytes, uuid text, timestamptz, date, time, jsonb of ~60
  characters), ~30 % nulls in half of them;
- *wide*: 35 columns shaped like a staging table: a text part and key columns, then eight cells of
  ``value, __ts bigint, __exp bigint, __del boolean`` with nulls where cells are absent or not expiring;

it times, in the same run, best of ``--repeat``:

- *encode*: ``binary_copy_payload`` (binary), and ``pyarrow.csv.write_csv`` with bytea as ``\\x`` hex text
  from ``postgres.keys.bytea_text`` (csv: the PostgreSQL destination's former path, hex conversion included);
- *copy*: the server-side ``COPY … FROM STDIN`` of each payload (its wall time, written in 1 MiB slices)
  into an empty temporary table of the target types.

Run: ``.venv/bin/python benchmarks/bench_pg_binary.py [--rows N] [--repeat R]``. PostgreSQL comes from
``CDC_BENCH_POSTGRES_DSN`` (default ``host=127.0.0.1 port=5432 user=postgres dbname=test``); the tables
are temporary, gone with the connection.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cdc_assets.destinations.postgres.binary import binary_copy_payload
from cdc_assets.destinations.postgres.keys import bytea_text

DEFAULT_POSTGRES_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
COPY_CHUNK = 1 << 20
NULL_SHARE = 0.3
BASE_MICROS = 1_700_000_000_000_000
LETTERS = np.frombuffer(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", np.uint8)
HEX_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8)


# --- tables ---------------------------------------------------------------------------------------


def nulls(rng: np.random.Generator, rows: int) -> np.ndarray:
    return rng.random(rows) < NULL_SHARE


def strings(rng: np.random.Generator, rows: int, low: int, high: int, *, binary: bool = False) -> pa.Array:
    """Random letters, ``low`` to ``high`` of them per value."""
    lengths = rng.integers(low, high + 1, rows)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
    data = LETTERS[rng.integers(0, len(LETTERS), int(offsets[-1]))]
    arrow = pa.binary() if binary else pa.string()
    return pa.Array.from_buffers(arrow, rows, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def uuid_texts(rng: np.random.Generator, rows: int) -> pa.Array:
    text = np.full((rows, 36), ord("-"), dtype=np.uint8)
    digits = HEX_DIGITS[rng.integers(0, 16, (rows, 32))]
    for start, stop, at in ((0, 8, 0), (8, 12, 9), (12, 16, 14), (16, 20, 19), (20, 32, 24)):
        text[:, at : at + stop - start] = digits[:, start:stop]
    offsets = np.arange(0, 36 * rows + 1, 36, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), rows, [None, pa.py_buffer(offsets), pa.py_buffer(text)])


def json_texts(rng: np.random.Generator, rows: int) -> pa.Array:
    """Objects of ~60 characters: an id, a name, a score and a flag."""
    ids = pa.array(rng.integers(0, 10**9, rows)).cast(pa.string())
    names = strings(rng, rows, 6, 14)
    scores = pa.array(rng.integers(0, 10**6, rows) / 100).cast(pa.string())
    parts = ['{"id": ', ids, ', "name": "', names, '", "score": ', scores, ', "ok": true}']
    return pc.binary_join_element_wise(*[pa.scalar(p) if isinstance(p, str) else p for p in parts], "")


def mixed_table(rng: np.random.Generator, rows: int) -> tuple[pa.Table, list[str]]:
    columns = {
        "id": (pa.array(np.arange(rows, dtype=np.int64)), "bigint"),
        "quantity": (pa.array(rng.integers(0, 1000, rows).astype(np.int32), mask=nulls(rng, rows)), "integer"),
        "rank": (pa.array(rng.integers(-100, 100, rows).astype(np.int16)), "smallint"),
        "active": (pa.array(rng.random(rows) < 0.5, mask=nulls(rng, rows)), "boolean"),
        "price": (pa.array(rng.random(rows) * 1000, mask=nulls(rng, rows)), "double precision"),
        "label": (pc.if_else(pa.array(nulls(rng, rows)), None, strings(rng, rows, 5, 15)), "text"),
        "payload": (strings(rng, rows, 5, 15, binary=True), "bytea"),
        "key": (uuid_texts(rng, rows), "uuid"),
        "updated": (
            pa.array(BASE_MICROS + rng.integers(0, 10**12, rows), mask=nulls(rng, rows)).cast(
                pa.timestamp("us", "UTC")
            ),
            "timestamptz",
        ),
        "day": (pa.array(rng.integers(0, 20_000, rows).astype(np.int32)).cast(pa.date32()), "date"),
        "at": (pa.array(rng.integers(0, 86_400 * 10**6, rows)).cast(pa.time64("us")), "time"),
        "attributes": (json_texts(rng, rows), "jsonb"),
    }
    return pa.table({name: array for name, (array, _) in columns.items()}), [t for _, t in columns.values()]


def wide_table(rng: np.random.Generator, rows: int) -> tuple[pa.Table, list[str]]:
    """A staging table's shape: 3 + 8 × 4 columns."""
    columns: dict[str, tuple[pa.Array, str]] = {
        "_cdc_part": (pa.array(np.full(rows, "r")), "text"),
        "customer_id": (uuid_texts(rng, rows), "uuid"),
        "order_id": (pa.array(rng.integers(0, 10**12, rows)), "bigint"),
    }
    values: list[tuple[Callable[[], pa.Array], str]] = [
        (lambda: strings(rng, rows, 5, 15), "text"),
        (lambda: pa.array(rng.integers(0, 10**6, rows).astype(np.int32)), "integer"),
        (lambda: pa.array(rng.random(rows) * 100), "double precision"),
        (lambda: pa.array(BASE_MICROS + rng.integers(0, 10**12, rows)).cast(pa.timestamp("us")), "timestamptz"),
        (lambda: strings(rng, rows, 5, 15, binary=True), "bytea"),
        (lambda: pa.array(rng.random(rows) < 0.5), "boolean"),
        (lambda: json_texts(rng, rows), "jsonb"),
        (lambda: pa.array(rng.integers(0, 10**9, rows)), "bigint"),
    ]
    for index, (make, pg_type) in enumerate(values):
        absent = nulls(rng, rows)
        expiring = rng.random(rows) < 0.1
        name = f"c{index}"
        columns[name] = (pc.if_else(pa.array(absent), None, make()), pg_type)
        columns[f"{name}__ts"] = (pa.array(BASE_MICROS + rng.integers(0, 10**9, rows), mask=absent), "bigint")
        columns[f"{name}__exp"] = (pa.array(rng.integers(0, 2**31, rows), mask=absent | ~expiring), "bigint")
        columns[f"{name}__del"] = (pa.array(np.zeros(rows, dtype=bool), mask=absent), "boolean")
    return pa.table({name: array for name, (array, _) in columns.items()}), [t for _, t in columns.values()]


# --- the two paths ----------------------------------------------------------------------------------


def csv_payload(table: pa.Table) -> memoryview:
    """What the PostgreSQL destination sent before binary COPY: Arrow's CSV, bytea as hex text."""
    arrays = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        arrays[name] = bytea_text(column) if pa.types.is_binary(column.type) else column
    buffer = io.BytesIO()
    pacsv.write_csv(pa.table(arrays), buffer, pacsv.WriteOptions(include_header=False))
    return buffer.getbuffer()


def best(repeat: int, action: Callable[[], object]) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - start)
    return min(times), result


def copy_seconds(
    connection: psycopg.Connection, table: pa.Table, types: list[str], payload: memoryview, fmt: str
) -> float:
    columns = ", ".join(f'"{name}" {pg_type}' for name, pg_type in zip(table.column_names, types, strict=True))
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_pg_binary")
        cursor.execute(f"CREATE TEMPORARY TABLE bench_pg_binary ({columns})")
        start = time.perf_counter()
        with cursor.copy(f"COPY bench_pg_binary FROM STDIN WITH (FORMAT {fmt})") as copy:
            for offset in range(0, len(payload), COPY_CHUNK):
                copy.write(payload[offset : offset + COPY_CHUNK])
        seconds = time.perf_counter() - start
        copied = cursor.execute("SELECT count(*) FROM bench_pg_binary").fetchone()
    connection.commit()
    assert copied is not None and copied[0] == table.num_rows, f"{fmt}: copied {copied}, expected {table.num_rows}"
    return seconds


def report(label: str, rows: int, seconds: float, size: int) -> None:
    print(f"  {label:<14} {seconds * 1e3:9.1f} ms  {rows / seconds / 1e6:7.2f} M rows/s  {size / 1e6:8.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    dsn = os.environ.get("CDC_BENCH_POSTGRES_DSN", DEFAULT_POSTGRES_DSN)
    with psycopg.connect(dsn) as connection:
        for name, build in (("mixed", mixed_table), ("wide", wide_table)):
            table, types = build(rng, args.rows)
            print(f"{name}: {table.num_rows:,} rows × {table.num_columns} columns ({', '.join(sorted(set(types)))})")
            binary_time, binary = best(args.repeat, lambda t=table, ty=types: binary_copy_payload(t, ty))
            csv_time, csv = best(args.repeat, lambda t=table: csv_payload(t))
            report("encode binary", table.num_rows, binary_time, len(binary))
            report("encode csv", table.num_rows, csv_time, len(csv))
            for fmt, payload in (("binary", binary), ("csv", csv)):
                seconds = min(copy_seconds(connection, table, types, payload, fmt) for _ in range(args.repeat))
                report(f"copy {fmt}", table.num_rows, seconds, len(payload))


if __name__ == "__main__":
    main()
