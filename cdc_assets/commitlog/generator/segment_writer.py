"""Writes commit log segments into a ``cdc_raw`` directory the way a Cassandra node does (format notes 3-6, 9).

:class:`SegmentWriter` follows ``CommitLogSegment``: entries are allocated after a sync marker slot;
each sync closes the open section (it allocates the next marker slot, fills in this section's marker
and zeroes the next one), then rewrites the ``_cdc.idx`` file with the section's end. Plain segments
are laid out like ``MemoryMappedSegment`` (the file preallocated to the segment size) or, without
preallocation, like 5.0's ``DirectIOSegment`` (the file grows in 4 KiB blocks); compressed segments
like ``CompressedSegment`` (one compressed block per section, logical positions counted in the
uncompressed buffer).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from cdc_assets.commitlog.compression import compress, short_name
from cdc_assets.commitlog.primitives import (
    descriptor_crc,
    entry_body_crc,
    entry_size_crc,
    pack_be32,
    pack_be32u,
    sync_marker_crc,
)

SYNC_MARKER_SIZE = 8
ENTRY_OVERHEAD = 12
DEFAULT_SEGMENT_SIZE = 32 * 1024 * 1024
# DirectIOSegment aligns its writes to the file system block size.
DIRECT_IO_BLOCK = 4096
COMPLETED = "COMPLETED"
# Commit log versions whose framing this writer produces (5 is 2.2's, same framing as 6-8).
WRITABLE_VERSIONS = frozenset({5, 6, 7, 8})

_HEADER = struct.Struct(">iqH")


class SegmentFullError(Exception):
    """The entry does not fit in what is left of the segment: the caller starts a new one."""


def segment_file_name(version: int, segment_id: int) -> str:
    return f"CommitLog-{version}-{segment_id}.log"


def cdc_index_file_name(version: int, segment_id: int) -> str:
    return f"CommitLog-{version}-{segment_id}_cdc.idx"


def descriptor_parameters(compression: str | None) -> bytes:
    """The header's parameter JSON: ``{}``, or the compressor class as configured and null parameters.

    Keys are sorted and there is no whitespace, as json-simple (4.x) and Jackson (5.0) write a TreeMap.
    """
    params = {} if compression is None else {"compressionClass": compression, "compressionParameters": None}
    return json.dumps(params, sort_keys=True, separators=(",", ":")).encode()


def encode_descriptor(version: int, segment_id: int, parameters: bytes) -> bytes:
    """The segment header (format notes, section 3) with Cassandra's CRC."""
    return (
        _HEADER.pack(version, segment_id, len(parameters))
        + parameters
        + pack_be32u(descriptor_crc(version, segment_id, parameters))
    )


def sync_marker(segment_id: int, file_offset: int, next_offset: int) -> bytes:
    """The 8-byte sync marker at ``file_offset`` pointing at the next marker (format notes, section 4)."""
    return pack_be32(next_offset) + pack_be32u(sync_marker_crc(segment_id, file_offset))


def frame_entry(mutation: bytes) -> bytes:
    """Size, size CRC, mutation, and the mutation CRC continued from the size CRC (format notes, section 5)."""
    size_crc = entry_size_crc(len(mutation))
    return pack_be32(len(mutation)) + pack_be32u(size_crc) + mutation + pack_be32u(entry_body_crc(size_crc, mutation))


class SegmentWriter:
    """One commit log segment being written into ``cdc_raw_dir``, with its ``_cdc.idx``.

    ``compression`` is a compressor class name (``LZ4Compressor`` or fully qualified), written into the
    header as given. ``preallocate=False`` writes a plain segment the way 5.0's direct-IO mode does;
    ``fsync`` flushes each section to disk before the idx names it. Positions are logical: offsets in the
    uncompressed segment, as readers and the idx file count them. Entries reach the file when their
    section is synced.
    """

    def __init__(
        self,
        cdc_raw_dir: str | os.PathLike[str],
        segment_id: int,
        version: int = 7,
        compression: str | None = None,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        preallocate: bool = True,
        fsync: bool = False,
    ):
        if version not in WRITABLE_VERSIONS:
            raise ValueError(f"commit log version {version} is not one of {sorted(WRITABLE_VERSIONS)}")
        if compression is not None:
            short_name(compression)
        self.segment_id = segment_id
        self.version = version
        self.compression = compression
        self.segment_size = segment_size
        self.preallocate = preallocate
        self.fsync = fsync
        directory = Path(cdc_raw_dir)
        self.path = directory / segment_file_name(version, segment_id)
        self.index_path = directory / cdc_index_file_name(version, segment_id)
        header = encode_descriptor(version, segment_id, descriptor_parameters(compression))
        if len(header) + 2 * SYNC_MARKER_SIZE >= segment_size:
            raise ValueError(f"segment size {segment_size} leaves no room after the {len(header)}-byte header")
        self.header_length = len(header)
        # Cassandra's CommitLogSegment state: the open section's marker slot, the allocation position
        # and the end of the usable buffer (moved down to the data's end when the segment is closed).
        self._marker = len(header)
        self._allocated = len(header) + SYNC_MARKER_SIZE
        self._end_of_buffer = segment_size
        self._pending = bytearray()
        self._file_position = len(header)
        self._holds_cdc = False
        self.position = len(header)
        self.durable_position = len(header)
        self.bytes_written = 0
        self.sections = 0
        self.entries = 0
        self.is_full = False
        self.closed = False
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        if compression is None and preallocate:
            os.ftruncate(self._fd, segment_size)
        initial = header
        if compression is None and not preallocate:
            # DirectIOSegment writes its first block at once: the header and a zeroed first marker.
            initial = header.ljust(min(DIRECT_IO_BLOCK, segment_size), b"\0")
        self._write(initial, 0)

    @property
    def name(self) -> str:
        return self.path.name

    def has_room(self, mutation_size: int) -> bool:
        """Whether an entry for a mutation of this many bytes still fits (``CommitLogSegment.allocate``)."""
        return not self.closed and self._allocated + mutation_size + ENTRY_OVERHEAD < self._end_of_buffer

    def append(self, mutation: bytes, cdc: bool = True) -> int:
        """Add one mutation to the open section; returns its entry's logical end position.

        ``cdc`` says whether the mutation touches a CDC table: a segment gets its idx file only once it
        holds one. Raises :class:`SegmentFullError` (and marks the segment full) when it does not fit.
        """
        if ENTRY_OVERHEAD + len(mutation) > self.segment_size // 2:
            raise ValueError(
                f"a {len(mutation)}-byte mutation is larger than half the {self.segment_size}-byte segment"
            )
        if not self.has_room(len(mutation)):
            self.is_full = True
            raise SegmentFullError(f"{self.name} has no room for a {len(mutation)}-byte mutation")
        self._pending += frame_entry(mutation)
        self._allocated += ENTRY_OVERHEAD + len(mutation)
        self._holds_cdc = self._holds_cdc or cdc
        self.entries += 1
        self.position = self._allocated
        return self.position

    def sync(self) -> int:
        """Close the open section (if anything was appended) and rewrite the idx; returns the durable offset.

        As in Cassandra, a sync that finds no room for the next sync marker closes the segment.
        """
        if self.closed or self._allocated <= self._marker + SYNC_MARKER_SIZE:
            return self.durable_position
        next_marker = self._allocated
        if next_marker + SYNC_MARKER_SIZE >= self._end_of_buffer:
            self._discard_unused_tail()
        else:
            self._allocated += SYNC_MARKER_SIZE
        self._finish_section()
        return self.durable_position

    def close(self) -> None:
        """Write the last section (empty if nothing is pending) and mark the idx COMPLETED."""
        if self.closed:
            return
        self._discard_unused_tail()
        self._finish_section()

    def abandon(self) -> None:
        """Stop writing as a node that dies does: unsynced entries are lost and the idx never says COMPLETED."""
        if not self.closed:
            os.close(self._fd)
            self.closed = True

    def _discard_unused_tail(self) -> None:
        # CommitLogSegment.discardUnusedTail: the buffer ends where the data ends; nothing more is allocated.
        self._end_of_buffer = self._allocated
        self._allocated = self.segment_size + 1
        self.is_full = True

    def _finish_section(self) -> None:
        closing = self._allocated > self.segment_size
        section_end = self._end_of_buffer if closing else self._allocated - SYNC_MARKER_SIZE
        if self.compression is None:
            self._write_plain_section(section_end)
        else:
            self._write_compressed_section()
        self.sections += 1
        self._pending = bytearray()
        self._marker = section_end
        self.durable_position = section_end
        if self.fsync:
            os.fsync(self._fd)
        if self._holds_cdc:
            self._write_index(section_end, closing)
        if closing:
            os.close(self._fd)
            self.closed = True

    def _write_plain_section(self, section_end: int) -> None:
        data = sync_marker(self.segment_id, self._marker, section_end) + self._pending
        if not self.preallocate:
            # Direct IO writes whole blocks: the zeroed next marker and padding up to the block end.
            block_end = min(-(-section_end // DIRECT_IO_BLOCK) * DIRECT_IO_BLOCK, self.segment_size)
            data = data.ljust(block_end - self._marker, b"\0")
        self._write(data, self._marker)

    def _write_compressed_section(self) -> None:
        content = bytes(self._pending)
        block = pack_be32(len(content)) + compress(self.compression, content)  # type: ignore[arg-type]
        start = self._file_position
        next_marker = start + SYNC_MARKER_SIZE + len(block)
        self._write(sync_marker(self.segment_id, start, next_marker) + block, start)

    def _write(self, data: bytes, offset: int) -> None:
        os.pwrite(self._fd, data, offset)
        self.bytes_written += len(data)
        self._file_position = max(self._file_position, offset + len(data))

    def _write_index(self, offset: int, completed: bool) -> None:
        # Cassandra's FileWriter truncates the file and writes it again: a reader may see it empty.
        text = str(offset) + (f"\n{COMPLETED}" if completed else "")
        with open(self.index_path, "w") as index:
            index.write(text)

    def __enter__(self) -> SegmentWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
