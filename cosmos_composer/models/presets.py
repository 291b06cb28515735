"""Network configurations: the released 2B variants and tiny CPU-sized twins.

Field names follow the official network config (`MinimalV4LVGControlVaceDiT` / `MultiViewControlDiT`
in cosmos-transfer2.5), so `build_network("tiny-singleview", num_blocks=6, vace_block_every_n=3)`
means what it says. Values of the 2B presets: the net configs with the overrides of the released experiments
(transfer2/configs/vid2vid_transfer/experiment/exp_large_scale.py for single view,
transfer2_multiview/configs/vid2vid_transfer/experiment/buttercup_reason1_rfupdates_v2_layer4.py for multiview).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from .official_cameras import DEFAULT_CAMERAS, check_camera_origins


@dataclass(frozen=True)
class NetworkConfig:
    # Latent video channels in and out (Wan2.1 VAE).
    in_channels: int = 16
    out_channels: int = 16
    # Transformer size.
    model_channels: int = 2048
    num_blocks: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    adaln_lora_dim: int = 256
    patch_spatial: int = 2
    patch_temporal: int = 1
    # Text context: Reason1 embeddings (28 layers x 3584 = 100352) projected to 1024.
    crossattn_emb_channels: int = 1024
    use_crossattn_projection: bool = True
    crossattn_proj_in_channels: int = 100352
    # SigLIP2 image context of the released general/* single-view files; None disables it.
    extra_image_context_dim: Optional[int] = None
    # RoPE tables, in latent pixels (max_img_h, max_img_w) and latent frames (max_frames).
    max_img_h: int = 240
    max_img_w: int = 240
    max_frames: int = 128
    rope_h_extrapolation_ratio: float = 3.0
    rope_w_extrapolation_ratio: float = 3.0
    rope_t_extrapolation_ratio: float = 1.0
    # VACE control branch: one control block every n base blocks ("spaced" strategy).
    vace_block_every_n: int = 7
    num_max_modalities: int = 8
    use_input_hint_block: bool = False
    # Multiview: n_cameras_emb = 0 means a single-view network. One view-embedding row per camera of the run.
    n_cameras_emb: int = 0
    # Width of a view embedding: the view channels of both patch embeds. Kept at the released 7 for any number
    # of cameras, so every released weight but the view-embedding rows still fits another rig.
    view_condition_dim: int = 7
    # The camera of each view-embedding row, in view-id order (training sets it from the dataset's `cameras`);
    # () = the 7 official DEFAULT_CAMERAS (models/official_cameras.py) for 7 rows, unnamed rows otherwise.
    camera_names: tuple[str, ...] = ()
    # (camera, official camera) for each camera that starts from an official one (`CAM_FRONT=
    # camera_front_wide_120fov` in the dataset's `cameras`): its caption prefix is that camera's, and its row was
    # copied from that camera's row of the released weights. In network.json: a list of [camera, official] pairs.
    camera_origins: tuple[tuple[str, str], ...] = ()
    state_t: int = 24
    # The network sees timesteps_B_T * timestep_scale (0..1000 -> sigma in 0..1).
    timestep_scale: float = 0.001
    # Recompute each block in backward instead of storing its activations.
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        # A YAML or JSON list becomes a tuple, so configs compare and hash.
        object.__setattr__(self, "camera_names", tuple(self.camera_names))
        origins = self.camera_origins.items() if isinstance(self.camera_origins, dict) else self.camera_origins
        object.__setattr__(self, "camera_origins", tuple(tuple(pair) for pair in origins))

    @property
    def view_cameras(self) -> tuple[str, ...]:
        """The camera of each view-embedding row (view id = position); () when the rows are unnamed."""
        if self.camera_names or not self.is_multiview:
            return self.camera_names
        return DEFAULT_CAMERAS if self.n_cameras_emb == len(DEFAULT_CAMERAS) else ()

    @property
    def is_multiview(self) -> bool:
        return self.n_cameras_emb > 0

    @property
    def head_dim(self) -> int:
        return self.model_channels // self.num_heads

    @property
    def control_layers(self) -> list[int]:
        """Base blocks after which a control hint is added: 0, n, 2n, ... (official "spaced")."""
        return list(range(0, self.num_blocks, self.vace_block_every_n))

    @property
    def view_channels(self) -> int:
        return self.view_condition_dim if self.is_multiview else 0

    @property
    def x_embedder_in_channels(self) -> int:
        # latent + condition mask + padding mask (+ view embedding)
        return self.in_channels + 1 + 1 + self.view_channels

    @property
    def control_latent_channels(self) -> int:
        """Width the control latent is zero-padded to before the masks are appended.

        Upstream derives it from `in_channels`, which in multiview already includes the 7 view channels:
        (16 + 7) * 8 = 184 instead of 16 * 8 = 128. The released multiview weights depend on this quirk.
        """
        return (self.in_channels + self.view_channels) * self.num_max_modalities

    @property
    def control_embedder_in_channels(self) -> int:
        # padded control latent + condition mask + padding mask (+ view embedding)
        return self.control_latent_channels + 1 + 1 + self.view_channels

    def validate(self) -> None:
        if self.model_channels % self.num_heads:
            raise ValueError(f"model_channels={self.model_channels} is not divisible by num_heads={self.num_heads}")
        if self.head_dim % 2 or (self.head_dim // 6 * 2) < 4:
            raise ValueError(f"head_dim={self.head_dim} is too small or odd for the 3D RoPE split")
        if self.vace_block_every_n < 1 or self.vace_block_every_n > self.num_blocks:
            raise ValueError(
                f"vace_block_every_n={self.vace_block_every_n} must be in [1, num_blocks={self.num_blocks}]"
            )
        if self.camera_names and len(self.camera_names) != self.n_cameras_emb:
            raise ValueError(
                f"camera_names lists {len(self.camera_names)} cameras {list(self.camera_names)} but n_cameras_emb="
                f"{self.n_cameras_emb}: the network has one view-embedding row per camera. Fix: set n_cameras_emb: "
                f"{len(self.camera_names)}"
            )
        if len(set(self.camera_names)) != len(self.camera_names):
            raise ValueError(f"camera_names {list(self.camera_names)} lists a camera more than once")
        if self.camera_origins:
            pairs = self.camera_origins
            if any(len(pair) != 2 for pair in pairs) or len({pair[0] for pair in pairs}) != len(pairs):
                raise ValueError(
                    f"camera_origins {list(self.camera_origins)} must be [camera, official camera] pairs, one per camera"
                )
            check_camera_origins(dict(self.camera_origins), self.view_cameras, "camera_origins")
        if self.is_multiview and self.extra_image_context_dim is not None:
            raise ValueError(
                "The multiview network has no image-context modules (extra_image_context_dim must be None)"
            )


_SINGLEVIEW_2B = NetworkConfig()

PRESETS: dict[str, NetworkConfig] = {
    # Post-training default for single view (CT DEFAULT_BASE_EXPERIMENT): no image context.
    "transfer2.5-2b-singleview": _SINGLEVIEW_2B,
    # The released general/{edge,depth,seg,blur} files, which carry SigLIP2 image-context modules.
    "transfer2.5-2b-singleview-general": dataclasses.replace(_SINGLEVIEW_2B, extra_image_context_dim=1152),
    # The released auto/multiview (HDMap) file: 7 cameras x 8 latent frames.
    "transfer2.5-2b-multiview": dataclasses.replace(
        _SINGLEVIEW_2B,
        rope_t_extrapolation_ratio=8.0 / 24.0,
        use_input_hint_block=True,
        n_cameras_emb=7,
        view_condition_dim=7,
        state_t=8,
    ),
}

# Tiny twins keep every structural feature (control spacing, padding quirk, view embedding, hint block,
# projection of a wider text embedding) at a size that runs on a CPU in milliseconds.
_TINY_SINGLEVIEW = NetworkConfig(
    model_channels=64,
    num_blocks=4,
    num_heads=2,
    adaln_lora_dim=16,
    crossattn_emb_channels=32,
    crossattn_proj_in_channels=96,  # = Reason1TextEmbedder.tiny(): 3 layers x 32
    max_img_h=64,
    max_img_w=64,
    max_frames=16,
    vace_block_every_n=2,
    num_max_modalities=2,
    state_t=4,
)
PRESETS["tiny-singleview"] = _TINY_SINGLEVIEW
PRESETS["tiny-multiview"] = dataclasses.replace(
    _TINY_SINGLEVIEW,
    rope_t_extrapolation_ratio=8.0 / 24.0,
    use_input_hint_block=True,
    n_cameras_emb=7,
    view_condition_dim=7,
    state_t=2,
)


def get_config(preset: str, **overrides) -> NetworkConfig:
    """The preset's config with overrides applied; unknown preset or field names are errors."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown network preset {preset!r}; choose one of {sorted(PRESETS)}")
    valid = {f.name for f in dataclasses.fields(NetworkConfig)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"Unknown network config key(s) {unknown}; valid keys are {sorted(valid)}")
    config = dataclasses.replace(PRESETS[preset], **overrides)
    config.validate()
    return config
