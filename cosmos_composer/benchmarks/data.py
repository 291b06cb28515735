"""data section: samples/s of the data path, decoding mp4s vs serving cached latents, and of the conversion.

A multiview demo dataset converted twice (plain, and with `--precompute latents,text`), and a full pass of each
timed. It measures the data path only (decode + resize + control, or reading cached arrays), not the encoders a
training step would run on decoded pixels, so the cached figure is an upper bound on what caching saves.
Then the conversion itself: demo clips at 720p (7 cameras) converted by `scripts/convert_to_mds.py` in 1 process
and under `composer -n N`, without precompute, so it measures validation (every video decoded to the end) and
writing. The figure is the converter's own (its summary line), from the moment every process is ready.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from ..data.convert import convert_to_mds
from ..data.dataset import TransferStreamingDataset, build_dataloader
from ..data.demo import make_demo_dataset
from ..data.precompute import Precomputer
from ..encoders.text import Reason1TextEmbedder
from ..encoders.vae import WanVAE
from .common import REPO


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data section")
    group.add_argument("--data-samples", type=int, default=4, help="demo samples (7 cameras each)")
    group.add_argument("--data-frames", type=int, default=29, help="frames per camera")
    group.add_argument("--data-height", type=int, default=64)
    group.add_argument("--data-width", type=int, default=112)
    group.add_argument("--data-epochs", type=int, default=3, help="timed passes over the dataset")
    group.add_argument("--data-workers", type=int, default=0, help="DataLoader workers")
    group.add_argument("--convert-samples", type=int, default=4, help="conversion: demo clips (7 cameras each)")
    group.add_argument("--convert-frames", type=int, default=29, help="conversion: frames per camera")
    group.add_argument("--convert-height", type=int, default=720)
    group.add_argument("--convert-width", type=int, default=1280)
    group.add_argument("--convert-nproc", type=int, default=2, help="conversion: processes compared with 1")


def _samples_per_second(folder: Path, epochs: int, num_workers: int, **dataset_kwargs) -> float:
    dataset = TransferStreamingDataset(local=str(folder), **dataset_kwargs)
    loader = build_dataloader(dataset, batch_size=1, num_workers=num_workers)
    for _ in loader:  # warm-up pass (worker start, page cache)
        pass
    count, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            count += len(batch["sample_name"])
    elapsed = time.perf_counter() - start
    del loader, dataset
    return count / elapsed


def benchmark_data(
    tmpdir: str | Path,
    samples: int = 4,
    frames: int = 29,
    height: int = 64,
    width: int = 112,
    epochs: int = 3,
    num_workers: int = 0,
    text_dim: int = 1024,
) -> dict:
    """Samples/s of the multiview dataset decoding mp4s vs. serving cached latents and text embeddings.

    The demo data (``samples`` items of ``frames`` x ``height`` x ``width``, the training size too) and both MDS
    copies are written under ``tmpdir``. The cache is made with the tiny random encoders: the cached arrays have
    the real shapes either way, except the text width, which ``text_dim`` sets (1024: projected, as training with
    a frozen base stores it). Returns the settings, ``decode_samples_per_s``, ``cached_samples_per_s`` and
    ``speedup``.
    """
    tmpdir = Path(tmpdir)
    text_embedder = Reason1TextEmbedder.tiny()
    source = tmpdir / "demo_multiview"
    make_demo_dataset(
        source, "multiview-hdmap", samples=samples, frames=frames, height=height, width=width, overwrite=True
    )
    plain, cached = tmpdir / "mds_plain", tmpdir / "mds_cached"
    convert_to_mds(source, plain, "multiview-hdmap", min_frames=frames, overwrite=True)
    precomputer = Precomputer(
        height=height,
        width=width,
        num_frames=frames,
        vae=WanVAE.tiny(),
        text_embedder=text_embedder,
        crossattn_proj=nn.Sequential(nn.Linear(text_embedder.embed_dim, text_dim), nn.GELU()),
    )
    convert_to_mds(source, cached, "multiview-hdmap", min_frames=frames, overwrite=True, precomputer=precomputer)
    settings = dict(num_frames=frames, height=height, width=width)
    decode = _samples_per_second(plain, epochs, num_workers, **settings)
    from_cache = _samples_per_second(cached, epochs, num_workers, decode_video=False, **settings)
    return {
        "layout": "multiview-hdmap",
        "views": 7,
        "frames_per_view": frames,
        "height": height,
        "width": width,
        "samples": samples,
        "epochs": epochs,
        "num_workers": num_workers,
        "torch_threads": torch.get_num_threads(),
        "decode_samples_per_s": decode,
        "cached_samples_per_s": from_cache,
        "speedup": from_cache / decode,
    }


# The converter's summary line: "Converted 4 samples in 12.3 s (0.325 samples/s) with 2 processes."
CONVERTED_LINE = re.compile(r"Converted (\d+) samples in ([\d.]+) s \(([\d.e+-]+) samples/s\)")


def _conversion_samples_per_second(source: Path, output: Path, frames: int, nproc: int) -> float:
    """Samples/s that ``scripts/convert_to_mds.py`` reports, run alone (1) or under ``composer -n nproc``."""
    script = REPO / "scripts" / "convert_to_mds.py"
    launcher = [str(Path(sys.executable).with_name("composer")), "-n", str(nproc)] if nproc > 1 else [sys.executable]
    # One sample per part, so that a few clips still give every process parts.
    options = ["--layout", "multiview-hdmap", "--input", str(source), "--output", str(output)]
    options += ["--min-frames", str(frames), "--part-samples", "1", "--no-progress"]
    result = subprocess.run([*launcher, str(script), *options], capture_output=True, text=True)
    match = CONVERTED_LINE.search(result.stdout)
    if result.returncode != 0 or match is None:
        raise SystemExit(f"data: the conversion with {nproc} process(es) failed:\n{result.stdout}{result.stderr}")
    return float(match[3])


def benchmark_conversion(
    tmpdir: str | Path, samples: int = 4, frames: int = 29, height: int = 720, width: int = 1280, nproc: int = 2
) -> dict:
    """Conversion samples/s (validation + writing, no precompute) of multiview demo clips, 1 vs. ``nproc`` processes.

    The clips are made as ``scripts/make_demo_dataset.py --samples S --frames F --height H --width W`` makes them.
    """
    tmpdir = Path(tmpdir)
    source = tmpdir / "demo_convert"
    make_demo_dataset(source, "multiview-hdmap", samples=samples, frames=frames, height=height, width=width)
    one = _conversion_samples_per_second(source, tmpdir / "mds_convert_1", frames, 1)
    many = _conversion_samples_per_second(source, tmpdir / f"mds_convert_{nproc}", frames, nproc)
    return {
        "convert_views": 7,
        "convert_frames_per_view": frames,
        "convert_height": height,
        "convert_width": width,
        "convert_samples": samples,
        "convert_samples_per_s_1proc": one,
        f"convert_samples_per_s_{nproc}proc": many,
        "convert_ratio": many / one,
    }


def run(args: argparse.Namespace) -> None:
    """Samples/s of the multiview dataset decoding mp4s vs. serving cached latents, side by side; then conversion
    samples/s with 1 and N processes, side by side."""
    with tempfile.TemporaryDirectory() as tmpdir:
        result = benchmark_data(
            tmpdir,
            samples=args.data_samples,
            frames=args.data_frames,
            height=args.data_height,
            width=args.data_width,
            epochs=args.data_epochs,
            num_workers=args.data_workers,
        )
        for key, value in result.items():
            print(f"{key:>32}: {value}", flush=True)
        n = args.convert_nproc
        conversion = benchmark_conversion(
            tmpdir, args.convert_samples, args.convert_frames, args.convert_height, args.convert_width, n
        )
    for key, value in conversion.items():
        print(f"{key:>32}: {value}")
    print(
        f"conversion of {args.convert_samples} clips of 7 x {args.convert_frames} frames at {args.convert_height}x"
        f"{args.convert_width} (validation + writing): 1 process {conversion['convert_samples_per_s_1proc']:.3g} "
        f"samples/s, {n} processes {conversion[f'convert_samples_per_s_{n}proc']:.3g} samples/s, ratio "
        f"{conversion['convert_ratio']:.2f}"
    )
