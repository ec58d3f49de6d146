"""The alert sensor: every failed check and every failed run, announced once on every configured channel.

Open-source Dagster has no alert policies, so one sensor (``cdc_alerts``) follows Dagster's own records:

- **Check evaluations**, from any source (the blocking checks of the read step, the health checks, the window
  checks, a runless evaluation), read from the asset check execution table, whose ids grow across runs on every
  storage (the run-sharded SQLite event log of ``dagster dev`` has no cross-run event id). Per check the
  cursor keeps the last row handled; rows are handled in id order, and a row a run has planned but not
  evaluated yet holds the ones after it back until the run gets there, so the order never depends on timing.
  :class:`cdc_assets.alerts.CheckBook` turns the verdicts into failures and recoveries.
- **Run failures**: the ``RUN_FAILURE`` events after the last one handled, with the failed steps' errors.

**Exactly once.** The daemon saves a sensor's cursor only when the tick ends, so a tick that dies after
sending would be replayed from the old cursor. What each channel was given is therefore written to Dagster's
key-value store (``run_storage.set_cursor_values``) as it happens: ``sending`` before the send, ``sent``
after. A replayed tick derives the same alerts with the same ids (the storage ids of their causes, handled in
the same order) and skips what a channel has. The one window left is a crash after a channel accepted an
alert and before ``sent`` was written: that alert is sent to that channel again, marked as a possible
duplicate. At-least-once there, on purpose: a duplicate page is better than a missing one. A channel that
fails keeps its alerts in the cursor's ``pending`` list and gets them, in order, on a later tick.

On its first tick the sensor announces what happened in the hour before (``FIRST_LOOKBACK_SECONDS``), not
the whole history of an instance it is added to.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import dagster as dg
from dagster._core.definitions.assets.graph.base_asset_graph import BaseAssetGraph
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecord,
    AssetCheckExecutionRecordStatus,
)

from cdc_assets.alerts import (
    Alert,
    CheckBook,
    CheckVerdict,
    Redactor,
    asset_checks_link,
    configured_channels,
    deliver,
    metadata_text,
    run_link,
)
from cdc_assets.config import PipelineConfig
from cdc_assets.defs.keys import FROM_TAG, NODE_TAG

SENSOR = "cdc_alerts"
FIRST_LOOKBACK_SECONDS = 3600.0
#: Alerts a channel could not take for this long are given up (and logged), so the cursor stays small.
MAX_PENDING_SECONDS = 86_400.0
MAX_PENDING = 200
#: A tick stops sending after this long and leaves the rest for the next one (a tick times out at 60 s).
TICK_BUDGET_SECONDS = 40.0
#: A run that planned a check this long ago and is still not finished no longer holds that check's alerts back.
_RUN_WAIT_SECONDS = 3600.0
_PAGE = 100
_LEDGER_PREFIX = "cdc_assets/alerts"
_MAX_ERROR_CHARS = 1_000


@dataclass
class AlertCursor:
    """What the sensor has handled, and what it still owes a channel (alerts, already redacted)."""

    generation: int = 0
    #: Nothing that happened before this is announced.
    started: float | None = None
    #: The storage id of the last run failure handled.
    runs_after: int | None = None
    #: Per check, the id of the last execution row handled.
    checks: dict[str, int] = field(default_factory=dict)
    book: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str | None) -> AlertCursor:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})

    def dump(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


class KeyValueLedger:
    """What each channel has been given, in Dagster's key-value store: one JSON map per channel.

    Each entry carries the generation of the tick that wrote it. An entry is dropped once a saved cursor
    accounts for its alert (written by a tick no later than that cursor's, and no longer pending in it): a
    replay can only start from a saved cursor, so nothing older can be derived again.
    """

    def __init__(self, instance: dg.DagsterInstance, sensor: str, channels: Iterable[str], generation: int):
        self.storage = instance.run_storage
        self.generation = generation
        self.keys = {channel: f"{_LEDGER_PREFIX}/{sensor}/{channel}" for channel in channels}
        stored = self.storage.get_cursor_values(set(self.keys.values())) if self.keys else {}
        self.entries: dict[str, dict[str, list[Any]]] = {
            channel: json.loads(stored.get(key) or "{}") for channel, key in self.keys.items()
        }

    def status(self, channel: str, alert_id: str) -> str | None:
        entry = self.entries[channel].get(alert_id)
        return entry[0] if entry else None

    def mark(self, channel: str, alert_id: str, status: str) -> None:
        self.entries[channel][alert_id] = [status, self.generation]
        self.storage.set_cursor_values({self.keys[channel]: json.dumps(self.entries[channel], sort_keys=True)})

    def prune(self, saved_generation: int, pending: Iterable[str]) -> None:
        keep = set(pending)
        for channel, entries in self.entries.items():
            kept = {i: e for i, e in entries.items() if e[1] > saved_generation or i in keep}
            if len(kept) != len(entries):
                self.entries[channel] = kept
                self.storage.set_cursor_values({self.keys[channel]: json.dumps(kept, sort_keys=True)})


def _check_name(key: dg.AssetCheckKey) -> str:
    return key.to_user_string()


def _history_after(
    instance: dg.DagsterInstance, key: dg.AssetCheckKey, after: int | None, not_before: float
) -> list[AssetCheckExecutionRecord]:
    """The check's execution rows after row ``after`` (or, the first time, since ``not_before``), oldest first."""
    rows: list[AssetCheckExecutionRecord] = []
    cursor = None
    while True:
        page = instance.event_log_storage.get_asset_check_execution_history(key, limit=_PAGE, cursor=cursor)
        for row in page:
            if (after is not None and row.id <= after) or (after is None and row.create_timestamp < not_before):
                return rows[::-1]
            rows.append(row)
        if len(page) < _PAGE:
            return rows[::-1]
        cursor = page[-1].id


def _partitioned(graph: BaseAssetGraph | None, key: dg.AssetCheckKey) -> bool:
    if graph is None:
        return False
    try:
        return graph.get_check_spec(key).partitions_def is not None  # type: ignore[attr-defined]
    except Exception:  # a check of another code location, or one removed since it ran
        return False


def _run_partition(instance: dg.DagsterInstance, run_id: str | None) -> str | None:
    run = instance.get_run_by_id(run_id) if run_id else None
    if run is None:
        return None
    tags = run.tags
    if "dagster/partition" in tags:
        return tags["dagster/partition"]
    first, last = tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")
    return f"{first} … {last}" if first and last else None


def check_verdicts(
    instance: dg.DagsterInstance,
    graph: BaseAssetGraph | None,
    keys: Sequence[dg.AssetCheckKey],
    cursor: AlertCursor,
    ui_url: str,
    now: float,
) -> list[CheckVerdict]:
    """The check evaluations recorded since the cursor, in the order they are handled; advances the cursor."""
    started = cursor.started if cursor.started is not None else now
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(list(keys)) if keys else {}
    verdicts = []
    for key in keys:
        name = _check_name(key)
        done = cursor.checks.get(name)
        newest = latest.get(key)
        if newest is None or (done is not None and newest.id <= done):
            continue
        rows = _history_after(instance, key, done, started)
        if done is None and not rows:
            done = newest.id  # all of it happened before the sensor started
        for row in rows:
            if row.status == AssetCheckExecutionRecordStatus.PLANNED:
                run = instance.get_run_record_by_id(row.run_id)
                if (
                    run is not None
                    and not run.dagster_run.is_finished
                    and now - row.create_timestamp < _RUN_WAIT_SECONDS
                ):
                    break  # that run evaluates it soon; what follows waits, so the order never changes
                done = row.id
                continue
            done = row.id
            evaluation = row.event.dagster_event.event_specific_data if row.event and row.event.dagster_event else None
            if not isinstance(evaluation, dg.AssetCheckEvaluation) or row.event is None:
                continue
            run_id = row.run_id or None
            verdicts.append(
                CheckVerdict(
                    id=f"check-{row.id}",
                    asset=key.asset_key.to_user_string(),
                    check=key.name,
                    partition=evaluation.partition,
                    passed=evaluation.passed,
                    severity=evaluation.severity.value,
                    description=evaluation.description or "",
                    details={label: metadata_text(value.value) for label, value in evaluation.metadata.items()},
                    run_id=run_id,
                    link=run_link(ui_url, run_id) if run_id else asset_checks_link(ui_url, key.asset_key.path),
                    occurred_at=row.event.timestamp,
                    per_partition=_partitioned(graph, key),
                )
            )
        if done is not None:
            cursor.checks[name] = done
    return verdicts


def _step_error(data: Any) -> str:
    """What went wrong in a failed step: a ``dg.Failure``'s description, else the innermost error's message."""
    user = getattr(data, "user_failure_data", None)
    if user is not None and user.description:
        return user.description
    error = getattr(data, "error", None)
    while error is not None and error.cause is not None:
        error = error.cause
    return error.message.strip() if error is not None else "no error recorded"


def run_failure_alerts(instance: dg.DagsterInstance, cursor: AlertCursor, ui_url: str, now: float) -> list[Alert]:
    """An alert per run that failed since the cursor; advances it."""
    alerts = []
    while True:
        records = instance.fetch_run_status_changes(
            dg.RunStatusChangeRecordsFilter(
                dg.DagsterEventType.RUN_FAILURE,
                after_storage_id=cursor.runs_after,
                after_timestamp=(cursor.started or now) if cursor.runs_after is None else None,
            ),
            limit=_PAGE,
            ascending=True,
        ).records
        for record in records:
            cursor.runs_after = record.storage_id
            alerts.append(_run_failure_alert(instance, record, ui_url))
        if len(records) < _PAGE:
            return alerts


def _run_failure_alert(instance: dg.DagsterInstance, record: dg.EventLogRecord, ui_url: str) -> Alert:
    run = instance.get_run_by_id(record.run_id)
    tags = run.tags if run else {}
    job = run.job_name if run else "unknown job"
    steps = {}
    for entry in instance.all_logs(record.run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        event = entry.dagster_event
        if event is not None and event.step_key:
            steps[event.step_key] = _step_error(event.event_specific_data)[:_MAX_ERROR_CHARS]
    failure = record.event_log_entry.dagster_event
    data = failure.event_specific_data if failure else None
    message = (failure.message if failure else None) or record.event_log_entry.message or "the run failed"
    if steps:
        description = "; ".join(f"{step}: {error}" for step, error in steps.items())
    elif getattr(data, "error", None) is not None:
        description = _step_error(data)[:_MAX_ERROR_CHARS]
    else:
        description = message
    node = tags.get(NODE_TAG)
    where = f" (node {node}, from {tags.get(FROM_TAG, 'start')})" if node else ""
    details = {"job": job, "run failure": message}
    if node:
        details["node"] = node
        details["read from"] = tags.get(FROM_TAG, "start")
    if "dagster/run_key" in tags:
        details["run key"] = tags["dagster/run_key"]
    for step, error in steps.items():
        details[f"step {step}"] = error
    return Alert(
        id=f"run-{record.storage_id}",
        kind="run_failure",
        severity="ERROR",
        title=f"[ERROR] run {record.run_id[:8]} of {job} failed{where}",
        description=description,
        link=run_link(ui_url, record.run_id),
        occurred_at=record.timestamp,
        partition=_run_partition(instance, record.run_id),
        run_id=record.run_id,
        details=details,
        dedup_key=f"run:{node}" if node else f"run:{job}",
    )


@dataclass
class TickReport:
    """What one tick of the alert sensor did, for its skip message and the tests."""

    new: list[Alert]
    delivered: list[Alert]
    owed: list[Alert]
    dropped: list[Alert]
    channels: list[str]

    def summary(self) -> str:
        if not self.channels:
            return f"no alert channel is configured; {len(self.new)} alert(s) not sent"
        parts = [f"{len(self.new)} new alert(s)", f"{len(self.delivered)} delivered to {', '.join(self.channels)}"]
        if self.owed:
            parts.append(f"{len(self.owed)} owed to a channel that failed")
        if self.dropped:
            parts.append(f"{len(self.dropped)} given up after {MAX_PENDING_SECONDS:.0f} s")
        return "; ".join(parts)


def alert_tick(
    instance: dg.DagsterInstance,
    config: PipelineConfig,
    graph: BaseAssetGraph | None,
    cursor_text: str | None,
    *,
    sensor: str = SENSOR,
    environ: Mapping[str, str] | None = None,
    now: float | None = None,
    log: Any = None,
) -> tuple[TickReport, str]:
    """One tick: derive the alerts since the saved cursor, deliver what is owed, and return the new cursor."""
    now = time.time() if now is None else now
    saved = AlertCursor.parse(cursor_text)
    cursor = AlertCursor(
        generation=saved.generation + 1,
        started=saved.started if saved.started is not None else now - FIRST_LOOKBACK_SECONDS,
        runs_after=saved.runs_after,
        checks=dict(saved.checks),
        book={scope: dict(entry) for scope, entry in saved.book.items()},
    )
    ui_url = config.alerts.ui_url
    channels = configured_channels(config.alerts, environ)
    redactor = Redactor.for_config(config, environ)
    ledger = KeyValueLedger(instance, sensor, [channel.name for channel in channels], cursor.generation)
    ledger.prune(saved.generation, (alert["id"] for alert in saved.pending))

    book = CheckBook(cursor.book)
    keys = sorted(graph.asset_check_keys, key=_check_name) if graph is not None else []
    new: list[Alert] = []
    for verdict in check_verdicts(instance, graph, keys, cursor, ui_url, now):
        alert = book.observe(verdict)
        if alert is not None:
            if alert.partition is None:
                alert = replace(alert, partition=_run_partition(instance, alert.run_id))
            new.append(alert)
    new += run_failure_alerts(instance, cursor, ui_url, now)
    new = [redactor.alert(alert) for alert in sorted(new, key=lambda a: (a.occurred_at, a.id))]
    cursor.book = book.state

    pending = [Alert.from_json(data) for data in saved.pending] + new
    dropped = [a for a in pending if now - a.occurred_at > MAX_PENDING_SECONDS] + pending[:-MAX_PENDING]
    pending = [a for a in pending[-MAX_PENDING:] if a not in dropped]
    for alert in dropped:
        if log is not None:
            log.error(f"alert {alert.id} ({alert.title}) given up: a channel did not take it in time")
    owed = deliver(pending, channels, ledger, deadline=time.monotonic() + TICK_BUDGET_SECONDS)
    cursor.pending = [alert.to_json() for alert in owed]
    delivered = [alert for alert in pending if alert not in owed] if channels else []
    if log is not None:
        for alert in delivered:
            log.info(f"alert {alert.id} sent: {alert.title}")
    return TickReport(new, delivered, owed, dropped, [c.name for c in channels]), cursor.dump()


def alert_sensor(config: PipelineConfig) -> dg.SensorDefinition:
    def evaluate(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        repository = context.repository_def
        graph = repository.asset_graph if repository is not None else None
        report, cursor = alert_tick(context.instance, config, graph, context.cursor, sensor=SENSOR, log=context.log)
        return dg.SensorResult(cursor=cursor, skip_reason=dg.SkipReason(report.summary()))

    return dg.SensorDefinition(
        name=SENSOR,
        evaluation_fn=evaluate,
        minimum_interval_seconds=config.alerts.min_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Announces every failed check (WARN or ERROR), its recovery, and every failed run, once, on each "
            "configured channel (webhook, Slack, email)."
        ),
    )


def alert_definitions(config: PipelineConfig) -> dg.Definitions:
    """The alert sensor; its channels are on when their environment variables are set."""
    return dg.Definitions(sensors=[alert_sensor(config)])
