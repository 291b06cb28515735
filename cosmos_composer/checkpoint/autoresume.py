"""Autoresume from the newest *intact* checkpoint of a run, found by looking at the checkpoints themselves.

Composer 0.32.1 resumes from whatever its `latest-rank0.pt` link names: with the newest folder gone (deleted as
corrupt, a copy that dropped the link, a kill between Composer's removal and re-creation of the link) the link
dangles, Composer finds nothing and the run silently starts again at batch 0, overwriting the older checkpoints.
Here the save folder's checkpoints are listed (`ep{E}-ba{B}` sharded folders, `ep{E}-ba{B}-rank0.pt` files),
the newest one whose files are all there is chosen (`composer_checkpoint.newest_intact`, the rule export and
the loaders use too), the link is pointed at it, and the choice is said aloud.
Checkpoints that exist but none of them intact stop the run instead of starting over.
An object-store save_folder (`s3://...`) is listed instead, and the checkpoint chosen is the newest whose download
is intact (`object_store.download_newest_intact`): Composer then loads that local copy.

Only checkpoints of the run's own layout are candidates (sharded `ep{E}-ba{B}/` folders for an FSDP2 run with
sharded state dicts, `ep{E}-ba{B}-rank0.pt` files otherwise): Composer cannot load the other layout. A newer
checkpoint of the other layout is refused by name, never stepped over or chosen: it is either the run's
newest state (resumed with another launch) or a stray file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .composer_checkpoint import LATEST_LINK, checkpoint_epoch, newest_intact, run_checkpoints
from .integrity import checksums_path
from .object_store import download_newest_intact, is_object_store
from .run_record import ResumeRefused

log = logging.getLogger(__name__)


class RunAlreadyComplete(Exception):
    """The newest checkpoint is already at max_duration: nothing to train (train.py exits 0)."""


@dataclass
class ResumePlan:
    checkpoint: Optional[Path] = None  # the newest intact checkpoint, None: start fresh
    batch: int = 0
    epoch: int = 0  # the epochs finished at that checkpoint (its name's `ep{E}`)
    skipped: dict[str, str] = field(default_factory=dict)  # newer checkpoints left out: name -> why

    def describe(self, folder: str | os.PathLike) -> str:
        lines = [f"{name} is not intact ({why}), skipped" for name, why in self.skipped.items()]
        if self.checkpoint is None:
            lines.append(f"no checkpoint in {folder}: starting fresh")
        else:
            verified = "checksums verified" if checksums_path(self.checkpoint).is_file() else "no checksums to verify"
            lines.append(f"resuming from {self.checkpoint.name} (batch {self.batch}, {verified})")
        return "autoresume: " + "; ".join(lines)


# How a run writes each layout, for the refusal of a checkpoint of the other one.
_LAYOUTS = {
    True: ("sharded", "FSDP2 with parallelism_config.fsdp.state_dict_type=sharded"),
    False: ("single-file", "parallelism_config=null (one process) or parallelism_config.fsdp.state_dict_type=full"),
}


def plan_resume(
    folder: str | os.PathLike, download_to: Optional[Path] = None, sharded: Optional[bool] = None
) -> ResumePlan:
    """The newest intact checkpoint of `folder` (`composer_checkpoint.newest_intact`, its files verified) of
    the run's layout (`sharded`; None: either); raises RuntimeError when there are checkpoints but none intact,
    ResumeRefused when one of the other layout is newer than the newest of the run's. An object-store
    `folder`'s checkpoint is downloaded into `download_to` and verified there (ObjectStoreError when the store
    cannot be read; its layouts are not told apart).

    Raises UnsafePickleError when a checkpoint's `.metadata` holds a planted pickle."""
    if is_object_store(folder):
        newest = download_newest_intact(str(folder), download_to)
    else:
        folder = Path(folder)
        own_layout = {} if sharded is None else {"sharded_only": sharded, "single_file_only": not sharded}
        newest = newest_intact(folder, verify=True, **own_layout)
        if sharded is not None:
            _refuse_newer_of_other_layout(folder, sharded, newest.path, newest.batch)
    epoch = checkpoint_epoch(newest.path) if newest.path is not None else 0
    plan = ResumePlan(newest.path, newest.batch, epoch, newest.skipped)
    if plan.checkpoint is None and newest.found:
        raise RuntimeError(
            f"{folder} holds checkpoints, but none is intact ({'; '.join(f'{k}: {v}' for k, v in plan.skipped.items())}). "
            "Starting over would overwrite them. Fix: restore a checkpoint, or start a new run (a new run_name) "
            "or delete the folder"
        )
    return plan


def _refuse_newer_of_other_layout(folder: Path, sharded: bool, own: Optional[Path], own_batch: int) -> None:
    others = run_checkpoints(folder, sharded_only=not sharded, single_file_only=sharded)
    newer = [path for batch, path in others if own is None or batch > own_batch]
    if not newer:
        return
    (mine, writes_mine), (theirs, writes_theirs) = _LAYOUTS[sharded], _LAYOUTS[not sharded]
    newest_own = f"its newest {mine} one is {own.name}" if own is not None else f"it holds no {mine} one"
    raise ResumeRefused(
        f"{folder} holds {newer[0].name}, a {theirs} checkpoint newer than this run's: this run writes {mine} "
        f"checkpoints ({writes_mine}) and {newest_own}. Fix: move {newer[0].name} out of {folder}, or resume with "
        f"the layout that wrote it ({writes_theirs}), or start a new run from it: a new run_name with "
        f"load_path={newer[0]}"
    )


def point_latest_link(folder: Path, plan: ResumePlan) -> None:
    """Make Composer's `latest-rank0.pt` name the planned checkpoint (or remove a dangling one)."""
    link = folder / LATEST_LINK
    if plan.checkpoint is None:
        if link.is_symlink():
            link.unlink()  # dangling: nothing to resume, and Composer must not try
        return
    if link.is_symlink() and os.readlink(link) == plan.checkpoint.name:
        return
    temporary = folder / f".{LATEST_LINK}.tmp"
    if temporary.is_symlink() or temporary.exists():
        temporary.unlink()
    temporary.symlink_to(plan.checkpoint.name)
    os.replace(temporary, link)  # atomic: the link is never missing
