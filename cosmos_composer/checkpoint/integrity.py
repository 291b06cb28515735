"""Checksums of checkpoint files: written with every checkpoint and export, verified before they are read.

A checkpoint folder (`ep{E}-ba{B}/`: the `.distcp` shards and `.metadata`) or an export folder holds
`checksums.json`: `{"algorithm": "sha256", "files": {name: {"bytes": n, "sha256": hex}}}`. A single-file Composer
checkpoint (`ep{E}-ba{B}-rank0.pt`, one process without FSDP) gets `<name>.checksums.json` beside it.
Flipped bytes, a truncated shard or a file of another save then fail verification, naming the file, instead of
loading as garbage weights. Checkpoints written before checksums existed (or by a run killed between the save and
its checksums) have none; they are read as before, and the reader says that they were not verified.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Optional, Union

from tqdm import tqdm

from ..config_file import atomic_write_text

CHECKSUMS_FILE = "checksums.json"
ALGORITHM = "sha256"
_PROGRESS_FROM_BYTES = 1 << 30  # a progress bar only where hashing takes seconds


class ChecksumMismatch(RuntimeError):
    """A checkpoint file is not the one its save wrote (corrupt, truncated or replaced)."""


def checksums_path(checkpoint: Union[str, os.PathLike]) -> Path:
    """Where the checksums of `checkpoint` (a folder or a single file) are kept."""
    checkpoint = Path(checkpoint)
    return (
        checkpoint / CHECKSUMS_FILE
        if checkpoint.is_dir()
        else checkpoint.with_name(checkpoint.name + ".checksums.json")
    )


def file_digest(path: Union[str, os.PathLike]) -> dict:
    """`{"bytes": size, "sha256": hex digest}` of one file."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, ALGORITHM).hexdigest()
    return {"bytes": os.path.getsize(path), ALGORITHM: digest}


def write_checksums(checkpoint: Union[str, os.PathLike], files: dict[str, dict], source: Optional[str] = None) -> Path:
    """Write `{name: file_digest(...)}` for `checkpoint` (atomically: a reader never sees half a file).

    `source`: where the files came from (an export names its checkpoint)."""
    manifest = {"algorithm": ALGORITHM, **({"source": source} if source else {}), "files": dict(sorted(files.items()))}
    return atomic_write_text(checksums_path(checkpoint), json.dumps(manifest, indent=1))


def digests_of(folder: Union[str, os.PathLike], names: Iterable[str]) -> dict[str, dict]:
    return {name: file_digest(Path(folder) / name) for name in names}


def verify_checksums(checkpoint: Union[str, os.PathLike], only: Optional[Iterable[str]] = None) -> bool:
    """Check `checkpoint`'s files against its checksums: True when verified, False when it has none.

    `only` limits the check to some of the listed files (the file that is about to be read); when none of
    them is listed, nothing is verified (False). Raises ChecksumMismatch naming the first file that is
    missing, of another size or of another content.
    """
    checkpoint = Path(checkpoint)
    manifest_file = checksums_path(checkpoint)
    if not manifest_file.is_file():
        return False
    try:
        listed = json.loads(manifest_file.read_text())["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise ChecksumMismatch(f"{manifest_file} is unreadable ({error}): the checkpoint cannot be verified") from None
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    names = sorted(listed) if only is None else [name for name in only if name in listed]
    if not names:
        return False
    total = sum(listed[name]["bytes"] for name in names)
    with tqdm(
        total=total, unit="B", unit_scale=True, desc=f"verify {checkpoint.name}", disable=total < _PROGRESS_FROM_BYTES
    ) as bar:
        for name in names:
            expected, path = listed[name], folder / name
            if not path.is_file():
                raise ChecksumMismatch(f"{path} is missing (it is listed in {manifest_file.name})")
            size = path.stat().st_size
            if size != expected["bytes"]:
                raise ChecksumMismatch(f"{path} has {size} bytes, but its save wrote {expected['bytes']}")
            if file_digest(path)[ALGORITHM] != expected[ALGORITHM]:
                raise ChecksumMismatch(f"{path} does not match the {ALGORITHM} its save wrote: the file is corrupt")
            bar.update(size)
    return True


def checksum_problem(checkpoint: Union[str, os.PathLike]) -> Optional[str]:
    """Why `checkpoint` fails its checksums, or None (verified, or written without checksums)."""
    try:
        verify_checksums(checkpoint)
    except ChecksumMismatch as error:
        return str(error)
    return None


def listed_files_problem(folder: Union[str, os.PathLike]) -> Optional[str]:
    """The first file that `folder`'s checksums list but that is missing or of another size (no hashing:
    cheap), or None. For a folder whose files were checked before and might have been deleted since."""
    manifest_file = checksums_path(folder)
    try:
        listed = json.loads(manifest_file.read_text())["files"]
    except (ValueError, KeyError, TypeError) as error:
        return f"{manifest_file} is unreadable ({error})"
    for name, expected in sorted(listed.items()):
        path = Path(folder) / name
        if not path.is_file():
            return f"{path.name} is missing (it is listed in {manifest_file.name})"
        if path.stat().st_size != expected["bytes"]:
            return f"{path.name} has {path.stat().st_size} bytes, but its save wrote {expected['bytes']}"
    return None
