"""Reseed torch's RNG from (seed, batch, data-parallel rank) at the start of every batch.

The training noise, sigmas, conditioning-frame counts and text dropout then depend only on the step,
so a run resumed from any checkpoint draws exactly what the uninterrupted run drew. Composer restores
its saved RNG state only at epoch boundaries when the dataset resumes itself (Streaming does), so the
global RNG alone would diverge after a mid-epoch resume.

The ranks of a context-parallel group share one sample, so they share its draws too: the seed takes the
data-parallel rank (global rank // context_parallel_size), which is the global rank without context parallelism.
"""

from __future__ import annotations

import torch
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist


class StepSeed(Callback):
    def __init__(self, seed: int, context_parallel_size: int = 1):
        self.seed = seed
        self.context_parallel_size = context_parallel_size

    def batch_start(self, state: State, logger: Logger) -> None:
        step = int(state.timestamp.batch)
        data_parallel_rank = dist.get_global_rank() // self.context_parallel_size
        torch.manual_seed((self.seed * 1_000_003 + step) * 4099 + data_parallel_rank)
