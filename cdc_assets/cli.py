"""The ``cdc-assets`` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from cdc_assets.commitlog.errors import CommitLogError

KEYSTORE_PASSWORD_ENV = "CDC_KEYSTORE_PASSWORD"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdc-assets", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and warnings to stderr")
    commands = parser.add_subparsers(dest="command", required=True)

    commitlog = commands.add_parser("commitlog", help="read Cassandra commit log segments")
    commitlog_commands = commitlog.add_subparsers(dest="commitlog_command", required=True)
    dump = commitlog_commands.add_parser(
        "dump", help="print one JSON object per changed row", description="Print one JSON object per change."
    )
    dump.add_argument("targets", nargs="+", metavar="SEGMENT_OR_DIR", help="segment files or cdc_raw directories")
    dump.add_argument("--schema", required=True, metavar="FILE.cql", help="CQL file with CREATE TABLE ... WITH ID")
    dump.add_argument("--keystore", metavar="PATH", help="JCEKS keystore for encrypted segments")
    dump.add_argument(
        "--keystore-password",
        metavar="P",
        help=f"keystore (and key) password; prefer the {KEYSTORE_PASSWORD_ENV} environment variable",
    )
    dump.add_argument("--key-alias", metavar="A", help="use only this key alias from the keystore")
    dump.add_argument("--from", dest="start", metavar="SEGMENT_ID:OFFSET", help="resume strictly after this position")
    dump.set_defaults(run=_run_dump)

    run = commands.add_parser(
        "run",
        help="start PostgreSQL, a generated workload and dagster dev until Ctrl-C (make run)",
        description="The whole pipeline on this machine: a private PostgreSQL, the in-process ClickHouse engine, "
        "a workload generator writing CDC segments, and dagster dev. Ctrl-C stops everything.",
    )
    run.add_argument("--port", type=int, default=3000, help="port of the Dagster webserver (default %(default)s)")
    run.add_argument("--home", default="var", metavar="DIR", help="directory of all its state, kept between runs")
    run.add_argument("--rate", type=float, default=2000.0, metavar="R", help="generated writes per second")
    run.set_defaults(run=_run_run)

    letters = commands.add_parser(
        "dead-letters",
        help="list and replay dead letters (changes set aside, with the reason)",
        description="The dead-letter store of the pipeline configuration ($CDC_ASSETS_CONFIG or ./cdc_assets.yaml).",
    )
    letters_commands = letters.add_subparsers(dest="dead_letters_command", required=True)
    listing = letters_commands.add_parser(
        "list", help="print the pending letters", description="Print the pending letters, oldest first."
    )
    listing.add_argument("--all", action="store_true", help="replayed letters too, with their outcome")
    replay = letters_commands.add_parser(
        "replay",
        help="load the pending letters into the destinations",
        description="Decode reader letters again with the current schema, mask them and load them into every "
        "destination; load destination letters into their destination again. A letter that still fails stays "
        "pending with the new reason (exit status 1). With the in-process ClickHouse engine (chdb://), run the "
        "job replay_dead_letters from the Dagster UI instead while the pipeline runs: one process per engine.",
    )
    replay.add_argument("--dry-run", action="store_true", help="decode and check, load and mark nothing")
    for sub in (listing, replay):
        sub.add_argument("--config", metavar="FILE", help="pipeline configuration (default: $CDC_ASSETS_CONFIG)")
        sub.add_argument("--table", metavar="KEYSPACE.TABLE", help="only the letters of this table")
        sub.add_argument("--stage", metavar="STAGE", help="only the letters of this stage (reader or a destination)")
    listing.set_defaults(run=_run_dead_letters_list)
    replay.set_defaults(run=_run_dead_letters_replay)

    cassandra = commands.add_parser(
        "cassandra",
        help="start a real Cassandra 5.0 node with CDC on until Ctrl-C (make cassandra)",
        description="A single Cassandra 5.0 node on the loopback, its jars fetched once from Maven Central (needs "
        "Java 17 and Maven). Prints its contact point and cdc_raw directory; Ctrl-C or SIGTERM stops it.",
    )
    cassandra.add_argument("--home", default="var/cassandra", metavar="DIR", help="its state, kept between runs")
    cassandra.add_argument(
        "--storage-compatibility-mode",
        choices=["CASSANDRA_4", "NONE"],
        default="CASSANDRA_4",
        help="CASSANDRA_4 writes version 7 segments, NONE version 8 (default %(default)s)",
    )
    cassandra.add_argument(
        "--commitlog-compression", choices=["LZ4Compressor", "ZstdCompressor"], help="compress the commit log"
    )
    cassandra.add_argument(
        "--encryption", action="store_true", help="encrypt the commit log (a JCEKS keystore is made under --home)"
    )
    cassandra.set_defaults(run=_run_cassandra)

    snapshot = commands.add_parser(
        "snapshot",
        help="read the rows tables hold now (WRITETIME/TTL per cell) and load them into the destinations",
        description="Snapshot tables that held rows before capture started: read them through cassandra-driver, "
        "stage the change batches as the pseudo-node _snapshot in the pipeline's staging (masked as configured) and "
        "load them into every destination, under the load ids the Dagster job cassandra_snapshot uses, so neither "
        "ever loads a batch twice. With --out, write one Arrow IPC file per table instead, without a configuration. "
        "With the in-process ClickHouse engine (chdb://), run the job cassandra_snapshot from the Dagster UI "
        "instead while the pipeline runs: one process per engine.",
    )
    snapshot.add_argument(
        "tables", nargs="*", metavar="KEYSPACE.TABLE", help="tables to snapshot (default: every captured table)"
    )
    snapshot.add_argument("--config", metavar="FILE", help="pipeline configuration (default: $CDC_ASSETS_CONFIG)")
    snapshot.add_argument(
        "--contact-points", metavar="HOST[,HOST]", help="default: the configuration's snapshot or schema cluster"
    )
    snapshot.add_argument("--port", type=int, default=None, help="native protocol port (default 9042)")
    snapshot.add_argument("--out", metavar="DIR", help="write <DIR>/<keyspace.table>.arrow files instead of loading")
    snapshot.add_argument("--no-load", action="store_true", help="stage only: the job cassandra_snapshot loads it")
    snapshot.add_argument("--page-size", type=int, metavar="N", help="rows per page (default 1000)")
    snapshot.add_argument("--splits", type=int, metavar="N", help="token ranges read in turn (default 16)")
    snapshot.add_argument("--batch-rows", type=int, metavar="N", help="rows per change batch (default 20000)")
    snapshot.add_argument("--consistency", metavar="LEVEL", help="read consistency (default LOCAL_QUORUM)")
    snapshot.set_defaults(run=_run_snapshot)

    from cdc_assets.commitlog.generator.cli import register

    register(commands)
    return parser


def _run_dump(args: argparse.Namespace) -> int:
    from cdc_assets.cassandra_schema.cql_file import load_cql_file
    from cdc_assets.commitlog.dump import dump
    from cdc_assets.commitlog.encryption import EncryptionKeys
    from cdc_assets.commitlog.reader import CommitLogReader, Position

    registry = load_cql_file(args.schema)
    keys = None
    if args.keystore:
        password = args.keystore_password or os.environ.get(KEYSTORE_PASSWORD_ENV)
        if password is None:
            raise ValueError(f"--keystore needs --keystore-password or {KEYSTORE_PASSWORD_ENV}")
        keys = EncryptionKeys.from_keystore(args.keystore, password)
        if args.key_alias:
            keys = EncryptionKeys({args.key_alias: keys.key(args.key_alias)})
    start = Position.parse(args.start) if args.start else None
    return dump(CommitLogReader(registry, keys=keys), args.targets, after=start)


def _run_run(args: argparse.Namespace) -> int:
    from cdc_assets.devstack import run

    return run(args.home, args.port, args.rate)


def _run_cassandra(args: argparse.Namespace) -> int:
    from cdc_assets.cassandra_node import CassandraNodeError, NodeSettings, serve

    settings = NodeSettings(
        storage_compatibility_mode=args.storage_compatibility_mode,
        commitlog_compression=args.commitlog_compression,
        encryption=args.encryption,
    )
    try:
        return serve(args.home, settings)
    except CassandraNodeError as error:
        print(f"cdc-assets: error: {error}", file=sys.stderr)
        return 1


def _run_dead_letters_list(args: argparse.Namespace) -> int:
    from cdc_assets.config import load_config
    from cdc_assets.dead_letters import open_dead_letters
    from cdc_assets.defs.dead_letters import secret_redactor

    config = load_config(args.config)
    redact = secret_redactor(config)
    store = open_dead_letters(config.dead_letters)
    shown = pending = 0
    try:
        chosen = store.letters if args.all else store.pending
        for stored in chosen(table=args.table, stage=args.stage):
            letter = stored.letter
            state = (
                f"pending, {stored.attempts} failed replays"
                if stored.pending
                else f"replayed {stored.replayed_at:%Y-%m-%dT%H:%M:%S%z}: {stored.replay_outcome}"
            )
            print(
                redact(
                    f"#{stored.id}\t{letter.recorded_at}\t{letter.stage}\t{letter.table or 'unknown table'}\t"
                    f"{letter.segment}:{letter.position}\t{state}\t{letter.reason}"
                )
            )
            shown += 1
            pending += stored.pending
    finally:
        store.close()
    print(f"{shown:,} letters shown, {pending:,} pending", file=sys.stderr)
    return 0


def _run_dead_letters_replay(args: argparse.Namespace) -> int:
    from cdc_assets.config import load_config
    from cdc_assets.defs.dead_letters import replay_dead_letters, secret_redactor

    config = load_config(args.config)
    redact = secret_redactor(config)
    report = replay_dead_letters(config, table=args.table, stage=args.stage, dry_run=args.dry_run)
    for letter_id, reason in sorted(report.failed.items()):
        print(redact(f"#{letter_id}\tstill pending\t{reason}"))
    print(redact(report.summary_line()))
    return 1 if report.failed else 0


def _run_snapshot(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from cdc_assets.config import ClusterSchema
    from cdc_assets.defs.cassandra.schema import connect_cluster
    from cdc_assets.snapshot import SnapshotOptions

    config = None if args.out else _load_config(args.config)
    cluster_config = config.snapshot_cluster if config is not None else None
    if args.contact_points:
        port = args.port or (cluster_config.port if cluster_config else 9042)
        cluster_config = ClusterSchema(contact_points=args.contact_points.split(","), port=port)
    if cluster_config is None:
        raise ValueError(
            "no cluster to read: give --contact-points, or snapshot.cluster or schema.cluster in the configuration"
        )
    options = SnapshotOptions()
    if config is not None:
        from cdc_assets.defs.cassandra.snapshot import snapshot_options

        options = snapshot_options(config)
    chosen = {name: getattr(args, name) for name in ("page_size", "splits", "batch_rows", "consistency")}
    options = replace(options, **{name: value for name, value in chosen.items() if value is not None})
    cluster = connect_cluster(cluster_config)
    try:
        session = cluster.connect()
        if args.out:
            return _snapshot_to_files(session, args.tables, options, args.out)
        assert config is not None
        return _snapshot_to_destinations(config, session, args.tables, options, load=not args.no_load)
    finally:
        cluster.shutdown()


def _load_config(path: str | None) -> Any:
    from cdc_assets.config import load_config

    return load_config(path)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _snapshot_to_files(session: Any, names: Sequence[str], options: Any, out: str) -> int:
    import pyarrow as pa

    from cdc_assets.cassandra_schema.driver import load_from_cluster
    from cdc_assets.change_batch import change_batch_schema
    from cdc_assets.snapshot import TableSnapshot

    if not names:
        raise ValueError("--out needs the tables to snapshot (KEYSPACE.TABLE ...)")
    registry = load_from_cluster(session, sorted({name.split(".", 1)[0] for name in names}))
    os.makedirs(out, exist_ok=True)
    for name in names:
        table = registry.by_name(*name.split(".", 1)) if "." in name else None
        if table is None:
            raise ValueError(f"{name}: no such table in the cluster (give KEYSPACE.TABLE)")
        reader = TableSnapshot(session, table, options, progress=_progress)
        path = os.path.join(out, f"{name}.arrow")
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, change_batch_schema(table)) as writer:
            for batch in reader.batches():
                writer.write_batch(batch)
        print(_snapshot_line(reader.stats, path))
    return 0


def _snapshot_to_destinations(config: Any, session: Any, names: Sequence[str], options: Any, *, load: bool) -> int:
    from cdc_assets.defs.cassandra.schema import captured_tables, load_registry
    from cdc_assets.defs.cassandra.snapshot import load_snapshot
    from cdc_assets.defs.dead_letters import open_destinations
    from cdc_assets.defs.partitions import current_partition
    from cdc_assets.masking import mask_batch
    from cdc_assets.snapshot import stage_snapshot

    captured = captured_tables(config, load_registry(config.schema))
    unknown = [name for name in names if name not in captured]
    if unknown:
        raise ValueError(f"not captured tables: {', '.join(unknown)} (captured: {', '.join(captured)})")
    tables = [captured[name] for name in names or captured]
    staged = stage_snapshot(
        config.staging.path,
        current_partition(),
        session,
        tables,
        options,
        mask=lambda table, batch: mask_batch(table, batch, config.masking),
        progress=_progress,
    )
    for name, stats in staged.stats.items():
        print(_snapshot_line(stats, f"{len([r for r in staged.ranges if name in r.tables])} staged range(s)"))
    if not load:
        return 0
    destinations = open_destinations(config)
    failed = 0
    try:
        for destination, outcomes in load_snapshot(staged, destinations).items():
            for outcome in outcomes:
                if outcome.error is not None:
                    failed += 1
                    print(f"{destination}\t{outcome.table}\tfailed at {outcome.failed_load_id}: {outcome.error}")
                else:
                    print(
                        f"{destination}\t{outcome.table}\tloaded {outcome.changes:,} changes in {outcome.seconds:.2f} s"
                    )
    finally:
        for destination in destinations.values():
            destination.close()
    return 1 if failed else 0


def _snapshot_line(stats: Any, where: str) -> str:
    return (
        f"{stats.table}\t{stats.rows:,} rows\t{stats.partitions:,} partitions\t{stats.cells:,} cells\t"
        f"{stats.pages:,} pages\t{stats.seconds:.2f} s\t{where}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s %(message)s")
    try:
        return args.run(args)
    except (OSError, ValueError, CommitLogError) as error:
        print(f"cdc-assets: error: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        # The dead-letter store, the replay and the snapshot fail with errors of their own, which never hold a
        # secret.
        from cdc_assets.dead_letters import DeadLetterStoreError
        from cdc_assets.defs.dead_letters import ReplayError
        from cdc_assets.snapshot import SnapshotError

        if isinstance(error, DeadLetterStoreError | ReplayError | SnapshotError):
            print(f"cdc-assets: error: {error}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
