"""The captured tables' definitions, from the configured schema source (a CQL file or ``system_schema``)."""

from __future__ import annotations

import os
from typing import Any

from cdc_assets.cassandra_schema.cql_file import load_cql_file
from cdc_assets.cassandra_schema.tables import SchemaRegistry, TableSchema
from cdc_assets.config import ClusterSchema, ConfigError, PipelineConfig, SchemaConfig


def load_registry(schema: SchemaConfig) -> SchemaRegistry:
    """Every table the schema source defines."""
    if schema.cql_file is not None:
        return load_cql_file(schema.cql_file)
    assert schema.cluster is not None
    from cdc_assets.cassandra_schema.driver import load_from_cluster

    cluster = connect_cluster(schema.cluster)
    try:
        session = cluster.connect()
        return load_from_cluster(session, schema.cluster.keyspaces)
    finally:
        cluster.shutdown()


def connect_cluster(cluster_config: ClusterSchema) -> Any:
    """A cassandra-driver ``Cluster`` for ``cluster_config``, credentials from the environment it names."""
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import Cluster

    auth = None
    if cluster_config.username_env:
        auth = PlainTextAuthProvider(
            os.environ.get(cluster_config.username_env, ""),
            os.environ.get(cluster_config.password_env or "", ""),
        )
    return Cluster(contact_points=cluster_config.contact_points, port=cluster_config.port, auth_provider=auth)


def captured_tables(config: PipelineConfig, registry: SchemaRegistry) -> dict[str, TableSchema]:
    """The configured tables by ``keyspace.table``; a table the schema does not define is a configuration error."""
    tables = {}
    for name in config.tables:
        keyspace, table_name = name.split(".", 1)
        table = registry.by_name(keyspace, table_name)
        if table is None:
            known = ", ".join(sorted(t.qualified_name for t in registry)) or "none"
            raise ConfigError(f"tables: {name} is not defined by the schema source (it defines: {known})")
        tables[name] = table
    return tables
