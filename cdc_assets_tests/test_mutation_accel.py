"""The C accelerator decodes every mutation exactly as the pure decoder does, and fails alike on bad bytes.

Each test decodes the same bytes twice: with the accelerator, and with ``CDC_ASSETS_PURE_PYTHON=1``.
"""

from __future__ import annotations

import math
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc_assets.cassandra_schema.cql_file import load_cql_file
from cdc_assets.cassandra_schema.system_tables import SYSTEM_SCHEMA_TABLES
from cdc_assets.cassandra_schema.tables import Column, DroppedColumn, SchemaRegistry, TableSchema
from cdc_assets.cassandra_schema.types import parse_type
from cdc_assets.commitlog.errors import MutationDecodeError, UnknownTableError
from cdc_assets.commitlog.generator.encoding import MESSAGING_VERSIONS, encode_mutation
from cdc_assets.commitlog.mutation import MutationDecoder
from cdc_assets.commitlog.reader import scan_segment
from cdc_assets_tests.shared_fixtures import SCHEMA_FIXTURES, segments
from cdc_assets_tests.strategies import mutations, tables

pytest.importorskip(
    "cdc_assets.commitlog._mutation_accel",
    reason="the optional C extension did not build (no compiler or Python headers): the pure decoder runs",
)

PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
WRITETIME = 1_700_000_000_000_000


def _decoders(registry: SchemaRegistry, messaging_version: int = 12) -> tuple[MutationDecoder, MutationDecoder]:
    """The accelerated decoder and the pure one, over the same registry."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("CDC_ASSETS_PURE_PYTHON", raising=False)
        accelerated = MutationDecoder(registry, messaging_version)
        patch.setenv("CDC_ASSETS_PURE_PYTHON", "1")
        pure = MutationDecoder(registry, messaging_version)
    return accelerated, pure


def _outcome(decoder: MutationDecoder, body: bytes) -> Any:
    """The updates decoded, or the class of the MutationDecodeError raised (other errors fail the test)."""
    try:
        return decoder.decode(body)
    except MutationDecodeError as error:
        return type(error)


def _same(left: Any, right: Any) -> bool:
    """Equal and of the same types all the way down (True is not 1, -0.0 is not 0.0), NaN equal to NaN."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(_same(left[key], right[key]) for key in left)
    if isinstance(left, list | tuple):
        return len(left) == len(right) and all(_same(a, b) for a, b in zip(left, right))
    if isinstance(left, float):
        both_nan = math.isnan(left) and math.isnan(right)
        return both_nan or (left == right and math.copysign(1, left) == math.copysign(1, right))
    return left == right


def _cell(value: Any, writetime: int = WRITETIME) -> dict[str, Any]:
    return {"value": value, "writetime": writetime, "ttl": None, "expires_at": None, "deleted": False}


def _table(columns: list[tuple[str, str, str]], dropped: tuple[DroppedColumn, ...] = ()) -> TableSchema:
    """A table from (name, CQL type, kind) triples, in position order per kind."""
    positions: dict[str, int] = {}
    built = []
    for name, cql, kind in columns:
        position = positions.get(kind, 0) if kind in ("partition_key", "clustering") else -1
        positions[kind] = positions.get(kind, 0) + 1
        built.append(Column(name, parse_type(cql), kind, position))  # type: ignore[arg-type]
    return TableSchema("ks", "t", uuid.UUID(int=7, version=4), tuple(built), dropped)


def _fixture_registry(schema: str) -> SchemaRegistry:
    """A fixture's user tables and the system_schema tables (schema changes are in the logs too)."""
    registry = load_cql_file(SCHEMA_FIXTURES / schema)
    for table in SYSTEM_SCHEMA_TABLES:
        registry.add(table)
    return registry


def test_the_accelerator_decodes_unless_pure_python_is_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = SchemaRegistry()
    monkeypatch.delenv("CDC_ASSETS_PURE_PYTHON", raising=False)
    assert MutationDecoder(registry).accelerated
    monkeypatch.setenv("CDC_ASSETS_PURE_PYTHON", "1")
    assert not MutationDecoder(registry).accelerated


@pytest.mark.parametrize(("folder", "schema"), [("4.0.11", "standard1-4.0.11.cql"), ("3.0.29", "standard1-3.0.29.cql")])
def test_segments_real_nodes_wrote_decode_identically(folder: str, schema: str) -> None:
    registry = _fixture_registry(schema)
    decoded = 0
    for path in segments(folder):
        scan = scan_segment(path)
        accelerated, pure = _decoders(registry, scan.descriptor.messaging_version)
        for _, body in scan.entries:
            expected = _outcome(pure, body)
            assert _same(_outcome(accelerated, body), expected)
            decoded += isinstance(expected, list)
    # Both fixtures hold user tables, system_schema tables and tables the schema does not know.
    assert decoded > 100


@PROPERTY_SETTINGS
@given(st.data())
def test_generated_mutations_decode_identically(data: st.DataObject) -> None:
    table = data.draw(tables())
    version = data.draw(st.sampled_from(sorted(MESSAGING_VERSIONS)))
    changes = data.draw(mutations(table, version=version))
    body = encode_mutation([(table, changes)], version)
    accelerated, pure = _decoders(SchemaRegistry([table]), MESSAGING_VERSIONS[version])
    assert _same(accelerated.decode(body), pure.decode(body))


@st.composite
def _damaged(draw: st.DrawFn) -> tuple[TableSchema, int, bytes]:
    """A valid mutation with bytes flipped, cut short, or replaced by garbage after its table id."""
    table = draw(tables())
    version = draw(st.sampled_from(sorted(MESSAGING_VERSIONS)))
    body = bytearray(encode_mutation([(table, draw(mutations(table, version=version)))], version))
    damage = draw(st.sampled_from(["flip", "cut", "garbage"]))
    if damage == "flip":
        for _ in range(draw(st.integers(1, 3))):
            body[draw(st.integers(0, len(body) - 1))] = draw(st.integers(0, 255))
    elif damage == "cut":
        del body[draw(st.integers(0, len(body) - 1)) :]
    else:
        # Count (1 byte) and table id kept: the garbage reaches the partition update's own decoding.
        body[17:] = draw(st.binary(min_size=0, max_size=64))
    return table, MESSAGING_VERSIONS[version], bytes(body)


@PROPERTY_SETTINGS
@given(_damaged())
def test_damaged_mutations_fail_alike(damaged: tuple[TableSchema, int, bytes]) -> None:
    table, messaging_version, body = damaged
    accelerated, pure = _decoders(SchemaRegistry([table]), messaging_version)
    assert _same(_outcome(accelerated, body), _outcome(pure, body))


def test_every_byte_cut_of_a_real_mutation_fails_alike() -> None:
    path = segments("4.0.11")[0]
    scan = scan_segment(path)
    accelerated, pure = _decoders(_fixture_registry("standard1-4.0.11.cql"), scan.descriptor.messaging_version)
    body = max((body for _, body in scan.entries), key=len)
    for end in range(len(body)):
        assert _outcome(accelerated, body[:end]) == _outcome(pure, body[:end]) == MutationDecodeError


def test_an_unknown_table_raises_unknown_table_error_in_both() -> None:
    table = _table([("k", "int", "partition_key"), ("v", "int", "regular")])
    body = encode_mutation([(table, [{"kind": "row", "key": {"k": 1}, "cells": {"v": _cell(2)}}])], 7)
    accelerated, pure = _decoders(SchemaRegistry())
    assert _outcome(accelerated, body) == _outcome(pure, body) == UnknownTableError


DECIMALS = [
    "0",
    "0.000",
    "0E+5",
    "0E-7",
    "1.50",
    "-123.45",
    "1E+5",
    "1.23E+4",
    "0.000001",
    "0.0000001",
    "-0.00000012345",
    "123456789.123456789",
    "9223372036854775807",
    "-9223372036854775808",
    "922337203685477.5807",
    "-92233720368547758.08E-99990",
    "1E-100000",
    "7E+1000000",
    "5E-2147483647",
    "-5E+2147483648",
    "12345678901234567890123",
    "-1234567890123456789012345678901234567890.5",
]


def test_decimals_read_as_pythons_decimal_prints_them() -> None:
    table = _table([("k", "int", "partition_key"), ("c", "int", "clustering"), ("v", "decimal", "regular")])
    changes = [
        {"kind": "row", "key": {"k": 1}, "clustering": {"c": i}, "cells": {"v": _cell(text)}}
        for i, text in enumerate(DECIMALS)
    ]
    body = encode_mutation([(table, changes)], 7)
    accelerated, pure = _decoders(SchemaRegistry([table]))
    [(_, decoded)] = accelerated.decode(body)
    assert _same(decoded, pure.decode(body)[0][1])
    assert [change["cells"]["v"]["value"] for change in decoded] == [str(Decimal(text)) for text in DECIMALS]


def test_invalid_utf8_text_fails_alike() -> None:
    table = _table([("k", "int", "partition_key"), ("v", "text", "regular")])
    body = encode_mutation([(table, [{"kind": "row", "key": {"k": 1}, "cells": {"v": _cell("é")}}])], 7)
    broken = body.replace("é".encode(), b"\xc3\x28")
    accelerated, pure = _decoders(SchemaRegistry([table]))
    assert _outcome(accelerated, broken) == _outcome(pure, broken) == MutationDecodeError


def test_counters_decode_as_their_shards_and_pre_2_1_shards_are_refused_alike() -> None:
    table = _table([("k", "int", "partition_key"), ("n", "counter", "regular")])
    shards = [(b"\x0a" * 16, 3, 40), (b"\x0b" * 16, 1, 2)]
    body = encode_mutation([(table, [{"kind": "row", "key": {"k": 1}, "cells": {"n": _cell(shards)}}])], 7)
    accelerated, pure = _decoders(SchemaRegistry([table]))
    decoded = accelerated.decode(body)[0][1]
    assert _same(decoded, pure.decode(body)[0][1]) and decoded[0]["cells"]["n"]["value"] == shards
    # The header's second element made local (1) rather than global (1 + Short.MIN_VALUE): a pre-2.1 context.
    local = body.replace(b"\x00\x02\x80\x00\x80\x01", b"\x00\x02\x80\x00\x00\x01")
    for decoder in (accelerated, pure):
        with pytest.raises(MutationDecodeError, match=r"local \(pre-2\.1\) shard"):
            decoder.decode(local)


def test_wide_tables_decode_identically() -> None:
    """64+ header columns use index lists for a row's columns (format notes 10.5); 33+ clustering values
    take a second clustering header (10.7)."""
    columns = [("k", "int", "partition_key")]
    columns += [(f"c{i:02}", "int", "clustering") for i in range(34)]
    columns += [(f"v{i:02}", "bigint" if i % 2 else "text", "regular") for i in range(70)]
    table = _table(columns)
    values = {f"v{i:02}": _cell(i if i % 2 else str(i)) for i in range(70)}

    def row(row_id: int, names: list[str]) -> dict[str, Any]:
        clustering = {f"c{i:02}": row_id * 100 + i for i in range(34)}
        return {
            "kind": "row",
            "key": {"k": 1},
            "clustering": clustering,
            "cells": {n: values[n] for n in names},
        }

    names = sorted(values)
    # All columns, few of them (present indexes), most of them (missing indexes).
    changes = [row(1, names), row(2, names[3:9]), row(3, names[:30] + names[33:])]
    body = encode_mutation([(table, changes)], 7)
    accelerated, pure = _decoders(SchemaRegistry([table]))
    decoded = accelerated.decode(body)
    assert _same(decoded, pure.decode(body))
    assert [len(change["cells"]) for change in decoded[0][1]] == [70, 6, 67]


def test_cells_of_dropped_columns_are_kept_or_discarded_alike() -> None:
    dropped_at = WRITETIME
    before = _table([("k", "int", "partition_key"), ("v", "int", "regular"), ("gone", "int", "regular")])
    before = before.with_columns([*before.columns, Column("bag", parse_type("set<int>"), "regular")])
    after = before.with_columns(
        before.columns[:2],
        [
            DroppedColumn("gone", parse_type("int"), dropped_at),
            DroppedColumn("bag", parse_type("set<int>"), dropped_at),
        ],
    )
    bag = {
        "deletion": None,
        "cells": [{"path": 3, "writetime": dropped_at + 1, "ttl": None, "expires_at": None}],
    }
    changes = [
        {"kind": "row", "key": {"k": 1}, "cells": {"v": _cell(1), "gone": _cell(2, dropped_at)}},
        {
            "kind": "row",
            "key": {"k": 2},
            "cells": {"v": _cell(1), "gone": _cell(2, dropped_at + 1), "bag": bag},
        },
    ]
    accelerated, pure = _decoders(SchemaRegistry([after]))
    kept = []
    for change in changes:
        body = encode_mutation([(before, [change])], 7)
        [(_, [decoded])] = accelerated.decode(body)
        assert _same([(after, [decoded])], pure.decode(body))
        kept.append(sorted(decoded["cells"]))
    # A simple cell written after the drop (a clock ahead of the DROP's) is kept; a complex column never is.
    assert kept == [["v"], ["gone", "v"]]


def test_a_schema_change_takes_effect_after_refresh() -> None:
    old = _table([("k", "int", "partition_key"), ("v", "int", "regular")])
    new = old.with_columns([*old.columns, Column("w", parse_type("text"), "regular")])
    registry = SchemaRegistry([old])
    accelerated, pure = _decoders(registry)
    body = encode_mutation([(new, [{"kind": "row", "key": {"k": 1}, "cells": {"w": _cell("x")}}])], 7)
    assert _outcome(accelerated, body) == _outcome(pure, body) == MutationDecodeError
    registry.add(new)
    accelerated.refresh()
    pure.refresh()
    [(table, [change])] = accelerated.decode(body)
    assert _same([(table, [change])], pure.decode(body))
    assert (table, change["cells"]) == (new, {"w": _cell("x")})
