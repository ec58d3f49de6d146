"""Checks of each closed window, run beside the micro-batches and never inside them.

Two partitioned checks per captured table, on the one hourly partitioning (a partitioned check is a Dagster
preview feature in 1.13; an unpartitioned check on a partitioned asset breaks once two partitions exist):

- ``window_expectations`` on the staged asset ``cassandra/<keyspace>/<table>``: the table's Great Expectations
  suite (the default one and ``checks.expectations``, see ``cdc_assets/expectations.py``) over every change
  staged in the window. Its severity is the expectations' own: ERROR when a ``critical`` one (Great
  Expectations' default) failed, WARN when only ``warning``/``info`` ones did; whoever writes an expectation
  knows what its failure means. Not blocking: the batches are in the warehouses already, and the blocking
  checks that keep a broken batch out of them run in the micro-batch itself.
- ``window_reconciliation`` on each destination asset ``<destination>/<keyspace>/<table>``: the destinations
  agree with each other and with a replay of the staged batches on every key the window touched
  (``cdc_assets/reconciliation.py``), severity ERROR: a destination that differs from Cassandra's semantics
  breaks the one property the pipeline serves. One op per table covers every destination: the replay, the
  costly part, is computed once, and every destination is read at the same ``now``. Each destination still
  gets its own result, on its own asset, so the UI shows which one is wrong.

The job ``window_checks`` runs them for one window, named by the run's ``dagster/partition`` tag: the tag
Dagster itself gives a partitioned run, so each result lands on that window of its asset. (Dagster 1.13 cannot
partition a job that selects asset checks only: ``define_asset_job`` infers the partitioning from the selected
assets and, with none, drops it, so the job is unpartitioned and the window travels in the tag.) The schedule
``window_checks_hourly`` launches it at ten past each hour for the hour that just closed, once (its run key is
the window): by then the last micro-batches of that hour are loaded, retries included, and a change still being
loaded somewhere leaves its key out as *in flight* rather than failing. A schedule, not a sensor: a window
closes on the clock, and a schedule's ticks are what a data engineer looks for (and turns off) in the UI. To
check another window, launch the job with the tag ``dagster/partition=<YYYY-MM-DD-HH:00>``, or execute the
checks of one partition from the asset's Checks tab.

Great Expectations is imported inside the expectations check only: neither the code location's load nor a
micro-batch run pays its ~3.5 s import.
"""

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from cdc_assets.cassandra_schema.tables import TableSchema
from cdc_assets.config import Expectation, PipelineConfig
from cdc_assets.defs.keys import CHDB_TAG, destination_key, staged_key
from cdc_assets.defs.ledger import consumed
from cdc_assets.defs.partitions import current_partition, hourly
from cdc_assets.expectations import (
    ExpectationConfigError,
    check_configured,
    default_expectations,
    outcomes_markdown,
    validate_window,
    window_frame,
)
from cdc_assets.masking import masked_table
from cdc_assets.reconciliation import (
    MAX_LISTED,
    Reconciliation,
    Replay,
    Verdict,
    history_is_whole,
    reconcile,
    touched_keys,
)
from cdc_assets.retry import describe_error
from cdc_assets.staging import StagedRange, list_ranges, position_key

JOB = "window_checks"
#: The run tag naming the window a run checks: Dagster's own partition tag.
WINDOW_TAG = "dagster/partition"
SCHEDULE = "window_checks_hourly"
EXPECTATIONS = "window_expectations"
RECONCILIATION = "window_reconciliation"
#: Minutes past the hour at which the window that just closed is checked: its last micro-batches (a few
#: seconds each) and their retries have loaded by then.
MINUTE_OFFSET = 10


def window_check_definitions(config: PipelineConfig, tables: Mapping[str, TableSchema]) -> dg.Definitions:
    """The per-window checks of every captured table, the job running them for a window, and its schedule.

    ``tables`` are the captured tables by ``keyspace.table`` (``captured_tables``). A configured expectation
    with an unknown name, or naming a column the table's window frame lacks, fails here, at load, naming the
    table and the expectation (without importing Great Expectations).
    """
    seen = {name: masked_table(table, config.masking.masks_for(table)) for name, table in tables.items()}
    check_configured(config.checks.expectations, seen)
    checks = [expectations_check(config, name) for name in tables]
    checks += [reconciliation_check(config, name) for name in tables]
    job = dg.define_asset_job(
        JOB,
        selection=dg.AssetSelection.checks(*checks),
        # One process for every check of the run: Great Expectations is imported once, and the in-process
        # ClickHouse engine (chdb) is opened by one process at a time.
        executor_def=dg.in_process_executor,
        tags=_job_tags(config),
        description=(
            "Checks one closed window: each table's expectation suite over its staged changes, and the "
            "destinations reconciled with each other and with a replay of the staged batches."
        ),
    )
    return dg.Definitions(asset_checks=checks, jobs=[job], schedules=[window_schedule(job)])


def _job_tags(config: PipelineConfig) -> dict[str, str]:
    # The run reads the in-process ClickHouse engine, which one process at a time may open: it takes the
    # same run slot as the micro-batches that write it.
    clickhouse = config.destinations.clickhouse
    if clickhouse is not None and os.environ.get(clickhouse.dsn_env, "").startswith("chdb://"):
        return {CHDB_TAG: "1"}
    return {}


def closed_window(moment: datetime) -> str:
    """The partition key of the hour that closed last before ``moment``."""
    return current_partition(moment - timedelta(hours=1))


def window_schedule(job: UnresolvedAssetJobDefinition) -> dg.ScheduleDefinition:
    """Launches ``job`` at ``MINUTE_OFFSET`` past each hour for the hour that just closed.

    Not ``build_schedule_from_partitioned_job``: it runs the last partition, which with ``end_offset=1`` is
    the hour still open.
    """

    @dg.schedule(
        name=SCHEDULE,
        job=job,
        cron_schedule=f"{MINUTE_OFFSET} * * * *",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"At :{MINUTE_OFFSET:02d} each hour, checks the window that just closed.",
    )
    def window_checks_hourly(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        return window_run_request(closed_window(context.scheduled_execution_time))

    return window_checks_hourly


def window_run_request(window: str) -> dg.RunRequest:
    """The run of the window checks for ``window`` (a partition key of the hourly partitioning)."""
    return dg.RunRequest(run_key=window, tags={WINDOW_TAG: window})


def _beside_a_load(context: dg.AssetCheckExecutionContext) -> bool:
    """Whether the run materializes assets: Dagster adds every check of the assets a run materializes unless
    the run names its checks, so a micro-batch or a backfill brings these along. They stand aside there (no
    result: the UI shows them skipped) and wait for a run of their own, which materializes nothing."""
    if context.run.asset_selection:
        context.log.debug("window checks run in runs of their own, not beside a load")
        return True
    return False


def _window(context: dg.AssetCheckExecutionContext) -> str:
    if not context.has_partition_key:
        raise dg.Failure(
            description=(
                f"the window checks run for one window: launch {JOB} with the tag "
                f"{WINDOW_TAG}=<YYYY-MM-DD-HH:00> (its schedule does), or execute the checks of one partition"
            ),
            allow_retries=False,
        )
    return context.partition_key


def _newest_schema(ranges: Sequence[StagedRange], table: str) -> TableSchema:
    """The table as the latest staged range defines it (masked): what the destinations have evolved to."""
    newest = max((r for r in ranges if table in r.tables), key=lambda r: r.staged_at)
    return newest.tables[table].schema


# --------------------------------------------------------------------------------------------------
# Expectations


def expectations_check(config: PipelineConfig, table: str) -> dg.AssetChecksDefinition:
    """``window_expectations`` on ``table``'s staged asset."""
    configured = list(config.checks.expectations.get(table, []))

    spec = dg.AssetCheckSpec(
        EXPECTATIONS,
        asset=staged_key(table),
        partitions_def=hourly,
        blocking=False,
        description=(
            f"The Great Expectations suite of {table} over every change staged in the window: the default "
            f"suite (keys, change kinds, positions, write times, value forms) and {len(configured)} configured "
            "expectation(s). ERROR when a critical expectation fails, WARN when only warnings do."
        ),
    )
    keyspace, name = table.split(".", 1)

    # A multi-asset check only for `can_subset`: its result is optional, so it can stand aside in a load run.
    @dg.multi_asset_check(name=f"{EXPECTATIONS}_{keyspace}_{name}", specs=[spec], can_subset=True)
    def window_expectations(context: dg.AssetCheckExecutionContext) -> Iterator[dg.AssetCheckResult]:
        if _beside_a_load(context):
            return
        yield _expectations_result(context, config, table, configured)

    return window_expectations


def _expectations_result(
    context: dg.AssetCheckExecutionContext, config: PipelineConfig, table: str, configured: Sequence[Expectation]
) -> dg.AssetCheckResult:
    window = _window(context)
    started = time.perf_counter()
    ranges = [r for r in list_ranges(config.staging.path, partitions=[window]) if table in r.tables]
    if not ranges:
        return dg.AssetCheckResult(
            asset_key=staged_key(table),
            check_name=EXPECTATIONS,
            passed=True,
            description=f"no change of {table} was staged in {window}",
            metadata={"window": window, "changes": dg.MetadataValue.int(0)},
        )
    frame = window_frame([(r.node, r.batch(table)) for r in ranges])
    try:
        result = validate_window(table, frame, default_expectations(_newest_schema(ranges, table)), configured)
    except ExpectationConfigError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None
    seconds = time.perf_counter() - started
    failed = result.failed
    if failed:
        names = ", ".join(f"{o.expectation}({o.column})" for o in failed[:5])
        description = f"{len(failed)} of {len(result.outcomes)} expectations failed on {table} in {window}: {names}"
    else:
        description = f"all {len(result.outcomes)} expectations hold for {result.changes:,} changes of {table}"
    context.log.info(f"{table} {window}: {description} ({seconds:.2f} s)")
    return dg.AssetCheckResult(
        asset_key=staged_key(table),
        check_name=EXPECTATIONS,
        passed=result.passed,
        severity=dg.AssetCheckSeverity.ERROR if result.critical else dg.AssetCheckSeverity.WARN,
        description=description,
        metadata={
            "window": window,
            "changes": dg.MetadataValue.int(result.changes),
            "staged ranges": dg.MetadataValue.int(len(ranges)),
            "expectations": dg.MetadataValue.int(len(result.outcomes)),
            "failed": dg.MetadataValue.int(len(failed)),
            "results": dg.MetadataValue.md(outcomes_markdown(result)),
            "duration (s)": dg.MetadataValue.float(round(seconds, 3)),
        },
    )


# --------------------------------------------------------------------------------------------------
# Reconciliation


def reconciliation_check(config: PipelineConfig, table: str) -> dg.AssetChecksDefinition:
    """``window_reconciliation`` on ``table``'s asset in every configured destination, as one op."""
    destinations = config.destinations.names
    specs = [
        dg.AssetCheckSpec(
            RECONCILIATION,
            asset=destination_key(destination, table),
            partitions_def=hourly,
            blocking=False,
            description=(
                f"Every key of {table} the window touched reads the same in {destination} as in the other "
                "destinations and as in a replay of the staged batches (count and digest of its rows)."
            ),
        )
        for destination in destinations
    ]
    keyspace, name = table.split(".", 1)

    @dg.multi_asset_check(
        name=f"{RECONCILIATION}_{keyspace}_{name}",
        specs=specs,
        can_subset=True,
        required_resource_keys=set(destinations),
    )
    def window_reconciliation(context: dg.AssetCheckExecutionContext) -> Iterator[dg.AssetCheckResult]:
        if _beside_a_load(context):
            return
        chosen = context.selected_asset_check_keys
        selected = [d for d in destinations if dg.AssetCheckKey(destination_key(d, table), RECONCILIATION) in chosen]
        yield from _reconcile_window(context, config, table, selected)

    return window_reconciliation


def _reconcile_window(
    context: dg.AssetCheckExecutionContext, config: PipelineConfig, table: str, destinations: Sequence[str]
) -> Iterator[dg.AssetCheckResult]:
    window = _window(context)
    started = time.perf_counter()
    # One moment for every side, whole seconds: the destinations and the model expire TTLs alike.
    now = datetime.now(UTC).replace(microsecond=0)
    root = config.staging.path
    ranges = list_ranges(root)
    window_ranges = [r for r in ranges if r.partition == window and table in r.tables]
    if not window_ranges:
        for destination in destinations:
            yield _result(destination, table, True, f"no change of {table} was staged in {window}", {"window": window})
        return
    schema = _newest_schema(ranges, table)
    window_batches = [r.batch(table) for r in window_ranges]
    keys = touched_keys(schema, window_batches)
    replay = Replay(schema, keys, window_batches)
    replayed_ranges = [r for r in ranges if table in r.tables]
    for staged in replayed_ranges:
        replay.add(staged.batch(table))
    replayed = replay.state(now)
    exact = history_is_whole(ranges)

    # What each destination has yet to load is read before the destinations, and what was staged meanwhile
    # after them: changes to a key in either may or may not be visible yet, so the key is left out.
    pending = _pending(context.instance, table, ranges, destinations)
    states: dict[str, list[dict[str, Any]]] = {}
    errors: dict[str, str] = {}
    for destination in destinations:
        try:
            target = getattr(context.resources, destination).open()
            try:
                states[destination] = target.current_state(schema, now=now, keys=list(keys.values()))
            finally:
                target.close()
        except Exception as error:  # one destination out of reach must not hide the others' verdicts
            errors[destination] = describe_error(error)
    staged_meanwhile = _staged_since(root, ranges, [current_partition(now), current_partition()])
    in_flight_ranges = {r.directory: r for rs in pending.values() for r in rs}
    in_flight_ranges.update({r.directory: r for r in staged_meanwhile})
    in_flight = set()
    for staged in in_flight_ranges.values():
        if table in staged.tables:
            in_flight.update(key for key in touched_keys(schema, [staged.batch(table)]) if key in keys)

    outcome = reconcile(schema, keys, replayed, states, in_flight=in_flight, exact=exact)
    seconds = time.perf_counter() - started
    summary = _destinations_markdown(outcome, errors)
    shared: dict[str, Any] = {
        "window": window,
        "now": now.isoformat(),
        "keys touched": dg.MetadataValue.int(outcome.touched),
        "keys compared": dg.MetadataValue.int(outcome.compared),
        "keys in flight": dg.MetadataValue.int(outcome.in_flight),
        "replay": (
            f"{'exact: the whole staged history' if exact else 'contained: staged history since the retention'}"
            f" ({len(replayed_ranges)} staged ranges, {replay.changes:,} changes of the touched keys)"
        ),
        "replay rows": dg.MetadataValue.int(outcome.replay_rows),
        "replay digest": outcome.replay_digest,
        "destinations": dg.MetadataValue.md(summary),
        "duration (s)": dg.MetadataValue.float(round(seconds, 3)),
    }
    if outcome.in_flight:
        behind = ", ".join(f"{d} ({len(rs)} range(s))" for d, rs in pending.items() if rs) or "none"
        shared["in flight"] = f"still to load: {behind}; staged during the check: {len(staged_meanwhile)} range(s)"
    context.log.info(
        f"{table} {window}: {outcome.compared:,} of {outcome.touched:,} touched keys compared in "
        f"{', '.join(destinations)} ({seconds:.2f} s)"
    )
    for destination in destinations:
        if destination in errors:
            description = f"{destination}: {table} could not be read: {errors[destination]}"
            yield _result(destination, table, False, description, shared)
            continue
        verdict = outcome.verdicts[destination]
        metadata = {
            **shared,
            "rows": dg.MetadataValue.int(verdict.rows),
            "digest": verdict.digest,
            "disagreeing keys": dg.MetadataValue.int(len(verdict.disagreements)),
        }
        if verdict.disagreements:
            metadata["disagreements"] = dg.MetadataValue.md(_disagreements_markdown(verdict))
        yield _result(destination, table, verdict.passed, _describe(verdict, outcome, window), metadata)


def _result(
    destination: str, table: str, passed: bool, description: str, metadata: Mapping[str, Any]
) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=destination_key(destination, table),
        check_name=RECONCILIATION,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata=dict(metadata),
    )


def _pending(
    instance: dg.DagsterInstance, table: str, ranges: Sequence[StagedRange], destinations: Sequence[str]
) -> dict[str, list[StagedRange]]:
    """Per destination, the staged ranges of ``table`` its live loads have not consumed yet.

    A node the destination has no consumed position for is not counted as pending: the keys are compared,
    since leaving out everything a destination never recorded would hide what it holds.
    """
    pending = {}
    for destination in destinations:
        positions = consumed(instance, destination, table) or {}
        pending[destination] = [
            r
            for r in ranges
            if table in r.tables
            and r.node in positions
            and position_key(r.after) >= position_key(positions[r.node].position)
        ]
    return pending


def _staged_since(root: Any, before: Sequence[StagedRange], partitions: Sequence[str]) -> list[StagedRange]:
    """Ranges staged (in ``partitions``, where new ranges go) that were not there when ``before`` was listed."""
    known = {r.directory for r in before}
    return [r for r in list_ranges(root, partitions=set(partitions)) if r.directory not in known]


def _describe(verdict: Verdict, outcome: Reconciliation, window: str) -> str:
    name = verdict.destination
    if not verdict.disagreements:
        others = [d for d in outcome.verdicts if d != name]
        against = "the replay" + (f" and {', '.join(others)}" if others else "")
        skipped = f" ({outcome.in_flight} in flight left out)" if outcome.in_flight else ""
        keys = f"all {outcome.compared:,} keys of {outcome.table} touched in {window}"
        return f"{name} agrees with {against} on {keys}{skipped}"
    first = "; ".join(d.key for d in verdict.disagreements[:3])
    more = f" and {len(verdict.disagreements) - 3} more" if len(verdict.disagreements) > 3 else ""
    return (
        f"{name} disagrees on {len(verdict.disagreements)} of {outcome.compared:,} keys of {outcome.table} touched "
        f"in {window}: {first}{more}"
    )


def _disagreements_markdown(verdict: Verdict) -> str:
    lines = [
        "| key | rows | replay rows | digest | replay digest | what differs |",
        "|---|---|---|---|---|---|",
    ]
    for item in verdict.disagreements[:MAX_LISTED]:
        cells = [
            f"`{item.key}`",
            str(item.rows),
            str(item.replay_rows),
            item.digest,
            item.replay_digest,
            item.reason,
        ]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    if len(verdict.disagreements) > MAX_LISTED:
        lines.append(f"| … and {len(verdict.disagreements) - MAX_LISTED} more | | | | | |")
    return "\n".join(lines)


def _destinations_markdown(outcome: Reconciliation, errors: Mapping[str, str]) -> str:
    lines = ["| destination | rows | digest | disagreeing keys |", "|---|---|---|---|"]
    lines.append(f"| replay | {outcome.replay_rows:,} | {outcome.replay_digest} | |")
    for name, verdict in outcome.verdicts.items():
        lines.append(f"| {name} | {verdict.rows:,} | {verdict.digest} | {len(verdict.disagreements)} |")
    for name in errors:
        lines.append(f"| {name} | | | could not be read |")
    return "\n".join(lines)
