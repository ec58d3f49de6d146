"""Alerts: each failed check and failed run reaches every channel once, its recovery once, across a daemon killed
in the middle of a delivery, and no secret reaches a channel, the event log or a run's configuration.

Real parts: a local HTTP server for the webhook and Slack's Web API, a local SMTP server that wants a login,
real runs on a real Dagster instance, the real ``dagster-daemon`` for the restart.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.instance.utils import RUNLESS_RUN_ID
from dagster._serdes import serialize_value
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cdc_assets.alerts import DUPLICATE_NOTE, Alert, CheckBook, CheckVerdict, Redactor
from cdc_assets.cassandra_schema.tables import Column
from cdc_assets.cassandra_schema.types import parse_type
from cdc_assets.commitlog.generator import Workload, generate
from cdc_assets.config import load_config
from cdc_assets.defs.alerts import SENSOR as ALERT_SENSOR
from cdc_assets.defs.alerts import AlertCursor
from cdc_assets.devstack import write_dagster_yaml
from cdc_assets.validation import NO_DEAD_LETTERS
from cdc_assets_tests.alert_harness import (
    SLACK_TOKEN,
    SMTP_PASSWORD,
    HttpReceiver,
    Monitored,
    SmtpReceiver,
    alerts_config,
    channel_environment,
    open_monitored,
    receivers,
)
from cdc_assets_tests.daemon_process import start_daemon, stop_daemon
from cdc_assets_tests.pipeline_harness import write_config

ROOT = Path(__file__).resolve().parents[1]
UI = "http://dagster.example:3000"


@pytest.fixture
def channels(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[HttpReceiver, SmtpReceiver]]:
    with receivers() as (http, smtp):
        for name, value in channel_environment(http, smtp).items():
            monkeypatch.setenv(name, value)
        yield http, smtp


@pytest.fixture
def postgres(monkeypatch: pytest.MonkeyPatch, pg_dsn: str) -> dict[str, dict[str, str]]:
    monkeypatch.setenv("CDC_TEST_PG", pg_dsn)
    return {"postgres": {"dsn_env": "CDC_TEST_PG", "schema_prefix": "a_"}}


def counts(http: HttpReceiver, smtp: SmtpReceiver) -> tuple[int, int, int]:
    return len(http.webhook), len(http.slack), len(smtp.messages)


def write_dead_letters(pipeline: Monitored, seed: int) -> None:
    """Orders written under a newer schema (a column the pipeline lacks): the read step sets each aside."""
    orders, customers = pipeline.tables["shop.orders"], pipeline.tables["shop.customers"]
    newer = orders.with_columns([*orders.columns, Column("note", parse_type("text"), "regular")])
    small = 256 << 10  # the default segment (32 MiB, preallocated) would fill the harness's 64 MiB cdc_raw
    generate([newer], Workload(seed=seed, mutations=30, segment_size=small), [pipeline.node.cdc_raw])
    generate([customers], Workload(seed=seed + 1, mutations=100, segment_size=small), [pipeline.node.cdc_raw])


def run_when_due(pipeline: Monitored, timeout: float = 15) -> dg.ExecuteInProcessResult:
    """Tick the node sensor until it requests the (failed earlier, so backed off) range, and run it."""
    deadline = time.monotonic() + timeout
    while (request := pipeline.tick()) is None:
        assert time.monotonic() < deadline, "the node sensor requested nothing"
        time.sleep(0.2)
    return pipeline.execute(request)


def wait_for(condition: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise AssertionError(f"{what} did not happen within {timeout} s\n{tail}")
        time.sleep(0.2)


def test_a_check_that_fails_then_passes_only_changes_state_twice() -> None:
    book = CheckBook()

    def seen(verdict: str, n: int) -> str | None:
        evaluation = CheckVerdict(
            id=str(n),
            asset="a",
            check="c",
            partition=None,
            passed=verdict == "pass",
            severity="ERROR" if verdict == "pass" else verdict,
            description="",
            details={},
            run_id=None,
            link="",
            occurred_at=0.0,
        )
        alert = book.observe(evaluation)
        return alert.title if alert else None

    titles = [seen(v, n) for n, v in enumerate(["pass", "WARN", "WARN", "ERROR", "ERROR", "pass", "pass"])]
    assert titles == [
        None,
        "[WARN] c failed on a",
        None,
        "[ERROR] c failed on a (was WARN)",
        None,
        "[OK] c passes again on a",
        None,
    ]


def test_a_partitioned_check_fails_and_recovers_window_by_window() -> None:
    book = CheckBook()

    def seen(window: str, passed: bool) -> str | None:
        verdict = CheckVerdict(
            id=window,
            asset="postgres/shop/orders",
            check="window_reconciliation",
            partition=window,
            passed=passed,
            severity="ERROR",
            description="",
            details={},
            run_id="r",
            link="",
            occurred_at=0.0,
            per_partition=True,
        )
        alert = book.observe(verdict)
        return alert and f"{alert.kind} {alert.partition}"

    assert seen("14:00", False) == "failure 14:00"
    assert seen("15:00", False) == "failure 15:00"  # another window, another failure
    assert seen("16:00", True) is None  # a good window does not fix the bad ones
    assert seen("14:00", True) == "recovery 14:00"
    assert seen("15:00", False) is None


def test_a_failed_check_and_its_run_reach_every_channel_once_and_so_does_the_recovery(
    tmp_path: Path, instance: dg.DagsterInstance, postgres: dict, channels: tuple[HttpReceiver, SmtpReceiver]
) -> None:
    http, smtp = channels
    pipeline = open_monitored(write_config(tmp_path, postgres, alerts=alerts_config(http)), instance)
    write_dead_letters(pipeline, seed=81)
    failed = pipeline.execute(pipeline.tick())
    assert not failed.success
    partition = failed.dagster_run.tags["dagster/partition"]

    # A tick that sends and dies before the daemon saves its cursor, then its replay: nothing is sent twice.
    pipeline.alerts(save=False)
    assert counts(http, smtp) == (2, 2, 2)
    pipeline.alerts()
    pipeline.alerts()
    assert counts(http, smtp) == (2, 2, 2)

    check, run = sorted(http.webhook, key=lambda body: body["kind"])
    assert (check["kind"], run["kind"]) == ("failure", "run_failure")
    assert check["asset"] == "cassandra/shop/orders" and check["check"] == NO_DEAD_LETTERS
    assert check["severity"] == "ERROR" and check["partition"] == partition
    assert check["link"] == f"{UI}/runs/{failed.run_id}"
    assert "unknown column 'note'" in check["details"]["details"]
    assert "not accepted" in check["description"]
    assert run["run_id"] == failed.run_id and run["link"] == f"{UI}/runs/{failed.run_id}"
    assert run["partition"] == partition and run["details"]["node"] == "node1"
    assert "blocking asset check failed" in run["details"]["step read_cdc_raw"]
    for text in [message["text"] for message in http.slack] + smtp.bodies():
        assert f"{UI}/runs/{failed.run_id}" in text
    slack_check = next(m["text"] for m in http.slack if m["text"].startswith("[ERROR] no_dead_letters"))
    for piece in ("asset: cassandra/shop/orders", f"partition: {partition}", "check: no_dead_letters", "ERROR"):
        assert piece in slack_check
    assert "unknown column 'note'" in slack_check
    assert {m["channel"] for m in http.slack} == {"#cdc-alerts"}
    assert {m["authorization"] for m in http.slack} == {f"Bearer {SLACK_TOKEN}"}
    assert sorted(smtp.subjects()) == sorted(body["title"] for body in http.webhook)
    assert len(smtp.logins) == 2 and DUPLICATE_NOTE not in "".join(smtp.bodies())

    # The configuration accepts the table's dead letters: the check passes again, announced once.
    accepting = write_config(
        tmp_path, postgres, alerts=alerts_config(http), checks={"accept_dead_letters": ["shop.orders"]}
    )
    recovered = open_monitored(accepting, instance)
    recovered.cursors = pipeline.cursors
    assert run_when_due(recovered).success
    recovered.alerts()
    recovered.alerts()
    assert counts(http, smtp) == (3, 3, 3), [b["title"] for b in http.webhook]
    recovery = http.webhook[-1]
    assert recovery["kind"] == "recovery" and recovery["severity"] == "OK"
    assert (recovery["asset"], recovery["check"]) == ("cassandra/shop/orders", NO_DEAD_LETTERS)
    assert http.slack[-1]["text"].startswith("[OK] no_dead_letters passes again on cassandra/shop/orders")
    assert smtp.subjects()[-1] == recovery["title"]


def test_a_channel_that_is_down_gets_its_alerts_later_and_the_others_get_them_once(
    tmp_path: Path, instance: dg.DagsterInstance, channels: tuple[HttpReceiver, SmtpReceiver]
) -> None:
    http, smtp = channels
    config = write_config(
        tmp_path,
        {"postgres": {"dsn_env": "NOT_SET_PG"}},
        nodes=[{"name": "node1", "cdc_raw": "cdc_raw", "cdc_total_space_mb": 1}],
        alerts=alerts_config(http),
    )
    pipeline = open_monitored(config, instance)
    pipeline.alerts()  # the sensor runs before anything fails, as it does once deployed
    for seed in range(9):  # 9 × 64 KiB: 56% of cdc_total_space
        generate(
            list(pipeline.tables.values()),
            Workload(seed=seed, mutations=100, segment_size=64 << 10),
            [pipeline.node.cdc_raw],
        )
    http.webhook_down = True
    pipeline.health()
    pipeline.alerts()
    pipeline.alerts()
    assert counts(http, smtp) == (0, 1, 1)
    assert json.loads(pipeline.cursors[ALERT_SENSOR] or "{}")["pending"]

    http.webhook_down = False
    pipeline.alerts()
    pipeline.alerts()
    assert counts(http, smtp) == (1, 1, 1)
    warning = http.webhook[0]
    assert (warning["severity"], warning["check"], warning["asset"]) == (
        "WARN",
        "cdc_raw_space",
        "cassandra/cdc_raw/node1",
    )
    assert warning["run_id"] is None and warning["link"] == f"{UI}/assets/cassandra/cdc_raw/node1?view=checks"
    assert "note" not in warning  # it failed before it was sent: not a possible duplicate
    assert float(warning["details"]["share of cdc_total_space"]) >= 0.5

    shutil.rmtree(pipeline.node.cdc_raw)
    pipeline.node.cdc_raw.mkdir()
    pipeline.health()
    pipeline.alerts()
    pipeline.alerts()
    assert counts(http, smtp) == (2, 2, 2)
    assert http.webhook[-1]["kind"] == "recovery" and http.webhook[-1]["check"] == "cdc_raw_space"


# --- the real daemon, killed in the middle of a delivery ------------------------------------------------------------


def start_alerting_daemon(home: Path) -> subprocess.Popen:
    return start_daemon(home, "-m", "cdc_assets_tests.alert_location", "-d", str(ROOT))


def saved_generation(instance: dg.DagsterInstance) -> int:
    """How many ticks of the alert sensor the daemon has saved."""
    for state in instance.all_instigator_state():
        if state.name == ALERT_SENSOR and state.instigator_data is not None:
            return AlertCursor.parse(state.instigator_data.cursor).generation  # type: ignore[attr-defined]
    return 0


def test_a_daemon_killed_while_sending_resends_nothing_a_channel_has_taken(
    tmp_path: Path, postgres: dict, channels: tuple[HttpReceiver, SmtpReceiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    http, smtp = channels
    write_dagster_yaml(tmp_path / "dagster")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    config = write_config(tmp_path, postgres, alerts=alerts_config(http))
    monkeypatch.setenv("CDC_ASSETS_CONFIG", str(config))
    log = tmp_path / "daemon.log"
    with dg.DagsterInstance.get() as instance:
        pipeline = open_monitored(config, instance)
        write_dead_letters(pipeline, seed=91)
        failed = pipeline.execute(pipeline.tick())
        assert not failed.success

        # The first alert reaches the webhook and Slack; the daemon dies while the mail server holds its email.
        smtp.hold_next.set()
        started = time.monotonic()
        daemon = start_alerting_daemon(tmp_path)
        try:
            wait_for(smtp.holding.is_set, 45, "the first email", log)
        finally:
            stop_daemon(daemon, signal.SIGKILL, timeout=30)
        smtp.release.set()
        assert counts(http, smtp) == (1, 1, 0)
        assert saved_generation(instance) == 0  # the tick never ended

        daemon = start_alerting_daemon(tmp_path)
        try:
            wait_for(lambda: counts(http, smtp) == (2, 2, 2), 45, "the alerts after the restart", log)
            delivered = saved_generation(instance)
            wait_for(lambda: saved_generation(instance) > delivered + 1, 30, "two more ticks", log)
            assert counts(http, smtp) == (2, 2, 2)
            # Only the channel cut off mid-send has it twice: it is told it may be a duplicate.
            first_email = smtp.bodies()[0]
            assert DUPLICATE_NOTE in first_email and NO_DEAD_LETTERS in first_email
            assert not any("note" in body for body in http.webhook)

            accepting = write_config(
                tmp_path, postgres, alerts=alerts_config(http), checks={"accept_dead_letters": ["shop.orders"]}
            )
            assert run_when_due(open_monitored(accepting, instance)).success
            wait_for(lambda: counts(http, smtp) == (3, 3, 3), 30, "the recovery", log)
            recovered = saved_generation(instance)
            wait_for(lambda: saved_generation(instance) > recovered + 1, 30, "two more ticks", log)
        finally:
            stop_daemon(daemon, timeout=30)
        assert counts(http, smtp) == (3, 3, 3)
        assert [body["kind"] for body in http.webhook] == ["failure", "run_failure", "recovery"]
        assert time.monotonic() - started < 90


# --- secrets -------------------------------------------------------------------------------------------------------


def test_an_error_that_quotes_a_secret_leaves_without_it(tmp_path: Path) -> None:
    environ = {
        "PG": "host=db.internal user=cdc password=pg-Secret-1 dbname=cdc",
        "TS": "postgresql://cdc:ts%2FSecret-2@ts.internal:5432/cdc",
        "CDC_ALERT_SLACK_TOKEN": SLACK_TOKEN,
        "CDC_ALERT_SMTP_URL": f"smtp://alerts:{SMTP_PASSWORD}@mail.internal:25",
    }
    config = load_config(
        write_config(
            tmp_path,
            {"postgres": {"dsn_env": "PG"}, "timescaledb": {"dsn_env": "TS", "allow_plain_postgres": True}},
        )
    )
    quoted = " ".join(environ.values()) + " ts/Secret-2 password='other-secret' xoxb-9-9-unknown-token"
    alert = Alert(
        "run-1", "run_failure", "ERROR", "run failed", quoted, "http://ui/runs/1", 0.0, details={"dsn": quoted}
    )
    sent = json.dumps(Redactor.for_config(config, environ).alert(alert).to_json())
    for secret in (
        "pg-Secret-1",
        "ts%2FSecret-2",
        "ts/Secret-2",
        SLACK_TOKEN,
        SMTP_PASSWORD,
        "other-secret",
        "unknown",
    ):
        assert secret not in sent
    assert "db.internal" in sent and "mail.internal" in sent  # what is not secret stays, to act on


def test_no_secret_reaches_an_alert_the_event_log_or_a_run_config(
    tmp_path: Path,
    instance: dg.DagsterInstance,
    pg_dsn: str,
    channels: tuple[HttpReceiver, SmtpReceiver],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    http, smtp = channels
    dsn = conninfo_to_dict(pg_dsn)
    pg_password = dsn.get("password") or "pg-Secret-Password-4242"
    unreachable = "postgresql://cdc:ts-Secret-Password-9876@127.0.0.1:1/cdc"
    mask_key = "mask-key-Secret-0123456789abcdef"
    monkeypatch.setenv("CDC_TEST_PG", make_conninfo(**{**dsn, "password": pg_password}))
    monkeypatch.setenv("CDC_TEST_TS", unreachable)
    monkeypatch.setenv("CDC_TEST_TOKEN_KEY", mask_key)
    secrets = [pg_password, "ts-Secret-Password-9876", mask_key, SLACK_TOKEN, SMTP_PASSWORD]
    config = write_config(
        tmp_path,
        {
            "postgres": {"dsn_env": "CDC_TEST_PG", "schema_prefix": "s_"},
            "timescaledb": {"dsn_env": "CDC_TEST_TS", "allow_plain_postgres": True},
        },
        masking={"columns": {"shop.customers.email": {"method": "tokenize", "key_env": "CDC_TEST_TOKEN_KEY"}}},
        alerts=alerts_config(http),
    )
    pipeline = open_monitored(config, instance)
    pipeline.write(300, seed=61)
    failed = pipeline.execute(pipeline.tick())
    assert not failed.success
    pipeline.health()
    pipeline.alerts()
    run_alert = next(body for body in http.webhook if body["kind"] == "run_failure")
    assert "timescaledb" in run_alert["description"] and "127.0.0.1" in run_alert["description"]
    assert counts(http, smtp)[0] >= 1 and len(http.slack) == len(smtp.messages) == len(http.webhook)

    texts: dict[str, str] = {}
    for number, body in enumerate(http.raw):
        texts[f"http body {number}"] = body.decode(errors="replace")
    for number, body in enumerate(smtp.raw):
        texts[f"email {number}"] = body.decode(errors="replace")
    for run in instance.get_runs():
        texts[f"run {run.run_id} config"] = json.dumps(run.run_config, default=str) + json.dumps(dict(run.tags))
    for run_id in [*(run.run_id for run in instance.get_runs()), RUNLESS_RUN_ID]:
        for entry in instance.all_logs(run_id):
            texts[f"event {run_id} {entry.timestamp}"] = serialize_value(entry)
    texts["alert cursor"] = pipeline.cursors[ALERT_SENSOR] or ""
    ledger = instance.run_storage.get_cursor_values(
        {f"cdc_assets/alerts/{ALERT_SENSOR}/{channel}" for channel in ("webhook", "slack", "email")}
    )
    texts["delivery ledger"] = json.dumps(ledger)
    assert len(texts) > 50
    leaks = [(where, secret) for where, text in texts.items() for secret in secrets if secret in text]
    assert leaks == []
