"""Byte-level building blocks shared by the reader and the generator: CRCs, epochs, sign wrapping (vints are
:mod:`cdc_assets.vints`)."""

from __future__ import annotations

import struct
import zlib

# EncodingStats deltas are taken from these epochs (2015-09-22T00:00:00Z).
TIMESTAMP_EPOCH = 1442880000000000
DELETION_TIME_EPOCH = 1442880000

LIVE_TIMESTAMP = -(1 << 63)
MASK64 = (1 << 64) - 1
MASK32 = (1 << 32) - 1

_BE32 = struct.Struct(">i")
_BE32U = struct.Struct(">I")


def s64(value: int) -> int:
    value &= MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def s32(value: int) -> int:
    value &= MASK32
    return value - (1 << 32) if value >= 1 << 31 else value


def descriptor_crc(version: int, segment_id: int, params: bytes) -> int:
    """CRC32 of a segment header as Cassandra computes it (id low word first, length as 4 bytes)."""
    data = struct.pack(">iIIi", version, segment_id & MASK32, (segment_id >> 32) & MASK32, len(params))
    return zlib.crc32(params, zlib.crc32(data))


def sync_marker_crc(segment_id: int, file_offset: int) -> int:
    return zlib.crc32(struct.pack(">IIi", segment_id & MASK32, (segment_id >> 32) & MASK32, file_offset))


def entry_size_crc(size: int) -> int:
    return zlib.crc32(_BE32.pack(size))


def entry_body_crc(size_crc_value: int, body: bytes | memoryview) -> int:
    """The entry body CRC continues from the size CRC: crc32(BE32(size) || body)."""
    return zlib.crc32(body, size_crc_value)


def pack_be32(value: int) -> bytes:
    return _BE32.pack(value)


def pack_be32u(value: int) -> bytes:
    return _BE32U.pack(value)
