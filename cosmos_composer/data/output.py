"""Write a dataset folder all at once: build it next to its destination, then rename it into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def check_output_dir(output: str | Path, overwrite: bool) -> Path:
    """Refuse a non-empty ``output`` unless ``overwrite``; refuse remote URLs (write locally, then upload)."""
    text = os.fspath(output)
    if "://" in text:
        raise ValueError(
            f"--output {text} is a URL; write the dataset to a local folder, then upload it "
            f"(for example `aws s3 cp --recursive`) and pass the URL as the dataset's `remote`"
        )
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"--output {output} is a file. Fix: choose a folder path")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(
            f"--output {output} already exists and is not empty. Fix: choose a new folder, or pass --overwrite "
            f"to replace it"
        )
    return output


def check_output_apart_from_input(input_dir: str | Path, output: str | Path) -> None:
    """Refuse an output folder that is the input, holds it or lies inside it: --overwrite would delete the videos."""
    source, target = Path(input_dir).resolve(), Path(output).resolve()
    if source == target or source.is_relative_to(target) or target.is_relative_to(source):
        relation = "is" if source == target else ("holds" if source.is_relative_to(target) else "is inside")
        raise ValueError(
            f"--output {output} {relation} the input folder {input_dir}; replacing it would delete the source videos. "
            "Fix: write the shards to a folder outside the input, e.g. a sibling folder"
        )


@contextlib.contextmanager
def atomic_output_dir(output: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``output``; on success it replaces ``output``, on error it is deleted.

    So ``output`` either keeps its old content or holds the complete new dataset, never a partial one.
    """
    output = check_output_dir(output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp, 0o777 & ~umask)  # mkdtemp makes it private; give it a normal folder's permissions
    try:
        yield temp
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    old = None
    if output.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
        os.replace(output, old / "content")
    os.replace(temp, output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
