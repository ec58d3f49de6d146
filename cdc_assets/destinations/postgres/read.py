"""The read side: the current-state view's SQL (:func:`view_sql`: a projection of the stored rows, deciding
only expiry, at read time; ``postgres.layout`` describes the storage it reads) and the pieces of the query
``current_state`` runs through it (the columns it presents, the narrowing to some partitions, the interval
loader)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import psycopg.adapt

from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.destinations.cassandra_values import key_component
from cdc_assets.destinations.postgres import staging as st
from cdc_assets.destinations.postgres import types as pg_types
from cdc_assets.destinations.postgres.layout import PgTableSql, ident


def view_sql(sql: PgTableSql) -> str:
    """The current-state view's SELECT: what ``SELECT * FROM ks.t`` returns in Cassandra.

    Deletions are applied by the merge, so the view only decides expiry: a row shows while its
    ``_cdc_alive_until`` is ahead of now, a cell while its expiry is. Now is taken in whole seconds (an
    expiry is whole seconds: later than now is later than its floor) by a sub-select, which PostgreSQL
    evaluates once per query (an InitPlan, handed to parallel workers) rather than once per row and cell.
    """
    table = sql.table
    now = f"(SELECT floor({ident(sql.helper)}.now_seconds())::bigint)"
    keys = [ident(c.name) for c in table.partition_key]
    clustering = [ident(c.name) for c in table.clustering]
    regulars = [f"{_presented(sql, 's', c, now)} AS {ident(c.name)}" for c in table.regulars]
    statics = [f"{_presented(sql, 'sv', c, now)} AS {ident(c.name)}" for c in table.statics]
    rows = f"{sql.name('__rows')} s"
    if not table.statics:
        select = [*(f"s.{k}" for k in keys), *(f"s.{c}" for c in clustering), *regulars]
        return f"SELECT {', '.join(select)} FROM {rows} WHERE {_alive('s', now)}"
    row_select = [*(f"s.{k}" for k in keys), *(f"s.{c}" for c in clustering), *statics, *regulars]
    static_select = [
        *(f"sv.{k}" for k in keys),
        *(f"NULL::{pg_types.pg_type(c.type)} AS {ident(c.name)}" for c in table.clustering),
        *statics,
        *(f"NULL::{pg_types.pg_type(c.type)} AS {ident(c.name)}" for c in table.regulars),
    ]
    static_rows = f"{sql.name('__static')} sv"
    return (
        f"SELECT {', '.join(row_select)} FROM {rows} LEFT JOIN {static_rows} ON {sql.key_match('sv', 's')} "
        f"WHERE {_alive('s', now)}\n"
        f"UNION ALL\n"
        f"SELECT {', '.join(static_select)} FROM {static_rows} WHERE {_alive('sv', now)} AND NOT EXISTS "
        f"(SELECT 1 FROM {rows} WHERE {sql.key_match('s', 'sv')} AND {_alive('s', now)})"
    )


def _presented(sql: PgTableSql, alias: str, column: Column, now: str) -> str:
    """A column's presented value in storage row ``alias``: the cell unless it has expired."""
    name = ident(column.name)
    if column.type.kind == "counter":
        return f"{alias}.{ident(st.sum_name(column.name))}"
    if column.type.is_complex:
        until = f"{alias}.{ident(st.shown_until_name(column.name))}"
        shown = f"{alias}.{ident(st.shown_name(column.name))}"
        function = f"{ident(sql.helper)}.{ident(sql.present_function(column)[0])}"
        elements = f"{function}({alias}.{ident(column.name)}, {now})"
        return f"CASE WHEN {until} IS NULL OR {until} > {now} THEN {shown} ELSE {elements} END"
    exp = f"{alias}.{ident(st.exp_name(column.name))}"
    visible = f"({exp} IS NULL OR {exp} > {now})"
    dropped = sql.table.dropped_column(column.name)
    if dropped is not None:
        visible = f"{alias}.{ident(st.ts_name(column.name))} > {dropped.dropped_at} AND {visible}"
    return f"CASE WHEN {visible} THEN {alias}.{name} END"


def _alive(alias: str, now: str) -> str:
    """Whether a storage row is visible now: something in it has not expired."""
    return f"({alias}._cdc_alive_until IS NULL OR {alias}._cdc_alive_until > {now})"


def presented_columns(table: TableSchema) -> tuple[Column, ...]:
    return table.partition_key + table.clustering + table.statics + table.regulars


def partition_bytes(table: TableSchema, values: Sequence[Any]) -> bytes:
    return b"".join(key_component(c.type, v, False) for c, v in zip(table.partition_key, values, strict=True))


def partition_filter(table: TableSchema, keys: Collection[Sequence[Any]]) -> tuple[str, list[Any]]:
    """A WHERE clause narrowing the view to ``keys``' partitions, on each scalar partition key column.

    Each column is matched against its own set of values, so a key of several columns selects a superset
    of the partitions (``current_state`` keeps the exact ones); collection and tuple columns are left out.
    """
    if not keys:
        return " WHERE false", []
    clauses, parameters = [], []
    for index, column in enumerate(table.partition_key):
        if not pg_types.is_scalar(column.type):
            continue
        texts = sorted({pg_types.copy_text(column.type, values[index]) for values in keys})
        name = ident(column.name).replace("%", "%%")
        clauses.append(f"{name} = ANY(%s::{pg_types.pg_type(column.type)}[])")
        parameters.append(texts)
    return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), parameters


class IntervalLoader(psycopg.adapt.Loader):
    def load(self, data: Any) -> tuple[int, int, int]:
        return pg_types.parse_interval(bytes(data).decode())
