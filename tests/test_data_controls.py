"""Edge (Canny) and blur controls computed on the fly, as upstream's OpenCV augmentors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cosmos_composer.data.controls import (
    _reflect101_index,
    bilateral_filter,
    blur_control,
    canny,
    compute_control,
    edge_control,
    gaussian_blur,
)


def rectangle_video(T: int = 2) -> torch.Tensor:
    video = torch.zeros(3, T, 32, 48, dtype=torch.uint8)
    video[:, :, 10:20, 10:30] = 200
    return video


def test_canny_outlines_a_rectangle_with_thin_lines():
    edges = canny(rectangle_video().permute(1, 0, 2, 3), 100, 200)
    assert edges.dtype == torch.uint8 and set(edges.unique().tolist()) == {0, 255}
    ys, xs = torch.nonzero(edges[0], as_tuple=True)
    # Every edge pixel is within one pixel of the rectangle's border ...
    near_border = ((ys >= 9) & (ys <= 20) & (xs >= 9) & (xs <= 30)) & ~(
        (ys >= 11) & (ys <= 18) & (xs >= 11) & (xs <= 28)
    )
    assert near_border.all()
    # ... all four sides are found, and the contour is one pixel thick.
    assert (ys == 9).any() and (ys == 19).any() and (xs == 9).any() and (xs == 29).any()
    assert 55 <= len(ys) <= 62  # 2 * (20 + 10) minus the corners, give or take
    assert torch.equal(edges[0], edges[1])


def test_canny_hysteresis_keeps_weak_edges_only_when_connected_to_strong_ones():
    frame = torch.zeros(1, 1, 40, 60, dtype=torch.uint8)
    frame[..., :20, 10:] += 30  # weak step (gradient 120) in column 10 that continues ...
    frame[..., 20:, 10:30] += 200  # ... a strong step (gradient 800) in the same column
    frame[..., :8, 45:] += 30  # an isolated weak corner, far from any strong edge
    edges = canny(frame.expand(1, 3, -1, -1), 100, 200)[0]
    connected_column = edges[2:18, 8:12].amax(dim=1)
    assert (connected_column == 255).all(), "the weak part connected to the strong edge is kept"
    assert edges[:12, 40:].amax() == 0, "the isolated weak edge is dropped"
    assert canny(frame[..., :12, 35:].expand(1, 3, -1, -1), 100, 110)[0].amax() == 255  # it is an edge per se
    # Raising the low threshold above the weak gradient drops the weak part.
    assert (
        edges[2:18, 8:12].amax() == 255
        and canny(frame.expand(1, 3, -1, -1), 130, 200)[0][2:18, 8:12].amax() == 0
    )


def test_canny_uses_the_strongest_colour_channel():
    frame = torch.zeros(1, 3, 24, 24, dtype=torch.uint8)
    frame[0, 2, :, 12:] = 200  # a step only in the blue channel
    edges = canny(frame, 100, 200)[0]
    assert edges[:, 11:13].amax(dim=1).eq(255).all()


def test_edge_control_is_three_channel_and_random_thresholds_depend_on_the_rng():
    # Smooth random texture: gradients of every strength, so the thresholds matter.
    noise = torch.from_numpy(np.random.default_rng(0).uniform(0, 255, (2, 3, 8, 12)).astype(np.float32))
    video = torch.nn.functional.interpolate(noise, size=(32, 48), mode="bilinear").round().to(torch.uint8)
    video = video.permute(1, 0, 2, 3).contiguous()
    control = edge_control(video, rng=None)
    assert control.shape == (3, 2, 32, 48) and control.dtype == torch.uint8
    assert torch.equal(control[0], control[1]) and torch.equal(control[0], control[2])
    low = [edge_control(video, np.random.default_rng(seed)) for seed in range(12)]
    assert any(not torch.equal(low[0], other) for other in low[1:])
    assert torch.equal(
        edge_control(video, np.random.default_rng(5)), edge_control(video, np.random.default_rng(5))
    )


def test_reflect101_padding_matches_opencv_border():
    assert _reflect101_index(4, 3).tolist() == [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
    assert _reflect101_index(1, 2).tolist() == [0, 0, 0, 0, 0]


def test_gaussian_and_bilateral_filters_keep_flat_images_and_smooth_noise():
    flat = torch.full((1, 3, 20, 30), 77.0)
    torch.testing.assert_close(gaussian_blur(flat, 25, 12.5), flat)
    torch.testing.assert_close(bilateral_filter(flat, 30, 150, 100), flat)
    noise = torch.from_numpy(np.random.default_rng(0).uniform(0, 255, (1, 3, 20, 30)).astype(np.float32))
    assert gaussian_blur(noise, 21, 10.5).std() < noise.std() / 4
    assert bilateral_filter(noise, 9, 300, 100).std() < noise.std() / 2
    # A sharp step survives a bilateral filter with a small colour sigma (edge preserving).
    step = torch.zeros(1, 3, 20, 30)
    step[..., 15:] = 200
    filtered = bilateral_filter(step, 9, 20, 100)
    assert filtered[..., :14].max() < 1 and filtered[..., 16:].min() > 199


def test_blur_control_shapes_and_determinism():
    video = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 4, 32, 48), dtype=np.uint8))
    preset = blur_control(video)
    assert preset.shape == video.shape and preset.dtype == torch.uint8
    random_a = blur_control(video, np.random.default_rng(7))
    assert torch.equal(random_a, blur_control(video, np.random.default_rng(7)))
    outputs = [blur_control(video, np.random.default_rng(seed)) for seed in range(4)]
    assert any(not torch.equal(outputs[0], other) for other in outputs[1:])
    for blurred in outputs + [preset]:
        horizontal_variation = (blurred[..., 1:].float() - blurred[..., :-1].float()).abs().mean()
        assert horizontal_variation < 0.3 * (video[..., 1:].float() - video[..., :-1].float()).abs().mean()


def test_compute_control_dispatch():
    video = rectangle_video(1)
    assert torch.equal(compute_control("edge", video), edge_control(video))
    with pytest.raises(ValueError, match="read from the dataset"):
        compute_control("depth", video)


def test_matches_opencv_when_it_is_installed():
    """cv2 is not a dependency; when present (e.g. opencv-python-headless), compare exactly."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for _ in range(4):
        image = cv2.GaussianBlur(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), (5, 5), 1.5)
        for low, high in [(20, 70), (50, 100), (100, 200), (99, 150)]:
            ours = canny(torch.from_numpy(image).permute(2, 0, 1)[None], low, high)[0].numpy()
            assert (ours == cv2.Canny(image, low, high)).all()
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    ours = gaussian_blur(torch.from_numpy(image).permute(2, 0, 1)[None].float(), 25, 12.5)[0].permute(1, 2, 0)
    assert np.abs(ours.round().numpy() - cv2.GaussianBlur(image, (25, 25), sigmaX=12.5)).max() <= 1
    ours = bilateral_filter(torch.from_numpy(image).permute(2, 0, 1)[None].float(), 9, 150, 100)[0].permute(
        1, 2, 0
    )
    assert np.abs(ours.round().numpy() - cv2.bilateralFilter(image, 9, 150, 100)).max() <= 1
