"""evaluate section: seconds per video pair of the model-free per-video metrics (Blur SSIM and Edge F1 of
cosmos_composer/evaluation/metrics.py) at the single-view recipe's size (93 frames of 704x1280), on synthetic
frames: a smooth random texture panning across the frame, and the same with noise as the "generated" video.
Blur SSIM is dominated by the bilateral filter of both videos (d=30), Edge F1 by Canny. `--evaluate-threads`
threads (default 1: one CPU core).
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from ..evaluation.metrics import blur_ssim, edge_scores


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("evaluate section")
    group.add_argument("--evaluate-frames", type=int, default=93)
    group.add_argument("--evaluate-height", type=int, default=704)
    group.add_argument("--evaluate-width", type=int, default=1280)
    group.add_argument(
        "--evaluate-threads", type=int, default=1, help="threads over frames, and OpenCV's threads (default: 1 core)"
    )


def synthetic_video_pair(frames: int, height: int, width: int, seed: int = 0):
    """A reference clip (a smooth random texture panning 2 pixels a frame) and a noisy copy, uint8 [T, H, W, 3]."""
    rng = np.random.default_rng(seed)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (height, width + 2 * frames, 3), dtype=np.uint8), (0, 0), 3)
    reference = np.stack([texture[:, 2 * t : 2 * t + width] for t in range(frames)])
    noise = rng.normal(0, 8, reference.shape)
    prediction = np.clip(reference + noise, 0, 255).astype(np.uint8)
    return prediction, reference


def run(args: argparse.Namespace) -> None:
    """Seconds per 93-frame 704x1280 video pair of Blur SSIM and Edge F1 (precision and recall come with F1)."""
    prediction, reference = synthetic_video_pair(args.evaluate_frames, args.evaluate_height, args.evaluate_width)
    opencv_threads = cv2.getNumThreads()
    cv2.setNumThreads(args.evaluate_threads)
    seconds = {}
    try:
        for name, metric in (("blur_ssim", blur_ssim), ("edge_f1", edge_scores)):
            metric(prediction[:1], reference[:1], threads=args.evaluate_threads)  # warm-up (OpenCV's first calls)
            start, start_cpu = time.perf_counter(), time.process_time()
            metric(prediction, reference, threads=args.evaluate_threads)
            seconds[f"{name}_s_per_pair"] = time.perf_counter() - start
            # CPU seconds of this process: with one thread, what the wall time would be without other processes.
            seconds[f"{name}_cpu_s_per_pair"] = time.process_time() - start_cpu
    finally:
        cv2.setNumThreads(opencv_threads)
    print(
        f"evaluate: {args.evaluate_frames} frames of {args.evaluate_height}x{args.evaluate_width}, "
        f"{args.evaluate_threads} thread(s): " + " ".join(f"{key}={value:.2f}" for key, value in seconds.items())
    )


# ---------------------------------------------------------------------------------------------------------------
