"""The run's loggers (`loggers:` of the config, from `loggers.LOGGERS`) and callbacks (`callbacks:`, from
`callbacks/registry.py`), with those every run has unless its YAML turns them off."""

from __future__ import annotations

import logging

import torch
from omegaconf import DictConfig, OmegaConf

from .callbacks.registry import build_callback
from .loggers import LOGGERS, JSONLinesLogger
from .run_plan import RunPlan

log = logging.getLogger(__name__)


def build_loggers(cfg: DictConfig, plan: RunPlan) -> list:
    """The YAML's loggers, plus the metrics file every run keeps in its run folder (`metrics.jsonl`).

    W&B's credentials are checked before, with the launch (`config.check_wandb_credentials`).
    """
    loggers = []
    for name, kwargs in (cfg.loggers or {}).items():
        kwargs = OmegaConf.to_container(kwargs) if kwargs is not None else {}
        loggers.append(LOGGERS[name](**kwargs))
    if "jsonl" not in (cfg.loggers or {}):  # every run keeps its metrics beside its checkpoints
        loggers.append(JSONLinesLogger(path=str(plan.run_folder / "metrics.jsonl")))
    return loggers


def build_callbacks(cfg: DictConfig, plan: RunPlan, model_description: str = "", start: str = "") -> list:
    """The YAML's callbacks plus those every run has unless the YAML turns them off (`callbacks.<name>=null`).

    `model_description` and `start` (what trains, and from where) go into the summary line.
    """
    folder = plan.run_folder
    always_on = {
        "run_summary": {
            "path": str(folder / "summary.json"),
            "folder": str(folder),
            "model": model_description,
            "start": start,
            "context_parallel_size": plan.context_parallel_size,
        },
        "loss_plot": {"path": str(folder / "loss.png")},
        "attention_kernel": {},  # the SDPA kernel is chosen, never left to chance
    }
    kwargs_by_name = {
        name: None if kwargs is None else OmegaConf.to_container(kwargs)
        for name, kwargs in (cfg.callbacks or {}).items()
    }
    for name, defaults in always_on.items():
        if name not in kwargs_by_name or kwargs_by_name[name] is not None:
            kwargs_by_name[name] = {**defaults, **(kwargs_by_name.get(name) or {})}
    if kwargs_by_name.get("data_log") is not None:
        kwargs_by_name["data_log"] = {
            "path": str(folder / "data_log.jsonl"),
            "context_parallel_size": plan.context_parallel_size,
            **kwargs_by_name["data_log"],
        }
    if kwargs_by_name.get("sample_videos") is not None:  # samples go into the run folder, beside its other files
        kwargs_by_name["sample_videos"] = {"output_dir": str(folder / "samples"), **kwargs_by_name["sample_videos"]}
    callbacks = []
    for name, kwargs in kwargs_by_name.items():
        if kwargs is None:
            continue
        if name == "memory_monitor" and not torch.cuda.is_available():
            log.info("memory_monitor left out: it measures CUDA memory, and this machine has no GPU")
            continue
        callbacks.append(build_callback(name, **kwargs))
    return callbacks


def describe_model(cfg: DictConfig) -> str:
    """What trains, for the summary line: `tiny-multiview, control branch`."""
    lora = cfg.model.lora
    if lora is not None:
        trains = {"base": "LoRA on the base + control branch", "control": "LoRA on the control branch"}
        return f"{cfg.model.preset}, {trains.get(lora.target, 'LoRA on the base and the control branch')}"
    return f"{cfg.model.preset}, {'all weights' if cfg.model.train_base else 'control branch'}"
