"""The videos an evaluation compares: generated mp4s matched with their reference clips by file name.

Single view: ``prediction`` and ``reference`` are two mp4 files, or two folders whose mp4 files are paired by
file name. Multiview (``cameras`` given): two folders in the official layout, ``ftheta_<camera>/<name>.mp4``
for every camera (the ``videos/`` folder of a dataset), paired by name across all cameras. Every file must
have its counterpart; frames are read with :func:`cosmos_composer.data.video.decode_frames`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cosmos_composer.data.cameras import camera_folder
from cosmos_composer.data.video import VideoError, decode_frames, read_video_size

VIDEO_SUFFIX = ".mp4"


class EvaluationInputError(ValueError):
    """The videos to compare cannot be paired or read, or a pair differs in frame count or size."""


@dataclass(frozen=True)
class VideoPair:
    """One generated video and its reference clip: one file per camera on each side (one for single view)."""

    name: str  # the file name, e.g. "clip_0001.mp4"
    prediction: tuple[Path, ...]
    reference: tuple[Path, ...]


def _mp4_names(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir() if path.is_file() and path.suffix.lower() == VIDEO_SUFFIX}


def _missing(names: set[str], folder: Path, other: Path) -> list[str]:
    return [f"{folder / name} (no {other / name})" for name in sorted(names)]


def _match_folders(prediction: Path, reference: Path) -> list[str]:
    """The mp4 names of two folders, which must be the same."""
    predicted, actual = _mp4_names(prediction), _mp4_names(reference)
    if not predicted and not actual:
        raise EvaluationInputError(f"no {VIDEO_SUFFIX} files in {prediction} or {reference}")
    missing = _missing(predicted - actual, prediction, reference) + _missing(actual - predicted, reference, prediction)
    if missing:
        raise EvaluationInputError(
            f"{len(missing)} video(s) have no counterpart: {'; '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}. Every generated video needs its reference clip of the same name"
        )
    return sorted(predicted)


def match_videos(
    prediction: str | Path, reference: str | Path, cameras: Sequence[str] | None = None
) -> list[VideoPair]:
    """The pairs to compare (see the module docstring); raises :class:`EvaluationInputError` naming what is missing."""
    prediction, reference = Path(prediction), Path(reference)
    for what, path in (("prediction", prediction), ("reference", reference)):
        if not path.exists():
            raise EvaluationInputError(f"the {what} {path} does not exist")
    if cameras:
        for what, path in (("prediction", prediction), ("reference", reference)):
            if not path.is_dir():
                raise EvaluationInputError(
                    f"with cameras the {what} must be a folder of ftheta_<camera>/ folders: {path}"
                )
            absent = [
                str(path / camera_folder(camera)) for camera in cameras if not (path / camera_folder(camera)).is_dir()
            ]
            if absent:
                raise EvaluationInputError(f"the {what} has no camera folder {', '.join(absent)}")
        names_per_camera = [
            _match_folders(prediction / camera_folder(camera), reference / camera_folder(camera)) for camera in cameras
        ]
        names = sorted(set().union(*names_per_camera))
        for camera, camera_names in zip(cameras, names_per_camera):
            absent = sorted(set(names) - set(camera_names))
            if absent:
                raise EvaluationInputError(
                    f"camera {camera} has no video {', '.join(absent[:5])} in {prediction / camera_folder(camera)} or "
                    f"{reference / camera_folder(camera)}; every clip needs all {len(cameras)} cameras"
                )
        return [
            VideoPair(
                name,
                tuple(prediction / camera_folder(camera) / name for camera in cameras),
                tuple(reference / camera_folder(camera) / name for camera in cameras),
            )
            for name in names
        ]
    if prediction.is_file() and reference.is_file():
        return [VideoPair(prediction.name, (prediction,), (reference,))]
    if prediction.is_dir() and reference.is_dir():
        return [
            VideoPair(name, (prediction / name,), (reference / name,)) for name in _match_folders(prediction, reference)
        ]
    kinds = {path: "a folder" if path.is_dir() else "a file" for path in (prediction, reference)}
    raise EvaluationInputError(
        f"the prediction {prediction} is {kinds[prediction]} and the reference {reference} is {kinds[reference]}; "
        "give two mp4 files or two folders"
    )


def check_sizes(pair: VideoPair) -> None:
    """Compare the frame sizes of a pair from the file headers (cheap, before any decoding)."""
    for predicted, actual in zip(pair.prediction, pair.reference):
        try:
            predicted_size, actual_size = read_video_size(predicted), read_video_size(actual)
        except VideoError as error:
            raise EvaluationInputError(f"{predicted} or {actual}: {error}") from None
        if predicted_size != actual_size:
            raise EvaluationInputError(
                f"{predicted} is {predicted_size[0]}x{predicted_size[1]} but {actual} is {actual_size[0]}x{actual_size[1]}; "
                "a generated video must have the size of its reference clip"
            )


def read_video(path: Path) -> np.ndarray:
    """All frames of an mp4, RGB uint8 ``[T, H, W, 3]``."""
    try:
        frames_T_H_W_3, _ = decode_frames(path, 0, None)
    except VideoError as error:
        raise EvaluationInputError(str(error)) from None
    return frames_T_H_W_3


def read_pair(pair: VideoPair) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The frames of every camera of a pair: ``(predictions, references)``, lists of ``[T, H, W, 3]``; a frame count
    or size that differs between the two files is an :class:`EvaluationInputError` naming both and their shapes."""
    predictions, references = [], []
    for predicted_path, actual_path in zip(pair.prediction, pair.reference):
        predicted, actual = read_video(predicted_path), read_video(actual_path)
        if predicted.shape != actual.shape:
            raise EvaluationInputError(
                f"{predicted_path} has {predicted.shape[0]} frames of {predicted.shape[1]}x{predicted.shape[2]} but "
                f"{actual_path} has {actual.shape[0]} frames of {actual.shape[1]}x{actual.shape[2]} (shapes "
                f"{predicted.shape} and {actual.shape}); compare a generated video with the clip it was generated for"
            )
        predictions.append(predicted)
        references.append(actual)
    return predictions, references
