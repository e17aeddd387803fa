"""Who runs a sweep, and whether it still does: the owner stamp a record carries and the reading of it.

A record says 'running' from its first write; a process killed (SIGKILL, a power cut) or a thread
that died where even the last record could not be written (a full disk) never says otherwise. So the
driver stamps the record with its host, process id and that process's start time, and rewrites it
at least every HEARTBEAT_S seconds; a reader calls a 'running' record interrupted when its process
is gone (same host: the pid is not alive, or is another process that reused it) or when its
heartbeat is older than STALE_S (any host, and a live server whose sweep thread ended unrecorded).
"""
from __future__ import annotations

import datetime
import os
import socket
import time
from typing import Any

HEARTBEAT_S = 10.0  # how often a running sweep rewrites its record, even inside one long point
STALE_S = 60.0  # a heartbeat older than this means nobody runs the sweep (6 missed beats: a loaded machine)


def process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc/PID/stat field 22); None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read(4096).decode("ascii", "replace")
        return int(stat.rpartition(")")[2].split()[19])  # the name (field 2) may hold spaces and ')'
    except (OSError, ValueError, IndexError):
        return None


def stamp() -> dict[str, Any]:
    """This process as a record's owner: host, pid and the pid's start time (so a reused pid is not taken for it)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "process_start": process_start(os.getpid())}


def _alive(pid: int, started: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by another user
        pass
    return started is None or process_start(pid) in (started, None)


def record_status(metrics: dict[str, Any], now: float | None = None) -> str:
    """A sweep record's status as it is now: 'running' only while its owner lives and beats, else 'interrupted: why'."""
    status = metrics["status"]
    if status != "running":
        return status
    owner = metrics.get("owner")
    if isinstance(owner, dict) and owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int) \
            and not _alive(owner["pid"], owner.get("process_start")):
        return f"interrupted: its process (pid {owner['pid']}) ended without finishing"
    beat = metrics["updated"]
    if (now if now is not None else time.time()) - beat > STALE_S:
        when = datetime.datetime.fromtimestamp(beat).strftime("%Y-%m-%d %H:%M:%S")
        return f"interrupted: no sign of life since {when}"
    return status
