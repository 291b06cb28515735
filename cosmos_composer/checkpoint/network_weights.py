"""A checkpoint -> one network's weights -> the network they belong to, built and loaded: what generation runs.

Checkpoints (read by ``checkpoint/load.py: read_checkpoint_state``): a consolidated ``.pt`` in the official
formats (or an hf:// URI of one), loaded strictly, or a Composer checkpoint folder (a sharded ``ep*-ba*`` folder, its ``latest-rank0.pt``
link, or a run's ``checkpoints`` folder, taking the newest). An EMA-only file (``*_ema_bf16.pt``,
``model_ema_fp32.pt``) holds one set of weights under ``net.*``; ``model.pt`` and Composer checkpoints hold
``net.*`` (training weights) and ``net_ema.*`` (EMA), and ``weights="ema"`` (the default) takes the EMA, as the
official inference runs the EMA files (``checkpoint/keys.py: prefix_of_weights``).

The network (``network_config.resolve_checkpoint_network``, as export resolves it): the checkpoint's
``network.json``; for a file that carries none (the released ones), the ``preset`` and ``overrides`` given, else
the preset its shapes match.

``load_crossattn_proj`` reads only the frozen text projection of a checkpoint, for the text embeddings that
``convert_to_mds.py --precompute text`` caches projected.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import torch
from torch import nn

from ..models import build_network
from ..models.network import CosmosTransferNet, crossattn_projection
from .keys import EMA_WEIGHTS, NET_PREFIX, TRAINING_WEIGHTS, under_prefix
from .load import (
    CheckpointLoadError,
    LoadReport,
    load_network_weights,
    local_checkpoint,
    read_checkpoint_state,
    read_local_state,
    select_network_weights,
)
from .network_config import NetworkConfigError, resolve_checkpoint_network

log = logging.getLogger(__name__)

CROSSATTN_PROJ_PREFIX = "crossattn_proj."  # the text projection's parameters, under the network's prefix


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
    local = local_checkpoint(checkpoint)
    state = read_local_state(local, weights, str(checkpoint))
    network_weights, prefix = select_network_weights(state, weights, str(checkpoint))
    shapes = {key: tuple(tensor.shape) for key, tensor in network_weights.items()}
    try:  # shapes unchecked here: the strict load below reports every difference
        network = resolve_checkpoint_network(local, shapes, preset, overrides, check_shapes=False)
    except NetworkConfigError as error:
        raise CheckpointLoadError(str(error)) from None
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
