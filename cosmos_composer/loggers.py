"""Logger destinations: a JSON-lines metrics file, and W&B with a fix for offline autoresume."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

from composer.loggers import LoggerDestination
from composer.loggers import WandBLogger as ComposerWandBLogger
from composer.utils import dist


class JSONLinesLogger(LoggerDestination):
    """`{"step": 12, "loss/train/total": 0.41, ...}` per line; appends, so a resumed run continues the file."""

    def __init__(self, path: str):
        super().__init__()
        self.path = Path(path)

    def log_metrics(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        if dist.get_global_rank() != 0:
            return
        record = {"step": step}
        for name, value in metrics.items():
            value = value.item() if hasattr(value, "item") else value
            if isinstance(value, float) and not math.isfinite(value):
                value = str(value)
            record[name] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


class WandBLogger(ComposerWandBLogger):
    """Composer's W&B logger, except that checkpoints are never fetched from W&B unless they are
    uploaded there (`log_artifacts: true`).

    Composer 0.32.1's autoresume asks every file-capable logger for the latest checkpoint; its W&B
    logger then calls the W&B API, which fails in offline mode (`WANDB_MODE=offline`) and stops the run.
    """

    def download_file(self, remote_file_name: str, destination: str, overwrite: bool = False, progress_bar: bool = True):
        if not self._log_artifacts:
            raise FileNotFoundError(f"{remote_file_name}: checkpoints are not uploaded to W&B (log_artifacts is off)")
        return super().download_file(remote_file_name, destination, overwrite=overwrite, progress_bar=progress_bar)
