#!/usr/bin/env python
"""Convert an official Cosmos-Transfer2.5 post-training folder layout to MDS shards for training.

Layouts (see cosmos_composer/data/layouts.py):
  multiview-hdmap   videos/ftheta_<camera>/<name>.mp4, control_input_hdmap_bbox/ftheta_<camera>/<name>.mp4
                    and captions/ftheta_camera_front_wide_120fov/<name>.json, for the 7 official cameras;
                    --cameras a,b,c converts another rig (any number of cameras, in view order: the view id
                    of a camera is its position in the list; captions come from front_wide when listed,
                    else from the first camera)
  singleview        videos/<name>.mp4, captions/<name>.json, and depth/<name>.mp4 or seg/<name>.mp4 for
                    those controls (edge and vis/blur are computed from the video while training)

Every sample is validated first (all files present, one resolution, decodable to the end, enough
frames, one fps for videos and controls). A bad sample stops the conversion with a message naming the
file and the fix; --skip-invalid leaves it out instead and lists it at the end. A video or control at
another resolution than the sample's videos is refused; --resize stores it resized instead. Empty
captions are kept and reported. The mp4 files are stored unchanged (unless --resize).

Parts and resume: the samples (sorted by name) are converted in parts of --part-samples. Each part is
written, with its shards' sha1 and xxh64 hashes, to its own folder part-NNNNN/ in the staging folder
.<output name>.staging beside --output and finished by one rename. When every part is done, one index.json
listing the shards of all parts is written and the folder is moved to --output; nothing is in --output
before that. Run the same command again after a crash or a kill: it keeps the finished parts and converts
the others ("resuming: 5 of 8 parts already converted"). After a stop on an invalid sample, the same
command with --skip-invalid resumes too. A rerun with other options (input, layout, control key, frames,
cameras, --resize, --part-samples, precompute settings) refuses the earlier parts; --overwrite discards
them and starts over.

Many GPUs: under a launcher, e.g. `composer -n 8 scripts/convert_to_mds.py ...` (same options), the parts
go round robin to the processes, each on its own GPU (cuda:LOCAL_RANK, unless --device says otherwise)
writing its own parts; rank 0 shows the progress of all (samples/s, time left), merges the parts and
prints the summary. An error on one rank stops all, rank 0 prints it and exits 1. One process and eight
write the same parts, so a conversion may be resumed with another number of processes.

--precompute latents,text also stores the frozen encoders' outputs (VAE latents of video and control,
Reason1 text embeddings, projected to 1024-d with --crossattn-proj) so training can skip them.

Examples:
    python scripts/convert_to_mds.py --layout multiview-hdmap --input my_dataset/ --output data/hdmap_mds
    composer -n 8 scripts/convert_to_mds.py --layout multiview-hdmap --input my_dataset/ --output data/hdmap_mds \\
        --precompute latents,text --vae tokenizer.pth --crossattn-proj model_ema_bf16.pt
    python scripts/convert_to_mds.py --layout multiview-hdmap --input rig/ --output data/rig_mds \\
        --cameras camera_front_wide_120fov,camera_cross_left_120fov,camera_cross_right_120fov
    python scripts/convert_to_mds.py --layout singleview --control-key depth --input ufo/ --output data/ufo_mds
    python scripts/convert_to_mds.py --layout multiview-hdmap --input demo/ --output demo_mds --min-frames 29 \\
        --precompute latents,text --vae tokenizer.pth --text-encoder nvidia/Cosmos-Reason1-7B \\
        --crossattn-proj model_ema_bf16.pt --height 720 --width 1280 --num-frames 29
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from cosmos_composer.data.convert import (
    DEFAULT_PART_SAMPLES,
    DEFAULT_SIZE_LIMIT,
    ConversionError,
    check_frames_to_encode,
    convert_to_mds,
)
from cosmos_composer.data.launch import Launch, StoppedByAnotherRank
from cosmos_composer.data.layouts import (
    CONTROL_KEY_ALIASES,
    CONTROL_KEYS,
    DEFAULT_MIN_FRAMES,
    LAYOUTS,
    LayoutError,
)
from cosmos_composer.data.output import DiskFullError
from cosmos_composer.data.precompute import PRECOMPUTE_CHOICES, Precomputer

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layout", choices=LAYOUTS, required=True, help="folder layout of --input")
    parser.add_argument("--input", required=True, help="dataset folder in the official layout")
    parser.add_argument("--output", required=True, help="local folder for the MDS shards (new or empty)")
    parser.add_argument(
        "--control-key",
        choices=CONTROL_KEYS + tuple(CONTROL_KEY_ALIASES),
        default=None,
        help="control to store: hdmap_bbox (multiview default), depth, seg; edge (single view default) and vis/blur "
        "store no control video",
    )
    parser.add_argument(
        "--min-frames",
        type=int,
        default=None,
        help=f"frames every video and control must have (default: {DEFAULT_MIN_FRAMES['multiview-hdmap']} "
        f"multiview, {DEFAULT_MIN_FRAMES['singleview']} single view, the recipes' frames per view)",
    )
    parser.add_argument(
        "--cameras",
        default=None,
        help="multiview: comma-separated cameras to convert, in view order (folders ftheta_<camera>; default: the 7 "
        "official cameras). Train with the same list as train_loader.dataset.cameras",
    )
    parser.add_argument("--skip-invalid", action="store_true", help="leave out invalid samples instead of stopping")
    parser.add_argument(
        "--resize",
        action="store_true",
        help="resize videos and controls at another resolution than their sample's videos (default: refuse them)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it is not empty")
    parser.add_argument("--size-limit", default=DEFAULT_SIZE_LIMIT, help=f"shard size (default: {DEFAULT_SIZE_LIMIT})")
    parser.add_argument(
        "--part-samples",
        type=int,
        default=DEFAULT_PART_SAMPLES,
        help=f"samples per part, the unit of work of a process and of a resume (default: {DEFAULT_PART_SAMPLES})",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    cache = parser.add_argument_group("precomputed columns (--precompute)")
    cache.add_argument("--precompute", default="", help="comma list of: latents, text")
    cache.add_argument("--num-frames", type=int, default=None, help="frames per view to encode (default: --min-frames)")
    cache.add_argument("--height", type=int, default=None, help="training height (default: 720 multiview, 704 single)")
    cache.add_argument("--width", type=int, default=1280, help="training width (default: 1280)")
    cache.add_argument("--vae", help="Wan2.1 VAE: official tokenizer.pth, or a diffusers folder / HF repo id")
    cache.add_argument("--text-encoder", help="Cosmos-Reason1 folder or HF repo id (default: the official repo)")
    cache.add_argument(
        "--crossattn-proj",
        help="checkpoint .pt holding net.crossattn_proj.* : store 1024-d projected text embeddings (else raw 100352-d)",
    )
    cache.add_argument(
        "--device",
        default=None,
        help="encoder device (default: cuda:LOCAL_RANK, the launch's GPU of this process, or cpu)",
    )
    cache.add_argument("--dtype", choices=DTYPES, default=None, help="encoder dtype (default: bf16 on GPU, else fp32)")
    return parser.parse_args(argv)


def load_crossattn_proj(path: str, dtype: torch.dtype) -> torch.nn.Module:
    """``nn.Sequential(Linear, GELU)`` with the ``net.crossattn_proj.0.*`` weights of a checkpoint file."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    state = state.get("model", state) if isinstance(state, dict) else state
    for prefix in ("net.crossattn_proj.0.", "crossattn_proj.0."):
        if f"{prefix}weight" in state:
            weight, bias = state[f"{prefix}weight"], state[f"{prefix}bias"]
            break
    else:
        raise KeyError(f"{path} has no net.crossattn_proj.0.weight; pass the released or exported model checkpoint")
    projection = torch.nn.Sequential(torch.nn.Linear(weight.shape[1], weight.shape[0]), torch.nn.GELU())
    projection[0].load_state_dict({"weight": weight, "bias": bias})
    return projection.to(dtype).eval().requires_grad_(False)


def _wanted_precompute(args: argparse.Namespace) -> set[str]:
    wanted = {item.strip() for item in args.precompute.split(",") if item.strip()}
    unknown = wanted - set(PRECOMPUTE_CHOICES)
    if unknown:
        raise ValueError(f"--precompute {args.precompute}: unknown {sorted(unknown)}; choose from {PRECOMPUTE_CHOICES}")
    if "latents" in wanted and not args.vae:
        raise ValueError("--precompute latents needs --vae (the official tokenizer.pth or a diffusers VAE)")
    return wanted


def _encode_size(args: argparse.Namespace) -> tuple[int, int, int]:
    """(height, width, frames per view) the cached columns are for."""
    default_height = 720 if args.layout == "multiview-hdmap" else 704
    min_frames = args.min_frames or DEFAULT_MIN_FRAMES[args.layout]
    return args.height or default_height, args.width, args.num_frames or min_frames


def _encoder_dtype(args: argparse.Namespace) -> torch.dtype:
    return DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if args.device.startswith("cuda") else torch.float32)


def precompute_settings(args: argparse.Namespace) -> dict | None:
    """What decides the cached columns, from the options alone (no encoder is loaded): part of the options a
    resumed conversion must share with the finished parts it keeps. Checks the --precompute options."""
    wanted = _wanted_precompute(args)
    if not wanted:
        return None
    height, width, num_frames = _encode_size(args)
    if "latents" in wanted:
        check_frames_to_encode(args.min_frames or DEFAULT_MIN_FRAMES[args.layout], num_frames)

    def where(name: str | None) -> str | None:  # a local file by its absolute path, a repo id as given
        return str(Path(name).resolve()) if name and Path(name).exists() else name

    return {
        "precompute": sorted(wanted),
        "height": height,
        "width": width,
        "num_frames": num_frames,
        "vae": where(args.vae) if "latents" in wanted else None,
        "text_encoder": where(args.text_encoder) if "text" in wanted else None,
        "crossattn_proj": where(args.crossattn_proj) if "text" in wanted else None,
        "dtype": str(_encoder_dtype(args)),
    }


def build_precomputer(args: argparse.Namespace) -> Precomputer | None:
    wanted = _wanted_precompute(args)
    if not wanted:
        return None
    dtype = _encoder_dtype(args)
    vae = text_embedder = crossattn_proj = None
    if "latents" in wanted:
        from cosmos_composer.encoders.vae import WanVAE

        if args.vae.endswith((".pth", ".pt")):
            vae = WanVAE.from_official_pth(args.vae, dtype=dtype, device=args.device)
        else:
            vae = WanVAE.from_diffusers(args.vae, dtype=dtype, device=args.device)
    if "text" in wanted:
        from cosmos_composer.encoders.text import REASON1_REPO, Reason1TextEmbedder

        text_embedder = Reason1TextEmbedder.from_pretrained(
            args.text_encoder or REASON1_REPO, dtype=dtype, device=args.device
        )
        if args.crossattn_proj:
            crossattn_proj = load_crossattn_proj(args.crossattn_proj, dtype).to(args.device)
    height, width, num_frames = _encode_size(args)
    return Precomputer(
        height=height,
        width=width,
        num_frames=num_frames,
        vae=vae,
        text_embedder=text_embedder,
        crossattn_proj=crossattn_proj,
        device=args.device,
    )


def encoder_device(device: str | None, local_rank: int) -> str:
    """--device, by default this process's GPU of the launch (cuda:LOCAL_RANK) or the CPU; made the current GPU."""
    device = device or (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        index = torch.device(device).index
    except RuntimeError as error:
        raise ValueError(f"--device {device}: {error}. Fix: pass cpu, cuda or cuda:<index>") from None
    if index is not None and torch.cuda.is_available():
        torch.cuda.set_device(index)  # what the encoders' libraries allocate by default goes there too
    return device


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("cosmos_composer").setLevel(logging.INFO)
    try:
        launch = Launch.from_environment()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        args.device = encoder_device(args.device, launch.local_rank)
        settings = precompute_settings(args)
        report = convert_to_mds(
            args.input,
            args.output,
            layout=args.layout,
            control_key=args.control_key,
            min_frames=args.min_frames,
            skip_invalid=args.skip_invalid,
            resize=args.resize,
            overwrite=args.overwrite,
            size_limit=args.size_limit,
            progress=not args.no_progress,
            cameras=[c.strip() for c in args.cameras.split(",")] if args.cameras else None,
            part_samples=args.part_samples,
            # The encoders load only in a process with parts left to convert, after the options are checked.
            build_precomputer=(lambda: build_precomputer(args)) if settings else None,
            precompute_settings=settings,
            launch=launch,
        )
    except (
        StoppedByAnotherRank,
        ConversionError,
        LayoutError,
        ValueError,
        FileExistsError,
        KeyError,
        DiskFullError,
    ) as error:
        # Under a launcher rank 0 prints every error once and exits 1: it gets the other ranks' errors, and an
        # error in the options is the same on every rank. A second message, or the launcher dumping the empty
        # log of a rank that exited 1 first, would only hide it.
        if not launch.is_rank_zero:
            return 0
        print(f"error: {error}", file=sys.stderr)
        return 1
    if launch.is_rank_zero:
        print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
