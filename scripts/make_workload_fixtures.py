"""Write cdc_assets_tests/fixtures/real_node/workload-<variant>/: a whole-surface workload a real node logged.

A fresh Cassandra 5.0 node runs ``cassandra_workloads`` (a smaller run than the ``cassandra`` tests'); the
segments of its ``cdc_raw`` are kept gzipped with their ``_cdc.idx`` files, and ``select.json`` holds the
node's ``SELECT *`` of every table twice, in canonical form: right after the workload (TTLs running) and
once every TTL is over, each with the second it was answered at.

Run it again only when the workload changes: .venv/bin/python scripts/make_workload_fixtures.py
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from cdc_assets.cassandra_node import NodeSettings, running_node  # noqa: E402
from cdc_assets.cassandra_schema.driver import load_from_cluster  # noqa: E402
from cdc_assets.commitlog.cdc_dir import list_cdc_segments  # noqa: E402
from cdc_assets_tests.cassandra_workloads import run_workload  # noqa: E402
from cdc_assets_tests.test_cassandra_oracle import select_everything  # noqa: E402
from cdc_assets_tests.test_real_node_fixtures import FIXTURES, jsonable  # noqa: E402
from cdc_assets_tests.test_real_node_workload import KEYSPACE, SEED, STATEMENTS, VARIANTS  # noqa: E402


def make(label: str, settings: NodeSettings) -> None:
    target = FIXTURES / f"workload-{label}"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    with running_node(settings=settings) as node:
        session = node.session()
        workload = run_workload(session, KEYSPACE, seed=SEED, statements=STATEMENTS)
        registry = load_from_cluster(session, [KEYSPACE])
        tables = {name: registry.by_name(*name.split(".")) for name in workload.qualified_tables}
        before = select_everything(session, tables)
        node.wait_for_cdc()
        for segment in list_cdc_segments(node.cdc_raw):
            if segment.index is None:
                continue
            with gzip.open(target / (segment.path.name + ".gz"), "wb", compresslevel=9) as packed:
                packed.write(segment.path.read_bytes())
            shutil.copyfile(segment.index_path, target / segment.index_path.name)
        time.sleep(max(0.0, workload.expired_by - time.time()))
        after = select_everything(session, tables)
    answers = [{"asked_at": oracle.now.isoformat(), "rows": jsonable(oracle.rows)} for oracle in (before, after)]
    document = {"counts": dict(sorted(workload.counts.items())), "answers": answers}
    (target / "select.json").write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{label}: {sum(f.stat().st_size for f in target.iterdir()):,} bytes in {target}")


if __name__ == "__main__":
    for label, settings in VARIANTS.items():
        make(label, settings)
