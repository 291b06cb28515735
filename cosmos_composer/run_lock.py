"""One run at a time per checkpoint folder: a second launch into it stops at once, naming the first.

Without a lock a second launch autoresumes from the first one's in-progress checkpoint and both write the same
folders. The lock is an exclusive `flock` on `<folder>.lock` beside the folder (so the checkpoint folder holds
checkpoints only), held by global rank 0 for the
life of its process, so the kernel releases it when that process dies, even by `kill -9`. The file names the
holder (host, pid, start time); a lock file left by a dead process is taken over, saying so.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Optional

_held: list = []  # open lock files of this process: closing one releases its lock


class RunFolderInUse(RuntimeError):
    pass


def acquire_run_lock(folder: str | os.PathLike) -> Optional[str]:
    """Lock `folder` for this process; returns a note when a dead holder's lock was taken over.

    Raises RunFolderInUse, naming the live holder, when another process holds it.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    path = folder.with_name(folder.name + ".lock")
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = _describe(handle.read())
        handle.close()
        raise RunFolderInUse(
            f"{folder} is in use by another run ({holder}). Wait for it to finish, stop it, or give this run "
            "another run_name (or save_folder)"
        ) from None
    handle.seek(0)
    previous = handle.read().strip()
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}))
    handle.flush()
    _held.append(handle)
    atexit.register(_release, handle)
    if previous:
        return f"took over the lock of {folder} left by a run that is no longer running ({_describe(previous)})"
    return None


def _release(handle) -> None:
    """A clean exit empties the file, so that only a killed run leaves a holder behind."""
    if not handle.closed:
        handle.seek(0)
        handle.truncate()
        handle.close()


def _describe(text: str) -> str:
    try:
        holder = json.loads(text)
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"]))
        return f"host {holder['host']}, pid {holder['pid']}, started {started}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
