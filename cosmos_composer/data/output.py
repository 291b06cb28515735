"""Write a dataset folder all at once: build it next to its destination, then rename it into place."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

# Free space under which a write error without an errno (torch's writer) is taken to mean a full disk.
NEARLY_FULL_BYTES = 64 * 2**20
# What torch's file writer says when a write comes up short ("unexpected pos 704 vs 598").
TORCH_WRITE_ERRORS = ("PytorchStreamWriter", "unexpected pos", "file write failed")


class DiskFullError(OSError):
    """A write failed because its disk is full; the message names the path, the free space and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC


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


def _this_host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())  # no "-": it separates host from pid


def partial_dir_prefix(output: Path, host: str | None = None, pid: int | None = None) -> str:
    """Name start of the temporary folder of ``output``: ``.<name>.partial-<host>-<pid>-`` (mkdtemp adds the rest).

    The host and pid tell a later run whether the process that made the folder is still alive.
    """
    return f".{output.name}.partial-{host or _this_host()}-{os.getpid() if pid is None else pid}-"


def _process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 checks that the process exists without touching it
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def remove_stale_partial_dirs(output: Path) -> list[Path]:
    """Delete the temporary folders of ``output`` that killed processes of this host left; return them.

    Folders of live processes, of other hosts (a shared file system) and of unknown form are kept.
    """
    pattern = re.compile(re.escape(f".{output.name}.partial-") + r"(?P<host>[^-]+)-(?P<pid>\d+)-[^-]+")
    removed = []
    for path in output.parent.iterdir():
        match = pattern.fullmatch(path.name)
        if match and match["host"] == _this_host() and not _process_is_alive(int(match["pid"])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        log.info(
            "removed %d partial folder(s) that killed processes left beside %s: %s",
            len(removed),
            output,
            ", ".join(path.name for path in removed),
        )
    return removed


def make_partial_dir(output: Path) -> Path:
    """A new temporary folder beside ``output`` to build it in, after removing those of killed writers.

    Its name (:func:`partial_dir_prefix`) tells a later writer whether its process is still alive.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partial_dirs(output)
    temp = Path(tempfile.mkdtemp(prefix=partial_dir_prefix(output), dir=output.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp, 0o777 & ~umask)  # mkdtemp makes it private; give it a normal folder's permissions
    return temp


@contextlib.contextmanager
def atomic_output_dir(output: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``output``; on success it replaces ``output``, on error it is deleted.

    So ``output`` either keeps its old content or holds the complete new dataset, never a partial one.
    A process killed with -9 cannot delete its folder; the next run into ``output`` on this host does.
    """
    output = check_output_dir(output, overwrite)
    temp = make_partial_dir(output)
    try:
        yield temp
        move_into_place(temp, output)
    finally:
        shutil.rmtree(temp, ignore_errors=True)  # already gone (renamed) after a success


def move_into_place(folder: Path, output: Path) -> None:
    """Rename the complete ``folder`` to ``output`` (a sibling), replacing an ``output`` that exists.

    The old ``output`` is first renamed aside and deleted only after the new one is in place.
    """
    old = None
    if output.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
        os.replace(output, old / "content")
    os.replace(folder, output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _disk_of(path: Path) -> tuple[int, Path]:
    """Free bytes and mount point of the file system ``path`` is (or would be) on."""
    path = Path(os.path.abspath(path))
    while not path.exists():
        path = path.parent
    free = shutil.disk_usage(path).free
    while not os.path.ismount(path):
        path = path.parent
    return free, path


def human_size(size: float) -> str:
    """``size`` bytes in binary units: ``512 B``, ``7.0 MiB``, ``6.6 TiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def raise_if_disk_full(error: BaseException, path: str | Path, fix: str = "choose another --output") -> None:
    """Raise :class:`DiskFullError` (from ``error``) when ``error`` means the disk of ``path`` is full.

    A full disk shows up as ENOSPC anywhere in the exception chain, or as torch's bare "unexpected pos"
    RuntimeError while the disk is (nearly) full. Otherwise return, so the caller re-raises ``error``.
    """
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    enospc = any(isinstance(e, OSError) and e.errno == errno.ENOSPC for e in chain)
    torch_short_write = any(
        isinstance(e, RuntimeError) and any(text in str(e) for text in TORCH_WRITE_ERRORS) for e in chain
    )
    if not (enospc or torch_short_write):
        return
    free, mount = _disk_of(Path(path))
    if enospc or free < NEARLY_FULL_BYTES:
        raise DiskFullError(
            f"no space left on device while writing {path}: {human_size(free)} free on {mount}; free space or {fix}"
        ) from chain[0]


@contextlib.contextmanager
def reporting_full_disk(path: str | Path, fix: str = "choose another --output") -> Iterator[None]:
    """Turn a write error inside the block that a full disk caused into :class:`DiskFullError`."""
    try:
        yield
    except Exception as error:
        raise_if_disk_full(error, path, fix)
        raise
