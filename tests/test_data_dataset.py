"""MDS shards -> training samples and batches as the official loaders build them, with and without cached columns."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn
from torchvision.transforms.v2 import InterpolationMode

from cosmos_composer.data import mds
from cosmos_composer.data.cameras import DEFAULT_CAMERAS, DEFAULT_CAPTION_PREFIXES
from cosmos_composer.data.convert import convert_to_mds
from cosmos_composer.data.dataset import TransferStreamingDataset, build_dataloader, collate_samples
from cosmos_composer.data.demo import make_demo_dataset
from cosmos_composer.data.precompute import (
    Precomputer,
    check_crossattn_proj_fingerprint,
    crossattn_proj_fingerprint,
)
from cosmos_composer.data.video import decode_frames, resize_video

F, H, W = 9, 32, 48  # frames per view and training size used throughout (the demo clips are 64x96)
SMALL = dict(samples=3, frames=F, height=64, width=96, progress=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    make_demo_dataset(root / "multiview", "multiview-hdmap", seed=0, **SMALL)
    make_demo_dataset(root / "singleview", "singleview", seed=0, **SMALL)
    convert_to_mds(root / "multiview", root / "multiview_mds", "multiview-hdmap", min_frames=F, progress=False)
    for key in ("depth", "seg", "edge"):
        convert_to_mds(
            root / "singleview",
            root / f"singleview_{key}_mds",
            "singleview",
            control_key=key,
            min_frames=F,
            progress=False,
        )
    return {"root": root, "multiview": root / "multiview", "singleview": root / "singleview"}


def dataset(folder: Path, **kwargs) -> TransferStreamingDataset:
    kwargs = {"num_frames": F, "height": H, "width": W, **kwargs}
    return TransferStreamingDataset(local=str(folder), **kwargs)


def source_view(path: Path, start: int = 0, interpolation=InterpolationMode.BILINEAR) -> torch.Tensor:
    """The reference pixels: decode with PyAV, resize with torchvision, as [3, F, H, W]."""
    frames, _ = decode_frames(path, start, F)
    return resize_video(torch.from_numpy(frames).permute(0, 3, 1, 2), H, W, interpolation).permute(1, 0, 2, 3)


def test_multiview_batch_matches_reference_section_5(data):
    loader = build_dataloader(dataset(data["root"] / "multiview_mds"), batch_size=2)
    batch = next(iter(loader))
    V = 7
    assert batch["sample_name"] == ["demo_0000", "demo_0001"]
    for key in ("video", "control_input_hdmap_bbox"):
        assert batch[key].dtype == torch.uint8 and batch[key].shape == (2, 3, V * F, H, W)
    assert batch["view_indices"].dtype == torch.int64
    assert batch["view_indices"][0].tolist() == [v for v in range(V) for _ in range(F)]
    assert batch["view_indices_selection"][0].tolist() == list(range(V))
    assert batch["camera_keys_selection"][0] == list(DEFAULT_CAMERAS)
    assert batch["padding_mask"].dtype == torch.float32 and batch["padding_mask"].shape == (2, 1, H, W)
    assert not batch["padding_mask"].any()
    assert batch["fps"].dtype == torch.float64 and batch["fps"].tolist() == [10.0, 10.0]
    assert batch["num_video_frames_per_view"].tolist() == [F, F]
    assert batch["sample_n_views"].tolist() == [V, V]
    assert batch["frame_indices"][0].tolist() == list(range(F))
    assert batch["image_size"][0].tolist() == [H, W, H, W]
    assert batch["original_hw"][0].tolist() == [[64, 96]] * V
    assert batch["front_cam_view_idx_sample_position"].tolist() == [0, 0]
    assert batch["ref_cam_view_idx_sample_position"].tolist() == [-1, -1]


def test_multiview_captions_have_the_camera_prefixes(data):
    sample = dataset(data["root"] / "multiview_mds")[0]
    caption = (data["multiview"] / "captions" / "ftheta_camera_front_wide_120fov" / "demo_0000.json").read_text()
    text = __import__("json").loads(caption)["caption"]
    assert sample["ai_caption"][0] == (
        "The video is captured from a camera mounted on a car. The camera is facing forward. " + text
    )
    assert sample["ai_caption"][1] == (
        "The video is captured from a camera mounted on a car. The camera is facing to the right. "
    )
    assert sample["ai_caption"] == [
        f"{DEFAULT_CAPTION_PREFIXES[c]} {text if i == 0 else ''}" for i, c in enumerate(DEFAULT_CAMERAS)
    ]


def test_multiview_pixels_are_the_resized_source_frames_view_by_view(data):
    sample = dataset(data["root"] / "multiview_mds")[1]
    for view, camera in enumerate(DEFAULT_CAMERAS):
        frames = slice(view * F, (view + 1) * F)
        video = source_view(data["multiview"] / "videos" / f"ftheta_{camera}" / "demo_0001.mp4")
        control = source_view(data["multiview"] / "control_input_hdmap_bbox" / f"ftheta_{camera}" / "demo_0001.mp4")
        assert torch.equal(sample["video"][:, frames], video)
        assert torch.equal(sample["control_input_hdmap_bbox"][:, frames], control)


@pytest.mark.parametrize("key", ["depth", "seg"])
def test_singleview_stored_controls(data, key):
    batch = collate_samples([dataset(data["root"] / f"singleview_{key}_mds")[i] for i in range(2)])
    assert batch["video"].shape == batch[f"control_input_{key}"].shape == (2, 3, F, H, W)
    assert batch["video"].dtype == batch[f"control_input_{key}"].dtype == torch.uint8
    assert batch["ai_caption"][0][0].endswith("background.") and len(batch["ai_caption"][0]) == 1
    assert batch["view_indices"].tolist() == [[0] * F] * 2 and batch["sample_n_views"].tolist() == [1, 1]
    interpolation = InterpolationMode.NEAREST if key == "seg" else InterpolationMode.BILINEAR
    expected = source_view(data["singleview"] / key / "demo_0001.mp4", interpolation=interpolation)
    assert torch.equal(batch[f"control_input_{key}"][1], expected)


def test_singleview_edge_is_canny_of_the_resized_video(data):
    ds = dataset(data["root"] / "singleview_edge_mds", random_control_params=False)
    sample = ds[0]
    edges = sample["control_input_edge"]
    assert edges.shape == (3, F, H, W) and set(edges.unique().tolist()) <= {0, 255}
    assert torch.equal(edges[0], edges[2]) and edges.float().mean() > 1
    # Upstream's AddControlInputEdge, "medium" preset: cv2.Canny(frame, 100, 200) on each RGB frame.
    expected = np.stack([cv2.Canny(frame, 100, 200) for frame in sample["video"].numpy().transpose(1, 2, 3, 0)])
    assert torch.equal(edges[0], torch.from_numpy(expected))


def test_on_the_fly_controls_are_random_but_reproducible(data):
    ds = dataset(data["root"] / "singleview_edge_mds", control_key="blur", augment_seed=3)
    first, again = ds[0], ds[0]
    assert "control_input_vis" in first
    assert torch.equal(first["control_input_vis"], again["control_input_vis"])
    other = dataset(data["root"] / "singleview_edge_mds", control_key="vis", augment_seed=4)[0]
    assert not torch.equal(first["control_input_vis"], other["control_input_vis"])
    # The depth dataset can serve edges too: edge needs only the video.
    assert dataset(data["root"] / "singleview_depth_mds", control_key="edge")[0]["control_input_edge"].shape == (
        3,
        F,
        H,
        W,
    )


def test_random_start(data, tmp_path):
    source = tmp_path / "long"
    make_demo_dataset(source, "singleview", seed=5, samples=2, frames=13, height=64, width=96, progress=False)
    convert_to_mds(source, tmp_path / "mds", "singleview", control_key="depth", min_frames=13, progress=False)
    ds = dataset(tmp_path / "mds", random_start=True, augment_seed=0)
    starts = set()
    for seed in range(6):
        ds.augment_seed = seed
        sample = ds[1]
        start = sample["frame_indices"][0].item()
        assert sample["frame_indices"].tolist() == list(range(start, start + F)) and 0 <= start <= 13 - F
        assert torch.equal(sample["video"], source_view(source / "videos" / "demo_0001.mp4", start))
        assert torch.equal(sample["control_input_depth"], source_view(source / "depth" / "demo_0001.mp4", start))
        starts.add(start)
    assert len(starts) > 1
    assert dataset(tmp_path / "mds")[1]["frame_indices"][0] == 0  # the default starts at frame 0


def test_configuration_errors_are_clear(data):
    with pytest.raises(ValueError, match="has 9 frames per view, fewer than num_frames=13"):
        dataset(data["root"] / "multiview_mds", num_frames=13)[0]
    with pytest.raises(ValueError, match=r"control_key='seg' needs the columns \['control_seg'\]"):
        dataset(data["root"] / "singleview_depth_mds", control_key="seg")
    with pytest.raises(ValueError, match="decode_video=False needs cached latents"):
        dataset(data["root"] / "multiview_mds", decode_video=False)
    with pytest.raises(ValueError, match="does not exist for layout 'singleview'"):
        dataset(data["root"] / "singleview_depth_mds", control_key="hdmap_bbox")


# -- cached columns -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoders():
    from cosmos_composer.encoders.text import Reason1TextEmbedder
    from cosmos_composer.encoders.vae import WanVAE

    text_embedder = Reason1TextEmbedder.tiny()
    torch.manual_seed(0)
    projection = nn.Sequential(nn.Linear(text_embedder.embed_dim, 64), nn.GELU())
    return WanVAE.tiny(), text_embedder, projection


@pytest.fixture(scope="module")
def cached_mds(data, encoders) -> Path:
    vae, text_embedder, projection = encoders
    output = data["root"] / "multiview_cached_mds"
    precomputer = Precomputer(
        height=H, width=W, num_frames=F, vae=vae, text_embedder=text_embedder, crossattn_proj=projection
    )
    convert_to_mds(data["multiview"], output, "multiview-hdmap", min_frames=F, precomputer=precomputer, progress=False)
    return output


def test_cached_columns_are_served(cached_mds, encoders):
    vae, text_embedder, projection = encoders
    batch = next(iter(build_dataloader(dataset(cached_mds), batch_size=2)))
    t, h, w = 1 + (F - 1) // 4, H // 8, W // 8
    for key in (mds.VIDEO_LATENT, mds.CONTROL_LATENT):
        assert batch[key].dtype == torch.float16 and batch[key].shape == (2, 16, 7 * t, h, w)
    assert batch[mds.TEXT_EMBEDDING].dtype == torch.float16 and batch[mds.TEXT_EMBEDDING].shape == (
        2,
        7 * 512,
        64,
    )
    assert batch[mds.TEXT_EMBEDDING_KIND] == ["projected", "projected"]
    assert batch[mds.CROSSATTN_PROJ_FINGERPRINT] == [crossattn_proj_fingerprint(projection)] * 2
    # The cache holds the encoders' outputs for exactly the pixels and captions the dataset serves.
    video_V_3_F_H_W = batch["video"][0].reshape(3, 7, F, H, W).permute(1, 0, 2, 3, 4)
    latent = vae.encode(video_V_3_F_H_W).permute(1, 0, 2, 3, 4).reshape(16, 7 * t, h, w)
    torch.testing.assert_close(batch[mds.VIDEO_LATENT][0].float(), latent, atol=2e-2, rtol=2e-2)
    control_V_3_F_H_W = batch["control_input_hdmap_bbox"][1].reshape(3, 7, F, H, W).permute(1, 0, 2, 3, 4)
    control_latent = vae.encode(control_V_3_F_H_W).permute(1, 0, 2, 3, 4).reshape(16, 7 * t, h, w)
    torch.testing.assert_close(batch[mds.CONTROL_LATENT][1].float(), control_latent, atol=2e-2, rtol=2e-2)
    with torch.no_grad():
        text = projection(text_embedder.embed(batch["ai_caption"][0])).reshape(7 * 512, 64)
    torch.testing.assert_close(batch[mds.TEXT_EMBEDDING][0].float(), text, atol=2e-2, rtol=2e-2)


def test_latents_only_skips_decoding(cached_mds):
    sample = dataset(cached_mds, decode_video=False)[2]
    assert "video" not in sample and "control_input_hdmap_bbox" not in sample
    assert sample[mds.VIDEO_LATENT].shape == (16, 21, 4, 6) and sample["sample_name"] == "demo_0002"
    assert sample["view_indices"].shape == (7 * F,)


def test_cached_latents_must_match_the_configuration(cached_mds):
    with pytest.raises(
        ValueError,
        match=r"caches latents of 9 frames at 32x48, but the dataset is configured for 5 frames at 32x48",
    ):
        dataset(cached_mds, num_frames=5)[0]
    with pytest.raises(ValueError, match="random_start=True cannot be used with cached latents"):
        dataset(cached_mds, random_start=True)
    # Opting out of the cache works with any configuration.
    sample = dataset(cached_mds, num_frames=5, use_cached_latents=False, use_cached_text=False)[0]
    assert mds.VIDEO_LATENT not in sample and sample["video"].shape == (3, 7 * 5, H, W)


def test_fingerprint_check_refuses_another_projection(cached_mds, encoders):
    _, _, projection = encoders
    stored = dataset(cached_mds, decode_video=False)[0][mds.CROSSATTN_PROJ_FINGERPRINT]
    check_crossattn_proj_fingerprint(stored, crossattn_proj_fingerprint(projection))
    other = nn.Sequential(nn.Linear(projection[0].in_features, 64), nn.GELU())
    with pytest.raises(ValueError, match="only fit the checkpoint they were made with"):
        check_crossattn_proj_fingerprint(stored, crossattn_proj_fingerprint(other))


def test_dataset_options_of_the_yaml_reach_the_dataset(cached_mds):
    from types import SimpleNamespace

    from helpers import QUICKSTART

    from cosmos_composer.config import load_config
    from cosmos_composer.data.loaders import build_run_dataloader

    options = dict(use_cached_latents=False, use_cached_text=False, random_control_params=False, augment_seed=7)
    cfg = load_config(
        QUICKSTART,
        [f"train_loader.dataset.{key}={value}" for key, value in options.items()]
        + [
            f"train_loader.dataset.local={cached_mds}",
            "train_loader.dataset.demo_if_missing=false",
            "train_loader.dataset.decode_video=true",
            f"train_loader.dataset.num_frames={F}",
        ],
    )
    loader = build_run_dataloader(cfg.train_loader, 1, SimpleNamespace(control_key=cfg.model.control_key))
    # Each differs from the dataset's default, and the shards cache latents and text (so both would be served).
    assert {key: getattr(loader.dataset, key) for key in options} == options
    sample = loader.dataset[0]
    assert mds.VIDEO_LATENT not in sample and mds.TEXT_EMBEDDING not in sample and "video" in sample


def test_raw_text_and_singleview_edge_latents(data, encoders, tmp_path):
    vae, text_embedder, _ = encoders
    precomputer = Precomputer(height=H, width=W, num_frames=F, vae=vae, text_embedder=text_embedder, raw_text=True)
    output = tmp_path / "mds"
    convert_to_mds(
        data["singleview"],
        output,
        "singleview",
        control_key="edge",
        min_frames=F,
        precomputer=precomputer,
        progress=False,
    )
    sample = dataset(output, random_control_params=True)[0]
    assert sample[mds.TEXT_EMBEDDING].shape == (512, text_embedder.embed_dim)
    assert sample[mds.TEXT_EMBEDDING_KIND] == "raw" and sample[mds.CROSSATTN_PROJ_FINGERPRINT] == ""
    assert sample[mds.CONTROL_LATENT].shape == sample[mds.VIDEO_LATENT].shape == (16, 3, 4, 6)
    assert not torch.equal(sample[mds.CONTROL_LATENT], sample[mds.VIDEO_LATENT])
    with pytest.raises(ValueError, match="caches the latent of control 'edge', but control_key='vis'"):
        dataset(output, control_key="vis")[0]


def test_precompute_needs_enough_frames(data, encoders, tmp_path):
    vae, _, _ = encoders
    precomputer = Precomputer(height=H, width=W, num_frames=13, vae=vae)
    with pytest.raises(ValueError, match="--min-frames 9 is below the 13 frames per view to encode"):
        convert_to_mds(
            data["singleview"],
            tmp_path / "o",
            "singleview",
            min_frames=F,
            precomputer=precomputer,
            progress=False,
        )
    assert np.isfinite(1.0)


def test_multiview_with_an_on_the_fly_control(data, tmp_path):
    output = tmp_path / "mds"
    convert_to_mds(data["multiview"], output, "multiview-hdmap", control_key="edge", min_frames=F, progress=False)
    sample = dataset(output)[0]
    assert sample["control_input_edge"].shape == (3, 7 * F, H, W)
    assert set(sample["control_input_edge"].unique().tolist()) == {0, 255}


def test_cli_precompute_wiring(data, encoders, tmp_path, monkeypatch, capsys):
    """--precompute latents,text loads the encoders and the checkpoint's crossattn_proj (tiny stand-ins here)."""
    import importlib.util

    from cosmos_composer.encoders.text import Reason1TextEmbedder
    from cosmos_composer.encoders.vae import WanVAE

    vae, text_embedder, _ = encoders
    loaded = {}
    monkeypatch.setattr(
        WanVAE,
        "from_official_pth",
        classmethod(lambda cls, path, **kw: loaded.setdefault("vae", (path, vae))[1]),
    )
    monkeypatch.setattr(
        Reason1TextEmbedder,
        "from_pretrained",
        classmethod(lambda cls, path, **kw: loaded.setdefault("text", (path, text_embedder))[1]),
    )
    torch.manual_seed(1)
    weight, bias = torch.randn(32, text_embedder.embed_dim).bfloat16(), torch.randn(32).bfloat16()
    checkpoint = tmp_path / "model_ema_bf16.pt"
    torch.save(
        {
            "net.crossattn_proj.0.weight": weight,
            "net.crossattn_proj.0.bias": bias,
            "net.other": torch.zeros(1),
        },
        checkpoint,
    )
    spec = importlib.util.spec_from_file_location(
        "convert_to_mds", Path(__file__).resolve().parents[1] / "scripts" / "convert_to_mds.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    output = tmp_path / "mds"
    argv = [
        "--layout",
        "singleview",
        "--input",
        str(data["singleview"]),
        "--output",
        str(output),
        "--min-frames",
        str(F),
    ]
    argv += [
        "--precompute",
        "latents,text",
        "--vae",
        "tokenizer.pth",
        "--text-encoder",
        "reason1/",
        "--crossattn-proj",
        str(checkpoint),
    ]
    argv += ["--height", str(H), "--width", str(W), "--device", "cpu", "--no-progress"]
    assert script.main(argv) == 0, capsys.readouterr().err
    assert loaded["vae"][0] == "tokenizer.pth" and loaded["text"][0] == "reason1/"
    sample = dataset(output, decode_video=False)[0]
    projection = nn.Sequential(nn.Linear(text_embedder.embed_dim, 32), nn.GELU()).bfloat16()
    projection[0].load_state_dict({"weight": weight, "bias": bias})
    assert sample[mds.CROSSATTN_PROJ_FINGERPRINT] == crossattn_proj_fingerprint(projection)
    check_crossattn_proj_fingerprint(
        sample[mds.CROSSATTN_PROJ_FINGERPRINT], crossattn_proj_fingerprint(projection.float())
    )  # dtype-independent
    assert sample[mds.TEXT_EMBEDDING].shape == (512, 32) and sample[mds.VIDEO_LATENT].shape == (16, 3, 4, 6)
    assert script.main(argv[:8] + ["--output", str(tmp_path / "o2"), "--precompute", "latents"]) == 1
    assert "--precompute latents needs --vae" in capsys.readouterr().err
