"""The sampler's initial noise is the official inference's for the same seed, and the conditioning frames
replace it on the first latent frames of each view.

Upstream draws it with `misc.arch_invariant_rand` (imaginaire/utils/misc.py): numpy's
`RandomState(seed).standard_normal(shape)` cast to float32, one draw for the whole batch. Its multiview
inference seeds it with the user's seed; its single-view inference (transfer2/inference/inference_pipeline.py)
first runs `random.seed(seed); seed = random.randint(0, 1000000)`. The expected noise below is computed here
with numpy and `random`, not with our functions.
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from cosmos_composer.data.cameras import DEFAULT_CAMERAS
from cosmos_composer.data.video import write_mp4
from cosmos_composer.diffusion import sampler
from cosmos_composer.models import build_network
from cosmos_composer.models.network import CosmosTransferNet

GENERATE = Path(__file__).resolve().parents[1] / "scripts" / "generate.py"


def upstream_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.RandomState(seed).standard_normal(shape).astype(np.float32))


def upstream_single_view_seed(seed: int) -> int:
    state = random.getstate()
    try:
        random.seed(seed)
        return random.randint(0, 1000000)
    finally:
        random.setstate(state)


class _RecordingNet(nn.Module):
    """Velocity zero; keeps every network input."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.config = SimpleNamespace(out_channels=16)
        self.inputs = []

    def forward(self, x_B_C_T_H_W, **kwargs):
        self.inputs.append(x_B_C_T_H_W.clone())
        return torch.zeros_like(x_B_C_T_H_W)


def _conditioning(B: int, num_views: int, T: int) -> sampler.Conditioning:
    return sampler.Conditioning(
        control=torch.zeros(B, 16, T, 2, 3),
        context=torch.zeros(B, 8, 4),
        uncond_context=torch.zeros(B, 8, 4),
        num_views=num_views,
    )


@pytest.mark.parametrize("seed", [0, 2025, 2**32 - 1])
def test_sampling_starts_from_numpys_random_state_noise_of_the_whole_batch(seed):
    net = _RecordingNet()
    sampler.sample(net, _conditioning(B=2, num_views=2, T=6), guidance=0.0, num_steps=1, seed=seed, progress=False)
    # No conditioning frames: the first network input is the initial noise itself.
    torch.testing.assert_close(net.inputs[0], upstream_noise((2, 16, 6, 2, 3), seed), rtol=0, atol=0)


def test_conditioning_frames_replace_the_noise_on_the_first_frames_of_each_view():
    net = _RecordingNet()
    x0 = torch.randn(1, 16, 6, 2, 3)
    conditioning = _conditioning(B=1, num_views=2, T=6)
    conditioning.condition_latents, conditioning.num_conditional_frames = x0, 1
    sampler.sample(net, conditioning, guidance=0.0, num_steps=1, seed=3, progress=False)
    expected = upstream_noise((1, 16, 6, 2, 3), 3)
    expected[:, :, [0, 3]] = x0[:, :, [0, 3]]  # views of 3 latent frames, one after the other
    torch.testing.assert_close(net.inputs[0], expected, rtol=0, atol=0)


def test_a_seed_numpy_cannot_take_is_refused_with_the_range():
    with pytest.raises(ValueError, match=r"seed -1 .* 0\.\.4294967295"):
        sampler.sample(_RecordingNet(), _conditioning(1, 1, 2), num_steps=1, seed=-1, progress=False)


# ----------------------------------------------------------------------------- scripts/generate.py --seed
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("noise")
    paths = SimpleNamespace()
    for preset in ("tiny-singleview", "tiny-multiview"):
        torch.manual_seed(0)
        state = build_network(preset).state_dict()
        path = root / f"{preset}.pt"
        torch.save({f"net.{key}": value for key, value in state.items()}, path)
        setattr(paths, preset.replace("-", "_"), path)
    frames = np.random.RandomState(0).randint(0, 256, (5, 16, 32, 3), dtype=np.uint8)
    paths.control = root / "control.mp4"
    write_mp4(paths.control, frames, fps=8)
    paths.views = root / "views"
    for camera in DEFAULT_CAMERAS[:2]:
        write_mp4(paths.views / f"{camera}.mp4", frames, fps=8)
    return paths


def _first_network_inputs(monkeypatch, args: list) -> list[torch.Tensor]:
    """Run scripts/generate.py and return the first network input of the run (the initial noise)."""
    spec = importlib.util.spec_from_file_location("generate_script", GENERATE)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    seen = []
    forward = CosmosTransferNet.forward

    def recording_forward(self, x_B_C_T_H_W, *rest, **kwargs):
        seen.append(x_B_C_T_H_W.detach().float().clone())
        return forward(self, x_B_C_T_H_W, *rest, **kwargs)

    monkeypatch.setattr(CosmosTransferNet, "forward", recording_forward)
    assert script.main([str(a) for a in args]) == 0
    monkeypatch.undo()
    return seen[0]


@pytest.mark.parametrize("multiview", [False, True], ids=["singleview", "multiview"])
def test_generate_with_a_seed_starts_from_the_official_inferences_noise(files, tmp_path, monkeypatch, multiview):
    common = [
        "--prompt",
        "a road",
        "--steps",
        "1",
        "--guidance",
        "0",
        "--vae",
        "tiny",
        "--text-encoder",
        "tiny",
        "--no-progress",
        "--dtype",
        "fp32",
        "--device",
        "cpu",
    ]
    if multiview:
        common += [
            "--checkpoint",
            files.tiny_multiview,
            "--preset",
            "tiny-multiview",
            "--control",
            files.views,
            "--cameras",
            ",".join(DEFAULT_CAMERAS[:2]),
        ]
    else:
        common += ["--checkpoint", files.tiny_singleview, "--preset", "tiny-singleview", "--control", files.control]
    seed = 7
    first = _first_network_inputs(monkeypatch, [*common, "--seed", seed, "--output", tmp_path / "a.mp4"])
    # One view: 5 frames of 16 x 32 -> [1, 16, 2, 2, 4]; two views: [1, 16, 2 * 2, 2, 4].
    assert first.shape == (1, 16, 4 if multiview else 2, 2, 4)
    noise_seed = seed if multiview else upstream_single_view_seed(seed)
    torch.testing.assert_close(first, upstream_noise(tuple(first.shape), noise_seed), rtol=0, atol=0)
    if not multiview:  # the same seed again, then another one
        again = _first_network_inputs(monkeypatch, [*common, "--seed", seed, "--output", tmp_path / "b.mp4"])
        torch.testing.assert_close(again, first, rtol=0, atol=0)
        other = _first_network_inputs(monkeypatch, [*common, "--seed", seed + 1, "--output", tmp_path / "c.mp4"])
        assert not torch.allclose(other, first)
