"""Load consolidated `.pt` checkpoints in the official formats into our network, strictly.

Formats (reference 2.1, 6.2):
- EMA-only files (`*_ema_bf16.pt`, `model_ema_fp32.pt`, `model_ema_bf16.pt`): every key under `net.`.
- `model.pt`: `net.*` (training weights) and `net_ema.*`. Training starts from `net.*`, as upstream.

Strict by default: the known non-parameter entries are skipped, every other key must match a parameter
of the network with the same shape. Files are read with `weights_only=True` (no arbitrary unpickling)
and `mmap=True`, so the ranks of a node share the file's pages instead of each holding a copy.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .hf import resolve

log = logging.getLogger(__name__)

# Entries the released files may hold that are not parameters of the network (released_checkpoint_keys.json).
NON_PARAMETER_MARKERS = ("_extra_state",)
NON_PARAMETER_PREFIXES = ("accum_", "pos_embedder.", "pos_embedder_options.")


class CheckpointLoadError(RuntimeError):
    pass


@dataclass
class LoadReport:
    source: str
    loaded: list[str] = field(default_factory=list)
    skipped_non_parameters: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatches: dict[str, tuple[tuple, tuple]] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"{self.source}: loaded {len(self.loaded)} tensors"]
        if self.skipped_non_parameters:
            lines.append(f"  skipped {len(self.skipped_non_parameters)} non-parameter entries (_extra_state, accum_*, RoPE)")
        for title, keys in (("missing from the file", self.missing), ("not in the network", self.unexpected)):
            if keys:
                lines.append(f"  {len(keys)} keys {title}: {_preview(keys)}")
        for key, (in_file, in_net) in self.shape_mismatches.items():
            lines.append(f"  shape mismatch {key}: file {list(in_file)} vs network {list(in_net)}")
        return "\n".join(lines)


def _preview(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def is_non_parameter(key: str) -> bool:
    """`key` without the `net.` prefix."""
    return any(m in key for m in NON_PARAMETER_MARKERS) or key.startswith(NON_PARAMETER_PREFIXES)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The file's flat tensor dict, read safely (weights_only) and lazily (mmap)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointLoadError(f"Checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        raise CheckpointLoadError(
            f"{path} holds objects other than tensors and was refused (weights_only=True never unpickles arbitrary "
            f"code). Re-save it as a plain dict of tensors. Detail: {str(error).splitlines()[0]}"
        ) from None
    except RuntimeError as error:
        raise CheckpointLoadError(f"{path} is not a readable torch checkpoint: {error}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointLoadError(f"{path} is not a flat dict of tensors (an official consolidated .pt file)")
    return state


def network_weights_from_consolidated(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The `net.*` entries with the prefix removed (`net_ema.*` of a model.pt is ignored: the EMA restarts)."""
    weights = {k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")}
    if not weights:
        sample = list(state)[:5]
        raise CheckpointLoadError(
            f"{source} has no 'net.*' keys (first keys: {sample}); expected an official consolidated checkpoint "
            "(model.pt, model_ema_*.pt or a released *_ema_bf16.pt)"
        )
    return weights


@torch.no_grad()
def load_network_weights(
    net: nn.Module, weights: dict[str, torch.Tensor], source: str, strict: bool = True
) -> LoadReport:
    """Copy `weights` (keys without `net.`) into `net`.

    strict=True: any missing or unexpected key, or any shape mismatch, raises with the full report.
    strict=False: loads what matches and logs what it dropped (shape mismatches still raise).
    """
    report = LoadReport(source=source)
    params = dict(net.state_dict())
    for key, tensor in weights.items():
        if is_non_parameter(key):
            report.skipped_non_parameters.append(key)
        elif key not in params:
            report.unexpected.append(key)
        elif tuple(tensor.shape) != tuple(params[key].shape):
            report.shape_mismatches[key] = (tuple(tensor.shape), tuple(params[key].shape))
    report.missing = sorted(k for k in params if k not in weights)
    if report.shape_mismatches or (strict and (report.missing or report.unexpected)):
        hint = "" if report.shape_mismatches else " Pass load_strict=false to load the matching keys anyway."
        raise CheckpointLoadError(f"Checkpoint does not match the network.{hint}\n{report.summary()}")
    for key, tensor in weights.items():
        if key in params and key not in report.unexpected:
            params[key].copy_(tensor.to(params[key].dtype))
            report.loaded.append(key)
    if report.missing or report.unexpected:
        log.warning("Partial load (load_strict=false) dropped keys:\n%s", report.summary())
    return report


def load_consolidated_into_model(model: nn.Module, path_or_uri: str, strict: bool = True) -> LoadReport:
    """Load an official consolidated checkpoint (or hf:// URI) into `model.net`; restart the EMA from it."""
    path = resolve(path_or_uri)
    weights = network_weights_from_consolidated(read_state_dict(path), str(path_or_uri))
    report = load_network_weights(model.net, weights, str(path_or_uri), strict=strict)
    if getattr(model, "net_ema", None) is not None:
        model.net_ema.load_state_dict(model.net.state_dict())
    log.info(report.summary())
    print(report.summary())
    return report
