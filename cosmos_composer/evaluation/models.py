"""The models the learned metrics run: which metric needs which, where each comes from, checking and loading them.

Every model is a local path or an `hf://org/repo[/path][@revision]` URI, resolved through `checkpoint/hf.py` (the
Hugging Face cache; `HF_HUB_OFFLINE=1` works from the cache alone). The depth and mask models default to the
benchmark's models in transformers' format; FID and FVD have no default, because their standard weights are not on
the Hub in a format we load safely (see `frechet.py`).

`check_metric_models` runs before anything is generated or loaded: it resolves every model the asked metrics need
and checks that each is what its loader reads (a transformers folder with config.json and safetensors weights, a
state dict, a TorchScript file the user trusts), without reading weights. All problems come out as one error naming
the option, the source and the fix (`hf download <repo>` for a model missing from the cache).
"""

from __future__ import annotations

import argparse
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional

import torch

from ..checkpoint.hf import HfResolveError, is_hf_uri, parse_hf_uri, resolve
from ..checkpoint.load import CheckpointLoadError, read_state_dict
from .depth import DepthModel
from .frechet import (
    TF_INCEPTION_CLASSES,
    ClipFeatures,
    FrameFeatures,
    I3DClipFeatures,
    InceptionFrameFeatures,
    TransformersClipFeatures,
    TransformersFrameFeatures,
    build_inception,
)
from .masks import MaskModels

# The benchmark's models (SHI-Labs/physical-ai-bench `transfer/get_checkpoint.sh`) in transformers' format:
# Video-Depth-Anything-Small -> Depth Anything V2 Small (the same ViT-S depth model, frame by frame);
# grounding-dino-tiny as is; SAM 2 hiera-large -> its SAM 2.1 release converted for transformers.
DEFAULT_DEPTH_MODEL = "hf://depth-anything/Depth-Anything-V2-Small-hf"
DEFAULT_GROUNDING_MODEL = "hf://IDEA-Research/grounding-dino-tiny"
DEFAULT_SAM2_MODEL = "hf://facebook/sam2.1-hiera-large"

STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
SAFETENSORS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


class MetricModelError(ValueError):
    """A metric's model is not given, not found or not loadable (the message names the option and the fix)."""


@dataclass(frozen=True)
class ModelOption:
    key: str  # the keyword of `load_metric_models` and the key of `check_metric_models`' sources
    flag: str  # the command-line option
    default: Optional[str]
    expects: str  # what the source must be, for messages
    model_types: tuple[str, ...] = ()  # accepted config.json model_type of a transformers folder (empty: any)


MODEL_OPTIONS = {
    option.key: option
    for option in (
        ModelOption(
            "depth_model",
            "--depth-model",
            DEFAULT_DEPTH_MODEL,
            "a transformers depth-estimation model folder (Depth Anything V2 or DPT)",
            ("depth_anything", "dpt"),
        ),
        ModelOption(
            "grounding_model",
            "--grounding-model",
            DEFAULT_GROUNDING_MODEL,
            "a transformers GroundingDINO folder",
            ("grounding-dino", "mm-grounding-dino"),
        ),
        ModelOption(
            "sam2_model", "--sam2-model", DEFAULT_SAM2_MODEL, "a transformers SAM 2 folder", ("sam2_video", "sam2")
        ),
        ModelOption(
            "fid_model",
            "--fid-model",
            None,
            "an Inception-v3 state dict (.safetensors/.pt/.pth; pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
            "gives the standard FID) or a transformers image model folder",
        ),
        ModelOption(
            "fvd_model",
            "--fvd-model",
            None,
            "the TorchScript I3D i3d_torchscript.pt of published FVDs (needs trust_torchscript / --trust-torchscript) "
            "or a transformers video model folder (e.g. VideoMAE, not comparable with published FVDs)",
        ),
    )
}

# The models each metric runs; the other metrics need none.
METRIC_MODELS = {
    "depth_si_rmse": ("depth_model",),
    "mask_miou": ("grounding_model", "sam2_model"),
    "mask_recall": ("grounding_model", "sam2_model"),
    "fid": ("fid_model",),
    "fvd": ("fvd_model",),
}


@dataclass
class MetricModels:
    """What `load_metric_models` loaded: the argument each metric function takes (None when not asked for)."""

    device: str = "cpu"
    depth: Optional[DepthModel] = None  # depth.depth_si_rmse(prediction, reference, models.depth)
    masks: Optional[MaskModels] = None  # masks.mask_miou(prediction, reference, caption, models.masks)
    fid: Optional[FrameFeatures] = None  # frechet.fid(predictions, references, models.fid)
    fvd: Optional[ClipFeatures] = None  # frechet.fvd(predictions, references, models.fvd)
    paths: dict[str, str] = field(default_factory=dict)  # option key -> the local path it resolved to


def required_models(names: Iterable[str]) -> list[str]:
    """The option keys of the models the metrics `names` need, in MODEL_OPTIONS order."""
    needed = {key for name in names for key in METRIC_MODELS.get(name, ())}
    return [key for key in MODEL_OPTIONS if key in needed]


def _download_hint(source: str) -> str:
    if not is_hf_uri(source):
        return ""
    uri = parse_hf_uri(source)
    revision = f" --revision {uri.revision}" if uri.revision else ""
    return f"; to fetch it again: `hf download {uri.repo_id}{revision}`"


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive (torch.jit.save) holds compiled code under <name>/code/; a state dict does not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def _transformers_folder_problem(folder: Path, option: ModelOption) -> Optional[str]:
    """Why `folder` is not a transformers model folder this option loads, or None."""
    if not folder.is_dir():
        return f"{folder} is not a folder; expected {option.expects}"
    config_file = folder / "config.json"
    if not config_file.is_file():
        return f"{folder} has no config.json; expected {option.expects}"
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError) as error:
        return f"{config_file} is not readable JSON ({error})"
    if option.model_types and model_type not in option.model_types:
        return f"{folder} holds a {model_type!r} model; expected {option.expects} (model_type {' or '.join(option.model_types)})"
    if not any((folder / name).is_file() for name in SAFETENSORS_WEIGHTS):
        return f"{folder} has no safetensors weights (model.safetensors); pickled weights are not loaded"
    return None


def _source_problem(option: ModelOption, path: Path, trust_torchscript: bool) -> Optional[str]:
    """Why the resolved `path` cannot serve `option`, or None; reads no weights."""
    if not path.exists():
        return f"{path} does not exist; expected {option.expects}"
    if path.is_dir():
        return _transformers_folder_problem(path, option)
    if option.key == "fid_model":
        if path.suffix not in STATE_DICT_SUFFIXES or _is_torchscript(path):
            return f"{path} is not a state dict file ({', '.join(STATE_DICT_SUFFIXES)}); expected {option.expects}"
        return None
    if option.key == "fvd_model":
        if not _is_torchscript(path):
            return f"{path} is not a TorchScript file; expected {option.expects}"
        if not trust_torchscript:
            return (
                f"{path} is TorchScript, which can run code when loaded; if you trust this file (e.g. the published "
                "i3d_torchscript.pt), pass trust_torchscript=True (--trust-torchscript)"
            )
        return None
    return f"{path} is a file; expected {option.expects}"


def check_metric_models(
    names: Iterable[str], sources: Mapping[str, Optional[str]], trust_torchscript: bool = False
) -> dict[str, str]:
    """Resolve the models the metrics `names` need (`sources`: option key -> path/URI, None for the default).

    Returns option key -> local path. Raises one MetricModelError listing every model that is not given, not
    found (an hf:// model missing from the cache says the `hf download` command) or not what its loader reads.
    Cheap: it reads config files and archive listings, never weights (hf:// models are downloaded if online).
    """
    names = list(names)
    unknown = set(sources) - set(MODEL_OPTIONS)
    if unknown:
        raise MetricModelError(f"unknown metric model keys {sorted(unknown)}; valid keys: {list(MODEL_OPTIONS)}")
    paths, problems = {}, []
    for key in required_models(names):
        option = MODEL_OPTIONS[key]
        metrics = ", ".join(name for name in names if key in METRIC_MODELS.get(name, ()))
        source = sources.get(key) or option.default
        if source is None:
            problems.append(f"{metrics} needs {option.flag} ({key}): {option.expects}")
            continue
        try:
            path = Path(resolve(source))
        except HfResolveError as error:
            problems.append(f"{option.flag} {source} ({metrics}): {error}")
            continue
        problem = _source_problem(option, path, trust_torchscript)
        if problem:
            problems.append(f"{option.flag} {source} ({metrics}): {problem}{_download_hint(source)}")
        else:
            paths[key] = str(path)
    if len(problems) == 1:
        raise MetricModelError(problems[0])
    if problems:
        raise MetricModelError(f"{len(problems)} metric models are missing or unusable:\n  " + "\n  ".join(problems))
    return paths


# ----------------------------------------------------------------------------- command-line flags
def add_metric_model_arguments(parser, device: bool = True) -> None:
    """The flags of every metric model (``MODEL_OPTIONS``: --depth-model, ..., --fid-model, --fvd-model),
    --trust-torchscript and, unless the command has its own (``device=False``), --device. ``parser``: an
    argparse parser or argument group; :func:`metric_model_sources` reads the models back."""
    for option in MODEL_OPTIONS.values():
        default = f"default: {option.default}" if option.default else "no default"
        parser.add_argument(option.flag, dest=option.key, default=None, help=f"{option.expects} ({default})")
    parser.add_argument(
        "--trust-torchscript",
        action="store_true",
        help="load a TorchScript --fvd-model (the published i3d_torchscript.pt); TorchScript can run code when loaded",
    )
    if device:
        parser.add_argument(
            "--device",
            default="cuda" if torch.cuda.is_available() else "cpu",
            help="where the metric models run (default: cuda when available, else cpu)",
        )


def metric_model_sources(args: argparse.Namespace) -> dict[str, Optional[str]]:
    """The ``--*-model`` flags of :func:`add_metric_model_arguments`: option key -> source (None: the default)."""
    return {key: getattr(args, key) for key in MODEL_OPTIONS}


# ----------------------------------------------------------------------------- loading
def _report(key: str, source: str, model: torch.nn.Module, device: str, note: str = "") -> None:
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"metric model {key}: {source} ({type(model).__name__}, {millions:.1f}M parameters) on {device}{note}",
        flush=True,
    )


def _report_extractor(key: str, source: str, extractor, metric: str, device: str) -> None:
    comparable = "" if extractor.comparable else f", not comparable with published {metric}s"
    _report(key, source, extractor.model, device, f": {extractor.name}{comparable}")


def _load_depth(path: str, device: str) -> DepthModel:
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation  # heavy: only when a metric needs it

    model = AutoModelForDepthEstimation.from_pretrained(path, use_safetensors=True).to(device).eval()
    return DepthModel(model=model, processor=AutoImageProcessor.from_pretrained(path), device=device)


def _load_masks(grounding_path: str, sam2_path: str, device: str) -> MaskModels:
    from transformers import (  # heavy: only when a metric needs it
        AutoModelForZeroShotObjectDetection,
        AutoProcessor,
        Sam2VideoModel,
        Sam2VideoProcessor,
    )

    return MaskModels(
        grounding_model=AutoModelForZeroShotObjectDetection.from_pretrained(grounding_path, use_safetensors=True)
        .to(device)
        .eval(),
        grounding_processor=AutoProcessor.from_pretrained(grounding_path),
        sam2_model=Sam2VideoModel.from_pretrained(sam2_path, use_safetensors=True).to(device).eval(),
        sam2_processor=Sam2VideoProcessor.from_pretrained(sam2_path),
        device=device,
    )


def _load_transformers_features(path: str, device: str):
    from transformers import AutoImageProcessor, AutoModel  # heavy: only when a metric needs it

    model = AutoModel.from_pretrained(path, use_safetensors=True).to(device).eval()
    return model, AutoImageProcessor.from_pretrained(path)


def _load_fid(path: str, source: str, device: str) -> FrameFeatures:
    if os.path.isdir(path):
        model, processor = _load_transformers_features(path, device)
        return TransformersFrameFeatures(model, processor, name=f"{type(model).__name__} ({source})", device=device)
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state_dict = load_file(path)
        else:
            state_dict = read_state_dict(path)  # weights_only: never unpickles code
        model = build_inception(state_dict)
    except (CheckpointLoadError, RuntimeError, KeyError, OSError) as error:
        raise MetricModelError(f"--fid-model {source}: not an Inception-v3 state dict ({error})") from None
    return InceptionFrameFeatures(
        model, tf_port=state_dict["fc.weight"].shape[0] == TF_INCEPTION_CLASSES, device=device
    )


def _load_fvd(path: str, source: str, device: str) -> ClipFeatures:
    if os.path.isdir(path):
        model, processor = _load_transformers_features(path, device)
        return TransformersClipFeatures(model, processor, name=f"{type(model).__name__} ({source})", device=device)
    # The user vouched for this file (check_metric_models refuses TorchScript without trust_torchscript).
    return I3DClipFeatures(torch.jit.load(path, map_location=device).eval(), device=device)


def load_metric_models(
    names: Iterable[str],
    depth_model: Optional[str] = None,
    grounding_model: Optional[str] = None,
    sam2_model: Optional[str] = None,
    fid_model: Optional[str] = None,
    fvd_model: Optional[str] = None,
    device: str = "cpu",
    trust_torchscript: bool = False,
) -> MetricModels:
    """Load the models the metrics `names` need (each a local path or hf:// URI; None: the default, if any).

    Everything is checked first (`check_metric_models`), so a missing model fails before any model loads.
    """
    names = list(names)
    sources = {
        "depth_model": depth_model,
        "grounding_model": grounding_model,
        "sam2_model": sam2_model,
        "fid_model": fid_model,
        "fvd_model": fvd_model,
    }
    paths = check_metric_models(names, sources, trust_torchscript)
    source = {key: sources[key] or MODEL_OPTIONS[key].default for key in paths}
    loaded = MetricModels(device=device, paths=paths)
    if "depth_model" in paths:
        loaded.depth = _load_depth(paths["depth_model"], device)
        _report("depth_model", source["depth_model"], loaded.depth.model, device)
    if "grounding_model" in paths:
        loaded.masks = _load_masks(paths["grounding_model"], paths["sam2_model"], device)
        _report("grounding_model", source["grounding_model"], loaded.masks.grounding_model, device)
        _report("sam2_model", source["sam2_model"], loaded.masks.sam2_model, device)
    if "fid_model" in paths:
        loaded.fid = _load_fid(paths["fid_model"], source["fid_model"], device)
        _report_extractor("fid_model", source["fid_model"], loaded.fid, "FID", device)
    if "fvd_model" in paths:
        loaded.fvd = _load_fvd(paths["fvd_model"], source["fvd_model"], device)
        _report_extractor("fvd_model", source["fvd_model"], loaded.fvd, "FVD", device)
    return loaded
