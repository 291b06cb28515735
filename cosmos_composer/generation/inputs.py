"""Control and conditioning videos for generation: which file is which camera, read at the sampled size.

A multiview input is a folder with one mp4 per camera: ``<camera>.mp4``, or a subfolder ``<camera>/`` with one
mp4 (the official layout of one sample), or with ``sample`` the subfolder's ``<sample>.mp4`` (a dataset's
folder in the official layout). ``<camera>`` may be the camera key (``camera_front_wide_120fov``), its folder
name in the official layout (``ftheta_camera_front_wide_120fov``) or the official inference's short name
(``front_wide``). A single-view input is one mp4.

The cameras a multiview network knows are those of its view-embedding rows (``NetworkConfig.view_cameras``,
recorded in network.json: the 7 official ones, or the rig's cameras it was trained on); a camera's view id is
its position there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..data.cameras import DEFAULT_CAMERAS, FOLDER_PREFIX
from ..data.video import VideoError, decode_frames, probe_video, resize_video
from ..latent_geometry import TEMPORAL_COMPRESSION
from . import GenerationError

# Short camera names of the official multiview inference (`front_wide`, ...), also accepted as file names.
SHORT_CAMERA_NAMES: dict[str, str] = {
    "front_wide": "camera_front_wide_120fov",
    "cross_right": "camera_cross_right_120fov",
    "rear_right": "camera_rear_right_70fov",
    "rear": "camera_rear_tele_30fov",
    "rear_left": "camera_rear_left_70fov",
    "cross_left": "camera_cross_left_120fov",
    "front_tele": "camera_front_tele_30fov",
}


def canonical_camera(name: str, network_cameras: Sequence[str] = DEFAULT_CAMERAS) -> str:
    """``camera_front_wide_120fov`` for that name, ``ftheta_camera_front_wide_120fov`` or ``front_wide``;
    it must be one of ``network_cameras``."""
    name = name.removeprefix(FOLDER_PREFIX)
    if name not in network_cameras:
        name = SHORT_CAMERA_NAMES.get(name, name)
    if name not in network_cameras:
        raise GenerationError(
            f"unknown camera {name!r}; the network's cameras are {list(network_cameras)} (also accepted: "
            f"'{FOLDER_PREFIX}<camera>' and the official short names {list(SHORT_CAMERA_NAMES)})"
        )
    return name


def select_cameras(names: Optional[Sequence[str]], network_cameras: Sequence[str]) -> list[str]:
    """The cameras to generate, canonical and in view-id order (the order training sees them): all the
    network's cameras (``network_cameras``, one per view-embedding row) for None."""
    if not network_cameras:
        raise GenerationError(
            "the network's view-embedding rows name no cameras (n_cameras_emb is not 7 and network.json has no "
            "camera_names). Fix: train with train_loader.dataset.cameras set, which records them"
        )
    position = {camera: index for index, camera in enumerate(network_cameras)}
    return sorted({canonical_camera(name, network_cameras) for name in names or network_cameras}, key=position.get)


def _camera_aliases(camera: str) -> list[str]:
    short = [s for s, full in SHORT_CAMERA_NAMES.items() if full == camera]
    return [camera, FOLDER_PREFIX + camera, *short]


def camera_video_files(
    folder: str | os.PathLike, cameras: Sequence[str], what: str = "--control", sample: Optional[str] = None
) -> dict[str, Path]:
    """The mp4 of each camera in ``folder`` (see the module's docstring for the names it looks for)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GenerationError(
            f"{what} {folder} is not a folder; the multiview network takes a folder with one mp4 per camera "
            f"({', '.join(c + '.mp4' for c in cameras)})"
        )
    found: dict[str, Path] = {}
    missing: list[str] = []
    for camera in cameras:
        candidates = []
        for alias in _camera_aliases(camera):
            if (folder / f"{alias}.mp4").is_file():
                candidates.append(folder / f"{alias}.mp4")
            subfolder = folder / alias
            if subfolder.is_dir():
                videos = [subfolder / f"{sample}.mp4"] if sample else sorted(subfolder.glob("*.mp4"))
                videos = [v for v in videos if v.is_file()]
                if len(videos) > 1:
                    raise GenerationError(
                        f"{what}: {subfolder} holds {len(videos)} mp4 files; it must hold exactly one. Fix: name the "
                        f"sample with --sample <name> (e.g. --sample {videos[0].stem}), or point {what} at a folder "
                        f"with one video per camera (e.g. {folder}/{camera}.mp4)"
                    )
                candidates += videos
        if not candidates:
            missing.append(camera)
        elif len(candidates) > 1:
            raise GenerationError(
                f"{what}: camera {camera} has several videos: {[str(c) for c in candidates]}; keep one"
            )
        else:
            found[camera] = candidates[0]
    if missing:
        raise GenerationError(
            f"{what} {folder} has no video for camera(s) {missing}. Fix: add <camera>.mp4 (or "
            f"{FOLDER_PREFIX}<camera>/<name>.mp4) for each, or choose the cameras to generate with --cameras"
        )
    return found


def video_files(
    path: str | os.PathLike, cameras: Optional[Sequence[str]], what: str = "--control", sample: Optional[str] = None
) -> list[Path]:
    """The mp4 of each view in camera order: the file ``path`` itself for single view (``cameras=None``)."""
    if cameras:
        files = camera_video_files(path, cameras, what, sample)
        return [files[camera] for camera in cameras]
    if not Path(path).is_file():
        raise GenerationError(f"{what} {path} is not a file; the single-view network takes one mp4")
    return [Path(path)]


def largest_valid_frames(available: int) -> int:
    """The longest clip of at most ``available`` frames that the Wan VAE takes: 1 + 4k frames."""
    return max(1, 1 + TEMPORAL_COMPRESSION * ((available - 1) // TEMPORAL_COMPRESSION))


def probe_size(path: Path) -> tuple[int, int, float, int]:
    """(height, width, fps, frames) of a video file."""
    try:
        info = probe_video(path)
    except VideoError as error:
        raise GenerationError(f"{path} cannot be read as a video: {error}") from None
    return info.height, info.width, info.fps, info.num_frames


def check_view_sizes(
    files: Sequence[Path], height: int, width: int, size_given: bool, what: str = "--control"
) -> list[str]:
    """Refuse views of different sizes unless ``size_given`` (``--height`` and ``--width``): by default every
    view is resized to the first one's size, which would stretch the others silently. Returns the views whose
    aspect ratio the resize to ``height`` x ``width`` changes (``"name: H x W"``), for the caller to say so.

    The official multiview inference resizes every view to 720 x 1280 whatever its size (a plain bilinear resize,
    no crop: the augmentations of predict2_multiview/datasets/multiview.py with ``resolution_hw``, which
    cosmos_transfer2/multiview.py sets); given a size, so do we.
    """
    sizes = {path: probe_size(path)[:2] for path in files}
    # A sample's folder in the official layout names every file <sample>.mp4: its camera folder tells them apart.
    unique = len({path.name for path in files}) == len(files)
    listing = {
        path: f"{path.name if unique else path.parent.name + '/' + path.name}: {h} x {w}"
        for path, (h, w) in sizes.items()
    }
    if len(set(sizes.values())) > 1 and not size_given:
        raise GenerationError(
            f"{what} views have different sizes ({', '.join(listing.values())}); each would be stretched to the "
            f"first one's. Fix: re-encode them at one size, or pass --height and --width to resize every view to "
            "that size (the official multiview inference resizes every view to 720 x 1280)"
        )
    target_aspect = width / height
    return [listing[path] for path, (h, w) in sizes.items() if abs(w / h - target_aspect) > 0.01 * target_aspect]


def read_clip(path: Path, num_frames: int, height: int, width: int) -> tuple[torch.Tensor, float]:
    """Frames 0..num_frames-1 of ``path`` resized to ``height`` x ``width`` (bilinear, antialiased, as the
    training loader resizes): uint8 ``[3, F, H, W]``, and the file's fps."""
    try:
        frames_T_H_W_3, fps = decode_frames(path, 0, num_frames)
    except VideoError as error:
        try:
            available = probe_video(path).num_frames
        except VideoError:
            raise GenerationError(f"{path} cannot be read as a video: {error}") from None
        raise GenerationError(
            f"{path} has {available} frames, fewer than the {num_frames} requested. Fix: pass --num-frames "
            f"{largest_valid_frames(available)} (frame counts are 1 + 4k) or a longer video"
        ) from None
    frames_T_3_H_W = resize_video(torch.from_numpy(frames_T_H_W_3).permute(0, 3, 1, 2), height, width)
    return frames_T_3_H_W.permute(1, 0, 2, 3).contiguous(), fps


def read_views(
    files: Sequence[Path], num_frames: int, height: int, width: int, what: str = "--control"
) -> torch.Tensor:
    """Every view's clip, views one after another along time: uint8 ``[3, V*F, H, W]``. All views must share
    one frame rate (as the official multiview loader checks)."""
    clips_3_F_H_W, rates = [], []
    for path in files:
        clip, fps = read_clip(path, num_frames, height, width)
        clips_3_F_H_W.append(clip)
        rates.append(fps)
    if any(abs(rate - rates[0]) > 1e-3 for rate in rates):
        listing = ", ".join(f"{p.name}: {r:g} fps" for p, r in zip(files, rates))
        raise GenerationError(
            f"{what} videos have different frame rates ({listing}). Fix: re-encode them at one frame rate"
        )
    return torch.cat(clips_3_F_H_W, dim=1)
