"""One sensor per Cassandra node: it lists the node's cdc_raw and reads the ``_cdc.idx`` files, never decodes.

Each tick (DESIGN.md section 7 for the traps it avoids):

- no new run while one of the node's runs is queued or in progress: two runs never read one range at once;
- a run is requested when the durable log has grown past the committed frontier, or when a destination
  has not consumed everything staged (it failed earlier: its ranges are retried until caught up);
- the committed position comes from Dagster's storage, never from the sensor cursor; the run key holds
  that position and an attempt number, because Dagster never re-requests a key whose run failed;
- after a failed run the same range is requested again with exponential backoff, and never skipped;
- segments every destination has consumed entirely leave cdc_raw (housekeeping), so it never fills up.
"""

import datetime as dt
import os
import time
from collections.abc import Mapping, Sequence

import dagster as dg

from cdc_assets.cassandra_schema.tables import TableSchema
from cdc_assets.commitlog.cdc_dir import delete_segment, durable_frontier, list_cdc_segments
from cdc_assets.commitlog.reader import Position
from cdc_assets.config import NodeConfig, PipelineConfig
from cdc_assets.defs.checks.health import health_check_keys
from cdc_assets.defs.keys import CHDB_TAG, FROM_TAG, NODE_TAG, destination_key, staged_key, stream_key
from cdc_assets.defs.ledger import Committed, committed_stream, consumed
from cdc_assets.defs.partitions import current_partition
from cdc_assets.defs.workers import WORKER_TAG, worker_alive
from cdc_assets.staging import position_key, position_text, prune_ranges
from cdc_assets.validation import BATCH_CHECKS, NO_DEAD_LETTERS, POSITIONS_CONTINUE

START = "start"
_FAILED = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
# A run counts as holding its node from the moment it is queued: one waiting in the run queue will read the
# range as surely as one running.
_HOLDING = (
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
)


def run_selection(config: PipelineConfig, node: str, tables: Sequence[str]) -> list[dg.AssetKey]:
    """What a live run of ``node`` materializes: its stream, every staged table, every destination table."""
    keys = [stream_key(node), *(staged_key(t) for t in tables)]
    keys += [destination_key(d, t) for d in config.destinations.names for t in tables]
    return keys


def run_tags(config: PipelineConfig, node: str, origin: str) -> dict[str, str]:
    tags = {NODE_TAG: node, FROM_TAG: origin}
    clickhouse = config.destinations.clickhouse
    if clickhouse is not None and os.environ.get(clickhouse.dsn_env, "").startswith("chdb://"):
        tags[CHDB_TAG] = "1"
    return tags


def least_consumed(
    instance: dg.DagsterInstance,
    config: PipelineConfig,
    node: str,
    tables: Sequence[str],
    committed: Committed | None,
) -> tuple[Committed | None, bool]:
    """The least frontier every destination has consumed of ``node`` (None if one has no record), and whether
    any destination is behind ``committed``, the node's committed position."""
    least: Committed | None = None
    behind = False
    for destination in config.destinations.names:
        for table in tables:
            record = (consumed(instance, destination, table) or {}).get(node)
            if record is None:
                return None, committed is not None
            if committed is not None and position_key(record.position) < position_key(committed.position):
                behind = True
            if least is None or position_key(record.frontier) < position_key(least.frontier):
                least = record
    return least, behind


def remove_consumed_segments(node: NodeConfig, frontier: Position | None, log: object = None) -> list[str]:
    """Delete the COMPLETED segments of ``node`` that lie wholly before ``frontier``; returns their names."""
    if frontier is None or not node.cdc_raw.is_dir():
        return []
    removed = []
    for segment in list_cdc_segments(node.cdc_raw):
        if segment.completed and position_key(frontier) >= (segment.segment_id, segment.durable_offset):
            delete_segment(segment)
            removed.append(segment.path.name)
    return removed


def backoff_seconds(attempts: int, config: PipelineConfig) -> float:
    """How long to wait before attempt ``attempts + 1`` of a range that failed ``attempts`` times in a row."""
    base = config.micro_batch.min_interval_seconds
    return min(config.retries.max_backoff_seconds, base * 2 ** max(attempts - 1, 0))


def poll_node(
    instance: dg.DagsterInstance,
    config: PipelineConfig,
    node: NodeConfig,
    tables: Sequence[str],
    now: float | None = None,
) -> dg.RunRequest | dg.SkipReason:
    """One tick of ``node``'s sensor: a run request for its next range, or why there is none."""
    now = time.time() if now is None else now
    for record in instance.get_run_records(dg.RunsFilter(tags={NODE_TAG: node.name}, statuses=list(_HOLDING))):
        run = record.dagster_run
        worker = run.tags.get(WORKER_TAG)
        if worker is not None and worker_alive(worker) is False:
            instance.report_run_failed(run, message=f"its worker process ({worker}) is gone: the range is read again")
            continue
        return dg.SkipReason(f"run {run.run_id} of {node.name} is still in progress")
    if not node.cdc_raw.is_dir():
        return dg.SkipReason(f"{node.name}: cdc_raw {node.cdc_raw} does not exist (yet)")

    committed = committed_stream(instance, node.name)
    least, behind = least_consumed(instance, config, node.name, tables, committed)
    removed = remove_consumed_segments(node, least.frontier if least else None)
    retention = dt.timedelta(hours=config.staging.retention_hours)
    prune_ranges(
        config.staging.path,
        node.name,
        before=current_partition(dt.datetime.fromtimestamp(now, dt.UTC) - retention),
        consumed=least.position if least else None,
    )

    durable = durable_frontier(list_cdc_segments(node.cdc_raw))
    grown = durable is not None and (committed is None or position_key(durable) > position_key(committed.frontier))
    if not grown and not behind:
        note = f"; removed {len(removed)} consumed segment(s)" if removed else ""
        return dg.SkipReason(f"{node.name}: nothing new past {_text(committed)}{note}")

    origin = position_text(committed.position) if committed and committed.position else START
    earlier = instance.get_run_records(dg.RunsFilter(tags={NODE_TAG: node.name, FROM_TAG: origin}))
    failures = 0
    for record in earlier:  # newest first
        if record.dagster_run.status not in _FAILED:
            break
        failures += 1
    # A range that keeps failing, or a destination that keeps lagging with nothing new to read, waits longer
    # each time; new data after a success is read at once.
    waits = failures if failures else (len(earlier) if not grown else 0)
    if waits and earlier[0].end_time is not None:
        due = earlier[0].end_time + backoff_seconds(waits, config)
        if now < due:
            return dg.SkipReason(f"{node.name}: attempt {len(earlier) + 1} from {origin} waits until {due - now:.0f} s")
    return dg.RunRequest(
        run_key=f"{node.name}:{origin}:{len(earlier)}",
        partition_key=current_partition(),
        asset_selection=run_selection(config, node.name, tables),
        # The blocking batch checks, and the health checks so the UI shows them beside the latest load; the
        # per-window suites run in their own job, out of the latency path.
        asset_check_keys=batch_check_keys(node.name, tables) + health_check_keys(config, node.name, tables),
        tags=run_tags(config, node.name, origin),
    )


def batch_check_keys(node: str, tables: Sequence[str]) -> list[dg.AssetCheckKey]:
    """The blocking checks a live run of ``node`` evaluates before any warehouse loads its batch."""
    keys = [dg.AssetCheckKey(stream_key(node), check) for check in (POSITIONS_CONTINUE, NO_DEAD_LETTERS)]
    keys += [dg.AssetCheckKey(staged_key(t), check) for t in tables for check in BATCH_CHECKS]
    return keys


def _text(committed: Committed | None) -> str:
    return "the start" if committed is None else (position_text(committed.frontier) or "the start")


def node_sensors(config: PipelineConfig, tables: Mapping[str, TableSchema]) -> list[dg.SensorDefinition]:
    """A sensor per configured node, running from the start."""
    sensors = []
    names = list(tables)
    for node in config.nodes:

        def evaluate(context: dg.SensorEvaluationContext, node: NodeConfig = node) -> dg.SensorResult:
            decision = poll_node(context.instance, config, node, names)
            if isinstance(decision, dg.SkipReason):
                return dg.SensorResult(skip_reason=decision)
            return dg.SensorResult(run_requests=[decision])

        sensors.append(
            dg.SensorDefinition(
                name=f"cdc_raw_{node.name}",
                evaluation_fn=evaluate,
                minimum_interval_seconds=config.micro_batch.min_interval_seconds,
                default_status=dg.DefaultSensorStatus.RUNNING,
                asset_selection=run_selection(config, node.name, names),
                description=f"Polls {node.cdc_raw} (node {node.name}) and requests a run for each new durable range.",
            )
        )
    return sensors
