"""The official Cosmos-Transfer2.5 post-training folder layouts: find the samples and validate them.

Multiview HDMap (``--layout multiview-hdmap``, upstream ``transfer2_multiview/configs/vid2vid_transfer/defaults/dataloader_local.py``)::

    DIR/videos/ftheta_<camera>/<name>.mp4                   for each camera (default: the 7 DEFAULT_CAMERAS)
    DIR/control_input_hdmap_bbox/ftheta_<camera>/<name>.mp4 for each camera
    DIR/captions/ftheta_camera_front_wide_120fov/<name>.json  {"caption": "..."}

    Other rigs (``--cameras a,b,c``): the same folders for the listed cameras; the captions are read from
    the folder of ``cameras.caption_camera(cameras)`` (front_wide when listed, else the camera mapped to
    it, as ``CAM_FRONT=camera_front_wide_120fov``, else the first camera).

Single view (``--layout singleview``, upstream ``docs/post-training_singleview.md`` and
``SingleViewTransferDataset``)::

    DIR/videos/<name>.mp4
    DIR/captions/<name>.json     {"caption": "..."}
    DIR/depth/<name>.mp4         only for --control-key depth
    DIR/seg/<name>.mp4           only for --control-key seg (colour-coded segmentation video)

Edge and blur ("vis" upstream) controls have no folder: they are computed from the video on the fly.

Sample names are the union of every file stem found in these folders, so a file that belongs to no
complete sample is reported as an invalid sample instead of being dropped without a word.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cosmos_composer.data.cameras import camera_folder, caption_camera, parse_cameras
from cosmos_composer.data.framerate import FPS_TOLERANCE, describe_change, frame_step, served_frame_count
from cosmos_composer.data.video import VideoError, probe_video, read_video_size

MULTIVIEW_HDMAP = "multiview-hdmap"
SINGLEVIEW = "singleview"
LAYOUTS = (MULTIVIEW_HDMAP, SINGLEVIEW)

# Control keys as the model sees them (``control_input_<key>``). "vis" is upstream's name for blur.
CONTROL_KEYS = ("hdmap_bbox", "depth", "seg", "edge", "vis")
CONTROL_KEY_ALIASES = {"blur": "vis"}
# Controls computed from the video while loading; nothing is read from disk for them.
ON_THE_FLY_CONTROLS = ("edge", "vis")
# Folder of each stored control in the official layouts.
CONTROL_FOLDERS = {"hdmap_bbox": "control_input_hdmap_bbox", "depth": "depth", "seg": "seg"}
LAYOUT_CONTROL_KEYS = {
    MULTIVIEW_HDMAP: ("hdmap_bbox", "edge", "vis"),
    SINGLEVIEW: ("depth", "seg", "edge", "vis"),
}
DEFAULT_CONTROL_KEY = {MULTIVIEW_HDMAP: "hdmap_bbox", SINGLEVIEW: "edge"}
# Frames per view the recipes train on (reference 4.6): 29 for multiview, 93 for single view.
DEFAULT_MIN_FRAMES = {MULTIVIEW_HDMAP: 29, SINGLEVIEW: 93}
# Frame rate each recipe trains at; a source at another rate must be resampled (--fps). Multiview: 10 fps
# (cosmos-cookbook docs/recipes/post_training/transfer2_5/av_world_scenario_maps/post_training.md trains
# "at 720p resolution, 10fps"; the released auto/multiview checkpoint's metadata says fps 10; upstream's
# local loader reads frames 0..28 without subsampling, so the files must already be at 10 fps). Single view:
# no fixed rate (None): upstream's SingleViewTransferDataset serves each video at its native fps and
# docs/post-training_singleview.md accepts 10-60 fps.
RECIPE_FPS: dict[str, float | None] = {MULTIVIEW_HDMAP: 10.0, SINGLEVIEW: None}


class LayoutError(ValueError):
    """The input folder is not in the layout it was said to be in (nothing can be converted)."""


class InvalidSampleError(ValueError):
    """One sample is unusable. The message names the sample, the file, the problem and the fix."""

    def __init__(self, sample: str, path: Path | str, problem: str, fix: str) -> None:
        self.sample, self.path, self.problem, self.fix = sample, str(path), problem, fix
        super().__init__(f"sample '{sample}': {path}: {problem}. Fix: {fix}")


def normalize_control_key(control_key: str, layout: str) -> str:
    """Resolve aliases (``blur`` -> ``vis``) and check the key suits the layout."""
    key = CONTROL_KEY_ALIASES.get(control_key, control_key)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if key not in LAYOUT_CONTROL_KEYS[layout]:
        raise ValueError(
            f"control key {control_key!r} does not exist for layout {layout!r}; "
            f"choose one of {', '.join(LAYOUT_CONTROL_KEYS[layout])} (blur is accepted for vis)"
        )
    return key


@dataclass
class SampleFiles:
    """Where one sample's files are expected. ``cameras`` is ``(None,)`` for single view."""

    name: str
    cameras: tuple[str | None, ...]
    videos: dict[str | None, Path]
    controls: dict[str | None, Path]  # empty for edge / vis
    caption: Path


@dataclass
class ValidatedSample:
    """A sample that passed :func:`validate_sample`, with what the MDS writer stores."""

    files: SampleFiles
    caption: str
    source_fps: float  # frame rate of every video and control file
    fps: float  # frame rate served (--fps; source_fps when unchanged)
    frame_step: float  # source frames per served frame (1.0: unchanged), see cosmos_composer.data.framerate
    num_frames: int  # served frames every video and control of the sample gives (the minimum over them)
    resolution: tuple[int, int]  # (height, width) of the sample's videos
    to_resize: dict[Path, tuple[int, int]] = field(default_factory=dict)  # file -> its own (height, width)
    notes: list[str] = field(default_factory=list)  # harmless oddities to tell the user about


def _stems(folder: Path, suffix: str) -> set[str]:
    if not folder.is_dir():
        return set()
    return {path.name[: -len(suffix)] for path in folder.iterdir() if path.name.endswith(suffix)}


def find_samples(
    root: str | Path, layout: str, control_key: str, cameras: Sequence[str] | None = None
) -> list[SampleFiles]:
    """List every sample of the folder ``root`` in ``layout``, sorted by name.

    ``cameras``: the multiview cameras to read, in view order (None: the 7 official ones); entries may be
    ``name=official`` (``cameras.parse_cameras``).
    """
    root = Path(root)
    control_key = normalize_control_key(control_key, layout)
    if not root.is_dir():
        raise LayoutError(f"input folder {root} does not exist. Fix: pass the dataset folder as --input")
    if not (root / "videos").is_dir():
        raise LayoutError(
            f"{root} has no videos/ folder, so it is not in the official {layout} layout "
            f"(see `python scripts/convert_to_mds.py --help`). Fix: point --input at the folder that "
            f"holds videos/ and captions/"
        )
    control_folder = CONTROL_FOLDERS.get(control_key)
    samples = []
    if layout == MULTIVIEW_HDMAP:
        rig = parse_cameras(cameras, "--cameras")
        cameras, front = rig.names, caption_camera(rig.names, rig.origins)
        names = _stems(root / "captions" / camera_folder(front), ".json")
        for camera in cameras:
            names |= _stems(root / "videos" / camera_folder(camera), ".mp4")
            names |= _stems(root / "captions" / camera_folder(camera), ".json")
            if control_folder:
                names |= _stems(root / control_folder / camera_folder(camera), ".mp4")
        for name in sorted(names):
            samples.append(
                SampleFiles(
                    name=name,
                    cameras=cameras,
                    videos={cam: root / "videos" / camera_folder(cam) / f"{name}.mp4" for cam in cameras},
                    controls=(
                        {cam: root / control_folder / camera_folder(cam) / f"{name}.mp4" for cam in cameras}
                        if control_folder
                        else {}
                    ),
                    caption=root / "captions" / camera_folder(front) / f"{name}.json",
                )
            )
    else:
        names = _stems(root / "videos", ".mp4") | _stems(root / "captions", ".json")
        if control_folder:
            names |= _stems(root / control_folder, ".mp4")
        for name in sorted(names):
            samples.append(
                SampleFiles(
                    name=name,
                    cameras=(None,),
                    videos={None: root / "videos" / f"{name}.mp4"},
                    controls={None: root / control_folder / f"{name}.mp4"} if control_folder else {},
                    caption=root / "captions" / f"{name}.json",
                )
            )
    return samples


def ignored_files(root: str | Path, layout: str, control_key: str, cameras: Sequence[str] | None = None) -> list[Path]:
    """Files in the layout's folders that are not samples (wrong extension, e.g. ``.MP4`` or ``.txt``).

    Hidden files (``.DS_Store``) are not listed. The conversion reports these instead of passing them by.
    """
    root = Path(root)
    control_folder = CONTROL_FOLDERS.get(normalize_control_key(control_key, layout))
    if layout == MULTIVIEW_HDMAP:
        cameras = parse_cameras(cameras, "--cameras").names
        folders = [(root / "captions" / camera_folder(camera), ".json") for camera in cameras]
        for camera in cameras:
            folders.append((root / "videos" / camera_folder(camera), ".mp4"))
            if control_folder:
                folders.append((root / control_folder / camera_folder(camera), ".mp4"))
    else:
        folders = [(root / "videos", ".mp4"), (root / "captions", ".json")]
        if control_folder:
            folders.append((root / control_folder, ".mp4"))
    return sorted(
        path
        for folder, suffix in folders
        if folder.is_dir()
        for path in folder.iterdir()
        if path.is_file() and not path.name.startswith(".") and not path.name.endswith(suffix)
    )


def _require_file(sample: str, path: Path, what: str, layout: str, cameras: Sequence[str | None] = ()) -> None:
    if path.is_file():
        return
    if not path.parent.is_dir():
        raise InvalidSampleError(
            sample,
            path,
            f"missing {what}: the folder {path.parent} does not exist",
            f"create {path.parent}/ with one {path.suffix} file per sample, as the official {layout} layout requires"
            + (
                f" (a folder for each of the {len(cameras)} cameras: {', '.join(camera_folder(c) for c in cameras)}; "
                "--cameras lists the cameras to convert)"
                if layout == MULTIVIEW_HDMAP
                else ""
            ),
        )
    raise InvalidSampleError(
        sample,
        path,
        f"missing {what}",
        f"add {path.name} to {path.parent}/, or remove the sample's other files",
    )


def _read_caption(sample: str, path: Path, layout: str, cameras: Sequence[str | None] = ()) -> str:
    _require_file(sample, path, "caption file", layout, cameras)
    fix = 'write the file as JSON of the form {"caption": "<text>"}'
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidSampleError(sample, path, f"caption is not valid JSON ({error})", fix) from error
    if not isinstance(data, dict) or not isinstance(data.get("caption"), str):
        raise InvalidSampleError(sample, path, 'caption JSON has no "caption" string', fix)
    return data["caption"]


def _unreadable(sample: str, path: Path, what: str, error: VideoError) -> InvalidSampleError:
    return InvalidSampleError(sample, path, f"{what} is unreadable: {error}", "re-export or re-download this mp4")


def _check_resolutions(
    name: str, sizes: dict[Path, tuple[str, tuple[int, int]]], videos: list[Path], resize: bool
) -> tuple[tuple[int, int], dict[Path, tuple[int, int]]]:
    """The sample's resolution (the most common among its videos) and the files at another one.

    A file at another resolution is refused unless ``resize``: views and controls are concatenated
    and compared frame by frame, so a silent mismatch would be trained on as if it lined up.
    """
    resolution = Counter(sizes[path][1] for path in videos).most_common(1)[0][0]
    others = {path: size for path, (_, size) in sizes.items() if size != resolution}
    if others and not resize:
        path, (what, (height, width)) = next((path, sizes[path]) for path in others)
        raise InvalidSampleError(
            name,
            path,
            f"{what} is {height}x{width} (height x width), but the sample's videos are {resolution[0]}x{resolution[1]}",
            f"re-export it at {resolution[0]}x{resolution[1]}, or pass --resize to resize it to the sample's "
            f"video resolution while converting",
        )
    return resolution, others


def _served_rate(
    name: str, path: Path, what: str, source_fps: float, fps: float | None, layout: str
) -> tuple[float, float]:
    """(served fps, source frames per served frame) of a file at ``source_fps`` for ``--fps`` (None: unchanged).

    Refuses upsampling, and a source at another rate than the layout's recipe rate when no ``--fps`` is given.
    """
    recipe = RECIPE_FPS[layout]
    if fps is None:
        if recipe is not None and abs(source_fps - recipe) > FPS_TOLERANCE:
            raise InvalidSampleError(
                name,
                path,
                f"{what} runs at {source_fps:g} fps, but the {layout} recipe trains at {recipe:g} fps",
                f"pass --fps {recipe:g} to serve it at {recipe:g} fps by frame selection "
                f"({describe_change(source_fps, recipe, frame_step(source_fps, recipe))})",
            )
        return source_fps, 1.0
    if fps > source_fps + FPS_TOLERANCE:
        raise InvalidSampleError(
            name,
            path,
            f"{what} runs at {source_fps:g} fps, below --fps {fps:g}: frames are selected, never made up "
            f"(upsampling is refused)",
            f"pass --fps {source_fps:g} or lower, or convert this clip without --fps",
        )
    step = frame_step(source_fps, fps)
    return (source_fps if step == 1.0 else fps), step


def validate_sample(
    files: SampleFiles, layout: str, min_frames: int, resize: bool = False, fps: float | None = None
) -> ValidatedSample:
    """Check one sample completely; raise :class:`InvalidSampleError` on the first problem found.

    Checks: every video and control file exists; all have one resolution (read from the headers,
    before any decoding; with ``resize`` the others are listed in ``to_resize`` instead); each
    decodes to the end; control fps equals video fps; all views share one fps; that fps can be served
    at ``fps`` (``--fps``: no upsampling) or, without ``fps``, is the layout's ``RECIPE_FPS``; each file
    gives at least ``min_frames`` frames at the served rate; the caption is a JSON object with a
    ``"caption"`` string.
    """
    name = files.name
    caption = _read_caption(name, files.caption, layout, files.cameras)
    checks: list[tuple[str | None, str, Path]] = []  # (camera, "video" | "control video", path) of every mp4
    for camera in files.cameras:
        checks.append((camera, "video", files.videos[camera]))
        if files.controls:
            checks.append((camera, "control video", files.controls[camera]))
    sizes: dict[Path, tuple[str, tuple[int, int]]] = {}
    for camera, what, path in checks:
        described = what + (f" of camera {camera}" if camera else "")
        _require_file(name, path, described, layout, files.cameras)
        try:
            sizes[path] = described, read_video_size(path)
        except VideoError as error:
            raise _unreadable(name, path, what, error) from error
    resolution, to_resize = _check_resolutions(name, sizes, list(files.videos.values()), resize)
    source_fps: float | None = None
    fps_source: Path | None = None
    fps_of: dict[Path, float] = {}
    counts: dict[Path, int] = {}
    for camera, what, path in checks:
        try:
            info = probe_video(path)
        except VideoError as error:
            raise _unreadable(name, path, what, error) from error
        counts[path], fps_of[path] = info.num_frames, info.fps
        video = files.videos[camera]  # probed before its control
        if abs(info.fps - fps_of[video]) > FPS_TOLERANCE:
            raise InvalidSampleError(
                name,
                path,
                f"fps mismatch: the control video runs at {info.fps:g} fps but its video "
                f"{video} at {fps_of[video]:g} fps",
                "render the control video at the video's frame rate (frames must correspond one to one)",
            )
        if source_fps is None:
            source_fps, fps_source = info.fps, path
        elif abs(info.fps - source_fps) > FPS_TOLERANCE:
            raise InvalidSampleError(
                name,
                path,
                f"fps mismatch between views: {info.fps:g} fps here, {source_fps:g} fps in {fps_source}",
                "all views of a sample must be recorded (or resampled) at one frame rate",
            )
        served_fps, step = _served_rate(name, path, what, info.fps, fps, layout)
        served = served_frame_count(info.num_frames, step)
        if served < min_frames:
            given = f"{info.num_frames} frames"
            if step != 1.0:
                given += f" at {info.fps:g} fps, {served} at {served_fps:g} fps (--fps)"
            raise InvalidSampleError(
                name,
                path,
                f"{what} is too short: {given}, at least {min_frames} needed (--min-frames)",
                "use a longer clip, or set --min-frames (with --window-stride: --num-frames) to the number of "
                "frames per view you train on",
            )
    source_frames = min(counts.values())
    notes = []
    if len(set(counts.values())) > 1:
        longer = ", ".join(f"{path} ({count})" for path, count in counts.items() if count > source_frames)
        notes.append(
            f"sample '{name}': files have different frame counts; only the first {source_frames} frames "
            f"(the shortest file) are used from: {longer}"
        )
    assert source_fps is not None
    served_fps, step = _served_rate(name, checks[0][2], checks[0][1], source_fps, fps, layout)
    return ValidatedSample(
        files=files,
        caption=caption,
        source_fps=source_fps,
        fps=served_fps,
        frame_step=step,
        num_frames=served_frame_count(source_frames, step),
        resolution=resolution,
        to_resize=to_resize,
        notes=notes,
    )
