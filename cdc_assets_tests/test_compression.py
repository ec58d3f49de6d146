"""The commit log codecs: Cassandra's block formats, checked against real compressed segments."""

from __future__ import annotations

import random
import struct
import zlib

import pytest
import zstandard

from cdc_assets.commitlog.compression import (
    DEFLATE,
    LZ4,
    NOOP,
    PACKAGE,
    SNAPPY,
    ZSTD,
    CompressionError,
    compress,
    decompress,
)
from cdc_assets_tests.shared_fixtures import COMMITLOG_FIXTURES

CODECS = (LZ4, SNAPPY, DEFLATE, ZSTD, NOOP)
_RANDOM = random.Random(0)
# A section's worth of commit log-like content: repetitive framing around random values.
SAMPLE = b"".join(b"\x00\x00\x00\x40" + _RANDOM.randbytes(8) + b"Keyspace1 Standard1 name0 " * 3 for _ in range(200))


def _first_section(path: str) -> tuple[int, bytes]:
    """(uncompressed length, compressed block) of a segment's first section (format notes, section 6)."""
    data = (COMMITLOG_FIXTURES / path).read_bytes()
    (params_length,) = struct.unpack_from(">H", data, 12)
    marker = 14 + params_length + 4
    next_marker, _crc, uncompressed_length = struct.unpack_from(">iIi", data, marker)
    return uncompressed_length, data[marker + 12 : next_marker]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("data", [b"", b"x", SAMPLE], ids=["empty", "one-byte", "section"])
def test_compressed_block_decompresses_to_the_original(codec: str, data: bytes) -> None:
    assert decompress(codec, compress(codec, data), len(data)) == data


@pytest.mark.parametrize("codec", CODECS)
def test_fully_qualified_class_name_selects_the_same_codec(codec: str) -> None:
    block = compress(PACKAGE + codec, SAMPLE)
    assert block == compress(codec, SAMPLE)
    assert decompress(PACKAGE + codec, block, len(SAMPLE)) == SAMPLE


def test_unknown_compressor_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match="BrotliCompressor"):
        decompress("org.example.BrotliCompressor", b"", 0)


@pytest.mark.parametrize(
    ("folder", "codec"),
    [("2.2-lz4/CommitLog-5-1438186885380.log", LZ4), ("2.2-snappy/CommitLog-5-1438186915514.log", SNAPPY)],
)
def test_real_compressed_section_decompresses_into_crc_checked_entries(folder: str, codec: str) -> None:
    length, block = _first_section(folder)
    content = decompress(codec, block, length)
    assert len(content) == length
    # The first entry's size CRC and body CRC (continued from the size CRC) hold.
    size, size_crc = struct.unpack_from(">iI", content, 0)
    assert size_crc == zlib.crc32(content[:4])
    (body_crc,) = struct.unpack_from(">I", content, 8 + size)
    assert body_crc == zlib.crc32(content[8 : 8 + size], size_crc)


@pytest.mark.parametrize(
    ("path", "codec"),
    [("2.2-lz4/CommitLog-5-1438186885381.log", LZ4), ("2.2-snappy/CommitLog-5-1438186915515.log", SNAPPY)],
)
def test_empty_section_compresses_to_the_bytes_cassandra_wrote(path: str, codec: str) -> None:
    # These segments hold one empty section (U = 0), written when the node closed them.
    length, block = _first_section(path)
    assert length == 0
    assert compress(codec, b"") == block


def test_lz4_block_carries_its_length_little_endian() -> None:
    assert compress(LZ4, SAMPLE)[:4] == len(SAMPLE).to_bytes(4, "little")


def test_deflate_block_is_a_zlib_stream() -> None:
    assert zlib.decompress(compress(DEFLATE, SAMPLE)) == SAMPLE


def test_zstd_block_is_one_frame_with_a_content_checksum() -> None:
    parameters = zstandard.get_frame_parameters(compress(ZSTD, SAMPLE))
    assert parameters.has_checksum
    assert parameters.content_size == len(SAMPLE)


@pytest.mark.parametrize("codec", [LZ4, SNAPPY, DEFLATE, ZSTD])
def test_corrupt_block_raises_compression_error(codec: str) -> None:
    block = bytearray(compress(codec, SAMPLE))
    block[len(block) // 2 :] = bytes(len(block) - len(block) // 2)
    with pytest.raises(CompressionError):
        decompress(codec, bytes(block), len(SAMPLE))


@pytest.mark.parametrize("codec", CODECS)
def test_block_of_another_length_than_the_section_header_says_raises_compression_error(codec: str) -> None:
    with pytest.raises(CompressionError, match=str(len(SAMPLE) + 1)):
        decompress(codec, compress(codec, SAMPLE), len(SAMPLE) + 1)


def test_compression_error_is_a_value_error() -> None:
    assert issubclass(CompressionError, ValueError)
