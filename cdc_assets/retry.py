"""Retrying destination loads: exponential backoff with jitter, and loading one batch everywhere.

A :class:`~cdc_assets.destinations.base.TransientDestinationError` (a dropped connection, a timeout, a
serialization failure) is retried; a :class:`~cdc_assets.destinations.base.PermanentDestinationError`
never is: it stops that destination's load of that batch at once. :func:`load_everywhere` keeps the
destinations apart, so one that fails does not keep the others from loading.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import pyarrow as pa

from cdc_assets.cassandra_schema.tables import TableSchema
from cdc_assets.destinations.base import (
    Destination,
    LoadResult,
    PermanentDestinationError,
    TransientDestinationError,
    describe_error,
)

T = TypeVar("T")

logger = logging.getLogger(__name__)


def backoff_delay(retry_number: int, *, base_delay: float, max_delay: float, jitter: float) -> float:
    """Seconds to wait before retry ``retry_number`` (1 for the first retry).

    The ceiling doubles from ``base_delay`` up to ``max_delay``; ``jitter`` (0 to 1) is the share of it
    drawn at random: 1 is "full jitter" (uniform between 0 and the ceiling), which keeps many clients
    that failed together from retrying together; 0 waits exactly the ceiling.
    """
    ceiling = min(max_delay, base_delay * 2 ** (retry_number - 1))
    return ceiling * (1.0 - jitter * random.random())


def retry(
    fn: Callable[[], T],
    *,
    attempts: int = 5,
    base_delay: float = 0.5,
    max_delay: float = 30.0,
    jitter: float = 1.0,
    retry_on: tuple[type[BaseException], ...] = (TransientDestinationError,),
    sleep: Callable[[float], None] = time.sleep,
    log: logging.Logger = logger,
    what: str = "operation",
) -> T:
    """Call ``fn`` until it returns, at most ``attempts`` times; return its result.

    Errors of the ``retry_on`` types are retried after :func:`backoff_delay`; a
    :class:`PermanentDestinationError` and any other error propagate at once. After the last attempt the
    last error is raised. Each retry is logged as a warning naming ``what``, the attempt and the delay.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be between 0 and 1, not {jitter}")
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except PermanentDestinationError:
            raise
        except retry_on as error:
            if attempt == attempts:
                raise
            delay = backoff_delay(attempt, base_delay=base_delay, max_delay=max_delay, jitter=jitter)
            log.warning(
                "%s failed (attempt %d of %d), retrying in %.2fs: %s",
                what,
                attempt,
                attempts,
                delay,
                describe_error(error),
            )
            sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")


def load_everywhere(
    destinations: Iterable[Destination],
    table: TableSchema,
    batch: pa.RecordBatch,
    load_id: str,
    *,
    attempts: int = 5,
    base_delay: float = 0.5,
    max_delay: float = 30.0,
    jitter: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    log: logging.Logger = logger,
) -> dict[str, LoadResult | Exception]:
    """Load one change batch into every destination, each with its own retries.

    Destinations load one after another (chdb must not be written concurrently, DESIGN.md section 7).
    Each attempt ensures the table and then loads the batch; both are idempotent. A destination whose
    load fails for good, permanently or after its last retry, gets its exception as its result and the
    next destination still loads: the caller decides what a partial success means.
    """
    destinations = list(destinations)
    names = [destination.name for destination in destinations]
    if len(set(names)) != len(names):
        raise ValueError(f"destination names must be unique, the results are keyed by them: {names}")
    results: dict[str, LoadResult | Exception] = {}
    for destination in destinations:
        what = f"load {load_id} of {table.qualified_name} into {destination.name}"
        try:
            results[destination.name] = retry(
                _load_attempt(destination, table, batch, load_id),
                attempts=attempts,
                base_delay=base_delay,
                max_delay=max_delay,
                jitter=jitter,
                sleep=sleep,
                log=log,
                what=what,
            )
        # Any failure, not only destination errors: one broken destination must not stop the others.
        except Exception as error:
            log.error("%s failed: %s", what, describe_error(error))
            results[destination.name] = error
    return results


def _load_attempt(
    destination: Destination, table: TableSchema, batch: pa.RecordBatch, load_id: str
) -> Callable[[], LoadResult]:
    def attempt() -> LoadResult:
        destination.ensure_table(table)
        return destination.load(table, batch, load_id=load_id)

    return attempt
