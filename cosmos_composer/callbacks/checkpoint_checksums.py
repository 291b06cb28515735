"""Write `checksums.json` into every checkpoint right after Composer saves it (see checkpoint/integrity.py).

Composer's `CheckpointSaver` runs after every other callback, so this one is appended to the Trainer's callbacks
after it (`attach`) and looks, at each checkpoint event, for a checkpoint it has not summed yet. In a sharded
save each rank hashes the `.distcp` files it wrote (in parallel), and global rank 0 writes the list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from composer.callbacks import CheckpointSaver
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from ..checkpoint.integrity import checksums_path, digests_of, write_checksums
from ..checkpoint.safe_pickle import METADATA_FILE


class CheckpointChecksums(Callback):
    def __init__(self, saver: CheckpointSaver):
        self.saver = saver
        self.summed: Optional[str] = None  # the newest checkpoint already summed

    @classmethod
    def attach(cls, trainer) -> None:
        """Add the callback after the Trainer's checkpoint saver (when the run saves checkpoints)."""
        savers = [cb for cb in trainer.state.callbacks if isinstance(cb, CheckpointSaver)]
        if savers:
            trainer.state.callbacks.append(cls(savers[0]))

    def _sum_new_checkpoint(self, state: State) -> None:
        if not self.saver.saved_checkpoints or self.saver.saved_checkpoints[-1] == self.summed:
            return
        self.summed = saved = self.saver.saved_checkpoints[-1]
        if state.fsdp_sharded_state_dict_enabled:  # every rank saved its shard into one folder
            folder, rank = Path(saved).parent, dist.get_global_rank()
            mine = [path.name for path in folder.glob(f"__{rank}_*.distcp")]
            if rank == 0:
                mine.append(METADATA_FILE)
            files = {name: digest for part in dist.all_gather_object(digests_of(folder, mine)) for name, digest in part.items()}
            if rank == 0:
                write_checksums(folder, files)
        else:  # one file, written by global rank 0 only
            path = Path(saved)
            write_checksums(path, digests_of(path.parent, [path.name]))
            self._remove_orphans(path.parent)

    @staticmethod
    def _remove_orphans(folder: Path) -> None:
        """Checksum files of single-file checkpoints that Composer's rotation has deleted."""
        for sidecar in folder.glob("*.checksums.json"):
            checkpoint = sidecar.with_name(sidecar.name[: -len(".checksums.json")])
            if not checkpoint.exists() and sidecar == checksums_path(checkpoint):
                sidecar.unlink(missing_ok=True)

    def batch_checkpoint(self, state: State, logger: Logger) -> None:
        self._sum_new_checkpoint(state)

    def epoch_checkpoint(self, state: State, logger: Logger) -> None:
        self._sum_new_checkpoint(state)

    def iteration_checkpoint(self, state: State, logger: Logger) -> None:
        self._sum_new_checkpoint(state)

    def fit_end(self, state: State, logger: Logger) -> None:
        self._sum_new_checkpoint(state)
