"""The training memory model's pieces: trainability, dtypes, FSDP2 sharding, compute casts, the EMA.

`models/prepare.py` runs them in torchtitan's order (build on the meta device, decide what trains and each
parameter's storage dtype, `fully_shard`, then allocate each rank's shards and fill them), so no rank ever
holds a full copy of the 2B network.

- Frozen parameters (the base DiT by default) are stored in bf16, as the released checkpoints store
  them, with or without FSDP2; trainable ones are fp32 masters (`apply_dtypes`). The optimizer only sees
  the trainable ones.
- `apply_fsdp`: every base and control block is its own `fully_shard` unit, then the network root.
- `cast_params_for_compute`: without FSDP2, the casts FSDP2's mixed-precision policy does.
- `apply_compile` (optional, `model.compile_blocks`): `torch.compile` of every block, keys unchanged.
- `materialize_`: allocate this rank's shards on the device.
- `build_ema_network`: `net_ema` has every key of `net` (so exports keep the official `net_ema.*` for
  every key), but its frozen parameters *are* `net`'s (the same tensors: the EMA of a constant is the
  constant; checkpoints store them once, see models/composer_model.py) and only the trainable ones are
  fp32 copies.
- `ema_weights`: swaps the EMA's trainable weights into `net` for sampling, so `net_ema` is never run
  through FSDP itself.
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Iterator, Optional

import torch
from composer.distributed import prepare_distributed
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from ..checkpoint.keys import strip_wrapper_names
from .dtensor import local_tensor
from .lora import apply_lora, is_adapter_key, lora_of, lora_trains
from .network import Block, CosmosTransferNet

# The dtype the released checkpoints store every weight in, and the dtype we store frozen weights in.
FROZEN_DTYPE = torch.bfloat16
TRAINABLE_DTYPE = torch.float32


def set_trainable_(net: nn.Module, train_base: bool) -> list[str]:
    """requires_grad per parameter: the control branch only (the released recipe), or everything.

    Returns the names of the trainable parameters. A network with LoRA adapters (models/lora.py) trains its
    adapters, and the control branch for `target: base`.
    """
    lora = lora_of(net)
    control_branch = set(net.control_branch_parameter_names())
    for name, param in net.named_parameters():
        param.requires_grad_(lora_trains(name, lora) if lora else train_base or name in control_branch)
    return [name for name, param in net.named_parameters() if param.requires_grad]


def apply_dtypes(net: nn.Module, frozen_dtype: torch.dtype = FROZEN_DTYPE) -> None:
    """Trainable parameters in fp32, frozen ones in `frozen_dtype` (call after `set_trainable_`)."""
    for module in net.modules():
        for name, param in module.named_parameters(recurse=False):
            dtype = TRAINABLE_DTYPE if param.requires_grad else frozen_dtype
            if param.dtype != dtype:
                setattr(module, name, nn.Parameter(param.detach().to(dtype), requires_grad=param.requires_grad))


def cast_params_for_compute(net: nn.Module, param_dtype: Optional[torch.dtype]) -> None:
    """Without FSDP2: every module runs with its parameters cast to `param_dtype`, as FSDP2's
    `MixedPrecisionPolicy(param_dtype=...)` casts each unit's parameters when it gathers them.

    So one process computes exactly as one FSDP2 rank does: the frozen bf16 weights in fp32 for an fp32 run,
    every weight in bf16 for an amp_bf16 run. The stored parameters keep their dtypes (the cast is
    differentiable: gradients reach them in their own dtype). A module's parameters are cast before its
    forward (activation checkpointing's recompute included) and put back after it, also when it raises.
    """
    if param_dtype is None:
        return
    # FSDP2's policy also casts the floating-point forward inputs to param_dtype (`cast_forward_inputs`): the
    # sampler, say, gives the network inputs in the dtype of its first (frozen, bf16) parameter.
    net.register_forward_pre_hook(partial(_cast_inputs, dtype=param_dtype), with_kwargs=True)
    for module in net.modules():
        names = [name for name, param in module.named_parameters(recurse=False) if param.dtype != param_dtype]
        if names:
            module.register_forward_pre_hook(partial(_cast_parameters, names=names, dtype=param_dtype))
            module.register_forward_hook(_restore_parameters, always_call=True)


def _cast_inputs(module: nn.Module, args: tuple, kwargs: dict, dtype: torch.dtype) -> tuple[tuple, dict]:
    def cast(value):
        return value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    return tuple(cast(value) for value in args), {key: cast(value) for key, value in kwargs.items()}


def _cast_parameters(module: nn.Module, args, names: list[str], dtype: torch.dtype) -> None:
    stored = {name: module._parameters[name] for name in names}
    for name, param in stored.items():
        module._parameters[name] = param.to(dtype)  # a plain tensor for this forward, as FSDP2's unsharded ones
    module._stored_parameters = stored


def _restore_parameters(module: nn.Module, args, output) -> None:
    module._parameters.update(module.__dict__.pop("_stored_parameters", {}))


def apply_fsdp(net: CosmosTransferNet, mp_policy, reshard_after_forward: bool = True, mesh=None) -> None:
    """FSDP2 `fully_shard` on every (control) block, on each trainable top-level module, then on the root.

    FSDP2 needs one dtype per unit (torch 2.7 `_init_mp_dtypes`), so the trainable fp32 modules at the top
    level (`control_embedder`, `input_hint_block`) get units of their own beside the frozen bf16 root, and the
    fp32 LoRA adapters of a frozen block (models/lora.py) one unit per block beside the block's own.
    """
    kwargs = dict(mesh=mesh, mp_policy=mp_policy, reshard_after_forward=reshard_after_forward)
    for module in net.modules():
        if isinstance(module, Block):
            adapters = [
                m for name, m in module.named_modules() if isinstance(m, nn.Linear) and is_adapter_key(name + ".")
            ]
            if adapters:
                fully_shard(adapters, **kwargs)
            fully_shard(module, **kwargs)
    has_frozen = any(not p.requires_grad for p in net.parameters())
    for name, child in net.named_children():
        params = list(child.parameters())
        if has_frozen and params and all(p.requires_grad for p in params) and not isinstance(child, nn.ModuleList):
            fully_shard(child, **kwargs)
    fully_shard(net, **kwargs)


def apply_compile(net: nn.Module) -> None:
    """`torch.compile` every (control) block in place (`Module.compile`), so parameter names are unchanged.

    Blocks of one network share their structure, so they share one compiled graph; FSDP2's hooks stay
    outside it (they are `torch._dynamo.disable`d).
    """
    for module in net.modules():
        if isinstance(module, Block):
            module.compile()


def materialize_(net: nn.Module, device: torch.device) -> None:
    """Allocate the (local shards of the) meta parameters on `device`; values are left unset."""
    net.to_empty(device=device)


def _parameter_owners(module: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """(full name, owning module, attribute name) of every parameter, duplicates included."""
    for module_name, owner in module.named_modules(remove_duplicate=False):
        for name, _ in owner.named_parameters(recurse=False):
            yield (f"{module_name}.{name}" if module_name else name), owner, name


@torch.no_grad()
def build_ema_network(net: CosmosTransferNet) -> CosmosTransferNet:
    """`net_ema`: the same keys as `net`; frozen parameters shared with `net`, trainable ones copied in fp32.

    `net` must be materialised (plain tensors or FSDP2 shards). The copies keep `net`'s sharding (a
    DTensor clone), so the EMA update is local to each rank.
    """
    with torch.device("meta"):
        net_ema = CosmosTransferNet(net.config)
        if lora_of(net):  # the same adapters, so that the keys match
            apply_lora(net_ema, lora_of(net))
    net_params = dict(net.named_parameters())
    for name, owner, attribute in _parameter_owners(net_ema):
        source = net_params[name]
        if source.requires_grad:
            copy = nn.Parameter(source.detach().to(TRAINABLE_DTYPE, copy=True), requires_grad=False)
        else:
            copy = source  # the same Parameter: no second copy of the frozen base
        setattr(owner, attribute, copy)
    return net_ema


def trainable_pairs(net: nn.Module, net_ema: nn.Module) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, net parameter, net_ema parameter) for every trainable parameter of `net`, matched by name
    without the parts that wrappers insert (activation checkpointing, torch.compile), whichever is wrapped."""
    ema_params = {strip_wrapper_names(name): p for name, p in net_ema.named_parameters(remove_duplicate=False)}
    pairs = []
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        name = strip_wrapper_names(name)
        if name not in ema_params:
            raise KeyError(f"net_ema has no parameter {name!r}; net and net_ema must be the same network")
        pairs.append((name, param, ema_params[name]))
    return pairs


@contextlib.contextmanager
def ema_weights(net: nn.Module, net_ema: Optional[nn.Module]) -> Iterator[nn.Module]:
    """Run `net` with the EMA weights: their trainable shards are swapped in, and back on exit.

    `net_ema` shares the frozen weights, so this gives exactly the EMA network, through `net`'s own FSDP2
    units (`net_ema` has none). Each rank swaps its local shards; nothing is communicated.
    """
    if net_ema is None:
        yield net
        return
    pairs = [(local_tensor(param), local_tensor(ema)) for _, param, ema in trainable_pairs(net, net_ema)]

    def swap() -> None:
        with torch.no_grad():
            for param, ema in pairs:
                saved = param.detach().clone()
                param.copy_(ema)
                ema.copy_(saved)

    reshard(net)  # FSDP2 keeps the root unsharded after a forward: drop those copies first
    swap()
    try:
        yield net
    finally:
        reshard(net)
        swap()


def reshard(net: nn.Module) -> None:
    """Drop FSDP2's unsharded copies (it keeps the root's after a forward, in the compute dtype): every parameter
    is its stored shard again."""
    for module in net.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


@contextlib.contextmanager
def composer_keeps_our_sharding() -> Iterator[None]:
    """While the Trainer is built, Composer checks our FSDP2 sharding instead of sharding again.

    Composer 0.32.1's Trainer shards the model itself (`State._apply_fsdp` -> `parallelize_composer_model`);
    its meta-device path then allocates with `to_empty(device='cuda')` (composer/distributed/param_init.py),
    which cannot run on a CPU and would allocate every shard uninitialised, and `fully_shard` cannot be
    applied twice. We shard before the Trainer is built (the optimizer is then built over the shards),
    so Composer's step is replaced, for the Trainer's construction only, by a check that it was done.
    """

    def check_sharded(model: nn.Module, optimizer=None, config=None, precision=None) -> None:
        unsharded = [name for name, p in model.named_parameters() if not isinstance(p, DTensor)]
        if unsharded:
            raise RuntimeError(f"parameters not sharded by apply_fsdp before the Trainer: {unsharded[:5]}")

    original = prepare_distributed.parallelize_composer_model
    prepare_distributed.parallelize_composer_model = check_sharded
    try:
        yield
    finally:
        prepare_distributed.parallelize_composer_model = original


def apply_context_parallel(net: nn.Module, context_parallel) -> None:
    """Run `net` on this rank's share of each sample's frames (see models/context_parallel.py)."""
    net.context_parallel = context_parallel
