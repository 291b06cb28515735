"""hf:// URIs: parsing, resolution from a pre-populated local HF cache with HF_HUB_OFFLINE=1 (revision
pins, branches, folders, whole repos), and the messages for 401/403, gated repos and cache misses.

No test touches the network: the cache is written by hand in the hub layout
(`models--org--repo/{blobs,snapshots/<commit>,refs/<branch>}`), the Hub's HTTP errors are simulated,
and every socket connection attempt fails the test.
"""

import os
import socket
from pathlib import Path

import huggingface_hub
import pytest
import requests
from helpers import use_offline_hf_cache, write_hf_cache
from huggingface_hub import constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)

from cosmos_composer.checkpoint import hf
from cosmos_composer.checkpoint.hf import HfResolveError, HfUri, is_hf_uri, parse_hf_uri, resolve

REPO = "nvidia/Cosmos-Transfer2.5-2B"
OLD = "a" * 40
NEW = "b" * 40
FILE = "auto/multiview/4ecc66e9_ema_bf16.pt"


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def online(monkeypatch):
    """HF_HUB_OFFLINE unset and the Hub taken as reachable (the downloads themselves are simulated)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf, "hub_reachable", lambda: True)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch, no_network):
    """A local HF cache with two commits of the repo, HF_HOME pointed at it, HF_HUB_OFFLINE=1."""
    cache = use_offline_hf_cache(monkeypatch, tmp_path / "hf_home")
    write_hf_cache(
        cache,
        REPO,
        commits={
            OLD: {FILE: b"old weights", "README.md": b"old"},
            NEW: {
                FILE: b"new weights",
                "README.md": b"new",
                "ckpt/ep0-ba2/.metadata": b"m",
                "ckpt/ep0-ba2/__0_0.distcp": b"d",
            },
        },
        refs={"main": NEW, "v1.0": OLD, "diffusers/general": OLD},
    )
    return cache


# ----------------------------------------------------------------------------- parsing
def test_parse_hf_uri():
    assert parse_hf_uri(f"hf://{REPO}/{FILE}") == HfUri(REPO, FILE, None)
    assert parse_hf_uri(f"hf://{REPO}/{FILE}@{OLD}") == HfUri(REPO, FILE, OLD)
    assert parse_hf_uri(f"hf://{REPO}@diffusers/general") == HfUri(REPO, None, "diffusers/general")
    assert parse_hf_uri(f"hf://{REPO}/") == HfUri(REPO, None, None)
    assert parse_hf_uri("hf://datasets/org/data/a/b.json@v2") == HfUri("org/data", "a/b.json", "v2", "dataset")
    for uri in (f"hf://{REPO}/{FILE}@{OLD}", "hf://datasets/org/data/a/b.json@v2", f"hf://{REPO}"):
        assert str(parse_hf_uri(uri)) == uri
    for bad in ("hf://nvidia", f"hf://{REPO}/x.pt@", "hf://", "/local/path.pt"):
        with pytest.raises(ValueError):
            parse_hf_uri(bad)
    assert is_hf_uri("hf://a/b") and not is_hf_uri("/a/b") and not is_hf_uri(Path("a/b"))


def test_local_paths_pass_through(tmp_path):
    assert resolve(tmp_path / "x.pt") == str(tmp_path / "x.pt")
    assert resolve("~/x.pt") == os.path.expanduser("~/x.pt")


def test_malformed_uri_is_an_hf_resolve_error():
    with pytest.raises(HfResolveError, match="expected hf://"):
        resolve("hf://only-org")


# ----------------------------------------------------------------------------- offline cache
def test_offline_resolution_from_the_cache_with_revision_pins(offline_cache):
    read = lambda uri: Path(resolve(uri)).read_bytes()  # noqa: E731
    assert read(f"hf://{REPO}/{FILE}") == b"new weights"  # main
    assert read(f"hf://{REPO}/{FILE}@main") == b"new weights"
    assert read(f"hf://{REPO}/{FILE}@{OLD}") == b"old weights"  # pinned commit
    assert read(f"hf://{REPO}/{FILE}@v1.0") == b"old weights"  # tag
    assert read(f"hf://{REPO}/{FILE}@diffusers/general") == b"old weights"  # branch with a slash
    path = resolve(f"hf://{REPO}/{FILE}@{OLD}")
    assert path.startswith(str(offline_cache)) and f"snapshots/{OLD}/" in path
    # Reused: the same cached file every time.
    assert resolve(f"hf://{REPO}/{FILE}@{OLD}") == path


def test_offline_whole_repo_and_folder(offline_cache):
    snapshot = Path(resolve(f"hf://{REPO}@{OLD}"))
    assert snapshot.name == OLD and (snapshot / "README.md").read_bytes() == b"old"
    assert Path(resolve(f"hf://{REPO}")).name == NEW
    # A folder of the repo (a Composer sharded checkpoint) resolves to the folder.
    folder = Path(resolve(f"hf://{REPO}/ckpt/ep0-ba2"))
    assert folder.is_dir() and sorted(p.name for p in folder.iterdir()) == [".metadata", "__0_0.distcp"]


def test_offline_cache_miss_explains_what_to_do(offline_cache):
    with pytest.raises(HfResolveError) as info:
        resolve(f"hf://{REPO}/general/edge/missing.pt")
    message = str(info.value)
    assert "not in the local Hugging Face cache" in message and str(offline_cache) in message
    assert "HF_HUB_OFFLINE=1" in message and "hf download" in message
    with pytest.raises(HfResolveError, match="not in the local Hugging Face cache"):
        resolve(f"hf://{REPO}/{FILE}@no-such-branch")
    with pytest.raises(HfResolveError, match="not in the local Hugging Face cache"):
        resolve(f"hf://{REPO}/{FILE}@{'c' * 40}")
    with pytest.raises(HfResolveError, match="not in the local Hugging Face cache"):
        resolve("hf://nvidia/not-cached")


def test_offline_env_var_set_after_import_is_honoured(offline_cache, monkeypatch):
    # A process that set HF_HUB_OFFLINE=1 after importing huggingface_hub: constants say online.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert hf.offline()
    assert Path(resolve(f"hf://{REPO}/{FILE}@{OLD}")).read_bytes() == b"old weights"  # no_network holds
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not hf.offline()


# ----------------------------------------------------------------------------- Hub errors (simulated)
def _response(status: int) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.url = f"https://huggingface.co/{REPO}/resolve/main/{FILE}"
    response.headers["X-Error-Code"] = "GatedRepo" if status in (401, 403) else "EntryNotFound"
    return response


def _raise_from_download(monkeypatch, error: Exception):
    calls = []

    def fake(**kwargs):
        calls.append(kwargs)
        raise error

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    return calls


def _chained(status: int) -> LocalEntryNotFoundError:
    """What huggingface_hub raises for a 403 that is not a gated-repo error: a cache miss from the 403."""
    try:
        raise HfHubHTTPError("403 Forbidden", response=_response(status))
    except HfHubHTTPError as cause:
        try:
            raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub") from cause
        except LocalEntryNotFoundError as error:
            return error


@pytest.mark.parametrize(
    "make_error",
    [
        lambda: GatedRepoError("401 Client Error. Cannot access gated repo", response=_response(401)),
        lambda: GatedRepoError("403 Client Error. Access restricted", response=_response(403)),
        lambda: HfHubHTTPError("401 Unauthorized", response=_response(401)),
        lambda: HfHubHTTPError("403 Forbidden", response=_response(403)),
        lambda: RepositoryNotFoundError("401 Client Error. Repository Not Found", response=_response(401)),
        lambda: _chained(403),
    ],
    ids=["gated-401", "gated-403", "http-401", "http-403", "repo-not-found-401", "cache-miss-from-403"],
)
def test_401_403_say_to_login_and_accept_the_license(monkeypatch, no_network, online, make_error):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
    calls = _raise_from_download(monkeypatch, make_error())
    uri = f"hf://{REPO}/{FILE}@{NEW}"
    with pytest.raises(HfResolveError) as info:
        resolve(uri)
    message = str(info.value)
    assert "`hf auth login`" in message
    assert "license" in message and f"https://huggingface.co/{REPO}" in message
    assert uri in message
    assert "hf_secret_token_value" not in message
    assert calls[0]["repo_id"] == REPO and calls[0]["filename"] == FILE and calls[0]["revision"] == NEW
    assert calls[0]["local_files_only"] is False


def test_whole_repo_401_is_explained_too(monkeypatch, no_network, online):
    _raise_from_download(monkeypatch, GatedRepoError("gated", response=_response(401)))
    with pytest.raises(HfResolveError, match="hf auth login"):
        resolve("hf://nvidia/Cosmos-Reason1-7B@" + NEW)


def test_missing_file_online_is_not_called_an_auth_problem(monkeypatch, no_network, online):
    _raise_from_download(monkeypatch, EntryNotFoundError("404 Client Error", response=_response(404)))
    with pytest.raises(HfResolveError) as info:
        resolve(f"hf://{REPO}/nope.pt")
    assert "'nope.pt' does not exist in " + REPO in str(info.value)
    assert "hf auth login" not in str(info.value)


# ----------------------------------------------------------------------------- Hub unreachable
def _closed_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on exit: a connect is refused at once


def test_unreachable_hub_fails_at_once_from_the_cache_instead_of_retrying(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_loopback_port()}")
    assert hf.hub_reachable() is False

    calls = []
    real_download = huggingface_hub.hf_hub_download

    def recording(**kwargs):
        calls.append(kwargs)
        return real_download(**kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", recording)
    with pytest.raises(HfResolveError) as info:
        resolve(f"hf://{REPO}/{FILE}@{NEW}")
    assert "not in the local Hugging Face cache" in str(info.value) and "could not be reached" in str(info.value)
    assert [call["local_files_only"] for call in calls] == [True]  # no online attempt, so no retries


def test_unreachable_hub_still_serves_cached_files_and_branches(offline_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf, "hub_reachable", lambda: False)
    assert Path(resolve(f"hf://{REPO}/{FILE}@{OLD}")).read_bytes() == b"old weights"
    assert Path(resolve(f"hf://{REPO}/{FILE}")).read_bytes() == b"new weights"  # main, from refs/main
