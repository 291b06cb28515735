"""Conversion at scale: parts shared out over the processes of a launch, merged into one dataset, and resumed
after a kill. Read back with Streaming's own reader."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
from helpers import load_script, train_env
from streaming import StreamingDataset

from cosmos_composer.data import mds
from cosmos_composer.data.convert import KILL_AFTER_PARTS_ENV, ConversionError, convert_to_mds
from cosmos_composer.data.dataset import TransferStreamingDataset
from cosmos_composer.data.demo import make_demo_dataset
from cosmos_composer.data.launch import Launch, StoppedByAnotherRank

ROOT = Path(__file__).resolve().parents[1]
CONVERT = ROOT / "scripts" / "convert_to_mds.py"
F, H, W = 5, 32, 48
NAMES = [f"demo_{index:04d}" for index in range(6)]  # parts of 2: (0, 1), (2, 3), (4, 5)
BROKEN = ("demo_0001", "demo_0003")  # one in part 0 (rank 0's), one in part 1 (rank 1's)


convert_script = load_script("convert_to_mds")


def break_video(root: Path, name: str) -> Path:
    path = root / "videos" / "ftheta_camera_rear_left_70fov" / f"{name}.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    return path


@pytest.fixture(scope="module")
def clean_source(tmp_path_factory) -> Path:
    """6 multiview samples."""
    root = tmp_path_factory.mktemp("parallel") / "clean"
    make_demo_dataset(root, "multiview-hdmap", samples=len(NAMES), frames=F, height=H, width=W, seed=0, progress=False)
    return root


@pytest.fixture(scope="module")
def source(clean_source, tmp_path_factory) -> Path:
    """The 6 samples, two of them (BROKEN) with an undecodable video."""
    root = Path(shutil.copytree(clean_source, tmp_path_factory.mktemp("parallel") / "source"))
    for name in BROKEN:
        break_video(root, name)
    return root


def argv(source: Path, output: Path, *extra: str) -> list[str]:
    return [
        "--layout", "multiview-hdmap", "--input", str(source), "--output", str(output),
        "--min-frames", str(F), "--part-samples", "2", "--no-progress", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory) -> Path:
    """An uninterrupted 1-process conversion."""
    output = tmp_path_factory.mktemp("reference") / "mds"
    assert convert_script.main(argv(source, output, "--skip-invalid")) == 0
    return output


def rows(folder: Path) -> list[dict]:
    """Every sample, in order, read with Streaming's own dataset."""
    dataset = StreamingDataset(local=str(folder), shuffle=False, batch_size=1)
    found = [dataset[index] for index in range(len(dataset))]
    del dataset
    return found


def assert_same_dataset(folder: Path, expected: Path) -> None:
    """Same root index (so the same parts and shards) and the same samples, names and mp4 bytes, in the same order."""
    assert json.loads((folder / "index.json").read_text()) == json.loads((expected / "index.json").read_text())
    found, wanted = rows(folder), rows(expected)
    assert [row[mds.SAMPLE_NAME] for row in found] == [name for name in NAMES if name not in BROKEN]
    assert [row[mds.SAMPLE_NAME] for row in found] == [row[mds.SAMPLE_NAME] for row in wanted]
    for row, other in zip(found, wanted):
        mp4_columns = [column for column in row if column.startswith(("video_", "control_hdmap_bbox_"))]
        assert len(mp4_columns) == 14 and all(row[column] == other[column] for column in mp4_columns)


def files_of(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every file under ``folder``, by relative path."""
    return {
        str(path.relative_to(folder)): (path.stat().st_ino, path.stat().st_mtime_ns)
        for path in folder.rglob("*")
        if path.is_file()
    }


def test_two_processes_write_the_same_dataset_as_one_and_resume_after_a_kill(source, reference, tmp_path):
    output, logs = tmp_path / "mds", tmp_path / "logs"
    logs.mkdir()
    composer = Path(sys.executable).with_name("composer")
    launch = [str(composer), "-n", "2", "--stdout", f"{logs}/rank{{rank}}.out", "--stderr", f"{logs}/rank{{rank}}.err"]
    command = [*launch, str(CONVERT), *argv(source, output, "--skip-invalid")]
    # Killed: each rank dies (SIGKILL) after its first part (or is stopped by the launcher when the other dies
    # first), so part 2 is never finished and part 0 or 1 or both are.
    killed = subprocess.run(
        command, env=train_env(tmp_path, **{KILL_AFTER_PARTS_ENV: "1"}), capture_output=True, text=True, timeout=300
    )
    assert killed.returncode != 0, killed.stdout + killed.stderr
    staging = tmp_path / ".mds.staging"
    assert not output.exists() and "part-00002" not in {p.name for p in staging.iterdir()}
    finished = {part.name: files_of(part) for part in staging.glob("part-*")}
    assert finished, sorted(p.name for p in staging.iterdir())

    # The same command resumes, keeping the finished parts, and gives what one uninterrupted process gives.
    result = subprocess.run(command, env=train_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"resuming: [12] of 3 parts already converted", result.stderr), result.stderr
    for name, files in finished.items():
        after = files_of(output / name)  # the part's record (part.json) is gone, its shards kept untouched
        assert set(after) == {"index.json", "shard.00000.mds"} and after == {path: files[path] for path in after}
    # Rank 0 prints one summary covering both ranks' samples, including the sample rank 1 left out.
    assert result.stdout.count("Wrote 4 of 6 samples") == 1 and "with 2 processes" in result.stdout
    assert "Skipped 2 of 6 samples" in result.stdout and all(f"sample '{n}'" in result.stdout for n in BROKEN)

    assert_same_dataset(output, reference)
    assert sorted(path.name for path in output.iterdir()) == ["index.json", "part-00000", "part-00001", "part-00002"]
    assert sorted(path.name for path in (output / "part-00001").iterdir()) == ["index.json", "shard.00000.mds"]
    assert not (tmp_path / ".mds.staging").exists()
    dataset = TransferStreamingDataset(local=str(output), num_frames=F, height=H, width=W, shuffle=False)
    assert dataset[3]["sample_name"] == "demo_0005"


def test_a_killed_conversion_resumes_keeping_its_finished_parts(source, reference, tmp_path, capsys, caplog):
    output = tmp_path / "mds"
    killed = subprocess.run(
        [sys.executable, str(CONVERT), *argv(source, output, "--skip-invalid")],
        env={**os.environ, KILL_AFTER_PARTS_ENV: "1"},
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -9, killed.stderr
    staging = tmp_path / ".mds.staging"
    assert not output.exists() and sorted(p.name for p in staging.iterdir()) == ["conversion.json", "part-00000"]
    part = files_of(staging / "part-00000")

    with caplog.at_level(logging.INFO, logger="cosmos_composer"):
        assert convert_script.main(argv(source, output, "--skip-invalid")) == 0
    assert "resuming: 1 of 3 parts already converted" in caplog.text
    after = files_of(output / "part-00000")
    assert set(after) == {"index.json", "shard.00000.mds"}
    assert after == {path: part[path] for path in after}  # the same files, untouched: not written again
    summary = capsys.readouterr().out
    assert "Wrote 4 of 6 samples" in summary and "Converted 4 samples in" in summary
    assert "2 were converted by an earlier run" in summary
    # The sample the killed run left out (in part 0) is still reported.
    assert "Skipped 2 of 6 samples" in summary and "sample 'demo_0001'" in summary
    assert_same_dataset(output, reference)
    assert not staging.exists() and not (output / "conversion.json").exists()


def test_a_rerun_with_other_options_does_not_reuse_parts(clean_source, tmp_path, capsys, caplog):
    clean = Path(shutil.copytree(clean_source, tmp_path / "input"))
    path = break_video(clean, "demo_0005")  # in part 2: parts 0 and 1 are finished when it stops the conversion
    output, staging = tmp_path / "mds", tmp_path / ".mds.staging"
    assert convert_script.main(argv(clean, output)) == 1
    assert str(path) in capsys.readouterr().err
    finished = files_of(staging)
    assert sorted({name.split("/")[0] for name in finished}) == ["conversion.json", "part-00000", "part-00001"]

    assert convert_script.main(argv(clean, output, "--min-frames", "4", "--skip-invalid")) == 1
    err = capsys.readouterr().err
    assert f"{staging} holds 2 finished parts" in err and "min_frames was 5, now 4" in err and "--overwrite" in err
    assert files_of(staging) == finished  # refused: nothing touched

    (staging / "part-00000" / "marker").write_text("a reused part would keep this file")
    with caplog.at_level(logging.INFO, logger="cosmos_composer"):
        assert convert_script.main(argv(clean, output, "--min-frames", "4", "--skip-invalid", "--overwrite")) == 0
    assert "discarding 2 finished parts" in caplog.text and "resuming" not in caplog.text
    assert not (output / "part-00000" / "marker").exists()
    redone = files_of(output)
    assert all(redone[name] != finished[name] for name in finished if name.endswith(".mds"))  # written again
    assert "Wrote 5 of 6 samples" in capsys.readouterr().out


@pytest.mark.parametrize("failure", ["invalid sample on rank 1", "output not empty"])
def test_an_error_on_one_rank_stops_both_and_rank_zero_raises_it(clean_source, tmp_path, failure):
    """Two ranks of one launch, as threads sharing an in-process store (the launch's TCPStore stands in)."""
    source = Path(shutil.copytree(clean_source, tmp_path / "input"))
    broken = break_video(source, "demo_0003")  # in part 1, rank 1's
    output = tmp_path / "mds"
    if failure == "output not empty":
        output.mkdir()
        (output / "old.txt").write_text("x")
    store, raised = dist.HashStore(), {}

    def rank(number: int) -> None:
        try:
            convert_to_mds(
                source, output, "multiview-hdmap", min_frames=F, part_samples=2, progress=False,
                launch=Launch(rank=number, world_size=2, store=store),
            )  # fmt: skip
        except Exception as error:  # noqa: BLE001 - the test looks at what each rank raised
            raised[number] = error

    threads = [threading.Thread(target=rank, args=(number,)) for number in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a rank hangs"
    assert isinstance(raised[1], StoppedByAnotherRank)
    if failure == "output not empty":
        assert isinstance(raised[0], FileExistsError) and "already exists and is not empty" in str(raised[0])
    else:
        assert isinstance(raised[0], ConversionError) and f"sample 'demo_0003': {broken}" in str(raised[0])
        assert "--skip-invalid" in str(raised[0])
    assert not output.joinpath("index.json").exists()
    # Rank 0's finished parts (however far it got) are kept for a rerun; rank 1's failed part is not.
    assert not (tmp_path / ".mds.staging" / "part-00001").exists()
