"""Reading a node's cdc_raw into staged change batches: the stream asset of each node, the staged asset of each table.

One multi-asset materializes both. A live run selects exactly one node's stream asset (the sensor does):
it reads that node's durable log from the committed position on, within the micro-batch bounds, masks the
batches, stages them (``cdc_assets.staging``), and only then records the new position as the stream
asset's metadata. A run killed before that record leaves the position where it was, and the next run
reads the same range again and replaces what the killed one staged.
"""

import fcntl
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa

from cdc_assets import change_batch as cb
from cdc_assets.cassandra_schema.tables import SchemaRegistry, TableSchema
from cdc_assets.commitlog.cdc_dir import DurableRead, cdc_raw_usage, read_durable
from cdc_assets.commitlog.errors import SegmentVanishedError
from cdc_assets.commitlog.reader import CommitLogReader, Position
from cdc_assets.config import NodeConfig, PipelineConfig
from cdc_assets.dead_letters import open_dead_letters
from cdc_assets.defs.keys import CASSANDRA, FRONTIER, POSITION, staged_key, stream_key
from cdc_assets.defs.ledger import Committed, committed_stream
from cdc_assets.defs.partitions import hourly
from cdc_assets.defs.workers import WORKER_TAG, worker_tag
from cdc_assets.destinations.base import DestinationError
from cdc_assets.masking import mask_batch, masked_table
from cdc_assets.staging import StagedRange, StagedTable, position_text, stage_range
from cdc_assets.validation import (
    BATCH_CHECKS,
    KEYS_NOT_NULL,
    NO_DEAD_LETTERS,
    POSITIONS_CONTINUE,
    SCHEMA_MATCHES,
    Finding,
    keys_not_null,
    no_dead_letters,
    positions_continue,
    schema_matches,
)


@contextmanager
def node_lock(staging: Path, node: str) -> Iterator[None]:
    """Hold the node's staging lock: two runs never read and stage one node's stream at once."""
    path = staging / node / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def kinds_markdown(rows: Sequence[tuple[str, Mapping[str, int], int]]) -> str:
    """A markdown table of changes by kind: one row per (name, kinds, bytes)."""
    header = "| table | changes | " + " | ".join(cb.KINDS) + " | bytes |"
    lines = [header, "|" + "---|" * (len(cb.KINDS) + 3)]
    for name, kinds, size in rows:
        counts = " | ".join(f"{kinds.get(kind, 0):,}" for kind in cb.KINDS)
        lines.append(f"| `{name}` | {sum(kinds.values()):,} | {counts} | {size:,} |")
    return "\n".join(lines)


def _position(position: Position | None) -> str:
    return position_text(position) or "start"


def staged_table_metadata(staged: StagedRange, table: StagedTable | None) -> dict[str, Any]:
    """What a data engineer asks first about a table's share of a staged range."""
    metadata: dict[str, Any] = {
        "node": staged.node,
        "changes": dg.MetadataValue.int(table.changes if table else 0),
        "range": f"{_position(staged.after)} → {_position(staged.position)}",
    }
    if table is not None:
        metadata["changes by kind"] = dg.MetadataValue.md(kinds_markdown([(table.name, table.kinds, table.bytes)]))
        metadata["first position"] = _position(table.first)
        metadata["last position"] = _position(table.last)
        metadata["bytes"] = dg.MetadataValue.int(table.bytes)
        if table.newest_write_us is not None:
            metadata["lag to staging (s)"] = dg.MetadataValue.float(
                round(staged.staged_at - table.newest_write_us / 1e6, 3)
            )
        metadata["staged batch"] = dg.MetadataValue.path(str(staged.directory / f"{table.name}.arrow"))
    return metadata


class StreamReader:
    """Reads one node's new durable range and stages it; the Dagster-free core of the stream asset."""

    def __init__(self, config: PipelineConfig, registry: SchemaRegistry, tables: Mapping[str, TableSchema]):
        self.config = config
        self.registry = registry
        self.tables = tables

    def read(self, node: NodeConfig, after: Position | None) -> DurableRead:
        reader = CommitLogReader(self.registry.copy())
        return read_durable(
            reader,
            node.cdc_raw,
            after,
            max_changes=self.config.micro_batch.max_changes,
            max_bytes=self.config.micro_batch.max_bytes,
        )

    def mask(self, read: DurableRead) -> dict[str, tuple[TableSchema, pa.RecordBatch]]:
        """The captured tables' batches, masked: what is validated, staged and loaded."""
        return {
            name: mask_batch(read.result.tables[name], batch, self.config.masking)
            for name, batch in read.result.batches.items()
            if name in self.tables
        }

    def validate(
        self, node: NodeConfig, committed: Committed, read: DurableRead, batches: Mapping[str, tuple[TableSchema, Any]]
    ) -> dict[dg.AssetKey, list[Finding]]:
        """The blocking checks of the range (on the stream asset) and of each table's batch (on its staged asset)."""
        letters = read.result.stats.dead_letters
        accepted = set(self.config.checks.accept_dead_letters)
        continuity = positions_continue(committed.position, read.after, read.position, None)
        elsewhere = [letter for letter in letters if letter.table not in self.tables]
        findings = {stream_key(node.name): [continuity, no_dead_letters(elsewhere, accepted=False)]}
        for name, captured in self.tables.items():
            table, batch = batches.get(name, (self.masked_schema(captured), None))
            own = [letter for letter in letters if letter.table == name]
            checks = [no_dead_letters(own, accepted=name in accepted)]
            if batch is not None:
                checks += [
                    schema_matches(table, batch),
                    keys_not_null(table, batch),
                    positions_continue(committed.position, read.after, read.position, batch),
                ]
            else:
                checks += [
                    Finding(SCHEMA_MATCHES, True, "no change of this table in the range"),
                    Finding(KEYS_NOT_NULL, True, "no change of this table in the range"),
                    Finding(POSITIONS_CONTINUE, continuity.passed, continuity.description, continuity.details),
                ]
            findings[staged_key(name)] = checks
        return findings

    def masked_schema(self, table: TableSchema) -> TableSchema:
        return masked_table(table, self.config.masking.masks_for(table))

    def stage(
        self, node: NodeConfig, partition: str, read: DurableRead, batches: Mapping[str, tuple[TableSchema, Any]]
    ) -> StagedRange:
        return stage_range(
            self.config.staging.path, node.name, partition, read.after, read.position, read.frontier, batches
        )


def cassandra_assets(
    config: PipelineConfig, registry: SchemaRegistry, tables: Mapping[str, TableSchema]
) -> dg.AssetsDefinition:
    """The stream asset of every node and the staged asset of every captured table, as one multi-asset."""
    stream_specs = [
        dg.AssetSpec(
            stream_key(node.name),
            group_name=CASSANDRA,
            kinds={CASSANDRA},
            partitions_def=hourly,
            skippable=True,
            description=(
                f"What has been read from node {node.name}'s cdc_raw ({node.cdc_raw}); the latest "
                "materialization holds the stream's committed position."
            ),
        )
        for node in config.nodes
    ]
    staged_specs = [
        dg.AssetSpec(
            staged_key(name),
            group_name=CASSANDRA,
            kinds={CASSANDRA},
            partitions_def=hourly,
            deps=[spec.key for spec in stream_specs],
            skippable=True,
            description=f"Change batches of Cassandra table {name}, staged as Arrow IPC for loads and backfills.",
        )
        for name in tables
    ]
    streams = StreamReader(config, registry, tables)
    check_specs = [
        dg.AssetCheckSpec(check, asset=spec.key, blocking=True, description=CHECK_DESCRIPTIONS[check])
        for spec in stream_specs
        for check in (POSITIONS_CONTINUE, NO_DEAD_LETTERS)
    ] + [
        dg.AssetCheckSpec(check, asset=spec.key, blocking=True, description=CHECK_DESCRIPTIONS[check])
        for spec in staged_specs
        for check in BATCH_CHECKS
    ]

    @dg.multi_asset(
        name="read_cdc_raw",
        specs=[*stream_specs, *staged_specs],
        check_specs=check_specs,
        can_subset=True,
        partitions_def=hourly,
        required_resource_keys=set(config.destinations.names),
    )
    def read_cdc_raw(context: dg.AssetExecutionContext) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        selected = [node for node in config.nodes if stream_key(node.name) in context.selected_asset_keys]
        if len(selected) != 1:
            raise dg.Failure(
                description=(
                    "a read of cdc_raw selects exactly one node's stream asset (the node sensors do this); "
                    "to rebuild hours in a warehouse, backfill that warehouse's assets instead: they load "
                    "the staged batches of the hours chosen"
                ),
                allow_retries=False,
            )
        node = selected[0]
        context.instance.add_run_tags(context.run.run_id, {WORKER_TAG: worker_tag()})
        started = time.perf_counter()
        with node_lock(config.staging.path, node.name):
            committed = committed_stream(context.instance, node.name)
            if committed is None:
                committed = _recover(context, config, tables, node.name)
            read = streams.read(node, committed.position)
            stats = read.result.stats
            _report_problems(context, node, read, committed)
            batches = streams.mask(read)
            findings = streams.validate(node, committed, read, batches)
            blocked = [(key, f) for key, checks in findings.items() for f in checks if not f.passed]
            if blocked:
                # Nothing is staged or committed: no warehouse can load the batch, and the range is read again.
                for key, finding in blocked:
                    context.log.error(f"{key.to_user_string()} {finding.check}: {finding.description}")
                yield from _check_results(context, findings)
                return
            if stats.dead_letters:
                store = open_dead_letters(config.dead_letters)
                for letter in stats.dead_letters:
                    store.append(letter)
            staged = streams.stage(node, context.partition_key, read, batches)
        seconds = time.perf_counter() - started
        context.log.info(
            f"{node.name}: read {_position(read.after)} → {_position(read.position)}: {stats.mutations:,} "
            f"mutations, {staged.changes:,} changes of captured tables, {stats.bytes_read:,} bytes in {seconds:.2f} s"
        )
        # Once this is recorded the range counts as read (it is wholly staged by now), and the next run
        # starts after it. Dagster wants it first: the staged assets depend on it.
        yield dg.MaterializeResult(
            asset_key=stream_key(node.name), metadata=_stream_metadata(node, read, staged, seconds)
        )
        for name in tables:
            if staged_key(name) in context.selected_asset_keys:
                yield dg.MaterializeResult(
                    asset_key=staged_key(name), metadata=staged_table_metadata(staged, staged.tables.get(name))
                )
        yield from _check_results(context, findings)

    return read_cdc_raw


CHECK_DESCRIPTIONS = {
    SCHEMA_MATCHES: "The staged batch has the change-batch schema of the table's current definition (blocking).",
    KEYS_NOT_NULL: "Every change carries its partition key, every row change its clustering key (blocking).",
    POSITIONS_CONTINUE: "The range starts at the committed position: no gap, no overlap (blocking).",
    NO_DEAD_LETTERS: (
        "Changes set aside while reading, listed with file, position and reason; they block the range unless "
        "checks.accept_dead_letters names the table (blocking)."
    ),
}


def _check_results(
    context: dg.AssetExecutionContext, findings: Mapping[dg.AssetKey, list[Finding]]
) -> Iterator[dg.AssetCheckResult]:
    for key, checks in findings.items():
        for finding in checks:
            if dg.AssetCheckKey(key, finding.check) not in context.selected_asset_check_keys:
                continue
            metadata: dict[str, Any] = {}
            if finding.details:
                metadata["details"] = dg.MetadataValue.md("\n".join(f"- {line}" for line in finding.details))
            yield dg.AssetCheckResult(
                asset_key=key,
                check_name=finding.check,
                passed=finding.passed,
                severity=dg.AssetCheckSeverity.ERROR,
                description=finding.description,
                metadata=metadata,
            )


def _recover(
    context: dg.AssetExecutionContext, config: PipelineConfig, tables: Mapping[str, TableSchema], node: str
) -> Committed:
    """Where to resume when Dagster holds no position: the least any destination's load ledger has of the node.

    On a fresh install every ledger is empty and the stream starts at the beginning of cdc_raw. A destination
    that cannot be asked is left out: what it misses before the recovered position is in the staged ranges,
    which it loads once it is back (its own consumed positions are gone too, so it loads every staged range).
    """
    positions = []
    for name in config.destinations.names:
        destination = getattr(context.resources, name).open()
        try:
            found = destination.ledger_position(list(tables.values()), f"{node}/")
        except DestinationError as error:
            context.log.warning(f"{node}: {name}'s load ledger cannot be read to recover the position: {error}")
            continue
        finally:
            destination.close()
        context.log.info(f"{node}: no committed position in Dagster's storage; {name}'s load ledger has {found}")
        if found is None:
            return Committed(None, None)
        positions.append(found)
    if not positions:
        return Committed(None, None)
    recovered = min(positions)
    context.log.warning(f"{node}: resuming from {recovered}, recovered from the destinations' load ledgers")
    return Committed(recovered, recovered)


def _report_problems(
    context: dg.AssetExecutionContext, node: NodeConfig, read: DurableRead, committed: Committed
) -> None:
    """A damaged segment stops the node's stream at its committed position, with the file, byte and reason.

    Nothing past the damage is staged or committed: the range is requested again (with backoff) and never
    skipped, until the segment is repaired or moved aside. A segment that vanished before it was read
    (Cassandra 4.1+ dropping CDC data when cdc_raw is full) cannot come back: it is reported, and reading goes on.
    """
    problems = read.result.stats.problems
    vanished = [p for p in problems if isinstance(p, SegmentVanishedError)]
    for problem in vanished:
        context.log.error(f"{node.name}: {problem}")
    damaged = [p for p in problems if not isinstance(p, SegmentVanishedError)]
    if damaged:
        raise dg.Failure(
            description=(
                f"{node.name}: the durable log after {_position(committed.position)} is damaged; nothing past it "
                f"is committed until the segment is repaired or moved aside: {damaged[0]}"
            ),
            metadata={"problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in damaged))},
        )


def _stream_metadata(node: NodeConfig, read: DurableRead, staged: StagedRange, seconds: float) -> dict[str, Any]:
    stats = read.result.stats
    usage = cdc_raw_usage(node.cdc_raw) if node.cdc_raw.is_dir() else 0
    newest = [t.newest_write_us for t in staged.tables.values() if t.newest_write_us is not None]
    metadata: dict[str, Any] = {
        POSITION: position_text(read.position),
        FRONTIER: position_text(read.frontier),
        "node": node.name,
        "range": f"{_position(read.after)} → {_position(read.position)}",
        "segments read": ", ".join(s.path.name for s in read.segments) or "none",
        "mutations": dg.MetadataValue.int(stats.mutations),
        "changes": dg.MetadataValue.int(staged.changes),
        "bytes read": dg.MetadataValue.int(stats.bytes_read),
        "dead letters": dg.MetadataValue.int(len(stats.dead_letters)),
        "problems": dg.MetadataValue.int(len(stats.problems)),
        "cdc_raw bytes": dg.MetadataValue.int(usage),
        "cdc_raw share of cdc_total_space": dg.MetadataValue.float(round(usage / (node.cdc_total_space_mb << 20), 4)),
        "duration (s)": dg.MetadataValue.float(round(seconds, 3)),
        "changes by table": dg.MetadataValue.md(
            kinds_markdown([(t.name, t.kinds, t.bytes) for t in staged.tables.values()])
        ),
    }
    if newest:
        metadata["lag to staging (s)"] = dg.MetadataValue.float(round(staged.staged_at - max(newest) / 1e6, 3))
    if stats.schema_changes:
        metadata["schema changes"] = dg.MetadataValue.md("\n".join(f"- {c}" for c in stats.schema_changes))
    return metadata
