"""Frame-rate change by frame selection: which source frame each served frame is.

A clip at ``source_fps`` is served at ``fps`` (``convert_to_mds.py --fps``) by taking, for served frame
``i``, the source frame ``round(i * step)`` with ``step = source_fps / fps`` source frames per served frame,
rounding halves up (``floor(x + 0.5)``, not Python's round-half-to-even). An integer ratio is an exact
stride (30 -> 10 fps takes frames 0, 3, 6, ...); 25 -> 10 fps takes 0, 3, 5, 8, 10, ... (step 2.5).
Nothing is interpolated and frames are never repeated: a rate above the source's is refused (upsampling).

A stored row (:mod:`cosmos_composer.data.mds`) starts at source frame ``frame_start``; its served frame
``j`` is source frame ``frame_start + round(j * frame_step)`` (:func:`source_frames`).
"""

from __future__ import annotations

import math

# Two frame rates closer than this are the same (containers store rates as rationals).
FPS_TOLERANCE = 1e-3
# A step this close to an integer is that integer, so 30 -> 10 fps is an exact stride of 3.
STEP_TOLERANCE = 1e-6


def frame_step(source_fps: float, fps: float) -> float:
    """Source frames per served frame when ``source_fps`` is served at ``fps`` (1.0: unchanged)."""
    if abs(source_fps - fps) <= FPS_TOLERANCE:
        return 1.0
    step = source_fps / fps
    return float(round(step)) if abs(step - round(step)) < STEP_TOLERANCE else step


def source_frames(frame_start: int, step: float, start: int, count: int) -> list[int]:
    """Source frame of each served frame ``start .. start+count-1`` of a row starting at ``frame_start``."""
    return [frame_start + math.floor((start + j) * step + 0.5) for j in range(count)]


def served_frame_count(num_source_frames: int, step: float) -> int:
    """How many served frames a clip of ``num_source_frames`` source frames gives at ``step``."""
    count = math.ceil(num_source_frames / step)  # within one of the answer: correct it with the rule itself
    while count > 0 and source_frames(0, step, count - 1, 1)[0] >= num_source_frames:
        count -= 1
    while source_frames(0, step, count, 1)[0] < num_source_frames:
        count += 1
    return count


def describe_change(source_fps: float, fps: float, step: float) -> str:
    """``30 fps -> 10 fps (every 3rd frame)``, ``25 fps -> 10 fps (2.5 source frames per frame)``, ``10 fps``."""
    if step == 1.0:
        return f"{source_fps:g} fps (unchanged)"
    if step == int(step):
        n = int(step)
        suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
        how = f"every {n}{suffix} frame"
    else:
        how = f"{step:.4g} source frames per frame"
    return f"{source_fps:g} fps -> {fps:g} fps ({how})"
