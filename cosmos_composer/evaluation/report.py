"""Scoring a set of video pairs and reporting it: one row per video and the mean, as a table and as JSON.

The JSON file (SPEC section 3) is ``{"metrics": {name: mean}, "videos": {file name: {name: value}}}``; the
set-level ``fid`` and ``fvd`` (one value for all the videos) are in ``"metrics"`` only. A value that could not be
measured (NaN) and the mean of a metric without any value are ``null``. When TSE or CSE ran,
``"details"`` adds, per video, the frame pairs each used and skipped and the method (matcher and F source).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cosmos_composer.config_file import atomic_write_text
from cosmos_composer.evaluation.frechet import FrechetFeatures
from cosmos_composer.evaluation.registry import (
    METRICS,
    SAMPSON_METRICS,
    aggregate,
    score_video,
    set_metric_extractors,
)
from cosmos_composer.evaluation.videos import VideoPair, check_sizes, read_pair


def score_pairs(
    pairs: Sequence[VideoPair],
    names: Sequence[str],
    models: Mapping[str, Any] | Any | None = None,
    cameras: Sequence[str] | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> tuple[dict[str, dict[str, float]], dict[str, float], dict[str, dict]]:
    """Read and score every pair: ``({file name: {metric: value}}, {set metric: value}, {file name: details})``.

    The per-video metrics come from :func:`~cosmos_composer.evaluation.registry.score_video`; the set-level ones
    (``fid``, ``fvd``) from the features of all pairs (every view), gathered one pair at a time. ``models``: what
    ``load_metric_models`` returned (or a mapping, see ``registry.loaded_model``). The frame sizes of all pairs are
    compared from the file headers first, so a mismatch stops the run before any decoding."""
    per_video_names = [name for name in names if not METRICS[name].per_set]
    frechet_features = FrechetFeatures(set_metric_extractors(names, models))  # a missing model fails here
    for pair in pairs:
        check_sizes(pair)
    per_video, details = {}, {}
    for pair in tqdm(pairs, desc="evaluate", unit="video", disable=not progress):
        predictions, references = read_pair(pair)
        video_details: dict = {}
        per_video[pair.name] = (
            score_video(
                predictions,
                references,
                per_video_names,
                models,
                cameras=cameras,
                threads=threads,
                details=video_details,
            )
            if per_video_names
            else {}
        )
        if video_details:
            details[pair.name] = video_details
        frechet_features.add(predictions, references)
    return per_video, frechet_features.distances(), details


def _number(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def scores_json(
    per_video: Mapping[str, Mapping[str, float]],
    details: Mapping[str, dict] | None = None,
    per_set: Mapping[str, float] | None = None,
) -> dict:
    """The JSON document of a set's scores (see the module docstring); ``per_set`` (``fid``, ``fvd``) joins
    ``"metrics"`` only, as it has no value per video."""
    metrics = {name: _number(stats["mean"]) for name, stats in aggregate(per_video).items()}
    metrics.update({name: _number(value) for name, value in (per_set or {}).items()})
    document: dict[str, Any] = {
        "metrics": metrics,
        "videos": {
            video: {name: _number(value) for name, value in scores.items()} for video, scores in per_video.items()
        },
    }
    if details:
        document["details"] = dict(details)
    return document


def write_scores_json(
    path: str | Path,
    per_video: Mapping[str, Mapping[str, float]],
    details: Mapping[str, dict] | None = None,
    per_set: Mapping[str, float] | None = None,
) -> Path:
    """Write :func:`scores_json` to ``path`` (atomically)."""
    return atomic_write_text(path, json.dumps(scores_json(per_video, details, per_set), indent=2) + "\n")


def _cell(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def format_table(per_video: Mapping[str, Mapping[str, float]], per_set: Mapping[str, float] | None = None) -> str:
    """One row per video, a mean row (with how many videos had a value when some had none), a line of the set
    metrics (``per_set``: ``fid``, ``fvd``) and which direction is better for each metric."""
    per_set = per_set or {}
    summary = aggregate(per_video)
    names = list(summary)
    header = ["video", *names]
    rows = [[video] + [_cell(scores.get(name)) for name in names] for video, scores in per_video.items()]
    mean_row = [f"mean of {len(per_video)}"]
    for name in names:
        stats = summary[name]
        mean_row.append(_cell(stats["mean"]) + (f" ({stats['count']} videos)" if stats["missing"] else ""))
    rows.append(mean_row)
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths))
        )
        for row in [header, *rows]
    ]
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    if per_set:
        values = ", ".join(f"{name} {_cell(value)}" for name, value in per_set.items())
        lines.append(f"set metrics over all {len(per_video)} videos: {values}")
    names += list(per_set)
    higher = [name for name in names if name in METRICS and METRICS[name].higher_is_better]
    lower = [name for name in names if name in METRICS and not METRICS[name].higher_is_better]
    lines.append(
        "; ".join(
            f"{direction} is better: {', '.join(group)}"
            for direction, group in (("higher", higher), ("lower", lower))
            if group
        )
    )
    return "\n".join(lines)


def details_summary(details: Mapping[str, dict]) -> list[str]:
    """One line per Sampson metric over all videos: frame pairs used and skipped, and the method."""
    lines = []
    for name in SAMPSON_METRICS:
        found = [video_details[name] for video_details in details.values() if name in video_details]
        if found:
            used = sum(entry["pairs"] for entry in found)
            skipped = sum(entry["skipped_pairs"] for entry in found)
            lines.append(f"{name}: {used} frame pairs measured, {skipped} skipped; {found[0]['method']}")
    return lines
