"""The model-free evaluation metrics, the metric registry and `scripts/evaluate.py score`.

Each metric is checked against an implementation written here from its definition (PAI-Bench-C's Blur SSIM and
Edge F1, the cosmos-cookbook Sampson error, the closed-form Fréchet distance of Gaussians) with OpenCV,
scikit-image and numpy calls and the definition's literal constants, never the library's functions.
"""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import load_script
from skimage.metrics import structural_similarity

from cosmos_composer.data.video import decode_frames, write_mp4
from cosmos_composer.evaluation import (
    METRICS,
    MODEL_FREE_METRICS,
    aggregate,
    blur_ssim,
    cross_view_sampson_error,
    edge_scores,
    feature_statistics,
    frechet_distance,
    sampson_error,
    score_video,
    temporal_sampson_error,
    view_neighbours,
)


def texture(height: int, width: int, seed: int = 0, sigma: float = 2.0) -> np.ndarray:
    """A smooth random colour texture, uint8 [H, W, 3], stretched to the full 0..255 range."""
    noise = np.random.default_rng(seed).integers(0, 256, (height, width, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), sigma)
    return ((smooth - smooth.min()) / (smooth.max() - smooth.min()) * 255).astype(np.uint8)


def panning_video(frames: int, height: int, width: int, step: int = 2, seed: int = 0) -> np.ndarray:
    """A camera panning over a texture, `step` pixels to the right per frame: [T, H, W, 3]."""
    scene = texture(height, width + step * frames, seed)
    return np.stack([scene[:, step * t : step * t + width] for t in range(frames)])


def add_noise(video: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, video.shape)
    return np.clip(video + noise, 0, 255).astype(np.uint8)


def translate(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(image, matrix, image.shape[1::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


# ---------------------------------------------------------------------------------------------------------------
# Independent implementations of the definitions
# ---------------------------------------------------------------------------------------------------------------


def reference_blur_ssim(prediction: np.ndarray, reference: np.ndarray) -> float:
    """PAI-Bench-C: bilateral (30, 150, 100) on both, SSIM full-map mean per frame with the reference's data range."""
    values = []
    for predicted, actual in zip(prediction, reference):
        actual_blur = cv2.bilateralFilter(actual, 30, 150, 100)
        predicted_blur = cv2.bilateralFilter(predicted, 30, 150, 100)
        data_range = int(actual_blur.max()) - int(actual_blur.min())
        _, ssim_map = structural_similarity(
            actual_blur, predicted_blur, channel_axis=2, data_range=data_range or 255, full=True
        )
        values.append(ssim_map.mean())
    return float(np.mean(values))


def reference_edge_scores(prediction: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    def edges(video):
        return np.stack([cv2.Canny(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), 100, 200) for frame in video]) == 255

    predicted, actual = edges(prediction), edges(reference)
    tp = np.sum(predicted & actual)
    fp = np.sum(predicted & ~actual)
    fn = np.sum(~predicted & actual)
    return {"edge_f1": 2 * tp / (2 * tp + fp + fn), "edge_precision": tp / (tp + fp), "edge_recall": tp / (tp + fn)}


def reference_matches(image_a: np.ndarray, image_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SIFT (2048 keypoints) on the grey images, brute-force L2 two nearest, Lowe's ratio 0.75."""
    sift = cv2.SIFT_create(nfeatures=2048)
    keys_a, descriptors_a = sift.detectAndCompute(cv2.cvtColor(image_a, cv2.COLOR_RGB2GRAY), None)
    keys_b, descriptors_b = sift.detectAndCompute(cv2.cvtColor(image_b, cv2.COLOR_RGB2GRAY), None)
    good = [
        m
        for m, n in cv2.BFMatcher(cv2.NORM_L2).knnMatch(descriptors_a, descriptors_b, k=2)
        if m.distance < 0.75 * n.distance
    ]
    return np.float64([keys_a[m.queryIdx].pt for m in good]), np.float64([keys_b[m.trainIdx].pt for m in good])


def reference_sampson(points_a: np.ndarray, points_b: np.ndarray, F: np.ndarray) -> np.ndarray:
    """sqrt of (x_b^T F x_a)^2 / ((F x_a)_1^2 + (F x_a)_2^2 + (F^T x_b)_1^2 + (F^T x_b)_2^2), match by match."""
    errors = []
    for (xa, ya), (xb, yb) in zip(points_a, points_b):
        a, b = np.array([xa, ya, 1.0]), np.array([xb, yb, 1.0])
        line_b, line_a = F @ a, F.T @ b
        errors.append(math.sqrt((b @ F @ a) ** 2 / (line_b[0] ** 2 + line_b[1] ** 2 + line_a[0] ** 2 + line_a[1] ** 2)))
    return np.array(errors)


def ransac_F(points_a: np.ndarray, points_b: np.ndarray) -> np.ndarray:
    F, _ = cv2.findFundamentalMat(points_a, points_b, cv2.FM_RANSAC, 3.0, 0.99)
    return F


def reference_pair_error(image_a: np.ndarray, image_b: np.ndarray, F: np.ndarray | None = None) -> float:
    points_a, points_b = reference_matches(image_a, image_b)
    return float(reference_sampson(points_a, points_b, ransac_F(points_a, points_b) if F is None else F).mean())


def skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]], dtype=np.float64)


# A horizontal translation moves every point along its row: F = [e]_x with the epipole at infinity on the x axis
# (x_b^T F x_a = y_a - y_b), and the Sampson distance of a match is |y_a - y_b| / sqrt(2).
HORIZONTAL_F = skew(np.array([1.0, 0.0, 0.0]))
# A second view of a plane: x_b = H x_a, and every such match satisfies F = [e_b]_x H for any epipole e_b.
PLANE_H = np.array([[1.02, 0.03, 3.0], [-0.02, 0.99, 1.5], [1e-5, 2e-5, 1.0]])
PLANE_F = skew(np.array([50.0, 10.0, 1.0])) @ PLANE_H


def plane_view(video: np.ndarray) -> np.ndarray:
    return np.stack(
        [cv2.warpPerspective(frame, PLANE_H, frame.shape[1::-1], flags=cv2.INTER_LINEAR) for frame in video]
    )


# ---------------------------------------------------------------------------------------------------------------
# Blur SSIM and Edge F1
# ---------------------------------------------------------------------------------------------------------------


def test_blur_ssim_is_one_for_identical_videos_and_the_benchmark_value_for_changed_ones():
    reference = panning_video(3, 64, 96)
    assert blur_ssim(reference, reference.copy()) == 1.0
    shifted = np.stack([translate(frame, 3, 0) for frame in reference])
    blurred = np.stack([cv2.GaussianBlur(frame, (0, 0), 2.0) for frame in reference])
    for changed in (shifted, blurred):
        value = blur_ssim(changed, reference)
        assert value < 0.99
        assert value == pytest.approx(reference_blur_ssim(changed, reference), abs=1e-12)
    assert blur_ssim(shifted, reference, threads=1) == blur_ssim(shifted, reference, threads=2)


def test_blur_ssim_of_a_constant_reference_frame_uses_the_full_uint8_range():
    reference = np.full((2, 32, 48, 3), 90, dtype=np.uint8)
    prediction = add_noise(reference, 30)
    value = blur_ssim(prediction, reference)
    assert math.isfinite(value) and value < 1
    assert value == pytest.approx(reference_blur_ssim(prediction, reference), abs=1e-12)
    assert blur_ssim(reference, reference) == 1.0


def test_edge_scores_are_one_for_identical_videos_and_the_pixel_counts_for_changed_ones():
    reference = panning_video(3, 64, 96, seed=3)
    assert edge_scores(reference, reference.copy()) == {"edge_f1": 1.0, "edge_precision": 1.0, "edge_recall": 1.0}
    shifted = np.stack([translate(frame, 2, 1) for frame in reference])
    # Channels weighted differently: RGB -> grey must not be read as BGR.
    recoloured = reference.copy()
    recoloured[..., 0] = reference[..., 2]
    recoloured[..., 2] = reference[..., 0]
    for changed in (shifted, add_noise(reference, 20), recoloured):
        scores = edge_scores(changed, reference)
        assert scores["edge_f1"] < 0.95
        expected = reference_edge_scores(changed, reference)
        assert scores == pytest.approx(expected, abs=1e-12)


def test_edge_scores_without_edges_on_one_or_both_sides():
    flat = np.full((2, 32, 48, 3), 128, dtype=np.uint8)
    textured = panning_video(2, 32, 48)
    assert edge_scores(flat, flat.copy()) == {"edge_f1": 1.0, "edge_precision": 1.0, "edge_recall": 1.0}
    assert edge_scores(flat, textured) == {"edge_f1": 0.0, "edge_precision": 0.0, "edge_recall": 0.0}
    assert edge_scores(textured, flat) == {"edge_f1": 0.0, "edge_precision": 0.0, "edge_recall": 0.0}


def test_a_video_pair_of_different_shapes_is_refused_naming_both():
    with pytest.raises(ValueError, match=r"\(3, 32, 48, 3\).*\(2, 32, 48, 3\)"):
        blur_ssim(np.zeros((3, 32, 48, 3), np.uint8), np.zeros((2, 32, 48, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8 RGB frames"):
        edge_scores(np.zeros((2, 32, 48, 3), np.float32), np.zeros((2, 32, 48, 3), np.float32))


# ---------------------------------------------------------------------------------------------------------------
# Sampson error: one pair, TSE, CSE
# ---------------------------------------------------------------------------------------------------------------


def test_sampson_error_under_a_known_fundamental_matrix_is_the_epipolar_distance_in_pixels():
    image = texture(128, 192, seed=5)
    along_rows = translate(image, 5, 0)
    assert sampson_error(image, along_rows, fundamental=HORIZONTAL_F) < 0.1
    # 2 pixels off the epipolar lines: every match is |dy| / sqrt(2) from satisfying F.
    off_rows = translate(image, 5, 2)
    value = sampson_error(image, off_rows, fundamental=HORIZONTAL_F)
    assert value == pytest.approx(2 / math.sqrt(2), abs=0.1)
    assert value == pytest.approx(reference_pair_error(image, off_rows, HORIZONTAL_F), rel=1e-9)


def test_sampson_error_with_ransac_matches_the_definition_and_grows_with_pixel_noise():
    image = texture(128, 192, seed=6)
    second_view = plane_view(image[None])[0]
    clean = sampson_error(image, second_view)
    assert clean < 0.3
    assert clean == pytest.approx(reference_pair_error(image, second_view), rel=1e-9)
    clean_given_F = sampson_error(image, second_view, fundamental=PLANE_F)
    assert clean_given_F < 0.1
    noisy_views = [add_noise(second_view[None], sigma)[0] for sigma in (8, 25)]
    noisy = [sampson_error(image, view, fundamental=PLANE_F) for view in noisy_views]
    assert clean_given_F < noisy[0] < noisy[1]
    assert clean < sampson_error(image, noisy_views[1])
    assert sampson_error(image, np.full_like(image, 128)) is None  # no keypoints: too few matches
    with pytest.raises(ValueError, match="matcher 'superpoint' is not one of sift"):
        sampson_error(image, second_view, matcher="superpoint")


def test_tse_is_near_zero_for_a_panning_camera_and_grows_with_pixel_noise():
    video = panning_video(4, 128, 192, step=3, seed=7)
    result = temporal_sampson_error([video])
    assert (result["tse_pairs"], result["tse_skipped_pairs"]) == (3, 0)
    assert result["tse"] < 0.2
    expected = np.mean([reference_pair_error(video[t], video[t + 1]) for t in range(3)])
    assert result["tse"] == pytest.approx(expected, rel=1e-9)
    assert "SIFT" in result["tse_method"] and "RANSAC" in result["tse_method"]
    noisy = [temporal_sampson_error([add_noise(video, sigma)])["tse"] for sigma in (8, 25)]
    assert result["tse"] < noisy[0] < noisy[1]


def test_tse_skips_and_counts_frame_pairs_without_enough_matches():
    video = panning_video(3, 128, 192)
    flat = np.full_like(video, 100)
    result = temporal_sampson_error([video, flat])
    assert (result["tse_pairs"], result["tse_skipped_pairs"]) == (2, 2)
    assert math.isfinite(result["tse"])
    only_flat = temporal_sampson_error([flat])
    assert math.isnan(only_flat["tse"]) and only_flat["tse_skipped_pairs"] == 2


def test_cse_is_near_zero_for_two_views_of_a_rigid_scene_and_grows_with_pixel_noise():
    first = panning_video(3, 128, 192, seed=8)
    second = plane_view(first)
    result = cross_view_sampson_error([first, second])
    assert result["cse_camera_pairs"] == [(0, 1)] and (result["cse_pairs"], result["cse_skipped_pairs"]) == (3, 0)
    # The cookbook's method: one F per camera pair, fitted to the matches of all frames together.
    matches = [reference_matches(first[t], second[t]) for t in range(3)]
    F = ransac_F(np.concatenate([a for a, _ in matches]), np.concatenate([b for _, b in matches]))
    expected = np.mean([reference_sampson(a, b, F).mean() for a, b in matches])
    assert result["cse"] == pytest.approx(expected, rel=1e-9)
    assert result["cse"] < 0.3
    given = cross_view_sampson_error([first, second], fundamentals={(0, 1): PLANE_F})
    assert given["cse"] < 0.1 and "F given for camera pairs [(0, 1)]" in given["cse_method"]
    noisy = [cross_view_sampson_error([first, add_noise(second, sigma)], fundamentals={(0, 1): PLANE_F})["cse"] for sigma in (8, 25)]  # fmt: skip
    assert given["cse"] < noisy[0] < noisy[1]
    with pytest.raises(ValueError, match="at least 2 views"):
        cross_view_sampson_error([first])


def test_cse_camera_pairs_follow_the_rig():
    official = view_neighbours(7)
    assert official == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 0), (0, 6)]
    # The 3-camera rig of yamls/hdmap_3cam.yaml: the cookbook's front-cross_right and front-cross_left.
    three = ["camera_front_wide_120fov", "camera_cross_left_120fov", "camera_cross_right_120fov"]
    assert view_neighbours(3, three) == [(0, 2), (1, 0)]
    assert view_neighbours(4) == [(0, 1), (1, 2), (2, 3)]
    assert view_neighbours(2, ["left", "right"]) == [(0, 1)]


# ---------------------------------------------------------------------------------------------------------------
# Fréchet distance
# ---------------------------------------------------------------------------------------------------------------


def test_frechet_distance_is_the_closed_form_for_gaussians_with_commuting_covariances():
    rng = np.random.default_rng(0)
    dimension = 64
    mu1, mu2 = rng.normal(100, 5, dimension), rng.normal(100, 5, dimension)
    # Large variances that differ a little: the trace terms cancel to a small number, as with real features.
    variances1 = rng.uniform(1e4, 2e4, dimension)
    variances2 = variances1 * rng.uniform(0.99, 1.01, dimension)
    # Closed form for commuting covariances: |mu1 - mu2|^2 + sum (sqrt(l1) - sqrt(l2))^2 over the eigenvalues.
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(variances1) - np.sqrt(variances2)) ** 2)
    assert frechet_distance(mu1, np.diag(variances1), mu2, np.diag(variances2)) == pytest.approx(expected, rel=1e-9)
    rotation, _ = np.linalg.qr(rng.normal(size=(dimension, dimension)))
    sigma1, sigma2 = rotation @ np.diag(variances1) @ rotation.T, rotation @ np.diag(variances2) @ rotation.T
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(mu1, sigma1, mu1, sigma1) == pytest.approx(0, abs=1e-6)


def test_frechet_distance_refuses_covariances_without_a_real_square_root():
    with pytest.raises(ValueError, match="imaginary part"):
        frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="means"):
        frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(2))


def test_feature_statistics_are_the_mean_and_unbiased_covariance():
    features = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    mu, sigma = feature_statistics(features)
    centred = features.astype(np.float64) - features.astype(np.float64).sum(axis=0) / 50
    assert mu.dtype == np.float64 and sigma.shape == (4, 4)
    assert np.allclose(mu, features.astype(np.float64).mean(axis=0), atol=1e-12)
    assert np.allclose(sigma, centred.T @ centred / 49, atol=1e-12)
    with pytest.raises(ValueError, match="at least 2 feature vectors"):
        feature_statistics(features[:1])


# ---------------------------------------------------------------------------------------------------------------
# Registry: names, score_video, aggregate
# ---------------------------------------------------------------------------------------------------------------


def test_the_metric_names_and_what_each_needs():
    assert list(METRICS) == [
        "blur_ssim", "edge_f1", "edge_precision", "edge_recall", "depth_si_rmse", "mask_miou", "tse", "cse", "fid", "fvd",
    ]  # fmt: skip
    assert MODEL_FREE_METRICS == ("blur_ssim", "edge_f1", "edge_precision", "edge_recall", "tse", "cse")
    assert [name for name, m in METRICS.items() if m.higher_is_better] == [
        "blur_ssim", "edge_f1", "edge_precision", "edge_recall", "mask_miou",
    ]  # fmt: skip
    assert [name for name, m in METRICS.items() if m.per_set] == ["fid", "fvd"]
    assert [name for name, m in METRICS.items() if m.multiview] == ["tse", "cse"]


def test_score_video_pools_the_frames_of_all_views():
    views = [panning_video(2, 64, 96, seed=seed) for seed in (10, 11)]
    generated = [add_noise(view, 15, seed=seed) for seed, view in enumerate(views)]
    scores = score_video(generated, views, "blur_ssim,edge_f1,edge_recall")
    assert list(scores) == ["blur_ssim", "edge_f1", "edge_recall"]
    all_generated, all_views = np.concatenate(generated), np.concatenate(views)
    assert scores["blur_ssim"] == pytest.approx(reference_blur_ssim(all_generated, all_views), abs=1e-12)
    expected = reference_edge_scores(all_generated, all_views)
    assert scores["edge_f1"] == pytest.approx(expected["edge_f1"], abs=1e-12)
    assert scores["edge_recall"] == pytest.approx(expected["edge_recall"], abs=1e-12)
    single = score_video(generated[0], views[0], ["blur_ssim"])
    assert single["blur_ssim"] == pytest.approx(reference_blur_ssim(generated[0], views[0]), abs=1e-12)


def test_score_video_reports_sampson_details():
    first = panning_video(3, 128, 192, seed=12)
    views = [first, plane_view(first)]
    details = {}
    scores = score_video(views, views, ["tse", "cse"], details=details)
    assert scores["tse"] == pytest.approx(temporal_sampson_error(views)["tse"], rel=1e-12)
    assert scores["cse"] == pytest.approx(cross_view_sampson_error(views)["cse"], rel=1e-12)
    assert details["tse"]["pairs"] == 4 and details["cse"]["pairs"] == 3 and "RANSAC" in details["cse"]["method"]


def test_score_video_refuses_what_it_cannot_compute_before_computing_anything():
    video = panning_video(2, 32, 48)
    with pytest.raises(ValueError, match="unknown metric.*ssim.*the metrics are blur_ssim, edge_f1"):
        score_video(video, video, "ssim")
    with pytest.raises(ValueError, match=r"depth_si_rmse needs models\['depth'\]"):
        score_video(video, video, ["blur_ssim", "depth_si_rmse"])
    with pytest.raises(ValueError, match="mask_miou needs the clip's caption"):
        score_video(video, video, ["mask_miou"], models={"masks": object()})
    with pytest.raises(ValueError, match="fid, fvd compare the distributions of a set"):
        score_video(video, video, ["fid", "fvd"])
    with pytest.raises(ValueError, match="cse .* needs at least 2 views, got 1"):
        score_video(video, video, ["cse"])
    with pytest.raises(ValueError, match="view 1: the prediction"):
        score_video([video, video], [video, video[:1]], ["blur_ssim"])


def test_score_video_passes_each_view_to_the_model_based_metrics(monkeypatch):
    calls = []
    depth = types.ModuleType("cosmos_composer.evaluation.depth")
    depth.depth_si_rmse = lambda prediction, reference, model: calls.append((prediction.shape, model)) or len(calls)
    masks = types.ModuleType("cosmos_composer.evaluation.masks")
    masks.mask_miou = lambda prediction, reference, caption, models: {"mask_miou": 0.5, "mask_recall": 0.25}
    monkeypatch.setitem(sys.modules, "cosmos_composer.evaluation.depth", depth)
    monkeypatch.setitem(sys.modules, "cosmos_composer.evaluation.masks", masks)
    import cosmos_composer.evaluation as evaluation

    monkeypatch.setattr(evaluation, "depth", depth, raising=False)
    monkeypatch.setattr(evaluation, "masks", masks, raising=False)
    video = panning_video(2, 32, 48)
    scores = score_video(
        [video, video], [video, video], ["depth_si_rmse", "mask_miou"], {"depth": "D", "masks": "M"}, caption="a car"
    )
    assert scores == {"depth_si_rmse": 1.5, "mask_miou": 0.5}  # the mean over the two views
    assert calls == [((2, 32, 48, 3), "D"), ((2, 32, 48, 3), "D")]


def test_aggregate_leaves_out_and_counts_missing_values():
    summary = aggregate({"a.mp4": {"tse": 1.0, "blur_ssim": 0.5}, "b.mp4": {"tse": float("nan"), "blur_ssim": 0.7},
                         "c.mp4": {"tse": 3.0, "blur_ssim": None}})  # fmt: skip
    assert summary["tse"] == {"mean": 2.0, "std": 1.0, "count": 2, "missing": 1}
    assert summary["blur_ssim"]["mean"] == pytest.approx(0.6) and summary["blur_ssim"]["missing"] == 1
    assert math.isnan(aggregate({"a.mp4": {"cse": float("nan")}})["cse"]["mean"])


# ---------------------------------------------------------------------------------------------------------------
# scripts/evaluate.py score and the benchmark section
# ---------------------------------------------------------------------------------------------------------------


def _write_clips(folder: Path, clips: dict[str, np.ndarray]) -> None:
    for name, frames in clips.items():
        write_mp4(folder / name, frames, fps=10)


def test_score_writes_the_table_and_json_of_two_folders(tmp_path, capsys):
    references = {f"clip_{i}.mp4": panning_video(3, 64, 96, seed=20 + i) for i in range(2)}
    generated = {name: add_noise(frames, 10 + 10 * i) for i, (name, frames) in enumerate(references.items())}
    _write_clips(tmp_path / "reference", references)
    _write_clips(tmp_path / "generated", generated)
    evaluate = load_script("evaluate")
    out = tmp_path / "scores.json"
    argv = ["score", "--prediction", str(tmp_path / "generated"), "--reference", str(tmp_path / "reference")]
    assert evaluate.main([*argv, "--json", str(out), "--no-progress"]) == 0
    document = json.loads(out.read_text())
    assert list(document) == ["metrics", "videos"]
    assert list(document["videos"]) == ["clip_0.mp4", "clip_1.mp4"]
    for name in references:
        scores = document["videos"][name]
        assert list(scores) == ["blur_ssim", "edge_f1", "edge_precision", "edge_recall"]
        decoded_generated = decode_frames(tmp_path / "generated" / name, 0, None)[0]
        decoded_reference = decode_frames(tmp_path / "reference" / name, 0, None)[0]
        assert scores["blur_ssim"] == pytest.approx(
            reference_blur_ssim(decoded_generated, decoded_reference), abs=1e-12
        )
        expected = reference_edge_scores(decoded_generated, decoded_reference)
        assert {key: scores[key] for key in expected} == pytest.approx(expected, abs=1e-12)
    for metric, mean in document["metrics"].items():
        assert mean == pytest.approx(np.mean([document["videos"][name][metric] for name in references]), abs=1e-12)
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["video", "blur_ssim", "edge_f1", "edge_precision", "edge_recall"]
    assert table[1].startswith("clip_0.mp4") and table[2].startswith("clip_1.mp4")
    mean_row = next(line for line in table if line.startswith("mean of 2"))
    assert mean_row.split()[3] == f"{document['metrics']['blur_ssim']:.4f}"
    assert any("higher is better: blur_ssim, edge_f1" in line for line in table)
    # Two files work too, whatever their names.
    single = tmp_path / "single.json"
    argv = ["score", "--prediction", str(tmp_path / "generated" / "clip_1.mp4"), "--reference"]
    argv += [str(tmp_path / "reference" / "clip_1.mp4"), "--metrics", "edge_f1", "--json", str(single), "--no-progress"]
    assert evaluate.main(argv) == 0
    assert json.loads(single.read_text())["videos"] == {
        "clip_1.mp4": {"edge_f1": document["videos"]["clip_1.mp4"]["edge_f1"]}
    }


def test_score_of_multiview_folders_with_tse_and_cse(tmp_path):
    cameras = ["camera_front_wide_120fov", "camera_cross_right_120fov"]
    first = panning_video(3, 128, 192, seed=30)
    for side in ("generated", "reference"):
        for camera, frames in zip(cameras, (first, plane_view(first))):
            write_mp4(tmp_path / side / f"ftheta_{camera}" / "clip.mp4", frames, fps=10)
    out = tmp_path / "scores.json"
    argv = ["score", "--prediction", str(tmp_path / "generated"), "--reference", str(tmp_path / "reference")]
    assert (
        load_script("evaluate").main([*argv, "--cameras", ",".join(cameras), "--json", str(out), "--no-progress"]) == 0
    )
    document = json.loads(out.read_text())
    scores = document["videos"]["clip.mp4"]
    assert list(scores) == ["blur_ssim", "edge_f1", "edge_precision", "edge_recall", "tse", "cse"]
    assert scores["blur_ssim"] == 1.0 and scores["edge_f1"] == 1.0
    assert 0 <= scores["tse"] < 0.5 and 0 <= scores["cse"] < 0.5
    assert document["details"]["clip.mp4"]["cse"]["pairs"] == 3


def test_score_errors_name_the_file_and_the_shapes(tmp_path, capsys):
    evaluate = load_script("evaluate")
    clip = panning_video(3, 32, 48)
    _write_clips(tmp_path / "reference", {"a.mp4": clip, "b.mp4": clip})
    _write_clips(tmp_path / "generated", {"a.mp4": clip})
    argv = ["score", "--prediction", str(tmp_path / "generated"), "--reference", str(tmp_path / "reference")]
    assert evaluate.main([*argv, "--no-progress"]) == 2
    assert f"{tmp_path / 'reference' / 'b.mp4'} (no {tmp_path / 'generated' / 'b.mp4'})" in capsys.readouterr().err

    _write_clips(tmp_path / "generated", {"b.mp4": clip[:2]})  # one frame short
    assert evaluate.main([*argv, "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert str(tmp_path / "generated" / "b.mp4") in error and str(tmp_path / "reference" / "b.mp4") in error
    assert "(2, 32, 48, 3)" in error and "(3, 32, 48, 3)" in error

    _write_clips(tmp_path / "generated", {"b.mp4": panning_video(3, 32, 64)})  # another size: the header says so
    assert evaluate.main([*argv, "--no-progress"]) == 2
    assert "is 32x64 but" in capsys.readouterr().err

    assert evaluate.main([*argv, "--metrics", "blur_ssim,sharpness"]) == 2
    assert "unknown metric(s) sharpness; the metrics are blur_ssim" in capsys.readouterr().err
    assert evaluate.main([*argv, "--metrics", "depth_si_rmse", "--depth-model", str(tmp_path / "no_depth")]) == 2
    assert "--depth-model" in (error := capsys.readouterr().err) and "no_depth does not exist" in error


def test_the_benchmark_section_times_both_metrics(capsys):
    benchmark = load_script("benchmark")
    benchmark.main(
        ["--section", "evaluate", "--evaluate-frames", "2", "--evaluate-height", "32", "--evaluate-width", "48"]
    )
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("evaluate: 2 frames of 32x48, 1 thread(s): blur_ssim_s_per_pair=")
    assert "edge_f1_s_per_pair=" in line
