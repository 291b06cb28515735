"""Official folder layout -> MDS shards (the work behind ``scripts/convert_to_mds.py``)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from streaming import MDSWriter
from torchvision.transforms.v2 import InterpolationMode
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from cosmos_composer.data import mds
from cosmos_composer.data.clip import CONTROL_INTERPOLATION, source_frame_indices
from cosmos_composer.data.framerate import FPS_TOLERANCE, describe_change
from cosmos_composer.data.layouts import (
    DEFAULT_CONTROL_KEY,
    DEFAULT_MIN_FRAMES,
    MULTIVIEW_HDMAP,
    RECIPE_FPS,
    InvalidSampleError,
    LayoutError,
    SampleFiles,
    ValidatedSample,
    find_samples,
    ignored_files,
    normalize_control_key,
    validate_sample,
)
from cosmos_composer.data.output import (
    atomic_output_dir,
    check_output_apart_from_input,
    check_output_dir,
    human_size,
    reporting_full_disk,
)
from cosmos_composer.data.precompute import CachedBytes, Precomputer
from cosmos_composer.data.video import resize_mp4

log = logging.getLogger(__name__)

DEFAULT_SIZE_LIMIT = "256mb"


class ConversionError(RuntimeError):
    """The conversion stopped; nothing was written to the output folder."""


@dataclass
class ConversionReport:
    output: Path
    written: list[str] = field(default_factory=list)  # sample names of the rows written (windows: <clip>@<start>)
    skipped: dict[str, str] = field(default_factory=dict)  # sample name -> why
    resized: list[str] = field(default_factory=list)  # "<file>: HxW -> HxW" (--resize)
    empty_captions: list[str] = field(default_factory=list)  # "sample '<name>': <caption file>"
    notes: list[str] = field(default_factory=list)
    frame_rates: Counter[str] = field(default_factory=Counter)  # "30 fps -> 10 fps (every 3rd frame)" -> clips
    windows: dict[str, int] = field(default_factory=dict)  # clip -> windows it gave (--window-stride)
    window_frames: int | None = None  # served frames per window (--window-stride)
    window_stride: int | None = None

    def summary(self) -> str:
        if self.window_stride is None:
            total = len(self.written) + len(self.skipped)
            lines = [f"Wrote {len(self.written)} of {total} samples to {self.output}."]
        else:
            total = len(self.windows) + len(self.skipped)
            lines = [f"Wrote {len(self.written)} windows from {len(self.windows)} of {total} samples to {self.output}."]
        if self.frame_rates:
            rates = "; ".join(f"{change} ({clips} samples)" for change, clips in self.frame_rates.items())
            lines.append(f"Frame rate: {rates}.")
        if self.windows:
            per_clip = ", ".join(f"{clip} {count}" for clip, count in list(self.windows.items())[:10])
            more = f", ... ({len(self.windows) - 10} more)" if len(self.windows) > 10 else ""
            lines.append(
                f"Windows of {self.window_frames} frames every {self.window_stride} frames (--window-stride): "
                f"{len(self.written)} from {len(self.windows)} samples: {per_clip}{more}."
            )
        if self.skipped:
            lines.append(f"Skipped {len(self.skipped)} of {total} samples (--skip-invalid):")
            lines += [f"  - {reason}" for reason in self.skipped.values()]
        if self.resized:
            lines.append(f"Resized {len(self.resized)} files to their sample's video resolution (--resize):")
            lines += _first_ten(self.resized)
        if self.empty_captions:
            lines.append(
                f"{len(self.empty_captions)} samples have an empty caption (they train on empty text, as text "
                f"dropout does):"
            )
            lines += _first_ten(self.empty_captions)
        if self.notes:
            lines.append("Notes:")
            lines += [f"  - {note}" for note in self.notes]
        return "\n".join(lines)


def _first_ten(items: list[str]) -> list[str]:
    return [f"  - {item}" for item in items[:10]] + ([f"  ... and {len(items) - 10} more"] if len(items) > 10 else [])


def source_mp4_bytes(files: SampleFiles) -> int:
    """Bytes of a sample's mp4 files (videos and controls), which the shards store unchanged."""
    paths = [*files.videos.values(), *files.controls.values()]
    return sum(path.stat().st_size for path in paths if path.is_file())


def describe_dataset_size(mp4_bytes_per_sample: float, cached: CachedBytes, num_samples: int) -> str:
    """``dataset size: about 66.2 MiB per sample (mp4 10.0 MiB, latents 49.2 MiB, text 7.0 MiB projected) x 120
    samples = 7.8 GiB``: what the shards will take."""
    parts = [f"mp4 {human_size(mp4_bytes_per_sample)}"]
    if cached.latents:
        parts.append(f"latents {human_size(cached.latents)}")
    if cached.text:
        parts.append(f"text {human_size(cached.text)} {cached.text_kind}")
    per_sample = mp4_bytes_per_sample + cached.total
    return (
        f"dataset size: about {human_size(per_sample)} per sample ({', '.join(parts)}) x {num_samples} samples "
        f"= {human_size(per_sample * num_samples)}"
    )


def sample_row(sample: ValidatedSample, layout: str, control_key: str) -> dict:
    """The MDS row of a validated sample: metadata plus the source mp4 files, byte for byte.

    The row serves the whole clip at the sample's served rate (from source frame 0, every
    ``frame_step``-th). Files in ``sample.to_resize`` (``--resize``) are stored re-encoded at the sample's
    resolution instead.
    """
    files = sample.files

    def mp4(path: Path, interpolation: InterpolationMode = InterpolationMode.BILINEAR) -> bytes:
        if path in sample.to_resize:
            return resize_mp4(path, *sample.resolution, interpolation)
        return path.read_bytes()

    row = {
        mds.SAMPLE_NAME: files.name,
        mds.LAYOUT: layout,
        mds.CAMERA_NAMES: [camera for camera in files.cameras if camera is not None],
        mds.CAPTION: sample.caption,
        mds.FPS: float(sample.fps),
        mds.NUM_FRAMES: int(sample.num_frames),
        mds.CONTROL_KEY: control_key,
        mds.SOURCE_FPS: float(sample.source_fps),
        mds.FRAME_START: 0,
        mds.FRAME_STEP: float(sample.frame_step),
    }
    for camera in files.cameras:
        row[mds.video_column(camera)] = mp4(files.videos[camera])
        if files.controls:
            row[mds.control_column(control_key, camera)] = mp4(
                files.controls[camera], CONTROL_INTERPOLATION.get(control_key, InterpolationMode.BILINEAR)
            )
    return row


def window_rows(row: dict, window_frames: int, window_stride: int) -> list[dict]:
    """``row`` cut into windows of ``window_frames`` served frames, one every ``window_stride`` served frames.

    Window ``<name>@<start>`` starts at the source frame of the clip's served frame ``start`` (its
    ``frame_start``) and selects from there at the clip's ``frame_step``: with an integer step these are
    exactly the clip's served frames ``start .. start+window_frames-1``; with a fractional one the rounding
    restarts at the window's first frame (same rate). The mp4 bytes are shared, not copied.
    """
    return [
        {
            **row,
            mds.SAMPLE_NAME: f"{row[mds.SAMPLE_NAME]}@{start}",
            mds.FRAME_START: source_frame_indices(row, start, 1)[0],
            mds.NUM_FRAMES: window_frames,
        }
        for start in range(0, row[mds.NUM_FRAMES] - window_frames + 1, window_stride)
    ]


def convert_sample(
    files: SampleFiles,
    layout: str,
    control_key: str,
    min_frames: int,
    report: ConversionReport,
    resize: bool = False,
    fps: float | None = None,
    window_frames: int | None = None,
    window_stride: int | None = None,
    precomputer: Precomputer | None = None,
) -> list[dict]:
    """Validate one sample and build the MDS rows it gives: one, or one per window with ``window_stride``.

    Records its empty caption, resized files, frame-rate change, windows and notes in ``report``, and
    adds the ``precomputer``'s cached columns to each row. Raises
    :class:`~cosmos_composer.data.layouts.InvalidSampleError` for an invalid sample (nothing recorded then).
    """
    sample = validate_sample(files, layout, min_frames, resize, fps)
    if not sample.caption.strip():
        # Kept: text dropout trains on empty text anyway, but the user should know.
        report.empty_captions.append(f"sample '{files.name}': {files.caption}")
        log.warning("sample '%s': %s has an empty caption; it trains on empty text", files.name, files.caption)
    for path, (height, width) in sample.to_resize.items():
        report.resized.append(f"{path}: {height}x{width} -> {sample.resolution[0]}x{sample.resolution[1]}")
        log.info("sample '%s': resizing %s (--resize)", files.name, report.resized[-1])
    rows = [sample_row(sample, layout, control_key)]
    if window_stride is not None:
        assert window_frames is not None, "window_stride needs window_frames"
        rows = window_rows(rows[0], window_frames, window_stride)
        report.windows[files.name] = len(rows)
    if precomputer is not None:
        for row in rows:
            row.update(precomputer(row))
    report.frame_rates[describe_change(sample.source_fps, sample.fps, sample.frame_step)] += 1
    report.notes.extend(sample.notes)
    return rows


def convert_to_mds(
    input_dir: str | Path,
    output_dir: str | Path,
    layout: str,
    control_key: str | None = None,
    min_frames: int | None = None,
    skip_invalid: bool = False,
    resize: bool = False,
    overwrite: bool = False,
    size_limit: int | str = DEFAULT_SIZE_LIMIT,
    precomputer: Precomputer | None = None,
    progress: bool = True,
    cameras: Sequence[str] | None = None,
    fps: float | None = None,
    window_stride: int | None = None,
    window_frames: int | None = None,
) -> ConversionReport:
    """Validate every sample of ``input_dir`` and write the valid ones as MDS shards to ``output_dir``.

    The shards are built in a temporary folder beside ``output_dir`` and moved into place only when
    complete. An invalid sample raises :class:`ConversionError` (naming the file, the problem and the
    fix) unless ``skip_invalid``, in which case it is left out and listed in the report. A video or
    control at another resolution than its sample's videos is invalid unless ``resize``, which stores it
    resized. A full disk raises :class:`~cosmos_composer.data.output.DiskFullError`.

    ``cameras`` (multiview): the cameras to convert, in view order (None: the 7 official ones); an entry
    ``name=official`` (``cameras.parse_cameras``) converts camera ``name``. Each row records the names in its
    ``camera_names`` column and has one ``video_<camera>`` column per camera.

    ``fps`` (``--fps``): serve every camera and control at this rate by frame selection
    (:mod:`cosmos_composer.data.framerate`; the mp4 bytes are stored unchanged). Without it a source at
    another rate than the layout's ``RECIPE_FPS`` (multiview: 10) is invalid; a rate above a source's is.
    ``min_frames`` counts served frames.

    ``window_stride`` (``--window-stride``): cut each clip into windows of ``window_frames`` served frames
    (default: the layout's frames per view, 29 multiview, 93 single view), one starting every
    ``window_stride`` served frames; each window is a sample of its own, named ``<clip>@<start>`` with
    ``start`` the window's first served frame. A clip shorter than one window is invalid (too short).
    """
    control_key = normalize_control_key(control_key or DEFAULT_CONTROL_KEY[layout], layout)
    if fps is not None and not fps > 0:
        raise ValueError(f"--fps {fps} must be a positive frame rate, e.g. --fps 10")
    if window_stride is not None:
        window_frames = window_frames or DEFAULT_MIN_FRAMES[layout]
        if window_stride < 1 or window_frames < 1:
            raise ValueError(f"--window-stride {window_stride} and --num-frames {window_frames} must be at least 1")
        if min_frames is not None and min_frames < window_frames:
            raise ValueError(
                f"--min-frames {min_frames} is below the {window_frames} frames of a window (--num-frames); a "
                f"sample needs at least one window. Fix: leave out --min-frames, or pass --num-frames {min_frames}"
            )
        min_frames = min_frames or window_frames
    elif window_frames is not None:
        raise ValueError("window_frames is the window length of window_stride; pass window_stride too")
    min_frames = DEFAULT_MIN_FRAMES[layout] if min_frames is None else min_frames
    check_output_apart_from_input(input_dir, output_dir)
    check_output_dir(output_dir, overwrite)  # fail before the (possibly long) scan
    if precomputer is not None and precomputer.latents:
        if window_stride is not None and window_frames < precomputer.num_frames:
            raise ValueError(
                f"the windows of {window_frames} frames are shorter than the {precomputer.num_frames} frames per "
                f"view to encode. Fix: pass --num-frames once, for both"
            )
        if min_frames < precomputer.num_frames:
            raise ValueError(
                f"--min-frames {min_frames} is below the {precomputer.num_frames} frames per view to encode; "
                f"every sample needs them. Fix: pass --min-frames {precomputer.num_frames} (or lower --num-frames)"
            )
    if cameras and layout != MULTIVIEW_HDMAP:
        raise ValueError(f"--cameras {','.join(cameras)} is for --layout {MULTIVIEW_HDMAP}; single view has one camera")
    samples = find_samples(input_dir, layout, control_key, cameras)
    if not samples:
        raise LayoutError(f"found no samples in {input_dir} for layout {layout}. Fix: check --input and --layout")
    cached = precomputer.cached_bytes_per_sample(len(samples[0].cameras)) if precomputer else CachedBytes()
    log.info(describe_dataset_size(sum(map(source_mp4_bytes, samples)) / len(samples), cached, len(samples)))
    if window_stride:
        log.info("with --window-stride every window is a sample of its own, storing its clip's mp4 files again")
    report = ConversionReport(output=Path(output_dir), window_frames=window_frames, window_stride=window_stride)
    recipe_fps = RECIPE_FPS[layout]
    if fps is not None and recipe_fps is not None and abs(fps - recipe_fps) > FPS_TOLERANCE:
        report.notes.append(f"--fps {fps:g} differs from the {layout} recipe's {recipe_fps:g} fps")
    ignored = ignored_files(input_dir, layout, control_key, cameras)
    if ignored:
        shown = ", ".join(str(path) for path in ignored[:10]) + (" ..." if len(ignored) > 10 else "")
        report.notes.append(
            f"ignored {len(ignored)} files that are not samples of the {layout} layout (only .mp4 videos and .json "
            f"captions count): {shown}"
        )
    columns = mds.dataset_columns(
        layout,
        control_key,
        samples[0].cameras,
        latents=bool(precomputer and precomputer.latents),
        text=bool(precomputer and precomputer.text),
    )
    # The full-disk check runs inside atomic_output_dir, before it deletes the partial shards and so frees space.
    with (
        atomic_output_dir(output_dir, overwrite) as temp,
        reporting_full_disk(output_dir),
        logging_redirect_tqdm(),
    ):
        with MDSWriter(
            out=str(temp),
            columns=columns,
            size_limit=size_limit,
            hashes=sorted(mds.SHARD_HASHES),
            progress_bar=False,
        ) as writer:
            bar = tqdm(samples, desc=f"convert {layout}", unit="sample", disable=not progress)
            for files in bar:
                try:
                    rows = convert_sample(
                        files,
                        layout,
                        control_key,
                        min_frames,
                        report,
                        resize=resize,
                        fps=fps,
                        window_frames=window_frames,
                        window_stride=window_stride,
                        precomputer=precomputer,
                    )
                except InvalidSampleError as error:
                    if not skip_invalid:
                        raise ConversionError(
                            f"{error}\nNothing was written to {output_dir}. To convert the other samples and "
                            f"leave out the invalid ones, pass --skip-invalid."
                        ) from error
                    report.skipped[files.name] = str(error)
                    bar.write(f"skipping invalid sample: {error}")
                    continue
                for row in rows:
                    writer.write(row)
                    report.written.append(row[mds.SAMPLE_NAME])
        if not report.written:
            raise ConversionError(
                f"all {len(samples)} samples of {input_dir} are invalid, so there is nothing to write:\n"
                + "\n".join(f"  - {reason}" for reason in report.skipped.values())
            )
    return report
