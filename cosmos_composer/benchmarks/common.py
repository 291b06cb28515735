"""What several benchmark sections share: the checkout, the benchmark-only network sizes, the accelerators'
peak FLOP/s, the `--set` items and a device sync."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..config_file import parse_set_items

# The source checkout: the trainer and data sections run its train.py, recipe YAMLs and scripts/ as a user does.
REPO = Path(__file__).resolve().parents[2]

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

# Dense bf16 peak of the accelerators we know, for MFU (FLOP/s per chip).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "B200": 2250e12}


def network_set_items(args: argparse.Namespace) -> dict:
    """The `--set KEY=VALUE` items as network config overrides, read as train.py and the other scripts read
    values (`config_file.parse_set_items`: `null` is None, `6` an int, `true` a bool). Exits with the item."""
    try:
        return parse_set_items(args.overrides)
    except ValueError as error:
        raise SystemExit(f"benchmark: {error}") from None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall-clock time covers it (a no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
