"""The metrics that run models: depth si-RMSE, mask mIoU, FID/FVD, and their loaders.

Nothing is downloaded: the depth, GroundingDINO, SAM 2 and feature models are tiny randomly initialised transformers
models built from their configs and saved as folders (and into a hand-built offline Hugging Face cache for hf://).
The pure parts are checked against independent implementations written here: a per-frame numpy si-RMSE, a
brute-force assignment over all permutations, and the Fréchet distance through eigenvalues instead of a matrix
square root. `scripts/evaluate.py score` with FID is checked against `frechet.fid` on the videos decoded with PyAV.
"""

import importlib.util
import itertools
import json
import socket
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from huggingface_hub import constants
from test_hf import write_hf_cache

from cosmos_composer.data.video import write_mp4
from cosmos_composer.evaluation import depth, frechet, masks, videos
from cosmos_composer.evaluation.models import MetricModelError, check_metric_models, load_metric_models

HEIGHT, WIDTH = 32, 48
CAPTION = "A red car on the road next to a tree"


def _load_evaluate_script():
    spec = importlib.util.spec_from_file_location(
        "evaluate_script", Path(__file__).resolve().parents[1] / "scripts" / "evaluate.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EVALUATE = _load_evaluate_script()


def decode(path: Path) -> np.ndarray:
    """All frames [T, H, W, 3] of an mp4, read with PyAV (independently of the project's reader)."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def random_video(seed: int, frames: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, HEIGHT, WIDTH, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- tiny models
def save_tiny_depth_anything(folder: Path) -> Path:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, DPTImageProcessor

    config = DepthAnythingConfig(
        backbone_config=dict(
            model_type="dinov2",
            image_size=28,
            patch_size=14,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            out_indices=[1, 2],
            apply_layernorm=True,
            reshape_hidden_states=False,
        ),
        reassemble_hidden_size=16,
        reassemble_factors=[2, 1],
        neck_hidden_sizes=[8, 16],
        fusion_hidden_size=8,
        head_hidden_size=8,
    )
    torch.manual_seed(0)
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    # Depth Anything V2's processor settings, at 56 pixels instead of 518.
    DPTImageProcessor(
        size={"height": 56, "width": 56},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        resample=3,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder)
    return folder


def save_tiny_grounding_dino(folder: Path) -> Path:
    from transformers import (
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    folder.mkdir(parents=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "a", "red", "car", "on", "the", "road", "tree"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    config = GroundingDinoConfig(
        backbone_config=dict(
            model_type="swin",
            embed_dim=8,
            depths=[1, 1, 1, 1],
            num_heads=[1, 1, 1, 1],
            window_size=2,
            image_size=64,
            out_indices=[2, 3, 4],
        ),
        text_config=dict(
            model_type="bert",
            vocab_size=len(words),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            max_position_embeddings=64,
        ),
        num_queries=2,
        encoder_layers=1,
        decoder_layers=1,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        d_model=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=32,
    )
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(config).save_pretrained(folder)
    GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}),
        tokenizer=BertTokenizerFast(vocab_file=str(folder / "vocab.txt")),
    ).save_pretrained(folder)
    return folder


def save_tiny_sam2_video(folder: Path) -> Path:
    from transformers import Sam2VideoConfig, Sam2VideoModel, Sam2VideoProcessor
    from transformers.models.sam2.image_processing_sam2_fast import Sam2ImageProcessorFast
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    size = 64  # SAM 2's input side (1024 in the released models)
    # The memory attention's image cross-attention takes 64 channels (hard-coded), and the object pointers are split
    # into memory-sized pieces, so the hidden size must be a multiple of 64 above it (256 in the released models).
    config = Sam2VideoConfig(
        vision_config=dict(
            backbone_config=dict(
                hidden_size=8,
                image_size=[size, size],
                blocks_per_stage=[1, 1, 2, 1],
                embed_dim_per_stage=[8, 16, 32, 64],
                num_attention_heads_per_stage=[1, 1, 1, 1],
                window_size_per_stage=[4, 4, 4, 4],
                global_attention_blocks=[3],
                window_positional_embedding_background_size=[2, 2],
            ),
            backbone_channel_list=[64, 32, 16, 8],
            backbone_feature_sizes=[[size // 4] * 2, [size // 8] * 2, [size // 16] * 2],
            fpn_hidden_size=128,
        ),
        prompt_encoder_config=dict(hidden_size=128, image_size=size, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=128, mlp_dim=32, num_attention_heads=2, iou_head_hidden_dim=32),
        image_size=size,
        num_maskmem=3,
        memory_attention_hidden_size=128,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=32,
        memory_attention_rope_feat_sizes=[size // 16] * 2,
        memory_encoder_hidden_size=128,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=128,
        memory_fuser_embed_dim=128,
        memory_fuser_intermediate_dim=32,
    )
    torch.manual_seed(0)
    model = Sam2VideoModel(config)
    # Random weights score every object as absent, and SAM 2 blanks an absent object's mask: say they are present.
    model.mask_decoder.pred_obj_score_head.proj_out.bias.data.fill_(10.0)
    model.save_pretrained(folder)
    Sam2VideoProcessor(
        image_processor=Sam2ImageProcessorFast(size={"height": size, "width": size}),
        video_processor=Sam2VideoVideoProcessor(size={"height": size, "width": size}),
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_metric_models")
    return {
        "depth": save_tiny_depth_anything(root / "depth"),
        "grounding": save_tiny_grounding_dino(root / "grounding"),
        "sam2": save_tiny_sam2_video(root / "sam2"),
    }


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty HF cache, HF_HUB_OFFLINE=1, and no socket may connect (as in test_hf.py)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    cache = tmp_path / "hf_home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HOME", str(cache.parent))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def put_in_cache(cache: Path, repo_id: str, folder: Path) -> None:
    files = {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    write_hf_cache(cache, repo_id, commits={"d" * 40: files}, refs={"main": "d" * 40})


# ----------------------------------------------------------------------------- depth si-RMSE
def reference_si_rmse(pred_T_H_W: np.ndarray, ref_T_H_W: np.ndarray, clip: float) -> float:
    """The definition, frame by frame with masked arrays: median-scale, clip the residual, RMSE, mean over frames."""
    scores = []
    for t in range(len(pred_T_H_W)):
        invalid = (pred_T_H_W[t] <= 0) | (ref_T_H_W[t] <= 0)
        pred = np.ma.masked_array(pred_T_H_W[t], invalid).compressed()
        ref = np.ma.masked_array(ref_T_H_W[t], invalid).compressed()
        if pred.size:
            residual = ref - pred * (np.median(ref) / np.median(pred))
            scores.append(np.sqrt(np.mean(np.minimum(np.abs(residual), clip) ** 2)))
    return float(np.mean(scores))


def test_scale_invariant_rmse_matches_the_definition_and_ignores_the_prediction_scale():
    rng = np.random.default_rng(0)
    ref = rng.uniform(0.5, 60.0, (4, 12, 16))  # residuals above the clip of 10 occur
    pred = ref * rng.uniform(0.3, 1.7, ref.shape)
    pred[0, :3] = 0.0  # invalid pixels (a relative depth model's 0 at infinity) in either video
    ref[1, :, :2] = 0.0
    expected = reference_si_rmse(pred, ref, depth.RESIDUAL_CLIP)
    assert depth.scale_invariant_rmse(pred, ref) == pytest.approx(expected, rel=1e-12)
    assert expected > 0
    # A global (and a per-frame) scale of the prediction changes nothing; identical depth scores 0.
    assert depth.scale_invariant_rmse(7.3 * pred, ref) == pytest.approx(expected, rel=1e-12)
    per_frame_scale = rng.uniform(0.1, 10.0, (4, 1, 1))
    assert depth.scale_invariant_rmse(pred * per_frame_scale, ref) == pytest.approx(expected, rel=1e-12)
    assert depth.scale_invariant_rmse(ref, ref) == 0.0
    assert depth.scale_invariant_rmse(0.01 * ref, ref) == pytest.approx(0.0, abs=1e-12)
    # Without the clip it is the benchmark's code; a frame without a valid pixel is left out.
    assert depth.scale_invariant_rmse(pred, ref, residual_clip=None) == pytest.approx(
        reference_si_rmse(pred, ref, np.inf), rel=1e-12
    )
    pred[2] = 0.0
    assert depth.scale_invariant_rmse(pred, ref) == pytest.approx(reference_si_rmse(pred, ref, 10.0), rel=1e-12)
    assert np.isnan(depth.scale_invariant_rmse(np.zeros((2, 3, 3)), np.ones((2, 3, 3))))
    with pytest.raises(ValueError, match="same shape"):
        depth.scale_invariant_rmse(pred, ref[:2])


def test_depth_si_rmse_end_to_end_with_a_tiny_depth_anything(tiny):
    loaded = load_metric_models(["depth_si_rmse"], depth_model=str(tiny["depth"]))
    prediction, reference = random_video(1), random_video(2)
    score = depth.depth_si_rmse(prediction, reference, loaded.depth)
    assert np.isfinite(score) and score > 0
    pred_depth, ref_depth = loaded.depth.estimate(prediction), loaded.depth.estimate(reference)
    assert pred_depth.shape == (3, HEIGHT, WIDTH) and pred_depth.dtype == np.float64
    assert score == depth.scale_invariant_rmse(pred_depth, ref_depth)
    assert depth.depth_si_rmse(reference, reference, loaded.depth) == 0.0
    with pytest.raises(ValueError, match=r"depth_si_rmse: prediction \(2, 32, 48, 3\) and reference"):
        depth.depth_si_rmse(prediction[:2], reference, loaded.depth)


def test_hf_uris_load_from_an_offline_cache(tiny, offline_hub):
    for name, folder in tiny.items():
        put_in_cache(offline_hub, f"tiny-org/tiny-{name}", folder)
    loaded = load_metric_models(
        ["depth_si_rmse", "mask_miou"],
        depth_model="hf://tiny-org/tiny-depth",
        grounding_model="hf://tiny-org/tiny-grounding@main",
        sam2_model=f"hf://tiny-org/tiny-sam2@{'d' * 40}",
    )
    assert all(path.startswith(str(offline_hub)) for path in loaded.paths.values()) and len(loaded.paths) == 3
    assert loaded.masks.sam2_model.mask_decoder.pred_obj_score_head.proj_out.bias.item() == 10.0  # the saved weights
    assert np.isfinite(depth.depth_si_rmse(random_video(1), random_video(2), loaded.depth))


# ----------------------------------------------------------------------------- mask matching
def brute_force_match(ref_masks, pred_masks, min_iou):
    """Every injective pairing of min(M, N) references and predictions; the best total IoU, scored as the benchmark."""
    iou = np.array(
        [[np.logical_and(r, p).sum() / max(np.logical_or(r, p).sum(), 1) for p in pred_masks] for r in ref_masks]
    )
    m, n = iou.shape
    if m <= n:
        pairings = [list(zip(range(m), cols)) for cols in itertools.permutations(range(n), m)]
    else:
        pairings = [list(zip(rows, range(n))) for rows in itertools.permutations(range(m), n)]
    best = max(pairings, key=lambda pairs: sum(iou[r, c] for r, c in pairs))
    matched = np.array([iou[r, c] for r, c in best])
    counted = matched[matched > min_iou]
    return (counted.mean() if counted.size else 0.0), counted.size / matched.size


def masks_from_ranges(*pixel_ranges, length=30):
    """[N, 1, 1, length] masks, each the union of its (start, stop) pixel ranges."""
    stack = np.zeros((len(pixel_ranges), 1, 1, length), bool)
    for index, ranges in enumerate(pixel_ranges):
        for start, stop in ranges:
            stack[index, 0, 0, start:stop] = True
    return stack


def test_match_masks_is_the_best_assignment_not_the_greedy_one():
    # Known IoUs: ref0-pred0 0.6, ref0-pred1 0.5, ref1-pred0 0.5, ref1-pred1 0. Greedy takes ref0-pred0 (0.6) and
    # leaves ref1-pred1 (0); the best assignment is ref0-pred1 + ref1-pred0 (1.0 in total).
    ref = masks_from_ranges([(0, 10)], [(0, 5), (20, 24)])
    pred = masks_from_ranges([(0, 6)], [(5, 10)])
    np.testing.assert_allclose(masks.mask_iou(ref, pred), [[0.6, 0.5], [0.5, 0.0]])
    result = masks.match_masks(pred, ref)
    assert result["mask_miou"] == pytest.approx(0.5) and result["mask_recall"] == 1.0
    assert sorted(result["pairs"]) == [(0, 1, 0.5), (1, 0, 0.5)]
    # Random masks of every shape against the brute force.
    rng = np.random.default_rng(0)
    for m, n in [(3, 3), (2, 4), (4, 2), (1, 3), (4, 4)]:
        ref = rng.random((m, 2, 4, 5)) < rng.uniform(0.2, 0.6, (m, 1, 1, 1))
        pred = rng.random((n, 2, 4, 5)) < rng.uniform(0.2, 0.6, (n, 1, 1, 1))
        for min_iou in (0.1, 0.3):
            result = masks.match_masks(pred, ref, min_iou=min_iou)
            miou, recall = brute_force_match(ref, pred, min_iou)
            assert result["mask_miou"] == pytest.approx(miou) and result["mask_recall"] == pytest.approx(recall)


def test_match_masks_counts_pairs_above_the_threshold_over_the_matched_pairs():
    ref = masks_from_ranges([(0, 10)], [(10, 20)], [(20, 30)])
    # IoU exactly 0.1 is not counted (the benchmark's `x > threshold`), 0.2 is.
    result = masks.match_masks(masks_from_ranges([(0, 1)], [(10, 12)]), ref)
    assert result["mask_miou"] == pytest.approx(0.2) and result["mask_recall"] == 0.5
    # Recall's denominator is the number of matched pairs, min(M, N) = 1 here (the benchmark's), not M = 3.
    result = masks.match_masks(masks_from_ranges([(0, 8)]), ref)
    assert result["mask_miou"] == pytest.approx(0.8) and result["mask_recall"] == 1.0
    assert masks.match_masks(masks_from_ranges([(0, 8)]), ref, min_iou=0.9)["mask_recall"] == 0.0
    # Nothing found on either side scores 0 and 0.
    assert masks.match_masks(np.zeros((0, 1, 1, 30), bool), ref)["mask_miou"] == 0.0
    assert masks.match_masks(ref, np.zeros((0, 1, 1, 30), bool))["mask_recall"] == 0.0


def test_phrase_maps_unite_instances_and_give_the_same_iou_as_mask_stacks():
    instance_map = np.array([[[0, 1, 2, 3, 3, 1]]], np.uint16)
    phrase_map, phrases = masks.phrase_map(instance_map, ["car", "tree", "car"])
    assert phrases == ["car", "tree"] and phrase_map.tolist() == [[[0, 1, 2, 1, 1, 1]]]
    rng = np.random.default_rng(1)
    ref_map, pred_map = rng.integers(0, 4, (3, 5, 7)), rng.integers(0, 3, (3, 5, 7))
    ref_stack = np.stack([ref_map == label for label in (1, 2, 3)])
    pred_stack = np.stack([pred_map == label for label in (1, 2)])
    np.testing.assert_allclose(masks.phrase_map_iou(ref_map, 3, pred_map, 2), masks.mask_iou(ref_stack, pred_stack))


def test_mask_miou_end_to_end_with_tiny_grounding_dino_and_sam2(tiny):
    loaded = load_metric_models(
        ["mask_miou", "mask_recall"], grounding_model=str(tiny["grounding"]), sam2_model=str(tiny["sam2"])
    )
    prediction, reference = random_video(3, frames=2), random_video(4, frames=2)
    scores = masks.mask_miou(prediction, reference, CAPTION, loaded.masks)
    assert set(scores) == {"mask_miou", "mask_recall"}
    assert 0.0 <= scores["mask_miou"] <= 1.0 and 0.0 <= scores["mask_recall"] <= 1.0
    # A video against itself: every phrase found has a non-empty mask (IoU 1 needs one), so objects were detected and
    # SAM 2 propagated their masks.
    assert masks.mask_miou(reference, reference, CAPTION, loaded.masks) == {"mask_miou": 1.0, "mask_recall": 1.0}


# ----------------------------------------------------------------------------- Fréchet distances
def reference_frechet(features_a, features_b):
    """||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 sum sqrt(eig(S_a S_b)): no matrix square root."""
    mu_a, mu_b = features_a.mean(0), features_b.mean(0)
    cov_a, cov_b = np.cov(features_a, rowvar=False), np.cov(features_b, rowvar=False)
    eigenvalues = np.linalg.eigvals(cov_a @ cov_b).real.clip(min=0)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(eigenvalues).sum())


def test_frechet_distance_matches_the_closed_form():
    rng = np.random.default_rng(0)
    features_a = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))
    features_b = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6)) + 0.5
    assert frechet.frechet_distance_of_features(features_a, features_b) == pytest.approx(
        reference_frechet(features_a, features_b), rel=1e-6
    )
    assert frechet.frechet_distance_of_features(features_a, features_a) == pytest.approx(0.0, abs=1e-6)
    # Sampled Gaussians: N(mu1, diag(a)) and N(mu2, diag(b)) are ||mu1 - mu2||^2 + sum (sqrt(a) - sqrt(b))^2 apart.
    mu1, mu2, var1, var2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0]), np.array([1.0, 4.0, 0.25]), np.ones(3)
    samples1 = mu1 + rng.normal(size=(40000, 3)) * np.sqrt(var1)
    samples2 = mu2 + rng.normal(size=(40000, 3)) * np.sqrt(var2)
    closed_form = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum()
    assert frechet.frechet_distance_of_features(samples1, samples2) == pytest.approx(closed_form, abs=0.06)


class MeanColourFeatures:
    """A stand-in extractor: each frame's mean colour and brightness spread (FID), each clip's mean colour (FVD)."""

    name, comparable, clip_frames = "mean colour", False, 4

    def frame_features(self, frames_N_H_W_3):
        return np.concatenate([frames_N_H_W_3.mean((1, 2)), frames_N_H_W_3.std((1, 2, 3))[:, None]], axis=1)

    def clip_features(self, clips_B_T_H_W_3):
        return clips_B_T_H_W_3.mean((1, 2, 3))


def test_fid_and_fvd_use_every_frame_and_clip_of_both_sets():
    extractor = MeanColourFeatures()
    generated = [random_video(seed, frames=10) for seed in range(3)]
    references = [(random_video(seed + 10, frames=9) // 2) for seed in range(2)]
    assert frechet.fid(generated, generated, extractor) == pytest.approx(0.0, abs=1e-9)
    assert frechet.fvd(generated, generated, extractor) == pytest.approx(0.0, abs=1e-9)
    all_frames = lambda videos: np.concatenate(videos)  # noqa: E731
    assert frechet.fid(generated, references, extractor) == pytest.approx(
        reference_frechet(
            extractor.frame_features(all_frames(generated)), extractor.frame_features(all_frames(references))
        )
    )
    # 10 frames make 2 clips of 4 (the last 2 frames are not used), 9 frames make 2.
    clips = lambda videos: np.concatenate([v[:8].reshape(2, 4, HEIGHT, WIDTH, 3) for v in videos])  # noqa: E731
    assert frechet.fvd(generated, references, extractor) == pytest.approx(
        reference_frechet(extractor.clip_features(clips(generated)), extractor.clip_features(clips(references)))
    )
    with pytest.raises(ValueError, match="3 frames is shorter than one FVD clip of 4 frames"):
        frechet.fvd([random_video(0, frames=3)], references, extractor)
    with pytest.raises(ValueError, match="fid: no prediction videos"):
        frechet.fid([], references, extractor)
    # Pair by pair, multiview: every view's frames and clips join the sets, as if each view were a video.
    gathered = frechet.FrechetFeatures({"fid": extractor, "fvd": extractor})
    gathered.add(generated[:2], references)  # one video of two views and its two reference views
    gathered.add(generated[2], references[0])  # a single-view pair
    assert gathered.distances() == {
        "fid": pytest.approx(frechet.fid(generated, [*references, references[0]], extractor), abs=1e-9),
        "fvd": pytest.approx(frechet.fvd(generated, [*references, references[0]], extractor), abs=1e-9),
    }
    with pytest.raises(ValueError, match=r"fid: prediction video 2 view 1 must be RGB uint8"):
        gathered.add([generated[0], generated[1].astype(np.float32)], references)


def random_state_dict(module_class, **kwargs) -> dict[str, torch.Tensor]:
    """A state dict of `module_class` with random values, without running its (slow) initialisation."""
    with torch.device("meta"):
        shapes = module_class(**kwargs).state_dict()
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, meta in shapes.items():
        if meta.dtype == torch.int64:  # BatchNorm's num_batches_tracked
            state[name] = torch.zeros(meta.shape, dtype=meta.dtype)
        elif name.endswith("running_var"):
            state[name] = torch.rand(meta.shape, generator=generator) + 0.5
        else:
            state[name] = torch.randn(meta.shape, generator=generator) * 0.05
    return state


def test_an_inception_state_dict_becomes_the_fid_inception(tmp_path):
    from safetensors.torch import save_file
    from torchvision.models.inception import Inception3, InceptionA, InceptionE

    # torchvision's layout (1000 classes and the auxiliary head), and the TF port's (1008 classes, no auxiliary head).
    torchvision_state = random_state_dict(Inception3, num_classes=1000, aux_logits=True, init_weights=False)
    state = {name: value for name, value in torchvision_state.items() if not name.startswith("AuxLogits.")}
    state["fc.weight"], state["fc.bias"] = torch.randn(1008, 2048) * 0.05, torch.zeros(1008)
    save_file(state, tmp_path / "pt_inception.safetensors")
    torch.save(state, tmp_path / "pt_inception.pth")
    fid_model = load_metric_models(["fid"], fid_model=str(tmp_path / "pt_inception.safetensors")).fid
    assert fid_model.comparable and "TF port" in fid_model.name
    features = fid_model.frame_features(random_video(5, frames=1))
    assert features.shape == (1, 2048) and np.isfinite(features).all()
    # The TF graph's pooling is in effect: against torchvision's blocks with the same weights, the average-pool blocks
    # differ only where the 3x3 window reaches the padding (the border), and the last block everywhere (max pool).
    x = torch.rand(1, 192, 6, 6)
    stock_a = InceptionA(192, pool_features=32).eval()
    stock_a.load_state_dict(fid_model.model.Mixed_5b.state_dict())
    with torch.no_grad():
        changed = (fid_model.model.Mixed_5b(x) - stock_a(x)).abs().amax(dim=1)[0] > 1e-6
    assert changed[0].all() and changed[-1].all() and not changed[1:-1, 1:-1].any()
    stock_e = InceptionE(2048).eval()
    stock_e.load_state_dict(fid_model.model.Mixed_7c.state_dict())
    x = torch.rand(1, 2048, 4, 4)
    with torch.no_grad():
        difference = (fid_model.model.Mixed_7c(x) - stock_e(x)).abs()
    assert difference[:, :-192].max() == 0 and difference[:, -192:].max() > 0  # the pool branch is the last 192
    # The same weights as a .pth state dict (read with weights_only) load the same model.
    from_pth = load_metric_models(["fid"], fid_model=str(tmp_path / "pt_inception.pth")).fid.model.state_dict()
    assert all(
        torch.equal(from_pth[name], state[name])
        for name in ("Conv2d_1a_3x3.conv.weight", "Mixed_7c.branch_pool.bn.running_var")
    )
    # torchvision's own weights keep the stock blocks and are labelled as not comparable.
    torch.save(torchvision_state, tmp_path / "inception_v3_torchvision.pth")
    imagenet = load_metric_models(["fid"], fid_model=str(tmp_path / "inception_v3_torchvision.pth")).fid
    assert not imagenet.comparable and type(imagenet.model.Mixed_7c) is InceptionE


class TinyI3D(torch.nn.Module):
    def forward(self, x: torch.Tensor, rescale: bool, resize: bool, return_features: bool) -> torch.Tensor:
        return torch.stack([x.mean((1, 2, 3, 4)), x.std((1, 2, 3, 4))], dim=1)


def test_a_torchscript_i3d_loads_only_when_trusted(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(TinyI3D()).save(str(path))
    with pytest.raises(
        MetricModelError, match=r"--fvd-model .*i3d_torchscript.pt \(fvd\): .* is TorchScript.*trust_torchscript=True"
    ):
        load_metric_models(["fvd"], fvd_model=str(path))
    loaded = load_metric_models(["fvd"], fvd_model=str(path), trust_torchscript=True)
    assert loaded.fvd.comparable and loaded.fvd.clip_frames == 16
    videos = [random_video(seed, frames=16) for seed in range(3)]
    assert frechet.fvd(videos, videos, loaded.fvd) == pytest.approx(0.0, abs=1e-9)
    assert frechet.fvd(videos, [v // 2 for v in videos], loaded.fvd) > 0
    # A state dict is not an I3D, and TorchScript is not an Inception state dict.
    torch.save({"w": torch.zeros(1)}, tmp_path / "state.pt")
    with pytest.raises(MetricModelError, match="state.pt is not a TorchScript file"):
        check_metric_models(["fvd"], {"fvd_model": str(tmp_path / "state.pt")}, trust_torchscript=True)
    with pytest.raises(MetricModelError, match="i3d_torchscript.pt is not a state dict file"):
        check_metric_models(["fid"], {"fid_model": str(path)})


TINY_FEATURES = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)


def save_tiny_dinov2(folder: Path) -> Path:
    """A tiny random DINOv2 image model folder (16-d features of 28x28 frames): an --fid-model."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(image_size=28, patch_size=14, **TINY_FEATURES)).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(folder)
    return folder


def test_transformers_models_as_fid_and_fvd_features(tmp_path):
    from transformers import VideoMAEConfig, VideoMAEImageProcessor, VideoMAEModel

    save_tiny_dinov2(tmp_path / "dinov2")
    small = TINY_FEATURES
    VideoMAEModel(VideoMAEConfig(image_size=32, patch_size=16, num_frames=4, **small)).save_pretrained(
        tmp_path / "videomae"
    )
    VideoMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        tmp_path / "videomae"
    )
    loaded = load_metric_models(
        ["fid", "fvd"], fid_model=str(tmp_path / "dinov2"), fvd_model=str(tmp_path / "videomae")
    )
    assert not loaded.fid.comparable and not loaded.fvd.comparable and loaded.fvd.clip_frames == 4
    generated = [random_video(seed, frames=8) for seed in range(3)]
    darker = [video // 3 for video in generated]
    assert loaded.fid.frame_features(generated[0]).shape == (8, 16)
    assert loaded.fvd.clip_features(frechet.video_clips(generated[0], 4)).shape == (2, 16)
    assert frechet.fid(generated, generated, loaded.fid) == pytest.approx(0.0, abs=1e-6)
    assert frechet.fvd(generated, generated, loaded.fvd) == pytest.approx(0.0, abs=1e-6)
    assert frechet.fid(generated, darker, loaded.fid) > 0 and frechet.fvd(generated, darker, loaded.fvd) > 0


# ----------------------------------------------------------------------------- scripts/evaluate.py score
def test_score_computes_fid_over_all_pairs_with_a_tiny_image_model(tmp_path, capsys):
    generated = {f"clip_{i}.mp4": random_video(i, frames=8) for i in range(3)}
    references = {name: (video // 2 + 60).astype(np.uint8) for name, video in generated.items()}
    for side, side_videos in (("generated", generated), ("reference", references)):
        for name, frames in side_videos.items():
            write_mp4(tmp_path / side / name, frames, fps=10)
    fid_model = save_tiny_dinov2(tmp_path / "dinov2")
    out = tmp_path / "scores.json"
    argv = ["score", "--prediction", str(tmp_path / "generated"), "--reference", str(tmp_path / "reference")]
    argv += ["--metrics", "blur_ssim,fid", "--fid-model", str(fid_model), "--device", "cpu"]
    assert EVALUATE.main([*argv, "--json", str(out), "--no-progress"]) == 0
    document = json.loads(out.read_text())
    # The same FID from the decoded videos (PyAV, not the project's reader) through frechet.fid directly.
    names = sorted(generated)
    extractor = load_metric_models(["fid"], fid_model=str(fid_model)).fid
    decoded_generated = [decode(tmp_path / "generated" / name) for name in names]
    decoded_references = [decode(tmp_path / "reference" / name) for name in names]
    expected = frechet.fid(decoded_generated, decoded_references, extractor)
    assert list(document["metrics"]) == ["blur_ssim", "fid"]
    assert document["metrics"]["fid"] == pytest.approx(expected, rel=1e-9) and expected > 0
    # and the closed form over the features of all frames at once (not through frechet's gathering)
    all_features = lambda videos: extractor.frame_features(np.concatenate(videos))  # noqa: E731
    assert expected == pytest.approx(
        reference_frechet(all_features(decoded_generated), all_features(decoded_references)), rel=1e-5
    )
    assert all(list(scores) == ["blur_ssim"] for scores in document["videos"].values())  # no FID per video
    table = capsys.readouterr().out
    assert f"set metrics over all 3 videos: fid {expected:.4f}" in table
    assert "higher is better: blur_ssim; lower is better: fid" in table


def test_score_without_the_fid_model_stops_before_reading_any_video(tmp_path, capsys, monkeypatch):
    def no_reading(*args, **kwargs):
        raise AssertionError("a video was read before the models were checked")

    monkeypatch.setattr(EVALUATE, "match_videos", no_reading)
    monkeypatch.setattr(videos, "decode_frames", no_reading)
    argv = ["score", "--prediction", str(tmp_path / "generated"), "--reference", str(tmp_path / "reference")]
    assert EVALUATE.main([*argv, "--metrics", "blur_ssim,fid"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: fid needs --fid-model (fid_model): an Inception-v3 state dict")
    assert len(err.strip().splitlines()) == 1
    assert EVALUATE.main([*argv, "--metrics", "mask_miou"]) == 2
    assert "score has no captions; `evaluate.py run` computes it" in capsys.readouterr().err


# ----------------------------------------------------------------------------- checking before loading
def test_a_missing_default_model_is_one_error_with_the_download_command(offline_hub):
    with pytest.raises(MetricModelError) as error:
        check_metric_models(["blur_ssim", "depth_si_rmse"], {})
    message = str(error.value)
    assert message.startswith("--depth-model hf://depth-anything/Depth-Anything-V2-Small-hf (depth_si_rmse): ")
    assert "HF_HUB_OFFLINE=1" in message and "`hf download depth-anything/Depth-Anything-V2-Small-hf`" in message
    # Metrics without models need nothing; a metric without a default needs its option.
    assert check_metric_models(["blur_ssim", "edge_f1"], {}) == {}
    with pytest.raises(MetricModelError, match=r"^fid needs --fid-model \(fid_model\): an Inception-v3 state dict"):
        check_metric_models(["fid"], {})


def test_every_problem_is_reported_before_any_model_loads(tiny, tmp_path, monkeypatch):
    import transformers

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before every model was checked")

    for name in ("AutoModelForDepthEstimation", "AutoModelForZeroShotObjectDetection", "Sam2VideoModel", "AutoModel"):
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", no_loading)
    with pytest.raises(MetricModelError) as error:
        load_metric_models(
            ["depth_si_rmse", "mask_miou", "fid"],
            depth_model=str(tiny["depth"]),
            grounding_model=str(tmp_path / "missing"),
            sam2_model=str(tiny["depth"]),  # a depth model where SAM 2 belongs
        )
    lines = str(error.value).splitlines()
    assert lines[0] == "3 metric models are missing or unusable:"
    assert (
        lines[1].strip()
        == f"--grounding-model {tmp_path / 'missing'} (mask_miou): {tmp_path / 'missing'} does not exist; expected a transformers GroundingDINO folder"
    )
    assert (
        "--sam2-model" in lines[2]
        and "holds a 'depth_anything' model; expected a transformers SAM 2 folder" in lines[2]
    )
    assert lines[3].strip().startswith("fid needs --fid-model (fid_model)")
    # A folder that is not a model, and an unknown key.
    (tmp_path / "empty").mkdir()
    with pytest.raises(MetricModelError, match=r"--depth-model .*empty \(depth_si_rmse\): .*empty has no config.json"):
        check_metric_models(["depth_si_rmse"], {"depth_model": str(tmp_path / "empty")})
    with pytest.raises(MetricModelError, match="unknown metric model keys"):
        check_metric_models(["depth_si_rmse"], {"depth": str(tiny["depth"])})
