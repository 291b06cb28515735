"""Context parallelism changes no number: CP=2 and CP=2 x DP=2 give the CP=1 velocity and gradients.

Each process (gloo, CPU) builds the same tiny network with random weights everywhere (so no zero-initialised
gate hides a path), computes the CP=1 reference for its data-parallel group's sample, then the same forward
and backward split over its context-parallel group. A group's ranks' parameter gradients add up to CP times
the sample's gradient (see models/context_parallel.py), so their sum over the group, divided by CP, must
equal the reference.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port

from cosmos_composer.models import build_network
from cosmos_composer.models.context_parallel import check_context_parallel_size, context_parallel_groups

RELATIVE_TOLERANCE = 1e-5
SCALE = 0.1  # weights of this size keep activations O(1); much larger ones make fp32 sums cancel


def _network(preset: str, **overrides):
    torch.manual_seed(0)
    net = build_network(preset, **overrides)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in net.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * SCALE)
    return net


def _inputs(net, num_views: int, per_frame_timesteps: bool, sample_seed: int) -> dict:
    config = net.config
    generator = torch.Generator().manual_seed(sample_seed)
    T = num_views * config.state_t if config.is_multiview else config.state_t
    B, H, W = 2, 2 * config.patch_spatial, 3 * config.patch_spatial
    inputs = dict(
        x_B_C_T_H_W=torch.randn(B, config.in_channels, T, H, W, generator=generator),
        timesteps_B_T=torch.rand(B, T if per_frame_timesteps else 1, generator=generator) * 1000,
        crossattn_emb=torch.randn(B, num_views * 4, config.crossattn_proj_in_channels, generator=generator),
        latent_control_input=torch.randn(B, config.in_channels, T, H, W, generator=generator),
        condition_video_input_mask_B_C_T_H_W=(torch.arange(T) < 1).float().view(1, 1, T, 1, 1).expand(B, 1, T, H, W),
        padding_mask=torch.zeros(B, 1, 8 * H, 8 * W),
    )
    if config.is_multiview:  # cameras out of order, so view ids and positions are not confused
        cameras = torch.randperm(config.n_cameras_emb, generator=generator)[:num_views]
        inputs["view_indices_B_T"] = cameras.repeat_interleave(config.state_t)[None].expand(B, T)
    return inputs


def _velocity_and_grads(net, inputs, weight):
    net.zero_grad()
    velocity = net(**inputs)
    (velocity * weight).sum().backward()
    return velocity.detach(), {name: p.grad.clone() for name, p in net.named_parameters()}


def _relative(found: torch.Tensor, expected: torch.Tensor) -> float:
    return ((found - expected).norm() / expected.norm().clamp(min=1e-12)).item()


def _worker(rank: int, world: int, port: int, cp_size: int, case: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        net = _network(case["preset"], **case.get("overrides", {}))
        dp_rank = rank // cp_size  # every group has its own sample
        inputs = _inputs(net, case["views"], case["per_frame_timesteps"], sample_seed=100 + dp_rank)
        weight = torch.randn(net(**inputs).shape, generator=torch.Generator().manual_seed(7 + dp_rank))
        expected_velocity, expected_grads = _velocity_and_grads(net, inputs, weight)

        cp = context_parallel_groups(cp_size)
        net.context_parallel = cp
        velocity, grads = _velocity_and_grads(net, inputs, weight)
        assert _relative(velocity, expected_velocity) < RELATIVE_TOLERANCE, _relative(velocity, expected_velocity)
        for name, grad in grads.items():
            dist.all_reduce(grad, group=cp.group)
            error = _relative(grad / cp_size, expected_grads[name])
            assert error < RELATIVE_TOLERANCE, f"{name}: relative gradient error {error:.2e}"
    finally:
        dist.barrier()  # rank 0 hosts the store: it must outlive the other groups' setup
        dist.destroy_process_group()


CASES = {
    "singleview": dict(preset="tiny-singleview", views=1, per_frame_timesteps=True),
    # 7 views of 2 frames over 2 ranks: each rank's 7 frames end or start inside view 3.
    "multiview-7-views": dict(preset="tiny-multiview", views=7, per_frame_timesteps=False),
    "multiview-3-views-checkpointed": dict(
        preset="tiny-multiview", views=3, per_frame_timesteps=True, overrides=dict(activation_checkpointing=True)
    ),
}


RUNS = [(case, 2) for case in CASES] + [("multiview-7-views", 4)]  # CP=2 alone, and CP=2 x DP=2 once


@pytest.mark.parametrize("case, world", RUNS, ids=[f"{case}-{world}procs" for case, world in RUNS])
def test_context_parallel_forward_and_backward_equal_cp1(case, world):
    mp.spawn(_worker, args=(world, free_port(), 2, CASES[case]), nprocs=world, join=True)


def _sampling_worker(rank: int, world: int, port: int) -> None:
    """The sampler (CFG, UniPC steps, conditioning frames) under CP=`world` gives the CP=1 latents."""
    from cosmos_composer.diffusion import sampler

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        net = _network("tiny-multiview").eval()
        inputs = _inputs(net, num_views=7, per_frame_timesteps=False, sample_seed=3)
        conditioning = sampler.Conditioning(
            control=inputs["latent_control_input"][:1],
            context=inputs["crossattn_emb"][:1],
            uncond_context=torch.zeros_like(inputs["crossattn_emb"][:1]),
            num_views=7,
            view_indices_B_T=inputs["view_indices_B_T"][:1],
            condition_latents=inputs["x_B_C_T_H_W"][:1],
            num_conditional_frames=1,
        )
        with torch.no_grad():
            expected = sampler.sample(net, conditioning, num_steps=4, seed=5, progress=False)
            net.context_parallel = context_parallel_groups(world)
            found = sampler.sample(net, conditioning, num_steps=4, seed=5, progress=False)
        assert _relative(found, expected) < RELATIVE_TOLERANCE, _relative(found, expected)
    finally:
        dist.barrier()  # rank 0 hosts the store: it must outlive the other groups' setup
        dist.destroy_process_group()


def test_sampling_with_context_parallelism_gives_the_cp1_latents():
    mp.spawn(_sampling_worker, args=(2, free_port()), nprocs=2, join=True)


def test_a_size_that_does_not_split_the_heads_or_ranks_is_refused_with_the_valid_sizes():
    with pytest.raises(
        ValueError,
        match=r"context_parallel_size=3 .* 16 attention heads and the 8 processes; valid sizes here: \[1, 2, 4, 8\]",
    ):
        check_context_parallel_size(3, num_heads=16, world_size=8)
    with pytest.raises(ValueError, match=r"valid sizes here: \[1, 2\]"):
        check_context_parallel_size(4, num_heads=16, world_size=6)
    check_context_parallel_size(8, num_heads=16, world_size=16)
