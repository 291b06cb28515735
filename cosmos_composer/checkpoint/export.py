"""Export a Composer sharded checkpoint to the official consolidated formats, and to diffusers for single view.

Training writes Distributed Checkpoint (DCP) folders: `<run>/checkpoints/ep{E}-ba{B}/` with one
`__{rank}_0.distcp` per rank and a `.metadata` index, plus a `latest-rank0.pt` link to the newest one.
The model state is stored under `state.model.`: `net.*` (the training weights) and `net_ema.*` (the power
EMA). `composer_checkpoint.py` finds the checkpoint (the newest intact one of a folder) and reads only those
entries, on a CPU, without a process group; this module writes what the official
`scripts/convert_distcp_to_pt.py` writes:

==================== ============================================================================
`model.pt`           the model state as saved: `net.*` and `net_ema.*`
`model_ema_fp32.pt`  the EMA weights renamed `net_ema.` -> `net.`, in fp32
`model_ema_bf16.pt`  the same in bf16 (non-float tensors unchanged): the file inference uses
`network.json`       the network config (`checkpoint/network_config.py`), beside every export
==================== ============================================================================

Dtypes. Upstream trains with bf16 parameters and an fp32 EMA, so its `model.pt` holds `net.*` in bf16: the
converter saves the DCP contents unchanged. We do the same (no cast), and since Composer keeps fp32 master
weights under mixed precision, our `model.pt` holds `net.*` in fp32 too: lossless, and what
`load_path: model.pt` needs to continue training from exactly these weights. The two EMA files are cast
as their names say.

`--format diffusers` (single view only; diffusers has no multiview model) writes `transformer/` and
`controlnet/` folders that diffusers 0.38.0 loads with `from_pretrained`, from the EMA weights by default.

LoRA (`model.lora`, models/lora.py). A LoRA run's checkpoint holds PEFT's names (`<module>.base_layer.weight`,
`<module>.lora_A/B.default.weight`) and its network.json the LoRA settings. By default every adapter is merged
into its official key, `W + (alpha / rank) * B @ A` (fp32), so the files hold exactly the released keys and the
official inference loads them; `merge_lora=False` (`--no-merge`) writes the base weights unmerged instead. Both
also write `lora_adapter/` with the adapters alone as PEFT saves them (`adapter_model.safetensors`,
`adapter_config.json`; the EMA's, or the training weights' with `weights="net"`), which PEFT's
`PeftModel.from_pretrained` / `set_peft_model_state_dict` load onto the plain network.

The network config (needed to verify the files, to write the diffusers configs and written as the export's
`network.json`) is the checkpoint's own `network.json`, which training saves into every checkpoint. A
checkpoint without one (written before it existed) takes `preset` + `overrides` (`--preset`, `--set
key=value`), or, when those are not given, the preset whose network has exactly the checkpoint's parameter
names and shapes (read from `.metadata`, no tensor loaded; `network_config.resolve_checkpoint_network`); that inference cannot see the settings that
change no shape (RoPE extrapolation ratios, `timestep_scale`, maximum sizes). The log says which was used.

Verification reloads every written file (`weights_only=True`), checks that it holds exactly the expected
tensors (names, dtypes, bits), loads it strictly into a fresh network and compares a forward pass with the
network holding the weights read from the checkpoint (identical output required). The diffusers folders are
loaded with `from_pretrained`, their tensors compared bit for bit, and their velocity compared with ours
(relative error below 1e-5; the two implementations differ in float rounding only).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from tqdm import tqdm

from ..data.output import make_partial_dir, reporting_full_disk
from ..latent_geometry import SPATIAL_COMPRESSION
from ..models import NetworkConfig
from ..models.lora import (
    LoraSettings,
    merged_weights,
    official_weights,
    peft_adapter_state,
    write_peft_adapter,
)
from .composer_checkpoint import (
    CheckpointReadError,
    TensorInfo,
    enclosing_checkpoint_folder,
    find_checkpoint,
    lora_settings,
    model_state_metadata,
    prefix_summary,
    read_composer_model_state,
)
from .diffusers_format import diffusers_velocity, save_diffusers, set_qk_norm_eps, to_diffusers
from .integrity import CHECKSUMS_FILE, checksums_path, digests_of, write_checksums
from .keys import (
    EMA_PREFIX,
    EMA_WEIGHTS,
    NET_PREFIX,
    check_weights_choice,
    has_ema,
    is_non_parameter,
    prefix_of_weights,
    under_prefix,
)
from .load import CheckpointLoadError, load_network_weights, read_state_dict
from .network_config import (
    NETWORK_FILE,
    NetworkConfigError,
    ResolvedNetwork,
    config_differences,
    read_network_config,
    resolve_checkpoint_network,
    write_network_config,
)
from .object_store import ObjectStoreError, download_checkpoint, is_object_store
from .pin import CheckpointGoneError, pinned_checkpoint

log = logging.getLogger(__name__)

__all__ = [
    "OFFICIAL",
    "DIFFUSERS",
    "FORMATS",
    "MODEL_PT",
    "MODEL_EMA_FP32",
    "MODEL_EMA_BF16",
    "OFFICIAL_FILES",
    "DIFFUSERS_FOLDERS",
    "ExportError",
    "VerificationError",
    "ExportResult",
    "ema_state_dict",
    "official_state_dicts",
    "network_weights",
    "example_inputs",
    "export",
    "verify_export",
]

OFFICIAL = "official"
DIFFUSERS = "diffusers"
FORMATS = (OFFICIAL, DIFFUSERS)

MODEL_PT = "model.pt"
MODEL_EMA_FP32 = "model_ema_fp32.pt"
MODEL_EMA_BF16 = "model_ema_bf16.pt"
OFFICIAL_FILES = (MODEL_PT, MODEL_EMA_FP32, MODEL_EMA_BF16)
DIFFUSERS_FOLDERS = ("transformer", "controlnet")
LORA_ADAPTER_FOLDER = "lora_adapter"  # PEFT's adapter_model.safetensors + adapter_config.json of a LoRA run
# Every name an export writes into its folder (besides checksums.json): what a later export may replace or remove.
EXPORT_ENTRIES = (NETWORK_FILE, *OFFICIAL_FILES, *DIFFUSERS_FOLDERS, LORA_ADAPTER_FOLDER)

# Relative velocity error allowed between diffusers and our network (float rounding only; measured <= 7e-7 in
# tests/test_network_diffusers_parity.py).
DIFFUSERS_RELATIVE_TOLERANCE = 1e-5
# Tries to pin the newest checkpoint of a live run, each after a rotation deleted the one found before.
_PIN_ATTEMPTS = 3


class ExportError(RuntimeError):
    """The checkpoint cannot be exported as asked; the message names the file and the fix."""


class VerificationError(ExportError):
    """A written file does not hold exactly the checkpoint's weights."""


# ---------------------------------------------------------------------------------------------------------------
# The official files (pure functions: they work on meta tensors too)
# ---------------------------------------------------------------------------------------------------------------


def _cast(tensor: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.Tensor:
    """Floating-point tensors to `dtype` (no copy when already there); integer buffers unchanged."""
    if dtype is None or not tensor.is_floating_point():
        return tensor
    return tensor.to(dtype)


def ema_state_dict(model_state: Mapping[str, torch.Tensor], dtype: Optional[torch.dtype]) -> dict[str, torch.Tensor]:
    """The EMA weights under `net.` (renamed from `net_ema.`), floats cast to `dtype`: model_ema_*.pt."""
    _require_ema(model_state)
    return {NET_PREFIX + key: _cast(value, dtype) for key, value in under_prefix(model_state, EMA_PREFIX).items()}


def _require_ema(keys: Iterable[str]) -> None:
    keys = list(keys)
    if not has_ema(keys):
        raise ExportError(
            f"The model state has no EMA weights ({EMA_PREFIX}* keys; it has {prefix_summary(keys)}), and the "
            "official inference files are EMA weights. Train with model.use_ema=true (the default) and the "
            "power_ema callback, or export the training weights to diffusers (format diffusers, weights net)."
        )


def official_state_dicts(model_state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """`{file name: state dict}` of the three official files, from the model state (`net.*`, `net_ema.*`).

    Nothing is written; on meta tensors this gives the files' keys, shapes and dtypes.
    """
    if not any(key.startswith(NET_PREFIX) for key in model_state):
        raise ExportError(f"The model state has no '{NET_PREFIX}*' keys (it has {prefix_summary(model_state)})")
    return {
        MODEL_PT: dict(model_state),  # as saved, like upstream's dcp_to_torch_save
        MODEL_EMA_FP32: ema_state_dict(model_state, torch.float32),
        MODEL_EMA_BF16: ema_state_dict(model_state, torch.bfloat16),
    }


def network_weights(model_state: Mapping[str, torch.Tensor], weights: str = EMA_WEIGHTS) -> dict[str, torch.Tensor]:
    """One network's weights without prefix: the EMA (`weights="ema"`) or the training weights ("net")."""
    prefix = prefix_of_weights(model_state, weights)
    out = under_prefix(model_state, prefix)
    if not out:
        raise ExportError(
            f"The model state has no '{prefix}*' keys (it has {prefix_summary(model_state)}); "
            f"choose weights={'net' if weights == 'ema' else 'ema'!r}"
        )
    return out


# ---------------------------------------------------------------------------------------------------------------
# Which network the weights belong to (checkpoint/network_config.py)
# ---------------------------------------------------------------------------------------------------------------


def _network_shapes(metadata: Mapping[str, TensorInfo]) -> dict[str, tuple[int, ...]]:
    """`{key: shape}` of one network in the model state (`net.*`, or `net_ema.*` when there is no `net.*`), for
    `network_config.resolve_checkpoint_network`."""
    for prefix in (NET_PREFIX, EMA_PREFIX):
        shapes = {key: info.shape for key, info in under_prefix(metadata, prefix).items() if not is_non_parameter(key)}
        if shapes:
            return shapes
    raise ExportError(f"The model state holds no network ({prefix_summary(metadata)})")


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------


def _torch_save(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """A flat dict of tensors, as the official files are (readable with weights_only=True)."""
    with open(path, "wb") as f:
        torch.save(dict(state), f)
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def _export_set(out_dir: Path, source: Union[str, Path]) -> Iterator[Path]:
    """Yield a staging folder beside `out_dir`; on success its files replace theirs in `out_dir` as one set.

    The staged files get a `checksums.json` (naming the checkpoint they came from). Publishing removes the old
    set's checksums first and puts the new one in last, so a reader (generate, load_path) never takes files of
    two exports for one: a kill during the few renames leaves a folder without checksums, which it reports.
    A failed or killed export leaves `out_dir` as it was; its staging folder is removed (by the next export
    when it was killed).
    """
    staging = make_partial_dir(out_dir)
    try:
        yield staging
        names = [str(path.relative_to(staging)) for path in sorted(staging.rglob("*")) if path.is_file()]
        write_checksums(staging, digests_of(staging, names), source=str(source))
        _publish(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(staging: Path, out_dir: Path) -> None:
    """Move the staged set into `out_dir`, then remove what earlier exports wrote that this one does not
    (`_earlier_export_entries`), so `out_dir` holds exactly this export's files; other files are kept."""
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    new_entries = sorted(staging.iterdir(), key=lambda path: path.name == CHECKSUMS_FILE)  # checksums last
    stale = _earlier_export_entries(out_dir) - {entry.name for entry in new_entries}
    (out_dir / CHECKSUMS_FILE).unlink(missing_ok=True)
    for entry in new_entries:
        if entry.name == CHECKSUMS_FILE:
            for name in sorted(stale):  # before the new checksums: a reader never sees them beside stale files
                _remove(out_dir / name)
        destination = out_dir / entry.name
        previous = out_dir / f".{entry.name}.old-{os.getpid()}"
        if entry.is_dir() and destination.exists():
            os.replace(destination, previous)  # a folder (diffusers) cannot be replaced in one rename
        os.replace(entry, destination)
        shutil.rmtree(previous, ignore_errors=True)


def _earlier_export_entries(out_dir: Path) -> set[str]:
    """The names in `out_dir` that earlier exports wrote: the top-level entries its checksums.json lists (an
    export's own, naming its source) and the names this module writes (an export killed while publishing
    leaves no checksums). A user's other files are not among them."""
    listed: set[str] = set()
    try:
        manifest = json.loads((out_dir / CHECKSUMS_FILE).read_text())
        if "source" in manifest:  # an export's checksums (a checkpoint's name no source)
            listed = {Path(name).parts[0] for name in manifest["files"]}
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        pass  # none or unreadable: the known names below still go
    return {name for name in listed | set(EXPORT_ENTRIES) if (out_dir / name).exists() and name != CHECKSUMS_FILE}


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------------------------


def example_inputs(config: NetworkConfig, seed: int = 0) -> dict[str, Any]:
    """A small random input for `net(**inputs)` that exercises every module of `config`'s network.

    Two latent frames (multiview: two views of `state_t` frames), 2x2 tokens, raw text embeddings (through
    `crossattn_proj`), image context when the network has it, control latents, a conditioning mask.
    """
    generator = torch.Generator().manual_seed(seed)
    T = 2 * config.state_t if config.is_multiview else 2
    H = W = 2 * config.patch_spatial
    text_width = config.crossattn_proj_in_channels if config.use_crossattn_projection else config.crossattn_emb_channels
    inputs = dict(
        x_B_C_T_H_W=torch.randn(1, config.in_channels, T, H, W, generator=generator),
        timesteps_B_T=torch.rand(1, 1, generator=generator) * 1000,
        crossattn_emb=torch.randn(1, 4, text_width, generator=generator),
        latent_control_input=torch.randn(1, config.in_channels, T, H, W, generator=generator),
        condition_video_input_mask_B_C_T_H_W=(torch.arange(T) < 1).float().view(1, 1, T, 1, 1).expand(1, 1, T, H, W),
        padding_mask=torch.zeros(1, 1, SPATIAL_COMPRESSION * H, SPATIAL_COMPRESSION * W),
    )
    if config.extra_image_context_dim is not None:
        inputs["img_context_emb"] = torch.randn(1, 4, config.extra_image_context_dim, generator=generator)
    return inputs


def _compare_tensors(
    found: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str, limit: int = 5
) -> None:
    """`found` must hold exactly `expected`: the same keys, dtypes, shapes and bits."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    problems = []
    if missing:
        problems.append(f"{len(missing)} keys missing: {', '.join(missing[:limit])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {', '.join(unexpected[:limit])}")
    for key in expected:
        if key not in found:
            continue
        have, want = found[key], expected[key]
        if have.dtype != want.dtype or have.shape != want.shape:
            problems.append(f"{key}: {have.dtype} {list(have.shape)} instead of {want.dtype} {list(want.shape)}")
        elif not torch.equal(have, want):
            differing = (have != want).sum().item()
            max_diff = (have.double() - want.double()).abs().max().item()
            problems.append(f"{key}: {differing} of {want.numel()} values differ (max |diff| {max_diff:.3g})")
        if len(problems) >= limit:
            problems.append("...")
            break
    if problems:
        raise VerificationError(
            f"{source} does not hold the checkpoint's weights:\n  "
            + "\n  ".join(problems)
            + "\nRe-run the export (the file may have been modified or truncated)."
        )


class _ForwardCheck:
    """Strict load into one fresh network + a forward pass, compared with the checkpoint's weights' output."""

    def __init__(self, network: ResolvedNetwork):
        self.network = network
        self.net = network.build_empty()
        self.inputs = example_inputs(network.config)
        self._reference_outputs: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def output(self, weights: Mapping[str, torch.Tensor], source: str) -> torch.Tensor:
        try:
            load_network_weights(self.net, dict(weights), source, strict=True)
        except CheckpointLoadError as error:
            raise VerificationError(
                f"{source} does not load strictly into a fresh network ({self.network.describe()}):\n{error}"
            ) from None
        return self.net(**self.inputs)

    def reference(self, tag: str, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if tag not in self._reference_outputs:
            self._reference_outputs[tag] = self.output(weights, f"checkpoint weights ({tag})")
        return self._reference_outputs[tag]

    def check(
        self, tag: str, expected: Mapping[str, torch.Tensor], file_weights: Mapping[str, torch.Tensor], source: str
    ) -> None:
        reference = self.reference(tag, expected)
        output = self.output(file_weights, source)
        loaded = self.net.state_dict()
        _compare_tensors(loaded, {k: v.to(loaded[k].dtype) for k, v in expected.items()}, f"{source} (loaded)")
        if not torch.equal(output, reference):
            max_diff = (output - reference).abs().max().item()
            raise VerificationError(
                f"{source}: the forward pass differs from the checkpoint's (max |diff| {max_diff:.3g})"
            )


def _verify_network_file(out_dir: Path, network: ResolvedNetwork) -> None:
    """The export's network.json records the checkpoint's network."""
    try:
        recorded = read_network_config(out_dir / NETWORK_FILE)
    except NetworkConfigError as error:
        raise VerificationError(f"{error}. Re-run the export") from None
    differences = config_differences(recorded.config, network.config, str(recorded.path), "the checkpoint")
    if differences:
        raise VerificationError(f"{recorded.path} records another network: " + "; ".join(differences))


def _verify_official(
    out_dir: Path,
    expected_files: Mapping[str, Mapping[str, torch.Tensor]],
    network: ResolvedNetwork,
    progress: bool,
) -> None:
    forward = _ForwardCheck(network)
    for name in tqdm(list(expected_files), desc="verify", unit="file", disable=not progress):
        path = out_dir / name
        try:
            found = read_state_dict(path)  # weights_only=True
        except CheckpointLoadError as error:
            raise VerificationError(str(error)) from None
        expected = expected_files[name]
        _compare_tensors(found, expected, str(path))
        # The weights a loader takes from each file: model.pt carries two networks.
        halves = [(NET_PREFIX, "net" if name == MODEL_PT else f"ema-{name}")]
        if name == MODEL_PT and has_ema(found):
            halves.append((EMA_PREFIX, f"ema-{MODEL_EMA_FP32}"))
        for prefix, tag in halves:
            forward.check(tag, under_prefix(expected, prefix), under_prefix(found, prefix), f"{path} ({prefix}*)")
    log.info("verified %s", ", ".join(expected_files))


def _verify_diffusers(
    out_dir: Path, weights: Mapping[str, torch.Tensor], network: ResolvedNetwork, dtype: Optional[torch.dtype]
) -> float:
    """Bit-exact tensors in both folders and the velocity of diffusers vs ours; returns the relative error."""
    from diffusers import CosmosControlNetModel, CosmosTransformer3DModel  # optional and heavy: for diffusers only
    from safetensors.torch import load_file

    weights = {key: _cast(value, dtype) for key, value in weights.items()}
    converted = to_diffusers(weights, network.config)
    models = []
    for name, cls, expected in (
        ("transformer", CosmosTransformer3DModel, converted.transformer_state_dict),
        ("controlnet", CosmosControlNetModel, converted.controlnet_state_dict),
    ):
        folder = out_dir / name
        weights_file = folder / "diffusion_pytorch_model.safetensors"
        if not weights_file.is_file():
            raise VerificationError(f"{weights_file} is missing; re-run the export with format diffusers")
        _compare_tensors(load_file(str(weights_file)), expected, str(weights_file))
        try:
            model = cls.from_pretrained(str(folder), torch_dtype=torch.float32)
        except Exception as error:
            raise VerificationError(f"diffusers cannot load {folder} with from_pretrained: {error}") from None
        set_qk_norm_eps(model)  # diffusers builds q/k norms with eps 1e-5; the original uses 1e-6
        models.append(model.eval())
    transformer, controlnet = models

    forward = _ForwardCheck(network)
    inputs = forward.inputs
    with torch.no_grad():
        ours = forward.output(weights, "exported weights")
        theirs = diffusers_velocity(transformer, controlnet, **inputs)
    error = ((theirs - ours).norm() / ours.norm()).item()
    if not error <= DIFFUSERS_RELATIVE_TOLERANCE:
        raise VerificationError(
            f"{out_dir}: the diffusers velocity differs from our network's by {error:.3g} (relative), more than "
            f"{DIFFUSERS_RELATIVE_TOLERANCE:g}: the diffusers config does not describe the network "
            f"({network.describe()}); pass the run's --preset and --set"
        )
    return error


# ---------------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ExportResult:
    checkpoint: Path
    out_dir: Path
    written: list[Path]
    network: ResolvedNetwork
    verified: bool = False
    diffusers_relative_error: Optional[float] = None
    source: Optional[str] = None  # where `checkpoint` was downloaded from (an object store), else None


def _formats(formats: Union[str, Sequence[str]]) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = [formats]
    chosen = []
    for name in formats:
        for fmt in FORMATS if name == "all" else [name]:
            if fmt not in FORMATS:
                raise ExportError(f"Unknown export format {fmt!r}; choose from {[*FORMATS, 'all']}")
            if fmt not in chosen:
                chosen.append(fmt)
    if not chosen:
        raise ExportError("No export format given")
    return tuple(chosen)


@dataclass
class _Plan:
    """What an export reads and writes, settled before a tensor is read."""

    checkpoint_dir: Path  # the checkpoint, as messages name it
    pinned_dir: Path  # where its files are read: a pin (checkpoint/pin.py) or the checkpoint itself
    formats: tuple[str, ...]
    network: ResolvedNetwork
    prefixes: tuple[str, ...]  # the model-state entries to read
    lora: Optional[LoraSettings]


def _check_out_dir(out_dir: Path, checkpoint: Union[str, os.PathLike]) -> None:
    """Refuse an output folder that is, or lies inside, a checkpoint folder (this one or any other): the export's
    checksums.json and network.json would replace the checkpoint's, and it could not be read again."""
    enclosing = enclosing_checkpoint_folder(out_dir)
    if enclosing is not None:
        relation = "is" if enclosing == out_dir.resolve() else "is inside"
        raise ExportError(
            f"OUT_DIR {out_dir} {relation} the checkpoint folder {enclosing} (exporting {checkpoint}); an export "
            f"there would replace the checkpoint's {CHECKSUMS_FILE} and {NETWORK_FILE}. Fix: choose an OUT_DIR "
            "outside every checkpoint folder, e.g. <run>/exported"
        )


@contextlib.contextmanager
def _planned(
    checkpoint: Union[str, os.PathLike],
    formats: Union[str, Sequence[str]],
    preset: Optional[str],
    overrides: Optional[Mapping[str, Any]],
    weights: str,
    require_checksums: bool = False,
) -> Iterator[_Plan]:
    """The plan of an export of `checkpoint`, read from a pin of it (`checkpoint/pin.py`) held while the block runs.

    A checkpoint that a run's rotation deletes before it is pinned is looked for again (a checkpoints folder or
    link then gives the next newest); a named one is an error. `require_checksums`: refuse a checkpoint
    without checksums.json (--verify without --no-checksums).
    """
    formats = _formats(formats)
    try:
        check_weights_choice(weights)
    except ValueError as error:
        raise ExportError(str(error)) from None
    for attempt in range(_PIN_ATTEMPTS):
        with _as_export_error():
            if require_checksums:  # first the cheap pick (no hashing), to refuse before the reader warns
                _check_has_checksums(find_checkpoint(checkpoint))
            checkpoint_dir = find_checkpoint(checkpoint, verify=True)
        if require_checksums:
            _check_has_checksums(checkpoint_dir)  # an older one, when the newest failed its checks
        try:
            with pinned_checkpoint(checkpoint_dir) as pinned_dir:
                with _as_export_error(pinned_dir, checkpoint_dir):
                    plan = _plan(checkpoint_dir, pinned_dir, formats, preset, overrides, weights)
                yield plan
                return
        except CheckpointGoneError as error:
            if attempt + 1 == _PIN_ATTEMPTS or Path(checkpoint).name == checkpoint_dir.name:  # named: no other
                raise ExportError(
                    f"{error} while the export pinned it (a run's save_num_checkpoints_to_keep rotation?). "
                    "Fix: pass a newer checkpoint, or the run's checkpoints folder to take the newest"
                ) from None
            log.warning("%s; taking the newest checkpoint again", error)


def _check_has_checksums(checkpoint_dir: Path) -> None:
    if not checksums_path(checkpoint_dir).is_file():
        raise ExportError(
            f"{checkpoint_dir} has no {CHECKSUMS_FILE}, so --verify cannot tell that its files (its "
            f"{NETWORK_FILE} included) are the ones its save wrote. Fix: pass --no-checksums to export it "
            "unverified against its save (the written files are still checked), or export a checkpoint "
            "saved with checksums"
        )


def _plan(
    checkpoint_dir: Path,
    pinned_dir: Path,
    formats: tuple[str, ...],
    preset: Optional[str],
    overrides: Optional[Mapping[str, Any]],
    weights: str,
) -> _Plan:
    """Everything that can fail before a tensor is read: network config, EMA presence, the LoRA settings of a
    checkpoint with adapters (read from `pinned_dir`)."""
    metadata = model_state_metadata(pinned_dir)
    lora = lora_settings(pinned_dir, metadata)
    if lora is not None:
        metadata = official_weights(metadata)  # the network's own keys, for the network config
    network = resolve_checkpoint_network(
        checkpoint_dir, _network_shapes(metadata), preset, overrides, read_from=pinned_dir
    )
    if DIFFUSERS in formats and network.config.is_multiview:
        raise ExportError(
            f"{checkpoint_dir} holds a multiview network ({network.preset}), and diffusers has no multiview "
            "Cosmos-Transfer2.5 model. Export the official formats (--format official) and run them with "
            "the official inference or scripts/generate.py."
        )

    if OFFICIAL in formats or weights == EMA_WEIGHTS:
        _require_ema(metadata)
    # Read what the formats need: both networks for model.pt, one for diffusers alone.
    prefixes = (NET_PREFIX, EMA_PREFIX) if OFFICIAL in formats else (prefix_of_weights(metadata, weights),)
    return _Plan(checkpoint_dir, pinned_dir, formats, network, prefixes, lora)


@contextlib.contextmanager
def _as_export_error(pinned_dir: Optional[Path] = None, checkpoint_dir: Optional[Path] = None) -> Iterator[None]:
    """The checkpoint reader's and the network resolver's errors, raised as ExportError (same message, naming
    the checkpoint where it named its pin)."""
    try:
        yield
    except (CheckpointReadError, NetworkConfigError) as error:
        message = str(error)
        if pinned_dir is not None and pinned_dir != checkpoint_dir:
            message = message.replace(str(pinned_dir), str(checkpoint_dir))
        raise ExportError(message) from None


def _read_model_state(plan: _Plan, progress: bool) -> dict[str, torch.Tensor]:
    with _as_export_error(plan.pinned_dir, plan.checkpoint_dir):
        return read_composer_model_state(plan.pinned_dir, plan.prefixes, progress=progress)


def _without_adapters(model_state: dict[str, torch.Tensor], lora: Optional[LoraSettings], merge: bool):
    """The model state under the official keys: adapters merged (`merge`) or left out; unchanged without LoRA."""
    if lora is None:
        return model_state
    return merged_weights(model_state, lora) if merge else official_weights(model_state)


def _verify_lora_adapter(folder: Path, expected: Mapping[str, torch.Tensor]) -> None:
    """PEFT itself reads the adapter file back, with exactly the adapter tensors."""
    from peft import load_peft_weights  # optional and heavy: only a LoRA run's export needs it

    try:
        found = load_peft_weights(str(folder), device="cpu")
    except Exception as error:
        raise VerificationError(f"PEFT cannot read the adapter in {folder}: {error}") from None
    _compare_tensors(found, peft_adapter_state(expected), str(folder))


def export(
    checkpoint: Union[str, os.PathLike],
    out_dir: Union[str, os.PathLike],
    formats: Union[str, Sequence[str]] = (OFFICIAL,),
    *,
    preset: Optional[str] = None,
    overrides: Optional[Mapping[str, Any]] = None,
    weights: str = EMA_WEIGHTS,
    diffusers_dtype: Optional[torch.dtype] = None,
    verify: bool = False,
    progress: bool = True,
    merge_lora: bool = True,
    require_checksums: bool = True,
    source: Optional[str] = None,
) -> ExportResult:
    """Export a Composer sharded checkpoint (see the module docstring) and optionally verify what was written.

    formats: "official" (model.pt, model_ema_fp32.pt, model_ema_bf16.pt), "diffusers" (transformer/ and
    controlnet/, single view), or "all". weights: the network the diffusers folders get, "ema" or "net".
    diffusers_dtype: cast the diffusers weights (default: as saved, fp32). preset / overrides: the network
    config of a checkpoint without network.json (inferred from its shapes when omitted); with one, they must
    describe the same network. The files, with network.json, are published as one set (`_export_set`).
    merge_lora: for a LoRA checkpoint, merge the adapters into the files (default) or leave them out; the
    adapters are written alone to `lora_adapter/` either way. require_checksums: with `verify`, refuse a checkpoint
    without checksums.json (False: --no-checksums). `out_dir` may not be or lie inside a checkpoint folder; the
    checkpoint is pinned while it is read (`checkpoint/pin.py`), so a run's rotation cannot fail the export.
    An object-store `checkpoint` (`s3://.../ep<E>-ba<B>`, or the checkpoints prefix for the newest intact one) is
    downloaded beside `out_dir`, verified against its checksums, exported and removed. `source`: what the export's
    checksums.json names as its checkpoint (default: the checkpoint folder read).
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, checkpoint)
    if is_object_store(checkpoint):
        out_dir.parent.mkdir(parents=True, exist_ok=True)  # the download goes on the disk chosen for the export
        with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.download-") as download:
            try:
                local = download_checkpoint(str(checkpoint), Path(download), progress)
            except ObjectStoreError as error:
                raise ExportError(str(error)) from None
            uri = str(checkpoint).rstrip("/")
            settings = dict(preset=preset, overrides=overrides, weights=weights, diffusers_dtype=diffusers_dtype)
            return export(
                local,
                out_dir,
                formats,
                **settings,
                verify=verify,
                progress=progress,
                merge_lora=merge_lora,
                require_checksums=require_checksums,
                source=uri if uri.endswith(local.name) else f"{uri}/{local.name}",
            )
    with _planned(
        checkpoint, formats, preset, overrides, weights, require_checksums=verify and require_checksums
    ) as plan:
        model_state = _read_model_state(plan, progress)  # the pin is released once the tensors are in memory
    checkpoint_dir, formats, network, lora = plan.checkpoint_dir, plan.formats, plan.network, plan.lora
    adapter_weights = network_weights(model_state, weights) if lora is not None else None
    model_state = _without_adapters(model_state, lora, merge_lora)
    result = ExportResult(checkpoint_dir, out_dir, [], network, source=source)

    official_files = official_state_dicts(model_state) if OFFICIAL in formats else {}
    steps = [*official_files, *(["diffusers"] if DIFFUSERS in formats else [])]
    with (
        _export_set(out_dir, source or checkpoint_dir) as staging,
        reporting_full_disk(out_dir, "choose another OUT_DIR"),
    ):
        write_network_config(staging / NETWORK_FILE, network.preset, network.config)
        result.written.append(out_dir / NETWORK_FILE)
        if lora is not None:
            write_peft_adapter(staging / LORA_ADAPTER_FOLDER, adapter_weights, lora)
            result.written.append(out_dir / LORA_ADAPTER_FOLDER)
        with tqdm(steps, desc="write", unit="file", disable=not progress) as bar:
            for step in bar:
                bar.set_postfix_str(step)
                if step in official_files:
                    _torch_save(official_files[step], staging / step)
                    result.written.append(out_dir / step)
                else:
                    save_diffusers(
                        staging, network_weights(model_state, weights), network.config, dtype=diffusers_dtype
                    )
                    result.written += [out_dir / name for name in DIFFUSERS_FOLDERS]

    if verify:
        _verify_network_file(out_dir, network)
        if lora is not None:
            _verify_lora_adapter(out_dir / LORA_ADAPTER_FOLDER, adapter_weights)
        if official_files:
            _verify_official(out_dir, official_files, network, progress)
        if DIFFUSERS in formats:
            result.diffusers_relative_error = _verify_diffusers(
                out_dir, network_weights(model_state, weights), network, diffusers_dtype
            )
        result.verified = True
    return result


def verify_export(
    checkpoint: Union[str, os.PathLike],
    out_dir: Union[str, os.PathLike],
    formats: Union[str, Sequence[str]] = (OFFICIAL,),
    *,
    preset: Optional[str] = None,
    overrides: Optional[Mapping[str, Any]] = None,
    weights: str = EMA_WEIGHTS,
    diffusers_dtype: Optional[torch.dtype] = None,
    progress: bool = True,
    merge_lora: bool = True,
) -> ExportResult:
    """Check files written earlier by `export` (with the same options) against the checkpoint.

    Raises VerificationError naming the file and the first differing keys; see the module docstring.
    """
    with _planned(checkpoint, formats, preset, overrides, weights) as plan:
        model_state = _read_model_state(plan, progress)
    formats, network, lora = plan.formats, plan.network, plan.lora
    out_dir = Path(out_dir)
    result = ExportResult(plan.checkpoint_dir, out_dir, [], network, verified=True)
    _verify_network_file(out_dir, network)
    if lora is not None:
        _verify_lora_adapter(out_dir / LORA_ADAPTER_FOLDER, network_weights(model_state, weights))
        model_state = _without_adapters(model_state, lora, merge_lora)
    if OFFICIAL in formats:
        _verify_official(out_dir, official_state_dicts(model_state), network, progress)
    if DIFFUSERS in formats:
        result.diffusers_relative_error = _verify_diffusers(
            out_dir, network_weights(model_state, weights), network, diffusers_dtype
        )
    return result
