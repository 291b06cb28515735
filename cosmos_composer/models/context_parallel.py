"""Context parallelism, Ulysses style: one sample's tokens split over a group of ranks.

Each rank of a context-parallel (CP) group holds the whole sample's inputs (latents are small) and runs the
network on its own contiguous share of the latent frames: rank r of a group of n takes frames
[r T/n, (r+1) T/n) of all T latent frames (views one after the other in multiview). Per-token work (patch
embedding, adaLN modulation, cross-attention, MLP, the control hints, the final layer) needs nothing from
the other ranks. Self-attention does: before it, an all-to-all trades heads for tokens, so each rank
attends over the full sequence for num_heads / n of the heads; a second all-to-all trades them back.
At the end the ranks' velocity frames are gathered, so the caller (loss, sampler) sees the full velocity
on every rank and runs unchanged.

Gradients: the gather's backward sums the ranks' gradients of their (identical) full losses and keeps each
rank's frames, so a CP group's parameter gradients add up to CP times one sample's gradient; FSDP2's
average over all (data-parallel x context-parallel) ranks then gives exactly the data-parallel mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


def _all_to_all(x_n_rest: torch.Tensor, group) -> torch.Tensor:
    """Chunk j of dim 0 goes to rank j of `group`; chunk j of the result came from rank j."""
    x_n_rest = x_n_rest.contiguous()  # the collective reads and writes dense memory
    out = torch.empty_like(x_n_rest)
    dist.all_to_all_single(out, x_n_rest, group=group)
    return out


class _AllToAll(torch.autograd.Function):
    """`_all_to_all`, differentiable: its adjoint is the same exchange of the gradient."""

    @staticmethod
    def forward(ctx, x_n_rest: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return _all_to_all(x_n_rest, group)

    @staticmethod
    def backward(ctx, grad_n_rest: torch.Tensor):
        return _all_to_all(grad_n_rest, ctx.group), None


class _GatherFrames(torch.autograd.Function):
    """All ranks' frame slices along `dim`, concatenated; the backward sums the ranks' gradients."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, group, dim: int, rank: int) -> torch.Tensor:
        ctx.group, ctx.dim, ctx.rank, ctx.frames = group, dim, rank, local.shape[dim]
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, local.contiguous(), group=group)
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad_full: torch.Tensor):
        grad_full = grad_full.contiguous()
        dist.all_reduce(grad_full, group=ctx.group)  # every rank's loss depends on every rank's frames
        return grad_full.narrow(ctx.dim, ctx.rank * ctx.frames, ctx.frames), None, None, None


@dataclass(frozen=True)
class ContextParallel:
    """This rank's place in its context-parallel group."""

    group: object  # a torch.distributed ProcessGroup
    size: int
    rank: int

    def frame_range(self, num_frames: int) -> tuple[int, int]:
        if num_frames % self.size:
            raise ValueError(
                f"context_parallel_size={self.size} does not divide the sample's {num_frames} latent frames; "
                f"use a size that divides {num_frames} (and the number of heads)"
            )
        share = num_frames // self.size
        return self.rank * share, (self.rank + 1) * share

    def gather_frames(self, local: torch.Tensor, dim: int) -> torch.Tensor:
        return _GatherFrames.apply(local, self.group, dim, self.rank)

    def heads_to_sequence(self, x_B_H_l_d: torch.Tensor) -> torch.Tensor:
        """[B, H, local tokens, d] -> [B, H / n, all tokens, d] (tokens in the sample's order)."""
        B, H, L_local, d = x_B_H_l_d.shape
        n = self.size
        x_n_B_h_l_d = x_B_H_l_d.reshape(B, n, H // n, L_local, d).transpose(0, 1)
        y_n_B_h_l_d = _AllToAll.apply(x_n_B_h_l_d, self.group)  # now chunk j holds rank j's tokens
        return y_n_B_h_l_d.permute(1, 2, 0, 3, 4).reshape(B, H // n, n * L_local, d)

    def sequence_to_heads(self, y_B_h_L_d: torch.Tensor) -> torch.Tensor:
        """The inverse of `heads_to_sequence`: [B, H / n, all tokens, d] -> [B, H, local tokens, d]."""
        B, h, L, d = y_B_h_L_d.shape
        n = self.size
        y_n_B_h_l_d = y_B_h_L_d.reshape(B, h, n, L // n, d).permute(2, 0, 1, 3, 4)
        x_n_B_h_l_d = _AllToAll.apply(y_n_B_h_l_d, self.group)  # now chunk j holds head group j
        return x_n_B_h_l_d.transpose(0, 1).reshape(B, n * h, L // n, d)


def valid_context_parallel_sizes(num_heads: int, world_size: int, num_frames: int = 0) -> list[int]:
    """The CP sizes, smallest first, that split the heads and the ranks (and `num_frames`, a sample's token
    frames, when given): each rank takes a whole share of each."""
    return [
        n
        for n in range(1, num_heads + 1)
        if num_heads % n == 0 and world_size % n == 0 and (num_frames == 0 or num_frames % n == 0)
    ]


def check_context_parallel_size(size: int, num_heads: int, world_size: int) -> None:
    """Refuse a CP size that cannot split the heads or the ranks, naming the sizes that can."""
    if size < 1 or num_heads % size or world_size % size:
        valid = valid_context_parallel_sizes(num_heads, world_size)
        raise ValueError(
            f"context_parallel_size={size} must divide the network's {num_heads} attention heads and the "
            f"{world_size} processes; valid sizes here: {valid}"
        )


def context_parallel_groups(size: int) -> ContextParallel:
    """Split the world into groups of `size` consecutive ranks (the ranks Streaming's `replication` gives
    one sample) and return this rank's. Every rank must call it (creating groups is collective)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    mine = None
    for first in range(0, world, size):
        group = dist.new_group(list(range(first, first + size)))
        if first <= rank < first + size:
            mine = ContextParallel(group=group, size=size, rank=rank - first)
    return mine
