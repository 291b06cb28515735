"""Side-by-side comparison videos: equally sized videos tiled left to right, each under a title.

``scripts/evaluate.py run`` writes one per clip and seed: ground truth | control | each checkpoint, frame for
frame, so a viewer sees at once what each checkpoint made of the same control, prompt and noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

TITLE_COLOR = (255, 255, 255)  # white text on a black band


def title_band_height(width: int) -> int:
    """Height of the band above each tile: about a tenth of the tile width, even (H.264 needs even sizes)."""
    return max(8, width // 20 * 2)


def _title(text: str, height: int, width: int) -> np.ndarray:
    band_H_W_3 = np.zeros((height, width, 3), np.uint8)
    # The font size that fits the text into the band's height and the tile's width.
    (text_width, text_height), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 1.0, 1)
    scale = min(0.7 * height / text_height, 0.95 * width / max(text_width, 1))
    baseline_y = int(height / 2 + text_height * scale / 2)
    cv2.putText(band_H_W_3, text, (2, baseline_y), cv2.FONT_HERSHEY_SIMPLEX, scale, TITLE_COLOR, 1, cv2.LINE_AA)
    return band_H_W_3


def side_by_side(columns: Sequence[tuple[str, np.ndarray]]) -> np.ndarray:
    """Tile ``(title, frames [T, H, W, 3])`` left to right, each under a band with its title: uint8
    ``[T, band + H, sum of W, 3]``. Every column must have the same frame count and height."""
    shapes = {frames.shape[:2] for _, frames in columns}
    if len(shapes) != 1:
        listing = ", ".join(f"{title}: {frames.shape}" for title, frames in columns)
        raise ValueError(f"side by side needs videos of one frame count and height, got {listing}")
    num_frames, height = shapes.pop()
    band = title_band_height(min(frames.shape[2] for _, frames in columns))
    tiles = []
    for title, frames_T_H_W_3 in columns:
        title_T_b_W_3 = np.broadcast_to(
            _title(title, band, frames_T_H_W_3.shape[2]), (num_frames, band, *frames_T_H_W_3.shape[2:])
        )
        tiles.append(np.concatenate([title_T_b_W_3, frames_T_H_W_3], axis=1))
    return np.ascontiguousarray(np.concatenate(tiles, axis=2))
