"""Composer's checkpoints of a run: which one a path names, the newest intact one, and the model state of a
sharded one read on a CPU without a process group. Autoresume, export and every loader find checkpoints here.

Training writes `<run>/checkpoints/ep{E}-ba{B}/` Distributed Checkpoint (DCP) folders (one `__{rank}_0.distcp`
per rank and a `.metadata` index written last), or `ep{E}-ba{B}-rank0.pt` files (one process without FSDP), plus
Composer's `latest-rank0.pt` link to the newest. The model state is stored under `state.model.`: `net.*` (the
training weights) and `net_ema.*` (the power EMA); only those entries are ever read here.

"The newest intact checkpoint" (`newest_intact`), one rule for resume, export and loading: the checkpoints of a
folder by batch number, newest first; the first whose save finished (`.metadata` present) and, with `verify`,
whose files are all there as its save wrote them (`why_not_intact`: a readable index, every shard at its size,
the checksums) is taken; each newer one left out is named with the reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Optional, Union

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from tqdm import tqdm

from ..models.lora import LoraSettings, has_adapters
from .integrity import CHECKSUMS_FILE, checksum_problem, checksums_path
from .keys import EMA_PREFIX, NET_PREFIX, is_non_parameter, strip_wrapper_names, with_shared_ema_keys
from .network_config import NETWORK_FILE, find_network_config
from .safe_pickle import METADATA_FILE, UnsafePickleError, read_dcp_metadata, safe_dcp_reader, unsafe_pickle_in

log = logging.getLogger(__name__)

LATEST_LINK = "latest-rank0.pt"  # Composer's save_latest_filename for rank 0
CHECKPOINT_NAME = re.compile(r"^ep(?P<epoch>\d+)-ba(?P<batch>\d+)(?P<single_file>-rank0\.pt)?$")
UNFINISHED = "no .metadata"  # why a sharded folder whose save did not finish is left out

MODEL_STATE_PREFIX = "state.model."
# Tensors read per `dcp.load` call: bounds the overhead of each call and drives the progress bar.
_READ_CHUNK_BYTES = 512 * 1024**2
WHERE_CHECKPOINTS_ARE = (
    "Pass a Composer sharded checkpoint folder (<run>/checkpoints/ep<E>-ba<B>, holding .metadata and "
    "__<rank>_0.distcp files), the <run>/checkpoints/latest-rank0.pt link, or the <run>/checkpoints folder "
    "(the newest checkpoint in it is taken)."
)


class CheckpointReadError(RuntimeError):
    """A Composer checkpoint cannot be found or read; the message names the path and the fix."""


# ---------------------------------------------------------------------------------------------------------------
# Which checkpoint
# ---------------------------------------------------------------------------------------------------------------


def run_checkpoints(
    folder: Union[str, os.PathLike], sharded_only: bool = False, single_file_only: bool = False
) -> list[tuple[int, Path]]:
    """(batch, path) of every checkpoint in `folder` (sharded folders unless `single_file_only`, single files
    unless `sharded_only`), newest first (by batch, then epoch; never by name). Links (`latest-rank0.pt`) are
    not checkpoints."""
    folder = Path(folder)
    found = []
    for path in folder.iterdir() if folder.is_dir() else []:
        match = CHECKPOINT_NAME.match(path.name)
        if not match or path.is_symlink():
            continue
        sharded = not match["single_file"] and path.is_dir()
        if (sharded_only and not sharded) or (single_file_only and sharded):
            continue
        found.append(((int(match["batch"]), int(match["epoch"])), path))
    return [(batch, path) for (batch, _), path in sorted(found, key=lambda item: item[0], reverse=True)]


def checkpoint_epoch(path: Path) -> int:
    """The epoch count in a checkpoint's name (`ep{E}-ba{B}`): the epochs finished when it was saved."""
    return int(CHECKPOINT_NAME.match(path.name)["epoch"])


def is_checkpoint_folder(folder: Path) -> bool:
    """Whether `folder` is a sharded checkpoint folder, finished or not: named `ep{E}-ba{B}`, or holding a DCP
    index or shards (an export folder holds checksums.json and network.json too, but neither of these)."""
    if not folder.is_dir():
        return False
    if CHECKPOINT_NAME.match(folder.name) or (folder / METADATA_FILE).exists():
        return True
    return any(folder.glob("*.distcp"))


def enclosing_checkpoint_folder(path: Union[str, os.PathLike]) -> Optional[Path]:
    """The checkpoint folder that `path` is or lies inside (links resolved), or None."""
    resolved = Path(path).resolve()
    for folder in (resolved, *resolved.parents):
        if is_checkpoint_folder(folder):
            return folder
    return None


def why_not_intact(path: Path, verify: bool = True) -> Optional[str]:
    """What is missing or corrupt in a checkpoint, or None when it is whole.

    Without `verify` only that its save finished (a sharded folder has its `.metadata`, written last). With it,
    also that all its files are there as its save wrote them: a readable index, every shard at least as long as
    the index says, and the checksums. A `.metadata` that holds anything but a DCP index raises
    UnsafePickleError: that is not a damaged checkpoint to step over but a planted file, and the caller stops.
    """
    if path.is_file():  # a Composer .pt (one process without FSDP): a torch zip archive
        if not verify:
            return None
        try:
            with zipfile.ZipFile(path) as archive:
                archive.infolist()
        except (zipfile.BadZipFile, OSError) as error:
            return f"not a readable archive: {error}"
        return checksum_problem(path)
    if not (path / METADATA_FILE).is_file():
        return UNFINISHED
    if not verify:
        return None
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


@dataclass
class NewestCheckpoint:
    """What `newest_intact` found: the checkpoint (None: none is intact) and the newer ones it left out."""

    path: Optional[Path] = None
    batch: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why it is not intact
    found: int = 0  # how many checkpoints the folder holds


def newest_intact(
    folder: Union[str, os.PathLike], verify: bool = True, sharded_only: bool = False, single_file_only: bool = False
) -> NewestCheckpoint:
    """The newest checkpoint of `folder` that `why_not_intact` (with `verify`) passes; the rule of the module
    docstring. Raises UnsafePickleError when a checkpoint it looks at holds a planted `.metadata`."""
    newest = NewestCheckpoint()
    candidates = run_checkpoints(folder, sharded_only, single_file_only)
    newest.found = len(candidates)
    for batch, path in candidates:
        why = why_not_intact(path, verify)
        if why is None:
            newest.path, newest.batch = path, batch
            break
        newest.skipped[path.name] = why
    return newest


def find_checkpoint(path: Union[str, os.PathLike], verify: bool = False) -> Path:
    """The sharded checkpoint folder (the one holding `.metadata`) that `path` designates.

    `path` is a checkpoint folder `ep{E}-ba{B}` (or a file inside it), the `latest-rank0.pt` link Composer
    keeps next to them, a run's `checkpoints/` folder or the run folder itself (`newest_intact` picks), or
    `<run>/checkpoints/latest`. With `verify`, the checkpoint's files are checked (`why_not_intact`): a named
    checkpoint that fails is an error; when the newest is picked, a failing one is skipped, saying so.
    Raises CheckpointReadError.
    """
    given = Path(path)
    if given.is_symlink() and not given.exists():
        raise CheckpointReadError(
            f"{given} is a link to {os.readlink(given)}, which does not exist. {WHERE_CHECKPOINTS_ARE}"
        )
    if not given.exists():
        if given.name == "latest" and given.parent.is_dir():
            return _newest_in(given.parent, verify)
        raise CheckpointReadError(f"{given} does not exist. {WHERE_CHECKPOINTS_ARE}")

    folder = given.resolve()
    if folder.is_file():
        if folder.name == METADATA_FILE or folder.suffix == ".distcp":
            folder = folder.parent
        else:
            raise CheckpointReadError(
                f"{given} is a file, not a sharded checkpoint. Export reads the DCP folders that training writes "
                "with parallelism_config.fsdp.state_dict_type=sharded. A consolidated .pt file needs no export "
                f"(use it as load_path or with generate.py). {WHERE_CHECKPOINTS_ARE}"
            )
    if (folder / METADATA_FILE).is_file():
        if verify:
            problem = _verified_problem(folder)
            if problem:
                raise CheckpointReadError(f"{folder} is corrupt: {problem}. Pass an earlier checkpoint of the run")
        return folder
    if CHECKPOINT_NAME.match(folder.name):
        raise CheckpointReadError(
            f"{given} has no .metadata: its save did not finish. Pass an earlier checkpoint, or pass the "
            "checkpoints folder to take the newest complete one."
        )
    if (folder / "checkpoints").is_dir():
        folder = folder / "checkpoints"
    return _newest_in(folder, verify)


def _verified_problem(checkpoint_dir: Path) -> Optional[str]:
    """`why_not_intact` with `verify`, saying when there are no checksums to verify; a planted index is an error."""
    if not checksums_path(checkpoint_dir).is_file():
        log.warning("%s has no %s: its files cannot be verified", checkpoint_dir, CHECKSUMS_FILE)
    try:
        return why_not_intact(checkpoint_dir, verify=True)
    except UnsafePickleError as error:
        raise CheckpointReadError(str(error)) from None


def _newest_in(folder: Path, verify: bool) -> Path:
    try:
        newest = newest_intact(folder, verify=verify, sharded_only=True)
    except UnsafePickleError as error:
        raise CheckpointReadError(str(error)) from None
    unfinished = sorted(name for name, why in newest.skipped.items() if why == UNFINISHED)
    if newest.path is None:
        corrupt = {name: why for name, why in newest.skipped.items() if why != UNFINISHED}
        if corrupt:
            listing = "; ".join(f"{name}: {why}" for name, why in corrupt.items())
            raise CheckpointReadError(f"Every checkpoint in {folder} is corrupt ({listing})")
        detail = f" ({', '.join(unfinished)} have no .metadata: an unfinished save)" if unfinished else ""
        raise CheckpointReadError(f"No sharded checkpoint in {folder}{detail}. {WHERE_CHECKPOINTS_ARE}")
    for name, why in newest.skipped.items():
        log.warning("Skipping %s (%s); using %s", name, why, newest.path)
    if verify and not checksums_path(newest.path).is_file():
        log.warning("%s has no %s: its files cannot be verified", newest.path, CHECKSUMS_FILE)
    return newest.path


# ---------------------------------------------------------------------------------------------------------------
# Reading the model state of a sharded checkpoint
# ---------------------------------------------------------------------------------------------------------------


class TensorInfo(NamedTuple):
    shape: tuple[int, ...]
    dtype: torch.dtype


def _model_entries(checkpoint_dir: Path) -> dict[str, tuple[str, TensorStorageMetadata]]:
    """`{model-state key: (DCP key, metadata)}` for every tensor under `state.model.`."""
    try:
        metadata = read_dcp_metadata(checkpoint_dir)
    except UnsafePickleError as error:
        raise CheckpointReadError(str(error)) from None
    except Exception as error:  # a truncated or foreign .metadata file
        raise CheckpointReadError(
            f"Cannot read {checkpoint_dir / METADATA_FILE} as a torch.distributed.checkpoint index: {error}"
        ) from None
    entries = {}
    for dcp_key, entry in metadata.state_dict_metadata.items():
        if not dcp_key.startswith(MODEL_STATE_PREFIX):
            continue  # optimizer, schedulers, timestamp, RNG, ...: never read
        key = strip_wrapper_names(dcp_key[len(MODEL_STATE_PREFIX) :])
        if not isinstance(entry, TensorStorageMetadata):
            if is_non_parameter(key):
                continue  # e.g. TransformerEngine's `_extra_state`, skipped by every loader
            raise CheckpointReadError(
                f"{checkpoint_dir}: the model entry {key!r} is a pickled object, not a tensor; the official "
                "formats hold tensors only"
            )
        entries[key] = (dcp_key, entry)
    if not entries:
        raise CheckpointReadError(
            f"{checkpoint_dir} holds no model state ('state.model.*' entries): it is not a Composer checkpoint "
            "of a CosmosTransferModel"
        )
    return with_shared_ema_keys(entries)  # the EMA's shared (frozen) weights are stored once, under net.*


def model_state_metadata(checkpoint: Union[str, os.PathLike]) -> dict[str, TensorInfo]:
    """Shape and dtype of every model-state tensor (`net.*`, `net_ema.*`), read from `.metadata` only."""
    entries = _model_entries(find_checkpoint(checkpoint))
    return {key: TensorInfo(tuple(entry.size), entry.properties.dtype) for key, (_, entry) in entries.items()}


def read_composer_model_state(
    checkpoint: Union[str, os.PathLike],
    prefixes: Optional[Sequence[str]] = (NET_PREFIX, EMA_PREFIX),
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """The model state of a Composer sharded checkpoint, as CPU tensors: `{"net.<...>": t, "net_ema.<...>": t}`.

    The one place a Composer checkpoint's model state is read (export, generation, `base_load_path`).
    `checkpoint` is anything `find_checkpoint` accepts. Only the entries under `state.model.` whose key starts
    with one of `prefixes` are read (`("net_ema.",)` for the EMA alone, None for the whole model state); the
    optimizer state is never touched. Works with any number of ranks' shards, in a plain process: no process
    group is started or needed (it also works inside a process that has one). Tensors keep the dtype they
    were saved in (fp32 for our training). Keys are in the model's `state_dict()` order.
    """
    checkpoint_dir = find_checkpoint(checkpoint)
    entries = _model_entries(checkpoint_dir)
    if prefixes is not None:
        prefixes = tuple(prefixes)
        entries = {key: value for key, value in entries.items() if key.startswith(prefixes)}
        if not entries:
            raise CheckpointReadError(
                f"{checkpoint_dir}: the model state has no entries starting with {list(prefixes)}; it has "
                f"{prefix_summary(_model_entries(checkpoint_dir))}"
            )

    reader = safe_dcp_reader(checkpoint_dir)
    state: dict[str, torch.Tensor] = {}
    total = sum(_nbytes(entry) for _, entry in entries.values())
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"read {checkpoint_dir.name}", disable=not progress) as bar:
        for chunk in _chunks(list(entries.items()), _READ_CHUNK_BYTES):
            buffers = {dcp_key: torch.empty(entry.size, dtype=entry.properties.dtype) for _, (dcp_key, entry) in chunk}
            with warnings.catch_warnings(), _naming_unreadable_shards(checkpoint_dir, [key for _, (key, _) in chunk]):
                # dcp.load announces single-process loading even when no_dist=True is asked for explicitly.
                warnings.filterwarnings("ignore", message="torch.distributed is disabled")
                dcp.load(buffers, storage_reader=reader, no_dist=True)
            for key, (dcp_key, entry) in chunk:
                state[key] = buffers[dcp_key]
                bar.update(_nbytes(entry))
    return state


@contextlib.contextmanager
def _naming_unreadable_shards(checkpoint_dir: Path, dcp_keys: Sequence[str]) -> Iterator[None]:
    """A failed read of `dcp_keys` as one CheckpointReadError naming the shard file(s) they are in.

    torch raises a CheckpointException around whatever its reader hit (PytorchStreamReader, UnpicklingError with
    the advice to load with weights_only=False, which would run code from the file): neither names the file.
    A refused pickle (UnsafePickleError) keeps its own message.
    """
    try:
        yield
    except BaseException as error:  # noqa: BLE001 - CheckpointException is a BaseException
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
        refused = unsafe_pickle_in(error)
        if refused is not None:
            raise CheckpointReadError(str(refused)) from None
        if isinstance(error, FileNotFoundError) or _cause_of(error, FileNotFoundError):
            missing = _cause_of(error, FileNotFoundError) or error
            raise CheckpointReadError(
                f"{missing.filename or checkpoint_dir} was deleted while it was read (a run's "
                "save_num_checkpoints_to_keep rotation?). Pass a newer checkpoint of the run"
            ) from None
        wanted = set(dcp_keys)
        storage = read_dcp_metadata(checkpoint_dir).storage_data or {}
        files = sorted({info.relative_path for index, info in storage.items() if index.fqn in wanted})
        names = ", ".join(str(checkpoint_dir / name) for name in files) or str(checkpoint_dir)
        raise CheckpointReadError(
            f"{names} cannot be read as the tensors its {METADATA_FILE} indexes ({_root_cause_name(error)}): the "
            f"file is corrupt or the {METADATA_FILE} belongs to another checkpoint, and there is no "
            f"{CHECKSUMS_FILE} to tell. Pass an earlier checkpoint of the run"
        ) from None


def _failures(error: BaseException) -> list[BaseException]:
    """`error` and what it wraps: its causes, and each rank's error inside torch's CheckpointException."""
    found, pending, seen = [], [error], set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        pending += [current.__cause__, current.__context__]
        pending += [failure[0] for failure in (getattr(current, "failures", None) or {}).values()]
    return found


def _cause_of(error: BaseException, kind: type) -> Optional[BaseException]:
    return next((failure for failure in _failures(error) if isinstance(failure, kind)), None)


def _root_cause_name(error: BaseException) -> str:
    """The innermost error's type (never its text: torch's may advise unpickling with weights_only=False)."""
    return type(_failures(error)[-1]).__name__


def _nbytes(entry: TensorStorageMetadata) -> int:
    return entry.size.numel() * entry.properties.dtype.itemsize


def _chunks(items: list, max_bytes: int) -> Iterable[list]:
    chunk, size = [], 0
    for item in items:
        chunk.append(item)
        size += _nbytes(item[1][1])
        if size >= max_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def prefix_summary(keys: Iterable[str]) -> str:
    """`"12 'net.*' keys, 12 'net_ema.*' keys"`: what a model state holds, for messages."""
    counts: dict[str, int] = {}
    for key in keys:
        prefix = key.split(".", 1)[0] + "."
        counts[prefix] = counts.get(prefix, 0) + 1
    return ", ".join(f"{count} '{prefix}*' keys" for prefix, count in counts.items())


def lora_settings(checkpoint_dir: Path, keys: Iterable[str]) -> Optional[LoraSettings]:
    """The LoRA settings of a checkpoint whose model state carries adapters (`keys`), as its network.json
    records them (`lora`); None when it carries none. Adapters without recorded settings cannot be merged:
    a CheckpointReadError."""
    if not has_adapters(keys):
        return None
    recorded = find_network_config(checkpoint_dir)  # verified against the checksums, like every other reader
    if recorded is None or recorded.lora is None:
        raise CheckpointReadError(
            f"{checkpoint_dir} holds LoRA adapters but its {NETWORK_FILE} records no LoRA settings (alpha, rank); "
            "it was not written by a LoRA run of cosmos-composer. Fix: restore the network.json its LoRA run saved "
            "in the checkpoint folder"
        )
    return LoraSettings.of(recorded.lora)
