"""Byte-level building blocks shared by the reader and the generator: vints, CRCs, epochs."""

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


def read_uvint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Decode Cassandra's unsigned vint at ``pos``: (value, position after it)."""
    first = data[pos]
    if first < 0x80:
        return first, pos + 1
    extra = 8 - (first ^ 0xFF).bit_length()
    value = first & (0xFF >> (extra + 1)) if extra < 7 else 0
    end = pos + 1 + extra
    if end > len(data):
        raise IndexError("vint runs past the end of the data")
    value = (value << (8 * extra)) | int.from_bytes(data[pos + 1 : end], "big")
    return value, end


def write_uvint(value: int) -> bytes:
    """Encode an unsigned 64-bit value (negative values as Java writes them: sign-extended to 64 bits)."""
    value &= MASK64
    if value < 0x80:
        return bytes((value,))
    bits = value.bit_length()
    extra = min((bits - 1) // 7, 8)
    if extra == 8:
        return b"\xff" + value.to_bytes(8, "big")
    raw = value.to_bytes(extra + 1, "big")
    return bytes((raw[0] | (0xFF << (8 - extra)) & 0xFF,)) + raw[1:]


def zigzag_decode(value: int) -> int:
    return (value >> 1) ^ -(value & 1)


def zigzag_encode(value: int) -> int:
    return ((value << 1) ^ (value >> 63)) & MASK64


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
