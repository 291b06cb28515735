#!/usr/bin/env python
"""Write a consolidated checkpoint with the keys, shapes and dtype (bf16) of a released 2B file, random values.

    python scripts/make_synthetic_checkpoint.py --preset transfer2.5-2b-multiview --output /tmp/mv2b_ema_bf16.pt

The keys and shapes come from `cosmos_composer/spec/released_checkpoint_keys.json` (every parameter of the
released `*_ema_bf16.pt`, under `net.`), so the file loads strictly where the released one does. Use it for
benchmarks and load tests where the real weights cannot be downloaded. Tiny presets: the keys of the network.

`--base-only` writes a Predict2.5-shaped file for `base_load_path`: the base DiT keys only (no `control_blocks.*`,
`control_embedder.*`, `input_hint_block.*`). `--with-ema` writes a `model.pt`-shaped file: `net.*` and a
`net_ema.*` with other random values.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cosmos_composer.models import build_network  # noqa: E402
from cosmos_composer.models.network import CONTROL_BRANCH_PREFIXES  # noqa: E402
from cosmos_composer.models.released_keys import RELEASED_VARIANT_OF_PRESET, released_parameter_shapes  # noqa: E402


def parameter_shapes(preset: str, base_only: bool = False) -> dict[str, tuple[int, ...]]:
    """`{key without 'net.': shape}`; `base_only`: without the control branch (a Predict2.5 base DiT)."""
    if preset in RELEASED_VARIANT_OF_PRESET:
        shapes = released_parameter_shapes(preset)
    else:
        with torch.device("meta"):
            shapes = {name: tuple(p.shape) for name, p in build_network(preset).named_parameters()}
    if base_only:
        shapes = {name: shape for name, shape in shapes.items() if not name.startswith(CONTROL_BRANCH_PREFIXES)}
    return shapes


def synthetic_state(
    preset: str, seed: int = 0, base_only: bool = False, with_ema: bool = False
) -> dict[str, torch.Tensor]:
    """Random bf16 weights under `net.` (and `net_ema.`, other values, with `with_ema`)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for prefix in ("net.", "net_ema.") if with_ema else ("net.",):
        for name, shape in tqdm(parameter_shapes(preset, base_only).items(), desc=f"random {prefix}*", unit="tensor"):
            fan_in = shape[-1] if len(shape) > 1 else 1
            state[f"{prefix}{name}"] = (torch.randn(shape, generator=generator) / fan_in**0.5).to(torch.bfloat16)
    return state


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", required=True)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-only", action="store_true", help="a Predict2.5 base DiT: no control-branch keys")
    parser.add_argument("--with-ema", action="store_true", help="net.* and net_ema.*, as a model.pt")
    args = parser.parse_args(argv)

    state = synthetic_state(args.preset, args.seed, base_only=args.base_only, with_ema=args.with_ema)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.output)
    count = sum(t.numel() for t in state.values())
    print(f"wrote {args.output}: {len(state)} tensors, {count / 1e9:.3f}B parameters in bf16")


if __name__ == "__main__":
    main()
