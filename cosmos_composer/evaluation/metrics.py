"""Model-free metrics of a generated video against the clip it was generated for.

The definitions are those of the Transfer2.5 report (arXiv 2511.00062, Tables 12 and 14) as its benchmarks
compute them: PAI-Bench-C (``SHI-Labs/physical-ai-bench``, ``conditional_generation/benchmark_pipelines/scores/
transfer_bench/``) for Blur SSIM and Edge F1, and the cosmos-cookbook Sampson script (``scripts/metrics/
geometrical_consistency/sampson/``) for TSE and CSE. Videos are RGB uint8 ``[T, H, W, 3]`` as decoded
(:func:`cosmos_composer.data.video.decode_frames`); the prediction and the reference have the same shape.

* :func:`blur_ssim` (higher is better): both videos through upstream's "medium" bilateral blur, SSIM of each
  frame pair, mean over frames.
* :func:`edge_scores` (higher is better): Canny edges of both, F1 / precision / recall over all pixels of all
  frames with the reference's edges as ground truth.
* :func:`sampson_error`, :func:`temporal_sampson_error` (TSE), :func:`cross_view_sampson_error` (CSE) (lower
  is better): keypoints matched between two images, the square root of each match's Sampson distance under a
  fundamental matrix (a distance in pixels), averaged over the matches of a frame pair, then over pairs.
* :func:`frechet_distance` and :func:`feature_statistics`: the Fréchet distance of two Gaussians (FID, FVD).

Frames are independent, so the per-frame work runs on a thread pool (OpenCV and scikit-image's filters
release the GIL); ``threads`` sets its size (default: the CPUs this process may use).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import cv2
import numpy as np
import scipy.linalg
from skimage.metrics import structural_similarity

from cosmos_composer.data.cameras import DEFAULT_CAMERAS
from cosmos_composer.data.controls import BILATERAL_PRESET, EDGE_PRESETS

# Blur SSIM and Edge F1 use upstream's "medium" control presets, as PAI-Bench-C does (video_to_canny_and_blur.py:
# bilateralFilter(frame, d=30, sigmaColor=150, sigmaSpace=100); Canny(grey, 100, 200) after RGB -> grey).
BLUR_BILATERAL = BILATERAL_PRESET
EDGE_THRESHOLDS = EDGE_PRESETS["medium"]
# SSIM's data range when the blurred reference frame is constant (its max - min, PAI-Bench's data_range, is 0
# and SSIM would be 0 / 0): the full uint8 range, scikit-image's own default for uint8 images.
CONSTANT_FRAME_DATA_RANGE = 255

# Keypoints: OpenCV SIFT, at most 2048 per image (the cookbook's SuperPoint extractor keeps 2048), matched by
# brute force and Lowe's ratio test.
SIFT_MAX_KEYPOINTS = 2048
LOWE_RATIO = 0.75
# The fundamental matrix without calibration: cv2.findFundamentalMat with RANSAC and OpenCV's default
# threshold and confidence, as the cookbook's "unknown intrinsic" method calls it.
RANSAC_THRESHOLD_PX = 3.0
RANSAC_CONFIDENCE = 0.99
# A frame pair with fewer matches is skipped (and counted): twice the 8 points that fix F, so RANSAC's F is not
# measured on little more than the points it was fitted to.
MIN_MATCHES = 16
MATCHERS = ("sift",)

# Camera pairs of the official 7-camera rig whose fields of view overlap, for CSE: the six headings around the
# car in the official order (front wide, cross right, rear right, rear tele, rear left, cross left, back to front
# wide) and the front tele camera, which looks through the middle of the front wide camera's view (it sits next
# to the cross left camera in the list but sees none of its view). For the 3-camera rig (front wide and the two
# cross cameras) this leaves the cookbook's two pairs, front-cross_right and front-cross_left.
OFFICIAL_CAMERA_NEIGHBOURS: tuple[tuple[str, str], ...] = (
    ("camera_front_wide_120fov", "camera_cross_right_120fov"),
    ("camera_cross_right_120fov", "camera_rear_right_70fov"),
    ("camera_rear_right_70fov", "camera_rear_tele_30fov"),
    ("camera_rear_tele_30fov", "camera_rear_left_70fov"),
    ("camera_rear_left_70fov", "camera_cross_left_120fov"),
    ("camera_cross_left_120fov", "camera_front_wide_120fov"),
    ("camera_front_wide_120fov", "camera_front_tele_30fov"),
)

_Result = TypeVar("_Result")


def _default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _map(function: Callable[[int], _Result], count: int, threads: int | None) -> list[_Result]:
    """``[function(i) for i in range(count)]`` on a pool of ``threads`` threads (in order)."""
    threads = threads or _default_threads()
    if threads == 1 or count == 1:
        return [function(index) for index in range(count)]
    with ThreadPoolExecutor(max_workers=min(threads, count)) as pool:
        return list(pool.map(function, range(count)))


def _check_video(video: np.ndarray, what: str) -> None:
    if not isinstance(video, np.ndarray) or video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        described = f"{video.dtype} {video.shape}" if isinstance(video, np.ndarray) else type(video).__name__
        raise ValueError(f"{what} must be uint8 RGB frames [T, H, W, 3], got {described}")
    if video.shape[0] == 0:
        raise ValueError(f"{what} has no frames")


def check_video_pair(prediction: np.ndarray, reference: np.ndarray) -> None:
    """Raise ``ValueError`` unless both are uint8 RGB videos ``[T, H, W, 3]`` of the same shape."""
    _check_video(prediction, "the prediction")
    _check_video(reference, "the reference")
    if prediction.shape != reference.shape:
        raise ValueError(
            f"the prediction {prediction.shape} and the reference {reference.shape} differ in shape; compare a "
            "generated video with the clip it was generated for (same frame count and size)"
        )


# ---------------------------------------------------------------------------------------------------------------
# Blur SSIM
# ---------------------------------------------------------------------------------------------------------------


def _bilateral_blur(frame_H_W_3: np.ndarray) -> np.ndarray:
    diameter, sigma_color, sigma_space = BLUR_BILATERAL
    return cv2.bilateralFilter(frame_H_W_3, diameter, sigma_color, sigma_space)


def blur_ssim_frames(prediction: np.ndarray, reference: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Blur SSIM of each frame pair, float64 ``[T]`` (:func:`blur_ssim` is their mean).

    PAI-Bench-C's ``compute_blur_error_blur_video``: scikit-image's ``structural_similarity(reference, prediction,
    channel_axis=2, data_range=reference.max() - reference.min(), full=True)`` on the bilateral-blurred frames,
    and the mean of its full SSIM map over pixels and channels. That map mean includes the 3-pixel border that
    the function's own return value crops (on a 704x1280 test pair the two differ by 5e-5); the
    benchmark's numbers are the map mean, so this is too. A constant blurred reference frame (data range 0)
    uses ``CONSTANT_FRAME_DATA_RANGE``.
    """
    check_video_pair(prediction, reference)

    def frame_ssim(t: int) -> float:
        reference_blur, prediction_blur = _bilateral_blur(reference[t]), _bilateral_blur(prediction[t])
        data_range = int(reference_blur.max()) - int(reference_blur.min()) or CONSTANT_FRAME_DATA_RANGE
        _, ssim_H_W_3 = structural_similarity(
            reference_blur, prediction_blur, channel_axis=2, data_range=data_range, full=True
        )
        return float(ssim_H_W_3.mean(dtype=np.float64))

    return np.array(_map(frame_ssim, len(reference), threads), dtype=np.float64)


def blur_ssim(prediction: np.ndarray, reference: np.ndarray, threads: int | None = None) -> float:
    """Blur SSIM of a generated video against its reference clip, in [-1, 1] (1: identical after the blur).

    Both ``[T, H, W, 3]`` uint8 RGB; see :func:`blur_ssim_frames` for the definition.
    """
    return float(blur_ssim_frames(prediction, reference, threads).mean())


# ---------------------------------------------------------------------------------------------------------------
# Edge F1
# ---------------------------------------------------------------------------------------------------------------


def _edges(frame_H_W_3: np.ndarray) -> np.ndarray:
    return cv2.Canny(cv2.cvtColor(frame_H_W_3, cv2.COLOR_RGB2GRAY), *EDGE_THRESHOLDS) > 0


def edge_counts(prediction: np.ndarray, reference: np.ndarray, threads: int | None = None) -> tuple[int, int, int]:
    """``(true_positives, false_positives, false_negatives)`` of the prediction's Canny edge pixels against the
    reference's, summed over all pixels of all frames (see :func:`edge_scores`)."""
    check_video_pair(prediction, reference)

    def frame_counts(t: int) -> tuple[int, int, int]:
        predicted, actual = _edges(prediction[t]), _edges(reference[t])
        true_positives = int(np.count_nonzero(predicted & actual))
        return (
            true_positives,
            int(np.count_nonzero(predicted)) - true_positives,
            int(np.count_nonzero(actual)) - true_positives,
        )

    counts = np.array(_map(frame_counts, len(reference), threads), dtype=np.int64).reshape(-1, 3)
    true_positives, false_positives, false_negatives = counts.sum(axis=0).tolist()
    return true_positives, false_positives, false_negatives


def edge_scores_from_counts(true_positives: int, false_positives: int, false_negatives: int) -> dict[str, float]:
    """``edge_f1``, ``edge_precision``, ``edge_recall`` from pixel counts (see :func:`edge_scores` for 0 / 0)."""
    if true_positives + false_positives + false_negatives == 0:
        return {"edge_f1": 1.0, "edge_precision": 1.0, "edge_recall": 1.0}  # no edges on either side: they agree
    predicted, actual = true_positives + false_positives, true_positives + false_negatives
    return {
        "edge_f1": 2 * true_positives / (2 * true_positives + false_positives + false_negatives),
        "edge_precision": true_positives / predicted if predicted else 0.0,
        "edge_recall": true_positives / actual if actual else 0.0,
    }


def edge_scores(prediction: np.ndarray, reference: np.ndarray, threads: int | None = None) -> dict[str, float]:
    """Edge F1, precision and recall of a generated video against its reference clip (higher is better).

    PAI-Bench-C's ``compute_canny_error_video_f1``: every frame RGB -> grey (``cv2.COLOR_RGB2GRAY``), then
    ``cv2.Canny(grey, 100, 200)``; the reference's edge pixels are the ground truth, and TP, FP and FN are counted
    over all pixels of all frames: F1 = 2TP / (2TP + FP + FN), precision = TP / (TP + FP), recall = TP / (TP + FN).
    0 / 0: with no edge on either side all three are 1 (the prediction reproduces the reference exactly); a
    prediction without edges against a reference with some has precision 0, and one with edges against a
    reference without has recall 0 (PAI-Bench's convention; F1 is 0 in both).
    """
    return edge_scores_from_counts(*edge_counts(prediction, reference, threads))


# ---------------------------------------------------------------------------------------------------------------
# Sampson error: TSE and CSE
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Keypoints:
    """SIFT keypoints of one image: pixel positions ``[N, 2]`` (x, y) and descriptors ``[N, 128]``."""

    points_N_2: np.ndarray
    descriptors_N_128: np.ndarray | None  # None when the image has no keypoints


def _check_matcher(matcher: str) -> None:
    if matcher not in MATCHERS:
        raise ValueError(f"matcher {matcher!r} is not one of {', '.join(MATCHERS)}")


def sift_keypoints(image_H_W_3: np.ndarray) -> Keypoints:
    """SIFT keypoints of an RGB uint8 image (on its grey version), at most ``SIFT_MAX_KEYPOINTS``."""
    grey = cv2.cvtColor(image_H_W_3, cv2.COLOR_RGB2GRAY)
    keypoints, descriptors = cv2.SIFT_create(nfeatures=SIFT_MAX_KEYPOINTS).detectAndCompute(grey, None)
    points_N_2 = np.array([keypoint.pt for keypoint in keypoints], dtype=np.float64).reshape(-1, 2)
    return Keypoints(points_N_2, descriptors)


def match_keypoints(a: Keypoints, b: Keypoints) -> tuple[np.ndarray, np.ndarray]:
    """Matched positions ``([M, 2] in a, [M, 2] in b)``: each keypoint of ``a`` to its nearest descriptor in ``b``
    (L2), kept when nearer than ``LOWE_RATIO`` times the second nearest (Lowe's ratio test)."""
    if a.descriptors_N_128 is None or b.descriptors_N_128 is None or len(b.points_N_2) < 2:
        return np.empty((0, 2)), np.empty((0, 2))
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(a.descriptors_N_128, b.descriptors_N_128, k=2)
    kept = [pair[0] for pair in pairs if len(pair) == 2 and pair[0].distance < LOWE_RATIO * pair[1].distance]
    index_a = np.array([match.queryIdx for match in kept], dtype=np.int64)
    index_b = np.array([match.trainIdx for match in kept], dtype=np.int64)
    return a.points_N_2[index_a].reshape(-1, 2), b.points_N_2[index_b].reshape(-1, 2)


def fit_fundamental(points_a_M_2: np.ndarray, points_b_M_2: np.ndarray) -> np.ndarray | None:
    """F with ``x_b^T F x_a = 0`` from matches by RANSAC (``cv2.findFundamentalMat``, ``FM_RANSAC``); None when
    there are fewer than 8 matches or RANSAC finds no single solution."""
    if len(points_a_M_2) < 8:
        return None
    fundamental, _ = cv2.findFundamentalMat(
        points_a_M_2, points_b_M_2, cv2.FM_RANSAC, RANSAC_THRESHOLD_PX, RANSAC_CONFIDENCE
    )
    return fundamental if fundamental is not None and fundamental.shape == (3, 3) else None


def sampson_pixels(points_a_M_2: np.ndarray, points_b_M_2: np.ndarray, fundamental: np.ndarray) -> np.ndarray:
    """The square root of each match's Sampson distance under F (``x_b^T F x_a = 0``), in pixels, ``[M]``.

    Sampson distance: ``(x_b^T F x_a)^2 / ((F x_a)_1^2 + (F x_a)_2^2 + (F^T x_b)_1^2 + (F^T x_b)_2^2)``, the first-
    order distance of the match from satisfying the epipolar constraint. A match whose denominator is 0 (it
    sits on an epipole) has no distance and is left out.
    """
    fundamental = np.asarray(fundamental, dtype=np.float64)
    homogeneous_a = np.concatenate([points_a_M_2, np.ones((len(points_a_M_2), 1))], axis=1)
    homogeneous_b = np.concatenate([points_b_M_2, np.ones((len(points_b_M_2), 1))], axis=1)
    lines_in_b = homogeneous_a @ fundamental.T  # F x_a for every match
    lines_in_a = homogeneous_b @ fundamental  # F^T x_b
    residual = np.sum(homogeneous_b * lines_in_b, axis=1)
    denominator = lines_in_b[:, 0] ** 2 + lines_in_b[:, 1] ** 2 + lines_in_a[:, 0] ** 2 + lines_in_a[:, 1] ** 2
    defined = denominator > 0
    return np.sqrt(residual[defined] ** 2 / denominator[defined])


def _pair_error(a: Keypoints, b: Keypoints, fundamental: np.ndarray | None) -> float | None:
    points_a, points_b = match_keypoints(a, b)
    if len(points_a) < MIN_MATCHES:
        return None
    if fundamental is None:
        fundamental = fit_fundamental(points_a, points_b)
        if fundamental is None:
            return None
    errors = sampson_pixels(points_a, points_b, fundamental)
    return float(errors.mean()) if len(errors) else None


def sampson_error(
    image_a: np.ndarray, image_b: np.ndarray, fundamental: np.ndarray | None = None, matcher: str = "sift"
) -> float | None:
    """Mean Sampson error in pixels of the keypoints matched between two RGB uint8 images ``[H, W, 3]``.

    ``fundamental``: a calibrated F with ``x_b^T F x_a = 0`` (OpenCV's convention for ``findFundamentalMat(points_a,
    points_b)``); without it F is fitted to the matches by RANSAC. None when there are fewer than
    ``MIN_MATCHES`` matches or RANSAC finds no F.
    """
    _check_matcher(matcher)
    return _pair_error(sift_keypoints(image_a), sift_keypoints(image_b), fundamental)


def _sampson_method(what: str) -> str:
    return (
        f"OpenCV SIFT (at most {SIFT_MAX_KEYPOINTS} keypoints) matched with Lowe's ratio {LOWE_RATIO}; {what}; "
        f"frame pairs with fewer than {MIN_MATCHES} matches, or without F, skipped"
    )


TSE_METHOD = _sampson_method("F by RANSAC (cv2.findFundamentalMat, FM_RANSAC) for each frame pair")


def _views_keypoints(views: Sequence[np.ndarray], threads: int | None) -> list[list[Keypoints]]:
    """SIFT keypoints of every frame of every view ``[T, H, W, 3]``: ``[view][frame]``."""
    for index, video in enumerate(views):
        _check_video(video, f"view {index}")
    frames = [(view, t) for view, video in enumerate(views) for t in range(len(video))]
    keypoints = _map(lambda i: sift_keypoints(views[frames[i][0]][frames[i][1]]), len(frames), threads)
    by_view: list[list[Keypoints]] = [[] for _ in views]
    for (view, _), frame_keypoints in zip(frames, keypoints):
        by_view[view].append(frame_keypoints)
    return by_view


def _temporal(keypoints: list[list[Keypoints]], threads: int | None) -> dict:
    pairs = [(view, t) for view, frames in enumerate(keypoints) for t in range(len(frames) - 1)]

    def pair_error(index: int) -> float | None:
        view, t = pairs[index]
        return _pair_error(keypoints[view][t], keypoints[view][t + 1], None)

    errors = _map(pair_error, len(pairs), threads)
    kept = [error for error in errors if error is not None]
    return {
        "tse": float(np.mean(kept)) if kept else float("nan"),
        "tse_pairs": len(kept),
        "tse_skipped_pairs": len(errors) - len(kept),
        "tse_method": TSE_METHOD,
    }


def temporal_sampson_error(views: Sequence[np.ndarray], threads: int | None = None) -> dict:
    """TSE: the Sampson error between consecutive frames of each camera (lower is better).

    ``views``: one RGB uint8 video ``[T, H, W, 3]`` per camera (a single view is a list of one). Every pair of
    consecutive frames of a camera gets its own F by RANSAC (the camera moves, so F changes) and the mean
    Sampson error of its matches in pixels (:func:`sampson_error`); TSE is the mean over all pairs of all cameras.
    The cookbook evaluates the front wide and the two cross cameras only; this uses every view given.

    Returns ``tse`` (NaN when no pair has enough matches), ``tse_pairs`` (pairs used), ``tse_skipped_pairs``
    (fewer than ``MIN_MATCHES`` matches or no F) and ``tse_method`` (matcher and F source).
    """
    return _temporal(_views_keypoints(views, threads), threads)


def view_neighbours(num_views: int, cameras: Sequence[str] | None = None) -> list[tuple[int, int]]:
    """Pairs of view indices whose cameras see overlapping parts of the scene, for CSE.

    ``cameras``: the camera of each view. When every camera is one of the official 7 (the default when there are 7
    views: the multiview model's view order is ``DEFAULT_CAMERAS``), the pairs of ``OFFICIAL_CAMERA_NEIGHBOURS``
    that the rig has. Otherwise the views are taken as listed in order around the rig and each is paired with
    the next, the last not with the first (pass ``neighbours`` to :func:`cross_view_sampson_error` for a ring).
    """
    if cameras is None and num_views == len(DEFAULT_CAMERAS):
        cameras = DEFAULT_CAMERAS
    if cameras is not None:
        if len(cameras) != num_views:
            raise ValueError(f"{len(cameras)} camera names {list(cameras)} for {num_views} views")
        if set(cameras) <= set(DEFAULT_CAMERAS):
            position = {camera: index for index, camera in enumerate(cameras)}
            return [
                (position[a], position[b]) for a, b in OFFICIAL_CAMERA_NEIGHBOURS if a in position and b in position
            ]
    return [(index, index + 1) for index in range(num_views - 1)]


def _cse_method(given: Sequence[tuple[int, int]]) -> str:
    ransac = (
        "F by RANSAC (cv2.findFundamentalMat, FM_RANSAC) for each camera pair from its matches of all frames "
        "together (the cameras are rigidly mounted)"
    )
    if given:
        return _sampson_method(f"F given for camera pairs {sorted(given)}, for any other {ransac}")
    return _sampson_method(ransac)


def _cross_view(
    keypoints: list[list[Keypoints]],
    neighbours: Sequence[tuple[int, int]],
    fundamentals: Mapping[tuple[int, int], np.ndarray] | None,
    threads: int | None,
) -> dict:
    fundamentals = dict(fundamentals or {})
    errors: list[float] = []
    skipped = 0
    for view_a, view_b in neighbours:
        num_frames = min(len(keypoints[view_a]), len(keypoints[view_b]))
        matches = _map(lambda t: match_keypoints(keypoints[view_a][t], keypoints[view_b][t]), num_frames, threads)
        usable = [(points_a, points_b) for points_a, points_b in matches if len(points_a) >= MIN_MATCHES]
        skipped += num_frames - len(usable)
        fundamental = fundamentals.get((view_a, view_b))
        if fundamental is None and usable:
            # The cameras do not move relative to each other: one F for the whole clip, as the cookbook fits it.
            fundamental = fit_fundamental(*(np.concatenate(side) for side in zip(*usable)))
        if fundamental is None:
            skipped += len(usable)
            continue
        for points_a, points_b in usable:
            pixels = sampson_pixels(points_a, points_b, fundamental)
            if len(pixels):
                errors.append(float(pixels.mean()))
            else:
                skipped += 1
    return {
        "cse": float(np.mean(errors)) if errors else float("nan"),
        "cse_pairs": len(errors),
        "cse_skipped_pairs": skipped,
        "cse_camera_pairs": [tuple(pair) for pair in neighbours],
        "cse_method": _cse_method([pair for pair in neighbours if pair in fundamentals]),
    }


def _check_neighbours(neighbours: Sequence[tuple[int, int]], num_views: int) -> list[tuple[int, int]]:
    pairs = [tuple(pair) for pair in neighbours]
    bad = [pair for pair in pairs if len(pair) != 2 or not all(0 <= i < num_views for i in pair) or pair[0] == pair[1]]
    if bad:
        raise ValueError(f"camera pairs {bad} are not pairs of two different view indices in 0..{num_views - 1}")
    return pairs


def cross_view_sampson_error(
    views: Sequence[np.ndarray],
    neighbours: Sequence[tuple[int, int]] | None = None,
    cameras: Sequence[str] | None = None,
    fundamentals: Mapping[tuple[int, int], np.ndarray] | None = None,
    threads: int | None = None,
) -> dict:
    """CSE: the Sampson error between neighbouring cameras at the same time (lower is better).

    ``views``: one RGB uint8 video ``[T, H, W, 3]`` per camera, in view order. ``neighbours``: the camera pairs
    ``(a, b)`` of view indices to compare; default :func:`view_neighbours` of ``cameras``. For each pair and time,
    the matches between the two frames and their mean Sampson error in pixels; CSE is the mean over all
    times and pairs. F of a pair is ``fundamentals[(a, b)]`` (``x_b^T F x_a = 0``, from calibration) when given,
    else one F by RANSAC from the pair's matches of all frames (the cookbook's method: the cameras are rigid).

    Returns ``cse`` (NaN when nothing could be measured), ``cse_pairs`` (frame pairs used), ``cse_skipped_pairs``
    (fewer than ``MIN_MATCHES`` matches, or no F for the camera pair), ``cse_camera_pairs`` and ``cse_method``.
    """
    if len(views) < 2:
        raise ValueError(f"CSE compares cameras with each other and needs at least 2 views, got {len(views)}")
    if neighbours is None:
        neighbours = view_neighbours(len(views), cameras)
    neighbours = _check_neighbours(neighbours, len(views))
    return _cross_view(_views_keypoints(views, threads), neighbours, fundamentals, threads)


def sampson_errors(
    views: Sequence[np.ndarray],
    temporal: bool = True,
    cross_view: bool = True,
    neighbours: Sequence[tuple[int, int]] | None = None,
    cameras: Sequence[str] | None = None,
    threads: int | None = None,
) -> dict:
    """TSE and / or CSE of the same views with each frame's keypoints found once (the results of
    :func:`temporal_sampson_error` and :func:`cross_view_sampson_error` merged)."""
    if cross_view and len(views) < 2:
        raise ValueError(f"CSE compares cameras with each other and needs at least 2 views, got {len(views)}")
    keypoints = _views_keypoints(views, threads)
    result = _temporal(keypoints, threads) if temporal else {}
    if cross_view:
        pairs = _check_neighbours(
            neighbours if neighbours is not None else view_neighbours(len(views), cameras), len(views)
        )
        result.update(_cross_view(keypoints, pairs, None, threads))
    return result


# ---------------------------------------------------------------------------------------------------------------
# Fréchet distance (FID, FVD)
# ---------------------------------------------------------------------------------------------------------------

# Largest imaginary part of sqrtm(sigma1 sigma2)'s diagonal that is taken for round-off (pytorch-fid's bound).
FRECHET_MAX_IMAGINARY = 1e-3
# Added to both covariances' diagonals when their product has no finite square root (singular estimates).
FRECHET_EPS = 1e-6


def feature_statistics(features_N_D: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and covariance ``[D, D]`` (unbiased, N - 1) of N feature vectors, in float64."""
    features_N_D = np.asarray(features_N_D, dtype=np.float64)
    if features_N_D.ndim != 2 or len(features_N_D) < 2:
        raise ValueError(f"feature statistics need at least 2 feature vectors [N, D], got shape {features_N_D.shape}")
    return features_N_D.mean(axis=0), np.cov(features_N_D, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance of N(mu1, sigma1) and N(mu2, sigma2), computed in float64:
    ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrtm(sigma1 sigma2))``.

    The matrix square root (``scipy.linalg.sqrtm``) of a product of covariance estimates may come out complex
    from round-off: its imaginary part is dropped when the diagonal's is below ``FRECHET_MAX_IMAGINARY``, else
    this raises. Non-finite square roots (singular covariances) are retried with ``FRECHET_EPS`` on the diagonals.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, dtype=np.float64)), np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, dtype=np.float64)),
        np.atleast_2d(np.asarray(sigma2, dtype=np.float64)),
    )
    dimension = mu1.shape[0]
    if (
        mu1.shape != (dimension,)
        or mu2.shape != (dimension,)
        or sigma1.shape != (dimension, dimension)
        or sigma2.shape != (dimension, dimension)
    ):
        raise ValueError(
            f"Fréchet distance needs means [D] and covariances [D, D] of one D, got {mu1.shape}, {sigma1.shape}, "
            f"{mu2.shape}, {sigma2.shape}"
        )
    covariance_sqrt = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covariance_sqrt).all():
        offset = np.eye(dimension) * FRECHET_EPS
        covariance_sqrt = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covariance_sqrt):
        imaginary = np.abs(np.diagonal(covariance_sqrt).imag).max()
        if imaginary > FRECHET_MAX_IMAGINARY:
            raise ValueError(
                f"sqrtm(sigma1 @ sigma2) has an imaginary part of {imaginary:.3g} on its diagonal (above "
                f"{FRECHET_MAX_IMAGINARY}): the covariances are not valid (too few samples for the dimension?)"
            )
        covariance_sqrt = covariance_sqrt.real
    difference = mu1 - mu2
    return float(difference @ difference + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covariance_sqrt))
