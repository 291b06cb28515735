"""The training network, prepared in one order for every run: one process or FSDP2, LoRA or not, CP or not.

torchtitan's order (torchtitan/train.py: meta build, parallelize, `to_empty`, `init_weights`):

1. build on the meta device (shapes only, no memory);
2. LoRA adapters (`models/lora.py`), before anything wraps the modules they go into;
3. trainability (`parallelize.set_trainable_`): the one place that decides what trains;
4. dtypes: trainable fp32, frozen bf16 as the released checkpoints store them (`parallelize.apply_dtypes`);
5. FSDP2 (`parallelize.apply_fsdp`) when configured; without it every module computes with its parameters
   cast as FSDP2's mixed-precision policy casts them (`parallelize.cast_params_for_compute`), so one process
   and one FSDP2 rank train the same model;
6. context parallelism, 7. `torch.compile` of the blocks;
8. materialise: each rank allocates its own shards (the whole network without FSDP2);
9. weights, into those shards: a consolidated file (mmapped, each rank reads its slices); or a fresh
   initialisation module by module (`CosmosTransferNet.init_weights`, `lora.init_adapters_`), then the
   `base_load_path` base; or zeros when Composer loads a checkpoint next. No rank holds a whole fresh network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from composer.core.precision import Precision
from composer.distributed.fsdp2 import create_mixed_precision_policy
from composer.utils.parallelism import FSDP2Config

from ..checkpoint.load import load_base_into_network, load_consolidated_into_network
from .context_parallel import context_parallel_groups
from .lora import BaseWeights, LoraSettings, apply_lora, init_adapters_, lora_of
from .network import CosmosTransferNet
from .parallelize import (
    apply_compile,
    apply_context_parallel,
    apply_dtypes,
    apply_fsdp,
    cast_params_for_compute,
    materialize_,
    set_trainable_,
)
from .presets import NetworkConfig

# Without FSDP2 the parameters are cast as FSDP2's default policy casts them (FSDP2Config.mixed_precision).
ONE_PROCESS_MIXED_PRECISION = "DEFAULT"


@dataclass(frozen=True)
class WeightSource:
    """Where the prepared network's weights come from: at most one of `consolidated` and `checkpoint_next`.

    Neither: a fresh initialisation (then the `base` DiT over it, when given).
    """

    consolidated: Optional[str] = None  # a local consolidated file (`load_path`)
    strict: bool = True  # `load_strict`
    allow_shape_mismatch: bool = False  # `load_allow_shape_mismatch`
    base: Optional[str] = None  # a local Predict2.5 checkpoint whose base DiT starts the run (`base_load_path`)
    checkpoint_next: bool = False  # Composer loads a checkpoint into the network next (autoresume, load_path)
    consolidated_name: Optional[str] = None  # the files as the config names them, for messages
    base_name: Optional[str] = None

    def __post_init__(self) -> None:
        if self.consolidated and self.checkpoint_next:
            raise ValueError("a network starts from a consolidated file or from a Composer checkpoint, not both")


def prepare_training_network(
    config: NetworkConfig,
    *,
    lora: Optional[LoraSettings],
    train_base: bool,
    precision: str,
    fsdp: Optional[FSDP2Config],
    weights: WeightSource,
    device: torch.device,
    context_parallel_size: int = 1,
    compile_blocks: bool = False,
) -> CosmosTransferNet:
    """The network laid out for training and filled with its starting weights (see the module docstring).

    `lora`: the adapters' settings or None; `train_base`: the whole network trains (else the control branch);
    `precision`: Composer's (`fp32`, `amp_bf16`); `fsdp`: FSDP2's config, None for one process without it.
    With `context_parallel_size > 1` the process group must exist (its groups are made here).
    """
    with torch.device("meta"):
        net = CosmosTransferNet(config)
        if lora is not None:
            apply_lora(net, lora)
    set_trainable_(net, train_base)
    apply_dtypes(net)
    if fsdp is not None:
        mp_policy = create_mixed_precision_policy(Precision(precision), fsdp.mixed_precision)
        apply_fsdp(net, mp_policy, fsdp.reshard_after_forward, fsdp.device_mesh)
    else:
        one_process_policy = create_mixed_precision_policy(Precision(precision), ONE_PROCESS_MIXED_PRECISION)
        cast_params_for_compute(net, one_process_policy.param_dtype)
    if context_parallel_size > 1:
        apply_context_parallel(net, context_parallel_groups(context_parallel_size))
    if compile_blocks:
        apply_compile(net)
    materialize_(net, device)
    _fill_weights(net, weights)
    return net


@torch.no_grad()
def _fill_weights(net: CosmosTransferNet, weights: WeightSource) -> None:
    """Step 9: every rank fills its own shards (`net` holds uninitialised memory until then)."""
    adapted = lora_of(net) is not None
    # Files and the control-from-base copy use the official names: an adapted network is seen without adapters.
    official = BaseWeights(net) if adapted else net
    if weights.checkpoint_next:
        for tensor in net.state_dict().values():  # Composer's checkpoint load overwrites every one
            tensor.detach().zero_()
        return
    fresh = weights.consolidated is None or not weights.strict or weights.allow_shape_mismatch
    if fresh:  # a lenient load may leave weights out: those keep their fresh draw
        net.init_weights(official.state_dict())
    if adapted:
        init_adapters_(net)
    if weights.consolidated is not None:
        load_consolidated_into_network(
            official,
            weights.consolidated,
            strict=weights.strict,
            allow_shape_mismatch=weights.allow_shape_mismatch,
            source=weights.consolidated_name,
        )
    elif weights.base is not None:
        load_base_into_network(official, weights.base, source=weights.base_name)
