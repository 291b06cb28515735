"""Our single-view network against diffusers 0.38.0 (`CosmosTransformer3DModel` + `CosmosControlNetModel`).

diffusers is the numerical oracle for single view: with the same weights, renamed by
`cosmos_composer.checkpoint.diffusers_format`, both must predict the same velocity. Every parameter is
randomised first, including the ones that start at zero (before_proj / after_proj, adaln_modulation.2) or
one (RMSNorm weights); otherwise whole branches would contribute nothing and could be wrong unnoticed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import CosmosControlNetModel, CosmosTransformer3DModel  # noqa: E402

from cosmos_composer.checkpoint.diffusers_format import (  # noqa: E402
    build_diffusers_models,
    diffusers_configs,
    diffusers_velocity,
    from_diffusers,
    save_diffusers,
    set_qk_norm_eps,
    to_diffusers,
)
from cosmos_composer.models import build_network, get_config  # noqa: E402

# ||ours - diffusers|| / ||diffusers|| in fp32. Measured: at most 7e-7 (36 seed x variant x scale cases).
# 1e-5 is stricter than the 1e-4 asked for: a 1% change of any single weight tensor gives >= 5e-5 here,
# so 1e-4 would miss some of those, 1e-5 misses none.
RELATIVE_TOLERANCE = 1e-5
CONTROL_SCALES = (0.0, 0.5, 1.0)
VAE_SPATIAL_FACTOR = 8  # padding masks come at pixel resolution and are resized inside
# At the natural scale the q/k activations have a mean square near 1, so the q/k RMSNorm eps (1e-6) moves the
# output by ~2e-6 relative when it is 1e-5: below any safe tolerance. With the q/k projections scaled by 1e-3 the
# mean square is ~1e-6, the size of the eps: eps 1e-5 then changes every block's output by ~1e-1 and even
# 1.1e-6 by ~4e-3, while ours and diffusers still agree to ~4e-7 (measured, 3 seeds x 2 variants).
SMALL_QK_SCALE = 1e-3
QK_PROJECTIONS = ("q_proj.weight", "k_proj.weight", "q_img.weight", "k_img.weight")

_REPO = Path(__file__).resolve().parents[1]
_RELEASED_KEYS = _REPO / "cosmos_composer" / "spec" / "released_checkpoint_keys.json"

# Two tiny single-view networks. "image-context" also changes the control layout (5 blocks, hints after blocks
# 0, 2 and 4), the temporal RoPE ratio, uses a non-square latent, one timestep per sample and already projected
# text embeddings on our side.
VARIANTS = {
    "text": dict(
        overrides={},
        latent_T_H_W=(3, 8, 8),
        per_frame_timesteps=True,
        image_tokens=0,
        projected_text_for_ours=False,
    ),
    "image-context": dict(
        overrides=dict(extra_image_context_dim=40, num_blocks=5, rope_t_extrapolation_ratio=2.0),
        latent_T_H_W=(2, 8, 12),
        per_frame_timesteps=False,
        image_tokens=8,
        projected_text_for_ours=True,
    ),
}


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).norm() / reference.norm()).item()


@torch.no_grad()
def randomize_parameters(net: torch.nn.Module, seed: int) -> None:
    """Fill every parameter from a seeded generator: norm weights near 1, biases small, matrices ~1/sqrt(fan_in)."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in sorted(net.named_parameters()):
        noise = torch.randn(param.shape, generator=generator)
        if param.ndim == 1 and "norm" in name:
            param.copy_(1.0 + 0.2 * noise)
        elif param.ndim == 1:
            param.copy_(0.2 * noise)
        else:
            param.copy_(noise / param.shape[1] ** 0.5)


def build_tiny_network(variant: str, seed: int):
    net = build_network("tiny-singleview", **VARIANTS[variant]["overrides"])
    randomize_parameters(net, seed)
    return net.eval()


def make_inputs(net, variant: str, seed: int) -> dict:
    """Network inputs with conditioning frames, per-sample padding masks and a single control modality."""
    spec = VARIANTS[variant]
    config = net.config
    generator = torch.Generator().manual_seed(1000 + seed)
    B, num_text_tokens = 2, 16
    T, H, W = spec["latent_T_H_W"]

    condition_mask = torch.zeros(B, 1, T, H, W)
    condition_mask[0, :, :1] = 1.0  # sample 0: the first latent frame is a conditioning frame
    condition_mask[1, :, : T - 1] = 1.0  # sample 1: all but the last

    H_px, W_px = H * VAE_SPATIAL_FACTOR, W * VAE_SPATIAL_FACTOR
    padding_mask = torch.zeros(B, 1, H_px, W_px)
    padding_mask[1, :, :, W_px * 3 // 4 :] = 1.0  # sample 1 is letterboxed on the right and at the bottom
    padding_mask[1, :, H_px - VAE_SPATIAL_FACTOR * 2 :, :] = 1.0

    timesteps = torch.rand(B, T if spec["per_frame_timesteps"] else 1, generator=generator) * 1000.0
    if not spec["per_frame_timesteps"]:
        timesteps = timesteps[:, 0]  # [B]

    inputs = dict(
        x_B_C_T_H_W=torch.randn(B, config.in_channels, T, H, W, generator=generator),
        timesteps_B_T=timesteps,
        crossattn_emb=torch.randn(B, num_text_tokens, config.crossattn_proj_in_channels, generator=generator),
        # One modality (16 channels); both implementations zero-pad it to 16 * num_max_modalities.
        latent_control_input=torch.randn(B, config.in_channels, T, H, W, generator=generator),
        condition_video_input_mask_B_C_T_H_W=condition_mask,
        padding_mask=padding_mask,
    )
    if spec["image_tokens"]:
        inputs["img_context_emb"] = torch.randn(
            B, spec["image_tokens"], config.extra_image_context_dim, generator=generator
        )
    return inputs


def our_velocity(net, inputs: dict, control_context_scale, projected_text: bool) -> torch.Tensor:
    inputs = dict(inputs)
    if projected_text:  # the cached 1024-d (here 32-d) embeddings path
        inputs["crossattn_emb"] = net.crossattn_proj(inputs["crossattn_emb"])
    return net(**inputs, control_context_scale=control_context_scale)


# ---------------------------------------------------------------------------------------------------------------
# Numerical parity
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("seed", [0, 1, 2])
@torch.no_grad()
def test_velocity_matches_diffusers(variant: str, seed: int):
    net = build_tiny_network(variant, seed)
    # build_diffusers_models sets diffusers' q/k RMSNorm eps (1e-5 in diffusers 0.38.0) to the original 1e-6,
    # so the two compute the same function; left at 1e-5 the difference is ~2e-6 relative.
    transformer, controlnet = build_diffusers_models(net.state_dict(), net.config)
    inputs = make_inputs(net, variant, seed)
    projected_text = VARIANTS[variant]["projected_text_for_ours"]

    velocities = {}
    for scale in CONTROL_SCALES:
        ours = our_velocity(net, inputs, scale, projected_text)
        reference = diffusers_velocity(transformer, controlnet, **inputs, control_context_scale=scale)
        assert ours.shape == reference.shape == inputs["x_B_C_T_H_W"].shape
        error = relative_error(ours, reference)
        assert error < RELATIVE_TOLERANCE, f"{variant} seed={seed} scale={scale}: relative error {error:.3e}"
        velocities[scale] = reference

    # The control branch must matter, or the scale 0.5 / 1 comparisons would test nothing beyond scale 0.
    assert relative_error(velocities[1.0], velocities[0.0]) > 1e-2
    # A 0-d tensor scale means the same as the float.
    ours = our_velocity(net, inputs, torch.tensor(0.5), projected_text)
    assert relative_error(ours, velocities[0.5]) < RELATIVE_TOLERANCE

    if "img_context_emb" in inputs:
        # Without image tokens both skip the image attention (diffusers gets `(text, None)`).
        no_image = {k: v for k, v in inputs.items() if k != "img_context_emb"}
        ours = our_velocity(net, no_image, 1.0, projected_text)
        reference = diffusers_velocity(transformer, controlnet, **no_image, control_context_scale=1.0)
        assert relative_error(ours, reference) < RELATIVE_TOLERANCE
        assert relative_error(reference, velocities[1.0]) > 1e-4  # the image tokens do change the output


@torch.no_grad()
def scale_query_key_projections(net: torch.nn.Module, factor: float) -> None:
    for name, param in net.named_parameters():
        if name.endswith(QK_PROJECTIONS):
            param.mul_(factor)


@contextlib.contextmanager
def recorded_block_outputs(net, transformer, controlnet):
    """Record, in both implementations, the token stream after every base block (its hint added) and each control
    block's stream and hint, as [B, T*H*W, D] tensors: `(ours, theirs)`, each {"base": [...], "control": [...]}.

    Ours adds a hint after its base block, diffusers inside it: so the stream after base block k is read where it
    enters block k + 1 (or the final layer). diffusers runs a batch with per-sample padding masks one sample at a
    time; `_by_block` puts the samples back together.
    """
    ours, theirs = {"base": [], "control": []}, {"base": [], "control": []}

    def record_input(store):
        return lambda module, args: store.append(args[0].flatten(1, -2))

    def record_control_output(store):
        return lambda module, args, output: store.append(torch.cat([t.flatten(1, -2) for t in output], dim=-1))

    handles = [block.register_forward_pre_hook(record_input(ours["base"])) for block in net.blocks[1:]]
    handles.append(net.final_layer.register_forward_pre_hook(record_input(ours["base"])))
    handles += [block.register_forward_hook(record_control_output(ours["control"])) for block in net.control_blocks]
    handles += [
        block.register_forward_pre_hook(record_input(theirs["base"])) for block in transformer.transformer_blocks[1:]
    ]
    handles.append(transformer.norm_out.register_forward_pre_hook(record_input(theirs["base"])))
    handles += [
        block.register_forward_hook(record_control_output(theirs["control"])) for block in controlnet.control_blocks
    ]
    try:
        yield ours, theirs
    finally:
        for handle in handles:
            handle.remove()


def _by_block(outputs: list[torch.Tensor], num_blocks: int) -> list[torch.Tensor]:
    """[sample 0's blocks..., sample 1's blocks...] or [all samples' blocks...] -> one batch tensor per block."""
    return [torch.cat(outputs[block::num_blocks]) for block in range(num_blocks)]


@pytest.mark.parametrize("qk_scale", [1.0, SMALL_QK_SCALE], ids=["natural-qk", "small-qk"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@torch.no_grad()
def test_every_block_matches_diffusers(variant: str, qk_scale: float):
    """Each block's output agrees, also with q/k activations small enough that the q/k RMSNorm eps matters."""
    seed = 5
    net = build_tiny_network(variant, seed)
    scale_query_key_projections(net, qk_scale)
    transformer, controlnet = build_diffusers_models(net.state_dict(), net.config)
    inputs = make_inputs(net, variant, seed)
    with recorded_block_outputs(net, transformer, controlnet) as (ours, theirs):
        velocity = our_velocity(net, inputs, 1.0, VARIANTS[variant]["projected_text_for_ours"])
        reference = diffusers_velocity(transformer, controlnet, **inputs, control_context_scale=1.0)

    # Control blocks first: they run first, so the first failure names the block where the two part.
    for stage, blocks in (("control", net.control_blocks), ("base", net.blocks)):
        assert len(ours[stage]) == len(blocks) and len(theirs[stage]) in (len(blocks), 2 * len(blocks))
        for k, (a, b) in enumerate(zip(ours[stage], _by_block(theirs[stage], len(blocks)))):
            assert a.shape == b.shape, f"{stage} block {k}: {tuple(a.shape)} vs {tuple(b.shape)}"
            error = relative_error(a, b)
            assert error < RELATIVE_TOLERANCE, f"{variant} {stage} block {k}: relative error {error:.3e}"
    assert relative_error(velocity, reference) < RELATIVE_TOLERANCE

    if qk_scale == SMALL_QK_SCALE:  # here the eps does matter: diffusers' own 1e-5 is far off
        set_qk_norm_eps(transformer, 1e-5)
        set_qk_norm_eps(controlnet, 1e-5)
        other_eps = diffusers_velocity(transformer, controlnet, **inputs, control_context_scale=1.0)
        assert relative_error(velocity, other_eps) > 100 * RELATIVE_TOLERANCE


def load_saved_model(cls, folder: str):
    """diffusers' own loader when possible; by hand (same files, strict) without `accelerate`.

    In diffusers 0.38.0 `from_pretrained` of the Cosmos models raises without `accelerate`: their
    `_keep_in_fp32_modules` demands low_cpu_mem_usage, which diffusers turns off when accelerate is missing.
    """
    if importlib.util.find_spec("accelerate") is not None:
        return cls.from_pretrained(folder).eval()
    from safetensors.torch import load_file

    model = cls.from_config(cls.load_config(folder))
    model.load_state_dict(load_file(str(Path(folder) / "diffusion_pytorch_model.safetensors")), strict=True)
    return model.eval()


@torch.no_grad()
def test_saved_diffusers_folders_load_into_the_same_function(tmp_path):
    """`save_diffusers` writes `transformer/` and `controlnet/` folders in diffusers' `from_pretrained` layout."""
    net = build_tiny_network("image-context", seed=3)
    paths = save_diffusers(tmp_path, net.state_dict(), net.config)
    transformer = load_saved_model(CosmosTransformer3DModel, paths["transformer"])
    controlnet = load_saved_model(CosmosControlNetModel, paths["controlnet"])
    for model in (transformer, controlnet):
        set_qk_norm_eps(model, 1e-6)  # not part of the diffusers config, see test_velocity_matches_diffusers

    inputs = make_inputs(net, "image-context", seed=3)
    ours = net(**inputs, control_context_scale=0.5)
    reference = diffusers_velocity(transformer, controlnet, **inputs, control_context_scale=0.5)
    assert relative_error(ours, reference) < RELATIVE_TOLERANCE


# ---------------------------------------------------------------------------------------------------------------
# Key mapping and configs
# ---------------------------------------------------------------------------------------------------------------


def _diffusers_shapes(config) -> tuple[dict, dict]:
    """Parameter shapes of the diffusers models for our config, built on the meta device (no memory)."""
    transformer_config, controlnet_config = diffusers_configs(config)
    with torch.device("meta"):
        transformer = CosmosTransformer3DModel.from_config(transformer_config)
        controlnet = CosmosControlNetModel.from_config(controlnet_config)
    return (
        {k: tuple(v.shape) for k, v in transformer.state_dict().items()},
        {k: tuple(v.shape) for k, v in controlnet.state_dict().items()},
    )


def _assert_converts_exactly(state_dict, config) -> None:
    ckpt = to_diffusers(state_dict, config)
    expected_transformer, expected_controlnet = _diffusers_shapes(config)
    got_transformer = {k: tuple(v.shape) for k, v in ckpt.transformer_state_dict.items()}
    got_controlnet = {k: tuple(v.shape) for k, v in ckpt.controlnet_state_dict.items()}
    assert got_transformer == expected_transformer
    assert got_controlnet == expected_controlnet


@pytest.mark.parametrize(
    "preset", ["transfer2.5-2b-singleview", "transfer2.5-2b-singleview-general", "tiny-singleview"]
)
def test_preset_state_dicts_map_onto_diffusers(preset: str):
    with torch.device("meta"):
        net = build_network(preset)
    _assert_converts_exactly(net.state_dict(), net.config)


def test_released_2b_configs_match_the_diffusers_release():
    """The configs of the diffusers conversion of "Cosmos-2.5-Transfer-General-2B"."""
    transformer_config, controlnet_config = diffusers_configs(get_config("transfer2.5-2b-singleview-general"))
    expected_transformer = dict(
        in_channels=17, out_channels=16, num_attention_heads=16, attention_head_dim=128, num_layers=28,
        mlp_ratio=4.0, text_embed_dim=1024, adaln_lora_dim=256, max_size=(128, 240, 240), patch_size=(1, 2, 2),
        rope_scale=(1.0, 3.0, 3.0), concat_padding_mask=True, extra_pos_embed_type=None,
        use_crossattn_projection=True, crossattn_proj_in_channels=100352, encoder_hidden_states_channels=1024,
        controlnet_block_every_n=7, img_context_dim_in=1152, img_context_num_tokens=256, img_context_dim_out=2048,
    )  # fmt: skip
    assert transformer_config == expected_transformer
    assert controlnet_config["n_controlnet_blocks"] == 4
    assert controlnet_config["in_channels"] == 130
    assert controlnet_config["latent_channels"] == 18
    assert controlnet_config["img_context_dim_in"] == 1152

    transformer_config, _ = diffusers_configs(get_config("transfer2.5-2b-singleview"))
    assert transformer_config["img_context_dim_in"] is None  # the post-train default has no image context


@pytest.mark.parametrize(
    "variant,preset",
    [
        ("singleview_general", "transfer2.5-2b-singleview-general"),
        ("singleview_posttrain", "transfer2.5-2b-singleview"),
    ],
)
def test_released_checkpoint_keys_map_onto_diffusers(variant: str, preset: str):
    """The released files' `net.*` keys (with their non-parameter entries) convert to strict diffusers keys."""
    released = json.loads(_RELEASED_KEYS.read_text())[variant]
    state_dict = {key: torch.empty(shape, device="meta") for key, shape in released.items()}
    # Entries a released file may also hold (iteration counter, RoPE table, TransformerEngine state); dropped.
    for extra in (
        "net.accum_iteration",
        "net.pos_embedder.seq",
        "net.blocks.0.cross_attn.attn_op._extra_state",
    ):
        state_dict[extra] = torch.empty(1, device="meta")
    _assert_converts_exactly(state_dict, get_config(preset))


def test_round_trip_is_lossless():
    net = build_tiny_network("image-context", seed=4)
    state_dict = net.state_dict()
    back = from_diffusers(*to_diffusers(state_dict, net.config)[1::2])
    assert set(back) == set(state_dict)
    for key, value in state_dict.items():
        assert torch.equal(back[key], value), key


def test_multiview_is_rejected():
    with torch.device("meta"):
        net = build_network("tiny-multiview")
    with pytest.raises(ValueError, match="multiview"):
        to_diffusers(net.state_dict(), net.config)
    # A multiview state dict with a (wrongly) single-view config is caught by its keys.
    single_view_config = get_config("tiny-singleview")
    with pytest.raises(ValueError, match="multiview"):
        to_diffusers(net.state_dict(), single_view_config)
