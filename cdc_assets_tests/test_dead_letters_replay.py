"""Dead letters as an asset of their own, and their replay once the cause is fixed.

Orders are written under a newer schema than the pipeline's (a column ``note`` its CQL file lacks): the reader
sets each mutation that sets the column aside, the configuration accepts that, and the rest of the range loads.
The letters land in the PostgreSQL store, the ``dead_letters`` asset reports them; then the cause is fixed (the
next CQL file has the column), the letters are replayed, and every destination equals the reference model fed
with everything that was written. Real parts throughout: PostgreSQL, the in-process ClickHouse engine, Dagster.
"""

from __future__ import annotations

import os
import shutil
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cdc_assets.cassandra_model import CassandraModel
from cdc_assets.cassandra_schema.cql_file import load_cql_file
from cdc_assets.cassandra_schema.tables import TableSchema
from cdc_assets.change_batch import build_change_batch
from cdc_assets.cli import main
from cdc_assets.commitlog.generator import Workload, generate
from cdc_assets.config import PostgresDeadLetters, load_config, parse_config
from cdc_assets.dead_letters import (
    DeadLetter,
    DeadLetters,
    DeadLetterStore,
    PostgresDeadLetterStore,
    open_dead_letters,
)
from cdc_assets.defs.dead_letters import (
    DEAD_LETTERS_KEY,
    LOAD_ID_PREFIX,
    dead_letter_definitions,
    open_destinations,
    replay_dead_letters,
)
from cdc_assets.defs.keys import stream_key
from cdc_assets_tests.chdb_fixture import fresh_prefix
from cdc_assets_tests.daemon_process import start_daemon, stop_daemon
from cdc_assets_tests.pipeline_harness import NOW, SHOP_CQL, Pipeline, open_pipeline, write_config

DESTINATIONS = ("postgres", "clickhouse", "timescaledb")
SECRET = "s3cret-dl-pw"
STORE = {"dsn_env": "CDC_TEST_PG", "schema_prefix": "dl"}


@pytest.fixture
def newer_cql(tmp_path: Path) -> Path:
    """The next schema: shop.orders with the column ``note`` (same table id)."""
    path = tmp_path / "shop_next.cql"
    text = SHOP_CQL.read_text()
    assert "    tags set<text>,\n" in text
    path.write_text(text.replace("    tags set<text>,\n", "    tags set<text>,\n    note text,\n"))
    return path


@pytest.fixture
def pg_with_password(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """CDC_TEST_PG holds a DSN with a password (the test server trusts local connections, so any works)."""
    parts = conninfo_to_dict(pg_dsn)
    secret = str(parts.get("password") or SECRET)
    monkeypatch.setenv("CDC_TEST_PG", make_conninfo(**{**parts, "password": secret}))
    return secret


def tables_of(cql: Path) -> dict[str, TableSchema]:
    registry = load_cql_file(cql)
    return {name: registry.by_name(*name.split(".")) for name in ("shop.orders", "shop.customers")}


def write_newer_orders(pipeline: Pipeline, newer: dict[str, TableSchema], seed: int = 81) -> None:
    """Orders under the newer schema and customers under the pipeline's, remembered for the expected state."""
    orders = generate([newer["shop.orders"]], Workload(seed=seed, mutations=60), [pipeline.node.cdc_raw])
    customers = generate(
        [pipeline.tables["shop.customers"]], Workload(seed=seed + 1, mutations=200), [pipeline.node.cdc_raw]
    )
    pipeline.written = {
        "shop.orders": orders.changes("shop.orders"),
        "shop.customers": customers.changes("shop.customers"),
    }


def expected(table: TableSchema, changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    model = CassandraModel(table)
    model.apply(build_change_batch(table, changes))
    return model.current_state(NOW)


def current_states(config_path: Path, tables: dict[str, TableSchema]) -> dict[tuple[str, str], list]:
    destinations = open_destinations(load_config(config_path))
    try:
        return {
            (name, table): destination.current_state(tables[table], now=NOW)
            for name, destination in destinations.items()
            for table in tables
        }
    finally:
        for destination in destinations.values():
            destination.close()


def report(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult | dg.SkipReason:
    sensor = defs.get_sensor_def("dead_letters_report")
    with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs) as context:
        return sensor(context)


def metadata_of(result: dg.SensorResult) -> dict[str, Any]:
    [event] = result.asset_events
    assert event.asset_key == DEAD_LETTERS_KEY
    return {name: getattr(value, "value", value) for name, value in event.metadata.items()}


def dead_letter_loads(pg_dsn: str, helper: str) -> int:
    with psycopg.connect(pg_dsn) as connection:
        query = f'SELECT count(*) FROM "{helper}".loads WHERE starts_with(load_id, %s)'
        return connection.execute(query, [LOAD_ID_PREFIX]).fetchone()[0]


# -- the store, file or PostgreSQL: one interface ----------------------------------------------------------


@pytest.fixture(params=["file", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DeadLetters]:
    if request.param == "file":
        yield open_dead_letters(tmp_path / "letters" / "dead_letters.jsonl")
        return
    pg_dsn = request.getfixturevalue("pg_dsn")
    opened = PostgresDeadLetterStore(pg_dsn, "st")
    yield opened
    opened.close()


def letter(position: int, payload: bytes = b"m", stage: str = "reader", reason: str = "unknown column") -> DeadLetter:
    return DeadLetter(stage, reason, "CommitLog-7-11.log", position, "shop.orders", payload)


def test_a_letter_of_an_origin_already_stored_is_not_stored_twice(store: DeadLetters) -> None:
    store.append(letter(10))
    store.append(letter(10, reason="the same entry, read again"))
    store.append(letter(10, payload=b"another change of the same entry"))
    store.append(letter(10, stage="clickhouse"))
    store.append(replace_table(letter(10), None))

    assert len(store) == 4
    assert store.appended == 5
    assert next((s.id, s.letter.reason) for s in store.letters()) == (1, "unknown column")


def replace_table(original: DeadLetter, table: str | None) -> DeadLetter:
    return DeadLetter(original.stage, original.reason, original.segment, original.position, table, original.payload)


def test_replayed_letters_leave_the_pending_ones_and_failed_ones_keep_the_new_reason(store: DeadLetters) -> None:
    for position in (1, 2, 3):
        store.append(letter(position))
    store.append(letter(4, stage="postgres"))
    first = store.version()

    store.mark_replayed([1, 3], "loaded into postgres")
    store.mark_failed({2: "replay: still unknown"})

    assert [s.id for s in store.pending()] == [2, 4]
    assert [s.id for s in store.pending(stage="reader")] == [2]
    assert [s.id for s in store.pending(table="shop.customers")] == []
    failed = next(s for s in store.letters() if s.id == 2)
    assert (failed.letter.reason, failed.attempts, failed.pending) == ("replay: still unknown", 1, True)
    replayed = next(s for s in store.letters() if s.id == 1)
    assert replayed.replay_outcome == "loaded into postgres" and replayed.replayed_at is not None
    assert replayed.letter.payload == b"m"
    summary = store.summary()
    assert (summary.total, summary.pending, summary.replayed) == (4, 2, 2)
    assert summary.oldest_pending is not None and summary.oldest_pending.id == 2
    assert store.version() != first


def test_a_torn_line_of_a_writer_that_died_is_skipped_and_the_next_letter_starts_a_line(tmp_path: Path) -> None:
    path = tmp_path / "dead_letters.jsonl"
    store = DeadLetterStore(path)
    store.append(letter(1))
    with path.open("a") as out:
        out.write('{"stage": "reader", "reas')

    DeadLetterStore(path).append(letter(2))

    assert [s.letter.position for s in DeadLetterStore(path).letters()] == [1, 2]


def test_dead_letters_are_a_path_by_default_or_a_postgresql_table_and_old_configs_stay_valid(tmp_path: Path) -> None:
    document = {
        "nodes": [{"name": "node1", "cdc_raw": "cdc_raw"}],
        "schema": {"cql_file": str(SHOP_CQL)},
        "tables": ["shop.orders"],
        "destinations": {"postgres": {}},
        "dead_letters": "dead_letters.jsonl",
    }
    old = parse_config(document, base=tmp_path)
    assert old.dead_letters == tmp_path / "dead_letters.jsonl"
    assert isinstance(open_dead_letters(old.dead_letters), DeadLetterStore)
    assert isinstance(open_dead_letters(str(old.dead_letters)), DeadLetterStore)

    table = parse_config({**document, "dead_letters": {"schema_prefix": "dl"}}, base=tmp_path)
    assert table.dead_letters == PostgresDeadLetters(dsn_env="CDC_POSTGRES_DSN", schema_prefix="dl")
    # Dagster resources keep the setting as text; the factory reads it back.
    os.environ.pop("CDC_NO_SUCH_DSN", None)
    text = str(table.dead_letters.model_copy(update={"dsn_env": "CDC_NO_SUCH_DSN"}))
    with pytest.raises(Exception, match="environment variable CDC_NO_SUCH_DSN is not set"):
        open_dead_letters(text)


# -- the pipeline: stored, reported, replayed ----------------------------------------------------------


def test_letters_set_aside_under_an_older_schema_are_stored_reported_and_replayed_into_every_destination(
    tmp_path: Path,
    pg_dsn: str,
    pg_with_password: str,
    chdb_dsn: str,
    newer_cql: Path,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CDC_TEST_CH", chdb_dsn)
    destinations = {
        "postgres": {"dsn_env": "CDC_TEST_PG", "schema_prefix": "p_"},
        "clickhouse": {"dsn_env": "CDC_TEST_CH", "database_prefix": fresh_prefix()},
        "timescaledb": {"dsn_env": "CDC_TEST_PG", "schema_prefix": "ts_", "allow_plain_postgres": True},
    }
    accepting = {"dead_letters": STORE, "checks": {"accept_dead_letters": ["shop.orders"]}}
    config_path = write_config(tmp_path, destinations, **accepting)
    pipeline = open_pipeline(config_path, instance)
    newer = tables_of(newer_cql)
    write_newer_orders(pipeline, newer)

    assert pipeline.drain() >= 1
    assert all(result.success for result in pipeline.results)

    # Stored in PostgreSQL, one row per mutation set aside.
    with psycopg.connect(pg_dsn) as connection:
        rows = connection.execute(
            'SELECT stage, table_name, reason, replayed_at FROM "dl_cdc".dead_letters ORDER BY id'
        ).fetchall()
    assert rows and {(stage, table) for stage, table, _, _ in rows} == {("reader", "shop.orders")}
    assert all("unknown column 'note'" in reason and replayed is None for _, _, reason, replayed in rows)

    # Reported by the asset: the sensor records a materialization when the store changes, and only then.
    defs = dead_letter_definitions(pipeline.config, pipeline.tables)
    reported = report(defs, instance, None)
    assert isinstance(reported, dg.SensorResult)
    metadata = metadata_of(reported)
    assert (metadata["letters"], metadata["pending"], metadata["replayed"]) == (len(rows), len(rows), 0)
    assert "| `shop.orders` | reader | unknown column 'note'" in metadata["by table, stage and reason"]
    assert f"| {len(rows):,} | 0 |" in metadata["by table, stage and reason"]
    assert metadata["oldest pending"].startswith("#1: shop.orders (reader) at CommitLog-")
    assert isinstance(report(defs, instance, reported.cursor), dg.SkipReason)
    manual = dg.materialize(defs.assets, instance=instance)  # type: ignore[arg-type]
    assert manual.success

    # The cause is fixed: the next schema has the column. Replay through the command.
    fixed = write_config(tmp_path, destinations, schema={"cql_file": str(newer_cql)}, **accepting)
    monkeypatch.setenv("CDC_ASSETS_CONFIG", str(fixed))
    capsys.readouterr()
    assert main(["dead-letters", "replay"]) == 0
    printed = capsys.readouterr()
    assert f"replayed {len(rows)} letters" in printed.out and "0 still pending" in printed.out

    truth = {table: expected(newer[table], pipeline.written[table]) for table in newer}
    assert all(truth.values())
    states = current_states(fixed, newer)
    for (destination, table), state in states.items():
        assert state == truth[table], f"{destination} {table}"
    assert {destination for destination, _ in states} == set(DESTINATIONS)

    store = open_dead_letters(load_config(fixed).dead_letters)
    letters = list(store.letters())
    assert len(letters) == len(rows) and not list(store.pending())
    assert all(
        s.replay_outcome.startswith("loaded into postgres, clickhouse, timescaledb as dead-letter/") for s in letters
    )
    replayed = metadata_of(report(defs, instance, reported.cursor))  # type: ignore[arg-type]
    assert (replayed["pending"], replayed["replayed"]) == (0, len(rows)) and "oldest pending" not in replayed

    # Replaying again changes nothing and stores nothing twice.
    loads = dead_letter_loads(pg_dsn, "p__cdc")
    assert main(["dead-letters", "replay"]) == 0
    again = capsys.readouterr()
    assert "replayed 0 letters" in again.out
    assert current_states(fixed, newer) == states
    assert len(store) == len(rows) and dead_letter_loads(pg_dsn, "p__cdc") == loads
    assert main(["dead-letters", "list", "--all"]) == 0
    listed = capsys.readouterr()
    assert len(listed.out.splitlines()) == len(rows) and "replayed" in listed.out
    store.close()

    # No secret anywhere a person reads.
    shown = [printed.out, printed.err, again.out, again.err, listed.out, listed.err, str(metadata), str(replayed)]
    shown += [s.letter.reason + str(s.replay_outcome) for s in letters]
    assert not [text for text in shown if pg_with_password in text]


def test_a_letter_that_still_cannot_be_decoded_stays_pending_with_its_reason(
    tmp_path: Path, pg_dsn: str, newer_cql: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CDC_TEST_PG", pg_dsn)
    destinations = {"postgres": {"dsn_env": "CDC_TEST_PG", "schema_prefix": "p_"}}
    accepting = {"dead_letters": STORE, "checks": {"accept_dead_letters": ["shop.orders"]}}
    pipeline = open_pipeline(write_config(tmp_path, destinations, **accepting), instance)
    newer = tables_of(newer_cql)
    write_newer_orders(pipeline, newer, seed=91)
    pipeline.drain()
    store = open_dead_letters(pipeline.config.dead_letters)
    set_aside = len(store)
    assert set_aside > 0

    # Replayed before the cause is fixed (the job in the Dagster UI): every letter fails and stays pending.
    defs = dead_letter_definitions(pipeline.config, pipeline.tables)
    run = defs.get_job_def("replay_dead_letters").execute_in_process(instance=instance, raise_on_error=False)
    assert not run.success
    pending = list(store.pending())
    assert len(pending) == set_aside
    assert all(s.attempts == 1 and s.letter.reason.startswith("replay: unknown column 'note'") for s in pending)

    # A letter whose bytes no schema decodes stays pending after the fix, with its reason; the others converge.
    store.append(DeadLetter("reader", "malformed", "CommitLog-7-999.log", 42, "shop.orders", b"\x01\x99garbage"))
    fixed = load_config(write_config(tmp_path, destinations, schema={"cql_file": str(newer_cql)}, **accepting))
    result = replay_dead_letters(fixed)

    [stuck] = list(store.pending())
    assert stuck.letter.segment == "CommitLog-7-999.log" and stuck.attempts == 1
    assert stuck.letter.reason == "replay: malformed mutation: the bytes end inside it"
    assert result.failed == {stuck.id: stuck.letter.reason}
    assert len(result.replayed) == set_aside
    postgres = open_destinations(fixed)["postgres"]
    for table in newer:
        assert postgres.current_state(newer[table], now=NOW) == expected(newer[table], pipeline.written[table])
    postgres.close()
    store.close()


def test_the_same_range_read_twice_stores_each_letter_once(
    tmp_path: Path, pg_dsn: str, newer_cql: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CDC_TEST_PG", pg_dsn)
    first_home, second_home = tmp_path / "first", tmp_path / "second"
    first_home.mkdir()
    accepting = {"dead_letters": STORE, "checks": {"accept_dead_letters": ["shop.orders"]}}
    with dg.instance_for_test() as first_instance:
        first = open_pipeline(
            write_config(first_home, {"postgres": {"dsn_env": "CDC_TEST_PG", "schema_prefix": "a_"}}, **accepting),
            first_instance,
        )
        write_newer_orders(first, tables_of(newer_cql), seed=101)
        # The same segments, read again by a pipeline with no memory of the first (another instance, other tables).
        shutil.copytree(first.node.cdc_raw, second_home / "cdc_raw")
        first.drain()
    store = open_dead_letters(first.config.dead_letters)
    stored = [(s.id, s.letter.segment, s.letter.position) for s in store.letters()]
    assert stored

    with dg.instance_for_test() as second_instance:
        second = open_pipeline(
            write_config(second_home, {"postgres": {"dsn_env": "CDC_TEST_PG", "schema_prefix": "b_"}}, **accepting),
            second_instance,
        )
        assert second.drain() >= 1
        assert all(result.success for result in second.results)
        streams = [m for r in second.results for m in r.asset_materializations_for_node("read_cdc_raw")]
        read_again = [m.metadata["dead letters"].value for m in streams if m.asset_key == stream_key("node1")]
        assert sum(read_again) == len(stored)

    assert [(s.id, s.letter.segment, s.letter.position) for s in store.letters()] == stored
    store.close()


def test_changes_a_destination_refused_are_loaded_into_it_again_once_it_can_take_them(
    tmp_path: Path, pg_dsn: str, chdb_dsn: str, newer_cql: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CDC_TEST_PG", pg_dsn)
    monkeypatch.setenv("CDC_TEST_CH", chdb_dsn)
    destinations = {"clickhouse": {"dsn_env": "CDC_TEST_CH", "database_prefix": fresh_prefix()}}
    older_config = load_config(write_config(tmp_path, destinations, dead_letters=STORE))
    older, newer = tables_of(SHOP_CQL), tables_of(newer_cql)
    log = generate([newer["shop.orders"]], Workload(seed=111, mutations=60), [tmp_path / "elsewhere"])
    changes = log.changes("shop.orders")
    # ClickHouse still has the older table: the changes that set ``note`` are refused and set aside.
    clickhouse = open_destinations(older_config)["clickhouse"]
    clickhouse.ensure_table(older["shop.orders"])
    clickhouse.load(older["shop.orders"], build_change_batch(newer["shop.orders"], changes), load_id="live")
    store = open_dead_letters(older_config.dead_letters)
    refused = list(store.pending())
    assert refused and {(s.letter.stage, s.letter.table) for s in refused} == {("clickhouse", "shop.orders")}

    # While the configuration's schema still lacks the column, the letters stay pending, saying so.
    first = replay_dead_letters(older_config, stage="clickhouse")
    assert len(first.failed) == len(refused) and not first.replayed
    assert all("lacks column(s) note" in s.letter.reason and s.attempts == 1 for s in store.pending())

    newer_config = load_config(
        write_config(tmp_path, destinations, dead_letters=STORE, schema={"cql_file": str(newer_cql)})
    )
    dry = replay_dead_letters(newer_config, dry_run=True)
    assert len(dry.replayed) == len(refused) and len(list(store.pending())) == len(refused)
    result = replay_dead_letters(newer_config)

    assert not result.failed and len(result.replayed) == len(refused)
    assert not list(store.pending())
    assert all(s.replay_outcome.startswith("loaded into clickhouse as dead-letter/") for s in store.letters())
    assert clickhouse.current_state(newer["shop.orders"], now=NOW) == expected(newer["shop.orders"], changes)
    clickhouse.close()
    store.close()


# -- under the real daemon -----------------------------------------------------------------------------

_LOCATION = """
from cdc_assets.config import load_config
from cdc_assets.defs.cassandra.schema import captured_tables, load_registry
from cdc_assets.defs.dead_letters import dead_letter_definitions

config = load_config()
defs = dead_letter_definitions(config, captured_tables(config, load_registry(config.schema)))
"""


def test_the_daemon_refreshes_the_report_when_the_store_changes(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cdc_assets.devstack import write_dagster_yaml

    monkeypatch.setenv("CDC_TEST_PG", pg_dsn)
    config = write_config(
        tmp_path,
        {"postgres": {"dsn_env": "CDC_TEST_PG"}},
        dead_letters=STORE,
        alerts={"min_interval_seconds": 1},
    )
    (tmp_path / "location.py").write_text(textwrap.dedent(_LOCATION))
    write_dagster_yaml(tmp_path / "dagster")
    environment = {**os.environ, "CDC_ASSETS_CONFIG": str(config), "DAGSTER_HOME": str(tmp_path / "dagster")}
    store = open_dead_letters(load_config(config).dead_letters)
    store.append(letter(7))
    # Create the instance's storage before the daemon starts: two processes migrating one new SQLite store at
    # once race ("table alembic_version already exists").
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster")):
        pass
    daemon = start_daemon(tmp_path, "-f", "location.py", env=environment)
    try:
        with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
            wait_for_report(instance, {"letters": 1, "pending": 1, "replayed": 0}, tmp_path)
            store.append(letter(8))
            store.mark_replayed([1], "loaded into postgres")
            wait_for_report(instance, {"letters": 2, "pending": 1, "replayed": 1}, tmp_path)
    finally:
        stop_daemon(daemon)
        store.close()


def wait_for_report(instance: dg.DagsterInstance, counts: dict[str, int], tmp_path: Path, timeout: float = 90) -> None:
    """Until the latest materialization of the asset reports ``counts``."""
    deadline = time.monotonic() + timeout
    seen: dict = {}
    while time.monotonic() < deadline:
        event = instance.get_latest_materialization_event(DEAD_LETTERS_KEY)
        if event is not None and event.asset_materialization is not None:
            seen = {k: v.value for k, v in event.asset_materialization.metadata.items()}
            if all(seen.get(name) == count for name, count in counts.items()):
                return
        time.sleep(0.5)
    log = (tmp_path / "daemon.log").read_text(errors="replace")[-4000:]
    raise AssertionError(f"no report of {counts} within {timeout} s; last: {seen}\n{log}")
