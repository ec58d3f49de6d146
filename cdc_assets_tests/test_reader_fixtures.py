"""Real segments written by real Cassandra nodes reproduce Cassandra's own replay oracle (hash.txt)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cdc_assets.cassandra_schema.cql_file import load_cql_file
from cdc_assets.commitlog.encryption import EncryptionKeys
from cdc_assets.commitlog.errors import CorruptSegmentError, TruncatedSegmentError
from cdc_assets.commitlog.reader import CommitLogReader, scan_segment
from cdc_assets_tests.shared_fixtures import (
    KEYSTORE,
    KEYSTORE_PASSWORD,
    SCHEMA_FIXTURES,
    cassandra_hash,
    oracle,
    segments,
)

DECODABLE = [
    ("4.0.11", "standard1-4.0.11.cql", False),
    ("3.0.29", "standard1-3.0.29.cql", False),
    ("3.4-encrypted", "standard1-3.4.cql", True),
]


def _cells_and_hash(rows: list[tuple[str, list[bytes | None]]]) -> tuple[int, int]:
    """Count and hash the cells of rows whose clustering value starts with "name", as the oracle does."""
    cells = current = 0
    for clustering, values in rows:
        if clustering.startswith("name"):
            for value in values:
                if value is not None:
                    cells += 1
                    current = cassandra_hash(current, value)
    return cells, current


def _raw(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _json_raw(value: str) -> bytes:
    """A blob prints as 0x-hex, ascii as itself (3.0.29's logged schema declares the values ascii)."""
    return bytes.fromhex(value[2:]) if value.startswith("0x") else value.encode()


def _keys(encrypted: bool) -> EncryptionKeys | None:
    return EncryptionKeys.from_keystore(KEYSTORE, KEYSTORE_PASSWORD) if encrypted else None


@pytest.mark.parametrize(("folder", "schema", "encrypted"), DECODABLE)
def test_reader_reproduces_cassandras_oracle(folder: str, schema: str, encrypted: bool) -> None:
    reader = CommitLogReader(load_cql_file(SCHEMA_FIXTURES / schema), keys=_keys(encrypted))
    result = reader.read_segments(segments(folder))
    # The clustering column's name and the value types come from whichever schema the log itself carries
    # (3.0.29's own CREATE TABLE names them differently from the upgrade test's); the bytes are the same.
    table = result.tables["Keyspace1.Standard1"]
    clustering = table.clustering[0].name
    rows = [
        (row[clustering], [_raw(row[c.name]["value"]) for c in table.regulars if row[c.name] is not None])
        for row in result.batches["Keyspace1.Standard1"].to_pylist()
    ]
    cells, digest = _cells_and_hash(rows)
    expected = oracle(folder)
    assert (cells, digest) == (int(expected["cells"]), int(expected["hash"]))
    assert result.stats.problems == []
    assert result.stats.dead_letters == []


@pytest.mark.parametrize(("folder", "schema", "encrypted"), DECODABLE)
def test_dump_command_reproduces_cassandras_oracle(folder: str, schema: str, encrypted: bool) -> None:
    command = [sys.executable, "-m", "cdc_assets.cli", "commitlog", "dump", *map(str, segments(folder))]
    command += ["--schema", str(SCHEMA_FIXTURES / schema)]
    if encrypted:
        command += ["--keystore", str(KEYSTORE), "--keystore-password", KEYSTORE_PASSWORD]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    changes = [json.loads(line) for line in done.stdout.splitlines()]
    rows = [
        (
            next(iter(change["clustering"].values())),
            [_json_raw(cell["value"]) for cell in change["cells"].values() if not cell["deleted"]],
        )
        for change in changes
        if change["table"] == "Keyspace1.Standard1"
    ]
    expected = oracle(folder)
    assert _cells_and_hash(rows) == (int(expected["cells"]), int(expected["hash"]))


def test_dump_resumes_strictly_after_a_saved_position() -> None:
    segment = segments("4.0.11")[0]
    schema = str(SCHEMA_FIXTURES / "standard1-4.0.11.cql")
    base = [sys.executable, "-m", "cdc_assets.cli", "commitlog", "dump", str(segment), "--schema", schema]
    everything = [json.loads(line) for line in subprocess.run(base, capture_output=True, text=True).stdout.splitlines()]
    middle = everything[len(everything) // 2]
    resumed_run = subprocess.run(
        [*base, "--from", f"{middle['segment']}:{middle['position']}"], capture_output=True, text=True
    )
    resumed = [json.loads(line) for line in resumed_run.stdout.splitlines()]
    assert resumed == [change for change in everything if change["position"] > middle["position"]]
    assert resumed


def test_encrypted_segment_without_keystore_is_a_clear_error() -> None:
    command = [sys.executable, "-m", "cdc_assets.cli", "commitlog", "dump", str(segments("3.4-encrypted")[0])]
    command += ["--schema", str(SCHEMA_FIXTURES / "standard1-3.4.cql")]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert "encrypted" in done.stderr and "keystore" in done.stderr
    assert done.stdout == ""


def test_mutations_of_tables_missing_from_the_schema_are_set_aside_with_position_and_reason() -> None:
    registry = load_cql_file(SCHEMA_FIXTURES / "standard1-3.0.29.cql")
    # The 4.0.11 segment's table id is not in the 3.0.29 schema, and with the log's own schema changes
    # ignored, nothing teaches it to the reader: every Standard1 mutation is for an unknown table.
    result = CommitLogReader(registry, track_schema=False).read_segments(segments("4.0.11"))
    assert result.batches == {}
    letters = result.stats.dead_letters
    assert len(letters) == 355
    assert result.stats.skipped_system == 3  # system.local twice, and the system_schema CREATE TABLE
    assert all("657e5210-7cbb-11ee-9858-c9aa1eb53e69" in letter.reason for letter in letters)
    assert letters[0].segment == "CommitLog-7-1699285478684.log" and letters[0].position > 0
    assert all(len(letter.payload) >= 10 for letter in letters)


@pytest.mark.parametrize("folder", ["2.2-lz4", "2.2-snappy"])
def test_compressed_pre_3_0_segments_walk_cleanly(folder: str) -> None:
    for segment in segments(folder):
        scan = scan_segment(segment)
        assert scan.problems == []
        positions = [position for position, _ in scan.entries]
        assert positions == sorted(positions)
    assert sum(len(scan_segment(segment).entries) for segment in segments(folder)) > 1000


def test_truncated_segment_yields_every_complete_entry_before_the_cut() -> None:
    full = scan_segment(segments("2.2-lz4")[0])
    cut = scan_segment(segments("2.2-lz4-truncated")[0])
    assert cut.entries == full.entries[: len(cut.entries)]
    assert 0 < len(cut.entries) < len(full.entries)
    assert all(isinstance(problem, TruncatedSegmentError) for problem in cut.problems) and cut.problems


def test_bit_rot_is_reported_where_it_is_and_never_decoded() -> None:
    original_path, rotten_path = segments("2.2-lz4")[0], segments("2.2-lz4-bitrot")[0]
    original, rotten = original_path.read_bytes(), rotten_path.read_bytes()
    first_difference = next(i for i, (a, b) in enumerate(zip(original, rotten)) if a != b)
    scan = scan_segment(rotten_path)
    corrupt = [problem for problem in scan.problems if isinstance(problem, CorruptSegmentError)]
    assert corrupt, scan.problems
    # The problem names the section holding the damaged byte: its marker, whose `next` lies past the byte.
    marker = corrupt[0].position
    next_marker = int.from_bytes(rotten[marker : marker + 4], "big")
    assert marker <= first_difference < next_marker
    good = scan_segment(original_path).entries
    assert all(entry in good for entry in scan.entries)
    assert len(scan.entries) < len(good)
    assert str(rotten_path) in str(corrupt[0])


def test_dump_with_a_key_alias_the_segment_does_not_use_names_the_missing_alias() -> None:
    command = [sys.executable, "-m", "cdc_assets.cli", "commitlog", "dump", str(segments("3.4-encrypted")[0])]
    command += ["--schema", str(SCHEMA_FIXTURES / "standard1-3.4.cql"), "--keystore", str(KEYSTORE)]
    command += ["--key-alias", "testing:2"]
    done = subprocess.run(
        command, capture_output=True, text=True, check=False, env={**os.environ, "CDC_KEYSTORE_PASSWORD": "cassandra"}
    )
    assert done.returncode != 0
    assert "testing:1" in done.stderr
    assert "cassandra" not in done.stderr.replace("cassandra.keystore", "").replace("cdc_assets", "")
