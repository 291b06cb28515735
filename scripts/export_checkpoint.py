#!/usr/bin/env python
"""Export a Composer sharded checkpoint to the official Cosmos-Transfer2.5 files (and diffusers for single view).

CHECKPOINT is a checkpoint folder (<run>/checkpoints/ep<E>-ba<B>), the <run>/checkpoints/latest-rank0.pt link,
or the <run>/checkpoints folder (the newest checkpoint is taken). It is read on the CPU, without a process
group; only the model weights are read, never the optimizer state. On an object store (a run's
save_folder: s3://bucket/prefix/ep<E>-ba<B>, or s3://bucket/prefix for the newest intact checkpoint) it is
downloaded beside OUT_DIR, verified against its checksums.json, exported and the download removed
(credentials from the environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, S3_ENDPOINT_URL, ...).

--format official writes, as the official convert_distcp_to_pt.py does:
  model.pt            net.* (training weights, fp32 as saved) and net_ema.* (EMA)
  model_ema_fp32.pt   the EMA weights as net.*, fp32
  model_ema_bf16.pt   the same in bf16: the file the official inference and scripts/generate.py take
  network.json        the network config (preset and every field), with every format
--format diffusers writes transformer/ and controlnet/ for diffusers' CosmosTransformer3DModel and
CosmosControlNetModel (single view only), from the EMA weights unless --weights net.

A LoRA run's checkpoint (model.lora) is merged: every adapter goes into its official key, W + (alpha/rank) * B @ A,
so the files hold exactly the released keys; --no-merge writes the base weights without the adapters instead.
Both write lora_adapter/ with the adapters alone in PEFT's format (adapter_model.safetensors, adapter_config.json;
the EMA's unless --weights net), for PeftModel.from_pretrained on the plain network.

--verify reloads every written file, checks its tensors bit for bit, loads it strictly into a fresh network
and compares a forward pass (diffusers: from_pretrained and the velocity). It also needs the checkpoint's
checksums.json (what makes an edited network.json or a flipped shard byte an error): a checkpoint without one
is refused unless --no-checksums is given.

OUT_DIR may not be, or lie inside, a checkpoint folder. It ends up holding exactly this export's files: what
earlier exports wrote there and this one does not (e.g. lora_adapter/ of a LoRA export) is removed; other files
are kept. The checkpoint is pinned (hard links) while it is read, so a live run's save_num_checkpoints_to_keep
rotation may delete it meanwhile.

The network config is the checkpoint's network.json, which training writes into every checkpoint: no
--preset is needed. For a checkpoint without one (saved before network.json existed) it comes from
--preset/--set (the run's model.preset and model.overrides), or is inferred from the checkpoint's parameter
shapes when they match one preset exactly; that inference cannot see settings that change no shape (RoPE
extrapolation ratios, timestep_scale, maximum sizes). The output says which was used.

Examples:
    python scripts/export_checkpoint.py runs/cosmos_composer/hdmap/run1/checkpoints/latest-rank0.pt exported/
    python scripts/export_checkpoint.py runs/.../checkpoints exported/ --format all --verify
    python scripts/export_checkpoint.py old_run/checkpoints/ep0-ba500 exported/ --preset tiny-singleview --set num_blocks=6
"""

from __future__ import annotations

import argparse
import logging
import sys

from cosmos_composer.checkpoint.export import FORMATS, ExportError, export
from cosmos_composer.config_file import parse_set_items
from cosmos_composer.data.output import DiskFullError
from cosmos_composer.dtypes import DTYPES
from cosmos_composer.models import PRESETS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "checkpoint", help="sharded checkpoint folder, latest-rank0.pt link or checkpoints folder (or an s3:// one)"
    )
    parser.add_argument(
        "out_dir",
        help="folder to write into, outside every checkpoint folder (created; earlier export files are replaced)",
    )
    parser.add_argument(
        "--format", choices=[*FORMATS, "all"], default="official", help="what to write (default: official)"
    )
    parser.add_argument("--verify", action="store_true", help="reload and check everything written")
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="for a checkpoint without network.json: the run's model.preset (default: inferred from the shapes)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="for a checkpoint without network.json: a network config override, as in the run's model.overrides "
        "(repeatable; needs --preset)",
    )
    parser.add_argument(
        "--weights",
        choices=["ema", "net"],
        default="ema",
        help="weights for --format diffusers and the LoRA adapter: the EMA or the training weights (default: ema)",
    )
    parser.add_argument(
        "--diffusers-dtype",
        choices=sorted(DTYPES),
        default="fp32",
        help="dtype of the diffusers weights (default: fp32)",
    )
    parser.add_argument(
        "--no-merge",
        action="store_true",
        help="LoRA checkpoints: keep the adapters out of the official files (they are in lora_adapter/ either way)",
    )
    parser.add_argument(
        "--no-checksums",
        action="store_true",
        help="with --verify: accept a checkpoint without checksums.json (its files cannot be checked against its save)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        overrides = parse_set_items(args.overrides)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        result = export(
            args.checkpoint,
            args.out_dir,
            formats=args.format,
            preset=args.preset,
            overrides=overrides,
            weights=args.weights,
            diffusers_dtype=DTYPES[args.diffusers_dtype],
            verify=args.verify,
            progress=not args.quiet,
            merge_lora=not args.no_merge,
            require_checksums=not args.no_checksums,
        )
    except (ExportError, DiskFullError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Exported {result.source or result.checkpoint}")
    print(f"  network: {result.network.describe()}")
    for path in result.written:
        print(f"  wrote {path}")
    if result.verified:
        detail = ""
        if result.diffusers_relative_error is not None:
            detail = f" (diffusers velocity relative error {result.diffusers_relative_error:.2g})"
        print(f"  verified: every file reloads strictly with the checkpoint's exact weights{detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
