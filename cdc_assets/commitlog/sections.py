"""Sync sections (format notes, sections 4, 6, 7): walk the marker chain and hand out each section's entries.

Positions here are *logical*: offsets in the uncompressed buffer Cassandra writes, which is what
``CommitLogPosition`` and the ``_cdc.idx`` file count in. For plain segments they equal file offsets.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from cdc_assets.commitlog.compression import decompress
from cdc_assets.commitlog.descriptor import SegmentDescriptor
from cdc_assets.commitlog.encryption import EncryptionKeys, KeystoreError, decrypt_block
from cdc_assets.commitlog.errors import CommitLogError, CorruptSegmentError, TruncatedSegmentError
from cdc_assets.commitlog.primitives import sync_marker_crc

_MARKER = struct.Struct(">iI")
_INT = struct.Struct(">i")
MARKER_SIZE = 8
# Encryption always compresses its chunks with LZ4, whatever commitlog_compression says.
_ENCRYPTED_CHUNK_COMPRESSION = "LZ4Compressor"


@dataclass(frozen=True)
class Section:
    """The entries of one sync section, decompressed and decrypted, with their logical place."""

    file_offset: int
    logical_start: int
    logical_end: int
    data: bytes | memoryview
    plain: bool = True

    def file_position(self, offset_in_data: int) -> int:
        """The file offset of a byte of ``data``; for decompressed sections, the section's marker."""
        return self.file_offset + MARKER_SIZE + offset_in_data if self.plain else self.file_offset


def iter_sections(
    data: bytes | memoryview,
    descriptor: SegmentDescriptor,
    path: str,
    problems: list[CommitLogError],
    *,
    limit: int | None = None,
    after: int = 0,
    keys: EncryptionKeys | None = None,
) -> Iterator[Section]:
    """Yield the sections of a segment in order.

    ``limit`` stops before any section that ends past this logical offset (the ``_cdc.idx`` offset);
    sections ending at or before ``after`` are skipped without being decompressed. Corruption and torn
    tails are appended to ``problems``: a bad marker ends the walk, since the chain cannot be followed
    past it; a section that fails to decompress or decrypt is skipped, and the walk goes on.
    """
    encrypted = descriptor.is_encrypted
    compression = descriptor.compression_class
    if encrypted:
        params = descriptor.parameters
        if keys is None:
            raise KeystoreError(f"{path} is encrypted (key alias {params['encKeyAlias']!r}); a keystore is needed")
        key = keys.key(params["encKeyAlias"])
        iv = bytes.fromhex(params["encIV"])
    framed = encrypted or compression is not None
    size = len(data)
    segment_id = descriptor.segment_id
    pos = descriptor.header_length
    logical = pos
    while pos <= size - MARKER_SIZE:
        next_marker, crc = _MARKER.unpack_from(data, pos)
        if crc != sync_marker_crc(segment_id, pos):
            if next_marker == 0 and crc == 0:
                return
            problems.append(CorruptSegmentError(path, pos, "sync marker CRC mismatch; the rest is not trusted"))
            return
        if next_marker <= pos:
            problems.append(CorruptSegmentError(path, pos, f"sync marker points backwards to {next_marker}"))
            return
        if not framed:
            if next_marker > size:
                problems.append(TruncatedSegmentError(path, size, f"section ends at {next_marker}, past the file"))
            end = min(next_marker, size)
            if limit is not None and end > limit:
                return
            if end > after:
                yield Section(pos, pos + MARKER_SIZE, end, memoryview(data)[pos + MARKER_SIZE : end])
            pos = next_marker
            continue
        if pos + MARKER_SIZE + 4 > size:
            problems.append(TruncatedSegmentError(path, pos, "file ends inside a section header"))
            return
        (plain_length,) = _INT.unpack_from(data, pos + MARKER_SIZE)
        logical_start = logical + MARKER_SIZE
        logical_end = logical_start + plain_length
        if limit is not None and logical_end > limit:
            return
        if next_marker > size:
            problems.append(TruncatedSegmentError(path, size, f"section ends at {next_marker}, past the file"))
            return
        if logical_end > after:
            block = memoryview(data)[pos + MARKER_SIZE + 4 : next_marker]
            try:
                if encrypted:
                    content = _decrypt_section(block, key, iv, params["encCipher"])
                else:
                    content = decompress(compression, bytes(block), plain_length)
            except (ValueError, struct.error) as error:
                problems.append(CorruptSegmentError(path, pos, f"section cannot be read: {error}"))
                content = None
            if content is not None and len(content) != plain_length:
                problems.append(
                    CorruptSegmentError(path, pos, f"section holds {len(content)} bytes, header says {plain_length}")
                )
                content = None
            if content is not None:
                yield Section(pos, logical_start, logical_end, content, plain=False)
        logical = logical_end
        pos = next_marker


def _decrypt_section(block: memoryview, key: bytes, iv: bytes, cipher_name: str) -> bytes:
    chunks = []
    pos = 0
    while pos < len(block):
        cipher_length, compressed_length = struct.unpack_from(">ii", block, pos)
        pos += 8
        if cipher_length < 0 or pos + cipher_length > len(block):
            raise ValueError(f"encrypted block of {cipher_length} bytes runs past the section")
        plain = decrypt_block(key, iv, cipher_name, block[pos : pos + cipher_length])[:compressed_length]
        pos += cipher_length
        (raw_length,) = _INT.unpack_from(plain, 0)
        chunks.append(decompress(_ENCRYPTED_CHUNK_COMPRESSION, plain[4:], raw_length))
    return b"".join(chunks)
