"""What every destination offers, so the Dagster layer and the tests can drive them alike."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa

from cdc_assets import change_batch as cb
from cdc_assets.cassandra_schema.tables import TableSchema
from cdc_assets.dead_letters import DeadLetterStoreError

# Driver errors may quote a connection string; its password must not reach a log line.
_SECRET_PATTERNS = (
    (re.compile(r"(?i)(password\s*[=:]\s*)('[^']*'|\"[^\"]*\"|\S+)"), r"\1***"),
    (re.compile(r"(//[^/\s:@]+:)[^@\s]+@"), r"\1***@"),
)


class DestinationError(Exception):
    """A load that did not commit. Nothing of the batch is visible in the destination."""


class TransientDestinationError(DestinationError):
    """Worth retrying: a dropped connection, a timeout, a serialization failure."""


class PermanentDestinationError(DestinationError):
    """Retrying will not help: bad credentials, a type the destination cannot take, a broken schema."""


def describe_error(error: BaseException) -> str:
    """``error``'s type and message, with passwords in connection strings replaced by ``***``."""
    text = f"{type(error).__name__}: {error}"
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


@contextmanager
def load_boundary(
    destination: str, table: TableSchema, batch: pa.RecordBatch, load_id: str, *, secrets: Sequence[str] = ()
) -> Iterator[None]:
    """Every failure of a load, as a :class:`DestinationError` naming the destination, table, load, positions
    and reason; the original error is its ``__cause__``.

    Retries and dead letters act on the class, so nothing else may escape: an error the destination already
    classified keeps its class, the dead-letter store's or the operating system's (a full disk, a lost
    socket) is transient, and any other (a value no step of the load expected) is permanent, since loading
    the same batch again fails the same way. ``secrets`` (the DSN, its password) are blanked in the reason.
    """
    try:
        yield
    except Exception as error:
        if isinstance(error, DestinationError):
            kind: type[DestinationError] = type(error)
        elif isinstance(error, DeadLetterStoreError | OSError):
            kind = TransientDestinationError
        else:
            kind = PermanentDestinationError
        reason = describe_error(error)
        for secret in secrets:
            if secret:
                reason = reason.replace(secret, "***")
        where = _positions_text(batch)
        raise kind(f"{destination}: load {load_id} of {table.qualified_name} ({where}) failed: {reason}") from error


def _positions_text(batch: pa.RecordBatch) -> str:
    """The first and last source position of a batch's changes, as ``segment:position``."""
    if batch.num_rows == 0:
        return "no changes"
    try:
        pairs = list(zip(batch.column(cb.SEGMENT_ID).to_pylist(), batch.column(cb.POSITION).to_pylist(), strict=True))
        first, last = min(pairs), max(pairs)
    except (KeyError, TypeError) as error:
        return f"positions unknown: {error}"
    return f"positions {first[0]}:{first[1]} to {last[0]}:{last[1]}"


@dataclass(frozen=True)
class LoadResult:
    """What one committed load covered: the batch's rows and its source position range."""

    destination: str
    table: str
    rows: int
    first_position: cb.Position | None
    last_position: cb.Position | None
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

    def ledger_position(self, tables: Sequence[TableSchema], load_id_prefix: str) -> cb.Position | None:
        """The furthest source position among committed loads whose id starts with ``load_id_prefix``."""

    def close(self) -> None:
        """Release connections; the destination reconnects on next use."""

    def current_state(self, table: TableSchema, *, now: Any = None) -> list[dict[str, Any]]:
        """The rows ``SELECT * FROM ks.table`` would return, in the canonical form of ``cassandra_values.py``."""
