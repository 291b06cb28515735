"""Edge and blur controls computed from the video while loading, as the official augmentors do.

Upstream (``cosmos_transfer2/_src/transfer2/datasets/augmentors/control_input.py`` and ``blur.py``)
uses OpenCV. OpenCV is not a dependency here, so the same operations are written with torch:

* **edge** (``AddControlInputEdge``): ``cv2.Canny`` on each RGB frame of the resized video, with random
  thresholds in training (``t_lower`` in [20, 100), ``t_upper = t_lower + [50, 150)``) and the
  "medium" preset (100, 200) otherwise. :func:`canny` follows OpenCV's algorithm: 3x3 Sobel with
  replicated borders, per pixel the colour channel with the largest L1 gradient, non-maximum
  suppression with OpenCV's fixed-point 22.5 / 67.5 degree sectors and its tie rules, and hysteresis
  over 8-connected pixels. The output is 0 / 255, copied to 3 channels.
* **vis** (blur, ``AddControlInputBlur``): downsize by a random factor in {1, 2, 3, 4} (area), blur with a
  bilateral filter (p = 0.3), a Gaussian blur (p = 0.5) or both (p = 0.2) with upstream's random
  parameter ranges, resize back (bilinear), then a bicubic antialiased down-and-up resize by a random
  factor in [4, 17]. Without randomness: factor 2, bilateral (d 30, sigma colour 150, sigma space 100),
  factor 10.

Deviations from upstream, all small: the Gaussian and bilateral filters compute in float32 and round
once (OpenCV uses fixed-point arithmetic for uint8), the area resize is ``adaptive_avg_pool2d`` (equal
to ``INTER_AREA`` for whole-number factors), and the bilateral filter visits at most 9 x 9 offsets of
its disc (a strided subset when the radius is larger than 4) instead of every offset, which keeps it
usable on the CPU; its result is blurred again by the down-and-up resize anyway.
Random draws come from the ``numpy.random.Generator`` passed in, so a sample's control is reproducible.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

EDGE_PRESETS = {
    "very_low": (20, 50),
    "low": (50, 100),
    "medium": (100, 200),
    "high": (200, 300),
    "very_high": (300, 400),
}

# OpenCV canny.cpp: tan(22.5 deg) in 15-bit fixed point.
_CANNY_SHIFT = 15
_TG22 = int(0.4142135623730950488016887242097 * (1 << _CANNY_SHIFT) + 0.5)

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])

# Bilateral filter: offsets visited per side of the disc at most (see the module docstring).
_BILATERAL_MAX_SIDE = 9


def canny(frames_T_C_H_W: torch.Tensor, t_lower: float, t_upper: float) -> torch.Tensor:
    """OpenCV-style Canny (L1 gradient, aperture 3) of uint8 frames; returns uint8 ``[T, H, W]`` in {0, 255}."""
    if t_lower > t_upper:
        t_lower, t_upper = t_upper, t_lower
    T, C, H, W = frames_T_C_H_W.shape
    x_TC_1_H_W = F.pad(frames_T_C_H_W.float().reshape(T * C, 1, H, W), (1, 1, 1, 1), mode="replicate")
    kernels_2_1_3_3 = torch.stack([_SOBEL_X, _SOBEL_X.T])[:, None]
    grad_TC_2_H_W = F.conv2d(x_TC_1_H_W, kernels_2_1_3_3)
    grad_T_C_2_H_W = grad_TC_2_H_W.reshape(T, C, 2, H, W).round().to(torch.int64)
    dx_T_C_H_W, dy_T_C_H_W = grad_T_C_2_H_W[:, :, 0], grad_T_C_2_H_W[:, :, 1]
    mag_T_C_H_W = dx_T_C_H_W.abs() + dy_T_C_H_W.abs()
    # Per pixel, the channel with the largest magnitude (the first one on ties, as OpenCV).
    best_T_1_H_W = mag_T_C_H_W.argmax(dim=1, keepdim=True)
    mag = mag_T_C_H_W.gather(1, best_T_1_H_W)[:, 0]
    dx = dx_T_C_H_W.gather(1, best_T_1_H_W)[:, 0]
    dy = dy_T_C_H_W.gather(1, best_T_1_H_W)[:, 0]

    # Non-maximum suppression; magnitudes outside the image count as 0.
    padded = F.pad(mag, (1, 1, 1, 1))
    left, right = padded[:, 1:-1, :-2], padded[:, 1:-1, 2:]
    up, down = padded[:, :-2, 1:-1], padded[:, 2:, 1:-1]
    up_left, up_right = padded[:, :-2, :-2], padded[:, :-2, 2:]
    down_left, down_right = padded[:, 2:, :-2], padded[:, 2:, 2:]
    ax = dx.abs()
    ay_shifted = dy.abs() << _CANNY_SHIFT
    tg22x = ax * _TG22
    tg67x = tg22x + (ax << (_CANNY_SHIFT + 1))
    horizontal = ay_shifted < tg22x
    vertical = ay_shifted > tg67x
    diagonal = ~horizontal & ~vertical
    same_sign = (dx < 0) == (dy < 0)
    local_max = (
        (horizontal & (mag > left) & (mag >= right))
        | (vertical & (mag > up) & (mag >= down))
        | (diagonal & same_sign & (mag > up_left) & (mag > down_right))
        | (diagonal & ~same_sign & (mag > up_right) & (mag > down_left))
    )
    candidate = local_max & (mag > math.floor(t_lower))
    strong = candidate & (mag > math.floor(t_upper))

    # Hysteresis: grow the strong pixels through 8-connected candidates until nothing changes.
    candidate_f = candidate.float()[:, None]
    edges_T_1_H_W = strong.float()[:, None]
    while True:
        grown = F.max_pool2d(edges_T_1_H_W, kernel_size=3, stride=1, padding=1) * candidate_f
        if torch.equal(grown, edges_T_1_H_W):
            break
        edges_T_1_H_W = grown
    return (edges_T_1_H_W[:, 0] * 255).to(torch.uint8)


def edge_control(
    video_3_T_H_W: torch.Tensor, rng: np.random.Generator | None = None, preset: str = "medium"
) -> torch.Tensor:
    """``control_input_edge``: Canny edges of every frame as uint8 ``[3, T, H, W]``.

    With ``rng`` the thresholds are random as in upstream training; without, ``preset`` picks them.
    """
    if rng is not None:
        t_lower = int(rng.integers(20, 100))
        t_upper = t_lower + int(rng.integers(50, 150))
    else:
        t_lower, t_upper = EDGE_PRESETS[preset]
    edges_T_H_W = canny(video_3_T_H_W.permute(1, 0, 2, 3), t_lower, t_upper)
    return edges_T_H_W[None].expand(3, -1, -1, -1).contiguous()


def _reflect101_index(size: int, pad: int) -> torch.Tensor:
    """Indices that pad a dimension of ``size`` by ``pad`` on both sides, OpenCV BORDER_REFLECT_101."""
    index = torch.arange(-pad, size + pad)
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    index = index.remainder(period)
    return torch.where(index >= size, period - index, index)


def _pad_reflect101(x_N_C_H_W: torch.Tensor, pad: int) -> torch.Tensor:
    H, W = x_N_C_H_W.shape[-2:]
    return x_N_C_H_W[..., _reflect101_index(H, pad), :][..., _reflect101_index(W, pad)]


def gaussian_blur(x_N_C_H_W: torch.Tensor, ksize: int, sigma: float) -> torch.Tensor:
    """``cv2.GaussianBlur(img, (ksize, ksize), sigma)`` on float images (separable, reflect-101 border)."""
    if ksize % 2 == 0:
        ksize += 1
    offsets = torch.arange(ksize, dtype=torch.float32) - (ksize - 1) / 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    N, C, H, W = x_N_C_H_W.shape
    x = _pad_reflect101(x_N_C_H_W, ksize // 2).reshape(N * C, 1, H + ksize - 1, W + ksize - 1)
    x = F.conv2d(x, kernel.view(1, 1, 1, ksize))
    x = F.conv2d(x, kernel.view(1, 1, ksize, 1))
    return x.reshape(N, C, H, W)


def bilateral_filter(x_N_C_H_W: torch.Tensor, d: int, sigma_color: float, sigma_space: float) -> torch.Tensor:
    """``cv2.bilateralFilter`` on float images in [0, 255] (colour distance = sum of absolute differences).

    Visits a strided subset of the disc's offsets when the radius is larger than 4 (module docstring).
    """
    radius = d // 2
    stride = max(1, math.ceil((2 * radius + 1) / _BILATERAL_MAX_SIDE))
    space_coeff = -0.5 / max(sigma_space, 1e-6) ** 2
    color_coeff = -0.5 / max(sigma_color, 1e-6) ** 2
    H, W = x_N_C_H_W.shape[-2:]
    padded = _pad_reflect101(x_N_C_H_W, radius)
    numerator = torch.zeros_like(x_N_C_H_W)
    denominator = torch.zeros_like(x_N_C_H_W[:, :1])
    steps = [offset for offset in range(-radius, radius + 1) if offset % stride == 0]
    for dy in steps:
        for dx in steps:
            if dx * dx + dy * dy > radius * radius:
                continue
            neighbour = padded[..., radius + dy : radius + dy + H, radius + dx : radius + dx + W]
            color_distance = (neighbour - x_N_C_H_W).abs().sum(dim=1, keepdim=True)
            weight = torch.exp(color_distance**2 * color_coeff + (dx * dx + dy * dy) * space_coeff)
            numerator += weight * neighbour
            denominator += weight
    return numerator / denominator


def blur_control(video_3_T_H_W: torch.Tensor, rng: np.random.Generator | None = None) -> torch.Tensor:
    """``control_input_vis``: the blurred video as uint8 ``[3, T, H, W]`` (see the module docstring).

    With ``rng`` the parameters are random as in upstream training; without, upstream's "medium" preset.
    Cost grows with the bilateral filter's window: at 720p expect seconds per clip on a CPU (OpenCV's
    filter upstream is not cheap either); cache the control latents (``--precompute latents``) to avoid it.
    """
    _, _, H, W = video_3_T_H_W.shape
    frames_T_3_H_W = video_3_T_H_W.permute(1, 0, 2, 3).float()
    downscale = int(rng.choice([1, 2, 3, 4])) if rng is not None else 2
    small_H, small_W = max(1, H // downscale), max(1, W // downscale)
    frames_T_3_h_w = F.adaptive_avg_pool2d(frames_T_3_H_W, (small_H, small_W))
    if rng is not None:
        combination = rng.choice(3, p=[0.3, 0.5, 0.2])
        blurs = [["bilateral"], ["gaussian"], ["bilateral", "gaussian"]][combination]
    else:
        blurs = ["bilateral"]
    for blur in blurs:
        if blur == "bilateral":
            if rng is not None:
                d, sigma_color, sigma_space = (
                    int(rng.integers(15, 50)),
                    int(rng.integers(100, 300)),
                    int(rng.integers(50, 150)),
                )
            else:
                d, sigma_color, sigma_space = 30, 150, 100
            frames_T_3_h_w = bilateral_filter(frames_T_3_h_w, d, sigma_color, sigma_space)
        else:
            ksize, sigma = int(rng.integers(21, 30)), float(rng.uniform(10.5, 14.5))
            frames_T_3_h_w = gaussian_blur(frames_T_3_h_w, ksize, sigma)
        frames_T_3_h_w = frames_T_3_h_w.round().clamp(0, 255)
    frames_T_3_H_W = F.interpolate(frames_T_3_h_w, size=(H, W), mode="bilinear", align_corners=False)
    frames_T_3_H_W = frames_T_3_H_W.round().clamp(0, 255).to(torch.uint8)
    scale = int(rng.integers(4, 18)) if rng is not None else 10
    low_size = [max(1, int(H / scale)), max(1, int(W / scale))]
    frames_T_3_H_W = TF.resize(
        frames_T_3_H_W, low_size, interpolation=InterpolationMode.BICUBIC, antialias=True
    )
    frames_T_3_H_W = TF.resize(
        frames_T_3_H_W, [H, W], interpolation=InterpolationMode.BICUBIC, antialias=True
    )
    return frames_T_3_H_W.permute(1, 0, 2, 3).contiguous()


ON_THE_FLY = {"edge": edge_control, "vis": blur_control}


def compute_control(
    control_key: str, video_3_T_H_W: torch.Tensor, rng: np.random.Generator | None = None
) -> torch.Tensor:
    """The on-the-fly control ``control_key`` (``edge`` or ``vis``) of a uint8 video ``[3, T, H, W]``."""
    if control_key not in ON_THE_FLY:
        raise ValueError(
            f"control {control_key!r} is read from the dataset, not computed; on-the-fly: edge, vis"
        )
    return ON_THE_FLY[control_key](video_3_T_H_W, rng)
