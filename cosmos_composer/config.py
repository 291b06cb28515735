"""Training configuration: a YAML file plus dot-list overrides, validated against a schema.

`composer train.py yamls/hdmap.yaml max_duration=10ba model.train_base=true` works as in llm-foundry.
Every section is a dataclass, so a misspelled key stops the run before anything is built, with the
list of valid keys at that level.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import math
import os
import tokenize
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from composer.core import Time
from composer.utils.parallelism import FSDP2Config
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, KeyValidationError, ValidationError

from .callbacks.registry import CALLBACKS
from .data.cameras import parse_cameras
from .data.layouts import MULTIVIEW_HDMAP, SINGLEVIEW, normalize_control_key
from .diffusion.objective import ObjectiveConfig
from .encoders.vae import TEMPORAL_COMPRESSION, latent_num_frames
from .loggers import LOGGERS, wandb_credentials_found
from .models import PRESETS, NetworkConfig, get_config
from .models.context_parallel import check_context_parallel_size, valid_context_parallel_sizes
from .models.lora import LORA_TARGETS
from .optim import OptimizerConfig, SchedulerConfig


@dataclass
class LoraConfig:
    """LoRA adapters (PEFT) on the attention (q/k/v/output) and MLP projections of the blocks `target` names.

    The defaults are upstream's `use_lora` config (cosmos_transfer2/_src/predict2/models/text2world_model.py:
    lora_rank=32, lora_alpha=32, PEFT's dropout 0); the update is W + (alpha / rank) * B @ A.
    """

    rank: int = 32
    alpha: float = 32.0
    dropout: float = 0.0  # on each adapter's input (PEFT's lora_dropout)
    target: str = "base"  # base, control or base_and_control


@dataclass
class ModelConfig:
    preset: str = MISSING
    # Network config overrides by official names, e.g. {activation_checkpointing: true}.
    overrides: dict[str, Any] = field(default_factory=dict)
    train_base: bool = False  # the released recipe trains only the control branch
    # torch.compile every (control) block (parameter names unchanged); measure it with
    # `scripts/benchmark.py --section trainer --set model.compile_blocks=true` before turning it on.
    compile_blocks: bool = False
    # LoRA adapters, e.g. {rank: 32, alpha: 32, dropout: 0, target: base} (`model.lora={}`: upstream's defaults);
    # null: no LoRA. Not with train_base=true (that trains every weight already).
    lora: Optional[LoraConfig] = None
    use_ema: bool = True
    # The control the model is trained on (`control_input_<key>` of the batch): hdmap_bbox, edge or vis for
    # multiview; depth, seg, edge or vis for single view; blur is accepted for vis.
    control_key: str = "hdmap_bbox"
    # The objective: the released multiview recipe's, whose values diffusion/objective.py's ObjectiveConfig holds.

    # The shift of the logit-normal training sigma (upstream rectified_flow.py).
    sigma_shift: float = ObjectiveConfig.sigma_shift
    # Probabilities of 0, 1 or 2 clean conditioning frames per view (single-view recipe: {0: 0.4, 1: 0.4, 2: 0.2}).
    conditional_frames_probs: dict[int, float] = field(
        default_factory=lambda: ObjectiveConfig().conditional_frames_probs
    )
    # per sample, all views together (upstream's TextAttr dropout)
    text_dropout_rate: float = ObjectiveConfig.text_dropout_rate
    # The eval loss is measured at each of these fixed sigmas.
    eval_sigmas: list[float] = field(default_factory=lambda: list(ObjectiveConfig.eval_sigmas))
    # seeds the eval noise: the same at every eval, so eval losses compare between runs
    eval_seed: int = ObjectiveConfig.eval_seed


@dataclass
class EncodersConfig:
    """Frozen encoders, used when the shards do not carry cached latents / text embeddings.

    Each is a local path, an `hf://org/repo[/file][@revision]` URI, `tiny` (random CPU-sized
    weights, for tests and the quickstart) or null (then the shards must carry the cached columns).
    """

    vae: Optional[str] = None
    text: Optional[str] = None


@dataclass
class DatasetConfig:
    local: str = MISSING
    remote: Optional[str] = None
    split: Optional[str] = None
    num_frames: int = 29  # pixel frames per view (29 -> 8 latent frames)
    height: int = 720
    width: int = 1280
    random_start: bool = False
    shuffle: bool = True
    shuffle_seed: int = 0
    decode_video: bool = True  # false: serve only cached latents (faster)
    # Serve the shards' cached latents when they have them; false: decode and encode online with encoders.vae.
    use_cached_latents: bool = True
    # Serve the shards' cached text embeddings when they have them; false: embed online with encoders.text.
    use_cached_text: bool = True
    # Random edge thresholds and blur strengths per sample, as upstream trains; false: its fixed "medium" ones.
    random_control_params: bool = True
    # Seeds each sample's random start frame and control parameters from (augment_seed, epoch, sample index),
    # so a resumed run sees the same ones.
    augment_seed: int = 0
    # Optional demo data: generated and converted if `local` does not exist (quickstart only).
    demo_if_missing: bool = False
    # Multiview: the rig's cameras in view order (view id = position; the network has one view-embedding row per
    # camera, model.overrides.n_cameras_emb = their number). null: the 7 official cameras (data/cameras.py).
    # `CAM_FRONT=camera_front_wide_120fov` starts a camera from an official one: its row and caption prefix.
    cameras: Optional[list[str]] = None


@dataclass
class LoaderConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    num_workers: int = 4
    pin_memory: bool = True
    drop_last: bool = True
    prefetch_factor: Optional[int] = 2


@dataclass
class TrainConfig:
    run_name: str = MISSING
    project: str = "cosmos_composer"
    group: str = "default"
    seed: int = 0
    max_duration: str = MISSING
    global_train_batch_size: int = MISSING
    device_train_microbatch_size: Any = "auto"
    precision: str = "amp_bf16"
    model: ModelConfig = field(default_factory=ModelConfig)
    encoders: EncodersConfig = field(default_factory=EncodersConfig)
    train_loader: LoaderConfig = field(default_factory=LoaderConfig)
    eval_loader: Optional[LoaderConfig] = None
    eval_interval: str = "1ep"
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    grad_clip_norm: float = 0.1
    # Composer's parallelism config: {fsdp: {...FSDP2Config keys...}}; null for one process.
    parallelism_config: Optional[dict[str, Any]] = None
    # Ranks that share one sample (Ulysses sequence parallelism): each runs 1/N of its latent frames and
    # 1/N of the attention heads. It divides the heads (16 in the 2B) and the processes; the data-parallel
    # size is processes / N, and global_train_batch_size counts samples, so it is a multiple of that.
    # auto: the largest N that also divides the sample's latent frames and leaves data-parallel groups that
    # split global_train_batch_size; with a batch of 1 that is N = processes (upstream sets it from WORLD_SIZE).
    context_parallel_size: Any = 1
    # Where run folders go: <output_root>/<project>/<group>/<run_name>; a relative path is relative to the
    # current directory. null: $COSMOS_OUTPUT_ROOT, else $IMAGINAIRE_OUTPUT_ROOT, else /tmp/cosmos-composer-output.
    output_root: Optional[str] = None
    # Checkpoints. save_folder defaults to <run folder>/checkpoints.
    save_folder: Optional[str] = None
    save_interval: Optional[str] = "200ba"  # null: no checkpoints and no autoresume (benchmarks, smoke tests)
    save_num_checkpoints_to_keep: int = -1
    save_overwrite: bool = False
    autoresume: bool = True
    # A Composer checkpoint to resume, or a consolidated .pt / hf:// URI to start from.
    load_path: Optional[str] = None
    load_strict: bool = True
    # Also drop (and print) tensors whose shape differs from the network's instead of failing.
    load_allow_shape_mismatch: bool = False
    # A Predict2.5-2B checkpoint (a fine-tuned base DiT: consolidated .pt, hf:// URI or Composer checkpoint
    # folder) whose base weights load strictly (its EMA when it has one); the control branch then starts from
    # it as a new Transfer training does. Ignored when load_path is set or the run resumes.
    base_load_path: Optional[str] = None
    loggers: Optional[dict[str, Any]] = None
    callbacks: dict[str, Any] = field(default_factory=dict)  # name: kwargs; `callbacks.<name>=null` turns one off
    console_log_interval: str = "1ba"
    progress_bar: bool = True
    log_to_console: bool = False
    dist_timeout: float = 600.0
    # Non-finite losses in a row that a run steps over (their non-finite gradients zeroed, as upstream's
    # force_finite clip does) before it stops; 0: the first one stops the run, naming the batch.
    max_nonfinite_steps: int = 0
    # Cap each process's CUDA memory (GiB), e.g. 80 to run as on an 80 GB card; null: the whole GPU.
    gpu_memory_cap_gib: Optional[float] = None


class ConfigError(ValueError):
    pass


# `context_parallel_size: auto`: the size is taken from the launch (`resolve_context_parallel_size`).
AUTO_CONTEXT_PARALLEL = "auto"


def output_root(configured: Optional[str] = None) -> Path:
    """The config's `output_root`, else `COSMOS_OUTPUT_ROOT`, else `IMAGINAIRE_OUTPUT_ROOT` (the official
    variable), else /tmp."""
    root = configured or os.environ.get("COSMOS_OUTPUT_ROOT") or os.environ.get("IMAGINAIRE_OUTPUT_ROOT")
    return Path(root or "/tmp/cosmos-composer-output")


def run_folder(cfg: TrainConfig | DictConfig) -> Path:
    """Where a run keeps its files: checkpoints/, samples/, config.yaml, metrics.jsonl, loss.png, summary.json."""
    return output_root(cfg.output_root) / cfg.project / cfg.group / cfg.run_name


def _valid_keys_message(full_key: str) -> str:
    """The valid keys at the level of `full_key` in the schema."""
    node = OmegaConf.structured(TrainConfig)
    parts = [p for p in full_key.split(".")[:-1] if p]
    for part in parts:
        child = node.get(part) if isinstance(node, DictConfig) else None
        if child is None or not isinstance(child, DictConfig):
            # Optional sections default to None; show the schema of their type instead.
            child = OmegaConf.structured({"eval_loader": LoaderConfig, "lora": LoraConfig}.get(part, {}))
        node = child
    keys = sorted(node.keys()) if isinstance(node, DictConfig) else []
    where = ".".join(parts) or "the top level"
    return f"valid keys at {where}: {keys}"


# Dicts that a value replaces instead of merging into: `conditional_frames_probs={1: 1.0}` means "always one
# conditioning frame", which a merge with the default {0: .5, 1: .25, 2: .25} would silently turn into garbage.
REPLACED_WHOLE = ("model.conditional_frames_probs",)


def _merge_replacing_whole(base: DictConfig, update: DictConfig) -> DictConfig:
    """`OmegaConf.merge(base, update)`, except that the keys of `REPLACED_WHOLE` set in `update` replace `base`'s."""
    merged = OmegaConf.merge(base, update)
    for key in REPLACED_WHOLE:
        value = OmegaConf.select(update, key, default=None)
        if value is not None:
            OmegaConf.update(merged, key, value, merge=False)
    return merged


def load_config(yaml_path: str | os.PathLike, overrides: list[str] | None = None) -> DictConfig:
    """Read a YAML, apply `key=value` overrides, validate against `TrainConfig`.

    Unknown keys, wrong types and missing required values raise `ConfigError` naming the key.
    """
    yaml_path = Path(yaml_path)
    if not yaml_path.is_file():
        raise ConfigError(f"Config file {yaml_path} does not exist")
    schema = OmegaConf.structured(TrainConfig)
    try:
        user = OmegaConf.load(yaml_path)
        if overrides:
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise ConfigError(f"Overrides must look like key=value, got {bad}")
            user = _merge_replacing_whole(user, OmegaConf.from_dotlist(overrides))
        cfg = _merge_replacing_whole(schema, user)
    except ConfigKeyError as e:
        key = e.full_key or str(e)
        raise ConfigError(f"Unknown config key '{key}' in {yaml_path}; {_valid_keys_message(key)}") from None
    except (ValidationError, KeyValidationError) as e:
        raise ConfigError(f"Invalid value for '{e.full_key}' in {yaml_path}: {e.msg}") from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"Missing required config value(s) {missing} in {yaml_path}")
    _validate_sections(cfg, yaml_path)
    network = _validate_values(cfg, yaml_path)
    # The one place an alias (blur) becomes its canonical key (vis): the model, the datasets and config.yaml see it.
    cfg.model.control_key = normalize_control_key(cfg.model.control_key, layout_of(network))
    return cfg


def base_network(model: DictConfig) -> NetworkConfig:
    """The network `model.preset` with `model.overrides` (a ValueError or TypeError for bad overrides)."""
    return get_config(model.preset, **OmegaConf.to_container(model.overrides))


def layout_of(network: NetworkConfig) -> str:
    """The data layout a network trains on: multiview-hdmap or singleview."""
    return MULTIVIEW_HDMAP if network.is_multiview else SINGLEVIEW


def network_and_overrides(cfg: DictConfig) -> tuple[NetworkConfig, dict[str, Any]]:
    """The network a run trains, and the `build_network` keywords that make it: `model.overrides` plus, for a
    multiview run with `train_loader.dataset.cameras`, `camera_names` (the network names its view-embedding rows
    after the rig's cameras) and `camera_origins` when some start from an official camera (`name=official`);
    both are saved in network.json with the weights. The one place the config becomes a network config."""
    network = base_network(cfg.model)
    overrides = OmegaConf.to_container(cfg.model.overrides)
    cameras = cfg.train_loader.dataset.cameras if cfg.get("train_loader") is not None else None
    if cameras and network.is_multiview:
        rig = parse_cameras(list(cameras), "train_loader.dataset.cameras")
        overrides["camera_names"] = list(rig.names)
        if rig.origins:
            overrides["camera_origins"] = [[camera, official] for camera, official in rig.origins.items()]
        network = dataclasses.replace(
            network, camera_names=overrides["camera_names"], camera_origins=overrides.get("camera_origins", ())
        )
        network.validate()
    return network, overrides


def _camera_problems(cfg: DictConfig, network: NetworkConfig) -> list[tuple[str, Any, str]]:
    """The rig's camera lists against each other and against the network's view-embedding rows."""
    problems = []
    loaders = [name for name in ("train_loader", "eval_loader") if cfg.get(name) is not None]
    rigs = {}  # loader -> its parsed camera list
    for loader in loaders:
        key, cameras = f"{loader}.dataset.cameras", cfg[loader].dataset.cameras
        if cameras is None:
            continue
        if not network.is_multiview:
            problems.append((key, list(cameras), "null for a single-view network (cameras are for multiview)"))
            continue
        try:
            rigs[loader] = parse_cameras(list(cameras), key)
        except ValueError as error:
            problems.append((key, list(cameras), str(error)))
    if not network.is_multiview or not loaders or problems:
        return problems
    default = parse_cameras(None, "")
    train_rig = rigs.get(loaders[0], default)
    train = train_rig.names
    if len(train) != network.n_cameras_emb:
        problems.append(
            (
                f"{loaders[0]}.dataset.cameras",
                list(train),
                f"{network.n_cameras_emb} cameras (model.overrides.n_cameras_emb), one per view-embedding row; "
                f"or set model.overrides.n_cameras_emb: {len(train)}",
            )
        )
    if network.camera_names and tuple(network.camera_names) != train:
        problems.append(
            ("model.overrides.camera_names", list(network.camera_names), f"left out, or equal to {list(train)}")
        )
    if network.camera_origins and dict(network.camera_origins) != train_rig.origins:
        problems.append(
            (
                "model.overrides.camera_origins",
                [list(pair) for pair in network.camera_origins],
                "left out (train_loader.dataset.cameras sets it from its name=official entries)",
            )
        )
    for loader in loaders[1:]:
        if rigs.get(loader, default) != train_rig:
            problems.append(
                (
                    f"{loader}.dataset.cameras",
                    cfg[loader].dataset.cameras,
                    f"the train cameras {list(cfg[loaders[0]].dataset.cameras or train)}",
                )
            )
    return problems


def _validate_sections(cfg: DictConfig, yaml_path: Path) -> None:
    for name in cfg.loggers or {}:
        if name not in LOGGERS:
            raise ConfigError(f"Unknown logger '{name}' in {yaml_path}; known loggers: {list(LOGGERS)}")
    for name in cfg.callbacks or {}:
        if name not in CALLBACKS:
            raise ConfigError(f"Unknown callback '{name}' in {yaml_path}; known callbacks: {sorted(CALLBACKS)}")
    parallelism = cfg.parallelism_config or {}
    for section in parallelism:
        if section != "fsdp":
            raise ConfigError(f"Unknown parallelism_config section '{section}' in {yaml_path}; only 'fsdp' (FSDP2)")
    valid_fsdp = FSDP2Config.settable_attrs() - {"device_mesh"}
    for key in parallelism.get("fsdp") or {}:
        if key not in valid_fsdp:
            raise ConfigError(
                f"Unknown key 'parallelism_config.fsdp.{key}' in {yaml_path}; valid keys: {sorted(valid_fsdp)}"
            )


# ----------------------------------------------------------------------------- values
PRECISIONS = ("fp32", "amp_bf16", "amp_fp16", "amp_fp8")  # Composer's; amp_* need a GPU (check_precision)


def _duration(value: Any) -> Optional[str]:
    """Why `value` is not a positive Composer duration (`10ba`, `1ep`, `500sp`), or None when it is one."""
    try:
        time = Time.from_timestring(str(value))
    except ValueError:
        return "not a duration: use a number and a unit, e.g. 5000ba (batches), 2ep (epochs) or 1000sp (samples)"
    return None if time.value > 0 else "must be positive"


def _value_problems(cfg: DictConfig) -> tuple[list[tuple[str, Any, str]], Optional[NetworkConfig]]:
    """(key, value, what is wrong and what is valid) for every value of the config outside its range, and the
    network of `model.preset` and `model.overrides` (None when they do not make one)."""
    problems: list[tuple[str, Any, str]] = []

    def check(key: str, ok: bool, valid: str) -> None:
        if not ok:
            problems.append((key, OmegaConf.select(cfg, key), valid))

    def positive(key: str) -> None:
        value = OmegaConf.select(cfg, key)
        check(key, isinstance(value, (int, float)) and math.isfinite(value) and value > 0, "a number > 0")

    def fraction(key: str, value: Any) -> bool:
        return isinstance(value, (int, float)) and 0 <= value <= 1

    model = cfg.model
    network = None
    check("model.preset", model.preset in PRESETS, f"one of {sorted(PRESETS)}")
    if model.preset in PRESETS:
        try:
            network = base_network(model)
        except (TypeError, ValueError) as error:
            check("model.overrides", False, str(error))
        else:
            try:
                normalize_control_key(model.control_key, layout_of(network))
            except ValueError as error:
                check("model.control_key", False, str(error))
    positive("model.sigma_shift")
    check("model.text_dropout_rate", fraction("", model.text_dropout_rate), "between 0 and 1")
    probs = dict(model.conditional_frames_probs)
    check(
        "model.conditional_frames_probs",
        bool(probs)
        and all(int(k) >= 0 and fraction("", v) for k, v in probs.items())
        and abs(sum(probs.values()) - 1) < 1e-6,
        "probabilities >= 0 of frame counts >= 0 that sum to 1",
    )
    check("model.eval_sigmas", all(0 < s < 1 for s in model.eval_sigmas), "sigmas strictly between 0 and 1")
    check("model.eval_seed", model.eval_seed >= 0, "an integer >= 0")
    if model.lora is not None:
        check("model.lora.rank", model.lora.rank > 0, "an integer > 0")
        positive("model.lora.alpha")
        check("model.lora.dropout", 0 <= model.lora.dropout < 1, "a probability in [0, 1)")
        check("model.lora.target", model.lora.target in LORA_TARGETS, f"one of {list(LORA_TARGETS)}")
        check(
            "model.lora", not model.train_base, "null with model.train_base=true (a full fine-tune trains every weight)"
        )

    check("precision", cfg.precision in PRECISIONS, f"one of {list(PRECISIONS)}")
    for key in ("max_duration", "eval_interval", *(["save_interval"] if cfg.save_interval is not None else [])):
        why = _duration(OmegaConf.select(cfg, key))
        check(key, why is None, why or "")
    positive("global_train_batch_size")
    micro = cfg.device_train_microbatch_size
    uses_fsdp2 = bool(cfg.parallelism_config and cfg.parallelism_config.get("fsdp") is not None)
    context_parallel_size = cfg.context_parallel_size
    is_size = isinstance(context_parallel_size, int) and not isinstance(context_parallel_size, bool)
    check(
        "context_parallel_size",
        context_parallel_size == AUTO_CONTEXT_PARALLEL or (is_size and context_parallel_size >= 1),
        f"an integer >= 1 or '{AUTO_CONTEXT_PARALLEL}'",
    )
    if is_size and context_parallel_size > 1:
        check(
            "context_parallel_size",
            uses_fsdp2,
            "1 without parallelism_config.fsdp (context parallelism runs under FSDP2)",
        )
    check(
        "device_train_microbatch_size",
        (isinstance(micro, int) and micro > 0) or (micro == "auto" and not uses_fsdp2),
        "an integer > 0" + (" ('auto' is not supported by Composer with FSDP2)" if uses_fsdp2 else " or 'auto'"),
    )

    positive("optimizer.lr")
    positive("optimizer.eps")
    check("optimizer.weight_decay", cfg.optimizer.weight_decay >= 0, "a number >= 0")
    check(
        "optimizer.betas",
        len(cfg.optimizer.betas) == 2 and all(0 <= b < 1 for b in cfg.optimizer.betas),
        "two numbers in [0, 1)",
    )
    positive("grad_clip_norm")
    sched = cfg.scheduler
    check("scheduler.warm_up_steps", 0 <= sched.warm_up_steps < sched.cycle_length, "0 <= warm_up_steps < cycle_length")
    for key in ("f_start", "f_max", "f_min"):
        check(f"scheduler.{key}", sched[key] >= 0, "a number >= 0")
    for loader in ("train_loader", "eval_loader"):
        if cfg[loader] is None:
            continue
        ds = cfg[loader].dataset
        for key in ("num_frames", "height", "width"):
            positive(f"{loader}.dataset.{key}")
        check(f"{loader}.dataset.augment_seed", ds.augment_seed >= 0, "an integer >= 0")
        check(
            f"{loader}.dataset.use_cached_latents",
            ds.use_cached_latents or ds.decode_video,
            "true with decode_video=false (then the cached latents are all there is to train from)",
        )
        check(
            f"{loader}.dataset.use_cached_latents",
            ds.use_cached_latents or cfg.encoders.vae is not None,
            "true when encoders.vae is null (nothing else makes the latents)",
        )
        check(
            f"{loader}.dataset.use_cached_text",
            ds.use_cached_text or cfg.encoders.text is not None,
            "true when encoders.text is null (nothing else makes the text embeddings)",
        )
        check(f"{loader}.num_workers", cfg[loader].num_workers >= 0, "an integer >= 0")
    if network is not None:
        problems += _camera_problems(cfg, network)
    if cfg.gpu_memory_cap_gib is not None:
        positive("gpu_memory_cap_gib")
    power_ema = (cfg.callbacks or {}).get("power_ema")
    check(
        "model.use_ema",
        model.use_ema or power_ema is None,
        "true while callbacks.power_ema is configured (it updates the EMA network); or set callbacks.power_ema=null",
    )
    check("max_nonfinite_steps", cfg.max_nonfinite_steps >= 0, "an integer >= 0")
    return problems, network


def _validate_values(cfg: DictConfig, yaml_path: Path) -> NetworkConfig:
    """Every value problem at once in one ConfigError; else the network of `model.preset` and `model.overrides`."""
    problems, network = _value_problems(cfg)
    if problems:
        lines = [f"  {key}={value!r}: {valid}" for key, value, valid in problems]
        raise ConfigError(f"Invalid value(s) in {yaml_path} (with its overrides):\n" + "\n".join(lines))
    return network


# ----------------------------------------------------------------------------- preflight
# The checks that need the launch (its processes, its GPU, the files): `run_plan.plan_run` runs them before anything
# heavy is built, so a bad run fails in seconds.
def check_launch(cfg: DictConfig, network: NetworkConfig, world_size: int, has_gpu: bool) -> None:
    """Every launch check: dataset and output folders, W&B credentials, precision, context parallelism, the batch's
    split."""
    check_dataset_paths(cfg)
    check_output_folders(cfg)
    check_wandb_credentials(cfg)
    check_precision(cfg.precision, has_gpu)
    check_context_parallel(cfg, network, world_size)
    check_batch_split(cfg, world_size)


def check_dataset_paths(cfg: DictConfig) -> None:
    """A dataset folder that does not exist (and that no remote or demo fills)."""
    loaders = {"train_loader": cfg.train_loader, "eval_loader": cfg.eval_loader}
    for section, loader in loaders.items():
        if loader is None:
            continue
        dataset = loader.dataset
        if dataset.remote is None and not dataset.demo_if_missing and not Path(dataset.local).exists():
            raise ConfigError(
                f"{section}.dataset.local={dataset.local!r} does not exist. Convert your dataset first "
                f"(python scripts/convert_to_mds.py --layout ... --input <folder> --output {dataset.local}), "
                f"or set {section}.dataset.remote to where the shards are"
            )


def check_output_folders(cfg: DictConfig) -> None:
    """The run folder and a local save_folder must be folders this process can create and write: a file in the
    way, or a read-only parent, is said now with the key to change (an object-store save_folder is listed once the
    run starts: `run_setup.resolve_inputs`)."""
    if cfg.save_folder is not None and "://" in cfg.save_folder and cfg.save_num_checkpoints_to_keep != -1:
        raise ConfigError(
            f"save_num_checkpoints_to_keep={cfg.save_num_checkpoints_to_keep} with save_folder={cfg.save_folder!r}: "
            "Composer 0.32 never deletes checkpoints from an object store; set save_num_checkpoints_to_keep=-1 and "
            "expire old checkpoints with the bucket's lifecycle rules"
        )
    folders = {"output_root": run_folder(cfg)}
    if cfg.save_folder is not None and "://" not in cfg.save_folder:
        folders["save_folder"] = Path(cfg.save_folder)
    for key, folder in folders.items():
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        where = f"{key}={OmegaConf.select(cfg, key)!r}"
        if not existing.is_dir():
            raise ConfigError(f"{where}: {existing} is a file, not a folder; move it away or set {key} elsewhere")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"{where}: {existing} is not writable by this user; set {key} to a writable folder")


# WANDB_MODE values with which W&B logs without logging in.
WANDB_LOCAL_MODES = ("offline", "disabled", "dryrun")


def check_wandb_credentials(cfg: DictConfig) -> None:
    """W&B configured without credentials (and without WANDB_MODE=offline): stop now, naming both fixes."""
    if "wandb" not in (cfg.loggers or {}) or os.environ.get("WANDB_MODE", "").lower() in WANDB_LOCAL_MODES:
        return
    if not wandb_credentials_found():
        raise ConfigError(
            "W&B logging is configured (`loggers: wandb:`) but no W&B credentials were found. "
            "Either log in (`wandb login`, or set WANDB_API_KEY), or set WANDB_MODE=offline to log "
            "locally; to turn W&B off, delete the `loggers` section or pass `loggers=null`."
        )


def check_precision(precision: str, has_gpu: bool) -> None:
    """Composer trains amp_* precisions on GPUs only: say so before the model is built, not after."""
    if precision != "fp32" and not has_gpu:
        raise ConfigError(f"precision={precision!r} needs a GPU, and this machine has none; use precision=fp32")


def check_context_parallel(cfg: DictConfig, network: NetworkConfig, world_size: int) -> None:
    """A context_parallel_size that cannot split the heads, the processes or the sample's latent frames."""
    size = cfg.context_parallel_size
    try:
        check_context_parallel_size(size, network.num_heads, world_size)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    num_frames = cfg.train_loader.dataset.num_frames
    latent_frames = latent_num_frames(num_frames)
    if not network.is_multiview and latent_frames % size:  # multiview: views x frames, checked at the first batch
        raise ConfigError(
            f"context_parallel_size={size} does not divide the {latent_frames} latent frames of "
            f"train_loader.dataset.num_frames={num_frames}; choose num_frames = "
            f"1 + {TEMPORAL_COMPRESSION} k with 1 + k a multiple of {size}"
        )


def resolve_context_parallel_size(cfg: DictConfig, network: NetworkConfig, world_size: int) -> int:
    """`context_parallel_size` for a launch of `world_size` processes, `auto` resolved: the largest size that
    splits the network's heads, the processes and the sample's latent frames (views x frames in multiview) into
    whole shares and whose data-parallel groups (processes / size) split global_train_batch_size; 1 without
    FSDP2 (context parallelism runs under it). An integer is returned as it is (`check_launch` checks it)."""
    size = cfg.context_parallel_size
    if size != AUTO_CONTEXT_PARALLEL:
        return size
    frames = latent_num_frames(cfg.train_loader.dataset.num_frames) * max(network.n_cameras_emb, 1)
    uses_fsdp2 = bool(cfg.parallelism_config and cfg.parallelism_config.get("fsdp") is not None)
    sizes = valid_context_parallel_sizes(network.num_heads, world_size, frames) if uses_fsdp2 else [1]
    batch = cfg.global_train_batch_size
    fitting = [n for n in sizes if batch % (world_size // n) == 0]
    if not fitting:
        raise ConfigError(
            f"context_parallel_size=auto: no size fits {world_size} processes with global_train_batch_size={batch}: "
            f"the sizes that split the network's {network.num_heads} heads, the processes and the sample's {frames} "
            f"latent frames{'' if uses_fsdp2 else ' without parallelism_config.fsdp'} are {sizes}, leaving "
            f"{[world_size // n for n in sizes]} data-parallel groups, none of which divides {batch}; set "
            f"global_train_batch_size to a multiple of {world_size // sizes[-1]}, or set context_parallel_size and "
            "global_train_batch_size explicitly"
        )
    return fitting[-1]


def check_batch_split(cfg: DictConfig, world_size: int) -> None:
    """global_train_batch_size must split evenly over the data-parallel groups (processes / context_parallel_size)."""
    data_parallel_size = world_size // cfg.context_parallel_size
    if cfg.global_train_batch_size % data_parallel_size:
        raise ConfigError(
            f"global_train_batch_size={cfg.global_train_batch_size} is not divisible by the {data_parallel_size} "
            f"data-parallel groups ({world_size} processes / context_parallel_size={cfg.context_parallel_size})"
        )


# ----------------------------------------------------------------------------- --help
def _field_comments(cls: type) -> dict[str, str]:
    """The comments of a dataclass's fields in its source: the comment lines just above a field and the one
    at the end of its line."""
    source = inspect.getsource(cls)
    comments = {}  # line number -> comment text
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    found = {}
    for number, line in enumerate(lines, start=1):
        name = line.strip().split(":", 1)[0]
        if not name.isidentifier() or name not in cls.__dataclass_fields__:
            continue
        parts, previous = [], number - 1
        while previous in comments and lines[previous - 1].lstrip().startswith("#"):  # a comment-only line
            parts.insert(0, comments[previous])
            previous -= 1
        if number in comments:
            parts.append(comments[number])
        found[name] = " ".join(parts)
    return found


def _section_doc(cls: type) -> str:
    """The first paragraph of a section's docstring (dataclasses make one up from the signature: skipped)."""
    doc = cls.__doc__ or ""
    return "" if doc.startswith(cls.__name__ + "(") else " ".join(doc.strip().split("\n\n")[0].split())


def _yaml_value(value: Any) -> str:
    """`value` as it would be written in a YAML: `auto`, `null`, `[0.9, 0.999]`, `{0: 0.5}`."""
    return yaml.safe_dump([value], default_flow_style=True, width=10**6).strip()[1:-1]


def _describe(cls: type, indent: str, described: dict) -> list[str]:
    """One line per key of `cls` (nested sections indented); `described`: sections listed already, by type."""
    lines = []
    comments = _field_comments(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        comment = comments.get(f.name) or ""
        section = next(
            (t for t in (hints[f.name], *typing.get_args(hints[f.name])) if dataclasses.is_dataclass(t)), None
        )
        if section is not None:
            comment = comment or _section_doc(section)
            if section in described:  # e.g. eval_loader: the keys of train_loader
                comment = f"or a section with the keys of {described[section]}"
            lines.append(
                f"{indent}{f.name}:{' null' if f.default is None else ''}{f'  # {comment}' if comment else ''}"
            )
            if section not in described:
                described[section] = f.name
                lines += _describe(section, indent + "  ", described)
            continue
        if f.default is not dataclasses.MISSING:
            shown = "(required)" if f.default == MISSING else _yaml_value(f.default)
        else:
            shown = _yaml_value(f.default_factory())
        lines.append(f"{indent}{f.name}: {shown}{f'  # {comment}' if comment else ''}")
    return lines


def describe_config() -> str:
    """Every config key with its default and comment, generated from the dataclasses above (`train.py --help`)."""
    return "\n".join(
        [
            "Config keys (YAML, or key=value overrides), with their defaults:",
            *_describe(TrainConfig, "  ", {}),
            f"Loggers (under loggers:): {', '.join(LOGGERS)}.",
            f"Callbacks (under callbacks:): {', '.join(sorted(CALLBACKS))}.",
        ]
    )
