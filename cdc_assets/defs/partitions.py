"""The one hourly partitioning every asset, check and sensor shares (DESIGN.md section 6).

Partitions are windows of *ingestion* time, in UTC: a live run adds what it read to the hour it ran in,
so a data engineer can rebuild "yesterday 14:00-16:00" in one destination from what was staged then.
``end_offset=1`` makes the open hour a partition, so the runs of this hour have somewhere to go.
"""

from datetime import UTC, datetime

import dagster as dg

START = "2026-01-01-00:00"

hourly = dg.HourlyPartitionsDefinition(start_date=START, timezone="UTC", end_offset=1)


def current_partition(now: datetime | None = None) -> str:
    """The partition key of the hour ``now`` (default: the present) falls in."""
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%d-%H:00")
