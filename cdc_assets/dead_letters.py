"""The dead-letter store: changes set aside with where they came from and why, never silently dropped.

Two stores offer one interface (:class:`DeadLetters`), chosen by the ``dead_letters`` setting of the pipeline
configuration through :func:`open_dead_letters`:

- a path: :class:`DeadLetterStore`, an append-only JSON-lines file, its replay outcomes in a file beside it;
- ``{dsn_env, schema_prefix}``: :class:`PostgresDeadLetterStore`, the table ``"<schema_prefix>_cdc".dead_letters``.

A letter is known by its origin: the stage that set it aside, the segment and position of its entry, its table,
and its payload. Storing a letter whose origin is already stored does nothing, so a retried run (a range read
again, a load retried) never stores a letter twice. The payload belongs to the origin because one commit log
entry can hold several changes of one table, and a destination refusing two of them sets aside two letters.

A stored letter is *pending* until a replay (``cdc-assets dead-letters replay``) loads it; it is then marked
with when and the outcome. A replay that fails keeps it pending with the new reason and one more attempt.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import logging
import os
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from cdc_assets.config import PostgresDeadLetters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeadLetter:
    """One thing that could not be read or loaded.

    ``stage`` says who set it aside (``reader`` or a destination name); ``segment``/``position`` locate
    the entry in the commit log (the logical end offset of the entry); ``payload`` keeps the raw bytes
    (the serialized mutation) so nothing is lost and it can be replayed once the cause is fixed.
    """

    stage: str
    reason: str
    segment: str
    position: int
    table: str | None = None
    payload: bytes = b""
    recorded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def to_json(self) -> str:
        record = asdict(self)
        record["payload"] = base64.b64encode(self.payload).decode()
        return json.dumps(record, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> DeadLetter:
        record = json.loads(line)
        record["payload"] = base64.b64decode(record["payload"])
        return cls(**record)

    @property
    def origin(self) -> tuple[str, str, int, str, str]:
        """What makes two letters one: stage, segment, position, table and the payload's SHA-256."""
        return (self.stage, self.segment, self.position, self.table or "", hashlib.sha256(self.payload).hexdigest())


@dataclass(frozen=True)
class StoredLetter:
    """A letter as the store holds it: its id, and what replays made of it."""

    id: int
    letter: DeadLetter
    replayed_at: datetime | None = None
    replay_outcome: str | None = None
    #: Replays that failed to load it; part of the load ids of the next replay, so none of them is skipped.
    attempts: int = 0

    @property
    def pending(self) -> bool:
        return self.replayed_at is None


@dataclass(frozen=True)
class LetterGroup:
    """Letters of one table, stage and reason: how many wait for a replay, how many were replayed."""

    table: str | None
    stage: str
    reason: str
    pending: int
    replayed: int


@dataclass(frozen=True)
class DeadLetterSummary:
    """What the ``dead_letters`` asset reports: counts by table, stage and reason, the oldest pending letter."""

    groups: list[LetterGroup]
    #: The oldest pending letter, its payload left out.
    oldest_pending: StoredLetter | None
    last_replayed_at: datetime | None

    @property
    def total(self) -> int:
        return sum(group.pending + group.replayed for group in self.groups)

    @property
    def pending(self) -> int:
        return sum(group.pending for group in self.groups)

    @property
    def replayed(self) -> int:
        return sum(group.replayed for group in self.groups)


class DeadLetterStoreError(Exception):
    """The store cannot be opened, read or written; the message names the store, never a secret."""


class DeadLetters(Protocol):
    """What every dead-letter store offers: the reader and the destinations append, replays read and mark."""

    #: Letters this object was handed: what one read or load set aside, for its metadata.
    appended: int

    def append(self, letter: DeadLetter) -> None:
        """Store ``letter`` durably before returning, unless a letter of the same origin is stored already."""

    def __iter__(self) -> Iterator[DeadLetter]:
        """Every stored letter, oldest first."""

    def __len__(self) -> int: ...

    def letters(self, *, table: str | None = None, stage: str | None = None) -> Iterator[StoredLetter]:
        """Every stored letter (of ``table`` and ``stage`` when given), by id."""

    def pending(self, *, table: str | None = None, stage: str | None = None) -> Iterator[StoredLetter]:
        """The letters no replay has loaded yet (of ``table`` and ``stage`` when given), by id."""

    def mark_replayed(self, ids: Sequence[int], outcome: str) -> None:
        """Record that the letters ``ids`` were replayed now, with ``outcome``."""

    def mark_failed(self, failures: Mapping[int, str]) -> None:
        """Keep the letters pending with a new reason each (by id), and count the failed attempt."""

    def summary(self) -> DeadLetterSummary: ...

    def version(self) -> str:
        """A text that changes whenever a letter is stored or its replay state changes (a sensor's cursor)."""

    def close(self) -> None: ...

    def __str__(self) -> str:
        """Where the letters are (a path or a table), never a secret."""


def open_dead_letters(setting: str | os.PathLike[str] | Mapping[str, Any] | PostgresDeadLetters) -> DeadLetters:
    """The store ``setting`` names: a path (the file store), or ``{dsn_env, schema_prefix}`` (PostgreSQL).

    ``setting`` is ``config.dead_letters`` or its text form (``str()`` of it: the path, or the mapping as JSON),
    which is what the destination resources are configured with.
    """
    if isinstance(setting, str) and setting.lstrip().startswith("{"):
        setting = json.loads(setting)
    if isinstance(setting, str | os.PathLike):
        return DeadLetterStore(setting)
    if isinstance(setting, Mapping):
        dsn_env, schema_prefix = setting.get("dsn_env", "CDC_POSTGRES_DSN"), setting.get("schema_prefix", "")
    else:
        dsn_env, schema_prefix = setting.dsn_env, setting.schema_prefix
    dsn = os.environ.get(dsn_env)
    if not dsn:
        raise DeadLetterStoreError(
            f"environment variable {dsn_env} is not set; it must hold the DSN of the dead-letter store's "
            "database (dead_letters.dsn_env in the pipeline configuration names it)"
        )
    return PostgresDeadLetterStore(dsn, schema_prefix)


def _matches(letter: DeadLetter, table: str | None, stage: str | None) -> bool:
    return (table is None or letter.table == table) and (stage is None or letter.stage == stage)


def summarize(letters: Iterable[StoredLetter]) -> DeadLetterSummary:
    """The summary of ``letters``, counted here (the file store; PostgreSQL counts in SQL)."""
    counts: dict[tuple[str | None, str, str], list[int]] = {}
    oldest: StoredLetter | None = None
    last_replayed: datetime | None = None
    for stored in letters:
        letter = stored.letter
        count = counts.setdefault((letter.table, letter.stage, letter.reason), [0, 0])
        count[0 if stored.pending else 1] += 1
        if stored.pending and (oldest is None or letter.recorded_at < oldest.letter.recorded_at):
            oldest = replace(stored, letter=replace(letter, payload=b""))
        if stored.replayed_at is not None and (last_replayed is None or stored.replayed_at > last_replayed):
            last_replayed = stored.replayed_at
    groups = [
        LetterGroup(table, stage, reason, pending, replayed)
        for (table, stage, reason), (pending, replayed) in sorted(counts.items(), key=lambda item: str(item[0]))
    ]
    return DeadLetterSummary(groups, oldest, last_replayed)


# -- the file store ------------------------------------------------------------------------------------


class DeadLetterStore:
    """An append-only JSON-lines file; each append is flushed and fsynced before it returns.

    A letter's id is its place among the file's letters (1 for the first), a letter of an origin already
    stored being left out. Replay outcomes go to a second JSON-lines file beside it (``<name>.replays.jsonl``),
    the last record of an id holding its state: the letters file itself is only ever appended to.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.replays_path = self.path.with_suffix(".replays.jsonl")
        #: Letters this object was handed: what one load set aside, for its metadata.
        self.appended = 0
        self._origins: set[tuple[str, str, int, str, str]] = set()
        self._scanned = 0

    def __str__(self) -> str:
        return str(self.path)

    def append(self, letter: DeadLetter) -> None:
        self.appended += 1
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self.path) as out:
            # Another process may have appended since this object last looked.
            out.seek(self._scanned)
            for stored in _parse_lines(out, self.path, self._scanned):
                self._origins.add(stored.origin)
            end = out.seek(0, os.SEEK_END)
            if letter.origin not in self._origins:
                out.write((_line_break(out, end) + letter.to_json() + "\n").encode())
                out.flush()
                os.fsync(out.fileno())
                self._origins.add(letter.origin)
            self._scanned = out.tell()

    def _unique(self) -> Iterator[DeadLetter]:
        if not self.path.exists():
            return
        seen: set[tuple[str, str, int, str, str]] = set()
        with self.path.open("rb") as lines:
            for letter in _parse_lines(lines, self.path, 0):
                if letter.origin not in seen:
                    seen.add(letter.origin)
                    yield letter

    def __iter__(self) -> Iterator[DeadLetter]:
        return self._unique()

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def _replays(self) -> dict[int, dict[str, Any]]:
        states: dict[int, dict[str, Any]] = {}
        if self.replays_path.exists():
            with self.replays_path.open("rb") as lines:
                for number, line in enumerate(lines):
                    try:
                        record = json.loads(line)
                    except ValueError:
                        # A writer died mid-line: the replay it recorded is done again by the next one.
                        log.warning("%s: line %d is torn; ignored", self.replays_path, number + 1)
                        continue
                    states[record["id"]] = record
        return states

    def letters(self, *, table: str | None = None, stage: str | None = None) -> Iterator[StoredLetter]:
        states = self._replays()
        for number, letter in enumerate(self._unique(), start=1):
            if not _matches(letter, table, stage):
                continue
            state = states.get(number)
            if state is None:
                yield StoredLetter(number, letter)
                continue
            replayed_at = state.get("replayed_at")
            yield StoredLetter(
                number,
                replace(letter, reason=state.get("reason") or letter.reason),
                datetime.fromisoformat(replayed_at) if replayed_at else None,
                state.get("outcome"),
                state.get("attempts", 0),
            )

    def pending(self, *, table: str | None = None, stage: str | None = None) -> Iterator[StoredLetter]:
        return (stored for stored in self.letters(table=table, stage=stage) if stored.pending)

    def mark_replayed(self, ids: Sequence[int], outcome: str) -> None:
        states = self._replays()
        now = datetime.now(UTC).isoformat()
        self._record_replays(
            [{**states.get(i, {"attempts": 0}), "id": i, "replayed_at": now, "outcome": outcome} for i in ids]
        )

    def mark_failed(self, failures: Mapping[int, str]) -> None:
        states = self._replays()
        records = []
        for letter_id, reason in failures.items():
            attempts = states.get(letter_id, {}).get("attempts", 0) + 1
            records.append(
                {"id": letter_id, "replayed_at": None, "outcome": None, "reason": reason, "attempts": attempts}
            )
        self._record_replays(records)

    def _record_replays(self, records: Sequence[Mapping[str, Any]]) -> None:
        if not records:
            return
        self.replays_path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self.replays_path) as out:
            end = out.seek(0, os.SEEK_END)
            text = _line_break(out, end) + "".join(json.dumps(record, sort_keys=True) + "\n" for record in records)
            out.write(text.encode())
            out.flush()
            os.fsync(out.fileno())

    def summary(self) -> DeadLetterSummary:
        return summarize(self.letters())

    def version(self) -> str:
        sizes = [path.stat().st_size if path.exists() else 0 for path in (self.path, self.replays_path)]
        return f"file:{sizes[0]}:{sizes[1]}"

    def close(self) -> None:
        """Nothing is held open between calls."""


class _locked:
    """The file opened for reading and appending, under an exclusive lock (appenders in other processes wait)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> IO[bytes]:
        self.handle = self.path.open("a+b")
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        return self.handle

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def _line_break(handle: IO[bytes], end: int) -> str:
    """A newline to write first when the file ends inside a line (a writer died mid-append)."""
    if end == 0:
        return ""
    handle.seek(end - 1)
    last = handle.read(1)
    handle.seek(end)
    return "" if last == b"\n" else "\n"


def _parse_lines(handle: IO[bytes], path: Path, start: int) -> Iterator[DeadLetter]:
    offset = start
    for line in handle:
        if line.strip():
            try:
                yield DeadLetter.from_json(line.decode())
            except (ValueError, TypeError, KeyError):
                # Torn by a writer that died mid-append: its run or load did not commit, so the retry of
                # that range or load appends the letter again.
                log.warning("%s: the line at byte %d is torn (a writer died mid-append); ignored", path, offset)
        offset += len(line)


# -- the PostgreSQL store ------------------------------------------------------------------------------

_PAGE = 500
_COLUMNS = "id, stage, reason, segment, position, table_name, recorded_at, replayed_at, replay_outcome, replay_attempts"


class PostgresDeadLetterStore:
    """The table ``"<schema_prefix>_cdc".dead_letters``, created on first use.

    One connection (autocommit: each statement is durable when it returns) is opened on first use and kept
    until :meth:`close`, or until the store is garbage collected.
    """

    def __init__(self, dsn: str, schema_prefix: str = ""):
        self._dsn = dsn
        self.schema = f"{schema_prefix}_cdc"
        self.table = f'"{self.schema}".dead_letters'
        #: Letters this object was handed: what one load set aside, for its metadata.
        self.appended = 0
        self._connection: Any = None
        self._finalizer: weakref.finalize | None = None

    def __str__(self) -> str:
        return self.table

    def _connect(self) -> Any:
        # Imported here: the commit log reader imports this module for DeadLetter and needs no database driver.
        import psycopg

        if self._connection is not None and not self._connection.closed:
            return self._connection
        try:
            connection = psycopg.connect(self._dsn, autocommit=True, connect_timeout=10)
            with connection.transaction():
                connection.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"cdc_assets:{self.schema}"])
                for statement in self._ddl():
                    connection.execute(statement)
        except psycopg.Error as error:
            raise self._error(error) from None
        self._connection = connection
        self._finalizer = weakref.finalize(self, connection.close)
        return connection

    def _ddl(self) -> list[str]:
        return [
            f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"',
            f"CREATE TABLE IF NOT EXISTS {self.table} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
            "stage text NOT NULL, reason text NOT NULL, segment text NOT NULL, position bigint NOT NULL, "
            "table_name text, payload bytea NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now(), "
            "replayed_at timestamptz, replay_outcome text, replay_attempts integer NOT NULL DEFAULT 0)",
            f"CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_origin ON {self.table} "
            "(stage, segment, position, (coalesce(table_name, '')), (sha256(payload)))",
            f"CREATE INDEX IF NOT EXISTS dead_letters_pending ON {self.table} (id) WHERE replayed_at IS NULL",
        ]

    def _error(self, error: Exception) -> DeadLetterStoreError:
        from cdc_assets.retry import describe_error

        text = describe_error(error)
        if self._dsn in text:
            text = text.replace(self._dsn, "***")
        return DeadLetterStoreError(f"dead-letter store {self.table}: {text}")

    def _execute(self, statement: str, parameters: Sequence[Any] = ()) -> list[tuple]:
        import psycopg

        connection = self._connect()
        try:
            cursor = connection.execute(statement, parameters)
            return cursor.fetchall() if cursor.description is not None else []
        except psycopg.Error as error:
            if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
                self.close()
            raise self._error(error) from None

    def append(self, letter: DeadLetter) -> None:
        self.appended += 1
        self._execute(
            f"INSERT INTO {self.table} (stage, reason, segment, position, table_name, payload, recorded_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (stage, segment, position, (coalesce(table_name, '')), "
            "(sha256(payload))) DO NOTHING",
            [
                letter.stage,
                letter.reason,
                letter.segment,
                letter.position,
                letter.table,
                letter.payload,
                datetime.fromisoformat(letter.recorded_at),
            ],
        )

    def _pages(self, condition: str, parameters: Sequence[Any], *, payload: bool = True) -> Iterator[StoredLetter]:
        # Keyset pages: memory stays bounded however many letters there are, and marking as we go is safe.
        after = 0
        columns = _COLUMNS + (", payload" if payload else "")
        while True:
            rows = self._execute(
                f"SELECT {columns} FROM {self.table} WHERE id > %s{condition} ORDER BY id LIMIT {_PAGE}",
                [after, *parameters],
            )
            for row in rows:
                yield _stored(row)
            if len(rows) < _PAGE:
                return
            after = rows[-1][0]

    @staticmethod
    def _filters(table: str | None, stage: str | None) -> tuple[str, list[Any]]:
        condition, parameters = "", []
        if table is not None:
            condition += " AND table_name = %s"
            parameters.append(table)
        if stage is not None:
            condition += " AND stage = %s"
            parameters.append(stage)
        return condition, parameters

    def __iter__(self) -> Iterator[DeadLetter]:
        return (stored.letter for stored in self._pages("", []))

    def __len__(self) -> int:
        return self._execute(f"SELECT count(*) FROM {self.table}")[0][0]

    def letters(self, *, table: str | None = None, stage: str | None = None) -> Iterator[StoredLetter]:
        condition, parameters = self._filters(table, stage)
        return self._pages(condition, parameters)

    def pending(self, *, table: str | None = None, stage: str | None = None) -> Iterator[StoredLetter]:
        condition, parameters = self._filters(table, stage)
        return self._pages(condition + " AND replayed_at IS NULL", parameters)

    def mark_replayed(self, ids: Sequence[int], outcome: str) -> None:
        if ids:
            self._execute(
                f"UPDATE {self.table} SET replayed_at = now(), replay_outcome = %s "
                "WHERE id = ANY(%s) AND replayed_at IS NULL",
                [outcome, list(ids)],
            )

    def mark_failed(self, failures: Mapping[int, str]) -> None:
        for letter_id, reason in failures.items():
            self._execute(
                f"UPDATE {self.table} SET reason = %s, replay_attempts = replay_attempts + 1 WHERE id = %s",
                [reason, letter_id],
            )

    def summary(self) -> DeadLetterSummary:
        grouped = self._execute(
            f"SELECT table_name, stage, reason, count(*) FILTER (WHERE replayed_at IS NULL), "
            f"count(*) FILTER (WHERE replayed_at IS NOT NULL) FROM {self.table} "
            "GROUP BY table_name, stage, reason ORDER BY table_name NULLS LAST, stage, reason"
        )
        oldest = self._execute(
            f"SELECT {_COLUMNS} FROM {self.table} WHERE replayed_at IS NULL ORDER BY recorded_at, id LIMIT 1"
        )
        last = self._execute(f"SELECT max(replayed_at) FROM {self.table}")[0][0]
        return DeadLetterSummary([LetterGroup(*row) for row in grouped], _stored(oldest[0]) if oldest else None, last)

    def version(self) -> str:
        row = self._execute(
            f"SELECT count(*), count(replayed_at), coalesce(sum(replay_attempts), 0), coalesce(max(id), 0) "
            f"FROM {self.table}"
        )[0]
        return "postgres:" + ":".join(str(value) for value in row)

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._connection = None


def _stored(row: Sequence[Any]) -> StoredLetter:
    """A row of ``_COLUMNS`` (and the payload, when selected) as a stored letter."""
    letter_id, stage, reason, segment, position, table, recorded_at, replayed_at, outcome, attempts = row[:10]
    payload = bytes(row[10]) if len(row) > 10 else b""
    letter = DeadLetter(stage, reason, segment, position, table, payload, recorded_at.isoformat())
    return StoredLetter(letter_id, letter, replayed_at, outcome, attempts)
