"""The read side: the current-state view's SQL (:func:`current_state_sql`), one read of the merged state
table (``clickhouse.state``) deciding what depends on the time of reading, and the pieces of the query
``current_state`` runs through it (the narrowing to some partitions, ``now`` in epoch seconds).

The view reads the state once: each simple cell's expiry is checked against ``now``; a collection's live
elements are presented again only in rows where one has expired (``_cdc_first_expiry`` passed), the others
show the presented value as stored.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from cdc_assets.cassandra_schema.tables import TableSchema
from cdc_assets.destinations.clickhouse.layout import (
    FIRST_EXPIRY,
    LIVE_UNTIL,
    STATIC,
    Layout,
    expires_column,
    expiring_column,
    presented_column,
    sql_list,
    state_elements_column,
    value_column,
)
from cdc_assets.destinations.clickhouse.state import complex_value
from cdc_assets.destinations.clickhouse.types import can_be_null, clickhouse_type, literal, nullable, quote


def current_state_sql(layout: Layout, now: str) -> str:
    """The SELECT giving ``layout``'s table as Cassandra returns it, ``now`` being an SQL DateTime expression."""
    table = layout.table
    if not table.statics:
        # One flat SELECT: every level of query costs chdb planning time, which dominates a lookup.
        keys = [quote(c.name) for c in table.partition_key + table.clustering]
        return (
            f"SELECT {sql_list([*keys, *_values(layout, now)])} FROM {layout.state} FINAL "
            f"WHERE {LIVE_UNTIL} > {now} AND NOT {STATIC}"
        )
    merged = f"({_merged(layout, now)})"
    # Each live row shows its partition's static values; a partition with live static values but no
    # live row shows as one row of its own, without clustering.
    keys = sql_list(quote(c.name) for c in table.partition_key)
    window = f"OVER (PARTITION BY {keys})"
    clustering = []
    for column in table.clustering:
        name = quote(column.name)
        storage = clickhouse_type(column.type)
        if can_be_null(nullable(storage)):
            clustering.append(f"if({STATIC}, NULL, {name}) AS {name}")
        else:
            clustering.append(f"if({STATIC}, defaultValueOfTypeName({literal(storage)}), {name}) AS {name}")
    statics = []
    for column in table.statics:
        name = quote(column.name)
        statics.append(f"anyIf({name}, {STATIC} AND _cdc_live) {window} AS {name}")
    per_partition = sql_list(
        [
            keys,
            *clustering,
            *statics,
            *(quote(c.name) for c in table.regulars),
            STATIC,
            "_cdc_live",
            f"countIf(_cdc_live AND NOT {STATIC}) {window} AS _cdc_live_rows",
        ]
    )
    columns = sql_list(quote(c.name) for c in table.partition_key + table.clustering + table.statics + table.regulars)
    return (
        f"SELECT {columns} FROM (SELECT {per_partition} FROM {merged}) "
        f"WHERE _cdc_live AND (NOT {STATIC} OR _cdc_live_rows = 0)"
    )


def _merged(layout: Layout, now: str) -> str:
    """Per row (and per partition's static row) in the merged state table: visible values at ``now``, and
    whether the row is live."""
    table = layout.table
    group = sql_list(quote(c.name) for c in [*table.partition_key, *table.clustering])
    live = f"{LIVE_UNTIL} > {now} AS _cdc_live"
    return f"SELECT {sql_list([group, STATIC, *_values(layout, now), live])} FROM {layout.state} FINAL"


def _values(layout: Layout, now: str) -> list[str]:
    """Each value column as visible at ``now``, read once from the merged state.

    A simple cell shows its stored value unless its expiry is at or before ``now`` (a NULL expiry, never,
    makes the condition NULL, which ``if`` takes as false); a collection shows its presented value, unless it
    holds expiring elements and the row's first expiry has passed: only then (rarely, and evaluated for those
    rows alone: ``if`` is short-circuit) are its live elements presented again.
    """
    values = []
    for column in layout.table.value_columns:
        name = quote(column.name)
        if column.type.is_complex:
            elements = quote(state_elements_column(column.name))
            live = f"arrayFilter(_e -> {_live('tupleElement(_e, 5)', now)}, {elements})"
            expiring = quote(expiring_column(column.name))
            presented = quote(presented_column(column.name))
            recompute = f"{expiring} AND {FIRST_EXPIRY} <= {now}"
            values.append(f"if({recompute}, {complex_value(column, live, ordered=True)}, {presented}) AS {name}")
        elif column.type.kind == "counter":
            values.append(f"{quote(value_column(column.name))} AS {name}")
        else:
            expires = quote(expires_column(column.name))
            value = quote(value_column(column.name))
            empty = (
                "NULL"
                if can_be_null(nullable(clickhouse_type(column.type)))
                else f"defaultValueOfArgumentType({value})"
            )
            values.append(f"if({expires} <= {now}, {empty}, {value}) AS {name}")
    return values


def _live(expires_at: str, now: str) -> str:
    return f"(isNull({expires_at}) OR {expires_at} > {now})"


# Partition key types whose canonical values spell a ClickHouse literal of the stored type without conversion.
_LITERAL_KEY_KINDS = frozenset({"ascii", "text", "boolean", "tinyint", "smallint", "int", "bigint", "uuid", "timeuuid"})

# Room for the key literals in one query: ClickHouse refuses queries longer than max_query_size (256 KiB).
_MAX_FILTER_CHARS = 128 << 10


def partition_filter(table: TableSchema, keys: Collection[Sequence[Any]]) -> str:
    """A WHERE clause narrowing a current-state SELECT to ``keys``' partitions, on the key columns of plain types.

    Each column is matched against its own set of values, so a key of several columns selects a superset
    of the partitions (``current_state`` keeps the exact ones); columns of other types are left out, and so
    is every column once the literals would make the query too long.
    """
    if not keys:
        return " WHERE false"
    clauses: list[str] = []
    for index, column in enumerate(table.partition_key):
        kind = column.type.kind
        if kind not in _LITERAL_KEY_KINDS:
            continue
        values = sorted({values[index] for values in keys})
        if kind in ("ascii", "text"):
            spelled = [literal(v) for v in values]
        elif kind in ("uuid", "timeuuid"):
            spelled = [f"toUUID({literal(v)})" for v in values]
        elif kind == "boolean":
            spelled = ["true" if v else "false" for v in values]
        else:
            spelled = [str(int(v)) for v in values]
        clauses.append(f"{quote(column.name)} IN ({', '.join(spelled)})")
    if not clauses or sum(map(len, clauses)) > _MAX_FILTER_CHARS:
        return ""
    return f" WHERE {' AND '.join(clauses)}"


def epoch_seconds(now: Any) -> int:
    if now is None:
        return int(time.time())
    if isinstance(now, datetime):
        return int((now if now.tzinfo else now.replace(tzinfo=UTC)).timestamp())
    return int(now)
