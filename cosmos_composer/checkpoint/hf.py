"""`hf://org/repo[/path/in/repo][@revision]` URIs, resolved through huggingface_hub's normal cache.

The cache is `HF_HOME` (or `HF_HUB_CACHE`) as usual, files already there are reused, and
`HF_HUB_OFFLINE=1` works from the cache alone. Local paths pass through unchanged, so every place
that takes an `hf://` URI also takes a path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

HF_PREFIX = "hf://"


@dataclass(frozen=True)
class HfUri:
    repo_id: str
    filename: Optional[str]  # None: the whole repository (a snapshot folder)
    revision: Optional[str]

    def __str__(self) -> str:
        path = self.repo_id + (f"/{self.filename}" if self.filename else "")
        return HF_PREFIX + path + (f"@{self.revision}" if self.revision else "")


def is_hf_uri(path: str | os.PathLike) -> bool:
    return str(path).startswith(HF_PREFIX)


def parse_hf_uri(uri: str) -> HfUri:
    if not is_hf_uri(uri):
        raise ValueError(f"{uri!r} is not an hf:// URI")
    body = uri[len(HF_PREFIX) :]
    revision = None
    if "@" in body:
        body, revision = body.rsplit("@", 1)
        if not revision:
            raise ValueError(f"{uri!r}: empty revision after '@'")
    parts = [p for p in body.split("/") if p]
    if len(parts) < 2:
        raise ValueError(f"{uri!r}: expected hf://<org>/<repo>[/<file>][@<revision>]")
    filename = "/".join(parts[2:]) or None
    return HfUri(repo_id="/".join(parts[:2]), filename=filename, revision=revision)


def _explain(uri: HfUri, error: Exception) -> RuntimeError:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, GatedRepoError) or status in (401, 403) or isinstance(error, RepositoryNotFoundError):
        return RuntimeError(
            f"Access to {uri} was refused (HTTP {status or 'auth'}). Run `hf auth login` with a token of an account "
            f"that has accepted the model license on https://huggingface.co/{uri.repo_id}, or set HF_TOKEN."
        )
    if isinstance(error, RevisionNotFoundError):
        return RuntimeError(f"Revision {uri.revision!r} of {uri.repo_id} does not exist ({uri})")
    if isinstance(error, EntryNotFoundError):
        return RuntimeError(f"{uri.filename!r} does not exist in {uri.repo_id} at revision {uri.revision or 'main'}")
    if isinstance(error, LocalEntryNotFoundError):
        return RuntimeError(
            f"{uri} is not in the local Hugging Face cache ({_cache_dir()}) and the Hub cannot be reached "
            "(HF_HUB_OFFLINE=1 or no network). Download it once online, or point HF_HOME at a cache that has it."
        )
    if isinstance(error, HfHubHTTPError):
        return RuntimeError(f"Downloading {uri} failed: {error}")
    return RuntimeError(f"Resolving {uri} failed: {error}")


def _cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def resolve(path_or_uri: str | os.PathLike) -> str:
    """A local path for `path_or_uri`: downloads into (or reads from) the HF cache for hf:// URIs."""
    if not is_hf_uri(path_or_uri):
        return str(path_or_uri)
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    uri = parse_hf_uri(str(path_or_uri))
    try:
        if uri.filename is None:
            return snapshot_download(repo_id=uri.repo_id, revision=uri.revision)
        return hf_hub_download(repo_id=uri.repo_id, filename=uri.filename, revision=uri.revision)
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as error:
        raise _explain(uri, error) from error
