"""Our multiview network against the velocity of the official `MultiViewControlDiT`.

`tests/fixtures/multiview_golden.*` holds a tiny seeded network under upstream's key names, its inputs and
the velocities upstream computed on them (fp32, CPU), made by hand with `scripts/make_multiview_golden.py`
from a cosmos-transfer2.5 checkout (commit in the json). Nothing here imports upstream code.

The weights go through the loader a user's released `*_ema_bf16.pt` goes through: a consolidated `.pt`
with `net.*` keys in bf16, plus the RoPE and counter buffers upstream saves, loaded strictly.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cosmos_composer.checkpoint.load import load_consolidated_into_network
from cosmos_composer.models import build_network

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "multiview_golden"
# fp32 on CPU: the two implementations differ only in the order of float operations. Measured max
# |ours - upstream| / mean |upstream|: 2e-6. 2e-5 leaves room for other BLAS builds; the smallest planted
# bugs move it by 1e-2 (RoPE t extrapolation ratio 1/3 -> 1) and 6e-2 (q/k RMSNorm eps 1e-6 -> 1e-5).
RELATIVE_TOLERANCE = 2e-5

# Forward arguments of each stored velocity (the json says the same in words).
CALLS = {
    "output.velocity_view_indices": True,  # with input.view_indices_B_T
    "output.velocity_default_views": False,  # views numbered 0..V-1 by the network
}


@pytest.fixture(scope="module")
def golden() -> tuple[dict[str, torch.Tensor], dict]:
    return load_file(f"{FIXTURE}.safetensors"), json.loads(Path(f"{FIXTURE}.json").read_text())


@pytest.fixture(scope="module")
def network_from_golden_weights(golden, tmp_path_factory):
    tensors, meta = golden
    net = build_network(meta["our_preset"], **meta["our_overrides"]).eval()
    released_file = tmp_path_factory.mktemp("golden") / "multiview_golden_ema_bf16.pt"
    torch.save({k: v for k, v in tensors.items() if k.startswith("net.")}, released_file)
    report = load_consolidated_into_network(net, released_file, strict=True, announce=False)
    assert sorted(report.loaded) == sorted(name for name, _ in net.named_parameters())
    assert report.skipped_non_parameters, "the upstream RoPE and counter buffers should be skipped by the loader"
    return net


def _our_velocity(net, tensors: dict[str, torch.Tensor], meta: dict, with_view_indices: bool) -> torch.Tensor:
    inputs = {k.removeprefix("input."): v for k, v in tensors.items() if k.startswith("input.")}
    view_indices = inputs.pop("view_indices_B_T")
    floats = {k: v.float() for k, v in inputs.items()}
    with torch.no_grad():
        return net(
            **floats,
            control_context_scale=meta["forward"]["control_context_scale"],
            view_indices_B_T=view_indices if with_view_indices else None,
        )


@pytest.mark.parametrize("output_key", sorted(CALLS))
def test_our_network_gives_the_official_multiview_velocity(golden, network_from_golden_weights, output_key):
    tensors, meta = golden
    official = tensors[output_key]
    ours = _our_velocity(network_from_golden_weights, tensors, meta, with_view_indices=CALLS[output_key])
    assert ours.shape == official.shape
    relative_error = ((ours - official).abs().max() / official.abs().mean()).item()
    assert relative_error < RELATIVE_TOLERANCE, (
        f"{output_key}: max |ours - official| is {relative_error:.2e} of the official velocity's mean |v| "
        f"(tolerance {RELATIVE_TOLERANCE:.0e}); fixture made from cosmos-transfer2.5 {meta['upstream_commit']}"
    )


def test_the_golden_inputs_exercise_views_and_control(golden):
    """The fixture is only a good test if views, conditioning frames and the control branch all matter."""
    tensors, meta = golden
    view_ids = tensors["input.view_indices_B_T"]
    assert not torch.equal(view_ids[0], view_ids[1])  # two different camera sets
    assert view_ids.unique().numel() > 3  # beyond the default 0..V-1
    assert tensors["input.timesteps_B_T"].unique().numel() == tensors["input.timesteps_B_T"].numel()  # per frame
    assert not torch.allclose(tensors["output.velocity_view_indices"], tensors["output.velocity_default_views"])
    assert meta["measured"]["control_branch_effect_relative"] > 0.05
