"""LoRA adapters on the DiT's attention and MLP projections, through PEFT (`model.lora` of the config).

Upstream's `use_lora` (cosmos_transfer2/_src/predict2/models/text2world_model.py) injects PEFT LoRA with
`inject_adapter_in_model` into the modules named `q_proj, k_proj, v_proj, output_proj, mlp.layer1, mlp.layer2`
(rank 32, alpha 32). Here the same projections get adapters, in the blocks `target` names:

- `base`: the frozen base blocks (`blocks.*`); the control branch trains fully, as without LoRA.
- `control`: the control blocks (`control_blocks.*`) instead of training them fully; every other weight is frozen.
- `base_and_control`: both.

Names. PEFT turns each targeted `nn.Linear` `X` into a LoRA layer that keeps the frozen Linear as `X.base_layer`
and holds the adapter as `X.lora_A.default` (rank x in) and `X.lora_B.default` (out x rank, zero-initialised):
`blocks.0.self_attn.q_proj.weight` becomes `blocks.0.self_attn.q_proj.base_layer.weight` beside
`...q_proj.lora_A.default.weight` and `...q_proj.lora_B.default.weight`. A LoRA run's Composer checkpoints hold
these names; its `network.json` records the LoRA settings (`lora`); the export merges each adapter into its
official key, `W + (alpha / rank) * B @ A`, and writes the adapters alone in PEFT's format
(`adapter_model.safetensors` with PEFT's `base_model.model.<module>.lora_A.weight` names, `adapter_config.json`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, TypeVar

import torch
from torch import nn

from .dtensor import draw_into_
from .network import CONTROL_BRANCH_PREFIXES

# Upstream's default `lora_target_modules` (text2world_model.py), matched as PEFT matches them: name suffixes.
UPSTREAM_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "output_proj", "mlp.layer1", "mlp.layer2")
# `model.lora.target`: the block lists each puts adapters in. The frozen base blocks (the control branch trains
# fully, as without LoRA), the control blocks (instead of training them fully; all else frozen), or both.
TARGET_BLOCK_LISTS = {
    "base": ("blocks",),
    "control": ("control_blocks",),
    "base_and_control": ("blocks", "control_blocks"),
}
LORA_TARGETS = tuple(TARGET_BLOCK_LISTS)
ADAPTER_NAME = "default"  # PEFT's adapter name
BASE_LAYER = ".base_layer."  # the part PEFT inserts into the frozen Linear's names
_ADAPTER_PARTS = (f".lora_A.{ADAPTER_NAME}.", f".lora_B.{ADAPTER_NAME}.")
PEFT_PREFIX = "base_model.model."  # PeftModel's names in adapter_model.safetensors
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"  # PEFT's SAFETENSORS_WEIGHTS_NAME
ADAPTER_CONFIG_FILE = "adapter_config.json"  # PEFT's CONFIG_NAME

Value = TypeVar("Value")


@dataclass(frozen=True)
class LoraSettings:
    """`model.lora` as the network carries it (and as network.json records it)."""

    rank: int
    alpha: float
    dropout: float
    target: str

    @classmethod
    def of(cls, lora: Any) -> "LoraSettings":
        """From `model.lora` (a DictConfig or config.LoraConfig) or a network.json's `lora` mapping."""
        get = lora.get if isinstance(lora, Mapping) else lambda key: getattr(lora, key)
        settings = cls(int(get("rank")), float(get("alpha")), float(get("dropout")), str(get("target")))
        if settings.target not in TARGET_BLOCK_LISTS:
            raise ValueError(f"LoRA target {settings.target!r} is not one of {list(TARGET_BLOCK_LISTS)}")
        return settings

    @property
    def scale(self) -> float:
        """PEFT's `scaling` of the adapter output (no rsLoRA): alpha / rank."""
        return self.alpha / self.rank

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- the adapted network
def target_module_names(net: nn.Module, target: str) -> list[str]:
    """The full names of the Linear projections that get adapters (upstream's suffixes, in `target`'s blocks)."""
    prefixes = tuple(f"{blocks}." for blocks in TARGET_BLOCK_LISTS[target])
    return [
        name
        for name, module in net.named_modules()
        if isinstance(module, nn.Linear) and name.startswith(prefixes) and name.endswith(UPSTREAM_TARGET_MODULES)
    ]


def peft_config(lora: LoraSettings, target_modules: list[str]):
    """PEFT's LoraConfig of these settings: the one injected, and the one adapter_config.json records."""
    import peft

    return peft.LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(target_modules),
        bias="none",
        init_lora_weights=True,  # A: kaiming-uniform, B: zeros, so the adapted network starts as the base
    )


def apply_lora(net: nn.Module, lora: Any) -> list[str]:
    """Inject LoRA adapters into `net` in place (before FSDP2 and torch.compile); returns the adapted modules.

    `net.lora_settings` records them: `set_trainable_` (models/parallelize.py) then trains the adapters (and,
    for `target: base`, the control branch), and the EMA network gets the same adapters.
    """
    import peft

    lora = LoraSettings.of(lora)
    names = target_module_names(net, lora.target)
    if not names:
        raise ValueError(f"model.lora.target={lora.target!r}: the network has no {UPSTREAM_TARGET_MODULES} there")
    peft.inject_adapter_in_model(peft_config(lora, names), net, adapter_name=ADAPTER_NAME)
    net.lora_settings = lora
    return names


def lora_of(net: nn.Module) -> Optional[LoraSettings]:
    """The LoRA settings of an adapted network (`apply_lora`), None for a plain one."""
    return getattr(net, "lora_settings", None)


def is_adapter_key(key: str) -> bool:
    """A LoRA adapter parameter (`...lora_A.default.weight`, `...lora_B.default.weight`)."""
    return any(part in key for part in _ADAPTER_PARTS)


def lora_trains(name: str, lora: LoraSettings) -> bool:
    """Whether parameter `name` of an adapted network trains: its adapters, and the control branch for `base`."""
    return is_adapter_key(name) or (lora.target == "base" and name.startswith(CONTROL_BRANCH_PREFIXES))


def parameter_counts(net: nn.Module) -> dict[str, int]:
    """Parameters of an adapted network: adapters, other trainable (control branch), frozen."""
    counts = {"adapter": 0, "control": 0, "frozen": 0}
    for name, param in net.named_parameters():
        kind = "adapter" if is_adapter_key(name) else "control" if param.requires_grad else "frozen"
        counts[kind] += param.numel()
    return counts


def describe_counts(net: nn.Module) -> str:
    """`LoRA (rank 32, alpha 32, target base): 1,234 adapter + 5,678 control parameters train, 9,999 frozen`."""
    lora, counts = lora_of(net), parameter_counts(net)
    return (
        f"LoRA (rank {lora.rank}, alpha {lora.alpha:g}, dropout {lora.dropout:g}, target {lora.target}): "
        f"{counts['adapter']:,} adapter + {counts['control']:,} control-branch parameters train, "
        f"{counts['frozen']:,} frozen"
    )


@torch.no_grad()
def init_adapters_(net: nn.Module) -> None:
    """Draw every adapter afresh as PEFT initialises it (peft/tuners/lora/layer.py `reset_lora_parameters`:
    A kaiming-uniform with a=sqrt(5), B zeros), one adapter at a time, each rank keeping its FSDP2 shard
    (`dtensor.draw_into_`). For a network materialised after `apply_lora` (models/prepare.py)."""
    for name, param in net.named_parameters():
        if f".lora_A.{ADAPTER_NAME}." in name:
            draw_into_(param, lambda full: nn.init.kaiming_uniform_(full, a=math.sqrt(5)))
        elif is_adapter_key(name):
            draw_into_(param, nn.init.zeros_)


class BaseWeights:
    """An adapted network seen through the official names of its weights, adapters left out: what a released
    (or any consolidated) file loads into (`checkpoint/load.py` reads `config` and `state_dict`)."""

    def __init__(self, net: nn.Module):
        self.net = net
        self.config = getattr(net, "config", None)

    def state_dict(self, keep_vars: bool = False) -> dict[str, torch.Tensor]:
        return official_weights(self.net.state_dict(keep_vars=keep_vars))

    @property
    def control_blocks(self) -> nn.ModuleList:
        return self.net.control_blocks

    def init_control_branch_from_base(self) -> None:
        """The network's own (`CosmosTransferNet.init_control_branch_from_base`), matched by the official names."""
        self.net.init_control_branch_from_base(self.state_dict())


# ----------------------------------------------------------------------------- weights (export)
def has_adapters(keys) -> bool:
    return any(is_adapter_key(key) for key in keys)


def official_key(key: str) -> str:
    """`...q_proj.base_layer.weight` -> `...q_proj.weight`; other keys unchanged."""
    return key.replace(BASE_LAYER, ".")


def official_weights(state: Mapping[str, Value]) -> dict[str, Value]:
    """The base weights under their official names, the adapters left out (works on any values)."""
    return {official_key(key): value for key, value in state.items() if not is_adapter_key(key)}


def merged_weights(state: Mapping[str, torch.Tensor], lora: LoraSettings) -> dict[str, torch.Tensor]:
    """Every adapter merged into its weight, under the official names: `W + (alpha / rank) * B @ A` in fp32.

    Works on any prefix (`net.`, `net_ema.`, none): each `<module>.base_layer.weight` takes the
    `<module>.lora_A/B.default.weight` beside it.
    """
    merged = {}
    for key, value in state.items():
        if is_adapter_key(key):
            continue
        if BASE_LAYER in key:
            module, parameter = key.split(BASE_LAYER)
            if parameter != "weight":
                raise ValueError(f"{key}: LoRA is applied to bias-free projections only")
            try:
                a = state[f"{module}.lora_A.{ADAPTER_NAME}.weight"].float()
                b = state[f"{module}.lora_B.{ADAPTER_NAME}.weight"].float()
            except KeyError as error:
                raise ValueError(f"{key} has no adapter beside it ({error.args[0]} is missing)") from None
            value = value.float() + lora.scale * (b @ a)
        merged[official_key(key)] = value
    return merged


def peft_adapter_state(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One network's adapters (keys without `net.`) under the names PEFT saves: `base_model.model.<module>.
    lora_A.weight` (PEFT's `get_peft_model_state_dict` drops the adapter name), contiguous fp32."""
    return {
        PEFT_PREFIX + key.replace(f".{ADAPTER_NAME}.", "."): value.float().contiguous()
        for key, value in weights.items()
        if is_adapter_key(key)
    }


def adapted_modules(keys) -> list[str]:
    """The modules that carry an adapter, from the names of one network's weights."""
    return sorted({key.split(f".lora_A.{ADAPTER_NAME}.")[0] for key in keys if f".lora_A.{ADAPTER_NAME}." in key})


def write_peft_adapter(folder: Path, weights: Mapping[str, torch.Tensor], lora: LoraSettings) -> list[Path]:
    """`adapter_model.safetensors` + `adapter_config.json` of one network's adapters, as PEFT saves them."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(peft_adapter_state(weights), str(folder / ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"})
    config = peft_config(lora, adapted_modules(weights))
    config.inference_mode = True  # as PeftModel.save_pretrained records it
    config.save_pretrained(str(folder))
    return [folder / ADAPTER_WEIGHTS_FILE, folder / ADAPTER_CONFIG_FILE]
