"""Loading consolidated .pt checkpoints in the official formats (cosmos_composer.checkpoint.load).

Synthetic files in each format (released `*_ema_bf16.pt` with its non-parameter entries, fp32 EMA,
`model.pt` with `net.*` + `net_ema.*`) load strictly into the tiny presets; wrong shapes, extra and
missing keys, pickled objects and non-tensor files are refused with the key or file named; the partial
load options print what they drop; the EMA restarts from the loaded net; and train.py loads a local
file and an `hf://` URI from an offline HF cache; each FSDP2 rank maps the file and reads only its shard.
"""

from pathlib import Path

import pytest
import torch
from helpers import run_train, write_hf_cache

from cosmos_composer.checkpoint import load as load_module
from cosmos_composer.checkpoint.load import (
    CheckpointLoadError,
    load_consolidated_into_model,
    load_consolidated_into_network,
    load_network_weights,
    read_state_dict,
)
from cosmos_composer.models import build_network
from cosmos_composer.models.composer_model import CosmosTransferModel
from cosmos_composer.models.released_keys import RELEASED_VARIANT_OF_PRESET, released_parameter_shapes

PRESETS = ["tiny-singleview", "tiny-multiview"]
WRONG_KEY = "blocks.0.self_attn.q_proj.weight"


# ----------------------------------------------------------------------------- helpers
def _random_net(preset: str, seed: int) -> torch.nn.Module:
    """A network whose every parameter (zero-initialised ones too) is random, so comparisons mean something."""
    net = build_network(preset)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return net


def _non_parameter_entries(multiview: bool) -> dict:
    """What the released files hold besides parameters (released_checkpoint_keys.json `_about`)."""
    rope = {
        "seq": torch.arange(128.0),
        "dim_spatial_range": torch.arange(21.0),
        "dim_temporal_range": torch.arange(22.0),
    }
    entries = {
        "net.accum_video_sample_counter": torch.tensor(1234, dtype=torch.int64),
        "net.accum_image_sample_counter": torch.tensor(0, dtype=torch.int64),
        "net.accum_iteration": torch.tensor(6500, dtype=torch.int64),
        "net.accum_train_in_hours": torch.tensor(12.5),
        "net.blocks.0.cross_attn.attn_op._extra_state": torch.empty(0, dtype=torch.uint8),
        "net.control_blocks.0.cross_attn.attn_op._extra_state": None,  # older TransformerEngine
        **{f"net.pos_embedder.{k}": v for k, v in rope.items()},
    }
    if multiview:
        for n in range(1, 8):
            entries.update({f"net.pos_embedder_options.n_cameras_{n}.{k}": v for k, v in rope.items()})
    return entries


def _ema_file(net, dtype=torch.bfloat16, extras=True) -> dict:
    """The released `*_ema_bf16.pt` / `model_ema_{fp32,bf16}.pt` format: every key under `net.`."""
    state = {"net." + k: v.detach().to(dtype).clone() for k, v in net.state_dict().items()}
    if extras:
        state.update(_non_parameter_entries(net.config.is_multiview))
    return state


def _net_state(net) -> dict:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _assert_net_equals_file(net, state: dict, prefix: str = "net.") -> None:
    for key, value in net.state_dict().items():
        expected = state[prefix + key].to(value.dtype)
        assert torch.equal(value, expected), key


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture
def model_and_file(tmp_path):
    """A tiny-multiview model (seed 1) and a released-style bf16 EMA file of another network (seed 0)."""
    source = _random_net("tiny-multiview", seed=0)
    state = _ema_file(source)
    path = tmp_path / "ema_bf16.pt"
    torch.save(state, path)
    model = CosmosTransferModel(_random_net("tiny-multiview", seed=1))
    return model, state, path


# ----------------------------------------------------------------------------- the official formats load strictly
@pytest.mark.parametrize("preset", PRESETS)
def test_released_ema_bf16_file_loads_strictly_and_restarts_the_ema(tmp_path, preset, capsys):
    state = _ema_file(_random_net(preset, seed=0))
    assert state["net.x_embedder.proj.1.weight"].dtype == torch.bfloat16
    torch.save(state, tmp_path / "61f5694b_ema_bf16.pt")
    model = CosmosTransferModel(_random_net(preset, seed=1))

    report = load_consolidated_into_model(model, tmp_path / "61f5694b_ema_bf16.pt")

    _assert_net_equals_file(model.net, state)
    _assert_same(_net_state(model.net_ema), _net_state(model.net))  # the EMA restarts from the loaded weights
    n_params = len(model.net.state_dict())
    assert len(report.loaded) == n_params and not report.partial
    assert len(report.skipped_non_parameters) == len(_non_parameter_entries(preset.endswith("multiview")))
    out = capsys.readouterr().out
    assert f"loaded {n_params} tensors" in out and "61f5694b_ema_bf16.pt" in out and "PARTIAL" not in out


def test_fp32_ema_file_loads_bit_exactly(tmp_path):
    source = _random_net("tiny-singleview", seed=0)
    torch.save(_ema_file(source, dtype=torch.float32, extras=False), tmp_path / "model_ema_fp32.pt")
    net = _random_net("tiny-singleview", seed=1)
    load_consolidated_into_network(net, tmp_path / "model_ema_fp32.pt")
    _assert_same(_net_state(net), _net_state(source))


def test_model_pt_trains_from_net_and_the_ema_restarts_equal_to_it(tmp_path, capsys):
    trained, ema = _random_net("tiny-multiview", seed=0), _random_net("tiny-multiview", seed=2)
    state = {**_ema_file(trained, dtype=torch.bfloat16), **{"net_ema." + k: v for k, v in _net_state(ema).items()}}
    torch.save(state, tmp_path / "model.pt")
    model = CosmosTransferModel(_random_net("tiny-multiview", seed=1))

    report = load_consolidated_into_model(model, tmp_path / "model.pt")

    _assert_net_equals_file(model.net, state, "net.")
    _assert_same(_net_state(model.net_ema), _net_state(model.net))  # not the file's net_ema.*
    assert len(report.ignored) == len(ema.state_dict()) and not report.partial
    assert "ignored" in capsys.readouterr().out

    # Generation-style: the EMA of a model.pt into a bare network.
    net = _random_net("tiny-multiview", seed=3)
    load_consolidated_into_network(net, tmp_path / "model.pt", prefix="net_ema.")
    _assert_same(_net_state(net), _net_state(ema))


@pytest.mark.parametrize("preset", sorted(RELEASED_VARIANT_OF_PRESET))
def test_the_released_2b_key_sets_load_strictly_on_the_meta_device(preset):
    """The released keys plus their non-parameter entries are accepted, strictly, by the 2B presets."""
    with torch.device("meta"):
        net = build_network(preset)
        weights = {k: torch.empty(shape) for k, shape in released_parameter_shapes(preset).items()}
    extras = {k.removeprefix("net."): v for k, v in _non_parameter_entries("multiview" in preset).items()}
    report = load_network_weights(net, {**weights, **extras}, preset)
    assert len(report.loaded) == len(weights) and len(report.skipped_non_parameters) == len(extras)
    assert not report.partial


# ----------------------------------------------------------------------------- wrong shape, extra, missing
def test_wrong_shape_fails_naming_the_key_and_both_shapes_even_when_not_strict(model_and_file, tmp_path):
    model, state, _ = model_and_file
    state["net." + WRONG_KEY] = torch.zeros(64, 32, dtype=torch.bfloat16)
    torch.save(state, tmp_path / "wrong.pt")
    before = _net_state(model.net), _net_state(model.net_ema)
    for strict in (True, False):
        with pytest.raises(CheckpointLoadError) as info:
            load_consolidated_into_model(model, tmp_path / "wrong.pt", strict=strict)
        message = str(info.value)
        assert f"shape mismatch {WRONG_KEY}: file [64, 32] vs network [64, 64]" in message
        assert "load_allow_shape_mismatch=true" in message and "wrong.pt" in message
    # Nothing was copied: a refused file leaves the model as it was.
    _assert_same(_net_state(model.net), before[0])
    _assert_same(_net_state(model.net_ema), before[1])


def test_allow_shape_mismatch_drops_and_prints_the_mismatched_keys(model_and_file, tmp_path, capsys):
    model, state, _ = model_and_file
    state["net." + WRONG_KEY] = torch.zeros(64, 32, dtype=torch.bfloat16)
    torch.save(state, tmp_path / "wrong.pt")
    initial = model.net.state_dict()[WRONG_KEY].clone()
    report = load_consolidated_into_model(model, tmp_path / "wrong.pt", allow_shape_mismatch=True)
    assert list(report.shape_mismatches) == [WRONG_KEY] and report.dropped == [WRONG_KEY]
    assert torch.equal(model.net.state_dict()[WRONG_KEY], initial)  # left at its initial value
    other = "blocks.1.self_attn.q_proj.weight"
    assert torch.equal(model.net.state_dict()[other], state["net." + other].float())
    out = capsys.readouterr().out
    assert "PARTIAL LOAD" in out and f"shape mismatch {WRONG_KEY}: file [64, 32] vs network [64, 64]" in out


def test_extra_parameter_fails_strictly_and_is_dropped_and_printed_when_not_strict(model_and_file, tmp_path, capsys):
    model, state, _ = model_and_file
    state["net.blocks.0.self_attn.extra_gate.weight"] = torch.ones(3, dtype=torch.bfloat16)
    state["optimizer_step_count"] = torch.tensor(3)  # a key of neither network
    torch.save(state, tmp_path / "extra.pt")
    with pytest.raises(CheckpointLoadError) as info:
        load_consolidated_into_model(model, tmp_path / "extra.pt")
    message = str(info.value)
    assert "blocks.0.self_attn.extra_gate.weight" in message and "optimizer_step_count" in message
    assert "2 unexpected" in message and "load_strict=false" in message

    report = load_consolidated_into_model(model, tmp_path / "extra.pt", strict=False)
    assert sorted(report.unexpected) == ["blocks.0.self_attn.extra_gate.weight", "optimizer_step_count"]
    _assert_net_equals_file(model.net, state)
    out = capsys.readouterr().out
    assert "PARTIAL LOAD" in out and "(dropped): blocks.0.self_attn.extra_gate.weight, optimizer_step_count" in out


def test_missing_parameter_fails_strictly_and_is_printed_when_not_strict(model_and_file, tmp_path, capsys):
    model, state, _ = model_and_file
    gone = ["net.control_blocks.0.after_proj.weight", "net.view_embeddings.weight"]
    for key in gone:
        del state[key]
    torch.save(state, tmp_path / "missing.pt")
    with pytest.raises(CheckpointLoadError) as info:
        load_consolidated_into_model(model, tmp_path / "missing.pt")
    assert "2 missing" in str(info.value) and "view_embeddings.weight" in str(info.value)

    initial = model.net.state_dict()["view_embeddings.weight"].clone()
    report = load_consolidated_into_model(model, tmp_path / "missing.pt", strict=False)
    assert sorted(report.missing) == sorted(k.removeprefix("net.") for k in gone)
    assert torch.equal(model.net.state_dict()["view_embeddings.weight"], initial)
    _assert_same(_net_state(model.net_ema), _net_state(model.net))
    out = capsys.readouterr().out
    assert "PARTIAL LOAD" in out and "left at their initial values" in out and "view_embeddings.weight" in out


def test_a_singleview_file_into_a_multiview_network_is_refused_with_a_report(tmp_path):
    torch.save(_ema_file(_random_net("tiny-singleview", seed=0)), tmp_path / "sv.pt")
    net = build_network("tiny-multiview")
    with pytest.raises(CheckpointLoadError) as info:
        load_consolidated_into_network(net, tmp_path / "sv.pt")
    message = str(info.value)
    assert "shape mismatch x_embedder.proj.1.weight" in message and "view_embeddings.weight" in message


# ----------------------------------------------------------------------------- what is refused, how it is read
class NotATensor:
    def __init__(self):
        self.payload = [1, 2, 3]


def test_a_pickled_object_that_is_not_a_tensor_is_refused_without_running_it(tmp_path):
    torch.save({"net.a": torch.zeros(2), "net.b": NotATensor()}, tmp_path / "object.pt")
    with pytest.raises(CheckpointLoadError) as info:
        read_state_dict(tmp_path / "object.pt")
    message = str(info.value)
    assert "object.pt was refused" in message and "NotATensor" in message and "weights_only=True" in message

    marker = tmp_path / "pwned"

    class Payload:  # unpickling this would create `marker`
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"net.a": torch.zeros(2), "net.b": Payload()}, tmp_path / "payload.pt")
    with pytest.raises(CheckpointLoadError, match="payload.pt was refused"):
        load_consolidated_into_network(build_network("tiny-singleview"), tmp_path / "payload.pt")
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, expected",
    [
        ({"net.a": torch.zeros(2), "net.step": 3}, "entry 'net.step' is of type int"),
        ({"model": {"net.a": torch.zeros(2)}}, "nested state dict"),
        ([torch.zeros(2)], "holds a list, not a dict of tensors"),
    ],
)
def test_a_file_that_is_not_a_flat_dict_of_tensors_is_refused(tmp_path, content, expected):
    torch.save(content, tmp_path / "odd.pt")
    with pytest.raises(CheckpointLoadError, match="odd.pt") as info:
        read_state_dict(tmp_path / "odd.pt")
    assert expected in str(info.value)


def test_unreadable_missing_and_folder_paths_are_refused(tmp_path):
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointLoadError, match="text.pt is not a readable torch checkpoint"):
        read_state_dict(tmp_path / "text.pt")
    with pytest.raises(CheckpointLoadError, match="does not exist"):
        read_state_dict(tmp_path / "nowhere.pt")
    with pytest.raises(CheckpointLoadError, match="is a folder"):
        read_state_dict(tmp_path)
    torch.save({"x.a": torch.zeros(2)}, tmp_path / "nonet.pt")
    with pytest.raises(CheckpointLoadError, match="no 'net.\\*' keys"):
        load_consolidated_into_network(build_network("tiny-singleview"), tmp_path / "nonet.pt")


def test_files_are_read_with_mmap_and_weights_only(model_and_file, monkeypatch, tmp_path):
    model, state, path = model_and_file
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_consolidated_into_model(model, path)
    assert calls == [{"map_location": "cpu", "weights_only": True, "mmap": True}]

    # torch's legacy (non-zip) format cannot be mapped: still weights_only, without mmap.
    calls.clear()
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    load_consolidated_into_model(model, tmp_path / "legacy.pt")
    assert calls == [{"map_location": "cpu", "weights_only": True, "mmap": False}]
    _assert_net_equals_file(model.net, state)


def test_loading_copies_from_the_mapping_without_a_converted_copy(model_and_file, monkeypatch):
    """Each parameter is filled by copy_ straight from the mapped (bf16) tensor: no `.to()` copy per tensor."""
    model, state, path = model_and_file
    sources = []
    real_copy = torch.Tensor.copy_

    def spy(self, src, *args, **kwargs):
        sources.append(src.dtype)
        return real_copy(self, src, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "copy_", spy)
    load_consolidated_into_network(model.net, path)
    assert len(sources) == len(model.net.state_dict()) and set(sources) == {torch.bfloat16}


def test_the_report_is_printed_on_rank_0_only(model_and_file, monkeypatch, capsys):
    model, _, path = model_and_file
    monkeypatch.setenv("RANK", "1")
    load_consolidated_into_model(model, path)
    assert capsys.readouterr().out == ""


# ----------------------------------------------------------------------------- hf:// (offline cache)
def test_hf_uri_loads_from_the_offline_cache(model_and_file, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    model, state, path = model_and_file
    commit = "c" * 40
    files = {"auto/multiview/x_ema_bf16.pt": path.read_bytes()}
    write_hf_cache(tmp_path / "hub", "nvidia/Cosmos-Transfer2.5-2B", {commit: files}, {"main": commit})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    uri = f"hf://nvidia/Cosmos-Transfer2.5-2B/auto/multiview/x_ema_bf16.pt@{commit}"
    load_consolidated_into_model(model, uri)
    _assert_net_equals_file(model.net, state)
    assert uri in capsys.readouterr().out


# ----------------------------------------------------------------------------- through train.py
def _one_batch(mds: Path, run_name: str) -> list[str]:
    return [
        f"train_loader.dataset.local={mds}",
        "eval_loader=null",
        "parallelism_config=null",
        "max_duration=1ba",
        "save_interval=1ba",
        f"run_name={run_name}",
    ]


def test_train_py_starts_from_the_loaded_file(tmp_path, demo_mds):
    source = _random_net("tiny-multiview", seed=5)
    state = _ema_file(source)
    torch.save(state, tmp_path / "start_ema_bf16.pt")
    result = run_train([*_one_batch(demo_mds, "loaded"), f"load_path={tmp_path / 'start_ema_bf16.pt'}"], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    n_params = len(source.state_dict())
    assert f"start_ema_bf16.pt: loaded {n_params} tensors" in result.stdout

    checkpoint = tmp_path / "out" / "cosmos_composer" / "quickstart" / "loaded" / "checkpoints" / "latest-rank0.pt"
    saved = torch.load(checkpoint, weights_only=False)["state"]["model"]
    frozen = [
        k for k in source.state_dict() if not k.startswith(("control_blocks.", "control_embedder.", "input_hint"))
    ]
    assert frozen and len(frozen) < n_params
    for key in frozen:  # the frozen base is exactly the file's, stored once: net_ema shares net's tensor
        assert torch.equal(saved["net." + key], state["net." + key].float()), key
        assert "net_ema." + key not in saved, key
    for key in source.state_dict():  # first EMA update copies the net
        assert torch.equal(saved.get("net_ema." + key, saved["net." + key]), saved["net." + key]), key


def test_train_py_fails_on_a_wrong_shape_naming_the_key(tmp_path, demo_mds):
    state = _ema_file(_random_net("tiny-multiview", seed=5))
    state["net." + WRONG_KEY] = torch.zeros(64, 32, dtype=torch.bfloat16)
    torch.save(state, tmp_path / "wrong.pt")
    result = run_train(
        [*_one_batch(demo_mds, "wrong"), f"load_path={tmp_path / 'wrong.pt'}", "load_strict=false"], tmp_path
    )
    assert result.returncode != 0
    assert f"shape mismatch {WRONG_KEY}: file [64, 32] vs network [64, 64]" in result.stderr
    assert not (tmp_path / "out" / "cosmos_composer" / "quickstart" / "wrong" / "checkpoints").exists()


def test_train_py_load_allow_shape_mismatch_drops_and_prints_the_key(tmp_path, demo_mds):
    state = _ema_file(_random_net("tiny-multiview", seed=5))
    state["net." + WRONG_KEY] = torch.zeros(64, 32, dtype=torch.bfloat16)
    torch.save(state, tmp_path / "wrong.pt")
    result = run_train(
        [*_one_batch(demo_mds, "mismatch"), f"load_path={tmp_path / 'wrong.pt'}", "load_allow_shape_mismatch=true"],
        tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "PARTIAL LOAD" in result.stdout
    assert f"shape mismatch {WRONG_KEY}: file [64, 32] vs network [64, 64]" in result.stdout


def test_train_py_loads_an_hf_uri_offline_with_a_partial_load(tmp_path, demo_mds):
    state = _ema_file(_random_net("tiny-multiview", seed=5))
    state["net.blocks.0.self_attn.extra_gate.weight"] = torch.ones(3, dtype=torch.bfloat16)
    torch.save(state, tmp_path / "hub_file.pt")
    commit = "d" * 40
    files = {"auto/multiview/4ecc66e9_ema_bf16.pt": (tmp_path / "hub_file.pt").read_bytes()}
    write_hf_cache(tmp_path / "hf_home" / "hub", "nvidia/Cosmos-Transfer2.5-2B", {commit: files}, {"main": commit})
    uri = f"hf://nvidia/Cosmos-Transfer2.5-2B/auto/multiview/4ecc66e9_ema_bf16.pt@{commit}"
    env = {"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}

    result = run_train([*_one_batch(demo_mds, "hf_strict"), f"load_path={uri}"], tmp_path, **env)
    assert result.returncode != 0  # strict by default: the extra key is refused
    assert "blocks.0.self_attn.extra_gate.weight" in result.stderr and "load_strict=false" in result.stderr

    result = run_train([*_one_batch(demo_mds, "hf"), f"load_path={uri}", "load_strict=false"], tmp_path, **env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"PARTIAL LOAD: {uri}: loaded" in result.stdout
    assert "(dropped): blocks.0.self_attn.extra_gate.weight" in result.stdout


def test_a_missing_hf_file_offline_fails_before_training(tmp_path, demo_mds):
    (tmp_path / "hf_home" / "hub").mkdir(parents=True)
    uri = "hf://nvidia/Cosmos-Transfer2.5-2B/auto/multiview/4ecc66e9_ema_bf16.pt"
    result = run_train(
        [*_one_batch(demo_mds, "hf_missing"), f"load_path={uri}"],
        tmp_path,
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_OFFLINE="1",
    )
    assert result.returncode != 0
    assert "not in the local Hugging Face cache" in result.stderr and "HF_HUB_OFFLINE=1" in result.stderr


# ----------------------------------------------------------------------------- memory per rank
# One weight of 16 MiB in bf16, loaded into fp32 parameters sharded by rows over two FSDP2 ranks.
_ROWS, _COLS = 2048, 4096
_FILE_BYTES = _ROWS * _COLS * 2


def _rss_kib() -> dict[str, int]:
    """This process's resident memory: pages of mapped files (RssFile) and its own (RssAnon), in KiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {name: int(fields[name].split()[0]) for name in ("RssFile", "RssAnon")}


def _sharded_load_worker(rank: int, port: int, path: str, out_dir: str) -> None:
    import json

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        with torch.device("meta"):  # as training builds the network: on meta, sharded, then materialised
            net = torch.nn.Linear(_COLS, _ROWS, bias=False)
        fully_shard(net, mesh=init_device_mesh("cpu", (2,)))
        net.to_empty(device="cpu")
        # The loader unmaps the file when done; keeping a reference to what it read keeps the mapping, and so
        # the pages it touched, visible in RssFile.
        read, kept = load_module.read_state_dict, []
        load_module.read_state_dict = lambda file: kept.append(read(file)) or kept[-1]
        before = _rss_kib()
        load_consolidated_into_network(net, path, announce=False)
        after = _rss_kib()
        assert kept, "the loader no longer reads through read_state_dict: update this test"
        rows = slice(rank * _ROWS // 2, (rank + 1) * _ROWS // 2)
        expected = torch.load(path, weights_only=True)["net.weight"][rows].float()
        result = {name: (after[name] - before[name]) * 1024 for name in before}
        result["correct"] = torch.equal(net.weight.to_local(), expected)
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.barrier()
        dist.destroy_process_group()


def test_each_rank_reads_and_holds_only_its_shard_of_a_mapped_file(tmp_path):
    """What the module docstring promises: the file is memory-mapped and each FSDP2 rank faults in and copies
    only its own rows, so no rank holds the whole file or the whole model."""
    import json

    import torch.multiprocessing as mp
    from helpers import free_port

    path = tmp_path / "big.pt"
    torch.save({"net.weight": torch.randn(_ROWS, _COLS, generator=torch.Generator().manual_seed(0)).bfloat16()}, path)
    # The measurement sees a mapped file's pages: touching all of it maps all of it.
    mapped = torch.load(path, mmap=True, weights_only=True)["net.weight"]
    before = _rss_kib()["RssFile"]
    assert torch.isfinite(mapped).all()
    assert (_rss_kib()["RssFile"] - before) * 1024 > 0.9 * _FILE_BYTES
    del mapped

    mp.spawn(_sharded_load_worker, args=(free_port(), str(path), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["correct"], rank
        # About half the file mapped in, and about half of the fp32 model allocated (its shard), per rank.
        assert 0.3 * _FILE_BYTES < result["RssFile"] < 0.7 * _FILE_BYTES, result
        assert result["RssAnon"] < 0.7 * (2 * _FILE_BYTES), result
