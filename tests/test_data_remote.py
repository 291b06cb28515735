"""Serving shards from a remote: another local folder, and s3:// against moto's S3 server on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import moto_s3

from cosmos_composer.data.convert import convert_to_mds
from cosmos_composer.data.dataset import TransferStreamingDataset, build_dataloader
from cosmos_composer.data.demo import make_demo_dataset

F, H, W = 9, 32, 48
NAMES = ["demo_0000", "demo_0001", "demo_0002"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("remote")
    make_demo_dataset(root / "source", "singleview", seed=0, samples=3, frames=F, height=64, width=96, progress=False)
    # A tiny shard size gives several shards, so the download path is exercised per shard.
    convert_to_mds(
        root / "source",
        root / "mds",
        "singleview",
        control_key="depth",
        min_frames=F,
        size_limit=10_000,
        progress=False,
    )
    assert len(list((root / "mds").glob("part-*/shard.*.mds"))) > 1
    return root / "mds"


def read_all(remote: str, local: Path) -> list[dict]:
    dataset = TransferStreamingDataset(remote=remote, local=str(local), num_frames=F, height=H, width=W)
    samples = [sample for batch in build_dataloader(dataset, batch_size=1) for sample in [batch]]
    return samples


def test_another_local_folder_as_remote(shards: Path, tmp_path: Path):
    local = tmp_path / "cache"
    batches = read_all(str(shards), local)
    assert [b["sample_name"][0] for b in batches] == NAMES
    assert batches[0]["video"].shape == (1, 3, F, H, W)
    assert sorted(p.name for p in local.iterdir() if p.suffix == ".mds") == sorted(p.name for p in shards.glob("*.mds"))


@pytest.fixture
def s3_server(monkeypatch):
    with moto_s3(monkeypatch) as endpoint:
        yield endpoint


def test_s3_remote_on_a_loopback_server(shards: Path, tmp_path: Path, s3_server: str):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server)
    client.create_bucket(Bucket="cosmos-data")
    for path in sorted(path for path in shards.rglob("*") if path.is_file()):  # the part folders too
        client.upload_file(str(path), "cosmos-data", f"demo/singleview/{path.relative_to(shards).as_posix()}")
    local = tmp_path / "s3_cache"
    batches = read_all("s3://cosmos-data/demo/singleview", local)
    assert [b["sample_name"][0] for b in batches] == NAMES
    assert batches[2]["control_input_depth"].shape == (1, 3, F, H, W)
    assert (local / "index.json").read_bytes() == (shards / "index.json").read_bytes()
