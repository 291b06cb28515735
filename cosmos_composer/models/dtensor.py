"""Plain tensors and FSDP2 DTensor shards read and written alike: the one place that knows about DTensors.

A leaf: it imports nothing from the project, so the checkpoint loader, the optimizer, the objective, the
EMA and the network preparation all use it without depending on one another.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The local shard of an FSDP2 DTensor (a view that shares its storage), or the tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP2 DTensor shard (a collective: call on every rank), or the tensor itself."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def local_slice(target: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """The part of the full tensor `full` that this rank holds of `target` (a DTensor or a plain tensor)."""
    if not isinstance(target, DTensor):
        return full
    shape, offset = compute_local_shape_and_global_offset(target.shape, target.device_mesh, target.placements)
    index = tuple(slice(start, start + size) for start, size in zip(offset, shape))
    return full[index]


@torch.no_grad()
def copy_full_into_(target: torch.Tensor, full: torch.Tensor) -> None:
    """Copy a full (e.g. mmapped) tensor into `target`; a DTensor takes only its own shard, cast on the fly."""
    local_tensor(target).copy_(local_slice(target, full))


@torch.no_grad()
def draw_into_(target: torch.Tensor, draw: Callable[[torch.Tensor], object]) -> None:
    """Fill `target` (a plain tensor or a DTensor shard) with `draw`, an `nn.init` function, as drawn on the
    whole tensor in fp32 from the seeded CPU generator: the same values for every sharding and every device,
    and never more than this one tensor whole in memory."""
    if local_tensor(target).is_meta:  # shapes only (a meta build): nothing to draw
        return
    full_fp32 = torch.empty(target.shape, dtype=torch.float32)
    draw(full_fp32)
    copy_full_into_(target, full_fp32)
