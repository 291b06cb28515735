"""The run plan: what a validated config (`config.py`) means for one launch, derived once.

`plan_run` runs the launch checks (dataset folders, precision, context parallelism, the batch's split) and then
works out, in one place, everything the builders would otherwise each derive from the raw config again: the
network with the rig's cameras, the per-rank batch, the folders, the FSDP2 config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from composer.utils.parallelism import FSDP2Config
from omegaconf import DictConfig, OmegaConf

from .checkpoint.object_store import is_object_store
from .config import (
    AUTO_CONTEXT_PARALLEL,
    check_launch,
    network_and_overrides,
    resolve_context_parallel_size,
    run_folder,
)
from .models import NetworkConfig


@dataclass(frozen=True)
class RunPlan:
    """A launch's settings derived from its config: the builders read these, never the raw config again."""

    network: NetworkConfig  # model.preset + model.overrides, its view rows named after the rig's cameras
    network_overrides: dict[str, Any]  # the `build_network(preset, **overrides)` keywords that make `network`
    world_size: int  # processes of the launch
    context_parallel_size: int  # consecutive ranks that share one sample
    data_parallel_size: int  # groups of ranks with samples of their own: world_size / context_parallel_size
    batch_size_per_rank: int  # samples each rank loads per batch (a context-parallel group's ranks load the same)
    run_folder: Path  # <output_root>/<project>/<group>/<run_name>: config.yaml, metrics, plots, samples
    save_folder: Optional[str]  # where checkpoints go; None: no checkpoints (save_interval=null), no autoresume
    fsdp: Optional[FSDP2Config]  # None: one process without FSDP2
    context_parallel_auto: bool = False  # context_parallel_size was `auto`, resolved from world_size

    def describe_layout(self) -> str:
        """The start line that says how the processes share the batch."""
        source = " (context_parallel_size=auto)" if self.context_parallel_auto else ""
        return (
            f"layout: {self.world_size} processes = {self.data_parallel_size} data-parallel group(s) x "
            f"context_parallel_size {self.context_parallel_size}{source}; "
            f"{self.batch_size_per_rank * self.data_parallel_size} samples per step, {self.batch_size_per_rank} per group"
        )

    @property
    def parallelism_config(self) -> Optional[dict[str, FSDP2Config]]:
        """Composer's `Trainer(parallelism_config=...)`."""
        return None if self.fsdp is None else {"fsdp": self.fsdp}

    @property
    def locked_folder(self) -> str:
        """The folder the run lock guards: the checkpoints' when local, else the run folder (an object store has
        no lock: the run folder's guards the launches that share this filesystem)."""
        local = self.save_folder is not None and not is_object_store(self.save_folder)
        return self.save_folder if local else str(self.run_folder)


def fsdp2_config(cfg: DictConfig) -> Optional[FSDP2Config]:
    """`parallelism_config.fsdp` as Composer's FSDP2Config; None without it (one process)."""
    if not cfg.parallelism_config or cfg.parallelism_config.get("fsdp") is None:
        return None
    return FSDP2Config(**OmegaConf.to_container(cfg.parallelism_config.fsdp))


def plan_run(cfg: DictConfig, world_size: int, has_gpu: bool) -> RunPlan:
    """The run plan of a config loaded by `load_config`, for `world_size` processes; a ConfigError first when
    the launch cannot run it (see `config.check_launch`). `context_parallel_size: auto` is resolved into `cfg`."""
    network, overrides = network_and_overrides(cfg)
    auto = cfg.context_parallel_size == AUTO_CONTEXT_PARALLEL
    # `auto` becomes this launch's size here, once: the checks, the builders and config.yaml see the integer.
    cfg.context_parallel_size = resolve_context_parallel_size(cfg, network, world_size)
    check_launch(cfg, network, world_size, has_gpu)
    data_parallel_size = world_size // cfg.context_parallel_size
    folder = run_folder(cfg)
    save_folder = None
    if cfg.save_interval is not None:
        save_folder = cfg.save_folder or str(folder / "checkpoints")
    return RunPlan(
        network=network,
        network_overrides=overrides,
        world_size=world_size,
        context_parallel_size=cfg.context_parallel_size,
        data_parallel_size=data_parallel_size,
        batch_size_per_rank=cfg.global_train_batch_size // data_parallel_size,
        run_folder=folder,
        save_folder=save_folder,
        fsdp=fsdp2_config(cfg),
        context_parallel_auto=auto,
    )
