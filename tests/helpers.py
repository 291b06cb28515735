"""Running train.py the way a user does, in a subprocess with its own output root and no credentials."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "yamls" / "quickstart.yaml"


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


def free_port() -> int:
    """A TCP port on loopback that nothing listens on (for a test's process group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fingerprint_module(module) -> str:
    """`fingerprint_tensors` over a module's parameters, named relative to it (`0.weight` for `module[0]`)."""
    from cosmos_composer.fingerprint import fingerprint_tensors

    return fingerprint_tensors(module.named_parameters())
