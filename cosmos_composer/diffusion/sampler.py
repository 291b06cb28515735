"""Sampling from Cosmos-Transfer2.5: flow-matching UniPC with classifier-free guidance.

What the official inference does (cosmos-transfer2.5, checked against its code):

* **Scheduler.** ``FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1)`` (a flow-matching port
  of diffusers' UniPC), ``set_timesteps(num_steps, shift=5)``: the sigmas are
  ``linspace(0.999, 0, num_steps + 1)[:-1]`` (0.999 = 1 - 1/1000 is the largest training sigma),
  shifted by ``sigma' = 5 sigma / (1 + 4 sigma)``, followed by a final 0; the timesteps handed to the
  network are ``int64(1000 * sigma')``. UniPC order 2, ``bh2``, predicting x0, lower order in the last
  steps. We use diffusers' own ``UniPCMultistepScheduler`` in its flow mode
  (``prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5``), given the same unshifted
  sigma grid, which makes the schedule and the updates the same as upstream's.
  (diffusers' default flow grid starts at 1.0 instead of 0.999, and the diffusers Cosmos2.5 pipeline as
  converted ships a Karras-sigma config; neither is what the official code runs.)
* **Guidance.** The transfer models (single view ``vid2vid_model_control_vace_rectified_flow.py`` and
  multiview ``multiview_vid2vid_model_control_vace_rectified_flow.py``) combine the two velocities as
  ``v = cond + guidance * (cond - uncond)``, so guidance 0 is the conditional prediction alone. (The
  predict2 base models use ``uncond + guidance * (cond - uncond)`` instead; the transfer models override
  it.) The inference default is guidance 3 (``cosmos_transfer2/config.py``: an int in 0..7); the
  training sample callbacks use 7 with 35 steps.
* **Unconditional branch.** The same control latents, control weight, conditioning frames and view ids
  as the conditional branch; only the text differs: the negative-prompt embedding in the official
  inference scripts, or, without a negative prompt, the text-dropout embedding of training (zeros).
* **Conditioning frames.** The first n latent frames of every view enter the network clean (from the
  condition latents) with the condition mask set, and their predicted velocity is replaced by the true
  one, ``initial_noise - x0`` (``denoise_replace_gt_frames``). Transfer inference uses n = 0 by default.
* **Initial noise.** ``misc.arch_invariant_rand`` (imaginaire/utils/misc.py): numpy's
  ``RandomState(seed).standard_normal`` of the whole batch's shape ``[B, 16, V*t, h, w]`` in float64, cast
  to float32 (``generate_samples_from_batch`` of transfer2/models/vid2vid_model_control_vace_rectified_flow.py),
  so a seed gives the same noise on any device. The multiview inference hands it the user's seed; the
  single-view one a seed drawn from it (see :func:`official_inference_seed`).

The network's ``timesteps_B_T`` is on the 0..1000 scale (``1000 * sigma``), see
``CosmosTransferNet.forward``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..latent_geometry import SPATIAL_COMPRESSION
from . import rectified_flow as rf
from .objective import unconditional_context  # noqa: F401  (the unconditional branch's text, re-exported)

# The official sampler's defaults (`generate_samples_from_batch`, transfer2/models/vid2vid_model_control_vace_rectified_flow.py).
DEFAULT_SHIFT = 5.0
DEFAULT_NUM_STEPS = 35
DEFAULT_GUIDANCE = 3.0  # official inference; the training sample callbacks use 7
CALLBACK_GUIDANCE = 7.0
# The first sigma of FlowUniPCMultistepScheduler's training grid: 1 - 1/num_train_timesteps.
SIGMA_MAX = 1.0 - 1.0 / rf.NUM_TRAIN_TIMESTEPS


def unshifted_sigmas(num_steps: int) -> np.ndarray:
    """The official sampler's sigma grid before the shift: ``num_steps`` values from 0.999 down (0 excluded)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    return np.linspace(SIGMA_MAX, 0.0, num_steps + 1)[:-1].copy()


# numpy's RandomState takes seeds in 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1


def initial_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The official sampler's initial noise for ``seed`` (fp32, CPU): upstream's ``arch_invariant_rand``."""
    if not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(
            f"seed {seed} is out of range: the initial noise comes from numpy's RandomState, as in the official "
            f"inference, which takes seeds 0..{MAX_SEED}"
        )
    return torch.from_numpy(np.random.RandomState(int(seed)).standard_normal(shape).astype(np.float32))


def official_inference_seed(seed: int, multiview: bool) -> int:
    """The seed the official inference draws its initial noise with, for the ``seed`` a user gives it.

    Multiview (transfer2_multiview/inference/inference.py, ``generate_from_batch``) uses it as is. Single view
    (transfer2/inference/inference_pipeline.py, ``generate_img2world``) first runs ``random.seed(seed);
    seed = random.randint(0, 1000000)``, once per chunk; this is the first chunk's seed, the only chunk
    when the video is one chunk long.
    """
    return int(seed) if multiview else random.Random(int(seed)).randint(0, 1_000_000)


def make_scheduler(num_steps: int = DEFAULT_NUM_STEPS, shift: float = DEFAULT_SHIFT):
    """diffusers' flow-matching UniPC, set to the official Cosmos schedule for ``num_steps`` steps.

    ``scheduler.sigmas`` holds the ``num_steps`` shifted sigmas and a final 0; ``scheduler.timesteps``
    the network timesteps ``int64(1000 * sigma)``. The scheduler keeps solver state: use a fresh one
    for every sampling run.
    """
    from diffusers import UniPCMultistepScheduler

    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=rf.NUM_TRAIN_TIMESTEPS,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=shift,
        solver_order=2,
        solver_type="bh2",
        predict_x0=True,
        lower_order_final=True,
        final_sigmas_type="zero",
    )
    scheduler.set_timesteps(sigmas=unshifted_sigmas(num_steps))
    # Step from index 0 whatever the timestep values: with many steps the first two integer timesteps
    # can coincide, and diffusers' lookup would then start at the second sigma.
    scheduler.set_begin_index(0)
    return scheduler


def guided_velocity(cond_v: torch.Tensor, uncond_v: torch.Tensor, guidance: float) -> torch.Tensor:
    """The transfer models' classifier-free guidance: ``cond + guidance * (cond - uncond)``."""
    return cond_v + guidance * (cond_v - uncond_v)


@dataclass
class Conditioning:
    """Everything but the noise that the network sees while sampling one batch.

    Shapes: latents ``[B, 16, V*t, h, w]`` (views concatenated along time, V = 1 for single view),
    text contexts ``[B, V*512, D]`` with D the raw (e.g. 100352) or projected (1024) width.

    Attributes:
        control: the control latents (``latent_control_input``); never dropped.
        context: the prompt's text embedding (conditional branch).
        uncond_context: the negative prompt's embedding, or :func:`unconditional_context`.
        num_views: V.
        view_indices_B_T: camera id of every latent frame (multiview), or None.
        padding_mask: ``[B, 1, H, W]`` in pixels; zeros (no padding) when None.
        condition_latents: clean latents whose first ``num_conditional_frames`` frames per view condition
            the sample (video2world conditioning); the other frames are ignored.
        num_conditional_frames: latent frames per view taken from ``condition_latents`` (0 = none).
        control_weight: ``control_context_scale`` (1.0 as in training).
    """

    control: torch.Tensor
    context: torch.Tensor
    uncond_context: torch.Tensor
    num_views: int = 1
    view_indices_B_T: Optional[torch.Tensor] = None
    padding_mask: Optional[torch.Tensor] = None
    condition_latents: Optional[torch.Tensor] = None
    num_conditional_frames: int = 0
    control_weight: Union[float, torch.Tensor] = 1.0

    def validate(self) -> None:
        if self.control.ndim != 5:
            raise ValueError(f"control latents must be [B, C, T, H, W], got shape {tuple(self.control.shape)}")
        if self.context.shape[:2] != self.uncond_context.shape[:2]:
            raise ValueError(
                f"context {tuple(self.context.shape)} and uncond_context {tuple(self.uncond_context.shape)} "
                "must agree in batch and token count"
            )
        T = self.control.shape[2]
        if T % self.num_views:
            raise ValueError(f"{T} latent frames cannot be split into {self.num_views} views")
        if self.num_conditional_frames < 0 or self.num_conditional_frames > T // self.num_views:
            raise ValueError(
                f"num_conditional_frames={self.num_conditional_frames} must be in 0..{T // self.num_views} "
                "(latent frames per view)"
            )
        if self.num_conditional_frames and self.condition_latents is None:
            raise ValueError(
                "num_conditional_frames > 0 needs condition_latents (the clean latents of the input video)"
            )


def _network_dtype(net: nn.Module) -> torch.dtype:
    return next(net.parameters()).dtype


@torch.no_grad()
def sample(
    net: nn.Module,
    conditioning: Conditioning,
    *,
    guidance: float = DEFAULT_GUIDANCE,
    num_steps: int = DEFAULT_NUM_STEPS,
    shift: float = DEFAULT_SHIFT,
    seed: int = 0,
    progress: bool = True,
    description: str = "Sampling",
) -> torch.Tensor:
    """Sample clean latents ``[B, 16, V*t, h, w]`` (fp32) for ``conditioning``.

    The initial noise is the official sampler's for ``seed`` (:func:`initial_noise`), the same on any device.
    To start from the noise of the official inference run with ``seed``, pass
    ``official_inference_seed(seed, multiview)``. With ``guidance == 0`` the unconditional pass is skipped
    (the formula then equals the conditional velocity exactly).

    Under FSDP2 call this on every rank with the same arguments: each network forward gathers the
    sharded parameters, which is a collective.
    """
    conditioning.validate()
    control = conditioning.control
    B, _, T, H, W = control.shape
    device = control.device
    num_views = conditioning.num_views
    dtype = _network_dtype(net)
    state_shape = (B, net.config.out_channels, T, H, W)

    noise = initial_noise(state_shape, seed).to(device)

    n_cond = conditioning.num_conditional_frames
    cond_mask = rf.condition_mask(torch.full((B,), n_cond, device=device), num_views, T // num_views, H, W).to(device)
    x0_cond = conditioning.condition_latents
    if x0_cond is None:
        x0_cond = torch.zeros(state_shape, device=device)
    x0_cond = x0_cond.to(device=device, dtype=torch.float32)

    padding_mask = conditioning.padding_mask
    if padding_mask is None:
        padding_mask = torch.zeros(B, 1, H * SPATIAL_COMPRESSION, W * SPATIAL_COMPRESSION, device=device)
    common = dict(
        latent_control_input=control.to(device=device, dtype=dtype),
        condition_video_input_mask_B_C_T_H_W=cond_mask.to(dtype),
        padding_mask=padding_mask.to(device=device, dtype=dtype),
        control_context_scale=conditioning.control_weight,
        view_indices_B_T=conditioning.view_indices_B_T,
    )
    context = conditioning.context.to(device=device, dtype=dtype)
    uncond_context = conditioning.uncond_context.to(device=device, dtype=dtype)

    def velocity(x_t: torch.Tensor, timesteps_B_T: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        def network_velocity(x_in: torch.Tensor) -> torch.Tensor:
            return net(x_B_C_T_H_W=x_in.to(dtype), timesteps_B_T=timesteps_B_T, crossattn_emb=text, **common)

        # The conditioning frames' true velocity is the initial noise's (upstream: noise - gt_frames).
        return rf.velocity_with_conditioning_frames(network_velocity, x_t, x0_cond, noise, cond_mask)

    scheduler = make_scheduler(num_steps, shift)
    latents = noise
    for t in tqdm(scheduler.timesteps, desc=description, disable=not progress, leave=False):
        # As upstream: the network gets the scheduler's integer timestep (1000 * sigma, truncated).
        timesteps_B_T = t.to(device=device, dtype=torch.float32).expand(B)[:, None]
        cond_v = velocity(latents, timesteps_B_T, context)
        if guidance == 0:
            v = cond_v
        else:
            v = guided_velocity(cond_v, velocity(latents, timesteps_B_T, uncond_context), guidance)
        latents = scheduler.step(v, t, latents, return_dict=False)[0]
    return latents.float()
