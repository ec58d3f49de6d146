"""Real Cassandra 5.0 nodes for the tests marked ``cassandra``: at most one per distinct settings per session.

``cassandra_nodes(settings)`` starts a node with those :class:`NodeSettings` the first time it is asked for
them and hands the same node back afterwards; every node stops at the end of the session. Tests share a
node, so each creates keyspaces of its own and reads back, within the test, what it wrote: a pipeline
run against a node deletes the segments it consumed from ``cdc_raw``, as a CDC consumer must.
``node.wait_for_cdc()`` returns once everything written before it is durable in ``cdc_raw``. Without
Java 17 or Maven the fixture fails with the reason: these tests never skip.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cdc_assets.cassandra_node import (
    DEFAULT_SETTINGS,
    CassandraNode,
    CassandraNodeError,
    NodeSettings,
    check_prerequisites,
    start_node,
    stop_nodes,
)

NodeFactory = Callable[[NodeSettings], CassandraNode]


def _progress(message: str) -> None:
    # The first fetch on a clean machine takes a while: say so even under pytest's capture.
    print(f"cassandra: {message}", file=sys.__stderr__, flush=True)


@pytest.fixture(scope="session")
def cassandra_nodes() -> Iterator[NodeFactory]:
    """A function from settings to a running node, started once per distinct settings in this session."""
    try:
        check_prerequisites()
    except CassandraNodeError as error:
        pytest.fail(f"the cassandra tests need a Cassandra node: {error}")
    nodes: dict[NodeSettings, CassandraNode] = {}
    with tempfile.TemporaryDirectory(prefix="cdc-cassandra-") as scratch:

        def node(settings: NodeSettings = DEFAULT_SETTINGS) -> CassandraNode:
            if settings not in nodes:
                try:
                    root = Path(scratch) / f"{len(nodes)}-{settings.label}"
                    nodes[settings] = start_node(root, settings, progress=_progress)
                except CassandraNodeError as error:
                    pytest.fail(str(error))
            return nodes[settings]

        try:
            yield node
        finally:
            stop_nodes(nodes.values())


@pytest.fixture(scope="session")
def cassandra_node(cassandra_nodes: NodeFactory) -> CassandraNode:
    """The node with the default settings (segments of version 7, no compression, no encryption)."""
    return cassandra_nodes(DEFAULT_SETTINGS)
