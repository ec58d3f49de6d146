"""Entry framing inside a section (format notes, section 5): size, size CRC, mutation bytes, body CRC."""

from __future__ import annotations

import struct
import zlib

from cdc_assets.commitlog.errors import CommitLogError, CorruptSegmentError, TruncatedSegmentError
from cdc_assets.commitlog.sections import Section

_HEAD = struct.Struct(">iI")
_CRC = struct.Struct(">I")
MIN_ENTRY_SIZE = 10


def split_entries(
    section: Section, path: str, problems: list[CommitLogError], *, after: int = 0
) -> tuple[list[tuple[int, memoryview]], bool]:
    """The section's entries as (logical end position, mutation bytes), skipping those ending at or before ``after``.

    The flag is True when a zero size marks the end of the written part of the segment. On a CRC
    mismatch or a torn entry the problem is recorded and nothing after it in the section is returned.
    """
    data = memoryview(section.data)
    length = len(data)
    base = section.logical_start
    entries = []
    pos = 0
    crc32 = zlib.crc32
    while length - pos >= 4:
        if length - pos < 8:
            size = int.from_bytes(data[pos : pos + 4], "big", signed=True)
            if size == 0:
                return entries, True
            problems.append(TruncatedSegmentError(path, section.file_position(pos), "entry header cut short"))
            return entries, False
        size, size_crc = _HEAD.unpack_from(data, pos)
        if size == 0:
            return entries, True
        where = f"entry at logical offset {base + pos}"
        if size < MIN_ENTRY_SIZE:
            problems.append(CorruptSegmentError(path, section.file_position(pos), f"{where}: invalid size {size}"))
            return entries, False
        expected_size_crc = crc32(data[pos : pos + 4])
        if size_crc != expected_size_crc:
            problems.append(CorruptSegmentError(path, section.file_position(pos), f"{where}: size CRC mismatch"))
            return entries, False
        body_start = pos + 8
        end = body_start + size + 4
        if end > length:
            problems.append(
                TruncatedSegmentError(
                    path, section.file_position(pos), f"{where}: {size}-byte entry runs past its section"
                )
            )
            return entries, False
        body = data[body_start : body_start + size]
        (body_crc,) = _CRC.unpack_from(data, body_start + size)
        if body_crc != crc32(body, expected_size_crc):
            problems.append(CorruptSegmentError(path, section.file_position(pos), f"{where}: mutation CRC mismatch"))
            return entries, False
        position = base + end
        if position > after:
            entries.append((position, body))
        pos = end
    return entries, False
