"""Build everything a training run needs from a validated config (see `config.py`)."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any, Optional

import torch
from composer import Trainer
from composer.utils import dist, reproducibility
from composer.utils.parallelism import FSDP2Config
from omegaconf import DictConfig, OmegaConf

from .callbacks.registry import CALLBACKS
from .callbacks.step_seed import StepSeed
from .checkpoint.hf import resolve
from .config import ConfigError, run_folder
from .loggers import JSONLinesLogger, WandBLogger
from .models import build_network
from .models.composer_model import CosmosTransferModel, ObjectiveConfig
from .optim import FiniteGradClip, LambdaLinearSchedule, build_optimizer

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- model
def build_encoders(cfg: DictConfig) -> tuple[Any, Any]:
    """(vae, text_embedder) from `encoders:`; None where not configured (cached columns needed)."""
    from .encoders import Reason1TextEmbedder, WanVAE

    vae = text = None
    if cfg.vae == "tiny":
        vae = WanVAE.tiny(seed=0)
    elif cfg.vae:
        path = resolve(cfg.vae)
        vae = WanVAE.from_diffusers(path) if Path(path).is_dir() else WanVAE.from_official_pth(path)
    if cfg.text == "tiny":
        text = Reason1TextEmbedder.tiny(seed=0)
    elif cfg.text:
        text = Reason1TextEmbedder.from_pretrained(resolve(cfg.text))
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return (
        None if vae is None else vae.to(device=device, dtype=dtype).eval(),
        None if text is None else text.to(device=device, dtype=dtype).eval(),
    )


def build_model(cfg: DictConfig) -> CosmosTransferModel:
    m = cfg.model
    net = build_network(m.preset, **OmegaConf.to_container(m.overrides))
    objective = ObjectiveConfig(
        sigma_shift=m.sigma_shift,
        conditional_frames_probs={int(k): float(v) for k, v in m.conditional_frames_probs.items()},
        text_dropout_rate=m.text_dropout_rate,
        eval_sigmas=tuple(m.eval_sigmas),
    )
    vae, text = build_encoders(cfg.encoders)
    return CosmosTransferModel(
        net,
        objective=objective,
        use_ema=m.use_ema,
        train_base=m.train_base,
        control_key=m.control_key,
        vae=vae,
        text_embedder=text,
    )


# ----------------------------------------------------------------------------- data
def build_dataloader(loader_cfg: DictConfig, batch_size: int, model: CosmosTransferModel):
    from .data.dataset import TransferStreamingDataset, build_dataloader
    from .data.shared_memory import release_stale_shared_memory

    ds = loader_cfg.dataset
    if ds.demo_if_missing:
        ensure_demo_dataset(ds, model.net.config.is_multiview, model.encoders.vae, model.encoders.text_embedder)
    if dist.get_local_rank() == 0:
        # A run killed with -9 leaves Streaming's shared memory behind; release ours before resuming.
        release_stale_shared_memory(ds.local)
    dist.barrier()
    dataset = TransferStreamingDataset(
        local=ds.local,
        remote=ds.remote,
        split=ds.split,
        num_frames=ds.num_frames,
        height=ds.height,
        width=ds.width,
        control_key=model.control_key,
        random_start=ds.random_start,
        decode_video=ds.decode_video,
        shuffle=ds.shuffle,
        shuffle_seed=ds.shuffle_seed,
        batch_size=batch_size,
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


def ensure_demo_dataset(ds: DictConfig, is_multiview: bool, vae=None, text_embedder=None) -> None:
    """Quickstart convenience: when `ds.local` is missing, generate the demo dataset and convert it.

    With encoders configured, the latents and raw text embeddings are cached in the shards as
    `convert_to_mds.py --precompute latents,text` does. Rank 0 works while the other ranks wait.
    """
    if dist.get_local_rank() == 0 and not Path(ds.local).exists():
        from .data.convert import convert_to_mds
        from .data.demo import make_demo_dataset
        from .data.precompute import Precomputer

        layout = "multiview-hdmap" if is_multiview else "singleview"
        raw = Path(ds.local).with_name(Path(ds.local).name + "_raw")
        log.info("Demo dataset %s is missing: generating %s and converting it", ds.local, raw)
        if not raw.exists():
            make_demo_dataset(layout=layout, output=raw)
        precomputer = None
        if vae is not None or text_embedder is not None:
            precomputer = Precomputer(
                height=ds.height, width=ds.width, num_frames=ds.num_frames, vae=vae, text_embedder=text_embedder
            )
        convert_to_mds(layout=layout, input_dir=raw, output_dir=ds.local, min_frames=ds.num_frames, precomputer=precomputer)
    dist.barrier()


# ----------------------------------------------------------------------------- loggers and callbacks
def _wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        netrc_file = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
        return netrc.netrc(netrc_file).authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def build_loggers(cfg: DictConfig) -> list:
    loggers = []
    for name, kwargs in (cfg.loggers or {}).items():
        kwargs = OmegaConf.to_container(kwargs) if kwargs is not None else {}
        if name == "wandb":
            mode = os.environ.get("WANDB_MODE", "").lower()
            if mode not in ("offline", "disabled", "dryrun") and not _wandb_has_credentials():
                raise ConfigError(
                    "W&B logging is configured (`loggers: wandb:`) but no W&B credentials were found. "
                    "Either log in (`wandb login`, or set WANDB_API_KEY), or set WANDB_MODE=offline to log locally; "
                    "to turn W&B off, delete the `loggers` section or pass `loggers=null`."
                )
            loggers.append(WandBLogger(**kwargs))
        elif name == "jsonl":
            loggers.append(JSONLinesLogger(**kwargs))
    return loggers


def build_callbacks(cfg: DictConfig) -> list:
    callbacks = []
    for name, kwargs in (cfg.callbacks or {}).items():
        kwargs = OmegaConf.to_container(kwargs) if kwargs is not None else {}
        callbacks.append(CALLBACKS[name](**kwargs))
    return callbacks


# ----------------------------------------------------------------------------- trainer
def build_parallelism(cfg: DictConfig) -> Optional[dict]:
    if not cfg.parallelism_config or cfg.parallelism_config.get("fsdp") is None:
        return None
    return {"fsdp": FSDP2Config(**OmegaConf.to_container(cfg.parallelism_config.fsdp))}


def check_dataset_paths(cfg: DictConfig) -> None:
    """Fail before anything heavy is built when a dataset folder is missing."""
    loaders = {"train_loader": cfg.train_loader, "eval_loader": cfg.eval_loader}
    for section, loader in loaders.items():
        if loader is None:
            continue
        ds = loader.dataset
        if ds.remote is None and not ds.demo_if_missing and not Path(ds.local).exists():
            raise ConfigError(
                f"{section}.dataset.local={ds.local!r} does not exist. Convert your dataset first "
                f"(python scripts/convert_to_mds.py --layout ... --input <folder> --output {ds.local}), "
                f"or set {section}.dataset.remote to where the shards are"
            )


def build_trainer(cfg: DictConfig) -> Trainer:
    # Cheap checks first: a missing dataset or W&B credentials fail before the model is built.
    check_dataset_paths(cfg)
    loggers = build_loggers(cfg)
    world_size = dist.get_world_size()
    if cfg.global_train_batch_size % world_size:
        raise ConfigError(
            f"global_train_batch_size={cfg.global_train_batch_size} is not divisible by the {world_size} processes"
        )
    batch_size = cfg.global_train_batch_size // world_size
    # Seed before the model is built, so a fresh run's initial weights are reproducible too.
    reproducibility.seed_all(cfg.seed)
    model = build_model(cfg)
    train_loader = build_dataloader(cfg.train_loader, batch_size, model)
    eval_loader = None
    if cfg.eval_loader is not None:
        eval_loader = build_dataloader(cfg.eval_loader, batch_size, model)

    optimizer = build_optimizer(model, **OmegaConf.to_container(cfg.optimizer))
    scheduler = LambdaLinearSchedule(**OmegaConf.to_container(cfg.scheduler))
    save_folder = cfg.save_folder or str(run_folder(cfg) / "checkpoints")

    load_path = cfg.load_path
    if load_path is not None:
        if cfg.autoresume and _has_autoresume_checkpoint(save_folder):
            load_path = None  # autoresume wins; never download what would not be used
        else:
            local = resolve(load_path)  # hf:// -> the HF cache (a file, or a folder of the repo)
            if _is_composer_checkpoint(local):
                load_path = local
            else:
                from .checkpoint.load import load_consolidated_into_model

                load_consolidated_into_model(  # given the URI, so its report names what the user wrote
                    model, load_path, strict=cfg.load_strict, allow_shape_mismatch=cfg.load_allow_shape_mismatch
                )
                load_path = None

    return Trainer(
        run_name=cfg.run_name,
        model=model,
        train_dataloader=train_loader,
        eval_dataloader=eval_loader,
        eval_interval=cfg.eval_interval if eval_loader is not None else 1,
        optimizers=optimizer,
        schedulers=scheduler,
        step_schedulers_every_batch=True,
        max_duration=cfg.max_duration,
        device_train_microbatch_size=cfg.device_train_microbatch_size,
        precision=cfg.precision,
        parallelism_config=build_parallelism(cfg),
        algorithms=[FiniteGradClip(max_norm=cfg.grad_clip_norm)],
        callbacks=[StepSeed(cfg.seed), *build_callbacks(cfg)],
        loggers=loggers,
        save_folder=save_folder,
        save_interval=cfg.save_interval,
        save_num_checkpoints_to_keep=cfg.save_num_checkpoints_to_keep,
        save_overwrite=cfg.save_overwrite,
        autoresume=cfg.autoresume,
        load_path=load_path,
        seed=cfg.seed,
        progress_bar=cfg.progress_bar,
        log_to_console=cfg.log_to_console,
        console_log_interval=cfg.console_log_interval,
        dist_timeout=cfg.dist_timeout,
    )


def _is_composer_checkpoint(path: str) -> bool:
    """A Composer checkpoint (a sharded DCP folder or a Composer .pt) rather than a consolidated weights file.

    `path` is local: hf:// URIs are resolved before this is asked."""
    p = Path(path)
    return p.is_dir() or "{" in path or p.name.startswith(("latest-rank", "ep"))


def _has_autoresume_checkpoint(save_folder: str) -> bool:
    return any(Path(save_folder).glob("latest-rank*"))
