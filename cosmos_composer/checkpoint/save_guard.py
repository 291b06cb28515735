"""A checkpoint save that fails leaves no partial checkpoint behind, and a full disk is said in one line.

Composer writes `ep{E}-ba{B}/` (or `ep{E}-ba{B}-rank0.pt`) in place; a save cut short by a full disk leaves the
partial checkpoint on the disk, taking the space the next save needs, and the run ends in a raw
`OSError: [Errno 28] No space left on device` that names no folder. Here the Trainer's `CheckpointSaver` (and
the checksums written after it, `callbacks/checkpoint_checksums.py`) save inside `removing_partial_checkpoint`:
on any failure global rank 0 removes the checkpoint of the batch being saved (older ones stay), and a full disk
becomes a `DiskFullError` naming the checkpoint folder and its free space (train.py stops with it).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from composer.callbacks import CheckpointSaver
from composer.utils import dist, format_name_with_dist

from ..data.output import raise_if_disk_full
from .composer_checkpoint import run_checkpoints
from .integrity import checksums_path
from .network_config import network_config_path

log = logging.getLogger(__name__)

FULL_DISK_FIX = "set save_folder to a folder on a disk with room"


@contextlib.contextmanager
def removing_partial_checkpoint(folder: Path, batch: int) -> Iterator[None]:
    """On a failure inside the block, remove the checkpoint of `batch` in `folder` (global rank 0) and re-raise;
    a full disk as a DiskFullError naming `folder`, its free space and what was removed."""
    try:
        yield
    except Exception as error:
        removed = _remove_checkpoint_of(folder, batch) if dist.get_global_rank() == 0 else []
        note = f"; the partial checkpoint {', '.join(removed)} was removed" if removed else ""
        raise_if_disk_full(error, folder, fix=FULL_DISK_FIX + note)
        raise


def _remove_checkpoint_of(folder: Path, batch: int) -> list[str]:
    """Remove the checkpoint(s) of `batch` in `folder` with their sidecars; their names."""
    removed = []
    for found_batch, path in run_checkpoints(folder):
        if found_batch != batch:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            for file in (path, checksums_path(path), network_config_path(path)):
                file.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


def guard_saves(trainer) -> None:
    """Make every save of the Trainer's checkpoint saver run inside `removing_partial_checkpoint` (its folder, the
    batch being saved).

    Composer 0.32 has no hook around a save, so the saver's `_save_checkpoint` (called for every batch, epoch and
    iteration checkpoint) is wrapped on this instance."""
    for saver in [cb for cb in trainer.state.callbacks if isinstance(cb, CheckpointSaver)]:
        save = saver._save_checkpoint

        def guarded_save(state, logger, saver=saver, save=save) -> None:
            folder = Path(format_name_with_dist(saver.folder, state.run_name))
            with removing_partial_checkpoint(folder, int(state.timestamp.batch)):
                save(state, logger)

        saver._save_checkpoint = guarded_save
