"""Official layouts -> MDS shards: round trip through Streaming's reader, and every bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import load_script
from streaming import StreamingDataset

from cosmos_composer.data import mds
from cosmos_composer.data.cameras import DEFAULT_CAMERAS
from cosmos_composer.data.convert import ConversionError, convert_to_mds
from cosmos_composer.data.demo import make_demo_dataset
from cosmos_composer.data.video import write_mp4

SMALL = dict(samples=3, frames=9, height=64, width=96, progress=False)
FRONT = "ftheta_camera_front_wide_120fov"


convert_script = load_script("convert_to_mds")


@pytest.fixture(scope="module")
def demo_sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    make_demo_dataset(root / "multiview", "multiview-hdmap", seed=0, **SMALL)
    make_demo_dataset(root / "singleview", "singleview", seed=0, **SMALL)
    return {"multiview-hdmap": root / "multiview", "singleview": root / "singleview"}


@pytest.fixture
def multiview(demo_sources, tmp_path) -> Path:
    """A private, modifiable copy of the multiview demo dataset."""
    return Path(shutil.copytree(demo_sources["multiview-hdmap"], tmp_path / "input"))


@pytest.fixture
def singleview(demo_sources, tmp_path) -> Path:
    return Path(shutil.copytree(demo_sources["singleview"], tmp_path / "input"))


def read_back(folder: Path, tmp_path: Path) -> list[dict]:
    """Every sample of an MDS folder, read with Streaming's own (unsubclassed) dataset."""
    dataset = StreamingDataset(local=str(folder), batch_size=1)
    rows = [dataset[index] for index in range(len(dataset))]
    del dataset
    return rows


def assert_no_partial_output(output: Path) -> None:
    assert not output.exists(), f"{output} exists after a failed conversion"
    leftovers = [p.name for p in output.parent.iterdir() if p.name.startswith(f".{output.name}.")]
    assert leftovers == [], f"temporary folders left behind: {leftovers}"


# -- round trip ---------------------------------------------------------------------------------


def test_multiview_round_trip_stores_the_source_bytes(multiview: Path, tmp_path: Path):
    output = tmp_path / "mds"
    report = convert_to_mds(multiview, output, "multiview-hdmap", min_frames=9, progress=False)
    assert report.written == ["demo_0000", "demo_0001", "demo_0002"] and not report.skipped
    index = json.loads((output / "index.json").read_text())
    shard = index["shards"][0]
    expected = mds.dataset_columns("multiview-hdmap", "hdmap_bbox", DEFAULT_CAMERAS)
    assert dict(zip(shard["column_names"], shard["column_encodings"])) == expected
    rows = read_back(output, tmp_path)
    assert [row[mds.SAMPLE_NAME] for row in rows] == report.written
    for row in rows:
        name = row[mds.SAMPLE_NAME]
        assert row[mds.CAMERA_NAMES] == list(DEFAULT_CAMERAS)
        assert (row[mds.LAYOUT], row[mds.CONTROL_KEY], row[mds.FPS], row[mds.NUM_FRAMES]) == (
            "multiview-hdmap",
            "hdmap_bbox",
            10.0,
            9,
        )
        caption = json.loads((multiview / "captions" / FRONT / f"{name}.json").read_text())["caption"]
        assert row[mds.CAPTION] == caption
        for camera in DEFAULT_CAMERAS:
            video = multiview / "videos" / f"ftheta_{camera}" / f"{name}.mp4"
            control = multiview / "control_input_hdmap_bbox" / f"ftheta_{camera}" / f"{name}.mp4"
            assert row[mds.video_column(camera)] == video.read_bytes()
            assert row[mds.control_column("hdmap_bbox", camera)] == control.read_bytes()


@pytest.mark.parametrize("control_key", ["depth", "seg", "edge", "blur"])
def test_singleview_round_trip(singleview: Path, tmp_path: Path, control_key: str):
    output = tmp_path / "mds"
    convert_to_mds(singleview, output, "singleview", control_key=control_key, min_frames=9, progress=False)
    rows = read_back(output, tmp_path)
    assert [row[mds.SAMPLE_NAME] for row in rows] == ["demo_0000", "demo_0001", "demo_0002"]
    stored_key = "vis" if control_key == "blur" else control_key
    for row in rows:
        name = row[mds.SAMPLE_NAME]
        assert row[mds.CAMERA_NAMES] == [] and row[mds.CONTROL_KEY] == stored_key
        assert row["video"] == (singleview / "videos" / f"{name}.mp4").read_bytes()
        if control_key in ("depth", "seg"):
            assert row[f"control_{control_key}"] == (singleview / control_key / f"{name}.mp4").read_bytes()
        else:
            assert not any(column.startswith("control_") and column != mds.CONTROL_KEY for column in row)


def _multiview_argv(source: Path, output: Path) -> list[str]:
    return ["--layout", "multiview-hdmap", "--input", str(source), "--output", str(output), "--min-frames", "9"]


def test_cli_converts_and_prints_a_summary(multiview: Path, tmp_path: Path, capsys):
    output = tmp_path / "mds"
    argv = _multiview_argv(multiview, output)
    assert convert_script.main(argv + ["--no-progress"]) == 0
    assert f"Wrote 3 of 3 samples to {output}" in capsys.readouterr().out
    # A second run refuses to replace the dataset, and --overwrite replaces it.
    assert convert_script.main(argv) == 1
    assert "already exists and is not empty" in capsys.readouterr().err
    assert convert_script.main(argv + ["--overwrite", "--no-progress"]) == 0


def test_default_min_frames_is_the_recipe_value(multiview: Path, tmp_path: Path, capsys):
    output = tmp_path / "mds"
    assert convert_script.main(["--layout", "multiview-hdmap", "--input", str(multiview), "--output", str(output)]) == 1
    err = capsys.readouterr().err
    assert "too short: 9 frames, at least 29 needed (--min-frames)" in err
    assert_no_partial_output(output)


# -- bad inputs -----------------------------------------------------------------------------------
# Each breaks sample demo_0001 of a copy of the demo data and returns (file, problem) that the error
# must name.


def missing_camera_folder(root: Path) -> tuple[Path, str]:
    folder = root / "videos" / "ftheta_camera_rear_tele_30fov"
    shutil.rmtree(folder)
    return folder, "does not exist"


def missing_control_file(root: Path) -> tuple[Path, str]:
    path = root / "control_input_hdmap_bbox" / "ftheta_camera_cross_left_120fov" / "demo_0001.mp4"
    path.unlink()
    return path, "missing control video of camera camera_cross_left_120fov"


def garbage_mp4(root: Path) -> tuple[Path, str]:
    path = root / "videos" / "ftheta_camera_rear_left_70fov" / "demo_0001.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    return path, "video is unreadable: it cannot be decoded"


def truncated_mp4(root: Path) -> tuple[Path, str]:
    path = root / "control_input_hdmap_bbox" / FRONT / "demo_0001.mp4"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path, "control video is unreadable"


def too_short_video(root: Path) -> tuple[Path, str]:
    path = root / "videos" / "ftheta_camera_front_tele_30fov" / "demo_0001.mp4"
    write_mp4(path, np.zeros((5, 64, 96, 3), np.uint8), fps=10)
    return path, "video is too short: 5 frames, at least 9 needed"


def control_fps_mismatch(root: Path) -> tuple[Path, str]:
    path = root / "control_input_hdmap_bbox" / "ftheta_camera_rear_right_70fov" / "demo_0001.mp4"
    write_mp4(path, np.zeros((9, 64, 96, 3), np.uint8), fps=15)
    return path, "fps mismatch: the control video runs at 15 fps but its video"


def views_fps_mismatch(root: Path) -> tuple[Path, str]:
    for top in ("videos", "control_input_hdmap_bbox"):
        write_mp4(
            root / top / "ftheta_camera_rear_right_70fov" / "demo_0001.mp4",
            np.zeros((9, 64, 96, 3), np.uint8),
            fps=15,
        )
    return (
        root / "videos" / "ftheta_camera_rear_right_70fov" / "demo_0001.mp4",
        "fps mismatch between views: 15 fps here",
    )


def missing_caption(root: Path) -> tuple[Path, str]:
    path = root / "captions" / FRONT / "demo_0001.json"
    path.unlink()
    return path, "missing caption file"


def bad_caption(root: Path) -> tuple[Path, str]:
    path = root / "captions" / FRONT / "demo_0001.json"
    path.write_text('{"text": "no caption key"}')
    return path, 'caption JSON has no "caption" string'


BAD_INPUTS = [
    missing_camera_folder,
    missing_control_file,
    garbage_mp4,
    truncated_mp4,
    too_short_video,
    control_fps_mismatch,
    views_fps_mismatch,
    missing_caption,
    bad_caption,
]


@pytest.mark.parametrize("breakage", BAD_INPUTS, ids=lambda f: f.__name__)
def test_bad_input_stops_with_a_clear_error_and_no_output(multiview: Path, tmp_path: Path, capsys, breakage):
    path, problem = breakage(multiview)
    output = tmp_path / "mds"
    argv = _multiview_argv(multiview, output)
    assert convert_script.main(argv + ["--no-progress"]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and problem in err and "Fix:" in err, err
    assert "--skip-invalid" in err
    assert_no_partial_output(output)


@pytest.mark.parametrize(
    "breakage", [b for b in BAD_INPUTS if b is not missing_camera_folder], ids=lambda f: f.__name__
)
def test_skip_invalid_leaves_the_sample_out_and_says_why(multiview: Path, tmp_path: Path, capsys, breakage):
    path, problem = breakage(multiview)
    output = tmp_path / "mds"
    argv = _multiview_argv(multiview, output)
    assert convert_script.main(argv + ["--skip-invalid", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Wrote 2 of 3 samples" in out
    assert "Skipped 1 of 3 samples (--skip-invalid):" in out
    assert f"sample 'demo_0001': {path}: " in out and problem in out
    assert [row[mds.SAMPLE_NAME] for row in read_back(output, tmp_path)] == ["demo_0000", "demo_0002"]


def test_missing_camera_folder_with_skip_invalid_leaves_nothing_to_write(multiview: Path, tmp_path: Path):
    folder, _ = missing_camera_folder(multiview)
    output = tmp_path / "mds"
    with pytest.raises(ConversionError, match="all 3 samples .* are invalid") as error:
        convert_to_mds(multiview, output, "multiview-hdmap", min_frames=9, skip_invalid=True, progress=False)
    assert str(folder) in str(error.value)
    assert_no_partial_output(output)


def test_singleview_missing_control_file(singleview: Path, tmp_path: Path):
    (singleview / "depth" / "demo_0002.mp4").unlink()
    output = tmp_path / "mds"
    with pytest.raises(ConversionError, match=r"demo_0002.mp4: missing control video\. Fix: add demo_0002.mp4"):
        convert_to_mds(singleview, output, "singleview", control_key="depth", min_frames=9, progress=False)
    assert_no_partial_output(output)
    # Edge needs no control folder, so the same input converts.
    convert_to_mds(singleview, output, "singleview", control_key="edge", min_frames=9, progress=False)


def test_failed_overwrite_keeps_the_old_dataset(multiview: Path, tmp_path: Path):
    output = tmp_path / "mds"
    convert_to_mds(multiview, output, "multiview-hdmap", min_frames=9, progress=False)
    before = {p.relative_to(output): p.read_bytes() for p in output.rglob("*") if p.is_file()}
    garbage_mp4(multiview)
    with pytest.raises(ConversionError):
        convert_to_mds(multiview, output, "multiview-hdmap", min_frames=9, overwrite=True, progress=False)
    assert {p.relative_to(output): p.read_bytes() for p in output.rglob("*") if p.is_file()} == before


def test_different_frame_counts_are_reported(multiview: Path, tmp_path: Path):
    longer = multiview / "videos" / FRONT / "demo_0000.mp4"
    write_mp4(longer, np.zeros((12, 64, 96, 3), np.uint8), fps=10)
    report = convert_to_mds(multiview, tmp_path / "mds", "multiview-hdmap", min_frames=9, progress=False)
    assert any("only the first 9 frames" in note and str(longer) in note for note in report.notes)
    assert "Notes:" in report.summary()


def test_wrong_layout_and_missing_input_are_clear(multiview: Path, tmp_path: Path, capsys):
    assert (
        convert_script.main(
            ["--layout", "singleview", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]
        )
        == 1
    )
    assert "does not exist" in capsys.readouterr().err
    assert (
        convert_script.main(
            [
                "--layout",
                "multiview-hdmap",
                "--input",
                str(multiview / "captions"),
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 1
    )
    assert "has no videos/ folder" in capsys.readouterr().err
    assert (
        convert_script.main(
            [
                "--layout",
                "multiview-hdmap",
                "--input",
                str(multiview),
                "--output",
                str(tmp_path / "o"),
                "--control-key",
                "depth",
            ]
        )
        == 1
    )
    assert "does not exist for layout 'multiview-hdmap'" in capsys.readouterr().err


def test_files_that_are_not_samples_are_reported(multiview: Path, tmp_path: Path, capsys):
    stray = multiview / "videos" / FRONT / "demo_0003.MP4"
    stray.write_bytes(b"upper-case extension")
    output = tmp_path / "mds"
    argv = _multiview_argv(multiview, output)
    assert convert_script.main(argv + ["--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Wrote 3 of 3 samples" in out and "ignored 1 files that are not samples" in out and str(stray) in out


@pytest.mark.parametrize("where", ["same", "parent", "inside"])
def test_an_output_that_overlaps_the_input_is_refused_and_nothing_is_deleted(multiview: Path, capsys, where):
    before = sorted(p.relative_to(multiview) for p in multiview.rglob("*"))
    output = {"same": multiview, "parent": multiview.parent, "inside": multiview / "mds"}[where]
    assert convert_script.main(_multiview_argv(multiview, output) + ["--overwrite", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "would delete the source videos" in err and str(multiview) in err
    assert sorted(p.relative_to(multiview) for p in multiview.rglob("*")) == before
