"""Collection and UDT elements on their way to PostgreSQL: one Arrow row per element, reduced, then jsonb.

A complex column is stored as one jsonb object per row: element identity → a JSON array

    [ts, c, exp, vb, v, o, k]

``ts`` the write time (µs); ``c`` 1 for an expiring cell, 2 for a tombstone (absent: live); ``exp`` the
expiry (seconds); ``vb`` the hex of the value's CQL bytes (absent: no bytes, as a set element has);
``v`` the value as ``postgres.types`` JSON; ``o`` the hex of the identity's order bytes; ``k`` a map key's text.
Trailing absent fields are left out, and what the identity already says is never repeated: a set or map
keyed by ``text``/``ascii`` uses the text itself as identity, order (``COLLATE "C"`` is UTF-8 byte order,
Cassandra's) and map key, and a set's value is its key. A live element of a ``set<text>`` is therefore
``"tag": [ts]``. Other identities: a list element's timeuuid (lower-case text), a UDT field's name, the
hex of any other set element's or map key's CQL bytes.

The elements of a batch stay columnar until they are rendered as the staged jsonb text: identities of one
staged row are reduced to the element Cassandra keeps (newest write time; then tombstone, expiring, live;
then the later expiry; then the greater value bytes), elements a collection deletion covers are dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cdc_assets.cassandra_schema.tables import Column
from cdc_assets.cassandra_schema.types import CqlType
from cdc_assets.destinations.cassandra_values import (
    canonical_element,
    canonical_value,
    order_bytes,
    python_values,
    timeuuid_order,
    value_bytes,
)
from cdc_assets.destinations.postgres import types as pg_types
from cdc_assets.destinations.postgres.keys import all_uuid_text, fixed_binary, hex_text, uuid_key

SOURCE, KEY, TS, CLASS, EXP, VB, VALUE, ORDER, MAP_KEY = "source", "key", "ts", "c", "exp", "vb", "v", "o", "k"
_TEXT_FIELDS = (VB, VALUE, ORDER, MAP_KEY)
SCHEMA = pa.schema(
    [
        (SOURCE, pa.int64()),
        (KEY, pa.string()),
        (TS, pa.int64()),
        (CLASS, pa.int8()),
        (EXP, pa.int64()),
        *((name, pa.string()) for name in _TEXT_FIELDS),
    ]
)
EXPIRING, TOMBSTONE = 1, 2
_COLUMNAR_KINDS = frozenset({"ascii", "text", "tinyint", "smallint", "int", "bigint"})
_INT_WIDTHS = {"tinyint": 1, "smallint": 2, "int": 4, "bigint": 8}
# Text JSON can hold once `\` and `"` are escaped; control characters are escaped the Python way.
_CONTROL = r"[\x00-\x1f]"
# A NUL written as JSON: jsonb cannot hold it.
_JSON_NUL = r"(?:^|[^\\])(?:\\\\)*\\u0000"
_TRAILING_NULLS = r"(,null)+\]$"


def text_keyed(cql: CqlType) -> bool:
    """Whether a complex column's element identity is its key text (sets and maps of ``text``/``ascii``)."""
    return cql.kind in ("set", "map") and cql.args[0].kind in ("ascii", "text")


# --------------------------------------------------------------------------------------------------
# Element rows


def element_rows(column: Column, cells: pa.Array, rejected: dict[int, str]) -> pa.Table:
    """A complex column's elements, one row each (``SOURCE``: the change's index in ``cells``).

    Elements PostgreSQL cannot take (a NUL in jsonb, a value ``postgres.types`` cannot spell) reject their change.
    """
    lists = pc.struct_field(cells, "cells")
    rows = _columnar_rows(column.type, lists)
    if rows is None:
        rows = _python_rows(column, lists, rejected)
    for name in (KEY, VALUE, MAP_KEY):
        found = pc.fill_null(pc.match_substring_regex(rows.column(name), _JSON_NUL if name != KEY else "\x00"), False)
        for source in np.unique(rows.column(SOURCE).to_numpy()[found.to_numpy(zero_copy_only=False)]).tolist():
            rejected.setdefault(int(source), f"{column.name}: an element with a NUL character")
    return rows


def _columnar_rows(cql: CqlType, lists: pa.Array) -> pa.Table | None:
    """Element rows built column by column, for sets, lists and maps of text and integers; None otherwise."""
    if cql.kind not in ("set", "list", "map"):
        return None
    path_type = CqlType("timeuuid") if cql.kind == "list" else cql.args[0]
    value_type = None if cql.kind == "set" else cql.args[-1]
    if cql.kind != "list" and path_type.kind not in _COLUMNAR_KINDS:
        return None
    if value_type is not None and value_type.kind not in _COLUMNAR_KINDS:
        return None
    present = pc.indices_nonzero(pc.is_valid(lists))
    changes = lists.take(present)
    cells = pc.list_flatten(changes)
    paths = pc.struct_field(cells, "path")
    n = len(cells)
    deleted = pc.fill_null(pc.struct_field(cells, "deleted"), False)
    live = pc.invert(deleted)
    expires = pc.if_else(deleted, pa.scalar(None, pa.int64()), pc.struct_field(cells, "expires_at").cast(pa.int64()))
    nulls = pa.nulls(n, pa.string())
    fields: dict[str, pa.Array] = {VB: nulls, VALUE: nulls, ORDER: nulls, MAP_KEY: nulls}
    if cql.kind == "list":
        if not all_uuid_text(paths):
            return None
        key = pc.utf8_lower(paths)
        # A key component is 0x02 then the order bytes: drop the marker's two hex digits.
        fields[ORDER] = pc.utf8_slice_codeunits(hex_text(uuid_key("timeuuid", paths, False)), 2)
    elif text_keyed(cql):
        key = paths
    else:
        path_hex, path_order, path_json = _int_texts(path_type, paths)
        key = path_hex
        fields[ORDER] = path_order
        if cql.kind == "set":
            fields[VALUE] = path_json
        else:
            fields[MAP_KEY] = json_string(path_json)
    if value_type is not None:
        values = pc.struct_field(cells, "value")
        if value_type.kind in ("ascii", "text"):
            value_hex, value_json = hex_text(values.cast(pa.binary())), json_string(values)
        else:
            value_hex, _, value_json = _int_texts(value_type, values)
        fields[VB] = pc.if_else(live, value_hex, nulls)
        fields[VALUE] = pc.if_else(live, value_json, nulls)
    classes = pc.if_else(
        deleted, pa.scalar(TOMBSTONE, pa.int8()), pc.if_else(pc.is_valid(expires), EXPIRING, pa.scalar(None, pa.int8()))
    )
    return pa.table(
        {
            SOURCE: present.take(pc.list_parent_indices(changes)).cast(pa.int64()),
            KEY: key,
            TS: pc.struct_field(cells, "writetime"),
            CLASS: classes,
            EXP: expires,
            **fields,
        },
        schema=SCHEMA,
    )


def _int_texts(cql: CqlType, values: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array]:
    """Integers as (hex of their CQL bytes, hex of their order bytes, their JSON)."""
    width = _INT_WIDTHS[cql.kind]
    numbers = pc.fill_null(values.cast(pa.int64()), 0).to_numpy()
    signed = numbers.astype(f">i{width}").view(np.uint8).reshape(-1, width)
    biased = signed.copy()
    biased[:, 0] ^= 0x80
    json_text = pc.if_else(pc.is_valid(values), values.cast(pa.string()), pa.scalar(None, pa.string()))
    return hex_text(fixed_binary(signed)), hex_text(fixed_binary(biased)), json_text


def json_string(values: pa.Array) -> pa.Array:
    """Text as JSON strings; columnar unless some text holds a control character (rare)."""
    if pc.any(pc.match_substring_regex(values, _CONTROL)).as_py():
        return pa.array(
            [None if v is None else json.dumps(v, ensure_ascii=False) for v in values.to_pylist()], pa.string()
        )
    escaped = pc.replace_substring(pc.replace_substring(values, "\\", "\\\\"), '"', '\\"')
    return pc.binary_join_element_wise('"', escaped, '"', "")


def _python_rows(column: Column, lists: pa.Array, rejected: dict[int, str]) -> pa.Table:
    """Element rows built one element at a time (UDTs, frozen values, other element types)."""
    cql = column.type
    rows: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
    for source, raw in enumerate(python_values(lists)):
        if raw is None:
            continue
        try:
            elements = list(_python_elements(cql, raw))
        except (ValueError, OverflowError) as error:
            rejected.setdefault(source, f"{column.name}: {error}")
            continue
        for element in elements:
            rows[SOURCE].append(source)
            for name, value in element.items():
                rows[name].append(value)
    return pa.table(rows, schema=SCHEMA)


def _python_elements(cql: CqlType, raw: Any) -> Any:
    """Each element of one change's complex cell, as a dict of the element row's fields (``SOURCE`` aside)."""
    if cql.kind == "udt":
        for name, field_type in zip(cql.field_names, cql.args, strict=True):
            cell = raw.get(name)
            if cell is not None:
                yield _python_element(name, field_type, cell, None, None)
        return
    if cql.kind == "list":
        for cell in raw:
            path = canonical_value(CqlType("timeuuid"), cell["path"])
            yield _python_element(path, cql.args[0], cell, timeuuid_order(path).hex(), None)
        return
    path_type = cql.args[0]
    for cell in raw:
        path = canonical_value(path_type, cell["path"])
        if text_keyed(cql):
            key, order, map_key = path, None, None
        else:
            key, order = value_bytes(path_type, path).hex(), order_bytes(path_type, path).hex()
            map_key = pg_types.dumps(pg_types.map_key_text(path_type, path)) if cql.kind == "map" else None
        if cql.kind == "map":
            yield _python_element(key, cql.args[1], cell, order, map_key)
            continue
        element = _python_element(key, None, cell, order, None)
        if not text_keyed(cql) and not cell["deleted"]:
            element[VALUE] = pg_types.dumps(pg_types.json_value(path_type, path))
        yield element


def _python_element(
    key: str, value_type: CqlType | None, cell: dict[str, Any], order: str | None, map_key: str | None
) -> dict[str, Any]:
    element = {KEY: key, TS: cell["writetime"], CLASS: None, EXP: None, VB: None, VALUE: None}
    element.update({ORDER: order, MAP_KEY: map_key})
    if cell["deleted"]:
        element[CLASS] = TOMBSTONE
        return element
    if cell["expires_at"] is not None:
        element[CLASS] = EXPIRING
        element[EXP] = cell["expires_at"]
    if value_type is not None:
        value = canonical_element(value_type, cell["value"])
        element[VB] = value_bytes(value_type, value).hex()
        element[VALUE] = pg_types.dumps(pg_types.json_value(value_type, value))
    return element


# --------------------------------------------------------------------------------------------------
# Reduction and rendering


def reduce_and_render(
    elements: pa.Table, owners: np.ndarray, count: int, deletions: pa.Array | None = None
) -> pa.Array:
    """Per owner (0 … count-1; -1: no owner), the jsonb text of the elements Cassandra keeps (null if none).

    ``deletions``: each owner's collection deletion (write time, null for none); what it covers is dropped.
    """
    return render(*reduce(elements, owners, deletions), count)


def reduce(elements: pa.Table, owners: np.ndarray, deletions: pa.Array | None = None) -> tuple[pa.Table, np.ndarray]:
    """The elements Cassandra keeps per owner and identity (what a collection deletion covers dropped), with
    their owners, grouped by owner."""
    keep = np.nonzero(owners >= 0)[0]
    if len(keep) < len(owners):
        elements, owners = elements.take(pa.array(keep, pa.int64())), owners[keep]
    winners = _winners(elements, owners)
    if deletions is not None and deletions.null_count < len(deletions):
        deleted_at = pc.fill_null(deletions, np.iinfo(np.int64).min).to_numpy(zero_copy_only=False)
        ts = elements.column(TS).to_numpy()
        winners = winners[ts[winners] > deleted_at[owners[winners]]]
    kept_owners = owners[winners]
    order = np.argsort(kept_owners, kind="stable")
    return elements.take(pa.array(winners[order], pa.int64())), kept_owners[order]


def render(kept: pa.Table, owners: np.ndarray, count: int) -> pa.Array:
    """Per owner, the jsonb text of its elements (``reduce``'s, grouped by owner; null when it has none)."""
    sizes = np.bincount(owners, minlength=count)
    offsets = pa.array(np.r_[0, np.cumsum(sizes)].astype(np.int32))
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, _element_texts(kept)), ",")
    objects = pc.binary_join_element_wise("{", joined, "}", "")
    return pc.if_else(pa.array(sizes > 0), objects, pa.scalar(None, pa.string()))


def presentable(cql: CqlType) -> bool:
    """Whether :func:`present` spells ``cql``'s presented value (else PostgreSQL computes it from the elements):
    sets, lists and maps of text and integers, the element kinds built column by column."""
    if cql.kind not in ("set", "list", "map"):
        return False
    return all(arg.kind in _COLUMNAR_KINDS for arg in cql.args)


def present(cql: CqlType, kept: pa.Table, owners: np.ndarray, count: int, dropped_at: int) -> Presented:
    """Per owner, the presented value of its elements (``reduce``'s) as PostgreSQL's text input of
    ``postgres.types.pg_type(cql)``, every element held included (live and expiring; not tombstones nor what a
    drop of the column hides), in the column's order; and its first element expiry. What the SQL function
    ``postgres.layout.PgTableSql.present_function`` computes from the stored jsonb, spelt here from the Arrow elements.

    ``spelt`` is False for an owner whose value this cannot spell (a list of text holding a control
    character): PostgreSQL computes that one."""
    classes = pc.fill_null(kept.column(CLASS), 0).to_numpy(zero_copy_only=False)
    expiring = np.where(classes == EXPIRING, pc.fill_null(kept.column(EXP), 0).to_numpy(zero_copy_only=False), 0)
    first_expiry = np.full(count, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_expiry, owners[classes == EXPIRING], expiring[classes == EXPIRING])
    until = pa.array(first_expiry, pa.int64(), mask=first_expiry == np.iinfo(np.int64).max)
    shown = (classes != TOMBSTONE) & (kept.column(TS).to_numpy() > dropped_at)
    rows = kept.select([KEY, VALUE, ORDER, MAP_KEY]).filter(pa.array(shown))
    shown_owners = owners[shown]
    order_field = KEY if text_keyed(cql) else ORDER
    order_text = rows.column(order_field).combine_chunks()
    # Owner first, then the column's order: text (and hex of order bytes) sorts as its UTF-8 bytes do.
    by = pa.table({"owner": pa.array(shown_owners, pa.int64()), "order": order_text.cast(pa.binary())})
    sorted_index = pc.sort_indices(by, sort_keys=[("owner", "ascending"), ("order", "ascending")])
    rows, shown_owners = rows.take(sorted_index), shown_owners[sorted_index.to_numpy()]
    spelt = np.ones(count, dtype=bool)
    if cql.kind == "map":
        if text_keyed(cql):
            keys = json_string(rows.column(KEY).combine_chunks())
        else:
            # An integer key is kept as a JSON string of its digits: the object key jsonb_object_agg makes.
            keys = rows.column(MAP_KEY).combine_chunks()
        items = pc.binary_join_element_wise(keys, rows.column(VALUE).combine_chunks(), ":")
    else:
        if cql.kind == "set" and text_keyed(cql):
            items = json_string(rows.column(KEY).combine_chunks())
        else:
            items = rows.column(VALUE).combine_chunks()
        if cql.args[0].kind in ("ascii", "text"):
            # JSON's string escapes are the array literal's (a backslash before `\` or `"`), but for the
            # control characters JSON spells as `\n`, `\u0001`: those owners are left to PostgreSQL.
            escaped = pc.fill_null(pc.match_substring_regex(items, r'\\[^\\"]'), False).to_numpy(zero_copy_only=False)
            spelt[np.unique(shown_owners[escaped])] = False
    sizes = np.bincount(shown_owners, minlength=count)
    offsets = pa.array(np.r_[0, np.cumsum(sizes)].astype(np.int32))
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, items), ",")
    values = pc.binary_join_element_wise("{", joined, "}", "")
    values = pc.if_else(pa.array(sizes > 0), values, pa.scalar(None, pa.string()))
    return Presented(values, until, pa.array(spelt))


@dataclass(frozen=True)
class Presented:
    """Per owner: the presented value's text (null: no element held), its first element expiry (null: none
    expires) and whether ``value`` is spelt (False: PostgreSQL is to compute it)."""

    value: pa.Array
    until: pa.Array
    spelt: pa.Array


def latest_writetimes(elements: pa.Table, owners: np.ndarray, count: int) -> pa.Array:
    """Per owner, the latest write time among its elements (null when it has none)."""
    mine = owners >= 0
    latest = np.full(count, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(latest, owners[mine], elements.column(TS).to_numpy()[mine])
    return pa.array(latest, pa.int64(), mask=np.bincount(owners[mine], minlength=count) == 0)


def _winners(elements: pa.Table, owners: np.ndarray) -> np.ndarray:
    """Indices of the elements that win per (owner, identity)."""
    if len(owners) == 0:
        return np.empty(0, dtype=np.int64)
    identity = pc.dictionary_encode(elements.column(KEY).combine_chunks()).indices.to_numpy().astype(np.int64)
    groups = owners.astype(np.int64) * (int(identity.max()) + 1) + identity
    ts = elements.column(TS).to_numpy()
    classes = pc.fill_null(elements.column(CLASS), 0).to_numpy().astype(np.int64)
    expiry = pc.fill_null(elements.column(EXP), 0).to_numpy()
    order = np.lexsort((expiry, classes, ts, groups))
    sorted_groups = groups[order]
    last = np.r_[sorted_groups[1:] != sorted_groups[:-1], True]
    winners = order[last]
    same = sorted_groups[1:] == sorted_groups[:-1]
    for key in (ts, classes, expiry):
        same &= key[order][1:] == key[order][:-1]
    if same.any():
        # Ties up to the value bytes (rare): the greater bytes win; hex of the bytes orders as the bytes.
        value_bytes_hex = elements.column(VB).to_pylist()
        winner_slot = np.cumsum(last) - 1
        for end in np.nonzero(last[1:] & same)[0] + 1:
            start = end
            while start > 0 and same[start - 1]:
                start -= 1
            tied = order[start : end + 1]
            winners[winner_slot[end]] = max(tied.tolist(), key=lambda i: value_bytes_hex[i] or "")
    return np.sort(winners)


def _element_texts(elements: pa.Table) -> pa.Array:
    """Each element as ``"identity":[ts, c, exp, vb, v, o, k]`` with trailing absent fields left out."""

    def text(name: str) -> pa.Array:
        return elements.column(name).combine_chunks().cast(pa.string())

    def quoted(name: str) -> pa.Array:
        return pc.binary_join_element_wise('"', text(name), '"', "")

    fields = [text(TS), text(CLASS), text(EXP), quoted(VB), text(VALUE), quoted(ORDER), text(MAP_KEY)]
    # Fields absent from every element need not be written only to be trimmed again.
    while len(fields) > 1 and fields[-1].null_count == len(elements):
        fields.pop()
    array = pc.binary_join_element_wise(*fields, ",", null_handling="replace", null_replacement="null")
    array = pc.binary_join_element_wise("[", array, "]", "")
    if len(fields) > 1 and fields[-1].null_count:
        array = pc.replace_substring_regex(array, _TRAILING_NULLS, "]")
    return pc.binary_join_element_wise(json_string(text(KEY)), array, ":")


# --------------------------------------------------------------------------------------------------
# SQL over the stored jsonb (``e`` a row of ``jsonb_each``)


def sql_fields(cql: CqlType, element: str = "e") -> dict[str, str]:
    """SQL for an element's fields: write time, class, expiry, order, value (JSON and text) and map key."""
    value = f"{element}.value"
    keyed = text_keyed(cql)
    fields = {
        TS: f"({value}->>0)::bigint",
        CLASS: f"coalesce(({value}->>1)::int, 0)",
        EXP: f"({value}->>2)::bigint",
        ORDER: f'{element}.key COLLATE "C"' if keyed else f'({value}->>5) COLLATE "C"',
        MAP_KEY: f"{element}.key" if keyed else f"{value}->>6",
        "json": f"to_jsonb({element}.key)" if keyed and cql.kind == "set" else f"{value}->4",
        "text": f"{element}.key" if keyed and cql.kind == "set" else f"{value}->>4",
    }
    return fields


def rank_sql(element: str) -> str:
    """SQL of an element's reconciliation rank (ts, class, expiry, value bytes), ``element`` a jsonb array."""
    return (
        f"ROW(({element}->>0)::bigint, coalesce(({element}->>1)::int, 0), coalesce(({element}->>2)::bigint, 0), "
        f"coalesce({element}->>3, '') COLLATE \"C\")"
    )
