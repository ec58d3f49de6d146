"""The snapshot asset of each captured table, and the job that snapshots tables and loads them everywhere.

``cassandra/snapshot/<keyspace>/<table>`` reads the rows the table holds now through cassandra-driver, with
every cell's write time and expiry (``cdc_assets.snapshot``), masks them as the stream's batches are masked,
and stages them in the window it is materialised for, as ranges of the pseudo-node ``_snapshot``: one range
per batch of ``snapshot.batch_rows`` rows. Nothing is recorded until every batch is staged; a failed read
leaves nothing staged.

The loads consume those ranges like a node's: the job ``cassandra_snapshot`` (the snapshot assets and every
destination asset of the same tables, tagged with the pseudo-node) loads each destination with the ``_snapshot``
ranges it has not consumed yet and records how far it got under ``_snapshot`` in ``cdc/consumed``, beside the
real nodes' positions, which it never moves. Each staged batch has a load id of its own, so a load repeated
(a retried step, a re-executed run) is skipped by the destination's ledger; a new snapshot is new batches.
Whether the snapshot or the CDC stream reaches a destination first does not matter: both merge cell by cell
on write time.

The snapshot is on demand: materialise the job for the current hour from the UI (Jobs → cassandra_snapshot)
or ``dagster job launch -j cassandra_snapshot``, once capture is on, and again whenever a destination must be
rebuilt from Cassandra itself.
"""

import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg

from cdc_assets.cassandra_schema.tables import TableSchema
from cdc_assets.config import PipelineConfig
from cdc_assets.defs.cassandra.schema import connect_cluster
from cdc_assets.defs.keys import CASSANDRA, CHDB_TAG, NODE_TAG, destination_key, snapshot_key
from cdc_assets.defs.loads import TableLoad, load_ranges
from cdc_assets.defs.partitions import hourly
from cdc_assets.destinations.base import Destination
from cdc_assets.masking import mask_batch
from cdc_assets.snapshot import SNAPSHOT_NODE, SnapshotOptions, SnapshotStats, StagedSnapshot, stage_snapshot

JOB = "cassandra_snapshot"


def snapshot_options(config: PipelineConfig) -> SnapshotOptions:
    settings = config.snapshot
    return SnapshotOptions(
        page_size=settings.page_size,
        consistency=settings.consistency,
        splits=settings.splits,
        batch_rows=settings.batch_rows,
    )


def snapshot_definitions(config: PipelineConfig, tables: Mapping[str, TableSchema]) -> dg.Definitions:
    """The snapshot assets and job; none when no cluster is configured to read them from."""
    cluster_config = config.snapshot_cluster
    if cluster_config is None:
        return dg.Definitions()
    specs = [
        dg.AssetSpec(
            snapshot_key(name),
            group_name=CASSANDRA,
            kinds={CASSANDRA},
            partitions_def=hourly,
            description=(
                f"The rows Cassandra table {name} holds, read with WRITETIME and TTL per cell and staged as change "
                "batches of the pseudo-node _snapshot; the job cassandra_snapshot loads them everywhere."
            ),
        )
        for name in tables
    ]

    @dg.multi_asset(name="snapshot_cassandra", specs=specs, can_subset=True, partitions_def=hourly)
    def snapshot_cassandra(context: dg.AssetExecutionContext) -> Iterator[dg.MaterializeResult]:
        selected = [tables[name] for name in tables if snapshot_key(name) in context.selected_asset_keys]
        cluster = connect_cluster(cluster_config)
        try:
            staged = stage_snapshot(
                config.staging.path,
                context.partition_key,
                cluster.connect(),
                selected,
                snapshot_options(config),
                mask=lambda table, batch: mask_batch(table, batch, config.masking),
                progress=context.log.info,
            )
        finally:
            cluster.shutdown()
        for table in selected:
            name = table.qualified_name
            yield dg.MaterializeResult(asset_key=snapshot_key(name), metadata=snapshot_metadata(staged, name))

    job = dg.define_asset_job(
        JOB,
        selection=dg.AssetSelection.assets(
            *(snapshot_key(name) for name in tables),
            *(destination_key(destination, name) for destination in config.destinations.names for name in tables),
        ),
        partitions_def=hourly,
        tags=snapshot_tags(config),
        description="Snapshot the captured tables from Cassandra and load the snapshot into every destination.",
    )
    return dg.Definitions(assets=[snapshot_cassandra], jobs=[job])


def snapshot_tags(config: PipelineConfig) -> dict[str, str]:
    """The snapshot job's tags: the pseudo-node its loads consume, and chdb's one-at-a-time tag when it is used."""
    tags = {NODE_TAG: SNAPSHOT_NODE}
    clickhouse = config.destinations.clickhouse
    if clickhouse is not None and os.environ.get(clickhouse.dsn_env, "").startswith("chdb://"):
        tags[CHDB_TAG] = "1"
    return tags


def snapshot_metadata(staged: StagedSnapshot, table: str) -> dict[str, Any]:
    """Rows, cells, partitions, pages, duration and where the batches went: what a data engineer asks first."""
    stats: SnapshotStats = staged.stats[table]
    ranges = [r for r in staged.ranges if table in r.tables]
    return {
        "snapshot id": dg.MetadataValue.int(staged.snapshot_id),
        "rows": dg.MetadataValue.int(stats.rows),
        "cells": dg.MetadataValue.int(stats.cells),
        "partitions": dg.MetadataValue.int(stats.partitions),
        "changes": dg.MetadataValue.int(stats.changes),
        "pages": dg.MetadataValue.int(stats.pages),
        "pages fetched again": dg.MetadataValue.int(stats.refetched_pages),
        "duration (s)": dg.MetadataValue.float(round(stats.seconds, 3)),
        "rows per second": dg.MetadataValue.float(round(stats.rows_per_second, 1)),
        "staged ranges": dg.MetadataValue.int(len(ranges)),
        "bytes": dg.MetadataValue.int(sum(r.tables[table].bytes for r in ranges)),
        "load ids": dg.MetadataValue.json([r.load_id(table) for r in ranges]),
        "staged at": dg.MetadataValue.timestamp(ranges[-1].staged_at if ranges else time.time()),
    }


def load_snapshot(
    staged: StagedSnapshot, destinations: Mapping[str, Destination], log: Any = None
) -> dict[str, list[TableLoad]]:
    """Load a staged snapshot into ``destinations`` outside Dagster (``cdc-assets snapshot``), under the load ids
    the job would use, so a later run of the job skips what was loaded here. Per destination, each table's load."""
    outcomes: dict[str, list[TableLoad]] = {}
    for name, destination in destinations.items():
        outcomes[name] = [
            load_ranges(destination, table, staged.ranges, load_id=lambda r, t=table: r.load_id(t), log=log)
            for table in staged.stats
        ]
    return outcomes
