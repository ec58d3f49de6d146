"""Committed positions, read from Dagster's own storage (DESIGN.md section 6): the event log is the ledger.

Two kinds of position, both kept in materialization metadata, which a step writes only once its work is
committed:

- a node's **stream** position: how far its cdc_raw has been read and staged (the stream asset's
  ``cdc/position``, and ``cdc/frontier``, how far the durable log was scanned);
- a destination's **consumed** position per node, per table: every staged range before it is loaded
  (``cdc/consumed`` on the destination asset). Backfills never write it.

When Dagster's history is gone (an asset wipe, a new instance), the stream position is recovered from the
destinations' own load ledgers, never guessed: re-reading a little is safe (merges converge), skipping is not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dagster as dg

from cdc_assets.commitlog.reader import Position
from cdc_assets.defs.keys import CONSUMED, FRONTIER, POSITION, destination_key, stream_key
from cdc_assets.staging import parse_position_text, position_text

# How far back to look for the last live materialization of a destination asset past backfill ones.
_LOOKBACK = 200


@dataclass(frozen=True)
class Committed:
    """A committed place in a node's stream: resume after ``position``; ``frontier`` was scanned."""

    position: Position | None
    frontier: Position | None

    def to_json(self) -> dict[str, str | None]:
        return {"position": position_text(self.position), "frontier": position_text(self.frontier)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Committed:
        return cls(parse_position_text(data.get("position")), parse_position_text(data.get("frontier")))


def _metadata_value(event: dg.EventLogEntry | None, key: str) -> Any:
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get(key)
    return None if value is None else value.value


def committed_stream(instance: dg.DagsterInstance, node: str) -> Committed | None:
    """The node's committed stream position, or None when Dagster holds no record of it."""
    event = instance.get_latest_materialization_event(stream_key(node))
    position = _metadata_value(event, POSITION)
    if event is None or (_metadata_value(event, FRONTIER) is None and position is None):
        return None
    return Committed(parse_position_text(position), parse_position_text(_metadata_value(event, FRONTIER)))


def consumed(instance: dg.DagsterInstance, destination: str, table: str) -> dict[str, Committed] | None:
    """Per node, how far ``destination`` has loaded ``table``'s staged ranges; None when nothing is recorded."""
    result = instance.fetch_materializations(destination_key(destination, table), limit=_LOOKBACK)
    for record in result.records:
        value = _metadata_value(record.event_log_entry, CONSUMED)
        if value is not None:
            return {node: Committed.from_json(data) for node, data in value.items()}
    return None
