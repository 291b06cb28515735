"""The training memory model: meta build, FSDP2 shards filled per rank, frozen bf16, EMA of what trains.

The 2-rank test runs the builder that train.py runs (`build_training_network`) under gloo, and checks the
result with torch's own DTensor gather (`full_tensor`) against the consolidated file it loaded.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import QUICKSTART, free_port
from torch.distributed.tensor import DTensor

from cosmos_composer import builders, run_setup
from cosmos_composer.checkpoint.keys import with_shared_ema_keys
from cosmos_composer.config import ConfigError, load_config
from cosmos_composer.models import build_network
from cosmos_composer.models.composer_model import CosmosTransferModel
from cosmos_composer.models.parallelize import ema_weights
from cosmos_composer.run_plan import plan_run

PRESET = "tiny-multiview"


def _consolidated_file(path, seed: int = 0) -> dict[str, torch.Tensor]:
    """An official-format EMA file (`net.*`, bf16) with random values everywhere."""
    generator = torch.Generator().manual_seed(seed)
    state = {
        f"net.{name}": torch.randn(p.shape, generator=generator).to(torch.bfloat16)
        for name, p in build_network(PRESET).named_parameters()
    }
    torch.save(state, path)
    return state


def _two_rank_load(rank: int, world: int, port: int, path: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cfg = load_config(QUICKSTART, [f"load_path={path}"])
        net = builders.build_training_network(
            cfg, plan_run(cfg, world, has_gpu=False), run_setup.resolve_inputs(cfg, save_folder=None)
        )
        model = CosmosTransferModel(net, use_ema=True)
        expected = torch.load(path, weights_only=True)
        trainable = set(net.control_branch_parameter_names())

        for name, param in net.named_parameters():
            assert isinstance(param, DTensor), f"{name} is not sharded"
            # Each rank holds (and so copied) only its own rows.
            if param.shape[0] >= world:
                assert param.to_local().shape[0] < param.shape[0], name
            dtype = torch.float32 if name in trainable else torch.bfloat16
            assert param.dtype == dtype, f"{name} is {param.dtype}, expected {dtype}"
            assert param.requires_grad == (name in trainable), name
            full = param.full_tensor()
            assert torch.equal(full, expected[f"net.{name}"].to(dtype)), f"{name} differs from the file"

        ema = dict(model.net_ema.named_parameters(remove_duplicate=False))
        assert set(ema) == set(dict(net.named_parameters()))
        for name, param in net.named_parameters():
            if name in trainable:  # an fp32 copy that starts equal to the loaded weights
                assert ema[name] is not param and ema[name].to_local().data_ptr() != param.to_local().data_ptr()
                assert ema[name].dtype == torch.float32 and torch.equal(ema[name].full_tensor(), param.full_tensor())
            else:  # the frozen weights are net's own: the EMA holds no copy of them
                assert ema[name] is param, f"net_ema holds its own copy of the frozen {name}"
        # The model state holds net_ema.* only for what the EMA does not share (each tensor once in a checkpoint);
        # the official key set, every key under net_ema., is rebuilt from it for export.
        state = model.state_dict()
        assert {k[len("net_ema.") :] for k in state if k.startswith("net_ema.")} == trainable
        official = with_shared_ema_keys(state)
        assert {k[len("net_ema.") :] for k in official if k.startswith("net_ema.")} == set(dict(net.named_parameters()))
    finally:
        dist.destroy_process_group()


def test_two_rank_load_from_a_consolidated_file_fills_each_shard_exactly(tmp_path):
    path = tmp_path / "weights_ema_bf16.pt"
    _consolidated_file(path)
    mp.spawn(_two_rank_load, args=(2, free_port(), str(path)), nprocs=2, join=True)


def test_ema_weights_swaps_the_trained_weights_in_and_back():
    torch.manual_seed(0)
    model = CosmosTransferModel(build_network(PRESET), use_ema=True)
    name = "control_blocks.0.after_proj.weight"
    net_param = dict(model.net.named_parameters())[name]
    ema_param = dict(model.net_ema.named_parameters())[name]
    with torch.no_grad():
        net_param.add_(1.0)  # training moved net away from the EMA
    trained, averaged = net_param.detach().clone(), ema_param.detach().clone()
    assert not torch.equal(trained, averaged)
    with ema_weights(model.net, model.net_ema) as net:
        assert torch.equal(dict(net.named_parameters())[name], averaged)
    assert torch.equal(net_param, trained) and torch.equal(ema_param, averaged)


# ----------------------------------------------------------------------------- inputs checked first
@pytest.mark.parametrize(
    "key, value",
    [
        ("encoders.vae", "hf://nvidia/Cosmos-Predict2.5-2B/tokenizer.pth@f176dc95b4a70f53ce01c4b302851595e7322b00"),
        ("load_path", "hf://nvidia/Cosmos-Transfer2.5-2B/auto/multiview/missing_ema_bf16.pt@00c591edab119e8a6ca06e6e091351a04ce0ecc9"),
        ("encoders.text", "/nowhere/Cosmos-Reason1-7B"),
    ],
)  # fmt: skip
def test_a_missing_input_fails_before_the_network_is_built_naming_its_key(tmp_path, monkeypatch, key, value):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("COSMOS_OUTPUT_ROOT", str(tmp_path / "out"))

    def no_network(*args, **kwargs):
        raise AssertionError("the network was built before the inputs were checked")

    monkeypatch.setattr(builders, "prepare_training_network", no_network)
    cfg = load_config(QUICKSTART, ["model.preset=transfer2.5-2b-multiview", f"{key}={value}", "eval_loader=null"])
    with pytest.raises(ConfigError) as error:
        builders.build_trainer(cfg)
    assert f"{key}={value!r}" in str(error.value)
    if value.startswith("hf://"):
        assert "not in the local Hugging Face cache" in str(error.value) and "HF_HUB_OFFLINE=1" in str(error.value)


# ----------------------------------------------------------------------------- what a run reports
def test_a_run_ends_with_its_summary_line_and_summary_json(tmp_path, demo_mds):
    import json

    from helpers import run_train

    result = run_train(
        [
            f"train_loader.dataset.local={demo_mds}",
            "eval_loader=null",
            "max_duration=3ba",
            "parallelism_config=null",
            "save_interval=null",
            "callbacks.sample_videos=null",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "run summary: 3 batches on 1 ranks" in result.stdout
    assert not list((tmp_path / "out").rglob("ep*-ba*"))  # save_interval=null: no checkpoints
    summary = json.loads(next((tmp_path / "out").rglob("summary.json")).read_text())
    assert summary["batches"] == 3 and summary["timed_steps"] == 2 and summary["global_batch"] == 2
    assert summary["samples_per_s"] > 0 and summary["host_rss_gib_per_rank"] > 0.1
    assert summary["samples_per_s"] == pytest.approx(2 / summary["step_s"])


def test_the_attention_kernel_is_chosen_and_named():
    from torch.nn.attention import SDPBackend

    from cosmos_composer.callbacks.attention_kernel import kernel_in_use, priority

    assert priority("cudnn")[0] == SDPBackend.CUDNN_ATTENTION and len(set(priority("cudnn"))) == 4
    with pytest.raises(ValueError, match="choose one of"):
        priority("fastest")
    # On a CPU the flash backend has a CPU kernel; a head layout it refuses falls through to the next one.
    assert kernel_in_use(priority("flash"), 2, 8, torch.float32, "cpu") == "FLASH_ATTENTION"
    assert kernel_in_use([SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH], 2, 8, torch.float32, "cpu") == "MATH"


# ----------------------------------------------------------------------------- torch.compile of the blocks
def test_compiled_blocks_match_eager_forward_and_backward():
    import copy

    from cosmos_composer.checkpoint.export import example_inputs
    from cosmos_composer.models.parallelize import apply_compile

    torch.manual_seed(0)
    eager = build_network(PRESET)
    compiled = copy.deepcopy(eager)
    apply_compile(compiled)
    assert list(dict(compiled.named_parameters())) == list(dict(eager.named_parameters()))  # keys unchanged
    blocks = [*compiled.blocks, *compiled.control_blocks]
    assert all(block._compiled_call_impl is not None for block in blocks)  # they really run compiled
    inputs = example_inputs(eager.config, seed=3)
    out_eager, out_compiled = eager(**inputs), compiled(**inputs)
    assert torch.allclose(out_compiled, out_eager, rtol=1e-5, atol=1e-5 * out_eager.abs().max().item())
    out_eager.pow(2).mean().backward()
    out_compiled.pow(2).mean().backward()
    for (name, p_eager), p_compiled in zip(eager.named_parameters(), compiled.parameters()):
        if p_eager.grad is not None:
            scale = p_eager.grad.abs().max().item() or 1.0
            assert torch.allclose(p_compiled.grad, p_eager.grad, rtol=1e-4, atol=1e-5 * scale), name
