"""How a load's statements reach PostgreSQL: each is a :class:`Step` (with the data of a ``COPY … FROM
STDIN``); :func:`stage_steps` stage a piece in a temporary table by binary COPY (``postgres.binary``), and
:func:`run_steps` runs them in order. Shared with TimescaleDB, whose history is staged the same way."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
import pyarrow as pa

from cdc_assets.destinations.postgres import binary as pg_binary
from cdc_assets.destinations.postgres import staging as st
from cdc_assets.destinations.postgres.layout import ident

COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class Step:
    """One statement of a load; ``payload`` is the data of a ``COPY … FROM STDIN``."""

    sql: str
    payload: memoryview | None = None


def run_steps(cursor: psycopg.Cursor, steps: Sequence[Step]) -> None:
    for step in steps:
        if step.payload is None:
            cursor.execute(step.sql)
            continue
        with cursor.copy(step.sql) as copy:
            for start in range(0, len(step.payload), COPY_CHUNK):
                copy.write(step.payload[start : start + COPY_CHUNK])


def stage_steps(stage: str, staging: Sequence[tuple[str, str]], parts: st.Parts) -> list[Step]:
    """Statements making ``stage`` hold ``parts``: a binary COPY into a temporary table, behind a temporary
    view casting the columns binary COPY does not spell (numeric, inet, interval, arrays: sent as text).

    :func:`drop_stage_step` removes both."""
    names = [name for name, _ in staging]
    table = pa.table({name: parts.table.column(name) for name in names})
    sent = [wire_type(pg, table.column(name)) for name, pg in staging]
    raw = stage + "_raw"
    definition = ", ".join(f"{ident(name)} {pg}" for name, pg in zip(names, sent, strict=True))
    columns = ", ".join(ident(n) for n in names)
    casts = ", ".join(
        ident(name) if pg == wire else f"{ident(name)}::{pg} AS {ident(name)}"
        for (name, pg), wire in zip(staging, sent, strict=True)
    )
    return [
        Step(f"CREATE TEMPORARY TABLE {raw} ({definition}) ON COMMIT DROP"),
        Step(f"COPY {raw} ({columns}) FROM STDIN WITH (FORMAT binary)", pg_binary.binary_copy_payload(table, sent)),
        Step(f"CREATE TEMPORARY VIEW {stage} AS SELECT {casts} FROM {raw}"),
    ]


def wire_type(pg_type: str, values: pa.Array | pa.ChunkedArray) -> str:
    """The type a staged column is sent as: its own, unless binary COPY cannot spell it or it was staged as
    its text form (``postgres.staging``; numeric only from plain decimal text), then text."""
    if pg_type not in pg_binary.SUPPORTED_TYPES:
        return "text"
    if pa.types.is_string(values.type) and pg_type not in ("text", "jsonb", "uuid"):
        return "numeric" if pg_type == "numeric" and pg_binary.plain_decimals(values) else "text"
    return pg_type


def drop_stage_step(stage: str) -> Step:
    return Step(f"DROP TABLE {stage}_raw CASCADE")
