"""`base_load_path`: a Predict2.5-shaped base checkpoint starts a Transfer run with its base DiT loaded strictly and
the control branch at its VACE init (control block i = base block i, projections zero), as upstream's
`load_base_model` + `copy_weights_to_control_branch` ("first_n") do; `load_path` and autoresume win over it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from helpers import QUICKSTART, REPO, free_port
from torch.distributed.tensor import DTensor

from cosmos_composer import builders, run_setup
from cosmos_composer.checkpoint.autoresume import ResumePlan
from cosmos_composer.checkpoint.export import example_inputs
from cosmos_composer.checkpoint.load import CheckpointLoadError, load_base_into_network
from cosmos_composer.config import load_config
from cosmos_composer.models import build_network
from cosmos_composer.run_plan import plan_run

PRESET = "tiny-multiview"  # the quickstart's: view embeddings and the input hint block, 2 control blocks
CONTROL = ("control_blocks.", "control_embedder.", "input_hint_block.")  # upstream's freeze_base_model list


def _synthetic():
    spec = importlib.util.spec_from_file_location(
        "make_synthetic_checkpoint", REPO / "scripts" / "make_synthetic_checkpoint.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _base_file(path: Path, with_ema: bool = False, **changes) -> dict[str, torch.Tensor]:
    """A Predict2.5-shaped file from the script; `changes`: key -> tensor (None deletes the key)."""
    state = _synthetic().synthetic_state(PRESET, seed=3, base_only=True, with_ema=with_ema)
    for key, value in changes.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    torch.save(state, path)
    return state


def _cfg(tmp_path: Path, *overrides: str):
    return load_config(
        QUICKSTART, [f"output_root={tmp_path / 'out'}", "parallelism_config=null", "save_interval=null", *overrides]
    )


def _check_vace_init(net, base: dict[str, torch.Tensor], gather: bool = False) -> None:
    """Every base tensor is the file's; control block j = base block j of the file; projections zero.

    `gather`: the parameters are FSDP2 DTensors, compared through torch's own gather (`full_tensor`)."""
    params = {name: p.full_tensor() if gather else p for name, p in net.named_parameters()}
    base_names = [name for name in params if not name.startswith(CONTROL)]
    assert sorted(base_names) == sorted(base)  # the script wrote exactly the base keys
    for name in base_names:
        assert torch.equal(params[name], base[name].to(params[name].dtype)), f"{name} is not the file's"
    for name in params:
        if name.startswith("control_blocks."):
            j, rest = name.split(".", 2)[1:]
            if rest.split(".")[0] in ("before_proj", "after_proj"):
                assert not params[name].any(), f"{name} is not zero"
            else:
                assert torch.equal(params[name], base[f"blocks.{j}.{rest}"].to(params[name].dtype)), name


def test_a_predict25_base_starts_a_transfer_run_with_the_base_loaded_and_the_vace_init(tmp_path, capsys):
    path = tmp_path / "predict2.5_model.pt"
    non_parameters = {  # entries of the released files that are no parameters: tolerated
        "net_ema.blocks.0.self_attn._extra_state": torch.zeros(0),
        "net_ema.accum_video_sample_counter": torch.tensor(7),
        "net_ema.pos_embedder.seq": torch.arange(4.0),
    }
    state = _base_file(path, with_ema=True, **non_parameters)
    cfg = _cfg(tmp_path, f"base_load_path={path}")
    inputs = run_setup.resolve_inputs(cfg, save_folder=None)
    net = builders.build_training_network(cfg, plan_run(cfg, 1, has_gpu=False), inputs)

    ema = {k[len("net_ema.") :]: v for k, v in state.items() if k.startswith("net_ema.") and k not in non_parameters}
    _check_vace_init(net, ema)  # the EMA by default, not net.*
    assert not torch.equal(ema["blocks.0.mlp.layer1.weight"], state["net.blocks.0.mlp.layer1.weight"])
    # The fresh control embedder and hint block: drawn, not zero (upstream keeps their trunc-normal init).
    assert net.control_embedder.proj[1].weight.abs().sum() > 0 and net.input_hint_block[0].weight.abs().sum() > 0
    out = capsys.readouterr().out
    assert (
        f"base: {path} (net_ema.*) loaded strictly ({len(ema)} tensors; {len(ema)} 'net.*' entries ignored); control "
        "branch initialised from base blocks [0, 1]" in out
    ), out
    assert run_setup.describe_start(cfg, inputs) == f"started from the base {path}"
    # Zero projections: the untrained control branch adds exactly nothing to the base's velocity.
    with torch.no_grad():
        x = example_inputs(net.config)
        assert torch.equal(net(**x), net(**{**x, "latent_control_input": None}))


def test_fsdp2_base_load_fills_the_shards_with_the_base_and_the_vace_init(tmp_path):
    """The sharded path (meta build, DTensor shards, the control branch copied shard to shard), in one process."""
    path = tmp_path / "predict2.5_ema_bf16.pt"
    base = {k[len("net.") :]: v for k, v in _base_file(path).items()}
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        cfg = load_config(QUICKSTART, [f"base_load_path={path}", "save_interval=null"])
        net = builders.build_training_network(
            cfg, plan_run(cfg, 1, has_gpu=False), run_setup.resolve_inputs(cfg, save_folder=None)
        )
        assert all(isinstance(p, DTensor) for p in net.parameters())
        _check_vace_init(net, base, gather=True)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"net.final_layer.linear.weight": None},
            r"1 base keys of the network are missing from the file: final_layer\.linear\.weight",
        ),
        (
            {"net.view_embeddings.weight": torch.zeros(8, 7)},
            r"view_embeddings\.weight: file \[8, 7\] vs network \[7, 7\]",
        ),
        (
            {"net.blocks.0.lora_A.weight": torch.zeros(2)},
            r"keys are not in the network's base DiT: blocks\.0\.lora_A\.weight",
        ),
        (
            {"net.control_blocks.0.after_proj.bias": torch.zeros(64)},
            r"holds a control branch \(1 keys: control_blocks\.0\.after_proj\.bias\).*pass it as load_path",
        ),
    ],
    ids=["missing", "shape", "unexpected", "control"],
)
def test_a_base_file_that_is_not_exactly_the_base_dit_is_refused_naming_the_key(tmp_path, change, message):
    path = tmp_path / "base.pt"
    _base_file(path, **change)
    torch.manual_seed(0)
    net = build_network(PRESET)
    before = {name: p.clone() for name, p in net.named_parameters()}
    with pytest.raises(CheckpointLoadError, match=message):
        load_base_into_network(net, path)
    assert all(torch.equal(p, before[name]) for name, p in net.named_parameters())  # nothing was copied


def test_load_path_and_autoresume_win_over_base_load_path(tmp_path, capsys, monkeypatch):
    base = tmp_path / "base.pt"
    _base_file(base)
    full = tmp_path / "transfer_ema_bf16.pt"
    torch.save(_synthetic().synthetic_state(PRESET, seed=5), full)

    cfg = _cfg(tmp_path, f"base_load_path={base}", f"load_path={full}")
    inputs = run_setup.resolve_inputs(cfg, save_folder=None)
    assert inputs.base is None and inputs.weights == str(full)
    assert (
        f"base_load_path='{base}' ignored: load_path='{full}' (a full Transfer checkpoint) wins"
        in capsys.readouterr().out
    )
    net = builders.build_training_network(cfg, plan_run(cfg, 1, has_gpu=False), inputs)
    expected = torch.load(full, weights_only=True)
    assert all(torch.equal(p, expected[f"net.{name}"].float()) for name, p in net.named_parameters())

    resumed = tmp_path / "checkpoints" / "ep0-ba1"
    monkeypatch.setattr(
        run_setup,
        "plan_autoresume",
        lambda folder, download_to=None, sharded=None: ResumePlan(checkpoint=resumed, batch=1),
    )
    cfg = _cfg(tmp_path, f"base_load_path={base}", "save_interval=1ba")
    inputs = run_setup.resolve_inputs(cfg, save_folder=str(tmp_path / "checkpoints"))
    assert inputs.base is None and inputs.resumes
    assert f"base_load_path='{base}' ignored: the run resumes from {resumed}" in capsys.readouterr().out
