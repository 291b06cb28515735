"""Frozen encoders of Cosmos-Transfer2.5: the Wan2.1 VAE and the Cosmos-Reason1 text embedder.

* :class:`~cosmos_composer.encoders.vae.WanVAE` wraps diffusers' ``AutoencoderKLWan`` with the
  official latent normalisation and loads the official ``tokenizer.pth`` or diffusers weights.
* :class:`~cosmos_composer.encoders.text.Reason1TextEmbedder` wraps transformers' Qwen2.5-VL and
  returns the FULL_CONCAT embedding ``[B, 512, 100352]``.
* :func:`build_encoders` builds both from their sources, for training and for generation alike.

The heavy submodules import diffusers / transformers lazily (on attribute access).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch

if TYPE_CHECKING:
    from cosmos_composer.encoders.text import Reason1TextEmbedder
    from cosmos_composer.encoders.vae import WanVAE

__all__ = ["Reason1TextEmbedder", "WanVAE", "build_encoders"]


def build_encoders(
    vae: Optional[str],
    text: Optional[str],
    device: torch.device,
    dtype: Optional[torch.dtype] = None,
) -> tuple[Optional[WanVAE], Optional[Reason1TextEmbedder]]:
    """(vae, text_embedder), frozen in eval mode on ``device``, each from its source: ``tiny`` (random weights of
    CPU size, for tests and the quickstart), a local path or an ``hf://`` URI, or None for no encoder.

    A VAE folder is read as diffusers weights, a file as the official ``tokenizer.pth``. ``dtype`` defaults to
    bf16 on a GPU, as the official inference and training run the frozen encoders, and fp32 elsewhere.
    """
    from cosmos_composer.checkpoint.hf import resolve
    from cosmos_composer.encoders.text import Reason1TextEmbedder
    from cosmos_composer.encoders.vae import WanVAE

    if dtype is None:
        dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    vae_model = text_model = None
    if vae == "tiny":
        vae_model = WanVAE.tiny(seed=0)
    elif vae:
        path = resolve(vae)
        vae_model = WanVAE.from_diffusers(path) if Path(path).is_dir() else WanVAE.from_official_pth(path)
    if text == "tiny":
        text_model = Reason1TextEmbedder.tiny(seed=0)
    elif text:
        text_model = Reason1TextEmbedder.from_pretrained(resolve(text))
    return (
        None if vae_model is None else vae_model.to(device=device, dtype=dtype).eval(),
        None if text_model is None else text_model.to(device=device, dtype=dtype).eval(),
    )


def __getattr__(name: str):
    if name == "WanVAE":
        from cosmos_composer.encoders.vae import WanVAE

        return WanVAE
    if name == "Reason1TextEmbedder":
        from cosmos_composer.encoders.text import Reason1TextEmbedder

        return Reason1TextEmbedder
    raise AttributeError(f"module 'cosmos_composer.encoders' has no attribute {name!r}")
