"""The ClickHouse destination as a Dagster resource (a server over HTTP, or the in-process chdb engine)."""

from __future__ import annotations

import dagster as dg

from cdc_assets.dead_letters import open_dead_letters
from cdc_assets.defs.resources import dsn_from_environment
from cdc_assets.destinations.clickhouse.destination import ClickHouseDestination


class ClickHouseResource(dg.ConfigurableResource):
    """A ClickHouse server (``http(s)://``) or the in-process engine (``chdb://path``), DSN in ``dsn_env``."""

    dsn_env: str
    database_prefix: str = ""
    dead_letters: str

    def open(self) -> ClickHouseDestination:
        return ClickHouseDestination(
            dsn_from_environment(self.dsn_env, "clickhouse"),
            self.database_prefix,
            dead_letters=open_dead_letters(self.dead_letters),
        )
