"""Reconciliation of one window: for every partition key the window's changes touched, do the destinations hold
what Cassandra would return? No Dagster and no connections here: the rows come in, a verdict per destination out.

Two questions per touched key, every side read at one fixed ``now`` (TTLs expire alike):

- **Do the destinations agree?** Each destination's rows of the key are summarized as a count and a digest
  (SHA-256 of the rows' serialized CQL values, in primary key order: :func:`key_states`; values the canonical
  form counts as equal digest alike). A destination whose digest differs from the one most destinations share
  is named.
- **Does each agree with the replay?** The staged change batches of the table, merged by the reference
  semantics (:class:`~cdc_assets.cassandra_model.CassandraModel`: every staged range, in any order, since
  merges commute), restricted to the touched keys (:class:`Replay`).

The replay is exact while the staged history is whole: every node's ranges run from the start of its stream
without a gap (:func:`history_is_whole`); a snapshot's batches (the pseudo-node ``_snapshot``) each stand alone.
Once ranges older than the retention are pruned, the replay knows only the cells written since; a destination
is then held to *contain* it (every replayed row present, every replayed value equal), and the agreement between
destinations carries the rest.

Keys touched by changes that some destination has not loaded yet are *in flight*: they are counted and left out,
so that a check running beside the live flow does not report a load that is merely still to come.

Disagreements name the key and the columns that differ, never the values: the check's metadata is read by more
people than the warehouses are.
"""

from __future__ import annotations

import hashlib
import struct
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from cdc_assets.cassandra_model import CassandraModel
from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.cassandra_schema.types import CqlType
from cdc_assets.destinations.cassandra_values import (
    canonical_value,
    field_names,
    key_component,
    python_values,
    row_sort_key,
    value_bytes,
)
from cdc_assets.snapshot import SNAPSHOT_NODE
from cdc_assets.staging import StagedRange, position_key

#: How many disagreeing keys a verdict lists.
MAX_LISTED = 20


def partition_bytes(table: TableSchema, values: Sequence[Any]) -> bytes:
    """A partition key (canonical values, key order) as bytes: equal exactly when the keys are."""
    return b"".join(key_component(c.type, v, False) for c, v in zip(table.partition_key, values, strict=True))


def touched_keys(table: TableSchema, batches: Iterable[pa.RecordBatch]) -> dict[bytes, tuple[Any, ...]]:
    """The partition keys the changes of ``batches`` touched, as bytes → canonical key values."""
    keys: dict[bytes, tuple[Any, ...]] = {}
    for batch in batches:
        columns = [
            [canonical_value(c.type, v) for v in python_values(batch.column(c.name))] for c in table.partition_key
        ]
        for values in zip(*columns, strict=True):
            keys.setdefault(partition_bytes(table, values), values)
    return keys


def history_is_whole(ranges: Iterable[StagedRange]) -> bool:
    """Whether every node's staged ranges run from the start of its stream without a gap (overlaps are fine).

    Snapshot batches follow no stream: whichever of them are staged are replayed whole.
    """
    by_node: dict[str, list[StagedRange]] = defaultdict(list)
    for staged in ranges:
        if staged.node != SNAPSHOT_NODE:
            by_node[staged.node].append(staged)
    for node_ranges in by_node.values():
        node_ranges.sort(key=lambda r: position_key(r.after))
        if node_ranges[0].after is not None:
            return False
        reached = position_key(node_ranges[0].position)
        for staged in node_ranges[1:]:
            if position_key(staged.after) > reached:
                return False
            reached = max(reached, position_key(staged.position))
    return True


class Replay:
    """The reference state of the touched keys, from staged change batches merged in any order."""

    def __init__(self, table: TableSchema, keys: Mapping[bytes, tuple[Any, ...]], window: Sequence[pa.RecordBatch]):
        self.table = table
        self.keys = keys
        self.changes = 0
        self._model = CassandraModel(table)
        # Each key column's values in the window: a batch is cut down to them before the (per-change, Python)
        # merge. Matching column by column keeps a superset of the keys, which `state` then narrows exactly.
        self._values = {c.name: _unique(window, c.name) for c in table.partition_key}

    def add(self, batch: pa.RecordBatch) -> None:
        """Merge the changes of ``batch`` that may touch a key of the window."""
        mask = None
        for name, values in self._values.items():
            if values is None:
                continue
            try:
                hit = pc.is_in(batch.column(name), value_set=values)
            except (pa.ArrowNotImplementedError, pa.ArrowTypeError, pa.ArrowInvalid):
                continue
            mask = hit if mask is None else pc.and_(mask, hit)
        kept = batch if mask is None else batch.filter(mask)
        if kept.num_rows:
            self._model.apply(kept)
            self.changes += kept.num_rows

    def state(self, now: datetime) -> list[dict[str, Any]]:
        """The rows of the touched keys ``SELECT *`` returns at ``now``, canonical form, in primary key order."""
        return [row for row in self._model.current_state(now) if row_sort_key(self.table, row)[0] in self.keys]


def _unique(batches: Sequence[pa.RecordBatch], name: str) -> pa.Array | None:
    try:
        return pa.concat_arrays([batch.column(name) for batch in batches]).unique()
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError, pa.ArrowInvalid):
        return None


# --------------------------------------------------------------------------------------------------
# Digests


@dataclass(frozen=True)
class KeyState:
    """One partition's rows in one place, and their digest."""

    rows: list[dict[str, Any]]
    digest: str


def _columns(table: TableSchema) -> tuple[Column, ...]:
    return table.partition_key + table.clustering + table.statics + table.regulars


def _cell(column: Column, value: Any) -> bytes:
    """A canonical value as the digest reads it: its serialized CQL bytes, framed, or a mark for null."""
    if value is None:
        return b"\x00"
    data = value_bytes(column.type, _by_value(column.type, value))
    return b"\x01" + struct.pack(">I", len(data)) + data


def _by_value(cql: CqlType, value: Any) -> Any:
    """``value`` with the forms the canonical form counts as equal made one, so the digest agrees with ``==``:
    decimals by value (PostgreSQL's numeric has no negative scale: ``1E+2`` reads back as ``100``), and zeros
    of either sign."""
    if value is None:
        return None
    kind = cql.kind
    if kind == "decimal":
        return Decimal(0) if value == 0 else value.normalize()
    if kind in ("float", "double"):
        return 0.0 if value == 0 else value
    if kind in ("list", "set", "vector"):
        return [_by_value(cql.args[0], item) for item in value]
    if kind == "map":
        key_type, item_type = cql.args
        return [(_by_value(key_type, k), _by_value(item_type, v)) for k, v in value]
    if kind in ("tuple", "udt"):
        return {name: _by_value(arg, value.get(name)) for name, arg in zip(field_names(cql), cql.args, strict=True)}
    return value


def _digest(table: TableSchema, rows: Sequence[Mapping[str, Any]]) -> str:
    hasher = hashlib.sha256()
    for row in rows:
        hasher.update(b"\x1e")
        for column in _columns(table):
            hasher.update(_cell(column, row.get(column.name)))
    return hasher.hexdigest()


def key_states(table: TableSchema, rows: Iterable[Mapping[str, Any]]) -> dict[bytes, KeyState]:
    """Canonical rows grouped by partition key, each group with its digest (rows in primary key order)."""
    grouped: dict[bytes, list[tuple[bytes, dict[str, Any]]]] = defaultdict(list)
    for row in rows:
        partition, clustering = row_sort_key(table, row)
        grouped[partition].append((clustering, dict(row)))
    states = {}
    for key, members in grouped.items():
        ordered = [row for _, row in sorted(members, key=lambda member: member[0])]
        states[key] = KeyState(ordered, _digest(table, ordered))
    return states


# --------------------------------------------------------------------------------------------------
# Verdicts


@dataclass(frozen=True)
class Disagreement:
    """One key on which a destination is wrong, and how."""

    key: str
    rows: int
    replay_rows: int
    digest: str
    replay_digest: str
    reason: str


@dataclass(frozen=True)
class Verdict:
    """What one destination holds of the compared keys, and where it is wrong."""

    destination: str
    compared: int
    rows: int
    #: One digest over every compared key: equal across destinations exactly when they agree on all of them.
    digest: str
    disagreements: list[Disagreement] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.disagreements


@dataclass(frozen=True)
class Reconciliation:
    """The window's touched keys, compared in every destination against each other and the replay."""

    table: str
    touched: int
    #: Touched keys left out: changes to them are still being loaded somewhere.
    in_flight: int
    #: Whether the replay holds the whole staged history (exact), or only what the retention kept (contained).
    exact: bool
    replay_rows: int
    replay_digest: str
    verdicts: dict[str, Verdict]

    @property
    def compared(self) -> int:
        return self.touched - self.in_flight


def reconcile(
    table: TableSchema,
    keys: Mapping[bytes, tuple[Any, ...]],
    replayed: Iterable[Mapping[str, Any]],
    states: Mapping[str, Iterable[Mapping[str, Any]]],
    *,
    in_flight: Collection[bytes] = (),
    exact: bool = True,
) -> Reconciliation:
    """Compare each destination's rows of ``keys`` (``states``: destination → canonical rows) with the others'
    and with the replay's; ``in_flight`` keys are left out."""
    compared = sorted(key for key in keys if key not in in_flight)
    empty = KeyState([], _digest(table, []))
    reference = key_states(table, replayed)
    held = {name: key_states(table, rows) for name, rows in states.items()}
    found: dict[str, list[Disagreement]] = {name: [] for name in states}
    for key in compared:
        replay = reference.get(key, empty)
        digests = {name: held[name].get(key, empty).digest for name in states}
        common, count = Counter(digests.values()).most_common(1)[0] if digests else (None, 0)
        majority = common if count * 2 > len(digests) else None
        for name in states:
            mine = held[name].get(key, empty)
            reasons = []
            if exact and mine.digest != replay.digest:
                reasons.append(_difference(table, mine.rows, replay.rows))
            elif not exact and (problem := _uncontained(table, mine.rows, replay.rows)):
                reasons.append(problem)
            if majority is not None and mine.digest != majority:
                agreeing = [other for other, digest in digests.items() if digest == majority]
                reasons.append(f"differs from {', '.join(agreeing)}")
            elif majority is None and not exact and len(set(digests.values())) > 1:
                reasons.append(f"the destinations disagree ({', '.join(sorted(digests))})")
            if reasons:
                found[name].append(
                    Disagreement(
                        key=key_text(table, keys[key]),
                        rows=len(mine.rows),
                        replay_rows=len(replay.rows),
                        digest=mine.digest[:12],
                        replay_digest=replay.digest[:12],
                        reason="; ".join(reasons),
                    )
                )
    verdicts = {
        name: Verdict(
            destination=name,
            compared=len(compared),
            rows=sum(len(held[name].get(key, empty).rows) for key in compared),
            digest=_window_digest(compared, held[name], empty),
            disagreements=found[name],
        )
        for name in states
    }
    return Reconciliation(
        table=table.qualified_name,
        touched=len(keys),
        in_flight=len(keys) - len(compared),
        exact=exact,
        replay_rows=sum(len(reference.get(key, empty).rows) for key in compared),
        replay_digest=_window_digest(compared, reference, empty),
        verdicts=verdicts,
    )


def _window_digest(keys: Sequence[bytes], states: Mapping[bytes, KeyState], empty: KeyState) -> str:
    hasher = hashlib.sha256()
    for key in keys:
        hasher.update(key + bytes.fromhex(states.get(key, empty).digest))
    return hasher.hexdigest()[:12]


def _difference(table: TableSchema, mine: Sequence[Mapping[str, Any]], replay: Sequence[Mapping[str, Any]]) -> str:
    if not mine:
        return f"missing: the replay has {len(replay)} row(s)"
    if not replay:
        return f"{len(mine)} row(s) the replay does not have"
    if len(mine) != len(replay):
        return f"{len(mine)} row(s), the replay {len(replay)}"
    differing = _differing_columns(table, mine, replay)
    return f"values differ from the replay in {', '.join(differing)}" if differing else "differs from the replay"


def _differing_columns(
    table: TableSchema, mine: Sequence[Mapping[str, Any]], replay: Sequence[Mapping[str, Any]]
) -> list[str]:
    return [
        column.name
        for column in _columns(table)
        if any(
            _cell(column, a.get(column.name)) != _cell(column, b.get(column.name))
            for a, b in zip(mine, replay, strict=False)
        )
    ]


def _uncontained(table: TableSchema, mine: Sequence[Mapping[str, Any]], replay: Sequence[Mapping[str, Any]]) -> str:
    """Why ``mine`` does not contain what the (partial) replay knows, or "" when it does."""
    rows = {row_sort_key(table, row): row for row in mine}
    missing = 0
    differing: set[str] = set()
    for expected in replay:
        row = rows.get(row_sort_key(table, expected))
        if row is None:
            missing += 1
            continue
        differing.update(
            c.name for c in _columns(table) if expected.get(c.name) is not None and row.get(c.name) != expected[c.name]
        )
    reasons = []
    if missing:
        reasons.append(f"{missing} row(s) of the replay missing")
    if differing:
        reasons.append(f"values differ from the replay in {', '.join(sorted(differing))}")
    return "; ".join(reasons)


def key_text(table: TableSchema, values: Sequence[Any]) -> str:
    """A partition key as a data engineer would type it: ``region=eu, customer_id=42``."""
    parts = []
    for column, value in zip(table.partition_key, values, strict=True):
        text = value.hex() if isinstance(value, bytes) else str(value)
        parts.append(f"{column.name}={text if len(text) <= 80 else text[:77] + '…'}")
    return ", ".join(parts)
