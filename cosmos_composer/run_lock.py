"""One run at a time per checkpoint folder: a second launch into it stops at once, naming the first.

Without a lock a second launch autoresumes from the first one's in-progress checkpoint and both write the same
folders. The lock is an exclusive `flock` on `<folder>.lock` beside the folder (so the checkpoint folder holds
checkpoints only), held by global rank 0 for the
life of its process, so the kernel releases it when that process dies, even by `kill -9`. The file names the
holder (host, pid, start time); a lock file left by a dead process is taken over, saying so.

Where the filesystem has no `flock` (Lustre mounted without `-o flock` answers ENOSYS; some NFS setups ENOLCK
or EOPNOTSUPP), the lock is `<folder>.lock.owner`, created exclusively (`O_CREAT | O_EXCL`, atomic on those
filesystems too), naming the holder and renewed every HEARTBEAT_S seconds by a thread of the holder. Nothing
releases it when the holder is killed, so a later run takes it over when its holder is a dead process of the
same host, or, from another host, when its heartbeat is older than STALE_AFTER_S.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Optional

_held: list = []  # open lock files of this process: closing one releases its lock
# flock's answers on filesystems that do not support it (rather than "held by another process").
FLOCK_UNSUPPORTED = (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK)
HEARTBEAT_S = 30.0  # how often the holder of an exclusive-file lock renews it
STALE_AFTER_S = 300.0  # an exclusive-file lock not renewed for this long is a dead run's, whatever its host


class RunFolderInUse(RuntimeError):
    pass


def acquire_run_lock(folder: str | os.PathLike) -> Optional[str]:
    """Lock `folder` for this process; returns a note when a dead holder's lock was taken over, or when the
    filesystem has no flock (saying what the lock falls back to).

    Raises RunFolderInUse, naming the live holder, when another process holds it.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    path = folder.with_name(folder.name + ".lock")
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # another process holds the flock
        handle.seek(0)
        holder = _describe(handle.read())
        handle.close()
        raise RunFolderInUse(
            f"{folder} is in use by another run ({holder}). Wait for it to finish, stop it, or give this run "
            "another run_name (or save_folder)"
        ) from None
    except OSError as error:
        if error.errno not in FLOCK_UNSUPPORTED:
            raise
        handle.close()
        took_over = _acquire_exclusive_file(folder)
        note = (
            f"flock is not supported on {folder.parent} ({os.strerror(error.errno)}): locked with "
            f"{_owner_path(folder).name} instead, renewed every {HEARTBEAT_S:.0f} s (a killed run's lock is taken "
            f"over at once on its host, after {STALE_AFTER_S:.0f} s from another)"
        )
        return f"{note}; {took_over}" if took_over else note
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


def _owner_path(folder: Path) -> Path:
    return folder.with_name(folder.name + ".lock.owner")


def _holder_record() -> dict:
    now = time.time()
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": now, "heartbeat": now}


def _holder_is_alive(holder: dict) -> bool:
    """A holder on this host is alive while its process is; one on another host while it renews its heartbeat."""
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's live process
            return True
        except (KeyError, TypeError, ValueError):
            return False
        return True
    return time.time() - float(holder.get("heartbeat", 0)) < STALE_AFTER_S


def _read_holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError):
        return {}


def _acquire_exclusive_file(folder: Path) -> Optional[str]:
    """The lock without flock (see the module docstring); returns a note when a dead holder's lock was taken."""
    path = _owner_path(folder)
    took_over = None
    for _ in range(2):  # a second try after taking over a dead holder's file
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = _read_holder(path)
            except FileNotFoundError:
                continue  # released meanwhile
            if holder and _holder_is_alive(holder):
                raise RunFolderInUse(
                    f"{folder} is in use by another run ({_describe(json.dumps(holder))}; lock file {path}). Wait for "
                    "it to finish, stop it, or give this run another run_name (or save_folder)"
                ) from None
            took_over = (
                f"took over the lock of {folder} left by a run that is no longer running "
                f"({_describe(json.dumps(holder))})"
            )
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as handle:
            record = _holder_record()
            handle.write(json.dumps(record))
        stop, writing = threading.Event(), threading.Lock()
        renew = threading.Thread(
            target=_renew, args=(path, record, stop, writing), daemon=True, name="run-lock-heartbeat"
        )
        renew.start()
        atexit.register(_release_exclusive_file, path, record, stop, writing)
        return took_over
    raise RunFolderInUse(f"{folder}: could not take the lock file {path}; another run took it at the same moment")


def _is_ours(path: Path, record: dict) -> bool:
    try:
        holder = _read_holder(path)
    except FileNotFoundError:
        return False
    return holder.get("host") == record["host"] and holder.get("pid") == record["pid"]


def _renew(path: Path, record: dict, stop: threading.Event, writing: threading.Lock) -> None:
    """Rewrite the heartbeat every HEARTBEAT_S while the file is still this process's."""
    while not stop.wait(HEARTBEAT_S):
        with writing:  # a release between the check and the rewrite would see its file written back
            if stop.is_set() or not _is_ours(path, record):
                return
            record = {**record, "heartbeat": time.time()}
            staging = path.with_name(path.name + f".{record['pid']}.tmp")
            staging.write_text(json.dumps(record))
            os.replace(staging, path)


def _release_exclusive_file(path: Path, record: dict, stop: threading.Event, writing: threading.Lock) -> None:
    with writing:
        stop.set()
        if _is_ours(path, record):
            path.unlink(missing_ok=True)
