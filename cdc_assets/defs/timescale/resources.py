"""The TimescaleDB destination as a Dagster resource."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from cdc_assets.dead_letters import open_dead_letters
from cdc_assets.defs.resources import dsn_from_environment
from cdc_assets.destinations.timescale.destination import TimescaleDestination


class TimescaleResource(dg.ConfigurableResource):
    """A PostgreSQL server with timescaledb (or, when allowed, without it), DSN in ``dsn_env``."""

    dsn_env: str
    schema_prefix: str = ""
    allow_plain_postgres: bool = False
    chunk_interval_hours: float = 24
    compress_after_days: float | None = 7
    retention_days: float | None = None
    piece_changes: int = 32_768
    # Vacuum the current state after each load: a count reads an index at once, not once autovacuum has been.
    vacuum_after_load: bool = True
    dead_letters: str

    def open(self) -> TimescaleDestination:
        return TimescaleDestination(
            dsn_from_environment(self.dsn_env, "timescaledb"),
            self.schema_prefix,
            chunk_interval=timedelta(hours=self.chunk_interval_hours),
            compress_after=None if self.compress_after_days is None else timedelta(days=self.compress_after_days),
            retention=None if self.retention_days is None else timedelta(days=self.retention_days),
            allow_plain_postgres=self.allow_plain_postgres,
            dead_letters=open_dead_letters(self.dead_letters),
            piece_changes=self.piece_changes,
            vacuum_after_load=self.vacuum_after_load,
        )
