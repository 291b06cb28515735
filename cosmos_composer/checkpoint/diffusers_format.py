"""Convert the single-view network to diffusers 0.38.0 `CosmosTransformer3DModel` + `CosmosControlNetModel`.

Our network's `state_dict()` uses the official checkpoint names without the leading `net.`. diffusers
splits the same weights into two models:

- the transformer holds the base DiT (patch embed, time embedding, the base blocks, final layer and the
  text / image context projections);
- the controlnet holds the control branch (`control_embedder`, `control_blocks`) plus **copies** of the
  shared embedders it needs to run on its own (`x_embedder` as `patch_embed_base`, `t_embedder`,
  `t_embedding_norm`, `crossattn_proj`, `img_context_proj`).

No weight needs a permutation: diffusers' patch embed flattens (c, pt, ph, pw) and its output unflattens
(ph, pw, pt, c), as the original does (reference 3.2). Everything below was checked against the installed
diffusers 0.38.0 source (models/transformers/transformer_cosmos.py, models/controlnets/controlnet_cosmos.py,
pipelines/cosmos/pipeline_cosmos2_5_transfer.py).

How the two diffusers modules are called, compared with our `net(...)` (see `diffusers_velocity`):

====================================  ==================================================================
ours                                  diffusers 0.38.0
====================================  ==================================================================
timesteps_B_T (0..1000 = 1000 sigma)  `timestep` = sigma: [B] (one t per sample) or [B, 1, T, 1, 1]
crossattn_emb                         `encoder_hidden_states`; a `(text, img)` tuple with image context
img_context_emb                       second element of that tuple (raw 1152-d SigLIP2 tokens)
latent_control_input [B, 16k, ...]    controlnet `controls_latents` (zero-padded inside, like ours)
condition mask [B, 1, T, H, W]        `condition_mask` of both modules
padding_mask [B, 1, H_px, W_px]       `padding_mask`; diffusers only handles a batch of 1 here (below)
control_context_scale                 controlnet `conditioning_scale` (float or one float per block)
====================================  ==================================================================

Differences of diffusers 0.38.0 from the original network (some of which diffusers 0.42.1 changed):

- q/k RMSNorm eps is 1e-5 in `attn1` / `attn2` (`Attention(qk_norm="rms_norm")` default), 1e-6 upstream and
  in our network. It is not a config option; `set_qk_norm_eps(model, 1e-6)` patches loaded modules.
  (`q_img_norm` / `k_img_norm` and the time-embedding norm already use 1e-6.)
- `padding_mask` must have batch size 1: both modules do `padding_mask.unsqueeze(2).repeat(batch_size, ...)`,
  which breaks for a per-sample mask. `diffusers_velocity` runs such batches sample by sample.
- With image context, the transformer requires `encoder_hidden_states` to be a `(text, img)` tuple (its
  `CosmosAttnProcessor2_5` raises otherwise); `(text, None)` means "no image tokens".
- The pipeline gives conditioning frames the timestep `conditional_frame_timestep=0.1`; the released transfer
  models use the noisy frames' t for them. That is a pipeline argument, the modules take any per-frame t.
- With per-frame timesteps ([B, 1, T, 1, 1], what the pipeline always passes) diffusers broadcasts the time
  embedding to every token and runs the adaLN modulation MLPs per token; the original (and ours) runs them once
  per frame. Same result, more compute. One t per sample ([B]) avoids it.
- `from_pretrained` of either Cosmos model raises without the `accelerate` package (their
  `_keep_in_fp32_modules` demands `low_cpu_mem_usage`, which diffusers switches off when accelerate is missing).
- Key names and config names are as reference 3.1 / 3.2 describe for 0.42.1; nothing differs for the single-view
  modules used here (`learnable_pos_embed` is absent since `extra_pos_embed_type=None`).
- Only the "spaced" control layout exists: base block `i` gets hint `i // n` for `i in range(0, num_blocks, n)`.
  No multiview (`view_embeddings`, `input_hint_block`, per-view cross-attention / RoPE), no fps-modulated RoPE
  (the pipeline passes `fps=None`), no multi-branch control.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any, NamedTuple, Optional, Union

import torch

from .keys import EMA_PREFIX, NET_PREFIX, has_ema, is_non_parameter, without_network_prefix

__all__ = [
    "DiffusersCheckpoint",
    "TRANSFORMER_CLASS_NAME",
    "CONTROLNET_CLASS_NAME",
    "diffusers_configs",
    "to_diffusers",
    "from_diffusers",
    "build_diffusers_models",
    "save_diffusers",
    "set_qk_norm_eps",
    "diffusers_timestep",
    "diffusers_velocity",
]

TRANSFORMER_CLASS_NAME = "CosmosTransformer3DModel"
CONTROLNET_CLASS_NAME = "CosmosControlNetModel"

# The only timestep scale the diffusers pipeline understands: our t is 1000 * sigma, diffusers takes sigma.
_DIFFUSERS_TIMESTEP_SCALE = 0.001
_ORIGINAL_QK_NORM_EPS = 1e-6


# ---------------------------------------------------------------------------------------------------------------
# Key renames. Keys are split into (module path, parameter name); module paths are renamed exactly, so an
# unexpected key is an error instead of a silent pass-through.
# ---------------------------------------------------------------------------------------------------------------


def _block_module_renames() -> dict[str, str]:
    """Module paths inside one base or control block: ours -> diffusers `CosmosTransformerBlock`."""
    renames = {
        "mlp.layer1": "ff.net.0.proj",
        "mlp.layer2": "ff.net.2",
        "before_proj": "before_proj",  # control block 0 only
        "after_proj": "after_proj",  # every control block
    }
    for ours, theirs in (("self_attn", "attn1"), ("cross_attn", "attn2")):
        renames[f"{ours}.q_proj"] = f"{theirs}.to_q"
        renames[f"{ours}.k_proj"] = f"{theirs}.to_k"
        renames[f"{ours}.v_proj"] = f"{theirs}.to_v"
        renames[f"{ours}.output_proj"] = f"{theirs}.to_out.0"
        renames[f"{ours}.q_norm"] = f"{theirs}.norm_q"
        renames[f"{ours}.k_norm"] = f"{theirs}.norm_k"
    # Image-context attention (released general/* files): same names inside diffusers' `CosmosAttention`.
    for name in ("q_img", "k_img", "v_img", "q_img_norm", "k_img_norm"):
        renames[f"cross_attn.{name}"] = f"attn2.{name}"
    for ours, theirs in (("self_attn", "norm1"), ("cross_attn", "norm2"), ("mlp", "norm3")):
        renames[f"adaln_modulation_{ours}.1"] = f"{theirs}.linear_1"
        renames[f"adaln_modulation_{ours}.2"] = f"{theirs}.linear_2"
    return renames


_BLOCK_RENAMES = _block_module_renames()

# Embedders both diffusers modules hold (the controlnet keeps its own copy).
_SHARED_RENAMES = {
    "t_embedder.1.linear_1": "time_embed.t_embedder.linear_1",
    "t_embedder.1.linear_2": "time_embed.t_embedder.linear_2",
    "t_embedding_norm": "time_embed.norm",
    "crossattn_proj.0": "crossattn_proj.0",
    "img_context_proj.0": "img_context_proj.0",
}

_TRANSFORMER_RENAMES = {
    **_SHARED_RENAMES,
    "x_embedder.proj.1": "patch_embed.proj",
    "final_layer.adaln_modulation.1": "norm_out.linear_1",
    "final_layer.adaln_modulation.2": "norm_out.linear_2",
    "final_layer.linear": "proj_out",
}

# Our modules that are copied into the controlnet, with their name there.
_CONTROLNET_COPIES = {
    **_SHARED_RENAMES,
    "x_embedder.proj.1": "patch_embed_base.proj",
}

_CONTROLNET_RENAMES = {
    "control_embedder.proj.1": "patch_embed.proj",
}

_MULTIVIEW_MARKERS = ("view_embeddings.", "input_hint_block.")


def _split_key(key: str) -> tuple[str, str]:
    module_path, _, param_name = key.rpartition(".")
    return module_path, param_name


def _rename_block_key(key: str, new_list_name: str) -> str:
    """`blocks.3.self_attn.q_proj.weight` -> `transformer_blocks.3.attn1.to_q.weight` (list name given)."""
    _, index, rest = key.split(".", 2)
    module_path, param_name = _split_key(rest)
    if module_path not in _BLOCK_RENAMES:
        raise ValueError(f"Unexpected key {key!r}: {module_path!r} is not a known block submodule")
    return f"{new_list_name}.{index}.{_BLOCK_RENAMES[module_path]}.{param_name}"


# ---------------------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------------------


def _config_dict(config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(f"Expected a network config dataclass or mapping, got {type(config).__name__}")


def _check_supported(cfg: Mapping[str, Any]) -> None:
    """Raise a ValueError for the network features diffusers 0.38.0 cannot express."""
    if cfg.get("n_cameras_emb", 0) > 0:
        raise ValueError(
            "diffusers has no multiview Cosmos-Transfer2.5 model (no view embedding, per-view cross-attention or "
            "per-view RoPE); only single-view networks can be converted to diffusers format"
        )
    if cfg.get("use_input_hint_block", False):
        raise ValueError("diffusers' CosmosControlNetModel has no input_hint_block; set use_input_hint_block=False")
    unsupported = {
        # field: value diffusers requires (fields absent from the config are assumed to have it)
        "use_adaln_lora": True,
        "concat_padding_mask": True,
        "extra_per_block_abs_pos_emb": False,
        "rope_enable_fps_modulation": False,
        "vace_has_mask": False,
        "num_control_branches": 1,
        "separate_embedders": False,
        "img_context_deep_proj": False,
        "share_q_in_i2v_cross_attn": False,
        "condition_strategy": "spaced",
    }
    for field, required in unsupported.items():
        if field in cfg and cfg[field] != required:
            raise ValueError(f"diffusers 0.38.0 supports only {field}={required!r}, the network has {cfg[field]!r}")
    timestep_scale = cfg.get("timestep_scale", _DIFFUSERS_TIMESTEP_SCALE)
    if abs(timestep_scale - _DIFFUSERS_TIMESTEP_SCALE) > 1e-12:
        raise ValueError(
            f"timestep_scale={timestep_scale}: the diffusers pipeline feeds sigma in [0, 1], which matches our "
            f"network only with timestep_scale={_DIFFUSERS_TIMESTEP_SCALE} (t = 1000 * sigma)"
        )
    if cfg["model_channels"] % cfg["num_heads"]:
        raise ValueError(f"model_channels={cfg['model_channels']} is not divisible by num_heads={cfg['num_heads']}")


def diffusers_configs(config: Any, *, img_context_num_tokens: int = 256) -> tuple[dict, dict]:
    """diffusers `(transformer_config, controlnet_config)` for our single-view network config.

    `config` is `net.config` (or a mapping with the same official field names). `img_context_num_tokens` only
    tells the diffusers pipeline how many (zero) image tokens to feed; 256 is SigLIP2's count.
    """
    cfg = _config_dict(config)
    _check_supported(cfg)

    model_channels = cfg["model_channels"]
    num_heads = cfg["num_heads"]
    latent_channels = cfg.get("in_channels", 16)
    image_context_dim = cfg.get("extra_image_context_dim")
    # (t, h, w) order in diffusers.
    max_size = (cfg["max_frames"], cfg["max_img_h"], cfg["max_img_w"])
    patch_size = (cfg["patch_temporal"], cfg["patch_spatial"], cfg["patch_spatial"])
    rope_scale = (
        float(cfg["rope_t_extrapolation_ratio"]),
        float(cfg["rope_h_extrapolation_ratio"]),
        float(cfg["rope_w_extrapolation_ratio"]),
    )
    common = dict(
        num_attention_heads=num_heads,
        attention_head_dim=model_channels // num_heads,
        mlp_ratio=float(cfg["mlp_ratio"]),
        text_embed_dim=cfg["crossattn_emb_channels"],
        adaln_lora_dim=cfg["adaln_lora_dim"],
        max_size=max_size,
        patch_size=patch_size,
        rope_scale=rope_scale,
        extra_pos_embed_type=None,
        use_crossattn_projection=bool(cfg["use_crossattn_projection"]),
        crossattn_proj_in_channels=cfg["crossattn_proj_in_channels"],
        encoder_hidden_states_channels=cfg["crossattn_emb_channels"],
        img_context_dim_in=image_context_dim,
        img_context_dim_out=model_channels,
    )
    transformer_config = dict(
        # latent + condition mask; the padding mask channel is added inside (concat_padding_mask).
        in_channels=latent_channels + 1,
        out_channels=cfg.get("out_channels", 16),
        num_layers=cfg["num_blocks"],
        concat_padding_mask=True,
        controlnet_block_every_n=cfg["vace_block_every_n"],
        img_context_num_tokens=img_context_num_tokens,
        **common,
    )
    controlnet_config = dict(
        n_controlnet_blocks=len(range(0, cfg["num_blocks"], cfg["vace_block_every_n"])),
        # zero-padded control latents + condition mask + padding mask
        in_channels=latent_channels * cfg["num_max_modalities"] + 2,
        # base latent + condition mask + padding mask (input of patch_embed_base = our x_embedder)
        latent_channels=latent_channels + 2,
        model_channels=model_channels,
        **common,
    )
    return transformer_config, controlnet_config


# ---------------------------------------------------------------------------------------------------------------
# State dicts
# ---------------------------------------------------------------------------------------------------------------


def _network_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our parameter keys: strips a `net.` prefix and drops the released files' non-parameter entries."""
    keys = list(state_dict)
    if has_ema(keys):
        raise ValueError(
            f"The state dict holds `{EMA_PREFIX}*` keys; pass the weights of one network (e.g. the EMA weights "
            f"renamed to `{NET_PREFIX}*`, as in model_ema_fp32.pt)"
        )
    prefixed = [k.startswith(NET_PREFIX) for k in keys]
    if any(prefixed) and not all(prefixed):
        raise ValueError(f"The state dict mixes `{NET_PREFIX}`-prefixed and unprefixed keys")
    out = {}
    for key, value in state_dict.items():
        key = without_network_prefix(key)
        if is_non_parameter(key):  # the released files' counters, RoPE buffers and `_extra_state`
            continue
        if key.startswith(_MULTIVIEW_MARKERS):
            raise ValueError(f"Key {key!r} belongs to the multiview network, which diffusers does not support")
        out[key] = value
    return out


class DiffusersCheckpoint(NamedTuple):
    transformer_config: dict
    transformer_state_dict: dict[str, torch.Tensor]
    controlnet_config: dict
    controlnet_state_dict: dict[str, torch.Tensor]


def to_diffusers(
    state_dict: Mapping[str, torch.Tensor], config: Any, *, img_context_num_tokens: int = 256
) -> DiffusersCheckpoint:
    """Split our single-view state dict into diffusers transformer and controlnet state dicts + configs.

    `state_dict` is `net.state_dict()` (or a released / exported file's `net.*` entries). Tensors are not
    copied: the controlnet's duplicated embedders share storage with the transformer's. Returns
    `(transformer_config, transformer_state_dict, controlnet_config, controlnet_state_dict)`.
    """
    transformer_config, controlnet_config = diffusers_configs(config, img_context_num_tokens=img_context_num_tokens)
    params = _network_state_dict(state_dict)

    transformer_sd: dict[str, torch.Tensor] = {}
    controlnet_sd: dict[str, torch.Tensor] = {}
    for key, value in params.items():
        if key.startswith("blocks."):
            transformer_sd[_rename_block_key(key, "transformer_blocks")] = value
            continue
        if key.startswith("control_blocks."):
            controlnet_sd[_rename_block_key(key, "control_blocks")] = value
            continue
        module_path, param_name = _split_key(key)
        if module_path in _CONTROLNET_RENAMES:
            controlnet_sd[f"{_CONTROLNET_RENAMES[module_path]}.{param_name}"] = value
            continue
        if module_path not in _TRANSFORMER_RENAMES:
            raise ValueError(f"Unexpected key {key!r}: no diffusers counterpart")
        transformer_sd[f"{_TRANSFORMER_RENAMES[module_path]}.{param_name}"] = value
        if module_path in _CONTROLNET_COPIES:
            controlnet_sd[f"{_CONTROLNET_COPIES[module_path]}.{param_name}"] = value

    return DiffusersCheckpoint(transformer_config, transformer_sd, controlnet_config, controlnet_sd)


def from_diffusers(
    transformer_state_dict: Mapping[str, torch.Tensor], controlnet_state_dict: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The inverse of `to_diffusers`: our state dict (keys without `net.`) from the two diffusers state dicts.

    The controlnet's copies of the shared embedders must equal the transformer's; if they differ a ValueError
    is raised (a diffusers user may have fine-tuned one of them; our network has a single copy).
    """
    inverse_blocks = {v: k for k, v in _BLOCK_RENAMES.items()}
    inverse_transformer = {v: k for k, v in _TRANSFORMER_RENAMES.items()}
    inverse_controlnet = {v: k for k, v in _CONTROLNET_RENAMES.items()}
    inverse_copies = {v: k for k, v in _CONTROLNET_COPIES.items()}

    def rename_block(key: str, new_list_name: str) -> str:
        _, index, rest = key.split(".", 2)
        module_path, param_name = _split_key(rest)
        if module_path not in inverse_blocks:
            raise ValueError(f"Unexpected diffusers key {key!r}")
        return f"{new_list_name}.{index}.{inverse_blocks[module_path]}.{param_name}"

    out: dict[str, torch.Tensor] = {}
    for key, value in transformer_state_dict.items():
        if key.startswith("transformer_blocks."):
            out[rename_block(key, "blocks")] = value
            continue
        module_path, param_name = _split_key(key)
        if module_path not in inverse_transformer:
            raise ValueError(f"Unexpected diffusers transformer key {key!r}")
        out[f"{inverse_transformer[module_path]}.{param_name}"] = value

    for key, value in controlnet_state_dict.items():
        if key.startswith("control_blocks."):
            out[rename_block(key, "control_blocks")] = value
            continue
        module_path, param_name = _split_key(key)
        if module_path in inverse_controlnet:
            out[f"{inverse_controlnet[module_path]}.{param_name}"] = value
        elif module_path in inverse_copies:
            ours = f"{inverse_copies[module_path]}.{param_name}"
            if ours not in out:
                raise ValueError(f"Controlnet key {key!r} duplicates {ours!r}, which the transformer lacks")
            if out[ours].shape != value.shape or not torch.equal(out[ours], value.to(out[ours].dtype)):
                raise ValueError(f"Controlnet copy {key!r} differs from the transformer's {ours!r}")
        else:
            raise ValueError(f"Unexpected diffusers controlnet key {key!r}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------


def set_qk_norm_eps(model: torch.nn.Module, eps: float = _ORIGINAL_QK_NORM_EPS) -> None:
    """Set the eps of every attention q/k RMSNorm (`norm_q`, `norm_k`) of a diffusers Cosmos model.

    diffusers 0.38.0 builds them with eps 1e-5, the original network uses 1e-6. This is not part of the diffusers
    config, so a model loaded with `from_pretrained` has 1e-5 again; the difference is ~1e-5 relative.
    """
    for name, module in model.named_modules():
        if name.endswith((".norm_q", ".norm_k")) and hasattr(module, "eps"):
            module.eps = eps


def build_diffusers_models(
    state_dict: Mapping[str, torch.Tensor],
    config: Any,
    *,
    dtype: Optional[torch.dtype] = None,
    device: Union[str, torch.device, None] = None,
    match_original_qk_norm_eps: bool = True,
):
    """Instantiate diffusers `(CosmosTransformer3DModel, CosmosControlNetModel)` and load them strictly.

    The models are built on the meta device and the given tensors are assigned, not copied: they share storage
    with `state_dict` (clone it first to get independent weights) unless `dtype` / `device` convert them.
    With `match_original_qk_norm_eps` the q/k norms get the original eps 1e-6 (see `set_qk_norm_eps`), so the
    models compute what our network computes.
    """
    from diffusers import CosmosControlNetModel, CosmosTransformer3DModel

    ckpt = to_diffusers(state_dict, config)
    models = []
    for cls, model_config, model_sd in (
        (CosmosTransformer3DModel, ckpt.transformer_config, ckpt.transformer_state_dict),
        (CosmosControlNetModel, ckpt.controlnet_config, ckpt.controlnet_state_dict),
    ):
        with torch.device("meta"):
            model = cls.from_config(model_config)
        # The RoPE tables are computed in forward, so a diffusers Cosmos model has no buffers: assigning the
        # converted tensors materialises every parameter. strict=True reports missing / unexpected keys.
        model.load_state_dict(model_sd, strict=True, assign=True)
        if dtype is not None or device is not None:
            model = model.to(device=device, dtype=dtype)
        if match_original_qk_norm_eps:
            set_qk_norm_eps(model, _ORIGINAL_QK_NORM_EPS)
        model.eval()
        models.append(model)
    transformer, controlnet = models
    return transformer, controlnet


def _json_config(class_name: str, config: dict) -> dict:
    import diffusers

    return {"_class_name": class_name, "_diffusers_version": diffusers.__version__, **config}


def save_diffusers(
    out_dir: Union[str, os.PathLike],
    state_dict: Mapping[str, torch.Tensor],
    config: Any,
    *,
    dtype: Optional[torch.dtype] = None,
    img_context_num_tokens: int = 256,
) -> dict[str, str]:
    """Write `out_dir/transformer` and `out_dir/controlnet` in diffusers' `from_pretrained` layout.

    Each folder gets `config.json` and `diffusion_pytorch_model.safetensors`. Nothing is instantiated, so this
    works for the 2B network on a small machine. Returns the two folder paths. To run them in the pipeline,
    take the other components (Reason1 text encoder, Wan VAE, scheduler) from the official diffusers branch:

        transformer = CosmosTransformer3DModel.from_pretrained(f"{out_dir}/transformer", torch_dtype=torch.bfloat16)
        controlnet = CosmosControlNetModel.from_pretrained(f"{out_dir}/controlnet", torch_dtype=torch.bfloat16)
        pipe = Cosmos2_5_TransferPipeline.from_pretrained(
            "nvidia/Cosmos-Transfer2.5-2B", revision="diffusers/general",
            transformer=transformer, controlnet=controlnet, torch_dtype=torch.bfloat16,
        )

    (`from_pretrained` needs the `accelerate` package, see the module docstring.)
    """
    from safetensors.torch import save_file

    ckpt = to_diffusers(state_dict, config, img_context_num_tokens=img_context_num_tokens)
    paths = {}
    for subfolder, class_name, model_config, model_sd in (
        ("transformer", TRANSFORMER_CLASS_NAME, ckpt.transformer_config, ckpt.transformer_state_dict),
        ("controlnet", CONTROLNET_CLASS_NAME, ckpt.controlnet_config, ckpt.controlnet_state_dict),
    ):
        folder = os.path.join(os.fspath(out_dir), subfolder)
        os.makedirs(folder, exist_ok=True)
        tensors = {}
        for key, value in model_sd.items():
            value = value.detach().to("cpu")
            if dtype is not None:
                value = value.to(dtype)
            tensors[key] = value.contiguous()
        save_file(tensors, os.path.join(folder, "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(_json_config(class_name, model_config), f, indent=2, sort_keys=True)
        paths[subfolder] = folder
    return paths


# ---------------------------------------------------------------------------------------------------------------
# Calling the diffusers modules with our network's arguments
# ---------------------------------------------------------------------------------------------------------------


def diffusers_timestep(
    timesteps_B_T: torch.Tensor, num_frames: int, timestep_scale: float = _DIFFUSERS_TIMESTEP_SCALE
) -> torch.Tensor:
    """Our `timesteps_B_T` (0..1000 scale, shape [B], [B, 1] or [B, T]) as diffusers' sigma.

    One t per sample gives shape [B] (diffusers then computes the adaLN modulation once per sample);
    per-frame t gives [B, 1, T, 1, 1] (diffusers then broadcasts it to every token before the modulation MLPs).
    """
    if timesteps_B_T.ndim == 1:
        timesteps_B_T = timesteps_B_T.unsqueeze(1)
    batch_size, num_t = timesteps_B_T.shape
    sigma_B_T = timesteps_B_T * timestep_scale
    if num_t == 1:
        return sigma_B_T[:, 0]
    if num_t != num_frames:
        raise ValueError(f"timesteps_B_T has {num_t} frames, the latent has {num_frames}")
    return sigma_B_T.reshape(batch_size, 1, num_frames, 1, 1)


def _control_scale(control_context_scale: Union[float, torch.Tensor, list]) -> Union[float, list[float]]:
    if isinstance(control_context_scale, torch.Tensor):
        if control_context_scale.numel() == 1:
            return float(control_context_scale)
        if control_context_scale.ndim == 1:
            return [float(s) for s in control_context_scale]
        raise ValueError("diffusers only takes scalar (or one per control block) control scales, not spatial maps")
    if isinstance(control_context_scale, (list, tuple)):
        return [float(s) for s in control_context_scale]
    return float(control_context_scale)


def diffusers_velocity(
    transformer: torch.nn.Module,
    controlnet: torch.nn.Module,
    x_B_C_T_H_W: torch.Tensor,
    timesteps_B_T: torch.Tensor,
    crossattn_emb: torch.Tensor,
    latent_control_input: torch.Tensor,
    condition_video_input_mask_B_C_T_H_W: torch.Tensor,
    padding_mask: torch.Tensor,
    control_context_scale: Union[float, torch.Tensor, list] = 1.0,
    img_context_emb: Optional[torch.Tensor] = None,
    timestep_scale: float = _DIFFUSERS_TIMESTEP_SCALE,
) -> torch.Tensor:
    """Velocity of diffusers' transformer + controlnet, called with our network's forward arguments.

    This is what `Cosmos2_5_TransferPipeline` does in one denoising step (controlnet, then transformer with its
    hints), minus the pipeline's replacement of the conditioning frames' velocity. Gradients flow if enabled.
    """
    batch_size, _, num_frames, _, _ = x_B_C_T_H_W.shape
    if padding_mask.shape[0] not in (1, batch_size):
        raise ValueError(f"padding_mask has batch {padding_mask.shape[0]}, x has {batch_size}")
    # diffusers repeats the padding mask over the batch itself, so it only accepts a batch of 1. Run a batch with
    # per-sample masks one sample at a time.
    if padding_mask.shape[0] > 1 and batch_size > 1:
        if not torch.equal(padding_mask, padding_mask[:1].expand_as(padding_mask)):
            velocities = []
            for i in range(batch_size):
                sample = slice(i, i + 1)
                velocities.append(
                    diffusers_velocity(
                        transformer,
                        controlnet,
                        x_B_C_T_H_W[sample],
                        timesteps_B_T[sample],
                        crossattn_emb[sample],
                        latent_control_input[sample],
                        condition_video_input_mask_B_C_T_H_W[sample],
                        padding_mask[sample],
                        control_context_scale,
                        None if img_context_emb is None else img_context_emb[sample],
                        timestep_scale,
                    )
                )
            return torch.cat(velocities, dim=0)
        padding_mask = padding_mask[:1]

    timestep = diffusers_timestep(timesteps_B_T, num_frames, timestep_scale).to(x_B_C_T_H_W.dtype)
    if getattr(transformer.config, "img_context_dim_in", None):
        encoder_hidden_states = (crossattn_emb, img_context_emb)
    elif img_context_emb is not None:
        raise ValueError("img_context_emb given, but the diffusers transformer has no image-context modules")
    else:
        encoder_hidden_states = crossattn_emb

    condition_mask = condition_video_input_mask_B_C_T_H_W.to(x_B_C_T_H_W.dtype)
    control_hints = controlnet(
        controls_latents=latent_control_input,
        latents=x_B_C_T_H_W,
        timestep=timestep,
        encoder_hidden_states=encoder_hidden_states,
        condition_mask=condition_mask,
        conditioning_scale=_control_scale(control_context_scale),
        padding_mask=padding_mask,
        return_dict=False,
    )[0]
    return transformer(
        hidden_states=x_B_C_T_H_W,
        timestep=timestep,
        encoder_hidden_states=encoder_hidden_states,
        block_controlnet_hidden_states=control_hints,
        condition_mask=condition_mask,
        padding_mask=padding_mask,
        return_dict=False,
    )[0]
