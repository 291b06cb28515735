"""Frame rate and clip windows: --fps selects source frames, --window-stride cuts long clips into samples.

The sources are written losslessly (libx264rgb, qp 0), so decoded pixels equal the generated arrays and every
expectation is computed with numpy from those arrays, independently of the selection code under test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from helpers import load_script
from streaming import MDSWriter
from streaming.base.format import reader_from_json

from cosmos_composer.data import mds
from cosmos_composer.data.cameras import camera_folder
from cosmos_composer.data.convert import ConversionError, convert_to_mds
from cosmos_composer.data.dataset import TransferStreamingDataset, collate_samples
from cosmos_composer.data.demo import make_demo_dataset
from cosmos_composer.data.framerate import served_frame_count
from cosmos_composer.data.precompute import Precomputer
from cosmos_composer.data.video import VideoError, decode_frame_indices
from cosmos_composer.encoders.text import Reason1TextEmbedder
from cosmos_composer.encoders.vae import WanVAE
from cosmos_composer.models import build_network
from cosmos_composer.models.composer_model import CosmosTransferModel

H, W = 32, 48
CAMERAS = ("camera_front_wide_120fov", "camera_cross_right_120fov")


convert_script = load_script("convert_to_mds")


def write_lossless_mp4(path: Path, frames_T_H_W_3: np.ndarray, fps: float) -> None:
    """RGB frames as lossless H.264 (libx264rgb, qp 0): decoding gives the same bytes back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264rgb", rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = W, H, "rgb24"
        stream.options = {"qp": "0"}
        for index, frame_H_W_3 in enumerate(frames_T_H_W_3):
            frame = av.VideoFrame.from_ndarray(frame_H_W_3, format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def random_frames(seed: int, num_frames: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (num_frames, H, W, 3), dtype=np.uint8)


def write_multiview(root: Path, clips: dict[str, int], fps: float) -> dict[tuple[str, str, str], np.ndarray]:
    """Multiview layout with CAMERAS: clip name -> source frames. Returns (clip, camera, kind) -> frames."""
    written = {}
    for clip_index, (name, num_frames) in enumerate(clips.items()):
        for camera_index, camera in enumerate(CAMERAS):
            for kind_index, (kind, top) in enumerate((("video", "videos"), ("control", "control_input_hdmap_bbox"))):
                frames = random_frames(100 * clip_index + 10 * camera_index + kind_index, num_frames)
                write_lossless_mp4(root / top / camera_folder(camera) / f"{name}.mp4", frames, fps)
                written[name, camera, kind] = frames
        captions = root / "captions" / camera_folder(CAMERAS[0])
        captions.mkdir(parents=True, exist_ok=True)
        (captions / f"{name}.json").write_text(json.dumps({"caption": f"clip {name}"}))
    return written


def write_singleview(root: Path, name: str, num_frames: int, fps: float) -> dict[str, np.ndarray]:
    """Single-view layout with a depth control. Returns kind -> frames."""
    written = {"video": random_frames(1, num_frames), "depth": random_frames(2, num_frames)}
    write_lossless_mp4(root / "videos" / f"{name}.mp4", written["video"], fps)
    write_lossless_mp4(root / "depth" / f"{name}.mp4", written["depth"], fps)
    (root / "captions").mkdir(parents=True, exist_ok=True)
    (root / "captions" / f"{name}.json").write_text(json.dumps({"caption": "a clip"}))
    return written


def served_video(frames_by_view: list[np.ndarray], indices) -> torch.Tensor:
    """The expected ``[3, V*F, H, W]`` uint8 sample: each view's frames at ``indices``, views along time."""
    return torch.from_numpy(np.concatenate([frames[indices] for frames in frames_by_view])).permute(3, 0, 1, 2)


def dataset(folder: Path, **kwargs) -> TransferStreamingDataset:
    return TransferStreamingDataset(local=str(folder), height=H, width=W, **kwargs)


def plain_rows(folder: Path) -> list[dict]:
    """Every row of an MDS folder, read with Streaming's own shard readers.

    Not through a ``StreamingDataset``: each one created in a process leaves shared-memory handles open
    (Streaming's prefix search opens every earlier dataset's and never closes them), and the suite runs in
    one process.
    """
    shards = json.loads((folder / "index.json").read_text())["shards"]
    readers = [reader_from_json(str(folder), None, shard) for shard in shards]
    return [reader.get_item(index) for reader in readers for index in range(reader.samples)]


# -- the selection rule ---------------------------------------------------------------------------


def test_lossless_sources_decode_to_the_generated_pixels(tmp_path):
    frames = random_frames(0, 12)
    write_lossless_mp4(tmp_path / "clip.mp4", frames, 30)
    with av.open(str(tmp_path / "clip.mp4")) as container:  # PyAV alone, none of our code
        decoded = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    assert np.array_equal(decoded, frames)
    # Our list decoder: the frames at sorted indices (a repeated one twice), and a clear error past the end.
    got, fps = decode_frame_indices(tmp_path / "clip.mp4", [0, 3, 3, 11])
    assert fps == 30.0 and np.array_equal(got, frames[[0, 3, 3, 11]])
    with pytest.raises(VideoError, match=r"clip.mp4 has 12 frames; frames 0, 6, 12 were requested"):
        decode_frame_indices(tmp_path / "clip.mp4", [0, 6, 12])


@pytest.mark.parametrize("step", [1.0, 2.0, 2.5, 3.0, 2.997, 1.2])
def test_served_frame_count_counts_the_selected_frames_that_exist(step):
    for num_source_frames in range(1, 80):
        selected = np.floor(np.arange(200) * step + 0.5)
        assert served_frame_count(num_source_frames, step) == int((selected < num_source_frames).sum())


# -- --fps ----------------------------------------------------------------------------------------


def test_fps_10_from_30_serves_every_third_source_frame_pixel_exact(tmp_path):
    source = tmp_path / "raw"
    frames = write_multiview(source, {"clip": 90}, fps=30)
    convert_to_mds(source, tmp_path / "mds", "multiview-hdmap", cameras=CAMERAS, fps=10, progress=False)
    (row,) = plain_rows(tmp_path / "mds")
    assert (row[mds.FPS], row[mds.SOURCE_FPS], row[mds.FRAME_START], row[mds.FRAME_STEP], row[mds.NUM_FRAMES]) == (
        10.0,
        30.0,
        0,
        3.0,
        30,
    )
    # The mp4 bytes are the source files, unchanged.
    assert (
        row[mds.video_column(CAMERAS[1])] == (source / "videos" / camera_folder(CAMERAS[1]) / "clip.mp4").read_bytes()
    )

    sample = dataset(tmp_path / "mds", num_frames=30, cameras=CAMERAS)[0]
    assert sample["frame_indices"].tolist() == list(range(0, 90, 3)) and sample["fps"].item() == 10.0
    every_third = slice(0, None, 3)
    assert torch.equal(sample["video"], served_video([frames["clip", c, "video"] for c in CAMERAS], every_third))
    assert torch.equal(
        sample["control_input_hdmap_bbox"], served_video([frames["clip", c, "control"] for c in CAMERAS], every_third)
    )


def test_upsampling_is_refused_and_single_view_keeps_its_native_rate(tmp_path):
    source = tmp_path / "raw"
    write_singleview(source, "clip", num_frames=12, fps=10)
    with pytest.raises(ConversionError) as error:
        convert_to_mds(source, tmp_path / "up", "singleview", control_key="depth", min_frames=4, fps=30, progress=False)
    video = source / "videos" / "clip.mp4"
    assert f"{video}: video runs at 10 fps, below --fps 30" in str(error.value) and "upsampling" in str(error.value)
    assert "Fix: pass --fps 10 or lower" in str(error.value)
    # Single view has no recipe rate: without --fps any native rate is served as it is.
    report = convert_to_mds(source, tmp_path / "mds", "singleview", control_key="depth", min_frames=4, progress=False)
    (row,) = plain_rows(tmp_path / "mds")
    assert (row[mds.FPS], row[mds.SOURCE_FPS], row[mds.FRAME_STEP], row[mds.NUM_FRAMES]) == (10.0, 10.0, 1.0, 12)
    assert "Frame rate: 10 fps (unchanged) (1 samples)." in report.summary()


def test_a_multiview_source_off_the_recipe_rate_needs_fps(tmp_path, capsys):
    source = tmp_path / "raw"
    write_multiview(source, {"clip": 90}, fps=30)
    argv = ["--layout", "multiview-hdmap", "--input", str(source), "--output", str(tmp_path / "mds")]
    argv += ["--cameras", ",".join(CAMERAS), "--no-progress"]
    assert convert_script.main(argv) == 1
    err = capsys.readouterr().err
    video = source / "videos" / camera_folder(CAMERAS[0]) / "clip.mp4"
    assert f"{video}: video runs at 30 fps, but the multiview-hdmap recipe trains at 10 fps" in err
    assert "Fix: pass --fps 10" in err and "every 3rd frame" in err
    assert not (tmp_path / "mds").exists()


def test_a_non_integer_ratio_selects_round_half_up(tmp_path):
    source = tmp_path / "raw"
    frames = write_singleview(source, "clip", num_frames=40, fps=25)
    report = convert_to_mds(
        source, tmp_path / "mds", "singleview", control_key="depth", min_frames=16, fps=10, progress=False
    )
    assert "Frame rate: 25 fps -> 10 fps (2.5 source frames per frame) (1 samples)." in report.summary()
    expected = np.floor(np.arange(16) * 2.5 + 0.5).astype(int)  # 0, 3, 5, 8, 10, 13, ..., 38
    assert expected[:4].tolist() == [0, 3, 5, 8]
    sample = dataset(tmp_path / "mds", num_frames=16)[0]
    assert sample["frame_indices"].tolist() == expected.tolist()
    assert torch.equal(sample["video"], served_video([frames["video"]], expected))
    assert torch.equal(sample["control_input_depth"], served_video([frames["depth"]], expected))
    # random_start moves within the row's served frames: always a run of the served sequence.
    ds = dataset(tmp_path / "mds", num_frames=5, random_start=True)
    starts = set()
    for seed in range(6):
        ds.augment_seed = seed
        sample = ds[0]
        start = expected.tolist().index(sample["frame_indices"][0].item())
        assert sample["frame_indices"].tolist() == expected[start : start + 5].tolist()
        assert torch.equal(sample["video"], served_video([frames["video"]], expected[start : start + 5]))
        starts.add(start)
    assert len(starts) > 1


# -- --window-stride ------------------------------------------------------------------------------

# 60 source frames at 30 fps are 20 served frames at 10 fps: windows of 5 every 4 start at 0, 4, 8 and 12.
WINDOW_STARTS = [0, 4, 8, 12]


@pytest.fixture(scope="module")
def windowed(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("windows")
    frames = write_multiview(root / "raw", {"long": 60, "short": 12}, fps=30)
    return {"root": root, "frames": frames}


def expected_window(frames: dict, start: int, kind: str = "video") -> torch.Tensor:
    indices = np.arange(start, start + 5) * 3  # served frame s of the clip is source frame 3 s
    return served_video([frames["long", camera, kind] for camera in CAMERAS], indices)


def one_training_step(batch: dict) -> float:
    """One optimizer step of the tiny multiview preset on ``batch``, encoding online what it does not cache."""
    torch.manual_seed(0)
    model = CosmosTransferModel(
        build_network("tiny-multiview"), use_ema=False, vae=WanVAE.tiny(), text_embedder=Reason1TextEmbedder.tiny()
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    loss = model.loss(model(batch), batch)
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(p, b) for p, b in zip(trainable, before)), "the step changed no weight"
    return float(loss)


def test_windows_online_through_the_cli(windowed, capsys):
    root, frames = windowed["root"], windowed["frames"]
    argv = ["--layout", "multiview-hdmap", "--input", str(root / "raw"), "--output", str(root / "online")]
    argv += ["--cameras", ",".join(CAMERAS), "--fps", "10", "--window-stride", "4", "--num-frames", "5"]
    assert convert_script.main([*argv, "--no-progress", "--skip-invalid"]) == 0
    out = capsys.readouterr().out
    assert "Wrote 4 windows from 1 of 2 samples" in out
    assert "Frame rate: 30 fps -> 10 fps (every 3rd frame) (1 samples)." in out
    assert "Windows of 5 frames every 4 frames (--window-stride): 4 from 1 samples: long 4." in out
    assert "short" in out and "too short: 12 frames at 30 fps, 4 at 10 fps (--fps), at least 5 needed" in out

    rows = plain_rows(root / "online")
    assert [row[mds.SAMPLE_NAME] for row in rows] == [f"long@{start}" for start in WINDOW_STARTS]
    assert [row[mds.FRAME_START] for row in rows] == [3 * start for start in WINDOW_STARTS]
    assert {(row[mds.NUM_FRAMES], row[mds.FRAME_STEP], row[mds.FPS]) for row in rows} == {(5, 3.0, 10.0)}

    ds = dataset(root / "online", num_frames=5, cameras=CAMERAS)
    samples = [ds[index] for index in range(len(ds))]
    for start, sample in zip(WINDOW_STARTS, samples):
        assert sample["frame_indices"].tolist() == [3 * s for s in range(start, start + 5)]
        assert torch.equal(sample["video"], expected_window(frames, start))
        assert torch.equal(sample["control_input_hdmap_bbox"], expected_window(frames, start, "control"))
    assert math.isfinite(one_training_step(collate_samples(samples[:2])))


def test_windows_with_cached_latents_encode_each_window(windowed):
    root, frames = windowed["root"], windowed["frames"]
    vae = WanVAE.tiny()
    report = convert_to_mds(
        root / "raw",
        root / "cached",
        "multiview-hdmap",
        cameras=CAMERAS,
        fps=10,
        window_stride=4,
        window_frames=5,
        skip_invalid=True,
        precomputer=Precomputer(height=H, width=W, num_frames=5, vae=vae),
        progress=False,
    )
    assert report.written == [f"long@{start}" for start in WINDOW_STARTS] and report.windows == {"long": 4}
    ds = dataset(root / "cached", num_frames=5, cameras=CAMERAS, decode_video=False)
    samples = [ds[index] for index in range(len(ds))]
    for start, sample in zip(WINDOW_STARTS, samples):
        video_V_3_F_H_W = expected_window(frames, start).reshape(3, 2, 5, H, W).permute(1, 0, 2, 3, 4)
        latent_16_Vt_h_w = vae.encode(video_V_3_F_H_W).permute(1, 0, 2, 3, 4).reshape(16, 4, H // 8, W // 8)
        torch.testing.assert_close(sample[mds.VIDEO_LATENT].float(), latent_16_Vt_h_w, atol=2e-2, rtol=2e-2)
        assert "video" not in sample and sample["frame_indices"].tolist() == [3 * s for s in range(start, start + 5)]
    assert math.isfinite(one_training_step(collate_samples(samples[2:])))


# -- datasets converted before the frame-rate columns ------------------------------------------------


def test_a_dataset_without_the_frame_rate_columns_reads_as_before(tmp_path):
    make_demo_dataset(tmp_path / "raw", "singleview", seed=3, samples=2, frames=13, height=H, width=W, progress=False)
    convert_to_mds(tmp_path / "raw", tmp_path / "new", "singleview", control_key="depth", min_frames=13, progress=False)
    # The same rows without the three columns, as a conversion before them wrote.
    new_columns = {mds.SOURCE_FPS, mds.FRAME_START, mds.FRAME_STEP}
    index = json.loads((tmp_path / "new" / "index.json").read_text())["shards"][0]
    columns = {n: e for n, e in zip(index["column_names"], index["column_encodings"]) if n not in new_columns}
    with MDSWriter(out=str(tmp_path / "old"), columns=columns, progress_bar=False) as writer:
        for row in plain_rows(tmp_path / "new"):
            writer.write({key: value for key, value in row.items() if key in columns})
    assert mds.FRAME_STEP not in plain_rows(tmp_path / "old")[0]

    old = dataset(tmp_path / "old", num_frames=9, augment_seed=4)
    new = dataset(tmp_path / "new", num_frames=9, augment_seed=4)
    for random_start in (False, True):
        old.random_start = new.random_start = random_start
        for index in range(2):
            old_sample, new_sample = old[index], new[index]
            assert old_sample.keys() == new_sample.keys()
            for key, value in old_sample.items():
                same = torch.equal(value, new_sample[key]) if torch.is_tensor(value) else value == new_sample[key]
                assert same, key
            start = old_sample["frame_indices"][0].item()
            assert old_sample["frame_indices"].tolist() == list(range(start, start + 9))
            assert random_start or start == 0
            with av.open(str(tmp_path / "raw" / "videos" / f"demo_{index:04d}.mp4")) as container:  # PyAV alone
                source = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
            assert torch.equal(old_sample["video"], served_video([source], slice(start, start + 9)))
