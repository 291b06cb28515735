"""The `--dtype` names of the scripts and the library's default compute dtype, in one place."""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["DTYPES", "default_dtype"]

# The names a `--dtype` option takes (generate, convert_to_mds, export_checkpoint) and the torch dtype of each.
DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp32": torch.float32}


def default_dtype(device: torch.device | str, name: Optional[str] = None) -> torch.dtype:
    """The dtype `name` names (a key of `DTYPES`), or when None bf16 on a GPU and fp32 elsewhere.

    bf16 on a GPU is how the official inference and training run the network and the frozen encoders; a CPU
    computes in fp32 (bf16 matmuls there are slow and less exact).
    """
    if name is not None:
        if name not in DTYPES:
            raise ValueError(f"dtype {name!r} is not one of {list(DTYPES)}")
        return DTYPES[name]
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
