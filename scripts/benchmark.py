#!/usr/bin/env python
"""Benchmarks, one section at a time.

    python scripts/benchmark.py --section network [--device cpu|cuda] [--preset medium-singleview] ...
    python scripts/benchmark.py --section evaluate [--evaluate-threads 1]

Sections register themselves in `SECTIONS` with their own argument group; add one by writing an
`add_<name>_arguments(parser)` and a `run_<name>(args)` and listing them there.

network: forward + backward of our network against diffusers 0.38.0's `CosmosTransformer3DModel` +
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

By default only the control branch trains (the released recipe freezes the base DiT); the gradient still
flows back through the base blocks that receive control hints, so their activations are kept as well.

evaluate: seconds per video pair of Blur SSIM and Edge F1 (cosmos_composer/evaluation/metrics.py) on synthetic
93-frame 704x1280 videos, on `--evaluate-threads` threads (default 1: one CPU core).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cosmos_composer.models import build_network, get_config  # noqa: E402

# ---------------------------------------------------------------------------------------------------------------
# Section: network
# ---------------------------------------------------------------------------------------------------------------

# Benchmark-only sizes: a preset plus overrides. "medium-singleview" is large enough that matmuls dominate on a
# CPU (as they do for the 2B network on a GPU) and small enough for a few seconds per iteration on 2 cores.
BENCHMARK_PRESETS: dict[str, tuple[str, dict]] = {
    "medium-singleview": (
        "tiny-singleview",
        dict(
            model_channels=384,
            num_heads=6,
            num_blocks=8,
            vace_block_every_n=4,
            adaln_lora_dim=64,
            crossattn_emb_channels=256,
            crossattn_proj_in_channels=512,
        ),
    ),
}

# Our network's names of the parameters that train with a frozen base, and diffusers' controlnet names of the same
# modules (`control_embedder` is the controlnet's `patch_embed`; `patch_embed_base` is the copy of `x_embedder`).
OUR_CONTROL_PREFIXES = ("control_blocks.", "control_embedder.")
DIFFUSERS_CONTROL_PREFIXES = ("control_blocks.", "patch_embed.")


def add_network_arguments(parser: argparse.ArgumentParser) -> None:
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


def _parse_override(text: str):
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    for convert in (int, float):
        try:
            return key, convert(value)
        except ValueError:
            pass
    lowered = value.lower()
    if lowered in ("true", "false"):
        return key, lowered == "true"
    if lowered == "none":
        return key, None
    return key, value


def _network_config_args(args) -> tuple[str, dict]:
    name = args.preset or "medium-singleview"
    preset, overrides = BENCHMARK_PRESETS.get(name, (name, {}))
    overrides = dict(overrides)
    overrides.update(_parse_override(text) for text in args.overrides)
    return preset, overrides


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
        padding_mask=torch.zeros(1, 1, H * 8, W * 8).expand(B, -1, -1, -1),
    )
    if config.extra_image_context_dim is not None:
        inputs["img_context_emb"] = torch.randn(B, 256, config.extra_image_context_dim, generator=generator)
    inputs = {k: v.to(device=device, dtype=dtype) for k, v in inputs.items()}
    # One t per sample, as in training (per-frame t would make diffusers run its modulation MLPs per token).
    inputs["timesteps_B_T"] = (torch.rand(B, 1, generator=generator) * 1000.0).to(device)
    return inputs


def _set_trainable(module: torch.nn.Module, prefixes: tuple[str, ...] | None) -> list[torch.nn.Parameter]:
    """Freeze all but the parameters under `prefixes` (None: train all); returns the trainable ones."""
    trainable = []
    for name, param in module.named_parameters():
        param.requires_grad_(prefixes is None or name.startswith(prefixes))
        if param.requires_grad:
            trainable.append(param)
    return trainable


def _build_variants(args, device, dtype) -> tuple[list[Variant], object]:
    """ours, ours + AC, diffusers, diffusers + AC: same weights, same inputs, in `dtype` on `device`."""
    preset, overrides = _network_config_args(args)
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
        params = _set_trainable(net, None if train_all else OUR_CONTROL_PREFIXES)
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


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
        _sync(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        _step(variant, target)
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - start

    from torch.profiler import ProfilerActivity, profile

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


def run_network(args) -> None:
    global build_diffusers_models, diffusers_velocity
    from cosmos_composer.checkpoint.diffusers_format import build_diffusers_models, diffusers_velocity

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
            _sync(device)
            start = time.perf_counter()
            _step(variant, target)
            _sync(device)
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


# ---------------------------------------------------------------------------------------------------------------
# Section: data
# ---------------------------------------------------------------------------------------------------------------
# A multiview demo dataset converted twice (plain, and with `--precompute latents,text`), and a full pass of each
# timed. It measures the data path only (decode + resize + control, or reading cached arrays), not the encoders a
# training step would run on decoded pixels, so the cached figure is an upper bound on what caching saves.
# Then the conversion itself: demo clips at 720p (7 cameras) converted by `scripts/convert_to_mds.py` in 1 process
# and under `composer -n N`, without precompute, so it measures validation (every video decoded to the end) and
# writing. The figure is the converter's own (its summary line), from the moment every process is ready.


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data section")
    group.add_argument("--data-samples", type=int, default=4, help="demo samples (7 cameras each)")
    group.add_argument("--data-frames", type=int, default=29, help="frames per camera")
    group.add_argument("--data-height", type=int, default=64)
    group.add_argument("--data-width", type=int, default=112)
    group.add_argument("--data-epochs", type=int, default=3, help="timed passes over the dataset")
    group.add_argument("--data-workers", type=int, default=0, help="DataLoader workers")
    group.add_argument("--convert-samples", type=int, default=4, help="conversion: demo clips (7 cameras each)")
    group.add_argument("--convert-frames", type=int, default=29, help="conversion: frames per camera")
    group.add_argument("--convert-height", type=int, default=720)
    group.add_argument("--convert-width", type=int, default=1280)
    group.add_argument("--convert-nproc", type=int, default=2, help="conversion: processes compared with 1")


def _samples_per_second(folder: Path, epochs: int, num_workers: int, **dataset_kwargs) -> float:
    from cosmos_composer.data.dataset import TransferStreamingDataset, build_dataloader

    dataset = TransferStreamingDataset(local=str(folder), **dataset_kwargs)
    loader = build_dataloader(dataset, batch_size=1, num_workers=num_workers)
    for _ in loader:  # warm-up pass (worker start, page cache)
        pass
    count, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            count += len(batch["sample_name"])
    elapsed = time.perf_counter() - start
    del loader, dataset
    return count / elapsed


def benchmark_data(
    tmpdir: str | Path,
    samples: int = 4,
    frames: int = 29,
    height: int = 64,
    width: int = 112,
    epochs: int = 3,
    num_workers: int = 0,
    text_dim: int = 1024,
) -> dict:
    """Samples/s of the multiview dataset decoding mp4s vs. serving cached latents and text embeddings.

    The demo data (``samples`` items of ``frames`` x ``height`` x ``width``, the training size too) and both MDS
    copies are written under ``tmpdir``. The cache is made with the tiny random encoders: the cached arrays have
    the real shapes either way, except the text width, which ``text_dim`` sets (1024: projected, as training with
    a frozen base stores it). Returns the settings, ``decode_samples_per_s``, ``cached_samples_per_s`` and
    ``speedup``.
    """
    from torch import nn

    from cosmos_composer.data.convert import convert_to_mds
    from cosmos_composer.data.demo import make_demo_dataset
    from cosmos_composer.data.precompute import Precomputer
    from cosmos_composer.encoders.text import Reason1TextEmbedder
    from cosmos_composer.encoders.vae import WanVAE

    tmpdir = Path(tmpdir)
    text_embedder = Reason1TextEmbedder.tiny()
    source = tmpdir / "demo_multiview"
    make_demo_dataset(
        source, "multiview-hdmap", samples=samples, frames=frames, height=height, width=width, overwrite=True
    )
    plain, cached = tmpdir / "mds_plain", tmpdir / "mds_cached"
    convert_to_mds(source, plain, "multiview-hdmap", min_frames=frames, overwrite=True)
    precomputer = Precomputer(
        height=height,
        width=width,
        num_frames=frames,
        vae=WanVAE.tiny(),
        text_embedder=text_embedder,
        crossattn_proj=nn.Sequential(nn.Linear(text_embedder.embed_dim, text_dim), nn.GELU()),
    )
    convert_to_mds(source, cached, "multiview-hdmap", min_frames=frames, overwrite=True, precomputer=precomputer)
    settings = dict(num_frames=frames, height=height, width=width)
    decode = _samples_per_second(plain, epochs, num_workers, **settings)
    from_cache = _samples_per_second(cached, epochs, num_workers, decode_video=False, **settings)
    return {
        "layout": "multiview-hdmap",
        "views": 7,
        "frames_per_view": frames,
        "height": height,
        "width": width,
        "samples": samples,
        "epochs": epochs,
        "num_workers": num_workers,
        "torch_threads": torch.get_num_threads(),
        "decode_samples_per_s": decode,
        "cached_samples_per_s": from_cache,
        "speedup": from_cache / decode,
    }


# The converter's summary line: "Converted 4 samples in 12.3 s (0.325 samples/s) with 2 processes."
CONVERTED_LINE = re.compile(r"Converted (\d+) samples in ([\d.]+) s \(([\d.e+-]+) samples/s\)")


def _conversion_samples_per_second(source: Path, output: Path, frames: int, nproc: int) -> float:
    """Samples/s that ``scripts/convert_to_mds.py`` reports, run alone (1) or under ``composer -n nproc``."""
    import subprocess

    script = REPO / "scripts" / "convert_to_mds.py"
    launcher = [str(Path(sys.executable).with_name("composer")), "-n", str(nproc)] if nproc > 1 else [sys.executable]
    # One sample per part, so that a few clips still give every process parts.
    options = ["--layout", "multiview-hdmap", "--input", str(source), "--output", str(output)]
    options += ["--min-frames", str(frames), "--part-samples", "1", "--no-progress"]
    result = subprocess.run([*launcher, str(script), *options], capture_output=True, text=True)
    match = CONVERTED_LINE.search(result.stdout)
    if result.returncode != 0 or match is None:
        raise SystemExit(f"data: the conversion with {nproc} process(es) failed:\n{result.stdout}{result.stderr}")
    return float(match[3])


def benchmark_conversion(
    tmpdir: str | Path, samples: int = 4, frames: int = 29, height: int = 720, width: int = 1280, nproc: int = 2
) -> dict:
    """Conversion samples/s (validation + writing, no precompute) of multiview demo clips, 1 vs. ``nproc`` processes.

    The clips are made as ``scripts/make_demo_dataset.py --samples S --frames F --height H --width W`` makes them.
    """
    from cosmos_composer.data.demo import make_demo_dataset

    tmpdir = Path(tmpdir)
    source = tmpdir / "demo_convert"
    make_demo_dataset(source, "multiview-hdmap", samples=samples, frames=frames, height=height, width=width)
    one = _conversion_samples_per_second(source, tmpdir / "mds_convert_1", frames, 1)
    many = _conversion_samples_per_second(source, tmpdir / f"mds_convert_{nproc}", frames, nproc)
    return {
        "convert_views": 7,
        "convert_frames_per_view": frames,
        "convert_height": height,
        "convert_width": width,
        "convert_samples": samples,
        "convert_samples_per_s_1proc": one,
        f"convert_samples_per_s_{nproc}proc": many,
        "convert_ratio": many / one,
    }


def run_data(args) -> None:
    """Samples/s of the multiview dataset decoding mp4s vs. serving cached latents, side by side; then conversion
    samples/s with 1 and N processes, side by side."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmpdir:
        result = benchmark_data(
            tmpdir,
            samples=args.data_samples,
            frames=args.data_frames,
            height=args.data_height,
            width=args.data_width,
            epochs=args.data_epochs,
            num_workers=args.data_workers,
        )
        for key, value in result.items():
            print(f"{key:>32}: {value}", flush=True)
        n = args.convert_nproc
        conversion = benchmark_conversion(
            tmpdir, args.convert_samples, args.convert_frames, args.convert_height, args.convert_width, n
        )
    for key, value in conversion.items():
        print(f"{key:>32}: {value}")
    print(
        f"conversion of {args.convert_samples} clips of 7 x {args.convert_frames} frames at {args.convert_height}x"
        f"{args.convert_width} (validation + writing): 1 process {conversion['convert_samples_per_s_1proc']:.3g} "
        f"samples/s, {n} processes {conversion[f'convert_samples_per_s_{n}proc']:.3g} samples/s, ratio "
        f"{conversion['convert_ratio']:.2f}"
    )


# ---------------------------------------------------------------------------------------------------------------
# Section: train
# ---------------------------------------------------------------------------------------------------------------

# Dense bf16 peak of the accelerators we know, for MFU (FLOP/s per chip).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "B200": 2250e12}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
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
    return _cached_batch(
        config, args.train_batch_size, views, frames, args.train_latent_height, args.train_latent_width, device
    )


def _cached_batch(config, B: int, views: int, frames: int, H: int, W: int, device) -> tuple[dict, int]:
    """(network inputs of B samples of `views` x `frames` latent frames of H x W, tokens per sample)."""
    T = views * frames
    inputs = dict(
        x0=torch.randn(B, 16, T, H, W, device=device),
        control=torch.randn(B, 16, T, H, W, device=device),
        context=torch.randn(B, views * 512, config.crossattn_emb_channels, device=device),
        padding_mask=torch.zeros(B, 1, H * 8, W * 8, device=device),
        view_indices_B_T=torch.arange(views, device=device).repeat_interleave(frames)[None].expand(B, -1)
        if config.is_multiview
        else None,
        num_views=views,
    )
    tokens = T // config.patch_temporal * (H // config.patch_spatial) * (W // config.patch_spatial)
    return inputs, tokens


def _train_step(net, inputs, objective, optimizer, autocast_dtype, device) -> torch.Tensor:
    from cosmos_composer.diffusion.objective import training_velocities

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


def _model_flops_per_sample(preset, overrides, args, shape: tuple[int, int, int, int] | None = None) -> float:
    """FLOPs of one forward + backward (frozen base: no weight gradients there), counted on the meta device.

    Activation recomputation is not counted (model FLOPs, as MFU is usually defined).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from cosmos_composer.diffusion.objective import ObjectiveConfig

    with torch.device("meta"):
        net = build_network(preset, **overrides)
        trainable = set(net.control_branch_parameter_names())
        for name, p in net.named_parameters():
            p.requires_grad_(name in trainable)
        if shape is None:
            inputs, _ = _cached_inputs(net.config, args, "meta")
            batch = args.train_batch_size
        else:  # (views, latent frames, latent height, latent width) of one sample
            inputs, _ = _cached_batch(net.config, 1, *shape, device="meta")
            batch = 1
    with FlopCounterMode(display=False) as counter:
        _train_step(net, inputs, ObjectiveConfig(), None, None, torch.device("meta"))
    return counter.get_total_flops() / batch


def run_train(args) -> None:
    """Samples/s, peak memory and MFU of the released recipe's training step on cached latents.

    The step is the library's own (`training_velocities`: sigma, conditioning frames, text dropout,
    control), with the frozen base, AdamW over the control branch, clipping to 0.1 and an fp32 EMA copy
    held in memory as in training. Encoders are not run: this is the cached-latent path.
    """
    import copy

    from cosmos_composer.diffusion.objective import ObjectiveConfig
    from cosmos_composer.optim import build_optimizer

    device = torch.device(args.device)
    preset, overrides = _train_network(args, device)
    if not args.no_activation_checkpointing:
        overrides = {**overrides, "activation_checkpointing": True}
    flops = _model_flops_per_sample(
        preset, {k: v for k, v in overrides.items() if k != "activation_checkpointing"}, args
    )
    print(f"train: preset={preset} model FLOPs per sample (fwd+bwd, frozen base) = {flops:.3e}")
    if args.flops_only:
        return

    torch.manual_seed(0)
    with torch.device(device):
        net = build_network(preset, **overrides)
    trainable = set(net.control_branch_parameter_names())
    for name, p in net.named_parameters():
        p.requires_grad_(name in trainable)
    net_ema = copy.deepcopy(net).requires_grad_(False)  # memory as in training
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

    ema_params = [p for n, p in net_ema.named_parameters() if n in trainable]
    for _ in range(args.train_warmup):
        _train_step(net, inputs, objective, optimizer, autocast_dtype, device)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.train_steps):
        start = time.perf_counter()
        loss = _train_step(net, inputs, objective, optimizer, autocast_dtype, device)
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 0.01)
        _sync(device)
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


# ---------------------------------------------------------------------------------------------------------------
# Section: trainer
# ---------------------------------------------------------------------------------------------------------------

# The recipe YAML of each kind of preset: the benchmark runs exactly what a user runs.
TRAINER_RECIPES = {True: REPO / "yamls" / "hdmap.yaml", False: REPO / "yamls" / "singleview_edge.yaml"}
TRAINER_METRICS = (
    "samples_per_s", "device_s_per_sample", "peak_alloc_gib", "peak_reserved_gib", "host_rss_gib_per_rank",
    "first_step_s", "mfu",
)  # fmt: skip


def add_trainer_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "trainer section (`composer -n N train.py <recipe YAML>` on synthetic cached shards; --preset and "
        "--set KEY=VALUE, a train.py override, apply too)"
    )
    group.add_argument("--nproc", type=int, default=1, help="processes (one per GPU)")
    group.add_argument("--views", type=int, default=None, help="views per sample (default: 7 multiview, 1)")
    group.add_argument("--latent-frames", type=int, default=None, help="latent frames per view (default state_t)")
    group.add_argument("--latent-height", type=int, default=None, help="latent height (default: the recipe's)")
    group.add_argument("--latent-width", type=int, default=None, help="latent width (default: the recipe's)")
    group.add_argument("--steps", type=int, default=3, help="optimizer steps; all but the first are timed")
    group.add_argument("--load-path", default=None, help="a consolidated .pt to start from (load_path)")
    group.add_argument("--gpu-memory-cap-gib", type=float, default=None, help="cap each process's CUDA memory")


def _write_synthetic_shards(
    folder: Path, cfg, views: int, latent_frames: int, H: int, W: int, samples: int, fingerprint: str, text_kind: str
) -> dict:
    """Cached-latent MDS shards of the recipe's columns (random latents and text), through our column schema."""
    import numpy as np
    from streaming import MDSWriter

    from cosmos_composer.data import mds
    from cosmos_composer.data.cameras import DEFAULT_CAMERAS
    from cosmos_composer.data.layouts import MULTIVIEW_HDMAP, ON_THE_FLY_CONTROLS, SINGLEVIEW

    network = get_config(cfg.model.preset)
    layout = MULTIVIEW_HDMAP if network.is_multiview else SINGLEVIEW
    cameras = DEFAULT_CAMERAS[:views] if network.is_multiview else (None,)
    control_key = cfg.model.control_key
    # The Wan2.1 VAE: 4x in time (plus the first frame), 8x in space.
    num_frames, height, width = (latent_frames - 1) * 4 + 1, H * 8, W * 8
    text_dim = network.crossattn_emb_channels if text_kind == "projected" else network.crossattn_proj_in_channels
    columns = mds.dataset_columns(layout, control_key, cameras, latents=True, text=True)
    rng = np.random.default_rng(0)
    latent_shape = (16, views * latent_frames, H, W)
    with MDSWriter(out=str(folder), columns=columns, size_limit="1gb", progress_bar=False) as writer:
        for index in range(samples):
            row = {
                mds.SAMPLE_NAME: f"synthetic_{index:04d}", mds.LAYOUT: layout,
                mds.CAMERA_NAMES: [c for c in cameras if c], mds.CAPTION: "synthetic", mds.FPS: 10.0,
                mds.NUM_FRAMES: num_frames, mds.CONTROL_KEY: control_key,
                mds.SOURCE_FPS: 10.0, mds.FRAME_START: 0, mds.FRAME_STEP: 1.0,
                mds.VIDEO_LATENT: rng.standard_normal(latent_shape, dtype=np.float32).astype(np.float16),
                mds.CONTROL_LATENT: rng.standard_normal(latent_shape, dtype=np.float32).astype(np.float16),
                mds.LATENT_NUM_FRAMES: num_frames, mds.LATENT_HEIGHT: height, mds.LATENT_WIDTH: width,
                mds.TEXT_EMBEDDING: rng.standard_normal((views * 512, text_dim), dtype=np.float32).astype(np.float16),
                mds.TEXT_EMBEDDING_KIND: text_kind, mds.CROSSATTN_PROJ_FINGERPRINT: fingerprint,
            }  # fmt: skip
            for camera in cameras:
                row[mds.video_column(camera)] = b""  # not decoded: the run serves the cached latents
                if control_key not in ON_THE_FLY_CONTROLS:
                    row[mds.control_column(control_key, camera)] = b""
            writer.write(row)
    return dict(num_frames=num_frames, height=height, width=width)


def _crossattn_proj_fingerprint(cfg, load_path: str | None) -> str:
    """The fingerprint of the run's `crossattn_proj` weights, which cached projected text must carry."""
    from composer.utils import reproducibility

    from cosmos_composer.checkpoint.load import read_state_dict
    from cosmos_composer.data.precompute import crossattn_proj_fingerprint
    from cosmos_composer.models.parallelize import FROZEN_DTYPE

    overrides = dict(cfg.model.overrides)
    if load_path:
        state = read_state_dict(load_path)
        with torch.device("meta"):
            net = build_network(cfg.model.preset, **overrides)
        proj = net.crossattn_proj.to_empty(device="cpu")
        proj.load_state_dict({k[len("net.crossattn_proj."):]: v for k, v in state.items()
                              if k.startswith("net.crossattn_proj.")})  # fmt: skip
    else:
        reproducibility.seed_all(cfg.seed)  # as train.py draws the fresh weights
        proj = build_network(cfg.model.preset, **overrides).crossattn_proj
    return crossattn_proj_fingerprint(proj.to(FROZEN_DTYPE))  # projected text needs it frozen: stored in bf16


def run_trainer(args) -> None:
    """Samples/s, memory and MFU of the real training path: `composer -n N train.py` on the recipe YAML.

    Synthetic cached shards (random latents, control latents and projected text of the preset's shapes) are
    written to a temporary folder; the run uses the recipe YAML with `loggers=null`, no checkpoints and those
    shards. The figures come from the run's own `run_summary` callback (see callbacks/run_summary.py).
    MFU = model FLOPs per sample (forward + backward with the frozen base: no weight gradients there; activation
    recomputation not counted; counted by torch's FlopCounterMode on the meta device) x samples/s /
    (ranks x the GPU's dense bf16 peak).
    """
    import json
    import os
    import subprocess
    import tempfile

    from cosmos_composer.config import load_config

    preset = args.preset or "tiny-multiview"
    network = get_config(preset)
    recipe = TRAINER_RECIPES[network.is_multiview]
    views = args.views or (7 if network.is_multiview else 1)
    latent_frames = args.latent_frames or network.state_t
    # The multiview network splits the latent frames into views by its state_t (frames per view).
    network_overrides = [f"model.preset={preset}", f"model.overrides.state_t={latent_frames}"]
    cfg = load_config(recipe, [*network_overrides, *args.overrides])
    H = args.latent_height or cfg.train_loader.dataset.height // 8
    W = args.latent_width or cfg.train_loader.dataset.width // 8
    if args.steps < 2:
        raise SystemExit("--steps must be at least 2: the first step is not timed")
    # Projected text is cached only for a frozen crossattn_proj: a full fine-tune (model.train_base) trains it.
    text_kind = "projected" if network.use_crossattn_projection and not cfg.model.train_base else "raw"
    fingerprint = _crossattn_proj_fingerprint(cfg, args.load_path) if text_kind == "projected" else ""
    tokens = (
        views * latent_frames // network.patch_temporal * (H // network.patch_spatial) * (W // network.patch_spatial)
    )
    print(
        f"trainer: {recipe.name} with preset={preset}, {args.nproc} x {args.device}, {views} views x "
        f"{latent_frames} latent frames x {H}x{W} ({tokens} tokens per sample), {args.steps} steps",
        flush=True,
    )

    # One sample per data-parallel group and step: with context parallelism a group of ranks shares one.
    samples_per_step = args.nproc // cfg.context_parallel_size
    with tempfile.TemporaryDirectory(prefix="cosmos-trainer-bench-") as tmp:
        tmp = Path(tmp)
        pixels = _write_synthetic_shards(
            tmp / "mds", cfg, views, latent_frames, H, W, args.nproc * args.steps, fingerprint, text_kind
        )
        summary_path = tmp / "summary.json"
        overrides = [
            "loggers=null", "eval_loader=null", "save_interval=null", "encoders.vae=null", "encoders.text=null",
            "callbacks.sample_videos=null",
            *network_overrides, f"load_path={args.load_path or 'null'}",
            f"train_loader.dataset.local={tmp / 'mds'}", "train_loader.dataset.decode_video=false",
            "train_loader.dataset.random_start=false", "train_loader.dataset.shuffle=false",
            f"train_loader.dataset.num_frames={pixels['num_frames']}",
            f"train_loader.dataset.height={pixels['height']}", f"train_loader.dataset.width={pixels['width']}",
            "train_loader.num_workers=0", f"global_train_batch_size={samples_per_step}", "device_train_microbatch_size=1",
            f"max_duration={args.steps}ba", f"callbacks.run_summary.path={summary_path}", "progress_bar=false",
            *([f"gpu_memory_cap_gib={args.gpu_memory_cap_gib}"] if args.gpu_memory_cap_gib else []),
            # Composer has no amp_bf16 on a CPU: the weights keep their dtypes, the compute is fp32.
            *(["precision=fp32"] if args.device == "cpu" else []),
            *args.overrides,
        ]  # fmt: skip
        env = {**os.environ, "COSMOS_OUTPUT_ROOT": str(tmp / "out"), "PYTHONUNBUFFERED": "1"}
        if args.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        composer = Path(sys.executable).with_name("composer")
        command = [str(composer), "-n", str(args.nproc), str(REPO / "train.py"), str(recipe), *overrides]
        result = subprocess.run(command, cwd=tmp, env=env)
        if result.returncode != 0 or not summary_path.exists():
            raise SystemExit(f"trainer: the training run failed (exit {result.returncode})")
        summary = json.loads(summary_path.read_text())

    summary["mfu"] = float("nan")
    if args.device == "cuda":
        flops = _model_flops_per_sample(preset, dict(cfg.model.overrides), args, (views, latent_frames, H, W))
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
        if peak:
            summary["mfu"] = flops * summary["samples_per_s"] / (args.nproc * peak)  # samples/s: unique samples
        print(f"trainer: {flops:.4g} model FLOPs per sample; MFU against {peak} FLOP/s per GPU ({name})")
    print("trainer: " + " ".join(f"{key.replace('samples_per_s', 'samples/s')}={summary[key]:.4g}"
                                 for key in TRAINER_METRICS))  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Section: evaluate
# ---------------------------------------------------------------------------------------------------------------

# Seconds per video pair of the model-free per-video metrics at the single-view recipe's size (93 frames of
# 704x1280), on synthetic frames: a smooth random texture panning across the frame, and the same with noise as the
# "generated" video. Blur SSIM is dominated by the bilateral filter of both videos (d=30), Edge F1 by Canny.


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("evaluate section")
    group.add_argument("--evaluate-frames", type=int, default=93)
    group.add_argument("--evaluate-height", type=int, default=704)
    group.add_argument("--evaluate-width", type=int, default=1280)
    group.add_argument(
        "--evaluate-threads", type=int, default=1, help="threads over frames, and OpenCV's threads (default: 1 core)"
    )


def synthetic_video_pair(frames: int, height: int, width: int, seed: int = 0):
    """A reference clip (a smooth random texture panning 2 pixels a frame) and a noisy copy, uint8 [T, H, W, 3]."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (height, width + 2 * frames, 3), dtype=np.uint8), (0, 0), 3)
    reference = np.stack([texture[:, 2 * t : 2 * t + width] for t in range(frames)])
    noise = rng.normal(0, 8, reference.shape)
    prediction = np.clip(reference + noise, 0, 255).astype(np.uint8)
    return prediction, reference


def run_evaluate(args) -> None:
    """Seconds per 93-frame 704x1280 video pair of Blur SSIM and Edge F1 (precision and recall come with F1)."""
    import cv2

    from cosmos_composer.evaluation.metrics import blur_ssim, edge_scores

    prediction, reference = synthetic_video_pair(args.evaluate_frames, args.evaluate_height, args.evaluate_width)
    opencv_threads = cv2.getNumThreads()
    cv2.setNumThreads(args.evaluate_threads)
    seconds = {}
    try:
        for name, metric in (("blur_ssim", blur_ssim), ("edge_f1", edge_scores)):
            metric(prediction[:1], reference[:1], threads=args.evaluate_threads)  # warm-up (OpenCV's first calls)
            start, start_cpu = time.perf_counter(), time.process_time()
            metric(prediction, reference, threads=args.evaluate_threads)
            seconds[f"{name}_s_per_pair"] = time.perf_counter() - start
            # CPU seconds of this process: with one thread, what the wall time would be without other processes.
            seconds[f"{name}_cpu_s_per_pair"] = time.process_time() - start_cpu
    finally:
        cv2.setNumThreads(opencv_threads)
    print(
        f"evaluate: {args.evaluate_frames} frames of {args.evaluate_height}x{args.evaluate_width}, "
        f"{args.evaluate_threads} thread(s): " + " ".join(f"{key}={value:.2f}" for key, value in seconds.items())
    )


# ---------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------
SECTIONS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], None]]] = {
    "network": (add_network_arguments, run_network),
    "data": (add_data_arguments, run_data),
    "train": (add_train_arguments, run_train),
    "trainer": (add_trainer_arguments, run_trainer),
    "evaluate": (add_evaluate_arguments, run_evaluate),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", choices=sorted(SECTIONS), default="network", help="what to benchmark")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--preset", default=None,
        help=f"network preset: network section {sorted(BENCHMARK_PRESETS)} or a single-view preset (default "
        "medium-singleview); trainer section any preset (default tiny-multiview)",
    )  # fmt: skip
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="repeatable; network section: a network config override (official name, e.g. num_blocks=4); "
        "trainer section: a train.py override (e.g. model.overrides.activation_checkpointing=false)",
    )  # fmt: skip
    for add_arguments, _ in SECTIONS.values():
        add_arguments(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    SECTIONS[args.section][1](args)


if __name__ == "__main__":
    main()
