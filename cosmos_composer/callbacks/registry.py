"""Callbacks a YAML may name under `callbacks:`, each built with the keyword arguments given there.

The table holds where each class lives, not the class: the config checks the names without importing every
callback (sample_videos brings the sampler, the evaluation metrics and the video code with it).
"""

from __future__ import annotations

import importlib
from typing import Any

CALLBACKS: dict[str, str] = {
    "speed_monitor": "composer.callbacks.SpeedMonitor",
    "memory_monitor": "composer.callbacks.MemoryMonitor",
    "lr_monitor": "composer.callbacks.LRMonitor",
    "optimizer_monitor": "composer.callbacks.OptimizerMonitor",
    "runtime_estimator": "composer.callbacks.RuntimeEstimator",
    "power_ema": "cosmos_composer.callbacks.power_ema.PowerEMA",
    "sample_videos": "cosmos_composer.callbacks.sample_videos.SampleVideos",
    "run_summary": "cosmos_composer.callbacks.run_summary.RunSummary",  # always on; name it to set its `path`
    # always on (<run folder>/loss.png); `callbacks.loss_plot=null` turns it off
    "loss_plot": "cosmos_composer.callbacks.loss_plot.LossPlot",
    "data_log": "cosmos_composer.callbacks.data_log.DataLog",  # the sample names of every batch: data_log.jsonl
    "attention_kernel": "cosmos_composer.callbacks.attention_kernel.AttentionKernel",  # always on; name it to choose the backend
}


def build_callback(name: str, **kwargs: Any):
    """The callback `name` of `CALLBACKS`, built with `kwargs`."""
    module, _, class_name = CALLBACKS[name].rpartition(".")
    return getattr(importlib.import_module(module), class_name)(**kwargs)
