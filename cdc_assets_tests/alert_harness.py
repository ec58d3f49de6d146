"""Real receivers for alerts, and a pipeline whose code location holds the health checks and the alert sensor.

- :class:`HttpReceiver`: a local HTTP server that takes a generic webhook at ``/hook`` and answers Slack's
  ``chat.postMessage`` at ``/api/chat.postMessage`` as Slack does (``{"ok": true, ...}``).
- :class:`SmtpReceiver`: a local SMTP server (aiosmtpd) that requires a login and keeps every message it accepts;
  it can hold a delivery open, so a test can kill the sender in the middle of one.
- :func:`open_monitored`: the harness pipeline (``pipeline_harness``) with the code location's health checks and
  :func:`alert_definitions` merged in, as the code location will have them, and helpers to tick their sensors
  as the daemon does (a runless evaluation a sensor returns is recorded in the instance).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import dagster as dg
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from cdc_assets.cassandra_schema.cql_file import load_cql_file
from cdc_assets.config import load_config
from cdc_assets.definitions import build_definitions
from cdc_assets.defs.alerts import SENSOR as ALERT_SENSOR
from cdc_assets.defs.checks.health import SENSOR as HEALTH_SENSOR
from cdc_assets.devstack import free_port
from cdc_assets_tests.pipeline_harness import SHOP_CQL, Pipeline

SLACK_TOKEN = "xoxb-1111-2222-test-token-do-not-leak"
SMTP_USER = "alerts"
SMTP_PASSWORD = "smtp-pw-never-in-a-body"


class HttpReceiver:
    """A webhook and Slack's Web API on one local port; records what each was sent, headers included."""

    def __init__(self) -> None:
        self.webhook: list[dict[str, Any]] = []
        self.slack: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        #: While set, the webhook answers 503: a channel that is down.
        self.webhook_down = False
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.raw.append(body)
                if self.path.split("?")[0] == "/hook":
                    if receiver.webhook_down:
                        self._answer(503, b"down")
                        return
                    with receiver.lock:
                        receiver.webhook.append(json.loads(body))
                    self._answer(200, b"ok")
                elif self.path.endswith("/chat.postMessage"):
                    if self.headers.get_content_type() == "application/json":
                        fields = json.loads(body)
                    else:
                        fields = {key: values[0] for key, values in parse_qs(body.decode()).items()}
                    with receiver.lock:
                        receiver.slack.append({**fields, "authorization": self.headers.get("Authorization", "")})
                    answer = {"ok": True, "channel": fields.get("channel"), "ts": f"{time.time():.6f}"}
                    self._answer(200, json.dumps({**answer, "message": {"text": fields.get("text")}}).encode())
                else:
                    self._answer(404, b"not here")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def slack_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    def __enter__(self) -> HttpReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class _SmtpHandler:
    def __init__(self, receiver: SmtpReceiver):
        self.receiver = receiver

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        receiver = self.receiver
        if receiver.hold_next.is_set():
            receiver.hold_next.clear()
            receiver.holding.set()
            while not receiver.release.is_set():
                await asyncio.sleep(0.05)
            return "451 held and dropped by the test"
        with receiver.lock:
            receiver.raw.append(envelope.content)
            receiver.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK"


class SmtpReceiver:
    """A local SMTP server that wants ``SMTP_USER``/``SMTP_PASSWORD`` and keeps the messages it accepted."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.raw: list[bytes] = []
        self.logins: list[str] = []
        self.lock = threading.Lock()
        #: Set: the next message is held open (``holding`` set) until ``release``, then refused, not kept.
        self.hold_next = threading.Event()
        self.holding = threading.Event()
        self.release = threading.Event()
        self.port = free_port()
        self.controller = Controller(
            _SmtpHandler(self),
            hostname="127.0.0.1",
            port=self.port,
            authenticator=self._authenticate,
            auth_require_tls=False,
        )

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            SMTP_USER.encode(),
            SMTP_PASSWORD.encode(),
        )
        if ok:
            self.logins.append(data.login.decode())
        return AuthResult(success=ok)

    @property
    def url(self) -> str:
        return f"smtp://{SMTP_USER}:{SMTP_PASSWORD}@127.0.0.1:{self.port}"

    def bodies(self) -> list[str]:
        with self.lock:
            return [message.get_content() for message in self.messages]

    def subjects(self) -> list[str]:
        with self.lock:
            return [str(message["Subject"]) for message in self.messages]

    def __enter__(self) -> SmtpReceiver:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.controller.stop()


@contextmanager
def receivers() -> Iterator[tuple[HttpReceiver, SmtpReceiver]]:
    with HttpReceiver() as http, SmtpReceiver() as smtp:
        yield http, smtp


def channel_environment(http: HttpReceiver, smtp: SmtpReceiver) -> dict[str, str]:
    """The environment that turns all three channels on, pointed at the local receivers."""
    return {
        "CDC_ALERT_WEBHOOK_URL": http.webhook_url,
        "CDC_ALERT_SLACK_TOKEN": SLACK_TOKEN,
        "CDC_ALERT_SLACK_CHANNEL": "#cdc-alerts",
        "CDC_ALERT_SMTP_URL": smtp.url,
        "CDC_ALERT_EMAIL_TO": "oncall@example.com",
    }


def alerts_config(http: HttpReceiver, **overrides: Any) -> dict[str, Any]:
    return {
        "slack": {"base_url": http.slack_base_url},
        "ui_url": "http://dagster.example:3000",
        "min_interval_seconds": 1,
        **overrides,
    }


@dataclass
class Monitored(Pipeline):
    """A harness pipeline whose code location holds the health checks and the alert sensor too."""

    cursors: dict[str, str | None] = field(default_factory=dict)

    def sensor_result(self, name: str, cursor: str | None) -> dg.SensorResult:
        sensor = self.defs.get_sensor_def(name)
        with dg.build_sensor_context(instance=self.instance, definitions=self.defs, cursor=cursor) as context:
            result = sensor(context)
        for event in result.asset_events or []:
            # The daemon records what a sensor reports before it saves the cursor.
            self.instance.report_runless_asset_event(event)
        return result

    def health(self) -> list[dg.AssetCheckEvaluation]:
        """One tick of the health sensor, from its last cursor; the evaluations it reported."""
        result = self.sensor_result(HEALTH_SENSOR, self.cursors.get(HEALTH_SENSOR))
        self.cursors[HEALTH_SENSOR] = result.cursor
        return list(result.asset_events or [])

    def alerts(self, *, save: bool = True) -> dg.SensorResult:
        """One tick of the alert sensor from its last saved cursor; ``save=False`` is a tick whose end the daemon
        never reached (it crashed before saving the cursor)."""
        result = self.sensor_result(ALERT_SENSOR, self.cursors.get(ALERT_SENSOR))
        if save:
            self.cursors[ALERT_SENSOR] = result.cursor
        return result

    def latest_evaluation(self, key: dg.AssetKey, check: str) -> dg.AssetCheckEvaluation | None:
        records = self.instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(key, check), limit=1
        )
        if not records or records[0].event is None or records[0].event.dagster_event is None:
            return None
        data = records[0].event.dagster_event.event_specific_data
        return data if isinstance(data, dg.AssetCheckEvaluation) else None


def monitored_definitions(config_path: Path) -> dg.Definitions:
    config = load_config(config_path)
    return build_definitions(config)


def open_monitored(config_path: Path, instance: dg.DagsterInstance) -> Monitored:
    config = load_config(config_path)
    registry = load_cql_file(SHOP_CQL)
    tables = {name: registry.by_name(*name.split(".")) for name in config.tables}
    return Monitored(config, monitored_definitions(config_path), instance, tables)  # type: ignore[arg-type]
