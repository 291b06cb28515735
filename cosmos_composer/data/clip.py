"""Turn one MDS row (a dict of columns) into the pixel tensors of a training clip.

Shared by the dataset (rows read from shards) and by ``--precompute`` (rows about to be written), so
cached latents are computed from exactly the frames the dataset would decode: both pick the source frames
with :func:`source_frame_indices` and decode them with :func:`load_clip`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode

from cosmos_composer.data import mds
from cosmos_composer.data.controls import compute_control
from cosmos_composer.data.framerate import source_frames
from cosmos_composer.data.layouts import ON_THE_FLY_CONTROLS
from cosmos_composer.data.video import decode_frame_indices, resize_video

# Segmentation colours are class ids: resize them without mixing colours (upstream uses NEAREST).
CONTROL_INTERPOLATION = {"seg": InterpolationMode.NEAREST}


@dataclass
class Clip:
    video_3_VF_H_W: torch.Tensor  # uint8, views concatenated along time
    control_3_VF_H_W: torch.Tensor | None  # uint8, same layout; None when not requested
    original_hw_V_2: torch.Tensor  # int64 source (height, width) of each view's video


def row_cameras(row: dict) -> tuple[str | None, ...]:
    """View order of a row: its camera names, or ``(None,)`` for single view."""
    cameras = row[mds.CAMERA_NAMES]
    return tuple(cameras) if cameras else (None,)


def source_frame_indices(row: dict, start: int, count: int) -> list[int]:
    """Source frame of each served frame ``start .. start+count-1`` of ``row`` (the one place that maps them).

    Uses the row's ``frame_start`` and ``frame_step`` (:mod:`cosmos_composer.data.framerate`); rows converted
    before those columns existed serve every frame from the first (start 0, step 1).
    """
    return source_frames(int(row.get(mds.FRAME_START, 0)), float(row.get(mds.FRAME_STEP, 1.0)), start, count)


def decode_view(
    mp4: bytes,
    frame_indices: Sequence[int],
    height: int,
    width: int,
    interpolation: InterpolationMode = InterpolationMode.BILINEAR,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """The source frames ``frame_indices`` resized to ``(height, width)``: uint8 ``[3, F, H, W]`` and source size."""
    frames_F_h_w_3, _ = decode_frame_indices(mp4, frame_indices)
    frames_F_3_h_w = torch.from_numpy(frames_F_h_w_3).permute(0, 3, 1, 2)
    original_hw = (frames_F_3_h_w.shape[-2], frames_F_3_h_w.shape[-1])
    frames_F_3_H_W = resize_video(frames_F_3_h_w, height, width, interpolation)
    return frames_F_3_H_W.permute(1, 0, 2, 3).contiguous(), original_hw


def load_clip(
    row: dict,
    *,
    control_key: str | None,
    frame_indices: Sequence[int],
    height: int,
    width: int,
    rng: np.random.Generator | None = None,
) -> Clip:
    """Decode the source frames ``frame_indices`` (:func:`source_frame_indices`) of every view of ``row``
    (and of its control, when ``control_key`` is given).

    Stored controls (``hdmap_bbox``, ``depth``, ``seg``) are decoded at the same source frames;
    ``edge`` and ``vis`` are computed from the resized video with ``rng`` (``None``: upstream's
    non-random "medium" preset).
    """
    views, controls, sizes = [], [], []
    for camera in row_cameras(row):
        view_3_F_H_W, original_hw = decode_view(row[mds.video_column(camera)], frame_indices, height, width)
        views.append(view_3_F_H_W)
        sizes.append(original_hw)
        if control_key is not None and control_key not in ON_THE_FLY_CONTROLS:
            column = mds.control_column(control_key, camera)
            if column not in row:
                raise KeyError(
                    f"sample '{row[mds.SAMPLE_NAME]}' has no column {column!r}: the dataset was converted with "
                    f"--control-key {row.get(mds.CONTROL_KEY)}, not {control_key}. Fix: set the dataset's "
                    f"control_key to {row.get(mds.CONTROL_KEY)!r}, use edge or vis, or convert again with "
                    f"--control-key {control_key}"
                )
            interpolation = CONTROL_INTERPOLATION.get(control_key, InterpolationMode.BILINEAR)
            control_3_F_H_W, _ = decode_view(row[column], frame_indices, height, width, interpolation)
            controls.append(control_3_F_H_W)
    video_3_VF_H_W = torch.cat(views, dim=1)
    if control_key is None:
        control_3_VF_H_W = None
    elif control_key in ON_THE_FLY_CONTROLS:
        control_3_VF_H_W = compute_control(control_key, video_3_VF_H_W, rng)
    else:
        control_3_VF_H_W = torch.cat(controls, dim=1)
    return Clip(video_3_VF_H_W, control_3_VF_H_W, torch.tensor(sizes, dtype=torch.int64))
