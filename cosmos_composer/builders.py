"""Build the Trainer of a training run from a validated config (see `config.py`): the run plan (`run_plan.py`),
the run's setup (`run_setup.py`), the network and model (below), the dataloaders (`data/loaders.py`), the loggers
and callbacks (`loggers_and_callbacks.py`)."""

from __future__ import annotations

import contextlib
import logging
from typing import Optional

import torch
from composer import Trainer
from composer.core.precision import Precision
from composer.distributed.fsdp2 import create_mixed_precision_policy
from composer.utils import dist, reproducibility
from omegaconf import DictConfig, OmegaConf

from .callbacks.checkpoint_checksums import CheckpointChecksums
from .callbacks.nonfinite_loss import NonFiniteLossGuard
from .callbacks.step_seed import StepSeed
from .checkpoint.load import (
    load_base_into_network,
    load_consolidated_into_network,
    load_network_weights,
)
from .checkpoint.safe_pickle import composer_loads_safely
from .config import network_overrides
from .data.loaders import build_run_dataloader, release_stale_dataset_memory
from .encoders import build_encoders
from .loggers_and_callbacks import build_callbacks, build_loggers, describe_model
from .models import CosmosTransferNet, build_network
from .models.composer_model import CosmosTransferModel, ObjectiveConfig
from .models.context_parallel import context_parallel_groups
from .models.lora import BaseWeights, apply_lora, init_adapters_, lora_of
from .models.lora import describe_counts as describe_lora_counts
from .models.parallelize import (
    FROZEN_DTYPE,
    apply_compile,
    apply_context_parallel,
    apply_dtypes,
    apply_fsdp,
    composer_keeps_our_sharding,
    materialize_,
    set_trainable_,
)
from .optim import FiniteGradClip, LambdaLinearSchedule, build_optimizer
from .quiet import silence_known_warnings, silence_resume_warnings
from .run_plan import fsdp2_config, plan_run
from .run_setup import (
    RunInputs,
    apply_gpu_memory_cap,
    describe_start,
    lock_run_folder,
    resolve_inputs,
    write_run_config,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- model
def training_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def build_training_network(cfg: DictConfig, inputs: RunInputs) -> CosmosTransferNet:
    """The network with its weights, laid out for training (see `models/parallelize.py`).

    With FSDP2 it is built on the meta device, sharded, and each rank fills only its own shards: from
    the consolidated `load_path` file (mmapped), from a fresh initialisation (and then the `base_load_path`
    base DiT, the control branch initialised from it), or not at all when Composer loads a checkpoint next
    (autoresume, or a Composer checkpoint as `load_path`).
    """
    m = cfg.model
    overrides = network_overrides(cfg)  # model.overrides + the rig's camera_names
    fsdp = build_parallelism(cfg)
    load = dict(strict=cfg.load_strict, allow_shape_mismatch=cfg.load_allow_shape_mismatch, source=cfg.load_path)
    # With a base_load_path the fresh draw is the control embedder's and hint block's init (upstream keeps theirs).
    fresh_init = not (inputs.weights or inputs.composer_checkpoint or inputs.resumes)
    base = dict(path_or_uri=inputs.base, source=cfg.base_load_path)

    if fsdp is None:  # one process, no sharding: the network is built whole
        net = build_network(m.preset, **overrides)
        if inputs.weights:
            load_consolidated_into_network(net, inputs.weights, **load)
        elif inputs.base:
            load_base_into_network(net, **base)
        if m.lora is not None:  # after the loads: the files have the official names
            apply_lora(net, m.lora)
        set_trainable_(net, m.train_base)
        _print_trainable_counts(net)
        # Without FSDP2 nothing casts the frozen weights for an fp32 forward, so they stay fp32 there.
        apply_dtypes(net, FROZEN_DTYPE if cfg.precision == "amp_bf16" else torch.float32)
        if m.compile_blocks:
            apply_compile(net)
        return net

    # The fresh weights are drawn first, whole, from the run's seed (small presets: the 2B starts from a file).
    initial = _fresh_weights(m, overrides) if fresh_init else None
    with torch.device("meta"):
        net = build_network(m.preset, **overrides)
        if m.lora is not None:  # before FSDP2 and torch.compile, which wrap the adapted modules
            apply_lora(net, m.lora)
    set_trainable_(net, m.train_base)
    _print_trainable_counts(net)
    # Files have the official names: they load into the base weights of an adapted network.
    loadable = BaseWeights(net) if m.lora is not None else net
    apply_dtypes(net)
    fsdp_config = fsdp["fsdp"]
    mp_policy = create_mixed_precision_policy(Precision(cfg.precision), fsdp_config.mixed_precision)
    apply_fsdp(net, mp_policy, fsdp_config.reshard_after_forward, fsdp_config.device_mesh)
    if cfg.context_parallel_size > 1:
        apply_context_parallel(net, context_parallel_groups(cfg.context_parallel_size))
    if m.compile_blocks:
        apply_compile(net)
    materialize_(net, training_device())
    if inputs.weights:
        load_consolidated_into_network(loadable, inputs.weights, **load)
        if m.lora is not None:
            init_adapters_(net)
    elif initial is not None:
        load_network_weights(net, initial, "the fresh initialisation")
        if inputs.base:
            load_base_into_network(loadable, **base)
    else:
        for tensor in net.state_dict().values():  # Composer's checkpoint load overwrites every one
            tensor.detach().zero_()
    return net


def _fresh_weights(m: DictConfig, overrides: dict) -> dict[str, torch.Tensor]:
    """A fresh network's weights, whole, drawn from the seeded RNG (with its adapters under LoRA)."""
    net = build_network(m.preset, **overrides)
    if m.lora is not None:
        apply_lora(net, m.lora)
    return net.state_dict()


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


def build_model(cfg: DictConfig, inputs: RunInputs) -> CosmosTransferModel:
    m = cfg.model
    net = build_training_network(cfg, inputs)
    vae, text = build_encoders(inputs.vae, inputs.text, training_device())
    return CosmosTransferModel(
        net,
        objective=ObjectiveConfig.from_model_config(m),
        use_ema=m.use_ema,
        train_base=m.train_base,
        control_key=m.control_key,
        vae=vae,
        text_embedder=text,
    )


# ----------------------------------------------------------------------------- trainer
def build_parallelism(cfg: DictConfig) -> Optional[dict]:
    """Composer's parallelism config ({"fsdp": FSDP2Config}) for the network section above; None for one process."""
    fsdp = fsdp2_config(cfg)
    return None if fsdp is None else {"fsdp": fsdp}


def build_trainer(cfg: DictConfig) -> Trainer:
    """The Trainer of a config loaded by `load_config`: every check that needs no model first, then the model."""
    silence_known_warnings()
    apply_gpu_memory_cap(cfg.gpu_memory_cap_gib)
    # Cheap checks first: a missing dataset, W&B credentials or a missing file fail before the model is built.
    plan = plan_run(cfg, dist.get_world_size(), has_gpu=torch.cuda.is_available())
    loggers = build_loggers(cfg, plan)
    lock_run_folder(plan.locked_folder)  # before anything reads or writes the checkpoints
    inputs = resolve_inputs(cfg, plan.save_folder)
    if inputs.resumes:
        silence_resume_warnings()
    write_run_config(cfg, plan)

    # Seed before the model is built, so a fresh run's initial weights are reproducible too.
    reproducibility.seed_all(cfg.seed)
    model = build_model(cfg, inputs)
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
    # Composer loads load_path and the autoresume checkpoint here: never with a full unpickler.
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
                *build_callbacks(cfg, plan, describe_model(cfg), describe_start(cfg, inputs)),
            ],
            loggers=loggers,
            save_folder=plan.save_folder,
            save_interval=cfg.save_interval,
            save_num_checkpoints_to_keep=cfg.save_num_checkpoints_to_keep,
            save_overwrite=cfg.save_overwrite,
            autoresume=cfg.autoresume and plan.save_folder is not None,
            load_path=inputs.composer_checkpoint,
            seed=cfg.seed,
            progress_bar=cfg.progress_bar,
            log_to_console=cfg.log_to_console,
            dist_timeout=cfg.dist_timeout,
        )
    # After Composer's checkpoint saver: writes network.json and sums what it has just written.
    CheckpointChecksums.attach(trainer, cfg.model.preset)
    return trainer
