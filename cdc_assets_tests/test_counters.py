"""Counters led by several nodes, end to end: the bytes a node logs → the reader → the change batch → every
destination and the model, which must all give what Cassandra's ``SELECT *`` gives.

A leader logs its own shard (its counter id, a clock, its running count), neither the delta nor the total
(``CounterMutation``); the value is the sum of every leader's newest shard (``CounterContext``); a counter
tombstone wins over every shard, whatever the write times (``Cells.resolveCounter``). Expected values are
worked out by hand from those rules.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from cdc_assets.cassandra_model import CassandraModel
from cdc_assets.cassandra_schema.tables import Column, SchemaRegistry, TableSchema
from cdc_assets.cassandra_schema.types import parse_type
from cdc_assets.commitlog.dump import json_converter
from cdc_assets.commitlog.generator.encoding import encode_mutation
from cdc_assets.commitlog.generator.segment_writer import SegmentWriter
from cdc_assets.commitlog.reader import CommitLogReader
from cdc_assets.destinations.base import Destination
from cdc_assets.destinations.clickhouse.destination import ClickHouseDestination
from cdc_assets.destinations.postgres.destination import PostgresDestination
from cdc_assets.destinations.timescale.destination import TimescaleDestination

NOW = datetime(2030, 1, 1, tzinfo=UTC)
NODE_A, NODE_B = uuid.UUID("0000000a-0000-1000-8000-00000000000a"), uuid.UUID("0000000b-0000-1000-8000-00000000000b")
PAGES = TableSchema(
    "web",
    "Pages",
    uuid.UUID("6b2d1e7f-0000-4000-8000-0000000000c1"),
    (
        Column("site", parse_type("text"), "partition_key", 0),
        Column("path", parse_type("text"), "clustering", 0),
        Column("Views", parse_type("counter"), "regular"),
        Column("likes", parse_type("counter"), "regular"),
    ),
)


def update(writetime: int, *shards: tuple[uuid.UUID, int, int], column: str = "Views") -> list[dict[str, Any]]:
    """One logged counter update of page ("a", "/"): its cell holds ``shards`` (leader, clock, running count)."""
    value = [(leader.bytes, clock, count) for leader, clock, count in shards]
    cell = {"value": value, "writetime": writetime, "ttl": None, "expires_at": None, "deleted": False}
    return [{"kind": "row", "key": {"site": "a"}, "clustering": {"path": "/"}, "cells": {column: cell}}]


def delete_counter(writetime: int) -> list[dict[str, Any]]:
    """``DELETE "Views" FROM web."Pages" WHERE site = 'a' AND path = '/'``: a counter tombstone."""
    cell = {"value": None, "writetime": writetime, "ttl": None, "expires_at": None, "deleted": True}
    return [{"kind": "row", "key": {"site": "a"}, "clustering": {"path": "/"}, "cells": {"Views": cell}}]


def delete_row(writetime: int) -> list[dict[str, Any]]:
    deletion = {"deletion_writetime": writetime, "deletion_time": 1_700_000_000}
    return [{"kind": "row", "key": {"site": "a"}, "clustering": {"path": "/"}, **deletion}]


def logged(directory: Path, mutations: list[list[dict[str, Any]]]) -> pa.RecordBatch:
    """The change batch the reader gives for a segment holding ``mutations``, as a node writes them."""
    writer = SegmentWriter(directory, 1_700_000_000_001, 7, None)
    for changes in mutations:
        writer.append(encode_mutation([(PAGES, changes)], 7))
    writer.close()
    result = CommitLogReader(SchemaRegistry([PAGES]), track_schema=False).read_segment(writer.path)
    assert result.stats.problems == [] and result.stats.dead_letters == []
    return result.batches[PAGES.qualified_name]


@pytest.fixture(params=["postgres", "timescale", "clickhouse"])
def destination(
    request: pytest.FixtureRequest, pg_dsn: str, clickhouse_factory: Callable[[Path | None], ClickHouseDestination]
) -> Iterator[Destination]:
    made: Destination
    if request.param == "postgres":
        made = PostgresDestination(pg_dsn)
    elif request.param == "timescale":
        made = TimescaleDestination(pg_dsn, allow_plain_postgres=True)
    else:
        made = clickhouse_factory(None)
    with closing(made):
        yield made


def states(destination: Destination, batch: pa.RecordBatch) -> tuple[list[dict], list[dict]]:
    """The destination's and the model's current state once ``batch`` is loaded."""
    model = CassandraModel(PAGES)
    model.apply(batch)
    destination.ensure_table(PAGES)
    destination.load(PAGES, batch, load_id="counters")
    return destination.current_state(PAGES, now=NOW), model.current_state(NOW)


def page(views: int | None, likes: int | None = None) -> list[dict[str, Any]]:
    return [{"site": "a", "path": "/", "Views": views, "likes": likes}]


def test_increments_led_by_two_nodes_sum_to_their_total(destination: Destination, tmp_path: Path) -> None:
    # UPDATE ... SET "Views" = "Views" + 1 led by A, then + 2 led by B: A logs its count 1, B its count 2.
    batch = logged(tmp_path, [update(10, (NODE_A, 1, 1)), update(20, (NODE_B, 1, 2))])
    assert states(destination, batch) == (page(3), page(3))


def test_each_leaders_newest_shard_counts_once_however_many_replicas_log_it(
    destination: Destination, tmp_path: Path
) -> None:
    # A: +1 then +4 (count 1 at clock 1, 5 at clock 2); B: +2. Three replicas log each update; a read repair
    # logs the merged context of A's first and B's shards; A's newest shard arrives first.
    a1, a2, b1 = update(10, (NODE_A, 1, 1)), update(30, (NODE_A, 2, 5)), update(20, (NODE_B, 1, 2))
    repair = update(20, (NODE_A, 1, 1), (NODE_B, 1, 2))
    batch = logged(tmp_path, [a2, a2, a2, a1, b1, a1, b1, repair, a1, b1])
    assert states(destination, batch) == (page(7), page(7))


def test_a_counter_tombstone_wins_over_newer_shards(destination: Destination, tmp_path: Path) -> None:
    # "Views" is deleted (at 5) before B's increment (at 20), yet stays deleted; "likes" sums its leaders.
    views = [update(10, (NODE_A, 1, 1)), delete_counter(5), update(20, (NODE_B, 1, 2))]
    likes = [update(10, (NODE_A, 1, 1), column="likes"), update(20, (NODE_B, 1, 2), column="likes")]
    batch = logged(tmp_path, [*views, *likes])
    assert states(destination, batch) == (page(None, 3), page(None, 3))


def test_a_row_deletion_hides_only_the_shards_written_before_it(destination: Destination, tmp_path: Path) -> None:
    # Deleted at 15: A's first shard (written at 10) goes, but A's next one (clock 2, count 5, at 30) and B's
    # (at 20) stay.
    before = [update(10, (NODE_A, 1, 1)), update(20, (NODE_B, 1, 2))]
    batch = logged(tmp_path, [*before, delete_row(15), update(30, (NODE_A, 2, 5))])
    assert states(destination, batch) == (page(7), page(7))


def test_the_total_wraps_at_64_bits_as_cassandras(destination: Destination, tmp_path: Path) -> None:
    batch = logged(tmp_path, [update(10, (NODE_A, 1, (1 << 63) - 1)), update(20, (NODE_B, 1, 2))])
    assert states(destination, batch) == (page(-(1 << 63) + 1), page(-(1 << 63) + 1))


def test_the_dump_shows_each_leaders_shard_under_its_counter_id() -> None:
    shards = [(NODE_A.bytes, 2, 5), (NODE_B.bytes, 1, 2)]
    assert json_converter(parse_type("counter"))(shards) == [
        {"counter_id": "0000000a-0000-1000-8000-00000000000a", "clock": 2, "count": 5},
        {"counter_id": "0000000b-0000-1000-8000-00000000000b", "clock": 1, "count": 2},
    ]
