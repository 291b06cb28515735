"""LoRA (`model.lora`): what trains, the merged and PEFT exports, exact resume, refused values.

One real quickstart run (`python train.py`, FSDP2 in one process, sharded checkpoints at batches 2 and 4) with
LoRA adapters on the base, then resumed from batch 2 in a second run folder; the export is checked against
`W + (alpha / rank) * B @ A` computed here from the checkpoint's tensors, and the adapter files against PEFT's own
loader.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import QUICKSTART, run_train

from cosmos_composer.checkpoint.composer_checkpoint import read_composer_model_state
from cosmos_composer.checkpoint.export import example_inputs, export
from cosmos_composer.checkpoint.keys import under_prefix
from cosmos_composer.checkpoint.network_weights import load_network
from cosmos_composer.config import ConfigError, load_config
from cosmos_composer.models import build_network
from cosmos_composer.models.lora import LoraSettings, apply_lora
from cosmos_composer.models.network import CONTROL_BRANCH_PREFIXES
from cosmos_composer.models.parallelize import set_trainable_

RANK, ALPHA = 4, 8.0
LORA = f"model.lora={{rank: {RANK}, alpha: {ALPHA}, target: base}}"
RUN = ("out", "cosmos_composer", "quickstart", "quickstart")


def _train(root, demo_mds, *args):
    result = run_train(
        [
            f"train_loader.dataset.local={demo_mds}",
            "eval_loader=null",
            "callbacks.sample_videos.every_n_batches=4",  # the sample callback runs the adapted EMA network
            "save_interval=2ba",
            "max_duration=4ba",
            "loggers=null",
            LORA,
            *args,
        ],
        root,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def _losses(run_folder) -> dict[int, float]:
    lines = [json.loads(line) for line in (run_folder / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: line["loss/train/total"] for line in lines if "loss/train/total" in line}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, demo_mds):
    """(run folder, resumed run folder, stdout of the first run): 4 batches, and the same run resumed at batch 2."""
    root = tmp_path_factory.mktemp("lora")
    first = _train(root, demo_mds)
    folder = root.joinpath(*RUN)
    # The second run folder holds only the batch-2 checkpoint: its run autoresumes from it (as after a kill).
    resumed_root = tmp_path_factory.mktemp("lora_resumed")
    resumed = resumed_root.joinpath(*RUN)
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(folder / "checkpoints" / "ep0-ba2", resumed / "checkpoints" / "ep0-ba2")
    second = _train(resumed_root, demo_mds)
    assert "resumed from ep0-ba2" in second.stdout + second.stderr
    return folder, resumed, first.stdout


def _state(folder, batch_folder):
    return read_composer_model_state(folder / "checkpoints" / batch_folder, progress=False)


def test_a_lora_run_trains_only_the_adapters_and_the_control_branch(lora_run):
    folder, _, stdout = lora_run
    before, after = _state(folder, "ep0-ba2"), _state(folder, "ep1-ba4")
    assert before.keys() == after.keys()
    moved = {key for key in before if not torch.equal(before[key], after[key])}
    adapters = {key for key in before if ".lora_A." in key or ".lora_B." in key}
    control = {key for key in before if key.split(".", 1)[1].startswith(CONTROL_BRANCH_PREFIXES)}
    assert adapters and all(k.split(".", 1)[1].startswith("blocks.") for k in adapters)  # target base
    trained = {key for key in moved if key.startswith("net.")}
    assert trained <= adapters | control, sorted(trained - adapters - control)[:5]
    # Every adapter moves (B starts at zero, so A moves from the second step on) and so does the control branch.
    assert {k for k in adapters if k.startswith("net.")} <= trained
    assert any(k in trained for k in control)
    assert "adapter + " in stdout and "control-branch parameters train" in stdout


def _adapted_network(lora: LoraSettings, weights: dict[str, torch.Tensor]):
    net = build_network("tiny-multiview")
    apply_lora(net, lora)
    net.load_state_dict(weights, strict=True)
    return net.eval()


def _forward(net) -> torch.Tensor:
    with torch.no_grad():
        return net(**example_inputs(net.config))


def test_merged_export_is_w_plus_scaled_b_a_and_runs_as_the_adapted_network(lora_run, tmp_path):
    folder, _, _ = lora_run
    out = tmp_path / "merged"
    export(folder / "checkpoints", out, progress=False)
    state = _state(folder, "ep1-ba4")
    exported = torch.load(out / "model_ema_fp32.pt", weights_only=True)
    ema = under_prefix(state, "net_ema.")
    for module in ("blocks.1.mlp.layer2", "blocks.0.self_attn.q_proj", "blocks.0.cross_attn.v_proj"):
        w, a, b = (
            ema[f"{module}.{part}.weight"].float() for part in ("base_layer", "lora_A.default", "lora_B.default")
        )
        merged = exported[f"net.{module}.weight"]
        torch.testing.assert_close(merged, w + (ALPHA / RANK) * b @ a, rtol=0, atol=0)
        assert not torch.equal(merged, w)  # the adapter did change the weight
    # Exactly the plain network's keys: it loads strictly and computes what the adapted network computes.
    plain = build_network("tiny-multiview")
    assert set(exported) == {f"net.{key}" for key in plain.state_dict()}
    plain.load_state_dict(under_prefix(exported, "net."), strict=True)
    adapted = _adapted_network(LoraSettings(RANK, ALPHA, 0.0, "base"), ema)
    torch.testing.assert_close(_forward(plain.eval()), _forward(adapted), rtol=1e-5, atol=1e-5)
    # Generation reads the checkpoint folder itself with the same merge.
    generated, _ = load_network(folder / "checkpoints")
    assert all(torch.equal(value, exported[f"net.{key}"]) for key, value in generated.state_dict().items())


def test_unmerged_export_and_the_peft_adapter_load_with_peft(lora_run, tmp_path):
    from peft import PeftModel, load_peft_weights, set_peft_model_state_dict

    folder, _, _ = lora_run
    out = tmp_path / "unmerged"
    export(folder / "checkpoints", out, merge_lora=False, progress=False)
    ema = under_prefix(_state(folder, "ep1-ba4"), "net_ema.")
    base = under_prefix(torch.load(out / "model_ema_fp32.pt", weights_only=True), "net.")
    plain = build_network("tiny-multiview")
    plain.load_state_dict(base, strict=True)  # --no-merge: the official keys, without the adapters
    # PEFT reads the adapter folder (adapter_config.json + adapter_model.safetensors) onto the plain network.
    peft_net = PeftModel.from_pretrained(plain, str(out / "lora_adapter")).eval()
    adapted = _adapted_network(LoraSettings(RANK, ALPHA, 0.0, "base"), ema)
    with torch.no_grad():
        peft_velocity = peft_net(**example_inputs(adapted.config))
    torch.testing.assert_close(peft_velocity, _forward(adapted), rtol=1e-5, atol=1e-5)
    # The file holds the names PEFT itself saves for these adapters (PeftModel.save_pretrained).
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    saved_config = json.loads((out / "lora_adapter" / "adapter_config.json").read_text())
    assert (saved_config["r"], saved_config["lora_alpha"]) == (RANK, ALPHA)
    reference = get_peft_model(
        build_network("tiny-multiview"),
        LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=saved_config["target_modules"]),
    )
    reference.save_pretrained(str(tmp_path / "peft_reference"))
    peft_keys = set(load_file(str(tmp_path / "peft_reference" / "adapter_model.safetensors")))
    assert set(load_file(str(out / "lora_adapter" / "adapter_model.safetensors"))) == peft_keys
    # And PEFT's lower-level API puts every adapter tensor in place, with no key left over.
    bare = build_network("tiny-multiview")
    apply_lora(bare, LoraSettings(RANK, ALPHA, 0.0, "base"))
    result = set_peft_model_state_dict(bare, load_peft_weights(str(out / "lora_adapter")))
    assert not result.unexpected_keys
    for key, value in bare.state_dict().items():
        if ".lora_" in key:
            assert torch.equal(value, ema[key]), key


def test_resume_under_lora_is_exact(lora_run):
    folder, resumed, _ = lora_run
    original, again = _state(folder, "ep1-ba4"), _state(resumed, "ep1-ba4")
    assert original.keys() == again.keys()
    differing = [key for key in original if not torch.equal(original[key], again[key])]
    assert not differing, differing[:5]
    losses, resumed_losses = _losses(folder), _losses(resumed)
    # The batches after the checkpoint (steps 2 and 3, 0-based) have the same losses, bit for bit.
    assert {step: losses[step] for step in (2, 3)} == {step: resumed_losses[step] for step in (2, 3)}


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("{rank: 0}", "model.lora.rank"),
        ("{alpha: 0}", "model.lora.alpha"),
        ("{dropout: 1.0}", "model.lora.dropout"),
        ("{dropout: -0.1}", "model.lora.dropout"),
        ("{target: everything}", "model.lora.target"),
    ],
)
def test_bad_lora_values_are_refused_naming_the_key(value, key):
    with pytest.raises(ConfigError, match=rf"{key}=.*: "):
        load_config(QUICKSTART, [f"model.lora={value}"])


def test_lora_with_a_full_fine_tune_is_refused():
    with pytest.raises(ConfigError, match=r"model.lora=.*model.train_base=true"):
        load_config(QUICKSTART, ["model.lora={}", "model.train_base=true"])


def test_lora_defaults_are_upstreams():
    lora = load_config(QUICKSTART, ["model.lora={}"]).model.lora
    assert (lora.rank, lora.alpha, lora.dropout, lora.target) == (32, 32.0, 0.0, "base")
    assert load_config(QUICKSTART).model.lora is None


@pytest.mark.parametrize("target", ["base", "control", "base_and_control"])
def test_each_target_trains_its_adapters_and_nothing_else_frozen(target):
    net = build_network("tiny-multiview")
    apply_lora(net, LoraSettings(RANK, ALPHA, 0.0, target))
    trainable = set(set_trainable_(net, train_base=False))
    adapters = {name for name, _ in net.named_parameters() if ".lora_" in name}
    blocks = {"base": ("blocks.",), "control": ("control_blocks.",), "base_and_control": ("blocks.", "control_blocks.")}
    assert adapters and all(name.startswith(blocks[target]) for name in adapters)
    control = set(net.control_branch_parameter_names()) - adapters
    expected = adapters | (control if target == "base" else set())
    assert trainable == expected
    # Every attention and MLP projection of those blocks has an adapter (upstream's target modules).
    projections = ("q_proj", "k_proj", "v_proj", "output_proj", "layer1", "layer2")
    for name, module in net.named_modules():
        if name.startswith(blocks[target]) and name.rsplit(".", 1)[-1] in projections:
            assert hasattr(module, "lora_A"), name
