"""Commit log compression codecs (format notes, section 6), shared by the reader and the generator.

Cassandra names a codec by its compressor class, as written in ``commitlog_compression``: either the
short name (``LZ4Compressor``) or the fully qualified one (``org.apache.cassandra.io.compress.LZ4Compressor``).
Each codec here produces and accepts exactly the bytes Cassandra's compressor writes for one section.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import cramjam
import lz4.block
import zstandard

PACKAGE = "org.apache.cassandra.io.compress."

LZ4 = "LZ4Compressor"
SNAPPY = "SnappyCompressor"
DEFLATE = "DeflateCompressor"
ZSTD = "ZstdCompressor"
NOOP = "NoopCompressor"

# Command-line spellings of the codecs.
CODEC_ALIASES = {"lz4": LZ4, "snappy": SNAPPY, "deflate": DEFLATE, "zstd": ZSTD, "noop": NOOP}

# Cassandra's ZstdCompressor default level.
_ZSTD_LEVEL = 3


class CompressionError(ValueError):
    """A compressed section that cannot be decompressed into the length its header announces."""


def short_name(compression_class: str) -> str:
    """The compressor's class name without Cassandra's package; ValueError for an unknown compressor."""
    name = compression_class.removeprefix(PACKAGE)
    if name not in _COMPRESSORS:
        known = ", ".join(sorted(_COMPRESSORS))
        raise ValueError(f"unknown commit log compressor {compression_class!r} (known: {known})")
    return name


def compress(compression_class: str, data: bytes) -> bytes:
    """Compress one section's content as Cassandra's compressor of that class does."""
    return _COMPRESSORS[short_name(compression_class)](data)


def decompress(compression_class: str, block: bytes, uncompressed_length: int) -> bytes:
    """Decompress one section's block, which must give back exactly ``uncompressed_length`` bytes."""
    name = short_name(compression_class)
    try:
        data = _DECOMPRESSORS[name](block, uncompressed_length)
    except CompressionError:
        raise
    except (lz4.block.LZ4BlockError, cramjam.DecompressionError, zlib.error, zstandard.ZstdError) as error:
        raise CompressionError(f"{name} block of {len(block)} bytes does not decompress: {error}") from error
    if len(data) != uncompressed_length:
        raise CompressionError(
            f"{name} block decompresses to {len(data)} bytes, the section header says {uncompressed_length}"
        )
    return data


def _check_declared_length(name: str, declared: int, expected: int) -> None:
    # Checked before decompressing, so that a corrupt length never makes us allocate a huge buffer.
    if declared != expected:
        raise CompressionError(f"{name} block declares {declared} bytes, the section header says {expected}")


def _lz4_compress(data: bytes) -> bytes:
    # Cassandra's LZ4Compressor prefixes the raw block with the uncompressed length, little-endian,
    # which is exactly lz4.block's store_size framing.
    return lz4.block.compress(data, mode="default", store_size=True)


def _lz4_decompress(block: bytes, length: int) -> bytes:
    if len(block) < 4:
        raise CompressionError(f"LZ4 block of {len(block)} bytes is too short for its length prefix")
    _check_declared_length(LZ4, int.from_bytes(block[:4], "little"), length)
    return lz4.block.decompress(block)


def _snappy_compress(data: bytes) -> bytes:
    return bytes(cramjam.snappy.compress_raw(data))


def _snappy_declared_length(block: bytes) -> int:
    """The uncompressed length a raw Snappy block starts with (a little-endian base-128 varint)."""
    value = 0
    for index, byte in enumerate(block[:5]):
        value |= (byte & 0x7F) << (7 * index)
        if byte < 0x80:
            return value
    raise CompressionError("Snappy block does not start with a valid length")


def _snappy_decompress(block: bytes, length: int) -> bytes:
    _check_declared_length(SNAPPY, _snappy_declared_length(block), length)
    return bytes(cramjam.snappy.decompress_raw(block))


def _deflate_compress(data: bytes) -> bytes:
    # Java's Deflater() default: zlib framing (header and Adler-32) at the default level.
    return zlib.compress(data)


def _deflate_decompress(block: bytes, length: int) -> bytes:
    inflater = zlib.decompressobj()
    data = inflater.decompress(block, length + 1)
    if not inflater.eof:
        raise CompressionError(f"Deflate block does not end after {length} bytes")
    return data


def _zstd_compress(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_checksum=True).compress(data)


def _zstd_decompress(block: bytes, length: int) -> bytes:
    declared = zstandard.frame_content_size(block)
    if declared >= 0:
        _check_declared_length(ZSTD, declared, length)
    if length == 0:
        return zstandard.ZstdDecompressor().decompressobj().decompress(block)
    return zstandard.ZstdDecompressor().decompress(block, max_output_size=length)


def _noop_compress(data: bytes) -> bytes:
    return bytes(data)


def _noop_decompress(block: bytes, length: int) -> bytes:
    return bytes(block)


_COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    LZ4: _lz4_compress,
    SNAPPY: _snappy_compress,
    DEFLATE: _deflate_compress,
    ZSTD: _zstd_compress,
    NOOP: _noop_compress,
}
_DECOMPRESSORS: dict[str, Callable[[bytes, int], bytes]] = {
    LZ4: _lz4_decompress,
    SNAPPY: _snappy_decompress,
    DEFLATE: _deflate_decompress,
    ZSTD: _zstd_decompress,
    NOOP: _noop_decompress,
}
