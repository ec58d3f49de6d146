"""Binary COPY payloads of Arrow tables, loaded into a real PostgreSQL and read back.

Expected values come from the Arrow values by plain Python (``to_pylist``, ``uuid``, ``json``, integer
arithmetic on the raw timestamps), never from the encoder; PostgreSQL parses the payload.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import struct
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc_assets.destinations.postgres.binary import binary_copy_payload

UTC_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
MIDNIGHT = dt.datetime(2000, 1, 1)
# The binary COPY header and trailer, as PostgreSQL's documentation spells them.
SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
HEADER = SIGNATURE + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"
MIB = 1 << 20
UNITS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
SHAPES = ("whole", "sliced", "chunked")


@pytest.fixture(scope="module")
def connection(module_pg_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(module_pg_dsn, autocommit=True) as connection:
        connection.execute("SET timezone = 'UTC'")
        yield connection


def load(
    connection: psycopg.Connection,
    table: pa.Table | pa.RecordBatch,
    types: list[str],
    *,
    ordered: bool = True,
    as_text: bool = False,
) -> list[tuple]:
    """COPYs the table's payload into a new temporary table of ``types`` and reads the rows back (as
    PostgreSQL's text, for values Python cannot hold, with ``as_text``).

    COPY may store rows out of order: to read them back in order, a leading bigint column numbers them
    (so each row starts with a fixed-width field: ``ordered=False`` sends the table as it is).
    """
    if ordered:
        ordinal = pa.array(range(table.num_rows), pa.int64())
        if isinstance(table, pa.RecordBatch):
            table = pa.RecordBatch.from_arrays([ordinal, *table.columns], names=["_row", *table.column_names])
        else:
            table = table.add_column(0, "_row", ordinal)
        types = ["bigint", *types]
    payload = binary_copy_payload(table, types)
    columns = ", ".join(f"c{index} {pg_type}" for index, pg_type in enumerate(types))
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS pg_binary_loaded")
        cursor.execute(f"CREATE TEMPORARY TABLE pg_binary_loaded ({columns})")
        with cursor.copy("COPY pg_binary_loaded FROM STDIN WITH (FORMAT binary)") as copy:
            for start in range(0, len(payload), MIB):
                copy.write(payload[start : start + MIB])
        selected = ", ".join(f"c{index}{'::text' if as_text else ''}" for index in range(len(types)))
        loaded = cursor.execute(
            f"SELECT {selected} FROM pg_binary_loaded ORDER BY pg_binary_loaded.c0", prepare=False
        ).fetchall()
    if not ordered:
        return loaded
    assert [int(row[0]) for row in loaded] == list(range(table.num_rows))
    return [row[1:] for row in loaded]


def shaped(array: pa.Array, shape: str) -> pa.Array | pa.ChunkedArray:
    """The same values as a whole array, as a slice of a longer one (odd offset) or split into chunks."""
    if shape == "sliced":
        padding = pa.nulls(3, array.type) if not pa.types.is_dictionary(array.type) else array[:3]
        return pa.concat_arrays([padding, array, padding]).slice(3, len(array))
    if shape == "chunked":
        middle = len(array) // 2
        return pa.chunked_array([array[:middle], array[middle:], array[len(array) :]], type=array.type)
    return array


# --------------------------------------------------------------------------------------------------
# What PostgreSQL should hold, computed from the Arrow values alone


def as_real(value: float | None) -> float | None:
    return None if value is None else struct.unpack("<f", struct.pack("<f", value))[0]


def raw_ints(array: pa.Array) -> list[int | None]:
    """A timestamp or time array's stored integers (in its unit)."""
    return array.view(pa.int32() if pa.types.is_time32(array.type) else pa.int64()).to_pylist()


def timestamps(array: pa.Array) -> list[dt.datetime | None]:
    per_second = UNITS_PER_SECOND[array.type.unit]
    return [
        None if value is None else UTC_EPOCH + dt.timedelta(microseconds=value * 1_000_000 // per_second)
        for value in raw_ints(array)
    ]


def times(array: pa.Array) -> list[dt.time | None]:
    per_second = UNITS_PER_SECOND[array.type.unit]
    return [
        None if value is None else (MIDNIGHT + dt.timedelta(microseconds=value * 1_000_000 // per_second)).time()
        for value in raw_ints(array)
    ]


def uuids(array: pa.Array) -> list[uuid.UUID | None]:
    if pa.types.is_fixed_size_binary(array.type):
        return [None if value is None else uuid.UUID(bytes=value) for value in array.to_pylist()]
    return [None if value is None else uuid.UUID(value) for value in array.to_pylist()]


EXPECTED: dict[str, Callable[[pa.Array], list[Any]]] = {
    "real": lambda array: [as_real(value) for value in array.to_pylist()],
    "jsonb": lambda array: [None if value is None else json.loads(value) for value in array.to_pylist()],
    "uuid": uuids,
    "timestamptz": timestamps,
    "time": times,
}


def expected_values(array: pa.Array | pa.ChunkedArray, pg_type: str) -> list[Any]:
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks else pa.array([], array.type)
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    return EXPECTED.get(pg_type, lambda values: values.to_pylist())(array)


def same(loaded: Any, expected: Any, pg_type: str) -> bool:
    if pg_type == "real" and loaded is not None and expected is not None:
        # PostgreSQL prints the shortest text that reads back as the same float4: compare as float4.
        loaded = as_real(loaded)
    if isinstance(expected, float) and isinstance(loaded, float):
        if math.isnan(expected):
            return math.isnan(loaded)
        return loaded == expected and math.copysign(1, loaded) == math.copysign(1, expected)
    return type(loaded) is type(expected) and loaded == expected


def assert_loads(connection: psycopg.Connection, columns: dict[str, tuple[pa.Array | pa.ChunkedArray, str]]) -> None:
    table = pa.table({name: array for name, (array, _) in columns.items()})
    types = [pg_type for _, pg_type in columns.values()]
    loaded = load(connection, table, types)
    assert len(loaded) == table.num_rows
    for index, (name, (array, pg_type)) in enumerate(columns.items()):
        expected = expected_values(array, pg_type)
        got = [row[index] for row in loaded]
        mismatches = [(i, g, e) for i, (g, e) in enumerate(zip(got, expected, strict=True)) if not same(g, e, pg_type)]
        assert not mismatches, f"{name} ({pg_type}): (row, loaded, expected) {mismatches[:5]}"


# --------------------------------------------------------------------------------------------------
# Every type, with nulls and edge values, as whole, sliced and chunked columns

TEXTS = [
    "",
    None,
    "a",
    "héllo wörld",
    "日本語のテキスト",
    "emoji 🎉🎉",
    "tab\tand\nnewline and \\ backslash",
    *("x" * length for length in (2, 3, 4, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 1000)),
    None,
]
JSONS = ['{"a": 1}', "[]", None, '"é"', '{"nested": {"k": [1, 2.5, null, true]}, "s": "\\u00e9 \\" quote"}']
JSONS += [json.dumps({"key": "v" * length}) for length in (0, 5, 40, 100, 3000)]
BLOBS = [b"", None, b"\x00", bytes(range(256)), b"\xff" * 70, b"ab", b"abcdefgh", None, b"\x01\x02\x03\x04\x05"]
UUID_TEXTS = [
    "123e4567-e89b-12d3-a456-426614174000",
    None,
    "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
    "00000000-0000-0000-0000-000000000000",
    "aBcDeF01-2345-6789-AbCd-Ef0123456789",
]
MICROS_2000 = 946_684_800_000_000
# Before 1970 and before 2000, at both epochs, around them, and Python's (and so psycopg's) first and
# last microsecond.
MOMENTS_US = [0, -1, 1, MICROS_2000, MICROS_2000 - 1, MICROS_2000 + 1, -62_135_596_800_000_000]
MOMENTS_US += [253_402_300_799_999_999, 1_700_000_000_123_456, None]

CASES: dict[str, tuple[pa.Array, str]] = {
    "smallint": (pa.array([-32768, 32767, 0, None, -1, 1], pa.int16()), "smallint"),
    "smallint from int64": (pa.array([-32768, 32767, None, 7], pa.int64()), "smallint"),
    "smallint from uint8": (pa.array([255, 0, None], pa.uint8()), "smallint"),
    "integer": (pa.array([-(2**31), 2**31 - 1, 0, None, 123456], pa.int32()), "integer"),
    "integer from uint16": (pa.array([65535, None, 1], pa.uint16()), "integer"),
    "bigint": (pa.array([-(2**63), 2**63 - 1, 0, None, -5], pa.int64()), "bigint"),
    "bigint from uint64": (pa.array([2**63 - 1, None, 0], pa.uint64()), "bigint"),
    "bigint from int8": (pa.array([-128, 127, None], pa.int8()), "bigint"),
    "boolean": (pa.array([True, False, None, True, False, None, True, True, False]), "boolean"),
    "real": (
        pa.array([1.5, -0.0, 0.0, math.nan, math.inf, -math.inf, None, 3.4028235e38, 1e-45, 0.1], pa.float32()),
        "real",
    ),
    "real from double": (pa.array([0.1, -0.0, math.nan, -math.inf, None, 1 / 3, 3.4e38]), "real"),
    "double precision": (
        pa.array([0.1, -0.0, math.nan, math.inf, -math.inf, None, 5e-324, 1.7976931348623157e308, -2.5]),
        "double precision",
    ),
    "double precision from real": (pa.array([0.1, -0.0, None, math.inf], pa.float32()), "double precision"),
    "text": (pa.array(TEXTS), "text"),
    "text from large_string": (pa.array(TEXTS, pa.large_string()), "text"),
    "text from dictionary": (pa.array(TEXTS).dictionary_encode(), "text"),
    "text of one length": (pa.array(["r", "s", None, "g", "r"]), "text"),
    "text all empty": (pa.array(["", None, ""]), "text"),
    "jsonb": (pa.array(JSONS), "jsonb"),
    "jsonb from large_string": (pa.array(JSONS, pa.large_string()), "jsonb"),
    "bytea": (pa.array(BLOBS, pa.binary()), "bytea"),
    "bytea from large_binary": (pa.array(BLOBS, pa.large_binary()), "bytea"),
    "bytea from fixed_size_binary": (pa.array([b"abc", None, b"\x00\x00\x00", b"\xff\xfe\xfd"], pa.binary(3)), "bytea"),
    "uuid": (pa.array(UUID_TEXTS), "uuid"),
    "uuid from large_string": (pa.array(UUID_TEXTS, pa.large_string()), "uuid"),
    "uuid from fixed_size_binary": (
        pa.array([None if t is None else uuid.UUID(t).bytes for t in UUID_TEXTS], pa.binary(16)),
        "uuid",
    ),
    "timestamptz us": (pa.array(MOMENTS_US, pa.timestamp("us")), "timestamptz"),
    "timestamptz us UTC": (pa.array(MOMENTS_US, pa.timestamp("us", "UTC")), "timestamptz"),
    "timestamptz us Paris": (pa.array(MOMENTS_US, pa.timestamp("us", "Europe/Paris")), "timestamptz"),
    "timestamptz ns": (
        # Nanoseconds floor to the microsecond below, before 1970 too.
        pa.array([-1, 1, 999, 1_000, -1_001, 1_999, None, MICROS_2000 * 1000 - 1, 2**63 - 1], pa.timestamp("ns")),
        "timestamptz",
    ),
    "timestamptz ms": (
        pa.array([0, -1, 253_402_300_799_999, -62_135_596_800_000, None], pa.timestamp("ms")),
        "timestamptz",
    ),
    "timestamptz s": (
        pa.array([0, -1, 946_684_800, -62_135_596_800, 253_402_300_799, None], pa.timestamp("s")),
        "timestamptz",
    ),
    "date": (
        pa.array([0, -1, 10_957, 10_956, 10_958, -719_162, 2_932_896, None], pa.int32()).cast(pa.date32()),
        "date",
    ),
    "time us": (pa.array([0, 86_399_999_999, None, 43_200_000_001, 1], pa.time64("us")), "time"),
    "time ns": (pa.array([0, 1_999, 86_399_999_999_999, None, 999], pa.time64("ns")), "time"),
    "time s": (pa.array([0, 86_399, None, 1], pa.time32("s")), "time"),
    "time ms": (pa.array([0, 86_399_999, None, 1], pa.time32("ms")), "time"),
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("case", CASES)
def test_each_type_loads_as_the_arrow_values(connection: psycopg.Connection, case: str, shape: str):
    array, pg_type = CASES[case]
    assert_loads(connection, {"value": (shaped(array, shape), pg_type)})


def test_every_type_side_by_side_loads_row_by_row(connection: psycopg.Connection):
    rows = 9
    assert_loads(connection, {name: (pa.concat_arrays([a] * rows)[:rows], t) for name, (a, t) in CASES.items()})


def test_a_record_batch_loads_like_a_table(connection: psycopg.Connection):
    batch = pa.record_batch({"id": pa.array([1, None, 3]), "name": pa.array(["a", "b", None])})
    assert load(connection, batch, ["bigint", "text"]) == [(1, "a"), (None, "b"), (3, None)]


def test_a_row_is_its_field_count_then_each_field_length_and_big_endian_value():
    table = pa.table({"n": pa.array([1], pa.int32()), "s": pa.array([None], pa.string()), "b": pa.array([b"xy"])})
    row = b"\x00\x03" + b"\x00\x00\x00\x04\x00\x00\x00\x01" + b"\xff\xff\xff\xff" + b"\x00\x00\x00\x02xy"
    assert bytes(binary_copy_payload(table, ["integer", "text", "bytea"])) == HEADER + row + TRAILER


def test_jsonb_values_carry_the_version_byte():
    table = pa.table({"j": pa.array(["[]"])})
    row = b"\x00\x01" + b"\x00\x00\x00\x03" + b"\x01[]"
    assert bytes(binary_copy_payload(table, ["jsonb"])) == HEADER + row + TRAILER


def test_an_empty_table_is_the_header_and_trailer_alone(connection: psycopg.Connection):
    table = pa.table({"a": pa.array([], pa.int64()), "b": pa.array([], pa.string())})
    assert bytes(binary_copy_payload(table, ["bigint", "text"])) == HEADER + TRAILER
    assert load(connection, table, ["bigint", "text"]) == []


def test_an_empty_chunked_column_loads_no_rows(connection: psycopg.Connection):
    table = pa.table({"a": pa.chunked_array([], pa.int64())})
    assert load(connection, table, ["bigint"]) == []


def test_dictionary_chunks_with_dictionaries_of_their_own_load(connection: psycopg.Connection):
    chunks = [pa.array(["a", "b", "a"]).dictionary_encode(), pa.array(["c", None, "a"]).dictionary_encode()]
    table = pa.table({"d": pa.chunked_array(chunks)})
    assert load(connection, table, ["text"]) == [("a",), ("b",), ("a",), ("c",), (None,), ("a",)]


# --------------------------------------------------------------------------------------------------
# Larger tables: many blocks of rows, many patterns of nulls, payloads over 1 MiB


def random_columns(rng: np.random.Generator, rows: int) -> dict[str, tuple[pa.Array, str]]:
    """One column per kind of field, each with its own nulls; strings of every length class."""

    def mask() -> np.ndarray:
        return rng.random(rows) < rng.choice([0.0, 0.1, 0.5, 0.9])

    lengths = rng.integers(0, 90, rows)
    letters = [("é" * (length // 2) + "z" * (length % 2)) for length in lengths.tolist()]
    moments = rng.integers(-(2**50), 2**52, rows)
    return {
        "big": (pa.array(rng.integers(-(2**63), 2**63 - 1, rows, dtype=np.int64), mask=mask()), "bigint"),
        "int": (pa.array(rng.integers(-(2**31), 2**31 - 1, rows, dtype=np.int64), mask=mask()), "integer"),
        "small": (pa.array(rng.integers(-(2**15), 2**15 - 1, rows).astype(np.int16), mask=mask()), "smallint"),
        "flag": (pa.array(rng.random(rows) < 0.5, mask=mask()), "boolean"),
        "ratio": (pa.array(rng.standard_normal(rows).astype(np.float32), mask=mask()), "real"),
        "amount": (pa.array(rng.standard_normal(rows) * 1e6, mask=mask()), "double precision"),
        "name": (pa.array(letters, mask=mask()), "text"),
        "blob": (pa.array([b"\x00" * length for length in lengths.tolist()], pa.binary(), mask=mask()), "bytea"),
        "key": (pa.array([str(uuid.UUID(int=int(v))) for v in rng.integers(0, 2**62, rows)], mask=mask()), "uuid"),
        "at": (pa.array(moments, pa.timestamp("us"), mask=mask()), "timestamptz"),
        "day": (
            pa.array(rng.integers(-700_000, 2_900_000, rows).astype(np.int32), mask=mask()).cast(pa.date32()),
            "date",
        ),
        "clock": (pa.array(rng.integers(0, 86_400 * 10**6, rows), pa.time64("us"), mask=mask()), "time"),
        "doc": (pa.array([json.dumps({"n": length}) for length in lengths.tolist()], mask=mask()), "jsonb"),
    }


def test_tens_of_thousands_of_rows_load_across_blocks(connection: psycopg.Connection):
    rng = np.random.default_rng(11)
    columns = random_columns(rng, 40_000)
    columns = {
        name: (shaped(array, "chunked" if index % 2 else "sliced"), t)
        for index, (name, (array, t)) in enumerate(columns.items())
    }
    assert_loads(connection, columns)


def test_short_values_ending_rows_leave_the_next_rows_values_intact(connection: psycopg.Connection):
    """A row's last value may be copied in one move that runs on past it: not into the next row's values.

    The rows are sent as they are (no leading row number), so each starts with a value; compared unordered.
    """
    rng = np.random.default_rng(3)
    words = ["".join(rng.choice(list("abcdefgh"), length)) for length in rng.integers(0, 40, 2_000)]
    first, blobs = [f"{index}:{word}" for index, word in enumerate(words[::-1])], [word.encode() for word in words]
    table = pa.table({"first": first, "blob": pa.array(blobs, pa.binary()), "last": words})
    loaded = load(connection, table, ["text", "bytea", "text"], ordered=False)
    assert sorted(loaded) == sorted(zip(first, blobs, words, strict=True))


def test_many_independently_null_columns_load(connection: psycopg.Connection):
    """More nullable columns, and patterns of nulls, than one record layout per pattern can take."""
    rng = np.random.default_rng(5)
    rows = 3_000
    columns = {
        f"c{index}": (pa.array(rng.integers(0, 100, rows), mask=rng.random(rows) < 0.5), "bigint")
        for index in range(40)
    }
    columns["last"] = (pa.array(rng.random(rows) < 0.5, mask=rng.random(rows) < 0.3), "boolean")
    assert_loads(connection, columns)


# --------------------------------------------------------------------------------------------------
# Random tables


# What text and jsonb hold: no NUL, no lone surrogate (UTF-8 cannot spell one, jsonb refuses its escape).
CHARACTERS = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
KINDS: dict[str, tuple[st.SearchStrategy, pa.DataType, str]] = {
    "smallint": (st.integers(-(2**15), 2**15 - 1), pa.int16(), "smallint"),
    "integer": (st.integers(-(2**31), 2**31 - 1), pa.int32(), "integer"),
    "bigint": (st.integers(-(2**63), 2**63 - 1), pa.int64(), "bigint"),
    "boolean": (st.booleans(), pa.bool_(), "boolean"),
    "real": (st.floats(width=32), pa.float32(), "real"),
    "double": (st.floats(), pa.float64(), "double precision"),
    "text": (st.text(CHARACTERS), pa.string(), "text"),
    "bytea": (st.binary(max_size=80), pa.binary(), "bytea"),
    "uuid": (st.uuids().map(str), pa.string(), "uuid"),
    "timestamptz": (
        st.datetimes(timezones=st.just(dt.UTC)).map(
            lambda moment: (moment - UTC_EPOCH) // dt.timedelta(microseconds=1)
        ),
        pa.timestamp("us", "UTC"),
        "timestamptz",
    ),
    "timestamptz ns": (st.integers(-(2**63), 2**63 - 1), pa.timestamp("ns"), "timestamptz"),
    "date": (st.dates().map(lambda day: (day - dt.date(1970, 1, 1)).days), pa.date32(), "date"),
    "time": (st.integers(0, 86_400 * 10**9 - 1), pa.time64("ns"), "time"),
    "jsonb": (
        st.recursive(
            st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(CHARACTERS),
            lambda children: (
                st.lists(children, max_size=3) | st.dictionaries(st.text(CHARACTERS, max_size=5), children, max_size=3)
            ),
            max_leaves=6,
        ).map(json.dumps),
        pa.string(),
        "jsonb",
    ),
}


@st.composite
def random_tables(draw: st.DrawFn) -> dict[str, tuple[pa.Array | pa.ChunkedArray, str]]:
    """Up to 12 columns of random kinds and shapes, with nulls anywhere."""
    rows = draw(st.integers(0, 25))
    kinds = draw(st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=12))
    columns = {}
    for index, kind in enumerate(kinds):
        values, arrow, pg_type = KINDS[kind]
        drawn = draw(st.lists(st.none() | values, min_size=rows, max_size=rows))
        # Days are drawn as integers, which Arrow takes for date32 only by a cast.
        array = pa.array(drawn, pa.int32()).cast(arrow) if arrow == pa.date32() else pa.array(drawn, arrow)
        columns[f"{kind.replace(' ', '_')}_{index}"] = (shaped(array, draw(st.sampled_from(SHAPES))), pg_type)
    return columns


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(columns=random_tables())
def test_random_tables_load_as_their_arrow_values(connection: psycopg.Connection, columns):
    assert_loads(connection, columns)


# --------------------------------------------------------------------------------------------------
# Refusals


def payload_of(array: pa.Array, pg_type: str) -> memoryview:
    return binary_copy_payload(pa.table({"col": array}), [pg_type])


@pytest.mark.parametrize(
    ("array", "pg_type"),
    [
        pytest.param(pa.array([1, 2]), "text", id="int64 as text"),
        pytest.param(pa.array([1.5]), "integer", id="double as integer"),
        pytest.param(pa.array(["2020-01-01"]), "date", id="string as date"),
        pytest.param(pa.array([1], pa.int64()), "boolean", id="int64 as boolean"),
        pytest.param(pa.array([b"x"]), "text", id="binary as text"),
        pytest.param(pa.array(["x"]), "bytea", id="string as bytea"),
        pytest.param(pa.array([b"0123456789abcdef0"], pa.binary(17)), "uuid", id="17 bytes as uuid"),
        pytest.param(pa.array([0], pa.date64()), "date", id="date64 as date"),
        pytest.param(pa.array([0], pa.timestamp("us")), "date", id="timestamp as date"),
        pytest.param(pa.array([1.5], pa.float16()), "real", id="half float as real"),
        pytest.param(pa.array([None]), "bigint", id="null type as bigint"),
    ],
)
def test_an_arrow_type_the_postgresql_type_cannot_take_is_a_type_error_naming_the_column(array, pg_type):
    with pytest.raises(TypeError, match="column 'col'"):
        payload_of(array, pg_type)


def test_an_unknown_postgresql_type_is_refused_naming_the_column():
    with pytest.raises(ValueError, match=r"column 'col'.*'inet'"):
        payload_of(pa.array([1]), "inet")


def test_as_many_types_as_columns_are_required():
    with pytest.raises(ValueError, match="2 PostgreSQL types for 1 columns"):
        binary_copy_payload(pa.table({"a": [1]}), ["bigint", "bigint"])


@pytest.mark.parametrize(
    "text",
    [
        "123e4567-e89b-12d3-a456-42661417400",  # 35 characters
        "123e4567-e89b-12d3-a456-4266141740000",  # 37
        "123e4567e89b-12d3-a456-4266141740000",  # a hyphen missing
        "123e4567-e89b-12d3-a456-42661417400g",  # not hex
        "123e4567-e89b-12d3-a456_426614174000",  # not a hyphen
        "{23e4567-e89b-12d3-a456-426614174000",
        "",
    ],
)
def test_text_that_is_not_a_uuid_is_refused_naming_the_column_and_value(text: str):
    with pytest.raises(ValueError, match=re.escape(f"column 'col': '{text[:8]}")):
        payload_of(pa.array(["00000000-0000-0000-0000-000000000000", None, text]), "uuid")


@pytest.mark.parametrize(
    ("values", "arrow", "pg_type"),
    [
        ([32768], pa.int32(), "smallint"),
        ([-32769], pa.int64(), "smallint"),
        ([None, 1, 70_000], pa.int64(), "smallint"),
        ([2**31], pa.int64(), "integer"),
        ([2**63], pa.uint64(), "bigint"),
        ([1e39], pa.float64(), "real"),
        ([1e-50], pa.float64(), "real"),
        ([2**62], pa.timestamp("s"), "timestamptz"),
        ([-(2**63)], pa.timestamp("us"), "timestamptz"),
        ([-2_500_000], pa.int32(), "date"),
        ([2**31 - 1], pa.int32(), "date"),
        ([86_400 * 10**6 + 1], pa.int64(), "time"),
        ([-1], pa.int64(), "time"),
    ],
)
def test_a_value_postgresql_cannot_hold_is_refused_naming_the_column(values, arrow, pg_type):
    array = pa.array(values, arrow)
    if pg_type == "date":
        array = array.cast(pa.date32())
    elif pg_type == "time":
        array = array.cast(pa.time64("us"))
    with pytest.raises(ValueError, match=r"column 'col'.*out of range"):
        payload_of(array, pg_type)


# PostgreSQL's first and last timestamp and date (its documentation: 4713 BC to 294276 AD, and to
# 5874897 AD), in Arrow's units.
FIRST_TIMESTAMP_S = -210_866_803_200
LAST_TIMESTAMP_S = 9_224_318_015_999
FIRST_DATE = -2_440_588
LAST_DATE = 2_145_042_905


def test_postgresqls_first_and_last_timestamps_and_dates_load(connection: psycopg.Connection):
    table = pa.table(
        {
            "at": pa.array([FIRST_TIMESTAMP_S, LAST_TIMESTAMP_S], pa.timestamp("s")),
            "day": pa.array([FIRST_DATE, LAST_DATE], pa.int32()).cast(pa.date32()),
        }
    )
    assert load(connection, table, ["timestamptz", "date"], as_text=True) == [
        ("4714-11-24 00:00:00+00 BC", "4714-11-24 BC"),
        ("294276-12-31 23:59:59+00", "5874897-12-31"),
    ]


@pytest.mark.parametrize(
    ("value", "arrow", "pg_type"),
    [
        (FIRST_TIMESTAMP_S - 1, pa.timestamp("s"), "timestamptz"),
        (LAST_TIMESTAMP_S + 1, pa.timestamp("s"), "timestamptz"),
        (FIRST_DATE - 1, pa.date32(), "date"),
        (LAST_DATE + 1, pa.date32(), "date"),
    ],
)
def test_a_moment_past_postgresqls_range_is_refused(value: int, arrow: pa.DataType, pg_type: str):
    array = pa.array([value], pa.int64() if arrow != pa.date32() else pa.int32()).cast(arrow)
    with pytest.raises(ValueError, match="out of range"):
        payload_of(array, pg_type)


def test_whatever_a_null_slot_holds_is_not_checked(connection: psycopg.Connection):
    """Arrow leaves a null's slot undefined: an out-of-range value there is no error."""
    values = pa.py_buffer(np.array([1, 1 << 40, 2], dtype=np.int64).tobytes())
    validity = pa.py_buffer(np.packbits([1, 0, 1], bitorder="little").tobytes())
    array = pa.Array.from_buffers(pa.int64(), 3, [validity, values], null_count=1)
    assert load(connection, pa.table({"col": array}), ["smallint"]) == [(1,), (None,), (2,)]


def test_a_null_uuid_slot_need_not_hold_a_uuid(connection: psycopg.Connection):
    text = b"123e4567-e89b-12d3-a456-426614174000" + b"x" * 36
    offsets = pa.py_buffer(np.array([0, 36, 72], dtype=np.int32).tobytes())
    validity = pa.py_buffer(np.packbits([1, 0], bitorder="little").tobytes())
    array = pa.Array.from_buffers(pa.string(), 2, [validity, offsets, pa.py_buffer(text)], null_count=1)
    assert load(connection, pa.table({"col": array}), ["uuid"]) == [(uuid.UUID(text[:36].decode()),), (None,)]


# --------------------------------------------------------------------------------------------------
# numeric, from plain decimal text

_DECIMALS = st.builds(
    lambda sign, whole, fraction: sign + whole + ("." + fraction if fraction else ""),
    st.sampled_from(["", "-"]),
    st.text("0123456789", min_size=1, max_size=30),
    st.text("0123456789", max_size=30),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.one_of(st.none(), _DECIMALS), max_size=40))
def test_decimal_text_loads_as_the_numeric_postgresql_reads_from_the_same_text(
    connection: psycopg.Connection, texts: list[str | None]
):
    payload = binary_copy_payload(
        pa.table({"i": pa.array(range(len(texts)), pa.int32()), "n": pa.array(texts, pa.string())}),
        ["integer", "numeric"],
    )
    connection.execute("CREATE TEMPORARY TABLE IF NOT EXISTS numerics (i integer, n numeric, t text)")
    connection.execute("TRUNCATE numerics")
    with connection.cursor().copy("COPY numerics (i, n) FROM STDIN WITH (FORMAT binary)") as copy:
        copy.write(payload)
    for index, text in enumerate(texts):
        connection.execute("UPDATE numerics SET t = %s WHERE i = %s", [text, index])
    rows = connection.execute("SELECT i, n::text, t::numeric::text FROM numerics ORDER BY i").fetchall()
    assert [(sent, parsed) for _, sent, parsed in rows] == [(parsed, parsed) for _, _, parsed in rows]
    assert len(rows) == len(texts)


@pytest.mark.parametrize("text", ["1e5", "1.", ".5", "NaN", "1,5", "--1", " 1"])
def test_decimal_text_that_is_not_plain_is_refused_naming_the_column(text: str):
    with pytest.raises(ValueError, match="'price'"):
        binary_copy_payload(pa.table({"price": pa.array(["1.5", text])}), ["numeric"])
