"""`<run folder>/data_log.jsonl`: which samples each training batch held, one line per batch (global rank 0).

    {"epoch": 0, "batch": 3, "samples": ["demo_0004", "demo_0009"]}

`batch` counts the batches trained so far in the run (the batch of this line included), as Composer's
timestamp does; `samples` are the `sample_name`s of the whole global batch, each context-parallel group's
sample once (its ranks hold the same sample). A resumed run appends to the file, so the file shows what a
preempted or resubmitted run trained twice or never. It costs one gather of the names per batch: opt in with
`callbacks.data_log: {}`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist


class DataLog(Callback):
    """Args: path: the JSON-lines file (the builder passes `<run folder>/data_log.jsonl`);
    context_parallel_size: consecutive ranks that share each sample (set by the builder)."""

    def __init__(self, path: Optional[str] = None, context_parallel_size: int = 1):
        if path is None:
            raise ValueError("callbacks.data_log: path is required (the training builder sets it)")
        self.path = Path(path)
        self.context_parallel_size = context_parallel_size

    def batch_end(self, state: State, logger: Logger) -> None:
        names = state.batch.get("sample_name", []) if isinstance(state.batch, dict) else []
        names_by_rank = dist.all_gather_object(list(names))
        if dist.get_global_rank() != 0:
            return
        # Ranks r, r+1, ..., r+cp-1 form one context-parallel group and hold the same samples.
        samples = [
            name for rank in range(0, len(names_by_rank), self.context_parallel_size) for name in names_by_rank[rank]
        ]
        line = {"epoch": int(state.timestamp.epoch), "batch": int(state.timestamp.batch), "samples": samples}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(line) + "\n")
