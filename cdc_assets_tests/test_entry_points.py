"""The entry points a person starts from: the `cdc-assets` command and its subcommands."""

from __future__ import annotations

import pytest

from cdc_assets.cli import main


def test_the_command_lists_what_it_can_do(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for command in ("commitlog", "generate", "run"):
        assert command in out
