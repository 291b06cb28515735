#!/usr/bin/env python
"""Convert an official Cosmos-Transfer2.5 post-training folder layout to MDS shards for training.

Layouts (see cosmos_composer/data/layouts.py):
  multiview-hdmap   videos/ftheta_<camera>/<name>.mp4, control_input_hdmap_bbox/ftheta_<camera>/<name>.mp4
                    and captions/ftheta_camera_front_wide_120fov/<name>.json, for the 7 official cameras;
                    --cameras a,b,c converts another rig (any number of cameras, in view order: the view id
                    of a camera is its position in the list; captions come from front_wide when listed,
                    else from the camera mapped to it, else from the first camera). A camera may name the
                    official camera it starts from: CAM_FRONT=camera_front_wide_120fov (its caption prefix,
                    and its view-embedding row when training from the released weights)
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
Reason1 text embeddings) so training can skip them. The encoders load as training loads them: --vae and
--text-encoder take `tiny`, a local path or an hf://org/repo[/file][@revision] URI, resolved through the
Hugging Face cache (HF_HOME; HF_HUB_OFFLINE=1 works from the cache alone, and a file missing from it is
refused up front with the `hf download` command to run). Text is cached projected to 1024-d by the
crossattn_proj of the Transfer checkpoint you will train: --crossattn-proj, by default the load_path of
--config (the layout's recipe YAML of this checkout: yamls/hdmap.yaml, yamls/singleview_edge.yaml). Raw
100352-d embeddings (686 MiB per 7-view sample, 6.5 TiB per 10k) are cached only with --raw-text, which a
full fine-tune (model.train_base=true) needs. Before writing, the converter prints what the dataset will
take (mp4 files, latents, text). With windows, each window's latents are encoded from its own frames.

Examples:
    python scripts/convert_to_mds.py --layout multiview-hdmap --input my_dataset/ --output data/hdmap_mds
    composer -n 8 scripts/convert_to_mds.py --layout multiview-hdmap --input my_dataset/ --output data/hdmap_mds \\
        --precompute latents,text --vae tokenizer.pth --crossattn-proj model_ema_bf16.pt
    python scripts/convert_to_mds.py --layout multiview-hdmap --input rig/ --output data/rig_mds \\
        --cameras camera_front_wide_120fov,camera_cross_left_120fov,camera_cross_right_120fov
    python scripts/convert_to_mds.py --layout multiview-hdmap --input rig/ --output data/rig_mds \\
        --cameras CAM_FRONT=camera_front_wide_120fov,CAM_FRONT_LEFT=camera_cross_left_120fov,CAM_BACK=camera_rear_tele_30fov
    python scripts/convert_to_mds.py --layout singleview --control-key depth --input ufo/ --output data/ufo_mds
    python scripts/convert_to_mds.py --layout multiview-hdmap --input my_dataset/ --output data/hdmap_mds \\
        --precompute latents,text --vae hf://nvidia/Cosmos-Predict2.5-2B/tokenizer.pth \\
        --num-frames 29 --height 720 --width 1280   # text projected by yamls/hdmap.yaml's load_path
    python scripts/convert_to_mds.py --layout singleview --input ufo/ --output data/ufo_full_ft_mds \\
        --precompute text --raw-text               # raw text, for a full fine-tune (model.train_base=true)
    python scripts/convert_to_mds.py --layout multiview-hdmap --input logs_30fps/ --output data/logs_mds \\
        --fps 10 --window-stride 29             # 10 fps windows of 29 frames, one every 29 frames
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

import torch

from cosmos_composer.checkpoint.hf import HfResolveError
from cosmos_composer.checkpoint.load import CheckpointLoadError
from cosmos_composer.checkpoint.network_weights import load_crossattn_proj
from cosmos_composer.config import load_config
from cosmos_composer.data.cameras import parse_cameras
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
    MULTIVIEW_HDMAP,
    RECIPE_FPS,
    SINGLEVIEW,
    LayoutError,
)
from cosmos_composer.data.output import DiskFullError
from cosmos_composer.data.precompute import PRECOMPUTE_CHOICES, Precomputer, raw_text_refusal
from cosmos_composer.dtypes import DTYPES, default_dtype
from cosmos_composer.encoders import EncoderLoadError, build_encoders, text_embed_dim
from cosmos_composer.encoders.text import REASON1_URI

# The default --config: the recipe YAML of each layout in this checkout (none where it is missing, e.g. when
# the package is installed without the checkout).
REPO = Path(__file__).resolve().parents[1]
RECIPE_YAMLS = {MULTIVIEW_HDMAP: REPO / "yamls" / "hdmap.yaml", SINGLEVIEW: REPO / "yamls" / "singleview_edge.yaml"}


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
        "official cameras); name=official starts a camera from that official camera (its caption prefix), e.g. "
        "CAM_FRONT=camera_front_wide_120fov. Train with the same list as train_loader.dataset.cameras",
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
    cache.add_argument(
        "--num-frames",
        type=int,
        default=None,
        help="served frames per view to encode, and the window length of --window-stride (default: --min-frames, "
        "or the recipe's frames per view with --window-stride)",
    )
    cache.add_argument("--height", type=int, default=None, help="training height (default: 720 multiview, 704 single)")
    cache.add_argument("--width", type=int, default=1280, help="training width (default: 1280)")
    cache.add_argument(
        "--vae",
        help="Wan2.1 VAE: tiny, the official tokenizer.pth or a diffusers folder, as a local path or an hf:// URI "
        "(e.g. hf://nvidia/Cosmos-Predict2.5-2B/tokenizer.pth[@revision])",
    )
    cache.add_argument(
        "--text-encoder",
        default=REASON1_URI,
        help=f"Cosmos-Reason1: tiny, a local folder or an hf:// URI (default: {REASON1_URI})",
    )
    cache.add_argument(
        "--crossattn-proj",
        help="the Transfer checkpoint you will train (a consolidated .pt such as a released *_ema_bf16.pt, an hf:// "
        "URI of one, or a Composer checkpoint folder): text is cached projected to 1024-d by its net.crossattn_proj "
        "(default: load_path of --config)",
    )
    cache.add_argument(
        "--config",
        help="training YAML whose load_path is the default --crossattn-proj (default: "
        + ", ".join(f"{path.relative_to(REPO)} for {layout}" for layout, path in RECIPE_YAMLS.items())
        + ", when this checkout has it)",
    )
    cache.add_argument(
        "--raw-text",
        action="store_true",
        help="cache raw 100352-d text embeddings (686 MiB per 7-view sample) instead of projected ones, as a full "
        "fine-tune (model.train_base=true) needs",
    )
    cache.add_argument(
        "--device",
        default=None,
        help="encoder device (default: cuda:LOCAL_RANK, the launch's GPU of this process, or cpu)",
    )
    cache.add_argument("--dtype", choices=DTYPES, default=None, help="encoder dtype (default: bf16 on GPU, else fp32)")
    return parser.parse_args(argv)


@contextlib.contextmanager
def reported_as(flag: str):
    """Load errors of the file ``flag`` names as one-line ValueErrors that start with ``flag``, which main()
    prints without a traceback."""
    try:
        yield
    except (HfResolveError, CheckpointLoadError, EncoderLoadError) as error:
        message = " ".join(str(error).split())
        raise ValueError(message if message.startswith(flag) else f"{flag}: {message}") from None


def crossattn_proj_source(args: argparse.Namespace) -> tuple[str | None, str]:
    """(the checkpoint whose crossattn_proj projects the cached text, how messages name it): --crossattn-proj,
    else the load_path of --config (default: the layout's recipe YAML, when this checkout has it), else none."""
    if args.crossattn_proj:
        return args.crossattn_proj, "--crossattn-proj"
    config = args.config or (RECIPE_YAMLS[args.layout] if RECIPE_YAMLS[args.layout].is_file() else None)
    if config is None:
        return None, ""
    cfg = load_config(config)  # a ConfigError (a ValueError) names the file and the key
    if cfg.load_path is None:
        return None, ""
    if cfg.model.train_base:
        raise ValueError(
            f"--config {config} trains the base (model.train_base=true): its crossattn_proj changes as it trains, "
            "so text projected by the load_path's would not fit the trained network. Fix: pass --raw-text"
        )
    return cfg.load_path, f"--crossattn-proj (load_path of {config})"


def camera_list(args: argparse.Namespace) -> list[str] | None:
    """``--cameras a,b=official,...`` as a list (parsed by ``cameras.parse_cameras``); None for the 7 official."""
    return [c.strip() for c in args.cameras.split(",")] if args.cameras else None


def _wanted_precompute(args: argparse.Namespace) -> set[str]:
    """The --precompute columns, with the checks that need no file: each known, latents with a --vae, and text
    either projected (--crossattn-proj, or the load_path of --config) or explicitly raw (--raw-text)."""
    wanted = {item.strip() for item in args.precompute.split(",") if item.strip()}
    unknown = wanted - set(PRECOMPUTE_CHOICES)
    if unknown:
        raise ValueError(f"--precompute {args.precompute}: unknown {sorted(unknown)}; choose from {PRECOMPUTE_CHOICES}")
    if "latents" in wanted and not args.vae:
        raise ValueError("--precompute latents needs --vae (the official tokenizer.pth or a diffusers VAE)")
    if args.raw_text and args.crossattn_proj:
        raise ValueError("--raw-text and --crossattn-proj contradict each other: cache text raw or projected")
    if "text" in wanted and not args.raw_text and crossattn_proj_source(args)[0] is None:
        num_views = len(parse_cameras(camera_list(args), "--cameras").names) if args.layout == MULTIVIEW_HDMAP else 1
        raise ValueError(f"--precompute text: {raw_text_refusal(text_embed_dim(args.text_encoder), num_views)}")
    return wanted


def _encode_size(args: argparse.Namespace) -> tuple[int, int, int]:
    """(height, width, served frames per view) the cached columns are for: --num-frames, else the window length
    of --window-stride (the recipe's frames per view), else --min-frames."""
    default_height = 720 if args.layout == MULTIVIEW_HDMAP else 704
    window_frames = DEFAULT_MIN_FRAMES[args.layout] if args.window_stride else None
    min_frames = args.min_frames or DEFAULT_MIN_FRAMES[args.layout]
    return args.height or default_height, args.width, args.num_frames or window_frames or min_frames


def _encoder_dtype(args: argparse.Namespace) -> torch.dtype:
    return default_dtype(args.device, args.dtype)


def precompute_settings(args: argparse.Namespace) -> dict | None:
    """What decides the cached columns, from the options alone (no encoder is loaded): part of the options a
    resumed conversion must share with the finished parts it keeps. Checks the --precompute options."""
    wanted = _wanted_precompute(args)
    if not wanted:
        return None
    height, width, num_frames = _encode_size(args)
    if "latents" in wanted:
        check_frames_to_encode(args.min_frames or DEFAULT_MIN_FRAMES[args.layout], num_frames)

    def where(name: str | None) -> str | None:  # a local file by its absolute path, a repo id or URI as given
        return str(Path(name).resolve()) if name and Path(name).exists() else name

    return {
        "precompute": sorted(wanted),
        "height": height,
        "width": width,
        "num_frames": num_frames,
        "vae": where(args.vae) if "latents" in wanted else None,
        "text_encoder": where(args.text_encoder) if "text" in wanted else None,
        "crossattn_proj": where(crossattn_proj_source(args)[0]) if "text" in wanted and not args.raw_text else None,
        "cameras": args.cameras,  # the caption prefixes of the cached text
        "dtype": str(_encoder_dtype(args)),
    }


def build_precomputer(args: argparse.Namespace) -> Precomputer | None:
    """The encoders of --precompute, loaded as training loads them (tiny, a path or an hf:// URI); None without
    --precompute. A file that cannot be had is one line naming the flag."""
    wanted = _wanted_precompute(args)
    if not wanted:
        return None
    # The caption prefixes of the cached text; a bad list is refused here, before the encoders load.
    rig = parse_cameras(camera_list(args), "--cameras")
    dtype = _encoder_dtype(args)
    crossattn_proj = None
    if "text" in wanted and not args.raw_text:
        source, flag = crossattn_proj_source(args)
        with reported_as(flag):
            crossattn_proj = load_crossattn_proj(source, flag, args.device, dtype)
    with reported_as("--vae"):
        vae, _ = build_encoders(args.vae if "latents" in wanted else None, None, args.device, dtype)
    with reported_as("--text-encoder"):
        _, text_embedder = build_encoders(None, args.text_encoder if "text" in wanted else None, args.device, dtype)
    height, width, num_frames = _encode_size(args)
    return Precomputer(
        height=height,
        width=width,
        num_frames=num_frames,
        vae=vae,
        text_embedder=text_embedder,
        crossattn_proj=crossattn_proj,
        device=args.device,
        camera_origins=rig.origins,
        raw_text=args.raw_text,
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
            cameras=camera_list(args),
            fps=args.fps,
            window_stride=args.window_stride,
            window_frames=args.num_frames if args.window_stride else None,
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
