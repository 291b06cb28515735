"""Data-loading speed: decoding mp4s against reading cached latents, side by side.

``benchmark_data`` builds a multiview demo dataset, converts it twice (plain, and with
``--precompute latents,text``) and times a full pass of the dataset over each. It measures the data
path only (decode + resize + control, or reading cached arrays), not the encoders a training step
would run on decoded pixels, so the cached figure is an upper bound on what caching saves.
The lead's ``scripts/benchmark.py`` calls this for its data section.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cosmos_composer.data.convert import convert_to_mds
from cosmos_composer.data.dataset import TransferStreamingDataset, build_dataloader
from cosmos_composer.data.demo import make_demo_dataset
from cosmos_composer.data.precompute import Precomputer


def _samples_per_second(folder: Path, epochs: int, num_workers: int, **dataset_kwargs: Any) -> float:
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
    vae: Any = None,
    text_embedder: Any = None,
) -> dict[str, Any]:
    """Samples/s of the multiview dataset decoding mp4s vs. serving cached latents and text embeddings.

    Args:
        tmpdir: scratch folder (the demo data and both MDS copies are written under it).
        samples, frames, height, width: demo data size; the training size equals the demo size.
        epochs: timed passes over the data (after one warm-up pass).
        num_workers: DataLoader workers.
        text_dim: width of the cached text embedding (1024 = projected, as training with a frozen base).
        vae, text_embedder: encoders for the cache; default the tiny random ones (the cached arrays have
            the real shapes either way, except the text width, which ``text_dim`` sets).

    Returns:
        A dict with ``decode_samples_per_s``, ``cached_samples_per_s``, ``speedup`` and the settings.
    """
    tmpdir = Path(tmpdir)
    if vae is None or text_embedder is None:
        from cosmos_composer.encoders.text import Reason1TextEmbedder
        from cosmos_composer.encoders.vae import WanVAE

        vae = vae or WanVAE.tiny()
        text_embedder = text_embedder or Reason1TextEmbedder.tiny()
    projection = nn.Sequential(nn.Linear(text_embedder.embed_dim, text_dim), nn.GELU())
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
        vae=vae,
        text_embedder=text_embedder,
        crossattn_proj=projection,
    )
    convert_to_mds(
        source, cached, "multiview-hdmap", min_frames=frames, overwrite=True, precomputer=precomputer
    )
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


if __name__ == "__main__":
    import json
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        print(
            json.dumps(
                benchmark_data(scratch, **{k: int(v) for k, v in (a.split("=") for a in sys.argv[1:])}),
                indent=2,
            )
        )
