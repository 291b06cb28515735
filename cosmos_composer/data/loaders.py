"""The training run's dataloaders, from the config's `train_loader:` / `eval_loader:` sections: the demo dataset
made when it is missing (quickstart), and the shared memory of a killed run released first."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from composer.utils import dist
from omegaconf import DictConfig

from cosmos_composer.data.convert import convert_to_mds
from cosmos_composer.data.dataset import TransferStreamingDataset, build_dataloader
from cosmos_composer.data.demo import make_demo_dataset
from cosmos_composer.data.layouts import MULTIVIEW_HDMAP, SINGLEVIEW
from cosmos_composer.data.precompute import Precomputer
from cosmos_composer.data.shared_memory import release_stale_shared_memory

log = logging.getLogger(__name__)


def build_run_dataloader(loader_cfg: DictConfig, batch_size: int, model, context_parallel_size: int = 1):
    """The dataloader of one loader section: `batch_size` samples per rank; a context-parallel group's
    `context_parallel_size` consecutive ranks get the same samples (Streaming's `replication`).

    `model` (a CosmosTransferModel) gives the control key, and the network and encoders of the demo dataset.
    """
    dataset_cfg = loader_cfg.dataset
    if dataset_cfg.demo_if_missing:
        ensure_demo_dataset(
            dataset_cfg, model.net.config.is_multiview, model.encoders.vae, model.encoders.text_embedder
        )
    dataset = TransferStreamingDataset(
        local=dataset_cfg.local,
        remote=dataset_cfg.remote,
        split=dataset_cfg.split,
        num_frames=dataset_cfg.num_frames,
        height=dataset_cfg.height,
        width=dataset_cfg.width,
        control_key=model.control_key,
        random_start=dataset_cfg.random_start,
        decode_video=dataset_cfg.decode_video,
        use_cached_latents=dataset_cfg.use_cached_latents,
        use_cached_text=dataset_cfg.use_cached_text,
        random_control_params=dataset_cfg.random_control_params,
        augment_seed=dataset_cfg.augment_seed,
        cameras=dataset_cfg.cameras,
        shuffle=dataset_cfg.shuffle,
        shuffle_seed=dataset_cfg.shuffle_seed,
        batch_size=batch_size,
        replication=context_parallel_size if context_parallel_size > 1 else None,
    )
    workers = loader_cfg.num_workers
    return build_dataloader(
        dataset,
        batch_size,
        num_workers=workers,
        pin_memory=loader_cfg.pin_memory and torch.cuda.is_available(),
        drop_last=loader_cfg.drop_last,
        prefetch_factor=loader_cfg.prefetch_factor if workers > 0 else None,
    )


def release_stale_dataset_memory(cfg: DictConfig) -> None:
    """A run killed with -9 leaves Streaming's shared memory behind: release that of our folders before resuming.

    Once, before any dataset of this run exists: the train and eval loaders often read one folder, and a
    release between them would unlink the live segments of the train dataset (the resource tracker then
    reports them as leaked at exit).
    """
    if dist.get_local_rank() == 0:
        for loader_cfg in (cfg.train_loader, cfg.eval_loader):
            if loader_cfg is not None:
                release_stale_shared_memory(loader_cfg.dataset.local)
    dist.barrier()


def ensure_demo_dataset(dataset_cfg: DictConfig, is_multiview: bool, vae=None, text_embedder=None) -> None:
    """Quickstart convenience: when `dataset_cfg.local` is missing, generate the demo dataset and convert it.

    With encoders configured, the latents and raw text embeddings are cached in the shards as
    `convert_to_mds.py --precompute latents,text` does. Rank 0 works while the other ranks wait.
    """
    local = Path(dataset_cfg.local)
    if dist.get_local_rank() == 0 and not local.exists():
        layout = MULTIVIEW_HDMAP if is_multiview else SINGLEVIEW
        raw = local.with_name(local.name + "_raw")
        log.info("Demo dataset %s is missing: generating %s and converting it", local, raw)
        if not raw.exists():
            make_demo_dataset(layout=layout, output=raw, cameras=dataset_cfg.cameras)
        precomputer = None
        if vae is not None or text_embedder is not None:
            # Raw text on purpose: the demo's tiny text embeddings are small, and the network projects them.
            precomputer = Precomputer(
                height=dataset_cfg.height,
                width=dataset_cfg.width,
                num_frames=dataset_cfg.num_frames,
                vae=vae,
                text_embedder=text_embedder,
                raw_text=True,
            )
        convert_to_mds(
            layout=layout,
            input_dir=raw,
            output_dir=dataset_cfg.local,
            min_frames=dataset_cfg.num_frames,
            precomputer=precomputer,
            cameras=dataset_cfg.cameras,
        )
    dist.barrier()
