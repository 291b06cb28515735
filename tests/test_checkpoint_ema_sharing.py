"""Each tensor once in a checkpoint: `net_ema.*` holds only the weights the EMA does not share with `net`.

`net_ema`'s frozen parameters are `net`'s own tensors (models/parallelize.py:build_ema_network), so the model's
state dict leaves them out and loading takes them from `net.*`. The end-to-end tests resume
`tests/fixtures/quickstart_before_ema_sharing/ep0-ba2`, a quickstart checkpoint (tiny multiview, one FSDP2 rank,
sharded DCP) that the code before this change wrote, with every frozen tensor under both prefixes;
`scripts/make_resume_fixture.py` made it and recorded, beside it, what one more batch gave with that code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import run_train
from safetensors.torch import load_file
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from cosmos_composer.checkpoint.keys import with_shared_ema_keys
from cosmos_composer.models import build_network
from cosmos_composer.models.composer_model import CosmosTransferModel
from cosmos_composer.models.parallelize import set_trainable_

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "quickstart_before_ema_sharing"
CHECKPOINTS = ("out", "cosmos_composer", "quickstart", "quickstart", "checkpoints")
TRAINABLE = frozenset(build_network("tiny-multiview").control_branch_parameter_names())


def _model_state(checkpoint: Path, tmp_path: Path) -> dict[str, torch.Tensor]:
    """A DCP checkpoint's model state as torch's own converter reads it (no code of ours)."""
    consolidated = tmp_path / f"{checkpoint.name}.pt"
    dcp_to_torch_save(str(checkpoint), str(consolidated))
    return torch.load(consolidated, weights_only=False)["state"]["model"]  # a file this test just wrote


def _index_keys(checkpoint: Path, prefix: str) -> set[str]:
    """Parameter names under `state.model.<prefix>` in a checkpoint's `.metadata`, read by torch's DCP reader."""
    metadata = FileSystemReader(str(checkpoint)).read_metadata()
    start = f"state.model.{prefix}"
    return {key[len(start) :] for key in metadata.state_dict_metadata if key.startswith(start)}


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads((FIXTURE / "after_batch_3.json").read_text())


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, demo_mds, recorded) -> Path:
    """The checkpoints folder of the fixture resumed by today's code for the one batch the old code recorded."""
    root = tmp_path_factory.mktemp("resume")
    checkpoints = root.joinpath(*CHECKPOINTS)
    checkpoints.mkdir(parents=True)
    shutil.copytree(FIXTURE / "ep0-ba2", checkpoints / "ep0-ba2")
    result = run_train([f"train_loader.dataset.local={demo_mds}", *recorded["resume_args"]], root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "autoresume: resuming from ep0-ba2" in result.stdout
    return checkpoints


def test_the_fixture_is_a_checkpoint_from_before_the_sharing():
    assert _index_keys(FIXTURE / "ep0-ba2", "net_ema.") == _index_keys(FIXTURE / "ep0-ba2", "net.")


def test_a_quickstart_index_holds_net_ema_only_for_the_trainable_weights(resumed):
    net, ema = _index_keys(resumed / "ep1-ba3", "net."), _index_keys(resumed / "ep1-ba3", "net_ema.")
    assert net == {f"{key}" for key in build_network("tiny-multiview").state_dict()}
    assert ema == TRAINABLE and TRAINABLE < net  # no net_ema.* entry for a frozen weight


def test_a_checkpoint_from_before_resumes_exactly(resumed, recorded, tmp_path):
    metrics = [json.loads(line) for line in (resumed.parent / "metrics.jsonl").read_text().splitlines()]
    loss = [
        m["loss/train/total"] for m in metrics if m.get("step") == recorded["resumed_step"] and "loss/train/total" in m
    ]
    # Bit-identical on the machine that made the fixture; 1e-6 leaves room for another CPU's float rounding.
    assert loss == [pytest.approx(recorded["loss"], rel=1e-6, abs=0)]

    before, after = _model_state(FIXTURE / "ep0-ba2", tmp_path), _model_state(resumed / "ep1-ba3", tmp_path)
    for key, value in before.items():  # the frozen weights do not train: exactly the old file's, stored once
        name = key.split(".", 1)[1]
        if name not in TRAINABLE:
            assert torch.equal(after.get(key, after[f"net.{name}"]), value), key
    # The EMA after the batch: what the old code's EMA became (it mixes the loaded EMA, the loaded weights and
    # the optimizer state's step, so any of them lost on the way shows here).
    expected_ema = load_file(FIXTURE / "after_batch_3.safetensors")
    assert set(expected_ema) == {f"net_ema.{name}" for name in TRAINABLE}
    for key, value in expected_ema.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=1e-7, msg=key)


# ----------------------------------------------------------------------------- the model's state dict
def _control_branch_trains(net):
    """The recipe's trainability, set as prepare_training_network sets it before the model is built."""
    set_trainable_(net, train_base=False)
    return net


def test_the_model_state_dict_loads_strictly_in_both_layouts():
    model = CosmosTransferModel(_control_branch_trains(build_network("tiny-multiview")))
    state = model.state_dict()
    assert {key[len("net_ema.") :] for key in state if key.startswith("net_ema.")} == TRAINABLE

    fresh = CosmosTransferModel(_control_branch_trains(build_network("tiny-multiview")))
    with torch.no_grad():
        for param in fresh.parameters():
            param.zero_()
    fresh.load_state_dict(state, strict=True)
    for key, value in with_shared_ema_keys(fresh.state_dict()).items():
        assert torch.equal(value, with_shared_ema_keys(state)[key]), key

    before_sharing = with_shared_ema_keys(state)  # every key under both prefixes, as older checkpoints hold
    assert len(before_sharing) == 2 * len([key for key in state if key.startswith("net.")])
    CosmosTransferModel(_control_branch_trains(build_network("tiny-multiview"))).load_state_dict(
        before_sharing, strict=True
    )

    del state[f"net_ema.{sorted(TRAINABLE)[0]}"]  # a missing EMA weight is still a missing key
    with pytest.raises(RuntimeError, match="Missing key.*net_ema.control"):
        fresh.load_state_dict(state, strict=True)


def test_with_shared_ema_keys_fills_the_official_key_set_from_net():
    a, b, b_ema = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    full = with_shared_ema_keys({"net.a": a, "net.b": b, "net_ema.b": b_ema})
    assert list(full) == ["net.a", "net.b", "net_ema.a", "net_ema.b"]
    assert full["net_ema.a"] is a and full["net_ema.b"] is b_ema
    assert with_shared_ema_keys({"net.a": a}) == {"net.a": a}  # no EMA: none is made up
