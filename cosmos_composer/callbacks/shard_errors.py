"""A corrupt shard found by one rank stops every rank with the shard's one line, not with a collective's error.

The dataset hashes each shard on its first read (data/dataset.py); on several ranks only the rank that reads the
bad shard finds it. Raised there alone, it would leave the other ranks in their next collective until gloo or NCCL
fails them (`Connection closed by peer`), and that is the error the console shows. Here each loader of the run
defers the error (`TransferDataLoader.defer_shard_errors`): the rank's pass ends, Composer's per-fetch all-reduce
ends every rank's pass with it, and at the end of the epoch (or of the evaluation), which every rank reaches,
the ranks exchange what they found and all raise the ShardError, naming the file, the rank that found it and
the fix; train.py prints it as its last line.
"""

from __future__ import annotations

from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from ..data.dataset import ShardError, TransferDataLoader


def _loaders(state: State) -> list[TransferDataLoader]:
    loaders = [state.train_dataloader, *(evaluator.dataloader.dataloader for evaluator in state.evaluators)]
    return [loader for loader in loaders if isinstance(loader, TransferDataLoader)]


class StopOnShardError(Callback):
    """Defer each loader's ShardError to the end of the pass, then raise it on every rank (module docstring)."""

    def fit_start(self, state: State, logger: Logger) -> None:
        for loader in _loaders(state):
            loader.defer_shard_errors = True

    def epoch_end(self, state: State, logger: Logger) -> None:
        self._raise_if_any_rank_found_one(state)

    def eval_end(self, state: State, logger: Logger) -> None:
        self._raise_if_any_rank_found_one(state)

    @staticmethod
    def _raise_if_any_rank_found_one(state: State) -> None:
        mine = next((loader.shard_error for loader in _loaders(state) if loader.shard_error), None)
        found = [(rank, error) for rank, error in enumerate(dist.all_gather_object(mine)) if error]
        if found:
            rank, error = found[0]
            raise ShardError(f"rank {rank} read {error}" if dist.get_world_size() > 1 else error)
