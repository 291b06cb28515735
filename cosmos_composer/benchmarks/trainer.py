"""trainer section: samples/s, memory and MFU of the real training path, `composer -n N train.py <recipe YAML>`
on synthetic cached shards (see `run`)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from composer.utils import reproducibility
from streaming import MDSWriter

from ..checkpoint.load import read_state_dict, select_network_weights
from ..config import AUTO_CONTEXT_PARALLEL, load_config
from ..data import mds
from ..data.cameras import DEFAULT_CAMERAS
from ..data.layouts import MULTIVIEW_HDMAP, ON_THE_FLY_CONTROLS, SINGLEVIEW
from ..data.precompute import crossattn_proj_fingerprint
from ..latent_geometry import LATENT_CHANNELS, SPATIAL_COMPRESSION, pixel_num_frames
from ..models import build_network, get_config
from ..models.context_parallel import valid_context_parallel_sizes
from ..models.parallelize import FROZEN_DTYPE
from ..models.prepare import WeightSource, prepare_training_network
from .common import PEAK_BF16_FLOPS, REPO
from .train import model_flops_per_sample

# The recipe YAML of each kind of preset: the benchmark runs exactly what a user runs.
TRAINER_RECIPES = {True: REPO / "yamls" / "hdmap.yaml", False: REPO / "yamls" / "singleview_edge.yaml"}
TRAINER_METRICS = (
    "samples_per_s", "device_s_per_sample", "peak_alloc_gib", "peak_reserved_gib", "host_rss_gib_per_rank",
    "first_step_s", "mfu",
)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
    network = get_config(cfg.model.preset)
    layout = MULTIVIEW_HDMAP if network.is_multiview else SINGLEVIEW
    cameras = DEFAULT_CAMERAS[:views] if network.is_multiview else (None,)
    control_key = cfg.model.control_key
    num_frames, height, width = pixel_num_frames(latent_frames), H * SPATIAL_COMPRESSION, W * SPATIAL_COMPRESSION
    text_dim = network.crossattn_emb_channels if text_kind == "projected" else network.crossattn_proj_in_channels
    columns = mds.dataset_columns(layout, control_key, cameras, latents=True, text=True)
    rng = np.random.default_rng(0)
    latent_shape = (LATENT_CHANNELS, views * latent_frames, H, W)
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
    """The fingerprint of the `crossattn_proj` weights the run will hold, which cached projected text must carry:
    those of `load_path`, else of the `base_load_path` base (it holds the projection), else of the fresh draw."""
    weights_file = load_path or cfg.base_load_path
    if weights_file:
        selected, _ = select_network_weights(read_state_dict(weights_file), source=weights_file)
        proj_prefix = "crossattn_proj."
        with torch.device("meta"):
            net = build_network(cfg.model.preset, **dict(cfg.model.overrides))
        proj = net.crossattn_proj.to_empty(device="cpu")
        proj.load_state_dict({k[len(proj_prefix) :]: v for k, v in selected.items() if k.startswith(proj_prefix)})
    else:
        # The fresh draw as train.py makes it: seeded, then prepared in one process (same values as any sharding).
        reproducibility.seed_all(cfg.seed)
        net = prepare_training_network(
            get_config(cfg.model.preset, **dict(cfg.model.overrides)),
            lora=None,
            train_base=cfg.model.train_base,
            precision="fp32",
            fsdp=None,
            weights=WeightSource(),
            device=torch.device("cpu"),
        )
        proj = net.crossattn_proj
    return crossattn_proj_fingerprint(proj.to(FROZEN_DTYPE))  # projected text needs it frozen: stored in bf16


def run(args: argparse.Namespace) -> None:
    """Samples/s, memory and MFU of the real training path: `composer -n N train.py` on the recipe YAML.

    Synthetic cached shards (random latents, control latents and projected text of the preset's shapes) are
    written to a temporary folder; the run uses the recipe YAML with `loggers=null`, no checkpoints and those
    shards. The figures come from the run's own `run_summary` callback (see callbacks/run_summary.py).
    MFU = model FLOPs per sample (forward + backward with the frozen base: no weight gradients there; activation
    recomputation not counted; counted by torch's FlopCounterMode on the meta device) x samples/s /
    (ranks x the GPU's dense bf16 peak).
    """
    preset = args.preset or "tiny-multiview"
    network = get_config(preset)
    recipe = TRAINER_RECIPES[network.is_multiview]
    views = args.views or (7 if network.is_multiview else 1)
    latent_frames = args.latent_frames or network.state_t
    # The multiview network splits the latent frames into views by its state_t (frames per view).
    network_overrides = [f"model.preset={preset}", f"model.overrides.state_t={latent_frames}"]
    cfg = load_config(recipe, [*network_overrides, *args.overrides])
    H = args.latent_height or cfg.train_loader.dataset.height // SPATIAL_COMPRESSION
    W = args.latent_width or cfg.train_loader.dataset.width // SPATIAL_COMPRESSION
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
    # `auto` (the recipe's) is resolved as train.py would for one sample per step: the largest valid size.
    context_parallel_size = cfg.context_parallel_size
    if context_parallel_size == AUTO_CONTEXT_PARALLEL:
        context_parallel_size = valid_context_parallel_sizes(network.num_heads, args.nproc, views * latent_frames)[-1]
    samples_per_step = args.nproc // context_parallel_size
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
            "train_loader.num_workers=0", f"global_train_batch_size={samples_per_step}",
            f"context_parallel_size={context_parallel_size}", "device_train_microbatch_size=1",
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
        flops = model_flops_per_sample(preset, dict(cfg.model.overrides), args, (views, latent_frames, H, W))
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
        if peak:
            summary["mfu"] = flops * summary["samples_per_s"] / (args.nproc * peak)  # samples/s: unique samples
        print(f"trainer: {flops:.4g} model FLOPs per sample; MFU against {peak} FLOP/s per GPU ({name})")
    print("trainer: " + " ".join(f"{key.replace('samples_per_s', 'samples/s')}={summary[key]:.4g}"
                                 for key in TRAINER_METRICS))  # fmt: skip
