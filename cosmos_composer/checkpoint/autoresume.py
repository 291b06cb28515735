"""Autoresume from the newest *intact* checkpoint of a run, found by looking at the checkpoints themselves.

Composer 0.32.1 resumes from whatever its `latest-rank0.pt` link names: with the newest folder gone (deleted as
corrupt, a copy that dropped the link, a kill between Composer's removal and re-creation of the link) the link
dangles, Composer finds nothing and the run silently starts again at batch 0, overwriting the older checkpoints.
Here the save folder's checkpoints are listed (`ep{E}-ba{B}` sharded folders, `ep{E}-ba{B}-rank0.pt` files),
the newest one whose files are all there is chosen, the link is pointed at it, and the choice is said aloud.
Checkpoints that exist but none of them intact stop the run instead of starting over.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .integrity import checksum_problem, checksums_path
from .safe_pickle import METADATA_FILE, UnsafePickleError, read_dcp_metadata

log = logging.getLogger(__name__)


class RunAlreadyComplete(Exception):
    """The newest checkpoint is already at max_duration: nothing to train (train.py exits 0)."""


LATEST_LINK = "latest-rank0.pt"  # Composer's save_latest_filename for rank 0
_NAME = re.compile(r"^ep(?P<epoch>\d+)-ba(?P<batch>\d+)(?P<rank>-rank0\.pt)?$")


@dataclass
class ResumePlan:
    checkpoint: Optional[Path] = None  # the newest intact checkpoint, None: start fresh
    batch: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # newer checkpoints left out: name -> why

    def describe(self, folder: Path) -> str:
        lines = [f"{name} is not intact ({why}), skipped" for name, why in self.skipped.items()]
        if self.checkpoint is None:
            lines.append(f"no checkpoint in {folder}: starting fresh")
        else:
            verified = "checksums verified" if checksums_path(self.checkpoint).is_file() else "no checksums to verify"
            lines.append(f"resuming from {self.checkpoint.name} (batch {self.batch}, {verified})")
        return "autoresume: " + "; ".join(lines)


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(batch, path) of every checkpoint in `folder`, newest first."""
    found = []
    for path in folder.iterdir() if folder.is_dir() else []:
        match = _NAME.match(path.name)
        if match and not path.is_symlink():
            found.append((int(match["batch"]), path))
    return sorted(found, key=lambda item: item[0], reverse=True)


def why_not_intact(path: Path) -> Optional[str]:
    """What is missing or corrupt in a checkpoint, or None when all its files are there as its save wrote them.

    A `.metadata` that holds anything but a DCP index raises UnsafePickleError: that is not a damaged
    checkpoint to step over but a planted file, and the run stops naming it.
    """
    if path.is_file():  # a Composer .pt (one process without FSDP): a torch zip archive
        try:
            with zipfile.ZipFile(path) as archive:
                archive.infolist()
        except (zipfile.BadZipFile, OSError) as error:
            return f"not a readable archive: {error}"
        return checksum_problem(path)
    if not (path / METADATA_FILE).is_file():
        return "no .metadata"
    try:
        metadata = read_dcp_metadata(path)
    except UnsafePickleError:
        raise
    except Exception as error:  # noqa: BLE001 - a truncated or garbage pickle raises anything
        return f"unreadable .metadata ({type(error).__name__})"
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        shard = path / name
        if not shard.is_file():
            return f"missing {name}"
        if shard.stat().st_size < size:
            return f"{name} is truncated ({shard.stat().st_size} of {size} bytes)"
    return checksum_problem(path)


def plan_resume(folder: str | os.PathLike) -> ResumePlan:
    """The newest intact checkpoint of `folder`; raises RuntimeError when there are checkpoints but none intact.

    Raises UnsafePickleError when a checkpoint's `.metadata` holds a planted pickle."""
    folder = Path(folder)
    plan = ResumePlan()
    found = checkpoints(folder)
    for batch, path in found:
        why = why_not_intact(path)
        if why is None:
            plan.checkpoint, plan.batch = path, batch
            return plan
        plan.skipped[path.name] = why
    if found:
        raise RuntimeError(
            f"{folder} holds checkpoints, but none is intact ({'; '.join(f'{k}: {v}' for k, v in plan.skipped.items())}). "
            "Starting over would overwrite them. Fix: restore a checkpoint, or start a new run (a new run_name) "
            "or delete the folder"
        )
    return plan


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
