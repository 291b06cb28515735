#!/usr/bin/env python
"""Generate a video with a Cosmos-Transfer2.5 checkpoint from control video(s) and a prompt.

Single view (one control mp4 -> out.mp4):
    python scripts/generate.py --checkpoint out/model_ema_bf16.pt --preset transfer2.5-2b-singleview-general \\
        --control edge.mp4 --prompt "A robot arm folds a blue cloth." --output out.mp4

Multiview (a folder with one control mp4 per camera -> out_<camera>.mp4 for each view and the overview out.mp4):
    python scripts/generate.py --checkpoint out/model_ema_bf16.pt --preset transfer2.5-2b-multiview \\
        --control hdmap_views/ --prompt "A sunny day on a highway." --output out.mp4

The multiview control folder holds, for each of the 7 cameras, <camera>.mp4 (camera_front_wide_120fov.mp4,
...; ftheta_<camera>.mp4 and the short names front_wide.mp4, rear.mp4, ... work too) or a subfolder
ftheta_<camera>/ with one mp4 (the official control_input_hdmap_bbox/ layout of one sample).

--checkpoint takes a consolidated .pt (model.pt, model_ema_fp32.pt, model_ema_bf16.pt, the released
*_ema_bf16.pt), an hf://org/repo/file[@revision] URI, or a Composer checkpoint folder. Files with both
net.* and net_ema.* (model.pt, Composer checkpoints) are sampled with the EMA weights unless --weights net.

Several processes sample one video together (context parallelism over all of them; rank 0 writes):
    composer -n 8 scripts/generate.py --checkpoint ... --output out.mp4
The number of processes must divide the network's heads (16 in the 2B) and the latent frames.

Defaults follow the official inference: guidance 3 with v = cond + guidance * (cond - uncond), 35 UniPC
steps with shift 5, the official negative prompt, no conditioning frames; the frame count is the
network's native length (93 single view, 29 multiview) and the size and fps are the control video's.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from cosmos_composer.checkpoint.hf import HfResolveError  # noqa: E402
from cosmos_composer.checkpoint.load import CheckpointLoadError  # noqa: E402
from cosmos_composer.checkpoint.network_config import NetworkConfigError  # noqa: E402
from cosmos_composer.config_file import parse_set_items  # noqa: E402
from cosmos_composer.encoders import EncoderLoadError  # noqa: E402
from cosmos_composer.generate import (  # noqa: E402
    EXCLUSIVE_OPTIONS,
    OPTION_GROUPS,
    GenerateOptions,
    GenerationError,
    generate,
    option_flag,
)


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


def build_parser() -> argparse.ArgumentParser:
    """One flag per field of `GenerateOptions`, with the field's default, help, group and choices."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    groups = {name: parser.add_argument_group(name) for name in OPTION_GROUPS}
    options = {option.name: option for option in dataclasses.fields(GenerateOptions)}
    exclusive = {}
    for names, required in EXCLUSIVE_OPTIONS.items():
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
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def options_from_args(args: argparse.Namespace) -> GenerateOptions:
    values = {option.name: getattr(args, option.name) for option in dataclasses.fields(GenerateOptions)}
    values["overrides"] = _parse_overrides(args.overrides)
    return GenerateOptions(**values)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Errors of the inputs explain themselves (hf:// 401/403 or not in the offline cache, a checkpoint that does
    # not fit, a missing camera, ...): print them without a traceback.
    try:
        written = generate(options_from_args(args))
    except (GenerationError, HfResolveError, CheckpointLoadError, NetworkConfigError, EncoderLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
