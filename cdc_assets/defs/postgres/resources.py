"""The PostgreSQL destination as a Dagster resource."""

from __future__ import annotations

import dagster as dg

from cdc_assets.dead_letters import open_dead_letters
from cdc_assets.defs.resources import dsn_from_environment
from cdc_assets.destinations.postgres.destination import PostgresDestination


class PostgresResource(dg.ConfigurableResource):
    """A PostgreSQL server whose DSN is in the environment variable ``dsn_env``."""

    dsn_env: str
    schema_prefix: str = ""
    piece_changes: int = 32_768
    dead_letters: str
    # Vacuum the current state after each load: a count reads an index at once, not once autovacuum has been.
    vacuum_after_load: bool = True

    def open(self) -> PostgresDestination:
        return PostgresDestination(
            dsn_from_environment(self.dsn_env, "postgres"),
            self.schema_prefix,
            dead_letters=open_dead_letters(self.dead_letters),
            piece_changes=self.piece_changes,
            vacuum_after_load=self.vacuum_after_load,
        )
