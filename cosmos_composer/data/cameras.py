"""The cameras of a multiview run, their view ids and their caption prefixes.

The 7 official cameras and their prefixes are copied from the official code (``cosmos_transfer2/_src/
predict2_multiview/datasets/multiview.py``: ``DEFAULT_CAMERAS`` and ``DEFAULT_CAPTION_PREFIXES``).

Other rigs: a run may list any cameras (``train_loader.dataset.cameras``, ``convert_to_mds.py --cameras``).
The view id of a camera, the row of ``view_embeddings`` it reads, is its position in the run's camera list;
the default list is ``DEFAULT_CAMERAS``, so the official ids are unchanged. A camera of the list may name the
official camera it resembles, ``CAM_FRONT=camera_front_wide_120fov`` (:func:`parse_cameras`): it is called
``CAM_FRONT`` (folders, MDS columns, network.json) and starts from that official camera, whose view-embedding
row it copies from the released weights and whose caption prefix it gets (upstream's maintainers advise
starting a new camera from the nearest official one). A camera neither official nor mapped gets
``GENERIC_CAPTION_PREFIX`` (the sentence every official prefix starts with) and the mean row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# The official cameras and the rule for a camera that starts from one: the network's (its view-embedding rows).
from ..models.official_cameras import DEFAULT_CAMERAS, ORIGIN_SEPARATOR, check_camera_origins

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


@dataclass(frozen=True)
class CameraRig:
    """A run's cameras, parsed from a camera list by :func:`parse_cameras`."""

    names: tuple[str, ...]  # in view order (view id = position): folders, MDS columns, view-embedding rows
    # {rig camera: the official camera it starts from}, for the mapped cameras only (never an official name)
    origins: dict[str, str] = field(default_factory=dict)


def parse_cameras(cameras: Sequence[str] | None, where: str) -> CameraRig:
    """The one parser of a run's camera list (YAML ``cameras``, ``--cameras``); ``where`` names it in errors.

    Each entry is a camera name, or ``name=official`` for a camera that starts from an official camera (its
    view-embedding row and caption prefix). None: the 7 ``DEFAULT_CAMERAS``. The names follow
    :func:`check_camera_list`; a mapping must name one of the 7 official cameras, and an official camera
    cannot be mapped to another one (it starts from its own row).
    """
    if cameras is None:
        return CameraRig(DEFAULT_CAMERAS)
    names, origins = [], {}
    for entry in cameras:
        if not isinstance(entry, str):
            names.append(entry)  # refused by check_camera_list
            continue
        name, separator, official = (part.strip() for part in entry.partition(ORIGIN_SEPARATOR))
        names.append(name)
        if separator and official != name:  # `camera_front_wide_120fov=camera_front_wide_120fov` is no mapping
            origins[name] = official
    check_camera_list(names, where)
    check_camera_origins(origins, names, where)
    return CameraRig(tuple(names), origins)


def check_camera_list(cameras: Sequence[str], where: str) -> None:
    """Refuse an empty list, a repeated camera or a name that cannot be a folder/column name, naming ``where``."""
    if not cameras:
        raise ValueError(f"{where}: the camera list is empty; list at least one camera (or null for the 7 official)")
    repeated = sorted({c for c in cameras if list(cameras).count(c) > 1})
    if repeated:
        raise ValueError(f"{where}: camera(s) {repeated} are listed more than once in {list(cameras)}")
    bad = [c for c in cameras if not isinstance(c, str) or not c or not all(ch.isalnum() or ch in "_-" for ch in c)]
    if bad:
        raise ValueError(
            f"{where}: camera name(s) {bad} must be non-empty and use only letters, digits, _ and - (a camera that "
            f"starts from an official one is written name{ORIGIN_SEPARATOR}official, e.g. "
            f"CAM_FRONT{ORIGIN_SEPARATOR}camera_front_wide_120fov)"
        )


def official_camera(camera: str, origins: Mapping[str, str] | None = None) -> str | None:
    """The official camera ``camera`` is or starts from (``origins``: :attr:`CameraRig.origins`), else None."""
    official = (origins or {}).get(camera, camera)
    return official if official in CAMERA_TO_VIEW_INDEX else None


def caption_camera(cameras: Sequence[str], origins: Mapping[str, str] | None = None) -> str:
    """The camera whose caption file is read and whose view carries the caption: front_wide when listed, else
    the first camera mapped to front_wide (``origins``), else the first camera (as upstream's inference picks
    the first view)."""
    if CAPTION_CAMERA in cameras:
        return CAPTION_CAMERA
    return next((c for c in cameras if official_camera(c, origins) == CAPTION_CAMERA), cameras[0])


def caption_prefix(camera: str, origins: Mapping[str, str] | None = None) -> str:
    """The official prefix of ``camera`` or of the official camera it starts from (``origins``), or
    ``GENERIC_CAPTION_PREFIX`` for another camera."""
    return DEFAULT_CAPTION_PREFIXES.get(official_camera(camera, origins), GENERIC_CAPTION_PREFIX)


def view_captions(
    caption: str, cameras: Sequence[str] = DEFAULT_CAMERAS, origins: Mapping[str, str] | None = None
) -> list[str]:
    """The per-view captions the model embeds, as the official ``ExtractFramesAndCaptions`` builds them.

    Every view gets ``f"{prefix} {caption}"`` where ``caption`` is the sample's caption for
    ``caption_camera(cameras, origins)`` and the empty string for every other camera, so the other views read
    ``"<prefix> "`` (with the trailing space, exactly as upstream). ``origins``: :attr:`CameraRig.origins`.
    """
    front = caption_camera(cameras, origins)
    return [f"{caption_prefix(camera, origins)} {caption if camera == front else ''}" for camera in cameras]
