"""What a staged change batch must satisfy before any warehouse loads it: fast Arrow checks, no Dagster.

Each check returns a :class:`Finding`: passed or not, a one-line description, and up to
``MAX_LISTED`` details (positions, columns, reasons) for the data engineer who has to act on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from cdc_assets import change_batch as cb
from cdc_assets.cassandra_schema.tables import TableSchema
from cdc_assets.commitlog.reader import Position
from cdc_assets.dead_letters import DeadLetter

MAX_LISTED = 20

SCHEMA_MATCHES = "schema_matches"
KEYS_NOT_NULL = "keys_not_null"
POSITIONS_CONTINUE = "positions_continue"
NO_DEAD_LETTERS = "no_dead_letters"
BATCH_CHECKS = (SCHEMA_MATCHES, KEYS_NOT_NULL, POSITIONS_CONTINUE, NO_DEAD_LETTERS)


@dataclass(frozen=True)
class Finding:
    """The outcome of one check of one batch."""

    check: str
    passed: bool
    description: str
    details: list[str] = field(default_factory=list)


def _listed(items: Iterable[str]) -> list[str]:
    items = list(items)
    if len(items) > MAX_LISTED:
        return [*items[:MAX_LISTED], f"… and {len(items) - MAX_LISTED} more"]
    return items


def schema_matches(table: TableSchema, batch: pa.RecordBatch) -> Finding:
    """The batch's Arrow schema is the change-batch schema of the table's current definition."""
    expected = cb.change_batch_schema(table)
    if batch.schema.equals(expected, check_metadata=False):
        return Finding(SCHEMA_MATCHES, True, f"{len(expected)} columns as {table.qualified_name} defines them")
    have = {f.name: f.type for f in batch.schema}
    want = {f.name: f.type for f in expected}
    details = [f"missing column {name!r} ({kind})" for name, kind in want.items() if name not in have]
    details += [f"unexpected column {name!r} ({kind})" for name, kind in have.items() if name not in want]
    details += [
        f"column {name!r} is {have[name]}, expected {kind}"
        for name, kind in want.items()
        if name in have and have[name] != kind
    ]
    if not details:
        details = ["the columns are in another order"]
    return Finding(
        SCHEMA_MATCHES, False, f"the batch does not have {table.qualified_name}'s change-batch schema", _listed(details)
    )


def keys_not_null(table: TableSchema, batch: pa.RecordBatch) -> Finding:
    """Every change has its partition key; every row change has its whole clustering key."""
    problems = []
    rows = pc.equal(batch.column(cb.KIND), cb.KIND_ROW)
    for column in table.partition_key:
        problems.append((column.name, pc.is_null(batch.column(column.name))))
    for column in table.clustering:
        problems.append((column.name, pc.and_(rows, pc.is_null(batch.column(column.name)))))
    details = []
    segments = batch.column(cb.SEGMENT_ID)
    positions = batch.column(cb.POSITION)
    for name, nulls in problems:
        for index in pc.indices_nonzero(nulls).to_pylist()[:MAX_LISTED]:
            details.append(f"{name!r} is null in the change at {segments[index]}:{positions[index]}")
    if details:
        return Finding(KEYS_NOT_NULL, False, f"{len(details)} change(s) lack a key value", _listed(details))
    return Finding(KEYS_NOT_NULL, True, f"all {batch.num_rows:,} changes have their key")


def positions_continue(
    committed: Position | None, after: Position | None, position: Position | None, batch: pa.RecordBatch | None
) -> Finding:
    """The range starts exactly at the committed position (no gap, no overlap) and stays inside itself."""
    label = lambda p: "the start" if p is None else str(p)  # noqa: E731
    if after != committed:
        return Finding(
            POSITIONS_CONTINUE,
            False,
            f"the range starts after {label(after)}, but the stream is committed up to {label(committed)}",
            [("a gap: changes in between were never read" if _before(committed, after) else "an overlap")],
        )
    details = []
    if batch is not None and batch.num_rows:
        segments, offsets = batch.column(cb.SEGMENT_ID), batch.column(cb.POSITION)
        order = pc.sort_indices(
            pa.table({"s": segments, "o": offsets}), sort_keys=[("s", "ascending"), ("o", "ascending")]
        )
        low, high = order[0].as_py(), order[-1].as_py()
        first = Position(segments[low].as_py(), offsets[low].as_py())
        last = Position(segments[high].as_py(), offsets[high].as_py())
        if after is not None and first <= after:
            details.append(f"a change at {first} is at or before the range's start {after}: read twice")
        if position is None or last > position:
            details.append(f"a change at {last} is past the range's end {label(position)}")
    if details:
        return Finding(POSITIONS_CONTINUE, False, "changes lie outside the range", details)
    return Finding(POSITIONS_CONTINUE, True, f"continues the stream from {label(committed)} to {label(position)}")


def _before(left: Position | None, right: Position | None) -> bool:
    return left is None or (right is not None and left < right)


def no_dead_letters(letters: Sequence[DeadLetter], *, accepted: bool) -> Finding:
    """Changes set aside are listed (file, position, reason); they fail the batch unless accepted for the table."""
    if not letters:
        return Finding(NO_DEAD_LETTERS, True, "no change was set aside")
    details = _listed(f"{letter.segment}:{letter.position}: {letter.reason}" for letter in letters)
    verdict = "accepted by configuration (checks.accept_dead_letters)" if accepted else "not accepted"
    return Finding(NO_DEAD_LETTERS, accepted, f"{len(letters)} change(s) set aside, {verdict}", details)
