"""A run's setup before its model is built: the input files resolved and checked, the run folder locked, the
autoresume checkpoint chosen and the run compared with it, the GPU memory cap, and the config as it ran written
to the run folder."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from composer.core import Time, TimeUnit
from composer.utils import dist
from omegaconf import DictConfig, OmegaConf

from .checkpoint.autoresume import ResumePlan, RunAlreadyComplete, plan_resume, point_latest_link
from .checkpoint.composer_checkpoint import why_not_intact
from .checkpoint.hf import HfResolveError, resolve
from .checkpoint.integrity import ChecksumMismatch, verify_checksums
from .checkpoint.load import CheckpointLoadError, is_composer_checkpoint
from .checkpoint.network_config import NetworkConfigError, find_network_config
from .checkpoint.object_store import ObjectStoreError, check_reachable, download_checkpoint, is_object_store
from .checkpoint.run_record import (
    ResumeRefused,
    RunRecord,
    compare_with_checkpoint,
    dataset_index_sha256,
    read_run_record,
    refusal_message,
)
from .checkpoint.safe_pickle import UnsafePickleError
from .config import ConfigError, run_folder
from .config_file import write_json_or_yaml
from .models.lora import LoraSettings
from .run_lock import RunFolderInUse, acquire_run_lock
from .run_plan import RunPlan

STORE_DOWNLOAD = "checkpoint_download"  # <run folder>/<this>/: where a store's checkpoint is copied to resume from


# ----------------------------------------------------------------------------- inputs
@dataclass
class RunInputs:
    """Every file the run reads, resolved to a local path (hf:// URIs are in the HF cache by then)."""

    weights: Optional[str] = None  # a consolidated .pt to start from (`load_path`)
    composer_checkpoint: Optional[str] = None  # a Composer checkpoint to start from (`load_path`)
    base: Optional[str] = None  # a Predict2.5 checkpoint whose base DiT starts the run (`base_load_path`)
    resume_from: Optional[Path] = None  # the autoresume checkpoint in save_folder (a local copy of a store's)
    downloaded: bool = False  # resume_from is a download from an object store: removed once Composer loaded it
    resumed_run: Optional[RunRecord] = None  # its run.json (None: it has none)
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


def resolve_inputs(cfg: DictConfig, save_folder: Optional[str], plan: Optional[RunPlan] = None) -> RunInputs:
    """Resolve and check every input file before anything heavy is built: a missing file fails in seconds.

    With the run's `plan`, autoresume takes only checkpoints of the run's layout and the run is compared with
    the checkpoint it resumes from (`check_resume`). Downloads (hf://) happen here, on every rank
    (huggingface_hub downloads each file once under a lock).
    """
    if is_object_store(save_folder):  # a missing bucket or missing credentials: now, not after the model is built
        _decided_on_rank_zero(
            lambda: check_reachable(save_folder, may_hold_checkpoints=cfg.autoresume or cfg.save_overwrite),
            ObjectStoreError,
            "save_folder: ",
        )
    resume = ResumePlan()
    if cfg.autoresume and save_folder is not None:
        sharded = None if plan is None else writes_sharded_checkpoints(plan)
        resume = plan_autoresume(save_folder, run_folder(cfg) / STORE_DOWNLOAD, sharded)
    check_not_complete(cfg, resume, save_folder)
    inputs = RunInputs(resume_from=resume.checkpoint, downloaded=is_object_store(save_folder))
    if inputs.resumes and plan is not None:
        inputs.resumed_run = check_resume(cfg, plan, inputs.resume_from)
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


def describe_start(cfg: DictConfig, inputs: RunInputs) -> str:
    """Where the run starts from, for the summary line."""
    if inputs.resumes:
        return f"resumed from {inputs.resume_from.name}"
    if inputs.composer_checkpoint or inputs.weights:
        return f"started from {cfg.load_path}"
    if inputs.base:
        return f"started from the base {cfg.base_load_path}"
    return "started fresh"


# ----------------------------------------------------------------------------- lock and autoresume
class ConfigErrorOnEveryRank(ConfigError):
    """A config error that every rank raises alike (decided on global rank 0, or a function of the config and the
    world size): train.py prints it once."""


class AutoresumeError(ConfigErrorOnEveryRank):
    """A problem with the checkpoints in save_folder that autoresume found (a checkpoint error, not the config's)."""


def _decided_on_rank_zero(
    decide,
    refusal: type[Exception] | tuple[type[Exception], ...],
    prefix: str = "",
    raises: type[ConfigErrorOnEveryRank] = ConfigErrorOnEveryRank,
):
    """Run `decide()` on global rank 0 only and hand its result to every rank.

    A `refusal` raised there becomes a `raises` error on every rank (so no rank waits for the others forever);
    a refused resume (ResumeRefused) becomes an AutoresumeError, a `checkpoint error`.
    """
    outcome: list = [None, None, False]  # (result, refusal message, whether it refused a resume)
    if dist.get_global_rank() == 0:
        try:
            outcome = [decide(), None, False]
        except refusal as error:
            outcome = [None, str(error), isinstance(error, ResumeRefused)]
    dist.broadcast_object_list(outcome, src=0)
    if outcome[1] is not None:
        raise (AutoresumeError if outcome[2] else raises)(prefix + outcome[1])
    return outcome[0]


def lock_run_folder(folder: str) -> None:
    """Global rank 0 locks the run's checkpoint folder for the run (see run_lock.py); every rank learns the outcome."""

    def lock() -> None:
        note = acquire_run_lock(folder)
        if note:
            print(f"run lock: {note}", flush=True)

    _decided_on_rank_zero(lock, RunFolderInUse)


def plan_autoresume(save_folder: str, download_to: Path, sharded: Optional[bool] = None) -> ResumePlan:
    """Global rank 0 finds the newest intact checkpoint (of the run's layout: `sharded`, None: either) and points
    Composer's link at it; every rank learns it.

    An object-store save_folder's checkpoint is downloaded into `download_to` (and verified) by global rank 0,
    and then by the first rank of every other node that does not see that copy (no shared filesystem)."""
    store = is_object_store(save_folder)

    def plan() -> ResumePlan:
        resume = plan_resume(save_folder, download_to, sharded)
        if not store:
            point_latest_link(Path(save_folder), resume)
        print(resume.describe(save_folder), flush=True)
        return resume

    resume = _decided_on_rank_zero(plan, (RuntimeError, UnsafePickleError), "autoresume: ", AutoresumeError)
    if store and resume.checkpoint is not None:
        _download_on_every_node(f"{save_folder.rstrip('/')}/{resume.checkpoint.name}", resume.checkpoint)
    return resume


def _download_on_every_node(uri: str, local: Path) -> None:
    """The first rank of each node makes sure `local` is an intact copy of `uri`; a failure stops every rank."""
    problem = None
    first_on_other_node = dist.get_local_rank() == 0 and dist.get_global_rank() != 0  # rank 0 has just verified it
    if first_on_other_node and why_not_intact(local, verify=True) is not None:
        try:
            download_checkpoint(uri, local.parent, progress=False)
        except ObjectStoreError as error:
            problem = str(error)
    problems = [found for found in dist.all_gather_object(problem) if found]
    if problems:
        raise AutoresumeError(f"autoresume: {problems[0]}")


def remove_download(inputs: RunInputs) -> None:
    """Remove the local copy of an object-store checkpoint once Composer has loaded it (every rank calls this)."""
    if not (inputs.downloaded and inputs.resumes):
        return
    dist.barrier()
    if dist.get_local_rank() == 0:
        shutil.rmtree(inputs.resume_from.parent, ignore_errors=True)


def check_not_complete(cfg: DictConfig, resume: ResumePlan, save_folder: Optional[str]) -> None:
    """A finished run that is run again stops at once, saying how to go on (exit 0 in train.py).

    For a max_duration in batches or epochs: the epochs finished are in the checkpoint's run.json (a save after
    an epoch's last batch but before its end finished it too), else in its name (`ep{E}`)."""
    duration = Time.from_timestring(str(cfg.max_duration))
    if resume.checkpoint is None:
        return
    if duration.unit == TimeUnit.BATCH and resume.batch >= duration.value:
        where = f"batch {resume.batch}"
    elif duration.unit == TimeUnit.EPOCH:
        recorded = read_run_record(resume.checkpoint)
        epochs = resume.epoch if recorded is None else max(resume.epoch, recorded.finished_epochs)
        if epochs < duration.value:
            return
        where = f"epoch {epochs} (batch {resume.batch})"
    else:
        return
    raise RunAlreadyComplete(
        f"run {cfg.run_name!r} is already complete at {where} ({resume.checkpoint}); to train further raise "
        f"max_duration, to start over use a new run_name or delete {save_folder}"
    )


# ----------------------------------------------------------------------------- the run against its checkpoint
def writes_sharded_checkpoints(plan: RunPlan) -> bool:
    """Whether the run saves sharded checkpoint folders (FSDP2 with sharded state dicts), not single files."""
    return plan.fsdp is not None and plan.fsdp.state_dict_type == "sharded"


def run_record_of(cfg: DictConfig, plan: RunPlan) -> RunRecord:
    """What this run's checkpoints record in run.json (checkpoint/run_record.py), at position 0."""
    dataset = cfg.train_loader.dataset
    return RunRecord(
        train_base=bool(cfg.model.train_base),
        cameras=tuple(plan.network.view_cameras) if plan.network.is_multiview else None,
        context_parallel_size=plan.context_parallel_size,
        world_size=plan.world_size,
        data_parallel_size=plan.data_parallel_size,
        global_train_batch_size=cfg.global_train_batch_size,
        sharded=writes_sharded_checkpoints(plan),
        dataset_index_sha256=dataset_index_sha256(Path(dataset.local, dataset.split or "")),
    )


def check_resume(cfg: DictConfig, plan: RunPlan, checkpoint: Path) -> Optional[RunRecord]:
    """Compare the run with the checkpoint it resumes from (its network.json and run.json), on global rank 0,
    before the model is built: a change the checkpoint's state cannot follow is a ResumeRefused naming each
    changed key; the changes it follows, and what it does not record, are said in one line each.
    Returns the checkpoint's run record (None: it has none), on every rank."""
    lora = None if cfg.model.lora is None else LoraSettings.of(cfg.model.lora).as_dict()

    def compare() -> Optional[RunRecord]:
        try:
            recorded_network = find_network_config(checkpoint)
        except NetworkConfigError as error:
            raise ResumeRefused(str(error)) from None
        recorded_run = read_run_record(checkpoint)
        changes = compare_with_checkpoint(
            recorded_network, recorded_run, cfg.model.preset, plan.network, lora, run_record_of(cfg, plan)
        )
        if changes.refused:
            raise ResumeRefused(refusal_message(checkpoint, changes.refused))
        if changes.followed:
            print(f"resume: changed since {checkpoint.name}, followed: {'; '.join(changes.followed)}", flush=True)
        if changes.unchecked:
            print(f"resume: {checkpoint.name} does not record {'; '.join(changes.unchecked)}: not checked", flush=True)
        return recorded_run

    return _decided_on_rank_zero(compare, ResumeRefused)


# ----------------------------------------------------------------------------- the process and the run folder
def apply_gpu_memory_cap(cap_gib: Optional[float]) -> None:
    """Cap this process's CUDA memory, so that a larger GPU stands in for a smaller one (80 GB on an H200)."""
    if cap_gib is None or not torch.cuda.is_available():
        return
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    if cap_gib * 2**30 > total:
        raise ConfigError(f"gpu_memory_cap_gib={cap_gib} is more than this GPU's {total / 2**30:.1f} GiB")
    torch.cuda.set_per_process_memory_fraction(cap_gib * 2**30 / total)


def write_run_config(cfg: DictConfig, plan: RunPlan) -> None:
    """The run's config as it ran (defaults, YAML and overrides) into <run folder>/config.yaml (global rank 0)."""
    if dist.get_global_rank() == 0:
        write_json_or_yaml(plan.run_folder / "config.yaml", OmegaConf.to_container(cfg, resolve=True))
