"""Depth si-RMSE: how well a generated video keeps the depth of its reference, as PAI-Bench-Transfer scores it.

The benchmark (SHI-Labs/physical-ai-bench, `transfer/compute_metrics.py` and
`compute_depth_error_video_sirmse` in `transfer/benchmark_pipelines/scores/transfer_bench/metrics_canny_blur_depth.py`)
runs one monocular depth model on both videos and compares the two predictions; "ground truth" is the depth
model's output on the reference video, not a sensor depth. Per frame:

- valid pixels: both depths > 0 (a relative model outputs 0 at infinity, e.g. the sky);
- the prediction is scaled by median(reference) / median(prediction) over the valid pixels;
- RMSE of (reference - scaled prediction), in the model's output units, not in log space (the benchmark's
  default `compute_in_log_space=False`).

The score is the mean over frames (lower is better). The benchmark's model is Video-Depth-Anything-Small
(`transfer/get_checkpoint.sh` fetches the relative `video_depth_anything_vits.pth`; its wrapper module is not in the
repository). Like Depth Anything V2, which it extends, it predicts relative inverse depth (disparity), and the RMSE
is taken on that output as is: inverting it would blow up where the disparity is near 0. Here Depth Anything V2
(transformers' `AutoModelForDepthEstimation`) runs frame by frame; the per-frame median scaling removes the scale
that a video depth model keeps consistent across frames, so the frame-wise model measures the same thing.

Beyond the benchmark's code: each residual is clipped to +-`RESIDUAL_CLIP` (the benchmark's
`compute_depth_error_video_sirmse` has no clip; `residual_clip=None` reproduces it), and a frame without a valid
pixel is left out of the mean (the benchmark counts it as 0, which would lower the score of a broken video).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# Residuals are clipped to this many depth-model output units (the metric's definition in this project).
RESIDUAL_CLIP = 10.0


@dataclass
class DepthModel:
    """A transformers depth estimator and its image processor, ready to run on `device`."""

    model: Any  # a transformers *ForDepthEstimation model, in eval mode on `device`
    processor: Any  # its image processor (resize, normalise; resizes the prediction back)
    device: str = "cpu"
    batch_frames: int = 8  # frames per forward pass

    @torch.inference_mode()
    def estimate(self, video_T_H_W_3: np.ndarray) -> np.ndarray:
        """The model's depth output for every frame, `[T, H, W]` float64 at the video's resolution."""
        height, width = video_T_H_W_3.shape[1:3]
        depths = []
        for start in range(0, len(video_T_H_W_3), self.batch_frames):
            frames = list(video_T_H_W_3[start : start + self.batch_frames])
            inputs = self.processor(images=frames, return_tensors="pt").to(self.device)
            outputs = self.model(**inputs)
            resized = self.processor.post_process_depth_estimation(
                outputs, target_sizes=[(height, width)] * len(frames)
            )
            depths.extend(result["predicted_depth"].float().cpu().numpy() for result in resized)
        return np.stack(depths).astype(np.float64)


def check_same_video_shape(prediction: np.ndarray, reference: np.ndarray, metric: str) -> None:
    """Both videos RGB uint8 `[T, H, W, 3]` of the same shape, or a ValueError naming the metric and the shapes."""
    for name, video in (("prediction", prediction), ("reference", reference)):
        if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
            raise ValueError(f"{metric}: the {name} must be RGB uint8 [T, H, W, 3], got {video.dtype} {video.shape}")
    if prediction.shape != reference.shape:
        raise ValueError(
            f"{metric}: prediction {prediction.shape} and reference {reference.shape} differ; score videos of the same "
            "length and size"
        )


def scale_invariant_rmse(
    pred_depth_T_H_W: np.ndarray, ref_depth_T_H_W: np.ndarray, residual_clip: float | None = RESIDUAL_CLIP
) -> float:
    """Mean over frames of the RMSE after scaling each predicted frame by median(reference) / median(prediction).

    Pixels count where both depths are > 0 and finite; a frame without one is left out, and NaN is returned when
    no frame has one. `residual_clip=None` turns the clip off (the benchmark's code).
    """
    if pred_depth_T_H_W.shape != ref_depth_T_H_W.shape or pred_depth_T_H_W.ndim != 3:
        raise ValueError(
            f"scale_invariant_rmse needs two [T, H, W] depth videos of the same shape, got {pred_depth_T_H_W.shape} "
            f"and {ref_depth_T_H_W.shape}"
        )
    pred = pred_depth_T_H_W.astype(np.float64)
    ref = ref_depth_T_H_W.astype(np.float64)
    frame_rmses = []
    for pred_frame, ref_frame in zip(pred, ref):
        valid = (pred_frame > 0) & (ref_frame > 0) & np.isfinite(pred_frame) & np.isfinite(ref_frame)
        if not valid.any():
            continue
        pred_valid, ref_valid = pred_frame[valid], ref_frame[valid]
        scale = np.median(ref_valid) / np.median(pred_valid)
        residual = ref_valid - scale * pred_valid
        if residual_clip is not None:
            residual = np.clip(residual, -residual_clip, residual_clip)
        frame_rmses.append(np.sqrt(np.mean(residual**2)))
    return float(np.mean(frame_rmses)) if frame_rmses else float("nan")


def depth_si_rmse(prediction_T_H_W_3: np.ndarray, reference_T_H_W_3: np.ndarray, depth_model: DepthModel) -> float:
    """si-RMSE between the depth of a generated video and the depth of its reference (lower is better)."""
    check_same_video_shape(prediction_T_H_W_3, reference_T_H_W_3, "depth_si_rmse")
    return scale_invariant_rmse(depth_model.estimate(prediction_T_H_W_3), depth_model.estimate(reference_T_H_W_3))
