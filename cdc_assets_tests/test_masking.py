"""Masking before load: each method, every place a value can hide, and the config's errors."""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from cdc_assets.cassandra_model import CassandraModel
from cdc_assets.cassandra_schema.tables import Column, DroppedColumn, TableSchema
from cdc_assets.cassandra_schema.types import CqlType, parse_type
from cdc_assets.change_batch import build_change_batch, change_batch_schema
from cdc_assets.masking import ColumnMask, MaskingError, MaskingPolicy, mask_batch
from cdc_assets_tests.chdb_fixture import new_destination

SALT = "pepper-for-the-tests-0123456789"
KEY = "key-for-the-tests-abcdefghijklmnop"
TS = 1_700_000_000_000_000

RAW_EMAIL = "alice.secret@example.org"
RAW_PHONE = "+44-7700-900123"
RAW_TAG = "vip-customer-tag"
RAW_NOTE_KEY = "allergy-note-key"
RAW_NOTE = "peanut-allergy-severe"
RAW_STREET = "221B Baker Street"
RAW_NICK = "nick-ally-cat"
RAW_CITY = "Hogsmeade-Village"
RAW_BOUND = "sort-key-sensitive"


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_MASK_SALT", SALT)
    monkeypatch.setenv("TEST_MASK_KEY", KEY)


def column(name: str, cql: str, kind: str, position: int = -1) -> Column:
    return Column(name, parse_type(cql), kind, position)  # type: ignore[arg-type]


ADDRESS_UDT = CqlType("udt", (CqlType("text"), CqlType("int")), name="address", field_names=("street", "zip"))


def customers() -> TableSchema:
    return TableSchema(
        keyspace="crm",
        name="customers",
        id=uuid.UUID(int=1),
        columns=(
            column("email", "text", "partition_key", 0),
            column("seen_at", "text", "clustering", 0),
            column("phone", "text", "regular"),
            column("age", "int", "regular"),
            column("tags", "set<text>", "regular"),
            column("notes", "map<text, text>", "regular"),
            column("nicknames", "list<text>", "regular"),
            Column("home", ADDRESS_UDT, "regular"),
            Column("work", ADDRESS_UDT.freeze(), "regular"),
            column("cities", "frozen<list<text>>", "regular"),
        ),
    )


def cell(value: object, writetime: int = TS) -> dict:
    return {"value": value, "writetime": writetime, "ttl": None, "expires_at": None, "deleted": False}


def customer_batch() -> pa.RecordBatch:
    return build_change_batch(
        customers(),
        [
            {
                "segment_id": 1,
                "position": 100,
                "kind": "row",
                "key": {"email": RAW_EMAIL},
                "clustering": {"seen_at": "2024-01-01"},
                "row_writetime": TS,
                "cells": {
                    "phone": cell(RAW_PHONE),
                    "age": cell(42),
                    "tags": {"deletion": TS - 1, "cells": [{**cell(None), "path": RAW_TAG}]},
                    "notes": {"deletion": None, "cells": [{**cell(RAW_NOTE), "path": RAW_NOTE_KEY}]},
                    "nicknames": {"deletion": None, "cells": [{**cell(RAW_NICK), "path": str(uuid.uuid1())}]},
                    "home": {"deletion": None, "cells": {"street": cell(RAW_STREET), "zip": None}},
                    "work": cell({"street": RAW_STREET, "zip": 90210}),
                    "cities": cell([RAW_CITY, "Diagon Alley"]),
                },
            },
            {
                "segment_id": 1,
                "position": 200,
                "kind": "range_deletion",
                "key": {"email": RAW_EMAIL},
                "deletion_writetime": TS + 5,
                "deletion_time": 1_700_000_000,
                "range_start": {"seen_at": RAW_BOUND},
                "range_start_inclusive": True,
                "range_end": {"seen_at": RAW_BOUND},
                "range_end_inclusive": True,
            },
        ],
    )


def hash_everything(method: str) -> MaskingPolicy:
    secret = {"salt_env": "TEST_MASK_SALT"} if method == "sha256" else {"key_env": "TEST_MASK_KEY"}
    names = ["email", "seen_at", "phone", "age", "tags", "notes", "nicknames", "home", "work", "cities"]
    return MaskingPolicy(columns={f"crm.customers.{name}": {"method": method, **secret} for name in names})


RAW_VALUES = [
    RAW_EMAIL,
    RAW_PHONE,
    RAW_TAG,
    RAW_NOTE_KEY,
    RAW_NOTE,
    RAW_STREET,
    RAW_NICK,
    RAW_CITY,
    RAW_BOUND,
]


def parquet_bytes(batch: pa.RecordBatch) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_batches([batch]), sink, compression="NONE")
    return sink.getvalue()


def expected_sha256(text: str) -> str:
    return hashlib.sha256(SALT.encode() + text.encode()).hexdigest()


def expected_hmac(text: str) -> str:
    return hmac.new(KEY.encode(), text.encode(), hashlib.sha256).hexdigest()


@pytest.mark.parametrize("method", ["sha256", "hmac", "tokenize"])
def test_raw_values_appear_nowhere_in_the_masked_batch_its_parquet_or_the_logs(
    method: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    batch = customer_batch()
    assert RAW_NOTE.encode() in parquet_bytes(batch)  # the probe can see a raw value when one is there

    _, masked = mask_batch(customers(), batch, hash_everything(method))

    rows = repr(masked.to_pylist())
    data = parquet_bytes(masked)
    for raw in RAW_VALUES:
        assert raw not in rows
        assert raw.encode() not in data
        assert raw not in caplog.text
    assert SALT not in caplog.text and KEY not in caplog.text


def test_sha256_is_the_salted_digest_of_the_value_text() -> None:
    _, masked = mask_batch(customers(), customer_batch(), hash_everything("sha256"))
    row = masked.to_pylist()[0]
    assert row["email"] == expected_sha256(RAW_EMAIL)
    assert row["phone"]["value"] == expected_sha256(RAW_PHONE)
    assert row["age"]["value"] == expected_sha256("42")


def test_hmac_is_the_keyed_digest_of_the_value_text() -> None:
    _, masked = mask_batch(customers(), customer_batch(), hash_everything("hmac"))
    row = masked.to_pylist()[0]
    assert row["email"] == expected_hmac(RAW_EMAIL)
    assert row["age"]["value"] == expected_hmac("42")


def test_redact_replaces_every_present_value_and_keeps_nulls_and_cell_metadata() -> None:
    table = customers()
    policy = MaskingPolicy(
        columns={
            "crm.customers.phone": {"method": "redact"},
            "crm.customers.home": {"method": "redact"},
            "crm.customers.cities": {"method": "redact"},
        }
    )
    _, masked = mask_batch(table, customer_batch(), policy)
    rows = masked.to_pylist()
    assert rows[0]["phone"] == cell("[redacted]")
    assert rows[0]["home"]["cells"] == {"street": cell("[redacted]"), "zip": None}
    assert rows[0]["cities"]["value"] == ["[redacted]", "[redacted]"]
    assert rows[1]["phone"] is None


def test_drop_removes_the_column_from_the_table_and_the_batch() -> None:
    policy = MaskingPolicy(columns={"crm.customers.phone": {"method": "drop"}})
    table, masked = mask_batch(customers(), customer_batch(), policy)
    assert table.column("phone") is None
    assert "phone" not in masked.schema.names
    assert masked.num_rows == 2


def test_masked_columns_become_text_and_the_batch_has_the_masked_tables_schema() -> None:
    table, masked = mask_batch(customers(), customer_batch(), hash_everything("hmac"))
    assert table.column("email").type.cql() == "text"
    assert table.column("age").type.cql() == "text"
    assert table.column("notes").type.cql() == "map<text, text>"
    assert table.column("home").type.cql() == "address_masked"
    assert [arg.cql() for arg in table.column("home").type.args] == ["text", "text"]
    assert table.column("cities").type.cql() == "frozen<list<text>>"
    assert masked.schema.equals(change_batch_schema(table), check_metadata=True)


def test_collection_elements_udt_fields_and_frozen_values_are_masked() -> None:
    _, masked = mask_batch(customers(), customer_batch(), hash_everything("hmac"))
    row = masked.to_pylist()[0]
    assert row["tags"]["cells"][0]["path"] == expected_hmac(RAW_TAG)
    assert row["tags"]["deletion"] == TS - 1
    assert row["notes"]["cells"][0]["path"] == expected_hmac(RAW_NOTE_KEY)
    assert row["notes"]["cells"][0]["value"] == expected_hmac(RAW_NOTE)
    assert row["nicknames"]["cells"][0]["value"] == expected_hmac(RAW_NICK)
    assert row["home"]["cells"]["street"]["value"] == expected_hmac(RAW_STREET)
    assert row["work"]["value"] == {"street": expected_hmac(RAW_STREET), "zip": expected_hmac("90210")}
    assert row["cities"]["value"] == [expected_hmac(RAW_CITY), expected_hmac("Diagon Alley")]


def test_list_element_paths_are_kept_so_list_order_survives() -> None:
    batch = customer_batch()
    _, masked = mask_batch(customers(), batch, hash_everything("hmac"))
    path = batch.to_pylist()[0]["nicknames"]["cells"][0]["path"]
    assert masked.to_pylist()[0]["nicknames"]["cells"][0]["path"] == path


def test_range_deletion_bounds_on_a_masked_clustering_column_are_masked() -> None:
    _, masked = mask_batch(customers(), customer_batch(), hash_everything("hmac"))
    deletion = masked.to_pylist()[1]
    assert deletion["_cdc_range_start"] == {"seen_at": expected_hmac(RAW_BOUND)}
    assert deletion["_cdc_range_end"] == {"seen_at": expected_hmac(RAW_BOUND)}


def test_an_inequality_range_deletion_on_a_masked_clustering_column_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = customers()
    batch = build_change_batch(
        table,
        [
            {
                "segment_id": 1,
                "position": 10,
                "kind": "range_deletion",
                "key": {"email": RAW_EMAIL},
                "deletion_writetime": TS,
                "range_start": {"seen_at": RAW_BOUND},
                "range_start_inclusive": False,
            }
        ],
    )
    mask_batch(table, batch, hash_everything("hmac"))
    assert "1 range deletion(s)" in caplog.text
    assert RAW_BOUND not in caplog.text


def test_an_equality_range_deletion_on_a_masked_clustering_column_is_not_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mask_batch(customers(), customer_batch(), hash_everything("hmac"))
    assert "range deletion" not in caplog.text


def test_scalars_are_hashed_as_their_documented_text() -> None:
    table = TableSchema(
        keyspace="ks",
        name="scalars",
        id=uuid.UUID(int=3),
        columns=(
            column("id", "int", "partition_key", 0),
            column("at", "timestamp", "regular"),
            column("raw", "blob", "regular"),
            column("took", "duration", "regular"),
            column("ok", "boolean", "regular"),
        ),
    )
    batch = build_change_batch(
        table,
        [
            {
                "segment_id": 1,
                "position": 1,
                "kind": "row",
                "key": {"id": 1},
                "cells": {
                    "at": cell(1_700_000_000_123),
                    "raw": cell(b"\x00\xffbytes"),
                    "took": cell((1, 2, 3)),
                    "ok": cell(True),
                },
            }
        ],
    )
    names = ["at", "raw", "took", "ok"]
    policy = MaskingPolicy(columns={f"ks.scalars.{n}": {"method": "hmac", "key_env": "TEST_MASK_KEY"} for n in names})
    _, masked = mask_batch(table, batch, policy)
    row = masked.to_pylist()[0]
    mac = hmac.new(KEY.encode(), b"\x00\xffbytes", hashlib.sha256).hexdigest()
    assert row["at"]["value"] == expected_hmac("2023-11-14 22:13:20.123Z")
    assert row["raw"]["value"] == mac
    assert row["took"]["value"] == expected_hmac("1mo2d3ns")
    assert row["ok"]["value"] == expected_hmac("true")


def test_tokens_are_prefixed_deterministic_and_equal_across_tables_so_joins_keep_working() -> None:
    orders = TableSchema(
        keyspace="shop",
        name="orders",
        id=uuid.UUID(int=2),
        columns=(column("order_id", "int", "partition_key", 0), column("customer", "text", "regular")),
    )
    order_batch = build_change_batch(
        orders,
        [
            {
                "segment_id": 1,
                "position": 5,
                "kind": "row",
                "key": {"order_id": 7},
                "cells": {"customer": cell(RAW_EMAIL)},
            },
            {
                "segment_id": 1,
                "position": 6,
                "kind": "row",
                "key": {"order_id": 8},
                "cells": {"customer": cell("bob@x.org")},
            },
        ],
    )
    policy = MaskingPolicy(
        columns={
            "crm.customers.email": {"method": "tokenize", "key_env": "TEST_MASK_KEY"},
            "shop.orders.customer": {
                "method": "tokenize",
                "key_env": "TEST_MASK_KEY",
                "token_prefix": "tok_",
            },
        }
    )
    _, customer_rows = mask_batch(customers(), customer_batch(), policy)
    _, order_rows = mask_batch(orders, order_batch, policy)
    _, order_rows_again = mask_batch(orders, order_batch, policy)

    customer_token = customer_rows.to_pylist()[0]["email"]
    order_tokens = [row["customer"]["value"] for row in order_rows.to_pylist()]
    assert customer_token.startswith("tok_") and len(customer_token) == len("tok_") + 32
    assert order_tokens[0] == customer_token
    assert order_tokens[1] != customer_token
    assert order_rows_again.equals(order_rows)


def test_a_different_key_gives_different_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = MaskingPolicy(columns={"crm.customers.email": {"method": "tokenize", "key_env": "TEST_MASK_KEY"}})
    _, first = mask_batch(customers(), customer_batch(), policy)
    monkeypatch.setenv("TEST_MASK_KEY", KEY + "-rotated")
    rotated = MaskingPolicy(columns={"crm.customers.email": {"method": "tokenize", "key_env": "TEST_MASK_KEY"}})
    _, second = mask_batch(customers(), customer_batch(), rotated)
    assert first.column("email")[0] != second.column("email")[0]


def test_masking_a_sliced_batch_masks_exactly_its_rows() -> None:
    full = customer_batch()
    _, masked_whole = mask_batch(customers(), full, hash_everything("hmac"))
    _, masked_slice = mask_batch(customers(), full.slice(1), hash_everything("hmac"))
    assert masked_slice.to_pylist() == masked_whole.slice(1).to_pylist()


def test_columns_not_named_by_the_policy_pass_through_unchanged() -> None:
    policy = MaskingPolicy(columns={"crm.customers.phone": {"method": "redact"}})
    batch = customer_batch()
    _, masked = mask_batch(customers(), batch, policy)
    assert masked.column("age").equals(batch.column("age"))
    assert masked.column("email").equals(batch.column("email"))


def test_a_batch_cannot_be_masked_twice() -> None:
    _, masked = mask_batch(customers(), customer_batch(), hash_everything("hmac"))
    with pytest.raises(MaskingError, match="change-batch schema"):
        mask_batch(customers(), masked, hash_everything("hmac"))


@pytest.mark.parametrize("method", ["drop", "redact"])
def test_key_columns_reject_methods_that_would_break_merges(method: str) -> None:
    policy = MaskingPolicy(columns={"crm.customers.email": {"method": method}})
    with pytest.raises(MaskingError, match=r"crm\.customers\.email: .*primary-key"):
        mask_batch(customers(), customer_batch(), policy)


def test_redact_is_rejected_on_a_set_or_map_because_it_would_fold_elements() -> None:
    policy = MaskingPolicy(columns={"crm.customers.tags": {"method": "redact"}})
    with pytest.raises(MaskingError, match=r"crm\.customers\.tags: .*fold"):
        mask_batch(customers(), customer_batch(), policy)


@pytest.mark.parametrize("method", ["redact", "sha256", "hmac", "tokenize"])
def test_a_counter_can_only_be_dropped_since_no_change_holds_its_value(method: str) -> None:
    visits = TableSchema(
        "crm",
        "visits",
        uuid.UUID(int=2),
        (column("email", "text", "partition_key", 0), column("hits", "counter", "regular")),
    )
    batch = build_change_batch(
        visits,
        [
            {
                "segment_id": 1,
                "position": 0,
                "kind": "row",
                "key": {"email": RAW_EMAIL},
                "cells": {"hits": cell([(b"\x0a" * 16, 1, 5)])},
            }
        ],
    )
    options = {"salt_env": "TEST_MASK_SALT"} if method == "sha256" else {}
    options |= {"key_env": "TEST_MASK_KEY"} if method in ("hmac", "tokenize") else {}
    policy = MaskingPolicy(columns={"crm.visits.hits": {"method": method, **options}})
    with pytest.raises(MaskingError, match=r"crm\.visits\.hits: .*use drop"):
        mask_batch(visits, batch, policy)
    dropped, masked = mask_batch(visits, batch, MaskingPolicy(columns={"crm.visits.hits": {"method": "drop"}}))
    assert dropped.column("hits") is None and "hits" not in masked.schema.names


def test_a_policy_naming_a_missing_column_is_an_error_naming_the_key() -> None:
    policy = MaskingPolicy(columns={"crm.customers.emial": {"method": "drop"}})
    with pytest.raises(MaskingError, match=r"crm\.customers\.emial"):
        mask_batch(customers(), customer_batch(), policy)


def test_a_mask_for_a_column_dropped_in_cassandra_is_skipped() -> None:
    table = customers()
    dropped = table.with_columns(
        [c for c in table.columns if c.name != "phone"], [DroppedColumn("phone", parse_type("text"), TS)]
    )
    batch = customer_batch().drop_columns(["phone"])
    policy = MaskingPolicy(columns={"crm.customers.phone": {"method": "redact"}})
    assert mask_batch(dropped, batch, policy) == (dropped, batch)


def test_an_unknown_method_is_an_error_naming_the_key() -> None:
    with pytest.raises(ValidationError, match=r"columns\.`crm\.customers\.phone`\.method"):
        MaskingPolicy(columns={"crm.customers.phone": {"method": "rot13"}})


def test_a_key_that_is_not_keyspace_table_column_is_an_error_naming_it() -> None:
    with pytest.raises(ValidationError, match=r"'customers\.phone' is not of the form"):
        MaskingPolicy(columns={"customers.phone": {"method": "drop"}})


def test_a_missing_secret_variable_is_an_error_naming_the_key_and_the_variable() -> None:
    with pytest.raises(ValidationError, match=r"(?s)crm\.customers\.phone.*'NOT_SET_ANYWHERE' is not set"):
        MaskingPolicy(columns={"crm.customers.phone": {"method": "hmac", "key_env": "NOT_SET_ANYWHERE"}})


def test_a_method_without_its_secret_option_is_an_error() -> None:
    with pytest.raises(ValidationError, match="needs salt_env"):
        ColumnMask(method="sha256")


def test_a_short_secret_is_rejected_without_showing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SHORT_KEY", "tiny-secret")
    with pytest.raises(ValidationError) as error:
        ColumnMask(method="hmac", key_env="TEST_SHORT_KEY")
    assert "fewer than 16 bytes" in str(error.value)
    assert "tiny-secret" not in str(error.value)


def test_secrets_never_appear_in_reprs_or_dumps() -> None:
    policy = hash_everything("hmac")
    salted = ColumnMask(method="sha256", salt_env="TEST_MASK_SALT")
    for text in (repr(policy), str(policy), policy.model_dump_json(), repr(salted), str(salted.model_dump())):
        assert KEY not in text and SALT not in text


def test_a_masked_batch_loads_into_a_real_destination_that_converges_without_raw_values(
    chdb_dsn: str,
) -> None:
    table, masked = mask_batch(customers(), customer_batch(), hash_everything("tokenize"))
    expected = CassandraModel(table)
    expected.apply(masked)
    clickhouse = new_destination(chdb_dsn)
    try:
        clickhouse.ensure_table(table)
        clickhouse.load(table, masked, load_id="masked-1")
        state = clickhouse.current_state(table)
    finally:
        clickhouse.close()
    assert state == expected.current_state()
    assert state[0]["email"].startswith("tok_")
    for raw in RAW_VALUES:
        assert raw not in repr(state)
