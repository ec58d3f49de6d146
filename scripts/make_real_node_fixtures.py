"""Write cdc_assets_tests/fixtures/real_node/: segments a real Cassandra 5.0 node wrote, with its SELECT * beside.

For each variant (segment version 7, version 8, LZ4-compressed) a fresh node runs the fixtures' statements
in keyspace ``fixture``; the segments of its ``cdc_raw`` (gzipped: an uncompressed
segment is mostly preallocated zeros) and their ``_cdc.idx`` files are kept, with ``select.json``: the
node's own answer to ``SELECT * FROM fixture.t`` in canonical form, and when it was asked (a row has a TTL).

Run it again only when the workload changes: .venv/bin/python scripts/make_real_node_fixtures.py
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import shutil
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from cdc_assets.cassandra_node import NodeSettings, running_node  # noqa: E402
from cdc_assets.cassandra_schema.driver import load_from_cluster  # noqa: E402
from cdc_assets.commitlog.cdc_dir import list_cdc_segments  # noqa: E402
from cdc_assets_tests.cassandra_oracle import select_all  # noqa: E402
from cdc_assets_tests.test_real_node_fixtures import FIXTURES, KEYSPACE, STATEMENTS, VARIANTS, jsonable  # noqa: E402


def make(label: str, settings: NodeSettings) -> None:
    target = FIXTURES / label
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    with running_node(settings=settings) as node:
        session = node.session()
        session.execute(
            f"CREATE KEYSPACE {KEYSPACE} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
        )
        for statement in STATEMENTS:
            session.execute(statement.replace("{ks}", KEYSPACE))
        node.wait_for_cdc()
        asked_at = dt.datetime.now(dt.UTC)
        table = load_from_cluster(session, [KEYSPACE]).by_name(KEYSPACE, "t")
        rows = select_all(session, table)
        for segment in list_cdc_segments(node.cdc_raw):
            if segment.index is None:
                continue
            with gzip.open(target / (segment.path.name + ".gz"), "wb", compresslevel=9) as packed:
                packed.write(segment.path.read_bytes())
            shutil.copyfile(segment.index_path, target / segment.index_path.name)
    document = {"table": f"{KEYSPACE}.t", "asked_at": asked_at.isoformat(), "rows": jsonable(rows)}
    (target / "select.json").write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{label}: {sum(f.stat().st_size for f in target.iterdir()):,} bytes in {target}")


if __name__ == "__main__":
    for label, settings in VARIANTS.items():
        make(label, settings)
