"""The rectified-flow training objective of Cosmos-Transfer2.5 (upstream predict2/schedulers/rectified_flow.py).

Notation as upstream: x0 is the clean latent, eps the noise, sigma in [0, 1] the noise level,
x_t = sigma * eps + (1 - sigma) * x0, and the network predicts the velocity v = eps - x0.
The network receives `timesteps = 1000 * sigma` and scales it back by 0.001 inside.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional

import torch

NUM_TRAIN_TIMESTEPS = 1000


def sample_sigma(
    batch_size: int,
    shift: float = 5.0,
    device: torch.device | str = "cpu",
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Logit-normal u = sigmoid(N(0, 1)), shifted: sigma = shift * u / (1 + (shift - 1) * u). Shape [B]."""
    u_B = torch.sigmoid(torch.randn(batch_size, generator=generator, device=device, dtype=torch.float32))
    return shift_sigma(u_B, shift)


def shift_sigma(u: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * u / (1 + (shift - 1) * u)


def interpolate(x0: torch.Tensor, eps: torch.Tensor, sigma_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, velocity target) for per-sample sigma [B] broadcast over the other dimensions."""
    sigma = sigma_B.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return sigma * eps + (1 - sigma) * x0, eps - x0


def sample_num_conditional_frames(
    batch_size: int,
    probs: Mapping[int, float],
    generator: Optional[torch.Generator] = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Number of clean conditioning latent frames per sample (the same for every view of a sample)."""
    weights_list = [float(v) for v in probs.values()]
    if min(weights_list) < 0 or abs(sum(weights_list) - 1.0) > 1e-6:
        raise ValueError(f"conditional_frames_probs must be non-negative and sum to 1, got {dict(probs)}")
    counts = torch.tensor([int(k) for k in probs], device=device)
    weights = torch.tensor(weights_list, device=device)
    index_B = torch.multinomial(weights, batch_size, replacement=True, generator=generator)
    return counts[index_B]


def condition_mask(
    num_conditional_frames_B: torch.Tensor, num_views: int, frames_per_view: int, height: int, width: int
) -> torch.Tensor:
    """Mask [B, 1, V*T, H, W] that is 1 on the first n latent frames of every view (FIRST_RANDOM_N)."""
    frame_index_T = torch.arange(frames_per_view, device=num_conditional_frames_B.device)
    mask_B_T = (frame_index_T[None, :] < num_conditional_frames_B[:, None]).float()
    mask_B_VT = mask_B_T.repeat(1, num_views)
    B = mask_B_VT.shape[0]
    return mask_B_VT[:, None, :, None, None].expand(B, 1, num_views * frames_per_view, height, width).contiguous()


def velocity_with_conditioning_frames(
    network_velocity: Callable[[torch.Tensor], torch.Tensor],
    x_t: torch.Tensor,
    x0: torch.Tensor,
    eps: torch.Tensor,
    mask_B_1_T_H_W: torch.Tensor,
) -> torch.Tensor:
    """The velocity of `x_t` with the conditioning frames (mask 1, see `condition_mask`) held at `x0`.

    As upstream's `denoise` (predict2/models/video2world_model_rectified_flow.py): the conditioning frames
    enter the network clean (x0, the others noisy x_t), and their predicted velocity is replaced by the true
    one, eps - x0 (`denoise_replace_gt_frames`). Training therefore has zero loss on them, still counted in
    the mean; sampling (eps = the initial noise) keeps them on the straight line from eps to x0.
    `network_velocity` maps the network input to its velocity, returned in fp32.
    """
    is_conditioning = mask_B_1_T_H_W.bool()
    v_pred = network_velocity(torch.where(is_conditioning, x0, x_t)).float()
    return torch.where(is_conditioning, (eps - x0).float(), v_pred)


def text_dropout_mask(
    batch_size: int, rate: float, device, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """True where a sample's text is dropped (replaced by zeros before the projection)."""
    return torch.rand(batch_size, generator=generator, device=device) < rate
