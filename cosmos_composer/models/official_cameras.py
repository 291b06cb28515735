"""The 7 cameras of the released multiview network, in view-id order, and the rule for a rig's camera that
starts from one of them: what the network config (`presets.NetworkConfig`) and the data both check.

The list is copied from the official code (``cosmos_transfer2/_src/predict2_multiview/datasets/multiview.py``:
``DEFAULT_CAMERAS``). A leaf: it imports nothing from the project (`data/cameras.py` builds on it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

DEFAULT_CAMERAS: tuple[str, ...] = (
    "camera_front_wide_120fov",
    "camera_cross_right_120fov",
    "camera_rear_right_70fov",
    "camera_rear_tele_30fov",
    "camera_rear_left_70fov",
    "camera_cross_left_120fov",
    "camera_front_tele_30fov",
)

# `CAM_FRONT=camera_front_wide_120fov`: the rig's camera, this separator, the official camera it starts from.
ORIGIN_SEPARATOR: str = "="


def check_camera_origins(origins: Mapping[str, str], cameras: Sequence[str], where: str) -> None:
    """Refuse a mapping ``camera -> official`` (see `data.cameras.parse_cameras`) that cannot be followed, naming ``where``."""
    for camera, official in origins.items():
        entry = f"{camera}{ORIGIN_SEPARATOR}{official}"
        if official not in DEFAULT_CAMERAS:
            raise ValueError(
                f"{where}: {entry!r} maps {camera} to {official!r}, which is not an official camera. Fix: map it "
                f"to one of the 7 official cameras {list(DEFAULT_CAMERAS)} (the one it resembles), or list it "
                f"without '{ORIGIN_SEPARATOR}' to start it from the mean of their rows"
            )
        if camera in DEFAULT_CAMERAS:
            raise ValueError(
                f"{where}: {entry!r} maps the official camera {camera} to another one; an official camera starts "
                f"from its own row. Fix: give the rig's camera a name of its own (e.g. CAM_1{ORIGIN_SEPARATOR}"
                f"{official}), or list {camera} without '{ORIGIN_SEPARATOR}'"
            )
        if camera not in cameras:
            raise ValueError(f"{where}: {entry!r} maps {camera}, which is not one of the cameras {list(cameras)}")
