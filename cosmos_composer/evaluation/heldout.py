"""The held-out clips of ``scripts/evaluate.py run``: ground-truth video, control video and caption of each.

``--data`` is one of:

* an MDS folder written by ``scripts/convert_to_mds.py`` (it holds ``index.json``): its rows are read with
  Streaming's shard readers and decoded by the training loader's :func:`~cosmos_composer.data.clip.load_clip`,
  from frame 0, with the edge / blur controls at upstream's fixed "medium" preset (no random parameters); cached
  latents and text embeddings are left aside (the prompt is the stored caption, embedded as generation embeds
  it). Not through ``TransferStreamingDataset``: building one is a collective under a launcher, and the ranks of
  an evaluation read their clips at different times;
* a folder in an official layout (``cosmos_composer/data/layouts.py``, the layouts ``convert_to_mds.py`` reads):
  multiview ``videos/ftheta_<camera>/<name>.mp4`` + ``control_input_hdmap_bbox/ftheta_<camera>/<name>.mp4`` +
  ``captions/ftheta_camera_front_wide_120fov/<name>.json``; single view ``videos/<name>.mp4`` +
  ``captions/<name>.json`` and ``depth/<name>.mp4`` or ``seg/<name>.mp4`` for those controls (edge and blur are
  computed from the video). The layout is told by ``videos/``: camera folders ``ftheta_*`` mean multiview.

Every clip is read at the evaluation's frame count and size, as the network consumes it; the ground truth is
resized the same way, so a generated video and its reference have equal shapes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from streaming.base.format import reader_from_json

from cosmos_composer.data import mds
from cosmos_composer.data.cameras import FOLDER_PREFIX
from cosmos_composer.data.clip import load_clip, row_cameras, source_frame_indices
from cosmos_composer.data.controls import compute_control
from cosmos_composer.data.layouts import (
    CONTROL_FOLDERS,
    DEFAULT_CONTROL_KEY,
    MULTIVIEW_HDMAP,
    ON_THE_FLY_CONTROLS,
    SINGLEVIEW,
    SampleFiles,
    find_samples,
    normalize_control_key,
)
from cosmos_composer.data.video import VideoError, probe_video, read_video_size
from cosmos_composer.evaluation.videos import EvaluationInputError
from cosmos_composer.generation.inputs import read_clip

MDS_INDEX = "index.json"


@dataclass(frozen=True)
class HeldOutClip:
    """One clip as the evaluation uses it, at the evaluation's frames and size (V views, F frames each)."""

    name: str
    caption: str  # the clip's caption: the prompt of every checkpoint
    fps: float
    video_3_VF_H_W: torch.Tensor  # uint8 ground truth, views one after another along time
    control_3_VF_H_W: torch.Tensor  # uint8 control, same layout: what the network is conditioned on

    def views(self, video_3_VF_H_W: torch.Tensor, num_views: int) -> list[np.ndarray]:
        """``video_3_VF_H_W`` split into its views: a list of uint8 ``[F, H, W, 3]`` (the layout metrics take)."""
        return [view.permute(1, 2, 3, 0).numpy() for view in video_3_VF_H_W.chunk(num_views, dim=1)]


@dataclass(frozen=True)
class NativeGeometry:
    """What the first clip is stored at: the default size and frame count of the evaluation."""

    height: int
    width: int
    fps: float
    num_frames: int  # frames per view the clip has


class HeldOutSet:
    """The clips of ``--data`` (see the module docstring): their names at once (cheap), each clip on demand."""

    def __init__(self, root: str | Path, control_key: str | None = None, max_clips: int | None = None) -> None:
        """``max_clips``: only the first that many clips (in the folder's order; None: all)."""
        if max_clips is not None and max_clips < 1:
            raise EvaluationInputError(f"--max-clips {max_clips}: give at least 1, or leave it out for every clip")
        self.root = Path(root)
        if not self.root.exists():
            raise EvaluationInputError(f"--data {self.root} does not exist; give an MDS folder or a dataset folder")
        self.is_mds = (self.root / MDS_INDEX).is_file()
        if self.is_mds:
            self._rows = _MdsRows(self.root)
            self.layout, self.stored_cameras = self._rows.layout, self._rows.cameras
            stored_key = self._rows.stored_control_key
        else:
            if not (self.root / "videos").is_dir():
                raise EvaluationInputError(
                    f"--data {self.root} has neither {MDS_INDEX} (an MDS folder from scripts/convert_to_mds.py) nor "
                    "videos/ (a dataset in the official layout); point --data at one of them"
                )
            camera_folders = sorted(p.name for p in (self.root / "videos").iterdir() if p.is_dir())
            self.layout = MULTIVIEW_HDMAP if camera_folders else SINGLEVIEW
            self.stored_cameras = tuple(name.removeprefix(FOLDER_PREFIX) for name in camera_folders) or None
            stored_key = next(
                (key for key, folder in CONTROL_FOLDERS.items() if (self.root / folder).is_dir()),
                DEFAULT_CONTROL_KEY[self.layout],
            )
        try:
            self.control_key = normalize_control_key(control_key or stored_key, self.layout)
        except ValueError as error:
            raise EvaluationInputError(f"--control-key: {error}") from None
        self._folder_samples: dict[tuple, dict[str, SampleFiles]] = {}
        names = self._rows.names if self.is_mds else list(self._samples(self.stored_cameras))
        self.names: list[str] = names[:max_clips]
        if not self.names:
            raise EvaluationInputError(
                f"--data {self.root} holds no clip"
                + ("" if self.is_mds else f" (no {self.layout} sample under {self.root / 'videos'})")
            )

    @property
    def multiview(self) -> bool:
        return self.layout == MULTIVIEW_HDMAP

    def __len__(self) -> int:
        return len(self.names)

    def _samples(self, cameras: Sequence[str] | None) -> dict[str, SampleFiles]:
        """The folder's samples with the files of ``cameras``, by name (listed once per camera list)."""
        key = tuple(cameras or ())
        if key not in self._folder_samples:
            try:
                found = find_samples(self.root, self.layout, self.control_key, cameras)
            except ValueError as error:  # LayoutError, or a camera list the layout refuses
                raise EvaluationInputError(f"--data: {error}") from None
            self._folder_samples[key] = {sample.name: sample for sample in found}
        return self._folder_samples[key]

    def native(self) -> NativeGeometry:
        """The first clip's size, fps and frame count (the defaults of ``--height``, ``--width``, ``--num-frames``)."""
        if self.is_mds:
            return self._rows.native()
        path = next(iter(self._samples(self.stored_cameras)[self.names[0]].videos.values()))
        try:
            info = probe_video(path)
        except VideoError as error:
            raise EvaluationInputError(f"{path}: {error}") from None
        return NativeGeometry(info.height, info.width, info.fps, info.num_frames)

    def read(self, index: int, cameras: Sequence[str] | None, num_frames: int, height: int, width: int) -> HeldOutClip:
        """Clip ``index`` with the views ``cameras`` (None: single view) at ``num_frames`` x ``height`` x ``width``."""
        if self.is_mds:
            return self._read_mds(index, cameras, num_frames, height, width)
        return self._read_folder(index, cameras, num_frames, height, width)

    def _read_mds(self, index: int, cameras, num_frames: int, height: int, width: int) -> HeldOutClip:
        row = self._rows.row(index)
        name, stored = row[mds.SAMPLE_NAME], row_cameras(row)
        if cameras:
            absent = [camera for camera in cameras if camera not in stored]
            if absent:
                raise EvaluationInputError(
                    f"clip {name!r} of --data {self.root} has no camera {', '.join(absent)} (it holds {list(stored)}); "
                    "choose the cameras with --cameras"
                )
            row = {**row, mds.CAMERA_NAMES: list(cameras)}  # the views to decode, in this order (as the dataset)
        if row[mds.NUM_FRAMES] < num_frames:
            raise EvaluationInputError(
                f"clip {name!r} of --data {self.root} has {row[mds.NUM_FRAMES]} frames per view, fewer than the "
                f"{num_frames} to generate; pass --num-frames (1 + 4k) or leave the clip out"
            )
        try:  # the training loader's decoding: served frames from 0, resized, the control decoded or computed alike
            clip = load_clip(
                row,
                control_key=self.control_key,
                frame_indices=source_frame_indices(row, 0, num_frames),  # at the row's frame rate (--fps)
                height=height,
                width=width,
                rng=None,
            )
        except (KeyError, VideoError) as error:
            raise EvaluationInputError(f"clip {name!r} of --data {self.root}: {error}") from None
        return HeldOutClip(name, row[mds.CAPTION], float(row[mds.FPS]), clip.video_3_VF_H_W, clip.control_3_VF_H_W)

    def _read_folder(self, index: int, cameras, num_frames: int, height: int, width: int) -> HeldOutClip:
        name = self.names[index]
        sample = self._samples(cameras).get(name)
        if sample is None:
            raise EvaluationInputError(f"--data {self.root}: sample {name!r} has no files for the cameras {cameras}")
        views, controls, rates = [], [], []
        for camera in sample.cameras:
            for what, files in (("video", sample.videos), ("control video", sample.controls)):
                if files and not files[camera].is_file():
                    raise EvaluationInputError(f"sample {name!r}: the {what} {files[camera]} does not exist")
            video_3_F_H_W, fps = _read(sample.videos[camera], num_frames, height, width)
            views.append(video_3_F_H_W)
            rates.append(fps)
            if sample.controls:
                controls.append(_read(sample.controls[camera], num_frames, height, width)[0])
        video_3_VF_H_W = torch.cat(views, dim=1)
        if self.control_key in ON_THE_FLY_CONTROLS:  # computed from the resized video, as the training loader does
            control_3_VF_H_W = compute_control(self.control_key, video_3_VF_H_W, None)
        else:
            control_3_VF_H_W = torch.cat(controls, dim=1)
        return HeldOutClip(name, _read_caption(sample), rates[0], video_3_VF_H_W, control_3_VF_H_W)


def _read(path: Path, num_frames: int, height: int, width: int) -> tuple[torch.Tensor, float]:
    try:
        return read_clip(path, num_frames, height, width)
    except ValueError as error:  # GenerationError: too short or unreadable, with the fix
        raise EvaluationInputError(str(error)) from None


def _read_caption(sample: SampleFiles) -> str:
    try:
        caption = json.loads(sample.caption.read_text(encoding="utf-8")).get("caption")
    except (OSError, ValueError, AttributeError) as error:
        raise EvaluationInputError(
            f'sample {sample.name!r}: {sample.caption} is not a caption file {{"caption": "<text>"}} ({error})'
        ) from None
    if not isinstance(caption, str):
        raise EvaluationInputError(f'sample {sample.name!r}: {sample.caption} has no "caption" string')
    return caption


class _MdsRows:
    """The rows of an MDS folder, through Streaming's readers of index.json's shards (one plain local read per
    row: no shared memory, no process group), and the first clip's geometry from its video header."""

    def __init__(self, root: Path) -> None:
        try:
            index = json.loads((root / MDS_INDEX).read_text())
            self._shards = [reader_from_json(str(root), None, shard) for shard in index["shards"]]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise EvaluationInputError(f"--data {root / MDS_INDEX} is not an MDS index ({error})") from None
        columns = set(self._shards[0].column_names) if self._shards else set()
        if self._shards and mds.SAMPLE_NAME not in columns:
            raise EvaluationInputError(
                f"--data {root} was not written by scripts/convert_to_mds.py (no {mds.SAMPLE_NAME} column)"
            )
        self.layout = SINGLEVIEW if mds.video_column(None) in columns else MULTIVIEW_HDMAP
        self._location = [(shard, row) for shard in self._shards for row in range(shard.samples)]
        self.names = [self.row(index)[mds.SAMPLE_NAME] for index in range(len(self._location))]
        first = self._shards[0].get_item(0) if self._location else {}
        self._first = first
        self.cameras = tuple(first.get(mds.CAMERA_NAMES) or ()) or None
        self.stored_control_key = first.get(mds.CONTROL_KEY) or DEFAULT_CONTROL_KEY[self.layout]

    def row(self, index: int) -> dict:
        shard, row = self._location[index]
        return shard.get_item(row)

    def native(self) -> NativeGeometry:
        camera = self.cameras[0] if self.cameras else None
        try:
            height, width = read_video_size(self._first[mds.video_column(camera)])
        except VideoError as error:
            raise EvaluationInputError(f"the first clip {self.names[0]!r}: {error}") from None
        return NativeGeometry(height, width, float(self._first[mds.FPS]), int(self._first[mds.NUM_FRAMES]))
