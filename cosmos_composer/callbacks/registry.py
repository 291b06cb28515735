"""Callbacks a YAML may name under `callbacks:`, each built with the keyword arguments given there."""

from __future__ import annotations

from composer.callbacks import LRMonitor, MemoryMonitor, OptimizerMonitor, RuntimeEstimator, SpeedMonitor

from .attention_kernel import AttentionKernel
from .loss_plot import LossPlot
from .power_ema import PowerEMA
from .run_summary import RunSummary
from .sample_videos import SampleVideos

CALLBACKS = {
    "speed_monitor": SpeedMonitor,
    "memory_monitor": MemoryMonitor,
    "lr_monitor": LRMonitor,
    "optimizer_monitor": OptimizerMonitor,
    "runtime_estimator": RuntimeEstimator,
    "power_ema": PowerEMA,
    "sample_videos": SampleVideos,
    "run_summary": RunSummary,  # always on; name it to set its `path`
    "loss_plot": LossPlot,  # always on (<run folder>/loss.png); `callbacks.loss_plot=null` turns it off
    "attention_kernel": AttentionKernel,  # always on; name it to choose the backend
}
