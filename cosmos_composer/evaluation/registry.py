"""The evaluation metrics by name, scoring one video with them, and averaging scores over videos.

The names are fixed (SPEC section 3): ``blur_ssim``, ``edge_f1``, ``edge_precision``, ``edge_recall``,
``depth_si_rmse``, ``mask_miou``, ``tse``, ``cse``, ``fid``, ``fvd``. :data:`METRICS` says for each whether
higher is better, which model it needs (a key of the ``models`` mapping, None for the model-free ones), whether
it is one value per set of videos (``fid``, ``fvd``) rather than per video, and whether it belongs to the
multiview benchmark (``tse``, ``cse``; CSE needs at least two views, TSE runs on one too).

:func:`score_video` computes the per-video metrics of one generated video (single view: ``[T, H, W, 3]``;
multiview: a list of per-camera ``[T, H, W, 3]`` in view order) against its reference clip. The model-based
ones call :mod:`cosmos_composer.evaluation.depth` and :mod:`cosmos_composer.evaluation.masks` with
``models[DEPTH_MODEL]`` and ``models[MASK_MODELS]``; the set-level ``fid`` and ``fvd`` are computed by
:mod:`cosmos_composer.evaluation.frechet` (its ``FrechetFeatures``, with :func:`set_metric_extractors`), not here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cosmos_composer.evaluation import metrics

# Keys of the `models` mapping that score_video passes to the model-based metrics.
DEPTH_MODEL = "depth"  # Depth Anything V2, for depth_si_rmse
MASK_MODELS = "masks"  # GroundingDINO + SAM2, for mask_miou
FID_MODEL = "fid"  # the FID feature extractor
FVD_MODEL = "fvd"  # the FVD feature extractor


@dataclass(frozen=True)
class Metric:
    """What a metric is: its name, direction, the model it needs and what it is computed over."""

    name: str
    higher_is_better: bool
    description: str
    model: str | None = None  # the key of `models` it needs; None: model-free
    per_set: bool = False  # one value for a set of videos (a distance between distributions), not per video
    multiview: bool = False  # of the multiview benchmark (report Table 14); cse needs at least 2 views


METRICS: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric("blur_ssim", True, "SSIM of the bilateral-blurred frames"),
        Metric("edge_f1", True, "F1 of the Canny edge pixels against the reference's"),
        Metric("edge_precision", True, "precision of the Canny edge pixels against the reference's"),
        Metric("edge_recall", True, "recall of the Canny edge pixels against the reference's"),
        Metric("depth_si_rmse", False, "scale-invariant RMSE of Depth Anything V2 depth", model=DEPTH_MODEL),
        Metric("mask_miou", True, "mIoU of GroundingDINO + SAM2 masks of the caption's objects", model=MASK_MODELS),
        Metric("tse", False, "temporal Sampson error in pixels (consecutive frames)", multiview=True),
        Metric("cse", False, "cross-view Sampson error in pixels (neighbouring cameras)", multiview=True),
        Metric("fid", False, "Fréchet Inception distance of the frames", model=FID_MODEL, per_set=True),
        Metric("fvd", False, "Fréchet video distance", model=FVD_MODEL, per_set=True),
    )
}
MODEL_FREE_METRICS: tuple[str, ...] = tuple(name for name, metric in METRICS.items() if metric.model is None)
EDGE_METRICS = ("edge_f1", "edge_precision", "edge_recall")
SAMPSON_METRICS = ("tse", "cse")


def default_metrics(multiview: bool) -> tuple[str, ...]:
    """The model-free metrics, without the multiview benchmark's TSE and CSE for a single view."""
    return tuple(name for name in MODEL_FREE_METRICS if multiview or not METRICS[name].multiview)


def parse_metric_names(names: str | Sequence[str]) -> tuple[str, ...]:
    """Metric names from ``"a,b"`` or a sequence, in order, each once; an unknown name is a ``ValueError``
    listing the valid ones."""
    if isinstance(names, str):
        names = names.split(",")
    parsed = tuple(dict.fromkeys(name.strip() for name in names if name.strip()))
    unknown = [name for name in parsed if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; the metrics are {', '.join(METRICS)}")
    if not parsed:
        raise ValueError(f"no metric named; the metrics are {', '.join(METRICS)}")
    return parsed


def _as_views(video: np.ndarray | Sequence[np.ndarray], what: str) -> list[np.ndarray]:
    if isinstance(video, np.ndarray) and video.ndim == 4:
        return [video]
    views = list(video)
    if not views:
        raise ValueError(f"the {what} has no views")
    return views


def loaded_model(models: Mapping[str, Any] | Any | None, key: str) -> Any:
    """The model under ``key`` (``DEPTH_MODEL``, ...) of ``models``: a mapping, or the
    :class:`~cosmos_composer.evaluation.models.MetricModels` that ``load_metric_models`` returns (its fields are
    named after the same keys); None when it holds no such model."""
    if models is None:
        return None
    return models.get(key) if isinstance(models, Mapping) else getattr(models, key, None)


def _check_models(names: Sequence[str], models: Mapping[str, Any] | Any | None) -> None:
    for name in names:
        key = METRICS[name].model
        if key is not None and loaded_model(models, key) is None:
            given = sorted(k for k in (DEPTH_MODEL, MASK_MODELS, FID_MODEL, FVD_MODEL) if loaded_model(models, k))
            raise ValueError(
                f"{name} needs models[{key!r}] ({METRICS[name].description}); the models given: {given or 'none'}. "
                "Load them with cosmos_composer.evaluation.models or leave the metric out"
            )


def set_metric_extractors(names: Sequence[str], models: Mapping[str, Any] | Any | None) -> dict[str, Any]:
    """``{name: feature extractor}`` for the set-level metrics among ``names`` (``fid``, ``fvd``), taken from
    ``models`` (see :func:`loaded_model`), for :class:`cosmos_composer.evaluation.frechet.FrechetFeatures`; a
    missing model is a ``ValueError``."""
    per_set = [name for name in names if METRICS[name].per_set]
    _check_models(per_set, models)
    return {name: loaded_model(models, METRICS[name].model) for name in per_set}


def check_metrics_runnable(
    names: Sequence[str],
    num_views: int,
    models: Mapping[str, Any] | Any | None = None,
    caption: str | None = None,
) -> None:
    """Raise ``ValueError`` when :func:`score_video` could not compute ``names`` for ``num_views`` views with these
    ``models`` and ``caption``: a set-level metric, CSE on one view, a model or caption missing."""
    per_set = [name for name in names if METRICS[name].per_set]
    if per_set:
        raise ValueError(
            f"{', '.join(per_set)} compare the distributions of a set of videos (cosmos_composer.evaluation.frechet), "
            "there is no value per video; leave them out of the per-video metrics"
        )
    if "cse" in names and num_views < 2:
        raise ValueError(f"cse compares cameras with each other and needs at least 2 views, got {num_views}")
    _check_models(names, models)
    if "mask_miou" in names and not caption:
        raise ValueError("mask_miou needs the clip's caption (the objects to segment); pass caption=...")


def score_video(
    prediction: np.ndarray | Sequence[np.ndarray],
    reference: np.ndarray | Sequence[np.ndarray],
    names: str | Sequence[str],
    models: Mapping[str, Any] | Any | None = None,
    *,
    caption: str | None = None,
    cameras: Sequence[str] | None = None,
    threads: int | None = None,
    details: dict | None = None,
) -> dict[str, float]:
    """The per-video metrics ``names`` of a generated video against its reference clip: ``{name: value}``.

    ``prediction`` and ``reference``: RGB uint8 ``[T, H, W, 3]`` (single view) or lists of them, one per camera in
    view order (multiview), of equal shapes. Over several views, ``blur_ssim`` is the mean over all views'
    frames, the ``edge_*`` count the pixels of all views' frames together, ``tse`` and ``cse`` are measured on the
    prediction's views (``cameras`` names them for CSE's camera pairs, see :func:`metrics.view_neighbours`), and
    ``depth_si_rmse`` / ``mask_miou`` are the mean over views. ``models`` maps ``DEPTH_MODEL`` / ``MASK_MODELS``
    to what the model-based metrics need; ``caption`` is the prompt, for ``mask_miou``. A value is NaN when it
    cannot be measured (TSE / CSE with no frame pair of enough matches). ``details``, when given, receives for
    each Sampson metric its frame pairs used and skipped and its method: ``details["tse"] = {"pairs": ...,
    "skipped_pairs": ..., "method": ...}``. Everything is checked before anything is computed.
    """
    names = parse_metric_names(names)
    predictions, references = _as_views(prediction, "prediction"), _as_views(reference, "reference")
    if len(predictions) != len(references):
        raise ValueError(f"the prediction has {len(predictions)} views and the reference {len(references)}")
    for index, (predicted, actual) in enumerate(zip(predictions, references)):
        try:
            metrics.check_video_pair(predicted, actual)
        except ValueError as error:
            raise ValueError(f"view {index}: {error}" if len(predictions) > 1 else str(error)) from None
    check_metrics_runnable(names, len(predictions), models, caption)
    views = list(zip(predictions, references))

    values: dict[str, float] = {}
    if "blur_ssim" in names:
        frames = [metrics.blur_ssim_frames(predicted, actual, threads) for predicted, actual in views]
        values["blur_ssim"] = float(np.concatenate(frames).mean())
    if any(name in names for name in EDGE_METRICS):
        counts = np.sum([metrics.edge_counts(predicted, actual, threads) for predicted, actual in views], axis=0)
        values.update(metrics.edge_scores_from_counts(*(int(count) for count in counts)))
    if any(name in names for name in SAMPSON_METRICS):
        sampson = metrics.sampson_errors(
            predictions, temporal="tse" in names, cross_view="cse" in names, cameras=cameras, threads=threads
        )
        for name in SAMPSON_METRICS:
            if name in names:
                values[name] = sampson[name]
                if details is not None:
                    details[name] = {
                        "pairs": sampson[f"{name}_pairs"],
                        "skipped_pairs": sampson[f"{name}_skipped_pairs"],
                        "method": sampson[f"{name}_method"],
                    }
    if "depth_si_rmse" in names:
        from cosmos_composer.evaluation import depth  # optional heavy dependencies (the depth model), only when asked

        depth_model = loaded_model(models, DEPTH_MODEL)
        values["depth_si_rmse"] = float(
            np.mean([depth.depth_si_rmse(predicted, actual, depth_model) for predicted, actual in views])
        )
    if "mask_miou" in names:
        from cosmos_composer.evaluation import masks  # optional heavy dependencies (the mask models), only when asked

        mask_models = loaded_model(models, MASK_MODELS)
        values["mask_miou"] = float(
            np.mean(
                [masks.mask_miou(predicted, actual, caption, mask_models)["mask_miou"] for predicted, actual in views]
            )
        )
    return {name: values[name] for name in names}


def _is_missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def aggregate(per_video: Mapping[str, Mapping[str, float | None]]) -> dict[str, dict]:
    """Mean, standard deviation (over videos, ddof 0) and count of each metric over ``{video: {name: value}}``.

    A None or NaN value (or a video without the metric) is left out of the mean and counted as ``missing``.
    Returns ``{name: {"mean", "std", "count", "missing"}}`` in the order the metrics first appear; mean and std
    are NaN for a metric with no value.
    """
    names = list(dict.fromkeys(name for scores in per_video.values() for name in scores))
    summary = {}
    for name in names:
        present = [scores.get(name) for scores in per_video.values()]
        kept = np.array([value for value in present if not _is_missing(value)], dtype=np.float64)
        summary[name] = {
            "mean": float(kept.mean()) if len(kept) else float("nan"),
            "std": float(kept.std()) if len(kept) else float("nan"),
            "count": len(kept),
            "missing": len(present) - len(kept),
        }
    return summary
