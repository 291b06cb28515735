"""The MDS columns of a cosmos-composer dataset, all in one place.

One MDS sample is one training clip (all views of it), or one window of a clip (``--window-stride``).
Columns written by ``convert_to_mds.py``:

=============================  ===============  ==================================================
column                         MDS encoding     content
=============================  ===============  ==================================================
``sample_name``                ``str``          the file stem in the source layout; a window
                                                (``--window-stride``) is ``<stem>@<start>``, start =
                                                the window's first served frame in the clip
``layout``                     ``str``          ``multiview-hdmap`` or ``singleview``
``camera_names``               ``json``         list of V camera keys in view order (reference 1.5,
                                                e.g. ``camera_front_wide_120fov``); ``[]`` for
                                                single view, which has V = 1
``caption``                    ``str``          the caption text (multiview: the front_wide one)
``fps``                        ``float64``      frame rate served (``--fps``; else the source's)
``num_frames``                 ``int``          served frames of the row, which every view's
                                                video and control has (a window: its length)
``source_fps``                 ``float64``      frame rate of every stored video and control
``frame_start``                ``int``          source frame of the row's first served frame
``frame_step``                 ``float64``      source frames per served frame (``source_fps /
                                                fps``; 1.0: every frame)
``control_key``                ``str``          ``hdmap_bbox`` | ``depth`` | ``seg`` | ``edge`` | ``vis``
``video_<camera>``             ``bytes``        the source mp4, byte for byte (multiview, per camera)
``video``                      ``bytes``        the source mp4, byte for byte (single view)
``control_<key>_<camera>``     ``bytes``        the control mp4, byte for byte (multiview stored
                                                controls, e.g. ``control_hdmap_bbox_camera_...``)
``control_<key>``              ``bytes``        the control mp4 (single view depth / seg)
=============================  ===============  ==================================================

No control bytes are stored for ``edge`` and ``vis``: the dataset computes them from the video.

Served frame ``j`` of a row is source frame ``frame_start + round(j * frame_step)`` (halves up), the rule of
:mod:`cosmos_composer.data.framerate`, applied by :func:`cosmos_composer.data.clip.source_frame_indices`.
Datasets converted before these three columns existed read as ``frame_start`` 0 and ``frame_step`` 1 (every
frame from the first), with ``fps`` the source rate.

Optional cached columns, written by ``convert_to_mds.py --precompute latents,text``
(:mod:`cosmos_composer.data.precompute`); when present the dataset serves them:

================================  ===================  ==========================================
``video_latent``                  ``ndarray:float16``  normalised Wan2.1 VAE latent ``[16, V*t, h, w]``
                                                       (views concatenated along latent time)
``control_latent``                ``ndarray:float16``  the control's latent, same shape
``latent_num_frames``             ``int``              served frames per view that were encoded (from 0)
``latent_height``                 ``int``              pixel height the views were resized to
``latent_width``                  ``int``              pixel width the views were resized to
``text_embedding``                ``ndarray:float16``  ``[V*512, D]``, one 512-token block per view;
                                                       D = 100352 (raw Reason1) or 1024 (projected)
``text_embedding_kind``           ``str``              ``raw`` or ``projected``
``crossattn_proj_fingerprint``    ``str``              sha256 of the ``crossattn_proj`` weights used to
                                                       project (``""`` for raw)
================================  ===================  ==========================================
"""

from __future__ import annotations

from cosmos_composer.data.layouts import MULTIVIEW_HDMAP, ON_THE_FLY_CONTROLS

SAMPLE_NAME = "sample_name"
LAYOUT = "layout"
CAMERA_NAMES = "camera_names"
CAPTION = "caption"
FPS = "fps"
NUM_FRAMES = "num_frames"
CONTROL_KEY = "control_key"
SOURCE_FPS = "source_fps"
FRAME_START = "frame_start"
FRAME_STEP = "frame_step"

VIDEO_LATENT = "video_latent"
CONTROL_LATENT = "control_latent"
LATENT_NUM_FRAMES = "latent_num_frames"
LATENT_HEIGHT = "latent_height"
LATENT_WIDTH = "latent_width"
TEXT_EMBEDDING = "text_embedding"
TEXT_EMBEDDING_KIND = "text_embedding_kind"
CROSSATTN_PROJ_FINGERPRINT = "crossattn_proj_fingerprint"

TEXT_EMBEDDING_KINDS = ("raw", "projected")

# Hashes of every shard file, recorded in index.json by the converter, in the order the dataset prefers
# to verify them: xxh64 is fast, sha1 is there for tools without xxhash.
SHARD_HASHES = ("xxh64", "sha1")

BASE_COLUMNS: dict[str, str] = {
    SAMPLE_NAME: "str",
    LAYOUT: "str",
    CAMERA_NAMES: "json",
    CAPTION: "str",
    FPS: "float64",
    NUM_FRAMES: "int",
    CONTROL_KEY: "str",
    SOURCE_FPS: "float64",
    FRAME_START: "int",
    FRAME_STEP: "float64",
}
LATENT_COLUMNS: dict[str, str] = {
    VIDEO_LATENT: "ndarray:float16",
    CONTROL_LATENT: "ndarray:float16",
    LATENT_NUM_FRAMES: "int",
    LATENT_HEIGHT: "int",
    LATENT_WIDTH: "int",
}
TEXT_COLUMNS: dict[str, str] = {
    TEXT_EMBEDDING: "ndarray:float16",
    TEXT_EMBEDDING_KIND: "str",
    CROSSATTN_PROJ_FINGERPRINT: "str",
}


def video_column(camera: str | None) -> str:
    """Column of a view's mp4 bytes: ``video_<camera>``, or ``video`` for single view."""
    return f"video_{camera}" if camera else "video"


def control_column(control_key: str, camera: str | None) -> str:
    """Column of a view's control mp4 bytes: ``control_<key>_<camera>``, or ``control_<key>``."""
    return f"control_{control_key}_{camera}" if camera else f"control_{control_key}"


def dataset_columns(
    layout: str,
    control_key: str,
    cameras: tuple[str | None, ...],
    latents: bool = False,
    text: bool = False,
) -> dict[str, str]:
    """Every column (name -> MDS encoding) a converted dataset has."""
    columns = dict(BASE_COLUMNS)
    for camera in cameras:
        columns[video_column(camera)] = "bytes"
    if control_key not in ON_THE_FLY_CONTROLS:
        for camera in cameras:
            columns[control_column(control_key, camera)] = "bytes"
    if latents:
        columns.update(LATENT_COLUMNS)
    if text:
        columns.update(TEXT_COLUMNS)
    assert layout != MULTIVIEW_HDMAP or all(cameras), "multiview columns need camera names"
    return columns
