"""No code from checkpoint files, files routed by content, checksums that catch corruption, exports as a set.

The planted files hold a pickled call of `os.system("touch <marker>")`: a loader that unpickles them with the
full `pickle` module creates the marker file; a safe one refuses the file, naming the class, and no marker
appears.
"""

from __future__ import annotations

import os
import pickle
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from helpers import flip_bytes
from torch.distributed.checkpoint.api import CheckpointException

from cosmos_composer.checkpoint.autoresume import plan_resume
from cosmos_composer.checkpoint.composer_checkpoint import find_checkpoint
from cosmos_composer.checkpoint.export import MODEL_EMA_BF16, ExportError, export
from cosmos_composer.checkpoint.integrity import CHECKSUMS_FILE, ChecksumMismatch, verify_checksums
from cosmos_composer.checkpoint.load import (
    CheckpointLoadError,
    is_composer_checkpoint,
    read_checkpoint_state,
    read_state_dict,
)
from cosmos_composer.checkpoint.safe_pickle import (
    UnsafePickleError,
    composer_loads_safely,
    read_dcp_metadata,
    safe_dcp_reader,
    unsafe_pickle_in,
)
from cosmos_composer.models import build_network


class _RunsCode:
    """Unpickling this runs `os.system(command)`."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _planted(tmp_path) -> tuple[_RunsCode, os.PathLike]:
    marker = tmp_path / "code-ran"
    return _RunsCode(f"touch {marker}"), marker


def _weights(preset: str = "tiny-singleview") -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {f"net.{k}": v for k, v in build_network(preset).state_dict().items()}


def _save_dcp(folder, state: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=str(folder), no_dist=True)


def _checkpoint(folder) -> None:
    """A Composer-layout sharded checkpoint of the tiny network, with EMA, and its checksums."""
    from cosmos_composer.checkpoint.integrity import digests_of, write_checksums

    weights = _weights()
    model = {**weights, **{"net_ema." + k[4:]: v + 1 for k, v in weights.items()}}
    _save_dcp(folder, {"state": {"model": model}})
    write_checksums(folder, digests_of(folder, [".metadata", "__0_0.distcp"]))


# ----------------------------------------------------------------------------- no code from files
def test_a_planted_dcp_index_is_refused_everywhere_naming_its_class(tmp_path):
    folder = tmp_path / "checkpoints" / "ep0-ba2"
    _checkpoint(folder)
    payload, marker = _planted(tmp_path)
    (folder / ".metadata").write_bytes(pickle.dumps(payload))
    (folder / CHECKSUMS_FILE).unlink()  # a planted checkpoint brings no checksums, or forged ones

    with pytest.raises(UnsafePickleError, match=r"holds a pickled posix\.system"):
        read_dcp_metadata(folder)
    with pytest.raises(UnsafePickleError, match=r"posix\.system"):
        plan_resume(folder.parent)  # autoresume: a planted file stops the run, it is not stepped over
    with pytest.raises(ExportError, match=r"posix\.system"):
        export(folder, tmp_path / "out", progress=False)
    with pytest.raises(CheckpointLoadError, match=r"posix\.system"):
        read_checkpoint_state(folder)
    from composer.utils.checkpoint import FileSystemReaderWithValidation

    with composer_loads_safely(), pytest.raises(UnsafePickleError):
        import composer.utils.checkpoint as composer_checkpoint

        composer_checkpoint.FileSystemReaderWithValidation(str(folder)).read_metadata()  # Composer's own reader
    assert FileSystemReaderWithValidation is composer_checkpoint.FileSystemReaderWithValidation  # restored
    assert not marker.exists()


def test_a_planted_object_inside_a_shard_is_refused(tmp_path):
    payload, marker = _planted(tmp_path)
    folder = tmp_path / "ep0-ba1"
    _save_dcp(folder, {"state": {"run_name": payload, "x": torch.ones(2)}})  # a non-tensor entry: pickled bytes
    with pytest.raises(CheckpointException) as info:
        dcp.load(
            {"state": {"run_name": None, "x": torch.zeros(2)}}, storage_reader=safe_dcp_reader(folder), no_dist=True
        )
    refusal = unsafe_pickle_in(info.value)  # what train.py prints
    assert refusal is not None and "entry state.run_name" in str(refusal) and "posix.system" in str(refusal)
    assert not marker.exists()
    # Composer's training state (numpy RNG, timedeltas, ...) still loads.
    import datetime

    import numpy as np

    state = {"rng": np.random.get_state(), "wct": datetime.timedelta(seconds=3), "step": 7}
    _save_dcp(tmp_path / "good", {"state": state})
    loaded = {"state": {"rng": None, "wct": None, "step": None}}
    dcp.load(loaded, storage_reader=safe_dcp_reader(tmp_path / "good"), no_dist=True)
    assert loaded["state"]["wct"] == state["wct"] and (loaded["state"]["rng"][1] == state["rng"][1]).all()


def test_a_composer_checkpoint_is_told_by_content_not_by_name(tmp_path):
    payload, marker = _planted(tmp_path)
    evil = tmp_path / "ep0-ba1-rank0.pt"  # named like a Composer checkpoint
    torch.save({"state": {"run_name": payload}, "rng": []}, evil)
    with pytest.raises(CheckpointLoadError, match=r"holds a pickled posix\.system"):
        is_composer_checkpoint(evil)
    import composer.utils.checkpoint as composer_checkpoint

    with composer_loads_safely(), pytest.raises(UnsafePickleError, match=r"posix\.system"):
        composer_checkpoint._torch_load_with_validation(str(evil), map_location="cpu")  # what Composer calls
    assert not marker.exists()

    weights = tmp_path / "ep9-ba20-rank0.pt"  # consolidated weights, despite the name
    torch.save(_weights(), weights)
    composer_file = tmp_path / "weights.pt"  # a Composer checkpoint, despite the name
    torch.save({"state": {"model": {}}, "rng": []}, composer_file)
    sharded = tmp_path / "any_name"
    _checkpoint(sharded)
    assert not is_composer_checkpoint(weights)
    assert is_composer_checkpoint(composer_file) and is_composer_checkpoint(sharded)
    no_index = tmp_path / "no_index"
    no_index.mkdir()
    with pytest.raises(CheckpointLoadError, match="without a .metadata index"):
        is_composer_checkpoint(no_index)


def test_a_planted_load_path_stops_train_py_before_anything_runs(tmp_path):
    from helpers import run_train

    payload, marker = _planted(tmp_path)
    evil = tmp_path / "latest-rank0.pt"
    torch.save({"state": {"run_name": payload}, "rng": []}, evil)
    result = run_train([f"load_path={evil}", "parallelism_config=null", "max_duration=1ba"], tmp_path)
    assert result.returncode != 0
    assert f"load_path='{evil}'" in result.stderr and "posix.system" in result.stderr
    assert not marker.exists()


# ----------------------------------------------------------------------------- checksums
def test_flipped_bytes_in_a_shard_are_named_by_resume_export_and_generate(tmp_path):
    folder = tmp_path / "checkpoints"
    _checkpoint(folder / "ep0-ba2")
    _checkpoint(folder / "ep1-ba4")
    assert verify_checksums(folder / "ep1-ba4")
    flip_bytes(folder / "ep1-ba4" / "__0_0.distcp")

    with pytest.raises(ChecksumMismatch, match=r"ep1-ba4/__0_0\.distcp does not match the sha256"):
        verify_checksums(folder / "ep1-ba4")
    plan = plan_resume(folder)  # falls back to the previous intact checkpoint, saying why
    assert plan.checkpoint.name == "ep0-ba2" and "does not match" in plan.skipped["ep1-ba4"]
    assert "ep1-ba4 is not intact" in plan.describe(folder) and "checksums verified" in plan.describe(folder)
    with pytest.raises(ExportError, match=r"ep1-ba4 is corrupt: .*__0_0\.distcp does not match"):
        export(folder / "ep1-ba4", tmp_path / "out", progress=False)  # named: an error
    result = export(folder, tmp_path / "out", progress=False)  # the newest: the intact one, saying so
    assert result.checkpoint.name == "ep0-ba2"
    with pytest.raises(CheckpointLoadError, match="does not match"):
        read_checkpoint_state(folder / "ep1-ba4")


def test_resume_export_and_loading_step_over_the_same_broken_checkpoints(tmp_path):
    """One "newest intact" rule: a newer checkpoint whose shard is shorter than its index says (no checksums to
    tell) and one whose save did not finish (no .metadata) are stepped over alike by autoresume, export and the
    loaders."""
    folder = tmp_path / "checkpoints"
    _checkpoint(folder / "ep0-ba2")
    _checkpoint(folder / "ep1-ba4")
    (folder / "ep1-ba4" / CHECKSUMS_FILE).unlink()  # written before checksums existed: only the index can tell
    shard = folder / "ep1-ba4" / "__0_0.distcp"
    os.truncate(shard, shard.stat().st_size // 2)
    (folder / "ep1-ba6").mkdir()  # killed during its save

    plan = plan_resume(folder)
    assert plan.checkpoint.name == "ep0-ba2" and list(plan.skipped) == ["ep1-ba6", "ep1-ba4"]
    assert "__0_0.distcp is truncated" in plan.skipped["ep1-ba4"]
    intact = plan.checkpoint.resolve()
    assert find_checkpoint(folder, verify=True) == intact  # what generation and base_load_path read
    assert export(folder, tmp_path / "out", progress=False).checkpoint == intact
    with pytest.raises(ExportError, match=r"ep1-ba4 is corrupt: __0_0\.distcp is truncated"):
        export(folder / "ep1-ba4", tmp_path / "out", progress=False)  # named: an error, not a silent fallback


def test_adapters_without_recorded_lora_settings_are_refused_alike_by_export_and_loading(tmp_path):
    folder = tmp_path / "ep0-ba2"
    weights = _weights()
    adapter = {"blocks.0.self_attn.q_proj.lora_A.default.weight": torch.zeros(2, 8)}
    model = {**weights, **{f"{prefix}{k}": v for prefix in ("net.", "net_ema.") for k, v in adapter.items()}}
    model.update({"net_ema." + k[4:]: v for k, v in weights.items()})
    _save_dcp(folder, {"state": {"model": model}})  # no network.json: no LoRA settings recorded

    refusal = rf"{folder.resolve()} holds LoRA adapters but its network.json records no LoRA settings"
    with pytest.raises(ExportError, match=refusal):
        export(folder, tmp_path / "out", progress=False)
    with pytest.raises(CheckpointLoadError, match=refusal):
        read_checkpoint_state(folder)


def test_an_export_is_written_as_a_set_with_checksums(tmp_path, monkeypatch):
    import cosmos_composer.checkpoint.export as export_module

    _checkpoint(tmp_path / "ep0-ba2")
    out = tmp_path / "exported"
    export(tmp_path / "ep0-ba2", out, progress=False)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    assert CHECKSUMS_FILE in before and verify_checksums(out)
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # a normal folder, not the staging folder's private mode

    # An export that dies after its first file leaves the previous set as it was, and no staging folder.
    _checkpoint(tmp_path / "ep1-ba4")
    real_save, calls = export_module._torch_save, []

    def dies_on_the_second_file(state, path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        real_save(state, path)

    monkeypatch.setattr(export_module, "_torch_save", dies_on_the_second_file)
    with pytest.raises(KeyboardInterrupt):
        export(tmp_path / "ep1-ba4", out, progress=False)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert [path.name for path in tmp_path.iterdir() if ".partial-" in path.name] == []

    # A stale staging folder of a killed export (a dead pid) is removed by the next export.
    from cosmos_composer.data.output import partial_dir_prefix

    stale = tmp_path / (partial_dir_prefix(out, pid=2**22 + 1) + "x")
    stale.mkdir()
    monkeypatch.setattr(export_module, "_torch_save", real_save)
    export(tmp_path / "ep1-ba4", out, progress=False)
    assert not stale.exists() and verify_checksums(out)

    # A file of the set that changes afterwards is named when it is read (load_path, generate).
    flip_bytes(out / MODEL_EMA_BF16, offset=2000, count=16)
    with pytest.raises(CheckpointLoadError, match=rf"{MODEL_EMA_BF16} does not match the sha256"):
        read_state_dict(out / MODEL_EMA_BF16)
