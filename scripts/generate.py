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

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from cosmos_composer.checkpoint.hf import HfResolveError  # noqa: E402
from cosmos_composer.checkpoint.load import CheckpointLoadError  # noqa: E402
from cosmos_composer.checkpoint.network_config import NetworkConfigError  # noqa: E402
from cosmos_composer.encoders import EncoderLoadError  # noqa: E402
from cosmos_composer.generate import (  # noqa: E402
    GenerationError,
    add_generate_arguments,
    generate,
    options_from_args,
)


def build_parser() -> argparse.ArgumentParser:
    """One flag per field of `GenerateOptions`, with the field's default, help, group and choices."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_generate_arguments(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Errors of the inputs explain themselves (hf:// 401/403 or not in the offline cache, a checkpoint that does
    # not fit, a missing camera, ...): print them without a traceback.
    try:
        written = generate(options_from_args(args))
    except (GenerationError, HfResolveError, CheckpointLoadError, NetworkConfigError, EncoderLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
