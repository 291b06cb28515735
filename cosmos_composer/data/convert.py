"""Official folder layout -> MDS shards (the work behind ``scripts/convert_to_mds.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from streaming import MDSWriter
from tqdm import tqdm

from cosmos_composer.data import mds
from cosmos_composer.data.layouts import (
    DEFAULT_CONTROL_KEY,
    DEFAULT_MIN_FRAMES,
    InvalidSampleError,
    LayoutError,
    ValidatedSample,
    find_samples,
    ignored_files,
    normalize_control_key,
    validate_sample,
)
from cosmos_composer.data.output import atomic_output_dir, check_output_apart_from_input, check_output_dir
from cosmos_composer.data.precompute import Precomputer

DEFAULT_SIZE_LIMIT = "256mb"


class ConversionError(RuntimeError):
    """The conversion stopped; nothing was written to the output folder."""


@dataclass
class ConversionReport:
    output: Path
    written: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # sample name -> why
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        total = len(self.written) + len(self.skipped)
        lines = [f"Wrote {len(self.written)} of {total} samples to {self.output}."]
        if self.skipped:
            lines.append(f"Skipped {len(self.skipped)} of {total} samples (--skip-invalid):")
            lines += [f"  - {reason}" for reason in self.skipped.values()]
        if self.notes:
            lines.append("Notes:")
            lines += [f"  - {note}" for note in self.notes]
        return "\n".join(lines)


def sample_row(sample: ValidatedSample, layout: str, control_key: str) -> dict:
    """The MDS row of a validated sample: metadata plus the source mp4 files, byte for byte."""
    files = sample.files
    row = {
        mds.SAMPLE_NAME: files.name,
        mds.LAYOUT: layout,
        mds.CAMERA_NAMES: [camera for camera in files.cameras if camera is not None],
        mds.CAPTION: sample.caption,
        mds.FPS: float(sample.fps),
        mds.NUM_FRAMES: int(sample.num_frames),
        mds.CONTROL_KEY: control_key,
    }
    for camera in files.cameras:
        row[mds.video_column(camera)] = files.videos[camera].read_bytes()
        if files.controls:
            row[mds.control_column(control_key, camera)] = files.controls[camera].read_bytes()
    return row


def convert_to_mds(
    input_dir: str | Path,
    output_dir: str | Path,
    layout: str,
    control_key: str | None = None,
    min_frames: int | None = None,
    skip_invalid: bool = False,
    overwrite: bool = False,
    size_limit: int | str = DEFAULT_SIZE_LIMIT,
    precomputer: Precomputer | None = None,
    progress: bool = True,
) -> ConversionReport:
    """Validate every sample of ``input_dir`` and write the valid ones as MDS shards to ``output_dir``.

    The shards are built in a temporary folder beside ``output_dir`` and moved into place only when
    complete. An invalid sample raises :class:`ConversionError` (naming the file, the problem and the
    fix) unless ``skip_invalid``, in which case it is left out and listed in the report.
    """
    control_key = normalize_control_key(control_key or DEFAULT_CONTROL_KEY[layout], layout)
    min_frames = DEFAULT_MIN_FRAMES[layout] if min_frames is None else min_frames
    check_output_apart_from_input(input_dir, output_dir)
    check_output_dir(output_dir, overwrite)  # fail before the (possibly long) scan
    if precomputer is not None and precomputer.latents and min_frames < precomputer.num_frames:
        raise ValueError(
            f"--min-frames {min_frames} is below the {precomputer.num_frames} frames per view to encode; every "
            f"sample needs them. Fix: pass --min-frames {precomputer.num_frames} (or lower --num-frames)"
        )
    samples = find_samples(input_dir, layout, control_key)
    if not samples:
        raise LayoutError(
            f"found no samples in {input_dir} for layout {layout}. Fix: check --input and --layout"
        )
    report = ConversionReport(output=Path(output_dir))
    ignored = ignored_files(input_dir, layout, control_key)
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
    with atomic_output_dir(output_dir, overwrite) as temp:
        with MDSWriter(out=str(temp), columns=columns, size_limit=size_limit, progress_bar=False) as writer:
            bar = tqdm(samples, desc=f"convert {layout}", unit="sample", disable=not progress)
            for files in bar:
                try:
                    sample = validate_sample(files, layout, min_frames)
                except InvalidSampleError as error:
                    if not skip_invalid:
                        raise ConversionError(
                            f"{error}\nNothing was written to {output_dir}. To convert the other samples and "
                            f"leave out the invalid ones, pass --skip-invalid."
                        ) from error
                    report.skipped[files.name] = str(error)
                    bar.write(f"skipping invalid sample: {error}")
                    continue
                row = sample_row(sample, layout, control_key)
                if precomputer is not None:
                    row.update(precomputer(row))
                writer.write(row)
                report.written.append(files.name)
                report.notes.extend(sample.notes)
        if not report.written:
            raise ConversionError(
                f"all {len(samples)} samples of {input_dir} are invalid, so there is nothing to write:\n"
                + "\n".join(f"  - {reason}" for reason in report.skipped.values())
            )
    return report
