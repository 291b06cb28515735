"""An eval sample whose loss is not finite stops the run naming it (not NaN metrics with exit 0)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cosmos_composer.callbacks.nonfinite_loss import NonFiniteLossGuard, TrainingDiverged
from cosmos_composer.models import build_network
from cosmos_composer.models.composer_model import CosmosTransferModel


def _eval_batch(net, names: list[str]) -> dict:
    """A cached-latent batch of the tiny single-view network, as the eval loader serves it."""
    B, config = len(names), net.config
    return {
        "sample_name": names,
        "video_latent": torch.randn(B, 16, 3, 4, 6),
        "control_latent": torch.randn(B, 16, 3, 4, 6),
        "text_embedding": torch.randn(B, 8, config.crossattn_proj_in_channels),
        "padding_mask": torch.zeros(B, 1, 32, 48),
    }


def test_an_eval_sample_with_nonfinite_latents_is_named():
    guard = NonFiniteLossGuard()
    finite = {0.5: torch.tensor([0.3, 0.4]), 2.0: torch.tensor([0.2, 0.1])}
    guard.eval_after_forward(SimpleNamespace(outputs=finite, batch={"sample_name": ["a", "b"]}), logger=None)
    nan_in_b = {0.5: torch.tensor([0.3, 0.4]), 2.0: torch.tensor([0.2, float("nan")])}
    with pytest.raises(TrainingDiverged, match=r"eval loss is not finite for the eval sample\(s\) b;"):
        guard.eval_after_forward(SimpleNamespace(outputs=nan_in_b, batch={"sample_name": ["a", "b"]}), logger=None)


def test_the_models_eval_outputs_carry_a_nan_latent_to_its_sample_only():
    """What the guard reads: CosmosTransferModel.eval_forward's per-sample losses, NaN only where the latents are."""
    model = CosmosTransferModel(build_network("tiny-singleview"), use_ema=False, control_key="edge")
    batch = _eval_batch(model.net, ["clean", "broken"])
    batch["video_latent"][1, 0, 0, 0, 0] = float("nan")
    outputs = model.eval_forward(batch)
    assert all(bool(torch.isfinite(loss[0])) and not bool(torch.isfinite(loss[1])) for loss in outputs.values())
    with pytest.raises(TrainingDiverged, match=r"sample\(s\) broken;"):
        NonFiniteLossGuard().eval_after_forward(SimpleNamespace(outputs=outputs, batch=batch), logger=None)
