"""A disk that fills up while a checkpoint is written: one line naming the folder and its free space, the partial
checkpoint removed (the older ones kept), and a non-zero exit. train.py runs as a user runs it, in its own process,
on the quickstart with one process, through a driver that makes the checkpoint file's write fail with ENOSPC
part-way through, as a full disk fails it. (In the test process, train.py would leave its signal handlers and
Composer's RANK/WORLD_SIZE environment behind for later tests.)"""

from __future__ import annotations

import re
import subprocess
import sys

from helpers import QUICKSTART, REPO, train_env

RUN = ("cosmos_composer", "quickstart", "quickstart", "checkpoints")

DRIVER = """
import errno, os, runpy, sys
import torch

real_save = torch.save


def save_until_the_disk_is_full(obj, f, *args, **kwargs):
    if os.path.basename(getattr(f, "name", "")) == "ep0-ba2-rank0.pt":  # the second checkpoint's file
        f.write(b"\\0" * 4096)  # part of it reaches the disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_save(obj, f, *args, **kwargs)


torch.save = save_until_the_disk_is_full
sys.argv = sys.argv[1:]  # train.py's own argv: the script, the YAML, the overrides
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_full_disk_while_saving_names_the_folder_and_removes_the_partial_checkpoint(tmp_path, demo_mds):
    driver = tmp_path / "full_disk_driver.py"
    driver.write_text(DRIVER)
    args = [
        f"output_root={tmp_path}",
        f"train_loader.dataset.local={demo_mds}",
        "parallelism_config=null",  # one process: Composer writes ep<E>-ba<B>-rank0.pt with torch.save
        "eval_loader=null",
        "callbacks.sample_videos=null",
        "save_interval=1ba",
        "max_duration=3ba",
        "progress_bar=false",
        "log_to_console=false",
    ]
    result = subprocess.run(
        [sys.executable, str(driver), str(REPO / "train.py"), str(QUICKSTART), *args],
        cwd=tmp_path,
        env=train_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )

    folder = tmp_path.joinpath(*RUN)
    assert result.returncode == 1, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("training stopped:")]
    assert len(lines) == 1, result.stderr[-3000:]  # one line, said once
    message = lines[0]
    assert re.fullmatch(
        rf"training stopped: no space left on device while writing {re.escape(str(folder))}: [\d.]+ \w?i?B free on "
        r"/\S*; free space or set save_folder to a folder on a disk with room; the partial checkpoint "
        r"ep0-ba2-rank0\.pt was removed",
        message,
    ), message
    assert "Traceback" not in result.stderr
    assert not (folder / "ep0-ba2-rank0.pt").exists()  # the partial file is gone ...
    assert (folder / "ep0-ba1-rank0.pt").is_file()  # ... the older checkpoint stays, with its checksums
    assert (folder / "ep0-ba1-rank0.pt.checksums.json").is_file()
