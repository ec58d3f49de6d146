"""The PostgreSQL destination, a room of its own: ``destination`` (layout, load and the current-state view's
SQL), ``staging`` (a change batch as staged rows), ``elements`` and ``counters`` (collections and counters as
stored), ``types`` (CQL types as PostgreSQL's), ``binary`` (the binary COPY encoder), ``keys`` (key bytes)."""

from cdc_assets.destinations.postgres.destination import PostgresDestination

__all__ = ["PostgresDestination"]
