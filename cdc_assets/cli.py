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


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s %(message)s")
    try:
        return args.run(args)
    except (OSError, ValueError, CommitLogError) as error:
        print(f"cdc-assets: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
