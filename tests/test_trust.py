"""Runs that go wrong say so: bad values are refused with their keys before anything is built, a diverged run
stops with a non-zero exit naming the batch and its samples, and non-finite weights are refused by key."""

from __future__ import annotations

import pytest
import torch
from helpers import QUICKSTART, run_train

from cosmos_composer.checkpoint.load import CheckpointLoadError, load_consolidated_into_network
from cosmos_composer.config import ConfigError, load_config
from cosmos_composer.models import build_network


@pytest.mark.parametrize(
    "override, key, valid",
    [
        ("optimizer.lr=-1", "optimizer.lr", "> 0"),
        ("grad_clip_norm=-0.1", "grad_clip_norm", "> 0"),
        ("max_duration=abc", "max_duration", "not a duration"),
        ("max_duration=0ba", "max_duration", "must be positive"),
        ("precision=fp64", "precision", "one of"),
        ("global_train_batch_size=-2", "global_train_batch_size", "> 0"),
        ("model.text_dropout_rate=5", "model.text_dropout_rate", "between 0 and 1"),
        ("model.sigma_shift=-5", "model.sigma_shift", "> 0"),
        ("model.preset=tiny", "model.preset", "tiny-multiview"),
        ("model.conditional_frames_probs={0: 0.9}", "model.conditional_frames_probs", "sum to 1"),
        ("scheduler.warm_up_steps=2000", "scheduler.warm_up_steps", "< cycle_length"),
        ("max_nonfinite_steps=-1", "max_nonfinite_steps", ">= 0"),
        ("model.control_key=blurr", "model.control_key", "choose one of hdmap_bbox, edge, vis"),
        ("model.eval_seed=-3", "model.eval_seed", ">= 0"),
        ("train_loader.dataset.augment_seed=-1", "train_loader.dataset.augment_seed", ">= 0"),
        ("model.overrides={num_blockz: 2}", "model.overrides", "Unknown network config key(s) ['num_blockz']"),
    ],
)
def test_bad_values_are_refused_naming_the_key_the_value_and_the_range(override, key, valid):
    with pytest.raises(ConfigError) as error:
        load_config(QUICKSTART, [override])
    line = next(line for line in str(error.value).splitlines() if line.strip().startswith(f"{key}="))
    assert valid in line and override.split("=", 1)[1].split(":")[0].strip("{") in line


@pytest.mark.parametrize(
    "overrides, key, valid",
    [
        (
            ["train_loader.dataset.use_cached_latents=false", "train_loader.dataset.decode_video=false"],
            "train_loader.dataset.use_cached_latents",
            "true with decode_video=false",
        ),
        (
            ["eval_loader.dataset.use_cached_latents=false", "encoders.vae=null"],
            "eval_loader.dataset.use_cached_latents",
            "true when encoders.vae is null",
        ),
        (
            ["train_loader.dataset.use_cached_text=false", "encoders.text=null"],
            "train_loader.dataset.use_cached_text",
            "true when encoders.text is null",
        ),
    ],
)
def test_turning_off_a_cache_that_nothing_else_replaces_is_refused(overrides, key, valid):
    with pytest.raises(ConfigError) as error:
        load_config(QUICKSTART, overrides)
    lines = [line for line in str(error.value).splitlines() if line.strip().startswith(f"{key}=False: {valid}")]
    assert len(lines) == 1, str(error.value)


def test_the_recipe_yamls_are_valid():
    for name in ("hdmap", "singleview_edge", "quickstart"):
        load_config(QUICKSTART.with_name(f"{name}.yaml"))


def test_amp_precision_on_a_cpu_fails_before_the_model_is_built(tmp_path):
    result = run_train(["precision=amp_bf16", "model.preset=transfer2.5-2b-multiview", "eval_loader=null"], tmp_path)
    assert result.returncode != 0
    assert "precision='amp_bf16' needs a GPU" in result.stderr and "precision=fp32" in result.stderr


def _diverging_run(tmp_path, demo_mds, *args):
    """6 batches at lr=1e8: the loss of batch 1 is finite, every later one is not."""
    return run_train(
        [
            f"train_loader.dataset.local={demo_mds}",
            "eval_loader=null",
            "max_duration=6ba",
            "parallelism_config=null",
            "optimizer.lr=1e8",
            "scheduler.warm_up_steps=0",
            "callbacks.sample_videos=null",
            *args,
        ],
        tmp_path,
    )


def test_a_diverged_run_stops_non_zero_naming_the_batch_and_saves_nothing_after_it(tmp_path, demo_mds):
    result = _diverging_run(tmp_path, demo_mds, "save_interval=1ba")
    assert result.returncode != 0
    assert "training stopped: the training loss is not finite at batch 2 (samples: demo_" in result.stderr
    assert "max_nonfinite_steps" in result.stderr
    # Batch 1 was finite and checkpointed; nothing of batch 2 or later was saved.
    saved = sorted(p.name for p in (tmp_path / "out").rglob("ep*-ba*"))
    # The checkpoint and the files beside it (its checksums, its network config).
    assert "ep0-ba1-rank0.pt" in saved and all(name.startswith("ep0-ba1-rank0.pt") for name in saved), saved


def test_max_nonfinite_steps_steps_over_that_many_batches(tmp_path, demo_mds):
    result = _diverging_run(tmp_path, demo_mds, "save_interval=null", "max_nonfinite_steps=2")
    assert result.returncode != 0
    assert "not finite at batch 4" in result.stderr  # batches 2 and 3 were stepped over
    assert "stepping over it (2 of max_nonfinite_steps=2 in a row)" in result.stderr


def test_non_finite_weights_in_a_file_are_refused_by_key(tmp_path):
    net = build_network("tiny-multiview")
    state = {f"net.{k}": v.clone() for k, v in net.state_dict().items()}
    state["net.blocks.1.self_attn.q_proj.weight"][0, 0] = float("nan")
    state["net.final_layer.linear.weight"][0, 0] = float("inf")
    torch.save(state, tmp_path / "bad.pt")
    fresh = build_network("tiny-multiview")
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointLoadError) as error:
        load_consolidated_into_network(fresh, tmp_path / "bad.pt")
    assert "2 tensors hold NaN or Inf values" in str(error.value)
    assert "blocks.1.self_attn.q_proj.weight" in str(error.value) and "final_layer.linear.weight" in str(error.value)
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())  # nothing was copied
