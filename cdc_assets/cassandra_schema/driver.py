"""Table definitions from a live cluster's ``system_schema``, read through cassandra-driver.

cassandra-driver is imported only when a cluster is read. The conversion of
``system_schema`` rows into table definitions is :func:`registry_from_system_rows`, a pure function;
:func:`load_from_cluster` only runs the four queries.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cdc_assets.cassandra_schema.errors import SchemaError
from cdc_assets.cassandra_schema.system_tables import (
    SCHEMA_KEYSPACE,
    SYSTEM_KEYSPACES,
    table_from_rows,
    udts_from_rows,
)
from cdc_assets.cassandra_schema.tables import SchemaRegistry

_QUERIED_TABLES = ("tables", "columns", "types", "dropped_columns")


def _as_mapping(row: Any) -> Mapping[str, Any]:
    # cassandra-driver's default row factory makes named tuples; dict_factory makes dicts.
    return row._asdict() if hasattr(row, "_asdict") else row


def registry_from_system_rows(
    tables_rows: Iterable[Any],
    columns_rows: Iterable[Any],
    types_rows: Iterable[Any],
    dropped_rows: Iterable[Any],
) -> SchemaRegistry:
    """The tables described by rows of ``system_schema.tables``, ``columns``, ``types`` and ``dropped_columns``.

    Rows are mappings (or named tuples) with the column names of those tables, as cassandra-driver
    returns them. Columns and dropped columns of tables with no ``tables`` row are ignored, as
    Cassandra ignores them.
    """
    columns: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for row in map(_as_mapping, columns_rows):
        columns[(row["keyspace_name"], row["table_name"])].append(row)
    dropped: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for row in map(_as_mapping, dropped_rows):
        dropped[(row["keyspace_name"], row["table_name"])].append(row)
    types: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in map(_as_mapping, types_rows):
        types[row["keyspace_name"]].append(row)
    udts = {keyspace: udts_from_rows(keyspace, rows) for keyspace, rows in types.items()}
    registry = SchemaRegistry()
    for row in map(_as_mapping, tables_rows):
        key = (row["keyspace_name"], row["table_name"])
        registry.add(table_from_rows(row, columns[key], dropped[key], udts.get(key[0], {})))
    return registry


def _connect(contact_points: str | Sequence[str]) -> Any:
    try:
        from cassandra.cluster import Cluster
    except ImportError as error:
        raise ImportError(
            "reading the schema from a cluster needs cassandra-driver: pip install cassandra-driver"
        ) from error
    hosts = [host.strip() for host in contact_points.split(",")] if isinstance(contact_points, str) else contact_points
    return Cluster(contact_points=list(hosts))


def load_from_cluster(session_or_contact_points: Any, keyspaces: Iterable[str] | None = None) -> SchemaRegistry:
    """The tables of a live cluster, read from its ``system_schema``.

    Pass a connected cassandra-driver ``Session`` (it stays open), or contact points (``"host1,host2"``
    or a list of hosts; the connection is closed afterwards). ``keyspaces`` limits the read; by default
    every keyspace but Cassandra's own system keyspaces is read.
    """
    cluster = None
    session = session_or_contact_points
    if isinstance(session_or_contact_points, str | Sequence):
        cluster = _connect(session_or_contact_points)
        session = cluster.connect()
    try:
        if keyspaces is None:
            keyspaces = _user_keyspaces(session)
        rows = {table: _select(session, table, keyspaces) for table in _QUERIED_TABLES}
    finally:
        if cluster is not None:
            cluster.shutdown()
    return registry_from_system_rows(rows["tables"], rows["columns"], rows["types"], rows["dropped_columns"])


def _user_keyspaces(session: Any) -> list[str]:
    """Every keyspace but Cassandra's own.

    Their rows are never read, not even to be filtered out: 5.0 records ``system.local``'s dropped
    ``thrift_version`` at ``Long.MAX_VALUE`` µs, a ``dropped_time`` the driver cannot turn into a datetime.
    """
    rows = session.execute(f"SELECT keyspace_name FROM {SCHEMA_KEYSPACE}.keyspaces")
    names = (_as_mapping(row)["keyspace_name"] for row in rows)
    return sorted(name for name in names if name not in SYSTEM_KEYSPACES)


def _select(session: Any, table: str, keyspaces: Iterable[str]) -> list[Mapping[str, Any]]:
    # SELECT * rather than a column list: older versions lack some columns (3.0 has no tables.cdc).
    query = f"SELECT * FROM {SCHEMA_KEYSPACE}.{table}"
    selected: list[Mapping[str, Any]] = []
    for keyspace in keyspaces:
        if not isinstance(keyspace, str):
            raise SchemaError(f"keyspace names must be strings, got {keyspace!r}", "load_from_cluster")
        selected.extend(_as_mapping(row) for row in session.execute(f"{query} WHERE keyspace_name = %s", (keyspace,)))
    return selected
