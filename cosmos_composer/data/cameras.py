"""The 7 cameras of the multiview (auto / HDMap) recipe and their caption prefixes.

Both tables are copied from the official code (``cosmos_transfer2/_src/predict2_multiview/datasets/
multiview.py``: ``DEFAULT_CAMERAS`` and ``DEFAULT_CAPTION_PREFIXES``). The position of a camera in
``DEFAULT_CAMERAS`` is its view-embedding id, so the order matters.
"""

from __future__ import annotations

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

# Only this camera's caption is used; the other views get their prefix only (reference 1.5 and 5).
CAPTION_CAMERA: str = "camera_front_wide_120fov"

# Folder names in the official layout: ``videos/ftheta_<camera>/<name>.mp4``.
FOLDER_PREFIX: str = "ftheta_"


def camera_folder(camera: str) -> str:
    """Folder name of ``camera`` in the official multiview layout, e.g. ``ftheta_camera_front_wide_120fov``."""
    return f"{FOLDER_PREFIX}{camera}"


def view_captions(caption: str, cameras: tuple[str, ...] | list[str] = DEFAULT_CAMERAS) -> list[str]:
    """The per-view captions the model embeds, as the official ``ExtractFramesAndCaptions`` builds them.

    Every view gets ``f"{prefix} {caption}"`` where ``caption`` is the sample's caption for
    ``CAPTION_CAMERA`` and the empty string for every other camera, so the other views read
    ``"<prefix> "`` (with the trailing space, exactly as upstream).
    """
    return [f"{DEFAULT_CAPTION_PREFIXES[camera]} {caption if camera == CAPTION_CAMERA else ''}" for camera in cameras]
