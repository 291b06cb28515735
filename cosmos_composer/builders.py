"""Build everything a training run needs from a validated config (see `config.py`)."""

from __future__ import annotations

import contextlib
import logging
import netrc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from composer import Trainer
from composer.utils import dist, reproducibility
from composer.utils.parallelism import FSDP2Config
from omegaconf import DictConfig, OmegaConf

from .callbacks.checkpoint_checksums import CheckpointChecksums
from .callbacks.nonfinite_loss import NonFiniteLossGuard
from .callbacks.registry import build_callback
from .callbacks.step_seed import StepSeed
from .checkpoint.autoresume import ResumePlan, RunAlreadyComplete, plan_resume, point_latest_link
from .checkpoint.hf import HfResolveError, resolve
from .checkpoint.integrity import ChecksumMismatch, verify_checksums
from .checkpoint.load import CheckpointLoadError, is_composer_checkpoint
from .checkpoint.safe_pickle import UnsafePickleError, composer_loads_safely
from .config import ConfigError, check_precision, network_overrides, run_folder
from .config_file import write_json_or_yaml
from .encoders import build_encoders
from .loggers import JSONLinesLogger, WandBLogger
from .models import CosmosTransferNet, get_config
from .models.composer_model import CosmosTransferModel, ObjectiveConfig
from .models.lora import LoraSettings, lora_of
from .models.lora import describe_counts as describe_lora_counts
from .models.parallelize import composer_keeps_our_sharding
from .models.prepare import WeightSource, prepare_training_network
from .optim import FiniteGradClip, LambdaLinearSchedule, build_optimizer
from .quiet import silence_known_warnings

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- inputs
@dataclass
class RunInputs:
    """Every file the run reads, resolved to a local path (hf:// URIs are in the HF cache by then)."""

    weights: Optional[str] = None  # a consolidated .pt to start from (`load_path`)
    composer_checkpoint: Optional[str] = None  # a Composer checkpoint to start from (`load_path`)
    base: Optional[str] = None  # a Predict2.5 checkpoint whose base DiT starts the run (`base_load_path`)
    resume_from: Optional[Path] = None  # the autoresume checkpoint in save_folder: Composer loads it
    vae: Optional[str] = None  # a path, or "tiny"
    text: Optional[str] = None

    @property
    def resumes(self) -> bool:
        return self.resume_from is not None


def _resolve_key(key: str, value: str) -> str:
    """`value` (a path or hf:// URI) as an existing local path, or a ConfigError naming `key`."""
    try:
        local = resolve(value)
    except HfResolveError as error:
        raise ConfigError(f"{key}={value!r}: {error}") from None
    if not Path(local).exists():
        raise ConfigError(f"{key}={value!r} does not exist; fix the path, or set {key}=null")
    return local


def resolve_inputs(cfg: DictConfig, save_folder: Optional[str]) -> RunInputs:
    """Resolve and check every input file before anything heavy is built: a missing file fails in seconds.

    Downloads (hf://) happen here, on every rank (huggingface_hub downloads each file once under a lock).
    """
    plan = plan_autoresume(save_folder) if cfg.autoresume and save_folder is not None else ResumePlan()
    check_not_complete(cfg, plan, save_folder)
    inputs = RunInputs(resume_from=plan.checkpoint)
    for name in ("vae", "text"):
        value = cfg.encoders[name]
        if value is not None and value != "tiny":
            value = _resolve_key(f"encoders.{name}", value)
        setattr(inputs, name, value)
    if cfg.load_path is not None and not inputs.resumes:  # autoresume wins: never fetch what is not used
        local = _resolve_key("load_path", cfg.load_path)
        try:
            composer_checkpoint = is_composer_checkpoint(local)  # by content: a DCP folder or Composer's file
        except CheckpointLoadError as error:
            raise ConfigError(f"load_path={cfg.load_path!r}: {error}") from None
        if composer_checkpoint:
            _decided_on_rank_zero(lambda: verify_checksums(local), ChecksumMismatch, f"load_path={cfg.load_path!r}: ")
            inputs.composer_checkpoint = local
        else:
            inputs.weights = local  # its checksums (an export's) are verified when it is read
    if cfg.base_load_path is not None:
        # A full Transfer checkpoint (load_path) or the run's own checkpoint (autoresume) holds the base too.
        overridden_by = (
            f"the run resumes from {inputs.resume_from}"
            if inputs.resumes
            else f"load_path={cfg.load_path!r} (a full Transfer checkpoint) wins"
            if cfg.load_path is not None
            else None
        )
        if overridden_by is None:
            inputs.base = _resolve_key("base_load_path", cfg.base_load_path)
        elif dist.get_global_rank() == 0:
            print(f"base_load_path={cfg.base_load_path!r} ignored: {overridden_by}", flush=True)
    return inputs


# ----------------------------------------------------------------------------- model
def training_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def build_training_network(cfg: DictConfig, inputs: RunInputs) -> CosmosTransferNet:
    """The network with its starting weights, laid out for training (`models/prepare.py`, one order for every run).

    Its weights: the consolidated `load_path` file; a fresh initialisation (and then the `base_load_path` base
    DiT, the control branch initialised from it); or none yet when Composer loads a checkpoint next
    (autoresume, or a Composer checkpoint as `load_path`).
    """
    model_cfg = cfg.model
    parallelism = build_parallelism(cfg)
    net = prepare_training_network(
        get_config(model_cfg.preset, **network_overrides(cfg)),  # model.overrides + the rig's camera_names
        lora=None if model_cfg.lora is None else LoraSettings.of(model_cfg.lora),
        train_base=model_cfg.train_base,
        precision=cfg.precision,
        fsdp=None if parallelism is None else parallelism["fsdp"],
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
        context_parallel_size=cfg.context_parallel_size,
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


def build_model(cfg: DictConfig, inputs: RunInputs) -> CosmosTransferModel:
    model_cfg = cfg.model
    net = build_training_network(cfg, inputs)
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


# ----------------------------------------------------------------------------- data
def build_dataloader(
    loader_cfg: DictConfig, batch_size: int, model: CosmosTransferModel, context_parallel_size: int = 1
):
    """`batch_size` samples per rank; a context-parallel group's `context_parallel_size` consecutive ranks get
    the same samples (Streaming's `replication`)."""
    from .data.dataset import TransferStreamingDataset, build_dataloader

    ds = loader_cfg.dataset
    if ds.demo_if_missing:
        ensure_demo_dataset(ds, model.net.config.is_multiview, model.encoders.vae, model.encoders.text_embedder)
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
        use_cached_latents=ds.use_cached_latents,
        use_cached_text=ds.use_cached_text,
        random_control_params=ds.random_control_params,
        augment_seed=ds.augment_seed,
        cameras=ds.cameras,
        shuffle=ds.shuffle,
        shuffle_seed=ds.shuffle_seed,
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
    from .data.shared_memory import release_stale_shared_memory

    if dist.get_local_rank() == 0:
        for loader in (cfg.train_loader, cfg.eval_loader):
            if loader is not None:
                release_stale_shared_memory(loader.dataset.local)
    dist.barrier()


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
            make_demo_dataset(layout=layout, output=raw, cameras=ds.cameras)
        precomputer = None
        if vae is not None or text_embedder is not None:
            # Raw text on purpose: the demo's tiny text embeddings are small, and the network projects them.
            precomputer = Precomputer(
                height=ds.height,
                width=ds.width,
                num_frames=ds.num_frames,
                vae=vae,
                text_embedder=text_embedder,
                raw_text=True,
            )
        convert_to_mds(
            layout=layout,
            input_dir=raw,
            output_dir=ds.local,
            min_frames=ds.num_frames,
            precomputer=precomputer,
            cameras=ds.cameras,
        )
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
    if "jsonl" not in (cfg.loggers or {}):  # every run keeps its metrics beside its checkpoints
        loggers.append(JSONLinesLogger(path=str(run_folder(cfg) / "metrics.jsonl")))
    return loggers


def build_callbacks(cfg: DictConfig, model: str = "", start: str = "") -> list:
    """The YAML's callbacks plus those every run has unless the YAML turns them off (`callbacks.<name>=null`).

    `model` and `start` (what trains, and from where) go into the summary line.
    """
    folder = run_folder(cfg)
    always = {
        "run_summary": {
            "path": str(folder / "summary.json"),
            "folder": str(folder),
            "model": model,
            "start": start,
            "context_parallel_size": cfg.context_parallel_size,
        },
        "loss_plot": {"path": str(folder / "loss.png")},
        "attention_kernel": {},  # the SDPA kernel is chosen, never left to chance
    }
    named = {
        name: None if kwargs is None else OmegaConf.to_container(kwargs)
        for name, kwargs in (cfg.callbacks or {}).items()
    }
    for name, defaults in always.items():
        if name not in named or named[name] is not None:
            named[name] = {**defaults, **(named.get(name) or {})}
    if named.get("sample_videos") is not None:  # samples go into the run folder, beside the run's other files
        named["sample_videos"] = {"output_dir": str(folder / "samples"), **named["sample_videos"]}
    callbacks = []
    for name, kwargs in named.items():
        if kwargs is None:
            continue
        if name == "memory_monitor" and not torch.cuda.is_available():
            log.info("memory_monitor left out: it measures CUDA memory, and this machine has no GPU")
            continue
        callbacks.append(build_callback(name, **kwargs))
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


def check_context_parallel(cfg: DictConfig, world_size: int) -> None:
    """Refuse a context_parallel_size that cannot split the heads, the processes or the sample's latent frames."""
    from .latent_geometry import TEMPORAL_COMPRESSION, latent_num_frames
    from .models.context_parallel import check_context_parallel_size

    size = cfg.context_parallel_size
    config = get_config(cfg.model.preset, **OmegaConf.to_container(cfg.model.overrides))
    try:
        check_context_parallel_size(size, config.num_heads, world_size)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    latent_frames = latent_num_frames(cfg.train_loader.dataset.num_frames)
    if not config.is_multiview and latent_frames % size:  # multiview: views x frames, checked at the first batch
        raise ConfigError(
            f"context_parallel_size={size} does not divide the {latent_frames} latent frames of "
            f"train_loader.dataset.num_frames={cfg.train_loader.dataset.num_frames}; choose num_frames = "
            f"1 + {TEMPORAL_COMPRESSION} k with 1 + k a multiple of {size}"
        )


def apply_gpu_memory_cap(cap_gib: Optional[float]) -> None:
    """Cap this process's CUDA memory, so that a larger GPU stands in for a smaller one (80 GB on an H200)."""
    if cap_gib is None or not torch.cuda.is_available():
        return
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    if cap_gib * 2**30 > total:
        raise ConfigError(f"gpu_memory_cap_gib={cap_gib} is more than this GPU's {total / 2**30:.1f} GiB")
    torch.cuda.set_per_process_memory_fraction(cap_gib * 2**30 / total)


def build_trainer(cfg: DictConfig) -> Trainer:
    apply_gpu_memory_cap(cfg.gpu_memory_cap_gib)
    # Cheap checks first: a missing dataset or file, or W&B credentials, fail before the model is built.
    check_dataset_paths(cfg)
    loggers = build_loggers(cfg)
    check_precision(cfg.precision, torch.cuda.is_available())
    world_size, cp_size = dist.get_world_size(), cfg.context_parallel_size
    check_context_parallel(cfg, world_size)
    data_parallel_size = world_size // cp_size  # groups of ranks with a sample of their own
    if cfg.global_train_batch_size % data_parallel_size:
        raise ConfigError(
            f"global_train_batch_size={cfg.global_train_batch_size} is not divisible by the {data_parallel_size} "
            f"data-parallel groups ({world_size} processes / context_parallel_size={cp_size})"
        )
    batch_size = cfg.global_train_batch_size // data_parallel_size
    checkpoints = cfg.save_interval is not None
    save_folder = (cfg.save_folder or str(run_folder(cfg) / "checkpoints")) if checkpoints else None
    lock_run_folder(save_folder or str(run_folder(cfg)))  # before anything reads or writes the checkpoints
    inputs = resolve_inputs(cfg, save_folder)
    silence_known_warnings(resumed=inputs.resumes)
    if dist.get_global_rank() == 0:  # the run's config as it ran: defaults, YAML and overrides
        write_json_or_yaml(run_folder(cfg) / "config.yaml", OmegaConf.to_container(cfg, resolve=True))

    # Seed before the model is built, so a fresh run's initial weights are reproducible too.
    reproducibility.seed_all(cfg.seed)
    model = build_model(cfg, inputs)
    release_stale_dataset_memory(cfg)
    train_loader = build_dataloader(cfg.train_loader, batch_size, model, cp_size)
    eval_loader = None
    if cfg.eval_loader is not None:
        eval_loader = build_dataloader(cfg.eval_loader, batch_size, model, cp_size)

    optimizer = build_optimizer(model, **OmegaConf.to_container(cfg.optimizer), fused=torch.cuda.is_available())
    scheduler = LambdaLinearSchedule(**OmegaConf.to_container(cfg.scheduler))
    parallelism = build_parallelism(cfg)
    # The model is sharded already (build_training_network): Composer must not shard it again.
    sharding = composer_keeps_our_sharding() if parallelism else contextlib.nullcontext()
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
            parallelism_config=parallelism,
            algorithms=[FiniteGradClip(max_norm=cfg.grad_clip_norm)],
            callbacks=[
                StepSeed(cfg.seed, cp_size),
                NonFiniteLossGuard(cfg.max_nonfinite_steps),
                *build_callbacks(cfg, describe_model(cfg), describe_start(cfg, inputs)),
            ],
            loggers=loggers,
            save_folder=save_folder,
            save_interval=cfg.save_interval,
            save_num_checkpoints_to_keep=cfg.save_num_checkpoints_to_keep,
            save_overwrite=cfg.save_overwrite,
            autoresume=cfg.autoresume and checkpoints,
            load_path=inputs.composer_checkpoint,
            seed=cfg.seed,
            progress_bar=cfg.progress_bar,
            log_to_console=cfg.log_to_console,
            console_log_interval=cfg.console_log_interval,
            dist_timeout=cfg.dist_timeout,
        )
    # After Composer's checkpoint saver: writes network.json and sums what it has just written.
    CheckpointChecksums.attach(trainer, cfg.model.preset)
    return trainer


def describe_model(cfg: DictConfig) -> str:
    """What trains, for the summary line: `tiny-multiview, control branch`."""
    lora = cfg.model.lora
    if lora is not None:
        trains = {"base": "LoRA on the base + control branch", "control": "LoRA on the control branch"}
        return f"{cfg.model.preset}, {trains.get(lora.target, 'LoRA on the base and the control branch')}"
    return f"{cfg.model.preset}, {'all weights' if cfg.model.train_base else 'control branch'}"


def describe_start(cfg: DictConfig, inputs: RunInputs) -> str:
    """Where the run starts from, for the summary line."""
    if inputs.resumes:
        return f"resumed from {inputs.resume_from.name}"
    if inputs.composer_checkpoint or inputs.weights:
        return f"started from {cfg.load_path}"
    if inputs.base:
        return f"started from the base {cfg.base_load_path}"
    return "started fresh"


def _decided_on_rank_zero(decide, refusal: type[Exception] | tuple[type[Exception], ...], prefix: str = ""):
    """Run `decide()` on global rank 0 only and hand its result to every rank.

    A `refusal` raised there becomes a ConfigError on every rank (so no rank waits for the others forever).
    """
    outcome: list = [None, None]  # (result, refusal message)
    if dist.get_global_rank() == 0:
        try:
            outcome = [decide(), None]
        except refusal as error:
            outcome = [None, str(error)]
    dist.broadcast_object_list(outcome, src=0)
    if outcome[1] is not None:
        raise ConfigError(prefix + outcome[1])
    return outcome[0]


def lock_run_folder(folder: str) -> None:
    """Global rank 0 locks the run's checkpoint folder for the run (see run_lock.py); every rank learns the outcome."""
    from .run_lock import RunFolderInUse, acquire_run_lock

    def lock() -> None:
        note = acquire_run_lock(folder)
        if note:
            print(f"run lock: {note}", flush=True)

    _decided_on_rank_zero(lock, RunFolderInUse)


def plan_autoresume(save_folder: str) -> ResumePlan:
    """Global rank 0 finds the newest intact checkpoint and points Composer's link at it; every rank learns it."""

    def plan() -> ResumePlan:
        resume = plan_resume(save_folder)
        point_latest_link(Path(save_folder), resume)
        print(resume.describe(Path(save_folder)), flush=True)
        return resume

    return _decided_on_rank_zero(plan, (RuntimeError, UnsafePickleError), prefix="autoresume: ")


def check_not_complete(cfg: DictConfig, plan: ResumePlan, save_folder: Optional[str]) -> None:
    """A finished run that is run again stops at once, saying how to go on (exit 0 in train.py)."""
    from composer.core import Time, TimeUnit

    duration = Time.from_timestring(str(cfg.max_duration))
    if plan.checkpoint is not None and duration.unit == TimeUnit.BATCH and plan.batch >= duration.value:
        raise RunAlreadyComplete(
            f"run {cfg.run_name!r} is already complete at batch {plan.batch} ({plan.checkpoint}); to train further "
            f"raise max_duration, to start over use a new run_name or delete {save_folder}"
        )
