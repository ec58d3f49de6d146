"""Model-based property: whatever the order, replays and duplicates, ClickHouse converges to Cassandra.

The changes, deliveries and comparison with the model are :mod:`cdc_assets_tests.convergence`'s; here
they go to a ClickHouse destination on the real engine (chdb), a fresh database for each example.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from hypothesis import HealthCheck, given, settings

from cdc_assets.destinations.clickhouse.destination import ClickHouseDestination
from cdc_assets_tests.convergence import COUNTERS, Case, Delivery, assert_converges, cases, deliveries


# ClickHouse drops static cells that arrive in a row change (a shape the commit log reader never emits).
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example])
@given(case=cases())
def test_clickhouse_current_state_equals_the_model_whatever_the_delivery(
    clickhouse_factory: Callable[[Path | None], ClickHouseDestination], case: Case
) -> None:
    with closing(clickhouse_factory(None)) as destination:
        assert_converges(destination, *case)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example])
@given(delivered=deliveries(COUNTERS))
def test_clickhouse_counters_equal_the_model_whatever_the_leaders_replicas_and_tombstones(
    clickhouse_factory: Callable[[Path | None], ClickHouseDestination], delivered: Delivery
) -> None:
    with closing(clickhouse_factory(None)) as destination:
        assert_converges(destination, COUNTERS, delivered)
