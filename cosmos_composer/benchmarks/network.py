"""network section: forward + backward of our network against diffusers 0.38.0's `CosmosTransformer3DModel` +
`CosmosControlNetModel` with the same weights and inputs, side by side in one process, each with and without
activation checkpointing. The iterations of the variants are interleaved, so a busy machine slows them alike.
Reported per variant:

- time: median and minimum milliseconds of one forward + backward (after warm-up iterations). On a shared CPU
  prefer `--threads 1` and look at both: other processes inflate the median;
- saved: bytes of the tensors autograd keeps for backward at the end of the forward pass (a saved-tensors
  hook; each storage counted once; parameters excluded). This is the activation memory that activation
  checkpointing trades for recomputation. It does not include the one-block working set that recomputation
  needs again during backward (that is in "peak");
- peak: peak tensor memory allocated during forward + backward above what was allocated before it
  (CUDA: `torch.cuda.max_memory_allocated`; CPU: running sum of the profiler's allocation events). It
  includes activations, gradients of the trainable parameters and temporaries.

By default only the control branch trains (the released recipe freezes the base DiT: the library's
`set_trainable_`); the gradient still flows back through the base blocks that receive control hints, so their
activations are kept as well.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from ..checkpoint.diffusers_format import build_diffusers_models, diffusers_velocity
from ..latent_geometry import SPATIAL_COMPRESSION
from ..models import build_network
from ..models.parallelize import set_trainable_
from .common import BENCHMARK_PRESETS, network_set_items, synchronize

# diffusers' controlnet names of the modules our control branch trains (models/network.py
# CONTROL_BRANCH_PREFIXES): `control_embedder` is the controlnet's `patch_embed` (`patch_embed_base` is the copy of
# `x_embedder`); diffusers 0.38.0 has no `input_hint_block`.
DIFFUSERS_CONTROL_PREFIXES = ("control_blocks.", "patch_embed.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("network section")
    group.add_argument("--batch-size", type=int, default=1)
    group.add_argument("--frames", type=int, default=4, help="latent frames")
    group.add_argument("--height", type=int, default=16, help="latent height")
    group.add_argument("--width", type=int, default=16, help="latent width")
    group.add_argument("--text-tokens", type=int, default=64)
    group.add_argument("--warmup", type=int, default=2)
    group.add_argument("--iters", type=int, default=10)
    group.add_argument(
        "--dtype", choices=["fp32", "bf16"], default="fp32",
        help="weights and inputs (upstream trains the network in bf16; ours keeps its fp32 islands)",
    )  # fmt: skip
    group.add_argument("--train", choices=["control", "all"], default="control", help="which parameters get grads")
    group.add_argument("--no-memory", action="store_true", help="skip the memory measurements")


def network_config_args(args: argparse.Namespace) -> tuple[str, dict]:
    """(preset, overrides) of `--preset` (a benchmark preset or a library one) and the `--set` items."""
    name = args.preset or "medium-singleview"
    preset, overrides = BENCHMARK_PRESETS.get(name, (name, {}))
    return preset, {**overrides, **network_set_items(args)}


@dataclasses.dataclass
class Variant:
    name: str
    modules: list[torch.nn.Module]
    run: Callable[[], torch.Tensor]  # forward -> velocity
    params: list[torch.nn.Parameter]  # the trainable ones
    times_ms: list[float] = dataclasses.field(default_factory=list)
    saved_bytes: int | None = None
    peak_bytes: int | None = None


def _make_inputs(config, args, device, dtype) -> dict:
    generator = torch.Generator().manual_seed(0)
    B, T, H, W = args.batch_size, args.frames, args.height, args.width
    condition_mask = torch.zeros(B, 1, T, H, W)
    condition_mask[:, :, :1] = 1.0  # first latent frame is a conditioning frame
    inputs = dict(
        x_B_C_T_H_W=torch.randn(B, config.in_channels, T, H, W, generator=generator),
        crossattn_emb=torch.randn(B, args.text_tokens, config.crossattn_proj_in_channels, generator=generator),
        latent_control_input=torch.randn(B, config.in_channels, T, H, W, generator=generator),
        condition_video_input_mask_B_C_T_H_W=condition_mask,
        # diffusers 0.38.0 only takes a padding mask shared by the batch; ours takes [B, 1, H, W].
        padding_mask=torch.zeros(1, 1, H * SPATIAL_COMPRESSION, W * SPATIAL_COMPRESSION).expand(B, -1, -1, -1),
    )
    if config.extra_image_context_dim is not None:
        inputs["img_context_emb"] = torch.randn(B, 256, config.extra_image_context_dim, generator=generator)
    inputs = {k: v.to(device=device, dtype=dtype) for k, v in inputs.items()}
    # One t per sample, as in training (per-frame t would make diffusers run its modulation MLPs per token).
    inputs["timesteps_B_T"] = (torch.rand(B, 1, generator=generator) * 1000.0).to(device)
    return inputs


def _set_trainable(module: torch.nn.Module, prefixes: tuple[str, ...] | None) -> list[torch.nn.Parameter]:
    """Freeze all but the diffusers parameters under `prefixes` (None: train all); returns the trainable ones."""
    trainable = []
    for name, param in module.named_parameters():
        param.requires_grad_(prefixes is None or name.startswith(prefixes))
        if param.requires_grad:
            trainable.append(param)
    return trainable


def train_ours(net: torch.nn.Module, train_all: bool) -> list[torch.nn.Parameter]:
    """Our network's trainable parameters by the library's rule (`set_trainable_`): the control branch
    (models/network.py CONTROL_BRANCH_PREFIXES), or everything with `train_all`."""
    set_trainable_(net, train_base=train_all)
    return [param for param in net.parameters() if param.requires_grad]


def _build_variants(args, device, dtype) -> tuple[list[Variant], object]:
    """ours, ours + AC, diffusers, diffusers + AC: same weights, same inputs, in `dtype` on `device`."""
    preset, overrides = network_config_args(args)
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: the 2B preset is slow to initialise on a CPU
        ours = build_network(preset, **overrides)
        if ours.config.is_multiview:
            raise SystemExit("The network section compares against diffusers, which has no multiview model")
        ours_ac = build_network(preset, **{**overrides, "activation_checkpointing": True})
    ours.to(dtype)
    ours_ac.to(dtype).load_state_dict(ours.state_dict())
    # build_diffusers_models assigns the given tensors, so clone: every variant owns its weights.
    weights = {k: v.clone() for k, v in ours.state_dict().items()}
    transformer, controlnet = build_diffusers_models(weights, ours.config)
    weights = {k: v.clone() for k, v in ours.state_dict().items()}
    transformer_ac, controlnet_ac = build_diffusers_models(weights, ours.config)
    transformer_ac.enable_gradient_checkpointing()
    controlnet_ac.enable_gradient_checkpointing()
    del weights

    inputs = _make_inputs(ours.config, args, device, dtype)
    train_all = args.train == "all"
    variants = []
    for name, net in (("ours", ours), ("ours + AC", ours_ac)):
        net.train()
        params = train_ours(net, train_all)
        variants.append(Variant(name, [net], lambda net=net: net(**inputs), params))
    for name, (tr, cn) in (
        ("diffusers", (transformer, controlnet)),
        ("diffusers + AC", (transformer_ac, controlnet_ac)),
    ):
        tr.train()
        cn.train()
        params = _set_trainable(tr, None if train_all else ())
        params += _set_trainable(cn, None if train_all else DIFFUSERS_CONTROL_PREFIXES)
        variants.append(Variant(name, [tr, cn], lambda tr=tr, cn=cn: diffusers_velocity(tr, cn, **inputs), params))
    return variants, ours.config


def _step(variant: Variant, target: torch.Tensor) -> None:
    """One forward + backward of an MSE loss on the velocity."""
    for param in variant.params:
        param.grad = None
    velocity = variant.run()
    F.mse_loss(velocity.float(), target).backward()


def _peak_bytes(variant: Variant, target: torch.Tensor, device) -> int:
    """Peak tensor memory allocated during one forward + backward, above what was allocated before it."""
    for param in variant.params:
        param.grad = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
        synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        _step(variant, target)
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _step(variant, target)
    events = sorted(
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
    )
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak


def _saved_bytes(variant: Variant, parameter_storages: set[int]) -> int:
    """Bytes autograd keeps for backward at the end of the forward pass (each storage once, no parameters)."""
    for param in variant.params:
        param.grad = None
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        velocity = variant.run()
    del velocity
    return sum(saved.values())


def _mib(nbytes: int | None) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**20:.1f}"


def run(args: argparse.Namespace) -> None:
    """Time and memory of ours vs diffusers, each with and without activation checkpointing."""
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    variants, config = _build_variants(args, device, dtype)
    by_name = {v.name: v for v in variants}
    # Parameters (trainable or frozen) are saved by reference, never as activations.
    all_parameters = {p.untyped_storage().data_ptr() for v in variants for m in v.modules for p in m.parameters()}
    B, T, H, W = args.batch_size, args.frames, args.height, args.width
    tokens = T * (H // config.patch_spatial) * (W // config.patch_spatial)
    target = torch.randn(B, config.out_channels, T, H, W, generator=torch.Generator().manual_seed(1)).to(device)

    print(
        f"network: preset={args.preset} D={config.model_channels} heads={config.num_heads} "
        f"blocks={config.num_blocks} control_blocks={len(config.control_layers)} "
        f"img_ctx={config.extra_image_context_dim} | B={B} latent T,H,W={T},{H},{W} tokens={tokens} "
        f"text={args.text_tokens} | device={device} dtype={args.dtype} train={args.train} "
        f"threads={torch.get_num_threads()}"
    )

    # A cheap guard against benchmarking two different functions (in bf16 expect ~1e-2, in fp32 ~1e-6).
    with torch.no_grad():
        ours_v, diffusers_v = by_name["ours"].run().float(), by_name["diffusers"].run().float()
    error = ((ours_v - diffusers_v).norm() / diffusers_v.norm()).item()
    print(f"parity: relative error ours vs diffusers = {error:.2e} ({args.dtype})")
    del ours_v, diffusers_v

    for i in range(args.warmup + args.iters):
        for variant in variants:  # interleaved, so background load hits every variant alike
            synchronize(device)
            start = time.perf_counter()
            _step(variant, target)
            synchronize(device)
            if i >= args.warmup:
                variant.times_ms.append((time.perf_counter() - start) * 1e3)

    if not args.no_memory:
        for variant in variants:
            variant.peak_bytes = _peak_bytes(variant, target, device)
            variant.saved_bytes = _saved_bytes(variant, all_parameters)

    print()
    print(f"{'variant':<16}{'median ms':>11}{'min ms':>9}{'saved MiB':>11}{'peak MiB':>10}")
    for v in variants:
        print(
            f"{v.name:<16}{statistics.median(v.times_ms):>11.1f}{min(v.times_ms):>9.1f}"
            f"{_mib(v.saved_bytes):>11}{_mib(v.peak_bytes):>10}"
        )
    print()

    def ratio(numerator: str, denominator: str, stat) -> float:
        return stat(by_name[numerator].times_ms) / stat(by_name[denominator].times_ms)

    for numerator, denominator, note in (
        ("ours", "diffusers", "target <= 1.0"),
        ("ours + AC", "diffusers + AC", ""),
        ("ours + AC", "ours", "cost of recomputation"),
    ):
        print(
            f"time {numerator} / {denominator}:".ljust(40)
            + f"median {ratio(numerator, denominator, statistics.median):.3f}, "
            f"min {ratio(numerator, denominator, min):.3f}  {note}"
        )
    if not args.no_memory:
        for name in ("ours", "diffusers"):
            plain, checkpointed = by_name[name], by_name[f"{name} + AC"]
            print(
                f"memory {name} + AC / {name}:".ljust(40)
                + f"saved {checkpointed.saved_bytes / plain.saved_bytes:.3f}, "
                f"peak {checkpointed.peak_bytes / plain.peak_bytes:.3f}  (target: saved <= 0.5)"
            )
