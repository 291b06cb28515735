"""network.json (cosmos_composer.checkpoint.network_config) and what reads it: generation's `load_network`,
`load_path`'s consolidated loader; and the shape inference left for the released files, which carry none.

The end-to-end path (a training run's checkpoint -> export -> generation) is in tests/test_export.py.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from cosmos_composer.callbacks.checkpoint_checksums import CheckpointChecksums
from cosmos_composer.checkpoint.integrity import digests_of, write_checksums
from cosmos_composer.checkpoint.load import CheckpointLoadError, load_consolidated_into_network
from cosmos_composer.checkpoint.network_config import (
    NETWORK_FILE,
    NETWORK_FORMAT_VERSION,
    NetworkConfigError,
    find_network_config,
    network_config_path,
    read_network_config,
    write_network_config,
)
from cosmos_composer.checkpoint.network_weights import load_network
from cosmos_composer.models import PRESETS, NetworkConfig, build_network, get_config

# Changes what the network computes and no tensor shape.
SHAPE_NEUTRAL = {"rope_t_extrapolation_ratio": 2.0}


def _random_file(path, preset: str = "tiny-singleview", released_extras: bool = True) -> dict[str, torch.Tensor]:
    """An EMA-only consolidated file (`net.*`) of random weights, with the released files' non-parameter entries."""
    generator = torch.Generator().manual_seed(0)
    weights = {
        k: torch.randn(v.shape, generator=generator) * 0.1 for k, v in build_network(preset).state_dict().items()
    }
    state = {f"net.{k}": v for k, v in weights.items()}
    if released_extras:
        state.update(
            {
                "net.accum_iteration": torch.tensor(6500),
                "net.pos_embedder.seq": torch.arange(128.0),
                "net.blocks.0.cross_attn.attn_op._extra_state": torch.empty(0, dtype=torch.uint8),
            }
        )
    torch.save(state, path)
    return weights


def test_network_json_holds_the_preset_and_every_field_and_reads_back(tmp_path):
    for preset in PRESETS:
        config = get_config(preset, **SHAPE_NEUTRAL)
        path = write_network_config(tmp_path / preset / NETWORK_FILE, preset, config)
        document = json.loads(path.read_text())
        assert document["preset"] == preset
        assert set(document["config"]) == {field.name for field in dataclasses.fields(NetworkConfig)}
        recorded = read_network_config(path)
        assert recorded.config == config and recorded.overrides == SHAPE_NEUTRAL
        with torch.device("meta"):  # the 2B presets too, without their memory
            assert build_network(recorded.preset, **recorded.overrides).config == config


def test_a_bad_network_json_is_refused_naming_the_file_and_the_field(tmp_path):
    path = write_network_config(tmp_path / NETWORK_FILE, "tiny-singleview", get_config("tiny-singleview"))
    good = json.loads(path.read_text())

    def refused(document, match):
        path.write_text(document if isinstance(document, str) else json.dumps(document))
        with pytest.raises(NetworkConfigError, match=match):
            read_network_config(path)

    refused("{not json", rf"{path} is not a readable network.json")
    refused({**good, "preset": "tiny-nothing"}, r"preset 'tiny-nothing' is not one of")
    refused(
        {**good, "config": {**good["config"], "num_blockz": 4}}, r"unknown network config field\(s\) \['num_blockz'\]"
    )
    refused({**good, "config": {**good["config"], "num_blocks": 4.5}}, r"num_blocks=4.5 is not of type")
    refused({**good, "config": {**good["config"], "use_input_hint_block": 1}}, r"use_input_hint_block=1 is not of type")
    refused({**good, "config": {**good["config"], "vace_block_every_n": 9}}, r"vace_block_every_n=9 must be in")

    # An int where the field is a float is the same number; null where it is Optional.
    path.write_text(json.dumps({**good, "config": {**good["config"], "mlp_ratio": 4, "extra_image_context_dim": None}}))
    assert read_network_config(path).config == get_config("tiny-singleview")
    # A changed file is caught by the checksums written with it.
    write_checksums(tmp_path, digests_of(tmp_path, [NETWORK_FILE]))
    path.write_text(path.read_text().replace('"num_blocks": 4', '"num_blocks": 2'))
    with pytest.raises(NetworkConfigError, match=rf"{NETWORK_FILE} (has \d+ bytes|does not match)"):
        read_network_config(path)


def test_network_json_carries_its_format_version_and_a_file_without_one_still_loads_as_version_1(tmp_path):
    path = tmp_path / "model_ema_fp32.pt"
    weights = _random_file(path, released_extras=False)
    recorded = get_config("tiny-singleview", **SHAPE_NEUTRAL)
    network_file = write_network_config(tmp_path / NETWORK_FILE, "tiny-singleview", recorded)
    document = json.loads(network_file.read_text())
    assert document["format_version"] == NETWORK_FORMAT_VERSION == 2

    del document["format_version"]  # as every network.json written before the version existed
    network_file.write_text(json.dumps(document))
    assert read_network_config(network_file).config == recorded
    net, _ = load_network(path)  # generation builds the recorded network (a setting no shape shows)
    assert net.config == recorded and all(torch.equal(net.state_dict()[k], v) for k, v in weights.items())


def test_a_network_json_of_a_newer_format_is_refused_naming_the_file_the_version_and_the_fix(tmp_path):
    path = tmp_path / "model_ema_fp32.pt"
    _random_file(path, released_extras=False)
    network_file = write_network_config(tmp_path / NETWORK_FILE, "tiny-singleview", get_config("tiny-singleview"))
    document = json.loads(network_file.read_text())
    network_file.write_text(json.dumps({**document, "format_version": 3}))
    refusal = rf"{network_file} has format_version 3, but this cosmos-composer reads up to version 2\. Fix: upgrade"
    with pytest.raises(NetworkConfigError, match=refusal):
        read_network_config(network_file)
    with pytest.raises(CheckpointLoadError, match=refusal):  # before a tensor is read
        load_network(path)
    with pytest.raises(CheckpointLoadError, match=refusal):
        load_consolidated_into_network(build_network("tiny-singleview"), path, announce=False)
    network_file.write_text(json.dumps({**document, "format_version": "2"}))
    with pytest.raises(NetworkConfigError, match=r"format_version='2' is not a version number"):
        read_network_config(network_file)


def test_where_network_json_is_found(tmp_path):
    folder, single = tmp_path / "ep0-ba2", tmp_path / "ep0-ba2-rank0.pt"
    folder.mkdir()
    single.write_bytes(b"")
    assert network_config_path(folder) == folder / NETWORK_FILE
    assert network_config_path(single) == tmp_path / f"ep0-ba2-rank0.pt.{NETWORK_FILE}"  # as its checksums
    assert find_network_config(folder) is None and find_network_config(single) is None

    config = get_config("tiny-multiview")
    write_network_config(tmp_path / NETWORK_FILE, "tiny-singleview", get_config("tiny-singleview"))
    assert find_network_config(single).preset == "tiny-singleview"  # an export folder's files share one
    write_network_config(network_config_path(single), "tiny-multiview", config)
    assert find_network_config(single).preset == "tiny-multiview"  # its own sidecar first

    # Composer's rotation deletes old single-file checkpoints; their sidecars go with them.
    single.unlink()
    (tmp_path / "ep0-ba4-rank0.pt").write_bytes(b"")
    write_network_config(network_config_path(tmp_path / "ep0-ba4-rank0.pt"), "tiny-multiview", config)
    CheckpointChecksums._remove_orphans(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [
        "ep0-ba4-rank0.pt",
        f"ep0-ba4-rank0.pt.{NETWORK_FILE}",
        NETWORK_FILE,
    ]


def test_generation_builds_the_network_of_the_file(tmp_path, caplog):
    path = tmp_path / "released_ema_bf16.pt"
    weights = _random_file(path)

    # A released-style file carries no network.json: the preset its parameter shapes match, said in the log.
    with caplog.at_level("WARNING", logger="cosmos_composer.checkpoint.network_weights"):
        net, report = load_network(path)
    assert net.config == get_config("tiny-singleview") and len(report.skipped_non_parameters) == 3
    assert f"inferred from the parameter names and shapes: the checkpoint has no {NETWORK_FILE}" in caplog.text
    other = tmp_path / "other" / "extra_key.pt"
    other.parent.mkdir()
    torch.save({**torch.load(path, weights_only=True), "net.blocks.99.mlp.layer1.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(CheckpointLoadError, match="has no network.json, and its parameter names and shapes match no"):
        load_network(other)

    # With a network.json beside it, that config: one the shapes cannot show.
    recorded = get_config("tiny-singleview", **SHAPE_NEUTRAL)
    write_network_config(tmp_path / NETWORK_FILE, "tiny-singleview", recorded)
    net, _ = load_network(path)
    assert net.config == recorded
    reference = build_network("tiny-singleview", **SHAPE_NEUTRAL).eval()
    reference.load_state_dict(weights)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in reference.state_dict().items())
    # A --preset / --set that says otherwise is refused, naming the field; one that agrees is accepted.
    with pytest.raises(CheckpointLoadError, match=r"rope_t_extrapolation_ratio: 1\.0 in --preset/--set, 2\.0 in"):
        load_network(path, "tiny-singleview")
    assert load_network(path, "tiny-singleview", SHAPE_NEUTRAL)[0].config == recorded


def test_load_path_refuses_weights_saved_from_another_network_config(tmp_path, caplog):
    path = tmp_path / "model_ema_fp32.pt"
    _random_file(path, released_extras=False)
    write_network_config(tmp_path / NETWORK_FILE, "tiny-singleview", get_config("tiny-singleview", **SHAPE_NEUTRAL))
    with pytest.raises(
        CheckpointLoadError,
        match=r"(?s)another network config.*rope_t_extrapolation_ratio: 2\.0 in "
        r".*model\.overrides",
    ):
        load_consolidated_into_network(build_network("tiny-singleview"), path, announce=False)
    # Non-strict loads may mean it: a warning naming the field.
    with caplog.at_level("WARNING", logger="cosmos_composer.checkpoint.network_config"):
        assert load_consolidated_into_network(
            build_network("tiny-singleview"), path, strict=False, announce=False
        ).loaded
    assert "rope_t_extrapolation_ratio: 2.0 in" in caplog.text
    # Fields that change how it runs, not what it computes, are not compared.
    net = build_network("tiny-singleview", activation_checkpointing=True, **SHAPE_NEUTRAL)
    assert load_consolidated_into_network(net, path, announce=False).loaded
