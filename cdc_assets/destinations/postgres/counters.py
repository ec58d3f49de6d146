"""Counter shards on their way to PostgreSQL: one Arrow row per shard, reduced, then jsonb.

A counter column is stored as one jsonb object per row: counter id (hex) → ``[clock, count, ts]``, the
winning shard of each leader (``cassandra_model.py`` states the rules: the highest clock, then the greater count, then
the later write time ``ts``, by which deletions hide the shard). Beside it, ``<c>__deleted_at`` holds the
latest counter tombstone's write time: once there is one, the counter has no value, whatever the shards.
The presented value is the sum of the counts of the shards no deletion hides, wrapped to 64 bits.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cdc_assets.destinations.postgres.keys import hex_text

SOURCE, KEY, CLOCK, COUNT, TS = "source", "key", "clock", "count", "ts"
SCHEMA = pa.schema(
    [(SOURCE, pa.int64()), (KEY, pa.string()), (CLOCK, pa.int64()), (COUNT, pa.int64()), (TS, pa.int64())]
)
_INT64_SPAN = 1 << 64


def shard_rows(cells: pa.Array) -> pa.Table:
    """A counter column's shards, one row each (``SOURCE``: the change's index in ``cells``); a tombstone
    holds none."""
    values = pc.struct_field(cells, "value")
    present = pc.indices_nonzero(pc.is_valid(values))
    lists = values.take(present)
    shards = pc.list_flatten(lists)
    owners = present.take(pc.list_parent_indices(lists))
    return pa.table(
        {
            SOURCE: owners.cast(pa.int64()),
            KEY: hex_text(pc.struct_field(shards, "id").cast(pa.binary())),
            CLOCK: pc.struct_field(shards, "clock"),
            COUNT: pc.struct_field(shards, "count"),
            TS: pc.struct_field(cells, "writetime").take(owners),
        },
        schema=SCHEMA,
    )


def reduce_and_render(shards: pa.Table, owners: np.ndarray, count: int) -> pa.Array:
    """Per owner (0 … count-1; -1: no owner), the jsonb text of its winning shard per counter id (null if none)."""
    keep = np.nonzero(owners >= 0)[0]
    shards, owners = shards.take(pa.array(keep, pa.int64())), owners[keep]
    identity = pc.dictionary_encode(shards.column(KEY).combine_chunks()).indices.to_numpy().astype(np.int64)
    groups = owners.astype(np.int64) * (int(identity.max(initial=0)) + 1) + identity
    # The winner of a group sorts last: by clock, then count, then write time.
    ranks = [shards.column(name).to_numpy() for name in (TS, COUNT, CLOCK)]
    order = np.lexsort((*ranks, groups))
    last = np.r_[groups[order][1:] != groups[order][:-1], True] if len(order) else np.zeros(0, dtype=bool)
    winners = np.sort(order[last])
    kept, kept_owners = shards.take(pa.array(winners, pa.int64())), owners[winners]
    ids, clocks, counts, times = (kept.column(name).combine_chunks().cast(pa.string()) for name in SCHEMA.names[1:])
    texts = pc.binary_join_element_wise('"', ids, '":[', clocks, ",", counts, ",", times, "]", "")
    texts = texts.take(pa.array(np.argsort(kept_owners, kind="stable"), pa.int64()))
    sizes = np.bincount(kept_owners, minlength=count)
    offsets = pa.array(np.r_[0, np.cumsum(sizes)].astype(np.int32))
    objects = pc.binary_join_element_wise("{", pc.binary_join(pa.ListArray.from_arrays(offsets, texts), ","), "}", "")
    return pc.if_else(pa.array(sizes > 0), objects, pa.scalar(None, pa.string()))


def merge_sql(schema: str) -> list[str]:
    """The SQL function merging two stored shard objects (``merge_shards``); ``schema`` is the quoted helper
    schema."""
    rank = "ROW(({0}->>0)::bigint, ({0}->>1)::bigint, ({0}->>2)::bigint)"
    return [
        f"CREATE OR REPLACE FUNCTION {schema}.merge_shards(old jsonb, new jsonb) RETURNS jsonb LANGUAGE sql "
        "IMMUTABLE PARALLEL SAFE AS $$ SELECT CASE WHEN old IS NULL THEN new WHEN new IS NULL THEN old ELSE "
        "(SELECT jsonb_object_agg(coalesce(o.key, n.key), CASE WHEN n.value IS NULL THEN o.value "
        f"WHEN o.value IS NULL THEN n.value WHEN {rank.format('n.value')} > {rank.format('o.value')} "
        "THEN n.value ELSE o.value END) FROM jsonb_each(old) o FULL JOIN jsonb_each(new) n ON o.key = n.key) END $$",
    ]


def value_sql(shards: str, tombstone: str, floor: str) -> str:
    """SQL of a counter's presented value: the 64-bit wrapped sum of the counts of the shards written after
    ``floor``; null when none is, or when a counter tombstone came."""
    total = "sum((e.value->>1)::numeric)"
    span, half = _INT64_SPAN, _INT64_SPAN // 2
    wrapped = f"(mod(mod({total} + {half}, {span}) + {span}, {span}) - {half})::bigint"
    return (
        f"(CASE WHEN {tombstone} IS NULL THEN (SELECT {wrapped} FROM jsonb_each({shards}) e "
        f"WHERE (e.value->>2)::bigint > {floor}) END)"
    )
