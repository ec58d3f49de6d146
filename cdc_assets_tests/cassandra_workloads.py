"""Whole-surface CQL workloads, written through cassandra-driver to a real Cassandra node.

A workload creates its keyspace and tables, then runs a few thousand statements drawn from a seeded
random generator (the same seed gives the same statements, in the same order): inserts and partial
updates; ``USING TTL`` and ``USING TIMESTAMP`` (two writes of one cell at the same timestamp with
different values, and an older write arriving after a newer one); cell, row, range (on a mixed
ASC/DESC two-column clustering, slices on either column) and partition deletions; static columns;
every CQL type, frozen and non-frozen collections, user types and tuples, with element adds, removes
and overwrites; logged, unlogged and counter batches; lightweight transactions; ``ALTER TABLE`` adding,
dropping and re-adding a column; a table created half-way. It counts the statements it ran per kind.

What Cassandra made of them is read back with ``SELECT *`` (``cassandra_oracle.select_all``): the
workload never predicts the outcome itself.
"""

from __future__ import annotations

import datetime as dt
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from cassandra import InvalidRequest
from cassandra.query import BatchStatement, BatchType
from cassandra.util import Duration, Time

#: TTLs are a few seconds, so that a test can compare before and after they expire.
TTLS = (2, 3, 4, 6)
#: Tables created half-way with this default TTL expire their rows too.
DEFAULT_TTL = 5

EVERYTHING = "Everything"
KEYED = "keyed"
COUNTERS = "counters"
LATE = "late"
TABLES = (EVERYTHING, KEYED, COUNTERS, LATE)


def quoted(name: str) -> str:
    """A Cassandra identifier, always quoted: the names here are mixed-case on purpose."""
    return '"' + name.replace('"', '""') + '"'


# --------------------------------------------------------------------------------------------------
# Values: small domains, so that writes of one cell collide; extremes of every type among them.


def _timeuuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(
        fields=(
            rng.randrange(1 << 32),
            rng.randrange(1 << 16),
            0x1000 | rng.randrange(1 << 12),
            0x80 | rng.randrange(64),
            rng.randrange(256),
            rng.randrange(1 << 48),
        )
    )


def _uuid(rng: random.Random) -> uuid.UUID:
    return _timeuuid(rng) if rng.random() < 0.3 else uuid.UUID(int=rng.getrandbits(128), version=4)


# No NUL character: PostgreSQL text cannot hold one, and its destination dead-letters such a change by
# design (pg_types.py), so that row could never equal the node's.
_TEXTS = ("", "a", "b", "é", "zz", "日本", "a\tb", "Ωmega")
_FLOATS = (0.0, -0.0, 1.5, -2.25, 3.4028234663852886e38, 1e-45, float("inf"), float("-inf"), float("nan"))
_DOUBLES = (0.0, -0.0, 0.1, -1e308, 5e-324, 2.5, float("inf"), float("nan"))
_DECIMALS = ("0", "1.0", "1.00", "-0.001", "3.14159265358979323846264338327950288", "-12345678901234567890E-5", "1E+10")
_INETS = ("127.0.0.1", "10.0.0.255", "::1", "2001:db8::8a2e:370:7334", "::ffff:1.2.3.4", "255.255.255.255")

SCALARS: dict[str, Callable[[random.Random], Any]] = {
    "ascii": lambda r: r.choice(("", "abc", "A-Z", "x y")),
    "bigint": lambda r: r.choice((0, -1, 1, (1 << 63) - 1, -(1 << 63), r.randrange(-(10**12), 10**12))),
    "blob": lambda r: r.choice((b"", b"\x00", b"\xff\x00", bytes(range(5)), r.randbytes(3))),
    "boolean": lambda r: r.random() < 0.5,
    "date": lambda r: r.choice((dt.date(1970, 1, 1), dt.date(1, 1, 1), dt.date(9999, 12, 31), dt.date(2024, 2, 29))),
    "decimal": lambda r: Decimal(r.choice(_DECIMALS)),
    "double": lambda r: r.choice(_DOUBLES),
    "duration": lambda r: Duration(*r.choice(((0, 0, 0), (1, 2, 3), (-1, -2, -3_000_000_000), (14, 0, 86_399_999)))),
    "float": lambda r: r.choice(_FLOATS),
    "inet": lambda r: r.choice(_INETS),
    "int": lambda r: r.choice((0, 1, -1, 2, (1 << 31) - 1, -(1 << 31))),
    "smallint": lambda r: r.choice((0, 7, -7, 32767, -32768)),
    "text": lambda r: r.choice(_TEXTS),
    "time": lambda r: Time(r.choice((0, 1, 86_399_999_999_999, 12 * 3600 * 10**9 + 123_456_789))),
    "timestamp": lambda r: r.choice((0, -1, 1_700_000_000_123, -62_135_596_800_000, 253_402_300_799_999)),
    "timeuuid": _timeuuid,
    "tinyint": lambda r: r.choice((0, 1, -1, 127, -128)),
    "uuid": _uuid,
    "varint": lambda r: r.choice((0, -1, 1, 1 << 64, -(1 << 100) - 7, 255, -256)),
}

#: ``Everything``'s scalar columns: one per CQL type.
SCALAR_COLUMNS = {f"a_{kind}": kind for kind in SCALARS}


def _small_ints(rng: random.Random, size: int = 3) -> list[int]:
    return [rng.randrange(-3, 4) for _ in range(rng.randrange(size + 1))]


def _small_texts(rng: random.Random, size: int = 3) -> set[str]:
    return {rng.choice(_TEXTS[:5]) for _ in range(rng.randrange(size + 1))}


def _score_map(rng: random.Random) -> dict[str, int]:
    return {rng.choice("abcd"): rng.randrange(-5, 6) for _ in range(rng.randrange(4))}


def _address(rng: random.Random) -> tuple[Any, ...]:
    # A null field and an empty set are two values inside a user type (only a column's own empty is null).
    flags = rng.choice((None, set(), _small_texts(rng) or {"a"}))
    return (rng.choice((None, 1, 221, -4)), rng.choice((None, "Baker St", "é")), flags)


#: ``Everything``'s other regular columns: CQL type, and a value drawer for a whole-column write.
COMPOSITE_COLUMNS: dict[str, tuple[str, Callable[[random.Random], Any]]] = {
    "Note": ("text", lambda r: r.choice(_TEXTS)),
    "a_vector": ("vector<float, 3>", lambda r: [r.choice(_FLOATS[:6]) for _ in range(3)]),
    "f_list": ("frozen<list<int>>", _small_ints),
    "f_set": ("frozen<set<text>>", _small_texts),
    "f_map": ("frozen<map<text, int>>", _score_map),
    "f_home": ("frozen<address>", _address),
    "pair": ("tuple<int, text, double>", lambda r: (r.randrange(3), r.choice(("x", None)), r.choice(_DOUBLES[:4]))),
    "tags": ("set<text>", _small_texts),
    "scores": ("map<text, int>", _score_map),
    "items": ("list<int>", _small_ints),
    "nested": ("map<int, frozen<list<text>>>", lambda r: {r.randrange(3): sorted(_small_texts(r)) for _ in range(2)}),
    "home": ("address", _address),
    "stamps": ("list<timestamp>", lambda r: [SCALARS["timestamp"](r) for _ in range(r.randrange(3))]),
}

_C2 = ("a", "b", "c", "é")


# --------------------------------------------------------------------------------------------------
# The workload


@dataclass
class WorkloadResult:
    """What a workload did: its keyspace and tables, statements run per kind, and when its TTLs are over."""

    keyspace: str
    tables: tuple[str, ...]
    counts: Counter[str] = field(default_factory=Counter)
    #: Wall-clock time (seconds since the epoch) after which every TTL the workload wrote has expired.
    expired_by: float = 0.0

    @property
    def qualified_tables(self) -> list[str]:
        return [f"{self.keyspace}.{table}" for table in self.tables]


class Workload:
    """One seeded run of statements against one keyspace; :meth:`run` does it all."""

    def __init__(self, session: Any, keyspace: str, *, seed: int, statements: int = 2500):
        self.session = session
        self.keyspace = keyspace
        self.rng = random.Random(seed)
        self.statements = statements
        self.result = WorkloadResult(keyspace, TABLES)
        self._prepared: dict[str, Any] = {}
        self.regulars = dict(SCALAR_COLUMNS) | {name: cql for name, (cql, _) in COMPOSITE_COLUMNS.items()}
        self.late_created = False

    # ---- statements

    def table(self, name: str) -> str:
        return f"{quoted(self.keyspace)}.{quoted(name)}"

    def execute(self, kind: str, cql: str, values: tuple = ()) -> Any:
        """Run one prepared statement, counting it under ``kind``."""
        self.result.counts[kind] += 1
        return self.session.execute(self._prepare(cql), values)

    def ddl(self, kind: str, cql: str) -> None:
        self.result.counts[kind] += 1
        self.session.execute(cql)
        self._prepared.clear()

    def ttl(self) -> int:
        ttl = self.rng.choice(TTLS)
        self.result.expired_by = max(self.result.expired_by, time.time() + ttl + 1)
        return ttl

    @staticmethod
    def micros() -> int:
        return time.time_ns() // 1000

    # ---- schema

    def create_schema(self) -> None:
        ks = quoted(self.keyspace)
        self.ddl(
            "create keyspace",
            f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}",
        )
        self.ddl("create type", f"CREATE TYPE {ks}.address (number int, street text, flags frozen<set<text>>)")
        columns = ", ".join(f"{quoted(name)} {cql}" for name, cql in self.regulars.items())
        self.ddl(
            "create table",
            f"CREATE TABLE {self.table(EVERYTHING)} (k int, c1 int, c2 text, s text static, "
            f"s_tags set<int> static, {columns}, PRIMARY KEY (k, c1, c2)) "
            "WITH CLUSTERING ORDER BY (c1 ASC, c2 DESC) AND cdc = true",
        )
        self.ddl(
            "create table",
            f"CREATE TABLE {self.table(KEYED)} (p_text text, p_uuid uuid, c_ts timestamp, "
            "c_dec decimal, c_inet inet, c_tuple frozen<tuple<int, text>>, c_double double, c_blob blob, "
            "v varint, f_set frozen<set<date>>, "
            "PRIMARY KEY ((p_text, p_uuid), c_ts, c_dec, c_inet, c_tuple, c_double, c_blob)) "
            "WITH CLUSTERING ORDER BY (c_ts DESC, c_dec ASC, c_inet DESC, c_tuple ASC, c_double DESC, "
            "c_blob ASC) AND cdc = true",
        )
        self.ddl(
            "create table",
            f"CREATE TABLE {self.table(COUNTERS)} (k text, c int, hits counter, "
            "misses counter, PRIMARY KEY (k, c)) WITH cdc = true",
        )

    def create_late_table(self) -> None:
        self.ddl(
            "create table",
            f"CREATE TABLE {self.table(LATE)} (k bigint, c timeuuid, v text, "
            f"m map<int, text>, PRIMARY KEY (k, c)) WITH CLUSTERING ORDER BY (c DESC) AND cdc = true "
            f"AND default_time_to_live = {DEFAULT_TTL}",
        )
        self.late_created = True

    def alter(self, step: int) -> None:
        """Schema changes at fixed points of the run: add a column, drop one, re-add it, create a table."""
        everything = self.table(EVERYTHING)
        if step == 1:
            self.ddl("alter add column", f"ALTER TABLE {everything} ADD extra bigint")
            self.regulars["extra"] = "bigint"
        elif step == 2:
            self.ddl("alter drop column", f"ALTER TABLE {everything} DROP a_smallint")
            del self.regulars["a_smallint"]
        elif step == 3:
            self.create_late_table()
        elif step == 4:
            # Cassandra keeps hiding what the dropped column held before the drop, even once it is back.
            self.ddl("alter add column", f"ALTER TABLE {everything} ADD a_smallint smallint")
            self.regulars["a_smallint"] = "smallint"

    # ---- values of the Everything table

    def key(self) -> int:
        return self.rng.randrange(12)

    def clustering(self) -> tuple[int, str]:
        return self.rng.randrange(4), self.rng.choice(_C2)

    def value(self, column: str) -> Any:
        if column in SCALAR_COLUMNS:
            return SCALARS[SCALAR_COLUMNS[column]](self.rng)
        if column == "extra":
            return self.rng.randrange(-(1 << 40), 1 << 40)
        return COMPOSITE_COLUMNS[column][1](self.rng)

    def columns(self, most: int = 6) -> list[str]:
        names = sorted(self.regulars)
        return self.rng.sample(names, self.rng.randrange(1, most + 1))

    def maybe_null(self, column: str) -> Any:
        """A value, or now and then a null (which writes a tombstone)."""
        return None if self.rng.random() < 0.08 else self.value(column)

    # ---- operations on Everything

    def insert(self, using: str = "", kind: str = "insert") -> None:
        names = self.columns(10)
        k, (c1, c2) = self.key(), self.clustering()
        cols = ", ".join(quoted(n) for n in ["k", "c1", "c2", *names])
        marks = ", ".join("?" * (3 + len(names)))
        values = (k, c1, c2, *(self.maybe_null(n) for n in names))
        self.execute(kind, f"INSERT INTO {self.table(EVERYTHING)} ({cols}) VALUES ({marks}){using}", values)

    def update(self, using: str = "", kind: str = "update") -> None:
        names = self.columns()
        self.update_columns(names, [self.maybe_null(n) for n in names], using, kind)

    def update_columns(
        self,
        names: list[str],
        values: list[Any],
        using: str,
        kind: str,
        where: tuple[int, tuple[int, str]] | None = None,
    ) -> None:
        k, (c1, c2) = where or (self.key(), self.clustering())
        sets = ", ".join(f"{quoted(n)} = ?" for n in names)
        cql = f"UPDATE {self.table(EVERYTHING)}{using} SET {sets} WHERE k = ? AND c1 = ? AND c2 = ?"
        self.execute(kind, cql, (*values, k, c1, c2))

    def insert_ttl(self) -> None:
        self.insert(f" USING TTL {self.ttl()}", "insert using ttl")

    def update_ttl(self) -> None:
        self.update(f" USING TTL {self.ttl()}", "update using ttl")

    def timestamp_tie(self) -> None:
        """Two writes of one cell at one timestamp with different values: Cassandra keeps the greater value."""
        column = self.rng.choice(sorted(self.regulars))
        where = (self.key(), self.clustering())
        stamp = self.micros()
        for _ in range(2):
            self.update_columns([column], [self.value(column)], f" USING TIMESTAMP {stamp}", "timestamp tie", where)

    def timestamp_out_of_order(self) -> None:
        """A newer write, then an older one of the same cells arriving after it: the older one loses."""
        names = self.columns(3)
        where = (self.key(), self.clustering())
        stamp = self.micros()
        for offset in (1000, 0):
            values = [self.value(n) for n in names]
            self.update_columns(names, values, f" USING TIMESTAMP {stamp + offset}", "timestamp out of order", where)
        if self.rng.random() < 0.5:
            k, (c1, c2) = where
            self.execute(
                "timestamp out of order",
                f"DELETE FROM {self.table(EVERYTHING)} USING TIMESTAMP "
                f"{stamp - 1000} WHERE k = ? AND c1 = ? AND c2 = ?",
                (k, c1, c2),
            )

    def cell_delete(self) -> None:
        names = self.columns(3)
        k, (c1, c2) = self.key(), self.clustering()
        cols = ", ".join(quoted(n) for n in names)
        self.execute(
            "cell delete", f"DELETE {cols} FROM {self.table(EVERYTHING)} WHERE k = ? AND c1 = ? AND c2 = ?", (k, c1, c2)
        )

    def row_delete(self) -> None:
        k, (c1, c2) = self.key(), self.clustering()
        self.execute(
            "row delete", f"DELETE FROM {self.table(EVERYTHING)} WHERE k = ? AND c1 = ? AND c2 = ?", (k, c1, c2)
        )

    #: Range deletions: the condition after ``k = ?``, and which clustering column each marker binds.
    RANGES = (
        ("c1 = ? AND c2 > ?", "12"),
        ("c1 = ? AND c2 >= ? AND c2 < ?", "122"),
        ("c1 = ? AND c2 <= ?", "12"),
        ("c1 > ?", "1"),
        ("c1 >= ? AND c1 <= ?", "11"),
        ("c1 < ?", "1"),
        ("c1 = ?", "1"),
        ("(c1, c2) > (?, ?)", "12"),
        ("(c1, c2) >= (?, ?) AND (c1, c2) < (?, ?)", "1212"),
    )

    def range_delete(self) -> None:
        """A range deletion on the first clustering column, or within one value of it, or a tuple slice."""
        condition, markers = self.rng.choice(self.RANGES)
        values = [self.rng.randrange(4) if marker == "1" else self.rng.choice(_C2) for marker in markers]
        stamp = f" USING TIMESTAMP {self.micros()}" if self.rng.random() < 0.2 else ""
        cql = f"DELETE FROM {self.table(EVERYTHING)}{stamp} WHERE k = ? AND {condition}"
        self.execute("range delete", cql, (self.key(), *values))

    def partition_delete(self) -> None:
        self.execute("partition delete", f"DELETE FROM {self.table(EVERYTHING)} WHERE k = ?", (self.key(),))

    def static_write(self) -> None:
        using = f" USING TTL {self.ttl()}" if self.rng.random() < 0.2 else ""
        choice = self.rng.randrange(4)
        table = self.table(EVERYTHING)
        if choice == 0:
            self.execute(
                "static update",
                f"UPDATE {table}{using} SET s = ? WHERE k = ?",
                (self.rng.choice((*_TEXTS, None)), self.key()),
            )
        elif choice == 1:
            self.execute(
                "static set add",
                f"UPDATE {table}{using} SET s_tags = s_tags + ? WHERE k = ?",
                ({self.rng.randrange(5)}, self.key()),
            )
        elif choice == 2:
            self.execute("static delete", f"DELETE s FROM {table} WHERE k = ?", (self.key(),))
        else:
            self.execute(
                "static insert",
                f"INSERT INTO {table} (k, s) VALUES (?, ?){using}",
                (self.key(), self.rng.choice(_TEXTS)),
            )

    def collection_change(self) -> None:
        """One element change of a non-frozen collection or user type, or a whole overwrite."""
        table = self.table(EVERYTHING)
        k, (c1, c2) = self.key(), self.clustering()
        where = " WHERE k = ? AND c1 = ? AND c2 = ?"
        using = f" USING TTL {self.ttl()}" if self.rng.random() < 0.15 else ""
        rng = self.rng
        changes: list[tuple[str, str, tuple]] = [
            ("set add", "tags = tags + ?", (_small_texts(rng) or {"a"},)),
            ("set remove", "tags = tags - ?", (_small_texts(rng) or {"a"},)),
            ("map put", "scores[?] = ?", (rng.choice("abcd"), rng.randrange(-5, 6))),
            ("map merge", "scores = scores + ?", (_score_map(rng) or {"a": 1},)),
            ("map remove keys", "scores = scores - ?", ({rng.choice("abcd")},)),
            ("list append", "items = items + ?", (_small_ints(rng) or [1],)),
            ("list prepend", "items = ? + items", (_small_ints(rng) or [2],)),
            ("list remove values", "items = items - ?", ([rng.randrange(-3, 4)],)),
            ("list append", "stamps = stamps + ?", ([SCALARS["timestamp"](rng)],)),
            ("nested map put", "nested[?] = ?", (rng.randrange(3), sorted(_small_texts(rng)))),
            ("udt field update", "home.street = ?", (rng.choice(("Elm", "é", None)),)),
            ("udt field update", "home.flags = ?", (rng.choice((None, set(), _small_texts(rng) or {"b"})),)),
            ("overwrite", "tags = ?", (_small_texts(rng),)),
            ("overwrite", "scores = ?", (_score_map(rng),)),
            ("overwrite", "items = ?", (_small_ints(rng),)),
            ("overwrite", "home = ?", (_address(rng),)),
        ]
        draw = rng.random()
        if draw < 0.1:
            self.list_by_index(k, c1, c2)
        elif draw < 0.17:
            self.execute("map delete key", f"DELETE scores[?] FROM {table}{where}", (rng.choice("abcd"), k, c1, c2))
        else:
            kind, assignment, values = rng.choice(changes)
            self.execute(kind, f"UPDATE {table}{using} SET {assignment}{where}", (*values, k, c1, c2))

    def list_by_index(self, k: int, c1: int, c2: str) -> None:
        """``items[i] = v`` or ``DELETE items[i]``: Cassandra reads the list first and refuses a missing index."""
        table = self.table(EVERYTHING)
        where = " WHERE k = ? AND c1 = ? AND c2 = ?"
        index = self.rng.randrange(3)
        try:
            if self.rng.random() < 0.6:
                self.execute(
                    "list set index",
                    f"UPDATE {table} SET items[?] = ?{where}",
                    (index, self.rng.randrange(9), k, c1, c2),
                )
            else:
                self.execute("list delete index", f"DELETE items[?] FROM {table}{where}", (index, k, c1, c2))
        except InvalidRequest:
            self.result.counts["list index refused"] += 1

    def batch(self) -> None:
        """A logged batch over tables and partitions, or an unlogged one in one partition, sometimes timestamped."""
        logged = self.rng.random() < 0.5
        batch = BatchStatement(BatchType.LOGGED if logged else BatchType.UNLOGGED)
        k = self.key()
        for _ in range(self.rng.randrange(2, 6)):
            names = self.columns(3)
            c1, c2 = self.clustering()
            sets = ", ".join(f"{quoted(n)} = ?" for n in names)
            cql = f"UPDATE {self.table(EVERYTHING)} SET {sets} WHERE k = ? AND c1 = ? AND c2 = ?"
            batch.add(self._prepare(cql), (*(self.value(n) for n in names), k if not logged else self.key(), c1, c2))
        if logged:
            batch.add(
                self._prepare(
                    f"INSERT INTO {self.table(KEYED)} (p_text, p_uuid, c_ts, c_dec, c_inet, "
                    "c_tuple, c_double, c_blob, v) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ),
                self.keyed_row(),
            )
        if self.rng.random() < 0.3:
            batch.timestamp = self.micros()
        self.result.counts["logged batch" if logged else "unlogged batch"] += 1
        self.session.execute(batch)

    def _prepare(self, cql: str) -> Any:
        statement = self._prepared.get(cql)
        if statement is None:
            statement = self._prepared[cql] = self.session.prepare(cql)
        return statement

    def lightweight(self) -> None:
        """``IF NOT EXISTS``, ``IF a_int = ?`` and ``IF EXISTS``; whether applied is the node's business."""
        table = self.table(EVERYTHING)
        k, (c1, c2) = self.key(), self.clustering()
        choice = self.rng.randrange(3)
        if choice == 0:
            result = self.execute(
                "lwt insert if not exists",
                f'INSERT INTO {table} (k, c1, c2, a_int, "Note") VALUES (?, ?, ?, ?, ?) IF NOT EXISTS',
                (k, c1, c2, self.value("a_int"), "lwt"),
            )
        elif choice == 1:
            result = self.execute(
                "lwt update if",
                f"UPDATE {table} SET a_int = ?, a_text = ? WHERE k = ? AND c1 = ? AND c2 = ? IF a_int = ?",
                (self.value("a_int"), "lwt", k, c1, c2, self.value("a_int")),
            )
        else:
            result = self.execute(
                "lwt delete if exists", f"DELETE FROM {table} WHERE k = ? AND c1 = ? AND c2 = ? IF EXISTS", (k, c1, c2)
            )
        self.result.counts["lwt applied" if result.was_applied else "lwt not applied"] += 1

    # ---- the other tables

    def keyed_row(self) -> tuple:
        rng = self.rng
        return (
            rng.choice(("", "p", "é")),
            uuid.UUID(int=rng.randrange(3), version=4),
            rng.choice((0, -1, 1_700_000_000_000, 1_700_000_000_001)),
            Decimal(rng.choice(("1.0", "1.00", "-2", "0.5"))),
            rng.choice(_INETS[:4]),
            (rng.randrange(2), rng.choice(("a", "é"))),
            rng.choice((0.0, -0.0, 1.5, float("-inf"))),
            rng.choice((b"", b"\x00", b"\x01\x02")),
            rng.choice((0, -(1 << 70), 12345)),
        )

    def keyed_write(self) -> None:
        table = self.table(KEYED)
        row = self.keyed_row()
        choice = self.rng.randrange(6)
        if choice < 4:
            using = f" USING TTL {self.ttl()}" if choice == 3 else ""
            self.execute(
                "keyed insert",
                f"INSERT INTO {table} (p_text, p_uuid, c_ts, c_dec, c_inet, c_tuple, "
                f"c_double, c_blob, v, f_set) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?){using}",
                (*row, {dt.date(2020, 1, self.rng.randrange(1, 4))}),
            )
        elif choice == 4:
            self.execute(
                "keyed row delete",
                f"DELETE FROM {table} WHERE p_text = ? AND p_uuid = ? AND c_ts = ? "
                "AND c_dec = ? AND c_inet = ? AND c_tuple = ? AND c_double = ? AND c_blob = ?",
                row[:8],
            )
        else:
            self.execute(
                "keyed range delete",
                f"DELETE FROM {table} WHERE p_text = ? AND p_uuid = ? AND c_ts = ? AND c_dec > ?",
                row[:4],
            )

    def counter_write(self) -> None:
        table = self.table(COUNTERS)
        k, c = self.rng.choice(("a", "b", "é")), self.rng.randrange(3)
        choice = self.rng.randrange(10)
        if choice < 7:
            self.execute(
                "counter update",
                f"UPDATE {table} SET hits = hits + ?, misses = misses - ? WHERE k = ? AND c = ?",
                (self.rng.randrange(-3, 10), self.rng.randrange(3), k, c),
            )
        elif choice < 9:
            batch = BatchStatement(BatchType.COUNTER)
            for _ in range(3):
                batch.add(
                    self._prepare(f"UPDATE {table} SET hits = hits + ? WHERE k = ? AND c = ?"),
                    (self.rng.randrange(1, 5), k, self.rng.randrange(3)),
                )
            self.result.counts["counter batch"] += 1
            self.session.execute(batch)
        elif self.rng.random() < 0.3:
            # A deleted counter stays deleted: later increments of it are ignored.
            self.execute("counter delete", f"DELETE FROM {table} WHERE k = ? AND c = ?", (k, 2))

    def late_write(self) -> None:
        table = self.table(LATE)
        k = self.rng.randrange(4)
        c = uuid.UUID(fields=(self.rng.randrange(4), 0, 0x1000, 0x80, 0, 1))
        choice = self.rng.randrange(4)
        if choice == 0:
            self.execute(
                "late insert",
                f"INSERT INTO {table} (k, c, v, m) VALUES (?, ?, ?, ?) USING TTL 0",
                (k, c, self.rng.choice(_TEXTS), {1: "x"}),
            )
        elif choice == 1:
            self.result.expired_by = max(self.result.expired_by, time.time() + DEFAULT_TTL + 1)
            self.execute(
                "late insert default ttl",
                f"INSERT INTO {table} (k, c, v) VALUES (?, ?, ?)",
                (k, c, self.rng.choice(_TEXTS)),
            )
        elif choice == 2:
            self.execute(
                "late map put",
                f"UPDATE {table} USING TTL 0 SET m[?] = ? WHERE k = ? AND c = ?",
                (self.rng.randrange(3), "v", k, c),
            )
        else:
            self.execute("late row delete", f"DELETE FROM {table} WHERE k = ? AND c = ?", (k, c))

    # ---- the run

    OPERATIONS: tuple[tuple[str, int], ...] = (
        ("insert", 14),
        ("insert_ttl", 4),
        ("update", 12),
        ("update_ttl", 3),
        ("timestamp_tie", 3),
        ("timestamp_out_of_order", 3),
        ("cell_delete", 4),
        ("row_delete", 3),
        ("range_delete", 4),
        ("partition_delete", 1),
        ("static_write", 5),
        ("collection_change", 14),
        ("batch", 3),
        ("lightweight", 3),
        ("keyed_write", 8),
        ("counter_write", 5),
        ("late_write", 5),
    )

    def run(self) -> WorkloadResult:
        """Create the schema and run the statements; ALTERs fall at fixed fractions of the run."""
        self.create_schema()
        names = [name for name, _ in self.OPERATIONS]
        weights = [weight for _, weight in self.OPERATIONS]
        alters = {self.statements * step // 5: step for step in range(1, 5)}
        for index in range(self.statements):
            if index in alters:
                self.alter(alters[index])
            operation = self.rng.choices(names, weights)[0]
            if operation == "late_write" and not self.late_created:
                operation = "insert"
            getattr(self, operation)()
        return self.result


def run_workload(session: Any, keyspace: str, *, seed: int, statements: int = 2500) -> WorkloadResult:
    """Run a whole-surface workload in a new keyspace ``keyspace``; what it ran, counted per kind."""
    return Workload(session, keyspace, seed=seed, statements=statements).run()
