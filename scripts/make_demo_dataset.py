#!/usr/bin/env python
"""Write a small synthetic dataset in an official Cosmos-Transfer2.5 post-training folder layout.

The clips are moving coloured shapes; the control videos are line drawings (multiview HDMap), depth
maps and segmentation colours (single view) of the same scenes, so a small model can learn the mapping.
The output is a pure function of the arguments (same seed, same bytes).

Examples:
    python scripts/make_demo_dataset.py --layout multiview-hdmap --output data/demo_multiview
    python scripts/make_demo_dataset.py --layout singleview --output data/demo_singleview --frames 93
"""

from __future__ import annotations

import argparse
import sys

from cosmos_composer.data.demo import make_demo_dataset
from cosmos_composer.data.layouts import LAYOUTS, MULTIVIEW_HDMAP


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layout", choices=LAYOUTS, default=MULTIVIEW_HDMAP, help="folder layout to write")
    parser.add_argument("--output", required=True, help="folder to create (must be new or empty)")
    parser.add_argument("--samples", type=int, default=4, help="number of clips (default: 4)")
    parser.add_argument("--frames", type=int, default=29, help="frames per clip and view (default: 29)")
    parser.add_argument("--height", type=int, default=64, help="frame height, even (default: 64)")
    parser.add_argument("--width", type=int, default=112, help="frame width, even (default: 112)")
    parser.add_argument("--fps", type=float, default=10, help="frame rate (default: 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--cameras",
        default=None,
        help="multiview: comma-separated cameras (folders ftheta_<camera>; default: the 7 official cameras)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it is not empty")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        names = make_demo_dataset(
            args.output,
            layout=args.layout,
            samples=args.samples,
            frames=args.frames,
            height=args.height,
            width=args.width,
            seed=args.seed,
            fps=args.fps,
            overwrite=args.overwrite,
            cameras=[c.strip() for c in args.cameras.split(",")] if args.cameras else None,
        )
    except (ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"Wrote {len(names)} {args.layout} samples ({args.frames} frames, {args.height}x{args.width}) to {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
