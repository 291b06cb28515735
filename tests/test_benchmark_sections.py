"""The sections of scripts/benchmark.py use the library's rules: its `--set` parser, its control branch and
its EMA (cosmos_composer/benchmarks/)."""

from __future__ import annotations

import argparse

import pytest
import torch
from composer.utils import reproducibility
from omegaconf import OmegaConf

from cosmos_composer.benchmarks.common import REPO, network_set_items
from cosmos_composer.benchmarks.network import network_config_args, train_ours
from cosmos_composer.benchmarks.train import build_training_networks
from cosmos_composer.benchmarks.trainer import _crossattn_proj_fingerprint
from cosmos_composer.config import load_config
from cosmos_composer.data.precompute import crossattn_proj_fingerprint
from cosmos_composer.models import build_network, get_config
from cosmos_composer.models.parallelize import FROZEN_DTYPE
from cosmos_composer.models.prepare import WeightSource, prepare_training_network


def test_the_network_set_items_read_values_as_train_py_reads_them():
    items = ["extra_image_context_dim=null", "num_blocks=4", "rope_t_extrapolation_ratio=2.0", "name=none"]
    args = argparse.Namespace(preset="tiny-singleview", overrides=items)
    preset, overrides = network_config_args(args)
    # The reference: omegaconf's dotlist, which train.py's `key=value` overrides go through (config.load_config).
    expected = OmegaConf.to_container(OmegaConf.from_dotlist(items))
    assert preset == "tiny-singleview"
    assert (
        overrides
        == expected
        == {
            "extra_image_context_dim": None,
            "num_blocks": 4,
            "rope_t_extrapolation_ratio": 2.0,
            "name": "none",
        }
    )
    # A benchmark preset's own overrides stay, and --set wins over them.
    _, medium = network_config_args(argparse.Namespace(preset=None, overrides=["num_blocks=2"]))
    assert medium["num_blocks"] == 2 and medium["model_channels"] == 384


def test_a_bad_set_item_stops_with_the_item():
    with pytest.raises(SystemExit, match="--set 'num_blocks' is not key=value"):
        network_set_items(argparse.Namespace(overrides=["num_blocks"]))


def test_the_network_section_trains_the_library_control_branch_input_hint_block_included():
    net = build_network("tiny-singleview", use_input_hint_block=True)
    trainable = {id(param) for param in train_ours(net, train_all=False)}
    names = [name for name, param in net.named_parameters() if id(param) in trainable]
    assert names == net.control_branch_parameter_names()
    assert any(name.startswith("input_hint_block.") for name in names)
    assert len(train_ours(net, train_all=True)) == len(list(net.parameters()))


def test_the_train_section_holds_the_ema_as_training_does():
    net, net_ema = build_training_networks("tiny-multiview", {}, "cpu")
    ema = dict(net_ema.named_parameters())
    control_branch = set(net.control_branch_parameter_names())
    assert control_branch
    for name, param in net.named_parameters():
        assert param.requires_grad == (name in control_branch)
        if param.requires_grad:  # an fp32 copy of its own
            assert ema[name] is not param and ema[name].dtype == torch.float32
            torch.testing.assert_close(ema[name], param.detach().float(), rtol=0, atol=0)
        else:  # the frozen base is shared, not copied
            assert ema[name] is param


@pytest.mark.parametrize("start", ["fresh", "base_load_path"])
def test_the_trainer_section_fingerprints_the_crossattn_proj_the_run_will_hold(start, tmp_path):
    """The cached projected text of the trainer section carries the fingerprint of the projection that train.py
    prepares: the base file's when `base_load_path` is set, else the seeded fresh draw of prepare_training_network."""
    overrides = ["model.preset=tiny-multiview"]
    base = None
    if start == "base_load_path":
        base = tmp_path / "base.pt"
        torch.manual_seed(7)  # other values than the seeded fresh draw
        torch.save({f"net.{k}": v.to(FROZEN_DTYPE) for k, v in build_network("tiny-multiview").state_dict().items()
                    if not k.startswith(("control_", "input_hint_block"))}, base)  # fmt: skip
        overrides.append(f"base_load_path={base}")
    cfg = load_config(REPO / "yamls" / "hdmap.yaml", overrides)
    reproducibility.seed_all(cfg.seed)  # as builders.build_trainer seeds before the network is prepared
    net = prepare_training_network(
        get_config("tiny-multiview"),
        lora=None,
        train_base=False,
        precision="fp32",
        fsdp=None,
        weights=WeightSource(base=str(base) if base else None),
        device=torch.device("cpu"),
    )
    expected = crossattn_proj_fingerprint(net.crossattn_proj.to(FROZEN_DTYPE))
    assert _crossattn_proj_fingerprint(cfg, load_path=None) == expected
