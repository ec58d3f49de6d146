"""Model-based property: whatever the order, replays and duplicates, PostgreSQL converges to Cassandra.

The changes, deliveries and comparison with the model are :mod:`cdc_assets_tests.convergence`'s; here
they go to a real PostgreSQL destination and to TimescaleDB's fallback on plain PostgreSQL.
"""

from __future__ import annotations

import itertools
from contextlib import closing

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc_assets.destinations.postgres.destination import PIECE_CHANGES, PostgresDestination
from cdc_assets.destinations.timescale.destination import TimescaleDestination
from cdc_assets_tests.convergence import COUNTERS, Case, Delivery, assert_converges, cases, deliveries

# Every example writes into schemas of its own in the module's one database.
_prefixes = itertools.count()

SETTINGS = settings(
    max_examples=105, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)


# Loads go to PostgreSQL a few partitions at a time, or whole.
PIECES = st.sampled_from([1, 3, PIECE_CHANGES])


@SETTINGS
@given(case=cases(), pieces=PIECES)
def test_postgres_current_state_equals_the_model_whatever_the_delivery(
    module_pg_dsn: str, case: Case, pieces: int
) -> None:
    with closing(PostgresDestination(module_pg_dsn, f"p{next(_prefixes)}_", piece_changes=pieces)) as destination:
        assert_converges(destination, *case)


@settings(SETTINGS, max_examples=32)
@given(case=cases(), pieces=PIECES)
def test_timescale_fallback_current_state_equals_the_model_whatever_the_delivery(
    module_pg_dsn: str, case: Case, pieces: int
) -> None:
    prefix = f"t{next(_prefixes)}_"
    destination = TimescaleDestination(module_pg_dsn, prefix, allow_plain_postgres=True, piece_changes=pieces)
    with closing(destination):
        assert_converges(destination, *case)


@settings(SETTINGS, max_examples=25)
@given(delivered=deliveries(COUNTERS), pieces=PIECES)
def test_postgres_counters_equal_the_model_whatever_the_leaders_replicas_and_tombstones(
    module_pg_dsn: str, delivered: Delivery, pieces: int
) -> None:
    with closing(PostgresDestination(module_pg_dsn, f"p{next(_prefixes)}_", piece_changes=pieces)) as destination:
        assert_converges(destination, COUNTERS, delivered)


@settings(SETTINGS, max_examples=10)
@given(delivered=deliveries(COUNTERS), pieces=PIECES)
def test_timescale_fallback_counters_equal_the_model_whatever_the_leaders_replicas_and_tombstones(
    module_pg_dsn: str, delivered: Delivery, pieces: int
) -> None:
    prefix = f"t{next(_prefixes)}_"
    destination = TimescaleDestination(module_pg_dsn, prefix, allow_plain_postgres=True, piece_changes=pieces)
    with closing(destination):
        assert_converges(destination, COUNTERS, delivered)
