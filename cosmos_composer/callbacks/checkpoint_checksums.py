"""Write `network.json`, `run.json` and `checksums.json` into every checkpoint right after Composer saves it.

`network.json` is the network config (`checkpoint/network_config.py`); `run.json` the rest of what a resume
compares (`checkpoint/run_record.py`), at the save's position; `checksums.json` lists the sha256 of every file
of the checkpoint, both included (`checkpoint/integrity.py`). A single-file checkpoint gets them beside it:
`<name>.network.json`, `<name>.run.json` and `<name>.checksums.json`.

Composer's `CheckpointSaver` runs after every other callback, so this one is appended to the Trainer's callbacks
after it (`attach`) and looks, at each checkpoint event, for a checkpoint it has not summed yet. In a sharded
save each rank hashes the `.distcp` files it wrote (in parallel), and global rank 0 writes network.json and the
list.

With an object-store save_folder (`s3://...`) Composer uploads its own files from a local staging folder; the
two files written here are uploaded beside them, and the staging copy is then removed
(`checkpoint/object_store.py`). Composer's `latest-rank0.pt.symlink` in the store is not kept up: autoresume
finds the newest intact checkpoint by listing the store, and the symlink (which can name a checkpoint whose
checksums are still uploading) would only add Composer's 30 s polling for it at the end of each run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from composer.callbacks import CheckpointSaver
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from ..checkpoint.integrity import CHECKSUMS_FILE, checksums_path, digests_of, write_checksums
from ..checkpoint.network_config import NETWORK_FILE, network_config_path, write_network_config
from ..checkpoint.object_store import upload_beside
from ..checkpoint.run_record import RUN_FILE, RunRecord, run_record_path, write_run_record
from ..checkpoint.safe_pickle import METADATA_FILE
from ..checkpoint.save_guard import removing_partial_checkpoint
from ..models import NetworkConfig


class CheckpointChecksums(Callback):
    """`preset` and `network`: the run's network config (`model.preset`, and `net.config` after the overrides)."""

    def __init__(
        self,
        saver: CheckpointSaver,
        preset: str,
        network: NetworkConfig,
        lora: Optional[dict] = None,
        run: Optional[RunRecord] = None,
    ):
        self.saver = saver
        self.preset = preset
        self.network = network
        self.lora = lora  # the LoRA settings when the weights carry adapters (models/lora.py)
        self.run = run  # the run's record (run.json), its position filled in at each save; None: not written
        self.summed: Optional[str] = None  # the newest checkpoint already summed

    @classmethod
    def attach(cls, trainer, preset: str, run: Optional[RunRecord] = None) -> None:
        """Add the callback after the Trainer's checkpoint saver (when the run saves checkpoints)."""
        savers = [cb for cb in trainer.state.callbacks if isinstance(cb, CheckpointSaver)]
        if savers:
            model = trainer.state.model
            net = getattr(model, "module", model).net  # `module`: under DDP
            lora = getattr(net, "lora_settings", None)
            trainer.state.callbacks.append(cls(savers[0], preset, net.config, lora.as_dict() if lora else None, run))
            if savers[0].remote_uploader is not None:
                savers[0].latest_remote_file_name = None  # see the module docstring

    def _write_records(self, state: State, checkpoint: Path) -> list[str]:
        """network.json and run.json of `checkpoint` (a folder or a file); their names, to be summed."""
        written = [write_network_config(network_config_path(checkpoint), self.preset, self.network, self.lora)]
        if self.run is not None:
            # Composer counts each sample once per rank of its context-parallel group; run.json counts it once.
            time = state.timestamp
            sample_in_epoch = int(time.sample_in_epoch) // self.run.context_parallel_size
            epoch_done = state.dataloader_len is not None and int(time.batch_in_epoch) >= int(state.dataloader_len)
            record = self.run.at(int(time.epoch), sample_in_epoch, int(time.epoch) + epoch_done)
            written.append(write_run_record(run_record_path(checkpoint), record))
        return [path.name for path in written]

    def _sum_new_checkpoint(self, state: State) -> None:
        if not self.saver.saved_checkpoints or self.saver.saved_checkpoints[-1] == self.summed:
            return
        self.summed = saved = self.saver.saved_checkpoints[-1]
        sharded = state.fsdp_sharded_state_dict_enabled  # every rank saved its shard into one folder
        folder = Path(saved).parent.parent if sharded else Path(saved).parent
        with removing_partial_checkpoint(folder, int(state.timestamp.batch)):  # a full disk: no half-summed one
            self._sum(state, Path(saved), sharded)

    def _sum(self, state: State, saved: Path, sharded: bool) -> None:
        if sharded:
            folder, rank = Path(saved).parent, dist.get_global_rank()
            mine = [path.name for path in folder.glob(f"__{rank}_*.distcp")]
            if rank == 0:
                mine += [METADATA_FILE, *self._write_records(state, folder)]
            files = {
                name: digest
                for part in dist.all_gather_object(digests_of(folder, mine))
                for name, digest in part.items()
            }
            if rank == 0:
                write_checksums(folder, files)
                self._upload(folder, list(files))
        else:  # one file, written by global rank 0 only
            path = Path(saved)
            listed = [path.name, *self._write_records(state, path)]
            write_checksums(path, digests_of(path.parent, listed))
            self._remove_orphans(path.parent)
            self._upload(path, listed)

    def _upload(self, saved: Path, listed: list[str]) -> None:
        """With an object-store save_folder: what this callback wrote goes up beside Composer's upload."""
        if self.saver.remote_uploader is not None:
            upload_beside(self.saver, saved, listed)

    @staticmethod
    def _remove_orphans(folder: Path) -> None:
        """Sidecars of single-file checkpoints that Composer's rotation has deleted."""
        sidecars = ((CHECKSUMS_FILE, checksums_path), (NETWORK_FILE, network_config_path), (RUN_FILE, run_record_path))
        for name, sidecar_of in sidecars:
            for sidecar in folder.glob(f"*.{name}"):
                checkpoint = sidecar.with_name(sidecar.name[: -len(name) - 1])
                if not checkpoint.exists() and sidecar == sidecar_of(checkpoint):
                    sidecar.unlink(missing_ok=True)

    def batch_checkpoint(self, state: State, logger: Logger) -> None:
        self._sum_new_checkpoint(state)

    def epoch_checkpoint(self, state: State, logger: Logger) -> None:
        self._sum_new_checkpoint(state)

    def iteration_checkpoint(self, state: State, logger: Logger) -> None:
        self._sum_new_checkpoint(state)

    def fit_end(self, state: State, logger: Logger) -> None:
        self._sum_new_checkpoint(state)
