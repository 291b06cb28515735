"""Build the Trainer of a training run from a validated config (see `config.py`): the run plan (`run_plan.py`),
the run's setup (`run_setup.py`), the network and model (below), the dataloaders (`data/loaders.py`), the loggers
and callbacks (`loggers_and_callbacks.py`)."""

from __future__ import annotations

import contextlib
import logging

import torch
from composer import Trainer
from composer.utils import dist, reproducibility
from omegaconf import DictConfig, OmegaConf

from .callbacks.checkpoint_checksums import CheckpointChecksums
from .callbacks.nonfinite_loss import NonFiniteLossGuard
from .callbacks.preemption import Preemption
from .callbacks.shard_errors import StopOnShardError
from .callbacks.step_seed import StepSeed
from .checkpoint.object_store import is_object_store
from .checkpoint.run_record import rescale_sample_counts
from .checkpoint.safe_pickle import composer_loads_safely
from .checkpoint.save_guard import guard_saves
from .config import ConfigError
from .data.loaders import build_run_dataloader, release_stale_dataset_memory
from .encoders import build_encoders
from .loggers_and_callbacks import build_callbacks, build_loggers, describe_model
from .models import CosmosTransferNet
from .models.composer_model import CosmosTransferModel, ObjectiveConfig
from .models.lora import LoraSettings, lora_of
from .models.lora import describe_counts as describe_lora_counts
from .models.parallelize import composer_keeps_our_sharding
from .models.prepare import WeightSource, prepare_training_network
from .optim import FiniteGradClip, LambdaLinearSchedule, build_optimizer
from .quiet import silence_known_warnings, silence_resume_warnings
from .run_plan import RunPlan, plan_run
from .run_setup import (
    ConfigErrorOnEveryRank,
    RunInputs,
    apply_gpu_memory_cap,
    describe_start,
    lock_run_folder,
    remove_download,
    resolve_inputs,
    run_record_of,
    write_run_config,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- model
def training_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def build_training_network(cfg: DictConfig, plan: RunPlan, inputs: RunInputs) -> CosmosTransferNet:
    """The network with its starting weights, laid out for training (`models/prepare.py`, one order for every run).

    Its weights: the consolidated `load_path` file; a fresh initialisation (and then the `base_load_path` base
    DiT, the control branch initialised from it); or none yet when Composer loads a checkpoint next
    (autoresume, or a Composer checkpoint as `load_path`).
    """
    model_cfg = cfg.model
    net = prepare_training_network(
        plan.network,  # model.preset + model.overrides + the rig's cameras
        lora=None if model_cfg.lora is None else LoraSettings.of(model_cfg.lora),
        train_base=model_cfg.train_base,
        precision=cfg.precision,
        fsdp=plan.fsdp,
        weights=WeightSource(
            consolidated=inputs.weights,
            strict=cfg.load_strict,
            allow_shape_mismatch=cfg.load_allow_shape_mismatch,
            base=inputs.base,
            checkpoint_next=bool(inputs.composer_checkpoint or inputs.resumes),
            consolidated_name=cfg.load_path,
            base_name=cfg.base_load_path,
        ),
        device=training_device(),
        context_parallel_size=plan.context_parallel_size,
        compile_blocks=model_cfg.compile_blocks,
    )
    _print_trainable_counts(net)
    return net


def _print_trainable_counts(net: CosmosTransferNet) -> None:
    """What trains, in the run's start lines (global rank 0)."""
    if dist.get_global_rank() != 0:
        return
    if lora_of(net) is not None:
        print(describe_lora_counts(net), flush=True)
        return
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in net.parameters() if not p.requires_grad)
    print(f"parameters: {trainable:,} train, {frozen:,} frozen", flush=True)


def build_model(cfg: DictConfig, plan: RunPlan, inputs: RunInputs) -> CosmosTransferModel:
    """The ComposerModel: the prepared network, its EMA, the objective and the frozen encoders."""
    model_cfg = cfg.model
    net = build_training_network(cfg, plan, inputs)
    vae, text = build_encoders(inputs.vae, inputs.text, training_device())
    return CosmosTransferModel(
        net,
        objective=ObjectiveConfig.from_model_config(model_cfg),
        use_ema=model_cfg.use_ema,
        train_base=model_cfg.train_base,
        control_key=model_cfg.control_key,
        vae=vae,
        text_embedder=text,
    )


# ----------------------------------------------------------------------------- trainer
def build_trainer(cfg: DictConfig) -> Trainer:
    """The Trainer of a config loaded by `load_config`: every check that needs no model first, then the model."""
    silence_known_warnings()
    apply_gpu_memory_cap(cfg.gpu_memory_cap_gib)
    # Cheap checks first: a missing dataset, W&B credentials or a missing file fail before the model is built.
    try:
        plan = plan_run(cfg, dist.get_world_size(), has_gpu=torch.cuda.is_available())
    except ConfigError as error:  # a function of the config and the world size: every rank refuses alike
        raise ConfigErrorOnEveryRank(str(error)) from None
    if dist.get_global_rank() == 0:
        print(plan.describe_layout(), flush=True)
    loggers = build_loggers(cfg, plan)
    lock_run_folder(plan.locked_folder)  # before anything reads or writes the checkpoints
    inputs = resolve_inputs(cfg, plan.save_folder, plan)  # compares a resumed run with its checkpoint
    if inputs.resumes:
        silence_resume_warnings()
    write_run_config(cfg, plan)

    # Seed before the model is built, so a fresh run's initial weights are reproducible too.
    reproducibility.seed_all(cfg.seed)
    model = build_model(cfg, plan, inputs)
    release_stale_dataset_memory(cfg)
    batch_size, cp_size = plan.batch_size_per_rank, plan.context_parallel_size
    train_loader = build_run_dataloader(cfg.train_loader, batch_size, model, cp_size)
    eval_loader = None
    if cfg.eval_loader is not None:
        eval_loader = build_run_dataloader(cfg.eval_loader, batch_size, model, cp_size)

    optimizer = build_optimizer(model, **OmegaConf.to_container(cfg.optimizer), fused=torch.cuda.is_available())
    scheduler = LambdaLinearSchedule(**OmegaConf.to_container(cfg.scheduler))
    # The model is sharded already (build_training_network): Composer must not shard it again.
    sharding = composer_keeps_our_sharding() if plan.fsdp is not None else contextlib.nullcontext()
    # Composer loads load_path and the autoresume checkpoint here: never with a full unpickler. From an object
    # store, autoresume has downloaded and verified the checkpoint: Composer loads that copy as its load_path.
    store = is_object_store(plan.save_folder)
    load_path = str(inputs.resume_from) if store and inputs.resumes else inputs.composer_checkpoint
    # Autoresume has looked at the store: whatever is newer than its checkpoint is not intact, and this run
    # writes its batches again (as a local save_folder's would be); Composer's upload would refuse the names.
    overwrite_in_store = store and cfg.autoresume
    with sharding, composer_loads_safely():
        trainer = Trainer(
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
            parallelism_config=plan.parallelism_config,
            algorithms=[FiniteGradClip(max_norm=cfg.grad_clip_norm)],
            callbacks=[
                StepSeed(cfg.seed, cp_size),
                NonFiniteLossGuard(cfg.max_nonfinite_steps),
                StopOnShardError(),
                *build_callbacks(cfg, plan, describe_model(cfg), describe_start(cfg, inputs)),
            ],
            loggers=loggers,
            save_folder=plan.save_folder,
            save_interval=cfg.save_interval,
            save_num_checkpoints_to_keep=cfg.save_num_checkpoints_to_keep,
            save_overwrite=cfg.save_overwrite or overwrite_in_store,
            autoresume=cfg.autoresume and plan.save_folder is not None and not store,
            load_path=load_path,
            seed=cfg.seed,
            progress_bar=cfg.progress_bar,
            log_to_console=cfg.log_to_console,
            console_log_interval=cfg.console_log_interval,
            dist_timeout=cfg.dist_timeout,
        )
    remove_download(inputs)
    if inputs.resumed_run is not None:  # Composer's restored sample counts, in this run's context-parallel units
        state = trainer.state
        state.timestamp = rescale_sample_counts(state.timestamp, inputs.resumed_run.context_parallel_size, cp_size)
    guard_saves(trainer)  # a failed save (a full disk) leaves no partial checkpoint and says so in one line
    # After Composer's checkpoint saver: writes network.json and run.json and sums what it has just written.
    CheckpointChecksums.attach(trainer, cfg.model.preset, run_record_of(cfg, plan))
    Preemption.attach(trainer)  # last: stops a preempted run after its checkpoint and checksums are written
    return trainer
