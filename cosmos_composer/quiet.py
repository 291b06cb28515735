"""Keep a run's console and the temp folder free of what a user cannot act on."""

from __future__ import annotations

import os
import warnings
from tempfile import gettempdir


def silence_known_warnings() -> None:
    """Hide the library warnings that every run prints and that say nothing about this run (call it first: the
    run plan's FSDP2Config warns when it is made).

    Each filter names the message and the module that warns, so the same text from elsewhere still shows.
    """
    # FSDP2 is this project's chosen path (Composer's FSDP1 needs a GPU); the warning repeats on every run.
    warnings.filterwarnings("ignore", message="FSDP2 Config/APIs are experimental", module="composer.utils.parallelism")
    # torch's own DCP writer calls tensor.storage(); nothing here uses TypedStorage.
    warnings.filterwarnings(
        "ignore", message="TypedStorage is deprecated", module="torch.distributed.checkpoint.filesystem"
    )


def silence_resume_warnings() -> None:
    """Hide what Composer warns about every resumed run.

    A checkpoint is written after the last batch of an epoch but before the epoch ends, so a run resumed from it
    first finishes that epoch with no batch left in it. A fresh run with no batches still warns.
    """
    warnings.filterwarnings(
        "ignore", message="No batches were trained for global rank", module="composer.trainer.trainer"
    )


def remove_streaming_filelocks(trainer) -> None:
    """Remove the `<temp>/NNNNNN_{barrier,cache}_filelock` files that this run's Streaming datasets created.

    Streaming 0.13.0 leaves them behind after every run, and skips a shared-memory prefix whose lock files
    exist, so they pile up. Call on every rank after `fit()`: the ranks wait for each other, then local
    rank 0 removes them.
    """
    from composer.utils import dist
    from streaming.base.constant import BARRIER_FILELOCK, CACHE_FILELOCK
    from streaming.base.shared.prefix import _get_path

    loaders = [trainer.state.train_dataloader, *(e.dataloader.dataloader for e in trainer.state.evaluators)]
    prefixes = {
        dataset._shm_prefix_int
        for dataset in (getattr(loader, "dataset", None) for loader in loaders)
        if hasattr(dataset, "_shm_prefix_int")
    }
    dist.barrier()  # no rank iterates a dataset any more
    if dist.get_local_rank() != 0:
        return
    for prefix in prefixes:
        for name in (BARRIER_FILELOCK, CACHE_FILELOCK):
            path = os.path.join(gettempdir(), _get_path(prefix, name))
            if os.path.exists(path):
                os.remove(path)
