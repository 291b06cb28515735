"""`run.json`: how the run that wrote a checkpoint was set up, so that a resume can be checked against it.

Beside `network.json` (the network config and LoRA settings) every checkpoint gets `run.json`, written by the
checkpoint callback before the checksums (so `checksums.json` covers it); a single-file checkpoint gets
`<name>.run.json` beside it. It holds what the network config does not and a resume must compare: whether the
base DiT trains, the context-parallel size, the processes and the batch, the checkpoint layout, a fingerprint
of the train dataset's shard index, and the position in the epoch at the save.

On resume (`compare_with_checkpoint`) each difference between the new run and the checkpoint is either refused
(the state cannot follow it: other tensors, another camera behind a view-embedding row, a Streaming position
that would point at other samples) or followed and said. Checkpoints written before `run.json` existed are
compared on what their `network.json` gives; the rest is said to be unchecked.

Units of Composer's sample counts: Composer adds up the samples of every rank, so under context parallelism
(`cp` consecutive ranks share each sample) its `sample` and `sample_in_epoch` count each sample `cp` times.
The Streaming state in the checkpoint holds distinct samples (`TransferStreamingDataset.state_dict`); after a
change of the context-parallel size Composer's restored counts are rescaled to the new size
(`rescale_sample_counts`), so that the next save records the true position again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from composer.core import Timestamp

from ..config_file import atomic_write_text
from ..models import NetworkConfig
from .load import CheckpointLoadError
from .network_config import EXECUTION_ONLY_FIELDS, RecordedNetwork

RUN_FILE = "run.json"
RUN_FORMAT_VERSION = 1  # the run.json layout this code writes and the newest it reads
DATASET_INDEX = "index.json"  # Streaming's shard index of a dataset folder


class ResumeRefused(CheckpointLoadError):
    """The run cannot resume from its checkpoint as configured; the message names each key and the way out.

    A CheckpointLoadError, so train.py prints it as a `checkpoint error:` line."""


@dataclass(frozen=True)
class RunRecord:
    """What a resume compares with the checkpoint beyond network.json (see the module docstring)."""

    train_base: bool  # model.train_base: whether the base DiT's weights train (and have optimizer state)
    cameras: Optional[tuple[str, ...]]  # the train dataset's cameras in view order; None for single view
    context_parallel_size: int
    world_size: int  # processes of the launch
    data_parallel_size: int
    global_train_batch_size: int
    sharded: bool  # sharded (FSDP2, `ep*-ba*/` folders) or one file (`ep*-ba*-rank0.pt`)
    dataset_index_sha256: Optional[str]  # of the train dataset's index.json; None: not there to read
    epoch: int = 0  # the position at the save: the epoch ...
    sample_in_epoch: int = 0  # ... and the distinct samples trained in it
    # Epochs whose every batch is trained: `epoch`, plus one when the save came after the epoch's last batch
    # but before Composer's epoch end (a batch-interval save): a `max_duration` in epochs is reached then.
    finished_epochs: int = 0
    format_version: int = field(default=RUN_FORMAT_VERSION, compare=False)

    def at(self, epoch: int, sample_in_epoch: int, finished_epochs: int) -> RunRecord:
        """This record at a save's position."""
        return dataclasses.replace(self, epoch=epoch, sample_in_epoch=sample_in_epoch, finished_epochs=finished_epochs)


def run_record_path(checkpoint: Union[str, os.PathLike]) -> Path:
    """Where the run record of `checkpoint` (a folder, or a single file) is kept."""
    checkpoint = Path(checkpoint)
    return checkpoint / RUN_FILE if checkpoint.is_dir() else checkpoint.with_name(f"{checkpoint.name}.{RUN_FILE}")


def write_run_record(path: Union[str, os.PathLike], record: RunRecord) -> Path:
    """Write run.json at `path`, atomically."""
    return atomic_write_text(path, json.dumps(dataclasses.asdict(record), indent=2) + "\n")


def read_run_record(checkpoint: Union[str, os.PathLike]) -> Optional[RunRecord]:
    """The run record of `checkpoint`, or None when it has none (written before run.json existed).

    Its checksums are verified with the checkpoint's (autoresume's `why_not_intact`) before this is read."""
    path = run_record_path(checkpoint)
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text())
        version = document.get("format_version", 1)
        if version > RUN_FORMAT_VERSION:
            raise ResumeRefused(
                f"{path} has format_version {version}, but this cosmos-composer reads up to version "
                f"{RUN_FORMAT_VERSION}. Fix: upgrade cosmos-composer (pip install -U cosmos-composer)"
            )
        known = {f.name for f in dataclasses.fields(RunRecord)}
        record = RunRecord(**{key: value for key, value in document.items() if key in known})
    except (OSError, ValueError, TypeError, AttributeError) as error:
        raise ResumeRefused(f"{path} is not a readable run record ({error}). Fix: resume from another checkpoint")
    cameras = None if record.cameras is None else tuple(record.cameras)
    return dataclasses.replace(record, cameras=cameras)


def dataset_index_sha256(folder: Union[str, os.PathLike]) -> Optional[str]:
    """sha256 of a dataset folder's index.json (None when it has none yet: a remote dataset not fetched).

    A conversion into other shards, or of other samples, changes it; the Streaming position then points at
    other samples."""
    index = Path(folder) / DATASET_INDEX
    return hashlib.sha256(index.read_bytes()).hexdigest() if index.is_file() else None


# ----------------------------------------------------------------------------- the comparison
@dataclass
class ResumeChanges:
    """How a resumed run differs from its checkpoint: each entry `"key: old -> new"`."""

    refused: list[str] = field(default_factory=list)  # changes the checkpoint's state cannot follow
    followed: list[str] = field(default_factory=list)  # changes it follows (said in the start lines)
    unchecked: list[str] = field(default_factory=list)  # what the checkpoint does not record


def _change(key: str, old: Any, new: Any) -> str:
    return f"{key}: {old} -> {new}"


def _lora_text(lora: Optional[dict]) -> str:
    return "off" if lora is None else "on"


def _compare_network(recorded: RecordedNetwork, preset: str, network: NetworkConfig, lora, changes) -> None:
    if recorded.preset != preset:
        changes.refused.append(_change("model.preset", recorded.preset, preset))
    for spec in dataclasses.fields(NetworkConfig):
        # The camera list is compared as the view order it gives (below): () and the 7 official names agree.
        if spec.name in EXECUTION_ONLY_FIELDS or spec.name == "camera_names":
            continue
        old, new = getattr(recorded.config, spec.name), getattr(network, spec.name)
        if old != new:
            changes.refused.append(_change(f"model.overrides.{spec.name}", old, new))
    if recorded.config.view_cameras != network.view_cameras:
        old, new = list(recorded.config.view_cameras), list(network.view_cameras)
        changes.refused.append(_change("train_loader.dataset.cameras", old, new))
    if (recorded.lora is None) != (lora is None):
        changes.refused.append(_change("model.lora", _lora_text(recorded.lora), _lora_text(lora)))
    elif lora is not None:
        for key in ("target", "rank", "alpha"):  # the adapters' tensors and their scale
            if recorded.lora.get(key) != lora.get(key):
                changes.refused.append(_change(f"model.lora.{key}", recorded.lora.get(key), lora.get(key)))
        if recorded.lora.get("dropout") != lora.get("dropout"):
            changes.followed.append(_change("model.lora.dropout", recorded.lora.get("dropout"), lora.get("dropout")))


def _layout(sharded: bool) -> str:
    return "sharded" if sharded else "one file"


def _compare_run(recorded: RunRecord, run: RunRecord, changes: ResumeChanges) -> None:
    if recorded.train_base != run.train_base:
        changes.refused.append(_change("model.train_base", recorded.train_base, run.train_base))
    if recorded.sharded != run.sharded:
        changes.refused.append(_change("checkpoint layout", _layout(recorded.sharded), _layout(run.sharded)))
    if run.dataset_index_sha256 is None:
        changes.unchecked.append("the train dataset's shard index (its index.json is not there yet)")
    elif recorded.dataset_index_sha256 is not None and recorded.dataset_index_sha256 != run.dataset_index_sha256:
        old, new = recorded.dataset_index_sha256[:12], run.dataset_index_sha256[:12]
        changes.refused.append(
            _change("train_loader.dataset (the sha256 of its index.json: converted again?)", old, new)
        )
    if recorded.global_train_batch_size != run.global_train_batch_size:
        change = _change("global_train_batch_size", recorded.global_train_batch_size, run.global_train_batch_size)
        # Streaming resumes at sample_in_epoch; from a position that is not a whole number of the new batches
        # it pads the epoch's last batches with repeated samples.
        if recorded.sample_in_epoch % run.global_train_batch_size:
            changes.refused.append(
                f"{change} (the checkpoint is at sample {recorded.sample_in_epoch} of epoch {recorded.epoch}, not "
                f"a multiple of {run.global_train_batch_size}: samples would repeat)"
            )
        else:
            changes.followed.append(change)
    for key in ("context_parallel_size", "world_size", "data_parallel_size"):
        old, new = getattr(recorded, key), getattr(run, key)
        if old != new:
            changes.followed.append(_change("processes" if key == "world_size" else key, old, new))


def compare_with_checkpoint(
    recorded_network: Optional[RecordedNetwork],
    recorded_run: Optional[RunRecord],
    preset: str,
    network: NetworkConfig,
    lora: Optional[dict[str, Any]],
    run: RunRecord,
) -> ResumeChanges:
    """How the new run (`preset`, `network`, `lora` settings, `run`) differs from its checkpoint's records.

    Refused: the network fields (other than execution-only ones), LoRA on/off, target, rank and alpha, the
    camera list and order, train_base, the checkpoint layout, the dataset's shard index, and a batch change
    from a position the new batch does not divide. Followed: processes, context-parallel and data-parallel
    sizes, the global batch otherwise, LoRA dropout."""
    changes = ResumeChanges()
    if recorded_network is None:
        changes.unchecked.append("the network config and LoRA settings (no network.json)")
    else:
        _compare_network(recorded_network, preset, network, lora, changes)
    if recorded_run is None:
        changes.unchecked.append(
            f"train_base, the context-parallel size, processes, batch, layout and dataset shards (no {RUN_FILE}: "
            "written before it existed)"
        )
    else:
        if recorded_network is None and recorded_run.cameras != run.cameras:
            changes.refused.append(_change("train_loader.dataset.cameras", recorded_run.cameras, run.cameras))
        _compare_run(recorded_run, run, changes)
    return changes


def refusal_message(checkpoint: Path, refused: list[str]) -> str:
    """One line: each refused change and the ways out."""
    return (
        f"resume refused: this run differs from its checkpoint {checkpoint.name} in what the checkpoint's state "
        f"cannot follow: {'; '.join(refused)}. Fix: set these back to resume, or start a new run: a new run_name, "
        f"or a new run_name with load_path={checkpoint} to start it from these weights"
    )


# ----------------------------------------------------------------------------- Composer's sample counts
def rescale_sample_counts(timestamp: Timestamp, old_cp: int, new_cp: int) -> Timestamp:
    """Composer's restored `sample` and `sample_in_epoch` (counted `old_cp` times per sample) in the units of
    a run with context-parallel size `new_cp` (module docstring). Exact: the counts are multiples of `old_cp`."""
    if old_cp == new_cp:
        return timestamp
    return timestamp.copy(
        sample=int(timestamp.sample) // old_cp * new_cp,
        sample_in_epoch=int(timestamp.sample_in_epoch) // old_cp * new_cp,
    )
