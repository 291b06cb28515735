"""Edge (Canny) and blur controls against OpenCV called the way upstream's augmentors call it.

The references below are written from ``cosmos_transfer2/_src/transfer2/datasets/augmentors/control_input.py``
(``AddControlInputEdge``, ``AddControlInputBlur``) and ``blur.py``: a loop over ``H x W x 3`` frames of the
uint8 ``[3, T, H, W]`` video, then torchvision's resize of the whole tensor.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter

import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as transforms_F

from cosmos_composer.data.controls import blur_control, compute_control, edge_control

# control_input.py AddControlInputEdge preset_strength values.
UPSTREAM_EDGE_PRESETS = {
    "very_low": (20, 50),
    "low": (50, 100),
    "medium": (100, 200),
    "high": (200, 300),
    "very_high": (300, 400),
}


def textured_video(T: int = 2, H: int = 32, W: int = 48, seed: int = 0) -> torch.Tensor:
    """Smooth random colour texture: gradients of every strength, so thresholds and sigmas matter."""
    noise = torch.from_numpy(np.random.default_rng(seed).uniform(0, 255, (T, 3, H // 4, W // 4)).astype(np.float32))
    video = torch.nn.functional.interpolate(noise, size=(H, W), mode="bicubic").clamp(0, 255).round()
    return video.to(torch.uint8).permute(1, 0, 2, 3).contiguous()


def upstream_canny(video_3_T_H_W: torch.Tensor, t_lower: int, t_upper: int) -> torch.Tensor:
    frames = video_3_T_H_W.numpy()
    edge_maps = np.stack([cv2.Canny(img, t_lower, t_upper) for img in frames.transpose((1, 2, 3, 0))])[None]
    return torch.from_numpy(edge_maps).expand(3, -1, -1, -1)


def upstream_blur(video_3_T_H_W: torch.Tensor, downscale_factor: int, blurs: list, scale_factor: int) -> torch.Tensor:
    """``AddControlInputBlur.__call__`` with its draws given: ``blurs`` is [(name, params), ...] in order."""
    frames = video_3_T_H_W.numpy()
    H, W = frames.shape[2], frames.shape[3]
    frames = [
        cv2.resize(_image_np, (W // downscale_factor, H // downscale_factor), interpolation=cv2.INTER_AREA)
        for _image_np in frames.transpose((1, 2, 3, 0))
    ]
    frames = np.stack(frames).transpose((3, 0, 1, 2))
    for name, params in blurs:
        if name == "bilateral":
            d, sigma_color, sigma_space = params
            blurred = [
                cv2.bilateralFilter(_image_np, d, sigma_color, sigma_space)
                for _image_np in frames.transpose((1, 2, 3, 0))
            ]
        else:
            ksize, sigmaX = params
            if ksize % 2 == 0:
                ksize += 1
            blurred = [
                cv2.GaussianBlur(_image_np, (ksize, ksize), sigmaX=sigmaX)
                for _image_np in frames.transpose((1, 2, 3, 0))
            ]
        frames = np.stack(blurred).transpose((3, 0, 1, 2))
    frames = [
        cv2.resize(_image_np, (W, H), interpolation=cv2.INTER_LINEAR) for _image_np in frames.transpose((1, 2, 3, 0))
    ]
    frames = np.stack(frames).transpose((3, 0, 1, 2))
    controlnet_img = torch.from_numpy(frames)
    for size in ((int(H / scale_factor), int(W / scale_factor)), (H, W)):
        controlnet_img = transforms_F.resize(
            controlnet_img, size=size, interpolation=transforms_F.InterpolationMode.BICUBIC, antialias=True
        )
    return controlnet_img


def edge_ladder_video() -> torch.Tensor:
    """Two frames of 1-pixel vertical lines, one for every even L1 gradient 16..440, each the full height.

    A line of height h has gradient 4h; heights alternating h, h + 1 by row give 4h + 2. Frame 0: the lines
    alone (an edge only above t_upper); frame 1: each line on top of a strong one (kept above t_lower).
    The L1 gradient of a 3x3 Sobel is always even, so this is every value a threshold can separate.
    """
    magnitudes = np.arange(16, 442, 2)
    rows = np.arange(25)  # odd, so the replicated border rows keep each line's gradient
    heights_H_M = (magnitudes // 4 + (rows[:, None] % 2) * (magnitudes % 4 // 2)).astype(np.uint8)
    alone_H_W = np.zeros((len(rows), 4 * len(magnitudes) + 4), np.uint8)
    alone_H_W[:, 2:-2:4] = heights_H_M
    on_strong_H_W = alone_H_W.copy()
    on_strong_H_W[len(rows) // 2 :, 2:-2:4] = 120  # gradient 480: strong for every preset
    frames_T_H_W = np.stack([alone_H_W, on_strong_H_W])
    return torch.from_numpy(frames_T_H_W)[None].expand(3, -1, -1, -1).contiguous()


def test_edge_presets_are_cv2_canny_of_each_rgb_frame():
    ladder = edge_ladder_video()
    for video in (textured_video(), ladder):
        for preset, (t_lower, t_upper) in UPSTREAM_EDGE_PRESETS.items():
            control = edge_control(video, preset=preset)
            assert control.shape == video.shape and control.dtype == torch.uint8
            assert torch.equal(control, upstream_canny(video, t_lower, t_upper)), preset
    for t_lower, t_upper in UPSTREAM_EDGE_PRESETS.values():  # the ladder tells each threshold from its neighbour
        expected = upstream_canny(ladder, t_lower, t_upper)
        assert not torch.equal(expected, upstream_canny(ladder, t_lower - 1, t_upper))
        assert not torch.equal(expected, upstream_canny(ladder, t_lower, t_upper - 1))
    video = textured_video()
    assert 0 < (edge_control(video) > 0).float().mean() < 0.5  # the default ("medium") finds edges
    assert torch.equal(compute_control("edge", video), upstream_canny(video, 100, 200))
    with pytest.raises(ValueError, match="edge preset 'strong' is not one of very_low"):
        edge_control(video, preset="strong")
    with pytest.raises(ValueError, match="read from the dataset"):
        compute_control("depth", video)


class Recorder:
    """Wraps a function, keeping the arguments of each call; ``stub`` replaces what it returns."""

    def __init__(self, function, stub=None):
        self.function, self.stub, self.calls = function, stub, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return (self.stub or self.function)(*args, **kwargs)


def test_random_edge_thresholds_cover_upstreams_ranges(monkeypatch):
    canny = Recorder(cv2.Canny)
    monkeypatch.setattr(cv2, "Canny", canny)
    video = textured_video(T=1, H=8, W=8)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        edge_control(video, rng)
    t_lower = np.array([args[1] for args, _ in canny.calls])
    t_upper = np.array([args[2] for args, _ in canny.calls])
    # np.random.randint(20, 100) and t_upper = t_lower + np.random.randint(50, 150)
    assert set(t_lower.tolist()) == set(range(20, 100))
    assert set((t_upper - t_lower).tolist()) == set(range(50, 150))
    # The thresholds drawn are the ones used, for every frame: equal to upstream with them.
    video = textured_video(T=3)
    canny.calls.clear()
    control = edge_control(video, np.random.default_rng(7))
    (_, t_lower, t_upper), _ = canny.calls[0]
    assert all(args[1:] == (t_lower, t_upper) for args, _ in canny.calls) and len(canny.calls) == 3
    assert torch.equal(control, upstream_canny(video, t_lower, t_upper))
    assert torch.equal(control, edge_control(video, np.random.default_rng(7)))


def test_blur_preset_is_upstreams_medium_preset(monkeypatch):
    video = textured_video(T=2, H=40, W=64)
    # AddControlInputBlur(use_random=False): downsize 2, bilateral (30, 150, 100), down-and-up factor 10.
    expected = upstream_blur(video, 2, [("bilateral", (30, 150, 100))], 10)
    bilateral = Recorder(cv2.bilateralFilter)
    monkeypatch.setattr(cv2, "bilateralFilter", bilateral)
    control = blur_control(video)
    assert control.shape == video.shape and control.dtype == torch.uint8
    assert torch.equal(control, expected)
    # The down-and-up resize hides small changes of the filter; its arguments show them.
    assert [args[1:] for args, _ in bilateral.calls] == [(30, 150, 100)] * 2
    assert torch.equal(compute_control("vis", video), control)


def test_random_blur_is_upstreams_with_the_parameters_it_drew(monkeypatch):
    video = textured_video(T=2, H=40, W=64)
    recorders = {name: Recorder(getattr(cv2, name)) for name in ("resize", "bilateralFilter", "GaussianBlur")}
    for name, recorder in recorders.items():
        monkeypatch.setattr(cv2, name, recorder)
    bicubic = Recorder(transforms_F.resize)
    monkeypatch.setattr(transforms_F, "resize", bicubic)
    runs = []
    for seed in range(40):
        for recorder in (*recorders.values(), bicubic):
            recorder.calls.clear()
        control = blur_control(video, np.random.default_rng(seed))
        small_w, small_h = recorders["resize"].calls[0][0][1]
        downscale = 64 // small_w
        assert (small_w, small_h) == (64 // downscale, 40 // downscale)
        blurs = [("bilateral", args[1:]) for args, _ in recorders["bilateralFilter"].calls[:1]]
        gaussian_calls = recorders["GaussianBlur"].calls[:1]
        blurs += [("gaussian", (args[1][0], kwargs["sigmaX"])) for args, kwargs in gaussian_calls]
        low_size = bicubic.calls[0][1]["size"]
        scale = next(s for s in range(4, 18) if low_size == (int(40 / s), int(64 / s)))
        runs.append((seed, control, downscale, blurs, scale))
    monkeypatch.undo()
    for seed, control, downscale, blurs, scale in runs:
        assert torch.equal(control, upstream_blur(video, downscale, blurs, scale)), seed
    assert {tuple(name for name, _ in blurs) for _, _, _, blurs, _ in runs} == {
        ("bilateral",),
        ("gaussian",),
        ("bilateral", "gaussian"),
    }
    assert torch.equal(runs[-1][1], blur_control(video, np.random.default_rng(runs[-1][0])))


def test_random_blur_parameters_cover_upstreams_ranges(monkeypatch):
    """8000 draws with the filters stubbed out: every value upstream can draw appears, nothing else."""
    H = 306  # int(306 / s) differs for every down-and-up factor s in 4..17
    video = torch.zeros(3, 1, H, 8, dtype=torch.uint8)

    def resize_stub(image, dsize, interpolation):
        return np.zeros((dsize[1], dsize[0], 3), np.uint8)

    recorders = {
        "resize": Recorder(cv2.resize, resize_stub),
        "bilateralFilter": Recorder(cv2.bilateralFilter, lambda image, *args: image),
        "GaussianBlur": Recorder(cv2.GaussianBlur, lambda image, *args, **kwargs: image),
    }
    for name, recorder in recorders.items():
        monkeypatch.setattr(cv2, name, recorder)
    bicubic = Recorder(transforms_F.resize, lambda image, size, **kwargs: torch.zeros(3, 1, *size, dtype=torch.uint8))
    monkeypatch.setattr(transforms_F, "resize", bicubic)
    rng = np.random.default_rng(0)
    draws = 8000
    for _ in range(draws):
        blur_control(video, rng)

    resizes = recorders["resize"].calls
    down_sizes = [args[1] for args, kwargs in resizes if kwargs["interpolation"] == cv2.INTER_AREA]
    assert len(down_sizes) == draws and {H // h for _, h in down_sizes} == {1, 2, 3, 4}  # random.choice(range(1, 5))
    assert all(args[1] == (8, H) for args, kwargs in resizes if kwargs["interpolation"] == cv2.INTER_LINEAR)
    bilateral = np.array([args[1:] for args, _ in recorders["bilateralFilter"].calls])
    assert set(bilateral[:, 0]) == set(range(15, 50))  # d: np.random.randint(15, 50)
    assert set(bilateral[:, 1]) == set(range(100, 300))  # sigma_color: randint(100, 300)
    assert set(bilateral[:, 2]) == set(range(50, 150))  # sigma_space: randint(50, 150)
    gaussian = recorders["GaussianBlur"].calls
    assert {args[1] for args, _ in gaussian} == {(k, k) for k in (21, 23, 25, 27, 29)}  # randint(21, 30), odd
    sigmas = np.array([kwargs["sigmaX"] for _, kwargs in gaussian])
    assert 10.5 <= sigmas.min() < 10.6 and 14.4 < sigmas.max() < 14.5  # uniform(10.5, 14.5)
    # random.choices over (bilateral 0.3, gaussian 0.5, both 0.2): the filters per clip.
    n_bilateral, n_gaussian = len(bilateral), len(gaussian)
    n_both = n_bilateral + n_gaussian - draws
    shares = np.array([n_bilateral - n_both, n_gaussian - n_both, n_both]) / draws
    np.testing.assert_allclose(shares, [0.3, 0.5, 0.2], atol=0.04)
    low_sizes = Counter(kwargs["size"] for _, kwargs in bicubic.calls[::2])
    scales = {next(s for s in range(1, H) if size[0] == int(H / s)) for size in low_sizes}
    assert scales == set(range(4, 18))  # random.randint(4, 16 + 1), both ends included


class OpenCVThreadsInWorker(torch.utils.data.Dataset):
    """One item: OpenCV's thread count when the worker starts and after it computed both controls."""

    def __len__(self):
        return 1

    def __getitem__(self, index):
        at_start = cv2.getNumThreads()
        if at_start != 1 and multiprocessing.current_process()._config.get("start_method") == "fork":
            return at_start, None  # the fork kept the parent's pool: setting the count here can hang
        video = textured_video(T=1, H=16, W=16)
        edge_control(video)
        blur_control(video)
        return at_start, cv2.getNumThreads()


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_opencv_runs_single_threaded_in_dataloader_workers(start_method):
    threads_before = cv2.getNumThreads()
    cv2.setNumThreads(4)  # more than one even on a 1-core machine, so a missing limit shows
    try:
        # Start the parent's pool: a forked worker that then sets its thread count can hang.
        image = np.random.default_rng(0).integers(0, 256, (360, 640, 3), dtype=np.uint8)
        cv2.bilateralFilter(image, 15, 100, 50)
        loader = torch.utils.data.DataLoader(
            OpenCVThreadsInWorker(), num_workers=1, batch_size=None, multiprocessing_context=start_method, timeout=60
        )
        [(at_start, after_controls)] = list(loader)
        if start_method == "fork":
            assert at_start == 1, "a forked worker starts with one OpenCV thread and no pool"
        assert after_controls == 1
        assert cv2.getNumThreads() == 4, "the main process keeps its setting"
    finally:
        cv2.setNumThreads(threads_before)
