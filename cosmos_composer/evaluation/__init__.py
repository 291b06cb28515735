"""Evaluation: does post-training help? Metrics of generated videos against the clips they were generated for.

* :mod:`~cosmos_composer.evaluation.metrics`: the model-free metrics (Blur SSIM, Edge F1, TSE / CSE Sampson
  errors) and the Fréchet distance, with their definitions.
* :mod:`~cosmos_composer.evaluation.registry`: the metric names (``METRICS``), :func:`score_video` and
  :func:`aggregate`.
* :mod:`~cosmos_composer.evaluation.videos`: pairing generated mp4s with their references and reading them.

``python scripts/evaluate.py score --prediction P --reference R`` scores mp4 files or folders.
"""

from cosmos_composer.evaluation.metrics import (
    blur_ssim,
    cross_view_sampson_error,
    edge_scores,
    feature_statistics,
    frechet_distance,
    sampson_error,
    temporal_sampson_error,
    view_neighbours,
)
from cosmos_composer.evaluation.registry import (
    METRICS,
    MODEL_FREE_METRICS,
    Metric,
    aggregate,
    default_metrics,
    parse_metric_names,
    score_video,
)

__all__ = [
    "METRICS",
    "MODEL_FREE_METRICS",
    "Metric",
    "aggregate",
    "blur_ssim",
    "cross_view_sampson_error",
    "default_metrics",
    "edge_scores",
    "feature_statistics",
    "frechet_distance",
    "parse_metric_names",
    "sampson_error",
    "score_video",
    "temporal_sampson_error",
    "view_neighbours",
]
