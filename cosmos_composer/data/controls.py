"""Edge and blur controls computed from the video while loading, with upstream's OpenCV calls.

Upstream: ``cosmos_transfer2/_src/transfer2/datasets/augmentors/control_input.py`` (``AddControlInputEdge``,
``AddControlInputBlur``) and ``blur.py`` (``Blur``, ``BilateralFilter``, ``GaussianBlur``). Both take the
resized uint8 RGB video ``[3, T, H, W]`` (in multiview the views one after another in T) and work frame by
frame on ``H x W x 3`` arrays:

* **edge**: ``cv2.Canny(frame, t_lower, t_upper)`` on the RGB frame itself (no grey conversion; OpenCV
  takes the colour channel with the largest gradient), default aperture 3 and L1 gradient. Training draws
  ``t_lower`` in [20, 100) and ``t_upper = t_lower + [50, 150)``; otherwise a named preset. The 0 / 255
  map is copied to 3 channels.
* **vis** (blur): ``cv2.resize`` down by a factor (``INTER_AREA``), a bilateral filter, a Gaussian blur or
  both, ``cv2.resize`` back (``INTER_LINEAR``), then torchvision's bicubic antialiased resize down by a
  second factor and up again. Without randomness upstream's "medium" preset: factor 2, bilateral
  (d 30, sigma colour 150, sigma space 100), factor 10.

Upstream draws from the global ``numpy.random`` and ``random``; here every draw comes from the
``numpy.random.Generator`` passed in, over the same ranges, so a sample's control is reproducible.
"""

from __future__ import annotations

import os
from typing import Callable

import cv2
import numpy as np
import torch
import torchvision.transforms.functional as transforms_F
from torch.utils.data import get_worker_info

# Every *_RANGE below is [low, high), as numpy's integers and uniform draw it.

# control_input.py AddControlInputEdge: preset_strength -> (t_lower, t_upper); "none" is very_low there.
EDGE_PRESETS = {
    "very_low": (20, 50),
    "low": (50, 100),
    "medium": (100, 200),
    "high": (200, 300),
    "very_high": (300, 400),
}
# control_input.py AddControlInputEdge with use_random: np.random.randint(20, 100) and randint(50, 150).
EDGE_T_LOWER_RANGE = (20, 100)
EDGE_T_DIFF_RANGE = (50, 150)

# control_input.py AddControlInputBlur: blur_downsize_factor = range(1, 5); its "medium" preset uses 2.
BLUR_DOWNSIZE_FACTORS = (1, 2, 3, 4)
BLUR_PRESET_DOWNSIZE = 2
# blur.py random_blur_config (training): the filters applied, in order, and the chance of each choice.
BLUR_COMBINATIONS = (("bilateral",), ("gaussian",), ("bilateral", "gaussian"))
BLUR_COMBINATION_PROBABILITIES = (0.3, 0.5, 0.2)
# blur.py BilateralFilterConfig: the fixed (d, sigma_color, sigma_space) and the randint ranges of each.
# Its iteration count is randint(1, 2), always 1.
BILATERAL_PRESET = (30, 150, 100)
BILATERAL_D_RANGE = (15, 50)
BILATERAL_SIGMA_COLOR_RANGE = (100, 300)
BILATERAL_SIGMA_SPACE_RANGE = (50, 150)
# blur.py GaussianBlurConfig: ksize = randint(21, 29 + 1), made odd; sigmaX = uniform(10.5, 14.5).
GAUSSIAN_KSIZE_RANGE = (21, 30)
GAUSSIAN_SIGMA_RANGE = (10.5, 14.5)
# control_input.py AddControlInputBlur: the down-and-up factor is random.randint(4, 16 + 1), which includes
# both ends: 4..17; the "medium" preset is (4 + 16) // 2.
DOWNUP_FACTOR_RANGE = (4, 18)
DOWNUP_PRESET_FACTOR = 10


# OpenCV runs on one thread inside DataLoader workers. Each worker is a process of its own and torch
# sets itself to one thread there (torch/utils/data/_utils/worker.py); OpenCV's pool would otherwise
# start one thread per core in every worker. The main process (num_workers=0) keeps OpenCV's default.
#
# OpenCV's pool does not survive a fork: a forked child that changes the thread count after its parent
# ran OpenCV in parallel can hang for ever in pthread_cond_destroy (seen with 5.0.0.93). So the parent
# drops to one thread around every fork and restores its count after; a forked worker starts with one
# thread and no pool. A spawned worker (a fresh interpreter) sets one thread itself, which is safe there.
_threads_before_fork: list[int] = []


def _one_opencv_thread_for_the_fork() -> None:
    _threads_before_fork.append(cv2.getNumThreads())
    cv2.setNumThreads(1)


def _restore_opencv_threads_after_the_fork() -> None:
    cv2.setNumThreads(_threads_before_fork.pop())


os.register_at_fork(
    before=_one_opencv_thread_for_the_fork,
    after_in_parent=_restore_opencv_threads_after_the_fork,
    after_in_child=_threads_before_fork.clear,
)


def _single_threaded_in_dataloader_workers() -> None:
    """One OpenCV thread in a DataLoader worker; a no-op in a forked one, which starts with one."""
    if get_worker_info() is not None and cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


def _per_frame(function: Callable[[np.ndarray], np.ndarray], frames_3_T_H_W: np.ndarray) -> np.ndarray:
    """``function`` on each ``H x W x 3`` frame, stacked back to ``[3, T, h, w]``, as upstream loops."""
    return np.stack([function(frame) for frame in frames_3_T_H_W.transpose((1, 2, 3, 0))]).transpose((3, 0, 1, 2))


def edge_control(
    video_3_T_H_W: torch.Tensor, rng: np.random.Generator | None = None, preset: str = "medium"
) -> torch.Tensor:
    """``control_input_edge``: Canny edges of every frame as uint8 ``[3, T, H, W]`` in {0, 255}.

    With ``rng`` the thresholds are random as in upstream training; without, ``preset`` picks them.
    """
    _single_threaded_in_dataloader_workers()
    if rng is not None:
        t_lower = int(rng.integers(*EDGE_T_LOWER_RANGE))
        t_upper = t_lower + int(rng.integers(*EDGE_T_DIFF_RANGE))
    else:
        if preset not in EDGE_PRESETS:
            raise ValueError(f"edge preset {preset!r} is not one of {', '.join(EDGE_PRESETS)}")
        t_lower, t_upper = EDGE_PRESETS[preset]
    frames_3_T_H_W = video_3_T_H_W.numpy()
    edges_T_H_W = np.stack([cv2.Canny(frame, t_lower, t_upper) for frame in frames_3_T_H_W.transpose((1, 2, 3, 0))])
    return torch.from_numpy(edges_T_H_W)[None].expand(3, -1, -1, -1).contiguous()


def _bilateral(frames_3_T_h_w: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    if rng is not None:
        d = int(rng.integers(*BILATERAL_D_RANGE))
        sigma_color = int(rng.integers(*BILATERAL_SIGMA_COLOR_RANGE))
        sigma_space = int(rng.integers(*BILATERAL_SIGMA_SPACE_RANGE))
    else:
        d, sigma_color, sigma_space = BILATERAL_PRESET
    return _per_frame(lambda frame: cv2.bilateralFilter(frame, d, sigma_color, sigma_space), frames_3_T_h_w)


def _gaussian(frames_3_T_h_w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    ksize = int(rng.integers(*GAUSSIAN_KSIZE_RANGE))
    sigma = float(rng.uniform(*GAUSSIAN_SIGMA_RANGE))
    if ksize % 2 == 0:
        ksize += 1  # OpenCV needs an odd kernel; blur.py apply_gaussian_blur rounds up the same way
    return _per_frame(lambda frame: cv2.GaussianBlur(frame, (ksize, ksize), sigmaX=sigma), frames_3_T_h_w)


def blur_control(video_3_T_H_W: torch.Tensor, rng: np.random.Generator | None = None) -> torch.Tensor:
    """``control_input_vis``: the blurred video as uint8 ``[3, T, H, W]`` (see the module docstring).

    With ``rng`` the parameters are random as in upstream training; without, upstream's "medium" preset.
    """
    _single_threaded_in_dataloader_workers()
    _, _, H, W = video_3_T_H_W.shape
    frames_3_T_H_W = video_3_T_H_W.numpy()
    downsize = int(rng.choice(BLUR_DOWNSIZE_FACTORS)) if rng is not None else BLUR_PRESET_DOWNSIZE
    frames_3_T_h_w = _per_frame(
        lambda frame: cv2.resize(frame, (W // downsize, H // downsize), interpolation=cv2.INTER_AREA),
        frames_3_T_H_W,
    )
    if rng is not None:
        blurs = BLUR_COMBINATIONS[rng.choice(len(BLUR_COMBINATIONS), p=BLUR_COMBINATION_PROBABILITIES)]
    else:
        blurs = ("bilateral",)
    for blur in blurs:
        if blur == "bilateral":
            frames_3_T_h_w = _bilateral(frames_3_T_h_w, rng)
        else:
            frames_3_T_h_w = _gaussian(frames_3_T_h_w, rng)
    frames_3_T_H_W = _per_frame(lambda frame: cv2.resize(frame, (W, H), interpolation=cv2.INTER_LINEAR), frames_3_T_h_w)
    # Upstream resizes the [3, T, H, W] tensor itself with torchvision (T as the channels).
    downup = int(rng.integers(*DOWNUP_FACTOR_RANGE)) if rng is not None else DOWNUP_PRESET_FACTOR
    blurred_3_T_H_W = torch.from_numpy(frames_3_T_H_W)
    for size in ((int(H / downup), int(W / downup)), (H, W)):
        blurred_3_T_H_W = transforms_F.resize(
            blurred_3_T_H_W, size=size, interpolation=transforms_F.InterpolationMode.BICUBIC, antialias=True
        )
    return blurred_3_T_H_W.contiguous()


ON_THE_FLY = {"edge": edge_control, "vis": blur_control}


def compute_control(
    control_key: str, video_3_T_H_W: torch.Tensor, rng: np.random.Generator | None = None
) -> torch.Tensor:
    """The on-the-fly control ``control_key`` (``edge`` or ``vis``) of a uint8 video ``[3, T, H, W]``."""
    if control_key not in ON_THE_FLY:
        raise ValueError(f"control {control_key!r} is read from the dataset, not computed; on-the-fly: edge, vis")
    return ON_THE_FLY[control_key](video_3_T_H_W, rng)
