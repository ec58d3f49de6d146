"""The ``system_schema`` tables: their hard-coded definitions, and what their rows mean.

Schema changes reach the commit log as mutations of these tables (format notes 10.11, 12), so the reader
needs their definitions to decode them, and both schema sources that read their rows (the cluster through
cassandra-driver, and the commit log) turn rows into table definitions with the functions here.

The definitions follow ``SchemaKeyspace.java``. Where 4.0, 4.1 and 5.0 differ, a table holds the union
of their columns: 4.1 added ``tables.memtable`` and ``views.memtable``; 5.0 added ``allow_auto_snapshot``
and ``incremental_backups`` to both, and the ``column_masks`` table. A mutation names the columns it
carries, so columns a version lacks are simply never seen. All eleven tables are defined, not only the
ones that describe tables: a schema mutation holds partition updates for several of them, and one
unknown table makes the whole mutation unreadable.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from cdc_assets.cassandra_schema.cql_file import parse_cql
from cdc_assets.cassandra_schema.errors import SchemaError
from cdc_assets.cassandra_schema.tables import Column, DroppedColumn, TableSchema
from cdc_assets.cassandra_schema.types import CqlType, CqlTypeError, parse_dropped_type, parse_type

SCHEMA_KEYSPACE = "system_schema"
# Keyspaces whose tables Cassandra defines in code (their ids are name-based, see system_table_id). Their
# system_schema rows are rewritten at every node start, so they are never read as schema changes.
SYSTEM_KEYSPACES = frozenset(
    {
        "system",
        "system_auth",
        "system_distributed",
        "system_schema",
        "system_traces",
        "system_views",
        "system_virtual_schema",
    }
)
KEY_KINDS = ("partition_key", "clustering")
COLUMN_KINDS = (*KEY_KINDS, "static", "regular")

_TABLE_PARAMS = """
    allow_auto_snapshot boolean, bloom_filter_fp_chance double, caching frozen<map<text, text>>, comment text,
    compaction frozen<map<text, text>>, compression frozen<map<text, text>>, memtable text,
    crc_check_chance double, dclocal_read_repair_chance double, default_time_to_live int,
    extensions frozen<map<text, blob>>, gc_grace_seconds int, incremental_backups boolean, id uuid,
    max_index_interval int, memtable_flush_period_in_ms int, min_index_interval int, read_repair_chance double,
    speculative_retry text, additional_write_policy text, cdc boolean, read_repair text
"""

_DEFINITIONS = {
    "keyspaces": """keyspace_name text, durable_writes boolean, replication frozen<map<text, text>>,
        PRIMARY KEY ((keyspace_name))""",
    "tables": f"""keyspace_name text, table_name text, {_TABLE_PARAMS}, flags frozen<set<text>>,
        PRIMARY KEY ((keyspace_name), table_name)""",
    "columns": """keyspace_name text, table_name text, column_name text, clustering_order text,
        column_name_bytes blob, kind text, position int, type text,
        PRIMARY KEY ((keyspace_name), table_name, column_name)""",
    "column_masks": """keyspace_name text, table_name text, column_name text, function_keyspace text,
        function_name text, function_argument_types frozen<list<text>>, function_argument_values frozen<list<text>>,
        function_argument_nulls frozen<list<boolean>>, PRIMARY KEY ((keyspace_name), table_name, column_name)""",
    "dropped_columns": """keyspace_name text, table_name text, column_name text, dropped_time timestamp,
        kind text, type text, PRIMARY KEY ((keyspace_name), table_name, column_name)""",
    "triggers": """keyspace_name text, table_name text, trigger_name text, options frozen<map<text, text>>,
        PRIMARY KEY ((keyspace_name), table_name, trigger_name)""",
    "views": f"""keyspace_name text, view_name text, base_table_id uuid, base_table_name text, where_clause text,
        include_all_columns boolean, {_TABLE_PARAMS}, PRIMARY KEY ((keyspace_name), view_name)""",
    "types": """keyspace_name text, type_name text, field_names frozen<list<text>>, field_types frozen<list<text>>,
        PRIMARY KEY ((keyspace_name), type_name)""",
    "functions": """keyspace_name text, function_name text, argument_types frozen<list<text>>,
        argument_names frozen<list<text>>, body text, language text, return_type text, called_on_null_input boolean,
        PRIMARY KEY ((keyspace_name), function_name, argument_types)""",
    "aggregates": """keyspace_name text, aggregate_name text, argument_types frozen<list<text>>, final_func text,
        initcond text, return_type text, state_func text, state_type text,
        PRIMARY KEY ((keyspace_name), aggregate_name, argument_types)""",
    "indexes": """keyspace_name text, table_name text, index_name text, kind text, options frozen<map<text, text>>,
        PRIMARY KEY ((keyspace_name), table_name, index_name)""",
}


def system_table_id(keyspace: str, table: str) -> uuid.UUID:
    """The id Cassandra gives a system table: ``TableId.forSystemTable``, an MD5 (version 3) name UUID."""
    digest = hashlib.md5((keyspace + table).encode(), usedforsecurity=False).digest()
    return uuid.UUID(bytes=digest, version=3)


def _system_schema_tables() -> tuple[TableSchema, ...]:
    statements = "\n".join(
        f"CREATE TABLE {SCHEMA_KEYSPACE}.{name} ({columns}) "
        f"WITH ID = {system_table_id(SCHEMA_KEYSPACE, name)} AND cdc = false;"
        for name, columns in _DEFINITIONS.items()
    )
    return tuple(parse_cql(statements, source="system_tables.py"))


SYSTEM_SCHEMA_TABLES: tuple[TableSchema, ...] = _system_schema_tables()

# Cassandra's own tables (3.0 to 5.0), whose mutations every segment holds and a CDC reader skips unless it
# tracks schema changes. Their ids are derived from their names, so they are recognised without any schema.
_OTHER_SYSTEM_TABLES = {
    "system": """available_ranges available_ranges_v2 batches batchlog built_views compaction_history hints
        IndexInfo local paxos paxos_repair_history peer_events peer_events_v2 peers peers_v2 prepared_statements
        range_xfers repairs schema_aggregates schema_columnfamilies schema_columns schema_functions
        schema_keyspaces schema_triggers schema_usertypes size_estimates snapshots sstable_activity
        sstable_activity_v2 table_estimates top_partitions transferred_ranges transferred_ranges_v2
        view_builds_in_progress views_builds_in_progress""",
    "system_auth": """cidr_groups cidr_permissions identity_to_role network_permissions
        resource_role_permissons_index role_members role_permissions roles""",
    "system_distributed": """auto_repair_history auto_repair_priority parent_repair_history partition_denylist
        repair_history view_build_status""",
    "system_traces": "events sessions",
    SCHEMA_KEYSPACE: " ".join(_DEFINITIONS),
}
SYSTEM_TABLE_NAMES: dict[uuid.UUID, str] = {
    system_table_id(keyspace, name): f"{keyspace}.{name}"
    for keyspace, names in _OTHER_SYSTEM_TABLES.items()
    for name in names.split()
}

Row = Mapping[str, Any]


def _uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def _millis(value: Any) -> int:
    """A ``timestamp`` in ms, from an int (change batch form) or a datetime (what cassandra-driver returns)."""
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return (aware - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(milliseconds=1)
    return int(value)


def _column_name(row: Row) -> str:
    # Mutations name columns by these bytes; for CQL tables they are the UTF-8 column name.
    raw = row.get("column_name_bytes")
    if raw is None:
        return str(row["column_name"])
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as error:
        raise SchemaError(
            f"column {row.get('column_name')!r} of {row['keyspace_name']}.{row['table_name']} has a name that is "
            "not UTF-8 (a legacy COMPACT STORAGE table?)",
            f"{SCHEMA_KEYSPACE}.columns",
        ) from error


def resolve_udts(
    rows: Iterable[Row], known: Mapping[str, CqlType] | None = None
) -> tuple[dict[str, CqlType], dict[str, str]]:
    """One keyspace's user types from its ``system_schema.types`` rows, on top of ``known`` ones.

    A type's fields may use other user types of the keyspace, whatever the row order. Returns the
    types, and for each row that cannot be resolved (it uses a type that does not exist) the reason.
    """
    pending = {str(row["type_name"]): row for row in rows}
    resolved = {name: udt for name, udt in (known or {}).items() if name not in pending}
    failures: dict[str, str] = {}
    while pending:
        unresolved_before = len(pending)
        failures = {}
        for name, row in list(pending.items()):
            try:
                fields = tuple(parse_type(text, resolved).freeze() for text in row["field_types"])
            except CqlTypeError as error:
                failures[name] = str(error)
                continue
            resolved[name] = CqlType("udt", fields, name=name, field_names=tuple(row["field_names"]))
            del pending[name]
        # A round that resolved nothing never will.
        if len(pending) == unresolved_before:
            break
    return resolved, failures


def udts_from_rows(keyspace: str, rows: Iterable[Row]) -> dict[str, CqlType]:
    """A keyspace's user types from its ``system_schema.types`` rows; an unresolvable one is an error."""
    resolved, failures = resolve_udts(rows)
    if failures:
        reasons = "; ".join(f"{keyspace}.{name}: {reason}" for name, reason in failures.items())
        raise SchemaError(f"user types that cannot be resolved: {reasons}", f"{SCHEMA_KEYSPACE}.types")
    return resolved


def column_from_row(row: Row, udts: Mapping[str, CqlType]) -> Column:
    """A live column from its ``system_schema.columns`` row; ``udts`` resolves the keyspace's user types."""
    name = _column_name(row)
    where = f"column {name!r} of {row['keyspace_name']}.{row['table_name']}"
    kind = row["kind"]
    if kind not in COLUMN_KINDS:
        raise SchemaError(f"{where} has an unknown kind {kind!r}", f"{SCHEMA_KEYSPACE}.columns")
    try:
        column_type = parse_type(row["type"], udts)
    except CqlTypeError as error:
        raise SchemaError(f"{where}: {error}", f"{SCHEMA_KEYSPACE}.columns") from error
    position = int(row["position"]) if kind in KEY_KINDS else -1
    descending = str(row.get("clustering_order") or "none").lower() == "desc"
    return Column(name, column_type, kind, position, descending)


def dropped_column_from_row(row: Row) -> DroppedColumn:
    """A dropped column from its ``system_schema.dropped_columns`` row (``dropped_time`` ms becomes µs)."""
    try:
        column_type = parse_dropped_type(row["type"])
    except CqlTypeError as error:
        where = f"dropped column {row['column_name']!r} of {row['keyspace_name']}.{row['table_name']}"
        raise SchemaError(f"{where}: {error}", f"{SCHEMA_KEYSPACE}.dropped_columns") from error
    kind = row.get("kind") or "regular"
    return DroppedColumn(str(row["column_name"]), column_type, _millis(row["dropped_time"]) * 1000, kind)


def table_from_rows(
    table_row: Row, column_rows: Iterable[Row], dropped_rows: Iterable[Row], udts: Mapping[str, CqlType]
) -> TableSchema:
    """A table from its ``system_schema.tables`` row and its ``columns`` and ``dropped_columns`` rows."""
    keyspace, name = str(table_row["keyspace_name"]), str(table_row["table_name"])
    columns = [column_from_row(row, udts) for row in column_rows]
    if not any(column.kind == "partition_key" for column in columns):
        raise SchemaError(f"table {keyspace}.{name} has no partition key columns", f"{SCHEMA_KEYSPACE}.columns")
    dropped = tuple(dropped_column_from_row(row) for row in dropped_rows)
    cdc = bool(table_row.get("cdc"))
    return TableSchema(keyspace, name, _uuid(table_row["id"]), tuple(columns), dropped, cdc)
