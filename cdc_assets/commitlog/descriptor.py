"""The segment header (format notes, section 3): version, id and parameters, with Cassandra's CRC."""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdc_assets.commitlog.errors import DescriptorError
from cdc_assets.commitlog.primitives import descriptor_crc

# Commit log version -> messaging version of the mutations inside (format notes, section 1).
MESSAGING_VERSIONS = {5: 8, 6: 10, 7: 12, 8: 13}
DECODABLE_VERSIONS = frozenset({6, 7, 8})

SEGMENT_NAME = re.compile(r"^CommitLog-(\d+)-(-?\d+)\.log$")
_HEADER = struct.Struct(">iqH")


@dataclass(frozen=True)
class SegmentDescriptor:
    version: int
    segment_id: int
    parameters: dict[str, Any]
    header_length: int

    @property
    def messaging_version(self) -> int:
        return MESSAGING_VERSIONS[self.version]

    @property
    def compression_class(self) -> str | None:
        return self.parameters.get("compressionClass")

    @property
    def is_encrypted(self) -> bool:
        return "encKeyAlias" in self.parameters and "encCipher" in self.parameters


def parse_segment_name(name: str) -> tuple[int, int] | None:
    """(version, segment id) from ``CommitLog-<version>-<id>.log``, or None for other names."""
    match = SEGMENT_NAME.match(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def read_descriptor(data: bytes | memoryview, path: str) -> SegmentDescriptor:
    """Parse and check the header at the start of ``data`` (the segment's bytes)."""
    if len(data) < _HEADER.size + 4:
        raise DescriptorError(path, 0, f"file is {len(data)} bytes, too short for a segment header")
    version, segment_id, params_length = _HEADER.unpack_from(data, 0)
    if version not in MESSAGING_VERSIONS:
        raise DescriptorError(path, 0, f"unsupported commit log version {version}")
    end = _HEADER.size + params_length
    if len(data) < end + 4:
        raise DescriptorError(path, _HEADER.size, "file ends inside the header parameters")
    params = bytes(data[_HEADER.size : end])
    (stored_crc,) = struct.unpack_from(">I", data, end)
    if stored_crc != descriptor_crc(version, segment_id, params):
        raise DescriptorError(path, end, "header CRC mismatch")
    try:
        parameters = json.loads(params.decode()) if params else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DescriptorError(path, _HEADER.size, f"header parameters are not JSON: {error}") from error
    named = parse_segment_name(Path(path).name)
    if named is not None and named != (version, segment_id):
        raise DescriptorError(
            path, 0, f"file name says version {named[0]} id {named[1]}, header says {version} id {segment_id}"
        )
    return SegmentDescriptor(version, segment_id, parameters or {}, end + 4)
