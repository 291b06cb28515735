"""Config values reach what they configure: the control key in its canonical name everywhere, the objective's
keys, and a tiny single-view blur run through the real builders (in-process, a few seconds)."""

from __future__ import annotations

import math

import pytest
from helpers import QUICKSTART

from cosmos_composer.builders import build_model, build_trainer
from cosmos_composer.config import load_config
from cosmos_composer.data.convert import convert_to_mds
from cosmos_composer.data.demo import make_demo_dataset
from cosmos_composer.diffusion.objective import ObjectiveConfig
from cosmos_composer.models import build_network
from cosmos_composer.models.composer_model import CosmosTransferModel
from cosmos_composer.run_plan import plan_run
from cosmos_composer.run_setup import RunInputs


def test_blur_is_vis_for_the_config_the_model_and_the_dataset_and_a_singleview_run_trains(tmp_path):
    make_demo_dataset(tmp_path / "raw", "singleview", seed=0, samples=2, frames=5, height=16, width=32, progress=False)
    convert_to_mds(tmp_path / "raw", tmp_path / "mds", "singleview", control_key="blur", min_frames=5, progress=False)
    cfg = load_config(
        QUICKSTART,
        [
            "model.preset=tiny-singleview",
            "model.control_key=blur",
            f"output_root={tmp_path / 'out'}",
            f"train_loader.dataset.local={tmp_path / 'mds'}",
            "train_loader.dataset.demo_if_missing=false",
            "train_loader.dataset.decode_video=true",  # the shards cache nothing: the tiny VAE encodes each batch
            "train_loader.dataset.height=16",
            "train_loader.dataset.width=32",
            "eval_loader=null",
            "max_duration=2ba",
            "parallelism_config=null",
            "save_interval=null",
            "callbacks.sample_videos=null",
            "log_to_console=false",
        ],
    )
    assert cfg.model.control_key == "vis"  # resolved once, when the config is read
    trainer = build_trainer(cfg)
    assert trainer.state.model.control_key == trainer.state.train_dataloader.dataset.control_key == "vis"
    trainer.fit()
    assert int(trainer.state.timestamp.batch) == 2 and math.isfinite(float(trainer.state.loss))
    batch = trainer.state.batch
    assert "control_input_vis" in batch and "video_latent" not in batch  # decoded and encoded online
    trainer.close()


def test_the_model_refuses_a_control_key_the_batch_does_not_name():
    with pytest.raises(ValueError, match=r"control_key='blur' is not one of \['hdmap_bbox'"):
        CosmosTransferModel(build_network("tiny-singleview"), use_ema=False, control_key="blur")


def test_the_model_keys_of_the_yaml_reach_the_objective():
    cfg = load_config(
        QUICKSTART,
        [
            "parallelism_config=null",
            "model.sigma_shift=3.0",
            "model.conditional_frames_probs={0: 0.2, 1: 0.3, 2: 0.5}",
            "model.text_dropout_rate=0.5",
            "model.eval_sigmas=[0.3, 0.6]",
            "model.eval_seed=99",
        ],
    )
    model = build_model(cfg, plan_run(cfg, 1, has_gpu=False), RunInputs())
    assert model.objective == ObjectiveConfig(
        sigma_shift=3.0,
        conditional_frames_probs={0: 0.2, 1: 0.3, 2: 0.5},
        text_dropout_rate=0.5,
        eval_sigmas=(0.3, 0.6),
        eval_seed=99,
    )
