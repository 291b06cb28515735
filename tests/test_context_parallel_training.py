"""Training with context_parallel_size=2 through the real launchers logs the numbers of one process.

The reference is the same quickstart config on one process (`python train.py`, FSDP2 on one rank, so the
frozen weights are stored as in the CP run). Against it: a 2-process CP=2 run, a CP=2 run killed with -9
and resumed, and a CP=2 run over two Composer launchers ("nodes") on loopback, whose checkpoint is then
exported. Each of the two "nodes" gets its own /dev/shm (a user-namespace tmpfs), as real nodes have:
Streaming keeps its per-node state there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from helpers import QUICKSTART, REPO, free_port, run_train, train_env

RUN = ("out", "cosmos_composer", "quickstart", "quickstart")
ONE_PROCESS_TOLERANCE = 1e-4  # the bound; measured about 2e-7 (summation order of the split attention)
RESUME_TOLERANCE = 1e-6


def _args(demo_mds) -> list[str]:
    return [
        f"train_loader.dataset.local={demo_mds}",
        f"eval_loader.dataset.local={demo_mds}",
        "max_duration=6ba",
        "save_interval=2ba",
        "eval_interval=6ba",
        "callbacks.sample_videos.every_n_batches=6",
        "console_log_interval=1ba",
        "progress_bar=false",
        "log_to_console=true",
    ]


def _composer(root, args, processes: int = 2, launcher: tuple = ()) -> list[str]:
    return [
        os.path.join(os.path.dirname(sys.executable), "composer"),
        *launcher,
        "-n",
        str(processes),
        str(REPO / "train.py"),
        str(QUICKSTART),
        *args,
    ]


def _losses(root) -> dict:
    """{(step, metric): value} of every loss in the run's metrics.jsonl."""
    found = {}
    for line in root.joinpath(*RUN, "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key.startswith(("loss/", "metrics/eval/")):
                found[(record["step"], key)] = value
    return found


def _assert_close(found: dict, expected: dict, tolerance: float) -> None:
    assert found.keys() == expected.keys()
    worst = max(abs(found[k] - expected[k]) / abs(expected[k]) for k in expected)
    assert worst < tolerance, f"relative difference {worst:.2e}"


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, demo_mds):
    root = tmp_path_factory.mktemp("cp1")
    result = run_train(_args(demo_mds), root)
    assert result.returncode == 0, result.stderr[-3000:]
    return _losses(root)


@pytest.fixture(scope="module")
def context_parallel(tmp_path_factory, demo_mds):
    root = tmp_path_factory.mktemp("cp2")
    result = subprocess.run(
        _composer(root, [*_args(demo_mds), "context_parallel_size=2"]),
        cwd=root,
        env=train_env(root),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(root.joinpath(*RUN, "samples", "ba6").glob("*.mp4")), "the sample callback ran under CP"
    return _losses(root)


def test_cp2_logs_the_losses_of_one_process(one_process, context_parallel):
    assert sum(key[1] == "loss/train/total" for key in one_process) == 6
    _assert_close(context_parallel, one_process, ONE_PROCESS_TOLERANCE)


def test_cp2_killed_and_resumed_continues_exactly(tmp_path, demo_mds, context_parallel):
    # A checkpoint at batch 3 is mid-epoch (2 batches per epoch): the loader resumes inside an epoch.
    args = [*_args(demo_mds), "context_parallel_size=2", "save_interval=3ba"]
    run = subprocess.Popen(
        _composer(tmp_path, args),
        cwd=tmp_path,
        env=train_env(tmp_path),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        for line in run.stdout:
            if "[batch=5/6]" in line:  # the batch-3 checkpoint is written; batch 5 is under way
                break
        else:
            raise AssertionError("the run ended before batch 5")
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    resumed = subprocess.run(
        _composer(tmp_path, args), cwd=tmp_path, env=train_env(tmp_path), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "autoresume: resuming from ep1-ba3" in resumed.stdout
    _assert_close(_losses(tmp_path), context_parallel, RESUME_TOLERANCE)


def _unshare_works() -> bool:
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs tmpfs /dev/shm"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="needs unprivileged user namespaces for a per-node /dev/shm")
def test_cp2_over_two_launchers_on_loopback_trains_and_exports(tmp_path, demo_mds, context_parallel):
    port = free_port()
    nodes = []
    for node in (0, 1):
        launcher = (
            "--world_size",
            "2",
            "--node_rank",
            str(node),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(port),
        )
        command = _composer(tmp_path, [*_args(demo_mds), "context_parallel_size=2"], processes=1, launcher=launcher)
        (tmp_path / f"tmp{node}").mkdir()
        env = train_env(tmp_path, TMPDIR=str(tmp_path / f"tmp{node}"))  # Streaming's lock files are per node too
        node_shell = 'mount -t tmpfs tmpfs /dev/shm && exec "$@"'
        nodes.append(
            subprocess.Popen(
                ["unshare", "-rm", "sh", "-c", node_shell, "node", *command],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    _assert_close(_losses(tmp_path), context_parallel, RESUME_TOLERANCE)

    exported = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "export_checkpoint.py"),
            str(tmp_path.joinpath(*RUN, "checkpoints")),
            str(tmp_path / "exported"),
            "--verify",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "verified" in exported.stdout and "-ba6" in exported.stdout
