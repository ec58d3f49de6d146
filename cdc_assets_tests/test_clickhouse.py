"""The ClickHouse destination against the real engine (chdb): types, Cassandra's merge rules, evolution, crashes."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from cdc_assets.cassandra_model import CassandraModel
from cdc_assets.cassandra_schema.tables import Column, DroppedColumn, TableSchema
from cdc_assets.cassandra_schema.types import CqlType, parse_type
from cdc_assets.change_batch import Position, arrow_type, build_change_batch
from cdc_assets.dead_letters import DeadLetterStore
from cdc_assets.destinations.base import PermanentDestinationError, TransientDestinationError
from cdc_assets.destinations.cassandra_values import canonical_value, order_bytes, value_bytes
from cdc_assets.destinations.clickhouse.destination import ClickHouseDestination
from cdc_assets.destinations.clickhouse.types import (
    clickhouse_type,
    nullable,
    order_key_sql,
    quote,
    reconcile_key_sql,
    to_clickhouse_arrow,
)

Factory = Callable[[Path | None], ClickHouseDestination]

NOW = datetime(2030, 1, 1, tzinfo=UTC)
NOW_S = int(NOW.timestamp())
TABLE_ID = uuid.UUID("00000000-0000-4000-8000-0000000000c1")

ADDRESS = CqlType("udt", (parse_type("int"), parse_type("text")), name="address", field_names=("number", "street"))
FROZEN_ADDRESS = ADDRESS.freeze()


def cql(text: str) -> CqlType:
    return parse_type(text, {"address": FROZEN_ADDRESS})


def make_table(*columns: tuple[str, str | CqlType, str], name: str = "t") -> TableSchema:
    """A table from (name, CQL type, kind) triples; keys and clustering take their order from the list."""
    built, positions = [], {"partition_key": 0, "clustering": 0}
    for column_name, column_type, kind in columns:
        descending = kind == "clustering desc"
        kind = "clustering" if descending else kind
        typed = cql(column_type) if isinstance(column_type, str) else column_type
        position = positions.get(kind, -1)
        if kind in positions:
            positions[kind] += 1
        built.append(Column(column_name, typed, kind, position, descending))  # type: ignore[arg-type]
    return TableSchema("ks", name, TABLE_ID, tuple(built))


def cell(value: Any, writetime: int, *, expires_at: int | None = None, deleted: bool = False) -> dict[str, Any]:
    ttl = None if expires_at is None else 60
    return {"value": value, "writetime": writetime, "ttl": ttl, "expires_at": expires_at, "deleted": deleted}


def element(path: Any, writetime: int, value: Any = None, *, deleted: bool = False) -> dict[str, Any]:
    item = {"path": path, "writetime": writetime, "ttl": None, "expires_at": None, "deleted": deleted}
    if value is not None:
        item["value"] = value
    return item


def row(key: dict, clustering: dict | None = None, cells: dict | None = None, **extra: Any) -> dict[str, Any]:
    return {"kind": "row", "key": key, "clustering": clustering, "cells": cells, **extra}


def load(destination: ClickHouseDestination, table: TableSchema, changes: list[dict], load_id: str) -> pa.RecordBatch:
    for position, change in enumerate(changes):
        change.setdefault("segment_id", 7)
        change.setdefault("position", position)
    batch = build_change_batch(table, changes)
    destination.load(table, batch, load_id=load_id)
    return batch


KV = make_table(
    ("k", "int", "partition_key"), ("c", "int", "clustering"), ("a", "int", "regular"), ("b", "text", "regular")
)


def kv_state(destination: ClickHouseDestination, now: datetime = NOW) -> list[tuple[Any, ...]]:
    return [(r["k"], r["c"], r["a"], r["b"]) for r in destination.current_state(KV, now=now)]


# -- types ------------------------------------------------------------------------------------------

# (CQL type, value as the change batch holds it, the canonical value Cassandra would return)
EVERY_TYPE = [
    ("ascii", "plain", "plain"),
    ("bigint", -(2**63), -(2**63)),
    ("blob", b"\x00\xffbytes", b"\x00\xffbytes"),
    ("boolean", True, True),
    ("counter", [(b"\x0a" * 16, 3, 40), (b"\x0b" * 16, 1, 2)], 42),
    ("date", -719528, -719528),
    ("decimal", "-12.3400", Decimal("-12.3400")),
    ("double", 2.5e300, 2.5e300),
    ("duration", (1, 2, 3_000_000_001), (1, 2, 3_000_000_001)),
    ("float", 1.5, 1.5),
    ("inet", "2001:db8::1", "2001:db8::1"),
    ("int", -(2**31), -(2**31)),
    ("smallint", -32768, -32768),
    ("text", "héllo ✓", "héllo ✓"),
    ("time", 86_399_999_999_999, 86_399_999_999_999),
    ("timestamp", -62_135_596_800_001, -62_135_596_800_001),
    ("timeuuid", "d2177dd0-eaa2-11de-a572-001b779c76e3", "d2177dd0-eaa2-11de-a572-001b779c76e3"),
    ("tinyint", -128, -128),
    ("uuid", "123e4567-e89b-42d3-a456-426614174000", "123e4567-e89b-42d3-a456-426614174000"),
    ("varint", "-123456789012345678901234567890", -123456789012345678901234567890),
    ("frozen<list<int>>", [3, 1, 2], [3, 1, 2]),
    ("frozen<set<text>>", ["b", "a"], ["a", "b"]),
    ("frozen<map<text, int>>", [("b", 2), ("a", 1)], [("a", 1), ("b", 2)]),
    ("tuple<int, text>", {"f0": 1, "f1": None}, {"f0": 1, "f1": None}),
    ("frozen<address>", {"number": 7, "street": "elm"}, {"number": 7, "street": "elm"}),
    ("vector<float, 3>", [1.0, 2.5, -3.0], [1.0, 2.5, -3.0]),
    ("frozen<list<duration>>", [(0, 1, 2), (3, 0, 0)], [(0, 1, 2), (3, 0, 0)]),
    (
        "frozen<map<timestamp, frozen<list<uuid>>>>",
        [(5, ["00000000-0000-4000-8000-000000000002"])],
        [(5, ["00000000-0000-4000-8000-000000000002"])],
    ),
    ("frozen<tuple<date, time, inet>>", {"f0": 3, "f1": 4, "f2": "10.0.0.1"}, {"f0": 3, "f1": 4, "f2": "10.0.0.1"}),
    # Collections in fields, null, empty or not, of the types ClickHouse reads least plainly.
    (
        "frozen<tuple<frozen<list<uuid>>, frozen<map<timestamp, frozen<list<duration>>>>, frozen<set<date>>>>",
        {"f0": ["00000000-0000-4000-8000-000000000002"], "f1": [(5, [(0, 1, 2)])], "f2": None},
        {"f0": ["00000000-0000-4000-8000-000000000002"], "f1": [(5, [(0, 1, 2)])], "f2": None},
    ),
    (
        "frozen<tuple<vector<float, 2>, frozen<list<frozen<tuple<time, inet, frozen<set<timeuuid>>>>>>>>",
        {"f0": None, "f1": [{"f0": 4, "f1": "10.0.0.1", "f2": []}, {"f0": None, "f1": None, "f2": None}]},
        {"f0": None, "f1": [{"f0": 4, "f1": "10.0.0.1", "f2": []}, {"f0": None, "f1": None, "f2": None}]},
    ),
]


def test_every_cql_type_round_trips_through_clickhouse(clickhouse: ClickHouseDestination) -> None:
    columns = [(f"c{i}", type_text, "regular") for i, (type_text, _, _) in enumerate(EVERY_TYPE)]
    table = make_table(("id", "int", "partition_key"), *columns)
    clickhouse.ensure_table(table)
    cells = {f"c{i}": cell(value, 10) for i, (_, value, _) in enumerate(EVERY_TYPE)}
    load(clickhouse, table, [row({"id": 1}, cells=cells), row({"id": 2}, row_writetime=10)], "types")

    full, empty = clickhouse.current_state(table, now=NOW)

    assert {name: full[name] for name in cells} == {
        f"c{i}": canonical for i, (_, _, canonical) in enumerate(EVERY_TYPE)
    }
    assert {name: empty[name] for name in cells} == dict.fromkeys(cells)


def test_non_frozen_collections_and_user_types_round_trip(clickhouse: ClickHouseDestination) -> None:
    table = make_table(
        ("id", "int", "partition_key"),
        ("names", "list<text>", "regular"),
        ("ids", "set<uuid>", "regular"),
        ("spans", "map<int, duration>", "regular"),
        ("home", ADDRESS, "regular"),
    )
    clickhouse.ensure_table(table)
    first, second = "00000000-0000-1000-8000-000000000000", "00000001-0000-1000-8000-000000000000"
    ids = ["10000000-0000-4000-8000-000000000000", "00000000-0000-4000-8000-000000000001"]
    cells = {
        "names": {"deletion": None, "cells": [element(second, 5, "later"), element(first, 5, "earlier")]},
        "ids": {"deletion": None, "cells": [element(ids[0], 5), element(ids[1], 5)]},
        "spans": {"deletion": None, "cells": [element(2, 5, (0, 0, 7)), element(1, 5, (1, 1, 1))]},
        "home": {"deletion": None, "cells": {"number": None, "street": cell("oak", 5)}},
    }
    load(clickhouse, table, [row({"id": 1}, cells=cells)], "collections")

    assert clickhouse.current_state(table, now=NOW) == [
        {
            "id": 1,
            "names": ["earlier", "later"],
            "ids": sorted(ids),
            "spans": [(1, (1, 1, 1)), (2, (0, 0, 7))],
            "home": {"number": None, "street": "oak"},
        }
    ]


def test_keys_and_clustering_of_many_types_round_trip_in_clustering_order(clickhouse: ClickHouseDestination) -> None:
    table = make_table(
        ("tenant", "text", "partition_key"),
        ("device", "uuid", "partition_key"),
        ("at", "timestamp", "clustering desc"),
        ("tag", "blob", "clustering"),
        ("reading", "double", "regular"),
    )
    clickhouse.ensure_table(table)
    device = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
    key = {"tenant": "acme", "device": device}
    changes = [
        row(key, {"at": at, "tag": tag}, {"reading": cell(value, 3)})
        for at, tag, value in [(1000, b"a", 1.0), (2000, b"\x00", 2.0), (2000, b"b", 3.0)]
    ]
    load(clickhouse, table, changes, "keys")

    state = clickhouse.current_state(table, now=NOW)

    assert [(r["tenant"], r["device"], r["at"], r["tag"], r["reading"]) for r in state] == [
        ("acme", device, 2000, b"\x00", 2.0),
        ("acme", device, 2000, b"b", 3.0),
        ("acme", device, 1000, b"a", 1.0),
    ]


# Values per type, chosen so that serialized bytes and comparator order disagree with naive orders.
ORDER_SAMPLES = {
    "int": [-1, 1, 0, 256, -(2**31)],
    "bigint": [-5, 5, 2**40],
    "tinyint": [-128, 127, -1],
    "float": [-0.5, 0.5, -2.0, 0.0, float("inf")],
    "double": [-1e10, 1e-10, 0.0, -0.0],
    "text": ["b", "ab", "é", ""],
    "blob": [b"\xff", b"\x00\x01", b""],
    "boolean": [True, False],
    "timestamp": [-1, 1, 10**12],
    "date": [-3, 0, 19000],
    "time": [0, 5, 86_399_999_999_999],
    "uuid": [
        "00000000-0000-4000-8000-000000000001",
        "ffffffff-0000-1000-8000-000000000000",
        "00000001-0000-1000-8000-000000000000",
        "00000000-0000-4000-0000-000000000001",
    ],
    "timeuuid": [
        "00000001-0000-1000-8000-000000000000",
        "00000000-0001-1000-8000-000000000000",
        "00000000-0001-1000-7f00-000000000000",
    ],
    "inet": ["10.0.0.2", "9.255.0.1", "::1", "fe80::1"],
    "varint": ["0", "127", "128", "-1", "-129", "256", "-98765432109876543210"],
    "decimal": ["1.5", "-0.01", "1.5E+3", "0", "12.340"],
    "duration": [(1, 2, 3), (-1, -2, -3), (0, 0, 200), (0, 70, 0)],
    "frozen<list<int>>": [[1, 2], [1], [-1], []],
    "frozen<map<text, int>>": [[("a", 1)], [("a", 1), ("b", 2)], [("b", 0)]],
    "tuple<int, text>": [{"f0": 1, "f1": "x"}, {"f0": None, "f1": "y"}, {"f0": -1, "f1": None}],
    "frozen<address>": [{"number": 2, "street": "elm"}, {"number": 10, "street": None}],
    "vector<int, 2>": [[1, 2], [-1, 0]],
    "tuple<int, frozen<set<int>>>": [{"f0": 1, "f1": [1, 2]}, {"f0": 1, "f1": []}, {"f0": 1, "f1": None}],
    "tuple<frozen<list<text>>, frozen<map<int, uuid>>>": [
        {"f0": None, "f1": []},
        {"f0": [], "f1": None},
        {"f0": ["a"], "f1": [(1, "00000000-0000-4000-8000-000000000001")]},
        {"f0": [""], "f1": [(-1, "00000000-0000-4000-8000-000000000002")]},
    ],
}


def sample_table(clickhouse: ClickHouseDestination, type_text: str) -> tuple[str, CqlType, list[Any]]:
    """A ClickHouse table ``(id, v)`` holding ``type_text``'s samples; its name, the type, the canonical samples."""
    cql_type = cql(type_text)
    samples = ORDER_SAMPLES[type_text]
    database = f"{clickhouse.database_prefix}samples"
    target = f"{quote(database)}.{quote(f'samples_{sorted(ORDER_SAMPLES).index(type_text)}')}"
    client = clickhouse.client
    client.command(f"CREATE DATABASE IF NOT EXISTS {quote(database)}")
    column_type = nullable(clickhouse_type(cql_type))
    client.command(f"CREATE TABLE {target} (id Int32, v {column_type}) ENGINE = MergeTree ORDER BY id")
    values = to_clickhouse_arrow(cql_type, pa.array(samples, arrow_type(cql_type)))
    client.insert_arrow(target, pa.table({"id": pa.array(range(len(samples)), pa.int32()), "v": values}))
    return target, cql_type, [canonical_value(cql_type, sample) for sample in samples]


@pytest.mark.parametrize("type_text", sorted(ORDER_SAMPLES))
def test_reconcile_key_is_cassandras_serialized_value(clickhouse: ClickHouseDestination, type_text: str) -> None:
    target, cql_type, canonical = sample_table(clickhouse, type_text)
    key = reconcile_key_sql(cql_type, "assumeNotNull(v)")

    stored = clickhouse.client.query(f"SELECT hex({key}) FROM {target} ORDER BY id").result_rows

    assert [value for (value,) in stored] == [value_bytes(cql_type, value).hex().upper() for value in canonical]


@pytest.mark.parametrize("type_text", sorted(set(ORDER_SAMPLES) - {"duration"}))
def test_order_key_sorts_as_cassandras_comparator(clickhouse: ClickHouseDestination, type_text: str) -> None:
    target, cql_type, canonical = sample_table(clickhouse, type_text)

    ids = clickhouse.client.query(f"SELECT id FROM {target} ORDER BY {order_key_sql(cql_type, 'assumeNotNull(v)')}, id")

    expected = sorted(range(len(canonical)), key=lambda i: (order_bytes(cql_type, canonical[i]), i))
    assert [i for (i,) in ids.result_rows] == expected


# -- Cassandra's merge rules ------------------------------------------------------------------------


def test_the_newer_write_wins_whatever_the_arrival_order(clickhouse: ClickHouseDestination) -> None:
    load(clickhouse, KV, [row({"k": 1}, {"c": 1}, {"a": cell(2, 20)})], "newer")
    load(clickhouse, KV, [row({"k": 1}, {"c": 1}, {"a": cell(1, 10), "b": cell("old", 10)})], "older")

    assert kv_state(clickhouse) == [(1, 1, 2, "old")]


def test_on_equal_write_times_a_tombstone_beats_a_live_cell(clickhouse: ClickHouseDestination) -> None:
    load(clickhouse, KV, [row({"k": 1}, {"c": 1}, {"a": cell(None, 10, deleted=True)}, row_writetime=5)], "delete")
    load(clickhouse, KV, [row({"k": 1}, {"c": 1}, {"a": cell(7, 10)})], "write")

    assert kv_state(clickhouse) == [(1, 1, None, None)]


def test_on_equal_write_times_the_greater_serialized_value_wins(clickhouse: ClickHouseDestination) -> None:
    # -1 serializes as ff ff ff ff, greater than 00 00 00 01 unsigned: Cassandra keeps -1.
    load(clickhouse, KV, [row({"k": 1}, {"c": 1}, {"a": cell(-1, 10), "b": cell("b", 10)})], "first")
    load(clickhouse, KV, [row({"k": 1}, {"c": 1}, {"a": cell(1, 10), "b": cell("ab", 10)})], "second")

    assert kv_state(clickhouse) == [(1, 1, -1, "b")]


def test_on_equal_write_times_an_expiring_row_liveness_beats_a_plain_one(clickhouse: ClickHouseDestination) -> None:
    plain = row({"k": 1}, {"c": 1}, row_writetime=10)
    expired = row({"k": 1}, {"c": 1}, row_writetime=10, row_ttl=60, row_expires_at=NOW_S - 1)
    load(clickhouse, KV, [plain, expired], "inserts")

    assert kv_state(clickhouse) == []


def test_a_counter_tombstone_beats_newer_counter_cells(clickhouse: ClickHouseDestination) -> None:
    table = make_table(("k", "int", "partition_key"), ("hits", "counter", "regular"))
    changes = [
        row({"k": 1}, cells={"hits": cell(None, 10, deleted=True)}),
        row({"k": 1}, cells={"hits": cell([(b"\x0a" * 16, 1, 5)], 20)}),
        row({"k": 2}, cells={"hits": cell([(b"\x0a" * 16, 1, 7)], 20)}),
    ]
    load(clickhouse, table, changes, "counters")

    assert clickhouse.current_state(table, now=NOW) == [{"k": 2, "hits": 7}]


def test_a_partial_update_changes_only_its_columns(clickhouse: ClickHouseDestination) -> None:
    load(clickhouse, KV, [row({"k": 1}, {"c": 1}, {"a": cell(1, 10), "b": cell("kept", 10)}, row_writetime=10)], "i")
    load(clickhouse, KV, [row({"k": 1}, {"c": 1}, {"a": cell(2, 20)})], "update")

    assert kv_state(clickhouse) == [(1, 1, 2, "kept")]


def test_a_row_deletion_hides_what_was_written_at_or_before_it(clickhouse: ClickHouseDestination) -> None:
    changes = [
        row({"k": 1}, {"c": 1}, {"a": cell(1, 10), "b": cell("after", 21)}, row_writetime=10),
        row({"k": 1}, {"c": 2}, {"a": cell(2, 20)}, row_writetime=20),
        row({"k": 1}, {"c": 1}, deletion_writetime=20),
        row({"k": 1}, {"c": 2}, deletion_writetime=20),
    ]
    load(clickhouse, KV, changes, "rows")

    assert kv_state(clickhouse) == [(1, 1, None, "after")]


def test_a_range_deletion_covers_its_bounds_in_clustering_order(clickhouse: ClickHouseDestination) -> None:
    table = make_table(("k", "int", "partition_key"), ("c", "int", "clustering desc"), ("a", "int", "regular"))
    clickhouse.ensure_table(table)
    writes = [row({"k": 1}, {"c": c}, {"a": cell(c, 10)}) for c in range(5)]
    # DELETE ... WHERE k = 1 AND c < 3 AND c >= 1: on a DESC column the range starts at 3 (exclusive).
    deletion = {
        "kind": "range_deletion",
        "key": {"k": 1},
        "deletion_writetime": 10,
        "range_start": {"c": 3},
        "range_start_inclusive": False,
        "range_end": {"c": 1},
        "range_end_inclusive": True,
    }
    load(clickhouse, table, [*writes, deletion], "range")

    assert [(r["c"], r["a"]) for r in clickhouse.current_state(table, now=NOW)] == [(4, 4), (3, 3), (0, 0)]


STATIC_TABLE = make_table(
    ("k", "int", "partition_key"), ("c", "int", "clustering"), ("s", "text", "static"), ("a", "int", "regular")
)


def test_a_partition_deletion_hides_rows_and_static_values_written_before_it(clickhouse: ClickHouseDestination) -> None:
    changes = [
        {"kind": "static_row", "key": {"k": 1}, "cells": {"s": cell("old", 10)}},
        row({"k": 1}, {"c": 1}, {"a": cell(1, 10)}, row_writetime=10),
        row({"k": 1}, {"c": 2}, {"a": cell(2, 30)}),
        {"kind": "partition_deletion", "key": {"k": 1}, "deletion_writetime": 20},
    ]
    load(clickhouse, STATIC_TABLE, changes, "partition")

    assert clickhouse.current_state(STATIC_TABLE, now=NOW) == [{"k": 1, "c": 2, "s": None, "a": 2}]


def test_static_values_show_on_every_row_or_alone_without_rows(clickhouse: ClickHouseDestination) -> None:
    changes = [
        {"kind": "static_row", "key": {"k": 1}, "cells": {"s": cell("shared", 10)}},
        row({"k": 1}, {"c": 1}, {"a": cell(1, 10)}),
        row({"k": 1}, {"c": 2}, {"a": cell(2, 10)}),
        {"kind": "static_row", "key": {"k": 2}, "cells": {"s": cell("alone", 10)}},
    ]
    load(clickhouse, STATIC_TABLE, changes, "statics")

    assert clickhouse.current_state(STATIC_TABLE, now=NOW) == [
        {"k": 1, "c": 1, "s": "shared", "a": 1},
        {"k": 1, "c": 2, "s": "shared", "a": 2},
        {"k": 2, "c": None, "s": "alone", "a": None},
    ]


def test_ttl_cells_and_rows_vanish_at_their_expiry(clickhouse: ClickHouseDestination) -> None:
    changes = [
        row({"k": 1}, {"c": 1}, {"a": cell(1, 10, expires_at=NOW_S)}),
        row({"k": 1}, {"c": 2}, {"a": cell(2, 10, expires_at=NOW_S + 1)}),
        row({"k": 1}, {"c": 3}, {"b": cell("stays", 10)}, row_writetime=10, row_ttl=60, row_expires_at=NOW_S),
    ]
    load(clickhouse, KV, changes, "ttl")

    assert kv_state(clickhouse, NOW) == [(1, 2, 2, None), (1, 3, None, "stays")]
    assert kv_state(clickhouse, datetime.fromtimestamp(NOW_S - 1, UTC)) == [
        (1, 1, 1, None),
        (1, 2, 2, None),
        (1, 3, None, "stays"),
    ]


def test_an_expired_cell_still_shadows_older_writes(clickhouse: ClickHouseDestination) -> None:
    load(clickhouse, KV, [row({"k": 1}, {"c": 1}, {"a": cell(1, 20, expires_at=NOW_S - 5)}, row_writetime=1)], "ttl")
    load(clickhouse, KV, [row({"k": 1}, {"c": 1}, {"a": cell(2, 10)})], "older")

    assert kv_state(clickhouse) == [(1, 1, None, None)]


COLLECTIONS = make_table(
    ("k", "int", "partition_key"), ("tags", "set<text>", "regular"), ("scores", "map<text, int>", "regular")
)


def test_collection_elements_merge_one_by_one(clickhouse: ClickHouseDestination) -> None:
    first = {"tags": {"deletion": None, "cells": [element("a", 10), element("b", 10)]}}
    second = {"tags": {"deletion": None, "cells": [element("c", 11), element("a", 12, deleted=True)]}}
    load(clickhouse, COLLECTIONS, [row({"k": 1}, cells=second)], "second")
    load(clickhouse, COLLECTIONS, [row({"k": 1}, cells=first)], "first")

    assert clickhouse.current_state(COLLECTIONS, now=NOW) == [{"k": 1, "tags": ["b", "c"], "scores": None}]


def test_a_collection_overwrite_hides_older_elements_only(clickhouse: ClickHouseDestination) -> None:
    late = {"scores": {"deletion": None, "cells": [element("late", 30, 3)]}}
    early = {"scores": {"deletion": None, "cells": [element("early", 10, 1)]}}
    # UPDATE ... SET scores = {'new': 2} at 20: a collection deletion at 19 and the new element.
    overwrite = {"scores": {"deletion": 19, "cells": [element("new", 20, 2)]}}
    load(clickhouse, COLLECTIONS, [row({"k": 1}, cells=late), row({"k": 1}, cells=early)], "before")
    load(clickhouse, COLLECTIONS, [row({"k": 1}, cells=overwrite)], "overwrite")

    assert clickhouse.current_state(COLLECTIONS, now=NOW) == [
        {"k": 1, "tags": None, "scores": [("late", 3), ("new", 2)]}
    ]


FLAGGED = CqlType(
    "udt",
    (parse_type("frozen<list<text>>"), parse_type("frozen<map<text, int>>"), parse_type("int")),
    name="flagged",
    field_names=("flags", "scores", "number"),
)
NESTED = make_table(
    ("k", "int", "partition_key"),
    ("c", "int", "clustering"),
    ("home", FLAGGED.freeze(), "regular"),
    ("live", FLAGGED, "regular"),
    ("pair", "tuple<int, frozen<set<int>>>", "regular"),
)


# Per collection field of NESTED: its value when null, empty, or holding one element.
FIELD_VALUES = {
    "flags": {None: None, "empty": [], "one": ["a"]},
    "scores": {None: None, "empty": [], "one": [("a", 1)]},
    "f1": {None: None, "empty": [], "one": [1]},
}


def nested_row(c: int, filling: str | None, writetime: int = 5, k: int = 1) -> dict[str, Any]:
    """A row of NESTED whose collection fields (frozen, non-frozen and tuple) are all ``filling``."""
    values = {name: by_filling[filling] for name, by_filling in FIELD_VALUES.items()}
    home = {"flags": values["flags"], "scores": values["scores"], "number": c}
    live = {name: None if filling is None else cell(values[name], writetime) for name in ("flags", "scores")}
    cells = {
        "home": cell(home, writetime),
        "live": {"deletion": None, "cells": {**live, "number": cell(c, writetime)}},
        "pair": cell({"f0": c, "f1": values["f1"]}, writetime),
    }
    return row({"k": k}, {"c": c}, cells)


def test_a_null_collection_inside_a_user_type_or_tuple_stays_apart_from_an_empty_one(
    clickhouse: ClickHouseDestination,
) -> None:
    # Inside a user type or tuple Cassandra keeps a null field (no bytes) apart from an empty collection.
    batch = load(clickhouse, NESTED, [nested_row(1, None), nested_row(2, "empty"), nested_row(3, "one")], "nested")
    model = CassandraModel(NESTED)
    model.apply(batch)

    state = clickhouse.current_state(NESTED, now=NOW)

    assert state == model.current_state(NOW)
    assert [(r["home"]["flags"], r["live"]["scores"], r["pair"]["f1"]) for r in state] == [
        (None, None, None),
        ([], [], []),
        (["a"], [("a", 1)], [1]),
    ]


def test_on_equal_write_times_a_null_collection_field_beats_an_empty_one(clickhouse: ClickHouseDestination) -> None:
    # The null field serializes as length -1 (ff ff ff ff), above an empty collection's 00 00 00 04.
    null_first = [nested_row(1, None, 10, k=1), nested_row(1, "empty", 10, k=2)]
    empty_first = [nested_row(1, "empty", 10, k=1), nested_row(1, None, 10, k=2)]
    first = load(clickhouse, NESTED, null_first, "null first")
    second = load(clickhouse, NESTED, empty_first, "empty first")
    model = CassandraModel(NESTED)
    model.apply(first)
    model.apply(second)

    state = clickhouse.current_state(NESTED, now=NOW)

    assert state == model.current_state(NOW)
    assert [(r["home"]["flags"], r["pair"]["f1"]) for r in state] == [(None, None), (None, None)]


def test_a_clustering_tuple_with_a_null_collection_field_is_its_own_row_before_the_empty_one(
    clickhouse: ClickHouseDestination,
) -> None:
    table = make_table(("k", "int", "partition_key"), ("c", "tuple<int, frozen<set<int>>>", "clustering"))
    clickhouse.ensure_table(table)
    clusterings = [{"f0": 1, "f1": fill} for fill in ([2], [], None, [1, 2])]
    writes = [row({"k": 1}, {"c": c}, row_writetime=10) for c in clusterings]
    # DELETE ... WHERE k = 1 AND c > (1, null) AND c < (1, {1}): only the empty set's row lies between.
    deletion = {
        "kind": "range_deletion",
        "key": {"k": 1},
        "deletion_writetime": 10,
        "range_start": {"c": {"f0": 1, "f1": None}},
        "range_start_inclusive": False,
        "range_end": {"c": {"f0": 1, "f1": [1]}},
        "range_end_inclusive": False,
    }
    batch = load(clickhouse, table, [*writes, deletion], "tuple clustering")
    model = CassandraModel(table)
    model.apply(batch)

    state = clickhouse.current_state(table, now=NOW)

    assert state == model.current_state(NOW)
    assert [r["c"]["f1"] for r in state] == [None, [1, 2], [2]]
    view = f"{quote(clickhouse.database(table))}.{quote(table.name)}"
    # What a user sees: the set, or NULL (ordering by the set itself, as ClickHouse asks of a Variant).
    sql = f"SELECT toTypeName(c.f1), c.f1 FROM {view} ORDER BY isNull(c.f1) DESC, variantElement(c.f1, 'Array(Int32)')"
    shown = [(None, "Variant(Array(Int32))"), ([1, 2], "Variant(Array(Int32))"), ([2], "Variant(Array(Int32))")]
    assert [(value, type_name) for type_name, value in clickhouse.client.query(sql).result_rows] == shown


# -- loads: replay, atomicity, positions -----------------------------------------------------------


def storage_count(destination: ClickHouseDestination, table: TableSchema, suffix: str, where: str = "1") -> int:
    target = f"{quote(destination.database(table))}.{quote(table.name + suffix)}"
    return destination.client.query(f"SELECT count() FROM {target} WHERE {where}").result_rows[0][0]


def test_a_replayed_load_is_recorded_once_and_stored_once(clickhouse: ClickHouseDestination) -> None:
    changes = [row({"k": 1}, {"c": c}, {"a": cell(c, 10)}) for c in range(3)]
    batch = load(clickhouse, KV, changes, "once")
    clickhouse.load(KV, batch, load_id="once")

    assert storage_count(clickhouse, KV, "__cdc_rows") == 3
    loads = f"{quote(clickhouse.database(KV))}.`_cdc_loads`"
    assert clickhouse.client.query(f"SELECT load_id, rows FROM {loads}").result_rows == [("once", 3)]


def test_a_load_records_the_positions_it_covered(clickhouse: ClickHouseDestination) -> None:
    changes = [
        row({"k": 1}, {"c": 1}, {"a": cell(1, 1)}, segment_id=41, position=900),
        row({"k": 1}, {"c": 2}, {"a": cell(1, 1)}, segment_id=40, position=300),
        row({"k": 1}, {"c": 3}, {"a": cell(1, 1)}, segment_id=41, position=100),
        row({"k": 1}, {"c": 4}, {"a": cell(1, 1)}, segment_id=40, position=200),
    ]
    result = clickhouse.load(KV, build_change_batch(KV, changes), load_id="positions")

    assert (result.rows, result.first_position, result.last_position) == (4, Position(40, 200), Position(41, 900))
    loads = f"{quote(clickhouse.database(KV))}.`_cdc_loads`"
    recorded = clickhouse.client.query(
        f"SELECT first_segment_id, first_position, last_segment_id, last_position FROM {loads}"
    ).result_rows
    assert recorded == [(40, 200, 41, 900)]


class _DroppedConnection(Exception):
    pass


def test_a_load_killed_half_way_shows_nothing_and_converges_when_run_again(
    clickhouse_factory: Factory, chdb_dsn: str
) -> None:
    destination = clickhouse_factory(None)
    table = make_table(
        ("k", "int", "partition_key"),
        ("c", "int", "clustering"),
        ("a", "int", "regular"),
        ("tags", "set<int>", "regular"),
    )
    before = [row({"k": 1}, {"c": 1}, {"a": cell(1, 10)}, row_writetime=10)]
    batch_before = load(destination, table, before, "before")
    changes = [
        row({"k": 1}, {"c": 1}, {"a": cell(2, 20), "tags": {"deletion": None, "cells": [element(5, 20)]}}),
        {"kind": "partition_deletion", "key": {"k": 2}, "deletion_writetime": 20},
    ]
    batch = build_change_batch(table, [{**change, "segment_id": 8, "position": i} for i, change in enumerate(changes)])
    client = destination.client
    # Every insert (insert_arrow's too) ends in raw_insert: the connection dies after the first.
    raw_insert = client.raw_insert
    inserts = []

    def drop_after_first_insert(*args: Any, **kwargs: Any) -> Any:
        if inserts:
            from clickhouse_connect.driver.exceptions import OperationalError

            raise OperationalError("connection reset by peer")
        inserts.append(args[0])
        return raw_insert(*args, **kwargs)

    client.raw_insert = drop_after_first_insert
    with pytest.raises(TransientDestinationError):
        destination.load(table, batch, load_id="crashing")
    client.raw_insert = raw_insert

    assert inserts, "the load stored part of the batch before it died"
    assert destination.current_state(table, now=NOW) == [{"k": 1, "c": 1, "a": 1, "tags": None}]

    restarted = ClickHouseDestination(chdb_dsn, destination.database_prefix)
    restarted.load(table, batch, load_id="crashing")
    model = CassandraModel(table)
    model.apply(batch_before)
    model.apply(batch)
    assert restarted.current_state(table, now=NOW) == model.current_state(NOW)
    assert model.current_state(NOW) == [{"k": 1, "c": 1, "a": 2, "tags": [5]}]


def test_an_added_column_is_carried_and_older_batches_still_load(clickhouse: ClickHouseDestination) -> None:
    old_batch = load(clickhouse, KV, [row({"k": 1}, {"c": 1}, {"a": cell(1, 10)})], "old")
    wider = KV.with_columns([*KV.columns, Column("note", cql("text"), "regular")])
    clickhouse.ensure_table(wider)
    load(clickhouse, wider, [row({"k": 1}, {"c": 2}, {"note": cell("new", 11)})], "new")
    clickhouse.load(wider, old_batch, load_id="old-replayed")

    assert clickhouse.current_state(wider, now=NOW) == [
        {"k": 1, "c": 1, "a": 1, "b": None, "note": None},
        {"k": 1, "c": 2, "a": None, "b": None, "note": "new"},
    ]


def test_a_dropped_column_leaves_the_view_and_stays_gone_when_re_added(clickhouse: ClickHouseDestination) -> None:
    old_batch = load(clickhouse, KV, [row({"k": 1}, {"c": 1}, {"a": cell(1, 10), "b": cell("x", 10)})], "old")
    narrower = KV.with_columns([c for c in KV.columns if c.name != "b"], [DroppedColumn("b", cql("text"), 15)])
    clickhouse.ensure_table(narrower)
    clickhouse.load(narrower, old_batch, load_id="old-replayed")
    assert clickhouse.current_state(narrower, now=NOW) == [{"k": 1, "c": 1, "a": 1}]

    re_added = KV.with_columns(KV.columns, narrower.dropped)
    clickhouse.ensure_table(re_added)
    clickhouse.load(re_added, old_batch, load_id="old-again")
    load(clickhouse, re_added, [row({"k": 1}, {"c": 2}, {"b": cell("y", 16)})], "after")

    view = f"{quote(clickhouse.database(KV))}.{quote(KV.name)}"
    assert clickhouse.client.query(f"SELECT * FROM {view} ORDER BY c").column_names == ("k", "c", "a", "b")
    assert clickhouse.current_state(re_added, now=NOW) == [
        {"k": 1, "c": 1, "a": 1, "b": None},
        {"k": 1, "c": 2, "a": None, "b": "y"},
    ]


def test_a_column_re_added_with_another_type_starts_afresh(clickhouse: ClickHouseDestination) -> None:
    old_batch = load(clickhouse, KV, [row({"k": 1}, {"c": 1}, {"b": cell("text", 10)}, row_writetime=10)], "text")
    dropped = (DroppedColumn("b", cql("text"), 15),)
    re_added = KV.with_columns(
        [Column("b", cql("int"), "regular") if c.name == "b" else c for c in KV.columns], dropped
    )
    clickhouse.ensure_table(re_added)
    clickhouse.load(re_added, old_batch, load_id="text-replayed")
    load(clickhouse, re_added, [row({"k": 1}, {"c": 2}, {"b": cell(42, 20)})], "int")

    assert list(clickhouse.dead_letters or []) == []
    assert clickhouse.current_state(re_added, now=NOW) == [
        {"k": 1, "c": 1, "a": None, "b": None},
        {"k": 1, "c": 2, "a": None, "b": 42},
    ]


def test_an_older_schema_without_a_column_does_not_drop_its_data(clickhouse: ClickHouseDestination) -> None:
    wider = KV.with_columns([*KV.columns, Column("note", cql("text"), "regular")])
    clickhouse.ensure_table(wider)
    load(clickhouse, wider, [row({"k": 1}, {"c": 1}, {"note": cell("kept", 10)})], "wide")
    clickhouse.ensure_table(KV)
    clickhouse.ensure_table(wider)

    assert clickhouse.current_state(wider, now=NOW) == [{"k": 1, "c": 1, "a": None, "b": None, "note": "kept"}]


def test_a_type_change_clickhouse_cannot_take_goes_to_dead_letters(clickhouse: ClickHouseDestination) -> None:
    load(clickhouse, KV, [row({"k": 1}, {"c": 1}, {"a": cell(1, 10)})], "int")
    retyped = KV.with_columns(
        [Column("a", cql("frozen<list<int>>"), "regular") if c.name == "a" else c for c in KV.columns]
    )
    clickhouse.ensure_table(retyped)
    changes = [
        row({"k": 1}, {"c": 2}, {"a": cell([1, 2], 20)}),
        row({"k": 1}, {"c": 3}, {"b": cell("fine", 20)}),
    ]
    load(clickhouse, retyped, changes, "list")

    letters = list(clickhouse.dead_letters or [])
    assert [(letter.segment, letter.position, letter.table) for letter in letters] == [("7", 0, "ks.t")]
    assert "'a'" in letters[0].reason and "frozen<list<int>>" in letters[0].reason
    assert pa.ipc.open_stream(letters[0].payload).read_all().column("a").to_pylist()[0]["value"] == [1, 2]
    assert [(r["c"], r["a"], r["b"]) for r in clickhouse.current_state(retyped, now=NOW)] == [
        (1, 1, None),
        (3, None, "fine"),
    ]


def test_a_change_with_a_column_the_schema_lacks_goes_to_dead_letters(clickhouse: ClickHouseDestination) -> None:
    newer = KV.with_columns([*KV.columns, Column("extra", cql("int"), "regular")])
    batch = build_change_batch(
        newer,
        [
            row({"k": 1}, {"c": 1}, {"extra": cell(5, 10)}, segment_id=3, position=11),
            row({"k": 1}, {"c": 2}, {"a": cell(6, 10)}, segment_id=3, position=12),
        ],
    )
    clickhouse.load(KV, batch, load_id="newer")

    assert [(letter.position, "extra" in letter.reason) for letter in clickhouse.dead_letters or []] == [(11, True)]
    assert kv_state(clickhouse) == [(1, 2, 6, None)]


def test_without_a_dead_letter_store_a_refused_change_fails_the_whole_load(clickhouse_factory: Factory) -> None:
    destination = clickhouse_factory(None)
    table = make_table(("k", "int", "partition_key"), ("d", "date", "regular"))
    batch = build_change_batch(
        table,
        [
            row({"k": 1}, cells={"d": cell(5, 10)}, segment_id=1, position=1),
            row({"k": 2}, cells={"d": cell(2**31 - 1, 10)}, segment_id=1, position=2),
        ],
    )
    with pytest.raises(PermanentDestinationError, match="Date32"):
        destination.load(table, batch, load_id="dates")

    assert destination.current_state(table, now=NOW) == []


def test_a_date_outside_clickhouses_range_goes_to_dead_letters(clickhouse: ClickHouseDestination) -> None:
    table = make_table(("k", "int", "partition_key"), ("d", "date", "regular"))
    changes = [row({"k": 1}, cells={"d": cell(5, 10)}), row({"k": 2}, cells={"d": cell(-(2**31), 10)})]
    load(clickhouse, table, changes, "dates")

    assert [letter.position for letter in clickhouse.dead_letters or []] == [1]
    assert clickhouse.current_state(table, now=NOW) == [{"k": 1, "d": 5}]


# -- the server connection --------------------------------------------------------------------------


def test_an_unreachable_server_is_a_transient_error_that_hides_the_password(tmp_path: Path) -> None:
    destination = ClickHouseDestination(
        "http://cdc:s3cret-pw@127.0.0.1:9/cdc", dead_letters=DeadLetterStore(tmp_path / "d")
    )

    with pytest.raises(TransientDestinationError) as raised:
        destination.ensure_table(KV)

    assert "s3cret-pw" not in str(raised.value)


def test_the_view_serves_the_current_state_to_plain_sql(clickhouse: ClickHouseDestination) -> None:
    load(clickhouse, KV, [row({"k": 1}, {"c": 1}, {"a": cell(1, 10), "b": cell("x", 10)})], "one")
    load(clickhouse, KV, [row({"k": 1}, {"c": 1}, {"b": cell(None, 11, deleted=True)})], "two")

    view = f"{quote(clickhouse.database(KV))}.{quote(KV.name)}"
    assert clickhouse.client.query(f"SELECT k, c, a, b FROM {view}").result_rows == [(1, 1, 1, None)]


# -- the merged state table -------------------------------------------------------------------------


def test_a_row_that_dies_after_being_live_leaves_the_view_after_a_later_load(clickhouse: ClickHouseDestination) -> None:
    load(
        clickhouse,
        KV,
        [
            row({"k": 1}, {"c": 1}, {"a": cell(1, 10)}, row_writetime=10),
            row({"k": 2}, {"c": 1}, {"b": cell("cells only", 10)}),
            row({"k": 3}, {"c": 1}, {"a": cell(3, 10)}, row_writetime=10),
        ],
        "live",
    )
    assert kv_state(clickhouse) == [(1, 1, 1, None), (2, 1, None, "cells only"), (3, 1, 3, None)]

    # A row deletion; the only cell of a row without liveness deleted; a later load leaves k=3 alone.
    load(clickhouse, KV, [row({"k": 1}, {"c": 1}, deletion_writetime=20)], "row deleted")
    load(clickhouse, KV, [row({"k": 2}, {"c": 1}, {"b": cell(None, 20, deleted=True)})], "cell deleted")

    assert kv_state(clickhouse) == [(3, 1, 3, None)]
    view = f"{quote(clickhouse.database(KV))}.{quote(KV.name)}"
    assert clickhouse.client.query(f"SELECT k FROM {view}").result_rows == [(3,)]


def test_storage_from_before_the_state_table_is_filled_on_first_use(clickhouse_factory: Factory, chdb_dsn: str) -> None:
    destination = clickhouse_factory(None)
    load(destination, KV, [row({"k": 1}, {"c": 1}, {"a": cell(1, 10), "b": cell("x", 10)}, row_writetime=10)], "one")
    load(destination, KV, [row({"k": 2}, {"c": 1}, {"a": cell(2, 10)}, row_writetime=10)], "two")
    load(destination, KV, [{"kind": "partition_deletion", "key": {"k": 2}, "deletion_writetime": 20}], "three")
    expected = [(1, 1, 1, "x")]
    assert kv_state(destination) == expected

    # The earlier layout: unsorted history tables, no merged state.
    database = quote(destination.database(KV))
    client = destination.client
    client.command(f"DROP TABLE {database}.{quote('t__cdc_state')}")
    client.command(f"DROP TABLE {database}.{quote('_cdc_state_loads')}")
    for suffix in ("__cdc_rows", "__cdc_elements", "__cdc_deletions"):
        table, old = f"{database}.{quote('t' + suffix)}", f"{database}.{quote('t' + suffix + '_old')}"
        client.command(f"CREATE TABLE {old} AS {table} ENGINE = MergeTree ORDER BY tuple()")
        client.command(f"INSERT INTO {old} SELECT * FROM {table}")
        client.command(f"DROP TABLE {table}")
        client.command(f"RENAME TABLE {old} TO {table}")

    restarted = ClickHouseDestination(chdb_dsn, destination.database_prefix)
    assert kv_state(restarted) == expected
    view = f"{database}.{quote(KV.name)}"
    assert restarted.client.query(f"SELECT k, c, a, b FROM {view}").result_rows == expected
    load(restarted, KV, [row({"k": 1}, {"c": 1}, {"a": cell(5, 30)})], "four")
    assert kv_state(restarted) == [(1, 1, 5, "x")]


def test_a_load_recorded_before_its_state_was_computed_is_caught_up(clickhouse_factory: Factory, chdb_dsn: str) -> None:
    destination = clickhouse_factory(None)
    load(destination, KV, [row({"k": 1}, {"c": 1}, {"a": cell(1, 10)}, row_writetime=10)], "one")
    # Killed between recording the load and computing the state: the state does not know the load.
    database = quote(destination.database(KV))
    destination.client.command(f"TRUNCATE TABLE {database}.{quote('_cdc_state_loads')}")
    destination.client.command(f"TRUNCATE TABLE {database}.{quote('t__cdc_state')}")

    restarted = ClickHouseDestination(chdb_dsn, destination.database_prefix)
    load(restarted, KV, [row({"k": 2}, {"c": 1}, {"a": cell(2, 10)}, row_writetime=10)], "two")
    assert kv_state(restarted) == [(1, 1, 1, None), (2, 1, 2, None)]


def _state_parts(destination: ClickHouseDestination, table: TableSchema) -> int:
    database = destination.database(table)
    return destination.client.query(
        "SELECT count() FROM system.parts WHERE database = {db:String} AND table = {t:String} AND active",
        parameters={"db": database, "t": table.name + "__cdc_state"},
    ).result_rows[0][0]


def _three_loads(destination: ClickHouseDestination) -> CassandraModel:
    """Three loads touching one row again and again: a write, an overwrite with a TTL, a deletion of another row."""
    model = CassandraModel(KV)
    loads = [
        [row({"k": 1}, {"c": 1}, {"a": cell(1, 10), "b": cell("x", 10)}), row({"k": 1}, {"c": 2}, {"a": cell(2, 10)})],
        [
            row({"k": 1}, {"c": 1}, {"a": cell(3, 20, expires_at=NOW_S + 30)}),
            row({"k": 2}, {"c": 1}, {"a": cell(4, 20)}),
        ],
        [row({"k": 1}, {"c": 2}, deletion_writetime=30)],
    ]
    for number, changes in enumerate(loads):
        model.apply(load(destination, KV, changes, f"load-{number}"))
    return model


def test_a_small_merged_state_is_one_part_after_every_load(clickhouse: ClickHouseDestination) -> None:
    model = _three_loads(clickhouse)
    assert _state_parts(clickhouse, KV) == 1
    assert clickhouse.current_state(KV, now=NOW) == model.current_state(NOW)


def test_past_merge_rows_the_state_keeps_its_parts_and_reads_the_same(
    clickhouse_factory: Callable[[Path | None], ClickHouseDestination],
) -> None:
    destination = clickhouse_factory(None)
    destination.merge_rows = 0
    destination.ensure_table(KV)
    # No background merge either: the view must read several parts right.
    state = f"{quote(destination.database(KV))}.{quote(KV.name + '__cdc_state')}"
    destination.client.command(f"SYSTEM STOP MERGES {state}")
    model = _three_loads(destination)
    assert _state_parts(destination, KV) > 1
    for now in (NOW, datetime(2030, 1, 1, 0, 1, tzinfo=UTC)):
        assert destination.current_state(KV, now=now) == model.current_state(now)
    assert destination.current_state(KV, now=NOW) == [
        {"k": 1, "c": 1, "a": 3, "b": "x"},
        {"k": 2, "c": 1, "a": 4, "b": None},
    ]
    destination.close()


def test_a_column_named_like_the_storages_own_is_refused_before_anything_is_created(
    clickhouse: ClickHouseDestination,
) -> None:
    shadowing = make_table(
        ("k", "int", "partition_key"), ("c", "int", "clustering"), ("_cdc_live_until", "int", "regular")
    )
    with pytest.raises(
        PermanentDestinationError, match=r"'_cdc_live_until' of .*: names starting with _cdc_ are reserved"
    ):
        clickhouse.ensure_table(shadowing)
    databases = clickhouse.client.query("SELECT name FROM system.databases").result_rows
    assert (clickhouse.database(shadowing),) not in databases
