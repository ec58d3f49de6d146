"""Masking sensitive columns of a change batch before it is staged or loaded anywhere.

A :class:`MaskingPolicy` names columns as ``keyspace.table.column`` and gives each a :class:`ColumnMask`:

- ``drop``: the column leaves the table and the batch.
- ``redact``: every value becomes the constant ``[redacted]``.
- ``sha256``: every value becomes the hex SHA-256 of a salt followed by the value.
- ``hmac``: every value becomes the hex HMAC-SHA-256 of the value under a key.
- ``tokenize``: every value becomes a prefix and 32 hex characters of an HMAC-SHA-256 under a key. A token
  depends on the key and the value only, never on the table or column, so equal values in different tables
  get equal tokens and joins keep working.

Salts and keys come from environment variables the mask names (``salt_env``, ``key_env``); they are read
when the policy is validated and are never part of a repr, a log line or an error.

What masking does to types: masking keeps the *shape* of a value and makes every scalar inside it text.
A masked ``int`` column becomes ``text``; a masked ``map<int, frozen<list<float>>>`` becomes
``map<text, frozen<list<text>>>``; a masked UDT ``address`` becomes ``address_masked`` with every field
``text``. :func:`mask_batch` returns the table schema with those types, so a destination creates columns
that match the masked batch. Nulls (absent values, tombstones) stay null: there is no value to hide.

Where values are masked: simple cell values; collection elements (a set element and a map key are the
element's cell path, so they are masked too; a list's path is the timeuuid Cassandra generated for the
element's position, not data, and is kept so list order survives); UDT fields; values inside frozen
collections, tuples, UDTs and vectors; and primary-key columns, including the clustering values that
range deletions carry as bounds.

A primary-key column identifies the row every merge converges on, so it may only be masked by a
deterministic, collision-free method (``sha256``, ``hmac``, ``tokenize``); ``drop`` and ``redact`` are
rejected there. ``redact`` is rejected as well on a column whose type contains a set or a map: it would
fold distinct set elements or map keys into one. A counter can only be dropped: a change holds one leader's
shard of it, never its value. Masking does not preserve order, so a range deletion bounded by an inequality
on a masked clustering column cannot be applied exactly by a destination;
:func:`mask_batch` logs how many such deletions a batch holds (never their values).

The text a value is hashed as: strings (text, ascii, uuid, timeuuid, inet, varint, decimal) as their
UTF-8 bytes, blobs as their bytes, durations as CQL duration literals (``1mo2d3ns``), and every other
scalar as Arrow's text form of it (``42``, ``true``, ``1.5``, ``2023-11-14 22:13:20.123Z``,
``2022-01-08``). So a user id stored as ``bigint`` in one table and as ``text`` in another still gets one
token.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretBytes, field_validator, model_validator

from cdc_assets.cassandra_schema.tables import Column, TableSchema
from cdc_assets.cassandra_schema.types import CqlType
from cdc_assets.change_batch import KIND, KIND_RANGE_DELETION, RANGE_END, RANGE_START, change_batch_schema

log = logging.getLogger(__name__)

REDACTED = "[redacted]"
DEFAULT_TOKEN_PREFIX = "tok_"
MIN_SECRET_BYTES = 16
TOKEN_HEX_CHARS = 32
KEY_METHODS = frozenset({"sha256", "hmac", "tokenize"})

MaskMethod = Literal["drop", "redact", "sha256", "hmac", "tokenize"]
LeafMasker = Callable[[pa.Array], pa.Array]

# Domain separation: a tokenize mask and an hmac mask sharing one key must not produce related outputs.
_TOKEN_DOMAIN = b"cdc_assets.tokenize\x00"
_SHA256_BLOCK = 64
_SECRET_ENV = {"sha256": "salt_env", "hmac": "key_env", "tokenize": "key_env"}


class MaskingError(ValueError):
    """A masking policy that cannot be applied to a table or a batch."""


class ColumnMask(BaseModel):
    """How one column is masked; the secret it needs is read from the environment at validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: MaskMethod
    salt_env: str | None = Field(default=None, min_length=1)
    key_env: str | None = Field(default=None, min_length=1)
    token_prefix: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_:-]{0,16}$")
    _secret: SecretBytes | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _read_secret(self) -> ColumnMask:
        needed = _SECRET_ENV.get(self.method)
        for option in ("salt_env", "key_env"):
            if option != needed and getattr(self, option) is not None:
                raise ValueError(f"{option} is not used by method {self.method!r}")
        if self.token_prefix is not None and self.method != "tokenize":
            raise ValueError(f"token_prefix is only used by method 'tokenize', not {self.method!r}")
        if needed is None:
            return self
        variable = getattr(self, needed)
        if variable is None:
            raise ValueError(f"method {self.method!r} needs {needed}: the environment variable holding its secret")
        value = os.environ.get(variable)
        if value is None:
            raise ValueError(f"{needed}: environment variable {variable!r} is not set")
        secret = value.encode()
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"{needed}: environment variable {variable!r} holds fewer than {MIN_SECRET_BYTES} bytes")
        self._secret = SecretBytes(secret)
        return self

    def leaf_masker(self) -> LeafMasker:
        """The function that turns an array of scalars into the array of their masked text."""
        if self.method == "redact":
            return _redact
        if self.method == "drop":
            raise MaskingError("method 'drop' does not mask values, it removes the column")
        if self._secret is None:
            raise MaskingError(f"method {self.method!r} has no secret: build masks through validation")
        secret = self._secret.get_secret_value()
        if self.method == "sha256":
            return _digesting(_sha256_digest(secret))
        if self.method == "hmac":
            return _digesting(_hmac_digest(secret))
        prefix = DEFAULT_TOKEN_PREFIX if self.token_prefix is None else self.token_prefix
        return _digesting(_token_digest(secret, prefix))


class MaskingPolicy(BaseModel):
    """Masks by column, keyed ``keyspace.table.column``; columns not named pass through unchanged."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    columns: dict[str, ColumnMask] = Field(default_factory=dict)

    @field_validator("columns")
    @classmethod
    def _keys_name_columns(cls, columns: dict[str, ColumnMask]) -> dict[str, ColumnMask]:
        for key in columns:
            parts = key.split(".", 2)
            if len(parts) != 3 or not all(parts):
                raise ValueError(f"key {key!r} is not of the form 'keyspace.table.column'")
        return columns

    def masks_for(self, table: TableSchema) -> dict[str, ColumnMask]:
        """``table``'s masks by column name, after checking they can be applied to it.

        Raises :class:`MaskingError`, naming the policy key, for a column the table does not have (a typo
        would otherwise leave the intended column unmasked) and for a method the column cannot take. A mask
        for a column dropped in Cassandra is skipped: no batch carries that column any more.
        """
        prefix = f"{table.qualified_name}."
        named = {key[len(prefix) :]: mask for key, mask in self.columns.items() if key.startswith(prefix)}
        masks = {}
        for name, mask in named.items():
            key = prefix + name
            column = table.column(name)
            if column is None and table.dropped_column(name) is not None:
                continue
            if column is None:
                raise MaskingError(f"{key}: table {table.qualified_name} has no column {name!r}")
            if column.kind in ("partition_key", "clustering") and mask.method not in KEY_METHODS:
                raise MaskingError(
                    f"{key}: method {mask.method!r} cannot mask a primary-key column; "
                    "use sha256, hmac or tokenize so merges still converge"
                )
            if column.type.kind == "counter" and mask.method != "drop":
                raise MaskingError(
                    f"{key}: a counter's value is the sum of shards spread over many changes, so no change "
                    f"holds a value to mask with {mask.method!r}; use drop"
                )
            if mask.method == "redact" and _contains_set_or_map(column.type):
                raise MaskingError(
                    f"{key}: method 'redact' would fold the distinct elements of {column.type.cql()} into one; "
                    "use drop, sha256, hmac or tokenize"
                )
            masks[name] = mask
        return masks


def masked_type(cql: CqlType) -> CqlType:
    """The CQL type of ``cql``'s values once masked: the same shape with every scalar made ``text``."""
    if not cql.args:
        return CqlType("text")
    name = f"{cql.name}_masked" if cql.kind == "udt" else cql.name
    return replace(cql, args=tuple(masked_type(arg) for arg in cql.args), name=name)


def masked_table(table: TableSchema, masks: Mapping[str, ColumnMask]) -> TableSchema:
    """``table`` as destinations see it once ``masks`` are applied: dropped columns gone, masked ones text."""
    columns: list[Column] = []
    for column in table.columns:
        mask = masks.get(column.name)
        if mask is None:
            columns.append(column)
        elif mask.method != "drop":
            columns.append(replace(column, type=masked_type(column.type)))
    return table.with_columns(columns, table.dropped)


def mask_batch(table: TableSchema, batch: pa.RecordBatch, policy: MaskingPolicy) -> tuple[TableSchema, pa.RecordBatch]:
    """Apply ``policy`` to one change batch of ``table``; returns the masked table schema and batch.

    The batch must have ``table``'s change-batch schema (a batch cannot be masked twice). The result has
    exactly ``change_batch_schema`` of the returned table.
    """
    masks = policy.masks_for(table)
    if not masks:
        return table, batch
    expected = change_batch_schema(table)
    if not batch.schema.equals(expected, check_metadata=False):
        raise MaskingError(f"batch does not have the change-batch schema of {table.qualified_name}")
    maskers = {name: mask.leaf_masker() for name, mask in masks.items() if mask.method != "drop"}
    masked_clustering = [c.name for c in table.clustering if c.name in maskers]
    if masked_clustering:
        _warn_inexact_range_deletions(table, batch, masked_clustering)

    result_table = masked_table(table, masks)
    schema = change_batch_schema(result_table)
    arrays = []
    for field in schema:
        source = batch.column(field.name)
        column = table.column(field.name)
        if field.name in (RANGE_START, RANGE_END) and masked_clustering:
            masked = _replace_fields(source, {name: _value_masker(maskers[name]) for name in masked_clustering})
        elif column is None or column.name not in maskers:
            masked = source
        elif column.kind in ("partition_key", "clustering"):
            masked = _mask_value(source, maskers[column.name])
        else:
            masked = _mask_cells(source, column.type, maskers[column.name])
        arrays.append(masked if masked.type == field.type else masked.cast(field.type))
    log.debug(
        "masked %s: %s",
        table.qualified_name,
        ", ".join(f"{name} ({mask.method})" for name, mask in sorted(masks.items())),
    )
    return result_table, pa.RecordBatch.from_arrays(arrays, schema=schema)


def _contains_set_or_map(cql: CqlType) -> bool:
    return cql.kind in ("set", "map") or any(_contains_set_or_map(arg) for arg in cql.args)


def _redact(leaf: pa.Array) -> pa.Array:
    return pc.if_else(pc.is_valid(leaf), pa.scalar(REDACTED), pa.scalar(None, pa.string()))


def _sha256_digest(salt: bytes) -> Callable[[bytes], str]:
    sha256 = hashlib.sha256

    def digest(value: bytes) -> str:
        return sha256(salt + value).hexdigest()

    return digest


def _hmac_digest(key: bytes, prefix: bytes = b"") -> Callable[[bytes], str]:
    """HMAC-SHA-256 (RFC 2104) of ``prefix + value`` under ``key``.

    Built from two one-shot SHA-256 calls on precomputed padded keys: per value that costs half of
    copying an ``hmac.HMAC`` object, which matters at a million values per batch.
    """
    block = key if len(key) <= _SHA256_BLOCK else hashlib.sha256(key).digest()
    block = block.ljust(_SHA256_BLOCK, b"\0")
    inner = bytes(byte ^ 0x36 for byte in block) + prefix
    outer = bytes(byte ^ 0x5C for byte in block)
    sha256 = hashlib.sha256

    def digest(value: bytes) -> str:
        return sha256(outer + sha256(inner + value).digest()).hexdigest()

    return digest


def _token_digest(key: bytes, prefix: str) -> Callable[[bytes], str]:
    mac = _hmac_digest(key, _TOKEN_DOMAIN)

    def digest(value: bytes) -> str:
        return prefix + mac(value)[:TOKEN_HEX_CHARS]

    return digest


def _digesting(digest: Callable[[bytes], str]) -> LeafMasker:
    """A masker that digests each value's canonical bytes; nulls stay null.

    Arrow has no SHA-256 kernel, so the one per-value Python step is the digest call itself. (Digesting
    only distinct values after dictionary encoding was measured slower: encoding costs about what a
    SHA-256 does.)
    """

    def mask(leaf: pa.Array) -> pa.Array:
        values = _canonical_bytes(leaf).to_pylist()
        return pa.array([None if value is None else digest(value) for value in values], pa.string())

    return mask


def _canonical_bytes(leaf: pa.Array) -> pa.Array:
    """The bytes each value is hashed as (see the module docstring)."""
    kind = leaf.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return leaf
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return leaf.cast(pa.binary())
    if kind == pa.month_day_nano_interval():
        # Arrow has no text cast for intervals; CQL's own duration literal is the natural text form.
        return pa.array(
            [None if v is None else f"{v.months}mo{v.days}d{v.nanoseconds}ns".encode() for v in leaf.to_pylist()],
            pa.binary(),
        )
    return leaf.cast(pa.string()).cast(pa.binary())


def _value_masker(leaf: LeafMasker) -> Callable[[pa.Array], pa.Array]:
    return lambda values: _mask_value(values, leaf)


def _mask_value(values: pa.Array, leaf: LeafMasker) -> pa.Array:
    """Mask every scalar inside ``values``, whatever nesting of structs, lists and maps holds it."""
    kind = values.type
    if pa.types.is_struct(kind):
        return _replace_fields(values, {field.name: _value_masker(leaf) for field in kind})
    if pa.types.is_map(kind):
        offsets, start, stop = _zero_based_offsets(values)
        keys = _mask_value(values.keys.slice(start, stop - start), leaf)
        items = _mask_value(values.items.slice(start, stop - start), leaf)
        return pa.MapArray.from_arrays(offsets, keys, items, mask=_null_mask(values))
    if pa.types.is_list(kind):
        return _map_list_values(values, _value_masker(leaf))
    if pa.types.is_fixed_size_list(kind):
        size = kind.list_size
        children = _mask_value(values.values.slice(values.offset * size, len(values) * size), leaf)
        return pa.FixedSizeListArray.from_arrays(children, size, mask=_null_mask(values))
    return leaf(values)


def _mask_cells(cells: pa.Array, cql: CqlType, leaf: LeafMasker) -> pa.Array:
    """Mask a static or regular column's cell structs (change_batch's simple or complex cell shape)."""
    mask_value = _value_masker(leaf)
    if not cql.is_complex:
        return _replace_fields(cells, {"value": mask_value})
    if cql.kind == "list":
        element_fields = {"value": mask_value}
    elif cql.kind == "set":
        element_fields = {"path": mask_value}
    elif cql.kind == "map":
        element_fields = {"path": mask_value, "value": mask_value}
    else:
        udt_fields = {name: _field_replacer({"value": mask_value}) for name in cql.field_names}
        return _replace_fields(cells, {"cells": _field_replacer(udt_fields)})
    elements = _field_replacer(element_fields)
    return _replace_fields(cells, {"cells": lambda lists: _map_list_values(lists, elements)})


def _field_replacer(
    replacements: Mapping[str, Callable[[pa.Array], pa.Array]],
) -> Callable[[pa.Array], pa.Array]:
    return lambda structs: _replace_fields(structs, replacements)


def _replace_fields(structs: pa.Array, replacements: Mapping[str, Callable[[pa.Array], pa.Array]]) -> pa.StructArray:
    """``structs`` with the named fields passed through their replacement functions."""
    children = []
    fields = []
    for index, field in enumerate(structs.type):
        child = structs.field(index)
        if field.name in replacements:
            child = replacements[field.name](child)
        children.append(child)
        fields.append(pa.field(field.name, child.type, nullable=field.nullable))
    return pa.StructArray.from_arrays(children, fields=fields, mask=_null_mask(structs))


def _map_list_values(lists: pa.Array, function: Callable[[pa.Array], pa.Array]) -> pa.ListArray:
    offsets, start, stop = _zero_based_offsets(lists)
    values = function(lists.values.slice(start, stop - start))
    return pa.ListArray.from_arrays(offsets, values, mask=_null_mask(lists))


def _zero_based_offsets(lists: pa.Array) -> tuple[pa.Array, int, int]:
    """Offsets rebased to 0 and the child range they cover: Arrow rebuilds lists only from such offsets."""
    offsets = lists.offsets
    start = offsets[0].as_py()
    stop = offsets[-1].as_py()
    return pc.subtract(offsets, pa.scalar(start, offsets.type)), start, stop


def _null_mask(values: pa.Array) -> pa.Array | None:
    return values.is_null() if values.null_count else None


def _warn_inexact_range_deletions(table: TableSchema, batch: pa.RecordBatch, masked_clustering: list[str]) -> None:
    """Log how many range deletions bound a masked clustering column by more than equality."""
    ranges = batch.filter(pc.equal(batch.column(KIND), KIND_RANGE_DELETION))
    if ranges.num_rows == 0:
        return
    names = [c.name for c in table.clustering]
    starts = ranges.column(RANGE_START).flatten()
    ends = ranges.column(RANGE_END).flatten()
    inexact = pa.array([False] * ranges.num_rows)
    for name in masked_clustering:
        start, end = starts[names.index(name)], ends[names.index(name)]
        one_sided = pc.xor(pc.is_valid(start), pc.is_valid(end))
        if pa.types.is_nested(start.type) or pa.types.is_interval(start.type):
            differ = pc.and_(pc.is_valid(start), pc.is_valid(end))
        else:
            differ = pc.fill_null(pc.not_equal(start, end), False)
        inexact = pc.or_(inexact, pc.or_(one_sided, differ))
    count = pc.sum(inexact).as_py() or 0
    if count:
        log.warning(
            "%s: %d range deletion(s) bound masked clustering column(s) %s by an inequality; masking does "
            "not preserve order, so destinations cannot apply them exactly",
            table.qualified_name,
            count,
            ", ".join(masked_clustering),
        )
