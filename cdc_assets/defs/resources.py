"""What every destination resource shares: its DSN comes from the environment, named by the configuration."""

from __future__ import annotations

import os

import dagster as dg


def dsn_from_environment(variable: str, destination: str) -> str:
    """The DSN held by ``variable``; a clear failure naming the variable (never its value) when it is unset."""
    dsn = os.environ.get(variable)
    if not dsn:
        raise dg.Failure(
            description=(
                f"{destination}: environment variable {variable} is not set; it must hold the destination's DSN "
                f"(destinations.{destination}.dsn_env in the pipeline configuration names it)"
            ),
            allow_retries=False,
        )
    return dsn
