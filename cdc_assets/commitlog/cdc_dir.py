"""The CDC directory (format notes, section 9): which segments exist, how far each is durable, which are done.

Cassandra rewrites ``<segment>_cdc.idx`` by truncating and writing it again, so a read can catch it
empty or half-written: it is re-read until two reads agree, and an offset never goes backwards.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cdc_assets.commitlog.descriptor import parse_segment_name
from cdc_assets.commitlog.reader import CommitLogReader, Position, ReadResult

log = logging.getLogger(__name__)

COMPLETED = "COMPLETED"


class IndexNotReadyError(Exception):
    """The idx file kept changing or stayed empty for every attempt; try again on the next poll."""


@dataclass(frozen=True)
class CdcIndex:
    """What a ``_cdc.idx`` says: durable up to ``offset`` (logical), and whether the segment is finished."""

    offset: int
    completed: bool


def parse_cdc_index(text: str) -> CdcIndex | None:
    """Parse idx content; None when it is empty or not yet complete (caught mid-rewrite)."""
    lines = text.split("\n")
    if not lines[0].isdigit():
        return None
    if len(lines) == 1:
        return CdcIndex(int(lines[0]), False)
    if lines[1] == COMPLETED and all(not line for line in lines[2:]):
        return CdcIndex(int(lines[0]), True)
    return None


def read_cdc_index(path: str | os.PathLike[str], *, attempts: int = 10, pause: float = 0.005) -> CdcIndex:
    """Read an idx file, retrying while it is empty, partial, or changes between two reads."""
    previous: CdcIndex | None = None
    for _ in range(attempts):
        try:
            text = Path(path).read_text(encoding="ascii")
        except FileNotFoundError:
            raise
        except (OSError, UnicodeDecodeError):
            text = ""
        index = parse_cdc_index(text)
        if index is not None and index == previous:
            return index
        previous = index
        time.sleep(pause)
    raise IndexNotReadyError(f"{os.fspath(path)} did not settle after {attempts} reads")


@dataclass(frozen=True)
class CdcSegment:
    """One segment in ``cdc_raw`` with its idx state."""

    path: Path
    version: int
    segment_id: int
    index: CdcIndex | None

    @property
    def index_path(self) -> Path:
        return index_path(self.path)

    @property
    def durable_offset(self) -> int:
        """How far the segment may be read: nothing without an idx, since its data is not yet durable."""
        return self.index.offset if self.index else 0

    @property
    def completed(self) -> bool:
        return bool(self.index and self.index.completed)


def index_path(segment: Path) -> Path:
    return segment.with_name(segment.name[: -len(".log")] + "_cdc.idx")


def list_cdc_segments(cdc_raw: str | os.PathLike[str]) -> list[CdcSegment]:
    """The segments in ``cdc_raw``, oldest first, each with its idx (None when there is no idx yet)."""
    segments = []
    for entry in Path(cdc_raw).iterdir():
        named = parse_segment_name(entry.name)
        if named is None:
            continue
        try:
            index = read_cdc_index(index_path(entry))
        except FileNotFoundError:
            index = None
        except IndexNotReadyError as error:
            log.info("%s; will read this segment on a later poll", error)
            index = None
        segments.append(CdcSegment(entry, named[0], named[1], index))
    return sorted(segments, key=lambda segment: segment.segment_id)


@dataclass
class CdcRead:
    """A read of everything new in ``cdc_raw``: the changes, where to resume, and what is finished."""

    result: ReadResult
    position: Position | None
    finished_segments: list[CdcSegment]


def read_new_changes(reader: CommitLogReader, cdc_raw: str | os.PathLike[str], after: Position | None) -> CdcRead:
    """Read every durable change after ``after`` from the segments in ``cdc_raw``, oldest first.

    Reading stops after the first segment that is not COMPLETED: a position is a single (segment, offset),
    so a newer segment is only entered once every older one can no longer grow. A segment is *finished*
    once its idx says COMPLETED and it has been read to its offset: it may be deleted once every
    destination has committed its changes.
    """
    segments = []
    for segment in list_cdc_segments(cdc_raw):
        if segment.index is None or (after is not None and segment.segment_id < after.segment_id):
            continue
        segments.append(segment)
        if not segment.completed:
            break
    limits: dict[str, int | None] = {os.fspath(s.path): s.durable_offset for s in segments}
    result = reader.read_segments([s.path for s in segments], after=after, limits=limits)
    position = result.stats.last_position or after
    finished = [s for s in segments if s.completed]
    return CdcRead(result, position, finished)


@dataclass
class DurableRead:
    """A bounded read of what is durable in ``cdc_raw``: changes, where the next read resumes, how far it looked.

    ``position`` is the last entry read (the next read starts strictly after it); ``frontier`` is how far
    the durable log was scanned, which is at or past ``position`` when trailing entries held no change of a
    captured table. A poller compares ``frontier`` with the idx offsets to know whether anything is new.
    """

    result: ReadResult
    after: Position | None
    position: Position | None
    frontier: Position | None
    segments: list[CdcSegment]


def durable_frontier(segments: list[CdcSegment]) -> Position | None:
    """The furthest durable place in the log: the idx offset of the newest segment a reader may enter.

    Segments are entered oldest first and a newer one only once every older one is COMPLETED, as
    :func:`read_new_changes` does; a segment without an idx (not yet durable) stops the walk.
    """
    frontier = None
    for segment in segments:
        if segment.index is None:
            break
        frontier = Position(segment.segment_id, segment.durable_offset)
        if not segment.completed:
            break
    return frontier


def read_durable(
    reader: CommitLogReader,
    cdc_raw: str | os.PathLike[str],
    after: Position | None,
    *,
    max_changes: int | None = None,
    max_bytes: int | None = None,
) -> DurableRead:
    """Read the durable changes after ``after``, oldest segment first, within the bounds of one micro-batch.

    Never past a segment's idx offset, never into a segment while an older one may still grow, and never
    past a segment that has no idx yet (its data is not durable, and skipping it would lose it). Both bounds
    stop at a sync section boundary; a single section larger than ``max_bytes`` is still read whole, so a
    read always moves forward when there is something to read.
    """
    chosen: list[CdcSegment] = []
    limits: dict[str, int | None] = {}
    budget = max_bytes
    for segment in list_cdc_segments(cdc_raw):
        if segment.index is None:
            break
        if after is not None and segment.segment_id < after.segment_id:
            continue
        start = after.offset if after is not None and after.segment_id == segment.segment_id else 0
        limit = segment.durable_offset
        if budget is not None and limit - start > budget:
            limit = start + max(budget, 1)
        chosen.append(segment)
        limits[os.fspath(segment.path)] = limit
        if budget is not None:
            budget -= max(limit - start, 0)
        if not segment.completed or limit < segment.durable_offset or (budget is not None and budget <= 0):
            break
    result = reader.read_segments([s.path for s in chosen], after=after, limits=limits, max_changes=max_changes)
    last = chosen[-1] if chosen else None
    if (
        last is not None
        and result.stats.last_position in (None, after)
        and limits[os.fspath(last.path)] < last.durable_offset
    ):
        # The byte bound fell inside the first section: read that one section whole rather than stall.
        limits[os.fspath(last.path)] = last.durable_offset
        result = reader.read_segments([s.path for s in chosen], after=after, limits=limits, max_changes=max_changes)
    position = result.stats.last_position or after
    if last is None:
        frontier = after
    elif result.stats.bounded or limits[os.fspath(last.path)] < last.durable_offset:
        frontier = position
    else:
        frontier = Position(last.segment_id, last.durable_offset)
    if frontier is not None and position is not None and frontier < position:
        frontier = position
    return DurableRead(result, after, position, frontier, chosen)


def cdc_raw_usage(cdc_raw: str | os.PathLike[str]) -> int:
    """Bytes the files in ``cdc_raw`` take (what Cassandra counts against ``cdc_total_space``)."""
    return sum(entry.stat().st_size for entry in Path(cdc_raw).iterdir() if entry.is_file())


def delete_segment(segment: CdcSegment) -> None:
    """Remove a consumed segment and its idx: the consumer's job once every destination has it."""
    segment.path.unlink(missing_ok=True)
    segment.index_path.unlink(missing_ok=True)
