"""What every destination offers, so the Dagster layer and the tests can drive them alike."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa

from cdc_assets.cassandra_schema.tables import TableSchema


class DestinationError(Exception):
    """A load that did not commit. Nothing of the batch is visible in the destination."""


class TransientDestinationError(DestinationError):
    """Worth retrying: a dropped connection, a timeout, a serialization failure."""


class PermanentDestinationError(DestinationError):
    """Retrying will not help: bad credentials, a type the destination cannot take, a broken schema."""


@dataclass(frozen=True)
class LoadResult:
    """What one committed load covered: the batch's rows and its source position range."""

    destination: str
    table: str
    rows: int
    first_position: tuple[int, int] | None
    last_position: tuple[int, int] | None
    seconds: float


class Destination(Protocol):
    """A warehouse whose current state converges to Cassandra's (DESIGN.md section 2)."""

    name: str

    def ensure_table(self, table: TableSchema) -> None:
        """Create the table's storage, or evolve it to ``table``'s columns; safe to call every batch."""

    def load(self, table: TableSchema, batch: pa.RecordBatch, *, load_id: str) -> LoadResult:
        """Merge one change batch in one transaction, recording ``load_id`` and the positions it covers.

        Loading the same batch again, or batches in any order, leaves the same current state.
        """

    def ledger_position(self, tables: Sequence[TableSchema], load_id_prefix: str) -> tuple[int, int] | None:
        """The furthest source position among committed loads whose id starts with ``load_id_prefix``."""

    def close(self) -> None:
        """Release connections; the destination reconnects on next use."""

    def current_state(self, table: TableSchema, *, now: Any = None) -> list[dict[str, Any]]:
        """The rows ``SELECT * FROM ks.table`` would return, in the canonical form of ``model.py``."""
