"""One rectified-flow training step on encoded inputs, independent of Composer.

As upstream's `training_step` (predict2/models/text2world_model_rectified_flow.py and, for multiview,
predict2_multiview/models/multiview_vid2vid_model_rectified_flow.py).

`CosmosTransferModel.forward` and `scripts/benchmark.py` both call `training_velocities`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..models.dtensor import full_tensor
from . import rectified_flow as rf


@dataclass
class ObjectiveConfig:
    """The released recipe's objective (upstream's transfer2_auto_multiview_post_train_example).

    Its values are written here only: the training config's `model:` keys of the same names default to them.
    """

    # The shift of the logit-normal training sigma (upstream rectified_flow.py).
    sigma_shift: float = 5.0
    # Probabilities of 0, 1 or 2 clean conditioning frames per view (single-view recipe: {0: 0.4, 1: 0.4, 2: 0.2}).
    conditional_frames_probs: dict[int, float] = field(default_factory=lambda: {0: 0.5, 1: 0.25, 2: 0.25})
    text_dropout_rate: float = 0.2  # per sample, all views together (upstream's TextAttr dropout)
    # Evaluation: the loss at fixed sigmas with fixed noise, comparable between runs.
    eval_sigmas: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
    eval_seed: int = 1234

    @classmethod
    def from_model_config(cls, model: Any) -> ObjectiveConfig:
        """The objective of a training config's `model:` section (a `ModelConfig` or its DictConfig)."""
        return cls(
            sigma_shift=float(model.sigma_shift),
            conditional_frames_probs={int(k): float(v) for k, v in model.conditional_frames_probs.items()},
            text_dropout_rate=float(model.text_dropout_rate),
            eval_sigmas=tuple(float(sigma) for sigma in model.eval_sigmas),
            eval_seed=int(model.eval_seed),
        )


def unconditional_context(net, like: torch.Tensor) -> torch.Tensor:
    """The text-dropout context of training (zeros before ``crossattn_proj``), shaped like ``like``.

    For a raw (unprojected) ``like`` that is zeros; for an already projected one (cached 1024-d
    embeddings) it is what the projection makes of zeros, ``GELU(bias)``. Under FSDP2 the bias is gathered
    (a collective: call on every rank).
    """
    config = net.config
    if config.use_crossattn_projection and like.shape[-1] == config.crossattn_emb_channels:
        bias = full_tensor(net.crossattn_proj[0].bias.detach())  # an FSDP2 shard is gathered
        return F.gelu(bias.float()).to(device=like.device, dtype=like.dtype).expand_as(like).contiguous()
    return torch.zeros_like(like)


def predict_velocity(net, inputs: dict, x_t, sigma_B, cond_mask, eps, context) -> torch.Tensor:
    """The network's velocity (fp32), with the conditioning frames entering clean and predicted exactly
    (`rf.velocity_with_conditioning_frames`).

    `inputs` holds `x0`, `control`, `padding_mask` and `view_indices_B_T` (see `encode_batch`).
    """

    def network_velocity(x_in: torch.Tensor) -> torch.Tensor:
        return net(
            x_B_C_T_H_W=x_in,
            timesteps_B_T=(sigma_B * rf.NUM_TRAIN_TIMESTEPS)[:, None],
            crossattn_emb=context,
            latent_control_input=inputs["control"],
            condition_video_input_mask_B_C_T_H_W=cond_mask,
            padding_mask=inputs["padding_mask"],
            view_indices_B_T=inputs["view_indices_B_T"],
        )

    return rf.velocity_with_conditioning_frames(network_velocity, x_t, inputs["x0"], eps, cond_mask)


def training_velocities(
    net, inputs: dict, objective: ObjectiveConfig, null_context: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted, target) velocity for one step: shifted logit-normal sigma per sample, first-n
    conditioning frames per view, text dropped to `null_context` at the recipe's rate, control kept."""
    x0 = inputs["x0"]
    B, _, T, H, W = x0.shape
    device = x0.device
    num_views = inputs["num_views"]

    sigma_B = rf.sample_sigma(B, objective.sigma_shift, device=device)
    eps = torch.randn_like(x0)
    x_t, v_target = rf.interpolate(x0, eps, sigma_B)
    n_cond_B = rf.sample_num_conditional_frames(B, objective.conditional_frames_probs, device=device)
    cond_mask = rf.condition_mask(n_cond_B, num_views, T // num_views, H, W)

    dropped_B = rf.text_dropout_mask(B, objective.text_dropout_rate, device)
    context = torch.where(dropped_B[:, None, None], null_context, inputs["context"])

    v_pred = predict_velocity(net, inputs, x_t, sigma_B, cond_mask, eps, context)
    return v_pred, v_target
