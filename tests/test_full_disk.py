"""A disk that fills up while a checkpoint is written: one line naming the folder and its free space, the partial
checkpoint removed (the older ones kept), and a non-zero exit. In-process: train.py's `main` on the quickstart,
one process, with the checkpoint file's write failing with ENOSPC part-way through, as a full disk fails it."""

from __future__ import annotations

import errno
import importlib.util
import os
import re

import pytest
import torch
from helpers import QUICKSTART, REPO

RUN = ("cosmos_composer", "quickstart", "quickstart", "checkpoints")


def _train_main():
    spec = importlib.util.spec_from_file_location("train_script", REPO / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_a_full_disk_while_saving_names_the_folder_and_removes_the_partial_checkpoint(
    tmp_path, demo_mds, monkeypatch, capsys
):
    real_save = torch.save

    def save_until_the_disk_is_full(obj, f, *args, **kwargs):
        if os.path.basename(getattr(f, "name", "")) == "ep0-ba2-rank0.pt":  # the second checkpoint's file
            f.write(b"\0" * 4096)  # part of it reaches the disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
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
    with pytest.raises(SystemExit) as stopped:
        _train_main()([str(QUICKSTART), *args])

    folder = tmp_path.joinpath(*RUN)
    assert stopped.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("training stopped:")]
    assert len(lines) == 1, lines  # one line, said once
    message = lines[0]
    assert re.fullmatch(
        rf"training stopped: no space left on device while writing {re.escape(str(folder))}: [\d.]+ \w?i?B free on "
        r"/\S*; free space or set save_folder to a folder on a disk with room; the partial checkpoint "
        r"ep0-ba2-rank0\.pt was removed",
        message,
    ), message
    assert not (folder / "ep0-ba2-rank0.pt").exists()  # the partial file is gone ...
    assert (folder / "ep0-ba1-rank0.pt").is_file()  # ... the older checkpoint stays, with its checksums
    assert (folder / "ep0-ba1-rank0.pt.checksums.json").is_file()
