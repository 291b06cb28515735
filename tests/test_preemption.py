"""Preemption through Composer's launcher: a stop signal saves a checkpoint at the batch in flight, the run says so
in one line and exits 75, and the same command resumes from that batch; errors every rank meets alike show once.

The quickstart on 2 processes over 12 samples (6 batches an epoch) with `callbacks.data_log`, whose
data_log.jsonl names the samples of every batch trained: the record of what was trained twice or never.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from helpers import QUICKSTART, REPO, train_env
from streaming import MDSWriter
from streaming.base.format import reader_from_json

from cosmos_composer.callbacks.preemption import PREEMPTED_EXIT_CODE
from cosmos_composer.checkpoint.integrity import verify_checksums

RUN = ("out", "cosmos_composer", "quickstart", "quickstart")
SAMPLES = 12
MAX_BATCHES = 8  # an epoch of 6 batches and 2 of the next
SAVE_INTERVAL = 5  # never the batch a launch below is stopped at (1 to 4)


@pytest.fixture
def twelve_samples(demo_mds, tmp_path) -> Path:
    """12 samples with cached latents: the 4 of `demo_mds` written 3 times under new names, 4 to a shard."""
    index = json.loads((demo_mds / "index.json").read_text())
    shard = index["shards"][0]
    columns = dict(zip(shard["column_names"], shard["column_encodings"]))
    readers = [reader_from_json(str(demo_mds), None, shard) for shard in index["shards"]]
    rows = [reader[i] for reader in readers for i in range(reader.samples)]
    out = tmp_path / "data" / "twelve_mds"
    size_limit = sum(shard["raw_data"]["bytes"] for shard in index["shards"])  # all 4 of one copy in a shard
    with MDSWriter(out=str(out), columns=columns, hashes=shard["hashes"], size_limit=size_limit) as writer:
        for number in range(SAMPLES):
            writer.write({**rows[number % len(rows)], "sample_name": f"demo_{number:04d}"})
    return out


def _launch(root: Path, mds: Path, args: tuple) -> subprocess.Popen:
    command = [
        os.path.join(os.path.dirname(sys.executable), "composer"),
        "-n",
        "2",
        # Rank 1's console into files that the test reads (the launcher prints them only after a crash).
        "--stdout",
        str(root / "rank{rank}.stdout.txt"),
        "--stderr",
        str(root / "rank{rank}.stderr.txt"),
        str(REPO / "train.py"),
        str(QUICKSTART),
        f"train_loader.dataset.local={mds}",
        "eval_loader=null",
        "callbacks.sample_videos=null",
        "callbacks.data_log={}",
        f"max_duration={MAX_BATCHES}ba",
        f"save_interval={SAVE_INTERVAL}ba",
        "console_log_interval=1ba",
        *args,
    ]
    return subprocess.Popen(
        command,
        cwd=root,
        env=train_env(root),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal gives a foreground job
    )


def _run(root: Path, mds: Path, *stops, args: tuple = ()) -> tuple[int, str]:
    """Launch with `args` added; call `stops[i](launcher)` when the (i+1)th batch is logged. The exit code and the whole output,
    rank 1's console included."""
    launcher = _launch(root, mds, args)
    stops, lines = list(stops), []
    try:
        for line in launcher.stdout:
            lines.append(line)
            if stops and re.match(r"\[batch=\d+/", line):
                stops.pop(0)(launcher)
        launcher.wait(timeout=300)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    rank1 = "".join(path.read_text() for path in sorted(root.glob("rank1.std*.txt")))
    for path in root.glob("rank1.std*.txt"):
        path.unlink()  # the next launch appends
    return launcher.returncode, "".join(lines) + rank1


def _sigterm_to_rank(rank: int):
    """What SLURM does at a job's time limit, to one of the tasks: SIGTERM."""

    def stop(launcher: subprocess.Popen) -> None:
        for process in psutil.Process(launcher.pid).children():
            with contextlib.suppress(psutil.NoSuchProcess):  # it may have saved and exited already
                if process.environ().get("RANK") == str(rank):
                    process.send_signal(signal.SIGTERM)

    return stop


def _ctrl_c(launcher: subprocess.Popen) -> None:
    """What Ctrl-C does: SIGINT to the foreground process group, the launcher and its ranks."""
    os.killpg(launcher.pid, signal.SIGINT)


def _preempted_at(output: str, signal_name: str) -> int:
    lines = [line for line in output.splitlines() if "preempted by" in line]
    assert len(lines) == 1, output[-3000:]  # once, from global rank 0
    found = re.fullmatch(
        rf"preempted by {signal_name} at batch (\d+): saved ep0-ba(\d+); run the same command again to resume",
        lines[0],
    )
    assert found and found[1] == found[2], lines[0]
    return int(found[1])


def _assert_quiet(output: str, launcher_tracebacks: int = 0) -> None:
    """No traceback from the ranks (the launcher's own SystemExit one, when it got the signal, is Composer's),
    no shared memory leaked, no rank's console printed again by the launcher."""
    assert output.count("Traceback") == launcher_tracebacks, output[-3000:]
    assert output.count("composer/cli/launcher.py") >= launcher_tracebacks
    assert "leaked shared_memory" not in output and "SharedMemory" not in output
    assert "Begin global rank" not in output


def test_preempted_runs_resume_at_the_batch_they_stopped(tmp_path, twelve_samples):
    folder = tmp_path.joinpath(*RUN)

    # SIGTERM to every rank as SLURM sends it, here a batch apart: the ranks must agree on the batch to stop at.
    code, output = _run(tmp_path, twelve_samples, _sigterm_to_rank(1), _sigterm_to_rank(0))
    assert code == PREEMPTED_EXIT_CODE, output[-3000:]
    first_stop = _preempted_at(output, "SIGTERM")
    assert first_stop % SAVE_INTERVAL != 0  # saved because of the signal, not the interval
    _assert_quiet(output)
    saved = folder / "checkpoints" / f"ep0-ba{first_stop}"
    assert (saved / "network.json").is_file()
    listed = json.loads((saved / "checksums.json").read_text())["files"]
    assert set(listed) == {path.name for path in saved.iterdir() if path.name != "checksums.json"}
    assert verify_checksums(saved)

    # Ctrl-C: the launcher gets SIGINT too, prints Composer's SystemExit traceback and sends its ranks SIGTERM.
    code, output = _run(tmp_path, twelve_samples, _ctrl_c)
    assert code == PREEMPTED_EXIT_CODE, output[-3000:]
    assert f"autoresume: resuming from ep0-ba{first_stop} " in output
    second_stop = _preempted_at(output, "SIGINT")
    assert first_stop < second_stop < MAX_BATCHES and second_stop % SAVE_INTERVAL != 0
    _assert_quiet(output, launcher_tracebacks=1)
    assert "SystemExit: 130" in output

    code, output = _run(tmp_path, twelve_samples)
    assert code == 0, output[-3000:]
    assert f"autoresume: resuming from ep0-ba{second_stop} " in output

    trained = [json.loads(line) for line in (folder / "data_log.jsonl").read_text().splitlines()]
    assert [entry["batch"] for entry in trained] == list(range(1, MAX_BATCHES + 1))  # none twice, none skipped
    epoch0 = [name for entry in trained if entry["epoch"] == 0 for name in entry["samples"]]
    assert sorted(epoch0) == [f"demo_{number:04d}" for number in range(SAMPLES)]


def test_a_config_error_on_two_processes_shows_once(tmp_path, demo_mds):
    """Every rank refuses the config alike: the line shows once, and rank 1's console is not printed again."""
    code, output = _run(tmp_path, demo_mds, args=("global_train_batch_size=3",))
    assert code == 1, output[-3000:]
    assert output.count("config error: global_train_batch_size=3 is not divisible") == 1, output[-3000:]
    assert "Begin global rank" not in output and "Traceback" not in output
