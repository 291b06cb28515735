"""The network: released key set and sizes, multiview features, control-branch init, precision islands.

Single-view numerics are checked against diffusers in test_network_diffusers_parity.py.
"""

import json
import math
from pathlib import Path

import pytest
import torch

from cosmos_composer.models import build_network, get_config
from cosmos_composer.models.network import Block
from cosmos_composer.models.released_keys import RELEASED_VARIANT_OF_PRESET, released_parameter_shapes

SHARED_SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec" / "released_checkpoint_keys.json"


def _randomize(net: torch.nn.Module, seed: int = 0, std: float = 0.05) -> None:
    """Give every parameter (zero-initialised ones too) random values, so comparisons are not trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std + (1.0 if p.ndim == 1 else 0.0))


def _inputs(config, B=2, T=3, H=8, W=8, text_len=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cond_mask = torch.zeros(B, 1, T, H, W)
    cond_mask[:, :, :1] = 1.0
    return dict(
        x_B_C_T_H_W=torch.randn(B, 16, T, H, W, generator=gen),
        timesteps_B_T=torch.rand(B, 1, generator=gen) * 1000,
        crossattn_emb=torch.randn(B, text_len, config.crossattn_proj_in_channels, generator=gen),
        latent_control_input=torch.randn(B, 16, T, H, W, generator=gen),
        condition_video_input_mask_B_C_T_H_W=cond_mask,
        padding_mask=torch.zeros(B, 1, H * 8, W * 8),
    )


def _multiview_inputs(config, views=3, B=1, H=4, W=4, seed=0):
    inputs = _inputs(config, B=B, T=views * config.state_t, H=H, W=W, text_len=views * 8, seed=seed)
    return inputs


# ----------------------------------------------------------------------------- released checkpoints
@pytest.mark.parametrize("preset", sorted(RELEASED_VARIANT_OF_PRESET))
def test_2b_presets_have_exactly_the_released_keys_and_shapes(preset):
    with torch.device("meta"):
        net = build_network(preset)
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    released = released_parameter_shapes(preset)
    assert sorted(set(ours) - set(released)) == []
    assert sorted(set(released) - set(ours)) == []
    mismatched = {k: (ours[k], released[k]) for k in ours if ours[k] != released[k]}
    assert mismatched == {}


def test_packaged_key_spec_is_the_shared_one():
    if not SHARED_SPEC.exists():
        pytest.skip("../shared is not beside this checkout")
    from cosmos_composer.models import released_keys

    assert json.loads(released_keys._SPEC_FILE.read_text()) == json.loads(SHARED_SPEC.read_text())


@pytest.mark.parametrize(
    "preset, trainable_millions",
    [("transfer2.5-2b-singleview", 299), ("transfer2.5-2b-multiview", 329)],
)
def test_2b_parameter_counts(preset, trainable_millions):
    with torch.device("meta"):
        net = build_network(preset)
    trainable = set(net.control_branch_parameter_names())
    n_trainable = sum(p.numel() for n, p in net.named_parameters() if n in trainable)
    n_base = sum(p.numel() for n, p in net.named_parameters() if n not in trainable)
    assert round(n_trainable / 1e6) == trainable_millions
    assert round(n_base / 1e9, 2) == 2.06
    # The control branch is the control blocks, the control embedder and (multiview) the hint block.
    assert all(n.startswith(("control_blocks.", "control_embedder.", "input_hint_block.")) for n in trainable)
    assert any(n.startswith("control_blocks.3.") for n in trainable)


def test_one_block_has_the_documented_parameter_count():
    with torch.device("meta"):
        net = build_network("transfer2.5-2b-singleview")
    assert sum(p.numel() for p in net.blocks[0].parameters()) == 69_206_528


# ----------------------------------------------------------------------------- config and overrides
def test_overrides_use_official_names_and_unknown_keys_are_rejected():
    net = build_network("tiny-singleview", num_blocks=6, vace_block_every_n=3)
    assert len(net.blocks) == 6
    assert len(net.control_blocks) == 2
    assert net.config.control_layers == [0, 3]
    with pytest.raises(ValueError, match="num_block.*valid keys.*num_blocks"):
        build_network("tiny-singleview", num_block=6)
    with pytest.raises(ValueError, match="Unknown network preset"):
        build_network("tiny")


def test_hints_are_injected_after_the_spaced_base_blocks():
    torch.manual_seed(0)
    net = build_network("tiny-singleview", num_blocks=6, vace_block_every_n=3)
    _randomize(net)
    inputs = _inputs(net.config)
    base_outputs = {}
    for idx, block in enumerate(net.blocks):
        block.register_forward_hook(lambda m, a, kw_out, idx=idx: base_outputs.__setitem__(idx, kw_out))
    hints = []
    for control_block in net.control_blocks:
        control_block.after_proj.register_forward_hook(lambda m, a, out: hints.append(out))
    block_inputs = {}
    for idx, block in enumerate(net.blocks):
        block.register_forward_pre_hook(lambda m, args, idx=idx: block_inputs.__setitem__(idx, args[0]))
    with torch.no_grad():
        net(**inputs, control_context_scale=0.5)
    # Block 1 sees block 0's output plus 0.5 * hint 0; block 4 sees block 3's output plus 0.5 * hint 1;
    # the other blocks see the previous output unchanged.
    torch.testing.assert_close(block_inputs[1], base_outputs[0] + 0.5 * hints[0])
    torch.testing.assert_close(block_inputs[4], base_outputs[3] + 0.5 * hints[1])
    for idx in (2, 3, 5):
        torch.testing.assert_close(block_inputs[idx], base_outputs[idx - 1])


def test_rope_ntk_bases_match_the_reference():
    net = build_network("tiny-singleview")
    with torch.device("meta"):
        single = build_network("transfer2.5-2b-singleview").pos_embedder
        multi = build_network("transfer2.5-2b-multiview").pos_embedder
    assert (single.dim_t, single.dim_h, single.dim_w) == (44, 42, 42)
    assert round(single.theta_h) == 31694 and round(single.theta_w) == 31694
    assert single.theta_t == 10000.0
    assert round(multi.theta_t) == 3163
    assert net.pos_embedder.theta_t == 10000.0


def test_text_embedding_may_be_raw_or_already_projected():
    torch.manual_seed(0)
    net = build_network("tiny-singleview")
    _randomize(net)
    inputs = _inputs(net.config)
    with torch.no_grad():
        raw = net(**inputs)
        inputs["crossattn_emb"] = net.crossattn_proj(inputs["crossattn_emb"])
        projected = net(**inputs)
    torch.testing.assert_close(raw, projected)
    inputs["crossattn_emb"] = torch.randn(2, 8, 5)
    with pytest.raises(ValueError, match="crossattn_emb has width 5"):
        net(**inputs)


# ----------------------------------------------------------------------------- control branch
def test_new_control_branch_copies_base_blocks_and_leaves_the_base_output_unchanged():
    torch.manual_seed(0)
    net = build_network("tiny-singleview")
    for j, control_block in enumerate(net.control_blocks):
        base_state = net.blocks[j].state_dict()
        for name, tensor in control_block.state_dict().items():
            if name.startswith(("before_proj", "after_proj")):
                assert torch.count_nonzero(tensor) == 0
            else:
                torch.testing.assert_close(tensor, base_state[name], rtol=0, atol=0)
    inputs = _inputs(net.config)
    with torch.no_grad():
        with_control = net(**inputs)
        base_only = net(**{**inputs, "latent_control_input": None})
    torch.testing.assert_close(with_control, base_only, rtol=0, atol=0)
    # Once after_proj is non-zero the control does change the output (the check above can fail).
    with torch.no_grad():
        torch.nn.init.normal_(net.control_blocks[0].after_proj.weight, std=0.1)
        changed = net(**inputs)
    assert not torch.allclose(changed, base_only)


def test_control_scale_zero_equals_base_only_and_per_sample_scales_apply_per_sample():
    torch.manual_seed(0)
    net = build_network("tiny-singleview")
    _randomize(net)
    inputs = _inputs(net.config)
    with torch.no_grad():
        base_only = net(**{**inputs, "latent_control_input": None})
        scale0 = net(**inputs, control_context_scale=0.0)
        scale1 = net(**inputs, control_context_scale=1.0)
        per_sample = net(**inputs, control_context_scale=torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(scale0, base_only)
    assert not torch.allclose(scale1, base_only)
    torch.testing.assert_close(per_sample[0], base_only[0])
    torch.testing.assert_close(per_sample[1], scale1[1])


def test_control_latent_is_zero_padded_to_the_embedder_width():
    torch.manual_seed(0)
    net = build_network("tiny-singleview")
    _randomize(net)
    inputs = _inputs(net.config)
    width = net.config.control_latent_channels
    assert width == 16 * net.config.num_max_modalities
    padded = torch.cat([inputs["latent_control_input"], torch.zeros(2, width - 16, 3, 8, 8)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(net(**inputs), net(**{**inputs, "latent_control_input": padded}))
    with pytest.raises(ValueError, match="more than the"):
        net(**{**inputs, "latent_control_input": torch.zeros(2, width + 1, 3, 8, 8)})


# ----------------------------------------------------------------------------- multiview
def test_multiview_embedders_take_193_wide_control_input_with_the_view_channel_quirk():
    with torch.device("meta"):
        net = build_network("transfer2.5-2b-multiview")
    assert net.config.x_embedder_in_channels == 25
    assert net.config.control_embedder_in_channels == 193
    assert tuple(net.control_embedder.proj[1].weight.shape) == (2048, 193 * 4)
    tiny = get_config("tiny-multiview")
    assert tiny.control_embedder_in_channels == (16 + 7) * tiny.num_max_modalities + 1 + 1 + 7


def test_multiview_view_embedding_is_concatenated_to_both_embedders():
    torch.manual_seed(0)
    net = build_network("tiny-multiview")
    _randomize(net)
    views, state_t = 3, net.config.state_t
    inputs = _multiview_inputs(net.config, views=views)
    view_ids = torch.tensor([4, 0, 6])
    view_indices_B_T = view_ids.repeat_interleave(state_t)[None]
    captured = {}
    net.x_embedder.register_forward_pre_hook(lambda m, args: captured.__setitem__("x", args[0]))
    net.control_embedder.register_forward_pre_hook(lambda m, args: captured.__setitem__("c", args[0]))
    with torch.no_grad():
        net(**inputs, view_indices_B_T=view_indices_B_T)
    table = net.view_embeddings.weight
    x_in, c_in = captured["x"], captured["c"]
    assert x_in.shape[1] == 16 + 1 + 1 + 7
    assert c_in.shape[1] == net.config.control_embedder_in_channels
    for v, view_id in enumerate(view_ids):
        frames = slice(v * state_t, (v + 1) * state_t)
        expected = table[view_id][None, :, None, None, None].expand(1, 7, state_t, 4, 4)
        torch.testing.assert_close(x_in[:, -7:, frames], expected)
        torch.testing.assert_close(c_in[:, -7:, frames], expected)
    # latent, condition mask, padding mask come first, in that order
    torch.testing.assert_close(x_in[:, :16], inputs["x_B_C_T_H_W"])
    torch.testing.assert_close(x_in[:, 16:17], inputs["condition_video_input_mask_B_C_T_H_W"])


def test_multiview_cross_attention_is_per_view():
    torch.manual_seed(0)
    net = build_network("tiny-multiview")
    _randomize(net)
    block: Block = net.blocks[0]
    views, tokens_per_view, text_per_view = 3, 5, 4
    x = torch.randn(2, views * tokens_per_view, 64)
    context = torch.randn(2, views * text_per_view, net.config.crossattn_emb_channels)
    with torch.no_grad():
        per_view = block._cross_attention(x, context, None, num_views=views)
        for v in range(views):
            tokens = slice(v * tokens_per_view, (v + 1) * tokens_per_view)
            text = slice(v * text_per_view, (v + 1) * text_per_view)
            torch.testing.assert_close(per_view[:, tokens], block.cross_attn(x[:, tokens], context[:, text]))
        joint = block.cross_attn(x, context)
    assert not torch.allclose(per_view, joint)


def test_multiview_rope_time_restarts_in_every_view():
    net = build_network("tiny-multiview")
    angles = net.pos_embedder(3, 2, 4, 5, "cpu")
    one_view = net.pos_embedder(1, 2, 4, 5, "cpu")
    per_view = 2 * 4 * 5
    assert angles.shape == (3 * per_view, net.config.head_dim)
    for v in range(3):
        torch.testing.assert_close(angles[v * per_view : (v + 1) * per_view], one_view, rtol=0, atol=0)
    # and within a view the time angle does advance (t is not constant)
    dim_t_half = net.pos_embedder.dim_t // 2
    assert not torch.equal(one_view[0, :dim_t_half], one_view[4 * 5, :dim_t_half])
    # the multiview time base uses the 8/24 extrapolation ratio
    expected_theta_t = 10000.0 * (8 / 24) ** (net.pos_embedder.dim_t / (net.pos_embedder.dim_t - 2))
    assert math.isclose(net.pos_embedder.theta_t, expected_theta_t)


def test_multiview_views_are_a_set_reordering_them_reorders_the_velocity():
    """Each view's RoPE time restarts at 0 and its camera id, not its position, says which camera it is.

    So reordering the views (latents, control, text, camera ids together) reorders the velocity the same way.
    Were time to run on across the views, a view's positions relative to the others would change with the order.
    """
    torch.manual_seed(0)
    net = build_network("tiny-multiview").eval()
    _randomize(net)
    views, t, B = 3, net.config.state_t, 2
    inputs = _multiview_inputs(net.config, views=views, B=B)
    inputs["condition_video_input_mask_B_C_T_H_W"] = torch.zeros(B, 1, views * t, 4, 4)
    inputs["condition_video_input_mask_B_C_T_H_W"][:, :, ::t] = 1.0  # the first frame of every view
    camera_ids_B_V = torch.tensor([[4, 0, 6], [1, 2, 3]])
    inputs["view_indices_B_T"] = camera_ids_B_V.repeat_interleave(t, dim=1)
    order = [2, 0, 1]

    def reorder(x: torch.Tensor, dim: int) -> torch.Tensor:  # views are equal chunks along `dim`
        return torch.cat([x.chunk(views, dim=dim)[v] for v in order], dim=dim)

    reordered = {key: reorder(value, 2) for key, value in inputs.items() if value.ndim == 5}
    reordered["crossattn_emb"] = reorder(inputs["crossattn_emb"], 1)
    reordered["view_indices_B_T"] = reorder(inputs["view_indices_B_T"], 1)
    with torch.no_grad():
        velocity = net(**inputs)
        velocity_of_reordered = net(**{**inputs, **reordered})
    torch.testing.assert_close(velocity_of_reordered, reorder(velocity, 2))
    assert not torch.allclose(velocity_of_reordered, velocity)


def test_multiview_input_hint_block_feeds_the_first_control_block():
    torch.manual_seed(0)
    net = build_network("tiny-multiview")
    _randomize(net)
    assert len(net.input_hint_block) == 14  # 7 x (Linear, SiLU), keys 0, 2, ..., 12
    inputs = _multiview_inputs(net.config, views=2)
    captured = {}
    net.control_embedder.register_forward_hook(lambda m, a, out: captured.__setitem__("embedded", out))
    net.control_blocks[0].before_proj.register_forward_pre_hook(lambda m, args: captured.__setitem__("before", args[0]))
    with torch.no_grad():
        out = net(**inputs)
        torch.testing.assert_close(captured["before"], net.input_hint_block(captured["embedded"]))
        for layer in net.input_hint_block:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.add_(0.05)
        assert not torch.allclose(out, net(**inputs))


def test_multiview_views_see_their_own_caption():
    """Changing view 2's text changes the output; the network is not ignoring per-view context."""
    torch.manual_seed(0)
    net = build_network("tiny-multiview")
    _randomize(net)
    inputs = _multiview_inputs(net.config, views=3)
    edited = inputs["crossattn_emb"].clone()
    edited[:, 16:] += 1.0
    with torch.no_grad():
        assert not torch.allclose(net(**inputs), net(**{**inputs, "crossattn_emb": edited}))
    with pytest.raises(ValueError, match="multiple of state_t"):
        net(**{**inputs, "x_B_C_T_H_W": inputs["x_B_C_T_H_W"][:, :, :5]})


# ----------------------------------------------------------------------------- precision and memory
def test_fp32_islands_under_bf16_autocast():
    torch.manual_seed(0)
    net = build_network("tiny-singleview")
    _randomize(net)
    dtypes = {}
    net.t_embedder.register_forward_hook(lambda m, a, out: dtypes.__setitem__("t_emb", out[1].dtype))
    net.blocks[0].adaln_modulation_self_attn.register_forward_hook(
        lambda m, a, out: dtypes.__setitem__("adaln", out.dtype)
    )
    net.blocks[0].self_attn.q_proj.register_forward_hook(lambda m, a, out: dtypes.__setitem__("q_proj", out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(**_inputs(net.config))
    assert dtypes == {"t_emb": torch.float32, "adaln": torch.float32, "q_proj": torch.bfloat16}
    assert out.dtype == torch.float32  # the final layer runs in fp32


def test_activation_checkpointing_gives_identical_outputs_and_gradients():
    torch.manual_seed(0)
    plain = build_network("tiny-singleview")
    _randomize(plain)
    ckpt = build_network("tiny-singleview", activation_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    inputs = _inputs(plain.config)
    out_plain, out_ckpt = plain(**inputs), ckpt(**inputs)
    out_plain.square().mean().backward()
    out_ckpt.square().mean().backward()
    torch.testing.assert_close(out_plain, out_ckpt)
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_fsdp_wrap_units_are_the_blocks():
    net = build_network("tiny-multiview")
    wrapped = [name for name, module in net.named_modules() if net.fsdp_wrap_fn(module)]
    expected = [f"blocks.{i}" for i in range(4)] + [f"control_blocks.{j}" for j in range(2)]
    assert wrapped == expected


def test_image_context_is_used_only_when_given():
    torch.manual_seed(0)
    net = build_network("tiny-singleview", extra_image_context_dim=24)
    _randomize(net)
    inputs = _inputs(net.config)
    with torch.no_grad():
        without = net(**inputs)
        with_img = net(**inputs, img_context_emb=torch.randn(2, 6, 24))
    assert not torch.allclose(without, with_img)
    plain = build_network("tiny-singleview")
    with pytest.raises(ValueError, match="no image-context modules"):
        plain(**inputs, img_context_emb=torch.randn(2, 6, 24))
