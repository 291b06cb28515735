"""The end-of-run summary: speed, time to first step, memory of the device and of the host, per rank.

At the end of `fit` every rank measures itself and rank 0 prints one line and writes `summary.json`:

- `first_step_s`: seconds from the start of the process to the end of the first optimizer step (model
  build, weight loading, data start-up and the first step, as a user waits for them);
- `step_s`: median seconds of the steps after the first (the first compiles kernels and warms caches);
- `samples_per_s`: the global batch over `step_s`; `device_s_per_sample`: ranks x step_s / global batch;
- `peak_alloc_gib` / `peak_reserved_gib`: CUDA's peak allocated / reserved memory, max over ranks;
- `host_rss_gib_per_rank`: the peak resident host memory of each rank process (max over ranks), from
  `getrusage` (it includes pages of mmapped checkpoint files that the rank read).

Two more lines say what trained, from where, and where the run's files are (paths inside the run folder
relative to it): the last checkpoint this run saved, its latest samples, metrics.jsonl, loss.png, config.yaml.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from pathlib import Path
from typing import Optional

import psutil
import torch
from composer.callbacks import CheckpointSaver
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from ..config_file import write_json_or_yaml
from ..loggers import JSONLinesLogger
from .loss_plot import LossPlot
from .sample_videos import SampleVideos


def peak_host_rss_gib() -> float:
    """Peak resident memory of this process in GiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class RunSummary(Callback):
    """Print a summary line at the end of training and write it as JSON (rank 0).

    Args:
        path: where to write the JSON (the builder passes `<run folder>/summary.json`); None: print only.
        folder: the run folder (set by the builder); None: the folder of `path`.
        model: what trains, e.g. `tiny-multiview, control branch` (set by the builder).
        start: where the run starts, e.g. `started fresh`, `resumed from ep9-ba20` (set by the builder).
        context_parallel_size: ranks that share each sample (Composer counts each sample once per rank).
    """

    def __init__(
        self,
        path: Optional[str] = None,
        folder: Optional[str] = None,
        model: str = "",
        start: str = "",
        context_parallel_size: int = 1,
    ):
        self.context_parallel_size = context_parallel_size
        self.path = path
        self.folder = Path(folder) if folder else Path(path).parent if path else None
        self.model = model
        self.start = start
        self.start_batch = 0
        self.process_start = psutil.Process(os.getpid()).create_time()
        self.first_step_s: Optional[float] = None
        self.step_times: list[float] = []
        self._step_start = 0.0

    def fit_start(self, state: State, logger: Logger) -> None:
        self.start_batch = int(state.timestamp.batch)

    def batch_start(self, state: State, logger: Logger) -> None:
        # No synchronize here: the previous batch_end already waited for the device.
        self._step_start = time.perf_counter()

    def batch_end(self, state: State, logger: Logger) -> None:
        _synchronize()
        if self.first_step_s is None:
            self.first_step_s = time.time() - self.process_start
        else:
            self.step_times.append(time.perf_counter() - self._step_start)

    def summary(self, state: State) -> dict:
        world = dist.get_world_size()
        samples = int(state.timestamp.sample) / self.context_parallel_size
        global_batch = samples / max(int(state.timestamp.batch), 1)
        step_s = statistics.median(self.step_times) if self.step_times else float("nan")
        local = [peak_host_rss_gib(), self.first_step_s or float("nan"), 0.0, 0.0]
        if torch.cuda.is_available():
            local[2] = torch.cuda.max_memory_allocated() / 2**30
            local[3] = torch.cuda.max_memory_reserved() / 2**30
        per_rank = dist.all_gather_object(local)
        return {
            "ranks": world,
            "batches": int(state.timestamp.batch),
            "global_batch": global_batch,
            "timed_steps": len(self.step_times),
            "step_s": step_s,
            "samples_per_s": global_batch / step_s,
            "device_s_per_sample": world * step_s / global_batch,
            "first_step_s": max(r[1] for r in per_rank),
            "peak_alloc_gib": max(r[2] for r in per_rank),
            "peak_reserved_gib": max(r[3] for r in per_rank),
            "host_rss_gib_per_rank": max(r[0] for r in per_rank),
            "host_rss_gib_of_each_rank": [r[0] for r in per_rank],
        }

    def run_files(self, state: State, logger: Logger) -> dict[str, str]:
        """{what: path} of the files this run wrote or continued (rank 0)."""
        found = {}
        for callback in state.callbacks:
            if isinstance(callback, CheckpointSaver) and callback.saved_checkpoints:
                last = Path(callback.saved_checkpoints[-1])  # a sharded checkpoint: rank 0's file in its folder
                last = last.parent if state.fsdp_sharded_state_dict_enabled else last
                uploader = callback.remote_uploader  # an object-store save_folder: `last` was only a local stage
                found["last checkpoint"] = (
                    f"{uploader.remote_folder.rstrip('/')}/{last.name}" if uploader else str(last)
                )
            elif isinstance(callback, SampleVideos) and callback.written:
                found["samples"] = str(callback.written[-1].parent)
            elif isinstance(callback, LossPlot) and callback.written:
                found["loss plot"] = str(callback.written)
        metrics = [d for d in logger.destinations if isinstance(d, JSONLinesLogger)]
        if metrics:
            found["metrics"] = str(metrics[0].path)
        if self.folder is not None and (self.folder / "config.yaml").is_file():
            found["config"] = str(self.folder / "config.yaml")
        if self.path:
            found["summary"] = self.path
        order = ("last checkpoint", "samples", "metrics", "loss plot", "config", "summary")
        return {what: found[what] for what in order if what in found}

    def fit_end(self, state: State, logger: Logger) -> None:
        summary = self.summary(state)
        if dist.get_global_rank() != 0:
            return
        summary.update(
            model=self.model, start=self.start, start_batch=self.start_batch, files=self.run_files(state, logger)
        )
        print(
            f"run summary: {summary['batches']} batches on {summary['ranks']} ranks, "
            f"{summary['samples_per_s']:.4g} samples/s ({summary['step_s']:.3g} s/step), "
            f"first step after {summary['first_step_s']:.1f} s, peak host RSS {summary['host_rss_gib_per_rank']:.2f} "
            f"GiB per rank, peak device memory {summary['peak_alloc_gib']:.2f} GiB allocated / "
            f"{summary['peak_reserved_gib']:.2f} GiB reserved",
            flush=True,
        )
        print(self.describe(summary), flush=True)
        if self.path:
            write_json_or_yaml(self.path, summary)

    def describe(self, summary: dict) -> str:
        """`run: <model>, <start>, batches 20 -> 40, in <folder>` and `run files: <what> <path>, ...`."""
        folder = self.folder

        def short(path: str) -> str:  # inside the run folder: relative to it
            if folder is not None and Path(path).resolve().is_relative_to(folder.resolve()):
                return str(Path(path).resolve().relative_to(folder.resolve()))
            return path

        about = [part for part in (self.model, self.start) if part]
        about.append(f"batches {summary['start_batch']} -> {summary['batches']}")
        if folder is not None:
            about.append(f"in {folder}")
        files = ", ".join(f"{what} {short(path)}" for what, path in summary["files"].items())
        return f"run: {', '.join(about)}\nrun files: {files or 'none'}"


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
