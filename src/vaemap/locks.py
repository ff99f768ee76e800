"""One workflow run at a time on a results directory, whichever checkout runs it.

Snakemake locks its own working directory (``.snakemake/``), so two checkouts
(or two ``--directory`` values) that share one ``results:`` do not see each
other: both run the same jobs, and the one whose outputs vanish under it
deletes what it takes for its own incomplete files. The lock here lives inside
the results directory, ``<results>/.vaemap.lock``: the workflow takes it before
its first job (``onstart``) and gives it back when it ends; a second run
refuses before touching anything, naming the run that holds it. Standard
library only, so building the DAG stays light.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

__all__ = ["LOCK_NAME", "ResultsLocked", "acquire", "release"]

#: The lock file inside a results directory.
LOCK_NAME = ".vaemap.lock"


class ResultsLocked(RuntimeError):
    """Another live run holds the results directory; the message names it."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _me() -> dict[str, object]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "cwd": os.getcwd(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def acquire(results: str | Path) -> Path:
    """Take ``<results>/.vaemap.lock`` for this process (atomically: O_EXCL).

    A lock left by a process that is gone (same host, no such pid) is taken
    over; one held by a live process, or by another host (which cannot be
    checked), raises :class:`ResultsLocked` naming its pid, host and working
    directory and how to clear it. Returns the lock's path.
    """
    results = Path(results)
    results.mkdir(parents=True, exist_ok=True)
    lock = results / LOCK_NAME
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _holder(lock)
            same_host = holder.get("host") == socket.gethostname()
            pid = holder.get("pid")
            if same_host and isinstance(pid, int) and not _alive(pid):
                lock.unlink(missing_ok=True)  # its run is gone: a stale lock
                continue
            raise ResultsLocked(
                f"{lock}: {results} is in use by another vaemap run (pid {pid} on "
                f"{holder.get('host')}, from {holder.get('cwd')}, since "
                f"{holder.get('started')}); wait for it, or delete the lock if that run is "
                f"gone") from None
        with os.fdopen(fd, "w") as fh:
            json.dump(_me(), fh)
        return lock
    raise ResultsLocked(f"{lock}: could not be taken (another run keeps recreating it)")


def _holder(lock: Path) -> dict[str, object]:
    try:
        holder = json.loads(lock.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def release(results: str | Path) -> None:
    """Give the lock back, only if this process holds it (a refused run must not
    remove the lock of the run it was refused by)."""
    lock = Path(results) / LOCK_NAME
    holder = _holder(lock)
    if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        lock.unlink(missing_ok=True)
