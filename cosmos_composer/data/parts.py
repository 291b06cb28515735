"""A conversion's parts on disk: the staging folder beside ``--output`` that makes a conversion resumable.

The sorted samples are split into parts of a fixed number of samples (``--part-samples``, independent of the
number of processes). Each part is an MDS folder of its own, written in a temporary folder and finished by one
rename, so a killed conversion keeps every part it finished. Beside ``--output data/hdmap_mds``::

    data/.hdmap_mds.staging/
        conversion.json                 the options of the conversion (and their fingerprint)
        part-00000/                     a finished part: index.json, shard.00000.mds, ..., and part.json
                                        (the options' fingerprint, its samples, its report)
        .part-00001.partial-<host>-<pid>-<random>/    a part being written (deleted once its writer is dead)

When every part is finished, Streaming's own ``merge_index`` writes the root ``index.json`` (listing each part's
shards as ``part-00000/shard.00000.mds``), the folder is renamed to ``--output`` and the records are deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from streaming.base.util import merge_index

from cosmos_composer.config_file import atomic_write_text
from cosmos_composer.data.output import make_partial_dir, move_into_place

log = logging.getLogger(__name__)

CONVERSION_RECORD = "conversion.json"
PART_RECORD = "part.json"
INDEX = "index.json"  # Streaming's index file, of each part and of the whole dataset
PART_PATTERN = re.compile(r"part-(\d+)")


def staging_dir(output: Path) -> Path:
    """The staging folder of ``output``: a fixed name beside it, so that a rerun finds it."""
    return output.parent / f".{output.name}.staging"


def part_name(index: int) -> str:
    return f"part-{index:05d}"


def split_into_parts(names: Sequence[str], part_samples: int) -> list[list[str]]:
    """Consecutive chunks of ``part_samples`` names (the last one shorter)."""
    return [list(names[start : start + part_samples]) for start in range(0, len(names), part_samples)]


def fingerprint(options: dict) -> str:
    """SHA-256 of the options (plain JSON data) that decide the rows of a conversion."""
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _finished_part_folders(staging: Path) -> list[Path]:
    return sorted(path for path in staging.glob("part-*") if (path / PART_RECORD).is_file())


def open_staging(output: Path, options: dict, overwrite: bool) -> Path:
    """The staging folder of ``output`` for a conversion with ``options``; created when there is none.

    One left by a conversion with other options is refused (``FileExistsError`` naming the options that
    differ), or deleted with ``overwrite``.
    """
    staging = staging_dir(output)
    if staging.is_dir() and any(staging.iterdir()):
        record = _read_json(staging / CONVERSION_RECORD)
        if record is None:
            raise FileExistsError(
                f"{staging} exists but holds no {CONVERSION_RECORD}, so it is not the staging folder of a "
                f"conversion. Fix: move it away or delete it"
            )
        if record.get("options") == options:
            return staging
        before = record.get("options", {})
        differences = "; ".join(
            f"{key} was {before.get(key)!r}, now {options.get(key)!r}"
            for key in sorted(set(before) | set(options))
            if before.get(key) != options.get(key)
        )
        finished = len(_finished_part_folders(staging))
        if not overwrite:
            raise FileExistsError(
                f"{staging} holds {finished} finished parts of an earlier conversion into {output} with other "
                f"options ({differences}). Fix: run the earlier command again to resume it, or pass --overwrite "
                f"to discard those parts and start over"
            )
        log.info(
            "--overwrite: discarding %d finished parts in %s made with other options (%s)",
            finished,
            staging,
            differences,
        )
        shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        staging / CONVERSION_RECORD, json.dumps({"fingerprint": fingerprint(options), "options": options})
    )
    return staging


def _shards_intact(folder: Path) -> bool:
    """Whether every shard file the part's index.json lists is there, at the size it records."""
    index = _read_json(folder / INDEX)
    if index is None:
        return False
    for shard in index.get("shards", []):
        for key in ("raw_data", "zip_data"):
            info = shard.get(key)
            path = folder / info["basename"] if info else None
            if info and (not path.is_file() or path.stat().st_size != info["bytes"]):
                return False
    return True


def keep_finished_parts(staging: Path, parts: list[list[str]], options_fingerprint: str, skip_invalid: bool) -> dict:
    """The records (index -> record) of the finished parts of ``staging`` that this conversion keeps.

    A part is kept when it was made with the same options, for the same samples, with its shard files intact,
    and, without ``skip_invalid``, left no sample out. The others are deleted, saying why.
    """
    kept = {}
    for folder in _finished_part_folders(staging):
        match = PART_PATTERN.fullmatch(folder.name)
        index = int(match[1]) if match else len(parts)
        record = _read_json(folder / PART_RECORD) or {}
        if index >= len(parts) or record.get("samples") != parts[index]:
            reason = "the input holds other samples now"
        elif record.get("fingerprint") != options_fingerprint:
            reason = "it was made with other options"
        elif record["report"]["skipped"] and not skip_invalid:
            reason = f"it left out {len(record['report']['skipped'])} invalid samples, and --skip-invalid is not given"
        elif not _shards_intact(folder):
            reason = "one of its shard files is missing or has another size than its index.json records"
        else:
            kept[index] = record
            continue
        log.info("converting %s again: %s", folder.name, reason)
        shutil.rmtree(folder)
    return kept


@contextlib.contextmanager
def writing_part(staging: Path, index: int) -> Iterator[Path]:
    """A new temporary folder for part ``index``; :func:`finish_part` completes it, else it is deleted on exit."""
    temp = make_partial_dir(staging / part_name(index))
    try:
        yield temp
    finally:
        shutil.rmtree(temp, ignore_errors=True)  # already gone (renamed) when finished


def finish_part(temp: Path, staging: Path, index: int, record: dict) -> Path:
    """Write the part's record into ``temp`` and rename it to the finished part (one step a kill cannot split)."""
    (temp / PART_RECORD).write_text(json.dumps(record))
    final = staging / part_name(index)
    os.replace(temp, final)
    return final


def part_records(staging: Path, num_parts: int) -> list[dict]:
    """The records of parts ``0 .. num_parts - 1``, all finished."""
    return [json.loads((staging / part_name(index) / PART_RECORD).read_text()) for index in range(num_parts)]


def finished_part_count(staging: Path) -> int:
    return len(_finished_part_folders(staging))


@contextlib.contextmanager
def _quiet_merge() -> Iterator[None]:
    """Silence merge_index's two warnings: one names its own temporary folder (on the root logger), the other says
    that the folder it writes index.json into has files (the parts, as it should). Neither is news to a user."""
    loggers = [logging.getLogger(), logging.getLogger("streaming.base.storage.upload")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def publish(staging: Path, output: Path, num_parts: int) -> None:
    """Merge the parts' indexes into the root index.json, rename ``staging`` to ``output`` and drop the records.

    Temporary part folders that are still there were left by dead writers (every part is finished), perhaps of
    another host, and are deleted first.
    """
    expected = {part_name(index) for index in range(num_parts)} | {CONVERSION_RECORD}
    for path in staging.iterdir():
        if path.name not in expected:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    with _quiet_merge():
        merge_index([str(staging / part_name(index) / INDEX) for index in range(num_parts)], str(staging))
    move_into_place(staging, output)
    # After the rename: a kill before it leaves a staging folder that a rerun publishes again.
    (output / CONVERSION_RECORD).unlink()
    for index in range(num_parts):
        (output / part_name(index) / PART_RECORD).unlink()
