#!/usr/bin/env python
"""Generate a video with a Cosmos-Transfer2.5 checkpoint from control video(s) and a prompt.

Single view (one control mp4 -> out.mp4):
    python scripts/generate.py --checkpoint out/model_ema_bf16.pt --preset transfer2.5-2b-singleview-general \\
        --control edge.mp4 --prompt "A robot arm folds a blue cloth." --output out.mp4

Multiview (a folder with one control mp4 per camera -> out_<camera>.mp4 for each view and the overview out.mp4):
    python scripts/generate.py --checkpoint out/model_ema_bf16.pt --preset transfer2.5-2b-multiview \\
        --control hdmap_views/ --prompt "A sunny day on a highway." --output out.mp4

The multiview control folder holds, for each of the 7 cameras, <camera>.mp4 (camera_front_wide_120fov.mp4,
...; ftheta_<camera>.mp4 and the short names front_wide.mp4, rear.mp4, ... work too) or a subfolder
ftheta_<camera>/ with one mp4 (the official control_input_hdmap_bbox/ layout of one sample).

--checkpoint takes a consolidated .pt (model.pt, model_ema_fp32.pt, model_ema_bf16.pt, the released
*_ema_bf16.pt), an hf://org/repo/file[@revision] URI, or a Composer checkpoint folder. Files with both
net.* and net_ema.* (model.pt, Composer checkpoints) are sampled with the EMA weights unless --weights net.

Several processes sample one video together (context parallelism over all of them; rank 0 writes):
    composer -n 8 scripts/generate.py --checkpoint ... --output out.mp4
The number of processes must divide the network's heads (16 in the 2B) and the latent frames.

Defaults follow the official inference: guidance 3 with v = cond + guidance * (cond - uncond), 35 UniPC
steps with shift 5, the official negative prompt, no conditioning frames; the frame count is the
network's native length (93 single view, 29 multiview) and the size and fps are the control video's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from cosmos_composer.checkpoint import hf  # noqa: E402
from cosmos_composer.diffusion import sampler  # noqa: E402
from cosmos_composer.generate import (  # noqa: E402
    CAPTION_MODES,
    DEFAULT_TEXT_ENCODER,
    DEFAULT_VAE,
    GenerateOptions,
    GenerationError,
    generate,
)
from cosmos_composer.models.presets import PRESETS  # noqa: E402


def _parse_overrides(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        if "=" not in item:
            raise GenerationError(f"--set {item!r}: expected key=value, e.g. --set num_blocks=6")
        key, value = item.split("=", 1)
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--checkpoint", required=True, help=".pt file, hf:// URI or Composer checkpoint folder")
    model.add_argument("--preset", required=True, choices=sorted(PRESETS), help="network preset the checkpoint was trained with")
    model.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="network config override by its official name (repeatable), e.g. --set num_blocks=6")
    model.add_argument("--weights", choices=("ema", "net"), default="ema",
                       help="for files with net.* and net_ema.* (model.pt, Composer checkpoints): which to sample "
                            "with (default: ema; EMA-only files hold one set under net.*)")
    model.add_argument("--allow-partial-load", action="store_true",
                       help="load the matching keys only and print what was dropped (default: strict)")
    model.add_argument("--vae", default=DEFAULT_VAE, help="Wan2.1 VAE: tiny | path | hf:// URI (default: the official tokenizer.pth)")
    model.add_argument("--text-encoder", default=DEFAULT_TEXT_ENCODER,
                       help="Cosmos-Reason1: tiny | path | hf:// URI (default: nvidia/Cosmos-Reason1-7B)")

    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--control", required=True,
                        help="control mp4 (single view) or a folder with one mp4 per camera (multiview)")
    inputs.add_argument("--sample", help="multiview: the sample to take from a dataset's control folder in the "
                        "official layout (ftheta_<camera>/<sample>.mp4)")
    text = inputs.add_mutually_exclusive_group(required=True)
    text.add_argument("--prompt", help="the text prompt")
    text.add_argument("--text-embedding", help="a cached Reason1 embedding (.pt tensor [L, D], or [V, L, D] per view)")
    negative = inputs.add_mutually_exclusive_group()
    negative.add_argument("--negative-prompt", default=None,
                          help="negative prompt for the unconditional branch (default: the official one)")
    negative.add_argument("--negative-text-embedding", default=None, help="a cached embedding of the negative prompt")
    negative.add_argument("--no-negative-prompt", action="store_true",
                          help="use training's dropped text (zeros) for the unconditional branch instead")
    inputs.add_argument("--cameras", default=None,
                        help="multiview: comma-separated cameras to generate (default: all 7)")
    inputs.add_argument("--caption-mode", choices=CAPTION_MODES, default="prefixed",
                        help="multiview prompts: 'prefixed' = camera prefix on every view, caption on front-wide "
                             "(as in training; default); 'front-only' = as the official multiview inference script")
    inputs.add_argument("--num-conditional-frames", type=int, default=0,
                        help="first frames of --input to condition on (0, 1, 5, ...; default 0)")
    inputs.add_argument("--input", default=None, help="video (folder for multiview) with the conditioning frames")
    inputs.add_argument("--control-weight", type=float, default=1.0, help="control strength in [0, 1] (default 1)")

    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--seed", type=int, default=0)
    sampling.add_argument("--guidance", type=float, default=sampler.DEFAULT_GUIDANCE,
                          help="classifier-free guidance, v = cond + g * (cond - uncond); 0 = no guidance (default 3)")
    sampling.add_argument("--steps", type=int, default=sampler.DEFAULT_NUM_STEPS, help="UniPC steps (default 35)")
    sampling.add_argument("--shift", type=float, default=sampler.DEFAULT_SHIFT, help="sigma shift (default 5)")
    sampling.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    sampling.add_argument("--dtype", choices=("bf16", "fp32"), default=None, help="default: bf16 on GPU, fp32 on CPU")
    sampling.add_argument("--no-progress", action="store_true", help="no progress bar")

    output = parser.add_argument_group("output")
    output.add_argument("--output", required=True, help="output .mp4 (multiview: the overview; views beside it)")
    output.add_argument("--num-frames", type=int, default=None, help="frames per view, 1 + 4k (default: the network's)")
    output.add_argument("--height", type=int, default=None, help="default: the control video's")
    output.add_argument("--width", type=int, default=None, help="default: the control video's")
    output.add_argument("--fps", type=float, default=None, help="output frame rate (default: the control video's)")
    return parser.parse_args(argv)


def options_from_args(args: argparse.Namespace) -> GenerateOptions:
    return GenerateOptions(
        checkpoint=args.checkpoint,
        preset=args.preset,
        control=args.control,
        sample=args.sample,
        output=args.output,
        prompt=args.prompt,
        text_embedding=args.text_embedding,
        negative_prompt=args.negative_prompt,
        use_negative_prompt=not args.no_negative_prompt,
        negative_text_embedding=args.negative_text_embedding,
        overrides=_parse_overrides(args.overrides),
        weights=args.weights,
        allow_partial_load=args.allow_partial_load,
        seed=args.seed,
        guidance=args.guidance,
        steps=args.steps,
        shift=args.shift,
        num_frames=args.num_frames,
        height=args.height,
        width=args.width,
        fps=args.fps,
        cameras=[c.strip() for c in args.cameras.split(",") if c.strip()] if args.cameras else None,
        caption_mode=args.caption_mode,
        num_conditional_frames=args.num_conditional_frames,
        input=args.input,
        control_weight=args.control_weight,
        vae=None if args.vae in ("", "none") else args.vae,
        text_encoder=None if args.text_encoder in ("", "none") else args.text_encoder,
        device=args.device,
        dtype=args.dtype,
        progress=not args.no_progress,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # hf:// resolution errors (401/403, not in the offline cache, ...) explain themselves too.
    expected_errors = (GenerationError, getattr(hf, "HfResolveError", GenerationError))
    try:
        written = generate(options_from_args(args))
    except expected_errors as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
