"""Exports beside live runs: never into a checkpoint, exactly this export's files, the checkpoint pinned while a
run's rotation deletes it, and --verify that needs checksums and names every unreadable file.

The checkpoints are small DCP folders in Composer's layout (`state.model.net.*`, `state.model.net_ema.*`) of the
tiny single-view network, with the network.json and checksums.json that training writes beside them. The
rotation is Composer's own (`CheckpointSaver._rotate_checkpoints`), called while the export reads.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from composer.callbacks import CheckpointSaver
from helpers import flip_bytes

import cosmos_composer.checkpoint.composer_checkpoint as reader_module
import cosmos_composer.checkpoint.export as export_module
import cosmos_composer.checkpoint.pin as pin_module
from cosmos_composer.checkpoint.export import MODEL_EMA_FP32, ExportError, export
from cosmos_composer.checkpoint.integrity import CHECKSUMS_FILE, digests_of, verify_checksums, write_checksums
from cosmos_composer.checkpoint.network_config import NETWORK_FILE, write_network_config
from cosmos_composer.models import build_network

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "export_checkpoint.py"
PRESET = "tiny-singleview"


def _checkpoint(folder: Path, seed: int = 0, checksums: bool = True) -> dict[str, torch.Tensor]:
    """A checkpoint as training writes it (shard, index, network.json, checksums.json); returns its EMA weights."""
    net = build_network(PRESET)
    generator = torch.Generator().manual_seed(seed)
    weights = {key: torch.randn(value.shape, generator=generator) for key, value in net.state_dict().items()}
    ema = {key: value + 1 for key, value in weights.items()}
    model = {**{f"net.{k}": v for k, v in weights.items()}, **{f"net_ema.{k}": v for k, v in ema.items()}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"state": {"model": model}}, checkpoint_id=str(folder), no_dist=True)
    write_network_config(folder / NETWORK_FILE, PRESET, net.config)
    if checksums:
        write_checksums(folder, digests_of(folder, [".metadata", "__0_0.distcp", NETWORK_FILE]))
    return ema


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def _run_script(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args), "--quiet"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _one_error_line(stderr: str) -> str:
    """The one `error:` line (warnings may precede it, a traceback may not)."""
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-2000:]
    return errors[0]


# ----------------------------------------------------------------------------- never into a checkpoint
def test_an_export_into_a_checkpoint_folder_is_refused_before_anything_is_written(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    _checkpoint(checkpoints / "ep0-ba2")
    _checkpoint(checkpoints / "ep1-ba4", seed=1)
    (checkpoints / "ep1-ba6").mkdir()  # a save in progress: no .metadata yet, known by its name
    before = _contents(checkpoints)

    result = _run_script(checkpoints / "ep0-ba2", checkpoints / "ep0-ba2", cwd=tmp_path)  # CK CK
    assert result.returncode == 1
    line = _one_error_line(result.stderr)
    assert f"OUT_DIR {checkpoints / 'ep0-ba2'} is the checkpoint folder {checkpoints.resolve() / 'ep0-ba2'}" in line
    assert "Fix: choose an OUT_DIR outside every checkpoint folder" in line

    for out, enclosing in (
        (checkpoints / "ep0-ba2" / "exported", "ep0-ba2"),  # inside the exported checkpoint
        (checkpoints / "ep1-ba4", "ep1-ba4"),  # another checkpoint of the run
        (checkpoints / "ep1-ba6" / "x", "ep1-ba6"),  # a checkpoint still being saved
    ):
        with pytest.raises(ExportError, match=rf"OUT_DIR {out} (is|is inside) the checkpoint folder .*/{enclosing} "):
            export(checkpoints / "ep0-ba2", out, progress=False)
    assert _contents(checkpoints) == before  # nothing written, nothing replaced
    assert sorted(path.name for path in checkpoints.iterdir()) == ["ep0-ba2", "ep1-ba4", "ep1-ba6"]  # no staging

    # Beside the checkpoints (the run folder, a sibling) is fine.
    assert export(checkpoints, checkpoints.parent / "exported", progress=False).checkpoint.name == "ep1-ba4"
    assert _contents(checkpoints) == before


# ----------------------------------------------------------------------------- exactly this export's files
def test_an_export_folder_holds_exactly_the_files_of_the_last_export(tmp_path):
    pytest.importorskip("diffusers")
    checkpoint = tmp_path / "checkpoints" / "ep0-ba2"
    _checkpoint(checkpoint)
    out = tmp_path / "exported"
    export(checkpoint, out, formats="all", progress=False)  # official + transformer/ + controlnet/
    assert (out / "transformer").is_dir() and (out / "controlnet").is_dir()
    (out / "notes.txt").write_text("the user's own file")

    export(checkpoint, out, formats="official", progress=False)
    listed = set(json.loads((out / CHECKSUMS_FILE).read_text())["files"])
    assert set(_contents(out)) == listed | {CHECKSUMS_FILE, "notes.txt"}  # no stale diffusers folders
    assert verify_checksums(out) and (out / "notes.txt").read_text() == "the user's own file"

    # An export killed while publishing left no checksums and a stale lora_adapter/ (a --no-merge LoRA export's):
    # the names exports write are removed all the same.
    (out / CHECKSUMS_FILE).unlink()
    (out / "lora_adapter").mkdir()
    (out / "lora_adapter" / "adapter_model.safetensors").write_bytes(b"stale")
    export(checkpoint, out, formats="official", progress=False)
    assert set(_contents(out)) == listed | {CHECKSUMS_FILE, "notes.txt"}


# ----------------------------------------------------------------------------- pinned while read
def _rotate(saver_folder: Path, checkpoints: list[Path], keep: int) -> None:
    """Composer's rotation, as a run with save_num_checkpoints_to_keep=`keep` does it after a save (rank 0)."""
    saver = CheckpointSaver(folder=str(saver_folder), num_checkpoints_to_keep=keep)
    saver.saved_checkpoints = [str(path / "__0_0.distcp") for path in checkpoints]  # what a sharded save records
    saver._rotate_checkpoints(sharding_enabled=True)


def test_a_rotation_while_the_export_reads_does_not_fail_it(tmp_path, monkeypatch):
    checkpoints = tmp_path / "checkpoints"
    expected = _checkpoint(checkpoints / "ep0-ba2")
    _checkpoint(checkpoints / "ep1-ba4", seed=1)
    real_reader = reader_module.safe_dcp_reader

    def reader_while_the_run_rotates(folder):  # just before the shards are read
        if (checkpoints / "ep0-ba2").exists():
            _rotate(checkpoints, [checkpoints / "ep0-ba2", checkpoints / "ep1-ba4"], keep=1)  # deletes ep0-ba2
            assert not (checkpoints / "ep0-ba2").exists()
        return real_reader(folder)

    monkeypatch.setattr(reader_module, "safe_dcp_reader", reader_while_the_run_rotates)
    result = export(checkpoints / "ep0-ba2", tmp_path / "out", verify=True, progress=False)
    assert result.verified and result.checkpoint == (checkpoints / "ep0-ba2").resolve()
    exported = torch.load(tmp_path / "out" / MODEL_EMA_FP32, weights_only=True)
    assert all(torch.equal(exported[f"net.{key}"], value) for key, value in expected.items())
    assert sorted(path.name for path in checkpoints.iterdir()) == ["ep1-ba4"]  # the pin is gone, its space freed

    # Where hard links cannot be made, the checkpoint is read in place: the deletion is named in one line.
    _checkpoint(checkpoints / "ep0-ba2")

    def no_links(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(pin_module.os, "link", no_links)
    with pytest.raises(
        ExportError, match=r"ep0-ba2/(\.metadata|__0_0\.distcp) was deleted while it was read .*rotation"
    ):
        export(checkpoints / "ep0-ba2", tmp_path / "out2", progress=False)


def test_a_checkpoint_rotated_away_before_it_is_pinned_gives_the_next_newest_or_a_clear_error(tmp_path, monkeypatch):
    checkpoints = tmp_path / "checkpoints"
    _checkpoint(checkpoints / "ep0-ba2")
    _checkpoint(checkpoints / "ep1-ba4", seed=1)
    _checkpoint(checkpoints / "ep1-ba6", seed=2)
    real_find = export_module.find_checkpoint

    def found_then_rotated(path, verify=False):
        found = real_find(path, verify=verify)
        if found.name == "ep1-ba6":
            shutil.rmtree(found)  # the run deletes it between the choice and the pin (keep=... of another run)
        return found

    monkeypatch.setattr(export_module, "find_checkpoint", found_then_rotated)
    assert export(checkpoints, tmp_path / "out", progress=False).checkpoint.name == "ep1-ba4"

    _checkpoint(checkpoints / "ep1-ba6", seed=2)
    with pytest.raises(ExportError, match=r"ep1-ba6 was deleted while the export pinned it .*pass a newer"):
        export(checkpoints / "ep1-ba6", tmp_path / "out2", progress=False)


# ----------------------------------------------------------------------------- --verify and unreadable files
def test_verify_refuses_a_checkpoint_without_checksums_unless_told(tmp_path):
    checkpoint = tmp_path / "checkpoints" / "ep0-ba2"
    _checkpoint(checkpoint, checksums=False)
    network = json.loads((checkpoint / NETWORK_FILE).read_text())
    network["config"]["rope_t_extrapolation_ratio"] = 3.0  # edited; no checksums to tell
    (checkpoint / NETWORK_FILE).write_text(json.dumps(network))

    result = _run_script(checkpoint, tmp_path / "out", "--verify", cwd=tmp_path)
    assert result.returncode == 1 and not (tmp_path / "out").exists()
    line = _one_error_line(result.stderr)
    assert (
        f"{checkpoint.resolve()} has no {CHECKSUMS_FILE}, so --verify cannot tell" in line and "--no-checksums" in line
    )
    result = _run_script(checkpoint, tmp_path / "out", "--verify", "--no-checksums", cwd=tmp_path)
    assert result.returncode == 0 and "verified" in result.stdout, result.stderr[-2000:]


def test_a_network_json_edited_after_its_checksums_is_caught(tmp_path):
    checkpoint = tmp_path / "checkpoints" / "ep0-ba2"
    _checkpoint(checkpoint)
    network = json.loads((checkpoint / NETWORK_FILE).read_text())
    assert network["config"]["rope_t_extrapolation_ratio"] == 1.0
    network["config"]["rope_t_extrapolation_ratio"] = 3.0
    (checkpoint / NETWORK_FILE).write_text(json.dumps(network, indent=2) + "\n")  # the same size: only the sha tells
    with pytest.raises(ExportError, match=rf"ep0-ba2 is corrupt: .*ep0-ba2/{NETWORK_FILE} does not match"):
        export(checkpoint, tmp_path / "out", verify=True, progress=False)
    assert not (tmp_path / "out").exists()


def test_unreadable_files_of_a_checkpoint_without_checksums_are_named_in_one_line(tmp_path):
    flipped = tmp_path / "flipped" / "ep0-ba2"
    _checkpoint(flipped, checksums=False)
    flip_bytes(flipped / "__0_0.distcp", offset=0, count=64)  # the first tensor record's header
    foreign = tmp_path / "foreign" / "ep0-ba2"
    _checkpoint(foreign, checksums=False)
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")  # a torch file where the DCP index belongs
    shutil.copyfile(tmp_path / "other.pt", foreign / ".metadata")

    for checkpoint, named in ((flipped, "__0_0.distcp"), (foreign, ".metadata")):
        result = _run_script(checkpoint, tmp_path / "out", "--verify", "--no-checksums", cwd=tmp_path)
        assert result.returncode == 1
        line = _one_error_line(result.stderr)  # no traceback
        assert f"{checkpoint.resolve()}" in line and named in line, line
        assert "weights_only" not in line and "PytorchStreamReader" not in line
