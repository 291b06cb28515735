"""End to end: train.py and the YAMLs, 2-process FSDP2 on CPU, sharded checkpoints, crash and resume.

These run the real entry points (`composer -n 2 train.py ...`, `python train.py ...`) in subprocesses.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from helpers import QUICKSTART, REPO, run_train, train_env
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from cosmos_composer.checkpoint.safe_pickle import load_weights_only
from cosmos_composer.models import build_network

_env = train_env


def _python_train(args, tmp_path):
    yaml, *overrides = args
    return run_train(overrides, tmp_path, yaml=yaml)


def _composer_cmd(args):
    composer = Path(sys.executable).with_name("composer")
    return [str(composer), "-n", "2", str(REPO / "train.py"), *map(str, args)]


def _losses(jsonl: Path) -> dict[int, float]:
    """Train loss per batch index; a resumed run re-logs batches, the last record wins."""
    losses = {}
    for line in jsonl.read_text().splitlines():
        record = json.loads(line)
        if "loss/train/total" in record:
            losses[record["step"]] = record["loss/train/total"]
    return losses


def _data_overrides(mds: Path) -> list[str]:
    return [f"train_loader.dataset.local={mds}", "eval_loader=null"]


# ----------------------------------------------------------------------------- config errors
def test_unknown_config_keys_are_rejected_with_the_valid_ones(tmp_path):
    result = _python_train([QUICKSTART, "model.prest=tiny-multiview"], tmp_path)
    assert result.returncode != 0
    assert "Unknown config key 'model.prest'" in result.stderr
    assert "valid keys at model:" in result.stderr and "'preset'" in result.stderr

    result = _python_train([QUICKSTART, "max_duratoin=3ba"], tmp_path)
    assert "Unknown config key 'max_duratoin'" in result.stderr and "'max_duration'" in result.stderr


def test_missing_dataset_path_names_the_key_and_the_fix(tmp_path):
    result = _python_train(
        [
            QUICKSTART,
            "train_loader.dataset.demo_if_missing=false",
            "train_loader.dataset.local=nowhere/mds",
            "eval_loader=null",
        ],
        tmp_path,
    )
    assert result.returncode != 0
    assert "train_loader.dataset.local='nowhere/mds' does not exist" in result.stderr
    assert "scripts/convert_to_mds.py" in result.stderr


def test_wandb_without_credentials_stops_before_step_0_naming_both_fixes(tmp_path):
    (tmp_path / "mds").mkdir()
    yaml = REPO / "yamls" / "hdmap.yaml"
    start = time.time()
    result = _python_train([yaml, f"train_loader.dataset.local={tmp_path / 'mds'}"], tmp_path)
    assert result.returncode != 0
    assert "no W&B credentials" in result.stderr
    assert "wandb login" in result.stderr and "WANDB_MODE=offline" in result.stderr
    assert "loggers=null" in result.stderr
    assert time.time() - start < 120  # it stops before building the 2B model


def test_wandb_offline_mode_trains_and_logs_locally(tmp_path, demo_mds):
    """WANDB_MODE=offline is the documented way to run W&B without credentials; autoresume must not
    try to fetch checkpoints from the W&B API (Composer 0.32.1 would, and fail)."""
    env = {**_env(tmp_path), "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)}
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            str(QUICKSTART),
            *_data_overrides(demo_mds),
            "max_duration=2ba",
            "parallelism_config=null",
            "loggers={wandb: {project: cosmos-test}}",
            "callbacks.sample_videos.every_n_batches=2",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert list((tmp_path / "out").rglob("samples/ba2/*.mp4"))


# ----------------------------------------------------------------------------- FSDP2, checkpoints, resume
def test_two_process_fsdp2_sharded_checkpoints_and_exact_resume_after_kill(tmp_path, demo_mds):
    # 4 samples, 2 per batch: batch 3 is mid-epoch, so the Streaming position must come back too.
    common = [QUICKSTART, *_data_overrides(demo_mds), "max_duration=8ba", "save_interval=3ba"]

    # A: uninterrupted reference run.
    run_a = [*common, "run_name=a", f"loggers={{jsonl: {{path: {tmp_path / 'a.jsonl'}}}}}"]
    result = subprocess.run(
        _composer_cmd(run_a), cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    checkpoints = tmp_path / "out" / "cosmos_composer" / "quickstart" / "a" / "checkpoints"
    ba8 = next(checkpoints.glob("ep*-ba8"))
    assert sorted(p.name for p in ba8.iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
        "checksums.json",
        "network.json",
        "run.json",
    ]

    # torch's own DCP reader opens it; the model state holds net.* and net_ema.*.
    metadata = FileSystemReader(str(ba8)).read_metadata()
    model_keys = [k for k in metadata.state_dict_metadata if k.startswith("state.model.")]
    assert any(k.startswith("state.model.net.control_blocks.0.") for k in model_keys)
    assert any(k.startswith("state.model.net_ema.control_blocks.0.") for k in model_keys)
    consolidated = tmp_path / "ba8.pt"
    dcp_to_torch_save(str(ba8), str(consolidated))
    model_state = load_weights_only(consolidated, "ba8.pt")["state"]["model"]
    net = {k[len("net.") :] for k in model_state if k.startswith("net.")}
    ema = {k[len("net_ema.") :] for k in model_state if k.startswith("net_ema.")}
    # Each tensor once: net_ema.* only for the weights the EMA does not share with net (the control branch).
    assert ema == set(build_network("tiny-multiview").control_branch_parameter_names()) and ema < net
    assert "blocks.0.self_attn.q_proj.weight" in net
    trained = "control_blocks.0.after_proj.weight"
    assert model_state["net." + trained].abs().sum() > 0  # the control branch trained...
    assert not torch.equal(model_state["net." + trained], model_state["net_ema." + trained])  # ...and the EMA lags

    # B: the same command, killed with -9 (launcher and ranks) once the batch-3 checkpoint is written.
    run_b = [*common, "run_name=b", f"loggers={{jsonl: {{path: {tmp_path / 'b.jsonl'}}}}}"]
    latest = tmp_path / "out" / "cosmos_composer" / "quickstart" / "b" / "checkpoints" / "latest-rank0.pt"
    proc = subprocess.Popen(
        _composer_cmd(run_b),
        cwd=tmp_path,
        env=_env(tmp_path),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (latest.is_symlink() and "ba3" in os.readlink(latest)):
        assert proc.poll() is None, "run B ended before its first checkpoint"
        assert time.time() < deadline, "no checkpoint after 300 s"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(_losses(tmp_path / "b.jsonl"))
    assert killed_at < 7, "run B finished before it was killed"

    # Re-running the same command resumes from batch 3 and reproduces A exactly.
    result = subprocess.run(
        _composer_cmd(run_b), cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    losses_a, losses_b = _losses(tmp_path / "a.jsonl"), _losses(tmp_path / "b.jsonl")
    assert sorted(losses_a) == sorted(losses_b) == list(range(8))  # logged at batches 0..7
    for step in range(8):
        assert abs(losses_a[step] - losses_b[step]) <= 1e-6, (step, losses_a[step], losses_b[step])
    # and the losses are not trivially equal across batches (different samples, sigmas and noise)
    assert len({round(v, 6) for v in losses_a.values()}) == 8
    # The weights at the end are A's too, the EMA included: a resume that restored the regular weights but
    # not the EMA (or restarted its power schedule) would give equal losses and a different exported model.
    b_ba8 = next((tmp_path / "out" / "cosmos_composer" / "quickstart" / "b" / "checkpoints").glob("ep*-ba8"))
    dcp_to_torch_save(str(b_ba8), str(tmp_path / "b_ba8.pt"))
    model_state_b = load_weights_only(tmp_path / "b_ba8.pt", "b_ba8.pt")["state"]["model"]
    assert sorted(model_state_b) == sorted(model_state)
    for key, tensor in model_state.items():
        assert torch.allclose(tensor, model_state_b[key], rtol=0, atol=1e-6), key


# ----------------------------------------------------------------------------- it learns
def test_tiny_model_loss_falls_on_the_demo_dataset(tmp_path, demo_mds):
    jsonl = tmp_path / "lf.jsonl"
    eval_loader = (
        f"eval_loader={{dataset: {{local: {demo_mds}, num_frames: 5, height: 32, width: 48, "
        "shuffle: false, decode_video: false}, num_workers: 0}"
    )
    result = _python_train(
        [
            QUICKSTART,
            f"train_loader.dataset.local={demo_mds}",
            eval_loader,
            "eval_interval=10ba",
            "max_duration=100ba",
            "save_interval=1000ba",
            "parallelism_config=null",
            "model.train_base=true",
            "optimizer.lr=3.0e-3",  # 3x the quickstart's: the loss halves in 100 steps (0.44 of the first eval)
            "run_name=lf",
            f"loggers={{jsonl: {{path: {jsonl}}}}}",
            "callbacks.sample_videos.every_n_batches=1000",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    evals = [
        json.loads(line)["metrics/eval/loss_fixed_sigmas"]
        for line in jsonl.read_text().splitlines()
        if "metrics/eval/loss_fixed_sigmas" in line
    ]
    assert len(evals) == 10
    # The velocity MSE at fixed sigmas and noise halves; a wrong target or noising would not.
    assert evals[-1] < 0.5 * evals[0], evals
