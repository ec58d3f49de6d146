"""The ``cdc-assets`` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

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


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s %(message)s")
    try:
        return args.run(args)
    except (OSError, ValueError, CommitLogError) as error:
        print(f"cdc-assets: error: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        # The dead-letter store and the replay fail with errors of their own, which never hold a secret.
        from cdc_assets.dead_letters import DeadLetterStoreError
        from cdc_assets.defs.dead_letters import ReplayError

        if isinstance(error, DeadLetterStoreError | ReplayError):
            print(f"cdc-assets: error: {error}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
