"""Where the real Cassandra-written segments live (``../shared`` beside the repository), and their oracle."""

from __future__ import annotations

import os
from pathlib import Path

SHARED = Path(os.environ.get("CDC_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
COMMITLOG_FIXTURES = SHARED / "fixtures" / "commitlog"
SCHEMA_FIXTURES = Path(__file__).resolve().parent / "fixtures"
KEYSTORE = COMMITLOG_FIXTURES / "3.4-encrypted" / "cassandra.keystore"
KEYSTORE_PASSWORD = "cassandra"


def oracle(folder: str) -> dict[str, str]:
    """The ``key=value`` lines of a fixture folder's ``hash.txt``."""
    lines = (COMMITLOG_FIXTURES / folder / "hash.txt").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def segments(folder: str) -> list[Path]:
    return sorted((COMMITLOG_FIXTURES / folder).glob("CommitLog-*.log"))


def cassandra_hash(current: int, value: bytes) -> int:
    """CommitLogUpgradeTest's hash of one cell value: a 32-bit signed running sum of shifted bytes."""
    shift = 0
    for byte in value:
        current = (current + ((byte & 0xFF) << shift)) & 0xFFFFFFFF
        shift = (shift + 8) & 31
    return current - (1 << 32) if current >= 1 << 31 else current
