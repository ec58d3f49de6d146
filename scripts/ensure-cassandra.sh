#!/usr/bin/env bash
# The tests marked `cassandra` run a real Cassandra 5.0 node: they need Java 17, and Maven for the one-time
# fetch of its jars from Maven Central (into $CDC_CASSANDRA_CACHE, default ~/.cache/cdc_assets). Say loudly
# what is missing before pytest runs (those tests then fail with the same reason, they never skip); when
# all is there, fetch the jars now, with a progress line, so the first test does not sit silent.
set -euo pipefail
python="${1:-.venv/bin/python}"
"$python" - <<'PY'
import sys, time
from cdc_assets.cassandra_node import CassandraNodeError, check_prerequisites, fetch_cassandra

try:
    check_prerequisites()
    started = time.monotonic()
    lib = fetch_cassandra(progress=lambda message: print(f"cassandra: {message}", file=sys.stderr, flush=True))
except CassandraNodeError as error:
    print(f"######## the cassandra tests will FAIL: {error}", file=sys.stderr)
else:
    print(f"cassandra: jars ready in {lib} ({time.monotonic() - started:.1f}s)", file=sys.stderr)
PY
