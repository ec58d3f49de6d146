"""Bytes spelled column by column with numpy: key components, uuids, hex text (for PostgreSQL staging)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
HEX_VALUES = np.zeros(256, dtype=np.uint8)
HEX_VALUES[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint8)
HEX_VALUES[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16, dtype=np.uint8)


def key_matrix(order: np.ndarray, descending: bool) -> pa.Array:
    """Key components (``model.key_component``) of values whose order bytes are the rows of ``order``."""
    n, width = order.shape
    matrix = np.empty((n, width + 1), dtype=np.uint8)
    matrix[:, 0] = 2
    matrix[:, 1:] = order
    if descending:
        matrix = 255 - matrix
    fixed = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width + 1), n, [None, pa.py_buffer(matrix.tobytes())])
    return fixed.cast(pa.binary())


def all_uuid_text(array: pa.Array) -> bool:
    """Whether every value is hyphenated uuid hex (what the columnar paths can parse)."""
    return bool(pc.all(pc.match_substring_regex(array, UUID_PATTERN)).as_py())


def uuid_key(kind: str, array: pa.Array, descending: bool) -> pa.Array:
    """Key components of uuid text (hyphenated hex), columnar: ``model.order_bytes`` spelled with numpy."""
    n = len(array)
    digits = pc.replace_substring(array, "-", "").cast(pa.binary())
    text = np.frombuffer(digits.buffers()[2], dtype=np.uint8)[: 32 * n].reshape(n, 32)
    nibbles = HEX_VALUES[text]
    raw = (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]
    # A version-1 UUID's timestamp, most significant part first (model._timeuuid_msb).
    timestamp = raw[:, [6, 7, 4, 5, 0, 1, 2, 3]]
    if kind == "timeuuid":
        return key_matrix(np.hstack([timestamp, raw[:, 8:] ^ 0x80]), descending)
    version = raw[:, 6:7] >> 4
    time_based = version[:, 0] == 1
    plain = key_matrix(np.hstack([version, raw]), descending)
    if not time_based.any():
        return plain
    timed = key_matrix(np.hstack([version, timestamp, raw]), descending)
    return pc.if_else(pa.array(time_based), timed, plain)


def fixed_binary(matrix: np.ndarray) -> pa.Array:
    """The rows of a uint8 matrix as binary values."""
    n, width = matrix.shape
    buffer = pa.py_buffer(np.ascontiguousarray(matrix).tobytes())
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, buffer]).cast(pa.binary())


def hex_text(values: pa.Array) -> pa.Array:
    """Binary values as hex digits (no ``\\x``)."""
    return pc.utf8_slice_codeunits(bytea_text(values), 2)


def bytea_text(array: pa.Array) -> pa.Array:
    """Binary values as PostgreSQL's ``\\x`` hex text, columnar."""
    array = pa.concat_arrays([array]) if array.offset else array
    n = len(array)
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[: n + 1]
    data = np.frombuffer(array.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]] if n else np.empty(0, np.uint8)
    lengths = np.diff(offsets)
    out_offsets = np.r_[0, np.cumsum(2 + 2 * lengths)].astype(np.int32)
    out = np.empty(int(out_offsets[-1]), dtype=np.uint8)
    out[out_offsets[:-1]] = ord("\\")
    out[out_offsets[:-1] + 1] = ord("x")
    if len(data):
        rows = np.repeat(np.arange(n), lengths)
        positions = out_offsets[rows] + 2 + 2 * (np.arange(len(data)) - (offsets[rows] - offsets[0]))
        digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
        out[positions] = digits[data >> 4]
        out[positions + 1] = digits[data & 15]
    return pa.StringArray.from_buffers(
        n, pa.py_buffer(out_offsets.tobytes()), pa.py_buffer(out.tobytes()), array.buffers()[0], array.null_count
    )
