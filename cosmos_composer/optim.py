"""The released recipe's optimizer, learning-rate schedule and gradient clipping.

Their settings and the recipe's values are `OptimizerConfig` and `SchedulerConfig` below (the training config's
`optimizer:` and `scheduler:` sections); the functions here take those fields as keywords, and a field not given
is the dataclass's default.

- `build_optimizer`: AdamW over the trainable parameters, one param group, weight decay on all of
  them (biases and norms included), as upstream's `get_base_optimizer`.
- `LambdaLinearSchedule`: upstream's `LambdaLinearScheduler` multiplier
  (`imaginaire/functional/lr_scheduler.py`) as a Composer scheduler.
- `FiniteGradClip`: upstream's `GradClip(force_finite=True)` callback: NaN/Inf gradient entries
  are set to 0, then the total gradient norm is clipped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Union

import torch
from composer.core import Algorithm, Event, State
from composer.loggers import Logger
from torch import nn
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard

from .models.dtensor import local_tensor

__all__ = [
    "FiniteGradClip",
    "LambdaLinearSchedule",
    "OptimizerConfig",
    "SchedulerConfig",
    "build_optimizer",
    "clip_finite_grad_norm_",
    "lambda_linear_multiplier",
]


# ----------------------------------------------------------------------------- the recipe's settings
@dataclass
class OptimizerConfig:
    """AdamW as in the released recipes: one param group, the weight decay on every trainable weight.

    The defaults are the multiview recipe's (upstream's transfer2_auto_multiview_post_train_example).
    """

    lr: float = 8.63e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 1e-3


@dataclass
class SchedulerConfig:
    """The LambdaLinear multiplier: warm-up f_start -> f_max, then linear toward f_min over cycle_length.

    The defaults are the multiview recipe's (upstream lr_scheduler.py's LambdaLinearScheduler as configured by
    transfer2_auto_multiview_post_train_example); the single-view recipe warms up 100 steps of a 5000-step cycle.
    """

    warm_up_steps: int = 1000
    f_start: float = 1e-6
    f_max: float = 0.5
    f_min: float = 0.2
    cycle_length: int = 100_000


# ----------------------------------------------------------------------------- optimizer
def build_optimizer(
    model_or_named_params: Union[nn.Module, Iterable[tuple[str, nn.Parameter]]],
    fused: bool = False,
    **settings: Any,
) -> torch.optim.AdamW:
    """torch AdamW over the parameters that require grad, in a single param group.

    `settings`: `OptimizerConfig`'s fields (lr, betas, eps, weight_decay); the others are its defaults.
    Upstream applies the weight decay to every trainable parameter, biases included (one group), so
    this does too. Frozen parameters (the base DiT by default) are left out of the optimizer, so only
    the trainable ones have optimizer state. `fused=True` (CUDA) runs the whole update in one kernel.
    """
    recipe = OptimizerConfig(**settings)
    if isinstance(model_or_named_params, nn.Module):
        named_params = model_or_named_params.named_parameters()
    else:
        named_params = model_or_named_params
    params = [param for _, param in named_params if param.requires_grad]
    if not params:
        raise ValueError("build_optimizer: no parameter requires grad, so there is nothing to train")
    return torch.optim.AdamW(
        params,
        lr=recipe.lr,
        betas=tuple(recipe.betas),
        eps=recipe.eps,
        weight_decay=recipe.weight_decay,
        fused=fused or None,
    )


# ----------------------------------------------------------------------------- learning-rate schedule
def lambda_linear_multiplier(step: int, **settings: Any) -> float:
    """The learning-rate multiplier of upstream's `LambdaLinearScheduler` (one cycle) at `step`.

    `settings`: `SchedulerConfig`'s fields (warm_up_steps, f_start, f_max, f_min, cycle_length); the others are
    its defaults.

    - step < warm_up_steps:              f_start + (f_max - f_start) * step / warm_up_steps
    - warm_up_steps <= step <= cycle_length: f_min + (f_max - f_min) * (cycle_length - step) / (cycle_length - warm_up_steps)

    so the multiplier reaches f_max at the end of the warm-up and f_min at `cycle_length` (the cycle
    length includes the warm-up). Past `cycle_length` it stays at f_min. Upstream has no value there:
    its `find_in_interval` returns None and `schedule` raises a TypeError, so an upstream run never gets
    that far (the recipes stop at 5000 steps with cycles of 5000 or 100,000).
    """
    schedule = SchedulerConfig(**settings)
    if step < schedule.warm_up_steps:
        return (schedule.f_max - schedule.f_start) / schedule.warm_up_steps * step + schedule.f_start
    if step > schedule.cycle_length:
        return schedule.f_min
    span = schedule.cycle_length - schedule.warm_up_steps
    return schedule.f_min + (schedule.f_max - schedule.f_min) * (schedule.cycle_length - step) / span


class LambdaLinearSchedule:
    """`lambda_linear_multiplier` as a Composer scheduler (a callable `(state, ssr) -> multiplier`).

    Upstream wraps the multiplier in `torch.optim.lr_scheduler.LambdaLR` and calls `scheduler.step()`
    after each optimizer step, so the optimizer step with 0-based index i uses multiplier(i).
    Composer instead evaluates its schedulers once when it compiles them (before batch 0) and then
    after every batch *before* advancing the timestamp, so at the end of batch i it sees
    `state.timestamp.batch == i` while the value it returns is used by batch i + 1. This schedule
    therefore returns multiplier(batch + 1) from those end-of-batch calls and multiplier(batch) from
    the compile-time call, so that batch i trains with multiplier(i), exactly as upstream.

    It keeps no state of its own: the step comes from `state.timestamp`, which Composer checkpoints,
    and on resume the learning rate of the next batch comes back with the optimizer state (tested in
    tests/test_recipe.py). `ssr` (Composer's scale_schedule_ratio) stretches the warm-up and the cycle.
    Pass it to `Trainer(schedulers=...)`, not to `Trainer.fit(schedulers=...)` after some training:
    there Composer recompiles while `state.schedulers` is not empty, and that one call would be a step
    early.
    """

    def __init__(self, **settings: Any):
        """`settings`: `SchedulerConfig`'s fields; the others are its defaults."""
        self.settings = SchedulerConfig(**settings)
        if not 0 <= self.settings.warm_up_steps < self.settings.cycle_length:
            raise ValueError(
                f"need 0 <= warm_up_steps < cycle_length, got {self.settings.warm_up_steps} and "
                f"{self.settings.cycle_length}"
            )

    def __call__(self, state: State, ssr: float = 1.0) -> float:
        batch = int(state.timestamp.batch)
        # Composer assigns `state.schedulers` only after compiling them: while it is empty this is
        # the compile-time call, which sets the learning rate of the current batch.
        step = batch if len(state.schedulers) == 0 else batch + 1
        settings = dataclasses.asdict(self.settings)
        settings.update(
            warm_up_steps=round(self.settings.warm_up_steps * ssr), cycle_length=round(self.settings.cycle_length * ssr)
        )
        return lambda_linear_multiplier(step, **settings)


# ----------------------------------------------------------------------------- gradient clipping
def _global_count(local_count: torch.Tensor, like: Optional[DTensor]) -> torch.Tensor:
    """Sum a per-shard count over the ranks that hold different shards (not over replicas)."""
    if like is None:
        return local_count
    placements = [Partial("sum") if isinstance(p, Shard) else Replicate() for p in like.placements]
    return DTensor.from_local(local_count, like.device_mesh, placements).full_tensor()


@torch.no_grad()
def clip_finite_grad_norm_(parameters: Iterable[torch.Tensor], max_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Set NaN/Inf gradient entries to 0, then clip the total gradient norm to `max_norm`.

    Returns (total norm before clipping, number of non-finite entries), both over all ranks when the
    gradients are FSDP2 DTensors. The norm is computed after the non-finite entries are zeroed.
    """
    params = [p for p in parameters if p.grad is not None]
    if not params:
        zero = torch.zeros(())
        return zero, zero
    grads = [p.grad for p in params]

    # Zero the non-finite entries in place, on the local shards (views of the DTensor storage).
    local_grads = [local_tensor(g) for g in grads]
    non_finite = torch.stack([torch.logical_not(torch.isfinite(g)).sum() for g in local_grads]).sum()
    for g in local_grads:
        torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0)
    first_dtensor = next((g for g in grads if isinstance(g, DTensor)), None)
    non_finite = _global_count(non_finite, first_dtensor)

    # clip_grad_norm_ in two steps, so that the norm of DTensor gradients is made a plain tensor (all
    # ranks agree on it) before the clip coefficient is formed, as torchtitan does.
    total_norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    if isinstance(total_norm, DTensor):
        total_norm = total_norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total_norm)
    return total_norm, non_finite


class FiniteGradClip(Algorithm):
    """Upstream's `GradClip(clip_norm=0.1, force_finite=True)` as a Composer algorithm.

    Runs on `Event.AFTER_TRAIN_BATCH`, which Composer fires after the backward passes of all
    microbatches (and after unscaling fp16 gradients) and before `optimizer.step()`, the Event that
    Composer's own `GradientClipping` uses. Logs `grad/norm` (the total norm before clipping) and
    `grad/non_finite_count`.
    """

    def __init__(self, max_norm: float = 0.1):
        self.max_norm = max_norm

    def match(self, event: Event, state: State) -> bool:
        return event == Event.AFTER_TRAIN_BATCH

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        total_norm, non_finite = clip_finite_grad_norm_(state.model.parameters(), self.max_norm)
        # One device-to-host copy for both values.
        norm, count = torch.stack([total_norm.double(), non_finite.double()]).tolist()
        logger.log_metrics({"grad/norm": norm, "grad/non_finite_count": int(count)})
