"""Wan2.1 video VAE with the Cosmos-Predict2.5 / Transfer2.5 latent normalisation.

The network itself is diffusers' ``AutoencoderKLWan``; this module adds what Cosmos does around it
(upstream ``cosmos_transfer2/_src/predict2/tokenizers/wan2pt1.py``, ``Wan2pt1VAEInterface``):

* input video uint8 ``[0, 255]`` -> ``x / 127.5 - 1`` (done in the VAE dtype, as upstream);
* the encoder returns the posterior mean ``mu`` (no sampling);
* ``latent = (mu - LATENTS_MEAN) * (1 / LATENTS_STD)`` per channel, and the inverse before decoding;
* 16 latent channels, 8x spatial and 4x causal temporal compression: ``t = 1 + (T - 1) / 4``;
* the views of a multiview clip are encoded independently (``encode_views``).

Weights come either from the official ``tokenizer.pth`` of ``nvidia/Cosmos-Predict2.5-2B`` (a raw
state dict of the original Wan ``WanVAE_`` module, converted here to diffusers' parameter names) or
from a diffusers-format folder.

Upstream runs the VAE in bf16 (the module cast to bf16, not autocast); pass ``dtype=torch.bfloat16``
on GPU. On CPU use fp32. Latents are returned in fp32 whatever the compute dtype.

Against the official code (checked during development by running upstream's ``WanVAE_`` classes on a
tiny random config, temporal_window=16, 21 frames): fp32 latents and decodes are bit-identical when
batched alike (about 1e-6 apart when micro-batched differently).
Known differences: diffusers' RMSNorm normalises bf16 inputs in fp32 (upstream in bf16), so bf16
latents differ at bf16 rounding level; diffusers clamps decoded video to [-1, 1], upstream does not;
clips must have T = 1 + 4k frames (upstream's remainder handling is not reproduced).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cosmos_composer.checkpoint.load import CheckpointLoadError, read_state_dict

# The latent geometry lives in its own leaf module; re-exported here, where users of the VAE look for it.
from cosmos_composer.latent_geometry import (
    LATENT_CHANNELS,
    SPATIAL_COMPRESSION,
    TEMPORAL_COMPRESSION,
    latent_num_frames,
    pixel_num_frames,
)

__all__ = [
    "LATENT_CHANNELS",
    "LATENTS_MEAN",
    "LATENTS_STD",
    "SPATIAL_COMPRESSION",
    "TEMPORAL_COMPRESSION",
    "TINY_VAE_CONFIG",
    "WAN21_VAE_CONFIG",
    "WanVAE",
    "diffusers_to_official_key_map",
    "latent_num_frames",
    "official_to_diffusers_key_map",
    "pixel_num_frames",
]


# Per-channel statistics of the Wan2.1 posterior mean. Identical in the official wan2pt1.py
# (``WanVAE.__init__``) and in diffusers' ``AutoencoderKLWan`` defaults
# (``latents_mean`` / ``latents_std``); tests/test_encoders.py checks the last equality.
LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip

# The released Wan2.1 VAE (upstream ``_video_vae`` cfg: dim=96, z_dim=16, dim_mult=[1, 2, 4, 4],
# num_res_blocks=2, attn_scales=[], temperal_downsample=[False, True, True]), in diffusers' names.
WAN21_VAE_CONFIG: dict[str, Any] = {
    "base_dim": 96,
    "z_dim": LATENT_CHANNELS,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
    "latents_mean": list(LATENTS_MEAN),
    "latents_std": list(LATENTS_STD),
}

# Same structure (3 downsampling stages, the same temporal pattern, 16 latent channels), 12x narrower.
TINY_VAE_CONFIG: dict[str, Any] = {**WAN21_VAE_CONFIG, "base_dim": 8}


# ---------------------------------------------------------------------------------------------
# Official (original Wan ``WanVAE_``) <-> diffusers ``AutoencoderKLWan`` parameter names
# ---------------------------------------------------------------------------------------------
#
# Official layout (upstream wan2pt1.py):
#   conv1 / conv2                                  1x1 convs before / after the latent
#   {encoder,decoder}.conv1                        input conv
#   encoder.downsamples.{k}                        flat Sequential: per stage num_res_blocks
#                                                  ResidualBlocks (+AttentionBlock), then a Resample
#   decoder.upsamples.{k}                          flat Sequential: per stage num_res_blocks + 1
#                                                  ResidualBlocks, then a Resample (not after the last)
#   {encoder,decoder}.middle.{0,1,2}               ResidualBlock, AttentionBlock, ResidualBlock
#   {encoder,decoder}.head.{0,2}                   RMS_norm, (SiLU), CausalConv3d
#   ResidualBlock: residual.{0: RMS_norm, 1: SiLU, 2: conv, 3: RMS_norm, 4: SiLU, 5: Dropout, 6: conv},
#                  shortcut (1x1 conv when in_dim != out_dim)
#   Resample: resample.1 (Conv2d), time_conv (3-D resamples only)
#   AttentionBlock: norm, to_qkv, proj
#
# diffusers names the same modules quant_conv / post_quant_conv, conv_in, down_blocks.{k} (same flat
# order as the official encoder), up_blocks.{stage}.resnets.{j} / up_blocks.{stage}.upsamplers.0,
# mid_block.resnets.{0,1} / mid_block.attentions.0, norm_out / conv_out; inside a residual block
# norm1, conv1, norm2, conv2, conv_shortcut. Shapes are identical, so conversion is a pure rename.

_RESIDUAL_LEAF_RENAMES = {
    "residual.0.": "norm1.",
    "residual.2.": "conv1.",
    "residual.3.": "norm2.",
    "residual.6.": "conv2.",
    "shortcut.": "conv_shortcut.",
}


def _module_prefix_map(config: Mapping[str, Any]) -> dict[str, tuple[str, bool]]:
    """Official module prefix -> (diffusers module prefix, is_residual_block) for a Wan2.1 config."""
    dim_mult = list(config["dim_mult"])
    num_res_blocks = int(config["num_res_blocks"])
    attn_scales = list(config.get("attn_scales", []))
    if config.get("is_residual", False) or int(config.get("z_dim", LATENT_CHANNELS)) != LATENT_CHANNELS:
        raise ValueError(
            "cosmos_composer/encoders/vae.py: only the Wan2.1 VAE (16 latent channels, is_residual=False) is "
            f"supported, got z_dim={config.get('z_dim')} is_residual={config.get('is_residual')}. "
            "Cosmos-Transfer2.5 uses the Wan2.1 VAE (nvidia/Cosmos-Predict2.5-2B tokenizer.pth)."
        )
    if attn_scales:
        raise ValueError(
            "cosmos_composer/encoders/vae.py: attn_scales must be [] (diffusers' Wan decoder has no attention "
            f"in its up blocks); got {attn_scales}."
        )
    num_stages = len(dim_mult)
    prefix_map: dict[str, tuple[str, bool]] = {
        "conv1.": ("quant_conv.", False),
        "conv2.": ("post_quant_conv.", False),
    }
    for part in ("encoder", "decoder"):
        prefix_map[f"{part}.conv1."] = (f"{part}.conv_in.", False)
        prefix_map[f"{part}.middle.0."] = (f"{part}.mid_block.resnets.0.", True)
        prefix_map[f"{part}.middle.1."] = (f"{part}.mid_block.attentions.0.", False)
        prefix_map[f"{part}.middle.2."] = (f"{part}.mid_block.resnets.1.", True)
        prefix_map[f"{part}.head.0."] = (f"{part}.norm_out.", False)
        prefix_map[f"{part}.head.2."] = (f"{part}.conv_out.", False)

    # Encoder: the same flat list on both sides, only residual-block internals are renamed.
    flat_index = 0
    for stage in range(num_stages):
        for _ in range(num_res_blocks):
            prefix_map[f"encoder.downsamples.{flat_index}."] = (f"encoder.down_blocks.{flat_index}.", True)
            flat_index += 1
        if stage != num_stages - 1:
            prefix_map[f"encoder.downsamples.{flat_index}."] = (f"encoder.down_blocks.{flat_index}.", False)
            flat_index += 1

    # Decoder: the official flat list is grouped into up_blocks by stage in diffusers.
    flat_index = 0
    for stage in range(num_stages):
        for resnet_index in range(num_res_blocks + 1):
            prefix_map[f"decoder.upsamples.{flat_index}."] = (
                f"decoder.up_blocks.{stage}.resnets.{resnet_index}.",
                True,
            )
            flat_index += 1
        if stage != num_stages - 1:
            prefix_map[f"decoder.upsamples.{flat_index}."] = (
                f"decoder.up_blocks.{stage}.upsamplers.0.",
                False,
            )
            flat_index += 1
    return prefix_map


_PREFIX_RE = re.compile(
    r"^(conv[12]\.|(?:encoder|decoder)\.(?:conv1|head\.\d+|middle\.\d+|downsamples\.\d+|upsamples\.\d+)\.)"
)


def official_to_diffusers_key_map(
    official_keys: list[str] | tuple[str, ...], config: Mapping[str, Any] = WAN21_VAE_CONFIG
) -> tuple[dict[str, str], list[str]]:
    """Map official ``tokenizer.pth`` keys to ``AutoencoderKLWan`` keys.

    Returns ``(mapping, unmapped)``: ``mapping[official_key] = diffusers_key`` for every key that has a
    counterpart, ``unmapped`` lists the keys that do not belong to a Wan2.1 VAE of this config.
    """
    prefix_map = _module_prefix_map(config)
    mapping: dict[str, str] = {}
    unmapped: list[str] = []
    for key in official_keys:
        match = _PREFIX_RE.match(key)
        if match is None or match.group(1) not in prefix_map:
            unmapped.append(key)
            continue
        official_prefix = match.group(1)
        diffusers_prefix, is_residual_block = prefix_map[official_prefix]
        leaf = key[len(official_prefix) :]
        if is_residual_block:
            for old, new in _RESIDUAL_LEAF_RENAMES.items():
                if leaf.startswith(old):
                    leaf = new + leaf[len(old) :]
                    break
            else:
                unmapped.append(key)
                continue
        mapping[key] = diffusers_prefix + leaf
    return mapping, unmapped


def diffusers_to_official_key_map(
    diffusers_keys: list[str] | tuple[str, ...], config: Mapping[str, Any] = WAN21_VAE_CONFIG
) -> dict[str, str]:
    """The inverse of :func:`official_to_diffusers_key_map`: ``mapping[diffusers_key] = official_key``.

    Used to write official-format files (tests synthesise a tiny ``tokenizer.pth`` with it).
    """
    inverse_prefix = {new: (old, is_res) for old, (new, is_res) in _module_prefix_map(config).items()}
    inverse_leaf = {new: old for old, new in _RESIDUAL_LEAF_RENAMES.items()}
    mapping: dict[str, str] = {}
    for key in diffusers_keys:
        # Longest matching diffusers prefix (e.g. "decoder.up_blocks.0.resnets.1." before "decoder.").
        candidates = [p for p in inverse_prefix if key.startswith(p)]
        if not candidates:
            raise KeyError(f"cosmos_composer/encoders/vae.py: no official name for diffusers key {key!r}")
        diffusers_prefix = max(candidates, key=len)
        official_prefix, is_residual_block = inverse_prefix[diffusers_prefix]
        leaf = key[len(diffusers_prefix) :]
        if is_residual_block:
            for new, old in inverse_leaf.items():
                if leaf.startswith(new):
                    leaf = old + leaf[len(new) :]
                    break
        mapping[key] = official_prefix + leaf
    return mapping


# ---------------------------------------------------------------------------------------------
# Loading helpers
# ---------------------------------------------------------------------------------------------


def _load_tensor_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The VAE weights file's state dict, read by the checkpoint reader (`checkpoint.load.read_state_dict`):
    ``weights_only=True`` (no pickled code runs), memory-mapped, and checked against a ``checksums.json`` beside
    it when there is one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"cosmos_composer/encoders/vae.py: VAE weights file {str(path)!r} does not exist. Download "
            "tokenizer.pth from the Hugging Face repo nvidia/Cosmos-Predict2.5-2B (the file upstream's "
            "packages/cosmos-oss/cosmos_oss/checkpoints.py names for the Wan2.1 VAE)."
        )
    try:
        return read_state_dict(path)
    except CheckpointLoadError as error:
        raise ValueError(
            f"cosmos_composer/encoders/vae.py: refusing to load {str(path)!r}: {error}. The official tokenizer.pth "
            "is a raw state dict {name: tensor} of the Wan WanVAE_ module (keys like 'encoder.conv1.weight', "
            "'conv1.weight', 'decoder.head.2.bias'); re-save yours that way from a trusted source."
        ) from None


def _format_keys(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _load_into(
    vae: nn.Module,
    converted: dict[str, torch.Tensor],
    source: str,
    names: dict[str, str],
    unmapped: Sequence[str] = (),
) -> None:
    """Strictly load ``converted`` (diffusers names) into ``vae`` (possibly on the meta device).

    ``names`` maps diffusers names back to the names in the file, for error messages; ``unmapped``
    are file keys that have no diffusers counterpart (reported as unexpected).
    """
    expected = vae.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected)) + sorted(unmapped)
    if missing or unexpected:
        lines = [f"cosmos_composer/encoders/vae.py: {source} does not match the Wan2.1 VAE structure."]
        if missing:
            lines.append(f"missing keys ({len(missing)}): {_format_keys([names.get(k, k) for k in missing])}")
        if unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): {_format_keys([names.get(k, k) for k in unexpected])}")
        lines.append(
            "Expected a raw state dict of the Wan WanVAE_ module (keys 'encoder.*', 'decoder.*', 'conv1.*', "
            "'conv2.*'); if it was written for another Wan2.1 width pass WanVAE.from_official_pth(path, config=...)."
        )
        raise ValueError("\n".join(lines))
    for key, tensor in converted.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"cosmos_composer/encoders/vae.py: shape mismatch in {source} for key {names.get(key, key)!r} "
                f"(diffusers name {key!r}): file has {tuple(tensor.shape)}, the model expects "
                f"{tuple(expected[key].shape)}. The file was written for a different VAE configuration; "
                "pass the matching config (WAN21_VAE_CONFIG for the released tokenizer.pth)."
            )
    vae.load_state_dict(converted, strict=True, assign=True)


def _check_latent_stats(config: Mapping[str, Any], source: str) -> None:
    for name, ours in (("latents_mean", LATENTS_MEAN), ("latents_std", LATENTS_STD)):
        theirs = config.get(name)
        if theirs is None:
            continue
        if len(theirs) != len(ours) or any(abs(a - b) > 1e-6 for a, b in zip(theirs, ours)):
            raise ValueError(
                f"cosmos_composer/encoders/vae.py: {source} has {name}={list(theirs)}, which differs from the "
                f"Wan2.1 statistics Cosmos uses ({list(ours)}). This is not the Wan2.1 VAE of Cosmos-Transfer2.5."
            )


# ---------------------------------------------------------------------------------------------
# The wrapper
# ---------------------------------------------------------------------------------------------


class WanVAE(nn.Module):
    """Frozen Wan2.1 VAE with the Cosmos latent normalisation.

    Args:
        vae: a diffusers ``AutoencoderKLWan`` with the Wan2.1 structure (16 latent channels).
        dtype: compute dtype; upstream uses bf16 on GPU. Use fp32 on CPU.
        micro_batch_size: encode/decode at most this many clips (views) at once; None: the whole batch
            at once, as upstream does without context parallelism. Results are identical; the default 1
            saves memory at no cost in speed: on one H200 in bf16, 7 views of 29 x 704 x 1280 took
            6.6 s at a 47 GiB peak all at once and 0.92 s / 7.7 GiB per view.
    """

    def __init__(self, vae: nn.Module, dtype: torch.dtype = torch.float32, micro_batch_size: int | None = 1):
        super().__init__()
        config = getattr(vae, "config", {})
        if int(config.get("z_dim", LATENT_CHANNELS)) != LATENT_CHANNELS or config.get("is_residual", False):
            raise ValueError(
                "cosmos_composer/encoders/vae.py: WanVAE needs a Wan2.1 AutoencoderKLWan (z_dim=16, "
                f"is_residual=False); got z_dim={config.get('z_dim')}, is_residual={config.get('is_residual')}."
            )
        self.vae = vae.eval().requires_grad_(False)
        self.micro_batch_size = micro_batch_size
        # Non-persistent: they are constants, not weights, and must not appear in checkpoints.
        self.register_buffer("latents_mean", torch.tensor(LATENTS_MEAN).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("latents_std", torch.tensor(LATENTS_STD).view(1, -1, 1, 1, 1), persistent=False)
        self.to(dtype)

    # -- construction ------------------------------------------------------------------------

    @staticmethod
    def _build_autoencoder(config: Mapping[str, Any], device: torch.device | str | None = None) -> nn.Module:
        from diffusers import AutoencoderKLWan

        with torch.device(device) if device is not None else contextlib.nullcontext():
            return AutoencoderKLWan(**dict(config))

    @classmethod
    def from_official_pth(
        cls,
        path: str | os.PathLike,
        config: Mapping[str, Any] = WAN21_VAE_CONFIG,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        micro_batch_size: int | None = 1,
    ) -> WanVAE:
        """Load the official Cosmos-Predict2.5 ``tokenizer.pth`` (= ``Wan2.1_VAE.pth``).

        The file is a raw state dict of the original Wan ``WanVAE_`` module (upstream loads it with
        ``model.load_state_dict(ckpt, assign=True)``). Keys are renamed to diffusers' names and loaded
        strictly: unknown or missing keys and shape mismatches raise ``ValueError`` naming the key.
        """
        official_state = _load_tensor_file(path)
        mapping, unmapped = official_to_diffusers_key_map(list(official_state), config)
        converted = {mapping[k]: v for k, v in official_state.items() if k in mapping}
        vae = cls._build_autoencoder(config, device="meta")
        names = diffusers_to_official_key_map(list(vae.state_dict()), config)  # for messages in file names
        _load_into(vae, converted, repr(str(path)), names, unmapped=unmapped)
        return cls(vae.to(device), dtype=dtype, micro_batch_size=micro_batch_size)

    @classmethod
    def from_diffusers(
        cls,
        path_or_repo: str | os.PathLike,
        subfolder: str | None = None,
        revision: str | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        micro_batch_size: int | None = 1,
        **from_pretrained_kwargs: Any,
    ) -> WanVAE:
        """Load diffusers-format weights: a VAE folder, a pipeline folder with ``vae/``, or an HF repo id.

        For a local pipeline folder the ``vae`` subfolder is used when present. Hub repo ids are
        resolved through huggingface_hub's cache (``HF_HOME``; ``HF_HUB_OFFLINE=1`` is honoured).
        """
        from diffusers import AutoencoderKLWan

        local = Path(path_or_repo)
        if subfolder is None and local.is_dir() and not (local / "config.json").is_file():
            if (local / "vae" / "config.json").is_file():
                subfolder = "vae"
            else:
                raise FileNotFoundError(
                    f"cosmos_composer/encoders/vae.py: {str(local)!r} has neither config.json nor vae/config.json; "
                    "point from_diffusers at a diffusers AutoencoderKLWan folder or a pipeline folder."
                )
        kwargs = dict(from_pretrained_kwargs)
        if revision is not None:
            kwargs["revision"] = revision
        if subfolder is None and not local.exists():
            # A Hub repo id: try the pipeline layout first, then a bare VAE repo.
            try:
                vae = AutoencoderKLWan.from_pretrained(str(path_or_repo), subfolder="vae", **kwargs)
            except OSError:
                vae = AutoencoderKLWan.from_pretrained(str(path_or_repo), **kwargs)
        else:
            vae = AutoencoderKLWan.from_pretrained(str(path_or_repo), subfolder=subfolder, **kwargs)
        _check_latent_stats(vae.config, repr(str(path_or_repo)))
        return cls(vae.to(device), dtype=dtype, micro_batch_size=micro_batch_size)

    @classmethod
    def tiny(cls, seed: int = 0, dtype: torch.dtype = torch.float32) -> WanVAE:
        """A tiny random Wan2.1-structured VAE (base_dim 8, 16 latent channels) for tests.

        Every parameter is perturbed with seeded noise so no block is an identity (diffusers
        zero-initialises nothing here, but the official code zero-initialises attention ``proj``).
        The global RNG state is left untouched.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = cls._build_autoencoder(TINY_VAE_CONFIG)
            with torch.no_grad():
                for parameter in vae.parameters():
                    parameter.add_(0.05 * torch.randn_like(parameter))
        return cls(vae, dtype=dtype)

    # -- properties --------------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    # -- encode / decode ---------------------------------------------------------------------

    def _to_model_input(self, video_B_3_T_H_W: torch.Tensor) -> torch.Tensor:
        if video_B_3_T_H_W.ndim != 5 or video_B_3_T_H_W.shape[1] != 3:
            raise ValueError(
                "cosmos_composer/encoders/vae.py: WanVAE.encode expects video [B, 3, T, H, W], got shape "
                f"{tuple(video_B_3_T_H_W.shape)}."
            )
        _, _, num_frames, height, width = video_B_3_T_H_W.shape
        if (num_frames - 1) % TEMPORAL_COMPRESSION != 0:
            raise ValueError(
                f"cosmos_composer/encoders/vae.py: T={num_frames} frames; the Wan VAE needs T = 1 + 4k "
                f"(e.g. {pixel_num_frames(latent_num_frames(num_frames))} or "
                f"{pixel_num_frames(latent_num_frames(num_frames) + 1)}). Trim or pad the clip."
            )
        if height % SPATIAL_COMPRESSION or width % SPATIAL_COMPRESSION:
            raise ValueError(
                f"cosmos_composer/encoders/vae.py: H x W = {height} x {width}; both must be multiples of "
                f"{SPATIAL_COMPRESSION}. Resize the video first."
            )
        video = video_B_3_T_H_W.to(self.device)
        if video.dtype == torch.uint8:
            # As upstream: cast to the compute dtype first, then scale to [-1, 1].
            return video.to(self.dtype) / 127.5 - 1.0
        if not video.is_floating_point():
            raise TypeError(
                f"cosmos_composer/encoders/vae.py: video dtype {video.dtype}; pass uint8 [0, 255] or float in [-1, 1]."
            )
        if video.numel() and video.abs().max() > 1.0 + 1e-3:
            raise ValueError(
                "cosmos_composer/encoders/vae.py: float video must lie in [-1, 1] (got max |x| = "
                f"{video.abs().max().item():.3g}); pass uint8 frames or x / 127.5 - 1."
            )
        return video.to(self.dtype)

    def _micro_batches(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        if self.micro_batch_size is None or tensor.shape[0] <= self.micro_batch_size:
            return [tensor]
        return list(tensor.split(self.micro_batch_size))

    @torch.no_grad()
    def encode(self, video_B_3_T_H_W: torch.Tensor) -> torch.Tensor:
        """uint8 ``[0, 255]`` or float ``[-1, 1]`` video -> normalised latent ``[B, 16, t, h, w]`` (fp32)."""
        video = self._to_model_input(video_B_3_T_H_W)
        mu_chunks = [self.vae.encode(chunk).latent_dist.mean for chunk in self._micro_batches(video)]
        mu_B_16_t_h_w = torch.cat(mu_chunks)
        # Upstream: (mu - mean) * (1 / std), in the compute dtype.
        inv_std = 1.0 / self.latents_std
        latent_B_16_t_h_w = (mu_B_16_t_h_w - self.latents_mean) * inv_std
        return latent_B_16_t_h_w.float()

    @torch.no_grad()
    def decode(self, latent_B_16_t_h_w: torch.Tensor) -> torch.Tensor:
        """Normalised latent ``[B, 16, t, h, w]`` -> video ``[B, 3, 1 + 4(t-1), 8h, 8w]`` float in [-1, 1] (fp32).

        diffusers clamps the decoder output to [-1, 1]; upstream leaves clamping to the caller.
        """
        if latent_B_16_t_h_w.ndim != 5 or latent_B_16_t_h_w.shape[1] != LATENT_CHANNELS:
            raise ValueError(
                "cosmos_composer/encoders/vae.py: WanVAE.decode expects latents [B, 16, t, h, w], got shape "
                f"{tuple(latent_B_16_t_h_w.shape)}."
            )
        latent = latent_B_16_t_h_w.to(device=self.device, dtype=self.dtype)
        # Upstream: z / (1 / std) + mean, in the compute dtype.
        inv_std = 1.0 / self.latents_std
        mu = latent / inv_std + self.latents_mean
        video_chunks = [self.vae.decode(chunk).sample for chunk in self._micro_batches(mu)]
        return torch.cat(video_chunks).float()

    @torch.no_grad()
    def encode_views(self, video_B_3_VT_H_W: torch.Tensor, num_views: int) -> torch.Tensor:
        """Encode each of ``num_views`` views (concatenated along time) independently.

        ``[B, 3, V*T, H, W]`` -> ``[B, 16, V*t, h, w]`` with ``t = 1 + (T - 1) / 4``, views kept in order.
        """
        return _merge_views(self.encode(_split_views(video_B_3_VT_H_W, num_views, "frames")), num_views)

    @torch.no_grad()
    def decode_views(self, latent_B_16_Vt_h_w: torch.Tensor, num_views: int) -> torch.Tensor:
        """Inverse of :meth:`encode_views`: ``[B, 16, V*t, h, w]`` -> ``[B, 3, V*T, H, W]`` in [-1, 1]."""
        return _merge_views(self.decode(_split_views(latent_B_16_Vt_h_w, num_views, "latent frames")), num_views)


def _split_views(x_B_C_VT_H_W: torch.Tensor, num_views: int, what: str) -> torch.Tensor:
    """``[B, C, V*T, H, W]`` -> ``[B*V, C, T, H, W]``: views moved into the batch."""
    batch, channels, total, height, width = x_B_C_VT_H_W.shape
    if num_views < 1 or total % num_views:
        raise ValueError(f"cosmos_composer/encoders/vae.py: {total} {what} cannot be split into {num_views} views.")
    x_B_V_C_T_H_W = x_B_C_VT_H_W.reshape(batch, channels, num_views, total // num_views, height, width).transpose(1, 2)
    return x_B_V_C_T_H_W.reshape(batch * num_views, channels, total // num_views, height, width)


def _merge_views(x_BV_C_T_H_W: torch.Tensor, num_views: int) -> torch.Tensor:
    """Inverse of :func:`_split_views`: ``[B*V, C, T, H, W]`` -> ``[B, C, V*T, H, W]``."""
    batch_views, channels, frames, height, width = x_BV_C_T_H_W.shape
    batch = batch_views // num_views
    x_B_C_V_T_H_W = x_BV_C_T_H_W.reshape(batch, num_views, channels, frames, height, width).transpose(1, 2)
    return x_B_C_V_T_H_W.reshape(batch, channels, num_views * frames, height, width)
