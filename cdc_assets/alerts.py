"""Alerts: what is announced, how a failure and its recovery are told apart, and the channels that carry them.

No Dagster here: ``cdc_assets/defs/alerts.py`` reads the check evaluations and run failures from Dagster's
storage and hands them to these pieces.

- :class:`CheckBook` decides, from one check's successive verdicts (``pass``, ``WARN``, ``ERROR``), what to
  announce: a *failure* when it starts failing or its severity changes, a *recovery* when an announced failure
  passes again, and nothing while the verdict stays the same. A check is followed per asset and check name,
  and per partition when the check itself is partitioned (a window's suite that fails is fixed by that
  window passing, not the next one).
- :class:`Alert` is one announcement, rendered as text (Slack, email) or JSON (a webhook).
- Channels are on when their environment variables are set (:func:`configured_channels`): a generic webhook
  (a JSON body), Slack (``chat.postMessage`` through slack_sdk, at ``alerts.slack.base_url``) and email (SMTP).
- :func:`deliver` sends pending alerts to every channel that has not had them, recording each delivery in a
  :class:`DeliveryLedger` before (``sending``) and after (``sent``) the send, so a restarted sender never sends
  an alert a channel has accepted. A crash between a channel accepting an alert and the ``sent`` record
  resends it once, marked as a possible duplicate: at-least-once, the safer side for a pager.
- :class:`Redactor` takes every secret the configuration points at out of an alert before it leaves.
"""

from __future__ import annotations

import json
import logging
import os
import re
import smtplib
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from email.message import EmailMessage
from typing import Any, Literal, Protocol
from urllib.parse import unquote, urlsplit

from cdc_assets.config import AlertsConfig, PipelineConfig

log = logging.getLogger(__name__)

PASS = "pass"
SEVERITIES = ("WARN", "ERROR")
Kind = Literal["failure", "recovery", "run_failure"]

#: Sent with an alert whose earlier delivery to that channel was interrupted: it may have arrived already.
DUPLICATE_NOTE = "resent after an interrupted delivery: this may be a duplicate"
_MAX_VALUE_CHARS = 2_000
_TIMEOUT_SECONDS = 10.0


# --- what is announced ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alert:
    """One announcement: a check that fails (or fails differently), one that passes again, or a failed run."""

    #: Stable across restarts: the storage id of what caused it, so a channel's ledger can recognise it.
    id: str
    kind: Kind
    #: ``WARN`` or ``ERROR`` for failures, ``OK`` for recoveries.
    severity: str
    title: str
    description: str
    link: str
    occurred_at: float
    asset: str | None = None
    partition: str | None = None
    check: str | None = None
    run_id: str | None = None
    #: Metadata that explains it, each value as text.
    details: dict[str, str] = field(default_factory=dict)
    #: What repeated alerts of one problem share, for receivers that group them.
    dedup_key: str = ""

    def text(self, note: str | None = None) -> str:
        """The alert as plain text: title, where, what, the metadata, and the link."""
        lines = [self.title, ""]
        if note:
            lines += [f"({note})", ""]
        for label, value in (
            ("asset", self.asset),
            ("partition", self.partition),
            ("check", self.check),
            ("severity", self.severity),
            ("run", self.run_id),
            ("at", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.occurred_at))),
        ):
            if value:
                lines.append(f"{label}: {value}")
        lines += ["", self.description]
        if self.details:
            lines.append("")
            for label, value in self.details.items():
                if "\n" in value:
                    lines += [f"{label}:", *(f"  {line}" for line in value.splitlines())]
                else:
                    lines.append(f"{label}: {value}")
        lines += ["", self.link]
        return "\n".join(lines)

    def to_json(self, note: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"source": "cdc_assets", **asdict(self)}
        if note:
            body["note"] = note
        return body

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Alert:
        fields = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**fields)


def metadata_text(value: Any) -> str:
    """A metadata value as text for a person: JSON for structures, the value itself otherwise (bounded)."""
    if isinstance(value, (dict, list)):
        text = json.dumps(value, sort_keys=True, default=str)
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[:_MAX_VALUE_CHARS] + " …"


def run_link(ui_url: str, run_id: str) -> str:
    return f"{ui_url.rstrip('/')}/runs/{run_id}"


def asset_checks_link(ui_url: str, asset_path: Sequence[str]) -> str:
    return f"{ui_url.rstrip('/')}/assets/{'/'.join(asset_path)}?view=checks"


@dataclass(frozen=True)
class CheckVerdict:
    """One evaluation of a check, as the alerting rules need it."""

    id: str
    asset: str
    check: str
    partition: str | None
    passed: bool
    severity: str
    description: str
    details: dict[str, str]
    run_id: str | None
    link: str
    occurred_at: float
    #: Follow this check per partition (it is partitioned) rather than as one.
    per_partition: bool = False

    @property
    def verdict(self) -> str:
        return PASS if self.passed else self.severity

    @property
    def scope(self) -> str:
        base = f"{self.asset}:{self.check}"
        return f"{base}@{self.partition}" if self.per_partition and self.partition else base


class CheckBook:
    """Each followed check's last verdict and whether its failure was announced; JSON-serializable."""

    def __init__(self, state: Mapping[str, Mapping[str, Any]] | None = None):
        self.state: dict[str, dict[str, Any]] = {scope: dict(entry) for scope, entry in (state or {}).items()}

    def observe(self, verdict: CheckVerdict) -> Alert | None:
        """The alert ``verdict`` calls for, if any; remembers it either way."""
        before = self.state.get(verdict.scope, {"verdict": PASS, "announced": False})
        after = verdict.verdict
        if after == PASS:
            self.state.pop(verdict.scope, None)
            if before["verdict"] == PASS or not before["announced"]:
                return None
            return Alert(
                id=verdict.id,
                kind="recovery",
                severity="OK",
                title=f"[OK] {verdict.check} passes again on {verdict.asset}",
                description=f"Was {before['verdict']}. {verdict.description}".strip(),
                link=verdict.link,
                occurred_at=verdict.occurred_at,
                asset=verdict.asset,
                partition=verdict.partition,
                check=verdict.check,
                run_id=verdict.run_id,
                details=verdict.details,
                dedup_key=verdict.scope,
            )
        self.state[verdict.scope] = {"verdict": after, "announced": True}
        if before["verdict"] == after:
            return None
        change = f" (was {before['verdict']})" if before["verdict"] != PASS else ""
        return Alert(
            id=verdict.id,
            kind="failure",
            severity=after,
            title=f"[{after}] {verdict.check} failed on {verdict.asset}{change}",
            description=verdict.description,
            link=verdict.link,
            occurred_at=verdict.occurred_at,
            asset=verdict.asset,
            partition=verdict.partition,
            check=verdict.check,
            run_id=verdict.run_id,
            details=verdict.details,
            dedup_key=verdict.scope,
        )


# --- secrets -------------------------------------------------------------------------------------------------------

_PATTERNS = (
    (re.compile(r"(?i)(password\s*[=:]\s*)('[^']*'|\"[^\"]*\"|[^\s,;&]+)"), r"\1***"),
    (re.compile(r"(?i)(//[^/\s:@]+:)[^@\s/]+@"), r"\1***@"),
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9-]+"), "xox?-***"),
)
_MIN_SECRET_CHARS = 4


def password_parts(value: str) -> list[str]:
    """The password a URL or a libpq DSN holds, as written and decoded: the secret part of a connection string."""
    found = []
    try:
        password = urlsplit(value).password
    except ValueError:
        password = None
    if password:
        found += [password, unquote(password)]
    match = re.search(r"(?i)\bpassword\s*=\s*('([^']*)'|(\S+))", value)
    if match:
        found.append(match.group(2) or match.group(3) or "")
    return found


def secret_values(config: PipelineConfig, environ: Mapping[str, str]) -> list[str]:
    """Every secret the configuration points at: the passwords in its DSNs and SMTP URL (their hosts stay
    readable), and whole tokens, keys, salts and the webhook URL (which may carry a token in its path)."""
    alerts = config.alerts
    connections = [getattr(config.destinations, name).dsn_env for name in config.destinations.names]
    dead_letters_dsn = getattr(config.dead_letters, "dsn_env", None)  # a dead-letter table in PostgreSQL
    connections += [dead_letters_dsn, alerts.email.smtp_url_env] if dead_letters_dsn else [alerts.email.smtp_url_env]
    whole = [alerts.webhook_url_env, alerts.slack.token_env]
    for mask in config.masking.columns.values():
        whole += [variable for variable in (mask.salt_env, mask.key_env) if variable]
    cluster = config.schema.cluster
    if cluster is not None and cluster.password_env:
        whole.append(cluster.password_env)
    secrets = [part for name in connections if environ.get(name) for part in password_parts(environ[name])]
    return secrets + [environ[name] for name in whole if environ.get(name)]


class Redactor:
    """Replaces known secrets, and anything shaped like a password in a URL or DSN or a Slack token, by ``***``."""

    def __init__(self, secrets: Iterable[str]):
        self.secrets = sorted({s for s in secrets if len(s) >= _MIN_SECRET_CHARS}, key=len, reverse=True)

    @classmethod
    def for_config(cls, config: PipelineConfig, environ: Mapping[str, str] | None = None) -> Redactor:
        return cls(secret_values(config, os.environ if environ is None else environ))

    def text(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def alert(self, alert: Alert) -> Alert:
        return replace(
            alert,
            title=self.text(alert.title),
            description=self.text(alert.description),
            details={self.text(label): self.text(value) for label, value in alert.details.items()},
        )


# --- channels ------------------------------------------------------------------------------------------------------


class ChannelError(Exception):
    """A channel did not take an alert; the message names the channel and the reason, never a credential."""


class Channel(Protocol):
    name: str

    def send(self, alert: Alert, note: str | None = None) -> None: ...


@dataclass(frozen=True)
class WebhookChannel:
    """POSTs each alert as a JSON body."""

    url: str
    timeout: float = _TIMEOUT_SECONDS
    name: str = "webhook"

    def send(self, alert: Alert, note: str | None = None) -> None:
        body = json.dumps(alert.to_json(note)).encode()
        request = urllib.request.Request(
            self.url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as error:
            raise ChannelError(f"webhook answered HTTP {error.code}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ChannelError(f"webhook not reached: {type(error).__name__}: {reason}") from None


@dataclass(frozen=True)
class SlackChannel:
    """Posts each alert to a Slack channel with ``chat.postMessage``."""

    token: str = field(repr=False)
    channel: str
    base_url: str
    timeout: float = _TIMEOUT_SECONDS
    name: str = "slack"

    def send(self, alert: Alert, note: str | None = None) -> None:
        from slack_sdk import WebClient
        from slack_sdk.errors import SlackApiError, SlackClientError

        client = WebClient(token=self.token, base_url=self.base_url, timeout=int(self.timeout))
        try:
            client.chat_postMessage(channel=self.channel, text=alert.text(note), unfurl_links=False)
        except SlackApiError as error:
            raise ChannelError(f"slack refused the message: {error.response.get('error', 'unknown error')}") from None
        except (SlackClientError, OSError) as error:
            raise ChannelError(f"slack not reached: {type(error).__name__}") from None


@dataclass(frozen=True)
class EmailChannel:
    """Mails each alert through an SMTP server given as ``smtp://user:password@host:port`` (or ``smtps://``)."""

    smtp_url: str = field(repr=False)
    to: tuple[str, ...]
    sender: str
    timeout: float = _TIMEOUT_SECONDS
    name: str = "email"

    def send(self, alert: Alert, note: str | None = None) -> None:
        try:
            parts = urlsplit(self.smtp_url)
            port = parts.port
        except ValueError:
            raise ChannelError("email: the SMTP URL is not a URL") from None
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ChannelError("email: the SMTP URL must be smtp://[user:password@]host[:port] or smtps://…")
        secure = parts.scheme == "smtps"
        port = port or (465 if secure else 25)
        message = EmailMessage()
        message["Subject"] = alert.title
        message["From"] = self.sender
        message["To"] = ", ".join(self.to)
        message.set_content(alert.text(note))
        try:
            server: smtplib.SMTP = (
                smtplib.SMTP_SSL(parts.hostname, port, timeout=self.timeout, context=ssl.create_default_context())
                if secure
                else smtplib.SMTP(parts.hostname, port, timeout=self.timeout)
            )
            with server:
                server.ehlo()
                if not secure and server.has_extn("starttls"):
                    server.starttls(context=ssl.create_default_context())
                    server.ehlo()
                if parts.username:
                    server.login(unquote(parts.username), unquote(parts.password or ""))
                server.send_message(message)
        except smtplib.SMTPResponseException as error:
            raise ChannelError(f"email: {parts.hostname}:{port} answered {error.smtp_code}") from None
        except (smtplib.SMTPException, OSError) as error:
            raise ChannelError(f"email: {parts.hostname}:{port} not reached: {type(error).__name__}") from None


def configured_channels(config: AlertsConfig, environ: Mapping[str, str] | None = None) -> list[Channel]:
    """The channels whose environment variables are set, in the order alerts go out."""
    environ = os.environ if environ is None else environ
    channels: list[Channel] = []
    if environ.get(config.webhook_url_env):
        channels.append(WebhookChannel(environ[config.webhook_url_env]))
    slack = config.slack
    if environ.get(slack.token_env) and environ.get(slack.channel_env):
        channels.append(SlackChannel(environ[slack.token_env], environ[slack.channel_env], slack.base_url))
    email = config.email
    if environ.get(email.smtp_url_env) and environ.get(email.to_env):
        recipients = tuple(address.strip() for address in environ[email.to_env].split(",") if address.strip())
        channels.append(EmailChannel(environ[email.smtp_url_env], recipients, email.sender))
    return channels


# --- delivery ------------------------------------------------------------------------------------------------------

SENDING = "sending"
SENT = "sent"
#: The channel refused or could not be reached: sent again later, without the duplicate note.
FAILED = "failed"


class DeliveryLedger(Protocol):
    """What each channel has been given: ``sending`` just before a send, ``sent`` once the channel took it,
    ``failed`` when it did not."""

    def status(self, channel: str, alert_id: str) -> str | None: ...

    def mark(self, channel: str, alert_id: str, status: str) -> None: ...


@dataclass
class MemoryLedger:
    """A ledger in a dict, for the pure tests of :func:`deliver`."""

    entries: dict[tuple[str, str], str] = field(default_factory=dict)

    def status(self, channel: str, alert_id: str) -> str | None:
        return self.entries.get((channel, alert_id))

    def mark(self, channel: str, alert_id: str, status: str) -> None:
        self.entries[(channel, alert_id)] = status


def deliver(
    alerts: Sequence[Alert],
    channels: Sequence[Channel],
    ledger: DeliveryLedger,
    *,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> list[Alert]:
    """Send each alert, in order, to each channel that has not taken it; returns the alerts still owed somewhere.

    A channel that fails is not tried again in this call (the alerts after it keep their order for the next).
    Past ``deadline`` (a ``clock`` time) nothing more is sent.
    """
    failed: set[str] = set()
    owed = []
    for alert in alerts:
        missing = False
        for channel in channels:
            status = ledger.status(channel.name, alert.id)
            if status == SENT:
                continue
            if channel.name in failed or (deadline is not None and clock() > deadline):
                missing = True
                continue
            ledger.mark(channel.name, alert.id, SENDING)
            try:
                channel.send(alert, DUPLICATE_NOTE if status == SENDING else None)
            except ChannelError as error:
                log.warning("alert %s not delivered: %s; it is sent again on a later tick", alert.id, error)
                ledger.mark(channel.name, alert.id, FAILED)
                failed.add(channel.name)
                missing = True
                continue
            ledger.mark(channel.name, alert.id, SENT)
        if missing:
            owed.append(alert)
    return owed
