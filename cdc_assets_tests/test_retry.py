"""Retries with backoff and jitter, and loading one batch into every destination."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

import pyarrow as pa
import pytest

from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.cassandra_schema.types import parse_type
from cdc_assets.change_batch import build_change_batch
from cdc_assets.destinations.base import (
    DestinationError,
    LoadResult,
    PermanentDestinationError,
    TransientDestinationError,
)
from cdc_assets.destinations.postgres.destination import PostgresDestination
from cdc_assets.retry import backoff_delay, load_everywhere, retry
from cdc_assets_tests.chdb_fixture import new_destination

TABLE = TableSchema(
    keyspace="ks",
    name="events",
    id=uuid.UUID(int=7),
    columns=(Column("id", parse_type("int"), "partition_key", 0), Column("v", parse_type("text"), "regular")),
)


def failing(errors: list[Exception], result: str = "done") -> tuple[Callable[[], str], list[int]]:
    """A function raising ``errors`` one call at a time, then returning ``result``; and its call log."""
    calls: list[int] = []

    def fn() -> str:
        calls.append(len(calls) + 1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return result

    return fn, calls


def test_the_delay_doubles_from_the_base_delay_without_jitter() -> None:
    sleeps: list[float] = []
    fn, _ = failing([TransientDestinationError("timeout")] * 4)
    assert retry(fn, attempts=5, base_delay=0.1, max_delay=100, jitter=0, sleep=sleeps.append) == "done"
    assert sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8])


def test_the_delay_never_exceeds_the_max_delay() -> None:
    sleeps: list[float] = []
    fn, _ = failing([TransientDestinationError("timeout")] * 6)
    retry(fn, attempts=7, base_delay=1, max_delay=5, jitter=0, sleep=sleeps.append)
    assert sleeps == pytest.approx([1, 2, 4, 5, 5, 5])


def test_full_jitter_draws_between_zero_and_the_doubling_ceiling() -> None:
    for retry_number, ceiling in ((1, 0.5), (3, 2.0), (10, 30.0)):
        delays = [backoff_delay(retry_number, base_delay=0.5, max_delay=30, jitter=1) for _ in range(500)]
        assert all(0 <= delay <= ceiling for delay in delays)
        assert min(delays) < ceiling * 0.2 and max(delays) > ceiling * 0.8


def test_partial_jitter_stays_within_its_share_below_the_ceiling() -> None:
    delays = [backoff_delay(2, base_delay=1, max_delay=30, jitter=0.25) for _ in range(500)]
    assert all(1.5 <= delay <= 2.0 for delay in delays)
    assert len(set(delays)) > 1


def test_a_permanent_error_is_raised_at_once_even_when_its_base_class_is_retried() -> None:
    sleeps: list[float] = []
    fn, calls = failing([PermanentDestinationError("bad credentials")])
    with pytest.raises(PermanentDestinationError, match="bad credentials"):
        retry(fn, attempts=5, retry_on=(DestinationError,), sleep=sleeps.append)
    assert calls == [1]
    assert sleeps == []


def test_an_error_not_listed_in_retry_on_is_raised_at_once() -> None:
    fn, calls = failing([KeyError("bug")])
    with pytest.raises(KeyError):
        retry(fn, attempts=5, sleep=lambda _: None)
    assert calls == [1]


def test_the_last_error_is_raised_after_the_final_attempt() -> None:
    sleeps: list[float] = []
    errors: list[Exception] = [TransientDestinationError(f"timeout {n}") for n in (1, 2, 3)]
    fn, calls = failing(errors)
    with pytest.raises(TransientDestinationError, match="timeout 3"):
        retry(fn, attempts=3, sleep=sleeps.append)
    assert calls == [1, 2, 3]
    assert len(sleeps) == 2


def test_each_retry_is_logged_without_the_password_of_a_connection_string(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    fn, _ = failing(
        [
            TransientDestinationError("connection to host=db user=cdc password=hunter2 failed"),
            TransientDestinationError("could not reach postgresql://cdc:s3cr3t@db:5432/x"),
        ]
    )
    retry(fn, attempts=3, sleep=lambda _: None, what="load 42 of ks.events into postgres")
    assert "load 42 of ks.events into postgres failed (attempt 1 of 3)" in caplog.text
    assert "(attempt 2 of 3)" in caplog.text
    assert "hunter2" not in caplog.text and "s3cr3t" not in caplog.text
    assert len(caplog.records) == 2


class ScriptedDestination:
    """An in-memory destination whose loads raise the given errors, then record the batch.

    Here the retry logic is under test, not a destination, so a scripted one is what keeps the
    failures exact.
    """

    def __init__(self, name: str, errors: list[Exception]):
        self.name = name
        self.errors = list(errors)
        self.loaded: list[str] = []
        self.attempts = 0

    def ensure_table(self, table: TableSchema) -> None:
        return None

    def load(self, table: TableSchema, batch: pa.RecordBatch, *, load_id: str) -> LoadResult:
        self.attempts += 1
        if self.errors:
            raise self.errors.pop(0)
        self.loaded.append(load_id)
        return LoadResult(self.name, table.qualified_name, batch.num_rows, None, None, 0.0)

    def current_state(self, table: TableSchema, *, now: object = None) -> list[dict]:
        return []


def one_batch() -> pa.RecordBatch:
    cell = {"value": "hello", "writetime": 1_000, "ttl": None, "expires_at": None, "deleted": False}
    change = {"segment_id": 1, "position": 10, "kind": "row", "key": {"id": 1}, "row_writetime": 1_000}
    return build_change_batch(TABLE, [{**change, "cells": {"v": cell}}])


def test_a_permanent_failure_in_one_destination_does_not_stop_the_others() -> None:
    broken = ScriptedDestination("postgres", [PermanentDestinationError("column type mismatch")])
    flaky = ScriptedDestination("clickhouse", [TransientDestinationError("timeout")] * 2)
    results = load_everywhere([broken, flaky], TABLE, one_batch(), "load-1", sleep=lambda _: None)

    assert isinstance(results["postgres"], PermanentDestinationError)
    assert "column type mismatch" in str(results["postgres"])
    assert broken.attempts == 1
    assert isinstance(results["clickhouse"], LoadResult)
    assert results["clickhouse"].rows == 1
    assert flaky.loaded == ["load-1"] and flaky.attempts == 3


def test_a_destination_still_failing_after_its_last_retry_reports_the_last_error() -> None:
    down = ScriptedDestination("timescale", [TransientDestinationError(f"refused {n}") for n in range(1, 4)])
    healthy = ScriptedDestination("postgres", [])
    results = load_everywhere([down, healthy], TABLE, one_batch(), "load-2", attempts=3, sleep=lambda _: None)

    assert isinstance(results["timescale"], TransientDestinationError)
    assert str(results["timescale"]) == "refused 3"
    assert isinstance(results["postgres"], LoadResult)


def test_an_unexpected_error_in_one_destination_is_reported_and_the_others_load(
    caplog: pytest.LogCaptureFixture,
) -> None:
    buggy = ScriptedDestination("clickhouse", [KeyError("missing column")])
    healthy = ScriptedDestination("postgres", [])
    results = load_everywhere([buggy, healthy], TABLE, one_batch(), "load-3", sleep=lambda _: None)

    assert isinstance(results["clickhouse"], KeyError)
    assert isinstance(results["postgres"], LoadResult)
    assert "load load-3 of ks.events into clickhouse failed: KeyError" in caplog.text


def test_two_destinations_with_one_name_are_refused_before_loading() -> None:
    first, second = ScriptedDestination("postgres", []), ScriptedDestination("postgres", [])
    with pytest.raises(ValueError, match="unique"):
        load_everywhere([first, second], TABLE, one_batch(), "load-4")
    assert first.attempts == 0


def test_a_real_destination_that_cannot_connect_does_not_stop_a_real_one_that_can(chdb_dsn: str) -> None:
    unreachable = PostgresDestination("host=127.0.0.1 port=1 user=postgres dbname=test connect_timeout=2")
    clickhouse = new_destination(chdb_dsn)
    sleeps: list[float] = []
    try:
        results = load_everywhere(
            [unreachable, clickhouse], TABLE, one_batch(), "load-5", attempts=2, sleep=sleeps.append
        )
        assert isinstance(results["postgres"], TransientDestinationError)
        assert len(sleeps) == 1
        assert isinstance(results["clickhouse"], LoadResult)
        assert clickhouse.current_state(TABLE) == [{"id": 1, "v": "hello"}]
    finally:
        clickhouse.close()
