"""The compose stack: docker-compose.yml, docker/dagster.yaml and docker/cdc_assets.yaml.

Each file is checked by the tool that reads it (``docker compose config``, Dagster's instance config schema,
``cdc_assets.config``), and the three are checked against each other: the run containers the Docker run launcher
starts outside compose must find the same volumes, network and environment as the compose services.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._config import process_config, resolve_to_config_type
from dagster._core.instance.ref import InstanceRef
from dagster._serdes.config_class import ConfigurableClassData
from dagster._utils.tags import TagConcurrencyLimitsCounter

from cdc_assets.config import PipelineConfig, parse_config
from cdc_assets.defs.keys import CHDB_TAG, NODE_TAG

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKER_DIR = REPO / "docker"
INSTANCE_FILE = DOCKER_DIR / "dagster.yaml"
PIPELINE_FILE = DOCKER_DIR / "cdc_assets.yaml"

#: What an operator must export before ``docker compose up``.
SECRETS = ("POSTGRES_PASSWORD", "CLICKHOUSE_PASSWORD", "TIMESCALEDB_PASSWORD")
#: The service that evaluates the sensors, which list each node's cdc_raw.
CODE_SERVER = "dagster-code"
#: The service that launches runs, and so the environment the run launcher forwards from.
LAUNCHER_HOST = "dagster-daemon"
DAGSTER_PG_ENV = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_DB", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD")


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def _instance() -> dict[str, Any]:
    return yaml.safe_load(INSTANCE_FILE.read_text(encoding="utf-8"))


def _pipeline() -> PipelineConfig:
    data = yaml.safe_load(PIPELINE_FILE.read_text(encoding="utf-8"))
    return parse_config(data, source=str(PIPELINE_FILE), base=DOCKER_DIR)


def _launcher_config() -> dict[str, Any]:
    return _instance()["run_launcher"]["config"]


def _docker_volume_names(compose: dict[str, Any]) -> dict[str, str]:
    """Compose volume key → the name Docker knows it by (what the run launcher must use)."""
    project = compose.get("name", REPO.name)
    return {key: (spec or {}).get("name", f"{project}_{key}") for key, spec in compose["volumes"].items()}


def _mounts(volumes: list[str], rename: dict[str, str] | None = None) -> dict[PurePosixPath, tuple[str, str]]:
    """Short-syntax ``source:target[:mode]`` mounts by target: (Docker volume name or host path, mode)."""
    mounts = {}
    for line in volumes:
        source, target, *mode = line.split(":")
        mounts[PurePosixPath(target)] = ((rename or {}).get(source, source), mode[0] if mode else "rw")
    return mounts


def _mount_holding(path: Path, mounts: dict[PurePosixPath, tuple[str, str]]) -> tuple[str, str] | None:
    """The mount a process sees ``path`` through: the deepest target that contains it."""
    holders = [target for target in mounts if PurePosixPath(path).is_relative_to(target)]
    return mounts[max(holders, key=lambda target: len(target.parts))] if holders else None


def _paths_the_pipeline_writes(config: PipelineConfig) -> list[Path]:
    return [*(node.cdc_raw for node in config.nodes), config.staging.path, config.dead_letters.parent]


def _instance_ref(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> InstanceRef:
    """docker/dagster.yaml as Dagster loads it from $DAGSTER_HOME (checked against the instance schema then),
    with dummy storage credentials."""
    for variable in DAGSTER_PG_ENV:
        monkeypatch.setenv(variable, "5432" if variable == "DAGSTER_PG_PORT" else "dummy")
    shutil.copy(INSTANCE_FILE, tmp_path / "dagster.yaml")
    return InstanceRef.from_dir(str(tmp_path))


def _validated(data: ConfigurableClassData) -> dict[str, Any]:
    """The configurable class's config, processed by the class's own schema (env vars resolved), not instantiated."""
    klass = getattr(importlib.import_module(data.module_name), data.class_name)
    result = process_config(resolve_to_config_type(klass.config_type()), yaml.safe_load(data.config_yaml) or {})
    assert result.success, f"{data.module_name}.{data.class_name}: {[error.message for error in result.errors]}"
    return dict(result.value)


def _run(node: str, *, chdb: bool = False) -> dg.DagsterRun:
    """A run as the node's sensor requests it."""
    tags = {NODE_TAG: node, **({CHDB_TAG: "1"} if chdb else {})}
    return dg.DagsterRun(job_name="cdc", run_id=str(uuid.uuid4()), tags=tags)


# --- docker compose itself ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def docker_compose() -> list[str]:
    if shutil.which("docker") is None:
        pytest.skip("the docker CLI is not installed: `docker compose config` cannot check docker-compose.yml")
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        said = (probe.stderr or probe.stdout).strip().splitlines()
        pytest.skip(
            "the docker compose plugin is not installed (`docker compose version`: "
            f"{said[0] if said else f'exit {probe.returncode}'})"
        )
    return ["docker", "compose"]


def _compose_config(command: list[str], tmp_path: Path, secrets: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in SECRETS and not key.startswith("COMPOSE_")}
    env.update(secrets)
    # An empty env file, so that a developer's .env cannot supply what the environment lacks.
    no_env_file = tmp_path / "empty.env"
    no_env_file.write_text("")
    return subprocess.run(
        [*command, "--env-file", str(no_env_file), "-f", str(COMPOSE_FILE), "config", "--quiet"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_file_is_valid_with_every_secret_set(docker_compose: list[str], tmp_path: Path) -> None:
    result = _compose_config(docker_compose, tmp_path, {name: f"dummy-{name.lower()}" for name in SECRETS})
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("missing", SECRETS)
def test_compose_refuses_to_start_without_a_secret_and_names_it(
    docker_compose: list[str], tmp_path: Path, missing: str
) -> None:
    result = _compose_config(docker_compose, tmp_path, {name: "dummy" for name in SECRETS if name != missing})
    assert result.returncode != 0
    assert missing in result.stderr


# --- docker-compose.yml, read as YAML ---------------------------------------------------------------------------


def test_compose_takes_every_secret_from_the_environment() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert set(re.findall(r"\$\{(\w+):\?", text)) == set(SECRETS)
    for name, service in _compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if "PASSWORD" in key:
                assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", str(value)), f"{name}: {key} is not from the environment"
            credentials = re.search(r"://[^:/@]+:([^@]*)@", str(value))
            if credentials:
                assert credentials.group(1).startswith("${"), f"{name}: {key} holds a literal password"


def test_every_image_is_pinned_to_a_version() -> None:
    for name, service in _compose()["services"].items():
        repository, _, tag = service["image"].rpartition(":")
        assert repository and re.match(r"\d", tag), f"{name}: {service['image']} is not pinned to a version"


def test_cassandra_cdc_space_matches_the_configured_node() -> None:
    (node,) = _pipeline().nodes
    assert _compose()["services"]["cassandra"]["environment"]["CDC_TOTAL_SPACE"] == f"{node.cdc_total_space_mb}MiB"


# --- docker/cdc_assets.yaml -------------------------------------------------------------------------------------


def test_pipeline_config_reads_one_node_from_the_cluster_into_every_destination() -> None:
    config = _pipeline()
    assert [(node.name, node.cdc_raw) for node in config.nodes] == [("cassandra1", Path("/var/lib/cassandra/cdc_raw"))]
    assert config.schema.cluster is not None
    assert config.schema.cluster.contact_points == ["cassandra"]
    assert config.destinations.names == ("postgres", "clickhouse", "timescaledb")
    assert all(path.is_absolute() for path in _paths_the_pipeline_writes(config))


# --- the three files against each other -------------------------------------------------------------------------


def test_code_server_and_run_containers_mount_the_same_volumes_read_write_where_the_pipeline_writes() -> None:
    compose = _compose()
    names = _docker_volume_names(compose)
    code_server = _mounts(compose["services"][CODE_SERVER]["volumes"], names)
    run_container = _mounts(_launcher_config()["container_kwargs"]["volumes"])
    for path in _paths_the_pipeline_writes(_pipeline()):
        seen_by_code_server = _mount_holding(path, code_server)
        assert seen_by_code_server is not None, f"{CODE_SERVER} does not mount {path}"
        assert seen_by_code_server[1] == "rw", f"{CODE_SERVER} mounts {path} read-only"
        assert seen_by_code_server[0] in names.values(), f"{path} is not on a named volume"
        assert _mount_holding(path, run_container) == seen_by_code_server, f"run containers see {path} elsewhere"


def test_run_containers_join_the_compose_network() -> None:
    networks = _compose()["networks"]
    assert _launcher_config()["network"] in {spec.get("name") for spec in networks.values()}


def test_run_containers_get_the_environment_the_pipeline_reads() -> None:
    config = _pipeline()
    destinations = [getattr(config.destinations, name) for name in config.destinations.names]
    needed = {"CDC_ASSETS_CONFIG", *DAGSTER_PG_ENV, *(destination.dsn_env for destination in destinations)}
    assert needed <= set(_launcher_config()["env_vars"])
    services = _compose()["services"]
    # The launcher copies each value from its own process (the daemon); the sensors read them in the code server.
    for service in (LAUNCHER_HOST, CODE_SERVER):
        missing = needed - set(services[service]["environment"])
        assert not missing, f"{service} does not set {sorted(missing)}"
    assert services[CODE_SERVER]["environment"]["DAGSTER_CURRENT_IMAGE"] == services[CODE_SERVER]["image"]


# --- docker/dagster.yaml, checked by Dagster ---------------------------------------------------------------------


def test_instance_config_is_valid_for_dagster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = _instance_ref(tmp_path, monkeypatch)
    storage = _validated(ref.storage_data)
    assert storage["postgres_db"]["scheme"] == "postgresql+psycopg2"
    assert storage["postgres_db"]["hostname"] == "dummy"
    _validated(ref.compute_logs_data)
    _validated(ref.run_coordinator_data)
    assert ref.run_launcher_data.class_name == "DockerRunLauncher"


def test_instance_runs_at_most_one_run_per_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    limits = _instance_ref(tmp_path, monkeypatch).settings["concurrency"]["runs"]["tag_concurrency_limits"]
    counter = TagConcurrencyLimitsCounter(limits, [_run("cassandra1")])
    assert counter.is_blocked(_run("cassandra1"))
    assert not counter.is_blocked(_run("cassandra2"))
    # The in-process ClickHouse engine takes one run at a time, whatever the node.
    with_chdb = TagConcurrencyLimitsCounter(limits, [_run("cassandra1", chdb=True)])
    assert with_chdb.is_blocked(_run("cassandra2", chdb=True))


def test_instance_gives_each_destination_pool_one_slot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pools = _instance_ref(tmp_path, monkeypatch).settings["concurrency"]["pools"]
    assert pools == {"default_limit": 1}


def test_run_launcher_is_a_valid_docker_run_launcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dagster_docker = pytest.importorskip(
        "dagster_docker",
        reason="dagster-docker is not installed (pip install -e '.[docker]'): the run launcher's config is unchecked",
    )
    from dagster._core.launcher import RunLauncher

    launcher = _instance_ref(tmp_path, monkeypatch).run_launcher_data.rehydrate(as_type=RunLauncher)
    assert isinstance(launcher, dagster_docker.DockerRunLauncher)
    assert launcher.networks == [_launcher_config()["network"]]
