"""The synthetic demo data: official layout, real mp4s, learnable content, deterministic by seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import load_script

from cosmos_composer.data.cameras import DEFAULT_CAMERAS
from cosmos_composer.data.demo import make_demo_dataset, make_scene, render_clip
from cosmos_composer.data.video import decode_frames, probe_video

SMALL = dict(samples=2, frames=9, height=64, width=96, progress=False)


def all_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def multiview(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "multiview"
    make_demo_dataset(root, "multiview-hdmap", seed=0, **SMALL)
    return root


def test_multiview_layout_has_the_official_folders(multiview: Path):
    for camera in DEFAULT_CAMERAS:
        for top in ("videos", "control_input_hdmap_bbox"):
            folder = multiview / top / f"ftheta_{camera}"
            assert sorted(p.name for p in folder.iterdir()) == ["demo_0000.mp4", "demo_0001.mp4"]
    captions = sorted((multiview / "captions").iterdir())
    assert [p.name for p in captions] == ["ftheta_camera_front_wide_120fov"]
    caption = json.loads((captions[0] / "demo_0000.json").read_text())
    assert set(caption) == {"caption"} and "background" in caption["caption"]
    info = probe_video(multiview / "videos" / "ftheta_camera_front_wide_120fov" / "demo_0000.mp4")
    assert (info.num_frames, info.fps, info.height, info.width) == (9, 10.0, 64, 96)


def test_singleview_layout_has_videos_captions_depth_seg(tmp_path: Path):
    root = tmp_path / "single"
    make_demo_dataset(root, "singleview", seed=0, **SMALL)
    assert sorted(p.name for p in root.iterdir()) == ["captions", "depth", "seg", "videos"]
    for folder in ("videos", "depth", "seg"):
        assert sorted(p.name for p in (root / folder).iterdir()) == ["demo_0000.mp4", "demo_0001.mp4"]
    assert sorted(p.name for p in (root / "captions").iterdir()) == ["demo_0000.json", "demo_0001.json"]


def test_same_seed_same_bytes_other_seed_other_data(multiview: Path, tmp_path: Path):
    again, other = tmp_path / "again", tmp_path / "other"
    make_demo_dataset(again, "multiview-hdmap", seed=0, **SMALL)
    make_demo_dataset(other, "multiview-hdmap", seed=1, **SMALL)
    assert all_bytes(again) == all_bytes(multiview)
    first, second = all_bytes(multiview), all_bytes(other)
    assert first.keys() == second.keys()
    assert all(first[key] != second[key] for key in first)


def _edge_map(frames_T_H_W_3: np.ndarray, threshold: float) -> np.ndarray:
    """Pixels where the image changes strongly towards a neighbour, dilated by one pixel."""
    x = frames_T_H_W_3.astype(np.float32)
    edge = np.zeros(x.shape[:3], bool)
    edge[:, :, 1:] |= np.abs(np.diff(x, axis=2)).max(-1) > threshold
    edge[:, 1:, :] |= np.abs(np.diff(x, axis=1)).max(-1) > threshold
    dilated = edge.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            dilated |= np.roll(np.roll(edge, dy, axis=1), dx, axis=2)
    return dilated


def test_control_is_a_line_drawing_of_the_moving_scene(multiview: Path):
    """Decoded from the mp4s: control lines are sparse and lie on the video's edges; shapes move."""
    for camera in DEFAULT_CAMERAS[:3]:
        video, _ = decode_frames(multiview / "videos" / f"ftheta_{camera}" / "demo_0000.mp4", 0, 9)
        control, _ = decode_frames(multiview / "control_input_hdmap_bbox" / f"ftheta_{camera}" / "demo_0000.mp4", 0, 9)
        lines = control.max(-1) > 60
        assert 0.01 < lines.mean() < 0.25, "a line drawing is sparse but not empty"
        on_edges = (lines & _edge_map(video, 20)).sum() / lines.sum()
        assert on_edges > 0.85, f"only {on_edges:.0%} of the control lines lie on edges of the video"
        # Motion: consecutive frames differ, in the video and in the control.
        assert all(np.abs(video[t + 1].astype(int) - video[t]).max() > 50 for t in range(8))
        assert all((control[t + 1] != control[t]).any() for t in range(8))


def test_cameras_and_samples_show_different_scenes(multiview: Path):
    frames = [
        decode_frames(multiview / "videos" / f"ftheta_{camera}" / f"{name}.mp4", 0, 1)[0]
        for name in ("demo_0000", "demo_0001")
        for camera in DEFAULT_CAMERAS
    ]
    for i in range(len(frames)):
        for j in range(i + 1, len(frames)):
            assert np.abs(frames[i].astype(int) - frames[j]).mean() > 3


def test_scene_renders_depth_and_segmentation_of_the_same_shapes():
    clip = render_clip(make_scene(np.random.default_rng(3), 48, 64), 4)
    assert {k: v.shape for k, v in clip.items()} == {k: (4, 48, 64, 3) for k in ("rgb", "lines", "depth", "seg")}
    assert (clip["depth"][..., 0] == clip["depth"][..., 2]).all()  # grey
    # Segmentation boundaries coincide with the video's boundaries.
    seg_edges = _edge_map(clip["seg"], 1)
    rgb_edges = _edge_map(clip["rgb"], 1)
    assert (seg_edges & rgb_edges).sum() / seg_edges.sum() > 0.9


def test_script_writes_the_dataset_and_refuses_a_non_empty_output(tmp_path: Path, capsys):
    script = load_script("make_demo_dataset")
    output = tmp_path / "demo"
    argv = [
        "--layout",
        "singleview",
        "--output",
        str(output),
        "--samples",
        "1",
        "--frames",
        "5",
        "--height",
        "32",
        "--width",
        "48",
    ]
    assert script.main(argv) == 0
    assert (output / "videos" / "demo_0000.mp4").is_file()
    assert script.main(argv) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert script.main(argv + ["--overwrite"]) == 0
    assert torch.__version__  # the script ran in-process with the package installed
