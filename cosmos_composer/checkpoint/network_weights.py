"""A checkpoint -> one network's weights -> the network they belong to, built and loaded: what generation runs.

Checkpoints: a consolidated ``.pt`` in the official formats (or an hf:// URI of one), loaded strictly
(``checkpoint/load.py``), or a Composer checkpoint folder (a sharded ``ep*-ba*`` folder, its ``latest-rank0.pt``
link, or a run's ``checkpoints`` folder, taking the newest). An EMA-only file (``*_ema_bf16.pt``,
``model_ema_fp32.pt``) holds one set of weights under ``net.*``; ``model.pt`` and Composer checkpoints hold
``net.*`` (training weights) and ``net_ema.*`` (EMA), and ``weights="ema"`` (the default) takes the EMA, as the
official inference runs the EMA files (``checkpoint/keys.py: prefix_of_weights``).

The network: the checkpoint's ``network.json`` (``checkpoint/network_config.py``); for a file that carries
none (the released ones), the ``preset`` and ``overrides`` given, else the preset its shapes match.

``load_crossattn_proj`` reads only the frozen text projection of a checkpoint, for the text embeddings that
``convert_to_mds.py --precompute text`` caches projected.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..models import build_network
from ..models.network import CosmosTransferNet, crossattn_projection
from .hf import resolve
from .keys import (
    EMA_WEIGHTS,
    NET_PREFIX,
    TRAINING_WEIGHTS,
    has_ema,
    is_non_parameter,
    prefix_of_weights,
    under_prefix,
)
from .load import CheckpointLoadError, LoadReport, load_network_weights, read_state_dict
from .network_config import NetworkConfigError, ResolvedNetwork, find_network_config, resolve_network

log = logging.getLogger(__name__)

CROSSATTN_PROJ_PREFIX = "crossattn_proj."  # the text projection's parameters, under the network's prefix

_WHAT_TO_PASS = (
    "Fix: pass an official consolidated checkpoint (model.pt, model_ema_*.pt or a released *_ema_bf16.pt), or a "
    "Composer checkpoint folder (export a Composer .pt with scripts/export_checkpoint.py)"
)


def _local_checkpoint(checkpoint: str | os.PathLike, flag: str = "--checkpoint") -> Path:
    """The consolidated file, or the Composer checkpoint folder (checked against its checksums), to read.

    ``flag`` names where the checkpoint was given, in messages."""
    source = str(checkpoint)
    local = Path(resolve(source))
    if not local.exists():
        raise CheckpointLoadError(
            f"{flag} {source} does not exist. Fix: give a .pt file, an hf:// URI or a checkpoint folder"
        )
    if not local.is_dir():  # is_dir: also the latest-rank0.pt link of a sharded checkpoint
        return local
    from .export import ExportError, find_checkpoint

    try:
        return find_checkpoint(local, verify=True)
    except ExportError as error:
        raise CheckpointLoadError(f"{flag} {source}: {error}") from None


def _read_state(local: Path, weights: str, source: str, flag: str = "--checkpoint") -> dict[str, torch.Tensor]:
    if local.is_dir():
        from ..models.lora import merged_if_adapted
        from .export import find_checkpoint, model_state_metadata, read_composer_model_state

        try:
            prefix = prefix_of_weights(model_state_metadata(local), weights)
            if weights == EMA_WEIGHTS and prefix == NET_PREFIX:
                log.warning("%s has no net_ema.* (trained without EMA): using net.*", local)
            state = read_composer_model_state(local, prefixes=(prefix,))
            return merged_if_adapted(state, find_checkpoint(local))  # a LoRA run's: its adapters merged
        except (ValueError, RuntimeError, OSError) as error:  # ExportError, a refused pickle, a torch error
            raise CheckpointLoadError(f"{flag} {source}: {error}") from None
    try:
        return read_state_dict(local)
    except CheckpointLoadError as error:
        raise CheckpointLoadError(f"{flag} {source}: {error}. {_WHAT_TO_PASS}") from None


def read_checkpoint_state(
    checkpoint: str | os.PathLike, weights: str = EMA_WEIGHTS, flag: str = "--checkpoint"
) -> dict[str, torch.Tensor]:
    """The flat ``net.*`` / ``net_ema.*`` tensors of a consolidated ``.pt``, an hf:// URI of one, or a
    Composer checkpoint folder. From a Composer checkpoint only the network that ``weights`` asks for is read
    (``net_ema.*``, or ``net.*`` when the run had no EMA). ``flag`` names where the checkpoint was given, in
    messages."""
    return _read_state(_local_checkpoint(checkpoint, flag), weights, str(checkpoint), flag)


def load_crossattn_proj(
    checkpoint: str | os.PathLike,
    flag: str = "--crossattn-proj",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> nn.Sequential:
    """The frozen ``crossattn_proj`` (Linear + GELU) of a Transfer checkpoint, read as training reads its
    ``load_path``: the ``net.*`` weights of a consolidated ``.pt`` (a released ``*_ema_bf16.pt``, ``model.pt``), an
    hf:// URI of one, or a Composer checkpoint folder, safely (weights_only) and checked against the checksums
    written beside it. The copy is strict and refuses NaN / Inf (``load_network_weights``). ``flag`` names where
    the checkpoint was given, in messages."""
    source = f"{flag} {checkpoint}"
    state = read_checkpoint_state(checkpoint, TRAINING_WEIGHTS, flag)
    weights = under_prefix(under_prefix(state, NET_PREFIX), CROSSATTN_PROJ_PREFIX)
    if "0.weight" not in weights or "0.bias" not in weights:
        raise CheckpointLoadError(
            f"{source} has no {NET_PREFIX}{CROSSATTN_PROJ_PREFIX}0.weight and .bias (its first keys: "
            f"{list(state)[:3]}). Fix: pass the Transfer2.5 checkpoint you will train (a released *_ema_bf16.pt, "
            "model.pt, an export or a Composer checkpoint), or cache raw text embeddings with --raw-text"
        )
    out_channels, in_channels = weights["0.weight"].shape
    projection = crossattn_projection(in_channels, out_channels)
    load_network_weights(projection, weights, source)
    del state, weights  # unmaps the file
    return projection.to(device=device, dtype=dtype).eval().requires_grad_(False)


def select_network_weights(
    state: dict[str, torch.Tensor], weights: str = EMA_WEIGHTS, source: str = "checkpoint"
) -> tuple[dict[str, torch.Tensor], str]:
    """Pick one network's weights (prefix removed) and say which prefix they came from (see
    ``keys.prefix_of_weights``)."""
    try:
        prefix = prefix_of_weights(state, weights)
    except ValueError as error:
        raise CheckpointLoadError(str(error)) from None
    selected = under_prefix(state, prefix)
    if not selected:
        raise CheckpointLoadError(f"{source} has no '{prefix}*' keys (first keys: {list(state)[:5]}). {_WHAT_TO_PASS}")
    if weights == TRAINING_WEIGHTS and not has_ema(state):
        log.warning("%s holds a single set of weights (no net_ema.*): using its net.* weights", source)
    return selected, prefix


def resolve_checkpoint_network(
    local: Path,
    network_weights: dict[str, torch.Tensor],
    preset: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
) -> ResolvedNetwork:
    """The network the weights belong to: `local`'s network.json, else `preset` + `overrides`, else inferred
    from the shapes. Shapes are not checked here: the strict load reports every difference."""
    shapes = {key: tuple(t.shape) for key, t in network_weights.items() if not is_non_parameter(key)}
    try:
        network = resolve_network(shapes, preset, overrides, find_network_config(local), check_shapes=False)
    except NetworkConfigError as error:
        raise CheckpointLoadError(str(error)) from None
    (log.warning if network.inferred else log.info)("network: %s", network.describe())
    return network


def load_network(
    checkpoint: str | os.PathLike,
    preset: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
    weights: str = EMA_WEIGHTS,
    strict: bool = True,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[CosmosTransferNet, LoadReport]:
    """Build the checkpoint's network on ``device`` and load its weights into it (strictly).

    The network comes from the checkpoint's ``network.json``; ``preset`` / ``overrides``, when given as well,
    must describe the same network. For a file that carries none: ``preset`` + ``overrides``, or, when no
    preset is given, the preset whose network has exactly the file's parameter names and shapes.
    """
    local = _local_checkpoint(checkpoint)
    state = _read_state(local, weights, str(checkpoint))
    network_weights, prefix = select_network_weights(state, weights, str(checkpoint))
    network = resolve_checkpoint_network(local, network_weights, preset, overrides)
    with torch.device(device):
        net = build_network(network.preset, **network.overrides)
    try:
        report = load_network_weights(net, network_weights, f"{checkpoint} ({prefix}*)", strict=strict)
    except CheckpointLoadError as error:
        raise CheckpointLoadError(
            f"{error}\nNetwork: {network.describe()}.\nFix: pick the --preset the checkpoint was trained with (and "
            "the same --set overrides), or pass --allow-partial-load to load the matching keys only"
        ) from None
    return net.to(dtype=dtype).eval().requires_grad_(False), report
