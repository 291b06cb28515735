"""Running train.py the way a user does, in a subprocess with its own output root and no credentials."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "yamls" / "quickstart.yaml"


def load_script(name: str):
    """The module of ``scripts/<name>.py`` (the scripts are files, not a package), imported afresh."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses of the script resolve their module by name
    spec.loader.exec_module(module)
    return module


def train_env(root: Path, **extra: str) -> dict:
    """The environment of a test run: outputs under `root`, no W&B or HF credentials, unbuffered output."""
    env = dict(os.environ)
    env["COSMOS_OUTPUT_ROOT"] = str(root / "out")
    for key in ("WANDB_API_KEY", "WANDB_MODE", "HF_TOKEN", "HF_HUB_CACHE", "HF_HOME", "RANK", "WORLD_SIZE"):
        env.pop(key, None)
    env["NETRC"] = str(root / "no-netrc")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_train(args, root: Path, yaml: Path = QUICKSTART, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    """`python train.py <yaml> <args>` in `root`."""
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), str(yaml), *map(str, args)],
        cwd=root,
        env=train_env(root, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextlib.contextmanager
def moto_s3(monkeypatch, secret_key: str = "testing"):
    """moto's S3 server on loopback, emptied, with credentials and its endpoint in the environment (read by
    Composer's S3ObjectStore and Streaming's downloader alike); yields the endpoint URL."""
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # moto keeps its buckets per process, not per server: start from none
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).close()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("S3_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    try:
        yield endpoint
    finally:
        server.stop()


def free_port() -> int:
    """A TCP port on loopback that nothing listens on (for a test's process group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fingerprint_module(module) -> str:
    """`fingerprint_tensors` over a module's parameters, named relative to it (`0.weight` for `module[0]`)."""
    from cosmos_composer.fingerprint import fingerprint_tensors

    return fingerprint_tensors(module.named_parameters())


def write_hf_cache(cache: Path, repo_id: str, commits: dict, refs: dict, repo_type: str = "model") -> Path:
    """The hub cache layout: blobs by sha256, snapshot symlinks per commit, refs/<branch> -> commit."""
    repo_dir = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    for commit, files in commits.items():
        for relpath, data in files.items():
            blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = repo_dir / "snapshots" / commit / relpath
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    for ref, commit in refs.items():
        ref_file = repo_dir / "refs" / ref
        ref_file.parent.mkdir(parents=True, exist_ok=True)
        ref_file.write_text(commit)
    return repo_dir


def use_offline_hf_cache(monkeypatch, home: Path) -> Path:
    """Point huggingface_hub at the cache `home`/hub with HF_HUB_OFFLINE=1; returns the cache folder."""
    from huggingface_hub import constants

    cache = home / "hub"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads these at import; patch its constants too, as a fresh process would have them.
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def flip_bytes(path: Path, offset: int = 64, count: int = 4096) -> None:
    """Invert `count` bytes of a file from `offset`: a corrupted file of the same size."""
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(count)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))
