#!/usr/bin/env python
"""Evaluate generated videos against the clips they were generated for.

score: compare mp4 files that exist already.

    python scripts/evaluate.py score --prediction generated/ --reference clips/ [--metrics blur_ssim,edge_f1] \\
        [--json scores.json]

--prediction and --reference are two mp4 files, or two folders whose mp4 files are paired by file name (each
needs its counterpart, with the same frame count and size). With --cameras they are multiview folders in the
official layout, ftheta_<camera>/<name>.mp4 for each camera (a dataset's videos/ folder). Prints one row per
video and the mean; --json writes {"metrics": {name: mean}, "videos": {file name: {name: value}}}.

Metrics (default: the model-free ones; single view without tse and cse):
  blur_ssim       SSIM of the bilateral-blurred frames (PAI-Bench-C), higher is better
  edge_f1         F1 of the Canny edge pixels against the reference's; edge_precision, edge_recall too
  tse             temporal Sampson error in pixels (consecutive frames of each camera), lower is better
  cse             cross-view Sampson error in pixels (neighbouring cameras, needs --cameras), lower is better
  depth_si_rmse   scale-invariant RMSE of the depth of --depth-model (default Depth Anything V2 Small), lower
  fid, fvd        Fréchet distances of the frame (--fid-model) or clip (--fvd-model) features of all videos
                  against all references, every view: one value for the set (in "metrics" only), lower is better
mask_miou needs each clip's caption: `run` computes it. Definitions in cosmos_composer/evaluation/metrics.py,
the models in cosmos_composer/evaluation/models.py.

run: generate a held-out set with each checkpoint (same prompts, controls and seeds) and score it.

    python scripts/evaluate.py run --checkpoint released.pt --checkpoint exported/model_ema_bf16.pt \
        --labels released,post-trained --data data/heldout_mds --output outputs/eval

--data is an MDS folder from convert_to_mds.py or a dataset in the official layout. OUT gets metrics.md (a
column per checkpoint), metrics.json, per_sample.csv, side_by_side/<seed>/<clip>.mp4 and generations/; the same
command resumes an interrupted run. `composer -n N scripts/evaluate.py run ...` splits the clips over N
processes. `python scripts/evaluate.py run --help` lists the generation flags (those of generate.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from cosmos_composer.evaluation.models import (  # noqa: E402
    add_metric_model_arguments,
    check_metric_models,
    load_metric_models,
    metric_model_sources,
    required_models,
)
from cosmos_composer.evaluation.registry import METRICS, default_metrics, parse_metric_names  # noqa: E402
from cosmos_composer.evaluation.report import (  # noqa: E402
    details_summary,
    format_table,
    score_pairs,
    write_scores_json,
)
from cosmos_composer.evaluation.run import add_run_arguments  # noqa: E402
from cosmos_composer.evaluation.videos import EvaluationInputError, match_videos  # noqa: E402


def _cameras(text: str | None) -> list[str] | None:
    return [camera.strip() for camera in text.split(",") if camera.strip()] if text else None


def add_score_arguments(subparsers) -> None:
    score = subparsers.add_parser(
        "score",
        help="score generated mp4s against their reference clips",
        description="Score generated mp4s against their reference clips (see scripts/evaluate.py --help).",
    )
    score.add_argument("--prediction", type=Path, required=True, help="a generated mp4, or a folder of them")
    score.add_argument("--reference", type=Path, required=True, help="its reference mp4, or a folder of them")
    score.add_argument(
        "--metrics",
        default=None,
        help=f"comma-separated, of {', '.join(METRICS)} (default: {','.join(default_metrics(False))}; with --cameras "
        f"{','.join(default_metrics(True))})",
    )
    score.add_argument(
        "--cameras",
        default=None,
        help="multiview: comma-separated cameras in view order; the folders hold ftheta_<camera>/<name>.mp4",
    )
    score.add_argument("--json", type=Path, default=None, help="write the scores to this JSON file")
    score.add_argument("--threads", type=int, default=None, help="threads over frames (default: every CPU)")
    score.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_metric_model_arguments(score.add_argument_group("metric models (for the metrics that need them)"))
    score.set_defaults(run=run_score)


def run_score(args: argparse.Namespace) -> int:
    cameras = _cameras(args.cameras)
    names = parse_metric_names(args.metrics) if args.metrics else default_metrics(multiview=len(cameras or ()) >= 2)
    if "mask_miou" in names:
        raise EvaluationInputError(
            "mask_miou segments the objects of each clip's caption and score has no captions; `evaluate.py run` "
            "computes it with the caption of each held-out clip: leave it out of --metrics"
        )
    if "cse" in names and len(cameras or ()) < 2:
        raise EvaluationInputError("cse compares cameras with each other: give at least two with --cameras")
    sources = metric_model_sources(args)
    check_metric_models(names, sources, args.trust_torchscript)  # before any video is read
    pairs = match_videos(args.prediction, args.reference, cameras)
    models = (
        load_metric_models(names, **sources, device=args.device, trust_torchscript=args.trust_torchscript)
        if required_models(names)
        else None
    )
    per_video, per_set, details = score_pairs(
        pairs, names, models, cameras=cameras, threads=args.threads, progress=not args.no_progress
    )
    print(format_table(per_video, per_set))
    for line in details_summary(details):
        print(line)
    if args.json:
        print(f"wrote {write_scores_json(args.json, per_video, details, per_set)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="{score,run}")
    add_score_arguments(subparsers)
    add_run_arguments(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Bad inputs explain themselves (a missing counterpart, a shape mismatch, an unknown metric): no traceback.
    try:
        return args.run(args)
    except ValueError as error:  # EvaluationInputError, VideoError and unknown metric names are ValueErrors
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
