"""`loss.png`: the train loss and the eval losses against the batch, and below them the sample videos' metrics.

The curves are read back from the run's metrics file (the JSONLinesLogger, `<run folder>/metrics.jsonl`),
so after a resume the plot shows the whole run, not only the part since the resume. The sample-video callback's
scores (`metrics/samples/<name>`, the mean over its held-out samples, with `metrics/samples/<name>_std` drawn as
error bars) get panels of their own when the file has any: one for the scores where higher is better (Blur SSIM,
Edge F1 / precision / recall, 0..1) and one for the errors where lower is better (TSE, CSE, in pixels). Redrawn
after each eval, after each sample call and at the end. Global rank 0 draws. On in every run;
`callbacks.loss_plot=null` turns it off.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from ..evaluation.registry import METRICS
from ..loggers import JSONLinesLogger, read_metrics

log = logging.getLogger(__name__)

TRAIN_LOSS = "loss/train/total"
EVAL_PREFIX = "metrics/eval/"
SAMPLES_PREFIX = "metrics/samples/"  # the sample-video callback's scores: `metrics/samples/<name>`
SPREAD_SUFFIX = "_std"  # ... and their spread over the samples: `metrics/samples/<name>_std`

# Figure size in inches: the loss panel keeps the height of the plot before the metric panels existed.
FIGURE_WIDTH_IN = 8.0
LOSS_PANEL_HEIGHT_IN = 4.5
METRIC_PANEL_HEIGHT_IN = 3.5
DPI = 100

Curves = dict[str, dict[int, float]]  # {metric name: {batch: value}}


def _higher_is_better(name: str) -> bool:
    metric = METRICS.get(name.removeprefix(SAMPLES_PREFIX))
    return metric is None or metric.higher_is_better


def sample_metric_panels(metrics: Curves) -> list[tuple[str, list[str]]]:
    """The metric panels to draw: ``[(y label, [metric names])]``, the scores first, then the errors; a panel
    only when the file has one of its metrics."""
    names = sorted(name for name in metrics if name.startswith(SAMPLES_PREFIX) and not name.endswith(SPREAD_SUFFIX))
    groups = (
        ("sample score (higher is better)", [name for name in names if _higher_is_better(name)]),
        ("sample error in px (lower is better)", [name for name in names if not _higher_is_better(name)]),
    )
    return [(label, group) for label, group in groups if group]


class LossPlot(Callback):
    """Plot `loss/train/total`, every `metrics/eval/*` metric and the `metrics/samples/*` means to `path` (a PNG).

    Args:
        path: the PNG to write (the builder passes `<run folder>/loss.png`).
    """

    def __init__(self, path: str):
        self.path = Path(path)
        self.written: Optional[Path] = None  # set once the plot exists
        self.panels: list[list[str]] = []  # the curves of each panel of the last plot, top to bottom

    def eval_end(self, state: State, logger: Logger) -> None:
        self.draw(logger)

    def fit_end(self, state: State, logger: Logger) -> None:
        self.draw(logger)

    def draw(self, logger: Logger) -> None:
        """Redraw the plot from the metrics file (global rank 0; the others return)."""
        if dist.get_global_rank() != 0:
            return
        metrics_file = next((d.path for d in logger.destinations if isinstance(d, JSONLinesLogger)), None)
        if metrics_file is None:
            log.warning("loss_plot: no jsonl logger to read the losses from; %s not written", self.path)
            return
        self.draw_file(metrics_file)

    def draw_file(self, metrics_file: str | os.PathLike) -> None:
        """Draw the plot of a metrics file (see the module docstring); nothing when it has no curve."""
        metrics = read_metrics(metrics_file)
        losses = {
            name: values for name, values in metrics.items() if name == TRAIN_LOSS or name.startswith(EVAL_PREFIX)
        }
        metric_panels = sample_metric_panels(metrics)
        if not losses and not metric_panels:
            return
        # The object-oriented API with the Agg canvas: no pyplot, no global backend, no display needed.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        heights = ([LOSS_PANEL_HEIGHT_IN] if losses else []) + [METRIC_PANEL_HEIGHT_IN] * len(metric_panels)
        figure = Figure(figsize=(FIGURE_WIDTH_IN, sum(heights)), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.subplots(len(heights), 1, sharex=True, height_ratios=heights, squeeze=False)[:, 0]
        panels = []
        if losses:
            panels.append(_draw_losses(axes[0], losses))
        for panel_axes, (label, names) in zip(axes[len(panels) :], metric_panels):
            panels.append(_draw_sample_metrics(panel_axes, metrics, label, names))
        axes[-1].set_xlabel("batch")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        figure.savefig(temporary, format="png", dpi=DPI)
        os.replace(temporary, self.path)  # a viewer never sees half a file
        self.written = self.path
        self.panels = panels


def _draw_losses(axes, losses: Curves) -> list[str]:
    names = sorted(losses, key=lambda name: (name != TRAIN_LOSS, name))
    for name in names:
        values = losses[name]
        steps = sorted(values)
        train = name == TRAIN_LOSS
        label = "train" if train else "eval " + name.removeprefix(EVAL_PREFIX)
        axes.plot(
            steps,
            [values[s] for s in steps],
            label=label,
            linewidth=1 if train else 1.5,
            alpha=0.6 if train else 1.0,
            marker=None if train else "o",
        )
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return names


def _draw_sample_metrics(axes, metrics: Curves, label: str, names: list[str]) -> list[str]:
    """Each metric's mean over the held-out samples with its spread (one standard deviation) as error bars."""
    for name in names:
        means = metrics[name]
        spreads = metrics.get(name + SPREAD_SUFFIX, {})
        steps = sorted(means)
        axes.errorbar(
            steps,
            [means[s] for s in steps],
            yerr=[spreads.get(s, 0.0) for s in steps],
            label=name.removeprefix(SAMPLES_PREFIX),
            marker="o",
            capsize=3,
        )
    axes.set_ylabel(label)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", title="samples: mean ± std", title_fontsize="small")
    return names
