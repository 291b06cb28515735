"""Logger destinations: a JSON-lines metrics file, and W&B with a fix for offline autoresume.

`LOGGERS` is the table of the names a YAML may use under `loggers:`.
"""

from __future__ import annotations

import json
import math
import netrc
import os
from pathlib import Path
from typing import Any, Optional

from composer.core import State
from composer.loggers import Logger, LoggerDestination
from composer.loggers import WandBLogger as ComposerWandBLogger
from composer.utils import dist


class JSONLinesLogger(LoggerDestination):
    """`{"step": 12, "loss/train/total": 0.41, ...}` per line (global rank 0 writes).

    `step` is Composer's batch count when the metric was logged: a batch's train loss has the number of
    batches before it, the eval after batch 20 has step 20. A resumed run continues the file from its
    checkpoint: the checkpoint holds the number of lines written up to it, and the lines after that (the
    batches that a crash lost and that the resumed run trains again) are dropped, so every step appears once,
    as in a run that never stopped. A run that starts at batch 0 starts the file over.
    """

    def __init__(self, path: str):
        super().__init__()
        self.path = Path(path)
        self.lines: Optional[int] = None  # lines of the file that belong to this run; None: unknown, keep all

    def state_dict(self) -> dict[str, Any]:
        return {"lines": self.lines or 0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lines = int(state["lines"])

    def fit_start(self, state: State, logger: Logger) -> None:
        if dist.get_global_rank() != 0:
            return
        if int(state.timestamp.batch) == 0:
            self.lines = 0
        existing = self.path.read_text().splitlines(keepends=True) if self.path.is_file() else []
        if self.lines is not None and len(existing) > self.lines:
            self.path.write_text("".join(existing[: self.lines]))
        self.lines = len(existing) if self.lines is None else min(self.lines, len(existing))

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
        self.lines = (self.lines or 0) + 1


def read_metrics(path: str | Path) -> dict[str, dict[int, float]]:
    """{metric name: {step: value}} from a JSONLinesLogger file; the last record of a step wins."""
    metrics: dict[str, dict[int, float]] = {}
    path = Path(path)
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the last line of a killed run may be cut short
            continue
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)):
                metrics.setdefault(name, {})[record["step"]] = value
    return metrics


class WandBLogger(ComposerWandBLogger):
    """Composer's W&B logger, except that checkpoints are never fetched from W&B unless they are
    uploaded there (`log_artifacts: true`).

    Composer 0.32.1's autoresume asks every file-capable logger for the latest checkpoint; its W&B
    logger then calls the W&B API, which fails in offline mode (`WANDB_MODE=offline`) and stops the run.
    """

    def download_file(
        self, remote_file_name: str, destination: str, overwrite: bool = False, progress_bar: bool = True
    ):
        if not self._log_artifacts:
            raise FileNotFoundError(f"{remote_file_name}: checkpoints are not uploaded to W&B (log_artifacts is off)")
        return super().download_file(remote_file_name, destination, overwrite=overwrite, progress_bar=progress_bar)


def wandb_credentials_found() -> bool:
    """Whether W&B can log in: WANDB_API_KEY, or an api.wandb.ai entry in the netrc file (`wandb login`)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        netrc_file = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
        return netrc.netrc(netrc_file).authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


# The loggers a YAML may name under `loggers:` (name: kwargs), each built with the keyword arguments given there.
LOGGERS: dict[str, type[LoggerDestination]] = {"wandb": WandBLogger, "jsonl": JSONLinesLogger}
