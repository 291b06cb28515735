"""A resume is checked against its checkpoint before the model is built, and the changes it follows are exact.

Unit tests of the comparison (`checkpoint/run_record.py`) build records directly. The runs are the quickstart
on a 12-sample demo dataset (6 batches of 2 per epoch) with `callbacks.data_log` naming each batch's samples:
resumed with another context-parallel size and another number of processes, every sample is trained exactly
once in epoch 0; a changed config, a stray checkpoint of the other layout and a finished `1ep` run are refused
or stopped before anything is built.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from helpers import QUICKSTART, REPO, run_train, train_env
from streaming import LocalDataset, MDSWriter

from cosmos_composer.checkpoint.network_config import RecordedNetwork
from cosmos_composer.checkpoint.run_record import (
    RunRecord,
    compare_with_checkpoint,
    rescale_sample_counts,
)
from cosmos_composer.data.demo import make_demo_dataset
from cosmos_composer.models import get_config
from cosmos_composer.models.official_cameras import DEFAULT_CAMERAS

RUN = ("out", "cosmos_composer", "quickstart", "quickstart")
SAMPLES = 12  # 6 batches of 2: one epoch


# ----------------------------------------------------------------------------- the comparison, unit tests
def _record(**changes) -> RunRecord:
    base = RunRecord(
        train_base=False,
        cameras=("front", "left"),
        context_parallel_size=1,
        world_size=2,
        data_parallel_size=2,
        global_train_batch_size=2,
        sharded=True,
        dataset_index_sha256="a" * 64,
        epoch=0,
        sample_in_epoch=4,
    )
    return dataclasses.replace(base, **changes)


NETWORK = get_config("tiny-multiview")
LORA = {"rank": 4, "alpha": 4.0, "dropout": 0.0, "target": "base"}


def _recorded(network=NETWORK, lora=LORA) -> RecordedNetwork:
    return RecordedNetwork("tiny-multiview", network, Path("ep0-ba2/network.json"), lora)


def test_each_refused_change_is_named_old_to_new():
    network = dataclasses.replace(NETWORK, rope_t_extrapolation_ratio=2.0)
    changes = compare_with_checkpoint(
        _recorded(),
        _record(),
        "tiny-multiview",
        network,
        {**LORA, "alpha": 8.0, "rank": 2},
        _record(train_base=True, sharded=False, dataset_index_sha256="b" * 64),
    )
    assert changes.refused == [
        f"model.overrides.rope_t_extrapolation_ratio: {NETWORK.rope_t_extrapolation_ratio} -> 2.0",
        "model.lora.rank: 4 -> 2",
        "model.lora.alpha: 4.0 -> 8.0",
        "model.train_base: False -> True",
        "checkpoint layout: sharded -> one file",
        "train_loader.dataset (the sha256 of its index.json: converted again?): aaaaaaaaaaaa -> bbbbbbbbbbbb",
    ]
    assert changes.followed == [] and changes.unchecked == []

    # LoRA on/off, the camera order (the network's view rows), the view-embedding rows.
    cameras = tuple(reversed(NETWORK.view_cameras))
    changes = compare_with_checkpoint(
        _recorded(), _record(), "tiny-multiview", dataclasses.replace(NETWORK, camera_names=cameras), None, _record()
    )
    assert changes.refused == [
        f"train_loader.dataset.cameras: {list(NETWORK.view_cameras)} -> {list(cameras)}",
        "model.lora: on -> off",
    ]
    more_rows = dataclasses.replace(NETWORK, n_cameras_emb=NETWORK.n_cameras_emb + 1)
    changes = compare_with_checkpoint(_recorded(lora=None), _record(), "tiny-multiview", more_rows, LORA, _record())
    assert f"model.overrides.n_cameras_emb: {NETWORK.n_cameras_emb} -> {NETWORK.n_cameras_emb + 1}" in changes.refused
    assert "model.lora: off -> on" in changes.refused


def test_followed_changes_are_listed_and_a_batch_that_does_not_divide_the_position_is_refused():
    new = _record(context_parallel_size=2, world_size=4, global_train_batch_size=4)
    changes = compare_with_checkpoint(_recorded(), _record(), "tiny-multiview", NETWORK, LORA, new)
    assert changes.refused == [] and changes.unchecked == []
    assert changes.followed == [
        "global_train_batch_size: 2 -> 4",
        "context_parallel_size: 1 -> 2",
        "processes: 2 -> 4",
    ]
    # At sample 2 of the epoch a batch of 4 does not start a batch: Streaming would repeat samples.
    changes = compare_with_checkpoint(_recorded(), _record(sample_in_epoch=2), "tiny-multiview", NETWORK, LORA, new)
    assert len(changes.refused) == 1 and changes.refused[0].startswith("global_train_batch_size: 2 -> 4 (")


def test_a_checkpoint_without_records_is_compared_on_what_it_has_and_the_rest_said():
    changes = compare_with_checkpoint(_recorded(), None, "tiny-multiview", NETWORK, LORA, _record(train_base=True))
    assert changes.refused == [] and changes.followed == []
    assert len(changes.unchecked) == 1 and "no run.json" in changes.unchecked[0]
    changes = compare_with_checkpoint(None, None, "tiny-multiview", NETWORK, None, _record())
    assert [line.split(" (")[1] for line in changes.unchecked] == [
        "no network.json)",
        "no run.json: written before it existed)",
    ]


def test_sample_counts_are_rescaled_to_the_new_context_parallel_size():
    from composer.core import Timestamp

    restored = Timestamp(epoch=1, batch=8, sample=16, batch_in_epoch=2, sample_in_epoch=4)  # CP 1: 4 samples
    assert int(rescale_sample_counts(restored, 1, 2).sample_in_epoch) == 8
    assert int(rescale_sample_counts(restored, 1, 2).sample) == 32
    assert int(rescale_sample_counts(rescale_sample_counts(restored, 1, 2), 2, 1).sample_in_epoch) == 4
    assert int(rescale_sample_counts(restored, 1, 2).batch) == 8


# ----------------------------------------------------------------------------- real runs
# Two of the official cameras (a rig of 2 views: the first run caches 2 views' latents, not 7).
RIG = ("camera_front_wide_120fov", "camera_cross_left_120fov")


@pytest.fixture
def twelve_samples(tmp_path) -> Path:
    """`tmp_path` holding the quickstart's demo raw folder with 12 samples: the first run converts it."""
    raw = tmp_path / "data" / "quickstart_mds_raw"
    make_demo_dataset(raw, samples=SAMPLES, frames=6, height=32, width=48, seed=0, progress=False, cameras=RIG)
    return tmp_path


COMMON = [
    f"train_loader.dataset.cameras=[{','.join(RIG)}]",
    f"model.overrides.n_cameras_emb={len(RIG)}",
    "eval_loader=null",
    "callbacks.sample_videos=null",
    "callbacks.data_log={}",
    "save_interval=1ba",
    "progress_bar=false",
    "log_to_console=true",
    "console_log_interval=1ba",
]


def _composer(root: Path, *args: str, processes: int = 2) -> subprocess.CompletedProcess:
    command = [os.path.join(os.path.dirname(sys.executable), "composer"), "-n", str(processes)]
    return subprocess.run(
        [*command, str(REPO / "train.py"), str(QUICKSTART), *COMMON, *args],
        cwd=root,
        env=train_env(root),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _one_process(root: Path, *args: str) -> subprocess.CompletedProcess:
    return run_train([*COMMON, *args], root)


def _ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def _epoch_samples(root: Path, epoch: int = 0) -> Counter:
    lines = [json.loads(line) for line in root.joinpath(*RUN, "data_log.jsonl").read_text().splitlines()]
    return Counter(name for line in lines if line["epoch"] == epoch for name in line["samples"])


def _trained_once_so_far(root: Path, batches: int) -> Counter:
    """The samples of epoch 0 so far: `batches` batches of 2, none trained twice."""
    seen = _epoch_samples(root)
    assert sum(seen.values()) == 2 * batches and set(seen.values()) == {1}, seen
    return seen


def test_cp_and_process_changes_train_every_sample_once(twelve_samples):
    """Legs of one epoch (6 batches), each ending at its checkpoint: CP 1 -> 2 -> 2 -> 1 -> 1, processes
    2 -> 2 -> 2 -> 1 -> 2."""
    root = twelve_samples
    _ok(_composer(root, "max_duration=2ba"))  # CP 1 on 2 processes: batches 1-2
    out = _ok(_composer(root, "max_duration=3ba", "context_parallel_size=2"))
    assert "resume: changed since ep0-ba2, followed: context_parallel_size: 1 -> 2; data_parallel_size: 2 -> 1" in out
    out = _ok(_composer(root, "max_duration=4ba", "context_parallel_size=2"))
    assert "followed" not in out
    _trained_once_so_far(root, 4)
    out = _ok(_one_process(root, "max_duration=5ba"))
    assert "resume: changed since ep0-ba4, followed: context_parallel_size: 2 -> 1; processes: 2 -> 1" in out
    out = _ok(_composer(root, "max_duration=6ba"))
    assert "resume: changed since ep0-ba5, followed: processes: 1 -> 2; data_parallel_size: 1 -> 2" in out
    seen = _trained_once_so_far(root, 6)
    assert sorted(seen) == [f"demo_{i:04d}" for i in range(SAMPLES)]


def _lines(root: Path, *args: str) -> tuple[int, str]:
    result = run_train([*COMMON_ONE_PROCESS, *args], root)
    return result.returncode, result.stdout + result.stderr


COMMON_ONE_PROCESS = ["callbacks.sample_videos=null", "save_interval=1ba", "progress_bar=false", "model.lora={}"]
CAMERAS = DEFAULT_CAMERAS  # the official rig, in its view order


def _convert_again_one_sample_per_shard(mds: Path) -> None:
    """The same samples written again into one shard each (as a re-conversion with another shard size would)."""
    shard = json.loads((mds / "index.json").read_text())["shards"][0]
    rows = list(LocalDataset(local=str(mds)))
    shutil.rmtree(mds)
    columns = dict(zip(shard["column_names"], shard["column_encodings"]))
    with MDSWriter(out=str(mds), columns=columns, hashes=shard["hashes"], size_limit=1) as writer:
        for row in rows:
            writer.write(row)


def test_finished_epochs_changed_configs_and_a_stray_checkpoint(tmp_path, demo_mds):
    train_mds = shutil.copytree(demo_mds, tmp_path / "train_mds")  # converted again below
    data = [f"train_loader.dataset.local={train_mds}", f"eval_loader.dataset.local={demo_mds}", "eval_interval=1ep"]
    checkpoints = tmp_path.joinpath(*RUN, "checkpoints")
    rc, out = _lines(tmp_path, *data, "max_duration=1ep")  # 4 samples: batches 1-2, the last saved at batch 2
    assert rc == 0 and "frozen" in out, out[-3000:]  # the model's trainable counts: built
    written = sorted(p.name for p in checkpoints.iterdir())
    assert written == ["ep0-ba1", "ep0-ba2", "latest-rank0.pt"]

    # Run again: complete, exit 0, no eval and no second checkpoint.
    rc, out = _lines(tmp_path, *data, "max_duration=1ep")
    assert rc == 0 and "already complete at epoch 1 (batch 2)" in out, out[-3000:]
    assert "Eval" not in out and sorted(p.name for p in checkpoints.iterdir()) == written

    # Changes the checkpoint's state cannot follow: refused before the model is built, each key named.
    reordered = f"[{','.join((CAMERAS[1], CAMERAS[0], *CAMERAS[2:]))}]"
    rc, out = _lines(
        tmp_path,
        *data,
        "max_duration=2ep",
        "model.lora.alpha=64",
        f"train_loader.dataset.cameras={reordered}",
        f"eval_loader.dataset.cameras={reordered}",
    )
    assert rc != 0 and "checkpoint error: resume refused:" in out and "frozen" not in out
    assert "model.lora.alpha: 32.0 -> 64.0" in out
    assert f"train_loader.dataset.cameras: {list(CAMERAS)} -> {[CAMERAS[1], CAMERAS[0], *CAMERAS[2:]]}" in out
    assert f"load_path={checkpoints / 'ep0-ba2'}" in out and "a new run_name" in out
    rc, out = _lines(tmp_path, *data, "max_duration=2ep", "model.lora=null", "model.train_base=true")
    assert rc != 0 and "model.lora: on -> off; model.train_base: False -> True." in out

    # The dataset converted again into other shards (same samples): the checkpoint's position would point at
    # other samples, so the resume is refused naming the dataset.
    _convert_again_one_sample_per_shard(train_mds)
    rc, out = _lines(tmp_path, *data, "max_duration=2ep")
    assert rc != 0 and "checkpoint error: resume refused:" in out and "frozen" not in out, out[-3000:]
    assert "index.json" in out, out[-3000:]
    shutil.rmtree(train_mds)
    shutil.copytree(demo_mds, train_mds)  # the shards the checkpoint was trained on, for the checks below

    # A newer checkpoint of the other layout is refused by name, never chosen.
    (checkpoints / "ep9-ba99-rank0.pt").write_bytes(b"stray")
    rc, out = _lines(tmp_path, *data, "max_duration=2ep")
    assert rc != 0 and "checkpoint error: autoresume:" in out
    assert "holds ep9-ba99-rank0.pt, a single-file checkpoint newer than this run's" in out
    assert "already complete" not in out and "Fix: move ep9-ba99-rank0.pt out of" in out
