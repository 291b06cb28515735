"""Checkpoints on an object store: `save_folder: s3://bucket/prefix` (or another store Composer 0.32 uploads to).

Composer saves each checkpoint into a local staging folder and uploads it (`ep{E}-ba{B}/.metadata` and the
`__{rank}_0.distcp` shards, or `ep{E}-ba{B}-rank0.pt`) under the prefix. Here, the rest of what makes a
checkpoint ours goes up beside it: `network.json` and `checksums.json` (`upload_beside`, from
callbacks/checkpoint_checksums.py); resume and export list the bucket, download a checkpoint into a local
folder and verify it there (`download_newest_intact`, `download_checkpoint`), so the rules of
`composer_checkpoint.why_not_intact` hold for a bucket exactly as for a local folder.

Credentials come from the environment only (boto3's chain: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE,
...; S3_ENDPOINT_URL for an S3-compatible store), and no message here ever holds them. Composer 0.32 never
deletes checkpoints from a store, so `save_num_checkpoints_to_keep` must stay -1 there (the bucket's lifecycle
rules do that job).
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from composer.utils import maybe_create_object_store_from_uri, parse_uri
from composer.utils.object_store import ObjectStore
from tqdm import tqdm

from .composer_checkpoint import CHECKPOINT_NAME, UNFINISHED, NewestCheckpoint, why_not_intact
from .integrity import CHECKSUMS_FILE, checksums_path
from .network_config import NETWORK_FILE, network_config_path
from .run_record import RUN_FILE
from .safe_pickle import METADATA_FILE

# Files of a checkpoint that Composer uploads itself; everything else its checksums list is ours to upload.
COMPOSER_UPLOADS = (METADATA_FILE, ".distcp", "-rank0.pt")
# What a single-file checkpoint's sidecars end with: `<name>.checksums.json`, `<name>.network.json`, `<name>.run.json`.
_SIDECARS = (f".{CHECKSUMS_FILE}", f".{NETWORK_FILE}", f".{RUN_FILE}")
CREDENTIALS_HELP = (
    "credentials come from the environment: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), "
    "and S3_ENDPOINT_URL for an S3-compatible store"
)


class ObjectStoreError(RuntimeError):
    """An object-store URI cannot be used or read; the message names the URI and the fix (never a credential)."""


def is_object_store(path: Union[str, os.PathLike, None]) -> bool:
    """Whether `path` is an object-store URI (`s3://...`) rather than a local path."""
    return path is not None and parse_uri(str(path))[0] != ""


@dataclass(frozen=True)
class StoreFolder:
    """A "folder" of an object store: the store and the key prefix under which its objects lie."""

    uri: str
    store: ObjectStore
    prefix: str  # keys start with `prefix/` ("" for the bucket's root)

    @classmethod
    def of(cls, uri: str) -> "StoreFolder":
        try:
            store = maybe_create_object_store_from_uri(uri)
        except Exception as error:  # noqa: BLE001 - an unknown scheme or a missing client library
            raise ObjectStoreError(f"{uri}: {type(error).__name__}: {error}") from None
        return cls(uri.rstrip("/"), store, parse_uri(uri)[2].strip("/"))

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def objects(self) -> list[str]:
        """The keys under the prefix, relative to it; an ObjectStoreError naming the URI when it cannot be listed."""
        try:
            keys = self.store.list_objects(self.key(""))
        except Exception as error:  # noqa: BLE001 - botocore raises many kinds; none of them carries a secret
            raise ObjectStoreError(
                f"{self.uri} cannot be listed ({type(error).__name__}: {error}); check that the bucket exists and "
                f"that this user may list and write it; {CREDENTIALS_HELP}"
            ) from None
        start = len(self.key(""))
        return [key[start:] for key in keys]


# ---------------------------------------------------------------------------------------------------------------
# The checkpoints in a store
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class StoredCheckpoint:
    name: str  # `ep{E}-ba{B}` (a sharded folder) or `ep{E}-ba{B}-rank0.pt`
    batch: int
    epoch: int
    files: list[str]  # object names relative to the prefix: `ep0-ba2/.metadata`, `ep0-ba2-rank0.pt.checksums.json`

    @property
    def sharded(self) -> bool:
        return not self.name.endswith(".pt")

    def why_not_complete(self) -> Optional[str]:
        """What the listing alone shows missing: the index (an unfinished upload) or the checksums."""
        names = {Path(file).name for file in self.files}
        if self.sharded and METADATA_FILE not in names:
            return UNFINISHED
        summed = CHECKSUMS_FILE in names if self.sharded else any(name.endswith(_SIDECARS[0]) for name in names)
        if not summed:
            return f"no {CHECKSUMS_FILE}: its upload did not finish"
        return None


def stored_checkpoints(folder: StoreFolder) -> list[StoredCheckpoint]:
    """Every checkpoint under `folder`, newest first (by batch, then epoch), each with its objects."""
    grouped: dict[str, list[str]] = defaultdict(list)
    for relative in folder.objects():
        first = relative.split("/", 1)[0]
        if "/" not in relative:  # a single-file checkpoint, or a sidecar of one: `<name>.checksums.json`
            first = next((first[: -len(suffix)] for suffix in _SIDECARS if first.endswith(suffix)), first)
        grouped[first].append(relative)
    found = []
    for name, files in grouped.items():
        match = CHECKPOINT_NAME.match(name)
        if match:
            found.append(StoredCheckpoint(name, int(match["batch"]), int(match["epoch"]), sorted(files)))
    return sorted(found, key=lambda checkpoint: (checkpoint.batch, checkpoint.epoch), reverse=True)


def check_reachable(uri: str, may_hold_checkpoints: bool) -> None:
    """List `uri` once, so that a missing bucket or missing credentials fail before the model is built; and,
    unless `may_hold_checkpoints`, refuse a store that holds checkpoints (Composer would fail at the end of the
    run, refusing to upload over them)."""
    found = stored_checkpoints(StoreFolder.of(uri))
    if found and not may_hold_checkpoints:
        names = ", ".join(checkpoint.name for checkpoint in found[:3]) + (", ..." if len(found) > 3 else "")
        raise ObjectStoreError(
            f"{uri} holds checkpoints ({names}) and autoresume=false: this run would write over them. Set "
            "autoresume=true to continue that run, save_overwrite=true to replace them, or another save_folder"
        )


def download_files(folder: StoreFolder, checkpoint: StoredCheckpoint, into: Path, progress: bool = True) -> Path:
    """Download `checkpoint`'s objects into `into` (replacing an earlier copy); the local checkpoint path."""
    local = into / checkpoint.name
    if local.is_dir():
        shutil.rmtree(local)
    for relative in tqdm(checkpoint.files, desc=f"download {checkpoint.name}", unit="file", disable=not progress):
        try:
            folder.store.download_object(folder.key(relative), into / relative, overwrite=True)
        except Exception as error:  # noqa: BLE001 - a vanished object, a network error, a full disk
            raise ObjectStoreError(
                f"{folder.uri}/{relative} cannot be downloaded into {into} ({type(error).__name__}: {error})"
            ) from None
    return local


def download_newest_intact(uri: str, into: Path, progress: bool = True) -> NewestCheckpoint:
    """The newest checkpoint under `uri` whose download passes `why_not_intact` (checksums verified), downloaded
    into `into`; each newer one left out is named with the reason (and its download removed)."""
    folder = StoreFolder.of(uri)
    into.mkdir(parents=True, exist_ok=True)
    candidates = stored_checkpoints(folder)
    newest = NewestCheckpoint(found=len(candidates))
    for checkpoint in candidates:
        why = checkpoint.why_not_complete()
        if why is None:
            local = download_files(folder, checkpoint, into, progress)
            why = _in_store_terms(why_not_intact(local, verify=True), local, folder, checkpoint)
            if why is None:
                newest.path, newest.batch = local, checkpoint.batch
                break
            _remove(local)
        newest.skipped[checkpoint.name] = why
    return newest


def download_checkpoint(uri: str, into: Path, progress: bool = True) -> Path:
    """The checkpoint `uri` names (`.../ep{E}-ba{B}`), or the newest intact one under it (a checkpoints prefix),
    downloaded into `into` and verified against its checksums; an ObjectStoreError naming what is wrong."""
    parent, _, name = uri.rstrip("/").rpartition("/")
    if CHECKPOINT_NAME.match(name):
        folder = StoreFolder.of(parent)
        checkpoint = next((found for found in stored_checkpoints(folder) if found.name == name), None)
        if checkpoint is None:
            raise ObjectStoreError(f"{uri} holds no checkpoint. Pass a checkpoint or the checkpoints prefix")
        why = checkpoint.why_not_complete()
        if why is None:
            local = download_files(folder, checkpoint, into, progress)
            why = _in_store_terms(why_not_intact(local, verify=True), local, folder, checkpoint)
        if why is not None:
            raise ObjectStoreError(f"{uri} is not intact ({why}). Pass an earlier checkpoint of the run")
        return local
    newest = download_newest_intact(uri, into, progress)
    if newest.path is None:
        listing = "; ".join(f"{name}: {why}" for name, why in newest.skipped.items())
        raise ObjectStoreError(
            f"{uri} holds no intact checkpoint" + (f" ({listing})" if listing else "") + ". Pass a checkpoint prefix"
        )
    return newest.path


def _in_store_terms(
    why: Optional[str], local: Path, folder: StoreFolder, checkpoint: StoredCheckpoint
) -> Optional[str]:
    """`why_not_intact`'s answer about a download, naming the object in the store rather than the local copy."""
    return None if why is None else why.replace(str(local), f"{folder.uri}/{checkpoint.name}")


def _remove(local: Path) -> None:
    if local.is_dir():
        shutil.rmtree(local, ignore_errors=True)
    for path in (local, checksums_path(local), network_config_path(local)):
        if path.is_file():
            path.unlink()


# ---------------------------------------------------------------------------------------------------------------
# Uploading what we add to a checkpoint
# ---------------------------------------------------------------------------------------------------------------


def upload_beside(saver, saved: Path, listed: list[str]) -> None:
    """Upload the files of a just-saved checkpoint that Composer does not upload itself: `checksums.json` and
    what it lists beyond Composer's files (`network.json`), through the saver's own uploader (so its `fit_end`
    waits for them too). `saved`: the local sharded folder or single file; `listed`: the names its checksums list.

    The local staging copy is removed afterwards (the uploader has copied each file already); Composer would
    otherwise keep every checkpoint of the run on the local disk."""
    remote_folder = parse_uri(saver.remote_uploader.remote_folder)[2].strip("/")
    remote_parent = f"{remote_folder}/" if remote_folder else ""
    if saved.is_dir():
        ours = [name for name in listed if not name.endswith(COMPOSER_UPLOADS)] + [CHECKSUMS_FILE]
        uploads = {saved / name: f"{remote_parent}{saved.name}/{name}" for name in ours}
    else:
        sidecars = [saved.parent / name for name in listed if name != saved.name] + [checksums_path(saved)]
        uploads = {path: f"{remote_parent}{path.name}" for path in sidecars}
    for path, key in uploads.items():
        saver.remote_uploader.upload_file_async(remote_file_name=key, file_path=path, overwrite=True)
    _remove(saved)
