"""The cameras of a multiview run, their view ids and their caption prefixes.

The 7 official cameras and their prefixes are copied from the official code (``cosmos_transfer2/_src/
predict2_multiview/datasets/multiview.py``: ``DEFAULT_CAMERAS`` and ``DEFAULT_CAPTION_PREFIXES``).

Other rigs: a run may list any cameras (``train_loader.dataset.cameras``, ``convert_to_mds.py --cameras``).
The view id of a camera, the row of ``view_embeddings`` it reads, is its position in the run's camera list;
the default list is ``DEFAULT_CAMERAS``, so the official ids are unchanged. A camera without an official
prefix gets ``GENERIC_CAPTION_PREFIX`` (the sentence every official prefix starts with).
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_CAMERAS: tuple[str, ...] = (
    "camera_front_wide_120fov",
    "camera_cross_right_120fov",
    "camera_rear_right_70fov",
    "camera_rear_tele_30fov",
    "camera_rear_left_70fov",
    "camera_cross_left_120fov",
    "camera_front_tele_30fov",
)

CAMERA_TO_VIEW_INDEX: dict[str, int] = {camera: index for index, camera in enumerate(DEFAULT_CAMERAS)}

DEFAULT_CAPTION_PREFIXES: dict[str, str] = {
    "camera_front_wide_120fov": "The video is captured from a camera mounted on a car. The camera is facing forward.",
    "camera_cross_right_120fov": "The video is captured from a camera mounted on a car. The camera is facing to the right.",
    "camera_rear_right_70fov": "The video is captured from a camera mounted on a car. The camera is facing the rear right side.",
    "camera_rear_tele_30fov": "The video is captured from a camera mounted on a car. The camera is facing backwards.",
    "camera_rear_left_70fov": "The video is captured from a camera mounted on a car. The camera is facing the rear left side.",
    "camera_cross_left_120fov": "The video is captured from a camera mounted on a car. The camera is facing to the left.",
    "camera_front_tele_30fov": "The video is captured from a telephoto camera mounted on a car. The camera is facing forward.",
}

# The first sentence of every official prefix: the prefix of a camera outside the 7.
GENERIC_CAPTION_PREFIX: str = "The video is captured from a camera mounted on a car."

# Only this camera's caption is used; the other views get their prefix only (upstream ExtractFramesAndCaptions).
CAPTION_CAMERA: str = "camera_front_wide_120fov"

# Folder names in the official layout: ``videos/ftheta_<camera>/<name>.mp4``.
FOLDER_PREFIX: str = "ftheta_"


def camera_folder(camera: str) -> str:
    """Folder name of ``camera`` in the official multiview layout, e.g. ``ftheta_camera_front_wide_120fov``."""
    return f"{FOLDER_PREFIX}{camera}"


def run_cameras(cameras: Sequence[str] | None) -> tuple[str, ...]:
    """The run's camera list (view id = position): ``cameras``, or ``DEFAULT_CAMERAS`` for None / empty."""
    return tuple(cameras) if cameras else DEFAULT_CAMERAS


def check_camera_list(cameras: Sequence[str], where: str) -> None:
    """Refuse an empty list, a repeated camera or a name that cannot be a folder/column name, naming ``where``."""
    if not cameras:
        raise ValueError(f"{where}: the camera list is empty; list at least one camera (or null for the 7 official)")
    repeated = sorted({c for c in cameras if list(cameras).count(c) > 1})
    if repeated:
        raise ValueError(f"{where}: camera(s) {repeated} are listed more than once in {list(cameras)}")
    bad = [c for c in cameras if not isinstance(c, str) or not c or not all(ch.isalnum() or ch in "_-" for ch in c)]
    if bad:
        raise ValueError(f"{where}: camera name(s) {bad} must be non-empty and use only letters, digits, _ and -")


def caption_camera(cameras: Sequence[str]) -> str:
    """The camera whose caption file is read and whose view carries the caption: front_wide when listed,
    else the first camera (as upstream's inference picks the first view)."""
    return CAPTION_CAMERA if CAPTION_CAMERA in cameras else cameras[0]


def caption_prefix(camera: str) -> str:
    """The official prefix of ``camera``, or ``GENERIC_CAPTION_PREFIX`` for a camera outside the 7."""
    return DEFAULT_CAPTION_PREFIXES.get(camera, GENERIC_CAPTION_PREFIX)


def view_captions(caption: str, cameras: Sequence[str] = DEFAULT_CAMERAS) -> list[str]:
    """The per-view captions the model embeds, as the official ``ExtractFramesAndCaptions`` builds them.

    Every view gets ``f"{prefix} {caption}"`` where ``caption`` is the sample's caption for
    ``caption_camera(cameras)`` and the empty string for every other camera, so the other views read
    ``"<prefix> "`` (with the trailing space, exactly as upstream).
    """
    front = caption_camera(cameras)
    return [f"{caption_prefix(camera)} {caption if camera == front else ''}" for camera in cameras]
