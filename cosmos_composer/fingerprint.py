"""Fingerprints of named tensors: a SHA-256 that identifies a set of weights.

Cached outputs computed with frozen weights (text embeddings already passed through the network's
``crossattn_proj``, see ``data/precompute.py``) carry the fingerprint of those weights, so a training run
can check that they were made with the weights it uses.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch


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
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(
            f"fingerprint_tensors got the tensor name(s) {duplicates} more than once; names must be unique"
        )
    for name, tensor in items:
        if hasattr(tensor, "full_tensor"):  # torch.distributed.tensor.DTensor (FSDP2 shards)
            tensor = tensor.full_tensor()
        tensor = tensor.detach().to("cpu").contiguous()
        header = f"{name}|{tuple(tensor.shape)}|{str(tensor.dtype)}|".encode()
        digest.update(len(header).to_bytes(8, "little"))  # the length first: no two headers run together alike
        digest.update(header)
        raw = tensor.reshape(-1).view(torch.uint8) if tensor.numel() else torch.empty(0, dtype=torch.uint8)
        digest.update(raw.numpy().tobytes())
    return digest.hexdigest()
