"""Read checkpoint files without ever running code from them.

Three places in a Composer checkpoint are pickles, and torch 2.7 / Composer 0.32.1 unpickle all three with the
full `pickle` module, so a crafted file runs any code it likes when it is loaded:
- the `.metadata` index of a sharded (DCP) folder: `pickle.load` in torch's `FileSystemReader.read_metadata`
  (torch/distributed/checkpoint/filesystem.py);
- the non-tensor entries inside the `.distcp` shards (step counters, RNG states, run name, ...):
  `torch.load(weights_only=False)` in `DefaultLoadPlanner.load_bytes` (torch/distributed/checkpoint/default_planner.py);
- a Composer `.pt` checkpoint (one process without FSDP): `torch.load(weights_only=False)` in
  `_torch_load_with_validation` (composer/utils/checkpoint.py).

Here the index is read with an unpickler that builds only the classes a DCP index is made of, and the other two
with `torch.load(weights_only=True)`, which builds only tensors, plain containers and the few extra types that
Composer's training state holds (listed below). `composer_loads_safely()` makes Composer's own checkpoint
loading take these paths while the Trainer is constructed (when Composer loads `load_path` and autoresumes).
A refused file raises `UnsafePickleError` naming the file and the class it held.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import io
import os
import pickle
import re
from pathlib import Path
from typing import IO, Any, Iterator, Optional, Union

import numpy as np
import torch

METADATA_FILE = ".metadata"

# Everything a DCP `.metadata` pickle of torch 2.7 refers to (found by tracing the classes of our own
# checkpoints): the index dataclasses, tensor properties, and the checkpoint id (a path).
_DCP_METADATA_CLASSES = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata",
        "MetadataIndex",
        "StorageMeta",
        "TensorProperties",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),  # turns a layout's name back into torch.strided, ...
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("collections", "OrderedDict"),
}

# Composer's training state beyond tensors and containers: NumPy's RNG state (a uint32 array), wall-clock
# durations of the timestamp, and the torch version in the metadata.
COMPOSER_STATE_GLOBALS = [
    np._core.multiarray._reconstruct,
    np.ndarray,
    np.dtype,
    np.dtypes.UInt32DType,
    datetime.timedelta,
    torch.torch_version.TorchVersion,
]


class UnsafePickleError(pickle.UnpicklingError):
    """A checkpoint file holds a pickled object that is not plain data; it was not loaded."""


class _DcpMetadataUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _DCP_METADATA_CLASSES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)  # dtypes pickle as torch.<name>
        raise UnsafePickleError(
            f"{self.source} was refused: it holds a pickled {module}.{name}, which a torch.distributed.checkpoint "
            "index never contains (unpickling it could run code). Use a checkpoint written by training"
        )


def read_dcp_metadata(folder: Union[str, os.PathLike]):
    """The `torch.distributed.checkpoint.metadata.Metadata` of a sharded checkpoint folder, read safely."""
    path = Path(folder) / METADATA_FILE
    with open(path, "rb") as f:
        return _DcpMetadataUnpickler(f, str(path)).load()


def unsafe_pickle_in(error: BaseException) -> Optional[UnsafePickleError]:
    """The refusal behind `error`: torch's checkpoint loading wraps each rank's error in a CheckpointException."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, UnsafePickleError):
            return error
        # CheckpointException (a BaseException): {rank: (error, stack)}
        for failure in (getattr(error, "failures", None) or {}).values():
            if isinstance(failure[0], UnsafePickleError):
                return failure[0]
        error = error.__cause__ or error.__context__
    return None


def _refused_class(error: Exception) -> str:
    """The class or function named in torch's weights_only refusal (or the refusal's first line)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # torch may colour its message
    match = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"but got <class '([^']+)'>", text)
    return match.group(1) if match else (text.splitlines() or [type(error).__name__])[0][:200]


def load_weights_only(
    file: Union[str, os.PathLike, IO[bytes]], source: str, map_location: Any = "cpu", mmap: bool = False
) -> Any:
    """`torch.load(weights_only=True)` that also accepts Composer's state types; a refusal names the class."""
    try:
        with torch.serialization.safe_globals(COMPOSER_STATE_GLOBALS):
            return torch.load(file, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        raise UnsafePickleError(
            f"{source} was refused: it holds a pickled {_refused_class(error)}, which a checkpoint of tensors and "
            "training state never contains (unpickling it could run code)"
        ) from None


@functools.cache
def _safe_reader_class():
    """Composer's validating DCP reader, reading the index and the non-tensor entries safely."""
    from composer.utils.checkpoint import FileSystemReaderWithValidation

    class SafeFileSystemReader(FileSystemReaderWithValidation):
        def read_metadata(self):
            metadata = read_dcp_metadata(self.path)
            # What torch's read_metadata also does: attach this load's id.
            from torch.distributed.checkpoint.metadata import StorageMeta

            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

        def read_data(self, plan, planner):
            source = str(self.path)

            def load_bytes(read_item, value: io.BytesIO) -> None:
                # DefaultLoadPlanner.load_bytes, with weights_only=True instead of False.
                from torch.distributed.checkpoint._traverse import set_element

                loaded = load_weights_only(value, f"{source} (entry {read_item.dest_index.fqn})")
                if planner.flatten_state_dict:
                    set_element(planner.original_state_dict, planner.mappings[read_item.dest_index.fqn], loaded)
                else:
                    planner.state_dict[read_item.dest_index.fqn] = loaded

            planner.load_bytes = load_bytes
            return super().read_data(plan, planner)

    return SafeFileSystemReader


def safe_dcp_reader(folder: Union[str, os.PathLike]):
    """A `torch.distributed.checkpoint` storage reader of `folder` that never runs pickled code."""
    return _safe_reader_class()(str(folder))


@contextlib.contextmanager
def composer_loads_safely() -> Iterator[None]:
    """While active, Composer reads checkpoints only through the safe readers above."""
    import composer.utils.checkpoint as composer_checkpoint

    def torch_load_with_validation(checkpoint_filepath, map_location: str):
        path = composer_checkpoint._ensure_valid_checkpoint(checkpoint_filepath)
        return load_weights_only(path, str(checkpoint_filepath), map_location)

    saved = (composer_checkpoint.FileSystemReaderWithValidation, composer_checkpoint._torch_load_with_validation)
    composer_checkpoint.FileSystemReaderWithValidation = _safe_reader_class()
    composer_checkpoint._torch_load_with_validation = torch_load_with_validation
    try:
        yield
    finally:
        composer_checkpoint.FileSystemReaderWithValidation, composer_checkpoint._torch_load_with_validation = saved
