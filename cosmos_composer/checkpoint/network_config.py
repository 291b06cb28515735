"""`network.json`: the network config that travels with the weights, and which network a checkpoint holds.

Weights alone do not say which network they belong to: settings that change no tensor shape (the RoPE
extrapolation ratios, `timestep_scale`, the maximum sizes, ...) change what the network computes. As diffusers
saves `config.json` beside its weights, every checkpoint and every export gets `network.json`:

    {"format_version": 2, "preset": "tiny-multiview", "config": {<every field of NetworkConfig, after the run's
     overrides>}, "lora": {<the LoRA settings, only for weights that carry adapters>}}

`format_version` (as diffusers stamps `_diffusers_version` in each config) is the version of this layout, written
by every writer (`write_network_config`). A file without it was written before it existed and is read as version
1, the same layout without the field. A file of a newer version than `NETWORK_FORMAT_VERSION` is refused: this
code cannot know what that version changed. Raise the version when the meaning of the document changes (a field
renamed or read differently), and teach `read_network_config` to read the older versions.

Where it is written: inside each Composer checkpoint folder (`ep{E}-ba{B}/network.json`, by the checkpoint
callback before the checksums, so `checksums.json` covers it), beside a single-file checkpoint as
`<name>.network.json`, and in every export folder. Export, generation and `load_path` read it.

The released files carry none. For them (and for checkpoints written before `network.json` existed) the
network is inferred from the parameter names and shapes (`resolve_network`): they must equal exactly those of
one preset's network. That inference cannot see the settings that change no shape, which is why the config is
saved.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ..config_file import atomic_write_text
from ..models import PRESETS, NetworkConfig, build_network, get_config
from ..models.released_keys import RELEASED_VARIANT_OF_PRESET, released_parameter_shapes
from .integrity import ChecksumMismatch, verify_checksums
from .keys import is_non_parameter

log = logging.getLogger(__name__)

NETWORK_FILE = "network.json"
NETWORK_FORMAT_VERSION = 2  # the network.json layout this code writes and the newest it reads (module docstring)
FORMAT_VERSION_KEY = "format_version"
# Fields that change how the network runs, not what it computes: not compared between two configs.
EXECUTION_ONLY_FIELDS = ("activation_checkpointing",)
# Fields whose absence (a file written before they existed) means their default, with nothing to warn about:
# no camera_origins = no camera starts from an official one.
OPTIONAL_FIELDS = ("camera_origins",)


class NetworkConfigError(ValueError):
    """A network.json that cannot be read, or a network config that does not fit the weights."""


# ---------------------------------------------------------------------------------------------------------------
# Writing and reading network.json
# ---------------------------------------------------------------------------------------------------------------


def network_config_path(checkpoint: Union[str, os.PathLike]) -> Path:
    """Where the network config of `checkpoint` (a folder, or a single file) is kept."""
    checkpoint = Path(checkpoint)
    return (
        checkpoint / NETWORK_FILE if checkpoint.is_dir() else checkpoint.with_name(f"{checkpoint.name}.{NETWORK_FILE}")
    )


def network_document(preset: str, config: NetworkConfig, lora: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """`lora`: the LoRA settings of a network whose weights carry adapters (models/lora.py), else left out."""
    return {
        FORMAT_VERSION_KEY: NETWORK_FORMAT_VERSION,
        "preset": preset,
        "config": dataclasses.asdict(config),
        **({"lora": lora} if lora else {}),
    }


def write_network_config(
    path: Union[str, os.PathLike], preset: str, config: NetworkConfig, lora: Optional[dict[str, Any]] = None
) -> Path:
    """Write network.json at `path`, atomically. (Not through `write_json_or_yaml`: its redaction of
    credential-like keys would blank a field whose name contains `token`; a network config holds no secret.)"""
    return atomic_write_text(path, json.dumps(network_document(preset, config, lora), indent=2) + "\n")


@dataclass(frozen=True)
class RecordedNetwork:
    """The content of a network.json."""

    preset: str
    config: NetworkConfig
    path: Path
    lora: Optional[dict[str, Any]] = None  # the LoRA settings of weights that carry adapters (models/lora.py)

    @property
    def overrides(self) -> dict[str, Any]:
        """The fields that differ from the preset's: `build_network(preset, **overrides)` is this network."""
        return _differing_fields(PRESETS[self.preset], self.config, compare_all=True)


def read_network_config(path: Union[str, os.PathLike]) -> RecordedNetwork:
    """Read a network.json (checked against the checksums listed beside it, when they list it)."""
    path = Path(path)
    try:
        verify_checksums(path.parent, only=[path.name])
    except ChecksumMismatch as error:
        raise NetworkConfigError(f"{error}. Fix: export or save the checkpoint again") from None
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise NetworkConfigError(f"{path} is not a readable network.json ({error})") from None
    if isinstance(document, dict):
        _check_format_version(document, path)  # first: a newer layout may not hold what is checked next
    if not isinstance(document, dict) or not isinstance(document.get("config"), dict):
        raise NetworkConfigError(f'{path}: expected {{"preset": <name>, "config": {{<field>: <value>, ...}}}}')
    preset, fields = document.get("preset"), document["config"]
    if preset not in PRESETS:
        raise NetworkConfigError(f"{path}: preset {preset!r} is not one of {sorted(PRESETS)}")
    types = typing.get_type_hints(NetworkConfig)
    unknown = sorted(set(fields) - set(types))
    if unknown:
        raise NetworkConfigError(
            f"{path}: unknown network config field(s) {unknown} (written by a newer cosmos-composer?); "
            f"valid fields are {sorted(types)}"
        )
    for name, value in fields.items():
        if not _has_type(value, types[name]):
            raise NetworkConfigError(f"{path}: {name}={value!r} is not of type {types[name]}")
    missing = sorted(set(types) - set(fields) - set(OPTIONAL_FIELDS))
    if missing:  # a file of an older version: those fields did not exist, so they had the preset's value
        log.warning("%s has no %s: taking the %s preset's values", path, ", ".join(missing), preset)
    try:
        config = dataclasses.replace(PRESETS[preset], **fields)
        config.validate()
    except ValueError as error:
        raise NetworkConfigError(f"{path}: {error}") from None
    return RecordedNetwork(preset, config, path, document.get("lora"))


def _check_format_version(document: Mapping[str, Any], path: Path) -> int:
    """The document's format version (1 when it has none: written before versions existed); a newer version
    than this code reads is refused."""
    version = document.get(FORMAT_VERSION_KEY, 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise NetworkConfigError(f"{path}: {FORMAT_VERSION_KEY}={version!r} is not a version number (1, 2, ...)")
    if version > NETWORK_FORMAT_VERSION:
        raise NetworkConfigError(
            f"{path} has {FORMAT_VERSION_KEY} {version}, but this cosmos-composer reads up to version "
            f"{NETWORK_FORMAT_VERSION}. Fix: upgrade cosmos-composer (pip install -U cosmos-composer)"
        )
    return version


def _has_type(value: Any, annotation: Any) -> bool:
    if typing.get_origin(annotation) is tuple:  # a JSON list: tuple[str, ...] (camera_names), tuple[str, str]
        items = typing.get_args(annotation)
        if len(items) == 2 and items[1] is Ellipsis:
            return isinstance(value, (list, tuple)) and all(_has_type(item, items[0]) for item in value)
        return (
            isinstance(value, (list, tuple))
            and len(value) == len(items)
            and all(_has_type(item, annotation) for item, annotation in zip(value, items))
        )
    allowed = typing.get_args(annotation) or (annotation,)  # Optional[int] -> (int, NoneType)
    if isinstance(value, bool):
        return bool in allowed
    if isinstance(value, int) and float in allowed:
        return True
    return isinstance(value, tuple(a for a in allowed if isinstance(a, type)))


def find_network_config(checkpoint: Union[str, os.PathLike]) -> Optional[RecordedNetwork]:
    """The network.json that describes `checkpoint`, or None when it carries none (the released files).

    A folder: its network.json. A file: `<name>.network.json` beside it (a single-file Composer checkpoint),
    else the network.json of its folder (an export folder's files share one).
    """
    checkpoint = Path(checkpoint)
    candidates = [network_config_path(checkpoint)]
    if checkpoint.is_file():
        candidates.append(checkpoint.parent / NETWORK_FILE)
    for candidate in candidates:
        if candidate.is_file():
            return read_network_config(candidate)
    return None


def config_differences(first: NetworkConfig, second: NetworkConfig, first_name: str, second_name: str) -> list[str]:
    """`["rope_t_extrapolation_ratio: 2.0 in <first_name>, 1.0 in <second_name>", ...]` (execution-only
    fields such as `activation_checkpointing` are not compared)."""
    return [
        f"{name}: {value!r} in {first_name}, {getattr(second, name)!r} in {second_name}"
        for name, value in _differing_fields(second, first).items()
    ]


def _differing_fields(reference: NetworkConfig, config: NetworkConfig, compare_all: bool = False) -> dict[str, Any]:
    """`{field: value in config}` for each field where `config` differs from `reference`."""
    return {
        field.name: getattr(config, field.name)
        for field in dataclasses.fields(NetworkConfig)
        if (compare_all or field.name not in EXECUTION_ONLY_FIELDS)
        and getattr(config, field.name) != getattr(reference, field.name)
    }


def check_matches_recorded(
    network: NetworkConfig, checkpoint: Union[str, os.PathLike], strict: bool = True
) -> Optional[RecordedNetwork]:
    """Compare the network that `checkpoint`'s weights are loaded into with the network.json it carries.

    A difference (other than in execution-only fields) is an error naming each field when `strict`, else a
    warning: a non-strict load (`load_strict: false`) may deliberately load weights into another config.
    Returns the recorded network, or None when the checkpoint carries no network.json.
    """
    recorded = find_network_config(checkpoint)
    if recorded is None:
        return None
    differences = config_differences(recorded.config, network, str(recorded.path), "this run's network")
    if differences:
        message = f"{checkpoint} was saved from another network config than this run's:\n  " + "\n  ".join(differences)
        if strict:
            raise NetworkConfigError(
                f"{message}\nFix: set model.preset={recorded.preset} and model.overrides to the recorded values "
                "(or load_strict=false to load the weights into this config anyway)"
            )
        log.warning("%s\nload_strict=false: loading the weights into this run's config anyway", message)
    return recorded


# ---------------------------------------------------------------------------------------------------------------
# Which network the weights belong to
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedNetwork:
    preset: str
    overrides: dict[str, Any]
    config: NetworkConfig
    source: str  # the network.json it was read from, GIVEN or INFERRED

    GIVEN = "given"
    INFERRED = "inferred"

    @property
    def inferred(self) -> bool:
        return self.source == self.INFERRED

    def describe(self) -> str:
        sets = "".join(f" --set {key}={value}" for key, value in self.overrides.items())
        how = {
            self.GIVEN: "as given",
            self.INFERRED: f"inferred from the parameter names and shapes: the checkpoint has no {NETWORK_FILE}",
        }.get(self.source, f"from {self.source}")
        return f"--preset {self.preset}{sets} ({how})"

    def build_empty(self) -> torch.nn.Module:
        """A fresh network whose every value will come from a strict load (built on meta, then allocated)."""
        with torch.device("meta"):
            net = build_network(self.preset, **self.overrides)
        if any(True for _ in net.buffers()):  # buffers must be initialised, not just allocated
            net = build_network(self.preset, **self.overrides)
        else:
            net = net.to_empty(device="cpu")
        return net.eval()


@lru_cache(maxsize=16)
def _preset_shapes(preset: str, overrides: tuple[tuple[str, Any], ...] = ()) -> dict[str, tuple[int, ...]]:
    """`{key: shape}` of the preset's network: the released file's for a 2B preset, else built on meta."""
    if not overrides and preset in RELEASED_VARIANT_OF_PRESET:
        return released_parameter_shapes(preset)  # equal to our network's (tests/test_network.py)
    with torch.device("meta"):
        net = build_network(preset, **dict(overrides))
    return {key: tuple(value.shape) for key, value in net.state_dict().items()}


def _shape_differences(found: Mapping[str, tuple], expected: Mapping[str, tuple], limit: int = 6) -> str:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [k for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    lines = []
    if missing:
        lines.append(f"{len(missing)} parameters missing from the checkpoint: {', '.join(missing[:limit])}")
    if unexpected:
        lines.append(f"{len(unexpected)} checkpoint keys not in the network: {', '.join(unexpected[:limit])}")
    for key in mismatched[:limit]:
        lines.append(f"{key}: checkpoint {list(found[key])} vs network {list(expected[key])}")
    return "\n  ".join(lines)


def _given_config(preset: str, overrides: Mapping[str, Any]) -> NetworkConfig:
    try:
        return get_config(preset, **overrides)
    except (ValueError, TypeError) as error:
        raise NetworkConfigError(f"Invalid network config: {error}") from None


def _expected_shapes(preset: str, overrides: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return _preset_shapes(preset, tuple(sorted(overrides.items())))


def resolve_network(
    shapes: Mapping[str, Sequence[int]],
    preset: Optional[str] = None,
    overrides: Optional[Mapping[str, Any]] = None,
    recorded: Optional[RecordedNetwork] = None,
    check_shapes: bool = True,
) -> ResolvedNetwork:
    """The network config that `shapes` (`{key without net.: shape}`) belongs to.

    1. `recorded` (the checkpoint's network.json): that config, checked against the shapes. A `preset` /
       `overrides` given as well must describe the same network.
    2. Else `preset` (and `overrides`, official config names): that config, checked against the shapes.
    3. Else (the released files) the preset whose network has exactly these keys and shapes; a
       NetworkConfigError asks for `--preset` when none or several match.

    `check_shapes=False` skips the checks of 1 and 2, for a caller whose own load reports (or, loading
    non-strictly, allows) the differences.
    """
    shapes = {key: tuple(shape) for key, shape in shapes.items()}
    overrides = dict(overrides or {})
    if overrides and preset is None:
        raise NetworkConfigError("Network overrides (--set) need the preset they apply to: add --preset")

    if recorded is not None:
        if preset is not None:
            differences = config_differences(
                _given_config(preset, overrides), recorded.config, "--preset/--set", str(recorded.path)
            )
            if differences:
                raise NetworkConfigError(
                    f"--preset/--set describe another network than the checkpoint's {recorded.path}:\n  "
                    + "\n  ".join(differences)
                    + "\nFix: leave out --preset and --set (the checkpoint records its network)"
                )
        expected = _expected_shapes(recorded.preset, recorded.overrides) if check_shapes else shapes
        if expected != shapes:
            raise NetworkConfigError(
                f"The weights do not fit the network recorded in {recorded.path} (--preset {recorded.preset}, "
                f"overrides {recorded.overrides}):\n  {_shape_differences(shapes, expected)}\n"
                f"The {NETWORK_FILE} belongs to other weights: remove it to infer the network from the shapes"
            )
        return ResolvedNetwork(recorded.preset, recorded.overrides, recorded.config, source=str(recorded.path))

    if preset is None:
        matches = [name for name in PRESETS if _preset_shapes(name) == shapes]
        if len(matches) != 1:
            found = "no preset" if not matches else f"several presets ({', '.join(matches)})"
            raise NetworkConfigError(
                f"The checkpoint has no {NETWORK_FILE}, and its parameter names and shapes match {found}. Pass "
                f"the run's network config: --preset <model.preset> and --set key=value for each of "
                f"model.overrides (presets: {sorted(PRESETS)})"
            )
        return ResolvedNetwork(matches[0], {}, get_config(matches[0]), source=ResolvedNetwork.INFERRED)

    config = _given_config(preset, overrides)
    expected = _expected_shapes(preset, overrides) if check_shapes else shapes
    if expected != shapes:
        raise NetworkConfigError(
            f"The checkpoint does not hold a {preset} network{' with ' + str(overrides) if overrides else ''}:\n  "
            f"{_shape_differences(shapes, expected)}\nPass the run's model.preset and model.overrides as --preset "
            "and --set, or leave both out to infer the preset."
        )
    return ResolvedNetwork(preset, overrides, config, source=ResolvedNetwork.GIVEN)


def resolve_checkpoint_network(
    checkpoint: Union[str, os.PathLike],
    shapes: Mapping[str, Sequence[int]],
    preset: Optional[str] = None,
    overrides: Optional[Mapping[str, Any]] = None,
    check_shapes: bool = True,
    read_from: Optional[Path] = None,
) -> ResolvedNetwork:
    """The network of a checkpoint's weights, the one rule for export and generation: the checkpoint's
    network.json, else `preset` + `overrides`, else the preset the shapes match (`resolve_network`); the log
    says which. `shapes`: `{key without net.: shape}` of one network (non-parameter entries are left out here).
    `read_from`: where the checkpoint's files are read (a pin of it, checkpoint/pin.py); messages name
    `checkpoint`. Raises NetworkConfigError naming the checkpoint."""
    shapes = {key: shape for key, shape in shapes.items() if not is_non_parameter(key)}
    shown = str(checkpoint)
    try:
        recorded = find_network_config(read_from or checkpoint)
        network = resolve_network(shapes, preset, overrides, recorded, check_shapes)
    except NetworkConfigError as error:
        message = str(error).replace(str(read_from), shown) if read_from else str(error)
        raise NetworkConfigError(f"{checkpoint}: {message}") from None
    if read_from and network.source.startswith(str(read_from)):
        network = dataclasses.replace(network, source=network.source.replace(str(read_from), shown, 1))
    (log.warning if network.inferred else log.info)("network: %s", network.describe())
    return network
