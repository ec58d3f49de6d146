"""The real ``dagster-daemon`` in a process group of its own, for the tests that drive the pipeline through it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

DAEMON = Path(sys.executable).parent / "dagster-daemon"


def start_daemon(cwd: Path, *location: str, env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """``dagster-daemon run`` with ``location`` (e.g. ``-m cdc_assets.definitions``), logging to cwd/daemon.log."""
    return subprocess.Popen(
        [str(DAEMON), "run", *location],
        cwd=cwd,
        env=dict(os.environ if env is None else env),
        stdout=(cwd / "daemon.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_daemon(daemon: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 60) -> None:
    """Send ``sig`` to the daemon's process group; SIGKILL it if it has not stopped within ``timeout``."""
    os.killpg(daemon.pid, sig)
    try:
        daemon.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait()
