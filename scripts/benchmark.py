#!/usr/bin/env python
"""Benchmarks, one section at a time.

    python scripts/benchmark.py --section network [--device cpu|cuda] [--preset medium-singleview] ...
    python scripts/benchmark.py --section evaluate [--evaluate-threads 1]

Each section is a module of cosmos_composer/benchmarks/ with its own argument group (`add_arguments`) and a
`run(args)`; add one by writing such a module and listing it in `SECTIONS`.

network: forward + backward of our network against diffusers 0.38.0's `CosmosTransformer3DModel` +
`CosmosControlNetModel` with the same weights and inputs, with and without activation checkpointing: time, the
activation memory autograd saves, and peak memory (cosmos_composer/benchmarks/network.py says how each is
measured). By default only the control branch trains (the released recipe freezes the base DiT).

data: samples/s of the multiview dataset decoding mp4s vs serving cached latents, then of the conversion with 1
and N processes.

train: samples/s, peak memory and MFU of the recipe's training step on cached latents, in one process.

trainer: samples/s, memory and MFU of `composer -n N train.py <recipe YAML>` on synthetic cached shards.

evaluate: seconds per video pair of Blur SSIM and Edge F1 (cosmos_composer/evaluation/metrics.py) on synthetic
93-frame 704x1280 videos, on `--evaluate-threads` threads (default 1: one CPU core).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import ModuleType

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cosmos_composer.benchmarks import data, evaluate, network, train, trainer  # noqa: E402
from cosmos_composer.benchmarks.common import BENCHMARK_PRESETS  # noqa: E402

# Each section module has `add_arguments(parser)` and `run(args)`.
SECTIONS: dict[str, ModuleType] = {
    "network": network,
    "data": data,
    "train": train,
    "trainer": trainer,
    "evaluate": evaluate,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", choices=sorted(SECTIONS), default="network", help="what to benchmark")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--preset", default=None,
        help=f"network preset: network section {sorted(BENCHMARK_PRESETS)} or a single-view preset (default "
        "medium-singleview); trainer section any preset (default tiny-multiview)",
    )  # fmt: skip
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="repeatable; network section: a network config override (official name, e.g. num_blocks=4; values "
        "read as train.py reads them: null is None); "
        "trainer section: a train.py override (e.g. model.overrides.activation_checkpointing=false)",
    )  # fmt: skip
    for section in SECTIONS.values():
        section.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    SECTIONS[args.section].run(args)


if __name__ == "__main__":
    main()
