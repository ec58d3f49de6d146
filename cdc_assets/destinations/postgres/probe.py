"""Which staged rows of a piece are new to the current state: rows the merge may insert as they are, with a
plain ``INSERT`` instead of the ``INSERT … ON CONFLICT DO UPDATE`` that merges a row cell by cell.

A staged row (``r``) or static row (``s``) is *new* when the storage holds nothing that could change it: no
stored row with its key, no stored partition deletion of its partition, no stored range deletion covering
it, and no partition or range deletion of its partition in the same piece. Then the merge would write
the staged row unchanged (``postgres.merge._staged_sql`` with no deletion floor is the staged row), so
inserting it is the same result. A complex column's presented value must also be spelt already
(``postgres.staging.spelt_name``): the merge computes it otherwise.

The look-up (:func:`probe_sql`) runs on a second connection, reading what is committed, while the load's own
connection merges the previous piece: a load's pieces hold disjoint partitions, so nothing the load wrote
so far can concern this piece; and loads of one table are serialized (``PostgresDestination.load``), so
nothing commits for this table in between. Speculative insertion (what ``ON CONFLICT`` costs per row)
is about as dear as the insert itself: a new row inserted plainly costs the merge half as much.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.destinations.postgres import staging as st
from cdc_assets.destinations.postgres import types as pg_types
from cdc_assets.destinations.postgres.layout import PgTableSql
from cdc_assets.destinations.postgres.load import drop_stage_step, run_steps, stage_steps

NEW = "_cdc_new"
INDEX = "_cdc_index"
PROBE_STAGE = "_cdc_probe"


def candidates(reduced: st.Parts, columns: Sequence[Column]) -> np.ndarray:
    """Per reduced part: whether it may be new, as far as the piece itself tells (a row or static row, no
    partition or range deletion of its partition in the piece, every presented value spelt)."""
    table = reduced.table
    kinds = pc.fill_null(table.column(st.PART), "").combine_chunks()
    possible = pc.is_in(kinds, pa.array([st.PART_ROW, st.PART_STATIC]))
    deleting = pc.filter(table.column(st.PARTITION_KEY), pc.is_in(kinds, pa.array([st.PART_PARTITION, st.PART_RANGE])))
    if len(deleting):
        possible = pc.and_(possible, pc.invert(pc.is_in(table.column(st.PARTITION_KEY), deleting.unique())))
    for column in columns:
        if column.type.is_complex:
            possible = pc.and_(possible, pc.fill_null(table.column(st.spelt_name(column.name)), False))
    return possible.to_numpy(zero_copy_only=False)


def probe_columns(table: TableSchema) -> list[tuple[str, str]]:
    """The probe stage's columns: each candidate's index in the piece, its kind and key."""
    keys = [(c.name, pg_types.pg_type(c.type)) for c in table.partition_key]
    return [(INDEX, "integer"), (st.PART, "text"), *keys, (st.CLUSTERING_KEY, "bytea")]


def probe_parts(reduced: st.Parts, table: TableSchema, indices: np.ndarray) -> st.Parts:
    """The candidates ``indices`` as probe stage rows (``probe_columns``)."""
    chosen = pa.array(indices, pa.int64())
    columns = {INDEX: pa.array(indices, pa.int32())}
    for name, _ in probe_columns(table)[1:]:
        columns[name] = reduced.table.column(name).take(chosen)
    return st.Parts(pa.table(columns))


def probe_sql(sql: PgTableSql, stage: str) -> str:
    """The indices of the probed parts that are not new: the storage holds their key or a deletion that may
    cover them."""
    rows, statics = sql.name("__rows"), sql.name("__static")
    partdel, rangedel = sql.name("__partdel"), sql.name("__rangedel")
    ck = st.CLUSTERING_KEY
    return (
        f"SELECT p.{INDEX} FROM {stage} p WHERE CASE WHEN p.{st.PART} = '{st.PART_ROW}' "
        f"THEN EXISTS (SELECT FROM {rows} o WHERE {sql.key_match('o', 'p')} AND o.{ck} = p.{ck}) "
        f"ELSE EXISTS (SELECT FROM {statics} o WHERE {sql.key_match('o', 'p')}) END "
        f"OR EXISTS (SELECT FROM {partdel} d WHERE {sql.key_match('d', 'p')}) "
        f"OR (p.{st.PART} = '{st.PART_ROW}' AND EXISTS (SELECT FROM {rangedel} g WHERE {sql.key_match('g', 'p')} "
        f"AND g._cdc_low <= p.{ck} AND p.{ck} < g._cdc_high))"
    )


def new_parts(cursor: psycopg.Cursor, sql: PgTableSql, reduced: st.Parts, columns: Sequence[Column]) -> np.ndarray:
    """Per reduced part: whether it is new to the storage (what ``cursor`` sees of it)."""
    new = candidates(reduced, columns)
    indices = np.flatnonzero(new)
    if len(indices):
        run_steps(cursor, stage_steps(PROBE_STAGE, probe_columns(sql.table), probe_parts(reduced, sql.table, indices)))
        cursor.execute(probe_sql(sql, PROBE_STAGE))
        new[np.fromiter((index for (index,) in cursor), dtype=np.int64)] = False
        run_steps(cursor, [drop_stage_step(PROBE_STAGE)])
    return new


def marked(reduced: st.Parts, new: np.ndarray) -> st.Parts:
    """``reduced`` with each part's ``NEW`` flag."""
    return st.Parts(reduced.table.append_column(NEW, pa.array(new, pa.bool_())), reduced.rejected)
