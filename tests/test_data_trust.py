"""The converter and the MDS data path lose no data silently: killed conversions are cleaned up, mismatched
resolutions and empty captions are reported, a full disk is named, and shards are hashed and checked."""

from __future__ import annotations

import errno
import json
import logging
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import free_port, train_env
from streaming import MDSWriter
from streaming.base.format import reader_from_json

from cosmos_composer.data import dataset as dataset_module
from cosmos_composer.data import mds
from cosmos_composer.data.convert import convert_to_mds
from cosmos_composer.data.dataset import ShardError, TransferStreamingDataset
from cosmos_composer.data.demo import make_demo_dataset
from cosmos_composer.data.output import DiskFullError, partial_dir_prefix, raise_if_disk_full
from cosmos_composer.data.video import probe_video, write_mp4

ROOT = Path(__file__).resolve().parents[1]
CONVERT = ROOT / "scripts" / "convert_to_mds.py"
FRONT = "ftheta_camera_front_wide_120fov"
SMALL = dict(num_frames=9, height=64, width=96)
FIRST_SHARD = "part-00000/shard.00000.mds"  # the converter writes its shards in part folders


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trust") / "multiview"
    make_demo_dataset(root, "multiview-hdmap", samples=3, frames=9, height=64, width=96, seed=0, progress=False)
    return root


@pytest.fixture
def multiview(source, tmp_path) -> Path:
    """A private, modifiable copy of the demo dataset."""
    return Path(shutil.copytree(source, tmp_path / "input"))


@pytest.fixture(scope="module")
def converted(source, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("converted") / "mds"
    convert_to_mds(source, output, "multiview-hdmap", min_frames=9, progress=False)
    return output


def convert_cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CONVERT), *map(str, args)], capture_output=True, text=True, **kwargs)


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)


def stored_rows(folder: Path) -> list[dict]:
    """The samples of a converted folder, read with Streaming's shard reader (no StreamingDataset)."""
    index = json.loads((folder / "index.json").read_text())
    readers = [reader_from_json(str(folder), None, shard) for shard in index["shards"]]
    return [reader[i] for reader in readers for i in range(reader.samples)]


# -- partial folders ------------------------------------------------------------------------------


def test_a_killed_conversions_partial_folder_is_removed_by_the_next_one(multiview, tmp_path, caplog):
    output = tmp_path / "mds"
    killed = run_python(
        "import os, sys\n"
        "from cosmos_composer.data.output import atomic_output_dir\n"
        f"with atomic_output_dir({str(output)!r}) as temp:\n"
        "    (temp / 'shard.00000.mds').write_bytes(b'half a shard')\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    [left] = tmp_path.glob(".mds.partial-*")
    live = subprocess.Popen(["sleep", "60"])
    try:
        of_live = tmp_path / f"{partial_dir_prefix(output, pid=live.pid)}x1"
        of_other_host = tmp_path / f"{partial_dir_prefix(output, host='elsewhere', pid=2**22 + 1)}x2"
        of_live.mkdir(), of_other_host.mkdir()
        with caplog.at_level(logging.INFO, logger="cosmos_composer"):
            convert_to_mds(multiview, output, "multiview-hdmap", min_frames=9, progress=False)
        assert not left.exists()
        assert of_live.is_dir() and of_other_host.is_dir()  # a live conversion, and one we cannot check
        [line] = [r.getMessage() for r in caplog.records if "partial folder" in r.getMessage()]
        assert left.name in line and str(output) in line
    finally:
        live.kill()
        live.wait()


# -- resolution -----------------------------------------------------------------------------------


def small_camera_video(root: Path) -> tuple[Path, str]:
    path = root / "videos" / "ftheta_camera_rear_left_70fov" / "demo_0001.mp4"
    write_mp4(path, np.full((9, 32, 48, 3), 90, np.uint8), fps=10)
    return path, "video of camera camera_rear_left_70fov is 32x48 (height x width), but the sample's videos are 64x96"


def large_control_video(root: Path) -> tuple[Path, str]:
    path = root / "control_input_hdmap_bbox" / FRONT / "demo_0001.mp4"
    write_mp4(path, np.full((9, 128, 192, 3), 90, np.uint8), fps=10)
    return path, "control video of camera camera_front_wide_120fov is 128x192 (height x width), but the sample's"


@pytest.mark.parametrize("breakage", [small_camera_video, large_control_video], ids=lambda f: f.__name__)
def test_a_file_at_another_resolution_is_refused_naming_it_and_the_fix(multiview, tmp_path, breakage):
    path, problem = breakage(multiview)
    output = tmp_path / "mds"
    result = convert_cli("--layout", "multiview-hdmap", "--input", multiview, "--output", output, "--min-frames", 9)
    assert result.returncode == 1
    assert "sample 'demo_0001'" in result.stderr and str(path) in result.stderr and problem in result.stderr
    assert "Fix:" in result.stderr and "--resize" in result.stderr
    assert not output.exists() and not list(tmp_path.glob(".mds.*"))


def test_resize_stores_the_file_at_the_sample_resolution_and_reports_it(multiview, tmp_path, caplog):
    path, _ = small_camera_video(multiview)
    output = tmp_path / "mds"
    with caplog.at_level(logging.INFO, logger="cosmos_composer"):
        report = convert_to_mds(multiview, output, "multiview-hdmap", min_frames=9, resize=True, progress=False)
    assert "Resized 1 files to their sample's video resolution (--resize):" in report.summary()
    assert f"{path}: 32x48 -> 64x96" in report.summary()
    assert [r.getMessage() for r in caplog.records if "resizing" in r.getMessage()] == [
        f"sample 'demo_0001': resizing {path}: 32x48 -> 64x96 (--resize)"
    ]
    row = stored_rows(output)[1]
    stored = probe_video(row[mds.video_column("camera_rear_left_70fov")])
    assert (stored.height, stored.width, stored.num_frames, stored.fps) == (64, 96, 9, 10.0)
    assert (
        row[mds.video_column("camera_front_wide_120fov")]
        == (multiview / "videos" / FRONT / "demo_0001.mp4").read_bytes()
    )  # the others are stored unchanged


# -- captions -------------------------------------------------------------------------------------


def test_an_empty_caption_is_kept_with_a_warning_and_counted(multiview, tmp_path, caplog):
    caption = multiview / "captions" / FRONT / "demo_0002.json"
    caption.write_text('{"caption": "  \\n "}')
    with caplog.at_level(logging.WARNING, logger="cosmos_composer"):
        report = convert_to_mds(multiview, tmp_path / "mds", "multiview-hdmap", min_frames=9, progress=False)
    assert report.written == ["demo_0000", "demo_0001", "demo_0002"]
    assert "1 samples have an empty caption" in report.summary() and str(caption) in report.summary()
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "sample 'demo_0002'" in warning.getMessage() and str(caption) in warning.getMessage()


# -- full disk ------------------------------------------------------------------------------------


def test_a_full_disk_is_named_with_the_free_space_and_leaves_nothing(multiview, tmp_path):
    """The real CLI writing into a 128 KiB tmpfs (the shard is ~270 KiB), in a user namespace."""
    disk = tmp_path / "disk"
    disk.mkdir()
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=128k tmpfs {disk}"])
    if probe.returncode != 0:
        pytest.skip("unprivileged user namespaces with tmpfs are not available here")
    script = f'mount -t tmpfs -o size=128k tmpfs {disk} && "$@"; rc=$?; echo "left: $(ls -A {disk})"; exit $rc'
    argv = ["--layout", "multiview-hdmap", "--input", multiview, "--output", disk / "mds", "--min-frames", 9]
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", sys.executable, str(CONVERT), *map(str, argv)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1, result.stderr
    assert f"error: no space left on device while writing {disk / 'mds'}: " in result.stderr
    assert f"free on {disk}; free space or choose another --output" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.strip().endswith("left:")  # no partial folder on the full disk


def test_disk_full_detection(tmp_path, monkeypatch):
    def raised(inner: BaseException) -> BaseException:
        try:
            try:
                raise inner
            except BaseException as error:
                raise RuntimeError("One of the threads failed") from error
        except RuntimeError as outer:
            return outer

    def free(size: int) -> None:
        monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=10**12, used=0, free=size))

    free(10**12)
    with pytest.raises(DiskFullError, match=f"while writing {tmp_path / 'x'}: 931.3 GiB free on /"):
        raise_if_disk_full(raised(OSError(errno.ENOSPC, "No space left on device")), tmp_path / "x")
    raise_if_disk_full(raised(OSError(errno.EACCES, "Permission denied")), tmp_path)  # not a full disk
    torch_error = raised(RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 704 vs 598"))
    raise_if_disk_full(torch_error, tmp_path)  # plenty of space: another problem
    free(4096)
    with pytest.raises(DiskFullError, match="4.0 KiB free"):
        raise_if_disk_full(torch_error, tmp_path)


# -- shard hashes and sizes -----------------------------------------------------------------------


def test_shards_record_sha1_and_xxh64(converted):
    for shard in json.loads((converted / "index.json").read_text())["shards"]:
        assert sorted(shard["raw_data"]["hashes"]) == ["sha1", "xxh64"]


def test_a_truncated_shard_is_named_before_training(converted, tmp_path):
    folder = Path(shutil.copytree(converted, tmp_path / "mds"))
    shard = folder / FIRST_SHARD
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[:1000])
    result = run_python(
        f"from cosmos_composer.data.dataset import TransferStreamingDataset\nTransferStreamingDataset(local={str(folder)!r})"
    )
    assert result.returncode == 1
    assert f"ShardError: shard file {shard} is 1000 bytes, but its index.json records {size} bytes" in result.stderr
    assert "Fix: convert the dataset again" in result.stderr and "download (copy) the shard again" in result.stderr


def corrupt(shard: Path) -> None:
    """Change bytes in the middle of a shard (inside an mp4), keeping its size."""
    data = bytearray(shard.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 16] = bytes(16)
    shard.write_bytes(bytes(data))


def test_a_corrupt_local_shard_fails_on_its_first_read_naming_it(converted, tmp_path):
    folder = Path(shutil.copytree(converted, tmp_path / "mds"))
    corrupt(folder / FIRST_SHARD)
    dataset = TransferStreamingDataset(local=str(folder), batch_size=1, **SMALL)
    assert [stream.validate_hash for stream in dataset.streams] == ["xxh64"]  # what Streaming checks on download
    with pytest.raises(ShardError, match=f"shard file {folder / FIRST_SHARD} is corrupt: its xxh64 hash"):
        dataset[0]


def test_a_shard_that_changes_after_it_was_hashed_is_hashed_again(converted, tmp_path, monkeypatch):
    hashed = []
    real_hash = dataset_module.get_hash
    monkeypatch.setattr(dataset_module, "get_hash", lambda *args: hashed.append(1) or real_hash(*args))
    folder = Path(shutil.copytree(converted, tmp_path / "mds"))
    dataset = TransferStreamingDataset(local=str(folder), batch_size=1, **SMALL)
    first = dataset[0]["sample_name"]  # hashes the shard: it is intact
    assert dataset[0]["sample_name"] == first and len(hashed) == 1  # read again, unchanged: not hashed again
    corrupt(folder / FIRST_SHARD)  # rewritten in place after the hash, at the same size
    with pytest.raises(ShardError, match=f"shard file {folder / FIRST_SHARD} is corrupt: its xxh64 hash"):
        dataset[0]


def _one_shard_per_sample(source: Path, output: Path) -> list[Path]:
    """`source`'s samples rewritten one per shard (Streaming's own writer, hashes as the converter records them)."""
    shard = json.loads((source / "index.json").read_text())["shards"][0]
    columns = dict(zip(shard["column_names"], shard["column_encodings"]))
    one_and_a_half_samples = 3 * shard["raw_data"]["bytes"] // (2 * shard["samples"])  # the samples are alike
    with MDSWriter(
        out=str(output), columns=columns, hashes=sorted(mds.SHARD_HASHES), size_limit=one_and_a_half_samples
    ) as writer:
        for row in stored_rows(source):
            writer.write(row)
    return sorted(output.glob("shard.*.mds"))


def test_a_corrupt_shard_read_by_one_of_two_ranks_stops_both_with_one_line_naming_it(demo_mds, tmp_path):
    shards = _one_shard_per_sample(demo_mds, tmp_path / "mds")
    assert len(shards) == 4
    corrupt(shards[3])  # read by one of the two ranks only
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("composer")),
            "-n",
            "2",
            str(ROOT / "train.py"),
            str(ROOT / "yamls" / "quickstart.yaml"),
            f"train_loader.dataset.local={tmp_path / 'mds'}",
            "train_loader.dataset.demo_if_missing=false",
            "train_loader.dataset.shuffle=false",
            "eval_loader=null",
            "callbacks.sample_videos=null",
            "save_interval=null",
            "max_duration=2ba",
        ],
        cwd=tmp_path,
        env=train_env(tmp_path, MASTER_PORT=str(free_port())),
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert re.search(
        rf"data error: rank [01] read shard file {re.escape(str(shards[3]))} is corrupt: its xxh64 hash is \w+, but "
        r"its index.json records \w+\. Fix: convert the dataset again",
        output,
    ), output[-3000:]
    assert "Connection closed" not in output and "Traceback" not in output, output[-3000:]


def test_a_corrupt_remote_shard_fails_on_download_naming_it(converted, tmp_path):
    remote = Path(shutil.copytree(converted, tmp_path / "remote"))
    corrupt(remote / FIRST_SHARD)
    result = run_python(
        "from cosmos_composer.data.dataset import TransferStreamingDataset\n"
        f"dataset = TransferStreamingDataset(remote={str(remote)!r}, local={str(tmp_path / 'cache')!r}, "
        "batch_size=1, num_frames=9, height=64, width=96)\n"
        "dataset[0]\n"
    )
    assert result.returncode == 1
    assert f"Checksum failure: {tmp_path / 'cache' / FIRST_SHARD}" in result.stderr


def test_a_dataset_without_hashes_stays_readable(converted, tmp_path, caplog):
    folder = Path(shutil.copytree(converted, tmp_path / "mds"))
    index = json.loads((folder / "index.json").read_text())
    for shard in index["shards"]:
        shard["raw_data"]["hashes"], shard["hashes"] = {}, []
    (folder / "index.json").write_text(json.dumps(index))
    with caplog.at_level(logging.INFO, logger="cosmos_composer"):
        dataset = TransferStreamingDataset(local=str(folder), batch_size=1, **SMALL)
    assert [r.getMessage() for r in caplog.records if "record no hash" in r.getMessage()] == [
        f"the shards of {folder} record no hash (converted before hashes were written), so they are not verified; "
        "convert again to have them verified"
    ]
    assert dataset[0]["sample_name"] == "demo_0000"
