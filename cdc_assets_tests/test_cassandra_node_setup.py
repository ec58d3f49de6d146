"""What a machine that cannot run a Cassandra node is told, before any node is started."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdc_assets.cassandra_node import CACHE_ENV, CassandraNodeError, check_prerequisites, fetch_cassandra


def _path_with(tmp_path: Path, tools: dict[str, str]) -> str:
    """A PATH holding only the given shell scripts."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, script in tools.items():
        tool = bin_dir / name
        tool.write_text(f"#!/bin/sh\n{script}\n", encoding="ascii")
        tool.chmod(0o755)
    return str(bin_dir)


def test_without_java_the_reason_names_java_17(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", _path_with(tmp_path, {}))

    with pytest.raises(CassandraNodeError, match="needs Java 17"):
        check_prerequisites()


@pytest.mark.parametrize(
    ("banner", "version"), [('openjdk version "21.0.2" 2024-01-16', 21), ('java version "1.8.0_392"', 8)]
)
def test_another_java_is_named_with_its_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, banner: str, version: int
) -> None:
    monkeypatch.setenv("PATH", _path_with(tmp_path, {"java": f"echo '{banner}' >&2"}))

    with pytest.raises(CassandraNodeError, match=f"java on PATH is version {version}$"):
        check_prerequisites()


def test_without_maven_and_no_fetched_jars_the_reason_names_maven(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    java = "echo 'openjdk version \"17.0.15\" 2025-04-15' >&2"
    monkeypatch.setenv("PATH", _path_with(tmp_path, {"java": java}))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))

    with pytest.raises(CassandraNodeError, match=r"needs Maven \(mvn\)"):
        check_prerequisites()


def test_a_failed_fetch_names_the_artifact_shows_mavens_output_and_is_redone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mvn = "echo '[ERROR] Could not resolve dependencies: connection refused'; exit 1"
    monkeypatch.setenv("PATH", _path_with(tmp_path, {"mvn": mvn}))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))

    for _ in range(2):
        with pytest.raises(CassandraNodeError) as raised:
            fetch_cassandra("5.0.6")
        assert "org.apache.cassandra:cassandra-all:5.0.6" in str(raised.value)
        assert "connection refused" in str(raised.value)
    assert not (tmp_path / "cache" / "cassandra-5.0.6" / "fetched").exists()
