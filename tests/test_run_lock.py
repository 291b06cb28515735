"""The run lock where the filesystem has no flock (Lustre without `-o flock`: ENOSYS): an exclusively created
owner file with a heartbeat, taken over only from a dead holder."""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import sys
import time

import pytest

from cosmos_composer import run_lock
from cosmos_composer.run_lock import RunFolderInUse, acquire_run_lock


@pytest.fixture
def no_flock(monkeypatch):
    """flock answers as on Lustre mounted without `-o flock`."""

    def flock(handle, operation):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(run_lock.fcntl, "flock", flock)


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_without_flock_the_owner_file_locks_the_folder_and_says_so(no_flock, tmp_path):
    folder = tmp_path / "checkpoints"
    note = acquire_run_lock(folder)
    assert "flock is not supported" in note and "Function not implemented" in note and "checkpoints.lock.owner" in note
    holder = json.loads((tmp_path / "checkpoints.lock.owner").read_text())
    assert holder["pid"] == run_lock.os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(RunFolderInUse, match="checkpoints is in use by another run .*checkpoints.lock.owner"):
        acquire_run_lock(folder)  # a live holder (this process) keeps it


@pytest.mark.parametrize(
    "holder, taken",
    [
        ({"host": socket.gethostname(), "pid": None, "heartbeat_age_s": 0}, True),  # dead process, this host
        ({"host": "other-node", "pid": 1, "heartbeat_age_s": 2 * run_lock.STALE_AFTER_S}, True),
        ({"host": "other-node", "pid": 1, "heartbeat_age_s": 0}, False),  # renewed just now elsewhere
    ],
    ids=["dead on this host", "stale on another host", "live on another host"],
)
def test_a_dead_holders_owner_file_is_taken_over_and_a_live_ones_is_not(no_flock, tmp_path, holder, taken):
    # Ages, not times: parameters are made at collection, which may be many minutes before this test runs.
    holder = {key: value for key, value in holder.items() if key != "heartbeat_age_s"} | {
        "pid": holder["pid"] or _dead_pid(),
        "heartbeat": time.time() - holder["heartbeat_age_s"],
        "started": time.time() - 60,
    }
    owner = tmp_path / "checkpoints.lock.owner"
    owner.write_text(json.dumps(holder))
    if not taken:
        with pytest.raises(RunFolderInUse, match="other-node"):
            acquire_run_lock(tmp_path / "checkpoints")
        assert json.loads(owner.read_text()) == holder
        return
    note = acquire_run_lock(tmp_path / "checkpoints")
    assert "took over the lock" in note and f"pid {holder['pid']}" in note
    assert json.loads(owner.read_text())["pid"] == run_lock.os.getpid()


def test_the_holder_renews_its_heartbeat_and_removes_the_file_on_release(no_flock, tmp_path, monkeypatch):
    monkeypatch.setattr(run_lock, "HEARTBEAT_S", 0.05)
    released = []
    monkeypatch.setattr(run_lock.atexit, "register", lambda *args: released.append(args))
    acquire_run_lock(tmp_path / "checkpoints")
    owner = tmp_path / "checkpoints.lock.owner"
    first = json.loads(owner.read_text())["heartbeat"]
    deadline = time.time() + 5
    while json.loads(owner.read_text())["heartbeat"] == first and time.time() < deadline:
        time.sleep(0.05)
    assert json.loads(owner.read_text())["heartbeat"] > first
    release, *args = released[-1]
    release(*args)  # what a clean exit runs
    assert not owner.exists()


def test_other_flock_errors_are_not_mistaken_for_a_missing_flock(monkeypatch, tmp_path):
    def flock(handle, operation):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(run_lock.fcntl, "flock", flock)
    with pytest.raises(OSError, match="Input/output error"):
        acquire_run_lock(tmp_path / "checkpoints")
    assert not (tmp_path / "checkpoints.lock.owner").exists()
