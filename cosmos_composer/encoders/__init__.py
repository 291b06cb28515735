"""Frozen encoders of Cosmos-Transfer2.5: the Wan2.1 VAE and the Cosmos-Reason1 text embedder.

* :class:`~cosmos_composer.encoders.vae.WanVAE` wraps diffusers' ``AutoencoderKLWan`` with the
  official latent normalisation and loads the official ``tokenizer.pth`` or diffusers weights.
* :class:`~cosmos_composer.encoders.text.Reason1TextEmbedder` wraps transformers' Qwen2.5-VL and
  returns the FULL_CONCAT embedding ``[B, 512, 100352]``.
* :func:`fingerprint_module` / :func:`fingerprint_tensors` identify frozen weights, so that cached
  outputs computed with them (e.g. text embeddings already passed through the network's
  ``crossattn_proj``) can be checked against the weights a training run actually uses.

The heavy submodules import diffusers / transformers lazily (on attribute access).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from cosmos_composer.encoders.text import Reason1TextEmbedder
    from cosmos_composer.encoders.vae import WanVAE

__all__ = ["Reason1TextEmbedder", "WanVAE", "fingerprint_module", "fingerprint_tensors"]


def fingerprint_tensors(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 hex digest of named tensors: sorted by name, hashing each name, shape, dtype and raw bytes.

    Any change of value, shape, dtype or name changes the digest; the order of the input does not.
    bf16 and fp32 copies of the same weights therefore have different fingerprints (compare like with
    like: fingerprint the weights in the dtype they are used in). Sharded ``DTensor`` values are
    gathered with ``full_tensor()``, which is a collective: call this on every rank.
    """
    digest = hashlib.sha256()
    items = sorted(named_tensors, key=lambda item: item[0])
    names = [name for name, _ in items]
    if len(names) != len(set(names)):
        raise ValueError(
            "cosmos_composer/encoders/__init__.py: fingerprint_tensors got duplicate tensor names."
        )
    for name, tensor in items:
        if hasattr(tensor, "full_tensor"):  # torch.distributed.tensor.DTensor (FSDP2 shards)
            tensor = tensor.full_tensor()
        tensor = tensor.detach().to("cpu").contiguous()
        header = f"{name}|{tuple(tensor.shape)}|{str(tensor.dtype)}|".encode()
        digest.update(len(header).to_bytes(8, "little"))
        digest.update(header)
        raw = tensor.reshape(-1).view(torch.uint8) if tensor.numel() else torch.empty(0, dtype=torch.uint8)
        digest.update(raw.numpy().tobytes())
    return digest.hexdigest()


def fingerprint_module(module: nn.Module) -> str:
    """:func:`fingerprint_tensors` over ``module.named_parameters()`` (buffers are not included).

    Used for the cached projected-text-embedding check: the fingerprint of the network's
    ``crossattn_proj`` parameters is stored next to the cached 1024-d embeddings, and training refuses
    to start when the network's ``crossattn_proj`` has a different fingerprint. Parameter names are
    relative to ``module`` (``"0.weight"`` for ``crossattn_proj[0]``).
    """
    return fingerprint_tensors(module.named_parameters())


def __getattr__(name: str):
    if name == "WanVAE":
        from cosmos_composer.encoders.vae import WanVAE

        return WanVAE
    if name == "Reason1TextEmbedder":
        from cosmos_composer.encoders.text import Reason1TextEmbedder

        return Reason1TextEmbedder
    raise AttributeError(f"module 'cosmos_composer.encoders' has no attribute {name!r}")
