"""A real PostgreSQL server for the tests, and a fresh database for each test (or module) that asks for one.

The server is, in order: ``CDC_TEST_POSTGRES_DSN`` when set; PostgreSQL on 127.0.0.1:5432 (user
``postgres``) when one answers; else a private server this session starts with ``initdb``/``pg_ctl``
(found on PATH or under ``/usr/lib/postgresql/*/bin``) in a temporary directory on a free port, and stops
at the end. ``CDC_TEST_POSTGRES_PRIVATE=1`` skips the first two.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cdc_assets.devstack import free_port

# The chdb engine fixtures, for every module (chdb hosts one engine per process), the pipeline's, and the
# real Cassandra nodes of the tests marked ``cassandra``.
pytest_plugins = [
    "cdc_assets_tests.chdb_fixture",
    "cdc_assets_tests.pipeline_harness",
    "cdc_assets_tests.cassandra_fixture",
]

LOCAL_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def _answers(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


def _server_binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        pytest.fail(
            f"no PostgreSQL server reachable and no {name} to start one: set CDC_TEST_POSTGRES_DSN or install "
            "the server (apt-get install postgresql)"
        )
    return found


def _as_server_user(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the ``postgres`` account then."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A DSN (to its ``postgres`` database) of a PostgreSQL server the tests may create databases on."""
    configured = os.environ.get("CDC_TEST_POSTGRES_DSN")
    private = os.environ.get("CDC_TEST_POSTGRES_PRIVATE") == "1"
    if configured and not private:
        yield configured
        return
    if not private and _answers(LOCAL_DSN):
        yield LOCAL_DSN
        return
    with tempfile.TemporaryDirectory(prefix="cdc-pg-") as root:
        data = Path(root) / "data"
        if os.geteuid() == 0:
            os.chown(root, pwd.getpwnam("postgres").pw_uid, -1)
        port = free_port()
        subprocess.run(
            _as_server_user([_server_binary("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8"]),
            check=True,
            capture_output=True,
        )
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        pg_ctl = _server_binary("pg_ctl")
        subprocess.run(
            _as_server_user([pg_ctl, "-D", str(data), "-o", options, "-l", f"{root}/log", "-w", "start"]),
            check=True,
            capture_output=True,
        )
        try:
            yield f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
        finally:
            subprocess.run(_as_server_user([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]), check=False)


def _database(server: str) -> Iterator[str]:
    """A DSN of a database created on ``server`` for the caller alone, dropped when the caller is done."""
    name = f"cdc_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield make_conninfo(**{**conninfo_to_dict(server), "dbname": name})
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_dsn(postgres_server: str) -> Iterator[str]:
    """A DSN of a database created for this test alone, dropped afterwards."""
    yield from _database(postgres_server)


@pytest.fixture(scope="module")
def module_pg_dsn(postgres_server: str) -> Iterator[str]:
    """A DSN of a database shared by one module's tests (each keeping to schemas of its own), dropped afterwards."""
    yield from _database(postgres_server)
