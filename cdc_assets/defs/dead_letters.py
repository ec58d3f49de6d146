"""Dead letters as an asset of their own, and their replay once the cause is fixed.

The **asset** ``dead_letters`` reports the dead-letter store (``cdc_assets.dead_letters``): counts by table,
stage and reason, the oldest pending letter, how many were replayed. It is not partitioned: the store is one
ledger across every hour (a letter recorded at 14:00 may be replayed days later), and its report is the
store's state now, not the content of a window. A **sensor** keeps it fresh without a person: when the store
changes, it records a materialization carrying the new report (no run is needed, so it works with the daemon
alone, at the cadence of ``alerts.min_interval_seconds``).

The **replay** (:func:`replay_dead_letters`, behind ``cdc-assets dead-letters replay`` and the job
``replay_dead_letters``) loads pending letters into the destinations:

- a reader letter (a mutation that could not be decoded) is decoded again with the *current* schema from the
  configured source, masked as the pipeline masks, and loaded into every configured destination;
- a destination letter (a change a destination refused) is loaded again into that destination, conformed to
  the table's current definition.

Loads go under load ids of their own, ``dead-letter/<first id>-<last id>.<digest>/<keyspace.table>``; the digest
covers each letter's id and failed attempts, so a load that was recorded while the destination set a change
aside is never skipped by a later replay. Replayed changes carry their own write times and merge like any
change, so replaying twice, or in any order with the live flow, converges. A letter that still fails stays
pending with the new reason; a replayed one is marked with when and the outcome.
"""

import hashlib
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import pyarrow as pa

from cdc_assets.cassandra_schema.system_tables import SCHEMA_KEYSPACE
from cdc_assets.cassandra_schema.tables import SchemaRegistry, TableSchema
from cdc_assets.change_batch import ChangeBatchBuilder, change_batch_schema
from cdc_assets.commitlog.descriptor import DECODABLE_VERSIONS, MESSAGING_VERSIONS, parse_segment_name
from cdc_assets.commitlog.errors import MutationDecodeError
from cdc_assets.commitlog.mutation import MutationDecoder
from cdc_assets.config import PipelineConfig, PostgresDeadLetters
from cdc_assets.dead_letters import (
    DeadLetter,
    DeadLetters,
    DeadLetterSummary,
    StoredLetter,
    open_dead_letters,
)
from cdc_assets.defs.cassandra.schema import captured_tables, load_registry
from cdc_assets.defs.clickhouse.resources import ClickHouseResource
from cdc_assets.defs.keys import CHDB_TAG
from cdc_assets.defs.postgres.resources import PostgresResource
from cdc_assets.defs.timescale.resources import TimescaleResource
from cdc_assets.destinations.base import Destination
from cdc_assets.masking import mask_batch, masked_table
from cdc_assets.retry import describe_error, retry

DEAD_LETTERS_KEY = dg.AssetKey(["dead_letters"])
DEAD_LETTERS_GROUP = "dead_letters"
#: Replay load ids start with this; a node name cannot (node names have no hyphen), so ledger recovery by
#: ``<node>/`` never mistakes a replay for a live load.
LOAD_ID_PREFIX = "dead-letter/"
READER = "reader"
#: Letters replayed per load: bounds memory, and a failure fails only the letters of its chunk.
CHUNK_LETTERS = 5_000
_MAX_GROUPS = 50


class ReplayError(Exception):
    """A letter (or the whole replay) that cannot be replayed; the message says why, never a secret."""


@dataclass
class ReplayReport:
    """What a replay did (or, dry, would do): outcome by letter id, reasons of the letters still pending."""

    dry_run: bool
    destinations: tuple[str, ...]
    replayed: dict[int, str] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    #: Changes loaded (dry: that would be), by ``keyspace.table``.
    changes: Counter[str] = field(default_factory=Counter)
    #: Changes a destination refused again and set aside as letters of their own, by destination.
    set_aside: Counter[str] = field(default_factory=Counter)

    def summary_line(self) -> str:
        verb = "would replay" if self.dry_run else "replayed"
        tables = ", ".join(f"{name} {count:,}" for name, count in sorted(self.changes.items())) or "none"
        line = (
            f"{verb} {len(self.replayed):,} letters ({sum(self.changes.values()):,} changes: {tables}) "
            f"into {', '.join(self.destinations) or 'no destination'}; {len(self.failed):,} still pending"
        )
        if self.set_aside:
            refused = ", ".join(f"{name} {count:,}" for name, count in sorted(self.set_aside.items()))
            line += f"; set aside again as letters of their own: {refused}"
        return line


# -- secrets -------------------------------------------------------------------------------------------


def secret_redactor(config: PipelineConfig) -> Callable[[str], str]:
    """A function blanking the DSNs (and their passwords) the configuration names, and any password pattern."""
    variables = [getattr(config.destinations, name).dsn_env for name in config.destinations.names]
    if isinstance(config.dead_letters, PostgresDeadLetters):
        variables.append(config.dead_letters.dsn_env)
    secrets: set[str] = set()
    for variable in variables:
        dsn = os.environ.get(variable, "")
        if dsn:
            secrets.add(dsn)
            secrets.update(_passwords(dsn))

    def redact(text: str) -> str:
        for secret in sorted(secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    return redact


def _passwords(dsn: str) -> list[str]:
    from urllib.parse import urlsplit

    from psycopg.conninfo import conninfo_to_dict

    found = []
    if "://" in dsn:
        password = urlsplit(dsn).password
        if password:
            found.append(password)
    else:
        try:
            password = conninfo_to_dict(dsn).get("password")
        except Exception:  # an unparsable DSN simply has no password to find
            password = None
        if password:
            found.append(str(password))
    return found


# -- the replay ----------------------------------------------------------------------------------------


class _Refusals:
    """Stands in for the dead-letter store while a destination loads replayed changes: notes what it refuses.

    ``forward`` is the real store when refusals become letters of their own (changes of a replayed reader
    letter, as in the live flow), None when they are the replayed letters failing again.
    """

    def __init__(self, forward: DeadLetters | None):
        self.forward = forward
        self.appended = 0
        self.letters: list[DeadLetter] = []

    def append(self, letter: DeadLetter) -> None:
        self.appended += 1
        self.letters.append(letter)
        if self.forward is not None:
            self.forward.append(letter)


def open_destinations(config: PipelineConfig) -> dict[str, Destination]:
    """Every configured destination, opened as the pipeline's resources open them."""
    setting = str(config.dead_letters)
    destinations = config.destinations
    resources: dict[str, PostgresResource | ClickHouseResource | TimescaleResource] = {}
    if destinations.postgres is not None:
        resources["postgres"] = PostgresResource(dead_letters=setting, **destinations.postgres.model_dump())
    if destinations.clickhouse is not None:
        resources["clickhouse"] = ClickHouseResource(dead_letters=setting, **destinations.clickhouse.model_dump())
    if destinations.timescaledb is not None:
        resources["timescaledb"] = TimescaleResource(dead_letters=setting, **destinations.timescaledb.model_dump())
    opened: dict[str, Destination] = {}
    try:
        for name, resource in resources.items():
            opened[name] = resource.open()
    except dg.Failure as failure:
        for destination in opened.values():
            destination.close()
        raise ReplayError(failure.description or str(failure)) from None
    return opened


def replay_dead_letters(
    config: PipelineConfig,
    *,
    table: str | None = None,
    stage: str | None = None,
    dry_run: bool = False,
    store: DeadLetters | None = None,
    destinations: Mapping[str, Destination] | None = None,
    log: Any = None,
) -> ReplayReport:
    """Replay the pending letters (of ``table`` and ``stage`` when given) into the destinations.

    ``store`` and ``destinations`` default to the configured ones (opened here and closed at the end). With
    ``dry_run`` letters are decoded and conformed but nothing is loaded or marked.
    """
    registry = load_registry(config.schema)
    tables = captured_tables(config, registry)
    own_store = store is None
    store = store if store is not None else open_dead_letters(config.dead_letters)
    own_destinations = destinations is None and not dry_run
    try:
        if destinations is None:
            destinations = open_destinations(config) if not dry_run else {}
        replay = _Replay(config, tables, store, destinations, secret_redactor(config), dry_run, log)
        decoders = MutationDecoders(registry)
        for chunk in _chunks(store.pending(table=table, stage=stage), CHUNK_LETTERS):
            readers = [stored for stored in chunk if stored.letter.stage == READER]
            if readers:
                replay.reader_letters(readers, decoders)
            by_destination: dict[tuple[str, str | None], list[StoredLetter]] = defaultdict(list)
            for stored in chunk:
                if stored.letter.stage != READER:
                    by_destination[(stored.letter.stage, stored.letter.table)].append(stored)
            for (name, table_name), letters in sorted(by_destination.items(), key=lambda item: str(item[0])):
                replay.destination_letters(name, table_name, letters)
    finally:
        if own_destinations and destinations is not None:
            for destination in destinations.values():
                destination.close()
        if own_store:
            store.close()
    return replay.report


def _chunks(letters: Iterable[StoredLetter], size: int) -> Iterator[list[StoredLetter]]:
    chunk: list[StoredLetter] = []
    for stored in letters:
        chunk.append(stored)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class MutationDecoders:
    """A decoder per messaging version over the current schema; which one a letter needs, from its segment name."""

    def __init__(self, registry: SchemaRegistry):
        self.registry = registry
        self._decoders: dict[int, MutationDecoder] = {}

    def decode(self, letter: DeadLetter) -> tuple[int, list[tuple[TableSchema, list[dict[str, Any]]]]]:
        """The segment id and the (table, changes) of a reader letter; MutationDecodeError if it still fails."""
        named = parse_segment_name(letter.segment)
        if named is None:
            raise ReplayError(f"segment {letter.segment!r} is not a commit log file name: its version is unknown")
        version, segment_id = named
        if version not in DECODABLE_VERSIONS:
            raise ReplayError(f"commit log version {version} holds pre-3.0 mutations, which are not decoded")
        messaging = MESSAGING_VERSIONS[version]
        decoder = self._decoders.get(messaging)
        if decoder is None:
            decoder = self._decoders[messaging] = MutationDecoder(self.registry, messaging)
        return segment_id, decoder.decode(letter.payload)


class _Replay:
    """One replay's state: what it loads with, and its report."""

    def __init__(
        self,
        config: PipelineConfig,
        tables: Mapping[str, TableSchema],
        store: DeadLetters,
        destinations: Mapping[str, Destination],
        redact: Callable[[str], str],
        dry_run: bool,
        log: Any,
    ):
        self.config = config
        self.tables = tables
        self.store = store
        self.destinations = destinations
        self.redact = redact
        self.dry_run = dry_run
        self.log = log
        names = tuple(destinations) if destinations else config.destinations.names
        self.report = ReplayReport(dry_run, names)

    def reader_letters(self, letters: Sequence[StoredLetter], decoders: MutationDecoders) -> None:
        """Decode each letter with the current schema; load the changes of the captured tables everywhere."""
        builders: dict[str, ChangeBatchBuilder] = {}
        contributors: dict[str, list[int]] = defaultdict(list)
        failures: dict[int, str] = {}
        nothing: list[int] = []
        origins: dict[tuple[str, int], list[int]] = defaultdict(list)
        for stored in letters:
            try:
                segment_id, updates = decoders.decode(stored.letter)
            except (MutationDecodeError, ReplayError) as error:
                failures[stored.id] = f"replay: {error}"
                continue
            touched = False
            for decoded, changes in updates:
                name = decoded.qualified_name
                if decoded.keyspace == SCHEMA_KEYSPACE or not decoded.cdc or name not in self.tables:
                    continue
                builder = builders.setdefault(name, ChangeBatchBuilder(self.tables[name]))
                for change in changes:
                    builder.append(segment_id, stored.letter.position, change)
                contributors[name].append(stored.id)
                touched = touched or bool(changes)
            if touched:
                origins[(str(segment_id), stored.letter.position)].append(stored.id)
            else:
                nothing.append(stored.id)
        batches = {}
        for name, builder in builders.items():
            if len(builder):
                batches[name] = mask_batch(self.tables[name], builder.finish(), self.config.masking)
        loaded = [stored for stored in letters if stored.id not in failures and stored.id not in nothing]
        tag = _chunk_tag(loaded)
        refused: dict[int, list[str]] = defaultdict(list)
        for name, (masked, batch) in batches.items():
            self.report.changes[name] += batch.num_rows
            if self.dry_run:
                continue
            for destination_name, destination in self.destinations.items():
                refusals = _Refusals(forward=self.store)
                error = self._load(destination, refusals, masked, batch, f"{LOAD_ID_PREFIX}{tag}/{name}")
                if error is not None:
                    for letter_id in contributors[name]:
                        failures.setdefault(letter_id, f"replay into {destination_name}: {error}")
                for letter in refusals.letters:
                    self.report.set_aside[destination_name] += 1
                    for letter_id in origins.get((letter.segment, letter.position), []):
                        refused[letter_id].append(destination_name)
        into = ", ".join(self.report.destinations)
        outcomes: dict[int, str] = {
            letter_id: "no change of a captured table: nothing to load" for letter_id in nothing
        }
        for stored in loaded:
            if stored.id in failures:
                continue
            outcome = f"{'would load' if self.dry_run else 'loaded'} into {into} as {LOAD_ID_PREFIX}{tag}"
            if refused.get(stored.id):
                names = ", ".join(sorted(set(refused[stored.id])))
                outcome += f"; refused by {names}, set aside there as a letter of its own"
            outcomes[stored.id] = outcome
        self._finish(outcomes, failures)

    def destination_letters(self, name: str, table_name: str | None, letters: Sequence[StoredLetter]) -> None:
        """Load changes a destination refused into that destination again, in the table's current definition."""
        failures: dict[int, str] = {}
        destination = self.destinations.get(name)
        table = self.tables.get(table_name or "")
        if name not in self.config.destinations.names:
            reason = f"replay: {name} is not a configured destination"
            self._finish({}, {stored.id: reason for stored in letters})
            return
        if table is None:
            reason = f"replay: {table_name} is not a captured table of the configuration"
            self._finish({}, {stored.id: reason for stored in letters})
            return
        masked = masked_table(table, self.config.masking.masks_for(table))
        schema = change_batch_schema(masked)
        parts: list[pa.RecordBatch] = []
        conformed: list[StoredLetter] = []
        for stored in letters:
            try:
                parts.append(_conform(_ipc_batch(stored.letter.payload), schema, masked))
            except ReplayError as error:
                failures[stored.id] = f"replay: {error}"
                continue
            conformed.append(stored)
        tag = _chunk_tag(conformed)
        outcomes: dict[int, str] = {}
        if parts:
            batch = pa.Table.from_batches(parts, schema=schema).combine_chunks().to_batches()[0]
            self.report.changes[masked.qualified_name] += batch.num_rows
            error = None
            refusals = _Refusals(forward=None)
            if not self.dry_run:
                assert destination is not None
                error = self._load(
                    destination, refusals, masked, batch, f"{LOAD_ID_PREFIX}{tag}/{masked.qualified_name}"
                )
            again = {(letter.segment, letter.position): letter.reason for letter in refusals.letters}
            for stored in conformed:
                if error is not None:
                    failures[stored.id] = f"replay into {name}: {error}"
                elif (stored.letter.segment, stored.letter.position) in again:
                    failures[stored.id] = again[(stored.letter.segment, stored.letter.position)]
                else:
                    verb = "would load" if self.dry_run else "loaded"
                    outcomes[stored.id] = f"{verb} into {name} as {LOAD_ID_PREFIX}{tag}"
        self._finish(outcomes, failures)

    def _load(
        self, destination: Destination, refusals: _Refusals, table: TableSchema, batch: pa.RecordBatch, load_id: str
    ) -> str | None:
        """Load ``batch`` (retrying transient errors) with ``refusals`` as the store; the error's text, if it failed."""
        kept = getattr(destination, "dead_letters", None)
        destination.dead_letters = refusals  # type: ignore[attr-defined]

        def attempt() -> None:
            destination.ensure_table(table)
            destination.load(table, batch, load_id=load_id)

        try:
            retry(attempt, attempts=self.config.retries.max_retries + 1, base_delay=0.5, max_delay=5.0, what=load_id)
        except Exception as error:  # any failure keeps the letters pending, with its reason
            return self.redact(describe_error(error))
        finally:
            destination.dead_letters = kept  # type: ignore[attr-defined]
        if self.log is not None:
            self.log.info(f"{destination.name}: loaded {load_id} ({batch.num_rows:,} changes)")
        return None

    def _finish(self, outcomes: Mapping[int, str], failures: Mapping[int, str]) -> None:
        failures = {letter_id: self.redact(reason) for letter_id, reason in failures.items()}
        self.report.replayed.update(outcomes)
        self.report.failed.update(failures)
        if self.dry_run:
            return
        by_outcome: dict[str, list[int]] = defaultdict(list)
        for letter_id, outcome in outcomes.items():
            by_outcome[outcome].append(letter_id)
        for outcome, ids in by_outcome.items():
            self.store.mark_replayed(ids, outcome)
        if failures:
            self.store.mark_failed(failures)


def _chunk_tag(letters: Sequence[StoredLetter]) -> str:
    """``<first id>-<last id>.<digest>``: the digest of each letter's id and failed attempts names the content."""
    if not letters:
        return "none"
    digest = hashlib.sha256(",".join(f"{s.id}:{s.attempts}" for s in letters).encode()).hexdigest()[:12]
    return f"{letters[0].id}-{letters[-1].id}.{digest}"


def _ipc_batch(payload: bytes) -> pa.RecordBatch:
    try:
        return pa.ipc.open_stream(payload).read_next_batch()
    except (pa.ArrowInvalid, StopIteration) as error:
        raise ReplayError(f"the payload is not an Arrow IPC stream of a change batch: {error}") from None


def _cql(schema_field: pa.Field) -> str:
    metadata = schema_field.metadata or {}
    return metadata.get(b"cdc_assets.cql_type", str(schema_field.type).encode()).decode()


def _conform(batch: pa.RecordBatch, schema: pa.Schema, table: TableSchema) -> pa.RecordBatch:
    """``batch`` in ``schema``: columns added since are null; a dropped column's values go, as Cassandra drops them."""
    dropped = {column.name for column in table.dropped}
    unknown = [f.name for f in batch.schema if schema.get_field_index(f.name) < 0 and f.name not in dropped]
    if unknown:
        raise ReplayError(f"the current schema of {table.qualified_name} lacks column(s) {', '.join(unknown)}")
    columns = []
    for target in schema:
        index = batch.schema.get_field_index(target.name)
        if index < 0:
            columns.append(pa.nulls(batch.num_rows, target.type))
            continue
        source = batch.schema.field(index)
        if source.type != target.type:
            raise ReplayError(
                f"{table.qualified_name}.{target.name} is {_cql(source)} in the letter and {_cql(target)} now"
            )
        columns.append(batch.column(index))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


# -- the report ----------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def report_metadata(
    summary: DeadLetterSummary, store: DeadLetters, tables: Iterable[str], now: datetime | None = None
) -> dict[str, Any]:
    """The ``dead_letters`` asset's metadata: counts by table, stage and reason, the oldest pending, replays."""
    captured = set(tables)
    now = now or datetime.now(UTC)
    rows = ["| table | stage | reason | pending | replayed |", "|---|---|---|---:|---:|"]
    groups = sorted(summary.groups, key=lambda g: (-g.pending, -g.replayed, str(g.table), g.stage, g.reason))
    for group in groups[:_MAX_GROUPS]:
        name = "unknown table" if group.table is None else f"`{group.table}`"
        if group.table is not None and group.table not in captured:
            name += " (not captured)"
        rows.append(f"| {name} | {group.stage} | {_cell(group.reason)} | {group.pending:,} | {group.replayed:,} |")
    if len(groups) > _MAX_GROUPS:
        rest = groups[_MAX_GROUPS:]
        rows.append(
            f"| … {len(rest)} more | | | {sum(g.pending for g in rest):,} | {sum(g.replayed for g in rest):,} |"
        )
    metadata: dict[str, Any] = {
        "store": str(store),
        "letters": dg.MetadataValue.int(summary.total),
        "pending": dg.MetadataValue.int(summary.pending),
        "replayed": dg.MetadataValue.int(summary.replayed),
        "by table, stage and reason": dg.MetadataValue.md("\n".join(rows) if summary.groups else "No dead letters."),
    }
    oldest = summary.oldest_pending
    if oldest is not None:
        letter = oldest.letter
        recorded = datetime.fromisoformat(letter.recorded_at)
        metadata["oldest pending"] = (
            f"#{oldest.id}: {letter.table or 'unknown table'} ({letter.stage}) at {letter.segment}:{letter.position}, "
            f"recorded {recorded.isoformat()}: {letter.reason}"
        )
        metadata["oldest pending recorded at"] = dg.MetadataValue.timestamp(recorded)
        metadata["oldest pending age (s)"] = dg.MetadataValue.float(round((now - recorded).total_seconds(), 3))
    if summary.last_replayed_at is not None:
        metadata["last replayed at"] = dg.MetadataValue.timestamp(summary.last_replayed_at)
    return metadata


def read_report(config: PipelineConfig, tables: Iterable[str]) -> tuple[str, dict[str, Any]]:
    """The store's version and its report (what the asset and the sensor record)."""
    store = open_dead_letters(config.dead_letters)
    try:
        return store.version(), report_metadata(store.summary(), store, tables)
    finally:
        store.close()


# -- the Dagster definitions ---------------------------------------------------------------------------


class ReplayConfig(dg.Config):
    """Which pending letters to replay: by table (``keyspace.table``) and stage (``reader`` or a destination)."""

    table: str | None = None
    stage: str | None = None
    dry_run: bool = False


def dead_letter_definitions(config: PipelineConfig, tables: Mapping[str, TableSchema]) -> dg.Definitions:
    """The ``dead_letters`` asset, the sensor that refreshes it, and the ``replay_dead_letters`` job."""
    captured = sorted(tables)
    kinds = {"postgres"} if isinstance(config.dead_letters, PostgresDeadLetters) else set()

    @dg.asset(
        key=DEAD_LETTERS_KEY,
        group_name=DEAD_LETTERS_GROUP,
        kinds=kinds,
        description=(
            "Changes set aside by the reader or a destination, with the reason: counts by table, stage and reason, "
            "the oldest pending letter, how many were replayed. Replay them with `cdc-assets dead-letters replay` "
            "or the job replay_dead_letters once the cause is fixed. Refreshed by the sensor dead_letters_report."
        ),
    )
    def dead_letters() -> dg.MaterializeResult:
        _, metadata = read_report(config, captured)
        return dg.MaterializeResult(metadata=metadata)

    @dg.sensor(
        name="dead_letters_report",
        minimum_interval_seconds=config.alerts.min_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Records a new report of the dead_letters asset whenever the dead-letter store changes.",
    )
    def dead_letters_report(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        version, metadata = read_report(config, captured)
        if version == context.cursor:
            return dg.SkipReason("the dead-letter store has not changed")
        return dg.SensorResult(
            asset_events=[dg.AssetMaterialization(asset_key=DEAD_LETTERS_KEY, metadata=metadata)], cursor=version
        )

    pipeline = config

    @dg.op(name="replay_pending_letters")
    def replay_op(context: dg.OpExecutionContext, config: ReplayConfig) -> None:
        report = replay_dead_letters(
            pipeline, table=config.table, stage=config.stage, dry_run=config.dry_run, log=context.log
        )
        context.log.info(report.summary_line())
        if report.failed:
            reasons = Counter(report.failed.values())
            raise dg.Failure(
                description=f"{len(report.failed):,} letters still cannot be replayed; they stay pending",
                metadata={"reasons": dg.MetadataValue.md("\n".join(f"- {n:,}: {r}" for r, n in reasons.most_common()))},
                allow_retries=False,
            )

    tags: dict[str, str] = {}
    clickhouse = pipeline.destinations.clickhouse
    if clickhouse is not None and os.environ.get(clickhouse.dsn_env, "").startswith("chdb://"):
        # One chdb run at a time: the in-process engine serves one process per data path.
        tags[CHDB_TAG] = "1"

    @dg.job(
        name="replay_dead_letters",
        tags=tags,
        description="Replay pending dead letters into the destinations (set table, stage or dry_run in the op config).",
    )
    def replay_job() -> None:
        replay_op()

    return dg.Definitions(assets=[dead_letters], sensors=[dead_letters_report], jobs=[replay_job])
