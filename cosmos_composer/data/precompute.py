"""Cache what the frozen encoders compute into the MDS shards (``convert_to_mds.py --precompute``).

* ``latents``: the normalised Wan2.1 VAE latents of the video and of the control, each
  ``[16, V*t, h, w]`` float16, encoded view by view from the row's served frames ``0..num_frames-1``
  (the source frames :func:`cosmos_composer.data.clip.source_frame_indices` picks: after ``--fps``, within
  the row's window) resized to ``(height, width)``, exactly the pixels the dataset would serve.
* ``text``: the Cosmos-Reason1 embedding of each view's caption (with the camera prefix for multiview,
  see :func:`cosmos_composer.data.cameras.view_captions`; a camera mapped to an official one gets that
  camera's prefix, as the dataset gives it), ``[V*512, D]`` float16. With a
  ``crossattn_proj`` module (the frozen ``net.crossattn_proj`` of the checkpoint you will train,
  ``checkpoint.network_weights.load_crossattn_proj``) the 1024-d projection is stored instead of the raw
  100352-d embedding, together with :func:`crossattn_proj_fingerprint` of that module, so training can
  refuse a network whose projection differs (:func:`check_crossattn_proj_fingerprint`). Raw embeddings
  are stored only when asked for (``raw_text=True``): a full fine-tune (``model.train_base=true``) needs them.

Sizes per sample (:meth:`Precomputer.cached_bytes_per_sample`): the video's and the control's latents are
16 x (7 views x 8) x 90 x 160 x 2 bytes = 24.6 MiB each at 720p, 29 frames; projected text is 7 x 512 x 1024
x 2 = 7.0 MiB; raw text is 7 x 512 x 100352 x 2 = 686 MiB (6.5 TiB per 10k samples), so store raw embeddings
only for small experiments.

The encoders are duck-typed: ``vae.encode(video_B_3_T_H_W uint8) -> latent [B, 16, t, h, w]``
(``cosmos_composer.encoders.vae.WanVAE``) and ``text_embedder.embed(list[str]) -> [N, 512, D]``
(``cosmos_composer.encoders.text.Reason1TextEmbedder``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from cosmos_composer.data import mds
from cosmos_composer.data.cameras import view_captions
from cosmos_composer.data.clip import load_clip, row_cameras, source_frame_indices
from cosmos_composer.data.layouts import ON_THE_FLY_CONTROLS
from cosmos_composer.data.output import human_size
from cosmos_composer.fingerprint import fingerprint_tensors
from cosmos_composer.latent_geometry import LATENT_CHANNELS, SPATIAL_COMPRESSION, latent_num_frames
from cosmos_composer.models.dtensor import full_tensor

PRECOMPUTE_CHOICES = ("latents", "text")
TEXT_TOKENS_PER_VIEW = 512
CACHE_DTYPE = np.float16  # of every cached column


def latent_bytes(num_views: int, num_frames: int, height: int, width: int) -> int:
    """Bytes of one cached latent ``[16, V*t, h, w]``: ``t = 1 + (F-1)//4``, ``h, w = H/8, W/8``."""
    t, h, w = latent_num_frames(num_frames), height // SPATIAL_COMPRESSION, width // SPATIAL_COMPRESSION
    return LATENT_CHANNELS * num_views * t * h * w * np.dtype(CACHE_DTYPE).itemsize


def text_bytes(num_views: int, embed_dim: int) -> int:
    """Bytes of one cached text embedding ``[V*512, D]``."""
    return num_views * TEXT_TOKENS_PER_VIEW * embed_dim * np.dtype(CACHE_DTYPE).itemsize


@dataclass(frozen=True)
class CachedBytes:
    """What one sample's cached columns take in the shards."""

    latents: int = 0  # the video's and the control's latents together
    text: int = 0
    text_kind: str = ""  # "projected", "raw", or "" without text

    @property
    def total(self) -> int:
        return self.latents + self.text


def raw_text_refusal(raw_embed_dim: int, num_views: int | None = None) -> str:
    """Why text embeddings are not cached raw unless asked for: their size (per sample of ``num_views`` views,
    or per view when not known) and both fixes."""
    values = f"{TEXT_TOKENS_PER_VIEW} tokens x {raw_embed_dim} values x {np.dtype(CACHE_DTYPE).itemsize} bytes"
    if num_views is None:
        size = f"{human_size(text_bytes(1, raw_embed_dim))} per view of each sample ({values})"
    else:
        per_sample = text_bytes(num_views, raw_embed_dim)
        size = (
            f"{human_size(per_sample)} per sample ({num_views} views x {values}), "
            f"{human_size(per_sample * 10_000)} per 10k samples"
        )
    return (
        f"without a crossattn_proj to project them, the text embeddings would be cached raw: {size}. Fix: give the "
        "Transfer checkpoint you will train (--crossattn-proj FILE or hf:// URI, or --config YAML with its "
        "load_path; Precomputer(crossattn_proj=...)) to cache them projected, or cache them raw on purpose "
        "(--raw-text; Precomputer(raw_text=True)), as a full fine-tune (model.train_base=true) needs"
    )


def projection_widths(crossattn_proj: nn.Module) -> tuple[int, int]:
    """(the width a ``crossattn_proj`` takes, the width it gives): its first Linear's input, its last one's output."""
    linears = [module for module in crossattn_proj.modules() if isinstance(module, nn.Linear)]
    return linears[0].in_features, linears[-1].out_features


def crossattn_proj_fingerprint(crossattn_proj: nn.Module) -> str:
    """Fingerprint of a ``crossattn_proj`` module, stored beside projected text embeddings.

    :func:`cosmos_composer.fingerprint.fingerprint_tensors` (sha256 over names, shapes, dtypes and bytes)
    of the module's parameters cast to float32, with names relative to the module (``0.weight``,
    ``0.bias``). Casting first makes the fingerprint independent of the dtype the weights are held in
    (bf16 -> fp32 is exact), because the released checkpoint is bf16 while a training run may hold the
    frozen projection in fp32 or cast it to bf16. Use :func:`check_crossattn_proj_fingerprint` to compare.
    """
    return fingerprint_tensors(
        (name, full_tensor(parameter.detach()).float()) for name, parameter in crossattn_proj.named_parameters()
    )


def check_crossattn_proj_fingerprint(stored: str | None, network_fingerprint: str, source: str = "the dataset") -> None:
    """Raise ``ValueError`` when cached projected text embeddings were made with other projection weights.

    ``stored``: the fingerprint beside the embeddings; ``network_fingerprint``: :func:`crossattn_proj_fingerprint`
    of the network's ``crossattn_proj`` (computed once by the caller: under FSDP2 it is a collective).
    """
    if stored != network_fingerprint:
        shown = f"fingerprint {stored[:16]}..." if stored else "no fingerprint"
        raise ValueError(
            f"{source} holds text embeddings projected by a crossattn_proj with {shown}, but the network's "
            f"crossattn_proj has fingerprint {network_fingerprint[:16]}... The cached 1024-d embeddings only "
            f"fit the checkpoint they were made with. Fix: convert again with --precompute text and "
            f"--crossattn-proj pointing at the checkpoint you train, or store raw embeddings (no "
            f"--crossattn-proj), or turn off the cached text (dataset.use_cached_text=false)"
        )


@dataclass
class Precomputer:
    """Adds cached columns to rows before they are written.

    Args:
        height, width, num_frames: the training resolution and frames per view the latents are for.
        vae: encoder for ``latents`` (None: no latent columns).
        text_embedder: encoder for ``text`` (None: no text columns).
        crossattn_proj: project text embeddings to 1024-d with this frozen module.
        device: where the encoders run.
        seed: seeds the random edge / blur parameters of on-the-fly controls, per sample.
        camera_origins: {rig camera: the official camera whose caption prefix it gets}
            (``cameras.parse_cameras(--cameras).origins``), so cached and online captions agree.
        raw_text: store raw text embeddings (about 100x the projected size); a text_embedder needs either this
            or a crossattn_proj.
    """

    height: int
    width: int
    num_frames: int
    vae: Any = None
    text_embedder: Any = None
    crossattn_proj: nn.Module | None = None
    device: str | torch.device = "cpu"
    seed: int = 0
    camera_origins: dict[str, str] = field(default_factory=dict)
    raw_text: bool = False

    def __post_init__(self) -> None:
        if self.raw_text and self.crossattn_proj is not None:
            raise ValueError("Precomputer: raw_text=True and a crossattn_proj contradict each other; choose one")
        if self.text_embedder is not None and self.crossattn_proj is None and not self.raw_text:
            raise ValueError(f"Precomputer: {raw_text_refusal(self.text_embedder.embed_dim)}")
        if self.text_embedder is not None and self.crossattn_proj is not None:
            takes, _ = projection_widths(self.crossattn_proj)
            if takes != self.text_embedder.embed_dim:
                raise ValueError(
                    f"Precomputer: the text encoder gives {self.text_embedder.embed_dim}-d embeddings but the "
                    f"crossattn_proj takes {takes}-d ones: they belong to different models. Fix: pass the text "
                    "encoder of the checkpoint (Cosmos-Reason1-7B for the released ones, tiny for the tiny presets)"
                )
        self.fingerprint = crossattn_proj_fingerprint(self.crossattn_proj) if self.crossattn_proj is not None else ""

    @property
    def latents(self) -> bool:
        return self.vae is not None

    @property
    def text(self) -> bool:
        return self.text_embedder is not None

    @property
    def text_embed_dim(self) -> int:
        """Width of the cached text embedding: the projection's output, or the raw embedding's."""
        if self.crossattn_proj is not None:
            return projection_widths(self.crossattn_proj)[1]
        return self.text_embedder.embed_dim

    @property
    def text_kind(self) -> str:
        """How the text embeddings are cached: "projected" or "raw"."""
        return "projected" if self.crossattn_proj is not None else "raw"

    def cached_bytes_per_sample(self, num_views: int) -> CachedBytes:
        """What the cached columns of one sample of ``num_views`` views take in the shards."""
        # Two latents: the video's and the control's.
        latents = 2 * latent_bytes(num_views, self.num_frames, self.height, self.width) if self.latents else 0
        if not self.text:
            return CachedBytes(latents=latents)
        return CachedBytes(latents, text_bytes(num_views, self.text_embed_dim), self.text_kind)

    @torch.no_grad()
    def encode_latents(self, video_3_VF_H_W: torch.Tensor, num_views: int) -> np.ndarray:
        """uint8 ``[3, V*F, H, W]`` -> float16 ``[16, V*t, h, w]`` (each view encoded on its own)."""
        _, VF, H, W = video_3_VF_H_W.shape
        F = VF // num_views
        video_V_3_F_H_W = video_3_VF_H_W.reshape(3, num_views, F, H, W).permute(1, 0, 2, 3, 4)
        latent_V_16_t_h_w = self.vae.encode(video_V_3_F_H_W.to(self.device))
        V, C, t, h, w = latent_V_16_t_h_w.shape
        latent_16_Vt_h_w = latent_V_16_t_h_w.permute(1, 0, 2, 3, 4).reshape(C, V * t, h, w)
        return latent_16_Vt_h_w.float().cpu().numpy().astype(CACHE_DTYPE)

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> np.ndarray:
        """V captions -> float16 ``[V*512, D]`` (projected when ``crossattn_proj`` is set)."""
        embedding_V_L_D = self.text_embedder.embed(captions)
        if self.crossattn_proj is not None:
            parameter = next(self.crossattn_proj.parameters())
            embedding_V_L_D = self.crossattn_proj(embedding_V_L_D.to(parameter.device, parameter.dtype))
        V, L, D = embedding_V_L_D.shape
        if L != TEXT_TOKENS_PER_VIEW:
            raise ValueError(f"text embedder returned {L} tokens per caption; Cosmos uses {TEXT_TOKENS_PER_VIEW}")
        return embedding_V_L_D.reshape(V * L, D).float().cpu().numpy().astype(CACHE_DTYPE)

    def __call__(self, row: dict) -> dict:
        """The cached columns for ``row`` (a dict with the base columns of :mod:`cosmos_composer.data.mds`)."""
        cameras = row_cameras(row)
        extra: dict = {}
        if self.latents:
            if row[mds.NUM_FRAMES] < self.num_frames:
                raise ValueError(
                    f"sample '{row[mds.SAMPLE_NAME]}' has {row[mds.NUM_FRAMES]} frames, fewer than the "
                    f"{self.num_frames} to encode. Fix: lower --num-frames or raise --min-frames to skip short clips"
                )
            control_key = row[mds.CONTROL_KEY]
            rng = None
            if control_key in ON_THE_FLY_CONTROLS:
                rng = np.random.default_rng([self.seed, zlib.crc32(row[mds.SAMPLE_NAME].encode("utf-8"))])
            clip = load_clip(
                row,
                control_key=control_key,
                frame_indices=source_frame_indices(row, 0, self.num_frames),
                height=self.height,
                width=self.width,
                rng=rng,
            )
            extra[mds.VIDEO_LATENT] = self.encode_latents(clip.video_3_VF_H_W, len(cameras))
            extra[mds.CONTROL_LATENT] = self.encode_latents(clip.control_3_VF_H_W, len(cameras))
            extra[mds.LATENT_NUM_FRAMES] = self.num_frames
            extra[mds.LATENT_HEIGHT] = self.height
            extra[mds.LATENT_WIDTH] = self.width
        if self.text:
            caption = row[mds.CAPTION]
            captions = view_captions(caption, cameras, self.camera_origins) if cameras != (None,) else [caption]
            extra[mds.TEXT_EMBEDDING] = self.encode_text(captions)
            extra[mds.TEXT_EMBEDDING_KIND] = self.text_kind
            extra[mds.CROSSATTN_PROJ_FINGERPRINT] = self.fingerprint
        return extra
