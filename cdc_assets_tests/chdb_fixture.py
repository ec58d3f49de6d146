"""The in-process ClickHouse engine (chdb) for tests: one engine for the whole session, a fresh database per test.

chdb hosts one engine (one data path) per process, so every test shares one path, whichever module
asks for it; each test gets its own database prefix instead. The root conftest.py registers these
fixtures for every test module.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cdc_assets.dead_letters import DeadLetterStore
from cdc_assets.destinations.clickhouse.destination import ClickHouseDestination

_prefixes = itertools.count()


def fresh_prefix() -> str:
    """A database prefix no other test of this process uses."""
    return f"test{next(_prefixes)}_"


@functools.cache
def process_dsn() -> str:
    """The one chdb DSN of this process, its data in a temporary directory removed at exit."""
    path = tempfile.mkdtemp(prefix="cdc_assets_chdb_")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return f"chdb://{path}"


def new_destination(dsn: str, dead_letters: Path | None = None) -> ClickHouseDestination:
    """A destination on ``dsn`` writing into databases of its own, with a dead-letter store at ``dead_letters``."""
    store = DeadLetterStore(dead_letters) if dead_letters is not None else None
    return ClickHouseDestination(dsn, fresh_prefix(), dead_letters=store)


@pytest.fixture(scope="session")
def chdb_dsn() -> str:
    """The session's chdb DSN."""
    return process_dsn()


@pytest.fixture(scope="session")
def clickhouse_factory(chdb_dsn: str) -> Callable[[Path | None], ClickHouseDestination]:
    """Makes destinations on the session engine, each writing into databases of its own.

    Pass a path for a dead-letter store, or None for a destination without one.
    """
    return functools.partial(new_destination, chdb_dsn)


@pytest.fixture
def clickhouse(
    clickhouse_factory: Callable[[Path | None], ClickHouseDestination], tmp_path: Path
) -> Iterator[ClickHouseDestination]:
    """A ClickHouse destination on the session engine, with a fresh database and a dead-letter store."""
    destination = clickhouse_factory(tmp_path / "dead-letters.jsonl")
    yield destination
    destination.close()
