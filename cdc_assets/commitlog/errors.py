"""The reader's errors: each names the segment file and the position where reading stopped."""

from __future__ import annotations


class CommitLogError(Exception):
    """Something in a segment could not be read. ``position`` is a file offset unless said otherwise."""

    def __init__(self, path: str, position: int, message: str):
        super().__init__(f"{path} at byte {position}: {message}")
        self.path = path
        self.position = position
        self.reason = message


class DescriptorError(CommitLogError):
    """The segment header is unreadable: wrong CRC, unknown version, or a file name that disagrees."""


class CorruptSegmentError(CommitLogError):
    """A sync marker or entry failed its CRC, or a section could not be decompressed or decrypted."""


class TruncatedSegmentError(CommitLogError):
    """The file ends inside a section or an entry (a torn tail)."""


class SegmentVanishedError(CommitLogError):
    """A listed segment was deleted before it could be read: its unread changes are lost."""


class MutationDecodeError(Exception):
    """A mutation's bytes could not be decoded with the schema at hand."""


class UnknownTableError(MutationDecodeError):
    def __init__(self, table_id: object):
        super().__init__(f"unknown table id {table_id}")
        self.table_id = table_id
