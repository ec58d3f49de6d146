"""The pipeline configuration: one typed file that points cdc_assets at a cluster and its warehouses.

The file is YAML (or JSON, which YAML reads too). It is found through ``CDC_ASSETS_CONFIG``, else as
``cdc_assets.yaml`` in the working directory. Relative paths in it are resolved against the file's own
directory, so the same file works from the webserver, the daemon and a run worker. Secrets never appear
in it: a destination names the environment variable holding its DSN (``dsn_env``), a mask the variable
holding its key, a cluster the variables holding its credentials.

A wrong key or value fails when the file is loaded, with the key's path and what was expected::

    cdc_assets.yaml: micro_batch.max_changes: Input should be greater than or equal to 1 (got 0)
"""

from __future__ import annotations

import json
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from cdc_assets.masking import MaskingPolicy

CONFIG_ENV = "CDC_ASSETS_CONFIG"
DEFAULT_FILE = "cdc_assets.yaml"
DESTINATIONS = ("postgres", "clickhouse", "timescaledb")

# Dagster asset key components and our load ids use these names: keep them plain.
_NAME = r"^[A-Za-z][A-Za-z0-9_]{0,62}$"
_ENV = r"^[A-Za-z_][A-Za-z0-9_]*$"


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeConfig(_Strict):
    """One Cassandra node: its ``cdc_raw`` directory (as this machine sees it) and the space Cassandra allows it."""

    name: str = Field(pattern=_NAME)
    cdc_raw: Path
    cdc_total_space_mb: int = Field(default=4096, ge=1)


class ClusterSchema(_Strict):
    """Read the schema from a live cluster's ``system_schema`` through cassandra-driver."""

    contact_points: list[str] = Field(min_length=1)
    port: int = Field(default=9042, ge=1, le=65535)
    keyspaces: list[str] | None = None
    username_env: str | None = Field(default=None, pattern=_ENV)
    password_env: str | None = Field(default=None, pattern=_ENV)


class SchemaConfig(_Strict):
    """Where table definitions come from: exactly one of a CQL file or a cluster."""

    cql_file: Path | None = None
    cluster: ClusterSchema | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SchemaConfig:
        if (self.cql_file is None) == (self.cluster is None):
            raise ValueError("give exactly one of cql_file (a CQL file with CREATE TABLE ... WITH ID) or cluster")
        return self


_SCHEMA_PREFIX = r"^[A-Za-z0-9_]{0,30}$"


def _not_reserved(prefix: str) -> str:
    if prefix.lower().startswith("pg_"):
        raise ValueError("PostgreSQL reserves schema names starting with 'pg_'; choose another schema_prefix")
    return prefix


class PostgresConfig(_Strict):
    dsn_env: str = Field(default="CDC_POSTGRES_DSN", pattern=_ENV)
    schema_prefix: str = Field(default="", pattern=_SCHEMA_PREFIX)
    piece_changes: int = Field(default=32_768, ge=1)

    _prefix = field_validator("schema_prefix")(_not_reserved)


class ClickHouseConfig(_Strict):
    dsn_env: str = Field(default="CDC_CLICKHOUSE_DSN", pattern=_ENV)
    database_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9_]{0,30}$")


class TimescaleConfig(_Strict):
    dsn_env: str = Field(default="CDC_TIMESCALE_DSN", pattern=_ENV)
    schema_prefix: str = Field(default="", pattern=_SCHEMA_PREFIX)
    allow_plain_postgres: bool = False
    chunk_interval_hours: float = Field(default=24, gt=0)
    compress_after_days: float | None = Field(default=7, gt=0)
    retention_days: float | None = Field(default=None, gt=0)
    piece_changes: int = Field(default=32_768, ge=1)

    _prefix = field_validator("schema_prefix")(_not_reserved)

    @property
    def chunk_interval(self) -> timedelta:
        return timedelta(hours=self.chunk_interval_hours)

    @property
    def compress_after(self) -> timedelta | None:
        return None if self.compress_after_days is None else timedelta(days=self.compress_after_days)

    @property
    def retention(self) -> timedelta | None:
        return None if self.retention_days is None else timedelta(days=self.retention_days)


class PostgresDeadLetters(_Strict):
    """The dead-letter store as the table ``"<schema_prefix>_cdc".dead_letters`` of a PostgreSQL database."""

    dsn_env: str = Field(default="CDC_POSTGRES_DSN", pattern=_ENV)
    schema_prefix: str = Field(default="", pattern=_SCHEMA_PREFIX)

    _prefix = field_validator("schema_prefix")(_not_reserved)

    def __str__(self) -> str:
        # The text form Dagster resources are configured with; ``open_dead_letters`` reads it back.
        return json.dumps(self.model_dump(), sort_keys=True)


def _dead_letters_kind(value: Any) -> str:
    return "postgres" if isinstance(value, dict | PostgresDeadLetters) else "file"


#: A path (a JSON-lines file, the default) or ``{dsn_env, schema_prefix}`` (a PostgreSQL table).
DeadLettersSetting = Annotated[
    Annotated[Path, Tag("file")] | Annotated[PostgresDeadLetters, Tag("postgres")],
    Discriminator(_dead_letters_kind),
]


class DestinationsConfig(_Strict):
    """The warehouses to load; leave one out to not load it."""

    postgres: PostgresConfig | None = None
    clickhouse: ClickHouseConfig | None = None
    timescaledb: TimescaleConfig | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> DestinationsConfig:
        if not self.names:
            raise ValueError(f"configure at least one of {', '.join(DESTINATIONS)}")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name in DESTINATIONS if getattr(self, name) is not None)


class MicroBatchConfig(_Strict):
    """How much one live run reads, and how often a node is polled.

    A run stops reading at the first sync section boundary past either bound, so a run may go over them by
    at most one section.
    """

    max_changes: int = Field(default=200_000, ge=1)
    max_bytes: int = Field(default=64 << 20, ge=1)
    min_interval_seconds: int = Field(default=5, ge=1)


class RetryConfig(_Strict):
    """Retries of a destination step that failed transiently (a dropped connection, a timeout)."""

    max_retries: int = Field(default=3, ge=0)
    delay_seconds: float = Field(default=2.0, ge=0)
    #: Ceiling of the sensor's wait before it requests a failed range again (doubling from min_interval).
    max_backoff_seconds: float = Field(default=300.0, ge=1)


Consistency = Literal["ANY", "ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM", "EACH_QUORUM", "LOCAL_ONE"]


class SnapshotConfig(_Strict):
    """The snapshot of the rows a table held before capture started (``cdc_assets.snapshot``).

    It reads through cassandra-driver from ``cluster``, by default the schema source's cluster; with neither,
    the pipeline has no snapshot assets.
    """

    cluster: ClusterSchema | None = None
    page_size: int = Field(default=1000, ge=1)
    consistency: Consistency = "LOCAL_QUORUM"
    #: Token ranges read one after another, each logged as it completes.
    splits: int = Field(default=16, ge=1)
    #: CQL rows per change batch, and so per staged range and per destination load.
    batch_rows: int = Field(default=20_000, ge=1)


class StagingConfig(_Strict):
    """Where staged change batches (Parquet) are kept, and for how long: backfills work within the retention."""

    path: Path = Path("var/staging")
    retention_hours: float = Field(default=168, gt=0)


class Expectation(_Strict):
    """One Great Expectations 1.x expectation added to a table's suite: its name and keyword arguments."""

    expectation: str = Field(pattern=r"^expect_[a-z0-9_]+$")
    kwargs: dict[str, Any] = Field(default_factory=dict)


class LagThresholds(_Strict):
    """Lag from a change's write time to its visibility in a destination: WARN and ERROR above these."""

    warn_seconds: float = Field(default=60, gt=0)
    error_seconds: float = Field(default=300, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> LagThresholds:
        if self.error_seconds < self.warn_seconds:
            raise ValueError("error_seconds must be at least warn_seconds")
        return self


class ChecksConfig(_Strict):
    """Asset checks: what the blocking batch validation accepts, and the thresholds of the others."""

    #: Tables whose dead letters are accepted: listed and reported, but they do not fail the batch check.
    accept_dead_letters: list[str] = Field(default_factory=list)
    #: Expectations added to each table's default suite, by ``keyspace.table``.
    expectations: dict[str, list[Expectation]] = Field(default_factory=dict)
    lag: LagThresholds = Field(default_factory=LagThresholds)
    #: Per destination, overriding ``lag``.
    destination_lag: dict[Literal["postgres", "clickhouse", "timescaledb"], LagThresholds] = Field(default_factory=dict)
    cdc_raw_warn_share: float = Field(default=0.5, gt=0, le=1)
    cdc_raw_error_share: float = Field(default=0.8, gt=0, le=1)
    #: A node whose durable log has grown but whose committed position has not moved for this long has stalled.
    stalled_after_seconds: float = Field(default=600, gt=0)

    @model_validator(mode="after")
    def _shares_ordered(self) -> ChecksConfig:
        if self.cdc_raw_error_share < self.cdc_raw_warn_share:
            raise ValueError("cdc_raw_error_share must be at least cdc_raw_warn_share")
        return self

    def lag_for(self, destination: str) -> LagThresholds:
        return self.destination_lag.get(destination, self.lag)  # type: ignore[call-overload]


class SlackConfig(_Strict):
    token_env: str = Field(default="CDC_ALERT_SLACK_TOKEN", pattern=_ENV)
    channel_env: str = Field(default="CDC_ALERT_SLACK_CHANNEL", pattern=_ENV)
    #: Slack's API base URL; a test points it at a local server.
    base_url: str = "https://slack.com/api/"


class EmailConfig(_Strict):
    #: ``smtp://user:password@host:port`` (or ``smtps://``), from the environment only.
    smtp_url_env: str = Field(default="CDC_ALERT_SMTP_URL", pattern=_ENV)
    to_env: str = Field(default="CDC_ALERT_EMAIL_TO", pattern=_ENV)
    sender: str = "cdc-assets@localhost"


class AlertsConfig(_Strict):
    """Where failed checks and runs are announced. A channel is on when its environment variables are set."""

    webhook_url_env: str = Field(default="CDC_ALERT_WEBHOOK_URL", pattern=_ENV)
    slack: SlackConfig = Field(default_factory=SlackConfig)
    email: EmailConfig = Field(default_factory=EmailConfig)
    #: Where the Dagster UI is reached, for the run links in alerts.
    ui_url: str = "http://127.0.0.1:3000"
    min_interval_seconds: int = Field(default=10, ge=1)


class PipelineConfig(_Strict):
    """The whole pipeline: nodes, schema, tables, destinations, masking, bounds, staging, snapshots, retries."""

    nodes: list[NodeConfig] = Field(min_length=1)
    schema_: SchemaConfig = Field(alias="schema")
    tables: list[Annotated[str, Field(pattern=r"^[^.]+\.[^.]+$")]] = Field(min_length=1)
    destinations: DestinationsConfig
    masking: MaskingPolicy = Field(default_factory=MaskingPolicy)
    micro_batch: MicroBatchConfig = Field(default_factory=MicroBatchConfig)
    retries: RetryConfig = Field(default_factory=RetryConfig)
    staging: StagingConfig = Field(default_factory=StagingConfig)
    snapshot: SnapshotConfig = Field(default_factory=SnapshotConfig)
    dead_letters: DeadLettersSetting = Path("var/dead_letters.jsonl")
    checks: ChecksConfig = Field(default_factory=ChecksConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("nodes")
    @classmethod
    def _unique_nodes(cls, nodes: list[NodeConfig]) -> list[NodeConfig]:
        names = [node.name for node in nodes]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"node names must be unique; repeated: {', '.join(duplicates)}")
        return nodes

    @field_validator("tables")
    @classmethod
    def _unique_tables(cls, tables: list[str]) -> list[str]:
        if len(set(tables)) != len(tables):
            raise ValueError("a table is listed twice")
        return tables

    @property
    def schema(self) -> SchemaConfig:
        return self.schema_

    @property
    def snapshot_cluster(self) -> ClusterSchema | None:
        """Where snapshots are read: the snapshot's own cluster, else the schema source's."""
        return self.snapshot.cluster or self.schema_.cluster

    def node(self, name: str) -> NodeConfig:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node named {name!r} in the configuration")


def _resolve(config: PipelineConfig, base: Path) -> PipelineConfig:
    """The configuration with every relative path made absolute against ``base``."""

    def absolute(path: Path) -> Path:
        return path if path.is_absolute() else (base / path).resolve()

    schema = config.schema
    if schema.cql_file is not None:
        schema = schema.model_copy(update={"cql_file": absolute(schema.cql_file)})
    return config.model_copy(
        update={
            "nodes": [node.model_copy(update={"cdc_raw": absolute(node.cdc_raw)}) for node in config.nodes],
            "schema_": schema,
            "staging": config.staging.model_copy(update={"path": absolute(config.staging.path)}),
            "dead_letters": (
                absolute(config.dead_letters) if isinstance(config.dead_letters, Path) else config.dead_letters
            ),
        }
    )


def _describe(error: ValidationError, source: str) -> str:
    lines = []
    for problem in error.errors():
        location = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        message = problem["msg"]
        if problem["type"] == "extra_forbidden":
            message = "unknown key"
        elif problem["type"] == "missing":
            message = "required key is missing"
        shown = "" if problem["type"] in ("missing", "extra_forbidden") else f" (got {problem.get('input')!r})"
        # Never echo a value that might be a secret: masks read them from the environment, not from the file.
        if re.search(r"(?i)password|secret|key_env|salt_env", location):
            shown = ""
        lines.append(f"{source}: {location}: {message}{shown}")
    return "\n".join(lines)


def parse_config(data: Any, *, source: str = "<config>", base: Path | None = None) -> PipelineConfig:
    """Validate a parsed configuration document; relative paths resolve against ``base`` (default: cwd)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level, got {type(data).__name__}")
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None
    return _resolve(config, base or Path.cwd())


def load_config(path: str | os.PathLike[str] | None = None) -> PipelineConfig:
    """Load the configuration from ``path``, ``$CDC_ASSETS_CONFIG`` or ``./cdc_assets.yaml``."""
    chosen = Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_FILE)
    if not chosen.is_file():
        raise ConfigError(
            f"no pipeline configuration at {chosen}: set {CONFIG_ENV} to a YAML file "
            f"(the repository's {DEFAULT_FILE} is the embedded default)"
        )
    try:
        data = yaml.safe_load(chosen.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{chosen}: not valid YAML: {error}") from None
    return parse_config(data, source=str(chosen), base=chosen.resolve().parent)
