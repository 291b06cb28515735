"""The Composer model: batch -> (encode) -> noise -> network -> rectified-flow loss.

`net` is the trained network and `net_ema` its power-EMA copy. `net_ema` shares `net`'s frozen parameters
(the same tensors, `build_ema_network`), so the model's state dict, which Composer checkpoints, holds
`net.*` for every weight and `net_ema.*` only for the ones the EMA does not share (the trainable ones): each
tensor is stored once. Loading fills the shared ones from `net.*`, and a state dict from before (every key
under both prefixes) loads as well. Export and the weight readers rebuild the official key set, `net_ema.*`
for every key (`checkpoint/keys.py:with_shared_ema_keys`). The frozen encoders (Wan2.1 VAE,
Reason1 text embedder) are kept outside the module tree: they are not trained, not sharded and
not checkpointed, and they are skipped entirely when the shards carry cached latents and embeddings.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from composer.models import ComposerModel
from torchmetrics import Metric

from ..data.layouts import CONTROL_KEYS
from ..data.precompute import check_crossattn_proj_fingerprint, crossattn_proj_fingerprint
from ..diffusion import rectified_flow as rf
from ..diffusion.objective import (
    ObjectiveConfig,
    predict_velocity,
    training_velocities,
    unconditional_context,
)
from ..latent_geometry import SPATIAL_COMPRESSION
from .network import CosmosTransferNet, latent_view_indices
from .parallelize import build_ema_network


class _FrozenEncoders:
    """Holds the VAE and the text embedder without registering them as submodules."""

    def __init__(self, vae=None, text_embedder=None):
        self.vae = vae
        self.text_embedder = text_embedder


class CosmosTransferModel(ComposerModel):
    def __init__(
        self,
        net: CosmosTransferNet,
        objective: Optional[ObjectiveConfig] = None,
        use_ema: bool = True,
        train_base: bool = False,
        control_key: str = "hdmap_bbox",
        vae=None,
        text_embedder=None,
    ):
        super().__init__()
        if control_key not in CONTROL_KEYS:  # the batch's `control_input_<key>` uses the canonical names only
            raise ValueError(
                f"control_key={control_key!r} is not one of {list(CONTROL_KEYS)}; aliases (blur) are resolved by "
                "load_config, or by cosmos_composer.data.layouts.normalize_control_key"
            )
        self.net = net
        self.objective = objective or ObjectiveConfig()
        self.control_key = control_key
        self.train_base = train_base
        self.encoders = _FrozenEncoders(vae, text_embedder)
        # `net` comes with its trainability decided (models/prepare.py; `parallelize.set_trainable_`).
        if use_ema:
            # Every key of net, but only the trainable weights are copies: it starts from net's weights.
            self.net_ema = build_ema_network(net)
            # Each tensor once in a checkpoint: the EMA's shared weights are saved and loaded as net.* only.
            self.register_state_dict_post_hook(_drop_shared_ema_weights)
            self.register_load_state_dict_post_hook(_accept_missing_shared_ema_weights)
        self._checked_fingerprint: Optional[str] = None

    # ------------------------------------------------------------------ batch -> network inputs
    def _num_views(self, batch: dict) -> int:
        if not self.net.config.is_multiview:
            return 1
        return int(batch["sample_n_views"][0])

    @torch.no_grad()
    def encode_batch(self, batch: dict) -> dict[str, torch.Tensor]:
        """Latents of video and control, text context, view ids and padding mask for the network.

        Uses the cached columns when the batch has them; otherwise runs the frozen encoders.
        """
        num_views = self._num_views(batch)
        if "video_latent" in batch:
            x0 = batch["video_latent"].float()
            control = batch["control_latent"].float()
        else:
            vae = self.encoders.vae
            if vae is None:
                raise ValueError("The batch has no cached latents and no VAE is configured: set `vae` in the config")
            x0 = vae.encode_views(batch["video"], num_views).float()
            control = vae.encode_views(batch[f"control_input_{self.control_key}"], num_views).float()

        if "text_embedding" in batch:
            context = batch["text_embedding"].float()
            if context.shape[-1] == self.net.config.crossattn_emb_channels:
                self._check_projection_fingerprint(batch)
        else:
            embedder = self.encoders.text_embedder
            if embedder is None:
                raise ValueError("The batch has no cached text embeddings and no text encoder is configured")
            captions = [caption for sample_captions in batch["ai_caption"] for caption in sample_captions]
            context_BV_L_D = embedder.embed(captions).float()
            B = x0.shape[0]
            context = context_BV_L_D.reshape(B, num_views * context_BV_L_D.shape[1], -1)

        view_indices_B_T = None
        if self.net.config.is_multiview:
            # Each view's camera id is its first pixel frame's id.
            B, _, T, _, _ = x0.shape
            view_ids_B_V = batch["view_indices"].reshape(B, num_views, -1)[:, :, 0]
            view_indices_B_T = latent_view_indices(view_ids_B_V, T // num_views).to(x0.device)
        padding_mask = batch.get("padding_mask")
        if padding_mask is None:
            padding_mask = x0.new_zeros(x0.shape[0], 1, *(n * SPATIAL_COMPRESSION for n in x0.shape[-2:]))
        return dict(
            x0=x0,
            control=control,
            context=context,
            view_indices_B_T=view_indices_B_T,
            padding_mask=padding_mask.float(),
            num_views=num_views,
        )

    def _check_projection_fingerprint(self, batch: dict) -> None:
        """Cached 1024-d embeddings were made with one `crossattn_proj`; refuse any other one."""
        if self.train_base:
            raise ValueError(
                "The shards hold projected (1024-d) text embeddings, which are only valid for a frozen "
                "crossattn_proj; with train_base=true re-run the precompute with raw (100352-d) embeddings"
            )
        stored = batch.get("crossattn_proj_fingerprint")
        stored = stored[0] if isinstance(stored, (list, tuple)) else stored
        if self._checked_fingerprint is None:
            self._checked_fingerprint = crossattn_proj_fingerprint(self.net.crossattn_proj)  # a collective under FSDP2
        check_crossattn_proj_fingerprint(stored, self._checked_fingerprint, source="the batch")

    # ------------------------------------------------------------------ the objective
    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = self.encode_batch(batch)
        null_context = unconditional_context(self.net, inputs["context"])  # every step: a collective under FSDP2
        return training_velocities(self.net, inputs, self.objective, null_context)

    def loss(self, outputs: tuple[torch.Tensor, torch.Tensor], batch: Any) -> torch.Tensor:
        v_pred, v_target = outputs
        per_sample = (v_pred.float() - v_target.float()).pow(2).mean(dim=tuple(range(1, v_pred.ndim)))
        return per_sample.mean()

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def eval_forward(self, batch: dict, outputs: Optional[Any] = None) -> dict[float, torch.Tensor]:
        """Per-sample loss at each of the fixed eval sigmas, with noise from a fixed seed.

        No conditioning frames and no text dropout, so the numbers measure the denoiser alone.
        """
        inputs = self.encode_batch(batch)
        x0 = inputs["x0"]
        B, _, T, H, W = x0.shape
        generator = torch.Generator().manual_seed(self.objective.eval_seed)
        cond_mask = x0.new_zeros(B, 1, T, H, W)
        losses = {}
        for sigma in self.objective.eval_sigmas:
            eps = torch.randn(x0.shape, generator=generator).to(x0.device)
            sigma_B = torch.full((B,), sigma, device=x0.device)
            x_t, v_target = rf.interpolate(x0, eps, sigma_B)
            v_pred = predict_velocity(self.net, inputs, x_t, sigma_B, cond_mask, eps, inputs["context"])
            losses[sigma] = (v_pred - v_target).pow(2).mean(dim=tuple(range(1, v_pred.ndim)))
        return losses

    def get_metrics(self, is_train: bool = False) -> dict[str, Metric]:
        if is_train:
            return {}
        metrics = {f"loss_sigma_{sigma:g}": LossAtSigma(sigma) for sigma in self.objective.eval_sigmas}
        metrics["loss_fixed_sigmas"] = LossAtSigma(None)
        return metrics

    def update_metric(self, batch: Any, outputs: dict[float, torch.Tensor], metric: Metric) -> None:
        metric.update(outputs)


def shared_ema_parameter_names(model: CosmosTransferModel) -> list[str]:
    """Names in `model.net_ema` of the parameters it shares with `model.net` (the same Parameter objects).

    Found by identity, not by requires_grad, so only what really is one tensor is left out of the state dict.
    Under FSDP2 the shared objects are the sharded parameters, which `net`'s state-dict pre-hooks put back in
    place before the state dict is read.
    """
    net_ema = getattr(model, "net_ema", None)
    if net_ema is None:
        return []
    net_parameters = {id(param) for param in model.net.parameters()}
    return [name for name, param in net_ema.named_parameters(remove_duplicate=False) if id(param) in net_parameters]


def _drop_shared_ema_weights(model: CosmosTransferModel, state_dict: dict, prefix: str, local_metadata) -> None:
    """State-dict post-hook: each shared tensor once, under `net.*` (torch's get_model_state_dict, which
    Composer saves with, calls `model.state_dict()` and so this hook)."""
    for name in shared_ema_parameter_names(model):
        state_dict.pop(f"{prefix}net_ema.{name}", None)


def _accept_missing_shared_ema_weights(model: CosmosTransferModel, incompatible_keys) -> None:
    """Load post-hook: the shared `net_ema.*` are filled by loading `net.*`, so their absence is no missing key
    (strict loading still fails on any other). Keys are the root's, so they may carry a wrapper's prefix."""
    shared = set(shared_ema_parameter_names(model))

    def is_shared(key: str) -> bool:
        wrapper_prefix, found, name = key.partition("net_ema.")
        return bool(found) and (wrapper_prefix == "" or wrapper_prefix.endswith(".")) and name in shared

    incompatible_keys.missing_keys[:] = [key for key in incompatible_keys.missing_keys if not is_shared(key)]


class LossAtSigma(Metric):
    """Mean per-sample eval loss at one fixed sigma (or, with sigma=None, averaged over all of them)."""

    def __init__(self, sigma: Optional[float]):
        super().__init__()
        self.sigma = sigma
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, losses_by_sigma: dict[float, torch.Tensor]) -> None:
        if self.sigma is None:
            per_sample = torch.stack(list(losses_by_sigma.values())).mean(dim=0)
        else:
            per_sample = losses_by_sigma[self.sigma]
        self.total += per_sample.double().sum()
        self.count += per_sample.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp(min=1)).float()
