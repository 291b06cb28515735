"""`hf://[datasets/]org/repo[/path/in/repo][@revision]` URIs, resolved through huggingface_hub's normal cache.

- The cache is huggingface_hub's own (`HF_HUB_CACHE`, default `$HF_HOME/hub`); files already there are
  reused (a pinned commit is never re-checked online; a branch costs one HEAD request).
- `HF_HUB_OFFLINE=1` works from the cache alone and never touches the network. When the Hub cannot be
  reached (one TCP connect, 3 s at most), resolution works from the cache too and a miss fails at once. The variable is read at
  call time as well as at huggingface_hub's import, so setting it late (in a notebook) still works.
- `@revision` is a branch, a tag or a full commit hash; branches may contain `/`
  (`hf://nvidia/Cosmos-Transfer2.5-2B@diffusers/general`). The revision is everything after the last
  `@`, so a file name cannot contain `@`.
- No path in the repo: the whole repository (a snapshot folder, e.g. the text encoder). A path that
  names a folder of the repo (e.g. a Composer sharded checkpoint) resolves to that folder.
- 401/403 and gated repositories become a message saying to accept the model license and run
  `hf auth login`. Tokens are never printed.
- Local paths pass through unchanged (`~` expanded), so every place that takes an `hf://` URI also
  takes a path.

Several ranks may resolve the same URI at once: huggingface_hub downloads each file once under a file
lock in the cache, and the other ranks reuse it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

HF_PREFIX = "hf://"
_REPO_TYPE_PREFIXES = {"datasets": "dataset", "spaces": "space"}


class HfResolveError(RuntimeError):
    """An `hf://` URI could not be resolved to a local path (the message says why and what to do)."""


@dataclass(frozen=True)
class HfUri:
    repo_id: str
    filename: Optional[str]  # None: the whole repository (a snapshot folder)
    revision: Optional[str]
    repo_type: str = "model"

    def __str__(self) -> str:
        prefix = {v: k + "/" for k, v in _REPO_TYPE_PREFIXES.items()}.get(self.repo_type, "")
        path = prefix + self.repo_id + (f"/{self.filename}" if self.filename else "")
        return HF_PREFIX + path + (f"@{self.revision}" if self.revision else "")

    @property
    def web_url(self) -> str:
        prefix = {v: k + "/" for k, v in _REPO_TYPE_PREFIXES.items()}.get(self.repo_type, "")
        return f"https://huggingface.co/{prefix}{self.repo_id}"


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
    repo_type = "model"
    if parts and parts[0] in _REPO_TYPE_PREFIXES:
        repo_type = _REPO_TYPE_PREFIXES[parts.pop(0)]
    if len(parts) < 2:
        raise ValueError(f"{uri!r}: expected hf://[datasets/]<org>/<repo>[/<path>][@<revision>]")
    filename = "/".join(parts[2:]) or None
    return HfUri(repo_id="/".join(parts[:2]), filename=filename, revision=revision, repo_type=repo_type)


def offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub read it at import, or as the environment says now."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub endpoint opens (assumed so behind a proxy, which we cannot probe)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _http_status(error: BaseException) -> Optional[int]:
    """The HTTP status of `error` or of the error it was raised from (huggingface_hub chains them)."""
    seen = 0
    while error is not None and seen < 5:
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status is not None:
            return status
        error = error.__cause__ or error.__context__
        seen += 1
    return None


def _explain(uri: HfUri, error: Exception) -> HfResolveError:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    status = _http_status(error)
    login = (
        f"accept the model license at {uri.web_url} with your Hugging Face account, then run `hf auth login` "
        "(or set HF_TOKEN) on this machine with a token of that account"
    )
    if isinstance(error, GatedRepoError) or status in (401, 403):
        return HfResolveError(
            f"Hugging Face refused access to {uri} (HTTP {status or 'gated'}): the repository is gated or private. "
            f"To fix it, {login}, and run again."
        )
    if isinstance(error, RepositoryNotFoundError):
        return HfResolveError(
            f"Repository {uri.repo_id} was not found on Hugging Face ({uri}). Check the name; if it is private or "
            f"gated, {login}."
        )
    if isinstance(error, RevisionNotFoundError):
        return HfResolveError(f"Revision {uri.revision!r} of {uri.repo_id} does not exist ({uri})")
    if isinstance(error, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        # (LocalEntryNotFoundError is a subclass of EntryNotFoundError: test it first.)
        why = "HF_HUB_OFFLINE=1 is set" if offline() else "the Hub could not be reached"
        return HfResolveError(
            f"{uri} is not in the local Hugging Face cache ({_cache_dir()}) and {why}. Download it once with network "
            f"access (`hf download {uri.repo_id}{' ' + uri.filename if uri.filename else ''}"
            f"{' --revision ' + uri.revision if uri.revision else ''}`), or point HF_HOME / HF_HUB_CACHE at a cache "
            "that has it. A branch or tag revision needs its refs/ entry in the cache; a full commit hash does not."
        )
    if isinstance(error, EntryNotFoundError):
        return HfResolveError(
            f"{uri.filename!r} does not exist in {uri.repo_id} at revision {uri.revision or 'main'} ({uri})"
        )
    if isinstance(error, HFValidationError):
        return HfResolveError(f"{uri} is not a valid Hugging Face reference: {error}")
    if isinstance(error, HfHubHTTPError):
        return HfResolveError(f"Downloading {uri} failed (HTTP {status}): {error}")
    return HfResolveError(f"Resolving {uri} failed: {type(error).__name__}: {error}")


def _resolve_folder(uri: HfUri, local_only: bool) -> Optional[str]:
    """`uri.filename` as a folder of the repo (e.g. a sharded checkpoint), or None if it is not one."""
    from huggingface_hub import snapshot_download

    try:
        snapshot = snapshot_download(
            repo_id=uri.repo_id,
            repo_type=uri.repo_type,
            revision=uri.revision,
            allow_patterns=[f"{uri.filename}/*"],
            local_files_only=local_only,
        )
    except Exception:  # noqa: BLE001 - the caller re-raises the original (file) error
        return None
    folder = os.path.join(snapshot, uri.filename)
    return folder if os.path.isdir(folder) and any(os.scandir(folder)) else None


def resolve(path_or_uri: str | os.PathLike) -> str:
    """A local path for `path_or_uri`: downloads into (or reads from) the HF cache for hf:// URIs."""
    if not is_hf_uri(path_or_uri):
        return os.path.expanduser(str(path_or_uri))
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        uri = parse_hf_uri(str(path_or_uri))
    except ValueError as error:
        raise HfResolveError(str(error)) from None
    # Unreachable Hub: answer from the cache at once, instead of huggingface_hub's ~25 s of retries.
    local_only = offline() or not hub_reachable()
    try:
        if uri.filename is None:
            return snapshot_download(
                repo_id=uri.repo_id, repo_type=uri.repo_type, revision=uri.revision, local_files_only=local_only
            )
        try:
            return hf_hub_download(
                repo_id=uri.repo_id,
                filename=uri.filename,
                repo_type=uri.repo_type,
                revision=uri.revision,
                local_files_only=local_only,
            )
        except EntryNotFoundError:
            folder = _resolve_folder(uri, local_only)
            if folder is not None:
                return folder
            raise
    except (OSError, ValueError) as error:  # HfHubHTTPError, LocalEntryNotFoundError, HFValidationError, ...
        raise _explain(uri, error) from error
