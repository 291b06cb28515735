"""The run plan: a validated config and the launch's process count give, once, the per-rank batch, the context
parallel groups, the folders, the FSDP2 config and the network with the rig's cameras (no model is built)."""

from __future__ import annotations

from pathlib import Path

import pytest
from composer.utils.parallelism import FSDP2Config
from helpers import QUICKSTART, REPO

from cosmos_composer import config
from cosmos_composer.config import ConfigError, load_config
from cosmos_composer.models import build_network
from cosmos_composer.run_plan import plan_run

RIG = "train_loader.dataset.cameras=[CAM_FRONT=camera_front_wide_120fov,CAM_L=camera_cross_left_120fov,CAM_R]"


@pytest.fixture(autouse=True)
def _output_root(tmp_path, monkeypatch):
    monkeypatch.setenv("COSMOS_OUTPUT_ROOT", str(tmp_path / "out"))


@pytest.mark.parametrize(
    "overrides, world_size, batch_per_rank, data_parallel",
    [
        ([], 1, 2, 1),  # the quickstart: global batch 2 on one process
        (["global_train_batch_size=8"], 4, 2, 4),
        (["global_train_batch_size=4", "context_parallel_size=2"], 4, 2, 2),  # 2 groups of 2 ranks share samples
        (["global_train_batch_size=6", "context_parallel_size=2"], 2, 6, 1),  # one group: the whole batch
    ],
)
def test_the_per_rank_batch_is_the_global_batch_over_the_data_parallel_groups(
    overrides, world_size, batch_per_rank, data_parallel
):
    cfg = load_config(QUICKSTART, overrides)
    plan = plan_run(cfg, world_size, has_gpu=False)
    assert (plan.batch_size_per_rank, plan.data_parallel_size) == (batch_per_rank, data_parallel)
    assert plan.context_parallel_size == cfg.context_parallel_size and plan.world_size == world_size


def test_a_batch_or_a_context_parallel_size_the_launch_cannot_split_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"global_train_batch_size=2 is not divisible by the 3 data-parallel"):
        plan_run(load_config(QUICKSTART), 3, has_gpu=False)
    with pytest.raises(ConfigError, match="context_parallel_size=2"):  # 3 processes do not split into pairs
        plan_run(load_config(QUICKSTART, ["context_parallel_size=2"]), 3, has_gpu=False)
    with pytest.raises(ConfigError, match=r"precision='amp_bf16' needs a GPU"):
        plan_run(load_config(QUICKSTART, ["precision=amp_bf16"]), 1, has_gpu=False)


@pytest.mark.parametrize(
    "overrides, world_size, context_parallel, data_parallel, batch_per_rank",
    [
        (["global_train_batch_size=2"], 1, 1, 1, 2),  # one process: nothing to split
        (["global_train_batch_size=1"], 2, 2, 1, 1),  # one sample over the launch, as upstream's WORLD_SIZE
        (["global_train_batch_size=2"], 2, 2, 1, 2),  # the largest size, the batch in one group
        (["global_train_batch_size=2"], 4, 2, 2, 1),  # the tiny network's 2 heads: pairs, 2 groups
        # 4 heads and 4 processes, but 7 views x 2 latent frames = 14 frames do not split in 4: pairs
        (["global_train_batch_size=2", "model.overrides.num_heads=4"], 4, 2, 2, 1),
        (["global_train_batch_size=2", "parallelism_config=null"], 2, 1, 2, 1),  # CP runs under FSDP2 only
    ],
)
def test_auto_takes_the_largest_context_parallel_size_that_the_launch_and_the_batch_split(
    overrides, world_size, context_parallel, data_parallel, batch_per_rank
):
    cfg = load_config(QUICKSTART, ["context_parallel_size=auto", *overrides])
    plan = plan_run(cfg, world_size, has_gpu=False)
    assert (plan.context_parallel_size, plan.data_parallel_size) == (context_parallel, data_parallel)
    assert plan.batch_size_per_rank == batch_per_rank and plan.context_parallel_auto
    assert cfg.context_parallel_size == context_parallel  # what config.yaml records and the builders read
    assert f"x context_parallel_size {context_parallel} (context_parallel_size=auto)" in plan.describe_layout()


def test_auto_without_a_size_that_fits_the_launch_is_refused_naming_the_values():
    with pytest.raises(
        ConfigError,
        match=r"context_parallel_size=auto: no size fits 3 processes with global_train_batch_size=1: .*2 heads.*"
        r"14 latent frames are \[1\], leaving \[3\] data-parallel groups.*a multiple of 3",
    ):
        plan_run(load_config(QUICKSTART, ["context_parallel_size=auto", "global_train_batch_size=1"]), 3, False)
    with pytest.raises(ConfigError, match=r"context_parallel_size='eight': an integer >= 1 or 'auto'"):
        load_config(QUICKSTART, ["context_parallel_size=eight"])
    explicit = load_config(QUICKSTART, ["context_parallel_size=1"])  # an integer is taken as it is
    assert plan_run(explicit, 2, has_gpu=False).context_parallel_size == 1 and explicit.context_parallel_size == 1


def test_the_hdmap_recipe_trains_the_released_batch_over_8_processes(tmp_path):
    # The released example: one 7-view sample per step, context parallel over the 8 GPUs of a node.
    cfg = load_config(REPO / "yamls" / "hdmap.yaml", [f"train_loader.dataset.local={tmp_path}", "loggers=null"])
    assert cfg.context_parallel_size == "auto" and cfg.global_train_batch_size == 1
    plan = plan_run(cfg, 8, has_gpu=True)  # the plan only: no model is built
    assert (plan.context_parallel_size, plan.data_parallel_size, plan.batch_size_per_rank) == (8, 1, 1)
    assert plan.network.num_heads == 16 and plan.network.n_cameras_emb == 7
    # Data parallelism stays an override away, for cards that hold a whole sample.
    dp = load_config(REPO / "yamls" / "hdmap.yaml", [f"train_loader.dataset.local={tmp_path}", "loggers=null",
                                                     "context_parallel_size=1", "global_train_batch_size=8"])  # fmt: skip
    plan = plan_run(dp, 8, has_gpu=True)
    assert (plan.context_parallel_size, plan.data_parallel_size, plan.batch_size_per_rank) == (1, 8, 1)


def test_the_folders_come_from_the_output_root_and_the_save_keys(tmp_path):
    run = tmp_path / "out" / "cosmos_composer" / "quickstart" / "quickstart"
    plan = plan_run(load_config(QUICKSTART), 1, has_gpu=False)
    assert plan.run_folder == run and plan.save_folder == str(run / "checkpoints")
    assert plan.locked_folder == str(run / "checkpoints")

    plan = plan_run(load_config(QUICKSTART, [f"save_folder={tmp_path / 'elsewhere'}"]), 1, has_gpu=False)
    assert plan.run_folder == run and plan.save_folder == plan.locked_folder == str(tmp_path / "elsewhere")

    plan = plan_run(load_config(QUICKSTART, ["save_interval=null"]), 1, has_gpu=False)
    assert plan.save_folder is None and plan.locked_folder == str(run)  # no checkpoints: the run folder is locked


def test_the_fsdp2_config_is_composers_with_the_yaml_keys_and_none_for_one_process():
    plan = plan_run(load_config(QUICKSTART, ["parallelism_config.fsdp.reshard_after_forward=false"]), 1, False)
    assert isinstance(plan.fsdp, FSDP2Config) and plan.fsdp.reshard_after_forward is False
    assert plan.fsdp.state_dict_type == "sharded"  # quickstart.yaml's
    assert plan.parallelism_config == {"fsdp": plan.fsdp}
    plan = plan_run(load_config(QUICKSTART, ["parallelism_config=null"]), 1, has_gpu=False)
    assert plan.fsdp is None and plan.parallelism_config is None


def test_the_network_has_the_rigs_cameras_and_is_derived_once_per_load_and_once_per_plan(monkeypatch):
    derived = []
    get_config = config.get_config
    monkeypatch.setattr(
        config, "get_config", lambda *args, **kwargs: derived.append(args) or get_config(*args, **kwargs)
    )
    cfg = load_config(QUICKSTART, ["model.overrides.n_cameras_emb=3", RIG, "eval_loader=null"])
    assert len(derived) == 1  # the validation's
    plan = plan_run(cfg, 1, has_gpu=False)
    assert len(derived) == 2  # the plan's: the launch checks and the builders read plan.network

    assert plan.network.camera_names == ("CAM_FRONT", "CAM_L", "CAM_R") and plan.network.n_cameras_emb == 3
    assert dict(plan.network.camera_origins) == {
        "CAM_FRONT": "camera_front_wide_120fov",
        "CAM_L": "camera_cross_left_120fov",
    }
    # The keywords the plan carries build the network it describes (the models' own rule, not ours).
    assert build_network(cfg.model.preset, **plan.network_overrides).config == plan.network


def test_wandb_without_credentials_is_refused_before_the_gpu_checks(tmp_path, monkeypatch):
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = load_config(QUICKSTART, ["loggers={wandb: {project: p}}", "precision=amp_bf16"])
    with pytest.raises(ConfigError, match=r"no W&B credentials.*wandb login.*WANDB_MODE=offline.*loggers=null"):
        plan_run(cfg, 1, has_gpu=False)
    monkeypatch.setenv("WANDB_MODE", "offline")  # then the next check speaks
    with pytest.raises(ConfigError, match=r"precision='amp_bf16' needs a GPU"):
        plan_run(cfg, 1, has_gpu=False)


def test_an_output_folder_that_cannot_be_made_is_refused_naming_the_key(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for key in ("output_root", "save_folder"):
        with pytest.raises(ConfigError, match=rf"{key}=.*a_file is a file, not a folder; .*set {key} elsewhere"):
            plan_run(load_config(QUICKSTART, [f"{key}={blocker / 'sub'}"]), 1, has_gpu=False)
    # A read-only parent (os.access is what is asked: the tests may run as root, who may write anywhere).
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    real_access = config.os.access
    monkeypatch.setattr(config.os, "access", lambda path, mode: Path(path) != read_only and real_access(path, mode))
    with pytest.raises(ConfigError, match=r"save_folder=.*read_only is not writable by this user"):
        plan_run(load_config(QUICKSTART, [f"save_folder={read_only / 'checkpoints'}"]), 1, has_gpu=False)
    plan_run(load_config(QUICKSTART, ["save_folder=s3://bucket/run"]), 1, has_gpu=False)  # Composer's to check


def test_a_power_ema_without_the_ema_network_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model.use_ema=False: true while callbacks.power_ema is configured"):
        load_config(QUICKSTART, ["model.use_ema=false"])
    load_config(QUICKSTART, ["model.use_ema=false", "callbacks.power_ema=null"])
