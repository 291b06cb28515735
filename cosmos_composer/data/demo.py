"""Synthetic demo scenes: coloured rectangles and discs gliding over a two-tone background.

Each (sample, camera) gets its own scene from ``numpy.random.default_rng([seed, sample, camera])``, so
the data is a pure function of the seed. A scene renders, frame by frame, into

* ``rgb``: the video (background with horizon, filled shapes painted far to near);
* ``lines``: a line drawing of the same frame (black, horizon in grey, every shape's outline in its own
  colour), used as the HDMap-style control;
* ``depth``: a grey depth map (near is bright), the single-view ``depth/`` control;
* ``seg``: flat colours per object (one per shape, two for the background), the ``seg/`` control.

Because the control outlines sit exactly on the video's shape boundaries, a small model can learn the
control-to-video mapping, and its loss falls visibly within a few hundred steps.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cosmos_composer.data.cameras import camera_folder, caption_camera, parse_cameras
from cosmos_composer.data.layouts import LAYOUTS, MULTIVIEW_HDMAP
from cosmos_composer.data.output import atomic_output_dir
from cosmos_composer.data.video import write_mp4

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "magenta": (210, 50, 200),
    "cyan": (40, 200, 210),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
}
BACKGROUNDS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    # name: (sky colour, ground colour)
    "grey road": ((150, 170, 190), (80, 80, 85)),
    "sandy": ((170, 200, 230), (190, 160, 110)),
    "grassy": ((140, 180, 220), (60, 110, 50)),
    "dusky": ((70, 60, 110), (45, 40, 50)),
}
SEG_BACKGROUND = ((70, 130, 180), (128, 64, 128))  # sky, ground: Cityscapes-like class colours
SEG_PALETTE = ((220, 20, 60), (0, 0, 142), (250, 170, 30), (107, 142, 35), (0, 80, 100), (119, 11, 32))
LINE_WIDTH = 1.5  # pixels


@dataclass(frozen=True)
class Shape:
    kind: str  # "rectangle" or "disc"
    color_name: str
    x: float  # centre at frame 0, pixels
    y: float
    vx: float  # pixels per frame
    vy: float
    half_w: float  # half width (rectangle) or radius (disc)
    half_h: float
    depth: float  # 0 = far, 1 = near

    def center(self, t: int, height: int, width: int) -> tuple[float, float]:
        """Centre at frame ``t``; shapes bounce off the frame borders (triangle wave)."""
        return (
            _bounce(self.x + self.vx * t, self.half_w, width - self.half_w),
            _bounce(self.y + self.vy * t, self.half_h, height - self.half_h),
        )


def _bounce(position: float, low: float, high: float) -> float:
    span = max(high - low, 1e-6)
    phase = (position - low) % (2 * span)
    return low + (phase if phase <= span else 2 * span - phase)


@dataclass(frozen=True)
class Scene:
    height: int
    width: int
    background: str
    horizon: float  # row of the horizon
    shapes: tuple[Shape, ...]  # painted in this order (far to near)

    def caption(self) -> str:
        parts = [
            f"{'an' if shape.color_name[0] in 'aeiou' else 'a'} {shape.color_name} {shape.kind}"
            for shape in self.shapes
        ]
        listed = ", ".join(parts[:-1]) + f" and {parts[-1]}" if len(parts) > 1 else parts[0]
        return f"{listed[0].upper()}{listed[1:]} glide and bounce over a {self.background} background."


def make_scene(rng: np.random.Generator, height: int, width: int) -> Scene:
    """Draw a random scene: 2 to 4 shapes with their own size, colour, speed and depth."""
    shapes = []
    color_names = rng.permutation(list(COLORS))
    scale = min(height, width)
    for index in range(int(rng.integers(2, 5))):
        kind = "disc" if rng.random() < 0.5 else "rectangle"
        half_w = float(rng.uniform(0.10, 0.22) * scale)
        half_h = half_w if kind == "disc" else float(rng.uniform(0.10, 0.22) * scale)
        speed = float(rng.uniform(0.02, 0.05) * scale)
        angle = float(rng.uniform(0, 2 * np.pi))
        shapes.append(
            Shape(
                kind=kind,
                color_name=str(color_names[index]),
                x=float(rng.uniform(half_w, width - half_w)),
                y=float(rng.uniform(half_h, height - half_h)),
                vx=speed * np.cos(angle),
                vy=speed * np.sin(angle),
                half_w=half_w,
                half_h=half_h,
                depth=float(rng.uniform(0, 1)),
            )
        )
    shapes.sort(key=lambda shape: shape.depth)
    background = str(rng.choice(list(BACKGROUNDS)))
    horizon = float(rng.uniform(0.3, 0.6) * height)
    return Scene(height=height, width=width, background=background, horizon=horizon, shapes=tuple(shapes))


def render(scene: Scene, t: int) -> dict[str, np.ndarray]:
    """Frame ``t`` of ``scene`` as uint8 ``[H, W, 3]`` arrays: ``rgb``, ``lines``, ``depth``, ``seg``."""
    H, W = scene.height, scene.width
    ys_H_1, xs_1_W = (
        np.arange(H, dtype=np.float32)[:, None] + 0.5,
        np.arange(W, dtype=np.float32)[None, :] + 0.5,
    )
    sky_H_1 = ys_H_1 < scene.horizon
    sky_color, ground_color = (np.array(c, np.float32) for c in BACKGROUNDS[scene.background])
    # Background: sky and ground, each slightly darker towards the horizon.
    shade_H_1 = 1.0 - 0.25 * np.exp(-np.abs(ys_H_1 - scene.horizon) / (0.2 * H))
    rgb = np.where(sky_H_1[..., None], sky_color, ground_color) * shade_H_1[..., None]
    rgb = np.broadcast_to(rgb, (H, W, 3)).copy()
    depth = np.broadcast_to(np.where(sky_H_1, 0.0, 255.0 * (ys_H_1 - scene.horizon) / (H - scene.horizon)), (H, W))
    depth = depth.copy()
    seg = np.broadcast_to(np.where(sky_H_1[..., None], SEG_BACKGROUND[0], SEG_BACKGROUND[1]), (H, W, 3)).copy()
    owner_H_W = np.full((H, W), -1)  # index of the visible shape at each pixel, -1 for the background
    outlines = []
    for index, shape in enumerate(scene.shapes):
        cx, cy = shape.center(t, H, W)
        dx_1_W, dy_H_1 = xs_1_W - cx, ys_H_1 - cy
        if shape.kind == "disc":
            distance_H_W = np.sqrt(dx_1_W**2 + dy_H_1**2)
            inside = distance_H_W <= shape.half_w
            outline = inside & (distance_H_W > shape.half_w - LINE_WIDTH)
        else:
            inside = (np.abs(dx_1_W) <= shape.half_w) & (np.abs(dy_H_1) <= shape.half_h)
            outline = inside & (
                (np.abs(dx_1_W) > shape.half_w - LINE_WIDTH) | (np.abs(dy_H_1) > shape.half_h - LINE_WIDTH)
            )
        outlines.append(outline)
        rgb[inside] = COLORS[shape.color_name]
        depth[inside] = 64 + 191 * shape.depth
        seg[inside] = SEG_PALETTE[index % len(SEG_PALETTE)]
        owner_H_W[inside] = index
    # The line drawing shows what is visible: the horizon where no shape covers it, and each shape's
    # outline where that shape is in front.
    lines = np.zeros((H, W, 3), np.float32)
    horizon_H_W = (np.abs(ys_H_1 - scene.horizon) < LINE_WIDTH / 2 + 0.25) & (owner_H_W == -1)
    lines[horizon_H_W] = 128
    for index, (shape, outline) in enumerate(zip(scene.shapes, outlines)):
        lines[outline & (owner_H_W == index)] = COLORS[shape.color_name]
    to_uint8 = lambda a: np.clip(np.round(a), 0, 255).astype(np.uint8)  # noqa: E731
    return {
        "rgb": to_uint8(rgb),
        "lines": to_uint8(lines),
        "depth": to_uint8(np.repeat(depth[..., None], 3, axis=2)),
        "seg": to_uint8(seg),
    }


def render_clip(scene: Scene, num_frames: int) -> dict[str, np.ndarray]:
    """All frames of ``scene``: each entry is uint8 ``[T, H, W, 3]``."""
    frames = [render(scene, t) for t in range(num_frames)]
    return {key: np.stack([frame[key] for frame in frames]) for key in frames[0]}


def sample_name(index: int) -> str:
    return f"demo_{index:04d}"


def make_demo_dataset(
    output: str | Path,
    layout: str = MULTIVIEW_HDMAP,
    samples: int = 4,
    frames: int = 29,
    height: int = 64,
    width: int = 112,
    seed: int = 0,
    fps: float = 10,
    overwrite: bool = False,
    progress: bool = True,
    cameras: Sequence[str] | None = None,
) -> list[str]:
    """Write a synthetic dataset in the official ``layout`` to ``output``; returns the sample names.

    Multiview HDMap writes ``videos/``, ``control_input_hdmap_bbox/`` and ``captions/`` with the 7
    ``ftheta_camera_*`` folders of ``cameras`` (default: the 7 official ones; entries may be
    ``name=official``; captions only for ``caption_camera``, front_wide like the official example); single view
    writes ``videos/``, ``captions/``, ``depth/`` and ``seg/``. The same arguments give the same bytes.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if samples < 1 or frames < 1:
        raise ValueError("--samples and --frames must be at least 1")
    if height % 2 or width % 2 or height < 16 or width < 16:
        raise ValueError(f"--height and --width must be even and at least 16 (H.264 yuv420p), got {height}x{width}")
    names = [sample_name(index) for index in range(samples)]
    if layout == MULTIVIEW_HDMAP:
        rig = parse_cameras(cameras, "--cameras")
        cameras, caption_view = rig.names, caption_camera(rig.names, rig.origins)
    elif cameras:
        raise ValueError(f"--cameras is for --layout {MULTIVIEW_HDMAP}; single view has one camera")
    else:
        cameras, caption_view = (None,), None
    with atomic_output_dir(output, overwrite) as root:
        for sample_index, name in enumerate(tqdm(names, desc=f"demo {layout}", unit="sample", disable=not progress)):
            caption = None
            for camera_index, camera in enumerate(cameras):
                scene = make_scene(np.random.default_rng([seed, sample_index, camera_index]), height, width)
                clip = render_clip(scene, frames)
                if camera is None:
                    write_mp4(root / "videos" / f"{name}.mp4", clip["rgb"], fps)
                    write_mp4(root / "depth" / f"{name}.mp4", clip["depth"], fps)
                    write_mp4(root / "seg" / f"{name}.mp4", clip["seg"], fps)
                    caption = scene.caption()
                else:
                    write_mp4(root / "videos" / camera_folder(camera) / f"{name}.mp4", clip["rgb"], fps)
                    write_mp4(
                        root / "control_input_hdmap_bbox" / camera_folder(camera) / f"{name}.mp4",
                        clip["lines"],
                        fps,
                    )
                    if camera == caption_view:
                        caption = scene.caption()
            caption_dir = root / "captions"
            if layout == MULTIVIEW_HDMAP:
                caption_dir = caption_dir / camera_folder(caption_view)
            caption_dir.mkdir(parents=True, exist_ok=True)
            (caption_dir / f"{name}.json").write_text(json.dumps({"caption": caption}) + "\n", encoding="utf-8")
    return names
