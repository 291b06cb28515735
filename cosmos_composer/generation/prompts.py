"""Text conditioning for generation: per-view prompts, negative prompts and cached embeddings -> text contexts.

A multiview network embeds one prompt per view and attends to their concatenation ``[1, V*512, D]``. The
unconditional branch of classifier-free guidance gets the negative prompt (the official inference's default)
or, with no negative prompt, the zero text of training's text dropout (``sampler.unconditional_context``).
"""

from __future__ import annotations

import logging
import os
from typing import Mapping, Optional, Sequence

import torch
from torch import nn

from ..checkpoint.hf import resolve
from ..data.cameras import caption_camera, caption_prefix
from ..diffusion import sampler
from ..encoders.text import EMPTY_PROMPT, NUM_TEXT_TOKENS
from . import GenerationError

log = logging.getLogger(__name__)

# Negative prompts of the official inference. Single view: `cosmos_transfer2/config.py`
# (DEFAULT_NEGATIVE_PROMPT, the default of the single-view InferenceArguments). Multiview:
# `_DEFAULT_NEGATIVE_PROMPT` of `predict2_multiview/models/multiview_vid2vid_model_rectified_flow.py`,
# which the multiview inference uses (`use_negative_prompt=True`).
NEGATIVE_PROMPT_SINGLEVIEW = (
    "The video captures a game playing, with bad crappy graphics and cartoonish frames. It represents a "
    "recording of old outdated games. The lighting looks very fake. The textures are very raw and basic. "
    "The geometries are very primitive. The images are very pixelated and of poor CG quality. There are "
    "many subtitles in the footage. Overall, the video is unrealistic at all."
)
NEGATIVE_PROMPT_MULTIVIEW = (
    "The video captures a series of frames showing ugly scenes, static with no motion, motion blur, "
    "over-saturation, shaky footage, low resolution, grainy texture, pixelated images, poorly lit areas, "
    "underexposed and overexposed scenes, poor color balance, washed out colors, choppy sequences, jerky "
    "movements, low frame rate, artifacting, color banding, unnatural transitions, outdated special effects, "
    "fake elements, unconvincing visuals, poorly edited content, jump cuts, visual noise, and flickering. "
    "Overall, the video is of poor quality."
)

# How multiview prompts are embedded (see `view_prompts`).
CAPTION_MODES = ("prefixed", "front-only")


def view_prompts(
    prompt: str,
    cameras: Optional[Sequence[str]],
    caption_mode: str = "prefixed",
    camera_origins: Optional[Mapping[str, str]] = None,
) -> list[str]:
    """The per-view prompts to embed (one for single view, ``cameras=None``).

    ``prefixed`` (default) is what training sees: every view gets ``"<camera prefix> <caption>"`` with the
    caption on the front-wide view only (so the others read ``"<prefix> "``), as the official multiview
    loader with ``add_view_prefix_to_caption=True`` builds them. ``front-only`` is what the official
    multiview inference script embeds: the bare prompt on the front-wide view and the empty prompt " " on
    the others. ``camera_origins``: the network's {camera: official camera it starts from}
    (``NetworkConfig.camera_origins``), whose prefix and front-wide role it takes.
    """
    if not cameras:
        return [prompt]
    if caption_mode not in CAPTION_MODES:
        raise GenerationError(f"caption mode must be one of {CAPTION_MODES}, got {caption_mode!r}")
    front = caption_camera(cameras, camera_origins)
    if caption_mode == "front-only":
        return [prompt if camera == front else EMPTY_PROMPT for camera in cameras]
    return [f"{caption_prefix(camera, camera_origins)} {prompt if camera == front else ''}" for camera in cameras]


def negative_view_prompts(
    negative_prompt: str,
    cameras: Optional[Sequence[str]],
    caption_mode: str = "prefixed",
    camera_origins: Optional[Mapping[str, str]] = None,
) -> list[str]:
    """Per-view negative prompts as the official multiview model builds them.

    With per-view captions (``prefixed``) every view gets the negative prompt; with a single caption
    (``front-only``) the caption view gets it and the others the empty prompt.
    """
    if not cameras:
        return [negative_prompt]
    if caption_mode == "front-only":
        front = caption_camera(cameras, camera_origins)
        return [negative_prompt if camera == front else EMPTY_PROMPT for camera in cameras]
    return [negative_prompt] * len(cameras)


@torch.no_grad()
def embed_view_prompts(text_embedder, prompts: Sequence[str]) -> torch.Tensor:
    """Embed one prompt per view and concatenate them: ``[1, V*512, D]`` (each distinct prompt once)."""
    unique = list(dict.fromkeys(prompts))
    embeddings = dict(zip(unique, text_embedder.embed(unique).float()))
    per_view_V_L_D = torch.stack([embeddings[prompt] for prompt in prompts])
    return per_view_V_L_D.reshape(1, -1, per_view_V_L_D.shape[-1])


def prompt_context(
    text_embedder,
    prompt: str,
    cameras: Optional[Sequence[str]],
    caption_mode: str = "prefixed",
    camera_origins: Optional[Mapping[str, str]] = None,
) -> torch.Tensor:
    """The text context of ``prompt``: ``[1, V*512, D]`` (``camera_origins``: see ``view_prompts``)."""
    return embed_view_prompts(text_embedder, view_prompts(prompt, cameras, caption_mode, camera_origins))


def negative_context(
    net: nn.Module,
    text_embedder,
    context: torch.Tensor,
    negative_prompt: Optional[str],
    cameras: Optional[Sequence[str]],
    caption_mode: str = "prefixed",
    camera_origins: Optional[Mapping[str, str]] = None,
) -> torch.Tensor:
    """The text context of the unconditional branch: the embedded ``negative_prompt``, or for None training's
    dropped text (zeros, through the network's projection when ``context`` is already projected)."""
    if negative_prompt is None:
        return sampler.unconditional_context(net, context)
    return embed_view_prompts(
        text_embedder, negative_view_prompts(negative_prompt, cameras, caption_mode, camera_origins)
    )


def load_text_embedding(path: str | os.PathLike, num_views: int, what: str = "--text-embedding") -> torch.Tensor:
    """A cached text embedding file -> ``[1, V*L, D]`` (``what``: the option that named it, for errors).

    Accepted: a tensor ``[L, D]`` or ``[1, L, D]`` (single view; for multiview it is used for every view),
    ``[V, L, D]`` (one per view, in camera order), or for multiview ``[V*512, D]`` (the layout of the
    ``text_embedding`` column of precomputed shards). A dict holding one tensor is accepted too.
    """
    try:
        loaded = torch.load(resolve(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for unreadable files
        raise GenerationError(f"{what} {path} cannot be read as a torch tensor file: {error}") from None
    if isinstance(loaded, dict):
        tensors = [v for v in loaded.values() if isinstance(v, torch.Tensor)]
        if len(tensors) != 1:
            raise GenerationError(f"{what} {path} holds a dict with {len(tensors)} tensors; save one tensor")
        loaded = tensors[0]
    if not isinstance(loaded, torch.Tensor) or loaded.ndim not in (2, 3):
        raise GenerationError(f"{what} {path} must hold a tensor [L, D], [1, L, D] or [V, L, D]")
    embedding = loaded.float()
    if embedding.ndim == 2:
        if num_views > 1 and embedding.shape[0] == num_views * NUM_TEXT_TOKENS:
            return embedding[None]
        embedding = embedding[None]
    if embedding.shape[0] == num_views and num_views > 1:
        return embedding.reshape(1, -1, embedding.shape[-1])
    if embedding.shape[0] != 1:
        raise GenerationError(
            f"{what} {path} has shape {tuple(loaded.shape)}; expected [L, D], [1, L, D] or "
            f"[{num_views}, L, D] (one per view)"
        )
    if num_views > 1:
        log.warning("%s %s holds one embedding: using it for all %d views", what, path, num_views)
        embedding = embedding.repeat(1, num_views, 1)
    return embedding
