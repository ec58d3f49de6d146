"""The merge run after each load: :func:`merged_state`, the query computing the merged state of the rows
a :class:`Scope` selects (:func:`touched`: those some loads wrote to or deleted) from their whole loaded history,
which the destination inserts into ``t__cdc_state`` (``clickhouse.layout`` describes the tables).

The merge of one partition's history follows Cassandra's rules: per cell, ``argMax`` over (write time,
tombstone > expiring > live, expiry, serialized value); deletions keep their maximum; a cell is visible when
it is newer than every deletion covering it and not expired (``expires_at > now()``); elements merge by path. A
counter is the sum of its leaders' shards, each the ``argMax`` by (clock, count, write time) per counter id
and visible when newer than the deletions covering it; a counter tombstone hides it, whatever the write times.

Merge on write, read like a table: after a load is recorded, the merged state of every row it touched (every
row of a partition it deleted from) is recomputed from the row's whole loaded history (and its partition's
deletions) and inserted into ``t__cdc_state`` with ``_cdc_version = now64(9)``; the newest version of a row
replaces the older ones (while the state is small, the destination merges it into one part after each load,
so the view's ``FINAL`` has nothing to merge). Because a state is a function of the whole recorded history of
its row and partition, arrival order, replays and duplicates cannot change it. A row that died is written too
(live until the epoch), so it replaces its live version. What depends on ``now`` stays in the view
(``clickhouse.read``): the state keeps each cell's value with its expiry, each complex column as presented
and, where one of its surviving elements expires, those elements with their expiries (for the view to
present them again once one has expired), each row's ``_cdc_live_until`` (when its last live cell or liveness
expires) and ``_cdc_first_expiry`` (when its first cell does). The trade-off: a load pays for recomputing its
rows (in proportion to their history, not the table's) and for the merge of the state table; reads no longer
grow with the history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cdc_assets import change_batch as cb
from cdc_assets.cassandra_schema.tables import Column
from cdc_assets.cassandra_schema.types import CqlType
from cdc_assets.destinations.clickhouse.layout import (
    CLOCK,
    COUNT,
    COUNTER_ID,
    DELETION_KIND,
    DELETION_WRITETIME,
    ELEMENT_COLUMN,
    ELEMENT_DELETED,
    ELEMENT_EXPIRES_AT,
    ELEMENT_WRITETIME,
    FIRST_EXPIRY,
    LIVE_UNTIL,
    LOAD_ID,
    MARKER_EXPIRES_AT,
    MARKER_VISIBLE,
    ROW_DELETION,
    STATIC,
    Layout,
    collection_deletion_column,
    deleted_column,
    element_column,
    end_column,
    expires_column,
    expiring_column,
    path_column,
    path_type,
    presented_column,
    sort_key,
    sql_list,
    start_column,
    state_elements_column,
    value_column,
    visible_column,
    writetime_column,
)
from cdc_assets.destinations.clickhouse.types import (
    can_be_null,
    clickhouse_type,
    field_type,
    literal,
    not_null,
    nullable,
    order_key_sql,
    quote,
    reconcile_key_sql,
)

_NO_DELETION = "toInt64('-9223372036854775808')"

# A row or cell live until _NEVER is not live; one live until _FOREVER does not expire.
_NEVER = "toDateTime(0, 'UTC')"
_FOREVER = "toDateTime(4294967295, 'UTC')"


@dataclass(frozen=True)
class Scope:
    """Which rows a computation of the merged state covers: ``rows`` selects rows (and static rows) of the
    history tables that carry the primary key, ``partitions`` the partitions whose deletions they need."""

    rows: str = "true"
    partitions: str = "true"


EVERYTHING = Scope()


def merged_state(layout: Layout, scope: Scope = EVERYTHING) -> str:
    """Per row (and per partition's static row) ``scope`` selects, what does not depend on the time of
    reading: each cell's value with whether it survives every deletion and its expiry, the row marker's, each
    complex column's surviving elements (with their expiries), each counter's sum."""
    table = layout.table
    keys = [quote(c.name) for c in table.partition_key]
    clustering = [quote(c.name) for c in table.clustering]
    group = sql_list([*keys, STATIC, *clustering])
    source = f"({_rows_aggregate(layout, group, scope.rows)}) AS _cdc_g"
    source += f" LEFT JOIN ({_partition_deletions(layout, scope.partitions)}) AS _cdc_p USING ({sql_list(keys)})"
    hidden = ["ifNull(_cdc_row_hidden, {0})", "ifNull(_cdc_partition_hidden, {0})"]
    if clustering:
        source += f" LEFT JOIN ({_range_deletions(layout, scope)}) AS _cdc_rd USING ({group})"
        hidden.append("ifNull(_cdc_range_hidden, {0})")
    if layout.complex:
        source += f" LEFT JOIN ({_elements_aggregate(layout, group, scope.rows)}) AS _cdc_e USING ({group})"
    if layout.counters:
        source += f" LEFT JOIN ({_shards_aggregate(layout, group, scope.rows)}) AS _cdc_s USING ({group})"
    hidden_sql = f"greatest({sql_list(h.format(_NO_DELETION) for h in hidden)})"
    parts = [
        group,
        f"ifNull(tupleElement(_cdc_marker, 1) > {hidden_sql}, false) AS {MARKER_VISIBLE}",
        f"tupleElement(_cdc_marker, 2) AS {MARKER_EXPIRES_AT}",
    ]
    until: dict[str, str] = {}
    # When the row's first visible cell expires (the row's own liveness is ``until``).
    first: dict[str, str] = {}
    for column in table.value_columns:
        dropped = table.dropped_column(column.name)
        floor = hidden_sql if dropped is None else f"greatest({hidden_sql}, toInt64({dropped.dropped_at}))"
        visible = quote(visible_column(column.name))
        if column.type.is_complex:
            collection = f"ifNull({quote('_cdc_collection_hidden:' + column.name)}, {_NO_DELETION})"
            condition = f"tupleElement(_e, 3) > greatest({floor}, {collection}) AND NOT tupleElement(_e, 4)"
            elements = quote("_cdc_elements:" + column.name)
            # Inlined, not aliased: the state keeps the surviving elements only where one expires (the view
            # presents them again only then, in the order they are stored in); elsewhere an empty array, which
            # costs a read nothing.
            surviving = f"arrayFilter(_e -> {condition}, {elements})"
            ordered = presentation_order(column, surviving)
            # Presented once here; the view recomputes it only for a collection with expiring elements.
            presented = complex_value(column, ordered, ordered=True)
            parts.append(f"{presented} AS {quote(presented_column(column.name))}")
            expiring = quote(expiring_column(column.name))
            parts.append(f"arrayExists(_e -> isNotNull(tupleElement(_e, 5)), {surviving}) AS {expiring}")
            parts.append(f"if({expiring}, {ordered}, []) AS {quote(state_elements_column(column.name))}")
            ends = f"arrayMap(_e -> ifNull(tupleElement(_e, 5), {_FOREVER}), {surviving})"
            until[column.name] = f"if(empty({surviving}), {_NEVER}, arrayMax({ends}))"
            first[column.name] = f"if(empty({surviving}), {_FOREVER}, arrayMin({ends}))"
        elif column.type.kind == "counter":
            # Shards newer than every deletion covering them count, unless a counter tombstone came.
            shards = quote("_cdc_shards:" + column.name)
            surviving = f"arrayFilter(_s -> tupleElement(_s, 2) > {floor}, {shards})"
            tombstone = quote("_cdc_tombstone:" + column.name)
            total = f"arraySum(arrayMap(_s -> tupleElement(_s, 1), {surviving}))"
            parts.append(f"ifNull(NOT {tombstone} AND notEmpty({surviving}), false) AS {visible}")
            parts.append(f"if({visible}, {total}, NULL) AS {quote(value_column(column.name))}")
            until[column.name] = f"if({visible}, {_FOREVER}, {_NEVER})"
        else:
            cell = quote("_cdc_cell:" + column.name)
            condition = f"tupleElement({cell}, 2) > {floor} AND NOT tupleElement({cell}, 3)"
            parts.append(f"ifNull({condition}, false) AS {visible}")
            value = f"tupleElement({cell}, 1)"
            empty = (
                "NULL"
                if can_be_null(nullable(clickhouse_type(column.type)))
                else f"defaultValueOfArgumentType({value})"
            )
            parts.append(f"if({visible}, {value}, {empty}) AS {quote(value_column(column.name))}")
            expires = quote(expires_column(column.name))
            parts.append(f"if({visible}, tupleElement({cell}, 4), NULL) AS {expires}")
            until[column.name] = f"if({visible}, ifNull({expires}, {_FOREVER}), {_NEVER})"
            first[column.name] = f"ifNull({expires}, {_FOREVER})"
    # Until when the row is live: its marker or a cell of its kind (static or regular) outlives ``now``.
    marker = f"if({MARKER_VISIBLE}, ifNull({MARKER_EXPIRES_AT}, {_FOREVER}), {_NEVER})"
    static_until = sql_list([marker, *(until[c.name] for c in table.statics)])
    row_until = sql_list([marker, *(until[c.name] for c in table.regulars)])
    parts.append(f"if({STATIC}, greatest({static_until}), greatest({row_until})) AS {LIVE_UNTIL}")
    parts.append(f"least({sql_list([_FOREVER, *first.values()])}) AS {FIRST_EXPIRY}")
    return f"SELECT {sql_list(parts)} FROM {source}"


def touched(layout: Layout, load_ids: Sequence[str]) -> Scope:
    """The rows whose merged state the loads ``load_ids`` can have changed: those they wrote, and every row of
    a partition they deleted from (a partition or range deletion); the partitions of both, for the deletions.

    Only deletions reach rows a load did not write, so a load recomputes the rows it touched, not their
    partitions: a partition growing row by row (a time series) costs each load its new rows, not its history.
    """
    table = layout.table
    keys = sql_list(sort_key(c) for c in table.partition_key)
    row = sql_list([*(sort_key(c) for c in table.partition_key), STATIC, *(sort_key(c) for c in table.clustering)])
    ids = sql_list(literal(i) for i in load_ids)
    deleted = f"SELECT {keys} FROM {layout.deletions} WHERE {LOAD_ID} IN ({ids})"
    return Scope(
        rows=f"(({row}) IN (SELECT {row} FROM {layout.rows} WHERE {LOAD_ID} IN ({ids})) OR ({keys}) IN ({deleted}))",
        partitions=(
            f"({keys}) IN (SELECT {keys} FROM {layout.rows} WHERE {LOAD_ID} IN ({ids}) UNION DISTINCT {deleted})"
        ),
    )


def _loaded(layout: Layout) -> str:
    return f"{LOAD_ID} IN (SELECT load_id FROM {layout.loads} WHERE `table` = {literal(layout.table.name)})"


def _rank(deleted: str, expires_at: str) -> str:
    return f"multiIf({deleted}, 2, isNotNull({expires_at}), 1, 0)"


def _value_key(cql: CqlType, expr: str, storage_type: str) -> str:
    """The serialized bytes of a stored value ('' for null), for reconciliation ties."""
    if can_be_null(storage_type):
        return f"if(isNull({expr}), '', {reconcile_key_sql(cql, not_null(storage_type, expr))})"
    return reconcile_key_sql(cql, expr)


def _cell_aggregate(column: Column) -> str:
    name = column.name
    value, writetime = quote(name), quote(writetime_column(name))
    deleted, expires = quote(deleted_column(name)), quote(expires_column(name))
    key = (
        f"tuple(assumeNotNull({writetime}), {_rank(deleted, expires)}, ifNull({expires}, toDateTime(0, 'UTC')), "
        f"{_value_key(column.type, value, nullable(clickhouse_type(column.type)))})"
    )
    cell = f"tuple({value}, {writetime}, {deleted}, {expires})"
    return f"argMaxIf({cell}, {key}, isNotNull({writetime})) AS {quote('_cdc_cell:' + name)}"


def _rows_aggregate(layout: Layout, group: str, scope: str) -> str:
    marker_key = (
        f"tuple(assumeNotNull({cb.ROW_WRITETIME}), isNotNull({cb.ROW_EXPIRES_AT}), "
        f"ifNull({cb.ROW_EXPIRES_AT}, toDateTime(0, 'UTC')))"
    )
    parts = [
        group,
        f"argMaxIf(tuple({cb.ROW_WRITETIME}, {cb.ROW_EXPIRES_AT}), {marker_key}, isNotNull({cb.ROW_WRITETIME})) "
        "AS _cdc_marker",
        f"max({ROW_DELETION}) AS _cdc_row_hidden",
        *(_cell_aggregate(c) for c in layout.simple),
        *(
            f"max({quote(collection_deletion_column(c.name))}) AS {quote('_cdc_collection_hidden:' + c.name)}"
            for c in layout.complex
        ),
        *(f"max({quote(deleted_column(c.name))}) AS {quote('_cdc_tombstone:' + c.name)}" for c in layout.counters),
    ]
    return f"SELECT {sql_list(parts)} FROM {layout.rows} WHERE {_loaded(layout)} AND {scope} GROUP BY {group}"


def _element_value_key(column: Column) -> str:
    """Serialized bytes of an element's value (a set element has none; a user type field its own)."""
    cql = column.type
    element = quote(element_column(column.name))
    if cql.kind == "set":
        return "''"
    if cql.kind == "udt":
        path = quote(path_column(column.name))
        branches = []
        for name, arg in zip(cql.field_names, cql.args):
            item = f"tupleElement({element}, {literal(name)})"
            branches += [f"{path} = {literal(name)}", _value_key(arg, item, field_type(arg))]
        return f"multiIf({sql_list(branches)}, '')"
    return _value_key(cql.args[-1], element, nullable(clickhouse_type(cql.args[-1])))


def _elements_aggregate(layout: Layout, group: str, scope: str) -> str:
    complex_columns = layout.complex
    paths = [quote(path_column(c.name)) for c in complex_columns]
    values = [quote(element_column(c.name)) for c in complex_columns if c.type.kind != "set"]
    positions = {}
    for column in complex_columns:
        if column.type.kind != "set":
            positions[column.name] = len(positions) + 1
    n = len(values)
    keys = [_element_value_key(c) for c in complex_columns]
    winner_key = (
        f"tuple({ELEMENT_WRITETIME}, {_rank(ELEMENT_DELETED, ELEMENT_EXPIRES_AT)}, "
        f"ifNull({ELEMENT_EXPIRES_AT}, toDateTime(0, 'UTC')), {sql_list(keys)})"
    )
    winner = f"tuple({sql_list([*values, ELEMENT_WRITETIME, ELEMENT_DELETED, ELEMENT_EXPIRES_AT])})"
    inner = (
        f"SELECT {group}, {ELEMENT_COLUMN}, {sql_list(paths)}, argMax({winner}, {winner_key}) AS _cdc_winner "
        f"FROM {layout.elements} WHERE {_loaded(layout)} AND {scope} "
        f"GROUP BY {group}, {ELEMENT_COLUMN}, {sql_list(paths)}"
    )
    arrays = []
    for column in complex_columns:
        value = f"tupleElement(_cdc_winner, {positions[column.name]})" if column.name in positions else "0"
        element = (
            f"tuple({quote(path_column(column.name))}, {value}, tupleElement(_cdc_winner, {n + 1}), "
            f"tupleElement(_cdc_winner, {n + 2}), tupleElement(_cdc_winner, {n + 3}))"
        )
        alias = quote("_cdc_elements:" + column.name)
        arrays.append(f"groupArrayIf({element}, {ELEMENT_COLUMN} = {literal(column.name)}) AS {alias}")
    return f"SELECT {group}, {sql_list(arrays)} FROM ({inner}) GROUP BY {group}"


def _shards_aggregate(layout: Layout, group: str, scope: str) -> str:
    """Per row, each counter's winning shards as (count, write time) tuples: per counter id, the shard with
    the highest clock, then count, then write time (``CounterContext.merge``)."""
    winner = f"argMax(tuple({COUNT}, {ELEMENT_WRITETIME}), tuple({CLOCK}, {COUNT}, {ELEMENT_WRITETIME})) AS _cdc_shard"
    inner = (
        f"SELECT {group}, {ELEMENT_COLUMN}, {winner} FROM {layout.shards} WHERE {_loaded(layout)} AND {scope} "
        f"GROUP BY {group}, {ELEMENT_COLUMN}, {COUNTER_ID}"
    )
    arrays = [
        f"groupArrayIf(_cdc_shard, {ELEMENT_COLUMN} = {literal(c.name)}) AS {quote('_cdc_shards:' + c.name)}"
        for c in layout.counters
    ]
    return f"SELECT {group}, {sql_list(arrays)} FROM ({inner}) GROUP BY {group}"


def _partition_deletions(layout: Layout, scope: str) -> str:
    keys = sql_list(quote(c.name) for c in layout.table.partition_key)
    return (
        f"SELECT {keys}, toNullable(max({DELETION_WRITETIME})) AS _cdc_partition_hidden FROM {layout.deletions} "
        f"WHERE {_loaded(layout)} AND {scope} AND {DELETION_KIND} = 'partition' GROUP BY {keys}"
    )


def _bound_condition(layout: Layout, side: str) -> str:
    """Whether a row's clustering is past a range's start (``side`` = start) or before its end."""
    clustering = layout.table.clustering
    prefix = f"_cdc_{side}"
    cases = [f"{prefix}_length = 0", f"{prefix}_inclusive"]
    for length in range(1, len(clustering) + 1):
        condition = f"{prefix}_inclusive"
        for column in reversed(clustering[:length]):
            bound_column = start_column(column.name) if side == "start" else end_column(column.name)
            bound = quote(bound_column)
            if can_be_null(nullable(clickhouse_type(column.type))):
                bound = f"assumeNotNull({bound})"
            row_key = order_key_sql(column.type, quote(column.name))
            bound_key = order_key_sql(column.type, bound)
            beyond = ">" if (side == "start") != column.descending else "<"
            condition = f"({row_key} {beyond} {bound_key} OR ({row_key} = {bound_key} AND {condition}))"
        cases += [f"{prefix}_length = {length}", condition]
    return f"multiIf({sql_list(cases)}, false)"


def _range_deletions(layout: Layout, scope: Scope) -> str:
    keys = sql_list(quote(c.name) for c in layout.table.partition_key)
    clustering = sql_list(quote(c.name) for c in layout.table.clustering)
    rows = (
        f"SELECT DISTINCT {keys}, {clustering} FROM {layout.rows} "
        f"WHERE {_loaded(layout)} AND {scope.rows} AND NOT {STATIC}"
    )
    ranges = (
        f"SELECT * FROM {layout.deletions} WHERE {_loaded(layout)} AND {scope.partitions} AND {DELETION_KIND} = 'range'"
    )
    return (
        f"SELECT {keys}, false AS {STATIC}, {clustering}, toNullable(max({DELETION_WRITETIME})) AS _cdc_range_hidden "
        f"FROM ({rows}) AS _cdc_r INNER JOIN ({ranges}) AS _cdc_d USING ({keys}) "
        f"WHERE {_bound_condition(layout, 'start')} AND {_bound_condition(layout, 'end')} "
        f"GROUP BY {keys}, {clustering}"
    )


def presentation_order(column: Column, elements: str) -> str:
    """A complex column's (path, value, ...) element tuples in the order Cassandra presents them: a list by
    its timeuuid paths, a set or map by its elements' or keys' comparator; a user type's fields as they are."""
    cql = column.type
    if cql.kind == "udt":
        return elements
    path = "tupleElement(_e, 1)"
    if can_be_null(path_type(cql)):
        path = f"assumeNotNull({path})"
    key = CqlType("timeuuid") if cql.kind == "list" else cql.args[0]
    return f"arraySort(_e -> {order_key_sql(key, path)}, {elements})"


def complex_value(column: Column, live: str, *, ordered: bool = False) -> str:
    """The visible value of a complex column from its live elements (path, value, ...) tuples; ``ordered``:
    they are in :func:`presentation_order` already."""
    cql = column.type
    path = "tupleElement(_e, 1)"
    if can_be_null(path_type(cql)):
        path = f"assumeNotNull({path})"
    value = "tupleElement(_e, 2)"
    if cql.kind != "udt" and cql.kind != "set" and can_be_null(nullable(clickhouse_type(cql.args[-1]))):
        value = f"assumeNotNull({value})"
    if cql.kind in ("list", "set", "map") and not ordered:
        live = presentation_order(column, live)
    if cql.kind == "list":
        return f"arrayMap(_e -> {value}, {live})"
    if cql.kind == "set":
        return f"arrayMap(_e -> {path}, {live})"
    if cql.kind == "map":
        return f"mapFromArrays(arrayMap(_e -> {path}, {live}), arrayMap(_e -> {value}, {live}))"
    items = []
    for name in cql.field_names:
        written = f"arrayFirst(_e -> tupleElement(_e, 1) = {literal(name)}, {live})"
        items.append(f"tupleElement(tupleElement({written}, 2), {literal(name)})")
    return f"if(empty({live}), NULL, CAST(tuple({sql_list(items)}), {literal(clickhouse_type(cql))}))"


def view_settings(layout: Layout) -> dict[str, int]:
    """What the view's query needs beyond ClickHouse's defaults.

    ClickHouse refuses to group by a Variant unless told (a Variant of several types may group values
    that look alike apart); a key whose tuple has a collection field holds one, of one type, which groups
    as plainly as that type.
    """
    if any("Variant(" in clickhouse_type(c.type) for c in layout.table.primary_key):
        return {"allow_suspicious_types_in_group_by": 1}
    return {}
