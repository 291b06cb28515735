"""Power EMA of the trained network, as in the released Cosmos recipe (`EMAConfig(enabled=True, rate=0.10)`).

Upstream (`text2world_model_rectified_flow.py`) keeps a second network `net_ema` and, after every
optimizer step, updates it with

    beta = ema_beta(iteration) = 0                                  if iteration < 1
                               = (1 - 1 / (iteration + 1)) ** (gamma + 1)   otherwise
    net_ema = beta * net_ema + (1 - beta) * net                     (fp32, `_foreach` ops)

where `gamma` is the EDM2 power-EMA exponent of the relative width `sigma_rel` (0.1 in the recipe),
and `iteration` is the 0-based index of the step that was just taken: the imaginaire trainer calls
`optimizer.step(); scheduler.step(); model.on_before_zero_grad(..., iteration)` and increments
`iteration` only afterwards. The first update (iteration 0) therefore has beta = 0 and copies the
network, which is why the EMA restarts from the loaded weights in post-training.

In Composer the update runs at `Event.BATCH_END`, which fires after `optimizer.step()` and after the
timestamp has advanced, so `state.timestamp.batch` counts the steps taken including this one and the
upstream iteration is `state.timestamp.batch - 1`.
"""

from __future__ import annotations

import numpy as np
import torch
from composer.core import Callback, State
from composer.loggers import Logger
from torch import nn
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint.keys import EMA_PREFIX
from ..models.dtensor import local_tensor
from ..models.parallelize import trainable_pairs

__all__ = ["PowerEMA", "power_ema_beta", "power_ema_gamma", "update_ema_"]


def power_ema_gamma(sigma_rel: float) -> float:
    """The power-EMA exponent gamma of a relative EMA width `sigma_rel` (EDM2, Karras et al. 2024).

    gamma is the largest real root of x^3 + 7x^2 + (16 - sigma_rel^-2) x + (12 - sigma_rel^-2), which is
    (x + 2)^2 (x + 3) = (x + 1) / sigma_rel^2, i.e. sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))).
    sigma_rel = 0.1 gives gamma = 6.9372.
    """
    if sigma_rel <= 0:
        raise ValueError(f"sigma_rel must be positive, got {sigma_rel}")
    inv_sq = sigma_rel**-2
    roots = np.roots([1.0, 7.0, 16.0 - inv_sq, 12.0 - inv_sq])
    real_roots = roots[np.abs(roots.imag) < 1e-9].real
    if real_roots.size == 0 or real_roots.max() <= -1.0:
        raise ValueError(f"sigma_rel={sigma_rel} is too large for a power EMA (no exponent gamma > -1 exists)")
    return float(real_roots.max())


def power_ema_beta(iteration: int, gamma: float) -> float:
    """The EMA decay after the optimizer step with 0-based index `iteration` (upstream `ema_beta`)."""
    if iteration < 1:
        return 0.0
    return (1.0 - 1.0 / (iteration + 1)) ** (gamma + 1.0)


@torch.no_grad()
def update_ema_(net: nn.Module, net_ema: nn.Module, beta: float) -> None:
    """net_ema <- beta * net_ema + (1 - beta) * net, in fp32, over the parameters of `net` that train.

    Parameters are matched by name, without the parts wrappers insert (`trainable_pairs`,
    `checkpoint.keys.strip_wrapper_names`). Frozen parameters (requires_grad=False in `net`)
    are skipped: the EMA of a constant is the constant, and `net_ema` shares `net`'s frozen weights (see
    `build_ema_network`), so skipping them gives exactly what upstream's update over all parameters gives,
    without touching the 2B frozen base every step.

    Works on plain tensors and on FSDP2 DTensors: both networks are sharded the same way, so the
    update is purely local, shard by shard, with no communication.
    """
    targets: list[torch.Tensor] = []
    sources: list[torch.Tensor] = []
    for name, param, ema_param in trainable_pairs(net, net_ema):
        if isinstance(param, DTensor) != isinstance(ema_param, DTensor) or (
            isinstance(param, DTensor) and param.placements != ema_param.placements
        ):
            raise ValueError(f"{name!r} is sharded differently in net and net_ema; shard both the same way")
        target, source = local_tensor(ema_param), local_tensor(param.detach())
        if target.dtype != torch.float32:
            raise TypeError(f"the EMA is kept in fp32, but {EMA_PREFIX}{name} is {target.dtype}")
        if target.shape != source.shape:
            raise ValueError(f"{name!r}: net_ema shard {tuple(target.shape)} != net shard {tuple(source.shape)}")
        targets.append(target)
        sources.append(source.float())
    if targets:
        # lerp_(end, weight): target + weight * (end - target) = beta * target + (1 - beta) * end.
        # With weight 1 (beta = 0, the first update) torch's lerp returns `end` exactly: a copy.
        torch._foreach_lerp_(targets, sources, 1.0 - beta)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


class PowerEMA(Callback):
    """Power EMA of `model.net` into `model.net_ema`, updated after every optimizer step.

    Args:
        sigma_rel: the relative EMA width (0.1 in the released recipe, gamma = 6.9372).

    Nothing is saved by this callback: `net_ema` is a submodule of the model, so Composer's
    checkpoints (sharded DCP under FSDP2) save and restore it with the model state, and the
    iteration is `state.timestamp.batch`, which Composer restores too. After an autoresume the next
    update therefore uses the same beta as an uninterrupted run. A post-training run that starts from
    released weights starts at batch 0, so its first update (beta = 0) restarts the EMA from them.
    """

    def __init__(self, sigma_rel: float = 0.1):
        self.sigma_rel = sigma_rel
        self.gamma = power_ema_gamma(sigma_rel)

    def _networks(self, state: State) -> tuple[nn.Module, nn.Module]:
        model = _unwrap(state.model)
        net_ema = getattr(model, "net_ema", None)
        if net_ema is None:
            raise AttributeError(
                f"PowerEMA needs the model to have a `net_ema` network beside `net`, but "
                f"{type(model).__name__} has none; build the model with the EMA enabled or remove the "
                f"power_ema callback"
            )
        return model.net, net_ema

    def fit_start(self, state: State, logger: Logger) -> None:
        # Fail at the start of training, not after the first step.
        self._networks(state)

    def batch_end(self, state: State, logger: Logger) -> None:
        # BATCH_END follows optimizer.step() and the timestamp increment: subtract this step.
        iteration = int(state.timestamp.batch) - 1
        beta = power_ema_beta(iteration, self.gamma)
        net, net_ema = self._networks(state)
        update_ema_(net, net_ema, beta)
        logger.log_metrics({"ema/beta": beta})
