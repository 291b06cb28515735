"""`loss.png`: the train loss and the eval losses against the batch, redrawn after each eval and at the end.

The curves are read back from the run's metrics file (the JSONLinesLogger, `<run folder>/metrics.jsonl`),
so after a resume the plot shows the whole run, not only the part since the resume. Global rank 0 draws.
On in every run; `callbacks.loss_plot=null` turns it off.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from ..loggers import JSONLinesLogger, read_metrics

log = logging.getLogger(__name__)

TRAIN_LOSS = "loss/train/total"
EVAL_PREFIX = "metrics/eval/"


class LossPlot(Callback):
    """Plot `loss/train/total` and every `metrics/eval/*` metric to `path` (a PNG).

    Args:
        path: the PNG to write (the builder passes `<run folder>/loss.png`).
    """

    def __init__(self, path: str):
        self.path = Path(path)
        self.written: Optional[Path] = None  # set once the plot exists

    def eval_end(self, state: State, logger: Logger) -> None:
        self._draw(logger)

    def fit_end(self, state: State, logger: Logger) -> None:
        self._draw(logger)

    def _draw(self, logger: Logger) -> None:
        if dist.get_global_rank() != 0:
            return
        metrics_file = next((d.path for d in logger.destinations if isinstance(d, JSONLinesLogger)), None)
        if metrics_file is None:
            log.warning("loss_plot: no jsonl logger to read the losses from; %s not written", self.path)
            return
        metrics = read_metrics(metrics_file)
        curves = {
            name: values for name, values in metrics.items() if name == TRAIN_LOSS or name.startswith(EVAL_PREFIX)
        }
        if not curves:
            return
        # The object-oriented API with the Agg canvas: no pyplot, no global backend, no display needed.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(8, 4.5), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.subplots()
        for name, values in sorted(curves.items(), key=lambda item: item[0] != TRAIN_LOSS):
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
        axes.set_xlabel("batch")
        axes.set_ylabel("loss")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        figure.savefig(temporary, format="png", dpi=100)
        os.replace(temporary, self.path)  # a viewer never sees half a file
        self.written = self.path
