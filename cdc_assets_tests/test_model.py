"""The reference model against Cassandra's documented merge semantics, one rule per test.

Expected rows are written out by hand from Cassandra's rules (``Cells.reconcile``, ``LivenessInfo``,
``DeletionTime``, CQL ``SELECT *`` behaviour), not taken from the model.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from cdc_assets.cassandra_model import CassandraModel
from cdc_assets.cassandra_schema.tables import Column, DroppedColumn, TableSchema
from cdc_assets.cassandra_schema.types import CqlType, parse_type
from cdc_assets.change_batch import build_change_batch
from cdc_assets.destinations.cassandra_values import canonical_rows, canonical_value, clustering_key, range_bounds

NOW = datetime(2030, 1, 1, tzinfo=UTC)
NOW_S = int(NOW.timestamp())
ADDRESS = CqlType("udt", (parse_type("int"), parse_type("text")), name="address", field_names=("number", "street"))
TABLE = TableSchema(
    "ks",
    "t",
    uuid.UUID("00000000-0000-4000-8000-000000000001"),
    (
        Column("k", parse_type("int"), "partition_key", 0),
        Column("c", parse_type("int"), "clustering", 0),
        Column("d", parse_type("text"), "clustering", 1, descending=True),
        Column("s", parse_type("int"), "static"),
        Column("v", parse_type("int"), "regular"),
        Column("w", parse_type("text"), "regular"),
        Column("tags", parse_type("set<text>"), "regular"),
        Column("items", parse_type("list<int>"), "regular"),
        Column("scores", parse_type("map<text, int>"), "regular"),
        Column("home", ADDRESS, "regular"),
    ),
)
EMPTY_ROW = {name: None for name in ("s", "v", "w", "tags", "items", "scores", "home")}


def cell(value: Any, writetime: int, *, expires_at: int | None = None, deleted: bool = False) -> dict[str, Any]:
    ttl = None if expires_at is None else 100
    return {"value": value, "writetime": writetime, "ttl": ttl, "expires_at": expires_at, "deleted": deleted}


def tombstone(writetime: int) -> dict[str, Any]:
    return cell(None, writetime, deleted=True)


def row(k: int, c: int, d: str, *, position: int = 0, **fields: Any) -> dict[str, Any]:
    return {
        "segment_id": 1,
        "position": position,
        "kind": "row",
        "key": {"k": k},
        "clustering": {"c": c, "d": d},
        "cells": fields.pop("cells", None),
        **fields,
    }


def state(*changes: dict[str, Any], table: TableSchema = TABLE, now: datetime = NOW) -> list[dict[str, Any]]:
    """The model's current state after applying each change as its own batch, in the given order."""
    model = CassandraModel(table)
    for change in changes:
        model.apply(build_change_batch(table, [change]))
    return model.current_state(now)


def expected(k: int, c: int | None, d: str | None, **values: Any) -> dict[str, Any]:
    return {"k": k, "c": c, "d": d, **EMPTY_ROW, **values}


def test_the_newer_write_wins_whatever_the_arrival_order():
    old, new = row(1, 1, "a", cells={"v": cell(1, 10)}), row(1, 1, "a", cells={"v": cell(2, 20)})
    assert state(old, new) == state(new, old) == [expected(1, 1, "a", v=2)]


def test_on_equal_write_times_a_tombstone_beats_a_live_cell():
    live, dead = row(1, 1, "a", row_writetime=5, cells={"v": cell(7, 10)}), row(1, 1, "a", cells={"v": tombstone(10)})
    assert state(live, dead) == state(dead, live) == [expected(1, 1, "a")]


def test_on_equal_write_times_the_greater_serialized_value_wins():
    # int -1 serializes as ff ff ff ff, which is greater than 00 00 00 02 as unsigned bytes.
    minus_one, two = row(1, 1, "a", cells={"v": cell(-1, 10)}), row(1, 1, "a", cells={"v": cell(2, 10)})
    assert state(minus_one, two) == state(two, minus_one) == [expected(1, 1, "a", v=-1)]


def test_on_equal_write_times_an_expiring_cell_beats_a_plain_one_and_the_later_expiry_wins():
    plain = row(1, 1, "a", cells={"w": cell("z", 10)})
    soon = row(1, 1, "a", cells={"w": cell("a", 10, expires_at=NOW_S + 10)})
    later = row(1, 1, "a", cells={"w": cell("b", 10, expires_at=NOW_S + 20)})
    assert state(plain, soon) == state(soon, plain) == [expected(1, 1, "a", w="a")]
    assert state(later, soon) == state(soon, later) == [expected(1, 1, "a", w="b")]


def test_a_partial_update_changes_only_its_columns():
    insert = row(1, 1, "a", row_writetime=10, cells={"v": cell(1, 10), "w": cell("x", 10)})
    update = row(1, 1, "a", cells={"w": cell("y", 20)})
    assert state(insert, update) == [expected(1, 1, "a", v=1, w="y")]


def test_a_row_deletion_hides_what_was_written_at_or_before_it_and_nothing_after():
    at = row(1, 1, "a", row_writetime=10, cells={"v": cell(1, 10)})
    after = row(1, 1, "a", cells={"w": cell("late", 11)})
    deletion = row(1, 1, "a", deletion_writetime=10)
    assert state(at, after, deletion) == state(deletion, after, at) == [expected(1, 1, "a", w="late")]


def test_a_partition_deletion_hides_rows_and_statics_written_at_or_before_it():
    changes = [
        row(1, 1, "a", row_writetime=5, cells={"v": cell(1, 5)}),
        row(1, 2, "a", row_writetime=9, cells={"v": cell(2, 9)}),
        {"segment_id": 1, "position": 0, "kind": "static_row", "key": {"k": 1}, "cells": {"s": cell(3, 8)}},
        {"segment_id": 1, "position": 0, "kind": "partition_deletion", "key": {"k": 1}, "deletion_writetime": 8},
    ]
    assert state(*changes) == [expected(1, 2, "a", v=2)]


def test_a_range_deletion_covers_its_bounds_in_clustering_order_with_descending_columns():
    rows = [row(1, c, d, row_writetime=1) for c in (1, 2, 3) for d in ("a", "b")]
    # c > 1 AND c <= 2 ... with d DESC, (2, "b") sorts before (2, "a"): deleting from (2, "b") exclusive
    # up to c = 3 inclusive leaves (2, "b").
    deletion = {
        "segment_id": 1,
        "position": 0,
        "kind": "range_deletion",
        "key": {"k": 1},
        "deletion_writetime": 5,
        "range_start": {"c": 2, "d": "b"},
        "range_start_inclusive": False,
        "range_end": {"c": 3},
        "range_end_inclusive": True,
    }
    left = [(r["c"], r["d"]) for r in state(*rows, deletion)]
    assert left == [(1, "b"), (1, "a"), (2, "b")]


def test_range_bounds_order_rows_like_the_clustering():
    low, high = range_bounds(TABLE, {"c": 2, "d": None}, True, {"c": 2, "d": None}, True)
    inside = clustering_key(TABLE, [2, "zzz"])
    before, after = clustering_key(TABLE, [1, "a"]), clustering_key(TABLE, [3, "a"])
    assert low <= inside < high
    assert not low <= before < high
    assert not low <= after < high


def test_a_ttl_cell_vanishes_at_its_expiry():
    change = row(1, 1, "a", row_writetime=1, cells={"v": cell(1, 10, expires_at=NOW_S + 5)})
    assert state(change, now=datetime.fromtimestamp(NOW_S + 4, UTC)) == [expected(1, 1, "a", v=1)]
    assert state(change, now=datetime.fromtimestamp(NOW_S + 5, UTC)) == [expected(1, 1, "a")]


def test_an_expired_cell_still_shadows_an_older_value():
    older = row(1, 1, "a", row_writetime=1, cells={"v": cell(1, 10)})
    expired = row(1, 1, "a", cells={"v": cell(2, 20, expires_at=NOW_S - 1)})
    assert state(older, expired) == [expected(1, 1, "a")]


def test_a_row_with_only_its_insert_marker_is_shown_with_nulls():
    assert state(row(1, 1, "a", row_writetime=1)) == [expected(1, 1, "a")]


def test_a_row_whose_every_cell_is_dead_and_without_marker_is_not_shown():
    assert state(row(1, 1, "a", cells={"v": cell(1, 1)}), row(1, 1, "a", cells={"v": tombstone(2)})) == []


def test_an_expired_row_marker_no_longer_keeps_the_row():
    change = row(1, 1, "a", row_writetime=1, row_ttl=10, row_expires_at=NOW_S - 1)
    assert state(change) == []


def test_a_partition_with_only_static_values_shows_one_row_with_null_clustering():
    static = {"segment_id": 1, "position": 0, "kind": "static_row", "key": {"k": 4}, "cells": {"s": cell(9, 1)}}
    assert state(static) == [expected(4, None, None, s=9)]
    assert state(static, row(4, 1, "a", row_writetime=1)) == [expected(4, 1, "a", s=9)]


def test_collection_elements_merge_one_by_one_and_a_collection_deletion_hides_older_elements():
    def tags(deletion: int | None, *elements: tuple[str, int]) -> dict[str, Any]:
        cells = [{"path": p, "writetime": ts, "ttl": None, "expires_at": None, "deleted": False} for p, ts in elements]
        return row(1, 1, "a", cells={"tags": {"deletion": deletion, "cells": cells}})

    first, second = tags(None, ("x", 1), ("y", 2)), tags(None, ("z", 3))
    assert state(first, second)[0]["tags"] == ["x", "y", "z"]
    overwrite = tags(2, ("w", 3))  # SET tags = {'w'} at 3: a deletion at 3 - 1 = 2, then the element
    assert state(first, second, overwrite)[0]["tags"] == ["w", "z"]


def test_a_list_is_in_the_order_of_its_elements_timeuuids():
    def path(tick: int) -> str:
        return str(uuid.UUID(fields=(tick, 0, 0x1000, 0x80, 0, 1)))

    cells = [
        {"path": path(t), "value": v, "writetime": 1, "ttl": None, "expires_at": None, "deleted": False}
        for t, v in ((30, 3), (10, 1), (20, 2))
    ]
    assert state(row(1, 1, "a", cells={"items": {"deletion": None, "cells": cells}}))[0]["items"] == [1, 2, 3]


def test_user_type_fields_merge_one_by_one():
    def home(number: dict | None, street: dict | None) -> dict[str, Any]:
        return row(1, 1, "a", cells={"home": {"deletion": None, "cells": {"number": number, "street": street}}})

    result = state(home(cell(1, 1), cell("elm", 1)), home(None, cell("oak", 2)))
    assert result[0]["home"] == {"number": 1, "street": "oak"}


def test_a_dropped_column_is_not_shown_and_a_re_added_one_shows_only_later_cells():
    model = CassandraModel(TABLE)
    model.apply(build_change_batch(TABLE, [row(1, 1, "a", row_writetime=1, cells={"w": cell("before", 5)})]))
    without_w = TABLE.with_columns(
        [c for c in TABLE.columns if c.name != "w"], [DroppedColumn("w", parse_type("text"), 10)]
    )
    model.alter(without_w)
    assert "w" not in model.current_state(NOW)[0]
    readded = TABLE.with_columns(TABLE.columns, [DroppedColumn("w", parse_type("text"), 10)])
    model.alter(readded)
    assert model.current_state(NOW)[0]["w"] is None
    model.apply(build_change_batch(readded, [row(1, 1, "a", cells={"w": cell("after", 11)})]))
    assert model.current_state(NOW)[0]["w"] == "after"


COUNTERS = TableSchema(
    "ks",
    "counts",
    uuid.UUID("00000000-0000-4000-8000-0000000000c0"),
    (Column("k", parse_type("int"), "partition_key", 0), Column("n", parse_type("counter"), "regular")),
)
NODE_A, NODE_B = b"\xaa" * 16, b"\xbb" * 16


def counted(writetime: int, *shards: tuple[bytes, int, int], position: int = 0) -> dict[str, Any]:
    """An update of counter ``n`` of partition 1 whose cell holds ``shards`` (counter id, clock, count)."""
    change = {"segment_id": 1, "position": position, "kind": "row", "key": {"k": 1}}
    return {**change, "cells": {"n": cell(list(shards), writetime)}}


def test_increments_led_by_two_nodes_add_up():
    # UPDATE ... SET n = n + 1 led by A, then n = n + 2 led by B: each leader logs its own running count.
    assert state(counted(10, (NODE_A, 1, 1)), counted(20, (NODE_B, 1, 2)), table=COUNTERS) == [{"k": 1, "n": 3}]


def test_a_leaders_newest_clock_wins_whatever_the_order_or_write_time():
    # A's second increment (+4 on 1) carries clock 2 and count 5; arriving first, or with an older write
    # time, it still replaces the first.
    first, second = counted(20, (NODE_A, 1, 1)), counted(10, (NODE_A, 2, 5))
    assert state(second, first, table=COUNTERS) == state(first, second, table=COUNTERS) == [{"k": 1, "n": 5}]


def test_replica_copies_of_one_shard_count_once():
    shard = counted(10, (NODE_A, 7, 4))
    assert state(shard, shard, counted(10, (NODE_A, 7, 4), position=1), table=COUNTERS) == [{"k": 1, "n": 4}]


def test_equal_clocks_keep_the_greater_count():
    # CounterContext.compare: two global shards of one id and clock "differ only in count": the higher wins.
    assert state(counted(10, (NODE_A, 3, 9)), counted(10, (NODE_A, 3, 2)), table=COUNTERS) == [{"k": 1, "n": 9}]


def test_a_merged_context_carries_several_leaders_shards():
    # A read repair logs the merged context; it merges shard by shard with what each leader logged.
    merged = counted(30, (NODE_A, 2, 5), (NODE_B, 1, 2))
    assert state(counted(40, (NODE_B, 4, 7)), merged, table=COUNTERS) == [{"k": 1, "n": 12}]


def test_the_sum_wraps_at_64_bits_as_cassandras_total():
    big = (1 << 63) - 1
    assert state(counted(10, (NODE_A, 1, big)), counted(10, (NODE_B, 1, 2)), table=COUNTERS) == [
        {"k": 1, "n": -(1 << 63) + 1}
    ]


def test_a_counter_tombstone_beats_a_later_increment():
    deletion = {"segment_id": 1, "position": 0, "kind": "row", "key": {"k": 1}, "cells": {"n": tombstone(10)}}
    assert state(counted(20, (NODE_A, 5, 5)), deletion, counted(30, (NODE_B, 6, 1)), table=COUNTERS) == []


def test_a_row_deletion_hides_the_shards_written_before_it():
    # B's shard, written after the deletion, stays; A's, written before, goes.
    deletion = {"segment_id": 1, "position": 0, "kind": "row", "key": {"k": 1}, "deletion_writetime": 15}
    assert state(counted(10, (NODE_A, 1, 1)), counted(20, (NODE_B, 1, 2)), deletion, table=COUNTERS) == [
        {"k": 1, "n": 2}
    ]


def test_canonical_values_have_one_form_per_value():
    assert canonical_value(parse_type("set<int>"), [3, 1, 2]) == [1, 2, 3]
    assert canonical_value(parse_type("map<int, text>"), {2: "b", 1: "a"}) == [(1, "a"), (2, "b")]
    assert canonical_value(parse_type("list<int>"), []) is None
    assert canonical_value(parse_type("float"), 0.1) == 0.10000000149011612
    assert canonical_value(parse_type("double"), float("nan")) == "NaN"
    assert canonical_value(parse_type("timestamp"), datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)) == 1000
    assert canonical_value(parse_type("uuid"), "A0000000-0000-4000-8000-00000000000B") == (
        "a0000000-0000-4000-8000-00000000000b"
    )
    assert canonical_value(parse_type("decimal"), "1.50") == Decimal("1.5")
    assert canonical_value(parse_type("tuple<int, text>"), (1, "x")) == {"f0": 1, "f1": "x"}


def test_canonical_rows_sort_by_partition_key_then_clustering_order():
    rows = [{"k": 2, "c": 1, "d": "a"}, {"k": 1, "c": 1, "d": "a"}, {"k": 1, "c": 1, "d": "b"}]
    assert [(r["k"], r["d"]) for r in canonical_rows(TABLE, rows)] == [(1, "b"), (1, "a"), (2, "a")]
