"""The training network is prepared in one order for every run (models/prepare.py): a fresh initialisation is
drawn module by module into each rank's shards, with the constructors' distributions, the same values whatever
the sharding; and one process without FSDP2 trains exactly as one FSDP2 rank does."""

from __future__ import annotations

import json

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from composer.utils.parallelism import FSDP2Config
from helpers import free_port, run_train
from torch.distributed.tensor import DTensor

from cosmos_composer.models import build_network, get_config
from cosmos_composer.models.lora import LoraSettings
from cosmos_composer.models.prepare import WeightSource, prepare_training_network

PRESET = "tiny-multiview"
LORA = LoraSettings(rank=4, alpha=4.0, dropout=0.0, target="base")


def _prepared(fsdp, lora=LORA) -> torch.nn.Module:
    torch.manual_seed(0)
    return prepare_training_network(
        get_config(PRESET),
        lora=lora,
        train_base=False,
        precision="fp32",
        fsdp=fsdp,
        weights=WeightSource(),
        device=torch.device("cpu"),
    )


def test_a_fresh_init_has_the_constructors_distributions():
    torch.manual_seed(0)
    built = dict(build_network(PRESET).named_parameters())  # the constructors' draws (what upstream trains from)
    prepared = dict(_prepared(fsdp=None, lora=None).named_parameters())
    assert sorted(prepared) == sorted(built)
    for name, param in prepared.items():
        value, reference = param.detach().float(), built[name].detach()
        for constant in (0.0, 1.0):
            assert bool((value == constant).all()) == bool((reference == constant).all()), name
        if reference.numel() >= 1024 and reference.std() > 0:  # the same spread, to sampling error
            assert abs(value.std() / reference.std() - 1) < 0.1, (name, float(value.std()), float(reference.std()))
            assert abs(value.mean() - reference.mean()) < 0.1 * reference.std(), name
    for name, value in prepared.items():  # control block j starts as base block j (as stored: frozen in bf16)
        if name.startswith("control_blocks."):
            base_name = name.replace("control_blocks.", "blocks.", 1)
            if base_name in prepared:
                assert torch.equal(value.detach(), prepared[base_name].detach().to(value.dtype)), name


def _two_rank_fresh_init(rank: int, world: int, port: int, path: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        net = _prepared(fsdp=FSDP2Config())
        full = {}
        for name, param in net.named_parameters():
            assert isinstance(param, DTensor), f"{name} is not sharded"
            full[name] = param.full_tensor().detach()
        if rank == 0:
            torch.save(full, path)
    finally:
        dist.destroy_process_group()


def test_a_fresh_init_is_the_same_on_two_fsdp2_ranks_as_in_one_process(tmp_path):
    path = tmp_path / "gathered.pt"
    mp.spawn(_two_rank_fresh_init, args=(2, free_port(), str(path)), nprocs=2, join=True)
    gathered = torch.load(path, weights_only=True)
    one_process = dict(_prepared(fsdp=None).named_parameters())
    assert sorted(gathered) == sorted(one_process)
    assert any(".lora_A." in name for name in gathered)
    for name, param in one_process.items():
        assert param.dtype == gathered[name].dtype, name  # frozen bf16, trainable fp32, with or without FSDP2
        assert torch.equal(param.detach(), gathered[name]), name


def _losses(jsonl) -> list[float]:
    return [
        json.loads(line)["loss/train/total"] for line in jsonl.read_text().splitlines() if "loss/train/total" in line
    ]


def test_one_process_and_one_fsdp2_rank_give_the_same_quickstart_losses(tmp_path, demo_mds):
    losses = {}
    for name, parallelism in (("one_process", ["parallelism_config=null"]), ("fsdp2", [])):
        jsonl = tmp_path / f"{name}.jsonl"
        result = run_train(
            [
                f"train_loader.dataset.local={demo_mds}",
                "eval_loader=null",
                "max_duration=4ba",
                "save_interval=null",
                "callbacks.sample_videos=null",
                f"run_name={name}",
                f"loggers={{jsonl: {{path: {jsonl}}}}}",
                *parallelism,
            ],
            tmp_path,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        losses[name] = _losses(jsonl)
    assert len(losses["fsdp2"]) == 4
    torch.testing.assert_close(losses["one_process"], losses["fsdp2"], rtol=1e-6, atol=0)
