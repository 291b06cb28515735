"""A machine-readable metrics log: one JSON object per `log_metrics` call, written by global rank 0."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

from composer.loggers import LoggerDestination
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
