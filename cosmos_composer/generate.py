"""Generate videos with a Cosmos-Transfer2.5 network: checkpoint + control video(s) + prompt -> mp4.

The library behind ``scripts/generate.py``: :class:`GenerateOptions` declares every option once (its default,
its help, its group; the script builds its flags from them) and :func:`generate` runs one generation:

1. the network and its weights come from the checkpoint (``checkpoint/network_weights.py``; the EMA weights
   by default, as the official inference runs the EMA files);
2. the control video(s) are read at the sampled size and encoded by the Wan2.1 VAE, each view on its own
   (``generation/inputs.py``);
3. the prompt is embedded by Cosmos-Reason1, one embedding per view for multiview; the unconditional branch of
   classifier-free guidance gets the negative prompt (the official inference's default) or the zero text of
   training's text dropout (``generation/prompts.py``);
4. :func:`cosmos_composer.diffusion.sampler.sample` runs the flow-matching UniPC sampler with guidance;
5. the latents are decoded per view and written as one mp4 per view, plus a tiled overview for multiview
   (``generation/outputs.py``).

The training callback ``callbacks/sample_videos.py`` samples with the same pieces (steps 3 to 5).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist

from .checkpoint.export import LORA_ADAPTER_FOLDER
from .checkpoint.keys import EMA_WEIGHTS, WEIGHT_CHOICES
from .checkpoint.network_weights import load_network, read_checkpoint_state, select_network_weights  # noqa: F401
from .config_file import parse_set_items
from .data.cameras import DEFAULT_CAMERAS
from .diffusion import sampler
from .dtypes import DTYPES, default_dtype
from .encoders import build_encoders
from .encoders.text import REASON1_REPO, REASON1_URI
from .generation import GenerationError
from .generation.inputs import (
    check_view_sizes,
    largest_valid_frames,
    probe_size,
    read_views,
    select_cameras,
    video_files,
)
from .generation.outputs import write_sample
from .generation.prompts import (
    CAPTION_MODES,
    NEGATIVE_PROMPT_MULTIVIEW,
    NEGATIVE_PROMPT_SINGLEVIEW,
    load_text_embedding,
    negative_context,
    prompt_context,
)
from .latent_geometry import SPATIAL_COMPRESSION, TEMPORAL_COMPRESSION, latent_num_frames, pixel_num_frames
from .models.context_parallel import check_context_parallel_size, context_parallel_groups
from .models.network import CosmosTransferNet, latent_view_indices
from .models.parallelize import apply_context_parallel
from .models.presets import PRESETS, NetworkConfig

__all__ = [
    "GenerateOptions",
    "GenerationError",
    "Interval",
    "SEED_RANGE",
    "add_generate_arguments",
    "build_generation_encoders",
    "check_options",
    "device_and_dtype",
    "generate",
    "lora_adapter_note",
    "option_flag",
    "options_from_args",
    "resolve_geometry",
    "sample_latents",
    "text_contexts",
]

log = logging.getLogger(__name__)

# The weights of the frozen encoders that the official inference downloads (the recipe YAMLs use the same).
DEFAULT_VAE = "hf://nvidia/Cosmos-Predict2.5-2B/tokenizer.pth@f176dc95b4a70f53ce01c4b302851595e7322b00"
DEFAULT_TEXT_ENCODER = REASON1_URI


# =============================================================================================
# Options
# =============================================================================================
OPTION_GROUPS = ("model", "inputs", "sampling", "output")  # the sections of `scripts/generate.py --help`


@dataclass(frozen=True)
class Interval:
    """The values a number option takes: ``low`` .. ``high`` (None: unbounded), ``low`` itself out when
    ``low_open``; a float must also be finite (infinity would pass a bound it is not checked against)."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        return above and (self.high is None or value <= self.high)

    def __str__(self) -> str:
        """``in [0, 1]``, ``>= 1``, ``> 0``: what follows "must be a number"."""
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        return f"in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}]"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# The official initial noise is drawn by numpy's RandomState (`sampler.initial_noise`), which takes these seeds.
SEED_RANGE = Interval(0, sampler.MAX_SEED)


def _option(help: str, group: str, default: Any = dataclasses.MISSING, **cli: Any) -> Any:
    """A field of :class:`GenerateOptions`: its default (none: required), its help and its ``group``.

    ``cli`` says what the field's name and type do not: ``flag`` when it is not ``--<name with dashes>`` (a
    ``--no-...`` flag turns a True default off), ``choices``, ``type`` (the flag's text -> the value) and
    ``metavar``; ``valid``, an :class:`Interval`, the values a number takes (:func:`check_options` refuses the
    others before anything is read). A ``%(default)s`` in the help is the default.
    """
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, "group": group, **cli})
    return field(default=default, metadata={"help": help, "group": group, **cli})


def _comma_list(text: str) -> Optional[list[str]]:
    return [item.strip() for item in text.split(",") if item.strip()] or None


def _source_or_none(text: str) -> Optional[str]:
    return None if text in ("", "none") else text


@dataclass(kw_only=True)
class GenerateOptions:
    """Everything one generation takes: the arguments of :func:`generate` and the flags of ``scripts/generate.py``."""

    # ---- model
    checkpoint: str = _option(".pt file, hf:// URI or Composer checkpoint folder", "model")
    preset: Optional[str] = _option(
        "network preset the checkpoint was trained with (default: the checkpoint's network.json; for a file "
        "without one, the preset whose shapes it has)",
        "model",
        None,
        choices=sorted(PRESETS),
    )
    overrides: dict[str, Any] = _option(
        "network config override by its official name (repeatable), e.g. --set num_blocks=6",
        "model",
        {},
        flag="--set",
        metavar="KEY=VALUE",
    )
    weights: str = _option(
        "for files with net.* and net_ema.* (model.pt, Composer checkpoints): which to sample with (default: "
        "%(default)s; EMA-only files hold one set under net.*)",
        "model",
        EMA_WEIGHTS,
        choices=WEIGHT_CHOICES,
    )
    allow_partial_load: bool = _option(
        "load the matching keys only and print what was dropped (default: strict)", "model", False
    )
    vae: Optional[str] = _option(
        "Wan2.1 VAE: tiny | path | hf:// URI | none (default: the official tokenizer.pth)",
        "model",
        DEFAULT_VAE,
        type=_source_or_none,
    )
    text_encoder: Optional[str] = _option(
        f"Cosmos-Reason1: tiny | path | hf:// URI | none (default: {REASON1_REPO})",
        "model",
        DEFAULT_TEXT_ENCODER,
        type=_source_or_none,
    )

    # ---- inputs
    control: str = _option("control mp4 (single view) or a folder with one mp4 per camera (multiview)", "inputs")
    sample: Optional[str] = _option(
        "multiview: the sample to take from a dataset's control folder in the official layout "
        "(ftheta_<camera>/<sample>.mp4)",
        "inputs",
        None,
    )
    prompt: Optional[str] = _option("the text prompt", "inputs", None)
    text_embedding: Optional[str] = _option(
        "a cached Reason1 embedding (.pt tensor [L, D], or [V, L, D] per view)", "inputs", None
    )
    negative_prompt: Optional[str] = _option(
        "negative prompt for the unconditional branch (default: the official one of the network type)", "inputs", None
    )
    negative_text_embedding: Optional[str] = _option("a cached embedding of the negative prompt", "inputs", None)
    use_negative_prompt: bool = _option(
        "use training's dropped text (zeros) for the unconditional branch instead",
        "inputs",
        True,
        flag="--no-negative-prompt",
    )
    cameras: Optional[list[str]] = _option(
        "multiview: comma-separated cameras to generate (default: all of the network's, the 7 official ones for "
        "the released file; a rig's names as trained, each with its trained view id and caption prefix)",
        "inputs",
        None,
        type=_comma_list,
    )
    caption_mode: str = _option(
        "multiview prompts: 'prefixed' = camera prefix on every view, caption on front-wide (as in training; "
        "default); 'front-only' = as the official multiview inference script",
        "inputs",
        "prefixed",
        choices=CAPTION_MODES,
    )
    num_conditional_frames: int = _option(
        "first frames of --input to condition on (0, 1, 5, ...; default %(default)s)", "inputs", 0, valid=Interval(0)
    )
    input: Optional[str] = _option("video (folder for multiview) with the conditioning frames", "inputs", None)
    # [0, 1]: the official inference's ControlWeight (cosmos_transfer2/config.py).
    control_weight: float = _option(
        "control strength in [0, 1] (default %(default)s)", "inputs", 1.0, valid=Interval(0.0, 1.0)
    )

    # ---- sampling
    # 2025 is the official inference's default seed (upstream cosmos_transfer2/config.py), so the same command
    # starts from the same noise as the official one.
    seed: int = _option(
        "seed of the initial noise, drawn as the official inference draws it (default %(default)s, as upstream)",
        "sampling",
        2025,
        valid=SEED_RANGE,
    )
    # [0, 7]: the official inference's Guidance (cosmos_transfer2/config.py); its sample callbacks use 7.
    guidance: float = _option(
        "classifier-free guidance in [0, 7], v = cond + g * (cond - uncond); 0 = no guidance (default %(default)s)",
        "sampling",
        sampler.DEFAULT_GUIDANCE,
        valid=Interval(0.0, 7.0),
    )
    steps: int = _option(
        "UniPC steps, >= 1 (default %(default)s)", "sampling", sampler.DEFAULT_NUM_STEPS, valid=Interval(1)
    )
    # sigma' = shift * sigma / (1 + (shift - 1) * sigma) keeps sigma in (0, 1) only for shift > 0.
    shift: float = _option(
        "sigma shift, > 0 (default %(default)s)", "sampling", sampler.DEFAULT_SHIFT, valid=Interval(0.0, low_open=True)
    )
    device: Optional[str] = _option("cuda, cuda:1, cpu (default: cuda when available)", "sampling", None)
    dtype: Optional[str] = _option("default: bf16 on GPU, fp32 on CPU", "sampling", None, choices=tuple(DTYPES))
    progress: bool = _option("no progress bar", "sampling", True, flag="--no-progress")

    # ---- output
    output: str = _option("output .mp4 (multiview: the overview; views beside it)", "output")
    num_frames: Optional[int] = _option(
        "frames per view, 1 + 4k (default: the network's)", "output", None, valid=Interval(1)
    )
    height: Optional[int] = _option("default: the control video's", "output", None, valid=Interval(1))
    width: Optional[int] = _option("default: the control video's", "output", None, valid=Interval(1))
    fps: Optional[float] = _option(
        "output frame rate (default: the control video's)", "output", None, valid=Interval(0.0, low_open=True)
    )


# Options that exclude each other; True: one of them must be given.
EXCLUSIVE_OPTIONS: dict[tuple[str, ...], bool] = {
    ("prompt", "text_embedding"): True,
    ("negative_prompt", "negative_text_embedding", "use_negative_prompt"): False,
}


def option_flag(option: dataclasses.Field) -> str:
    """The flag of a :class:`GenerateOptions` field in ``scripts/generate.py``."""
    return option.metadata.get("flag") or "--" + option.name.replace("_", "-")


def _parse_overrides(items: list[str]) -> dict:
    """The --set items, read as export_checkpoint.py and train.py read values (`config_file.parse_set_items`)."""
    try:
        return parse_set_items(items)
    except ValueError as error:
        raise GenerationError(str(error)) from None


def _value_type(hint) -> type:
    """``int`` for ``Optional[int]``, ``dict`` for ``dict[str, Any]``: the type a field's value has when given."""
    given = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if typing.get_origin(hint) is typing.Union and len(given) == 1:
        hint = given[0]
    return typing.get_origin(hint) or hint


def add_generate_arguments(parser: argparse.ArgumentParser, exclude: Sequence[str] = ()) -> None:
    """Add one flag per field of :class:`GenerateOptions` (but those named in ``exclude``) to ``parser``, with
    the field's default, help, group and choices; :func:`options_from_args` reads them back."""
    groups = {name: parser.add_argument_group(name) for name in OPTION_GROUPS}
    options = {option.name: option for option in dataclasses.fields(GenerateOptions) if option.name not in exclude}
    exclusive = {}
    for names, required in EXCLUSIVE_OPTIONS.items():
        names = [name for name in names if name in options]
        if names:
            group = groups[options[names[0]].metadata["group"]].add_mutually_exclusive_group(required=required)
            exclusive.update(dict.fromkeys(names, group))
    hints = typing.get_type_hints(GenerateOptions)
    for name, option in options.items():
        meta = option.metadata
        kwargs = {"dest": name, "help": meta["help"]}
        value_type = _value_type(hints[name])
        if value_type is bool:  # --flag turns a False default on, --no-flag a True default off
            kwargs["action"] = "store_false" if option.default else "store_true"
        elif value_type is dict:  # --set KEY=VALUE, repeatable; read by _parse_overrides
            kwargs.update(action="append", default=[])
        elif option.default is dataclasses.MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = option.default
        if value_type in (int, float):
            kwargs["type"] = value_type
        kwargs.update({key: meta[key] for key in ("type", "choices", "metavar") if key in meta})
        (exclusive.get(name) or groups[meta["group"]]).add_argument(option_flag(option), **kwargs)


def options_from_args(args: argparse.Namespace, **values: Any) -> GenerateOptions:
    """The :class:`GenerateOptions` of parsed flags (see :func:`add_generate_arguments`); ``values`` gives the
    fields that have no flag."""
    for option in dataclasses.fields(GenerateOptions):
        if option.name not in values and hasattr(args, option.name):
            values[option.name] = getattr(args, option.name)
    if isinstance(values.get("overrides"), list):
        values["overrides"] = _parse_overrides(values["overrides"])
    return GenerateOptions(**values)


def check_options(options: GenerateOptions) -> None:
    """Refuse numbers out of their range (NaN too), options that exclude each other or lack what they need
    (cheap: nothing is read; `evaluate.py run` checks its generation flags here too)."""
    fields = {option.name: option for option in dataclasses.fields(GenerateOptions)}
    for name, option in fields.items():
        check_number(option, getattr(options, name))
    for names, required in EXCLUSIVE_OPTIONS.items():
        given = [name for name in names if getattr(options, name) != fields[name].default]
        if len(given) > 1 or (required and not given):
            flags = [option_flag(fields[name]) for name in names]
            raise GenerationError(
                f"give {'exactly' if required else 'at most'} one of {', '.join(flags)} "
                f"(given: {', '.join(option_flag(fields[name]) for name in given) or 'none'})"
            )
    if Path(options.output).suffix.lower() != ".mp4":
        raise GenerationError(f"--output {options.output} must end in .mp4")
    if options.num_conditional_frames > 0 and not options.input:
        raise GenerationError(
            f"--num-conditional-frames {options.num_conditional_frames} needs --input: the video(s) whose first "
            "frames condition the sample (same layout as --control)"
        )
    if options.dtype is not None and options.dtype not in DTYPES:
        raise GenerationError(f"--dtype must be one of {list(DTYPES)}, got {options.dtype!r}")


def check_number(option: dataclasses.Field, value: Any) -> None:
    """Refuse a value of a number option outside its ``valid`` :class:`Interval`, naming the flag and the range."""
    valid = option.metadata.get("valid")
    if valid is None or value is None or value in valid:
        return
    kind = (
        "a whole number"
        if _value_type(typing.get_type_hints(GenerateOptions)[option.name]) is int
        else "a finite number"
    )
    default = "" if option.default is None else f", e.g. the default {option.default}"
    raise GenerationError(f"{option_flag(option)} {value}: must be {kind} {valid}. Fix: pass a value {valid}{default}")


def device_and_dtype(options: GenerateOptions) -> tuple[torch.device, torch.dtype]:
    """The device (a launch's GPU by default) and the dtype (bf16 on GPUs, fp32 on CPU by default)."""
    default = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"  # a launch's GPU
    device = torch.device(options.device or default)
    # Upstream runs the network, the VAE and the text encoder in bf16 on GPUs.
    return device, default_dtype(device, options.dtype)


def resolve_geometry(
    options: GenerateOptions, config: NetworkConfig, native: tuple[int, int, float, int], first_video: str | Path
) -> tuple[int, int, int, float]:
    """(num_frames, height, width, fps) from the options, defaulting to the network and the control video:
    ``native`` is that video's (height, width, fps, frames), ``first_video`` names it in messages."""
    native_h, native_w, native_fps, available = native
    num_frames = options.num_frames or pixel_num_frames(config.state_t)
    if not options.num_frames and not config.is_multiview and available < num_frames:
        # Single view takes any 1 + 4k frames: default to as many as the control has, up to the native length.
        num_frames = largest_valid_frames(available)
        log.warning(
            "%s has %d frames: generating %d (the network's native length is %d)",
            first_video,
            available,
            num_frames,
            pixel_num_frames(config.state_t),
        )
    if num_frames < 1 or (num_frames - 1) % TEMPORAL_COMPRESSION:
        raise GenerationError(
            f"--num-frames {num_frames}: the Wan VAE needs 1 + 4k frames (e.g. {largest_valid_frames(num_frames)})"
        )
    if config.is_multiview and num_frames != pixel_num_frames(config.state_t):
        raise GenerationError(
            f"--num-frames {num_frames}: the multiview network generates exactly state_t={config.state_t} latent "
            f"frames per view, i.e. {pixel_num_frames(config.state_t)} frames. Fix: pass --num-frames "
            f"{pixel_num_frames(config.state_t)} (or --set state_t=... for a network trained that way)"
        )
    height, width = options.height or native_h, options.width or native_w
    multiple = SPATIAL_COMPRESSION * config.patch_spatial
    if height % multiple or width % multiple:
        raise GenerationError(
            f"height x width = {height} x {width}: both must be multiples of {multiple} (VAE 8x, patch "
            f"{config.patch_spatial}). Fix: pass --height and --width (e.g. {height // multiple * multiple} x "
            f"{width // multiple * multiple})"
        )
    return num_frames, height, width, options.fps or native_fps


# =============================================================================================
# Latent frames
# =============================================================================================
def view_indices(
    cameras: Optional[Sequence[str]],
    latent_frames_per_view: int,
    batch_size: int = 1,
    network_cameras: Sequence[str] = DEFAULT_CAMERAS,
) -> Optional[torch.Tensor]:
    """View id of every latent frame ``[B, V*t]`` for multiview (None for single view): each camera's
    position in ``network_cameras`` (the network's view-embedding rows)."""
    if not cameras:
        return None
    ids_B_V = torch.tensor([list(network_cameras).index(camera) for camera in cameras], dtype=torch.long).expand(
        batch_size, -1
    )
    return latent_view_indices(ids_B_V, latent_frames_per_view)


def conditioning_frames_to_latents(num_pixel_frames: int) -> int:
    """Pixel conditioning frames -> latent frames per view, as the official inference converts them."""
    return 0 if num_pixel_frames <= 0 else latent_num_frames(num_pixel_frames)


# =============================================================================================
# Generation
# =============================================================================================
def join_launch_as_context_parallel(device: torch.device, num_heads: int):
    """Under a launcher (`composer -n N`, `torchrun`), all N processes sample the one video together, each
    running its share of the frames and heads (context parallelism; the same video as one process).
    Returns this rank's `ContextParallel`, or None for a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return None
    try:
        check_context_parallel_size(world_size, num_heads, world_size)
    except ValueError as error:
        raise GenerationError(f"a launch of {world_size} processes samples with context parallelism: {error}") from None
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return context_parallel_groups(world_size)


def lora_adapter_note(checkpoint: str) -> Optional[str]:
    """What to say about a checkpoint file with ``lora_adapter/`` beside it, None for any other.

    Such a file is the export of a LoRA run (checkpoint/export.py), which writes the adapters there either way:
    merged into the file's weights by default, left out of them with ``--no-merge``. Nothing in the folder
    records which, and generation loads the file alone, so a ``--no-merge`` export samples the base network.
    """
    path = Path(checkpoint)
    adapter = path.parent / LORA_ADAPTER_FOLDER
    if not path.is_file() or not adapter.is_dir():
        return None
    return (
        f"{adapter}/ is beside {path.name}: the LoRA adapters of a LoRA export, which generation does not load; "
        f"{path.name} holds them merged unless it was exported with --no-merge, and then it generates the base "
        "network without the LoRA. Fix for a --no-merge export: export the checkpoint again without --no-merge"
    )


def generate(options: GenerateOptions) -> list[Path]:
    """Run one generation as ``scripts/generate.py`` does; returns the mp4 files written (by rank 0 under a
    launcher of several processes, which sample with context parallelism: see `join_launch_as_context_parallel`)."""
    check_options(options)
    note = lora_adapter_note(options.checkpoint)
    if note and int(os.environ.get("RANK", "0")) == 0:
        log.warning(note)
    device, dtype = device_and_dtype(options)
    net, report = load_network(
        options.checkpoint,
        options.preset,
        options.overrides,
        weights=options.weights,
        strict=not options.allow_partial_load,
        device=device,
        dtype=dtype,
    )
    apply_context_parallel(net, join_launch_as_context_parallel(device, net.config.num_heads))
    is_rank_zero = net.context_parallel is None or int(os.environ.get("RANK", "0")) == 0
    if is_rank_zero:
        print(report.summary())
    is_multiview = net.config.is_multiview
    if options.cameras and not is_multiview:
        raise GenerationError("--cameras is only for multiview networks")

    # ---- videos
    cameras = select_cameras(options.cameras, net.config.view_cameras) if is_multiview else None
    control_files = video_files(options.control, cameras, "--control", options.sample)
    num_frames, height, width, fps = resolve_geometry(
        options, net.config, probe_size(control_files[0]), control_files[0]
    )
    size_given = options.height is not None and options.width is not None
    _resize_views(control_files, height, width, size_given, "--control", is_rank_zero)
    control_3_VT_H_W = read_views(control_files, num_frames, height, width, "--control")
    num_views = len(control_files)
    input_3_VT_H_W = None
    if options.num_conditional_frames > 0:
        input_files = video_files(options.input, cameras, "--input", options.sample)
        _resize_views(input_files, height, width, size_given, "--input", is_rank_zero)
        input_3_VT_H_W = read_views(input_files, conditioning_pixel_frames(options), height, width, "--input")

    # ---- text
    vae, text_embedder = build_generation_encoders(options, device, dtype)
    context, uncond_context = text_contexts(options, net, text_embedder, cameras, num_views)
    if text_embedder is not None:  # free the text encoder (7B) before sampling
        del text_embedder
        if device.type == "cuda":
            torch.cuda.empty_cache()

    # ---- sample
    latents = sample_latents(
        options, net, vae, control_3_VT_H_W, context, uncond_context, cameras, input_3_VT_H_W, is_rank_zero
    )
    return write_sample(vae, latents, num_views, options.output, fps, cameras) if is_rank_zero else []


def _resize_views(files: Sequence[Path], height: int, width: int, size_given: bool, what: str, say: bool) -> None:
    """Refuse views of mixed sizes without --height / --width; say which views the resize stretches."""
    stretched = check_view_sizes(files, height, width, size_given, what)
    if stretched and say:
        log.warning("%s: resizing to %d x %d changes the aspect ratio of %s", what, height, width, ", ".join(stretched))


def conditioning_pixel_frames(options: GenerateOptions) -> int:
    """Frames of ``--input`` to read for the conditioning frames: the causal VAE encodes the first n latent
    frames from the first 1 + 4(n - 1) frames alone."""
    return pixel_num_frames(conditioning_frames_to_latents(options.num_conditional_frames))


def needs_text_encoder(options: GenerateOptions) -> bool:
    """Whether the options name text to embed: the prompt, or the negative prompt when no embedding of it is given."""
    return options.prompt is not None or (options.use_negative_prompt and options.negative_text_embedding is None)


def build_generation_encoders(options: GenerateOptions, device: torch.device, dtype: torch.dtype):
    """``(vae, text_embedder)`` of the options; the text encoder only when there is text to embed (else None)."""
    vae, text_embedder = build_encoders(
        options.vae, options.text_encoder if needs_text_encoder(options) else None, device, dtype
    )
    if vae is None:
        raise GenerationError("--vae is required: the control video is encoded and the sample decoded with it")
    if needs_text_encoder(options) and text_embedder is None:
        raise GenerationError(
            "a text encoder is needed to embed the prompt or the negative prompt. Fix: pass --text-encoder "
            "(tiny, a path or an hf:// URI), or --text-embedding with --negative-text-embedding or --no-negative-prompt"
        )
    return vae, text_embedder


def text_contexts(
    options: GenerateOptions,
    net: CosmosTransferNet,
    text_embedder,
    cameras: Optional[Sequence[str]],
    num_views: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The text contexts ``[1, V*512, D]`` of the prompt (or ``--text-embedding``) and of the unconditional
    branch: the negative prompt (the official one by default), its cached embedding, or training's zero text.
    A rig's cameras get the caption prefixes it was trained with (``camera_origins`` of its network.json)."""
    camera_origins = dict(net.config.camera_origins)
    if options.prompt is not None:
        context = prompt_context(text_embedder, options.prompt, cameras, options.caption_mode, camera_origins)
    else:
        context = load_text_embedding(options.text_embedding, num_views)
    if options.negative_text_embedding is not None:
        uncond_context = load_text_embedding(options.negative_text_embedding, num_views, "--negative-text-embedding")
    else:
        negative = options.negative_prompt
        if negative is None and options.use_negative_prompt:
            negative = NEGATIVE_PROMPT_MULTIVIEW if net.config.is_multiview else NEGATIVE_PROMPT_SINGLEVIEW
        uncond_context = negative_context(
            net, text_embedder, context, negative, cameras, options.caption_mode, camera_origins
        )
    if uncond_context.shape[1] != context.shape[1]:
        raise GenerationError(
            f"the negative text embedding has {uncond_context.shape[1]} tokens, the prompt's {context.shape[1]}"
        )
    return context, uncond_context


@torch.no_grad()
def sample_latents(
    options: GenerateOptions,
    net: CosmosTransferNet,
    vae,
    control_3_VT_H_W: torch.Tensor,
    context: torch.Tensor,
    uncond_context: torch.Tensor,
    cameras: Optional[Sequence[str]],
    input_3_VT_H_W: Optional[torch.Tensor] = None,
    progress: bool = True,
) -> torch.Tensor:
    """Encode the control (and the conditioning frames of ``input_3_VT_H_W``, views along time) and run the
    sampler with the options' guidance, steps, shift, seed and control weight: the latents ``[1, 16, V*t, h, w]``.
    ``progress``: this process may show the bar (``options.progress`` must allow it too)."""
    device = next(net.parameters()).device
    num_views = len(cameras) if cameras else 1
    n_cond = conditioning_frames_to_latents(options.num_conditional_frames)
    control_latents = vae.encode_views(control_3_VT_H_W[None].to(device), num_views)
    latent_frames = control_latents.shape[2] // num_views
    condition_latents = None
    if n_cond:
        cond_1_C_Vn_h_w = vae.encode_views(input_3_VT_H_W[None].to(device), num_views)
        # Each view's first n latent frames in place, the rest zero: the layout of the control latents.
        condition_latents = torch.zeros_like(control_latents)
        for v in range(num_views):
            start = v * latent_frames
            condition_latents[:, :, start : start + n_cond] = cond_1_C_Vn_h_w[:, :, v * n_cond : (v + 1) * n_cond]
    conditioning = sampler.Conditioning(
        control=control_latents,
        context=context.to(device),
        uncond_context=uncond_context.to(device),
        num_views=num_views,
        view_indices_B_T=None
        if cameras is None
        else view_indices(cameras, latent_frames, network_cameras=net.config.view_cameras).to(device),
        condition_latents=condition_latents,
        num_conditional_frames=n_cond,
        control_weight=options.control_weight,
    )
    return sampler.sample(
        net,
        conditioning,
        guidance=options.guidance,
        num_steps=options.steps,
        shift=options.shift,
        seed=sampler.official_inference_seed(options.seed, net.config.is_multiview),  # the official inference's noise
        progress=options.progress and progress,
    )
