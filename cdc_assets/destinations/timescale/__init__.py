"""The TimescaleDB destination: PostgreSQL's merged current state (composed through its ``LoadHook``, nothing
of it overridden) plus the change-history hypertable (``destination``)."""

from cdc_assets.destinations.timescale.destination import TimescaleDestination

__all__ = ["TimescaleDestination"]
