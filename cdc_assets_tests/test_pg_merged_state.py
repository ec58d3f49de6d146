"""PostgreSQL's and TimescaleDB's merged current state: deletions applied when merged, expiry left to the read.

The view must read like a table: these tests look at the stored rows (what a deletion left of them, until when
each stays visible) and at the view's plans, on both destinations, which share the storage.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

from cdc_assets.change_batch import build_change_batch
from cdc_assets.destinations.postgres import probe
from cdc_assets.destinations.postgres import staging as st
from cdc_assets.destinations.postgres.destination import PostgresDestination
from cdc_assets.destinations.postgres.layout import DEAD, MIN_WRITETIME, ident
from cdc_assets.destinations.postgres.staging import shown_name, shown_until_name
from cdc_assets.destinations.timescale.destination import TimescaleDestination
from cdc_assets_tests import strategies
from cdc_assets_tests.test_postgres import NOW, NOW_S, SIMPLE, cell, elements, query, row, table_of

_examples = itertools.count()


@pytest.fixture(params=["postgres", "timescale"])
def destination(request: pytest.FixtureRequest, pg_dsn: str) -> Iterator[PostgresDestination]:
    made = (
        PostgresDestination(pg_dsn)
        if request.param == "postgres"
        else TimescaleDestination(pg_dsn, allow_plain_postgres=True)
    )
    yield made
    made.close()


def range_deletion(low: int, high: int, writetime: int, position: int = 0) -> dict[str, Any]:
    """A deletion of clustering rows ``low`` ≤ c ≤ ``high`` of partition k = 1."""
    return {
        **row({"k": 1}, position=position, deletion_writetime=writetime),
        "kind": "range_deletion",
        "range_start": {"c": low},
        "range_start_inclusive": True,
        "range_end": {"c": high},
        "range_end_inclusive": True,
    }


def rows(writetime: int, *clusterings: int, position: int = 10) -> list[dict[str, Any]]:
    return [
        row({"k": 1}, {"c": c}, position=position + i, row_writetime=writetime, cells={"v": cell(c, writetime)})
        for i, c in enumerate(clusterings)
    ]


def stored(dsn: str) -> list[tuple[Any, ...]]:
    """Each stored clustering row: c, v, the write time of v and until when the row is visible."""
    return query(dsn, "SELECT c, v, v__ts, _cdc_alive_until FROM ks.simple__rows ORDER BY c")


def load(destination: PostgresDestination, changes: list[dict[str, Any]], load_id: str) -> None:
    destination.load(SIMPLE, build_change_batch(SIMPLE, changes), load_id=load_id)


@pytest.mark.parametrize("arrival", ["rows first", "deletion first", "one load"])
def test_a_range_deletion_removes_what_it_covers_at_merge_whenever_it_arrives(
    destination: PostgresDestination, pg_dsn: str, arrival: str
):
    older, newer, deletion = rows(5, 1, 2, 3, 4), rows(11, 3, position=20), [range_deletion(2, 3, 10)]
    if arrival == "rows first":
        load(destination, older, "rows")
        load(destination, deletion + newer, "deletion")
    elif arrival == "deletion first":
        load(destination, deletion, "deletion")
        load(destination, newer + older, "rows")
    else:
        load(destination, older + deletion + newer, "all")
    # Row 2 is left with nothing, row 3 with what was written after the deletion only.
    assert stored(pg_dsn) == [(1, 1, 5, None), (2, None, None, DEAD), (3, 3, 11, None), (4, 4, 5, None)]
    assert [(r["c"], r["v"]) for r in destination.current_state(SIMPLE)] == [(1, 1), (3, 3), (4, 4)]


def test_a_late_older_write_after_a_partition_deletion_is_dropped_at_merge(
    destination: PostgresDestination, pg_dsn: str
):
    load(destination, rows(5, 1), "first")
    deletion = {"segment_id": 1, "position": 1, "kind": "partition_deletion", "key": {"k": 1}, "deletion_writetime": 10}
    load(destination, [deletion], "delete")
    load(destination, rows(9, 1, 2, position=30), "late")
    assert stored(pg_dsn) == [(1, None, None, DEAD), (2, None, None, DEAD)]
    assert destination.current_state(SIMPLE) == []
    load(destination, rows(11, 2, position=40), "after")
    assert stored(pg_dsn) == [(1, None, None, DEAD), (2, 2, 11, None)]
    assert [(r["c"], r["v"]) for r in destination.current_state(SIMPLE)] == [(2, 2)]


def test_a_ttl_row_stays_visible_until_its_longest_lived_part_expires(destination: PostgresDestination, pg_dsn: str):
    # Inserted with a TTL (liveness and v expire at +10), then w set with a longer TTL, then without one.
    insert = row(
        {"k": 1},
        {"c": 1},
        row_writetime=1,
        row_ttl=60,
        row_expires_at=NOW_S + 10,
        cells={"v": cell(1, 1, expires_at=NOW_S + 10)},
    )
    load(destination, [insert], "insert")
    assert stored(pg_dsn) == [(1, 1, 1, NOW_S + 10)]
    load(destination, [row({"k": 1}, {"c": 1}, position=1, cells={"w": cell("x", 2, expires_at=NOW_S + 20)})], "ttl")
    assert stored(pg_dsn) == [(1, 1, 1, NOW_S + 20)]
    at = [NOW + dt.timedelta(seconds=s) for s in (9, 10, 19, 20)]
    assert [[(r["v"], r["w"]) for r in destination.current_state(SIMPLE, now=t)] for t in at] == [
        [(1, "x")],
        [(None, "x")],
        [(None, "x")],
        [],
    ]
    load(destination, [row({"k": 1}, {"c": 1}, position=2, cells={"w": cell("y", 3)})], "forever")
    assert stored(pg_dsn) == [(1, 1, 1, None)]
    assert [(r["v"], r["w"]) for r in destination.current_state(SIMPLE, now=at[-1])] == [(None, "y")]


def plan(dsn: str, sql: str) -> str:
    with psycopg.connect(dsn) as connection:
        return "\n".join(line for (line,) in connection.execute(f"EXPLAIN {sql}").fetchall())


def test_the_view_reads_only_the_merged_rows_and_finds_a_partition_by_its_index(
    destination: PostgresDestination, pg_dsn: str
):
    load(destination, [*rows(5, 1, 2, 3), range_deletion(2, 2, 10)], "1")
    counted = plan(pg_dsn, "SELECT count(*) FROM ks.simple")
    assert "simple__rows" in counted
    assert not any(other in counted for other in ("__partdel", "__rangedel", "__static", "__changes")), counted
    with psycopg.connect(pg_dsn) as connection:
        connection.execute("SET enable_seqscan = off")
        lookup = "\n".join(line for (line,) in connection.execute("EXPLAIN SELECT * FROM ks.simple WHERE k = 1"))
    assert "Index Scan using simple__rows_pkey" in lookup or "Index Cond: (k = 1)" in lookup, lookup
    assert not any(other in lookup for other in ("__partdel", "__rangedel", "__changes")), lookup


def test_once_vacuumed_the_views_count_is_an_index_only_scan_of_the_rows_alive_until(
    destination: PostgresDestination, pg_dsn: str
):
    load(destination, [*rows(5, 1, 2, 3), range_deletion(2, 2, 10)], "1")
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE ks.simple__rows")
        connection.execute("SET enable_seqscan = off")
        counted = "\n".join(line for (line,) in connection.execute("EXPLAIN SELECT count(*) FROM ks.simple"))
        assert connection.execute("SELECT count(*) FROM ks.simple").fetchone() == (2,)
    assert "Index Only Scan using simple__rows_alive" in counted, counted


def test_right_after_a_load_the_views_count_reads_the_rows_alive_until_index_alone(
    destination: PostgresDestination, pg_dsn: str
):
    load(destination, [*rows(5, 1, 2, 3), range_deletion(2, 2, 10)], "1")
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        connection.execute("SET enable_seqscan = off")
        analyzed = connection.execute("EXPLAIN (ANALYZE, COSTS off, TIMING off) SELECT count(*) FROM ks.simple")
        counted = "\n".join(line for (line,) in analyzed)
    # The load vacuumed what it wrote: every page is all-visible, none is read.
    assert "Index Only Scan using simple__rows_alive" in counted, counted
    assert "Heap Fetches: 0" in counted, counted


def test_autovacuum_visits_the_merged_state_after_loads_of_a_few_percent(destination: PostgresDestination, pg_dsn: str):
    load(destination, rows(5, 1), "1")
    for table in ("ks.simple__rows", "ks.simple__static"):
        (options,) = query(pg_dsn, "SELECT reloptions FROM pg_class WHERE oid = %s::regclass", table)[0]
        assert {"autovacuum_vacuum_scale_factor=0.02", "autovacuum_vacuum_insert_scale_factor=0.02"} <= set(options)


def test_a_collection_is_presented_from_its_stored_value_until_its_first_element_expires(
    destination: PostgresDestination, pg_dsn: str
):
    expiring = {"path": 2, "writetime": 2, "ttl": 60, "expires_at": NOW_S + 10, "deleted": False}
    change = row({"k": 1}, {"c": 1}, row_writetime=1, cells={"tags": {"deletion": None, "cells": [expiring]}})
    load(destination, [row({"k": 1}, {"c": 1}, row_writetime=1, cells={"tags": elements((3, None), (1, None))})], "1")
    load(destination, [{**change, "position": 1}], "2")
    assert query(pg_dsn, "SELECT tags__shown, tags__shown_until FROM ks.simple__rows") == [([1, 2, 3], NOW_S + 10)]
    before, after = NOW + dt.timedelta(seconds=9), NOW + dt.timedelta(seconds=10)
    assert [r["tags"] for r in destination.current_state(SIMPLE, now=before)] == [[1, 2, 3]]
    assert [r["tags"] for r in destination.current_state(SIMPLE, now=after)] == [[1, 3]]


# The complex types whose presented value a load spells in Python (``postgres.elements.present``); with text that
# JSON and array literals escape (quotes, backslashes, control characters), unicode and empty strings.
PRESENTED = table_of(
    "presented",
    ("k", "int", "partition_key"),
    ("c", "int", "clustering"),
    ("s_text", "set<text>", "regular"),
    ("s_int", "set<int>", "regular"),
    ("l_text", "list<text>", "regular"),
    ("l_big", "list<bigint>", "regular"),
    ("m_text", "map<text, text>", "regular"),
    ("m_int", "map<smallint, int>", "regular"),
)


def _storable(change: dict[str, Any]) -> bool:
    """Whether PostgreSQL takes the change: text with a NUL goes to the dead-letter store (tested elsewhere)."""
    return "\\x00" not in repr(change)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    first=strategies.changes(PRESENTED).filter(lambda change: change["kind"] == "row" and _storable(change)),
    more=hst.lists(strategies.changes(PRESENTED).filter(_storable), max_size=12),
)
def test_the_presented_value_a_load_spells_is_what_postgresql_computes_from_the_elements(
    pg_dsn: str, first: dict[str, Any], more: list[dict[str, Any]]
) -> None:
    changes = [first, *more]
    destination = PostgresDestination(pg_dsn, f"presented{next(_examples)}_")
    with closing(destination):
        for position, change in enumerate(changes):
            change.update(segment_id=1, position=position)
        destination.load(PRESENTED, build_change_batch(PRESENTED, changes), load_id="1")
        sql = destination.sql(PRESENTED)
        checks = []
        for column in PRESENTED.regulars:
            name = ident(column.name)
            shown, until = ident(shown_name(column.name)), ident(shown_until_name(column.name))
            checks += [
                f"{shown} IS NOT DISTINCT FROM {sql.shown_sql(column, name)}",
                f"{until} IS NOT DISTINCT FROM {sql.shown_until_sql(name)}",
            ]
        found = query(pg_dsn, f"SELECT c, {', '.join(checks)} FROM {sql.name('__rows')}")
    assert found, "no row was stored"
    wrong = [(r[0], PRESENTED.regulars[i // 2].name) for r in found for i, ok in enumerate(r[1:]) if not ok]
    assert not wrong, wrong


def with_tags(writetime: int, *clusterings: int, position: int = 10) -> list[dict[str, Any]]:
    return [
        row(
            {"k": 1},
            {"c": c},
            position=position + i,
            row_writetime=writetime,
            cells={"v": cell(c, writetime), "tags": elements((c, None), (c + 10, None), writetime=writetime)},
        )
        for i, c in enumerate(clusterings)
    ]


def test_storage_an_earlier_version_wrote_is_migrated_to_the_merged_state(pg_dsn: str):
    """Earlier versions stored the same tables but applied deletions at read, and kept no presented values:
    made here by hand, they must read as a fresh load of the same changes does once a new version starts."""
    changes = [*with_tags(5, 1, 2, 3, 4), range_deletion(2, 2, 10)]
    own_deletion = row({"k": 1}, {"c": 3}, position=30, deletion_writetime=10)
    expected = PostgresDestination(pg_dsn, "fresh_")
    with closing(expected):
        load(expected, [*changes, own_deletion], "all")
        wanted = expected.current_state(SIMPLE)
    assert [(r["c"], r["tags"]) for r in wanted] == [(1, [1, 11]), (4, [4, 14])]

    earlier = PostgresDestination(pg_dsn, "earlier_")
    with closing(earlier):
        load(earlier, with_tags(5, 1, 2, 3, 4), "rows")
    rows_table, schema = '"earlier_ks".simple__rows', '"earlier_ks"'
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        # What an earlier version left: deletions recorded beside the rows, not applied to them.
        connection.execute(
            f"INSERT INTO {schema}.simple__rangedel (k, _cdc_low, _cdc_high, _cdc_deleted_at) "
            "SELECT 1, _cdc_ck, _cdc_ck || '\\xff'::bytea, 10 FROM "
            f"{rows_table} WHERE c = 2"
        )
        connection.execute(f"UPDATE {rows_table} SET _cdc_deleted_at = 10 WHERE c = 3")
        connection.execute(
            f"ALTER TABLE {rows_table} DROP COLUMN tags__shown CASCADE, DROP COLUMN tags__shown_until, "
            "DROP COLUMN _cdc_alive_until"
        )
        connection.execute(f"COMMENT ON TABLE {rows_table} IS NULL")
    later = PostgresDestination(pg_dsn, "earlier_")
    with closing(later):
        assert later.current_state(SIMPLE) == wanted
        # And it goes on as merged state: a late older write to the deleted row is dropped.
        load(later, with_tags(7, 2, position=50), "late")
        assert later.current_state(SIMPLE) == wanted


def test_a_timescale_current_state_created_beside_an_existing_history_is_filled_from_it(pg_dsn: str):
    """Earlier TimescaleDB versions kept only the history: a new version fills the current state from it."""
    changes = [*with_tags(5, 1, 2, 3, 4), range_deletion(2, 2, 10), *with_tags(11, 3, 5, position=20)]
    changes += [{**row({"k": 1}, {"c": 4}, position=40, deletion_writetime=12)}, *with_tags(3, 4, position=41)]
    earlier = TimescaleDestination(pg_dsn, "history_", allow_plain_postgres=True)
    with closing(earlier):
        load(earlier, changes[:5], "1")
        load(earlier, changes[5:], "2")
        wanted = earlier.current_state(SIMPLE)
    assert [r["c"] for r in wanted] == [1, 3, 5]
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        for suffix in ("__rows", "__static", "__partdel", "__rangedel"):
            connection.execute(f'DROP TABLE "history_ks"."simple{suffix}" CASCADE')
    later = TimescaleDestination(pg_dsn, "history_", allow_plain_postgres=True)
    with closing(later):
        assert later.current_state(SIMPLE) == wanted


def test_a_staged_row_is_inserted_as_it_is_only_when_nothing_stored_or_staged_could_change_it(
    destination: PostgresDestination, pg_dsn: str
):
    stored_deletions = [
        {"segment_id": 1, "position": 1, "kind": "partition_deletion", "key": {"k": 2}, "deletion_writetime": 10},
        {**range_deletion(1, 2, 10, position=2), "key": {"k": 3}},
    ]
    load(destination, [*rows(5, 1), *stored_deletions], "stored")
    # Write times: the rows of partitions 2 and 3 are older than the stored deletions.
    writes = {(1, 1): 20, (1, 2): 20, (2, 1): 8, (3, 1): 8, (3, 5): 8, (4, 1): 20, (5, 1): 20}
    piece = [
        row({"k": k}, {"c": c}, position=10 + i, row_writetime=ts, cells={"v": cell(c, ts)})
        for i, ((k, c), ts) in enumerate(writes.items())
    ]
    piece.append(
        {"segment_id": 1, "position": 30, "kind": "partition_deletion", "key": {"k": 4}, "deletion_writetime": 25}
    )
    batch = build_change_batch(SIMPLE, piece)
    columns = list(SIMPLE.regulars)
    reduced = st.reduce_parts(st.flatten(SIMPLE, batch, columns), columns, {"tags": MIN_WRITETIME})
    with psycopg.connect(pg_dsn) as connection, connection.cursor() as cursor:
        new = probe.new_parts(cursor, destination.sql(SIMPLE), reduced, columns)
    flagged = {
        (k, c): bool(flag)
        for k, c, part, flag in zip(*(reduced.table.column(n).to_pylist() for n in ("k", "c", "_cdc_part")), new)
        if part == "r"
    }
    # (1, 1) is stored; partition 2 was deleted; (3, 1) lies in a stored range deletion; partition 4 is
    # deleted in the piece itself. The others are new, (3, 5) outside the stored range deletion.
    assert flagged == {
        (1, 1): False,
        (1, 2): True,
        (2, 1): False,
        (3, 1): False,
        (3, 5): True,
        (4, 1): False,
        (5, 1): True,
    }
    load(destination, piece, "piece")
    assert [(r["k"], r["c"], r["v"]) for r in destination.current_state(SIMPLE)] == [
        (1, 1, 1),
        (1, 2, 2),
        (3, 5, 5),
        (5, 1, 1),
    ]


def test_a_replicas_duplicate_of_a_row_with_a_collection_rewrites_nothing(
    destination: PostgresDestination, pg_dsn: str
):
    changes = [
        row({"k": 1}, {"c": c}, position=c, row_writetime=5, cells={"v": cell(c, 5), "tags": elements((c, None))})
        for c in (1, 2)
    ]
    load(destination, changes, "node 1")
    written = query(pg_dsn, "SELECT c, xmin::text FROM ks.simple__rows ORDER BY c")
    # The same changes again, as another node's commit log delivers them: nothing to merge.
    load(destination, changes, "node 2")
    assert query(pg_dsn, "SELECT c, xmin::text FROM ks.simple__rows ORDER BY c") == written
    assert [(r["c"], r["tags"]) for r in destination.current_state(SIMPLE)] == [(1, [1]), (2, [2])]


def test_a_late_older_overwrite_of_a_collection_keeps_the_newer_stored_elements(
    destination: PostgresDestination, pg_dsn: str
):
    added = row({"k": 1}, {"c": 1}, position=1, cells={"tags": elements((7, None), writetime=10)})
    load(destination, [added], "tags + {7} at 10")
    # SET tags = {1} at 5: its collection deletion (at 4) covers nothing stored, its element is new.
    overwrite = row(
        {"k": 1}, {"c": 1}, position=2, row_writetime=5, cells={"tags": elements((1, None), deletion=4, writetime=5)}
    )
    load(destination, [overwrite], "tags = {1} at 5, late")
    assert [r["tags"] for r in destination.current_state(SIMPLE)] == [[1, 7]]
    # SET tags = {2} at 12 covers everything stored.
    newer = row(
        {"k": 1}, {"c": 1}, position=3, row_writetime=12, cells={"tags": elements((2, None), deletion=11, writetime=12)}
    )
    load(destination, [newer], "tags = {2} at 12")
    assert [r["tags"] for r in destination.current_state(SIMPLE)] == [[2]]
