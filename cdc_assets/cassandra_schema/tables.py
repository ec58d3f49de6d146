"""Table definitions: what the reader needs to decode a table's mutations, and what destinations build on."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from cdc_assets.cassandra_schema.types import CqlType, type_from_dict, type_to_dict

ColumnKind = Literal["partition_key", "clustering", "regular", "static"]


@dataclass(frozen=True)
class Column:
    name: str
    type: CqlType
    kind: ColumnKind
    position: int = -1
    descending: bool = False

    @property
    def name_bytes(self) -> bytes:
        return self.name.encode()


@dataclass(frozen=True)
class DroppedColumn:
    """A column dropped from a table: cells written at or before ``dropped_at`` (µs) are discarded."""

    name: str
    type: CqlType
    dropped_at: int
    kind: ColumnKind = "regular"


@dataclass(frozen=True)
class TableSchema:
    keyspace: str
    name: str
    id: uuid.UUID
    columns: tuple[Column, ...]
    dropped: tuple[DroppedColumn, ...] = ()
    cdc: bool = True
    _by_name: dict[str, Column] = field(default=None, init=False, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {column.name: column for column in self.columns})

    @property
    def qualified_name(self) -> str:
        return f"{self.keyspace}.{self.name}"

    @property
    def partition_key(self) -> tuple[Column, ...]:
        return tuple(sorted((c for c in self.columns if c.kind == "partition_key"), key=lambda c: c.position))

    @property
    def clustering(self) -> tuple[Column, ...]:
        return tuple(sorted((c for c in self.columns if c.kind == "clustering"), key=lambda c: c.position))

    @property
    def primary_key(self) -> tuple[Column, ...]:
        return self.partition_key + self.clustering

    @property
    def statics(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.kind == "static")

    @property
    def regulars(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.kind == "regular")

    @property
    def value_columns(self) -> tuple[Column, ...]:
        """Static then regular columns: the ones whose cells a change carries."""
        return self.statics + self.regulars

    def column(self, name: str) -> Column | None:
        return self._by_name.get(name)

    def dropped_column(self, name: str) -> DroppedColumn | None:
        for dropped in self.dropped:
            if dropped.name == name:
                return dropped
        return None

    def with_columns(self, columns: Iterable[Column], dropped: Iterable[DroppedColumn] = ()) -> TableSchema:
        return replace(self, columns=tuple(columns), dropped=tuple(dropped))


class SchemaRegistry:
    """Table definitions by table id and by name; the reader looks tables up here."""

    def __init__(self, tables: Iterable[TableSchema] = ()):
        self._by_id: dict[uuid.UUID, TableSchema] = {}
        for table in tables:
            self.add(table)

    def add(self, table: TableSchema) -> None:
        self._by_id[table.id] = table

    def remove(self, table_id: uuid.UUID) -> None:
        self._by_id.pop(table_id, None)

    def get(self, table_id: uuid.UUID) -> TableSchema | None:
        return self._by_id.get(table_id)

    def by_name(self, keyspace: str, name: str) -> TableSchema | None:
        for table in self._by_id.values():
            if table.keyspace == keyspace and table.name == name:
                return table
        return None

    def copy(self) -> SchemaRegistry:
        return SchemaRegistry(self._by_id.values())

    def __iter__(self) -> Iterator[TableSchema]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)


def table_to_dict(table: TableSchema) -> dict[str, Any]:
    """A table definition as plain data (JSON-ready): what a staged change batch is loaded with later."""
    return {
        "keyspace": table.keyspace,
        "name": table.name,
        "id": str(table.id),
        "cdc": table.cdc,
        "columns": [
            {
                "name": c.name,
                "type": type_to_dict(c.type),
                "kind": c.kind,
                "position": c.position,
                "descending": c.descending,
            }
            for c in table.columns
        ],
        "dropped": [
            {"name": d.name, "type": type_to_dict(d.type), "dropped_at": d.dropped_at, "kind": d.kind}
            for d in table.dropped
        ],
    }


def table_from_dict(data: dict[str, Any]) -> TableSchema:
    """The inverse of :func:`table_to_dict`."""
    return TableSchema(
        keyspace=data["keyspace"],
        name=data["name"],
        id=uuid.UUID(data["id"]),
        columns=tuple(
            Column(c["name"], type_from_dict(c["type"]), c["kind"], c["position"], c["descending"])
            for c in data["columns"]
        ),
        dropped=tuple(
            DroppedColumn(d["name"], type_from_dict(d["type"]), d["dropped_at"], d["kind"]) for d in data["dropped"]
        ),
        cdc=data["cdc"],
    )
