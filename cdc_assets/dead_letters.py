"""The dead-letter store: changes set aside with where they came from and why, never silently dropped."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path


@dataclass(frozen=True)
class DeadLetter:
    """One thing that could not be read or loaded.

    ``stage`` says who set it aside (``reader`` or a destination name); ``segment``/``position`` locate
    the entry in the commit log (the logical end offset of the entry); ``payload`` keeps the raw bytes
    (the serialized mutation) so nothing is lost and it can be replayed once the cause is fixed.
    """

    stage: str
    reason: str
    segment: str
    position: int
    table: str | None = None
    payload: bytes = b""
    recorded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def to_json(self) -> str:
        record = asdict(self)
        record["payload"] = base64.b64encode(self.payload).decode()
        return json.dumps(record, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> DeadLetter:
        record = json.loads(line)
        record["payload"] = base64.b64decode(record["payload"])
        return cls(**record)


class DeadLetterStore:
    """An append-only JSON-lines file; each append is flushed and fsynced before it returns."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        #: Letters this object appended: what one load set aside, for its metadata.
        self.appended = 0

    def append(self, letter: DeadLetter) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as out:
            out.write(letter.to_json() + "\n")
            out.flush()
            os.fsync(out.fileno())
        self.appended += 1

    def __iter__(self) -> Iterator[DeadLetter]:
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    yield DeadLetter.from_json(line)

    def __len__(self) -> int:
        return sum(1 for _ in self)
