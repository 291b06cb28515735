"""The Cosmos-Transfer2.5 diffusion transformer: base DiT, VACE control branch and the multiview variant.

Parameter names are those of the released checkpoints (minus the leading `net.`), so the files load
without renaming. The math follows the official `MiniTrainDIT` (predict2/networks/minimal_v4_dit.py),
`MinimalV4LVGControlVaceDiT` (transfer2/networks/minimal_v4_lvg_dit_control_vace.py) and
`MultiViewControlDiT` (transfer2_multiview/networks/multiview_dit_control.py):

    tokens = PatchEmbed(cat[x_t, cond_mask, padding_mask, (view_emb)])
    control = PatchEmbed(cat[pad(control_latent), cond_mask, padding_mask, (view_emb)]) (-> input_hint_block)
    hints = control blocks on `before_proj(control) + tokens`, each emitting `after_proj(c)`
    for each base block k: tokens = block(tokens) (+ hints[k / n] * control_context_scale if k % n == 0)
    velocity = unpatchify(final_layer(tokens))

Each sub-layer of a block is `x + gate * f(LayerNorm(x) * (1 + scale) + shift)` with the adaLN-LoRA
modulation computed in fp32 (the "wan fp32 strategy"): timestep embedding, modulation, RoPE on q/k and
the final layer stay in fp32 under bf16 autocast.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Mapping
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .context_parallel import ContextParallel
from .dtensor import draw_into_, local_tensor
from .presets import NetworkConfig, get_config

# Prefixes of the parameters that post-training updates when the base is frozen (upstream's `vace` training).
CONTROL_BRANCH_PREFIXES = ("control_blocks.", "control_embedder.", "input_hint_block.")


def latent_view_indices(view_ids_B_V: torch.Tensor, frames_per_view: int) -> torch.Tensor:
    """Camera id of every latent frame, ``[B, V * frames_per_view]``, from each view's camera id ``[B, V]``.

    A multiview latent holds its views one after another along time (``B C (V T) H W``, as upstream's
    `predict2_multiview/networks/multiview_dit.py`), so view v's frames all carry ``view_ids_B_V[:, v]``.
    """
    return view_ids_B_V.repeat_interleave(frames_per_view, dim=1)


# ----------------------------------------------------------------------------- initialisation
# Every module's `init_weights` draws its parameters afresh. The constructors call them (a network built on a
# CPU starts initialised); `models/prepare.py` calls `CosmosTransferNet.init_weights` once more on a network
# built on the meta device and materialised as FSDP2 shards (torchtitan's order). Each draw goes through
# `dtensor.draw_into_`: drawn whole in fp32, one tensor at a time, each rank keeping its own shard.
def _trunc_normal_(weight: torch.Tensor, std: float) -> None:
    draw_into_(weight, lambda full: nn.init.trunc_normal_(full, std=std, a=-3 * std, b=3 * std))


def _fill_(weight: torch.Tensor, value: float) -> None:
    local_tensor(weight).detach().fill_(value)


def _default_linear_init_(linear: nn.Linear) -> None:
    """`nn.Linear.reset_parameters`'s distributions (what upstream keeps for its plain Linears)."""
    draw_into_(linear.weight, lambda full: nn.init.kaiming_uniform_(full, a=math.sqrt(5)))
    _default_bias_init_(linear)


def _default_bias_init_(linear: nn.Linear) -> None:
    """`nn.Linear.reset_parameters`'s bias: uniform in +-1/sqrt(fan_in)."""
    if linear.bias is not None:
        bound = 1.0 / math.sqrt(linear.in_features) if linear.in_features > 0 else 0.0
        draw_into_(linear.bias, lambda full: nn.init.uniform_(full, -bound, bound))


def _no_autocast(device_type: str):
    """Autocast off on this device type, so the enclosed ops run in the dtype we give them.

    The meta device (shape-only runs, FLOP counting) has no autocast, so nothing to turn off there.
    """
    return torch.autocast(device_type, enabled=False) if device_type != "meta" else contextlib.nullcontext()


class Fp32Linear(nn.Linear):
    """A Linear that always computes in fp32 whatever the parameter dtype or autocast state."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.float()
        with _no_autocast(x.device.type):
            return F.linear(x.float(), self.weight.float(), bias)


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32, returned in the input dtype (as TransformerEngine's RMSNorm)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def init_weights(self) -> None:
        _fill_(self.weight, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_fp32 = x.float()
        normed = x_fp32 * torch.rsqrt(x_fp32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype)


def _adaln_modulation(dim: int, lora_dim: int, n_chunks: int) -> nn.Sequential:
    # Keys `.1.weight` / `.2.weight`, as in the checkpoints.
    return nn.Sequential(
        nn.SiLU(), Fp32Linear(dim, lora_dim, bias=False), Fp32Linear(lora_dim, n_chunks * dim, bias=False)
    )


class Patchify(nn.Module):
    """`b c (t r) (h m) (w n) -> b t h w (c r m n)`: channel-major flattening of each patch."""

    def __init__(self, patch_spatial: int, patch_temporal: int):
        super().__init__()
        self.p = patch_spatial
        self.r = patch_temporal

    def forward(self, x_B_C_T_H_W: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = x_B_C_T_H_W.shape
        p, r = self.p, self.r
        if T % r or H % p or W % p:
            raise ValueError(f"Input T,H,W={T},{H},{W} must be divisible by the patch sizes ({r}, {p}, {p})")
        x = x_B_C_T_H_W.reshape(B, C, T // r, r, H // p, p, W // p, p)
        x_B_T_H_W_C_r_p_p = x.permute(0, 2, 4, 6, 1, 3, 5, 7)
        return x_B_T_H_W_C_r_p_p.reshape(B, T // r, H // p, W // p, C * r * p * p)


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, patch_spatial: int, patch_temporal: int):
        super().__init__()
        patch_numel = in_channels * patch_spatial * patch_spatial * patch_temporal
        self.proj = nn.Sequential(Patchify(patch_spatial, patch_temporal), nn.Linear(patch_numel, dim, bias=False))
        self.init_weights()

    def init_weights(self) -> None:
        linear = self.proj[1]
        _trunc_normal_(linear.weight, 1.0 / math.sqrt(linear.in_features))

    def forward(self, x_B_C_T_H_W: torch.Tensor) -> torch.Tensor:
        return self.proj(x_B_C_T_H_W)


class Timesteps(nn.Module):
    """Sinusoidal embedding of the (scaled) timestep, ordered [cos, sin], in fp32."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, timesteps_B_T: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=timesteps_B_T.device) / half
        angles_B_T_half = timesteps_B_T.float()[..., None] * torch.exp(exponent)
        return torch.cat([torch.cos(angles_B_T_half), torch.sin(angles_B_T_half)], dim=-1)


class TimestepEmbedding(nn.Module):
    """With adaLN-LoRA: returns the sinusoid itself as `emb` and linear_2(...) as the shared LoRA term."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear_1 = Fp32Linear(dim, dim, bias=False)
        self.activation = nn.SiLU()
        self.linear_2 = Fp32Linear(dim, 3 * dim, bias=False)
        self.init_weights()

    def init_weights(self) -> None:
        dim = self.linear_1.in_features
        _trunc_normal_(self.linear_1.weight, 1.0 / math.sqrt(dim))
        _trunc_normal_(self.linear_2.weight, 1.0 / math.sqrt(dim))

    def forward(self, sinusoid_B_T_D: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        adaln_lora_B_T_3D = self.linear_2(self.activation(self.linear_1(sinusoid_B_T_D)))
        return sinusoid_B_T_D, adaln_lora_B_T_3D


class RopePosition3D(nn.Module):
    """3D rotary angles for a (views x T x H x W) token grid; time restarts at 0 in every view.

    head_dim is split into t, h, w parts (128 -> 44, 42, 42), each with its own NTK-scaled base:
    theta = 10000 * ratio ** (dim / (dim - 2)). The angles are laid out [t, h, w, t, h, w] for
    rotate-half application. No buffers: nothing of this needs to be in a checkpoint.
    """

    def __init__(self, config: NetworkConfig):
        super().__init__()
        head_dim = config.head_dim
        self.dim_h = head_dim // 6 * 2
        self.dim_w = self.dim_h
        self.dim_t = head_dim - 2 * self.dim_h
        self.max_t = config.max_frames // config.patch_temporal
        self.max_h = config.max_img_h // config.patch_spatial
        self.max_w = config.max_img_w // config.patch_spatial
        self.theta_h = 10000.0 * config.rope_h_extrapolation_ratio ** (self.dim_h / (self.dim_h - 2))
        self.theta_w = 10000.0 * config.rope_w_extrapolation_ratio ** (self.dim_w / (self.dim_w - 2))
        self.theta_t = 10000.0 * config.rope_t_extrapolation_ratio ** (self.dim_t / (self.dim_t - 2))

    @staticmethod
    def _axis_angles(length: int, dim: int, theta: float, device) -> torch.Tensor:
        freqs = 1.0 / theta ** (torch.arange(0, dim, 2, device=device)[: dim // 2].double() / dim)
        positions = torch.arange(length, device=device).double()
        return torch.outer(positions, freqs).float()

    def forward(self, num_views: int, T: int, H: int, W: int, device) -> torch.Tensor:
        """Angles [num_views * T * H * W, head_dim] in fp32, token order view-major then t, h, w."""
        if T > self.max_t or H > self.max_h or W > self.max_w:
            raise ValueError(
                f"Token grid T,H,W={T},{H},{W} per view exceeds the RoPE table {self.max_t},{self.max_h},{self.max_w}; "
                "raise max_frames / max_img_h / max_img_w"
            )
        angles_t = self._axis_angles(T, self.dim_t, self.theta_t, device)
        angles_h = self._axis_angles(H, self.dim_h, self.theta_h, device)
        angles_w = self._axis_angles(W, self.dim_w, self.theta_w, device)
        angles_T_H_W_half = torch.cat(
            [
                angles_t[:, None, None, :].expand(T, H, W, -1),
                angles_h[None, :, None, :].expand(T, H, W, -1),
                angles_w[None, None, :, :].expand(T, H, W, -1),
            ],
            dim=-1,
        )
        angles_L_D = torch.cat([angles_T_H_W_half, angles_T_H_W_half], dim=-1).reshape(T * H * W, -1)
        return angles_L_D.repeat(num_views, 1)


def apply_rope(x_B_H_L_D: torch.Tensor, rope_cos_sin: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate-half RoPE in fp32, returned in the input dtype. cos/sin are [L, head_dim], computed once per forward."""
    cos_L_D, sin_L_D = rope_cos_sin
    x = x_B_H_L_D.float()
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos_L_D + rotated * sin_L_D).to(x_B_H_L_D.dtype)


class Attention(nn.Module):
    """Multi-head attention with per-head q/k RMSNorm, no biases, through SDPA.

    Self-attention applies RoPE after the norms. With `image_context_dim` set (released general/*
    single-view files), the cross-attention also attends to the projected image tokens with its own
    q/k/v (`q_img`, `k_img`, `v_img`) and sums both results before `output_proj`.
    """

    def __init__(self, dim: int, context_dim: Optional[int], num_heads: int, image_context_dim: Optional[int] = None):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        context_dim = dim if context_dim is None else context_dim
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(context_dim, dim, bias=False)
        self.v_proj = nn.Linear(context_dim, dim, bias=False)
        self.output_proj = nn.Linear(dim, dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)
        self.has_image_context = image_context_dim is not None
        if self.has_image_context:
            self.q_img = nn.Linear(dim, dim, bias=False)
            self.k_img = nn.Linear(image_context_dim, dim, bias=False)
            self.v_img = nn.Linear(image_context_dim, dim, bias=False)
            self.q_img_norm = RMSNorm(self.head_dim)
            self.k_img_norm = RMSNorm(self.head_dim)
        self.init_weights()

    def init_weights(self) -> None:
        dim, context_dim = self.q_proj.in_features, self.k_proj.in_features
        _trunc_normal_(self.q_proj.weight, 1.0 / math.sqrt(dim))
        _trunc_normal_(self.k_proj.weight, 1.0 / math.sqrt(context_dim))
        _trunc_normal_(self.v_proj.weight, 1.0 / math.sqrt(context_dim))
        _trunc_normal_(self.output_proj.weight, 1.0 / math.sqrt(dim))
        norms = [self.q_norm, self.k_norm]
        if self.has_image_context:
            _trunc_normal_(self.q_img.weight, 1.0 / math.sqrt(dim))
            _trunc_normal_(self.k_img.weight, 1.0 / math.sqrt(dim))
            _trunc_normal_(self.v_img.weight, 1.0 / math.sqrt(dim))
            norms += [self.q_img_norm, self.k_img_norm]
        for norm in norms:
            norm.init_weights()

    def _heads(self, x_B_L_D: torch.Tensor) -> torch.Tensor:
        B, L, _ = x_B_L_D.shape
        return x_B_L_D.view(B, L, self.num_heads, self.head_dim).transpose(1, 2)

    def _attend(self, q_B_H_L_d, k_B_H_M_d, v_B_H_M_d, context_parallel: Optional[ContextParallel] = None):
        if context_parallel is not None:  # self-attention over the whole sample, for a share of the heads
            q_B_H_L_d, k_B_H_M_d, v_B_H_M_d = map(context_parallel.heads_to_sequence, (q_B_H_L_d, k_B_H_M_d, v_B_H_M_d))
        out_B_H_L_d = F.scaled_dot_product_attention(q_B_H_L_d, k_B_H_M_d, v_B_H_M_d)
        if context_parallel is not None:
            out_B_H_L_d = context_parallel.sequence_to_heads(out_B_H_L_d)
        B, H, L, d = out_B_H_L_d.shape
        return out_B_H_L_d.transpose(1, 2).reshape(B, L, H * d)

    def forward(
        self,
        x_B_L_D: torch.Tensor,
        context_B_M_C: Optional[torch.Tensor] = None,
        rope_cos_sin: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        image_context_B_N_D: Optional[torch.Tensor] = None,
        context_parallel: Optional[ContextParallel] = None,
    ) -> torch.Tensor:
        """`context_parallel` (self-attention only): `x_B_L_D` is this rank's share of the sample's tokens."""
        context = x_B_L_D if context_B_M_C is None else context_B_M_C
        q = self.q_norm(self._heads(self.q_proj(x_B_L_D)))
        k = self.k_norm(self._heads(self.k_proj(context)))
        v = self._heads(self.v_proj(context))
        if rope_cos_sin is not None:
            q, k = apply_rope(q, rope_cos_sin), apply_rope(k, rope_cos_sin)
        out_B_L_D = self._attend(q, k, v, context_parallel)
        if image_context_B_N_D is not None:
            if not self.has_image_context:
                raise ValueError("img_context_emb was given but this network has no image-context modules")
            q_img = self.q_img_norm(self._heads(self.q_img(x_B_L_D)))
            k_img = self.k_img_norm(self._heads(self.k_img(image_context_B_N_D)))
            v_img = self._heads(self.v_img(image_context_B_N_D))
            out_B_L_D = out_B_L_D + self._attend(q_img, k_img, v_img)
        return self.output_proj(out_B_L_D)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.layer1 = nn.Linear(dim, hidden_dim, bias=False)
        self.activation = nn.GELU()
        self.layer2 = nn.Linear(hidden_dim, dim, bias=False)
        self.init_weights()

    def init_weights(self) -> None:
        _trunc_normal_(self.layer1.weight, 1.0 / math.sqrt(self.layer1.in_features))
        _trunc_normal_(self.layer2.weight, 1.0 / math.sqrt(self.layer2.in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(self.activation(self.layer1(x)))


def _modulate(norm: nn.LayerNorm, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return norm(x) * (1 + scale) + shift


class Block(nn.Module):
    """Self-attention, cross-attention and MLP, each gated by adaLN-LoRA modulation of the timestep.

    Multiview (`num_views > 1` at call time) keeps self-attention joint over all views and runs the
    cross-attention per view: view v's tokens attend only to view v's slice of the text context.
    """

    def __init__(self, config: NetworkConfig):
        super().__init__()
        dim = config.model_channels
        image_context_dim = None if config.extra_image_context_dim is None else dim
        self.layer_norm_self_attn = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.self_attn = Attention(dim, None, config.num_heads)
        self.layer_norm_cross_attn = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.cross_attn = Attention(dim, config.crossattn_emb_channels, config.num_heads, image_context_dim)
        self.layer_norm_mlp = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = FeedForward(dim, int(dim * config.mlp_ratio))
        self.adaln_modulation_self_attn = _adaln_modulation(dim, config.adaln_lora_dim, 3)
        self.adaln_modulation_cross_attn = _adaln_modulation(dim, config.adaln_lora_dim, 3)
        self.adaln_modulation_mlp = _adaln_modulation(dim, config.adaln_lora_dim, 3)
        self._init_modulations()  # the attention and MLP modules initialised themselves

    def init_weights(self) -> None:
        for module in (self.self_attn, self.cross_attn, self.mlp):
            module.init_weights()
        self._init_modulations()

    def _init_modulations(self) -> None:
        for modulation in (
            self.adaln_modulation_self_attn,
            self.adaln_modulation_cross_attn,
            self.adaln_modulation_mlp,
        ):
            _trunc_normal_(modulation[1].weight, 1.0 / math.sqrt(modulation[1].in_features))
            _fill_(modulation[2].weight, 0.0)

    def _modulation(self, modulation: nn.Sequential, emb_B_T_D, adaln_lora_B_T_3D, dtype):
        # fp32 modulation, then (B, T, D) -> (B, T, 1, 1, D) to broadcast over each frame's tokens.
        shift, scale, gate = (modulation(emb_B_T_D) + adaln_lora_B_T_3D).chunk(3, dim=-1)
        return [t[:, :, None, None, :].to(dtype) for t in (shift, scale, gate)]

    def _cross_attention(
        self, x_B_L_D, context_B_M_C, image_context, num_views: int, frame_views: Optional[tuple[int, ...]] = None
    ) -> torch.Tensor:
        if num_views == 1:
            return self.cross_attn(x_B_L_D, context_B_M_C, image_context_B_N_D=image_context)
        B, L, D = x_B_L_D.shape
        M = context_B_M_C.shape[1]
        if M % num_views:
            raise ValueError(f"Text context length {M} is not a multiple of the number of views {num_views}")
        if frame_views is not None:  # context parallel: these frames may start or end inside a view
            return self._cross_attention_by_frame(
                x_B_L_D, context_B_M_C.view(B, num_views, M // num_views, -1), frame_views
            )
        # B (V L) D -> (V B) L D: each view attends to its own text tokens only.
        x_VB_l_D = (
            x_B_L_D.view(B, num_views, L // num_views, D).transpose(0, 1).reshape(num_views * B, L // num_views, D)
        )
        ctx = (
            context_B_M_C.view(B, num_views, M // num_views, -1)
            .transpose(0, 1)
            .reshape(num_views * B, M // num_views, -1)
        )
        out_VB_l_D = self.cross_attn(x_VB_l_D, ctx)
        return out_VB_l_D.view(num_views, B, L // num_views, D).transpose(0, 1).reshape(B, L, D)

    def _cross_attention_by_frame(self, x_B_L_D, context_B_V_m_C, frame_views: tuple[int, ...]) -> torch.Tensor:
        """Each run of consecutive frames of one view attends to that view's text (`frame_views`: view per frame)."""
        tokens_per_frame = x_B_L_D.shape[1] // len(frame_views)
        outputs, start = [], 0
        for view, frames in itertools.groupby(frame_views):
            stop = start + len(list(frames)) * tokens_per_frame
            outputs.append(self.cross_attn(x_B_L_D[:, start:stop], context_B_V_m_C[:, view]))
            start = stop
        return torch.cat(outputs, dim=1)

    def forward(
        self,
        x_B_T_H_W_D: torch.Tensor,
        emb_B_T_D: torch.Tensor,
        adaln_lora_B_T_3D: torch.Tensor,
        context_B_M_C: torch.Tensor,
        rope_cos_sin: tuple[torch.Tensor, torch.Tensor],
        num_views: int = 1,
        image_context_B_N_D: Optional[torch.Tensor] = None,
        context_parallel: Optional[ContextParallel] = None,
        frame_views: Optional[tuple[int, ...]] = None,
    ) -> torch.Tensor:
        """With `context_parallel`, `x_B_T_H_W_D` holds this rank's frames; `frame_views` gives each one's view."""
        B, T, H, W, D = x_B_T_H_W_D.shape
        dtype = x_B_T_H_W_D.dtype
        shift_sa, scale_sa, gate_sa = self._modulation(
            self.adaln_modulation_self_attn, emb_B_T_D, adaln_lora_B_T_3D, dtype
        )
        shift_ca, scale_ca, gate_ca = self._modulation(
            self.adaln_modulation_cross_attn, emb_B_T_D, adaln_lora_B_T_3D, dtype
        )
        shift_mlp, scale_mlp, gate_mlp = self._modulation(
            self.adaln_modulation_mlp, emb_B_T_D, adaln_lora_B_T_3D, dtype
        )

        h_B_L_D = _modulate(self.layer_norm_self_attn, x_B_T_H_W_D, shift_sa, scale_sa).reshape(B, T * H * W, D)
        attn_B_L_D = self.self_attn(h_B_L_D, rope_cos_sin=rope_cos_sin, context_parallel=context_parallel)
        attn_B_T_H_W_D = attn_B_L_D.view(B, T, H, W, D)
        x_B_T_H_W_D = x_B_T_H_W_D + gate_sa * attn_B_T_H_W_D

        h_B_L_D = _modulate(self.layer_norm_cross_attn, x_B_T_H_W_D, shift_ca, scale_ca).reshape(B, T * H * W, D)
        cross_B_L_D = self._cross_attention(h_B_L_D, context_B_M_C, image_context_B_N_D, num_views, frame_views)
        x_B_T_H_W_D = x_B_T_H_W_D + gate_ca * cross_B_L_D.view(B, T, H, W, D)

        h_B_T_H_W_D = _modulate(self.layer_norm_mlp, x_B_T_H_W_D, shift_mlp, scale_mlp)
        return x_B_T_H_W_D + gate_mlp * self.mlp(h_B_T_H_W_D)


class ControlBlock(Block):
    """A control-branch block: a full DiT block plus zero-initialised `before_proj` (first block only)
    and `after_proj` (the "zero convolutions" of ControlNet), which emits the hint for the base."""

    def __init__(self, config: NetworkConfig, is_first: bool):
        super().__init__(config)
        dim = config.model_channels
        if is_first:
            self.before_proj = nn.Linear(dim, dim)
        self.after_proj = nn.Linear(dim, dim)
        self.zero_init_projections()

    def init_weights(self) -> None:
        super().init_weights()
        self.zero_init_projections()

    def forward(
        self, c_B_T_H_W_D: torch.Tensor, x_B_T_H_W_D: torch.Tensor, **block_kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the control stream for the next control block, the hint for the base).

        The projections run inside this forward so that they see unsharded weights when the block is
        an FSDP2 unit.
        """
        if hasattr(self, "before_proj"):
            c_B_T_H_W_D = self.before_proj(c_B_T_H_W_D) + x_B_T_H_W_D
        c_B_T_H_W_D = super().forward(c_B_T_H_W_D, **block_kwargs)
        return c_B_T_H_W_D, self.after_proj(c_B_T_H_W_D)

    def zero_init_projections(self) -> None:
        for name in ("before_proj", "after_proj"):
            proj = getattr(self, name, None)
            if proj is not None:
                _fill_(proj.weight, 0.0)
                _fill_(proj.bias, 0.0)


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and the projection to patch pixels, in fp32."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        dim = config.model_channels
        out_dim = config.patch_spatial**2 * config.patch_temporal * config.out_channels
        self.layer_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = Fp32Linear(dim, out_dim, bias=False)
        self.adaln_modulation = _adaln_modulation(dim, config.adaln_lora_dim, 2)
        self.dim = dim
        self.init_weights()

    def init_weights(self) -> None:
        _trunc_normal_(self.linear.weight, 1.0 / math.sqrt(self.dim))
        _trunc_normal_(self.adaln_modulation[1].weight, 1.0 / math.sqrt(self.dim))
        _fill_(self.adaln_modulation[2].weight, 0.0)

    def forward(self, x_B_T_H_W_D, emb_B_T_D, adaln_lora_B_T_3D) -> torch.Tensor:
        shift_B_T_D, scale_B_T_D = (self.adaln_modulation(emb_B_T_D) + adaln_lora_B_T_3D[..., : 2 * self.dim]).chunk(
            2, -1
        )
        with _no_autocast(x_B_T_H_W_D.device.type):
            x = self.layer_norm(x_B_T_H_W_D.float())
            x = x * (1 + scale_B_T_D[:, :, None, None, :]) + shift_B_T_D[:, :, None, None, :]
        return self.linear(x)


def crossattn_projection(in_channels: int, out_channels: int) -> nn.Sequential:
    """``crossattn_proj``: the raw text embedding (100352-d) -> the cross-attention width (1024), Linear + GELU."""
    return nn.Sequential(nn.Linear(in_channels, out_channels), nn.GELU())


class CosmosTransferNet(nn.Module):
    """Cosmos-Transfer2.5: base DiT + VACE control branch (+ multiview). See the module docstring."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        config.validate()
        self.config = config
        dim = config.model_channels
        p, r = config.patch_spatial, config.patch_temporal

        self.x_embedder = PatchEmbed(config.x_embedder_in_channels, dim, p, r)
        self.control_embedder = PatchEmbed(config.control_embedder_in_channels, dim, p, r)
        self.pos_embedder = RopePosition3D(config)
        self.t_embedder = nn.Sequential(Timesteps(dim), TimestepEmbedding(dim))
        self.t_embedding_norm = RMSNorm(dim)
        if config.use_crossattn_projection:
            self.crossattn_proj = crossattn_projection(config.crossattn_proj_in_channels, config.crossattn_emb_channels)
        if config.extra_image_context_dim is not None:
            self.img_context_proj = nn.Sequential(nn.Linear(config.extra_image_context_dim, dim), nn.GELU())
        if config.is_multiview:
            self.view_embeddings = nn.Embedding(config.n_cameras_emb, config.view_condition_dim)
        if config.use_input_hint_block:
            # 7 x (Linear(D, D) + SiLU), the last SiLU kept: keys input_hint_block.{0,2,...,12}.
            layers = []
            for _ in range(7):
                layers += [nn.Linear(dim, dim), nn.SiLU()]
            self.input_hint_block = nn.Sequential(*layers)
            self._init_input_hint_block()

        self.blocks = nn.ModuleList([Block(config) for _ in range(config.num_blocks)])
        self.control_blocks = nn.ModuleList(
            [ControlBlock(config, is_first=(j == 0)) for j in range(len(config.control_layers))]
        )
        self.final_layer = FinalLayer(config)
        self.hint_index_of_block = {block_idx: j for j, block_idx in enumerate(config.control_layers)}
        # Set by `parallelize.apply_context_parallel`: this rank then runs its share of each sample's frames.
        self.context_parallel: Optional[ContextParallel] = None
        self.init_control_branch_from_base()

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_weights(self, weights: Optional[Mapping[str, torch.Tensor]] = None) -> None:
        """Draw every weight afresh, module by module, into this rank's (FSDP2) shards, with the distributions
        the constructors use; then the control branch from the base (`init_control_branch_from_base`).

        For a network built on the meta device and materialised (`models/prepare.py`). `weights`: the
        network's tensors under their official names, when they differ from `state_dict()` (LoRA adapters).
        """
        for embedder in (self.x_embedder, self.control_embedder):
            embedder.init_weights()
        self.t_embedder[1].init_weights()
        self.t_embedding_norm.init_weights()
        for name in ("crossattn_proj", "img_context_proj"):  # upstream keeps nn.Linear's own initialisation
            if hasattr(self, name):
                _default_linear_init_(getattr(self, name)[0])
        if self.config.is_multiview:  # nn.Embedding's own initialisation
            draw_into_(self.view_embeddings.weight, nn.init.normal_)
        if self.config.use_input_hint_block:
            for layer in self.input_hint_block:
                if isinstance(layer, nn.Linear):
                    _default_bias_init_(layer)  # upstream draws only the weights of the hint block
            self._init_input_hint_block()
        for block in itertools.chain(self.blocks, self.control_blocks):
            block.init_weights()
        self.final_layer.init_weights()
        self.init_control_branch_from_base(weights)

    def _init_input_hint_block(self) -> None:
        for layer in self.input_hint_block:
            if isinstance(layer, nn.Linear):
                _trunc_normal_(layer.weight, 1.0 / math.sqrt(layer.in_features))

    @torch.no_grad()
    def init_control_branch_from_base(self, weights: Optional[Mapping[str, torch.Tensor]] = None) -> None:
        """New-training init ("first_n" copy): control block j starts as base block j, projections at 0.

        An untrained control branch therefore adds exactly zero to the base network's output. Loading a
        released checkpoint overwrites all of this. `weights`: the network's tensors under their official
        names (default `state_dict()`); each rank copies its own shards (a control block and its base block
        have the same shapes, so the same sharding).
        """
        weights = self.state_dict() if weights is None else weights
        for j, control_block in enumerate(self.control_blocks):
            control_prefix, base_prefix = f"control_blocks.{j}.", f"blocks.{j}."
            for name, tensor in weights.items():
                base_name = base_prefix + name[len(control_prefix) :]
                if name.startswith(control_prefix) and base_name in weights:
                    local_tensor(tensor).copy_(local_tensor(weights[base_name]))
            control_block.zero_init_projections()

    def control_branch_parameter_names(self) -> list[str]:
        """Names of the parameters that train when the base is frozen (the default)."""
        return [name for name, _ in self.named_parameters() if name.startswith(CONTROL_BRANCH_PREFIXES)]

    def fsdp_wrap_fn(self, module: nn.Module) -> bool:
        """Composer's FSDP2 hook: every base and control block is its own `fully_shard` unit.

        They are also the activation-checkpointing units (`activation_checkpointing` in the config).
        """
        return isinstance(module, Block)

    # ------------------------------------------------------------------ forward helpers
    def _num_views(self, T: int) -> int:
        if not self.config.is_multiview:
            return 1
        state_t = self.config.state_t
        if T % state_t:
            raise ValueError(f"Multiview latent length {T} is not a multiple of state_t={state_t} frames per view")
        num_views = T // state_t
        if num_views > self.config.n_cameras_emb:
            raise ValueError(f"{num_views} views exceed the {self.config.n_cameras_emb} camera embeddings")
        return num_views

    def _append_masks(
        self,
        x_B_C_T_H_W: torch.Tensor,
        cond_mask_B_1_T_H_W: torch.Tensor,
        padding_mask_B_1_T_H_W: torch.Tensor,
        view_emb_B_V_T_H_W: Optional[torch.Tensor],
    ) -> torch.Tensor:
        parts = [x_B_C_T_H_W, cond_mask_B_1_T_H_W.to(x_B_C_T_H_W.dtype), padding_mask_B_1_T_H_W.to(x_B_C_T_H_W.dtype)]
        if view_emb_B_V_T_H_W is not None:
            parts.append(view_emb_B_V_T_H_W.to(x_B_C_T_H_W.dtype))
        return torch.cat(parts, dim=1)

    def _view_embedding(self, view_indices_B_T, B, T, H, W, num_views, device) -> torch.Tensor:
        if view_indices_B_T is None:
            # Upstream's default: view v gets camera id v.
            view_indices_B_T = latent_view_indices(torch.arange(num_views, device=device).expand(B, -1), T // num_views)
        if view_indices_B_T.shape != (B, T):
            raise ValueError(f"view_indices_B_T has shape {tuple(view_indices_B_T.shape)}, expected {(B, T)}")
        view_indices_B_T = view_indices_B_T.to(device).long().clamp(max=self.config.n_cameras_emb - 1)
        emb_B_T_C = self.view_embeddings(view_indices_B_T)
        return emb_B_T_C.permute(0, 2, 1)[:, :, :, None, None].expand(-1, -1, -1, H, W)

    def _pad_control(self, control_B_C_T_H_W: torch.Tensor) -> torch.Tensor:
        width = self.config.control_latent_channels
        C = control_B_C_T_H_W.shape[1]
        if C > width:
            raise ValueError(f"latent_control_input has {C} channels, more than the {width} the control embedder takes")
        return F.pad(control_B_C_T_H_W, (0, 0, 0, 0, 0, 0, 0, width - C))

    def _project_text(self, crossattn_emb: torch.Tensor) -> torch.Tensor:
        width = crossattn_emb.shape[-1]
        if width == self.config.crossattn_emb_channels:
            return crossattn_emb  # already projected (cached 1024-d embeddings)
        if self.config.use_crossattn_projection and width == self.config.crossattn_proj_in_channels:
            return self.crossattn_proj(crossattn_emb)
        raise ValueError(
            f"crossattn_emb has width {width}; expected {self.config.crossattn_proj_in_channels} (raw) "
            f"or {self.config.crossattn_emb_channels} (projected)"
        )

    @staticmethod
    def _control_scale(scale: Union[float, torch.Tensor], B: int, dtype, device) -> Union[float, torch.Tensor]:
        """A number, a 0-d tensor, a per-sample [B] tensor, or a map broadcastable to [B, T, H, W, 1] tokens."""
        if not torch.is_tensor(scale):
            return float(scale)
        scale = scale.to(device=device, dtype=dtype)
        if scale.ndim == 1 and scale.shape[0] == B:
            return scale.view(B, 1, 1, 1, 1)
        return scale

    def _run_block(self, block: nn.Module, *args, **kwargs) -> torch.Tensor:
        if self.config.activation_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False, **kwargs)
        return block(*args, **kwargs)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x_B_C_T_H_W: torch.Tensor,
        timesteps_B_T: torch.Tensor,
        crossattn_emb: torch.Tensor,
        latent_control_input: Optional[torch.Tensor] = None,
        condition_video_input_mask_B_C_T_H_W: Optional[torch.Tensor] = None,
        padding_mask: Optional[torch.Tensor] = None,
        control_context_scale: Union[float, torch.Tensor] = 1.0,
        view_indices_B_T: Optional[torch.Tensor] = None,
        img_context_emb: Optional[torch.Tensor] = None,
        fps: Optional[torch.Tensor] = None,  # accepted for API parity; the released nets have no fps modulation
    ) -> torch.Tensor:
        """Velocity [B, 16, T, H, W] for the noisy latent `x_B_C_T_H_W`.

        `timesteps_B_T` is the rectified-flow time on the 0..1000 scale, shape [B], [B, 1] or [B, T].
        `latent_control_input=None` runs the base network alone (no hints).
        """
        del fps
        config = self.config
        B, _, T, H, W = x_B_C_T_H_W.shape
        device = x_B_C_T_H_W.device
        num_views = self._num_views(T)

        if condition_video_input_mask_B_C_T_H_W is None:
            condition_video_input_mask_B_C_T_H_W = x_B_C_T_H_W.new_zeros(B, 1, T, H, W)
        if padding_mask is None:
            padding_mask = x_B_C_T_H_W.new_zeros(B, 1, H, W)
        padding_mask_B_1_T_H_W = F.interpolate(padding_mask.float(), size=(H, W), mode="nearest")[:, :, None].expand(
            -1, -1, T, -1, -1
        )
        view_emb = None
        if config.is_multiview:
            view_emb = self._view_embedding(view_indices_B_T, B, T, H, W, num_views, device)

        cp = self.context_parallel
        T_all = T // config.patch_temporal  # token frames of the whole sample
        frame_range = (0, T_all) if cp is None else cp.frame_range(T_all)

        def local(x_B_C_T_H_W: torch.Tensor) -> torch.Tensor:  # this rank's frames under context parallelism
            r = config.patch_temporal
            return x_B_C_T_H_W if cp is None else x_B_C_T_H_W[:, :, frame_range[0] * r : frame_range[1] * r]

        x_in = self._append_masks(x_B_C_T_H_W, condition_video_input_mask_B_C_T_H_W, padding_mask_B_1_T_H_W, view_emb)
        x_B_T_H_W_D = self.x_embedder(local(x_in))
        _, Tp, Hp, Wp, _ = x_B_T_H_W_D.shape

        context = self._project_text(crossattn_emb)
        image_context = None
        if img_context_emb is not None:
            if config.extra_image_context_dim is None:
                raise ValueError("img_context_emb was given but this network has no image-context modules")
            image_context = self.img_context_proj(img_context_emb)

        if timesteps_B_T.ndim == 1:
            timesteps_B_T = timesteps_B_T[:, None]
        if cp is not None and timesteps_B_T.shape[1] > 1:  # one timestep per frame: this rank's frames
            timesteps_B_T = timesteps_B_T[:, frame_range[0] : frame_range[1]]
        sinusoid_B_T_D, adaln_lora_B_T_3D = self.t_embedder(timesteps_B_T.float() * config.timestep_scale)
        emb_B_T_D = self.t_embedding_norm(sinusoid_B_T_D)
        rope_angles_L_D = self.pos_embedder(num_views, T_all // num_views, Hp, Wp, device)
        block_kwargs = dict(
            emb_B_T_D=emb_B_T_D,
            adaln_lora_B_T_3D=adaln_lora_B_T_3D,
            context_B_M_C=context,
            num_views=num_views,
            image_context_B_N_D=image_context,
        )
        if cp is not None:  # the angles and views of this rank's frames
            rope_angles_L_D = rope_angles_L_D[frame_range[0] * Hp * Wp : frame_range[1] * Hp * Wp]
            frames_per_view = T_all // num_views
            block_kwargs.update(
                context_parallel=cp, frame_views=tuple(f // frames_per_view for f in range(*frame_range))
            )
        block_kwargs["rope_cos_sin"] = (rope_angles_L_D.cos(), rope_angles_L_D.sin())

        hints: list[torch.Tensor] = []
        if latent_control_input is not None:
            control_in = self._append_masks(
                self._pad_control(latent_control_input.to(x_B_C_T_H_W.dtype)),
                condition_video_input_mask_B_C_T_H_W,
                padding_mask_B_1_T_H_W,
                view_emb,
            )
            c_B_T_H_W_D = self.control_embedder(local(control_in))
            if config.use_input_hint_block:
                c_B_T_H_W_D = self.input_hint_block(c_B_T_H_W_D)
            for control_block in self.control_blocks:
                c_B_T_H_W_D, hint = self._run_block(control_block, c_B_T_H_W_D, x_B_T_H_W_D, **block_kwargs)
                hints.append(hint)
            scale = self._control_scale(control_context_scale, B, x_B_T_H_W_D.dtype, device)

        for block_idx, block in enumerate(self.blocks):
            x_B_T_H_W_D = self._run_block(block, x_B_T_H_W_D, **block_kwargs)
            if hints and block_idx in self.hint_index_of_block:
                x_B_T_H_W_D = x_B_T_H_W_D + hints[self.hint_index_of_block[block_idx]] * scale

        x_B_T_H_W_O = self.final_layer(x_B_T_H_W_D, emb_B_T_D, adaln_lora_B_T_3D)
        velocity_B_C_T_H_W = self.unpatchify(x_B_T_H_W_O)
        return velocity_B_C_T_H_W if cp is None else cp.gather_frames(velocity_B_C_T_H_W, dim=2)

    def unpatchify(self, x_B_T_H_W_O: torch.Tensor) -> torch.Tensor:
        """`B T H W (p1 p2 t C) -> B C (T t) (H p1) (W p2)`: spatial-major, channel-last patch order."""
        p, r = self.config.patch_spatial, self.config.patch_temporal
        B, T, H, W, _ = x_B_T_H_W_O.shape
        x = x_B_T_H_W_O.reshape(B, T, H, W, p, p, r, -1)
        x_B_C_T_r_H_p_W_p = x.permute(0, 7, 1, 6, 2, 4, 3, 5)
        return x_B_C_T_r_H_p_W_p.reshape(B, -1, T * r, H * p, W * p)


def build_network(preset: str, **overrides) -> CosmosTransferNet:
    """Build the network of a preset (see `presets.PRESETS`), with official config names as overrides.

    Build on the meta device (`with torch.device("meta"): ...`) to inspect the 2B presets without memory.
    """
    return CosmosTransferNet(get_config(preset, **overrides))
