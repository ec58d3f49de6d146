"""Cassandra's unsigned variable-length integers (``VIntCoding``) and zigzag encoding of signed ones.

Pure functions over bytes, shared by the commit log reader, the segment generator and Cassandra's value
rules (``destinations.cassandra_values``), so that none of them imports another for them.
"""

from __future__ import annotations

MASK64 = (1 << 64) - 1


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
