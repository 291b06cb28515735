"""The rules about checkpoint key names (cosmos_composer.checkpoint.keys), each against an independent source:
diffusers' own converter for the non-parameter entries, the released key list, and the names torch's wrappers
really insert."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from cosmos_composer.checkpoint.keys import (
    EMA_PREFIX,
    NET_PREFIX,
    is_non_parameter,
    prefix_of_weights,
    strip_wrapper_names,
    under_prefix,
    without_network_prefix,
)
from cosmos_composer.checkpoint.load import CheckpointLoadError, select_network_weights

RELEASED_KEYS = Path(__file__).resolve().parents[1] / "cosmos_composer" / "spec" / "released_checkpoint_keys.json"
# What the released files hold besides parameters (TransformerEngine state, WeightTrainingStat counters, RoPE).
RELEASED_NON_PARAMETERS = [
    "net.accum_video_sample_counter",
    "net.accum_image_sample_counter",
    "net.accum_iteration",
    "net.accum_train_in_hours",
    "net.pos_embedder.seq",
    "net.pos_embedder.dim_spatial_range",
    "net.pos_embedder.dim_temporal_range",
    "net.blocks.0.cross_attn.attn_op._extra_state",
    "net.control_blocks.1.self_attn.q_norm._extra_state",
]


def _released_keys() -> dict[str, list[str]]:
    return {name: list(keys) for name, keys in json.loads(RELEASED_KEYS.read_text()).items() if name != "_about"}


def test_non_parameter_entries_are_the_ones_diffusers_drops():
    pytest.importorskip("diffusers")
    from diffusers.loaders.single_file_utils import convert_cosmos_transformer_checkpoint_to_diffusers

    single_view = _released_keys()["singleview_general"] + RELEASED_NON_PARAMETERS
    for key in single_view:
        dropped_by_diffusers = not convert_cosmos_transformer_checkpoint_to_diffusers({key: torch.zeros(1)})
        assert is_non_parameter(key) == dropped_by_diffusers, key
        assert is_non_parameter(without_network_prefix(key)) == dropped_by_diffusers, key
    # The multiview file's RoPE buffers (diffusers has no multiview model); no released parameter is filtered.
    assert is_non_parameter("net.pos_embedder_options.n_cameras_3.seq")
    assert is_non_parameter("net_ema.accum_iteration")
    for variant, keys in _released_keys().items():
        assert not [key for key in keys if is_non_parameter(key)], variant


def test_wrapper_names_are_stripped_as_torch_inserts_them():
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    plain = nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)))
    wrapped = nn.Sequential(nn.Linear(2, 3), checkpoint_wrapper(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))))
    compiled = torch.compile(wrapped)  # only wraps; nothing is compiled until it runs
    expected = [name for name, _ in plain.named_parameters()]
    found = [name for name, _ in compiled.named_parameters()]
    assert found != expected and any("_checkpoint_wrapped_module." in n and "_orig_mod." in n for n in found)
    assert [strip_wrapper_names(name) for name in found] == expected
    assert strip_wrapper_names("blocks.0._fsdp_wrapped_module.mlp.layer1.weight") == "blocks.0.mlp.layer1.weight"


def test_which_weights_each_file_holds():
    ema_only = {"net.a": torch.zeros(1)}  # model_ema_*.pt and the released *_ema_bf16.pt: the EMA under net.*
    both = {"net.a": torch.zeros(1), "net_ema.a": torch.ones(1)}  # model.pt and Composer checkpoints
    assert prefix_of_weights(ema_only, "ema") == prefix_of_weights(ema_only, "net") == NET_PREFIX
    assert prefix_of_weights(both, "ema") == EMA_PREFIX and prefix_of_weights(both, "net") == NET_PREFIX
    with pytest.raises(ValueError, match=r"weights must be one of \['ema', 'net'\].*'best'"):
        prefix_of_weights(both, "best")
    assert under_prefix(both, EMA_PREFIX) == {"a": both["net_ema.a"]}

    weights, prefix = select_network_weights(both, "ema", "model.pt")
    assert prefix == EMA_PREFIX and torch.equal(weights["a"], torch.ones(1))
    with pytest.raises(CheckpointLoadError, match=r"other\.pt has no 'net\.\*' keys"):
        select_network_weights({"model.a": torch.zeros(1)}, "ema", "other.pt")
