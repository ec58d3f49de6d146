"""The ClickHouse destination, a room of its own: ``destination`` (history and merged-state layout, load and the
current-state view's SQL) and ``types`` (CQL types as ClickHouse's, quoting, order and reconciliation keys)."""

from cdc_assets.destinations.clickhouse.destination import ClickHouseDestination

__all__ = ["ClickHouseDestination"]
