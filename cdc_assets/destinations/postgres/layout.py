"""Where a Cassandra table lives in PostgreSQL: its storage tables and their generated columns, the functions
presenting its collections, the shared bookkeeping schema, the layout marker; :class:`PgTableSql` names them
and spells their DDL (shared with TimescaleDB).

Per Cassandra table ``ks.t``, in the schema ``<prefix>ks``:

- ``"t"``: the **current-state view** a data engineer queries (``postgres.read``): a plain projection of
  ``t__rows`` (joined to ``t__static`` when the table has static columns) whose only work is expiry, decided
  at read time to the second (``now()``, or the ``cdc_assets.now`` setting when set): a row shows while its
  ``_cdc_alive_until`` is ahead of now, a cell while its expiry is. It presents every CQL type as
  ``postgres.types`` documents.
- ``"t__rows"``: the merged current state, one row per clustering row, keyed by partition key and ``_cdc_ck``
  (the clustering in Cassandra's order, as bytes; the primary key's index serves a lookup by partition key).
  Beside each column's value it keeps the cell's write time, expiry and tombstone flag (and the CQL bytes for
  the types whose bytes SQL cannot compute), the row liveness (``_cdc_live_ts``/``_cdc_live_exp``), the
  latest deletion covering the row (``_cdc_deleted_at``: its own, its partition's or a range's) and
  ``_cdc_alive_until``, a generated column: the latest expiry among what keeps the row visible (null: never
  expires; ``DEAD``: nothing does). Complex columns are jsonb maps of elements, each with its own write time
  (``postgres.staging``); counters jsonb maps of their leaders' shards (``postgres.counters``) beside their
  generated sum ``<c>__sum``.
- ``"t__static"``: the same for each partition's static row.
- ``"t__partdel"`` and ``"t__rangedel"``: partition and range deletions (highest timestamp kept).

Deletions are applied when they are merged (``postgres.merge``), not when the view is read: a partition or
range deletion nulls the cells and liveness it covers in the stored rows and raises their ``_cdc_deleted_at``;
a staged row is merged with every stored deletion covering it already applied, so a late older write is
dropped at merge and never resurrects anything; a row nothing keeps alive stays (its deletion must outlive
it) with ``_cdc_alive_until`` = ``DEAD``. Expiry cannot move to the merge (``now`` is the reader's, and may be
in the past): the view keeps one predicate per cell and one per row. The price is paid by loads carrying
deletions (one more statement per piece, an update of the rows they cover) and by every merged row (the
generated columns, a look-up of the deletions covering it); what a read costs no longer depends on the
history. A complex column keeps its element map (merges need each element's write time and expiry) and
its presented value with every element it holds (``<c>__shown``), good until its first element expires
(``<c>__shown_until``); the load spells both in Arrow (``postgres.elements.present``) when the merged map is the
staged one, and PostgreSQL computes them otherwise. Only past ``<c>__shown_until`` does the view present the
column from the map, element by element. The view evaluates ``now`` once per query (a sub-select), calls
only ``PARALLEL SAFE`` helper functions, and costs them low so that PostgreSQL neither JIT-compiles it nor
gives up parallel scans. A wider stored row is the other price: a sequential ``count(*)`` reads about three
times the pages of a plain table of the same rows (``shop.orders``). So ``_cdc_alive_until`` has an index of its
own (``t__rows_alive``, ``t__static_alive``; nearly all NULL, so a few MB): once the pages are all-visible
(each load vacuums what it wrote, ``PostgresDestination._vacuum``), ``count(*)`` is an index-only scan of it.
It costs a load little (an index entry per new row; an update changing ``_cdc_alive_until``, a deletion or a
TTL, is no longer HOT).

Storage written by an earlier version (which merged at read time) carries no layout marker (the comment on
``t__rows``, :data:`LAYOUT_MARKER`): the first ``ensure_table`` migrates it once, in one transaction
(``postgres.merge.migration_sql``), applying the stored deletions to the stored rows and adding the presented
columns.

Shared bookkeeping lives in ``<prefix>_cdc`` (:func:`helper_ddl`): ``loads`` (one row per committed load: its
id, table, first and last source position and change count) and ``columns`` (each column's CQL type, to detect
a change the storage cannot take), beside the SQL functions the merge and the view call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.cassandra_schema.types import parse_type
from cdc_assets.destinations.base import PermanentDestinationError
from cdc_assets.destinations.postgres import counters as ct
from cdc_assets.destinations.postgres import elements as el
from cdc_assets.destinations.postgres import staging as st
from cdc_assets.destinations.postgres import types as pg_types

MIN_WRITETIME = -(1 << 63)
# A row's ``_cdc_alive_until`` when nothing keeps it visible; FOREVER stands for "no expiry" while computing it.
DEAD = MIN_WRITETIME
FOREVER = (1 << 63) - 1
ALIVE_UNTIL = "_cdc_alive_until"
# The rows table's comment once it holds the merged state; storage without it applied deletions at read.
LAYOUT_MARKER = "cdc_assets merged state 1"
NOW_SETTING = "cdc_assets.now"
MAX_IDENTIFIER_BYTES = 63
# Storage options of the merged state tables (``autovacuum_ddl``), as pg_class.reloptions spells them.
AUTOVACUUM = ("autovacuum_vacuum_scale_factor=0.02", "autovacuum_vacuum_insert_scale_factor=0.02")
_SUFFIXES = ("__rows", "__static", "__partdel", "__rangedel", "__rows_alive", "__static_alive")


def ident(name: str) -> str:
    """A quoted SQL identifier (Cassandra names are used verbatim, whatever their case or characters)."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class PgTableSql:
    """The names and DDL of one Cassandra table's storage; shared with TimescaleDB. The merge (``postgres.merge``)
    and the current-state view (``postgres.read``) are spelt from it."""

    table: TableSchema
    schema: str
    helper: str

    def name(self, suffix: str = "") -> str:
        return f"{ident(self.schema)}.{ident(self.table.name + suffix)}"

    @property
    def view(self) -> str:
        return self.name()

    def key_list(self, alias: str = "") -> str:
        prefix = f"{alias}." if alias else ""
        return ", ".join(prefix + ident(c.name) for c in self.table.partition_key)

    def key_match(self, left: str, right: str) -> str:
        return " AND ".join(f"{left}.{ident(c.name)} = {right}.{ident(c.name)}" for c in self.table.partition_key)

    def storage_ddl(self) -> list[str]:
        """Statements creating the storage tables (without value columns) if they do not exist."""
        keys = ", ".join(f"{ident(c.name)} {pg_types.pg_type(c.type)} NOT NULL" for c in self.table.partition_key)
        clustering = "".join(f", {ident(c.name)} {pg_types.pg_type(c.type)}" for c in self.table.clustering)
        key_list = self.key_list()
        liveness = "_cdc_live_ts bigint, _cdc_live_exp bigint, _cdc_deleted_at bigint"
        return [
            f"CREATE SCHEMA IF NOT EXISTS {ident(self.schema)}",
            f"CREATE TABLE IF NOT EXISTS {self.name('__rows')} ({keys}{clustering}, _cdc_ck bytea NOT NULL, "
            # Room on each page lets a merge rewrite a row in place (a HOT update, no index entry).
            f"{liveness}, PRIMARY KEY ({key_list}, _cdc_ck)) WITH (fillfactor = 80)",
            f"CREATE TABLE IF NOT EXISTS {self.name('__static')} ({keys}, {liveness}, PRIMARY KEY ({key_list})) "
            "WITH (fillfactor = 80)",
            f"CREATE TABLE IF NOT EXISTS {self.name('__partdel')} ({keys}, _cdc_deleted_at bigint NOT NULL, "
            f"PRIMARY KEY ({key_list}))",
            f"CREATE TABLE IF NOT EXISTS {self.name('__rangedel')} ({keys}, _cdc_low bytea NOT NULL, "
            "_cdc_high bytea NOT NULL, _cdc_deleted_at bigint NOT NULL, "
            f"PRIMARY KEY ({key_list}, _cdc_low, _cdc_high))",
        ]

    def layout_marker_ddl(self) -> str:
        """The statement marking the rows table as holding the merged state (deletions applied at merge)."""
        return f"COMMENT ON TABLE {self.name('__rows')} IS '{LAYOUT_MARKER}'"

    def add_columns_ddl(self, columns: Sequence[Column]) -> list[str]:
        """Statements adding the storage columns of new Cassandra columns."""
        statements = []
        for kind, suffix in (("regular", "__rows"), ("static", "__static")):
            additions = [
                f"ADD COLUMN IF NOT EXISTS {ident(name)} {pg}"
                for column in columns
                if column.kind == kind
                for name, pg in st.cell_columns(column) + st.presented_columns(column)
            ]
            if additions:
                statements.append(f"ALTER TABLE {self.name(suffix)} " + ", ".join(additions))
        return statements

    def alive_index_ddl(self) -> list[str]:
        """Statements indexing each storage table's ``_cdc_alive_until`` (run after its generated columns: dropping
        the column drops the index). Nearly every row has none (NULL: nothing of it expires), so the index is
        small, and once the pages are all-visible (each load vacuums what it wrote; autovacuum comes by too), the
        view's ``count(*)`` reads it alone (an index-only scan) instead of every wide stored row."""
        return [
            f"CREATE INDEX IF NOT EXISTS {ident(self.table.name + suffix + '_alive')} "
            f"ON {self.name(suffix)} ({ALIVE_UNTIL})"
            for suffix in ("__rows", "__static")
        ]

    def autovacuum_ddl(self, suffix: str) -> str:
        """The statement making autovacuum visit storage table ``suffix`` after every load of a few percent
        of its rows (PostgreSQL's default waits for a fifth). Each load vacuums what it wrote already
        (``vacuum_after_load``); this covers destinations with that off, and the vacuums a load skipped: until one
        has run, the pages a load wrote are not all-visible and ``count(*)`` cannot be answered from the
        ``_cdc_alive_until`` index alone."""
        return f"ALTER TABLE {self.name(suffix)} SET ({', '.join(AUTOVACUUM)})"

    def derived_columns(self, suffix: str) -> list[tuple[str, str, str]]:
        """The generated columns of storage table ``suffix`` (``__rows``, ``__static``), as (name, type,
        expression): PostgreSQL computes them whenever a merge writes the row, so a read finds them ready:
        ``_cdc_alive_until`` and each counter's sum. (A complex column's presented value is no generated
        column: a load spells it for the rows it brings, ``postgres.elements.present``, and the merge computes it
        only for the rows it merges with stored ones, ``postgres.merge._presented_assignment``.)"""
        columns = self.table.regulars if suffix == "__rows" else self.table.statics
        derived = [(ALIVE_UNTIL, "bigint", self.alive_until_sql(columns))]
        for column in columns:
            if column.type.kind == "counter":
                derived.append((st.sum_name(column.name), "bigint", self._counter_value(column)))
        return derived

    def shown_sql(self, column: Column, elements: str) -> str:
        """SQL of a complex column's presented value, every element held included, from its element map."""
        return f"{ident(self.helper)}.{ident(self.present_function(column)[0])}({elements}, NULL)"

    def shown_until_sql(self, elements: str) -> str:
        """SQL of a complex column's first element expiry (null: none expires), from its element map."""
        first_expiry = f"{ident(self.helper)}.elements_first_expiry({elements})"
        return f"CASE WHEN jsonb_path_exists({elements}, '{_EXPIRING_PATH}') THEN {first_expiry} END"

    def functions_ddl(self) -> list[str]:
        """Statements creating the functions presenting each complex column's elements (at a moment, or
        every element held), one function per body (named by its digest, so columns of one type share it).

        Declared cheap (``COST 1``): the view calls one only for a row whose stored presented value has
        expired, rare, but PostgreSQL would otherwise cost it for every row, and a scan's estimate would
        pass ``jit_above_cost``: compiling the plan took 300 ms of a 500 ms scan of 640,000 rows."""
        statements = []
        for column in self.table.value_columns:
            if column.type.is_complex:
                name, body = self.present_function(column)
                statements.append(
                    f"CREATE OR REPLACE FUNCTION {ident(self.helper)}.{ident(name)}(elements jsonb, now bigint) "
                    f"RETURNS {pg_types.pg_type(column.type)} LANGUAGE sql IMMUTABLE PARALLEL SAFE COST 1 "
                    f"AS $$ {body} $$"
                )
        return statements

    def present_function(self, column: Column) -> tuple[str, str]:
        """(name, body) of the function presenting a complex column's elements that live at ``now`` (seconds;
        null: every element held, expiring ones included)."""
        e = el.sql_fields(column.type)
        body = (
            f"SELECT {self._aggregate(column)} FROM jsonb_each(elements) e "
            f"WHERE {e[el.TS]} > {self.dropped_at(column)} AND {e[el.CLASS]} <> {el.TOMBSTONE} "
            f"AND (now IS NULL OR {e[el.EXP]} IS NULL OR {e[el.EXP]} > now)"
        )
        digest = hashlib.sha256(f"{pg_types.pg_type(column.type)} {body}".encode()).hexdigest()[:20]
        return f"present_{digest}", body

    def alive_until_sql(self, columns: Sequence[Column]) -> str:
        """SQL (over one storage row) of the row's ``_cdc_alive_until``: until when (seconds since the epoch)
        something keeps it visible, the latest expiry of its liveness and live cells; null when one never
        expires, ``DEAD`` when nothing is left. Deletions are already applied to the row, so only expiry is
        left for the read to decide."""
        forever = ["_cdc_live_ts IS NOT NULL AND _cdc_live_exp IS NULL"]
        items = [f"CASE WHEN _cdc_live_ts IS NOT NULL THEN _cdc_live_exp ELSE {DEAD} END"]
        for column in columns:
            name, dropped = ident(column.name), self.dropped_at(column)
            if column.type.kind == "counter":
                forever.append(f"{self._counter_value(column)} IS NOT NULL")
            elif column.type.is_complex:
                # Most rows have an element that never expires: found by a path query, without the function.
                live = "@.size() < 2 || !(@[1] == " + f"{el.EXPIRING} || @[1] == {el.TOMBSTONE})"
                path = f"strict $.* ? ({live}) ? (@[0] > {dropped})"
                forever.append(f"jsonb_path_exists({name}, '{path}')")
                items.append(f"{ident(self.helper)}.elements_alive_until({name}, {dropped})")
            else:
                present = (
                    f"{ident(st.ts_name(column.name))} > {dropped} AND {ident(st.del_name(column.name))} IS NOT TRUE"
                )
                expires = ident(st.exp_name(column.name))
                forever.append(f"{present} AND {expires} IS NULL")
                items.append(f"CASE WHEN {present} THEN {expires} ELSE {DEAD} END")
        return f"CASE WHEN {' OR '.join(f'({f})' for f in forever)} THEN NULL ELSE greatest({', '.join(items)}) END"

    def _counter_value(self, column: Column) -> str:
        """SQL (over one storage row) of a counter's presented value: its shards no deletion hides, summed."""
        floor = f"greatest(_cdc_deleted_at, {self.dropped_at(column)})"
        deleted_at = ident(st.deleted_at_name(column.name))
        return f"{ident(self.helper)}.counter_value({ident(column.name)}, {deleted_at}, {floor})"

    def dropped_at(self, column: Column) -> int:
        """Cells written before the column was last dropped stay hidden once it is re-added."""
        dropped = self.table.dropped_column(column.name)
        return MIN_WRITETIME if dropped is None else dropped.dropped_at

    def forget_sql(self, cutoff: int) -> list[str]:
        """Statements removing the rows, static rows and deletions that nothing written since ``cutoff`` (µs)
        touched: what a retention lets go."""
        statements = []
        for suffix, columns in (("__rows", self.table.regulars), ("__static", self.table.statics)):
            times = ["_cdc_live_ts", "_cdc_deleted_at"]
            for column in columns:
                if st.merged_by_parts(column):
                    field = 0 if column.type.is_complex else 2
                    times += [
                        ident(st.deleted_at_name(column.name)),
                        f"{ident(self.helper)}.latest_write({ident(column.name)}, {field})",
                    ]
                else:
                    times.append(ident(st.ts_name(column.name)))
            latest = f"coalesce(greatest({', '.join(times)}), {MIN_WRITETIME})"
            statements.append(f"DELETE FROM {self.name(suffix)} WHERE {latest} < {cutoff}")
        statements += [
            f"DELETE FROM {self.name(s)} WHERE _cdc_deleted_at < {cutoff}" for s in ("__partdel", "__rangedel")
        ]
        return statements

    def _aggregate(self, column: Column) -> str:
        """The aggregate presenting a complex column's elements (rows ``e`` of ``jsonb_each``), in order."""
        cql = column.type
        e = el.sql_fields(cql)
        order = f"ORDER BY {e[el.ORDER]}"
        if cql.kind == "udt":
            aggregate = f"jsonb_object_agg(e.key, {e['json']})"
        elif cql.kind == "map":
            aggregate = f"jsonb_object_agg({e[el.MAP_KEY]}, {e['json']} {order})"
        elif pg_types.pg_type(cql) == "jsonb":
            aggregate = f"jsonb_agg({e['json']} {order})"
        else:
            aggregate = f"array_agg({pg_types.element_sql(cql.args[0], e['text'])} {order})"
        return aggregate


# Whether a complex column holds an element that expires (jsonb path over its element map).
_EXPIRING_PATH = f"strict $.* ? (@.size() > 1 && @[1] == {el.EXPIRING})"


def helper_ddl(helper: str) -> list[str]:
    """The shared bookkeeping schema: the load ledger, the column registry and SQL functions."""
    schema = ident(helper)
    fields = el.sql_fields(parse_type("list<int>"))
    return [
        f"CREATE SCHEMA IF NOT EXISTS {schema}",
        f"CREATE TABLE IF NOT EXISTS {schema}.loads (load_id text PRIMARY KEY, table_name text NOT NULL, "
        "first_segment bigint, first_position integer, last_segment bigint, last_position integer, "
        "changes integer NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now())",
        f"CREATE TABLE IF NOT EXISTS {schema}.columns (schema_name text, table_name text, column_name text, "
        "cql_type text NOT NULL, kind text NOT NULL, PRIMARY KEY (schema_name, table_name, column_name))",
        f"CREATE OR REPLACE FUNCTION {schema}.now_seconds() RETURNS numeric LANGUAGE sql STABLE PARALLEL SAFE AS $$ "
        f"SELECT extract(epoch FROM coalesce(nullif(current_setting('{NOW_SETTING}', true), '')::timestamptz, "
        "now())) $$",
        # Element-wise merge of two complex columns (jsonb: element key -> element), dropping what the
        # collection deletion covers.
        f"CREATE OR REPLACE FUNCTION {schema}.merge_elements(old jsonb, new jsonb, deleted_at bigint) "
        "RETURNS jsonb LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ "
        "SELECT jsonb_object_agg(k, v) FROM (SELECT coalesce(o.key, n.key) AS k, "
        "CASE WHEN n.value IS NULL THEN o.value WHEN o.value IS NULL THEN n.value "
        f"WHEN {el.rank_sql('n.value')} > {el.rank_sql('o.value')} THEN n.value ELSE o.value END AS v "
        "FROM jsonb_each(old) o FULL JOIN jsonb_each(new) n ON o.key = n.key) m "
        "WHERE deleted_at IS NULL OR (v->>0)::bigint > deleted_at $$",
        # Until when a complex column keeps its row visible (FOREVER: an element without expiry; DEAD: none).
        f"CREATE OR REPLACE FUNCTION {schema}.elements_alive_until(elements jsonb, floor bigint) "
        f"RETURNS bigint LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT "
        f"coalesce(max(coalesce({fields[el.EXP]}, {FOREVER})), {DEAD}) FROM jsonb_each(elements) e "
        f"WHERE {fields[el.TS]} > floor AND {fields[el.CLASS]} <> {el.TOMBSTONE} $$",
        f"CREATE OR REPLACE FUNCTION {schema}.elements_first_expiry(elements jsonb) RETURNS bigint LANGUAGE sql "
        f"IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT min({fields[el.EXP]}) FROM jsonb_each(elements) e "
        f"WHERE {fields[el.CLASS]} = {el.EXPIRING} $$",
        # The latest write time among a complex column's elements (field 0) or a counter's shards (field 2).
        f"CREATE OR REPLACE FUNCTION {schema}.latest_write(parts jsonb, field int) RETURNS bigint LANGUAGE sql "
        "IMMUTABLE PARALLEL SAFE AS $$ SELECT max((value->>field)::bigint) FROM jsonb_each(parts) $$",
        *ct.merge_sql(schema),
        f"CREATE OR REPLACE FUNCTION {schema}.counter_value(shards jsonb, tombstone bigint, floor bigint) "
        f"RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT "
        f"{ct.value_sql('shards', 'tombstone', f'coalesce(floor, {MIN_WRITETIME})')} $$",
    ]


def stale_columns(cursor: psycopg.Cursor, sql: PgTableSql, suffix: str) -> list[tuple[str, str, str, str]]:
    """The generated columns of a storage table that are missing or were made from another expression, with
    the marker (a digest of type and expression) their comment is to carry."""
    cursor.execute(
        "SELECT attname::text, col_description(attrelid, attnum) FROM pg_attribute "
        "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
        [sql.name(suffix)],
    )
    comments = dict(cursor.fetchall())
    stale = []
    for name, pg, expression in sql.derived_columns(suffix):
        marker = "cdc_assets " + hashlib.sha256(f"{pg} {expression}".encode()).hexdigest()
        if comments.get(name) != marker:
            stale.append((name, pg, expression, marker))
    return stale


def stored_layout(cursor: psycopg.Cursor, sql: PgTableSql) -> str | None:
    """The rows table's layout marker (its comment): None when it does not exist yet, '' when it has none."""
    cursor.execute("SELECT to_regclass(%s)", [sql.name("__rows")])
    relation = cursor.fetchone()[0]  # type: ignore[index]
    if relation is None:
        return None
    cursor.execute("SELECT obj_description(to_regclass(%s), 'pg_class')", [sql.name("__rows")])
    return cursor.fetchone()[0] or ""  # type: ignore[index]


def check_names(table: TableSchema, schema: str) -> None:
    """Every generated identifier must fit PostgreSQL's 63 bytes and not collide with a hidden column.

    PostgreSQL truncates a longer name silently: two keyspaces would share a schema, two columns a column.
    """
    if len(schema.encode()) > MAX_IDENTIFIER_BYTES:
        raise PermanentDestinationError(
            f"keyspace {table.keyspace!r}: its schema {schema!r} (the schema prefix and the keyspace) is longer "
            f"than PostgreSQL's {MAX_IDENTIFIER_BYTES} bytes"
        )
    names = {c.name for c in table.columns}
    for suffix in _SUFFIXES:
        if len((table.name + suffix).encode()) > MAX_IDENTIFIER_BYTES:
            raise PermanentDestinationError(
                f"table name {table.qualified_name!r} is too long for PostgreSQL once suffixed with {suffix!r}"
            )
    for column in table.columns:
        if column.name.startswith("_cdc_"):
            raise PermanentDestinationError(f"column {column.name!r}: names starting with _cdc_ are reserved")
        derived = []
        if st.merged_by_parts(column):
            if column.type.kind == "counter":
                derived.append(st.sum_name(column.name))
            else:
                derived += [st.shown_name(column.name), st.shown_until_name(column.name)]
        for hidden in [name for name, _ in st.cell_columns(column)[1:]] + derived:
            if hidden in names:
                raise PermanentDestinationError(f"column {hidden!r} collides with a hidden column of {column.name!r}")
            if len(hidden.encode()) > MAX_IDENTIFIER_BYTES:
                raise PermanentDestinationError(f"column name {column.name!r} is too long for PostgreSQL")
