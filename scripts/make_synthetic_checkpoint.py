#!/usr/bin/env python
"""Write a consolidated checkpoint with the keys, shapes and dtype (bf16) of a released 2B file, random values.

    python scripts/make_synthetic_checkpoint.py --preset transfer2.5-2b-multiview --output /tmp/mv2b_ema_bf16.pt

The keys and shapes come from `cosmos_composer/spec/released_checkpoint_keys.json` (every parameter of the
released `*_ema_bf16.pt`, under `net.`), so the file loads strictly where the released one does. Use it for
benchmarks and load tests where the real weights cannot be downloaded. Tiny presets: the keys of the network.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cosmos_composer.models import build_network  # noqa: E402
from cosmos_composer.models.released_keys import RELEASED_VARIANT_OF_PRESET, released_parameter_shapes  # noqa: E402


def parameter_shapes(preset: str) -> dict[str, tuple[int, ...]]:
    if preset in RELEASED_VARIANT_OF_PRESET:
        return released_parameter_shapes(preset)
    with torch.device("meta"):
        return {name: tuple(p.shape) for name, p in build_network(preset).named_parameters()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", required=True)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    generator = torch.Generator().manual_seed(args.seed)
    state = {}
    for name, shape in tqdm(parameter_shapes(args.preset).items(), desc="random weights", unit="tensor"):
        fan_in = shape[-1] if len(shape) > 1 else 1
        state[f"net.{name}"] = (torch.randn(shape, generator=generator) / fan_in**0.5).to(torch.bfloat16)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.output)
    count = sum(t.numel() for t in state.values())
    print(f"wrote {args.output}: {len(state)} tensors, {count / 1e9:.3f}B parameters in bf16")


if __name__ == "__main__":
    main()
