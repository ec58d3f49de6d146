"""The blocking checks of a staged batch: each fails when its condition is broken, and a failure keeps the
batch out of every warehouse (nothing staged, nothing committed, the range read again)."""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import pytest

from cdc_assets.cassandra_schema.tables import Column
from cdc_assets.cassandra_schema.types import parse_type
from cdc_assets.change_batch import build_change_batch
from cdc_assets.commitlog.generator import Workload, generate
from cdc_assets.commitlog.reader import Position
from cdc_assets.dead_letters import DeadLetter, DeadLetterStore
from cdc_assets.defs.keys import staged_key, stream_key
from cdc_assets.defs.ledger import committed_stream
from cdc_assets.staging import list_ranges
from cdc_assets.validation import (
    KEYS_NOT_NULL,
    NO_DEAD_LETTERS,
    keys_not_null,
    no_dead_letters,
    positions_continue,
    schema_matches,
)
from cdc_assets_tests.pipeline_harness import open_pipeline, write_config

ORDER = {"order_id": "5a1e5a1e-0000-4000-8000-00000000abcd"}


@pytest.fixture
def shop(tmp_path: Path):
    from cdc_assets.cassandra_schema.cql_file import load_cql_file
    from cdc_assets_tests.pipeline_harness import SHOP_CQL

    registry = load_cql_file(SHOP_CQL)
    return registry.by_name("shop", "orders"), registry.by_name("shop", "customers")


def row(**fields) -> dict:
    return {
        "segment_id": 7,
        "position": 100,
        "kind": "row",
        "key": ORDER,
        "clustering": {"created_at": 1_700_000_000_000},
        "row_writetime": 10,
        **fields,
    }


def test_a_batch_of_another_shape_fails_the_schema_check_naming_the_columns(shop) -> None:
    orders, customers = shop
    batch = build_change_batch(customers, [])
    finding = schema_matches(orders, batch)
    assert not finding.passed
    assert any("missing column 'order_id'" in line for line in finding.details)
    assert schema_matches(orders, build_change_batch(orders, [row()])).passed


def test_a_null_key_fails_the_key_check_with_its_position(shop) -> None:
    orders, _ = shop
    good = build_change_batch(orders, [row()])
    assert keys_not_null(orders, good).passed
    bad = build_change_batch(orders, [row(), row(position=180, clustering={"created_at": None})])
    finding = keys_not_null(orders, bad)
    assert finding.check == KEYS_NOT_NULL and not finding.passed
    assert finding.details == ["'created_at' is null in the change at 7:180"]


def test_a_gap_or_an_overlap_fails_the_continuity_check(shop) -> None:
    orders, _ = shop
    batch = build_change_batch(orders, [row(position=150)])
    assert positions_continue(Position(7, 100), Position(7, 100), Position(7, 150), batch).passed
    gap = positions_continue(Position(7, 50), Position(7, 100), Position(7, 150), batch)
    assert not gap.passed and "gap" in gap.details[0]
    overlap = positions_continue(Position(7, 120), Position(7, 100), Position(7, 150), batch)
    assert not overlap.passed and "overlap" in overlap.details[0]
    reread = positions_continue(Position(7, 150), Position(7, 150), Position(7, 200), batch)
    assert not reread.passed and "read twice" in reread.details[0]


def test_dead_letters_fail_unless_accepted_and_are_listed_with_file_position_and_reason() -> None:
    letters = [DeadLetter("reader", "unknown column 'note'", "CommitLog-7-1.log", 242, "shop.orders")]
    refused = no_dead_letters(letters, accepted=False)
    assert not refused.passed and refused.details == ["CommitLog-7-1.log:242: unknown column 'note'"]
    assert no_dead_letters(letters, accepted=True).passed
    assert no_dead_letters([], accepted=False).check == NO_DEAD_LETTERS


def test_dead_letters_block_the_range_until_the_configuration_accepts_them(
    tmp_path: Path, pg_dsn: str, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch, shop
) -> None:
    monkeypatch.setenv("CDC_TEST_PG", pg_dsn)
    destinations = {"postgres": {"dsn_env": "CDC_TEST_PG", "schema_prefix": "p_"}}
    pipeline = open_pipeline(write_config(tmp_path, destinations), instance)
    orders, customers = shop
    # Orders written under a newer schema (a column the pipeline's schema lacks): each is set aside.
    newer = orders.with_columns([*orders.columns, Column("note", parse_type("text"), "regular")])
    generate([newer], Workload(seed=81, mutations=30), [pipeline.node.cdc_raw])
    log = generate([customers], Workload(seed=82, mutations=200), [pipeline.node.cdc_raw])

    blocked = pipeline.execute(pipeline.tick())
    assert not blocked.success
    evaluations = {
        (e.asset_key, e.check_name): e for e in blocked.get_asset_check_evaluations() if e.asset_key is not None
    }
    letters_check = evaluations[(staged_key("shop.orders"), NO_DEAD_LETTERS)]
    assert not letters_check.passed and "not accepted" in letters_check.description
    assert "unknown column 'note'" in letters_check.metadata["details"].value
    assert evaluations[(staged_key("shop.customers"), NO_DEAD_LETTERS)].passed
    # Kept out of every warehouse: nothing staged, nothing committed, nothing loaded.
    assert committed_stream(instance, "node1") is None
    assert list_ranges(pipeline.config.staging.path) == []
    assert pipeline.current("postgres", "shop.customers") == []
    assert not [e for e in blocked.all_events if e.step_key == "load_postgres" and e.is_step_success]

    accepting = write_config(tmp_path, destinations, checks={"accept_dead_letters": ["shop.orders"]})
    pipeline = open_pipeline(accepting, instance)
    pipeline.written = {"shop.customers": log.changes("shop.customers")}
    deadline = time.monotonic() + 10
    while (request := pipeline.tick()) is None:  # the failed range is requested again after a backoff
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert pipeline.execute(request).success
    assert pipeline.current("postgres", "shop.customers") == pipeline.expected("shop.customers")
    assert committed_stream(instance, "node1") is not None
    stored = list(DeadLetterStore(pipeline.config.dead_letters))
    set_aside = int(letters_check.description.split()[0])
    assert len(stored) == set_aside > 0 and {letter.table for letter in stored} == {"shop.orders"}
    history = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(stream_key("node1"), "positions_continue"), limit=5
    )
    assert history
