"""Mid-epoch resumption: a loader restored from a state saved after k samples continues exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from cosmos_composer.data.convert import convert_to_mds
from cosmos_composer.data.dataset import TransferStreamingDataset, build_dataloader
from cosmos_composer.data.demo import make_demo_dataset

F, H, W = 5, 16, 24
NUM_SAMPLES = 8


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    make_demo_dataset(
        root / "source",
        "singleview",
        seed=1,
        samples=NUM_SAMPLES,
        frames=F,
        height=32,
        width=48,
        progress=False,
    )
    convert_to_mds(
        root / "source",
        root / "mds",
        "singleview",
        control_key="depth",
        min_frames=F,
        size_limit=30_000,
        progress=False,
    )
    return root / "mds"


def make_loader(shards: Path, local: Path, num_workers: int):
    # Each dataset instance gets its own local cache folder (Streaming keys shared memory on it).
    dataset = TransferStreamingDataset(
        remote=str(shards),
        local=str(local),
        num_frames=F,
        height=H,
        width=W,
        shuffle=True,
        shuffle_seed=123,
        num_canonical_nodes=1,
        random_start=False,
    )
    return build_dataloader(dataset, batch_size=1, num_workers=num_workers)


def names(batches) -> list[str]:
    return [name for batch in batches for name in batch["sample_name"]]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_after_k_samples_yields_the_rest_of_the_epoch(shards: Path, tmp_path: Path, num_workers: int):
    full = names(make_loader(shards, tmp_path / "full", num_workers))
    assert sorted(full) == [f"demo_{i:04d}" for i in range(NUM_SAMPLES)]
    assert full != sorted(full), "shuffle is on, so the order should not be the file order"

    k = 3
    interrupted = make_loader(shards, tmp_path / "interrupted", num_workers)
    seen = []
    for batch in interrupted:
        seen += batch["sample_name"]
        if len(seen) == k:
            state = interrupted.state_dict()
            break
    assert seen == full[:k]
    assert state["sample_in_epoch"] == k and state["epoch"] == 0
    del interrupted

    resumed = make_loader(shards, tmp_path / "resumed", num_workers)
    resumed.load_state_dict(state)
    assert names(resumed) == full[k:]
