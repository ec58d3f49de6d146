"""The entry points a person starts from: the Dagster code location and ``make run``'s demo."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from cdc_assets.demo import run_demo


def test_the_code_location_loads() -> None:
    from cdc_assets.definitions import defs

    assert isinstance(defs, dg.Definitions)


def test_the_demo_decodes_every_mutation_it_generated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(str(tmp_path / "cdc_raw"), 300) == 0
    out = capsys.readouterr().out
    assert "generated 300 mutations of shop.orders" in out
    assert "read 300 mutations" in out
    assert '"_cdc_kind"' in out
