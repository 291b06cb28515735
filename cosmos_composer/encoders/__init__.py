"""Frozen encoders of Cosmos-Transfer2.5: the Wan2.1 VAE and the Cosmos-Reason1 text embedder.

* :class:`~cosmos_composer.encoders.vae.WanVAE` wraps diffusers' ``AutoencoderKLWan`` with the
  official latent normalisation and loads the official ``tokenizer.pth`` or diffusers weights.
* :class:`~cosmos_composer.encoders.text.Reason1TextEmbedder` wraps transformers' Qwen2.5-VL and
  returns the FULL_CONCAT embedding ``[B, 512, 100352]``.
* :func:`build_encoders` builds both from their sources, for training, generation and
  ``convert_to_mds.py --precompute`` alike.

The submodules import diffusers / transformers only when a model is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, TypeVar

import torch

from cosmos_composer.checkpoint.hf import HfResolveError, resolve
from cosmos_composer.dtypes import default_dtype
from cosmos_composer.encoders.text import REASON1_EMBED_DIM, TINY_HIDDEN_SIZE, TINY_NUM_LAYERS, Reason1TextEmbedder
from cosmos_composer.encoders.vae import WanVAE

__all__ = ["EncoderLoadError", "Reason1TextEmbedder", "WanVAE", "build_encoders", "text_embed_dim"]

Loaded = TypeVar("Loaded")


class EncoderLoadError(RuntimeError):
    """An encoder's weights could not be loaded; the one-line message names the source, the file and why."""


def _loading(what: str, source: str, path: str, load: Callable[[], Loaded]) -> Loaded:
    """``load()``, its errors made one line that names ``source`` (and ``path``, the file it resolved to)."""
    try:
        return load()
    except HfResolveError:
        raise  # already says what to do
    except (OSError, ValueError, RuntimeError, KeyError) as error:  # a missing, truncated or foreign file
        shown = source if source == path else f"{source} ({path})"
        detail = " ".join(str(error).split())
        raise EncoderLoadError(f"could not load the {what} from {shown}: {type(error).__name__}: {detail}") from error


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
    An `hf://` URI that cannot be resolved raises ``HfResolveError``; a file that cannot be loaded raises
    :class:`EncoderLoadError`, in one line naming it.
    """
    if dtype is None:
        dtype = default_dtype(device)
    # Both sources are resolved before either loads: an uncached text encoder fails at once, not after the VAE.
    vae_path = resolve(vae) if vae and vae != "tiny" else None
    text_path = resolve(text) if text and text != "tiny" else None
    vae_model = text_model = None
    if vae == "tiny":
        vae_model = WanVAE.tiny(seed=0)
    elif vae_path is not None:
        vae_model = _loading(
            "VAE",
            vae,
            vae_path,
            lambda: WanVAE.from_diffusers(vae_path) if Path(vae_path).is_dir() else WanVAE.from_official_pth(vae_path),
        )
    if text == "tiny":
        text_model = Reason1TextEmbedder.tiny(seed=0)
    elif text_path is not None:
        text_model = _loading("text encoder", text, text_path, lambda: Reason1TextEmbedder.from_pretrained(text_path))
    return (
        None if vae_model is None else vae_model.to(device=device, dtype=dtype).eval(),
        None if text_model is None else text_model.to(device=device, dtype=dtype).eval(),
    )


def text_embed_dim(text: str) -> int:
    """The width of the raw embedding that the text encoder ``text`` (a :func:`build_encoders` source) gives,
    without loading it: the tiny encoder's, else Cosmos-Reason1-7B's (100352)."""
    return TINY_NUM_LAYERS * TINY_HIDDEN_SIZE if text == "tiny" else REASON1_EMBED_DIM
