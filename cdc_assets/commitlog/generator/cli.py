"""``cdc-assets generate``: write a workload of CDC commit log segments into local ``cdc_raw`` directories."""

from __future__ import annotations

import argparse
import sys

from cdc_assets.commitlog.compression import CODEC_ALIASES
from cdc_assets.commitlog.generator.segment_writer import DEFAULT_SEGMENT_SIZE
from cdc_assets.commitlog.generator.workload import SegmentSummary, Workload, generate, realistic_table

_MIB = 1024 * 1024


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``generate`` command to the ``cdc-assets`` parser's subcommands."""
    parser = subparsers.add_parser(
        "generate",
        help="write generated CDC commit log segments into cdc_raw directories",
        description="Write a workload of Cassandra CDC commit log segments, as real nodes write them.",
    )
    parser.add_argument(
        "--cdc-raw",
        action="append",
        required=True,
        metavar="DIR",
        help="cdc_raw directory; repeat it for several nodes (each gets the partitions it replicates)",
    )
    parser.add_argument(
        "--schema", metavar="FILE.cql", help="CQL file with CREATE TABLE ... WITH ID (default: shop.orders)"
    )
    parser.add_argument("--table", action="append", metavar="KS.TABLE", help="only these tables of --schema")
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--mutations", type=int, metavar="N", help="number of writes (default 10000)")
    amount.add_argument("--seconds", type=float, metavar="S", help="write for this long")
    parser.add_argument(
        "--rate", type=float, default=0.0, metavar="R", help="writes per second (0: as fast as possible)"
    )
    parser.add_argument("--version", type=int, choices=(6, 7, 8), default=7, help="commit log version (default 7)")
    parser.add_argument("--compression", choices=sorted(CODEC_ALIASES), help="compress sections with this codec")
    parser.add_argument("--replicas", type=int, default=1, metavar="N", help="copies of every write (RF)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    parser.add_argument(
        "--segment-size", type=int, default=DEFAULT_SEGMENT_SIZE // _MIB, metavar="MIB", help="segment size in MiB"
    )
    parser.add_argument("--sync-every", type=int, default=1000, metavar="N", help="sync after this many writes")
    parser.add_argument("--sync-period-ms", type=float, default=1000.0, metavar="MS", help="sync after this much time")
    parser.add_argument("--ttl-fraction", type=float, default=0.1, metavar="F", help="share of writes with a TTL")
    parser.add_argument("--no-preallocate", action="store_true", help="grow plain segments as 5.0 direct IO does")
    parser.add_argument("--leave-open", action="store_true", help="sync the last segment but do not complete it")
    parser.set_defaults(run=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    tables = [realistic_table()]
    if args.schema:
        from cdc_assets.cassandra_schema.cql_file import load_cql_file

        registry = load_cql_file(args.schema)
        tables = [t for t in registry if not args.table or t.qualified_name in args.table]
        if not tables:
            raise ValueError(f"{args.schema} defines no table{' named ' + ', '.join(args.table) if args.table else ''}")
    workload = Workload(
        seed=args.seed,
        mutations=10_000 if args.mutations is None and args.seconds is None else args.mutations,
        seconds=args.seconds,
        rate=args.rate,
        ttl_fraction=args.ttl_fraction,
        replicas=args.replicas,
        segment_size=args.segment_size * _MIB,
        version=args.version,
        compression=CODEC_ALIASES[args.compression] if args.compression else None,
        preallocate=not args.no_preallocate,
        sync_every=args.sync_every,
        sync_period_ms=args.sync_period_ms,
        close_last_segment=not args.leave_open,
        keep_changes=False,
    )
    log = generate(tables, workload, args.cdc_raw, on_segment=_print_segment)
    print(f"{log.mutations} mutations, {log.entries} entries in {len(log.segments)} segments", file=sys.stderr)
    return 0


def _print_segment(summary: SegmentSummary) -> None:
    print(summary.describe(), file=sys.stderr, flush=True)
