"""Export of Composer sharded checkpoints to the official formats and to diffusers (cosmos_composer.checkpoint.export).

The round trip trains the quickstart model for two batches in one process with FSDP2 (a real sharded DCP
checkpoint), with an override that changes no tensor shape (`model.overrides.rope_t_extrapolation_ratio=2.0`),
and checks the exported files against torch's own `dcp_to_torch_save` of the same checkpoint.
The other tests use small DCP checkpoints written here with `dcp.save`, in the layout Composer uses
(`state.model.net.*`, `state.model.net_ema.*`), holding random weights and no network.json, as the
checkpoints written before network.json existed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from cosmos_composer.checkpoint.composer_checkpoint import (
    CheckpointReadError,
    find_checkpoint,
    read_composer_model_state,
)
from cosmos_composer.checkpoint.export import (
    MODEL_EMA_BF16,
    MODEL_EMA_FP32,
    MODEL_PT,
    ExportError,
    VerificationError,
    example_inputs,
    export,
    official_state_dicts,
    verify_export,
)
from cosmos_composer.checkpoint.integrity import CHECKSUMS_FILE
from cosmos_composer.checkpoint.keys import with_shared_ema_keys
from cosmos_composer.checkpoint.load import (
    CheckpointLoadError,
    load_consolidated_into_network,
    load_network_weights,
    read_state_dict,
)
from cosmos_composer.checkpoint.network_config import NETWORK_FILE, read_network_config
from cosmos_composer.checkpoint.network_weights import load_network
from cosmos_composer.models import build_network
from cosmos_composer.models.composer_model import CosmosTransferModel
from cosmos_composer.models.released_keys import RELEASED_VARIANT_OF_PRESET

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "yamls" / "quickstart.yaml"
# The trained run's one override: it changes what the network computes, and no tensor shape.
TRAINED_OVERRIDES = {"rope_t_extrapolation_ratio": 2.0}
SCRIPT = REPO / "scripts" / "export_checkpoint.py"
RELEASED_KEYS = REPO / "cosmos_composer" / "spec" / "released_checkpoint_keys.json"


def _env(root: Path) -> dict:
    env = dict(os.environ)
    env["COSMOS_OUTPUT_ROOT"] = str(root / "out")
    env.pop("WANDB_API_KEY", None)
    env.pop("WANDB_MODE", None)
    env["NETRC"] = str(root / "no-netrc")
    env["PYTHONUNBUFFERED"] = "1"
    env["OMP_NUM_THREADS"] = "1"  # see _one_thread
    return env


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The networks here are tiny: on a shared CPU one thread is several times faster than two (no OpenMP waits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run_script(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        cwd=cwd,
        env=_env(cwd),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The run folder of a 2-batch quickstart run (tiny multiview, FSDP2, sharded checkpoint at batch 2)."""
    root = tmp_path_factory.mktemp("train")
    overrides = [f"model.overrides.{key}={value}" for key, value in TRAINED_OVERRIDES.items()]
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            str(QUICKSTART),
            "max_duration=2ba",
            "save_interval=2ba",
            "eval_loader=null",
            "parallelism_config.fsdp.state_dict_type=sharded",
            *overrides,
        ],
        cwd=root,
        env=_env(root),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = root / "out" / "cosmos_composer" / "quickstart" / "quickstart"
    # One process with parallelism_config.fsdp writes a sharded DCP checkpoint, its network.json, run.json and checksums.
    assert sorted(p.name for p in (run / "checkpoints" / "ep0-ba2").iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "checksums.json",
        NETWORK_FILE,
        "run.json",
    ]
    return run


@pytest.fixture(scope="module")
def reference_model_state(trained, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The model state as torch's own DCP converter reads it (the independent reference), with the official
    key set: the checkpoint stores the EMA's frozen weights once, under `net.*` (in training they are `net`'s
    tensors), so `net_ema.<frozen>` is `net.<frozen>` here."""
    consolidated = tmp_path_factory.mktemp("reference") / "full.pt"
    dcp_to_torch_save(str(trained / "checkpoints" / "ep0-ba2"), str(consolidated))
    saved = torch.load(consolidated, weights_only=False)["state"]["model"]
    net, ema = _strip(saved, "net."), _strip(saved, "net_ema.")
    assert set(ema) == set(build_network("tiny-multiview").control_branch_parameter_names())  # each tensor once
    training_weights = {key: value for key, value in saved.items() if not key.startswith("net_ema.")}
    return {**training_weights, **{f"net_ema.{key}": ema.get(key, value) for key, value in net.items()}}


@torch.no_grad()
def _random_weights(net: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Every parameter random (also the zero-initialised projections), so every branch contributes."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, param in net.state_dict().items():
        noise = torch.randn(param.shape, generator=generator)
        if param.ndim == 1 and "norm" in name:
            weights[name] = 1.0 + 0.2 * noise
        elif param.ndim == 1:
            weights[name] = 0.2 * noise
        else:
            weights[name] = noise / param.shape[-1] ** 0.5
    return weights


def _write_dcp(folder: Path, preset: str = "tiny-singleview", with_ema: bool = True, **overrides) -> dict:
    """A Composer-layout DCP checkpoint with random `net.*` and (different) `net_ema.*`; returns the model state."""
    net = build_network(preset, **overrides)
    model_state = {f"net.{k}": v for k, v in _random_weights(net, seed=1).items()}
    if with_ema:
        model_state.update({f"net_ema.{k}": v for k, v in _random_weights(net, seed=2).items()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"state": {"model": model_state}}, checkpoint_id=str(folder), no_dist=True)
    return model_state


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


# ----------------------------------------------------------------------------- round trip
def test_round_trip_train_export_strict_load_bit_identical(trained, reference_model_state, tmp_path):
    reference = reference_model_state
    trained_key = "control_blocks.0.after_proj.weight"
    # The control branch trained and the EMA lags, so mixing up net and net_ema would be caught below.
    assert not torch.equal(reference["net." + trained_key], reference["net_ema." + trained_key])

    out = tmp_path / "exported"
    result = export(trained / "checkpoints" / "latest-rank0.pt", out, progress=False)
    assert result.checkpoint == (trained / "checkpoints" / "ep0-ba2").resolve()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MODEL_PT, MODEL_EMA_FP32, MODEL_EMA_BF16, NETWORK_FILE, CHECKSUMS_FILE]
    )
    assert not torch.distributed.is_initialized()  # read without a process group

    model_pt = torch.load(out / MODEL_PT, weights_only=True)
    ema_fp32 = torch.load(out / MODEL_EMA_FP32, weights_only=True)
    ema_bf16 = torch.load(out / MODEL_EMA_BF16, weights_only=True)

    # model.pt is the model state exactly as saved: the frozen weights in bf16 (as upstream stores them),
    # the trained control branch as fp32 masters, in net.* and net_ema.* alike.
    assert list(model_pt) == list(reference)
    trained_keys = set(build_network("tiny-multiview").control_branch_parameter_names())
    for key, value in reference.items():
        dtype = torch.float32 if key.split(".", 1)[1] in trained_keys else torch.bfloat16
        assert model_pt[key].dtype == value.dtype == dtype and torch.equal(model_pt[key], value), key
    # model_ema_fp32.pt is net_ema.* renamed to net.*; model_ema_bf16.pt its bf16 cast.
    ema = _strip(reference, "net_ema.")
    assert set(ema_fp32) == set(ema_bf16) == {f"net.{k}" for k in ema}
    for key, value in ema.items():
        assert ema_fp32[f"net.{key}"].dtype == torch.float32 and torch.equal(ema_fp32[f"net.{key}"], value), key
        assert ema_bf16[f"net.{key}"].dtype == torch.bfloat16
        assert torch.equal(ema_bf16[f"net.{key}"], value.to(torch.bfloat16)), key

    # Strict load into a fresh network: bit-identical weights and the same forward output.
    inputs = example_inputs(build_network("tiny-multiview").config, seed=3)
    cases = [(model_pt, "net.", "net."), (model_pt, "net_ema.", "net_ema."), (ema_fp32, "net.", "net_ema.")]
    for file_state, file_prefix, reference_prefix in cases:
        expected = _strip(reference, reference_prefix)
        net = build_network("tiny-multiview", **TRAINED_OVERRIDES).eval()
        load_network_weights(net, _strip(file_state, file_prefix), "exported", strict=True)
        reference_net = build_network("tiny-multiview", **TRAINED_OVERRIDES).eval()
        reference_net.load_state_dict(expected, strict=True)
        for key, value in net.state_dict().items():
            assert torch.equal(value, expected[key].to(value.dtype)), key
        with torch.no_grad():
            assert torch.equal(net(**inputs), reference_net(**inputs))


def test_script_help(capsys):
    spec = importlib.util.spec_from_file_location("export_checkpoint", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--format", "--verify", "--preset", "--set", "--weights", "model_ema_bf16.pt"):
        assert option in help_text


def test_script_exports_and_verifies_the_newest_checkpoint(trained, tmp_path):
    result = _run_script(trained / "checkpoints", tmp_path / "out", "--verify", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "ep0-ba2" in result.stdout
        and "--preset tiny-multiview --set rope_t_extrapolation_ratio=2.0 (from " in result.stdout
    )
    assert "verified" in result.stdout
    assert read_state_dict(tmp_path / "out" / MODEL_EMA_BF16)  # loads with weights_only=True

    result = _run_script(tmp_path / "nowhere", tmp_path / "out2", cwd=tmp_path)
    assert result.returncode == 1 and "nowhere does not exist" in result.stderr


def test_multiview_to_diffusers_is_a_clear_error(trained, tmp_path):
    with pytest.raises(ExportError, match="multiview network.*diffusers has no multiview.*--format official"):
        export(trained / "checkpoints", tmp_path / "out", formats="diffusers", progress=False)
    assert not (tmp_path / "out").exists()  # nothing read or written


# ----------------------------------------------------------------------------- network.json
def test_a_shape_neutral_override_travels_with_the_checkpoint_to_export_generate_and_load_path(
    trained, reference_model_state, tmp_path, caplog
):
    checkpoint = trained / "checkpoints" / "ep0-ba2"
    recorded = read_network_config(checkpoint / NETWORK_FILE)
    assert recorded.preset == "tiny-multiview" and recorded.overrides == TRAINED_OVERRIDES
    assert NETWORK_FILE in json.loads((checkpoint / CHECKSUMS_FILE).read_text())["files"]  # saved before the sums

    out = tmp_path / "exported"
    with caplog.at_level("INFO", logger="cosmos_composer.checkpoint.network_config"):
        result = export(trained / "checkpoints", out, progress=False)  # no --preset
    assert result.network.overrides == TRAINED_OVERRIDES and not result.network.inferred
    assert f"ep0-ba2/{NETWORK_FILE})" in caplog.text  # the log says where the config came from
    assert read_network_config(out / NETWORK_FILE).config == recorded.config  # covered by the export's checksums
    assert NETWORK_FILE in json.loads((out / CHECKSUMS_FILE).read_text())["files"]

    # The network generation builds from the export (no --preset) computes what the trained network computes.
    trained_net = build_network("tiny-multiview", **TRAINED_OVERRIDES).eval()
    trained_net.load_state_dict(_strip(reference_model_state, "net_ema."))
    inputs = example_inputs(trained_net.config, seed=4)
    exported_net, _ = load_network(out / MODEL_EMA_FP32)
    default_net = build_network("tiny-multiview").eval()
    default_net.load_state_dict(_strip(reference_model_state, "net_ema."))
    with torch.no_grad():
        expected = trained_net(**inputs)
        assert torch.equal(exported_net(**inputs), expected)
        assert not torch.allclose(default_net(**inputs), expected)  # the override matters: guessing is wrong

    # A differing --preset is refused, naming the field; load_path into another config too.
    with pytest.raises(ExportError, match=r"rope_t_extrapolation_ratio: 0\.333\d* in --preset/--set, 2\.0 in"):
        export(trained / "checkpoints", tmp_path / "other", preset="tiny-multiview", progress=False)
    with pytest.raises(CheckpointLoadError, match=r"another network config[\s\S]*rope_t_extrapolation_ratio: 2\.0 in"):
        load_consolidated_into_network(build_network("tiny-multiview"), out / MODEL_EMA_FP32, announce=False)
    assert load_consolidated_into_network(
        build_network("tiny-multiview", **TRAINED_OVERRIDES), out / MODEL_EMA_FP32, announce=False
    ).loaded


def test_a_checkpoint_without_network_json_gets_its_preset_inferred_and_says_so(tmp_path, caplog):
    _write_dcp(tmp_path / "ckpt" / "ep0-ba1")  # as the checkpoints saved before network.json existed
    with caplog.at_level("WARNING", logger="cosmos_composer.checkpoint.network_config"):
        result = export(tmp_path / "ckpt", tmp_path / "out", verify=True, progress=False, require_checksums=False)
    assert result.network.inferred and result.network.preset == "tiny-singleview"
    assert f"inferred from the parameter names and shapes: the checkpoint has no {NETWORK_FILE}" in caplog.text
    assert read_network_config(tmp_path / "out" / NETWORK_FILE).config == build_network("tiny-singleview").config


# ----------------------------------------------------------------------------- official key set
@pytest.mark.parametrize("preset", sorted(RELEASED_VARIANT_OF_PRESET))
def test_ema_bf16_keys_are_the_released_keys(preset):
    with torch.device("meta"):
        model = CosmosTransferModel(build_network(preset))
    # As export reads a checkpoint's model state: the EMA's frozen weights, stored once under net.*, filled back.
    files = official_state_dicts(with_shared_ema_keys(model.state_dict()))
    released = json.loads(RELEASED_KEYS.read_text())[RELEASED_VARIANT_OF_PRESET[preset]]
    ema_bf16 = files[MODEL_EMA_BF16]
    assert {k: list(v.shape) for k, v in ema_bf16.items()} == released
    assert all(v.dtype == torch.bfloat16 for v in ema_bf16.values())
    assert set(files[MODEL_EMA_FP32]) == set(released)
    assert set(files[MODEL_PT]) == set(released) | {k.replace("net.", "net_ema.", 1) for k in released}


# ----------------------------------------------------------------------------- diffusers
def test_single_view_diffusers_export_loads_and_matches_our_velocity(tmp_path):
    pytest.importorskip("diffusers")
    from diffusers import CosmosControlNetModel, CosmosTransformer3DModel

    from cosmos_composer.checkpoint.diffusers_format import diffusers_velocity, set_qk_norm_eps

    model_state = _write_dcp(tmp_path / "ckpt" / "ep0-ba1")
    out = tmp_path / "diffusers"
    result = export(tmp_path / "ckpt", out, formats="diffusers", verify=True, progress=False, require_checksums=False)
    assert result.network.preset == "tiny-singleview" and result.diffusers_relative_error < 1e-5
    assert sorted(p.name for p in out.iterdir()) == [CHECKSUMS_FILE, "controlnet", NETWORK_FILE, "transformer"]

    transformer = CosmosTransformer3DModel.from_pretrained(out / "transformer").eval()
    controlnet = CosmosControlNetModel.from_pretrained(out / "controlnet").eval()
    set_qk_norm_eps(transformer)
    set_qk_norm_eps(controlnet)
    net = build_network("tiny-singleview").eval()
    net.load_state_dict(_strip(model_state, "net_ema."), strict=True)  # EMA weights by default
    inputs = example_inputs(net.config, seed=5)
    with torch.no_grad():
        ours = net(**inputs)
        theirs = diffusers_velocity(transformer, controlnet, **inputs)
    assert ((theirs - ours).norm() / ours.norm()).item() < 1e-5

    # weights="net" exports the training weights instead.
    export(tmp_path / "ckpt", tmp_path / "net", formats="diffusers", weights="net", progress=False)
    proj_out = CosmosTransformer3DModel.from_pretrained(tmp_path / "net" / "transformer").proj_out.weight
    assert torch.equal(proj_out, model_state["net.final_layer.linear.weight"])
    assert not torch.equal(proj_out, model_state["net_ema.final_layer.linear.weight"])


# ----------------------------------------------------------------------------- finding the checkpoint
def test_find_checkpoint_accepts_folder_link_and_checkpoints_folder(trained, tmp_path):
    folder = (trained / "checkpoints" / "ep0-ba2").resolve()
    for path in (
        folder,
        folder / ".metadata",
        trained / "checkpoints" / "latest-rank0.pt",
        trained / "checkpoints",
        trained,
        trained / "checkpoints" / "latest",
    ):
        assert find_checkpoint(path) == folder, path

    # The newest complete checkpoint by batch number (not by name), skipping an unfinished save.
    checkpoints = tmp_path / "checkpoints"
    for name, complete in (("ep0-ba9", True), ("ep1-ba10", True), ("ep1-ba11", False), ("ep0-ba2", True)):
        (checkpoints / name).mkdir(parents=True)
        if complete:
            (checkpoints / name / ".metadata").write_bytes(b"")
    assert find_checkpoint(checkpoints) == checkpoints / "ep1-ba10"


def test_find_checkpoint_errors_name_the_path_and_what_to_pass(tmp_path):
    with pytest.raises(CheckpointReadError, match="does not exist.*latest-rank0.pt"):
        find_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointReadError, match="No sharded checkpoint in .*empty"):
        find_checkpoint(tmp_path / "empty")
    (tmp_path / "partial" / "ep0-ba4").mkdir(parents=True)
    with pytest.raises(CheckpointReadError, match=r"ep0-ba4 have no \.metadata"):
        find_checkpoint(tmp_path / "partial")
    with pytest.raises(CheckpointReadError, match=r"ep0-ba4 has no \.metadata: its save did not finish"):
        find_checkpoint(tmp_path / "partial" / "ep0-ba4")
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(CheckpointReadError, match="is a file, not a sharded checkpoint"):
        find_checkpoint(tmp_path / "model.pt")
    (tmp_path / "latest-rank0.pt").symlink_to("ep9-ba9")
    with pytest.raises(CheckpointReadError, match="link to ep9-ba9, which does not exist"):
        find_checkpoint(tmp_path / "latest-rank0.pt")


# ----------------------------------------------------------------------------- verification
def _next_value(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` with its first element moved by one unit in the last place."""
    changed = tensor.clone()
    flat = changed.view(-1)
    flat[0] = torch.nextafter(flat[0].float(), torch.tensor(float("inf"))).to(tensor.dtype)
    if torch.equal(changed, tensor):  # bf16: the next fp32 value rounds back
        flat[0] = flat[0] + flat[0].abs().clamp(min=1e-3) * 2**-6
    assert not torch.equal(changed, tensor)
    return changed


@pytest.mark.parametrize(
    "filename, key",
    [
        (MODEL_PT, "net_ema.blocks.1.mlp.layer2.weight"),
        (MODEL_EMA_FP32, "net.control_blocks.0.after_proj.weight"),
        (MODEL_EMA_BF16, "net.blocks.0.self_attn.q_proj.weight"),
    ],
)
def test_verify_detects_a_modified_file(tmp_path, filename, key):
    _write_dcp(tmp_path / "ckpt" / "ep0-ba1")
    out = tmp_path / "out"
    assert export(
        tmp_path / "ckpt", out, verify=True, progress=False, require_checksums=False
    ).verified  # unchanged files pass

    state = torch.load(out / filename, weights_only=True)
    state[key] = _next_value(state[key])
    torch.save(state, out / filename)
    # The export's checksums catch the change first, naming the file...
    with pytest.raises(VerificationError, match=rf"{filename} (has \d+ bytes|does not match)"):
        verify_export(tmp_path / "ckpt", out, progress=False)
    # ...and without them the comparison of the tensors names the key.
    (out / CHECKSUMS_FILE).unlink()
    with pytest.raises(VerificationError, match=rf"{filename} does not hold .*\n  {key}: 1 of \d+ values differ"):
        verify_export(tmp_path / "ckpt", out, progress=False)

    del state[key]
    torch.save(state, out / filename)
    with pytest.raises(VerificationError, match=rf"(?s){filename}.*1 keys missing: {key}"):
        verify_export(tmp_path / "ckpt", out, progress=False)


def test_verify_needs_the_preset_when_the_run_overrode_shapes(tmp_path):
    _write_dcp(tmp_path / "ckpt" / "ep0-ba1", num_blocks=3, vace_block_every_n=3)
    with pytest.raises(ExportError, match="match no preset.*--preset"):
        export(tmp_path / "ckpt", tmp_path / "out", verify=True, progress=False, require_checksums=False)
    with pytest.raises(ExportError, match=r"does not hold a tiny-singleview network[\s\S]*blocks\.3\."):
        export(
            tmp_path / "ckpt",
            tmp_path / "out",
            preset="tiny-singleview",
            verify=True,
            progress=False,
            require_checksums=False,
        )
    result = export(
        tmp_path / "ckpt",
        tmp_path / "out",
        preset="tiny-singleview",
        verify=True,
        progress=False,
        overrides={"num_blocks": 3, "vace_block_every_n": 3},
        require_checksums=False,  # written as before checksums existed
    )
    assert result.verified and not result.network.inferred


def test_export_without_ema_raises_and_reads_only_the_model_state(tmp_path):
    model_state = _write_dcp(tmp_path / "ckpt" / "ep0-ba1", with_ema=False)
    with pytest.raises(ExportError, match="no EMA weights.*model.use_ema=true"):
        export(tmp_path / "ckpt", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    read = read_composer_model_state(tmp_path / "ckpt", progress=False)
    assert list(read) == list(model_state) and all(torch.equal(read[k], v) for k, v in model_state.items())
