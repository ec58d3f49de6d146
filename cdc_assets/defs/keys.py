"""Asset keys, run tags and metadata keys: one name per idea, used by the assets, the sensors and the tests."""

import dagster as dg

#: A live run reads one node's stream; its tag names the node (and serializes the node's runs).
NODE_TAG = "cdc/node"
#: The committed position a live run was requested from (``start`` before the first commit).
FROM_TAG = "cdc/from"
#: Runs that write the in-process ClickHouse engine (chdb hosts one engine per process: one at a time).
CHDB_TAG = "cdc/chdb"

#: Stream asset metadata: the committed read position of a node's stream and how far it scanned.
POSITION = "cdc/position"
FRONTIER = "cdc/frontier"
#: Destination asset metadata: per node, the position up to which every staged range is loaded.
CONSUMED = "cdc/consumed"

CASSANDRA = "cassandra"


def stream_key(node: str) -> dg.AssetKey:
    """The node's CDC stream: what has been read from its cdc_raw, and the committed position."""
    return dg.AssetKey([CASSANDRA, "cdc_raw", node])


def staged_key(table: str) -> dg.AssetKey:
    """The staged change batches of ``keyspace.table``."""
    keyspace, name = table.split(".", 1)
    return dg.AssetKey([CASSANDRA, keyspace, name])


def snapshot_key(table: str) -> dg.AssetKey:
    """The snapshot of ``keyspace.table``: the rows it held before capture started, staged for the loads."""
    keyspace, name = table.split(".", 1)
    return dg.AssetKey([CASSANDRA, "snapshot", keyspace, name])


def destination_key(destination: str, table: str) -> dg.AssetKey:
    """``keyspace.table`` as loaded into ``destination`` (``postgres``, ``clickhouse``, ``timescaledb``)."""
    keyspace, name = table.split(".", 1)
    return dg.AssetKey([destination, keyspace, name])
