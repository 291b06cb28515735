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
captions are kept and reported. The shards are written, with their sha1 and xxh64 hashes, to a
temporary folder beside --output and moved into place only when complete; a killed conversion's
temporary folder is deleted by the next one. The mp4 files are stored unchanged (unless --resize).

Frame rate: --fps F serves every camera and control at F frames per second by frame selection: served
frame i of a clip is source frame round(i * source_fps / F), halves rounded up (30 -> 10 fps takes every 3rd
frame; 25 -> 10 fps takes frames 0, 3, 5, 8, 10, ...). The mp4 files are still stored unchanged; the rows
record the source rate and the selection (columns fps, source_fps, frame_start, frame_step). F above a
source's rate (upsampling) is refused. The multiview recipe trains at 10 fps, so a multiview source at another
rate is refused unless --fps is given (--fps 10 for the recipe); single view has no fixed rate (upstream serves
each video at its native fps). --min-frames counts served frames.

Windows: --window-stride N cuts each clip into windows of --num-frames served frames (default: 29 multiview,
93 single view), one starting every N served frames, so a long log trains on all of its length. Each window is
a sample of its own named <clip>@<start>, start = the window's first served frame (e.g. demo_0000@58); a clip
shorter than one window is invalid (too short). A window starts at the source frame of its first served frame
and selects from there (with a fractional ratio such as 25 -> 10 fps the rounding restarts at each window).
Each window row stores the clip's mp4 files again (no re-encoding). The summary says the frame-rate change
and how many windows each clip gave.

--precompute latents,text also stores the frozen encoders' outputs (VAE latents of video and control,
Reason1 text embeddings, projected to 1024-d with --crossattn-proj) so training can skip them. With windows,
each window's latents are encoded from its own frames.

Examples:
    python scripts/convert_to_mds.py --layout multiview-hdmap --input my_dataset/ --output data/hdmap_mds
    python scripts/convert_to_mds.py --layout multiview-hdmap --input rig/ --output data/rig_mds \\
        --cameras camera_front_wide_120fov,camera_cross_left_120fov,camera_cross_right_120fov
    python scripts/convert_to_mds.py --layout singleview --control-key depth --input ufo/ --output data/ufo_mds
    python scripts/convert_to_mds.py --layout multiview-hdmap --input logs_30fps/ --output data/logs_mds \\
        --fps 10 --window-stride 29
    python scripts/convert_to_mds.py --layout multiview-hdmap --input demo/ --output demo_mds --min-frames 29 \\
        --precompute latents,text --vae tokenizer.pth --text-encoder nvidia/Cosmos-Reason1-7B \\
        --crossattn-proj model_ema_bf16.pt --height 720 --width 1280 --num-frames 29
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from cosmos_composer.data.convert import DEFAULT_SIZE_LIMIT, ConversionError, convert_to_mds
from cosmos_composer.data.layouts import (
    CONTROL_KEY_ALIASES,
    CONTROL_KEYS,
    DEFAULT_MIN_FRAMES,
    LAYOUTS,
    RECIPE_FPS,
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
        help=f"served frames (after --fps) every video and control must give (default: --num-frames with "
        f"--window-stride, else {DEFAULT_MIN_FRAMES['multiview-hdmap']} multiview, "
        f"{DEFAULT_MIN_FRAMES['singleview']} single view, the recipes' frames per view)",
    )
    parser.add_argument(
        "--fps",
        type=float,
        default=None,
        help=f"serve every camera and control at this frame rate by taking source frame round(i * source_fps / "
        f"fps) for served frame i (integer ratios are exact strides: 30 -> 10 takes every 3rd frame); a rate above "
        f"the source's is refused. Default: the source rate, which must be the recipe's "
        f"({RECIPE_FPS['multiview-hdmap']:g} fps) for multiview; single view has no fixed rate",
    )
    parser.add_argument(
        "--window-stride",
        type=int,
        default=None,
        help="cut each clip into windows of --num-frames served frames (default: the recipe's frames per view), "
        "one every N served frames; each window is a sample named <clip>@<start> (start: its first served frame)",
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
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    cache = parser.add_argument_group("precomputed columns (--precompute)")
    cache.add_argument("--precompute", default="", help="comma list of: latents, text")
    cache.add_argument(
        "--num-frames",
        type=int,
        default=None,
        help="served frames per view to encode, and the window length of --window-stride (default: --min-frames, "
        "or the recipe's frames per view with --window-stride)",
    )
    cache.add_argument("--height", type=int, default=None, help="training height (default: 720 multiview, 704 single)")
    cache.add_argument("--width", type=int, default=1280, help="training width (default: 1280)")
    cache.add_argument("--vae", help="Wan2.1 VAE: official tokenizer.pth, or a diffusers folder / HF repo id")
    cache.add_argument("--text-encoder", help="Cosmos-Reason1 folder or HF repo id (default: the official repo)")
    cache.add_argument(
        "--crossattn-proj",
        help="checkpoint .pt holding net.crossattn_proj.* : store 1024-d projected text embeddings (else raw 100352-d)",
    )
    cache.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="encoder device")
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


def build_precomputer(args: argparse.Namespace) -> Precomputer | None:
    wanted = {item.strip() for item in args.precompute.split(",") if item.strip()}
    unknown = wanted - set(PRECOMPUTE_CHOICES)
    if unknown:
        raise ValueError(f"--precompute {args.precompute}: unknown {sorted(unknown)}; choose from {PRECOMPUTE_CHOICES}")
    if not wanted:
        return None
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    vae = text_embedder = crossattn_proj = None
    if "latents" in wanted:
        if not args.vae:
            raise ValueError("--precompute latents needs --vae (the official tokenizer.pth or a diffusers VAE)")
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
    default_height = 720 if args.layout == "multiview-hdmap" else 704
    min_frames = args.min_frames or DEFAULT_MIN_FRAMES[args.layout]
    window_frames = DEFAULT_MIN_FRAMES[args.layout] if args.window_stride else None
    return Precomputer(
        height=args.height or default_height,
        width=args.width,
        num_frames=args.num_frames or window_frames or min_frames,
        vae=vae,
        text_embedder=text_embedder,
        crossattn_proj=crossattn_proj,
        device=args.device,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("cosmos_composer").setLevel(logging.INFO)
    try:
        precomputer = build_precomputer(args)
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
            precomputer=precomputer,
            progress=not args.no_progress,
            cameras=[c.strip() for c in args.cameras.split(",")] if args.cameras else None,
            fps=args.fps,
            window_stride=args.window_stride,
            window_frames=args.num_frames if args.window_stride else None,
        )
    except (ConversionError, LayoutError, ValueError, FileExistsError, KeyError, DiskFullError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
