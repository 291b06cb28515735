"""Official folder layout -> MDS shards (the work behind ``scripts/convert_to_mds.py``).

The samples are converted in parts of ``part_samples`` (see :mod:`cosmos_composer.data.parts`): each part is
written and finished on its own, so a rerun of a killed conversion keeps the finished parts, and the parts can
be shared out over the processes of a launch (:mod:`cosmos_composer.data.launch`), round robin. Rank 0 merges
the parts' indexes into one dataset when all are done.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from streaming import MDSWriter
from torchvision.transforms.v2 import InterpolationMode
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from cosmos_composer.data import mds
from cosmos_composer.data.clip import CONTROL_INTERPOLATION, source_frame_indices
from cosmos_composer.data.framerate import FPS_TOLERANCE, describe_change
from cosmos_composer.data.launch import Launch, StoppedByAnotherRank
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
    check_output_apart_from_input,
    check_output_dir,
    human_size,
    remove_stale_partial_dirs,
    reporting_full_disk,
)
from cosmos_composer.data.parts import (
    fingerprint,
    finish_part,
    finished_part_count,
    keep_finished_parts,
    open_staging,
    part_records,
    publish,
    split_into_parts,
    staging_dir,
    writing_part,
)
from cosmos_composer.data.precompute import CachedBytes, Precomputer
from cosmos_composer.data.video import resize_mp4

log = logging.getLogger(__name__)

DEFAULT_SIZE_LIMIT = "256mb"
# Samples per part: the unit of work of a process and of a resume (64 clips at 720p are about 1 GB of mp4s).
DEFAULT_PART_SAMPLES = 64
# Tests kill the converter with SIGKILL after it finished this many parts, as a crash would
# (tests/test_convert_parallel.py); unset in real use.
KILL_AFTER_PARTS_ENV = "COSMOS_COMPOSER_TEST_KILL_AFTER_PARTS"


class ConversionError(RuntimeError):
    """The conversion stopped; nothing was written to the output folder."""


# Errors whose message says all (file, problem, fix); another rank's other errors reach rank 0 with their traceback.
EXPECTED_ERRORS = (ConversionError, LayoutError, ValueError, KeyError, OSError)


@dataclass
class ConversionReport:
    output: Path
    written: list[str] = field(default_factory=list)  # sample names of the rows written (windows: <clip>@<start>)
    skipped: dict[str, str] = field(default_factory=dict)  # sample name -> why
    resized: list[str] = field(default_factory=list)  # "<file>: HxW -> HxW" (--resize)
    empty_captions: list[str] = field(default_factory=list)  # "sample '<name>': <caption file>"
    notes: list[str] = field(default_factory=list)
    frame_rates: dict[str, int] = field(default_factory=Counter)  # "30 fps -> 10 fps (every 3rd frame)" -> clips
    windows: dict[str, int] = field(default_factory=dict)  # clip -> windows it gave (--window-stride)
    window_frames: int | None = None  # served frames per window (--window-stride)
    window_stride: int | None = None
    resumed_samples: int = 0  # samples of the parts an earlier, interrupted run had finished
    seconds: float = 0.0  # time this run spent converting its parts (all processes together)
    processes: int = 1

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
        converted = total - self.resumed_samples
        if converted and self.seconds:
            lines.append(
                f"Converted {converted} samples in {self.seconds:.1f} s ({converted / self.seconds:.3g} samples/s) "
                f"with {self.processes} process{'es' if self.processes > 1 else ''}"
                + (f"; {self.resumed_samples} were converted by an earlier run." if self.resumed_samples else ".")
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

    def to_record(self) -> dict:
        """Everything but ``output``, as JSON data (a part's record, or rank 0's answer to the other ranks)."""
        return {name: getattr(self, name) for name in REPORT_FIELDS}

    @classmethod
    def from_record(cls, output: Path, record: dict) -> ConversionReport:
        return cls(output=output, **record)

    def extend(self, part: dict) -> None:
        """Add the samples, files and notes of a part's report record (in part order)."""
        self.written += part["written"]
        self.skipped.update(part["skipped"])
        self.resized += part["resized"]
        self.empty_captions += part["empty_captions"]
        self.notes += part["notes"]
        self.frame_rates = Counter(self.frame_rates) + Counter(part["frame_rates"])
        self.windows.update(part["windows"])


REPORT_FIELDS = [name for name in ConversionReport.__dataclass_fields__ if name != "output"]


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


def check_frames_to_encode(min_frames: int, num_frames: int, window_frames: int | None = None) -> None:
    """Refuse caching latents of more frames per view than every sample (or window) is required to have."""
    if window_frames is not None and window_frames < num_frames:
        raise ValueError(
            f"the windows of {window_frames} frames are shorter than the {num_frames} frames per view to encode. "
            f"Fix: pass --num-frames once, for both"
        )
    if min_frames < num_frames:
        raise ValueError(
            f"--min-frames {min_frames} is below the {num_frames} frames per view to encode; every "
            f"sample needs them. Fix: pass --min-frames {num_frames} (or lower --num-frames)"
        )


def precomputer_settings(precomputer: Precomputer) -> dict:
    """What a built :class:`Precomputer` tells about the columns it adds, for a conversion's fingerprint.

    It cannot tell which weights its encoders hold; ``convert_to_mds.py`` records its --vae / --text-encoder
    options instead (``precompute_settings``).
    """
    return {
        "vae": type(precomputer.vae).__name__ if precomputer.latents else None,
        "text_embedder": type(precomputer.text_embedder).__name__ if precomputer.text else None,
        "crossattn_proj_fingerprint": precomputer.fingerprint,
        "height": precomputer.height,
        "width": precomputer.width,
        "num_frames": precomputer.num_frames,
        "seed": precomputer.seed,
    }


@dataclass
class _Job:
    """The resolved arguments of one :func:`convert_to_mds` call."""

    input_dir: Path
    output: Path
    layout: str
    control_key: str
    min_frames: int
    skip_invalid: bool
    resize: bool
    overwrite: bool
    size_limit: int | str
    cameras: list[str] | None
    part_samples: int
    fps: float | None  # --fps: the served frame rate (None: the source's)
    window_frames: int | None  # --window-stride: frames per window
    window_stride: int | None

    def find_samples(self) -> list[SampleFiles]:
        return find_samples(self.input_dir, self.layout, self.control_key, self.cameras)

    def row_options(self, precompute: dict | None) -> dict:
        """The options that decide the rows: a finished part is kept only by a conversion with the same ones.

        (--skip-invalid is checked per part, --size-limit only changes how rows are cut into shards.)
        """
        return {
            "input": str(self.input_dir.resolve()),
            "layout": self.layout,
            "control_key": self.control_key,
            "min_frames": self.min_frames,
            "resize": self.resize,
            "cameras": self.cameras,
            "part_samples": self.part_samples,
            "fps": self.fps,
            "window_frames": self.window_frames,
            "window_stride": self.window_stride,
            "precompute": precompute,
        }


class _StopRequested(Exception):
    """Another rank failed: this one stops at its next sample."""


def convert_part(
    job: _Job,
    samples: Sequence[SampleFiles],
    folder: Path,
    columns: dict[str, str],
    precomputer: Precomputer | None,
    after_sample: Callable[[], None] = lambda: None,
) -> ConversionReport:
    """Write the valid ``samples`` as one MDS folder ``folder``; the part's report lists what happened to each."""
    report = ConversionReport(output=job.output, window_frames=job.window_frames, window_stride=job.window_stride)
    with MDSWriter(
        out=str(folder),
        columns=columns,
        size_limit=job.size_limit,
        hashes=sorted(mds.SHARD_HASHES),
        progress_bar=False,
    ) as writer:
        for files in samples:
            try:
                rows = convert_sample(
                    files,
                    job.layout,
                    job.control_key,
                    job.min_frames,
                    report,
                    resize=job.resize,
                    fps=job.fps,
                    window_frames=job.window_frames,
                    window_stride=job.window_stride,
                    precomputer=precomputer,
                )
            except InvalidSampleError as error:
                if not job.skip_invalid:
                    raise ConversionError(
                        f"{error}\nNothing was written to {job.output}. To convert the other samples and "
                        f"leave out the invalid ones, pass --skip-invalid."
                    ) from error
                report.skipped[files.name] = str(error)
                tqdm.write(f"skipping invalid sample: {error}")
            else:
                for row in rows:
                    writer.write(row)
                    report.written.append(row[mds.SAMPLE_NAME])
            after_sample()
    return report


def _plan(
    job: _Job,
    precomputer: Precomputer | None,
    precompute_settings: dict | None,
    world_size: int,
    found: list[SampleFiles],
) -> dict:
    """Rank 0: check the options, scan the input, open the staging folder and pick the parts to keep.

    Returns the plan every rank follows (JSON data); ``found`` receives the samples for rank 0's own parts.
    """
    check_output_apart_from_input(job.input_dir, job.output)
    check_output_dir(job.output, job.overwrite)  # fail before the (possibly long) scan
    check_output_apart_from_input(job.input_dir, staging_dir(job.output))  # --overwrite may delete it too
    if precomputer is not None and precomputer.latents:
        check_frames_to_encode(job.min_frames, precomputer.num_frames, job.window_frames)
    if job.cameras and job.layout != MULTIVIEW_HDMAP:
        raise ValueError(
            f"--cameras {','.join(job.cameras)} is for --layout {MULTIVIEW_HDMAP}; single view has one camera"
        )
    samples = job.find_samples()
    if not samples:
        raise LayoutError(
            f"found no samples in {job.input_dir} for layout {job.layout}. Fix: check --input and --layout"
        )
    found.extend(samples)
    notes = []
    recipe_fps = RECIPE_FPS[job.layout]
    if job.fps is not None and recipe_fps is not None and abs(job.fps - recipe_fps) > FPS_TOLERANCE:
        notes.append(f"--fps {job.fps:g} differs from the {job.layout} recipe's {recipe_fps:g} fps")
    ignored = ignored_files(job.input_dir, job.layout, job.control_key, job.cameras)
    if ignored:
        shown = ", ".join(str(path) for path in ignored[:10]) + (" ..." if len(ignored) > 10 else "")
        notes.append(
            f"ignored {len(ignored)} files that are not samples of the {job.layout} layout (only .mp4 videos and "
            f".json captions count): {shown}"
        )
    parts = split_into_parts([files.name for files in samples], job.part_samples)
    remove_stale_partial_dirs(job.output)  # of conversions before parts existed
    options = job.row_options(precompute_settings or (precomputer_settings(precomputer) if precomputer else None))
    with reporting_full_disk(job.output):
        staging = open_staging(job.output, options, job.overwrite)
    kept = keep_finished_parts(staging, parts, fingerprint(options), job.skip_invalid)
    if kept:
        log.info(
            "resuming: %d of %d parts already converted (in %s); converting the other %d",
            len(kept),
            len(parts),
            staging,
            len(parts) - len(kept),
        )
    log.info(
        "converting %d samples in %d parts of up to %d with %d process%s; finished parts are kept in %s, so the "
        "same command resumes after a crash",
        sum(len(parts[index]) for index in range(len(parts)) if index not in kept),
        len(parts) - len(kept),
        job.part_samples,
        world_size,
        "es" if world_size > 1 else "",
        staging,
    )
    return {
        "staging": str(staging),
        "fingerprint": fingerprint(options),  # each finished part records it
        "parts": parts,
        "kept": sorted(kept),
        "resumed_samples": sum(len(parts[index]) for index in kept),
        "notes": notes,
    }


def _convert_parts(
    job: _Job,
    plan: dict,
    indices: list[int],
    precomputer: Precomputer | None,
    build_precomputer: Callable[[], Precomputer | None] | None,
    found: list[SampleFiles],
    after_sample: Callable[[], None],
    should_stop: Callable[[], bool],
    describe_size: bool = False,
) -> None:
    """Convert and finish the parts ``indices`` of ``plan`` (this rank's share); ``describe_size``: log what the
    dataset will take first."""
    if not indices:
        return
    by_name = {files.name: files for files in (found or job.find_samples())}
    if build_precomputer is not None:
        precomputer = build_precomputer()
        if precomputer is not None and precomputer.latents:
            check_frames_to_encode(job.min_frames, precomputer.num_frames, job.window_frames)
    if describe_size:  # rank 0, once its encoders are built and before the first part is written
        samples = list(by_name.values())
        cached = precomputer.cached_bytes_per_sample(len(samples[0].cameras)) if precomputer else CachedBytes()
        log.info(describe_dataset_size(sum(map(source_mp4_bytes, samples)) / len(samples), cached, len(samples)))
        if job.window_stride:
            log.info("with --window-stride every window is a sample of its own, storing its clip's mp4 files again")
    cameras = next(iter(by_name.values())).cameras
    columns = mds.dataset_columns(
        job.layout,
        job.control_key,
        cameras,
        latents=bool(precomputer and precomputer.latents),
        text=bool(precomputer and precomputer.text),
    )
    staging = Path(plan["staging"])
    for finished, index in enumerate(indices, start=1):
        if should_stop():
            return
        names = plan["parts"][index]
        missing = [name for name in names if name not in by_name]
        if missing:
            raise ConversionError(
                f"samples {', '.join(missing)} are gone from {job.input_dir} since the conversion started. Fix: "
                "leave the input alone while it is converted, and run the same command again"
            )
        with writing_part(staging, index) as temp:
            report = convert_part(job, [by_name[name] for name in names], temp, columns, precomputer, after_sample)
            record = {"fingerprint": plan["fingerprint"], "samples": names, "report": report.to_record()}
            finish_part(temp, staging, index, record)
        if os.environ.get(KILL_AFTER_PARTS_ENV) == str(finished):
            os.kill(os.getpid(), signal.SIGKILL)


def _finish(job: _Job, plan: dict, seconds: float, processes: int) -> dict:
    """Rank 0, once every part is finished: the merged report, and the dataset moved into place."""
    staging, parts = Path(plan["staging"]), plan["parts"]
    report = ConversionReport(
        output=job.output, notes=list(plan["notes"]), window_frames=job.window_frames, window_stride=job.window_stride
    )
    for record in part_records(staging, len(parts)):
        report.extend(record["report"])
    if not report.written:
        shutil.rmtree(staging)
        raise ConversionError(
            f"all {sum(map(len, parts))} samples of {job.input_dir} are invalid, so there is nothing to write:\n"
            + "\n".join(f"  - {reason}" for reason in report.skipped.values())
        )
    with reporting_full_disk(job.output):
        publish(staging, job.output, len(parts))
    report.resumed_samples, report.seconds, report.processes = plan["resumed_samples"], seconds, processes
    return report.to_record()


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
    part_samples: int = DEFAULT_PART_SAMPLES,
    fps: float | None = None,
    window_stride: int | None = None,
    window_frames: int | None = None,
    build_precomputer: Callable[[], Precomputer | None] | None = None,
    precompute_settings: dict | None = None,
    launch: Launch | None = None,
) -> ConversionReport:
    """Validate every sample of ``input_dir`` and write the valid ones as MDS shards to ``output_dir``.

    The samples (sorted by name) are converted in parts of ``part_samples``, each an MDS folder
    ``part-NNNNN/`` finished on its own in a staging folder beside ``output_dir``
    (:mod:`cosmos_composer.data.parts`). When all are done, one ``index.json`` listing the shards of every part
    is written and the folder is moved to ``output_dir``: nothing appears there before the conversion is
    complete. A conversion that stopped (killed, a full disk, an invalid sample) keeps its finished parts, and
    the same call resumes from them; a call with other options refuses them (``FileExistsError``), or with
    ``overwrite`` deletes them.

    An invalid sample raises :class:`ConversionError` (naming the file, the problem and the fix) unless
    ``skip_invalid``, in which case it is left out and listed in the report. A video or control at another
    resolution than its sample's videos is invalid unless ``resize``, which stores it resized. A full disk
    raises :class:`~cosmos_composer.data.output.DiskFullError`.

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

    ``precomputer`` adds cached columns; or pass ``build_precomputer``, a function that builds it, called only
    by a process with parts left to convert, together with ``precompute_settings`` (JSON data naming the
    encoders and sizes, recorded in the options that decide whether finished parts are kept).

    ``launch``: the processes sharing this conversion (:meth:`Launch.from_environment` under a launcher); parts
    go to them round robin, rank 0 plans, shows the progress of all, merges and raises any rank's error, while
    the other ranks raise :class:`~cosmos_composer.data.launch.StoppedByAnotherRank`. Every rank returns the
    report. None: this process alone.
    """
    if build_precomputer is not None and (precomputer is not None or precompute_settings is None):
        raise ValueError("build_precomputer replaces precomputer and needs precompute_settings (for the fingerprint)")
    if part_samples < 1:
        raise ValueError(f"--part-samples {part_samples}: a part needs at least 1 sample")
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
    job = _Job(
        input_dir=Path(input_dir),
        output=Path(output_dir),
        layout=layout,
        control_key=control_key,
        min_frames=DEFAULT_MIN_FRAMES[layout] if min_frames is None else min_frames,
        skip_invalid=skip_invalid,
        resize=resize,
        overwrite=overwrite,
        size_limit=size_limit,
        cameras=list(cameras) if cameras else None,
        part_samples=part_samples,
        fps=fps,
        window_frames=window_frames,
        window_stride=window_stride,
    )
    launch = launch or Launch()
    try:
        report = _convert_with(launch, job, precomputer, build_precomputer, precompute_settings, progress)
    except Exception:
        launch.leave()
        raise
    launch.leave()  # not after KeyboardInterrupt: a rank interrupted alone must not wait for the others
    return report


def _convert_with(
    launch: Launch,
    job: _Job,
    precomputer: Precomputer | None,
    build_precomputer: Callable[[], Precomputer | None] | None,
    precompute_settings: dict | None,
    progress: bool,
) -> ConversionReport:
    """:func:`convert_to_mds` on one rank of ``launch``."""
    found: list[SampleFiles] = []  # rank 0's scan, for its own parts
    plan = launch.share("plan", lambda: _plan(job, precomputer, precompute_settings, launch.world_size, found))
    parts, kept = plan["parts"], set(plan["kept"])
    mine = [index for index in range(len(parts)) if index % launch.world_size == launch.rank and index not in kept]
    launch.wait_for_all("started")  # the clock starts when every rank is here, not while some still import
    bar = tqdm(
        total=sum(map(len, parts)),
        initial=plan["resumed_samples"],
        desc=f"convert {job.layout}",
        unit="sample",
        disable=not (progress and launch.is_rank_zero),
    )

    def show_progress() -> None:  # rank 0: the samples of all ranks
        if not bar.disable:
            bar.update(plan["resumed_samples"] + launch.add("samples", 0) - bar.n)

    def after_sample() -> None:
        launch.add("samples", 1)
        show_progress()
        if launch.failed():
            raise _StopRequested

    start, own_error = time.perf_counter(), None
    with contextlib.nullcontext() if bar.disable else logging_redirect_tqdm():
        try:
            with reporting_full_disk(job.output):
                _convert_parts(
                    job,
                    plan,
                    mine,
                    precomputer,
                    build_precomputer,
                    found,
                    after_sample,
                    launch.failed,
                    describe_size=launch.is_rank_zero,
                )
        except _StopRequested:
            pass
        except Exception as error:
            own_error = error
            is_expected = isinstance(error, EXPECTED_ERRORS)
            launch.fail(str(error) if is_expected else f"rank {launch.rank} failed:\n{traceback.format_exc()}")
        launch.wait_for_all("parts done", poll=show_progress)
        show_progress()
        bar.close()
    seconds = time.perf_counter() - start

    errors = launch.errors()
    if errors:
        if not launch.is_rank_zero:
            raise StoppedByAnotherRank(f"rank {min(errors)} failed; rank 0 reports it")
        staging = Path(plan["staging"])
        if finished_part_count(staging):
            log.warning(
                "kept the %d finished parts in %s: the same command resumes from them",
                finished_part_count(staging),
                staging,
            )
        else:
            shutil.rmtree(staging, ignore_errors=True)
        if own_error is not None:
            raise own_error
        raise ConversionError(errors[min(errors)])
    record = launch.share("report", lambda: _finish(job, plan, seconds, launch.world_size))
    return ConversionReport.from_record(job.output, record)
