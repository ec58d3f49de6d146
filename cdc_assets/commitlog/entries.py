"""Entry framing inside a section (format notes, section 5): size, size CRC, mutation bytes, body CRC."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

from cdc_assets.commitlog.accelerator import accelerator
from cdc_assets.commitlog.descriptor import SegmentDescriptor
from cdc_assets.commitlog.encryption import EncryptionKeys
from cdc_assets.commitlog.errors import CommitLogError, CorruptSegmentError, TruncatedSegmentError
from cdc_assets.commitlog.sections import Section, iter_sections

_HEAD = struct.Struct(">iI")
_CRC = struct.Struct(">I")
MIN_ENTRY_SIZE = 10
# Why a walk stopped early; the C accelerator returns the same codes.
HEADER_CUT, BAD_SIZE, SIZE_CRC, PAST_SECTION, BODY_CRC = range(1, 6)

Entries = list[tuple[int, bytes | memoryview]]
WalkError = tuple[int, int, int] | None


def walk_entries(data: bytes | memoryview, base: int, after: int) -> tuple[Entries, bool, WalkError]:
    """The pure-Python framing walk: (entries ending after ``after``, end of segment, (code, offset, size))."""
    data = memoryview(data)
    length = len(data)
    entries: Entries = []
    pos = 0
    crc32 = zlib.crc32
    while length - pos >= 4:
        if length - pos < 8:
            if int.from_bytes(data[pos : pos + 4], "big", signed=True) == 0:
                return entries, True, None
            return entries, False, (HEADER_CUT, pos, 0)
        size, size_crc = _HEAD.unpack_from(data, pos)
        if size == 0:
            return entries, True, None
        if size < MIN_ENTRY_SIZE:
            return entries, False, (BAD_SIZE, pos, size)
        expected_size_crc = crc32(data[pos : pos + 4])
        if size_crc != expected_size_crc:
            return entries, False, (SIZE_CRC, pos, size)
        body_start = pos + 8
        end = body_start + size + 4
        if end > length:
            return entries, False, (PAST_SECTION, pos, size)
        body = data[body_start : body_start + size]
        (body_crc,) = _CRC.unpack_from(data, body_start + size)
        if body_crc != crc32(body, expected_size_crc):
            return entries, False, (BODY_CRC, pos, size)
        if base + end > after:
            entries.append((base + end, body))
        pos = end
    return entries, False, None


def split_entries(
    section: Section, path: str, problems: list[CommitLogError], *, after: int = 0
) -> tuple[Entries, bool]:
    """The section's entries as (logical end position, mutation bytes), skipping those ending at or before ``after``.

    The flag is True when a zero size marks the end of the written part of the segment. On a CRC
    mismatch or a torn entry the problem is recorded and nothing after it in the section is returned.
    """
    compiled = accelerator()
    walk = walk_entries if compiled is None else compiled.split_entries
    entries, end, error = walk(section.data, section.logical_start, after)
    if error is not None:
        problems.append(_problem(section, path, *error))
    return entries, end


def section_entries(
    data: bytes | memoryview,
    descriptor: SegmentDescriptor,
    path: str,
    problems: list[CommitLogError],
    *,
    limit: int | None = None,
    after: int = 0,
    keys: EncryptionKeys | None = None,
) -> Iterator[tuple[Section, Entries]]:
    """Each section of a segment with its entries (those ending after ``after``), up to the written end.

    ``limit`` and ``keys`` are :func:`iter_sections`' own.
    """
    for section in iter_sections(data, descriptor, path, problems, limit=limit, after=after, keys=keys):
        entries, end = split_entries(section, path, problems, after=after)
        yield section, entries
        if end:
            return


def _problem(section: Section, path: str, code: int, offset: int, size: int) -> CommitLogError:
    where = f"entry at logical offset {section.logical_start + offset}"
    position = section.file_position(offset)
    if code == HEADER_CUT:
        return TruncatedSegmentError(path, position, "entry header cut short")
    if code == BAD_SIZE:
        return CorruptSegmentError(path, position, f"{where}: invalid size {size}")
    if code == SIZE_CRC:
        return CorruptSegmentError(path, position, f"{where}: size CRC mismatch")
    if code == PAST_SECTION:
        return TruncatedSegmentError(path, position, f"{where}: {size}-byte entry runs past its section")
    return CorruptSegmentError(path, position, f"{where}: mutation CRC mismatch")
