"""The C framing walk gives exactly what the pure-Python walk gives: same entries, same end, same error."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc_assets.commitlog.descriptor import read_descriptor
from cdc_assets.commitlog.encryption import EncryptionKeys
from cdc_assets.commitlog.entries import walk_entries
from cdc_assets.commitlog.sections import Section, iter_sections
from cdc_assets_tests.shared_fixtures import COMMITLOG_FIXTURES, KEYSTORE, KEYSTORE_PASSWORD

accel = pytest.importorskip(
    "cdc_assets.commitlog._mutation_accel", reason="the C accelerator did not build on this machine"
)
FIXTURE_SEGMENTS = sorted(COMMITLOG_FIXTURES.glob("*/CommitLog-*.log"))


def _sections(path: Path) -> list[Section]:
    data = path.read_bytes()
    keys = EncryptionKeys.from_keystore(KEYSTORE, KEYSTORE_PASSWORD)
    return list(iter_sections(data, read_descriptor(data, str(path)), str(path), [], keys=keys))


def _same_walk(data: bytes, base: int, after: int) -> None:
    pure_entries, pure_end, pure_error = walk_entries(data, base, after)
    c_entries, c_end, c_error = accel.split_entries(data, base, after)
    assert [(position, bytes(body)) for position, body in pure_entries] == c_entries
    assert (pure_end, pure_error) == (c_end, c_error)


@pytest.mark.parametrize("path", FIXTURE_SEGMENTS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_every_real_section_walks_identically(path: Path) -> None:
    sections = _sections(path)
    assert sections
    for section in sections:
        data = bytes(section.data)
        _same_walk(data, section.logical_start, 0)
        _same_walk(data, section.logical_start, (section.logical_start + section.logical_end) // 2)


SECTION = bytes(_sections(sorted(COMMITLOG_FIXTURES.glob("4.0.11/*.log"))[0])[2].data)


@settings(max_examples=300, deadline=None)
@given(
    cut=st.integers(0, len(SECTION)),
    flips=st.lists(st.tuples(st.integers(0, len(SECTION) - 1), st.integers(1, 255)), max_size=3),
)
def test_damaged_and_cut_sections_walk_identically(cut: int, flips: list[tuple[int, int]]) -> None:
    data = bytearray(SECTION)
    for offset, mask in flips:
        data[offset] ^= mask
    _same_walk(bytes(data[:cut]), 1576 + 8, 0)
