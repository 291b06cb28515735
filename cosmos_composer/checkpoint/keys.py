"""Checkpoint keys: the one place for every rule about the names of the entries of a checkpoint.

- The model state holds two networks: `net.*` (the training weights) and `net_ema.*` (the power EMA), as the
  official checkpoints do. Our Composer checkpoints store `net_ema.*` only for the weights the EMA does not
  share with `net` (the trainable ones: the frozen ones are one tensor in memory); `with_shared_ema_keys`
  gives back the full key set. The EMA-only files (`model_ema_*.pt`, the released `*_ema_bf16.pt`) hold the EMA
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


def with_shared_ema_keys(state: Mapping[str, Value]) -> dict[str, Value]:
    """The model state with every key the official files hold: `net_ema.<k>` for each `net.<k>` the EMA shares.

    `CosmosTransferModel` checkpoints `net_ema.*` only for the weights the EMA does not share with `net` (the
    trainable ones); the shared ones are `net`'s own tensors, so each missing `net_ema.<k>` takes the value of
    `net.<k>` (the same object: nothing is copied). A state without any `net_ema.*` key (a run without the
    EMA) and a state that holds every key under both prefixes (checkpoints written before the sharing) come
    back unchanged. Works on any values: tensors, or index entries. Order: `net_ema.*` last, in `net.*`'s order.
    """
    if not has_ema(state):
        return dict(state)
    ema = under_prefix(state, EMA_PREFIX)
    full = {key: value for key, value in state.items() if not key.startswith(EMA_PREFIX)}
    for key, value in under_prefix(state, NET_PREFIX).items():
        full[EMA_PREFIX + key] = ema.pop(key, value)
    full.update(with_prefix(ema, EMA_PREFIX))  # EMA keys without a `net.*` twin (none in our checkpoints): kept
    return full
