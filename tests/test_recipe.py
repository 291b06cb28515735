"""The training recipe (upstream's post-train experiment configs): its numbers, power EMA, AdamW, LambdaLinear
schedule, finite grad clipping.

Expected values are computed here independently of the code under test: the EMA exponent by
bisection of the EDM2 relation, the schedule from upstream's formula written out by hand, the EMA and
the clipping step by step from recorded weights and gradients.
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from composer import Callback, Trainer
from composer.core import Event, Time, Timestamp
from composer.loggers import InMemoryLogger
from composer.models import ComposerModel
from helpers import QUICKSTART
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cosmos_composer.callbacks import PowerEMA, power_ema_beta, power_ema_gamma, update_ema_
from cosmos_composer.config import ModelConfig, load_config
from cosmos_composer.diffusion.objective import ObjectiveConfig
from cosmos_composer.models import build_network
from cosmos_composer.optim import (
    FiniteGradClip,
    LambdaLinearSchedule,
    OptimizerConfig,
    SchedulerConfig,
    build_optimizer,
    clip_finite_grad_norm_,
    lambda_linear_multiplier,
)

# ----------------------------------------------------------------------------- the recipe's numbers
# As upstream's experiment configs set them: transfer2_auto_multiview_post_train_example (the defaults) and
# transfer2_singleview_posttrain_edge_example (yamls/singleview_edge.yaml).
MULTIVIEW_RECIPE = {
    "model": {"sigma_shift": 5.0, "conditional_frames_probs": {0: 0.5, 1: 0.25, 2: 0.25}, "text_dropout_rate": 0.2},
    "optimizer": {"lr": 8.63e-5, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 1e-3},
    "scheduler": {"warm_up_steps": 1000, "f_start": 1e-6, "f_max": 0.5, "f_min": 0.2, "cycle_length": 100_000},
}
SINGLEVIEW_RECIPE = {
    "model": {**MULTIVIEW_RECIPE["model"], "conditional_frames_probs": {0: 0.4, 1: 0.4, 2: 0.2}},
    "optimizer": MULTIVIEW_RECIPE["optimizer"],
    "scheduler": {**MULTIVIEW_RECIPE["scheduler"], "warm_up_steps": 100, "cycle_length": 5000},
}


def _recipe_of(model, optimizer, scheduler) -> dict:
    return {
        "model": {key: model[key] for key in MULTIVIEW_RECIPE["model"]},
        "optimizer": {key: optimizer[key] for key in MULTIVIEW_RECIPE["optimizer"]},
        "scheduler": {key: scheduler[key] for key in MULTIVIEW_RECIPE["scheduler"]},
    }


def test_the_config_defaults_and_the_recipe_yamls_hold_the_released_numbers():
    from dataclasses import asdict

    defaults = _recipe_of(asdict(ModelConfig()), asdict(OptimizerConfig()), asdict(SchedulerConfig()))
    assert defaults == MULTIVIEW_RECIPE
    for yaml, recipe in (("hdmap", MULTIVIEW_RECIPE), ("singleview_edge", SINGLEVIEW_RECIPE)):
        cfg = load_config(QUICKSTART.with_name(f"{yaml}.yaml"))
        assert _recipe_of(cfg.model, cfg.optimizer, cfg.scheduler) == recipe, yaml


def test_conditional_frames_probs_from_a_yaml_or_an_override_replace_the_default_whole():
    # A merge would keep the default's other frame counts: {1: 1.0} would become {0: .5, 1: 1.0, 2: .25}.
    cfg = load_config(QUICKSTART, ["model.conditional_frames_probs={1: 1.0}"])
    assert dict(cfg.model.conditional_frames_probs) == {1: 1.0}
    edge = QUICKSTART.with_name("singleview_edge.yaml")
    assert dict(load_config(edge).model.conditional_frames_probs) == {0: 0.4, 1: 0.4, 2: 0.2}
    assert dict(load_config(edge, ["model.conditional_frames_probs={0: 1.0}"]).model.conditional_frames_probs) == {
        0: 1.0
    }


def test_the_objective_and_the_schedule_default_to_the_config_dataclasses():
    model = ModelConfig()
    assert ObjectiveConfig() == ObjectiveConfig.from_model_config(model)
    assert ObjectiveConfig().eval_sigmas == tuple(model.eval_sigmas) and ObjectiveConfig().eval_seed == model.eval_seed
    assert LambdaLinearSchedule().settings == SchedulerConfig()
    with pytest.raises(TypeError, match="warmup"):  # a misspelled setting is an error, not a default
        LambdaLinearSchedule(warmup=10)


# ----------------------------------------------------------------------------- independent references
def _gamma_by_bisection(sigma_rel: float) -> float:
    """EDM2: sigma_rel(gamma) = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))), decreasing for gamma >= 1."""

    def sigma(g):
        return math.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3)))

    lo, hi = 1.0, 1000.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if sigma(mid) > sigma_rel else (lo, mid)
    return 0.5 * (lo + hi)


GAMMA = _gamma_by_bisection(0.1)


def _beta(iteration: int) -> float:
    return 0.0 if iteration == 0 else (iteration / (iteration + 1)) ** (GAMMA + 1)


# ----------------------------------------------------------------------------- power EMA: formulas
def test_power_ema_gamma():
    assert GAMMA == pytest.approx(6.9372, abs=1e-4)
    assert power_ema_gamma(0.1) == pytest.approx(GAMMA, abs=1e-9)
    # The largest real root of the cubic of reference 4.7, by numpy.
    roots = np.roots([1, 7, 16 - 0.1**-2, 12 - 0.1**-2])
    assert power_ema_gamma(0.1) == pytest.approx(roots.real.max(), abs=1e-9)
    with pytest.raises(ValueError):
        power_ema_gamma(0.0)


def test_power_ema_beta():
    assert power_ema_beta(0, GAMMA) == 0.0
    for iteration, reference in [(10, 0.469), (100, 0.924), (1000, 0.992), (5000, 0.9984)]:
        assert power_ema_beta(iteration, GAMMA) == pytest.approx(_beta(iteration), abs=1e-12)
        assert power_ema_beta(iteration, GAMMA) == pytest.approx(reference, abs=5e-4)


# ----------------------------------------------------------------------------- a tiny model in a real Trainer
class _TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(4, 8)  # frozen, like the base DiT
        self.head = nn.Linear(8, 1)  # trains, like the control branch

    def forward(self, x):
        return self.head(torch.tanh(self.trunk(x)))


class _TinyModel(ComposerModel):
    def __init__(self, seed: int, use_ema: bool = True):
        super().__init__()
        torch.manual_seed(seed)
        self.net = _TinyNet()
        self.net.trunk.requires_grad_(False)
        if use_ema:
            self.net_ema = copy.deepcopy(self.net).requires_grad_(False)
            with torch.no_grad():  # make the EMA differ from the net, so the first update is visible
                for param in self.net_ema.head.parameters():
                    param.add_(1.0)

    def forward(self, batch):
        return self.net(batch[0])

    def loss(self, outputs, batch):
        return F.mse_loss(outputs, batch[1])


class _Recorder(Callback):
    """Records the learning rate of every batch, and net / net_ema after every step (after PowerEMA)."""

    def __init__(self):
        self.lr: dict[int, float] = {}
        self.after_step: dict[int, dict[str, torch.Tensor]] = {}

    def batch_start(self, state, logger):
        self.lr[int(state.timestamp.batch)] = state.optimizers[0].param_groups[0]["lr"]

    def batch_end(self, state, logger):
        self.after_step[int(state.timestamp.batch) - 1] = {k: v.clone() for k, v in state.model.state_dict().items()}


def _trainer(model, recorder, tmp_path, **kwargs):
    torch.manual_seed(123)
    data = TensorDataset(torch.randn(10, 4), torch.randn(10, 1))
    return Trainer(
        model=model,
        train_dataloader=DataLoader(data, batch_size=2, shuffle=False),
        optimizers=build_optimizer(model, lr=0.1),
        schedulers=LambdaLinearSchedule(warm_up_steps=2, f_start=0.1, f_max=1.0, f_min=0.5, cycle_length=4),
        algorithms=[FiniteGradClip(max_norm=0.1)],
        callbacks=[PowerEMA(sigma_rel=0.1), recorder],
        max_duration="5ba",
        device="cpu",
        progress_bar=False,
        save_folder=str(tmp_path / "checkpoints"),
        save_interval="2ba",
        **kwargs,
    )


def test_power_ema_schedule_and_resume_in_trainer(tmp_path):
    model = _TinyModel(seed=0)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    recorder, logs = _Recorder(), InMemoryLogger()
    _trainer(model, recorder, tmp_path, loggers=[logs]).fit()

    # The EMA, step by step from the recorded weights of the trained network.
    ema = {name: initial[f"net_ema.head.{name}"] for name in ("weight", "bias")}
    for step in range(5):
        after = recorder.after_step[step]
        for name in ("weight", "bias"):
            net = after[f"net.head.{name}"]
            ema[name] = _beta(step) * ema[name] + (1 - _beta(step)) * net
            torch.testing.assert_close(after[f"net_ema.head.{name}"], ema[name], rtol=0, atol=1e-7)
        if step == 0:  # beta(0) = 0: the first update copies the network
            assert torch.equal(after["net_ema.head.weight"], after["net.head.weight"])
        # The frozen weights are untouched, in net_ema as in net.
        for name in ("trunk.weight", "trunk.bias"):
            assert torch.equal(after[f"net_ema.{name}"], initial[f"net_ema.{name}"])
            assert torch.equal(after[f"net.{name}"], initial[f"net.{name}"])
    assert not torch.equal(recorder.after_step[4]["net.head.weight"], recorder.after_step[0]["net.head.weight"])

    # Batch i trains with lr * multiplier(i), as upstream's LambdaLR (warm-up 2, cycle 4).
    expected_multipliers = [0.1, 0.1 + (1.0 - 0.1) / 2, 1.0, 0.5 + 0.5 * (4 - 3) / (4 - 2), 0.5]
    for batch, multiplier in enumerate(expected_multipliers):
        assert recorder.lr[batch] == pytest.approx(0.1 * multiplier, rel=1e-12)

    # Logged: the EMA beta, the pre-clip gradient norm (clipping active) and the non-finite count.
    assert [beta for _, beta in logs.data["ema/beta"]] == pytest.approx([_beta(i) for i in range(5)])
    assert all(norm > 0.1 for _, norm in logs.data["grad/norm"])
    assert all(count == 0 for _, count in logs.data["grad/non_finite_count"])

    # Resume from the batch-2 checkpoint into a differently initialised model: nothing but Composer's
    # own checkpoint (model incl. net_ema, optimizer, scheduler, timestamp) is needed to continue the
    # same learning rates and the same EMA.
    resumed_recorder = _Recorder()
    checkpoint = tmp_path / "checkpoints" / "ep0-ba2-rank0.pt"
    _trainer(_TinyModel(seed=1), resumed_recorder, tmp_path / "resumed", load_path=str(checkpoint)).fit()
    for batch in (2, 3, 4):
        assert resumed_recorder.lr[batch] == pytest.approx(recorder.lr[batch], rel=1e-12)
        for key, value in recorder.after_step[batch].items():
            torch.testing.assert_close(resumed_recorder.after_step[batch][key], value, rtol=0, atol=1e-7)


def test_power_ema_requires_net_ema(tmp_path):
    model = _TinyModel(seed=0, use_ema=False)
    with pytest.raises(AttributeError, match="net_ema"):
        _trainer(model, _Recorder(), tmp_path).fit()


# ----------------------------------------------------------------------------- LambdaLinear schedule
def test_lambda_linear_multiplier_recipe_values():
    # Upstream LambdaLinearScheduler with warm_up_steps=[1000], f_start=[1e-6], f_max=[0.5],
    # f_min=[0.2], cycle_lengths=[100000]:
    #   n < 1000:  f = (f_max - f_start) / 1000 * n + f_start
    #   else:      f = f_min + (f_max - f_min) * (100000 - n) / (100000 - 1000)
    # Past the cycle upstream raises (find_in_interval returns None); ours holds f_min.
    expected = {
        0: 1e-6,
        1: (0.5 - 1e-6) / 1000 * 1 + 1e-6,
        500: (0.5 - 1e-6) / 1000 * 500 + 1e-6,
        999: (0.5 - 1e-6) / 1000 * 999 + 1e-6,
        1000: 0.2 + 0.3 * (100000 - 1000) / 99000,
        1001: 0.2 + 0.3 * (100000 - 1001) / 99000,
        50_000: 0.2 + 0.3 * (100000 - 50000) / 99000,
        100_000: 0.2,
        100_999: 0.2,
        200_000: 0.2,
    }
    for step, value in expected.items():
        assert lambda_linear_multiplier(step) == pytest.approx(value, rel=1e-12, abs=1e-15), step
    assert lambda_linear_multiplier(1000) == pytest.approx(0.5)

    # The single-view example: warm-up 100, cycle 5000.
    singleview = dict(warm_up_steps=100, cycle_length=5000)
    assert lambda_linear_multiplier(50, **singleview) == pytest.approx((0.5 - 1e-6) / 100 * 50 + 1e-6)
    assert lambda_linear_multiplier(2550, **singleview) == pytest.approx(0.2 + 0.3 * (5000 - 2550) / 4900)
    assert lambda_linear_multiplier(5000, **singleview) == pytest.approx(0.2)


def test_lambda_linear_schedule_composer_timing():
    schedule = LambdaLinearSchedule()

    def state(batch, compiled):
        return SimpleNamespace(
            timestamp=Timestamp(batch=Time.from_batch(batch)), schedulers=[object()] if compiled else []
        )

    # Compile time sets the LR of the current batch; after batch i Composer asks for batch i + 1.
    assert schedule(state(0, compiled=False)) == pytest.approx(lambda_linear_multiplier(0))
    assert schedule(state(0, compiled=True)) == pytest.approx(lambda_linear_multiplier(1))
    assert schedule(state(999, compiled=True)) == pytest.approx(lambda_linear_multiplier(1000))
    # scale_schedule_ratio stretches the warm-up and the cycle.
    assert schedule(state(999, compiled=True), 2.0) == pytest.approx(
        lambda_linear_multiplier(1000, warm_up_steps=2000, cycle_length=200_000)
    )


# ----------------------------------------------------------------------------- optimizer
def test_build_optimizer_trainable_only_one_group():
    net = build_network("tiny-singleview")
    trainable = set(net.control_branch_parameter_names())
    for name, param in net.named_parameters():
        param.requires_grad_(name in trainable)

    optimizer = build_optimizer(net)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    expected_ids = {id(param) for name, param in net.named_parameters() if name in trainable}
    assert {id(param) for param in group["params"]} == expected_ids
    assert len(group["params"]) == len(trainable)
    assert group["lr"] == 8.63e-5
    assert tuple(group["betas"]) == (0.9, 0.999)
    assert group["eps"] == 1e-8
    assert group["weight_decay"] == 1e-3
    # Biases are decayed too (one group, as upstream).
    params = dict(net.named_parameters())
    assert any(name.endswith(".bias") for name in trainable)
    bias_ids = {id(params[name]) for name in trainable if name.endswith(".bias")}
    assert bias_ids <= {id(param) for param in group["params"]}

    # Named parameters work as well as a module; nothing trainable is an error.
    assert len(build_optimizer(net.named_parameters()).param_groups[0]["params"]) == len(trainable)
    net.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter requires grad"):
        build_optimizer(net)


# ----------------------------------------------------------------------------- finite gradient clipping
def _params_with_grads(grads):
    params = []
    for grad in grads:
        param = nn.Parameter(torch.zeros_like(grad))
        param.grad = grad.clone()
        params.append(param)
    return params


def test_finite_grad_clip_zeroes_non_finite_then_clips():
    torch.manual_seed(0)
    grads = [torch.randn(5, 3), torch.randn(7)]
    grads[0][1, 2] = float("nan")
    grads[0][4, 0] = float("inf")
    grads[1][3] = float("-inf")
    non_finite = [~torch.isfinite(g) for g in grads]
    zeroed = [torch.where(mask, torch.zeros_like(g), g) for g, mask in zip(grads, non_finite)]
    norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in zeroed))
    assert norm > 0.1

    params = _params_with_grads(grads)
    logged = {}
    logger = SimpleNamespace(log_metrics=logged.update)
    FiniteGradClip(max_norm=0.1).apply(Event.AFTER_TRAIN_BATCH, SimpleNamespace(model=nn.ParameterList(params)), logger)

    assert logged["grad/non_finite_count"] == 3
    assert logged["grad/norm"] == pytest.approx(norm, rel=1e-6)
    scale = 0.1 / (norm + 1e-6)
    for param, original, mask in zip(params, zeroed, non_finite):
        assert torch.all(param.grad[mask] == 0)
        torch.testing.assert_close(param.grad[~mask], original[~mask] * scale, rtol=1e-6, atol=0)
    clipped_norm = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in params))
    assert clipped_norm == pytest.approx(0.1, rel=1e-5)


def test_finite_grad_clip_matches_torch_on_finite_grads():
    torch.manual_seed(1)
    grads = [torch.randn(6, 4), torch.randn(4), torch.randn(3, 3)]
    ours, theirs = _params_with_grads(grads), _params_with_grads(grads)
    norm, count = clip_finite_grad_norm_(ours, 0.1)
    torch_norm = torch.nn.utils.clip_grad_norm_(theirs, 0.1)
    assert int(count) == 0
    assert torch.equal(norm, torch_norm)
    for a, b in zip(ours, theirs):
        assert torch.equal(a.grad, b.grad)

    # Below the threshold nothing changes.
    small = _params_with_grads([g * 1e-4 for g in grads])
    clip_finite_grad_norm_(small, 0.1)
    for param, grad in zip(small, grads):
        torch.testing.assert_close(param.grad, grad * 1e-4, rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------- FSDP2, 2 processes, gloo
def _tiny_nets():
    torch.manual_seed(0)
    net = build_network("tiny-singleview")
    trainable = set(net.control_branch_parameter_names())
    for name, param in net.named_parameters():
        param.requires_grad_(name in trainable)
    net_ema = copy.deepcopy(net).requires_grad_(False)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name in trainable:
                param.add_(torch.randn_like(param))
    return net, net_ema, trainable


def _random_grads(net, trainable):
    generator = torch.Generator().manual_seed(7)
    grads = {}
    for name, param in net.named_parameters():
        if name in trainable:
            grad = torch.randn(param.shape, generator=generator)
            grad.view(-1)[0] = float("nan") if len(grads) % 2 else float("inf")
            grads[name] = grad
    return grads


def _fsdp_worker(rank: int, world_size: int, init_file: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        beta = 0.7
        net, net_ema, trainable = _tiny_nets()
        ref_net, ref_ema = copy.deepcopy(net), copy.deepcopy(net_ema)
        update_ema_(ref_net, ref_ema, beta)

        mesh = init_device_mesh("cpu", (world_size,))
        for module in (net, net_ema):
            for block in [m for m in module.modules() if module.fsdp_wrap_fn(m)]:
                fully_shard(block, mesh=mesh)
            fully_shard(module, mesh=mesh)
        assert all(isinstance(p, DTensor) for p in net_ema.parameters())

        update_ema_(net, net_ema, beta)
        reference = dict(ref_ema.named_parameters())
        for name, param in net_ema.named_parameters():
            torch.testing.assert_close(param.full_tensor(), reference[name], rtol=0, atol=0)

        # The finite grad clip on sharded gradients equals the unsharded one.
        grads = _random_grads(ref_net, trainable)
        for name, param in ref_net.named_parameters():
            param.grad = grads[name].clone() if name in trainable else None
        for name, param in net.named_parameters():
            if name in trainable:
                param.grad = distribute_tensor(grads[name].clone(), mesh, param.placements)
        ref_norm, ref_count = clip_finite_grad_norm_(ref_net.parameters(), 0.1)
        norm, count = clip_finite_grad_norm_(net.parameters(), 0.1)
        assert int(count) == int(ref_count) == len(trainable)
        torch.testing.assert_close(norm, ref_norm, rtol=1e-6, atol=0)
        ref_grads = {name: p.grad for name, p in ref_net.named_parameters() if p.grad is not None}
        for name, param in net.named_parameters():
            if name in trainable:
                torch.testing.assert_close(param.grad.full_tensor(), ref_grads[name], rtol=1e-6, atol=1e-9)
    finally:
        dist.destroy_process_group()


def test_power_ema_and_grad_clip_on_fsdp2_gloo(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_fsdp_worker, args=(2, str(tmp_path / "pg_init")), nprocs=2, join=True)
