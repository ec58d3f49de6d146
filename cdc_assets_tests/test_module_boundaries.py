"""Which parts of the package may lean on which: checked on what a fresh interpreter actually imports."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _imported(module: str) -> set[str]:
    """The ``cdc_assets`` modules a fresh interpreter has loaded after importing ``module``."""
    code = f"import sys, {module}; print('\\n'.join(m for m in sys.modules if m.startswith('cdc_assets.')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(result.stdout.split())


def test_value_rules_import_neither_the_reader_nor_a_destination() -> None:
    loaded = _imported("cdc_assets.destinations.cassandra_values")
    assert not {m for m in loaded if m.startswith("cdc_assets.commitlog")}
    destinations = (
        "cdc_assets.destinations.postgres",
        "cdc_assets.destinations.clickhouse",
        "cdc_assets.destinations.timescale",
    )
    assert not {m for m in loaded if m.startswith(destinations)}


@pytest.mark.parametrize("module", ["cdc_assets.commitlog.reader", "cdc_assets.commitlog.generator"])
def test_the_reader_and_generator_import_no_destination(module: str) -> None:
    assert not {m for m in _imported(module) if m.startswith("cdc_assets.destinations")}
