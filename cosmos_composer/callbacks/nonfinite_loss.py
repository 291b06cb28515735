"""Stop a diverged run: a non-finite training loss ends it with a non-zero exit, naming the batch and samples.

Upstream steps over such batches silently (its `GradClip(force_finite=True)` zeroes the NaN/Inf gradients and
the optimizer steps on), which is how a run with `lr=1e3` used to save NaN checkpoints and exit 0. Here the
run stops at the first non-finite loss, before the optimizer step and before any checkpoint of that step, unless
`max_nonfinite_steps` allows that many in a row (then the step runs as upstream's does).

All ranks agree (one all-reduce per batch), so every rank stops at the same batch.

The eval loss alike: a sample of the eval set whose loss is not finite (non-finite latents, say) stops the run
naming it, instead of every `metrics/eval/*` becoming NaN with exit 0.
"""

from __future__ import annotations

import logging

import torch
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The training loss was not finite on more batches in a row than `max_nonfinite_steps` allows."""


def _loss_tensor(loss) -> torch.Tensor:
    if isinstance(loss, dict):
        loss = loss.get("total", next(iter(loss.values())))
    if isinstance(loss, (list, tuple)):
        loss = torch.stack([torch.as_tensor(x).float().sum() for x in loss]).sum()
    return torch.as_tensor(loss).detach().float()


class NonFiniteLossGuard(Callback):
    def __init__(self, max_nonfinite_steps: int = 0):
        self.max_nonfinite_steps = max_nonfinite_steps
        self.in_a_row = 0

    def after_train_batch(self, state: State, logger: Logger) -> None:
        loss = _loss_tensor(state.loss)
        flag = torch.tensor([0.0 if bool(torch.isfinite(loss).all()) else 1.0], device=loss.device)
        dist.all_reduce(flag, reduce_operation="MAX")
        if flag.item() == 0:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        names = state.batch.get("sample_name", []) if isinstance(state.batch, dict) else []
        local = [] if bool(torch.isfinite(loss).all()) else list(names)
        samples = [name for rank_names in dist.all_gather_object(local) for name in rank_names]
        batch = int(state.timestamp.batch) + 1  # 1-based, as the console counts: this batch is not counted yet
        where = f"batch {batch}" + (f" (samples: {', '.join(map(str, samples))})" if samples else "")
        if self.in_a_row <= self.max_nonfinite_steps:
            log.warning(
                "non-finite training loss at %s: stepping over it (%d of max_nonfinite_steps=%d in a row)",
                where,
                self.in_a_row,
                self.max_nonfinite_steps,
            )
            return
        raise TrainingDiverged(
            f"the training loss is not finite at {where}; the run stops here, without a checkpoint "
            f"of this step. Usual causes: a learning rate too high (optimizer.lr), or a sample with non-finite "
            f"latents. To step over up to N such batches in a row, as upstream does, set max_nonfinite_steps=N."
        )

    def eval_after_forward(self, state: State, logger: Logger) -> None:
        """Stop at an eval microbatch holding a sample whose loss is not finite at some eval sigma, naming it.

        After each eval forward, where `state.outputs` and `state.batch` are the same microbatch's."""
        if not isinstance(state.outputs, dict) or not state.outputs:  # CosmosTransferModel: {sigma: per-sample loss}
            return
        losses_S_B = torch.stack([torch.as_tensor(loss).detach().float() for loss in state.outputs.values()])
        nonfinite_B = ~torch.isfinite(losses_S_B).all(dim=0)
        flag = torch.tensor([1.0 if bool(nonfinite_B.any()) else 0.0], device=losses_S_B.device)
        dist.all_reduce(flag, reduce_operation="MAX")
        if flag.item() == 0:
            return
        names = state.batch.get("sample_name", []) if isinstance(state.batch, dict) else []
        local = [str(names[index]) for index in nonfinite_B.nonzero().flatten().tolist() if index < len(names)]
        samples = [name for rank_names in dist.all_gather_object(local) for name in rank_names]
        raise TrainingDiverged(
            f"the eval loss is not finite for the eval sample(s) {', '.join(samples) or '(unnamed)'}; the run stops "
            "here rather than log NaN metrics. Check their latents (convert them again) or leave them out of "
            "eval_loader.dataset"
        )
