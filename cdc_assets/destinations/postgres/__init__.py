"""The PostgreSQL destination, a room of its own: ``destination`` (the destination, composing the rest),
``layout`` (where a table lives: storage tables, generated columns, bookkeeping schema), ``merge`` (the load's
SQL), ``load`` (a load's statements as steps), ``read`` (the current-state view's SQL), ``staging`` (a change
batch as staged rows), ``elements`` and ``counters`` (collections and counters as stored), ``types`` (CQL types
as PostgreSQL's), ``binary`` (the binary COPY encoder), ``keys`` (key bytes)."""

from cdc_assets.destinations.postgres.destination import PostgresDestination

__all__ = ["PostgresDestination"]
