"""Generate videos with a Cosmos-Transfer2.5 network: checkpoint + control video(s) + prompt -> mp4.

Used by ``scripts/generate.py`` and by the :class:`~cosmos_composer.callbacks.sample_videos.SampleVideos`
training callback, so both sample the same way:

1. the control video(s) are read, resized (bilinear, antialiased, as the training loader does) and
   encoded by the Wan2.1 VAE, each view independently;
2. the prompt is embedded by Cosmos-Reason1, one embedding per view for multiview (see
   :func:`view_prompts`); the unconditional branch of classifier-free guidance uses the negative prompt
   (the official inference scripts' default) or the zero text of training's text dropout;
3. :func:`cosmos_composer.diffusion.sampler.sample` runs the flow-matching UniPC sampler with guidance;
4. the latents are decoded per view and written as one mp4 per view, plus a tiled overview for multiview.

Weights: consolidated ``.pt`` files in the official formats are loaded strictly (``checkpoint/load.py``).
An EMA-only file (``*_ema_bf16.pt``, ``model_ema_fp32.pt``) holds one set of weights under ``net.*``;
``model.pt`` and Composer checkpoints hold ``net.*`` (training weights) and ``net_ema.*`` (EMA), and
generation uses the EMA by default (``weights="ema"``), as the official inference runs the EMA files.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .checkpoint.hf import resolve
from .checkpoint.load import CheckpointLoadError, LoadReport, load_network_weights, read_state_dict
from .data.cameras import CAMERA_TO_VIEW_INDEX, DEFAULT_CAMERAS, DEFAULT_CAPTION_PREFIXES, FOLDER_PREFIX
from .diffusion import sampler
from .encoders.vae import latent_num_frames, pixel_num_frames
from .models import build_network
from .models.network import CosmosTransferNet
from .models.parallelize import apply_context_parallel

log = logging.getLogger(__name__)

# The official inference defaults for the weights of the frozen encoders (the YAMLs use the same).
DEFAULT_VAE = "hf://nvidia/Cosmos-Predict2.5-2B/tokenizer.pth@f176dc95b4a70f53ce01c4b302851595e7322b00"
DEFAULT_TEXT_ENCODER = "hf://nvidia/Cosmos-Reason1-7B@3210bec0495fdc7a8d3dbb8d58da5711eab4b423"

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

# Short camera names of the official multiview inference (`front_wide`, ...), also accepted as file names.
SHORT_CAMERA_NAMES: dict[str, str] = {
    "front_wide": "camera_front_wide_120fov",
    "cross_right": "camera_cross_right_120fov",
    "rear_right": "camera_rear_right_70fov",
    "rear": "camera_rear_tele_30fov",
    "rear_left": "camera_rear_left_70fov",
    "cross_left": "camera_cross_left_120fov",
    "front_tele": "camera_front_tele_30fov",
}

# Tiles of the multiview overview video, laid out as the cameras sit on the car (None: empty tile).
OVERVIEW_LAYOUT: tuple[tuple[Optional[str], ...], ...] = (
    ("camera_cross_left_120fov", "camera_front_wide_120fov", "camera_cross_right_120fov"),
    ("camera_rear_left_70fov", "camera_front_tele_30fov", "camera_rear_right_70fov"),
    (None, "camera_rear_tele_30fov", None),
)
OVERVIEW_MAX_WIDTH = 1920

# How multiview prompts are embedded (see `view_prompts`).
CAPTION_MODES = ("prefixed", "front-only")

# The empty prompt of upstream's `compute_empty_and_negative_text_embeddings`.
EMPTY_PROMPT = " "
NUM_TEXT_TOKENS = 512


class GenerationError(ValueError):
    """Invalid generation inputs; the message names the file or option and the fix."""


# =============================================================================================
# Checkpoint -> network
# =============================================================================================
def read_checkpoint_state(checkpoint: str | os.PathLike, weights: str = "ema") -> dict[str, torch.Tensor]:
    """The flat ``net.*`` / ``net_ema.*`` tensors of a consolidated ``.pt``, an hf:// URI of one, or a
    Composer checkpoint folder (a sharded ``ep*-ba*`` folder, its ``latest-rank0.pt`` link or a run's
    ``checkpoints`` folder, taking the newest). From a Composer checkpoint only the network that
    ``weights`` asks for is read (``net_ema.*``, or ``net.*`` when the run had no EMA)."""
    source = str(checkpoint)
    local = Path(resolve(source))
    if not local.exists():
        raise GenerationError(f"--checkpoint {source} does not exist. Fix: give a .pt file, an hf:// URI or a checkpoint folder")
    if local.is_dir():  # also the latest-rank0.pt link of a sharded checkpoint
        try:
            from .checkpoint.export import find_checkpoint, read_composer_model_state
        except ImportError as error:
            raise GenerationError(
                f"--checkpoint {source} is a Composer checkpoint folder, but this installation cannot read those "
                f"({error}). Fix: export it first with scripts/export_checkpoint.py and pass the model_ema_*.pt file"
            ) from None
        try:
            folder = find_checkpoint(local, verify=True)
            if weights == "ema":
                try:
                    return read_composer_model_state(folder, prefixes=("net_ema.",))
                except (ValueError, RuntimeError):
                    log.warning("%s has no net_ema.* (trained without EMA): using net.*", folder)
            return read_composer_model_state(folder, prefixes=("net.",))
        except (ValueError, RuntimeError, OSError) as error:
            raise GenerationError(f"--checkpoint {source}: {error}") from None
    try:
        return read_state_dict(local)
    except CheckpointLoadError as error:
        raise GenerationError(
            f"--checkpoint {source}: {error}. Fix: pass an official consolidated checkpoint (model.pt, "
            "model_ema_*.pt or a released *_ema_bf16.pt), or a Composer checkpoint folder (export a Composer "
            ".pt with scripts/export_checkpoint.py)"
        ) from None


def select_network_weights(
    state: dict[str, torch.Tensor], weights: str = "ema", source: str = "checkpoint"
) -> tuple[dict[str, torch.Tensor], str]:
    """Pick one network's weights (prefix removed) and say which prefix they came from.

    ``weights="ema"`` takes ``net_ema.*`` when the file has them (``model.pt``, Composer checkpoints),
    else ``net.*`` (the EMA-only files store the EMA under ``net.*``). ``weights="net"`` takes ``net.*``.
    """
    if weights not in ("ema", "net"):
        raise GenerationError(f"weights must be 'ema' or 'net', got {weights!r}")
    has_ema = any(key.startswith("net_ema.") for key in state)
    prefix = "net_ema." if (weights == "ema" and has_ema) else "net."
    selected = {key[len(prefix) :]: tensor for key, tensor in state.items() if key.startswith(prefix)}
    if not selected:
        first = list(state)[:5]
        raise GenerationError(
            f"{source} has no '{prefix}*' keys (first keys: {first}). Fix: pass an official consolidated "
            "checkpoint (keys net.* and optionally net_ema.*)"
        )
    if weights == "net" and not has_ema:
        log.warning("%s holds a single set of weights (no net_ema.*): using its net.* weights", source)
    return selected, prefix


def load_network(
    checkpoint: str | os.PathLike,
    preset: str,
    overrides: Optional[dict[str, Any]] = None,
    weights: str = "ema",
    strict: bool = True,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[CosmosTransferNet, LoadReport]:
    """Build the preset's network on ``device`` and load the checkpoint's weights into it (strictly)."""
    try:
        with torch.device(device):
            net = build_network(preset, **(overrides or {}))
    except ValueError as error:
        raise GenerationError(f"--preset {preset} / --set: {error}") from None
    state = read_checkpoint_state(checkpoint, weights)
    network_weights, prefix = select_network_weights(state, weights, str(checkpoint))
    try:
        report = load_network_weights(net, network_weights, f"{checkpoint} ({prefix}*)", strict=strict)
    except CheckpointLoadError as error:
        raise GenerationError(
            f"{error}\nFix: pick the --preset the checkpoint was trained with (and the same --set overrides), "
            "or pass --allow-partial-load to load the matching keys only"
        ) from None
    return net.to(dtype=dtype).eval().requires_grad_(False), report


# =============================================================================================
# Encoders
# =============================================================================================
def build_encoders(vae: Optional[str], text_encoder: Optional[str], device: torch.device, dtype: torch.dtype):
    """(vae, text_embedder) from ``tiny`` | a local path | an hf:// URI | None, as training builds them."""
    from .encoders import Reason1TextEmbedder, WanVAE

    vae_model = text_model = None
    if vae == "tiny":
        vae_model = WanVAE.tiny(seed=0)
    elif vae:
        path = resolve(vae)
        vae_model = WanVAE.from_diffusers(path) if Path(path).is_dir() else WanVAE.from_official_pth(path)
    if text_encoder == "tiny":
        text_model = Reason1TextEmbedder.tiny(seed=0)
    elif text_encoder:
        text_model = Reason1TextEmbedder.from_pretrained(resolve(text_encoder))
    return (
        None if vae_model is None else vae_model.to(device=device, dtype=dtype).eval(),
        None if text_model is None else text_model.to(device=device, dtype=dtype).eval(),
    )


# =============================================================================================
# Control videos
# =============================================================================================
def canonical_camera(name: str) -> str:
    """``camera_front_wide_120fov`` for that name, ``ftheta_camera_front_wide_120fov`` or ``front_wide``."""
    name = name.removeprefix(FOLDER_PREFIX)
    name = SHORT_CAMERA_NAMES.get(name, name)
    if name not in CAMERA_TO_VIEW_INDEX:
        raise GenerationError(
            f"unknown camera {name!r}; the cameras are {list(DEFAULT_CAMERAS)} (also accepted: "
            f"'{FOLDER_PREFIX}<camera>' and the short names {list(SHORT_CAMERA_NAMES)})"
        )
    return name


def _camera_aliases(camera: str) -> list[str]:
    short = [s for s, full in SHORT_CAMERA_NAMES.items() if full == camera]
    return [camera, FOLDER_PREFIX + camera, *short]


def camera_video_files(
    folder: str | os.PathLike, cameras: Sequence[str], what: str = "--control", sample: Optional[str] = None
) -> dict[str, Path]:
    """The mp4 of each camera in ``folder``: ``<camera>.mp4`` or a subfolder ``<camera>/`` with one mp4
    (or, with ``sample``, the subfolder's ``<sample>.mp4``: a dataset's folder in the official layout).

    ``<camera>`` may be the camera key (``camera_front_wide_120fov``), its folder name in the official
    layout (``ftheta_camera_front_wide_120fov``) or the official inference's short name (``front_wide``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise GenerationError(
            f"{what} {folder} is not a folder; the multiview network takes a folder with one mp4 per camera "
            f"({', '.join(c + '.mp4' for c in cameras)})"
        )
    found: dict[str, Path] = {}
    missing: list[str] = []
    for camera in cameras:
        candidates = []
        for alias in _camera_aliases(camera):
            if (folder / f"{alias}.mp4").is_file():
                candidates.append(folder / f"{alias}.mp4")
            subfolder = folder / alias
            if subfolder.is_dir():
                videos = [subfolder / f"{sample}.mp4"] if sample else sorted(subfolder.glob("*.mp4"))
                videos = [v for v in videos if v.is_file()]
                if len(videos) > 1:
                    raise GenerationError(
                        f"{what}: {subfolder} holds {len(videos)} mp4 files; it must hold exactly one. Fix: name the "
                        f"sample with --sample <name> (e.g. --sample {videos[0].stem}), or point {what} at a folder "
                        f"with one video per camera (e.g. {folder}/{camera}.mp4)"
                    )
                candidates += videos
        if not candidates:
            missing.append(camera)
        elif len(candidates) > 1:
            raise GenerationError(f"{what}: camera {camera} has several videos: {[str(c) for c in candidates]}; keep one")
        else:
            found[camera] = candidates[0]
    if missing:
        raise GenerationError(
            f"{what} {folder} has no video for camera(s) {missing}. Fix: add <camera>.mp4 (or "
            f"{FOLDER_PREFIX}<camera>/<name>.mp4) for each, or choose the cameras to generate with --cameras"
        )
    return found


@dataclass
class Clip:
    """Frames of one or more views: uint8 ``[3, V*F, H, W]``, views concatenated along time."""

    video: torch.Tensor
    fps: float
    files: list[Path]


def read_clip(path: Path, num_frames: int, height: int, width: int) -> tuple[torch.Tensor, float]:
    """Frames 0..num_frames-1 of ``path`` resized to ``height`` x ``width``: uint8 ``[3, F, H, W]`` and fps."""
    from .data.video import VideoError, decode_frames, probe_video, resize_video

    try:
        frames_T_H_W_3, fps = decode_frames(path, 0, num_frames)
    except VideoError as error:
        try:
            available = probe_video(path).num_frames
        except VideoError:
            raise GenerationError(f"{path} cannot be read as a video: {error}") from None
        raise GenerationError(
            f"{path} has {available} frames, fewer than the {num_frames} requested. Fix: pass --num-frames "
            f"{_largest_valid_frames(available)} (frame counts are 1 + 4k) or a longer video"
        ) from None
    frames_T_3_H_W = torch.from_numpy(frames_T_H_W_3).permute(0, 3, 1, 2)
    frames_T_3_H_W = resize_video(frames_T_3_H_W, height, width)
    return frames_T_3_H_W.permute(1, 0, 2, 3).contiguous(), fps


def _largest_valid_frames(available: int) -> int:
    return max(1, 1 + 4 * ((available - 1) // 4))


def probe_size(path: Path) -> tuple[int, int, float, int]:
    """(height, width, fps, frames) of a video file."""
    from .data.video import VideoError, probe_video

    try:
        info = probe_video(path)
    except VideoError as error:
        raise GenerationError(f"{path} cannot be read as a video: {error}") from None
    return info.height, info.width, info.fps, info.num_frames


def read_views(files: Sequence[Path], num_frames: int, height: int, width: int, what: str = "--control") -> Clip:
    """Read every view's clip; all views must share one frame rate (as the official loader checks)."""
    clips, rates = [], []
    for path in files:
        clip, fps = read_clip(path, num_frames, height, width)
        clips.append(clip)
        rates.append(fps)
    if any(abs(rate - rates[0]) > 1e-3 for rate in rates):
        listing = ", ".join(f"{p.name}: {r:g} fps" for p, r in zip(files, rates))
        raise GenerationError(
            f"{what} videos have different frame rates ({listing}). Fix: re-encode them at one frame rate"
        )
    return Clip(video=torch.cat(clips, dim=1), fps=rates[0], files=list(files))


# =============================================================================================
# Prompts -> text contexts
# =============================================================================================
def caption_camera(cameras: Sequence[str]) -> str:
    """The view that carries the caption: front_wide when generated, else the first camera (as upstream)."""
    return "camera_front_wide_120fov" if "camera_front_wide_120fov" in cameras else cameras[0]


def view_prompts(prompt: str, cameras: Optional[Sequence[str]], caption_mode: str = "prefixed") -> list[str]:
    """The per-view prompts to embed (one for single view, ``cameras=None``).

    ``prefixed`` (default) is what training sees: every view gets ``"<camera prefix> <caption>"`` with the
    caption on the front-wide view only (so the others read ``"<prefix> "``), as the official multiview
    loader with ``add_view_prefix_to_caption=True`` builds them. ``front-only`` is what the official
    multiview inference script embeds: the bare prompt on the front-wide view and the empty prompt " " on
    the others.
    """
    if not cameras:
        return [prompt]
    if caption_mode not in CAPTION_MODES:
        raise GenerationError(f"caption mode must be one of {CAPTION_MODES}, got {caption_mode!r}")
    front = caption_camera(cameras)
    if caption_mode == "front-only":
        return [prompt if camera == front else EMPTY_PROMPT for camera in cameras]
    return [f"{DEFAULT_CAPTION_PREFIXES[camera]} {prompt if camera == front else ''}" for camera in cameras]


def negative_view_prompts(negative_prompt: str, cameras: Optional[Sequence[str]], caption_mode: str = "prefixed") -> list[str]:
    """Per-view negative prompts as the official multiview model builds them.

    With per-view captions (``prefixed``) every view gets the negative prompt; with a single caption
    (``front-only``) the caption view gets it and the others the empty prompt.
    """
    if not cameras:
        return [negative_prompt]
    if caption_mode == "front-only":
        front = caption_camera(cameras)
        return [negative_prompt if camera == front else EMPTY_PROMPT for camera in cameras]
    return [negative_prompt] * len(cameras)


@torch.no_grad()
def embed_view_prompts(text_embedder, prompts: Sequence[str]) -> torch.Tensor:
    """Embed one prompt per view and concatenate them: ``[1, V*512, D]`` (each distinct prompt once)."""
    unique = list(dict.fromkeys(prompts))
    embeddings = dict(zip(unique, text_embedder.embed(unique).float()))
    per_view = torch.stack([embeddings[prompt] for prompt in prompts])  # [V, L, D]
    return per_view.reshape(1, -1, per_view.shape[-1])


def load_text_embedding(path: str | os.PathLike, num_views: int) -> torch.Tensor:
    """A cached text embedding file -> ``[1, V*L, D]``.

    Accepted: a tensor ``[L, D]`` or ``[1, L, D]`` (single view; for multiview it is used for every view),
    ``[V, L, D]`` (one per view, in camera order), or for multiview ``[V*512, D]`` (the layout of the
    ``text_embedding`` column of precomputed shards). A dict holding one tensor is accepted too.
    """
    try:
        loaded = torch.load(resolve(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for unreadable files
        raise GenerationError(f"--text-embedding {path} cannot be read as a torch tensor file: {error}") from None
    if isinstance(loaded, dict):
        tensors = [v for v in loaded.values() if isinstance(v, torch.Tensor)]
        if len(tensors) != 1:
            raise GenerationError(f"--text-embedding {path} holds a dict with {len(tensors)} tensors; save one tensor")
        loaded = tensors[0]
    if not isinstance(loaded, torch.Tensor) or loaded.ndim not in (2, 3):
        raise GenerationError(f"--text-embedding {path} must hold a tensor [L, D], [1, L, D] or [V, L, D]")
    embedding = loaded.float()
    if embedding.ndim == 2:
        if num_views > 1 and embedding.shape[0] == num_views * NUM_TEXT_TOKENS:
            return embedding[None]
        embedding = embedding[None]
    if embedding.shape[0] == num_views and num_views > 1:
        return embedding.reshape(1, -1, embedding.shape[-1])
    if embedding.shape[0] != 1:
        raise GenerationError(
            f"--text-embedding {path} has shape {tuple(loaded.shape)}; expected [L, D], [1, L, D] or "
            f"[{num_views}, L, D] (one per view)"
        )
    if num_views > 1:
        log.warning("--text-embedding %s holds one embedding: using it for all %d views", path, num_views)
        embedding = embedding.repeat(1, num_views, 1)
    return embedding


# =============================================================================================
# Latents <-> videos
# =============================================================================================
def view_indices(cameras: Optional[Sequence[str]], latent_frames_per_view: int, batch_size: int = 1) -> Optional[torch.Tensor]:
    """Camera id of every latent frame ``[B, V*t]`` for multiview (None for single view)."""
    if not cameras:
        return None
    ids = torch.tensor([CAMERA_TO_VIEW_INDEX[camera] for camera in cameras], dtype=torch.long)
    return ids.repeat_interleave(latent_frames_per_view)[None].expand(batch_size, -1).clone()


def to_uint8(video_3_T_H_W: torch.Tensor) -> np.ndarray:
    """Decoded video in [-1, 1] -> uint8 frames ``[T, H, W, 3]`` (as upstream: (x + 1) / 2, clamped)."""
    frames = ((video_3_T_H_W.float().cpu() + 1.0) / 2.0).clamp(0, 1) * 255.0
    return frames.round().to(torch.uint8).permute(1, 2, 3, 0).numpy()


def overview_frames(views: dict[str, np.ndarray]) -> np.ndarray:
    """Tile the views ``[T, H, W, 3]`` into one video laid out as the cameras sit on the car.

    Rows: cross-left, front-wide, cross-right / rear-left, front-tele, rear-right / -, rear-tele, -.
    Tiles shrink so the overview is at most 1920 pixels wide; missing cameras stay black.
    """
    from .data.video import resize_video

    first = next(iter(views.values()))
    T, H, W, _ = first.shape
    columns = len(OVERVIEW_LAYOUT[0])
    scale = min(1.0, OVERVIEW_MAX_WIDTH / (columns * W))
    tile_h, tile_w = max(2, int(H * scale) // 2 * 2), max(2, int(W * scale) // 2 * 2)
    grid = np.zeros((T, tile_h * len(OVERVIEW_LAYOUT), tile_w * columns, 3), dtype=np.uint8)
    for row, cameras in enumerate(OVERVIEW_LAYOUT):
        for column, camera in enumerate(cameras):
            if camera is None or camera not in views:
                continue
            tile = torch.from_numpy(views[camera]).permute(0, 3, 1, 2)
            tile = resize_video(tile, tile_h, tile_w).permute(0, 2, 3, 1).numpy()
            grid[:, row * tile_h : (row + 1) * tile_h, column * tile_w : (column + 1) * tile_w] = tile
    return grid


def view_output_path(output: Path, camera: str) -> Path:
    """``out.mp4`` -> ``out_camera_front_wide_120fov.mp4``."""
    return output.with_name(f"{output.stem}_{camera}{output.suffix}")


def write_videos(
    video_3_VT_H_W: torch.Tensor, output: str | os.PathLike, fps: float, cameras: Optional[Sequence[str]] = None
) -> list[Path]:
    """Write a decoded video ([-1, 1]) as mp4: the file itself for single view; for multiview one file per
    view (``<stem>_<camera>.mp4``) and the tiled overview at ``output``. Returns the paths written."""
    from .data.video import write_mp4

    output = Path(output)
    frames = to_uint8(video_3_VT_H_W)
    if not cameras:
        write_mp4(output, frames, fps)
        return [output]
    per_view = dict(zip(cameras, np.split(frames, len(cameras), axis=0)))
    written = []
    for camera, view_frames in per_view.items():
        path = view_output_path(output, camera)
        write_mp4(path, view_frames, fps)
        written.append(path)
    write_mp4(output, overview_frames(per_view), fps)
    return [*written, output]


# =============================================================================================
# Sampling
# =============================================================================================
@torch.no_grad()
def sample_video(
    net: nn.Module,
    vae,
    conditioning: sampler.Conditioning,
    *,
    guidance: float = sampler.DEFAULT_GUIDANCE,
    num_steps: int = sampler.DEFAULT_NUM_STEPS,
    shift: float = sampler.DEFAULT_SHIFT,
    seed: int = 0,
    progress: bool = True,
    decode: bool = True,
) -> torch.Tensor:
    """Sample and decode: ``[B, 3, V*F, H, W]`` in [-1, 1] (or the latents with ``decode=False``)."""
    latents = sampler.sample(
        net, conditioning, guidance=guidance, num_steps=num_steps, shift=shift, seed=seed, progress=progress
    )
    if not decode:
        return latents
    return vae.decode_views(latents, conditioning.num_views)


def conditioning_frames_to_latents(num_pixel_frames: int) -> int:
    """Pixel conditioning frames -> latent frames per view, as the official inference converts them."""
    return 0 if num_pixel_frames <= 0 else latent_num_frames(num_pixel_frames)


@dataclass
class GenerateOptions:
    """The options of ``scripts/generate.py`` (see its ``--help``)."""

    checkpoint: str
    preset: str
    control: str
    output: str
    prompt: Optional[str] = None
    text_embedding: Optional[str] = None
    negative_prompt: Optional[str] = None  # None: the official default for the network type
    use_negative_prompt: bool = True  # False: zero text (training's dropout) for the unconditional branch
    negative_text_embedding: Optional[str] = None
    overrides: dict[str, Any] = field(default_factory=dict)
    weights: str = "ema"
    allow_partial_load: bool = False
    seed: int = 0
    guidance: float = sampler.DEFAULT_GUIDANCE
    steps: int = sampler.DEFAULT_NUM_STEPS
    shift: float = sampler.DEFAULT_SHIFT
    num_frames: Optional[int] = None
    height: Optional[int] = None
    width: Optional[int] = None
    fps: Optional[float] = None
    cameras: Optional[list[str]] = None
    sample: Optional[str] = None  # the sample's name when --control/--input are official-layout dataset folders
    caption_mode: str = "prefixed"
    num_conditional_frames: int = 0
    input: Optional[str] = None
    control_weight: float = 1.0
    vae: Optional[str] = DEFAULT_VAE
    text_encoder: Optional[str] = DEFAULT_TEXT_ENCODER
    device: Optional[str] = None
    dtype: Optional[str] = None
    progress: bool = True


def _resolve_device_dtype(options: GenerateOptions) -> tuple[torch.device, torch.dtype]:
    default = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"  # a launch's GPU
    device = torch.device(options.device or default)
    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}
    if options.dtype is None:
        # Upstream runs the network, the VAE and the text encoder in bf16 on GPUs.
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif options.dtype in names:
        dtype = names[options.dtype]
    else:
        raise GenerationError(f"--dtype must be one of {sorted(names)}, got {options.dtype!r}")
    return device, dtype


def _check_geometry(options: GenerateOptions, net: CosmosTransferNet, first_video: Path) -> tuple[int, int, int, float]:
    """(num_frames, height, width, fps) from the options, defaulting to the network and the control video."""
    from .encoders.vae import TEMPORAL_COMPRESSION

    config = net.config
    native_h, native_w, native_fps, available = probe_size(first_video)
    num_frames = options.num_frames or pixel_num_frames(config.state_t)
    if not options.num_frames and not config.is_multiview and available < num_frames:
        # Single view takes any 1 + 4k frames: default to as many as the control has, up to the native length.
        num_frames = _largest_valid_frames(available)
        log.warning("%s has %d frames: generating %d (the network's native length is %d)",
                    first_video, available, num_frames, pixel_num_frames(config.state_t))
    if num_frames < 1 or (num_frames - 1) % TEMPORAL_COMPRESSION:
        raise GenerationError(
            f"--num-frames {num_frames}: the Wan VAE needs 1 + 4k frames (e.g. {_largest_valid_frames(num_frames)})"
        )
    if config.is_multiview and num_frames != pixel_num_frames(config.state_t):
        raise GenerationError(
            f"--num-frames {num_frames}: the multiview network generates exactly state_t={config.state_t} latent "
            f"frames per view, i.e. {pixel_num_frames(config.state_t)} frames. Fix: pass --num-frames "
            f"{pixel_num_frames(config.state_t)} (or --set state_t=... for a network trained that way)"
        )
    height, width = options.height or native_h, options.width or native_w
    multiple = 8 * config.patch_spatial
    if height % multiple or width % multiple:
        raise GenerationError(
            f"height x width = {height} x {width}: both must be multiples of {multiple} (VAE 8x, patch "
            f"{config.patch_spatial}). Fix: pass --height and --width (e.g. {height // multiple * multiple} x "
            f"{width // multiple * multiple})"
        )
    return num_frames, height, width, options.fps or native_fps


def join_launch_as_context_parallel(device: torch.device, num_heads: int):
    """Under a launcher (`composer -n N`, `torchrun`), all N processes sample the one video together, each
    running its share of the frames and heads (context parallelism; the same video as one process).
    Returns this rank's `ContextParallel`, or None for a single process."""
    import torch.distributed as dist

    from .models.context_parallel import check_context_parallel_size, context_parallel_groups

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return None
    try:
        check_context_parallel_size(world_size, num_heads, world_size)
    except ValueError as error:
        raise GenerationError(f"a launch of {world_size} processes samples with context parallelism: {error}") from None
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return context_parallel_groups(world_size)


def generate(options: GenerateOptions) -> list[Path]:
    """Run one generation as ``scripts/generate.py`` does; returns the mp4 files written (by rank 0 under a
    launcher of several processes, which sample with context parallelism: see `join_launch_as_context_parallel`)."""
    output = Path(options.output)
    if output.suffix.lower() != ".mp4":
        raise GenerationError(f"--output {output} must end in .mp4")
    if (options.prompt is None) == (options.text_embedding is None):
        raise GenerationError("give exactly one of --prompt and --text-embedding")
    if options.num_conditional_frames > 0 and not options.input:
        raise GenerationError(
            f"--num-conditional-frames {options.num_conditional_frames} needs --input: the video(s) whose first "
            "frames condition the sample (same layout as --control)"
        )
    device, dtype = _resolve_device_dtype(options)

    net, report = load_network(
        options.checkpoint,
        options.preset,
        options.overrides,
        weights=options.weights,
        strict=not options.allow_partial_load,
        device=device,
        dtype=dtype,
    )
    apply_context_parallel(net, join_launch_as_context_parallel(device, net.config.num_heads))
    is_rank_zero = net.context_parallel is None or int(os.environ.get("RANK", "0")) == 0
    if is_rank_zero:
        print(report.summary())
    is_multiview = net.config.is_multiview

    # ---- inputs
    cameras: Optional[list[str]] = None
    if is_multiview:
        cameras = [canonical_camera(c) for c in (options.cameras or DEFAULT_CAMERAS)]
        cameras = sorted(dict.fromkeys(cameras), key=CAMERA_TO_VIEW_INDEX.__getitem__)
        if len(cameras) > net.config.n_cameras_emb:
            raise GenerationError(f"--cameras: at most {net.config.n_cameras_emb} views")
        control_files = [camera_video_files(options.control, cameras, sample=options.sample)[c] for c in cameras]
    else:
        if options.cameras:
            raise GenerationError("--cameras is only for multiview presets")
        control_path = Path(options.control)
        if not control_path.is_file():
            raise GenerationError(
                f"--control {control_path} is not a file; the single-view preset {options.preset} takes one mp4"
            )
        control_files = [control_path]
    num_frames, height, width, fps = _check_geometry(options, net, control_files[0])
    control = read_views(control_files, num_frames, height, width, "--control")
    num_views = len(control_files)

    input_clip = None
    if options.num_conditional_frames > 0:
        if is_multiview:
            input_files = [camera_video_files(options.input, cameras, "--input", sample=options.sample)[c] for c in cameras]
        else:
            input_files = [Path(options.input)]
            if not input_files[0].is_file():
                raise GenerationError(f"--input {options.input} is not a file")
        # The causal VAE encodes the first n latent frames from the first 1 + 4(n - 1) frames alone.
        input_frames = pixel_num_frames(conditioning_frames_to_latents(options.num_conditional_frames))
        input_clip = read_views(input_files, input_frames, height, width, "--input")

    # ---- text
    need_text_encoder = options.prompt is not None or (
        options.use_negative_prompt and options.negative_text_embedding is None
    )
    vae, text_embedder = build_encoders(options.vae, options.text_encoder if need_text_encoder else None, device, dtype)
    if vae is None:
        raise GenerationError("--vae is required: the control video is encoded and the sample decoded with it")
    if need_text_encoder and text_embedder is None:
        raise GenerationError(
            "a text encoder is needed to embed the prompt or the negative prompt. Fix: pass --text-encoder "
            "(tiny, a path or an hf:// URI), or --text-embedding with --negative-text-embedding or --no-negative-prompt"
        )
    if options.prompt is not None:
        context = embed_view_prompts(text_embedder, view_prompts(options.prompt, cameras, options.caption_mode))
    else:
        context = load_text_embedding(options.text_embedding, num_views)
    if options.negative_text_embedding is not None:
        uncond_context = load_text_embedding(options.negative_text_embedding, num_views)
    elif options.use_negative_prompt:
        negative = options.negative_prompt
        if negative is None:
            negative = NEGATIVE_PROMPT_MULTIVIEW if is_multiview else NEGATIVE_PROMPT_SINGLEVIEW
        uncond_context = embed_view_prompts(text_embedder, negative_view_prompts(negative, cameras, options.caption_mode))
    else:
        uncond_context = sampler.unconditional_context(net, context)
    if uncond_context.shape[1] != context.shape[1]:
        raise GenerationError(
            f"the negative text embedding has {uncond_context.shape[1]} tokens, the prompt's {context.shape[1]}"
        )
    if text_embedder is not None:  # free the text encoder (7B) before sampling
        del text_embedder
        if device.type == "cuda":
            torch.cuda.empty_cache()

    # ---- sample
    control_latents = vae.encode_views(control.video[None].to(device), num_views)
    latent_frames = control_latents.shape[2] // num_views
    n_cond = conditioning_frames_to_latents(options.num_conditional_frames)
    condition_latents = None
    if input_clip is not None:
        cond = vae.encode_views(input_clip.video[None].to(device), num_views)  # [1, 16, V*n, h, w]
        condition_latents = torch.zeros_like(control_latents)
        cond_per_view = cond.shape[2] // num_views
        for v in range(num_views):
            start = v * latent_frames
            condition_latents[:, :, start : start + cond_per_view] = cond[:, :, v * cond_per_view : (v + 1) * cond_per_view]
    conditioning = sampler.Conditioning(
        control=control_latents,
        context=context.to(device),
        uncond_context=uncond_context.to(device),
        num_views=num_views,
        view_indices_B_T=None if cameras is None else view_indices(cameras, latent_frames).to(device),
        condition_latents=condition_latents,
        num_conditional_frames=n_cond,
        control_weight=options.control_weight,
    )
    video = sample_video(
        net,
        vae,
        conditioning,
        guidance=options.guidance,
        num_steps=options.steps,
        shift=options.shift,
        seed=options.seed,
        progress=options.progress and is_rank_zero,
    )
    return write_videos(video[0], output, fps, cameras) if is_rank_zero else []


def options_from_dict(values: dict[str, Any]) -> GenerateOptions:
    """A :class:`GenerateOptions` from a dict, rejecting unknown keys with the list of valid ones."""
    valid = {f.name for f in dataclasses.fields(GenerateOptions)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise GenerationError(f"unknown generation option(s) {unknown}; valid: {sorted(valid)}")
    return GenerateOptions(**values)
