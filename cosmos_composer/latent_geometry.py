"""The Wan2.1 VAE's latent geometry: how pixel clips map to latents, in one place.

The VAE (upstream `cosmos_transfer2/_src/predict2/tokenizers/wan2pt1.py`) has 16 latent channels and
compresses 8x in height and width and 4x in time, causally: the first frame is a latent frame of its own, so a
clip of T = 1 + 4k frames becomes t = 1 + k latent frames. The network's padding mask, the samplers, the
data converter, the config checks and the benchmarks all size their tensors by these rules.

This module imports nothing (not even torch), so the config and the builders can use it at no cost.
"""

from __future__ import annotations

__all__ = [
    "LATENT_CHANNELS",
    "SPATIAL_COMPRESSION",
    "TEMPORAL_COMPRESSION",
    "latent_num_frames",
    "pixel_num_frames",
]

LATENT_CHANNELS = 16
SPATIAL_COMPRESSION = 8  # pixels per latent pixel, in height and in width
TEMPORAL_COMPRESSION = 4  # pixel frames per latent frame, after the first


def latent_num_frames(num_pixel_frames: int) -> int:
    """Latent frames of a clip of ``num_pixel_frames`` frames (29 -> 8, 93 -> 24)."""
    return 1 + (num_pixel_frames - 1) // TEMPORAL_COMPRESSION


def pixel_num_frames(num_latent_frames: int) -> int:
    """Pixel frames that decode from ``num_latent_frames`` latent frames (8 -> 29)."""
    return (num_latent_frames - 1) * TEMPORAL_COMPRESSION + 1
