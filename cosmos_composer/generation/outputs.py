"""Generated latents -> mp4 files: the file itself for single view; for multiview one file per view
(``<stem>_<camera>.mp4``) and a tiled overview at the output path, laid out as the cameras sit on the car."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..data.video import resize_video, write_mp4

# Tiles of the multiview overview video (None: an empty tile).
OVERVIEW_LAYOUT: tuple[tuple[Optional[str], ...], ...] = (
    ("camera_cross_left_120fov", "camera_front_wide_120fov", "camera_cross_right_120fov"),
    ("camera_rear_left_70fov", "camera_front_tele_30fov", "camera_rear_right_70fov"),
    (None, "camera_rear_tele_30fov", None),
)
OVERVIEW_MAX_WIDTH = 1920


def to_uint8(video_3_T_H_W: torch.Tensor) -> np.ndarray:
    """Decoded video in [-1, 1] -> uint8 frames ``[T, H, W, 3]`` (as upstream: (x + 1) / 2, clamped)."""
    frames = ((video_3_T_H_W.float().cpu() + 1.0) / 2.0).clamp(0, 1) * 255.0
    return frames.round().to(torch.uint8).permute(1, 2, 3, 0).numpy()


def overview_frames(views: dict[str, np.ndarray]) -> np.ndarray:
    """Tile the views ``[T, H, W, 3]`` into one video as `OVERVIEW_LAYOUT` places them.

    Tiles shrink so the overview is at most `OVERVIEW_MAX_WIDTH` pixels wide; missing cameras stay black.
    """
    T, H, W, _ = next(iter(views.values())).shape
    columns = len(OVERVIEW_LAYOUT[0])
    scale = min(1.0, OVERVIEW_MAX_WIDTH / (columns * W))
    tile_h, tile_w = max(2, int(H * scale) // 2 * 2), max(2, int(W * scale) // 2 * 2)  # H.264 needs even sizes
    grid_T_H_W_3 = np.zeros((T, tile_h * len(OVERVIEW_LAYOUT), tile_w * columns, 3), dtype=np.uint8)
    for row, cameras in enumerate(OVERVIEW_LAYOUT):
        for column, camera in enumerate(cameras):
            if camera is None or camera not in views:
                continue
            tile_T_3_h_w = resize_video(torch.from_numpy(views[camera]).permute(0, 3, 1, 2), tile_h, tile_w)
            grid_T_H_W_3[:, row * tile_h : (row + 1) * tile_h, column * tile_w : (column + 1) * tile_w] = (
                tile_T_3_h_w.permute(0, 2, 3, 1).numpy()
            )
    return grid_T_H_W_3


def view_output_path(output: Path, camera: str) -> Path:
    """``out.mp4`` -> ``out_camera_front_wide_120fov.mp4``."""
    return output.with_name(f"{output.stem}_{camera}{output.suffix}")


def write_frames(
    frames_VT_H_W_3: np.ndarray, output: str | os.PathLike, fps: float, cameras: Optional[Sequence[str]] = None
) -> list[Path]:
    """Write uint8 frames (views one after another along time) as mp4; returns the paths written.

    Single view (no ``cameras``): the file itself. Multiview: one file per view and the tiled overview at ``output``.
    """
    output = Path(output)
    if not cameras:
        write_mp4(output, frames_VT_H_W_3, fps)
        return [output]
    per_view = dict(zip(cameras, np.split(frames_VT_H_W_3, len(cameras), axis=0)))
    written = []
    for camera, view_frames in per_view.items():
        path = view_output_path(output, camera)
        write_mp4(path, view_frames, fps)
        written.append(path)
    write_mp4(output, overview_frames(per_view), fps)
    return [*written, output]


def write_videos(
    video_3_VT_H_W: torch.Tensor, output: str | os.PathLike, fps: float, cameras: Optional[Sequence[str]] = None
) -> list[Path]:
    """Write a decoded video ([-1, 1], views one after another along time) as mp4; returns the paths written."""
    return write_frames(to_uint8(video_3_VT_H_W), output, fps, cameras)


@torch.no_grad()
def decode_sample(vae, latents_B_C_VT_H_W: torch.Tensor, num_views: int) -> np.ndarray:
    """The first sample of sampled latents decoded, each view on its own: uint8 frames ``[V*T, H, W, 3]``."""
    video_B_3_VT_H_W = vae.decode_views(latents_B_C_VT_H_W[:1], num_views)
    return to_uint8(video_B_3_VT_H_W[0])


def write_sample(
    vae,
    latents_B_C_VT_H_W: torch.Tensor,
    num_views: int,
    output: str | os.PathLike,
    fps: float,
    cameras: Optional[Sequence[str]] = None,
) -> list[Path]:
    """Decode the first sample of sampled latents, each view on its own, and write it (see `write_frames`)."""
    return write_frames(decode_sample(vae, latents_B_C_VT_H_W, num_views), output, fps, cameras)
