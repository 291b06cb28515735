"""train section: samples/s, peak memory and MFU of the released recipe's training step on cached latents, in
one process (no Composer): the library's network, trainability rule, objective, optimizer and EMA."""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..callbacks.power_ema import PowerEMA, power_ema_beta, update_ema_
from ..diffusion.objective import ObjectiveConfig, training_velocities
from ..latent_geometry import LATENT_CHANNELS, SPATIAL_COMPRESSION
from ..models import build_network
from ..models.parallelize import build_ema_network, set_trainable_
from ..optim import build_optimizer
from .common import BENCHMARK_PRESETS, PEAK_BF16_FLOPS, synchronize


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("train section (the recipe's step on cached latents)")
    group.add_argument("--train-preset", default="tiny-multiview", help="a network preset or medium-singleview")
    group.add_argument("--train-views", type=int, default=None, help="views (default: 7 multiview, 1 single view)")
    group.add_argument("--train-latent-frames", type=int, default=None, help="latent frames per view (default state_t)")
    group.add_argument("--train-latent-height", type=int, default=8, help="latent height (720p: 90)")
    group.add_argument("--train-latent-width", type=int, default=8, help="latent width (1280: 160)")
    group.add_argument("--train-batch-size", type=int, default=1)
    group.add_argument("--train-steps", type=int, default=3, help="timed optimizer steps")
    group.add_argument("--train-warmup", type=int, default=1)
    group.add_argument("--no-activation-checkpointing", action="store_true")
    group.add_argument("--flops-only", action="store_true", help="count FLOPs on the meta device, no timing")


def _train_network(args, device) -> tuple[str, dict]:
    if args.train_preset in BENCHMARK_PRESETS:
        return BENCHMARK_PRESETS[args.train_preset]
    return args.train_preset, {}


def _cached_inputs(config, args, device) -> dict:
    """A batch as it comes from shards with cached latents and projected text (shapes from the train_* args)."""
    views = args.train_views or (7 if config.is_multiview else 1)
    frames = args.train_latent_frames or config.state_t
    return cached_batch(
        config, args.train_batch_size, views, frames, args.train_latent_height, args.train_latent_width, device
    )


def cached_batch(config, B: int, views: int, frames: int, H: int, W: int, device) -> tuple[dict, int]:
    """(network inputs of B samples of `views` x `frames` latent frames of H x W, tokens per sample)."""
    T = views * frames
    inputs = dict(
        x0=torch.randn(B, LATENT_CHANNELS, T, H, W, device=device),
        control=torch.randn(B, LATENT_CHANNELS, T, H, W, device=device),
        context=torch.randn(B, views * 512, config.crossattn_emb_channels, device=device),
        padding_mask=torch.zeros(B, 1, H * SPATIAL_COMPRESSION, W * SPATIAL_COMPRESSION, device=device),
        view_indices_B_T=torch.arange(views, device=device).repeat_interleave(frames)[None].expand(B, -1)
        if config.is_multiview
        else None,
        num_views=views,
    )
    tokens = T // config.patch_temporal * (H // config.patch_spatial) * (W // config.patch_spatial)
    return inputs, tokens


def _train_step(net, inputs, objective, optimizer, autocast_dtype, device) -> torch.Tensor:
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    with autocast:
        v_pred, v_target = training_velocities(net, inputs, objective, torch.zeros_like(inputs["context"]))
        loss = (v_pred.float() - v_target).pow(2).mean()
    loss.backward()
    if optimizer is not None:
        torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.grad is not None], 0.1)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss


def model_flops_per_sample(preset, overrides, args, shape: tuple[int, int, int, int] | None = None) -> float:
    """FLOPs of one forward + backward (frozen base: no weight gradients there), counted on the meta device.

    Activation recomputation is not counted (model FLOPs, as MFU is usually defined).
    """
    with torch.device("meta"):
        net = build_network(preset, **overrides)
        set_trainable_(net, train_base=False)
        if shape is None:
            inputs, _ = _cached_inputs(net.config, args, "meta")
            batch = args.train_batch_size
        else:  # (views, latent frames, latent height, latent width) of one sample
            inputs, _ = cached_batch(net.config, 1, *shape, device="meta")
            batch = 1
    with FlopCounterMode(display=False) as counter:
        _train_step(net, inputs, ObjectiveConfig(), None, None, torch.device("meta"))
    return counter.get_total_flops() / batch


def build_training_networks(preset: str, overrides: dict, device: torch.device | str) -> tuple[nn.Module, nn.Module]:
    """(net, net_ema) as training holds them: the control branch trains (`set_trainable_`, the released recipe),
    and `build_ema_network` copies only the trainable weights, in fp32, sharing the frozen base with `net`."""
    torch.manual_seed(0)
    with torch.device(device):
        net = build_network(preset, **overrides)
    set_trainable_(net, train_base=False)
    return net, build_ema_network(net)


def run(args: argparse.Namespace) -> None:
    """Samples/s, peak memory and MFU of the released recipe's training step on cached latents.

    The step is the library's own (`training_velocities`: sigma, conditioning frames, text dropout,
    control), with the frozen base, AdamW over the control branch, clipping to 0.1 and the power EMA of
    training (`build_ema_network`: an fp32 copy of the trainable weights, the frozen ones shared; `update_ema_`
    after every optimizer step). Encoders are not run: this is the cached-latent path.
    """
    device = torch.device(args.device)
    preset, overrides = _train_network(args, device)
    if not args.no_activation_checkpointing:
        overrides = {**overrides, "activation_checkpointing": True}
    flops = model_flops_per_sample(
        preset, {k: v for k, v in overrides.items() if k != "activation_checkpointing"}, args
    )
    print(f"train: preset={preset} model FLOPs per sample (fwd+bwd, frozen base) = {flops:.3e}")
    if args.flops_only:
        return

    net, net_ema = build_training_networks(preset, overrides, device)
    ema_gamma = PowerEMA().gamma  # the recipe's sigma_rel
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = build_optimizer(net, fused=device.type == "cuda")  # the recipe's AdamW (OptimizerConfig)
    inputs, tokens = _cached_inputs(net.config, args, device)
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    objective = ObjectiveConfig()
    print(
        f"train: {sum(p.numel() for p in net.parameters()) / 1e9:.2f}B params, "
        f"{sum(p.numel() for p in params) / 1e6:.0f}M trainable, {tokens} tokens per sample, "
        f"device={device}, activation checkpointing={not args.no_activation_checkpointing}"
    )

    def step(iteration: int) -> torch.Tensor:
        """One optimizer step, then the EMA update that training's PowerEMA callback runs after it."""
        loss = _train_step(net, inputs, objective, optimizer, autocast_dtype, device)
        update_ema_(net, net_ema, power_ema_beta(iteration, ema_gamma))
        return loss

    for iteration in range(args.train_warmup):
        step(iteration)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for iteration in range(args.train_warmup, args.train_warmup + args.train_steps):
        start = time.perf_counter()
        loss = step(iteration)
        synchronize(device)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    samples_per_s = args.train_batch_size / step_s
    print(
        f"train: step {step_s:.3f} s (median of {len(times)}), {samples_per_s:.4f} samples/s, "
        f"{1 / samples_per_s:.1f} device-seconds per sample, loss {loss.item():.4f}"
    )
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
        print(f"train: peak memory allocated {peak_gib:.1f} GiB on {name}")
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
        if peak:
            print(f"train: MFU {flops * samples_per_s / peak:.1%} (model FLOPs / dense bf16 peak {peak:.3g})")
