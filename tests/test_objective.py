"""The training objective against its definition (upstream predict2/schedulers/rectified_flow.py and `denoise`)."""

import math

import pytest
import torch
import torch.nn.functional as F

from cosmos_composer.data.precompute import crossattn_proj_fingerprint
from cosmos_composer.diffusion import rectified_flow as rf
from cosmos_composer.models import build_network
from cosmos_composer.models.composer_model import CosmosTransferModel, ObjectiveConfig
from cosmos_composer.models.parallelize import set_trainable_


def _cached_batch(net, B=4, views=2, seed=0, projected=False):
    """A batch as the dataset serves it when latents and text embeddings are cached."""
    gen = torch.Generator().manual_seed(seed)
    config = net.config
    t = config.state_t if config.is_multiview else 3
    V = views if config.is_multiview else 1
    width = config.crossattn_emb_channels if projected else config.crossattn_proj_in_channels
    batch = {
        "video_latent": torch.randn(B, 16, V * t, 4, 6, generator=gen),
        "control_latent": torch.randn(B, 16, V * t, 4, 6, generator=gen),
        "text_embedding": torch.randn(B, V * 8, width, generator=gen),
        "padding_mask": torch.zeros(B, 1, 32, 48),
    }
    if config.is_multiview:
        batch["sample_n_views"] = torch.full((B,), V)
        batch["view_indices"] = torch.arange(V).repeat_interleave(5)[None].expand(B, -1)
    return batch


def test_sigma_is_shifted_logit_normal():
    torch.manual_seed(0)
    shift = 5.0
    sigma = rf.sample_sigma(200_000, shift)
    assert sigma.min() > 0 and sigma.max() < 1
    # Invert the shift, then the sigmoid: the result must be a standard normal.
    u = sigma / (shift - (shift - 1) * sigma)
    z = torch.log(u) - torch.log1p(-u)
    assert abs(z.mean().item()) < 0.01
    assert abs(z.std().item() - 1.0) < 0.01
    z_sorted, _ = torch.sort(z.double())
    empirical = torch.arange(1, z.numel() + 1, dtype=torch.float64) / z.numel()
    ks = (empirical - torch.special.ndtr(z_sorted)).abs().max().item()
    assert ks < 0.005
    # shift 5 moves the median from 0.5 to 5 * 0.5 / (1 + 4 * 0.5) = 5/6
    assert abs(sigma.median().item() - 5 / 6) < 0.005


def test_interpolation_and_velocity_target():
    x0, eps = torch.randn(3, 16, 2, 4, 4), torch.randn(3, 16, 2, 4, 4)
    sigma = torch.tensor([0.0, 0.3, 1.0])
    x_t, v = rf.interpolate(x0, eps, sigma)
    torch.testing.assert_close(x_t[0], x0[0])
    torch.testing.assert_close(x_t[2], eps[2])
    torch.testing.assert_close(x_t[1], 0.3 * eps[1] + 0.7 * x0[1])
    torch.testing.assert_close(v, eps - x0)


def test_conditional_frame_counts_follow_the_released_probabilities():
    torch.manual_seed(0)
    n = rf.sample_num_conditional_frames(100_000, {0: 0.5, 1: 0.25, 2: 0.25})
    freq = torch.bincount(n, minlength=3).double() / n.numel()
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64), atol=0.01, rtol=0)
    with pytest.raises(ValueError, match="sum to 1"):
        rf.sample_num_conditional_frames(4, {0: 0.5, 1: 0.25})


def test_condition_mask_marks_the_first_n_frames_of_every_view():
    mask = rf.condition_mask(torch.tensor([0, 2]), num_views=3, frames_per_view=4, height=2, width=2)
    assert mask.shape == (2, 1, 12, 2, 2)
    assert mask[0].sum() == 0
    per_frame = mask[1, 0, :, 0, 0]
    torch.testing.assert_close(per_frame, torch.tensor([1.0, 1, 0, 0] * 3))


@pytest.mark.parametrize("preset", ["tiny-multiview", "tiny-singleview"])
def test_conditioning_frames_enter_clean_and_their_velocity_is_the_true_one(preset):
    torch.manual_seed(0)
    net = build_network(preset)
    model = CosmosTransferModel(net, ObjectiveConfig(conditional_frames_probs={1: 1.0}, text_dropout_rate=0.0))
    batch = _cached_batch(net)
    seen = {}
    net.register_forward_pre_hook(lambda m, args, kwargs: seen.update(kwargs), with_kwargs=True)
    torch.manual_seed(1)
    v_pred, v_target = model(batch)
    x0 = batch["video_latent"]
    mask = seen["condition_video_input_mask_B_C_T_H_W"]
    T = x0.shape[2]
    views = T // (net.config.state_t if net.config.is_multiview else T)
    frames_per_view = T // views
    cond_frames = [v * frames_per_view for v in range(views)]
    noisy_frames = [f for f in range(T) if f not in cond_frames]
    assert mask[:, 0, cond_frames].min() == 1 and mask[:, 0, noisy_frames].max() == 0
    # conditioning frames enter the network clean, the others noisy
    torch.testing.assert_close(seen["x_B_C_T_H_W"][:, :, cond_frames], x0[:, :, cond_frames])
    assert not torch.allclose(seen["x_B_C_T_H_W"][:, :, noisy_frames], x0[:, :, noisy_frames])
    # their prediction is replaced by the true velocity: zero loss there
    torch.testing.assert_close(v_pred[:, :, cond_frames], v_target[:, :, cond_frames])
    assert not torch.allclose(v_pred[:, :, noisy_frames], v_target[:, :, noisy_frames])
    # and they still count in the mean
    loss = model.loss((v_pred, v_target), batch)
    expected = (v_pred - v_target).pow(2).mean()
    torch.testing.assert_close(loss, expected)
    # one timestep per sample, 1000 * sigma
    assert seen["timesteps_B_T"].shape == (x0.shape[0], 1)
    assert (seen["timesteps_B_T"] > 0).all() and (seen["timesteps_B_T"] < 1000).all()


def test_text_dropout_rate_and_null_embeddings():
    torch.manual_seed(0)
    net = build_network("tiny-singleview")
    model = CosmosTransferModel(net, ObjectiveConfig(text_dropout_rate=0.2))
    dropped = torch.stack([rf.text_dropout_mask(1000, 0.2, "cpu") for _ in range(50)]).float()
    assert abs(dropped.mean().item() - 0.2) < 0.005

    seen = []
    net.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["crossattn_emb"]), with_kwargs=True)
    for projected in (False, True):
        seen.clear()
        batch = _cached_batch(net, B=64, projected=projected)
        if projected:
            batch["crossattn_proj_fingerprint"] = [crossattn_proj_fingerprint(net.crossattn_proj)] * 64
        model(batch)
        context = seen[0]
        if projected:
            null = F.gelu(net.crossattn_proj[0].bias.detach())  # crossattn_proj(zeros) = GELU(bias)
            torch.testing.assert_close(
                null, net.crossattn_proj(torch.zeros(1, net.config.crossattn_proj_in_channels))[0]
            )
        else:
            null = torch.zeros(context.shape[-1])
        is_null = (context == null).all(dim=-1).all(dim=-1)
        kept = (context == batch["text_embedding"]).all(dim=-1).all(dim=-1)
        assert (is_null | kept).all()
        assert 3 <= is_null.sum() <= 30  # ~0.2 * 64


def test_control_is_never_dropped():
    torch.manual_seed(0)
    net = build_network("tiny-multiview")
    model = CosmosTransferModel(net)
    seen = []
    net.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["latent_control_input"]), with_kwargs=True)
    batch = _cached_batch(net, B=32)
    model(batch)
    torch.testing.assert_close(seen[0], batch["control_latent"])


def test_frozen_base_gets_no_gradients():
    torch.manual_seed(0)
    net = build_network("tiny-multiview")
    set_trainable_(net, train_base=False)  # as models/prepare.py decides it for training
    model = CosmosTransferModel(net)
    batch = _cached_batch(net)
    model.loss(model(batch), batch).backward()
    trainable = set(net.control_branch_parameter_names())
    for name, param in net.named_parameters():
        if name in trainable:
            assert param.requires_grad and param.grad is not None, name
        else:
            assert not param.requires_grad and param.grad is None, name
    for param in model.net_ema.parameters():
        assert not param.requires_grad and param.grad is None
    # the full fine-tuning switch trains everything
    full_net = build_network("tiny-multiview")
    set_trainable_(full_net, train_base=True)
    full = CosmosTransferModel(full_net, train_base=True)
    assert all(p.requires_grad for p in full.net.parameters())


@pytest.mark.parametrize("preset, millions", [("transfer2.5-2b-singleview", 299), ("transfer2.5-2b-multiview", 329)])
def test_trainable_count_of_the_2b_presets(preset, millions):
    with torch.device("meta"):
        net = build_network(preset)
    set_trainable_(net, train_base=False)
    model = CosmosTransferModel(net, use_ema=False)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert round(n_trainable / 1e6) == millions


def test_ema_copy_starts_equal_and_keys_are_net_and_net_ema():
    net = build_network("tiny-singleview")
    model = CosmosTransferModel(net)
    state = model.state_dict()
    net_keys = {k for k in state if k.startswith("net.")}
    ema_keys = {k for k in state if k.startswith("net_ema.")}
    assert {k[len("net.") :] for k in net_keys} == {k[len("net_ema.") :] for k in ema_keys}
    assert net_keys | ema_keys == set(state)
    for key in net_keys:
        torch.testing.assert_close(state[key], state["net_ema." + key[len("net.") :]])


def test_eval_loss_is_deterministic_at_fixed_sigmas():
    torch.manual_seed(0)
    net = build_network("tiny-singleview")
    model = CosmosTransferModel(net, ObjectiveConfig(eval_sigmas=(0.2, 0.8)))
    batch = _cached_batch(net)
    torch.manual_seed(1)
    first = model.eval_forward(batch)
    torch.manual_seed(2)  # the global RNG does not matter
    second = model.eval_forward(batch)
    assert set(first) == {0.2, 0.8}
    for sigma in first:
        torch.testing.assert_close(first[sigma], second[sigma])
    metrics = model.get_metrics(is_train=False)
    for metric in metrics.values():
        model.update_metric(batch, first, metric)
    torch.testing.assert_close(metrics["loss_sigma_0.2"].compute(), first[0.2].mean())
    torch.testing.assert_close(metrics["loss_fixed_sigmas"].compute(), (first[0.2].mean() + first[0.8].mean()) / 2)
    assert math.isfinite(metrics["loss_sigma_0.8"].compute().item())


def test_cached_projected_text_is_refused_for_another_projection():
    torch.manual_seed(0)
    net = build_network("tiny-singleview")
    model = CosmosTransferModel(net)
    batch = _cached_batch(net, projected=True)
    batch["crossattn_proj_fingerprint"] = [
        crossattn_proj_fingerprint(build_network("tiny-singleview").crossattn_proj)
    ] * 4
    with pytest.raises(
        ValueError, match="the batch holds text embeddings projected by a crossattn_proj with fingerprint"
    ):
        model(batch)
    batch["crossattn_proj_fingerprint"] = [crossattn_proj_fingerprint(net.crossattn_proj)] * 4
    model(batch)
    with pytest.raises(ValueError, match="train_base=true"):
        CosmosTransferModel(build_network("tiny-singleview"), train_base=True)(batch)
