"""Autoresume from the newest intact checkpoint, said aloud; never a silent restart, never a dropped load_path.

Real `python train.py` runs of the quickstart (one process, FSDP2: sharded `ep*-ba*` folders), with the
checkpoint folder damaged between runs as a crash, a bad copy or a disk would damage it.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from helpers import run_train

from cosmos_composer.models import build_network

RUN = ("out", "cosmos_composer", "quickstart", "quickstart", "checkpoints")


def _run(tmp_path, demo_mds, *args):
    return run_train(
        [
            f"train_loader.dataset.local={demo_mds}",
            "eval_loader=null",
            "callbacks.sample_videos=null",
            "save_interval=2ba",
            "progress_bar=false",
            "log_to_console=true",
            *args,
        ],
        tmp_path,
    )


@pytest.fixture(scope="module")
def four_batches_run(tmp_path_factory, demo_mds):
    """A finished 4-batch run with checkpoints at batches 2 and 4, made once for this file; returns its root."""
    root = tmp_path_factory.mktemp("four_batches")
    result = _run(root, demo_mds, "max_duration=4ba")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in root.joinpath(*RUN).iterdir()) == ["ep0-ba2", "ep1-ba4", "latest-rank0.pt"]
    return root


@pytest.fixture
def four_batches(tmp_path, four_batches_run):
    """A copy of that run's output root in this test's folder (the tests damage it); returns its checkpoint folder."""
    shutil.copytree(four_batches_run / RUN[0], tmp_path / RUN[0], symlinks=True)
    return tmp_path.joinpath(*RUN)


def test_a_dangling_latest_link_resumes_from_the_newest_intact_checkpoint(tmp_path, demo_mds, four_batches):
    shutil.rmtree(four_batches / "ep1-ba4")  # deleted as corrupt: latest-rank0.pt now dangles
    result = _run(tmp_path, demo_mds, "max_duration=6ba")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "autoresume: resuming from ep0-ba2 (batch 2, checksums verified)" in result.stdout
    assert "[batch=3/6]" in result.stdout + result.stderr and "[batch=1/6]" not in result.stdout + result.stderr


def test_a_truncated_shard_is_named_and_skipped(tmp_path, demo_mds, four_batches):
    shard = four_batches / "ep1-ba4" / "__0_0.distcp"
    os.truncate(shard, 100)
    result = _run(tmp_path, demo_mds, "max_duration=6ba")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ep1-ba4 is not intact (__0_0.distcp is truncated (100 of" in result.stdout
    assert "resuming from ep0-ba2" in result.stdout


def test_flipped_bytes_are_caught_by_the_checksums_and_resume_falls_back(tmp_path, demo_mds, four_batches):
    shard = four_batches / "ep1-ba4" / "__0_0.distcp"
    with open(shard, "r+b") as f:  # 4 KiB of flipped bytes: the file keeps its size and its index
        f.seek(1024)
        data = f.read(4096)
        f.seek(1024)
        f.write(bytes(b ^ 0xFF for b in data))
    result = _run(tmp_path, demo_mds, "max_duration=6ba")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ep1-ba4 is not intact (" in result.stdout and "__0_0.distcp does not match the sha256" in result.stdout
    assert "resuming from ep0-ba2 (batch 2, checksums verified)" in result.stdout


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _planted_object(marker) -> bytes:
    """A torch-saved object whose unpickling runs `touch marker` (as DCP stores a non-tensor entry)."""
    import io

    buffer = io.BytesIO()
    torch.save(_RunsCode(marker), buffer)
    return buffer.getvalue()


def test_planted_pickles_in_a_checkpoint_stop_the_run_without_running_them(tmp_path, demo_mds, four_batches):
    import pickle

    from torch.distributed.checkpoint.filesystem import _StorageInfo

    marker = tmp_path / "code-ran"
    # In a shard: a non-tensor entry (the run name) replaced by a pickled call, the index pointing at it.
    checkpoint = four_batches / "ep1-ba4"
    metadata = pickle.loads((checkpoint / ".metadata").read_bytes())  # our own file, written just before
    shard = checkpoint / "__0_0.distcp"
    offset, payload = shard.stat().st_size, _planted_object(marker)
    with open(shard, "ab") as f:
        f.write(payload)
    index = next(i for i in metadata.storage_data if i.fqn == "state.run_name")
    metadata.storage_data[index] = _StorageInfo("__0_0.distcp", offset, len(payload))
    (checkpoint / ".metadata").write_bytes(pickle.dumps(metadata))
    (checkpoint / "checksums.json").unlink()  # planted files bring no checksums, or forged ones
    result = _run(tmp_path, demo_mds, "max_duration=6ba")
    assert result.returncode != 0
    assert "checkpoint error:" in result.stderr and "entry state.run_name" in result.stderr
    assert "posix.system" in result.stderr and not marker.exists()

    # In the index: autoresume refuses it before anything is built.
    (checkpoint / ".metadata").write_bytes(pickle.dumps(_RunsCode(marker)))
    result = _run(tmp_path, demo_mds, "max_duration=6ba")
    assert result.returncode != 0 and "autoresume:" in result.stderr and "posix.system" in result.stderr
    assert not marker.exists()


def test_no_intact_checkpoint_stops_instead_of_starting_over(tmp_path, demo_mds, four_batches):
    for folder in ("ep0-ba2", "ep1-ba4"):
        (four_batches / folder / ".metadata").unlink()
    result = _run(tmp_path, demo_mds, "max_duration=6ba")
    assert result.returncode != 0
    assert "none is intact" in result.stderr and "a new run_name" in result.stderr
    assert "checkpoint error: autoresume: " in result.stderr  # a problem of the checkpoints, not of the config
    assert sorted(p.name for p in (four_batches / "ep0-ba2").iterdir()) == [  # kept
        "__0_0.distcp",
        "checksums.json",
        "network.json",
        "run.json",
    ]


def test_a_finished_run_run_again_exits_0_and_says_how_to_go_on(tmp_path, demo_mds, four_batches):
    result = _run(tmp_path, demo_mds, "max_duration=4ba")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "already complete at batch 4" in result.stdout
    assert "raise max_duration" in result.stdout and "new run_name" in result.stdout


def test_load_path_is_kept_when_there_is_nothing_to_resume(tmp_path, demo_mds):
    folder = tmp_path.joinpath(*RUN)
    folder.mkdir(parents=True)
    (folder / "latest-rank0.pt").symlink_to("ep9-ba20")  # a copy that kept the link but not the checkpoint
    weights = tmp_path / "start_ema_bf16.pt"
    torch.save(
        {f"net.{k}": v.to(torch.bfloat16) for k, v in build_network("tiny-multiview").state_dict().items()}, weights
    )
    result = _run(tmp_path, demo_mds, "max_duration=2ba", f"load_path={weights}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "autoresume: no checkpoint" in result.stdout and "starting fresh" in result.stdout
    assert f"{weights}: loaded" in result.stdout  # the weights it was told to start from


# ----------------------------------------------------------------------------- one run per folder
def test_a_second_run_into_the_same_folder_stops_naming_the_first_and_a_dead_ones_lock_is_taken_over(
    tmp_path, demo_mds
):
    import signal
    import subprocess
    import sys
    import time

    from helpers import QUICKSTART, REPO, train_env

    args = [
        f"train_loader.dataset.local={demo_mds}",
        "eval_loader=null",
        "callbacks.sample_videos=null",
        "save_interval=2ba",
        "progress_bar=false",
        "log_to_console=true",
        "console_log_interval=1ba",
        "max_duration=100000ba",
    ]
    first = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), str(QUICKSTART), *args],
        cwd=tmp_path,
        env=train_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for line in first.stdout:  # wait until the first run holds the folder and trains
            if "[batch=2/" in line:
                break
        else:
            raise AssertionError("the first run ended before it trained")
        second = _run(tmp_path, demo_mds, "max_duration=100000ba")
        assert second.returncode != 0
        assert "is in use by another run" in second.stderr and f"pid {first.pid}" in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    time.sleep(1)
    # The first run trains on while the second starts (longer on a loaded machine): go two batches past its
    # newest checkpoint, so that the third run has something to resume and something left to train.
    written = [path for path in tmp_path.joinpath(*RUN).glob("ep*-ba*") if (path / "checksums.json").exists()]
    newest = max(written, key=lambda path: int(path.name.split("-ba")[1])).name  # checksums.json comes last
    until = f"max_duration={int(newest.split('-ba')[1]) + 2}ba"
    third = _run(tmp_path, demo_mds, until)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "took over the lock" in third.stdout and f"pid {first.pid}" in third.stdout
    assert f"resuming from {newest} " in third.stdout  # after "<a newer one> is not intact, skipped", if any
    fourth = _run(tmp_path, demo_mds, until)  # after a clean exit there is nothing to take over
    assert fourth.returncode == 0 and "took over" not in fourth.stdout and "already complete" in fourth.stdout
