"""Checkpoint keys: the one place for every rule about the names of the entries of a checkpoint.

- The model state holds two networks: `net.*` (the training weights) and `net_ema.*` (the power EMA), as the
  official checkpoints do. The EMA-only files (`model_ema_*.pt`, the released `*_ema_bf16.pt`) hold the EMA
  renamed to `net.*`.
- The released files also hold entries that are not parameters of the network: TransformerEngine
  `*._extra_state` (at any depth), the `accum_*` counters of upstream's `WeightTrainingStat` and the RoPE
  buffers `pos_embedder.*` / `pos_embedder_options.n_cameras_N.*` (`spec/released_checkpoint_keys.json`
  lists the parameters). diffusers drops the same entries (`TRANSFORMER_SPECIAL_KEYS_REMAP_COSMOS_2_0` in
  `loaders/single_file_utils.py`).
- Module wrappers insert parts into parameter names: activation checkpointing (`_checkpoint_wrapped_module.`,
  torch's `checkpoint_wrapper`), `torch.compile` (`_orig_mod.`) and FSDP1 (`_fsdp_wrapped_module.`); FSDP2
  inserts none. Names are compared with these parts removed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

NET_PREFIX = "net."
EMA_PREFIX = "net_ema."
NETWORK_PREFIXES = (NET_PREFIX, EMA_PREFIX)

# Which network a user asks for: the power EMA or the training weights.
EMA_WEIGHTS = "ema"
TRAINING_WEIGHTS = "net"
WEIGHT_CHOICES = (EMA_WEIGHTS, TRAINING_WEIGHTS)

# Non-parameter entries of the released files (keys without `net.`): anywhere in the name, or at its start.
_NON_PARAMETER_PARTS = ("_extra_state",)
_NON_PARAMETER_STARTS = ("accum_", "pos_embedder.", "pos_embedder_options.")

_WRAPPER_NAME_PARTS = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")

Value = TypeVar("Value")


def without_network_prefix(key: str) -> str:
    """`net.blocks.0...` or `net_ema.blocks.0...` -> `blocks.0...`; other keys unchanged."""
    for prefix in NETWORK_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def under_prefix(state: Mapping[str, Value], prefix: str) -> dict[str, Value]:
    """The entries of `state` whose key starts with `prefix`, with the prefix removed."""
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def with_prefix(state: Mapping[str, Value], prefix: str) -> dict[str, Value]:
    return {prefix + key: value for key, value in state.items()}


def has_ema(keys: Iterable[str]) -> bool:
    return any(key.startswith(EMA_PREFIX) for key in keys)


def check_weights_choice(weights: str) -> None:
    if weights not in WEIGHT_CHOICES:
        raise ValueError(
            f"weights must be one of {list(WEIGHT_CHOICES)} (the EMA or the training weights), not {weights!r}"
        )


def prefix_of_weights(keys: Iterable[str], weights: str) -> str:
    """The prefix under which a file or model state holds the `weights` asked for ("ema" or "net").

    "ema": `net_ema.*` when there are such keys (model.pt, Composer checkpoints), else `net.*` (the EMA-only
    files store the EMA under `net.*`). "net": `net.*`.
    """
    check_weights_choice(weights)
    return EMA_PREFIX if weights == EMA_WEIGHTS and has_ema(keys) else NET_PREFIX


def is_non_parameter(key: str) -> bool:
    """A non-parameter entry of the released files (`key` with or without its `net.` / `net_ema.` prefix)."""
    key = without_network_prefix(key)
    return any(part in key for part in _NON_PARAMETER_PARTS) or key.startswith(_NON_PARAMETER_STARTS)


def strip_wrapper_names(name: str) -> str:
    """A parameter or state-dict name with the parts inserted by module wrappers removed."""
    for part in _WRAPPER_NAME_PARTS:
        name = name.replace(part, "")
    return name
