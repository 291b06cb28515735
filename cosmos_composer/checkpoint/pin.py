"""Pin a checkpoint while it is read: a live run's rotation may delete it, the reader still finishes.

A run with `save_num_checkpoints_to_keep` deletes its oldest checkpoint folder after each save (Composer's
`CheckpointSaver._rotate_checkpoints`: `shutil.rmtree` on global rank 0), possibly while an export reads it.
`pinned_checkpoint` first hard-links every file of the checkpoint into a private folder beside it
(`<checkpoints>/.export-pin.partial-<host>-<pid>-*`) and the reader reads the links. Deleting the checkpoint
then removes only its names: the data stays on disk until the pin is removed, so the rotation is never
blocked and the export never sees a file vanish.

Why links rather than a pin file that the rotation honours: they protect against every deleter (Composer's
rotation in this run or in a run of an older cosmos-composer, a user's `rm -r`), need nothing of the trainer,
copy no data, and leave nothing to honour after a crash: a pin whose process died is removed by the next pin
of that folder (`data/output.make_partial_dir`), freeing the space. Where the file system refuses hard links
(or the folder is read-only to this user) the checkpoint is read in place, saying so; a rotation then fails
the read with an error naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from ..data.output import make_partial_dir
from .integrity import checksums_path, listed_files_problem
from .safe_pickle import METADATA_FILE

log = logging.getLogger(__name__)

PIN_NAME = "export-pin"  # the pins of a checkpoints folder are `.export-pin.partial-<host>-<pid>-*` in it
# Errors that say "no hard links here" (file system, permissions), as opposed to "the file is gone".
_NO_LINKS = (errno.EPERM, errno.EACCES, errno.EROFS, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.ENOSYS)


class CheckpointGoneError(FileNotFoundError):
    """The checkpoint was deleted (a run's rotation) before all its files were pinned."""


def _link_all(checkpoint_dir: Path, pin: Path) -> None:
    """Hard-link every file of `checkpoint_dir` into `pin`, then check that the links hold a whole checkpoint."""
    try:
        names = [entry.name for entry in os.scandir(checkpoint_dir) if entry.is_file(follow_symlinks=False)]
        for name in names:
            os.link(checkpoint_dir / name, pin / name, follow_symlinks=False)
    except FileNotFoundError as error:
        raise CheckpointGoneError(f"{error.filename or checkpoint_dir} was deleted") from None
    # A deletion that began before the listing leaves fewer files: the index and every listed file must be there.
    if not (pin / METADATA_FILE).is_file():
        raise CheckpointGoneError(f"{checkpoint_dir / METADATA_FILE} was deleted")
    problem = listed_files_problem(pin) if checksums_path(pin).is_file() else None
    if problem:
        raise CheckpointGoneError(f"{checkpoint_dir} was deleted (the pin found: {problem})")


@contextlib.contextmanager
def pinned_checkpoint(checkpoint_dir: Path) -> Iterator[Path]:
    """Yield a folder holding the files of the sharded checkpoint `checkpoint_dir` that no deletion of
    `checkpoint_dir` affects (hard links), or `checkpoint_dir` itself where links cannot be made.

    Raises CheckpointGoneError when the checkpoint is deleted before it is pinned; the pin is removed on exit.
    """
    pin = make_partial_dir(checkpoint_dir.parent / PIN_NAME)
    try:
        try:
            _link_all(checkpoint_dir, pin)
        except OSError as error:
            if isinstance(error, CheckpointGoneError) or error.errno not in _NO_LINKS:
                raise
            log.warning(
                "cannot pin %s with hard links (%s): reading it in place, so a run that deletes it meanwhile "
                "(save_num_checkpoints_to_keep) fails this read",
                checkpoint_dir,
                os.strerror(error.errno),
            )
            shutil.rmtree(pin, ignore_errors=True)
            yield checkpoint_dir
            return
        yield pin
    finally:
        shutil.rmtree(pin, ignore_errors=True)
