"""Telling a live run from one whose worker process died (SIGKILL, OOM, a machine restart).

Dagster's default run launcher cannot check a run worker's health, so a killed run would stay STARTED and
hold its node's stream until ``dagster/max_runtime_seconds`` runs out. A live run therefore tags itself with
its worker (host, pid and the process's start time); the node sensor, on the same host, reports a run whose
worker is gone as failed, and the range is requested again. On another host (a container launcher) it
cannot tell, and Dagster's run monitoring with a maximum runtime does it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

WORKER_TAG = "cdc/worker"


def proc_stat(pid: int) -> tuple[str, str] | None:
    """The process's state and start time in clock ticks since boot (fields 3 and 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after its closing one.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], fields[19]


def worker_tag() -> str:
    """This process as a run worker: ``host:pid:start``."""
    pid = os.getpid()
    stat = proc_stat(pid)
    return f"{socket.gethostname()}:{pid}:{stat[1] if stat else ''}"


def worker_alive(tag: str) -> bool | None:
    """Whether the worker a tag names still runs; None when it ran on another host (this one cannot tell)."""
    parts = tag.rsplit(":", 2)
    if len(parts) != 3:
        return None
    host, pid_text, start = parts
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = proc_stat(pid)
    if stat is None:
        return True
    state, ticks = stat
    # A zombie has exited; a different start time means the pid now belongs to another process.
    return state != "Z" and (not start or ticks == start)
