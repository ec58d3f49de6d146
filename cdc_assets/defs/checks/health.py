"""Health checks of the pipeline as it runs: cdc_raw space and consumption per node, freshness per destination table.

- ``cdc_raw_space`` (on ``cassandra/cdc_raw/<node>``): the node's cdc_raw against its ``cdc_total_space``. A full
  cdc_raw makes Cassandra reject writes (or, 4.1+ with ``cdc_block_writes: false``, drop CDC data), so this warns
  at ``checks.cdc_raw_warn_share`` and fails at ``checks.cdc_raw_error_share``.
- ``consumption`` (same asset): fails when the durable log is past the committed frontier and the committed
  position has not moved for ``checks.stalled_after_seconds``.
- ``freshness`` (on ``<destination>/<keyspace>/<table>``): the lag from write time to visibility. A destination
  that has loaded everything committed has the lag of its last load; one that is behind has the age of the
  oldest change it has not loaded yet. Warns above ``lag_for(destination).warn_seconds``, fails above
  ``error_seconds``.

They are evaluated in two places, from the same functions:

- **Without a run**, by the ``cdc_health`` sensor: when nothing runs (a stalled node, a destination that keeps
  failing) it is the only one looking. It reports an evaluation only when the outcome (pass, WARN, ERROR, and
  what a failure is about) differs from the latest one recorded, or when that is an hour old
  (``REPEAT_SECONDS``), so the event log does not grow by a row per check per tick. Each evaluation is tied to
  the asset's latest materialization.
- **In a run that includes them** (the Materialize or Execute buttons, a backfill, and the live runs when their
  request lists :func:`health_check_keys`). The UI shows a check's status for the asset's latest
  materialization only: a runless evaluation disappears from the asset's page at the next micro-batch, so the
  live runs should evaluate them too (~0.1 s a step, measured on this machine).

The checks are not partitioned: each describes the present, not a window of ingestion time. Checked on 1.13:
an unpartitioned check of an hourly asset takes runless evaluations without a partition, and the UI shows them.
"""

import datetime as dt
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecord,
    AssetCheckExecutionRecordStatus,
)

from cdc_assets.cassandra_schema.tables import TableSchema
from cdc_assets.commitlog.cdc_dir import cdc_raw_usage, durable_frontier, list_cdc_segments
from cdc_assets.commitlog.reader import Position
from cdc_assets.config import ChecksConfig, NodeConfig, PipelineConfig
from cdc_assets.defs.keys import CONSUMED, destination_key, stream_key
from cdc_assets.defs.ledger import Committed, committed_stream, consumed
from cdc_assets.staging import list_ranges, position_key, position_text

CDC_RAW_SPACE = "cdc_raw_space"
CONSUMPTION = "consumption"
FRESHNESS = "freshness"
SENSOR = "cdc_health"

#: An unchanged outcome is reported again after this long, so the UI shows how recent it is.
REPEAT_SECONDS = 3600.0
#: A run that planned a check and is still going will evaluate it; past this age it is presumed stuck.
_RUN_GRACE_SECONDS = 600.0
#: Metadata naming what a failing outcome is about (a destination behind, or caught up but slow): a change of it is
#: reported like a change of severity, so the UI never explains a failure with a reason that no longer holds.
STATE = "state"
#: What ``loads.load_metadata`` records as the lag of a load's newest change.
LOAD_LAG = "lag, newest change (s)"
_LOAD_PAGES = (10, 100)

DESCRIPTIONS = {
    CDC_RAW_SPACE: (
        "The node's cdc_raw usage against its cdc_total_space: WARN at checks.cdc_raw_warn_share, ERROR at "
        "checks.cdc_raw_error_share (a full cdc_raw makes Cassandra reject writes or drop CDC data)."
    ),
    CONSUMPTION: (
        "ERROR when the durable log is past the committed frontier and the committed position has not moved "
        "for checks.stalled_after_seconds."
    ),
    FRESHNESS: (
        "Lag from write time to visibility in this destination: its last load's when it has loaded everything "
        "committed, else the age of the oldest change not loaded yet. WARN/ERROR above checks.lag (or "
        "checks.destination_lag)."
    ),
}


@dataclass(frozen=True)
class Outcome:
    """One check's verdict now: passed (no severity), WARN or ERROR, with what explains it."""

    asset_key: dg.AssetKey
    check: str
    severity: dg.AssetCheckSeverity | None
    description: str
    metadata: dict[str, Any]

    @property
    def key(self) -> dg.AssetCheckKey:
        return dg.AssetCheckKey(self.asset_key, self.check)

    @property
    def passed(self) -> bool:
        return self.severity is None

    @property
    def verdict(self) -> str:
        """``pass``, ``WARN`` or ``ERROR``."""
        return "pass" if self.severity is None else self.severity.value

    @property
    def signature(self) -> str:
        """What must change for an evaluation to be reported again: the verdict, and a failure's state."""
        return signature(self.passed, self.severity, self.metadata.get(STATE))

    def evaluation(self, target: dg.EventLogRecord | None = None) -> dg.AssetCheckEvaluation:
        """A runless evaluation; ``target`` is the asset's latest materialization, which it then describes."""
        return dg.AssetCheckEvaluation(
            **self._outcome(),
            target_materialization_data=(
                AssetCheckEvaluationTargetMaterializationData(
                    storage_id=target.storage_id, run_id=target.run_id, timestamp=target.timestamp
                )
                if target is not None
                else None
            ),
        )

    def result(self) -> dg.AssetCheckResult:
        return dg.AssetCheckResult(**self._outcome())

    def _outcome(self) -> dict[str, Any]:
        """What a run's result and a sensor's runless evaluation of the check both carry."""
        return {
            "asset_key": self.asset_key,
            "check_name": self.check,
            "passed": self.passed,
            "severity": self.severity or dg.AssetCheckSeverity.ERROR,
            "description": self.description,
            "metadata": self.metadata,
        }


def signature(passed: bool, severity: dg.AssetCheckSeverity | None, state: Any) -> str:
    if passed or severity is None:
        return "pass"
    text = getattr(state, "value", state)
    return f"{severity.value}:{text}" if text else severity.value


def _grade(value: float, warn: float, error: float, *, inclusive: bool) -> dg.AssetCheckSeverity | None:
    """ERROR past ``error``, WARN past ``warn``; ``inclusive`` counts reaching a threshold as passing it."""

    def past(threshold: float) -> bool:
        return value >= threshold if inclusive else value > threshold

    if past(error):
        return dg.AssetCheckSeverity.ERROR
    if past(warn):
        return dg.AssetCheckSeverity.WARN
    return None


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _mib(size: int) -> str:
    return f"{size / (1 << 20):,.1f} MiB"


def _text(position: Position | None) -> str:
    return position_text(position) or "start"


# --- cdc_raw space -------------------------------------------------------------------------------------------------


def observe_cdc_raw_space(
    node: NodeConfig, checks: ChecksConfig, consumed_frontier: Position | None, now: float
) -> Outcome:
    """The node's cdc_raw against its cdc_total_space; ``consumed_frontier`` is what every destination has loaded."""
    key = stream_key(node.name)
    limit = node.cdc_total_space_mb << 20
    if not node.cdc_raw.is_dir():
        return Outcome(key, CDC_RAW_SPACE, None, f"{node.name}: cdc_raw {node.cdc_raw} does not exist (yet)", {})
    segments = list_cdc_segments(node.cdc_raw)
    used = cdc_raw_usage(node.cdc_raw)
    share = used / limit
    # What housekeeping may not remove yet: not COMPLETED, or not wholly loaded by every destination.
    unconsumed = [
        s
        for s in segments
        if not s.completed
        or consumed_frontier is None
        or position_key(consumed_frontier) < (s.segment_id, s.durable_offset)
    ]
    oldest = unconsumed[0] if unconsumed else None
    metadata: dict[str, Any] = {
        "cdc_raw": dg.MetadataValue.path(str(node.cdc_raw)),
        "bytes used": dg.MetadataValue.int(used),
        "cdc_total_space (bytes)": dg.MetadataValue.int(limit),
        "share of cdc_total_space": dg.MetadataValue.float(round(share, 4)),
        "segments": dg.MetadataValue.int(len(segments)),
        "oldest unconsumed segment": oldest.path.name if oldest else "none",
        "warn at share": dg.MetadataValue.float(float(checks.cdc_raw_warn_share)),
        "error at share": dg.MetadataValue.float(float(checks.cdc_raw_error_share)),
    }
    age = None
    if oldest is not None:
        try:
            age = max(now - oldest.path.stat().st_mtime, 0.0)
        except FileNotFoundError:  # consumed and removed meanwhile
            age = None
    if age is not None:
        metadata["oldest unconsumed segment age (s)"] = dg.MetadataValue.float(round(age, 1))
    severity = _grade(share, checks.cdc_raw_warn_share, checks.cdc_raw_error_share, inclusive=True)
    summary = (
        f"{node.name}: cdc_raw ({node.cdc_raw}) holds {_mib(used)} in {len(segments)} segment(s), {share:.0%} of "
        f"cdc_total_space ({node.cdc_total_space_mb:,} MiB)"
    )
    if severity is None:
        return Outcome(key, CDC_RAW_SPACE, None, summary, metadata)
    threshold = checks.cdc_raw_error_share if severity == dg.AssetCheckSeverity.ERROR else checks.cdc_raw_warn_share
    waiting = (
        f"; the oldest segment not yet consumed is {oldest.path.name}"
        + (f", last written {age:,.0f} s ago" if age is not None else "")
        if oldest is not None
        else ""
    )
    return Outcome(
        key,
        CDC_RAW_SPACE,
        severity,
        f"{summary}: at or above {threshold:.0%}. When it is full Cassandra rejects writes (or drops CDC data)"
        f"{waiting}. Segments leave cdc_raw once every destination has loaded them: see the node's consumption "
        "check, the destinations' freshness checks and failed runs.",
        metadata,
    )


# --- consumption ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamProgress:
    """How far a node's durable log reaches, what is committed of it, and when that was last recorded."""

    durable: Position | None
    committed: Committed | None
    last_commit: float | None

    @property
    def behind(self) -> bool:
        """The durable log holds something past the committed frontier."""
        if self.durable is None:
            return False
        frontier = self.committed.frontier if self.committed else None
        return position_key(self.durable) > position_key(frontier)

    @property
    def backlog_key(self) -> str:
        """Names the committed frontier a backlog waits behind: a new commit starts a new wait."""
        return _text(self.committed.frontier if self.committed else None)


def stream_progress(instance: dg.DagsterInstance, node: NodeConfig) -> StreamProgress:
    durable = durable_frontier(list_cdc_segments(node.cdc_raw)) if node.cdc_raw.is_dir() else None
    event = instance.get_latest_materialization_event(stream_key(node.name))
    return StreamProgress(durable, committed_stream(instance, node.name), event.timestamp if event else None)


def judge_consumption(
    node: str, progress: StreamProgress, checks: ChecksConfig, now: float, backlog_seen: float | None = None
) -> Outcome:
    """ERROR when ``node`` has had something to read for longer than ``stalled_after_seconds`` without a commit.

    The wait counts from the latest commit, or from ``backlog_seen`` (when the sensor first saw this backlog)
    if that is later: a write after a quiet hour is not a stall.
    """
    key = stream_key(node)
    committed = progress.committed
    metadata: dict[str, Any] = {
        "durable frontier": _text(progress.durable),
        "committed position": _text(committed.position if committed else None),
        "committed frontier": _text(committed.frontier if committed else None),
        "stalled after (s)": dg.MetadataValue.float(float(checks.stalled_after_seconds)),
    }
    if progress.last_commit is not None:
        metadata["last commit"] = dg.MetadataValue.timestamp(progress.last_commit)
    if progress.durable is None:
        return Outcome(key, CONSUMPTION, None, f"{node}: nothing durable in cdc_raw yet", metadata)
    if not progress.behind:
        return Outcome(
            key, CONSUMPTION, None, f"{node}: the durable log is read up to {_text(progress.durable)}", metadata
        )
    starts = [t for t in (progress.last_commit, backlog_seen) if t is not None]
    waited = max(now - max(starts), 0.0) if starts else 0.0
    metadata["waiting (s)"] = dg.MetadataValue.float(round(waited, 1))
    if waited <= checks.stalled_after_seconds:
        return Outcome(
            key,
            CONSUMPTION,
            None,
            f"{node}: the durable log reaches {_text(progress.durable)}, {waited:,.0f} s past the last commit "
            f"(stalled after {checks.stalled_after_seconds:,.0f} s)",
            metadata,
        )
    since = f"since {_iso(progress.last_commit)}" if progress.last_commit is not None else "ever"
    return Outcome(
        key,
        CONSUMPTION,
        dg.AssetCheckSeverity.ERROR,
        f"{node} has stalled: its durable log reaches {_text(progress.durable)} but the committed frontier has "
        f"stayed at {metadata['committed frontier']} for {waited:,.0f} s (more than "
        f"{checks.stalled_after_seconds:,.0f} s); no run has committed a range of it {since}. See the node's "
        f"runs (failed, queued, a damaged segment) and its sensor cdc_raw_{node}.",
        metadata,
    )


# --- freshness -----------------------------------------------------------------------------------------------------


def _last_load(instance: dg.DagsterInstance, destination: str, table: str) -> tuple[float, dg.EventLogRecord] | None:
    """The lag of the newest live load of ``table`` that loaded changes of it (backfills measure old data)."""
    key = destination_key(destination, table)
    cursor = None
    for limit in _LOAD_PAGES:
        page = instance.fetch_materializations(key, limit=limit, cursor=cursor)
        for record in page.records:
            materialization = record.asset_materialization
            metadata = materialization.metadata if materialization else {}
            if CONSUMED in metadata and LOAD_LAG in metadata:
                return float(metadata[LOAD_LAG].value), record  # type: ignore[arg-type]
        if not page.has_more:
            return None
        cursor = page.cursor
    return None


def observe_freshness(
    instance: dg.DagsterInstance, config: PipelineConfig, destination: str, table: str, now: float
) -> Outcome:
    """``table``'s lag in ``destination``: its last load's, or the age of the oldest change it has not loaded."""
    key = destination_key(destination, table)
    limits = config.checks.lag_for(destination)
    loaded = consumed(instance, destination, table) or {}
    behind: list[str] = []
    waiting = []
    for node in config.nodes:
        committed = committed_stream(instance, node.name)
        if committed is None:
            continue
        done = loaded.get(node.name)
        if done is not None and position_key(done.position) >= position_key(committed.position):
            continue
        behind.append(node.name)
        for staged in list_ranges(config.staging.path, nodes=[node.name], since=done.position if done else None):
            part = staged.tables.get(table)
            if part is not None and part.oldest_write_us is not None:
                waiting.append(part)
    metadata: dict[str, Any] = {
        "warn above (s)": dg.MetadataValue.float(float(limits.warn_seconds)),
        "error above (s)": dg.MetadataValue.float(float(limits.error_seconds)),
        "nodes behind": ", ".join(behind) or "none",
    }
    if waiting:
        oldest = min(part.oldest_write_us for part in waiting if part.oldest_write_us is not None) / 1e6
        lag = max(now - oldest, 0.0)
        measured = "the oldest change not loaded yet"
        metadata[STATE] = "behind"
        metadata["staged ranges waiting"] = dg.MetadataValue.int(len(waiting))
        metadata["changes waiting"] = dg.MetadataValue.int(sum(part.changes for part in waiting))
        metadata["oldest change waiting, written"] = dg.MetadataValue.timestamp(oldest)
    else:
        last = _last_load(instance, destination, table)
        if last is None:
            return Outcome(key, FRESHNESS, None, f"{destination} {table}: no change loaded yet, none waiting", metadata)
        lag, record = last
        measured = "its last load"
        metadata[STATE] = "caught up"
        metadata["last load"] = dg.MetadataValue.timestamp(record.timestamp)
        metadata["last load run"] = record.run_id
    metadata["lag (s)"] = dg.MetadataValue.float(round(lag, 1))
    metadata["measured from"] = measured
    severity = _grade(lag, limits.warn_seconds, limits.error_seconds, inclusive=False)
    summary = f"{destination} {table}: {lag:,.0f} s from write time to visibility, measured from {measured}"
    if severity is None:
        return Outcome(key, FRESHNESS, None, summary, metadata)
    limit = limits.error_seconds if severity == dg.AssetCheckSeverity.ERROR else limits.warn_seconds
    where = (
        f"; {len(waiting)} staged range(s) of node(s) {', '.join(behind)} wait to be loaded: see the failed "
        f"runs of load_{destination} and the destination itself"
        if waiting
        else ""
    )
    return Outcome(key, FRESHNESS, severity, f"{summary}: above {limit:,.0f} s{where}.", metadata)


# --- Dagster definitions -------------------------------------------------------------------------------------------


def _node_outcomes(
    instance: dg.DagsterInstance,
    config: PipelineConfig,
    node: NodeConfig,
    tables: Sequence[str],
    now: float,
    progress: StreamProgress | None = None,
    backlog_seen: float | None = None,
) -> list[Outcome]:
    # Imported here: the node sensors import health_check_keys from this module for their run requests.
    from cdc_assets.defs.cassandra.sensors import least_consumed

    progress = progress or stream_progress(instance, node)
    least, _ = least_consumed(instance, config, node.name, tables, progress.committed)
    return [
        observe_cdc_raw_space(node, config.checks, least.frontier if least else None, now),
        judge_consumption(node.name, progress, config.checks, now, backlog_seen),
    ]


def node_health_check(config: PipelineConfig, node: NodeConfig, tables: Sequence[str]) -> dg.AssetChecksDefinition:
    """``cdc_raw_space`` and ``consumption`` on ``node``'s stream asset."""
    specs = [
        dg.AssetCheckSpec(check, asset=stream_key(node.name), description=DESCRIPTIONS[check])
        for check in (CDC_RAW_SPACE, CONSUMPTION)
    ]

    @dg.multi_asset_check(name=f"cdc_raw_health_{node.name}", specs=specs, can_subset=True)
    def node_health(context: dg.AssetCheckExecutionContext) -> Iterator[dg.AssetCheckResult]:
        for outcome in _node_outcomes(context.instance, config, node, tables, time.time()):
            if outcome.key in context.selected_asset_check_keys:
                yield outcome.result()

    return node_health


def freshness_check(config: PipelineConfig, destination: str, tables: Sequence[str]) -> dg.AssetChecksDefinition:
    """``freshness`` on each of ``destination``'s tables."""
    keys = {dg.AssetCheckKey(destination_key(destination, table), FRESHNESS): table for table in tables}
    specs = [dg.AssetCheckSpec(FRESHNESS, asset=key.asset_key, description=DESCRIPTIONS[FRESHNESS]) for key in keys]

    @dg.multi_asset_check(name=f"freshness_{destination}", specs=specs, can_subset=True)
    def freshness(context: dg.AssetCheckExecutionContext) -> Iterator[dg.AssetCheckResult]:
        for key, table in keys.items():
            if key in context.selected_asset_check_keys:
                yield observe_freshness(context.instance, config, destination, table, time.time()).result()

    return freshness


def is_due(
    instance: dg.DagsterInstance, latest: AssetCheckExecutionRecord | None, outcome: Outcome, now: float
) -> bool:
    """Whether ``outcome`` should be reported: the latest recorded evaluation differs, is old, or never came."""
    if latest is None or latest.event is None:
        return True
    if latest.status == AssetCheckExecutionRecordStatus.PLANNED:
        record = instance.get_run_record_by_id(latest.run_id)
        running = record is not None and not record.dagster_run.is_finished
        # That run evaluates it when it gets there, unless it hangs.
        return not running or now - latest.create_timestamp > _RUN_GRACE_SECONDS
    evaluation = latest.event.dagster_event.event_specific_data if latest.event.dagster_event else None
    if not isinstance(evaluation, dg.AssetCheckEvaluation):
        return True
    recorded = signature(evaluation.passed, evaluation.severity, evaluation.metadata.get(STATE))
    return recorded != outcome.signature or now - latest.event.timestamp >= REPEAT_SECONDS


def evaluate_health(
    instance: dg.DagsterInstance,
    config: PipelineConfig,
    tables: Sequence[str],
    cursor: str | None,
    now: float | None = None,
) -> tuple[list[Outcome], list[Outcome], str]:
    """One tick of the health sensor: every outcome, the ones to report, and the new cursor.

    The cursor remembers, per node, when a backlog behind a given committed frontier was first seen.
    """
    now = time.time() if now is None else now
    seen: Mapping[str, Any] = json.loads(cursor).get("backlog", {}) if cursor else {}
    backlog: dict[str, dict[str, Any]] = {}
    outcomes: list[Outcome] = []
    for node in config.nodes:
        progress = stream_progress(instance, node)
        since = None
        if progress.behind:
            earlier = seen.get(node.name)
            same = earlier is not None and earlier.get("frontier") == progress.backlog_key
            since = float(earlier["since"]) if same else now
            backlog[node.name] = {"frontier": progress.backlog_key, "since": since}
        outcomes += _node_outcomes(instance, config, node, tables, now, progress, since)
    for destination in config.destinations.names:
        outcomes += [observe_freshness(instance, config, destination, table, now) for table in tables]
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key([o.key for o in outcomes])
    due = [o for o in outcomes if is_due(instance, latest.get(o.key), o, now)]
    return outcomes, due, json.dumps({"backlog": backlog}, sort_keys=True)


def runless_evaluations(instance: dg.DagsterInstance, outcomes: Sequence[Outcome]) -> list[dg.AssetCheckEvaluation]:
    """Evaluations of ``outcomes``, each tied to its asset's latest materialization: the UI shows a check's status
    for the latest materialization only."""
    evaluations = []
    for outcome in outcomes:
        records = instance.fetch_materializations(outcome.asset_key, limit=1).records
        evaluations.append(outcome.evaluation(records[0] if records else None))
    return evaluations


def health_check_keys(config: PipelineConfig, node: str, tables: Sequence[str]) -> list[dg.AssetCheckKey]:
    """The health checks of what a live run of ``node`` materializes, for the run to evaluate as it finishes."""
    keys = [dg.AssetCheckKey(stream_key(node), check) for check in (CDC_RAW_SPACE, CONSUMPTION)]
    keys += [
        dg.AssetCheckKey(destination_key(destination, table), FRESHNESS)
        for destination in config.destinations.names
        for table in tables
    ]
    return keys


def health_sensor(config: PipelineConfig, tables: Sequence[str]) -> dg.SensorDefinition:
    def evaluate(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        outcomes, due, cursor = evaluate_health(context.instance, config, tables, context.cursor)
        failing = [f"{o.asset_key.to_user_string()} {o.check}: {o.verdict}" for o in outcomes if not o.passed]
        state = "; ".join(failing) if failing else f"all {len(outcomes)} checks pass"
        reported = f"reported {len(due)} changed outcome(s)" if due else "no outcome changed"
        return dg.SensorResult(
            asset_events=runless_evaluations(context.instance, due),
            cursor=cursor,
            skip_reason=dg.SkipReason(f"{reported}; {state}"),
        )

    return dg.SensorDefinition(
        name=SENSOR,
        evaluation_fn=evaluate,
        minimum_interval_seconds=config.alerts.min_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Evaluates cdc_raw_space and consumption on each node's stream asset and freshness on each destination "
            "table without a run; reports an evaluation when its outcome changes (or hourly)."
        ),
    )


def health_definitions(config: PipelineConfig, tables: Mapping[str, TableSchema] | Sequence[str]) -> dg.Definitions:
    """The health checks on the stream and destination assets, and the sensor that evaluates them between runs."""
    names = list(tables)
    return dg.Definitions(
        asset_checks=[
            *(node_health_check(config, node, names) for node in config.nodes),
            *(freshness_check(config, destination, names) for destination in config.destinations.names),
        ],
        sensors=[health_sensor(config, names)],
    )
