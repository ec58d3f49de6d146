"""The load's SQL: the statements merging a staged piece (``postgres.staging``) into a table's stored state
(``postgres.layout``), keeping cell by cell whichever of the stored and the staged cell Cassandra would keep
(``cassandra_model.py`` states the rules).

Per piece: when it holds deletions, one statement recording them and applying them to the rows they cover
(:func:`_deletions_sql`); then one statement of, per storage table (rows, static rows), an ``INSERT`` of the
staged rows new to the storage (``postgres.probe``; :func:`_insert_new`) and an ``INSERT … ON CONFLICT DO
UPDATE`` of the others, each staged row merged with every deletion covering it already applied
(:func:`_staged_sql`), so a late older write never comes back. The one-time migration of storage an earlier
version wrote (:func:`migration_sql`) applies the stored deletions to the stored rows the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

from cdc_assets.cassandra_schema.tables import Column
from cdc_assets.destinations.postgres import staging as st
from cdc_assets.destinations.postgres import types as pg_types
from cdc_assets.destinations.postgres.layout import MIN_WRITETIME, PgTableSql, ident
from cdc_assets.destinations.postgres.probe import NEW

MIGRATION_STAGE = "_cdc_migration_deletions"


def merge_sql(
    sql: PgTableSql, stage: str, columns: Sequence[Column], parts: Sequence[str] = "rspg", *, marked: bool = False
) -> list[str]:
    """The statements merging the staging table's ``parts`` (kinds present) into the storage tables:
    first the deletions (recorded, and applied to the rows they cover), then the rows, each hidden by
    every deletion that covers it (so a late older write never comes back).

    ``marked``: the stage flags the rows new to the storage (``postgres.probe.NEW``); those are inserted as
    they are, the others merged."""
    statements = []
    if st.PART_PARTITION in parts or st.PART_RANGE in parts:
        statements.append(_deletions_sql(sql, stage, parts))
    writes = []
    for part, suffix, kind in ((st.PART_ROW, "__rows", "regular"), (st.PART_STATIC, "__static", "static")):
        if part in parts:
            kept = [c for c in columns if c.kind == kind]
            if marked:
                writes.append(_insert_new(sql, suffix, stage, part, kept))
            writes.append(_upsert(sql, suffix, stage, part, kept, marked))
    if writes:
        statements.append(_one_statement(writes))
    return statements


def _deletions_sql(sql: PgTableSql, stage: str, parts: Sequence[str]) -> str:
    """One statement recording a piece's partition and range deletions and applying them to the stored
    rows (and static rows) they cover."""
    key_list = sql.key_list()
    deletion = "_cdc_deleted_at = greatest(o._cdc_deleted_at, EXCLUDED._cdc_deleted_at)"
    ranges = f"{key_list}, _cdc_low, _cdc_high, _cdc_deleted_at"
    statements = []
    if st.PART_PARTITION in parts:
        statements.append(
            f"INSERT INTO {sql.name('__partdel')} AS o ({key_list}, _cdc_deleted_at) "
            f"SELECT {key_list}, _cdc_deleted_at FROM {stage} WHERE _cdc_part = 'p' ON CONFLICT ({key_list}) "
            f"DO UPDATE SET {deletion} WHERE EXCLUDED._cdc_deleted_at > o._cdc_deleted_at"
        )
    if st.PART_RANGE in parts:
        statements.append(
            f"INSERT INTO {sql.name('__rangedel')} AS o ({ranges}) SELECT {ranges} FROM {stage} "
            f"WHERE _cdc_part = 'g' ON CONFLICT ({key_list}, _cdc_low, _cdc_high) DO UPDATE SET {deletion} "
            "WHERE EXCLUDED._cdc_deleted_at > o._cdc_deleted_at"
        )
    keys = ", ".join(f"r.{ident(c.name)}" for c in sql.table.partition_key)
    covered = (
        f"SELECT {keys}, r._cdc_ck, max(g._cdc_deleted_at) AS _cdc_f FROM {sql.name('__rows')} r "
        f"JOIN {stage} g ON {sql.key_match('g', 'r')} WHERE g._cdc_part = 'p' OR (g._cdc_part = 'g' "
        f"AND g._cdc_low <= r._cdc_ck AND r._cdc_ck < g._cdc_high) GROUP BY {keys}, r._cdc_ck"
    )
    statements.append(
        f"UPDATE {sql.name('__rows')} o SET {', '.join(_hide_sql(sql, sql.table.regulars, 'x._cdc_f'))} "
        f"FROM ({covered}) x WHERE {sql.key_match('o', 'x')} AND o._cdc_ck = x._cdc_ck "
        f"AND x._cdc_f > coalesce(o._cdc_deleted_at, {MIN_WRITETIME})"
    )
    if st.PART_PARTITION in parts and sql.table.statics:
        hidden = _hide_sql(sql, sql.table.statics, "g._cdc_deleted_at")
        statements.append(
            f"UPDATE {sql.name('__static')} o SET {', '.join(hidden)} "
            f"FROM {stage} g WHERE g._cdc_part = 'p' AND {sql.key_match('o', 'g')} "
            f"AND g._cdc_deleted_at > coalesce(o._cdc_deleted_at, {MIN_WRITETIME})"
        )
    return _one_statement(statements)


def _hide_sql(sql: PgTableSql, columns: Sequence[Column], floor: str) -> list[str]:
    """SET clauses applying a deletion at ``floor`` to a stored row ``o``: what it covers is removed, the
    deletion kept in ``_cdc_deleted_at`` (a counter keeps its shards: its presented sum hides them)."""
    sets = [
        f"_cdc_deleted_at = greatest(o._cdc_deleted_at, {floor})",
        f"_cdc_live_ts = CASE WHEN o._cdc_live_ts > {floor} THEN o._cdc_live_ts END",
        f"_cdc_live_exp = CASE WHEN o._cdc_live_ts > {floor} THEN o._cdc_live_exp END",
    ]
    for column in columns:
        name = ident(column.name)
        if column.type.is_complex:
            sets.append(
                _presented_assignment(sql, column, f"{ident(sql.helper)}.merge_elements(o.{name}, NULL, {floor})")
            )
        elif column.type.kind != "counter":
            ts = ident(st.ts_name(column.name))
            sets += [
                f"{ident(cell)} = CASE WHEN o.{ts} > {floor} THEN o.{ident(cell)} END"
                for cell, _ in st.cell_columns(column)
            ]
    return sets


def _staged_sql(
    sql: PgTableSql, stage: str, part: str, names: Sequence[str], columns: Sequence[Column], marked: bool
) -> str:
    """The staged rows of one kind, each with what the stored deletions (and its own) hide removed, and
    every deletion that covers it in ``_cdc_deleted_at``.

    The load already removed what a row's own deletion hides and spelt its complex columns' presented
    values (``postgres.staging.reduce_parts``); only a row a stored deletion covers has its elements merged and
    presented here (in sub-selects: a function call costs each row even where it does not apply)."""
    # Each look-up only when its table holds any deletion (an init plan, evaluated once per statement, in the
    # statement's snapshot): a table that never had a partition or range deletion pays no probe per row.
    partdel, rangedel = sql.name("__partdel"), sql.name("__rangedel")
    stored = [
        f"CASE WHEN (SELECT EXISTS (SELECT FROM {partdel})) THEN (SELECT p._cdc_deleted_at FROM {partdel} p "
        f"WHERE {sql.key_match('p', 's')}) END"
    ]
    if part == st.PART_ROW:
        stored.append(
            f"CASE WHEN (SELECT EXISTS (SELECT FROM {rangedel})) THEN (SELECT max(d._cdc_deleted_at) FROM {rangedel} d "
            f"WHERE {sql.key_match('d', 's')} AND d._cdc_low <= s._cdc_ck AND s._cdc_ck < d._cdc_high) END"
        )
    replaced = {
        "_cdc_deleted_at": f"nullif(h._cdc_f, {MIN_WRITETIME})",
        "_cdc_live_ts": "CASE WHEN s._cdc_live_ts > h._cdc_f THEN s._cdc_live_ts END",
        "_cdc_live_exp": "CASE WHEN s._cdc_live_ts > h._cdc_f THEN s._cdc_live_exp END",
    }
    covered = f"h._cdc_stored > {MIN_WRITETIME}"
    for column in columns:
        name = ident(column.name)
        if column.type.is_complex:
            merged = f"{ident(sql.helper)}.merge_elements(NULL, s.{name}, h._cdc_f)"
            replaced[name] = f"CASE WHEN {covered} THEN (SELECT {merged}) ELSE s.{name} END"
            shown, until = ident(st.shown_name(column.name)), ident(st.shown_until_name(column.name))
            computed = f"{covered} OR s.{ident(st.spelt_name(column.name))} IS NOT TRUE"
            elements = f"CASE WHEN {covered} THEN {merged} ELSE s.{name} END"
            replaced[shown] = f"CASE WHEN {computed} THEN (SELECT {sql.shown_sql(column, elements)}) ELSE s.{shown} END"
            until_sql = sql.shown_until_sql(elements)
            replaced[until] = f"CASE WHEN {computed} THEN (SELECT {until_sql}) ELSE s.{until} END"
        elif column.type.kind != "counter":
            ts = ident(st.ts_name(column.name))
            for cell, _ in st.cell_columns(column):
                replaced[ident(cell)] = f"CASE WHEN s.{ts} > h._cdc_f THEN s.{ident(cell)} END"
    select = ", ".join(replaced.get(n, f"s.{n}") for n in names)
    stored_floor = f"coalesce(greatest({', '.join(stored)}), {MIN_WRITETIME})"
    floor = "greatest(s._cdc_deleted_at, x._cdc_stored)"
    return (
        f"SELECT {select} FROM {stage} s "
        # OFFSET 0 keeps the floors one computation per row, not one per cell that refers to them.
        f"CROSS JOIN LATERAL (SELECT {floor} AS _cdc_f, x._cdc_stored FROM (SELECT {stored_floor} AS _cdc_stored "
        f"OFFSET 0) x OFFSET 0) h WHERE s._cdc_part = '{part}'" + (f" AND s.{NEW} IS NOT TRUE" if marked else "")
    )


def _written_names(sql: PgTableSql, part: str, columns: Sequence[Column]) -> list[str]:
    """The storage columns a merge of ``part`` writes (quoted)."""
    keys = [ident(c.name) for c in sql.table.partition_key]
    if part == st.PART_ROW:
        keys += [ident(c.name) for c in sql.table.clustering] + ["_cdc_ck"]
    names = [*keys, "_cdc_live_ts", "_cdc_live_exp", "_cdc_deleted_at"]
    return names + [ident(name) for c in columns for name, _ in st.cell_columns(c) + st.presented_columns(c)]


def _insert_new(sql: PgTableSql, suffix: str, stage: str, part: str, columns: Sequence[Column]) -> str:
    """An insert of the staged rows new to the storage (``postgres.probe``): nothing stored can change them, so
    the merge would write them as they are."""
    listed = ", ".join(_written_names(sql, part, columns))
    return (
        f"INSERT INTO {sql.name(suffix)} ({listed}) SELECT {listed} FROM {stage} WHERE _cdc_part = '{part}' AND {NEW}"
    )


def _upsert(sql: PgTableSql, suffix: str, stage: str, part: str, columns: Sequence[Column], marked: bool) -> str:
    """An upsert keeping, per cell, what Cassandra keeps; a row nothing new wins in is not rewritten.

    Both sides come with their deletions applied (``_staged_sql``, ``_deletions_sql``), so a cell is kept
    only when it wins and the other side's deletions do not cover it either.
    """
    keys = [ident(c.name) for c in sql.table.partition_key]
    conflict = ", ".join([*keys, "_cdc_ck"] if part == st.PART_ROW else keys)
    names = _written_names(sql, part, columns)
    live_wins = (
        "(EXCLUDED._cdc_live_ts IS NOT NULL AND (o._cdc_live_ts IS NULL OR "
        "ROW(EXCLUDED._cdc_live_ts, EXCLUDED._cdc_live_exp IS NOT NULL, coalesce(EXCLUDED._cdc_live_exp, 0)) > "
        "ROW(o._cdc_live_ts, o._cdc_live_exp IS NOT NULL, coalesce(o._cdc_live_exp, 0))))"
    )
    deletion_wins = f"EXCLUDED._cdc_deleted_at > coalesce(o._cdc_deleted_at, {MIN_WRITETIME})"
    updates = [
        *_kept("_cdc_live_ts", ["_cdc_live_ts", "_cdc_live_exp"], live_wins),
        "_cdc_deleted_at = greatest(o._cdc_deleted_at, EXCLUDED._cdc_deleted_at)",
    ]
    changed = [live_wins, deletion_wins]
    for column in columns:
        wins = _cell_wins(column)
        changed.append(wins)
        updates.extend(_cell_updates(sql, column, wins))
    listed = ", ".join(names)
    return (
        f"INSERT INTO {sql.name(suffix)} AS o ({listed}) {_staged_sql(sql, stage, part, names, columns, marked)} "
        f"ON CONFLICT ({conflict}) DO UPDATE SET {', '.join(updates)} WHERE {' OR '.join(changed)}"
    )


def _cell_wins(column: Column) -> str:
    """SQL: whether the staged cell (``EXCLUDED``) beats the stored one (``o``) by Cassandra's rules.

    For a complex column (a counter): whether the staged one brings elements (shards) other than the stored
    ones, or a newer collection deletion (counter tombstone).
    """
    name = column.name
    if st.merged_by_parts(column):
        # Elements (shards) equal to the stored ones change nothing: a replica's duplicate rewrites no row.
        deleted_at, value = ident(st.deleted_at_name(name)), ident(name)
        brings = f"EXCLUDED.{value} IS NOT NULL AND EXCLUDED.{value} IS DISTINCT FROM o.{value}"
        return f"(({brings}) OR EXCLUDED.{deleted_at} > coalesce(o.{deleted_at}, {MIN_WRITETIME}))"
    ts, exp, deleted = ident(st.ts_name(name)), ident(st.exp_name(name)), ident(st.del_name(name))

    def rank(alias: str) -> str:
        rank_class = f"CASE WHEN {alias}.{deleted} THEN 2 WHEN {alias}.{exp} IS NOT NULL THEN 1 ELSE 0 END"
        if st.has_value_bytes(column.type):
            value_bytes = f"{alias}.{ident(st.vb_name(name))}"
        else:
            value_bytes = pg_types.value_bytes_sql(column.type, f"{alias}.{ident(name)}")
        return f"ROW({rank_class}, coalesce({alias}.{exp}, 0), coalesce({value_bytes}, '\\x'::bytea))"

    return (
        f"(EXCLUDED.{ts} IS NOT NULL AND (o.{ts} IS NULL OR EXCLUDED.{ts} > o.{ts} OR "
        f"(EXCLUDED.{ts} = o.{ts} AND {rank('EXCLUDED')} > {rank('o')})))"
    )


def _cell_updates(sql: PgTableSql, column: Column, wins: str) -> list[str]:
    """SET clauses keeping, of the stored and the staged cell, the one Cassandra keeps."""
    name = column.name
    if st.merged_by_parts(column):
        deleted_at = ident(st.deleted_at_name(name))
        latest = f"greatest(o.{deleted_at}, EXCLUDED.{deleted_at})"
        if column.type.is_complex:
            return [_merged_assignment(sql, column), f"{deleted_at} = {latest}"]
        merged = f"{ident(sql.helper)}.merge_shards(o.{ident(name)}, EXCLUDED.{ident(name)})"
        return [f"{ident(name)} = {merged}", f"{deleted_at} = {latest}"]
    return _kept(ident(st.ts_name(name)), [ident(cell) for cell, _ in st.cell_columns(column)], wins)


def _kept(ts: str, cells: Sequence[str], wins: str) -> list[str]:
    """SET clauses keeping the staged cell (``EXCLUDED``, stamped ``ts``) when it wins, else the stored one
    (``o``), either only when the other side's deletions do not cover it."""
    new = f"{wins} AND EXCLUDED.{ts} > coalesce(o._cdc_deleted_at, {MIN_WRITETIME})"
    old = f"{wins} IS NOT TRUE AND o.{ts} > coalesce(EXCLUDED._cdc_deleted_at, {MIN_WRITETIME})"
    return [f"{cell} = CASE WHEN {new} THEN EXCLUDED.{cell} WHEN {old} THEN o.{cell} END" for cell in cells]


def _one_statement(statements: Sequence[str]) -> str:
    """Statements on different rows as one (data-modifying CTEs, then the last)."""
    ctes = ",\n".join(f"m{i} AS ({statement})" for i, statement in enumerate(statements[:-1]))
    return (f"WITH {ctes}\n" if ctes else "") + statements[-1]


def _merged_assignment(sql: PgTableSql, column: Column) -> str:
    """The SET clause giving a complex column of a stored row ``o`` its elements merged with the staged ones
    (``EXCLUDED``), and the presented value and first expiry of the result.

    Merging element by element (and presenting the result) is the dear part of a merge, so two cases skip it:
    the staged row brings nothing for the column, or the very elements stored (a replica's duplicate), and no
    deletion raising its floor (a partial update of other columns: the stored elements, already clear of the
    stored deletions, stay); or the staged row's collection deletion covers every stored element and deletion
    (an overwrite: the staged elements, already clear of it, are the result). Either side's presented value
    is then kept as it is."""
    name, deleted_at = ident(column.name), ident(st.deleted_at_name(column.name))
    shown, until = ident(st.shown_name(column.name)), ident(st.shown_until_name(column.name))
    stored_floor = f"greatest(o.{deleted_at}, o._cdc_deleted_at)"
    floor = f"greatest(o.{deleted_at}, EXCLUDED.{deleted_at}, o._cdc_deleted_at, EXCLUDED._cdc_deleted_at)"
    kept = f"(EXCLUDED.{name} IS NULL OR EXCLUDED.{name} = o.{name}) AND {floor} IS NOT DISTINCT FROM {stored_floor}"
    covering = f"EXCLUDED.{deleted_at} >= coalesce(greatest({stored_floor}, EXCLUDED._cdc_deleted_at), {MIN_WRITETIME})"
    newer = f"jsonb_build_object('d', EXCLUDED.{deleted_at})"
    overwritten = (
        f"{covering} AND NOT coalesce(jsonb_path_exists(o.{name}, 'strict $.* ? (@[0] > $d)', {newer}), false)"
    )
    case = f"CASE WHEN {kept} THEN 1 WHEN {overwritten} THEN 2 ELSE 0 END"
    merged = f"{ident(sql.helper)}.merge_elements(o.{name}, EXCLUDED.{name}, {floor})"
    elements = f"CASE x.k WHEN 1 THEN o.{name} WHEN 2 THEN EXCLUDED.{name} ELSE {merged} END"

    def presented(stored: str, computed: str) -> str:
        return f"CASE y.k WHEN 1 THEN o.{stored} WHEN 2 THEN EXCLUDED.{stored} ELSE {computed} END"

    computed = f"y.m, {presented(shown, sql.shown_sql(column, 'y.m'))}, {presented(until, sql.shown_until_sql('y.m'))}"
    return (
        f"({name}, {shown}, {until}) = (SELECT {computed} FROM (SELECT x.k, {elements} AS m "
        f"FROM (SELECT {case} AS k OFFSET 0) x OFFSET 0) y)"
    )


def _presented_assignment(sql: PgTableSql, column: Column, elements: str) -> str:
    """A SET clause giving a complex column ``elements`` (SQL over the row being written) and the
    presented value and first expiry computed from them, the elements computed once."""
    name = ident(column.name)
    targets = f"{name}, {ident(st.shown_name(column.name))}, {ident(st.shown_until_name(column.name))}"
    computed = f"m, {sql.shown_sql(column, 'm')}, {sql.shown_until_sql('m')}"
    return f"({targets}) = (SELECT {computed} FROM (SELECT {elements} AS m OFFSET 0) x)"


def migration_sql(sql: PgTableSql) -> list[str]:
    """Statements turning storage written by versions that applied deletions at read (the same tables,
    without the stored presented values and ``_cdc_alive_until``) into the merged state: each row's own
    deletion, then the recorded partition and range deletions, applied to the rows they cover; then each
    complex column's presented value computed from its elements."""
    keys = sql.key_list()
    deletions = (
        f"SELECT 'p'::text AS _cdc_part, {keys}, NULL::bytea AS _cdc_low, NULL::bytea AS _cdc_high, "
        f"_cdc_deleted_at FROM {sql.name('__partdel')} UNION ALL SELECT 'g'::text, {keys}, _cdc_low, "
        f"_cdc_high, _cdc_deleted_at FROM {sql.name('__rangedel')}"
    )
    statements = [f"CREATE TEMPORARY VIEW {MIGRATION_STAGE} AS {deletions}"]
    for suffix, columns in (("__rows", sql.table.regulars), ("__static", sql.table.statics)):
        hide = ", ".join(_hide_sql(sql, columns, "o._cdc_deleted_at"))
        statements.append(f"UPDATE {sql.name(suffix)} o SET {hide} WHERE o._cdc_deleted_at IS NOT NULL")
    statements.append(_deletions_sql(sql, MIGRATION_STAGE, "pg"))
    statements.append(f"DROP VIEW {MIGRATION_STAGE}")
    for suffix, columns in (("__rows", sql.table.regulars), ("__static", sql.table.statics)):
        complex_columns = [c for c in columns if c.type.is_complex]
        if complex_columns:
            sets = ", ".join(_presented_assignment(sql, c, f"o.{ident(c.name)}") for c in complex_columns)
            statements.append(f"UPDATE {sql.name(suffix)} o SET {sets}")
    return statements
