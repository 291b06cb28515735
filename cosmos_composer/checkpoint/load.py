"""Read the weights of any checkpoint, and load consolidated `.pt` checkpoints in the official formats into our
network, strictly.

Reading (`read_checkpoint_state`): a consolidated `.pt`, an hf:// URI of one, or a Composer checkpoint folder
(`composer_checkpoint.py` finds the newest intact one and reads its model state; a LoRA run's adapters are
merged). Generation (`network_weights.py`), export and `base_load_path` read through it.

Formats (the official `scripts/convert_distcp_to_pt.py` writes them):
- EMA-only files (`*_ema_bf16.pt` of the release, `model_ema_fp32.pt`, `model_ema_bf16.pt`): every key
  under `net.` (the EMA weights renamed), in bf16 or fp32.
- `model.pt`: `net.*` (training weights) and `net_ema.*`. Training starts from `net.*`, as upstream
  (`create_model_from_consolidated_checkpoint_with_fsdp` in `_src/predict2/utils/model_loader.py`): `net_ema.*`
  is ignored (and reported), because the EMA restarts from the loaded net.

Rules:
- Strict by default. The known non-parameter entries of the released files are skipped unless the
  network has them (`keys.is_non_parameter`: `_extra_state`, `accum_*`, the RoPE buffers).
  Every other key must be a tensor of the network with the same shape; a key missing from the file, a
  key the network lacks (`unexpected`), or a shape mismatch raises `CheckpointLoadError` with the full
  report (each shape mismatch names the key, the file's shape and the network's shape).
- `strict=False` (YAML `load_strict: false`) loads the matching keys, keeps the network's initial
  values for missing keys, and prints every key it dropped or left at init. Shape mismatches still
  raise, unless `allow_shape_mismatch=True` (YAML `load_allow_shape_mismatch: true`) also drops those,
  printing each with both shapes.
- A tensor with NaN or Inf values is refused, by key (each FSDP2 rank checks its own rows; the ranks agree).
- Nothing is copied unless the whole check passes, so a refused file leaves the network untouched.
- Values are cast to the network's dtype (a bf16 file into fp32 parameters is exact).
- A file with a `network.json` (an export's, `checkpoint/network_config.py`) must have been saved from the
  network it is loaded into: a differing field (say `rope_t_extrapolation_ratio`, which no shape shows) is an
  error naming it, a warning with `strict=False`.

Reading: `torch.load(weights_only=True, mmap=True)`. `weights_only` never runs pickled code: a file
holding any pickled object other than tensors and plain containers is refused, naming the file and
the offending type; a file that is not a flat `{str: tensor}` dict is refused too. (A file in torch's
legacy non-zip format cannot be memory-mapped; it is read with `weights_only=True` and without mmap.)

Memory, per rank and per node: with FSDP2 the network is built on the meta device and sharded before this
loader runs (`models/parallelize.py`), so every parameter is a DTensor whose local shard is all a rank
allocates. With `mmap=True`, `torch.load` maps the file read-only and builds tensors that point into the
mapping; each rank copies only its own rows of each tensor (`copy_full_into_`, casting on the fly), so it
faults in only its part of the file, and the pages live once per node in the OS page cache. No rank
holds a full copy of the model or of the file.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from ..models.dtensor import copy_full_into_, local_slice
from ..models.lora import merged_weights
from ..models.network import CONTROL_BRANCH_PREFIXES
from .composer_checkpoint import (
    CheckpointReadError,
    find_checkpoint,
    lora_settings,
    model_state_metadata,
    read_composer_model_state,
)
from .hf import resolve
from .integrity import ChecksumMismatch, verify_checksums
from .keys import (
    EMA_WEIGHTS,
    NET_PREFIX,
    NETWORK_PREFIXES,
    TRAINING_WEIGHTS,
    has_ema,
    is_non_parameter,
    prefix_of_weights,
    under_prefix,
)
from .network_config import NetworkConfigError, check_matches_recorded, find_network_config
from .safe_pickle import METADATA_FILE, UnsafePickleError, load_weights_only
from .view_rows import (
    VIEW_EMBEDDING_KEY,
    VIEW_ROW_FIELDS,
    ViewRowError,
    changed_origins,
    file_view_cameras,
    match_view_rows,
)

log = logging.getLogger(__name__)


class CheckpointLoadError(RuntimeError):
    pass


@dataclass
class LoadReport:
    source: str
    loaded: list[str] = field(default_factory=list)
    skipped_non_parameters: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # the other network of a model.pt (net_ema.*)
    missing: list[str] = field(default_factory=list)  # in the network, not in the file: left at init
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the network: dropped
    shape_mismatches: dict[str, tuple[tuple, tuple]] = field(default_factory=dict)  # key: (file, network)
    strict: bool = True
    allow_shape_mismatch: bool = False
    matched: int = 0  # tensors whose key and shape match the network (all loaded unless the load is refused)
    view_rows: Optional[str] = None  # how the view-embedding rows were matched to another rig (view_rows.py)

    @property
    def dropped(self) -> list[str]:
        """Keys of the file that were not loaded although they could be parameters."""
        return [*self.unexpected, *self.shape_mismatches]

    @property
    def partial(self) -> bool:
        return bool(self.missing or self.unexpected or self.shape_mismatches)

    def summary(self, limit: Optional[int] = None) -> str:
        """The report; `limit` shortens each key list (None lists every key)."""
        if self.loaded or not self.matched:
            lines = [f"{self.source}: loaded {len(self.loaded)} tensors into the network"]
        else:
            lines = [f"{self.source}: {self.matched} tensors match the network (nothing was loaded)"]
        if self.view_rows:
            lines.append(f"  {self.view_rows}")
        if self.skipped_non_parameters:
            lines.append(
                f"  skipped {len(self.skipped_non_parameters)} non-parameter entries (_extra_state, accum_*, RoPE buffers)"
            )
        if self.ignored:
            lines.append(
                f"  ignored {len(self.ignored)} '{self.ignored[0].split('.', 1)[0]}.*' entries: training starts from "
                "'net.*' and the EMA restarts from it"
            )
        if self.missing:
            lines.append(
                f"  {len(self.missing)} network keys missing from the file (left at their initial values): "
                + _listing(self.missing, limit)
            )
        if self.unexpected:
            lines.append(
                f"  {len(self.unexpected)} file keys not in the network (dropped): " + _listing(self.unexpected, limit)
            )
        mismatches = list(self.shape_mismatches.items())
        shown = mismatches if limit is None else mismatches[:limit]
        for key, (in_file, in_net) in shown:
            lines.append(f"  shape mismatch {key}: file {list(in_file)} vs network {list(in_net)}")
        if len(shown) < len(mismatches):
            lines.append(f"  ... (+{len(mismatches) - len(shown)} more shape mismatches)")
        return "\n".join(lines)


def _listing(keys: list[str], limit: Optional[int]) -> str:
    if limit is None or len(keys) <= limit:
        return ", ".join(keys)
    return ", ".join(keys[:limit]) + f", ... (+{len(keys) - limit} more)"


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The file's flat tensor dict, read safely (weights_only) and lazily (mmap)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointLoadError(
            f"{path} is a folder; a consolidated checkpoint is a single .pt file (a Composer sharded checkpoint "
            "folder is resumed by Composer, not by this loader)"
        )
    if not path.is_file():
        raise CheckpointLoadError(f"Checkpoint {path} does not exist")
    mmap = zipfile.is_zipfile(path)  # torch's default format since 1.6; the legacy format cannot be mapped
    if not mmap:
        with open(path, "rb") as f:
            if f.read(1) != b"\x80":  # torch's legacy format is a pickle stream (protocol >= 2)
                raise CheckpointLoadError(
                    f"{path} is not a readable torch checkpoint (neither torch's zip format nor its legacy format)"
                )
        log.warning("%s is not in torch's zip format; reading it without mmap (one copy per rank)", path)
    try:  # an exported file is checked against the checksums.json written beside it
        verify_checksums(path.parent, only=[path.name])
    except ChecksumMismatch as error:
        raise CheckpointLoadError(f"{error}. Fix: export or download it again") from None
    try:
        state = load_weights_only(path, str(path), mmap=mmap)
    except UnsafePickleError as error:
        raise CheckpointLoadError(
            f"{error}. Checkpoints are read with weights_only=True. An official consolidated checkpoint is a plain "
            "dict of tensors; re-save yours as {name: tensor}."
        ) from None
    except Exception as error:  # noqa: BLE001 - torch raises RuntimeError, KeyError, EOFError... on garbage
        raise CheckpointLoadError(
            f"{path} is not a readable torch checkpoint ({type(error).__name__}: {str(error)[:300]})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointLoadError(
            f"{path} holds a {type(state).__name__}, not a dict of tensors (an official consolidated .pt file)"
        )
    for key, value in state.items():
        if isinstance(key, str) and is_non_parameter(key) and not isinstance(value, (dict, list, tuple)):
            continue  # e.g. an `_extra_state` saved as None or bytes: skipped at load anyway
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointLoadError(
                f"{path} is not a flat dict of tensors (an official consolidated .pt file): entry {key!r} is of type "
                f"{type(value).__name__}"
                + (" (a nested state dict? pass a file whose keys are 'net.*')" if isinstance(value, dict) else "")
            )
    return state


def is_composer_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is a Composer checkpoint (resumed by Composer) rather than a consolidated weights file.

    Decided by content, never by name: a folder holding a DCP `.metadata` index, or a torch file whose
    top level is Composer's `{"state": ..., "rng": ...}`. Reading the file's top level is safe (weights_only)
    and cheap (memory-mapped). Anything else raises CheckpointLoadError saying what `load_path` accepts.
    """
    path = Path(path)
    if path.is_dir():
        if (path / METADATA_FILE).is_file():
            return True
        raise CheckpointLoadError(
            f"{path} is a folder without a {METADATA_FILE} index: neither a Composer sharded checkpoint folder "
            "(ep<E>-ba<B>/ holding .metadata and .distcp files) nor a consolidated .pt file"
        )
    if not zipfile.is_zipfile(path):
        return False  # the legacy format: read_state_dict decides
    try:
        top = load_weights_only(path, str(path), mmap=True)
    except UnsafePickleError as error:
        raise CheckpointLoadError(str(error)) from None
    except Exception as error:  # noqa: BLE001 - torch raises many types on garbage
        raise CheckpointLoadError(
            f"{path} is not a readable torch checkpoint ({type(error).__name__}: {error})"
        ) from None
    return isinstance(top, dict) and set(top) >= {"state", "rng"}


def split_consolidated(
    state: dict[str, torch.Tensor], source: str, prefix: str = NET_PREFIX
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """(the `prefix` entries with the prefix removed, the other network's keys, keys of neither network).

    `prefix="net."` (training) takes `net.*` and ignores the `net_ema.*` of a model.pt; `prefix="net_ema."`
    takes the EMA of a model.pt (for generation).
    """
    weights = under_prefix(state, prefix)
    ignored = [key for key in state if key.startswith(NETWORK_PREFIXES) and not key.startswith(prefix)]
    foreign = [key for key in state if not key.startswith(NETWORK_PREFIXES)]
    if not weights:
        has = sorted({k.split(".", 1)[0] + "." for k in state if "." in k})
        raise CheckpointLoadError(
            f"{source} has no '{prefix}*' keys (its key prefixes: {has[:8]}, first keys: {list(state)[:5]}); expected "
            "an official consolidated checkpoint (model.pt, model_ema_*.pt or a released *_ema_bf16.pt)"
        )
    return weights, ignored, foreign


# ----------------------------------------------------------------------------- any checkpoint -> its flat state
_WHAT_TO_PASS = (
    "Fix: pass an official consolidated checkpoint (model.pt, model_ema_*.pt or a released *_ema_bf16.pt), or a "
    "Composer checkpoint folder (export a Composer .pt with scripts/export_checkpoint.py)"
)


def local_checkpoint(checkpoint: str | os.PathLike, flag: str = "--checkpoint") -> Path:
    """The consolidated file, or the Composer checkpoint folder (checked against its checksums), to read.

    ``flag`` names where the checkpoint was given, in messages."""
    source = str(checkpoint)
    local = Path(resolve(source))
    if not local.exists():
        raise CheckpointLoadError(
            f"{flag} {source} does not exist. Fix: give a .pt file, an hf:// URI or a checkpoint folder"
        )
    if not local.is_dir():  # is_dir: also the latest-rank0.pt link of a sharded checkpoint
        return local
    try:
        return find_checkpoint(local, verify=True)
    except CheckpointReadError as error:
        raise CheckpointLoadError(f"{flag} {source}: {error}") from None


def read_local_state(local: Path, weights: str, source: str, flag: str = "--checkpoint") -> dict[str, torch.Tensor]:
    """The flat state of `local` (from `local_checkpoint`): a consolidated file whole, or the one network of a
    Composer checkpoint that ``weights`` asks for, a LoRA run's adapters merged into its official keys."""
    if local.is_dir():
        try:
            prefix = prefix_of_weights(model_state_metadata(local), weights)
            if weights == EMA_WEIGHTS and prefix == NET_PREFIX:
                log.warning("%s has no net_ema.* (trained without EMA): using net.*", local)
            state = read_composer_model_state(local, prefixes=(prefix,))
            lora = lora_settings(local, state)
            return state if lora is None else merged_weights(state, lora)
        except (ValueError, RuntimeError, OSError) as error:  # CheckpointReadError, a refused pickle, a torch error
            raise CheckpointLoadError(f"{flag} {source}: {error}") from None
    try:
        return read_state_dict(local)
    except CheckpointLoadError as error:
        raise CheckpointLoadError(f"{flag} {source}: {error}. {_WHAT_TO_PASS}") from None


def read_checkpoint_state(
    checkpoint: str | os.PathLike, weights: str = EMA_WEIGHTS, flag: str = "--checkpoint"
) -> dict[str, torch.Tensor]:
    """The flat ``net.*`` / ``net_ema.*`` tensors of a consolidated ``.pt``, an hf:// URI of one, or a
    Composer checkpoint folder. From a Composer checkpoint only the network that ``weights`` asks for is read
    (``net_ema.*``, or ``net.*`` when the run had no EMA). ``flag`` names where the checkpoint was given, in
    messages."""
    return read_local_state(local_checkpoint(checkpoint, flag), weights, str(checkpoint), flag)


def select_network_weights(
    state: dict[str, torch.Tensor], weights: str = EMA_WEIGHTS, source: str = "checkpoint"
) -> tuple[dict[str, torch.Tensor], str]:
    """Pick one network's weights (prefix removed) and say which prefix they came from (see
    ``keys.prefix_of_weights``)."""
    try:
        prefix = prefix_of_weights(state, weights)
    except ValueError as error:
        raise CheckpointLoadError(str(error)) from None
    selected = under_prefix(state, prefix)
    if not selected:
        raise CheckpointLoadError(f"{source} has no '{prefix}*' keys (first keys: {list(state)[:5]}). {_WHAT_TO_PASS}")
    if weights == TRAINING_WEIGHTS and not has_ema(state):
        log.warning("%s holds a single set of weights (no net_ema.*): using its net.* weights", source)
    return selected, prefix


@torch.no_grad()
def load_network_weights(
    net: nn.Module,
    weights: dict[str, torch.Tensor],
    source: str,
    strict: bool = True,
    allow_shape_mismatch: bool = False,
    unexpected: Iterable[str] = (),
    ignored: Iterable[str] = (),
) -> LoadReport:
    """Copy `weights` (keys without `net.`) into `net`; see the module docstring for the rules.

    `unexpected`: further keys of the file (full names) that belong to no network; they count as unexpected.
    `ignored`: keys deliberately not loaded (the `net_ema.*` of a model.pt), only reported.
    Raises CheckpointLoadError, with the report, before copying anything if the load is refused.
    """
    report = LoadReport(source=source, strict=strict, allow_shape_mismatch=allow_shape_mismatch)
    report.ignored = list(ignored)
    params = net.state_dict(keep_vars=True)
    to_copy: list[tuple[str, torch.Tensor]] = []
    for key, tensor in weights.items():
        if not isinstance(tensor, torch.Tensor):  # only non-parameter entries may be (read_state_dict)
            report.skipped_non_parameters.append(key)
        elif key in params:
            target = params[key]
            if tuple(tensor.shape) != tuple(target.shape):
                report.shape_mismatches[key] = (tuple(tensor.shape), tuple(target.shape))
            elif tensor.is_floating_point() != target.is_floating_point():
                raise CheckpointLoadError(
                    f"{source}: {key} is {tensor.dtype} in the file but {target.dtype} in the network"
                )
            else:
                to_copy.append((key, tensor))
        elif is_non_parameter(key):
            report.skipped_non_parameters.append(key)
        else:
            report.unexpected.append(key)
    for key in unexpected:
        (report.skipped_non_parameters if is_non_parameter(key) else report.unexpected).append(key)
    report.missing = [k for k in params if k not in weights]
    report.matched = len(to_copy)

    problems = []
    non_finite = _non_finite_keys(params, to_copy)
    if non_finite:
        problems.append(
            f"{len(non_finite)} tensors hold NaN or Inf values ({_listing(non_finite, 20)}); the file is corrupt or "
            "comes from a diverged run"
        )
    if report.shape_mismatches and not allow_shape_mismatch:
        problems.append(
            f"{len(report.shape_mismatches)} shape mismatches (load_allow_shape_mismatch=true drops them instead)"
        )
    if strict and (report.missing or report.unexpected):
        problems.append(
            f"{len(report.missing)} missing and {len(report.unexpected)} unexpected keys "
            "(load_strict=false loads the matching keys and drops the rest)"
        )
    if problems:
        raise CheckpointLoadError(
            f"Checkpoint {source} does not match the network: {'; '.join(problems)}.\n{report.summary(limit=20)}"
        )
    for key, tensor in to_copy:
        # Casts to the parameter's dtype and reads straight from the mapped file; an FSDP2 shard takes
        # only its own rows, so a rank touches only its part of the file.
        copy_full_into_(params[key], tensor)
        report.loaded.append(key)
    return report


def _non_finite_keys(params: dict, to_copy: list[tuple[str, torch.Tensor]]) -> list[str]:
    """Keys whose values (this rank's rows of them, for FSDP2 shards) are not all finite, agreed by all ranks."""
    bad = [
        key for key, tensor in to_copy
        if tensor.is_floating_point() and not tensor.is_meta  # shape-only loads have no values
        and not bool(torch.isfinite(local_slice(params[key], tensor)).all())
    ]  # fmt: skip
    sharded = any(isinstance(p, DTensor) for p in params.values())
    if sharded and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, bad)
        bad = sorted({key for rank_bad in gathered for key in rank_bad})
    return bad


def _announce(report: LoadReport) -> None:
    """Print the report once (global rank 0); a partial load lists every key it dropped or left at init."""
    if int(os.environ.get("RANK", "0")) != 0:
        log.debug(report.summary(limit=20))
        return
    text = report.summary(limit=None if report.partial else 20)
    print(("PARTIAL LOAD: " if report.partial else "") + text, flush=True)


def load_consolidated_into_network(
    net: nn.Module,
    path_or_uri: str | os.PathLike,
    strict: bool = True,
    allow_shape_mismatch: bool = False,
    prefix: str = NET_PREFIX,
    announce: bool = True,
    source: Optional[str] = None,
) -> LoadReport:
    """Load an official consolidated checkpoint (a path or hf:// URI) into a bare or FSDP2-sharded network.

    `source` names the file in the report (default: `path_or_uri`), e.g. the URI a resolved path came from.
    A `network.json` beside the file must describe `net` (see the module docstring).
    """
    source = source or str(path_or_uri)
    path = resolve(path_or_uri)
    recorded_cameras: tuple[str, ...] = ()
    recorded_origins: dict[str, str] = {}
    if hasattr(net, "config"):  # our network (tests also load into plain modules)
        try:
            config, recorded = net.config, find_network_config(path)
            if recorded is not None and recorded.config.is_multiview and config.is_multiview:
                # Another rig's weights: its cameras may differ; the rows are matched by name below.
                config = dataclasses.replace(config, **{f: getattr(recorded.config, f) for f in VIEW_ROW_FIELDS})
                recorded_cameras, recorded_origins = recorded.config.view_cameras, dict(recorded.config.camera_origins)
            check_matches_recorded(config, path, strict=strict)
        except NetworkConfigError as error:
            raise CheckpointLoadError(str(error)) from None
    state = read_state_dict(path)
    weights, ignored, foreign = split_consolidated(state, source, prefix)
    view_rows = None
    if getattr(getattr(net, "config", None), "is_multiview", False):
        file_cameras = file_view_cameras(weights, recorded_cameras) if VIEW_EMBEDDING_KEY in weights else ()
        network_origins = dict(net.config.camera_origins)
        try:
            weights, view_rows = match_view_rows(
                weights,
                file_cameras,
                net.config.view_cameras,
                tuple(net.state_dict()[VIEW_EMBEDDING_KEY].shape),
                source,
                network_origins,
            )
        except ViewRowError as error:
            raise CheckpointLoadError(str(error)) from None
        changed = changed_origins(recorded_origins, network_origins, file_cameras, net.config.view_cameras)
        if changed:
            log.warning(
                "%s: these cameras start from another official camera than in the file's network.json (camera_origins), "
                "so their rows get another caption prefix than they were trained with: %s. Fix: list them in "
                "train_loader.dataset.cameras as when the file was trained (name=official)",
                source,
                "; ".join(changed),
            )
    report = load_network_weights(
        net,
        weights,
        source,
        strict=strict,
        allow_shape_mismatch=allow_shape_mismatch,
        unexpected=foreign,
        ignored=ignored,
    )
    report.view_rows = view_rows.summary() if view_rows else None
    del state, weights  # unmaps the file
    if announce:
        _announce(report)
    return report


def load_consolidated_into_model(
    model: nn.Module, path_or_uri: str | os.PathLike, strict: bool = True, allow_shape_mismatch: bool = False
) -> LoadReport:
    """Load an official consolidated checkpoint (or hf:// URI) into `model.net`; restart the EMA from it.

    As upstream (`model_loader.py`, see the module docstring), `model.net_ema` becomes an exact copy of the loaded `model.net`,
    whatever the file's `net_ema.*` holds.
    """
    report = load_consolidated_into_network(
        model.net, path_or_uri, strict=strict, allow_shape_mismatch=allow_shape_mismatch, announce=False
    )
    if getattr(model, "net_ema", None) is not None:
        model.net_ema.load_state_dict(model.net.state_dict())
    _announce(report)
    return report


# ----------------------------------------------------------------------------- a Predict2.5 base (base_load_path)
def _base_key_problems(
    params: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], foreign: list[str]
) -> tuple[list[str], list[str]]:
    """(the file's control-branch keys, every other reason the file is not exactly the network's base DiT)."""
    base = {key: tensor for key, tensor in params.items() if not key.startswith(CONTROL_BRANCH_PREFIXES)}
    in_file = {key: tensor for key, tensor in weights.items() if not is_non_parameter(key)}
    control = sorted(key for key in in_file if key.startswith(CONTROL_BRANCH_PREFIXES))
    missing = [key for key in base if key not in in_file]
    unexpected = [key for key in in_file if key not in base and key not in control]
    unexpected += [key for key in foreign if not is_non_parameter(key)]
    mismatched = [
        f"{key}: file {list(in_file[key].shape)} vs network {list(base[key].shape)}"
        for key in base
        if key in in_file and tuple(in_file[key].shape) != tuple(base[key].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} base keys of the network are missing from the file: {_listing(missing, 20)}")
    if unexpected:
        problems.append(f"{len(unexpected)} keys are not in the network's base DiT: {_listing(unexpected, 20)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {_listing(mismatched, 20)}")
    return control, problems


@torch.no_grad()
def load_base_into_network(
    net: nn.Module, path_or_uri: str | os.PathLike, source: Optional[str] = None, weights: str = EMA_WEIGHTS
) -> LoadReport:
    """Start a Transfer network from a Predict2.5 checkpoint: its base DiT loaded strictly, the control branch
    initialised from it as a new Transfer training does.

    The file: a consolidated `.pt` (an EMA-only file, or a `model.pt` with `net.*` and `net_ema.*`), an hf:// URI
    of one, or a Composer checkpoint folder (`network_weights.read_checkpoint_state`). `weights="ema"` takes the
    EMA when the file has one, as upstream's `load_base_model` loads `net_ema` into `net`
    (`transfer2/models/vid2vid_model_control_vace_rectified_flow.py`). Strict: every base key (every parameter
    outside `CONTROL_BRANCH_PREFIXES`) with the network's shape, nothing else but the non-parameter entries of
    `keys.is_non_parameter`. A file that holds a control branch is a Transfer checkpoint and is refused (it
    belongs in `load_path`, which loads the whole network): taking only its base would silently throw its
    trained control branch away. Nothing is copied unless the check passes.

    Then `init_control_branch_from_base`: control block i = base block i (upstream's "first_n"
    `copy_weights_to_control_branch`), `before_proj`/`after_proj` zero; `control_embedder` and
    `input_hint_block` keep their fresh initialisation (upstream's `init_weights`: trunc-normal).
    """
    source = source or str(path_or_uri)
    try:
        state = read_checkpoint_state(path_or_uri, weights)
        base, prefix = select_network_weights(state, weights, source)
    except CheckpointLoadError as error:
        raise CheckpointLoadError(f"base_load_path={source}: {error}") from None
    ignored = [key for key in state if key.startswith(NETWORK_PREFIXES) and not key.startswith(prefix)]
    foreign = [key for key in state if not key.startswith(NETWORK_PREFIXES)]
    params = net.state_dict(keep_vars=True)
    control, problems = _base_key_problems(params, base, foreign)
    if control:
        raise CheckpointLoadError(
            f"base_load_path={source} holds a control branch ({len(control)} keys: {_listing(control, 5)}): it is a "
            "Transfer2.5 checkpoint, not a Predict2.5 base. Fix: pass it as load_path (it starts the whole network "
            "from the file) and set base_load_path=null"
        )
    if problems:
        raise CheckpointLoadError(
            f"base_load_path={source} ({prefix}*) is not the base DiT of this network: {'; '.join(problems)}. Fix: "
            "pass a Predict2.5 checkpoint of the size model.preset / model.overrides describe"
        )
    # The keys and shapes are checked: this checks the values (NaN / Inf) and copies. The control branch is
    # not in the file, so it is "missing" here and initialised next.
    report = load_network_weights(net, base, f"{source} ({prefix}*)", strict=False, ignored=ignored)
    del state, base  # unmaps the file
    net.init_control_branch_from_base()
    if int(os.environ.get("RANK", "0")) == 0:
        blocks = list(range(len(net.control_blocks)))
        fresh = [name for name in ("control_embedder", "input_hint_block") if hasattr(net, name)]
        print(
            f"base: {source} ({prefix}*) loaded strictly ({len(report.loaded)} tensors"
            + (f"; {len(ignored)} '{ignored[0].split('.', 1)[0]}.*' entries ignored" if ignored else "")
            + f"); control branch initialised from base blocks {blocks} (VACE init: control block i = base block i, "
            f"before_proj/after_proj zero; {' and '.join(fresh)} freshly initialised)",
            flush=True,
        )
    return report
