"""What a real node's ``SELECT *`` returns, in the canonical form every destination's ``current_state`` uses.

cassandra-driver hands back its own types for some CQL values (``cassandra.util.Date``, ``Time``,
``Duration``, sorted sets, ordered maps, UDT named tuples); :func:`select_all` turns them into the forms
:func:`cdc_assets.destinations.cassandra_values.canonical_rows` accepts, then into the canonical form.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cassandra.util import Date, Duration, Time

from cdc_assets.cassandra_schema.tables import TableSchema
from cdc_assets.cassandra_schema.types import CqlType
from cdc_assets.destinations.cassandra_values import canonical_rows
from cdc_assets.snapshot import quote, timestamp_ms


def select_all(session: Any, table: TableSchema) -> list[dict[str, Any]]:
    """Every row ``SELECT * FROM ks.t`` returns now, canonical (``cassandra_values``' docstring)."""
    query = f"SELECT * FROM {quote(table.keyspace)}.{quote(table.name)}"
    result = session.execute(query)
    # Rows are tuples whatever the session's row factory; the driver's named tuples mangle quoted names.
    names = result.column_names
    columns = table.partition_key + table.clustering + table.statics + table.regulars
    rows = []
    for row in result:
        values = dict(zip(names, row.values() if isinstance(row, Mapping) else row))
        rows.append({column.name: driver_value(column.type, values.get(column.name)) for column in columns})
    return canonical_rows(table, rows)


def driver_value(cql: CqlType, value: Any) -> Any:
    """One value as cassandra-driver returns it, in a form ``canonical_value`` accepts."""
    if value is None:
        return None
    if isinstance(value, Date):
        return value.days_from_epoch
    if isinstance(value, Time):
        return value.nanosecond_time
    if isinstance(value, Duration):
        return (value.months, value.days, value.nanoseconds)
    kind = cql.kind
    if kind == "timestamp":
        return timestamp_ms(value)
    if kind in ("list", "set", "vector"):
        return [driver_value(cql.args[0], element) for element in value]
    if kind == "map":
        key_type, value_type = cql.args
        pairs = value.items() if isinstance(value, Mapping) else value
        return [(driver_value(key_type, k), driver_value(value_type, v)) for k, v in pairs]
    if kind in ("tuple", "udt"):
        return [driver_value(arg, item) for arg, item in zip(cql.args, value)]
    return value
