"""One rectified-flow training step on encoded inputs (reference 4.1-4.3), independent of Composer.

`CosmosTransferModel.forward` and `scripts/benchmark.py` both call `training_velocities`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..models.parallelize import full_tensor
from . import rectified_flow as rf

MULTIVIEW_CONDITIONAL_FRAMES_PROBS = {0: 0.5, 1: 0.25, 2: 0.25}
SINGLEVIEW_CONDITIONAL_FRAMES_PROBS = {0: 0.4, 1: 0.4, 2: 0.2}


@dataclass
class ObjectiveConfig:
    """The released recipe's objective."""

    sigma_shift: float = 5.0
    conditional_frames_probs: dict[int, float] = field(default_factory=lambda: dict(MULTIVIEW_CONDITIONAL_FRAMES_PROBS))
    text_dropout_rate: float = 0.2
    # Evaluation: the loss at fixed sigmas with fixed noise, comparable between runs.
    eval_sigmas: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
    eval_seed: int = 1234


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
    """The network's velocity, with the conditioning frames entering clean and predicted exactly.

    `inputs` holds `x0`, `control`, `padding_mask` and `view_indices_B_T` (see `encode_batch`).
    """
    x0 = inputs["x0"]
    x_in = rf.replace_conditioning_frames(x_t, x0, cond_mask)
    v_pred = net(
        x_B_C_T_H_W=x_in,
        timesteps_B_T=(sigma_B * rf.NUM_TRAIN_TIMESTEPS)[:, None],
        crossattn_emb=context,
        latent_control_input=inputs["control"],
        condition_video_input_mask_B_C_T_H_W=cond_mask,
        padding_mask=inputs["padding_mask"],
        view_indices_B_T=inputs["view_indices_B_T"],
    ).float()
    # The conditioning frames' prediction is replaced by their true velocity: zero loss there,
    # but they still count in the mean (denoise_replace_gt_frames upstream).
    return torch.where(cond_mask.bool(), eps - x0, v_pred)


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
