"""Loading staged change batches into a destination: one partitioned asset per captured table per destination.

A **live** run (tagged with its node by the sensor) loads every staged range of that node the destination
has not consumed yet, in log order: normally just the range the same run staged, after an outage everything
it missed. Each load is recorded in the destination's own ledger under the range's load id (a replay is
skipped), and the new consumed position in the asset's metadata. A destination that fails permanently stops
at that range, with an error naming the table, load id and positions, while the other destinations, separate
steps, go on; a transient failure is retried with backoff, first here and then by the step's retry policy.

A **backfill** (any run without a node tag: the Materialize dialog, ``dagster asset backfill``, GraphQL
``launchPartitionBackfill``) loads every staged range of the windows it was given, from every node, under
load ids of its own, so it rebuilds what a destination lost; it never moves a consumed position.

A **snapshot** run (the job ``cassandra_snapshot``, tagged with the pseudo-node ``_snapshot``) is a live run of
that pseudo-node: it loads the snapshot batches staged since the last one it loaded (``defs/cassandra/snapshot.py``).
"""

import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from cdc_assets.cassandra_schema.tables import TableSchema
from cdc_assets.config import PipelineConfig
from cdc_assets.defs.cassandra.assets import kinds_markdown
from cdc_assets.defs.keys import CONSUMED, NODE_TAG, destination_key, snapshot_key, staged_key
from cdc_assets.defs.ledger import Committed, consumed
from cdc_assets.defs.partitions import hourly
from cdc_assets.destinations.base import Destination, LoadResult, PermanentDestinationError
from cdc_assets.retry import describe_error, retry
from cdc_assets.snapshot import SNAPSHOT_NODE
from cdc_assets.staging import StagedRange, list_ranges, position_text

BACKFILL_SUFFIX = "#backfill-"
_MAX_LISTED = 20


@dataclass
class TableLoad:
    """What one step loaded of one table, for the asset's metadata."""

    table: str
    #: Each range loaded, with the load id the destination's ledger holds it under.
    ranges: list[tuple[StagedRange, str]] = field(default_factory=list)
    consumed: Committed | None = None
    error: Exception | None = None
    failed_load_id: str | None = None
    dead_letters: int = 0
    seconds: float = 0.0

    @property
    def changes(self) -> int:
        return sum(staged.tables[self.table].changes for staged, _ in self.ranges if self.table in staged.tables)

    def kinds(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for staged, _ in self.ranges:
            if self.table in staged.tables:
                total.update(staged.tables[self.table].kinds)
        return total


def load_ranges(
    destination: Destination,
    table: str,
    ranges: Sequence[StagedRange],
    *,
    load_id: Callable[[StagedRange], str],
    attempts: int = 3,
    log: Any = None,
) -> TableLoad:
    """Load ``table``'s batch of each range in order, stopping at the first range that fails for good."""
    outcome = TableLoad(table)
    started = time.perf_counter()
    store = getattr(destination, "dead_letters", None)
    letters_before = store.appended if store is not None else 0
    for staged in ranges:
        staged_table = staged.tables.get(table)
        if staged_table is not None:
            batch = staged.batch(table)
            schema: TableSchema = staged_table.schema
            identifier = load_id(staged)

            def attempt(schema: TableSchema = schema, batch: Any = batch, identifier: str = identifier) -> LoadResult:
                destination.ensure_table(schema)
                return destination.load(schema, batch, load_id=identifier)

            try:
                result = retry(attempt, attempts=attempts, base_delay=0.5, max_delay=5.0, what=f"load {identifier}")
            except Exception as error:
                outcome.error = error
                outcome.failed_load_id = identifier
                break
            outcome.ranges.append((staged, identifier))
            if log is not None:
                log.info(
                    f"{destination.name}: loaded {identifier} ({staged_table.changes:,} changes) "
                    f"in {result.seconds:.2f} s"
                )
        outcome.consumed = Committed(staged.position, staged.frontier)
    outcome.seconds = time.perf_counter() - started
    outcome.dead_letters = (store.appended if store is not None else 0) - letters_before
    return outcome


def load_metadata(outcome: TableLoad, loaded_at: float, *, lag: bool = True) -> dict[str, Any]:
    """Changes by kind, source positions, bytes, lag from write time to load, duration, dead letters.

    ``lag`` is left out of a snapshot's load: its write times are the age of the data, not of the stream.
    """
    kinds = outcome.kinds()
    sizes = sum(s.tables[outcome.table].bytes for s, _ in outcome.ranges if outcome.table in s.tables)
    metadata: dict[str, Any] = {
        "changes": dg.MetadataValue.int(outcome.changes),
        "changes by kind": dg.MetadataValue.md(kinds_markdown([(outcome.table, kinds, sizes)])),
        "bytes": dg.MetadataValue.int(sizes),
        "ranges loaded": dg.MetadataValue.int(len(outcome.ranges)),
        "load ids": dg.MetadataValue.json([identifier for _, identifier in outcome.ranges]),
        "dead letters": dg.MetadataValue.int(outcome.dead_letters),
        "duration (s)": dg.MetadataValue.float(round(outcome.seconds, 3)),
    }
    tables = [s.tables[outcome.table] for s, _ in outcome.ranges if outcome.table in s.tables]
    firsts = [t.first for t in tables if t.first is not None]
    lasts = [t.last for t in tables if t.last is not None]
    if firsts:
        metadata["first position"] = str(min(firsts))
        metadata["last position"] = str(max(lasts))
    newest = [t.newest_write_us for t in tables if t.newest_write_us is not None]
    oldest = [t.oldest_write_us for t in tables if t.oldest_write_us is not None]
    if newest and lag:
        metadata["lag, newest change (s)"] = dg.MetadataValue.float(round(loaded_at - max(newest) / 1e6, 3))
        metadata["lag, oldest change (s)"] = dg.MetadataValue.float(round(loaded_at - min(oldest) / 1e6, 3))
    if outcome.ranges:
        rows = ["| load id | window | range | changes |", "|---|---|---|---|"]
        for staged, identifier in outcome.ranges[-_MAX_LISTED:]:
            count = staged.tables[outcome.table].changes if outcome.table in staged.tables else 0
            span = f"{position_text(staged.after) or 'start'} → {position_text(staged.position) or 'start'}"
            rows.append(f"| `{identifier}` | {staged.partition} | {span} | {count:,} |")
        if len(outcome.ranges) > _MAX_LISTED:
            rows.append(f"| … and {len(outcome.ranges) - _MAX_LISTED} earlier | | | |")
        metadata["staged ranges"] = dg.MetadataValue.md("\n".join(rows))
    return metadata


def _failure(destination: str, outcome: TableLoad) -> str:
    assert outcome.error is not None
    return f"{destination}: load {outcome.failed_load_id} of {outcome.table} failed: {describe_error(outcome.error)}"


def destination_assets(
    config: PipelineConfig, tables: Mapping[str, TableSchema], destination: str, *, snapshots: bool = False
) -> dg.AssetsDefinition:
    """One asset per captured table in ``destination``, fed by the table's staged asset (and its snapshot asset,
    when the pipeline has ``snapshots``)."""
    specs = [
        dg.AssetSpec(
            destination_key(destination, name),
            deps=[staged_key(name), *([snapshot_key(name)] if snapshots else [])],
            group_name=destination,
            kinds={destination},
            partitions_def=hourly,
            description=f"Cassandra table {name} in {destination}: its current state reads like `SELECT *`.",
        )
        for name in tables
    ]
    retries = config.retries

    @dg.multi_asset(
        name=f"load_{destination}",
        specs=specs,
        can_subset=True,
        partitions_def=hourly,
        backfill_policy=dg.BackfillPolicy.single_run(),
        retry_policy=dg.RetryPolicy(
            max_retries=retries.max_retries,
            delay=retries.delay_seconds,
            backoff=dg.Backoff.EXPONENTIAL,
            jitter=dg.Jitter.PLUS_MINUS,
        ),
        pool=f"cdc_{destination}",
        required_resource_keys={destination},
    )
    def load(context: dg.AssetExecutionContext) -> Iterator[dg.MaterializeResult]:
        selected = [name for name in tables if destination_key(destination, name) in context.selected_asset_keys]
        target = getattr(context.resources, destination).open()
        try:
            node = context.run.tags.get(NODE_TAG)
            if node is not None:
                outcomes = yield from _live(context, config, target, destination, selected, node)
            else:
                outcomes = yield from _backfill(context, config, target, destination, selected)
        finally:
            target.close()
        failed = [o for o in outcomes if o.error is not None]
        if failed:
            permanent = any(isinstance(o.error, PermanentDestinationError) for o in failed)
            raise dg.Failure(
                description="; ".join(_failure(destination, o) for o in failed),
                allow_retries=not permanent,
            )

    return load


def _live(
    context: dg.AssetExecutionContext,
    config: PipelineConfig,
    target: Destination,
    destination: str,
    selected: Sequence[str],
    node: str,
) -> Iterator[dg.MaterializeResult]:
    outcomes = []
    for name in selected:
        previous = consumed(context.instance, destination, name) or {}
        since = previous.get(node)
        pending = list_ranges(config.staging.path, nodes=[node], since=since.position if since else None)
        outcome = load_ranges(target, name, pending, load_id=lambda r, n=name: r.load_id(n), log=context.log)
        outcomes.append(outcome)
        if outcome.error is not None:
            context.log.error(_failure(destination, outcome))
        positions = dict(previous)
        if outcome.consumed is not None:
            positions[node] = outcome.consumed
        if outcome.ranges or outcome.consumed is not None or outcome.error is None:
            metadata = load_metadata(outcome, time.time(), lag=node != SNAPSHOT_NODE)
            metadata[CONSUMED] = dg.MetadataValue.json({n: c.to_json() for n, c in positions.items()})
            metadata["node"] = node
            yield dg.MaterializeResult(asset_key=destination_key(destination, name), metadata=metadata)
    return outcomes


def _backfill(
    context: dg.AssetExecutionContext,
    config: PipelineConfig,
    target: Destination,
    destination: str,
    selected: Sequence[str],
) -> Iterator[dg.MaterializeResult]:
    windows = list(context.partition_keys)
    ranges = list_ranges(config.staging.path, partitions=windows)
    context.log.info(
        f"{destination}: rebuilding {len(windows)} window(s) {windows[0]} … {windows[-1]} from {len(ranges)} "
        f"staged range(s) of {len({r.node for r in ranges})} node(s)"
    )
    suffix = f"{BACKFILL_SUFFIX}{context.run.run_id[:8]}"
    outcomes = []
    for name in selected:
        outcome = load_ranges(target, name, ranges, load_id=lambda r, n=name: r.load_id(n) + suffix, log=context.log)
        outcomes.append(outcome)
        if outcome.error is None:
            metadata = load_metadata(outcome, time.time())
            metadata["windows"] = f"{windows[0]} … {windows[-1]} ({len(windows)})"
            yield dg.MaterializeResult(asset_key=destination_key(destination, name), metadata=metadata)
        else:
            context.log.error(_failure(destination, outcome))
    return outcomes
