"""Release the shared memory a killed run left behind for *our* dataset folder, and nothing else.

Streaming registers each dataset's `local` folder in POSIX shared memory. A run killed with -9 leaves
those segments behind, and a resumed run with a `remote` then refuses the folder as "reused".
`streaming.base.util.clean_stale_shared_memory()` would fix that by unlinking every Streaming segment
on the machine, which breaks any other job running there; this only touches the segments whose
registered folders include ours. Streaming 0.13.0's segment layout is pinned in pyproject.toml.
"""

from __future__ import annotations

import _posixshmem
import os
from tempfile import gettempdir

from streaming.base.constant import BARRIER_FILELOCK, CACHE_FILELOCK, LOCALS, SHM_TO_CLEAN
from streaming.base.shared.memory import SharedMemory
from streaming.base.shared.prefix import _each_prefix_int, _get_path, _unpack_locals


def _registered_locals(prefix_int: int) -> list[str] | None:
    """The folders registered under `prefix_int`, or None when that prefix is free."""
    # Streaming's wrapper attaches without registering with Python's resource tracker, which would
    # otherwise unlink the segment when this process exits.
    try:
        handle = SharedMemory(_get_path(prefix_int, LOCALS), create=False, auto_cleanup=False)
    except FileNotFoundError:
        return None
    try:
        folders, _ = _unpack_locals(bytes(handle.buf))
        return folders
    finally:
        handle.shm.close()


def _registered_prefixes() -> list[int]:
    """Prefixes in use. Linux lists them in /dev/shm (gaps included); elsewhere walk until the first gap."""
    if os.path.isdir("/dev/shm"):
        suffix = "_" + LOCALS
        return sorted(
            int(n[: -len(suffix)]) for n in os.listdir("/dev/shm") if n.endswith(suffix) and n[: -len(suffix)].isdigit()
        )
    prefixes = []
    for prefix_int in _each_prefix_int():
        if _registered_locals(prefix_int) is None:
            return prefixes
        prefixes.append(prefix_int)
    return prefixes


def release_stale_shared_memory(local: str) -> int:
    """Unlink the Streaming segments registered for `local`; returns how many prefixes were freed.

    Call on one process per node before any StreamingDataset is built (no live dataset may use `local`).
    """
    ours = os.path.realpath(local)
    freed = 0
    for prefix_int in _registered_prefixes():
        folders = _registered_locals(prefix_int)
        if folders is None:
            continue
        if ours not in {os.path.realpath(folder) for folder in folders}:
            continue
        for name in SHM_TO_CLEAN:
            try:
                _posixshmem.shm_unlink("/" + _get_path(prefix_int, name))
            except FileNotFoundError:
                continue
        for lock in (BARRIER_FILELOCK, CACHE_FILELOCK):
            path = os.path.join(gettempdir(), _get_path(prefix_int, lock))
            if os.path.exists(path):
                os.remove(path)
        freed += 1
    return freed
